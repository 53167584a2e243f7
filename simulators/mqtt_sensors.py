"""MQTT front-end of a simulated rack sensor device: leak detector, inlet temperature, flow meter.

Real rack sensor kits publish to a broker rather than answer polls, and they publish in the
mixed formats seen in the field; the daemon's MQTT driver has to cope with all three:

- `{prefix}/{rack}/{device}/leak`: JSON `{"wet": false, "ts": 1718000000.123}`, retained, QoS 1,
  sent the moment the detector changes and every period as a heartbeat. Retained so that a
  daemon that (re)connects learns at once whether the rack is wet.
- `{prefix}/{rack}/{device}/inlet_temperature`: plain text `32.41` (°C), QoS 0, every period.
- `{prefix}/{rack}/{device}/flow`: JSON `{"flow": {"value": 160.2, "unit": "L/min"}}`, QoS 0,
  every period.

The leak fast path is measured end to end (plant leak -> interlock writes), so the simulation
calls `poll()` after every plant step and a change goes out within one step, not at the next
heartbeat. aiomqtt does not reconnect by itself: the publisher reconnects with capped backoff
and never lets a broker outage reach the simulation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import time
from collections.abc import Mapping
from typing import Protocol

import aiomqtt

__all__ = [
    "DEFAULT_PREFIX",
    "MqttSensorPublisher",
    "SensorSource",
    "flow_payload",
    "leak_payload",
    "parse_broker",
    "temperature_payload",
]

log = logging.getLogger("coolctl.simulators.mqtt")

DEFAULT_PREFIX = "coolctl-sim"
DEFAULT_MQTT_PORT = 1883
# Nagle's algorithm would hold a leak message back behind the un-acknowledged heartbeat just
# written (~40 ms of delayed ACK on loopback): the leak fast path cannot afford that.
_NO_DELAY: tuple[tuple[int, int, int], ...] = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


class SensorSource(Protocol):
    """Where the publisher gets its readings: `inlet_temperature`, `flow`, `leak_detected`."""

    def read_points(self) -> Mapping[str, float]:
        """Current readings, already through the sensor model."""
        ...


def parse_broker(address: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `host` (port 1883) -> (host, port)."""
    text = address.strip()
    if not text:
        raise ValueError("MQTT broker address is empty")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad MQTT broker address {address!r}")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise ValueError(f"bad MQTT broker address {address!r}: put an IPv6 host in brackets")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"bad MQTT broker address {address!r}: no host")
    if not port_text:
        return host, DEFAULT_MQTT_PORT
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"bad MQTT broker address {address!r}: port is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad MQTT broker address {address!r}: port outside 1..65535")
    return host, port


def leak_payload(wet: bool, ts: float) -> bytes:
    return json.dumps({"wet": wet, "ts": round(ts, 3)}).encode()


def temperature_payload(celsius: float) -> bytes:
    return f"{celsius:.2f}".encode()


def flow_payload(litres_per_minute: float) -> bytes:
    return json.dumps({"flow": {"value": round(litres_per_minute, 1), "unit": "L/min"}}).encode()


