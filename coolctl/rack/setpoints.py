"""Setpoint mode (`cdu_control = "setpoints"`): a CDU that runs its own loops, driven through
its setpoints, run command and mode, with the supervisor keeping the last word.

Nothing here decides safety on its own. It translates the rack's config into what the pure
supervisor (`coolctl.control.supervisor`) already knows how to enforce: each CDU setpoint,
the run command and the mode become supervised actuators whose interlock and failsafe values
say, in setpoints, what the supervisor's responses mean:

| supervisor decision | direct mode               | setpoint mode                                  |
|---------------------|---------------------------|------------------------------------------------|
| leak, low level     | pump stopped (or slowed)  | `cdu_run_command` = 0: the CDU stops its pumps |
|                     |                           | (no run command: `cdu_control_mode` = stopped) |
| stop_on_alarms      | —                         | as a leak: caps first, then the CDU stopped    |
| over-temperature    | pump and valve at maximum | lowest supply, highest flow/ΔP setpoint        |
| pump failure        | caps down                 | caps down (the CDU's `pump_running` reads 0)   |
| failsafe (blind)    | failsafe outputs          | the configured safe setpoints, CDU in auto     |
| shutdown            | hand-back outputs         | nothing: the CDU keeps running its loops       |

Failsafe writes safe setpoints rather than handing the CDU back to its local control: a CDU
handed back runs on whatever its panel last held, which coolctl cannot see or vouch for, and
taking it back needs the panel or a write the CDU may refuse; a blind rack manager that keeps
the CDU in remote auto on known, conservative setpoints leaves the CDU's own loops to hold the
loop on targets the site chose.

Every command, the supply setpoint's among them, goes through the supervisor, so whatever
floor it keeps on `supply_temperature_setpoint` (facility water, dew point) holds here too.

The automatic requests are plain: each tick the configured setpoints, run = 1 and the mode of
the pump's target (flow → AUTO_FLOW, ΔP → AUTO_PRESSURE). Operators move a setpoint by
overriding its point (`coolctl override set r01 cdu1/supply_temperature_setpoint 33`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from coolctl.config import CduControl, LoopConfig, RackConfig
from coolctl.control.loops import PidLoop
from coolctl.control.supervisor import (
    ActuatorRole,
    ActuatorSafety,
    Supervisor,
    SupervisorConfig,
)
from coolctl.model import CduControlMode, Command, PointId, Snapshot, Source
from coolctl.rack.facts import WritableSpec
from coolctl.rack.safety import DeviceFacts, safety_sensors, supervisor_config, temperature_limits
from coolctl.rack.stack import (
    RackControl,
    ThermalCappedAllocator,
    allocator,
    it_power_points,
    thermal_cap_loop,
)

SETPOINT_OF: Mapping[str, str] = {
    "supply_temperature": "supply_temperature_setpoint",
    "flow": "flow_setpoint",
    "differential_pressure": "differential_pressure_setpoint",
}
"""A CDU loop's measurement → the CDU setpoint that carries its target in setpoint mode."""

MODE_OF: Mapping[str, CduControlMode] = {
    "flow_setpoint": CduControlMode.AUTO_FLOW,
    "differential_pressure_setpoint": CduControlMode.AUTO_PRESSURE,
}
"""The pump's target → the mode that makes the CDU's pump loop follow it."""

CDU_ACTUATORS: frozenset[str] = frozenset({"pump_speed_command", "valve_command"})
RUN = "cdu_run_command"
MODE = "cdu_control_mode"


@dataclass(frozen=True, slots=True)
class SetpointTarget:
    """One CDU setpoint coolctl writes: its value, its bounds and its failsafe value."""

    point: PointId
    value: float
    minimum: float
    maximum: float
    hard_minimum: float
    hard_maximum: float
    failsafe: float
    loop: str  # the loop of the config it comes from


