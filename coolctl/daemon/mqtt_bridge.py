"""The daemon on MQTT: one broker connection for sensors, the rack state and the events.

Topics under the config's `topic_root` (default `coolctl/<site>`):
- `<root>/status` — `online`, retained; the Last Will turns it to `offline` if the daemon dies.
- `<root>/<rack>/state` — JSON of the rack (mode, interlocks, failsafe, budget, power, values),
  retained, published every control period.
- `<root>/<rack>/events` — one JSON object per event, QoS 1.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
from collections.abc import Mapping

from coolctl.config import Config, RackConfig
from coolctl.config.schema import is_loopback
from coolctl.daemon.devices import DeviceHandle, MqttDeviceClient, read_secret
from coolctl.drivers.mqtt import MqttConnection, MqttSettings
from coolctl.model import Event

log = logging.getLogger("coolctl.daemon.mqtt_bridge")


def topic_root(config: Config) -> str:
    assert config.mqtt is not None
    return config.mqtt.topic_root.replace("{site}", config.site.name)


def client_id(config: Config) -> str:
    """The daemon's MQTT client id: its site, its host and a random part, new at each start.

    A broker drops the older of two connections with one client id, so an id anyone can
    guess (`coolctl-<site>`) lets any client knock the daemon off the bus. The broker config
    in deploy/mosquitto/ also makes each client's id its username, which no other client has.
    """
    host = socket.gethostname().split(".")[0] or "host"
    return f"coolctl-{config.site.name}-{host}-{secrets.token_hex(6)}"[:64]


def budget_topic(rack: RackConfig, handles: Mapping[str, DeviceHandle]) -> str | None:
    """The MQTT topic a rack's upstream budget arrives on, when it comes over MQTT."""
    ref = rack.budget_point
    handle = handles.get(ref.device) if ref is not None else None
    if ref is None or handle is None or not isinstance(handle.client, MqttDeviceClient):
        return None
    topic = handle.client.device.topics.get(ref.point)
    return None if topic is None else f"topic {topic}"


def open_connection(config: Config) -> MqttConnection | None:
    """The daemon's broker connection, with its Last Will, or None without an [mqtt] table."""
    if config.mqtt is None:
        return None
    mqtt = config.mqtt
    if mqtt.has_credentials and not (mqtt.tls or mqtt.ca_file) and not is_loopback(mqtt.host):
        log.warning(
            "MQTT credentials go to %s in clear (allow_plaintext): use TLS on the broker",
            mqtt.host,
        )
    settings = MqttSettings(
        host=mqtt.host,
        port=mqtt.port,
        username=mqtt.username,
        password=read_secret(mqtt.password_file, mqtt.password_credential),
        tls=mqtt.tls,
        tls_ca_file=mqtt.ca_file,
        client_id=client_id(config),
    )
    return MqttConnection(settings, will_topic=f"{topic_root(config)}/status")


def event_payload(event: Event, wall_time: float) -> bytes:
    return json.dumps(
        {
            "rack": event.rack,
            "kind": event.kind,
            "severity": event.severity.value,
            "message": event.message,
            "source": event.source,
            "at": wall_time,
        }
    ).encode()
