"""Edges of coolctl.control.supervisor that its main tests passed by, each found by a mutant
that survived them (scripts/mutation): what it reports as commanded, silent sensors, which
interlock's value wins, validation, the documented defaults, and the supply floor."""

from __future__ import annotations

import dataclasses
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
from test_supervisor_plant import POWER
from test_supply_floor import SETPOINT
from test_supply_floor import SUPPLY as FLOOR_SUPPLY
from test_supply_floor import VALVE as VALVE_POINT
from test_supply_floor import auto as floor_auto
from test_supply_floor import snapshot as floor_snapshot
from test_supply_floor import supervisor as floor_supervisor

from coolctl.control.supervisor import Override, Supervisor, SupervisorConfig, TemperatureLimit
from coolctl.model import Command, PointId, Quality, Reading, Snapshot, Source

LEVEL_POINT = PointId("r01", "cdu1", "reservoir_level")


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


# -- second round: what a further sample of mutants showed ------------------------------------


def test_every_public_record_of_the_supervisor_is_frozen() -> None:
    """Configs, decisions and state are shared with the daemon, the API and the metrics: none
    may be changed behind the supervisor's back."""
    supervisor = started()
    supervisor.step(snap(1.0, {CHIP: 99.0}), 1.0, [])
    decision = supervisor.step(snap(2.0), 2.0, [auto(PUMP, 0.5)])
    state = supervisor.state
    records = [
        make_config(),
        PUMP_SAFETY,
        TemperatureLimit(CHIP, 95.0),
        Override(PUMP, 0.5, "operator", "test"),
        decision,
        state,
        next(iter(state.interlocks.values())),
        next(iter(state.actuators.values())),
    ]
    for record in records:
        field = dataclasses.fields(record)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, field, None)


def test_a_new_supervisor_is_not_shut_down_and_knows_when_failsafe_began() -> None:
    supervisor = Supervisor(make_config())
    assert not supervisor.state.shut_down
    supervisor.startup(5.0)
    assert supervisor.state.failsafe_since == 5.0


def test_a_standby_selector_that_cannot_take_1_is_refused() -> None:
    selector = replace(with_standby().actuators[-1], maximum=0.5, hard_maximum=0.5)
    config = replace(with_standby(), actuators=(PUMP_SAFETY, selector))
    with pytest.raises(ValueError, match=r"must be able to take 1\.0"):
        Supervisor(config)


def test_a_blind_rack_without_thermal_evidence_takes_the_failsafe_caps() -> None:
    supervisor = started(make_config(failsafe_cap_band_c=5.0))
    supervisor.step(snap(1.0, {FLOW: None}), 1.0, [auto(CAP1, 900.0)])
    blind = supervisor.step(snap(4.5, {FLOW: None}), 4.5, [auto(CAP1, 900.0)])
    assert blind.failsafe and by_point(blind)[CAP1].value == 500.0


def test_leak_pump_response_times_out_from_the_leak_not_from_time_zero() -> None:
    config = make_config(power=(POWER,), leak_caps_power_w=30_000.0, leak_caps_timeout_s=5.0)
    supervisor = started(config)
    for now in range(1, 100, 10):
        supervisor.step(snap(float(now), {POWER: 90_000.0}), float(now), [])
    supervisor.evaluate_interlocks(snap(100.0, {LEAK1: 1.0, POWER: 90_000.0}), 100.0)
    early = supervisor.step(snap(104.0, {LEAK1: 1.0, POWER: 90_000.0}), 104.0, [])
    assert not supervisor.state.leak_caps_confirmed and PUMP not in by_point(early)
    late = supervisor.step(snap(105.5, {LEAK1: 1.0, POWER: 90_000.0}), 105.5, [])
    assert kinds(late) == ["leak_caps_unconfirmed"] and by_point(late)[PUMP].value == 0.0


def test_leak_caps_are_confirmed_at_exactly_the_target_power() -> None:
    config = make_config(power=(POWER,), leak_caps_power_w=30_000.0, leak_caps_timeout_s=5.0)
    supervisor = started(config)
    supervisor.evaluate_interlocks(snap(1.0, {LEAK1: 1.0, POWER: 90_000.0}), 1.0)
    done = supervisor.step(snap(2.0, {LEAK1: 1.0, POWER: 30_000.0}), 2.0, [])
    assert kinds(done) == ["leak_caps_confirmed"]


