"""The rack CDU as a Redfish service: `ThermalEquipment/CDUs/1` and its chassis `Chassis/CDU`.

It shows the plant's coolant loop the way DSP2046's CoolingUnit model does: pumps, the
secondary (rack) and primary (facility) coolant connectors, the reservoir, leak detection, and
the chassis' Sensors and Controls that those resources excerpt. Two set points are writable,
as the Modbus CDU's are: the pump speed (`Controls/PumpSpeed`, excerpted by each pump as
`SpeedControlPercent`) and the primary valve (`Controls/PrimaryValve`, excerpted by the primary
connector as `ValvePositionControlPercent`), both in percent.

The CDU also runs loops of its own (`coolctl.simulators.cdu_controller`): its flow, supply
temperature and differential-pressure set points (`Controls/SecondaryFlow`,
`Controls/SupplyTemperature`, `Controls/SecondaryDeltaPressure`, excerpted by the secondary
connector as `FlowControlLitersPerMinute`, `SupplyTemperatureControlCelsius` and
`DeltaPressureControlkPa`) are writable within AllowableMin/AllowableMax, with ControlMode
`Automatic` while its loops run, `Manual` while pump and valve are written directly (its
manual mode), `Disabled` while stopped or in local control. `CoolingUnit.SetMode` (2024.4)
runs (`Enabled`: its own loops, from manual too) or stops it (`Disabled`), and
`CoolantConnector.ValveControl` (2025.3) on the secondary connector opens or closes the rack's
isolation valves (closed, the CDU stops its pumps). A CDU whose panel has control refuses
every write with 400.

Pressures: the plant has the secondary differential pressure only. The return side is held at
a fixed static pressure (an expansion tank's), so supply = return + ΔP; on the primary side the
facility supplies a fixed pressure and the ΔP across valve and exchanger grows with flow².
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from coolctl.model import CduControlMode
from coolctl.simulators.cdu_controller import CduController
from coolctl.simulators.plant import PlantParams
from coolctl.simulators.redfish_chassis import ChassisParts, PointStore
from coolctl.simulators.redfish_manager import add_management
from coolctl.simulators.redfish_messages import RedfishError, message
from coolctl.simulators.redfish_resources import (
    Json,
    PatchPath,
    Readings,
    Reply,
    RequestInfo,
    Resource,
    Writable,
    head,
    link,
    status,
)
from coolctl.simulators.redfish_sensors import (
    control_excerpt,
    control_writables,
    sensor_excerpt,
)
from coolctl.simulators.redfish_service import ROOT, RedfishService

__all__ = ["CDU", "CHASSIS", "build_cdu"]

THERMAL = f"{ROOT}/ThermalEquipment"
CDU = f"{THERMAL}/CDUs/1"
CHASSIS = f"{ROOT}/Chassis/CDU"
SECONDARY_RETURN_KPA = 50.0
PRIMARY_SUPPLY_KPA = 300.0
PRIMARY_RATED_DP_KPA = 80.0
SUPPLY_SETPOINT_C = 35.0
READ_ONLY_MODE = "Disabled"
_LOOP = "CoolingSubsystem"


def _only(uri: str) -> Callable[[], list[str]]:
    return lambda: [uri]


def _point(name: str, scale: float = 1.0) -> Callable[[Readings], float]:
    def read(r: Readings) -> float:
        return r.value(name) * scale

    return read


class _Loop:
    """Derived readings of the loop: what the plant gives, turned into what a CDU shows."""

    def __init__(self, params: PlantParams) -> None:
        self.p = params

    def secondary_delta_t(self, r: Readings) -> float:
        return r.value("return_temperature") - r.value("supply_temperature")

    def secondary_supply_kpa(self, r: Readings) -> float:
        return SECONDARY_RETURN_KPA + r.value("differential_pressure") / 1000.0

    def primary_delta_t(self, r: Readings) -> float:
        return r.value("facility_return_temperature") - r.value("facility_supply_temperature")

    def primary_dp_kpa(self, r: Readings) -> float:
        share = r.value("primary_flow") / self.p.primary_max_flow_lpm
        return PRIMARY_RATED_DP_KPA * share * share

    def primary_return_kpa(self, r: Readings) -> float:
        return PRIMARY_SUPPLY_KPA - self.primary_dp_kpa(r)

    def level_percent(self, r: Readings) -> float:
        return 100.0 * r.value("reservoir_level") / self.p.reservoir_capacity_l

    def level_status(self, r: Readings) -> str:
        level = r.value("reservoir_level")
        if level <= self.p.reservoir_min_level_l:
            return "Critical"
        return "Warning" if level < 0.5 * self.p.reservoir_capacity_l else "OK"

    def pump_fault(self, r: Readings) -> bool:
        return r.value("pump_running") < 0.5 and r.value("pump_speed_command") > 0.0

    def readers(self) -> dict[str, Callable[[Readings], float]]:
        """How each sensor of `_SENSORS` is read from the plant's CDU points."""
        return {
            "SecondarySupplyTemp": _point("supply_temperature"),
            "SecondaryReturnTemp": _point("return_temperature"),
            "SecondaryDeltaTemp": self.secondary_delta_t,
            "SecondaryFlow": _point("flow"),
            "SecondarySupplyPressure": self.secondary_supply_kpa,
            "SecondaryReturnPressure": lambda _r: SECONDARY_RETURN_KPA,
            "SecondaryDeltaPressure": _point("differential_pressure", 0.001),
            "PrimarySupplyTemp": _point("facility_supply_temperature"),
            "PrimaryReturnTemp": _point("facility_return_temperature"),
            "PrimaryDeltaTemp": self.primary_delta_t,
            "PrimaryFlow": _point("primary_flow"),
            "PrimarySupplyPressure": lambda _r: PRIMARY_SUPPLY_KPA,
            "PrimaryReturnPressure": self.primary_return_kpa,
            "PrimaryDeltaPressure": self.primary_dp_kpa,
            "HeatRemoved": _point("heat_removed", 0.001),
            "PumpSpeed": _point("pump_speed", 100.0),
            "PumpPower": _point("pump_power"),
            "ReservoirLevel": self.level_percent,
            "PrimaryValvePosition": _point("valve_position", 100.0),
        }

    def health(self, r: Readings) -> str:
        """The CDU's rolled-up health: a leak, a stopped pump or a dry reservoir is critical."""
        if r.value("leak_detected") >= 0.5 or self.pump_fault(r):
            return "Critical"
        return self.level_status(r)


