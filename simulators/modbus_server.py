"""Modbus front-end of a simulated device: serves a register map from a point store, over TCP
(one device per port) or over a serial line as Modbus RTU (several unit ids on one bus).

The register map is a device profile (TOML, as in `drivers/profiles/`), read here with our own
small parser and encoder: the simulator must not share code with `coolctl.drivers`, or a bug in
the driver's decoding would be mirrored here and go unnoticed. Every profile key is implemented
here again: bits of status words, inverted bools, "no sensor" sentinels (served while the store
has no value, NaN), enumerated states, byte and word swaps, momentary commands, and write-enable
registers (a write to a locked point is refused with "illegal function" until the unlock value
is written; without a `relock` value the lock closes again after one write; an unlock with `bit`
is one bit of a register that may hold command bits too), and fixed-point integers with
`fraction_bits` N (counts of 2^-N).

pymodbus supplies the TCP listener and the PDU framing. The register bank is ours (it stands
where pymodbus puts its `SimCore`), so that writes reach the store, out-of-range values and
injected faults become Modbus exception responses, and no deprecated datastore is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import math
import socket
import struct
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from coolctl.model import POINT_STATES

__all__ = [
    "MappedPoint",
    "ModbusDeviceServer",
    "ModbusRtuBus",
    "ModbusTcpGateway",
    "PointStore",
    "RegisterMap",
    "Unlock",
    "decode_words",
    "encode_value",
    "load_device_map",
    "load_register_map",
    "resolve_register_map",
]

LOG = logging.getLogger("coolctl.simulators.modbus")

TABLES = ("holding", "input", "coil", "discrete")
BIT_TABLES = frozenset({"coil", "discrete"})
WRITABLE_TABLES = frozenset({"holding", "coil"})
WORD_ORDERS = ("big", "little")

# words per value; bool is one bit in a coil/discrete table
_WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "bool": 1}
_INT_RANGE = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}
_FLOAT32_MAX: float = struct.unpack(">f", b"\x7f\x7f\xff\xff")[0]

# Modbus function code -> table it addresses
_TABLE_OF_FC = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 4: "input"}
_TABLE_OF_FC.update(dict.fromkeys((3, 6, 16, 22, 23), "holding"))
# function codes whose datastore read is a client's read (the others only echo a write)
_READ_FCS = frozenset({1, 2, 3, 4, 23})


class PointStore(Protocol):
    """What a simulated device serves: the plant's values, and where client writes go."""

    def read_points(self) -> Mapping[str, float]:
        """Canonical point name -> engineering value, in the unit of coolctl.model."""
        ...

    def write_point(self, name: str, value: float) -> None:
        """Apply a client's write; raise ValueError to reject it."""
        ...


# --------------------------------------------------------------------------- register map


@dataclass(frozen=True, slots=True)
class MappedPoint:
    """One point of a register map: where it lives and how raw counts become a value."""

    name: str
    table: str
    address: int
    type: str
    scale: float = 1.0
    offset: float = 0.0
    word_order: str = "big"
    writable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    bit: int | None = None  # a bool held in this bit of a 16-bit register
    invert: bool = False  # the bool reads 0 when true
    missing: tuple[int, ...] = ()  # raw values meaning "no sensor"; the first is served
    states: tuple[tuple[int, int], ...] = ()  # (raw code, canonical code)
    byte_swap: bool = False  # bytes swapped inside each register
    momentary: bool = False  # a command the device clears itself once carried out
    fraction_bits: int = 0  # fixed point: raw counts of 2^-fraction_bits

    @property
    def addresses(self) -> range:
        """The protocol addresses (registers or bits) the point occupies."""
        width = 1 if self.bit is not None else _WIDTH[self.type]
        return range(self.address, self.address + width)

    def raw_of_code(self, code: int) -> int | None:
        """The device's raw code of a canonical state code (the code itself without states)."""
        if not self.states:
            return code
        return next((raw for raw, canonical in self.states if canonical == code), None)

    def code_of_raw(self, raw: int) -> int | None:
        if not self.states:
            return raw
        return next((canonical for r, canonical in self.states if r == raw), None)

    def accepts(self, value: float) -> bool:
        """Whether a written engineering value lies within the point's min/max."""
        if math.isnan(value) or math.isinf(value):
            return False
        low_ok = self.minimum is None or value >= self.minimum or _close(value, self.minimum)
        high_ok = self.maximum is None or value <= self.maximum or _close(value, self.maximum)
        return low_ok and high_ok


