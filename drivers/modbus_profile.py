"""Modbus device profiles: load and check a TOML register map, decode and encode registers,
and plan the reads that cover a profile.

A profile is data (see `drivers/profiles/sim-cdu.toml` for the format), so supporting a new
device model means writing a file, not code. Everything that can be wrong in such a file is
caught here, at load time, with the file and the key named, rather than as a puzzling value
in the middle of a control loop. Nothing in this module touches the network: the codec and the
read planner are pure so that they can be tested exhaustively.

Register maps as vendors write them (README, "Device profiles"): one bit of a status word read
as a bool (`bit`), a bool that reads 0 when true (`invert`), sentinels meaning "no sensor"
(`missing`), enumerations mapped onto canonical states (`states`), bytes swapped inside words
(`byte_swap`, beside `word_order`), the write function (`write_function`), a bit written alone
(`bit_write`), commands that do not read back (`momentary`), write-enable registers written
before a setpoint (`[[unlock]]`, a whole register or one `bit` of it), and fixed-point numbers
with N fractional bits (`fraction_bits`, rackmon's FLOAT "precision": value = raw / 2^N).
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
from coolctl.model import CANONICAL_POINTS, POINT_STATES, Unit

ProfileError = profile_toml.ProfileError  # the error of every profile loader

Table = Literal["holding", "input", "coil", "discrete"]
DataType = Literal["int16", "uint16", "int32", "uint32", "float32", "bool"]
WordOrder = Literal["big", "little"]
DeviceKind = Literal["cdu", "pdu", "server", "sensor"]
BitWrite = Literal["read_modify_write", "mask_write"]


TABLES: Final[tuple[Table, ...]] = get_args(Table)
DATA_TYPES: Final[tuple[DataType, ...]] = get_args(DataType)
WORD_ORDERS: Final[tuple[WordOrder, ...]] = get_args(WordOrder)
DEVICE_KINDS: Final[tuple[DeviceKind, ...]] = get_args(DeviceKind)
BIT_WRITES: Final[tuple[BitWrite, ...]] = get_args(BitWrite)
REGISTER_TABLES: Final[frozenset[str]] = frozenset({"holding", "input"})
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
        "byte_swap",
    }
)
_POINT_REQUIRED: Final = ("name", "table", "address", "type", "unit")
_POINT_OPTIONAL: Final = frozenset(
    {
        "word_order",
        "byte_swap",
        "scale",
        "offset",
        "writable",
        "min",
        "max",
        "bit",
        "invert",
        "missing",
        "states",
        "write_function",
        "bit_write",
        "momentary",
        "fraction_bits",
    }
)
_UNLOCK_KEYS: Final = frozenset({"table", "address", "value", "relock", "points", "bit"})
_SIXTEEN_BIT_TYPES: Final = frozenset({"int16", "uint16"})
_THIRTY_TWO_BIT_TYPES: Final = frozenset({"int32", "uint32", "float32"})


@dataclass(frozen=True, slots=True)
class RegisterPoint:
    """Where one canonical point lives on a Modbus device and how its raw value converts.

    Engineering value = raw * scale + offset, in the canonical unit of `name`. `word_order`
    says which 16-bit register holds the high half of a 32-bit value ("big": the first), and
    `byte_swap` whether the two bytes inside each register are swapped: together, all four
    orders of a 32-bit value. A bool is either a coil/discrete bit, or bit `bit` (0 = least
    significant) of a 16-bit holding/input register. `missing` holds raw values (the unsigned
    integer of the register(s), after word order and byte swap) that mean "no sensor";
    `states` maps raw codes to the canonical codes of an enumerated point. A fixed-point
    integer with `fraction_bits` N is divided by 2^N before scale and offset apply.
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
    bit: int | None = None
    invert: bool = False
    missing: frozenset[int] = frozenset()
    states: tuple[tuple[int, int], ...] = ()  # (raw code, canonical code), in profile order
    byte_swap: bool = False
    write_function: int | None = None  # 6 or 16; None: 6 for one register, 16 for two
    bit_write: BitWrite = "read_modify_write"
    momentary: bool = False  # a command the device clears itself: written, never read back
    fraction_bits: int = 0  # fixed point: the integer counts 2^-fraction_bits (before scale)

    @property
    def register_count(self) -> int:
        """Registers (or bits) this point occupies: 2 for 32-bit types, else 1."""
        return 2 if self.data_type in _THIRTY_TWO_BIT_TYPES else 1

    @property
    def is_bit(self) -> bool:
        """Whether the value is a bool (a coil/discrete bit, or one bit of a register)."""
        return self.data_type == "bool"

    @property
    def in_register(self) -> bool:
        """Whether the point is read from a holding/input register (bits of one included)."""
        return self.table in REGISTER_TABLES

    @property
    def is_state(self) -> bool:
        return self.unit is Unit.STATE

    @property
    def function_for_write(self) -> int:
        """The function code a write of this point uses: 5 for a coil, else 6 or 16."""
        if self.table == "coil":
            return 5
        if self.write_function is not None:
            return self.write_function
        return 16 if self.register_count == 2 else 6

    def canonical_state(self, raw: int) -> int | None:
        """The canonical code of a raw code; None if the raw code means no known state."""
        if not self.states:
            enum_type = POINT_STATES.get(self.name)
            valid = enum_type is None or raw in {member.value for member in enum_type}
            return raw if valid else None
        for raw_code, code in self.states:
            if raw_code == raw:
                return code
        return None

    def raw_state(self, code: int) -> int | None:
        """The raw code that writes a canonical state; None if the device has none for it."""
        if not self.states:
            return code if self.canonical_state(code) is not None else None
        for raw_code, canonical in self.states:
            if canonical == code:
                return raw_code
        return None


