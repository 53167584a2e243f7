"""Builds a driver client for each configured device and says what it can be told to do."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from coolctl.config import Config, ConfigError, DeviceConfig, load_config
from coolctl.drivers.modbus import ModbusDevice
from coolctl.drivers.modbus_profile import ModbusProfile, load_profile
from coolctl.drivers.mqtt import MqttConnection, MqttDevice
from coolctl.drivers.mqtt_profile import load_mqtt_profile
from coolctl.drivers.redfish import RedfishDevice, RedfishSettings, kind_points
from coolctl.model import Quality, Reading
from coolctl.systemd import read_credential


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


@dataclass(frozen=True, slots=True)
class WritableSpec:
    """What a device accepts for one writable point, from its profile."""

    minimum: float
    maximum: float
    resolution: float  # one count of the register, in engineering units


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


@dataclass(frozen=True, slots=True)
class DeviceFactsRecord:
    """What a device offers, from its profile (or, for Redfish, its kind): no connection."""

    writable: Mapping[str, WritableSpec]
    point_names: tuple[str, ...]
    kind: str


def device_facts(config: DeviceConfig) -> DeviceFactsRecord:
    """A device's points, writable points with their ranges, and kind, without opening it."""
    if config.driver == "redfish":
        redfish = config.redfish
        assert redfish is not None
        writable: dict[str, WritableSpec] = {}
        if redfish.kind == "server":
            writable["power_limit"] = WritableSpec(redfish.cap_min_w, redfish.cap_max_w, 1.0)
        elif redfish.kind == "cdu":
            writable["pump_speed_command"] = WritableSpec(0.0, 1.0, 0.001)
            writable["valve_command"] = WritableSpec(0.0, 1.0, 0.001)
        return DeviceFactsRecord(writable, kind_points(redfish.kind), redfish.kind)
    if config.driver == "mqtt":
        mqtt_profile = load_mqtt_profile(config.profile)
        names = tuple(p.name for p in mqtt_profile.points)
        return DeviceFactsRecord({}, names, mqtt_profile.kind)
    profile = load_profile(config.profile)
    names = tuple(p.name for p in profile.points)
    return DeviceFactsRecord(writable_points(profile), names, profile.kind)


def open_device(
    rack: str, config: DeviceConfig, mqtt: MqttConnection | None = None
) -> DeviceHandle:
    """Build the client for one device (no I/O yet: the first poll connects)."""
    facts = device_facts(config)
    client: DeviceClient
    if config.driver == "redfish":
        client = _redfish_client(rack, config)
    elif config.driver == "mqtt":
        if mqtt is None:
            raise ValueError(f"{rack}/{config.id}: an mqtt device needs the [mqtt] broker")
        device = mqtt.add_device(
            rack, config.id, load_mqtt_profile(config.profile), config.topic_prefix
        )
        client = MqttDeviceClient(device, mqtt)
    else:
        client = ModbusDevice(
            rack=rack,
            device=config.id,
            host=config.address,
            port=config.port,
            unit_id=config.unit,
            profile=load_profile(config.profile),
            timeout_s=config.timeout_s,
        )
    return DeviceHandle(rack, config, client, facts.writable, facts.point_names, facts.kind)


def _redfish_client(rack: str, config: DeviceConfig) -> RedfishDevice:
    redfish = config.redfish
    assert redfish is not None
    settings = RedfishSettings(
        url=redfish.url,
        username=redfish.username,
        password=read_secret(redfish.password_file, redfish.password_credential),
        auth=redfish.auth,
        ca_file=redfish.ca_file,
        verify_tls=redfish.verify_tls,
        timeout_s=config.timeout_s,
        max_in_flight=redfish.max_in_flight,
    )
    return RedfishDevice(rack=rack, device=config.id, kind=redfish.kind, settings=settings)


def writable_points(profile: ModbusProfile) -> dict[str, WritableSpec]:
    specs = {}
    for point in profile.points:
        if point.writable:
            low = point.min if point.min is not None else float("-inf")
            high = point.max if point.max is not None else float("inf")
            resolution = abs(point.scale) if point.data_type != "bool" else 1.0
            specs[point.name] = WritableSpec(low, high, resolution)
    return specs


def load_checked_config(path: str | Path) -> Config:
    """Load a config and check it against its devices' profiles; ConfigError names it all."""
    config = load_config(path)
    problems = check_profiles(config)
    if problems:
        raise ConfigError(problems)
    return config


def load_or_report(path: str | Path) -> Config | None:
    """For commands: the checked config, or None after printing every problem to stderr."""
    try:
        return load_checked_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


@dataclass(frozen=True, slots=True)
class _ProfileFacts:
    name: str
    points: frozenset[str]
    writable: frozenset[str]


def _profile_facts(config: DeviceConfig) -> _ProfileFacts:
    """What a device's profile offers, whatever its protocol (ValueError if unusable)."""
    facts = device_facts(config)
    name = config.profile or f"redfish {facts.kind}"
    return _ProfileFacts(name, frozenset(facts.point_names), frozenset(facts.writable))


def check_profiles(config: Config) -> list[str]:
    """Problems a config has only in the light of its devices' profiles.

    A loop that reads a point its device does not have, or writes one it cannot write, is
    caught here, before the daemon starts, rather than as a failsafe at 3 a.m.
    """
    where = str(config.path) if config.path else "<config>"
    problems: list[str] = []
    for rack in config.racks.values():
        facts: dict[str, _ProfileFacts] = {}
        for device in rack.devices.values():
            try:
                facts[device.id] = _profile_facts(device)
            except (ValueError, OSError) as exc:  # both profile loaders raise ValueErrors
                problems.append(f"{where}: racks.{rack.id}.devices.{device.id}.profile: {exc}")
        for loop in rack.loops.values():
            key = f"{where}: racks.{rack.id}.loops.{loop.id}"
            for ref in loop.measurement.refs:
                known = facts.get(ref.device)
                if known is not None and ref.point not in known.points:
                    problems.append(
                        f"{key}.measurement: profile {known.name!r} of {ref.device}"
                        f" has no point {ref.point!r}"
                    )
            known = facts.get(loop.actuator.device)
            if known is not None and loop.actuator.point not in known.writable:
                problems.append(
                    f"{key}.actuator: {loop.actuator.point!r} is not writable"
                    f" in profile {known.name!r}"
                )
        for ref in rack.safety.temperature_limits:
            known = facts.get(ref.device)
            if known is not None and ref.point not in known.points:
                problems.append(
                    f"{where}: racks.{rack.id}.safety.temperature_limits: profile"
                    f" {known.name!r} of {ref.device} has no point {ref.point!r}"
                )
        if rack.budget_point is not None:
            known = facts.get(rack.budget_point.device)
            if known is not None and rack.budget_point.point not in known.points:
                problems.append(
                    f"{where}: racks.{rack.id}.budget_point: profile {known.name!r}"
                    f" has no point {rack.budget_point.point!r}"
                )
    return problems
