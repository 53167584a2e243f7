"""Edges of coolctl.control.supervisor's failsafe, pump-failure sense, low-level and supply-floor
handling and caps watch, each found by a mutant that survived the other supervisor tests
(scripts/mutation): when a failsafe holds and how far its caps fall, when a pump_running reading
is evidence, which pump stops are failures, which commands the supply floor touches and how fast
it closes the valve, and the caps alarm after it has cleared once."""

from __future__ import annotations

from collections.abc import Mapping
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
    STANDBY,
    STANDBY_ACTIVE,
    auto,
    by_point,
    cap,
    kinds,
    make_config,
    snap,
    started,
    with_standby,
)
from test_supervisor_edges import (
    DEW_POINT,
    LEVEL_POINT,
    dew_reading,
    dew_sensor_supervisor,
    floor_commands,
    low_level_supervisor,
)
from test_supervisor_plant import POWER
from test_supply_floor import AIR, FACILITY, HUMIDITY, SETPOINT
from test_supply_floor import SUPPLY as FLOOR_SUPPLY
from test_supply_floor import VALVE as VALVE_POINT
from test_supply_floor import auto as floor_auto
from test_supply_floor import snapshot as floor_snapshot
from test_supply_floor import supervisor as floor_supervisor

from coolctl.control.supervisor import Supervisor, SupervisorConfig, TemperatureLimit
from coolctl.model import PointId, Quality, Reading, Snapshot, Source

HEALTHY = (TemperatureLimit(CHIP, 85.0),)  # healthy up to 80 °C with the default 5 K margin

# -- the calmer failsafe: holding, and caps in proportion --------------------------------------


def test_a_controller_failure_takes_the_failsafe_values_even_with_healthy_chips() -> None:
    """Holding the last outputs, and caps that keep part of their span, are for a rack that is
    only blind: a controller that raised is no evidence the last outputs are right, so its
    failsafe sends the failsafe values, caps included, and says nothing of warm chips."""
    supervisor = started(make_config(healthy_points=HEALTHY, failsafe_cap_band_c=4.0))
    normal = by_point(supervisor.step(snap(1.0), 1.0, [auto(PUMP, 0.9), auto(CAP1, 900.0)]))
    assert normal[PUMP].value == pytest.approx(0.85) and normal[CAP1].value == 550.0
    failed = supervisor.step(snap(2.0), 2.0, [], controller_failed=True)
    assert failed.failsafe and kinds(failed) == ["controller_failed"]  # no failsafe_holding
    commands = by_point(failed)
    assert commands[PUMP].value == PUMP_SAFETY.failsafe
    assert commands[CAP1].value == cap(CAP1).failsafe
    assert commands[CAP1].source is Source.FAILSAFE
    assert "chips warm" not in commands[CAP1].reason


def test_the_end_of_holding_says_why() -> None:
    """A blind rack that stops holding its outputs says why in its event: the chip that came
    near its limit, or, with the chips still healthy, that it is no longer only blind."""
    supervisor = started(make_config(healthy_points=HEALTHY))
    supervisor.step(snap(1.0), 1.0, [auto(PUMP, 0.9)])
    held = supervisor.step(snap(6.0, {FLOW: Quality.STALE}), 6.0, [])
    assert "failsafe_holding" in kinds(held)
    hot = supervisor.step(snap(7.0, {FLOW: Quality.STALE, CHIP: 81.0}), 7.0, [])
    assert kinds(hot) == ["failsafe_outputs"]
    assert "(r01/srv1/chip_temperature 81 within 5 of 85)" in hot.events[0].message

    again = started(make_config(healthy_points=HEALTHY))
    again.step(snap(1.0), 1.0, [auto(PUMP, 0.9)])
    assert "failsafe_holding" in kinds(again.step(snap(6.0, {FLOW: Quality.STALE}), 6.0, []))
    raised = again.step(snap(7.0, {FLOW: Quality.STALE}), 7.0, [], controller_failed=True)
    assert "failsafe_outputs" in kinds(raised)
    outputs = [e for e in raised.events if e.kind == "failsafe_outputs"]
    assert outputs[0].message.endswith("failsafe outputs (no longer only blind)")


