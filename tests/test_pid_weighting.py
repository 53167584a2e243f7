"""The PID's gain scale (a gain schedule's multiplier) and setpoint weighting."""

from __future__ import annotations

import pytest

from coolctl.control.pid import Pid, PidConfig, PidGains


def make(kp: float = 0.5, ki: float = 0.1, weight: float = 1.0) -> Pid:
    config = PidConfig(PidGains(kp=kp, ki=ki), 0.0, 10.0, action="reverse", setpoint_weight=weight)
    return Pid(config, initial_output=5.0)


def test_gain_scale_multiplies_p_and_i_and_one_keeps_the_gains() -> None:
    plain, scaled = make(), make()
    for pid in (plain, scaled):
        pid.update(10.0, 10.0, 0.0)
    one = plain.update(10.0, 9.0, 1.0) - 5.0
    two = scaled.update(10.0, 9.0, 1.0, gain_scale=2.0) - 5.0
    assert two == pytest.approx(2.0 * one)
    with pytest.raises(ValueError):
        make().update(10.0, 9.0, 0.0, gain_scale=-1.0)
    with pytest.raises(ValueError):
        make().update(10.0, 9.0, 0.0, gain_scale=float("nan"))


def test_a_new_gain_scale_never_jumps_the_integral() -> None:
    pid = make(kp=0.0, ki=0.1)
    pid.update(10.0, 10.0, 0.0)
    held = pid.update(10.0, 10.0, 1.0, gain_scale=3.0)  # no error: nothing to integrate
    assert held == pytest.approx(5.0)


def test_setpoint_weight_zero_gives_no_proportional_kick_on_a_setpoint_step() -> None:
    weighted, plain = make(weight=0.0), make(weight=1.0)
    for pid in (weighted, plain):
        pid.update(10.0, 10.0, 0.0)
    kicked = plain.update(11.0, 10.0, 1.0)
    gentle = weighted.update(11.0, 10.0, 1.0)
    assert kicked == pytest.approx(5.0 + 0.5 + 0.1)  # P on the step, plus a second of I
    assert gentle == pytest.approx(5.0 + 0.1)  # the integral alone moves it
    assert weighted.terms is not None and weighted.terms.proportional == pytest.approx(0.0)


def test_setpoint_weight_still_acts_fully_on_the_measurement() -> None:
    weighted, plain = make(weight=0.0), make(weight=1.0)
    for pid in (weighted, plain):
        pid.update(10.0, 10.0, 0.0)
    assert weighted.update(10.0, 9.0, 1.0) == pytest.approx(plain.update(10.0, 9.0, 1.0))


def test_setpoint_weight_keeps_the_restart_bumpless() -> None:
    pid = make(weight=0.3)
    pid.update(10.0, 10.0, 0.0)
    pid.update(12.0, 10.0, 1.0)
    pid.track(4.0, 2.0, 10.0)
    assert pid.update(12.0, 10.0, 2.0) == pytest.approx(4.0)


def test_setpoint_weight_outside_zero_to_one_is_refused() -> None:
    for weight in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            PidConfig(PidGains(kp=1.0, ki=0.0), 0.0, 1.0, setpoint_weight=weight)
