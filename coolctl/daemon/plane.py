"""The control plane of a running daemon: what `coolctl status`, `override`, `mode`, `events`
and `reload` do, backed by the durable store.

Every change is stored (and audited) before it takes effect and before it is acknowledged, so
an acknowledged override survives a crash; on start the stored overrides and modes are applied
again. Overrides end by themselves when they expire; the loop then takes over bumplessly
because its PID has been tracking the overridden output all along.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable

import coolctl
from coolctl.control.supervisor import ActuatorRole, ActuatorSafety, Override
from coolctl.daemon.devices import DeviceHandle
from coolctl.daemon.runtime import Daemon, RackRuntime
from coolctl.model import CANONICAL_POINTS, Event, PointId, RackMode, Severity, Source
from coolctl.ops.api import MIN_TTL_S
from coolctl.ops.protocol import (
    AuditRecord,
    ControlError,
    EventRecord,
    JsonObject,
    OverrideRecord,
    check_reason,
    target_kind,
)
from coolctl.ops.store import AsyncStore
from coolctl.rack.bounds import live_bounds, loop_bounds, quantity_of, rack_inputs, static_bounds
from coolctl.rack.facts import setpoint_bounds
from coolctl.rack.power_alarms import power_alarms

log = logging.getLogger("coolctl.daemon.plane")

Reloader = Callable[[], Awaitable[JsonObject]]
"""Validates the config file and applies it; raises ControlError(400) and keeps the old one."""


class DaemonControlPlane:
    """Implements coolctl.ops.protocol.ControlPlane over a Daemon and an AsyncStore."""

    def __init__(
        self,
        daemon: Daemon,
        store: AsyncStore,
        reloader: Reloader | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.daemon = daemon
        self.store = store
        self.reloader = reloader
        self.wall_clock = wall_clock
        self._events_changed = asyncio.Condition()
        self._pending_events: set[asyncio.Task[None]] = set()
        self._expiry_task: asyncio.Task[None] | None = None
        self._prune_task: asyncio.Task[None] | None = None

    # -- life cycle -------------------------------------------------------------------------

    async def attach(self, daemon: Daemon) -> None:
        """Bind to a (new) daemon: apply stored overrides and modes, persist its events."""
        self.daemon = daemon
        if self._persist_event not in daemon.event_listeners:  # attached again after a reload
            daemon.event_listeners.append(self._persist_event)
        for rack, mode in (await self.store.modes()).items():
            if rack in daemon.racks:
                daemon.racks[rack].mode = mode
        for record in await self.store.active_overrides(self.wall_clock()):
            rack_runtime = daemon.racks.get(record.rack)
            if rack_runtime is None:
                log.warning(
                    "stored override %s on unknown rack %s kept but not applied",
                    record.target,
                    record.rack,
                )
                continue
            try:
                self._apply_override(rack_runtime, record)
            except ControlError as exc:
                log.warning("stored override not applied: %s", exc.message)

    def start(self) -> None:
        if self._expiry_task is None:
            self._expiry_task = asyncio.create_task(self._expire_forever(), name="overrides")
        if self._prune_task is None:
            self._prune_task = asyncio.create_task(self._prune_forever(), name="events pruning")

    async def stop(self) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry_task
            self._expiry_task = None
        if self._prune_task is not None:
            self._prune_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prune_task
            self._prune_task = None
        if self._pending_events:
            await asyncio.gather(*self._pending_events, return_exceptions=True)

    # -- reads ------------------------------------------------------------------------------

    def status(self) -> JsonObject:
        daemon = self.daemon
        uptime = daemon.clock() - daemon.started_at if daemon.started_at is not None else 0.0
        return {
            "version": coolctl.__version__,
            "site": daemon.config.site.name,
            "config": str(daemon.config.path) if daemon.config.path else None,
            "uptime_s": round(uptime, 1),
            "racks": self.racks(),
        }

    def racks(self) -> list[JsonObject]:
        now = self.daemon.clock()
        return [self._rack_json(rack, now) for rack in self.daemon.racks.values()]

    def _rack_json(self, rack: RackRuntime, now: float) -> JsonObject:
        decision = rack.decision
        values = {
            f"{reading.point.device}/{reading.point.name}": reading.value
            for reading in self.daemon.store.readings(now, rack.config.id)
            if reading.usable
        }
        return {
            "rack": rack.config.id,
            "mode": rack.mode,
            "failsafe": bool(decision and decision.failsafe),
            "interlocks": sorted(decision.interlocks) if decision else [],
            "cdu_local": sorted(rack.step.cdu.local_devices),  # its panel has control
            "power_w": self.daemon.rack_power_w(rack.config.id, now),
            "budget_w": rack.power_budget_w,
            "caps_w": rack.caps_w,
            "chips": dict(rack.step.chips.summary()),
            "values": values,
            "power_alarms": power_alarms(values),
            "loops": self.loops(rack.config.id),
            "overrides": [
                record.as_json() | self.override_effect(rack.config.id, record.target)
                for record in rack.override_records.values()
            ],
            "actuators": [
                {
                    "point": f"{point.device}/{point.name}",
                    "value": channel.stats.last_command.value,
                    "source": channel.stats.last_command.source.value,
                    "reason": channel.stats.last_command.reason,
                }
                for point, channel in rack.actuators.items()
                if channel.stats.last_command is not None
            ],
        }

    def points(self, rack: str | None = None) -> list[JsonObject]:
        self._known(rack)
        now = self.daemon.clock()
        return [
            {
                "rack": reading.point.rack,
                "device": reading.point.device,
                "point": reading.point.name,
                "value": reading.value,
                "unit": reading.point.unit.value if reading.point.unit else None,
                "quality": reading.quality.value,
                "age_s": round(now - reading.ts, 3),
            }
            for reading in sorted(self.daemon.store.readings(now, rack), key=lambda r: r.point)
        ]

    def alarms(self, rack: str | None = None) -> list[JsonObject]:
        """Every CDU alarm point seen, active or not, and the CDUs in local control."""
        self._known(rack)
        now = self.daemon.clock()
        result: list[JsonObject] = []
        for rack_id, runtime in self.daemon.racks.items():
            if rack is not None and rack_id != rack:
                continue
            for alarm in runtime.step.cdu.alarms():
                result.append(
                    {
                        "rack": rack_id,
                        "device": alarm.point.device,
                        "alarm": alarm.point.name,
                        "active": alarm.active,
                        "for_s": round(now - alarm.since, 1),
                    }
                )
        return result

    async def acknowledge_alarms(self, rack: str, who: str, why: str) -> JsonObject:
        """Acknowledge a rack's latched CDU alarms (written to its CDUs), audited."""
        runtime = self._rack(rack)
        if not why.strip():
            raise ControlError(400, "a reason is required")
        active = [a.point.name for a in runtime.step.cdu.alarms() if a.active]
        try:
            devices = await runtime.acknowledge_alarms()
        except Exception as exc:  # the CDU refused or did not answer
            raise ControlError(502, f"acknowledge not written: {exc}") from None
        if not devices:
            raise ControlError(409, f"rack {rack} has no CDU that takes an alarm acknowledge now")
        details = {"devices": devices, "active": active, "reason": why}
        await self.store.audit(who, "alarms_acknowledged", rack, details, self.wall_clock())
        self._emit(rack, "alarms_acknowledged", f"{who} acknowledged the CDU alarms: {why}")
        return {"rack": rack, "devices": devices, "active": active}

    def loops(self, rack: str | None = None) -> list[JsonObject]:
        self._known(rack)
        result = []
        for rack_id, runtime in self.daemon.racks.items():
            if rack is not None and rack_id != rack:
                continue
            for loop_id, loop in runtime.controller.loops.items():
                state = loop.state
                result.append(
                    {
                        "rack": rack_id,
                        "loop": loop_id,
                        "mode": state.mode.value,
                        "setpoint": state.setpoint,
                        "setpoint_overridden": loop.setpoint_override is not None,
                        "measurement": state.measurement,
                        "output": state.output,
                        "actuator": f"{loop.spec.actuator.device}/{loop.spec.actuator.name}",
                        "reason": state.reason,
                    }
                )
        return result

    def overrides(self, rack: str | None = None) -> list[OverrideRecord]:
        self._known(rack)
        return [
            record
            for rack_id, runtime in self.daemon.racks.items()
            if rack is None or rack_id == rack
            for record in runtime.override_records.values()
        ]

    async def events(self, since_id: int = 0, limit: int = 100) -> list[EventRecord]:
        return await self.store.events(since_id, limit)

    async def wait_events(
        self, since_id: int, timeout_s: float, limit: int = 100
    ) -> list[EventRecord]:
        records = await self.store.events(since_id, limit)
        if records or timeout_s <= 0:
            return records
        async with self._events_changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._events_changed.wait(), timeout_s)
        return await self.store.events(since_id, limit)

    async def audit(self, since_id: int = 0, limit: int = 100) -> list[AuditRecord]:
        return await self.store.audit_log(since_id, limit)

    async def newest_events(self, limit: int = 100) -> list[EventRecord]:
        return await self.store.newest_events(limit)

    async def newest_audit(self, limit: int = 100) -> list[AuditRecord]:
        return await self.store.newest_audit(limit)

    # -- changes ----------------------------------------------------------------------------

    async def set_override(
        self, rack: str, target: str, value: float, ttl_s: float | None, who: str, why: str
    ) -> OverrideRecord:
        runtime = self._rack(rack)
        if not math.isfinite(value):
            raise ControlError(400, f"value must be a finite number, not {value!r}")
        if ttl_s is not None and not (math.isfinite(ttl_s) and ttl_s > 0):
            raise ControlError(400, f"ttl must be a positive duration, not {ttl_s!r}")
        if ttl_s is not None and ttl_s < MIN_TTL_S:
            raise ControlError(
                400, f"ttl must be at least {MIN_TTL_S:g} s (the expiry period), not {ttl_s:g}"
            )
        why = check_reason(why)
        cap_s = self.daemon.config.daemon.max_override_ttl_s
        if ttl_s is not None and ttl_s > cap_s:
            raise ControlError(
                400,
                f"ttl {ttl_s:g} s is longer than the {cap_s:g} s cap"
                " (daemon.max_override_ttl_s); an override meant to stay is set --permanent",
            )
        self._check_override(runtime, target, value)  # refuse before anything is stored
        now = self.wall_clock()
        expires_at = now + ttl_s if ttl_s is not None else None
        record = await self.store.set_override(rack, target, value, who, why, now, expires_at)
        self._apply_override(runtime, record)
        ttl = f"for {ttl_s:g} s" if ttl_s is not None else "permanently"
        self._emit(rack, "override_set", f"{who} set {target} = {value:g} {ttl}: {why}")
        return record

    async def clear_override(self, rack: str, target: str, who: str, why: str) -> OverrideRecord:
        runtime = self._rack(rack)
        why = check_reason(why)
        if target not in runtime.override_records:
            raise ControlError(404, f"no override of {target} on rack {rack}")
        record = await self.store.clear_override(rack, target, who, why, self.wall_clock())
        if record is None:
            raise ControlError(404, f"no override of {target} on rack {rack}")
        self._remove_override(runtime, target)
        self._emit(rack, "override_cleared", f"{who} cleared the override of {target}: {why}")
        return record

    async def set_mode(self, rack: str, mode: RackMode, who: str, why: str) -> JsonObject:
        runtime = self._rack(rack)
        try:
            mode = RackMode(mode)
        except ValueError:
            raise ControlError(400, f"mode must be auto or manual, not {mode!r}") from None
        why = check_reason(why)
        await self.store.set_mode(rack, mode, who, why, self.wall_clock())
        previous, runtime.mode = runtime.mode, mode
        if previous != mode:
            self._emit(rack, "mode_set", f"{who} switched the rack to {mode}: {why}")
        return {"rack": rack, "mode": mode, "previous": previous}

    async def reset_interlock(self, rack: str, interlock: str, who: str, why: str) -> JsonObject:
        runtime = self._rack(rack)
        why = check_reason(why)
        before = runtime.supervisor.state.interlocks.get(interlock)
        try:
            runtime.reset_interlock(interlock, who, why)
        except ValueError as exc:
            raise ControlError(409, str(exc)) from None
        was = before.reason if before is not None else ""
        details = {"interlock": interlock, "reason": why, "was": was}
        await self.store.audit(who, "interlock_reset", rack, details, self.wall_clock())
        return {"rack": rack, "interlock": interlock, "was": was}

    async def reload(self, who: str) -> JsonObject:
        if self.reloader is None:
            raise ControlError(400, "this daemon cannot reload (no config file)")
        result = await self.reloader()
        await self.store.audit(who, "reload", None, result, self.wall_clock())
        return result

    def targets(self, rack: str) -> list[JsonObject]:
        """Every target an override may name on `rack`, with its bounds now, unit and why."""
        runtime = self._rack(rack)
        result: list[JsonObject] = []
        now = self.daemon.clock()
        readings = self.daemon.store.readings(now, rack)
        for loop_id in sorted(runtime.controller.loops):
            loop = runtime.config.loops.get(loop_id)
            if loop is None:
                continue
            low, high = setpoint_bounds(loop, self._devices(runtime))
            spec = CANONICAL_POINTS.get(loop.measurement.minuend.point)
            unit = spec.unit.value if spec is not None else None
            why = "what the measurement reads, or setpoint_min/setpoint_max"
            bounds = loop_bounds(runtime.config, loop, (low, high), readings)
            if bounds is not None:
                low, high, unit, why = bounds.low, bounds.high, bounds.unit, bounds.why()
            result.append(
                {
                    "target": f"{loop_id}.setpoint",
                    "kind": "setpoint",
                    "low": low,
                    "high": high,
                    "unit": unit,
                    "why": why,
                }
            )
        for safety in runtime.supervisor.config.actuators:
            spec = CANONICAL_POINTS.get(safety.point.name)
            result.append(
                {
                    "target": f"{safety.point.device}/{safety.point.name}",
                    "kind": "actuator",
                    "low": safety.minimum,
                    "high": safety.maximum,
                    "unit": spec.unit.value if spec is not None else None,
                    "why": (
                        "the server's cap_min_w..cap_max_w"
                        if safety.role is ActuatorRole.POWER_LIMIT
                        else "the loop's output_min..output_max, within the device's range"
                    ),
                }
            )
        return result

    def override_effect(self, rack: str, target: str) -> JsonObject:
        """Whether an override of `target` is in force now, and if not what overrules it: an
        interlock holds its actuator; for a setpoint, failsafe or manual mode stops the loop."""
        runtime = self._rack(rack)
        decision = runtime.decision
        point: PointId | None = None
        setpoint = target_kind(target) == "setpoint"
        if setpoint:
            loop = runtime.controller.loops.get(target.removesuffix(".setpoint"))
            if loop is not None:
                actuator = loop.spec.actuator
                point = PointId(rack, actuator.device, actuator.name)
        else:
            device, _, name = target.partition("/")
            point = PointId(rack, device, name)
        supervisor = runtime.supervisor
        status = supervisor.state.actuators.get(point) if point is not None else None
        safety = next((a for a in supervisor.config.actuators if a.point == point), None)
        overruled: list[str] = []
        note = ""
        holding = [  # the active interlocks that give this actuator a value of their own
            name
            for name in sorted(supervisor.interlocks)
            if safety is not None and _interlock_value(safety, name) is not None
        ]
        by_interlock = status is not None and status.source is Source.INTERLOCK
        if by_interlock and not holding:
            holding = sorted(supervisor.interlocks)
        if holding:
            overruled = holding
            value = status.value if status is not None and by_interlock else None
            if value is None and safety is not None:
                value = _interlock_value(safety, holding[0])
            at = f" at {value:g}" if value is not None else ""
            note = (
                f"not in force: the {', '.join(holding)} interlock holds {point}{at};"
                " the override applies once it releases"
            )
        elif setpoint and decision is not None and decision.failsafe:
            overruled = ["failsafe"]
            reasons = "; ".join(runtime.supervisor.state.failsafe_reasons)
            note = (
                f"not in force: the rack is in failsafe ({reasons}); the loop and its setpoint"
                " act again once it ends"
            )
        elif setpoint and runtime.mode == RackMode.MANUAL:
            overruled = ["manual"]
            note = "not in force: the rack is in manual mode, its loops do not run"
        return {"in_force": not overruled, "overruled_by": overruled, "note": note}

    # -- internals ----------------------------------------------------------------------------

    def _target_names(self, runtime: RackRuntime) -> list[str]:
        loops = [f"{loop_id}.setpoint" for loop_id in sorted(runtime.controller.loops)]
        actuators = [
            f"{a.point.device}/{a.point.name}" for a in runtime.supervisor.config.actuators
        ]
        return loops + actuators

    def _known(self, rack: str | None) -> None:
        if rack is not None:
            self._rack(rack)

    def _rack(self, rack: str) -> RackRuntime:
        runtime = self.daemon.racks.get(rack)
        if runtime is None:
            known = ", ".join(sorted(self.daemon.racks)) or "none"
            raise ControlError(404, f"no rack {rack!r} (racks: {known})")
        return runtime

    def _check_override(self, runtime: RackRuntime, target: str, value: float) -> None:
        if target_kind(target) == "setpoint":
            loop_id = target.removesuffix(".setpoint")
            if loop_id not in runtime.controller.loops:
                loops = ", ".join(sorted(runtime.controller.loops)) or "none"
                raise ControlError(
                    404,
                    f"no loop {loop_id!r} on rack {runtime.config.id} ({loops}); valid targets:"
                    f" {', '.join(self._target_names(runtime))}",
                )
            self._check_setpoint(runtime, loop_id, value)
            return
        device, _, name = target.partition("/")
        point = PointId(runtime.config.id, device, name)
        if point not in {a.point for a in runtime.supervisor.config.actuators}:
            raise ControlError(
                404,
                f"{target} is not an actuator of rack {runtime.config.id}; valid targets:"
                f" {', '.join(self._target_names(runtime))}"
                f" (coolctl override targets {runtime.config.id})",
            )
        try:
            runtime.supervisor.check_override(point, value)
        except ValueError as exc:
            raise ControlError(400, str(exc)) from exc
        self._check_cdu_setpoint(runtime, point, value)

    def _check_cdu_setpoint(self, runtime: RackRuntime, point: PointId, value: float) -> None:
        """A CDU that runs its own loops takes setpoints as actuators (supply_temperature_
        setpoint, flow_setpoint): an override of one is refused outside the safe bounds a
        loop's setpoint of that quantity has (once set, the supervisor holds it to the
        actuator's range; it is not re-bounded tick by tick as a loop's setpoint is)."""
        quantity = quantity_of(point.name)
        safety = next((a for a in runtime.supervisor.config.actuators if a.point == point), None)
        if quantity is None or safety is None:
            return
        bounds = live_bounds(
            runtime.config,
            static_bounds(runtime.config, quantity, (safety.minimum, safety.maximum)),
            quantity,
            *rack_inputs(
                runtime.config, self.daemon.store.readings(self.daemon.clock(), point.rack)
            ),
        )
        if not bounds.contains(value):
            raise ControlError(
                400, f"{point.name} {value:g} is outside its safe bounds {bounds.text()}"
            )

    def _check_setpoint(self, runtime: RackRuntime, loop_id: str, value: float) -> None:
        """A setpoint override must lie within the loop's safe bounds (coolctl.rack.bounds,
        from what the rack reads now), else within what its measurement can read."""
        loop = runtime.config.loops.get(loop_id)
        if loop is None:  # a loop the config does not know (none today): finite is all we know
            return
        low, high = setpoint_bounds(loop, self._devices(runtime))
        now = self.daemon.clock()
        readings = self.daemon.store.readings(now, runtime.config.id)
        bounds = loop_bounds(runtime.config, loop, (low, high), readings)
        if bounds is not None:
            if not bounds.contains(value):
                raise ControlError(
                    400,
                    f"{loop_id}.setpoint {value:g} is outside its safe bounds {bounds.text()}",
                )
            return
        if not (math.isfinite(value) and low <= value <= high):
            spec = CANONICAL_POINTS.get(loop.measurement.minuend.point)
            unit = f" {spec.unit.value}" if spec is not None else ""
            raise ControlError(
                400,
                f"{loop_id}.setpoint {value:g} is outside its bounds {low:g}..{high:g}{unit}"
                f" (what {loop.measurement} can read, or the loop's setpoint_min/setpoint_max)",
            )

    def _devices(self, runtime: RackRuntime) -> dict[str, DeviceHandle]:
        rack = runtime.config.id
        return {
            device: handle
            for (rack_id, device), handle in self.daemon.devices.items()
            if rack_id == rack
        }

    def _apply_override(self, runtime: RackRuntime, record: OverrideRecord) -> None:
        self._check_override(runtime, record.target, record.value)
        runtime.override_records[record.target] = record
        if target_kind(record.target) == "setpoint":
            loop = runtime.controller.loops[record.target.removesuffix(".setpoint")]
            loop.setpoint_override = record.value
            return
        device, _, name = record.target.partition("/")
        point = PointId(runtime.config.id, device, name)
        runtime.overrides[point] = Override(point, record.value, record.who, record.why)

    def _remove_override(self, runtime: RackRuntime, target: str) -> None:
        runtime.override_records.pop(target, None)
        if target_kind(target) == "setpoint":
            loop = runtime.controller.loops.get(target.removesuffix(".setpoint"))
            if loop is not None:
                loop.setpoint_override = None
            return
        device, _, name = target.partition("/")
        runtime.overrides.pop(PointId(runtime.config.id, device, name), None)

    async def prune_events(self) -> int:
        """Drop the events beyond daemon.events_keep and older than daemon.events_max_age_s."""
        config = self.daemon.config.daemon
        cutoff = self.wall_clock() - config.events_max_age_s
        removed = await self.store.prune_events(config.events_keep, older_than=cutoff)
        if removed:
            log.info("pruned %d old events from the store", removed)
        return removed

    async def _prune_forever(self, every_s: float = 600.0) -> None:
        while True:
            try:
                await self.prune_events()
            except Exception:
                log.exception("pruning the events failed; trying again later")
            await asyncio.sleep(every_s)

    async def _expire_forever(self, every_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                expired = await self.store.expire_overrides(self.wall_clock())
            except Exception:
                log.exception("override expiry failed; retrying")
                continue
            for record in expired:
                runtime = self.daemon.racks.get(record.rack)
                if runtime is not None:
                    self._remove_override(runtime, record.target)
                self._emit(
                    record.rack,
                    "override_expired",
                    f"override of {record.target} = {record.value:g} by {record.who} expired;"
                    " the loop takes over",
                )

    def _emit(self, rack: str, kind: str, message: str) -> None:
        self.daemon.emit(
            Event(rack, kind, Severity.INFO, message, self.daemon.clock(), source="operator")
        )

    def _persist_event(self, event: Event) -> None:
        task = asyncio.get_running_loop().create_task(self._store_event(event))
        self._pending_events.add(task)
        task.add_done_callback(self._pending_events.discard)

    async def _store_event(self, event: Event) -> None:
        try:
            await self.store.add_event(event, self.wall_clock())
        except Exception:
            log.exception("could not store event %s", event.kind)
            return
        async with self._events_changed:
            self._events_changed.notify_all()


def _interlock_value(safety: ActuatorSafety, interlock: str) -> float | None:
    """The value an interlock gives an actuator (None: it leaves the actuator alone)."""
    return {
        "leak": safety.on_leak,
        "over_temperature": safety.on_over_temperature,
        "pump_failure": safety.on_pump_failure,
        "loss_of_flow": safety.on_loss_of_flow,
        "low_coolant_level": safety.on_low_level,
    }.get(interlock)
