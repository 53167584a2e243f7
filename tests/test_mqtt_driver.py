"""MQTT driver: profiles, the payload codec, and the connection against a real Mosquitto.

Every connection test runs its own broker (coolctl.tools.broker.Mosquitto) on a free loopback port:
reconnects, retained messages, the Last Will and authentication are the broker's behaviour,
so they are tested against the broker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st

from coolctl.drivers.mqtt import MqttConnection, MqttSettings
from coolctl.drivers.mqtt_profile import (
    MAX_PAYLOAD_BYTES,
    MqttProfile,
    PayloadError,
    ProfileError,
    RejectReason,
    TopicPoint,
    decode_payload,
    load_mqtt_profile,
    shipped_mqtt_profiles,
)
from coolctl.model import PointId, Quality, Reading, Unit
from coolctl.tools.broker import Mosquitto, MosquittoError
from coolctl.tools.testing import eventually

PROFILE = "sim-mqtt-sensors"
PREFIX = "coolctl-test"
LEAK = f"{PREFIX}/r01/sensors1/leak"
INLET = f"{PREFIX}/r01/sensors1/inlet_temperature"
FLOW = f"{PREFIX}/r01/sensors1/flow"
STATE = f"{PREFIX}/daemon/state"
LOGGER = "coolctl.drivers.mqtt"


# --------------------------------------------------------------------------------------------
# Helpers


@pytest_asyncio.fixture
async def broker() -> AsyncIterator[Mosquitto]:
    async with Mosquitto() as running:
        yield running


def settings_for(broker: Mosquitto, **overrides: object) -> MqttSettings:
    options: dict[str, object] = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.4}
    options.update(overrides)
    return MqttSettings(broker.host, broker.port, **options)  # type: ignore[arg-type]


@asynccontextmanager
async def connection(
    broker: Mosquitto, *, devices: Iterable[str] = ("sensors1",), **kwargs: object
) -> AsyncIterator[MqttConnection]:
    """A started connection with the shipped sensor profile on each of `devices` of r01."""
    settings = kwargs.pop("settings", None) or settings_for(broker)
    conn = MqttConnection(settings, **kwargs)  # type: ignore[arg-type]
    for device in devices:
        conn.add_device("r01", device, load_mqtt_profile(PROFILE), PREFIX)
    async with conn:
        assert await conn.wait_connected(5), broker.log_text()
        yield conn


@asynccontextmanager
async def peer(broker: Mosquitto, *topics: str, **kwargs: object) -> AsyncIterator[Peer]:
    """Another client on the broker: a sensor that publishes, or an observer that listens."""
    async with aiomqtt.Client(broker.host, broker.port, **kwargs) as client:  # type: ignore[arg-type]
        listener = Peer(client)
        for topic in topics:
            await client.subscribe(topic, qos=1)
        task = asyncio.create_task(listener.listen())
        try:
            yield listener
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class Peer:
    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[aiomqtt.Message] = []

    async def listen(self) -> None:
        async for message in self.client.messages:
            self.messages.append(message)

    async def send(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False
    ) -> None:
        await self.client.publish(topic, payload, qos=qos, retain=retain)

    def payloads(self, topic: str) -> list[bytes]:
        return [bytes(m.payload) for m in self.messages if m.topic.value == topic]

    async def wait_for(self, topic: str, payload: bytes, within: float = 10.0) -> aiomqtt.Message:
        def seen() -> aiomqtt.Message | None:
            for message in self.messages:
                if message.topic.value == topic and message.payload == payload:
                    return message
            return None

        await eventually(lambda: seen() is not None, within, what=f"{payload!r} on {topic}")
        found = seen()
        assert found is not None
        return found


async def wait_until(condition: Callable[[], bool], within: float = 10.0) -> None:
    await eventually(condition, within, poll_s=0.005)


def by_name(readings: Iterable[Reading]) -> dict[str, Reading]:
    return {reading.point.name: reading for reading in readings}


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and text in r.getMessage()]


def point(**overrides: object) -> TopicPoint:
    fields: dict[str, object] = {
        "name": "inlet_temperature",
        "topic": "{prefix}/{rack}/{device}/t",
        "format": "number",
        "field": (),
        "unit": Unit.CELSIUS,
        "qos": 0,
        "interlock": False,
        "max_age_s": 5.0,
        "min": -10.0,
        "max": 90.0,
    }
    fields.update(overrides)
    return TopicPoint(**fields)  # type: ignore[arg-type]


LEAK_POINT = point(
    name="leak_detected", format="json", field=("wet",), unit=Unit.BOOLEAN, min=None, max=None
)
FLOW_POINT = point(name="flow", format="json", field=("flow", "value"), min=0.0, max=2000.0)


# --------------------------------------------------------------------------------------------
# Profiles


def test_shipped_profile() -> None:
    profile = load_mqtt_profile(PROFILE)
    assert PROFILE in shipped_mqtt_profiles()
    assert "sim-cdu" not in shipped_mqtt_profiles()
    assert profile.kind == "sensor"
    leak, inlet, flow = profile.points
    assert (leak.name, leak.format, leak.field, leak.qos, leak.interlock, leak.max_age_s) == (
        "leak_detected",
        "json",
        ("wet",),
        1,
        True,
        5.0,
    )
    assert (inlet.format, inlet.qos, inlet.interlock, inlet.min, inlet.max) == (
        "number",
        0,
        False,
        -10.0,
        90.0,
    )
    assert (flow.field, flow.unit, flow.min, flow.max) == (
        ("flow", "value"),
        Unit.LITRE_PER_MINUTE,
        0.0,
        2000.0,
    )
    assert (
        flow.topic_for(prefix="coolctl-sim", rack="r01", device="s1") == "coolctl-sim/r01/s1/flow"
    )


GOOD_PROFILE = """
[profile]
name = "t"
protocol = "mqtt"
kind = "sensor"

