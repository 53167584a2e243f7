"""What each configured device offers, from its profile: points, writable ranges, kind.

No connection is opened: the control stacks, the config checks and the offline runner build
from these facts the same way the daemon does."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from coolctl.config import (
    DeviceConfig,
    DeviceKind,
    DeviceRef,
    LoopConfig,
    MqttDeviceConfig,
    RedfishDeviceConfig,
    SnmpDeviceConfig,
)
from coolctl.drivers.modbus_profile import ModbusProfile, RegisterPoint, load_profile
from coolctl.drivers.mqtt_profile import load_mqtt_profile
from coolctl.drivers.redfish import kind_points
from coolctl.drivers.snmp_profile import load_snmp_profile
from coolctl.model import CANONICAL_POINTS, POINT_STATES, Unit


@dataclass(frozen=True, slots=True)
class WritableSpec:
    """What a device accepts for one writable point, from its profile."""

    minimum: float
    maximum: float
    resolution: float  # one count of the register, in engineering units
    # an enumerated point (cdu_control_mode): the canonical codes the device has a raw code
    # for; None for a number
    codes: frozenset[int] | None = None

    def takes(self, value: float) -> bool:
        """Whether the device can be written `value`: within the range, and for an enumerated
        point one of its states."""
        within = self.minimum <= value <= self.maximum
        return within and (self.codes is None or value in self.codes)


@dataclass(frozen=True, slots=True)
class DeviceFactsRecord:
    """What a device offers, from its profile (or, for Redfish, its kind): no connection."""

    writable: Mapping[str, WritableSpec]
    point_names: tuple[str, ...]
    kind: str
    # What each point can read, from its profile: its plausibility range (min/max), else what
    # its register can hold; points the profile gives no range for are left out
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)


REDFISH_CDU_WRITABLE: Mapping[str, WritableSpec] = {
    "pump_speed_command": WritableSpec(0.0, 1.0, 0.001),
    "valve_command": WritableSpec(0.0, 1.0, 0.001),
    # A CDU that runs its own loops (setpoint mode). What the service really accepts is its
    # Controls' AllowableMin/AllowableMax, checked by the driver at each write; these are the
    # physical bounds coolctl holds commands to before that.
    "supply_temperature_setpoint": WritableSpec(0.0, 100.0, 0.1),
    "flow_setpoint": WritableSpec(0.0, 10_000.0, 0.1),
    "differential_pressure_setpoint": WritableSpec(0.0, 1.0e6, 100.0),
    "cdu_run_command": WritableSpec(0.0, 1.0, 1.0),  # CoolingUnit.SetMode
    "isolation_valve_command": WritableSpec(0.0, 1.0, 1.0),  # CoolantConnector.ValveControl
}
"""What coolctl may write to a Redfish CDU, and within what."""


def device_facts(config: DeviceConfig) -> DeviceFactsRecord:
    """A device's points, writable points with their ranges, and kind, without opening it."""
    if isinstance(config, RedfishDeviceConfig):
        writable: dict[str, WritableSpec] = {}
        if config.kind == DeviceKind.SERVER:
            writable["power_limit"] = WritableSpec(config.cap_min_w, config.cap_max_w, 1.0)
            # ComputerSystem.Reset: 0 GracefulShutdown, 1 On (written on a leak, if configured)
            writable["server_power_command"] = WritableSpec(0.0, 1.0, 1.0)
        elif config.kind == DeviceKind.CDU:
            writable.update(REDFISH_CDU_WRITABLE)
        return DeviceFactsRecord(writable, kind_points(config.kind.literal), config.kind)
    if isinstance(config, MqttDeviceConfig):
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
    if isinstance(config, SnmpDeviceConfig):  # read-only; table points are found by walking
        snmp = load_snmp_profile(config.profile)
        return DeviceFactsRecord({}, snmp.point_names, snmp.kind)
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


def writable_points(profile: ModbusProfile) -> dict[str, WritableSpec]:
    specs = {}
    for point in profile.points:
        if point.writable:
            codes = _state_codes(point)
            low = point.min if point.min is not None else float("-inf")
            high = point.max if point.max is not None else float("inf")
            if codes:  # an enumerated point is bounded by its states where min/max are not given
                low = low if point.min is not None else float(min(codes))
                high = high if point.max is not None else float(max(codes))
            resolution = abs(point.scale) if point.data_type != "bool" else 1.0
            specs[point.name] = WritableSpec(low, high, resolution, codes)
    return specs


def _state_codes(point: RegisterPoint) -> frozenset[int] | None:
    """The canonical codes an enumerated point can take: its profile's `states`, else every
    state of its enum (the device uses the canonical codes); None for a number."""
    if point.states:
        return frozenset(code for _, code in point.states)
    enum_type = POINT_STATES.get(point.name)
    return None if enum_type is None else frozenset(member.value for member in enum_type)


PHYSICAL_RANGES: Mapping[Unit, tuple[float, float]] = {
    Unit.CELSIUS: (-273.15, math.inf),
    Unit.PASCAL: (-math.inf, math.inf),  # a differential pressure may be negative
    Unit.WATT: (0.0, math.inf),
    Unit.JOULE: (0.0, math.inf),
    Unit.AMPERE: (0.0, math.inf),
    Unit.VOLT: (0.0, math.inf),
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
