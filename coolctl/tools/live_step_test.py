"""The live step test: `coolctl identify RACK --config FILE` on a real (or served) rack.

The test runs under the daemon's own safety machinery, not around it. The rack's runtime is
built exactly as the daemon builds it (`coolctl.daemon.runtime.Daemon`: pollers, the control
tick, the safety supervisor, the power-cap allocator, the actuator channels), with one change,
made through the daemon's controller factory (`StepTestFactory`): the rack's controller is a
`StepTestController`, which asks for the step-test plan's pump speed and valve opening as
automatic requests and leaves every other actuator to the rack's PID loops. So the supervisor
keeps the last word — interlocks (leak, over-temperature, pump failure) win, a blind rack goes
to failsafe, every request is clamped to the loop's output range and slew — and the plan itself
never asks for more: its levels lie within the loops' `output_min..output_max`, its ramps within
their slew.

The test aborts, hands the actuators back to the PID loops and writes no model when

- the supervisor trips an interlock or goes to failsafe,
- a temperature the supervisor limits comes within `margin_k` of its limit,
- a signal the fit needs stays unreadable for longer than the rack's `failsafe_after_s`,
- the control tick misses more than a few periods (the record would not be evenly sampled),
- or the operator interrupts it (SIGINT, SIGTERM).

After an abort the PID loops hold the rack for `handback_s` (so a valve the plan had closed is
opened again by the supply loop, not left where the test stood), then the runtime stops the way
the daemon stops: the configured hand-back values, or an active interlock's value.

What is recorded is what the offline test records (`coolctl.tools.step_test`), read through the very
`MpcRack` the MPC will use on this rack (`coolctl.rack.mpc.mpc_rack_of`): the pump speed and
valve commands as the supervisor let them through (after clamping and the device's
quantisation), IT power, facility water, supply, return, flow, hottest server outlet, hottest
chip, pump power. A signal whose points the rack's devices do not have is left out (the report
says which). The IT power and facility water are not stepped on a live rack: each enters the
model only if it varied enough during the test (`MIN_DISTURBANCE_STD`); otherwise its gain would
be fitted to sensor noise, or, where IT power is read at the PDU, to the pump's own power
stepping with the pump.

Time. A rack's step test takes tens of minutes: every duration here (`duration_s`, `settle_s`,
the hold times, `handback_s`) is in seconds of the rack's own time, and `time_scale` says how
much faster than the wall clock the rack runs (1 for a real rack; a simulated rack served at
`--time-scale K` runs K times faster, and its config scales its periods and rates to match, as
tests/configs/hil-rack.toml does). The model's sample time is the rack's control period as the
config gives it, which is what the MPC on that config runs at.

The daemon must not be driving the rack while the test runs: stop it, or put the rack in manual
mode (`coolctl mode RACK manual`) with no override on the pump or the valve. `check_daemon` asks
the control socket and refuses a rack a daemon runs in automatic mode; a rack in manual mode is
tested without the allocator (the daemon's keeps the caps).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from coolctl.config import Config, Controller, MqttDeviceConfig, RackConfig
from coolctl.control.identify import (
    CHIP_MAX,
    FACILITY_WATER,
    FLOW,
    IT_POWER,
    OUTLET_MAX,
    OUTPUTS,
    PUMP_POWER,
    PUMP_SPEED,
    PUMP_SPEED_MEASURED,
    RETURN,
    SUPPLY,
    VALVE,
    ChannelPlan,
    IdentifiedModel,
    IdentifySettings,
    StepTestData,
    StepTestPlan,
    identify,
    plan_step_test,
)
from coolctl.control.loops import PidLoop, RackController
from coolctl.control.mpc import MpcRack
from coolctl.control.supervisor import ActuatorSafety, TemperatureLimit
from coolctl.daemon.runtime import Daemon, RackRuntime
from coolctl.model import Command, PointId, Snapshot, Source
from coolctl.rack.mpc import PUMP_POINT, VALVE_POINT, mpc_rack_of
from coolctl.rack.safety import DeviceFacts
from coolctl.rack.stack import RackControl, build_pid_control

log = logging.getLogger("coolctl.identify")

# The plan's ramps, per second of rack time: the offline test's (coolctl.tools.step_test),
# unless the loop's slew is slower. 90 % of the slew: a tick that comes a little early must
# not be clamped.
PUMP_RATE_PER_S = 0.05
VALVE_RATE_PER_S = 0.05
SLEW_SHARE = 0.9

# A disturbance enters the model only if its spread over the test reaches this (one standard
# deviation). Below it, its effect on the temperatures is within the noise over one test, and a
# gain fitted to it fits noise; at a PDU that measures IT power, the pump's own power (a few
# hundred watts as the pump steps) must not pass for load.
MIN_DISTURBANCE_STD: Mapping[str, float] = {IT_POWER: 1000.0, FACILITY_WATER: 0.3}
_SPREAD_UNITS: Mapping[str, str] = {IT_POWER: " W", FACILITY_WATER: " K"}

# A record shorter than this is fitted with first-order denominators only. Measured on the
# simulated plant (16 seeds, 150 samples of 4 s, pump and valve stepped): with second-order
# denominators allowed, the held-out supply R² fell as low as -3.3 (AIC let a second-order
# model fit the estimation part's nonlinearity); first-order only, -0.16 at worst, with the same
# median (0.84). The full-length test (2400 samples) keeps the offline test's search.
SHORT_RECORD_SAMPLES = 1000

MAX_MISSED_SHARE = 0.05  # of the samples so far; and never more than MAX_MISSED_RUN in a row
MAX_MISSED_RUN = 3

CANDIDATE_DISTURBANCES = (IT_POWER, FACILITY_WATER)
EXTRA_SIGNALS = (PUMP_POWER, PUMP_SPEED_MEASURED)  # for the pump-power fit, not model signals


class StepTestRefused(Exception):
    """The test cannot start on this rack as configured; nothing was written."""


class RackUnreachable(StepTestRefused):
    """A device did not give the readings the test needs before it starts."""


@dataclass(frozen=True, slots=True)
class LiveTestSettings:
    """How the live test runs. Durations in seconds of rack time (see the module docstring)."""

    duration_s: float = 2400.0
    time_scale: float = 1.0
    settle_s: float = 60.0
    hold_min_s: float = 20.0
    hold_max_s: float = 90.0
    pump_step: float = 0.15  # fraction of full speed, the largest step from the operating point
    valve_step: float = 0.2  # fraction of full opening
    margin_k: float = 2.0  # abort this close to a supervisor temperature limit
    handback_s: float = 60.0  # PID loops hold the rack this long after an abort
    seed: int = 1

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if self.time_scale <= 0.0:
            raise ValueError("time_scale must be > 0")
        if not 0.0 < self.hold_min_s <= self.hold_max_s:
            raise ValueError("need 0 < hold_min_s <= hold_max_s")
        if self.settle_s < 0.0 or self.margin_k < 0.0 or self.handback_s < 0.0:
            raise ValueError("settle_s, margin_k and handback_s must be >= 0")
        if not (0.0 < self.pump_step <= 1.0 and 0.0 < self.valve_step <= 1.0):
            raise ValueError("pump_step and valve_step must be within (0, 1]")


# -- the plan ------------------------------------------------------------------------------------


def live_plan(
    pump: ActuatorSafety,
    valve: ActuatorSafety,
    operating_point: Mapping[str, float],
    period_s: float,
    settings: LiveTestSettings,
) -> StepTestPlan:
    """The step-test plan for pump and valve around where they stand (`operating_point`).

    Levels within the supervisor's bounds for auto commands (the loop's output range within the
    device's), ramps within its slew. `period_s` is the control period in wall seconds; the
    plan is built in rack seconds (period × time_scale) so that hold times mean plant time.
    Pure: the same arguments give the same plan.
    """
    scale = settings.time_scale
    channels = [
        ChannelPlan(
            name,
            low=safety.minimum,
            high=safety.maximum,
            max_rate_per_s=_rate(rate, safety.slew_per_s, scale),
            amplitude=amplitude,
        )
        for name, safety, rate, amplitude in (
            (PUMP_SPEED, pump, PUMP_RATE_PER_S, settings.pump_step),
            (VALVE, valve, VALVE_RATE_PER_S, settings.valve_step),
        )
    ]
    return plan_step_test(
        channels,
        operating_point,
        duration_s=settings.duration_s,
        period_s=period_s * scale,
        settle_s=settings.settle_s,
        min_hold_s=settings.hold_min_s,
        max_hold_s=settings.hold_max_s,
        seed=settings.seed,
    )


def _rate(default_per_s: float, slew_per_wall_s: float | None, time_scale: float) -> float:
    if slew_per_wall_s is None:
        return default_per_s
    return min(default_per_s, SLEW_SHARE * slew_per_wall_s / time_scale)


# -- the controller the runtime runs -------------------------------------------------------------


class StepTestController:
    """The rack's controller for the length of the test: the plan on pump and valve, the PID
    loops on everything else; the PID loops on everything once it is aborted, and nothing once
    the plan has been played (its last sample is the operating point the test started from).

    Offers what the runtime calls of a controller (`coolctl.rack.stack.LoopController`).
    Pure and deterministic, like every controller: time is the `now` argument. The plan starts
    at the first step, around the pump and valve commands the devices hold then; sample k of
    the plan is asked for at the first tick at or after start + k·period (a missed tick skips
    its sample, `index` says which one is in force).
    """

    def __init__(
        self,
        pid: RackController,
        pump: ActuatorSafety,
        valve: ActuatorSafety,
        period_s: float,
        settings: LiveTestSettings,
        limits: Sequence[TemperatureLimit] = (),
    ) -> None:
        self.pid = pid
        self.pump = pump
        self.valve = valve
        self.period_s = period_s
        self.settings = settings
        self.limits = tuple(limits)
        self.plan: StepTestPlan | None = None
        self.started_at: float | None = None
        self.index: int | None = None  # the plan sample asked for at the last step
        self.last_snapshot: Snapshot | None = None
        self.finished = False  # the whole plan was played
        self.abort_reason: str | None = None

    # -- LoopController's interface --

    @property
    def loops(self) -> Mapping[str, PidLoop]:
        return self.pid.loops

    @property
    def inputs(self) -> Sequence[PointId]:
        return self.pid.inputs

    def loop_of(self, actuator: PointId) -> PidLoop | None:
        return self.pid.loop_of(actuator)

    def applied(self, actuator: PointId, value: float, now: float) -> None:
        """The supervisor applied something else (clamped, interlock, failsafe): the loops
        track it, so that a hand-back starts from what the device holds."""
        self.pid.applied(actuator, value, now)

    @property
    def handed_back(self) -> bool:
        return self.finished or self.abort_reason is not None

    def hand_back(self, reason: str) -> None:
        """Abort the test: from the next step on the PID loops drive every actuator. Also after
        the last sample was asked for: a trip on that tick spoils the record as any other."""
        if self.abort_reason is None:
            self.abort_reason = reason
            self.finished = False

    def step(self, snapshot: Snapshot, now: float) -> list[Command]:
        self.last_snapshot = snapshot
        if self.abort_reason is not None:
            self.index = None
            return self.pid.step(snapshot, now)
        if self.finished:  # pump and valve stay where the test ended: where they stood
            self.index = None
            return []
        hot = self._too_hot(snapshot)
        if hot is not None:
            self.hand_back(hot)
            self.index = None
            return self.pid.step(snapshot, now)
        if self.plan is None or self.started_at is None:
            pump = snapshot.value(self.pump.point)
            valve = snapshot.value(self.valve.point)
            if pump is None or valve is None:
                self.hand_back(
                    "cannot read where the pump and valve stand"
                    f" ({self.pump.point}, {self.valve.point}): no operating point to test around"
                )
                return self.pid.step(snapshot, now)
            point = {PUMP_SPEED: pump, VALVE: valve}
            self.plan = live_plan(self.pump, self.valve, point, self.period_s, self.settings)
            self.started_at = now
        index = min(math.floor((now - self.started_at) / self.period_s + 0.5), self.plan.samples)
        if index >= self.plan.samples:  # only after a late last tick: the plan has been played
            self.finished = True
            self.index = None
            return []
        self.index = index
        # The last sample returns pump and valve to where they stood: the test ends there,
        # with nothing more asked of them (the runtime stops next, as the daemon stops).
        self.finished = index == self.plan.samples - 1
        values = self.plan.at(index)
        why = f"step test: sample {index + 1} of {self.plan.samples}"
        commands = [
            Command(self.pump.point, values[PUMP_SPEED], Source.AUTO, why),
            Command(self.valve.point, values[VALVE], Source.AUTO, why),
        ]
        return commands + self._other_loops(snapshot, now, commands)

    # -- internals --

    def _too_hot(self, snapshot: Snapshot) -> str | None:
        """A supervisor temperature limit within `margin_k`: the reason to stop, or None."""
        margin = self.settings.margin_k
        for limit in self.limits:
            value = snapshot.value(limit.point)
            if value is not None and value > limit.limit_c - margin:
                return (
                    f"{limit.point} at {value:.1f} degC is within {margin:g} K of its limit"
                    f" {limit.limit_c:g} degC"
                )
        return None

    def _other_loops(
        self, snapshot: Snapshot, now: float, commands: Sequence[Command]
    ) -> list[Command]:
        """Loops on pump and valve track the plan (a bumpless hand-back); the others run."""
        sent = {c.point: c.value for c in commands}
        return self.pid.step_except(
            snapshot, now, sent, "tracking the step test (PID takes over when it ends)"
        )


# -- what the rack offers ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RackSignals:
    """Which model signals the rack's devices can give, and which outputs it lacks."""

    mpc_rack: MpcRack
    recorded: tuple[str, ...]  # every signal recorded (inputs, outputs, candidates, extras)
    outputs: tuple[str, ...]
    disturbances: tuple[str, ...]  # candidates: kept if they vary enough
    missing: tuple[str, ...]  # model signals the rack has no points for


