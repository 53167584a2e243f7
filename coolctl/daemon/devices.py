"""Opens a driver client for each configured device: the daemon's connections."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from coolctl.config import DeviceConfig, MqttDeviceConfig, RedfishDeviceConfig, SnmpDeviceConfig
from coolctl.config.enums import SnmpVersion
from coolctl.daemon.systemd import read_credential
from coolctl.drivers.modbus import ModbusDevice
from coolctl.drivers.modbus_link import LinkPool, SerialSettings
from coolctl.drivers.modbus_profile import load_profile
from coolctl.drivers.mqtt import MqttConnection, MqttDevice
from coolctl.drivers.mqtt_profile import load_mqtt_profile
from coolctl.drivers.redfish import RedfishDevice, RedfishSettings
from coolctl.drivers.snmp import Credentials, SnmpDevice, V2cCredentials, V3Credentials
from coolctl.drivers.snmp_profile import load_snmp_profile
from coolctl.model import Quality, Reading
from coolctl.rack.facts import WritableSpec, device_facts


def read_secret(password_file: Path | None, credential: str | None) -> str | None:
    """A password from a file or a systemd credential — never from the config itself."""
    if password_file is not None:
        return Path(password_file).read_text("utf-8").rstrip("\r\n")
    if credential is not None:
        secret = read_credential(credential)
        if secret is None:
            raise ValueError(
                f"the credential {credential!r} is not available (LoadCredential= in the unit)"
            )
        return secret
    return None


class DeviceStatsView(Protocol):
    """The counters the metrics read from any driver's device."""

    connected: bool
    consecutive_failures: int
    last_success_ts: float | None
    last_poll_duration_s: float
    polls: int
    errors_by_kind: dict[str, int]


class DeviceClient(Protocol):
    """What the runtime needs of any driver's device object."""

    @property
    def stats(self) -> DeviceStatsView: ...

    async def poll(self) -> list[Reading]: ...

    async def write(self, point: str, value: float) -> float: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class DeviceHandle:
    """A configured device, its client, and what it can write."""

    rack: str
    config: DeviceConfig
    client: DeviceClient
    writable: Mapping[str, WritableSpec]
    point_names: tuple[str, ...]
    kind: str  # what the device is (cdu, pdu, server, sensor), from its profile
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # see DeviceFactsRecord


@dataclass(slots=True)
class MqttDeviceStats:
    """An MQTT device's health in the terms the metrics use for every device."""

    connected: bool = False
    consecutive_failures: int = 0
    last_success_ts: float | None = None
    last_poll_duration_s: float = 0.0
    polls: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)


class MqttDeviceClient:
    """An MQTT device seen as the runtime sees every device: its readings are 'polled' from
    what the subscriptions last received; it cannot be written to."""

    def __init__(self, device: MqttDevice, connection: MqttConnection) -> None:
        self.device = device
        self.connection = connection
        self._stats = MqttDeviceStats()

    @property
    def stats(self) -> MqttDeviceStats:
        stats, device_stats = self._stats, self.device.stats
        stats.connected = self.connection.connected
        stats.last_success_ts = device_stats.last_message_ts
        stats.errors_by_kind = dict(device_stats.rejected_by_reason)
        return stats

    async def poll(self) -> list[Reading]:
        readings = self.device.readings(time.monotonic())
        stats = self._stats
        stats.polls += 1
        if all(r.quality is Quality.GOOD for r in readings):
            stats.consecutive_failures = 0
        else:
            stats.consecutive_failures += 1
        return readings

    async def write(self, point: str, value: float) -> float:
        raise ValueError(f"{point}: MQTT sensor devices cannot be written to")

    async def close(self) -> None:
        return None  # the connection is the daemon's, closed once for all devices


def open_device(
    rack: str,
    config: DeviceConfig,
    mqtt: MqttConnection | None = None,
    links: LinkPool | None = None,
    host_power: bool = False,
) -> DeviceHandle:
    """Build the client for one device (no I/O yet: the first poll connects). Modbus devices
    at one address:port or on one serial bus share a link of `links` (one connection).
    `host_power`: a Redfish server's host power is read and can be written (a rack that shuts
    its servers down on a leak)."""
    facts = device_facts(config)
    client: DeviceClient
    if isinstance(config, RedfishDeviceConfig):
        client = _redfish_client(rack, config, host_power)
    elif isinstance(config, SnmpDeviceConfig):
        client = SnmpDevice(
            rack=rack,
            device=config.id,
            host=config.address,
            port=config.port,
            profile=load_snmp_profile(config.profile),
            credentials=snmp_credentials(config),
            timeout_s=config.timeout_s,
        )
    elif isinstance(config, MqttDeviceConfig):
        if mqtt is None:
            raise ValueError(f"{rack}/{config.id}: an mqtt device needs the [mqtt] broker")
        device = mqtt.add_device(
            rack, config.id, load_mqtt_profile(config.profile), config.topic_prefix
        )
        client = MqttDeviceClient(device, mqtt)
    else:
        links = links if links is not None else LinkPool()
        if config.transport == "rtu":
            assert config.serial_port is not None  # the config's check
            bus = SerialSettings(
                config.serial_port,
                baudrate=config.baudrate,
                parity=config.parity,
                stopbits=config.stopbits,
                bytesize=config.bytesize,
            )
            link = links.serial(bus, timeout_s=config.timeout_s)
        else:
            link = links.tcp(config.address, config.port, timeout_s=config.timeout_s)
        client = ModbusDevice(
            rack=rack,
            device=config.id,
            unit_id=config.unit,
            profile=load_profile(config.profile),
            link=link,
        )
    return DeviceHandle(
        rack, config, client, facts.writable, facts.point_names, facts.kind, facts.ranges
    )


def snmp_credentials(config: SnmpDeviceConfig) -> Credentials:
    """The community or the v3 keys, from their files or systemd credentials."""

    def secret(file: Path | None, credential: str | None, what: str) -> str:
        value = read_secret(file, credential)
        if not value:
            raise ValueError(f"{config.id}: the SNMP {what} is empty or not given")
        return value

    if config.version == SnmpVersion.V2C:
        return V2cCredentials(
            secret(config.community_file, config.community_credential, "community")
        )
    assert config.user is not None  # the config's check requires it for v3
    return V3Credentials(
        user=config.user,
        auth_key=secret(config.auth_key_file, config.auth_key_credential, "auth key"),
        priv_key=secret(config.priv_key_file, config.priv_key_credential, "priv key"),
        auth_protocol=config.auth_protocol.value,
        priv_protocol=config.priv_protocol.value,
    )


def _redfish_client(
    rack: str, redfish: RedfishDeviceConfig, host_power: bool = False
) -> RedfishDevice:
    settings = RedfishSettings(
        url=redfish.url,
        username=redfish.username,
        password=read_secret(redfish.password_file, redfish.password_credential),
        auth=redfish.auth.literal,
        ca_file=redfish.ca_file,
        verify_tls=redfish.verify_tls,
        timeout_s=redfish.timeout_s,
        max_in_flight=redfish.max_in_flight,
    )
    return RedfishDevice(
        rack=rack,
        device=redfish.id,
        kind=redfish.kind.literal,
        settings=settings,
        host_power=host_power,
    )
