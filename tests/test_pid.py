"""Tests for coolctl.control.pid: signs, integral action, anti-windup, limits, derivative,
bumpless transfer and refusal of non-finite inputs."""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coolctl.control.pid import Action, Pid, PidConfig, PidGains, PidTerms

ACTIONS: tuple[Action, ...] = ("reverse", "direct")


def make_pid(
    kp: float = 1.0,
    ki: float = 0.0,
    kd: float = 0.0,
    derivative_filter_s: float = 0.0,
    output_min: float = -100.0,
    output_max: float = 100.0,
    slew_per_s: float | None = None,
    action: Action = "reverse",
    deadband: float = 0.0,
    initial_output: float | None = None,
) -> Pid:
    config = PidConfig(
        gains=PidGains(kp=kp, ki=ki, kd=kd, derivative_filter_s=derivative_filter_s),
        output_min=output_min,
        output_max=output_max,
        slew_per_s=slew_per_s,
        action=action,
        deadband=deadband,
    )
    return Pid(config, initial_output=initial_output)


def terms_of(pid: Pid) -> PidTerms:
    terms = pid.terms
    assert terms is not None
    return terms


@dataclass
class FirstOrderPlant:
    """tau * dy/dt = gain * u + disturbance - y, stepped with forward Euler at a fixed dt."""

    gain: float
    tau_s: float
    disturbance: float
    y: float = 0.0

    def step(self, u: float, dt_s: float) -> float:
        self.y += dt_s * (self.gain * u + self.disturbance - self.y) / self.tau_s
        return self.y


class NaivePi:
    """A textbook PI with an unconditioned integrator, to show what windup looks like."""

    def __init__(self, kp: float, ki: float, output_min: float, output_max: float) -> None:
        self.kp, self.ki = kp, ki
        self.output_min, self.output_max = output_min, output_max
        self.integral = 0.0

    def step(self, error: float, dt_s: float) -> float:
        self.integral += self.ki * error * dt_s
        return min(max(self.kp * error + self.integral, self.output_min), self.output_max)


# --- sign conventions --------------------------------------------------------------------


def test_reverse_action_raises_output_when_measurement_is_low() -> None:
    pid = make_pid(kp=2.0, action="reverse")
    assert pid.update(setpoint=10.0, measurement=8.0, now=0.0) == pytest.approx(4.0)
    assert pid.update(setpoint=10.0, measurement=12.0, now=0.0) == pytest.approx(-4.0)
    assert terms_of(pid).error == pytest.approx(-2.0)


def test_direct_action_raises_output_when_measurement_is_high() -> None:
    # A cooling valve: supply warmer than its setpoint -> open more.
    pid = make_pid(kp=0.5, action="direct")
    assert pid.update(setpoint=30.0, measurement=32.0, now=0.0) == pytest.approx(1.0)
    assert pid.update(setpoint=30.0, measurement=28.0, now=0.0) == pytest.approx(-1.0)


def test_integral_sign_follows_action() -> None:
    cases: tuple[tuple[Action, float], ...] = (("reverse", 9.0), ("direct", 11.0))
    for action, measurement in cases:
        pid = make_pid(kp=0.0, ki=0.5, action=action)
        outputs = [pid.update(10.0, measurement, now=float(t)) for t in range(4)]
        assert outputs == pytest.approx([0.0, 0.5, 1.0, 1.5])


def test_feedforward_adds_to_output() -> None:
    pid = make_pid(kp=1.0)
    assert pid.update(10.0, 9.0, now=0.0, feedforward=0.25) == pytest.approx(1.25)
    assert terms_of(pid).feedforward == 0.25


# --- integral action and anti-windup ----------------------------------------------------


def run_loop(pid: Pid, plant: FirstOrderPlant, setpoint: float, dt_s: float, steps: int) -> float:
    measurement = plant.y
    for k in range(steps):
        u = pid.update(setpoint, measurement, now=k * dt_s)
        measurement = plant.step(u, dt_s)
    return measurement


def test_integral_removes_steady_state_error_on_first_order_plant() -> None:
    setpoint = 20.0

    p_only = make_pid(kp=2.0, output_min=0.0, output_max=100.0)
    y_p = run_loop(p_only, FirstOrderPlant(2.0, 20.0, -5.0), setpoint, 0.5, 1200)
    # A P-only loop settles at y = (K kp sp + d) / (1 + K kp): an offset of 5 here.
    assert setpoint - y_p == pytest.approx(5.0, abs=0.01)

    pi = make_pid(kp=2.0, ki=0.2, output_min=0.0, output_max=100.0)
    y_pi = run_loop(pi, FirstOrderPlant(2.0, 20.0, -5.0), setpoint, 0.5, 1200)
    assert abs(setpoint - y_pi) < 1e-4


