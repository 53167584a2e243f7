"""The shipped profiles of real devices (orv3-rpu, kenmec-style-cdu), end to end: the simulator
serves each register map from a CDU's canonical points, coolctl's driver reads and writes it
over loopback TCP (and over RTU in test_modbus_rtu.py)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import pytest

from coolctl.drivers.modbus import ModbusDevice
from coolctl.drivers.modbus_profile import load_profile, shipped_profiles
from coolctl.model import CduControlMode, Quality
from coolctl.simulators.modbus_server import ModbusDeviceServer

CANONICAL: dict[str, float] = {
    "supply_temperature": 31.5,
    "return_temperature": 41.2,
    "flow": 180.4,
    "differential_pressure": 85_000.0,
    "dew_point": 12.3,
    "room_temperature": 24.5,
    "room_humidity": 0.455,
    "pump_speed": 0.62,
    "pump_power": 310.0,
    "heat_removed": 95_000.0,
    "pump_running": 1.0,
    "standby_pump_active": 0.0,
    "cdu_remote": 1.0,
    "leak_detected": 0.0,
    "pump_1_fault": 0.0,
    "low_level_alarm": 0.0,
    "filter_clogged_alarm": 1.0,
    "ph_alarm": 0.0,
    "conductivity_alarm": 1.0,
    "supply_temperature_setpoint": 32.0,
    "flow_setpoint": 180.0,
    "differential_pressure_setpoint": 80_000.0,
    "pump_speed_command": 0.62,
    "cdu_control_mode": float(CduControlMode.AUTO_FLOW),
    "cdu_run_command": 1.0,
    "alarm_acknowledge": 0.0,
}


class LatchingCdu:
    """A CDU's canonical points with a latched leak alarm, cleared by an acknowledge."""

    def __init__(self, values: Mapping[str, float]) -> None:
        self.values = dict(values)
        self.writes: list[tuple[str, float]] = []

    def read_points(self) -> Mapping[str, float]:
        return self.values

    def write_point(self, name: str, value: float) -> None:
        self.writes.append((name, value))
        if name == "alarm_acknowledge" and value == 1.0:
            self.values["leak_detected"] = 0.0
            return
        self.values[name] = value


@asynccontextmanager
async def served(profile: str, store: LatchingCdu) -> AsyncIterator[ModbusDevice]:
    server = ModbusDeviceServer(profile, store, unit_id=13, refresh_interval_s=0.01)
    await server.start()
    device = ModbusDevice(
        rack="r01",
        device="cdu1",
        host="127.0.0.1",
        port=server.port,
        unit_id=13,
        profile=load_profile(profile),
        timeout_s=2.0,
    )
    try:
        yield device
    finally:
        await device.close()
        await server.stop()


VENDOR_PROFILES = ("orv3-rpu", "kenmec-style-cdu")


def test_the_vendor_profiles_are_shipped() -> None:
    assert set(VENDOR_PROFILES) <= set(shipped_profiles())


@pytest.mark.parametrize("profile", VENDOR_PROFILES)
@pytest.mark.asyncio
async def test_every_point_reads_what_the_simulated_cdu_holds(profile: str) -> None:
    async with served(profile, LatchingCdu(CANONICAL)) as device:
        readings = await device.poll()
    resolution = {p.name: abs(p.scale) for p in load_profile(profile).points}
    for reading in readings:
        name = reading.point.name
        assert reading.quality is Quality.GOOD, name
        assert reading.value == pytest.approx(CANONICAL[name], abs=resolution[name]), name


@pytest.mark.parametrize("profile", VENDOR_PROFILES)
@pytest.mark.asyncio
async def test_setpoints_mode_and_acknowledge_are_written(profile: str) -> None:
    store = LatchingCdu({**CANONICAL, "leak_detected": 1.0})
    async with served(profile, store) as device:
        assert await device.write("supply_temperature_setpoint", 28.5) == pytest.approx(28.5)
        assert await device.write("flow_setpoint", 150.0) == pytest.approx(150.0)
        manual = float(CduControlMode.MANUAL)
        assert await device.write("cdu_control_mode", manual) == manual
        assert await device.write("alarm_acknowledge", 1.0) == 1.0
        assert store.values["leak_detected"] == 0.0  # the latched leak is cleared
    assert [name for name, _ in store.writes] == [
        "supply_temperature_setpoint",
        "flow_setpoint",
        "cdu_control_mode",
        "alarm_acknowledge",
    ]
    assert store.values["cdu_control_mode"] == manual


@pytest.mark.asyncio
async def test_orv3_mode_is_one_bit_of_the_control_word() -> None:
    store = LatchingCdu(CANONICAL)
    server = ModbusDeviceServer("orv3-rpu", store, unit_id=13)
    stopped = float(CduControlMode.STOPPED)
    store.values["cdu_control_mode"] = stopped
    server.refresh()
    assert server.registers("cdu_control_mode") == [0x8000]  # System_Stop, bit 15
    store.values["cdu_control_mode"] = float(CduControlMode.AUTO_FLOW_TEMPERATURE)
    server.refresh()
    assert server.registers("cdu_control_mode") == [0x0004]  # Auto2_On, bit 2
    store.values["leak_detected"] = 1.0
    server.refresh()
    assert server.registers("leak_detected") == [0x0001]  # Sticky_Pump_Rack_Leak1, bit 0


@pytest.mark.asyncio
async def test_kenmec_style_pump_overload_reads_inverted_and_sensors_can_be_absent() -> None:
    store = LatchingCdu({**CANONICAL, "pump_1_fault": 1.0, "dew_point": math.nan})
    server = ModbusDeviceServer("kenmec-style-cdu", store, unit_id=13)
    server.refresh()
    assert server.registers("pump_1_fault") == [0]  # the overload contact opened
    assert server.registers("dew_point") == [0x7FFF]
    async with served("kenmec-style-cdu", store) as device:
        by_name = {r.point.name: r for r in await device.poll()}
    assert by_name["pump_1_fault"].value == 1.0
    assert by_name["dew_point"].quality is Quality.MISSING and by_name["dew_point"].value is None
