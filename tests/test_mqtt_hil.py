"""The daemon with MQTT sensors against the simulated rack and a real Mosquitto (HIL).

tests/configs/hil-mqtt-rack.toml: the plant runs at 5x, the pump loop holds the flow measured by
the MQTT flow meter, and the leak rope and inlet temperature come over MQTT too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from pathlib import Path

import aiomqtt
import pytest

from coolctl.simulators.faults import apply_fault
from coolctl.tools.broker import Mosquitto
from coolctl.tools.testing import HilRack, hil_rack

CONFIG = Path(__file__).parent / "configs" / "hil-mqtt-rack.toml"


def pump_writes(rack: HilRack) -> list[float]:
    return [
        w.value for w in rack.simulation.writes("r01", "cdu1") if w.point == "pump_speed_command"
    ]


def kinds(rack: HilRack) -> list[str]:
    return [event.kind for event in rack.daemon.recent_events]


async def ticks(rack: HilRack, count: int) -> None:
    """Wait for `count` more control ticks of r01 (not for a guess at how long they take)."""
    stats = rack.daemon.racks["r01"].tick_stats
    target = stats.runs + count
    await rack.wait_until(lambda: stats.runs >= target, 10.0 + count)


async def delivered(rack: HilRack, publishing: Awaitable[None]) -> None:
    """Publish, wait until the daemon has received the message, then for two ticks more: the
    one that may be running as it arrived, and one that surely saw it."""
    mqtt = rack.daemon.mqtt
    assert mqtt is not None
    received = mqtt.stats.messages_received
    await publishing
    await rack.wait_until(lambda: mqtt.stats.messages_received > received, 5.0)
    await ticks(rack, 2)


@pytest.mark.hil
@pytest.mark.asyncio
async def test_leak_from_the_mqtt_rope_stops_the_pump_at_the_cdu() -> None:
    async with hil_rack(CONFIG, time_scale=5.0, plant={"initial_valve": 0.5}) as rack:
        await rack.wait_until(lambda: rack.value("r01/sensors1/leak_detected") == 0.0, 10.0)
        apply_fault(
            rack.simulation, "leak", rack="r01", device=None, point=None, value=5.0, duration_s=None
        )
        await rack.wait_until(lambda: "interlock_leak" in kinds(rack), 5.0)
        await rack.wait_until(lambda: bool(pump_writes(rack)) and pump_writes(rack)[-1] == 0.0, 2.0)
        leak = next(e for e in rack.daemon.recent_events if e.kind == "interlock_leak")
        assert "leak" in leak.message and leak.severity.value == "critical"
        decision = rack.daemon.racks["r01"].decision
        assert decision is not None and "leak" in decision.interlocks
        # the pump stays stopped whatever the flow loop would like while the rope is wet
        await ticks(rack, 5)
        assert pump_writes(rack)[-1] == 0.0


@pytest.mark.hil
@pytest.mark.asyncio
async def test_silent_sensor_trips_failsafe_and_recovers_only_after_the_hold_time() -> None:
    async with hil_rack(CONFIG, time_scale=5.0, plant={"initial_valve": 0.5}) as rack:
        runtime = rack.daemon.racks["r01"]
        await rack.wait_until(
            lambda: runtime.decision is not None and not runtime.decision.failsafe, 10.0
        )
        apply_fault(
            rack.simulation,
            "link_loss",
            rack="r01",
            device="sensors1",
            point=None,
            value=None,
            duration_s=None,
        )
        silenced = time.monotonic()
        await rack.wait_until(lambda: bool(runtime.decision and runtime.decision.failsafe), 6.0)
        tripped_after = time.monotonic() - silenced
        # stale after 1.5 s without a message, then failsafe after 0.6 s more
        assert tripped_after > 1.5
        apply_fault(
            rack.simulation,
            "clear",
            rack="r01",
            device=None,
            point=None,
            value=None,
            duration_s=None,
        )
        restored = time.monotonic()
        await rack.wait_until(lambda: rack.value("r01/sensors1/flow") is not None, 5.0)
        seen_again = time.monotonic()
        await rack.wait_until(lambda: bool(runtime.decision and not runtime.decision.failsafe), 8.0)
        assert time.monotonic() - seen_again >= 2.0 - 0.25  # hold_s = 2 s, not before
        assert "failsafe" in kinds(rack) and "failsafe_cleared" in kinds(rack)
        print(
            f"\nfailsafe after {tripped_after:.2f} s of silence; released"
            f" {time.monotonic() - restored:.2f} s after the sensor came back"
        )


@pytest.mark.hil
@pytest.mark.asyncio
async def test_broker_restart_mid_run_reconnects_resubscribes_and_republishes_state() -> None:
    async with (
        Mosquitto() as broker,
        hil_rack(
            CONFIG, time_scale=5.0, plant={"initial_valve": 0.5}, mqtt_broker=broker.address
        ) as rack,
    ):
        mqtt = rack.daemon.mqtt
        assert mqtt is not None
        await rack.wait_until(lambda: rack.value("r01/sensors1/flow") is not None, 10.0)
        connects = mqtt.stats.connects
        await broker.restart()  # retained messages are gone with it
        await rack.wait_until(lambda: mqtt.stats.connects > connects, 15.0)
        # resubscribed: fresh sensor messages reach the daemon again
        await rack.wait_until(lambda: rack.value("r01/sensors1/flow") is not None, 10.0)
        # republished: a fresh subscriber gets the retained state and the online status
        host, port = broker.address.rsplit(":", 1)
        async with aiomqtt.Client(host, port=int(port)) as client:
            await client.subscribe("coolctl/hil/#")
            seen: dict[str, bytes] = {}
            async with asyncio.timeout(10.0):
                async for message in client.messages:
                    seen[str(message.topic)] = bytes(message.payload)  # type: ignore[arg-type]
                    if "coolctl/hil/status" in seen and "coolctl/hil/r01/state" in seen:
                        break
        assert seen["coolctl/hil/status"] == b"online"
        state = json.loads(seen["coolctl/hil/r01/state"])
        assert state["rack"] == "r01" and state["mode"] == "auto"
        await ticks(rack, 3)  # nothing crashed


@pytest.mark.hil
@pytest.mark.asyncio
async def test_budget_from_upstream_is_validated_and_the_last_good_one_kept() -> None:
    async with hil_rack(CONFIG, time_scale=5.0, plant={"initial_valve": 0.5}) as rack:
        runtime = rack.daemon.racks["r01"]
        assert runtime.power_budget_w == 130_000.0  # from the config until upstream says
        host, port = (rack.mqtt_broker or "").rsplit(":", 1)
        async with aiomqtt.Client(host, port=int(port)) as coordinator:

            async def send(payload: bytes) -> None:
                await coordinator.publish("row-a/r01/budget", payload, qos=1, retain=True)

            await send(b'{"watts": 95000}')
            await rack.wait_until(lambda: runtime.power_budget_w == 95_000.0, 5.0)
            for bad in (b'{"watts": "lots"}', b"not json", b'{"watts": 5000000}', b'{"kw": 9}'):
                await delivered(rack, send(bad))
                assert runtime.power_budget_w == 95_000.0, bad  # the last good one is kept
            # a number, but below the rack's budget_min_w
            await delivered(rack, send(b'{"watts": 10000}'))
            assert runtime.power_budget_w == 95_000.0
            await send(b'{"watts": 110000}')
            await rack.wait_until(lambda: runtime.power_budget_w == 110_000.0, 5.0)
        events = [e for e in rack.daemon.recent_events if e.kind.startswith("budget")]
        assert events[0].kind == "budget_set"
        assert any(e.kind == "budget_rejected" and "keeping 95000" in e.message for e in events)
        assert events[-1].kind == "budget_set" and "110000" in events[-1].message
