"""Modbus profiles: loading and checking TOML, the register codec, and read planning."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coolctl.drivers.modbus_profile import (
    ModbusProfile,
    ProfileError,
    RegisterPoint,
    decode,
    encode,
    load_profile,
    plan_reads,
    shipped_profiles,
)
from coolctl.model import CANONICAL_POINTS, Unit

PROFILES_DIR = Path(__file__).resolve().parent.parent / "drivers" / "profiles"

INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}
NUMERIC_TYPES = ("int16", "uint16", "int32", "uint32", "float32")


def make_point(
    data_type: str = "uint16",
    *,
    word_order: str = "big",
    scale: float = 1.0,
    offset: float = 0.0,
    name: str = "supply_temperature",
    address: int = 0,
    table: str | None = None,
) -> RegisterPoint:
    return RegisterPoint(
        name=name,
        table=table or ("discrete" if data_type == "bool" else "input"),  # type: ignore[arg-type]
        address=address,
        data_type=data_type,  # type: ignore[arg-type]
        word_order=word_order,  # type: ignore[arg-type]
        scale=scale,
        offset=offset,
        unit=CANONICAL_POINTS[name].unit,
        writable=False,
        min=None,
        max=None,
    )


def make_profile(
    points: Sequence[RegisterPoint], max_registers: int = 125, max_bits: int = 2000
) -> ModbusProfile:
    return ModbusProfile(
        name="test",
        description="",
        path=Path("test.toml"),
        points=tuple(points),
        max_registers_per_read=max_registers,
        max_bits_per_read=max_bits,
        kind="cdu",
    )


# --------------------------------------------------------------------------------------------
# Shipped profiles


def test_shipped_profiles_are_listed() -> None:
    assert {"sim-cdu", "sim-pdu"} <= set(shipped_profiles())


def test_sim_cdu_loads_with_every_point_checked() -> None:
    profile = load_profile("sim-cdu")
    assert profile.name == "sim-cdu"
    assert profile.kind == "cdu"
    assert profile.path.name == "sim-cdu.toml"
    assert profile.max_registers_per_read == 125
    assert profile.max_bits_per_read == 2000
    assert len(profile.points) == 36
    for point in profile.points:
        assert point.unit is CANONICAL_POINTS[point.name].unit
    speed = profile.point("pump_speed_command")
    assert (speed.table, speed.address, speed.data_type) == ("holding", 0, "uint16")
    assert speed.writable and speed.min == 0.0 and speed.max == 1.0
    assert speed.scale == 0.001 and speed.offset == 0.0
    # the profile-wide word order applies where a point gives none
    assert profile.point("heat_removed").word_order == "big"
    assert profile.point("facility_return_temperature").word_order == "little"
    assert profile.point("primary_flow").register_count == 2
    assert profile.point("leak_detected").register_count == 1
    assert not profile.point("flow").writable
    with pytest.raises(KeyError):
        profile.point("no_such_point")


def test_sim_pdu_loads() -> None:
    profile = load_profile("sim-pdu")
    assert [p.name for p in profile.points] == ["power", "energy"]
    assert profile.kind == "pdu"
    energy = profile.point("energy")
    assert (energy.word_order, energy.scale, energy.unit) == ("little", 3600.0, Unit.JOULE)


def test_profile_by_path_equals_profile_by_name() -> None:
    by_name = load_profile("sim-cdu")
    by_path = load_profile(PROFILES_DIR / "sim-cdu.toml")
    by_string = load_profile(str(PROFILES_DIR / "sim-cdu.toml"))
    assert by_name.points == by_path.points == by_string.points


def test_unknown_shipped_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ProfileError, match=r"'sim-fan'.*sim-cdu, sim-pdu"):
        load_profile("sim-fan")


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ProfileError, match=r"absent\.toml: cannot read"):
        load_profile(path)


def test_relative_name_with_toml_suffix_is_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "local.toml").write_text(render(HEADER, [dict(GOOD_POINT)]))
    monkeypatch.chdir(tmp_path)
    assert load_profile("local.toml").points[0].name == "supply_temperature"


# --------------------------------------------------------------------------------------------
# Profile errors: the message names the file, the key path and what is wrong

HEADER: dict[str, Any] = {
    "name": "test",
    "description": "a test profile",
    "protocol": "modbus",
    "kind": "cdu",
    "word_order": "big",
    "max_registers_per_read": 125,
    "max_bits_per_read": 2000,
}
GOOD_POINT: dict[str, Any] = {
    "name": "supply_temperature",
    "table": "input",
    "address": 0,
    "type": "int16",
    "scale": 0.1,
    "unit": "celsius",
}
SETPOINT: dict[str, Any] = {
    "name": "pump_speed_command",
    "table": "holding",
    "address": 0,
    "type": "uint16",
    "scale": 0.001,
    "unit": "ratio",
    "writable": True,
    "min": 0.15,
    "max": 1.0,
}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return repr(value)


def render(
    header: Mapping[str, Any] | None, points: Sequence[Mapping[str, Any]], extra: str = ""
) -> str:
    lines = [extra]
    if header is not None:
        lines.append("[profile]")
        lines += [f"{key} = {toml_value(value)}" for key, value in header.items()]
    for point in points:
        lines.append("\n[[point]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in point.items()]
    return "\n".join(lines) + "\n"


def with_changes(base: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of `base` with keys changed; a value of None removes the key."""
    result = dict(base)
    for key, value in changes.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def point(**changes: Any) -> dict[str, Any]:
    return with_changes(GOOD_POINT, **changes)