def test_flow_per_kilowatt_at_and_just_under_its_floor() -> None:
    """1.5 L/min per kW of 100 kW: 150 L/min is enough, 149.9 is not."""
    config = make_config(flow=FLOW, power=(POWER,), min_flow_lpm_per_kw=1.5, flow_debounce_s=0.0)
    supervisor = started(config)
    at = supervisor.step(snap(1.0, {FLOW: 150.0, POWER: 100_000.0}), 1.0, [])
    assert "loss_of_flow" not in at.interlocks
    under = supervisor.step(snap(2.0, {FLOW: 149.9, POWER: 100_000.0}), 2.0, [])
    assert "loss_of_flow" in under.interlocks


def test_power_exactly_at_what_the_caps_allow_is_holding() -> None:
    supervisor = started(make_config(power=(POWER,), caps_hold_within_s=1.0))
    caps = [auto(CAP1, 400.0), auto(CAP2, 400.0)]
    allowed = 1.1 * 800.0
    for now in (1.0, 3.0, 5.0):
        decision = supervisor.step(snap(now, {POWER: allowed}), now, caps)
        assert "caps_not_holding" not in kinds(decision)


DEW_POINT = PointId("r01", "room1", "dew_point")


def dew_sensor_supervisor() -> Supervisor:
    """The supply-floor supervisor with a dew-point sensor as well as the room air."""
    sup = Supervisor(replace(floor_supervisor().config, dew_point=DEW_POINT))
    sup.startup(0.0)
    return sup


def dew_reading(now: float, supply: float) -> Snapshot:
    """The floor tests' readings, with the dew-point sensor at 23.0 °C."""
    values = [*floor_snapshot(now, supply).values(), Reading(DEW_POINT, 23.0, now, Quality.GOOD)]
    return Snapshot(values, now)


def test_a_dew_point_sensor_wins_over_the_room_air_and_binds_at_its_floor_exactly() -> None:
    """A dew point of 23.0 °C measured: the floor is 25.0 °C, whatever the room air (28 °C at
    75 %, 23.2 °C by Magnus) says; a supply at exactly 25.0 °C is not under it."""
    sup = dew_sensor_supervisor()
    reading = dew_reading

    sent = floor_commands(sup, 1.0, reading(1.0, 35.0), floor_auto(SETPOINT, 21.0))
    assert sent[SETPOINT].value == pytest.approx(25.0)
    at_floor = sup.step(reading(2.0, 25.0), 2.0, [])
    assert "supply_under_floor" not in kinds(at_floor)
    under = sup.step(reading(3.0, 24.0), 3.0, [])
    assert kinds(under) == ["supply_under_floor"]
    assert under.events[0].message.startswith("supply 24.0 °C under its floor 25.0 °C")


# -- third round ------------------------------------------------------------------------------


def test_loss_of_flow_does_not_win_the_pump_over_more_cooling() -> None:
    """Only a leak and a low level take precedence for the pump; between a loss of flow and an
    over-temperature, the most cooling."""
    pump = replace(PUMP_SAFETY, on_loss_of_flow=0.5, on_over_temperature=1.0)
    config = make_config(
        actuators=(pump, VALVE_SAFETY, cap(CAP1), cap(CAP2)),
        flow=FLOW,
        power=(POWER,),
        min_flow_lpm_per_kw=1.5,
        flow_debounce_s=0.0,
    )
    supervisor = started(config)
    decision = supervisor.step(snap(1.0, {FLOW: 100.0, POWER: 100_000.0, CHIP: 99.0}), 1.0, [])
    assert {"loss_of_flow", "over_temperature"} <= decision.interlocks
    assert by_point(decision)[PUMP].value == 1.0


def test_non_negative_settings_take_fractions_and_refuse_negatives() -> None:
    for name in ("leak_debounce_s", "leak_caps_timeout_s", "silent_after_s"):
        Supervisor(make_config(**{name: 0.5}))
        for bad in (-1.0, math.inf):
            with pytest.raises(ValueError, match=name):
                Supervisor(make_config(**{name: bad}))


def test_actuator_bounds_must_be_finite_and_may_be_a_single_value() -> None:
    with pytest.raises(ValueError, match="must be finite"):
        Supervisor(make_config(actuators=(replace(PUMP_SAFETY, hard_maximum=math.inf),)))
    fixed = replace(PUMP_SAFETY, minimum=0.6, maximum=0.6)
    Supervisor(make_config(actuators=(fixed, VALVE_SAFETY)))
    selector = replace(with_standby().actuators[-1], hard_maximum=2.0)
    Supervisor(replace(with_standby(), actuators=(PUMP_SAFETY, selector)))


