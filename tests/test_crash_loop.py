"""Crash safety under load: `coolctl run` SIGKILLed 50 times at random moments while an
operator writes overrides and the daemon polls and controls the simulated rack.

After every kill the daemon is restarted and must come back with every acknowledged override
(and its audit record), a store that passes `PRAGMA integrity_check`, and actuators driven
from the state it has now: while the daemon is dead the test moves the CDU's pump setpoint
behind its back (a direct Modbus write), and after the restart the CDU must hold the pump
override again. A daemon that trusted a cache of what it wrote before the crash would skip
that write, because the value it wants is the value it last wrote.

One cycle is short by design (kill after 0–300 ms of load) so that 50 kills fit in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import COOLCTL, site_config
from pymodbus.client import AsyncModbusTcpClient

from coolctl.ops.client import ClientError, ControlClient, Unreachable
from coolctl.ops.store import Store
from coolctl.tools.testing import eventually

KILLS = 50
RACK = "r01"
PUMP = "cdu1/pump_speed_command"
PUMP_REGISTER = 0  # sim-cdu: holding 0, uint16, scale 0.001
FLOW_REGISTER = 2  # sim-cdu: input 2, uint16, scale 0.1 (its noise moves it every step)
CDU_UNIT = 1
# What the load writes: values that keep the simulated plant far from any interlock (an
# interlock outranks an override, and would make the pump's value unpredictable).
RANGES = {
    PUMP: (0.4, 1.0),
    "cdu1/valve_command": (0.6, 1.0),
    "pump.setpoint": (140.0, 180.0),
    "supply.setpoint": (33.0, 37.0),
}
CLEARABLE = ("cdu1/valve_command", "pump.setpoint", "supply.setpoint")
REDRIVE_WITHIN_S = 5.0


@dataclass(frozen=True, slots=True)
class Op:
    """One operator request: set `target` to `value`, or clear it (`value` None). `why` is
    unique per request, so its audit record can be found."""

    target: str
    value: float | None
    why: str

    def apply(self, state: dict[str, float]) -> None:
        if self.value is None:
            state.pop(self.target, None)
        else:
            state[self.target] = self.value


def crash_config(tmp_path: Path, served: dict[str, str]) -> Path:
    """The example site against the simulated rack, with a faster tick and no slew on the
    pump, so that the re-drive after a restart lands on the first tick (slew counts from
    what the device holds, and would stretch every cycle by seconds)."""
    path = site_config(tmp_path, served)
    text = path.read_text()
    text = text.replace("control_period_s = 1.0", "control_period_s = 0.25", 1)
    assert "slew_per_s = 0.1\n" in text  # the pump loop's slew
    path.write_text(text.replace("slew_per_s = 0.1\n", "", 1))
    return path


def start_daemon(config: Path, state: Path, log: Path) -> subprocess.Popen[bytes]:
    """`coolctl run`, its log appended to a file (a pipe nobody reads would fill up and stall
    the daemon during the load)."""
    env = {**os.environ, "STATE_DIRECTORY": str(state), "RUNTIME_DIRECTORY": str(state)}
    with log.open("ab") as sink:
        return subprocess.Popen(
            [
                *COOLCTL,
                "run",
                "--config",
                str(config),
                "--metrics-listen",
                "127.0.0.1:0",  # a port of its own each start: a port picked here could be taken
            ],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            cwd="/",
            env=env,
        )


async def wait_for_api(socket_path: Path, daemon: subprocess.Popen[bytes]) -> float:
    """Seconds until the control API answers; fails at once if the daemon exits."""

    async def answers() -> bool:
        assert daemon.poll() is None, f"coolctl run exited with {daemon.returncode}"
        with contextlib.suppress(Unreachable, ClientError):
            async with ControlClient(socket_path=socket_path, timeout_s=2.0) as client:
                await client.status()
                return True
        return False

    return await eventually(answers, 20.0, what=f"the control API at {socket_path}", poll_s=0.02)


def operations(rng: random.Random, known: dict[str, float]) -> Iterator[Op]:
    """An endless stream of overrides (mostly sets, some clears of what is set), each with a
    distinct value and reason. `known` is the state as acknowledged so far."""
    for n in itertools.count():
        why = f"load {rng.getrandbits(40):010x} #{n}"
        clearable = [target for target in CLEARABLE if target in known]
        if clearable and rng.random() < 0.15:
            yield Op(rng.choice(clearable), None, why)
            continue
        target = rng.choice(list(RANGES))
        low, high = RANGES[target]
        yield Op(target, round(rng.uniform(low, high), 3), why)


async def send(client: ControlClient, op: Op) -> None:
    if op.value is None:
        await client.clear_override(RACK, op.target, reason=op.why)
    else:
        await client.set_override(RACK, op.target, op.value, ttl_s=3600.0, reason=op.why)


async def write_until_killed(
    client: ControlClient, ops: Iterator[Op], state: dict[str, float], acked: list[Op]
) -> Op:
    """Send requests one after another, applying each to `state` once acknowledged; return the
    request that was in flight when the daemon stopped answering."""
    while True:
        op = next(ops)
        try:
            await send(client, op)
        except Unreachable:
            return op
        acked.append(op)
        op.apply(state)


async def read_register(port: int) -> int:
    async with AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2.0) as modbus:
        reply = await modbus.read_holding_registers(PUMP_REGISTER, count=1, device_id=CDU_UNIT)
        assert not reply.isError(), reply
        return int(reply.registers[0])


async def simulation_steps(port: int, steps: int) -> None:
    """Until the simulated CDU's flow register (noisy) has changed `steps` times: proof that
    the simulation has stepped and refreshed its registers since, whatever the wall clock."""
    seen: list[int] = []

    async def changed() -> bool:
        async with AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2.0) as modbus:
            reply = await modbus.read_input_registers(FLOW_REGISTER, count=1, device_id=CDU_UNIT)
        assert not reply.isError(), reply
        if not seen or seen[-1] != reply.registers[0]:
            seen.append(reply.registers[0])
        return len(seen) > steps

    await eventually(changed, 30.0, what=f"{steps} steps of the simulated CDU")


async def drift_pump(port: int, avoid: set[int], rng: random.Random) -> int:
    """Move the CDU's pump setpoint behind coolctl's back (it is dead): a value it never asked
    for in this cycle."""
    counts = rng.choice([c for c in range(400, 1001) if c not in avoid])
    async with AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2.0) as modbus:
        reply = await modbus.write_register(PUMP_REGISTER, counts, device_id=CDU_UNIT)
        assert not reply.isError(), reply
    assert await read_register(port) == counts
    return counts


async def wait_for_register(port: int, counts: int, within_s: float) -> float:
    """Seconds until the pump register holds `counts`."""

    async def holds() -> bool:
        return await read_register(port) == counts

    return await eventually(holds, within_s, what=f"the CDU holding the override's {counts}")


async def audit_since(client: ControlClient, since: int) -> tuple[list[dict[str, Any]], int]:
    records: list[dict[str, Any]] = []
    while True:
        page = await client.audit(since=since, limit=1000)
        if not page["audit"]:
            return records, since
        records += page["audit"]
        since = page["next_since"]


def counts_of(value: float) -> int:
    return round(value * 1000)


@pytest.mark.asyncio
async def test_sigkill_under_load_fifty_times(served: dict[str, str], tmp_path: Path) -> None:
    config = crash_config(tmp_path, served)
    socket_path = tmp_path / "control.sock"
    log = tmp_path / "daemon.log"
    cdu_port = int(served["cdu1"].rsplit(":", 1)[1])
    seed = int(os.environ.get("COOLCTL_TEST_SEED", "0")) or random.randrange(2**32)
    rng = random.Random(seed)
    expected: dict[str, float] = {}  # the overrides as acknowledged
    acked_whys: set[str] = set()
    ops = operations(rng, expected)
    audited: dict[str, dict[str, Any]] = {}  # why -> audit record
    audit_cursor = 0
    in_flight: Op | None = None
    drifted_to: int | None = None
    stats = {"acked": 0, "in_flight_landed": 0, "in_flight_lost": 0, "redrives": 0}
    startup_s: list[float] = []
    redrive_s: list[float] = []
    kills = 0
    daemon: subprocess.Popen[bytes] | None = None
    try:
        for cycle in range(KILLS + 1):
            daemon = start_daemon(config, tmp_path, log)
            startup_s.append(await wait_for_api(socket_path, daemon))
            async with ControlClient(socket_path=socket_path, timeout_s=5.0) as client:
                records, audit_cursor = await audit_since(client, audit_cursor)
                for record in records:
                    audited[record["details"].get("why", "")] = record
                # The request in flight at the kill landed if and only if it was audited
                # (override and audit row are one transaction).
                if in_flight is not None:
                    landed = in_flight.why in audited
                    stats["in_flight_landed" if landed else "in_flight_lost"] += 1
                    if landed:
                        in_flight.apply(expected)
                        acked_whys.add(in_flight.why)
                    in_flight = None
                listed = (await client.overrides(RACK))["overrides"]
                found = {entry["target"]: entry["value"] for entry in listed}
                context = f"cycle {cycle} (seed {seed})"
                assert found == expected, f"{context}: overrides {found} != acked {expected}"
                missing = acked_whys - audited.keys()
                assert not missing, f"{context}: acknowledged but not audited: {missing}"
                with Store(tmp_path / "coolctl.db") as store:  # a second reader, live
                    assert store.integrity_check(), f"{context}: store corrupt"
                # Re-driven from the current state, not from a cache of the last write.
                if drifted_to is not None:
                    want = counts_of(expected[PUMP])
                    assert want != drifted_to
                    redrive_s.append(await wait_for_register(cdu_port, want, REDRIVE_WITHIN_S))
                    stats["redrives"] += 1
                if cycle == KILLS:
                    break
                if cycle == 0:  # the pump override every later cycle checks for
                    first = Op(PUMP, 0.7, "crash loop: the pump override")
                    await send(client, first)
                    first.apply(expected)
                    acked_whys.add(first.why)
                acked: list[Op] = []
                writer = asyncio.ensure_future(write_until_killed(client, ops, expected, acked))
                await asyncio.sleep(rng.uniform(0.0, 0.3))
                daemon.send_signal(signal.SIGKILL)
                in_flight = await asyncio.wait_for(writer, 10.0)
            assert daemon.wait(timeout=10) == -signal.SIGKILL
            kills += 1
            stats["acked"] += len(acked)
            acked_whys.update(op.why for op in acked)
            avoid = {counts_of(expected[PUMP])}
            if in_flight.target == PUMP and in_flight.value is not None:
                avoid.add(counts_of(in_flight.value))
            drifted_to = await drift_pump(cdu_port, avoid, rng)
            if cycle == 0:  # the simulated CDU keeps a drifted value by itself
                await simulation_steps(cdu_port, 10)
                assert await read_register(cdu_port) == drifted_to
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=10)
    assert kills == KILLS
    with Store(tmp_path / "coolctl.db") as store:
        assert store.integrity_check()
        active = {o.target: o.value for o in store.active_overrides(time.time())}
        whys = {a.details.get("why") for a in store.audit_log(limit=100_000)}
    assert active == expected
    assert acked_whys <= whys
    logged = log.read_text(errors="replace")
    assert "Traceback" not in logged, logged[logged.index("Traceback") - 2000 :][:6000]
    startup_s.sort()
    redrive_s.sort()
    print(
        f"\ncrash loop (seed {seed}): {kills} SIGKILLs, {stats['acked']} acknowledged requests,"
        f" in flight at the kill: {stats['in_flight_landed']} landed,"
        f" {stats['in_flight_lost']} not; nothing acknowledged lost;"
        f" pump re-driven after {stats['redrives']} drifts (median"
        f" {redrive_s[len(redrive_s) // 2] * 1000:.0f} ms, max {redrive_s[-1] * 1000:.0f} ms"
        f" after the API answered); restart to API up: median"
        f" {startup_s[len(startup_s) // 2]:.2f} s, max {startup_s[-1]:.2f} s"
    )
