"""The Modbus TCP driver against real pymodbus servers (and some rude ones) on loopback."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import struct
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimAction, SimData, SimDevice

from coolctl.drivers.modbus import ModbusDevice, WriteError
from coolctl.drivers.modbus_profile import ModbusProfile, load_profile
from coolctl.model import PointId, Quality, Reading
from coolctl.tools.testing import LoopLag, eventually

UNIT_ID = 3
LOGGER = "coolctl.drivers.modbus"

# Modbus function codes, as the pymodbus datastore is addressed by them.
FC_COILS, FC_DISCRETE, FC_HOLDING, FC_INPUT = 1, 2, 3, 4


def float_words(value: float, word_order: str = "big") -> list[int]:
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return [high, low] if word_order == "big" else [low, high]


# The sim-cdu register map filled with values, and the engineering values they stand for.
CDU_INPUT = {
    0: 215,  # supply_temperature 21.5 °C
    1: 0xFFE0,  # return_temperature -3.2 °C (int16, to see the sign)
    2: 1234,  # flow 123.4 L/min
    3: 550,  # differential_pressure 55 kPa
    4: 750,  # pump_speed 0.75
    5: 420,  # pump_power 420 W
    6: 0x0001,  # heat_removed, high word
    7: 0x86A0,  # heat_removed, low word: 100000 W
    8: 305,  # reservoir_level 30.5 L
    9: 333,  # valve_position 0.333
    **dict(zip((10, 11), float_words(18.25), strict=True)),
    **dict(zip((12, 13), float_words(24.5, "little"), strict=True)),
    **dict(zip((14, 15), float_words(410.5), strict=True)),
    16: 0xFFDD,  # dew_point -3.5 °C
    17: 241,  # room_temperature 24.1 °C
    18: 455,  # room_humidity 0.455
}
# pump 0.6, valve 0.4; supply setpoint 33.5 °C, flow setpoint 150.2 L/min, ΔP 95 kPa, mode 2
CDU_HOLDING = {0: 600, 1: 400, 2: 335, 3: 1502, 4: 950, 5: 2}
CDU_COILS = {0: True, 1: False}  # cdu_run_command, alarm_acknowledge
# leak, pump running, standby; remote; nine alarms: low level and pump 1 fault active
CDU_DISCRETE = {
    **{0: False, 1: True, 2: False, 3: True},
    **{4 + i: i in (1, 6) for i in range(9)},
}
CDU_VALUES = {
    "supply_temperature": 21.5,
    "return_temperature": -3.2,
    "flow": 123.4,
    "differential_pressure": 55_000.0,
    "pump_speed": 0.75,
    "pump_power": 420.0,
    "heat_removed": 100_000.0,
    "reservoir_level": 30.5,
    "valve_position": 0.333,
    "facility_supply_temperature": 18.25,
    "facility_return_temperature": 24.5,
    "primary_flow": 410.5,
    "pump_speed_command": 0.6,
    "valve_command": 0.4,
    "leak_detected": 0.0,
    "pump_running": 1.0,
    "standby_pump_active": 0.0,
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
    "low_pressure_alarm": 0.0,
    "pump_1_fault": 1.0,
    "dew_point_alarm": 0.0,
    "sensor_fault_alarm": 0.0,
}


@dataclass
class Registers:
    """What a test server holds, per table."""

    holding: dict[int, int] = field(default_factory=dict)
    input: dict[int, int] = field(default_factory=dict)
    coils: dict[int, bool] = field(default_factory=dict)
    discrete: dict[int, bool] = field(default_factory=dict)
    readonly_holding: bool = False


def cdu_registers() -> Registers:
    return Registers(dict(CDU_HOLDING), dict(CDU_INPUT), dict(CDU_COILS), dict(CDU_DISCRETE))


def sim_blocks(
    values: Mapping[int, int] | Mapping[int, bool], *, bits: bool, readonly: bool = False
) -> list[SimData]:
    """Contiguous runs of `values` as SimData; addresses between runs stay undefined, so the
    server answers them with an exception, as a real device would."""
    if not values:
        values = {60_000: False} if bits else {60_000: 0}  # pymodbus needs one block per table
    blocks: list[SimData] = []
    run: list[int | bool] = []
    start = previous = -2
    for address in sorted(values):
        if address != previous + 1 and run:
            blocks.append(_sim_data(start, run, bits, readonly))
            run = []
        if not run:
            start = address
        run.append(values[address])
        previous = address
    blocks.append(_sim_data(start, run, bits, readonly))
    return blocks


def _sim_data(start: int, run: list[int | bool], bits: bool, readonly: bool) -> SimData:
    if bits:
        return SimData(address=start, values=[bool(v) for v in run], datatype=DataType.BITS)
    return SimData(
        address=start, values=[int(v) for v in run], datatype=DataType.REGISTERS, readonly=readonly
    )


class SimServer:
    """A pymodbus server on loopback serving `Registers` as one unit id.

    `mute()` makes it swallow requests without answering, like a device that hung.
    """

    def __init__(
        self, registers: Registers, port: int = 0, action: SimAction | None = None
    ) -> None:
        self.registers = registers
        self.port = port
        self._action = action
        self._answering = asyncio.Event()
        self._answering.set()
        self._server: ModbusTcpServer | None = None

    async def start(self) -> None:
        r = self.registers
        device = SimDevice(
            id=UNIT_ID,
            simdata=(
                sim_blocks(r.coils, bits=True),
                sim_blocks(r.discrete, bits=True),
                sim_blocks(r.holding, bits=False, readonly=r.readonly_holding),
                sim_blocks(r.input, bits=False),
            ),
            action=self._act,
        )
        self._server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        await self._server.serve_forever(background=True)
        listener = cast(asyncio.Server, self._server.transport)
        self.port = listener.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._answering.set()  # let hung handlers finish so the server can close
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    def mute(self) -> None:
        self._answering.clear()

    def unmute(self) -> None:
        self._answering.set()

    async def get(self, function_code: int, address: int, count: int = 1) -> list[int] | list[bool]:
        assert self._server is not None
        values = await self._server.context.async_getValues(UNIT_ID, function_code, address, count)
        assert isinstance(values, list)
        return values

    async def set(self, function_code: int, address: int, values: list[int] | list[bool]) -> None:
        assert self._server is not None
        await self._server.context.async_setValues(UNIT_ID, function_code, address, values)

    async def _act(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        await self._answering.wait()
        if self._action is not None:
            return await self._action(
                function_code, start_address, address, count, registers, set_values
            )
        return None


@asynccontextmanager
async def sim_server(
    registers: Registers, action: SimAction | None = None
) -> AsyncIterator[SimServer]:
    server = SimServer(registers, action=action)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def raw_server(handler: object) -> AsyncIterator[int]:
    """A bare asyncio TCP server for devices that break the protocol; yields its port."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)  # type: ignore[arg-type]
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts a connection and reads requests, but never answers."""
    with suppress(ConnectionError):
        while await reader.read(1024):
            pass
    writer.close()


async def one_register_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every register read with one register fewer than asked for."""
    try:
        while True:
            tid, _protocol, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
            pdu = await reader.readexactly(length - 1)
            function_code, _address, count = struct.unpack(">BHH", pdu[:5])
            registers = max(count - 1, 0)
            body = struct.pack(">BB", function_code, 2 * registers) + b"\x00\x07" * registers
            writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def unknown_function(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request with a frame of a function code that does not exist."""
    try:
        while True:
            tid, _protocol, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
            await reader.readexactly(length - 1)
            body = bytes([0x44, 0x02, 0x00, 0x00])
            writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def closed_port() -> int:
    """A loopback port nobody listens on (connecting is refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def device(profile: ModbusProfile | str, port: int, **options: float) -> ModbusDevice:
    loaded = load_profile(profile) if isinstance(profile, str) else profile
    settings: dict[str, float] = {"timeout_s": 0.5, "reconnect_min_s": 0.05, "reconnect_max_s": 0.4}
    settings.update(options)
    return ModbusDevice(
        rack="r01",
        device="dev1",
        host="127.0.0.1",
        port=port,
        unit_id=UNIT_ID,
        profile=loaded,
        **settings,
    )


def by_name(readings: list[Reading]) -> dict[str, Reading]:
    return {r.point.name: r for r in readings}


def write_profile(tmp_path: Path, points: str, name: str = "test") -> ModbusProfile:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[profile]\nname = "{name}"\nprotocol = "modbus"\nkind = "cdu"\n{points}')
    return load_profile(path)


async def poll_until_good(dev: ModbusDevice, within_s: float) -> list[Reading]:
    readings: list[Reading] = []

    async def good() -> bool:
        nonlocal readings
        readings = await dev.poll()
        return all(r.quality is Quality.GOOD for r in readings)

    await eventually(good, within_s, what=f"{dev.device} good")
    return readings


# --------------------------------------------------------------------------------------------
# Reading


@pytest.mark.asyncio
async def test_poll_reads_every_sim_cdu_point() -> None:
    async with sim_server(cdu_registers()) as server, device("sim-cdu", server.port) as dev:
        before = time.monotonic()
        readings = await dev.poll()
        after = time.monotonic()
    assert [r.point for r in readings] == [
        PointId("r01", "dev1", p.name) for p in dev.profile.points
    ]
    for reading in readings:
        assert reading.quality is Quality.GOOD, reading
        assert reading.value == pytest.approx(CDU_VALUES[reading.point.name]), reading
        assert before <= reading.ts <= after
    assert len(dev.blocks) == 4  # input, holding, coil, discrete
    stats = dev.stats
    assert (stats.polls, stats.poll_failures, stats.consecutive_failures) == (1, 0, 0)
    assert stats.errors_by_kind == {}
    assert stats.last_success_ts is not None and before <= stats.last_success_ts <= after
    assert 0 < stats.last_poll_duration_s <= after - before
    assert stats.connect_attempts == 1
    assert not stats.connected  # the context manager closed it


@pytest.mark.asyncio
async def test_poll_reads_sim_pdu_word_orders() -> None:
    # power: uint32 big, 70 kW; energy: uint32 little in Wh, 100000 Wh
    registers = Registers(input={0: 0x0001, 1: 0x1170, 2: 0x86A0, 3: 0x0001})
    async with sim_server(registers) as server, device("sim-pdu", server.port) as dev:
        readings = by_name(await dev.poll())
    assert readings["power"].value == 70_000.0
    assert readings["energy"].value == 3600.0 * 100_000
    assert dev.stats.errors_by_kind == {}


@pytest.mark.asyncio
async def test_values_follow_the_device() -> None:
    async with sim_server(cdu_registers()) as server, device("sim-cdu", server.port) as dev:
        first = by_name(await dev.poll())
        await server.set(FC_INPUT, 0, [300])
        await server.set(FC_DISCRETE, 0, [True])
        second = by_name(await dev.poll())
    assert first["supply_temperature"].value == pytest.approx(21.5)
    assert second["supply_temperature"].value == pytest.approx(30.0)
    assert second["leak_detected"].value == 1.0
    assert second["supply_temperature"].ts > first["supply_temperature"].ts
    assert dev.stats.connect_attempts == 1  # one connection for all polls


# --------------------------------------------------------------------------------------------
# Writing


@pytest.mark.asyncio
async def test_write_reads_back_and_shows_in_the_next_poll() -> None:
    async with sim_server(cdu_registers()) as server, device("sim-cdu", server.port) as dev:
        assert await dev.write("pump_speed_command", 0.5) == pytest.approx(0.5)
        assert await server.get(FC_HOLDING, 0) == [500]
        near = await dev.write("valve_command", 0.2345)  # between two counts
        assert abs(near - 0.2345) <= 0.0005 + 1e-12
        readings = by_name(await dev.poll())
    assert readings["pump_speed_command"].value == pytest.approx(0.5)
    assert readings["valve_command"].value == pytest.approx(near)
    assert (dev.stats.writes, dev.stats.write_failures) == (2, 0)


WRITABLE_POINTS = """
[[point]]
name = "power_limit"
table = "holding"
address = 10
type = "uint32"
unit = "watts"
writable = true
min = 0.0
max = 2000000.0

[[point]]
name = "valve_command"
table = "holding"
address = 12
type = "float32"
word_order = "little"
unit = "ratio"
writable = true
min = 0.0
max = 1.0

[[point]]
name = "pump_running"
table = "coil"
address = 5
type = "bool"
unit = "boolean"
writable = true
"""


@pytest.mark.asyncio
async def test_write_32_bit_float_and_coil(tmp_path: Path) -> None:
    profile = write_profile(tmp_path, WRITABLE_POINTS)
    registers = Registers(holding={10: 0, 11: 0, 12: 0, 13: 0}, coils={5: False})
    async with sim_server(registers) as server, device(profile, server.port) as dev:
        assert await dev.write("power_limit", 123_456.0) == 123_456.0
        assert await server.get(FC_HOLDING, 10, 2) == [0x0001, 0xE240]
        assert await dev.write("valve_command", 0.625) == 0.625
        assert await server.get(FC_HOLDING, 12, 2) == float_words(0.625, "little")
        assert await dev.write("pump_running", 1.0) == 1.0
        assert (await server.get(FC_COILS, 5))[0] is True
        assert await dev.write("pump_running", 0.0) == 0.0
        readings = by_name(await dev.poll())
    assert readings["power_limit"].value == 123_456.0
    assert readings["valve_command"].value == 0.625
    assert readings["pump_running"].value == 0.0


@pytest.mark.asyncio
async def test_writes_refused_before_reaching_the_device() -> None:
    async with sim_server(cdu_registers()) as server, device("sim-cdu", server.port) as dev:
        with pytest.raises(WriteError, match=r"outside its bounds 0(\.0)?\.\.1\.0"):
            await dev.write("pump_speed_command", 1.2)
        with pytest.raises(WriteError, match=r"0(\.0)?\.\.1\.0"):
            await dev.write("pump_speed_command", -0.1)
        with pytest.raises(WriteError, match="flow is not writable"):
            await dev.write("flow", 10.0)
        with pytest.raises(WriteError, match="no point 'pump_speed_setpoint'"):
            await dev.write("pump_speed_setpoint", 0.5)
        with pytest.raises(WriteError, match="nan"):
            await dev.write("valve_command", math.nan)
        assert await server.get(FC_HOLDING, 0, 2) == [600, 400]
    assert dev.stats.connect_attempts == 0  # none of these went on the wire
    assert (dev.stats.writes, dev.stats.write_failures) == (5, 5)
    assert dev.stats.errors_by_kind == {}


@pytest.mark.asyncio
async def test_write_that_does_not_read_back_fails() -> None:
    async def clamp_writes(
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if set_values is not None:
            cast(list[int], set_values)[0] = min(
                int(set_values[0]), 300
            )  # a device with its own lower ceiling
        return None

    async with (
        sim_server(cdu_registers(), action=clamp_writes) as server,
        device("sim-cdu", server.port) as dev,
    ):
        with pytest.raises(WriteError, match=r"pump_speed_command=0\.5 but it reads back 0\.3"):
            await dev.write("pump_speed_command", 0.5)
        assert await dev.write("pump_speed_command", 0.25) == pytest.approx(0.25)
    assert dev.stats.errors_by_kind == {"mismatch": 1}
    assert (dev.stats.writes, dev.stats.write_failures) == (2, 1)


@pytest.mark.asyncio
async def test_write_exception_response_is_a_write_error() -> None:
    registers = cdu_registers()
    registers.readonly_holding = True
    async with sim_server(registers) as server, device("sim-cdu", server.port) as dev:
        with pytest.raises(WriteError, match=r"illegal data address \(Modbus exception 2\)"):
            await dev.write("pump_speed_command", 0.5)
        readings = by_name(await dev.poll())  # the link is fine: polling goes on
    assert readings["pump_speed_command"].quality is Quality.GOOD
    assert dev.stats.errors_by_kind == {"exception": 1}
    assert dev.stats.write_failures == 1


@pytest.mark.asyncio
async def test_write_timeout_is_a_write_error() -> None:
    async with (
        sim_server(cdu_registers()) as server,
        device("sim-cdu", server.port, timeout_s=0.2) as dev,
    ):
        await dev.poll()
        server.mute()
        started = time.monotonic()
        with pytest.raises(WriteError, match=r"timeout: no reply within 0\.2 s"):
            await dev.write("pump_speed_command", 0.5)
        assert time.monotonic() - started < 0.5
    assert dev.stats.errors_by_kind == {"timeout": 1}


@pytest.mark.asyncio
async def test_write_to_an_absent_device_respects_the_backoff() -> None:
    dev = device("sim-cdu", closed_port(), reconnect_min_s=10.0, reconnect_max_s=10.0)
    with pytest.raises(WriteError, match="connection: cannot connect"):
        await dev.write("pump_speed_command", 0.5)
    with pytest.raises(WriteError, match=r"not connected, next attempt in \d"):
        await dev.write("pump_speed_command", 0.5)
    assert dev.stats.connect_attempts == 1
    assert dev.stats.errors_by_kind == {"connection": 1}
    assert (dev.stats.writes, dev.stats.write_failures) == (2, 2)


# --------------------------------------------------------------------------------------------
# Device trouble


@pytest.mark.asyncio
async def test_exception_response_spoils_only_its_block(tmp_path: Path) -> None:
    profile = write_profile(
        tmp_path,
        """
[[point]]
name = "supply_temperature"
table = "input"
address = 0
type = "int16"
scale = 0.1
unit = "celsius"

[[point]]
name = "return_temperature"
table = "input"
address = 50
type = "int16"
scale = 0.1
unit = "celsius"
""",
    )
    async with sim_server(Registers(input={0: 215})) as server, device(profile, server.port) as dev:
        first = by_name(await dev.poll())
        second = by_name(await dev.poll())
        assert dev.stats.connected
    for readings in (first, second):
        assert readings["supply_temperature"].quality is Quality.GOOD
        assert readings["supply_temperature"].value == pytest.approx(21.5)
        assert readings["return_temperature"].quality is Quality.BAD
        assert readings["return_temperature"].value is None
    assert dev.stats.errors_by_kind == {"exception": 2}
    assert (dev.stats.polls, dev.stats.poll_failures) == (2, 2)
    assert dev.stats.connect_attempts == 1  # an exception is an answer: the link stays up


@pytest.mark.asyncio
async def test_nan_float_spoils_only_its_point() -> None:
    registers = cdu_registers()
    registers.input.update({10: 0x7FC0, 11: 0x0000})  # facility_supply_temperature: NaN
    async with sim_server(registers) as server, device("sim-cdu", server.port) as dev:
        readings = by_name(await dev.poll())
    assert readings["facility_supply_temperature"].quality is Quality.BAD
    assert readings["facility_supply_temperature"].value is None
    others = [r for name, r in readings.items() if name != "facility_supply_temperature"]
    assert all(r.quality is Quality.GOOD for r in others)
    assert dev.stats.errors_by_kind == {"garbled": 1}


@pytest.mark.asyncio
async def test_reply_of_wrong_length_is_garbled() -> None:
    async with raw_server(one_register_short) as port, device("sim-pdu", port) as dev:
        readings = await dev.poll()
    assert [r.quality for r in readings] == [Quality.BAD, Quality.BAD]
    assert all(r.value is None for r in readings)
    assert dev.stats.errors_by_kind == {"garbled": 1}


@pytest.mark.asyncio
async def test_undecodable_reply_is_garbled_not_silence() -> None:
    async with raw_server(unknown_function) as port:
        dev = device("sim-pdu", port, timeout_s=0.2)
        started = time.monotonic()
        readings = await dev.poll()
        assert time.monotonic() - started < 0.4
        await dev.close()
    assert [r.quality for r in readings] == [Quality.BAD, Quality.BAD]
    assert dev.stats.errors_by_kind == {"garbled": 1}


@pytest.mark.asyncio
async def test_silent_device_times_out_and_backs_off() -> None:
    async with (
        raw_server(silent) as port,
        device("sim-cdu", port, timeout_s=0.2, reconnect_min_s=0.3) as dev,
        LoopLag() as lag,
    ):
        started = time.monotonic()
        readings = await dev.poll()
        failed_at = time.monotonic()
        took = failed_at - started
        # gives up after the first silent block (not a timeout per block; a late loop aside)
        assert 0.19 <= took < 0.2 * len(dev.blocks) + lag.max_s, (took, lag.max_s)
        assert all(r.quality is Quality.MISSING and r.value is None for r in readings)
        assert dev.stats.errors_by_kind == {"timeout": 1}
        assert not dev.stats.connected
        started = time.monotonic()
        await dev.poll()  # within the backoff: no attempt, no wait
        assert time.monotonic() - started < 0.05 + lag.max_s
        assert dev.stats.connect_attempts == 1
        polls = 2

        async def attempted_again() -> bool:  # polled as often as a control loop likes
            nonlocal polls
            await dev.poll()
            polls += 1
            return dev.stats.connect_attempts > 1

        await eventually(attempted_again, 10.0, what="an attempt once the backoff is over")
        assert time.monotonic() - failed_at >= 0.3  # not before
        assert dev.stats.connect_attempts == 2
        assert dev.stats.errors_by_kind == {"timeout": 2}
        assert dev.stats.consecutive_failures == polls


@pytest.mark.asyncio
async def test_hung_device_goes_stale_then_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with (
        sim_server(cdu_registers()) as server,
        device("sim-cdu", server.port, timeout_s=0.2) as dev,
    ):
        good = by_name(await dev.poll())
        server.mute()
        started = time.monotonic()
        stale = by_name(await dev.poll())
        assert time.monotonic() - started < 0.2 * len(dev.blocks)
        for name, reading in stale.items():
            assert reading.quality is Quality.STALE
            assert reading.value == good[name].value
            assert reading.ts == good[name].ts  # the age of the value, not of the poll
        server.unmute()
        fresh = await poll_until_good(dev, within_s=10.0)
    assert all(r.quality is Quality.GOOD for r in fresh)
    assert all(r.ts > good[r.point.name].ts for r in fresh)
    assert dev.stats.consecutive_failures == 0
    assert dev.stats.errors_by_kind["timeout"] >= 1
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]


@pytest.mark.asyncio
async def test_server_goes_away_and_comes_back() -> None:
    server = SimServer(cdu_registers())
    await server.start()
    dev = device("sim-cdu", server.port, reconnect_min_s=0.1, reconnect_max_s=0.4)
    try:
        good = by_name(await dev.poll())
        assert all(r.quality is Quality.GOOD for r in good.values())
        await server.stop()
        await eventually(lambda: not dev.link.connected)  # the client side has seen it go

        stale = await dev.poll()
        assert all(r.quality is Quality.STALE for r in stale)
        assert dev.stats.errors_by_kind == {"connection": 1}

        # While it is down, attempts are spaced 0.1, 0.2, 0.4, 0.4 ... s apart, however
        # often we poll.
        polls_before, attempts_before = dev.stats.polls, dev.stats.connect_attempts
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            await dev.poll()
            await asyncio.sleep(0.01)
        polls = dev.stats.polls - polls_before
        attempts = dev.stats.connect_attempts - attempts_before
        assert polls > 40
        assert 3 <= attempts <= 5, attempts
        assert dev.stats.errors_by_kind["connection"] == attempts + 1

        await server.start()  # same port
        fresh = await poll_until_good(dev, within_s=10.0)
        assert all(r.quality is Quality.GOOD for r in fresh)
        assert dev.stats.consecutive_failures == 0
        assert dev.stats.connected
    finally:
        await dev.close()
        await server.stop()


@pytest.mark.asyncio
async def test_failures_are_logged_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    port = closed_port()
    dev = device("sim-pdu", port, reconnect_min_s=0.0, reconnect_max_s=0.0)
    for _ in range(20):
        readings = await dev.poll()
        assert all(r.quality is Quality.MISSING for r in readings)
    assert dev.stats.connect_attempts == 20
    assert dev.stats.errors_by_kind == {"connection": 20}
    server = SimServer(Registers(input={0: 0, 1: 100, 2: 0, 3: 0}), port=port)
    await server.start()
    try:
        for _ in range(5):
            assert all(r.quality is Quality.GOOD for r in await dev.poll())
    finally:
        await dev.close()
        await server.stop()
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]
    warning, recovery = records
    assert "r01/dev1" in warning.getMessage() and "connection" in warning.getMessage()
    assert "recovered after 20 failures" in recovery.getMessage()
    assert (warning.rack, warning.device) == ("r01", "dev1")  # type: ignore[attr-defined]
    assert (dev.stats.polls, dev.stats.poll_failures) == (25, 20)


# --------------------------------------------------------------------------------------------
# Odds and ends


@pytest.mark.asyncio
async def test_concurrent_callers_are_serialised() -> None:
    async with sim_server(cdu_registers()) as server, device("sim-cdu", server.port) as dev:
        results = await asyncio.gather(
            dev.poll(),
            dev.write("pump_speed_command", 0.7),
            dev.poll(),
            dev.write("valve_command", 0.1),
        )
    assert results[1] == pytest.approx(0.7) and results[3] == pytest.approx(0.1)
    assert dev.stats.errors_by_kind == {}
    assert dev.stats.connect_attempts == 1


@pytest.mark.asyncio
async def test_close_then_poll_connects_again() -> None:
    async with sim_server(cdu_registers()) as server:
        dev = device("sim-cdu", server.port)
        await dev.poll()
        await dev.close()
        assert not dev.stats.connected
        readings = await dev.poll()
        await dev.close()
    assert all(r.quality is Quality.GOOD for r in readings)
    assert dev.stats.connect_attempts == 2


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        device("sim-pdu", 502, timeout_s=0.0)
    with pytest.raises(ValueError, match="reconnect_min_s"):
        device("sim-pdu", 502, reconnect_min_s=5.0, reconnect_max_s=1.0)