def rack_signals(rack: RackConfig, devices: Mapping[str, DeviceFacts]) -> RackSignals:
    """The model signals of `rack`, read as the MPC on it will read them."""
    mpc_rack = mpc_rack_of(rack, devices)
    names = {dev: set(facts.point_names) for dev, facts in devices.items()}

    def available(signal: str) -> bool:
        source = mpc_rack.signals.get(signal)
        return source is not None and all(
            p.name in names.get(p.device, set()) for p in source.points
        )

    wanted = (PUMP_SPEED, VALVE, *CANDIDATE_DISTURBANCES, *OUTPUTS)
    missing = tuple(s for s in wanted if s not in (PUMP_SPEED, VALVE) and not available(s))
    outputs = tuple(s for s in OUTPUTS if available(s))
    disturbances = tuple(s for s in CANDIDATE_DISTURBANCES if available(s))
    extras = tuple(s for s in EXTRA_SIGNALS if available(s))
    recorded = (PUMP_SPEED, VALVE, *disturbances, *outputs, *extras)
    return RackSignals(mpc_rack, recorded, outputs, disturbances, missing)


def excited(data: StepTestData, candidates: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The disturbances that varied enough to be fitted, and why each other one was left out."""
    kept: list[str] = []
    dropped: dict[str, str] = {}
    for name in candidates:
        spread = float(np.std(data.signals[name]))
        need = MIN_DISTURBANCE_STD.get(name, 0.0)
        if spread >= need:
            kept.append(name)
        else:
            unit = _SPREAD_UNITS.get(name, "")
            dropped[name] = (
                f"varied by {spread:.3g}{unit} (one std) during the test, less than {need:g}{unit}"
            )
    return kept, dropped


# -- recording -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Recorder:
    """Called after every control tick: checks what the supervisor decided, records a sample.

    Sample k holds the signals read at the tick that asked for plan sample k and the pump and
    valve commands the supervisor let through at that tick (in force until the next one), as
    the offline test records them.
    """

    runtime: RackRuntime
    controller: StepTestController
    signals: RackSignals
    gap_limit_s: float
    done: asyncio.Event
    on_progress: Callable[[int, int, Mapping[str, float | None]], None] | None = None
    record: dict[str, list[float | None]] = field(default_factory=dict)
    missed: int = 0
    last_tick: float = field(default_factory=time.monotonic)
    _unknown_since: dict[str, float] = field(default_factory=dict)
    _missed_run: int = 0

    def __post_init__(self) -> None:
        self.record = {name: [] for name in self.signals.recorded}

    @property
    def samples(self) -> int:
        return len(self.record[PUMP_SPEED])

    def on_tick(self, rack: str, now: float) -> None:
        self.last_tick = time.monotonic()
        controller = self.controller
        index, snapshot = controller.index, controller.last_snapshot
        if index is not None and snapshot is not None and controller.abort_reason is None:
            decision = self.runtime.decision
            state = self.runtime.supervisor.state
            if decision is not None and decision.interlocks:
                reasons = "; ".join(
                    f"{name}: {status.reason}" for name, status in sorted(state.interlocks.items())
                )
                controller.hand_back(f"interlock tripped ({reasons})")
            elif decision is not None and decision.failsafe:
                controller.hand_back(f"failsafe ({'; '.join(state.failsafe_reasons)})")
            else:
                self._sample(index, snapshot, now)
        if controller.handed_back:
            self.done.set()

    def _sample(self, index: int, snapshot: Snapshot, now: float) -> None:
        values = self.signals.mpc_rack.read(snapshot)
        for name, point in ((PUMP_SPEED, self.controller.pump), (VALVE, self.controller.valve)):
            command = self.runtime.actuators[point.point].stats.last_command
            values[name] = None if command is None else command.value
        gap = index - self.samples
        if gap < 0:
            return  # the same sample again: impossible on a fixed grid, harmless
        self.missed += gap
        self._missed_run = self._missed_run + gap if gap else 0
        for name, series in self.record.items():
            fill = series[-1] if series else None
            series.extend([fill] * gap)
            value = values.get(name)
            series.append(value if value is not None and math.isfinite(value) else None)
            if series[-1] is None:
                since = self._unknown_since.setdefault(name, now)
                if now - since > self.gap_limit_s or index == 0:
                    self.controller.hand_back(
                        f"{name} unreadable for {now - since:.1f} s"
                        f" ({', '.join(map(str, self._points(name)))})"
                    )
            else:
                self._unknown_since.pop(name, None)
        if self._missed_run > MAX_MISSED_RUN or self.missed > max(
            MAX_MISSED_RUN, MAX_MISSED_SHARE * (index + 1)
        ):
            self.controller.hand_back(
                f"the control tick missed {self.missed} of {index + 1} periods: the record"
                " would not be evenly sampled (is the machine too busy?)"
            )
        if self.on_progress is not None and self.controller.plan is not None:
            self.on_progress(index, self.controller.plan.samples, values)

    def _points(self, name: str) -> tuple[PointId, ...]:
        source = self.signals.mpc_rack.signals.get(name)
        return source.points if source is not None else ()

    def data(self, dt_s: float, settle_samples: int) -> StepTestData:
        """The record, short gaps filled with the last value read before them."""
        signals = {}
        for name, series in self.record.items():
            filled: list[float] = []
            last: float | None = next((v for v in series if v is not None), None)
            for value in series:
                last = value if value is not None else last
                filled.append(math.nan if last is None else last)
            signals[name] = np.asarray(filled, dtype=np.float64)
        return StepTestData(dt_s=dt_s, signals=signals, settle_samples=settle_samples)


# -- the test ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveResult:
    """How the test ended. `data` only when the whole plan was played."""

    rack: str
    finished: bool
    reason: str | None  # why it stopped early
    data: StepTestData | None
    signals: RackSignals
    samples: int
    missed: int
    interrupted: bool = False


def rack_under_test(config: Config, rack_id: str) -> tuple[Config, RackConfig]:
    """The config reduced to the rack under test, which runs the PID stack (an MPC rack's
    model may not exist yet: that is what the test is for); StepTestRefused if it cannot."""
    rack = config.racks.get(rack_id)
    if rack is None:
        known = ", ".join(sorted(config.racks)) or "none"
        raise StepTestRefused(f"no rack {rack_id!r} in the config (racks: {known})")
    points = {loop.actuator.point for loop in rack.loops.values() if loop.enabled}
    for point, what in ((PUMP_POINT, "pump speed"), (VALVE_POINT, "primary valve")):
        if point not in points:
            raise StepTestRefused(
                f"rack {rack_id} has no enabled loop on a CDU's {point}: the test steps the"
                f" {what} through its loop's bounds and slew, and the MPC's model needs it"
            )
    rack = replace(rack, controller=Controller.PID, mpc_model=None)
    return replace(config, racks={rack_id: rack}), rack


async def run_live_step_test(
    config: Config,
    rack_id: str,
    settings: LiveTestSettings,
    *,
    with_allocator: bool = True,
    handle_signals: bool = False,
    on_progress: Callable[[int, int, Mapping[str, float | None]], None] | None = None,
) -> LiveResult:
    """Run the test on `rack_id` (see the module docstring); StepTestRefused before anything is
    written if the rack cannot be tested, RackUnreachable if its devices do not answer."""
    reduced, rack = rack_under_test(config, rack_id)
    factory = StepTestFactory(settings, with_allocator)
    try:
        daemon = Daemon(reduced, controller_factory=factory)
    except StepTestRefused:
        raise  # the rack has no pump or valve the test can step: nothing was opened or written
    except Exception as exc:  # what the daemon itself refuses: a secret it cannot read, ...
        raise StepTestRefused(f"cannot build rack {rack_id}'s runtime: {exc}") from exc
    runtime = daemon.racks[rack_id]
    controller, signals = factory.built(rack_id)
    # The rack's MQTT state and events are the daemon's to publish; the test only logs.
    runtime.on_state = None
    daemon.event_listeners.clear()
    try:
        await _preflight(daemon, runtime, signals)
    except BaseException:
        await daemon.stop(hand_back=False)  # nothing was started or written: just close
        raise
    done = asyncio.Event()
    recorder = Recorder(
        runtime,
        controller,
        signals,
        gap_limit_s=rack.safety.failsafe_after_s,
        done=done,
        on_progress=on_progress,
    )
    runtime.on_tick = recorder.on_tick
    interrupted = asyncio.Event()
    remove = _signal_handlers(controller, done, interrupted) if handle_signals else _nothing
    period = rack.control_period_s
    try:
        await daemon.start()
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=period)
            stalled = time.monotonic() - recorder.last_tick
            if not done.is_set() and stalled > max(10.0 * period, 2.0):
                controller.hand_back(f"the control tick has not run for {stalled:.1f} s")
                done.set()
        if controller.abort_reason is not None and not interrupted.is_set():
            # the PID loops hold the rack for a while: no actuator is left where the test was
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    interrupted.wait(), timeout=settings.handback_s / settings.time_scale
                )
    finally:
        remove()
        await daemon.stop(hand_back=True)
    plan = controller.plan
    data = None
    if controller.finished and plan is not None:
        data = recorder.data(period, plan.settle_samples)
    return LiveResult(
        rack=rack_id,
        finished=controller.finished,
        reason=controller.abort_reason,
        data=data,
        signals=signals,
        samples=recorder.samples,
        missed=recorder.missed,
        interrupted=interrupted.is_set(),
    )


class StepTestFactory:
    """The daemon's controller factory for the rack under test: the rack's own PID stack and
    supervisor, with a `StepTestController` (over those PID loops) as its controller, and no
    allocator unless asked (a daemon in manual mode keeps the caps). StepTestRefused when the
    rack has no pump or valve the test may step."""

    def __init__(self, settings: LiveTestSettings, with_allocator: bool) -> None:
        self.settings = settings
        self.with_allocator = with_allocator
        self._built: dict[str, tuple[StepTestController, RackSignals]] = {}

    def built(self, rack: str) -> tuple[StepTestController, RackSignals]:
        """The controller built for `rack`, and the signals it records."""
        return self._built[rack]

    def __call__(self, rack: RackConfig, devices: Mapping[str, DeviceFacts]) -> RackControl:
        try:
            signals = rack_signals(rack, devices)
        except ValueError as exc:  # the MPC finds no CDU to drive (coolctl.rack.mpc)
            raise StepTestRefused(str(exc)) from exc
        pid = build_pid_control(rack, devices)
        supervisor = pid.supervisor.config
        # the pump and valve the rack's MPC will drive, as the supervisor knows them
        by_point = {a.point: a for a in supervisor.actuators}
        wanted = (signals.mpc_rack.pump, signals.mpc_rack.valve)
        pump, valve = (None if p is None else by_point.get(p) for p in wanted)
        if pump is None or valve is None:
            shown = ", ".join(str(p) for p in wanted if p is not None and p not in by_point)
            raise StepTestRefused(
                f"rack {rack.id}: the MPC would drive {shown or 'a valve'} but no loop of the"
                " rack does; the test moves only what a loop's bounds and slew govern"
            )
        controller = StepTestController(
            pid.controller,
            pump,
            valve,
            rack.control_period_s,
            self.settings,
            supervisor.temperature_limits,
        )
        self._built[rack.id] = (controller, signals)
        allocator = pid.allocator if self.with_allocator else None
        return RackControl(controller, allocator, pid.supervisor)


async def _preflight(daemon: Daemon, runtime: RackRuntime, signals: RackSignals) -> None:
    """Poll the polled devices once: every reading the supervisor requires and every signal
    the test records must be good before anything is written."""
    polled = [h for h in daemon.devices.values() if not isinstance(h.config, MqttDeviceConfig)]
    results = await asyncio.gather(*(h.client.poll() for h in polled), return_exceptions=True)
    for handle, result in zip(polled, results, strict=True):
        if isinstance(result, BaseException):
            raise RackUnreachable(f"{handle.rack}/{handle.config.id}: {result}") from result
        daemon.store.update(result)
    now = daemon.clock()
    snapshot = daemon.store.snapshot(now, runtime.config.id)
    polled_devices = {h.config.id for h in polled}
    unreadable = [
        str(point)
        for point in runtime.supervisor.config.required
        if point.device in polled_devices and snapshot.value(point) is None
    ]
    mpc_rack = signals.mpc_rack
    for name in signals.recorded:
        source = mpc_rack.signals.get(name)
        if source is None:
            continue
        for point in source.points:
            if point.device in polled_devices and snapshot.value(point) is None:
                unreadable.append(str(point))
    if unreadable:
        raise RackUnreachable(
            "no good reading of " + ", ".join(sorted(set(unreadable))) + "; nothing was written"
        )


def _nothing() -> None:
    return None


def _signal_handlers(
    controller: StepTestController, done: asyncio.Event, interrupted: asyncio.Event
) -> Callable[[], None]:
    """SIGINT and SIGTERM stop the test cleanly (hand back, then stop as the daemon does); a
    second one cuts the PID loops' hold short."""
    if threading.current_thread() is not threading.main_thread():
        return _nothing
    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        if controller.handed_back:
            interrupted.set()
            return
        controller.hand_back(f"interrupted by {signal.Signals(signum).name}")
        done.set()

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop, signum)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        installed.append(signum)

    def remove() -> None:
        for signum in installed:
            loop.remove_signal_handler(signum)

    return remove


