"""Sensors and controls of the simulated Redfish services, as resources and as excerpts.

Redfish shows each sensor and each set point twice: as a resource of its own
(`/Chassis/{id}/Sensors/{id}`, `/Chassis/{id}/Controls/{id}`) and as an excerpt inside the
resources that use it (a pump's `PumpSpeedPercent`, EnvironmentMetrics' `PowerLimitWatts`). Both
are made here from one `Sensor` or `Control`, and an excerpt carries only the properties the
schema allows in that kind of excerpt (the CSDL's `Redfish.Excerpt` terms), which is what the
DMTF validator checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from coolctl.simulators.redfish_resources import (
    Json,
    PatchPath,
    Readings,
    Writable,
    head,
    iso_time,
    status,
)

__all__ = [
    "Control",
    "Peak",
    "Sensor",
    "control_body",
    "control_excerpt",
    "control_writables",
    "sensor_body",
    "sensor_excerpt",
]

# --------------------------------------------------------------------------- sensors

# What each kind of sensor excerpt may carry besides Reading and DataSourceUri (Sensor CSDL).
_EXCERPT_EXTRAS: Mapping[str, frozenset[str]] = {
    "": frozenset(),
    "Power": frozenset({"ApparentVA", "ReactiveVAR", "PowerFactor", "PhaseAngleDegrees"}),
    "EnergykWh": frozenset({"ApparentkVAh", "ReactivekVARh", "LifetimeReading", "SensorResetTime"}),
    "Current": frozenset({"CrestFactor", "THDPercent"}),
    "Voltage": frozenset({"CrestFactor", "THDPercent"}),
    "Pump": frozenset({"SpeedRPM"}),
}


class Peak:
    """The highest reading a sensor has reported since it was reset, and when."""

    __slots__ = ("time", "value")

    def __init__(self) -> None:
        self.value: float | None = None
        self.time = ""

    def update(self, reading: float | None) -> None:
        if reading is not None and (self.value is None or reading > self.value):
            self.value = reading
            self.time = iso_time()


@dataclass(frozen=True, slots=True)
class Sensor:
    """One sensor: what it measures and how a reading is taken from a request's Readings.

    `uri` None is a reading shown only inside other resources (an outlet's voltage), with no
    Sensor resource of its own. `extra` adds kind-specific properties (power factor, reset
    time); `thresholds` maps UpperCaution, UpperCritical, ... to a reading.
    """

    uri: str | None
    name: str
    reading_type: str
    units: str
    read: Callable[[Readings], float | None]
    context: str | None = None
    electrical: str | None = None
    digits: int = 2
    thresholds: Mapping[str, float] = field(default_factory=dict)
    extra: Callable[[Readings], Json] | None = None
    peak: Peak | None = None

    def reading(self, r: Readings) -> float | None:
        value = self.read(r)
        if value is None or not math.isfinite(value):
            return None
        value = round(value, self.digits)
        if self.peak is not None:
            self.peak.update(value)
        return value


def sensor_excerpt(sensor: Sensor, r: Readings, kind: str = "") -> Json:
    """The sensor as an excerpt of `kind`: "" (generic), "Power", "EnergykWh", "Array"...

    Array excerpts (a list of temperatures) also say where each sensor is.
    """
    body: Json = {"Reading": sensor.reading(r)}
    if sensor.uri is not None:
        body["DataSourceUri"] = sensor.uri
    if kind.endswith("Array") and sensor.context is not None:
        body["PhysicalContext"] = sensor.context
    if sensor.extra is not None:
        allowed = _EXCERPT_EXTRAS[kind.removesuffix("Array")]
        body.update({k: v for k, v in sensor.extra(r).items() if k in allowed})
    return body


def sensor_body(sensor: Sensor, r: Readings, sensing_interval_s: float) -> Json:
    """The Sensor resource."""
    if sensor.uri is None:
        raise ValueError(f"sensor {sensor.name!r} has no resource of its own")
    body = head(sensor.uri, "Sensor", sensor.name)
    body.update(
        {
            "ReadingType": sensor.reading_type,
            "ReadingUnits": sensor.units,
            "Reading": sensor.reading(r),
            "ReadingTime": iso_time(),
            "SensingInterval": f"PT{sensing_interval_s:g}S",
            "Status": status(),
        }
    )
    if sensor.context is not None:
        body["PhysicalContext"] = sensor.context
    if sensor.electrical is not None:
        body["ElectricalContext"] = sensor.electrical
    if sensor.thresholds:
        body["Thresholds"] = {
            name: {
                "Reading": value,
                "Activation": "Increasing" if "Upper" in name else "Decreasing",
            }
            for name, value in sensor.thresholds.items()
        }
    if sensor.peak is not None and sensor.peak.value is not None:
        body["PeakReading"] = sensor.peak.value
        body["PeakReadingTime"] = sensor.peak.time
    if sensor.extra is not None:
        body.update(sensor.extra(r))
    return body


# --------------------------------------------------------------------------- controls


@dataclass(frozen=True, slots=True)
class Control:
    """One set point: where it is, its bounds, and how it is read and applied.

    `apply` None makes it read-only (a control the simulated device shows but does not run).
    `modes` lists the ControlMode values a client may write; empty keeps the mode fixed.
    """

    uri: str
    name: str
    control_type: str
    units: str
    setpoint: Callable[[Readings], float]
    apply: Callable[[float], None] | None
    minimum: float
    maximum: float
    mode: Callable[[], str]
    sensor: Sensor | None = None
    default: float | None = None
    context: str | None = None
    modes: tuple[str, ...] = ()
    set_mode: Callable[[str], None] | None = None
    implementation: str = "Direct"
    digits: int = 3


def _setpoint(control: Control, r: Readings) -> float:
    return round(control.setpoint(r), control.digits)


def control_body(control: Control, r: Readings) -> Json:
    """The Control resource."""
    body = head(control.uri, "Control", control.name)
    body.update(
        {
            "ControlType": control.control_type,
            "SetPointType": "Single",
            "SetPoint": _setpoint(control, r),
            "SetPointUnits": control.units,
            "AllowableMin": control.minimum,
            "AllowableMax": control.maximum,
            "ControlMode": control.mode(),
            "Implementation": control.implementation,
            "Status": status(),
        }
    )
    if control.default is not None:
        body["DefaultSetPoint"] = control.default
    if control.context is not None:
        body["PhysicalContext"] = control.context
    if control.sensor is not None:
        body["Sensor"] = sensor_excerpt(control.sensor, r)
    return body


def control_excerpt(control: Control, r: Readings, kind: str = "Single") -> Json:
    """The control as an excerpt: "Single" (EnvironmentMetrics) or "SingleLoop" (pumps...)."""
    body: Json = {
        "SetPoint": _setpoint(control, r),
        "AllowableMin": control.minimum,
        "AllowableMax": control.maximum,
        "ControlMode": control.mode(),
        "DataSourceUri": control.uri,
    }
    if kind == "Single" and control.default is not None:
        body["DefaultSetPoint"] = control.default
    if control.sensor is not None:
        body["Reading"] = control.sensor.reading(r)
    return body


def control_writables(control: Control, prefix: PatchPath = ()) -> dict[PatchPath, Writable]:
    """What a PATCH may set of this control, in the resource itself or in an excerpt."""
    found: dict[PatchPath, Writable] = {}
    if control.apply is not None:
        found[(*prefix, "SetPoint")] = Writable(
            "number", control.apply, control.minimum, control.maximum, unit=control.units
        )
    if control.modes and control.set_mode is not None:
        found[(*prefix, "ControlMode")] = Writable("enum", control.set_mode, allowed=control.modes)
    return found
