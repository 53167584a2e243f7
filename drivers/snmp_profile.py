"""SNMP device profiles: which OIDs of a PDU's MIB hold which canonical points.

A profile is data (see `drivers/profiles/apc-rpdu2.toml`): scalar points name one OID each;
tables name the columns of a MIB table, and their rows are found by walking the device, so a
24-outlet and a 48-outlet model of one family share a profile. Every row of a table becomes a
reading named `point.index` (`outlet_power.12`), labelled with the row's name where the MIB has
one. Raw values convert as value = raw × scale × 10^-digits + offset, where `digits` is either
fixed in the profile or read from a column of the device (PDU2-MIB gives each sensor its own
number of decimal digits). Nothing here touches the network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

from coolctl.drivers import profile_toml
from coolctl.drivers.profile_toml import ProfileChecker
from coolctl.model import CANONICAL_POINTS, Unit

ProfileError = profile_toml.ProfileError

TableKind = Literal["outlet", "branch", "phase", "inlet", "feed"]
TABLE_KINDS: Final[tuple[TableKind, ...]] = get_args(TableKind)

_OID: Final = re.compile(r"\.?([0-9]+(\.[0-9]+)*)")
_PROFILE_KEYS: Final = frozenset(
    {"name", "description", "protocol", "kind", "source", "unverified", "max_oids_per_request"}
)
_POINT_KEYS: Final = frozenset(
    {"name", "oid", "unit", "scale", "offset", "digits", "digits_oid", "min", "max", "invalid"}
)
_TABLE_KEYS: Final = frozenset(
    {"name", "index_prefix", "label_oid", "label_prefix", "column", "digits_prefix"}
)
_COLUMN_KEYS: Final = _POINT_KEYS | {"index_suffix"}
MAX_OIDS_PER_REQUEST: Final = 60

Oid = tuple[int, ...]


def parse_oid(text: str) -> Oid:
    """ "1.3.6.1.4.1.318" (a leading dot is allowed) as a tuple of ints."""
    match = _OID.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a numeric OID")
    return tuple(int(part) for part in match.group(1).split("."))


def format_oid(oid: Oid) -> str:
    return ".".join(str(part) for part in oid)


@dataclass(frozen=True, slots=True)
class Conversion:
    """How a raw integer becomes an engineering value, and which raw values mean nothing.

    `digits_oid` (a column for table points, an OID for scalars) is read once at discovery and
    overrides `digits`. `invalid` lists raw values a device sends for "not supported" (APC
    answers -1); they read `bad`, as do values outside `min`..`max`.
    """

    unit: Unit
    scale: float
    offset: float
    digits: int
    digits_oid: Oid | None
    minimum: float | None
    maximum: float | None
    invalid: frozenset[int]

    def convert(self, raw: int, digits: int | None = None) -> float:
        places = self.digits if digits is None else digits
        return raw * self.scale * 10.0**-places + self.offset


@dataclass(frozen=True, slots=True)
class ScalarPoint:
    """One canonical point at one OID."""

    name: str
    oid: Oid
    conversion: Conversion


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a table: cells at `oid.{table index_prefix}.{row}.{index_suffix}`."""

    name: str
    oid: Oid
    index_suffix: Oid
    conversion: Conversion


@dataclass(frozen=True, slots=True)
class Table:
    """A MIB table whose rows are outlets, branches (breakers), phases, inlets or feeds."""

    kind: TableKind
    index_prefix: Oid  # fixed leading index parts (PDU2-MIB's pduId), stripped from the row
    label_oid: Oid | None  # a column of names (DisplayString) for the rows
    label_prefix: Oid  # index parts between label_oid and the row (defaults to index_prefix)
    digits_prefix: Oid  # index parts between a column's digits_oid and the row
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class SnmpProfile:
    """A checked SNMP profile: scalar points and tables, with the MIB it was built from."""

    name: str
    description: str
    source: str
    unverified: str
    path: Path
    kind: str
    points: tuple[ScalarPoint, ...]
    tables: tuple[Table, ...]
    max_oids_per_request: int

    @property
    def point_names(self) -> tuple[str, ...]:
        """Canonical names this profile can read (table points without their index)."""
        names = [p.name for p in self.points]
        names += [c.name for t in self.tables for c in t.columns]
        return tuple(names)


def load_snmp_profile(name_or_path: str | Path) -> SnmpProfile:
    """Load and check a profile: a bare name ("apc-rpdu2") means a shipped one, else a path."""
    return profile_toml.load(name_or_path, "snmp", parse_snmp_profile)


def shipped_snmp_profiles() -> list[str]:
    return profile_toml.shipped("snmp")


def parse_snmp_profile(data: bytes, path: Path) -> SnmpProfile:
    return _Checker(path).profile(profile_toml.parse_document(data, path))


