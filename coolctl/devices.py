"""Builds a driver client for each configured device and says what it can be told to do."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from coolctl.config import Config, ConfigError, DeviceConfig, load_config
from coolctl.drivers.modbus import DeviceStats, ModbusDevice
from coolctl.drivers.modbus_profile import ModbusProfile, ProfileError, load_profile
from coolctl.model import Reading


@dataclass(frozen=True, slots=True)
class WritableSpec:
    """What a device accepts for one writable point, from its profile."""

    minimum: float
    maximum: float
    resolution: float  # one count of the register, in engineering units


class DeviceClient(Protocol):
    """What the runtime needs of any driver's device object."""

    stats: DeviceStats

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


def open_device(rack: str, config: DeviceConfig) -> DeviceHandle:
    """Build the client for one device (no I/O yet: the first poll connects)."""
    profile = load_profile(config.profile)
    client = ModbusDevice(
        rack=rack,
        device=config.id,
        host=config.address,
        port=config.port,
        unit_id=config.unit,
        profile=profile,
        timeout_s=config.timeout_s,
    )
    return DeviceHandle(
        rack,
        config,
        client,
        writable_points(profile),
        tuple(p.name for p in profile.points),
        profile.kind,
    )


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


def check_profiles(config: Config) -> list[str]:
    """Problems a config has only in the light of its devices' profiles.

    A loop that reads a point its device does not have, or writes one it cannot write, is
    caught here, before the daemon starts, rather than as a failsafe at 3 a.m.
    """
    where = str(config.path) if config.path else "<config>"
    problems: list[str] = []
    for rack in config.racks.values():
        profiles: dict[str, ModbusProfile] = {}
        for device in rack.devices.values():
            try:
                profiles[device.id] = load_profile(device.profile)
            except (ProfileError, OSError) as exc:
                problems.append(f"{where}: racks.{rack.id}.devices.{device.id}.profile: {exc}")
        for loop in rack.loops.values():
            key = f"{where}: racks.{rack.id}.loops.{loop.id}"
            for ref in loop.measurement.refs:
                profile = profiles.get(ref.device)
                if profile is not None and ref.point not in {p.name for p in profile.points}:
                    problems.append(
                        f"{key}.measurement: profile {profile.name!r} of {ref.device}"
                        f" has no point {ref.point!r}"
                    )
            profile = profiles.get(loop.actuator.device)
            if profile is not None and loop.actuator.point not in writable_points(profile):
                problems.append(
                    f"{key}.actuator: {loop.actuator.point!r} is not writable"
                    f" in profile {profile.name!r}"
                )
    return problems
