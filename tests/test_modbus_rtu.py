"""Shared Modbus links. Modbus RTU end to end: coolctl's driver on one end of a virtual
serial line (two pty pairs bridged in Python, paced at the baud rate), simulated devices with
several unit ids on the other, served by pymodbus's serial server through the simulator's own
register banks. And several unit ids behind one simulated TCP gateway, on one connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from coolctl.config import ConfigError, ModbusDeviceConfig, load_config
from coolctl.config.schema import DEVICE
from coolctl.daemon.devices import open_device
from coolctl.drivers.modbus import ModbusDevice
from coolctl.drivers.modbus_link import LinkPool, ModbusLink, SerialSettings
from coolctl.drivers.modbus_profile import load_profile
from coolctl.model import Quality
from coolctl.simulators.modbus_server import ModbusDeviceServer, ModbusRtuBus, ModbusTcpGateway
from coolctl.simulators.serial_line import VirtualSerialLine

# A pty refuses parity settings once configured (termios EINVAL), so the virtual bus runs 8N1.
BUS = {"baudrate": 19200, "parity": "N", "stopbits": 1, "bytesize": 8}


class Store:
    def __init__(self, values: Mapping[str, float]) -> None:
        self.values = dict(values)
        self.writes: list[tuple[str, float]] = []

    def read_points(self) -> Mapping[str, float]:
        return self.values

    def write_point(self, name: str, value: float) -> None:
        self.writes.append((name, value))
        self.values[name] = value


@asynccontextmanager
async def rtu_bus(
    devices: Sequence[tuple[str, int, Store]],
) -> AsyncIterator[tuple[VirtualSerialLine, ModbusRtuBus]]:
    """A virtual line and the simulated devices (register map, unit id, store) on it."""
    line = VirtualSerialLine(baudrate=BUS["baudrate"], bits_per_character=10)
    line.start()
    servers = [
        ModbusDeviceServer(register_map, store, unit_id=unit)
        for register_map, unit, store in devices
    ]
    bus = ModbusRtuBus(servers, port=line.device_path, **BUS)  # type: ignore[arg-type]
    await bus.start()
    try:
        yield line, bus
    finally:
        await bus.stop()
        line.stop()


def settings(line: VirtualSerialLine) -> SerialSettings:
    return SerialSettings(line.client_path, baudrate=19200, parity="N")


def cdu_store(supply: float) -> Store:
    return Store({"supply_temperature": supply, "flow": 120.5, "pump_speed_command": 0.6})


@pytest.mark.asyncio
async def test_several_unit_ids_share_one_bus_and_one_connection() -> None:
    stores = {unit: cdu_store(30.0 + unit) for unit in (3, 4, 5)}
    async with rtu_bus([("sim-cdu", unit, store) for unit, store in stores.items()]) as (
        line,
        _,
    ):
        link = ModbusLink(serial=settings(line), timeout_s=1.0)
        profile = load_profile("sim-cdu")
        devices = [
            ModbusDevice(rack="r01", device=f"cdu{unit}", unit_id=unit, profile=profile, link=link)
            for unit in stores
        ]
        try:
            polls = await asyncio.gather(*(device.poll() for device in devices))
            for unit, readings in zip(stores, polls, strict=True):
                by_name = {r.point.name: r for r in readings}
                assert all(r.quality is Quality.GOOD for r in readings)
                assert by_name["supply_temperature"].value == pytest.approx(30.0 + unit)
            assert link.connect_attempts == 1
            assert link.requests == 3 * len(devices[0].blocks)
            assert await devices[1].write("pump_speed_command", 0.75) == pytest.approx(0.75)
            assert stores[4].writes == [("pump_speed_command", 0.75)]
            assert stores[3].writes == stores[5].writes == []
            assert line.bytes_carried > 0
        finally:
            link.close()


@pytest.mark.asyncio
async def test_a_silent_unit_times_out_and_leaves_the_bus_to_the_others() -> None:
    async with rtu_bus([("sim-cdu", 3, cdu_store(31.0))]) as (line, _):
        link = ModbusLink(serial=settings(line), timeout_s=0.3)
        profile = load_profile("sim-cdu")
        present = ModbusDevice(rack="r01", device="cdu3", unit_id=3, profile=profile, link=link)
        absent = ModbusDevice(rack="r01", device="cdu9", unit_id=9, profile=profile, link=link)
        try:
            readings = await absent.poll()
            assert all(r.quality is Quality.MISSING for r in readings)
            assert absent.stats.errors_by_kind == {"timeout": 1}  # one block, then it stops
            assert link.connected  # a silent unit is no reason to close the port
            readings = await present.poll()
            assert all(r.quality is Quality.GOOD for r in readings)
            assert link.connect_attempts == 1
        finally:
            link.close()


@pytest.mark.asyncio
async def test_a_vendor_profile_over_rtu() -> None:
    store = Store(
        {
            "flow": 180.4,
            "supply_temperature": 31.5,
            "return_temperature": 41.2,
            "leak_detected": 0.0,
            "cdu_control_mode": 2.0,
            "flow_setpoint": 180.0,
            "supply_temperature_setpoint": 32.0,
        }
    )
    async with rtu_bus([("orv3-rpu", 13, store), ("sim-cdu", 3, cdu_store(30.0))]) as (line, _):
        link = ModbusLink(serial=settings(line), timeout_s=1.0)
        rpu = ModbusDevice(
            rack="r01", device="rpu", unit_id=13, profile=load_profile("orv3-rpu"), link=link
        )
        try:
            by_name = {r.point.name: r for r in await rpu.poll()}
            assert by_name["flow"].value == pytest.approx(180.4)
            assert by_name["cdu_control_mode"].value == 2.0
            assert await rpu.write("supply_temperature_setpoint", 29.5) == pytest.approx(29.5)
            assert store.writes == [("supply_temperature_setpoint", pytest.approx(29.5))]
        finally:
            link.close()


def test_daemon_devices_on_one_serial_port_share_one_link() -> None:
    pool = LinkPool()
    handles = [
        open_device(
            "r01",
            DEVICE.validate_python(
                {
                    "id": f"cdu{unit}",
                    "driver": "modbus",
                    "transport": "rtu",
                    "serial_port": "/dev/ttyUSB7",
                    "parity": "N",
                    "unit": unit,
                    "profile": "sim-cdu",
                }
            ),
            links=pool,
        )
        for unit in (1, 2)
    ]
    first, second = (handle.client for handle in handles)
    assert isinstance(first, ModbusDevice) and isinstance(second, ModbusDevice)
    assert first.link is second.link and first.link.is_serial
    with pytest.raises(ValueError, match="other settings"):
        pool.serial(SerialSettings("/dev/ttyUSB7", parity="E"), timeout_s=1.0)


def test_serial_settings_know_their_wire_time() -> None:
    bus = SerialSettings("/dev/null", baudrate=19200, parity="E")
    assert bus.bits_per_character == 11
    # 8 bytes of a read request at 11 bits a character, plus 3.5 characters of silence
    assert bus.wire_time_s(8) == pytest.approx((8 + 3.5) * 11 / 19200)


@pytest.mark.asyncio
async def test_units_behind_one_tcp_gateway_share_one_connection() -> None:
    stores = {unit: cdu_store(30.0 + unit) for unit in (1, 2)}
    gateway = ModbusTcpGateway(
        [ModbusDeviceServer("sim-cdu", store, unit_id=unit) for unit, store in stores.items()]
    )
    await gateway.start()
    pool = LinkPool()
    link = pool.tcp("127.0.0.1", gateway.port, timeout_s=1.0)
    assert pool.tcp("127.0.0.1", gateway.port, timeout_s=1.0) is link
    profile = load_profile("sim-cdu")
    devices = [
        ModbusDevice(rack="r01", device=f"cdu{unit}", unit_id=unit, profile=profile, link=link)
        for unit in (1, 2, 5)
    ]
    try:
        first, second, absent = await asyncio.gather(*(device.poll() for device in devices))
        assert first[0].value == pytest.approx(31.0) and second[0].value == pytest.approx(32.0)
        assert all(r.quality is Quality.BAD for r in absent)
        assert (
            "gateway target device failed to respond (Modbus exception 11)"
            in (devices[2].problems["supply_temperature"])
        )
        assert link.connected and link.connect_attempts == 1
    finally:
        pool.close()
        await gateway.stop()


@pytest.mark.asyncio
async def test_a_device_set_offline_is_silent_on_the_bus_too() -> None:
    line = VirtualSerialLine(baudrate=19200, bits_per_character=10)
    line.start()
    server = ModbusDeviceServer("sim-cdu", cdu_store(30.0), unit_id=3)
    await server.start()  # on TCP as well, as in `sim serve --modbus-rtu`
    bus = ModbusRtuBus([server], port=line.device_path, parity="N")
    await bus.start()
    link = ModbusLink(serial=settings(line), timeout_s=0.3)
    device = ModbusDevice(
        rack="r01", device="cdu3", unit_id=3, profile=load_profile("sim-cdu"), link=link
    )
    try:
        server.set_offline(True)
        assert all(r.quality is Quality.MISSING for r in await device.poll())
        server.set_offline(False)
        assert all(r.quality is Quality.GOOD for r in await device.poll())
    finally:
        link.close()
        await bus.stop()
        await server.stop()
        line.stop()


RTU_CONFIG = """
[racks.r01.devices.rpu]
driver = "modbus"
transport = "rtu"
serial_port = "/dev/ttyUSB0"
baudrate = 19200
parity = "N"
unit = 13
profile = "orv3-rpu"

