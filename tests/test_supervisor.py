"""Tests for coolctl.control.supervisor: precedence, interlocks, failsafe, hysteresis, events.

The property tests drive one supervisor through random sequences of readings (good, stale, bad,
missing, NaN), requests (huge, negative, non-finite, for unknown points) and overrides at random
increasing times, and check the safety invariants on every decision.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coolctl.control.supervisor import (
    ActuatorRole,
    ActuatorSafety,
    Decision,
    Override,
    Supervisor,
    SupervisorConfig,
    TemperatureLimit,
)
from coolctl.model import Command, PointId, Quality, Reading, Severity, Snapshot, Source

RACK = "r01"
PUMP = PointId(RACK, "cdu1", "pump_speed_command")
VALVE = PointId(RACK, "cdu1", "valve_command")
CAP1 = PointId(RACK, "srv1", "power_limit")
CAP2 = PointId(RACK, "srv2", "power_limit")
STANDBY = PointId(RACK, "cdu1", "standby_select")
LEAK1 = PointId(RACK, "sensors1", "leak_detected")
LEAK2 = PointId(RACK, "cdu1", "leak_detected")
CHIP = PointId(RACK, "srv1", "chip_temperature")
RUNNING = PointId(RACK, "cdu1", "pump_running")
STANDBY_ACTIVE = PointId(RACK, "cdu1", "standby_pump_active")
FLOW = PointId(RACK, "cdu1", "flow")
SUPPLY = PointId(RACK, "cdu1", "supply_temperature")
UNKNOWN = PointId(RACK, "cdu9", "pump_speed_command")

PUMP_SAFETY = ActuatorSafety(
    PUMP,
    ActuatorRole.PUMP,
    minimum=0.15,
    maximum=1.0,
    slew_per_s=0.05,
    failsafe=0.8,
    hard_minimum=0.0,
    hard_maximum=1.0,
    on_leak=0.0,
    on_over_temperature=1.0,
    shutdown=0.6,
)
VALVE_SAFETY = ActuatorSafety(
    VALVE,
    ActuatorRole.VALVE,
    minimum=0.1,
    maximum=1.0,
    slew_per_s=0.1,
    failsafe=1.0,
    hard_minimum=0.0,
    hard_maximum=1.0,
    on_over_temperature=1.0,
)
STANDBY_SAFETY = ActuatorSafety(
    STANDBY,
    ActuatorRole.STANDBY,
    minimum=0.0,
    maximum=1.0,
    slew_per_s=None,
    failsafe=0.0,
    hard_minimum=0.0,
    hard_maximum=1.0,
)


def cap(point: PointId) -> ActuatorSafety:
    return ActuatorSafety(
        point,
        ActuatorRole.POWER_LIMIT,
        minimum=300.0,
        maximum=1000.0,
        slew_per_s=50.0,
        failsafe=500.0,
        hard_minimum=100.0,
        hard_maximum=1000.0,
        on_leak=100.0,
        on_over_temperature=200.0,
        on_pump_failure=250.0,
    )


def make_config(**changes: object) -> SupervisorConfig:
    base = SupervisorConfig(
        rack=RACK,
        actuators=(PUMP_SAFETY, VALVE_SAFETY, cap(CAP1), cap(CAP2)),
        leak_points=(LEAK1, LEAK2),
        temperature_limits=(TemperatureLimit(CHIP, 95.0),),
        pump_running=RUNNING,
        required=(FLOW, SUPPLY),
        failsafe_after_s=3.0,
        hold_s=10.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def with_standby(**changes: object) -> SupervisorConfig:
    actuators = (PUMP_SAFETY, VALVE_SAFETY, cap(CAP1), cap(CAP2), STANDBY_SAFETY)
    return make_config(actuators=actuators, standby_active=STANDBY_ACTIVE, **changes)


NORMAL: Mapping[PointId, float] = {
    FLOW: 150.0,
    SUPPLY: 30.0,
    LEAK1: 0.0,
    LEAK2: 0.0,
    CHIP: 70.0,
    RUNNING: 1.0,
    STANDBY_ACTIVE: 0.0,
}


def snap(
    now: float,
    changes: Mapping[PointId, float | Quality | None] | None = None,
    extra: Iterable[Reading] = (),
) -> Snapshot:
    """Normal readings at `now`; a float changes a value, a Quality makes the reading that old
    quality (ten seconds old), None takes it out; `extra` readings replace whole readings."""
    values: dict[PointId, float | Quality | None] = {**NORMAL, **(changes or {})}
    readings: dict[PointId, Reading] = {}
    for point, value in values.items():
        if isinstance(value, Quality):
            readings[point] = Reading(point, NORMAL.get(point), now - 10.0, value)
        elif value is not None:
            readings[point] = Reading(point, value, now, Quality.GOOD)
    for reading in extra:
        readings[reading.point] = reading
    return Snapshot(readings.values(), now)


def auto(point: PointId, value: float, source: Source = Source.AUTO) -> Command:
    return Command(point, value, source, "loop")


def by_point(decision: Decision) -> dict[PointId, Command]:
    return {command.point: command for command in decision.commands}


def kinds(decision: Decision) -> list[str]:
    return [event.kind for event in decision.events]


def started(config: SupervisorConfig | None = None) -> Supervisor:
    """A supervisor past start-up at t=0: every actuator holds its failsafe value."""
    supervisor = Supervisor(config or make_config())
    supervisor.startup(0.0)
    decision = supervisor.step(snap(0.0), 0.0, [])
    assert not decision.failsafe and kinds(decision) == ["failsafe_cleared"]
    return supervisor


# -- start-up and failsafe ---------------------------------------------------------------------


def test_startup_commands_failsafe_values_at_once() -> None:
    supervisor = Supervisor(make_config(actuators=(*make_config().actuators, STANDBY_SAFETY)))
    decision = supervisor.startup(0.0)
    commands = by_point(decision)
    assert {p: c.value for p, c in commands.items()} == {
        PUMP: 0.8,
        VALVE: 1.0,
        CAP1: 500.0,
        CAP2: 500.0,
    }  # the standby selector is not a control output: failsafe leaves it alone
    assert all(c.source is Source.FAILSAFE for c in commands.values())
    assert "start-up: waiting for good readings of r01/cdu1/flow" in commands[PUMP].reason
    assert decision.failsafe and kinds(decision) == ["startup"]
    assert decision.events[0].severity is Severity.INFO


def test_startup_failsafe_holds_until_every_required_point_was_good() -> None:
    supervisor = Supervisor(make_config())
    supervisor.startup(0.0)
    blind = supervisor.step(snap(1.0, {FLOW: None}), 1.0, [auto(PUMP, 0.5)])
    assert blind.failsafe and blind.events == ()
    assert by_point(blind)[PUMP].source is Source.FAILSAFE
    seen = supervisor.step(snap(2.0), 2.0, [auto(PUMP, 0.5)])
    assert not seen.failsafe and kinds(seen) == ["failsafe_cleared"]
    pump = by_point(seen)[PUMP]
    # Auto ramps from the failsafe value sent at t=1, with the normal slew.
    assert pump.source is Source.AUTO and pump.value == pytest.approx(0.75)


def test_step_without_startup_starts_in_failsafe() -> None:
    supervisor = Supervisor(make_config())
    blind = supervisor.step(snap(0.0, {SUPPLY: Quality.MISSING}), 0.0, [auto(PUMP, 0.5)])
    assert blind.failsafe and kinds(blind) == ["startup"]
    assert by_point(blind)[PUMP].value == 0.8
    supervisor = Supervisor(make_config())
    seeing = supervisor.step(snap(0.0), 0.0, [auto(PUMP, 0.5)])
    # never visibly in failsafe, but the start-up event's "failsafe until ..." is answered
    assert not seeing.failsafe and kinds(seeing) == ["startup", "failsafe_cleared"]
    assert by_point(seeing)[PUMP].value == 0.5


def test_bumpless_start_slews_from_the_observed_device_value() -> None:
    supervisor = Supervisor(make_config())
    supervisor.observe(PUMP, 0.4, 0.0)
    supervisor.observe(UNKNOWN, 0.9, 0.0)  # not an actuator: ignored
    first = supervisor.step(snap(1.0), 1.0, [auto(PUMP, 1.0)])
    assert by_point(first)[PUMP].value == pytest.approx(0.45)
    supervisor.observe(PUMP, 0.9, 1.0)  # once commanded, slew counts from the command
    second = supervisor.step(snap(2.0), 2.0, [auto(PUMP, 1.0)])
    assert by_point(second)[PUMP].value == pytest.approx(0.5)
    assert supervisor.state.actuators[PUMP].observed == 0.9


def test_blind_loops_hold_until_failsafe_after_s_then_failsafe_once() -> None:
    supervisor = started()
    supervisor.step(snap(1.0), 1.0, [auto(PUMP, 0.75), auto(VALVE, 0.95)])
    for now in (2.0, 3.0, 4.0):  # FLOW stale, the loops ask for nothing: hold
        decision = supervisor.step(snap(now, {FLOW: Quality.STALE}), now, [])
        assert decision.commands == () and decision.events == () and not decision.failsafe
    tripped = supervisor.step(snap(4.5, {FLOW: Quality.STALE}), 4.5, [])
    assert tripped.failsafe and kinds(tripped) == ["failsafe"]
    assert tripped.events[0].severity is Severity.WARNING
    assert "r01/cdu1/flow stale for 3.5 s" in tripped.events[0].message
    assert {c.point: (c.value, c.source) for c in tripped.commands} == {
        PUMP: (0.8, Source.FAILSAFE),
        VALVE: (1.0, Source.FAILSAFE),
        CAP1: (500.0, Source.FAILSAFE),
        CAP2: (500.0, Source.FAILSAFE),
    }
    for now in (5.0, 6.0, 7.0):
        decision = supervisor.step(snap(now, {FLOW: Quality.BAD}), now, [auto(PUMP, 0.2)])
        assert decision.failsafe and decision.events == ()
        assert by_point(decision)[PUMP].source is Source.FAILSAFE


def test_failsafe_recovers_after_hold_s_of_good_readings_and_not_before() -> None:
    supervisor = started()
    supervisor.step(snap(4.0, {FLOW: Quality.STALE}), 4.0, [])
    assert supervisor.failsafe
    now = 5.0
    while now < 15.0:  # good from t=5, but a blip at t=8 restarts the hold at t=9
        changes: dict[PointId, float | Quality | None] = {FLOW: Quality.STALE} if now == 8 else {}
        decision = supervisor.step(snap(now, changes), now, [auto(PUMP, 0.5)])
        assert decision.failsafe and by_point(decision)[PUMP].source is Source.FAILSAFE
        now += 1.0
    for now in (15.0, 18.0, 18.9):
        assert supervisor.step(snap(now), now, [auto(PUMP, 0.5)]).failsafe
    cleared = supervisor.step(snap(19.0), 19.0, [auto(PUMP, 0.5)])
    assert not cleared.failsafe and kinds(cleared) == ["failsafe_cleared"]
    pump = by_point(cleared)[PUMP]
    assert pump.source is Source.AUTO and pump.value == pytest.approx(0.8 - 0.05 * 0.1)


def test_controller_failure_is_failsafe_on_that_tick_with_one_event() -> None:
    supervisor = started()
    failed = supervisor.step(snap(1.0), 1.0, [], controller_failed=True)
    assert failed.failsafe and kinds(failed) == ["controller_failed"]
    assert "controller raised" in by_point(failed)[VALVE].reason
    for now in range(2, 12):  # raising every other tick keeps it in failsafe, one event
        decision = supervisor.step(snap(now), now, [auto(PUMP, 0.5)], {}, now % 2 == 0)
        assert decision.failsafe and decision.events == ()
    for now in range(12, 21):
        assert supervisor.step(snap(now), now, [auto(PUMP, 0.5)]).failsafe
    recovered = supervisor.step(snap(21.0), 21.0, [auto(PUMP, 0.5)])
    assert not recovered.failsafe and kinds(recovered) == ["failsafe_cleared"]


# -- interlocks --------------------------------------------------------------------------------


def test_leak_stops_the_pump_and_caps_at_once() -> None:
    supervisor = started()
    supervisor.step(snap(1.0), 1.0, [auto(PUMP, 0.85), auto(CAP1, 900.0)])
    decision = supervisor.step(snap(1.1, {LEAK1: 1.0}), 1.1, [auto(PUMP, 1.0)])
    commands = by_point(decision)
    assert commands[PUMP] == Command(
        PUMP, 0.0, Source.INTERLOCK, "leak interlock: r01/sensors1/leak_detected wet; pump stopped"
    )
    assert (commands[CAP1].value, commands[CAP2].value) == (100.0, 100.0)
    assert VALVE not in commands  # the leak leaves the valve alone
    assert decision.interlocks == {"leak"} and kinds(decision) == ["interlock_leak"]
    assert decision.events[0].severity is Severity.CRITICAL


def test_toggling_leak_sensor_never_releases_the_interlock() -> None:
    supervisor = started()
    overrides = {CAP1: Override(CAP1, 1000.0, "alice", "benchmark")}
    events: list[str] = []
    for now in range(1, 61):
        wet = 1.0 if now % 2 else 0.0
        decision = supervisor.step(snap(now, {LEAK2: wet}), now, [auto(PUMP, 0.9)], overrides)
        assert decision.interlocks == {"leak"}
        assert by_point(decision)[PUMP].value == 0.0
        assert by_point(decision)[CAP1].value == 100.0
        events += kinds(decision)
    assert events == ["interlock_leak"]


def test_leak_releases_after_hold_s_dry_and_the_pump_ramps_back() -> None:
    supervisor = started()
    supervisor.step(snap(1.0, {LEAK1: 1.0}), 1.0, [])
    for now in (2.0, 6.0, 11.9):
        decision = supervisor.step(snap(now), now, [auto(PUMP, 0.9)])
        assert decision.interlocks == {"leak"} and by_point(decision)[PUMP].value == 0.0
    cleared = supervisor.step(snap(12.0), 12.0, [auto(PUMP, 0.9)])
    assert cleared.interlocks == frozenset() and kinds(cleared) == ["interlock_leak_cleared"]
    pump = by_point(cleared)[PUMP]
    assert pump.source is Source.AUTO and pump.value == 0.15  # from 0.0 the bound is the floor
    later = supervisor.step(snap(13.0), 13.0, [auto(PUMP, 0.9)])
    assert by_point(later)[PUMP].value == pytest.approx(0.2)  # then the normal slew


def test_a_wet_sensor_gone_stale_keeps_the_leak_interlock() -> None:
    supervisor = started()
    supervisor.step(snap(1.0, {LEAK1: 1.0}), 1.0, [])
    for now in range(2, 40):  # unknown is not dry
        assert supervisor.step(snap(now, {LEAK1: Quality.STALE}), now, []).interlocks == {"leak"}
    for now in range(40, 50):
        assert supervisor.step(snap(now), now, []).interlocks == {"leak"}
    assert supervisor.step(snap(50.0), 50.0, []).interlocks == frozenset()


def test_a_leak_point_that_never_reported_neither_trips_nor_holds_the_interlock() -> None:
    """A device may list a leak detector it does not have (a BMC without one): missing is no
    evidence of a leak, so it must not keep the interlock latched for ever."""
    supervisor = started()
    assert supervisor.step(snap(0.5, {LEAK2: Quality.MISSING}), 0.5, []).interlocks == frozenset()
    supervisor.step(snap(1.0, {LEAK1: 1.0, LEAK2: Quality.MISSING}), 1.0, [])
    for now in range(2, 12):
        supervisor.step(snap(now, {LEAK2: Quality.MISSING}), now, [])
    released = supervisor.step(snap(12.0, {LEAK2: None}), 12.0, [])
    assert released.interlocks == frozenset()


def test_without_holding_through_blindness_a_stale_sensor_counts_as_dry() -> None:
    supervisor = started(make_config(interlock_holds_through_blindness=False))
    supervisor.step(snap(1.0, {LEAK1: 1.0}), 1.0, [])
    for now in range(2, 12):
        assert supervisor.step(snap(now, {LEAK1: Quality.STALE}), now, []).interlocks == {"leak"}
    released = supervisor.step(snap(12.0, {LEAK1: Quality.STALE}), 12.0, [])
    assert released.interlocks == frozenset()


def test_over_temperature_then_leak_the_leak_wins_for_the_pump_the_lowest_cap_wins() -> None:
    supervisor = started()
    hot = supervisor.step(snap(1.0, {CHIP: 99.0}), 1.0, [auto(PUMP, 0.5)])
    commands = by_point(hot)
    assert {p: c.value for p, c in commands.items()} == {
        PUMP: 1.0,
        VALVE: 1.0,
        CAP1: 200.0,
        CAP2: 200.0,
    }
    assert "r01/srv1/chip_temperature 99 above 95" in commands[PUMP].reason
    both = supervisor.step(snap(2.0, {CHIP: 99.0, LEAK1: 1.0}), 2.0, [])
    commands = by_point(both)
    assert {p: c.value for p, c in commands.items()} == {
        PUMP: 0.0,
        VALVE: 1.0,
        CAP1: 100.0,
        CAP2: 100.0,
    }
    assert commands[PUMP].reason.endswith("pump stopped (leak wins)")
    assert both.interlocks == {"leak", "over_temperature"}
    assert kinds(both) == ["interlock_leak"]


def test_evaluate_interlocks_trips_within_the_call_and_is_quiet_otherwise() -> None:
    supervisor = started()
    assert supervisor.evaluate_interlocks(snap(0.5), 0.5) == Decision((), (), frozenset(), False)
    tripped = supervisor.evaluate_interlocks(snap(1.0, {LEAK2: 1.0}), 1.0)
    assert {c.point: c.value for c in tripped.commands} == {PUMP: 0.0, CAP1: 100.0, CAP2: 100.0}
    assert kinds(tripped) == ["interlock_leak"] and tripped.interlocks == {"leak"}
    again = supervisor.evaluate_interlocks(snap(1.1, {LEAK2: 1.0}), 1.1)
    assert again.commands == () and again.events == () and again.interlocks == {"leak"}
    tick = supervisor.step(snap(1.2, {LEAK2: 1.0}), 1.2, [auto(PUMP, 1.0)])
    assert by_point(tick)[PUMP].value == 0.0 and tick.events == ()  # the tick re-asserts


# -- pump failure ------------------------------------------------------------------------------


def test_pump_failure_without_standby_caps_at_once() -> None:
    supervisor = started()
    decision = supervisor.step(snap(1.0, {RUNNING: 0.0}), 1.0, [auto(PUMP, 0.8)])
    commands = by_point(decision)
    assert decision.interlocks == {"pump_failure"} and kinds(decision) == ["interlock_pump_failure"]
    assert (commands[CAP1].value, commands[CAP1].source) == (250.0, Source.INTERLOCK)
    assert commands[PUMP].source is Source.AUTO  # no pump value on pump failure: control goes on
    assert supervisor.state.pump_failure_caps


def test_pump_failure_standby_takes_over_within_changeover_no_caps() -> None:
    supervisor = started(with_standby())
    failed = supervisor.evaluate_interlocks(snap(1.0, {RUNNING: 0.0}), 1.0)
    assert by_point(failed) == {
        STANDBY: Command(
            STANDBY,
            1.0,
            Source.INTERLOCK,
            "pump failure interlock: r01/cdu1/pump_running reads 0 while the pump is commanded"
            " to run; standby pump selected",
        )
    }
    took = supervisor.step(snap(2.0, {RUNNING: 1.0, STANDBY_ACTIVE: 1.0}), 2.0, [])
    assert kinds(took) == ["standby_took_over"]
    assert {c.point for c in took.commands} == {STANDBY}  # no caps
    for now in (3.0, 5.0, 11.0):
        decision = supervisor.step(snap(now, {STANDBY_ACTIVE: 1.0}), now, [])
        assert {c.point for c in decision.commands} == {STANDBY} and decision.events == ()
    assert supervisor.state.standby_took_over and not supervisor.state.pump_failure_caps
    released = supervisor.step(snap(12.0, {STANDBY_ACTIVE: 1.0}), 12.0, [])
    assert kinds(released) == ["interlock_pump_failure_cleared"] and released.commands == ()


def test_pump_failure_standby_does_not_take_over_caps_after_changeover() -> None:
    supervisor = started(with_standby())
    supervisor.step(snap(1.0, {RUNNING: 0.0}), 1.0, [])
    waiting = supervisor.evaluate_interlocks(snap(2.9, {RUNNING: 0.0}), 2.9)
    assert waiting.commands == () and waiting.events == ()
    capped = supervisor.evaluate_interlocks(snap(3.0, {RUNNING: 0.0}), 3.0)
    assert kinds(capped) == ["pump_failure_caps"]
    assert capped.events[0].severity is Severity.CRITICAL
    assert {c.point: c.value for c in capped.commands} == {STANDBY: 1.0, CAP1: 250.0, CAP2: 250.0}


def test_a_stop_the_leak_asked_for_is_not_a_pump_failure() -> None:
    supervisor = started()
    leak = supervisor.step(snap(1.0, {LEAK1: 1.0, RUNNING: 0.0}), 1.0, [])
    assert leak.interlocks == {"leak"}
    for now in range(2, 12):
        assert supervisor.step(snap(now, {RUNNING: 0.0}), now, []).interlocks == {"leak"}
    # Released at t=12, when the pump is asked to run again: a reading taken before is old news.
    released = supervisor.step(snap(12.0, {RUNNING: 0.0}), 12.0, [auto(PUMP, 0.5)])
    assert released.interlocks == frozenset() and by_point(released)[PUMP].value == 0.15
    old = Reading(RUNNING, 0.0, 11.5, Quality.GOOD)
    restart = supervisor.step(snap(13.0, extra=[old]), 13.0, [auto(PUMP, 0.5)])
    assert restart.interlocks == frozenset()
    fresh = supervisor.step(snap(14.0, {RUNNING: 0.0}), 14.0, [auto(PUMP, 0.5)])
    assert fresh.interlocks == {"pump_failure"}


# -- overrides ---------------------------------------------------------------------------------


def test_override_beats_auto_and_failsafe_and_loses_to_interlock() -> None:
    supervisor = started()
    overrides = {PUMP: Override(PUMP, 0.5, "alice", "flush test")}
    first = by_point(supervisor.step(snap(1.0), 1.0, [auto(PUMP, 0.9)], overrides))[PUMP]
    assert first == Command(
        PUMP, 0.75, Source.OVERRIDE, "override by alice: flush test; slew-limited"
    )
    failed = supervisor.step(snap(2.0), 2.0, [], overrides, controller_failed=True)
    assert by_point(failed)[PUMP].source is Source.OVERRIDE
    assert by_point(failed)[PUMP].value == pytest.approx(0.7)
    assert by_point(failed)[VALVE].source is Source.FAILSAFE
    leak = supervisor.step(snap(3.0, {LEAK1: 1.0}), 3.0, [], overrides)
    assert by_point(leak)[PUMP].source is Source.INTERLOCK and by_point(leak)[PUMP].value == 0.0


def test_override_outside_bounds_is_clamped_in_step() -> None:
    supervisor = started()
    overrides = {PUMP: Override(PUMP, 1.4, "bob", "more flow")}
    pump = by_point(supervisor.step(snap(10.0), 10.0, [], overrides))[PUMP]
    assert (pump.value, pump.source) == (1.0, Source.OVERRIDE)
    assert pump.reason == "override by bob: more flow; clamped to max 1.0"


def test_an_override_that_cannot_apply_is_refused_once_while_asked() -> None:
    supervisor = started()
    bad = {UNKNOWN: Override(UNKNOWN, 0.5, "carol", "typo")}
    first = supervisor.step(snap(1.0), 1.0, [], bad)
    assert kinds(first) == ["override_refused"]
    assert "r01/cdu9/pump_speed_command is not an actuator of rack r01" in first.events[0].message
    assert supervisor.step(snap(2.0), 2.0, [], bad).events == ()
    supervisor.step(snap(3.0), 3.0, [])  # withdrawn
    assert kinds(supervisor.step(snap(4.0), 4.0, [], bad)) == ["override_refused"]
    nan = {PUMP: Override(PUMP, math.nan, "carol", "typo")}
    decision = supervisor.step(snap(5.0), 5.0, [], nan)
    assert kinds(decision) == ["override_refused"] and PUMP not in by_point(decision)


def test_check_override_names_the_bounds_or_the_rack() -> None:
    supervisor = Supervisor(make_config())
    supervisor.check_override(PUMP, 0.15)
    supervisor.check_override(CAP1, 1000.0)
    with pytest.raises(ValueError) as high:
        supervisor.check_override(PUMP, 1.4)
    assert str(high.value) == "pump_speed_command 1.4 is outside its safe bounds 0.15..1.0"
    with pytest.raises(ValueError) as low:
        supervisor.check_override(CAP2, 100.0)
    assert str(low.value) == "power_limit 100.0 is outside its safe bounds 300.0..1000.0"
    with pytest.raises(ValueError, match="nan is outside"):
        supervisor.check_override(PUMP, math.nan)
    with pytest.raises(ValueError) as other:
        supervisor.check_override(PointId("r02", "cdu1", "pump_speed_command"), 0.5)
    assert str(other.value) == "r02/cdu1/pump_speed_command is not an actuator of rack r01"


# -- requests, events, shutdown, state ---------------------------------------------------------


def test_unknown_actuators_and_non_auto_requests() -> None:
    supervisor = started()
    requests = [auto(UNKNOWN, 0.5), auto(PUMP, 0.2, Source.FAILSAFE), auto(VALVE, math.inf)]
    first = supervisor.step(snap(1.0), 1.0, requests)
    assert kinds(first) == ["unknown_actuator", "auto_refused"] and first.commands == ()
    for now in range(2, 10):  # once, not once per tick
        assert supervisor.step(snap(now), now, requests).events == ()
    last_wins = supervisor.step(snap(10.0), 10.0, [auto(VALVE, 0.3), auto(VALVE, 0.95)])
    assert by_point(last_wins)[VALVE].value == 0.95


def test_shutdown_hands_back_configured_values() -> None:
    supervisor = started()
    decision = supervisor.shutdown(5.0)
    assert decision.commands == (
        Command(PUMP, 0.6, Source.FAILSAFE, "shutdown: pump at 0.6 (hand-back value)"),
    )
    assert kinds(decision) == ["shutdown"] and supervisor.state.shut_down


def test_shutdown_during_a_leak_keeps_the_pump_stopped() -> None:
    supervisor = started()
    supervisor.step(snap(1.0, {LEAK1: 1.0}), 1.0, [])
    commands = by_point(supervisor.shutdown(2.0))
    assert {p: (c.value, c.source) for p, c in commands.items()} == {
        PUMP: (0.0, Source.INTERLOCK),
        CAP1: (100.0, Source.INTERLOCK),
        CAP2: (100.0, Source.INTERLOCK),
    }
    assert commands[PUMP].reason.startswith("shutdown with leak interlock")


def test_state_reports_interlocks_failsafe_and_last_commands() -> None:
    supervisor = started()
    supervisor.step(snap(1.0, {LEAK1: 1.0}), 1.0, [])
    supervisor.step(snap(2.0, {FLOW: None}), 2.0, [], controller_failed=True)
    state = supervisor.state
    assert set(state.interlocks) == {"leak"}
    assert state.interlocks["leak"].since == 1.0
    assert state.interlocks["leak"].clear_since == 2.0
    assert state.failsafe and state.failsafe_since == 2.0
    assert state.failsafe_reasons == ("controller raised",)
    pump = state.actuators[PUMP]
    assert (pump.value, pump.source, pump.ts) == (0.0, Source.INTERLOCK, 2.0)
    assert state.actuators[VALVE].source is Source.FAILSAFE


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"failsafe": 1.5}, "failsafe 1.5 is outside its hard bounds 0.0..1.0"),
        ({"on_leak": -0.1}, "on_leak -0.1 is outside its hard bounds"),
        ({"shutdown": math.nan}, "shutdown nan is outside"),
        ({"minimum": -0.5}, "must lie within the hard bounds"),
        ({"minimum": 0.9, "maximum": 0.5}, "minimum <= maximum"),
        ({"slew_per_s": 0.0}, "slew_per_s must be finite and > 0"),
        ({"point": PointId("r02", "cdu1", "pump_speed_command")}, "not a point of rack r01"),
    ],
)
def test_config_validation_names_the_problem(change: dict[str, object], message: str) -> None:
    pump = replace(PUMP_SAFETY, **change)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        Supervisor(make_config(actuators=(pump,)))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (make_config(actuators=(PUMP_SAFETY, PUMP_SAFETY)), "appears more than once"),
        (make_config(hold_s=-1.0), "hold_s must be finite and >= 0"),
        (make_config(failsafe_after_s=math.inf), "failsafe_after_s must be finite"),
        (
            make_config(actuators=(replace(STANDBY_SAFETY, on_pump_failure=1.0),)),
            "leave on_pump_failure unset",
        ),
        (make_config(temperature_limits=(TemperatureLimit(CHIP, math.nan),)), "must be finite"),
    ],
)
def test_rack_config_validation(config: SupervisorConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Supervisor(config)


# -- properties --------------------------------------------------------------------------------

SENSORS: Mapping[PointId, st.SearchStrategy[float]] = {
    LEAK1: st.sampled_from([0.0, 0.0, 0.0, 1.0, math.nan]),
    LEAK2: st.sampled_from([0.0, 0.0, 0.0, 0.0, 1.0]),
    CHIP: st.one_of(st.floats(20.0, 120.0), st.just(math.nan)),
    RUNNING: st.sampled_from([1.0, 1.0, 1.0, 0.0]),
    STANDBY_ACTIVE: st.sampled_from([0.0, 0.0, 1.0]),
    FLOW: st.floats(0.0, 300.0),
    SUPPLY: st.floats(10.0, 60.0),
}
QUALITIES = st.sampled_from([Quality.GOOD] * 12 + list(Quality))
ACTUATORS = (PUMP, VALVE, CAP1, CAP2, STANDBY)
WILD = st.one_of(
    st.floats(-1e6, 1e6),
    st.floats(-2.0, 1200.0),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)


@dataclass(frozen=True)
class Tick:
    dt: float
    op: str  # "step", "interlocks" or "observe"
    readings: Mapping[PointId, tuple[float, Quality, float] | None]  # value, quality, age
    requested: tuple[Command, ...]
    overrides: Mapping[PointId, float]
    controller_failed: bool
    observed: tuple[PointId, float]

    def snapshot(self, now: float) -> Snapshot:
        readings = []
        for point, spec in self.readings.items():
            if spec is None:
                continue
            value, quality, age = spec
            kept = None if quality is Quality.MISSING else value
            readings.append(Reading(point, kept, now - age, quality))
        return Snapshot(readings, now)


def _reading(
    values: st.SearchStrategy[float],
) -> st.SearchStrategy[tuple[float, Quality, float] | None]:
    """Mostly present and good, sometimes stale, bad, missing or absent from the snapshot."""
    present = st.tuples(values, QUALITIES, st.floats(0.0, 8.0))
    absent = st.sampled_from([False] * 9 + [True])
    return st.tuples(absent, present).map(lambda drawn: None if drawn[0] else drawn[1])


def _readings() -> st.SearchStrategy[dict[PointId, tuple[float, Quality, float] | None]]:
    return st.fixed_dictionaries({point: _reading(values) for point, values in SENSORS.items()})


TICKS = st.builds(
    Tick,
    dt=st.one_of(st.just(0.0), st.floats(0.0, 6.0)),
    op=st.sampled_from(["step", "step", "step", "step", "interlocks", "observe"]),
    readings=_readings(),
    requested=st.lists(
        st.builds(
            Command,
            st.sampled_from([*ACTUATORS, UNKNOWN]),
            WILD,
            st.sampled_from([Source.AUTO] * 4 + [Source.FAILSAFE]),
            st.just("loop"),
        ),
        max_size=6,
    ).map(tuple),
    overrides=st.dictionaries(st.sampled_from([*ACTUATORS, UNKNOWN]), WILD, max_size=3),
    controller_failed=st.sampled_from([False] * 9 + [True]),
    observed=st.tuples(st.sampled_from(ACTUATORS), st.floats(-1.0, 1.0)),
)

CONFIGS = st.builds(
    lambda flag, standby, hold_s, after_s: (with_standby if standby else make_config)(
        interlock_holds_through_blindness=flag, hold_s=hold_s, failsafe_after_s=after_s
    ),
    st.booleans(),
    st.booleans(),
    st.sampled_from([0.0, 2.0, 10.0]),
    st.sampled_from([0.5, 3.0]),
)


@dataclass(frozen=True)
class Record:
    now: float
    op: str
    snapshot: Snapshot | None
    overrides: Mapping[PointId, Override]
    decision: Decision | None
    observed: tuple[PointId, float] | None


def simulate(config: SupervisorConfig, ticks: Sequence[Tick], start: bool) -> list[Record]:
    supervisor = Supervisor(config)
    records: list[Record] = []
    now = 0.0
    if start:
        records.append(Record(now, "startup", None, {}, supervisor.startup(now), None))
    for tick in ticks:
        now += tick.dt
        snapshot = tick.snapshot(now)
        if tick.op == "observe":
            supervisor.observe(*tick.observed, now)
            records.append(Record(now, "observe", None, {}, None, tick.observed))
            continue
        overrides = {p: Override(p, v, "op", "test") for p, v in tick.overrides.items()}
        if tick.op == "interlocks":
            decision = supervisor.evaluate_interlocks(snapshot, now)
        else:
            decision = supervisor.step(
                snapshot, now, tick.requested, overrides, tick.controller_failed
            )
        records.append(Record(now, tick.op, snapshot, overrides, decision, None))
    return records


def _good(snapshot: Snapshot, point: PointId) -> float | None:
    value = snapshot.value(point)
    return value if value is not None and math.isfinite(value) else None


def check_invariants(config: SupervisorConfig, records: Sequence[Record]) -> None:
    """The safety properties every decision must have, whatever came in."""
    safety = {a.point: a for a in config.actuators}
    base: dict[PointId, tuple[float, float]] = {}  # last command, else last observation
    commanded: set[PointId] = set()
    interlocks: frozenset[str] = frozenset()
    failsafe = False
    for record in records:
        if record.observed is not None:
            point, value = record.observed
            if point in safety and point not in commanded:
                base[point] = (value, record.now)
            continue
        decision = record.decision
        assert decision is not None
        points = [c.point for c in decision.commands]
        assert len(points) == len(set(points)), "one command per actuator"
        for command in decision.commands:
            spec = safety[command.point]
            assert spec.hard_minimum <= command.value <= spec.hard_maximum
            assert command.reason
            if command.source in (Source.AUTO, Source.OVERRIDE):
                assert spec.minimum <= command.value <= spec.maximum
                _check_slew(spec, base.get(command.point), command.value, record.now)
            base[command.point] = (command.value, record.now)
            commanded.add(command.point)
        _check_interlocks(config, record, decision)
        _check_events(decision, interlocks, failsafe)
        interlocks, failsafe = decision.interlocks, decision.failsafe


def _check_slew(
    spec: ActuatorSafety, base: tuple[float, float] | None, value: float, now: float
) -> None:
    if base is None or spec.slew_per_s is None:
        return
    last, since = base
    step = spec.slew_per_s * max(now - since, 0.0)
    low = min(max(last - step, spec.minimum), spec.maximum)
    high = max(min(last + step, spec.maximum), spec.minimum)
    tolerance = 1e-9 * max(1.0, abs(spec.maximum))
    assert low - tolerance <= value <= high + tolerance, (last, step, value)


def _check_interlocks(config: SupervisorConfig, record: Record, decision: Decision) -> None:
    snapshot = record.snapshot
    if snapshot is None:  # start-up: no readings to judge by
        return
    if any((_good(snapshot, p) or 0.0) >= 0.5 for p in config.leak_points):
        assert "leak" in decision.interlocks
    if any((_good(snapshot, t.point) or -math.inf) > t.limit_c for t in config.temperature_limits):
        assert "over_temperature" in decision.interlocks
    commands = by_point(decision)
    if "leak" in decision.interlocks:
        if record.op == "step":
            assert PUMP in commands and CAP1 in commands and CAP2 in commands
        for command in commands.values():
            spec = next(a for a in config.actuators if a.point == command.point)
            if spec.role is ActuatorRole.PUMP:
                assert command.value == spec.on_leak and command.source is Source.INTERLOCK
            elif spec.role is ActuatorRole.POWER_LIMIT:
                assert spec.on_leak is not None and command.value <= spec.on_leak
    elif record.op == "step" and not decision.interlocks:
        for point, override in record.overrides.items():
            if point in commands and math.isfinite(override.value):
                assert commands[point].source is Source.OVERRIDE  # beats auto and failsafe


def _check_events(decision: Decision, before: frozenset[str], was_failsafe: bool) -> None:
    """One event per change of state: interlock events match the changes of the interlock set."""
    names = set(kinds(decision))
    for name in ("leak", "over_temperature", "pump_failure"):
        entered = name in decision.interlocks and name not in before
        cleared = name in before and name not in decision.interlocks
        assert (f"interlock_{name}" in names) == entered
        assert (f"interlock_{name}_cleared" in names) == cleared
    # a step that starts the supervisor (start-up failsafe) and finds every reading good ends
    # that failsafe in the same step, and says so
    was_failsafe = was_failsafe or "startup" in names
    assert ("failsafe_cleared" in names) == (was_failsafe and not decision.failsafe)
    if decision.failsafe and not was_failsafe:
        assert names & {"startup", "failsafe", "controller_failed"}
    assert len(decision.events) == len(set(decision.events))


@settings(max_examples=200, deadline=None)
@given(config=CONFIGS, ticks=st.lists(TICKS, min_size=5, max_size=40), start=st.booleans())
def test_property_safety_invariants_and_determinism(
    config: SupervisorConfig, ticks: list[Tick], start: bool
) -> None:
    records = simulate(config, ticks, start)
    check_invariants(config, records)
    again = simulate(config, ticks, start)
    assert [r.decision for r in again] == [r.decision for r in records]


@settings(max_examples=200, deadline=None)
@given(config=CONFIGS, ticks=st.lists(TICKS, min_size=1, max_size=25))
def test_property_a_wet_sensor_stops_the_pump_whatever_else_is_asked(
    config: SupervisorConfig, ticks: list[Tick]
) -> None:
    """With one leak sensor held wet, every step stops the pump and caps every server, whatever
    the overrides, requests, controller failures and other readings say."""
    wet = (1.0, Quality.GOOD, 0.0)
    records = simulate(
        config,
        [replace(t, op="step", readings={**t.readings, LEAK2: wet}) for t in ticks],
        start=False,
    )
    for record in records:
        assert record.decision is not None
        commands = by_point(record.decision)
        assert commands[PUMP].value == 0.0 and commands[PUMP].source is Source.INTERLOCK
        assert commands[CAP1].value == commands[CAP2].value == 100.0
        assert "leak" in record.decision.interlocks
