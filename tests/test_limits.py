"""Tests for coolctl.control.limits: bounds, slew per elapsed time, refusal, reason text."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coolctl.control.limits import ActuatorClamp, ActuatorLimits
from coolctl.model import Command, PointId, Source

PUMP = PointId("r01", "cdu1", "pump_speed_command")


def command(value: float, source: Source = Source.AUTO, reason: str = "flow loop") -> Command:
    return Command(PUMP, value, source, reason)


def test_bounds_without_history() -> None:
    clamp = ActuatorClamp(ActuatorLimits(minimum=0.2, maximum=1.0, slew_per_s=0.05))
    high = clamp.clamp(command(1.7), now=0.0)
    assert high.value == 1.0
    assert high.reason == "flow loop; clamped to max 1.0"
    low = clamp.clamp(command(-3.0), now=0.0)
    assert low.value == 0.2
    assert low.reason == "flow loop; clamped to min 0.2"


def test_command_inside_bounds_is_returned_unchanged() -> None:
    clamp = ActuatorClamp(ActuatorLimits(0.0, 1.0))
    original = command(0.5)
    assert clamp.clamp(original, now=0.0) is original
    assert clamp.clamp(command(1.0), now=0.0).reason == "flow loop"  # on the bound: no note


def test_point_and_source_are_kept() -> None:
    clamp = ActuatorClamp(ActuatorLimits(0.0, 1.0))
    clamped = clamp.clamp(command(2.0, Source.OVERRIDE, "operator"), now=0.0)
    assert (clamped.point, clamped.source) == (PUMP, Source.OVERRIDE)
    assert clamped.reason == "operator; clamped to max 1.0"


def test_slew_counts_from_last_accepted_value_over_elapsed_time() -> None:
    clamp = ActuatorClamp(ActuatorLimits(0.0, 1.0, slew_per_s=0.1))
    clamp.accept(0.5, now=10.0)
    up = clamp.clamp(command(1.0), now=12.0)
    assert up.value == pytest.approx(0.7)
    assert up.reason == "flow loop; slew-limited"
    assert clamp.clamp(command(0.0), now=13.0).value == pytest.approx(0.2)
    assert clamp.clamp(command(0.6), now=12.0).value == 0.6  # within reach: untouched
    # clamp() changes nothing; accept() moves the base.
    assert clamp.last_value == 0.5 and clamp.last_time == 10.0
    clamp.accept(0.7, now=12.0)
    assert clamp.clamp(command(1.0), now=12.5).value == pytest.approx(0.75)


def test_no_elapsed_time_holds_the_last_value() -> None:
    clamp = ActuatorClamp(ActuatorLimits(0.0, 1.0, slew_per_s=0.1))
    clamp.accept(0.5, now=10.0)
    assert clamp.clamp(command(0.9), now=10.0).value == 0.5
    assert clamp.clamp(command(0.9), now=9.0).value == 0.5  # time going backwards


def test_bounds_then_slew_both_noted() -> None:
    clamp = ActuatorClamp(ActuatorLimits(0.0, 1.0, slew_per_s=0.1))
    clamp.accept(0.2, now=0.0)
    result = clamp.clamp(command(5.0), now=1.0)
    assert result.value == pytest.approx(0.3)
    assert result.reason == "flow loop; clamped to max 1.0; slew-limited"


def test_without_slew_limit_only_bounds_apply() -> None:
    clamp = ActuatorClamp(ActuatorLimits(0.0, 1.0))
    clamp.accept(0.0, now=0.0)
    assert clamp.clamp(command(1.0), now=0.0).value == 1.0


def test_accepted_value_outside_bounds_yields_the_nearest_bound() -> None:
    # The pump was read back stopped, below the minimum speed: bounds win over slew.
    clamp = ActuatorClamp(ActuatorLimits(0.3, 1.0, slew_per_s=0.01))
    clamp.accept(0.0, now=0.0)
    result = clamp.clamp(command(0.8), now=1.0)
    assert result.value == 0.3
    assert result.reason == "flow loop; slew-limited"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    clamp = ActuatorClamp(ActuatorLimits(0.0, 1.0, slew_per_s=0.1))
    with pytest.raises(ValueError, match="non-finite"):
        clamp.clamp(command(bad), now=0.0)
    with pytest.raises(ValueError):
        clamp.clamp(command(0.5), now=bad)
    with pytest.raises(ValueError):
        clamp.accept(bad, now=0.0)
    with pytest.raises(ValueError):
        clamp.accept(0.5, now=bad)
    assert clamp.last_value is None and clamp.last_time is None


@pytest.mark.parametrize(
    ("minimum", "maximum", "slew_per_s"),
    [
        (1.0, 0.0, None),
        (math.nan, 1.0, None),
        (0.0, math.inf, None),
        (0.0, 1.0, 0.0),
        (0.0, 1.0, -0.1),
        (0.0, 1.0, math.nan),
        (0.0, 1.0, math.inf),
    ],
)
def test_invalid_limits_are_refused(
    minimum: float, maximum: float, slew_per_s: float | None
) -> None:
    with pytest.raises(ValueError):
        ActuatorLimits(minimum, maximum, slew_per_s)


def test_equal_bounds_pin_the_value() -> None:
    clamp = ActuatorClamp(ActuatorLimits(0.4, 0.4, slew_per_s=1.0))
    assert clamp.clamp(command(0.9), now=0.0).value == 0.4


@st.composite
def limits(draw: st.DrawFn) -> ActuatorLimits:
    minimum = draw(st.floats(-1e4, 1e4))
    return ActuatorLimits(
        minimum=minimum,
        maximum=minimum + draw(st.floats(0.0, 1e4)),
        slew_per_s=draw(st.none() | st.floats(1e-3, 1e3)),
    )


@settings(max_examples=300, deadline=None)
@given(
    actuator=limits(),
    steps=st.lists(
        st.tuples(
            st.floats(-1e5, 1e5),  # commanded value
            st.floats(-1.0, 100.0),  # seconds since the previous step
            st.sampled_from(["written", "read back", "dropped"]),
            st.floats(0.0, 1.0),  # where inside the bounds a read-back lands
        ),
        max_size=40,
    ),
)
def test_property_values_stay_in_bounds_and_within_slew_of_last_accepted(
    actuator: ActuatorLimits, steps: list[tuple[float, float, str, float]]
) -> None:
    clamp = ActuatorClamp(actuator)
    now = 0.0
    for value, dt_s, fate, fraction in steps:
        now += dt_s
        result = clamp.clamp(command(value), now)
        assert actuator.minimum <= result.value <= actuator.maximum
        assert result.point == PUMP and result.source is Source.AUTO
        assert (result.value != value) == (result.reason != "flow loop")
        last_value, last_time = clamp.last_value, clamp.last_time
        if actuator.slew_per_s is not None and last_value is not None and last_time is not None:
            elapsed = max(now - last_time, 0.0)
            assert abs(result.value - last_value) <= actuator.slew_per_s * elapsed + 1e-9
        if fate == "written":
            clamp.accept(result.value, now)
        elif fate == "read back":  # the device settled elsewhere within its bounds
            span = actuator.maximum - actuator.minimum
            clamp.accept(min(actuator.minimum + fraction * span, actuator.maximum), now)