def setpoint(**changes: Any) -> dict[str, Any]:
    return with_changes(SETPOINT, **changes)


FLOW = point(name="flow", address=1, type="uint16", unit="litres_per_minute")

BAD_PROFILES: list[tuple[str, Mapping[str, Any] | None, list[dict[str, Any]], str, str]] = [
    # id, header, points, key path, what the message must say
    (
        "unknown point key",
        HEADER,
        [point(), with_changes(FLOW, adress=3)],
        "point[1].adress",
        "unknown key",
    ),
    ("missing point key", HEADER, [point(type=None)], "point[0].type", "missing"),
    ("address not an int", HEADER, [point(address="3")], "point[0].address", "integer"),
    ("address a float", HEADER, [point(address=3.0)], "point[0].address", "integer"),
    ("address out of range", HEADER, [point(address=70000)], "point[0].address", "0..65535"),
    (
        "32-bit past the end",
        HEADER,
        [point(type="int32", address=65535)],
        "point[0].address",
        "past 65535",
    ),
    (
        "bad table",
        HEADER,
        [point(table="register")],
        "point[0].table",
        "holding|input|coil|discrete",
    ),
    (
        "bad type",
        HEADER,
        [point(type="int64")],
        "point[0].type",
        "int16|uint16|int32|uint32|float32|bool",
    ),
    (
        "bool on input",
        HEADER,
        [point(type="bool", scale=None)],
        "point[0].type",
        "coil or discrete",
    ),
    ("int16 on coil", HEADER, [point(table="coil")], "point[0].type", "holding or input"),
    (
        "bad word order",
        HEADER,
        [point(type="int32", word_order="middle")],
        "point[0].word_order",
        "big|little",
    ),
    (
        "bad default word order",
        with_changes(HEADER, word_order="mixed"),
        [point()],
        "profile.word_order",
        "big|little",
    ),
    ("wrong unit", HEADER, [point(unit="pascals")], "point[0].unit", "celsius"),
    ("unit not a unit", HEADER, [point(unit="degF")], "point[0].unit", "celsius"),
    (
        "unknown point name",
        HEADER,
        [point(name="supply_temp")],
        "point[0].name",
        "not a canonical point",
    ),
    (
        "writable input",
        HEADER,
        [point(writable=True, min=0.0, max=1.0)],
        "point[0].writable",
        "cannot be written",
    ),
    (
        "writable discrete",
        HEADER,
        [
            point(
                name="leak_detected",
                table="discrete",
                type="bool",
                scale=None,
                unit="boolean",
                writable=True,
            )
        ],
        "point[0].writable",
        "cannot be written",
    ),
    ("writable not bool", HEADER, [setpoint(writable="yes")], "point[0].writable", "true or false"),
    ("min above max", HEADER, [setpoint(min=0.9, max=0.1)], "point[0].min", "above max"),
    ("writable without min", HEADER, [setpoint(min=None)], "point[0].min", "needs min and max"),
    ("writable without max", HEADER, [setpoint(max=None)], "point[0].max", "needs min and max"),
    ("scale zero", HEADER, [point(scale=0)], "point[0].scale", "non-zero"),
    ("scale a bool", HEADER, [point(scale=True)], "point[0].scale", "number"),
    ("scale a string", HEADER, [point(scale="0.1")], "point[0].scale", "number"),
    ("offset nan", HEADER, [point(offset=math.nan)], "point[0].offset", "finite"),
    (
        "scale on bool",
        HEADER,
        [point(name="leak_detected", table="discrete", type="bool", unit="boolean")],
        "point[0].scale",
        "does not apply to bool",
    ),
    (
        "overlap",
        HEADER,
        [point(type="int32"), with_changes(FLOW, address=1)],
        "point[1].address",
        "overlaps supply_temperature",
    ),
    (
        "duplicate name",
        HEADER,
        [point(), point(address=5)],
        "point[1].name",
        "already defined by point[0]",
    ),
    (
        "unknown profile key",
        with_changes(HEADER, colour="blue"),
        [point()],
        "profile.colour",
        "unknown key",
    ),
    ("profile name missing", with_changes(HEADER, name=None), [point()], "profile.name", "missing"),
    ("profile missing", None, [point()], "profile", "missing"),
    (
        "wrong protocol",
        with_changes(HEADER, protocol="redfish"),
        [point()],
        "profile.protocol",
        "modbus",
    ),
    (
        "protocol missing",
        with_changes(HEADER, protocol=None),
        [point()],
        "profile.protocol",
        "missing",
    ),
    (
        "read limit too big",
        with_changes(HEADER, max_registers_per_read=200),
        [point()],
        "profile.max_registers_per_read",
        "1..125",
    ),
    (
        "bit limit zero",
        with_changes(HEADER, max_bits_per_read=0),
        [point()],
        "profile.max_bits_per_read",
        "1..2000",
    ),
    (
        "32-bit beyond read limit",
        with_changes(HEADER, max_registers_per_read=1),
        [point(type="float32", scale=None)],
        "point[0].type",
        "max_registers_per_read",
    ),
    ("no points", HEADER, [], "point", "at least one"),
]


