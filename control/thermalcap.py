"""Cooling-aware power capping: a rack IT-power limit from how close the temperatures are to
their limits, engaged only when cooling has nothing left to give.

For a chip or a server outlet margin, cooling is at its top once the pumps are: more
flow is what such a margin needs (a worn pump pinned at full speed, the valve with room left);
for a supply or return margin, once the valves are: the exchanger has no more to give.

The over-temperature interlock is an on/off limiter: it drops every cap to its minimum at the
limit and lifts them after the hold, so a rack whose facility water is too warm to carry its
load swings between full and minimum power. This loop caps continuously instead: while the pump
and the valve are at their top and the worst margin (limit − reading, over the supply, the
hottest chips and the server outlets) is under `target_margin_c`, a PI lowers the rack's IT
limit; as the margin comes back it raises it again, no faster than `release_rate_w_per_s`, and
lets go once the limit is well above what the rack draws. The allocator then shares out the
lower of this limit and the budget. The interlock stays the backstop.

Pure and deterministic: `now` is an argument, readings come in the snapshot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from coolctl.model import PointId, Snapshot


@dataclass(frozen=True, slots=True)
class MarginPoint:
    """A temperature and the limit its margin is measured from."""

    point: PointId
    limit_c: float
    flow_bound: bool = False  # a chip or a server outlet: more flow is what cools it


@dataclass(frozen=True, slots=True)
class CoolingActuator:
    """An actuator whose read-back value at (or near) `top` means it can cool no more."""

    point: PointId
    top: float
    moves_flow: bool = False  # a pump: at its top, a flow-bound margin has no more to get


@dataclass(frozen=True, slots=True)
class ThermalCapConfig:
    """One rack's thermal cap loop; see the module docstring."""

    margins: tuple[MarginPoint, ...]
    cooling: tuple[CoolingActuator, ...]
    power: tuple[PointId, ...]  # IT power, summed: the PDU's, or every server's
    floor_w: float  # never below this (the caps' minimums together)
    target_margin_c: float = 2.0
    kp_w_per_k: float = 4000.0
    ki_w_per_k_s: float = 400.0
    release_rate_w_per_s: float = 2000.0
    top_tolerance: float = 0.02  # of the actuator's range: "at its top"
    let_go_ratio: float = 1.15  # disengaged once the limit is this far above the power drawn

    def __post_init__(self) -> None:
        for name in ("floor_w", "target_margin_c", "kp_w_per_k", "ki_w_per_k_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        if not (math.isfinite(self.release_rate_w_per_s) and self.release_rate_w_per_s > 0.0):
            raise ValueError("release_rate_w_per_s must be finite and > 0")
        if not self.let_go_ratio > 1.0:
            raise ValueError("let_go_ratio must be above 1")


@dataclass(frozen=True, slots=True)
class ThermalCapState:
    """What the loop saw and decided at its last step, for metrics and status."""

    limit_w: float | None  # None: not engaged
    worst_margin_c: float | None
    worst_point: PointId | None
    cooling_at_top: bool
    power_w: float | None


class ThermalCapLoop:
    """The PI of the module docstring, in velocity form (bumpless when it engages)."""

    def __init__(self, config: ThermalCapConfig) -> None:
        self.config = config
        self._limit_w: float | None = None
        self._last_error: float | None = None
        self._last_time: float | None = None
        self.state = ThermalCapState(None, None, None, False, None)

    @property
    def limit_w(self) -> float | None:
        return self._limit_w

    def step(self, snapshot: Snapshot, now: float) -> float | None:
        """The rack's IT limit now, or None while the loop does not limit."""
        config = self.config
        worst, where, at_top = self._binding_margin(snapshot)
        power = self._power(snapshot)
        dt_s = 0.0 if self._last_time is None else max(0.0, now - self._last_time)
        self._last_time = now
        if worst is None:  # nothing to judge by: hold what is in force
            self.state = ThermalCapState(self._limit_w, None, None, at_top, power)
            return self._limit_w
        error = worst - config.target_margin_c  # < 0: too little margin
        limit = self._limit_w
        if limit is None and at_top and error < 0.0 and power is not None:
            limit = power  # engage from what the rack draws: no step
            self._last_error = error
        if limit is not None:
            last = error if self._last_error is None else self._last_error
            change = config.kp_w_per_k * (error - last) + config.ki_w_per_k_s * error * dt_s
            if not at_top and change < config.release_rate_w_per_s * dt_s:
                change = config.release_rate_w_per_s * dt_s  # cooling has room again: release
            change = min(change, config.release_rate_w_per_s * dt_s)  # rises are paced
            limit = max(config.floor_w, limit + change)
            # let go once well above the power drawn, with the margin back, or with cooling
            # that has room again (it is rising at the release rate then, margin or not: held,
            # it would climb without bound and be that far off when cooling next runs out)
            if (
                power is not None
                and (error > 0.0 or not at_top)
                and limit > power * config.let_go_ratio
            ):
                limit = None
        self._limit_w = limit
        self._last_error = error if limit is not None else None
        self.state = ThermalCapState(limit, worst, where, at_top, power)
        return limit

    def _binding_margin(self, snapshot: Snapshot) -> tuple[float | None, PointId | None, bool]:
        """The margin the loop caps on, where it is, and whether its cooling is at its top:
        the worst of the margins whose cooling is at its top (caps are all that is left for
        those), else the worst of all (the cooling has room: the loop releases). Judging only
        the worst of all would miss a supply short of margin with its valves wide open while a
        chip, a little worse, waits for a pump that a controller holds below its top."""
        worst: tuple[float, PointId] | None = None
        capped: tuple[float, PointId] | None = None
        tops: dict[bool, bool] = {}
        for margin in self.config.margins:
            value = snapshot.value(margin.point)
            if value is None or not math.isfinite(value):
                continue
            room = margin.limit_c - value
            if worst is None or room < worst[0]:
                worst = (room, margin.point)
            at_top = tops.get(margin.flow_bound)
            if at_top is None:
                at_top = tops[margin.flow_bound] = self._cooling_at_top(snapshot, margin.flow_bound)
            if at_top and (capped is None or room < capped[0]):
                capped = (room, margin.point)
        if capped is not None:
            return capped[0], capped[1], True
        if worst is not None:
            return worst[0], worst[1], False
        return None, None, False

    def _cooling_at_top(self, snapshot: Snapshot, flow_bound: bool = False) -> bool:
        """For a chip or an outlet (`flow_bound`), every pump at its top: a pump at full speed
        can give such a margin no more, whatever the valve does (a worn pump short of its
        flow); for a coolant temperature (supply, return), every valve at its top: the
        exchanger has nothing more to give, whatever flow the chips need. A stack without the
        one kind of actuator judges by all of them."""
        tolerance = self.config.top_tolerance
        cooling = [a for a in self.config.cooling if a.moves_flow == flow_bound]
        if not cooling:
            cooling = list(self.config.cooling)
        for actuator in cooling:
            value = snapshot.value(actuator.point)
            if value is None or value < actuator.top - tolerance * max(abs(actuator.top), 1.0):
                return False
        return bool(cooling)

    def _power(self, snapshot: Snapshot) -> float | None:
        values = [snapshot.value(point) for point in self.config.power]
        known = [value for value in values if value is not None]
        return sum(known) if known and len(known) == len(values) else None
