"""The safety supervisor: the last word over every command coolctl sends to one rack.

Precedence, highest first: interlock (leak, over-temperature, pump failure) > operator override
> failsafe > automatic control. Failsafe is a state of the whole rack, not of one loop: it holds
at start-up until every required reading has been good once, when a required reading has not
been good for longer than `failsafe_after_s`, and after a controller raised. Until then a blind
loop asks for nothing and the actuator simply holds its last value.

Interlock and failsafe values take effect at once (no slew: a leak must stop the pump now) and
are checked against the hard range only. Automatic and override values are held to the normal
range and slew from the last value the supervisor commanded, so coming back from an interlock or
failsafe is a ramp, never a jump.

Every cause has hysteresis: it trips once it has been seen for its debounce time (none unless
configured) and releases only after it has been seen clear without a break for `hold_s`. A
reading that is not good is not "clear": with `interlock_holds_through_blindness` an interlock
never releases on a sensor that went quiet. A leak can be latched (`leak_latched`): then it never
releases by itself; an operator resets it (`reset_interlock`) once the ropes read dry.

Interlocks beyond leak, over-temperature and pump failure see the plant itself: a loss of flow
(flow under what the pump's speed should give, or under a floor per kW of IT power) and a low
coolant level (the pump is stopped before it runs dry). A leak's response is sequenced: caps
first, then, once the PDU shows the power down (or after a timeout), the pump's leak value.
A server's power (`SERVER_POWER`, where configured) is shut down with the caps; nothing but an
interlock or an operator's override ever writes it: failsafe, hand-back and the release of the
interlock leave it as it is, so a server shut down stays off until an operator powers it on.
Safety sensors that never reported or went silent raise an alarm (an event and a state) — a
configured leak rope is never silently ignored.

A supply floor keeps the coolant off the pipes' dew point: no command to a
`supply_temperature_setpoint` goes below `supply_floor_margin_c` over the facility water and over
the room air's dew point (a `dew_point` reading, or Magnus from `room_temperature` and
`room_humidity`); while the supply reads under the dew point + margin (in failsafe: under that
floor) the supply valve is not opened further but closed at `supply_valve_close_per_s`
(automatic, override and failsafe values alike; an interlock's value still wins); with the
supply unread, a failsafe does not open the valve while the facility water (as last read) is
under the dew point + margin.

Pure and deterministic: no clock reads, `now` is monotonic seconds passed in by the caller, and
the same calls in the same order give the same decisions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Literal

from coolctl.control.dewpoint import dew_point_c, supply_floor_c
from coolctl.control.level_trend import LevelTrend
from coolctl.control.limits import ActuatorClamp, ActuatorLimits
from coolctl.model import Command, Event, PointId, Quality, Severity, Snapshot, Source

LEAK = "leak"
OVER_TEMPERATURE = "over_temperature"
PUMP_FAILURE = "pump_failure"
LOSS_OF_FLOW = "loss_of_flow"
LOW_LEVEL = "low_coolant_level"
INTERLOCKS: tuple[str, ...] = (LEAK, OVER_TEMPERATURE, PUMP_FAILURE, LOSS_OF_FLOW, LOW_LEVEL)
SUPPLY_SETPOINT = "supply_temperature_setpoint"
"""A CDU's own supply setpoint: every command to it is floored (see the module docstring)."""

_LABELS: Mapping[str, str] = {
    LEAK: "leak",
    OVER_TEMPERATURE: "over-temperature",
    PUMP_FAILURE: "pump failure",
    LOSS_OF_FLOW: "loss of flow",
    LOW_LEVEL: "low coolant level",
}
# Pumps, valves and the standby selector take these first, in this order, whatever else asks
# for more: pumping through a leak or with no coolant does more harm than any heat.
_PUMP_PROTECTING: tuple[str, ...] = (LEAK, LOW_LEVEL)

# Failsafe causes. Start-up is not a fault: it ends as soon as every required reading has been
# good once, without waiting for hold_s.
_STARTUP = "startup"
_BLIND = "blind"
_CONTROLLER = "controller"
_CAUSES: tuple[str, ...] = (_STARTUP, _BLIND, _CONTROLLER)

_ON = 0.5  # boolean points: at or above this reads as 1
# A low coolant level clears only once the level is this share over its minimum: a reservoir
# drained to the minimum reads around it, and must not restart the pump at each noisy sample.
_LEVEL_RELEASE_SHARE = 0.1
_NO_FLOW_SHARE = 0.3  # flow under this share of rated: nothing moves the coolant

_Change = Literal["entered", "cleared"]


class ActuatorRole(StrEnum):
    """What an actuator does for the rack; it decides which value is the safest."""

    PUMP = "pump"
    VALVE = "valve"
    POWER_LIMIT = "power_limit"
    STANDBY = "standby"  # a writable 0/1 that selects the standby pump, if a CDU has one
    ISOLATION = "isolation"  # a writable 0/1 that closes (0) the rack's isolation valves
    SETPOINT = "setpoint"  # a setpoint or mode of a CDU that runs its own loops
    SERVER_POWER = "server_power"  # a writable 0/1: 0 shuts a server down gracefully


@dataclass(frozen=True, slots=True)
class ActuatorSafety:
    """One actuator's normal range and slew, and the values safety may force on it."""

    point: PointId
    role: ActuatorRole
    minimum: float  # bounds for auto and override commands
    maximum: float
    slew_per_s: float | None  # slew for auto and override commands
    failsafe: float  # when blind, at start-up, when a controller raised
    hard_minimum: float  # what interlock and failsafe values may be (pump 0.0 = stop)
    hard_maximum: float
    on_leak: float | None = None  # None: the leak interlock leaves this actuator alone
    on_over_temperature: float | None = None
    on_pump_failure: float | None = None  # caps when no standby pump took over
    on_loss_of_flow: float | None = None  # caps: less heat while nothing carries it away
    on_low_level: float | None = None  # pump stopped before it runs dry; caps down
    shutdown: float | None = None  # None: write nothing on shutdown (the device's own mode)


@dataclass(frozen=True, slots=True)
class TemperatureLimit:
    """A temperature that trips the over-temperature interlock when exceeded."""

    point: PointId
    limit_c: float


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """Everything the supervisor of one rack needs to know; see the module docstring."""

    rack: str
    actuators: tuple[ActuatorSafety, ...]
    leak_points: tuple[PointId, ...] = ()  # boolean points; any 1.0 → leak
    temperature_limits: tuple[TemperatureLimit, ...] = ()
    pump_running: PointId | None = None  # boolean; 0 while the pump should run → pump failure
    standby_active: PointId | None = None  # boolean; 1 when the CDU's standby pump took over
    standby_changeover_s: float = 2.0  # how long to wait for a standby to take over before caps
    required: tuple[PointId, ...] = ()  # not good for longer than failsafe_after_s → failsafe
    failsafe_after_s: float = 3.0
    hold_s: float = 10.0  # a cause must be clear this long before recovery
    interlock_holds_through_blindness: bool = True  # unknown is not dry
    # leak: wet this long without a break before it trips (0: the first wet sample), and how
    # many detectors must read wet where the rack has at least that many (2-of-N)
    leak_debounce_s: float = 0.0
    leak_votes: int = 1
    leak_latched: bool = False  # a leak interlock releases only by an operator's reset
    # The leak's pump response waits until the rack's power (the sum of `power`: its PDUs, one
    # per feed, or its power shelves) reads at most `leak_caps_power_w` (the caps have taken
    # hold), or `leak_caps_timeout_s` after the trip; 0 s: no wait
    power: tuple[PointId, ...] = ()
    leak_caps_power_w: float | None = None
    leak_caps_timeout_s: float = 0.0
    # over-temperature: releases only below limit - band, after this hold (None: hold_s)
    temperature_release_band_c: float = 0.0
    over_temperature_hold_s: float | None = None
    # loss of flow: flow under min_flow_fraction × pump speed × rated_flow_lpm, or under
    # min_flow_lpm_per_kw × the rack's power, for flow_debounce_s, while the pump is asked for
    # at least min_pump_speed
    flow: PointId | None = None
    rated_flow_lpm: float | None = None
    min_flow_fraction: float = 0.5
    min_flow_lpm_per_kw: float = 0.0
    min_pump_speed: float = 0.2
    flow_debounce_s: float = 2.0
    # low coolant level: the reservoir under this many litres
    reservoir_level: PointId | None = None
    min_reservoir_level_l: float | None = None
    # the reservoir level falling at least this fast (least squares over the window) is a leak
    # detector of its own: a leak that no rope reports still drains the reservoir; None: off
    leak_level_drop_l_per_min: float | None = None
    leak_level_window_s: float = 20.0
    # safety sensors (leak detectors, flow, level) not heard this long after start-up: alarm
    silent_after_s: float | None = None
    safety_sensors: tuple[PointId, ...] = ()  # those watched; empty: leak points, flow, level
    # failsafe while blind: actuators hold their last values (nothing written) as long as every
    # `healthy_points` reading is good and under its limit less `healthy_margin_c`
    healthy_points: tuple[TemperatureLimit, ...] = ()
    healthy_margin_c: float = 5.0
    # ...and past that, caps fall in proportion: at `failsafe_cap_band_c` over the healthy
    # threshold (or with a reading not good) they are at their minimum; 0: minimum at once
    failsafe_cap_band_c: float = 0.0
    # the supply floor (see the module docstring): the supply temperature the valve acts on,
    # what the floor is computed from, and how fast the valve closes while under it
    supply: PointId | None = None
    facility_supply: PointId | None = None
    dew_point: PointId | None = None
    room_temperature: PointId | None = None
    room_humidity: PointId | None = None
    supply_floor_margin_c: float = 2.0
    supply_valve_close_per_s: float = 0.02
    # caps that do not hold: `power` over the caps in force (+10 %) and `power_overhead_w` for
    # this long is an alarm (a BMC that took the write and did not cap, a write that was lost)
    power_overhead_w: float = 0.0
    caps_hold_within_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Override:
    """An operator's value for one actuator, already resolved and unexpired by the caller."""

    point: PointId
    value: float
    who: str
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    """What the supervisor wants written now, and what changed on the way."""

    commands: tuple[Command, ...]  # at most one per actuator, each with source and reason
    events: tuple[Event, ...]  # one per change of state, never one per tick
    interlocks: frozenset[str]  # active interlocks: "leak", "over_temperature", "pump_failure"
    failsafe: bool  # the rack is in failsafe (start-up, blind, controller raised)


