"""Cost per BMC poll, against a bare aiohttp GET loop on the same services; and the time from a
budget drop to every cap written.

N simulated BMCs (HTTPS, sessions) run in this process. Per round, coolctl's Redfish driver
polls all N concurrently; the baseline is a bare aiohttp session per BMC (the same TLS context
and session token) that GETs the same resources the driver reads, concurrently too. Rounds
alternate so that machine noise hits both alike. CPU time covers client and servers together.

Then, for each N, the whole daemon runs against the simulated rack at full load, the budget
drops from 100 % to 70 %, and the time until the last BMC has received its new cap is taken.

    python benchmarks/redfish_poll.py [--sizes 16 64 256] [--rounds R]
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

from coolctl.drivers.redfish import RedfishDevice, RedfishSettings
from coolctl.simulators.live import LiveSimulation, SimDeviceSpec, SimRackSpec
from coolctl.tools.testing import hil_rack


def plant_for(count: int) -> dict[str, float]:
    """A plant with one server per BMC (and a loop big enough for their cold plates)."""
    return {"n_servers": count, "loop_volume_l": max(60.0, 0.3 * count + 40.0)}


def bmc_specs(count: int) -> list[SimDeviceSpec]:
    return [
        SimDeviceSpec(device=f"bmc{i:03d}", kind="server", protocol="redfish", server=i)
        for i in range(count)
    ]


async def bare_client(
    url: str, user: str, password: str, ca: str
) -> tuple[aiohttp.ClientSession, str]:
    """A bare aiohttp session logged in to one BMC; returns it and its token."""
    context = ssl.create_default_context(cafile=ca)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=2))
    async with session.post(
        f"{url}/redfish/v1/SessionService/Sessions",
        json={"UserName": user, "Password": password},
    ) as response:
        token = response.headers["X-Auth-Token"]
    return session, token


async def bare_round(clients: list[tuple[aiohttp.ClientSession, str, str, list[str]]]) -> int:
    async def one(session: aiohttp.ClientSession, token: str, url: str, uris: list[str]) -> int:
        for uri in uris:
            async with session.get(url + uri, headers={"X-Auth-Token": token}) as response:
                await response.json()
        return len(uris)

    counts = await asyncio.gather(*(one(*client) for client in clients))
    return sum(counts)


async def poll_costs(count: int, rounds: int) -> tuple[float, float, float]:
    """CPU µs per BMC poll, coolctl and bare, and requests per poll."""
    with tempfile.TemporaryDirectory() as folder:
        spec = SimRackSpec("r01", bmc_specs(count), plant=plant_for(count), load=1.0)
        async with LiveSimulation([spec], tls_dir=Path(folder) / "tls", step_s=0.5) as sim:
            services = [s for s in sim.services if s.protocol == "redfish"]
            devices = [
                RedfishDevice(
                    rack="r01",
                    device=s.device,
                    kind="server",
                    settings=RedfishSettings(
                        url=s.url, username=s.username, password=s.password, ca_file=Path(s.ca)
                    ),
                )
                for s in services
            ]
            await asyncio.gather(*(d.poll() for d in devices))  # discovery, login
            clients = []
            for service, device in zip(services, devices, strict=True):
                uris = sorted({source.split("#")[0] for source in device.sources().values()})
                session, token = await bare_client(
                    service.url, service.username, service.password, service.ca
                )
                clients.append((session, token, service.url, uris))
            await bare_round(clients)
            ours: list[float] = []
            bare: list[float] = []
            requests_before = sum(d.stats.requests for d in devices)
            for _ in range(rounds):
                started = time.process_time()
                await asyncio.gather(*(d.poll() for d in devices))
                ours.append((time.process_time() - started) / count)
                started = time.process_time()
                await bare_round(clients)
                bare.append((time.process_time() - started) / count)
            requests = (sum(d.stats.requests for d in devices) - requests_before) / (rounds * count)
            for session, *_ in clients:
                await session.close()
            for device in devices:
                await device.close()
    return statistics.median(ours), statistics.median(bare), requests


def rack_config(count: int, folder: Path) -> Path:
    bmcs = "".join(
        f"""
[racks.r01.devices.bmc{i:03d}]
driver = "redfish"
kind = "server"
url = "https://127.0.0.1:1"
username = "admin"
poll_interval_s = 1.0
timeout_s = 5.0
cap_min_w = 1500.0
cap_max_w = 7000.0
"""
        for i in range(count)
    )
    path = folder / "rack.toml"
    path.write_text(
        f"""
[site]
name = "bench"

[racks.r01]
control_period_s = 1.0
power_budget_w = {count * 7200.0}
{bmcs}"""
    )
    return path


async def budget_drop_time(count: int) -> float:
    """Seconds from the budget change to the last BMC's new cap, with the daemon running."""
    with tempfile.TemporaryDirectory() as folder:
        config = rack_config(count, Path(folder))
        async with hil_rack(config, load=1.0, plant=plant_for(count)) as rack:
            runtime = rack.daemon.racks["r01"]
            await rack.wait_until(
                lambda: all(rack.value(f"r01/bmc{i:03d}/power") is not None for i in range(count)),
                60.0,
            )
            await asyncio.sleep(1.5)
            dropped = time.monotonic()
            runtime.power_budget_w = 0.7 * (runtime.power_budget_w or 0.0)
            done: float | None = None
            while done is None and time.monotonic() - dropped < 30.0:
                await asyncio.sleep(0.005)
                firsts = []
                for i in range(count):
                    writes = rack.simulation.writes("r01", f"bmc{i:03d}")
                    later = [w.wall_time_s for w in writes if w.wall_time_s >= dropped]
                    if not later:
                        break
                    firsts.append(later[0])
                else:
                    done = max(firsts)
            assert done is not None, "not every cap was written within 30 s"
            return done - dropped


async def main(sizes: list[int], rounds: int) -> None:
    logging.disable(logging.WARNING)
    print(f"Redfish poll cost per BMC, median of {rounds} rounds (CPU µs, client + servers)")
    print(f"{'BMCs':>5} {'coolctl':>9} {'bare GET':>9} {'ratio':>6} {'requests/poll':>14}")
    for count in sizes:
        ours, bare, requests = await poll_costs(count, rounds)
        print(f"{count:5d} {ours * 1e6:9.0f} {bare * 1e6:9.0f} {ours / bare:6.2f} {requests:14.1f}")
    print()
    print("budget 100 % -> 70 %: time until every BMC has its new cap (control period 1 s)")
    for count in sizes:
        print(f"{count:5d} BMCs: {await budget_drop_time(count) * 1e3:7.0f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.sizes, arguments.rounds))
