"""The daemon's moving parts: one poller per device, one control tick per rack, actuation.

Everything runs on one asyncio loop. Pollers and ticks keep a fixed-rate schedule (the k-th
run is due at start + k·period, so they never drift); a run that overruns skips the slots it
missed and counts them instead of bunching up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from coolctl.actuation import ActuatorChannel
from coolctl.config import Config, LoopConfig, RackConfig
from coolctl.control.limits import ActuatorLimits
from coolctl.control.loops import LoopSpec, RackController
from coolctl.control.pid import PidConfig, PidGains
from coolctl.devices import DeviceHandle, open_device
from coolctl.model import Command, PointId, Source
from coolctl.tasks import cancel_and_wait
from coolctl.telemetry import TelemetryStore

log = logging.getLogger("coolctl.runtime")

Clock = Callable[[], float]


@dataclass(slots=True)
class ScheduleStats:
    """How a periodic task keeps its schedule."""

    runs: int = 0
    missed: int = 0
    last_duration_s: float = 0.0
    max_duration_s: float = 0.0

    def record(self, duration_s: float) -> None:
        self.runs += 1
        self.last_duration_s = duration_s
        self.max_duration_s = max(self.max_duration_s, duration_s)


async def run_periodic(
    period_s: float,
    work: Callable[[], Awaitable[None]],
    stats: ScheduleStats,
    clock: Clock = time.monotonic,
) -> None:
    """Run `work` every `period_s` on a fixed grid until cancelled."""
    due = clock()
    while True:
        started = clock()
        await work()
        finished = clock()
        stats.record(finished - started)
        due += period_s
        if finished > due:
            skipped = math.floor((finished - due) / period_s) + 1
            stats.missed += skipped
            due += skipped * period_s
        await asyncio.sleep(max(0.0, due - clock()))


class RackRuntime:
    """One rack: its controller, its actuators, and its control tick."""

    def __init__(
        self,
        config: RackConfig,
        store: TelemetryStore,
        devices: dict[str, DeviceHandle],
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.tick_stats = ScheduleStats()
        self.controller_errors = 0
        self.controller = RackController(
            config.id, [_loop_spec(config.id, loop) for loop in config.loops.values()]
        )
        self.actuators: dict[PointId, ActuatorChannel] = {}
        for loop in config.loops.values():
            handle = devices[loop.actuator.device]
            spec = handle.writable.get(loop.actuator.point)
            if spec is None:
                raise ValueError(
                    f"rack {config.id} loop {loop.id}: {loop.actuator} is not writable"
                    f" in profile {handle.config.profile!r}"
                )
            point = PointId(config.id, loop.actuator.device, loop.actuator.point)
            limits = ActuatorLimits(
                max(loop.output_min, spec.minimum),
                min(loop.output_max, spec.maximum),
                loop.slew_per_s,
            )
            self.actuators[point] = ActuatorChannel(
                point, limits, handle.client.write, resolution=spec.resolution
            )

    def start(self) -> None:
        for channel in self.actuators.values():
            channel.start()

    async def stop(self) -> None:
        for channel in self.actuators.values():
            await channel.stop()

    async def tick(self) -> None:
        """One control step: snapshot → controller → clamp → queue writes."""
        now = self.clock()
        snapshot = self.store.snapshot(now, self.config.id)
        try:
            commands = self.controller.step(snapshot, now)
        except Exception:
            # A controller that raises must not leave the actuators where they were.
            self.controller_errors += 1
            log.exception("%s: controller raised; sending failsafe outputs", self.config.id)
            commands = self._failsafe_commands("controller raised")
        for command in commands:
            channel = self.actuators.get(command.point)
            if channel is None:
                continue
            channel.observe(snapshot.value(command.point), now)
            try:
                applied = channel.submit(command, now)
            except ValueError as exc:  # a non-finite command: refused, never written
                self.controller_errors += 1
                log.error("%s: command refused: %s", self.config.id, exc)
                continue
            if applied.value != command.value:
                self.controller.applied(command.point, applied.value, now)

    def _failsafe_commands(self, reason: str) -> list[Command]:
        return [
            Command(
                point,
                self.controller.loops[loop.id].spec.failsafe_output,
                Source.FAILSAFE,
                f"{reason}; failsafe output",
            )
            for loop in self.config.loops.values()
            for point in [PointId(self.config.id, loop.actuator.device, loop.actuator.point)]
        ]

    async def run(self) -> None:
        await run_periodic(self.config.control_period_s, self.tick, self.tick_stats, self.clock)


class Daemon:
    """Pollers, ticks and actuators for every rack of a config, on the running loop."""

    def __init__(self, config: Config, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.store = TelemetryStore()
        self.devices: dict[tuple[str, str], DeviceHandle] = {}
        self.poll_stats: dict[tuple[str, str], ScheduleStats] = {}
        self.racks: dict[str, RackRuntime] = {}
        self.started_at: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        for rack in config.racks.values():
            handles = {}
            for device in rack.devices.values():
                handle = open_device(rack.id, device)
                handles[device.id] = handle
                self.devices[(rack.id, device.id)] = handle
                self.poll_stats[(rack.id, device.id)] = ScheduleStats()
                self.store.register_device(rack.id, device.id, device.stale_after_s)
            self.racks[rack.id] = RackRuntime(rack, self.store, handles, clock)

    async def start(self) -> None:
        """Poll every device once, then start pollers and control ticks.

        The first poll round comes before the first tick so that loops start bumplessly from
        what the devices hold; a device that does not answer it leaves its loops in failsafe.
        """
        self.started_at = self.clock()
        await asyncio.gather(*(self._poll_once(handle) for handle in self.devices.values()))
        for (rack, device), handle in self.devices.items():
            self._spawn(self._poll_forever(handle), f"poll {rack}/{device}")
        for rack_runtime in self.racks.values():
            rack_runtime.start()
            self._spawn(rack_runtime.run(), f"control {rack_runtime.config.id}")
        log.info(
            "running %d racks, %d devices",
            len(self.racks),
            len(self.devices),
        )

    async def stop(self) -> None:
        """Stop ticks and pollers, let writes in flight finish, close connections."""
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        for rack_runtime in self.racks.values():
            await rack_runtime.stop()
        for handle in self.devices.values():
            with contextlib.suppress(Exception):
                await handle.client.close()
        log.info("stopped")

    async def _poll_once(self, handle: DeviceHandle) -> None:
        try:
            readings = await handle.client.poll()
        except Exception:  # a driver bug must not stop the poller; counted as a failed poll
            log.exception("%s/%s: poll raised", handle.rack, handle.config.id)
            return
        self.store.update(readings)

    async def _poll_forever(self, handle: DeviceHandle) -> None:
        stats = self.poll_stats[(handle.rack, handle.config.id)]
        await run_periodic(
            handle.config.poll_interval_s, lambda: self._poll_once(handle), stats, self.clock
        )

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("task %s died", name)

        self._tasks.append(asyncio.create_task(guarded(), name=name))


def _loop_spec(rack: str, loop: LoopConfig) -> LoopSpec:
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
            action=loop.action,
        ),
        failsafe_output=loop.failsafe_output,
        enabled=loop.enabled,
    )