@dataclass(frozen=True, slots=True)
class Unlock:
    """A write-enable write: `value` written to `table` `address` before a write to any point
    of `points`, and `relock` (if set) written after it. With `bit`, the write-enable is that
    one bit of a holding register (value and relock are 0 or 1), set by read-modify-write so
    that the register's other bits (settings) are kept."""

    table: Table
    address: int
    value: int
    relock: int | None
    points: frozenset[str]
    bit: int | None = None


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
    unlocks: tuple[Unlock, ...] = ()

    def point(self, name: str) -> RegisterPoint:
        """The point called `name`; KeyError if the profile has none."""
        for point in self.points:
            if point.name == name:
                return point
        raise KeyError(f"profile {self.name!r} has no point {name!r}")

    def unlocks_for(self, name: str) -> tuple[Unlock, ...]:
        """The write-enable writes a write of point `name` needs, in profile order."""
        return tuple(unlock for unlock in self.unlocks if name in unlock.points)


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
        self.no_unknown_keys(document, {"profile", "point", "unlock"}, "")
        header = self.table(document, "profile", "profile")
        self.no_unknown_keys(header, _PROFILE_KEYS, "profile")
        protocol = self.string(header, "protocol", "profile")
        if protocol != "modbus":
            raise self.fail(
                "profile.protocol", f"must be 'modbus' for this driver, not {protocol!r}"
            )
        kind = self.choice(header, "kind", "profile", DEVICE_KINDS)
        default_order = self.choice(header, "word_order", "profile", WORD_ORDERS, "big")
        default_swap = self.boolean(header, "byte_swap", "profile", default=False)
        max_registers = self.limit(header, "max_registers_per_read", MODBUS_MAX_REGISTERS_PER_READ)
        max_bits = self.limit(header, "max_bits_per_read", MODBUS_MAX_BITS_PER_READ)
        raw_points = document.get("point")
        if not isinstance(raw_points, list) or not raw_points:
            raise self.fail("point", "missing: a profile needs at least one [[point]] table")
        points = tuple(
            self.point(raw, f"point[{index}]", default_order, default_swap)
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
            unlocks=self.unlocks(document.get("unlock", []), points),
        )

    def point(
        self, raw: object, key: str, default_order: WordOrder, default_swap: bool
    ) -> RegisterPoint:
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
        data_type: DataType = self.choice(raw, "type", key, DATA_TYPES)
        bit = self.bit(raw, key, data_type, table)
        if bit is not None:
            data_type = "bool"  # one bit of a 16-bit register is read as a bool
        else:
            self.type_fits_table(key, data_type, table)
        unit = self.string(raw, "unit", key)
        if unit != spec.unit.value:
            raise self.fail(f"{key}.unit", f"{name} is measured in {spec.unit.value}, not {unit!r}")
        if data_type == "bool" and spec.unit is not Unit.BOOLEAN:
            raise self.fail(
                f"{key}.type", f"a bool reads 0 or 1, but {name} is measured in {spec.unit.value}"
            )
        writable = self.boolean(raw, "writable", key, default=False)
        if writable and table not in WRITABLE_TABLES:
            raise self.fail(f"{key}.writable", f"{table} points cannot be written ({label})")
        if data_type == "bool":
            for key_not_for_bits in ("scale", "offset", "word_order", "byte_swap"):
                if key_not_for_bits in raw:
                    raise self.fail(f"{key}.{key_not_for_bits}", "does not apply to bool points")
        scale = self.number(raw, "scale", key, default=1.0)
        if scale == 0.0 or not math.isfinite(scale):
            raise self.fail(f"{key}.scale", f"must be finite and non-zero, not {scale}")
        states = self.states(raw, key, name, spec.unit, data_type)
        numeric_setpoint = writable and data_type != "bool" and spec.unit is not Unit.STATE
        minimum, maximum = self.bounds(raw, key, label, numeric_setpoint)
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
            bit=bit,
            invert=self.invert(raw, key, data_type),
            missing=self.missing(raw, key, data_type, table),
            states=states,
            byte_swap=False
            if data_type == "bool"
            else self.boolean(raw, "byte_swap", key, default=default_swap),
            write_function=self.write_function(raw, key, writable, table, data_type),
            bit_write=self.bit_write(raw, key, writable, bit),
            momentary=self.momentary(raw, key, writable),
            fraction_bits=self.fraction_bits(raw, key, data_type, states),
        )
        if point.address + point.register_count - 1 > MODBUS_MAX_ADDRESS:
            raise self.fail(f"{key}.address", f"{data_type} at {point.address} runs past 65535")
        return point

    # --- the keys of register maps as vendors write them

    def bit(self, raw: Mapping[str, Any], key: str, data_type: str, table: str) -> int | None:
        if "bit" not in raw:
            return None
        bit = self.integer(raw, "bit", key)
        if not 0 <= bit <= 15:
            raise self.fail(f"{key}.bit", f"must be within 0..15 (a 16-bit register), not {bit}")
        if table not in REGISTER_TABLES:
            raise self.fail(
                f"{key}.bit", f"applies to holding or input registers; {table} values are bits"
            )
        if data_type not in ("bool", *_SIXTEEN_BIT_TYPES):
            raise self.fail(
                f"{key}.bit",
                f"applies to one 16-bit register (bool, int16, uint16), not {data_type}",
            )
        return bit

    def invert(self, raw: Mapping[str, Any], key: str, data_type: str) -> bool:
        invert = self.boolean(raw, "invert", key, default=False)
        if "invert" in raw and data_type != "bool":
            raise self.fail(
                f"{key}.invert",
                f"applies to bool points (a bit, or a coil/discrete), not {data_type}",
            )
        return invert

    def missing(
        self, raw: Mapping[str, Any], key: str, data_type: str, table: str
    ) -> frozenset[int]:
        if "missing" not in raw:
            return frozenset()
        if table in BIT_TABLES:
            raise self.fail(f"{key}.missing", f"a {table} bit has no value that means no sensor")
        values = raw["missing"]
        if not isinstance(values, list) or not values:
            raise self.fail(f"{key}.missing", f"must be a list of raw values, not {values!r}")
        width = 32 if data_type in _THIRTY_TWO_BIT_TYPES else 16
        found: set[int] = set()
        for index, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(f"{key}.missing[{index}]", f"must be an integer, not {value!r}")
            if not 0 <= value < 2**width:
                raise self.fail(
                    f"{key}.missing[{index}]",
                    f"{value} is not a raw {width}-bit value (0..0x{2**width - 1:X}); write"
                    " 0x8000, not -32768",
                )
            found.add(value)
        return frozenset(found)

    def states(
        self, raw: Mapping[str, Any], key: str, name: str, unit: Unit, data_type: str
    ) -> tuple[tuple[int, int], ...]:
        if "states" not in raw:
            return ()
        enum_type = POINT_STATES.get(name)
        if unit is not Unit.STATE or enum_type is None:
            raise self.fail(
                f"{key}.states",
                f"applies to enumerated points (unit state); {name} is measured in {unit.value}",
            )
        if data_type not in _INTEGER_RANGES:
            raise self.fail(f"{key}.states", f"needs an integer type, not {data_type}")
        for not_for_states in ("scale", "offset"):
            if not_for_states in raw:
                raise self.fail(f"{key}.{not_for_states}", "does not apply to a point with states")
        table = raw["states"]
        if not isinstance(table, dict) or not table:
            raise self.fail(f"{key}.states", 'must be a table of raw code = "state name"')
        names = {member.name.lower(): member.value for member in enum_type}
        low, high = _INTEGER_RANGES[data_type]
        pairs: list[tuple[int, int]] = []
        seen: dict[str, str] = {}
        for raw_key, state in table.items():
            where = f"{key}.states.{raw_key}"
            try:
                code = int(raw_key, 0)
            except ValueError:
                raise self.fail(where, "a raw code must be an integer (42, 0x8000)") from None
            if not low <= code <= high:
                raise self.fail(where, f"raw code {code} does not fit {data_type}")
            if not isinstance(state, str) or state not in names:
                raise self.fail(
                    where, f"must name a state of {name} ({', '.join(names)}), not {state!r}"
                )
            if state in seen:
                raise self.fail(where, f"{state} is already raw code {seen[state]}")
            seen[state] = raw_key
            pairs.append((code, names[state]))
        return tuple(pairs)

    def write_function(
        self, raw: Mapping[str, Any], key: str, writable: bool, table: str, data_type: str
    ) -> int | None:
        if "write_function" not in raw:
            return None
        function = self.integer(raw, "write_function", key)
        if not writable or table != "holding":
            raise self.fail(f"{key}.write_function", "applies to writable holding registers")
        if function not in (6, 16):
            raise self.fail(f"{key}.write_function", f"must be 6 or 16, not {function}")
        if function == 6 and data_type in _THIRTY_TWO_BIT_TYPES:
            raise self.fail(
                f"{key}.write_function", f"6 writes one register; {data_type} takes two (use 16)"
            )
        return function

    def bit_write(
        self, raw: Mapping[str, Any], key: str, writable: bool, bit: int | None
    ) -> BitWrite:
        if "bit_write" in raw and not (writable and bit is not None):
            raise self.fail(f"{key}.bit_write", "applies to writable points with a bit")
        return self.choice(raw, "bit_write", key, BIT_WRITES, "read_modify_write")

    def fraction_bits(
        self,
        raw: Mapping[str, Any],
        key: str,
        data_type: DataType,
        states: tuple[tuple[int, int], ...],
    ) -> int:
        """N fractional bits of a fixed-point integer; refused where the raw value is no
        integer count (bool, float32) or a code (states), and where N leaves no integer bit."""
        if "fraction_bits" not in raw:
            return 0
        bits = self.integer(raw, "fraction_bits", key)
        if data_type not in _INTEGER_RANGES:
            raise self.fail(f"{key}.fraction_bits", f"applies to integer types, not {data_type}")
        if states:
            raise self.fail(f"{key}.fraction_bits", "does not apply to a point with states")
        width = 16 if data_type in _SIXTEEN_BIT_TYPES else 32
        if not 0 <= bits < width:
            raise self.fail(
                f"{key}.fraction_bits", f"must be within 0..{width - 1} for {data_type}, not {bits}"
            )
        return bits

    def momentary(self, raw: Mapping[str, Any], key: str, writable: bool) -> bool:
        momentary = self.boolean(raw, "momentary", key, default=False)
        if momentary and not writable:
            raise self.fail(f"{key}.momentary", "applies to writable points")
        return momentary

    def unlocks(self, raw: object, points: Sequence[RegisterPoint]) -> tuple[Unlock, ...]:
        if not isinstance(raw, list):
            raise self.fail("unlock", "must be an array of [[unlock]] tables")
        writable = [point.name for point in points if point.writable]
        unlocks = []
        for index, entry in enumerate(raw):
            key = f"unlock[{index}]"
            if not isinstance(entry, dict):
                raise self.fail(key, f"must be a table, not {type(entry).__name__}")
            self.no_unknown_keys(entry, _UNLOCK_KEYS, key)
            table: Table = self.choice(entry, "table", key, ("holding", "coil"))
            bit = self.unlock_bit(entry, key, table)
            limit = 1 if table == "coil" or bit is not None else 0xFFFF
            values: list[int | None] = []
            for name in ("value", "relock"):
                if name not in entry:
                    if name == "value":
                        raise self.fail(f"{key}.value", "missing: the raw value that unlocks")
                    values.append(None)
                    continue
                value = self.integer(entry, name, key)
                if not 0 <= value <= limit:
                    raise self.fail(f"{key}.{name}", f"must be within 0..{limit}, not {value}")
                values.append(value)
            names = entry.get("points", writable)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise self.fail(f"{key}.points", "must be a list of point names")
            for name in names:
                if name not in writable:
                    raise self.fail(f"{key}.points", f"{name!r} is not a writable point here")
            unlock_value, relock = values
            assert unlock_value is not None
            unlocks.append(
                Unlock(table, self.address(entry, key), unlock_value, relock, frozenset(names), bit)
            )
        return tuple(unlocks)

    def unlock_bit(self, entry: Mapping[str, Any], key: str, table: str) -> int | None:
        if "bit" not in entry:
            return None
        bit = self.integer(entry, "bit", key)
        if table != "holding":
            raise self.fail(f"{key}.bit", f"applies to a holding register, not a {table}")
        if not 0 <= bit <= 15:
            raise self.fail(f"{key}.bit", f"must be within 0..15, not {bit}")
        return bit

    # --- checks across points

    def no_overlaps(self, points: Sequence[RegisterPoint]) -> None:
        """Refuse points sharing an address, except distinct bits of one register."""
        indexed = sorted(
            enumerate(points), key=lambda item: (item[1].table, item[1].address, item[1].bit or 0)
        )
        for (_, before), (index, after) in itertools.pairwise(indexed):
            last_address = before.address + before.register_count - 1
            if before.table != after.table or after.address > last_address:
                continue
            both_bits = before.bit is not None and after.bit is not None
            if both_bits and before.address == after.address and before.bit != after.bit:
                continue
            where = f"{after.table} {after.address}"
            if both_bits:
                raise self.fail(
                    f"point[{index}].bit",
                    f"{after.name} and {before.name} both use bit {after.bit} of {where}",
                )
            raise self.fail(
                f"point[{index}].address",
                f"{after.name} at {where} overlaps {before.name} "
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
                raise self.fail(
                    f"{key}.type",
                    f"bool needs a coil or discrete table, not {table} (or `bit` for one bit of"
                    " a register)",
                )
            raise self.fail(
                f"{key}.type", f"{data_type} needs a holding or input table, not {table}"
            )


# --------------------------------------------------------------------------------------------
# Codec


def is_missing(point: RegisterPoint, words_or_bits: Sequence[int]) -> bool:
    """Whether the raw registers hold one of the point's "no sensor" values (`missing`)."""
    if not point.missing or len(words_or_bits) != point.register_count:
        return False
    if point.bit is not None:
        return words_or_bits[0] in point.missing  # the whole status word is a sentinel
    try:
        raw = int.from_bytes(_words_to_bytes(point, words_or_bits), "big")
    except ValueError:
        return False
    return raw in point.missing


def decode(point: RegisterPoint, words_or_bits: Sequence[int]) -> float:
    """Raw registers (or bits) of one point to its engineering value.

    Raises ValueError for a reply that cannot be right: the wrong number of words, a word
    outside 0..65535, a float that is NaN or infinite (what a garbled frame or a broken
    sensor shows as), or a raw code that is no state of an enumerated point. A `missing`
    sentinel is not decoded here: ask `is_missing` first.
    """
    if len(words_or_bits) != point.register_count:
        raise ValueError(
            f"{point.name}: expected {point.register_count} value(s), got {len(words_or_bits)}"
        )
    if point.is_bit:
        word = words_or_bits[0]
        if point.bit is not None:
            if not 0 <= word <= 0xFFFF:
                raise ValueError(f"{point.name}: register value {word} is not 16-bit")
            word = (word >> point.bit) & 1
        value = 1.0 if word else 0.0
        return 1.0 - value if point.invert else value
    raw = struct.unpack(_STRUCT_FORMATS[point.data_type], _words_to_bytes(point, words_or_bits))[0]
    if not math.isfinite(raw):
        raise ValueError(f"{point.name}: {point.data_type} reads {raw}")
    if point.is_state:
        code = point.canonical_state(int(raw))
        if code is None:
            raise ValueError(f"{point.name}: raw code {raw} is no known state")
        return float(code)
    if point.fraction_bits:
        raw = raw / (1 << point.fraction_bits)
    return float(raw) * point.scale + point.offset


def encode(point: RegisterPoint, value: float) -> list[int]:
    """An engineering value to the raw registers (or bit) of one point.

    Integer types round to the nearest count. Raises ValueError when the value is not finite
    or its raw form does not fit the type, so that nothing ever wraps around on the wire. For
    a bit of a register this is the bit (0 or 1) as the device holds it: `set_bit` puts it in
    the register's word.
    """
    if not math.isfinite(value):
        raise ValueError(f"{point.name}: cannot encode {value}")
    if point.is_bit:
        if value not in (0.0, 1.0):
            raise ValueError(f"{point.name}: a bool takes 0 or 1, not {value}")
        return [1 - int(value) if point.invert else int(value)]
    if point.is_state:
        raw_code = point.raw_state(round(value)) if value == round(value) else None
        if raw_code is None:
            raise ValueError(f"{point.name}: {value} is no state this device can be set to")
        raw: float = raw_code
    else:
        raw = (value - point.offset) / point.scale * (1 << point.fraction_bits)
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
    if point.byte_swap:
        packed = _swap_bytes(packed)
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]
    return words if point.word_order == "big" else words[::-1]


