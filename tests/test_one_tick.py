"""One tick: the daemon's RackRuntime and the scenario runner's SimRack decide alike.

Both call the one rack step (`coolctl.rack.step.RackStep`); what differs is only their I/O.
The same hand-built snapshots are fed to a RackRuntime (fake device clients, an injected clock)
and to a SimRack (its simulated actuators write into a plant), tick by tick, through a mode
switch, an upstream budget that changes, is rejected and accepted again, an override, a
controller that raises once, a non-finite request, and commands that must be refused; both
must submit the same commands and emit the same events at every tick. Then the step itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from coolctl.config import RackConfig, load_config
from coolctl.control.loops import PidLoop
from coolctl.control.supervisor import Decision, Override, Supervisor, SupervisorConfig
from coolctl.daemon.devices import DeviceHandle
from coolctl.daemon.runtime import RackRuntime
from coolctl.daemon.telemetry import TelemetryStore
from coolctl.model import Command, Event, PointId, Quality, RackMode, Reading, Snapshot, Source
from coolctl.rack.controllers import build_rack_control
from coolctl.rack.facts import device_facts
from coolctl.rack.safety import DeviceFacts
from coolctl.rack.stack import LoopController, RackControl
from coolctl.rack.step import RackStep, Refused, StepResult
from coolctl.simulators.plant import RackPlant
from coolctl.tools.scenario_runner import SimDevice, SimRack

CONFIG = Path(__file__).resolve().parent / "configs" / "hil-full-rack.toml"
RACK = "r01"
PERIOD = 0.2
TICKS = 60


def point(device: str, name: str) -> PointId:
    return PointId(RACK, device, name)


PUMP = point("cdu1", "pump_speed_command")
VALVE = point("cdu1", "valve_command")
BUDGET = point("row", "power_budget")
PASS_THROUGH = "let through by the test's supervisor"


def rack_config() -> RackConfig:
    return load_config(CONFIG).racks[RACK]


def facts_of(rack: RackConfig) -> dict[str, DeviceFacts]:
    return {device.id: device_facts(device) for device in rack.devices.values()}


# ---- what the test injects -------------------------------------------------------------------


@dataclass
class Script:
    """What the scripted controller does at given times (the same for both paths)."""

    raise_at: set[float] = field(default_factory=set)
    extra: dict[float, list[Command]] = field(default_factory=dict)


class ScriptedController:
    """The rack's own controller, except that it raises, or adds commands, when scripted."""

    def __init__(self, inner: LoopController, script: Script) -> None:
        self.inner = inner
        self.script = script
        self.steps: list[float] = []
        self.applied_values: list[tuple[PointId, float]] = []

    @property
    def loops(self) -> Mapping[str, PidLoop]:
        return self.inner.loops

    @property
    def inputs(self) -> Sequence[PointId]:
        return self.inner.inputs

    def loop_of(self, actuator: PointId) -> PidLoop | None:
        return self.inner.loop_of(actuator)

    def step(self, snapshot: Snapshot, now: float) -> list[Command]:
        self.steps.append(now)
        commands = self.inner.step(snapshot, now)
        key = round(now, 6)
        if key in self.script.raise_at:
            raise RuntimeError(f"scripted failure at {now:g}")
        return [*commands, *self.script.extra.get(key, [])]

    def applied(self, actuator: PointId, value: float, now: float) -> None:
        self.applied_values.append((actuator, value))
        self.inner.applied(actuator, value, now)


class PassThroughSupervisor(Supervisor):
    """A supervisor with a hole in it: requests marked PASS_THROUGH reach the actuators as they
    are (the real one drops non-finite requests and clamps the rest to bounds), so that the
    refusal after the supervisor is exercised."""

    def step(
        self,
        snapshot: Snapshot,
        now: float,
        requested: Sequence[Command],
        overrides: Mapping[PointId, Override] = {},
        controller_failed: bool = False,
    ) -> Decision:
        decision = super().step(snapshot, now, requested, overrides, controller_failed)
        holes = {c.point: c for c in requested if c.reason == PASS_THROUGH}
        if not holes:
            return decision
        commands = tuple(holes.pop(c.point, c) for c in decision.commands) + tuple(holes.values())
        return replace(decision, commands=commands)


def scripted_factory(
    script: Script, built: list[ScriptedController]
) -> Callable[[RackConfig, Mapping[str, DeviceFacts]], RackControl]:
    def factory(rack: RackConfig, facts: Mapping[str, DeviceFacts]) -> RackControl:
        stack = build_rack_control(rack, facts)
        controller = ScriptedController(stack.controller, script)
        built.append(controller)
        supervisor = PassThroughSupervisor(stack.supervisor.config)
        return RackControl(controller, stack.allocator, supervisor)

    return factory