@pytest.mark.parametrize(
    ("header", "points", "key_path", "problem"),
    [case[1:] for case in BAD_PROFILES],
    ids=[case[0] for case in BAD_PROFILES],
)
def test_profile_errors_name_file_key_and_fault(
    tmp_path: Path,
    header: Mapping[str, Any] | None,
    points: list[dict[str, Any]],
    key_path: str,
    problem: str,
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(render(header, points))
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key_path}: "), message
    assert problem in message, message
    assert isinstance(caught.value, ValueError)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = tmp_path / "top.toml"
    path.write_text(render(HEADER, [point()], extra='vendor = "acme"'))
    with pytest.raises(ProfileError, match=r"top.toml: vendor: unknown key"):
        load_profile(path)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.toml"
    path.write_text("[profile\nname = ")
    with pytest.raises(ProfileError, match=r"garbage.toml: not valid TOML"):
        load_profile(path)


def test_error_message_names_the_point_when_it_can(tmp_path: Path) -> None:
    path = tmp_path / "named.toml"
    path.write_text(render(HEADER, [point(), with_changes(FLOW, writable=True, min=0.0, max=1.0)]))
    with pytest.raises(
        ProfileError,
        match=r"point\[1\]\.writable: input points cannot be written \(point\[1\] \(flow\)\)",
    ):
        load_profile(path)


def test_minimal_point_takes_defaults(tmp_path: Path) -> None:
    path = tmp_path / "minimal.toml"
    header = {"name": "minimal", "protocol": "modbus", "kind": "sensor", "word_order": "little"}
    path.write_text(render(header, [point(scale=None, type="uint32")]))
    profile = load_profile(path)
    only = profile.points[0]
    assert (only.scale, only.offset, only.writable, only.min, only.max) == (
        1.0,
        0.0,
        False,
        None,
        None,
    )
    assert only.word_order == "little"
    assert profile.description == ""
    assert (profile.max_registers_per_read, profile.max_bits_per_read) == (125, 2000)


