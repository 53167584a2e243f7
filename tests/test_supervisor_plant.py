"""The supervisor's view of the plant itself: loss of flow, low coolant level, a sequenced and
latched leak, the over-temperature release band, silent safety sensors, and a failsafe that
holds while the chips are healthy.

Built on the fixtures of tests/test_supervisor.py: the same rack, points and actuators.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_supervisor import (
    CAP1,
    CAP2,
    CHIP,
    FLOW,
    LEAK1,
    LEAK2,
    PUMP,
    PUMP_SAFETY,
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

from coolctl.control.supervisor import (
    LEAK,
    LOSS_OF_FLOW,
    LOW_LEVEL,
    OVER_TEMPERATURE,
    ActuatorRole,
    ActuatorSafety,
    Supervisor,
    SupervisorConfig,
    TemperatureLimit,
)
from coolctl.model import PointId, Quality, Severity, Source

RACK = "r01"
LEVEL = PointId(RACK, "cdu1", "reservoir_level")
POWER = PointId(RACK, "pdu1", "power")
PUMP_PROTECTED = replace(PUMP_SAFETY, on_low_level=0.0)


def caps_for(**changes: float) -> tuple[ActuatorSafety, ...]:
    return tuple(replace(cap(point), **changes) for point in (CAP1, CAP2))


def plant_config(**changes: object) -> SupervisorConfig:
    actuators = (
        PUMP_PROTECTED,
        VALVE_SAFETY,
        *caps_for(on_loss_of_flow=100.0, on_low_level=100.0),
    )
    base = make_config(
        actuators=actuators,
        flow=FLOW,
        rated_flow_lpm=200.0,
        reservoir_level=LEVEL,
        min_reservoir_level_l=8.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# -- loss of flow ------------------------------------------------------------------------------


def test_flow_far_under_what_the_pump_gives_trips_after_its_debounce() -> None:
    supervisor = started(plant_config(flow_debounce_s=2.0))
    supervisor.step(snap(1.0, {LEVEL: 20.0}), 1.0, [auto(PUMP, 0.8)])  # pump asked for 0.8
    # 0.8 of 200 L/min is 160; half of it is the floor: 40 L/min is a loss
    first = supervisor.step(snap(2.0, {FLOW: 40.0, LEVEL: 20.0}), 2.0, [])
    assert LOSS_OF_FLOW not in first.interlocks  # not yet: debounce
    later = supervisor.step(snap(4.0, {FLOW: 40.0, LEVEL: 20.0}), 4.0, [])
    assert LOSS_OF_FLOW in later.interlocks
    assert kinds(later) == ["interlock_loss_of_flow"]
    assert "under 80" in later.events[0].message
    commands = by_point(later)
    assert commands[CAP1].value == 100.0 and commands[CAP1].source is Source.INTERLOCK
    assert PUMP not in commands or commands[PUMP].source is not Source.INTERLOCK


def test_a_short_dip_of_flow_does_not_trip() -> None:
    supervisor = started(plant_config(flow_debounce_s=2.0))
    supervisor.step(snap(1.0, {LEVEL: 20.0}), 1.0, [auto(PUMP, 0.8)])
    supervisor.step(snap(2.0, {FLOW: 40.0, LEVEL: 20.0}), 2.0, [])
    supervisor.step(snap(3.0, {FLOW: 150.0, LEVEL: 20.0}), 3.0, [])
    assert (
        LOSS_OF_FLOW
        not in supervisor.step(snap(4.5, {FLOW: 40.0, LEVEL: 20.0}), 4.5, []).interlocks
    )


def test_a_stopped_pump_expects_no_flow() -> None:
    pump = replace(PUMP_PROTECTED, minimum=0.0)
    supervisor = started(
        plant_config(actuators=(pump, VALVE_SAFETY, *caps_for()), flow_debounce_s=0.0)
    )
    for t in range(1, 30):
        supervisor.step(snap(float(t), {LEVEL: 20.0}), float(t), [auto(PUMP, 0.0)])
    decision = supervisor.step(snap(30.0, {FLOW: 0.0, LEVEL: 20.0}), 30.0, [auto(PUMP, 0.0)])
    assert LOSS_OF_FLOW not in decision.interlocks


def test_flow_per_kilowatt_of_it_power() -> None:
    config = plant_config(
        rated_flow_lpm=None, power=(POWER,), min_flow_lpm_per_kw=1.0, flow_debounce_s=0.0
    )
    supervisor = started(config)
    fine = supervisor.step(snap(1.0, {FLOW: 130.0, POWER: 120_000.0, LEVEL: 20.0}), 1.0, [])
    assert LOSS_OF_FLOW not in fine.interlocks
    short = supervisor.step(snap(2.0, {FLOW: 100.0, POWER: 120_000.0, LEVEL: 20.0}), 2.0, [])
    assert LOSS_OF_FLOW in short.interlocks
    assert "1 L/min per kW of 120 kW" in short.events[0].message


# -- low coolant level -------------------------------------------------------------------------


def test_low_level_stops_the_pump_even_against_over_temperature() -> None:
    supervisor = started(plant_config())
    decision = supervisor.step(snap(1.0, {LEVEL: 5.0, CHIP: 99.0}), 1.0, [])
    assert {LOW_LEVEL, OVER_TEMPERATURE} <= decision.interlocks
    commands = by_point(decision)
    assert commands[PUMP].value == 0.0  # dry running is worse than heat: caps take the heat
    assert "low coolant level wins" in commands[PUMP].reason
    assert commands[CAP1].value == 100.0


def test_a_pump_stopped_for_low_level_is_no_pump_failure() -> None:
    supervisor = started(plant_config())
    supervisor.step(snap(1.0, {LEVEL: 5.0}), 1.0, [])
    later = supervisor.step(snap(3.0, {LEVEL: 5.0, RUNNING: 0.0}), 3.0, [])
    assert "pump_failure" not in later.interlocks


# -- the leak: debounce, votes, sequence, latch -------------------------------------------------


def test_leak_debounce_lets_a_single_wet_sample_pass() -> None:
    supervisor = started(make_config(leak_debounce_s=1.0))
    assert LEAK not in supervisor.step(snap(1.0, {LEAK1: 1.0}), 1.0, []).interlocks
    assert LEAK not in supervisor.step(snap(1.5, {LEAK1: 0.0}), 1.5, []).interlocks
    supervisor.step(snap(2.0, {LEAK1: 1.0}), 2.0, [])
    assert LEAK in supervisor.evaluate_interlocks(snap(3.0, {LEAK1: 1.0}), 3.0).interlocks


def test_two_of_n_leak_detectors() -> None:
    supervisor = started(make_config(leak_votes=2))
    assert LEAK not in supervisor.step(snap(1.0, {LEAK1: 1.0}), 1.0, []).interlocks
    assert LEAK in supervisor.step(snap(2.0, {LEAK1: 1.0, LEAK2: 1.0}), 2.0, []).interlocks


def test_leak_caps_first_then_the_pump_once_the_pdu_shows_it() -> None:
    config = make_config(power=(POWER,), leak_caps_power_w=30_000.0, leak_caps_timeout_s=5.0)
    supervisor = started(config)
    tripped = supervisor.evaluate_interlocks(snap(1.0, {LEAK1: 1.0, POWER: 100_000.0}), 1.0)
    commands = by_point(tripped)
    assert commands[CAP1].value == 100.0 and commands[CAP2].value == 100.0
    assert PUMP not in commands  # the pump keeps cooling while the caps take hold
    waiting = supervisor.step(snap(2.0, {LEAK1: 1.0, POWER: 60_000.0}), 2.0, [auto(PUMP, 0.9)])
    assert by_point(waiting)[PUMP].source is Source.AUTO
    assert not supervisor.state.leak_caps_confirmed
    done = supervisor.step(snap(3.0, {LEAK1: 1.0, POWER: 25_000.0}), 3.0, [auto(PUMP, 0.9)])
    assert kinds(done) == ["leak_caps_confirmed"]
    assert by_point(done)[PUMP].value == 0.0 and by_point(done)[PUMP].source is Source.INTERLOCK


def test_leak_caps_are_confirmed_by_the_sum_of_the_rack_pdus() -> None:
    """A rack fed by two PDUs (feeds A and B) is metered by their sum: one of them falling
    under the target is no confirmation, and one unreadable leaves the sum unknown."""
    power_b = PointId(RACK, "pdu2", "power")
    config = make_config(
        power=(POWER, power_b), leak_caps_power_w=30_000.0, leak_caps_timeout_s=10.0
    )
    supervisor = started(config)
    supervisor.evaluate_interlocks(snap(1.0, {LEAK1: 1.0, POWER: 50_000.0, power_b: 50_000.0}), 1.0)
    half = supervisor.step(
        snap(2.0, {LEAK1: 1.0, POWER: 20_000.0, power_b: 20_000.0}), 2.0, [auto(PUMP, 0.9)]
    )
    assert not supervisor.state.leak_caps_confirmed  # 40 kW in all, over 30 kW
    assert by_point(half)[PUMP].source is Source.AUTO
    blind = supervisor.step(
        snap(3.0, {LEAK1: 1.0, POWER: 10_000.0, power_b: Quality.STALE}), 3.0, [auto(PUMP, 0.9)]
    )
    assert not supervisor.state.leak_caps_confirmed  # feed B unknown: no sum
    assert by_point(blind)[PUMP].source is Source.AUTO
    done = supervisor.step(
        snap(4.0, {LEAK1: 1.0, POWER: 14_000.0, power_b: 14_000.0}), 4.0, [auto(PUMP, 0.9)]
    )
    assert kinds(done) == ["leak_caps_confirmed"]
    assert "r01/pdu1/power + r01/pdu2/power" in done.events[0].message


def test_leak_pump_response_goes_out_after_the_timeout_without_a_pdu() -> None:
    config = make_config(power=(POWER,), leak_caps_power_w=30_000.0, leak_caps_timeout_s=2.0)
    supervisor = started(config)
    supervisor.evaluate_interlocks(snap(1.0, {LEAK1: 1.0, POWER: Quality.STALE}), 1.0)
    late = supervisor.step(snap(3.0, {LEAK1: 1.0, POWER: Quality.STALE}), 3.0, [])
    assert kinds(late) == ["leak_caps_unconfirmed"]
    assert late.events[0].severity is Severity.CRITICAL
    assert by_point(late)[PUMP].value == 0.0


def test_a_latched_leak_waits_for_an_operator_reset() -> None:
    supervisor = started(make_config(leak_latched=True, hold_s=2.0))
    supervisor.step(snap(1.0, {LEAK1: 1.0}), 1.0, [])
    with pytest.raises(ValueError, match="not known clear"):
        supervisor.reset_interlock(LEAK, 1.5, "alice", "checked")
    dry = supervisor.step(snap(2.0), 2.0, [])
    assert kinds(dry) == ["interlock_leak_awaiting_reset"]
    for t in (5.0, 50.0, 500.0):  # long past hold_s: still latched
        assert LEAK in supervisor.step(snap(t), t, []).interlocks
    assert supervisor.state.interlocks[LEAK].awaiting_reset
    reset = supervisor.reset_interlock(LEAK, 501.0, "alice", "rope replaced, tray dry")
    assert kinds(reset) == ["interlock_leak_reset"]
    assert "reset by alice: rope replaced, tray dry" in reset.events[0].message
    assert LEAK not in supervisor.step(snap(502.0), 502.0, []).interlocks
    with pytest.raises(ValueError, match="not active"):
        supervisor.reset_interlock(LEAK, 503.0, "alice", "again")
    with pytest.raises(ValueError, match="no interlock"):
        supervisor.reset_interlock("fire", 503.0, "alice", "?")


# -- over-temperature release band -----------------------------------------------------------


def test_over_temperature_releases_only_below_the_band_after_its_hold() -> None:
    config = make_config(temperature_release_band_c=3.0, over_temperature_hold_s=60.0)
    supervisor = started(config)
    assert OVER_TEMPERATURE in supervisor.step(snap(1.0, {CHIP: 96.0}), 1.0, []).interlocks
    # just under the limit, inside the band: never clear, however long
    for t in range(2, 200):
        assert OVER_TEMPERATURE in supervisor.step(snap(t, {CHIP: 93.0}), float(t), []).interlocks
    for t in range(200, 259):
        assert OVER_TEMPERATURE in supervisor.step(snap(t, {CHIP: 90.0}), float(t), []).interlocks
    cleared = supervisor.step(snap(260.0, {CHIP: 90.0}), 260.0, [])
    assert OVER_TEMPERATURE not in cleared.interlocks
    assert "clear for 60 s" in cleared.events[0].message


# -- silent safety sensors ---------------------------------------------------------------------


def test_a_leak_rope_that_never_reported_is_an_alarm() -> None:
    supervisor = started(make_config(silent_after_s=10.0))
    assert kinds(supervisor.step(snap(5.0, {LEAK1: None}), 5.0, [])) == []
    alarm = supervisor.step(snap(11.0, {LEAK1: None}), 11.0, [])
    assert kinds(alarm) == ["safety_sensor_silent"]
    assert "has not reported" in alarm.events[0].message
    assert LEAK1 in supervisor.state.silent_sensors
    assert kinds(supervisor.step(snap(12.0, {LEAK1: None}), 12.0, [])) == []  # once per change
    back = supervisor.step(snap(13.0), 13.0, [])
    assert kinds(back) == ["safety_sensor_back"] and not supervisor.state.silent_sensors


def test_a_rope_gone_stale_is_an_alarm_at_once_after_start_up() -> None:
    supervisor = started(make_config(silent_after_s=10.0))
    early = supervisor.step(snap(1.0, {LEAK2: Quality.STALE}), 1.0, [])
    assert kinds(early) == []  # start-up: a replayed retained message reads stale at first
    supervisor.step(snap(11.0), 11.0, [])
    decision = supervisor.step(snap(12.0, {LEAK2: Quality.STALE}), 12.0, [])
    assert kinds(decision) == ["safety_sensor_silent"]
    assert "is stale" in decision.events[0].message


# -- a calmer failsafe -------------------------------------------------------------------------


def test_blind_rack_holds_outputs_while_chips_are_healthy() -> None:
    config = make_config(healthy_points=(TemperatureLimit(CHIP, 85.0),), healthy_margin_c=5.0)
    supervisor = started(config)
    supervisor.step(snap(1.0), 1.0, [auto(PUMP, 0.9)])
    blind = supervisor.step(snap(6.0, {FLOW: Quality.STALE}), 6.0, [auto(PUMP, 0.9)])
    assert blind.failsafe
    assert kinds(blind) == ["failsafe", "failsafe_holding"]
    held = by_point(blind)  # nothing moves: the last outputs and caps are sent again
    assert held[PUMP].value == pytest.approx(0.85) and held[PUMP].source is Source.FAILSAFE
    assert "holding pump at 0.85 while the chips are healthy" in held[PUMP].reason
    hot = supervisor.step(snap(7.0, {FLOW: Quality.STALE, CHIP: 81.0}), 7.0, [])
    assert kinds(hot) == ["failsafe_outputs"]
    commands = by_point(hot)
    assert commands[CAP1].source is Source.FAILSAFE and commands[PUMP].value == 0.8


def test_startup_failsafe_never_holds() -> None:
    config = make_config(healthy_points=(TemperatureLimit(CHIP, 85.0),))
    supervisor = Supervisor(config)
    supervisor.startup(0.0)
    decision = supervisor.step(snap(1.0, {FLOW: None}), 1.0, [])
    assert decision.failsafe and {c.point for c in decision.commands} >= {PUMP, CAP1}


def test_new_actuator_values_are_checked_against_hard_bounds() -> None:
    bad = replace(cap(CAP1), on_loss_of_flow=5000.0)
    with pytest.raises(ValueError, match="on_loss_of_flow"):
        Supervisor(make_config(actuators=(PUMP_SAFETY, bad)))
    with pytest.raises(ValueError, match="leak_votes"):
        Supervisor(make_config(leak_votes=0))


# -- isolation valves --------------------------------------------------------------------------

ISOLATION = PointId(RACK, "cdu1", "isolation_valve_command")
ISOLATION_SAFETY = ActuatorSafety(
    ISOLATION,
    ActuatorRole.ISOLATION,
    minimum=0.0,
    maximum=1.0,
    slew_per_s=None,
    failsafe=1.0,
    hard_minimum=0.0,
    hard_maximum=1.0,
    on_leak=0.0,
)


def test_isolation_valves_shut_in_the_pump_step_of_a_leak_and_open_after_the_reset() -> None:
    base = make_config(power=(POWER,), leak_caps_power_w=30_000.0, leak_caps_timeout_s=5.0)
    config = replace(base, actuators=(*base.actuators, ISOLATION_SAFETY), leak_latched=True)
    supervisor = started(config)
    tripped = supervisor.evaluate_interlocks(snap(1.0, {LEAK1: 1.0, POWER: 100_000.0}), 1.0)
    assert ISOLATION not in by_point(tripped)  # caps first
    done = supervisor.step(snap(2.0, {LEAK1: 1.0, POWER: 25_000.0}), 2.0, [])
    shut = by_point(done)[ISOLATION]
    assert shut.value == 0.0 and shut.source is Source.INTERLOCK
    dry = supervisor.step(snap(3.0, {LEAK1: 0.0, POWER: 25_000.0}), 3.0, [])
    assert by_point(dry)[ISOLATION].value == 0.0  # latched: still shut
    supervisor.reset_interlock(LEAK, 4.0, "op", "leak fixed")
    reopened = by_point(supervisor.step(snap(5.0, {LEAK1: 0.0}), 5.0, []))[ISOLATION]
    assert reopened.value == 1.0 and "isolation valves open" in reopened.reason
    assert ISOLATION not in by_point(supervisor.step(snap(6.0, {LEAK1: 0.0}), 6.0, []))


def test_failsafe_leaves_an_isolation_valve_alone() -> None:
    base = make_config()
    supervisor = Supervisor(replace(base, actuators=(*base.actuators, ISOLATION_SAFETY)))
    assert ISOLATION not in by_point(supervisor.startup(0.0))  # start-up is failsafe


def test_blind_rack_lowers_caps_in_proportion_to_how_warm_the_chips_are() -> None:
    config = make_config(
        healthy_points=(TemperatureLimit(CHIP, 85.0),),
        healthy_margin_c=5.0,
        failsafe_cap_band_c=4.0,
    )
    supervisor = started(config)
    normal = by_point(supervisor.step(snap(1.0), 1.0, [auto(CAP1, 900.0)]))[CAP1].value
    warm = supervisor.step(snap(6.0, {FLOW: Quality.STALE, CHIP: 81.0}), 6.0, [])
    caps = by_point(warm)
    low = cap(CAP1).failsafe
    # 1 K over the 80 °C threshold of a 4 K band: the caps keep 3/4 of their span
    assert caps[CAP1].value == pytest.approx(low + 0.75 * (normal - low))
    assert caps[CAP1].source is Source.FAILSAFE and "chips warm" in caps[CAP1].reason
    hotter = by_point(supervisor.step(snap(7.0, {FLOW: Quality.STALE, CHIP: 83.0}), 7.0, []))
    assert hotter[CAP1].value == pytest.approx(low + 0.25 * (normal - low))
    gone = by_point(supervisor.step(snap(8.0, {FLOW: Quality.STALE, CHIP: None}), 8.0, []))
    assert gone[CAP1].value == low  # no thermal evidence: the minimum


def test_power_that_does_not_fall_under_the_caps_is_an_alarm() -> None:
    supervisor = started(make_config(power=(POWER,), caps_hold_within_s=10.0))
    caps = [auto(CAP1, 400.0), auto(CAP2, 400.0)]
    supervisor.step(snap(1.0, {POWER: 2000.0}), 1.0, caps)
    waiting = supervisor.step(snap(10.0, {POWER: 2000.0}), 10.0, caps)
    assert "caps_not_holding" not in kinds(waiting)  # BMCs and servers get their time
    late = supervisor.step(snap(11.0, {POWER: 2000.0}), 11.0, caps)
    assert kinds(late) == ["caps_not_holding"]
    assert "did not fall after the cap writes" in late.events[0].message
    assert "caps_not_holding" not in kinds(supervisor.step(snap(12.0, {POWER: 2000.0}), 12.0, caps))
    held = supervisor.step(snap(13.0, {POWER: 850.0}), 13.0, caps)  # under 1.1 × 2 × 400
    assert kinds(held) == ["caps_holding"]


def test_a_pump_failure_with_no_flow_caps_without_waiting_for_a_standby() -> None:
    config = make_config(flow=FLOW, rated_flow_lpm=200.0, standby_changeover_s=2.0)
    config = replace(config, standby_active=PointId(RACK, "cdu1", "standby_pump_active"))
    supervisor = started(config)
    supervisor.step(snap(1.0, {FLOW: 160.0}), 1.0, [auto(PUMP, 0.9)])
    tripped = supervisor.step(snap(2.0, {FLOW: 150.0, RUNNING: 0.0}), 2.0, [auto(PUMP, 0.9)])
    assert "pump_failure_caps" not in kinds(tripped)  # flow still moving: wait for a standby
    dry = supervisor.step(snap(2.5, {FLOW: 20.0, RUNNING: 0.0}), 2.5, [auto(PUMP, 0.9)])
    assert "pump_failure_caps" in kinds(dry)
    assert by_point(dry)[CAP1].source is Source.INTERLOCK