# ---- the snapshots -------------------------------------------------------------------------


def readings(k: int, now: float) -> list[Reading]:
    """Tick k's readings: a rack settling, a PDU whose load grows so that the budget binds, the
    upstream budget as the script below wants it."""
    good = Quality.GOOD
    wave = math.sin(k / 5.0)
    values = {
        point("cdu1", "supply_temperature"): 35.0 + 1.5 * wave,
        point("cdu1", "return_temperature"): 42.0 + wave,
        point("cdu1", "flow"): 150.0 + 5.0 * wave,
        point("cdu1", "pump_running"): 1.0,
        point("cdu1", "standby_pump_active"): 0.0,
        point("cdu1", "leak_detected"): 0.0,
        point("cdu1", "pump_speed_command"): 0.8,
        point("cdu1", "valve_command"): 0.5,
        point("sensors1", "flow"): 155.0 - 10.0 * wave,
        point("sensors1", "inlet_temperature"): 35.2,
        point("sensors1", "leak_detected"): 0.0,
        point("pdu1", "power"): 85000.0 + 600.0 * k,
    }
    for bmc in ("bmc01", "bmc02"):
        values[point(bmc, "power")] = 5000.0 + 20.0 * k
        values[point(bmc, "power_limit")] = 7000.0
        values[point(bmc, "leak_detected")] = 0.0
    out = [Reading(p, v, now, good) for p, v in values.items()]
    budget = budget_at(k)
    if budget is not None:
        value, quality = budget
        out.append(Reading(BUDGET, value, now, quality))
    return out


def budget_at(k: int) -> tuple[float | None, Quality] | None:
    """The upstream coordinator: nothing, then 100 kW, 90 kW, out of range (twice), unreadable,
    then 80 kW, and its own budget back."""
    if k < 3:
        return None
    if k < 10:
        return 100000.0, Quality.GOOD
    if k < 14:
        return 90000.0, Quality.GOOD
    if k < 16:
        return 500000.0, Quality.GOOD  # beyond budget_max_w: rejected once
    if k < 18:
        return None, Quality.BAD
    if k < 40:
        return 80000.0, Quality.GOOD
    return 130000.0, Quality.GOOD


def mode_at(k: int) -> RackMode:
    return RackMode.MANUAL if 12 <= k < 18 else RackMode.AUTO


def overrides_at(k: int) -> dict[PointId, Override]:
    if 20 <= k < 25:
        return {VALVE: Override(VALVE, 0.4, "alice", "testing the valve")}
    return {}


def script() -> Script:
    t = lambda k: round(k * PERIOD, 6)  # noqa: E731
    return Script(
        raise_at={t(27)},
        extra={
            # the real supervisor drops a non-finite request (and says so, once)
            t(30): [Command(VALVE, math.nan, Source.AUTO, "nan")],
            # these get past the test's supervisor: refused after it
            t(33): [
                Command(PUMP, math.inf, Source.AUTO, PASS_THROUGH),
                Command(VALVE, 1.7, Source.AUTO, PASS_THROUGH),
            ],
        },
    )


# ---- the two paths -------------------------------------------------------------------------


Shape = tuple[str, str, str]


def shape(command: Command) -> Shape:
    return (str(command.point), repr(command.value), command.source.value)


def event_shape(event: Event) -> tuple[str, str, str]:
    return (event.kind, event.severity.value, event.message)


@dataclass
class Tick:
    commands: list[Shape]
    events: list[tuple[str, str, str]]
    budget_w: float | None
    failsafe: bool
    controller_errors: int
    refused: int


class Spy:
    """Stands in front of an actuator (channel or simulated) and notes what it is given."""

    def __init__(self, inner: Any, into: list[Shape]) -> None:
        self.inner = inner
        self.into = into

    def observe(self, *args: Any) -> None:
        self.inner.observe(*args)

    def submit(self, command: Command, now: float) -> Any:
        self.into.append(shape(command))
        return self.inner.submit(command, now)


class _FakeClient:
    stats: Any = None

    def __init__(self) -> None:
        self.writes: list[tuple[str, float]] = []

    async def poll(self) -> list[Reading]:
        return []

    async def write(self, name: str, value: float) -> float:
        self.writes.append((name, value))
        return value

    async def close(self) -> None:
        return None


