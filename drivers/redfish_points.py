"""Redfish resources as coolctl points: the mapping table, discovery by links, evaluation.

The mapping is data (POINT_SOURCES): for each canonical point of a device kind, the Redfish
properties that may hold it, newest schema first (Controls, EnvironmentMetrics, Sensors, the
CoolingUnit and PowerDistribution families), legacy (Power, Thermal) last. Which of them a given
service has is found once, by following links from the service root (LINKS) and binding each
point to the first source the service declares. Every poll then reads the bound resources and
evaluates the bound properties; nothing here knows a vendor or a URI beyond /redfish/v1.

A device answering with something unexpected spoils only the points bound to what it broke:
evaluation turns every surprise (missing property, wrong type, null, NaN, an array too long)
into a "bad" verdict for the points concerned, never an exception for the poll.
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .redfish_transport import Failure, FailureKind, Fetched, safe_text

Kind = Literal["server", "cdu", "pdu"]
KINDS: Final[tuple[Kind, ...]] = ("server", "cdu", "pdu")
SERVICE_ROOT: Final = "/redfish/v1/"

MAX_MEMBERS: Final = 1024  # collection members followed; more is a broken or hostile service
MAX_ARRAY: Final = 1024  # array elements evaluated; a longer array spoils its points
MAX_RESOURCES: Final = 4096  # resources read in one discovery

# Unit conversions into coolctl's units (model.Unit).
KILO: Final = 1000.0  # kW -> W, kPa -> Pa
KWH: Final = 3.6e6  # kWh -> J
WH: Final = 3600.0  # Wh -> J
PERCENT: Final = 0.01  # % -> ratio


class Role(enum.StrEnum):
    """What a resource is to the mapping table (its schema, and where it hangs)."""

    ENVIRONMENT = "EnvironmentMetrics"
    SENSOR = "Sensor"
    CONTROL = "Control"
    POWER = "Power"  # legacy Chassis Power
    THERMAL = "Thermal"  # legacy Chassis Thermal
    COOLANT_CONNECTOR = "CoolantConnector"  # a server's own (ThermalSubsystem)
    PRIMARY_CONNECTOR = "PrimaryCoolantConnector"  # a CDU's facility side
    SECONDARY_CONNECTOR = "SecondaryCoolantConnector"  # a CDU's rack side
    PUMP = "Pump"
    LEAK_DETECTION = "LeakDetection"
    LEAK_DETECTOR = "LeakDetector"
    RESERVOIR = "Reservoir"
    PDU_METRICS = "PowerDistributionMetrics"
    MAINS = "Mains"
    PSU = "PowerSupply"  # a power shelf's (or a PDU chassis's) power supplies
    PSU_METRICS = "PowerSupplyMetrics"
    BATTERY = "Battery"  # a power shelf's battery backup units
    BATTERY_METRICS = "BatteryMetrics"
    SYSTEM = "ComputerSystem"  # the server's host, linked from its chassis


@dataclass(frozen=True, slots=True)
class Link:
    """A link followed during discovery: `prop` of the resource (or of its `Links` object)
    holds {"@odata.id": ...} or a list of them. The target takes `role` (its members do, for
    a collection), and `follow` goes on from each target."""

    prop: str
    role: Role | None = None
    collection: bool = False
    follow: tuple[Link, ...] = ()
    in_links: bool = False


_LEAK = Link(
    "LeakDetection",
    Role.LEAK_DETECTION,
    follow=(Link("LeakDetectors", Role.LEAK_DETECTOR, collection=True),),
)

_PSUS = Link(
    "PowerSupplies",
    Role.PSU,
    collection=True,
    follow=(Link("Metrics", Role.PSU_METRICS),),
)
# A power shelf (PowerDistribution, EquipmentType PowerShelf): its PowerSupplies link (DMTF's
# mockups keep it, deprecated since v1_3_0 for the chassis's), and its chassis's
# PowerSubsystem with the power supplies and the battery backup units.
_SHELF_PARTS: Final = (
    _PSUS,
    Link(
        "Chassis",
        in_links=True,
        follow=(
            Link(
                "PowerSubsystem",
                follow=(
                    _PSUS,
                    Link(
                        "Batteries",
                        Role.BATTERY,
                        collection=True,
                        follow=(Link("Metrics", Role.BATTERY_METRICS),),
                    ),
                ),
            ),
        ),
    ),
)

# From the device's resource (a Chassis, a CoolingUnit, a PowerDistribution) to everything the
# mapping table reads.
LINKS: Final[Mapping[Kind, tuple[Link, ...]]] = {
    "server": (
        Link("Controls", Role.CONTROL, collection=True),
        Link("EnvironmentMetrics", Role.ENVIRONMENT),
        Link("Sensors", Role.SENSOR, collection=True),
        Link(
            "ThermalSubsystem",
            follow=(Link("CoolantConnectors", Role.COOLANT_CONNECTOR, collection=True), _LEAK),
        ),
        Link("Power", Role.POWER),
        Link("Thermal", Role.THERMAL),
    ),
    "cdu": (
        Link("SecondaryCoolantConnectors", Role.SECONDARY_CONNECTOR, collection=True),
        Link("PrimaryCoolantConnectors", Role.PRIMARY_CONNECTOR, collection=True),
        Link("Pumps", Role.PUMP, collection=True),
        _LEAK,
        Link("Reservoirs", Role.RESERVOIR, collection=True),
        Link(
            "Chassis",
            in_links=True,
            follow=(Link("Controls", Role.CONTROL, collection=True),),
        ),
    ),
    "pdu": (
        Link("Metrics", Role.PDU_METRICS),
        Link("Mains", Role.MAINS, collection=True),
        *_SHELF_PARTS,
        # the PowerShelves collection itself: the rack's power is the sum of its shelves
        Link(
            "Members",
            follow=(
                Link("Metrics", Role.PDU_METRICS),
                Link("Mains", Role.MAINS, collection=True),
                *_SHELF_PARTS,
            ),
        ),
    ),
}

# A server's host (the chassis's ComputerSystem): its PowerState and the ComputerSystem.Reset
# that shuts it down; every one a multi-node chassis links. Followed only for devices asked to
# (`host_power`): one more GET per host per poll of every BMC, for a rack that shuts its
# servers down on a leak.
HOST_LINK: Final = Link("ComputerSystems", Role.SYSTEM, in_links=True)

Match = Mapping[str, frozenset[str | None]]  # property -> accepted values (None: absent)
Combine = Literal["first", "max", "min", "sum", "any", "most_on"]


@dataclass(frozen=True, slots=True)
class Source:
    """One place a point may be read (and perhaps written).

    `members` leads from the resource to the object(s) holding the value ("*" spans an
    array); `match` filters them (any one alternative, all its properties); `leaf` leads from
    a member to the value. `combine` says how members make one value: the first in use, the
    largest, the sum, "any" (1 if any member says so), or "most_on" (of several hosts'
    power states, the one furthest from off, HOST_POWER_RANK). Values are multiplied by `scale`
    (and by the member's `factor` property) into coolctl's units. A `setpoint` source is
    writable, within the member's `minimum`/`maximum` properties or else `default_range`
    (device units).
    """

    role: Role
    leaf: tuple[str, ...]
    members: tuple[str, ...] = ()
    match: tuple[Match, ...] = ()
    scale: float = 1.0
    factor: tuple[str, ...] | None = None
    combine: Combine = "first"
    decode: Literal["number", "leak", "health", "discharging", "power_state", "powered"] = "number"
    setpoint: bool = False
    minimum: tuple[str, ...] | None = None
    maximum: tuple[str, ...] | None = None
    default_range: tuple[float, float] = (-math.inf, math.inf)

    def pattern(self) -> str:
        """Where the value sits, as a JSON pointer pattern ("*" for any array index)."""
        return "#/" + "/".join((*self.members, *self.leaf))


def _set(*values: str | None) -> frozenset[str | None]:
    return frozenset(values)


def _sensor(
    reading_types: frozenset[str | None],
    contexts: frozenset[str | None],
    units: frozenset[str | None] | None = None,
) -> tuple[Match, ...]:
    """Sensors of a kind and context; `units` also accepts sensors that state only their
    units (some services leave ReadingType out of temperature sensors)."""
    alternatives: list[Match] = [{"ReadingType": reading_types, "PhysicalContext": contexts}]
    if units is not None:
        alternatives.append(
            {"ReadingType": _set(None), "ReadingUnits": units, "PhysicalContext": contexts}
        )
    return tuple(alternatives)


SERVER_WIDE: Final = _set("Chassis", "SystemBoard", None)
CHIPS: Final = _set("CPU", "CPUSubsystem", "GPU", "GPUSubsystem", "FPGA", "Accelerator", "ASIC")
ALLOWABLE_MIN: Final = ("AllowableMin",)
ALLOWABLE_MAX: Final = ("AllowableMax",)


_LEAK_SOURCES: Final = (
    Source(Role.LEAK_DETECTOR, ("DetectorState",), decode="leak", combine="any"),
    Source(
        Role.LEAK_DETECTION,
        ("DetectorState",),
        members=("LeakDetectorGroups", "*", "Detectors", "*"),
        decode="leak",
        combine="any",
    ),
)


# The mapping table: canonical point -> where it may be found, preferred source first.
def _cdu_setpoint(
    excerpt: str, control_type: str, scale: float, default_range: tuple[float, float]
) -> tuple[Source, ...]:
    """A CDU set point: the secondary connector's excerpt, else a Control of that type in the
    cooling subsystem (AllowableMin/AllowableMax bound the write either way)."""
    return (
        Source(
            Role.SECONDARY_CONNECTOR,
            (excerpt, "SetPoint"),
            scale=scale,
            setpoint=True,
            default_range=default_range,
            minimum=(excerpt, "AllowableMin"),
            maximum=(excerpt, "AllowableMax"),
        ),
        Source(
            Role.CONTROL,
            ("SetPoint",),
            match=(
                {"ControlType": _set(control_type), "PhysicalContext": _set("CoolingSubsystem")},
            ),
            scale=scale,
            setpoint=True,
            default_range=default_range,
            minimum=ALLOWABLE_MIN,
            maximum=ALLOWABLE_MAX,
        ),
    )


POINT_SOURCES: Final[Mapping[Kind, Mapping[str, tuple[Source, ...]]]] = {
    "server": {
        "power": (
            Source(Role.ENVIRONMENT, ("PowerWatts", "Reading")),
            Source(Role.SENSOR, ("Reading",), match=_sensor(_set("Power"), SERVER_WIDE)),
            Source(Role.POWER, ("PowerConsumedWatts",), members=("PowerControl", "*")),
        ),
        "power_limit": (
            Source(
                Role.CONTROL,
                ("SetPoint",),
                match=({"ControlType": _set("Power"), "PhysicalContext": SERVER_WIDE},),
                setpoint=True,
                default_range=(0.0, math.inf),
                minimum=ALLOWABLE_MIN,
                maximum=ALLOWABLE_MAX,
            ),
            Source(
                Role.ENVIRONMENT,
                ("PowerLimitWatts", "SetPoint"),
                setpoint=True,
                default_range=(0.0, math.inf),
                minimum=("PowerLimitWatts", "AllowableMin"),
                maximum=("PowerLimitWatts", "AllowableMax"),
            ),
            Source(
                Role.POWER,
                ("PowerLimit", "LimitInWatts"),
                members=("PowerControl", "*"),
                setpoint=True,
                maximum=("PowerCapacityWatts",),
                default_range=(0.0, math.inf),
            ),
        ),
        "energy": (
            Source(Role.ENVIRONMENT, ("EnergykWh", "Reading"), scale=KWH),
            Source(Role.ENVIRONMENT, ("EnergyJoules", "Reading")),
            Source(
                Role.SENSOR, ("Reading",), match=_sensor(_set("EnergykWh"), SERVER_WIDE), scale=KWH
            ),
            Source(Role.SENSOR, ("Reading",), match=_sensor(_set("EnergyJoules"), SERVER_WIDE)),
            Source(
                Role.SENSOR, ("Reading",), match=_sensor(_set("EnergyWh"), SERVER_WIDE), scale=WH
            ),
        ),
        "chip_temperature": (
            Source(
                Role.SENSOR,
                ("Reading",),
                match=_sensor(_set("Temperature"), CHIPS, units=_set("Cel")),
                combine="max",
            ),
            Source(
                Role.THERMAL,
                ("ReadingCelsius",),
                members=("Temperatures", "*"),
                match=({"PhysicalContext": CHIPS},),
                combine="max",
            ),
        ),
        # the chip sensor's own critical threshold: where the BMC's chips throttle
        "chip_throttle_temperature": (
            Source(
                Role.SENSOR,
                ("Thresholds", "UpperCritical", "Reading"),
                match=_sensor(_set("Temperature"), CHIPS, units=_set("Cel")),
            ),
        ),
        "coolant_outlet_temperature": (
            Source(Role.COOLANT_CONNECTOR, ("ReturnTemperatureCelsius", "Reading"), combine="max"),
            Source(
                Role.SENSOR,
                ("Reading",),
                match=_sensor(_set("Temperature"), _set("LiquidOutlet"), units=_set("Cel")),
                combine="max",
            ),
        ),
        "leak_detected": _LEAK_SOURCES,
        # the host's PowerState (ServerPowerState codes), and the same read as what a
        # ComputerSystem.Reset asked for: 0 once off or powering off, 1 once on or powering on.
        # A multi-node chassis links several hosts, every one bound: the point is the host
        # furthest from off (HOST_POWER_RANK), so it reads Off only once every host is Off,
        # and 0 only once every host is off or on its way
        "power_state": (
            Source(Role.SYSTEM, ("PowerState",), decode="power_state", combine="most_on"),
        ),
        "server_power_command": (
            Source(Role.SYSTEM, ("PowerState",), decode="powered", combine="max"),
        ),
    },
    "cdu": {
        "supply_temperature": (
            Source(
                Role.SECONDARY_CONNECTOR, ("SupplyTemperatureCelsius", "Reading"), combine="max"
            ),
        ),
        "return_temperature": (
            Source(
                Role.SECONDARY_CONNECTOR, ("ReturnTemperatureCelsius", "Reading"), combine="max"
            ),
        ),
        "flow": (
            Source(Role.SECONDARY_CONNECTOR, ("FlowLitersPerMinute", "Reading"), combine="sum"),
        ),
        "differential_pressure": (
            Source(
                Role.SECONDARY_CONNECTOR, ("DeltaPressurekPa", "Reading"), scale=KILO, combine="max"
            ),
        ),
        "heat_removed": (
            Source(
                Role.SECONDARY_CONNECTOR, ("HeatRemovedkW", "Reading"), scale=KILO, combine="sum"
            ),
            Source(Role.PRIMARY_CONNECTOR, ("HeatRemovedkW", "Reading"), scale=KILO, combine="sum"),
        ),
        "pump_speed": (
            Source(Role.PUMP, ("PumpSpeedPercent", "Reading"), scale=PERCENT, combine="max"),
        ),
        "pump_speed_command": (
            Source(
                Role.PUMP,
                ("SpeedControlPercent", "SetPoint"),
                scale=PERCENT,
                combine="max",
                setpoint=True,
                default_range=(0.0, 100.0),
                minimum=("SpeedControlPercent", "AllowableMin"),
                maximum=("SpeedControlPercent", "AllowableMax"),
            ),
            Source(
                Role.CONTROL,
                ("SetPoint",),
                match=({"ControlType": _set("Percent"), "PhysicalContext": _set("Pump")},),
                scale=PERCENT,
                combine="max",
                setpoint=True,
                default_range=(0.0, 100.0),
                minimum=ALLOWABLE_MIN,
                maximum=ALLOWABLE_MAX,
            ),
        ),
        "reservoir_level": (
            Source(
                Role.RESERVOIR,
                ("FluidLevelPercent", "Reading"),
                scale=PERCENT,
                factor=("CapacityLiters",),
                combine="sum",
            ),
        ),
        "leak_detected": _LEAK_SOURCES,
        "facility_supply_temperature": (
            Source(Role.PRIMARY_CONNECTOR, ("SupplyTemperatureCelsius", "Reading"), combine="max"),
        ),
        "facility_return_temperature": (
            Source(Role.PRIMARY_CONNECTOR, ("ReturnTemperatureCelsius", "Reading"), combine="max"),
        ),
        "primary_flow": (
            Source(Role.PRIMARY_CONNECTOR, ("FlowLitersPerMinute", "Reading"), combine="sum"),
        ),
        "valve_position": (
            Source(
                Role.PRIMARY_CONNECTOR,
                ("ValvePositionPercent", "Reading"),
                scale=PERCENT,
                combine="max",
            ),
        ),
        "valve_command": (
            Source(
                Role.PRIMARY_CONNECTOR,
                ("ValvePositionControlPercent", "SetPoint"),
                scale=PERCENT,
                combine="max",
                setpoint=True,
                default_range=(0.0, 100.0),
                minimum=("ValvePositionControlPercent", "AllowableMin"),
                maximum=("ValvePositionControlPercent", "AllowableMax"),
            ),
            Source(
                Role.CONTROL,
                ("SetPoint",),
                match=({"ControlType": _set("Valve")},),
                scale=PERCENT,
                combine="max",
                setpoint=True,
                default_range=(0.0, 100.0),
                minimum=ALLOWABLE_MIN,
                maximum=ALLOWABLE_MAX,
            ),
        ),
        # A CDU that runs its own loops: its set points, on the secondary connector's control
        # excerpts (CoolantConnector v1.1, 2024.4) or on the Control resources they link
        "supply_temperature_setpoint": _cdu_setpoint(
            "SupplyTemperatureControlCelsius", "Temperature", 1.0, (0.0, 100.0)
        ),
        "flow_setpoint": _cdu_setpoint(
            "FlowControlLitersPerMinute", "LiquidFlowLPM", 1.0, (0.0, math.inf)
        ),
        "differential_pressure_setpoint": _cdu_setpoint(
            "DeltaPressureControlkPa", "PressurekPa", KILO, (0.0, math.inf)
        ),
    },
    "pdu": {
        # summed: one PDU has one Metrics; a rack's power shelves have one each
        "power": (
            Source(Role.PDU_METRICS, ("PowerWatts", "Reading"), combine="sum"),
            Source(Role.MAINS, ("PowerWatts", "Reading"), combine="sum"),
            Source(Role.PSU_METRICS, ("InputPowerWatts", "Reading"), combine="sum"),
        ),
        "energy": (
            Source(Role.PDU_METRICS, ("EnergykWh", "Reading"), scale=KWH, combine="sum"),
            Source(Role.MAINS, ("EnergykWh", "Reading"), scale=KWH, combine="sum"),
            Source(Role.PSU_METRICS, ("EnergykWh", "Reading"), scale=KWH, combine="sum"),
        ),
        "output_power": (Source(Role.PSU_METRICS, ("OutputPowerWatts", "Reading"), combine="sum"),),
        # 1 while every power supply in use reports Health OK: a lost PSU makes it 0
        "psu_ok": (Source(Role.PSU, ("Status", "Health"), decode="health", combine="min"),),
        # the emptiest battery backup unit, and whether any is discharging
        "bbu_charge": (
            Source(
                Role.BATTERY_METRICS, ("ChargePercent", "Reading"), scale=PERCENT, combine="min"
            ),
        ),
        "bbu_discharging": (
            Source(Role.BATTERY, ("ChargeState",), decode="discharging", combine="any"),
        ),
    },
}


@dataclass(frozen=True, slots=True)
class ActionPoint:
    """A point written by a Redfish action, not a PATCH: `action` on the device's own resource
    (`role` None) or on each bound resource of `role`, with `parameter` = `values[0 or 1]`,
    read back from the resource's `read_back` property (Status.State unless said otherwise)
    through `states`.

    `check_allowed`: the value is refused before anything is sent when the action's
    `<parameter>@Redfish.AllowableValues` (or its `@Redfish.ActionInfo`) does not list it.
    `already`: for each value, the states in which the resource is there or on its way, so
    that the action is not sent again (a second GracefulShutdown while the OS is stopping).
    """

    role: Role | None
    action: str
    parameter: str
    values: tuple[str, str]  # what 0 and 1 are sent as
    states: Mapping[str, float]  # the read-back property after the action -> its value
    read_back: tuple[str, ...] = ("Status", "State")
    check_allowed: bool = False
    already: Mapping[float, frozenset[str]] = field(default_factory=dict)


# ComputerSystem PowerState (Resource.PowerState) -> canonical code (model.ServerPowerState)
POWER_STATES: Final[Mapping[str, float]] = {
    "Off": 0.0,
    "On": 1.0,
    "PoweringOn": 2.0,
    "PoweringOff": 3.0,
    "Paused": 4.0,
}
# Several hosts (a multi-node chassis) read as one power_state: the one furthest from off, so
# that Off means every host is Off, and PoweringOff that none is on and at least one still
# stopping; a host On outweighs one Paused (powered, idle) and one powering on.
HOST_POWER_RANK: Final[Mapping[float, int]] = {
    POWER_STATES["Off"]: 0,
    POWER_STATES["PoweringOff"]: 1,
    POWER_STATES["PoweringOn"]: 2,
    POWER_STATES["Paused"]: 3,
    POWER_STATES["On"]: 4,
}
# ... and what a Reset to Off (0) or On (1) reads as: there, or on its way there
POWERED: Final[Mapping[str, float]] = {
    "Off": 0.0,
    "PoweringOff": 0.0,
    "On": 1.0,
    "PoweringOn": 1.0,
    "Paused": 1.0,  # powered, its work paused
}


ACTION_POINTS: Final[Mapping[Kind, Mapping[str, ActionPoint]]] = {
    "server": {
        # ComputerSystem.Reset on the chassis's host: GracefulShutdown (the OS stops its work
        # and powers off) or On; never ForceOff (see the README's Safety section)
        "server_power_command": ActionPoint(
            Role.SYSTEM,
            "ComputerSystem.Reset",
            "ResetType",
            ("GracefulShutdown", "On"),
            POWERED,
            read_back=("PowerState",),
            check_allowed=True,
            already={0.0: frozenset({"Off", "PoweringOff"}), 1.0: frozenset({"On", "PoweringOn"})},
        ),
    },
    "cdu": {
        # CoolingUnit.SetMode (2024.4): Enabled runs the CDU, Disabled stops it
        "cdu_run_command": ActionPoint(
            None,
            "CoolingUnit.SetMode",
            "Mode",
            ("Disabled", "Enabled"),
            {"Enabled": 1.0, "Disabled": 0.0, "StandbyOffline": 0.0, "StandbySpare": 0.0},
        ),
        # CoolantConnector.ValveControl (2025.3): the rack's isolation valves; a closed
        # connector's Status.State is Disabled
        "isolation_valve_command": ActionPoint(
            Role.SECONDARY_CONNECTOR,
            "CoolantConnector.ValveControl",
            "ValveState",
            ("Closed", "Open"),
            {"Enabled": 1.0, "Disabled": 0.0},
        ),
    },
    "pdu": {},
}

# Points only some devices of a kind have (a power shelf's, not a rack PDU's): a device that
# has none of their sources does not report them at all, rather than as missing.
OPTIONAL_POINTS: Final = frozenset(
    {
        "output_power",
        "psu_ok",
        "bbu_charge",
        "bbu_discharging",
        # a chassis whose BMC links no ComputerSystem (a chassis-only service) has no host power
        "power_state",
        "server_power_command",
    }
)

# Status.State values of a member that is not there or not working on purpose: skipped.
NOT_IN_USE: Final = frozenset({"Absent", "Disabled", "StandbyOffline", "StandbySpare"})
# ... and of one whose value may be null without that being a fault.
MAY_BE_NULL: Final = frozenset({"UnavailableOffline", "Starting", "InTest", "Updating"})


# ----------------------------------------------------------------------------------------------
# Discovery


@dataclass(frozen=True, slots=True)
class Features:
    """The query parameters the service says it supports (ServiceRoot.ProtocolFeaturesSupported)."""

    select: bool = False
    expand: str | None = None  # the $expand value coolctl uses, when supported

    @classmethod
    def of(cls, root: Mapping[str, Any]) -> Features:
        supported = root.get("ProtocolFeaturesSupported")
        if not isinstance(supported, dict):
            return cls()
        expand = supported.get("ExpandQuery")
        value = None
        if isinstance(expand, dict) and expand.get("NoLinks") is True:
            value = ".($levels=1)" if expand.get("Levels") is True else "."
        return cls(select=supported.get("SelectQuery") is True, expand=value)


@dataclass(frozen=True, slots=True)
class ResourceRef:
    """A chassis, CDU or PDU of a service, named as `coolctl probe redfish` prints it."""

    kind: Kind
    name: str  # chassis: its Id; CDU:<Id>; PDU:<Id>; Shelf:<Id>; Shelves (all, summed)
    uri: str
    id: str
    body: Mapping[str, Any] = field(compare=False, repr=False)

    def matches(self, selector: str) -> bool:
        return selector in (self.name, self.id, self.uri, self.uri.rstrip("/"))


@dataclass(frozen=True, slots=True)
class Resource:
    """A resource found by discovery, with the role it plays for the mapping table."""

    uri: str
    role: Role
    body: Mapping[str, Any]
    etag: str | None
    collection: str | None  # the collection it was listed in


@dataclass(frozen=True, slots=True)
class Binding:
    """A point, the source it is read from, and the resources that source is in."""

    point: str
    source: Source
    uris: tuple[str, ...]


@dataclass(slots=True)
class Plan:
    """What discovery found for one device: read these resources, evaluate these bindings."""

    kind: Kind
    ref: ResourceRef
    features: Features
    bindings: dict[str, Binding]
    resources: dict[str, Resource]  # the bound ones, by URI
    notes: list[str] = field(default_factory=list)  # what discovery skipped, for the log
    collection_sizes: dict[str, int] = field(default_factory=dict)

    def expandable(self) -> dict[str, list[str]]:
        """Collections worth reading whole with $expand, and their bound members: those of
        which most members are bound (two pumps of two, yes; two sensors of forty, no: two
        small requests cost a BMC less than one that carries forty sensors)."""
        if not self.features.expand:
            return {}
        groups: dict[str, list[str]] = {}
        for resource in self.resources.values():
            if resource.collection is not None:
                groups.setdefault(resource.collection, []).append(resource.uri)
        return {
            collection: members
            for collection, members in groups.items()
            if len(members) >= 2 and 2 * len(members) >= self.collection_sizes.get(collection, 0)
        }

    def select_for(self, uri: str) -> str | None:
        """The $select value for one resource: just the properties its bindings read."""
        if not self.features.select:
            return None
        wanted = {"Status"}
        for binding in self.bindings.values():
            if uri not in binding.uris:
                continue
            source = binding.source
            wanted.add((source.members or source.leaf)[0])
            if not source.members:
                for alternative in source.match:
                    wanted.update(alternative)
                for path in (source.factor, source.minimum, source.maximum):
                    if path:
                        wanted.add(path[0])
        return ",".join(sorted(wanted))


Fetch = Callable[[str, Mapping[str, str] | None], Awaitable[Fetched]]


def _stops_discovery(failure: Failure) -> bool:
    """A failure of the service (not of one resource) ends discovery; it is tried again later."""
    return failure.link


def link_targets(body: Mapping[str, Any], prop: str, in_links: bool = False) -> list[str]:
    """The URIs a link property holds ({"@odata.id": ...} or a list of them); junk is skipped."""
    holder: Any = body.get("Links") if in_links else body
    if not isinstance(holder, dict):
        return []
    value = holder.get(prop)
    items = value if isinstance(value, list) else [value]
    uris: list[str] = []
    for item in items[:MAX_MEMBERS]:
        uri = item.get("@odata.id") if isinstance(item, dict) else None
        if isinstance(uri, str) and _plausible_uri(uri):
            uris.append(uri.split("#", 1)[0])
    return uris


def _plausible_uri(uri: str) -> bool:
    return 0 < len(uri) <= 2048 and uri.startswith("/") and uri.isprintable() and " " not in uri


class _Discovery:
    """One discovery run: reads resources, remembers what it has read, notes what it skips."""

    def __init__(self, fetch: Fetch, features: Features) -> None:
        self.fetch = fetch
        self.features = features
        self.visited: set[str] = set()
        self.notes: list[str] = []
        self.reads = 0
        self.sizes: dict[str, int] = {}  # collection URI -> members listed

    async def get(self, uri: str, params: Mapping[str, str] | None = None) -> Fetched | None:
        """A resource, or None (noted) when it is missing or unreadable; a failure of the
        service itself is raised."""
        self.reads += 1
        if self.reads > MAX_RESOURCES:
            raise Failure(
                FailureKind.HTTP_4XX, f"more than {MAX_RESOURCES} resources: discovery stopped"
            )
        try:
            return await self.fetch(uri, params)
        except Failure as failure:
            if _stops_discovery(failure):
                raise
            self.notes.append(f"{safe_text(uri)} skipped ({failure.detail})")
            return None

    async def members(self, collection: Fetched) -> list[Fetched]:
        """The members of a collection, in order: from the expanded collection when the
        service expanded it, else read one by one (concurrently; the transport limits it)."""
        entries = collection.body.get("Members")
        if not isinstance(entries, list):
            self.notes.append(f"{safe_text(collection.uri)} has no Members list")
            return []
        self.sizes[collection.uri] = len(entries)
        if len(entries) > MAX_MEMBERS:
            self.notes.append(
                f"{safe_text(collection.uri)} lists {len(entries)} members;"
                f" only the first {MAX_MEMBERS} are read"
            )
            entries = entries[:MAX_MEMBERS]
        found: list[Fetched | None] = []
        to_read: list[tuple[int, str]] = []
        for entry in entries:
            uri = entry.get("@odata.id") if isinstance(entry, dict) else None
            if not isinstance(uri, str) or not _plausible_uri(uri) or uri in self.visited:
                continue
            self.visited.add(uri)
            if isinstance(entry, dict) and len(entry) > 1 and "@odata.id" in entry:
                found.append(Fetched(uri, entry, _inline_etag(entry)))  # expanded
            else:
                to_read.append((len(found), uri))
                found.append(None)
        results = await asyncio.gather(
            *(self.get(uri) for _, uri in to_read), return_exceptions=True
        )
        failure: BaseException | None = None
        for (index, _), result in zip(to_read, results, strict=True):
            if isinstance(result, BaseException):
                failure = failure or result
            else:
                found[index] = result
        if failure is not None:
            raise failure
        return [f for f in found if f is not None]

    async def collection(self, uri: str) -> list[Fetched]:
        params = {"$expand": self.features.expand} if self.features.expand else None
        listing = await self.get(uri, params)
        return [] if listing is None else await self.members(listing)

    async def follow(
        self, body: Mapping[str, Any], link: Link, found: list[Resource], parent: str | None = None
    ) -> None:
        for uri in link_targets(body, link.prop, link.in_links):
            if uri in self.visited:
                continue
            self.visited.add(uri)
            if link.collection:
                for member in await self.collection(uri):
                    if link.role is not None:
                        found.append(Resource(member.uri, link.role, member.body, member.etag, uri))
                    for sub in link.follow:
                        await self.follow(member.body, sub, found)
                continue
            target = await self.get(uri)
            if target is None:
                continue
            if link.role is not None:
                found.append(Resource(target.uri, link.role, target.body, target.etag, parent))
            for sub in link.follow:
                await self.follow(target.body, sub, found)


def _inline_etag(body: Mapping[str, Any]) -> str | None:
    etag = body.get("@odata.etag")
    return etag if isinstance(etag, str) and 2 <= len(etag) <= 200 and etag.isprintable() else None


def _resource_id(body: Mapping[str, Any], uri: str) -> str:
    value = body.get("Id")
    if isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable():
        return value
    return safe_text(uri.rstrip("/").rsplit("/", 1)[-1], 64)


async def list_resources(
    fetch: Fetch, kinds: Sequence[Kind] = KINDS
) -> tuple[Features, list[ResourceRef], list[str]]:
    """The service's features, and its chassis (servers), CDUs and PDUs, found from the
    service root by links. Chassis that only back a CDU or a PDU are not servers."""
    root = await fetch(SERVICE_ROOT, None)
    features = Features.of(root.body)
    discovery = _Discovery(fetch, features)
    discovery.visited.add(SERVICE_ROOT)
    refs: list[ResourceRef] = []
    backing: set[str] = set()
    want_servers = "server" in kinds
    families: list[tuple[Kind, str, str, str]] = [
        ("cdu", "ThermalEquipment", "CDUs", "CDU:"),
        ("pdu", "PowerEquipment", "RackPDUs", "PDU:"),
        ("pdu", "PowerEquipment", "PowerShelves", "Shelf:"),
    ]
    holders: dict[str, Fetched | None] = {}
    for kind, equipment, collection, prefix in families:
        if kind not in kinds and not want_servers:
            continue
        for equipment_uri in link_targets(root.body, equipment)[:1]:
            if equipment_uri not in holders:
                holders[equipment_uri] = await discovery.get(equipment_uri)
            holder = holders[equipment_uri]
            if holder is None:
                continue
            for collection_uri in link_targets(holder.body, collection)[:1]:
                params = {"$expand": features.expand} if features.expand else None
                listing = await discovery.get(collection_uri, params)
                if listing is None:
                    continue
                members = await discovery.members(listing)
                if collection == "PowerShelves" and members and kind in kinds:
                    # the rack's shelves as one device, its power their sum
                    name = "Shelves"
                    refs.append(ResourceRef(kind, name, listing.uri, name, listing.body))
                for member in members:
                    backing.update(link_targets(member.body, "Chassis", in_links=True))
                    if kind in kinds:
                        ident = _resource_id(member.body, member.uri)
                        refs.append(
                            ResourceRef(kind, prefix + ident, member.uri, ident, member.body)
                        )
    if want_servers:
        for chassis_uri in link_targets(root.body, "Chassis")[:1]:
            for member in await discovery.collection(chassis_uri):
                if member.uri in backing or _backs_equipment(member.body):
                    continue
                ident = _resource_id(member.body, member.uri)
                refs.append(ResourceRef("server", ident, member.uri, ident, member.body))
    return features, refs, discovery.notes


def _backs_equipment(chassis: Mapping[str, Any]) -> bool:
    """A chassis that is part of a CDU or a PDU (its Links say so) is not a server."""
    return bool(
        link_targets(chassis, "CoolingUnits", in_links=True)
        or link_targets(chassis, "PowerDistribution", in_links=True)
    )


async def discover(
    fetch: Fetch, kind: Kind, selector: str | None, host_power: bool = False
) -> Plan:
    """Find the device's resource (by `selector`, or the first of its kind that yields any
    point) and bind each of its points to the first source the service has (a server's host
    power too, with `host_power`)."""
    features, refs, notes = await list_resources(fetch, (kind,))
    candidates = [r for r in refs if r.kind == kind and (selector is None or r.matches(selector))]
    if not candidates:
        what = f"{kind} {selector!r}" if selector else f"{kind} resource"
        raise Failure(FailureKind.HTTP_4XX, f"the service has no {what}", status=404)
    plan: Plan | None = None
    for ref in candidates:
        plan = await plan_for(fetch, features, ref, host_power)
        plan.notes[:0] = notes
        if plan.bindings:
            return plan
    assert plan is not None
    return plan


async def plan_for(
    fetch: Fetch, features: Features, ref: ResourceRef, host_power: bool = False
) -> Plan:
    """Discovery below one resource: follow LINKS (and a server's HOST_LINK, with
    `host_power`), then bind the mapping table."""
    discovery = _Discovery(fetch, features)
    discovery.visited.add(ref.uri)
    found: list[Resource] = []
    host = (HOST_LINK,) if host_power and ref.kind == "server" else ()
    for link in (*LINKS[ref.kind], *host):
        await discovery.follow(ref.body, link, found)
    bindings = bind(ref.kind, found)
    bound = {uri for binding in bindings.values() for uri in binding.uris}
    resources = {r.uri: r for r in found if r.uri in bound}
    return Plan(ref.kind, ref, features, bindings, resources, discovery.notes, discovery.sizes)


def bind(kind: Kind, found: Sequence[Resource]) -> dict[str, Binding]:
    """Each point bound to its first source that some found resource declares."""
    bindings: dict[str, Binding] = {}
    for point, sources in POINT_SOURCES[kind].items():
        for source in sources:
            uris = [r.uri for r in found if r.role is source.role and declares(r.body, source)]
            if not uris:
                continue
            if source.combine == "first" and not source.members:
                uris = uris[:1]
            bindings[point] = Binding(point, source, tuple(dict.fromkeys(uris)))
            break
    return bindings


def declares(body: Mapping[str, Any], source: Source) -> bool:
    """Whether a resource has a member, matching the source, that has the source's property
    (null or not: a null value is a fault to report, not a reason to look elsewhere)."""
    try:
        for _, member in _members(body, source.members):
            if (
                isinstance(member, dict)
                and _matches(member, source.match)
                and _has_path(member, source.leaf)
            ):
                return True
    except _Bad:
        return False
    return False


# ----------------------------------------------------------------------------------------------
# Evaluation


class _Bad(Exception):
    """What makes a point bad, in words for the log."""


class _Skip:
    """A member that is not in use (absent, disabled, a standby spare)."""


_SKIP: Final = _Skip()
Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Target:
    """One member a point was read from: resource URI and the path to the member in it."""

    uri: str
    member: Path

    def pointer(self, source: Source) -> str:
        return f"{self.uri}#/" + "/".join(str(p) for p in (*self.member, *source.leaf))


@dataclass(frozen=True, slots=True)
class Evaluated:
    """A point's verdict: a value in coolctl units, or the reason it is bad."""

    value: float | None
    problem: str | None
    targets: tuple[Target, ...] = ()


