"""Modbus device profiles: load and check a TOML register map, decode and encode registers,
and plan the reads that cover a profile.

A profile is data (see `drivers/profiles/sim-cdu.toml` for the format), so supporting a new
device model means writing a file, not code. Everything that can be wrong in such a file is
caught here, at load time, with the file and the key named, rather than as a puzzling value
in the middle of a control loop. Nothing in this module touches the network: the codec and the
read planner are pure so that they can be tested exhaustively.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

from coolctl.drivers import profile_toml
from coolctl.drivers.profile_toml import ProfileChecker
from coolctl.model import CANONICAL_POINTS, Unit

ProfileError = profile_toml.ProfileError  # the error of every profile loader

Table = Literal["holding", "input", "coil", "discrete"]
DataType = Literal["int16", "uint16", "int32", "uint32", "float32", "bool"]
WordOrder = Literal["big", "little"]
DeviceKind = Literal["cdu", "pdu", "server", "sensor"]


TABLES: Final[tuple[Table, ...]] = get_args(Table)
DATA_TYPES: Final[tuple[DataType, ...]] = get_args(DataType)
WORD_ORDERS: Final[tuple[WordOrder, ...]] = get_args(WordOrder)
DEVICE_KINDS: Final[tuple[DeviceKind, ...]] = get_args(DeviceKind)
BIT_TABLES: Final[frozenset[str]] = frozenset({"coil", "discrete"})
WRITABLE_TABLES: Final[frozenset[str]] = frozenset({"holding", "coil"})

# The Modbus application protocol caps one read: 125 registers (FC 3/4), 2000 bits (FC 1/2).
MODBUS_MAX_REGISTERS_PER_READ: Final = 125
MODBUS_MAX_BITS_PER_READ: Final = 2000
MODBUS_MAX_ADDRESS: Final = 0xFFFF

_STRUCT_FORMATS: Final[Mapping[str, str]] = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "float32": ">f",
}
_INTEGER_RANGES: Final[Mapping[str, tuple[int, int]]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}

_PROFILE_KEYS: Final = frozenset(
    {
        "name",
        "description",
        "protocol",
        "kind",
        "word_order",
        "max_registers_per_read",
        "max_bits_per_read",
    }
)
_POINT_REQUIRED: Final = ("name", "table", "address", "type", "unit")
_POINT_OPTIONAL: Final = frozenset({"word_order", "scale", "offset", "writable", "min", "max"})


@dataclass(frozen=True, slots=True)
class RegisterPoint:
    """Where one canonical point lives on a Modbus device and how its raw value converts.

    Engineering value = raw * scale + offset, in the canonical unit of `name`. `word_order`
    says which 16-bit register holds the high half of a 32-bit value ("big": the first).
    """

    name: str
    table: Table
    address: int
    data_type: DataType
    word_order: WordOrder
    scale: float
    offset: float
    unit: Unit
    writable: bool
    min: float | None
    max: float | None

    @property
    def register_count(self) -> int:
        """Registers (or bits) this point occupies: 2 for 32-bit types, else 1."""
        return 2 if self.data_type in ("int32", "uint32", "float32") else 1

    @property
    def is_bit(self) -> bool:
        return self.data_type == "bool"


@dataclass(frozen=True, slots=True)
class ModbusProfile:
    """A checked register map of one device model; `kind` says what the device is."""

    name: str
    description: str
    path: Path
    points: tuple[RegisterPoint, ...]
    max_registers_per_read: int
    max_bits_per_read: int
    kind: DeviceKind

    def point(self, name: str) -> RegisterPoint:
        """The point called `name`; KeyError if the profile has none."""
        for point in self.points:
            if point.name == name:
                return point
        raise KeyError(f"profile {self.name!r} has no point {name!r}")


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: `count` registers (or bits) of `table` from `start`, and what they hold."""

    table: Table
    start: int
    count: int
    points: tuple[RegisterPoint, ...]

    @property
    def end(self) -> int:
        """One past the last address read."""
        return self.start + self.count


# --------------------------------------------------------------------------------------------
# Loading


def load_profile(name_or_path: str | Path) -> ModbusProfile:
    """Load and check a profile: a bare name ("sim-cdu") means a shipped profile, else a path.

    A string counts as a path when it contains "/" or ends in ".toml"; a `Path` always does.
    """
    return profile_toml.load(name_or_path, "modbus", parse_profile)


def shipped_profiles() -> list[str]:
    """Names of the Modbus profiles shipped with coolctl (the folder holds other protocols')."""
    return profile_toml.shipped("modbus")


def parse_profile(data: bytes, path: Path) -> ModbusProfile:
    """Check the TOML text of a profile; `path` is only used to name the file in errors."""
    return _Checker(path).profile(profile_toml.parse_document(data, path))


