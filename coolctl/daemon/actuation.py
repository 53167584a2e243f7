"""Actuation: every command is clamped, coalesced, written once, and read back.

One channel per writable point. The control tick only submits; a writer task per channel does
the I/O, so a slow device delays its own writes and nobody's control tick. When a newer command
arrives while a write is in flight, the older one is dropped: only the latest matters.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from coolctl.control.limits import ActuatorClamp, ActuatorLimits
from coolctl.daemon.tasks import cancel_and_wait
from coolctl.model import Command, PointId, Source

log = logging.getLogger("coolctl.daemon.actuation")

Writer = Callable[[str, float], Awaitable[float]]
"""Writes an engineering value to a device point and returns the value read back."""

FailureHook = Callable[[PointId, str | None], None]
"""Told when a point's writes start failing (with the error) and when they succeed again
(None): once per change, for the event log."""

RETRY_BACKOFF_S = (0.5, 8.0)  # a failed write: the next one waits 0.5 s, doubling up to 8 s


@dataclass(slots=True)
class ActuatorStats:
    """Counters for metrics; the last command shows what the loop asked for and why."""

    writes: int = 0
    write_failures: int = 0
    skipped_unchanged: int = 0
    clamped: int = 0
    coalesced: int = 0
    last_command: Command | None = None
    last_written: float | None = None
    last_error: str | None = None
    commands_by_source: dict[Source, int] = field(default_factory=dict)


class ActuatorChannel:
    """Owns one actuator point: its clamp, its pending command and its writer task."""

    def __init__(
        self,
        point: PointId,
        limits: ActuatorLimits,
        writer: Writer,
        *,
        resolution: float = 0.0,
        clock: Callable[[], float] | None = None,
        on_failure: FailureHook | None = None,
    ) -> None:
        self.point = point
        self.limits = limits
        self.clamp = ActuatorClamp(limits)
        self.resolution = resolution
        self.stats = ActuatorStats()
        self._writer = writer
        self._pending: tuple[Command, float] | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing is queued or being written
        self._idle.set()
        self._writing = False
        self._task: asyncio.Task[None] | None = None
        self._device_value: float | None = None
        # When the last write was confirmed, on the clock of the readings (monotonic seconds):
        # a poll sampled before then shows what the device held before that write.
        self._clock = clock
        self._written_at: float | None = None
        # A device that refuses writes (an exception code, out of range, locked in local) is
        # retried with backoff, never in a tight loop: the latest command waits its turn
        self._on_failure = on_failure
        self._backoff_s = 0.0
        self._failed_in_a_row = 0  # writes failed since the last that succeeded

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"actuator {self.point}")

    async def stop(self) -> None:
        """Finish the write in flight (never leave a half-done write), then stop."""
        if self._task is None:
            return
        self._pending = None
        if not self._writing:
            self._idle.set()
        await self._idle.wait()
        await cancel_and_wait([self._task])
        self._task = None

    async def idle(self) -> None:
        """Wait until every submitted command has been written (or has failed)."""
        await self._idle.wait()

    def observe(
        self, device_value: float | None, now: float, sampled_at: float | None = None
    ) -> None:
        """The latest polled value of the actuator point, to spot a device that drifted.

        Before the first write, it is also where the slew limit counts from: a restarted
        daemon ramps from what the device holds, not from nothing. A value sampled before the
        last confirmed write is ignored: it is the device before that write, not a drift, and
        taking it for one would write the same value again.
        """
        written_at = self._written_at
        if sampled_at is not None and written_at is not None and sampled_at <= written_at:
            return
        self._device_value = device_value
        if device_value is not None and self.clamp.last_value is None:
            self.clamp.accept(device_value, now)

    def submit(self, command: Command, now: float) -> Command:
        """Clamp `command` and queue it for writing; return the command as it will be written."""
        clamped = self._quantised(self.clamp.clamp(command, now))
        stats = self.stats
        if clamped.value != command.value:
            stats.clamped += 1
        stats.last_command = clamped
        stats.commands_by_source[clamped.source] = (
            stats.commands_by_source.get(clamped.source, 0) + 1
        )
        if self._unchanged(clamped.value):
            stats.skipped_unchanged += 1
            return clamped
        if self._pending is not None:
            stats.coalesced += 1
        self._pending = (clamped, now)
        self._idle.clear()
        self._wake.set()
        return clamped

    def _quantised(self, command: Command) -> Command:
        """The value in whole counts of the device (a register count, a watt), still within
        bounds: what the device will hold, so that the read-back can be compared exactly."""
        step = self.resolution
        if step <= 0:
            return command
        counts = round(command.value / step)
        value = counts * step
        low, high = self.limits.minimum, self.limits.maximum
        if value < low:
            value = math.ceil(low / step - 1e-9) * step
        elif value > high:
            value = math.floor(high / step + 1e-9) * step
        value = round(value, 9)  # no float dust: 0.30000000000000004 is 0.3
        return command if value == command.value else replace(command, value=value)

    def _unchanged(self, value: float) -> bool:
        """True when the device already holds `value` to within half a count."""
        last = self.stats.last_written
        if last is None or self._pending is not None:
            return False
        tolerance = max(self.resolution / 2, 1e-9)
        if abs(value - last) > tolerance:
            return False
        device = self._device_value
        return device is None or abs(device - last) <= tolerance

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending is not None and self._backoff_s > 0.0:
                await asyncio.sleep(self._backoff_s)  # newer commands replace the pending one
            pending, self._pending = self._pending, None
            if pending is not None:
                self._writing = True
                try:
                    await self._write(*pending)
                finally:
                    self._writing = False
            if self._pending is None:
                self._idle.set()

    async def _write(self, command: Command, decided_at: float) -> None:
        stats = self.stats
        try:
            read_back = await self._writer(self.point.name, command.value)
        except Exception as exc:  # any failure of the device or link: counted, retried next tick
            stats.write_failures += 1
            # a device that answered "no" is asked again with backoff; a lost link is the
            # driver's to back off from, and its writes resume as soon as it is back
            low, high = RETRY_BACKOFF_S
            refused = getattr(exc, "refused", False) is True
            self._backoff_s = min(high, max(low, 2.0 * self._backoff_s)) if refused else 0.0
            message = f"{type(exc).__name__}: {exc}"
            if stats.last_error is None and self._on_failure is not None:
                self._on_failure(self.point, message)
            # Once per change of the failure, not per retry: the same failure with another
            # value, address or transaction id in its text is the same failure.
            kind = _failure_kind(message)
            if kind != _failure_kind(stats.last_error):
                log.warning(
                    "%s/%s: write of %s=%.4g failed: %s (retried, with backoff if refused;"
                    " logged again when it changes or ends)",
                    self.point.rack,
                    self.point.device,
                    self.point.name,
                    command.value,
                    message,
                    extra={"rack": self.point.rack, "device": self.point.device},
                )
            stats.last_error = message
            self._failed_in_a_row += 1
            return
        self._backoff_s = 0.0
        if stats.last_error is not None and self._on_failure is not None:
            self._on_failure(self.point, None)
        if stats.last_error is not None:
            log.info(
                "%s/%s: writes of %s succeed again after %d failures",
                self.point.rack,
                self.point.device,
                self.point.name,
                self._failed_in_a_row,
                extra={"rack": self.point.rack, "device": self.point.device},
            )
        self._failed_in_a_row = 0
        stats.last_error = None
        stats.writes += 1
        stats.last_written = read_back if math.isfinite(read_back) else command.value
        self._device_value = stats.last_written
        self._written_at = self._clock() if self._clock is not None else decided_at
        # The slew limit counts from when the command was decided, not from when the device
        # answered, so that a slow device does not shrink the next step's allowance.
        self.clamp.accept(command.value, decided_at)


_NUMBERS = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _failure_kind(message: str | None) -> str | None:
    """A failure's text without its numbers: what tells one failure from another."""
    return None if message is None else _NUMBERS.sub("#", message)