def evaluate(binding: Binding, bodies: Mapping[str, Mapping[str, Any]]) -> Evaluated:
    """The point's value from the bound resources' current bodies."""
    source = binding.source
    values: list[float] = []
    targets: list[Target] = []
    try:
        for uri in binding.uris:
            body = bodies[uri]
            for path, member in _members(body, source.members):
                value = _member_value(body, member, source, resource_level=not source.members)
                if isinstance(value, _Skip):
                    continue
                values.append(value)
                targets.append(Target(uri, path))
                if source.combine == "first":
                    break
            if values and source.combine == "first":
                break
        if not values:
            raise _Bad(f"no {source.role} member in use")
    except _Bad as bad:
        return Evaluated(None, str(bad), tuple(targets))
    if source.combine == "sum":
        total = math.fsum(values)
    elif source.combine == "first":
        total = values[0]
    elif source.combine == "min":
        total = min(values)
    elif source.combine == "most_on":
        total = max(values, key=lambda code: HOST_POWER_RANK.get(code, 0))
    else:  # max, any (leak states are 0 or 1)
        total = max(values)
    if not math.isfinite(total):
        return Evaluated(None, "the values add up to no finite number", tuple(targets))
    return Evaluated(total, None, tuple(targets))


@dataclass(frozen=True, slots=True)
class SetpointTarget:
    """A member to write a setpoint to, and what it accepts (coolctl units)."""

    target: Target
    low: float
    high: float


