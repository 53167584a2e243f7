"""Edges of the supervisor's interlocks that its other tests passed by, each found by a mutant
that survived them (scripts/mutation): an operator's reset and what a latched leak latches, the
leak's wait for its caps, the boundaries of the leak, temperature and loss-of-flow senses, and
a reservoir level watched only for its trend.

Built on the fixtures of tests/test_supervisor.py and tests/test_supervisor_plant.py."""

from __future__ import annotations

from dataclasses import replace

from test_supervisor import (
    CAP1,
    CAP2,
    CHIP,
    FLOW,
    LEAK1,
    PUMP,
    PUMP_SAFETY,
    VALVE_SAFETY,
    auto,
    by_point,
    cap,
    kinds,
    make_config,
    snap,
    started,
)
from test_supervisor_plant import LEVEL, POWER

from coolctl.control.supervisor import (
    LEAK,
    LOSS_OF_FLOW,
    OVER_TEMPERATURE,
    SupervisorConfig,
    TemperatureLimit,
)
from coolctl.model import PointId, Quality, Severity, Source

OUTLET = PointId("r01", "srv2", "outlet_temperature")


def waits_for_the_pdu(**changes: object) -> SupervisorConfig:
    """A leak whose pump step waits up to a minute for the PDU to read 30 kW."""
    return make_config(
        power=(POWER,), leak_caps_power_w=30_000.0, leak_caps_timeout_s=60.0, **changes
    )


# -- resets and what a latched leak latches ------------------------------------------------------


def test_a_reset_leak_leaves_no_pump_step_pending_in_the_status() -> None:
    """A latched leak reset while its caps were still unconfirmed: the status must not go on
    saying the leak's pump step is pending (operators and metrics read it as "leak sequence
    in progress") once the leak is gone."""
    supervisor = started(waits_for_the_pdu(leak_latched=True))
    supervisor.step(snap(1.0, {LEAK1: 1.0, POWER: 90_000.0}), 1.0, [])
    supervisor.step(snap(2.0, {POWER: 90_000.0}), 2.0, [])  # dry, awaiting the reset
    assert not supervisor.state.leak_caps_confirmed
    reset = supervisor.reset_interlock(LEAK, 3.0, "alice", "rope dry")
    assert kinds(reset) == ["interlock_leak_reset"] and LEAK not in reset.interlocks
    assert supervisor.state.leak_caps_confirmed


def test_no_leak_no_pending_pump_step_also_after_a_leak_cleared_by_itself() -> None:
    """`leak_caps_confirmed` is True whenever no leak is active: before any leak, and once an
    unlatched leak that was still waiting for its caps has cleared after its hold."""
    supervisor = started(waits_for_the_pdu(leak_latched=False, hold_s=2.0))
    assert supervisor.state.leak_caps_confirmed
    supervisor.step(snap(1.0, {LEAK1: 1.0, POWER: 90_000.0}), 1.0, [])
    assert not supervisor.state.leak_caps_confirmed
    supervisor.step(snap(2.0, {POWER: 90_000.0}), 2.0, [])
    cleared = supervisor.step(snap(4.0, {POWER: 90_000.0}), 4.0, [])
    assert kinds(cleared) == ["interlock_leak_cleared"]
    assert supervisor.state.leak_caps_confirmed


def test_leak_latched_latches_the_leak_only() -> None:
    """`leak_latched` makes a leak wait for an operator; an over-temperature on the same rack
    still releases by itself once clear for its hold, with no reset asked for."""
    supervisor = started(make_config(leak_latched=True, hold_s=2.0))
    assert OVER_TEMPERATURE in supervisor.step(snap(1.0, {CHIP: 99.0}), 1.0, []).interlocks
    cool = supervisor.step(snap(2.0), 2.0, [])
    assert kinds(cool) == [] and OVER_TEMPERATURE in cool.interlocks
    assert not supervisor.state.interlocks[OVER_TEMPERATURE].awaiting_reset
    released = supervisor.step(snap(4.0), 4.0, [])
    assert kinds(released) == ["interlock_over_temperature_cleared"]
    assert OVER_TEMPERATURE not in released.interlocks


# -- the leak's wait for its caps ------------------------------------------------------------------