[[point]]
name = "inlet_temperature"
topic = "{prefix}/{rack}/{device}/t"
format = "number"
unit = "celsius"
max_age_s = 5.0
"""


@pytest.mark.parametrize(
    ("old", "new", "key", "problem"),
    [
        ('protocol = "mqtt"', 'protocol = "modbus"', "profile.protocol", "must be 'mqtt'"),
        ('kind = "sensor"', 'kind = "toaster"', "profile.kind", "must be one of"),
        ('format = "number"', 'format = "xml"', "point[0].format", "json|number|boolean"),
        ('format = "number"', 'format = "boolean"', "point[0].format", "boolean point"),
        ('format = "number"', 'format = "number"\nfield = "a"', "point[0].field", "only applies"),
        ('format = "number"', 'format = "json"\nfield = "a..b"', "point[0].field", "dotted path"),
        ('unit = "celsius"', 'unit = "kelvin"', "point[0].unit", "measured in celsius"),
        ('name = "inlet_temperature"', 'name = "coffee"', "point[0].name", "not a canonical"),
        ("max_age_s = 5.0", "", "point[0].max_age_s", "missing"),
        ("max_age_s = 5.0", "max_age_s = 0", "point[0].max_age_s", "must be positive"),
        ("max_age_s = 5.0", "max_age_s = 5.0\nqos = 3", "point[0].qos", "0, 1 or 2"),
        ("max_age_s = 5.0", "max_age_s = 5.0\nqos = true", "point[0].qos", "0, 1 or 2"),
        ("max_age_s = 5.0", "max_age_s = 5.0\ninterlock = 1", "point[0].interlock", "true or"),
        ("max_age_s = 5.0", "max_age_s = 5.0\nmin = 5\nmax = 1", "point[0].min", "above max"),
        ("max_age_s = 5.0", "max_age_s = 5.0\nmax = nan", "point[0].max", "finite"),
        ("max_age_s = 5.0", "max_age_s = 5.0\nscale = 2", "point[0].scale", "unknown key"),
        ('/t"', '/{site}"', "point[0].topic", "unknown placeholder {site}"),
        ('/t"', '/{rack!r}"', "point[0].topic", "unknown placeholder"),
        ('/t"', '/{"', "point[0].topic", "point[0].topic"),
        ('/t"', '/#"', "point[0].topic", "wildcards"),
        ('/t"', '/+/t"', "point[0].topic", "wildcards"),
        ('protocol = "mqtt"', 'protocol = "mqtt"\nbroker = "x"', "profile.broker", "unknown key"),
    ],
)
def test_profile_errors_name_file_key_and_problem(
    tmp_path: Path, old: str, new: str, key: str, problem: str
) -> None:
    assert old in GOOD_PROFILE
    path = tmp_path / "bad.toml"
    path.write_text(GOOD_PROFILE.replace(old, new, 1))
    with pytest.raises(ProfileError) as caught:
        load_mqtt_profile(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert problem in message


def test_profile_errors_across_points(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(GOOD_PROFILE + GOOD_PROFILE[GOOD_PROFILE.index("[[point]]") :])
    with pytest.raises(ProfileError, match=r"point\[1\].name: 'inlet_temperature' is already"):
        load_mqtt_profile(path)
    leak = '\n[[point]]\nname = "leak_detected"\ntopic = "{prefix}/{rack}/{device}/t"\n'
    leak += 'format = "boolean"\nunit = "boolean"\nmax_age_s = 1.0\n'
    path.write_text(GOOD_PROFILE + leak)
    with pytest.raises(ProfileError, match=r"point\[1\].topic: .*only json points may share"):
        load_mqtt_profile(path)
    leak = leak.replace('unit = "boolean"', 'unit = "boolean"\nmin = 0')
    path.write_text(GOOD_PROFILE.replace("/t", "/x") + leak)
    with pytest.raises(ProfileError, match=r"point\[1\].min: does not apply to boolean"):
        load_mqtt_profile(path)


def test_profile_loading_errors(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_mqtt_profile(tmp_path / "absent.toml")
    (tmp_path / "broken.toml").write_text("[profile\n")
    with pytest.raises(ProfileError, match=r"broken\.toml: not valid TOML"):
        load_mqtt_profile(tmp_path / "broken.toml")
    with pytest.raises(ProfileError, match=r"no shipped MQTT profile .*sim-mqtt-sensors"):
        load_mqtt_profile("sim-nothing")
    with pytest.raises(ProfileError, match=r"profile\.protocol: must be 'mqtt'"):
        load_mqtt_profile("sim-cdu")
    with pytest.raises(ProfileError, match="not a profile name"):
        load_mqtt_profile("no such$name")


# --------------------------------------------------------------------------------------------
# Payload codec


@pytest.mark.parametrize(
    ("spec", "payload", "value"),
    [
        (point(), b"32.41", 32.41),
        (point(), b" -5\n", -5.0),
        (point(), b"1e1", 10.0),
        (
            point(name="leak_detected", format="boolean", unit=Unit.BOOLEAN, min=None, max=None),
            b"TRUE",
            1.0,
        ),
        (
            point(name="leak_detected", format="boolean", unit=Unit.BOOLEAN, min=None, max=None),
            b"0",
            0.0,
        ),
        (point(name="leak_detected", unit=Unit.BOOLEAN, min=None, max=None), b"1", 1.0),
        (LEAK_POINT, b'{"wet": false, "ts": 1732749000.1}', 0.0),
        (LEAK_POINT, b'{"wet": true}', 1.0),
        (LEAK_POINT, b'{"wet": 1}', 1.0),
        (FLOW_POINT, b'{"flow": {"value": 160.2, "unit": "L/min"}}', 160.2),
        (FLOW_POINT, b'{"flow": {"value": 7}}', 7.0),
        (point(format="json"), b"21.5", 21.5),
    ],
)
def test_decode_accepts(spec: TopicPoint, payload: bytes, value: float) -> None:
    assert decode_payload(spec, payload) == value


@pytest.mark.parametrize(
    ("spec", "payload", "reason"),
    [
        (point(), b"\xff\xfe", RejectReason.MALFORMED),
        (point(), b"", RejectReason.MALFORMED),
        (point(), b"warm", RejectReason.MALFORMED),
        (point(), b"nan", RejectReason.MALFORMED),
        (point(), b"-inf", RejectReason.MALFORMED),
        (point(), b"95", RejectReason.OUT_OF_RANGE),
        (point(), b"-10.5", RejectReason.OUT_OF_RANGE),
        (point(), b"1" * (MAX_PAYLOAD_BYTES + 1), RejectReason.OVERSIZED),
        (
            point(name="leak_detected", format="boolean", unit=Unit.BOOLEAN, min=None, max=None),
            b"yes",
            RejectReason.MALFORMED,
        ),
        (
            point(name="leak_detected", unit=Unit.BOOLEAN, min=None, max=None),
            b"2",
            RejectReason.OUT_OF_RANGE,
        ),
        (LEAK_POINT, b'{"wet": "no"}', RejectReason.MALFORMED),
        (LEAK_POINT, b'{"dry": true}', RejectReason.MALFORMED),
        (LEAK_POINT, b"[true]", RejectReason.MALFORMED),
        (LEAK_POINT, b'{"wet": NaN}', RejectReason.MALFORMED),
        (LEAK_POINT, b'{"wet": 0.5}', RejectReason.OUT_OF_RANGE),
        (LEAK_POINT, b'{"wet": tru', RejectReason.MALFORMED),
        (FLOW_POINT, b'{"flow": 160.2}', RejectReason.MALFORMED),
        (FLOW_POINT, b'{"flow": {"value": Infinity}}', RejectReason.MALFORMED),
        (FLOW_POINT, b'{"flow": {"value": 1e400}}', RejectReason.MALFORMED),
        (FLOW_POINT, b'{"flow": {"value": true}}', RejectReason.MALFORMED),
        (FLOW_POINT, b'{"flow": {"value": null}}', RejectReason.MALFORMED),
        (FLOW_POINT, b'{"flow": {"value": "160"}}', RejectReason.MALFORMED),
        (FLOW_POINT, b'{"flow": {"value": -1}}', RejectReason.OUT_OF_RANGE),
        (FLOW_POINT, b"[" * 60_000, RejectReason.MALFORMED),  # deep nesting: RecursionError in json
        (FLOW_POINT, b"\x00\x00\x00{", RejectReason.MALFORMED),
    ],
)
def test_decode_rejects(spec: TopicPoint, payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_payload(spec, payload)
    assert caught.value.reason == reason


@given(st.floats(min_value=-10, max_value=90))
def test_decode_number_round_trips(value: float) -> None:
    assert decode_payload(point(), repr(value).encode()) == value
    assert (
        decode_payload(FLOW_POINT, json.dumps({"flow": {"value": value + 10}}).encode())
        == value + 10
    )


@given(st.binary(max_size=200))
def test_decode_never_fails_otherwise(payload: bytes) -> None:
    for spec in (point(), LEAK_POINT, FLOW_POINT):
        try:
            value = decode_payload(spec, payload)
        except PayloadError as exc:
            assert exc.reason in (RejectReason.MALFORMED, RejectReason.OUT_OF_RANGE)
        else:
            assert math.isfinite(value)


# --------------------------------------------------------------------------------------------
# Readings from a live broker


@pytest.mark.asyncio
async def test_readings_missing_good_stale(broker: Mosquitto) -> None:
    async with connection(broker) as conn, peer(broker) as sensor:
        (device,) = conn.devices
        assert device.topics == {"leak_detected": LEAK, "inlet_temperature": INLET, "flow": FLOW}
        now = time.monotonic()
        assert {r.quality for r in device.readings(now)} == {Quality.MISSING}
        before = time.monotonic()
        await sensor.send(LEAK, b'{"wet": false, "ts": 1732749000.1}', retain=True)
        await sensor.send(INLET, b"32.41", qos=0)
        await sensor.send(FLOW, b'{"flow": {"value": 160.2, "unit": "L/min"}}', qos=0)
        await wait_until(lambda: device.stats.messages == 3)
        readings = by_name(device.readings(time.monotonic()))
        assert [readings[n].value for n in ("leak_detected", "inlet_temperature", "flow")] == [
            0.0,
            32.41,
            160.2,
        ]
        assert all(r.quality is Quality.GOOD and r.ts >= before for r in readings.values())
        assert readings["flow"].point == PointId("r01", "sensors1", "flow")
        # max_age_s is 5 s in the profile: no message for longer makes every point stale,
        # keeping its old value and time.
        later = by_name(device.readings(readings["flow"].ts + 5.5))
        assert all(r.quality is Quality.STALE for r in later.values())
        assert later["flow"].value == 160.2 and later["flow"].ts == readings["flow"].ts
        assert conn.stats.messages_received == 3
        assert len(conn.readings(time.monotonic())) == 3


@pytest.mark.asyncio
async def test_bad_payloads_are_counted_and_logged_once_per_change(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with connection(broker) as conn, peer(broker) as sensor:
        (device,) = conn.devices
        await sensor.send(INLET, b"30.0")
        for payload in (b"warm", b"hot", b"nan"):  # three malformed in a row: one warning
            await sensor.send(INLET, payload)
        await wait_until(lambda: device.stats.messages == 4)
        reading = by_name(device.readings(time.monotonic()))["inlet_temperature"]
        assert (reading.quality, reading.value) == (Quality.BAD, None)
        assert len(warnings_about(caplog, "inlet_temperature on")) == 1
        await sensor.send(INLET, b"120")  # a new kind of fault logs again
        await sensor.send(INLET, b"1" * (MAX_PAYLOAD_BYTES + 1))
        await sensor.send(FLOW, b'{"flow": {"value": NaN}}')
        await wait_until(lambda: device.stats.messages == 7)
        assert conn.stats.messages_rejected_by_reason == {
            RejectReason.MALFORMED: 4,
            RejectReason.OUT_OF_RANGE: 1,
            RejectReason.OVERSIZED: 1,
        }
        assert device.stats.rejected == 6
        await sensor.send(INLET, b"31.0")
        await wait_until(lambda: device.stats.messages == 8)
        reading = by_name(device.readings(time.monotonic()))["inlet_temperature"]
        assert (reading.quality, reading.value) == (Quality.GOOD, 31.0)
        messages = [r.getMessage() for r in warnings_about(caplog, "inlet_temperature on")]
        assert len(messages) == 4, messages
        assert "malformed" in messages[0] and "out_of_range" in messages[1]
        assert "oversized" in messages[2] and "recovered" in messages[3]
        assert INLET in messages[0] and broker.address in messages[0]
        assert len(warnings_about(caplog, "flow on")) == 1


@pytest.mark.asyncio
async def test_unknown_topics_are_counted_and_ignored(broker: Mosquitto) -> None:
    async with connection(broker) as conn, peer(broker) as sensor:
        # coolctl subscribes to exact topics, so only a stray subscription brings in others:
        # add one on the live client to see that such messages change nothing.
        assert conn._client is not None
        await conn._client.subscribe(f"{PREFIX}/stray/#")
        await sensor.send(f"{PREFIX}/stray/leak", b'{"wet": true}')
        await wait_until(lambda: conn.stats.messages_received == 1)
        assert conn.stats.messages_rejected_by_reason == {RejectReason.UNKNOWN_TOPIC: 1}
        assert {r.quality for r in conn.readings(time.monotonic())} == {Quality.MISSING}


@pytest.mark.asyncio
async def test_fast_path_fires_on_interlock_points_only(broker: Mosquitto) -> None:
    async with connection(broker, devices=("sensors1", "sensors2")) as conn:
        seen: list[tuple[Reading, float | None]] = []
        device = conn.devices[0]

        def on_interlock(reading: Reading) -> None:
            # Called as the message is decoded: the device already holds the same value.
            current = by_name(device.readings(reading.ts))["leak_detected"]
            seen.append((reading, current.value))

        def broken(reading: Reading) -> None:
            raise RuntimeError("a buggy consumer")

        conn.on_interlock_message(broken)
        conn.on_interlock_message(on_interlock)
        async with peer(broker) as sensor:
            await sensor.send(INLET, b"33.0")
            await sensor.send(FLOW, b'{"flow": {"value": 150}}')
            await sensor.send(LEAK, b'{"wet": "maybe"}')  # rejected: no callback
            await sensor.send(LEAK, b'{"wet": true}')
            await sensor.send(LEAK.replace("sensors1", "sensors2"), b'{"wet": false}')
            await wait_until(lambda: len(seen) == 2)
            await sensor.send(FLOW, b'{"flow": {"value": 151}}')
            await wait_until(lambda: conn.stats.messages_received == 6)
        (wet, value_then), (dry, _) = seen
        assert wet.point == PointId("r01", "sensors1", "leak_detected")
        assert (wet.value, wet.quality, value_then) == (1.0, Quality.GOOD, 1.0)
        assert dry.point == PointId("r01", "sensors2", "leak_detected") and dry.value == 0.0


@pytest.mark.asyncio
async def test_device_added_while_connected_is_subscribed(broker: Mosquitto) -> None:
    async with connection(broker) as conn, peer(broker) as sensor:
        late = conn.add_device("r02", "sensors9", load_mqtt_profile(PROFILE), PREFIX)
        topic = f"{PREFIX}/r02/sensors9/inlet_temperature"

        # The subscribe goes out in the background: send until the first message is heard.
        async def heard() -> bool:
            await sensor.send(topic, b"25.0", qos=0)
            return late.stats.messages > 0

        await eventually(heard, what="a message to the late device", poll_s=0.02)
        assert by_name(late.readings(time.monotonic()))["inlet_temperature"].value == 25.0


@pytest.mark.asyncio
async def test_retained_replay_is_stale_until_a_live_message(broker: Mosquitto) -> None:
    async with peer(broker) as sensor:
        await sensor.send(LEAK, b'{"wet": true}', retain=True)
        seen: list[Reading] = []
        conn = MqttConnection(settings_for(broker))
        device = conn.add_device("r01", "sensors1", load_mqtt_profile(PROFILE), PREFIX)
        conn.on_interlock_message(seen.append)
        async with conn:
            await wait_until(lambda: len(seen) == 1)
            # The broker kept this message for who knows how long: the value is known at
            # once, but it is no evidence that the detector is alive.
            assert (seen[0].value, seen[0].quality) == (1.0, Quality.STALE)
            leak = by_name(device.readings(time.monotonic()))["leak_detected"]
            assert (leak.value, leak.quality) == (1.0, Quality.STALE)
            await sensor.send(LEAK, b'{"wet": true}', retain=True)
            await wait_until(lambda: len(seen) == 2)
            assert seen[1].quality is Quality.GOOD


# --------------------------------------------------------------------------------------------
# Publishing, reconnecting, Last Will


@pytest.mark.asyncio
async def test_broker_restart_resubscribes_and_republishes_retained(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with connection(broker, will_topic=STATE) as conn:
        await conn.publish(f"{PREFIX}/r01/mode", "auto", qos=1, retain=True)
        await conn.publish(f"{PREFIX}/events", b"not retained", qos=1)
        assert await conn.drain(3)
        async with peer(broker, f"{PREFIX}/#") as observer:
            await observer.wait_for(f"{PREFIX}/r01/mode", b"auto")
            await observer.wait_for(STATE, b"online")
            assert observer.payloads(f"{PREFIX}/events") == []  # not retained: gone

        await broker.restart()  # forgets every retained message: no persistence
        await wait_until(lambda: conn.stats.connects == 2, within=5)
        assert conn.stats.disconnects == 1
        async with peer(broker, f"{PREFIX}/#") as observer:
            await observer.wait_for(f"{PREFIX}/r01/mode", b"auto")
            await observer.wait_for(STATE, b"online")
            await observer.send(INLET, b"29.5", qos=0)  # resubscribed: arrives again
            (device,) = conn.devices
            await wait_until(lambda: device.stats.messages == 1)
            assert by_name(device.readings(time.monotonic()))["inlet_temperature"].value == 29.5

        await broker.kill()  # abrupt, then messages queue until the broker is back
        await wait_until(lambda: not conn.connected)
        await conn.publish(f"{PREFIX}/r01/mode", "manual", qos=1, retain=True)
        await conn.publish(f"{PREFIX}/events", b"queued while down", qos=1)
        await broker.start()
        await wait_until(lambda: conn.stats.connects == 3, within=5)
        assert await conn.drain(3)
        async with peer(broker, f"{PREFIX}/#") as observer:
            await observer.wait_for(f"{PREFIX}/r01/mode", b"manual")
            assert observer.payloads(f"{PREFIX}/r01/mode") == [b"manual"]  # not the old one
    assert len(warnings_about(caplog, "lost the connection")) == 2
    reconnected = warnings_about(caplog, "reconnected to MQTT broker")
    assert len(reconnected) == 2 and broker.address in reconnected[0].getMessage()
    assert len(warnings_about(caplog, "cannot connect")) <= 2  # once per outage at most


@pytest.mark.asyncio
async def test_publish_queue_is_bounded_and_drops_oldest(broker: Mosquitto) -> None:
    conn = MqttConnection(settings_for(broker), max_queued=3)
    for index in range(5):  # not started yet: everything waits in the queue
        await conn.publish(f"{PREFIX}/q", str(index), qos=1)
    assert conn.stats.publish_dropped == 2
    async with peer(broker, f"{PREFIX}/q") as observer, conn:
        await observer.wait_for(f"{PREFIX}/q", b"4")
        assert observer.payloads(f"{PREFIX}/q") == [b"2", b"3", b"4"]
        await wait_until(lambda: conn.stats.published == 3)
    await conn.publish(f"{PREFIX}/q", "after stop")
    assert conn.stats.publish_dropped == 3
    with pytest.raises(ValueError, match="not a valid MQTT topic"):
        await conn.publish(f"{PREFIX}/+", "x")


@pytest.mark.asyncio
async def test_clean_stop_publishes_offline(broker: Mosquitto) -> None:
    async with peer(broker, STATE) as observer:
        async with connection(broker, will_topic=STATE) as conn:
            await conn.publish(f"{PREFIX}/last", "queued before stop", qos=1)
            await observer.wait_for(STATE, b"online")
        assert conn.stats.published >= 3
        await observer.wait_for(STATE, b"offline")
        assert observer.payloads(STATE) == [b"online", b"offline"]
    async with peer(broker, STATE) as late:  # retained: a late subscriber sees it too
        message = await late.wait_for(STATE, b"offline")
        assert message.retain


WILL_SCRIPT = """
import asyncio, sys
from coolctl.drivers.mqtt import MqttConnection, MqttSettings

