"""The supervisor's configuration: the defaults its docstrings promise, what validation refuses
and how it names the culprit, and the state a new supervisor starts in (coolctl.control.supervisor).

Each test pins behaviour that a mutant of the defaults, the validation or the initial state
changed without the main tests noticing (scripts/mutation)."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
from test_supervisor import (
    CAP1,
    CHIP,
    FLOW,
    LEAK1,
    PUMP,
    PUMP_SAFETY,
    RACK,
    RUNNING,
    VALVE_SAFETY,
    auto,
    by_point,
    cap,
    kinds,
    make_config,
    snap,
    started,
)
from test_supervisor_edges import DEW_POINT, dew_reading
from test_supervisor_plant import POWER
from test_supply_floor import FACILITY, SETPOINT, SUPPLY, VALVE
from test_supply_floor import auto as floor_auto
from test_supply_floor import supervisor as floor_supervisor

from coolctl.control.supervisor import (
    LEAK,
    OVER_TEMPERATURE,
    InterlockStatus,
    Supervisor,
    SupervisorConfig,
    SupervisorState,
    TemperatureLimit,
)
from coolctl.model import PointId, Quality, Reading, Source

# -- the documented defaults -------------------------------------------------------------------


def test_loss_of_flow_trips_after_the_2_s_default_debounce_not_before() -> None:
    """A flow dip shorter than 2 s (a valve stroke, an air bubble past the meter) must not cap
    the rack; one that lasts 2 s must."""
    supervisor = started(make_config(flow=FLOW, rated_flow_lpm=200.0))
    assert "loss_of_flow" not in supervisor.step(snap(1.0, {FLOW: 20.0}), 1.0, []).interlocks
    assert "loss_of_flow" not in supervisor.step(snap(2.5, {FLOW: 20.0}), 2.5, []).interlocks
    tripped = supervisor.step(snap(3.0, {FLOW: 20.0}), 3.0, [])
    assert "loss_of_flow" in tripped.interlocks and "interlock_loss_of_flow" in kinds(tripped)


def blind_with_chip(chip_c: float, **changes: object) -> tuple[Supervisor, list[str]]:
    """A rack whose chip (limit 85 °C, the default margin and band) reads `chip_c` while the
    flow meter goes stale until the rack is blind; the events of the step that blinds it."""
    config = make_config(healthy_points=(TemperatureLimit(CHIP, 85.0),), **changes)
    supervisor = started(config)
    for now in (1.0, 2.0, 3.0):  # the cap's loop raises it over its failsafe value
        supervisor.step(snap(now, {CHIP: chip_c}), now, [auto(CAP1, 900.0)])
    blind = supervisor.step(snap(6.5, {FLOW: Quality.STALE, CHIP: chip_c}), 6.5, [])
    assert blind.failsafe
    return supervisor, kinds(blind)


def test_a_blind_rack_holds_its_outputs_with_chips_5_degrees_under_their_limit_by_default() -> None:
    """The default healthy margin is 5 °C: a chip at 80 °C under an 85 °C limit is healthy (the
    outputs hold), at 80.5 °C it is not (the failsafe outputs go out)."""
    _, at_margin = blind_with_chip(80.0)
    assert "failsafe_holding" in at_margin
    _, inside = blind_with_chip(80.5)
    assert "failsafe_holding" not in inside


def test_a_blind_rack_with_warm_chips_takes_the_failsafe_caps_at_once_by_default() -> None:
    """With no `failsafe_cap_band_c` configured, a chip just over the healthy threshold puts the
    caps at their failsafe value at once, not somewhere between it and the loop's value."""
    supervisor, _ = blind_with_chip(80.5)
    assert supervisor.commanded(CAP1) == 500.0
    assert supervisor.state.actuators[CAP1].source is Source.FAILSAFE


def default_floor_supervisor() -> Supervisor:
    """The supply-floor supervisor with a dew-point sensor and the default margin and valve
    closing rate (neither configured)."""
    base = floor_supervisor().config
    sup = Supervisor(
        SupervisorConfig(
            rack=base.rack,
            actuators=base.actuators,
            supply=SUPPLY,
            facility_supply=FACILITY,
            dew_point=DEW_POINT,
        )
    )
    sup.startup(0.0)
    return sup


def test_the_supply_floor_is_2_degrees_over_the_dew_point_by_default() -> None:
    """A measured dew point of 23 °C floors the supply setpoint at 25 °C by default."""
    sup = default_floor_supervisor()
    decision = sup.step(dew_reading(1.0, 35.0), 1.0, [floor_auto(SETPOINT, 21.0)])
    assert by_point(decision)[SETPOINT].value == pytest.approx(25.0)


