"""The latest reading of every point, kept in one place for controllers, metrics and status.

Pollers write here; the control tick takes a snapshot; the metrics collector reads it at scrape
time. A good reading older than its device's `stale_after_s` is served as `stale`, so that a
poller that stopped (not just one that fails) can never pass an old value off as fresh.

Readings are kept per rack: every rack's control tick takes a snapshot of its own rack every
period, and with one flat table each of those snapshots would walk every point of the row (the
cost of a row growing with the square of its racks).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from coolctl.model import PointId, Quality, Reading, Snapshot


class TelemetryStore:
    """Latest readings by rack and point, with a staleness horizon per (rack, device)."""

    def __init__(self) -> None:
        self._racks: dict[str, dict[PointId, Reading]] = {}
        self._stale_after_s: dict[tuple[str, str], float] = {}

    def register_device(self, rack: str, device: str, stale_after_s: float) -> None:
        self._stale_after_s[(rack, device)] = stale_after_s
        self._racks.setdefault(rack, {})

    def update(self, readings: Iterable[Reading]) -> None:
        racks = self._racks
        for reading in readings:
            point = reading.point
            points = racks.get(point.rack)
            if points is None:
                points = racks[point.rack] = {}
            points[point] = reading

    def current(self, point: PointId, now: float) -> Reading:
        """The reading of one point as it stands at `now` (aged to stale if need be)."""
        reading = self._racks.get(point.rack, {}).get(point)
        if reading is None:
            return Reading(point, None, now, Quality.MISSING)
        return self._aged(reading, now)

    def readings(self, now: float, rack: str | None = None) -> list[Reading]:
        """Every point's reading at `now`, of one rack or (rack None) of all, racks in the
        order they were first seen."""
        if rack is not None:
            return [self._aged(reading, now) for reading in self._racks.get(rack, {}).values()]
        return [
            self._aged(reading, now)
            for points in self._racks.values()
            for reading in points.values()
        ]

    def snapshot(self, now: float, rack: str | None = None) -> Snapshot:
        return Snapshot(self.readings(now, rack), now)

    def _aged(self, reading: Reading, now: float) -> Reading:
        if reading.quality is not Quality.GOOD:
            return reading
        point = reading.point
        horizon = self._stale_after_s.get((point.rack, point.device))
        if horizon is not None and now - reading.ts > horizon:
            return replace(reading, quality=Quality.STALE)
        return reading