@dataclass(frozen=True, slots=True)
class SetpointPlan:
    """What coolctl writes to a rack's CDU in setpoint mode."""

    device: str
    targets: tuple[SetpointTarget, ...]
    run: PointId | None  # None: the CDU has no run command; its mode's "stopped" stops it
    mode: PointId | None  # None: the CDU has no mode point (it stays in its own)
    mode_code: CduControlMode


def cdu_loops(rack: RackConfig) -> list[LoopConfig]:
    """The rack's loops that drive a CDU's pump or valve directly (direct mode)."""
    return [loop for loop in rack.loops.values() if loop.actuator.point in CDU_ACTUATORS]


def setpoint_plan(rack: RackConfig, devices: Mapping[str, DeviceFacts]) -> SetpointPlan:
    """The CDU, its setpoints and their bounds, from the rack's CDU loops and the CDU's
    profile. ValueError, naming what is missing, when they do not fit."""
    loops = cdu_loops(rack)
    if not loops:
        raise ValueError(
            f'rack {rack.id}: cdu_control = "setpoints" takes its setpoints from the loops on'
            " a CDU's pump_speed_command or valve_command, and there are none"
        )
    cdus = {loop.actuator.device for loop in loops}
    if len(cdus) != 1:
        raise ValueError(f"rack {rack.id}: the CDU loops drive several CDUs ({sorted(cdus)})")
    device = cdus.pop()
    facts = devices[device]
    targets: list[SetpointTarget] = []
    for loop in loops:
        measured = loop.measurement.minuend.point
        name = SETPOINT_OF.get(measured)
        if name is None or loop.measurement.subtrahend is not None:
            raise ValueError(
                f"rack {rack.id}: loop {loop.id} holds {loop.measurement}; in setpoint mode a CDU"
                f" loop holds one of {', '.join(SETPOINT_OF)}"
            )
        spec = facts.writable.get(name)
        if spec is None:
            raise ValueError(
                f"rack {rack.id}: loop {loop.id} needs {device}/{name} writable in the CDU's"
                " profile for setpoint mode"
            )
        targets.append(_target(rack, device, loop, name, spec))
    pump_targets = [t for t in targets if t.point.name in MODE_OF]
    if len(pump_targets) > 1:
        raise ValueError(f"rack {rack.id}: the CDU's pump follows one target, flow or ΔP")
    mode_code = MODE_OF[pump_targets[0].point.name] if pump_targets else CduControlMode.AUTO_FLOW
    mode_spec = facts.writable.get(MODE)
    if mode_spec is not None and not mode_spec.takes(mode_code):
        raise ValueError(
            f"rack {rack.id}: {device}/{MODE} has no state {mode_code.name.lower()} in its"
            " profile, the mode its pump target needs"
        )
    has_run = RUN in facts.writable
    if not has_run and (mode_spec is None or not mode_spec.takes(CduControlMode.STOPPED)):
        # A CDU whose control word carries the stop (the ORv3 RPU's System_Stop) is stopped
        # by writing that mode; one with neither could not be stopped on a leak.
        raise ValueError(
            f"rack {rack.id}: setpoint mode needs {device}/{RUN} writable in its profile, or a"
            f' writable {MODE} with a "stopped" state: how a leak stops the CDU'
        )
    return SetpointPlan(
        device=device,
        targets=tuple(targets),
        run=PointId(rack.id, device, RUN) if has_run else None,
        mode=PointId(rack.id, device, MODE) if mode_spec is not None else None,
        mode_code=mode_code,
    )


def needs_writable_actuator(rack: RackConfig, loop: LoopConfig) -> bool:
    """Whether a loop's actuator must be writable on its device. In setpoint mode a CDU loop's
    pump or valve only names the loop: coolctl writes the CDU's setpoint for it instead, and a
    CDU that takes only setpoints (most commercial ones) has no pump or valve command at all."""
    return not (setpoint_mode(rack) and loop.actuator.point in CDU_ACTUATORS)


