"""The daemon on MQTT: one broker connection for sensors, the rack state and the events.

Topics under the config's `topic_root` (default `coolctl/<site>`):
- `<root>/status` — `online`, retained; the Last Will turns it to `offline` if the daemon dies.
- `<root>/<rack>/state` — JSON of the rack (mode, interlocks, failsafe, budget, power, values),
  retained, published every control period.
- `<root>/<rack>/events` — one JSON object per event, QoS 1.
"""

from __future__ import annotations

import json
from pathlib import Path

from coolctl.config import Config, MqttConfig
from coolctl.drivers.mqtt import MqttConnection, MqttSettings
from coolctl.model import Event
from coolctl.systemd import read_credential


def mqtt_password(config: MqttConfig) -> str | None:
    """The broker password from a file or a systemd credential — never from the config."""
    if config.password_file is not None:
        return Path(config.password_file).read_text("utf-8").rstrip("\r\n")
    if config.password_credential is not None:
        password = read_credential(config.password_credential)
        if password is None:
            raise ValueError(
                f"the credential {config.password_credential!r} is not available"
                " (LoadCredential= in the systemd unit)"
            )
        return password
    return None


def topic_root(config: Config) -> str:
    assert config.mqtt is not None
    return config.mqtt.topic_root.replace("{site}", config.site)


def open_connection(config: Config) -> MqttConnection | None:
    """The daemon's broker connection, with its Last Will, or None without an [mqtt] table."""
    if config.mqtt is None:
        return None
    mqtt = config.mqtt
    settings = MqttSettings(
        host=mqtt.host,
        port=mqtt.port,
        username=mqtt.username,
        password=mqtt_password(mqtt),
        tls=mqtt.tls,
        tls_ca_file=mqtt.ca_file,
        client_id=f"coolctl-{config.site}",
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
