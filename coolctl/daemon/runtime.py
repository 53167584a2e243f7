"""The daemon's moving parts: one poller per device, one control tick per rack, actuation.

Everything runs on one asyncio loop. Pollers and ticks keep a fixed-rate schedule (the k-th
run is due at start + k·period, so they never drift); a run that overruns skips the slots it
missed and counts them instead of bunching up.

A rack's tick decides nothing itself: it takes the snapshot, calls the rack step
(`coolctl.rack.step.RackStep`, the one the scenario runner and the live step test call too),
submits the commands to the actuator channels, and emits, logs and counts what the step
reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field

from coolctl.config import Config, RackConfig
from coolctl.control.limits import ActuatorLimits
from coolctl.control.powercap import PowerCapAllocator
from coolctl.control.supervisor import ActuatorRole, Decision, Override, Supervisor
from coolctl.daemon.actuation import ActuatorChannel
from coolctl.daemon.devices import DeviceHandle, open_device
from coolctl.daemon.mqtt_bridge import budget_topic, event_payload, open_connection, topic_root
from coolctl.daemon.tasks import cancel_and_wait
from coolctl.daemon.telemetry import TelemetryStore
from coolctl.drivers.modbus_link import LinkPool
from coolctl.model import Event, PointId, RackMode, Reading, Severity, Snapshot
from coolctl.ops.protocol import OverrideRecord
from coolctl.rack.bounds import hold_inside
from coolctl.rack.controllers import build_rack_control
from coolctl.rack.facts import setpoint_bounds
from coolctl.rack.safety import rack_meters
from coolctl.rack.stack import LoopController
from coolctl.rack.step import ControllerFactory, RackStep, StepResult

log = logging.getLogger("coolctl.daemon.runtime")

_LOG_LEVEL = {
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.CRITICAL: logging.CRITICAL,
}

Clock = Callable[[], float]


LATENESS_SAMPLES = 64
"""Recent start delays kept per periodic task: enough for a p99 over a minute of 1 s ticks,
little enough to keep for every poller of a row of racks."""


def _lateness_samples() -> deque[float]:
    return deque(maxlen=LATENESS_SAMPLES)


@dataclass(slots=True)
class ScheduleStats:
    """How a periodic task keeps its schedule.

    `lateness_s` holds how late each recent run started after its due time: a loop that is
    busy elsewhere (a scrape, another rack's tick) shows here long before runs are missed.
    """

    runs: int = 0
    missed: int = 0
    last_duration_s: float = 0.0
    max_duration_s: float = 0.0
    lateness_s: deque[float] = field(default_factory=_lateness_samples)

    def record(self, duration_s: float, lateness_s: float = 0.0) -> None:
        self.runs += 1
        self.last_duration_s = duration_s
        self.max_duration_s = max(self.max_duration_s, duration_s)
        # the event loop may wake a timer up to its clock resolution early: that is not lateness
        self.lateness_s.append(lateness_s if lateness_s > 0.0 else 0.0)

    @property
    def recent_max_lateness_s(self) -> float:
        return max(self.lateness_s, default=0.0)


async def run_periodic(
    period_s: float,
    work: Callable[[], Awaitable[None]],
    stats: ScheduleStats,
    clock: Clock = time.monotonic,
    phase_s: float = 0.0,
) -> None:
    """Run `work` every `period_s` on a fixed grid until cancelled; the grid starts `phase_s`
    from now."""
    due = clock() + phase_s
    if phase_s > 0:
        await asyncio.sleep(phase_s)
    while True:
        started = clock()
        await work()
        finished = clock()
        stats.record(finished - started, started - due)
        due += period_s
        if finished > due:
            skipped = math.floor((finished - due) / period_s) + 1
            stats.missed += skipped
            due += skipped * period_s
        await asyncio.sleep(max(0.0, due - clock()))


class RackRuntime:
    """One rack's I/O around its control step: snapshot in, commands out to its actuators.

    The decisions are the rack step's (`coolctl.rack.step.RackStep`, the one the scenario
    runner and the live step test call too): every command reaches an actuator through the
    supervisor, which has the last word — interlock > operator override > automatic control,
    within bounds and slew. This class takes the snapshot from the telemetry store, lets its
    `ActuatorChannel`s observe what the devices hold, submits the step's commands, emits its
    events, and counts and logs what went wrong.
    """

    def __init__(
        self,
        config: RackConfig,
        store: TelemetryStore,
        devices: Mapping[str, DeviceHandle],
        clock: Clock = time.monotonic,
        on_event: Callable[[Event], None] = lambda event: None,
        controller_factory: ControllerFactory = build_rack_control,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.on_event = on_event
        self.tick_stats = ScheduleStats()
        self.controller_errors = 0  # controllers that raised, and commands refused
        self.refused_commands = 0
        self.mode = RackMode.AUTO
        self.overrides: dict[PointId, Override] = {}  # what the supervisor applies
        self.override_records: dict[str, OverrideRecord] = {}  # by target, for status/metrics
        self.step = RackStep(config, devices, controller_factory)
        self._devices = devices
        self._held_setpoints: set[str] = set()  # setpoint overrides held inside safe bounds
        self.decision: Decision | None = None
        self.on_tick: Callable[[str, float], None] | None = None  # the watchdog's progress
        self.on_state: Callable[[RackRuntime, float], None] | None = None  # MQTT state
        self._own_budget_w = config.power_budget_w
        self.actuators: dict[PointId, ActuatorChannel] = {}
        for safety in self.supervisor.config.actuators:
            point = safety.point
            handle = devices[point.device]
            spec = handle.writable[point.name]
            self.actuators[point] = ActuatorChannel(
                point,
                ActuatorLimits(safety.hard_minimum, safety.hard_maximum),
                handle.client.write,
                resolution=spec.resolution,
                clock=self.clock,
                retry_after_s=config.control_period_s,
                on_failure=self._write_failure,
            )

    @property
    def controller(self) -> LoopController:
        return self.step.stack.controller

    @property
    def allocator(self) -> PowerCapAllocator | None:
        return self.step.stack.allocator

    @property
    def supervisor(self) -> Supervisor:
        return self.step.stack.supervisor

    @property
    def power_budget_w(self) -> float | None:
        """The budget in force: an upstream coordinator's (`budget_point`), else the rack's."""
        return self.step.budget_w(self._own_budget_w)

    @power_budget_w.setter
    def power_budget_w(self, watts: float | None) -> None:
        """Set the rack's own budget (an upstream coordinator's, once accepted, still wins)."""
        self._own_budget_w = watts

    @property
    def caps_w(self) -> float | None:
        """The sum of the server caps last commanded, after the supervisor: what the BMCs were
        told (an interlock's minimum caps included), not what the allocator asked. None before
        any cap was commanded, or without servers."""
        supervisor = self.supervisor
        caps = [
            supervisor.commanded(a.point)
            for a in supervisor.config.actuators
            if a.role is ActuatorRole.POWER_LIMIT
        ]
        known = [cap for cap in caps if cap is not None]
        return sum(known) if known else None

    def start(self) -> None:
        for channel in self.actuators.values():
            channel.start()

    async def stop(self, hand_back: bool = True) -> None:
        """Hand each actuator back as configured (unless reloading: then the new loops take
        over from where the devices stand), let the writes finish, then stop."""
        if hand_back:
            now = self.clock()
            self._apply(self.step.shutdown(now), now)
        for channel in self.actuators.values():
            await channel.idle()
            await channel.stop()

    def start_up(self) -> None:
        """Failsafe outputs before the first good readings, as BMC fan daemons do."""
        now = self.clock()
        result = self.step.start_up(self.store.snapshot(now, self.config.id), now)
        if result is not None:
            self._apply(result, now)

    async def tick(self) -> None:
        """One control step: snapshot → the rack step → actuators (queued writes)."""
        now = self.clock()
        snapshot = self.store.snapshot(now, self.config.id)
        for point, value, sampled_at in self.step.readbacks(snapshot):
            # a device that drifted from our value is rewritten
            self.actuators[point].observe(value, now, sampled_at)
        self._bound_setpoint_overrides(snapshot, now)
        result = self.step.step(
            snapshot, now, mode=self.mode, budget_w=self._own_budget_w, overrides=self.overrides
        )
        self._apply(result, now)
        if self.on_state is not None:
            self.on_state(self, now)
        if self.on_tick is not None:
            self.on_tick(self.config.id, now)

    def _bound_setpoint_overrides(self, snapshot: Snapshot, now: float) -> None:
        """Hold each setpoint override inside its loop's safe bounds as they move (the rack's
        power raises the minimum flow); one event when an override is held, one when freed."""
        self._held_setpoints &= set(self.override_records)
        for target, record in self.override_records.items():
            loop_id = target.removesuffix(".setpoint")
            loop, config = self.controller.loops.get(loop_id), self.config.loops.get(loop_id)
            if target == loop_id or loop is None or config is None:
                continue
            sensor = setpoint_bounds(config, self._devices)
            value, bounds = hold_inside(
                self.config, config, sensor, snapshot.values(), record.value
            )
            loop.setpoint_override = value
            held = value != record.value
            if held == (target in self._held_setpoints):
                continue
            if held and bounds is not None:
                self._held_setpoints.add(target)
                message = (
                    f"{target} override {record.value:g} held at {value:g} {bounds.unit}:"
                    f" outside its safe bounds {bounds.text()}"
                )
                severity = Severity.WARNING
            else:
                self._held_setpoints.discard(target)
                message = f"{target} override {record.value:g} is within its safe bounds again"
                severity = Severity.INFO
            kind = "setpoint_held" if held else "setpoint_released"
            self.on_event(Event(self.config.id, kind, severity, message, now, source="daemon"))

    def interlock_reading(self, now: float) -> None:
        """The fast path: a reading that may trip an interlock has just arrived."""
        self._apply(self.step.interlocks(self.store.snapshot(now, self.config.id), now), now)

    def reset_interlock(self, name: str, who: str, why: str) -> None:
        """An operator resets a latched (or clearing) interlock; ValueError says why not."""
        now = self.clock()
        self._apply(self.step.reset_interlock(name, now, who, why), now)

    def _write_failure(self, point: PointId, error: str | None) -> None:
        """A device started refusing (or failing) writes to `point`, or accepts them again."""
        now = self.clock()
        if error is not None:
            message = f"writes to {point} refused or failed: {error}; retrying with backoff"
            kind, severity = "write_refused", Severity.WARNING
        else:
            message = f"writes to {point} succeed again"
            kind, severity = "write_accepted", Severity.INFO
        self.on_event(Event(self.config.id, kind, severity, message, now, source="daemon"))

    async def acknowledge_alarms(self) -> list[str]:
        """Write 1 to `alarm_acknowledge` on every device of the rack that takes it (the CDU
        clears its latched alarms whose cause is gone); the devices written. A CDU in local
        control is skipped: it would refuse the write."""
        written = []
        for name, handle in self._devices.items():
            if "alarm_acknowledge" not in handle.writable or name in self.step.cdu.local_devices:
                continue
            await handle.client.write("alarm_acknowledge", 1.0)
            written.append(name)
        return written

    def _apply(self, result: StepResult, now: float) -> None:
        """Emit, log, count and submit what the step decided, in the order of its making."""
        self.decision = result.decision
        early = result.early_events  # budget and allocator, before the supervisor decided
        for event in early:
            self.on_event(event)
        if result.error is not None:
            self.controller_errors += 1
            log.error("%s: controller raised; failsafe", self.config.id, exc_info=result.error)
        for refused in result.refused:
            self._refused(refused.reason)
        for command in result.commands:
            channel = self.actuators.get(command.point)
            if channel is None:
                continue
            try:
                channel.submit(command, now)
            except ValueError as exc:  # the channel's own guard: never written
                self._refused(str(exc))
        for event in result.events[len(early) :]:
            self.on_event(event)

    def _refused(self, reason: str) -> None:
        self.controller_errors += 1
        self.refused_commands += 1
        log.error("%s: command refused: %s", self.config.id, reason)

    async def run(self, phase_s: float = 0.0) -> None:
        await run_periodic(
            self.config.control_period_s, self.tick, self.tick_stats, self.clock, phase_s
        )


def rack_phases(config: Config) -> dict[str, float]:
    """Where each rack's ticks and polls sit in its control period: the racks of a row spread
    evenly across it, in config order.

    Were every rack due at the same instant, hundreds of polls and dozens of ticks would queue
    on the one event loop together each period, and the last of them would start late by the
    time all the others take. A rack's own pollers and tick keep one grid, as a lone rack's do.
    """
    count = len(config.racks)
    return {
        rack.id: index / count * rack.control_period_s
        for index, rack in enumerate(config.racks.values())
    }


class Daemon:
    """Pollers, ticks and actuators for every rack of a config, on the running loop."""

    def __init__(
        self,
        config: Config,
        clock: Clock = time.monotonic,
        controller_factory: ControllerFactory = build_rack_control,
    ) -> None:
        """`controller_factory` builds every rack's stack (default: as its config asks); the
        live step test passes its own, so that its controller runs under this supervisor."""
        self.config = config
        self.clock = clock
        self.store = TelemetryStore()
        self.devices: dict[tuple[str, str], DeviceHandle] = {}
        self.poll_stats: dict[tuple[str, str], ScheduleStats] = {}
        self.racks: dict[str, RackRuntime] = {}
        self.started_at: float | None = None
        self.recent_events: deque[Event] = deque(maxlen=200)
        self.event_listeners: list[Callable[[Event], None]] = []
        self._poll_tasks: list[asyncio.Task[None]] = []
        self._control_tasks: list[asyncio.Task[None]] = []
        self._pdus: dict[str, tuple[str, ...]] = {}  # each rack's PDUs (feeds, power shelves)
        self.mqtt = open_connection(config)
        self.modbus_links = LinkPool()  # Modbus devices on one connection or bus share it
        if self.mqtt is not None:
            self.mqtt.on_interlock_message(self._interlock_message)
            self.event_listeners.append(self._publish_event)
        for rack in config.racks.values():
            handles = {}
            for device in rack.devices.values():
                handle = open_device(
                    rack.id,
                    device,
                    self.mqtt,
                    self.modbus_links,
                    host_power=rack.safety.leak_shutdown_servers,
                )
                handles[device.id] = handle
                self.devices[(rack.id, device.id)] = handle
                self.poll_stats[(rack.id, device.id)] = ScheduleStats()
                self.store.register_device(rack.id, device.id, device.stale_after_s)
            self._pdus[rack.id] = rack_meters(
                rack, {name: handle.kind for name, handle in handles.items()}
            )
            self.racks[rack.id] = RackRuntime(
                rack, self.store, handles, clock, self.emit, controller_factory
            )
            self.racks[rack.id].step.budget_source = budget_topic(rack, handles)
            self.racks[rack.id].on_state = self.publish_state

    def emit(self, event: Event) -> None:
        """Log an event, keep it for status, and hand it to every listener (store, MQTT)."""
        level = _LOG_LEVEL[event.severity]
        log.log(level, "%s: %s", event.rack, event.message, extra={"rack": event.rack})
        self.recent_events.append(event)
        for listener in self.event_listeners:
            try:
                listener(event)
            except Exception:  # a broken listener must not stop the supervisor's decisions
                log.exception("event listener failed")

    async def start(self) -> None:
        """Poll every device once, then start pollers and control ticks.

        The first poll round comes before the first tick so that loops start bumplessly from
        what the devices hold; a device that does not answer it leaves its loops in failsafe.
        """
        self.started_at = self.clock()
        if self.mqtt is not None:
            await self.mqtt.start()
            # retained sensor states (a wet leak rope, the budget) arrive within moments
            await self.mqtt.wait_connected(1.0)
        async with asyncio.TaskGroup() as first_round:  # _poll_once raises nothing
            for handle in self.devices.values():
                first_round.create_task(self._poll_once(handle))
        phases = rack_phases(self.config)
        for (rack, device), handle in self.devices.items():
            poll = self._poll_forever(handle, phases[rack] % handle.config.poll_interval_s)
            self._spawn(self._poll_tasks, poll, f"poll {rack}/{device}")
        for rack_runtime in self.racks.values():
            rack_runtime.start()
            rack_runtime.start_up()
            name = f"control {rack_runtime.config.id}"
            self._spawn(self._control_tasks, rack_runtime.run(phases[rack_runtime.config.id]), name)
        # Everything built so far (clients, sessions, plans, controllers) lives as long as the
        # daemon: out of the collector's sight, a full collection walks only what is new. In a
        # row of 32 racks a full collection over it all held the loop for most of a second.
        gc.freeze()
        log.info(
            "running %d racks, %d devices",
            len(self.racks),
            len(self.devices),
        )

    async def stop(self, hand_back: bool = True) -> None:
        """Stop the ticks, hand the actuators back (while the links are still up), stop the
        pollers, close connections. Writes in flight are finished, never cut."""
        await cancel_and_wait(self._control_tasks)
        self._control_tasks.clear()
        for rack_runtime in self.racks.values():
            await rack_runtime.stop(hand_back)
        await cancel_and_wait(self._poll_tasks)
        self._poll_tasks.clear()
        if self.mqtt is not None:
            await self.mqtt.stop()
        for handle in self.devices.values():
            with contextlib.suppress(Exception):
                await handle.client.close()
        gc.unfreeze()  # what this daemon held may be collected again (a reload builds anew)
        log.info("stopped")

    def _interlock_message(self, reading: Reading) -> None:
        """The fast path: a leak (or other interlock) message is acted on as it arrives."""
        self.store.update([reading])
        rack = self.racks.get(reading.point.rack)
        if rack is not None:
            rack.interlock_reading(self.clock())

    def _publish_event(self, event: Event) -> None:
        assert self.mqtt is not None
        topic = f"{topic_root(self.config)}/{event.rack}/events"
        self.mqtt.publish_nowait(topic, event_payload(event, time.time()), qos=1)

    def publish_state(self, rack: RackRuntime, now: float) -> None:
        """The rack's state, retained, so that a dashboard or coordinator sees it at once."""
        if self.mqtt is None:
            return
        decision = rack.decision
        state = {
            "rack": rack.config.id,
            "at": time.time(),
            "mode": rack.mode,
            "failsafe": bool(decision and decision.failsafe),
            "interlocks": sorted(decision.interlocks) if decision else [],
            "power_w": self.rack_power_w(rack.config.id, now),
            "power_budget_w": rack.power_budget_w,
            "values": {
                f"{r.point.device}/{r.point.name}": r.value
                for r in self.store.readings(now, rack.config.id)
                if r.usable
            },
        }
        topic = f"{topic_root(self.config)}/{rack.config.id}/state"
        self.mqtt.publish_nowait(topic, json.dumps(state).encode(), qos=1, retain=True)

    def rack_power_w(self, rack: str, now: float) -> float | None:
        """The rack's power as its PDUs measure it, summed (None without a PDU, or while one
        of them has no good reading: half a rack's feeds is not its power)."""
        devices = self._pdus.get(rack, ())
        readings = [self.store.current(PointId(rack, device, "power"), now) for device in devices]
        if not readings or not all(reading.usable for reading in readings):
            return None
        return math.fsum(reading.value for reading in readings if reading.value is not None)

    async def _poll_once(self, handle: DeviceHandle) -> None:
        try:
            readings = await handle.client.poll()
        except Exception:  # a driver bug must not stop the poller; counted as a failed poll
            log.exception("%s/%s: poll raised", handle.rack, handle.config.id)
            return
        self.store.update(readings)

    async def _poll_forever(self, handle: DeviceHandle, phase_s: float = 0.0) -> None:
        stats = self.poll_stats[(handle.rack, handle.config.id)]
        await run_periodic(
            handle.config.poll_interval_s,
            lambda: self._poll_once(handle),
            stats,
            self.clock,
            phase_s,
        )

    def _spawn(self, tasks: list[asyncio.Task[None]], coro: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("task %s died", name)

        task = asyncio.create_task(guarded(), name=name)
        if isinstance(coro, Coroutine):
            # A task cancelled before its first step never starts `coro`: close it, so that a
            # daemon stopped right after start-up leaves no "never awaited" warning behind.
            task.add_done_callback(lambda _: coro.close())
        tasks.append(task)
