"""Register maps as vendors write them: every profile key, driver against simulator.

The driver (coolctl.drivers) and the simulated device (coolctl.simulators.modbus_server) each
implement the keys on their own; these tests run one against the other over real loopback TCP,
so that a misreading on either side shows. Keys: bit (several bits of one register, read once),
invert, missing, states, byte_swap with word_order (all four 32-bit orders), write_function,
bit_write (read-modify-write and mask write), momentary, [[unlock]]. Profiles that contradict
themselves are refused at load, naming the file and the key.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient

from coolctl.drivers.modbus import ModbusDevice, WriteError
from coolctl.drivers.modbus_profile import (
    ProfileError,
    RegisterPoint,
    decode,
    encode,
    is_missing,
    load_profile,
    plan_reads,
    set_bit,
)
from coolctl.model import CduControlMode, Quality, Unit
from coolctl.simulators.modbus_server import (
    MappedPoint,
    ModbusDeviceServer,
    decode_words,
    encode_value,
)

UNIT_ID = 7

VENDOR_MAP = """
[profile]
name = "vendor-test"
protocol = "modbus"
kind = "cdu"

[[point]]
name = "pump_running"
table = "input"
address = 100
type = "uint16"
bit = 1
unit = "boolean"

[[point]]
name = "standby_pump_active"
table = "input"
address = 100
type = "bool"
bit = 2
unit = "boolean"

[[point]]
name = "pump_1_fault"
table = "input"
address = 100
type = "bool"
bit = 15
invert = true
unit = "boolean"

[[point]]
name = "dew_point"
table = "input"
address = 110
type = "int16"
scale = 0.1
missing = [0x7FFF, 0x8000]
unit = "celsius"

[[point]]
name = "room_temperature"
table = "input"
address = 111
type = "int16"
scale = 0.1
byte_swap = true
missing = [0xFFFF]
unit = "celsius"

[[point]]
name = "supply_temperature"
table = "input"
address = 120
type = "float32"
word_order = "big"
unit = "celsius"

[[point]]
name = "return_temperature"
table = "input"
address = 122
type = "float32"
word_order = "little"
unit = "celsius"

[[point]]
name = "facility_supply_temperature"
table = "input"
address = 124
type = "float32"
word_order = "big"
byte_swap = true
unit = "celsius"

[[point]]
name = "facility_return_temperature"
table = "input"
address = 126
type = "float32"
word_order = "little"
byte_swap = true
unit = "celsius"

[[point]]
name = "heat_removed"
table = "input"
address = 128
type = "int32"
word_order = "little"
byte_swap = true
unit = "watts"

[[point]]
name = "leak_detected"
table = "discrete"
address = 0
type = "bool"
invert = true
unit = "boolean"

[[point]]
name = "cdu_run_command"
table = "holding"
address = 200
type = "bool"
bit = 0
writable = true
unit = "boolean"

[[point]]
name = "cdu_remote"
table = "holding"
address = 200
type = "bool"
bit = 5
unit = "boolean"

[[point]]
name = "isolation_valve_command"
table = "holding"
address = 201
type = "uint16"
bit = 15
writable = true
bit_write = "mask_write"
write_function = 16
unit = "boolean"

[[point]]
name = "cdu_control_mode"
table = "holding"
address = 300
type = "uint16"
writable = true
write_function = 16
unit = "state"

[point.states]
"0x0001" = "manual"
"0x0002" = "auto_flow"
"0x0004" = "auto_flow_temperature"
"0x8000" = "stopped"

[[point]]
name = "supply_temperature_setpoint"
table = "holding"
address = 301
type = "int16"
scale = 0.1
writable = true
write_function = 6
min = 15.0
max = 45.0
unit = "celsius"

[[point]]
name = "flow_setpoint"
table = "holding"
address = 302
type = "uint32"
word_order = "little"
byte_swap = true
scale = 0.1
writable = true
min = 0.0
max = 500.0
unit = "litres_per_minute"

