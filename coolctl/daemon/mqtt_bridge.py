"""The daemon on MQTT: one broker connection for sensors, the rack state and the events.

Topics under the config's `topic_root` (default `coolctl/<site>`):
- `<root>/status` — `online`, retained; the Last Will turns it to `offline` if the daemon dies.
- `<root>/<rack>/state` — JSON of the rack (mode, interlocks, failsafe, budget, power, values),
  retained, published every control period.
- `<root>/<rack>/events` — one JSON object per event, QoS 1.
"""

from __future__ import annotations

import json

from coolctl.config import Config
from coolctl.daemon.devices import read_secret
from coolctl.drivers.mqtt import MqttConnection, MqttSettings
from coolctl.model import Event


def topic_root(config: Config) -> str:
    assert config.mqtt is not None
    return config.mqtt.topic_root.replace("{site}", config.site.name)


def open_connection(config: Config) -> MqttConnection | None:
    """The daemon's broker connection, with its Last Will, or None without an [mqtt] table."""
    if config.mqtt is None:
        return None
    mqtt = config.mqtt
    settings = MqttSettings(
        host=mqtt.host,
        port=mqtt.port,
        username=mqtt.username,
        password=read_secret(mqtt.password_file, mqtt.password_credential),
        tls=mqtt.tls,
        tls_ca_file=mqtt.ca_file,
        client_id=f"coolctl-{config.site.name}",
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