def test_output_leaves_limit_on_first_step_after_error_reverses() -> None:
    kp, ki = 0.5, 0.2
    pid = make_pid(kp=kp, ki=ki, output_min=0.0, output_max=1.0)
    naive = NaivePi(kp, ki, 0.0, 1.0)

    # 1000 s with the measurement stuck 10 below the setpoint: both saturate at the maximum.
    for t in range(1000):
        assert pid.update(10.0, 0.0, now=float(t)) == 1.0
        assert naive.step(10.0, 1.0) == 1.0
    assert terms_of(pid).integral <= 1.0
    assert naive.integral > 1000.0

    # The measurement overshoots the setpoint by 1: the error is now -1.
    ours = [pid.update(10.0, 11.0, now=1000.0 + t) for t in range(1, 6)]
    naive_outputs = [naive.step(-1.0, 1.0) for _ in range(5)]
    assert ours[0] < 1.0
    assert ours == sorted(ours, reverse=True)
    assert naive_outputs == [1.0] * 5  # the naive integrator stays pinned for ~10 000 s


def test_saturated_output_stays_at_limit_while_p_alone_exceeds_it() -> None:
    # Anti-windup must not drag the integrator below zero to offset a large P term: then a
    # shrinking but still large error would pull the output off the limit too early.
    pid = make_pid(kp=0.5, ki=0.2, output_min=0.0, output_max=1.0)
    for t in range(50):
        assert pid.update(10.0, 0.0, now=float(t)) == 1.0
    for t in range(50, 80):  # the error shrinks from 10 towards 4: P stays above 2
        assert pid.update(10.0, 0.2 * (t - 50), now=float(t)) == 1.0
    assert terms_of(pid).integral >= 0.0


def test_output_leaves_low_limit_after_long_negative_error() -> None:
    pid = make_pid(kp=0.5, ki=0.2, output_min=0.0, output_max=1.0, action="direct")
    for t in range(500):
        assert pid.update(30.0, 20.0, now=float(t)) == 0.0
    assert pid.update(30.0, 30.5, now=500.0) > 0.0


def test_no_windup_against_slew_limit() -> None:
    pid = make_pid(kp=0.0, ki=1.0, output_min=0.0, output_max=100.0, slew_per_s=0.1)
    # A large error ramps the output at the slew rate; the integrator must ride the ramp.
    for t in range(100):
        u = pid.update(10.0, 0.0, now=float(t))
    assert u == pytest.approx(9.9)
    assert terms_of(pid).integral == pytest.approx(u)
    # Reverse the error: the output turns back on the very next step.
    assert pid.update(10.0, 10.5, now=100.0) < u


@settings(max_examples=150, deadline=None)
@given(
    kp=st.floats(0.01, 5.0),
    ki=st.floats(0.0, 2.0),
    output_max=st.floats(0.1, 10.0),
    slew_per_s=st.none() | st.floats(0.01, 5.0),
    deadband=st.floats(0.0, 0.5),
    feedforward=st.floats(-2.0, 0.1),
    errors=st.lists(st.floats(0.6, 50.0), min_size=1, max_size=60),
    reversed_error=st.floats(0.6, 50.0),
    dts=st.lists(st.floats(0.01, 30.0), min_size=61, max_size=61),
)
def test_property_saturated_output_leaves_limit_when_error_reverses(
    kp: float,
    ki: float,
    output_max: float,
    slew_per_s: float | None,
    deadband: float,
    feedforward: float,
    errors: list[float],
    reversed_error: float,
    dts: list[float],
) -> None:
    pid = make_pid(
        kp=kp,
        ki=ki,
        output_min=-output_max,
        output_max=output_max,
        slew_per_s=slew_per_s,
        deadband=deadband,
    )
    now = 0.0
    for error, dt_s in zip(errors, dts, strict=False):
        now += dt_s
        u = pid.update(0.0, -error, now=now, feedforward=feedforward)
    if u < output_max:
        return  # not saturated: nothing to show
    now += dts[-1]
    assert pid.update(0.0, reversed_error, now=now, feedforward=feedforward) < output_max


# --- limits ------------------------------------------------------------------------------

values = st.floats(-1000.0, 1000.0)


