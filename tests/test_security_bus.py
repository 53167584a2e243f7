"""The bus: a client without the rights cannot command the rack through the broker.

The attacks are the ones a review made against a broker that let any client publish anything:
trip a leak, release one, set the rack's budget, and knock the daemon off the bus by taking its
client id. Here they run against the real Mosquitto with the shipped config and ACL
(deploy/mosquitto/), over TLS, and each is refused; the client-id attack is first shown to
work against an open broker, so the test proves the defence and not a mistake in the attack.

The budget guard (band, rate limit, retained and old budgets, WARNING with the topic) is
checked on the rack step, which every path (daemon, scenario runner) shares.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aiomqtt
import pytest
import pytest_asyncio

from coolctl.config import load_config
from coolctl.drivers.mqtt import MqttConnection, MqttSettings
from coolctl.drivers.mqtt_profile import load_mqtt_profile
from coolctl.model import Event, PointId, Quality, Reading, Severity, Snapshot
from coolctl.rack.facts import device_facts
from coolctl.rack.step import RackStep
from coolctl.simulators.tls import create_tls_material
from coolctl.tools.broker import BrokerTls, Mosquitto, find_mosquitto, from_deploy_config
from coolctl.tools.testing import eventually

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "mosquitto" / "coolctl.conf"
CONFIG = ROOT / "tests" / "configs" / "hil-mqtt-rack.toml"
PASSWORDS = {
    "coolctl-site1": "daemon-password-0123456789abcdef",
    "sensor-r01-sensors1": "sensor-password-0123456789abcdef",
    "coordinator": "coordinator-password-0123456789ab",
    "viewer": "viewer-password-0123456789abcdef",
}
LEAK = "sensors/r01/sensors1/leak"
BUDGET = "coordinator/r01/budget"
DAEMON_ID = "coolctl-site1-rackmgr-0a1b2c3d4e5f"

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")


@pytest_asyncio.fixture
async def bus(tmp_path: Path) -> AsyncIterator[tuple[Mosquitto, Path]]:
    """The shipped broker config and ACL, with a private CA's certificate on loopback."""
    tls = create_tls_material(tmp_path / "tls")
    broker = from_deploy_config(
        DEPLOY, users=PASSWORDS, tls=BrokerTls(tls.ca_cert, tls.server_cert, tls.server_key)
    )
    async with broker:
        yield broker, tls.ca_cert


def client(broker: Mosquitto, ca: Path, user: str | None, identifier: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=user,
        password=PASSWORDS[user] if user is not None else None,
        identifier=identifier,
        tls_params=aiomqtt.TLSParameters(ca_certs=str(ca)),
        timeout=5,
    )


@asynccontextmanager
async def daemon(
    broker: Mosquitto, settings: MqttSettings
) -> AsyncIterator[tuple[MqttConnection, list[Reading]]]:
    """The daemon's side of the bus: its connection, the sensors and the budget it follows,
    and every leak message that reached its interlock path."""
    connection = MqttConnection(settings, will_topic="coolctl/site1/status")
    connection.add_device("r01", "sensors1", load_mqtt_profile("sim-mqtt-sensors"), "sensors")
    connection.add_device("r01", "row", load_mqtt_profile("row-budget"), "coordinator")
    leaks: list[Reading] = []
    connection.on_interlock_message(leaks.append)
    async with connection:
        assert await connection.wait_connected(5), broker.log_text()
        yield connection, leaks


def daemon_settings(broker: Mosquitto, ca: Path | None) -> MqttSettings:
    user = "coolctl-site1" if ca is not None else None
    return MqttSettings(
        broker.host,
        broker.port,
        username=user,
        password=PASSWORDS[user] if user is not None else None,
        tls=ca is not None,
        tls_ca_file=ca,
        client_id=DAEMON_ID,
        reconnect_min_s=0.05,
        reconnect_max_s=0.4,
    )


def device(connection: MqttConnection, name: str) -> object:
    return next(d for d in connection.devices if d.device == name)


