"""The latest reading of every point, kept in one place for controllers, metrics and status.

Pollers write here; the control tick takes a snapshot; the metrics collector reads it at scrape
time. A good reading older than its device's `stale_after_s` is served as `stale`, so that a
poller that stopped (not just one that fails) can never pass an old value off as fresh.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from coolctl.model import PointId, Quality, Reading, Snapshot


class TelemetryStore:
    """Latest readings by point, with a staleness horizon per (rack, device)."""

    def __init__(self) -> None:
        self._readings: dict[PointId, Reading] = {}
        self._stale_after_s: dict[tuple[str, str], float] = {}

    def register_device(self, rack: str, device: str, stale_after_s: float) -> None:
        self._stale_after_s[(rack, device)] = stale_after_s

    def forget_device(self, rack: str, device: str) -> None:
        """Drop a device's points (it was removed from the config)."""
        self._stale_after_s.pop((rack, device), None)
        for point in [p for p in self._readings if (p.rack, p.device) == (rack, device)]:
            del self._readings[point]

    def update(self, readings: Iterable[Reading]) -> None:
        for reading in readings:
            self._readings[reading.point] = reading

    def current(self, point: PointId, now: float) -> Reading:
        """The reading of one point as it stands at `now` (aged to stale if need be)."""
        reading = self._readings.get(point)
        if reading is None:
            return Reading(point, None, now, Quality.MISSING)
        return self._aged(reading, now)

    def readings(self, now: float, rack: str | None = None) -> list[Reading]:
        return [
            self._aged(reading, now)
            for point, reading in self._readings.items()
            if rack is None or point.rack == rack
        ]

    def snapshot(self, now: float, rack: str | None = None) -> Snapshot:
        return Snapshot(self.readings(now, rack), now)

    def _aged(self, reading: Reading, now: float) -> Reading:
        if reading.quality is not Quality.GOOD:
            return reading
        horizon = self._stale_after_s.get((reading.point.rack, reading.point.device))
        if horizon is not None and now - reading.ts > horizon:
            return replace(reading, quality=Quality.STALE)
        return reading
