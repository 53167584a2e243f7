"""A multi-node chassis: every host it links is shut down, and its power reads honestly.

DMTF's liquid-cooled server mockup links one host from chassis `1U`; the tests add more
(copies of `Systems/437XR1138R2` under other ids, each with its own Reset target, listed in
the chassis's `Links.ComputerSystems` and the Systems collection), the way a chassis with
several compute nodes shows them. The mockup server stores resources but runs no actions;
`Hosts` answers each system's Reset POST the way a BMC does (204, then its PowerState moves)
and records what it was sent.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from aiohttp import web
from mockup_server import MOCKUPS, ROOT, MockupServer, load_mockup
from test_leak_shutdown_driver import bmc, move_allowed_to_action_info, polled

from coolctl.drivers.redfish import WriteError
from coolctl.model import ServerPowerState

pytestmark = pytest.mark.asyncio

FIRST = f"{ROOT}/Systems/437XR1138R2"
CHASSIS = f"{ROOT}/Chassis/1U"
RESET = "#ComputerSystem.Reset"


def system_uri(node: int) -> str:
    return FIRST if node == 0 else f"{ROOT}/Systems/Node{node}"


def multi_node_server(nodes: int) -> dict[str, Any]:
    """The mockup with `nodes` hosts linked from its chassis (node 0 is the mockup's own)."""
    resources = copy.deepcopy(load_mockup(MOCKUPS / "public-liquid-cooled-server")[0])
    for node in range(1, nodes):
        uri = system_uri(node)
        body = copy.deepcopy(resources[FIRST])
        body.update({"@odata.id": uri, "Id": f"Node{node}", "Name": f"Compute node {node}"})
        # each host's own Reset target, in a vendor's spelling: taken from its Actions
        body["Actions"] = {RESET: dict(body["Actions"][RESET], target=f"{uri}/Oem/Reset")}
        resources[uri] = body
    links = [{"@odata.id": system_uri(node)} for node in range(nodes)]
    resources[CHASSIS]["Links"]["ComputerSystems"] = links
    resources[f"{ROOT}/Systems"]["Members"] = links
    resources[f"{ROOT}/Systems"]["Members@odata.count"] = nodes
    return resources


class Hosts:
    """Answers ComputerSystem.Reset POSTs at the target each system's Actions names:
    GracefulShutdown → PoweringOff, On → On."""

    def __init__(self, server: MockupServer, nodes: int) -> None:
        self.server = server
        self.nodes = nodes
        self.posts: list[tuple[str, Any]] = []  # (system URI, body)
        server.hook = self.answer

    def state(self, node: int) -> str:
        return str(self.server.resources[system_uri(node)]["PowerState"])

    def set_states(self, *states: str) -> None:
        for node, shown in enumerate(states):
            self.server.resources[system_uri(node)]["PowerState"] = shown

    def posted_to(self) -> list[str]:
        return sorted(uri for uri, _ in self.posts)

    async def answer(self, request: web.Request) -> web.StreamResponse | None:
        if request.method != "POST":
            return None
        for node in range(self.nodes):
            system = self.server.resources[system_uri(node)]
            if request.path == system.get("Actions", {}).get(RESET, {}).get("target"):
                body = await request.json()
                self.posts.append((system_uri(node), body))
                system["PowerState"] = {"GracefulShutdown": "PoweringOff", "On": "On"}[
                    body["ResetType"]
                ]
                return web.Response(status=204)
        return None


async def test_every_host_the_chassis_links_is_shut_down_gracefully() -> None:
    async with bmc(multi_node_server(3)) as (server, device):
        hosts = Hosts(server, 3)
        await device.poll()
        assert await device.write("server_power_command", 0.0) == 0.0
        assert hosts.posted_to() == sorted(system_uri(n) for n in range(3))
        assert all(body == {"ResetType": "GracefulShutdown"} for _, body in hosts.posts)
        assert [hosts.state(n) for n in range(3)] == ["PoweringOff"] * 3
        # each POST went to the target its own system's Actions names
        for node in range(1, 3):
            assert server.requests("POST", f"{system_uri(node)}/Oem/Reset")
        values = await polled(device)
        assert values["power_state"] == ServerPowerState.POWERING_OFF
        assert values["server_power_command"] == 0.0
        # asked again while the hosts stop, and once they are off: nothing is sent twice
        assert await device.write("server_power_command", 0.0) == 0.0
        hosts.set_states("Off", "Off", "Off")
        assert await device.write("server_power_command", 0.0) == 0.0
        assert len(hosts.posts) == 3
        assert (await polled(device))["power_state"] == ServerPowerState.OFF


async def test_only_the_hosts_not_already_off_or_stopping_are_sent_a_shutdown() -> None:
    async with bmc(multi_node_server(3)) as (server, device):
        hosts = Hosts(server, 3)
        hosts.set_states("Off", "PoweringOff", "On")
        await device.poll()
        assert await device.write("server_power_command", 0.0) == 0.0
        assert hosts.posts == [(system_uri(2), {"ResetType": "GracefulShutdown"})]


@pytest.mark.parametrize(
    ("states", "power_state", "command"),
    [
        # the one reading stands for every host: the laggard decides it, wherever it is listed
        (("Off", "Off", "On"), ServerPowerState.ON, 1.0),
        (("On", "Off", "Off"), ServerPowerState.ON, 1.0),
        (("Off", "PoweringOff", "On"), ServerPowerState.ON, 1.0),
        (("Off", "Off", "PoweringOff"), ServerPowerState.POWERING_OFF, 0.0),
        (("PoweringOff", "PoweringOff", "Off"), ServerPowerState.POWERING_OFF, 0.0),
        (("Off", "PoweringOn", "Off"), ServerPowerState.POWERING_ON, 1.0),
        (("Paused", "Off", "PoweringOn"), ServerPowerState.PAUSED, 1.0),
        (("Paused", "On", "Off"), ServerPowerState.ON, 1.0),
        (("Off", "Off", "Off"), ServerPowerState.OFF, 0.0),
    ],
)
async def test_the_chassis_reads_off_only_once_every_host_is(
    states: tuple[str, str, str], power_state: ServerPowerState, command: float
) -> None:
    async with bmc(multi_node_server(3)) as (server, device):
        Hosts(server, 3).set_states(*states)
        values = await polled(device)
        assert (values["power_state"], values["server_power_command"]) == (power_state, command)


async def test_one_host_that_refuses_does_not_keep_the_others_running() -> None:
    resources = multi_node_server(3)
    # node 0 lists no GracefulShutdown; node 2 says what it allows in an ActionInfo
    resources[FIRST]["Actions"][RESET]["ResetType@Redfish.AllowableValues"] = ["On", "ForceOff"]
    info = move_allowed_to_action_info(resources, system_uri(2), ["GracefulShutdown"])
    async with bmc(resources) as (server, device):
        hosts = Hosts(server, 3)
        await device.poll()
        with pytest.raises(WriteError, match="does not allow ResetType GracefulShutdown") as err:
            await device.write("server_power_command", 0.0)
        assert err.value.refused
        assert FIRST in str(err.value)
        # the others were shut down all the same, gracefully; the refusing one was sent nothing
        assert hosts.posted_to() == [system_uri(1), system_uri(2)]
        assert all(body == {"ResetType": "GracefulShutdown"} for _, body in hosts.posts)
        assert hosts.state(0) == "On"
        assert server.requests("GET", info)
        # the chassis does not read as off while one host runs
        values = await polled(device)
        assert (values["power_state"], values["server_power_command"]) == (ServerPowerState.ON, 1)


async def test_several_hosts_that_fail_are_all_named_in_one_error() -> None:
    resources = multi_node_server(3)
    for node in (0, 1):
        reset = resources[system_uri(node)]["Actions"][RESET]
        reset["ResetType@Redfish.AllowableValues"] = ["On"]
    async with bmc(resources) as (server, device):
        hosts = Hosts(server, 3)
        await device.poll()
        with pytest.raises(WriteError, match=r"and 1 more of the 3 resources failed") as err:
            await device.write("server_power_command", 0.0)
        assert err.value.refused
        assert hosts.posts == [(system_uri(2), {"ResetType": "GracefulShutdown"})]


async def test_an_empty_slot_of_the_chassis_is_neither_read_nor_sent_anything() -> None:
    resources = multi_node_server(3)
    empty = resources[system_uri(1)]
    empty["Status"] = {"State": "Absent"}
    empty["PowerState"] = None
    del empty["Actions"]
    async with bmc(resources) as (server, device):
        hosts = Hosts(server, 3)
        values = await polled(device)
        assert (values["power_state"], values["server_power_command"]) == (ServerPowerState.ON, 1)
        assert await device.write("server_power_command", 0.0) == 0.0
        assert hosts.posted_to() == [system_uri(0), system_uri(2)]
        hosts.set_states("Off", "Off", "Off")
        server.resources[system_uri(1)]["PowerState"] = None
        assert (await polled(device))["power_state"] == ServerPowerState.OFF


async def test_powering_on_reaches_every_host_too() -> None:
    async with bmc(multi_node_server(2)) as (server, device):
        hosts = Hosts(server, 2)
        hosts.set_states("Off", "Off")
        await device.poll()
        assert await device.write("server_power_command", 1.0) == 1.0
        assert hosts.posted_to() == [system_uri(0), system_uri(1)]
        assert all(body == {"ResetType": "On"} for _, body in hosts.posts)
