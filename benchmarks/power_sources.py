"""What the rack's power sources cost to read, against bare library calls in the same process;
and how fast a budget cut takes with an SNMP PDU as the rack's meter.

1. SNMP: a simulated 48-outlet APC rPDU2 PDU (device, 3 phases, 6 banks, 48 outlets × power,
   current, energy: 161 OIDs) on loopback. coolctl's driver polls it (GETs of 40 OIDs, the rows
   found by walking once); the baseline is pysnmp's own `get_cmd` of the same OIDs in the same
   chunks, with the same engine settings (`lookupMib=False`), no decoding beyond pysnmp's. CPU
   time of the whole process (client and agent), median of R rounds, rounds alternated.
2. Redfish power shelves: a simulated service of 2 shelves (6 PSUs and a BBU each) over HTTPS
   with a session. coolctl polls them as one device (the rack's power is their sum); the
   baseline is a bare aiohttp session GETting the same resources the driver reads.
3. Budget cut: the whole daemon on a rack of 8 servers (Redfish BMCs) whose meter is the SNMP
   PDU, at full load; the budget drops to 70 %; the time until the plant's rack power is under
   the new budget, and until the PDU's reading as coolctl sees it is.

    python benchmarks/power_sources.py [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    get_cmd,
)

from coolctl.drivers.redfish import RedfishDevice, RedfishSettings
from coolctl.drivers.snmp import SnmpDevice, V2cCredentials
from coolctl.drivers.snmp_profile import format_oid, load_snmp_profile
from coolctl.simulators.live import LiveSimulation, SimDeviceSpec, SimRackSpec
from coolctl.simulators.plant import RackPlant
from coolctl.simulators.snmp_agent import SimulatedPdu, SnmpPduAgent
from coolctl.tools.testing import hil_rack

CHUNK = 40


async def snmp_costs(rounds: int, polls: int = 20) -> tuple[float, float, int]:
    """CPU µs per poll of a 48-outlet PDU: coolctl's driver and bare pysnmp GETs."""
    plant = RackPlant()
    agent = SnmpPduAgent("apc-rpdu2", SimulatedPdu(plant, outlets=48, branches=6))
    await agent.start()
    try:
        device = SnmpDevice(
            rack="r01",
            device="pdu",
            host="127.0.0.1",
            port=agent.port,
            profile=load_snmp_profile("apc-rpdu2"),
            credentials=V2cCredentials("public"),
        )
        await device.poll()  # the walk
        oids = [format_oid(cell.oid) for cell in device.cells]
        engine = SnmpEngine()
        auth = CommunityData("public", mpModel=1)
        target = await UdpTransportTarget.create(("127.0.0.1", agent.port), timeout=1, retries=0)

        async def bare() -> None:
            for start in range(0, len(oids), CHUNK):
                error, status, _, binds = await get_cmd(
                    engine,
                    auth,
                    target,
                    ContextData(),
                    *(ObjectType(ObjectIdentity(oid)) for oid in oids[start : start + CHUNK]),
                    lookupMib=False,
                )
                assert not error and not status and binds

        await bare()
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(rounds):
            started = time.process_time()
            for _ in range(polls):
                readings = await device.poll()
            ours.append((time.process_time() - started) / polls)
            assert all(r.usable for r in readings)
            started = time.process_time()
            for _ in range(polls):
                await bare()
            theirs.append((time.process_time() - started) / polls)
        await device.close()
        engine.close_dispatcher()
        return statistics.median(ours), statistics.median(theirs), len(oids)
    finally:
        await agent.stop()


