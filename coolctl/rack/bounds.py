"""Safe setpoint bounds: what an operator may ask of a supply temperature, a flow or a ΔP.

A setpoint a sensor can read is not therefore a safe one. These bounds come from what keeps
the chips out of throttling and the rack dry:

- a supply-temperature setpoint stays `supply_limit_margin_c` under the lowest over-temperature
  limit on a supply temperature, and `supply_floor_margin_c` over the facility water and
  the dew point, where the rack reads them (colder than the water the exchanger cannot reach;
  colder than the dew point the manifolds sweat);
- a flow setpoint stays within what the pump can deliver (`rated_flow_lpm`, else what the meter
  reads), and at least `min_flow_setpoint_lpm_per_kw` per kW of the rack's power. The default,
  1.5 L/min per kW, is the Open Compute Project's design figure for cold-plate racks (ORv3
  / Advanced Cooling Facilities guidance: 1.5 LPM/kW at a 10 K coolant rise). The two bounds
  hold together: on the simulated rack at full power (126 kW), that minimum flow with the
  warmest supply the bounds allow (38 °C: the 45 °C limit less the default 7 K margin) keeps the
  hottest chip at 85.3 °C, under its 87 °C throttle point; with a 5 K margin (40 °C) it
  throttles (`tests/test_setpoint_bounds.py` checks the corners and random setpoints);
- a ΔP setpoint stays under the loop's ΔP at rated flow (`rated_differential_pressure_pa`),
  and over the ΔP that gives the minimum flow per kW along the loop's square-law curve
  (ΔP = rated ΔP × (flow / rated flow)², the affinity of a fixed hydraulic circuit); without
  those ratings, within what its sensor reads.

Pure: the config, the sensor range and the latest values are arguments; `coolctl` wires them
into the control plane (overrides refused with these bounds) and into every tick (an override
is held inside the bounds as they move with the rack's power and the facility water).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from coolctl.config import DeviceKind, LoopConfig, RackConfig
from coolctl.model import Reading

Quantity = Literal["supply", "flow", "pressure"]

PLAUSIBLE_SUPPLY_LIMIT_C = 70.0
"""A liquid supply-temperature limit above this is a typo (°F, or a chip's limit), not a rack:
warm-water cooling runs up to about 45 °C supply (ASHRAE W45), W+ classes a little above."""

_QUANTITY: Mapping[str, Quantity] = {
    "supply_temperature": "supply",
    "supply_temperature_setpoint": "supply",
    "flow": "flow",
    "flow_setpoint": "flow",
    "differential_pressure": "pressure",
    "differential_pressure_setpoint": "pressure",
}
_UNIT: Mapping[Quantity, str] = {"supply": "°C", "flow": "L/min", "pressure": "Pa"}


def quantity_of(point: str) -> Quantity | None:
    """What a measured or commanded point sets, if it is one whose setpoint is bounded here."""
    return _QUANTITY.get(point)


@dataclass(frozen=True, slots=True)
class SetpointBounds:
    """The range a setpoint may take, in `unit`, and why each end sits where it does."""

    low: float
    high: float
    unit: str
    why_low: str
    why_high: str

    def contains(self, value: float) -> bool:
        return math.isfinite(value) and self.low <= value <= self.high

    def clamp(self, value: float) -> float:
        """The value held inside the bounds (an empty range holds it at the high end: safe
        for a flow and a supply temperature alike is what the low end asks)."""
        if self.low > self.high:
            return self.low
        return min(max(value, self.low), self.high)

    def text(self) -> str:
        """`40..180 L/min (low: ...; high: ...)`, as an operator reads it."""
        return f"{_num(self.low)}..{_num(self.high)} {self.unit} ({self.why()})"

    def why(self) -> str:
        return f"low: {self.why_low}; high: {self.why_high}"


def _num(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def supply_limit_c(rack: RackConfig) -> float | None:
    """The lowest over-temperature limit configured on a supply temperature of the rack."""
    limits = [
        limit
        for ref, limit in rack.safety.temperature_limits.items()
        if ref.point == "supply_temperature"
    ]
    return min(limits) if limits else None


def static_bounds(
    rack: RackConfig, quantity: Quantity, sensor: tuple[float, float]
) -> SetpointBounds:
    """The bounds the config alone gives: `sensor` (what the measurement can read, or the
    loop's setpoint_min/setpoint_max) narrowed by the limits and the pump's rating."""
    low, high = sensor
    why_low = why_high = "what the sensor reads, or setpoint_min/setpoint_max"
    safety = rack.safety
    if quantity == "supply":
        limit = supply_limit_c(rack)
        if limit is not None and limit - safety.supply_limit_margin_c < high:
            high = limit - safety.supply_limit_margin_c
            why_high = (
                f"{_num(safety.supply_limit_margin_c)} K under the supply over-temperature"
                f" limit {_num(limit)} °C"
            )
    elif quantity == "flow":
        rated = safety.rated_flow_lpm
        if rated is not None and rated < high:
            high = rated
            why_high = f"what the pump delivers at full speed (rated_flow_lpm {_num(rated)})"
    elif quantity == "pressure":
        rated_dp = safety.rated_differential_pressure_pa
        if rated_dp is not None and rated_dp < high:
            high = rated_dp
            why_high = (
                f"the loop's ΔP at rated flow (rated_differential_pressure_pa {_num(rated_dp)})"
            )
    return SetpointBounds(low, high, _UNIT[quantity], why_low, why_high)


def live_bounds(
    rack: RackConfig,
    static: SetpointBounds,
    quantity: Quantity,
    values: Mapping[str, float],
    power_w: float | None,
) -> SetpointBounds:
    """`static` raised by what the rack reads now: the facility water and dew point (`values`
    by point name, the highest of each) for a supply temperature, the rack's power for a flow.
    """
    safety = rack.safety
    low, why_low = static.low, static.why_low
    if quantity == "supply":
        margin = safety.supply_floor_margin_c
        for point, label in (
            ("facility_supply_temperature", "the facility water"),
            ("dew_point", "the dew point"),
        ):
            reading = values.get(point)
            if reading is not None and math.isfinite(reading) and reading + margin > low:
                low = reading + margin
                why_low = f"{_num(margin)} K over {label} ({_num(reading)} °C)"
    elif quantity == "flow" and power_w is not None and math.isfinite(power_w):
        per_kw = safety.min_flow_setpoint_lpm_per_kw
        needed = per_kw * max(power_w, 0.0) / 1000.0
        if needed > low:
            low = needed
            why_low = f"{_num(per_kw)} L/min per kW of the rack's {power_w / 1000:.1f} kW"
    elif quantity == "pressure" and power_w is not None and math.isfinite(power_w):
        rated_flow, rated_dp = safety.rated_flow_lpm, safety.rated_differential_pressure_pa
        if rated_flow is not None and rated_dp is not None:
            per_kw = safety.min_flow_setpoint_lpm_per_kw
            flow = per_kw * max(power_w, 0.0) / 1000.0
            needed = rated_dp * (flow / rated_flow) ** 2
            if needed > low:
                low = needed
                why_low = (
                    f"the ΔP that gives {_num(flow)} L/min ({_num(per_kw)} per kW of the"
                    f" rack's {power_w / 1000:.1f} kW) on the loop's curve"
                )
    return SetpointBounds(low, static.high, static.unit, why_low, static.why_high)


_LIQUID_POINTS = frozenset(
    {
        "supply_temperature",
        "return_temperature",
        "inlet_temperature",
        "coolant_outlet_temperature",
        "facility_supply_temperature",
        "facility_return_temperature",
    }
)
PLAUSIBLE_CHIP_LIMIT_C = 125.0
"""Above this no accelerator runs: a chip limit beyond it is a typo."""


def config_problems(key: str, rack: RackConfig) -> list[str]:
    """Limits no liquid-cooled rack has: a coolant limit above 70 °C, a chip's above 125."""
    problems: list[str] = []
    safety = rack.safety

    def check(where: str, limit: float | None, plausible: float, what: str) -> None:
        if limit is not None and limit > plausible:
            problems.append(
                f"{key}.safety.{where}: {_num(limit)} °C is not a plausible limit for {what}"
                f" (at most {_num(plausible)} °C; °F by mistake?)"
            )

    for ref, limit in safety.temperature_limits.items():
        if ref.point in _LIQUID_POINTS:
            check(f"temperature_limits.{ref}", limit, PLAUSIBLE_SUPPLY_LIMIT_C, "a coolant")
        elif ref.point == "chip_temperature":
            check(f"temperature_limits.{ref}", limit, PLAUSIBLE_CHIP_LIMIT_C, "a chip")
    check("outlet_limit_c", safety.outlet_limit_c, PLAUSIBLE_SUPPLY_LIMIT_C, "a coolant")
    check("return_limit_c", safety.return_limit_c, PLAUSIBLE_SUPPLY_LIMIT_C, "a coolant")
    check("chip_limit_c", safety.chip_limit_c, PLAUSIBLE_CHIP_LIMIT_C, "a chip")
    return problems


def loop_problems(
    key: str,
    rack: RackConfig,
    quantity: Quantity,
    setpoint: float,
    explicit: tuple[float | None, float | None],
    sensor: tuple[float, float],
) -> list[str]:
    """A loop's configured setpoint and setpoint_min/setpoint_max against the safe bounds."""
    bounds = static_bounds(rack, quantity, sensor)
    problems: list[str] = []
    low_given, high_given = explicit
    if high_given is not None and high_given > bounds.high:
        problems.append(
            f"{key}.setpoint_max: {_num(high_given)} {bounds.unit} is above the safe bound"
            f" {_num(bounds.high)} ({bounds.why_high})"
        )
    if low_given is not None and low_given < bounds.low:
        problems.append(
            f"{key}.setpoint_min: {_num(low_given)} {bounds.unit} is below the safe bound"
            f" {_num(bounds.low)} ({bounds.why_low})"
        )
    if not problems and not bounds.contains(setpoint):
        problems.append(
            f"{key}.setpoint: {_num(setpoint)} {bounds.unit} is outside the safe bounds"
            f" {bounds.text()}"
        )
    return problems


def rack_inputs(
    rack: RackConfig, readings: Iterable[Reading]
) -> tuple[dict[str, float], float | None]:
    """From a rack's usable readings: the highest facility water and dew point, and the rack's
    power (its PDU's, else the sum of its servers')."""
    values: dict[str, float] = {}
    pdu: float | None = None
    servers = 0.0
    seen_server = False
    kinds = {device.id: getattr(device, "kind", None) for device in rack.devices.values()}
    for reading in readings:
        if not reading.usable or reading.value is None or not math.isfinite(reading.value):
            continue
        name, value = reading.point.name, reading.value
        if name in ("facility_supply_temperature", "dew_point"):
            values[name] = max(value, values.get(name, -math.inf))
        elif name == "power":
            kind = kinds.get(reading.point.device)
            if kind == DeviceKind.SERVER:
                servers += value
                seen_server = True
            elif pdu is None:
                pdu = value
    return values, pdu if pdu is not None else (servers if seen_server else None)


def loop_bounds(
    rack: RackConfig,
    loop: LoopConfig,
    sensor: tuple[float, float],
    readings: Iterable[Reading] | None = None,
) -> SetpointBounds | None:
    """A loop's safe setpoint bounds (static, or live from `readings`); None for a loop whose
    measurement is not a supply temperature, flow or ΔP."""
    if loop.measurement.subtrahend is not None:
        return None
    quantity = quantity_of(loop.measurement.minuend.point)
    if quantity is None:
        return None
    bounds = static_bounds(rack, quantity, sensor)
    if readings is None:
        return bounds
    values, power_w = rack_inputs(rack, readings)
    return live_bounds(rack, bounds, quantity, values, power_w)


def hold_inside(
    rack: RackConfig,
    loop: LoopConfig,
    sensor: tuple[float, float],
    readings: Iterable[Reading],
    asked: float,
) -> tuple[float, SetpointBounds | None]:
    """An operator's setpoint held inside the loop's live safe bounds, every tick (the daemon's
    rack runtime and the offline tests call this one function), and the bounds it used."""
    bounds = loop_bounds(rack, loop, sensor, readings)
    return (asked if bounds is None else bounds.clamp(asked)), bounds