def _target(
    rack: RackConfig, device: str, loop: LoopConfig, name: str, spec: WritableSpec
) -> SetpointTarget:
    hard_low, hard_high = spec.minimum, spec.maximum
    low = max(hard_low, loop.setpoint_min if loop.setpoint_min is not None else hard_low)
    high = min(hard_high, loop.setpoint_max if loop.setpoint_max is not None else hard_high)
    if not (math.isfinite(low) and math.isfinite(high) and low <= loop.setpoint <= high):
        raise ValueError(
            f"rack {rack.id}: loop {loop.id}'s setpoint {loop.setpoint:g} does not fit"
            f" {device}/{name}'s range {low:g}..{high:g} (profile min/max, setpoint_min/max)"
        )
    cdu = rack.cdu
    configured = {
        "supply_temperature_setpoint": cdu.failsafe_supply_temperature_c,
        "flow_setpoint": cdu.failsafe_flow_lpm,
        "differential_pressure_setpoint": cdu.failsafe_differential_pressure_pa,
    }[name]
    failsafe = loop.setpoint if configured is None else configured
    if not hard_low <= failsafe <= hard_high:
        raise ValueError(
            f"rack {rack.id}: failsafe {name} {failsafe:g} outside {hard_low:g}..{hard_high:g}"
        )
    return SetpointTarget(
        point=PointId(rack.id, device, name),
        value=loop.setpoint,
        minimum=low,
        maximum=high,
        hard_minimum=hard_low,
        hard_maximum=hard_high,
        failsafe=failsafe,
        loop=loop.id,
    )


def setpoint_actuators(plan: SetpointPlan) -> tuple[ActuatorSafety, ...]:
    """The supervised actuators of setpoint mode; see the table in the module docstring."""
    actuators = [_setpoint_actuator(target) for target in plan.targets]
    if plan.run is not None:
        actuators.append(
            ActuatorSafety(
                point=plan.run,
                role=ActuatorRole.PUMP,  # 0 stops the CDU's pumps: the supervisor's pump response
                minimum=0.0,
                maximum=1.0,
                slew_per_s=None,
                failsafe=1.0,
                hard_minimum=0.0,
                hard_maximum=1.0,
                on_leak=0.0,
                on_over_temperature=1.0,
                on_low_level=0.0,
                shutdown=None,
            )
        )
    if plan.mode is not None:
        code = float(plan.mode_code)
        stopped = float(CduControlMode.STOPPED)
        # Without a run command the mode is the pump actuator: "stopped" (code 0) is its stop,
        # as 0 is a run command's, so the supervisor's leak and low-level responses stop it.
        carries_stop = plan.run is None
        actuators.append(
            ActuatorSafety(
                point=plan.mode,
                role=ActuatorRole.PUMP if carries_stop else ActuatorRole.SETPOINT,
                minimum=code,
                maximum=code,
                slew_per_s=None,
                failsafe=code,  # a blind rack keeps the CDU in remote auto (see above)
                hard_minimum=stopped if carries_stop else code,
                hard_maximum=code,
                on_leak=stopped if carries_stop else None,
                on_over_temperature=code if carries_stop else None,
                on_low_level=stopped if carries_stop else None,
                shutdown=None,
            )
        )
    return tuple(actuators)


def _setpoint_actuator(target: SetpointTarget) -> ActuatorSafety:
    # over-temperature: the coldest supply and the most flow (or ΔP) the bounds allow
    hot = target.minimum if target.point.name == "supply_temperature_setpoint" else target.maximum
    return ActuatorSafety(
        point=target.point,
        role=ActuatorRole.SETPOINT,
        minimum=target.minimum,
        maximum=target.maximum,
        slew_per_s=None,
        failsafe=target.failsafe,
        hard_minimum=target.hard_minimum,
        hard_maximum=target.hard_maximum,
        on_over_temperature=hot,
        shutdown=None,  # the CDU keeps its last setpoints and runs its own loops
    )