def setpoint_targets(
    binding: Binding, bodies: Mapping[str, Mapping[str, Any]]
) -> list[SetpointTarget]:
    """The members a write of the point goes to (every one in use; the first for "first"
    sources), with their allowed ranges. Raises ValueError when there is none, or when a
    range is unreadable (a write is then refused rather than guessed)."""
    source = binding.source
    if not source.setpoint:
        raise ValueError("not a setpoint")
    found: list[SetpointTarget] = []
    try:
        for uri in binding.uris:
            body = bodies[uri]
            for path, member in _members(body, source.members):
                if isinstance(_member_value(body, member, source, not source.members), _Skip):
                    continue
                low, high = _allowed(member, source)
                found.append(SetpointTarget(Target(uri, path), low, high))
                if source.combine == "first":
                    return found
    except _Bad as bad:
        raise ValueError(str(bad)) from None
    if not found:
        raise ValueError(f"no {source.role} member in use to write to")
    return found


def _allowed(member: Mapping[str, Any], source: Source) -> tuple[float, float]:
    low, high = source.default_range
    if source.minimum is not None and _has_path(member, source.minimum):
        raw = _walk(member, source.minimum)
        if raw is not None:
            low = _number(raw, "/".join(source.minimum))
    if source.maximum is not None and _has_path(member, source.maximum):
        raw = _walk(member, source.maximum)
        if raw is not None:
            high = _number(raw, "/".join(source.maximum))
    if low > high:
        raise _Bad(f"allowable range {low}..{high} is empty")
    return low * source.scale, high * source.scale


