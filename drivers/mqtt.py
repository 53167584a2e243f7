"""MQTT for coolctl: one broker connection that listens to sensors and publishes state.

Sensors on MQTT publish when they like; coolctl cannot poll them. So this driver keeps, per
profile point, the last value and when it arrived, and `MqttDevice.readings(now)` turns that
into qualities: good while messages keep coming, stale when they stop, bad when they are
garbage, missing before the first. Points marked `interlock` in the profile also go straight
to a callback as each message is decoded, so a leak does not wait for the next control tick.

Choices, and why:
- One connection for the whole daemon (every device's subscriptions, and the daemon's own
  state and events): brokers and their ACLs think in clients, and one Last Will can then say
  "the daemon is gone" for all of it.
- aiomqtt does not reconnect by itself; the connection task here does, with exponential
  backoff, and on every new connection subscribes again and republishes the retained state
  (a broker restarted without persistence has forgotten it).
- `publish()` never waits for the broker: it queues (bounded, oldest dropped and counted) and
  a sender drains the queue while connected. The control loop must not stall on MQTT.
- A retained message delivered because coolctl subscribed is of unknown age: the sensor may
  have died an hour ago. Its value is kept but reads as stale until a live message arrives.
- Nothing raises out of the connection task, and nothing logs per message: each change of
  state (connected, lost, reconnected; a topic going bad and recovering) logs once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import aiomqtt

from coolctl.model import PointId, Quality, Reading

from .mqtt_profile import MqttProfile, PayloadError, RejectReason, TopicPoint, decode_payload

log = logging.getLogger("coolctl.drivers.mqtt")

# A connection that lasted this long was a real one: the next reconnect starts from the
# shortest delay again. Shorter ones (a broker that accepts and then drops us) keep backing off.
STABLE_CONNECTION_S: Final = 10.0
# aiomqtt's limit for a SUBACK or PUBACK to come back.
OPERATION_TIMEOUT_S: Final = 10.0
# aiomqtt's limit for the CONNACK. Short, because aiomqtt ignores a link that closes before the
# CONNACK: an attempt that meets a dead or garbled broker link ends only by this timeout, and
# the rack's MQTT sensors stay stale that much longer after the link is back.
CONNECT_TIMEOUT_S: Final = 2.0
# How long stop() lets queued messages and the offline state go out before it gives up.
STOP_FLUSH_TIMEOUT_S: Final = 3.0
DEFAULT_MAX_QUEUED: Final = 1000
# MQTT CONNACK codes for refused credentials: 3.1.1 return codes and their MQTT 5 reason codes.
_AUTH_CODES: Final = frozenset({4, 5, 134, 135})


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """Where the broker is and how to talk to it. The password never appears in a repr or a
    log line."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca_file: Path | None = None
    tls: bool = False
    client_id: str | None = None
    keepalive_s: int = 30
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 < self.port <= 65535:
            raise ValueError(f"port must be within 1..65535, not {self.port}")
        if self.keepalive_s <= 0:
            raise ValueError(f"keepalive_s must be positive, not {self.keepalive_s}")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ValueError(
                f"need 0 < reconnect_min_s <= reconnect_max_s, "
                f"not {self.reconnect_min_s} and {self.reconnect_max_s}"
            )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(slots=True)
class MqttStats:
    """Counters of the broker connection, for metrics and `status`. Times are monotonic."""

    connected: bool = False
    connects: int = 0
    disconnects: int = 0  # established connections that were lost
    connect_failures: int = 0  # attempts that never got connected
    messages_received: int = 0
    messages_rejected_by_reason: dict[str, int] = field(default_factory=dict)
    published: int = 0
    publish_dropped: int = 0
    last_connect_ts: float | None = None

    def reject(self, reason: RejectReason) -> None:
        self.messages_rejected_by_reason[reason] = (
            self.messages_rejected_by_reason.get(reason, 0) + 1
        )


@dataclass(slots=True)
class MqttDeviceStats:
    """Counters of one device's messages (one message that feeds two points counts twice)."""

    messages: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    last_message_ts: float | None = None