# -- is a daemon driving the rack? -------------------------------------------------------------


async def daemon_mode(socket_path: Path, rack: str) -> str | None:
    """What a coolctl daemon answering on `socket_path` does with `rack`: None when no daemon
    answers there or it does not run the rack, "manual" when it runs the rack in manual mode
    with no override on the pump or the valve. StepTestRefused when it drives the rack (the
    test and the daemon would fight over the pump), or when it cannot be asked.

    Only the control socket is asked: a daemon started without one is not seen (the README and
    `--help` say to stop the daemon first).
    """
    from coolctl.ops.client import ClientError, ControlClient, Unreachable

    how = f"stop it (systemctl stop coolctl) or put the rack in manual mode (coolctl mode {rack}"
    how += " manual --reason ...) first"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket_path)), 2.0)
    except (FileNotFoundError, ConnectionRefusedError):
        return None  # no daemon (a socket file left behind by one that died refuses)
    except (OSError, TimeoutError) as exc:
        raise StepTestRefused(
            f"cannot tell whether a coolctl daemon drives rack {rack}: {socket_path}:"
            f" {getattr(exc, 'strerror', None) or exc or type(exc).__name__}; give the daemon's"
            " --socket, or --force once you know no daemon drives the rack"
        ) from exc
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    try:
        async with ControlClient(socket_path=socket_path, timeout_s=5.0) as client:
            status = await client.status()
    except (ClientError, Unreachable) as exc:
        raise StepTestRefused(
            f"a coolctl daemon listens on {socket_path} but did not say whether it drives rack"
            f" {rack} ({exc}); {how}, or use --force"
        ) from exc
    racks = status.get("racks")
    entry = (
        next(
            (r for r in racks if isinstance(r, dict) and r.get("rack") == rack),
            None,
        )
        if isinstance(racks, list)
        else None
    )
    if entry is None:
        return None
    if entry.get("mode") != "manual":
        raise StepTestRefused(
            f"a coolctl daemon ({socket_path}) runs rack {rack} in {entry.get('mode')} mode; {how}"
        )
    overrides = entry.get("overrides")
    held = [
        str(o.get("target"))
        for o in (overrides if isinstance(overrides, list) else [])
        if isinstance(o, dict)
        and str(o.get("target", "")).rsplit("/", 1)[-1] in (PUMP_POINT, VALVE_POINT)
    ]
    if held:
        raise StepTestRefused(
            f"rack {rack} is in manual mode but the daemon ({socket_path}) holds overrides on"
            f" {', '.join(held)}; clear them (coolctl override clear ...) first"
        )
    return "manual"


