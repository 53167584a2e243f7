"""One rack step: snapshot, time, mode, budget, overrides → commands and events, without I/O.

The daemon (`coolctl.daemon.runtime.RackRuntime`), the scenario runner
(`coolctl.tools.scenario_runner.SimRack`) and the live step test all call this one step; each
keeps only its own I/O around it (where the snapshot comes from, where the commands go, where
the events are logged). No asyncio, no clock reads (time is an argument), no logging: whatever
happened is in the `StepResult`.

A step, in the order the daemon has always taken it:

1. the supervisor observes what each actuator's device holds (`readbacks`; the caller's own
   actuators observe the same values with their sample time);
2. the budget: the caller's own (config, or a scenario's), unless the rack follows an upstream
   coordinator's (`budget_point`): a good reading within `budget_min_w..budget_max_w` becomes
   the budget in force (`budget_set`), a bad or out-of-range one is rejected once per episode
   (`budget_rejected`) and the last good one kept;
3. the controller (in `auto` mode only) and the power-cap allocator (in both modes: the budget
   holds in `manual` too) ask; a controller that raises sends the rack to failsafe and its
   exception is returned;
4. the supervisor decides, with the operator's overrides;
5. each command is checked once more: a non-finite value, or one outside the actuator's hard
   range, is refused (not to be written, and not reported to the controller as applied); for
   the rest, the controller and the allocator learn of every value the supervisor applied in
   place of what they asked (`note_applied`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, TypeVar, cast, overload

from coolctl.config import RackConfig
from coolctl.control.loops import SaturationWatch
from coolctl.control.supervisor import Decision, Override, Supervisor
from coolctl.model import Command, Event, PointId, Quality, RackMode, Severity, Snapshot
from coolctl.rack.cdu_watch import CduWatch
from coolctl.rack.chips import ChipWatch
from coolctl.rack.controllers import build_rack_control
from coolctl.rack.safety import DeviceFacts
from coolctl.rack.stack import ControlStack, RackControl, note_applied

StackT = TypeVar("StackT", bound=ControlStack)

StackFactory = Callable[[RackConfig, Mapping[str, DeviceFacts]], StackT]
"""Builds a rack's controller, allocator and supervisor from its config and device facts."""

ControllerFactory = Callable[[RackConfig, Mapping[str, DeviceFacts]], RackControl]
"""The daemon's kind of factory: a stack whose controller shows its PID loops (status,
metrics, setpoint overrides). `build_rack_control` is the default."""