@dataclass(frozen=True, slots=True)
class _Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(slots=True)
class _PointState:
    value: float | None = None  # the last accepted value
    ts: float = 0.0  # when it arrived
    live: bool = False  # False for a retained replay, whose age nobody knows
    rejected: str | None = None  # reason, while the last message was refused
    rejected_ts: float = 0.0


# --------------------------------------------------------------------------------------------
# Devices


class MqttDevice:
    """One device's points as last heard on the broker; made by MqttConnection.add_device."""

    def __init__(
        self, rack: str, device: str, profile: MqttProfile, prefix: str, broker: str
    ) -> None:
        self.rack = rack
        self.device = device
        self.profile = profile
        self.prefix = prefix
        self.stats = MqttDeviceStats()
        self.topics: dict[str, str] = {
            point.name: _checked_topic(point.topic_for(prefix=prefix, rack=rack, device=device))
            for point in profile.points
        }
        self._state = {point.name: _PointState() for point in profile.points}
        self._label = f"{rack}/{device} ({broker})"
        self._log_extra = {"rack": rack, "device": device}

    def readings(self, now: float) -> list[Reading]:
        """One reading per profile point, in profile order, as seen at monotonic time `now`."""
        return [self._reading_at(point, now) for point in self.profile.points]

    def _reading_at(self, point: TopicPoint, now: float) -> Reading:
        state = self._state[point.name]
        if state.rejected is not None:
            return self._reading(point, None, state.rejected_ts, Quality.BAD)
        if state.value is None:
            return self._reading(point, None, now, Quality.MISSING)
        fresh = state.live and now - state.ts <= point.max_age_s
        return self._reading(point, state.value, state.ts, Quality.GOOD if fresh else Quality.STALE)

    def _reading(
        self, point: TopicPoint, value: float | None, ts: float, quality: Quality
    ) -> Reading:
        return Reading(PointId(self.rack, self.device, point.name), value, ts, quality)

    def _receive(
        self, point: TopicPoint, payload: bytes, now: float, replay: bool
    ) -> Reading | PayloadError:
        """Decode one message for one point and remember the outcome; never raises."""
        self.stats.messages += 1
        self.stats.last_message_ts = now
        state = self._state[point.name]
        try:
            value = decode_payload(point, payload)
        except PayloadError as exc:
            self._rejected(point, state, exc, now)
            return exc
        if state.rejected is not None:
            log.info(
                "%s: %s on %s recovered (was %s)",
                self._label,
                point.name,
                self.topics[point.name],
                state.rejected,
                extra=self._log_extra,
            )
        state.rejected = None
        state.value, state.ts, state.live = value, now, not replay
        return self._reading(point, value, now, Quality.STALE if replay else Quality.GOOD)

    def _rejected(
        self, point: TopicPoint, state: _PointState, exc: PayloadError, now: float
    ) -> None:
        self.stats.rejected += 1
        reasons = self.stats.rejected_by_reason
        reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
        if state.rejected != exc.reason:
            log.warning(
                "%s: %s on %s is bad: %s; logging again when this changes",
                self._label,
                point.name,
                self.topics[point.name],
                exc,
                extra=self._log_extra,
            )
        state.rejected, state.rejected_ts = exc.reason, now


def _checked_topic(topic: str) -> str:
    """A concrete topic must be one topic: the prefix, rack or device filled into a profile
    template could still bring in a wildcard."""
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        raise ValueError(f"{topic!r} is not a valid MQTT topic to subscribe to")
    return topic


# --------------------------------------------------------------------------------------------
# The connection