def set_bit(point: RegisterPoint, word: int, bit_value: int) -> int:
    """The register word with the point's bit set to `bit_value` (from `encode`)."""
    assert point.bit is not None
    mask = 1 << point.bit
    return (word & ~mask & 0xFFFF) | (mask if bit_value else 0)


def _swap_bytes(packed: bytes) -> bytes:
    return b"".join(packed[i : i + 2][::-1] for i in range(0, len(packed), 2))


def _words_to_bytes(point: RegisterPoint, words: Sequence[int]) -> bytes:
    for word in words:
        if not 0 <= word <= 0xFFFF:
            raise ValueError(f"{point.name}: register value {word} is not 16-bit")
    ordered = words if point.word_order == "big" else words[::-1]
    packed = b"".join(word.to_bytes(2, "big") for word in ordered)
    return _swap_bytes(packed) if point.byte_swap else packed


# --------------------------------------------------------------------------------------------
# Read planning


def plan_reads(profile: ModbusProfile) -> list[ReadBlock]:
    """The fewest read requests that fetch every point of the profile.

    Points of one table merge into a block only when they are adjacent: reading across a gap
    could hit addresses the device does not have and turn a good block into an exception.
    Several bits of one register (several points) are read once.
    A block never exceeds the profile's per-read limit, and a 32-bit point is never split.
    """
    blocks: list[ReadBlock] = []
    for table in TABLES:
        limit = profile.max_bits_per_read if table in BIT_TABLES else profile.max_registers_per_read
        points = sorted(
            (p for p in profile.points if p.table == table), key=lambda p: (p.address, p.bit or 0)
        )
        blocks.extend(_blocks_of_table(table, points, limit))
    return blocks


def _blocks_of_table(table: Table, points: Sequence[RegisterPoint], limit: int) -> list[ReadBlock]:
    blocks: list[ReadBlock] = []
    current: list[RegisterPoint] = []
    start = end = 0
    for point in points:
        point_end = point.address + point.register_count
        if current and point.address <= end and max(end, point_end) - start <= limit:
            current.append(point)  # adjacent, or another bit of a register already read
            end = max(end, point_end)
            continue
        if current:
            blocks.append(ReadBlock(table, start, end - start, tuple(current)))
        current, start, end = [point], point.address, point_end
    if current:
        blocks.append(ReadBlock(table, start, end - start, tuple(current)))
    return blocks
