"""Power-cap allocation: share a rack's power budget among its servers' caps.

The rack's budget is enforced through the servers' BMCs, so the only lever is each server's
power cap. When the budget drops every cap must come down at once, far enough that the caps
together (plus the load no cap governs) fit; when there is headroom it goes to the servers that
can use it, the most important first.

How a step allocates (each part is a function below, so each can be read and tested alone):

1. **What caps may take** (`available_for_caps`): budget − margin − non-server load. The
   non-server load (pump, fans, PDU losses) is measured as the rack PDU's power minus the
   servers' measured power, clamped at 0; when the PDU is not configured the fixed allowance
   `overhead_w` stands in, and when its reading is lost the last measured value is held.
2. **What each server wants** (`server_demand`):
   - `MORE`: measured power ≥ (1 − r)·its cap in force, r = `demand_headroom_ratio`. It is at
     or near its cap, so it is probably held back by it: it may take up to `max_cap_w`.
   - `RELEASED`: well under its cap. It keeps what it uses plus headroom,
     `max(measured · (1 + r) / (1 − r), r · max_cap_w)` within its bounds, and the rest goes
     back to the pool. The factor sits a further (1 + r) beyond the `MORE` threshold on
     purpose: with the plain `measured · (1 + r)`, a server released to that cap would read as
     "near its cap" on the very next step (m ≥ (1 − r)(1 + r)·m), take headroom back, be
     released again, and its cap and its neighbours' would flap every step. With this factor
     a released server stays released until its own load grows by more than r. The floor
     r · max_cap_w does the same for a server drawing nothing under a cap of nothing.
   - `UNKNOWN`: no good power reading. It keeps the cap in force (conservative: a server we
     cannot see may be using all of it, so its share is not handed to others).
3. **Who gets what** (`allocate`): every server starts at `min_cap_w`. Then, priority class by
   priority class (highest first), the remainder is water-filled up to each server's demand;
   then whatever is still left is water-filled, again highest class first, up to `max_cap_w`,
   so no budget lies idle while any cap is below its maximum.
4. **How fast** (`limit_rises`): a cap that falls takes the new value at once; a rise may be
   held to `release_rate_w_per_s`. A limited rise only ever lowers a cap below its share, so
   the caps never sum above what step 3 allowed, and a fall is never delayed by a rise.
5. **Deadband** (`cap_deadband_w`, d; 0 turns it off): step 3 shares out what is available
   less a reserve of d per server (`deadband_reserve`), and a cap whose new share is within d
   of the value last commanded keeps that value, no command sent. Why: when the budget binds,
   the caps sum exactly to what is available, and what is available moves with every reading
   of the PDU and the servers (the non-server load is their difference: tens of watts of
   noise). Without a deadband every cap of the rack moves, and is rewritten on its BMC, every
   step, for nothing. With it, the caps stay put while the available power stays within
   N·d of where it was when they were set (N servers sharing the change), and a change to one
   server's share rewrites that server alone. The reserve is what makes holding safe: every
   held cap is at most d above its new share, the shares sum to at most available − N·d, so
   the held caps still sum to at most what is available. Whatever the reserve could not be
   taken (minimums that leave less room) is caught by the check below: a fall held back is
   sent the moment the caps would not fit. So a budget drop beyond the band lowers the caps
   in the same step, as does a server that needs headroom beyond d.

6. **Breakers and feeds** (`fit_circuits`): a rack fed by two feeds (A and B) has servers
   plugged into a branch circuit (behind a breaker) of each. When one feed fails, every server
   draws all its power from the other, so each branch must be able to carry the whole of the
   caps of the servers on it, not the half it carries in normal running: for every branch,
   Σ caps of its servers ≤ derating × rating × voltage (`Circuit.limit_w`, or the rating the
   PDU reports); for every feed, Σ caps of the servers on it ≤ what the feed may carry. Caps
   that do not fit are lowered, within the circuit, water-filled from the servers' minimums
   (weights as above), so the largest caps come down first; caps only ever fall here, so the
   rack budget still holds. If the minimums alone do not fit a circuit, its caps sit at their
   minimums and the allocation is infeasible. A held cap (deadband) that would break a
   circuit is sent. Pure like the rest: the rating read from a PDU is an argument.

Tie rules, so every result is explainable:
- A server exactly at (1 − r)·cap counts as `MORE` (the threshold is inclusive). The cap it is
  compared with is the one read back from its BMC (polled with its power), else the one last
  commanded, else its maximum.
- Within one priority class the water level is common: a server's raise above its start is
  `weight · level`, stopped at its ceiling, so equal weights and equal wants give equal caps
  whatever the order in the config. A server's demand is a ceiling, not a claim: it gets less
  when the class runs short.
- Across classes priority is strict: a lower class gets nothing above its minimums while any
  server of a higher class is below its demand. Priority is an integer; higher wins.
- If even every cap at its minimum does not fit, every cap is its minimum, the allocation says
  `feasible = False` and a critical event says so: a cap never goes below a server's minimum.
  Minimums that fit to within a micro-watt of float rounding count as fitting.
- Budget unknown (None): every cap goes to its maximum (rises still subject to the rate).

Commands go out only for caps that moved by more than `CHANGE_THRESHOLD_W` (and whose share
moved by more than the deadband, or that is not yet at its share after a paced rise or a
safety value) from the value last commanded, to spare the BMCs needless writes; falls inside
that band are still sent whenever holding them back would put the caps' sum over what is
available. Re-writing a BMC that drifted from our value is the actuation layer's job (it
reads back), not this module's.

Pure and deterministic: no I/O, no clock reads. `now` only paces rises.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from coolctl.model import Command, Event, PointId, Severity, Snapshot, Source

CHANGE_THRESHOLD_W = 1.0
"""A cap that moves less than this from the value last commanded is not re-sent."""

_TOLERANCE_W = 1e-6  # float slack when comparing sums of watts
_EVENT_SOURCE = "powercap"


# -- configuration ---------------------------------------------------------------------------


def _finite(value: float, what: str, *, minimum: float | None = None) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be >= {minimum:g}, got {value!r}")


@dataclass(frozen=True, slots=True)
class ServerCap:
    """One server whose power cap the allocator sets."""

    name: str  # device id, e.g. "bmc07"
    power: PointId  # measured server power (W)
    limit: PointId  # the power_limit actuator point (W)
    min_cap_w: float
    max_cap_w: float
    priority: int = 0  # higher gets headroom first
    weight: float = 1.0  # share within a priority class

    def __post_init__(self) -> None:
        _finite(self.min_cap_w, f"{self.name}: min_cap_w", minimum=0.0)
        _finite(self.max_cap_w, f"{self.name}: max_cap_w", minimum=self.min_cap_w)
        _finite(self.weight, f"{self.name}: weight")
        if self.weight <= 0.0:
            raise ValueError(f"{self.name}: weight must be > 0, got {self.weight!r}")


@dataclass(frozen=True, slots=True)
class Circuit:
    """A branch circuit (breaker) or a feed: the servers whose caps it must carry on its own
    when the other feed fails, and how much that may be.

    `limit_w` is derating × rated current × voltage, from the config; when `rating` names a
    point (a PDU's `branch_rating.N`, amperes) and it reads good, derating × that × `voltage_v`
    is used instead, the smaller of the two when both are known. None and no good reading: the
    circuit is not enforced this step (and the allocation's reason says so).
    """

    name: str  # e.g. "pdua/branch 3" or "feed a"
    servers: tuple[str, ...]
    limit_w: float | None
    rating: PointId | None = None
    derating: float = 0.8
    voltage_v: float = 230.0

    def __post_init__(self) -> None:
        if self.limit_w is not None:
            _finite(self.limit_w, f"circuit {self.name}: limit_w", minimum=0.0)
        if not 0.0 < self.derating <= 1.0:
            raise ValueError(f"circuit {self.name}: derating must be in (0, 1]")
        _finite(self.voltage_v, f"circuit {self.name}: voltage_v", minimum=0.0)

    def limit(self, rating_a: float | None) -> float | None:
        """What the circuit may carry, given the rating the PDU reports (None: unknown)."""
        if rating_a is None or not math.isfinite(rating_a) or rating_a <= 0.0:
            return self.limit_w
        measured = self.derating * rating_a * self.voltage_v
        return measured if self.limit_w is None else min(measured, self.limit_w)


@dataclass(frozen=True, slots=True)
class AllocatorConfig:
    """A rack's servers and how its budget is shared among them."""

    rack: str
    servers: tuple[ServerCap, ...]
    margin_w: float = 0.0  # the caps' sum stays under budget - margin
    # The rack PDU's power, to measure pump and overhead as rack power - Σ server power.
    non_server_power: PointId | None = None
    # Further meters whose power adds to it: a rack fed by two PDUs (feeds A and B) or by
    # several power shelves draws their sum. If any reads no good value, the sum is unknown.
    more_rack_power: tuple[PointId, ...] = ()
    overhead_w: float = 0.0  # non-server load without a PDU, and its floor with one
    # A server whose measured power is within this fraction of its cap counts as wanting more.
    demand_headroom_ratio: float = 0.1
    release_rate_w_per_s: float | None = None  # how fast caps may rise (None: at once)
    # Per server: a cap whose share moved less than this keeps its value; the caps' sum is
    # allocated this much per server under what is available, so held caps still fit. 0: off,
    # every cap follows every watt (the daemon's config sets a default; see coolctl/config.py).
    cap_deadband_w: float = 0.0
    # Branch circuits and feeds whose limits the caps must fit (see `fit_circuits`).
    circuits: tuple[Circuit, ...] = ()
    # The power sources' alarm points (`psu_ok`, `bbu_discharging` of PDUs and power shelves):
    # each change is an event, so that a lost PSU or a rack on battery is on the record.
    source_alarms: tuple[PointId, ...] = ()

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError(f"{self.rack}: an allocator needs at least one server")
        names = [server.name for server in self.servers]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.rack}: server names must be unique, got {names}")
        limits = [server.limit for server in self.servers]
        if len(set(limits)) != len(limits):
            raise ValueError(f"{self.rack}: two servers share a power_limit point")
        _finite(self.margin_w, "margin_w", minimum=0.0)
        _finite(self.overhead_w, "overhead_w", minimum=0.0)
        _finite(self.cap_deadband_w, "cap_deadband_w", minimum=0.0)
        ratio = self.demand_headroom_ratio
        if not (math.isfinite(ratio) and 0.0 < ratio < 1.0):
            # 0 leaves no gap between "near its cap" and "released", so caps would flap.
            raise ValueError(f"demand_headroom_ratio must be in (0, 1), got {ratio!r}")
        rate = self.release_rate_w_per_s
        if rate is not None and not (math.isfinite(rate) and rate > 0.0):
            raise ValueError(f"release_rate_w_per_s must be finite and > 0, got {rate!r}")
        for circuit in self.circuits:
            unknown = set(circuit.servers) - set(names)
            if unknown:
                raise ValueError(f"circuit {circuit.name}: no server {sorted(unknown)}")


# -- what one step decided -------------------------------------------------------------------


class Want(StrEnum):
    """What a server wants this step, judged from its measured power against its cap."""

    MORE = "more"  # at or near its cap: may take headroom up to its maximum
    RELEASED = "released"  # well under its cap: keeps its use plus headroom, gives back the rest
    UNKNOWN = "unknown"  # no good power reading: keeps the cap in force


@dataclass(frozen=True, slots=True)
class Allocation:
    """The caps in force after one step, and why, for metrics and status."""

    caps: Mapping[str, float]  # per server name: the value last commanded
    budget_w: float | None
    allocated_w: float  # sum of caps
    feasible: bool  # False when even every server at min_cap_w exceeds the budget
    reason: str
    available_w: float | None = None  # budget - margin - non-server load; None without budget
    wants: Mapping[str, Want] = field(default_factory=lambda: MappingProxyType({}))


# -- the algorithm, one pure function per part ------------------------------------------------


def available_for_caps(budget_w: float, margin_w: float, non_server_w: float) -> float:
    """What the servers' caps may sum to: the budget less the margin and the load no cap
    governs. May be negative, which no set of caps can meet."""
    return budget_w - margin_w - non_server_w


def deadband_reserve(
    available_w: float, min_sum_w: float, servers: int, cap_deadband_w: float
) -> float:
    """What to keep back from `available_w` so that caps held within `cap_deadband_w` of their
    new shares still fit: the deadband once per server (each held cap sits at most that far
    above its share), but never so much that the minimums would not fit (then less is kept
    back, and a held cap that would not fit is lowered instead). 0 when nothing is available
    beyond the minimums."""
    return max(0.0, min(servers * cap_deadband_w, available_w - min_sum_w))


def server_demand(
    server: ServerCap, measured_w: float | None, cap_w: float, ratio: float
) -> tuple[Want, float]:
    """What a server wants and the cap that would satisfy it, within its bounds.

    `cap_w` is the cap in force. A server drawing at least (1 − ratio)·cap may be held back by
    its cap, so it wants its maximum. One drawing less is given its use times
    (1 + ratio)/(1 − ratio): enough to grow by a factor (1 + ratio) before it counts as
    wanting more, which is what keeps a released cap from flapping (see the module docstring).
    A released cap is never below ratio × max_cap_w either: a server drawing (nearly) nothing
    under a cap of (nearly) nothing would read as "at its cap" and swing between the two
    every step; with that floor it keeps room to show that it wants more.
    With no good reading the server keeps the cap in force.
    """
    low, high = server.min_cap_w, server.max_cap_w
    if measured_w is None:
        return Want.UNKNOWN, min(max(cap_w, low), high)
    if measured_w >= (1.0 - ratio) * cap_w:
        return Want.MORE, high
    released = max(measured_w * (1.0 + ratio) / (1.0 - ratio), ratio * high)
    return Want.RELEASED, min(max(released, low), high)


def water_fill(
    floors: Sequence[float],
    ceilings: Sequence[float],
    weights: Sequence[float],
    amount: float,
) -> tuple[list[float], float]:
    """Raise each floor towards its ceiling by `weight · level`, one level for all, so that the
    raises sum to `amount` or every value reaches its ceiling. Returns the new values and what
    is left of `amount`.

    A value whose ceiling is reached stops there and the rest keep rising, so the amount is
    shared in proportion to weight among those that can still use it (weighted max-min
    fairness). The level does not depend on the order of the inputs.
    """
    rooms = [max(0.0, ceiling - floor) for floor, ceiling in zip(floors, ceilings, strict=True)]
    total = math.fsum(rooms)
    if amount >= total:
        return [floor + room for floor, room in zip(floors, rooms, strict=True)], amount - total
    if amount <= 0.0:
        return list(floors), 0.0
    # Visit values in the order their ceilings are reached as the level rises.
    order = sorted(range(len(rooms)), key=lambda i: (rooms[i] / weights[i], i))
    weight_after = [0.0] * (len(order) + 1)  # Σ weights of order[k:], summed once from the end
    for k in range(len(order) - 1, -1, -1):
        weight_after[k] = weight_after[k + 1] + weights[order[k]]
    filled = 0.0  # Σ rooms of the values already at their ceilings
    level = 0.0
    for k, i in enumerate(order):
        reach = rooms[i] / weights[i]
        if filled + weight_after[k] * reach >= amount:
            level = (amount - filled) / weight_after[k]
            break
        filled += rooms[i]
    values = [
        floor + min(room, weight * level)
        for floor, room, weight in zip(floors, rooms, weights, strict=True)
    ]
    return values, 0.0


def _priority_classes(servers: Sequence[ServerCap]) -> list[list[int]]:
    """Indices of the servers grouped by priority, highest first, config order within."""
    classes: dict[int, list[int]] = {}
    for index, server in enumerate(servers):
        classes.setdefault(server.priority, []).append(index)
    return [classes[priority] for priority in sorted(classes, reverse=True)]


def allocate(
    servers: Sequence[ServerCap], demands: Sequence[float], available_w: float
) -> list[float]:
    """Caps for `servers` summing to at most `available_w`, each in [min_cap_w, max_cap_w].

    Every server starts at its minimum. Class by class, highest priority first, the remainder
    is water-filled up to each server's demand; what is left once every demand is met is
    water-filled the same way up to each maximum. Needs Σ min_cap_w ≤ available_w (the caller
    handles the infeasible case).
    """
    caps = [server.min_cap_w for server in servers]
    left = available_w - math.fsum(caps)
    classes = _priority_classes(servers)
    for ceilings in (demands, [server.max_cap_w for server in servers]):
        for members in classes:
            if left <= 0.0:
                break
            raised, left = water_fill(
                [caps[i] for i in members],
                [ceilings[i] for i in members],
                [servers[i].weight for i in members],
                left,
            )
            for i, value in zip(members, raised, strict=True):
                caps[i] = min(value, servers[i].max_cap_w)
    return _trim(caps, [server.min_cap_w for server in servers], available_w)


def _trim(caps: list[float], floors: Sequence[float], available_w: float) -> list[float]:
    """Take float rounding excess (nanowatts) off the largest caps, so Σ caps ≤ available."""
    excess = math.fsum(caps) - available_w
    if excess <= 0.0:
        return caps
    for i in sorted(range(len(caps)), key=lambda i: (floors[i] - caps[i], i)):
        take = min(excess, caps[i] - floors[i])
        caps[i] -= take
        excess -= take
        if excess <= 0.0:
            break
    return caps


def fit_circuits(
    servers: Sequence[ServerCap],
    caps: Sequence[float],
    limits: Sequence[tuple[Circuit, float]],
) -> tuple[list[float], list[str], list[str]]:
    """Lower caps so that every circuit carries at most its limit; returns the caps, the
    circuits that lowered some, and those whose servers' minimums alone exceed their limit
    (their caps sit at the minimums).

    Within a circuit over its limit the caps are water-filled up from the minimums to at most
    their current values, so the largest fall first and equal caps stay equal. Caps only fall,
    so a circuit already fitted stays fitted while the next is fitted: one pass suffices, and
    the sum never rises above what the budget allowed.
    """
    index = {server.name: i for i, server in enumerate(servers)}
    fitted = list(caps)
    lowered: list[str] = []
    short: list[str] = []
    for circuit, limit_w in limits:
        members = [index[name] for name in circuit.servers]
        if math.fsum(fitted[i] for i in members) <= limit_w + _TOLERANCE_W:
            continue
        floors = [servers[i].min_cap_w for i in members]
        room = limit_w - math.fsum(floors)
        if room < -_TOLERANCE_W:
            short.append(circuit.name)
            for i, floor in zip(members, floors, strict=True):
                fitted[i] = min(fitted[i], floor)
            continue
        values, _ = water_fill(
            floors,
            [fitted[i] for i in members],
            [servers[i].weight for i in members],
            max(0.0, room),
        )
        for i, value in zip(members, values, strict=True):
            fitted[i] = min(fitted[i], value)
        lowered.append(circuit.name)
    return fitted, lowered, short


def limit_rises(
    targets: Sequence[float],
    previous: Sequence[float | None],
    floors: Sequence[float],
    rate_w_per_s: float | None,
    dt_s: float | None,
) -> list[float]:
    """Hold each rise to `rate_w_per_s · dt_s` above the previous cap; falls take effect at
    once. A cap with no previous value, or with no rate, goes to its target. No cap goes below
    its floor, even when the previous value was under it. Never raises a value above its
    target, so Σ result ≤ Σ targets."""
    if rate_w_per_s is None:
        return list(targets)
    step = rate_w_per_s * (dt_s or 0.0)
    limited = []
    for target, before, floor in zip(targets, previous, floors, strict=True):
        if before is None or target <= before:
            limited.append(target)
        else:
            limited.append(min(target, max(before, floor) + step))
    return limited


# -- the controller --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _NonServer:
    watts: float
    note: str


class PowerCapAllocator:
    """Sets every server cap of one rack so that the rack stays within its power budget.

    Holds only what pacing and reporting need: the caps last commanded, the time of the last
    step, the last measured non-server load, the last budget and feasibility (for events).
    """

    def __init__(self, config: AllocatorConfig) -> None:
        self.config = config
        self.allocation: Allocation | None = None
        self.events: list[Event] = []
        self._commanded: dict[str, float] = {}
        # servers whose cap in force is not their share yet (a paced rise, the supervisor's
        # cap): sent on to the share even when the last step is inside the deadband
        self._rising: set[str] = set()
        self._last_now: float | None = None
        self._non_server_w: float | None = None  # the last measured value, held through gaps
        self._budget_seen = False
        self._budget_w: float | None = None
        self._feasible = True
        self._floors = [server.min_cap_w for server in config.servers]
        self._min_sum_w = math.fsum(self._floors)
        self._ratings_a: dict[str, float] = {}  # circuit -> last good rating read from a PDU
        self._alarmed: dict[PointId, bool] = {}  # source alarm point -> in trouble when last read

    @property
    def inputs(self) -> list[PointId]:
        """The points a step reads."""
        extra = [self.config.non_server_power] if self.config.non_server_power else []
        extra += self.config.more_rack_power
        extra += [c.rating for c in self.config.circuits if c.rating is not None]
        return [p for server in self.config.servers for p in (server.power, server.limit)] + extra

    def applied(self, limit: PointId, value: float) -> None:
        """The cap in force on a server is `value`, not what the allocator last asked for (the
        supervisor lowered it: a leak, a pump failure, failsafe). The next allocation compares
        with it, so the cap is raised again once the safety response is over, to its share
        even when that is within the deadband of `value`."""
        for server in self.config.servers:
            if server.limit == limit:
                self._commanded[server.name] = value
                self._rising.add(server.name)
                return

    def drain_events(self) -> list[Event]:
        """The events since the last drain, oldest first."""
        events, self.events = self.events, []
        return events

    def step(self, snapshot: Snapshot, now: float, budget_w: float | None) -> list[Command]:
        """One allocation: the commands for the caps that changed, newest allocation kept in
        `allocation`. Raises ValueError on a non-finite budget (the supervisor then goes to
        failsafe, which lowers every cap)."""
        if budget_w is not None and not math.isfinite(budget_w):
            raise ValueError(f"{self.config.rack}: power budget {budget_w!r} is not finite")
        self._note_sources(snapshot, now)
        servers = self.config.servers
        dt = None if self._last_now is None else max(0.0, now - self._last_now)
        self._last_now = now
        read_back = [_watts(snapshot, server.limit) for server in servers]
        in_force = [
            self._cap_in_force(server, cap) for server, cap in zip(servers, read_back, strict=True)
        ]
        measured = [_watts(snapshot, server.power) for server in servers]
        wants: dict[str, Want] = {}
        if budget_w is None:
            available = None
            feasible = True
            targets = [server.max_cap_w for server in servers]
            reason = "no power budget: every cap at its maximum"
        else:
            non_server = self._non_server(snapshot, measured)
            available = available_for_caps(budget_w, self.config.margin_w, non_server.watts)
            feasible = self._min_sum_w <= available + _TOLERANCE_W
            if not feasible:
                targets = list(self._floors)
                reason = self._infeasible_message(budget_w, non_server.watts, available)
            else:
                ratio = self.config.demand_headroom_ratio
                judged = [
                    server_demand(server, power, cap, ratio)
                    for server, power, cap in zip(servers, measured, in_force, strict=True)
                ]
                wants = {s.name: want for s, (want, _) in zip(servers, judged, strict=True)}
                reserve = deadband_reserve(
                    available, self._min_sum_w, len(servers), self.config.cap_deadband_w
                )
                targets = allocate(servers, [demand for _, demand in judged], available - reserve)
                reason = self._feasible_reason(budget_w, available, non_server, wants, snapshot)
                if reserve > 0.0:
                    reason += f"; {reserve:.0f} W kept back for the caps' deadband"
        limits = self._circuit_limits(snapshot)
        if self.config.circuits:
            targets, lowered, short = fit_circuits(servers, targets, limits)
            if lowered:
                reason += f"; lowered to fit {', '.join(lowered)}"
            if short:
                feasible = False
                reason += f"; minimum caps exceed {', '.join(short)}: those caps at minimum"
            known = {circuit.name for circuit, _ in limits}
            unknown = [c.name for c in self.config.circuits if c.name not in known]
            if unknown:
                reason += f"; no rating known for {', '.join(unknown)}: not enforced"
        previous = [
            self._rate_base(server, cap) for server, cap in zip(servers, read_back, strict=True)
        ]
        paced = limit_rises(targets, previous, self._floors, self.config.release_rate_w_per_s, dt)
        if any(p < t - _TOLERANCE_W for p, t in zip(paced, targets, strict=True)):
            rate = self.config.release_rate_w_per_s
            reason += f"; rises held to {rate:g} W/s"
        commands, caps = self._commands(paced, targets, available, reason, wants, limits)
        self._note_budget(budget_w, available, now)
        self._note_feasibility(feasible, reason, now)
        self.allocation = Allocation(
            caps=MappingProxyType(caps),
            budget_w=budget_w,
            allocated_w=math.fsum(caps.values()),
            feasible=feasible,
            reason=reason,
            available_w=available,
            wants=MappingProxyType(wants),
        )
        return commands

    # -- inputs -------------------------------------------------------------------------------

    def _cap_in_force(self, server: ServerCap, read_back: float | None) -> float:
        """The cap the server runs under: its read-back limit (taken at the same poll as its
        power, so the two compare), else the last one commanded, else its maximum (a server
        we know nothing of may be uncapped). Clamped to the server's bounds."""
        cap = read_back
        if cap is None:
            cap = self._commanded.get(server.name, server.max_cap_w)
        return min(max(cap, server.min_cap_w), server.max_cap_w)

    def _circuit_limits(self, snapshot: Snapshot) -> list[tuple[Circuit, float]]:
        """Each circuit with its limit this step; circuits with no known limit are left out.
        A rating read from a PDU is held through gaps in its readings (it does not change
        while the breaker is in place)."""
        limits = []
        for circuit in self.config.circuits:
            rating = None
            if circuit.rating is not None:
                value = snapshot.value(circuit.rating)
                if value is not None and math.isfinite(value) and value > 0.0:
                    self._ratings_a[circuit.name] = value
                rating = self._ratings_a.get(circuit.name)
            limit = circuit.limit(rating)
            if limit is not None:
                limits.append((circuit, limit))
        return limits

    def _rate_base(self, server: ServerCap, read_back: float | None) -> float | None:
        """Where a rise counts from: the last cap commanded, else (after a restart) the one
        read back, so that a restart does not step every cap up at once."""
        commanded = self._commanded.get(server.name)
        return commanded if commanded is not None else read_back

    def _non_server(self, snapshot: Snapshot, measured: Sequence[float | None]) -> _NonServer:
        """The load no cap governs, and where the figure came from."""
        point = self.config.non_server_power
        if point is None:
            return _NonServer(self.config.overhead_w, f"overhead {self.config.overhead_w:.0f} W")
        meters = [_watts(snapshot, meter) for meter in (point, *self.config.more_rack_power)]
        rack = None if any(m is None for m in meters) else math.fsum(m or 0.0 for m in meters)
        if rack is None:
            point = next(
                meter
                for meter, m in zip((point, *self.config.more_rack_power), meters, strict=True)
                if m is None
            )
            if self._non_server_w is not None:
                held = self._non_server_w
                return _NonServer(held, f"non-server {held:.0f} W held: {point} not good")
            overhead = self.config.overhead_w
            return _NonServer(overhead, f"overhead {overhead:.0f} W: {point} not good")
        # A server without a reading counts as 0 here, so its draw is reserved as non-server
        # load on top of its cap: too much reserved, never too little.
        # The PDU and the BMCs are read at different moments: while caps move, the difference
        # can dip far below the real pump and overhead load. overhead_w is its floor.
        difference = rack - math.fsum(p for p in measured if p is not None)
        watts = max(self.config.overhead_w, difference)
        self._non_server_w = watts
        note = f"non-server {watts:.0f} W measured"
        if any(p is None for p in measured):
            note += " (includes servers without a power reading)"
        return _NonServer(watts, note)

    # -- outputs ------------------------------------------------------------------------------

    def _commands(
        self,
        paced: Sequence[float],
        targets: Sequence[float],
        available: float | None,
        reason: str,
        wants: Mapping[str, Want],
        limits: Sequence[tuple[Circuit, float]] = (),
    ) -> tuple[list[Command], dict[str, float]]:
        """Commands for the caps that moved by more than the threshold and whose share
        (`targets`, before pacing) left the deadband; the caps in force.

        The deadband is judged on the share, not on the paced value, so that a rise paced in
        steps smaller than the deadband still goes out step by step; and a rise the rate held
        short of its share goes out to its end, even when its last step is inside the deadband
        (else the cap would stay up to the deadband under its share for good). A fall inside the
        threshold or the deadband is held back only while the caps still fit: if holding the
        small falls back would leave the sum over what is available, they are sent too.
        """
        servers = self.config.servers
        deadband = self.config.cap_deadband_w
        send = [
            (before := self._commanded.get(server.name)) is None
            or (
                abs(value - before) > CHANGE_THRESHOLD_W
                and (abs(target - before) > deadband or server.name in self._rising)
            )
            for server, value, target in zip(servers, paced, targets, strict=True)
        ]
        caps = [
            value if go else self._commanded[server.name]
            for server, value, go in zip(servers, paced, send, strict=True)
        ]
        limit = max(math.fsum(paced), available) if available is not None else math.inf
        if math.fsum(caps) > limit + _TOLERANCE_W:
            for i, (cap, value) in enumerate(zip(caps, paced, strict=True)):
                if cap > value:
                    send[i], caps[i] = True, value
        index = {server.name: i for i, server in enumerate(servers)}
        for circuit, circuit_limit in limits:  # a held cap must not break a breaker either
            members = [index[name] for name in circuit.servers]
            if math.fsum(caps[i] for i in members) > circuit_limit + _TOLERANCE_W:
                for i in members:
                    if caps[i] > paced[i]:
                        send[i], caps[i] = True, paced[i]
        commands = []
        for server, value, target, go in zip(servers, caps, targets, send, strict=True):
            if go:
                self._commanded[server.name] = value
                if value < target - CHANGE_THRESHOLD_W:
                    self._rising.add(server.name)
                else:
                    self._rising.discard(server.name)
                want = wants.get(server.name)
                why = f"{server.name} {want.value}: {reason}" if want else reason
                commands.append(Command(server.limit, value, Source.AUTO, why))
        return commands, {server.name: cap for server, cap in zip(servers, caps, strict=True)}

    def _note_budget(self, budget_w: float | None, available: float | None, now: float) -> None:
        """An event when the budget changes, and one for the first budget seen."""
        if self._budget_seen and budget_w == self._budget_w:
            return
        before = "" if self._budget_w is None else f"{self._budget_w:.0f} W -> "
        if budget_w is None:
            message = f"power budget {before}none: caps go to their maxima"
        else:
            message = f"power budget {before}{budget_w:.0f} W: {available:.0f} W for server caps"
        self._budget_seen, self._budget_w = True, budget_w
        self.events.append(self._event("power_budget", Severity.INFO, message, now))

    def _note_sources(self, snapshot: Snapshot, now: float) -> None:
        """An event when a power source's alarm point changes (first reading: only if set)."""
        for point in self.config.source_alarms:
            value = snapshot.value(point)
            known = _SOURCE_ALARMS.get(point.name)
            if value is None or known is None:
                continue
            trouble, kind, severity, cleared = known
            alarmed = value == trouble
            before = self._alarmed.get(point)
            self._alarmed[point] = alarmed
            if alarmed and before is not True:
                message = f"{point.device}: {kind.replace('_', ' ')} ({point} = {value:g})"
                self.events.append(self._event(kind, severity, message, now))
            elif not alarmed and before is True:
                message = f"{point.device}: {cleared.replace('_', ' ')} ({point} = {value:g})"
                self.events.append(self._event(cleared, Severity.INFO, message, now))

    def _note_feasibility(self, feasible: bool, reason: str, now: float) -> None:
        if feasible == self._feasible:
            return
        self._feasible = feasible
        if feasible:
            event = self._event(
                "power_budget_met", Severity.INFO, f"budget met again: {reason}", now
            )
        else:
            event = self._event("power_budget_infeasible", Severity.CRITICAL, reason, now)
        self.events.append(event)

    def _event(self, kind: str, severity: Severity, message: str, now: float) -> Event:
        return Event(self.config.rack, kind, severity, message, now, source=_EVENT_SOURCE)

    # -- reasons ------------------------------------------------------------------------------

    def _infeasible_message(self, budget_w: float, non_server_w: float, available: float) -> str:
        return (
            f"budget cannot be met: minimum caps sum to {self._min_sum_w:.0f} W"
            f" > budget {budget_w:.0f} W less margin {self.config.margin_w:.0f} W and"
            f" non-server {non_server_w:.0f} W = {available:.0f} W; every cap at its minimum"
        )

    def _feasible_reason(
        self,
        budget_w: float,
        available: float,
        non_server: _NonServer,
        wants: Mapping[str, Want],
        snapshot: Snapshot,
    ) -> str:
        counts = {want: 0 for want in Want}
        for want in wants.values():
            counts[want] += 1
        reason = (
            f"budget {budget_w:.0f} W, {available:.0f} W for caps"
            f" (margin {self.config.margin_w:.0f} W, {non_server.note});"
            f" {counts[Want.MORE]} want more, {counts[Want.RELEASED]} released"
        )
        unknown = [server for server in self.config.servers if wants[server.name] is Want.UNKNOWN]
        if unknown:
            shown = ", ".join(
                f"{server.name} {_quality(snapshot, server.power)}" for server in unknown[:8]
            )
            more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
            reason += f"; power {shown}{more}: held at the cap in force"
        return reason


# point name -> (value that means trouble, event kind, severity, event kind when it clears)
_SOURCE_ALARMS: Mapping[str, tuple[float, str, Severity, str]] = MappingProxyType(
    {
        "psu_ok": (0.0, "psu_lost", Severity.WARNING, "psu_restored"),
        "bbu_discharging": (1.0, "bbu_discharging", Severity.CRITICAL, "bbu_discharge_ended"),
    }
)


def _watts(snapshot: Snapshot, point: PointId) -> float | None:
    """A good, finite, non-negative reading in watts, or None."""
    value = snapshot.value(point)
    if value is None or not math.isfinite(value) or value < 0.0:
        return None
    return value


def _quality(snapshot: Snapshot, point: PointId) -> str:
    reading = snapshot.get(point)
    if reading is None:
        return "missing"
    if reading.usable:
        return "not a power"  # good, but NaN, infinite or negative
    return reading.quality.value
