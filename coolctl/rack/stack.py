"""A rack's control stack — loops, power-cap allocator, safety supervisor — built from config.

The daemon and the offline scenario runner build it here, the same way, so that a scenario in
simulated time runs the very code that runs a rack.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from coolctl.config import LoopConfig, RackConfig
from coolctl.control.loops import (
    ChipBoost,
    FeedForward,
    GainSchedule,
    LoopSpec,
    PidLoop,
    RackController,
)
from coolctl.control.pid import PidConfig, PidGains
from coolctl.control.powercap import AllocatorConfig, PowerCapAllocator, ServerCap
from coolctl.control.supervisor import ActuatorRole, Supervisor, SupervisorConfig
from coolctl.control.thermalcap import (
    CoolingActuator,
    MarginPoint,
    ThermalCapConfig,
    ThermalCapLoop,
)
from coolctl.model import Command, Event, PointId, Severity, Snapshot
from coolctl.rack.circuits import rack_circuits
from coolctl.rack.safety import (
    DeviceFacts,
    rack_meters,
    rack_power_points,
    server_caps,
    server_points,
    supervisor_config,
)


class AutoController(Protocol):
    """What decides the automatic requests each tick (`RackController`'s interface; an MPC
    offers the same)."""

    def step(self, snapshot: Snapshot, now: float) -> list[Command]: ...

    def applied(self, actuator: PointId, value: float, now: float) -> None: ...


class LoopController(AutoController, Protocol):
    """An `AutoController` with the rack's PID loops on show, as the daemon needs it: metrics,
    status and setpoint overrides reach the loops (`RackController`; `MpcController`, whose
    loops are its fallback and whose supply setpoint is the supply loop's)."""

    @property
    def loops(self) -> Mapping[str, PidLoop]: ...

    @property
    def inputs(self) -> Sequence[PointId]: ...

    def loop_of(self, actuator: PointId) -> PidLoop | None: ...


@dataclass(slots=True)
class RackControl:
    """What decides a rack's commands: its controller (PID loops, or the MPC over them), its
    allocator (if it has BMCs), its supervisor."""

    controller: LoopController
    allocator: PowerCapAllocator | None
    supervisor: Supervisor


@dataclass(slots=True)
class PidControl:
    """The PID stack, typed as such: what the MPC stack is built on (its fallback)."""

    controller: RackController
    allocator: PowerCapAllocator | None
    supervisor: Supervisor


class CapAllocator(Protocol):
    """What shares the budget out as caps (`PowerCapAllocator`'s interface)."""

    def step(self, snapshot: Snapshot, now: float, budget_w: float | None) -> list[Command]: ...

    def applied(self, limit: PointId, value: float) -> None: ...

    def drain_events(self) -> list[Event]: ...


class ControlStack(Protocol):
    """A rack's control stack as the rack step drives it; `RackControl` is one."""

    @property
    def controller(self) -> AutoController: ...

    @property
    def allocator(self) -> CapAllocator | None: ...

    @property
    def supervisor(self) -> Supervisor: ...


def note_applied(
    controller: AutoController,
    allocator: CapAllocator | None,
    point: PointId,
    value: float,
    now: float,
) -> None:
    """The supervisor applied `value` where the loops or the allocator asked for something
    else: both must know, or they carry on from a value the device does not hold (a loop
    would wind up; the allocator would never raise a cap the supervisor had lowered)."""
    controller.applied(point, value, now)
    if allocator is not None:
        allocator.applied(point, value)


def build_pid_control(config: RackConfig, devices: Mapping[str, DeviceFacts]) -> PidControl:
    """The PID loops, the allocator and the supervisor, whatever the config's `controller`.

    With `safety.thermal_cap` the allocator shares out the lower of the budget and the
    thermal cap loop's limit (`ThermalCappedAllocator`)."""
    safety = supervisor_config(config, devices)
    power = it_power_points(config, devices)
    shared = allocator(config, devices)
    if shared is not None and config.safety.thermal_cap and power:
        chips = server_points(config, devices, "chip_temperature")
        thermal = thermal_cap_loop(config, safety, power, chips)
        if thermal is not None:
            shared = ThermalCappedAllocator(shared.config, thermal)
    chips = server_points(config, devices, "chip_temperature")
    return PidControl(
        controller=RackController(
            config.id,
            [loop_spec(config.id, loop, power, chips) for loop in config.loops.values()],
        ),
        allocator=shared,
        supervisor=Supervisor(safety),
    )


def it_power_points(config: RackConfig, devices: Mapping[str, DeviceFacts]) -> tuple[PointId, ...]:
    """What measures the rack's power: its PDUs (summed: one per feed, or several power
    shelves), else the sum of its servers' own readings."""
    pdus = rack_power_points(config, devices)
    if pdus:
        return pdus
    return tuple(PointId(config.id, device.id, "power") for device in server_caps(config))


FLOW_BOUND = frozenset({"chip_temperature", "coolant_outlet_temperature"})
"""Temperatures that more flow cools: their margin is out of cooling once the pumps are."""


def thermal_cap_loop(
    config: RackConfig,
    safety: SupervisorConfig,
    power: tuple[PointId, ...],
    chips: Sequence[PointId] = (),
) -> ThermalCapLoop | None:
    """The rack's thermal cap loop: margins from the supervisor's temperature limits, and from
    `safety.thermal_cap_chip_c` for every server chip (`chips`) that has no limit of its own
    there; cooling at its top when the pumps (chips, outlets) or the valves (supply, return)
    are at their normal maximum."""
    cooling = tuple(
        CoolingActuator(a.point, a.maximum, moves_flow=a.role is ActuatorRole.PUMP)
        for a in safety.actuators
        if a.role in (ActuatorRole.PUMP, ActuatorRole.VALVE)
    )
    limits = [(t.point, t.limit_c) for t in safety.temperature_limits]
    chip_c = config.safety.thermal_cap_chip_c
    if chip_c is not None:
        limited = {point for point, _ in limits}
        limits += [(point, chip_c) for point in chips if point not in limited]
    if not cooling or not limits:
        return None
    servers = server_caps(config)
    rate = config.power.release_rate_w_per_s  # caps rising at once: the loop's own pace
    paced = {} if rate is None else {"release_rate_w_per_s": rate}
    return ThermalCapLoop(
        ThermalCapConfig(
            margins=tuple(
                MarginPoint(point, limit_c, flow_bound=point.name in FLOW_BOUND)
                for point, limit_c in limits
            ),
            cooling=cooling,
            power=power,
            floor_w=sum(device.cap_min_w for device in servers) + config.power.overhead_w,
            target_margin_c=config.safety.thermal_cap_margin_c,
            **paced,
        )
    )


class ThermalCappedAllocator(PowerCapAllocator):
    """The rack's allocator, sharing out the lower of the budget and the thermal cap loop's
    limit (`thermal` None: the budget alone). A subclass, as the MPC's is (which extends this
    one), so metrics and status read the same `allocation`."""

    def __init__(self, config: AllocatorConfig, thermal: ThermalCapLoop | None) -> None:
        super().__init__(config)
        self.thermal = thermal

    def step(self, snapshot: Snapshot, now: float, budget_w: float | None) -> list[Command]:
        if self.thermal is None:
            return super().step(snapshot, now, budget_w)
        was = self.thermal.limit_w
        limit = self.thermal.step(snapshot, now)
        state = self.thermal.state
        if limit is not None and was is None:
            message = (
                f"thermal cap engaged at {limit:.0f} W: cooling at its top and"
                f" {state.worst_point} {state.worst_margin_c:.3g} K from its limit"
            )
            self.events.append(self._event("thermal_cap_engaged", Severity.WARNING, message, now))
        elif limit is None and was is not None:
            message = "thermal cap released: the temperatures have their margin back"
            self.events.append(self._event("thermal_cap_released", Severity.INFO, message, now))
        if limit is not None:
            budget_w = limit if budget_w is None else min(budget_w, limit)
        return super().step(snapshot, now, budget_w)


def allocator(config: RackConfig, devices: Mapping[str, DeviceFacts]) -> PowerCapAllocator | None:
    """The rack's power-cap allocator, if it has servers whose caps it can set."""
    servers = server_caps(config)
    if not servers:
        return None
    pdus = list(rack_meters(config, {name: facts.kind for name, facts in devices.items()}))
    pdu = pdus[0] if pdus else None
    rack = config.id
    return PowerCapAllocator(
        AllocatorConfig(
            rack=rack,
            servers=tuple(
                ServerCap(
                    name=device.id,
                    power=PointId(rack, device.id, "power"),
                    limit=PointId(rack, device.id, "power_limit"),
                    min_cap_w=device.cap_min_w,
                    max_cap_w=device.cap_max_w,
                    priority=device.priority,
                    weight=device.weight,
                )
                for device in servers
            ),
            margin_w=config.power.margin_w,
            non_server_power=PointId(rack, pdu, "power") if pdu is not None else None,
            more_rack_power=tuple(PointId(rack, other, "power") for other in pdus[1:]),
            overhead_w=config.power.overhead_w,
            release_rate_w_per_s=config.power.release_rate_w_per_s,
            cap_deadband_w=config.power.cap_deadband_w,
            circuits=rack_circuits(config),
            source_alarms=tuple(
                PointId(rack, device, name)
                for device, facts in devices.items()
                for name in ("psu_ok", "bbu_discharging")
                # a PDU's (Redfish lists them for every PDU), or any device's that has one:
                # an ORv3 BBU on Modbus is no power meter, but its discharge is an event
                if facts.kind == "pdu" or name in facts.point_names
            ),
        )
    )


def loop_spec(
    rack: str, loop: LoopConfig, power: Sequence[PointId] = (), chips: Sequence[PointId] = ()
) -> LoopSpec:
    """A loop as its config asks; its feedforward reads the rack's power from `power`, its chip
    boost the servers' chip temperatures `chips` (no chips: no boost)."""
    measurement = loop.measurement
    gain = loop.feedforward_gain_per_kw
    feedforward = (
        FeedForward(tuple(power), gain / 1000.0, loop.feedforward_lag_s, loop.feedforward_delay_s)
        if gain is not None and power
        else None
    )
    subtrahend = measurement.subtrahend
    scheduled = loop.gain_schedule_point
    schedule = (
        GainSchedule(
            PointId(rack, scheduled.device, scheduled.point),
            tuple(loop.gain_schedule_at),
            tuple(loop.gain_schedule_multiplier),
        )
        if scheduled is not None
        else None
    )
    return LoopSpec(
        name=loop.id,
        measurement=PointId(rack, measurement.minuend.device, measurement.minuend.point),
        measurement_subtrahend=(
            PointId(rack, subtrahend.device, subtrahend.point) if subtrahend else None
        ),
        actuator=PointId(rack, loop.actuator.device, loop.actuator.point),
        setpoint=loop.setpoint,
        pid=PidConfig(
            gains=PidGains(loop.kp, loop.ki, loop.kd, loop.derivative_filter_s),
            output_min=loop.output_min,
            output_max=loop.output_max,
            slew_per_s=loop.slew_per_s,
            action=loop.action.value,
            deadband=loop.deadband,
            setpoint_weight=loop.setpoint_weight,
        ),
        enabled=loop.enabled,
        feedforward=feedforward,
        boost=boost(loop, power, chips),
        schedule=schedule,
    )


def boost(loop: LoopConfig, power: Sequence[PointId], chips: Sequence[PointId]) -> ChipBoost | None:
    """A loop's chip boost (and its feedforward from power), from what the rack can read."""
    if loop.boost_setpoint is None:
        return None
    from_kw, full_kw = loop.boost_from_kw, loop.boost_full_kw
    by_power = from_kw is not None and full_kw is not None and bool(power)
    by_chips = loop.boost_above_c is not None and bool(chips)
    if not (by_power or by_chips):
        return None
    return ChipBoost(
        points=tuple(chips) if by_chips else (),
        above_c=loop.boost_above_c if loop.boost_above_c is not None else math.inf,
        boosted=loop.boost_setpoint,
        power_points=tuple(power) if by_power else (),
        from_w=from_kw * 1000.0 if from_kw is not None else math.inf,
        full_w=full_kw * 1000.0 if full_kw is not None else math.inf,
        power_lag_s=loop.boost_power_lag_s,
    )