[[point]]
name = "alarm_acknowledge"
table = "coil"
address = 0
type = "bool"
writable = true
momentary = true
unit = "boolean"

[[unlock]]
table = "holding"
address = 399
value = 0xA5A5
points = ["supply_temperature_setpoint"]

[[unlock]]
table = "coil"
address = 5
value = 1
relock = 0
points = ["flow_setpoint"]
"""

READ_VALUES: dict[str, float] = {
    "pump_running": 1.0,
    "standby_pump_active": 0.0,
    "pump_1_fault": 1.0,
    "dew_point": -3.2,
    "room_temperature": 23.4,
    "supply_temperature": 31.25,
    "return_temperature": 38.5,
    "facility_supply_temperature": 18.75,
    "facility_return_temperature": -4.125,
    "heat_removed": -123_456.0,
    "leak_detected": 1.0,
    "cdu_run_command": 0.0,
    "cdu_remote": 1.0,
    "isolation_valve_command": 1.0,
    "cdu_control_mode": float(CduControlMode.AUTO_FLOW),
    "supply_temperature_setpoint": 30.0,
    "flow_setpoint": 150.0,
}


class Store:
    """The simulated device's point store: values, and a log of the writes it accepted."""

    def __init__(self, values: Mapping[str, float]) -> None:
        self.values = dict(values)
        self.writes: list[tuple[str, float]] = []

    def read_points(self) -> Mapping[str, float]:
        return self.values

    def write_point(self, name: str, value: float) -> None:
        self.writes.append((name, value))
        self.values[name] = value


@pytest.fixture
def vendor_map(tmp_path: Path) -> Path:
    path = tmp_path / "vendor-test.toml"
    path.write_text(VENDOR_MAP)
    return path


@asynccontextmanager
async def served(
    path: Path, store: Store
) -> AsyncIterator[tuple[ModbusDeviceServer, ModbusDevice]]:
    server = ModbusDeviceServer(path, store, unit_id=UNIT_ID, refresh_interval_s=3600)
    await server.start()
    device = ModbusDevice(
        rack="r01",
        device="cdu1",
        host="127.0.0.1",
        port=server.port,
        unit_id=UNIT_ID,
        profile=load_profile(path),
        timeout_s=2.0,
    )
    try:
        yield server, device
    finally:
        await device.close()
        await server.stop()


def values_of(readings: list) -> dict[str, tuple[float | None, Quality]]:  # type: ignore[type-arg]
    return {r.point.name: (r.value, r.quality) for r in readings}


# --------------------------------------------------------------------------------------------
# Reads


@pytest.mark.asyncio
async def test_every_key_reads_back_what_the_simulator_serves(vendor_map: Path) -> None:
    async with served(vendor_map, Store(READ_VALUES)) as (_, device):
        got = values_of(await device.poll())
    for name, expected in READ_VALUES.items():
        value, quality = got[name]
        assert quality is Quality.GOOD, name
        assert value == pytest.approx(expected, abs=0.051), name


@pytest.mark.asyncio
async def test_bits_of_one_register_are_one_read(vendor_map: Path) -> None:
    profile = load_profile(vendor_map)
    blocks = plan_reads(profile)
    status = [b for b in blocks if b.table == "input" and b.start == 100]
    assert len(status) == 1 and status[0].count == 1
    assert {p.name for p in status[0].points} == {
        "pump_running",
        "standby_pump_active",
        "pump_1_fault",
    }
    async with served(vendor_map, Store(READ_VALUES)) as (server, device):
        await device.poll()
        assert device.link.requests == len(blocks)
        # run (bit 1) set, standby (bit 2) clear, the fault input (bit 15) inverted: 0 = fault
        assert server.registers("pump_running") == [0b10]


