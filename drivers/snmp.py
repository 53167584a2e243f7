"""SNMP client for one rack PDU, driven by its profile (pysnmp 7, asyncio).

coolctl discovers the rows of the profile's tables by walking them (outlets, branch circuits,
phases), then reads every point with GETs of up to `max_oids_per_request` OIDs each. As with
the Modbus and Redfish drivers, device trouble never escapes `poll()` as an exception: a
timeout makes the last values stale, a missing OID, a value of the wrong type, a value the
profile calls invalid or one outside its bounds reads `bad`, each counted by kind and logged
once per change between working and failing.

Choices, and why:
- v2c and v3 only (GETBULK for the walks); v1 has no bulk and no security worth the name.
- Credentials come in as values: the daemon reads them from files or systemd credentials
  (`coolctl/daemon/devices.py`); nothing here reads a config.
- One request at a time per device: PDU agents are small and drop requests under load.
- The rows are walked again when a cell goes missing (an outlet removed, a PDU replaced) and
  every `rediscover_s`, so a PDU swapped for a bigger model is read without a restart.
- No MIB lookups: numeric OIDs only, `lookupMib=False`, so no MIB module is ever compiled or
  loaded at run time; the profile is the MIB knowledge.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from pyasn1.type import univ
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    bulk_walk_cmd,
    get_cmd,
)
from pysnmp.hlapi.v3arch.asyncio import auth as snmp_auth
from pysnmp.proto import errind, rfc1902, rfc1905

from coolctl.model import PointId, Quality, Reading, indexed_point

from .poll_stats import PollChange, PollStats
from .snmp_profile import Column, Conversion, Oid, SnmpProfile, Table, format_oid

log = logging.getLogger("coolctl.drivers.snmp")

AuthProtocol = Literal["sha", "sha224", "sha256", "sha384", "sha512"]
PrivProtocol = Literal["aes", "aes192", "aes256"]
AUTH_PROTOCOLS: Final[dict[str, Any]] = {
    "sha": snmp_auth.USM_AUTH_HMAC96_SHA,
    "sha224": snmp_auth.USM_AUTH_HMAC128_SHA224,
    "sha256": snmp_auth.USM_AUTH_HMAC192_SHA256,
    "sha384": snmp_auth.USM_AUTH_HMAC256_SHA384,
    "sha512": snmp_auth.USM_AUTH_HMAC384_SHA512,
}
PRIV_PROTOCOLS: Final[dict[str, Any]] = {
    "aes": snmp_auth.USM_PRIV_CFB128_AES,
    "aes192": snmp_auth.USM_PRIV_CFB192_AES,
    "aes256": snmp_auth.USM_PRIV_CFB256_AES,
}
_MAX_REPETITIONS: Final = 25
_MAX_ROWS_PER_TABLE: Final = 1024  # an agent that never ends its table is not walked forever
_NO_VALUE: Final = (rfc1905.NoSuchObject, rfc1905.NoSuchInstance, rfc1905.EndOfMibView)


class FailureKind(enum.StrEnum):
    """Why a request or a value failed: the keys of PollStats.errors_by_kind."""

    TIMEOUT = "timeout"  # no answer within timeout_s (after the retries)
    ERROR_STATUS = "error_status"  # the agent answered with an SNMP error status
    MISSING = "missing"  # noSuchObject / noSuchInstance / endOfMibView for a profile OID
    WRONG_TYPE = "wrong_type"  # a string, OID or address where a number belongs
    INVALID = "invalid"  # a value the profile marks "not supported", or outside its bounds
    MISMATCH = "mismatch"  # an answer for an OID that was not asked for
    AUTH = "auth"  # v3: unknown user, wrong authentication or privacy key (a v2c agent
    # answers a wrong community with silence: that is a timeout)
    PROTOCOL = "protocol"  # authentication, decryption or any other request failure


@dataclass(frozen=True, slots=True)
class V2cCredentials:
    community: str

    def __repr__(self) -> str:  # the community is a password: never in a log line
        return "V2cCredentials(community=***)"


@dataclass(frozen=True, slots=True)
class V3Credentials:
    """SNMPv3 authPriv: a user with an authentication and a privacy key."""

    user: str
    auth_key: str
    priv_key: str
    auth_protocol: AuthProtocol = "sha256"
    priv_protocol: PrivProtocol = "aes"

    def __repr__(self) -> str:
        return f"V3Credentials(user={self.user!r}, {self.auth_protocol}/{self.priv_protocol})"


Credentials = V2cCredentials | V3Credentials


class WriteError(Exception):
    """SNMP PDUs are read-only to coolctl."""


@dataclass(frozen=True, slots=True)
class Cell:
    """One OID to read and the point it feeds (`outlet_power.12` for a table row)."""

    point: str
    oid: Oid
    conversion: Conversion
    digits: int | None = None  # read from the device at discovery, when the profile says so


@dataclass(slots=True)
class SnmpStats(PollStats):
    """An SNMP device's counters: the shared poll counters and its discoveries."""

    discoveries: int = 0
    rows: int = 0


