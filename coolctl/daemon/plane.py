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
from coolctl.control.supervisor import Override
from coolctl.daemon.runtime import Daemon, RackRuntime
from coolctl.model import CANONICAL_POINTS, Event, PointId, RackMode, Severity
from coolctl.ops.api import MIN_TTL_S
from coolctl.ops.protocol import (
    AuditRecord,
    ControlError,
    EventRecord,
    JsonObject,
    OverrideRecord,
    target_kind,
)
from coolctl.ops.store import AsyncStore
from coolctl.rack.facts import setpoint_bounds

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

    async def stop(self) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry_task
            self._expiry_task = None
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
            "values": values,
            "loops": self.loops(rack.config.id),
            "overrides": [record.as_json() for record in rack.override_records.values()],
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
        if not why.strip():
            raise ControlError(400, "a reason is required")
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
        if not why.strip():
            raise ControlError(400, "a reason is required")
        await self.store.set_mode(rack, mode, who, why, self.wall_clock())
        previous, runtime.mode = runtime.mode, mode
        if previous != mode:
            self._emit(rack, "mode_set", f"{who} switched the rack to {mode}: {why}")
        return {"rack": rack, "mode": mode, "previous": previous}

    async def reset_interlock(self, rack: str, interlock: str, who: str, why: str) -> JsonObject:
        runtime = self._rack(rack)
        if not why.strip():
            raise ControlError(400, "a reason is required")
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

    # -- internals ----------------------------------------------------------------------------

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
                    404, f"no loop {loop_id!r} on rack {runtime.config.id} ({loops})"
                )
            self._check_setpoint(runtime, loop_id, value)
            return
        device, _, name = target.partition("/")
        point = PointId(runtime.config.id, device, name)
        try:
            runtime.supervisor.check_override(point, value)
        except ValueError as exc:
            raise ControlError(400, str(exc)) from exc

    def _check_setpoint(self, runtime: RackRuntime, loop_id: str, value: float) -> None:
        """A setpoint override must lie within the loop's setpoint bounds (see
        coolctl.devices.setpoint_bounds), as an actuator override within its safe bounds."""
        loop = runtime.config.loops.get(loop_id)
        if loop is None:  # a loop the config does not know (none today): finite is all we know
            return
        rack = runtime.config.id
        devices = {
            device: handle
            for (rack_id, device), handle in self.daemon.devices.items()
            if rack_id == rack
        }
        low, high = setpoint_bounds(loop, devices)
        if not (math.isfinite(value) and low <= value <= high):
            spec = CANONICAL_POINTS.get(loop.measurement.minuend.point)
            unit = f" {spec.unit.value}" if spec is not None else ""
            raise ControlError(
                400,
                f"{loop_id}.setpoint {value:g} is outside its bounds {low:g}..{high:g}{unit}"
                f" (what {loop.measurement} can read, or the loop's setpoint_min/setpoint_max)",
            )

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
