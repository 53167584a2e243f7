"""The faults in force on a live simulation, and the timers that undo them.

Apart from `coolctl.simulators.faults` (which applies faults to a running simulation) so that
the simulation can keep its book without importing what applies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("coolctl.simulators.faults")

# (rack, slot, device, point): re-applying a fault to the same slot replaces it.
FaultKey = tuple[str, str, str | None, str | None]


@dataclass(slots=True)
class ActiveFault:
    """A fault in force: what it is, since when, until when, and how to take it back."""

    kind: str
    rack: str
    device: str | None
    point: str | None
    value: float | None
    description: str
    started_plant_s: float
    undo: Callable[[], None]
    expires_monotonic: float | None = None
    timer: asyncio.Task[None] | None = None

    def as_dict(self) -> dict[str, object]:
        remaining = None
        if self.expires_monotonic is not None:
            remaining = round(max(0.0, self.expires_monotonic - time.monotonic()), 3)
        return {
            "kind": self.kind,
            "device": self.device,
            "point": self.point,
            "value": self.value,
            "description": self.description,
            "started_plant_s": round(self.started_plant_s, 3),
            "remaining_s": remaining,
        }


class FaultBook:
    """The faults in force on a simulation, and the timers that will undo them."""

    def __init__(self) -> None:
        self._active: dict[FaultKey, ActiveFault] = {}

    def active(self, rack: str | None = None) -> list[ActiveFault]:
        return [f for f in self._active.values() if rack is None or f.rack == rack]

    def record(self, key: FaultKey, fault: ActiveFault, duration_s: float | None) -> None:
        """Keep `fault` in force; a fault already in its slot is replaced.

        The replaced fault's undo is kept: it restores the state from before the first of the
        two (e.g. the load before two successive load steps), which is what undo should mean.
        """
        old = self._active.pop(key, None)
        if old is not None:
            cancel(old)
            fault.undo = old.undo
        if duration_s is not None:
            fault.expires_monotonic = time.monotonic() + duration_s
            fault.timer = asyncio.create_task(
                self._expire(key, fault, duration_s), name=f"undo {fault.kind}"
            )
        self._active[key] = fault

    def resolve(self, key: FaultKey, *, undo: bool) -> ActiveFault | None:
        """Forget one fault, undoing it if asked; None if it was not in force."""
        fault = self._active.pop(key, None)
        if fault is not None:
            cancel(fault)
            if undo:
                fault.undo()
        return fault

    def clear_rack(self, rack: str) -> int:
        """Undo every fault in force on a rack; returns how many there were."""
        keys = [key for key in self._active if key[0] == rack]
        for key in keys:
            try:
                self.resolve(key, undo=True)
            except Exception:
                # clear must go on: the blanket resets after it repair what this undo did not
                log.exception("undoing %s on %s failed", key[1], rack)
        return len(keys)

    async def close(self) -> None:
        """Stop every undo timer (the simulation is stopping) and forget every fault."""
        timers = [f.timer for f in self._active.values() if f.timer is not None]
        self._active.clear()
        for timer in timers:
            timer.cancel()
        for timer in timers:
            with contextlib.suppress(asyncio.CancelledError):
                await timer

    async def _expire(self, key: FaultKey, fault: ActiveFault, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if self._active.get(key) is not fault:
            return
        del self._active[key]
        fault.timer = None
        try:
            fault.undo()
        except Exception:
            log.exception("undoing %s on %s after %g s failed", fault.kind, fault.rack, delay_s)
        else:
            log.info("%s: undone after %g s", fault.description, delay_s)


def cancel(fault: ActiveFault) -> None:
    timer, fault.timer = fault.timer, None
    fault.expires_monotonic = None
    if timer is not None and timer is not asyncio.current_task():
        timer.cancel()


# ---------------------------------------------------------------------------------- arguments
