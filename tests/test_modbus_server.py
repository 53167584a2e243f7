"""Protocol tests of the simulated devices' Modbus TCP front-end, over real loopback sockets.

The client side is pymodbus's own AsyncModbusTcpClient and its `convert_from_registers`, never
coolctl.drivers: the point is to check the simulator against an independent decoder.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from coolctl.simulators.modbus_server import (
    MappedPoint,
    ModbusDeviceServer,
    decode_words,
    encode_value,
    load_register_map,
    resolve_register_map,
)
from coolctl.tools.testing import eventually

UNIT = 1
ILLEGAL_ADDRESS, ILLEGAL_VALUE, DEVICE_FAILURE, GATEWAY_NO_RESPONSE = 2, 3, 4, 11

CDU_VALUES: dict[str, float] = {
    "supply_temperature": -12.3,  # negative int16
    "return_temperature": 41.7,
    "flow": 118.4,
    "differential_pressure": 85_300.0,
    "pump_speed": 0.734,
    "pump_power": 412.0,
    "heat_removed": 123_456.0,  # uint32 above one word
    "reservoir_level": 12.5,
    "valve_position": 0.42,
    "facility_supply_temperature": 18.5,
    "facility_return_temperature": 24.75,  # float32, little word order
    "primary_flow": 96.125,
    "pump_speed_command": 0.73,
    "valve_command": 0.4,
    "leak_detected": 1.0,
    "pump_running": 1.0,
    "standby_pump_active": 0.0,
    # the CDU's own loops (setpoint mode), its alarms and the room
    "dew_point": -3.5,
    "room_temperature": 24.1,
    "room_humidity": 0.455,
    "supply_temperature_setpoint": 33.5,
    "flow_setpoint": 150.2,
    "differential_pressure_setpoint": 95_000.0,
    "cdu_control_mode": 2.0,
    "cdu_run_command": 1.0,
    "alarm_acknowledge": 0.0,
    "cdu_remote": 1.0,
    "filter_clogged_alarm": 0.0,
    "low_level_alarm": 1.0,
    "conductivity_alarm": 0.0,
    "ph_alarm": 0.0,
    "high_pressure_alarm": 0.0,
    "low_pressure_alarm": 1.0,
    "pump_1_fault": 0.0,
    "dew_point_alarm": 0.0,
    "sensor_fault_alarm": 1.0,
}
PDU_VALUES: dict[str, float] = {"power": 70_000.0, "energy": 3600.0 * 100_000}

# A map beyond the shipped profiles: little default word order, int32, offset, a float32
# setpoint, a read-only holding register and coils both writable and not.
TEST_MAP = """
[profile]
name = "test-map"
word_order = "little"

[[point]]
name = "setpoint"
table = "holding"
address = 10
type = "int32"
scale = 0.01
writable = true
min = -100.0
max = 100.0

[[point]]
name = "limit"
table = "holding"
address = 12
type = "uint16"
offset = -40.0

[[point]]
name = "flow_target"
table = "holding"
address = 13
type = "float32"
word_order = "big"
writable = true
min = 0.0
max = 500.0

[[point]]
name = "pump_enable"
table = "coil"
address = 0
type = "bool"
writable = true