async def main() -> None:
    conn = MqttConnection(MqttSettings("127.0.0.1", int(sys.argv[1]), keepalive_s=60),
                          will_topic=sys.argv[2], will_payload=b"daemon died")
    await conn.start()
    assert await conn.wait_connected(5)
    assert await conn.drain(5)
    print("ready", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_last_will_marks_the_daemon_offline_when_it_dies(broker: Mosquitto) -> None:
    """A daemon process killed with SIGKILL sends no DISCONNECT: the broker publishes its
    Last Will, which is what operators see when coolctl dies."""
    async with peer(broker, STATE) as observer:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WILL_SCRIPT,
            str(broker.port),
            STATE,
            stdout=asyncio.subprocess.PIPE,
            cwd=os.path.dirname(sys.executable),  # away from the source tree
        )
        try:
            assert process.stdout is not None
            async with asyncio.timeout(10):
                assert await process.stdout.readline() == b"ready\n"
            await observer.wait_for(STATE, b"online")
            process.send_signal(signal.SIGKILL)
            await process.wait()
            message = await observer.wait_for(STATE, b"daemon died")
            assert message.qos == 1
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


@pytest.mark.asyncio
async def test_connects_once_the_broker_comes_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    waiting = Mosquitto()
    await waiting.start()
    port = waiting.port
    await waiting.stop()  # now nothing listens on that port
    settings = MqttSettings("127.0.0.1", port, reconnect_min_s=0.02, reconnect_max_s=0.1)
    async with MqttConnection(settings) as conn:
        await wait_until(lambda: conn.stats.connect_failures >= 3)
        assert len(warnings_about(caplog, "cannot connect")) == 1
        async with Mosquitto(port) as broker:
            assert await conn.wait_connected(3), broker.log_text()
            assert len(warnings_about(caplog, "connected to MQTT broker")) == 1