def register(store: TelemetryStore, rack: RackConfig) -> None:
    for device in rack.devices.values():
        store.register_device(rack.id, device.id, device.stale_after_s)


def daemon_path(rack: RackConfig, built: list[ScriptedController]) -> Iterator[Tick]:
    """Drive a RackRuntime tick by tick; yields once after start-up and once per tick."""
    now = 0.0
    store = TelemetryStore()
    register(store, rack)
    handles = {}
    for device in rack.devices.values():
        facts = device_facts(device)
        handles[device.id] = DeviceHandle(
            rack.id, device, _FakeClient(), facts.writable, facts.point_names, facts.kind
        )
    events: list[Event] = []
    runtime = RackRuntime(
        rack, store, handles, lambda: now, events.append, scripted_factory(script(), built)
    )
    submitted: list[Shape] = []
    runtime.actuators = {p: Spy(c, submitted) for p, c in runtime.actuators.items()}  # type: ignore[misc]
    loop = asyncio.new_event_loop()
    try:
        runtime.start_up()
        yield _tick(submitted, events, runtime.power_budget_w, runtime.decision, runtime)
        for k in range(TICKS):
            now = k * PERIOD
            store.update(readings(k, now))
            runtime.mode = mode_at(k)  # type: ignore[assignment]
            runtime.overrides = overrides_at(k)
            loop.run_until_complete(runtime.tick())
            yield _tick(submitted, events, runtime.power_budget_w, runtime.decision, runtime)
    finally:
        loop.close()


def runner_path(rack: RackConfig, built: list[ScriptedController]) -> Iterator[Tick]:
    """Drive a SimRack the same way; its actuators write into a plant."""
    facts = facts_of(rack)
    servers = [SimDevice("bmc01", "server0", (), 1.0), SimDevice("bmc02", "server1", (), 1.0)]
    plant = RackPlant()
    sim = SimRack(
        rack, scripted_factory(script(), built), servers, plant, facts, rack.power_budget_w
    )
    submitted: list[Shape] = []
    sim.actuators = {p: Spy(a, submitted) for p, a in sim.actuators.items()}  # type: ignore[misc]
    seen = 0

    def events() -> list[Event]:
        nonlocal seen
        new, seen = sim.events[seen:], len(sim.events)
        return new

    sim.start_up(0.0)
    yield _tick(submitted, events(), sim.power_budget_w, sim.decision, sim)
    for k in range(TICKS):
        now = k * PERIOD
        sim.store.update(readings(k, now))
        sim.mode = mode_at(k)  # type: ignore[assignment]
        sim.overrides = overrides_at(k)
        sim.tick(now)
        yield _tick(submitted, events(), sim.power_budget_w, sim.decision, sim)


def _tick(
    submitted: list[Shape],
    events: list[Event],
    budget_w: float | None,
    decision: Decision | None,
    rack: Any,
) -> Tick:
    refused = getattr(rack, "refused_commands", None)
    if refused is None:
        refused = len(rack.refused)
    tick = Tick(
        list(submitted),
        [event_shape(e) for e in events],
        budget_w,
        bool(decision and decision.failsafe),
        rack.controller_errors,
        refused,
    )
    submitted.clear()
    events.clear()
    return tick


# ---- the equivalence -----------------------------------------------------------------------