def test_a_cap_band_of_one_kelvin_lowers_the_caps_in_proportion() -> None:
    """Any band over 0 scales the caps, a narrow one too: 0.5 K over the healthy threshold of
    a 1 K band keeps half the caps' span; only a band of 0 drops them to the minimum at once."""
    supervisor = started(make_config(healthy_points=HEALTHY, failsafe_cap_band_c=1.0))
    normal = by_point(supervisor.step(snap(1.0), 1.0, [auto(CAP1, 900.0)]))[CAP1].value
    warm = by_point(supervisor.step(snap(6.0, {FLOW: Quality.STALE, CHIP: 80.5}), 6.0, []))
    low = cap(CAP1).failsafe
    assert warm[CAP1].value == pytest.approx(low + 0.5 * (normal - low))
    assert "chips warm" in warm[CAP1].reason


# -- pump_running: when it is evidence --------------------------------------------------------


def test_a_pump_failure_holds_while_pump_running_is_unread() -> None:
    """An unread pump_running is not a running pump: the pump failure (and its caps) holds for
    as long as it stays unread, unless blindness is configured to count as clear."""
    supervisor = started()
    assert "pump_failure" in supervisor.step(snap(1.0, {RUNNING: 0.0}), 1.0, []).interlocks
    for now in (2.0, 12.0, 30.0):
        unread = supervisor.step(snap(now, {RUNNING: Quality.STALE}), now, [])
        assert "pump_failure" in unread.interlocks
    trusting = started(make_config(interlock_holds_through_blindness=False))
    trusting.step(snap(1.0, {RUNNING: 0.0}), 1.0, [])
    trusting.step(snap(2.0, {RUNNING: Quality.STALE}), 2.0, [])
    released = trusting.step(snap(12.0, {RUNNING: Quality.STALE}), 12.0, [])
    assert "pump_failure" not in released.interlocks


def stopped_by_a_leak_and_asked_again() -> Supervisor:
    """A supervisor whose pump the leak stopped at t=1 and that was asked to run again at t=12,
    on a sample that read it stopped (the leak held 10 s after the ropes dried at t=2)."""
    supervisor = started()
    assert supervisor.step(snap(1.0, {LEAK1: 1.0, RUNNING: 0.0}), 1.0, []).interlocks == {"leak"}
    for now in range(2, 12):
        supervisor.step(snap(now, {RUNNING: 0.0}), now, [])
    released = supervisor.step(snap(12.0, {RUNNING: 0.0}), 12.0, [auto(PUMP, 0.5)])
    assert released.interlocks == frozenset() and by_point(released)[PUMP].value > 0.0
    return supervisor


def test_the_reading_a_restart_was_decided_on_is_no_pump_failure() -> None:
    """The pump_running sample of the tick that asked the pump to run again was read before
    that command went out: if it is still the last one at the next tick it tells nothing, and
    only a reading taken after the restart trips a pump failure."""
    supervisor = stopped_by_a_leak_and_asked_again()
    same = Reading(RUNNING, 0.0, 12.0, Quality.GOOD)
    assert supervisor.step(snap(13.0, extra=[same]), 13.0, [auto(PUMP, 0.5)]).interlocks == set()
    fresh = supervisor.step(snap(14.0, {RUNNING: 0.0}), 14.0, [auto(PUMP, 0.5)])
    assert fresh.interlocks == {"pump_failure"}


def test_a_reading_from_before_a_restart_does_not_release_a_pump_failure() -> None:
    """A pump failure is released only by evidence that the pump runs: a pump_running reading
    taken before the pump was last asked to run (here after a leak stopped it) is neither,
    however long it stays the last one."""
    supervisor = started()
    assert "pump_failure" in supervisor.step(snap(1.0, {RUNNING: 0.0}), 1.0, []).interlocks
    supervisor.step(snap(2.0, {LEAK1: 1.0, RUNNING: 0.0}), 2.0, [])  # the leak stops the pump
    supervisor.step(snap(3.0, {RUNNING: 0.0}), 3.0, [])
    supervisor.reset_interlock("leak", 4.0, "operator", "ropes dry")
    old = Reading(RUNNING, 0.0, 3.5, Quality.GOOD)
    restart = supervisor.step(snap(4.0, extra=[old]), 4.0, [auto(PUMP, 0.5)])
    assert by_point(restart)[PUMP].value > 0.0  # asked to run again at t=4
    for now in (5.0, 13.0, 20.0):
        decision = supervisor.step(snap(now, extra=[old]), now, [auto(PUMP, 0.5)])
        assert "pump_failure" in decision.interlocks