def _coolant(density: float, cp_j: float, additive: bool) -> Json:
    coolant: Json = {
        "CoolantType": "Water",
        "DensityKgPerCubicMeter": density,
        "SpecificHeatkJoulesPerKgK": round(cp_j / 1000.0, 3),
    }
    if additive:
        coolant.update({"AdditiveName": "Propylene glycol", "AdditivePercent": 25})
    return coolant


# Sensor id (as DMTF's CDU mockup names them) -> name, reading type, units, context, digits.
_SENSORS: Mapping[str, tuple[str, str, str, str, int]] = {
    "SecondarySupplyTemp": ("Rack supply temperature", "Temperature", "Cel", "LiquidOutlet", 2),
    "SecondaryReturnTemp": ("Rack return temperature", "Temperature", "Cel", "LiquidInlet", 2),
    "SecondaryDeltaTemp": ("Rack return minus supply", "Temperature", "Cel", _LOOP, 2),
    "SecondaryFlow": ("Rack coolant flow", "LiquidFlowLPM", "L/min", _LOOP, 2),
    "SecondarySupplyPressure": ("Rack supply pressure", "PressurekPa", "kPa", "LiquidOutlet", 2),
    "SecondaryReturnPressure": ("Rack return pressure", "PressurekPa", "kPa", "LiquidInlet", 2),
    "SecondaryDeltaPressure": ("Rack differential pressure", "PressurekPa", "kPa", _LOOP, 2),
    "PrimarySupplyTemp": ("Facility supply temperature", "Temperature", "Cel", "LiquidInlet", 2),
    "PrimaryReturnTemp": ("Facility return temperature", "Temperature", "Cel", "LiquidOutlet", 2),
    "PrimaryDeltaTemp": ("Facility return minus supply", "Temperature", "Cel", _LOOP, 2),
    "PrimaryFlow": ("Facility water flow", "LiquidFlowLPM", "L/min", _LOOP, 2),
    "PrimarySupplyPressure": ("Facility supply pressure", "PressurekPa", "kPa", "LiquidInlet", 2),
    "PrimaryReturnPressure": ("Facility return pressure", "PressurekPa", "kPa", "LiquidOutlet", 2),
    "PrimaryDeltaPressure": ("Facility differential pressure", "PressurekPa", "kPa", _LOOP, 2),
    "HeatRemoved": ("Heat moved to facility water", "Heat", "kW", _LOOP, 3),
    "PumpSpeed": ("Pump speed", "Percent", "%", "Pump", 1),
    "PumpPower": ("Pump electrical power", "Power", "W", "Pump", 1),
    "ReservoirLevel": ("Reservoir fluid level", "Percent", "%", "Reservoir", 1),
    "PrimaryValvePosition": ("Primary valve opening", "Valve", "%", _LOOP, 1),
}


