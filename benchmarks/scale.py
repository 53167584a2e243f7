"""One daemon process controlling a row of N simulated racks at a 1 s period: does it keep up?

Each rack is a Modbus CDU, a Modbus PDU and 18 Redfish BMCs (HTTPS, sessions) whose caps share
the rack's power budget: 20 devices, 640 at N = 32. Every device is polled every second and
every rack ticks every second, as the daemon would run on a rack manager of a row.

The simulated devices run in a child process (multiprocessing, spawned), not in this one, so
that this process's CPU time is the daemon's alone. The child is a LiveSimulation built from
the generated config, as `coolctl sim serve` would build it; a child process rather than
`coolctl sim serve` itself because the child hands back the started services as records
(`Service`, with rack and device: the printed `redfish` lines name neither), so the config is
pointed at them by `coolctl.tools.simrack.with_services`, the code the demo and the HIL tests use.
The child also scrapes the daemon's /metrics, as Prometheus would, every `--scrape-every`
seconds. The plant is stepped every 0.5 s there (the sim's cost, not the daemon's).

For each N, in one worker process (a fresh one per N, so that resident memory is that N's):

1. the whole daemon (`coolctl.daemon.service.Service`: store, control API, /metrics) runs against
   the simulation; after every device has answered and a warm-up, it is measured over a
   window: CPU seconds of this process per device poll, how late each control tick started
   after its due time (p99), ticks and polls skipped because they overran (missed), polls
   that did not read every point good, resident memory (VmRSS);
2. then the bare-protocol loop, the baseline: per Modbus device one pymodbus client reading
   the same register blocks, per Redfish device one logged-in aiohttp session (same TLS
   context, same connection limit) sending the GETs the driver's poll sends (same `$expand`
   and `$select`), parsing their JSON; every device once a second on the daemon's own schedule
   (`coolctl.daemon.runtime.rack_phases`: racks spread across the period); CPU per device poll over
   a window of the same length.

A row "holds" when no tick and no poll was missed and the ticks' lateness p99 is under 100 ms.
After the given sizes, if all held, larger ones (`--search`) are tried in turn until one does
not; then (`--bisect` times) the size halfway between the largest that held and the smallest
that did not. `CPU wait` is the share of the window the daemon's loop thread was runnable but
waiting for a CPU (/proc schedstat): on a shared machine, what other processes took from it.

    python benchmarks/scale.py [--racks 1 8 32] [--search 48 64] [--bisect 2] [--window 15]
                               [--uvloop] [--cap-deadband-w W]

`--uvloop` runs the measuring process (the daemon, then the bare loop) on uvloop's event loop
instead of asyncio's, to measure what it would buy; uvloop is not a coolctl dependency and must
be installed by hand (`pip install uvloop`). The simulation keeps asyncio's loop either way.
`--cap-deadband-w W` sets every rack's `[power] cap_deadband_w` (default: the config's default),
to see what the power-cap deadband saves: 0 rewrites the caps for every watt of reading noise.

These machines are noisy and the simulation shares them: compare the ratio, and read the sim's
CPU share (a saturated simulation answers late, which is not the daemon's doing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from pymodbus.client import AsyncModbusTcpClient

from coolctl.config import Config, ModbusDeviceConfig, RedfishDeviceConfig
from coolctl.daemon.runtime import rack_phases
from coolctl.daemon.service import Service, ServiceOptions
from coolctl.daemon.tasks import cancel_and_wait
from coolctl.drivers.modbus import ModbusDevice
from coolctl.drivers.modbus_profile import ReadBlock
from coolctl.drivers.redfish import RedfishDevice
from coolctl.rack.check import load_checked_config
from coolctl.simulators.live import LiveSimulation
from coolctl.simulators.live import Service as SimService
from coolctl.tools.simrack import sim_specs, with_services

BMCS_PER_RACK = 18
PERIOD_S = 1.0
BMC_TIMEOUT_S = 5.0
JITTER_LIMIT_S = 0.100


# ----------------------------------------------------------------------------------------------
# The row's config


def row_config(racks: int, cap_deadband_w: float | None = None) -> str:
    """A config of `racks` racks of 20 devices: ports and URLs are placeholders, pointed at the
    simulation later. Loops, safety and budget as in the demo rack."""
    deadband = "" if cap_deadband_w is None else f"cap_deadband_w = {cap_deadband_w!r}\n"
    parts = ['[site]\nname = "scale"\n']
    for index in range(1, racks + 1):
        rack = f"r{index:02d}"
        parts.append(
            f"""
