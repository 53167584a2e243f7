"""A positional PID controller with an explicit integrator, for coolctl's pump and valve loops.

Pure and deterministic: time is an argument, never read. The integrator is held in output
units so that bumpless handover and anti-windup are plain assignments to it:

- anti-windup by conditional integration: while the output is held by the output limits or by
  the slew limit, the integrator may only move towards the limit far enough to meet it, never
  past it, so the output leaves the limit on the step where the error changes sign;
- derivative on the measurement, through a first-order filter, so setpoint steps give no kick;
- bumpless start and manual->auto handover: the integrator is back-computed so that the first
  automatic output equals the output last applied, whatever the P, D and feedforward terms are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Action = Literal["reverse", "direct"]

# reverse: error = setpoint - measurement; direct: error = measurement - setpoint.
_ACTION_SIGN: dict[str, float] = {"reverse": 1.0, "direct": -1.0}


def _require_finite(**values: float) -> None:
    """Refuse NaN and infinities: the caller treats them as a bad reading, not as a number."""
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")


@dataclass(frozen=True, slots=True)
class PidGains:
    """Gains in the parallel (ideal, non-interacting) form; the loop's action sets the sign.

    kp: output per unit of error.
    ki: output per (error * second), i.e. integral gain per second.
    kd: output * second per unit of error (applied to the measurement's rate of change).
    derivative_filter_s: time constant of the first-order filter on the derivative, seconds;
        0 disables the filter.
    """

    kp: float
    ki: float
    kd: float = 0.0
    derivative_filter_s: float = 0.0

    def __post_init__(self) -> None:
        _require_finite(
            kp=self.kp, ki=self.ki, kd=self.kd, derivative_filter_s=self.derivative_filter_s
        )
        # The action carries the sign; negative gains would flip it a second time unnoticed.
        for name in ("kp", "ki", "kd", "derivative_filter_s"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"{name} must be >= 0 (set PidConfig.action for the sign)")


@dataclass(frozen=True, slots=True)
class PidConfig:
    """Everything that shapes one loop: gains, output range, slew limit, action, deadband.

    slew_per_s: largest |change of output| per second, or None for no slew limit.
    action: "reverse" (error = setpoint - measurement: low flow -> more pump speed) or
        "direct" (error = measurement - setpoint: supply too warm -> open the valve more).
    deadband: errors smaller than this in magnitude count as zero; larger ones are reduced by
        it, so the P term has no step at the edge of the band. Same unit as the measurement.
    setpoint_weight: the share of a setpoint change the P term acts on (the "b" of a
        two-degree-of-freedom PID), 0..1; the integral always acts on all of it. Under 1, a
        moving setpoint (a chip boost, an operator's override) is approached through the
        integral rather than kicked through the P term: on a loop whose sensor lags, a kick
        opens the actuator far past what the new setpoint needs before the sensor sees it.
    """

    gains: PidGains
    output_min: float
    output_max: float
    slew_per_s: float | None = None
    action: Action = "reverse"
    deadband: float = 0.0
    setpoint_weight: float = 1.0

    def __post_init__(self) -> None:
        _require_finite(output_min=self.output_min, output_max=self.output_max)
        if self.output_min > self.output_max:
            raise ValueError(
                f"output_min {self.output_min!r} is above output_max {self.output_max!r}"
            )
        if self.slew_per_s is not None and not (
            math.isfinite(self.slew_per_s) and self.slew_per_s > 0.0
        ):
            raise ValueError(f"slew_per_s must be finite and > 0, got {self.slew_per_s!r}")
        if self.action not in _ACTION_SIGN:
            raise ValueError(f"action must be 'reverse' or 'direct', got {self.action!r}")
        if not (math.isfinite(self.deadband) and self.deadband >= 0.0):
            raise ValueError(f"deadband must be finite and >= 0, got {self.deadband!r}")
        if not (math.isfinite(self.setpoint_weight) and 0.0 <= self.setpoint_weight <= 1.0):
            raise ValueError(f"setpoint_weight must be within 0..1, got {self.setpoint_weight!r}")

    def bound(self, output: float) -> float:
        """The output held inside [output_min, output_max]."""
        return min(max(output, self.output_min), self.output_max)


@dataclass(frozen=True, slots=True)
class PidTerms:
    """What the last `update` computed, for metrics and for explaining a command."""

    error: float  # with the action applied, before the deadband
    proportional: float
    integral: float  # after anti-windup
    derivative: float
    feedforward: float
    output: float
    limited: bool  # True when the output or slew limit held the output


def _deadbanded(error: float, deadband: float) -> float:
    """Zero inside the band, shifted by the band outside it: continuous, no step at its edge."""
    if abs(error) <= deadband:
        return 0.0
    return error - math.copysign(deadband, error)


class Pid:
    """One PID loop. Call `update` each control tick in auto, `track` in every other mode."""

    __slots__ = (
        "_config",
        "_integral",
        "_last_measurement",
        "_last_time",
        "_measurement_rate_per_s",
        "_output",
        "_rebase_integral",
        "_setpoint_ref",
        "_terms",
    )

    def __init__(self, config: PidConfig, initial_output: float | None = None) -> None:
        self._config = config
        self.reset(initial_output)

    @property
    def config(self) -> PidConfig:
        return self._config

    @property
    def output(self) -> float | None:
        """The last output computed or tracked, None before there is one."""
        return self._output

    @property
    def terms(self) -> PidTerms | None:
        """The terms of the last `update`, None before the first one."""
        return self._terms

    def reset(self, output: float | None = None) -> None:
        """Forget all history. With `output`, the next `update` starts bumplessly from it."""
        if output is not None:
            _require_finite(output=output)
        self._integral = 0.0
        self._measurement_rate_per_s = 0.0
        self._last_measurement: float | None = None
        self._last_time: float | None = None
        self._output = None if output is None else self._config.bound(output)
        self._rebase_integral = output is not None
        self._setpoint_ref: float | None = None  # the setpoint_weight's anchor
        self._terms: PidTerms | None = None

    def _measurement_step(self, now: float, measurement: float) -> tuple[float, float]:
        """The filtered measurement rate and the derivative baseline after a sample at `now`.

        No elapsed time means no new derivative: at the same instant the old baseline and rate
        are kept; if time went backwards the baseline restarts from this sample.
        """
        last_time, last_measurement = self._last_time, self._last_measurement
        if last_time is None or last_measurement is None:
            return 0.0, measurement
        dt_s = now - last_time
        if dt_s > 0.0:
            # Backward-Euler first-order filter on the difference quotient: stable for any dt,
            # and with a zero time constant it is the plain difference quotient.
            filter_s = self._config.gains.derivative_filter_s
            rate = (filter_s * self._measurement_rate_per_s + (measurement - last_measurement)) / (
                filter_s + dt_s
            )
            return rate, measurement
        if dt_s == 0.0:
            return self._measurement_rate_per_s, last_measurement
        return self._measurement_rate_per_s, measurement

    def _window(self, dt_s: float | None) -> tuple[float, float]:
        """The range the next output may take: output limits, narrowed by the slew limit."""
        config = self._config
        low, high = config.output_min, config.output_max
        if config.slew_per_s is not None and self._output is not None:
            step = config.slew_per_s * dt_s if dt_s is not None and dt_s > 0.0 else 0.0
            low = max(low, self._output - step)
            high = min(high, self._output + step)
        return low, high

    def update(
        self,
        setpoint: float,
        measurement: float,
        now: float,
        feedforward: float = 0.0,
        gain_scale: float = 1.0,
    ) -> float:
        """One automatic step at monotonic time `now` (seconds); returns the new output.

        `gain_scale` multiplies kp, ki and kd for this step (a gain schedule: the plant's gain
        moves with its operating point). The integrator is in output units, so a new scale
        changes the integral's rate, never its value."""
        _require_finite(
            setpoint=setpoint,
            measurement=measurement,
            now=now,
            feedforward=feedforward,
            gain_scale=gain_scale,
        )
        if gain_scale < 0.0:
            raise ValueError(f"gain_scale must be >= 0, got {gain_scale!r}")
        config = self._config
        gains = config.gains
        sign = _ACTION_SIGN[config.action]

        error = sign * (setpoint - measurement)
        effective_error = _deadbanded(error, config.deadband)
        dt_s = None if self._last_time is None else now - self._last_time

        rate, baseline = self._measurement_step(now, measurement)
        if self._setpoint_ref is None or self._rebase_integral:
            self._setpoint_ref = setpoint  # anchored where the loop (re)starts: no offset there
        # P on b*setpoint - measurement, from the anchor: the P term sees only the share
        # `setpoint_weight` of a setpoint change; the integral absorbs the constant rest.
        unweighted = sign * (1.0 - config.setpoint_weight) * (setpoint - self._setpoint_ref)
        proportional = gain_scale * gains.kp * (effective_error - unweighted)
        # Derivative of the error with the setpoint held still: setpoint steps give no kick.
        derivative = -sign * gain_scale * gains.kd * rate

        integral = self._integral
        if self._rebase_integral and self._output is not None:
            # Bumpless: the integrator absorbs P, D and feedforward so the output starts where
            # it was left.
            integral = self._output - proportional - derivative - feedforward
        candidate = integral
        if dt_s is not None and dt_s > 0.0:
            candidate = integral + gain_scale * gains.ki * effective_error * dt_s

        demand = proportional + candidate + derivative + feedforward
        low, high = self._window(dt_s)
        output = min(max(demand, low), high)
        # Conditional integration: while held at a limit, integrate towards it only as far as
        # meeting it; integrating away from it is always allowed.
        if demand > high and candidate > integral:
            candidate = max(
                integral, min(candidate, high - proportional - derivative - feedforward)
            )
        elif demand < low and candidate < integral:
            candidate = min(integral, max(candidate, low - proportional - derivative - feedforward))

        if not (math.isfinite(demand) and math.isfinite(candidate)):
            raise ValueError(
                f"PID terms overflowed (setpoint {setpoint!r}, measurement {measurement!r})"
            )

        self._integral = candidate
        self._rebase_integral = False
        self._measurement_rate_per_s = rate
        self._last_measurement = baseline
        self._last_time = now
        self._output = output
        self._terms = PidTerms(
            error=error,
            proportional=proportional,
            integral=candidate,
            derivative=derivative,
            feedforward=feedforward,
            output=output,
            limited=output != demand,
        )
        return output

    def track(self, output: float, now: float, measurement: float | None = None) -> None:
        """Follow the output actually applied while not in auto, so the return is bumpless.

        The next `update` back-computes the integrator so that it starts from `output` and
        slews from it. Passing the measurement keeps the derivative filter warm. An output
        outside [output_min, output_max] is taken as the nearest limit: the controller never
        asks for more than its limits.
        """
        _require_finite(output=output, now=now)
        if measurement is None:
            self._measurement_rate_per_s = 0.0
            self._last_measurement = None
        else:
            _require_finite(measurement=measurement)
            rate, baseline = self._measurement_step(now, measurement)
            self._measurement_rate_per_s = rate
            self._last_measurement = baseline
        self._last_time = now
        self._output = self._config.bound(output)
        self._rebase_integral = True