def _sensors(chassis: ChassisParts, loop: _Loop) -> None:
    """The CDU chassis' sensors: `_SENSORS`, each read as `_Loop.readers` says."""
    readers = loop.readers()
    p = loop.p
    low_level = round(100.0 * p.reservoir_min_level_l / p.reservoir_capacity_l, 1)
    extras: Mapping[str, dict[str, Any]] = {
        "PumpPower": {"peak": True},
        "ReservoirLevel": {"thresholds": {"LowerCritical": low_level}},
    }
    for sensor_id, (name, kind, units, context, digits) in _SENSORS.items():
        chassis.sensor(
            sensor_id,
            name,
            kind,
            units,
            readers[sensor_id],
            context=context,
            digits=digits,
            **extras.get(sensor_id, {}),
        )


def _controls(chassis: ChassisParts, store: PointStore, params: PlantParams) -> None:
    sensors = chassis.sensors

    def command(point: str) -> Callable[[float], None]:
        def apply(percent: float) -> None:
            store.write_point(point, percent / 100.0)

        return apply

    manual = "Manual"
    chassis.control(
        "PumpSpeed",
        name="Pump speed command",
        control_type="Percent",
        units="%",
        setpoint=_point("pump_speed_command", 100.0),
        apply=command("pump_speed_command"),
        minimum=0.0,
        maximum=100.0,
        default=round(params.initial_pump_speed * 100.0, 1),
        mode=lambda: manual,
        sensor=sensors["PumpSpeed"],
        context="Pump",
        digits=1,
    )
    chassis.control(
        "PrimaryValve",
        name="Primary (facility) valve command",
        control_type="Valve",
        units="%",
        setpoint=_point("valve_command", 100.0),
        apply=command("valve_command"),
        minimum=0.0,
        maximum=100.0,
        default=round(params.initial_valve * 100.0, 1),
        mode=lambda: manual,
        sensor=sensors["PrimaryValvePosition"],
        context="CoolingSubsystem",
        digits=1,
    )
    controller = _controller(store)

    def ranges(point: str, default: tuple[float, float]) -> tuple[float, float]:
        return controller.setpoint_range(point) if controller is not None else default

    def loop_mode() -> str:
        if controller is None:
            return READ_ONLY_MODE
        mode = controller.mode
        if mode is CduControlMode.MANUAL and controller.running:
            return "Manual"
        if controller.running and mode is not CduControlMode.LOCAL:
            return "Automatic"
        return "Disabled"

    def reading(point: str, fixed: float, scale: float = 1.0) -> Callable[[Readings], float]:
        """The CDU's set point as it holds it; without a controller, a fixed value."""
        if controller is None:
            return lambda _r: fixed * scale
        return lambda r: r.value(point) * scale

    def setpoint(point: str, scale: float = 1.0) -> Callable[[float], None] | None:
        if controller is None:
            return None

        def apply(value: float) -> None:
            store.write_point(point, value * scale)

        return apply

    flow_low, flow_high = ranges("flow_setpoint", (0.0, params.pump_rated_flow_lpm))
    chassis.control(
        "SecondaryFlow",
        name="Rack flow set point (the CDU's pump loop)",
        control_type="LiquidFlowLPM",
        units="L/min",
        setpoint=reading("flow_setpoint", params.pump_rated_flow_lpm),
        apply=setpoint("flow_setpoint"),
        minimum=flow_low,
        maximum=flow_high,
        mode=loop_mode,
        sensor=sensors["SecondaryFlow"],
        context="CoolingSubsystem",
        digits=1,
    )
    supply_low, supply_high = ranges("supply_temperature_setpoint", (20.0, 45.0))
    chassis.control(
        "SupplyTemperature",
        name="Rack supply temperature set point (the CDU's valve loop)",
        control_type="Temperature",
        units="Cel",
        setpoint=reading("supply_temperature_setpoint", SUPPLY_SETPOINT_C),
        apply=setpoint("supply_temperature_setpoint"),
        minimum=supply_low,
        maximum=supply_high,
        mode=loop_mode,
        sensor=sensors["SecondarySupplyTemp"],
        context="CoolingSubsystem",
        digits=1,
    )
    dp_low, dp_high = ranges("differential_pressure_setpoint", (0.0, 200_000.0))
    chassis.control(
        "SecondaryDeltaPressure",
        name="Rack differential pressure set point (the CDU's pump loop, in ΔP mode)",
        control_type="PressurekPa",
        units="kPa",
        setpoint=reading("differential_pressure_setpoint", 100_000.0, 0.001),
        apply=setpoint("differential_pressure_setpoint", 1000.0),
        minimum=dp_low / 1000.0,
        maximum=dp_high / 1000.0,
        mode=loop_mode,
        sensor=sensors["SecondaryDeltaPressure"],
        context="CoolingSubsystem",
        digits=1,
    )