def test_a_late_pump_running_reading_of_zero_is_a_failure() -> None:
    """The pump has been asked to run all along: a 0 read at any time since is a failure, also
    when it reaches the supervisor after a tick that sent the pump a new speed."""
    supervisor = started()
    for now in (1.0, 2.0, 3.0):
        supervisor.step(snap(now), now, [auto(PUMP, 0.9)])
    late = Reading(RUNNING, 0.0, 2.5, Quality.GOOD)
    decision = supervisor.step(snap(4.0, extra=[late]), 4.0, [auto(PUMP, 0.9)])
    assert "pump_failure" in decision.interlocks


# -- which pump stops are failures ------------------------------------------------------------


def test_a_pump_that_stops_while_a_low_level_asks_for_a_safe_speed_is_a_pump_failure() -> None:
    """Only a low-level value of 0 stops the pump on purpose; at a safe speed (0.3) it must keep
    running, so a pump that stops then has failed."""
    dry = [Reading(LEVEL_POINT, 5.0, 1.0, Quality.GOOD)]
    supervisor = low_level_supervisor(0.3)
    decision = supervisor.evaluate_interlocks(snap(1.0, {RUNNING: 0.0}, dry), 1.0)
    assert decision.interlocks == {"low_coolant_level", "pump_failure"}


def test_every_new_pump_failure_waits_for_the_standby_again() -> None:
    """The caps of a pump failure that ended do not carry over to the next one: a new failure
    gives the standby pump its changeover time again before the caps go down."""
    supervisor = started(with_standby())
    supervisor.step(snap(1.0, {RUNNING: 0.0}), 1.0, [])
    capped = supervisor.step(snap(3.5, {RUNNING: 0.0}), 3.5, [])
    assert kinds(capped) == ["pump_failure_caps"] and supervisor.state.pump_failure_caps
    for now in (4.0, 10.0, 14.0):
        decision = supervisor.step(snap(now), now, [])
    assert "pump_failure" not in decision.interlocks
    again = supervisor.step(snap(15.0, {RUNNING: 0.0}), 15.0, [])
    assert "pump_failure" in again.interlocks and "pump_failure_caps" not in kinds(again)
    assert not supervisor.state.pump_failure_caps
    assert CAP1 not in by_point(again)  # no pump-failure caps sent yet
    late = supervisor.step(snap(17.5, {RUNNING: 0.0}), 17.5, [])
    assert kinds(late) == ["pump_failure_caps"]


def test_flow_at_exactly_30_percent_of_rated_still_waits_for_the_standby() -> None:
    """Only a flow under 30 % of rated means nothing moves the coolant and caps at once: at
    exactly 60 of 200 L/min the standby pump still gets its changeover time."""
    config = make_config(flow=FLOW, rated_flow_lpm=200.0, standby_changeover_s=2.0)
    supervisor = started(replace(config, standby_active=STANDBY_ACTIVE))
    supervisor.step(snap(1.0, {FLOW: 160.0}), 1.0, [auto(PUMP, 0.9)])
    at = supervisor.step(snap(2.0, {FLOW: 60.0, RUNNING: 0.0}), 2.0, [auto(PUMP, 0.9)])
    assert "pump_failure" in at.interlocks and "pump_failure_caps" not in kinds(at)
    under = supervisor.step(snap(2.5, {FLOW: 59.9, RUNNING: 0.0}), 2.5, [auto(PUMP, 0.9)])
    assert "pump_failure_caps" in kinds(under)


# -- the supply floor: what it touches, and how fast it closes --------------------------------


def test_the_supply_floor_touches_only_supply_setpoints_and_the_supply_valve() -> None:
    """A pump speed (or any point not named supply_temperature_setpoint) is no temperature: the
    floor never raises it, and a valve on another CDU than the supply reading is not held."""
    other_valve = PointId("r01", "cdu2", "valve_command")
    base = floor_supervisor().config
    (valve, setpoint) = base.actuators
    moved = replace(valve, point=other_valve)
    sup = Supervisor(replace(base, actuators=(valve, setpoint, moved, PUMP_SAFETY)))
    sup.startup(0.0)
    first = floor_commands(
        sup,
        1.0,
        floor_snapshot(1.0, 35.0),
        floor_auto(VALVE_POINT, 0.6),
        floor_auto(other_valve, 0.6),
        floor_auto(PUMP, 0.5),
    )
    pump = first[PUMP]
    assert pump.value == pytest.approx(0.75) and "supply floor" not in pump.reason  # slewing
    under = floor_commands(
        sup,
        2.0,
        floor_snapshot(2.0, 24.0),
        floor_auto(VALVE_POINT, 1.0),
        floor_auto(other_valve, 1.0),
    )
    assert under[VALVE_POINT].value == pytest.approx(0.58)  # the supply valve closes
    assert under[other_valve].value == 1.0 and under[other_valve].reason == "loop"