def test_the_supply_valve_closes_at_2_percent_a_second_by_default() -> None:
    """Under the floor the valve closes slowly (0.02/s), not shut at once: slamming it would
    swing the supply temperature past the floor the other way."""
    sup = default_floor_supervisor()
    sup.step(dew_reading(1.0, 35.0), 1.0, [floor_auto(VALVE, 0.6)])
    decision = sup.step(dew_reading(2.0, 24.0), 2.0, [floor_auto(VALVE, 1.0)])
    assert by_point(decision)[VALVE].value == pytest.approx(0.58)
    assert kinds(decision) == ["supply_under_floor"]


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("rack", ["r00", "r02"])
def test_an_actuator_of_another_rack_is_refused_whichever_way_its_name_sorts(rack: str) -> None:
    """A rack's supervisor commanding another rack's pump would act on the wrong plant."""
    stranger = replace(PUMP_SAFETY, point=PointId(rack, "cdu1", "pump_speed_command"))
    with pytest.raises(ValueError, match=f"not a point of rack {RACK}"):
        Supervisor(make_config(actuators=(stranger,)))


@pytest.mark.parametrize("slew", [0.0, -0.5, float("inf"), float("nan")])
def test_a_slew_that_is_not_positive_and_finite_is_refused_naming_the_actuator(
    slew: float,
) -> None:
    """An operator with a dozen actuators must be told which one's slew is wrong."""
    bad = replace(PUMP_SAFETY, slew_per_s=slew)
    with pytest.raises(ValueError, match=re.escape(f"{PUMP}: slew_per_s must be finite and > 0")):
        Supervisor(make_config(actuators=(bad, VALVE_SAFETY)))


# -- the state a new supervisor starts in ------------------------------------------------------


def test_a_pump_never_seen_runs_in_the_devices_mode_so_a_stopped_reading_is_a_failure() -> None:
    """Before coolctl commands or observes the pump, the device runs it in its own mode: a
    pump_running of 0 read just before start-up is a pump that stopped, not old news. Only a
    pump seen stopped and then asked to run gets the grace for readings from before the ask."""
    before_start = [Reading(RUNNING, 0.0, -1.0, Quality.GOOD)]
    unseen = Supervisor(make_config())
    unseen.startup(0.0)
    assert "pump_failure" in unseen.step(snap(1.0, extra=before_start), 1.0, []).interlocks
    seen_stopped = Supervisor(make_config())
    seen_stopped.observe(PUMP, 0.0, -2.0)
    seen_stopped.startup(0.0)
    grace = seen_stopped.step(snap(1.0, extra=before_start), 1.0, [])
    assert "pump_failure" not in grace.interlocks


def test_a_new_supervisor_reports_no_leak_response_waiting_for_caps() -> None:
    """No leak, so nothing waits for the caps: status must not show a pending leak response
    between start-up and the first tick."""
    config = make_config(power=(POWER,), leak_caps_power_w=30_000.0, leak_caps_timeout_s=60.0)
    supervisor = Supervisor(config)
    assert supervisor.state.leak_caps_confirmed
    supervisor.startup(0.0)
    assert supervisor.state.leak_caps_confirmed


def test_a_rack_without_caps_stops_its_pump_on_a_leak_without_waiting_for_power() -> None:
    """The leak's pump step waits for caps to take hold; a rack with no caps has none to wait
    for, so its pump takes the leak value at once even with a power target configured."""
    config = make_config(
        actuators=(PUMP_SAFETY, VALVE_SAFETY),
        power=(POWER,),
        leak_caps_power_w=30_000.0,
        leak_caps_timeout_s=60.0,
    )
    supervisor = started(config)
    leak = supervisor.step(snap(1.0, {LEAK1: 1.0, POWER: 90_000.0}), 1.0, [])
    pump = by_point(leak)[PUMP]
    assert pump.source is Source.INTERLOCK and pump.value == 0.0
    assert supervisor.state.leak_caps_confirmed
    # the same rack with caps waits for them (the contrast that makes the above meaningful)
    capped = started(replace(config, actuators=(PUMP_SAFETY, VALVE_SAFETY, cap(CAP1))))
    waiting = capped.step(snap(1.0, {LEAK1: 1.0, POWER: 90_000.0}), 1.0, [])
    assert PUMP not in by_point(waiting) and not capped.state.leak_caps_confirmed