def test_the_daemon_and_the_runner_decide_alike_tick_by_tick() -> None:
    rack = rack_config()
    assert rack.budget_point is not None
    daemon_built: list[ScriptedController] = []
    runner_built: list[ScriptedController] = []
    daemon = list(daemon_path(rack, daemon_built))
    runner = list(runner_path(rack, runner_built))
    assert len(daemon) == len(runner) == TICKS + 1
    for k, (ours, theirs) in enumerate(zip(daemon, runner, strict=True)):
        assert ours == theirs, f"tick {k - 1}"

    everything = [e for tick in daemon for e in tick.events]
    kinds = [kind for kind, _, _ in everything]
    # start-up in failsafe, the budget followed, rejected once per episode, accepted again
    assert daemon[0].failsafe and daemon[0].commands
    budget_events = [
        (kind, message) for kind, _, message in everything if kind.startswith("budget_")
    ]
    assert budget_events == [
        ("budget_set", "budget 130000.0 W -> 100000 W from row/power_budget"),
        ("budget_set", "budget 100000.0 W -> 90000 W from row/power_budget"),
        (
            "budget_rejected",
            "budget from row/power_budget rejected (500000 W; accepted 65000..195000 W);"
            " keeping 90000.0 W",
        ),
        ("budget_set", "budget 90000.0 W -> 80000 W from row/power_budget"),
        ("budget_set", "budget 80000.0 W -> 130000 W from row/power_budget"),
    ]
    assert [t.budget_w for t in daemon[1:]][:4] == [130000.0, 130000.0, 130000.0, 100000.0]
    assert daemon[1 + 16].budget_w == 90000.0  # unreadable: the last good one is kept
    # manual mode: the loops are not asked, the caps still are
    asked = [round(t / PERIOD) for t in daemon_built[0].steps]
    assert not set(range(12, 18)) & set(asked) and {11, 18} <= set(asked)
    manual = [c for tick in daemon[1 + 12 : 1 + 18] for c in tick.commands]
    assert not any(source == "auto" and "cdu1" in name for name, _, source in manual)
    # the override holds the valve while it lasts
    overridden = {
        c[0] for tick in daemon[1 + 20 : 1 + 25] for c in tick.commands if c[2] == "override"
    }
    assert overridden == {str(VALVE)}
    # a controller that raised: failsafe, counted once
    assert "controller_failed" in kinds and "power_budget_infeasible" in kinds
    assert daemon[1 + 27].failsafe and daemon[1 + 27].controller_errors == 1
    # a non-finite request is dropped by the supervisor, with one event
    assert "auto_refused" in kinds
    # what got past the supervisor is refused after it, counted, never submitted
    assert daemon[1 + 33].refused == 2 and daemon[1 + 33].controller_errors == 3
    assert not any(c[0] in (str(PUMP), str(VALVE)) for c in daemon[1 + 33].commands)
    # and neither controller was told the refused values were applied
    for built in (daemon_built, runner_built):
        assert not any(v in (math.inf, 1.7) for _, v in built[0].applied_values)
    assert daemon_built[0].applied_values == runner_built[0].applied_values


def test_the_daemon_logs_a_raised_controller_with_its_traceback_and_each_refusal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="coolctl.daemon.runtime")
    list(daemon_path(rack_config(), []))
    raised = [r for r in caplog.records if "controller raised" in r.getMessage()]
    assert len(raised) == 1 and raised[0].exc_info is not None
    assert "scripted failure" in str(raised[0].exc_info[1])
    refused = [r.getMessage() for r in caplog.records if "command refused" in r.getMessage()]
    assert refused == [
        f"r01: command refused: refusing non-finite command inf for {PUMP}",
        f"r01: command refused: refusing 1.7 for {VALVE}: outside its hard range 0..1",
    ]


# ---- the step itself -----------------------------------------------------------------------


def _step(factory: Callable[..., RackControl] | None = None) -> RackStep[RackControl]:
    rack = rack_config()
    facts = facts_of(rack)
    if factory is None:
        return RackStep(rack, facts)
    return RackStep(rack, facts, factory)


def snapshot(k: int, now: float, *extra: Reading) -> Snapshot:
    by_point = {r.point: r for r in (*readings(k, now), *extra)}
    return Snapshot(by_point.values(), now)


def test_start_up_is_failsafe_until_the_required_readings_are_there() -> None:
    step = _step()
    result = step.start_up(Snapshot([], 0.0), 0.0)
    assert result is not None and result.decision.failsafe
    assert {c.source for c in result.commands} == {Source.FAILSAFE}
    assert [e.kind for e in result.events] == ["startup"]
    assert _step().start_up(snapshot(0, 0.0), 0.0) is None


def test_a_step_in_manual_mode_asks_only_the_allocator() -> None:
    built: list[ScriptedController] = []
    step = _step(scripted_factory(Script(), built))
    result = step.step(snapshot(0, 0.0), 0.0, mode="manual", budget_w=130000.0)
    assert built[0].steps == []
    assert all(c.point.name == "power_limit" for c in result.commands if c.source is Source.AUTO)
    step.step(snapshot(1, PERIOD), PERIOD, mode="auto", budget_w=130000.0)
    assert built[0].steps == [PERIOD]