def test_a_setpoint_at_exactly_the_floor_passes_as_the_loop_asked() -> None:
    """A setpoint at the floor is not under it: it goes out with the loop's own reason, not one
    that claims the floor held it."""
    sup = dew_sensor_supervisor()  # floor 25.0 °C: dew point 23.0 + 2 K
    sent = floor_commands(sup, 1.0, dew_reading(1.0, 35.0), floor_auto(SETPOINT, 25.0))
    assert sent[SETPOINT].value == 25.0 and sent[SETPOINT].reason == "loop"


@pytest.mark.parametrize(("tick_s", "closed_to"), [(2.0, 0.56), (0.5, 0.59)])
def test_the_supply_valve_closes_at_its_rate_per_second_over_ticks_of_any_length(
    tick_s: float, closed_to: float
) -> None:
    """0.02 per second over a 2 s tick is 0.04, over a half-second tick 0.01: the close rate
    scales with the time since the last command, it is neither a step per tick nor a whole
    second's for a shorter one."""
    sup = floor_supervisor()
    sup.startup(0.0)
    floor_commands(sup, 1.0, floor_snapshot(1.0, 35.0), floor_auto(VALVE_POINT, 0.6))
    now = 1.0 + tick_s
    held = floor_commands(sup, now, floor_snapshot(now, 24.0), floor_auto(VALVE_POINT, 1.0))
    assert held[VALVE_POINT].value == pytest.approx(closed_to)


def test_under_the_floor_the_loop_may_close_the_valve_at_or_beyond_the_close_rate() -> None:
    """The floor only stops the valve opening: a command at the closing ceiling, or under it,
    goes out as the loop asked."""
    sup = floor_supervisor()
    sup.startup(0.0)
    floor_commands(sup, 1.0, floor_snapshot(1.0, 35.0), floor_auto(VALVE_POINT, 0.6))
    ceiling = 0.6 - 0.02 * 1.0
    at = floor_commands(sup, 2.0, floor_snapshot(2.0, 24.0), floor_auto(VALVE_POINT, ceiling))
    assert at[VALVE_POINT].value == ceiling and at[VALVE_POINT].reason == "loop"
    faster = floor_commands(sup, 3.0, floor_snapshot(3.0, 24.0), floor_auto(VALVE_POINT, 0.3))
    assert faster[VALVE_POINT].value == 0.3 and faster[VALVE_POINT].reason == "loop"


def blind_valve(
    config: SupervisorConfig, values: Mapping[PointId, float], lost: PointId, valve_at: float
) -> float:
    """The valve's failsafe value once the rack has gone blind to `lost`: `values` read at 1 s
    with the loop's valve at `valve_at`, then at 6 s without `lost`."""
    sup = Supervisor(config)
    sup.startup(0.0)

    def readings(now: float, without: PointId | None = None) -> Snapshot:
        good = [Reading(p, v, now, Quality.GOOD) for p, v in values.items() if p != without]
        return Snapshot(good, now)

    floor_commands(sup, 1.0, readings(1.0), floor_auto(VALVE_POINT, valve_at))
    blind = sup.step(readings(6.0, lost), 6.0, [])
    assert blind.failsafe
    command = by_point(blind)[VALVE_POINT]
    assert command.source is Source.FAILSAFE
    return command.value


def test_a_blind_failsafe_opens_the_valve_onto_facility_water_at_the_dew_floor() -> None:
    """Facility water at exactly the dew point + margin (25.0 °C) is not under it: with the
    supply unread, the failsafe opens the valve fully."""
    config: SupervisorConfig = replace(
        floor_supervisor().config, dew_point=DEW_POINT, required=(FLOOR_SUPPLY,)
    )
    values = {FACILITY: 25.0, AIR: 28.0, HUMIDITY: 0.75, DEW_POINT: 23.0, FLOOR_SUPPLY: 35.0}
    assert blind_valve(config, values, FLOOR_SUPPLY, 0.2) == 1.0


# -- caps that do not hold --------------------------------------------------------------------


