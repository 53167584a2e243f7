"""Modbus client for one device (one unit id), driven by its profile, over TCP or RTU.

coolctl polls a device, turns each profile point into a `Reading`, and writes setpoints with a
read-back check. The device is a real box on a real network or bus, so this module is mostly
about what happens when it misbehaves: every failure becomes a reading quality and a counter,
never an exception out of `poll()`, and never a log line per poll.

The connection is a `ModbusLink` (modbus_link.py): a device given none opens its own TCP
connection; devices on one RS-485 bus, or behind one TCP gateway, share one link and so one
connection with one request in flight. A device's own lock keeps its poll and its writes
(a read-modify-write of one bit included) from interleaving.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from pymodbus.pdu import ModbusPDU

from coolctl.model import PointId, Quality, Reading

from .modbus_link import (
    EXCEPTION_NAMES,
    LINK_FAILURES,
    Failure,
    FailureKind,
    ModbusClient,
    ModbusLink,
    exception_text,
)
from .modbus_profile import (
    BIT_TABLES,
    ModbusProfile,
    ReadBlock,
    RegisterPoint,
    Table,
    Unlock,
    decode,
    encode,
    is_missing,
    plan_reads,
    set_bit,
)
from .poll_stats import PollChange, PollStats

__all__ = [
    "EXCEPTION_NAMES",
    "DeviceStats",
    "FailureKind",
    "ModbusDevice",
    "ModbusLink",
    "WriteError",
    "exception_text",
]

log = logging.getLogger("coolctl.drivers.modbus")

SENSOR_MISSING = "sensor_missing"  # errors_by_kind: a register held a "no sensor" sentinel


class WriteError(Exception):
    """A write that was refused, failed, or did not read back as written."""

    refused = False  # the device answered and said no (an exception code): retry with backoff


@dataclass(slots=True)
class DeviceStats(PollStats):
    """A Modbus device's counters: the shared poll counters, and its connection attempts."""

    connect_attempts: int = 0


@dataclass(slots=True)
class _PollOutcome:
    readings: dict[str, Reading] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    waiting_s: float | None = None  # set when no connect was tried because of the backoff

    @property
    def failed(self) -> bool:
        return bool(self.failures) or self.waiting_s is not None