# -- fitting -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveFit:
    """The model and what the operator must know about how it was made."""

    model: IdentifiedModel
    left_out: Mapping[str, str]  # disturbance: why it is not in the model
    missing: tuple[str, ...]  # model signals the rack has no points for
    short_record: bool


def fit_live(result: LiveResult, settings: LiveTestSettings, config_path: Path | None) -> LiveFit:
    """Fit the model to a finished test's record (ValueError if the fit fails)."""
    data = result.data
    if data is None:
        raise ValueError("the test did not finish: there is nothing to fit")
    signals = result.signals
    disturbances, left_out = excited(data, signals.disturbances)
    short = data.samples < SHORT_RECORD_SAMPLES
    fit_settings = IdentifySettings(denominator_orders=(1,)) if short else IdentifySettings()
    source: dict[str, str | int | float | bool] = {
        "kind": "live",
        "rack": result.rack,
        "duration_s": settings.duration_s,
        "time_scale": settings.time_scale,
        "period_s": data.dt_s,
        "seed": settings.seed,
        "pump_step": settings.pump_step,
        "valve_step": settings.valve_step,
        "samples": data.samples,
        "missed_samples": result.missed,
        "first_order_only": short,
    }
    if config_path is not None:
        source["config"] = str(config_path)
    if left_out:
        source["left_out"] = ", ".join(sorted(left_out))
    if signals.missing:
        source["missing"] = ", ".join(signals.missing)
    model = identify(
        data,
        disturbances=disturbances,
        outputs=signals.outputs,
        settings=fit_settings,
        source=source,
    )
    return LiveFit(model, left_out, signals.missing, short)


MODEL_SIGNAL_LABELS: Mapping[str, str] = {
    SUPPLY: "supply temperature",
    RETURN: "return temperature",
    FLOW: "flow",
    OUTLET_MAX: "hottest server coolant outlet",
    CHIP_MAX: "hottest chip",
    IT_POWER: "IT power",
    FACILITY_WATER: "facility water temperature",
}