[racks.{rack}]
control_period_s = {PERIOD_S}
power_budget_w = 120000.0

[racks.{rack}.power]
margin_w = 2000.0
overhead_w = 1500.0
{deadband}
[racks.{rack}.safety]
failsafe_after_s = 3.0
hold_s = 10.0
temperature_limits = {{ "cdu1/supply_temperature" = 45.0 }}

[racks.{rack}.devices.cdu1]
driver = "modbus"
address = "127.0.0.1"
port = 1
profile = "sim-cdu"
poll_interval_s = {PERIOD_S}
timeout_s = 0.9

[racks.{rack}.devices.pdu1]
driver = "modbus"
address = "127.0.0.1"
port = 1
profile = "sim-pdu"
poll_interval_s = {PERIOD_S}
timeout_s = 0.9

[racks.{rack}.loops.pump]
measurement = "cdu1/flow"
actuator = "cdu1/pump_speed_command"
setpoint = 160.0
action = "reverse"
kp = 0.002
ki = 0.004
output_min = 0.2
output_max = 1.0
slew_per_s = 0.1
failsafe_output = 1.0

[racks.{rack}.loops.supply]
measurement = "cdu1/supply_temperature"
actuator = "cdu1/valve_command"
setpoint = 35.0
action = "direct"
kp = 0.15
ki = 0.01
output_min = 0.05
output_max = 1.0
slew_per_s = 0.05
failsafe_output = 1.0
"""
        )
        for bmc in range(1, BMCS_PER_RACK + 1):
            parts.append(
                f"""
[racks.{rack}.devices.bmc{bmc:02d}]
driver = "redfish"
kind = "server"
url = "https://127.0.0.1:1"
username = "admin"
poll_interval_s = {PERIOD_S}
timeout_s = {BMC_TIMEOUT_S}
cap_min_w = 1500.0
cap_max_w = 7000.0
"""
            )
    return "".join(parts)


# ----------------------------------------------------------------------------------------------
# The simulation, in a child process


def simulation_process(
    conn: multiprocessing.connection.Connection, config_path: str, tls_dir: str, scrape_s: float
) -> None:
    """Child process: serve the config's devices, send their Service records back, scrape the
    daemon's /metrics when told its URL, stop when told to."""
    logging.disable(logging.WARNING)
    asyncio.run(_simulate(conn, Path(config_path), Path(tls_dir), scrape_s))


async def _simulate(
    conn: multiprocessing.connection.Connection, config_path: Path, tls_dir: Path, scrape_s: float
) -> None:
    config = load_checked_config(config_path)
    simulation = LiveSimulation(sim_specs(config, port=0), tls_dir=tls_dir, step_s=0.5)
    messages: asyncio.Queue[Any] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    loop.add_reader(conn.fileno(), lambda: messages.put_nowait(conn.recv()))
    scraper: asyncio.Task[None] | None = None
    async with simulation:
        conn.send(list(simulation.services))
        while True:
            message = await messages.get()
            if message[0] == "scrape":
                scraper = asyncio.create_task(_scrape_forever(message[1], scrape_s))
            elif message[0] == "stop":
                break
        if scraper is not None:
            scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scraper
    conn.send("stopped")