@st.composite
def configs(draw: st.DrawFn) -> PidConfig:
    output_min = draw(st.floats(-10.0, 10.0))
    return PidConfig(
        gains=PidGains(
            kp=draw(st.floats(0.0, 10.0)),
            ki=draw(st.floats(0.0, 5.0)),
            kd=draw(st.floats(0.0, 5.0)),
            derivative_filter_s=draw(st.floats(0.0, 10.0)),
        ),
        output_min=output_min,
        output_max=output_min + draw(st.floats(0.0, 20.0)),
        slew_per_s=draw(st.none() | st.floats(0.01, 10.0)),
        action=draw(st.sampled_from(ACTIONS)),
        deadband=draw(st.floats(0.0, 2.0)),
    )


steps = st.one_of(
    st.tuples(st.just("update"), values, values, st.floats(-1.0, 10.0), st.floats(-5.0, 5.0)),
    st.tuples(st.just("track"), st.floats(-30.0, 30.0), st.none() | values, st.floats(-1.0, 10.0)),
    st.tuples(st.just("repeat"), values, values),  # an update at the same instant
)


@settings(max_examples=300, deadline=None)
@given(
    config=configs(),
    initial_output=st.none() | st.floats(-30.0, 30.0),
    sequence=st.lists(steps, max_size=40),
)
def test_property_output_within_limits_and_slew(
    config: PidConfig, initial_output: float | None, sequence: list[tuple[object, ...]]
) -> None:
    pid = Pid(config, initial_output=initial_output)
    previous = pid.output
    previous_time: float | None = None
    now = 0.0
    for step in sequence:
        kind = step[0]
        if kind == "track":
            _, u, measurement, dt_s = step
            assert isinstance(u, float) and isinstance(dt_s, float)
            now += dt_s
            pid.track(u, now, measurement if isinstance(measurement, float) else None)
            assert pid.output == config.bound(u)
            previous, previous_time = pid.output, now
            continue
        if kind == "update":
            _, setpoint, measurement, dt_s, feedforward = step
            assert isinstance(dt_s, float) and isinstance(feedforward, float)
            now += dt_s
        else:
            _, setpoint, measurement = step
            feedforward = 0.0
        assert isinstance(setpoint, float) and isinstance(measurement, float)
        u = pid.update(setpoint, measurement, now, feedforward)
        assert config.output_min <= u <= config.output_max
        assert pid.output == u
        if config.slew_per_s is not None and previous is not None:
            elapsed = 0.0 if previous_time is None else max(now - previous_time, 0.0)
            assert abs(u - previous) <= config.slew_per_s * elapsed + 1e-9
        previous, previous_time = u, now


# --- derivative --------------------------------------------------------------------------


def test_no_derivative_kick_on_setpoint_step() -> None:
    pid = make_pid(kp=1.0, kd=5.0)
    for t in range(5):
        pid.update(20.0, 20.0, now=float(t))
    before = pid.output
    assert before is not None
    after = pid.update(25.0, 20.0, now=5.0)
    assert terms_of(pid).derivative == 0.0
    assert after - before == pytest.approx(5.0)  # the P step alone; on error it would be 30


def test_derivative_acts_against_measurement_change_for_both_actions() -> None:
    reverse = make_pid(kp=0.0, kd=2.0)
    reverse.update(20.0, 20.0, now=0.0)
    reverse.update(20.0, 21.0, now=1.0)  # rising measurement in a flow loop: back off
    assert terms_of(reverse).derivative == pytest.approx(-2.0)

    direct = make_pid(kp=0.0, kd=2.0, action="direct")
    direct.update(30.0, 30.0, now=0.0)
    direct.update(30.0, 31.0, now=1.0)  # warming supply: open the valve ahead of the error
    assert terms_of(direct).derivative == pytest.approx(2.0)


def test_derivative_filter_smooths_noise_and_follows_a_ramp() -> None:
    rng = random.Random(7)
    noise = [rng.gauss(0.0, 0.1) for _ in range(400)]
    spreads = {}
    for filter_s in (0.0, 5.0):
        pid = make_pid(kp=0.0, kd=1.0, derivative_filter_s=filter_s)
        derivative_terms = []
        for k, n in enumerate(noise):
            pid.update(0.0, 0.05 * k + n, now=float(k))  # a 0.05/s ramp under noise
            derivative_terms.append(terms_of(pid).derivative)
        settled = derivative_terms[100:]
        spreads[filter_s] = statistics.pstdev(settled)
        assert statistics.fmean(settled) == pytest.approx(-0.05, abs=0.03)
    assert spreads[5.0] < 0.25 * spreads[0.0]


