"""The config's tables and keys, each declared once: type, default, checks and description.

The TOML document maps onto these classes key for key; `coolctl config schema` prints them as
JSON Schema and the README's reference is generated from that (coolctl.config.reference).
Checks across keys raise KeyProblem naming the keys they are about.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic.json_schema import SkipJsonSchema

from coolctl.config.enums import (
    Action,
    Auth,
    CduControl,
    Controller,
    DeviceKind,
    Driver,
    Feed,
    LeakResponse,
    LogFormat,
    LogLevel,
    SnmpAuthProtocol,
    SnmpPrivProtocol,
    SnmpVersion,
)
from coolctl.config.fields import (
    DEFAULT_METRICS_PORT,
    Baud,
    EventCount,
    FilePath,
    Flag,
    Fraction,
    HostPort,
    Id,
    InFlight,
    KeyProblem,
    MeasurementRef,
    ModbusUnit,
    NonNegative,
    Number,
    PointRef,
    Port,
    Positive,
    Priority,
    ServiceAddress,
    Text,
    TopicPart,
    Votes,
)
from coolctl.model import CANONICAL_POINTS

_STRUCTURE = ConfigDict(extra="forbid", use_attribute_docstrings=True)


def _with_ids(entries: object) -> object:
    """Each entry of a keyed table learns its key as its id."""
    if not isinstance(entries, Mapping):
        return entries
    return {
        key: {**entry, "id": key} if isinstance(entry, Mapping) else entry
        for key, entry in entries.items()
    }


EntryId = SkipJsonSchema[str]


def _per_poll(data: object, **defaults: Callable[[float], float]) -> object:
    """Fill in the defaults that follow from the poll interval, when it is usable."""
    if not isinstance(data, Mapping):
        return data
    poll = data.get("poll_interval_s", 1.0)
    if isinstance(poll, bool) or not isinstance(poll, float | int) or not 0 < poll < math.inf:
        return data
    return {**{key: default(poll) for key, default in defaults.items()}, **data}


def _thrice(poll: float) -> float:
    return 3 * poll


# -- devices --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, config=_STRUCTURE)
class ModbusDeviceConfig:
    """A Modbus device (a CDU, a PDU), read and written through its profile: over TCP, or over
    RTU on a serial bus. Devices at one address:port (a gateway) or on one serial port share
    one connection, one request at a time."""

    id: EntryId = ""
    driver: Literal[Driver.MODBUS] = Driver.MODBUS
    transport: Literal["tcp", "rtu"] = "tcp"
    address: Text = ""
    """TCP: host name or IP address (required)."""
    port: Port = 502
    serial_port: Text | None = None
    """RTU: the serial device of the bus, e.g. /dev/ttyUSB0 (required)."""
    baudrate: Baud = 19200
    """RTU: every device on one serial port must give the same settings."""
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit: ModbusUnit = 1
    """Modbus unit/device id."""
    profile: Text
    """A shipped profile name, or a path to a profile file."""
    poll_interval_s: Positive = 1.0
    timeout_s: Positive = 1.0
    """Per request; default: poll_interval_s, at most 1.0."""
    stale_after_s: Positive = 3.0
    """Readings older than this are stale; default: 3 × poll_interval_s."""
    meters_rack: Flag = True
    """PDUs: its power counts toward the rack's (the rack's PDUs are summed: one per feed, or
    several power shelves); false for a second view of a meter already counted (the same PDU
    over another protocol)."""

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: object) -> object:
        return _per_poll(data, timeout_s=lambda poll: min(1.0, poll), stale_after_s=_thrice)

    @model_validator(mode="after")
    def _check(self) -> ModbusDeviceConfig:
        if self.transport == "tcp" and not self.address:
            raise KeyProblem(
                ("address", 'a Modbus TCP device needs an address (or transport = "rtu")')
            )
        if self.transport == "rtu" and not self.serial_port:
            raise KeyProblem(
                ("serial_port", "a Modbus RTU device needs the serial port of its bus")
            )
        if self.stale_after_s < self.poll_interval_s:
            message = (
                f"must be at least poll_interval_s ({self.poll_interval_s}),"
                f" not {self.stale_after_s}"
            )
            raise KeyProblem(("stale_after_s", message))
        return self


@dataclass(frozen=True, kw_only=True, config=_STRUCTURE)
class MqttDeviceConfig:
    """Sensors publishing over MQTT: messages come from the [mqtt] broker."""

    id: EntryId = ""
    driver: Literal[Driver.MQTT] = Driver.MQTT
    profile: Text
    """A shipped MQTT profile name, or a path to a profile file."""
    topic_prefix: TopicPart = ""
    """Fills {prefix} in the profile's topic templates."""
    poll_interval_s: Positive = 0.2
    """How often the latest messages are taken into the snapshot (reading memory, no I/O)."""
    stale_after_s: Positive = 5.0


