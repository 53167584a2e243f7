"""A rack's control stack — loops, power-cap allocator, safety supervisor — built from config.

The daemon and the offline scenario runner build it here, the same way, so that a scenario in
simulated time runs the very code that runs a rack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from coolctl.config import LoopConfig, RackConfig
from coolctl.control.loops import LoopSpec, PidLoop, RackController
from coolctl.control.pid import PidConfig, PidGains
from coolctl.control.powercap import AllocatorConfig, PowerCapAllocator, ServerCap
from coolctl.control.supervisor import Supervisor
from coolctl.model import Command, Event, PointId, Snapshot
from coolctl.rack.safety import DeviceFacts, server_caps, supervisor_config


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
    """The PID loops, the allocator and the supervisor, whatever the config's `controller`."""
    return PidControl(
        controller=RackController(
            config.id, [loop_spec(config.id, loop) for loop in config.loops.values()]
        ),
        allocator=allocator(config, devices),
        supervisor=Supervisor(supervisor_config(config, devices)),
    )


def allocator(config: RackConfig, devices: Mapping[str, DeviceFacts]) -> PowerCapAllocator | None:
    """The rack's power-cap allocator, if it has servers whose caps it can set."""
    servers = server_caps(config)
    if not servers:
        return None
    pdu = next((device for device, h in devices.items() if h.kind == "pdu"), None)
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
            overhead_w=config.power.overhead_w,
            release_rate_w_per_s=config.power.release_rate_w_per_s,
            cap_deadband_w=config.power.cap_deadband_w,
        )
    )


def loop_spec(rack: str, loop: LoopConfig) -> LoopSpec:
    measurement = loop.measurement
    subtrahend = measurement.subtrahend
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
        ),
        enabled=loop.enabled,
    )
