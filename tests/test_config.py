"""Config validation: every problem named with file, key path and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from coolctl.cli.main import main
from coolctl.config import ConfigError, load_config, parse_host_port
from coolctl.rack.check import check_profiles
from coolctl.tools.demo import builtin_config_path

REPO = Path(__file__).resolve().parent.parent
GOOD = """
[site]
name = "t"

[racks.r01.devices.cdu1]
driver = "modbus"
address = "127.0.0.1"
port = 1502
profile = "sim-cdu"

[racks.r01.loops.pump]
measurement = "cdu1/flow"
actuator = "cdu1/pump_speed_command"
setpoint = 150.0
kp = 0.002
ki = 0.001
output_min = 0.2
output_max = 1.0
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return caught.value.problems


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    rack = config.racks["r01"]
    device = rack.devices["cdu1"]
    assert device.unit == 1 and device.poll_interval_s == 1.0
    assert device.stale_after_s == 3.0
    loop = rack.loops["pump"]
    assert str(loop.measurement) == "cdu1/flow"
    assert loop.failsafe_output == 1.0  # defaults to output_max: full cooling when blind
    assert config.daemon.metrics_port == 18850
    assert check_profiles(config) == []


def test_shipped_configs_are_valid() -> None:
    for path in (REPO / "deploy" / "config" / "example.toml", builtin_config_path()):
        config = load_config(path)
        assert check_profiles(config) == [], path


def test_errors_name_file_key_path_and_problem(tmp_path: Path) -> None:
    text = GOOD.replace("port = 1502", 'port = "1502"').replace("kp = 0.002", "kp = 0.002\nkq = 1")
    problems = problems_of(tmp_path, text)
    path = tmp_path / "site.toml"
    assert f"{path}: racks.r01.devices.cdu1.port: must be a whole number, not a string '1502'" in (
        problems
    )
    assert any(p.startswith(f"{path}: racks.r01.loops.pump.kq: unknown key") for p in problems)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace('driver = "modbus"', 'driver = "bacnet"').replace(
        "output_min = 0.2", "output_min = 2.0"
    )
    problems = problems_of(tmp_path, text)
    expected = "devices.cdu1.driver: must be one of modbus, mqtt, redfish, snmp, not 'bacnet'"
    assert any(expected in p for p in problems)
    # the loop refers to a device that failed validation: its own error is enough, not a
    # cascade of "not configured" lines about every reference to it
    assert not any("is not configured" in p for p in problems)
    assert any("output_min" in p for p in problems)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("cdu1/flow", "cdu1/flux"), "loops.pump.measurement: 'flux' is not a canonical point"),
        (("cdu1/flow", "cdu2/flow"), "device 'cdu2' is not configured in this rack"),
        (("cdu1/flow", "flow"), "'flow' is not of the form device/point"),
        (("output_min = 0.2", "output_min = 1.5"), "output_min 1.5 is above output_max 1.0"),
        (("port = 1502", "port = 70000"), "devices.cdu1.port: must be from 1 to 65535"),
        (("setpoint = 150.0", "setpoint = nan"), "loops.pump.setpoint: must be a number"),
        (("[site]", "[sight]"), "sight: unknown key"),
        (("output_max = 1.0", "output_max = 1.0\nfailsafe_output = 0.1"), "failsafe_output"),
    ],
)
def test_specific_errors(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    problems = problems_of(tmp_path, GOOD.replace(*change))
    assert any(expected in p for p in problems), problems


def test_two_loops_on_one_actuator_is_an_error(tmp_path: Path) -> None:
    text = GOOD + GOOD[GOOD.index("[racks.r01.loops.pump]") :].replace("loops.pump", "loops.again")
    problems = problems_of(tmp_path, text)
    assert any("already driven by loop 'pump'" in p for p in problems)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    assert "not valid TOML" in problems_of(tmp_path, "[racks\n")[0]
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_profile_checks_catch_unwritable_actuators(tmp_path: Path) -> None:
    text = GOOD.replace("cdu1/pump_speed_command", "cdu1/pump_speed")
    problems = check_profiles(load_config(write(tmp_path, text)))
    assert problems == [
        f"{tmp_path / 'site.toml'}: racks.r01.loops.pump.actuator: 'pump_speed' is not"
        " writable in profile 'sim-cdu'"
    ]


def test_check_config_command_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path, GOOD)
    assert main(["check-config", str(good)]) == 0
    assert "ok (1 racks, 1 devices, 1 loops)" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('profile = "sim-cdu"', 'profile = "no-such-profile"'))
    assert main(["check-config", str(bad)]) == 1
    assert "racks.r01.devices.cdu1.profile" in capsys.readouterr().err


def test_host_port() -> None:
    assert parse_host_port("127.0.0.1:18850") == ("127.0.0.1", 18850)
    assert parse_host_port("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError):
        parse_host_port("localhost")