def _controller(store: PointStore) -> CduController | None:
    """The CDU's own controller behind `store`, when it has one (the live simulation's)."""
    controller = getattr(store, "controller", None)
    return controller if isinstance(controller, CduController) else None


def _action_value(body: Any, action: str, name: str, allowed: tuple[str, ...]) -> str:
    """The one parameter of a CDU action, checked as the Base registry words it."""
    if not isinstance(body, dict):
        raise RedfishError(400, [message("MalformedJSON")])
    unknown = [k for k in body if k != name and not k.startswith("@") and k != "ValveStateReason"]
    if unknown:
        raise RedfishError(400, [message("ActionParameterUnknown", action, k) for k in unknown])
    if name not in body:
        raise RedfishError(400, [message("ActionParameterMissing", action, name)])
    value = body[name]
    if value not in allowed:
        raise RedfishError(
            400, [message("ActionParameterValueNotInList", str(value), name, action)]
        )
    return str(value)


def _written(store: PointStore, point: str, value: float) -> Reply:
    try:
        store.write_point(point, value)
    except ValueError as exc:
        raise RedfishError(400, [message("GeneralError", resolution=str(exc))]) from exc
    return Reply(204)


def build_cdu(service: RedfishService, store: PointStore, params: PlantParams) -> None:
    """The CDU tree on `service`, reading from and writing to `store` (the plant's CDU)."""
    service.sources["main"] = store.read_points
    loop = _Loop(params)
    chassis = ChassisParts(service, "CDU", "RackMount", "In-rack CDU")
    _sensors(chassis, loop)
    _controls(chassis, store, params)
    controller = _controller(store)
    chassis.links["CoolingUnits"] = [link(CDU)]
    pump_power = chassis.sensors["PumpPower"]

    def environment(r: Readings) -> Json:
        return {"PowerWatts": sensor_excerpt(pump_power, r, "Power")}

    chassis.environment = environment
    chassis.register()
    parts = _CduParts(service, chassis, loop, params, store, controller)
    parts.add_unit()
    parts.add_pumps()
    parts.add_connectors()
    parts.add_reservoir()
    parts.add_leak_detection()
    add_management(service, [CHASSIS])


