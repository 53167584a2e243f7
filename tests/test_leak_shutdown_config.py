"""`[racks.X.safety] leak_shutdown_servers`: what check-config says of it, and the supervisor
the daemon builds from it (pure: no devices, the config and the profiles' facts only)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from coolctl.cli.main import main
from coolctl.config import ConfigError, load_config
from coolctl.control.supervisor import ActuatorRole, Override, Supervisor
from coolctl.model import Command, PointId, Quality, Reading, Snapshot, Source
from coolctl.rack.facts import device_facts
from coolctl.rack.safety import supervisor_config

CONFIGS = Path(__file__).parent / "configs"
FULL = CONFIGS / "hil-full-rack.toml"  # two Redfish BMCs
MQTT = CONFIGS / "hil-mqtt-rack.toml"  # the same rack without them
KEY = "leak_shutdown_servers = true"


def with_key(tmp_path: Path, base: Path, *extra: str) -> Path:
    text = base.read_text()
    old = 'leak_response = "stop"'
    assert old in text
    path = tmp_path / base.name
    path.write_text(text.replace(old, "\n".join((old, *extra)), 1))
    return path


def test_check_config_refuses_the_key_on_a_rack_without_server_bmcs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(with_key(tmp_path, MQTT, KEY))]) == 1
    err = capsys.readouterr().err
    assert "racks.r01.safety.leak_shutdown_servers" in err
    assert "Redfish BMCs, and this rack has none" in err
    with pytest.raises(ConfigError):
        load_config(with_key(tmp_path, MQTT, KEY))
    # with the BMCs it is a config like any other; off (the default) it needs none
    assert main(["check-config", str(with_key(tmp_path, FULL, KEY))]) == 0
    assert main(["check-config", str(with_key(tmp_path, MQTT))]) == 0
    assert load_config(with_key(tmp_path, FULL)).racks["r01"].safety.leak_shutdown_servers is False


WET = {
    "sensors1/flow": 160.0,
    "cdu1/supply_temperature": 35.0,
    "cdu1/leak_detected": 1.0,
    "sensors1/leak_detected": 1.0,
    "pdu1/power": 90_000.0,  # the caps have not taken hold yet
}


def snapshots(readings: dict[str, float]) -> Callable[[float], Snapshot]:
    """Snapshots of `readings` (device/point of rack r01) as they stand when called."""

    def snapshot(now: float) -> Snapshot:
        return Snapshot(
            (
                Reading(PointId("r01", *ref.split("/")), value, now, Quality.GOOD)
                for ref, value in readings.items()
            ),
            now,
        )

    return snapshot


def supervisor_of(path: Path) -> Supervisor:
    rack = load_config(path).racks["r01"]
    facts = {name: device_facts(device) for name, device in rack.devices.items()}
    return Supervisor(supervisor_config(rack, facts))


def test_each_server_power_goes_down_with_the_caps_before_the_pump(tmp_path: Path) -> None:
    path = with_key(tmp_path, FULL, KEY, "leak_debounce_s = 0.0", "leak_caps_timeout_s = 5.0")
    supervisor = supervisor_of(path)
    power = {a.point: a for a in supervisor.config.actuators if a.role is ActuatorRole.SERVER_POWER}
    assert sorted(p.device for p in power) == ["bmc01", "bmc02"]
    assert all(a.on_leak == 0.0 and a.shutdown is None for a in power.values())
    # off is 0 and on is 1, nothing beyond; were failsafe ever to write it, it would be "on"
    assert all(
        (a.minimum, a.maximum, a.hard_minimum, a.hard_maximum, a.failsafe) == (0, 1, 0, 1, 1)
        for a in power.values()
    )
    assert all(p.name == "server_power_command" for p in power)

    readings = dict(WET)
    snapshot = snapshots(readings)
    supervisor.startup(0.0)
    decision = supervisor.step(snapshot(1.0), 1.0, [])
    assert "leak" in decision.interlocks
    commands: dict[PointId, Command] = {c.point: c for c in decision.commands}
    for point in power:  # a graceful shutdown, in the same decision as the minimum caps
        assert commands[point].value == 0.0 and commands[point].source is Source.INTERLOCK
        assert commands[PointId("r01", point.device, "power_limit")].value == 1500.0
    pump = PointId("r01", "cdu1", "pump_speed_command")
    assert commands.get(pump) is None or commands[pump].source is not Source.INTERLOCK

    # the leak dries and is reset: the servers get no command at all (they stay off)
    readings["cdu1/leak_detected"] = readings["sensors1/leak_detected"] = 0.0
    supervisor.step(snapshot(2.0), 2.0, [])
    supervisor.reset_interlock("leak", 3.0, "tester", "rope dry")
    for now in (4.0, 5.0, 30.0):
        decision = supervisor.step(snapshot(now), now, [])
        assert not set(power) & {c.point for c in decision.commands}
    assert not set(power) & {c.point for c in supervisor.shutdown(31.0).commands}


def test_an_operator_may_power_a_server_on_with_an_override_but_not_through_a_leak(
    tmp_path: Path,
) -> None:
    supervisor = supervisor_of(with_key(tmp_path, FULL, KEY))
    point = PointId("r01", "bmc01", "server_power_command")
    supervisor.check_override(point, 1.0)  # accepted
    supervisor.check_override(point, 0.0)  # and a shutdown by hand too
    with pytest.raises(ValueError, match="outside its safe bounds"):
        supervisor.check_override(point, 2.0)
    override = {point: Override(point, 1.0, "alice", "back to work")}
    readings = dict(WET)
    snapshot = snapshots(readings)
    supervisor.startup(0.0)
    for now in (1.0, 2.5):  # the leak (debounced) wins over the override
        decision = supervisor.step(snapshot(now), now, [], override)
    command = {c.point: c for c in decision.commands}[point]
    assert (command.value, command.source) == (0.0, Source.INTERLOCK)
    readings["cdu1/leak_detected"] = readings["sensors1/leak_detected"] = 0.0
    supervisor.step(snapshot(3.0), 3.0, [], override)
    supervisor.reset_interlock("leak", 4.0, "alice", "rope dry")
    decision = supervisor.step(snapshot(5.0), 5.0, [], override)
    command = {c.point: c for c in decision.commands}[point]
    assert (command.value, command.source) == (1.0, Source.OVERRIDE)