def test_the_budget_follows_upstream_and_keeps_the_last_good_one() -> None:
    step = _step()

    def budget_events(result: StepResult) -> list[str]:
        return [e.kind for e in result.early_events if e.kind.startswith("budget_")]

    rejected = Reading(BUDGET, 1.0, 0.0, Quality.GOOD)
    first = step.step(snapshot(0, 0.0, rejected), 0.0, budget_w=130000.0)
    assert first.budget_w == 130000.0 and budget_events(first) == ["budget_rejected"]
    again = step.step(snapshot(1, PERIOD, replace(rejected, ts=PERIOD)), PERIOD, budget_w=130000.0)
    assert budget_events(again) == []  # once per episode
    good = Reading(BUDGET, 70000.0, 2 * PERIOD, Quality.GOOD)
    accepted = step.step(snapshot(2, 2 * PERIOD, good), 2 * PERIOD, budget_w=130000.0)
    assert accepted.budget_w == 70000.0 and step.budget_w(130000.0) == 70000.0
    assert budget_events(accepted) == ["budget_set"]
    assert accepted.early_events[0].source == "daemon"
    # the rack's own budget no longer counts once upstream has set one
    assert step.budget_w(1.0) == 70000.0
    # a bad reading is rejected whatever its value
    bad = Reading(BUDGET, 71000.0, 3 * PERIOD, Quality.BAD)
    refused = step.step(snapshot(3, 3 * PERIOD, bad), 3 * PERIOD, budget_w=130000.0)
    assert refused.budget_w == 70000.0 and budget_events(refused) == ["budget_rejected"]


def test_a_raising_controller_is_reported_not_raised() -> None:
    built: list[ScriptedController] = []
    step = _step(scripted_factory(Script(raise_at={0.0}), built))
    result = step.step(snapshot(0, 0.0), 0.0, budget_w=None)
    assert result.controller_failed and isinstance(result.error, RuntimeError)
    assert result.decision.failsafe


def test_refused_commands_are_neither_submitted_nor_reported_as_applied() -> None:
    built: list[ScriptedController] = []
    bad = [Command(PUMP, -0.5, Source.AUTO, PASS_THROUGH)]
    step = _step(scripted_factory(Script(extra={0.0: bad}), built))
    outcome = step.step(snapshot(0, 0.0), 0.0, budget_w=None)
    assert [r.command.point for r in outcome.refused] == [PUMP]
    assert "outside its hard range" in outcome.refused[0].reason
    assert PUMP not in {c.point for c in outcome.commands}
    assert (PUMP, -0.5) not in built[-1].applied_values


def test_what_the_supervisor_applied_instead_is_told_to_the_controller() -> None:
    built: list[ScriptedController] = []
    step = _step(scripted_factory(Script(), built))
    result = step.start_up(Snapshot([], 0.0), 0.0)  # nothing asked: failsafe values
    assert result is not None and result.decision.failsafe
    told = dict(built[0].applied_values)
    assert told[PUMP] == 1.0 and told[VALVE] == 1.0


def test_interlock_fast_path_and_shutdown() -> None:
    step = _step()
    step.step(snapshot(0, 0.0), 0.0, budget_w=130000.0)
    wet = Reading(point("sensors1", "leak_detected"), 1.0, 0.1, Quality.GOOD)
    first = step.interlocks(snapshot(0, 0.1, wet), 0.1)
    assert first.decision.interlocks == frozenset()  # one wet sample: the debounce runs
    wet = Reading(point("sensors1", "leak_detected"), 1.0, 1.2, Quality.GOOD)
    fast = step.interlocks(snapshot(0, 1.2, wet), 1.2)
    assert "leak" in fast.decision.interlocks
    sent = {(c.point, c.source) for c in fast.commands}
    assert (PUMP, Source.INTERLOCK) not in sent  # caps first: the pump waits for the PDU
    assert all(
        c.source is Source.INTERLOCK and c.point.name == "power_limit" for c in fast.commands
    )
    assert fast.budget_w is None
    last = step.shutdown(1.3)
    assert [e.kind for e in last.events] == ["shutdown"]
    assert all(c.source is Source.INTERLOCK for c in last.commands)  # the leak outlives us
    assert (PUMP, 0.0, Source.INTERLOCK) in {(c.point, c.value, c.source) for c in last.commands}


# ---- the step's own contract -----------------------------------------------------------------


def test_results_are_immutable_and_say_whether_the_controller_failed() -> None:
    result = _step().step(snapshot(0, 0.0), 0.0, budget_w=130000.0)
    assert result.controller_failed is False and result.error is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.commands = ()  # type: ignore[misc]
    refused = Refused(Command(PUMP, -1.0, Source.AUTO, "x"), "why")
    with pytest.raises(dataclasses.FrozenInstanceError):
        refused.reason = "other"  # type: ignore[misc]


