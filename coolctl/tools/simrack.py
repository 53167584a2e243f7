"""Wires a daemon config to the simulated rack: which devices to simulate, and where they are.

The simulators know nothing of coolctl's config (they import only the vocabulary); this module
turns a config into simulator specs, and the simulators' bound ports back into a config.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from coolctl.config import (
    Config,
    DeviceKind,
    ModbusDeviceConfig,
    MqttDeviceConfig,
    RackConfig,
    RedfishDeviceConfig,
    SnmpDeviceConfig,
    parse_host_port,
)
from coolctl.config.enums import SnmpVersion
from coolctl.drivers.modbus_profile import load_profile
from coolctl.simulators.live import Service, SimDeviceSpec, SimRackSpec

SIMULATED_MQTT_PROFILES = ("sim-mqtt-sensors",)
"""MQTT profiles whose topics the simulated sensors publish."""


def sim_specs(
    config: Config,
    *,
    port: int | None = None,
    load: float = 0.6,
    plant: Mapping[str, Any] | None = None,
    power_shelves: int = 0,
) -> list[SimRackSpec]:
    """A simulated rack per configured rack, with a device for every simulatable profile.

    `port=0` lets each simulated device pick a free port; None keeps the configured ports.
    `plant` overrides plant parameters (PlantParams names) for every rack. `power_shelves` > 0
    serves each Redfish PDU as that many power shelves.
    """
    specs = []
    for rack in config.racks.values():
        devices = list(_sim_devices(rack, port, power_shelves))
        if devices:
            specs.append(SimRackSpec(rack.id, devices, plant=dict(plant or {}), load=load))
    return specs


def _sim_devices(
    rack: RackConfig, port: int | None, power_shelves: int = 0
) -> Iterable[SimDeviceSpec]:
    servers = 0  # a rack's BMCs stand for plant servers 0, 1, 2, … in config order
    for device in rack.devices.values():
        if isinstance(device, RedfishDeviceConfig):
            kind = device.kind
            yield SimDeviceSpec(
                device=device.id,
                kind=kind.literal,
                protocol="redfish",
                server=servers if kind == DeviceKind.SERVER else 0,
                username=device.username or "admin",
                port=0 if port is not None else _url_port(device.url),
                power_shelves=power_shelves if kind == DeviceKind.PDU else 0,
            )
            servers += kind == DeviceKind.SERVER
            continue
        if isinstance(device, SnmpDeviceConfig):
            yield SimDeviceSpec(
                device=device.id,
                kind="pdu",
                protocol="snmp",
                register_map=device.profile,
                share=0.5 if device.feed is not None else 1.0,  # two feeds share each server
                host=device.address,
                port=device.port if port is None else port,
            )
            continue
        if isinstance(device, MqttDeviceConfig):
            if device.profile in SIMULATED_MQTT_PROFILES:
                prefix = device.topic_prefix or "coolctl-sim"
                yield SimDeviceSpec(device=device.id, kind="sensor", topic_prefix=prefix)
            continue
        profile = load_profile(device.profile)
        role = _shelf_role(point.name for point in profile.points)
        if profile.kind not in ("cdu", "pdu") and not role:
            continue
        yield SimDeviceSpec(
            device=device.id,
            kind="pdu" if role else profile.kind,
            shelf_role=role,
            register_map=device.profile,
            unit_id=device.unit,
            host=device.address or "127.0.0.1",  # an RTU device has none: served on loopback
            port=device.port if port is None else port,
        )


def _shelf_role(points: Iterable[str]) -> str:
    """A Modbus profile with a PSU's or a BBU's points is served as a unit of the rack's
    simulated power shelf (its PSUs share the rack's power; its BBUs carry it on mains loss)."""
    names = set(points)
    return "psu" if "psu_ok" in names else "bbu" if "bbu_discharging" in names else ""


def with_services(
    config: Config, services: Iterable[Service], secrets: Path | None = None
) -> Config:
    """The config pointed at the simulated devices: each Modbus device's address and port, each
    Redfish device's URL, CA and account (its password written to a file in `secrets`)."""
    racks = dict(config.racks)
    for service in services:
        if service.protocol not in ("modbus", "redfish", "snmp"):
            continue
        rack = racks[service.rack]
        device = rack.devices[service.device]
        if isinstance(device, ModbusDeviceConfig):
            host, _, port = service.address.rpartition(":")
            device = replace(device, address=host, port=int(port))
        elif isinstance(device, RedfishDeviceConfig):
            device = _redfish_pointed(device, service, secrets)
        elif isinstance(device, SnmpDeviceConfig):
            device = _snmp_pointed(device, service, secrets)
        racks[service.rack] = replace(rack, devices={**rack.devices, service.device: device})
    return replace(config, racks=racks)


def _redfish_pointed(
    device: RedfishDeviceConfig, service: Service, secrets: Path | None
) -> RedfishDeviceConfig:
    if secrets is None:
        raise ValueError("simulated Redfish devices need a directory for their password files")
    password_file = secrets / f"{service.rack}-{service.device}.password"
    password_file.touch(mode=0o600)
    password_file.write_text(service.password, "utf-8")
    return replace(
        device,
        url=service.url,
        ca_file=Path(service.ca),
        username=service.username,
        password_file=password_file,
        password_credential=None,
        verify_tls=True,
    )


def _snmp_pointed(
    device: SnmpDeviceConfig, service: Service, secrets: Path | None
) -> SnmpDeviceConfig:
    """The simulated PDU answers v2c with its community, written to a file in `secrets`."""
    if secrets is None:
        raise ValueError("simulated SNMP devices need a directory for their community files")
    community_file = secrets / f"{service.rack}-{service.device}.community"
    community_file.touch(mode=0o600)
    community_file.write_text(service.password, "utf-8")
    host, _, port = service.address.rpartition(":")
    return replace(
        device,
        address=host,
        port=int(port),
        version=SnmpVersion.V2C,
        community_file=community_file,
        community_credential=None,
    )


def _url_port(url: str) -> int:
    port = urlsplit(url).port
    return port if port is not None else 443


def with_broker(config: Config, broker: str) -> Config:
    """The config with its [mqtt] broker set to `broker` (host:port)."""
    host, port = parse_host_port(broker)
    if config.mqtt is None:
        raise ValueError("the config has no [mqtt] table")
    return replace(config, mqtt=replace(config.mqtt, broker=(host, port)))


def without_mqtt(config: Config) -> Config:
    """The config without its MQTT devices and broker (when no broker can be had)."""
    racks = {}
    for rack_id, rack in config.racks.items():
        devices = {k: d for k, d in rack.devices.items() if not isinstance(d, MqttDeviceConfig)}
        limits = {
            ref: limit
            for ref, limit in rack.safety.temperature_limits.items()
            if ref.device in devices
        }
        point = rack.budget_point
        budget_point = point if point is not None and point.device in devices else None
        racks[rack_id] = replace(
            rack,
            devices=devices,
            safety=replace(rack.safety, temperature_limits=limits),
            budget_point=budget_point,
        )
    return replace(config, racks=racks, mqtt=None)


def control_url_file() -> Path:
    """Where a running simulation leaves the URL of its fault-injection endpoint."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "coolctl-sim.url"
    # Not a file straight under /tmp, where another user could plant a symlink: a directory
    # of this user's own (checked and made private by control_server.private_directory).
    return Path(f"/tmp/coolctl-sim-{os.getuid()}") / "coolctl-sim.url"