def read_member(body: Mapping[str, Any], target: Target, source: Source) -> float:
    """The value at one member of a freshly read body (a write's read-back). ValueError if
    it cannot be read."""
    try:
        member: Any = body
        for step in target.member:
            if isinstance(step, int):
                if not isinstance(member, list) or step >= len(member):
                    raise _Bad(f"no element {step}")
            elif not isinstance(member, dict) or step not in member:
                raise _Bad(f"no {step}")
            member = member[step]
        value = _member_value(body, member, source, resource_level=not source.members)
    except _Bad as bad:
        raise ValueError(str(bad)) from None
    if isinstance(value, _Skip):
        raise ValueError("the member is no longer in use")
    return value


def patch_body(target: Target, source: Source, device_value: float | int) -> dict[str, Any]:
    """The PATCH body that sets one member's setpoint; array elements before it are {}."""
    value: Any = device_value
    for step in reversed((*target.member, *source.leaf)):
        value = [{} for _ in range(step)] + [value] if isinstance(step, int) else {step: value}
    assert isinstance(value, dict)
    return value


def _members(body: Any, path: tuple[str, ...]) -> Iterator[tuple[Path, Any]]:
    """The objects `path` leads to from `body`, with their concrete paths."""
    if not path:
        yield (), body
        return
    head, rest = path[0], path[1:]
    if head == "*":
        if not isinstance(body, list):
            raise _Bad("an array is something else")
        if len(body) > MAX_ARRAY:
            raise _Bad(f"an array of {len(body)} elements (over {MAX_ARRAY})")
        for index, element in enumerate(body):
            for sub, member in _members(element, rest):
                yield (index, *sub), member
        return
    if not isinstance(body, dict) or head not in body:
        raise _Bad(f"no {head}")
    for sub, member in _members(body[head], rest):
        yield (head, *sub), member


