"""A rack's PID loops: each holds one measured variable by moving one actuator.

Pure and deterministic: `step(snapshot, now)` gives the same commands for the same inputs, so
the offline scenario runner and the live daemon run this very code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise

from coolctl.control.delay import DelayLine
from coolctl.control.pid import Pid, PidConfig
from coolctl.model import Command, Event, PointId, Severity, Snapshot, Source


class LoopMode(StrEnum):
    """What a loop is doing this tick; exported one series per state."""

    AUTO = "auto"
    BLIND = "blind"  # a reading it needs is not good: it asks for nothing (the supervisor holds,
    # then goes to failsafe)
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class FeedForward:
    """Output added per watt of measured IT power, seen through a dead time and then a
    first-order lag: a load step reaches the actuator before the temperature it causes reaches
    the sensor, and no sooner than its heat reaches the exchanger (a valve opened for heat still
    in the return pipe undercools the supply, and the loop's integral then overshoots)."""

    points: tuple[PointId, ...]  # summed: a PDU's power, or every server's
    gain_per_w: float  # output per watt, sign included (the supply valve opens: positive)
    lag_s: float = 0.0  # 0: no lag
    delay_s: float = 0.0  # dead time before the lag (the return pipe's transit); 0: none


@dataclass(frozen=True, slots=True)
class ChipBoost:
    """A cascade on the chips: while the hottest of `points` is above `above_c`, the loop's
    setpoint moves toward `boosted` (the flow loop's up, the supply loop's down).

    The PID loops hold flow and supply temperature, not the chips; with the servers' spread a
    load step took the hottest chip to the throttle at a flow and supply that were on target.
    The boost is a fraction 0..1 of the way from the setpoint to `boosted`: proportional
    (`kp_per_k` per K over `above_c`) plus an integral (`ki_per_k_s`), both clamped to 0..1,
    so it comes in quickly on a step and goes back slowly as the chips cool."""

    points: tuple[PointId, ...]  # every server's chip temperature
    above_c: float
    boosted: float  # the setpoint at full boost
    kp_per_k: float = 0.3
    ki_per_k_s: float = 0.01
    # feedforward from the rack's power (summed `power_points`): none at `from_w`, full at
    # `full_w`, in between in proportion; the boost in force is the larger of the two. A rack
    # without BMCs has no chips to read, and a load step reaches the PDU before the chips.
    power_points: tuple[PointId, ...] = ()
    from_w: float = math.inf
    full_w: float = math.inf
    power_lag_s: float = 20.0  # the power seen through a lag: more flow at once would bring
    # the load step's hot return to the exchanger before the valve has opened for it


@dataclass(frozen=True, slots=True)
class GainSchedule:
    """The loop's gains scaled by where the plant stands: `multipliers[i]` at `at[i]` of
    `point` (e.g. the secondary flow), linear in between, the end values beyond the ends.

    Why: the supply loop's plant changes with the flow it has to cool. The chip boost moves the
    demo rack's flow from 160 to 200 L/min on a load step, and the gains tuned at one flow are
    wrong at the other. While `point` does not read good the last multiplier holds (a lost
    flow meter must not retune the loop)."""

    point: PointId
    at: tuple[float, ...]  # increasing
    multipliers: tuple[float, ...]  # >= 0, one per `at`

    def __post_init__(self) -> None:
        if len(self.at) != len(self.multipliers) or not self.at:
            raise ValueError("a gain schedule needs as many multipliers as points, at least one")
        if any(b <= a for a, b in pairwise(self.at)):
            raise ValueError(f"gain schedule points must increase, got {self.at!r}")
        if any(not (math.isfinite(m) and m >= 0.0) for m in self.multipliers):
            raise ValueError(f"gain multipliers must be finite and >= 0, got {self.multipliers!r}")
        if any(not math.isfinite(a) for a in self.at):
            raise ValueError(f"gain schedule points must be finite, got {self.at!r}")

    def multiplier(self, value: float) -> float:
        """The multiplier at `value`: piecewise linear, flat beyond the ends."""
        at, m = self.at, self.multipliers
        if value <= at[0]:
            return m[0]
        for i in range(1, len(at)):
            if value <= at[i]:
                share = (value - at[i - 1]) / (at[i] - at[i - 1])
                return m[i - 1] + share * (m[i] - m[i - 1])
        return m[-1]


@dataclass(frozen=True, slots=True)
class LoopSpec:
    """What one loop holds, and with what."""

    name: str
    measurement: PointId
    actuator: PointId
    setpoint: float
    pid: PidConfig
    measurement_subtrahend: PointId | None = None  # set for a difference, e.g. coolant ΔT
    enabled: bool = True
    feedforward: FeedForward | None = None
    boost: ChipBoost | None = None
    schedule: GainSchedule | None = None

    @property
    def inputs(self) -> tuple[PointId, ...]:
        extra = (self.measurement_subtrahend,) if self.measurement_subtrahend else ()
        return (self.measurement, *extra)

    def describe_measurement(self) -> str:
        if self.measurement_subtrahend is None:
            return str(self.measurement)
        return f"{self.measurement} - {self.measurement_subtrahend}"


@dataclass(frozen=True, slots=True)
class LoopState:
    """What a loop saw and asked for at its last step, for metrics and status."""

    mode: LoopMode
    setpoint: float
    measurement: float | None
    output: float | None
    reason: str


class PidLoop:
    """One PID loop. When its inputs are not good it asks for nothing and says why: what the
    actuator does then (hold, failsafe) is the safety supervisor's decision, not the loop's."""

    def __init__(self, spec: LoopSpec) -> None:
        self.spec = spec
        self.pid = Pid(spec.pid)
        self.setpoint_override: float | None = None
        self.state = LoopState(LoopMode.DISABLED, spec.setpoint, None, None, "not run yet")
        self._ff_power_w: float | None = None  # the feedforward's power, after its lag
        self._ff_at: float | None = None
        self._ff_delayed = DelayLine(spec.feedforward.delay_s if spec.feedforward else 0.0)
        self.boost_fraction = 0.0  # the chip boost in force, 0..1 (see ChipBoost)
        self._chip_fraction = 0.0
        self._power_fraction = 0.0
        self._power_at: float | None = None
        self._boost_integral = 0.0
        self._boost_at: float | None = None
        self.gain_scale = 1.0  # the gain schedule's multiplier in force (see GainSchedule)

    @property
    def setpoint(self) -> float:
        """The setpoint in force: an operator's override, or the configured one, moved by the
        chip boost (if any)."""
        base = self.spec.setpoint if self.setpoint_override is None else self.setpoint_override
        boost = self.spec.boost
        if boost is None or self.boost_fraction <= 0.0:
            return base
        return base + self.boost_fraction * (boost.boosted - base)

    def _step_boost(self, snapshot: Snapshot, now: float) -> None:
        """Update the chip boost from the hottest chip that reads good (none: hold)."""
        boost = self.spec.boost
        if boost is None:
            return
        values = [snapshot.value(point) for point in boost.points]
        known = [v for v in values if v is not None]
        last, self._boost_at = self._boost_at, now
        chips = self._chip_fraction
        if known:
            error = max(known) - boost.above_c
            dt_s = 0.0 if last is None else max(0.0, now - last)
            integral = self._boost_integral + boost.ki_per_k_s * error * dt_s
            self._boost_integral = min(1.0, max(0.0, integral))
            chips = min(1.0, max(0.0, boost.kp_per_k * error + self._boost_integral))
            self._chip_fraction = chips
        power = self._power_fraction
        watts = [snapshot.value(point) for point in boost.power_points]
        if watts and all(w is not None for w in watts) and boost.full_w > boost.from_w:
            total = sum(w for w in watts if w is not None)
            target = min(1.0, max(0.0, (total - boost.from_w) / (boost.full_w - boost.from_w)))
            if self._power_at is None or boost.power_lag_s <= 0.0:
                power = target
            else:
                dt_s = max(0.0, now - self._power_at)
                power += dt_s / (boost.power_lag_s + dt_s) * (target - power)
            self._power_at = now
            self._power_fraction = power
        self.boost_fraction = max(chips, power)  # a reading not good: its share holds

    def step(self, snapshot: Snapshot, now: float) -> list[Command]:
        spec = self.spec
        self._step_boost(snapshot, now)
        setpoint = self.setpoint
        if not spec.enabled:
            self.state = LoopState(LoopMode.DISABLED, setpoint, None, None, "disabled")
            return []
        measured = self._measure(snapshot)
        if isinstance(measured, str):
            return self._blind(measured)
        if self.pid.output is None:
            self._start_from_actuator(snapshot, measured, now)
        feedforward = self._feedforward(snapshot, now)
        self._step_schedule(snapshot)
        try:
            output = self.pid.update(setpoint, measured, now, feedforward, self.gain_scale)
        except ValueError as exc:
            return self._blind(f"{spec.name}: PID refused its inputs: {exc}")
        reason = (
            f"{spec.name}: {spec.describe_measurement()} = {measured:.4g}, setpoint {setpoint:.4g}"
        )
        self.state = LoopState(LoopMode.AUTO, setpoint, measured, output, reason)
        return [Command(spec.actuator, output, Source.AUTO, reason)]

    def applied(self, value: float, now: float) -> None:
        """The actuator now holds `value` (clamped, overridden, interlocked, failsafe): track it,
        so that when the loop is in charge again it starts from there, bumplessly."""
        output = self.pid.output
        if output is None or abs(output - value) > 1e-12:
            self.pid.track(value, now, self.state.measurement)

    def follow(self, value: float, snapshot: Snapshot, now: float, why: str) -> None:
        """Another controller (the MPC, a step test) drives this loop's actuator to `value`:
        track it, so that the loop takes over bumplessly when that controller stands down."""
        spec = self.spec
        self._step_boost(snapshot, now)
        measured = self._measure(snapshot)
        measurement = None if isinstance(measured, str) else measured
        self.pid.track(value, now, measurement)
        mode = LoopMode.AUTO if spec.enabled else LoopMode.DISABLED
        self.state = LoopState(mode, self.setpoint, measurement, value, f"{spec.name}: {why}")

    def _start_from_actuator(self, snapshot: Snapshot, measured: float, now: float) -> None:
        """Bumpless start: take over from wherever the device's setpoint stands now.

        After a restart the PID begins from the actuator's current value (when the device
        reports it), so that a daemon restart never kicks the pump or the valve.
        """
        current = snapshot.value(self.spec.actuator)
        if current is not None:
            self.pid.track(current, now, measured)

    def _feedforward(self, snapshot: Snapshot, now: float) -> float:
        """The feedforward term: gain × the sum of its power points, delayed, then lagged.
        While a point is not good the last lagged power holds (a lost PDU must not kick the
        actuator)."""
        ff = self.spec.feedforward
        if ff is None:
            return 0.0
        values = [snapshot.value(point) for point in ff.points]
        known = [value for value in values if value is not None]
        if len(known) == len(values):
            self._ff_delayed.push(now, sum(known))
            total = self._ff_delayed.at(now)
            assert total is not None  # a sample was just pushed
            previous, last_at = self._ff_power_w, self._ff_at
            if previous is None or last_at is None or ff.lag_s <= 0.0:
                self._ff_power_w = total
            else:
                dt_s = max(0.0, now - last_at)
                self._ff_power_w = previous + dt_s / (ff.lag_s + dt_s) * (total - previous)
            self._ff_at = now
        power = self._ff_power_w
        return 0.0 if power is None else ff.gain_per_w * power

    def _step_schedule(self, snapshot: Snapshot) -> None:
        """The gain schedule's multiplier from its point; not good: the last one holds."""
        schedule = self.spec.schedule
        if schedule is None:
            return
        value = snapshot.value(schedule.point)
        if value is not None:
            self.gain_scale = schedule.multiplier(value)

    def _measure(self, snapshot: Snapshot) -> float | str:
        """The measured variable, or a reason why it cannot be had."""
        values = []
        for point in self.spec.inputs:
            value = snapshot.value(point)
            if value is None:
                reading = snapshot.get(point)
                quality = reading.quality.value if reading is not None else "missing"
                return f"{self.spec.name}: {point} is {quality}"
            values.append(value)
        return values[0] - values[1] if len(values) == 2 else values[0]

    def _blind(self, reason: str) -> list[Command]:
        self.state = LoopState(LoopMode.BLIND, self.setpoint, None, self.pid.output, reason)
        return []


class RackController:
    """All loops of one rack, stepped together once per control period."""

    def __init__(self, rack: str, loops: Iterable[LoopSpec]) -> None:
        self.rack = rack
        self.loops: dict[str, PidLoop] = {spec.name: PidLoop(spec) for spec in loops}
        self._by_actuator: Mapping[PointId, PidLoop] = {
            loop.spec.actuator: loop for loop in self.loops.values()
        }

    @property
    def inputs(self) -> Sequence[PointId]:
        return [point for loop in self.loops.values() for point in loop.spec.inputs]

    def step(self, snapshot: Snapshot, now: float) -> list[Command]:
        commands: list[Command] = []
        for loop in self.loops.values():
            commands.extend(loop.step(snapshot, now))
        return commands

    def step_except(
        self, snapshot: Snapshot, now: float, driven: Mapping[PointId, float], why: str
    ) -> list[Command]:
        """Step the loops whose actuators `driven` leaves alone; the others follow the value
        another controller sends their actuator (see `PidLoop.follow`)."""
        commands: list[Command] = []
        for loop in self.loops.values():
            value = driven.get(loop.spec.actuator)
            if value is None:
                commands.extend(loop.step(snapshot, now))
            else:
                loop.follow(value, snapshot, now, why)
        return commands

    def applied(self, actuator: PointId, value: float, now: float) -> None:
        loop = self._by_actuator.get(actuator)
        if loop is not None:
            loop.applied(value, now)

    def loop_of(self, actuator: PointId) -> PidLoop | None:
        return self._by_actuator.get(actuator)


class SaturationWatch:
    """An alarm for a loop pinned at the top of its range and still short of its setpoint for
    `after_s`: the actuator cannot deliver (a worn pump short of its flow, a valve without the
    authority for its temperature). One event when it starts, one when it ends."""

    def __init__(self, rack: str, after_s: float = 120.0, tolerance: float = 0.02) -> None:
        self.rack = rack
        self.after_s = after_s
        self.tolerance = tolerance  # of the setpoint's magnitude: "short" means beyond this
        self._since: dict[str, float] = {}
        self._alarmed: set[str] = set()

    def step(self, loops: Mapping[str, PidLoop], now: float) -> list[Event]:
        events: list[Event] = []
        for name, loop in loops.items():
            short = self._pinned_short(loop)
            if not short:
                self._since.pop(name, None)
                if name in self._alarmed:
                    self._alarmed.discard(name)
                    message = f"loop {name} has its setpoint again (or is no longer at its top)"
                    events.append(
                        Event(self.rack, "loop_saturation_cleared", Severity.INFO, message, now)
                    )
                continue
            since = self._since.setdefault(name, now)
            if name not in self._alarmed and now - since >= self.after_s:
                self._alarmed.add(name)
                state = loop.state
                message = (
                    f"loop {name} pinned at its maximum ({loop.spec.actuator.name}"
                    f" {state.output:.4g}) for {now - since:.0f} s and still short of its"
                    f" setpoint ({state.measurement:.4g} for {state.setpoint:.4g}): the"
                    " actuator cannot deliver (a worn pump? a valve without authority?)"
                )
                events.append(Event(self.rack, "loop_saturated", Severity.WARNING, message, now))
        return events

    def _pinned_short(self, loop: PidLoop) -> bool:
        state = loop.state
        if state.mode is not LoopMode.AUTO or state.output is None or state.measurement is None:
            return False
        pid = loop.spec.pid
        if state.output < pid.output_max - 1e-9:
            return False
        sign = 1.0 if pid.action == "reverse" else -1.0
        wanting = sign * (state.setpoint - state.measurement)
        return wanting > max(self.tolerance * abs(state.setpoint), pid.deadband)