def test_a_flow_meter_reading_below_zero_is_no_loss_of_flow_without_a_floor() -> None:
    config = make_config(flow=FLOW, power=(POWER,), rated_flow_lpm=None, flow_debounce_s=0.0)
    supervisor = started(config)
    decision = supervisor.step(snap(1.0, {FLOW: -0.5, POWER: 100_000.0}), 1.0, [])
    assert "loss_of_flow" not in decision.interlocks


def test_loss_of_flow_holds_while_the_flow_meter_is_unread() -> None:
    config = make_config(flow=FLOW, power=(POWER,), min_flow_lpm_per_kw=1.5, flow_debounce_s=0.0)
    supervisor = started(config)
    supervisor.step(snap(1.0, {FLOW: 20.0, POWER: 100_000.0}), 1.0, [])
    for now in (2.0, 20.0, 40.0):
        decision = supervisor.step(snap(now, {FLOW: Quality.BAD, POWER: 100_000.0}), now, [])
        assert "loss_of_flow" in decision.interlocks


def test_a_flow_meter_that_never_reported_is_a_silent_sensor() -> None:
    supervisor = started(make_config(flow=FLOW, silent_after_s=10.0))
    decision = supervisor.step(snap(11.0, {FLOW: None}), 11.0, [])
    assert "safety_sensor_silent" in kinds(decision)
    assert FLOW in supervisor.state.silent_sensors


def test_a_chip_exactly_at_the_healthy_threshold_is_healthy() -> None:
    config = make_config(healthy_points=(TemperatureLimit(CHIP, 85.0),), healthy_margin_c=5.0)
    supervisor = started(config)
    supervisor.step(snap(1.0, {CHIP: 80.0}), 1.0, [auto(PUMP, 0.9)])
    blind = supervisor.step(snap(6.0, {FLOW: Quality.STALE, CHIP: 80.0}), 6.0, [])
    assert "failsafe_holding" in kinds(blind)


def low_level_supervisor(on_low_level: float | None) -> Supervisor:
    """A started supervisor whose pump CDU's reservoir must hold 8 L, the pump stopped under
    it where `on_low_level` says so."""
    pump = replace(PUMP_SAFETY, on_low_level=on_low_level)
    config = make_config(
        actuators=(pump, VALVE_SAFETY, cap(CAP1), cap(CAP2)),
        reservoir_level=LEVEL_POINT,
        min_reservoir_level_l=8.0,
    )
    return started(config)


def test_a_pump_the_low_level_stopped_is_not_a_pump_failure() -> None:
    supervisor = low_level_supervisor(0.0)
    low = supervisor.step(snap(1.0, extra=[Reading(LEVEL_POINT, 5.0, 1.0, Quality.GOOD)]), 1.0, [])
    assert "low_coolant_level" in low.interlocks and by_point(low)[PUMP].value == 0.0
    stopped = supervisor.step(
        snap(2.0, {RUNNING: 0.0}, extra=[Reading(LEVEL_POINT, 5.0, 2.0, Quality.GOOD)]), 2.0, []
    )
    assert "pump_failure" not in stopped.interlocks


def test_a_standby_that_does_not_take_over_is_capped_after_the_changeover() -> None:
    supervisor = started(with_standby())
    supervisor.step(snap(1.0, {RUNNING: 0.0}), 1.0, [])
    capped = supervisor.evaluate_interlocks(snap(3.7, {RUNNING: 0.0}), 3.7)
    assert kinds(capped) == ["pump_failure_caps"]


# -- fourth round -----------------------------------------------------------------------------


def test_caps_that_do_not_hold_alarm_after_10_s_by_default() -> None:
    supervisor = started(make_config(power=(POWER,)))
    caps = [auto(CAP1, 400.0), auto(CAP2, 400.0)]
    for now in (1.0, 2.0, 3.0):  # the caps slew down to 400 W each
        supervisor.step(snap(now, {POWER: 800.0}), now, caps)
    over = 1.1 * 800.0 + 0.5  # half a watt over what the caps allow, no overhead configured
    supervisor.step(snap(4.0, {POWER: over}), 4.0, caps)
    assert "caps_not_holding" not in kinds(supervisor.step(snap(13.5, {POWER: over}), 13.5, caps))
    assert kinds(supervisor.step(snap(14.5, {POWER: over}), 14.5, caps)) == ["caps_not_holding"]


def test_zero_is_a_valid_non_negative_setting_and_a_zero_slew_is_not() -> None:
    for name in ("leak_debounce_s", "leak_caps_timeout_s", "silent_after_s"):
        Supervisor(make_config(**{name: 0.0}))
    with pytest.raises(ValueError, match="slew_per_s"):
        Supervisor(make_config(actuators=(replace(PUMP_SAFETY, slew_per_s=0.0),)))
    pinned = replace(with_standby().actuators[-1], minimum=1.0, failsafe=1.0, hard_minimum=1.0)
    Supervisor(replace(with_standby(), actuators=(PUMP_SAFETY, pinned)))