def _matches(member: Mapping[str, Any], alternatives: tuple[Match, ...]) -> bool:
    if not alternatives:
        return True
    return any(
        all(_enum_value(member.get(prop)) in accepted for prop, accepted in alternative.items())
        for alternative in alternatives
    )


def _enum_value(value: Any) -> str | None:
    """A property compared with enumeration values: a string, None, or (anything else) a
    value no enumeration holds."""
    if value is None or isinstance(value, str):
        return value
    return "\x00not an enumeration value"


def _state(obj: Any) -> str | None:
    status = obj.get("Status") if isinstance(obj, dict) else None
    state = status.get("State") if isinstance(status, dict) else None
    return state if isinstance(state, str) else None


def _member_value(
    resource: Mapping[str, Any], member: Any, source: Source, resource_level: bool
) -> float | _Skip:
    if not isinstance(member, dict):
        raise _Bad(f"a {source.role} member is not an object")
    if not _matches(member, source.match):
        if resource_level:  # bound at discovery, so it should still be what it was
            raise _Bad(f"a {source.role} resource is no longer what it was")
        return _SKIP
    state = _state(member) or (None if resource_level else _state(resource))
    if state in NOT_IN_USE and (source.decode not in _HOST_POWER or state == "Absent"):
        # (a host powered off may say Disabled or StandbyOffline: still read; an Absent one,
        # an empty slot of a multi-node chassis, is not there to read)
        return _SKIP
    where = "/".join(source.leaf)
    if not _has_path(member, source.leaf):
        raise _Bad(f"{source.role} has no {where}")
    raw = _walk(member, source.leaf)
    if raw is None:
        if state in MAY_BE_NULL:
            return _SKIP
        raise _Bad(f"{source.role} {where} is null")
    if source.decode == "leak":
        return _leak(raw)
    if source.decode == "health":
        return _health(raw)
    if source.decode == "discharging":
        return _discharging(raw)
    if source.decode in _HOST_POWER:
        table = POWER_STATES if source.decode == "power_state" else POWERED
        if not isinstance(raw, str) or raw not in table:
            raise _Bad(f"PowerState {safe_text(str(raw), 40)!r}")
        return table[raw]
    value = _number(raw, where) * source.scale
    if source.factor is not None:
        if not _has_path(member, source.factor):
            raise _Bad(f"{source.role} has no {'/'.join(source.factor)}")
        value *= _number(_walk(member, source.factor), "/".join(source.factor))
    return value


