"""Loop config keys for gain scheduling, setpoint weighting and the power boost's lag: parsed,
checked, and built into the loop the daemon and the scenario runner run."""

from __future__ import annotations

from pathlib import Path

import pytest

from coolctl.config import Config, ConfigError, load_config
from coolctl.control.loops import GainSchedule
from coolctl.model import PointId
from coolctl.rack.stack import loop_spec

RACK = """
[site]
name = "t"

[racks.r01.devices.cdu1]
driver = "modbus"
address = "127.0.0.1"
port = 1502
profile = "sim-cdu"

[racks.r01.loops.supply]
measurement = "cdu1/supply_temperature"
actuator = "cdu1/valve_command"
setpoint = 35.0
action = "direct"
kp = 0.15
ki = 0.01
output_min = 0.05
output_max = 1.0
"""


def load(tmp_path: Path, extra: str = "") -> Config:
    path = tmp_path / "site.toml"
    path.write_text(RACK + extra)
    return load_config(path)


def problems(tmp_path: Path, extra: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, extra)
    return caught.value.problems


def test_defaults_leave_the_loop_as_it_was(tmp_path: Path) -> None:
    config = load(tmp_path)
    loop = config.racks["r01"].loops["supply"]
    spec = loop_spec("r01", loop)
    assert spec.schedule is None and spec.pid.setpoint_weight == 1.0
    assert loop.boost_power_lag_s == 20.0


def test_a_gain_schedule_over_flow_reaches_the_loop(tmp_path: Path) -> None:
    extra = (
        'gain_schedule_point = "cdu1/flow"\n'
        "gain_schedule_at = [160.0, 200.0]\n"
        "gain_schedule_multiplier = [1.0, 1.25]\n"
        "setpoint_weight = 0.5\n"
    )
    config = load(tmp_path, extra)
    spec = loop_spec("r01", config.racks["r01"].loops["supply"])
    flow = PointId("r01", "cdu1", "flow")
    assert spec.schedule == GainSchedule(flow, (160.0, 200.0), (1.0, 1.25))
    assert spec.pid.setpoint_weight == 0.5


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("gain_schedule_at = [160.0]\ngain_schedule_multiplier = [1.0]\n", "gain_schedule_at"),
        (
            'gain_schedule_point = "cdu1/flow"\ngain_schedule_at = [160.0, 200.0]\n'
            "gain_schedule_multiplier = [1.0]\n",
            "gain_schedule_multiplier",
        ),
        (
            'gain_schedule_point = "cdu1/flow"\ngain_schedule_at = [200.0, 160.0]\n'
            "gain_schedule_multiplier = [1.0, 1.0]\n",
            "gain_schedule_at",
        ),
        (
            'gain_schedule_point = "cdu1/flow"\ngain_schedule_at = [160.0]\n'
            "gain_schedule_multiplier = [-1.0]\n",
            "gain_schedule_multiplier",
        ),
        (
            'gain_schedule_point = "cdu9/flow"\ngain_schedule_at = [160.0]\n'
            "gain_schedule_multiplier = [1.0]\n",
            "gain_schedule_point",
        ),
        ("setpoint_weight = 1.5\n", "setpoint_weight"),
    ],
)
def test_bad_schedule_keys_are_named(tmp_path: Path, extra: str, key: str) -> None:
    found = problems(tmp_path, extra)
    assert any(key in p for p in found), found
