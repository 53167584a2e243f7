"""The chassis every simulated Redfish device has, with its sensors, controls and metrics.

A BMC's server tray, a CDU and a rack PDU each show one chassis: the physical box, its
nameplate, where it sits in the rack (writable, as the OCP profiles ask), and the Sensors and
Controls collections whose members the device-specific resources excerpt. `ChassisParts`
collects those while a device is being built and registers them all at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from coolctl.simulators.redfish_resources import (
    Json,
    PatchPath,
    Readings,
    Resource,
    Writable,
    head,
    link,
    status,
)
from coolctl.simulators.redfish_sensors import (
    Control,
    Peak,
    Sensor,
    control_body,
    control_writables,
    sensor_body,
)
from coolctl.simulators.redfish_service import ROOT, RedfishService

__all__ = ["ChassisParts", "PointStore", "placement_writables"]


class PointStore(Protocol):
    """The simulated device's points (coolctl.model names) and where its set points go."""

    def read_points(self) -> Mapping[str, float]: ...

    def write_point(self, name: str, value: float) -> None: ...


def placement_writables(service: RedfishService, uri: str) -> dict[PatchPath, Writable]:
    """Labels an operator sets on equipment: asset tag, locator LED, place in the rack."""
    paths: dict[PatchPath, str] = {
        ("AssetTag",): "string",
        ("LocationIndicatorActive",): "boolean",
        ("Location", "Placement", "Rack"): "string",
        ("Location", "Placement", "Row"): "string",
    }
    found = {path: service.label_writable(uri, path, kind) for path, kind in paths.items()}
    offset = ("Location", "Placement", "RackOffset")
    found[offset] = Writable("integer", service.label_writable(uri, offset).apply, 0, 60)
    return found


def placement(service: RedfishService, uri: str, rack_offset: int) -> Json:
    """The labels of `placement_writables`, as they are now."""
    rack = service.identity.rack
    return {
        "AssetTag": service.label(uri, ("AssetTag",), ""),
        "LocationIndicatorActive": service.label(uri, ("LocationIndicatorActive",), False),
        "Location": {
            "Placement": {
                "Rack": service.label(uri, ("Location", "Placement", "Rack"), rack),
                "Row": service.label(uri, ("Location", "Placement", "Row"), "row1"),
                "RackOffset": service.label(
                    uri, ("Location", "Placement", "RackOffset"), rack_offset
                ),
                "RackOffsetUnits": "EIA_310",
            }
        },
    }


class ChassisParts:
    """One chassis being built: its sensors, controls, links and extra properties."""

    def __init__(
        self,
        service: RedfishService,
        chassis_id: str,
        chassis_type: str,
        name: str,
        *,
        rack_offset: int = 1,
    ) -> None:
        self.service = service
        self.uri = f"{ROOT}/Chassis/{chassis_id}"
        self.chassis_type = chassis_type
        self.name = name
        self.rack_offset = rack_offset
        self.sensors: dict[str, Sensor] = {}
        self.controls: dict[str, Control] = {}
        self.links: Json = {}
        self.properties: Json = {}
        self.environment: Callable[[Readings], Json] | None = None
        self.environment_writable: dict[PatchPath, Writable] = {}

    @property
    def environment_uri(self) -> str:
        return f"{self.uri}/EnvironmentMetrics"

    def sensor(
        self,
        sensor_id: str,
        name: str,
        reading_type: str,
        units: str,
        read: Callable[[Readings], float | None],
        *,
        peak: bool = False,
        **options: Any,
    ) -> Sensor:
        """A Sensor resource of this chassis (Sensors/{sensor_id})."""
        sensor = Sensor(
            f"{self.uri}/Sensors/{sensor_id}",
            name,
            reading_type,
            units,
            read,
            peak=Peak() if peak else None,
            **options,
        )
        self.sensors[sensor_id] = sensor
        return sensor

    def control(self, control_id: str, **options: Any) -> Control:
        """A Control resource of this chassis (Controls/{control_id})."""
        control = Control(f"{self.uri}/Controls/{control_id}", **options)
        self.controls[control_id] = control
        return control

    def register(self, *, with_collection: bool = True) -> None:
        """Add the chassis, its collections and members to the service (`with_collection`
        False: a service of several chassis lists them in its Chassis collection itself)."""
        service = self.service
        interval = service.sensing_interval_s
        service.roots["Chassis"] = f"{ROOT}/Chassis"
        if with_collection:
            service.add_collection(
                f"{ROOT}/Chassis", "ChassisCollection", "Chassis", lambda: [self.uri]
            )
        sensors = f"{self.uri}/Sensors"
        service.add_collection(
            sensors,
            "SensorCollection",
            "Sensors",
            lambda: [s.uri for s in self._sensors() if s.uri is not None],
        )
        for sensor in self._sensors():
            assert sensor.uri is not None
            service.add(sensor.uri, Resource(_sensor_renderer(sensor, interval)))
        if self.controls:
            service.add_collection(
                f"{self.uri}/Controls",
                "ControlCollection",
                "Controls",
                lambda: [c.uri for c in self.controls.values()],
            )
        for control in self.controls.values():
            service.add(
                control.uri, Resource(_control_renderer(control), control_writables(control))
            )
        if self.environment is not None:
            service.add(
                self.environment_uri,
                Resource(self._render_environment, dict(self.environment_writable)),
            )
        service.add(self.uri, Resource(self._render, placement_writables(service, self.uri)))

    def _sensors(self) -> list[Sensor]:
        return list(self.sensors.values())

    def _render_environment(self, r: Readings) -> Json:
        assert self.environment is not None
        body = head(self.environment_uri, "EnvironmentMetrics", f"{self.name} environment metrics")
        body.update(self.environment(r))
        return body

    def _render(self, r: Readings) -> Json:
        identity = self.service.identity
        body = head(self.uri, "Chassis", self.name)
        body.update(
            {
                "ChassisType": self.chassis_type,
                "Manufacturer": identity.manufacturer,
                "Model": identity.model,
                "SerialNumber": identity.serial,
                "PartNumber": f"{identity.model.split()[0].upper()}-0001",
                "Version": "A1",
                "UUID": identity.uuid,
                "PowerState": "On",
                "Status": status(),
                "Sensors": link(f"{self.uri}/Sensors"),
                "Links": {
                    "ManagedBy": [link(f"{ROOT}/Managers/{identity.manager_id}")],
                    **self.links,
                },
            }
        )
        body.update(placement(self.service, self.uri, self.rack_offset))
        if self.controls:
            body["Controls"] = link(f"{self.uri}/Controls")
        if self.environment is not None:
            body["EnvironmentMetrics"] = link(self.environment_uri)
        for key, value in self.properties.items():
            body[key] = value(r) if callable(value) else value
        return body


def _sensor_renderer(sensor: Sensor, interval_s: float) -> Callable[[Readings], Json]:
    def render(r: Readings) -> Json:
        return sensor_body(sensor, r, interval_s)

    return render


def _control_renderer(control: Control) -> Callable[[Readings], Json]:
    def render(r: Readings) -> Json:
        return control_body(control, r)

    return render