def test_derivative_filter_is_first_order_lag() -> None:
    # A step into a steady ramp: the filtered rate approaches the slope as 1 - (T/(T+dt))^n.
    pid = make_pid(kp=0.0, kd=1.0, derivative_filter_s=4.0)
    for k in range(21):
        pid.update(0.0, -1.0 * k, now=float(k))  # falling 1/s: reverse action D = +1
    assert terms_of(pid).derivative == pytest.approx(1.0 - (4.0 / 5.0) ** 20)


# --- bumpless transfer -------------------------------------------------------------------


def test_initial_output_gives_bumpless_start() -> None:
    pid = make_pid(kp=3.0, ki=0.1, output_min=0.0, output_max=1.0, initial_output=0.4)
    assert pid.output == 0.4
    assert pid.update(10.0, 9.0, now=100.0) == pytest.approx(0.4, abs=1e-12)
    # Then it carries on from there, not from the P term alone.
    assert pid.update(10.0, 9.0, now=101.0) == pytest.approx(0.5)


def test_initial_output_outside_limits_is_bounded() -> None:
    assert make_pid(output_min=0.0, output_max=1.0, initial_output=3.0).output == 1.0


def test_track_then_update_is_bumpless_at_zero_error() -> None:
    pid = make_pid(kp=2.0, ki=0.5, kd=1.0, derivative_filter_s=2.0, output_min=0.0, output_max=1.0)
    pid.update(5.0, 2.0, now=0.0)
    for t in range(1, 50):  # manual mode at 0.63 for a while, measurement at the setpoint
        pid.track(0.63, now=float(t), measurement=5.0)
    assert pid.update(5.0, 5.0, now=50.0) == pytest.approx(0.63, abs=1e-12)


def test_track_then_update_is_bumpless_with_error() -> None:
    kp, ki = 2.0, 0.05
    pid = make_pid(kp=kp, ki=ki, output_min=0.0, output_max=10.0)
    pid.track(4.0, now=0.0, measurement=9.0)
    # The error of 1 would be a P step of 2; the integrator absorbs it.
    first = pid.update(10.0, 9.0, now=1.0)
    assert first == pytest.approx(4.0 + ki * 1.0 * 1.0)
    # From there on it moves like the velocity form: delta-P plus the integral increment.
    second = pid.update(10.0, 9.5, now=2.0)
    assert second - first == pytest.approx(kp * (0.5 - 1.0) + ki * 0.5)


def test_track_at_same_instant_returns_tracked_output() -> None:
    pid = make_pid(kp=5.0, ki=1.0, output_min=0.0, output_max=1.0)
    pid.update(10.0, 0.0, now=0.0)
    pid.track(0.2, now=3.0)
    assert pid.update(10.0, 0.0, now=3.0) == pytest.approx(0.2, abs=1e-12)


def test_long_manual_period_does_not_wind_up() -> None:
    ki = 0.01
    pid = make_pid(kp=0.5, ki=ki, output_min=0.0, output_max=1.0)
    for t in range(1000):  # an override holds 0.3 for 1000 s while the error is 10
        pid.track(0.3, now=float(t), measurement=0.0)
    # Only the last second's integral is added: nothing piled up while tracking (a naive
    # integrator would hold 0.01 * 10 * 1000 = 100 by now).
    assert pid.update(10.0, 0.0, now=1000.0) == pytest.approx(0.3 + ki * 10.0 * 1.0)


def test_track_respects_slew_on_return() -> None:
    pid = make_pid(kp=10.0, ki=1.0, output_min=0.0, output_max=1.0, slew_per_s=0.01)
    pid.track(0.5, now=0.0)
    assert pid.update(10.0, 0.0, now=1.0) == pytest.approx(0.51)


@settings(max_examples=200, deadline=None)
@given(
    config=configs(),
    history=st.lists(st.tuples(values, values), max_size=10),
    tracked=st.floats(-30.0, 30.0),
    setpoint=values,
    measurement=values,
)
def test_property_update_at_track_instant_returns_tracked_output(
    config: PidConfig,
    history: list[tuple[float, float]],
    tracked: float,
    setpoint: float,
    measurement: float,
) -> None:
    pid = Pid(config)
    for k, (sp, pv) in enumerate(history):
        pid.update(sp, pv, now=float(k))
    pid.track(tracked, now=100.0, measurement=measurement)
    u = pid.update(setpoint, measurement, now=100.0)
    assert u == pytest.approx(config.bound(tracked), abs=1e-9)


# --- time handling -----------------------------------------------------------------------