class MqttConnection:
    """One broker connection for the whole daemon: subscriptions of many devices, publishing
    of state and events, Last Will, reconnect with backoff, resubscribe and republish of
    retained state after a reconnect.

    With `will_topic` set, the broker publishes `will_payload` there (retained, QoS 1) when the
    connection dies without a goodbye; coolctl publishes `online_payload` there on every
    connect and `will_payload` itself on a clean stop, where the broker would not.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        will_topic: str | None = None,
        will_payload: bytes = b"offline",
        online_payload: bytes = b"online",
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        if will_topic is not None:
            _check_publish_topic(will_topic)
        if max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, not {max_queued}")
        self.settings = settings
        self.stats = MqttStats()
        self._where = settings.address
        self._will_topic = will_topic
        self._will_payload = will_payload
        self._online_payload = online_payload
        self._max_queued = max_queued
        self._devices: dict[tuple[str, str], MqttDevice] = {}
        self._routes: dict[str, list[tuple[MqttDevice, TopicPoint]]] = {}
        self._subscriptions: dict[str, int] = {}  # topic -> QoS
        self._callbacks: list[Callable[[Reading], None]] = []
        self._failing_callbacks: set[int] = set()
        self._outbox: deque[_Outgoing] = deque()
        self._outbox_ready = asyncio.Event()
        self._in_flight = 0
        self._overflowing = False
        self._retained: dict[str, _Outgoing] = {}
        self._stop_requested = asyncio.Event()
        self._connected_event = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._attempts = 0
        self._down_since: float | None = None
        self._last_failure: str | None = None

    # ----------------------------------------------------------------------------------------
    # Devices and callbacks

    @property
    def devices(self) -> list[MqttDevice]:
        return list(self._devices.values())

    def add_device(self, rack: str, device: str, profile: MqttProfile, prefix: str) -> MqttDevice:
        """Listen to one device's topics; before or after start(). Raises ValueError for a
        device added twice or a prefix/rack/device that makes an invalid topic."""
        if (rack, device) in self._devices:
            raise ValueError(f"{rack}/{device} is already on this MQTT connection")
        added = MqttDevice(rack, device, profile, prefix, self._where)
        self._devices[(rack, device)] = added
        changed: dict[str, int] = {}
        for point in profile.points:
            topic = added.topics[point.name]
            self._routes.setdefault(topic, []).append((added, point))
            if point.qos > self._subscriptions.get(topic, -1):
                self._subscriptions[topic] = changed[topic] = point.qos
        if self._client is not None and changed:
            self._spawn(self._subscribe(self._client, changed))
        return added

    def on_interlock_message(self, callback: Callable[[Reading], None]) -> None:
        """Call `callback` on the event loop for every accepted message on an interlock point,
        as soon as it is decoded. The reading is good for a live message and stale for a
        retained one replayed on subscribing. A callback that raises is logged, not retried."""
        self._callbacks.append(callback)

    def readings(self, now: float) -> list[Reading]:
        """The readings of every device on this connection."""
        return [reading for device in self._devices.values() for reading in device.readings(now)]

    # ----------------------------------------------------------------------------------------
    # Life cycle

    @property
    def connected(self) -> bool:
        return self.stats.connected

    async def start(self) -> None:
        """Start the connection task and return at once; it connects in the background."""
        if self._task is not None:
            return
        if self._closed:
            raise RuntimeError("an MqttConnection cannot be started again after stop()")
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"coolctl mqtt {self._where}"
        )

    async def __aenter__(self) -> Self:
        """Started; stopped (flushed and disconnected cleanly) when the block ends."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait until connected and subscribed; False if that did not happen in time."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected_event.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Publish what is queued and the offline state, disconnect cleanly, end the task.

        A clean DISCONNECT makes the broker drop the Last Will, hence the explicit offline
        state. Publishing stops here: later publish() calls are counted as dropped.
        """
        self._closed = True
        self._stop_requested.set()
        task, self._task = self._task, None
        if task is not None:
            # Bounded: a connect in progress must finish (a cancelled connect leaves aiomqtt's
            # socket behind), then the flush; past that, the task is cancelled.
            limit = OPERATION_TIMEOUT_S + STOP_FLUSH_TIMEOUT_S + 5.0
            done, _ = await asyncio.wait({task}, timeout=limit)
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await _cancel_until_done(list(self._background))

    # ----------------------------------------------------------------------------------------
    # Publishing

    async def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 0, retain: bool = False
    ) -> None:
        """Queue a message and return without waiting for the broker (see publish_nowait)."""
        self.publish_nowait(topic, payload, qos=qos, retain=retain)

    def publish_nowait(
        self, topic: str, payload: bytes | str, *, qos: int = 0, retain: bool = False
    ) -> None:
        """Queue a message; it goes out as soon as the connection allows.

        While disconnected, messages wait in a bounded queue (the oldest are dropped, and
        counted, when it is full). A retained message is also remembered per topic and
        published again after every reconnect; an empty retained payload clears the topic
        on the broker and is forgotten once sent.
        """
        _check_publish_topic(topic)
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, not {qos}")
        if self._closed:
            self.stats.publish_dropped += 1
            return
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        item = _Outgoing(topic, data, qos, retain)
        if retain and data:
            self._retained[topic] = item
        elif retain:
            self._retained.pop(topic, None)
        self._enqueue(item)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until everything queued has been handed to the broker; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._outbox or self._in_flight:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def _enqueue(self, item: _Outgoing) -> None:
        if len(self._outbox) >= self._max_queued:
            self._outbox.popleft()
            self._dropped_one()
        self._outbox.append(item)
        self._outbox_ready.set()

    def _requeue(self, item: _Outgoing) -> None:
        """Put back a message whose publish did not complete, ahead of the rest."""
        if len(self._outbox) >= self._max_queued:
            self._dropped_one()
            return
        self._outbox.appendleft(item)
        self._outbox_ready.set()

    def _dropped_one(self) -> None:
        self.stats.publish_dropped += 1
        if not self._overflowing:
            self._overflowing = True
            log.warning(
                "MQTT broker %s: publish queue full (%d messages), dropping the oldest; "
                "logging again once it has drained",
                self._where,
                self._max_queued,
            )

    # ----------------------------------------------------------------------------------------
    # The connection task

    async def _run(self) -> None:
        """Connect, serve, and reconnect with backoff until stop(); never raises."""
        backoff = self.settings.reconnect_min_s
        while not self._stop_requested.is_set():
            connected_at = await self._connect_once()
            if self._stop_requested.is_set():
                break
            if connected_at is not None and time.monotonic() - connected_at >= STABLE_CONNECTION_S:
                backoff = self.settings.reconnect_min_s
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._stop_requested.wait()
            backoff = min(backoff * 2, self.settings.reconnect_max_s)

    async def _connect_once(self) -> float | None:
        """One connection attempt and, if it works, the whole connection; returns when it
        started (monotonic) or None when it never got connected."""
        self._attempts += 1
        connected_at: float | None = None
        try:
            async with self._make_client() as client:
                connected_at = time.monotonic()
                await self._session(client)
        except aiomqtt.MqttError as exc:
            self._connection_ended(exc, connected_at)
        except Exception as exc:  # a fault in coolctl or aiomqtt must not end the task
            log.exception("MQTT broker %s: unexpected error in the connection", self._where)
            self._connection_ended(exc, connected_at)
        finally:
            self._client = None
            self.stats.connected = False
            self._connected_event.clear()
        return connected_at

    def _make_client(self) -> aiomqtt.Client:
        settings = self.settings
        tls_params = None
        if settings.tls or settings.tls_ca_file is not None:
            ca_file = str(settings.tls_ca_file) if settings.tls_ca_file is not None else None
            tls_params = aiomqtt.TLSParameters(ca_certs=ca_file)
        will = None
        if self._will_topic is not None:
            will = aiomqtt.Will(self._will_topic, self._will_payload, qos=1, retain=True)
        return aiomqtt.Client(
            settings.host,
            settings.port,
            username=settings.username,
            password=settings.password,
            identifier=settings.client_id,
            will=will,
            keepalive=settings.keepalive_s,
            tls_params=tls_params,
            timeout=CONNECT_TIMEOUT_S,  # the CONNACK; every other call passes its own
        )

    async def _session(self, client: aiomqtt.Client) -> None:
        """Everything one connection does: subscribe, announce, serve until it fails or stop()
        is asked for, then say goodbye."""
        self._client = client
        if not self._stop_requested.is_set():
            await self._subscribe(client, dict(self._subscriptions))
            await self._announce(client)
            self._connected(client)
            await self._serve(client)
        if self._stop_requested.is_set():
            await self._farewell(client)

    async def _subscribe(self, client: aiomqtt.Client, topics: dict[str, int]) -> None:
        """One SUBSCRIBE for all of `topics`; topics the broker refuses are logged."""
        if not topics:
            return
        codes = await client.subscribe(list(topics.items()), timeout=OPERATION_TIMEOUT_S)
        for topic, code in zip(topics, codes, strict=False):
            value = _code_value(code)
            if value is not None and value >= 0x80:
                log.error(
                    "MQTT broker %s refused the subscription to %s (code %d); its points "
                    "will stay missing",
                    self._where,
                    topic,
                    value,
                )

    async def _announce(self, client: aiomqtt.Client) -> None:
        """Publish the online state and every remembered retained message the broker may have
        lost, except those still queued (the queued copy is newer or the same)."""
        if self._will_topic is not None and self._will_topic not in self._retained:
            await client.publish(
                self._will_topic,
                self._online_payload,
                qos=1,
                retain=True,
                timeout=OPERATION_TIMEOUT_S,
            )
            self.stats.published += 1
        queued = {id(item) for item in self._outbox}
        for item in list(self._retained.values()):
            if id(item) not in queued:
                await client.publish(
                    item.topic, item.payload, qos=item.qos, retain=True, timeout=OPERATION_TIMEOUT_S
                )
                self.stats.published += 1

    def _connected(self, client: aiomqtt.Client) -> None:
        stats = self.stats
        now = time.monotonic()
        first = stats.connects == 0
        stats.connects += 1
        stats.connected = True
        stats.last_connect_ts = now
        if first:
            log.info(
                "connected to MQTT broker %s as %s, subscribed to %d topic(s)",
                self._where,
                client.identifier or "a broker-assigned client id",
                len(self._subscriptions),
            )
        else:
            down_s = now - self._down_since if self._down_since is not None else 0.0
            log.info(
                "reconnected to MQTT broker %s after %d attempt(s), %.1f s without a connection",
                self._where,
                self._attempts,
                down_s,
            )
        self._attempts = 0
        self._down_since = None
        self._last_failure = None
        self._connected_event.set()

    def _connection_ended(self, exc: Exception, connected_at: float | None) -> None:
        """Count and log the end of a connection or a failed attempt, once per change."""
        if self._stop_requested.is_set():
            return
        if connected_at is not None and self.stats.connected:
            self.stats.disconnects += 1
            self._down_since = time.monotonic()
            self._attempts = 0
            self._last_failure = None
            log.warning(
                "lost the connection to MQTT broker %s: %s; reconnecting",
                self._where,
                _error_text(exc),
            )
            return
        self.stats.connect_failures += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
        problem, level = self._describe_failure(exc)
        if problem != self._last_failure:
            self._last_failure = problem
            log.log(
                level,
                "cannot connect to MQTT broker %s: %s; retrying with backoff up to %g s, logging "
                "again when this changes",
                self._where,
                problem,
                self.settings.reconnect_max_s,
            )

    def _describe_failure(self, exc: Exception) -> tuple[str, int]:
        """A failed attempt in words, and how loud: refused credentials need a person, a
        broker that is down usually comes back."""
        value = _code_value(getattr(exc, "rc", None))
        if isinstance(exc, aiomqtt.MqttCodeError) and value in _AUTH_CODES:
            who = f"user {self.settings.username!r}" if self.settings.username else "no username"
            return (
                f"bad username or password: credentials of {who} refused ({exc})",
                logging.ERROR,
            )
        return (_error_text(exc), logging.WARNING)

    # ----------------------------------------------------------------------------------------
    # Serving one connection

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Receive and send until the connection fails (MqttError) or stop() is asked for."""
        tasks = [
            asyncio.create_task(self._receive(client)),
            asyncio.create_task(self._send(client)),
            asyncio.create_task(self._stop_requested.wait()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel_until_done(tasks)
        for task in done:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self._dispatch(message)

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            if not self._outbox:
                self._overflowing = False
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
                continue
            await self._publish_next(client)

    async def _publish_next(self, client: aiomqtt.Client) -> None:
        item = self._outbox.popleft()
        self._in_flight += 1
        try:
            await client.publish(
                item.topic,
                item.payload,
                qos=item.qos,
                retain=item.retain,
                timeout=OPERATION_TIMEOUT_S,
            )
        except BaseException:
            self._requeue(item)
            raise
        finally:
            self._in_flight -= 1
        self.stats.published += 1

    async def _farewell(self, client: aiomqtt.Client) -> None:
        """On stop(): send what is queued, then the offline state, within a bounded time."""
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(STOP_FLUSH_TIMEOUT_S):
                while self._outbox:
                    await self._publish_next(client)
                if self._will_topic is not None:
                    await client.publish(
                        self._will_topic,
                        self._will_payload,
                        qos=1,
                        retain=True,
                        timeout=OPERATION_TIMEOUT_S,
                    )
                    self.stats.published += 1

    # ----------------------------------------------------------------------------------------
    # Incoming messages

    def _dispatch(self, message: aiomqtt.Message) -> None:
        """Route one message to every point that listens to its topic (the fast path for
        interlock points runs here, before anything else is awaited)."""
        now = time.monotonic()
        self.stats.messages_received += 1
        topic = message.topic.value
        routes = self._routes.get(topic)
        if not routes:
            self.stats.reject(RejectReason.UNKNOWN_TOPIC)
            log.debug("MQTT broker %s: ignored a message on unknown topic %s", self._where, topic)
            return
        payload = message.payload
        data = payload if isinstance(payload, bytes) else str(payload).encode("utf-8")
        for device, point in routes:
            outcome = device._receive(point, data, now, replay=bool(message.retain))
            if isinstance(outcome, PayloadError):
                self.stats.reject(outcome.reason)
            elif point.interlock:
                self._fire(outcome)

    def _fire(self, reading: Reading) -> None:
        for index, callback in enumerate(self._callbacks):
            try:
                callback(reading)
            except Exception:
                if index not in self._failing_callbacks:
                    self._failing_callbacks.add(index)
                    log.exception(
                        "interlock callback %r failed on %s; logging again after it recovers",
                        callback,
                        reading.point,
                    )
            else:
                self._failing_callbacks.discard(index)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a subscribe for devices added while connected; a failure there is harmless,
        since the next connection subscribes to everything."""
        task = asyncio.get_running_loop().create_task(_quietly(coroutine, self._where))
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def _quietly(coroutine: Coroutine[Any, Any, None], where: str) -> None:
    try:
        await coroutine
    except aiomqtt.MqttError as exc:
        log.debug(
            "MQTT broker %s: subscribing a new device failed (%s); the next connection "
            "subscribes again",
            where,
            exc,
        )


async def _cancel_until_done(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel, and cancel again: on Python 3.11 `asyncio.wait_for` (inside aiomqtt's publish)
    can swallow a cancellation that arrives with the PUBACK, and the task carries on."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.05)


def _error_text(exc: BaseException) -> str:
    """An error in words, with its cause: aiomqtt's "Disconnected during message iteration"
    says nothing until the reason it wraps is added."""
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({cause})"
    return text


def _code_value(code: object) -> int | None:
    """The number of an MQTT return or reason code: aiomqtt hands out plain ints under MQTT
    3.1.1 in some places and paho ReasonCode objects (with `.value`) in others."""
    value = getattr(code, "value", code)
    return value if isinstance(value, int) else None


def _check_publish_topic(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        raise ValueError(f"{topic!r} is not a valid MQTT topic to publish to")
