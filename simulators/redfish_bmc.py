"""The BMC of one simulated server: its chassis, its system, and its power limit.

What coolctl needs from a server BMC is the power it draws, how hot it runs, and a power cap it
obeys. The cap is a `Control` (`Chassis/1/Controls/PowerLimit`), excerpted as `PowerLimitWatts`
in the chassis' EnvironmentMetrics, and, behind `legacy_power`, also shown the old way as
`Chassis/1/Power` `PowerControl[0].PowerLimit.LimitInWatts`, which many BMCs in the field still
only have. Writing any of the three caps the plant's server: the plant's servers obey it.

ControlMode `Disabled` lifts the cap (the plant server may draw its maximum) and keeps the set
point; `Automatic` enforces the set point again.

The server's host (`Systems/1`) shows the plant server's `PowerState` and takes
`ComputerSystem.Reset` with ResetType `GracefulShutdown` (PoweringOff while its OS stops, the
plant's `server_shutdown_s`, then Off, drawing standby power) or `On` (On at once); the
allowed values are in `ResetType@Redfish.AllowableValues`, anything else gets 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coolctl.model import ServerPowerState
from coolctl.simulators.plant import PlantParams
from coolctl.simulators.redfish_chassis import ChassisParts, PointStore, placement
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
    action,
    head,
    link,
    status,
)
from coolctl.simulators.redfish_sensors import (
    Control,
    control_excerpt,
    control_writables,
    sensor_excerpt,
)
from coolctl.simulators.redfish_service import ROOT, RedfishService

__all__ = ["CHASSIS", "POWER_LIMIT", "RESET", "RESET_TYPES", "SYSTEM", "build_bmc"]

CHASSIS = f"{ROOT}/Chassis/1"
SYSTEM = f"{ROOT}/Systems/1"
POWER_LIMIT = f"{CHASSIS}/Controls/PowerLimit"
_MODES = ("Automatic", "Disabled")
RESET = "ComputerSystem.Reset"
RESET_TYPES = ("On", "GracefulShutdown")  # what the simulated host does; the rest get 400
_POWER_STATES: Mapping[int, str] = {
    ServerPowerState.OFF: "Off",
    ServerPowerState.ON: "On",
    ServerPowerState.POWERING_ON: "PoweringOn",
    ServerPowerState.POWERING_OFF: "PoweringOff",
    ServerPowerState.PAUSED: "Paused",
}


class _PowerLimit:
    """The cap as the BMC holds it: the set point, and whether it is enforced."""

    def __init__(self, store: PointStore, params: PlantParams) -> None:
        self.store = store
        self.maximum = params.server_max_w
        self.setpoint = params.server_max_w
        self.mode = "Automatic"

    def set_setpoint(self, watts: float) -> None:
        self.setpoint = float(watts)
        if self.mode == "Automatic":
            self.store.write_point("power_limit", self.setpoint)

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self.store.write_point(
            "power_limit", self.setpoint if mode == "Automatic" else self.maximum
        )


def _value(point: str) -> Any:
    def read(r: Readings) -> float:
        return r.value(point)

    return read


def build_bmc(
    service: RedfishService,
    store: PointStore,
    params: PlantParams,
    *,
    server_index: int,
    legacy_power: bool = False,
) -> None:
    """The BMC tree of plant server `server_index` on `service`."""
    service.sources["main"] = store.read_points
    cap = _PowerLimit(store, params)
    chassis = ChassisParts(
        service, "1", "RackMount", f"Compute tray {server_index}", rack_offset=server_index + 1
    )
    power = chassis.sensor(
        "TotalPower",
        "Tray input power",
        "Power",
        "W",
        _value("power"),
        context="Chassis",
        peak=True,
    )
    chassis.sensor(
        "CPU1Temp",
        "Accelerator temperature",
        "Temperature",
        "Cel",
        _value("chip_temperature"),
        context="CPU",
        thresholds={
            "UpperCaution": params.throttle_temperature_c - 5.0,
            "UpperCritical": params.throttle_temperature_c,
        },
    )
    chassis.sensor(
        "CoolantOutletTemp",
        "Cold plate coolant outlet temperature",
        "Temperature",
        "Cel",
        _value("coolant_outlet_temperature"),
        context="LiquidOutlet",
        thresholds={"UpperCritical": 60.0},
    )
    limit = chassis.control(
        "PowerLimit",
        name="Tray power limit",
        control_type="Power",
        units="W",
        setpoint=lambda _r: cap.setpoint,
        apply=cap.set_setpoint,
        minimum=params.power_limit_min_w,
        maximum=params.server_max_w,
        default=params.server_max_w,
        mode=lambda: cap.mode,
        modes=_MODES,
        set_mode=cap.set_mode,
        sensor=power,
        context="Chassis",
        implementation="Programmable",
        digits=1,
    )

    def environment(r: Readings) -> Json:
        return {
            "PowerWatts": sensor_excerpt(power, r, "Power"),
            "PowerLimitWatts": control_excerpt(limit, r, "Single"),
        }

    chassis.environment = environment
    chassis.environment_writable = control_writables(limit, ("PowerLimitWatts",))
    chassis.links["ComputerSystems"] = [link(SYSTEM)]
    chassis.properties.update(
        {
            "PowerSubsystem": link(f"{CHASSIS}/PowerSubsystem"),
            "ThermalSubsystem": link(f"{CHASSIS}/ThermalSubsystem"),
            "MaxPowerWatts": params.server_max_w,
            "MinPowerWatts": params.server_idle_w,
        }
    )
    if legacy_power:
        chassis.properties["Power"] = link(f"{CHASSIS}/Power")
        _add_legacy_power(service, cap, power, limit)
    chassis.register()
    _add_subsystems(service, chassis, params)
    _add_system(service, store, server_index)
    add_management(service, [CHASSIS], [SYSTEM])


def _add_subsystems(service: RedfishService, chassis: ChassisParts, params: PlantParams) -> None:
    power_uri = f"{CHASSIS}/PowerSubsystem"
    thermal_uri = f"{CHASSIS}/ThermalSubsystem"
    metrics_uri = f"{thermal_uri}/ThermalMetrics"
    chip = chassis.sensors["CPU1Temp"]
    outlet = chassis.sensors["CoolantOutletTemp"]

    def render_power(_: Readings) -> Json:
        body = head(power_uri, "PowerSubsystem", "Power subsystem")
        body.update({"Status": status(), "CapacityWatts": params.server_max_w})
        return body

    def render_thermal(_: Readings) -> Json:
        body = head(thermal_uri, "ThermalSubsystem", "Thermal subsystem")
        body.update({"Status": status(), "ThermalMetrics": link(metrics_uri)})
        return body

    def render_metrics(r: Readings) -> Json:
        body = head(metrics_uri, "ThermalMetrics", "Thermal metrics")
        body.update(
            {
                "TemperatureSummaryCelsius": {"Internal": sensor_excerpt(chip, r)},
                "TemperatureReadingsCelsius": [
                    sensor_excerpt(chip, r, "Array"),
                    sensor_excerpt(outlet, r, "Array"),
                ],
            }
        )
        return body

    service.add(power_uri, Resource(render_power))
    service.add(thermal_uri, Resource(render_thermal))
    service.add(metrics_uri, Resource(render_metrics))


def _add_legacy_power(
    service: RedfishService, cap: _PowerLimit, power: Any, limit: Control
) -> None:
    """`Chassis/1/Power`, the pre-2020 way: PowerControl[0].PowerLimit.LimitInWatts."""
    uri = f"{CHASSIS}/Power"

    def render(r: Readings) -> Json:
        body = head(uri, "Power", "Power")
        body["PowerControl"] = [
            {
                "@odata.id": f"{uri}#/PowerControl/0",
                "MemberId": "0",
                "Name": "Tray power control",
                "PhysicalContext": "Chassis",
                "PowerConsumedWatts": power.reading(r),
                "PowerCapacityWatts": limit.maximum,
                "PowerLimit": {
                    "LimitInWatts": cap.setpoint if cap.mode == "Automatic" else None,
                    "LimitException": "LogEventOnly",
                    "CorrectionInMs": 1000,
                },
                "Status": status(),
            }
        ]
        return body

    def set_limit(watts: Any) -> None:
        if cap.mode != "Automatic":
            cap.mode = "Automatic"
        cap.set_setpoint(watts)

    writable = Writable("number", set_limit, limit.minimum, limit.maximum, unit="W")
    service.add(
        uri, Resource(render, {("PowerControl", 0, "PowerLimit", "LimitInWatts"): writable})
    )


def _add_system(service: RedfishService, store: PointStore, server_index: int) -> None:
    identity = service.identity
    reset_target, reset = action(SYSTEM, RESET)
    reset["ResetType@Redfish.AllowableValues"] = list(RESET_TYPES)
    service.roots["Systems"] = f"{ROOT}/Systems"
    service.add_collection(
        f"{ROOT}/Systems", "ComputerSystemCollection", "Systems", lambda: [SYSTEM]
    )

    def render(r: Readings) -> Json:
        body = head(SYSTEM, "ComputerSystem", f"Compute node {server_index}")
        labels = placement(service, SYSTEM, server_index + 1)
        body.update(
            {
                "SystemType": "Physical",
                "Manufacturer": identity.manufacturer,
                "Model": identity.model,
                "SerialNumber": identity.serial,
                "PartNumber": "TRAY-0001",
                "UUID": identity.uuid,
                "HostName": f"node{server_index}",
                "AssetTag": labels["AssetTag"],
                "LocationIndicatorActive": labels["LocationIndicatorActive"],
                "PowerState": _POWER_STATES.get(int(r.value("power_state")), "On"),
                "BiosVersion": "1.0.0",
                "Status": status(),
                "ProcessorSummary": {"Count": 2, "Model": "Simulated accelerator"},
                "MemorySummary": {"TotalSystemMemoryGiB": 512},
                "Boot": {
                    "BootSourceOverrideEnabled": "Disabled",
                    "BootSourceOverrideTarget": "None",
                },
                "Links": {
                    "Chassis": [link(CHASSIS)],
                    "ManagedBy": [link(f"{ROOT}/Managers/{identity.manager_id}")],
                },
                "Actions": {f"#{RESET}": dict(reset)},
            }
        )
        return body

    def post_reset(body: Any, _request: RequestInfo) -> Reply:
        reset_type = _reset_type(body)
        try:
            store.write_point("server_power_command", 1.0 if reset_type == "On" else 0.0)
        except ValueError as exc:
            raise RedfishError(400, [message("GeneralError", resolution=str(exc))]) from exc
        service.log_write(SYSTEM)
        return Reply(204)

    service.add(reset_target, Resource(post=post_reset))
    writable: dict[PatchPath, Writable] = {
        path: service.label_writable(SYSTEM, path, kind)
        for path, kind in ((("AssetTag",), "string"), (("LocationIndicatorActive",), "boolean"))
    }
    service.add(SYSTEM, Resource(render, writable))


def _reset_type(body: Any) -> str:
    """The ResetType of a ComputerSystem.Reset, checked as the Base registry words it (the
    parameter is required here: the schema lets a service pick a default, this one does not)."""
    if not isinstance(body, dict):
        raise RedfishError(400, [message("MalformedJSON")])
    unknown = [k for k in body if k != "ResetType" and not k.startswith("@")]
    if unknown:
        raise RedfishError(400, [message("ActionParameterUnknown", RESET, k) for k in unknown])
    if "ResetType" not in body:
        raise RedfishError(400, [message("ActionParameterMissing", RESET, "ResetType")])
    value = body["ResetType"]
    if value not in RESET_TYPES:
        raise RedfishError(
            400, [message("ActionParameterValueNotInList", str(value), "ResetType", RESET)]
        )
    return str(value)
