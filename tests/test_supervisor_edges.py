"""Edges of coolctl.control.supervisor that its main tests passed by, each found by a mutant
that survived them (scripts/mutation): what it reports as commanded, silent sensors, which
interlock's value wins, validation, the documented defaults, and the supply floor."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from test_supervisor import (
    CAP1,
    CAP2,
    CHIP,
    FLOW,
    LEAK1,
    PUMP,
    PUMP_SAFETY,
    RUNNING,
    STANDBY_ACTIVE,
    SUPPLY,
    UNKNOWN,
    VALVE,
    VALVE_SAFETY,
    auto,
    by_point,
    cap,
    kinds,
    make_config,
    snap,
    started,
    with_standby,
)
from test_supply_floor import SETPOINT
from test_supply_floor import SUPPLY as FLOOR_SUPPLY
from test_supply_floor import VALVE as VALVE_POINT
from test_supply_floor import auto as floor_auto
from test_supply_floor import snapshot as floor_snapshot
from test_supply_floor import supervisor as floor_supervisor

from coolctl.control.supervisor import Supervisor, SupervisorConfig
from coolctl.model import Command, PointId, Quality, Reading, Snapshot


def test_commanded_is_the_last_value_sent_and_none_before_any() -> None:
    supervisor = Supervisor(make_config())
    assert supervisor.commanded(PUMP) is None
    supervisor.startup(0.0)
    assert supervisor.commanded(PUMP) == 0.8  # the failsafe value of start-up
    decision = supervisor.step(snap(1.0), 1.0, [auto(VALVE, 0.95)])
    assert supervisor.commanded(VALVE) == by_point(decision)[VALVE].value == 0.95
    assert supervisor.commanded(UNKNOWN) is None


def test_a_silent_sensor_is_said_silent_for_the_time_since_start_up() -> None:
    supervisor = Supervisor(make_config(silent_after_s=10.0))
    supervisor.startup(100.0)
    supervisor.step(snap(100.0), 100.0, [])
    alarm = supervisor.step(snap(112.0, {LEAK1: None}), 112.0, [])
    assert kinds(alarm) == ["safety_sensor_silent"]
    assert "has not reported in 12 s since start-up" in alarm.events[0].message


def test_a_pump_that_stops_while_a_leak_asks_for_its_safe_speed_is_a_pump_failure() -> None:
    """Only a leak value of 0 stops the pump on purpose; at a safe speed it must keep running,
    and a pump that stops then has failed (the standby, or the caps, must follow)."""
    safe_speed = replace(PUMP_SAFETY, on_leak=0.3)
    supervisor = started(make_config(actuators=(safe_speed, VALVE_SAFETY, cap(CAP1), cap(CAP2))))
    leak = supervisor.step(snap(1.0, {LEAK1: 1.0}), 1.0, [])
    assert by_point(leak)[PUMP].value == 0.3 and "leak" in leak.interlocks
    running = supervisor.step(snap(2.0, {LEAK1: 1.0}), 2.0, [])
    assert "pump_failure" not in running.interlocks
    stopped = supervisor.step(snap(3.0, {LEAK1: 1.0, RUNNING: 0.0}), 3.0, [])
    assert "pump_failure" in stopped.interlocks
    assert "interlock_pump_failure" in kinds(stopped)


def test_the_documented_defaults_blind_after_3_s_and_recover_10_s_after() -> None:
    """The daemon passes both; the pure supervisor's own defaults are what its docs say."""
    supervisor = Supervisor(
        SupervisorConfig(rack="r01", actuators=(PUMP_SAFETY,), required=(FLOW, SUPPLY))
    )
    supervisor.startup(0.0)
    assert not supervisor.step(snap(0.0), 0.0, []).failsafe
    assert not supervisor.step(snap(2.5, {FLOW: None}), 2.5, []).failsafe
    assert supervisor.step(snap(3.5, {FLOW: None}), 3.5, []).failsafe
    assert supervisor.step(snap(4.0), 4.0, []).failsafe  # clear, held for 10 s
    assert supervisor.step(snap(13.5), 13.5, []).failsafe
    assert not supervisor.step(snap(14.5), 14.5, []).failsafe


def test_any_required_reading_missing_blinds_the_rack_not_only_the_first() -> None:
    supervisor = started()
    supervisor.step(snap(1.0, {SUPPLY: None}), 1.0, [])
    assert supervisor.step(snap(4.5, {SUPPLY: None}), 4.5, []).failsafe


def test_the_lowest_cap_wins_whichever_interlock_offers_it() -> None:
    """Over-temperature here asks for more than a pump failure: the pump failure's cap wins."""
    caps = (replace(cap(CAP1), on_over_temperature=300.0), cap(CAP2))
    supervisor = started(make_config(actuators=(PUMP_SAFETY, VALVE_SAFETY, *caps)))
    decision = supervisor.step(snap(1.0, {CHIP: 99.0, RUNNING: 0.0}), 1.0, [])
    assert decision.interlocks == {"over_temperature", "pump_failure"}
    command = by_point(decision)[CAP1]
    assert command.value == 250.0 and "(pump failure wins)" in command.reason