@pytest.mark.asyncio
async def test_a_sentinel_reads_missing_never_a_number(vendor_map: Path) -> None:
    store = Store({**READ_VALUES, "dew_point": math.nan, "room_temperature": math.nan})
    async with served(vendor_map, store) as (server, device):
        got = values_of(await device.poll())
        assert server.registers("dew_point") == [0x7FFF]
        assert server.registers("room_temperature") == [0xFFFF]
        assert got["dew_point"] == (None, Quality.MISSING)
        assert got["room_temperature"] == (None, Quality.MISSING)
        assert device.stats.errors_by_kind["sensor_missing"] == 2
        assert device.stats.consecutive_failures == 0  # a missing sensor is no link failure
        store.values["dew_point"] = 11.5
        server.refresh()
        got = values_of(await device.poll())
    assert got["dew_point"] == (pytest.approx(11.5), Quality.GOOD)


@pytest.mark.asyncio
async def test_a_raw_code_that_is_no_state_is_bad(vendor_map: Path) -> None:
    async with served(vendor_map, Store(READ_VALUES)) as (server, device):
        server._bank.load(server._by_name["cdu_control_mode"], [0x0003])  # two modes at once
        got = values_of(await device.poll())
    assert got["cdu_control_mode"] == (None, Quality.BAD)


# --------------------------------------------------------------------------------------------
# Writes


@pytest.mark.asyncio
async def test_states_write_the_device_code_and_read_the_canonical_one(vendor_map: Path) -> None:
    store = Store(READ_VALUES)
    async with served(vendor_map, store) as (server, device):
        read_back = await device.write("cdu_control_mode", float(CduControlMode.STOPPED))
        assert read_back == float(CduControlMode.STOPPED)
        assert server.registers("cdu_control_mode") == [0x8000]
        assert store.writes[-1] == ("cdu_control_mode", float(CduControlMode.STOPPED))
        with pytest.raises(WriteError, match="no state this device"):
            await device.write("cdu_control_mode", float(CduControlMode.AUTO_PRESSURE))


@pytest.mark.asyncio
async def test_a_bit_write_changes_that_bit_only(vendor_map: Path) -> None:
    store = Store(READ_VALUES)  # cdu_remote (bit 5, read-only) is set
    async with served(vendor_map, store) as (server, device):
        assert await device.write("cdu_run_command", 1.0) == 1.0
        assert server.registers("cdu_run_command") == [0b100001]
        assert await device.write("cdu_run_command", 0.0) == 0.0
        assert server.registers("cdu_run_command") == [0b100000]
        assert store.writes == [("cdu_run_command", 1.0), ("cdu_run_command", 0.0)]


@pytest.mark.asyncio
async def test_a_mask_write_changes_that_bit_only(vendor_map: Path) -> None:
    store = Store(READ_VALUES)
    async with served(vendor_map, store) as (server, device):
        server._bank._words["holding"][201] = 0x8001  # bit 0 set by someone else
        assert await device.write("isolation_valve_command", 0.0) == 0.0
        assert server.registers("isolation_valve_command") == [0x0001]


@pytest.mark.asyncio
async def test_unlock_writes_go_first_and_the_locked_device_refuses_without(
    vendor_map: Path,
) -> None:
    store = Store(READ_VALUES)
    async with served(vendor_map, store) as (server, device):
        assert await device.write("supply_temperature_setpoint", 27.5) == pytest.approx(27.5)
        assert await device.write("supply_temperature_setpoint", 28.0) == pytest.approx(28.0)
        assert await device.write("flow_setpoint", 210.3) == pytest.approx(210.3)
        assert server._bank._words["coil"][5] == 0  # relocked after the write
        client = AsyncModbusTcpClient("127.0.0.1", port=server.port)
        await client.connect()
        try:  # a client that skips the unlock is refused: illegal function
            reply = await client.write_register(301, 250, device_id=UNIT_ID)
            assert reply.isError() and reply.exception_code == 1
        finally:
            client.close()
    assert store.writes == [
        ("supply_temperature_setpoint", 27.5),
        ("supply_temperature_setpoint", 28.0),
        ("flow_setpoint", pytest.approx(210.3)),
    ]