class _CduParts:
    """The CoolingUnit and the resources below it."""

    def __init__(
        self,
        service: RedfishService,
        chassis: ChassisParts,
        loop: _Loop,
        params: PlantParams,
        store: PointStore,
        controller: CduController | None,
    ) -> None:
        self.store = store
        self.controller = controller
        self.service = service
        self.chassis = chassis
        self.loop = loop
        self.p = params
        self.sensors = chassis.sensors
        self.controls = chassis.controls

    def add_unit(self) -> None:
        service, p, loop = self.service, self.p, self.loop
        service.roots["ThermalEquipment"] = THERMAL

        def render_equipment(_: Readings) -> Json:
            body = head(THERMAL, "ThermalEquipment", "Thermal equipment")
            body.update({"Status": status(), "CDUs": link(f"{THERMAL}/CDUs")})
            return body

        service.add(THERMAL, Resource(render_equipment))
        service.add_collection(f"{THERMAL}/CDUs", "CoolingUnitCollection", "CDUs", lambda: [CDU])
        environment = f"{CDU}/EnvironmentMetrics"
        pump_power = self.sensors["PumpPower"]

        def render(r: Readings) -> Json:
            identity = service.identity
            body = head(CDU, "CoolingUnit", "In-rack coolant distribution unit")
            body.update(
                {
                    "EquipmentType": "CDU",
                    "Manufacturer": identity.manufacturer,
                    "Model": identity.model,
                    "SerialNumber": identity.serial,
                    "PartNumber": "CDU-0001",
                    "Version": "A1",
                    "FirmwareVersion": identity.firmware_version,
                    "ProductionDate": "2026-01-01T00:00:00+00:00",
                    "UserLabel": service.label(CDU, ("UserLabel",), ""),
                    "AssetTag": service.label(CDU, ("AssetTag",), ""),
                    "CoolingCapacityWatts": int(round(p.hx_ua_rated_w_per_k * 5.0, -3)),
                    "Coolant": _coolant(p.coolant_density_kg_m3, p.coolant_cp_j_per_kg_k, True),
                    "Status": status(
                        state="Enabled" if running() else "Disabled", health=loop.health(r)
                    ),
                    "Pumps": link(f"{CDU}/Pumps"),
                    "PrimaryCoolantConnectors": link(f"{CDU}/PrimaryCoolantConnectors"),
                    "SecondaryCoolantConnectors": link(f"{CDU}/SecondaryCoolantConnectors"),
                    "Reservoirs": link(f"{CDU}/Reservoirs"),
                    "LeakDetection": link(f"{CDU}/LeakDetection"),
                    "EnvironmentMetrics": link(environment),
                    "Links": {
                        "Chassis": [link(CHASSIS)],
                        "ManagedBy": [link(f"{ROOT}/Managers/{identity.manager_id}")],
                    },
                }
            )
            if controller is not None:
                body["Actions"] = {"#CoolingUnit.SetMode": {"target": set_mode}}
            return body

        controller, store = self.controller, self.store
        set_mode = f"{CDU}/Actions/CoolingUnit.SetMode"

        def running() -> bool:
            return controller is None or controller.running

        def post_set_mode(body: Any, _request: RequestInfo) -> Reply:
            mode = _action_value(body, "CoolingUnit.SetMode", "Mode", ("Enabled", "Disabled"))
            if mode == "Disabled":
                return _written(store, "cdu_run_command", 0.0)
            assert controller is not None
            if controller.mode in (CduControlMode.MANUAL, CduControlMode.STOPPED):
                _written(store, "cdu_control_mode", float(CduControlMode.AUTO_FLOW))
            return _written(store, "cdu_run_command", 1.0)

        def render_environment(r: Readings) -> Json:
            body = head(environment, "EnvironmentMetrics", "CDU environment metrics")
            body["PowerWatts"] = sensor_excerpt(pump_power, r, "Power")
            return body

        labels: dict[PatchPath, Writable] = {
            ("UserLabel",): service.label_writable(CDU, ("UserLabel",)),
            ("AssetTag",): service.label_writable(CDU, ("AssetTag",)),
        }
        service.add(CDU, Resource(render, labels))
        if controller is not None:
            service.add(set_mode, Resource(post=post_set_mode))
        service.add(environment, Resource(render_environment))

    def add_pumps(self) -> None:
        service, loop = self.service, self.loop
        pumps = ["1", "2"] if self.p.standby_pump else ["1"]
        base = f"{CDU}/Pumps"
        service.add_collection(
            base, "PumpCollection", "Pumps", lambda: [f"{base}/{i}" for i in pumps]
        )
        speed = self.sensors["PumpSpeed"]
        control = self.controls["PumpSpeed"]
        for index, pump_id in enumerate(pumps):
            standby = index == 1

            def render(
                r: Readings, pump_id: str = pump_id, standby: bool = standby, index: int = index
            ) -> Json:
                active = (r.value("standby_pump_active") >= 0.5) == standby
                state = "Enabled" if active or not standby else "StandbySpare"
                failed = (not active and not standby) or (active and loop.pump_fault(r))
                reading = sensor_excerpt(speed, r, "Pump")
                if not active:
                    reading = {"Reading": 0.0}
                body = head(f"{base}/{pump_id}", "Pump", f"{'Standby' if standby else 'Duty'} pump")
                body.update(
                    {
                        "PumpType": "Liquid",
                        "PhysicalContext": "Pump",
                        "Status": status(state, "Critical" if failed else "OK"),
                        "Location": {
                            "PartLocation": {
                                "ServiceLabel": f"Pump {pump_id}",
                                "LocationType": "Bay",
                                "LocationOrdinalValue": index + 1,
                            }
                        },
                        "PumpSpeedPercent": reading,
                        "SpeedControlPercent": control_excerpt(control, r, "SingleLoop"),
                    }
                )
                return body

            writable = control_writables(control, ("SpeedControlPercent",))
            service.add(f"{base}/{pump_id}", Resource(render, writable))

    def add_connectors(self) -> None:
        service, p, loop = self.service, self.p, self.loop
        s, c = self.sensors, self.controls
        controller = self.controller
        valve = f"{CDU}/SecondaryCoolantConnectors/1/Actions/CoolantConnector.ValveControl"
        for side in ("Secondary", "Primary"):
            base = f"{CDU}/{side}CoolantConnectors"
            uri = f"{base}/1"
            service.add_collection(
                base,
                "CoolantConnectorCollection",
                f"{side} coolant connectors",
                _only(uri),
            )
            primary = side == "Primary"

            def render(
                r: Readings, side: str = side, uri: str = uri, primary: bool = primary
            ) -> Json:
                name = "Facility water connection" if primary else "Rack coolant connection"
                body = head(uri, "CoolantConnector", name)
                body.update(
                    {
                        "CoolantConnectorType": "Pair",
                        "Status": status(
                            health="Critical" if not primary and loop.pump_fault(r) else "OK"
                        ),
                        "Coolant": _coolant(
                            p.facility_density_kg_m3, p.facility_cp_j_per_kg_k, False
                        )
                        if primary
                        else _coolant(p.coolant_density_kg_m3, p.coolant_cp_j_per_kg_k, True),
                        "RatedFlowLitersPerMinute": p.primary_max_flow_lpm
                        if primary
                        else p.pump_rated_flow_lpm,
                        "FlowLitersPerMinute": sensor_excerpt(s[f"{side}Flow"], r),
                        "SupplyTemperatureCelsius": sensor_excerpt(s[f"{side}SupplyTemp"], r),
                        "ReturnTemperatureCelsius": sensor_excerpt(s[f"{side}ReturnTemp"], r),
                        "DeltaTemperatureCelsius": sensor_excerpt(s[f"{side}DeltaTemp"], r),
                        "SupplyPressurekPa": sensor_excerpt(s[f"{side}SupplyPressure"], r),
                        "ReturnPressurekPa": sensor_excerpt(s[f"{side}ReturnPressure"], r),
                        "DeltaPressurekPa": sensor_excerpt(s[f"{side}DeltaPressure"], r),
                        "HeatRemovedkW": sensor_excerpt(s["HeatRemoved"], r),
                    }
                )
                if primary:
                    body["ValvePositionPercent"] = sensor_excerpt(s["PrimaryValvePosition"], r)
                    body["ValvePositionControlPercent"] = control_excerpt(
                        c["PrimaryValve"], r, "SingleLoop"
                    )
                else:
                    body["FlowControlLitersPerMinute"] = control_excerpt(
                        c["SecondaryFlow"], r, "SingleLoop"
                    )
                    body["SupplyTemperatureControlCelsius"] = control_excerpt(
                        c["SupplyTemperature"], r, "SingleLoop"
                    )
                    body["DeltaPressureControlkPa"] = control_excerpt(
                        c["SecondaryDeltaPressure"], r, "SingleLoop"
                    )
                    if controller is not None:
                        if r.value("isolation_valve_command") < 0.5:
                            body["Status"] = status(state="Disabled", health="OK")
                        body["Actions"] = {"#CoolantConnector.ValveControl": {"target": valve}}
                return body

            if primary:
                writable = control_writables(c["PrimaryValve"], ("ValvePositionControlPercent",))
            else:
                writable = {
                    **control_writables(c["SecondaryFlow"], ("FlowControlLitersPerMinute",)),
                    **control_writables(
                        c["SupplyTemperature"], ("SupplyTemperatureControlCelsius",)
                    ),
                    **control_writables(c["SecondaryDeltaPressure"], ("DeltaPressureControlkPa",)),
                }
            service.add(uri, Resource(render, writable))
        if controller is not None:
            service.add(valve, Resource(post=self._valve_control))

    def _valve_control(self, body: Any, _request: RequestInfo) -> Reply:
        """CoolantConnector.ValveControl: the rack's isolation valves, open or closed."""
        state = _action_value(
            body, "CoolantConnector.ValveControl", "ValveState", ("Open", "Closed")
        )
        return _written(self.store, "isolation_valve_command", 1.0 if state == "Open" else 0.0)

    def add_reservoir(self) -> None:
        service, p, loop = self.service, self.p, self.loop
        base = f"{CDU}/Reservoirs"
        uri = f"{base}/1"
        level = self.sensors["ReservoirLevel"]
        service.add_collection(base, "ReservoirCollection", "Reservoirs", lambda: [uri])

        def render(r: Readings) -> Json:
            body = head(uri, "Reservoir", "Coolant reservoir")
            health = loop.level_status(r)
            body.update(
                {
                    "ReservoirType": "Reserve",
                    "PhysicalContext": "Reservoir",
                    "CapacityLiters": p.reservoir_capacity_l,
                    "FluidLevelPercent": sensor_excerpt(level, r),
                    "FluidLevelStatus": health,
                    "Coolant": _coolant(p.coolant_density_kg_m3, p.coolant_cp_j_per_kg_k, True),
                    "Location": {
                        "PartLocation": {
                            "ServiceLabel": "Reservoir",
                            "LocationType": "Bay",
                            "LocationOrdinalValue": 1,
                        }
                    },
                    "Status": status(health=health),
                }
            )
            return body

        service.add(uri, Resource(render))

    def add_leak_detection(self) -> None:
        service = self.service
        uri = f"{CDU}/LeakDetection"
        detectors = f"{uri}/LeakDetectors"
        detector = f"{detectors}/1"

        def state(r: Readings) -> str:
            return "Critical" if r.value("leak_detected") >= 0.5 else "OK"

        def render(r: Readings) -> Json:
            body = head(uri, "LeakDetection", "Leak detection")
            body.update(
                {
                    "Status": status(health=state(r)),
                    "LeakDetectors": link(detectors),
                    "LeakDetectorGroups": [
                        {
                            "GroupName": "CDU drip tray",
                            "Status": status(health=state(r)),
                            "Detectors": [
                                {
                                    "DataSourceUri": detector,
                                    "DetectorState": state(r),
                                    "PhysicalContext": "CoolingSubsystem",
                                }
                            ],
                            "HumidityPercent": {"Reading": None},
                        }
                    ],
                }
            )
            return body

        def render_detector(r: Readings) -> Json:
            body = head(detector, "LeakDetector", "Drip tray leak detector")
            body.update(
                {
                    "LeakDetectorType": "Moisture",
                    "DetectorState": state(r),
                    "PhysicalContext": "CoolingSubsystem",
                    "Status": status(health=state(r)),
                    "Location": {
                        "PartLocation": {
                            "ServiceLabel": "Drip tray",
                            "LocationType": "Slot",
                            "LocationOrdinalValue": 1,
                        }
                    },
                }
            )
            return body

        service.add(uri, Resource(render))
        service.add_collection(
            detectors, "LeakDetectorCollection", "Leak detectors", lambda: [detector]
        )
        service.add(detector, Resource(render_detector))