def _close(a: float, b: float) -> bool:
    """Tolerance for bounds, so that raw*scale float noise does not reject an exact bound."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def resolve_register_map(source: str | Path) -> Path:
    """A path as given, or a shipped profile by name ("sim-cdu") from coolctl.drivers.

    `find_spec` locates the drivers folder without executing the package, so the simulator
    does not depend on driver code, only on the profile data shipped beside it.
    """
    path = Path(source)
    if isinstance(source, Path) or path.suffix == ".toml" or len(path.parts) > 1:
        return path
    spec = importlib.util.find_spec("coolctl.drivers")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        candidate = Path(folder) / "profiles" / f"{source}.toml"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no register map named {source!r} in coolctl.drivers profiles")


@dataclass(frozen=True, slots=True)
class Unlock:
    """A write-enable register: writes to `points` are refused unless it holds `value`."""

    table: str
    address: int
    value: int
    relock: int | None
    points: frozenset[str]
    bit: int | None = None  # the write-enable is this bit of the register (value 0 or 1)

    def is_open(self, word: int) -> bool:
        """Whether the register's word lets locked points be written."""
        if self.bit is None:
            return word == self.value
        return (word >> self.bit) & 1 == self.value

    def closed(self, word: int) -> int:
        """The word with the lock closed again (after one write, without a relock value)."""
        if self.bit is None:
            return 0 if self.value else 1
        mask = 1 << self.bit
        return (word & ~mask) | (0 if self.value else mask)


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """A register map as the simulated device serves it."""

    name: str
    points: list[MappedPoint]
    unlocks: tuple[Unlock, ...] = ()


def load_register_map(source: str | Path) -> tuple[str, list[MappedPoint]]:
    """Read a register map (profile TOML): its name and its points, checked for consistency."""
    register_map = load_device_map(source)
    return register_map.name, register_map.points


def load_device_map(source: str | Path) -> RegisterMap:
    """Read a register map (profile TOML) with its write-enable registers."""
    path = resolve_register_map(source)
    with path.open("rb") as handle:
        document = tomllib.load(handle)
    profile = document.get("profile", {})
    default_order = str(profile.get("word_order", "big"))
    default_swap = bool(profile.get("byte_swap", False))
    try:
        points = [
            _parse_point(entry, default_order, default_swap) for entry in document.get("point", [])
        ]
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not points:
        raise ValueError(f"{path}: the register map lists no [[point]]")
    _check_layout(points, path)
    writable = frozenset(point.name for point in points if point.writable)
    unlocks = tuple(
        Unlock(
            table=str(entry["table"]),
            address=int(entry["address"]),
            value=int(entry["value"]),
            relock=None if entry.get("relock") is None else int(entry["relock"]),
            points=frozenset(entry.get("points", writable)),
            bit=None if entry.get("bit") is None else int(entry["bit"]),
        )
        for entry in document.get("unlock", [])
    )
    return RegisterMap(str(profile.get("name", path.stem)), points, unlocks)


def _parse_point(entry: Mapping[str, Any], default_order: str, default_swap: bool) -> MappedPoint:
    """One [[point]] table -> MappedPoint, rejecting what the server could not serve."""
    name = str(entry["name"])
    table, kind = str(entry["table"]), str(entry["type"])
    order = str(entry.get("word_order", default_order))
    address = int(entry["address"])
    writable = bool(entry.get("writable", False))
    bit = None if entry.get("bit") is None else int(entry["bit"])
    problems = [
        f"table {table!r} not one of {TABLES}" if table not in TABLES else "",
        f"type {kind!r} not one of {tuple(_WIDTH)}" if kind not in _WIDTH else "",
        f"word_order {order!r} not big|little" if order not in WORD_ORDERS else "",
        "address outside 0..65535" if not 0 <= address <= 65536 - _WIDTH.get(kind, 1) else "",
        "writable only makes sense in holding or coil"
        if writable and table not in WRITABLE_TABLES
        else "",
        "scale must not be 0" if float(entry.get("scale", 1.0)) == 0.0 else "",
    ]
    fraction_bits = int(entry.get("fraction_bits", 0))
    if "fraction_bits" in entry and (
        kind not in _INT_RANGE or "states" in entry or not 0 <= fraction_bits < 16 * _WIDTH[kind]
    ):
        problems.append("fraction_bits needs an integer type without states, 0..bits-1")
    if bit is not None:
        if table in BIT_TABLES or kind not in ("bool", "int16", "uint16") or not 0 <= bit <= 15:
            problems.append("bit needs a 16-bit holding/input register and 0..15")
        kind = "bool"
    elif table in TABLES and kind in _WIDTH and (kind == "bool") != (table in BIT_TABLES):
        problems.append("bool belongs in coil/discrete, numbers in holding/input")
    states = _parse_states(name, entry.get("states"), problems)
    if found := [p for p in problems if p]:
        raise ValueError(f"point {name!r}: " + "; ".join(found))
    return MappedPoint(
        name=name,
        table=table,
        address=address,
        type=kind,
        scale=float(entry.get("scale", 1.0)),
        offset=float(entry.get("offset", 0.0)),
        word_order=order,
        writable=writable,
        minimum=_optional_float(entry.get("min")),
        maximum=_optional_float(entry.get("max")),
        bit=bit,
        invert=bool(entry.get("invert", False)),
        missing=tuple(int(value) for value in entry.get("missing", [])),
        states=states,
        byte_swap=bool(entry.get("byte_swap", default_swap)) and kind != "bool",
        momentary=bool(entry.get("momentary", False)),
        fraction_bits=fraction_bits,
    )


