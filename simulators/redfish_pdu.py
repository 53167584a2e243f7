"""The rack PDU as a Redfish service: `PowerEquipment/RackPDUs/1` and its chassis `Chassis/PDU`.

A three-phase 400/230 V rack PDU: mains, one branch circuit per phase (A, B, C), an outlet per
server and one auxiliary outlet that feeds the CDU pump and the rack's own electronics. Outlet
power is each server's measured power; the auxiliary outlet's is the pump's plus the plant's PDU
overhead; branches add up their outlets; the mains power and energy are the plant PDU's own
meter. Currents follow from power at a fixed power factor, and line voltage sags a little with
current, as it does behind a real feed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coolctl.simulators.plant import PlantParams, RackPlant
from coolctl.simulators.redfish_chassis import ChassisParts, PointStore, placement
from coolctl.simulators.redfish_manager import add_management
from coolctl.simulators.redfish_messages import message
from coolctl.simulators.redfish_resources import (
    Json,
    PatchPath,
    Readings,
    Reply,
    RequestInfo,
    Resource,
    Writable,
    action,
    head,
    iso_time,
    link,
    status,
)
from coolctl.simulators.redfish_sensors import (
    Sensor,
    sensor_excerpt,
)
from coolctl.simulators.redfish_service import ROOT, RedfishService

__all__ = ["CHASSIS", "PDU", "build_pdu"]

POWER_EQUIPMENT = f"{ROOT}/PowerEquipment"
PDU = f"{POWER_EQUIPMENT}/RackPDUs/1"
CHASSIS = f"{ROOT}/Chassis/PDU"
NOMINAL_VOLTS = 230.0
FREQUENCY_HZ = 50.0
POWER_FACTOR = 0.99
FEED_OHMS = 0.02  # source impedance per line: the sag under load
OUTLET_RATED_AMPS = 40.0
PHASES = ("A", "B", "C")
_J_PER_KWH = 3.6e6


@dataclass(frozen=True, slots=True)
class _Outlet:
    id: str
    phase: int
    servers: tuple[int, ...]
    consumer: str

    @property
    def line(self) -> str:
        return f"Line{self.phase + 1}"


class _Electrical:
    """Power, current and voltage of every outlet, branch and line, from the plant's readings."""

    def __init__(self, params: PlantParams) -> None:
        self.p = params
        self.outlets = [
            _Outlet(f"{PHASES[i % 3]}{i // 3 + 1}", i % 3, (i,), f"server{i}")
            for i in range(params.n_servers)
        ]
        self.outlets.append(_Outlet("Aux", 0, (), "CDU pump and rack electronics"))
        pump_w = (
            params.pump_rated_flow_lpm
            / 60000.0
            * params.pump_rated_pressure_pa
            / params.pump_efficiency
        )
        peak_w = params.n_servers * params.server_max_w + pump_w + params.pdu_overhead_w
        per_line_a = 1.25 * peak_w / (3.0 * NOMINAL_VOLTS * POWER_FACTOR)
        self.rated_amps = float(math.ceil(per_line_a / 10.0) * 10)
        self.energy_baseline_j = 0.0
        self.reset_time = iso_time()

    def outlet_power(self, r: Readings, outlet: _Outlet) -> float:
        if not outlet.servers:
            return r.value("pump_power", "cdu") + self.p.pdu_overhead_w
        return sum(r.value("power", f"server{i}") for i in outlet.servers)

    def branch_power(self, r: Readings, phase: int) -> float:
        return sum(self.outlet_power(r, o) for o in self.outlets if o.phase == phase)

    def current(self, power_w: float, volts: float = NOMINAL_VOLTS) -> float:
        return power_w / (volts * POWER_FACTOR)

    def line_current(self, r: Readings, phase: int) -> float:
        return self.current(self.branch_power(r, phase))

    def line_volts(self, r: Readings, phase: int) -> float:
        return NOMINAL_VOLTS + 1.0 - FEED_OHMS * self.line_current(r, phase)

    def capacity_va(self) -> float:
        return 3.0 * NOMINAL_VOLTS * self.rated_amps

    def load_percent(self, r: Readings) -> float:
        return 100.0 * r.value("power") / POWER_FACTOR / self.capacity_va()


def _power_extras(read: Callable[[Readings], float | None]) -> Callable[[Readings], Json]:
    """Power factor, apparent and reactive power of a power reading."""

    def extra(r: Readings) -> Json:
        watts = read(r) or 0.0
        apparent = watts / POWER_FACTOR
        return {
            "PowerFactor": POWER_FACTOR,
            "ApparentVA": round(apparent, 1),
            "ReactiveVAR": round(math.sqrt(max(apparent**2 - watts**2, 0.0)), 1),
        }

    return extra


