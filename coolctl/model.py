"""The shared vocabulary of coolctl: points, readings, commands and canonical point names.

Every layer speaks in these types, so a driver, a controller and a simulator can be written
without knowing each other. Units are fixed per canonical point here and nowhere else.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass


class Unit(enum.StrEnum):
    """Units used in code. SI base units, except flow in litres per minute (the industry's)."""

    CELSIUS = "celsius"
    PASCAL = "pascals"
    WATT = "watts"
    AMPERE = "amperes"
    VOLT = "volts"
    JOULE = "joules"
    LITRE = "litres"
    LITRE_PER_MINUTE = "litres_per_minute"
    RATIO = "ratio"  # 0..1
    BOOLEAN = "boolean"  # 0 or 1
    SECOND = "seconds"
    STATE = "state"  # an enumerated state: the value is a code of the point's enum (CDU_MODES)


class CduControlMode(enum.IntEnum):
    """What a CDU that runs its own loops is controlling: the canonical codes of the
    `cdu_control_mode` point. A profile maps its device's raw codes to these names (`states`)."""

    STOPPED = 0  # pumps stopped on command
    MANUAL = 1  # pump speed and valve set directly (coolctl's "direct" control)
    AUTO_FLOW = 2  # pump on a flow setpoint, valve on a supply-temperature setpoint
    AUTO_PRESSURE = 3  # pump on a differential-pressure setpoint, valve on supply temperature
    AUTO_FLOW_TEMPERATURE = 4  # pump on flow and return temperature, valve on supply temperature
    LOCAL = 5  # the CDU's own panel has control; remote commands are refused


class ServerPowerState(enum.IntEnum):
    """A server's power as its BMC reports it (Redfish ComputerSystem `PowerState`): the
    canonical codes of the `power_state` point."""

    OFF = 0
    ON = 1
    POWERING_ON = 2
    POWERING_OFF = 3  # a graceful shutdown under way: the OS is still stopping
    PAUSED = 4


# Enumerated points and the enum their codes belong to.
POINT_STATES: Mapping[str, type[enum.IntEnum]] = {
    "cdu_control_mode": CduControlMode,
    "power_state": ServerPowerState,
}


@dataclass(frozen=True, slots=True)
class PointSpec:
    """What a canonical point means and in which unit its values are."""

    name: str
    unit: Unit
    description: str


def _specs(*specs: PointSpec) -> dict[str, PointSpec]:
    return {spec.name: spec for spec in specs}


CANONICAL_POINTS: Mapping[str, PointSpec] = _specs(
    # CDU, secondary (rack) side
    PointSpec("supply_temperature", Unit.CELSIUS, "coolant leaving the CDU to the rack"),
    PointSpec("return_temperature", Unit.CELSIUS, "coolant temperature coming back from the rack"),
    PointSpec("flow", Unit.LITRE_PER_MINUTE, "secondary coolant flow"),
    PointSpec("differential_pressure", Unit.PASCAL, "secondary supply minus return pressure"),
    PointSpec("pump_speed", Unit.RATIO, "measured pump speed as a fraction of full speed"),
    PointSpec("pump_speed_command", Unit.RATIO, "commanded pump speed as a fraction of full speed"),
    PointSpec("pump_power", Unit.WATT, "pump electrical power"),
    PointSpec("pump_running", Unit.BOOLEAN, "1 while the active pump turns, 0 when it has failed"),
    PointSpec("standby_pump_active", Unit.BOOLEAN, "1 when the standby pump has taken over"),
    PointSpec("heat_removed", Unit.WATT, "heat moved from the rack loop to facility water"),
    PointSpec("reservoir_level", Unit.LITRE, "coolant in the CDU reservoir"),
    PointSpec("leak_detected", Unit.BOOLEAN, "1 while a leak detector is wet"),
    PointSpec("isolation_valve_command", Unit.BOOLEAN, "1 opens the rack's isolation valves"),
    # CDU that runs its own loops: setpoints and commands it takes (cdu_control = "setpoints")
    PointSpec("supply_temperature_setpoint", Unit.CELSIUS, "the CDU's supply target"),
    PointSpec("flow_setpoint", Unit.LITRE_PER_MINUTE, "the CDU's secondary flow target"),
    PointSpec("differential_pressure_setpoint", Unit.PASCAL, "the CDU's secondary pressure target"),
    PointSpec("cdu_run_command", Unit.BOOLEAN, "1 asks the CDU to run its pumps, 0 to stop"),
    PointSpec("cdu_remote", Unit.BOOLEAN, "1 while the CDU accepts remote commands"),
    PointSpec("cdu_control_mode", Unit.STATE, "what the CDU's own loops control (CduControlMode)"),
    # CDU alarms (1 = active), each an event and, where configured, an interlock
    PointSpec("filter_clogged_alarm", Unit.BOOLEAN, "filter differential pressure too high"),
    PointSpec("low_level_alarm", Unit.BOOLEAN, "reservoir level low"),
    PointSpec("conductivity_alarm", Unit.BOOLEAN, "coolant conductivity out of range"),
    PointSpec("ph_alarm", Unit.BOOLEAN, "coolant pH out of range"),
    PointSpec("high_pressure_alarm", Unit.BOOLEAN, "secondary pressure too high"),
    PointSpec("low_pressure_alarm", Unit.BOOLEAN, "secondary or pump-inlet pressure too low"),
    PointSpec("pump_1_fault", Unit.BOOLEAN, "pump 1 (or its drive) reports a fault"),
    PointSpec("pump_2_fault", Unit.BOOLEAN, "pump 2 (or its drive) reports a fault"),
    PointSpec("pump_3_fault", Unit.BOOLEAN, "pump 3 (or its drive) reports a fault"),
    PointSpec("dew_point_alarm", Unit.BOOLEAN, "supply at or below the dew point"),
    PointSpec("sensor_fault_alarm", Unit.BOOLEAN, "the CDU reports one of its sensors failed"),
    PointSpec("alarm_acknowledge", Unit.BOOLEAN, "writing 1 acknowledges the CDU's latched alarms"),
    # room around the rack: the condensation guard's inputs
    PointSpec("dew_point", Unit.CELSIUS, "dew point of the air around the rack"),
    PointSpec("room_temperature", Unit.CELSIUS, "air temperature around the rack"),
    PointSpec("room_humidity", Unit.RATIO, "relative humidity of the air around the rack"),
    # CDU, primary (facility) side
    PointSpec("facility_supply_temperature", Unit.CELSIUS, "facility water entering the CDU"),
    PointSpec("facility_return_temperature", Unit.CELSIUS, "facility water leaving the CDU"),
    PointSpec("primary_flow", Unit.LITRE_PER_MINUTE, "facility water flow through the exchanger"),
    PointSpec("valve_position", Unit.RATIO, "measured primary valve opening"),
    PointSpec("valve_command", Unit.RATIO, "commanded primary valve opening"),
    # PDU and servers
    PointSpec("power", Unit.WATT, "electrical power drawn by the device"),
    PointSpec("energy", Unit.JOULE, "electrical energy counted by the device"),
    PointSpec("power_limit", Unit.WATT, "power cap in force on a server"),
    PointSpec("power_state", Unit.STATE, "a server's power state (ServerPowerState)"),
    PointSpec(
        "server_power_command",
        Unit.BOOLEAN,
        "0 shuts a server down gracefully, 1 powers it on; reads 0 once it is off or on its way",
    ),
    PointSpec("current", Unit.AMPERE, "RMS current drawn at the device's inlet"),
    PointSpec("voltage", Unit.VOLT, "RMS voltage at the device's inlet"),
    PointSpec("feed_power", Unit.WATT, "power drawn through one feed (A or B) of the rack"),
    # PDU tables: one reading per row, named `point.index` (see indexed_point)
    PointSpec("phase_current", Unit.AMPERE, "RMS current of one inlet phase (per phase)"),
    PointSpec("phase_voltage", Unit.VOLT, "RMS voltage of one inlet phase (per phase)"),
    PointSpec("phase_power", Unit.WATT, "active power through one inlet phase (per phase)"),
    PointSpec("branch_current", Unit.AMPERE, "current through one branch circuit (per branch)"),
    PointSpec("branch_rating", Unit.AMPERE, "rated current of a branch circuit's breaker"),
    PointSpec("outlet_power", Unit.WATT, "active power drawn at one outlet (per outlet)"),
    PointSpec("outlet_current", Unit.AMPERE, "RMS current drawn at one outlet (per outlet)"),
    PointSpec("outlet_energy", Unit.JOULE, "energy counted at one outlet (per outlet)"),
    # power shelves (PSUs with battery backup units)
    PointSpec("output_power", Unit.WATT, "power delivered by a power shelf to the rack's bus"),
    PointSpec("psu_ok", Unit.BOOLEAN, "1 while a power supply reports OK (per PSU)"),
    PointSpec("bbu_charge", Unit.RATIO, "state of charge of a battery backup unit (per BBU)"),
    PointSpec("bbu_discharging", Unit.BOOLEAN, "1 while a battery backup unit discharges"),
    PointSpec("chip_temperature", Unit.CELSIUS, "hottest processor temperature of a server"),
    PointSpec(
        "chip_throttle_temperature",
        Unit.CELSIUS,
        "where a server's chips throttle, as its BMC reports it (the sensor's critical threshold)",
    ),
    PointSpec("coolant_outlet_temperature", Unit.CELSIUS, "coolant temperature leaving a server"),
    PointSpec("inlet_temperature", Unit.CELSIUS, "air or coolant temperature at the rack inlet"),
    # upstream
    PointSpec(
        "power_budget", Unit.WATT, "the rack's power budget as an upstream coordinator sets it"
    ),
)


INDEX_SEPARATOR = "."


def indexed_point(name: str, index: str) -> str:
    """The name of one row of a table point: `outlet_power` of outlet 12 is `outlet_power.12`.

    Table points (per outlet, branch, phase, PSU) share one canonical name and unit; the index
    after the separator tells the rows apart."""
    return f"{name}{INDEX_SEPARATOR}{index}"


def base_point(name: str) -> str:
    """The canonical name of a point, without the index of a table row."""
    return name.split(INDEX_SEPARATOR, 1)[0]


class Quality(enum.StrEnum):
    """How far a reading may be trusted. Only `good` readings drive automatic control."""

    GOOD = "good"
    STALE = "stale"  # the value is old: the device has not answered within its timeout
    BAD = "bad"  # the device answered with an error or with something that makes no sense
    MISSING = "missing"  # there has never been a value


class Source(enum.StrEnum):
    """Who asked for a command; listed as the safety supervisor ranks them, lowest first.

    Per actuator, an interlock beats an operator override, which beats failsafe, which takes
    the place of automatic control while the rack is blind (control/supervisor.py). Failsafe is
    also the source of the hand-back values sent at shutdown. The supervisor applies this order
    itself; members compare as their strings, so nothing should rank them with `<`.
    """

    AUTO = "auto"
    FAILSAFE = "failsafe"
    OVERRIDE = "override"
    INTERLOCK = "interlock"


class RackMode(enum.StrEnum):
    """Who drives a rack: AUTO, its loops; MANUAL, only operator overrides and interlocks.

    The values are what the control API, the CLI, MQTT and the store's SQLite say.
    """

    AUTO = "auto"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True, order=True)
