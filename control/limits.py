"""The last clamp every coolctl command passes before it is written to an actuator.

Bounds are hard: a command never leaves [minimum, maximum]. Within them the value may move from
the last value accepted (written or read back) by at most slew_per_s times the seconds since.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from coolctl.model import Command


@dataclass(frozen=True, slots=True)
class ActuatorLimits:
    """The range one actuator may be driven over, and its fastest allowed change per second."""

    minimum: float
    maximum: float
    slew_per_s: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.minimum) and math.isfinite(self.maximum)):
            raise ValueError(f"limits must be finite, got [{self.minimum!r}, {self.maximum!r}]")
        if self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum!r} is above maximum {self.maximum!r}")
        if self.slew_per_s is not None and not (
            math.isfinite(self.slew_per_s) and self.slew_per_s > 0.0
        ):
            raise ValueError(f"slew_per_s must be finite and > 0, got {self.slew_per_s!r}")


class ActuatorClamp:
    """Holds the last value written to one actuator and clamps new commands to bounds and slew.

    `clamp` does not change the state: only `accept`, called with what was actually written or
    read back, moves the base the slew limit counts from.
    """

    __slots__ = ("_last_time", "_last_value", "_limits")

    def __init__(self, limits: ActuatorLimits) -> None:
        self._limits = limits
        self._last_value: float | None = None
        self._last_time: float | None = None

    @property
    def limits(self) -> ActuatorLimits:
        return self._limits

    @property
    def last_value(self) -> float | None:
        """The last accepted value, None until the first `accept`."""
        return self._last_value

    @property
    def last_time(self) -> float | None:
        """The monotonic time (seconds) of the last accepted value."""
        return self._last_time

    def clamp(self, command: Command, now: float) -> Command:
        """The command with its value held to bounds and slew; the reason says what changed.

        Slew counts from the last accepted value over the seconds since it was accepted (none
        if time went backwards). If that value lies outside the bounds, the bounds win.
        """
        value = command.value
        if not math.isfinite(value):
            raise ValueError(f"refusing non-finite command {value!r} for {command.point}")
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now!r}")
        limits = self._limits
        notes: list[str] = []

        bounded = min(max(value, limits.minimum), limits.maximum)
        if bounded > value:
            notes.append(f"clamped to min {float(limits.minimum)!r}")
        elif bounded < value:
            notes.append(f"clamped to max {float(limits.maximum)!r}")

        result = bounded
        if (
            limits.slew_per_s is not None
            and self._last_value is not None
            and self._last_time is not None
        ):
            step = limits.slew_per_s * max(now - self._last_time, 0.0)
            slewed = min(max(bounded, self._last_value - step), self._last_value + step)
            # Bounds are hard: from a value accepted outside them, go to the nearest bound.
            slewed = min(max(slewed, limits.minimum), limits.maximum)
            if slewed != bounded:
                notes.append("slew-limited")
                result = slewed

        if not notes:
            return command
        reason = command.reason + "".join(f"; {note}" for note in notes)
        return replace(command, value=result, reason=reason)

    def accept(self, value: float, now: float) -> None:
        """Record the value actually written or read back at `now`: the new base for slew."""
        if not math.isfinite(value):
            raise ValueError(f"refusing non-finite accepted value {value!r}")
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now!r}")
        self._last_value = value
        self._last_time = now
