"""The daemon's control plane as an operator meets it, without devices: override targets with
their bounds, unknown targets answered with the valid ones, overrides that something else
overrules, and setpoint overrides held inside their bounds as the rack's power moves."""

from __future__ import annotations

from pathlib import Path

import pytest

from coolctl.config import load_config
from coolctl.daemon.plane import DaemonControlPlane
from coolctl.daemon.runtime import Daemon
from coolctl.model import PointId, Quality, RackMode, Reading
from coolctl.ops.protocol import ControlError
from coolctl.ops.store import AsyncStore

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "config" / "example.toml"


@pytest.mark.asyncio
async def test_targets_unknown_targets_and_what_overrules_an_override(tmp_path: Path) -> None:
    store = AsyncStore(tmp_path / "coolctl.db")
    await store.open()
    try:
        daemon = Daemon(load_config(EXAMPLE))
        plane = DaemonControlPlane(daemon, store)
        await plane.attach(daemon)
        targets = {t["target"]: t for t in plane.targets("r01")}
        assert set(targets) == {
            "pump.setpoint",
            "supply.setpoint",
            "cdu1/pump_speed_command",
            "cdu1/valve_command",
        }
        assert (targets["supply.setpoint"]["high"], targets["supply.setpoint"]["unit"]) == (
            38.0,
            "°C",
        )
        assert targets["pump.setpoint"]["high"] == 200.0  # rated_flow_lpm
        assert targets["cdu1/pump_speed_command"]["low"] == 0.2

        with pytest.raises(ControlError) as unknown:
            await plane.set_override("r01", "cdu1/pump_sped_command", 0.5, 60.0, "op", "typo")
        assert unknown.value.status == 404
        assert "valid targets: pump.setpoint, supply.setpoint, cdu1/pump_speed_command" in (
            unknown.value.message
        )
        with pytest.raises(ControlError, match=r"valid targets: pump\.setpoint"):
            await plane.set_override("r01", "pmp.setpoint", 150.0, 60.0, "op", "typo")

        # the daemon has not started: the rack is blind, as in start-up failsafe
        daemon.racks["r01"].start_up()
        await plane.set_override("r01", "pump.setpoint", 150.0, 60.0, "op", "check")
        effect = plane.override_effect("r01", "pump.setpoint")
        assert effect["in_force"] is False and effect["overruled_by"] == ["failsafe"]
        assert "failsafe" in effect["note"]
        # an actuator override beats failsafe
        await plane.set_override("r01", "cdu1/pump_speed_command", 0.5, 60.0, "op", "check")
        assert plane.override_effect("r01", "cdu1/pump_speed_command")["in_force"] is True
        daemon.racks["r01"].mode = RackMode.MANUAL
        (rack,) = plane.racks()
        notes = {o["target"]: o for o in rack["overrides"]}
        assert notes["pump.setpoint"]["in_force"] is False
        assert rack["caps_w"] is None and rack["chips"]["servers"] == 0
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_setpoint_override_is_held_inside_its_bounds_as_the_power_rises(
    tmp_path: Path,
) -> None:
    store = AsyncStore(tmp_path / "coolctl.db")
    await store.open()
    try:
        daemon = Daemon(load_config(EXAMPLE))
        events: list[str] = []
        daemon.event_listeners.append(lambda event: events.append(f"{event.kind}: {event.message}"))
        plane = DaemonControlPlane(daemon, store)
        await plane.attach(daemon)
        runtime = daemon.racks["r01"]

        def power(watts: float) -> None:
            point = PointId("r01", "pdu1", "power")
            daemon.store.update([Reading(point, watts, daemon.clock(), Quality.GOOD)])

        power(80_000.0)  # 1.5 L/min per kW: 120 L/min at least
        with pytest.raises(ControlError, match=r"1\.5 L/min per kW of the rack's 80\.0 kW"):
            await plane.set_override("r01", "pump.setpoint", 100.0, 60.0, "op", "low")
        await plane.set_override("r01", "pump.setpoint", 130.0, 60.0, "op", "just over")
        loop = runtime.controller.loops["pump"]
        await runtime.tick()
        assert loop.setpoint_override == 130.0 and not any("setpoint_held" in e for e in events)
        power(100_000.0)  # now 150 L/min at least: the override is held there
        await runtime.tick()
        assert loop.setpoint_override == pytest.approx(150.0)
        await runtime.tick()
        held = [e for e in events if e.startswith("setpoint_held")]
        assert len(held) == 1 and "pump.setpoint override 130 held at 150 L/min" in held[0]
        power(80_000.0)
        await runtime.tick()
        assert loop.setpoint_override == 130.0
        assert sum(e.startswith("setpoint_released") for e in events) == 1
        assert runtime.override_records["pump.setpoint"].value == 130.0  # the operator's ask
    finally:
        await store.close()
