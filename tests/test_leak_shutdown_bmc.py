"""The simulated BMC's host: PowerState and ComputerSystem.Reset, over real HTTPS on loopback.

The client is aiohttp's own (never coolctl.drivers), and the plant is advanced by the test
itself, in plant time: a graceful shutdown is PoweringOff until the plant's `server_shutdown_s`
has passed, then Off, with the server drawing only `server_standby_w`.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from coolctl.model import ServerPowerState
from coolctl.simulators.live import ServerPoints
from coolctl.simulators.plant import PlantParams, RackPlant
from coolctl.simulators.redfish_bmc import SYSTEM
from coolctl.simulators.redfish_devices import build_device
from coolctl.simulators.redfish_server import RedfishDeviceServer
from coolctl.simulators.tls import client_ssl_context, create_tls_material, server_ssl_context

PASSWORD = "rack-secret-1"
SHUTDOWN_S = 30.0
STANDBY_W = 20.0


@dataclass
class Bmc:
    plant: RackPlant
    points: ServerPoints
    session: aiohttp.ClientSession
    url: str
    auth: dict[str, str]

    async def get(self, path: str) -> Any:
        async with self.session.get(self.url + path, headers=self.auth) as reply:
            assert reply.status == 200
            return await reply.json()

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        async with self.session.post(self.url + path, json=body, headers=self.auth) as reply:
            text = await reply.text()
            return reply.status, (await reply.json() if text else None)

    async def power_state(self) -> str:
        return str((await self.get(SYSTEM))["PowerState"])

    async def reset(self, reset_type: str) -> int:
        system = await self.get(SYSTEM)
        target = system["Actions"]["#ComputerSystem.Reset"]["target"]
        status, _ = await self.post(target, {"ResetType": reset_type})
        return status


@pytest_asyncio.fixture
async def bmc(tmp_path: Path) -> AsyncIterator[Bmc]:
    plant = RackPlant(
        PlantParams(n_servers=2, server_shutdown_s=SHUTDOWN_S, server_standby_w=STANDBY_W)
    )
    plant.set_load(0.8)
    plant.advance(20.0)  # the servers at their load
    points = ServerPoints(plant, 0)
    service = build_device(
        "server", points, plant, name="r01/bmc0", username="admin", password=PASSWORD
    )
    tls = create_tls_material(tmp_path / "tls")
    server = RedfishDeviceServer(
        service,
        ssl_context=server_ssl_context(tls.server_cert, tls.server_key),
        certificate_file=tls.server_cert,
    )
    await server.start()
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(tls.ca_cert))
    auth = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
    async with aiohttp.ClientSession(connector=connector) as session:
        yield Bmc(plant, points, session, f"https://127.0.0.1:{server.port}", auth)
    await server.stop()


@pytest.mark.asyncio
async def test_the_host_offers_a_reset_with_its_allowable_values(bmc: Bmc) -> None:
    system = await bmc.get(SYSTEM)
    assert system["PowerState"] == "On"
    reset = system["Actions"]["#ComputerSystem.Reset"]
    assert reset["target"].startswith(SYSTEM + "/")
    assert set(reset["ResetType@Redfish.AllowableValues"]) == {"On", "GracefulShutdown"}
    chassis = await bmc.get(system["Links"]["Chassis"][0]["@odata.id"])
    assert chassis["Links"]["ComputerSystems"] == [{"@odata.id": SYSTEM}]


@pytest.mark.asyncio
async def test_a_graceful_shutdown_powers_off_after_the_os_stopped_then_on_again(
    bmc: Bmc,
) -> None:
    plant = bmc.plant
    working_w = plant.server_readings(0)["power"]
    assert working_w > 4000.0
    assert await bmc.reset("GracefulShutdown") == 204
    assert await bmc.power_state() == "PoweringOff"
    # the OS is stopping: the server still draws what it drew
    plant.advance(SHUTDOWN_S / 2)
    assert await bmc.power_state() == "PoweringOff"
    assert plant.server_readings(0)["power"] > 0.8 * working_w
    # asked again meanwhile: no change, the shutdown already under way
    assert await bmc.reset("GracefulShutdown") == 204
    plant.advance(SHUTDOWN_S / 2 + 10.0)  # and the power supplies have run down
    assert await bmc.power_state() == "Off"
    assert plant.server_power_state(0) is ServerPowerState.OFF
    assert plant.server_readings(0)["power"] < STANDBY_W + 50.0  # noise of the power sensor
    assert plant.server_readings(1)["power"] > 4000.0  # the other server runs on
    # a cap written while off is kept for later, and does not power it on
    bmc.points.write_point("power_limit", 3000.0)
    plant.advance(5.0)
    assert await bmc.power_state() == "Off"
    # On: at once, back to its load under the cap
    assert await bmc.reset("On") == 204
    assert await bmc.power_state() == "On"
    plant.advance(10.0)
    assert 2500.0 < plant.server_readings(0)["power"] < 3100.0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"ResetType": "ForceOff"}, "ActionParameterValueNotInList"),
        ({"ResetType": "PowerCycle"}, "ActionParameterValueNotInList"),
        ({}, "ActionParameterMissing"),
        ({"ResetType": "On", "Delay": 5}, "ActionParameterUnknown"),
    ],
)
async def test_reset_types_it_does_not_do_are_refused(
    bmc: Bmc, body: dict[str, Any], message: str
) -> None:
    system = await bmc.get(SYSTEM)
    status, answer = await bmc.post(system["Actions"]["#ComputerSystem.Reset"]["target"], body)
    assert status == 400
    ids = [m["MessageId"] for m in answer["error"]["@Message.ExtendedInfo"]]
    assert any(i.endswith(message) for i in ids)
    assert await bmc.power_state() == "On"
    assert bmc.plant.server_power_state(0) is ServerPowerState.ON