def setpoint_supervisor_config(
    rack: RackConfig, devices: Mapping[str, DeviceFacts]
) -> tuple[SupervisorConfig, SetpointPlan]:
    """The supervisor's view of a rack in setpoint mode, and the plan it supervises.

    Built as direct mode builds it (leak detectors, temperature limits, caps, level, pump
    running, silent sensors) with the CDU loops' pump and valve replaced by the setpoint
    actuators. Loss of flow keeps only its per-kW floor: the flow a run command "should give"
    is the CDU's setpoint, not a pump speed.
    """
    plan = setpoint_plan(rack, devices)
    loops = cdu_loops(rack)
    others = {key: loop for key, loop in rack.loops.items() if loop not in loops}
    base = supervisor_config(dataclasses.replace(rack, loops=others), devices)
    names = devices[plan.device].point_names

    def cdu_point(name: str) -> PointId | None:
        return PointId(rack.id, plan.device, name) if name in names else None

    flow, level = cdu_point("flow"), cdu_point("reservoir_level")
    required = tuple(
        PointId(rack.id, ref.device, ref.point) for loop in loops for ref in loop.measurement.refs
    )
    config = dataclasses.replace(
        base,  # its leak points include the rack's stop_on_alarms
        actuators=base.actuators + setpoint_actuators(plan),
        required=tuple(dict.fromkeys(base.required + required)),
        temperature_limits=temperature_limits(rack, devices),
        pump_running=cdu_point("pump_running"),
        standby_active=cdu_point("standby_pump_active"),
        flow=flow,
        rated_flow_lpm=None,
        reservoir_level=level,
        safety_sensors=safety_sensors(rack, devices, flow, level),
    )
    return config, plan


def setpoint_mode(rack: RackConfig) -> bool:
    return rack.cdu_control == CduControl.SETPOINTS


class SetpointController:
    """The automatic requests of setpoint mode: the configured setpoints, run, and the mode.

    A controller in the rack stack's sense (`step`, `applied`), with no PID loops of its own
    to show: the CDU's loops do the work."""

    def __init__(self, plan: SetpointPlan) -> None:
        self.plan = plan
        self._inputs: tuple[PointId, ...] = ()

    @property
    def loops(self) -> Mapping[str, PidLoop]:
        return {}

    @property
    def inputs(self) -> Sequence[PointId]:
        return self._inputs

    def loop_of(self, actuator: PointId) -> PidLoop | None:
        return None

    def step(self, snapshot: Snapshot, now: float) -> list[Command]:
        plan = self.plan
        commands = [
            Command(t.point, t.value, Source.AUTO, f"setpoint of loop {t.loop}")
            for t in plan.targets
        ]
        if plan.run is not None:
            commands.append(Command(plan.run, 1.0, Source.AUTO, "CDU running on its own loops"))
        if plan.mode is not None:
            reason = f"CDU in {plan.mode_code.name.lower()}"
            commands.append(Command(plan.mode, float(plan.mode_code), Source.AUTO, reason))
        return commands

    def applied(self, actuator: PointId, value: float, now: float) -> None:
        """Nothing to wind up: the next tick asks for the configured setpoints again."""


def build_setpoint_control(config: RackConfig, devices: Mapping[str, DeviceFacts]) -> RackControl:
    """The stack of a rack in setpoint mode: the setpoint requests, the allocator (with the
    thermal cap loop, as in direct mode) and the supervisor over the setpoint actuators."""
    safety, plan = setpoint_supervisor_config(config, devices)
    power = it_power_points(config, devices)
    shared = allocator(config, devices)
    if shared is not None and config.safety.thermal_cap and power:
        thermal = thermal_cap_loop(config, safety, power)
        if thermal is not None:
            shared = ThermalCappedAllocator(shared.config, thermal)
    return RackControl(SetpointController(plan), shared, Supervisor(safety))
