"""The simulated rack sensor device over a real Mosquitto broker on loopback.

The subscriber side is aiomqtt itself, never coolctl.drivers: the simulator is checked against
the wire formats, not against the client it will be used to test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest

from coolctl.simulators.live import LiveSimulation, Service, SimDeviceSpec, SimRackSpec
from coolctl.simulators.mqtt_sensors import parse_broker
from coolctl.tools.testing import LoopLag, eventually, eventually_blocking

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
STEP_S = 0.05


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Broker:
    """A Mosquitto of our own on a free loopback port, which a test may stop and start again."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.log = directory / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        if not Path(MOSQUITTO).exists():
            pytest.fail("mosquitto is not installed: apt-get install mosquitto")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        process = self.process

        def listening() -> bool:
            if process.poll() is not None:
                self.stop()
                pytest.fail(f"mosquitto did not start: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        eventually_blocking(listening, 10.0, what="mosquitto listening")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(5)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    mosquitto = Broker(tmp_path)
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    wall_s: float  # time.monotonic() on arrival


@dataclass
class Collector:
    messages: list[Received] = field(default_factory=list)

    async def run(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            assert isinstance(payload, bytes)
            self.messages.append(
                Received(str(message.topic), payload, message.qos, message.retain, time.monotonic())
            )

    def on(self, suffix: str) -> list[Received]:
        return [m for m in self.messages if m.topic.endswith("/" + suffix)]

    async def wait_for(self, match: Callable[[Received], bool], timeout_s: float) -> Received:
        seen = 0
        found: list[Received] = []

        def matched() -> bool:
            nonlocal seen
            found.extend(m for m in self.messages[seen:] if match(m))
            seen = len(self.messages)
            return bool(found)

        await eventually(matched, timeout_s, what="a matching message", poll_s=0.005)
        return found[0]


@asynccontextmanager
async def subscriber(broker: Broker, topic: str) -> AsyncIterator[Collector]:
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        collector = Collector()
        task = asyncio.create_task(collector.run(client))
        await client.subscribe(topic, qos=1)
        try:
            yield collector
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


def rack(
    name: str = "r01", device: str = "sensors1", prefix: str = "coolctl-sim", period_s: float = 1.0
) -> SimRackSpec:
    return SimRackSpec(
        name,
        [
            SimDeviceSpec("cdu1", "cdu", "sim-cdu"),
            SimDeviceSpec(device, "sensor", topic_prefix=prefix, publish_period_s=period_s),
        ],
    )


def is_leak(wet: bool) -> Callable[[Received], bool]:
    return lambda m: m.topic.endswith("/leak") and json.loads(m.payload)["wet"] is wet


@pytest.mark.asyncio
async def test_three_topics_in_their_formats_with_a_heartbeat_every_second(broker: Broker) -> None:
    async with LiveSimulation([rack()], mqtt_broker=broker.address, step_s=STEP_S) as sim:
        async with LoopLag() as lag, subscriber(broker, "coolctl-sim/r01/sensors1/#") as sub:
            await sub.wait_for(
                lambda _: all(
                    len(sub.on(name)) >= 4 for name in ("leak", "inlet_temperature", "flow")
                ),
                10.0,
            )
        truth = sim.plants["r01"].truth()

    leaks = sub.on("leak")
    assert len(leaks) >= 3
    for message in leaks:
        body = json.loads(message.payload)
        assert set(body) == {"wet", "ts"}
        assert body["wet"] is False
        assert abs(body["ts"] - time.time()) < 10.0
        assert message.qos == 1
    live = [m.wall_s for m in leaks if not m.retain]
    gaps = [b - a for a, b in itertools.pairwise(live)]
    # a second apart, give or take what the loop ran late meanwhile
    slack = 0.15 + lag.max_s
    assert gaps and all(1.0 - slack <= gap <= 1.0 + slack for gap in gaps), (gaps, lag.max_s)

    temperatures = sub.on("inlet_temperature")
    assert len(temperatures) >= 3
    for message in temperatures:
        assert re.fullmatch(rb"-?\d+\.\d\d", message.payload), message.payload
        assert message.qos == 0
    assert float(temperatures[-1].payload) == pytest.approx(truth.supply_temperature_c, abs=0.5)

    flows = sub.on("flow")
    assert len(flows) >= 3
    for message in flows:
        body = json.loads(message.payload)
        assert set(body) == {"flow"} and set(body["flow"]) == {"value", "unit"}
        assert body["flow"]["unit"] == "L/min"
        assert message.qos == 0
    assert json.loads(flows[-1].payload)["flow"]["value"] == pytest.approx(truth.flow_lpm, abs=5.0)
    assert {m.topic for m in sub.messages} == {
        "coolctl-sim/r01/sensors1/leak",
        "coolctl-sim/r01/sensors1/inlet_temperature",
        "coolctl-sim/r01/sensors1/flow",
    }


@pytest.mark.asyncio
async def test_prefix_and_period_are_configurable_and_the_service_line_names_them(
    broker: Broker,
) -> None:
    spec = rack("r02", "env1", prefix="lab/sim", period_s=0.2)
    async with LiveSimulation([spec], mqtt_broker=broker.address) as sim:
        assert sim.service("r02", "env1").line() == f"mqtt {broker.address} lab/sim/r02/env1"
        cdu = sim.service("r02", "cdu1")
        assert cdu.line() == f"modbus {cdu.address} rack=r02 device=cdu1 unit=1 profile=sim-cdu"
        async with LoopLag() as lag, subscriber(broker, "lab/sim/#") as sub:
            await eventually(lambda: len(sub.on("inlet_temperature")) >= 5)
    # every 0.2 s, not the default 1 s: the typical gap, late at most by what the loop was
    beats = [m.wall_s for m in sub.on("inlet_temperature")]
    gap_s = statistics.median(b - a for a, b in itertools.pairwise(beats))
    assert 0.15 <= gap_s <= 0.4 + lag.max_s, (gap_s, lag.max_s)
    assert all(m.topic.startswith("lab/sim/r02/env1/") for m in sub.messages)


@pytest.mark.asyncio
async def test_leak_goes_out_within_one_step_and_is_retained(broker: Broker) -> None:
    async with LiveSimulation([rack()], mqtt_broker=broker.address, step_s=STEP_S) as sim:
        plant = sim.plants["r01"]
        await sim.publishers[("r01", "sensors1")].wait_connected(5.0)
        async with LoopLag() as lag, subscriber(broker, "coolctl-sim/r01/sensors1/leak") as sub:
            await sub.wait_for(is_leak(False), 10.0)
            tripped: list[float] = []

            async def watch() -> None:
                while True:
                    if plant.truth().leak_detected:
                        tripped.append(time.monotonic())
                        return
                    await asyncio.sleep(0.002)

            watcher = asyncio.create_task(watch())
            plant.start_leak(6.0)  # the detector trips after 50 mL: ~0.5 s of plant time
            wet = await sub.wait_for(is_leak(True), 10.0)
            await watcher
            # one simulation step, plus the watcher's own polling and loopback delivery, plus
            # what the loop ran late meanwhile (not the 1 s heartbeat: a change goes out at once)
            assert wet.wall_s - tripped[0] <= STEP_S + 0.02 + lag.max_s, lag.max_s
            assert wet.qos == 1

            plant.stop_leak()
            stopped = time.monotonic()
            dry = await sub.wait_for(is_leak(False), 10.0)
            assert dry.wall_s - stopped <= STEP_S + 0.05 + lag.max_s, lag.max_s

            plant.start_leak(6.0)
            await sub.wait_for(is_leak(True), 10.0)
        # a daemon that subscribes late learns at once that the rack is wet
        async with subscriber(broker, "coolctl-sim/r01/+/leak") as late:
            first = await late.wait_for(lambda m: True, 10.0)
        assert first.retain
        assert json.loads(first.payload)["wet"] is True


@pytest.mark.asyncio
async def test_publishing_resumes_after_the_broker_restarts(broker: Broker) -> None:
    async with LiveSimulation([rack()], mqtt_broker=broker.address, step_s=STEP_S) as sim:
        publisher = sim.publishers[("r01", "sensors1")]
        await publisher.wait_connected(5.0)
        await asyncio.to_thread(broker.stop)
        before = sim.plants["r01"].time_s
        await eventually(lambda: not publisher.connected)
        await eventually(lambda: sim.plants["r01"].time_s > before + 1.0)  # it runs on
        assert sim.running and not publisher.connected

        await asyncio.to_thread(broker.start)
        await publisher.wait_connected(5.0)
        assert publisher.connections == 2
        # the restarted broker kept nothing; the publisher re-asserts the retained leak state
        async with subscriber(broker, "coolctl-sim/r01/sensors1/#") as sub:
            leak = await sub.wait_for(lambda m: m.topic.endswith("/leak"), 10.0)
            await sub.wait_for(lambda m: m.topic.endswith("/flow"), 10.0)
        assert leak.retain


@pytest.mark.asyncio
async def test_simulation_starts_and_runs_before_the_broker_is_up(tmp_path: Path) -> None:
    late = Broker(tmp_path)
    try:
        async with LiveSimulation([rack()], mqtt_broker=late.address, step_s=STEP_S) as sim:
            publisher = sim.publishers[("r01", "sensors1")]
            since = sim.plants["r01"].time_s
            await eventually(lambda: sim.plants["r01"].time_s > since + 0.5)  # it runs
            assert sim.running and not publisher.connected
            await asyncio.to_thread(late.start)
            await publisher.wait_connected(5.0)
    finally:
        late.stop()


def test_a_sensor_device_needs_a_broker_and_lines_keep_their_formats() -> None:
    with pytest.raises(ValueError, match="mqtt_broker"):
        LiveSimulation([rack()])
    with pytest.raises(ValueError, match="port"):
        LiveSimulation([rack()], mqtt_broker="127.0.0.1:notaport")
    spec = SimRackSpec("r01", [SimDeviceSpec("s1", "sensor")], mqtt_broker="10.0.0.5:1884")
    assert LiveSimulation([spec]).publishers[("r01", "s1")].broker == "10.0.0.5:1884"

    assert parse_broker("localhost") == ("localhost", 1883)
    assert parse_broker("[::1]:1884") == ("::1", 1884)
    with pytest.raises(ValueError):
        parse_broker("::1:1884")
    mqtt = Service("mqtt", "127.0.0.1:1883", "r01", "sensors1", topic_prefix="coolctl-sim")
    assert mqtt.line() == "mqtt 127.0.0.1:1883 coolctl-sim/r01/sensors1"
    modbus = Service("modbus", "127.0.0.1:5020", "r01", "cdu1", 1, "sim-cdu")
    assert modbus.line() == "modbus 127.0.0.1:5020 rack=r01 device=cdu1 unit=1 profile=sim-cdu"
    assert Service("control", "127.0.0.1:8080", "", "").line() == "control http://127.0.0.1:8080"
