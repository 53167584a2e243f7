"""A config checked against its devices' profiles and built as the daemon would build it.

What `coolctl check-config` runs, and what the daemon runs before it starts or reloads."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from coolctl.config import (
    Auth,
    Config,
    ConfigError,
    DeviceConfig,
    LoopConfig,
    MqttDeviceConfig,
    RackConfig,
    RedfishDeviceConfig,
    load_config,
)
from coolctl.drivers.mqtt import MqttDevice, MqttSettings
from coolctl.drivers.mqtt_profile import load_mqtt_profile
from coolctl.drivers.redfish import RedfishSettings
from coolctl.rack.bounds import config_problems, loop_problems, quantity_of
from coolctl.rack.facts import DeviceFactsRecord, device_facts, setpoint_bounds
from coolctl.rack.setpoints import needs_writable_actuator


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
    name = f"redfish {facts.kind}" if isinstance(config, RedfishDeviceConfig) else config.profile
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
            needed = needs_writable_actuator(rack, loop)
            if needed and known is not None and loop.actuator.point not in known.writable:
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


def check_rack_builds(where: str, rack: RackConfig) -> list[str]:
    """Problems Daemon() would raise on for this rack, each naming its key: the loops against
    their actuators' ranges in the profiles, the control stack built as the daemon builds it,
    the MQTT topics and Redfish settings of the devices (secrets are not read)."""
    from coolctl.rack.controllers import build_rack_control

    key = f"{where}: racks.{rack.id}"
    try:
        facts = {device.id: device_facts(device) for device in rack.devices.values()}
    except (ValueError, OSError):
        return []  # a profile that does not load: check_profiles says so
    problems: list[str] = []
    for loop in rack.loops.values():
        problems.extend(_check_loop(f"{key}.loops.{loop.id}", loop, facts))
    problems.extend(_check_safe_bounds(key, rack, facts))
    writable = all(  # if not, check_profiles says so
        loop.actuator.point in facts[loop.actuator.device].writable
        for loop in rack.loops.values()
        if needs_writable_actuator(rack, loop)
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
        MqttSettings(host=mqtt.host, port=mqtt.port, client_id=f"coolctl-{config.site.name}")
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


def _check_safe_bounds(
    key: str, rack: RackConfig, facts: Mapping[str, DeviceFactsRecord]
) -> list[str]:
    """Implausible limits, and loop setpoints (or explicit setpoint bounds) outside the safe
    bounds that operators' overrides are held to (coolctl.rack.bounds)."""
    problems = config_problems(key, rack)
    for loop in rack.loops.values():
        point = loop.measurement.minuend.point
        quantity = quantity_of(point)
        if quantity is None or loop.measurement.subtrahend is not None:
            continue
        low, high = setpoint_bounds(replace(loop, setpoint_min=None, setpoint_max=None), facts)
        problems.extend(
            loop_problems(
                f"{key}.loops.{loop.id}",
                rack,
                quantity,
                loop.setpoint,
                (loop.setpoint_min, loop.setpoint_max),
                (
                    loop.setpoint_min if loop.setpoint_min is not None else low,
                    loop.setpoint_max if loop.setpoint_max is not None else high,
                ),
            )
        )
    return problems


def _check_device(key: str, rack: str, device: DeviceConfig) -> list[str]:
    try:
        if isinstance(device, MqttDeviceConfig):
            profile = load_mqtt_profile(device.profile)
            MqttDevice(rack, device.id, profile, device.topic_prefix, "check-config")
        elif isinstance(device, RedfishDeviceConfig):
            redfish = device
            RedfishSettings(
                url=redfish.url,
                username=redfish.username,
                # not read here (the daemon may run as another user): any will do
                password="" if redfish.auth != Auth.NONE else None,
                auth=redfish.auth.literal,
                ca_file=redfish.ca_file,
                verify_tls=redfish.verify_tls,
                timeout_s=device.timeout_s,
                max_in_flight=redfish.max_in_flight,
            )
    except (ValueError, OSError) as exc:
        return [f"{key}: {exc}"]
    return []