def _parse_states(name: str, raw: object, problems: list[str]) -> tuple[tuple[int, int], ...]:
    """`states = { "0x8000" = "stopped", … }` -> (raw code, canonical code) pairs."""
    if raw is None:
        return ()
    enum_type = POINT_STATES.get(name)
    if enum_type is None or not isinstance(raw, dict):
        problems.append("states needs an enumerated point and a table of code = name")
        return ()
    members = {member.name.lower(): member.value for member in enum_type}
    pairs = []
    for key, state in raw.items():
        if str(state) not in members:
            problems.append(f"state {state!r} is none of {sorted(members)}")
            continue
        pairs.append((int(str(key), 0), members[str(state)]))
    return tuple(pairs)


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _check_layout(points: Sequence[MappedPoint], path: Path) -> None:
    """Refuse duplicate names and overlapping addresses (distinct bits of one register
    excepted): either would make reads ambiguous."""
    names: set[str] = set()
    owners: dict[tuple[str, int], MappedPoint] = {}
    for point in points:
        if point.name in names:
            raise ValueError(f"{path}: point {point.name!r} is listed twice")
        names.add(point.name)
        for address in point.addresses:
            other = owners.setdefault((point.table, address), point)
            if other is point:
                continue
            if point.bit is not None and other.bit is not None and point.bit != other.bit:
                continue
            raise ValueError(
                f"{path}: {point.name!r} overlaps {other.name!r} at {point.table} {address}"
            )


# --------------------------------------------------------------------------- encoder


def encode_value(point: MappedPoint, value: float) -> list[int] | None:
    """Engineering value -> words (or one 0/1 bit) as the device would hold them.

    Integers round to the nearest count and clamp to the type's range, so a wild plant value
    pins at the limit instead of wrapping. NaN is a sensor without a value: the point's first
    `missing` sentinel if it has one, else None (leave as is) — a float32 without sentinels
    serves the NaN itself, as a broken float sensor does. For a bit of a register the result is
    the bit alone; the register bank puts it into its word.
    """
    if math.isnan(value) and point.missing and point.bit is None:
        raw_sentinel = point.missing[0]
        if _WIDTH[point.type] == 2:
            words = [(raw_sentinel >> 16) & 0xFFFF, raw_sentinel & 0xFFFF]
            return _order_words(_swap(words, point.byte_swap), point.word_order)
        return _swap([raw_sentinel & 0xFFFF], point.byte_swap)
    if point.type == "bool":
        if math.isnan(value):
            return None
        bit = 1 if abs(value) >= 0.5 else 0
        return [1 - bit if point.invert else bit]
    if point.states:
        if math.isnan(value):
            return None
        raw_code = point.raw_of_code(round(value))
        if raw_code is None:
            return None  # a state this device cannot show: keep what it shows
        counts: float = raw_code
    else:
        counts = math.ldexp((value - point.offset) / point.scale, point.fraction_bits)
    if point.type == "float32":
        clamped = counts if math.isnan(counts) else max(-_FLOAT32_MAX, min(_FLOAT32_MAX, counts))
        words = list(struct.unpack(">HH", struct.pack(">f", clamped)))
        return _order_words(_swap(words, point.byte_swap), point.word_order)
    if math.isnan(counts):
        return None
    low, high = _INT_RANGE[point.type]
    raw = low if counts <= low else high if counts >= high else math.floor(counts + 0.5)
    if point.type in ("int16", "uint16"):
        return _swap([raw & 0xFFFF], point.byte_swap)
    raw &= 0xFFFFFFFF
    return _order_words(_swap([raw >> 16, raw & 0xFFFF], point.byte_swap), point.word_order)


