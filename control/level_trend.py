"""The trend of a reservoir level: a leak that no detector reports still drains the reservoir.

A CDU's leak rope can be stuck dry or lie where the coolant does not run; the reservoir that
keeps the loop full shows every litre the loop loses. The slope of its level, fitted by least
squares over a short window, tells a leak of a few litres a minute from the level sensor's noise
within seconds, minutes before the level is low enough to stop the pump. Pure: the times are
the readings' own.
"""

from __future__ import annotations

import math
from collections import deque

MIN_SAMPLES = 5
"""Fewer readings than this in the window give no slope."""
MIN_SPAN_SHARE = 0.75
"""...nor do readings that span less than this share of the window (a trend needs its time)."""


class LevelTrend:
    """Readings of one level over the last `window_s` seconds and their least-squares slope."""

    def __init__(self, window_s: float) -> None:
        if not (math.isfinite(window_s) and window_s > 0.0):
            raise ValueError(f"window_s must be finite and > 0, got {window_s!r}")
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, ts: float, litres: float) -> None:
        """A reading, once (a reading seen again at the same time is not a new sample)."""
        if not (math.isfinite(ts) and math.isfinite(litres)):
            return
        if self._samples and ts <= self._samples[-1][0]:
            return
        self._samples.append((ts, litres))

    def clear(self) -> None:
        self._samples.clear()

    def slope_l_per_s(self, now: float) -> float | None:
        """The level's slope over the window ending at `now` (L/s; negative: falling), or None
        while the window holds too few readings or too short a span."""
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()
        if len(self._samples) < MIN_SAMPLES:
            return None
        first, last = self._samples[0][0], self._samples[-1][0]
        if last - first < MIN_SPAN_SHARE * self.window_s:
            return None
        count = len(self._samples)
        mean_t = math.fsum(t for t, _ in self._samples) / count
        mean_v = math.fsum(v for _, v in self._samples) / count
        covariance = math.fsum((t - mean_t) * (v - mean_v) for t, v in self._samples)
        variance = math.fsum((t - mean_t) ** 2 for t, _ in self._samples)
        return covariance / variance
