"""Cost of one poll → control → write cycle per device, against a bare pymodbus loop.

Both run in this process, against the same simulated CDU (a real Modbus TCP server on
loopback), in alternating rounds so that machine noise hits both alike. The figures are
CPU time per cycle (client and server together, since both live in this process) and the
ratio to the bare loop doing the same requests:

- bare read:  the same read requests the driver's poll makes, decoded by nothing
- bare write: the same, plus two register writes and their read-backs
- coolctl poll + control: driver poll, telemetry store, snapshot, both PID loops, clamp, and
  whatever writes the loops decide on (a setpoint is written only when it moves by at least
  one register count; the share of cycles that wrote is printed)
- coolctl poll + control + write: the same path, the whole tick (both PID loops, the
  supervisor, the rack step, the actuator channels with read-back), with each loop's setpoint
  stepped every cycle (an operator's setpoint override, alternating) so that both loops move
  their outputs and both setpoints are written every cycle. The loops' slew limits are lifted
  for this row only (a cycle here lasts well under a millisecond, and a slew-limited output
  would move less than a register count); the printed writes/cycle shows they were written

    python benchmarks/cycle_cost.py [--cycles N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from coolctl.config import load_config
from coolctl.daemon.runtime import Daemon
from coolctl.drivers.modbus_profile import load_profile, plan_reads
from coolctl.model import PointId
from coolctl.simulators.live import LiveSimulation
from coolctl.tools.simrack import sim_specs, with_services

Cycle = Callable[[int], Awaitable[None]]
HIL_RACK = Path(__file__).resolve().parent.parent / "tests" / "configs" / "hil-rack.toml"


async def bare_reads(host: str, port: int) -> tuple[AsyncModbusTcpClient, Cycle, Cycle]:
    """A bare pymodbus client making the driver's requests, with no decoding or logic."""
    client = AsyncModbusTcpClient(host, port=port, retries=0, reconnect_delay=0)
    await client.connect()
    blocks = plan_reads(load_profile("sim-cdu"))
    readers = {
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
        "coil": client.read_coils,
        "discrete": client.read_discrete_inputs,
    }

    async def read(_: int) -> None:
        for block in blocks:
            reply = await readers[block.table](block.start, count=block.count, device_id=1)
            assert not reply.isError()

    async def read_and_write(step: int) -> None:
        await read(step)
        for address in (0, 1):  # pump_speed_command, valve_command
            value = 500 + step % 2 * 100 + address
            await client.write_register(address, value, device_id=1)
            back = await client.read_holding_registers(address, count=1, device_id=1)
            assert back.registers[0] == value

    return client, read, read_and_write


def coolctl_cycles(daemon: Daemon) -> tuple[Cycle, Cycle]:
    """One CDU's poll → store → snapshot → loops → clamp (→ write) through the real runtime."""
    handle = daemon.devices[("r01", "cdu1")]
    rack = daemon.racks["r01"]

    async def poll_and_control(_: int) -> None:
        daemon.store.update(await handle.client.poll())
        await rack.tick()
        for channel in rack.actuators.values():
            await channel.idle()

    loops = rack.controller.loops
    steps = {"pump": (140.0, 180.0), "supply": (30.0, 40.0)}  # flow L/min, supply °C

    async def poll_control_write(step: int) -> None:
        # step both setpoints every cycle so that both loops move their outputs: the tick
        # decides both setpoints anew and each cycle writes and reads back both
        for name, (low, high) in steps.items():
            loops[name].setpoint_override = high if step % 2 else low
        daemon.store.update(await handle.client.poll())
        await rack.tick()
        for channel in rack.actuators.values():
            await channel.idle()

    async def poll_and_control_held(step: int) -> None:
        for loop in loops.values():
            loop.setpoint_override = None
        await poll_and_control(step)

    return poll_and_control_held, poll_control_write


async def cpu_per_cycle(cycle: Cycle, cycles: int) -> float:
    started = time.process_time()
    for step in range(cycles):
        await cycle(step)
    return (time.process_time() - started) / cycles


async def main(cycles: int, rounds: int) -> None:
    # The Modbus rack of the HIL tests: a CDU and a PDU with the pump and supply loops. (The
    # demo's rack has 18 BMCs and MQTT sensors too, whose caps would be in every tick here.)
    config = load_config(HIL_RACK)
    # The plant is stepped by its own task in both halves alike; slow it so it costs little.
    async with LiveSimulation(sim_specs(config, port=0), step_s=1.0) as simulation:
        config = with_services(config, simulation.services)
        # no slew limits: see the module docstring (the loops' own, and so the supervisor's)
        racks = {
            rack_id: replace(
                rack,
                loops={name: replace(loop, slew_per_s=None) for name, loop in rack.loops.items()},
            )
            for rack_id, rack in config.racks.items()
        }
        daemon = Daemon(replace(config))  # as configured
        unslewed = Daemon(replace(config, racks=racks))  # for the row that writes every cycle
        for each in (daemon, unslewed):
            for rack in each.racks.values():
                rack.start()  # actuator channels only: the benchmark drives polls and ticks
        host, port = simulation.service("r01", "cdu1").address.rsplit(":", 1)
        client, bare_read, bare_write = await bare_reads(host, int(port))
        poll_control, _ = coolctl_cycles(daemon)
        _, poll_control_write = coolctl_cycles(unslewed)
        cases = {
            "bare read": bare_read,
            "bare read + 2 writes": bare_write,
            "coolctl poll + control": poll_control,
            "coolctl poll + control + 2 writes": poll_control_write,
        }
        for cycle in cases.values():  # warm up connections and caches
            await cpu_per_cycle(cycle, 20)
        results: dict[str, list[float]] = {name: [] for name in cases}
        channels = [
            *daemon.racks["r01"].actuators.values(),
            *unslewed.racks["r01"].actuators.values(),
        ]
        writes = dict.fromkeys(cases, 0)
        for _ in range(rounds):
            for name, cycle in cases.items():
                before = sum(c.stats.writes for c in channels)
                results[name].append(await cpu_per_cycle(cycle, cycles))
                writes[name] += sum(c.stats.writes for c in channels) - before
        client.close()
        for each in (daemon, unslewed):
            for rack in each.racks.values():
                await rack.stop()
            await each.stop()
            valve = each.racks["r01"].actuators[PointId("r01", "cdu1", "valve_command")].stats
            assert valve.write_failures == 0, valve.last_error

    median = {name: statistics.median(values) for name, values in results.items()}
    print(f"cycle cost per device, median of {rounds} rounds x {cycles} cycles (CPU, µs/cycle)")
    print(f"{'case':<36} {'µs':>8} {'ratio':>7}  {'writes/cycle':>12}  baseline")
    baselines = {
        "bare read": "bare read",
        "bare read + 2 writes": "bare read",
        "coolctl poll + control": "bare read",
        "coolctl poll + control + 2 writes": "bare read + 2 writes",
    }
    for name, value in median.items():
        base = baselines[name]
        per_cycle = writes[name] / (rounds * cycles)
        print(
            f"{name:<36} {value * 1e6:8.0f} {value / median[base]:7.2f}  {per_cycle:12.2f}  {base}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.cycles, args.rounds))
