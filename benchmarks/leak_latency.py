"""Leak message published → interlock command written to the simulated CDU: p50 and p99.

Two rows for coolctl: direct mode (the pump stop, `pump_speed_command` = 0) and setpoint mode
(`cdu_control = "setpoints"`: the CDU's run command, `cdu_run_command` = 0, which stops the
CDU's own loops and pumps).

The daemon runs against the simulated rack with a real Mosquitto, in this process. Each trial
publishes a wet leak-rope message (as the rope would) and times until the simulated CDU has
received the pump stop, then publishes dry and waits for the interlock to release. The
baseline, in the same process and on the same broker and CDU, is the bare protocol floor: one
aiomqtt publish → subscriber delivery plus one pymodbus register write with read-back.

The control period (0.3 s) and the Modbus poll (1 s) are printed for scale: a leak acted on at
the next tick or poll would take up to that long; the fast path acts when the message arrives.

    python benchmarks/leak_latency.py [--trials N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import aiomqtt
from pymodbus.client import AsyncModbusTcpClient

from coolctl.tools.broker import Mosquitto
from coolctl.tools.testing import HilRack, hil_rack

CONFIG = """
[site]
name = "bench"

[mqtt]
broker = "127.0.0.1:1883"

[racks.r01]
control_period_s = 0.3

[racks.r01.safety]
failsafe_after_s = 5.0
hold_s = 0.1
leak_response = "stop"
leak_debounce_s = 0.0    # the fast path itself: the first wet message trips
leak_latched = false     # each trial releases by itself, for the next

[racks.r01.devices.cdu1]
driver = "modbus"
address = "127.0.0.1"
port = 15020
profile = "sim-cdu"
poll_interval_s = 1.0
timeout_s = 0.5
stale_after_s = 5.0

[racks.r01.devices.rope1]
driver = "mqtt"
profile = "sim-mqtt-sensors"
topic_prefix = "bench"
stale_after_s = 60.0

[racks.r01.loops.pump]
measurement = "cdu1/flow"
actuator = "cdu1/pump_speed_command"
setpoint = 160.0
kp = 0.002
ki = 0.004
output_min = 0.2
output_max = 1.0
slew_per_s = 0.1
"""
LEAK_TOPIC = "bench/r01/rope1/leak"
CONTROL_PERIOD_S, MODBUS_POLL_S = 0.3, 1.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def publish_leak(client: aiomqtt.Client, wet: bool) -> None:
    payload = json.dumps({"wet": wet, "ts": time.time()})
    await client.publish(LEAK_TOPIC, payload, qos=1, retain=True)


STOP_POINT = {"direct": "pump_speed_command", "setpoints": "cdu_run_command"}


def stop_seen_after(rack: HilRack, since: float) -> float | None:
    point = STOP_POINT[rack.config.racks["r01"].cdu_control.value]
    for write in rack.simulation.writes("r01", "cdu1"):
        if write.point == point and write.value == 0.0 and write.wall_time_s >= since:
            return write.wall_time_s
    return None


async def coolctl_trials(rack: HilRack, client: aiomqtt.Client, trials: int) -> list[float]:
    latencies = []
    runtime = rack.daemon.racks["r01"]
    for _ in range(trials):
        started = time.monotonic()
        await publish_leak(client, True)
        # the simulator only appends to a list: poll it (0.5 ms granularity)
        while (seen := stop_seen_after(rack, started)) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.0005)
        latencies.append(seen - started)
        await publish_leak(client, False)
        while runtime.decision is None or runtime.decision.interlocks:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
    return latencies


async def baseline_trials(broker: str, cdu: str, trials: int) -> list[float]:
    """Bare aiomqtt publish → delivery, plus a bare pymodbus write and read-back."""
    host, port = broker.rsplit(":", 1)
    cdu_host, cdu_port = cdu.rsplit(":", 1)
    modbus = AsyncModbusTcpClient(cdu_host, port=int(cdu_port), retries=0, reconnect_delay=0)
    await modbus.connect()
    latencies = []
    async with (
        aiomqtt.Client(host, port=int(port)) as publisher,
        aiomqtt.Client(host, port=int(port)) as subscriber,
    ):
        await subscriber.subscribe("bench/baseline", qos=1)
        messages = subscriber.messages
        for step in range(trials):
            started = time.monotonic()
            await publisher.publish("bench/baseline", str(step), qos=1)
            await anext(messages)
            await modbus.write_register(0, 500 + step % 2, device_id=1)
            await modbus.read_holding_registers(0, count=1, device_id=1)
            latencies.append(time.monotonic() - started)
    modbus.close()
    return latencies


async def mode_trials(broker: Mosquitto, folder: str, mode: str, trials: int) -> list[float]:
    """Leak trials against a fresh simulated rack whose CDU is driven in `mode`."""
    config = Path(folder) / f"bench-{mode}.toml"
    config.write_text(CONFIG.replace("[racks.r01]\n", f'[racks.r01]\ncdu_control = "{mode}"\n', 1))
    async with hil_rack(config, plant={"initial_valve": 0.5}, mqtt_broker=broker.address) as rack:
        rack.simulation.publishers[("r01", "rope1")].set_paused(True)  # we are the rope
        host, port = broker.address.rsplit(":", 1)
        async with aiomqtt.Client(host, port=int(port)) as client:
            await publish_leak(client, False)
            await asyncio.sleep(1.0)
            await coolctl_trials(rack, client, 5)  # warm up
            return await coolctl_trials(rack, client, trials)


async def main(trials: int) -> None:
    logging.disable(logging.CRITICAL)  # 200 leak interlocks would be 200 critical log lines
    with tempfile.TemporaryDirectory() as folder:
        async with Mosquitto() as broker:
            leak = await mode_trials(broker, folder, "direct", trials)
            setpoints = await mode_trials(broker, folder, "setpoints", trials)
            config = Path(folder) / "bench-direct.toml"
            async with hil_rack(
                config, plant={"initial_valve": 0.5}, mqtt_broker=broker.address
            ) as rack:
                cdu = rack.simulation.service("r01", "cdu1").address
                floor = await baseline_trials(broker.address, cdu, trials)
    print(f"leak message → pump stop written at the CDU, {trials} trials (wall time)")
    print(
        f"control period {CONTROL_PERIOD_S * 1e3:.0f} ms, Modbus poll {MODBUS_POLL_S * 1e3:.0f} ms"
    )
    print(f"{'':34} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, values in (
        ("coolctl (fast path), direct", leak),
        ("coolctl (fast path), setpoints", setpoints),
        ("bare MQTT delivery + Modbus write", floor),
    ):
        print(
            f"{name:34} {percentile(values, 0.5) * 1e3:8.2f} {percentile(values, 0.99) * 1e3:8.2f}"
            f" {max(values) * 1e3:8.2f}"
        )
    for name, values in (("direct", leak), ("setpoints", setpoints)):
        print(
            f"ratio coolctl {name}/bare: p50"
            f" {statistics.median(values) / statistics.median(floor):.2f},"
            f" p99 {percentile(values, 0.99) / percentile(floor, 0.99):.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    asyncio.run(main(parser.parse_args().trials))