class MqttSensorPublisher:
    """Publishes one simulated sensor device's readings to a broker until stopped.

    `poll()` samples the source and wakes the publisher if the leak detector changed; the
    simulation calls it after every plant step. `set_paused(True)` is link loss: nothing is
    published until it is resumed, when everything goes out at once.
    """

    def __init__(
        self,
        source: SensorSource,
        *,
        broker: str,
        rack: str,
        device: str,
        prefix: str = DEFAULT_PREFIX,
        period_s: float = 1.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 2.0,
        timeout_s: float = 3.0,
    ) -> None:
        if not (math.isfinite(period_s) and period_s > 0):
            raise ValueError(f"publish period must be > 0 s, got {period_s}")
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("backoff must satisfy 0 < initial <= max")
        # "USER:PASSWORD@HOST:PORT" for a broker that wants an account (the demo's does).
        credentials, _, address = broker.rpartition("@")
        self.host, self.port = parse_broker(address)
        username, _, password = credentials.partition(":")
        self._username = username or None
        self._password = password or None
        self.rack = rack
        self.device = device
        self.prefix = prefix.strip("/")
        self.period_s = period_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.timeout_s = timeout_s
        self.published = 0  # messages handed to the broker, for tests and diagnostics
        self.connections = 0  # successful connects, so tests can see a reconnect
        self._source = source
        self._wet: bool | None = None  # detector state as last sampled
        self._sent_wet: bool | None = None  # as last published
        self._latest: Mapping[str, float] = {}
        self._paused = False
        self._connected = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._source_failing = False

    # ---- public -----------------------------------------------------------------------------

    @property
    def broker(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def base_topic(self) -> str:
        return f"{self.prefix}/{self.rack}/{self.device}"

    def topic(self, name: str) -> str:
        return f"{self.base_topic}/{name}"

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        """Start publishing in the background; a missing broker is retried, not raised."""
        if self._task is not None:
            raise RuntimeError(f"publisher {self.base_topic} already started")
        self.poll()
        self._task = asyncio.create_task(self._run(), name=f"mqtt {self.base_topic}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # aiomqtt waits for acknowledgements with asyncio.wait_for, which on Python 3.11 can
        # swallow a cancellation: ask again until the task has really ended.
        while not (await asyncio.wait({task}, timeout=1.0))[0]:
            task.cancel()
        if not task.cancelled() and task.exception() is not None:
            log.error("mqtt sensor %s ended with %r", self.base_topic, task.exception())
        self._connected = False

    def poll(self) -> None:
        """Sample the source now; wake the publisher at once if the leak detector changed."""
        if self._sample():
            self._wake.set()

    def set_paused(self, paused: bool) -> None:
        """Link loss (True) or link back (False): resuming publishes everything at once."""
        if paused == self._paused:
            return
        self._paused = paused
        if not paused:
            self._sent_wet = None  # forces a full publish on the next wake
            self._wake.set()
        log.info("mqtt sensor %s %s", self.base_topic, "silent" if paused else "publishing again")

    async def wait_connected(self, timeout_s: float) -> None:
        """For tests and start-up scripts: wait until the broker has accepted us."""
        deadline = time.monotonic() + timeout_s
        while not self._connected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.base_topic}: not connected to {self.broker}")
            await asyncio.sleep(0.02)

    # ---- sampling ---------------------------------------------------------------------------

    def _sample(self) -> bool:
        """Read the source; True if the leak detector differs from what was last published."""
        try:
            values = self._source.read_points()
        except Exception:
            if not self._source_failing:
                log.exception("mqtt sensor %s: reading the plant failed", self.base_topic)
            self._source_failing = True
            return False
        self._source_failing = False
        self._latest = values
        self._wet = values.get("leak_detected", 0.0) >= 0.5
        return self._wet != self._sent_wet

    # ---- connection -------------------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, publish until the connection breaks, back off, and again; forever."""
        backoff = self.backoff_initial_s
        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    username=self._username,
                    password=self._password,
                    timeout=self.timeout_s,
                    keepalive=10,
                    socket_options=_NO_DELAY,
                ) as client:
                    self._connected = True
                    self.connections += 1
                    backoff = self.backoff_initial_s
                    log.info("mqtt sensor %s connected to %s", self.base_topic, self.broker)
                    await self._session(client)
            except aiomqtt.MqttError as exc:
                if self._connected:
                    log.warning("mqtt sensor %s lost the broker: %s", self.base_topic, exc)
                else:
                    log.debug(
                        "mqtt sensor %s cannot reach %s: %s", self.base_topic, self.broker, exc
                    )
            except Exception:
                # Never let a publisher bug take down the simulation: log and start over.
                log.exception("mqtt sensor %s failed; reconnecting", self.base_topic)
            finally:
                self._connected = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection's life: full publish, then leak changes at once and heartbeats."""
        self._sent_wet = None  # a fresh connection re-asserts the retained leak state
        next_beat = time.monotonic()
        while True:
            # Cleared before the state is looked at, so a poll() during a publish is not lost.
            self._wake.clear()
            delay: float | None = None
            if not self._paused:
                now = time.monotonic()
                if now >= next_beat or (self._sent_wet is None and self._wet is not None):
                    self._sample()
                    await self._publish_all(client)
                    next_beat += self.period_s
                    if next_beat <= now:  # fell behind (a pause, a slow broker): restart the beat
                        next_beat = now + self.period_s
                elif self._wet != self._sent_wet:
                    await self._publish_leak(client)
                if self._wet is not None and self._wet != self._sent_wet:
                    continue  # the detector changed again while we were publishing
                delay = max(0.0, next_beat - time.monotonic())
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that arrives as the event is set, and stop() would then wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _publish_leak(self, client: aiomqtt.Client) -> None:
        wet = bool(self._wet)
        await client.publish(
            self.topic("leak"),
            leak_payload(wet, time.time()),
            qos=1,
            retain=True,
            timeout=self.timeout_s,
        )
        self._sent_wet = wet
        self.published += 1

    async def _publish_all(self, client: aiomqtt.Client) -> None:
        if self._wet is None:
            return  # the source has never been readable: publish nothing rather than guess
        await self._publish_leak(client)
        values = self._latest
        if "inlet_temperature" in values:
            await client.publish(
                self.topic("inlet_temperature"),
                temperature_payload(values["inlet_temperature"]),
                qos=0,
                timeout=self.timeout_s,
            )
            self.published += 1
        if "flow" in values:
            await client.publish(
                self.topic("flow"), flow_payload(values["flow"]), qos=0, timeout=self.timeout_s
            )
            self.published += 1
