"""A CDU that runs its own loops, driven over Redfish (HTTPS, sessions) in setpoint mode.

The simulated Redfish CDU (simulators/redfish_cdu.py) serves the secondary connector's
FlowControlLitersPerMinute and SupplyTemperatureControlCelsius (each excerpting a Control of
the CDU's chassis), CoolingUnit.SetMode and CoolantConnector.ValveControl; the daemon writes
them through the Redfish driver with If-Match and read-back.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coolctl.drivers.redfish import RedfishDevice, RedfishSettings, WriteError
from coolctl.model import CduControlMode
from coolctl.tools.testing import HilRack, hil_rack

CONFIG = Path(__file__).parent / "configs" / "hil-redfish-cdu-setpoints.toml"


def kinds(rack: HilRack) -> list[str]:
    return [event.kind for event in rack.daemon.recent_events]


@pytest.mark.hil
@pytest.mark.asyncio
async def test_the_daemon_drives_a_redfish_cdu_by_its_set_points_and_a_leak_stops_it() -> None:
    async with hil_rack(CONFIG, time_scale=5.0, load=0.5) as rack:
        controller = rack.simulation.cdus["r01"]
        # SetMode Enabled put the CDU on its own loops; the set points arrived by PATCH
        await rack.wait_until(lambda: controller.mode is CduControlMode.AUTO_FLOW, 15.0)
        await rack.wait_until(lambda: controller.setpoint("flow_setpoint") == 150.0, 10.0)
        await rack.wait_until(
            lambda: controller.setpoint("supply_temperature_setpoint") == 34.0, 10.0
        )
        await rack.wait_until(lambda: abs((rack.value("r01/cdu1/flow") or 0.0) - 150.0) < 3.0, 30.0)
        written = {w.point for w in rack.simulation.writes("r01", "cdu1")}
        assert not written & {"pump_speed_command", "valve_command"}
        # a leak: the supervisor stops the CDU with CoolingUnit.SetMode Disabled, read back
        rack.plant("r01").start_leak(5.0)
        await rack.wait_until(lambda: "interlock_leak" in kinds(rack), 10.0)
        await rack.wait_until(lambda: not controller.running, 10.0)
        run = rack.daemon.racks["r01"].actuators
        channel = next(c for p, c in run.items() if p.name == "cdu_run_command")
        await rack.wait_until(lambda: channel.stats.last_written == 0.0, 5.0)


@pytest.mark.hil
@pytest.mark.asyncio
async def test_redfish_cdu_writes_refuse_out_of_range_and_drive_the_valves() -> None:
    async with hil_rack(CONFIG, time_scale=5.0, load=0.5) as rack:
        service = rack.simulation.service("r01", "cdu1")
        settings = RedfishSettings(
            url=service.url,
            username=service.username,
            password=service.password,
            ca_file=Path(service.ca),
        )
        controller = rack.simulation.cdus["r01"]
        async with RedfishDevice(rack="r01", device="x", kind="cdu", settings=settings) as cdu:
            await cdu.poll()
            ranges = cdu.writable()
            low, high = controller.setpoint_range("supply_temperature_setpoint")
            assert ranges["supply_temperature_setpoint"] == (low, high)  # AllowableMin/Max
            with pytest.raises(WriteError, match="outside what the device accepts"):
                await cdu.write("supply_temperature_setpoint", high + 5.0)
            assert await cdu.write("differential_pressure_setpoint", 90_000.0) == 90_000.0
            assert controller.setpoint("differential_pressure_setpoint") == 90_000.0
            # the isolation valves: closed, the CDU stops its pumps; open again, it runs
            assert await cdu.write("isolation_valve_command", 0.0) == 0.0
            assert not controller.running
            assert await cdu.write("isolation_valve_command", 1.0) == 1.0
            # a CDU whose panel has control refuses (400): an error marked as a refusal
            controller.set_remote(False)
            with pytest.raises(WriteError) as refused:
                await cdu.write("flow_setpoint", 120.0)
            assert refused.value.refused
            controller.set_remote(True)
