"""Which servers' chips throttle, and which are near it, from what their BMCs report.

A BMC gives each server's hottest chip temperature (`chip_temperature`) and, as the chip
sensor's critical threshold, the temperature its chips throttle at (`chip_throttle_temperature`;
where a BMC gives none, the rack's `chip_limit_c` stands in). A chip within
`THROTTLING_BAND_C` of that point is throttling: hardware holds it there by cutting power. One
within `chip_near_throttle_margin_c` is near throttle. Each change of a server's state is one
event; the current states feed the metrics, `coolctl status` and `coolctl top`.

Pure: the snapshot and the time are arguments (the rack step calls it every tick).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from coolctl.config import DeviceKind, RackConfig, RedfishDeviceConfig
from coolctl.model import Event, PointId, Severity, Snapshot

THROTTLING_BAND_C = 0.5
"""A chip this close to its throttle point is held there by its own hardware: throttling."""

ChipState = Literal["ok", "near", "throttling", "unknown"]


@dataclass(frozen=True, slots=True)
class ServerChips:
    """One server's hottest chip against its throttle point."""

    device: str
    state: ChipState
    chip_c: float | None
    throttle_c: float | None

    @property
    def margin_c(self) -> float | None:
        """Degrees left before throttling (None when either side is unknown)."""
        if self.chip_c is None or self.throttle_c is None:
            return None
        return self.throttle_c - self.chip_c


class ChipWatch:
    """Every server of a rack: its chips' state now, and an event when it changes."""

    def __init__(self, rack: RackConfig) -> None:
        self.rack = rack.id
        self.servers = tuple(
            device.id
            for device in rack.devices.values()
            if isinstance(device, RedfishDeviceConfig) and device.kind == DeviceKind.SERVER
        )
        self.margin_c = rack.safety.chip_near_throttle_margin_c
        self.fallback_c = rack.safety.chip_limit_c
        self.states: dict[str, ServerChips] = {
            device: ServerChips(device, "unknown", None, None) for device in self.servers
        }

    @property
    def throttling(self) -> tuple[str, ...]:
        return tuple(d for d, s in self.states.items() if s.state == "throttling")

    @property
    def near(self) -> tuple[str, ...]:
        return tuple(d for d, s in self.states.items() if s.state == "near")

    def summary(self) -> Mapping[str, object]:
        """What status and top show: the hottest chip, the smallest margin, who throttles."""
        chips = [s.chip_c for s in self.states.values() if s.chip_c is not None]
        margins = [s.margin_c for s in self.states.values() if s.margin_c is not None]
        return {
            "servers": len(self.servers),
            "hottest_c": max(chips) if chips else None,
            "throttle_margin_c": min(margins) if margins else None,
            "throttling": list(self.throttling),
            "near_throttle": list(self.near),
        }

    def step(self, snapshot: Snapshot, now: float) -> list[Event]:
        events: list[Event] = []
        for device in self.servers:
            chip = _good(snapshot, PointId(self.rack, device, "chip_temperature"))
            throttle = _good(snapshot, PointId(self.rack, device, "chip_throttle_temperature"))
            if throttle is None:
                throttle = self.fallback_c
            state: ChipState
            if chip is None or throttle is None:
                state = "unknown"
            elif chip >= throttle - THROTTLING_BAND_C:
                state = "throttling"
            elif chip >= throttle - self.margin_c:
                state = "near"
            else:
                state = "ok"
            before = self.states[device].state
            self.states[device] = ServerChips(device, state, chip, throttle)
            quiet = state == "unknown" or (before == "unknown" and state == "ok")
            if state != before and not quiet:
                events.append(self._event(device, before, state, chip, throttle, now))
        return events

    def _event(
        self,
        device: str,
        before: ChipState,
        state: ChipState,
        chip: float | None,
        throttle: float | None,
        now: float,
    ) -> Event:
        known = chip is not None and throttle is not None
        at = f"chip {chip:.1f} °C, throttles at {throttle:g} °C" if known else "no reading"
        if state == "throttling":
            return Event(
                self.rack,
                "server_throttling",
                Severity.WARNING,
                f"{device} throttles: {at}; its chips cut their own power",
                now,
                source="daemon",
            )
        if state == "near":
            return Event(
                self.rack,
                "chip_near_throttle",
                Severity.WARNING if before == "ok" else Severity.INFO,
                f"{device}'s chips are within {self.margin_c:g} K of throttling: {at}",
                now,
                source="daemon",
            )
        was = "throttling" if before == "throttling" else "near throttle"
        return Event(
            self.rack,
            "chip_throttle_cleared",
            Severity.INFO,
            f"{device} no longer {was}: {at}",
            now,
            source="daemon",
        )


def _good(snapshot: Snapshot, point: PointId) -> float | None:
    value = snapshot.value(point)
    return value if value is not None and math.isfinite(value) else None