@dataclass(frozen=True, kw_only=True, config=_STRUCTURE)
class RedfishDeviceConfig:
    """A Redfish service: a server's BMC (whose power cap the rack budget sets), a CDU or a PDU.
    The DMTF schemas are its profile."""

    id: EntryId = ""
    driver: Literal[Driver.REDFISH] = Driver.REDFISH
    kind: DeviceKind
    url: Text
    """https:// (or http://) URL of the service root's host."""
    username: Text | None = None
    """Needed unless auth = "none"."""
    password_file: FilePath | None = None
    """A file holding the password (never the password itself in the config)."""
    password_credential: Text | None = None
    """A systemd credential (LoadCredential=) holding the password."""
    auth: Auth = Auth.SESSION
    ca_file: FilePath | None = None
    verify_tls: Flag = True
    """false is logged: only for a lab."""
    poll_interval_s: Positive = 1.0
    timeout_s: Positive = 5.0
    stale_after_s: Positive = 3.0
    """Default: 3 × poll_interval_s."""
    meters_rack: Flag = True
    """PDUs: its power counts toward the rack's (the rack's PDUs are summed: one per feed, or
    several power shelves); false for a second view of a meter already counted (the same PDU
    over another protocol)."""
    max_in_flight: InFlight = 2
    """Requests at once to this service."""
    cap_min_w: NonNegative = 0.0
    """Servers: the lowest power cap the rack's allocator may set."""
    cap_max_w: NonNegative = 0.0
    """Servers: the highest power cap the rack's allocator may set (required for servers)."""
    priority: Priority = 0
    """Servers: higher gets headroom first."""
    weight: Positive = 1.0
    """Servers: share of headroom among equal priorities."""
    branches: list[Text] = Field(default_factory=list)
    """Servers: the PDU branch circuits it is plugged into, one per feed, as "pdu/N" (N the
    branch's index on that SNMP PDU): its cap counts against each breaker's rating."""

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: object) -> object:
        return _per_poll(data, stale_after_s=_thrice)

    @model_validator(mode="after")
    def _check(self) -> RedfishDeviceConfig:
        problems: list[tuple[str, str]] = []
        if not self.url.startswith(("https://", "http://")):
            problems.append(("url", f"must be an https:// (or http://) URL, not {self.url!r}"))
        if self.auth != Auth.NONE and self.username is None:
            problems.append(
                ("username", f'auth {self.auth.value!r} needs a username (or auth = "none")')
            )
        if self.kind == DeviceKind.SERVER:
            if self.cap_max_w <= 0:
                problems.append(
                    ("cap_max_w", f"a server needs one greater than 0, not {self.cap_max_w}")
                )
            elif self.cap_min_w > self.cap_max_w:
                problems.append(
                    ("", f"cap_min_w {self.cap_min_w} is above cap_max_w {self.cap_max_w}")
                )
        if problems:
            raise KeyProblem(*problems)
        return self


@dataclass(frozen=True, kw_only=True, config=_STRUCTURE)
class SnmpDeviceConfig:
    """A rack PDU read over SNMP (v2c or v3 authPriv) through its profile (apc-rpdu2,
    raritan-pdu2 or a file). Secrets come from files or systemd credentials, never the config."""

    id: EntryId = ""
    driver: Literal[Driver.SNMP] = Driver.SNMP
    address: Text
    """Host name or IP address."""
    port: Port = 161
    profile: Text
    """A shipped SNMP profile name, or a path to a profile file."""
    version: SnmpVersion = SnmpVersion.V3
    community_file: FilePath | None = None
    """v2c: a file holding the community."""
    community_credential: Text | None = None
    """v2c: a systemd credential (LoadCredential=) holding the community."""
    user: Text | None = None
    """v3: the USM user."""
    auth_protocol: SnmpAuthProtocol = SnmpAuthProtocol.SHA256
    auth_key_file: FilePath | None = None
    """v3: a file holding the authentication passphrase."""
    auth_key_credential: Text | None = None
    priv_protocol: SnmpPrivProtocol = SnmpPrivProtocol.AES
    priv_key_file: FilePath | None = None
    """v3: a file holding the privacy passphrase."""
    priv_key_credential: Text | None = None
    feed: Feed | None = None
    """The rack feed (a or b) this PDU is on; its branch circuits count for that feed."""
    branch_rating_a: Positive | None = None
    """The rated current of every branch breaker on this PDU; default: what the PDU reports
    (a profile's branch_rating), else unenforced."""
    branch_ratings_a: dict[Text, Positive] = Field(default_factory=dict)
    """Per branch index ("1", "2", …): a rating that differs from branch_rating_a."""
    poll_interval_s: Positive = 1.0
    timeout_s: Positive = 1.0
    """Per request; default: poll_interval_s, at most 1.0."""
    stale_after_s: Positive = 3.0
    """Default: 3 × poll_interval_s."""
    meters_rack: Flag = True
    """PDUs: its power counts toward the rack's (the rack's PDUs are summed: one per feed, or
    several power shelves); false for a second view of a meter already counted (the same PDU
    over another protocol)."""

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: object) -> object:
        return _per_poll(data, timeout_s=lambda poll: min(1.0, poll), stale_after_s=_thrice)

    @model_validator(mode="after")
    def _check(self) -> SnmpDeviceConfig:
        problems: list[tuple[str, str]] = []
        if self.version == SnmpVersion.V2C:
            if (self.community_file is None) == (self.community_credential is None):
                problems.append(
                    ("community_file", "v2c needs one of community_file, community_credential")
                )
        else:
            if self.user is None:
                problems.append(("user", "v3 needs a user"))
            for key in ("auth_key", "priv_key"):
                given = [getattr(self, f"{key}_file"), getattr(self, f"{key}_credential")]
                if sum(value is not None for value in given) != 1:
                    problems.append(
                        (f"{key}_file", f"v3 authPriv needs one of {key}_file, {key}_credential")
                    )
        if self.stale_after_s < self.poll_interval_s:
            problems.append(("stale_after_s", "must be at least poll_interval_s"))
        if problems:
            raise KeyProblem(*problems)
        return self


