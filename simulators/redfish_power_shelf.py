"""The rack's power shelves as a Redfish service, shaped as DMTF models them (DSP2046).

`PowerEquipment/PowerShelves/{n}` (PowerDistribution, EquipmentType PowerShelf) with `Mains`,
`PowerSupplies` and `Metrics`, each backed by a chassis `Chassis/Shelf{n}` whose
`PowerSubsystem` holds the power supplies (with their `Metrics`) and the battery backup units
(`Batteries`, with theirs). An OCP ORv3 rack draws its IT power from such shelves rather than
from a rack PDU: here the plant's rack power (its PDU meter) is shared evenly by the shelves,
and within a shelf by the power supplies that are working, each converting at a fixed
efficiency; the shelf's input is its mains reading.

Faults a test can inject (`PowerShelves.fail_psu`, `.start_discharge`): a power supply that
fails (Health Critical, its share taken by the others) and a mains loss on a shelf, when its
BBUs discharge and carry the load, their charge falling at the shelf's output power.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from coolctl.simulators.plant import RackPlant
from coolctl.simulators.redfish_chassis import ChassisParts, PointStore
from coolctl.simulators.redfish_manager import add_management
from coolctl.simulators.redfish_resources import Json, Readings, Resource, head, link, status
from coolctl.simulators.redfish_sensors import sensor_excerpt
from coolctl.simulators.redfish_service import ROOT, RedfishService

__all__ = ["POWER_SHELVES", "PowerShelves", "build_power_shelves"]

POWER_EQUIPMENT = f"{ROOT}/PowerEquipment"
POWER_SHELVES = f"{POWER_EQUIPMENT}/PowerShelves"
PSUS_PER_SHELF = 6  # an ORv3 power shelf: six 3 kW-class PSU modules
BBUS_PER_SHELF = 1
EFFICIENCY = 0.975
BBU_CAPACITY_WH = 3600.0
MAINS_RATED_AMPS = 32.0
_J_PER_KWH = 3.6e6


@dataclass(slots=True)
class _Bbu:
    charge_wh: float = BBU_CAPACITY_WH
    discharging_since: float | None = None  # monotonic seconds
    watts: float = 0.0


@dataclass(slots=True)
class _Shelf:
    number: int
    failed_psus: set[int] = field(default_factory=set)
    bbus: list[_Bbu] = field(default_factory=lambda: [_Bbu() for _ in range(BBUS_PER_SHELF)])

    @property
    def uri(self) -> str:
        return f"{POWER_SHELVES}/{self.number}"

    @property
    def chassis(self) -> str:
        return f"{ROOT}/Chassis/Shelf{self.number}"

    @property
    def on_battery(self) -> bool:
        return any(b.discharging_since is not None for b in self.bbus)


class PowerShelves:
    """The shelves' electrical state, from the plant, and the faults injected into it."""

    def __init__(self, store: PointStore, shelves: int) -> None:
        if shelves < 1:
            raise ValueError("a power-shelf service needs at least one shelf")
        self.store = store
        self.shelves = [_Shelf(n) for n in range(1, shelves + 1)]

    def fail_psu(self, shelf: int, psu: int, failed: bool = True) -> None:
        """PSU `psu` (1-based) of shelf `shelf` stops delivering, or comes back."""
        target = self.shelves[shelf - 1].failed_psus
        (target.add if failed else target.discard)(psu)

    def start_discharge(self, shelf: int, discharging: bool = True) -> None:
        """Mains lost on a shelf: its BBUs carry its load (or, False, mains is back)."""
        now = time.monotonic()
        for bbu in self.shelves[shelf - 1].bbus:
            self._drain(bbu, now)
            bbu.discharging_since = now if discharging else None

    def output_w(self, r: Readings, shelf: _Shelf) -> float:
        """What the shelf delivers to the rack's bus bar: its share of the rack's power."""
        return r.value("power") / len(self.shelves)

    def input_w(self, r: Readings, shelf: _Shelf) -> float:
        """What the shelf draws from mains: its output over the PSUs' efficiency, none while
        its BBUs carry it."""
        return 0.0 if shelf.on_battery else self.output_w(r, shelf) / EFFICIENCY

    def psu_output_w(self, r: Readings, shelf: _Shelf, psu: int) -> float:
        working = PSUS_PER_SHELF - len(shelf.failed_psus)
        if psu in shelf.failed_psus or working <= 0:
            return 0.0
        return self.output_w(r, shelf) / working

    def psu_input_w(self, r: Readings, shelf: _Shelf, psu: int) -> float:
        if shelf.on_battery:
            return 0.0
        return self.psu_output_w(r, shelf, psu) / EFFICIENCY

    def energy_kwh(self, r: Readings, shelf: _Shelf) -> float:
        return r.value("energy") / len(self.shelves) / EFFICIENCY / _J_PER_KWH

    def bbu_charge_percent(self, r: Readings, shelf: _Shelf, index: int) -> float:
        bbu = shelf.bbus[index]
        bbu.watts = self.output_w(r, shelf) / len(shelf.bbus)
        self._drain(bbu, time.monotonic())
        return 100.0 * bbu.charge_wh / BBU_CAPACITY_WH

    @staticmethod
    def _drain(bbu: _Bbu, now: float) -> None:
        if bbu.discharging_since is not None:
            hours = (now - bbu.discharging_since) / 3600.0
            bbu.charge_wh = max(0.0, bbu.charge_wh - bbu.watts * hours)
            bbu.discharging_since = now