def test_integer_scale_is_accepted_as_float(tmp_path: Path) -> None:
    path = tmp_path / "intscale.toml"
    path.write_text(
        render(
            HEADER, [point(name="differential_pressure", type="uint16", scale=100, unit="pascals")]
        )
    )
    assert load_profile(path).points[0].scale == 100.0


# --------------------------------------------------------------------------------------------
# Codec: known vectors


@pytest.mark.parametrize(
    ("data_type", "word_order", "words", "value"),
    [
        ("uint16", "big", [0], 0.0),
        ("uint16", "big", [0xFFFF], 65535.0),
        ("int16", "big", [0xFFFF], -1.0),
        ("int16", "big", [0x8000], -32768.0),
        ("int16", "big", [0x7FFF], 32767.0),
        ("uint32", "big", [0x1234, 0x5678], 0x12345678),
        ("uint32", "little", [0x5678, 0x1234], 0x12345678),
        ("int32", "big", [0xFFFF, 0xFFFE], -2.0),
        ("int32", "little", [0xFFFE, 0xFFFF], -2.0),
        ("int32", "big", [0x8000, 0x0000], -(2.0**31)),
        ("float32", "big", [0x3F80, 0x0000], 1.0),
        ("float32", "little", [0x0000, 0x3F80], 1.0),
        ("float32", "big", [0xC148, 0x0000], -12.5),
        ("float32", "little", [0x0000, 0xC148], -12.5),
    ],
)
def test_known_vectors(data_type: str, word_order: str, words: list[int], value: float) -> None:
    point = make_point(data_type, word_order=word_order)
    assert decode(point, words) == value
    assert encode(point, value) == words


def test_sixteen_bit_types_ignore_word_order() -> None:
    assert decode(make_point("int16", word_order="little"), [0xFFFE]) == -2.0
    assert encode(make_point("uint16", word_order="little"), 513) == [513]


def test_bool_points() -> None:
    bit = make_point("bool", name="leak_detected")
    assert decode(bit, [True]) == 1.0
    assert decode(bit, [0]) == 0.0
    assert encode(bit, 1.0) == [1]
    assert encode(bit, 0) == [0]
    with pytest.raises(ValueError, match="0 or 1"):
        encode(bit, 0.5)


def test_scale_and_offset() -> None:
    celsius = make_point("int16", scale=0.1)
    assert decode(celsius, [215]) == pytest.approx(21.5)
    assert decode(celsius, [0xFFE0]) == pytest.approx(-3.2)
    assert encode(celsius, -3.2) == [0xFFE0]
    # a sensor that reports half-degrees above -40 °C
    shifted = make_point("uint16", scale=0.5, offset=-40.0)
    assert decode(shifted, [0]) == -40.0
    assert decode(shifted, [130]) == 25.0
    assert encode(shifted, 25.0) == [130]
    assert encode(shifted, 25.2) == [130]  # nearest count
    assert encode(shifted, 25.3) == [131]
    pdu = make_point("uint32", word_order="little", scale=3600.0, name="energy")
    assert decode(pdu, [1000, 0]) == 3_600_000.0
    assert encode(pdu, 3_600_000.0) == [1000, 0]
    ratio = make_point("uint16", scale=0.001, name="pump_speed_command")
    assert encode(ratio, 0.15) == [150]  # 0.15 / 0.001 is 149.99999999999997
    negative_scale = make_point("int16", scale=-0.1)
    assert decode(negative_scale, [10]) == pytest.approx(-1.0)
    assert encode(negative_scale, -1.0) == [10]


@pytest.mark.parametrize("data_type", ["int16", "uint16", "int32", "uint32"])
def test_encode_refuses_values_that_do_not_fit(data_type: str) -> None:
    low, high = INT_RANGES[data_type]
    point = make_point(data_type, scale=0.1)
    assert decode(point, encode(point, high * 0.1)) == pytest.approx(high * 0.1)
    with pytest.raises(ValueError, match=data_type):
        encode(point, (high + 1) * 0.1)
    with pytest.raises(ValueError, match=data_type):
        encode(point, (low - 1) * 0.1)


