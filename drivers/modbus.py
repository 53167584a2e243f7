"""Modbus TCP client for one device, driven by its profile.

coolctl polls a device, turns each profile point into a `Reading`, and writes setpoints with a
read-back check. The device is a real box on a real network, so this module is mostly about
what happens when it misbehaves: every failure becomes a reading quality and a counter, never
an exception out of `poll()`, and never a log line per poll.

Choices, and why:
- One connection and one lock per device: gateways cap connections and answer parallel
  requests to one unit with exception 11 (STACK.md).
- coolctl's own timeout and reconnect, not pymodbus's: pymodbus retries, reconnects in a
  background task and closes the link after a few silent requests on its own schedule; here a
  poll must finish within a known time and the reconnect pace must be visible in the stats.
- A timeout closes the connection: a device that has stopped answering on a connection is
  often a half-open socket, and a fresh connection is the cheap cure.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.pdu import ModbusPDU

from coolctl.model import PointId, Quality, Reading

from .modbus_profile import (
    BIT_TABLES,
    ModbusProfile,
    ReadBlock,
    RegisterPoint,
    decode,
    encode,
    plan_reads,
)
from .poll_stats import PollChange, PollStats

log = logging.getLogger("coolctl.drivers.modbus")


class FailureKind(enum.StrEnum):
    """Why a request or connect failed: the keys of DeviceStats.errors_by_kind and the `kind`
    label of coolctl_device_poll_errors."""

    TIMEOUT = "timeout"  # the device did not answer within timeout_s
    CONNECTION = "connection"  # no TCP connection, or it dropped
    EXCEPTION = "exception"  # the device answered with a Modbus exception response
    GARBLED = "garbled"  # the answer makes no sense (length, NaN, undecodable frame)
    MISMATCH = "mismatch"  # a written value did not read back


_LINK_FAILURES: Final = frozenset({FailureKind.TIMEOUT, FailureKind.CONNECTION})

# pymodbus gets a longer timeout than coolctl's own, so that coolctl's always fires first and
# pymodbus never starts its own count-down to closing the connection.
_PYMODBUS_TIMEOUT_FACTOR: Final = 2.0

_EXCEPTION_NAMES: Final = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}

RequestFactory = Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]]


class WriteError(Exception):
    """A write that was refused, failed, or did not read back as written."""

    refused = False  # the device answered and said no (an exception code): retry with backoff


@dataclass(slots=True)
class DeviceStats(PollStats):
    """A Modbus device's counters: the shared poll counters, and its connection attempts."""

    connect_attempts: int = 0