def decode_words(point: MappedPoint, words: Sequence[int]) -> float:
    """Words (or one bit) as a client wrote them -> engineering value (a state's canonical
    code; NaN for a raw code that is no state)."""
    if point.type == "bool":
        word = words[0]
        bit = (word >> point.bit) & 1 if point.bit is not None else (1 if word else 0)
        return float(1 - bit if point.invert else bit)
    if point.type in ("int16", "uint16"):
        raw = _swap([words[0]], point.byte_swap)[0]
        value = raw - 0x10000 if point.type == "int16" and raw >= 0x8000 else raw
        return _state_or_scaled(point, value)
    high, low = _swap(_order_words(words, point.word_order), point.byte_swap)
    packed = struct.pack(">HH", high, low)
    fmt = {"int32": ">i", "uint32": ">I", "float32": ">f"}[point.type]
    raw_value: float = struct.unpack(fmt, packed)[0]
    return _state_or_scaled(point, raw_value)


def _state_or_scaled(point: MappedPoint, raw: float) -> float:
    if point.states:
        code = point.code_of_raw(int(raw))
        return math.nan if code is None else float(code)
    return _scaled(point, raw)


def _swap(words: Sequence[int], byte_swap: bool) -> list[int]:
    """Swap the two bytes inside each word (its own inverse)."""
    if not byte_swap:
        return list(words)
    return [((word & 0xFF) << 8) | (word >> 8) for word in words]


def _scaled(point: MappedPoint, raw: float) -> float:
    """raw * scale + offset; a decimal scale (0.1, 0.001) divides so that 700 -> 0.7 exactly.

    IEEE division is correctly rounded, so raw / 1000 is the double nearest the decimal value,
    whereas raw * 0.001 may land one ulp off (0.7000000000000001) and surprise the store.
    """
    raw = math.ldexp(raw, -point.fraction_bits)  # exact: a power of two
    inverse = 1.0 / point.scale
    divisor = round(inverse)
    if abs(point.scale) < 1.0 and math.isclose(inverse, divisor, rel_tol=1e-12):
        return raw / divisor + point.offset
    return raw * point.scale + point.offset


def _order_words(words: Sequence[int], word_order: str) -> list[int]:
    """Big word order puts the high word first; little swaps the two (and is its own inverse)."""
    return [words[0], words[1]] if word_order == "big" else [words[1], words[0]]


# --------------------------------------------------------------------------- register bank


