"""A rack's PID loops: each holds one measured variable by moving one actuator.

Pure and deterministic: `step(snapshot, now)` gives the same commands for the same inputs, so
the offline scenario runner and the live daemon run this very code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from coolctl.control.pid import Pid, PidConfig
from coolctl.model import Command, PointId, Snapshot, Source


class LoopMode(StrEnum):
    """What a loop is doing this tick; exported one series per state."""

    AUTO = "auto"
    FAILSAFE = "failsafe"  # a reading it needs is not good: the actuator goes to its safe output
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class LoopSpec:
    """What one loop holds, with what, and where to go when it cannot see."""

    name: str
    measurement: PointId
    actuator: PointId
    setpoint: float
    pid: PidConfig
    failsafe_output: float
    measurement_subtrahend: PointId | None = None  # set for a difference, e.g. coolant ΔT
    enabled: bool = True

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
    """One PID loop with its failsafe: when its inputs are not good it commands the safe output."""

    def __init__(self, spec: LoopSpec) -> None:
        self.spec = spec
        self.pid = Pid(spec.pid)
        self.state = LoopState(LoopMode.DISABLED, spec.setpoint, None, None, "not run yet")

    def step(self, snapshot: Snapshot, now: float) -> list[Command]:
        spec = self.spec
        if not spec.enabled:
            self.state = LoopState(LoopMode.DISABLED, spec.setpoint, None, None, "disabled")
            return []
        measured = self._measure(snapshot)
        if isinstance(measured, str):
            return [self._failsafe(measured, now)]
        if self.pid.output is None:
            self._start_from_actuator(snapshot, measured, now)
        try:
            output = self.pid.update(spec.setpoint, measured, now)
        except ValueError as exc:
            return [self._failsafe(f"PID refused its inputs: {exc}", now)]
        reason = (
            f"{spec.name}: {spec.describe_measurement()} = {measured:.4g},"
            f" setpoint {spec.setpoint:.4g}"
        )
        self.state = LoopState(LoopMode.AUTO, spec.setpoint, measured, output, reason)
        return [Command(spec.actuator, output, Source.AUTO, reason)]

    def applied(self, value: float, now: float) -> None:
        """The actuator now holds `value` (after clamping): keep the integrator consistent."""
        state = self.state
        output = self.pid.output
        if state.mode is LoopMode.AUTO and output is not None and abs(output - value) > 1e-12:
            self.pid.track(value, now, state.measurement)

    def _start_from_actuator(self, snapshot: Snapshot, measured: float, now: float) -> None:
        """Bumpless start: take over from wherever the device's setpoint stands now.

        After a restart the PID begins from the actuator's current value (when the device
        reports it), so that a daemon restart never kicks the pump or the valve.
        """
        current = snapshot.value(self.spec.actuator)
        if current is not None:
            self.pid.track(current, now, measured)

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

    def _failsafe(self, reason: str, now: float) -> Command:
        output = self.spec.failsafe_output
        self.pid.track(output, now)
        self.state = LoopState(LoopMode.FAILSAFE, self.spec.setpoint, None, output, reason)
        return Command(self.spec.actuator, output, Source.FAILSAFE, f"{reason}; failsafe output")


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

    def applied(self, actuator: PointId, value: float, now: float) -> None:
        loop = self._by_actuator.get(actuator)
        if loop is not None:
            loop.applied(value, now)