@pytest.mark.asyncio
async def test_strangers_and_other_clients_cannot_trip_or_release_a_leak(
    bus: tuple[Mosquitto, Path],
) -> None:
    broker, ca = bus
    async with daemon(broker, daemon_settings(broker, ca)) as (connection, leaks):
        # No account, no connection.
        with pytest.raises(aiomqtt.MqttError):
            async with client(broker, ca, None, "stranger"):
                pass
        sensors = device(connection, "sensors1")
        async with (
            client(broker, ca, "sensor-r01-sensors1", "sensor") as sensor,
            client(broker, ca, "coordinator", "coordinator") as coordinator,
            client(broker, ca, "viewer", "viewer") as viewer,
        ):
            # Trip: accounts of other clients publish "wet" on the sensor's leak topic; the
            # broker acknowledges and drops them. The sensor's own "dry" comes after them, so
            # had any got through, the daemon would have seen it first.
            for attacker in (coordinator, viewer):
                await attacker.publish(LEAK, b'{"wet": true}', qos=1)
            await sensor.publish(LEAK, b'{"wet": false}', qos=1)
            await eventually(lambda: len(leaks) == 1)
            assert [r.value for r in leaks] == [0.0]
            assert sensors.stats.messages == 1  # type: ignore[attr-defined]

            # Release: the sensor reports a leak; others cannot say it is dry again.
            await sensor.publish(LEAK, b'{"wet": true}', qos=1)
            await eventually(lambda: len(leaks) == 2)
            for attacker in (coordinator, viewer):
                await attacker.publish(LEAK, b'{"wet": false}', qos=1)
            await sensor.publish(LEAK, b'{"wet": true}', qos=1)
            await eventually(lambda: len(leaks) == 3)
            assert [r.value for r in leaks] == [0.0, 1.0, 1.0]


@pytest.mark.asyncio
async def test_only_the_coordinator_sets_a_budget(bus: tuple[Mosquitto, Path]) -> None:
    broker, ca = bus
    async with daemon(broker, daemon_settings(broker, ca)) as (connection, _):
        row = device(connection, "row")
        async with (
            client(broker, ca, "sensor-r01-sensors1", "sensor") as sensor,
            client(broker, ca, "viewer", "viewer") as viewer,
            client(broker, ca, "coordinator", "coordinator") as coordinator,
        ):
            await sensor.publish(BUDGET, b'{"watts": 0}', qos=1)
            await viewer.publish(BUDGET, b'{"watts": 2000000}', qos=1)
            await coordinator.publish(BUDGET, b'{"watts": 100000}', qos=1)
            await eventually(lambda: row.stats.messages >= 1)  # type: ignore[attr-defined]
            assert row.stats.messages == 1  # type: ignore[attr-defined]
            budget = next(
                r for r in connection.readings(time.monotonic()) if r.point.device == "row"
            )
            assert budget.value == 100000.0 and budget.quality is Quality.GOOD
            # Only the coordinator: the daemon's own account could not either (its publishes
            # are limited to its state, events and status by the same ACL file).


@pytest.mark.asyncio
async def test_taking_the_daemons_client_id_knocks_it_off_an_open_broker() -> None:
    """The attack, reproduced: on a broker without the shipped config, a client that connects
    with the daemon's id makes the broker drop the daemon."""
    async with (
        Mosquitto() as broker,
        daemon(broker, daemon_settings(broker, None)) as (conn, _),
        aiomqtt.Client(broker.host, broker.port, identifier=DAEMON_ID, timeout=5),
    ):
        await eventually(lambda: conn.stats.disconnects >= 1)


@pytest.mark.asyncio
async def test_no_client_can_take_the_daemons_client_id(bus: tuple[Mosquitto, Path]) -> None:
    broker, ca = bus
    async with daemon(broker, daemon_settings(broker, ca)) as (connection, leaks):
        for user in ("viewer", "coordinator", "sensor-r01-sensors1"):
            async with client(broker, ca, user, DAEMON_ID):
                pass
        async with client(broker, ca, "sensor-r01-sensors1", DAEMON_ID) as sensor:
            # The broker has handled every CONNECT above before this message; had one of them
            # taken the daemon's session, the daemon would have lost its connection first.
            await sensor.publish(LEAK, b'{"wet": false}', qos=1)
            await eventually(lambda: len(leaks) == 1)
        assert connection.stats.disconnects == 0
        assert connection.stats.connects == 1


@pytest.mark.asyncio
async def test_the_broker_refuses_cleartext(bus: tuple[Mosquitto, Path]) -> None:
    broker, _ = bus
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            broker.host,
            broker.port,
            username="viewer",
            password=PASSWORDS["viewer"],
            timeout=2,
        ):
            pass


def test_each_daemon_start_has_its_own_client_id() -> None:
    from coolctl.daemon.mqtt_bridge import client_id

    config = load_config(CONFIG)
    first, second = client_id(config), client_id(config)
    assert first != second and first.startswith(f"coolctl-{config.site.name}-")
    assert len(first) <= 64


# -- the budget guard ------------------------------------------------------------------------


BUDGET_POINT = PointId("r01", "row", "power_budget")


