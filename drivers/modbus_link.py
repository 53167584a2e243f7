"""One Modbus connection: a TCP socket (a device, or a gateway with many unit ids behind it) or
a serial port (an RS-485 bus of Modbus RTU devices), shared by every device on it.

A link owns the pymodbus client, the connect backoff and the one lock that keeps a single
request in flight: on RS-485 only one frame may be on the wire at a time, and gateways answer
parallel requests with exception 11 (STACK.md). Devices (`ModbusDevice`) hold a link and make
requests through it; several devices with different unit ids share one link.

Choices, and why:
- coolctl's own timeout and reconnect, not pymodbus's: pymodbus retries, reconnects in a
  background task and closes the link after a few silent requests on its own schedule; here a
  request must finish within a known time and the reconnect pace must be visible in the stats.
- On TCP a timeout closes the connection: a device that has stopped answering on a connection
  is often a half-open socket, and a fresh connection is the cheap cure. On a serial bus a
  timeout says only that one unit did not answer; the port stays open for the others.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.pdu import ModbusPDU

Parity = Literal["N", "E", "O"]
ModbusClient = AsyncModbusTcpClient | AsyncModbusSerialClient
RequestFactory = Callable[[ModbusClient], Awaitable[ModbusPDU]]


class FailureKind(enum.StrEnum):
    """Why a request or connect failed: the keys of DeviceStats.errors_by_kind and the `kind`
    label of coolctl_device_poll_errors."""

    TIMEOUT = "timeout"  # the device did not answer within timeout_s
    CONNECTION = "connection"  # no connection (TCP, or the serial port cannot be opened)
    EXCEPTION = "exception"  # the device answered with a Modbus exception response
    GARBLED = "garbled"  # the answer makes no sense (length, NaN, undecodable frame)
    MISMATCH = "mismatch"  # a written value did not read back


LINK_FAILURES: Final = frozenset({FailureKind.TIMEOUT, FailureKind.CONNECTION})

# pymodbus gets a longer timeout than coolctl's own, so that coolctl's always fires first and
# pymodbus never starts its own count-down to closing the connection.
_PYMODBUS_TIMEOUT_FACTOR: Final = 2.0

EXCEPTION_NAMES: Final = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


def exception_text(code: int) -> str:
    """A Modbus exception response in words: 'illegal data address (Modbus exception 2)'."""
    return f"{EXCEPTION_NAMES.get(code, 'unknown exception')} (Modbus exception {code})"


class Failure(Exception):
    """One failed request or connect, with its kind (a DeviceStats.errors_by_kind key)."""

    def __init__(self, kind: FailureKind, detail: str, code: int | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.code = code  # the Modbus exception code of an EXCEPTION


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """An RS-485 bus as the serial port sees it. 19,200 baud 8E1 is the Modbus RTU default;
    many devices ship 8N1 (and then the standard asks for 2 stop bits, which few follow)."""

    port: str
    baudrate: int = 19200
    parity: Parity = "E"
    stopbits: int = 1
    bytesize: int = 8

    def __post_init__(self) -> None:
        if self.baudrate <= 0:
            raise ValueError(f"baud rate must be positive, not {self.baudrate}")
        if self.parity not in ("N", "E", "O"):
            raise ValueError(f"parity must be N, E or O, not {self.parity!r}")
        if self.stopbits not in (1, 2):
            raise ValueError(f"stop bits must be 1 or 2, not {self.stopbits}")
        if self.bytesize not in (7, 8):
            raise ValueError(f"byte size must be 7 or 8, not {self.bytesize}")

    @property
    def bits_per_character(self) -> int:
        """Start bit, data bits, parity bit and stop bits of one character on the wire."""
        return 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits

    def wire_time_s(self, frame_bytes: int) -> float:
        """How long `frame_bytes` characters take on the wire, plus the 3.5-character silence
        that ends an RTU frame (fixed at 1.75 ms above 19,200 baud, as the standard says)."""
        character_s = self.bits_per_character / self.baudrate
        gap_s = 3.5 * character_s if self.baudrate <= 19200 else 0.00175
        return frame_bytes * character_s + gap_s


class ModbusLink:
    """One connection and the requests on it, one at a time; shared by the devices on it."""

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int = 502,
        serial: SerialSettings | None = None,
        timeout_s: float = 1.0,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 30.0,
    ) -> None:
        if (host is None) == (serial is None):
            raise ValueError("a Modbus link is either TCP (host) or serial (serial), not both")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s}")
        if not 0 <= reconnect_min_s <= reconnect_max_s:
            raise ValueError(
                f"need 0 <= reconnect_min_s <= reconnect_max_s, "
                f"not {reconnect_min_s} and {reconnect_max_s}"
            )
        self.host = host
        self.port = port
        self.serial = serial
        self.timeout_s = timeout_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.connect_attempts = 0
        self.requests = 0
        self.label = serial.port if serial is not None else _host_port(host or "", port)
        self._lock = asyncio.Lock()
        self._client: ModbusClient | None = None
        self._backoff_s = reconnect_min_s
        self._next_connect_at = -math.inf
        self._bytes_received = 0

    @property
    def is_serial(self) -> bool:
        return self.serial is not None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def close(self) -> None:
        """Drop the connection; the next request connects again, without waiting."""
        self._disconnect()
        self._next_connect_at = -math.inf
        self._backoff_s = self.reconnect_min_s

    async def ensure_connected(self) -> float | None:
        """Connect if needed and allowed; returns the seconds left to wait when the backoff
        forbids an attempt, None when connected. Raises Failure when the attempt fails."""
        if self.connected:
            return None
        async with self._lock:  # devices sharing the link connect it once
            return await self._connect()

    async def _connect(self) -> float | None:
        if self.connected:
            return None
        self._disconnect()  # a client whose connection dropped is not reused
        now = time.monotonic()
        if now < self._next_connect_at:
            return self._next_connect_at - now
        self.connect_attempts += 1
        client = self._new_client()
        try:
            async with asyncio.timeout(self.timeout_s):
                connected = await client.connect()
        except TimeoutError:
            connected = False
        if not connected:
            client.close()
            self._schedule_reconnect()
            raise Failure(FailureKind.CONNECTION, f"cannot connect to {self.label}")
        self._client = client
        return None

    def _new_client(self) -> ModbusClient:
        common = {
            "name": f"coolctl {self.label}",
            "timeout": self.timeout_s * _PYMODBUS_TIMEOUT_FACTOR,
            "retries": 0,
            "reconnect_delay": 0,  # 0 turns pymodbus's own reconnect task off
            "reconnect_delay_max": 0,
            "trace_packet": self._count_received,
        }
        if self.serial is not None:
            return AsyncModbusSerialClient(
                self.serial.port,
                baudrate=self.serial.baudrate,
                parity=self.serial.parity,
                stopbits=self.serial.stopbits,
                bytesize=self.serial.bytesize,
                **common,  # type: ignore[arg-type]
            )
        assert self.host is not None
        return AsyncModbusTcpClient(self.host, port=self.port, **common)  # type: ignore[arg-type]

    async def request(self, make: RequestFactory) -> ModbusPDU:
        """One request with coolctl's timeout, alone on the link; trouble becomes a Failure.

        A link failure (timeout or connection) on TCP drops the connection; on a serial bus a
        timeout leaves the port open for the other units.
        """
        async with self._lock:
            try:
                return await self._request(make)
            except Failure as failure:
                if failure.kind is FailureKind.CONNECTION or (
                    failure.kind is FailureKind.TIMEOUT and not self.is_serial
                ):
                    self.lose_connection()
                elif failure.kind is FailureKind.GARBLED and not self.connected:
                    self.lose_connection()  # an undecodable frame cost the connection
                else:
                    self.answered()
                raise

    async def _request(self, make: RequestFactory) -> ModbusPDU:
        client = self._client
        if client is None or not client.connected:
            raise Failure(FailureKind.CONNECTION, "connection lost")
        self.requests += 1
        received_before = self._bytes_received
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await make(client)
        except TimeoutError:
            if not client.connected and self._bytes_received > received_before:
                raise Failure(
                    FailureKind.GARBLED, "undecodable reply (the connection was dropped)"
                ) from None
            if not client.connected:
                raise Failure(
                    FailureKind.CONNECTION, "connection lost while waiting for a reply"
                ) from None
            raise Failure(FailureKind.TIMEOUT, f"no reply within {self.timeout_s:g} s") from None
        except ConnectionException as exc:
            raise Failure(FailureKind.CONNECTION, str(exc)) from None
        except ModbusException as exc:
            raise Failure(FailureKind.GARBLED, str(exc)) from None
        except OSError as exc:
            raise Failure(FailureKind.CONNECTION, str(exc)) from None
        if response.isError():
            code = int(response.exception_code)
            raise Failure(FailureKind.EXCEPTION, exception_text(code), code)
        self.answered()
        return response

    def _count_received(self, sending: bool, data: bytes) -> bytes:
        """pymodbus packet hook, counting bytes received. A frame pymodbus cannot decode never
        reaches coolctl: the error is raised inside pymodbus's protocol callback and asyncio
        closes the connection. The count tells such garbage from silence."""
        if not sending:
            self._bytes_received += len(data)
        return data

    def answered(self) -> None:
        """A reply arrived, so the link works: the next reconnect starts from the short delay."""
        self._backoff_s = self.reconnect_min_s

    def lose_connection(self) -> None:
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


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class LinkPool:
    """The links of one daemon: devices at the same TCP address or on the same serial port
    share one link (one connection, one request in flight)."""

    def __init__(self) -> None:
        self._links: dict[tuple[str, str, int], ModbusLink] = {}

    def tcp(self, host: str, port: int, *, timeout_s: float) -> ModbusLink:
        key = ("tcp", host, port)
        link = self._links.get(key)
        if link is None:
            link = self._links[key] = ModbusLink(host=host, port=port, timeout_s=timeout_s)
        return link

    def serial(self, settings: SerialSettings, *, timeout_s: float) -> ModbusLink:
        """The link of a serial port; a second device on it must use the same settings."""
        key = ("serial", settings.port, 0)
        link = self._links.get(key)
        if link is None:
            link = self._links[key] = ModbusLink(serial=settings, timeout_s=timeout_s)
        elif link.serial != settings:
            raise ValueError(
                f"serial port {settings.port} is already used with other settings"
                f" ({link.serial} vs {settings})"
            )
        return link

    def close(self) -> None:
        for link in self._links.values():
            link.close()