def test_a_pdu_without_a_caps_target_and_no_timeout_does_not_hold_the_pump_step() -> None:
    """A rack metered by a PDU (for the flow per kW, say) but with no caps target and
    leak_caps_timeout_s = 0: the pump takes its leak value with the caps, and no event claims
    that the power did not fall."""
    supervisor = started(make_config(power=(POWER,)))
    tripped = supervisor.step(snap(1.0, {LEAK1: 1.0, POWER: 90_000.0}), 1.0, [auto(PUMP, 0.9)])
    assert kinds(tripped) == ["interlock_leak"]
    pump = by_point(tripped)[PUMP]
    assert pump.value == 0.0 and pump.source is Source.INTERLOCK


def test_a_caps_timeout_of_one_second_holds_the_pump_step_that_long_without_a_pdu() -> None:
    """With caps but no PDU, leak_caps_timeout_s = 1 s: the caps fall at once, the pump keeps
    cooling for that second, then stops, with a critical event that names the wait."""
    supervisor = started(make_config(leak_caps_timeout_s=1.0))
    tripped = supervisor.step(snap(1.0, {LEAK1: 1.0}), 1.0, [auto(PUMP, 0.8)])
    commands = by_point(tripped)
    assert commands[CAP1].value == 100.0 and commands[CAP2].value == 100.0
    assert commands[PUMP].source is Source.AUTO
    assert not supervisor.state.leak_caps_confirmed
    waiting = supervisor.step(snap(1.5, {LEAK1: 1.0}), 1.5, [auto(PUMP, 0.8)])
    assert by_point(waiting)[PUMP].source is Source.AUTO and kinds(waiting) == []
    late = supervisor.step(snap(2.0, {LEAK1: 1.0}), 2.0, [auto(PUMP, 0.8)])
    assert kinds(late) == ["leak_caps_unconfirmed"]
    event = late.events[0]
    assert event.severity is Severity.CRITICAL
    assert "power did not fall within 1 s (rack power unreadable)" in event.message
    assert by_point(late)[PUMP].value == 0.0 and by_point(late)[PUMP].source is Source.INTERLOCK


def test_the_timeout_event_names_the_power_the_caps_should_have_reached() -> None:
    """With a caps target, the event says what the power should have fallen to."""
    config = make_config(power=(POWER,), leak_caps_power_w=30_000.0, leak_caps_timeout_s=2.0)
    supervisor = started(config)
    supervisor.step(snap(1.0, {LEAK1: 1.0, POWER: 90_000.0}), 1.0, [])
    late = supervisor.step(snap(3.0, {LEAK1: 1.0, POWER: 90_000.0}), 3.0, [])
    assert kinds(late) == ["leak_caps_unconfirmed"]
    assert "power did not fall to 30000 W within 2 s (r01/pdu1/power 90000 W)" in (
        late.events[0].message
    )


# -- the senses at their boundaries ----------------------------------------------------------------


def test_a_leak_detector_reading_exactly_one_half_reads_wet() -> None:
    """Boolean points read 1 at or above 0.5: a detector reporting 0.5 is a leak."""
    assert LEAK not in started().step(snap(1.0, {LEAK1: 0.49}), 1.0, []).interlocks
    assert LEAK in started().step(snap(1.0, {LEAK1: 0.5}), 1.0, []).interlocks


def test_a_limit_never_reported_does_not_hide_the_limits_after_it() -> None:
    """A temperature limit on a point the device does not expose is skipped, and the limits
    listed after it are still watched."""
    limits = (TemperatureLimit(OUTLET, 60.0), TemperatureLimit(CHIP, 95.0))
    supervisor = started(make_config(temperature_limits=limits))
    hot = supervisor.step(snap(1.0, {CHIP: 96.0}), 1.0, [])
    assert OVER_TEMPERATURE in hot.interlocks and "r01/srv1/chip_temperature 96" in (
        hot.events[0].message
    )


def test_a_temperature_exactly_at_its_limit_does_not_trip() -> None:
    """The interlock trips when a limit is exceeded: 95.0 on a 95 °C limit is not over it."""
    supervisor = started()
    assert OVER_TEMPERATURE not in supervisor.step(snap(1.0, {CHIP: 95.0}), 1.0, []).interlocks
    assert OVER_TEMPERATURE in supervisor.step(snap(2.0, {CHIP: 95.01}), 2.0, []).interlocks


