"""Cost per BMC poll, against a bare aiohttp GET loop on the same services; and the time from a
budget drop to every cap written.

N simulated BMCs (HTTPS, sessions) run in this process. Per round, coolctl's Redfish driver
polls all N concurrently; the baseline is a bare aiohttp session per BMC (the same TLS context
and session token) that GETs the same resources the driver reads, concurrently too. Rounds
alternate so that machine noise hits both alike. CPU time covers client and servers together.

Then, for each N, the whole daemon runs against the simulated rack at full load, the budget
drops from 100 % to 70 %, and the time until the last BMC has received its new cap (a value at
or below the allocator's cap for it from the new budget) is taken, over several trials (the
budget goes back to 100 % between them): median and range.

    python benchmarks/redfish_poll.py [--sizes 16 64 256] [--rounds R] [--trials T]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import random
import ssl
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from coolctl.drivers.redfish import RedfishDevice, RedfishSettings
from coolctl.simulators.live import LiveSimulation, SimDeviceSpec, SimRackSpec
from coolctl.tools.testing import HilRack, hil_rack


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


def capped(
    rack: HilRack, targets: dict[str, float], dropped: float, arrived: dict[str, float]
) -> bool:
    """Whether every BMC has received a cap at or below its target since `dropped`; notes in
    `arrived` when each did."""
    for name, target in targets.items():
        if name in arrived:
            continue
        for write in rack.simulation.writes("r01", name):
            if write.wall_time_s >= dropped and write.value <= target + 1.0:
                arrived[name] = write.wall_time_s
                break
    return len(arrived) == len(targets)


async def budget_drop_times(count: int, trials: int) -> list[float]:
    """Seconds from a budget drop (100 % -> 70 %) to the last BMC holding its new cap, with the
    daemon running; one figure per trial.

    A trial ends when every BMC has received, after the drop, a cap at or below the one the
    allocator decided for it from the new budget (and those caps fit the budget). Before each
    trial the budget goes back to 100 % and the caps are let settle; the drop then lands at a
    random point of the control period, as a real one would.
    """
    names = [f"bmc{i:03d}" for i in range(count)]
    rng = random.Random(count)
    times: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        config = rack_config(count, Path(folder))
        async with hil_rack(config, load=1.0, plant=plant_for(count)) as rack:
            runtime = rack.daemon.racks["r01"]
            allocator = runtime.allocator
            assert allocator is not None
            full = runtime.power_budget_w or 0.0
            period = runtime.config.control_period_s
            await rack.wait_until(
                lambda: all(rack.value(f"r01/{name}/power") is not None for name in names), 60.0
            )

            def settled(budget_w: float) -> bool:
                allocation = allocator.allocation
                return (
                    allocation is not None
                    and allocation.budget_w == budget_w
                    and all(
                        abs((rack.value(f"r01/{name}/power_limit") or 0.0) - allocation.caps[name])
                        <= 1.0
                        for name in names
                    )
                )

            for _ in range(trials):
                runtime.power_budget_w = full
                await rack.wait_until(lambda: settled(full), 60.0)
                await asyncio.sleep(rng.uniform(0.0, period))  # anywhere in the period
                dropped = time.monotonic()
                runtime.power_budget_w = 0.7 * full
                await rack.wait_until(
                    lambda: (
                        allocator.allocation is not None
                        and allocator.allocation.budget_w == 0.7 * full
                    ),
                    30.0,
                    poll_s=0.002,
                )
                allocation = allocator.allocation
                assert allocation is not None and allocation.available_w is not None
                targets = dict(allocation.caps)
                assert sum(targets.values()) <= allocation.available_w + 1.0, targets
                assert all(targets[name] < 7000.0 for name in names), "the caps did not fall"
                arrived: dict[str, float] = {}

                await rack.wait_until(
                    functools.partial(capped, rack, targets, dropped, arrived), 30.0, poll_s=0.002
                )
                times.append(max(arrived.values()) - dropped)
    return times


async def main(sizes: list[int], rounds: int, trials: int) -> None:
    logging.disable(logging.WARNING)
    print(f"Redfish poll cost per BMC, median of {rounds} rounds (CPU µs, client + servers)")
    print(f"{'BMCs':>5} {'coolctl':>9} {'bare GET':>9} {'ratio':>6} {'requests/poll':>14}")
    for count in sizes:
        ours, bare, requests = await poll_costs(count, rounds)
        print(f"{count:5d} {ours * 1e6:9.0f} {bare * 1e6:9.0f} {ours / bare:6.2f} {requests:14.1f}")
    print()
    print(
        f"budget 100 % -> 70 %: time until every BMC has received its new cap (control period"
        f" 1 s), {trials} trials: median, min..max (ms)"
    )
    for count in sizes:
        times = [t * 1e3 for t in await budget_drop_times(count, trials)]
        print(
            f"{count:5d} BMCs: {statistics.median(times):7.0f}   {min(times):.0f}..{max(times):.0f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=7, help="budget drops per size")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.sizes, arguments.rounds, arguments.trials))