@dataclass(frozen=True, slots=True)
class InterlockStatus:
    """An active interlock: since when, why, and since when its cause has been clear."""

    name: str
    since: float
    reason: str
    clear_since: float | None  # released once clear for hold_s
    awaiting_reset: bool = False  # latched: clear, waiting for an operator's reset


@dataclass(frozen=True, slots=True)
class ActuatorStatus:
    """The last value the supervisor commanded for one actuator, and what the device holds."""

    point: PointId
    role: ActuatorRole
    value: float | None
    source: Source | None
    reason: str
    ts: float | None
    observed: float | None


@dataclass(frozen=True, slots=True)
class SupervisorState:
    """A read-only picture of the supervisor, for metrics and status."""

    rack: str
    interlocks: Mapping[str, InterlockStatus]
    failsafe: bool
    failsafe_since: float | None
    failsafe_reasons: tuple[str, ...]
    actuators: Mapping[PointId, ActuatorStatus]
    standby_took_over: bool
    pump_failure_caps: bool
    shut_down: bool
    silent_sensors: Mapping[PointId, str] = field(default_factory=dict)  # point -> why silent
    leak_caps_confirmed: bool = True  # the leak's pump response has gone out


@dataclass(frozen=True, slots=True)
class _Sense:
    """One sample of a cause: tripped, known to be clear, or neither (a reading not good)."""

    tripped: bool
    clear: bool
    reason: str = ""


_QUIET = _Sense(tripped=False, clear=True)


@dataclass(slots=True)
class _Latch:
    """A cause with hysteresis: it trips at once and releases only after hold_s clear.

    A sample that is neither tripped nor clear (nothing good to judge by) restarts the clear
    time, so an unknown never ends an interlock or a failsafe early.
    """

    active: bool = False
    since: float | None = None
    clear_since: float | None = None
    reason: str = ""
    seen_since: float | None = None  # tripped samples without a break, for the debounce

    def update(
        self,
        sense: _Sense,
        now: float,
        hold_s: float,
        debounce_s: float = 0.0,
        latched: bool = False,
    ) -> _Change | None:
        if sense.tripped:
            self.reason = sense.reason
            self.clear_since = None
            if self.active:
                return None
            if self.seen_since is None:
                self.seen_since = now
            if now - self.seen_since < debounce_s:
                return None
            self.active, self.since = True, now
            return "entered"
        self.seen_since = None
        if not self.active:
            return None
        if not sense.clear:
            self.clear_since = None
            return None
        if self.clear_since is None:
            self.clear_since = now
        if latched or now - self.clear_since < hold_s:
            return None
        self.release()
        return "cleared"

    def release(self) -> None:
        self.active, self.since, self.clear_since, self.seen_since = False, None, None, None

    def trip(self, reason: str, now: float) -> None:
        self.active, self.since, self.clear_since, self.reason = True, now, None, reason


@dataclass(slots=True)
class _PumpFailure:
    """Where a pump failure stands: waiting for the standby pump, taken over, or capped."""

    onset: float = 0.0
    standby_was_on: bool = False
    took_over: bool = False
    caps: bool = False


@dataclass(frozen=True, slots=True)
class _Issued:
    value: float
    source: Source
    reason: str
    ts: float


def _num(value: float) -> str:
    """A bound or value as operators read it in messages: 1.0, 0.15, 400.0."""
    return repr(float(value))


def _num_or(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f}"


def _finite_value(snapshot: Snapshot, point: PointId) -> float | None:
    """A good, finite reading, or None: a NaN that claims to be good is no better than bad."""
    value = snapshot.value(point)
    return value if value is not None and math.isfinite(value) else None


def _sum_of(snapshot: Snapshot, points: tuple[PointId, ...]) -> float | None:
    """The sum of good, finite readings of every point, or None if any has none (a rack fed
    by two PDUs is not metered by one of them)."""
    values = [_finite_value(snapshot, point) for point in points]
    if not values or any(value is None for value in values):
        return None
    return math.fsum(value for value in values if value is not None)


def _quality(snapshot: Snapshot, point: PointId) -> str:
    reading = snapshot.get(point)
    if reading is None:
        return "missing"
    return "without a usable value" if reading.usable else reading.quality.value


def _describe(safety: ActuatorSafety, value: float) -> str:
    """What a value means for the actuator, for command reasons."""
    role = safety.role
    if role is ActuatorRole.PUMP:
        return "pump stopped" if value <= 0.0 else f"pump at {value:.4g}"
    if role is ActuatorRole.VALVE:
        return f"valve at {value:.4g}"
    if role is ActuatorRole.POWER_LIMIT:
        return f"power limit {value:.6g}"
    if role is ActuatorRole.SETPOINT:
        return f"{safety.point.name} {value:.6g}"
    if role is ActuatorRole.SERVER_POWER:
        return "server shut down" if value < _ON else "server powered on"
    return "standby pump selected" if value >= _ON else "standby pump not selected"


def _safest(role: ActuatorRole, offers: Sequence[tuple[str, float]]) -> tuple[str, float]:
    """The value, among those the active interlocks ask for, that is safest for this role."""
    if role is ActuatorRole.POWER_LIMIT:
        return min(offers, key=lambda offer: offer[1])  # the lowest cap wins
    # A leak and a low coolant level win over everything for pumps, valves and the standby
    # selector: pumping coolant through a leak, or with none left, does more harm than any
    # over-temperature, so their stop (or slow speed) stands even when over-temperature asks
    # for full speed. Between the two, the lower: a leak's safe speed must not keep a pump
    # running once the leak has drained the reservoir to its low level.
    protecting = [offer for offer in offers if offer[0] in _PUMP_PROTECTING]
    if protecting:
        return min(protecting, key=lambda offer: offer[1])
    return max(offers, key=lambda offer: offer[1])  # otherwise more flow, more cooling


def _require_time(now: float) -> None:
    if not math.isfinite(now):
        raise ValueError(f"now must be finite, got {now!r}")