class _RegisterBank(SimCore):
    """The device's memory, in the place pymodbus gives its SimCore.

    Every request PDU reaches the datastore only through `async_getValues`,
    `async_setValues` and `device_ids`, so overriding those is all pymodbus needs; the
    SimCore base is there for the server's type, not for its behaviour.
    """

    def __init__(
        self,
        points: Sequence[MappedPoint],
        unit_id: int,
        write: Callable[[str, float], None],
        unlocks: Sequence[Unlock] = (),
    ) -> None:
        # SimCore.__init__ is deliberately not called: it would build a SimRuntime we never use.
        self.devices = {}
        self.unit_id = unit_id
        self.failing_point: str | None = None
        self.response_delay_s = 0.0
        self._write = write
        self._unlocks = tuple(unlocks)
        self._unlock_at = {(u.table, u.address): u for u in self._unlocks}
        self._words: dict[str, dict[int, int]] = {table: {} for table in TABLES}
        self._owner: dict[str, dict[int, list[MappedPoint]]] = {table: {} for table in TABLES}
        for point in points:
            for address in point.addresses:
                self._words[point.table][address] = 0
                self._owner[point.table].setdefault(address, []).append(point)
        for unlock in self._unlocks:
            self._words[unlock.table].setdefault(unlock.address, 0)

    def device_ids(self) -> list[int]:
        return [self.unit_id]

    def load(self, point: MappedPoint, words: Sequence[int]) -> None:
        """Put a point's encoded words into memory (refresh from the plant); a bit point's
        one value goes into its bit of the register."""
        memory = self._words[point.table]
        if point.bit is not None:
            mask = 1 << point.bit
            memory[point.address] = (memory[point.address] & ~mask) | (mask if words[0] else 0)
            return
        for address, word in zip(point.addresses, words, strict=True):
            memory[address] = word

    def read(self, point: MappedPoint) -> list[int]:
        """A point's words as held now (a bit point's whole register)."""
        return [self._words[point.table][a] for a in point.addresses]

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        table = _TABLE_OF_FC.get(func_code)
        if device_id != self.unit_id:
            return ExcCodes.GATEWAY_NO_RESPONSE
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        span = range(address, address + count)
        memory = self._words[table]
        if any(a not in memory for a in span):
            return ExcCodes.ILLEGAL_ADDRESS
        if func_code in _READ_FCS and self._touches_failing(table, span):
            return ExcCodes.DEVICE_FAILURE
        if table in BIT_TABLES:
            return [bool(memory[a]) for a in span]
        return [memory[a] for a in span]

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        table = _TABLE_OF_FC.get(func_code)
        if device_id != self.unit_id:
            return ExcCodes.GATEWAY_NO_RESPONSE
        if table not in WRITABLE_TABLES:
            return ExcCodes.ILLEGAL_FUNCTION
        written = {address + i: int(v) for i, v in enumerate(values)}
        unlock_words = {a: v for a, v in written.items() if (table, a) in self._unlock_at}
        if unlock_words:
            if len(unlock_words) != len(written):
                return ExcCodes.ILLEGAL_ADDRESS
            shared = self._write_unlocks(table, unlock_words)
            if not shared:
                return None
            written = shared  # command bits in the write-enable's register: written below
        points = self._points_at(table, written)
        if points is None:
            return ExcCodes.ILLEGAL_ADDRESS
        return self._apply(table, points, written)

    def _write_unlocks(self, table: str, words: Mapping[int, int]) -> dict[int, int]:
        """Store written write-enable words; return those whose register also holds points.

        A whole-register write-enable takes the word as written. A write-enable bit takes only
        its bit; the register's other bits are points, applied as a normal write afterwards."""
        shared = {}
        for address, word in words.items():
            unlock = self._unlock_at[(table, address)]
            memory = self._words[table]
            if unlock.bit is None or address not in self._owner[table]:
                memory[address] = word
                continue
            mask = 1 << unlock.bit
            memory[address] = (memory[address] & ~mask) | (word & mask)
            shared[address] = word
        return shared

    def _points_at(self, table: str, addresses: Iterable[int]) -> list[MappedPoint] | None:
        """The points covering these addresses, in address order; None if one is unmapped."""
        owners = self._owner[table]
        found: list[MappedPoint] = []
        for address in addresses:
            points = owners.get(address)
            if points is None:
                return None
            found.extend(point for point in points if point not in found)
        return found

    def _touches_failing(self, table: str, span: range) -> bool:
        owners = self._owner[table]
        return self.failing_point is not None and any(
            p.name == self.failing_point for a in span for p in owners[a]
        )

    def _locked(self, point: MappedPoint) -> bool:
        return any(
            point.name in u.points and not u.is_open(self._words[u.table][u.address])
            for u in self._unlocks
        )

    def _apply(
        self, table: str, points: Sequence[MappedPoint], written: Mapping[int, int]
    ) -> ExcCodes | None:
        """Decode, check, hand to the store, and only then keep the words.

        A partial write of a 32-bit point is merged with the word it leaves alone. A write of a
        register of bits changes only the bits whose value changed, and refuses to change a
        read-only one. A point behind a write-enable register is refused (illegal function)
        while it is locked. Points of a multi-point write go to the store in address order and
        stop at the first rejection.
        """
        memory = self._words[table]
        proposed = []
        for point in points:
            words = [written.get(a, memory[a]) for a in point.addresses]
            value = decode_words(point, words)
            if point.bit is not None:
                if value == decode_words(point, [memory[point.address]]):
                    continue  # another bit of the register: this one is unchanged
                words = [(words[0] >> point.bit) & 1]
            if not point.writable:
                return ExcCodes.ILLEGAL_ADDRESS
            if not point.accepts(value):
                LOG.debug("rejected write %s=%r: outside its min/max", point.name, value)
                return ExcCodes.ILLEGAL_VALUE
            if self._locked(point):
                LOG.debug("rejected write %s=%r: locked", point.name, value)
                return ExcCodes.ILLEGAL_FUNCTION
            proposed.append((point, words, value))
        for point, words, value in proposed:
            try:
                self._write(point.name, value)
            except ValueError as exc:
                LOG.debug("rejected write %s=%r: %s", point.name, value, exc)
                return ExcCodes.ILLEGAL_VALUE
            if point.momentary:  # carried out: the command register clears itself
                words = [1 if point.invert else 0] if point.bit is not None else [0] * len(words)
            self.load(point, words)
            self._relock(point)
        return None

    def _relock(self, point: MappedPoint) -> None:
        """A write-enable register without a relock value closes after one write."""
        for unlock in self._unlocks:
            if point.name in unlock.points and unlock.relock is None:
                memory = self._words[unlock.table]
                memory[unlock.address] = unlock.closed(memory[unlock.address])