def test_repeated_instant_neither_integrates_nor_differentiates() -> None:
    pid = make_pid(kp=0.0, ki=1.0, kd=1.0)
    pid.update(10.0, 9.0, now=0.0)
    pid.update(10.0, 9.0, now=1.0)
    integral = terms_of(pid).integral
    derivative = terms_of(pid).derivative
    pid.update(10.0, 9.0, now=1.0)
    pid.update(10.0, 9.0, now=0.5)  # time going backwards is not integrated either
    assert terms_of(pid).integral == integral
    assert terms_of(pid).derivative == derivative


def test_first_call_neither_integrates_nor_differentiates() -> None:
    pid = make_pid(kp=1.0, ki=100.0, kd=100.0)
    assert pid.update(10.0, 9.0, now=1e6) == pytest.approx(1.0)
    assert terms_of(pid).integral == 0.0
    assert terms_of(pid).derivative == 0.0


def test_deadband_holds_output_near_setpoint() -> None:
    pid = make_pid(kp=1.0, ki=1.0, deadband=0.5)
    pid.update(10.0, 8.0, now=0.0)
    u = pid.update(10.0, 8.0, now=1.0)
    assert terms_of(pid).proportional == pytest.approx(1.5)  # no step at the band's edge
    for t in range(2, 10):
        assert pid.update(10.0, 10.0 + 0.4 * (-1) ** t, now=float(t)) == pytest.approx(u - 1.5)


def test_reset_forgets_history() -> None:
    pid = make_pid(kp=1.0, ki=1.0)
    for t in range(10):
        pid.update(10.0, 0.0, now=float(t))
    pid.reset()
    assert pid.output is None and pid.terms is None
    assert pid.update(10.0, 9.0, now=20.0) == pytest.approx(1.0)
    pid.reset(output=3.0)
    assert pid.update(10.0, 0.0, now=30.0) == pytest.approx(3.0)


# --- refusal -----------------------------------------------------------------------------

bad_numbers = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("bad", bad_numbers)
@pytest.mark.parametrize("argument", ["setpoint", "measurement", "now", "feedforward"])
def test_non_finite_input_raises_and_leaves_state_alone(bad: float, argument: str) -> None:
    pid = make_pid(kp=1.0, ki=1.0)
    pid.update(10.0, 9.0, now=0.0)
    before = (pid.output, pid.terms)
    kwargs = {"setpoint": 10.0, "measurement": 9.0, "now": 1.0, "feedforward": 0.0}
    kwargs[argument] = bad
    with pytest.raises(ValueError, match=argument):
        pid.update(**kwargs)
    assert (pid.output, pid.terms) == before
    assert pid.update(10.0, 9.0, now=1.0) == pytest.approx(2.0)


@pytest.mark.parametrize("bad", bad_numbers)
def test_non_finite_track_raises(bad: float) -> None:
    pid = make_pid()
    with pytest.raises(ValueError):
        pid.track(bad, now=0.0)
    with pytest.raises(ValueError):
        pid.track(0.5, now=bad)
    with pytest.raises(ValueError):
        pid.track(0.5, now=0.0, measurement=bad)
    with pytest.raises(ValueError):
        Pid(pid.config, initial_output=bad)


SIDEWAYS: Any = "sideways"


@pytest.mark.parametrize(
    "build",
    [
        lambda: PidGains(kp=-1.0, ki=0.0),
        lambda: PidGains(kp=1.0, ki=math.nan),
        lambda: PidGains(kp=1.0, ki=0.0, derivative_filter_s=-1.0),
        lambda: PidConfig(PidGains(1.0, 0.0), output_min=1.0, output_max=0.0),
        lambda: PidConfig(PidGains(1.0, 0.0), 0.0, 1.0, slew_per_s=0.0),
        lambda: PidConfig(PidGains(1.0, 0.0), 0.0, 1.0, slew_per_s=math.inf),
        lambda: PidConfig(PidGains(1.0, 0.0), 0.0, 1.0, deadband=-0.1),
        lambda: PidConfig(PidGains(1.0, 0.0), 0.0, 1.0, action=SIDEWAYS),
        lambda: PidConfig(PidGains(1.0, 0.0), -math.inf, 1.0),
    ],
)
def test_invalid_configuration_is_refused(build: object) -> None:
    assert callable(build)
    with pytest.raises(ValueError):
        build()


def test_overflowing_terms_raise() -> None:
    pid = make_pid(kp=1e300)
    with pytest.raises(ValueError, match="overflow"):
        pid.update(1e300, -1e300, now=0.0)