def budget_step(**changes: object) -> RackStep:  # type: ignore[type-arg]
    rack = load_config(CONFIG).racks["r01"]
    rack = replace(rack, **changes)  # type: ignore[arg-type]
    step = RackStep(rack, {d.id: device_facts(d) for d in rack.devices.values()})
    step.budget_source = f"topic {BUDGET}"
    return step


def budget_events(
    step: RackStep,  # type: ignore[type-arg]
    value: float,
    now: float,
    quality: Quality = Quality.GOOD,
    received: float | None = None,
) -> tuple[float | None, list[Event]]:
    reading = Reading(BUDGET_POINT, value, now if received is None else received, quality)
    result = step.step(Snapshot([reading], now), now, budget_w=step.config.power_budget_w)
    return result.budget_w, [e for e in result.early_events if e.kind.startswith("budget_")]


def test_a_budget_outside_the_band_around_the_racks_own_is_refused() -> None:
    step = budget_step()  # power_budget_w 130 kW, band 0.5: 65..195 kW
    for attack in (0.0, 2_000_000.0, 60_000.0, 200_000.0):
        budget, events = budget_events(step, attack, 10.0)
        assert budget == 130_000.0
    assert step.budget_w(130_000.0) == 130_000.0
    budget, events = budget_events(step, 100_000.0, 20.0)
    assert budget == 100_000.0
    assert [(e.kind, e.severity) for e in events] == [("budget_set", Severity.WARNING)]
    assert f"topic {BUDGET}" in events[0].message


def test_a_refused_budget_names_its_topic_at_warning() -> None:
    _, events = budget_events(budget_step(), 0.0, 10.0)
    assert [(e.kind, e.severity) for e in events] == [("budget_rejected", Severity.WARNING)]
    assert "65000..195000 W" in events[0].message and f"topic {BUDGET}" in events[0].message


def test_budget_changes_are_rate_limited() -> None:
    step = budget_step(budget_min_interval_s=10.0)
    assert budget_events(step, 100_000.0, 100.0)[0] == 100_000.0
    budget, events = budget_events(step, 80_000.0, 101.0)
    assert budget == 100_000.0 and [e.kind for e in events] == ["budget_held"]
    assert budget_events(step, 70_000.0, 105.0) == (100_000.0, [])  # held once per episode
    budget, events = budget_events(step, 70_000.0, 110.0)  # the interval has passed
    assert budget == 70_000.0 and [e.kind for e in events] == ["budget_set"]


def test_a_retained_or_old_budget_is_refused() -> None:
    step = budget_step(budget_max_age_s=60.0)
    # A retained budget replayed by the broker on subscribing reads as stale: age unknown.
    budget, events = budget_events(step, 100_000.0, 10.0, Quality.STALE)
    assert budget == 130_000.0 and [e.kind for e in events] == ["budget_rejected"]
    assert "retained" in events[0].message
    # A good reading that arrived long ago is no newer.
    budget, _ = budget_events(step, 100_000.0, 200.0, received=100.0)
    assert budget == 130_000.0
    # The coordinator saying it again, live, is taken.
    assert budget_events(step, 100_000.0, 300.0)[0] == 100_000.0


@pytest.mark.asyncio
async def test_the_acl_lets_the_daemon_publish_its_status_for_viewers(
    bus: tuple[Mosquitto, Path],
) -> None:
    broker, ca = bus
    async with (
        daemon(broker, daemon_settings(broker, ca)),
        client(broker, ca, "viewer", "viewer") as viewer,
    ):
        await viewer.subscribe("coolctl/site1/status", qos=1)
        async for message in viewer.messages:
            assert message.payload == b"online"
            break


@pytest.mark.asyncio
async def test_the_demos_private_broker_takes_no_anonymous_clients() -> None:
    from contextlib import AsyncExitStack

    from coolctl.daemon.devices import read_secret
    from coolctl.tools.demo import _broker

    config = load_config(CONFIG)
    async with AsyncExitStack() as stack:
        config, sensors = await _broker(config, None, stack, private=True)
        assert config.mqtt is not None and sensors is not None
        host, port = config.mqtt.host, config.mqtt.port
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(host, port, timeout=5):
                pass
        password = read_secret(config.mqtt.password_file, None)
        async with aiomqtt.Client(
            host, port, username=config.mqtt.username, password=password, timeout=5
        ):
            pass
        user, _, rest = sensors.partition(":")
        sensor_password, _, address = rest.rpartition("@")
        assert address == f"{host}:{port}"
        async with aiomqtt.Client(host, port, username=user, password=sensor_password, timeout=5):
            pass
