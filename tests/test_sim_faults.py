"""Fault injection into the running simulated rack: in-process and over the control server.

Effects are checked where a daemon would see them, over real sockets: a pymodbus client (not
coolctl.drivers) against the simulated CDU, an aiomqtt subscriber on a Mosquitto of our own for
the sensor device, and the plant's true state for what the devices cannot show.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
import pytest_asyncio
from pymodbus.client import AsyncModbusTcpClient

from coolctl.simulators.control_server import endpoint, inject
from coolctl.simulators.faults import FAULT_KINDS, apply_fault
from coolctl.simulators.live import LiveSimulation, SensorPoints, SimDeviceSpec, SimRackSpec
from coolctl.simulators.modbus_server import load_register_map
from coolctl.tools.testing import eventually, eventually_blocking

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
TIME_SCALE = 5.0
UNIT = 1
DEVICE_FAILURE = 4
IDLE_W, MAX_W = 1500.0, 7000.0
START_LOAD = 0.6
CDU_POINTS = {p.name: p for p in load_register_map("sim-cdu")[1]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """A Mosquitto of our own on a free loopback port; yields its `host:port`."""
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed: apt-get install mosquitto")
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    log = tmp_path / "mosquitto.log"
    with log.open("wb") as out:
        process = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=out, stderr=out)
    try:

        def listening() -> bool:
            if process.poll() is not None:
                pytest.fail(f"mosquitto did not start: {log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return True
            except OSError:
                return False

        eventually_blocking(listening, 10.0, what="mosquitto listening")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(5)


def rack_spec(name: str = "r01") -> SimRackSpec:
    return SimRackSpec(
        name,
        [
            SimDeviceSpec("cdu1", "cdu", "sim-cdu"),
            SimDeviceSpec("pdu1", "pdu", "sim-pdu"),
            SimDeviceSpec("sensors1", "sensor", publish_period_s=0.2),
            SimDeviceSpec("psu1", "pdu", "orv3-psu", unit_id=192, shelf_role="psu"),
            SimDeviceSpec("bbu1", "pdu", "orv3-bbu", unit_id=64, shelf_role="bbu"),
        ],
        load=START_LOAD,
    )


@pytest_asyncio.fixture
async def sim(broker: str) -> AsyncIterator[LiveSimulation]:
    simulation = LiveSimulation(
        [rack_spec()], time_scale=TIME_SCALE, mqtt_broker=broker, control=endpoint(port=0)
    )
    async with simulation:
        await simulation.publishers[("r01", "sensors1")].wait_connected(5.0)
        yield simulation


def modbus_client(simulation: LiveSimulation, device: str = "cdu1") -> AsyncModbusTcpClient:
    server = simulation.servers[("r01", device)]
    # reconnect_delay=0: a refused connection stays refused, so the test sees it
    return AsyncModbusTcpClient(
        "127.0.0.1", port=server.port, timeout=0.5, retries=0, reconnect_delay=0
    )


async def can_read(simulation: LiveSimulation) -> bool:
    client = modbus_client(simulation)
    try:
        if not await client.connect():
            return False
        response = await client.read_input_registers(0, count=1, device_id=UNIT)
        return not response.isError()
    finally:
        client.close()


def demands(simulation: LiveSimulation) -> tuple[float, ...]:
    return simulation.plants["r01"].truth().server_demand_w


# ------------------------------------------------------------------------------- in process


@pytest.mark.asyncio
async def test_hydraulic_and_rack_faults_act_on_the_plant_and_clear_puts_it_right(
    sim: LiveSimulation,
) -> None:
    plant = sim.plants["r01"]
    truth = plant.truth
    flow0 = truth().flow_lpm
    facility0 = truth().facility_supply_temperature_c

    assert apply_fault(sim, "leak", value=30.0) == "r01: leak of 30 L/min started"
    await eventually(lambda: truth().leak_detected)
    assert truth().reservoir_level_l < 20.0

    assert "pump degraded to 50 %" in apply_fault(sim, "pump_degrade", value=0.5)
    await eventually(lambda: truth().flow_lpm < 0.8 * flow0)
    assert apply_fault(sim, "pump_fail") == "r01/cdu1: pump failed"
    assert not truth().pump_running
    assert {f.kind for f in sim.faults.active("r01")} == {"leak", "pump_degrade", "pump_fail"}
    assert apply_fault(sim, "pump_restore", device="cdu1") == "r01/cdu1: pump restored"
    assert truth().pump_running
    assert {f.kind for f in sim.faults.active("r01")} == {"leak"}
    await eventually(lambda: truth().flow_lpm > 0.95 * flow0)  # as new: degradation repaired

    assert apply_fault(sim, "load", value=1.0) == "r01: load 100 % on every server"
    assert set(demands(sim)) == {MAX_W}
    assert apply_fault(sim, "load", value=0.0, servers=[0, 1]) == "r01: load 0 % on servers 0, 1"
    assert demands(sim)[:3] == (IDLE_W, IDLE_W, MAX_W)
    assert apply_fault(sim, "facility_water", value=35).startswith("r01: facility water at 35 °C")
    assert truth().facility_supply_temperature_c == 35.0

    cleared = apply_fault(sim, "clear")
    assert cleared.startswith("r01: cleared 3 active faults")  # leak, load, facility water
    assert not truth().leak_detected
    assert truth().reservoir_level_l == 20.0
    assert truth().pump_running
    assert truth().facility_supply_temperature_c == facility0
    assert demands(sim) == pytest.approx([IDLE_W + START_LOAD * (MAX_W - IDLE_W)] * 18)
    assert sim.faults.active() == []


@pytest.mark.asyncio
async def test_sensor_faults_on_plant_devices_and_on_the_mqtt_sensor_device(
    sim: LiveSimulation, broker: str
) -> None:
    plant = sim.plants["r01"]
    sensors = sim.points[("r01", "sensors1")]
    assert isinstance(sensors, SensorPoints)

    def supply() -> float:
        return plant.cdu_readings()["supply_temperature"]

    assert len({supply() for _ in range(5)}) > 1  # noisy while healthy
    text = apply_fault(sim, "sensor_stuck", point="supply_temperature")
    assert text == "r01/cdu1/supply_temperature: sensor stuck"
    assert len({supply() for _ in range(5)}) == 1

    apply_fault(sim, "sensor_noise", device="cdu1", point="flow", value=5.0)
    assert statistics.stdev(plant.cdu_readings()["flow"] for _ in range(200)) > 3.0

    apply_fault(sim, "sensor_drift", device="pdu1", point="power", value=2000.0)
    drifting_since = plant.time_s
    await eventually(lambda: plant.time_s >= drifting_since + 2.5)  # 5 kW of drift
    assert plant.pdu_readings()["power"] - plant.truth().pdu_power_w > 2500.0

    apply_fault(sim, "sensor_stuck", device="server3", point="chip_temperature")
    assert len({plant.server_readings(3)["chip_temperature"] for _ in range(5)}) == 1

    # The sensor device has its own sensors: sticking its inlet leaves the CDU's alone.
    text = apply_fault(sim, "sensor_stuck", device="sensors1", point="inlet_temperature")
    assert text == "r01/sensors1/inlet_temperature: sensor stuck"
    assert "r01/sensors1/leak_detected" in apply_fault(
        sim, "sensor_noise", device="sensors1", point="leak", value=0.0
    )
    host, port = broker.split(":")
    async with aiomqtt.Client(host, int(port)) as client:
        await client.subscribe("coolctl-sim/r01/sensors1/inlet_temperature")
        payloads: list[bytes] = []
        async with asyncio.timeout(3.0):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                payloads.append(message.payload)
                if len(payloads) == 4:
                    break
    assert len(set(payloads)) == 1

    assert apply_fault(sim, "clear").startswith("r01: cleared 6 active faults")
    assert len({supply() for _ in range(5)}) > 1
    assert statistics.stdev(plant.cdu_readings()["flow"] for _ in range(200)) < 2.0
    assert abs(plant.pdu_readings()["power"] - plant.truth().pdu_power_w) < 500.0
    assert len({sensors.read_points()["inlet_temperature"] for _ in range(5)}) > 1


@pytest.mark.asyncio
async def test_link_loss_of_the_cdu_refuses_modbus_clients_until_undone(
    sim: LiveSimulation,
) -> None:
    assert await can_read(sim)
    text = apply_fault(sim, "link_loss", duration_s=1.0)
    assert text == "r01/cdu1: link lost (server offline) for 1 s"
    client = modbus_client(sim)
    try:
        assert not await client.connect()
    finally:
        client.close()
    assert sim.servers[("r01", "cdu1")].offline
    [fault] = sim.faults.active("r01")
    assert fault.as_dict()["remaining_s"] is not None
    await eventually(lambda: not sim.servers[("r01", "cdu1")].offline, timeout_s=2.0)
    assert await can_read(sim)
    assert sim.faults.active() == []

    apply_fault(sim, "link_loss", device="cdu1")
    assert not await can_read(sim)
    apply_fault(sim, "clear")
    assert await can_read(sim)


@pytest.mark.asyncio
async def test_link_loss_of_the_sensor_device_stops_its_publishing(
    sim: LiveSimulation, broker: str
) -> None:
    host, port = broker.split(":")
    arrivals: list[float] = []
    async with aiomqtt.Client(host, int(port)) as client:
        await client.subscribe("coolctl-sim/r01/sensors1/flow")

        async def collect() -> None:
            async for _ in client.messages:
                arrivals.append(time.monotonic())

        collector = asyncio.create_task(collect())
        await eventually(lambda: len(arrivals) >= 2)
        text = apply_fault(sim, "link_loss", device="sensors1", duration_s=1.0)
        assert text == "r01/sensors1: link lost (MQTT publishing stopped) for 1 s"
        lost = time.monotonic()
        publisher = sim.publishers[("r01", "sensors1")]
        plant = sim.plants["r01"]
        # two plant seconds (0.4 s: two publish periods, under half the fault): it steps, and
        # publishes nothing
        since = plant.time_s
        await eventually(lambda: plant.time_s >= since + 2.0)
        assert publisher.paused, "two plant seconds took longer than the whole link loss"
        assert not [t for t in arrivals if t > lost]
        await eventually(lambda: any(t > lost + 0.9 for t in arrivals))  # and back by itself
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector


@pytest.mark.asyncio
async def test_response_delay_and_read_fail_on_a_modbus_device(sim: LiveSimulation) -> None:
    supply = CDU_POINTS["supply_temperature"]
    flow = CDU_POINTS["flow"]
    client = modbus_client(sim)
    client.comm_params.timeout_connect = 2.0
    try:
        assert await client.connect()
        apply_fault(sim, "response_delay", value=0.3)
        started = time.monotonic()
        assert not (await client.read_input_registers(0, count=1, device_id=UNIT)).isError()
        assert time.monotonic() - started >= 0.3
        apply_fault(sim, "response_delay", value=0.0)

        text = apply_fault(sim, "read_fail", device="cdu1", point="supply_temperature")
        assert text == "r01/cdu1/supply_temperature: reads fail"
        failed = await client.read_input_registers(supply.address, count=1, device_id=UNIT)
        assert failed.isError() and failed.exception_code == DEVICE_FAILURE
        fine = await client.read_input_registers(flow.address, count=1, device_id=UNIT)
        assert not fine.isError()
        apply_fault(sim, "clear")
        again = await client.read_input_registers(supply.address, count=1, device_id=UNIT)
        assert not again.isError()
    finally:
        client.close()


@pytest.mark.asyncio
async def test_duration_undoes_each_fault_and_a_replaced_fault_undoes_to_the_first_state(
    sim: LiveSimulation,
) -> None:
    plant = sim.plants["r01"]
    before = demands(sim)
    facility = plant.truth().facility_supply_temperature_c
    apply_fault(sim, "leak", value=30.0, duration_s=0.5)
    apply_fault(sim, "pump_fail", duration_s=0.5)
    apply_fault(sim, "pump_degrade", value=0.7, duration_s=0.5)
    apply_fault(sim, "facility_water", value=38.0, duration_s=0.5)
    apply_fault(sim, "sensor_stuck", point="flow", duration_s=0.5)
    apply_fault(sim, "sensor_noise", device="sensors1", point="flow", value=9.0, duration_s=0.5)
    apply_fault(sim, "load", value=1.0)
    assert "for 0.5 s" in apply_fault(sim, "load", value=0.2, duration_s=0.5)
    assert len(sim.faults.active("r01")) == 7
    await eventually(lambda: plant.truth().leak_detected)
    assert not plant.truth().pump_running

    await eventually(lambda: sim.faults.active() == [])  # each undone after its 0.5 s
    truth = plant.truth()
    assert not truth.leak_detected and truth.pump_running
    assert truth.facility_supply_temperature_c == facility
    assert demands(sim) == pytest.approx(before)  # not the 100 % of the first load step
    assert len({plant.cdu_readings()["flow"] for _ in range(5)}) > 1


@pytest.mark.parametrize(
    ("kind", "arguments", "message"),
    [
        ("flood", {}, "unknown fault kind 'flood'"),
        ("leak", {"rack": "r09"}, "no rack 'r09'"),
        ("leak", {"value": -1.0}, "leak rate must be > 0"),
        ("leak", {"device": "pdu1"}, "'pdu1' is not the CDU"),
        ("leak", {"point": "flow"}, "leak takes no point"),
        ("leak", {"servers": [1]}, "leak takes no servers"),
        ("pump_fail", {"value": 1.0}, "pump_fail takes no value"),
        ("pump_degrade", {}, "pump_degrade needs a value"),
        ("pump_degrade", {"value": 1.5}, "within 0..1"),
        ("pump_restore", {"duration_s": 1.0}, "takes no duration_s"),
        ("leak", {"duration_s": 0.0}, "duration_s must be"),
        ("sensor_stuck", {}, "needs a point"),
        ("sensor_stuck", {"point": "colour"}, "no point 'colour'"),
        ("sensor_stuck", {"device": "server99", "point": "power"}, "unknown device"),
        ("sensor_stuck", {"device": "sensors1", "point": "supply_temperature"}, "has no point"),
        ("sensor_noise", {"point": "flow", "value": -2.0}, "must be >= 0"),
        ("sensor_noise", {"point": "flow", "value": float("nan")}, "finite number"),
        ("link_loss", {"device": "bmc7"}, "no simulated device 'bmc7'"),
        ("response_delay", {"device": "sensors1", "value": 1.0}, "applies to servers"),
        ("read_fail", {"device": "cdu1", "point": "colour"}, "has no point 'colour'"),
        ("read_fail", {"device": "cdu1"}, "read_fail needs a point"),
        ("load", {}, "load needs a value"),
        ("load", {"value": 2.0}, "within 0..1"),
        ("load", {"value": 0.5, "servers": [18]}, "servers 0..17, not 18"),
        ("load", {"value": 0.5, "device": "cdu1"}, "load takes no device"),
        ("facility_water", {"value": 99.0}, "within 0..60"),
        ("clear", {"value": 1.0}, "clear takes no value"),
    ],
)
@pytest.mark.asyncio
async def test_bad_arguments_are_refused_with_a_clear_message(
    sim: LiveSimulation, kind: str, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        apply_fault(sim, kind, **arguments)
    assert sim.faults.active() == []


def test_rack_may_be_left_out_only_when_there_is_one() -> None:
    two = LiveSimulation([rack_spec("r01"), rack_spec("r02")], mqtt_broker="127.0.0.1:1")
    with pytest.raises(ValueError, match="rack is required: the simulation has racks r01, r02"):
        apply_fault(two, "pump_fail")
    with pytest.raises(ValueError, match=r"start the simulation first|not running"):
        apply_fault(two, "link_loss", rack="r02")
    assert apply_fault(two, "pump_fail", rack="r02") == "r02/cdu1: pump failed"
    assert not two.plants["r02"].truth().pump_running
    assert two.plants["r01"].truth().pump_running


# ------------------------------------------------------------------------------- over HTTP


@pytest.mark.asyncio
async def test_control_server_applies_every_kind_and_reports_state(sim: LiveSimulation) -> None:
    url = sim.control_url
    assert url is not None
    assert f"control {url}" in [service.line() for service in sim.services]
    bodies: dict[str, dict[str, Any]] = {
        "leak": {"value": 3.0},
        "pump_fail": {},
        "pump_restore": {},
        "pump_degrade": {"value": 0.8, "duration_s": 30},
        "sensor_stuck": {"device": "cdu1", "point": "return_temperature"},
        "sensor_noise": {"device": "sensors1", "point": "flow", "value": 1.0},
        "sensor_drift": {"device": "pdu1", "point": "power", "value": 10},
        "link_loss": {"device": "sensors1"},
        "response_delay": {"device": "pdu1", "value": 0.01},
        "read_fail": {"device": "pdu1", "point": "energy"},
        "load": {"value": 0.9, "servers": [2, 3]},
        "facility_water": {"value": 32.5, "rack": "r01"},
        "cdu_local": {},
        "cdu_alarm": {"point": "filter_clogged_alarm"},
        "psu_fail": {"device": "psu1"},
        "mains_loss": {},
        "clear": {},
    }
    assert set(bodies) == set(FAULT_KINDS)
    token = {"Authorization": f"Bearer {sim.control_token}"}
    async with aiohttp.ClientSession(headers=token) as session:
        async with session.get(f"{url}/healthz") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ok"
        for kind, body in bodies.items():
            if kind == "clear":
                await eventually(lambda: sim.plants["r01"].truth().leak_detected)
                async with session.get(f"{url}/state") as response:
                    assert response.status == 200
                    state = (await response.json())["racks"]["r01"]
                assert {f["kind"] for f in state["active_faults"]} == set(bodies) - {
                    "pump_fail",  # repaired by pump_restore
                    "pump_restore",
                    "clear",
                }
                degrade = next(f for f in state["active_faults"] if f["kind"] == "pump_degrade")
                assert 0 < degrade["remaining_s"] <= 30
                assert state["links"]["sensors1"] == {
                    "protocol": "mqtt",
                    "online": False,
                    "broker_connected": True,
                }
                assert state["links"]["cdu1"] == {"protocol": "modbus", "online": True}
                assert state["leak"] == {"detected": True}
                assert state["pump"]["running"] is True
                assert state["reservoir_level_l"] < 20.0
                assert state["plant_time_s"] > 0
                assert state["load"] == pytest.approx((16 * START_LOAD + 2 * 0.9) / 18, abs=1e-3)
            async with session.post(f"{url}/faults", json={"kind": kind, **body}) as response:
                answer = await response.json()
                assert response.status == 200, answer
                assert isinstance(answer["applied"], str) and answer["applied"].startswith("r01")
        async with session.get(f"{url}/state") as response:
            state = (await response.json())["racks"]["r01"]
        assert state["active_faults"] == []
        assert state["leak"] == {"detected": False}
        assert state["reservoir_level_l"] == 20.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"{}", "'kind' is required"),
        (b'{"kind": "leak", "colour": "red"}', "unknown field(s) colour"),
        (b'{"kind": "leak", "value": "lots"}', "'value' must be a number"),
        (b'{"kind": "leak", "value": true}', "'value' must be a number"),
        (b'{"kind": "leak", "rack": 1}', "'rack' must be a string"),
        (b'{"kind": "load", "value": 0.5, "servers": "all"}', "'servers' must be a list"),
        (b'{"kind": "flood"}', "unknown fault kind"),
        (b'{"kind": "pump_degrade"}', "pump_degrade needs a value"),
    ],
)
@pytest.mark.asyncio
async def test_control_server_refuses_bad_requests_with_400(
    sim: LiveSimulation, body: bytes, message: str
) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {sim.control_token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sim.control_url}/faults", data=body, headers=headers) as response,
    ):
        assert response.status == 400
        assert message in json.loads(await response.text())["error"]
    assert sim.faults.active() == []


@pytest.mark.asyncio
async def test_inject_helper_reports_what_was_applied_and_why_not(sim: LiveSimulation) -> None:
    url = sim.control_url
    assert url is not None
    token = sim.control_token
    applied = await inject(url, "leak", value=4.0, duration_s=10.0, token=token)
    assert applied == "r01: leak of 4 L/min started for 10 s"
    applied = await inject(url + "/", "load", value=0.25, servers=[0], token=token)
    assert applied == "r01: load 25 % on servers 0"
    with pytest.raises(ValueError, match="no rack 'r07'"):
        await inject(url, "pump_fail", rack="r07", token=token)
    with pytest.raises(aiohttp.ClientError):
        await inject(f"http://127.0.0.1:{free_port()}", "clear", timeout_s=1.0)