class _Failure(Exception):
    """One failed request or connect, with its kind (a DeviceStats.errors_by_kind key)."""

    def __init__(self, kind: FailureKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(slots=True)
class _PollOutcome:
    readings: dict[str, Reading] = field(default_factory=dict)
    failures: list[_Failure] = field(default_factory=list)
    waiting_s: float | None = None  # set when no connect was tried because of the backoff

    @property
    def failed(self) -> bool:
        return bool(self.failures) or self.waiting_s is not None


class ModbusDevice:
    """One Modbus TCP device (one unit id behind one host:port), read through its profile."""

    def __init__(
        self,
        *,
        rack: str,
        device: str,
        host: str,
        port: int,
        unit_id: int,
        profile: ModbusProfile,
        timeout_s: float = 1.0,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 30.0,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s}")
        if not 0 <= reconnect_min_s <= reconnect_max_s:
            raise ValueError(
                f"need 0 <= reconnect_min_s <= reconnect_max_s, "
                f"not {reconnect_min_s} and {reconnect_max_s}"
            )
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit_id must be within 0..255, not {unit_id}")
        self.rack = rack
        self.device = device
        self.host = host
        self.port = port
        self.unit_id = unit_id
        self.profile = profile
        self.timeout_s = timeout_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.stats = DeviceStats()
        self.blocks: tuple[ReadBlock, ...] = tuple(plan_reads(profile))
        self._lock = asyncio.Lock()
        self._client: AsyncModbusTcpClient | None = None
        self._backoff_s = reconnect_min_s
        self._next_connect_at = -math.inf
        self._last_good: dict[str, tuple[float, float]] = {}  # point -> (value, ts)
        self._bytes_received = 0
        self._label = f"{rack}/{device} ({host}:{port} unit {unit_id})"
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
        """Drop the connection; a later poll or write connects again."""
        async with self._lock:
            self._disconnect()
            self._next_connect_at = -math.inf
            self._backoff_s = self.reconnect_min_s

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
            outcome.waiting_s = await self._ensure_connected()
        except _Failure as failure:
            outcome.failures.append(failure)
            return outcome
        if outcome.waiting_s is not None:
            return outcome
        for block in self.blocks:
            try:
                response = await self._request(functools.partial(self._read, block))
            except _Failure as failure:
                outcome.failures.append(failure)
                if failure.kind in _LINK_FAILURES:
                    self._lose_connection()
                    break  # the device is not answering: do not wait out every block
                self._device_answered()
                outcome.readings.update(self._bad(block, time.monotonic()))
                if not self._connected:  # an undecodable frame costs the connection
                    self._lose_connection()
                    break
                continue
            self._device_answered()
            self._decode_block(block, response, outcome)
        return outcome

    def _read(self, block: ReadBlock, client: AsyncModbusTcpClient) -> Awaitable[ModbusPDU]:
        unit = self.unit_id
        if block.table == "holding":
            return client.read_holding_registers(block.start, count=block.count, device_id=unit)
        if block.table == "input":
            return client.read_input_registers(block.start, count=block.count, device_id=unit)
        if block.table == "coil":
            return client.read_coils(block.start, count=block.count, device_id=unit)
        return client.read_discrete_inputs(block.start, count=block.count, device_id=unit)

    def _decode_block(self, block: ReadBlock, response: ModbusPDU, outcome: _PollOutcome) -> None:
        """Readings of one answered block; a value that cannot be decoded is bad on its own.

        A NaN from one float (a broken sensor, typically) spoils that point only; a reply of
        the wrong length spoils the whole block, since no offset in it can be trusted.
        """
        now = time.monotonic()
        raw = _raw_values(block, response)
        if raw is None:
            outcome.failures.append(
                _Failure(
                    FailureKind.GARBLED,
                    f"{block.table} {block.start}+{block.count}: reply of wrong size",
                )
            )
            outcome.readings.update(self._bad(block, now))
            return
        for point in block.points:
            offset = point.address - block.start
            try:
                value = decode(point, raw[offset : offset + point.register_count])
            except ValueError as exc:
                outcome.failures.append(_Failure(FailureKind.GARBLED, str(exc)))
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
        stats.connected = self._connected
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
        that differs from the value asked for by more than half a count.
        """
        self.stats.writes += 1
        try:
            spec = self._writable_point(point, value)
            words = self._encode_for_write(spec, value)
            async with self._lock:
                read_back = await self._write_and_verify(spec, words)
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

    async def _write_and_verify(self, spec: RegisterPoint, words: list[int]) -> float:
        try:
            waiting_s = await self._ensure_connected()
        except _Failure as failure:
            raise self._write_failed(spec, failure) from None
        if waiting_s is not None:
            raise WriteError(
                f"{self._label}: write of {spec.name} failed: not connected, "
                f"next attempt in {waiting_s:.3g} s"
            )
        try:
            read_back = await self._write_requests(spec, words)
        except _Failure as failure:
            if failure.kind in _LINK_FAILURES:
                self._lose_connection()
            else:
                self._device_answered()
            raise self._write_failed(spec, failure) from None
        self._device_answered()
        self._last_good[spec.name] = (read_back, time.monotonic())
        return read_back

    async def _write_requests(self, spec: RegisterPoint, words: list[int]) -> float:
        """Write, then read the same registers back; returns the value the device holds."""
        await self._request(functools.partial(self._write_request, spec, words))
        block = ReadBlock(spec.table, spec.address, spec.register_count, (spec,))
        response = await self._request(functools.partial(self._read, block))
        raw = _raw_values(block, response)
        if raw is None:
            raise _Failure(FailureKind.GARBLED, "read-back reply of wrong size")
        try:
            return decode(spec, raw)
        except ValueError as exc:
            raise _Failure(FailureKind.GARBLED, f"read-back: {exc}") from None

    def _write_failed(self, spec: RegisterPoint, failure: _Failure) -> WriteError:
        self.stats.count(failure.kind)
        self.stats.connected = self._connected
        log.debug("%s: write of %s failed: %s", self._label, spec.name, failure)
        error = WriteError(f"{self._label}: write of {spec.name} failed: {failure}")
        error.refused = failure.kind not in _LINK_FAILURES
        return error

    def _write_request(
        self, spec: RegisterPoint, words: list[int], client: AsyncModbusTcpClient
    ) -> Awaitable[ModbusPDU]:
        unit = self.unit_id
        if spec.table == "coil":
            return client.write_coil(spec.address, bool(words[0]), device_id=unit)
        if len(words) == 1:
            return client.write_register(spec.address, words[0], device_id=unit)
        return client.write_registers(spec.address, words, device_id=unit)

    # ----------------------------------------------------------------------------------------
    # Connection and requests

    @property
    def _connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def _ensure_connected(self) -> float | None:
        """Connect if needed and allowed; returns the seconds left to wait when the backoff
        forbids an attempt, None when connected. Raises _Failure when the attempt fails."""
        if self._connected:
            return None
        self._disconnect()  # a client whose connection dropped is not reused
        now = time.monotonic()
        if now < self._next_connect_at:
            return self._next_connect_at - now
        self.stats.connect_attempts += 1
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            name=f"{self.rack}/{self.device}",
            timeout=self.timeout_s * _PYMODBUS_TIMEOUT_FACTOR,
            retries=0,
            reconnect_delay=0,  # 0 turns pymodbus's own reconnect task off
            reconnect_delay_max=0,
            trace_packet=self._count_received,
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                connected = await client.connect()
        except TimeoutError:
            connected = False
        if not connected:
            client.close()
            self._schedule_reconnect()
            raise _Failure(FailureKind.CONNECTION, f"cannot connect to {self.host}:{self.port}")
        self._client = client
        self.stats.connected = True
        return None

    async def _request(self, make: RequestFactory) -> ModbusPDU:
        """One request with coolctl's timeout; any trouble becomes a _Failure of some kind."""
        client = self._client
        if client is None or not client.connected:
            raise _Failure(FailureKind.CONNECTION, "connection lost")
        received_before = self._bytes_received
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await make(client)
        except TimeoutError:
            if not client.connected and self._bytes_received > received_before:
                raise _Failure(
                    FailureKind.GARBLED, "undecodable reply (the connection was dropped)"
                ) from None
            if not client.connected:
                raise _Failure(
                    FailureKind.CONNECTION, "connection lost while waiting for a reply"
                ) from None
            raise _Failure(FailureKind.TIMEOUT, f"no reply within {self.timeout_s:g} s") from None
        except ConnectionException as exc:
            raise _Failure(FailureKind.CONNECTION, str(exc)) from None
        except ModbusException as exc:
            raise _Failure(FailureKind.GARBLED, str(exc)) from None
        except OSError as exc:
            raise _Failure(FailureKind.CONNECTION, str(exc)) from None
        if response.isError():
            code = response.exception_code
            name = _EXCEPTION_NAMES.get(code, "unknown")
            raise _Failure(FailureKind.EXCEPTION, f"exception response {code} ({name})")
        return response

    def _count_received(self, sending: bool, data: bytes) -> bytes:
        """pymodbus packet hook, counting bytes received. A frame pymodbus cannot decode never
        reaches coolctl: the error is raised inside pymodbus's protocol callback and asyncio
        closes the connection. The count tells such garbage from silence."""
        if not sending:
            self._bytes_received += len(data)
        return data

    def _device_answered(self) -> None:
        """A reply arrived, so the link works: the next reconnect starts from the short delay."""
        self._backoff_s = self.reconnect_min_s

    def _lose_connection(self) -> None:
        self._disconnect()
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        """Space connect attempts out, doubling from reconnect_min_s up to reconnect_max_s."""
        self._next_connect_at = time.monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self.reconnect_max_s)

    def _disconnect(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self.stats.connected = False


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