def test_status_records_built_without_the_optional_flags_say_nothing_is_pending() -> None:
    """The public status records are built by callers too (status views, fakes of the API):
    left out, the latched flag says no operator reset is awaited and the leak flag says no leak
    response is held up, the quiet state, never a false call to act."""
    status = InterlockStatus("leak", 1.0, "r01/sensors1/leak_detected wet", None)
    assert status.awaiting_reset is False
    state = SupervisorState(
        rack=RACK,
        interlocks={},
        failsafe=False,
        failsafe_since=None,
        failsafe_reasons=(),
        actuators={},
        standby_took_over=False,
        pump_failure_caps=False,
        shut_down=False,
    )
    assert state.leak_caps_confirmed is True and dict(state.silent_sensors) == {}


def test_over_temperature_has_no_release_band_by_default() -> None:
    """`temperature_release_band_c` is 0 by default (the daemon passes the rack's own): a chip
    half a kelvin under its limit is clear, and the interlock's hold starts counting."""
    supervisor = started(make_config())
    assert OVER_TEMPERATURE in supervisor.step(snap(1.0, {CHIP: 96.0}), 1.0, []).interlocks
    supervisor.step(snap(2.0, {CHIP: 94.5}), 2.0, [])
    assert supervisor.state.interlocks[OVER_TEMPERATURE].clear_since == 2.0


def test_the_level_trend_judges_once_its_readings_span_15_s_of_the_20_s_default_window() -> None:
    """`leak_level_window_s` is 20 s by default, and a slope needs readings over three quarters
    of it: a level falling at 6 L/min, read every quarter second, trips the leak interlock
    15 s after the first reading, not a quarter second sooner or later."""
    level = PointId(RACK, "cdu1", "reservoir_level")
    supervisor = started(make_config(reservoir_level=level, leak_level_drop_l_per_min=1.0))
    tripped_after_s = None
    for quarter in range(0, 81):
        now = 1.0 + 0.25 * quarter
        decision = supervisor.step(snap(now, {level: 30.0 - 0.1 * (now - 1.0)}), now, [])
        if LEAK in decision.interlocks:
            tripped_after_s = now - 1.0
            break
    assert tripped_after_s == 15.0


def test_short_level_windows_and_raised_pump_minimums_are_accepted() -> None:
    """Validation refuses what cannot work, nothing more: a level trend over half a second and
    a pump whose hard minimum is above 0 (a CDU that never stops its pump) are valid."""
    assert Supervisor(make_config(leak_level_window_s=0.5)).config.leak_level_window_s == 0.5
    pump = replace(PUMP_SAFETY, hard_minimum=0.1, on_leak=0.1)
    config = make_config(actuators=(pump, VALVE_SAFETY))
    assert Supervisor(config).config.actuators[0].hard_minimum == 0.1


def test_between_over_temperature_and_a_pump_failure_the_pump_gets_the_more_cooling() -> None:
    """Neither protects the pump from running dry, so the higher speed wins: over-temperature's
    full speed over the 0.5 a pump failure asks for (whichever interlock's name sorts last)."""
    pump = replace(PUMP_SAFETY, on_pump_failure=0.5)
    supervisor = started(make_config(actuators=(pump, VALVE_SAFETY)))
    decision = supervisor.step(snap(1.0, {CHIP: 99.0, RUNNING: 0.0}), 1.0, [])
    assert {OVER_TEMPERATURE, "pump_failure"} <= decision.interlocks
    command = by_point(decision)[PUMP]
    assert command.value == 1.0 and command.reason.endswith("(over-temperature wins)")


def test_a_supervisor_started_again_after_its_shutdown_is_no_longer_shut_down() -> None:
    """`state.shut_down` (what status shows) is false once started, true after the hand-back,
    and false again when the supervisor starts once more (a daemon reloaded in place)."""
    supervisor = started()
    assert not supervisor.state.shut_down
    supervisor.shutdown(5.0)
    assert supervisor.state.shut_down
    supervisor.startup(6.0)
    assert not supervisor.state.shut_down


def test_an_observation_with_a_non_finite_value_or_time_is_no_base_for_slew() -> None:
    """What a device reads back is a base for slew only when both its value and its time are
    finite: neither a NaN value at a good time nor a good value at a NaN time moves it."""
    supervisor = Supervisor(make_config())
    supervisor.observe(PUMP, 0.4, 0.0)
    supervisor.observe(PUMP, math.nan, 0.5)
    supervisor.observe(PUMP, 0.9, math.nan)
    first = supervisor.step(snap(1.0), 1.0, [auto(PUMP, 1.0)])
    assert by_point(first)[PUMP].value == pytest.approx(0.45)