class ModbusDevice:
    """One Modbus device (one unit id on a TCP connection or a serial bus), read through its
    profile."""

    def __init__(
        self,
        *,
        rack: str,
        device: str,
        unit_id: int,
        profile: ModbusProfile,
        host: str | None = None,
        port: int = 502,
        link: ModbusLink | None = None,
        timeout_s: float = 1.0,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 30.0,
    ) -> None:
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit_id must be within 0..255, not {unit_id}")
        if link is None:
            if host is None:
                raise ValueError("a Modbus device needs a host (TCP) or a link")
            link = ModbusLink(
                host=host,
                port=port,
                timeout_s=timeout_s,
                reconnect_min_s=reconnect_min_s,
                reconnect_max_s=reconnect_max_s,
            )
        self.rack = rack
        self.device = device
        self.link = link
        self.host = link.host
        self.port = link.port
        self.unit_id = unit_id
        self.profile = profile
        self.timeout_s = link.timeout_s
        self.stats = DeviceStats()
        self.blocks: tuple[ReadBlock, ...] = tuple(plan_reads(profile))
        self.last_raw: dict[str, list[int]] = {}  # point -> its registers (or bit) as last read
        self.problems: dict[str, str] = {}  # point -> why the last poll did not read it good
        self.last_failures: list[Failure] = []  # what went wrong in the last poll
        self._lock = asyncio.Lock()
        self._last_good: dict[str, tuple[float, float]] = {}  # point -> (value, ts)
        self._label = f"{rack}/{device} ({link.label} unit {unit_id})"
        self._log_extra = {"rack": rack, "device": device}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Drop the connection; a later poll or write connects again. On a shared link this
        drops it for every device on it, which then reconnects on its next request."""
        async with self._lock:
            self.link.close()
            self.stats.connected = False

    # ----------------------------------------------------------------------------------------
    # Polling

    async def poll(self) -> list[Reading]:
        """Read every point once: one Reading per profile point, in profile order.

        Never raises for device trouble and returns within about timeout_s per read block
        (plus one connect): failures show up as qualities, counters and one log line per
        change between working and failing.
        """
        async with self._lock:
            started = time.monotonic()
            self.problems = {}
            outcome = await self._poll_blocks()
            done = time.monotonic()
            readings = [
                outcome.readings.get(point.name) or self._unread(point, done)
                for point in self.profile.points
            ]
            self._account_poll(outcome, started, done)
            return readings

    async def _poll_blocks(self) -> _PollOutcome:
        outcome = _PollOutcome()
        try:
            outcome.waiting_s = await self._connect()
        except Failure as failure:
            outcome.failures.append(failure)
            return outcome
        if outcome.waiting_s is not None:
            return outcome
        for block in self.blocks:
            try:
                response = await self.link.request(functools.partial(self._read, block))
            except Failure as failure:
                outcome.failures.append(failure)
                if failure.kind in LINK_FAILURES:
                    break  # the device is not answering: do not wait out every block
                for point in block.points:
                    self.problems[point.name] = failure.detail
                outcome.readings.update(self._bad(block, time.monotonic()))
                if not self.link.connected:  # an undecodable frame cost the connection
                    break
                continue
            self._decode_block(block, response, outcome)
        return outcome

    def _read(self, block: ReadBlock, client: ModbusClient) -> Awaitable[ModbusPDU]:
        return _read_request(client, block.table, block.start, block.count, self.unit_id)

    def _decode_block(self, block: ReadBlock, response: ModbusPDU, outcome: _PollOutcome) -> None:
        """Readings of one answered block; a value that cannot be decoded is bad on its own.

        A NaN from one float (a broken sensor, typically) spoils that point only; a reply of
        the wrong length spoils the whole block, since no offset in it can be trusted. A
        register holding the point's "no sensor" sentinel reads missing, never a number.
        """
        now = time.monotonic()
        raw = _raw_values(block, response)
        if raw is None:
            outcome.failures.append(
                Failure(
                    FailureKind.GARBLED,
                    f"{block.table} {block.start}+{block.count}: reply of wrong size",
                )
            )
            outcome.readings.update(self._bad(block, now))
            return
        for point in block.points:
            offset = point.address - block.start
            words = raw[offset : offset + point.register_count]
            self.last_raw[point.name] = list(words)
            if is_missing(point, words):
                self.problems[point.name] = "no sensor: " + " ".join(f"0x{w:04X}" for w in words)
                self.stats.count(SENSOR_MISSING)
                self._last_good.pop(point.name, None)  # no stale value of an absent sensor
                outcome.readings[point.name] = self._reading(point, None, now, Quality.MISSING)
                continue
            try:
                value = decode(point, words)
            except ValueError as exc:
                outcome.failures.append(Failure(FailureKind.GARBLED, str(exc)))
                self.problems[point.name] = str(exc)
                outcome.readings[point.name] = self._reading(point, None, now, Quality.BAD)
                continue
            self._last_good[point.name] = (value, now)
            outcome.readings[point.name] = self._reading(point, value, now, Quality.GOOD)

    def _bad(self, block: ReadBlock, now: float) -> dict[str, Reading]:
        return {p.name: self._reading(p, None, now, Quality.BAD) for p in block.points}

    def _unread(self, point: RegisterPoint, now: float) -> Reading:
        """A point this poll could not read: its last good value gone stale, or missing."""
        last = self._last_good.get(point.name)
        if last is None:
            return self._reading(point, None, now, Quality.MISSING)
        value, ts = last
        return self._reading(point, value, ts, Quality.STALE)

    def _reading(
        self, point: RegisterPoint, value: float | None, ts: float, quality: Quality
    ) -> Reading:
        return Reading(PointId(self.rack, self.device, point.name), value, ts, quality)

    def _account_poll(self, outcome: _PollOutcome, started: float, done: float) -> None:
        stats = self.stats
        self.last_failures = list(outcome.failures)
        stats.connected = self.link.connected
        stats.connect_attempts = self.link.connect_attempts
        for failure in outcome.failures:
            stats.count(failure.kind)
        run = stats.consecutive_failures
        change = stats.record_poll(outcome.failed, started, done)
        if change is PollChange.STARTED_FAILING:
            self._log_failing(outcome)
        elif change is PollChange.RECOVERED:
            log.info(
                "%s: modbus polling recovered after %d failures",
                self._label,
                run,
                extra=self._log_extra,
            )

    def _log_failing(self, outcome: _PollOutcome) -> None:
        if outcome.failures:
            first = outcome.failures[0]
            kind, detail = first.kind, first.detail
        else:
            kind, detail = (
                FailureKind.CONNECTION,
                f"not connected, next attempt in {outcome.waiting_s:.3g} s",
            )
        log.warning(
            "%s: modbus polling failing: %s (%s); logging again on recovery",
            self._label,
            kind,
            detail,
            extra=self._log_extra,
        )

    # ----------------------------------------------------------------------------------------
    # Writing

    async def write(self, point: str, value: float) -> float:
        """Write one point and return the value read back from the device.

        Refuses points that are not writable and values outside the profile's bounds before
        anything goes on the wire; raises WriteError for every failure, including a read-back
        that differs from the value asked for by more than half a count. The profile's unlock
        writes go first (and its relock writes after); one bit of a register is written by
        read-modify-write or a mask write, as the profile says; a momentary command (an alarm
        acknowledge) is not read back, since the device clears it itself.
        """
        self.stats.writes += 1
        try:
            spec = self._writable_point(point, value)
            encoded = self._encode_for_write(spec, value)
            async with self._lock:
                read_back = await self._write_and_verify(spec, value, encoded)
        except WriteError:
            self.stats.write_failures += 1
            raise
        if not _read_back_matches(spec, value, read_back):
            self.stats.write_failures += 1
            self.stats.count(FailureKind.MISMATCH)
            raise WriteError(f"{self._label}: wrote {point}={value} but it reads back {read_back}")
        return read_back

    def _writable_point(self, name: str, value: float) -> RegisterPoint:
        try:
            spec = self.profile.point(name)
        except KeyError:
            raise WriteError(
                f"{self._label}: profile {self.profile.name} has no point {name!r}"
            ) from None
        if not spec.writable:
            raise WriteError(f"{self._label}: {name} is not writable ({spec.table} table)")
        if not math.isfinite(value):
            raise WriteError(f"{self._label}: {name} cannot be set to {value}")
        low = spec.min if spec.min is not None else -math.inf
        high = spec.max if spec.max is not None else math.inf
        if not low <= value <= high:
            raise WriteError(f"{self._label}: {name}={value} is outside its bounds {low}..{high}")
        return spec

    def _encode_for_write(self, spec: RegisterPoint, value: float) -> list[int]:
        try:
            return encode(spec, value)
        except ValueError as exc:
            raise WriteError(f"{self._label}: {exc}") from None

    async def _write_and_verify(
        self, spec: RegisterPoint, value: float, encoded: list[int]
    ) -> float:
        try:
            waiting_s = await self._connect()
        except Failure as failure:
            raise self._write_failed(spec, failure) from None
        if waiting_s is not None:
            raise WriteError(
                f"{self._label}: write of {spec.name} failed: not connected, "
                f"next attempt in {waiting_s:.3g} s"
            )
        try:
            read_back = await self._write_requests(spec, value, encoded)
        except Failure as failure:
            raise self._write_failed(spec, failure) from None
        self._last_good[spec.name] = (read_back, time.monotonic())
        return read_back

    async def _write_requests(self, spec: RegisterPoint, value: float, encoded: list[int]) -> float:
        """Unlock, write, relock, then read the same registers back; returns the value the
        device holds (the value asked for, for a momentary command)."""
        unlocks = self.profile.unlocks_for(spec.name)
        for unlock in unlocks:
            await self._write_unlock(unlock, unlock.value)
        if spec.bit is not None:
            await self._write_bit(spec, encoded[0])
        else:
            await self._write_raw(spec.table, spec.address, encoded, spec.function_for_write)
        for unlock in unlocks:
            if unlock.relock is not None:
                await self._write_unlock(unlock, unlock.relock)
        if spec.momentary:
            return value
        block = ReadBlock(spec.table, spec.address, spec.register_count, (spec,))
        response = await self.link.request(functools.partial(self._read, block))
        raw = _raw_values(block, response)
        if raw is None:
            raise Failure(FailureKind.GARBLED, "read-back reply of wrong size")
        self.last_raw[spec.name] = list(raw)
        try:
            return decode(spec, raw)
        except ValueError as exc:
            raise Failure(FailureKind.GARBLED, f"read-back: {exc}") from None

    async def _write_unlock(self, unlock: Unlock, value: int) -> None:
        """A write-enable write: the whole register, or (with `bit`) that bit alone, by a read
        of the register and a write of it with only that bit changed."""
        if unlock.bit is None:
            await self._write_raw(unlock.table, unlock.address, [value], 6)
            return
        block = ReadBlock(unlock.table, unlock.address, 1, ())
        response = await self.link.request(functools.partial(self._read, block))
        words = _raw_values(block, response)
        if words is None:
            raise Failure(FailureKind.GARBLED, "read before a write-enable: reply of wrong size")
        mask = 1 << unlock.bit
        word = (words[0] & ~mask & 0xFFFF) | (mask if value else 0)
        await self._write_raw(unlock.table, unlock.address, [word], 6)

    async def _write_bit(self, spec: RegisterPoint, bit_value: int) -> None:
        """One bit of a holding register: a mask write (function 22), or a read of the
        register and a write of it with only that bit changed. The device lock is held, so
        coolctl's own writes to other bits of the register cannot interleave."""
        assert spec.bit is not None
        unit = self.unit_id
        if spec.bit_write == "mask_write":
            mask = 1 << spec.bit
            await self.link.request(
                lambda client: client.mask_write_register(
                    address=spec.address,
                    and_mask=~mask & 0xFFFF,
                    or_mask=mask if bit_value else 0,
                    device_id=unit,
                )
            )
            return
        block = ReadBlock(spec.table, spec.address, 1, (spec,))
        response = await self.link.request(functools.partial(self._read, block))
        raw = _raw_values(block, response)
        if raw is None:
            raise Failure(FailureKind.GARBLED, "read before a bit write: reply of wrong size")
        word = set_bit(spec, raw[0], bit_value)
        await self._write_raw(spec.table, spec.address, [word], spec.function_for_write)

    async def _write_raw(self, table: Table, address: int, words: list[int], function: int) -> None:
        unit = self.unit_id

        def make(client: ModbusClient) -> Awaitable[ModbusPDU]:
            if table == "coil":
                return client.write_coil(address, bool(words[0]), device_id=unit)
            if function == 6:
                return client.write_register(address, words[0], device_id=unit)
            return client.write_registers(address, words, device_id=unit)

        await self.link.request(make)

    def _write_failed(self, spec: RegisterPoint, failure: Failure) -> WriteError:
        self.stats.count(failure.kind)
        self.stats.connected = self.link.connected
        self.stats.connect_attempts = self.link.connect_attempts
        log.debug("%s: write of %s failed: %s", self._label, spec.name, failure)
        error = WriteError(f"{self._label}: write of {spec.name} failed: {failure}")
        error.refused = failure.kind not in LINK_FAILURES
        return error

    # ----------------------------------------------------------------------------------------
    # Connection

    async def _connect(self) -> float | None:
        try:
            return await self.link.ensure_connected()
        finally:
            self.stats.connect_attempts = self.link.connect_attempts
            self.stats.connected = self.link.connected