class _Pdu:
    """Builds the PDU's resources and answers its ResetMetrics action."""

    def __init__(self, service: RedfishService, store: PointStore, params: PlantParams) -> None:
        self.service = service
        self.store = store
        self.e = _Electrical(params)
        self.chassis = ChassisParts(service, "PDU", "PowerStrip", "Rack PDU", rack_offset=0)
        self.outlet_sensors: dict[str, Sensor] = {}
        self.outlet_currents: dict[str, Sensor] = {}
        self.outlet_volts: dict[str, Sensor] = {}

    # ---- sensors ----------------------------------------------------------------------------

    def add_sensors(self) -> None:
        e, add = self.e, self.chassis.sensor

        def mains_power(r: Readings) -> float:
            return r.value("power")

        def energy(r: Readings) -> float:
            return (r.value("energy") - e.energy_baseline_j) / _J_PER_KWH

        def energy_extra(r: Readings) -> Json:
            return {
                "LifetimeReading": round(r.value("energy") / _J_PER_KWH, 3),
                "SensorResetTime": e.reset_time,
            }

        add(
            "MainsPower",
            "Mains input power",
            "Power",
            "W",
            mains_power,
            electrical="Total",
            peak=True,
            extra=_power_extras(mains_power),
            digits=1,
        )
        add(
            "MainsEnergy",
            "Mains input energy",
            "EnergykWh",
            "kW.h",
            energy,
            electrical="Total",
            extra=energy_extra,
            digits=3,
        )
        add(
            "MainsFrequency",
            "Mains frequency",
            "Frequency",
            "Hz",
            lambda _r: FREQUENCY_HZ,
            electrical="Total",
        )
        add(
            "MainsLoad", "Load, percent of rated capacity", "Percent", "%", e.load_percent, digits=1
        )
        for phase, letter in enumerate(PHASES):
            line = f"Line{phase + 1}"
            add(
                f"MainsCurrent{line}",
                f"Mains {line} current",
                "Current",
                "A",
                _bind(e.line_current, phase),
                electrical=line,
            )
            add(
                f"MainsVoltage{line}",
                f"Mains {line} to neutral voltage",
                "Voltage",
                "V",
                _bind(e.line_volts, phase),
                electrical=f"{line}ToNeutral",
                digits=1,
            )
            branch_power = _bind(e.branch_power, phase)
            add(
                f"BranchPower{letter}",
                f"Branch {letter} power",
                "Power",
                "W",
                branch_power,
                electrical=f"{line}ToNeutral",
                extra=_power_extras(branch_power),
                digits=1,
            )
        for outlet in e.outlets:
            power = _bind_outlet(e.outlet_power, outlet)
            self.outlet_sensors[outlet.id] = add(
                f"OutletPower{outlet.id}",
                f"Outlet {outlet.id} power",
                "Power",
                "W",
                power,
                electrical=f"{outlet.line}ToNeutral",
                extra=_power_extras(power),
                digits=1,
            )
            self.outlet_currents[outlet.id] = Sensor(
                None, f"Outlet {outlet.id} current", "Current", "A", _outlet_current(e, outlet)
            )
            self.outlet_volts[outlet.id] = Sensor(
                None,
                f"Outlet {outlet.id} voltage",
                "Voltage",
                "V",
                _bind(e.line_volts, outlet.phase),
                digits=1,
            )

    # ---- the PDU ----------------------------------------------------------------------------

    def add_pdu(self) -> None:
        service, e = self.service, self.e
        service.roots["PowerEquipment"] = POWER_EQUIPMENT

        def render_equipment(_: Readings) -> Json:
            body = head(POWER_EQUIPMENT, "PowerEquipment", "Power equipment")
            body.update({"Status": status(), "RackPDUs": link(f"{POWER_EQUIPMENT}/RackPDUs")})
            return body

        service.add(POWER_EQUIPMENT, Resource(render_equipment))
        service.add_collection(
            f"{POWER_EQUIPMENT}/RackPDUs", "PowerDistributionCollection", "Rack PDUs", lambda: [PDU]
        )

        def render(_: Readings) -> Json:
            identity = service.identity
            body = head(PDU, "PowerDistribution", "Rack PDU")
            labels = placement(service, PDU, 0)
            body.update(
                {
                    "EquipmentType": "RackPDU",
                    "Manufacturer": identity.manufacturer,
                    "Model": identity.model,
                    "SerialNumber": identity.serial,
                    "PartNumber": "PDU-0001",
                    "Version": "A1",
                    "FirmwareVersion": identity.firmware_version,
                    "ProductionDate": "2026-01-01T00:00:00+00:00",
                    "UUID": identity.uuid,
                    "UserLabel": service.label(PDU, ("UserLabel",), "Rack PDU"),
                    "AssetTag": labels["AssetTag"],
                    "Location": labels["Location"],
                    "PowerCapacityVA": int(e.capacity_va()),
                    "Status": status(),
                    "Mains": link(f"{PDU}/Mains"),
                    "Branches": link(f"{PDU}/Branches"),
                    "Outlets": link(f"{PDU}/Outlets"),
                    "Metrics": link(f"{PDU}/Metrics"),
                    "Links": {
                        "Chassis": [link(CHASSIS)],
                        "ManagedBy": [link(f"{ROOT}/Managers/{identity.manager_id}")],
                    },
                }
            )
            return body

        writable = _labels(service, PDU, ["UserLabel", "AssetTag"])
        for name in ("Rack", "Row"):
            path = ("Location", "Placement", name)
            writable[path] = service.label_writable(PDU, path)
        offset = ("Location", "Placement", "RackOffset")
        writable[offset] = Writable("integer", service.label_writable(PDU, offset).apply, 0, 60)
        service.add(PDU, Resource(render, writable))

    # ---- circuits and outlets ---------------------------------------------------------------

    def add_circuits(self) -> None:
        service, e, s = self.service, self.e, self.chassis.sensors
        mains = f"{PDU}/Mains/1"
        service.add_collection(f"{PDU}/Mains", "CircuitCollection", "Mains", lambda: [mains])
        branches = [f"{PDU}/Branches/{letter}" for letter in PHASES]
        service.add_collection(f"{PDU}/Branches", "CircuitCollection", "Branches", lambda: branches)

        def render_mains(r: Readings) -> Json:
            body = head(mains, "Circuit", "Mains input")
            body.update(
                _circuit_common(service, mains, "Mains", "ThreePhase5Wire", "AC400V", e.rated_amps)
            )
            body.update(
                {
                    "ElectricalContext": "Total",
                    "NominalFrequencyHz": FREQUENCY_HZ,
                    "PowerWatts": sensor_excerpt(s["MainsPower"], r, "Power"),
                    "EnergykWh": sensor_excerpt(s["MainsEnergy"], r, "EnergykWh"),
                    "FrequencyHz": sensor_excerpt(s["MainsFrequency"], r),
                    "PolyPhaseCurrentAmps": {
                        f"Line{i}": sensor_excerpt(s[f"MainsCurrentLine{i}"], r, "Current")
                        for i in (1, 2, 3)
                    },
                    "PolyPhaseVoltage": {
                        f"Line{i}ToNeutral": sensor_excerpt(s[f"MainsVoltageLine{i}"], r, "Voltage")
                        for i in (1, 2, 3)
                    },
                    "Links": {},
                }
            )
            return body

        service.add(mains, Resource(render_mains, _labels(service, mains, ["UserLabel"])))
        for phase, (letter, uri) in enumerate(zip(PHASES, branches, strict=True)):
            outlets = [f"{PDU}/Outlets/{o.id}" for o in e.outlets if o.phase == phase]

            def render_branch(
                r: Readings,
                letter: str = letter,
                uri: str = uri,
                phase: int = phase,
                outlets: list[str] = outlets,
            ) -> Json:
                line = f"Line{phase + 1}"
                body = head(uri, "Circuit", f"Branch {letter}")
                body.update(
                    _circuit_common(service, uri, "Branch", "OnePhase3Wire", "AC230V", e.rated_amps)
                )
                body.update(
                    {
                        "ElectricalContext": f"{line}ToNeutral",
                        "PowerWatts": sensor_excerpt(s[f"BranchPower{letter}"], r, "Power"),
                        "CurrentAmps": sensor_excerpt(s[f"MainsCurrent{line}"], r, "Current"),
                        "Voltage": sensor_excerpt(s[f"MainsVoltage{line}"], r, "Voltage"),
                        "PowerRestorePolicy": "AlwaysOn",
                        "Links": {"Outlets": [link(o) for o in outlets]},
                    }
                )
                return body

            service.add(uri, Resource(render_branch, _labels(service, uri, ["UserLabel"])))

    def add_outlets(self) -> None:
        service, e = self.service, self.e
        base = f"{PDU}/Outlets"
        service.add_collection(
            base, "OutletCollection", "Outlets", lambda: [f"{base}/{o.id}" for o in e.outlets]
        )
        for outlet in e.outlets:
            uri = f"{base}/{outlet.id}"

            def render(r: Readings, outlet: _Outlet = outlet, uri: str = uri) -> Json:
                body = head(uri, "Outlet", f"Outlet {outlet.id}")
                body.update(
                    {
                        "OutletType": "BusConnection",
                        "ElectricalContext": f"{outlet.line}ToNeutral",
                        "PhaseWiringType": "OnePhase3Wire",
                        "VoltageType": "AC",
                        "NominalVoltage": "AC230V",
                        "RatedCurrentAmps": OUTLET_RATED_AMPS,
                        "PowerRestorePolicy": "AlwaysOn",
                        "PowerState": "On",
                        "PowerEnabled": True,
                        "Status": status(),
                        "UserLabel": service.label(uri, ("UserLabel",), f"Outlet {outlet.id}"),
                        "ElectricalConsumerNames": service.label(
                            uri, ("ElectricalConsumerNames",), [outlet.consumer]
                        ),
                        "PowerWatts": sensor_excerpt(self.outlet_sensors[outlet.id], r, "Power"),
                        "CurrentAmps": sensor_excerpt(
                            self.outlet_currents[outlet.id], r, "Current"
                        ),
                        "Voltage": sensor_excerpt(self.outlet_volts[outlet.id], r, "Voltage"),
                        "Links": {"BranchCircuit": link(f"{PDU}/Branches/{PHASES[outlet.phase]}")},
                    }
                )
                return body

            writable = _labels(service, uri, ["UserLabel"])
            writable[("ElectricalConsumerNames",)] = service.label_writable(
                uri, ("ElectricalConsumerNames",), "strings"
            )
            service.add(uri, Resource(render, writable))

    # ---- metrics ----------------------------------------------------------------------------

    def add_metrics(self) -> None:
        service, s = self.service, self.chassis.sensors
        uri = f"{PDU}/Metrics"
        target, reset = action(uri, "PowerDistributionMetrics.ResetMetrics")

        def render(r: Readings) -> Json:
            body = head(uri, "PowerDistributionMetrics", "Rack PDU metrics")
            body.update(
                {
                    "PowerWatts": sensor_excerpt(s["MainsPower"], r, "Power"),
                    "EnergykWh": sensor_excerpt(s["MainsEnergy"], r, "EnergykWh"),
                    "PowerLoadPercent": sensor_excerpt(s["MainsLoad"], r),
                    "Actions": {"#PowerDistributionMetrics.ResetMetrics": reset},
                }
            )
            return body

        service.add(uri, Resource(render))
        service.add(target, Resource(post=self._reset_metrics))

    def _reset_metrics(self, body: Any, _request: RequestInfo) -> Reply:
        """Start the energy count and the peaks again from now."""
        self.e.energy_baseline_j = float(self.store.read_points()["energy"])
        self.e.reset_time = iso_time()
        for sensor in self.chassis.sensors.values():
            if sensor.peak is not None:
                sensor.peak.value = None
        self.service.log.add(message("Success"), origin=f"{PDU}/Metrics")
        return Reply(204)


