"""The supply floor: supply setpoints and the supply valve never take the coolant under the
facility water or the room's dew point plus the margin (coolctl.control.supervisor, dewpoint)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from coolctl.control.dewpoint import dew_point_c, supply_floor_c
from coolctl.control.supervisor import ActuatorRole, ActuatorSafety, Supervisor, SupervisorConfig
from coolctl.model import Command, PointId, Quality, Reading, Snapshot, Source

RACK = "r01"
VALVE = PointId(RACK, "cdu1", "valve_command")
SETPOINT = PointId(RACK, "cdu1", "supply_temperature_setpoint")
SUPPLY = PointId(RACK, "cdu1", "supply_temperature")
FACILITY = PointId(RACK, "cdu1", "facility_supply_temperature")
AIR = PointId(RACK, "room1", "room_temperature")
HUMIDITY = PointId(RACK, "room1", "room_humidity")


def test_magnus_dew_point() -> None:
    assert dew_point_c(24.0, 0.4) == pytest.approx(9.6, abs=0.1)
    assert dew_point_c(28.0, 0.75) == pytest.approx(23.2, abs=0.1)
    assert dew_point_c(20.0, 1.0) == pytest.approx(20.0, abs=1e-9)
    assert dew_point_c(20.0, 0.0) is None and dew_point_c(20.0, 1.5) is None
    assert dew_point_c(float("nan"), 0.5) is None
    assert supply_floor_c(30.0, 23.2, 2.0) == 32.0
    assert supply_floor_c(None, 23.2, 2.0) == pytest.approx(25.2)
    assert supply_floor_c(None, None, 2.0) is None


def supervisor() -> Supervisor:
    actuators = (
        ActuatorSafety(VALVE, ActuatorRole.VALVE, 0.05, 1.0, None, 1.0, 0.0, 1.0),
        # a CDU's own setpoint, as a setpoint-mode rack supervises it
        ActuatorSafety(SETPOINT, ActuatorRole.VALVE, 20.0, 45.0, None, 35.0, 15.0, 50.0),
    )
    return Supervisor(
        SupervisorConfig(
            rack=RACK,
            actuators=actuators,
            supply=SUPPLY,
            facility_supply=FACILITY,
            room_temperature=AIR,
            room_humidity=HUMIDITY,
            supply_floor_margin_c=2.0,
            supply_valve_close_per_s=0.02,
        )
    )


def snapshot(now: float, supply: float, facility: float = 18.0) -> Snapshot:
    values = {SUPPLY: supply, FACILITY: facility, AIR: 28.0, HUMIDITY: 0.75}
    return Snapshot([Reading(p, v, now, Quality.GOOD) for p, v in values.items()], now)


def auto(point: PointId, value: float) -> Command:
    return Command(point, value, Source.AUTO, "loop")


def test_setpoint_commands_are_floored_at_the_dew_point_plus_margin() -> None:
    sup = supervisor()
    sup.startup(0.0)
    decision = sup.step(snapshot(1.0, 35.0), 1.0, [auto(SETPOINT, 21.0), auto(VALVE, 0.5)])
    sent = {c.point: c for c in decision.commands}
    assert sent[SETPOINT].value == pytest.approx(25.2, abs=0.1)  # dew 23.2 + 2 K
    assert "supply floor" in sent[SETPOINT].reason
    assert sent[VALVE].value == 0.5  # supply over the floor: the valve is the loop's


def test_valve_closes_while_the_supply_is_under_its_floor() -> None:
    sup = supervisor()
    sup.startup(0.0)
    sup.step(snapshot(1.0, 35.0), 1.0, [auto(VALVE, 0.6)])
    decision = sup.step(snapshot(2.0, 24.0), 2.0, [auto(VALVE, 1.0)])
    (valve,) = [c for c in decision.commands if c.point == VALVE]
    assert valve.value == pytest.approx(0.58)  # no further open: closing at 0.02/s
    assert [e.kind for e in decision.events] == ["supply_under_floor"]
    decision = sup.step(snapshot(3.0, 30.0), 3.0, [auto(VALVE, 1.0)])
    assert [e.kind for e in decision.events] == ["supply_floor_cleared"]


def test_a_blind_failsafe_does_not_open_the_valve_onto_water_under_the_dew_point() -> None:
    base = supervisor().config
    sup = Supervisor(replace(base, required=(SUPPLY,), failsafe_after_s=3.0))
    sup.startup(0.0)
    sup.step(snapshot(1.0, 35.0), 1.0, [auto(VALVE, 0.2)])
    room = {AIR: 28.0, HUMIDITY: 0.75}  # the room sensor still reads; the CDU does not
    blind = Snapshot([Reading(p, v, 6.0, Quality.GOOD) for p, v in room.items()], 6.0)
    decision = sup.step(blind, 6.0, [])
    assert decision.failsafe
    (valve,) = [c for c in decision.commands if c.point == VALVE]
    assert valve.source is Source.FAILSAFE and valve.value == pytest.approx(0.2)
    assert "dew point floor" in valve.reason
    warm = Supervisor(replace(base, required=(SUPPLY,), failsafe_after_s=3.0))
    warm.startup(0.0)
    warm.step(snapshot(1.0, 35.0, facility=30.0), 1.0, [auto(VALVE, 0.2)])
    (opened,) = [c for c in warm.step(blind, 6.0, []).commands if c.point == VALVE]
    assert opened.value == 1.0  # facility water over the dew point: full cooling is harmless
