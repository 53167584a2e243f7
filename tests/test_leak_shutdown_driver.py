"""A server's host power through the Redfish driver, against DMTF's liquid-cooled server mockup.

The mockup's chassis `1U` links its host `Systems/437XR1138R2` (PowerState "On", and a
`#ComputerSystem.Reset` whose ResetType@Redfish.AllowableValues lists GracefulShutdown). The
mockup server stores resources but runs no actions; `Host` below answers the Reset POST the way
a BMC does (204, then PowerState moves), and records what it was sent.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from mockup_server import MOCKUPS, ROOT, MockupServer, load_mockup

from coolctl.drivers.redfish import RedfishDevice, RedfishSettings, WriteError
from coolctl.model import Quality, ServerPowerState

pytestmark = pytest.mark.asyncio

SYSTEM = f"{ROOT}/Systems/437XR1138R2"
RESET = f"{SYSTEM}/Actions/ComputerSystem.Reset"  # as the mockup's Actions names it


class Host:
    """Answers ComputerSystem.Reset POSTs at whatever target the system's Actions names:
    GracefulShutdown → `after_shutdown` (PoweringOff), On → On."""

    def __init__(self, server: MockupServer, after_shutdown: str = "PoweringOff") -> None:
        self.server = server
        self.after_shutdown = after_shutdown
        self.posts: list[tuple[str, Any]] = []
        server.hook = self.answer

    @property
    def target(self) -> str:
        return str(self.server.resources[SYSTEM]["Actions"]["#ComputerSystem.Reset"]["target"])

    async def answer(self, request: web.Request) -> web.StreamResponse | None:
        if request.method != "POST" or request.path != self.target:
            return None
        body = await request.json()
        self.posts.append((request.path, body))
        state = {"GracefulShutdown": self.after_shutdown, "On": "On"}[body["ResetType"]]
        self.server.resources[SYSTEM]["PowerState"] = state
        return web.Response(status=204)


def liquid_cooled_server() -> dict[str, Any]:
    return copy.deepcopy(load_mockup(MOCKUPS / "public-liquid-cooled-server")[0])


@asynccontextmanager
async def bmc(
    resources: dict[str, Any], *, host_power: bool = True
) -> AsyncIterator[tuple[MockupServer, RedfishDevice]]:
    server = MockupServer(resources)
    url = await server.start()
    device = RedfishDevice(
        rack="r1",
        device="bmc1",
        kind="server",
        settings=RedfishSettings(url, auth="none"),
        host_power=host_power,
    )
    try:
        async with device:
            yield server, device
    finally:
        await server.stop()


async def polled(device: RedfishDevice) -> dict[str, float | None]:
    return {r.point.name: r.value for r in await device.poll() if r.quality is Quality.GOOD}


async def test_the_hosts_power_state_is_read_from_the_chassiss_computer_system() -> None:
    async with bmc(liquid_cooled_server()) as (server, device):
        values = await polled(device)
        assert values["power_state"] == ServerPowerState.ON
        assert values["server_power_command"] == 1.0
        for shown, code, command in (
            ("PoweringOff", ServerPowerState.POWERING_OFF, 0.0),
            ("Off", ServerPowerState.OFF, 0.0),
            ("PoweringOn", ServerPowerState.POWERING_ON, 1.0),
            ("Paused", ServerPowerState.PAUSED, 1.0),
        ):
            server.resources[SYSTEM]["PowerState"] = shown
            values = await polled(device)
            assert (values["power_state"], values["server_power_command"]) == (code, command)
        # a state no schema knows is a bad reading, not a guess
        server.resources[SYSTEM]["PowerState"] = "Sleeping"
        readings = {r.point.name: r for r in await device.poll()}
        assert readings["power_state"].quality is Quality.BAD


async def test_without_host_power_the_system_is_not_read_at_all() -> None:
    async with bmc(liquid_cooled_server(), host_power=False) as (server, device):
        names = {r.point.name for r in await device.poll()}
        assert "power_state" not in names and "server_power_command" not in names
        assert not server.requests("GET", SYSTEM)


async def test_a_shutdown_is_a_graceful_reset_posted_to_the_target_the_system_names() -> None:
    resources = liquid_cooled_server()
    # a vendor's own path: the driver must take it from Actions, not make one up
    moved = f"{SYSTEM}/Oem/Vendor/PowerControl"
    resources[SYSTEM]["Actions"]["#ComputerSystem.Reset"]["target"] = moved
    async with bmc(resources) as (server, device):
        host = Host(server)
        await device.poll()
        assert await device.write("server_power_command", 0.0) == 0.0
        assert host.posts == [(moved, {"ResetType": "GracefulShutdown"})]
        assert not server.requests("POST", RESET)
        assert (await polled(device))["power_state"] == ServerPowerState.POWERING_OFF
        # asked again while the OS stops: nothing is sent twice
        assert await device.write("server_power_command", 0.0) == 0.0
        server.resources[SYSTEM]["PowerState"] = "Off"
        assert await device.write("server_power_command", 0.0) == 0.0
        assert len(host.posts) == 1
        # and On powers it on
        assert await device.write("server_power_command", 1.0) == 1.0
        assert host.posts[-1] == (moved, {"ResetType": "On"})
        assert (await polled(device))["power_state"] == ServerPowerState.ON


async def test_a_host_that_does_not_allow_a_graceful_shutdown_is_refused_before_sending() -> None:
    resources = liquid_cooled_server()
    reset = resources[SYSTEM]["Actions"]["#ComputerSystem.Reset"]
    reset["ResetType@Redfish.AllowableValues"] = ["On", "ForceOff", "ForceRestart"]
    async with bmc(resources) as (server, device):
        host = Host(server)
        await device.poll()
        with pytest.raises(WriteError, match="does not allow ResetType GracefulShutdown") as err:
            await device.write("server_power_command", 0.0)
        assert err.value.refused
        assert "ForceOff" in str(err.value)  # what it allows, for the operator
        assert host.posts == [] and server.resources[SYSTEM]["PowerState"] == "On"


def move_allowed_to_action_info(resources: dict[str, Any], system: str, allowed: list[str]) -> None:
    """The system's Reset says what it allows in an @Redfish.ActionInfo resource, not inline."""
    info = f"{system}/ResetActionInfo"
    reset = resources[system]["Actions"]["#ComputerSystem.Reset"]
    del reset["ResetType@Redfish.AllowableValues"]
    reset["@Redfish.ActionInfo"] = info
    resources[info] = {
        "@odata.id": info,
        "@odata.type": "#ActionInfo.v1_4_2.ActionInfo",
        "Id": "ResetActionInfo",
        "Name": "Reset Action Info",
        "Parameters": [
            {
                "Name": "ResetType",
                "Required": True,
                "DataType": "String",
                "AllowableValues": allowed,
            }
        ],
    }