[racks.r01.devices.cdu2]
driver = "modbus"
transport = "rtu"
serial_port = "/dev/ttyUSB0"
parity = "N"
unit = 3
profile = "sim-cdu"
"""


def config_problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "site.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_an_rtu_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(RTU_CONFIG)
    devices = load_config(path).racks["r01"].devices
    rpu = devices["rpu"]
    assert isinstance(rpu, ModbusDeviceConfig)
    assert (rpu.transport, rpu.serial_port, rpu.parity, rpu.stopbits) == (
        "rtu",
        "/dev/ttyUSB0",
        "N",
        1,
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('serial_port = "/dev/ttyUSB0"\nbaudrate', "baudrate"), "rpu.serial_port"),
        (('parity = "N"\nunit = 3', 'parity = "E"\nunit = 3'), "set up differently"),
        (("baudrate = 19200", "baudrate = 12"), "baudrate"),
        (('parity = "N"\nunit = 13', 'parity = "X"\nunit = 13'), "parity"),
    ],
)
def test_rtu_config_errors(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    problems = config_problems(tmp_path, RTU_CONFIG.replace(*change, 1))
    assert any(expected in problem for problem in problems), problems


def test_a_tcp_device_needs_an_address(tmp_path: Path) -> None:
    text = '[racks.r01.devices.cdu1]\ndriver = "modbus"\nprofile = "sim-cdu"\n'
    assert any("needs an address" in p for p in config_problems(tmp_path, text))
