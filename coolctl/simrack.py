"""Wires a daemon config to the simulated rack: which devices to simulate, and where they are.

The simulators know nothing of coolctl's config (they import only the vocabulary); this module
turns a config into simulator specs, and the simulators' bound ports back into a config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from coolctl.config import Config, RackConfig
from coolctl.drivers.modbus_profile import load_profile
from coolctl.simulators.live import Service, SimDeviceSpec, SimRackSpec


def sim_specs(
    config: Config,
    *,
    port: int | None = None,
    load: float = 0.6,
    plant: Mapping[str, Any] | None = None,
) -> list[SimRackSpec]:
    """A simulated rack per configured rack, with a device for every simulatable profile.

    `port=0` lets each simulated device pick a free port; None keeps the configured ports.
    `plant` overrides plant parameters (PlantParams names) for every rack.
    """
    specs = []
    for rack in config.racks.values():
        devices = list(_sim_devices(rack, port))
        if devices:
            specs.append(SimRackSpec(rack.id, devices, plant=dict(plant or {}), load=load))
    return specs


def _sim_devices(rack: RackConfig, port: int | None) -> Iterable[SimDeviceSpec]:
    for device in rack.devices.values():
        profile = load_profile(device.profile)
        if profile.kind not in ("cdu", "pdu"):
            continue
        yield SimDeviceSpec(
            device=device.id,
            kind=profile.kind,
            register_map=device.profile,
            unit_id=device.unit,
            host=device.address,
            port=device.port if port is None else port,
        )


def with_services(config: Config, services: Iterable[Service]) -> Config:
    """The config with each simulated device's address and port set to where it listens."""
    racks = dict(config.racks)
    for service in services:
        rack = racks[service.rack]
        host, _, port = service.address.rpartition(":")
        device = replace(rack.devices[service.device], address=host, port=int(port))
        racks[service.rack] = replace(rack, devices={**rack.devices, service.device: device})
    return replace(config, racks=racks)
