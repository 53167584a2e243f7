"""What a rack's CDUs say of themselves: local or remote, and their alarms. Pure, no I/O.

A CDU switched to local at its panel (`cdu_remote` reads 0, or `cdu_control_mode` reads
LOCAL) is respected: it is announced once, every command to it is held back (not written,
not counted as refused) while it stays local, and announced again when it comes back.

Each alarm point (`*_alarm`, `pump_N_fault`) of a device that reports it is an event once per
change: raised (a warning) and cleared (info). An alarm that reads anything but good keeps its
last known state: a poll that failed is not an alarm that cleared.

`with_alarm_stops` adds the alarms a rack names in `[racks.X.cdu] stop_on_alarms` to the
points the supervisor stops the CDU on, as it does for a leak.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from coolctl.config import RackConfig
from coolctl.control.supervisor import SupervisorConfig
from coolctl.model import (
    CANONICAL_POINTS,
    CduControlMode,
    Event,
    PointId,
    Severity,
    Snapshot,
)

ALARM_POINTS: tuple[str, ...] = tuple(
    name for name in CANONICAL_POINTS if name.endswith("_alarm") or name.endswith("_fault")
)
REMOTE = "cdu_remote"
MODE = "cdu_control_mode"


class PointNames(Protocol):
    @property
    def point_names(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class AlarmState:
    """One alarm point as last read: active or not, and since when (monotonic seconds)."""

    point: PointId
    active: bool
    since: float


class CduWatch:
    """One rack's CDUs: which are in local control, and their alarms."""

    def __init__(self, rack: str, devices: Mapping[str, PointNames]) -> None:
        self.rack = rack
        self._local_capable = tuple(
            device
            for device, facts in devices.items()
            if REMOTE in facts.point_names or MODE in facts.point_names
        )
        self._alarm_points = tuple(
            PointId(rack, device, name)
            for device, facts in devices.items()
            for name in ALARM_POINTS
            if name in facts.point_names
        )
        self._local: dict[str, float] = {}  # device → since when it reads local
        self._alarms: dict[PointId, AlarmState] = {}

    @property
    def watched_devices(self) -> tuple[str, ...]:
        """The devices that can say they are in local control (cdu_remote or the mode)."""
        return self._local_capable

    @property
    def local_devices(self) -> Mapping[str, float]:
        """The CDUs in local control now, with since when."""
        return dict(self._local)

    def holds(self, point: PointId) -> bool:
        """True while `point`'s device is in local control: nothing is written to it."""
        return point.device in self._local

    def alarms(self) -> list[AlarmState]:
        """Every alarm point seen so far, active or not, in the order of the profile."""
        return [self._alarms[p] for p in self._alarm_points if p in self._alarms]

    def observe(self, snapshot: Snapshot, now: float) -> list[Event]:
        """Take the CDUs' local/remote state and alarms from `snapshot`: events on change."""
        events: list[Event] = []
        for device in self._local_capable:
            local = self._reads_local(snapshot, device)
            if local is None:
                continue  # unknown: keep what was known
            was = device in self._local
            if local and not was:
                self._local[device] = now
                message = (
                    f"{self.rack}/{device} is in local control at its panel: coolctl writes"
                    " nothing to it while it stays local"
                )
                events.append(self._event("cdu_local", Severity.WARNING, message, now))
            elif was and not local:
                del self._local[device]
                message = f"{self.rack}/{device} is back in remote control: coolctl drives it again"
                events.append(self._event("cdu_remote", Severity.INFO, message, now))
        for point in self._alarm_points:
            value = snapshot.value(point)
            if value is None:
                continue
            active = value >= 0.5
            state = self._alarms.get(point)
            if state is not None and state.active == active:
                continue
            self._alarms[point] = AlarmState(point, active, now)
            if active:
                message = f"alarm {point.name} on {self.rack}/{point.device}"
                events.append(self._event("cdu_alarm", Severity.WARNING, message, now))
            elif state is not None:
                message = f"alarm {point.name} on {self.rack}/{point.device} cleared"
                events.append(self._event("cdu_alarm_cleared", Severity.INFO, message, now))
        return events

    def _reads_local(self, snapshot: Snapshot, device: str) -> bool | None:
        remote = snapshot.value(PointId(self.rack, device, REMOTE))
        mode = snapshot.value(PointId(self.rack, device, MODE))
        if remote is None and mode is None:
            return None
        return (remote is not None and remote < 0.5) or (
            mode is not None and round(mode) == CduControlMode.LOCAL
        )

    def _event(self, kind: str, severity: Severity, message: str, now: float) -> Event:
        return Event(self.rack, kind, severity, message, now, source="cdu")


def with_alarm_stops(
    config: SupervisorConfig, rack: RackConfig, devices: Mapping[str, PointNames]
) -> SupervisorConfig:
    """The supervisor config with the rack's `stop_on_alarms` among the points that stop the
    CDU as a leak does (on any device of the rack that reports the alarm)."""
    stops = rack.cdu.stop_on_alarms
    if not stops:
        return config
    points = tuple(
        PointId(rack.id, device, name)
        for device, facts in devices.items()
        for name in stops
        if name in facts.point_names
    )
    return dataclasses.replace(
        config, leak_points=tuple(dict.fromkeys(config.leak_points + points))
    )