def test_over_temperature_releases_at_exactly_the_band_under_its_limit() -> None:
    """`temperature_release_band_c` under the limit is far enough: a chip at exactly
    limit - band is clear, and the interlock releases after its hold."""
    config = make_config(temperature_release_band_c=2.5, over_temperature_hold_s=60.0)
    supervisor = started(config)
    assert OVER_TEMPERATURE in supervisor.step(snap(1.0, {CHIP: 96.0}), 1.0, []).interlocks
    supervisor.step(snap(2.0, {CHIP: 92.5}), 2.0, [])
    assert supervisor.state.interlocks[OVER_TEMPERATURE].clear_since == 2.0
    released = supervisor.step(snap(62.0, {CHIP: 92.5}), 62.0, [])
    assert kinds(released) == ["interlock_over_temperature_cleared"]


def test_a_level_watched_only_for_its_trend_needs_no_minimum() -> None:
    """A reservoir level configured as a leak detector (its fall rate) without a minimum:
    its readings are no low-level interlock, and they never break the tick."""
    supervisor = started(make_config(reservoir_level=LEVEL, leak_level_drop_l_per_min=2.0))
    for now in (1.0, 2.0, 3.0):
        decision = supervisor.step(snap(now, {LEVEL: 1.0}), now, [])
        assert decision.interlocks == frozenset() and kinds(decision) == []


def test_a_pump_asked_for_exactly_min_pump_speed_expects_flow() -> None:
    """Loss of flow is watched while the pump is asked for at least `min_pump_speed` (0.2 by
    default): at exactly 0.2 a flow far under what it should give trips after the 2 s
    default debounce, not before."""
    pump = replace(PUMP_SAFETY, slew_per_s=None)
    config = make_config(
        actuators=(pump, VALVE_SAFETY, cap(CAP1), cap(CAP2)), flow=FLOW, rated_flow_lpm=200.0
    )
    supervisor = started(config)
    asked = supervisor.step(snap(1.0), 1.0, [auto(PUMP, 0.2)])
    assert by_point(asked)[PUMP].value == 0.2
    # 0.2 of 200 L/min is 40; half of it is the floor: 10 L/min is a loss
    first = supervisor.step(snap(2.0, {FLOW: 10.0}), 2.0, [auto(PUMP, 0.2)])
    assert LOSS_OF_FLOW not in first.interlocks
    later = supervisor.step(snap(4.0, {FLOW: 10.0}), 4.0, [auto(PUMP, 0.2)])
    assert kinds(later) == ["interlock_loss_of_flow"]


def flow_watched(**changes: object) -> SupervisorConfig:
    """Loss of flow watched against a 200 L/min pump (half of what its speed should give)."""
    pump = replace(PUMP_SAFETY, slew_per_s=None)
    actuators = (pump, VALVE_SAFETY, cap(CAP1), cap(CAP2))
    return make_config(actuators=actuators, flow=FLOW, rated_flow_lpm=200.0, **changes)


def test_a_flow_meter_that_reads_bad_is_blindness_not_a_loss_of_flow() -> None:
    """A flow meter that goes bad says nothing of the flow: failsafe answers blindness, and
    no loss-of-flow interlock trips on it, however long it stays bad."""
    supervisor = started(flow_watched())
    supervisor.step(snap(1.0), 1.0, [auto(PUMP, 0.8)])
    for now in (2.0, 3.0, 5.0, 8.0):
        decision = supervisor.step(snap(now, {FLOW: Quality.BAD}), now, [auto(PUMP, 0.8)])
        assert LOSS_OF_FLOW not in decision.interlocks


def test_a_flow_meter_no_longer_reported_neither_trips_nor_holds_a_loss_of_flow() -> None:
    """A point with no reading at all can neither trip an interlock nor hold one: a loss of
    flow releases after its hold once its meter is not reported."""
    supervisor = started(flow_watched(hold_s=2.0))
    supervisor.step(snap(1.0), 1.0, [auto(PUMP, 0.8)])
    supervisor.step(snap(2.0, {FLOW: 10.0}), 2.0, [auto(PUMP, 0.8)])
    tripped = supervisor.step(snap(4.0, {FLOW: 10.0}), 4.0, [auto(PUMP, 0.8)])
    assert LOSS_OF_FLOW in tripped.interlocks
    supervisor.step(snap(5.0, {FLOW: None}), 5.0, [auto(PUMP, 0.8)])
    released = supervisor.step(snap(7.5, {FLOW: None}), 7.5, [auto(PUMP, 0.8)])
    assert LOSS_OF_FLOW not in released.interlocks
