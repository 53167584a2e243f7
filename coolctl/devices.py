"""Builds a driver client for each configured device and says what it can be told to do."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from coolctl.config import (
    Config,
    ConfigError,
    DeviceConfig,
    DeviceRef,
    LoopConfig,
    RackConfig,
    load_config,
)
from coolctl.drivers.modbus import ModbusDevice
from coolctl.drivers.modbus_profile import ModbusProfile, RegisterPoint, load_profile
from coolctl.drivers.mqtt import MqttConnection, MqttDevice, MqttSettings
from coolctl.drivers.mqtt_profile import load_mqtt_profile
from coolctl.drivers.redfish import RedfishDevice, RedfishSettings, kind_points
from coolctl.model import CANONICAL_POINTS, Quality, Reading, Unit
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


@dataclass(frozen=True, slots=True)
class DeviceFactsRecord:
    """What a device offers, from its profile (or, for Redfish, its kind): no connection."""

    writable: Mapping[str, WritableSpec]
    point_names: tuple[str, ...]
    kind: str
    # What each point can read, from its profile: its plausibility range (min/max), else what
    # its register can hold; points the profile gives no range for are left out
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)


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
        ranges = {
            p.name: (
                p.min if p.min is not None else -math.inf,
                p.max if p.max is not None else math.inf,
            )
            for p in mqtt_profile.points
            if p.min is not None or p.max is not None
        }
        return DeviceFactsRecord({}, names, mqtt_profile.kind, ranges)
    profile = load_profile(config.profile)
    names = tuple(p.name for p in profile.points)
    ranges = {p.name: register_range(p) for p in profile.points}
    return DeviceFactsRecord(writable_points(profile), names, profile.kind, ranges)


_RAW_RANGES: Mapping[str, tuple[float, float]] = {
    "bool": (0.0, 1.0),
    "int16": (-(2.0**15), 2.0**15 - 1),
    "uint16": (0.0, 2.0**16 - 1),
    "int32": (-(2.0**31), 2.0**31 - 1),
    "uint32": (0.0, 2.0**32 - 1),
    "float32": (-3.4028234663852886e38, 3.4028234663852886e38),
}


def register_range(point: RegisterPoint) -> tuple[float, float]:
    """The values a Modbus point can read: its profile's min/max, else what its register holds
    (raw range × scale + offset)."""
    if point.is_bit:
        low, high = 0.0, 1.0
    else:
        raw_low, raw_high = _RAW_RANGES.get(point.data_type, (-math.inf, math.inf))
        ends = (raw_low * point.scale + point.offset, raw_high * point.scale + point.offset)
        low, high = min(ends), max(ends)
    return (
        point.min if point.min is not None else low,
        point.max if point.max is not None else high,
    )


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
    return DeviceHandle(
        rack, config, client, facts.writable, facts.point_names, facts.kind, facts.ranges
    )


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
    problems: list[str] = check_config_builds(config)
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
        if len(facts) == len(rack.devices):  # a profile that does not load is reported above
            problems.extend(check_rack_builds(where, rack))
    return problems


# --------------------------------------------------------------------------------------------
# What the daemon refuses, found before it starts: `coolctl check-config`, `coolctl run` and a
# reload all check this, so that no config that passes them makes Daemon() raise.

PHYSICAL_RANGES: Mapping[Unit, tuple[float, float]] = {
    Unit.CELSIUS: (-273.15, math.inf),
    Unit.PASCAL: (-math.inf, math.inf),  # a differential pressure may be negative
    Unit.WATT: (0.0, math.inf),
    Unit.JOULE: (0.0, math.inf),
    Unit.LITRE: (0.0, math.inf),
    Unit.LITRE_PER_MINUTE: (0.0, math.inf),
    Unit.RATIO: (0.0, 1.0),
    Unit.BOOLEAN: (0.0, 1.0),
    Unit.SECOND: (0.0, math.inf),
}
"""What a value of each unit can physically be, whatever the device."""


class PointRanges(Protocol):
    """What the setpoint bounds need of a device: its points' ranges (DeviceHandle and
    DeviceFactsRecord have them)."""

    @property
    def ranges(self) -> Mapping[str, tuple[float, float]]: ...


def point_range(ref: DeviceRef, devices: Mapping[str, PointRanges]) -> tuple[float, float]:
    """What a point can read: its unit's physical range, narrowed by its profile's."""
    spec = CANONICAL_POINTS.get(ref.point)
    unbounded = (-math.inf, math.inf)
    low, high = PHYSICAL_RANGES.get(spec.unit, unbounded) if spec else unbounded
    device = devices.get(ref.device)
    if device is not None and ref.point in device.ranges:
        profile_low, profile_high = device.ranges[ref.point]
        low, high = max(low, profile_low), min(high, profile_high)
    return low, high


def setpoint_bounds(loop: LoopConfig, devices: Mapping[str, PointRanges]) -> tuple[float, float]:
    """The range a loop's setpoint (and an operator's override of it) must lie in.

    `setpoint_min`/`setpoint_max` from the config where given; otherwise what the measurement
    can read (for a difference, such as a coolant ΔT, the difference of the two ranges): a
    setpoint the sensor can never show is one the loop can never reach, and it would drive its
    actuator to the end stop. A side nothing bounds is infinite (only finite values pass).
    """
    measurement = loop.measurement
    low, high = point_range(measurement.minuend, devices)
    if measurement.subtrahend is not None:
        sub_low, sub_high = point_range(measurement.subtrahend, devices)
        low, high = low - sub_high, high - sub_low
        low = -math.inf if math.isnan(low) else low
        high = math.inf if math.isnan(high) else high
    return (
        loop.setpoint_min if loop.setpoint_min is not None else low,
        loop.setpoint_max if loop.setpoint_max is not None else high,
    )


def check_rack_builds(where: str, rack: RackConfig) -> list[str]:
    """Problems Daemon() would raise on for this rack, each naming its key: the loops against
    their actuators' ranges in the profiles, the control stack built as the daemon builds it,
    the MQTT topics and Redfish settings of the devices (secrets are not read)."""
    from coolctl.control_stack import build_rack_control  # it imports this module

    key = f"{where}: racks.{rack.id}"
    try:
        facts = {device.id: device_facts(device) for device in rack.devices.values()}
    except (ValueError, OSError):
        return []  # a profile that does not load: check_profiles says so
    problems: list[str] = []
    for loop in rack.loops.values():
        problems.extend(_check_loop(f"{key}.loops.{loop.id}", loop, facts))
    writable = all(  # if not, check_profiles says so
        loop.actuator.point in facts[loop.actuator.device].writable for loop in rack.loops.values()
    )
    if not problems and writable:
        try:
            build_rack_control(rack, facts)
        except ValueError as exc:
            problems.append(f"{key}: the daemon cannot build this rack's control: {exc}")
    for device in rack.devices.values():
        problems.extend(_check_device(f"{key}.devices.{device.id}", rack.id, device))
    return problems


def check_config_builds(config: Config) -> list[str]:
    """The parts of Config that Daemon() checks outside the racks: the MQTT connection."""
    where = str(config.path) if config.path else "<config>"
    mqtt = config.mqtt
    if mqtt is None:
        return []
    try:
        MqttSettings(host=mqtt.host, port=mqtt.port, client_id=f"coolctl-{config.site}")
    except ValueError as exc:
        return [f"{where}: mqtt: {exc}"]
    return []


def _check_loop(key: str, loop: LoopConfig, facts: Mapping[str, DeviceFactsRecord]) -> list[str]:
    problems = []
    device = facts.get(loop.actuator.device)
    spec = device.writable.get(loop.actuator.point) if device is not None else None
    if spec is not None:  # an actuator that is not writable is reported by check_profiles
        low, high = spec.minimum, spec.maximum
        shown = f"{low:g}..{high:g}"
        if not (math.isfinite(low) and math.isfinite(high)):
            problems.append(
                f"{key}.actuator: the profile gives {loop.actuator} no finite range ({shown}):"
                " a writable point needs min and max"
            )
        elif loop.output_max < low or loop.output_min > high:
            problems.append(
                f"{key}: output_min..output_max ({loop.output_min:g}..{loop.output_max:g}) lies"
                f" outside the range of {loop.actuator} in its profile ({shown})"
            )
        for name, value in (
            ("failsafe_output", loop.failsafe_output),
            ("shutdown_output", loop.shutdown_output),
        ):
            if value is not None and not low <= value <= high:
                problems.append(
                    f"{key}.{name}: {value:g} is outside the range of {loop.actuator}"
                    f" in its profile ({shown})"
                )
    low, high = setpoint_bounds(loop, facts)
    if not low <= loop.setpoint <= high:
        problems.append(
            f"{key}.setpoint: {loop.setpoint:g} is outside what {loop.measurement} can read"
            f" ({low:g}..{high:g}); check the setpoint, or set setpoint_min/setpoint_max"
        )
    return problems


def _check_device(key: str, rack: str, device: DeviceConfig) -> list[str]:
    try:
        if device.driver == "mqtt":
            profile = load_mqtt_profile(device.profile)
            MqttDevice(rack, device.id, profile, device.topic_prefix, "check-config")
        elif device.redfish is not None:
            redfish = device.redfish
            RedfishSettings(
                url=redfish.url,
                username=redfish.username,
                # not read here (the daemon may run as another user): any will do
                password="" if redfish.auth != "none" else None,
                auth=redfish.auth,
                ca_file=redfish.ca_file,
                verify_tls=redfish.verify_tls,
                timeout_s=device.timeout_s,
                max_in_flight=redfish.max_in_flight,
            )
    except (ValueError, OSError) as exc:
        return [f"{key}: {exc}"]
    return []
