"""A dead time: a signal as it was some seconds ago, for feedforward through a transport delay.

Pure: samples come with their time, nothing reads a clock. Why a dead time and not a longer lag:
a load step's heat reaches the exchanger only after it has crossed the return pipe (plug flow),
then all at once; a first-order lag long enough to wait for it is too slow once it has arrived.
"""

from __future__ import annotations

from collections import deque


class DelayLine:
    """Samples of one signal, answered `delay_s` late.

    `at(now)` is the newest sample taken at or before `now - delay_s`; before any sample is that
    old it is the oldest one held (a loop that has just started feeds forward what it sees, not
    nothing). Samples older than the one in use are dropped, so memory stays at about
    `delay_s` over the sampling period. Time that runs backwards starts the line afresh.
    """

    __slots__ = ("_delay_s", "_samples")

    def __init__(self, delay_s: float) -> None:
        if not delay_s >= 0.0:  # also refuses NaN
            raise ValueError(f"delay_s must be >= 0, got {delay_s!r}")
        self._delay_s = delay_s
        self._samples: deque[tuple[float, float]] = deque()

    def push(self, now: float, value: float) -> None:
        """Take a sample at time `now` (seconds)."""
        if self._samples and now < self._samples[-1][0]:
            self._samples.clear()
        self._samples.append((now, value))

    def at(self, now: float) -> float | None:
        """The signal as it was `delay_s` before `now`; None before the first sample."""
        samples = self._samples
        due = now - self._delay_s
        while len(samples) > 1 and samples[1][0] <= due:
            samples.popleft()
        return samples[0][1] if samples else None