def _validate(config: SupervisorConfig) -> None:
    """Refuse a configuration under which the supervisor could command something unsafe."""
    if not config.rack:
        raise ValueError("rack must not be empty")
    close = config.supply_valve_close_per_s
    if not (math.isfinite(close) and close > 0.0):
        raise ValueError(f"supply_valve_close_per_s must be finite and > 0, got {close!r}")
    for name in (
        "standby_changeover_s",
        "failsafe_after_s",
        "hold_s",
        "leak_debounce_s",
        "leak_caps_timeout_s",
        "temperature_release_band_c",
        "min_flow_fraction",
        "min_flow_lpm_per_kw",
        "min_pump_speed",
        "flow_debounce_s",
        "healthy_margin_c",
        "failsafe_cap_band_c",
        "supply_floor_margin_c",
        "power_overhead_w",
        "caps_hold_within_s",
    ):
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    for name in (
        "over_temperature_hold_s",
        "rated_flow_lpm",
        "min_reservoir_level_l",
        "leak_caps_power_w",
        "silent_after_s",
    ):
        value = getattr(config, name)
        if value is not None and not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    drop, window = config.leak_level_drop_l_per_min, config.leak_level_window_s
    if drop is not None and not (math.isfinite(drop) and drop > 0.0):
        raise ValueError(f"leak_level_drop_l_per_min must be finite and > 0, got {drop!r}")
    if not (math.isfinite(window) and window > 0.0):
        raise ValueError(f"leak_level_window_s must be finite and > 0, got {window!r}")
    if config.leak_votes < 1:
        raise ValueError(f"leak_votes must be at least 1, got {config.leak_votes!r}")
    for limit in config.temperature_limits:
        if not math.isfinite(limit.limit_c):
            raise ValueError(f"{limit.point}: temperature limit must be finite")
    seen: set[PointId] = set()
    for safety in config.actuators:
        if safety.point in seen:
            raise ValueError(f"{safety.point} appears more than once among the actuators")
        seen.add(safety.point)
        _validate_actuator(config.rack, safety)


def _validate_actuator(rack: str, safety: ActuatorSafety) -> None:
    point = safety.point
    if point.rack != rack:
        raise ValueError(f"{point} is not a point of rack {rack}")
    hard_low, hard_high = safety.hard_minimum, safety.hard_maximum
    for name in ("minimum", "maximum", "hard_minimum", "hard_maximum"):
        if not math.isfinite(getattr(safety, name)):
            raise ValueError(f"{point}: {name} must be finite")
    if not hard_low <= safety.minimum <= safety.maximum <= hard_high:
        raise ValueError(
            f"{point}: bounds {_num(safety.minimum)}..{_num(safety.maximum)} must lie within"
            f" the hard bounds {_num(hard_low)}..{_num(hard_high)} (minimum <= maximum)"
        )
    if safety.slew_per_s is not None and not (
        math.isfinite(safety.slew_per_s) and safety.slew_per_s > 0.0
    ):
        raise ValueError(f"{point}: slew_per_s must be finite and > 0, got {safety.slew_per_s!r}")
    for name in (
        "failsafe",
        "on_leak",
        "on_over_temperature",
        "on_pump_failure",
        "on_loss_of_flow",
        "on_low_level",
        "shutdown",
    ):
        value = getattr(safety, name)
        if value is not None and not (math.isfinite(value) and hard_low <= value <= hard_high):
            raise ValueError(
                f"{point}: {name} {value!r} is outside its hard bounds"
                f" {_num(hard_low)}..{_num(hard_high)}"
            )
    if safety.role is ActuatorRole.PUMP and hard_low < 0.0:
        raise ValueError(f"{point}: a pump's speed cannot go below 0, got {_num(hard_low)}")
    if safety.role is ActuatorRole.SERVER_POWER and safety.shutdown is not None:
        raise ValueError(
            f"{point}: a server's power takes no hand-back value; leave shutdown unset"
        )
    if safety.role is ActuatorRole.STANDBY:
        if not hard_low <= 1.0 <= hard_high:
            raise ValueError(f"{point}: a standby selector must be able to take 1.0")
        if safety.on_pump_failure is not None:
            raise ValueError(
                f"{point}: a standby selector is set to 1 on pump failure; leave on_pump_failure"
                " unset"
            )