# --------------------------------------------------------------------------- pymodbus glue


class _RequestHandler(ServerRequestHandler):
    """One client connection. Answers requests one at a time, in order, after the delay.

    pymodbus keeps only `last_pdu` per connection and reads it again after awaiting the
    datastore, so a request arriving during a slow answer would be mixed up with it; here
    each request is captured on arrival and answered in its own turn.
    """

    def __init__(self, owner: _DeviceTcpServer) -> None:
        super().__init__(owner, owner.trace_packet, owner.trace_pdu, owner.trace_connect)  # type: ignore[no-untyped-call]
        self._bank = owner.bank
        self._turn = asyncio.Lock()
        self._pending: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A connection accepted just before the device went offline is closed on arrival.

        pymodbus closes the connections it knows when the listener closes, but one whose
        transport was still being made has nothing to close yet and would leak.
        """
        if self.is_closing:
            transport.close()
            return
        super().connection_made(transport)

    def callback_data(self, data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        """Take every complete frame in the buffer (pymodbus takes one per call)."""
        used = 0
        while used < len(data):
            step = super().callback_data(data[used:], addr)
            if self.last_pdu is not None:
                task = self.loop.create_task(self._answer(self.last_pdu, self.last_addr))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
            if step <= 0:
                break
            used += step
        return used

    def handle_later(self) -> None:
        """Requests are scheduled by callback_data instead, with their PDU captured."""

    def callback_disconnected(self, exc: Exception | None) -> None:
        super().callback_disconnected(exc)
        for task in self._pending:
            task.cancel()

    async def _answer(self, pdu: ModbusPDU, addr: tuple[Any, ...] | None) -> None:
        async with self._turn:
            if self._bank.response_delay_s > 0:
                await asyncio.sleep(self._bank.response_delay_s)
            if not self.transport:
                return  # the link went down while the device was busy
            # handle_request does not yield with our bank, so last_pdu stays ours throughout
            self.last_pdu, self.last_addr = pdu, addr
            await super().handle_request()  # type: ignore[no-untyped-call]


class _DeviceTcpServer(ModbusTcpServer):
    """A pymodbus TCP server on a socket we bound ourselves, with our bank and handler.

    Binding outside pymodbus gives the real port at once (port=0) and lets a server come
    back online on the same port synchronously.
    """

    def __init__(self, bank: _RegisterBank | _BusContext, sock: socket.socket) -> None:
        self.bank = bank
        self._listen_socket = sock
        placeholder = SimDevice(bank.unit_id, simdata=SimData(0))
        super().__init__(placeholder, address=sock.getsockname()[:2])
        self.context = bank

    def init_setup_connect_listen(self, host: str, port: int) -> None:
        self.call_create = functools.partial(
            self.loop.create_server, self.handle_new_connection, sock=self._listen_socket
        )

    def stop_accepting(self) -> None:
        """Take new connections no more; the socket itself closes with the listener."""
        if self._listen_socket.fileno() >= 0:
            self.loop.remove_reader(self._listen_socket.fileno())

    def callback_new_connection(self) -> _RequestHandler:
        handler = _RequestHandler(self)
        # accepted by asyncio just before the listener closed: close it once it is made
        handler.is_closing = self.is_closing
        return handler


async def _loop_turns(count: int) -> None:
    """Let callbacks already scheduled on the event loop run."""
    for _ in range(count):
        await asyncio.sleep(0)


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket; SO_REUSEADDR so a restart on the same port is not refused."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


# --------------------------------------------------------------------------- public server


class ModbusDeviceServer:
    """One simulated device on Modbus TCP, serving `store` through a register map.

    Several can share one event loop, each on its own port; each stops on its own.
    """

    def __init__(
        self,
        register_map: str | Path,
        store: PointStore,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unit_id: int = 1,
        refresh_interval_s: float = 0.05,
    ) -> None:
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit_id {unit_id} outside 0..255")
        if refresh_interval_s <= 0:
            raise ValueError("refresh_interval_s must be positive")
        device_map = load_device_map(register_map)
        self.name, self.points = device_map.name, device_map.points
        self.host = host
        self.port = port
        self.unit_id = unit_id
        self.refresh_interval_s = refresh_interval_s
        self.writes: list[tuple[str, float]] = []
        self._store = store
        self._by_name = {point.name: point for point in self.points}
        self._bank = _RegisterBank(self.points, unit_id, self._write, device_map.unlocks)
        self._server: _DeviceTcpServer | None = None
        self._listening: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._offline = False
        self._store_failing = False

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def offline(self) -> bool:
        return self._offline

    async def start(self) -> None:
        """Fill the registers, bind, and serve; afterwards `port` is the real port."""
        if self._refresher is not None:
            raise RuntimeError(f"modbus device {self.name} already started")
        self.refresh()
        self._offline = False
        self._go_online()
        assert self._listening is not None
        try:
            await self._listening
        except BaseException:
            self._close_server()
            raise
        self._refresher = asyncio.create_task(self._refresh_loop(), name=f"modbus {self.name}")
        LOG.info("modbus device %s (unit %d) serving on %s", self.name, self.unit_id, self.address)

    async def stop(self) -> None:
        """Stop this device only: its listener, its connections, its refresh task."""
        if self._refresher is None:
            return
        self._refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._refresher
        self._refresher = None
        if self._listening is not None and not self._listening.done():
            with contextlib.suppress(Exception):
                await self._listening
        if self._server is not None:
            # Python 3.11's asyncio leaks a connection whose accept is in flight when the
            # listener closes: stop accepting, let those arrive, then close everything.
            self._server.stop_accepting()
            await _loop_turns(2)
        self._close_server()
        await _loop_turns(2)  # closed transports release their sockets
        LOG.info("modbus device %s on %s stopped", self.name, self.address)

    # faults ------------------------------------------------------------------------------

    def set_offline(self, offline: bool) -> None:
        """Link loss: drop clients and refuse new ones; back online on the same port."""
        if self._refresher is None:
            raise RuntimeError(f"modbus device {self.name} is not running")
        if offline == self._offline:
            return
        if offline:
            self._offline = True
            self._go_offline()
        else:
            self._go_online()
            self._offline = False
        LOG.info("modbus device %s %s", self.name, "offline" if offline else "back online")

    def set_response_delay(self, seconds: float) -> None:
        """Delay every reply, as a slow or overloaded device would."""
        if seconds < 0 or math.isnan(seconds):
            raise ValueError("response delay must be >= 0")
        self._bank.response_delay_s = seconds

    def fail_reads(self, point: str | None) -> None:
        """Answer reads touching this point's registers with SLAVE_DEVICE_FAILURE (4)."""
        if point is not None and point not in self._by_name:
            raise ValueError(f"{self.name} has no point {point!r}")
        self._bank.failing_point = point

    # plant <-> registers -----------------------------------------------------------------

    def refresh(self) -> None:
        """Copy the store's values into the registers now (also done every interval)."""
        values = self._store.read_points()
        for point in self.points:
            if point.name in values:
                words = encode_value(point, float(values[point.name]))
                if words is not None:
                    self._bank.load(point, words)

    def registers(self, point: str) -> list[int]:
        """The words (or bit) a point holds now, for tests and diagnostics."""
        return self._bank.read(self._by_name[point])

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval_s)
            try:
                self.refresh()
            except Exception:
                if not self._store_failing:
                    LOG.exception("modbus device %s: reading the point store failed", self.name)
                self._store_failing = True
            else:
                if self._store_failing:
                    LOG.info("modbus device %s: point store readable again", self.name)
                self._store_failing = False

    def _write(self, name: str, value: float) -> None:
        """Called by the bank for an accepted write; ValueError from the store rejects it."""
        self._store.write_point(name, value)
        self.writes.append((name, value))

    # listener ----------------------------------------------------------------------------

    def _go_online(self) -> None:
        """Bind now (so the port is known and connections queue) and start serving."""
        if self._server is not None:
            return  # an offline spell shorter than one loop turn: that listener stays
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        try:
            self._server = _DeviceTcpServer(self._bank, sock)
        except BaseException:
            sock.close()
            raise
        self._listening = asyncio.get_running_loop().create_task(
            self._server.serve_forever(background=True)
        )
        self._listening.add_done_callback(self._listen_done)

    def _listen_done(self, task: asyncio.Task[None]) -> None:
        """Report a listener that failed to open while running (start() raises it instead)."""
        if self._refresher is not None and not task.cancelled() and task.exception():
            LOG.error("modbus device %s: could not listen on %s", self.name, self.address)

    def _go_offline(self) -> None:
        """Close the listener and every client connection of this device.

        If pymodbus has not finished opening the listener yet, closing now would leave it to
        open afterwards; the close then waits for it, unless the device is back online by then.
        """
        listening = self._listening
        if listening is not None and not listening.done():
            listening.add_done_callback(lambda _: self._close_server() if self._offline else None)
            return
        self._close_server()

    def _close_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()