async def shelf_costs(rounds: int, polls: int = 20) -> tuple[float, float, int]:
    """CPU µs per poll of 2 power shelves over Redfish: coolctl and a bare aiohttp GET loop."""
    with tempfile.TemporaryDirectory() as folder:
        spec = SimDeviceSpec(
            "shelves", "pdu", protocol="redfish", power_shelves=2, password="bench-pass-1"
        )
        rack = SimRackSpec("r01", [spec], load=0.8)
        async with LiveSimulation([rack], tls_dir=Path(folder), step_s=0.5) as sim:
            service = sim.service("r01", "shelves")
            settings = RedfishSettings(
                service.url, username="admin", password="bench-pass-1", ca_file=Path(service.ca)
            )
            device = RedfishDevice(rack="r01", device="shelves", kind="pdu", settings=settings)
            await device.poll()
            requests = device.poll_requests()  # the same GETs, with the same queries
            context = ssl.create_default_context(cafile=service.ca)
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=2))
            async with session.post(
                f"{service.url}/redfish/v1/SessionService/Sessions",
                json={"UserName": "admin", "Password": "bench-pass-1"},
            ) as response:
                token = response.headers["X-Auth-Token"]

            async def bare() -> None:
                for uri, query in requests:
                    async with session.get(
                        service.url + uri, params=query, headers={"X-Auth-Token": token}
                    ) as reply:
                        await reply.json()

            await bare()
            ours: list[float] = []
            theirs: list[float] = []
            for _ in range(rounds):
                started = time.process_time()
                for _ in range(polls):
                    await device.poll()
                ours.append((time.process_time() - started) / polls)
                started = time.process_time()
                for _ in range(polls):
                    await bare()
                theirs.append((time.process_time() - started) / polls)
            await session.close()
            await device.close()
    return statistics.median(ours), statistics.median(theirs), len(requests)


SERVERS = 8


def budget_config(folder: Path) -> Path:
    community = folder / "community"
    community.write_text("public\n")
    bmcs = "".join(
        f"""
[racks.r01.devices.bmc{i}]
driver = "redfish"
kind = "server"
url = "https://127.0.0.1:1"
username = "admin"
poll_interval_s = 0.5
timeout_s = 2.0
cap_min_w = 1500.0
cap_max_w = 7000.0
"""
        for i in range(SERVERS)
    )
    path = folder / "rack.toml"
    path.write_text(
        f"""
[site]
name = "bench"

[racks.r01]
control_period_s = 0.5
power_budget_w = 70000.0

[racks.r01.power]
overhead_w = 500.0

[racks.r01.devices.pdu]
driver = "snmp"
address = "127.0.0.1"
profile = "apc-rpdu2"
version = "2c"
community_file = "{community}"
poll_interval_s = 0.25
timeout_s = 0.2
{bmcs}"""
    )
    return path


async def budget_cut() -> tuple[float, float, float, float]:
    """Seconds from a 100 % -> 70 % budget cut until the plant's rack power is under it, and
    until the SNMP PDU's reading in coolctl is; the power before and the new budget."""
    with tempfile.TemporaryDirectory() as folder:
        plant = {"n_servers": SERVERS, "cap_tau_s": 0.1}
        async with hil_rack(budget_config(Path(folder)), load=1.0, plant=plant) as rack:
            runtime = rack.daemon.racks["r01"]
            await rack.wait_until(lambda: rack.value("r01/pdu/power") is not None, 30.0)
            await asyncio.sleep(3.0)  # settled at full load
            truth = rack.plant("r01")
            before = truth.pdu_readings()["power"]
            budget = 0.7 * before
            runtime.power_budget_w = budget
            under_plant = await rack.wait_until(
                lambda: truth.pdu_readings()["power"] <= budget, 10.0, poll_s=0.005
            )
            under_meter = await rack.wait_until(
                lambda: (rack.value("r01/pdu/power") or 1e12) <= budget, 10.0, poll_s=0.005
            )
            return under_plant, under_plant + under_meter, before, budget


def row(ours: float, bare: float, baseline: str) -> str:
    return f"  coolctl {ours * 1e6:8.0f}   {baseline} {bare * 1e6:8.0f}   ratio {ours / bare:.2f}"


async def main(rounds: int) -> None:
    logging.disable(logging.WARNING)
    ours, bare, oids = await snmp_costs(rounds)
    print(f"SNMP PDU, 48 outlets ({oids} OIDs), CPU µs per poll, median of {rounds} rounds")
    print(row(ours, bare, "bare pysnmp GET"))
    ours, bare, gets = await shelf_costs(rounds)
    print(f"Redfish power shelves (2 shelves, {gets} GETs a poll), CPU µs per poll")
    print(row(ours, bare, "bare aiohttp GET"))
    plant_s, meter_s, before, budget = await budget_cut()
    print(
        f"Budget cut {before / 1e3:.1f} kW -> {budget / 1e3:.1f} kW, SNMP PDU as the rack meter"
        " (control period 0.5 s, PDU poll 0.25 s):"
    )
    print(
        f"  rack under budget after {plant_s * 1e3:.0f} ms; its PDU reading {meter_s * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args().rounds))
