"""Which Redfish service each kind of simulated device is: a BMC, a CDU or a rack PDU.

`build_device` is what `LiveSimulation` calls: it names the device (its identity seeds UUIDs
and serial numbers, so a device keeps them from run to run) and builds its resource tree.
"""

from __future__ import annotations

from collections.abc import Mapping

from coolctl.simulators.plant import RackPlant
from coolctl.simulators.redfish_bmc import build_bmc
from coolctl.simulators.redfish_cdu import build_cdu
from coolctl.simulators.redfish_chassis import PointStore
from coolctl.simulators.redfish_pdu import build_pdu
from coolctl.simulators.redfish_power_shelf import PowerShelves, build_power_shelves
from coolctl.simulators.redfish_service import Identity, RedfishService

__all__ = ["REDFISH_KINDS", "build_device", "build_power_shelf_service"]

# kind -> (product, model, manager id, manager type)
_NAMEPLATES: Mapping[str, tuple[str, str, str, str]] = {
    "server": ("coolctl simulated BMC", "SIM-TRAY liquid-cooled compute tray", "BMC", "BMC"),
    "cdu": (
        "coolctl simulated CDU",
        "SIM-CDU in-rack coolant distribution unit",
        "CDU",
        "ManagementController",
    ),
    "pdu": (
        "coolctl simulated rack PDU",
        "SIM-PDU three-phase rack PDU",
        "PDU",
        "ManagementController",
    ),
}
REDFISH_KINDS = tuple(_NAMEPLATES)


def build_device(
    kind: str,
    store: PointStore,
    plant: RackPlant,
    *,
    name: str,
    username: str,
    password: str,
    server_index: int = 0,
    legacy_power: bool = False,
    sensing_interval_s: float = 0.1,
) -> RedfishService:
    """The Redfish service of one simulated device of `kind`, named `rack/device`."""
    if kind not in _NAMEPLATES:
        raise ValueError(f"no Redfish service for a {kind!r}; kinds: {', '.join(REDFISH_KINDS)}")
    product, model, manager_id, manager_type = _NAMEPLATES[kind]
    identity = Identity(name, product, model, manager_id, manager_type)
    service = RedfishService(identity, username, password, sensing_interval_s=sensing_interval_s)
    if kind == "server":
        build_bmc(
            service, store, plant.params, server_index=server_index, legacy_power=legacy_power
        )
    elif kind == "cdu":
        build_cdu(service, store, plant.params)
    else:
        build_pdu(service, store, plant)
    return service


def build_power_shelf_service(
    store: PointStore,
    plant: RackPlant,
    *,
    name: str,
    username: str,
    password: str,
    shelves: int,
    sensing_interval_s: float = 0.1,
) -> tuple[RedfishService, PowerShelves]:
    """A rack's power shelves as one Redfish service (what an ORv3 rack's power management
    controller serves), and the shelves' state for injecting faults."""
    identity = Identity(
        name,
        "coolctl simulated power shelves",
        "SIM-ORV3 power shelf",
        "PMC",
        "ManagementController",
    )
    service = RedfishService(identity, username, password, sensing_interval_s=sensing_interval_s)
    return service, build_power_shelves(service, store, plant, shelves)