@pytest.mark.asyncio
async def test_password_auth(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    secret = "pw-Sup3rSecret"
    async with Mosquitto(username="coolctl", password=secret) as broker:
        right = settings_for(broker, username="coolctl", password=secret)
        assert secret not in repr(right)
        async with (
            connection(broker, settings=right) as conn,
            peer(broker, username="coolctl", password=secret) as sensor,
        ):
            await sensor.send(INLET, b"30")
            await wait_until(lambda: conn.stats.messages_received == 1)

        bad = settings_for(broker, username="coolctl", password="wrong-Passw0rd")
        async with MqttConnection(bad) as wrong:
            await wait_until(lambda: wrong.stats.connect_failures >= 3)
            assert not wrong.connected
    (record,) = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR]
    message = record.getMessage()
    assert "bad username or password" in message and "'coolctl'" in message
    assert broker.address in message
    assert secret not in caplog.text and "wrong-Passw0rd" not in caplog.text


@pytest.mark.asyncio
async def test_broker_reports_a_missing_executable(tmp_path: Path) -> None:
    with pytest.raises(MosquittoError, match="apt-get install mosquitto"):
        await Mosquitto(executable=str(tmp_path / "mosquitto")).start()
    with pytest.raises(ValueError, match="both username and password"):
        Mosquitto(username="only")


def test_device_topics_must_be_valid() -> None:
    conn = MqttConnection(MqttSettings("127.0.0.1"))
    profile: MqttProfile = load_mqtt_profile(PROFILE)
    conn.add_device("r01", "s1", profile, PREFIX)
    with pytest.raises(ValueError, match="already on this MQTT connection"):
        conn.add_device("r01", "s1", profile, PREFIX)
    with pytest.raises(ValueError, match="not a valid MQTT topic"):
        conn.add_device("r01", "s+", profile, PREFIX)