def test_encode_refuses_non_finite_and_float32_overflow() -> None:
    for data_type in NUMERIC_TYPES:
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(ValueError):
                encode(make_point(data_type), bad)
    with pytest.raises(ValueError, match="float32"):
        encode(make_point("float32"), 1e39)


@pytest.mark.parametrize(
    "words",
    [[0x7FC0, 0x0000], [0x7F80, 0x0000], [0xFF80, 0x0000], [0x7FFF, 0xFFFF]],
    ids=["nan", "inf", "-inf", "nan2"],
)
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_non_finite_floats_are_garbled(words: list[int], word_order: str) -> None:
    ordered = words if word_order == "big" else words[::-1]
    with pytest.raises(ValueError):
        decode(make_point("float32", word_order=word_order), ordered)


def test_decode_refuses_wrong_length_and_non_16_bit_words() -> None:
    with pytest.raises(ValueError, match="expected 2"):
        decode(make_point("uint32"), [1])
    with pytest.raises(ValueError, match="expected 1"):
        decode(make_point("uint16"), [1, 2])
    with pytest.raises(ValueError, match="16-bit"):
        decode(make_point("uint16"), [0x10000])
    with pytest.raises(ValueError, match="16-bit"):
        decode(make_point("int32"), [-1, 0])


# --------------------------------------------------------------------------------------------
# Codec: properties

word = st.integers(0, 0xFFFF)
word_orders = st.sampled_from(["big", "little"])
integer_types = st.sampled_from(["int16", "uint16", "int32", "uint32"])


@given(integer_types, word_orders, st.lists(word, min_size=2, max_size=2))
def test_integer_words_round_trip(data_type: str, word_order: str, words: list[int]) -> None:
    point = make_point(data_type, word_order=word_order)
    words = words[: point.register_count]
    assert encode(point, decode(point, words)) == words


@given(
    integer_types,
    word_orders,
    st.lists(word, min_size=2, max_size=2),
    st.sampled_from([0.1, 0.001, 0.5, 100.0, 3600.0, -0.1]),
    st.sampled_from([0.0, -40.0, 273.15, 1000.0]),
)
def test_scaled_integer_words_round_trip(
    data_type: str, word_order: str, words: list[int], scale: float, offset: float
) -> None:
    point = make_point(data_type, word_order=word_order, scale=scale, offset=offset)
    words = words[: point.register_count]
    assert encode(point, decode(point, words)) == words


@given(word_orders, word, word)
def test_float32_words_round_trip(word_order: str, high: int, low: int) -> None:
    point = make_point("float32", word_order=word_order)
    words = [high, low] if word_order == "big" else [low, high]
    as_float = struct.unpack(">f", struct.pack(">HH", high, low))[0]
    if not math.isfinite(as_float):
        with pytest.raises(ValueError):
            decode(point, words)
        return
    assert decode(point, words) == as_float
    assert encode(point, decode(point, words)) == words


@given(integer_types, word_orders, st.floats(-1e12, 1e12), st.sampled_from([0.1, 0.001, 1.0, 2.5]))
def test_encode_is_within_half_a_count(
    data_type: str, word_order: str, value: float, scale: float
) -> None:
    point = make_point(data_type, word_order=word_order, scale=scale, offset=-10.0)
    try:
        words = encode(point, value)
    except ValueError:
        low, high = INT_RANGES[data_type]
        raw = round((value + 10.0) / scale)
        assert not low <= raw <= high
        return
    assert abs(decode(point, words) - value) <= scale / 2 * (1 + 1e-9) + 1e-9 * abs(value)