class Supervisor:
    """The safety supervisor of one rack: interlocks, failsafe, overrides, bounds and slew.

    Call `startup` once, `step` every control tick, `evaluate_interlocks` whenever a reading that
    can trip an interlock arrives between ticks, `observe` with what the devices hold, and
    `shutdown` on the way out. Each returns a `Decision`; write its commands, log its events.
    """

    def __init__(self, config: SupervisorConfig) -> None:
        _validate(config)
        self._config = config
        self._safety: dict[PointId, ActuatorSafety] = {a.point: a for a in config.actuators}
        self._clamps: dict[PointId, ActuatorClamp] = {
            a.point: ActuatorClamp(ActuatorLimits(a.minimum, a.maximum, a.slew_per_s))
            for a in config.actuators
        }
        self._pumps = tuple(a for a in config.actuators if a.role is ActuatorRole.PUMP)
        self._issued: dict[PointId, _Issued] = {}
        self._observed: dict[PointId, float] = {}
        self._interlocks: dict[str, _Latch] = {name: _Latch() for name in INTERLOCKS}
        self._causes: dict[str, _Latch] = {name: _Latch() for name in _CAUSES}
        self._pump = _PumpFailure()
        # When the pump last went from stopped to asked to run: a pump_running reading taken
        # then or before tells nothing about a failure.
        self._run_since = -math.inf
        self._pump_asked_to_run = True
        self._last_good: dict[PointId, float] = {}
        self._failsafe_since: float | None = None
        self._started = False
        self._shut_down = False
        self._noted: set[tuple[str, PointId]] = set()  # once-only notices
        self._refused: set[tuple[PointId, float, str]] = set()  # overrides refused, still asked
        self._started_at: float | None = None
        self._silent: dict[PointId, str] = {}
        self._level_trend = LevelTrend(config.leak_level_window_s)
        # the leak's pump response waits for the caps (see SupervisorConfig.power)
        self._leak_caps_confirmed = True
        self._has_caps = any(a.role is ActuatorRole.POWER_LIMIT for a in config.actuators)
        self._holding = False  # blind, but holding the last outputs (see _update_holding)
        self._cap_share = 0.0  # blind, chips warm: the share of their span caps keep
        self._normal_caps: dict[PointId, float] = {}  # last values outside failsafe/interlock
        self._supply_floor_c: float | None = None  # the floors now, from the last snapshot
        self._dew_floor_c: float | None = None
        self._last_facility_c: float | None = None  # the last good facility water reading
        self._caps_over_since: float | None = None  # power over what the caps allow, since
        self._caps_alarmed = False
        self._supply_c: float | None = None
        self._under_floor = False

    @property
    def config(self) -> SupervisorConfig:
        return self._config

    @property
    def failsafe(self) -> bool:
        """True while any failsafe cause (start-up, blind, controller raised) is active."""
        return any(latch.active for latch in self._causes.values())

    @property
    def interlocks(self) -> frozenset[str]:
        return frozenset(name for name, latch in self._interlocks.items() if latch.active)

    # -- public calls ------------------------------------------------------------------------

    def startup(self, now: float) -> Decision:
        """Failsafe outputs (or interlock values) before the first good readings."""
        _require_time(now)
        events = self._start(now)
        commands = self._decide_all(now, {}, {})
        return self._decision(commands, events)

    def step(
        self,
        snapshot: Snapshot,
        now: float,
        requested: Sequence[Command],
        overrides: Mapping[PointId, Override] = MappingProxyType({}),
        controller_failed: bool = False,
    ) -> Decision:
        """One control tick: update every cause, then one command per actuator that needs one.

        Interlock and failsafe values are re-sent every tick while they hold, so a write that
        failed is retried. An actuator with nothing to do (its loop is blind, no override, no
        failsafe) gets no command and holds its last value.
        """
        _require_time(now)
        events: list[Event] = []
        if not self._started:  # before was_failsafe: the start-up failsafe's end is announced
            events.extend(self._start(now))
        was_failsafe = self.failsafe
        events.extend(self._update_interlocks(snapshot, now))
        events.extend(self._update_failsafe(snapshot, now, controller_failed, was_failsafe))
        events.extend(self._update_silent(snapshot, now))
        events.extend(self._update_holding(snapshot, now))
        events.extend(self._update_supply_floor(snapshot, now))
        auto = self._collect_requests(requested, now, events)
        manual = self._collect_overrides(overrides, now, events)
        commands = self._decide_all(now, auto, manual)
        events.extend(self._watch_caps(snapshot, now))
        return self._decision(commands, events)

    def evaluate_interlocks(self, snapshot: Snapshot, now: float) -> Decision:
        """The fast path, between ticks: commands only if an interlock changed state.

        Every actuator an active interlock gives a value to gets it at once. An actuator whose
        interlock has just released gets nothing here: it holds the safety value until the next
        tick ramps it back with the normal slew.
        """
        _require_time(now)
        events = self._update_interlocks(snapshot, now)
        commands: list[Command] = []
        if events:
            for safety in self._config.actuators:
                command = self._interlock_command(safety)
                if command is not None:
                    commands.append(self._record(command, now))
        return self._decision(commands, events)

    def shutdown(self, now: float) -> Decision:
        """The configured hand-back values; actuators with shutdown=None get no command.

        An active interlock outlives the daemon: its value is sent again instead of the
        hand-back value, so stopping coolctl during a leak never restarts the pump.
        """
        _require_time(now)
        self._leak_caps_confirmed = True  # leaving: the pump takes its leak value now
        commands: list[Command] = []
        for safety in self._config.actuators:
            command = self._interlock_command(safety)
            if command is not None:
                command = replace(command, reason=f"shutdown with {command.reason}")
            elif safety.shutdown is not None:
                reason = f"shutdown: {_describe(safety, safety.shutdown)} (hand-back value)"
                command = Command(safety.point, safety.shutdown, Source.FAILSAFE, reason)
            if command is not None:
                commands.append(self._record(command, now))
        self._shut_down = True
        handed = ", ".join(c.point.name for c in commands) or "nothing"
        message = f"supervisor of rack {self._config.rack} shutting down; commanded {handed}"
        return self._decision(commands, [self._event("shutdown", Severity.INFO, message, now)])

    def check_override(self, point: PointId, value: float) -> None:
        """Refuse an override the supervisor would not apply as asked, with the reason."""
        safety = self._safety.get(point)
        if safety is None:
            raise ValueError(f"{point} is not an actuator of rack {self._config.rack}")
        if not (math.isfinite(value) and safety.minimum <= value <= safety.maximum):
            raise ValueError(
                f"{point.name} {_num(value)} is outside its safe bounds"
                f" {_num(safety.minimum)}..{_num(safety.maximum)}"
            )

    def reset_interlock(self, name: str, now: float, who: str, reason: str) -> Decision:
        """An operator's reset of an interlock whose cause is clear: a latched leak, or any
        other interlock before its hold has run out. ValueError says why it cannot be reset."""
        _require_time(now)
        latch = self._interlocks.get(name)
        if latch is None:
            known = ", ".join(INTERLOCKS)
            raise ValueError(f"no interlock {name!r} (known: {known})")
        label = _LABELS[name]
        if not latch.active:
            raise ValueError(f"the {label} interlock of rack {self._config.rack} is not active")
        if latch.clear_since is None:
            raise ValueError(
                f"the {label} interlock cannot be reset while its cause is not known clear"
                f" ({latch.reason})"
            )
        was = latch.reason
        latch.release()
        if name == LEAK:
            self._leak_caps_confirmed = True
        message = f"{label} interlock reset by {who}: {reason} (was: {was})"
        return self._decision(
            [], [self._event(f"interlock_{name}_reset", Severity.WARNING, message, now)]
        )

    def commanded(self, point: PointId) -> float | None:
        """The value last commanded for an actuator (None: never commanded)."""
        issued = self._issued.get(point)
        return issued.value if issued is not None else None

    def observe(self, point: PointId, value: float, now: float) -> None:
        """What the device holds. Until the supervisor commands the actuator, slew counts from it
        (bumpless start: a restarted daemon ramps from where the device is, never jumps).

        Points that are not actuators of this rack, and non-finite values, are ignored: what
        cannot be a base for slew must not become one.
        """
        if point not in self._safety or not (math.isfinite(value) and math.isfinite(now)):
            return
        self._observed[point] = value
        if point not in self._issued:
            self._clamps[point].accept(value, now)
            self._note_pump(now)

    @property
    def state(self) -> SupervisorState:
        interlocks = {
            name: InterlockStatus(
                name,
                latch.since,
                latch.reason,
                latch.clear_since,
                awaiting_reset=self._latched(name) and latch.clear_since is not None,
            )
            for name, latch in self._interlocks.items()
            if latch.active and latch.since is not None
        }
        actuators = {a.point: self._actuator_status(a) for a in self._config.actuators}
        return SupervisorState(
            rack=self._config.rack,
            interlocks=MappingProxyType(interlocks),
            failsafe=self.failsafe,
            failsafe_since=self._failsafe_since,
            failsafe_reasons=self._failsafe_reasons(),
            actuators=MappingProxyType(actuators),
            standby_took_over=self._interlocks[PUMP_FAILURE].active and self._pump.took_over,
            pump_failure_caps=self._interlocks[PUMP_FAILURE].active and self._pump.caps,
            shut_down=self._shut_down,
            silent_sensors=MappingProxyType(dict(self._silent)),
            leak_caps_confirmed=self._leak_caps_confirmed,
        )

    # -- start-up and failsafe ---------------------------------------------------------------

    def _start(self, now: float) -> list[Event]:
        """Enter start-up failsafe: every required reading must be good again before auto."""
        self._started = True
        self._started_at = now
        self._shut_down = False
        self._last_good.clear()
        reason = self._startup_reason(self._config.required)
        self._causes[_STARTUP].trip(reason, now)
        if self._failsafe_since is None:
            self._failsafe_since = now
        message = (
            f"supervisor of rack {self._config.rack} started; failsafe until every required"
            f" reading has been good ({reason})"
        )
        return [self._event("startup", Severity.INFO, message, now)]

    @staticmethod
    def _startup_reason(waiting: Sequence[PointId]) -> str:
        if not waiting:
            return "start-up"
        return "start-up: waiting for good readings of " + ", ".join(map(str, waiting))

    def _update_failsafe(
        self, snapshot: Snapshot, now: float, controller_failed: bool, was_failsafe: bool
    ) -> list[Event]:
        """Update the three failsafe causes; one event per cause entered, one when all left."""
        config = self._config
        for point in config.required:
            if _finite_value(snapshot, point) is not None:
                self._last_good[point] = now
        waiting = [p for p in config.required if p not in self._last_good]
        startup = self._causes[_STARTUP]
        if startup.active:
            startup.reason = self._startup_reason(waiting)
        startup.update(_Sense(tripped=False, clear=not waiting), now, 0.0)

        events: list[Event] = []
        blind = self._sense_blind(snapshot, now)
        if self._causes[_BLIND].update(blind, now, config.hold_s) == "entered":
            message = f"rack {config.rack} in failsafe: {blind.reason}"
            events.append(self._event("failsafe", Severity.WARNING, message, now))
        failed = _Sense(controller_failed, not controller_failed, "controller raised")
        if self._causes[_CONTROLLER].update(failed, now, config.hold_s) == "entered":
            message = f"rack {config.rack} in failsafe: its controller raised"
            events.append(self._event("controller_failed", Severity.WARNING, message, now))

        if not self.failsafe:
            if was_failsafe:
                message = f"rack {config.rack} left failsafe: readings good, controller running"
                events.append(self._event("failsafe_cleared", Severity.INFO, message, now))
            self._failsafe_since = None
        elif self._failsafe_since is None:
            self._failsafe_since = now
        return events

    def _sense_blind(self, snapshot: Snapshot, now: float) -> _Sense:
        """Tripped when a required reading has not been good for longer than failsafe_after_s;
        clear only when every required reading is good."""
        config = self._config
        blind: list[str] = []
        all_good = True
        for point in config.required:
            if _finite_value(snapshot, point) is not None:
                continue
            all_good = False
            last = self._last_good.get(point)
            if last is not None and now - last > config.failsafe_after_s:
                blind.append(
                    f"{point} {_quality(snapshot, point)} for {now - last:.1f} s"
                    f" (limit {config.failsafe_after_s:g} s)"
                )
        return _Sense(bool(blind), all_good, "; ".join(blind))

    def _failsafe_reasons(self) -> tuple[str, ...]:
        return tuple(latch.reason for latch in self._causes.values() if latch.active)

    # -- interlocks --------------------------------------------------------------------------

    def _update_interlocks(self, snapshot: Snapshot, now: float) -> list[Event]:
        """Update leak, over-temperature, low level, loss of flow and pump failure, in that
        order: whether a stopped pump is a failure depends on whether an interlock stopped it."""
        config = self._config
        leak = self._interlocks[LEAK]
        was_leak = leak.active
        events = self._apply(LEAK, self._sense_leak(snapshot), now, config.leak_debounce_s)
        if leak.active and not was_leak:
            self._leak_caps_confirmed = not self._waits_for_caps()
        events += self._leak_sequence(snapshot, now)
        hold = config.over_temperature_hold_s
        events += self._apply(OVER_TEMPERATURE, self._sense_temperature(snapshot), now, hold=hold)
        events += self._apply(LOW_LEVEL, self._sense_level(snapshot), now)
        flow = self._sense_flow(snapshot)
        events += self._apply(LOSS_OF_FLOW, flow, now, config.flow_debounce_s)
        latch = self._interlocks[PUMP_FAILURE]
        was_active = latch.active
        pump = self._sense_pump(snapshot)
        # A failure seen again while the last one was clearing starts a new changeover.
        again = was_active and pump.tripped and latch.clear_since is not None
        events += self._apply(PUMP_FAILURE, pump, now)
        if latch.active and (again or not was_active):
            self._begin_pump_failure(snapshot, now, keep_caps=was_active)
        if latch.active:
            events += self._standby_changeover(snapshot, now)
        return events

    def _apply(
        self,
        name: str,
        sense: _Sense,
        now: float,
        debounce_s: float = 0.0,
        hold: float | None = None,
    ) -> list[Event]:
        latch = self._interlocks[name]
        hold_s = self._config.hold_s if hold is None else hold
        latched = self._latched(name)
        was_clear = latch.clear_since is not None
        change = latch.update(sense, now, hold_s, debounce_s, latched)
        if change == "entered":
            message = f"{_LABELS[name]} interlock: {latch.reason}"
            return [self._event(f"interlock_{name}", Severity.CRITICAL, message, now)]
        if change == "cleared":
            message = (
                f"{_LABELS[name]} interlock cleared: clear for {hold_s:g} s (was: {latch.reason})"
            )
            return [self._event(f"interlock_{name}_cleared", Severity.INFO, message, now)]
        if latched and latch.active and latch.clear_since is not None and not was_clear:
            message = (
                f"{_LABELS[name]} interlock: its cause is clear; latched until an operator"
                f" resets it (coolctl interlock reset {self._config.rack}) (was: {latch.reason})"
            )
            return [self._event(f"interlock_{name}_awaiting_reset", Severity.WARNING, message, now)]
        return []

    def _latched(self, name: str) -> bool:
        return name == LEAK and self._config.leak_latched

    # -- the leak's sequence: caps first, then the pump --------------------------------------

    def _waits_for_caps(self) -> bool:
        """Whether a leak's pump response waits for the caps to take hold."""
        config = self._config
        measured = bool(config.power) and config.leak_caps_power_w is not None
        return self._has_caps and (measured or config.leak_caps_timeout_s > 0.0)

    def _leak_sequence(self, snapshot: Snapshot, now: float) -> list[Event]:
        """Release the leak's pump response once the rack's power shows the caps took hold,
        or once the wait has timed out (a PDU that does not answer never holds a leak up)."""
        leak = self._interlocks[LEAK]
        if not leak.active:
            self._leak_caps_confirmed = True
            return []
        if self._leak_caps_confirmed or leak.since is None:
            return []
        config = self._config
        target = config.leak_caps_power_w
        point = " + ".join(map(str, config.power)) or "rack power"
        power = _sum_of(snapshot, config.power)
        rack = config.rack
        if power is not None and target is not None and power <= target:
            self._leak_caps_confirmed = True
            message = (
                f"rack {rack}: leak: caps took hold ({point} {power:.6g} W, at most"
                f" {target:.6g} W); pump to its leak value"
            )
            return [self._event("leak_caps_confirmed", Severity.INFO, message, now)]
        waited = now - leak.since
        if waited >= config.leak_caps_timeout_s:
            self._leak_caps_confirmed = True
            shown = "unreadable" if power is None else f"{power:.6g} W"
            expected = "" if target is None else f" to {target:.6g} W"
            message = (
                f"rack {rack}: leak: power did not fall{expected} within"
                f" {config.leak_caps_timeout_s:g} s ({point} {shown}); pump to its leak value"
                " anyway"
            )
            return [self._event("leak_caps_unconfirmed", Severity.CRITICAL, message, now)]
        return []

    def _sense_leak(self, snapshot: Snapshot) -> _Sense:
        """Wet when `leak_votes` detectors read wet (fewer where the rack has fewer); a falling
        reservoir level, where configured, is one more detector."""
        config = self._config
        wet: list[str] = []
        unknown = False
        for point in config.leak_points:
            if _never_reported(snapshot, point):
                continue  # a detector the device does not have, or not yet heard: no evidence
            value = _finite_value(snapshot, point)
            if value is None:
                unknown = True
            elif value >= _ON:
                wet.append(str(point))
        detectors = len(config.leak_points)
        draining = False  # the level still falls over half the leak rate: not clear yet
        trend = self._level_trend_sense(snapshot)
        if trend is not None:
            detectors += 1
            falling, draining = trend
            if falling:
                wet.append(falling)
        votes = min(config.leak_votes, detectors) or 1
        clear = (
            not wet and not draining and not (unknown and config.interlock_holds_through_blindness)
        )
        return _Sense(len(wet) >= votes, clear, ", ".join(wet) + " wet")

    def _level_trend_sense(self, snapshot: Snapshot) -> tuple[str, bool] | None:
        """The reservoir level as a leak detector: None where not configured; else what it
        reads wet ("" while the level does not fall at the leak rate) and whether it still
        falls at over half that rate (the release waits for a level that has steadied, so a
        drain near the rate does not trip and clear by turns). Good readings feed the trend,
        each once; too few of them are no evidence either way."""
        config = self._config
        point, drop = config.reservoir_level, config.leak_level_drop_l_per_min
        if point is None or drop is None:
            return None
        reading = snapshot.get(point)
        if reading is not None and reading.usable and reading.value is not None:
            self._level_trend.add(reading.ts, reading.value)
        slope = self._level_trend.slope_l_per_s(snapshot.now)
        if slope is None:
            return "", False
        falling_l_per_min = -slope * 60.0
        if falling_l_per_min < drop:
            return "", falling_l_per_min >= 0.5 * drop
        window = config.leak_level_window_s
        return f"{point} falling {falling_l_per_min:.2g} L/min over {window:g} s", True

    def _sense_temperature(self, snapshot: Snapshot) -> _Sense:
        config = self._config
        hot: list[str] = []
        unknown = near = False
        band = config.temperature_release_band_c
        for limit in config.temperature_limits:
            if _never_reported(snapshot, limit.point):
                continue
            value = _finite_value(snapshot, limit.point)
            if value is None:
                unknown = True
            elif value > limit.limit_c:
                hot.append(f"{limit.point} {value:.4g} above {limit.limit_c:.4g}")
            elif value > limit.limit_c - band:
                near = True  # not hot, but not clear either until below the release band
        clear = not hot and not near and not (unknown and config.interlock_holds_through_blindness)
        return _Sense(bool(hot), clear, ", ".join(hot))

    def _sense_level(self, snapshot: Snapshot) -> _Sense:
        """The reservoir under its minimum: the pump must stop before it draws air."""
        config = self._config
        point, minimum = config.reservoir_level, config.min_reservoir_level_l
        if point is None or minimum is None or _never_reported(snapshot, point):
            return _QUIET
        value = _finite_value(snapshot, point)
        if value is None:
            return _Sense(False, not config.interlock_holds_through_blindness)
        if value < minimum:
            return _Sense(True, False, f"{point} {value:.4g} L, under {minimum:.4g} L")
        if value < minimum * (1.0 + _LEVEL_RELEASE_SHARE):
            return _Sense(False, False)  # over the minimum, not yet clear: noise, not coolant
        return _QUIET

    def _sense_flow(self, snapshot: Snapshot) -> _Sense:
        """Flow under what the pump's speed should give, or under a floor per kW of the rack's
        power. A pump asked to stop (or nearly) expects no flow: neither lost nor clear."""
        config = self._config
        point = config.flow
        if point is None or _never_reported(snapshot, point):
            return _QUIET
        floors: list[tuple[float, str]] = []
        speed = self._pump_speed()
        if speed is not None:
            if speed < config.min_pump_speed:
                return _Sense(False, False)
            if config.rated_flow_lpm is not None:
                expected = speed * config.rated_flow_lpm
                floors.append(
                    (
                        config.min_flow_fraction * expected,
                        f"{config.min_flow_fraction:.0%} of the {expected:.4g} L/min the pump"
                        f" at {speed:.3g} should give",
                    )
                )
        power = _sum_of(snapshot, config.power)
        if config.min_flow_lpm_per_kw > 0.0 and power is not None:
            floors.append(
                (
                    config.min_flow_lpm_per_kw * power / 1000.0,
                    f"{config.min_flow_lpm_per_kw:g} L/min per kW of {power / 1000.0:.4g} kW",
                )
            )
        if not floors:
            return _QUIET
        value = _finite_value(snapshot, point)
        if value is None:
            return _Sense(False, not config.interlock_holds_through_blindness)
        floor, why = max(floors)
        if value < floor:
            return _Sense(True, False, f"{point} {value:.4g} L/min, under {floor:.4g} ({why})")
        return _QUIET

    def _pump_speed(self) -> float | None:
        """The highest speed the rack's pumps are asked for (None: no pump, or none known)."""
        known = [v for p in self._pumps if (v := self._pump_value(p.point)) is not None]
        return max(known) if known else None

    # -- alarms on the safety sensors themselves -------------------------------------------

    def _update_silent(self, snapshot: Snapshot, now: float) -> list[Event]:
        """A safety sensor that never reported (after `silent_after_s`) or went stale or bad
        is an alarm: one event when it goes silent, one when it is heard again."""
        config = self._config
        if config.silent_after_s is None or self._started_at is None:
            return []
        if now - self._started_at < config.silent_after_s:
            return []  # start-up: a retained message of unknown age reads stale until the next
        points = list(config.safety_sensors) or [*config.leak_points]
        if not config.safety_sensors:
            points += [p for p in (config.flow, config.reservoir_level) if p is not None]
        events: list[Event] = []
        for point in points:
            reading = snapshot.get(point)
            why: str | None = None
            if reading is None or reading.quality is Quality.MISSING:
                why = f"has not reported in {now - self._started_at:.0f} s since start-up"
            elif not reading.usable:
                why = f"is {reading.quality.value}"
            was = self._silent.get(point)
            if why is not None and was is None:
                self._silent[point] = why
                message = f"safety sensor {point} {why}: it cannot trip its interlock"
                events.append(self._event("safety_sensor_silent", Severity.WARNING, message, now))
            elif why is None and was is not None:
                del self._silent[point]
                message = f"safety sensor {point} reports again"
                events.append(self._event("safety_sensor_back", Severity.INFO, message, now))
            elif why is not None:
                self._silent[point] = why
        return events

    # -- a calmer failsafe -------------------------------------------------------------------

    def _update_holding(self, snapshot: Snapshot, now: float) -> list[Event]:
        """Whether a blind rack holds its last outputs: only while blindness is its one
        failsafe cause and every `healthy_points` reading is good and well under its limit.
        One event each time holding starts or ends."""
        config = self._config
        only_blind = self.failsafe and not any(
            latch.active for name, latch in self._causes.items() if name != _BLIND
        )
        healthy, why = self._thermal_health(snapshot)
        holding = bool(config.healthy_points) and only_blind and healthy
        events: list[Event] = []
        if holding and not self._holding:
            message = (
                f"rack {config.rack}: blind, but chips and outlets are healthy; holding the last"
                " outputs and caps"
            )
            events.append(self._event("failsafe_holding", Severity.WARNING, message, now))
        elif self._holding and not holding and self.failsafe:
            message = f"rack {config.rack}: failsafe outputs ({why or 'no longer only blind'})"
            events.append(self._event("failsafe_outputs", Severity.WARNING, message, now))
        self._holding = holding
        self._cap_share = self._failsafe_cap_share(snapshot) if only_blind else 0.0
        return events

    def _failsafe_cap_share(self, snapshot: Snapshot) -> float:
        """How much of its normal cap a server keeps in a blind failsafe: 1 at the healthy
        threshold, 0 at `failsafe_cap_band_c` over it or with a reading that is not good."""
        config = self._config
        band = config.failsafe_cap_band_c
        if band <= 0.0 or not config.healthy_points:
            return 0.0
        excess = -math.inf
        for limit in config.healthy_points:
            value = _finite_value(snapshot, limit.point)
            if value is None:
                return 0.0
            excess = max(excess, value - (limit.limit_c - config.healthy_margin_c))
        return min(1.0, max(0.0, 1.0 - excess / band))

    def _thermal_health(self, snapshot: Snapshot) -> tuple[bool, str]:
        margin = self._config.healthy_margin_c
        for limit in self._config.healthy_points:
            value = _finite_value(snapshot, limit.point)
            if value is None:
                return False, f"{limit.point} {_quality(snapshot, limit.point)}"
            if value > limit.limit_c - margin:
                return False, f"{limit.point} {value:.4g} within {margin:g} of {limit.limit_c:.4g}"
        return True, ""

    def _sense_pump(self, snapshot: Snapshot) -> _Sense:
        """pump_running reads 0 while the pump was last commanded above zero.

        Not a failure: a stop the leak interlock asked for, a pump commanded to zero, or a
        reading taken before the pump was last asked to run (old news, neither failed nor clear)
        or on the tick that asked it (that tick decided on it, before its command went out).
        """
        point = self._config.pump_running
        if point is None or self._interlock_stopped_pump() or not self._pump_asked_to_run:
            return _QUIET
        value = _finite_value(snapshot, point)
        if value is None:
            return _Sense(False, not self._config.interlock_holds_through_blindness)
        if value >= _ON:
            return _QUIET
        if snapshot[point].ts <= self._run_since:  # read on or before the tick that asked
            return _Sense(False, False)
        return _Sense(True, False, f"{point} reads 0 while the pump is commanded to run")

    def _interlock_stopped_pump(self) -> bool:
        """A leak (once its caps took hold) or a low level that stopped the pump."""
        leak = self._interlocks[LEAK].active and self._leak_caps_confirmed
        if leak and any(p.on_leak is not None and p.on_leak <= 0.0 for p in self._pumps):
            return True
        low = self._interlocks[LOW_LEVEL].active
        return low and any(
            p.on_low_level is not None and p.on_low_level <= 0.0 for p in self._pumps
        )

    def _begin_pump_failure(self, snapshot: Snapshot, now: float, keep_caps: bool) -> None:
        """Start the changeover wait; with no standby pump to wait for, caps at once.

        Caps already in force stay: a failure that comes back is no reason to lift them.
        """
        has_standby = self._config.standby_active is not None or any(
            a.role is ActuatorRole.STANDBY for a in self._config.actuators
        )
        caps = not has_standby or (keep_caps and self._pump.caps)
        self._pump = _PumpFailure(onset=now, standby_was_on=self._standby_on(snapshot), caps=caps)

    def _standby_changeover(self, snapshot: Snapshot, now: float) -> list[Event]:
        """A standby that comes on within standby_changeover_s spares the rack its caps."""
        pump = self._pump
        if pump.took_over or pump.caps:
            return []
        rack = self._config.rack
        if self._standby_on(snapshot) and not pump.standby_was_on:
            pump.took_over = True
            message = f"rack {rack}: standby pump took over ({self._config.standby_active} = 1)"
            return [self._event("standby_took_over", Severity.INFO, message, now)]
        if self._no_flow(snapshot):
            pump.caps = True
            message = (
                f"rack {rack}: pump failure and {self._config.flow} under"
                f" {_NO_FLOW_SHARE:.0%} of rated: nothing moves the coolant, caps applied"
                " without waiting for a standby"
            )
            return [self._event("pump_failure_caps", Severity.CRITICAL, message, now)]
        if now - pump.onset >= self._config.standby_changeover_s:
            pump.caps = True
            message = (
                f"rack {rack}: no standby pump took over within"
                f" {self._config.standby_changeover_s:g} s; pump failure caps applied"
            )
            return [self._event("pump_failure_caps", Severity.CRITICAL, message, now)]
        return []

    def _no_flow(self, snapshot: Snapshot) -> bool:
        """The flow reads under `_NO_FLOW_SHARE` of rated: no pump is moving the coolant."""
        config = self._config
        if config.flow is None or config.rated_flow_lpm is None:
            return False
        value = _finite_value(snapshot, config.flow)
        return value is not None and value < _NO_FLOW_SHARE * config.rated_flow_lpm

    def _standby_on(self, snapshot: Snapshot) -> bool:
        point = self._config.standby_active
        value = None if point is None else _finite_value(snapshot, point)
        return value is not None and value >= _ON

    # -- commands ----------------------------------------------------------------------------

    def _decide_all(
        self, now: float, auto: Mapping[PointId, Command], manual: Mapping[PointId, Override]
    ) -> list[Command]:
        commands: list[Command] = []
        for safety in self._config.actuators:
            command = self._decide(safety, now, auto.get(safety.point), manual.get(safety.point))
            if command is not None:
                commands.append(self._record(self._floored(safety, command, now), now))
        return commands

    # -- the supply floor --------------------------------------------------------------------

    def _update_supply_floor(self, snapshot: Snapshot, now: float) -> list[Event]:
        """The floors from this snapshot, and whether the supply valve is held by one: one
        event when it starts, one when it ends.

        Two floors: the dew point + margin, which every valve command respects (condensation
        is a hazard), and the higher of that and facility water + margin, which supply setpoint
        commands and the valve's failsafe respect (a failsafe valve wide open at low load only
        drags the supply toward the facility water). The supply loop's own commands may take
        the supply near the facility water when the heat needs it."""
        config = self._config
        facility = (
            _finite_value(snapshot, config.facility_supply) if config.facility_supply else None
        )
        dew = _finite_value(snapshot, config.dew_point) if config.dew_point else None
        if dew is None and config.room_temperature and config.room_humidity:
            air = _finite_value(snapshot, config.room_temperature)
            humidity = _finite_value(snapshot, config.room_humidity)
            if air is not None and humidity is not None:
                dew = dew_point_c(air, humidity)
        margin = config.supply_floor_margin_c
        if facility is not None:
            self._last_facility_c = facility
        self._supply_floor_c = supply_floor_c(facility, dew, margin)
        self._dew_floor_c = supply_floor_c(None, dew, margin)
        supply = _finite_value(snapshot, config.supply) if config.supply else None
        self._supply_c = supply
        floor = self._valve_floor(Source.FAILSAFE if self.failsafe else Source.AUTO)
        under = floor is not None and supply is not None and supply < floor
        if under == self._under_floor:
            return []
        self._under_floor = under
        if under:
            message = (
                f"supply {_num_or(supply)} °C under its floor {_num_or(floor)} °C"
                f" (dew point {_num_or(dew)} °C"
                + (f", facility water {_num_or(facility)} °C" if self.failsafe else "")
                + f", +{margin:g} K): the supply valve closes"
            )
            return [self._event("supply_under_floor", Severity.WARNING, message, now)]
        message = "supply back over its floor (dew point, facility water + margin)"
        return [self._event("supply_floor_cleared", Severity.INFO, message, now)]

    def _valve_floor(self, source: Source) -> float | None:
        """The floor the supply valve respects for a command from `source`."""
        if source is Source.FAILSAFE:
            return self._supply_floor_c
        return self._dew_floor_c

    def _floored(self, safety: ActuatorSafety, command: Command, now: float) -> Command:
        """`command` held to the supply floor: a supply setpoint never below it; the supply
        valve, while the supply is under its floor, no further open than it is, closing."""
        if command.source is Source.INTERLOCK:
            return command
        floor = self._supply_floor_c
        if safety.point.name == SUPPLY_SETPOINT:
            if floor is None or command.value >= floor:
                return command
            value = min(max(floor, safety.hard_minimum), safety.hard_maximum)
            reason = f"{command.reason}; held at the supply floor {floor:.1f} °C"
            return replace(command, value=value, reason=reason)
        supply_point = self._config.supply
        if (
            safety.role is not ActuatorRole.VALVE
            or supply_point is None
            or safety.point.device != supply_point.device
        ):
            return command
        floor = self._valve_floor(command.source)
        supply = self._supply_c
        issued = self._issued.get(safety.point)
        last = issued.value if issued is not None else self._observed.get(safety.point)
        if supply is None and command.source is Source.FAILSAFE and last is not None:
            return self._blind_valve(command, last)
        if floor is None or supply is None or supply >= floor or last is None:
            return command
        dt_s = max(0.0, now - issued.ts) if issued is not None else 0.0
        ceiling = max(safety.minimum, last - self._config.supply_valve_close_per_s * dt_s)
        if command.value <= ceiling:
            return command
        reason = (
            f"{command.reason}; supply {supply:.1f} °C under its floor"
            f" {floor:.1f} °C: valve held to {ceiling:.3g}"
        )
        return replace(command, value=ceiling, reason=reason)

    def _blind_valve(self, command: Command, last: float) -> Command:
        """The supply unread, the valve's failsafe would open it: held where it is instead
        when the facility water (as last read) is under the dew point + margin, where a wide
        open valve would sweat the pipes. An interlock's full cooling still wins."""
        dew_floor, facility = self._dew_floor_c, self._last_facility_c
        if dew_floor is None or facility is None or facility >= dew_floor:
            return command
        if command.value <= last:
            return command
        reason = (
            f"{command.reason}; supply unread and facility water {facility:.1f} °C under the"
            f" dew point floor {dew_floor:.1f} °C: valve held at {last:.3g}"
        )
        return replace(command, value=last, reason=reason)

    def _decide(
        self,
        safety: ActuatorSafety,
        now: float,
        request: Command | None,
        override: Override | None,
    ) -> Command | None:
        """Interlock > override > failsafe > auto; None leaves the actuator where it is."""
        command = self._interlock_command(safety)
        if command is not None:
            return command
        clamp = self._clamps[safety.point]
        if override is not None:
            reason = f"override by {override.who}: {override.reason}"
            return clamp.clamp(Command(safety.point, override.value, Source.OVERRIDE, reason), now)
        if safety.role is ActuatorRole.ISOLATION:
            return self._isolation_reopened(safety)
        if safety.role is ActuatorRole.SERVER_POWER:
            return None  # never powered on again but by an operator; failsafe leaves it be
        # A standby selector is not a control output: writing a failsafe value could switch
        # back to the pump that failed, so failsafe leaves it where it is.
        if self.failsafe and safety.role is not ActuatorRole.STANDBY:
            return (
                self._holding_command(safety) if self._holding else self._failsafe_command(safety)
            )
        if request is not None:
            return clamp.clamp(request, now)
        return None

    def _interlock_offers(self, safety: ActuatorSafety) -> list[tuple[str, float]]:
        offers: list[tuple[str, float]] = []
        active = self._interlocks
        # the pump step of the leak sequence (pump to its leak value, isolation valves shut)
        # waits for the caps
        pump_step = safety.role in (ActuatorRole.PUMP, ActuatorRole.ISOLATION)
        pump_waits = pump_step and not self._leak_caps_confirmed
        if active[LEAK].active and safety.on_leak is not None and not pump_waits:
            offers.append((LEAK, safety.on_leak))
        if active[LOW_LEVEL].active and safety.on_low_level is not None:
            offers.append((LOW_LEVEL, safety.on_low_level))
        if active[LOSS_OF_FLOW].active and safety.on_loss_of_flow is not None:
            offers.append((LOSS_OF_FLOW, safety.on_loss_of_flow))
        if active[OVER_TEMPERATURE].active and safety.on_over_temperature is not None:
            offers.append((OVER_TEMPERATURE, safety.on_over_temperature))
        if active[PUMP_FAILURE].active:
            if safety.role is ActuatorRole.STANDBY:
                offers.append((PUMP_FAILURE, 1.0))
            elif self._pump.caps and safety.on_pump_failure is not None:
                offers.append((PUMP_FAILURE, safety.on_pump_failure))
        return offers

    def _interlock_command(self, safety: ActuatorSafety) -> Command | None:
        offers = self._interlock_offers(safety)
        if not offers:
            return None
        winner, value = _safest(safety.role, offers)
        causes = "; ".join(
            f"{_LABELS[name]} interlock: {self._interlocks[name].reason}" for name, _ in offers
        )
        wins = f" ({_LABELS[winner]} wins)" if len(offers) > 1 else ""
        reason = f"{causes}; {_describe(safety, value)}{wins}"
        return Command(safety.point, value, Source.INTERLOCK, reason)

    def _watch_caps(self, snapshot: Snapshot, now: float) -> list[Event]:
        """After the caps went down, the PDU must show it: its power over what the caps in
        force allow (+10 %, and the rack's non-server load) for `caps_hold_within_s` is one
        event (`caps_not_holding`), and one when it holds again (`caps_holding`)."""
        config = self._config
        caps = [a.point for a in config.actuators if a.role is ActuatorRole.POWER_LIMIT]
        issued = [self._issued.get(point) for point in caps]
        power = _sum_of(snapshot, config.power)
        if not caps or power is None or any(i is None for i in issued):
            return []
        allowed = 1.1 * math.fsum(i.value for i in issued if i is not None)
        allowed += config.power_overhead_w
        if power <= allowed:
            self._caps_over_since = None
            if not self._caps_alarmed:
                return []
            self._caps_alarmed = False
            message = f"rack {config.rack}: power {power:.0f} W is within its caps again"
            return [self._event("caps_holding", Severity.INFO, message, now)]
        if self._caps_over_since is None:
            self._caps_over_since = now
        waited = now - self._caps_over_since
        if self._caps_alarmed or waited < config.caps_hold_within_s:
            return []
        self._caps_alarmed = True
        message = (
            f"rack {config.rack}: power did not fall after the cap writes:"
            f" {' + '.join(map(str, config.power))}"
            f" {power:.0f} W for {waited:.0f} s, over the {allowed:.0f} W the caps in force allow"
            " (a BMC that did not apply its cap? a write that was lost?)"
        )
        return [self._event("caps_not_holding", Severity.WARNING, message, now)]

    def _isolation_reopened(self, safety: ActuatorSafety) -> Command | None:
        """An isolation valve is no loop's: it stays as it is, except that once the interlock
        that shut it has been released (a leak: by an operator's reset) it opens again, and
        failsafe never moves it (closing it would stop the coolant; opening it could feed a
        leak)."""
        issued = self._issued.get(safety.point)
        if issued is None or issued.source is not Source.INTERLOCK:
            return None
        reason = f"interlock released: {_describe(safety, safety.maximum)} (isolation valves open)"
        return Command(safety.point, safety.maximum, Source.AUTO, reason)

    def _holding_command(self, safety: ActuatorSafety) -> Command | None:
        """The value last commanded, sent again: held while the chips are healthy, and re-sent
        every tick like any failsafe value, so a write the lost link failed is retried."""
        issued = self._issued.get(safety.point)
        if issued is None:
            return None
        reason = (
            f"failsafe ({'; '.join(self._failsafe_reasons())}); holding"
            f" {_describe(safety, issued.value)} while the chips are healthy"
        )
        return Command(safety.point, issued.value, Source.FAILSAFE, reason)

    def _failsafe_command(self, safety: ActuatorSafety) -> Command:
        value = safety.failsafe
        share = self._cap_share
        normal = self._normal_caps.get(safety.point)
        if safety.role is ActuatorRole.POWER_LIMIT and share > 0.0 and normal is not None:
            # blind, the chips a little warm: the caps fall with the evidence, not at once
            value = max(safety.failsafe, min(normal, value + share * (normal - value)))
            reason = (
                f"failsafe ({'; '.join(self._failsafe_reasons())}); chips warm: caps keep"
                f" {share:.0%} of their span, {_describe(safety, value)}"
            )
            return Command(safety.point, value, Source.FAILSAFE, reason)
        reason = f"failsafe ({'; '.join(self._failsafe_reasons())}); " + _describe(safety, value)
        return Command(safety.point, value, Source.FAILSAFE, reason)

    def _record(self, command: Command, now: float) -> Command:
        """Remember what was commanded: the base for slew and for pump-failure detection."""
        self._issued[command.point] = _Issued(command.value, command.source, command.reason, now)
        if command.source in (Source.AUTO, Source.OVERRIDE):
            self._normal_caps[command.point] = command.value  # what a failsafe scales from
        self._clamps[command.point].accept(command.value, now)
        self._note_pump(now)
        return command

    def _note_pump(self, now: float) -> None:
        """Track when the pump was last asked to run again after a stop."""
        asked = not self._pumps or any(self._pump_asked(p.point) for p in self._pumps)
        if asked and not self._pump_asked_to_run:
            self._run_since = now
        self._pump_asked_to_run = asked

    def _pump_asked(self, point: PointId) -> bool:
        """Asked to run: last commanded above zero, or, before any command, seen above zero or
        never seen (the device runs its pump in its own mode)."""
        value = self._pump_value(point)
        return value is None or value > 0.0

    def _pump_value(self, point: PointId) -> float | None:
        issued = self._issued.get(point)
        return issued.value if issued is not None else self._observed.get(point)

    # -- requests and overrides --------------------------------------------------------------

    def _collect_requests(
        self, requested: Iterable[Command], now: float, events: list[Event]
    ) -> dict[PointId, Command]:
        """The last finite AUTO request per actuator. Requests from other sources are ignored:
        interlock and failsafe are the supervisor's to decide, overrides come as overrides."""
        auto: dict[PointId, Command] = {}
        for command in requested:
            if command.point not in self._safety:
                self._note_once(
                    "unknown_actuator",
                    command.point,
                    f"dropped a command for {command.point}: not an actuator of rack"
                    f" {self._config.rack}",
                    now,
                    events,
                )
            elif command.source is not Source.AUTO:
                continue
            elif not math.isfinite(command.value):
                self._note_once(
                    "auto_refused",
                    command.point,
                    f"dropped a non-finite command {command.value!r} for {command.point}",
                    now,
                    events,
                )
            else:
                auto[command.point] = command
        return auto

    def _collect_overrides(
        self, overrides: Mapping[PointId, Override], now: float, events: list[Event]
    ) -> dict[PointId, Override]:
        """Overrides the supervisor can apply; one event per override refused, while asked."""
        usable: dict[PointId, Override] = {}
        refused: set[tuple[PointId, float, str]] = set()
        for override in overrides.values():
            problem = self._override_problem(override)
            if problem is None:
                usable[override.point] = override
                continue
            key = (override.point, override.value, override.who)
            refused.add(key)
            if key not in self._refused:
                message = f"override by {override.who} refused: {problem}"
                events.append(self._event("override_refused", Severity.INFO, message, now))
        self._refused = refused
        return usable

    def _override_problem(self, override: Override) -> str | None:
        """Why an override cannot be applied at all; out-of-bounds values are clamped instead."""
        if override.point not in self._safety:
            return f"{override.point} is not an actuator of rack {self._config.rack}"
        if not math.isfinite(override.value):
            return f"{override.point} {override.value!r} is not a number"
        return None

    # -- small helpers -----------------------------------------------------------------------

    def _note_once(
        self, kind: str, point: PointId, message: str, now: float, events: list[Event]
    ) -> None:
        if (kind, point) not in self._noted:
            self._noted.add((kind, point))
            events.append(self._event(kind, Severity.INFO, message, now))

    def _event(self, kind: str, severity: Severity, message: str, now: float) -> Event:
        return Event(self._config.rack, kind, severity, message, now)

    def _decision(self, commands: Sequence[Command], events: Sequence[Event]) -> Decision:
        return Decision(tuple(commands), tuple(events), self.interlocks, self.failsafe)

    def _actuator_status(self, safety: ActuatorSafety) -> ActuatorStatus:
        issued = self._issued.get(safety.point)
        return ActuatorStatus(
            point=safety.point,
            role=safety.role,
            value=issued.value if issued else None,
            source=issued.source if issued else None,
            reason=issued.reason if issued else "",
            ts=issued.ts if issued else None,
            observed=self._observed.get(safety.point),
        )


def _never_reported(snapshot: Snapshot, point: PointId) -> bool:
    """A point with no reading at all (missing): the device does not expose it, or nothing has
    been heard yet. It can neither trip an interlock nor hold one; a point that reported and
    then went stale or bad is unknown, and unknown is not clear."""
    reading = snapshot.get(point)
    return reading is None or reading.quality is Quality.MISSING
