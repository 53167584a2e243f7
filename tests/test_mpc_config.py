"""A rack under the MPC in the daemon's config: `controller = "mpc"` and `mpc_model`, each
mistake named with file and key, the model file checked against the rack before the daemon
starts, and the daemon's stack builder building the MPC when asked."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from coolctl.config import ConfigError, load_config
from coolctl.control.identify import IdentifiedModel
from coolctl.control.loops import RackController
from coolctl.control.mpc import MpcController
from coolctl.rack.check import check_profiles
from coolctl.rack.controllers import build_rack_control
from coolctl.rack.facts import device_facts
from coolctl.tools import mpc_model

RACK = """
[site]
name = "t"

[racks.r01]
{extra}

[racks.r01.devices.cdu1]
driver = "modbus"
address = "127.0.0.1"
port = 1502
profile = "sim-cdu"

[racks.r01.devices.pdu1]
driver = "modbus"
address = "127.0.0.1"
port = 1503
profile = "sim-pdu"

[racks.r01.loops.supply]
measurement = "cdu1/supply_temperature"
actuator = "cdu1/valve_command"
setpoint = 35.0
action = "direct"
kp = 0.15
ki = 0.01
output_min = 0.05
output_max = 1.0
{pump}
"""

PUMP_LOOP = """
[racks.r01.loops.pump]
measurement = "cdu1/flow"
actuator = "cdu1/pump_speed_command"
setpoint = 160.0
kp = 0.002
ki = 0.004
output_min = 0.25
output_max = 0.95
slew_per_s = 0.08
"""


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    cache = tmp_path_factory.getbasetemp() / "mpc-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(mpc_model.CACHE_ENV, str(cache))
        yield mpc_model.default_model_path(1.0)


def write(tmp_path: Path, extra: str, pump: str = PUMP_LOOP) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(RACK.format(extra=extra, pump=pump))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_pid_is_the_default(tmp_path: Path) -> None:
    rack = load_config(write(tmp_path, "")).racks["r01"]
    assert rack.controller == "pid" and rack.mpc_model is None
    facts = {d.id: device_facts(d) for d in rack.devices.values()}
    assert isinstance(build_rack_control(rack, facts).controller, RackController)


def test_config_mistakes_are_named(tmp_path: Path) -> None:
    where = f"{tmp_path / 'site.toml'}: racks.r01"
    assert problems(write(tmp_path, 'controller = "mpc"')) == [
        f'{where}.mpc_model: controller = "mpc" needs mpc_model = "FILE"'
        " (write one with coolctl identify)"
    ]
    assert problems(write(tmp_path, 'controller = "lqr"')) == [
        f"{where}.controller: must be one of pid, mpc, not 'lqr'"
    ]
    assert problems(write(tmp_path, 'mpc_model = "m.json"')) == [
        f'{where}.mpc_model: only used with controller = "mpc"'
    ]
    assert problems(write(tmp_path, 'controller = "mpc"\nmpc_model = "m.json"', pump="")) == [
        f'{where}.controller: controller = "mpc" needs a loop on a CDU\'s pump_speed_command:'
        " the PID loop the MPC falls back to"
    ]


def test_a_model_file_that_is_missing_or_does_not_fit_is_caught_before_the_daemon_starts(
    tmp_path: Path, model_path: Path
) -> None:
    missing = tmp_path / "none.json"
    config = load_config(write(tmp_path, f'controller = "mpc"\nmpc_model = "{missing}"'))
    [problem] = check_profiles(config)
    assert f"mpc_model {missing}: No such file" in problem and "racks.r01" in problem
    model = IdentifiedModel.from_json(model_path.read_text())
    wrong = tmp_path / "wrong.json"
    wrong.write_text(dataclasses.replace(model, outputs=("flow",)).to_json())
    config = load_config(write(tmp_path, f'controller = "mpc"\nmpc_model = "{wrong}"'))
    [problem] = check_profiles(config)
    assert f"mpc_model {wrong}:" in problem and "supply_temperature" in problem


def test_the_daemons_stack_builder_builds_the_mpc_when_asked(
    tmp_path: Path, model_path: Path
) -> None:
    config = load_config(write(tmp_path, f'controller = "mpc"\nmpc_model = "{model_path}"'))
    assert check_profiles(config) == []
    rack = config.racks["r01"]
    facts = {d.id: device_facts(d) for d in rack.devices.values()}
    stack = build_rack_control(rack, facts)
    mpc = stack.controller
    assert isinstance(mpc, MpcController)
    # its limits are the pump loop's, its supply limit the default, its fallback the loops
    s = mpc.settings
    assert (s.pump_min, s.pump_max, s.pump_rate_per_s) == (0.25, 0.95, 0.08)
    assert s.supply_max_c == 45.0
    assert set(mpc.loops) == {"pump", "supply"}
    assert stack.allocator is None  # no BMCs: no caps to coordinate


def test_the_metrics_name_every_mpc_fallback_reason() -> None:
    from coolctl.control.mpc import FALLBACK_REASONS
    from coolctl.daemon.metrics import MPC_FALLBACK_REASONS

    assert sorted(MPC_FALLBACK_REASONS) == sorted(FALLBACK_REASONS)


def test_the_mpc_collector_is_registered_only_while_a_rack_runs_the_mpc(
    tmp_path: Path, model_path: Path
) -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest

    from coolctl.daemon.metrics import DaemonMetrics
    from coolctl.daemon.runtime import Daemon

    pid = Daemon(load_config(write(tmp_path, "")))
    mpc = Daemon(load_config(write(tmp_path, f'controller = "mpc"\nmpc_model = "{model_path}"')))
    registry = CollectorRegistry(auto_describe=False)
    metrics = DaemonMetrics(pid, registry)
    assert b"coolctl_mpc_steps" not in generate_latest(registry)
    metrics.daemon = mpc  # a reload onto a rack under the MPC
    assert b'coolctl_mpc_steps_total{rack="r01"} 0.0' in generate_latest(registry)
    metrics.daemon = pid
    assert b"coolctl_mpc_" not in generate_latest(registry)