async def _scrape_forever(url: str, every_s: float) -> None:
    async with aiohttp.ClientSession() as session:
        while True:
            await asyncio.sleep(every_s)
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as response:
                    await response.read()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_queue_wait_s() -> float:
    """Seconds this process's main thread (the event loop's) spent runnable but waiting for a
    CPU, from /proc/self/schedstat: what a shared machine takes from the daemon."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/self/schedstat").read_text().split()[1]) / 1e9
    return math.nan


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


# ----------------------------------------------------------------------------------------------
# One N


@dataclass
class RowResult:
    racks: int
    devices: int
    polls: int
    cpu_per_poll_us: float
    bare_cpu_per_poll_us: float
    tick_lateness_p99_ms: float
    tick_lateness_max_ms: float
    poll_lateness_p99_ms: float
    missed_ticks: int
    missed_polls: int
    failed_polls: int
    rss_mb: float
    daemon_cpu_share: float  # of one core, over the window
    sim_cpu_share: float
    bare_missed_polls: int
    writes_per_s: float = math.nan  # actuator writes (PATCH or register write + read-back)
    cpu_wait_share: float = math.nan  # of the window, the loop thread runnable but not running

    @property
    def ratio(self) -> float:
        return self.cpu_per_poll_us / self.bare_cpu_per_poll_us

    @property
    def holds(self) -> bool:
        return (
            self.missed_ticks == 0
            and self.missed_polls == 0
            and self.tick_lateness_p99_ms < JITTER_LIMIT_S * 1e3
        )


def p99(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


async def measure_row(
    racks: int,
    window_s: float,
    warmup_s: float,
    scrape_s: float,
    cap_deadband_w: float | None = None,
) -> RowResult:
    with tempfile.TemporaryDirectory(prefix="coolctl-scale-") as folder:
        base = Path(folder)
        config_path = base / "row.toml"
        config_path.write_text(row_config(racks, cap_deadband_w))
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        child = context.Process(
            target=simulation_process,
            args=(theirs, str(config_path), str(base / "tls"), scrape_s),
            name="coolctl-scale-sim",
        )
        child.start()
        try:
            services: list[SimService] = await asyncio.to_thread(ours.recv)
            secrets = base / "secrets"
            secrets.mkdir()
            config = with_services(load_checked_config(config_path), services, secrets)
            config = replace(config, daemon=replace(config.daemon, metrics_listen=("127.0.0.1", 0)))
            result, requests = await run_daemon(
                config, base, ours, child.pid or 0, window_s, warmup_s
            )
            bare_us, bare_missed = await run_bare(config, services, requests, window_s, warmup_s)
            result.bare_cpu_per_poll_us = bare_us
            result.bare_missed_polls = bare_missed
            return result
        finally:
            with contextlib.suppress(OSError):
                ours.send(("stop",))
            await asyncio.to_thread(child.join, 30)
            if child.is_alive():
                child.kill()


Requests = dict[tuple[str, str], list[tuple[str, dict[str, str] | None]]]


async def run_daemon(
    config: Config,
    base: Path,
    conn: multiprocessing.connection.Connection,
    sim_pid: int,
    window_s: float,
    warmup_s: float,
) -> tuple[RowResult, Requests]:
    """The whole daemon against the row, measured over the window."""
    state = base / "state"
    service = Service(config, ServiceOptions(state / "coolctl.db", state / "control.sock"))
    await service.start()
    try:
        daemon = service.daemon
        assert service.metrics is not None
        conn.send(("scrape", service.metrics.url))
        handles = list(daemon.devices.values())
        deadline = time.monotonic() + 120.0
        while any(h.client.stats.last_success_ts is None for h in handles):
            if time.monotonic() > deadline:
                raise RuntimeError("not every device answered within 120 s")
            await asyncio.sleep(0.2)
        await asyncio.sleep(warmup_s)

        schedules = [r.tick_stats for r in daemon.racks.values()]
        pollers = list(daemon.poll_stats.values())
        tick_lateness: list[float] = []
        poll_lateness: list[float] = []

        def harvest(clear_only: bool = False) -> None:
            for stats, into in [(s, tick_lateness) for s in schedules] + [
                (s, poll_lateness) for s in pollers
            ]:
                if not clear_only:
                    into.extend(stats.lateness_s)
                stats.lateness_s.clear()

        channels = [c for r in daemon.racks.values() for c in r.actuators.values()]

        def totals() -> tuple[int, int, int, int, int]:
            return (
                sum(h.client.stats.polls for h in handles),
                sum(getattr(h.client.stats, "poll_failures", 0) for h in handles),
                sum(s.missed for s in schedules),
                sum(s.missed for s in pollers),
                sum(c.stats.writes + c.stats.write_failures for c in channels),
            )

        harvest(clear_only=True)
        before = totals()
        cpu_before, sim_before = time.process_time(), process_cpu_s(sim_pid)
        wait_before = run_queue_wait_s()
        started = time.monotonic()
        print("window", flush=True, file=sys.stderr)
        while (left := started + window_s - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 20.0))  # under the 64 samples each stats keeps
            harvest()
        elapsed = time.monotonic() - started
        cpu = time.process_time() - cpu_before
        sim_cpu = process_cpu_s(sim_pid) - sim_before
        waited = run_queue_wait_s() - wait_before
        after = totals()
        polls, failed, missed_ticks, missed_polls, writes = (
            a - b for a, b in zip(after, before, strict=True)
        )
        requests: Requests = {
            key: h.client.poll_requests()
            for key, h in daemon.devices.items()
            if isinstance(h.client, RedfishDevice)
        }
        result = RowResult(
            racks=len(daemon.racks),
            devices=len(handles),
            polls=polls,
            cpu_per_poll_us=cpu / max(polls, 1) * 1e6,
            bare_cpu_per_poll_us=math.nan,
            tick_lateness_p99_ms=p99(tick_lateness) * 1e3,
            tick_lateness_max_ms=max(tick_lateness, default=math.nan) * 1e3,
            poll_lateness_p99_ms=p99(poll_lateness) * 1e3,
            missed_ticks=missed_ticks,
            missed_polls=missed_polls,
            failed_polls=failed,
            rss_mb=resident_mb(),
            daemon_cpu_share=cpu / elapsed,
            sim_cpu_share=sim_cpu / elapsed,
            bare_missed_polls=0,
            writes_per_s=writes / elapsed,
            cpu_wait_share=waited / elapsed,
        )
        return result, requests
    finally:
        await service.stop()


# ----------------------------------------------------------------------------------------------
# The bare-protocol loop


Poll = Callable[[], Awaitable[None]]


async def bare_modbus(host: str, port: int, blocks: tuple[ReadBlock, ...]) -> tuple[Poll, Any]:
    client = AsyncModbusTcpClient(host, port=port, retries=0, reconnect_delay=0)
    await client.connect()
    readers = {
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
        "coil": client.read_coils,
        "discrete": client.read_discrete_inputs,
    }

    async def poll() -> None:
        for block in blocks:
            await readers[block.table](block.start, count=block.count, device_id=1)

    return poll, client.close


async def bare_redfish(
    service: SimService, requests: list[tuple[str, dict[str, str] | None]], limit: int
) -> tuple[Poll, Any]:
    context = ssl.create_default_context(cafile=service.ca)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=limit))
    async with session.post(
        f"{service.url}/redfish/v1/SessionService/Sessions",
        json={"UserName": service.username, "Password": service.password},
    ) as response:
        headers = {"X-Auth-Token": response.headers["X-Auth-Token"]}

    async def get(uri: str, params: dict[str, str] | None) -> None:
        async with session.get(service.url + uri, params=params, headers=headers) as response:
            json.loads(await response.read())

    async def poll() -> None:
        await asyncio.gather(*(get(uri, params) for uri, params in requests))

    return poll, session.close


async def run_bare(
    config: Config,
    services: list[SimService],
    requests: Requests,
    window_s: float,
    warmup_s: float,
) -> tuple[float, int]:
    """CPU µs per device poll of the bare loop, and the polls it skipped for overrunning."""
    by_device = {(s.rack, s.device): s for s in services if s.protocol == "redfish"}
    polls: list[tuple[Poll, float]] = []
    closers: list[Any] = []
    phases = rack_phases(config)  # the daemon's schedule: racks spread across the period
    for rack in config.racks.values():
        for device in rack.devices.values():
            if isinstance(device, RedfishDeviceConfig):
                poll, close = await bare_redfish(
                    by_device[(rack.id, device.id)],
                    requests[(rack.id, device.id)],
                    device.max_in_flight,
                )
            elif isinstance(device, ModbusDeviceConfig):
                blocks = ModbusDevice(
                    rack=rack.id,
                    device=device.id,
                    host=device.address,
                    port=device.port,
                    unit_id=device.unit,
                    profile=_profile(device.profile),
                ).blocks
                poll, close = await bare_modbus(device.address, device.port, blocks)
            else:
                continue
            polls.append((poll, phases[rack.id] % PERIOD_S))
            closers.append(close)
    count = [0]
    missed = [0]

    async def every_second(poll: Poll, due: float) -> None:
        while True:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await poll()
            count[0] += 1
            due += PERIOD_S
            if (now := time.monotonic()) > due:
                skipped = math.floor((now - due) / PERIOD_S) + 1
                missed[0] += skipped
                due += skipped * PERIOD_S

    start = time.monotonic()
    tasks = [asyncio.create_task(every_second(poll, start + phase)) for poll, phase in polls]
    try:
        await asyncio.sleep(warmup_s)
        polls_before, missed_before, cpu_before = count[0], missed[0], time.process_time()
        await asyncio.sleep(window_s)
        cpu = time.process_time() - cpu_before
        done, skipped = count[0] - polls_before, missed[0] - missed_before
    finally:
        await cancel_and_wait(tasks)  # pymodbus's wait_for may swallow a single cancel
        for close in closers:
            result = close()
            if asyncio.iscoroutine(result):
                await result
    return cpu / max(done, 1) * 1e6, skipped


def _profile(name: str) -> Any:
    from coolctl.drivers.modbus_profile import load_profile

    return load_profile(name)


# ----------------------------------------------------------------------------------------------
# The table


HEADER = (
    f"{'racks':>5} {'devices':>7} {'CPU/poll µs':>11} {'bare µs':>8} {'ratio':>6}"
    f" {'tick p99 ms':>11} {'tick max ms':>11} {'missed ticks':>12} {'missed polls':>12}"
    f" {'failed polls':>12} {'bare missed':>11} {'writes/s':>8} {'RSS MB':>7}"
    f" {'daemon CPU':>10} {'CPU wait':>8} {'sim CPU':>8} {'holds':>5}"
)


def row_line(r: RowResult) -> str:
    return (
        f"{r.racks:5d} {r.devices:7d} {r.cpu_per_poll_us:11.0f} {r.bare_cpu_per_poll_us:8.0f}"
        f" {r.ratio:6.2f} {r.tick_lateness_p99_ms:11.1f} {r.tick_lateness_max_ms:11.1f}"
        f" {r.missed_ticks:12d} {r.missed_polls:12d} {r.failed_polls:12d}"
        f" {r.bare_missed_polls:11d} {r.writes_per_s:8.0f} {r.rss_mb:7.0f}"
        f" {r.daemon_cpu_share:10.0%} {r.cpu_wait_share:8.0%} {r.sim_cpu_share:8.0%}"
        f" {'yes' if r.holds else 'NO':>5}"
    )


def run_one_in_child(racks: int, arguments: argparse.Namespace) -> RowResult:
    """Each N in a fresh interpreter, so that its resident memory is its own."""
    command = [
        sys.executable,
        __file__,
        "--one",
        str(racks),
        "--window",
        str(arguments.window),
        "--warmup",
        str(arguments.warmup),
        "--scrape-every",
        str(arguments.scrape_every),
    ]
    if arguments.uvloop:
        command.append("--uvloop")
    if arguments.cap_deadband_w is not None:
        command += ["--cap-deadband-w", str(arguments.cap_deadband_w)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return RowResult(**json.loads(output.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--racks", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--search", type=int, nargs="*", default=[48, 64], help="larger rows, until one fails"
    )
    parser.add_argument(
        "--bisect",
        type=int,
        default=2,
        help="sizes tried between the largest that held and the smallest that did not",
    )
    parser.add_argument("--window", type=float, default=15.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--scrape-every", type=float, default=5.0, help="/metrics scrape period")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--log-level", default="ERROR", help="the daemon's, to stderr")
    parser.add_argument(
        "--uvloop", action="store_true", help="daemon and bare loop on uvloop (not a dependency)"
    )
    parser.add_argument(
        "--cap-deadband-w",
        type=float,
        help="every rack's [power] cap_deadband_w (default: the config's default)",
    )
    arguments = parser.parse_args()
    if arguments.one is not None:
        logging.basicConfig(
            level=arguments.log_level, format="%(relativeCreated)d %(name)s %(message)s"
        )
        if arguments.uvloop:
            # Imported by name: uvloop is measured here, not required by coolctl.
            uvloop = importlib.import_module("uvloop")
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        result = asyncio.run(
            measure_row(
                arguments.one,
                arguments.window,
                arguments.warmup,
                arguments.scrape_every,
                arguments.cap_deadband_w,
            )
        )
        print(json.dumps(asdict(result)))
        return
    print(
        f"coolctl: one daemon, N racks x 20 devices, control and polls every {PERIOD_S:g} s;"
        f" {arguments.window:g} s windows after {arguments.warmup:g} s warm-up;"
        f" /metrics scraped every {arguments.scrape_every:g} s; CPU per device poll of the"
        " daemon process, bare = pymodbus reads and aiohttp GETs of the same requests;"
        f" event loop: {'uvloop' if arguments.uvloop else 'asyncio'}"
        + (
            ""
            if arguments.cap_deadband_w is None
            else f"; cap_deadband_w = {arguments.cap_deadband_w:g} W"
        )
    )
    print(HEADER, flush=True)
    results: dict[int, RowResult] = {}

    def measure(racks: int) -> RowResult:
        results[racks] = run_one_in_child(racks, arguments)
        print(row_line(results[racks]), flush=True)
        return results[racks]

    for racks in arguments.racks:
        measure(racks)
    if all(r.holds for r in results.values()):
        for racks in arguments.search:
            if not measure(racks).holds:
                break
    # Between the largest row that held and the smallest that did not, halve the gap.
    for _ in range(arguments.bisect):
        held = [n for n, r in results.items() if r.holds]
        failed = [n for n, r in results.items() if not r.holds and n > max(held, default=0)]
        if not failed:
            break
        low, high = max(held, default=0), min(failed)
        if high - low <= 1:
            break
        measure((low + high) // 2)
    largest = max((n for n, r in results.items() if r.holds), default=0)
    print(f"largest row that holds at {PERIOD_S:g} s: {largest} racks ({largest * 20} devices)")
    print(
        f"(holds: no missed tick or poll, tick lateness p99 < {JITTER_LIMIT_S * 1e3:.0f} ms;"
        " ratio: coolctl CPU per poll / bare; poll lateness p99 in the --one JSON)"
    )


if __name__ == "__main__":
    main()