# --------------------------------------------------------------------------- Modbus RTU


class _BusContext(SimCore):
    """The devices on one RS-485 bus: each request goes to the bank of its unit id; a unit id
    nobody has raises NoSuchIdException, which the server answers with silence, as a bus
    does (ignore_missing_devices)."""

    def __init__(
        self, banks: Sequence[_RegisterBank], offline: Callable[[int], bool] | None = None
    ) -> None:
        self.devices = {}
        self._offline = offline  # a device set offline (a fault) is silent on the bus too
        self._banks = {bank.unit_id: bank for bank in banks}
        if len(self._banks) != len(banks):
            raise ValueError("two devices on one bus share a unit id")
        self.unit_id = banks[0].unit_id  # what the TCP server's placeholder device needs
        self.response_delay_s = 0.0

    def device_ids(self) -> list[int]:
        return list(self._banks)

    def _bank(self, device_id: int) -> _RegisterBank:
        bank = self._banks.get(device_id)
        if bank is None or (self._offline is not None and self._offline(device_id)):
            raise NoSuchIdException(f"no unit {device_id} on this bus")
        return bank

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        return await self._bank(device_id).async_getValues(device_id, func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        return await self._bank(device_id).async_setValues(device_id, func_code, address, values)


class ModbusRtuBus:
    """Simulated devices on one serial line, served as Modbus RTU: several unit ids, one bus.

    The devices are `ModbusDeviceServer`s that are not started on TCP; the bus refreshes their
    registers from their stores and answers for them on `port` (a tty path: see
    simulators/serial_line.py for a paced virtual line in pure Python).
    """

    def __init__(
        self,
        devices: Sequence[ModbusDeviceServer],
        *,
        port: str,
        baudrate: int = 19200,
        parity: str = "E",
        stopbits: int = 1,
        bytesize: int = 8,
        refresh_interval_s: float = 0.05,
    ) -> None:
        if not devices:
            raise ValueError("a bus needs at least one device")
        self.devices = list(devices)
        self.port = port
        by_unit = {device.unit_id: device for device in self.devices}
        self._context = _BusContext(
            [device._bank for device in self.devices], lambda unit: by_unit[unit].offline
        )
        self._settings = {
            "baudrate": baudrate,
            "parity": parity,
            "stopbits": stopbits,
            "bytesize": bytesize,
        }
        self.refresh_interval_s = refresh_interval_s
        self._server: ModbusSerialServer | None = None
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for device in self.devices:
            device.refresh()
        placeholder = SimDevice(self.devices[0].unit_id, simdata=SimData(0))
        server = ModbusSerialServer(
            placeholder,
            port=self.port,
            ignore_missing_devices=True,
            reconnect_delay=0,
            **self._settings,  # type: ignore[arg-type]
        )
        server.context = self._context
        await server.serve_forever(background=True)
        self._server = server
        self._refresher = asyncio.create_task(self._refresh_loop(), name=f"modbus-rtu {self.port}")
        LOG.info(
            "modbus RTU bus on %s: units %s",
            self.port,
            ", ".join(str(device.unit_id) for device in self.devices),
        )

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None
            await _loop_turns(2)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval_s)
            for device in self.devices:
                try:
                    device.refresh()
                except Exception:
                    LOG.exception(
                        "modbus RTU device %s: reading the point store failed", device.name
                    )


class ModbusTcpGateway:
    """Simulated devices behind one TCP address, as behind a Modbus gateway: each request goes
    to the device of its unit id; a unit id nobody has is answered with exception 11 (gateway
    target failed to respond), as gateways do."""

    def __init__(
        self,
        devices: Sequence[ModbusDeviceServer],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        refresh_interval_s: float = 0.05,
    ) -> None:
        self.devices = list(devices)
        self.host = host
        self.port = port
        self.refresh_interval_s = refresh_interval_s
        self._context = _BusContext([device._bank for device in self.devices])
        self._server: _DeviceTcpServer | None = None
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for device in self.devices:
            device.refresh()
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._server = _DeviceTcpServer(self._context, sock)
        await self._server.serve_forever(background=True)
        self._refresher = asyncio.create_task(self._refresh_loop(), name="modbus gateway")

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._server is not None:
            self._server.stop_accepting()
            await _loop_turns(2)
            self._server.close()
            self._server = None
            await _loop_turns(2)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval_s)
            for device in self.devices:
                with contextlib.suppress(Exception):
                    device.refresh()