def test_resetting_another_interlock_does_not_release_the_leaks_pump_step() -> None:
    config = make_config(power=(POWER,), leak_caps_power_w=30_000.0, leak_caps_timeout_s=60.0)
    supervisor = started(config)
    supervisor.step(snap(1.0, {LEAK1: 1.0, CHIP: 99.0, POWER: 90_000.0}), 1.0, [])
    supervisor.step(snap(2.0, {LEAK1: 1.0, CHIP: 70.0, POWER: 90_000.0}), 2.0, [])
    supervisor.reset_interlock("over_temperature", 3.0, "operator", "chip back")
    assert not supervisor.state.leak_caps_confirmed
    decision = supervisor.step(snap(4.0, {LEAK1: 1.0, POWER: 90_000.0}), 4.0, [auto(PUMP, 0.9)])
    assert by_point(decision)[PUMP].source is not Source.INTERLOCK


def test_the_start_up_reason_names_only_the_readings_still_awaited() -> None:
    supervisor = Supervisor(make_config())
    supervisor.startup(0.0)
    decision = supervisor.step(snap(1.0, {SUPPLY: None}), 1.0, [])
    reason = by_point(decision)[PUMP].reason
    assert "r01/cdu1/supply_temperature" in reason and "r01/cdu1/flow" not in reason


def test_low_level_holds_while_the_level_is_unread() -> None:
    supervisor = low_level_supervisor(None)
    supervisor.step(snap(1.0, extra=[Reading(LEVEL_POINT, 5.0, 1.0, Quality.GOOD)]), 1.0, [])
    for now in (2.0, 20.0, 40.0):
        unread = [Reading(LEVEL_POINT, None, now, Quality.BAD)]
        assert "low_coolant_level" in supervisor.step(snap(now, extra=unread), now, []).interlocks


def test_loss_of_flow_neither_trips_nor_clears_with_the_pump_nearly_stopped() -> None:
    config = make_config(flow=FLOW, rated_flow_lpm=200.0, flow_debounce_s=0.0)
    supervisor = started(config)
    supervisor.step(snap(1.0, {FLOW: 20.0}), 1.0, [auto(PUMP, 0.8)])
    assert "loss_of_flow" in supervisor.state.interlocks
    for now in range(2, 40, 4):  # the pump slewed down under the minimum speed judged
        decision = supervisor.step(snap(now, {FLOW: 20.0}), float(now), [auto(PUMP, 0.15)])
    assert supervisor.commanded(PUMP) == pytest.approx(0.15)
    assert "loss_of_flow" in decision.interlocks


def test_silent_sensors_get_their_grace_from_start_up_not_from_time_zero() -> None:
    supervisor = Supervisor(make_config(silent_after_s=10.0))
    supervisor.startup(100.0)
    supervisor.step(snap(100.0), 100.0, [])
    assert kinds(supervisor.step(snap(105.0, {LEAK1: None}), 105.0, [])) == []
    assert kinds(supervisor.step(snap(110.0, {LEAK1: None}), 110.0, [])) == ["safety_sensor_silent"]


def test_a_pump_stopped_by_a_low_level_in_the_same_sample_is_not_a_pump_failure() -> None:
    dry = [Reading(LEVEL_POINT, 5.0, 1.0, Quality.GOOD)]
    protected = low_level_supervisor(0.0)
    decision = protected.evaluate_interlocks(snap(1.0, {RUNNING: 0.0}, dry), 1.0)
    assert decision.interlocks == {"low_coolant_level"}
    # a pump the low level does not stop (no value for it) has failed when it stops
    unprotected = low_level_supervisor(None)
    failed = unprotected.evaluate_interlocks(snap(1.0, {RUNNING: 0.0}, dry), 1.0)
    assert {"low_coolant_level", "pump_failure"} <= failed.interlocks


def test_the_valve_is_free_with_the_supply_exactly_at_its_floor() -> None:
    sup = dew_sensor_supervisor()
    reading = dew_reading

    floor_commands(sup, 1.0, reading(1.0, 35.0), floor_auto(VALVE_POINT, 0.2))
    sent = floor_commands(sup, 2.0, reading(2.0, 25.0), floor_auto(VALVE_POINT, 0.9))
    assert sent[VALVE_POINT].value == 0.9