@pytest.mark.asyncio
async def test_a_momentary_acknowledge_is_written_not_read_back(vendor_map: Path) -> None:
    store = Store(READ_VALUES)
    async with served(vendor_map, store) as (server, device):
        assert await device.write("alarm_acknowledge", 1.0) == 1.0
        assert server.registers("alarm_acknowledge") == [0]  # the device cleared it
    assert store.writes == [("alarm_acknowledge", 1.0)]


class RefusingStore(Store):
    def write_point(self, name: str, value: float) -> None:
        raise ValueError("the CDU is in local mode")


@pytest.mark.asyncio
async def test_a_write_the_device_refuses_names_the_exception(vendor_map: Path) -> None:
    async with served(vendor_map, RefusingStore(READ_VALUES)) as (_, device):
        with pytest.raises(WriteError, match=r"illegal data value \(Modbus exception 3\)"):
            await device.write("cdu_control_mode", float(CduControlMode.MANUAL))
        assert device.stats.errors_by_kind["exception"] == 1


# --------------------------------------------------------------------------------------------
# The codecs against each other, every order


def _pair(data_type: str, order: str, swap: bool) -> tuple[RegisterPoint, MappedPoint]:
    unit = Unit.WATT
    driver = RegisterPoint(
        "heat_removed",
        "input",
        0,
        data_type,
        order,
        1.0,
        0.0,
        unit,
        False,
        None,
        None,  # type: ignore[arg-type]
        byte_swap=swap,
    )
    simulator = MappedPoint("heat_removed", "input", 0, data_type, word_order=order, byte_swap=swap)
    return driver, simulator


@pytest.mark.parametrize(
    ("data_type", "order", "swap"),
    list(
        itertools.product(
            ("int16", "uint16", "int32", "uint32", "float32"), ("big", "little"), (False, True)
        )
    ),
)
def test_every_order_round_trips_between_driver_and_simulator(
    data_type: str, order: str, swap: bool
) -> None:
    driver, simulator = _pair(data_type, order, swap)
    for value in (0.0, 1.0, 258.0, 4660.0, 30000.0, -1.5, 65535.0, 1.5e6, -2.5e6):
        sim_words = encode_value(simulator, value)
        assert sim_words is not None
        if data_type in ("float32",) or value == round(value):
            try:
                driver_words = encode(driver, value)
            except ValueError:
                continue  # outside the type: the driver refuses, the simulator clamps
            assert driver_words == sim_words, (value, driver_words, sim_words)
            assert decode(driver, sim_words) == pytest.approx(value, rel=1e-6)
            assert decode_words(simulator, driver_words) == pytest.approx(value, rel=1e-6)


def test_the_four_orders_of_one_float_on_the_wire() -> None:
    # 1.0 is 0x3F800000: bytes AB CD = 3F 80 00 00
    expected = {
        ("big", False): [0x3F80, 0x0000],  # ABCD
        ("little", False): [0x0000, 0x3F80],  # CDAB
        ("big", True): [0x803F, 0x0000],  # BADC
        ("little", True): [0x0000, 0x803F],  # DCBA
    }
    for (order, swap), words in expected.items():
        driver, simulator = _pair("float32", order, swap)
        assert encode(driver, 1.0) == words
        assert encode_value(simulator, 1.0) == words
        assert decode(driver, words) == 1.0


def test_missing_compares_the_raw_value_after_the_byte_swap() -> None:
    driver = RegisterPoint(
        "room_temperature",
        "input",
        0,
        "int16",
        "big",
        0.1,
        0.0,
        Unit.CELSIUS,
        False,
        None,
        None,
        byte_swap=True,
        missing=frozenset({0x7FFF}),
    )
    assert is_missing(driver, [0xFF7F])
    assert not is_missing(driver, [0x7FFF])


# --------------------------------------------------------------------------------------------
# Refused at load, naming the file and the key


def _edited(old: str, new: str) -> str:
    assert old in VENDOR_MAP
    return VENDOR_MAP.replace(old, new, 1)