class _Checker(ProfileChecker):
    """Reads a parsed TOML document into a Modbus profile."""

    def profile(self, document: Mapping[str, Any]) -> ModbusProfile:
        self.no_unknown_keys(document, {"profile", "point"}, "")
        header = self.table(document, "profile", "profile")
        self.no_unknown_keys(header, _PROFILE_KEYS, "profile")
        protocol = self.string(header, "protocol", "profile")
        if protocol != "modbus":
            raise self.fail(
                "profile.protocol", f"must be 'modbus' for this driver, not {protocol!r}"
            )
        kind = self.choice(header, "kind", "profile", DEVICE_KINDS)
        default_order = self.choice(header, "word_order", "profile", WORD_ORDERS, "big")
        max_registers = self.limit(header, "max_registers_per_read", MODBUS_MAX_REGISTERS_PER_READ)
        max_bits = self.limit(header, "max_bits_per_read", MODBUS_MAX_BITS_PER_READ)
        raw_points = document.get("point")
        if not isinstance(raw_points, list) or not raw_points:
            raise self.fail("point", "missing: a profile needs at least one [[point]] table")
        points = tuple(
            self.point(raw, f"point[{index}]", default_order)
            for index, raw in enumerate(raw_points)
        )
        self.no_duplicates(points)
        self.no_overlaps(points)
        for index, point in enumerate(points):
            if point.register_count > max_registers:
                raise self.fail(
                    f"point[{index}].type",
                    f"{point.data_type} needs {point.register_count} registers in one read, "
                    f"but profile.max_registers_per_read is {max_registers}",
                )
        return ModbusProfile(
            name=self.string(header, "name", "profile"),
            description=self.string(header, "description", "profile", default=""),
            path=self.path,
            points=points,
            max_registers_per_read=max_registers,
            max_bits_per_read=max_bits,
            kind=kind,
        )

    def point(self, raw: object, key: str, default_order: WordOrder) -> RegisterPoint:
        if not isinstance(raw, dict):
            raise self.fail(key, f"must be a table, not {type(raw).__name__}")
        label = key
        if isinstance(raw.get("name"), str):
            label = f"{key} ({raw['name']})"
        self.no_unknown_keys(raw, {*_POINT_REQUIRED, *_POINT_OPTIONAL}, key)
        for required in _POINT_REQUIRED:
            if required not in raw:
                raise self.fail(f"{key}.{required}", f"missing (in {label})")
        name = self.string(raw, "name", key)
        spec = CANONICAL_POINTS.get(name)
        if spec is None:
            raise self.fail(f"{key}.name", f"{name!r} is not a canonical point name")
        table = self.choice(raw, "table", key, TABLES)
        data_type = self.choice(raw, "type", key, DATA_TYPES)
        self.type_fits_table(key, data_type, table)
        unit = self.string(raw, "unit", key)
        if unit != spec.unit.value:
            raise self.fail(f"{key}.unit", f"{name} is measured in {spec.unit.value}, not {unit!r}")
        writable = self.boolean(raw, "writable", key, default=False)
        if writable and table not in WRITABLE_TABLES:
            raise self.fail(f"{key}.writable", f"{table} points cannot be written ({label})")
        if data_type == "bool":
            for key_not_for_bits in ("scale", "offset", "word_order"):
                if key_not_for_bits in raw:
                    raise self.fail(f"{key}.{key_not_for_bits}", "does not apply to bool points")
        scale = self.number(raw, "scale", key, default=1.0)
        if scale == 0.0 or not math.isfinite(scale):
            raise self.fail(f"{key}.scale", f"must be finite and non-zero, not {scale}")
        minimum, maximum = self.bounds(raw, key, label, writable and data_type != "bool")
        point = RegisterPoint(
            name=name,
            table=table,
            address=self.address(raw, key),
            data_type=data_type,
            word_order=self.choice(raw, "word_order", key, WORD_ORDERS, default_order),
            scale=scale,
            offset=self.number(raw, "offset", key, default=0.0),
            unit=spec.unit,
            writable=writable,
            min=minimum,
            max=maximum,
        )
        if point.address + point.register_count - 1 > MODBUS_MAX_ADDRESS:
            raise self.fail(f"{key}.address", f"{data_type} at {point.address} runs past 65535")
        return point

    # --- checks across points

    def no_overlaps(self, points: Sequence[RegisterPoint]) -> None:
        indexed = sorted(enumerate(points), key=lambda item: (item[1].table, item[1].address))
        for (_, before), (index, after) in itertools.pairwise(indexed):
            last_address = before.address + before.register_count - 1
            if before.table == after.table and after.address <= last_address:
                raise self.fail(
                    f"point[{index}].address",
                    f"{after.name} at {after.table} {after.address} overlaps {before.name} "
                    f"({before.table} {before.address}..{last_address})",
                )

    # --- checks of single values

    def address(self, table: Mapping[str, Any], key: str) -> int:
        address = self.integer(table, "address", key)
        if not 0 <= address <= MODBUS_MAX_ADDRESS:
            raise self.fail(f"{key}.address", f"must be within 0..65535, not {address}")
        return address

    def limit(self, header: Mapping[str, Any], name: str, protocol_max: int) -> int:
        if name not in header:
            return protocol_max
        value = self.integer(header, name, "profile")
        if not 1 <= value <= protocol_max:
            raise self.fail(f"profile.{name}", f"must be within 1..{protocol_max}, not {value}")
        return value

    def bounds(
        self, raw: Mapping[str, Any], key: str, label: str, required: bool
    ) -> tuple[float | None, float | None]:
        """min/max of a point; a writable numeric point must have both, as a setpoint without
        bounds would let any bug drive the actuator to its extreme."""
        found: list[float | None] = []
        for name in ("min", "max"):
            if name in raw:
                found.append(self.number(raw, name, key, default=0.0))
            elif required:
                raise self.fail(f"{key}.{name}", f"missing: writable {label} needs min and max")
            else:
                found.append(None)
        minimum, maximum = found
        if minimum is not None and maximum is not None and minimum > maximum:
            raise self.fail(f"{key}.min", f"{minimum} is above max {maximum}")
        return minimum, maximum

    def type_fits_table(self, key: str, data_type: str, table: str) -> None:
        if (data_type == "bool") != (table in BIT_TABLES):
            if data_type == "bool":
                raise self.fail(f"{key}.type", f"bool needs a coil or discrete table, not {table}")
            raise self.fail(
                f"{key}.type", f"{data_type} needs a holding or input table, not {table}"
            )