@dataclass(slots=True)
class _Outcome:
    readings: dict[str, Reading] = field(default_factory=dict)
    failures: list[tuple[FailureKind, str]] = field(default_factory=list)
    rediscover: bool = False


class _RequestFailed(Exception):
    def __init__(self, kind: FailureKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def auth_data(credentials: Credentials) -> CommunityData | UsmUserData:
    if isinstance(credentials, V2cCredentials):
        return CommunityData(credentials.community, mpModel=1)
    return UsmUserData(
        credentials.user,
        authKey=credentials.auth_key,
        privKey=credentials.priv_key,
        authProtocol=AUTH_PROTOCOLS[credentials.auth_protocol],
        privProtocol=PRIV_PROTOCOLS[credentials.priv_protocol],
    )


class SnmpDevice:
    """One SNMP agent (a rack PDU) read through its profile."""

    def __init__(
        self,
        *,
        rack: str,
        device: str,
        host: str,
        port: int,
        profile: SnmpProfile,
        credentials: Credentials,
        timeout_s: float = 1.0,
        retries: int = 0,
        rediscover_s: float = 300.0,
        rediscover_min_s: float = 10.0,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s}")
        self.rack = rack
        self.device = device
        self.host = host
        self.port = port
        self.profile = profile
        self.timeout_s = timeout_s
        self.retries = retries
        self.rediscover_s = rediscover_s
        # a vanished row triggers a walk, but not more often than this: an agent whose walks
        # list an OID its GETs deny would otherwise be walked on every poll
        self.rediscover_min_s = rediscover_min_s
        self.stats = SnmpStats()
        self.labels: dict[str, str] = {}  # point (with index) -> the row's name on the PDU
        self._auth = auth_data(credentials)
        self._engine: SnmpEngine | None = None
        self._target: UdpTransportTarget | None = None
        self._cells: tuple[Cell, ...] = ()
        self._expected: tuple[str, ...] = tuple(p.name for p in profile.points)
        self._discovered_at = -math.inf  # when the tables were last walked
        self._next_discovery_at = -math.inf
        self._lock = asyncio.Lock()
        self._last_good: dict[str, tuple[float, float]] = {}
        self._label = f"{rack}/{device} ({host}:{port} snmp)"
        self._log_extra = {"rack": rack, "device": device}

    @property
    def cells(self) -> tuple[Cell, ...]:
        return self._cells

    async def close(self) -> None:
        async with self._lock:
            if self._engine is not None:
                self._engine.close_dispatcher()
            self._engine = None
            self._target = None

    async def write(self, point: str, value: float) -> float:
        raise WriteError(f"{self._label}: SNMP points are read-only ({point})")

    # ----------------------------------------------------------------------------------------
    # Polling

    async def poll(self) -> list[Reading]:
        """Read every point once (discovering the tables first when due)."""
        async with self._lock:
            started = time.monotonic()
            outcome = _Outcome()
            try:
                await self._connect()
                if started >= self._next_discovery_at:
                    await self._discover()
                await self._read_cells(outcome)
            except _RequestFailed as failure:
                outcome.failures.append((failure.kind, failure.detail))
            if outcome.rediscover:  # walk again soon
                soon = self._discovered_at + self.rediscover_min_s
                self._next_discovery_at = min(self._next_discovery_at, soon)
            done = time.monotonic()
            readings = [
                outcome.readings.get(name) or self._unread(name, done) for name in self._expected
            ]
            self._account(outcome, started, done)
            return readings

    async def _connect(self) -> None:
        if self._engine is None:
            self._engine = SnmpEngine()
        if self._target is None:
            try:
                self._target = await UdpTransportTarget.create(
                    (self.host, self.port), timeout=self.timeout_s, retries=self.retries
                )
            except Exception as exc:  # name resolution: pysnmp raises its own error types
                detail = f"cannot resolve {self.host}: {exc}"
                raise _RequestFailed(FailureKind.PROTOCOL, detail) from None

    async def _discover(self) -> None:
        """Walk every table for its rows, then read digits columns; build the cells."""
        cells = [Cell(p.name, p.oid, p.conversion) for p in self.profile.points]
        labels: dict[str, str] = {}
        rows_total = 0
        walked: dict[Oid, dict[Oid, Any]] = {}  # columns sharing a base are walked once
        for table in self.profile.tables:
            names = await self._walk(table.label_oid) if table.label_oid else {}
            rows: set[Oid] = set()
            for column in table.columns:
                for row in await self._column_rows(table, column, walked):
                    rows.add(row)
                    point = indexed_point(column.name, format_oid(row))
                    oid = column.oid + table.index_prefix + row + column.index_suffix
                    cells.append(Cell(point, oid, column.conversion))
                    if table.label_oid is not None:
                        label = names.get(table.label_oid + table.label_prefix + row)
                        if isinstance(label, univ.OctetString):
                            labels[point] = _text(label)
            rows_total += len(rows)
        cells = await self._with_digits(cells)
        self._cells = tuple(cells)
        self.labels = labels
        self._expected = tuple(cell.point for cell in cells)
        self._discovered_at = time.monotonic()
        self._next_discovery_at = self._discovered_at + self.rediscover_s
        self.stats.discoveries += 1
        self.stats.rows = rows_total

    async def _column_rows(
        self, table: Table, column: Column, walked: dict[Oid, dict[Oid, Any]]
    ) -> list[Oid]:
        """The rows the device has in one column, in order: a cell is only read where the
        walk found one (a row may lack a column: an unmetered outlet has no power)."""
        base = column.oid + table.index_prefix
        if base not in walked:
            walked[base] = await self._walk(base)
        suffix = column.index_suffix
        rows = []
        for oid in walked[base]:
            rest = oid[len(base) :]
            if suffix:
                if len(rest) <= len(suffix) or rest[-len(suffix) :] != suffix:
                    continue
                rest = rest[: -len(suffix)]
            if rest:
                rows.append(rest)
        return sorted(rows)

    async def _walk(self, base: Oid) -> dict[Oid, Any]:
        """Every OID under `base` and its value (GETBULK), bounded in rows."""
        assert self._engine is not None and self._target is not None
        found: dict[Oid, Any] = {}
        walk = bulk_walk_cmd(
            self._engine,
            self._auth,
            self._target,
            ContextData(),
            0,
            _MAX_REPETITIONS,
            ObjectType(ObjectIdentity(format_oid(base))),
            lexicographicMode=False,
            lookupMib=False,
        )
        async for error_indication, error_status, _index, var_binds in walk:
            if error_indication:
                raise _failure_of(error_indication)
            if error_status:
                raise _RequestFailed(
                    FailureKind.ERROR_STATUS,
                    f"walk {format_oid(base)}: {error_status.prettyPrint()}",
                )
            for name, value in var_binds:
                oid = tuple(name)
                if oid[: len(base)] != base or isinstance(value, _NO_VALUE):
                    continue
                found[oid] = value
            if len(found) > _MAX_ROWS_PER_TABLE:
                break
        return found

    async def _with_digits(self, cells: list[Cell]) -> list[Cell]:
        """Cells whose decimal digits the device states (PDU2-MIB) get them read once."""
        wanted: dict[Cell, Oid] = {}
        tables = {c.name: t for t in self.profile.tables for c in t.columns}
        for cell in cells:
            digits_oid = cell.conversion.digits_oid
            if digits_oid is None:
                continue
            base = cell.point.split(".", 1)[0]
            table = tables.get(base)
            if table is None:  # a scalar: the profile names the whole OID
                wanted[cell] = digits_oid
            else:
                column = next(c for c in table.columns if c.name == base)
                row = cell.oid[len(column.oid) + len(table.index_prefix) :]
                if column.index_suffix:
                    row = row[: -len(column.index_suffix)]
                wanted[cell] = digits_oid + table.digits_prefix + row + column.index_suffix
        if not wanted:
            return cells
        values = await self._get(list(wanted.values()))
        out = []
        for cell in cells:
            oid = wanted.get(cell)
            value = values.get(oid) if oid is not None else None
            if oid is not None and value is not None and _is_number(value):
                digits = int(value)
                out.append(
                    Cell(
                        cell.point, cell.oid, cell.conversion, digits if 0 <= digits <= 9 else None
                    )
                )
            else:
                out.append(cell)
        return out

    async def _read_cells(self, outcome: _Outcome) -> None:
        limit = self.profile.max_oids_per_request
        cells = self._cells
        for start in range(0, len(cells), limit):
            chunk = cells[start : start + limit]
            values = await self._get([cell.oid for cell in chunk])
            now = time.monotonic()
            for cell in chunk:
                self._decode(cell, values.get(cell.oid, _ABSENT), now, outcome)

    async def _get(self, oids: Sequence[Oid]) -> dict[Oid, Any]:
        """One GET; the answers by OID. An answer for an OID not asked for is dropped."""
        assert self._engine is not None and self._target is not None
        try:
            error_indication, error_status, error_index, var_binds = await get_cmd(
                self._engine,
                self._auth,
                self._target,
                ContextData(),
                *(ObjectType(ObjectIdentity(format_oid(oid))) for oid in oids),
                lookupMib=False,
            )
        except Exception as exc:  # a malformed reply surfaces as pysnmp's own errors
            raise _RequestFailed(FailureKind.PROTOCOL, f"{type(exc).__name__}: {exc}") from None
        if error_indication:
            raise _failure_of(error_indication)
        if error_status:
            where = ""
            if error_index and 0 < int(error_index) <= len(oids):
                where = f" at {format_oid(oids[int(error_index) - 1])}"
            raise _RequestFailed(FailureKind.ERROR_STATUS, f"{error_status.prettyPrint()}{where}")
        asked = set(oids)
        answers: dict[Oid, Any] = {}
        for name, value in var_binds:
            oid = tuple(name)
            answers[oid] = value if oid in asked else _ABSENT
        if len(answers) != len(asked) or any(v is _ABSENT for v in answers.values()):
            # an agent that answers other OIDs than asked: none of its values can be placed
            raise _RequestFailed(
                FailureKind.MISMATCH,
                f"{len(var_binds)} answers for {len(oids)} OIDs, not the ones asked for",
            )
        return answers

    def _decode(self, cell: Cell, value: Any, now: float, outcome: _Outcome) -> None:
        kind, problem, number = _judge(cell, value)
        if kind is None and number is not None:
            self._last_good[cell.point] = (number, now)
            outcome.readings[cell.point] = self._reading(cell.point, number, now, Quality.GOOD)
            return
        assert kind is not None
        outcome.failures.append((kind, f"{cell.point} ({format_oid(cell.oid)}): {problem}"))
        if kind is FailureKind.MISSING and "." in cell.point:
            outcome.rediscover = True  # a row went away: walk the table again
        outcome.readings[cell.point] = self._reading(cell.point, None, now, Quality.BAD)

    def _unread(self, name: str, now: float) -> Reading:
        last = self._last_good.get(name)
        if last is None:
            return self._reading(name, None, now, Quality.MISSING)
        value, ts = last
        return self._reading(name, value, ts, Quality.STALE)

    def _reading(self, name: str, value: float | None, ts: float, quality: Quality) -> Reading:
        return Reading(PointId(self.rack, self.device, name), value, ts, quality)

    def _account(self, outcome: _Outcome, started: float, done: float) -> None:
        stats = self.stats
        for kind, _ in outcome.failures:
            stats.count(kind)
        if any(kind is FailureKind.TIMEOUT for kind, _ in outcome.failures):
            self._target = None  # resolve and open again: the PDU may have a new address
        stats.connected = self._target is not None and not any(
            kind is FailureKind.TIMEOUT for kind, _ in outcome.failures
        )
        run = stats.consecutive_failures
        change = stats.record_poll(bool(outcome.failures), started, done)
        if change is PollChange.STARTED_FAILING:
            kind, detail = outcome.failures[0]
            log.warning(
                "%s: snmp polling failing: %s (%s); logging again on recovery",
                self._label,
                kind,
                detail,
                extra=self._log_extra,
            )
        elif change is PollChange.RECOVERED:
            log.info(
                "%s: snmp polling recovered after %d failures",
                self._label,
                run,
                extra=self._log_extra,
            )


_ABSENT: Final = object()


_AUTH_ERRORS: Final = (
    errind.WrongDigest,
    errind.UnknownUserName,
    errind.DecryptionError,
    errind.AuthenticationError,
    errind.AuthenticationFailure,
    errind.UnknownSecurityName,
    errind.UnsupportedSecurityLevel,
)


def _failure_of(error_indication: object) -> _RequestFailed:
    text = str(error_indication)
    if isinstance(error_indication, errind.RequestTimedOut):
        return _RequestFailed(FailureKind.TIMEOUT, text)
    if isinstance(error_indication, _AUTH_ERRORS):
        return _RequestFailed(FailureKind.AUTH, text)
    return _RequestFailed(FailureKind.PROTOCOL, text)


def _is_number(value: object) -> bool:
    return isinstance(value, univ.Integer) and not isinstance(value, _NO_VALUE)


def _judge(cell: Cell, value: Any) -> tuple[FailureKind | None, str, float | None]:
    """(failure kind or None, what is wrong, the engineering value) of one answered cell."""
    if value is _ABSENT or isinstance(value, _NO_VALUE):
        name = type(value).__name__ if value is not _ABSENT else "no answer"
        return FailureKind.MISSING, name, None
    if not isinstance(value, univ.Integer) or isinstance(value, rfc1902.TimeTicks):
        return FailureKind.WRONG_TYPE, f"{type(value).__name__} is not a number", None
    raw = int(value)
    conversion = cell.conversion
    if raw in conversion.invalid:
        return FailureKind.INVALID, f"raw {raw} means 'not available'", None
    number = round(conversion.convert(raw, cell.digits), 9)
    low = conversion.minimum if conversion.minimum is not None else -math.inf
    high = conversion.maximum if conversion.maximum is not None else math.inf
    if not low <= number <= high or not math.isfinite(number):
        return FailureKind.INVALID, f"{number:g} is outside {low:g}..{high:g}", None
    if number < 0 and conversion.unit.value in _NON_NEGATIVE:
        return FailureKind.INVALID, f"{number:g} {conversion.unit.value} cannot be negative", None
    return None, "", number


_NON_NEGATIVE: Final = frozenset({"watts", "joules", "amperes", "volts", "ratio", "boolean"})


def _text(value: univ.OctetString) -> str:
    """A row's name as the PDU gives it, fit for a log line or JSON: printable, 64 at most."""
    text = bytes(value).decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text).strip()[:64]