REFUSED = [
    (
        "bit on a float32",
        _edited('address = 120\ntype = "float32"', 'address = 120\ntype = "float32"\nbit = 3'),
        "point[5].bit",
        "not float32",
    ),
    (
        "states on a non-state point",
        _edited('name = "dew_point"', 'name = "dew_point"\nstates = { 1 = "manual" }'),
        "point[3].states",
        "unit state",
    ),
    (
        "invert on a number",
        _edited('name = "dew_point"', 'name = "dew_point"\ninvert = true'),
        "point[3].invert",
        "bool points",
    ),
    ("unknown key", _edited("bit = 1\nunit", "bits = 1\nunit"), "point[0].bits", "unknown key"),
    (
        "bit of a coil",
        _edited('table = "discrete"\naddress = 0', 'table = "discrete"\naddress = 0\nbit = 2'),
        "point[10].bit",
        "holding or input",
    ),
    (
        "bool in a register without a bit",
        _edited('type = "bool"\nbit = 2', 'type = "bool"'),
        "point[1].type",
        "bit",
    ),
    (
        "the same bit twice",
        _edited("bit = 2\nunit", "bit = 1\nunit"),
        "point[1].bit",
        "both use bit 1",
    ),
    (
        "write_function 6 on a 32-bit point",
        _edited(
            "byte_swap = true\nscale = 0.1\nwritable = true",
            "byte_swap = true\nscale = 0.1\nwritable = true\nwrite_function = 6",
        ),
        "point[16].write_function",
        "takes two",
    ),
    (
        "a sentinel wider than the register",
        _edited("missing = [0xFFFF]", "missing = [0x1FFFF]"),
        "point[4].missing[0]",
        "16-bit",
    ),
    (
        "a state the canonical point does not have",
        _edited('"0x0004" = "auto_flow_temperature"', '"0x0004" = "turbo"'),
        "point[14].states.0x0004",
        "must name a state",
    ),
    (
        "an unlock for a point that is not writable",
        _edited('points = ["flow_setpoint"]', 'points = ["flow"]'),
        "unlock[1].points",
        "not a writable point",
    ),
    (
        "momentary on a read-only point",
        _edited("bit = 5\nunit", "bit = 5\nmomentary = true\nunit"),
        "point[12].momentary",
        "writable",
    ),
]


@pytest.mark.parametrize(("case", "text", "key", "problem"), REFUSED, ids=[c[0] for c in REFUSED])
def test_a_profile_that_contradicts_itself_is_refused_at_load(
    tmp_path: Path, case: str, text: str, key: str, problem: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}:"), message
    assert problem in message, message


# --------------------------------------------------------------------------------------------
# Properties: any register contents read the same through both codecs


@given(
    word=st.integers(0, 0xFFFF),
    bit=st.integers(0, 15),
    invert=st.booleans(),
    value=st.sampled_from([0.0, 1.0]),
)
def test_any_status_word_reads_and_writes_the_same_bit(
    word: int, bit: int, invert: bool, value: float
) -> None:
    driver = RegisterPoint(
        "pump_running",
        "holding",
        0,
        "bool",
        "big",
        1.0,
        0.0,
        Unit.BOOLEAN,
        True,
        None,
        None,
        bit=bit,
        invert=invert,
    )
    simulator = MappedPoint("pump_running", "holding", 0, "bool", bit=bit, invert=invert)
    assert decode(driver, [word]) == decode_words(simulator, [word])
    written = set_bit(driver, word, encode(driver, value)[0])
    assert decode_words(simulator, [written]) == value
    assert written & ~(1 << bit) == word & ~(1 << bit)  # the other bits are left alone


@given(
    words=st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2),
    data_type=st.sampled_from(["int32", "uint32", "float32"]),
    order=st.sampled_from(["big", "little"]),
    swap=st.booleans(),
)
def test_any_two_registers_decode_the_same_in_every_order(
    words: list[int], data_type: str, order: str, swap: bool
) -> None:
    driver, simulator = _pair(data_type, order, swap)
    expected = decode_words(simulator, words)
    if math.isfinite(expected):
        assert decode(driver, words) == expected
    else:
        with pytest.raises(ValueError):
            decode(driver, words)