NO_OVERRIDES: Mapping[PointId, Override] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Refused:
    """A command the supervisor decided that must not be written, and why."""

    command: Command
    reason: str


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step decided and what the caller must do about it.

    `commands` are to be submitted to the actuators, in order; `events` to be emitted, in
    order (budget, allocator, then the supervisor's); `error` is the exception a controller
    raised (the caller logs it with its traceback); `refused` the commands not to be written.
    `budget_w` is the budget in force at a tick (None from start-up, interlock and shutdown).
    """

    decision: Decision
    commands: tuple[Command, ...]
    events: tuple[Event, ...]
    budget_w: float | None = None
    error: Exception | None = None
    refused: tuple[Refused, ...] = ()
    held: tuple[Command, ...] = ()  # for a CDU in local control: not written while it stays

    @property
    def controller_failed(self) -> bool:
        return self.error is not None

    @property
    def early_events(self) -> tuple[Event, ...]:
        """The events that came before the supervisor's decision (budget, allocator)."""
        return self.events[: len(self.events) - len(self.decision.events)]


class RackStep(Generic[StackT]):
    """One rack's decision logic: its stack and its budget-following state."""

    @overload
    def __init__(
        self: RackStep[RackControl], config: RackConfig, facts: Mapping[str, DeviceFacts]
    ) -> None: ...

    @overload
    def __init__(
        self,
        config: RackConfig,
        facts: Mapping[str, DeviceFacts],
        factory: StackFactory[StackT],
    ) -> None: ...

    def __init__(
        self,
        config: RackConfig,
        facts: Mapping[str, DeviceFacts],
        factory: StackFactory[StackT] | None = None,
    ) -> None:
        self.config = config
        self.stack: StackT = (
            cast(StackT, build_rack_control(config, facts))
            if factory is None
            else factory(config, facts)
        )
        self._hard: dict[PointId, tuple[float, float]] = {
            a.point: (a.hard_minimum, a.hard_maximum) for a in self.supervisor.config.actuators
        }
        self._saturation = SaturationWatch(config.id)  # loops that cannot reach their setpoint
        self.chips = ChipWatch(config)  # servers that throttle, or are near it
        self._upstream_w: float | None = None  # the last budget accepted from budget_point
        self._budget_rejected = False
        self.cdu = CduWatch(config.id, facts)  # CDUs in local control, and their alarms
        self._budget_changed_at: float | None = None  # when upstream last changed the budget
        self._budget_held = False
        self.budget_source: str | None = None
        """Where upstream budgets come from (an MQTT topic), named in their events."""

    @property
    def supervisor(self) -> Supervisor:
        return self.stack.supervisor

    def budget_w(self, own_w: float | None) -> float | None:
        """The budget in force: the upstream coordinator's last good one, else the rack's own."""
        return self._upstream_w if self._upstream_w is not None else own_w

    def readbacks(self, snapshot: Snapshot) -> Iterator[tuple[PointId, float | None, float | None]]:
        """Each supervised actuator's point, the value its device holds, and when that value
        was sampled (None, None when the snapshot has no usable value)."""
        for safety in self.supervisor.config.actuators:
            point = safety.point
            value = snapshot.value(point)
            yield point, value, (snapshot[point].ts if value is not None else None)

    # -- the calls ---------------------------------------------------------------------------

    def start_up(self, snapshot: Snapshot, now: float) -> StepResult | None:
        """Failsafe outputs before the first good readings (None once every required reading
        is there: the first tick starts bumplessly from what the devices hold)."""
        required = self.supervisor.config.required
        if all(snapshot.value(point) is not None for point in required):
            return None
        return self._result(self.supervisor.startup(now), (), now, [])

    def step(
        self,
        snapshot: Snapshot,
        now: float,
        *,
        mode: RackMode = RackMode.AUTO,
        budget_w: float | None,
        overrides: Mapping[PointId, Override] = NO_OVERRIDES,
    ) -> StepResult:
        """One control tick; `budget_w` is the rack's own budget (config or scenario)."""
        stack = self.stack
        supervisor = stack.supervisor
        for point, value, _ in self.readbacks(snapshot):
            if value is not None:
                supervisor.observe(point, value, now)
        events: list[Event] = self.cdu.observe(snapshot, now)
        events += self.chips.step(snapshot, now)
        budget = self._follow_budget(snapshot, now, budget_w, events)
        requested: list[Command] = []
        error: Exception | None = None
        try:
            if mode == RackMode.AUTO:
                requested = stack.controller.step(snapshot, now)
                loops = getattr(stack.controller, "loops", None)  # PID loops, or an MPC's
                if isinstance(loops, Mapping):
                    events.extend(self._saturation.step(loops, now))
            if stack.allocator is not None:  # the budget holds in manual mode too
                requested += stack.allocator.step(snapshot, now, budget)
                events.extend(stack.allocator.drain_events())
        except Exception as exc:  # a controller that raises must not leave the actuators be
            error = exc
        decision = supervisor.step(snapshot, now, requested, overrides, error is not None)
        return self._result(decision, requested, now, events, budget, error)

    def interlocks(self, snapshot: Snapshot, now: float) -> StepResult:
        """The fast path, between ticks: a reading that may trip an interlock has arrived."""
        events = self.cdu.observe(snapshot, now)
        return self._result(self.supervisor.evaluate_interlocks(snapshot, now), (), now, events)

    def reset_interlock(self, name: str, now: float, who: str, why: str) -> StepResult:
        """An operator's reset of an interlock whose cause is clear (ValueError if it is not):
        the next tick ramps the actuators back."""
        return self._result(self.supervisor.reset_interlock(name, now, who, why), (), now, [])

    def shutdown(self, now: float) -> StepResult:
        """The hand-back values (or an active interlock's), on the way out."""
        return self._result(self.supervisor.shutdown(now), (), now, [])

    # -- inside ------------------------------------------------------------------------------

    def _follow_budget(
        self, snapshot: Snapshot, now: float, own_w: float | None, events: list[Event]
    ) -> float | None:
        """Take the budget an upstream coordinator sets; reject bad ones, keep the last good."""
        current = self.budget_w(own_w)
        config = self.config
        ref = config.budget_point
        if ref is None:
            return current
        reading = snapshot.get(PointId(config.id, ref.device, ref.point))
        if reading is None or reading.quality is Quality.MISSING:
            return current
        value = reading.value
        low, high = self._budget_range()
        source = f"{ref}" if self.budget_source is None else f"{ref} ({self.budget_source})"
        problem = None
        if reading.quality is Quality.BAD or value is None or not low <= value <= high:
            shown = "unreadable" if value is None else f"{value:g} W"
            problem = f"{shown}; accepted {low:g}..{high:g} W"
        elif value != self._upstream_w and (
            reading.quality is Quality.STALE or now - reading.ts > config.budget_max_age_s
        ):
            # A retained budget replayed on subscribing, or one long gone: nobody knows when
            # the coordinator meant it, so it must say it again, live.
            problem = f"{value:g} W, retained or older than {config.budget_max_age_s:g} s"
        if problem is not None:
            if not self._budget_rejected:
                self._budget_rejected = True
                message = f"budget from {source} rejected ({problem}); keeping {current} W"
                events.append(self._event("budget_rejected", Severity.WARNING, message, now))
            return current
        self._budget_rejected = False
        if value == self._upstream_w:
            return value
        changed_at = self._budget_changed_at
        if changed_at is not None and now - changed_at < config.budget_min_interval_s:
            if not self._budget_held:  # rate-limited: taken once the interval has passed
                self._budget_held = True
                message = (
                    f"budget {value:g} W from {source} held: the budget changes at most once"
                    f" per {config.budget_min_interval_s:g} s; keeping {current} W"
                )
                events.append(self._event("budget_held", Severity.WARNING, message, now))
            return current
        self._budget_held = False
        self._upstream_w = value
        self._budget_changed_at = now
        if value != current:
            message = f"budget {current} W -> {value:g} W from {source}"
            events.append(self._event("budget_set", Severity.WARNING, message, now))
        return value

    def _budget_range(self) -> tuple[float, float]:
        """The budgets upstream may set: budget_min_w..budget_max_w, narrowed to the band
        around the rack's configured budget when it has one."""
        config = self.config
        low, high = config.budget_min_w, config.budget_max_w
        own_w = config.power_budget_w
        if own_w is not None:
            band = config.budget_band_fraction
            low, high = max(low, own_w * (1.0 - band)), min(high, own_w * (1.0 + band))
        return low, high

    def _event(self, kind: str, severity: Severity, message: str, now: float) -> Event:
        return Event(self.config.id, kind, severity, message, now, source="daemon")

    def _result(
        self,
        decision: Decision,
        requested: Sequence[Command],
        now: float,
        events: list[Event],
        budget_w: float | None = None,
        error: Exception | None = None,
    ) -> StepResult:
        stack = self.stack
        asked = {command.point: command.value for command in requested}
        commands: list[Command] = []
        refused: list[Refused] = []
        held_back: list[Command] = []
        for command in decision.commands:
            hard = self._hard.get(command.point)
            if hard is None:
                continue  # not an actuator of this rack: nothing to write it to
            if self.cdu.holds(command.point):
                held_back.append(command)  # its panel has control: written once it is back
                continue
            problem = _refusal(command, *hard)
            if problem is not None:
                refused.append(Refused(command, problem))
                continue
            commands.append(command)
            if asked.get(command.point) != command.value:
                note_applied(stack.controller, stack.allocator, command.point, command.value, now)
        decided = {command.point for command in decision.commands}
        for point, value in asked.items():
            # Asked, but the supervisor sent nothing (a blind rack holding its outputs, a
            # request it dropped): the actuator keeps what it was last told, and the
            # controller and allocator must carry on from that, not from what they asked.
            held = stack.supervisor.commanded(point)
            if point not in decided and held is not None and held != value:
                note_applied(stack.controller, stack.allocator, point, held, now)
        events.extend(decision.events)
        return StepResult(
            decision,
            tuple(commands),
            tuple(events),
            budget_w,
            error,
            tuple(refused),
            tuple(held_back),
        )


def _refusal(command: Command, low: float, high: float) -> str | None:
    """Why a command must not be written (as `ActuatorChannel.submit` words it), or None."""
    value = command.value
    if not math.isfinite(value):
        return f"refusing non-finite command {value!r} for {command.point}"
    if not low <= value <= high:
        return f"refusing {value!r} for {command.point}: outside its hard range {low:g}..{high:g}"
    return None