def _bind(function: Callable[[Readings, int], float], phase: int) -> Callable[[Readings], float]:
    def read(r: Readings) -> float:
        return function(r, phase)

    return read


def _bind_outlet(
    function: Callable[[Readings, _Outlet], float], outlet: _Outlet
) -> Callable[[Readings], float]:
    def read(r: Readings) -> float:
        return function(r, outlet)

    return read


def _outlet_current(e: _Electrical, outlet: _Outlet) -> Callable[[Readings], float]:
    def read(r: Readings) -> float:
        return e.current(e.outlet_power(r, outlet), e.line_volts(r, outlet.phase))

    return read


def _labels(service: RedfishService, uri: str, names: list[str]) -> dict[PatchPath, Writable]:
    return {(name,): service.label_writable(uri, (name,)) for name in names}


def _circuit_common(
    service: RedfishService, uri: str, kind: str, wiring: str, voltage: str, rated_amps: float
) -> Json:
    return {
        "CircuitType": kind,
        "PhaseWiringType": wiring,
        "VoltageType": "AC",
        "NominalVoltage": voltage,
        "RatedCurrentAmps": rated_amps,
        "BreakerState": "Normal",
        "PowerState": "On",
        "PowerEnabled": True,
        "Status": status(),
        "UserLabel": service.label(
            uri, ("UserLabel",), uri.rsplit("/", 2)[-2] + " " + uri.rsplit("/", 1)[-1]
        ),
    }


def build_pdu(service: RedfishService, store: PointStore, plant: RackPlant) -> None:
    """The rack PDU tree on `service`: its own meter from `store`, outlets from `plant`."""
    service.sources["main"] = store.read_points
    service.sources["cdu"] = plant.cdu_readings
    for index in range(plant.n_servers):
        service.sources[f"server{index}"] = _server_source(plant, index)
    pdu = _Pdu(service, store, plant.params)
    pdu.add_sensors()
    pdu.chassis.links["PowerDistribution"] = link(PDU)
    pdu.chassis.register()
    pdu.add_pdu()
    pdu.add_circuits()
    pdu.add_outlets()
    pdu.add_metrics()
    add_management(service, [CHASSIS])


def _server_source(plant: RackPlant, index: int) -> Callable[[], dict[str, float]]:
    def read() -> dict[str, float]:
        return plant.server_readings(index)

    return read