@pytest.mark.parametrize("allowed", [["On", "ForceOff"], ["On", "GracefulShutdown"]])
async def test_the_allowed_reset_types_may_come_from_an_action_info(allowed: list[str]) -> None:
    resources = liquid_cooled_server()
    info = move_allowed_to_action_info(resources, SYSTEM, allowed)
    async with bmc(resources) as (server, device):
        host = Host(server)
        await device.poll()
        if "GracefulShutdown" in allowed:
            assert await device.write("server_power_command", 0.0) == 0.0
            assert host.posts == [(RESET, {"ResetType": "GracefulShutdown"})]
        else:
            with pytest.raises(WriteError, match="does not allow"):
                await device.write("server_power_command", 0.0)
            assert host.posts == []
        assert server.requests("GET", info)


async def test_a_reset_the_host_took_but_did_not_act_on_is_a_failed_write() -> None:
    async with bmc(liquid_cooled_server()) as (server, device):
        Host(server, after_shutdown="On")  # 204, and the host stays on
        await device.poll()
        with pytest.raises(WriteError, match="reads PowerState 'On'") as err:
            await device.write("server_power_command", 0.0)
        assert err.value.refused  # the actuator backs off rather than pressing it every tick


async def test_a_reset_the_service_refuses_is_a_refused_write() -> None:
    async with bmc(liquid_cooled_server()) as (server, device):
        await device.poll()  # no Host: the mockup server answers the POST with 405
        with pytest.raises(WriteError, match=r"ComputerSystem\.Reset") as err:
            await device.write("server_power_command", 0.0)
        assert err.value.refused
        assert json.dumps(server.resources[SYSTEM]["PowerState"]) == '"On"'