def _read_request(
    client: ModbusClient, table: Table, start: int, count: int, unit: int
) -> Awaitable[ModbusPDU]:
    if table == "holding":
        return client.read_holding_registers(start, count=count, device_id=unit)
    if table == "input":
        return client.read_input_registers(start, count=count, device_id=unit)
    if table == "coil":
        return client.read_coils(start, count=count, device_id=unit)
    return client.read_discrete_inputs(start, count=count, device_id=unit)


def _raw_values(block: ReadBlock, response: ModbusPDU) -> list[int] | None:
    """The registers or bits of a read reply, or None when their number is wrong.

    Bit replies are padded to whole bytes, so they may carry more bits than asked for.
    """
    if block.table in BIT_TABLES:
        bits = [int(bit) for bit in response.bits]
        return bits[: block.count] if len(bits) >= block.count else None
    registers = list(response.registers)
    return registers if len(registers) == block.count else None


def _read_back_matches(point: RegisterPoint, asked: float, read_back: float) -> bool:
    """Whether the device holds what was asked for: within half a count for integers,
    within float32 precision for floats, exactly for bits."""
    if point.is_bit:
        return read_back == asked
    if point.data_type == "float32":
        tolerance = abs(asked - point.offset) * 2.0**-22 + 1e-12
    else:
        tolerance = abs(point.scale) / 2
    return abs(read_back - asked) <= tolerance * (1 + 1e-9) + 1e-12