def test_caps_holding_is_said_once_and_a_second_overshoot_alarms_again() -> None:
    """After power came back within the caps, that is one event, not one per tick; and power
    over the caps again for the hold time is a new alarm."""
    supervisor = started(make_config(power=(POWER,), caps_hold_within_s=10.0))
    caps = [auto(CAP1, 400.0), auto(CAP2, 400.0)]
    supervisor.step(snap(1.0, {POWER: 2000.0}), 1.0, caps)
    assert kinds(supervisor.step(snap(11.0, {POWER: 2000.0}), 11.0, caps)) == ["caps_not_holding"]
    assert kinds(supervisor.step(snap(12.0, {POWER: 850.0}), 12.0, caps)) == ["caps_holding"]
    assert kinds(supervisor.step(snap(13.0, {POWER: 850.0}), 13.0, caps)) == []
    supervisor.step(snap(14.0, {POWER: 2000.0}), 14.0, caps)
    assert kinds(supervisor.step(snap(24.0, {POWER: 2000.0}), 24.0, caps)) == ["caps_not_holding"]


# -- edges found by a later run ---------------------------------------------------------------


def test_a_pump_running_reading_of_exactly_one_half_is_running() -> None:
    """`pump_running` reads running from 0.5 up (as every on/off point here): a pump asked to
    run that reads 0.5 has not failed."""
    supervisor = started()
    supervisor.step(snap(1.0), 1.0, [auto(PUMP, 0.5)])
    decision = supervisor.step(snap(2.0, {RUNNING: 0.5}), 2.0, [auto(PUMP, 0.5)])
    assert "pump_failure" not in decision.interlocks


def test_a_pump_failure_with_a_flow_meter_but_no_rated_flow_waits_for_the_standby() -> None:
    """Without a rated flow there is no "no flow" to judge by: a pump failure waits for the
    standby pump, as on a rack without a flow meter."""
    supervisor = started(with_standby(flow=FLOW))
    failed = supervisor.step(snap(1.0, {RUNNING: 0.0}), 1.0, [])
    assert by_point(failed)[STANDBY].value == 1.0
    assert not supervisor.state.pump_failure_caps


def test_room_air_without_its_humidity_gives_no_dew_point_floor() -> None:
    """The dew point is worked out from room air only with both its temperature and its
    humidity: without the humidity the supply floor is the facility water's alone."""
    sup = floor_supervisor()
    sup.startup(0.0)
    values = {FLOOR_SUPPLY: 35.0, FACILITY: 18.0, AIR: 28.0}
    readings = Snapshot([Reading(p, v, 1.0, Quality.GOOD) for p, v in values.items()], 1.0)
    sent = by_point(sup.step(readings, 1.0, [floor_auto(SETPOINT, 21.0)]))
    assert sent[SETPOINT].value == 21.0  # over facility water + 2 K; no dew point to floor it


def test_a_failsafe_valve_with_the_supply_read_is_not_held_for_the_dew_point() -> None:
    """Holding the valve for a cold facility water is for a failsafe blind to the supply: with
    the supply read (the rack blind to its flow only) and over its floor, the valve takes its
    failsafe value."""
    flow = PointId(FLOOR_SUPPLY.rack, "cdu1", "flow")
    config = replace(floor_supervisor().config, required=(FLOOR_SUPPLY, flow))
    values = {FLOOR_SUPPLY: 35.0, FACILITY: 18.0, AIR: 28.0, HUMIDITY: 0.75, flow: 150.0}
    assert blind_valve(config, values, flow, 0.2) == 1.0


def test_a_blind_failsafe_with_no_dew_point_to_judge_by_opens_the_valve() -> None:
    """Blind to the supply on a rack with facility water read but no dew point (no dew-point
    sensor, no room air): nothing to hold the valve for, the failsafe opens it fully."""
    config: SupervisorConfig = replace(
        floor_supervisor().config,
        room_temperature=None,
        room_humidity=None,
        required=(FLOOR_SUPPLY,),
    )
    values = {FACILITY: 18.0, FLOOR_SUPPLY: 35.0}
    assert blind_valve(config, values, FLOOR_SUPPLY, 0.2) == 1.0


def test_a_blind_failsafe_that_closes_the_valve_is_not_held_open_for_the_dew_point() -> None:
    """Holding the valve for a cold facility water only stops it opening: a failsafe value
    under where the valve stands (less cooling, no sweating) goes out as configured."""
    config: SupervisorConfig = replace(floor_supervisor().config, required=(FLOOR_SUPPLY,))
    valve = replace(config.actuators[0], failsafe=0.5)
    config = replace(config, actuators=(valve, *config.actuators[1:]))
    values = {FACILITY: 18.0, AIR: 28.0, HUMIDITY: 0.75, FLOOR_SUPPLY: 35.0}
    assert blind_valve(config, values, FLOOR_SUPPLY, 0.8) == 0.5