def test_without_a_leak_or_low_level_the_pump_takes_the_most_cooling_offered() -> None:
    pump = replace(PUMP_SAFETY, on_over_temperature=0.9, on_pump_failure=1.0)
    supervisor = started(make_config(actuators=(pump, VALVE_SAFETY, cap(CAP1), cap(CAP2))))
    decision = supervisor.step(snap(1.0, {CHIP: 99.0, RUNNING: 0.0}), 1.0, [])
    assert by_point(decision)[PUMP].value == 1.0


def test_a_valve_close_rate_that_is_not_positive_and_finite_is_refused() -> None:
    for close in (0.0, -0.01, math.inf, math.nan):
        with pytest.raises(ValueError, match="supply_valve_close_per_s"):
            Supervisor(make_config(supply_valve_close_per_s=close))


def test_a_pump_that_goes_below_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="a pump's speed"):
        Supervisor(make_config(actuators=(replace(PUMP_SAFETY, hard_minimum=-0.1),)))


def test_standby_took_over_is_no_longer_reported_once_the_interlock_released() -> None:
    supervisor = started(with_standby())
    supervisor.evaluate_interlocks(snap(1.0, {RUNNING: 0.0}), 1.0)
    supervisor.step(snap(2.0, {RUNNING: 1.0, STANDBY_ACTIVE: 1.0}), 2.0, [])
    assert supervisor.state.standby_took_over
    released = supervisor.step(snap(12.0, {STANDBY_ACTIVE: 1.0}), 12.0, [])
    assert kinds(released) == ["interlock_pump_failure_cleared"]
    assert not supervisor.state.standby_took_over


def test_over_temperature_holds_while_its_reading_goes_bad() -> None:
    supervisor = started()
    supervisor.step(snap(1.0, {CHIP: 99.0}), 1.0, [])
    for now in (2.0, 20.0, 40.0, 80.0):
        decision = supervisor.step(snap(now, {CHIP: math.nan}), now, [])
        assert "over_temperature" in decision.interlocks  # unknown is not cool


# -- the supply floor -------------------------------------------------------------------------


def floor_commands(
    sup: Supervisor, now: float, reading: Snapshot, *cmds: Command
) -> dict[PointId, Command]:
    return {c.point: c for c in sup.step(reading, now, list(cmds)).commands}


def test_a_dew_point_sensor_floors_the_supply_setpoint() -> None:
    dew = PointId("r01", "room1", "dew_point")
    base = floor_supervisor().config
    sup = Supervisor(replace(base, dew_point=dew, room_temperature=None, room_humidity=None))
    sup.startup(0.0)
    reading = Snapshot(
        [*floor_snapshot(1.0, 35.0).values(), Reading(dew, 23.0, 1.0, Quality.GOOD)], 1.0
    )
    sent = floor_commands(sup, 1.0, reading, floor_auto(SETPOINT, 21.0))
    assert sent[SETPOINT].value == pytest.approx(25.0)


def test_a_setpoint_over_the_floor_and_a_valve_over_it_pass_unchanged() -> None:
    sup = floor_supervisor()
    sup.startup(0.0)
    first = floor_commands(sup, 1.0, floor_snapshot(1.0, 35.0), floor_auto(VALVE_POINT, 0.2))
    assert first[VALVE_POINT].value == 0.2
    sent = floor_commands(
        sup,
        2.0,
        floor_snapshot(2.0, 35.0),
        floor_auto(SETPOINT, 30.0),
        floor_auto(VALVE_POINT, 0.9),
    )
    assert sent[SETPOINT].value == 30.0 and sent[VALVE_POINT].value == 0.9


def test_the_facility_water_floor_binds_the_valve_only_in_failsafe() -> None:
    """Facility water 30 °C: floor 32 °C for a failsafe valve, the dew point's 25.2 °C for the
    loop's; a supply of 28 °C is under the first and over the second."""
    base = floor_supervisor().config
    sup = Supervisor(replace(base, required=(FLOOR_SUPPLY,), failsafe_after_s=3.0))
    sup.startup(0.0)
    auto_step = sup.step(floor_snapshot(1.0, 28.0, facility=30.0), 1.0, [])
    assert "supply_under_floor" not in kinds(auto_step)
    room = Snapshot(
        [r for r in floor_snapshot(5.0, 28.0, facility=30.0).values() if r.point != FLOOR_SUPPLY],
        5.0,
    )
    sup.step(room, 5.0, [])
    blind = sup.step(room, 9.0, [])
    assert blind.failsafe
    back = sup.step(floor_snapshot(9.5, 28.0, facility=30.0), 9.5, [])
    assert back.failsafe and kinds(back) == ["supply_under_floor"]
    assert "facility water 30.0 °C" in back.events[0].message
