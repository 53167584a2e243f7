"""Actuation: every command is clamped, coalesced, written once, and read back.

One channel per writable point. The control tick only submits; a writer task per channel does
the I/O, so a slow device delays its own writes and nobody's control tick. When a newer command
arrives while a write is in flight, the older one is dropped: only the latest matters.

A write the device refuses (an exception code, out of range, locked in local control: the
driver marks such an error `refused`) or answers with a read-back other than what was written
is retried with a bounded exponential backoff, not at every tick: `retry_after_s`, doubled at
each failure in a row up to `RETRY_MAX_S`. A lost link is the driver's to back off from: its
writes are tried again at every tick and resume as soon as it is back. A device that takes
writes but keeps losing them (a later poll shows another value) backs off too: the first drift
is rewritten at once, the next ones wait.
Commands that arrive before the retry is due are counted (`deferred`) and not written; a device
whose readings come back after a spell without them is written at once (its link is back). A
safety
command (interlock, failsafe, hand-back) with a value other than the one that failed goes out at
once: the backoff never delays a new safety value.
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

FailureHook = Callable[[PointId, str | None], None]
"""Told when a point's writes start failing (with the error) and when they succeed again
(None): once per change, for the event log."""

RETRY_MAX_S = 8.0
"""The longest wait between retries of a write that keeps being refused."""

_SAFETY_SOURCES = frozenset({Source.INTERLOCK, Source.FAILSAFE})

Writer = Callable[[str, float], Awaitable[float]]
"""Writes an engineering value to a device point and returns the value read back."""


@dataclass(slots=True)
class ActuatorStats:
    """Counters for metrics; the last command shows what the loop asked for and why."""

    writes: int = 0
    write_failures: int = 0  # every failed write, read-back mismatches included
    readback_mismatches: int = 0  # writes the device answered but reads back otherwise
    consecutive_failures: int = 0
    deferred: int = 0  # commands not written because a failed write's retry was not yet due
    drifts: int = 0  # confirmed writes that a later poll showed the device had not kept
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
        retry_after_s: float = 0.5,
        on_failure: FailureHook | None = None,
    ) -> None:
        """`retry_after_s` is the first wait after a failed write (the daemon passes its
        control period: a failed write is tried again at the next tick, then less often)."""
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
        self.retry_after_s = retry_after_s
        self._on_failure = on_failure
        self._failure_state: str | None = None  # the kind of failure last logged
        self._retry_at: float | None = None  # when a failed write may be tried again
        self._failed_value: float | None = None  # the value of the last failed write
        self._drifts = 0  # confirmed writes in a row the device did not keep
        self._drifted = False  # the last confirmed write has been seen lost already
        self._unreadable = False  # the last observation had no usable value

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
        if device_value is None:
            self._unreadable = True
        elif self._unreadable:
            # readable again after a spell without readings (a link that came back): what
            # failed while it was away is written at once, not when the backoff says
            self._unreadable = False
            self._retry_at = None
        self._device_value = device_value
        if device_value is not None and self.clamp.last_value is None:
            self.clamp.accept(device_value, now)
        last = self.stats.last_written
        if device_value is None or last is None:
            return
        if self._matches(device_value, last):
            self._drifts = 0  # the device kept what it was last told
        elif not self._drifted:
            self._drift(last, now)

    def _drift(self, lost: float, now: float) -> None:
        """The device no longer holds `lost`, its last confirmed write. The first drift is
        rewritten at once (someone turned a knob); a device that keeps losing what it is told
        is rewritten with the backoff of a failing write, not at every tick."""
        stats = self.stats
        self._drifted = True  # once per confirmed write
        self._drifts += 1
        stats.drifts += 1
        if self._drifts == 1:
            return
        backoff_s = self._backoff_s(self._drifts - 1)
        self._retry_at = max(self._retry_at or now, now + backoff_s)
        self._failed_value = lost
        if self._drifts == 2:
            log.warning(
                "%s/%s: %s does not keep the value written (%.4g); rewriting with backoff",
                self.point.rack,
                self.point.device,
                self.point.name,
                lost,
                extra={"rack": self.point.rack, "device": self.point.device},
            )

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
        if self._held_back(clamped, now):
            stats.deferred += 1
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

    def _held_back(self, command: Command, now: float) -> bool:
        """True while a failed write's retry is not due, unless `command` is a new safety
        value (an interlock, failsafe or hand-back value other than the one that failed)."""
        retry_at = self._retry_at
        if retry_at is None or now >= retry_at:
            return False
        return command.source not in _SAFETY_SOURCES or command.value == self._failed_value

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
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
        except Exception as exc:  # any failure of the device or link: counted, retried later
            message = f"{type(exc).__name__}: {exc}"
            refused = getattr(exc, "refused", False) is True
            self._failed(command, decided_at, message, _failure_kind(message), refused)
            return
        if math.isfinite(read_back) and not self._matches(read_back, command.value):
            # the device took the write but holds something else: not what was asked
            stats.readback_mismatches += 1
            self._device_value = read_back
            shown = f"it reads back {read_back:g}"
            self._failed(command, decided_at, shown, "the device reads back another value", True)
            return
        if stats.last_error is not None:
            if self._on_failure is not None:
                self._on_failure(self.point, None)
            log.info(
                "%s/%s: writes of %s succeed again after %d failures",
                self.point.rack,
                self.point.device,
                self.point.name,
                stats.consecutive_failures,
                extra={"rack": self.point.rack, "device": self.point.device},
            )
        stats.last_error = None
        self._failure_state = None
        stats.consecutive_failures = 0
        self._retry_at = self._failed_value = None
        stats.writes += 1
        self._drifted = False
        stats.last_written = read_back if math.isfinite(read_back) else command.value
        self._device_value = stats.last_written
        self._written_at = self._clock() if self._clock is not None else decided_at
        # The slew limit counts from when the command was decided, not from when the device
        # answered, so that a slow device does not shrink the next step's allowance.
        self.clamp.accept(command.value, decided_at)

    def _matches(self, read_back: float, value: float) -> bool:
        """The read-back is the value written, to within half a count (or float dust)."""
        tolerance = max(self.resolution / 2, 1e-9 * max(1.0, abs(value)))
        return abs(read_back - value) <= tolerance + 1e-12

    def _backoff_s(self, failures: int) -> float:
        """The wait after `failures` failures in a row: doubling, bounded."""
        return float(min(self.retry_after_s * 2.0 ** min(failures - 1, 30), RETRY_MAX_S))

    def _failed(
        self, command: Command, decided_at: float, message: str, state: str | None, back_off: bool
    ) -> None:
        """Count a failed write, log it once per change of `state` (the failure's kind: its
        text without the numbers that change from one try to the next), and, for a refusal,
        put the retry off."""
        stats = self.stats
        stats.write_failures += 1
        stats.consecutive_failures += 1
        if stats.last_error is None and self._on_failure is not None:
            self._on_failure(self.point, message)
        backoff_s = self._backoff_s(stats.consecutive_failures) if back_off else 0.0
        self._retry_at = decided_at + backoff_s if back_off else None
        self._failed_value = command.value
        if state != self._failure_state:
            self._failure_state = state
            log.warning(
                "%s/%s: write of %s=%.4g failed: %s (retried%s; logged again when it changes"
                " or ends)",
                self.point.rack,
                self.point.device,
                self.point.name,
                command.value,
                message,
                f" in {backoff_s:.3g} s" if back_off else " at the next tick",
                extra={"rack": self.point.rack, "device": self.point.device},
            )
        stats.last_error = message


_NUMBERS = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _failure_kind(message: str | None) -> str | None:
    """A failure's text without its numbers: what tells one failure from another."""
    return None if message is None else _NUMBERS.sub("#", message)