# --------------------------------------------------------------------------------------------
# Codec


def decode(point: RegisterPoint, words_or_bits: Sequence[int]) -> float:
    """Raw registers (or bits) of one point to its engineering value.

    Raises ValueError for a reply that cannot be right: the wrong number of words, a word
    outside 0..65535, or a float that is NaN or infinite (what a garbled frame or a broken
    sensor shows as).
    """
    if len(words_or_bits) != point.register_count:
        raise ValueError(
            f"{point.name}: expected {point.register_count} value(s), got {len(words_or_bits)}"
        )
    if point.is_bit:
        return 1.0 if words_or_bits[0] else 0.0
    raw = struct.unpack(_STRUCT_FORMATS[point.data_type], _words_to_bytes(point, words_or_bits))[0]
    if not math.isfinite(raw):
        raise ValueError(f"{point.name}: {point.data_type} reads {raw}")
    return float(raw) * point.scale + point.offset


def encode(point: RegisterPoint, value: float) -> list[int]:
    """An engineering value to the raw registers (or bit) of one point.

    Integer types round to the nearest count. Raises ValueError when the value is not finite
    or its raw form does not fit the type, so that nothing ever wraps around on the wire.
    """
    if not math.isfinite(value):
        raise ValueError(f"{point.name}: cannot encode {value}")
    if point.is_bit:
        if value not in (0.0, 1.0):
            raise ValueError(f"{point.name}: a bool takes 0 or 1, not {value}")
        return [int(value)]
    raw = (value - point.offset) / point.scale
    if point.data_type == "float32":
        try:
            packed = struct.pack(">f", raw)
        except OverflowError as exc:
            raise ValueError(f"{point.name}: {value} is beyond float32 range") from exc
    else:
        count = round(raw)
        low, high = _INTEGER_RANGES[point.data_type]
        if not low <= count <= high:
            raise ValueError(
                f"{point.name}: {value} is raw {count}, outside {point.data_type} ({low}..{high})"
            )
        packed = struct.pack(_STRUCT_FORMATS[point.data_type], count)
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]
    return words if point.word_order == "big" else words[::-1]


def _words_to_bytes(point: RegisterPoint, words: Sequence[int]) -> bytes:
    for word in words:
        if not 0 <= word <= 0xFFFF:
            raise ValueError(f"{point.name}: register value {word} is not 16-bit")
    ordered = words if point.word_order == "big" else words[::-1]
    return b"".join(word.to_bytes(2, "big") for word in ordered)


# --------------------------------------------------------------------------------------------
# Read planning


def plan_reads(profile: ModbusProfile) -> list[ReadBlock]:
    """The fewest read requests that fetch every point of the profile.

    Points of one table merge into a block only when they are adjacent: reading across a gap
    could hit addresses the device does not have and turn a good block into an exception.
    A block never exceeds the profile's per-read limit, and a 32-bit point is never split.
    """
    blocks: list[ReadBlock] = []
    for table in TABLES:
        limit = profile.max_bits_per_read if table in BIT_TABLES else profile.max_registers_per_read
        points = sorted((p for p in profile.points if p.table == table), key=lambda p: p.address)
        blocks.extend(_blocks_of_table(table, points, limit))
    return blocks


def _blocks_of_table(table: Table, points: Sequence[RegisterPoint], limit: int) -> list[ReadBlock]:
    blocks: list[ReadBlock] = []
    current: list[RegisterPoint] = []
    start = end = 0
    for point in points:
        point_end = point.address + point.register_count
        if current and point.address == end and point_end - start <= limit:
            current.append(point)
            end = point_end
            continue
        if current:
            blocks.append(ReadBlock(table, start, end - start, tuple(current)))
        current, start, end = [point], point.address, point_end
    if current:
        blocks.append(ReadBlock(table, start, end - start, tuple(current)))
    return blocks