class PointId:
    """One named quantity on one device of one rack: `rack/device/name`."""

    rack: str
    device: str
    name: str

    @classmethod
    def parse(cls, text: str) -> PointId:
        parts = text.split("/")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"point {text!r} is not of the form rack/device/point")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.rack}/{self.device}/{self.name}"

    @property
    def unit(self) -> Unit | None:
        spec = CANONICAL_POINTS.get(base_point(self.name))
        return spec.unit if spec else None


@dataclass(frozen=True, slots=True)
class Reading:
    """A value seen at a monotonic time `ts` (seconds), with its quality.

    `value` is None for `missing` readings and for `bad` ones that carry nothing usable.
    """

    point: PointId
    value: float | None
    ts: float
    quality: Quality

    @property
    def usable(self) -> bool:
        return self.quality is Quality.GOOD and self.value is not None


@dataclass(frozen=True, slots=True)
class Command:
    """A request to move an actuator point to `value`, with who asked and why."""

    point: PointId
    value: float
    source: Source
    reason: str


class Snapshot(Mapping[PointId, Reading]):
    """The latest reading of every point, as seen at time `now` (monotonic seconds).

    Controllers receive a snapshot and the time; they never look anything up elsewhere.
    """

    __slots__ = ("_readings", "now")

    def __init__(self, readings: Iterable[Reading], now: float) -> None:
        self._readings: dict[PointId, Reading] = {r.point: r for r in readings}
        self.now = now

    def __getitem__(self, point: PointId) -> Reading:
        return self._readings[point]

    def __iter__(self) -> Iterator[PointId]:
        return iter(self._readings)

    def __len__(self) -> int:
        return len(self._readings)

    def value(self, point: PointId) -> float | None:
        """The value of a good reading, or None if it is absent or not good."""
        reading = self._readings.get(point)
        return reading.value if reading is not None and reading.usable else None


class Severity(enum.StrEnum):
    """How loud an event is: info for decisions, warning for trouble, critical for safety."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened and that operators should be able to read back.

    `kind` is a short machine word (`interlock_leak`, `failsafe`, `override_set`, …);
    `ts` is monotonic seconds like every other time in the daemon.
    """

    rack: str
    kind: str
    severity: Severity
    message: str
    ts: float
    source: str = "supervisor"