DeviceConfig = Annotated[
    ModbusDeviceConfig | MqttDeviceConfig | RedfishDeviceConfig | SnmpDeviceConfig,
    Field(discriminator="driver"),
]
"""One device of a rack, of the type its `driver` names."""
DEVICE = TypeAdapter(DeviceConfig)


# -- loops, safety, power -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, config=_STRUCTURE)
class LoopConfig:
    """A PID loop: hold `measurement` at `setpoint` by moving `actuator`."""

    id: EntryId = ""
    measurement: MeasurementRef
    actuator: PointRef
    """The writable point the loop moves, e.g. `cdu1/pump_speed_command`."""
    setpoint: Number
    """In the measurement's unit."""
    action: Action = Action.REVERSE
    kp: NonNegative = 0.0
    """Output per unit of error."""
    ki: NonNegative = 0.0
    """Output per (unit of error · second)."""
    kd: NonNegative = 0.0
    derivative_filter_s: Positive = 1.0
    output_min: Number
    output_max: Number
    slew_per_s: Positive | None = None
    """Largest change of the output per second; default: no limit."""
    failsafe_output: Number = 1.0
    """Written when the rack is blind; default: output_max (full cooling)."""
    enabled: Flag = True
    shutdown_output: Number | None = None
    """Written on stop; default: hand the actuator back to the device."""
    setpoint_min: Number | None = None
    """The lowest setpoint an operator's override may ask; default: what the measurement can
    read (its profile's range or register span)."""
    setpoint_max: Number | None = None
    """The highest setpoint an operator's override may ask; default as setpoint_min."""
    deadband: NonNegative = 0.0
    """Errors smaller than this count as zero (in the measurement's unit): a valve loop with
    a little deadband stops chasing sensor noise."""
    feedforward_gain_per_kw: Number | None = None
    """Output added per kW of the rack's measured power (its PDU's, else its servers'), so a
    load step moves the actuator before the temperature does; default: none."""
    feedforward_lag_s: NonNegative = 0.0
    """The lag the measured power is seen through (about the loop's thermal lag)."""
    feedforward_delay_s: NonNegative = 0.0
    """A dead time before that lag: how long a load step's heat takes to reach the exchanger
    (about the return pipe's volume over the flow). Opening the valve for heat still on its way
    undercools the supply; default: none."""
    boost_above_c: Number | None = None
    """A cascade on the chips: while the hottest server chip is above this, the setpoint
    moves toward `boost_setpoint` (more flow, cooler supply); default: no boost."""
    boost_setpoint: Number | None = None
    """The setpoint at full chip boost (needed with `boost_above_c` or `boost_from_kw`)."""
    boost_from_kw: NonNegative | None = None
    """Feedforward: the boost also grows with the rack's measured power (its PDU's, else its
    servers'), none at this many kW..."""
    boost_full_kw: NonNegative | None = None
    """...and full at this many; the larger of this and the chips' boost is in force."""
    boost_power_lag_s: NonNegative = 20.0
    """The lag the power boost sees the rack's power through: a pump's at once would bring a
    load step's hot return to the exchanger before the valve has opened for it; a supply
    loop's short, so its setpoint has moved before the loop settles."""
    setpoint_weight: Annotated[Number, Field(ge=0, le=1)] = 1.0
    """The share of a setpoint change the P term acts on (0..1; the integral acts on all of
    it): under 1, a moving setpoint (chip boost, override) is approached without a kick."""
    gain_schedule_point: PointRef | None = None
    """Gain scheduling: the point whose value scales kp, ki and kd (e.g. `cdu1/flow`, for a
    supply loop whose flow moves); default: fixed gains."""
    gain_schedule_at: tuple[Number, ...] = ()
    """The values of `gain_schedule_point`, increasing, where..."""
    gain_schedule_multiplier: tuple[NonNegative, ...] = ()
    """...the gains are multiplied by these (one each; linear in between, flat beyond)."""

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: object) -> object:
        if isinstance(data, Mapping) and "output_max" in data:
            return {"failsafe_output": data["output_max"], **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> LoopConfig:
        low, high = self.output_min, self.output_max
        if low > high:
            raise KeyProblem(("", f"output_min {low} is above output_max {high}"))
        if not low <= self.failsafe_output <= high:
            message = (
                f"must lie within output_min..output_max ({low}..{high}),"
                f" not {self.failsafe_output}"
            )
            raise KeyProblem(("failsafe_output", message))
        boosted = self.boost_above_c is not None or self.boost_from_kw is not None
        if boosted != (self.boost_setpoint is not None):
            message = "boost_setpoint goes with boost_above_c or boost_from_kw"
            raise KeyProblem(("boost_setpoint", message))
        if (self.boost_from_kw is None) != (self.boost_full_kw is None):
            raise KeyProblem(("boost_full_kw", "boost_from_kw and boost_full_kw go together"))
        if (
            self.boost_from_kw is not None
            and self.boost_full_kw is not None
            and self.boost_full_kw <= self.boost_from_kw
        ):
            raise KeyProblem(("boost_full_kw", "must be above boost_from_kw"))
        at, multiplier = self.gain_schedule_at, self.gain_schedule_multiplier
        if (self.gain_schedule_point is None) != (not at):
            message = "gain_schedule_point and gain_schedule_at go together"
            raise KeyProblem(("gain_schedule_at", message))
        if len(at) != len(multiplier):
            message = f"needs one value per gain_schedule_at ({len(at)}), has {len(multiplier)}"
            raise KeyProblem(("gain_schedule_multiplier", message))
        if any(b <= a for a, b in pairwise(at)):
            raise KeyProblem(("gain_schedule_at", "must increase"))
        below = self.setpoint_min is not None and self.setpoint < self.setpoint_min
        above = self.setpoint_max is not None and self.setpoint > self.setpoint_max
        if below or above:
            low_text = f"{-math.inf if self.setpoint_min is None else self.setpoint_min:g}"
            high_text = f"{math.inf if self.setpoint_max is None else self.setpoint_max:g}"
            message = (
                f"must lie within setpoint_min..setpoint_max ({low_text}..{high_text}),"
                f" not {self.setpoint:g}"
            )
            raise KeyProblem(("setpoint", message))
        return self


@dataclass(frozen=True, kw_only=True, config=_STRUCTURE)
class SafetyConfig:
    """The supervisor's settings for one rack (see control/supervisor.py)."""

    failsafe_after_s: Positive = 3.0
    """Readings a loop needs stale this long: the rack goes to failsafe."""
    hold_s: NonNegative = 10.0
    """A cause clear this long releases its interlock or failsafe (over-temperature: its own)."""
    leak_response: LeakResponse = LeakResponse.SAFE_SPEED
    """The pump on a leak: slowed to pump_safe_speed (coolant keeps moving, at low pressure),
    or stopped."""
    pump_safe_speed: NonNegative = 0.3
    """The pump speed of leak_response = "safe_speed"."""
    leak_debounce_s: NonNegative = 1.0
    """A detector must read wet this long without a break before the leak trips."""
    leak_votes: Votes = 1
    """Wet detectors needed to trip, where the rack has at least this many (2: 2-of-N)."""
    leak_latched: Flag = True
    """A leak stays tripped after the detectors read dry, until `coolctl interlock reset`."""
    leak_caps_timeout_s: NonNegative = 5.0
    """On a leak, caps fall first; the pump's leak value waits until the PDU shows the power
    down, or this long."""
    leak_shutdown_servers: Flag = False
    """On a leak, also shut the rack's servers down gracefully (Redfish ComputerSystem.Reset,
    GracefulShutdown) with the minimum caps. coolctl never powers them on again: after
    `coolctl interlock reset` they stay off until an operator powers them on."""
    standby_changeover_s: Positive = 2.0
    temperature_limits: Mapping[PointRef, Number] = Field(default_factory=dict)
    """`"device/point" = limit` in °C: over it, the supervisor cools at full."""
    chip_limit_c: Positive | None = None
    """Every server's chip_temperature over this: over-temperature (set it a little under the
    chips' own throttle point); default: none."""
    outlet_limit_c: Positive | None = None
    """Every server's coolant_outlet_temperature over this: over-temperature; default: none."""
    return_limit_c: Positive | None = None
    """The pump CDU's return_temperature over this: over-temperature; default: none."""
    temperature_release_band_c: NonNegative = 2.5
    """Over-temperature releases only once every reading is this far under its limit."""
    over_temperature_hold_s: NonNegative = 60.0
    """How long over-temperature's cause must stay clear before it releases."""
    rated_flow_lpm: Positive | None = None
    """The pump CDU's flow at full speed: with it, flow under min_flow_fraction of what the
    speed should give is a loss of flow."""
    rated_differential_pressure_pa: Positive | None = None
    """The loop's ΔP at rated_flow_lpm: an operator's ΔP setpoint stays under it, and (with
    rated_flow_lpm) over the ΔP that gives min_flow_setpoint_lpm_per_kw, along the loop's
    square-law curve (ΔP ∝ flow²); default: a ΔP setpoint is bounded by its sensor only."""
    min_flow_fraction: Fraction = 0.5
    min_flow_lpm_per_kw: NonNegative = 0.5
    """Flow under this per kW of the rack's power (its PDU's) is a loss of flow; 0: off."""
    flow_debounce_s: NonNegative = 2.0
    """A loss of flow must last this long to trip."""
    min_reservoir_level_l: NonNegative | None = None
    """The pump CDU's reservoir_level under this: the pump stops before it runs dry."""
    leak_level_drop_l_per_min: Positive | None = None
    """The pump CDU's reservoir_level falling at least this fast (a least-squares slope over
    leak_level_window_s) counts as one more leak detector: a leak no rope reports (a detector
    stuck dry, coolant lost where no rope lies) still drains the reservoir. Set it over what
    the level does in normal work (thermal expansion on a load step, a makeup fill); none: off."""
    leak_level_window_s: Positive = 20.0
    """The window of that slope: longer rides out a noisy sensor, shorter trips sooner."""
    silent_after_s: Positive | None = 30.0
    """A leak detector, flow meter or level sensor not heard this long after start-up (or
    stale or bad since) is an alarm; none: off."""
    failsafe_hold_under_c: Positive | None = 80.0
    """A rack blind for want of a reading holds its last outputs and caps while every server's
    chip_temperature is good and under this; none: failsafe values at once."""
    failsafe_cap_band_c: NonNegative = 5.0
    """Blind, with a chip over failsafe_hold_under_c: the caps keep a share of their span
    that falls to nothing at this many K over it (or with a chip reading not good); 0: caps to
    their minimum at once."""
    thermal_cap: Flag = True
    """Cap the rack's IT power continuously when pump and valve are at their top and a
    temperature nears its limit (PID racks), instead of tripping on and off."""
    thermal_cap_margin_c: NonNegative = 2.0
    """The margin under each limit the thermal cap holds."""
    supply_limit_margin_c: NonNegative = 7.0
    """An operator's supply-temperature setpoint stays this far under the lowest supply
    limit in temperature_limits (7 K: at 5 K, 40 °C under a 45 °C limit, the simulated rack's
    chips throttle at full power even at 1.5 L/min per kW)."""
    chip_near_throttle_margin_c: NonNegative = 5.0
    """A server whose hottest chip is within this of its throttle point (as its BMC reports
    it, else chip_limit_c) is near throttle: an event, a metric, a line in status and top."""
    min_flow_setpoint_lpm_per_kw: NonNegative = 1.5
    """An operator's flow setpoint stays at least this per kW of the rack's power (OCP's
    design figure for cold-plate racks: 1.5 L/min per kW); 0: off."""
    thermal_cap_chip_c: Positive | None = None
    """A chip temperature the thermal cap keeps its margin under, on every server whose chip
    has no limit above (chip_limit_c), without an interlock at it; default: none."""
    supply_floor_margin_c: NonNegative = 2.0
    """The supply is never driven below the facility water or the room's dew point (a
    dew_point reading, or room_temperature and room_humidity) plus this: supply setpoint
    commands are floored, the supply valve closes while the supply is under it, and an
    operator's supply setpoint under it is refused."""


CDU_ALARMS: tuple[str, ...] = tuple(
    name for name in CANONICAL_POINTS if name.endswith("_alarm") or name.endswith("_fault")
)


@dataclass(frozen=True, kw_only=True, config=_STRUCTURE)
class CduConfig:
    """A CDU that runs its own loops (cdu_control = "setpoints"), and its alarms (both modes).

    In setpoint mode the rack's CDU loops give the setpoints: a loop on supply_temperature
    writes supply_temperature_setpoint, one on flow flow_setpoint, one on
    differential_pressure differential_pressure_setpoint (its setpoint, within its
    setpoint_min..setpoint_max); the CDU's own loops act on them."""

    failsafe_supply_temperature_c: Number | None = None
    """Supply setpoint written while the rack is blind; default: the supply loop's setpoint."""
    failsafe_flow_lpm: Positive | None = None
    """Flow setpoint written while the rack is blind; default: the flow loop's setpoint."""
    failsafe_differential_pressure_pa: Positive | None = None
    """ΔP setpoint written while the rack is blind; default: the ΔP loop's setpoint."""
    stop_on_alarms: tuple[Text, ...] = ()
    """CDU alarms that stop the CDU as a leak does (caps first, then the pumps), e.g.
    ["low_level_alarm"]; every alarm is an event either way."""

    def __post_init__(self) -> None:
        unknown = [name for name in self.stop_on_alarms if name not in CDU_ALARMS]
        if unknown:
            message = f"{', '.join(unknown)} not among the CDU alarms ({', '.join(CDU_ALARMS)})"
            raise KeyProblem(("stop_on_alarms", message))


@dataclass(frozen=True, kw_only=True, config=_STRUCTURE)
class PowerConfig:
    """How the rack's budget is shared out as server caps (see control/powercap.py)."""

    margin_w: NonNegative = 0.0
    """The caps' sum stays this far under the budget."""
    overhead_w: NonNegative = 0.0
    """Non-server load (pump, fans, PDU) when no PDU measures it."""
    release_rate_w_per_s: Positive | None = 2000.0
    """How fast each cap may rise again (they fall at once), so a released interlock or budget
    ramps the rack back rather than stepping it."""
    cap_deadband_w: NonNegative = 50.0
    """Per server: a cap whose share moves less than this is not rewritten, and this much of
    the budget is kept back so that held caps still fit; 0 rewrites caps for every watt."""
    derating: Annotated[Fraction, Field(gt=0)] = 0.8
    """Breakers and feeds are loaded to at most this fraction of their rating."""
    voltage_v: Positive = 230.0
    """Volts per branch circuit: turns a breaker's amperes into watts."""
    feed_rating_w: Positive | None = None
    """What one feed may carry (before derating): with two feeds, either must carry the caps
    of every server on it when the other fails. Default: only branches and budget bind."""
    # 50 W rides out the tens of watts of noise in a PDU's and the BMCs' readings (a released
    # server's share follows its own power reading: with 10 W of reading noise, 25 W still let
    # about one cap in seven through each step in the scale benchmark).


Devices = Annotated[Mapping[Id, DeviceConfig], BeforeValidator(_with_ids)]
Loops = Annotated[Mapping[Id, LoopConfig], BeforeValidator(_with_ids)]


@dataclass(frozen=True, kw_only=True, config=_STRUCTURE)
class RackConfig:
    """One rack: its devices, its loops, and the budget its servers' caps share."""

    id: EntryId = ""
    control_period_s: Positive = 1.0
    devices: Devices
    """The rack's devices, by name."""
    loops: Loops = Field(default_factory=dict)
    """The rack's PID loops, by name."""
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    power_budget_w: Positive | None = None
    """The rack's power budget; default: none (caps are left alone)."""
    budget_point: PointRef | None = None
    """An upstream coordinator's budget, e.g. over MQTT (profile row-budget)."""
    budget_min_w: NonNegative = 0.0
    """Budgets from upstream below this are rejected."""
    budget_max_w: Positive = 10e6
    """Budgets from upstream above this are rejected."""
    budget_band_fraction: NonNegative = 0.5
    """Budgets from upstream further than this fraction from power_budget_w are rejected
    (0.5: 50..150 % of it), so a client that can publish the budget cannot zero the rack."""
    budget_min_interval_s: NonNegative = 1.0
    """A budget from upstream changes at most once per this many seconds; a newer one waits."""
    budget_max_age_s: Positive = 60.0
    """A new budget from upstream older than this is rejected, and so is a retained one replayed
    by the broker on subscribing (its age is unknown): the coordinator must publish it live."""
    power: PowerConfig = Field(default_factory=PowerConfig)
    controller: Controller = Controller.PID
    mpc_model: FilePath | None = None
    """The MPC's model file (`coolctl identify --out`), for controller = "mpc"."""
    cdu_control: CduControl = CduControl.DIRECT
    """`direct`: the loops drive the CDU's pump and valve; `setpoints`: the loops' setpoints go
    to a CDU that runs its own loops, with its run command and mode (see [racks.X.cdu])."""
    cdu: CduConfig = Field(default_factory=CduConfig)

    @model_validator(mode="before")
    @classmethod
    def _note_devices(cls, data: object, info: ValidationInfo) -> object:
        """Let references to devices check against the devices that are usable."""
        if isinstance(info.context, dict) and isinstance(data, Mapping):
            entries = _with_ids(data.get("devices"))
            usable = set()
            if isinstance(entries, Mapping):
                for key in entries:
                    # A device with a bad entry is still configured: its own error says what
                    # is wrong, and references to it must not add "not configured" lines.
                    try:
                        TypeAdapter(Id).validate_python(key)
                    except ValidationError:
                        continue
                    usable.add(key)
            info.context["devices"] = frozenset(usable)
        return data

    @model_validator(mode="after")
    def _check(self) -> RackConfig:
        problems: list[tuple[str, str]] = []
        owners: dict[object, str] = {}
        for loop in self.loops.values():
            if loop.actuator in owners:
                message = (
                    f"actuator {loop.actuator} is already driven by loop {owners[loop.actuator]!r}"
                )
                problems.append((f"loops.{loop.id}.actuator", message))
            owners.setdefault(loop.actuator, loop.id)
        # controller = "mpc" needs its model file and a pump loop (its PID fallback); a model
        # with the PID controller is a mistake, not a spare. (Whether the file is a model that
        # fits this rack is checked with the profiles: coolctl.rack.check.check_profiles.)
        mpc = self.controller == Controller.MPC
        if mpc and self.mpc_model is None:
            problems.append(
                (
                    "mpc_model",
                    'controller = "mpc" needs mpc_model = "FILE" (write one with coolctl identify)',
                )
            )
        if not mpc and self.mpc_model is not None:
            problems.append(("mpc_model", 'only used with controller = "mpc"'))
        for device in self.devices.values():  # a server's branches name SNMP PDUs of the rack
            for ref in getattr(device, "branches", ()):
                pdu, _, index = ref.partition("/")
                if not isinstance(self.devices.get(pdu), SnmpDeviceConfig) or not index:
                    message = f"{ref!r} is not PDU/N with PDU an snmp device of this rack"
                    problems.append((f"devices.{device.id}.branches", message))
        if mpc and not any(
            loop.actuator.point == "pump_speed_command" for loop in self.loops.values()
        ):
            message = (
                'controller = "mpc" needs a loop on a CDU\'s pump_speed_command:'
                " the PID loop the MPC falls back to"
            )
            problems.append(("controller", message))
        if mpc and self.cdu_control == CduControl.SETPOINTS:
            message = 'a CDU that runs its own loops (cdu_control = "setpoints") takes no MPC'
            problems.append(("cdu_control", message))
        if self.safety.leak_shutdown_servers and not any(
            isinstance(device, RedfishDeviceConfig) and device.kind == DeviceKind.SERVER
            for device in self.devices.values()
        ):
            message = (
                "shuts servers down through their Redfish BMCs, and this rack has none"
                ' (a device with driver = "redfish", kind = "server"); remove the key or add'
                " the BMCs"
            )
            problems.append(("safety.leak_shutdown_servers", message))
        if problems:
            raise KeyProblem(*problems)
        return self


# -- the daemon and the broker --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, config=_STRUCTURE)
class DaemonConfig:
    """The daemon's own listeners, logs and state."""

    metrics_listen: HostPort = Field(
        default=("127.0.0.1", DEFAULT_METRICS_PORT),
        json_schema_extra={"default": f"127.0.0.1:{DEFAULT_METRICS_PORT}"},
    )
    """HOST:PORT of /metrics and /healthz."""
    log_format: LogFormat = LogFormat.TEXT
    log_level: LogLevel = LogLevel.INFO
    state_directory: FilePath | None = None
    """Default: $STATE_DIRECTORY (systemd) or /var/lib/coolctl."""
    control_socket: FilePath | None = None
    """Default: $RUNTIME_DIRECTORY/control.sock or /run/coolctl/control.sock."""
    control_socket_group: Text | None = None
    """The group whose members may use the control socket."""
    control_listen: HostPort | None = None
    """HOST:PORT of an optional TCP control listener (bearer token: needs control_token_file)."""
    control_token_file: FilePath | None = None
    """The operator's bearer token for control_listen: at least 32 bytes, mode 0600."""
    control_viewer_token_file: FilePath | None = None
    """A second token for control_listen that may only read (role viewer)."""
    control_operator_group: Text | None = None
    """Members may change things over the socket; its other users only read (role viewer).
    Default: everyone who can reach the socket is an operator."""
    tls_cert_file: FilePath | None = None
    """PEM certificate (chain) for control_listen and metrics_listen: both then serve HTTPS."""
    tls_key_file: FilePath | None = None
    tls_client_ca_file: FilePath | None = None
    """With TLS: clients of both listeners must show a certificate this CA signed."""
    allow_plaintext: Flag = False
    """Let control_listen serve plain HTTP beyond loopback (the token crosses in clear)."""
    max_override_ttl_s: Positive = 604800.0
    """The longest override lifetime an operator may give (7 days); longer is --permanent."""
    events_keep: EventCount = 100000
    """The store keeps at most this many events (the newest; the audit log is kept whole)."""
    events_max_age_s: Positive = 7776000.0
    """The store drops events older than this (90 days)."""

    @property
    def metrics_host(self) -> str:
        return self.metrics_listen[0]

    @property
    def metrics_port(self) -> int:
        return self.metrics_listen[1]

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @model_validator(mode="after")
    def _check(self) -> DaemonConfig:
        problems: list[tuple[str, str]] = []
        if self.control_listen is not None and self.control_token_file is None:
            problems.append(("control_listen", "a TCP control listener needs control_token_file"))
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            problems.append(("tls_key_file", "give tls_cert_file and tls_key_file together"))
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            problems.append(("tls_client_ca_file", "client certificates need tls_cert_file"))
        if self.control_viewer_token_file is not None and self.control_listen is None:
            problems.append(("control_viewer_token_file", "only used with control_listen"))
        if (
            self.control_listen is not None
            and not is_loopback(self.control_listen[0])
            and not self.tls
            and not self.allow_plaintext
        ):
            message = (
                f"{self.control_listen[0]} is not loopback: serve the control API over TLS"
                " (tls_cert_file, tls_key_file), or accept its token in clear with"
                " allow_plaintext = true"
            )
            problems.append(("control_listen", message))
        if problems:
            raise KeyProblem(*problems)
        return self


def is_loopback(host: str) -> bool:
    """Whether traffic to `host` stays on this machine (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, kw_only=True, config=_STRUCTURE)
class MqttConfig:
    """The broker the daemon subscribes to sensors on and publishes its state and events to."""

    broker: ServiceAddress
    """HOST:PORT of the broker."""
    username: Text | None = None
    password_file: FilePath | None = None
    """A file holding the password (never the password itself in the config)."""
    password_credential: Text | None = None
    """A systemd credential (LoadCredential=) holding the password."""
    tls: Flag = False
    ca_file: FilePath | None = None
    topic_root: TopicPart = "coolctl/{site}"
    """State: ROOT/RACK/state, events: ROOT/RACK/events, ROOT/status (online/offline)."""
    allow_plaintext: Flag = False
    """Let credentials go to a broker beyond loopback without TLS (they cross in clear)."""

    @property
    def has_credentials(self) -> bool:
        return (
            self.username is not None
            or self.password_file is not None
            or (self.password_credential is not None)
        )

    @property
    def host(self) -> str:
        return self.broker[0]

    @property
    def port(self) -> int:
        return self.broker[1]

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        if self.password_file is not None and self.password_credential is not None:
            raise KeyProblem(("", "give password_file or password_credential, not both"))
        if (
            self.has_credentials
            and not self.tls
            and self.ca_file is None
            and not is_loopback(self.host)
            and not self.allow_plaintext
        ):
            message = (
                f"credentials for {self.host}, which is not loopback, would cross in clear:"
                " set tls = true (and ca_file), or allow_plaintext = true"
            )
            raise KeyProblem(("tls", message))
        return self


@dataclass(frozen=True, kw_only=True, config=_STRUCTURE)
class SiteConfig:
    """The site the daemon's racks belong to."""

    name: TopicPart = "site"
    """Fills {site} in the MQTT topic root and names the daemon's MQTT client."""


Racks = Annotated[Mapping[Id, RackConfig], BeforeValidator(_with_ids)]


@dataclass(frozen=True, kw_only=True, config=_STRUCTURE)
class Config:
    """A coolctl config file: site → racks → devices and loops."""

    path: SkipJsonSchema[Path | None] = None
    site: SiteConfig = Field(default_factory=SiteConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    mqtt: MqttConfig | None = None
    """Needed by MQTT devices; also where state and events are published."""
    racks: Racks
    """The racks this daemon controls, by name."""

    @model_validator(mode="after")
    def _one_setting_per_serial_bus(self) -> Config:
        buses: dict[str, tuple[str, tuple[object, ...]]] = {}
        for rack in self.racks.values():
            for device in rack.devices.values():
                if not isinstance(device, ModbusDeviceConfig) or device.transport != "rtu":
                    continue
                where = f"racks.{rack.id}.devices.{device.id}"
                settings = (device.baudrate, device.parity, device.stopbits, device.bytesize)
                first = buses.setdefault(str(device.serial_port), (where, settings))
                if first[1] != settings:
                    raise KeyProblem(
                        (
                            where,
                            f"serial port {device.serial_port} is set up differently by {first[0]}",
                        )
                    )
        return self

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.mqtt is not None:
            return self
        problems = [
            (f"racks.{rack.id}", f"devices.{device.id} needs an [mqtt] table with the broker")
            for rack in self.racks.values()
            for device in rack.devices.values()
            if isinstance(device, MqttDeviceConfig)
        ]
        if problems:
            raise KeyProblem(*problems)
        return self


CONFIG = TypeAdapter(Config)


def json_schema() -> dict[str, Any]:
    """The config file's JSON Schema, with each key's description."""
    return CONFIG.json_schema()