_HOST_POWER: Final = frozenset({"power_state", "powered"})


def _leak(state: Any) -> float | _Skip:
    """A LeakDetector's DetectorState: OK is dry, Warning or Critical wet; a detector that is
    Absent is skipped, and one that cannot tell (Unavailable) leaves the point bad: coolctl
    does not stop a pump on a guess, nor call a loop dry on one."""
    if state == "OK":
        return 0.0
    if state in ("Warning", "Critical"):
        return 1.0
    if state == "Absent":
        return _SKIP
    raise _Bad(f"DetectorState {safe_text(str(state), 40)!r}")


def _health(health: Any) -> float:
    """Status.Health: OK is 1; Warning and Critical 0 (a lost or failing power supply)."""
    if health == "OK":
        return 1.0
    if health in ("Warning", "Critical"):
        return 0.0
    raise _Bad(f"Health {safe_text(str(health), 40)!r}")


def _discharging(state: Any) -> float:
    """Battery ChargeState: Discharging is 1; Idle and Charging 0."""
    if state == "Discharging":
        return 1.0
    if state in ("Idle", "Charging"):
        return 0.0
    raise _Bad(f"ChargeState {safe_text(str(state), 40)!r}")


def _number(raw: Any, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise _Bad(f"{where} is not a number")
    try:
        value = float(raw)
    except OverflowError:
        raise _Bad(f"{where} is out of range") from None
    if not math.isfinite(value):
        raise _Bad(f"{where} is {value}")
    return value


def _has_path(obj: Any, path: tuple[str, ...]) -> bool:
    for step in path:
        if not isinstance(obj, dict) or step not in obj:
            return False
        obj = obj[step]
    return True


def _walk(obj: Any, path: tuple[str, ...]) -> Any:
    for step in path:
        obj = obj[step]
    return obj