class _Builder:
    def __init__(self, service: RedfishService, state: PowerShelves) -> None:
        self.service = service
        self.state = state
        self.chassis: dict[int, ChassisParts] = {}

    def add_equipment(self) -> None:
        service, state = self.service, self.state
        service.roots["PowerEquipment"] = POWER_EQUIPMENT

        def render(_: Readings) -> Json:
            body = head(POWER_EQUIPMENT, "PowerEquipment", "Power equipment")
            body.update({"Status": status(), "PowerShelves": link(POWER_SHELVES)})
            return body

        service.add(POWER_EQUIPMENT, Resource(render))
        service.add_collection(
            POWER_SHELVES,
            "PowerDistributionCollection",
            "Power shelves",
            lambda: [shelf.uri for shelf in state.shelves],
        )
        service.add_collection(
            f"{ROOT}/Chassis",
            "ChassisCollection",
            "Chassis",
            lambda: [shelf.chassis for shelf in state.shelves],
        )

    def add_shelf(self, shelf: _Shelf) -> None:
        service, state = self.service, self.state
        parts = ChassisParts(
            service, f"Shelf{shelf.number}", "Shelf", f"Power shelf {shelf.number}", rack_offset=0
        )
        self.chassis[shelf.number] = parts
        power = parts.sensor(
            "InputPower", "Shelf input power", "Power", "W", _on(state.input_w, shelf), digits=1
        )
        energy = parts.sensor(
            "InputEnergy",
            "Shelf input energy",
            "EnergykWh",
            "kW.h",
            _on(state.energy_kwh, shelf),
            digits=3,
        )
        parts.sensor("OutputPower", "Shelf output power", "Power", "W", _on(state.output_w, shelf))
        parts.links["PowerDistribution"] = link(shelf.uri)
        parts.properties["PowerSubsystem"] = link(f"{shelf.chassis}/PowerSubsystem")
        parts.register(with_collection=False)
        identity = service.identity

        def render(_: Readings) -> Json:
            body = head(shelf.uri, "PowerDistribution", f"Power shelf {shelf.number}")
            body.update(
                {
                    "EquipmentType": "PowerShelf",
                    "Manufacturer": identity.manufacturer,
                    "Model": identity.model,
                    "SerialNumber": f"{identity.serial}-{shelf.number}",
                    "FirmwareVersion": identity.firmware_version,
                    "Status": status(health="Warning" if shelf.failed_psus else "OK"),
                    "Mains": link(f"{shelf.uri}/Mains"),
                    "PowerSupplies": link(f"{shelf.chassis}/PowerSubsystem/PowerSupplies"),
                    "Metrics": link(f"{shelf.uri}/Metrics"),
                    "Links": {
                        "Chassis": [link(shelf.chassis)],
                        "ManagedBy": [link(f"{ROOT}/Managers/{identity.manager_id}")],
                    },
                }
            )
            return body

        service.add(shelf.uri, Resource(render))

        def render_metrics(r: Readings) -> Json:
            uri = f"{shelf.uri}/Metrics"
            body = head(uri, "PowerDistributionMetrics", f"Power shelf {shelf.number} metrics")
            body.update(
                {
                    "PowerWatts": sensor_excerpt(power, r, "Power"),
                    "EnergykWh": sensor_excerpt(energy, r, "EnergykWh"),
                }
            )
            return body

        service.add(f"{shelf.uri}/Metrics", Resource(render_metrics))
        mains = f"{shelf.uri}/Mains/AC1"
        service.add_collection(f"{shelf.uri}/Mains", "CircuitCollection", "Mains", lambda: [mains])

        def render_mains(r: Readings) -> Json:
            body = head(mains, "Circuit", "Mains input")
            body.update(
                {
                    "CircuitType": "Mains",
                    "PhaseWiringType": "ThreePhase5Wire",
                    "VoltageType": "AC",
                    "NominalVoltage": "AC400V",
                    "RatedCurrentAmps": MAINS_RATED_AMPS,
                    "PowerState": "Off" if shelf.on_battery else "On",
                    "Status": status(),
                    "PowerWatts": sensor_excerpt(power, r, "Power"),
                    "EnergykWh": sensor_excerpt(energy, r, "EnergykWh"),
                    "Links": {},
                }
            )
            return body

        service.add(mains, Resource(render_mains))
        self.add_subsystem(shelf)

    def add_subsystem(self, shelf: _Shelf) -> None:
        service = self.service
        base = f"{shelf.chassis}/PowerSubsystem"
        psus = f"{base}/PowerSupplies"
        bbus = f"{base}/Batteries"

        def render(r: Readings) -> Json:
            body = head(base, "PowerSubsystem", f"Power shelf {shelf.number} power subsystem")
            body.update(
                {
                    "CapacityWatts": PSUS_PER_SHELF * 3300,
                    "Status": status(),
                    "PowerSupplies": link(psus),
                    "Batteries": link(bbus),
                }
            )
            return body

        service.add(base, Resource(render))
        names = [f"PSU{i}" for i in range(1, PSUS_PER_SHELF + 1)]
        service.add_collection(
            psus, "PowerSupplyCollection", "Power supplies", lambda: [f"{psus}/{n}" for n in names]
        )
        for index, name in enumerate(names, start=1):
            self.add_psu(shelf, f"{psus}/{name}", name, index)
        service.add_collection(
            bbus,
            "BatteryCollection",
            "Battery backup units",
            lambda: [f"{bbus}/BBU{i + 1}" for i in range(len(shelf.bbus))],
        )
        for index in range(len(shelf.bbus)):
            self.add_bbu(shelf, f"{bbus}/BBU{index + 1}", index)

    def add_psu(self, shelf: _Shelf, uri: str, name: str, index: int) -> None:
        state, service = self.state, self.service

        def render(_: Readings) -> Json:
            failed = index in shelf.failed_psus
            body = head(uri, "PowerSupply", f"Power supply {name}")
            body.update(
                {
                    "Status": status(health="Critical" if failed else "OK"),
                    "LineInputStatus": "LossOfInput" if shelf.on_battery else "Normal",
                    "Manufacturer": service.identity.manufacturer,
                    "Model": "SIM-PSU 3.3 kW",
                    "PowerCapacityWatts": 3300,
                    "HotPluggable": True,
                    "Location": {
                        "PartLocation": {
                            "ServiceLabel": name,
                            "LocationType": "Bay",
                            "LocationOrdinalValue": index - 1,
                        }
                    },
                    "Metrics": link(f"{uri}/Metrics"),
                }
            )
            return body

        def render_metrics(r: Readings) -> Json:
            body = head(f"{uri}/Metrics", "PowerSupplyMetrics", f"Metrics for {name}")
            body.update(
                {
                    "Status": status(),
                    "InputPowerWatts": {"Reading": round(state.psu_input_w(r, shelf, index), 1)},
                    "OutputPowerWatts": {"Reading": round(state.psu_output_w(r, shelf, index), 1)},
                }
            )
            return body

        service.add(uri, Resource(render))
        service.add(f"{uri}/Metrics", Resource(render_metrics))

    def add_bbu(self, shelf: _Shelf, uri: str, index: int) -> None:
        state, service = self.state, self.service

        def render(_: Readings) -> Json:
            bbu = shelf.bbus[index]
            charging = bbu.charge_wh < BBU_CAPACITY_WH
            state_name = (
                "Discharging"
                if bbu.discharging_since is not None
                else ("Charging" if charging else "Idle")
            )
            body = head(uri, "Battery", f"Battery backup unit {index + 1}")
            body.update(
                {
                    "Status": status(),
                    "Manufacturer": service.identity.manufacturer,
                    "Model": "SIM-BBU 3.6 kWh",
                    "HotPluggable": True,
                    "CapacityRatedWattHours": BBU_CAPACITY_WH,
                    "ChargeState": state_name,
                    "Metrics": link(f"{uri}/Metrics"),
                }
            )
            return body

        def render_metrics(r: Readings) -> Json:
            percent = state.bbu_charge_percent(r, shelf, index)
            body = head(f"{uri}/Metrics", "BatteryMetrics", f"Metrics for BBU{index + 1}")
            body.update(
                {
                    "ChargePercent": {"Reading": round(percent, 2)},
                    "StoredEnergyWattHours": {"Reading": round(shelf.bbus[index].charge_wh, 1)},
                }
            )
            return body

        service.add(uri, Resource(render))
        service.add(f"{uri}/Metrics", Resource(render_metrics))


def _on(
    function: Callable[[Readings, _Shelf], float], shelf: _Shelf
) -> Callable[[Readings], float]:
    def read(r: Readings) -> float:
        return function(r, shelf)

    return read


def build_power_shelves(
    service: RedfishService, store: PointStore, plant: RackPlant, shelves: int = 2
) -> PowerShelves:
    """The power-shelf tree on `service`; returns the state faults are injected into."""
    del plant  # the shelves see the rack through its meter (`store`), as a PDU does
    service.sources["main"] = store.read_points
    state = PowerShelves(store, shelves)
    builder = _Builder(service, state)
    builder.add_equipment()
    for shelf in state.shelves:
        builder.add_shelf(shelf)
    add_management(service, [shelf.chassis for shelf in state.shelves])
    return state