[[point]]
name = "alarm_ack"
table = "coil"
address = 1
type = "bool"
"""


class DictStore:
    """A point store backed by a dict; names in `refuse` reject writes as a plant would."""

    def __init__(self, values: Mapping[str, float], refuse: tuple[str, ...] = ()) -> None:
        self.values = dict(values)
        self.refuse = set(refuse)
        self.reads = 0  # how often the server has refreshed from the store

    def read_points(self) -> Mapping[str, float]:
        self.reads += 1
        return dict(self.values)

    async def refreshed(self, times: int = 3) -> None:
        """Until the server has refreshed its registers from the store `times` more times."""
        reads = self.reads
        await eventually(lambda: self.reads >= reads + times, what=f"{times} refreshes")

    def write_point(self, name: str, value: float) -> None:
        if name in self.refuse:
            raise ValueError(f"{name} is locked")
        self.values[name] = value


def client_for(server: ModbusDeviceServer, timeout: float = 1.0) -> AsyncModbusTcpClient:
    # reconnect_delay=0: a dropped link stays dropped, so the tests see it
    return AsyncModbusTcpClient(
        "127.0.0.1", port=server.port, timeout=timeout, retries=0, reconnect_delay=0
    )


@asynccontextmanager
async def serving(
    register_map: str | Path, store: DictStore, **kwargs: Any
) -> AsyncIterator[tuple[ModbusDeviceServer, AsyncModbusTcpClient]]:
    server = ModbusDeviceServer(register_map, store, **kwargs)
    await server.start()
    client = client_for(server)
    try:
        assert await client.connect()
        yield server, client
    finally:
        client.close()
        await server.stop()


def profile_points(name: str) -> list[dict[str, Any]]:
    """The [[point]] tables of a shipped profile, read independently of the server module."""
    with resolve_register_map(name).open("rb") as handle:
        points: list[dict[str, Any]] = tomllib.load(handle)["point"]
    return points


async def read_point(client: AsyncModbusTcpClient, spec: Mapping[str, Any]) -> float:
    """Read and decode one point with pymodbus's decoder and the profile's scale/offset."""
    address, table, kind = spec["address"], spec["table"], spec["type"]
    if kind == "bool":
        reader = client.read_discrete_inputs if table == "discrete" else client.read_coils
        bits = await reader(address, count=1, device_id=UNIT)
        assert not bits.isError(), bits
        return 1.0 if bits.bits[0] else 0.0
    reader = client.read_input_registers if table == "input" else client.read_holding_registers
    count = 2 if kind.endswith("32") else 1
    result = await reader(address, count=count, device_id=UNIT)
    assert not result.isError(), result
    datatype = getattr(client.DATATYPE, kind.upper())
    raw = client.convert_from_registers(
        result.registers, datatype, word_order=spec.get("word_order", "big")
    )
    assert isinstance(raw, int | float)
    return float(raw) * float(spec.get("scale", 1.0)) + float(spec.get("offset", 0.0))


def expect_exception(result: Any, code: int) -> None:
    assert result.isError(), result
    assert result.exception_code == code, result


# --------------------------------------------------------------------------- encoding


@pytest.mark.asyncio
@pytest.mark.parametrize(("profile", "values"), [("sim-cdu", CDU_VALUES), ("sim-pdu", PDU_VALUES)])
async def test_every_profile_point_reads_back(profile: str, values: dict[str, float]) -> None:
    specs = profile_points(profile)
    assert {s["name"] for s in specs} == set(values), "test values must cover the profile"
    async with serving(profile, DictStore(values)) as (_, client):
        for spec in specs:
            got = await read_point(client, spec)
            if spec["type"] == "float32":
                assert got == pytest.approx(values[spec["name"]], rel=1e-6), spec["name"]
            else:
                half_count = abs(spec.get("scale", 1.0)) / 2
                assert got == pytest.approx(values[spec["name"]], abs=half_count), spec["name"]


@pytest.mark.asyncio
async def test_raw_words_and_word_orders() -> None:
    async with serving("sim-cdu", DictStore(CDU_VALUES)) as (cdu, _):
        assert cdu.registers("supply_temperature") == [(-123) & 0xFFFF]
        assert cdu.registers("heat_removed") == [0x0001, 0xE240]  # big: high word first
        big = list(struct.unpack(">HH", struct.pack(">f", 24.75)))
        assert cdu.registers("facility_return_temperature") == big[::-1]  # little: swapped
        assert cdu.registers("facility_supply_temperature") == list(
            struct.unpack(">HH", struct.pack(">f", 18.5))
        )
    async with serving("sim-pdu", DictStore(PDU_VALUES)) as (pdu, client):
        assert pdu.registers("power") == [0x0001, 0x1170]  # 70000 W, big
        assert pdu.registers("energy") == [0x86A0, 0x0001]  # 100000 Wh, little
        block = await client.read_input_registers(0, count=4, device_id=UNIT)
        assert block.registers == [0x0001, 0x1170, 0x86A0, 0x0001]


@pytest.mark.asyncio
async def test_wild_values_clamp_and_missing_points_stay_zero() -> None:
    wild = {
        "supply_temperature": 1e6,
        "return_temperature": -1e6,
        "flow": -5.0,
        "heat_removed": 1e12,
        "primary_flow": float("inf"),
    }
    async with serving("sim-cdu", DictStore(wild)) as (cdu, _):
        assert cdu.registers("supply_temperature") == [0x7FFF]
        assert cdu.registers("return_temperature") == [0x8000]
        assert cdu.registers("flow") == [0]
        assert cdu.registers("heat_removed") == [0xFFFF, 0xFFFF]
        assert cdu.registers("pump_power") == [0]
        assert cdu.registers("leak_detected") == [0]
        flow = struct.unpack(">f", struct.pack(">HH", *cdu.registers("primary_flow")))[0]
        assert flow == pytest.approx(3.4028234663852886e38)


def test_encode_decode_round_trip_rounds_to_nearest_count() -> None:
    point = MappedPoint("t", "holding", 0, "int32", scale=0.01, word_order="little")
    assert encode_value(point, -1.234) == [0xFF85, 0xFFFF]  # -123.4 counts -> -123
    assert encode_value(point, -1.236) == [0xFF84, 0xFFFF]  # -123.6 counts -> -124
    assert decode_words(point, [0xFF85, 0xFFFF]) == pytest.approx(-1.23)
    ratio = MappedPoint("r", "holding", 0, "uint16", scale=0.001)
    assert decode_words(ratio, [700]) == 0.7  # exactly, not 0.7000000000000001
    assert encode_value(ratio, float("nan")) is None


# --------------------------------------------------------------------------- refresh and writes


@pytest.mark.asyncio
async def test_refresh_picks_up_store_changes() -> None:
    store = DictStore(CDU_VALUES)
    async with serving("sim-cdu", store, refresh_interval_s=0.02) as (_, client):
        store.values["supply_temperature"] = 35.1
        store.values["leak_detected"] = 0.0

        async def updated() -> bool:
            regs = await client.read_input_registers(0, count=1, device_id=UNIT)
            bits = await client.read_discrete_inputs(0, count=1, device_id=UNIT)
            return regs.registers == [351] and bits.bits[0] is False

        await eventually(updated)


@pytest.mark.asyncio
async def test_writes_reach_store_and_read_back() -> None:
    store = DictStore(CDU_VALUES)
    async with serving("sim-cdu", store, refresh_interval_s=0.02) as (cdu, client):
        assert not (await client.write_register(0, 550, device_id=UNIT)).isError()
        assert store.values["pump_speed_command"] == pytest.approx(0.55)
        assert cdu.writes == [("pump_speed_command", pytest.approx(0.55))]
        assert (await client.read_holding_registers(0, count=1, device_id=UNIT)).registers == [550]

        assert not (await client.write_registers(0, [600, 250], device_id=UNIT)).isError()
        assert cdu.writes[1:] == [
            ("pump_speed_command", pytest.approx(0.6)),
            ("valve_command", pytest.approx(0.25)),
        ]
        await store.refreshed()  # refreshes from the store keep the commanded values
        regs = await client.read_holding_registers(0, count=2, device_id=UNIT)
        assert regs.registers == [600, 250]


@pytest.mark.asyncio
async def test_out_of_range_write_is_refused_and_changes_nothing() -> None:
    store = DictStore(CDU_VALUES)
    async with serving("sim-cdu", store) as (cdu, client):
        expect_exception(await client.write_register(0, 1001, device_id=UNIT), ILLEGAL_VALUE)
        expect_exception(await client.write_register(1, 1001, device_id=UNIT), ILLEGAL_VALUE)
        # one bad value in a block write refuses the whole block
        expect_exception(await client.write_registers(0, [500, 2000], device_id=UNIT), 3)
        assert store.values == CDU_VALUES
        assert cdu.writes == []
        regs = await client.read_holding_registers(0, count=2, device_id=UNIT)
        assert regs.registers == [730, 400]
        assert not (await client.write_register(0, 1000, device_id=UNIT)).isError()  # the bound
        assert cdu.writes == [("pump_speed_command", pytest.approx(1.0))]


@pytest.mark.asyncio
async def test_store_rejection_is_an_exception_response() -> None:
    store = DictStore(CDU_VALUES, refuse=("valve_command",))
    async with serving("sim-cdu", store) as (cdu, client):
        expect_exception(await client.write_register(1, 500, device_id=UNIT), ILLEGAL_VALUE)
        assert cdu.writes == []
        assert cdu.registers("valve_command") == [400]


@pytest.mark.asyncio
async def test_custom_map_from_path(tmp_path: Path) -> None:
    path = tmp_path / "test-map.toml"
    path.write_text(TEST_MAP)
    store = DictStore({"setpoint": -42.5, "limit": 15.0, "flow_target": 80.0, "alarm_ack": 1.0})
    async with serving(path, store, unit_id=7) as (server, client):
        regs = await client.read_holding_registers(10, count=5, device_id=7)
        assert regs.registers[:3] == [(-4250) & 0xFFFF, 0xFFFF, 55]  # int32 little; 15 - -40
        assert client.convert_from_registers(regs.registers[3:], client.DATATYPE.FLOAT32) == 80.0

        assert not (await client.write_registers(10, [1250, 0], device_id=7)).isError()
        float_words = client.convert_to_registers(123.5, client.DATATYPE.FLOAT32)
        assert not (await client.write_registers(13, float_words, device_id=7)).isError()
        assert not (await client.write_coil(0, True, device_id=7)).isError()
        assert server.writes == [("setpoint", 12.5), ("flow_target", 123.5), ("pump_enable", 1.0)]
        assert (await client.read_coils(0, count=2, device_id=7)).bits[:2] == [True, True]

        # not writable: a read-only holding register and coil
        expect_exception(await client.write_register(12, 60, device_id=7), ILLEGAL_ADDRESS)
        expect_exception(await client.write_coil(1, False, device_id=7), ILLEGAL_ADDRESS)
        nan_words = client.convert_to_registers(float("nan"), client.DATATYPE.FLOAT32)
        expect_exception(await client.write_registers(13, nan_words, device_id=7), 3)
        assert len(server.writes) == 3
        assert store.values["limit"] == 15.0
        # another unit id is not this device
        wrong = await client.read_holding_registers(10, count=1, device_id=1)
        expect_exception(wrong, GATEWAY_NO_RESPONSE)


@pytest.mark.asyncio
async def test_unmapped_addresses_are_illegal() -> None:
    async with serving("sim-cdu", DictStore(CDU_VALUES)) as (_, client):
        expect_exception(await client.read_input_registers(19, count=1, device_id=UNIT), 2)
        expect_exception(await client.read_input_registers(17, count=3, device_id=UNIT), 2)
        expect_exception(await client.read_holding_registers(0, count=7, device_id=UNIT), 2)
        expect_exception(await client.read_coils(2, count=1, device_id=UNIT), 2)
        expect_exception(await client.read_discrete_inputs(13, count=1, device_id=UNIT), 2)
        expect_exception(await client.write_register(6, 1, device_id=UNIT), ILLEGAL_ADDRESS)


# --------------------------------------------------------------------------- faults


@pytest.mark.asyncio
async def test_fail_reads_hits_only_that_point() -> None:
    async with serving("sim-cdu", DictStore(CDU_VALUES)) as (cdu, client):
        cdu.fail_reads("heat_removed")
        expect_exception(await client.read_input_registers(6, count=2, device_id=UNIT), 4)
        expect_exception(await client.read_input_registers(0, count=16, device_id=UNIT), 4)
        assert not (await client.read_input_registers(0, count=6, device_id=UNIT)).isError()
        assert not (await client.read_input_registers(8, count=8, device_id=UNIT)).isError()
        assert not (await client.read_holding_registers(0, count=2, device_id=UNIT)).isError()
        cdu.fail_reads(None)
        assert not (await client.read_input_registers(0, count=16, device_id=UNIT)).isError()
        with pytest.raises(ValueError):
            cdu.fail_reads("no_such_point")


@pytest.mark.asyncio
async def test_response_delay_times_out_a_short_timeout_client() -> None:
    async with serving("sim-cdu", DictStore(CDU_VALUES)) as (cdu, client):
        cdu.set_response_delay(0.2)
        started = time.monotonic()
        assert not (await client.read_input_registers(0, count=1, device_id=UNIT)).isError()
        assert time.monotonic() - started >= 0.2

        cdu.set_response_delay(0.5)
        hasty = client_for(cdu, timeout=0.1)
        try:
            assert await hasty.connect()
            with pytest.raises(ModbusException):
                await hasty.read_input_registers(0, count=1, device_id=UNIT)
        finally:
            hasty.close()
        cdu.set_response_delay(0.0)
        fresh = client_for(cdu)
        try:
            assert await fresh.connect()
            assert not (await fresh.read_input_registers(0, count=1, device_id=UNIT)).isError()
        finally:
            fresh.close()


@pytest.mark.asyncio
async def test_pipelined_requests_are_answered_in_order_with_their_own_data() -> None:
    async with serving("sim-cdu", DictStore(CDU_VALUES)) as (cdu, _):
        cdu.set_response_delay(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", cdu.port)
        try:
            # two requests in one segment: input register 0, then holding register 0
            frames = b"".join(
                struct.pack(">HHHBBHH", tid, 0, 6, UNIT, fc, 0, 1) for tid, fc in ((1, 4), (2, 3))
            )
            writer.write(frames)
            answers = [struct.unpack(">HHHBBBH", await reader.readexactly(11)) for _ in range(2)]
        finally:
            writer.close()
        assert [(a[0], a[4], a[6]) for a in answers] == [(1, 4, (-123) & 0xFFFF), (2, 3, 730)]


@pytest.mark.asyncio
async def test_offline_drops_and_refuses_then_serves_on_same_port() -> None:
    async with serving("sim-cdu", DictStore(CDU_VALUES)) as (cdu, client):
        port = cdu.port
        cdu.set_offline(True)
        assert cdu.offline

        async def dropped() -> bool:
            return not client.connected

        await eventually(dropped)
        with pytest.raises(ModbusException):
            await client.read_input_registers(0, count=1, device_id=UNIT)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)

        cdu.set_offline(False)
        assert cdu.port == port
        again = client_for(cdu)
        try:
            assert await again.connect()
            assert not (await again.read_input_registers(0, count=1, device_id=UNIT)).isError()
        finally:
            again.close()


@pytest.mark.asyncio
async def test_offline_toggles_within_one_loop_turn_settle_on_the_last() -> None:
    store = DictStore(PDU_VALUES)
    server = ModbusDeviceServer("sim-pdu", store)
    with pytest.raises(RuntimeError):
        server.set_offline(True)  # not running yet
    await server.start()
    try:
        port = server.port
        server.set_offline(True)
        server.set_offline(False)  # the listener is still opening: it simply stays
        server.set_offline(True)

        async def refused() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:
                return True
            writer.close()
            return False

        await eventually(refused, what="the listener closed")
        await store.refreshed()  # and it stays closed: the last toggle was offline
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        server.set_offline(False)
        server.set_offline(True)
        server.set_offline(False)
        client = client_for(server)
        try:
            assert await client.connect()
            assert not (await client.read_input_registers(0, count=2, device_id=UNIT)).isError()
        finally:
            client.close()
        assert server.port == port
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_two_servers_in_one_loop_stop_independently() -> None:
    cdu = ModbusDeviceServer("sim-cdu", DictStore(CDU_VALUES))
    pdu = ModbusDeviceServer("sim-pdu", DictStore(PDU_VALUES))
    await cdu.start()
    await pdu.start()
    client = client_for(pdu)
    try:
        assert cdu.port != pdu.port
        assert await client.connect()
        await cdu.stop()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", cdu.port)
        power = await client.read_input_registers(0, count=2, device_id=UNIT)
        assert power.registers == [0x0001, 0x1170]
    finally:
        client.close()
        await pdu.stop()


@pytest.mark.asyncio
async def test_port_zero_binds_a_real_port_and_logs_one_start_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    server = ModbusDeviceServer("sim-pdu", DictStore(PDU_VALUES), port=0)
    await server.start()
    try:
        assert server.port > 0
        assert server.address == f"127.0.0.1:{server.port}"
        with socket.create_connection(("127.0.0.1", server.port), timeout=1):
            pass
    finally:
        await server.stop()
    ours = [r for r in caplog.records if r.name == "coolctl.simulators.modbus"]
    assert any(server.address in r.getMessage() and "serving" in r.getMessage() for r in ours)
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]  # no pymodbus deprecation warnings


# --------------------------------------------------------------------------- register maps


def test_register_map_by_name_or_path(tmp_path: Path) -> None:
    by_name = resolve_register_map("sim-cdu")
    assert by_name.name == "sim-cdu.toml" and by_name.is_file()
    name, points = load_register_map(by_name)
    assert name == "sim-cdu" and len(points) == 36
    with pytest.raises(FileNotFoundError):
        resolve_register_map("no-such-profile")

    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[point]]\nname = "a"\ntable = "input"\naddress = 0\ntype = "uint32"\n'
        '[[point]]\nname = "b"\ntable = "input"\naddress = 1\ntype = "uint16"\n'
    )
    with pytest.raises(ValueError, match="overlaps"):
        load_register_map(bad)
    bad.write_text('[[point]]\nname = "a"\ntable = "input"\naddress = 0\ntype = "bool"\n')
    with pytest.raises(ValueError, match="bool"):
        load_register_map(bad)


def test_simulator_does_not_import_the_drivers() -> None:
    code = (
        "import sys\n"
        "from coolctl.simulators import modbus_server as m\n"
        "m.load_register_map('sim-cdu')\n"
        "loaded = [n for n in sys.modules if n.startswith('coolctl.drivers')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent)