class _Checker(ProfileChecker):
    def profile(self, document: Mapping[str, Any]) -> SnmpProfile:
        self.no_unknown_keys(document, {"profile", "point", "table"}, "")
        header = self.table(document, "profile", "profile")
        self.no_unknown_keys(header, _PROFILE_KEYS, "profile")
        protocol = self.string(header, "protocol", "profile")
        if protocol != "snmp":
            raise self.fail("profile.protocol", f"must be 'snmp' for this driver, not {protocol!r}")
        kind = self.choice(header, "kind", "profile", ("pdu", "sensor"))
        limit = MAX_OIDS_PER_REQUEST
        if "max_oids_per_request" in header:
            limit = self.integer(header, "max_oids_per_request", "profile")
            if not 1 <= limit <= MAX_OIDS_PER_REQUEST:
                raise self.fail(
                    "profile.max_oids_per_request",
                    f"must be within 1..{MAX_OIDS_PER_REQUEST}, not {limit}",
                )
        raw_points = document.get("point", [])
        raw_tables = document.get("table", [])
        if not isinstance(raw_points, list) or not isinstance(raw_tables, list):
            raise self.fail("point", "[[point]] and [[table]] must be arrays of tables")
        if not raw_points and not raw_tables:
            raise self.fail("point", "missing: a profile needs a [[point]] or a [[table]]")
        points = tuple(self.scalar(raw, f"point[{i}]") for i, raw in enumerate(raw_points))
        self.no_duplicates(points)
        tables = tuple(self.mib_table(raw, f"table[{i}]") for i, raw in enumerate(raw_tables))
        columns = [c for t in tables for c in t.columns]
        self.no_duplicates(columns)
        for column in columns:
            if column.name in {p.name for p in points}:
                raise self.fail("table", f"{column.name} is both a scalar point and a column")
        return SnmpProfile(
            name=self.string(header, "name", "profile"),
            description=self.string(header, "description", "profile", default=""),
            source=self.string(header, "source", "profile"),
            unverified=self.string(header, "unverified", "profile", default=""),
            path=self.path,
            kind=kind,
            points=points,
            tables=tables,
            max_oids_per_request=limit,
        )

    def scalar(self, raw: object, key: str) -> ScalarPoint:
        if not isinstance(raw, dict):
            raise self.fail(key, f"must be a table, not {type(raw).__name__}")
        self.no_unknown_keys(raw, _POINT_KEYS, key)
        name = self.string(raw, "name", key)
        return ScalarPoint(name, self.oid(raw, "oid", key), self.conversion(raw, key, name))

    def mib_table(self, raw: object, key: str) -> Table:
        if not isinstance(raw, dict):
            raise self.fail(key, f"must be a table, not {type(raw).__name__}")
        self.no_unknown_keys(raw, _TABLE_KEYS, key)
        kind = self.choice(raw, "name", key, TABLE_KINDS)
        prefix = self.oid(raw, "index_prefix", key) if "index_prefix" in raw else ()
        raw_columns = raw.get("column")
        if not isinstance(raw_columns, list) or not raw_columns:
            raise self.fail(f"{key}.column", "missing: a table needs at least one [[column]]")
        columns = []
        for index, raw_column in enumerate(raw_columns):
            column_key = f"{key}.column[{index}]"
            if not isinstance(raw_column, dict):
                raise self.fail(column_key, f"must be a table, not {type(raw_column).__name__}")
            self.no_unknown_keys(raw_column, _COLUMN_KEYS, column_key)
            name = self.string(raw_column, "name", column_key)
            suffix: Oid = ()
            if "index_suffix" in raw_column:
                suffix = self.oid(raw_column, "index_suffix", column_key)
            columns.append(
                Column(
                    name,
                    self.oid(raw_column, "oid", column_key),
                    suffix,
                    self.conversion(raw_column, column_key, name),
                )
            )
        return Table(
            kind=kind,
            index_prefix=prefix,
            label_oid=self.oid(raw, "label_oid", key) if "label_oid" in raw else None,
            label_prefix=self.oid(raw, "label_prefix", key) if "label_prefix" in raw else prefix,
            digits_prefix=(
                self.oid(raw, "digits_prefix", key) if "digits_prefix" in raw else prefix
            ),
            columns=tuple(columns),
        )

    def conversion(self, raw: Mapping[str, Any], key: str, name: str) -> Conversion:
        spec = CANONICAL_POINTS.get(name)
        if spec is None:
            raise self.fail(f"{key}.name", f"{name!r} is not a canonical point name")
        unit = self.string(raw, "unit", key)
        if unit != spec.unit.value:
            raise self.fail(f"{key}.unit", f"{name} is measured in {spec.unit.value}, not {unit!r}")
        scale = self.number(raw, "scale", key, default=1.0)
        if scale == 0.0:
            raise self.fail(f"{key}.scale", "must be non-zero")
        digits = 0
        if "digits" in raw:
            digits = self.integer(raw, "digits", key)
            if not 0 <= digits <= 9:
                raise self.fail(f"{key}.digits", f"must be within 0..9, not {digits}")
        invalid = raw.get("invalid", [])
        if not isinstance(invalid, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in invalid
        ):
            raise self.fail(f"{key}.invalid", "must be a list of integers (raw values)")
        minimum = self.number(raw, "min", key) if "min" in raw else None
        maximum = self.number(raw, "max", key) if "max" in raw else None
        if minimum is not None and maximum is not None and minimum > maximum:
            raise self.fail(f"{key}.min", f"{minimum} is above max {maximum}")
        return Conversion(
            unit=spec.unit,
            scale=scale,
            offset=self.number(raw, "offset", key, default=0.0),
            digits=digits,
            digits_oid=self.oid(raw, "digits_oid", key) if "digits_oid" in raw else None,
            minimum=minimum,
            maximum=maximum,
            invalid=frozenset(invalid),
        )

    def oid(self, raw: Mapping[str, Any], name: str, key: str) -> Oid:
        text = self.string(raw, name, key)
        try:
            return parse_oid(text)
        except ValueError as exc:
            raise self.fail(f"{key}.{name}", str(exc)) from None