@given(word_orders, st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_float32_values_round_trip(word_order: str, value: float) -> None:
    point = make_point("float32", word_order=word_order)
    assert decode(point, encode(point, value)) == value


# --------------------------------------------------------------------------------------------
# Read planning


def reg(address: int, data_type: str = "uint16", table: str = "input") -> RegisterPoint:
    """A point at `address`; names are irrelevant to planning, so they repeat."""
    return make_point(data_type, address=address, table=table)


def test_sim_cdu_needs_four_reads() -> None:
    blocks = plan_reads(load_profile("sim-cdu"))
    assert [(b.table, b.start, b.count) for b in blocks] == [
        ("holding", 0, 6),
        ("input", 0, 19),
        ("coil", 0, 2),
        ("discrete", 0, 13),
    ]
    assert [p.name for p in blocks[1].points][:3] == [
        "supply_temperature",
        "return_temperature",
        "flow",
    ]


def test_sim_pdu_needs_one_read() -> None:
    blocks = plan_reads(load_profile("sim-pdu"))
    assert [(b.table, b.start, b.count, len(b.points)) for b in blocks] == [("input", 0, 4, 2)]


def test_adjacent_points_merge_and_a_gap_splits() -> None:
    points = [reg(0), reg(1, "int32"), reg(3), reg(5), reg(6, "float32"), reg(20)]
    blocks = plan_reads(make_profile(points))
    assert [(b.start, b.count) for b in blocks] == [(0, 4), (5, 3), (20, 1)]


def test_points_are_planned_in_address_order_whatever_the_file_order() -> None:
    points = [reg(3), reg(1, "int32"), reg(0)]
    (block,) = plan_reads(make_profile(points))
    assert (block.start, block.count) == (0, 4)
    assert [p.address for p in block.points] == [0, 1, 3]


def test_tables_are_never_merged() -> None:
    points = [
        reg(0, table="holding"),
        reg(1, table="input"),
        make_point("bool", name="leak_detected", address=2, table="coil"),
    ]
    blocks = plan_reads(make_profile(points))
    assert [(b.table, b.start) for b in blocks] == [("holding", 0), ("input", 1), ("coil", 2)]


def test_read_limit_is_respected_and_32_bit_points_are_not_split() -> None:
    points = [reg(0), reg(1, "uint32"), reg(3, "uint32"), reg(5)]
    blocks = plan_reads(make_profile(points, max_registers=4))
    assert [(b.start, b.count) for b in blocks] == [(0, 3), (3, 3)]
    blocks = plan_reads(make_profile(points, max_registers=2))
    assert [(b.start, b.count) for b in blocks] == [(0, 1), (1, 2), (3, 2), (5, 1)]


def test_bit_limit_is_respected() -> None:
    bits = [
        make_point("bool", name="leak_detected", address=a, table="discrete") for a in range(10)
    ]
    blocks = plan_reads(make_profile(bits, max_bits=4))
    assert [(b.start, b.count) for b in blocks] == [(0, 4), (4, 4), (8, 2)]


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[RegisterPoint], int]:
    """Non-overlapping points of 1 or 2 registers with gaps of 0..2, and a read limit."""
    points: list[RegisterPoint] = []
    address = draw(st.integers(0, 5))
    for _ in range(draw(st.integers(0, 30))):
        data_type = draw(st.sampled_from(["uint16", "uint32"]))
        points.append(reg(address, data_type))
        address += points[-1].register_count + draw(st.sampled_from([0, 0, 0, 1, 2]))
    return points, draw(st.integers(2, 10))


def fewest_reads(points: Sequence[RegisterPoint], limit: int) -> int:
    """Minimum number of reads by dynamic programming over the sorted points."""
    ordered = sorted(points, key=lambda p: p.address)
    best = [0] + [10**9] * len(ordered)
    for end in range(1, len(ordered) + 1):
        for start in range(end - 1, -1, -1):
            if (
                start < end - 1
                and ordered[start].address + ordered[start].register_count
                != ordered[start + 1].address
            ):
                break
            span = (
                ordered[end - 1].address + ordered[end - 1].register_count - ordered[start].address
            )
            if span > limit:
                break
            best[end] = min(best[end], best[start] + 1)
    return best[-1]


@given(layouts())
def test_plan_covers_every_point_once_within_limits_with_fewest_reads(
    layout: tuple[list[RegisterPoint], int],
) -> None:
    points, limit = layout
    blocks = plan_reads(make_profile(points, max_registers=limit))
    planned = [p for block in blocks for p in block.points]
    assert sorted(p.address for p in planned) == sorted(p.address for p in points)
    for block in blocks:
        assert 1 <= block.count <= limit
        covered = block.start
        for p in block.points:
            assert p.address == covered  # contiguous, no gap read
            covered += p.register_count
        assert covered == block.end
    assert len(blocks) == fewest_reads(points, limit)