def test_the_supervisor_observes_what_the_devices_hold() -> None:
    step = _step()
    step.step(snapshot(0, 0.0), 0.0, budget_w=130000.0)  # the CDU reads pump 0.8, valve 0.5
    actuators = step.supervisor.state.actuators
    assert actuators[PUMP].observed == 0.8 and actuators[VALVE].observed == 0.5


def test_early_events_are_the_ones_before_the_supervisor_decided() -> None:
    step = _step()
    started = step.start_up(Snapshot([], 0.0), 0.0)
    assert started is not None and started.early_events == ()
    rejected = Reading(BUDGET, 1.0, 0.0, Quality.GOOD)
    result = step.step(snapshot(0, 0.0, rejected), 0.0, budget_w=130000.0)
    assert result.decision.events, "the supervisor said something (failsafe cleared)"
    assert result.early_events[0].kind == "budget_rejected"
    assert not set(result.early_events) & set(result.decision.events)


def test_readbacks_give_each_actuator_its_value_and_sample_time() -> None:
    step = _step()
    snap = Snapshot([Reading(PUMP, 0.7, 3.5, Quality.GOOD)], 4.0)
    seen = {p: (v, ts) for p, v, ts in step.readbacks(snap)}
    assert seen[PUMP] == (0.7, 3.5)
    assert seen[VALVE] == (None, None)  # missing: no value, no time
    assert set(seen) == {a.point for a in step.supervisor.config.actuators}


def test_a_loop_pinned_at_its_top_and_short_of_its_setpoint_is_reported() -> None:
    step = _step()
    kinds: list[str] = []
    for k in range(0, 135):
        now = float(k)
        weak = Reading(point("sensors1", "flow"), 60.0, now, Quality.GOOD)  # setpoint 160
        result = step.step(snapshot(k, now, weak), now, budget_w=130000.0)
        kinds += [e.kind for e in result.events]
    assert kinds.count("loop_saturated") == 1


class ReshapingSupervisor(Supervisor):
    """A supervisor that drops its valve command (as one holding a blind rack's outputs might,
    sending nothing) and decides a command for a point that is no actuator of the rack."""

    def __init__(self, config: SupervisorConfig, held: float) -> None:
        super().__init__(config)
        self.held = held

    def step(
        self,
        snapshot: Snapshot,
        now: float,
        requested: Sequence[Command],
        overrides: Mapping[PointId, Override] = {},
        controller_failed: bool = False,
    ) -> Decision:
        decision = super().step(snapshot, now, requested, overrides, controller_failed)
        if now == 0.0:
            return decision
        foreign = Command(PointId("r99", "cdu9", "pump_speed_command"), 0.5, Source.AUTO, "?")
        kept = tuple(c for c in decision.commands if c.point != VALVE)
        return replace(decision, commands=(foreign, *kept))

    def commanded(self, point: PointId) -> float | None:
        """The valve holds `held`, whatever it is asked; nothing else changes."""
        return self.held if point == VALVE else super().commanded(point)


@pytest.mark.parametrize("held", [0.06, 0.99])  # below and above what the loop asks
def test_a_request_the_supervisor_sent_nothing_for_is_told_the_value_held(held: float) -> None:
    built: list[ScriptedController] = []

    def factory(rack: RackConfig, facts: Mapping[str, DeviceFacts]) -> RackControl:
        stack = build_rack_control(rack, facts)
        controller = ScriptedController(stack.controller, Script())
        built.append(controller)
        return RackControl(
            controller, stack.allocator, ReshapingSupervisor(stack.supervisor.config, held)
        )

    step = _step(factory)
    step.step(snapshot(0, 0.0), 0.0, budget_w=130000.0)
    built[0].applied_values.clear()
    second = step.step(snapshot(1, PERIOD), PERIOD, budget_w=130000.0)
    # the foreign command is not this rack's to write; the rest still are
    assert {c.point for c in second.commands} >= {PUMP}
    assert all(c.point.rack == RACK for c in second.commands)
    # the valve was asked for something else but keeps what it holds
    asked = [v for p, v in built[0].applied_values if p == VALVE]
    assert asked == [held]


@pytest.mark.parametrize("edge", ["low", "high"])
def test_an_upstream_budget_at_either_end_of_its_range_is_taken(edge: str) -> None:
    step = _step()
    low, high = step._budget_range()
    watts = low if edge == "low" else high
    at_edge = Reading(BUDGET, watts, 0.0, Quality.GOOD)
    result = step.step(snapshot(0, 0.0, at_edge), 0.0, budget_w=130000.0)
    assert result.budget_w == watts
