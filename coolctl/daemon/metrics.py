"""Prometheus metrics, computed at scrape time from the state the daemon already holds.

No second bookkeeping: the collectors read the telemetry store, the drivers' counters, the loop
states and the actuator channels when Prometheus asks, on the event loop (they must not block).
One collector per kind of thing: the daemon itself (build, start time, control API), its
devices (points, their quality, polling), its racks (loops, actuators, ticks, interlocks,
power, overrides), and the MPC, registered only while some rack runs one. `DaemonMetrics`
registers them and follows the daemon the service swaps in on reload.
Names follow the Prometheus conventions: `coolctl_` prefix, base units in names, `_total` on
counters, enums as one series per state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from aiohttp import hdrs, web
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

import coolctl
from coolctl.control.loops import LoopMode
from coolctl.control.supervisor import INTERLOCKS
from coolctl.model import (
    CANONICAL_POINTS,
    CduControlMode,
    PointId,
    Quality,
    RackMode,
    Reading,
    Source,
    Unit,
    base_point,
)

if TYPE_CHECKING:
    from coolctl.daemon.runtime import Daemon


_UNIT_SUFFIX = {
    Unit.CELSIUS: "_celsius",
    Unit.PASCAL: "_pascals",
    Unit.WATT: "_watts",
    Unit.AMPERE: "_amperes",
    Unit.VOLT: "_volts",
    Unit.JOULE: "_joules",
    Unit.LITRE: "_litres",
    Unit.LITRE_PER_MINUTE: "_litres_per_minute",
    Unit.RATIO: "_ratio",
    Unit.BOOLEAN: "",
    Unit.SECOND: "_seconds",
    Unit.STATE: "_state",
}


def point_metric_name(point: str) -> str:
    """`supply_temperature` → `coolctl_supply_temperature_celsius`."""
    spec = CANONICAL_POINTS[point]
    return f"coolctl_{point}{_UNIT_SUFFIX[spec.unit]}"


# The MPC's fallback reasons (control/mpc.py FALLBACK_REASONS), named here so that a PID-only
# daemon's metrics do not import the MPC and its solver.
MPC_FALLBACK_REASONS = ("blind", "infeasible", "max_iter", "time_limit", "solver_error")


class _MpcStats(Protocol):
    steps: int
    fallback_reasons: dict[str, int]
    last_solve_s: float
    max_solve_s: float
    limited_steps: int


@runtime_checkable
class _Mpc(Protocol):
    """What the collector reads of a rack's MPC controller (control/mpc.py MpcController)."""

    stats: _MpcStats
    it_power_limit_w: float | None


class _DaemonState(Collector):
    """A collector over the daemon of the moment (`daemon` is swapped on reload)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def describe(self) -> Iterable[Metric]:
        return []  # registration must not call collect()


class DaemonCollector(_DaemonState):
    """Daemon-wide families: build, start time, and the control API's answers."""

    def __init__(self, daemon: Daemon) -> None:
        super().__init__(daemon)
        # The control API's answers by HTTP status, when the service has an API (it sets this).
        self.api_requests_by_status: Mapping[int, int] | None = None

    def collect(self) -> Iterator[Metric]:
        yield from self._info()
        yield from self._api()

    def _api(self) -> Iterator[Metric]:
        counts = self.api_requests_by_status
        if counts is None:
            return
        family = CounterMetricFamily(
            "coolctl_control_api_requests",
            "Control API requests answered, by HTTP status (4xx: refused as bad or unauthorised)",
            labels=["code"],
        )
        for status, count in sorted(counts.items()):
            family.add_metric([str(status)], count)
        yield family

    def _info(self) -> Iterator[Metric]:
        info = InfoMetricFamily("coolctl_build", "coolctl version")
        info.add_metric([], {"version": coolctl.__version__})
        yield info
        up = GaugeMetricFamily(
            "coolctl_daemon_start_time_seconds", "When the daemon started (Unix time)"
        )
        if self.daemon.started_at is not None:
            up.add_metric([], time.time() - (self.daemon.clock() - self.daemon.started_at))
        yield up


class DeviceCollector(_DaemonState):
    """Per device: its points' values and quality, and how its polling goes."""

    def __init__(self, daemon: Daemon) -> None:
        super().__init__(daemon)
        self._quality_cache: dict[PointId, _QualityEntry] = {}

    def collect(self) -> Iterator[Metric]:
        now = self.daemon.clock()
        readings = sorted(self.daemon.store.readings(now), key=lambda r: r.point)
        yield self._quality(readings)
        yield from self._points(readings)
        yield from self._devices(now, time.time() - now)

    def _quality(self, readings: list[Reading]) -> Metric:
        """coolctl_point_quality: four series per point, the most of any family. A point's
        samples and lines are made again only when its quality changes (see exposition)."""
        family = _QualityFamily()
        samples = family.samples
        lines: list[bytes] = []
        cache, kept = self._quality_cache, {}
        for reading in readings:
            point, quality = reading.point, reading.quality
            entry = cache.get(point)
            if entry is None or entry[0] is not quality:
                entry = _quality_entry(point, quality)
            kept[point] = entry
            samples.extend(entry[1])
            lines.append(entry[2])
        self._quality_cache = kept  # points no longer read are forgotten
        family.lines = b"".join(lines)
        return family

    def _points(self, readings: list[Reading]) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for reading in readings:
            point = reading.point
            base = base_point(point.name)
            if not reading.usable or base not in CANONICAL_POINTS:
                continue  # only good values are exported as values: never pass old ones off
            # a table row (outlet_power.12) is its point's family with an `index` label
            index = point.name[len(base) + 1 :] if base != point.name else None
            name = point_metric_name(base)
            family = families.get(name)
            if family is None:
                family = families[name] = GaugeMetricFamily(
                    name,
                    CANONICAL_POINTS[base].description,
                    labels=["rack", "device"] if index is None else ["rack", "device", "index"],
                )
            assert reading.value is not None
            values = (
                [point.rack, point.device] if index is None else [point.rack, point.device, index]
            )
            family.add_metric(values, reading.value)
        yield from families.values()

    def _devices(self, now: float, wall_offset: float) -> Iterator[Metric]:
        labels = ["rack", "device"]
        up = GaugeMetricFamily(
            "coolctl_device_up", "1 if the device's last poll succeeded", labels=labels
        )
        last_success = GaugeMetricFamily(
            "coolctl_device_last_success_timestamp_seconds",
            "When the device last answered a whole poll (Unix time)",
            labels=labels,
        )
        duration = GaugeMetricFamily(
            "coolctl_device_poll_duration_seconds",
            "Duration of the device's last poll",
            labels=labels,
        )
        polls = CounterMetricFamily("coolctl_device_polls", "Polls attempted", labels=labels)
        errors = CounterMetricFamily(
            "coolctl_device_poll_errors",
            "Poll errors by kind (timeout, connection, exception, garbled)",
            labels=[*labels, "kind"],
        )
        missed = CounterMetricFamily(
            "coolctl_device_poll_missed",
            "Poll slots skipped because the previous poll overran",
            labels=labels,
        )
        for (rack, device), handle in sorted(self.daemon.devices.items()):
            stats = handle.client.stats
            key = [rack, device]
            up.add_metric(key, 1.0 if stats.connected and stats.consecutive_failures == 0 else 0.0)
            if stats.last_success_ts is not None:
                last_success.add_metric(key, stats.last_success_ts + wall_offset)
            duration.add_metric(key, stats.last_poll_duration_s)
            polls.add_metric(key, stats.polls)
            for kind, count in sorted(stats.errors_by_kind.items()):
                errors.add_metric([*key, kind], count)
            missed.add_metric(key, self.daemon.poll_stats[(rack, device)].missed)
        yield from (up, last_success, duration, polls, errors, missed)


class RackCollector(_DaemonState):
    """Per rack: its loops, actuators, control ticks, interlocks, power and overrides."""

    def collect(self) -> Iterator[Metric]:
        yield from self._loops()
        yield from self._actuators()
        yield from self._ticks()
        yield from self._racks(self.daemon.clock())

    def _loops(self) -> Iterator[Metric]:
        labels = ["rack", "loop"]
        setpoint = GaugeMetricFamily(
            "coolctl_loop_setpoint",
            "Loop setpoint, in the unit of its measurement",
            labels=[*labels, "unit"],
        )
        measurement = GaugeMetricFamily(
            "coolctl_loop_measurement",
            "Loop measured variable, in the unit of its measurement",
            labels=[*labels, "unit"],
        )
        error = GaugeMetricFamily(
            "coolctl_loop_error",
            "Setpoint minus measurement, in the unit of its measurement",
            labels=[*labels, "unit"],
        )
        output = GaugeMetricFamily(
            "coolctl_loop_output", "Loop output asked of the actuator", labels=[*labels, "actuator"]
        )
        mode = GaugeMetricFamily(
            "coolctl_loop_mode", "Loop mode, one series per state", labels=[*labels, "mode"]
        )
        for rack_id, rack in sorted(self.daemon.racks.items()):
            for loop_id, loop in sorted(rack.controller.loops.items()):
                state, spec = loop.state, loop.spec
                unit = spec.measurement.unit
                unit_label = unit.value if unit else ""
                setpoint.add_metric([rack_id, loop_id, unit_label], state.setpoint)
                if state.measurement is not None:
                    measurement.add_metric([rack_id, loop_id, unit_label], state.measurement)
                    error.add_metric(
                        [rack_id, loop_id, unit_label], state.setpoint - state.measurement
                    )
                if state.output is not None:
                    output.add_metric([rack_id, loop_id, str(spec.actuator)], state.output)
                for each in LoopMode:
                    mode.add_metric([rack_id, loop_id, each.value], float(state.mode is each))
        yield from (setpoint, measurement, error, output, mode)

    def _actuators(self) -> Iterator[Metric]:
        labels = ["rack", "device", "point"]
        command = GaugeMetricFamily(
            "coolctl_actuator_command",
            "Last command sent to the actuator, after clamping",
            labels=[*labels, "source"],
        )
        writes = CounterMetricFamily(
            "coolctl_actuator_writes", "Writes verified by read-back", labels=labels
        )
        failures = CounterMetricFamily(
            "coolctl_actuator_write_failures",
            "Writes that failed or did not read back",
            labels=labels,
        )
        clamped = CounterMetricFamily(
            "coolctl_actuator_clamped", "Commands changed by bounds or slew limits", labels=labels
        )
        skipped = CounterMetricFamily(
            "coolctl_actuator_unchanged",
            "Commands not written because the device already held the value",
            labels=labels,
        )
        commands = CounterMetricFamily(
            "coolctl_actuator_commands", "Commands by source", labels=[*labels, "source"]
        )
        mismatches = CounterMetricFamily(
            "coolctl_actuator_readback_mismatches",
            "Writes the device answered but read back as another value",
            labels=labels,
        )
        deferred = CounterMetricFamily(
            "coolctl_actuator_deferred",
            "Commands held back because a failed write's retry was not yet due",
            labels=labels,
        )
        drifts = CounterMetricFamily(
            "coolctl_actuator_drifts",
            "Confirmed writes that a later poll showed the device had not kept",
            labels=labels,
        )
        for rack in sorted(self.daemon.racks.values(), key=lambda r: r.config.id):
            for point, channel in sorted(rack.actuators.items()):
                stats = channel.stats
                key = [point.rack, point.device, point.name]
                if stats.last_command is not None:
                    command.add_metric(
                        [*key, stats.last_command.source.value], stats.last_command.value
                    )
                writes.add_metric(key, stats.writes)
                failures.add_metric(key, stats.write_failures)
                clamped.add_metric(key, stats.clamped)
                skipped.add_metric(key, stats.skipped_unchanged)
                mismatches.add_metric(key, stats.readback_mismatches)
                deferred.add_metric(key, stats.deferred)
                drifts.add_metric(key, stats.drifts)
                for source in Source:
                    commands.add_metric(
                        [*key, source.value], stats.commands_by_source.get(source, 0)
                    )
        yield from (command, writes, failures, clamped, skipped, commands)
        yield from (mismatches, deferred, drifts)

    def _ticks(self) -> Iterator[Metric]:
        ticks = CounterMetricFamily("coolctl_control_ticks", "Control ticks run", labels=["rack"])
        missed = CounterMetricFamily(
            "coolctl_control_deadline_misses",
            "Control ticks skipped because a tick overran its period",
            labels=["rack"],
        )
        duration = GaugeMetricFamily(
            "coolctl_control_tick_duration_seconds",
            "Duration of the last control tick",
            labels=["rack"],
        )
        lateness = GaugeMetricFamily(
            "coolctl_control_tick_lateness_seconds",
            "Largest delay of a control tick's start past its due time, over the recent ticks",
            labels=["rack"],
        )
        errors = CounterMetricFamily(
            "coolctl_controller_errors", "Control ticks where a controller raised", labels=["rack"]
        )
        for rack_id, rack in sorted(self.daemon.racks.items()):
            ticks.add_metric([rack_id], rack.tick_stats.runs)
            missed.add_metric([rack_id], rack.tick_stats.missed)
            duration.add_metric([rack_id], rack.tick_stats.last_duration_s)
            lateness.add_metric([rack_id], rack.tick_stats.recent_max_lateness_s)
            errors.add_metric([rack_id], rack.controller_errors)
        yield from (ticks, missed, duration, lateness, errors)

    def _racks(self, now: float) -> Iterator[Metric]:
        rack_label = ["rack"]
        interlock = GaugeMetricFamily(
            "coolctl_interlock_active",
            "1 while the interlock holds the rack",
            labels=["rack", "interlock"],
        )
        awaiting = GaugeMetricFamily(
            "coolctl_interlock_awaiting_reset",
            "1 while a latched interlock's cause is clear and it waits for an operator's reset",
            labels=["rack", "interlock"],
        )
        silent = GaugeMetricFamily(
            "coolctl_safety_sensor_silent",
            "1 for each safety sensor (leak detector, flow, level) that never reported or went"
            " silent: it cannot trip its interlock",
            labels=["rack", "point"],
        )
        failsafe = GaugeMetricFamily(
            "coolctl_rack_failsafe", "1 while the rack is in failsafe", labels=rack_label
        )
        mode = GaugeMetricFamily(
            "coolctl_rack_mode", "Rack mode, one series per state", labels=["rack", "mode"]
        )
        power = GaugeMetricFamily(
            "coolctl_rack_power_watts",
            "Rack power as its PDUs (or power shelves) measure it, summed",
            labels=rack_label,
        )
        budget = GaugeMetricFamily(
            "coolctl_rack_power_budget_watts", "The rack's power budget", labels=rack_label
        )
        supply_limit = GaugeMetricFamily(
            "coolctl_rack_supply_temperature_limit_celsius",
            "Supply temperature above which the over-temperature interlock trips",
            labels=rack_label,
        )
        caps = GaugeMetricFamily(
            "coolctl_rack_power_caps_watts",
            "Sum of the server caps last commanded, after the safety supervisor (an"
            " interlock's minimum caps included)",
            labels=rack_label,
        )
        feasible = GaugeMetricFamily(
            "coolctl_rack_power_budget_feasible",
            "0 when even every server at its minimum cap exceeds the budget",
            labels=rack_label,
        )
        override = GaugeMetricFamily(
            "coolctl_override_active",
            "Value of each operator override in force",
            labels=["rack", "target"],
        )
        expiry = GaugeMetricFamily(
            "coolctl_override_expiry_timestamp_seconds",
            "When each expiring override ends (Unix time)",
            labels=["rack", "target"],
        )
        for rack_id, rack in sorted(self.daemon.racks.items()):
            decision = rack.decision
            active = decision.interlocks if decision is not None else frozenset()
            for name in INTERLOCKS:
                interlock.add_metric([rack_id, name], float(name in active))
            safety = rack.supervisor.state
            for name, status in safety.interlocks.items():
                awaiting.add_metric([rack_id, name], float(status.awaiting_reset))
            for point in safety.silent_sensors:
                silent.add_metric([rack_id, f"{point.device}/{point.name}"], 1.0)
            failsafe.add_metric([rack_id], float(decision is not None and decision.failsafe))
            for each in RackMode:
                mode.add_metric([rack_id, each.value], float(rack.mode == each))
            rack_power = self.daemon.rack_power_w(rack_id, now)
            if rack_power is not None:
                power.add_metric([rack_id], rack_power)
            if rack.power_budget_w is not None:
                budget.add_metric([rack_id], rack.power_budget_w)
            allocation = rack.allocator.allocation if rack.allocator is not None else None
            if rack.caps_w is not None:
                caps.add_metric([rack_id], rack.caps_w)
            if allocation is not None:
                feasible.add_metric([rack_id], float(allocation.feasible))
            for ref, limit in rack.config.safety.temperature_limits.items():
                if ref.point == "supply_temperature":
                    supply_limit.add_metric([rack_id], limit)
            for record in list(rack.override_records.values()):
                override.add_metric([rack_id, record.target], record.value)
                if record.expires_at is not None:
                    expiry.add_metric([rack_id, record.target], record.expires_at)
        yield from (interlock, awaiting, silent, failsafe, mode, power, budget, supply_limit)
        yield from (caps, feasible)
        yield from (override, expiry)
        yield from self._chips()
        yield from self._cdus(now)

    def _cdus(self, now: float) -> Iterator[Metric]:
        """CDUs that run their own loops: their mode as one series per state, whether coolctl
        holds its commands because the panel has control, and each alarm's last known state
        (coolctl.rack.cdu_watch: a reading that is not good keeps the last state, so an alarm
        does not vanish from the metrics while its CDU does not answer)."""
        mode = GaugeMetricFamily(
            "coolctl_cdu_control_mode",
            "The CDU's control mode as it reports it, one series per state (1 = current)",
            labels=["rack", "device", "mode"],
        )
        local = GaugeMetricFamily(
            "coolctl_cdu_local",
            "1 while the CDU is in local control at its panel and coolctl writes nothing to it",
            labels=["rack", "device"],
        )
        alarm = GaugeMetricFamily(
            "coolctl_cdu_alarm_active",
            "1 while the CDU's alarm is active (latched ones until acknowledged), last known state",
            labels=["rack", "device", "alarm"],
        )
        for rack_id, rack in sorted(self.daemon.racks.items()):
            watch = rack.step.cdu
            for device in watch.watched_devices:
                held = device in watch.local_devices
                local.add_metric([rack_id, device], float(held))
                reading = self.daemon.store.current(
                    PointId(rack_id, device, "cdu_control_mode"), now
                )
                if not reading.usable or reading.value is None:
                    continue
                code = round(reading.value)
                for each in CduControlMode:
                    mode.add_metric([rack_id, device, each.name.lower()], float(code == each))
            for state in watch.alarms():
                labels = [rack_id, state.point.device, state.point.name]
                alarm.add_metric(labels, float(state.active))
        yield from (mode, local, alarm)

    def _chips(self) -> Iterator[Metric]:
        """Servers that throttle or are near it (coolctl.rack.chips), and the outlet limit."""
        labels = ["rack", "device"]
        throttling = GaugeMetricFamily(
            "coolctl_server_throttling",
            "1 while the server's hottest chip sits at its throttle point (its BMC's threshold)",
            labels=labels,
        )
        near = GaugeMetricFamily(
            "coolctl_server_chip_near_throttle",
            "1 while the server's hottest chip is within chip_near_throttle_margin_c of throttling",
            labels=labels,
        )
        margin = GaugeMetricFamily(
            "coolctl_server_chip_throttle_margin_celsius",
            "Degrees left before the server's hottest chip throttles",
            labels=labels,
        )
        rack_throttling = GaugeMetricFamily(
            "coolctl_rack_servers_throttling", "Servers of the rack throttling", labels=["rack"]
        )
        rack_near = GaugeMetricFamily(
            "coolctl_rack_servers_near_throttle",
            "Servers of the rack within the margin of throttling (throttling ones not counted)",
            labels=["rack"],
        )
        outlet_limit = GaugeMetricFamily(
            "coolctl_rack_outlet_temperature_limit_celsius",
            "Server coolant outlet temperature above which over-temperature trips (outlet_limit_c)",
            labels=["rack"],
        )
        for rack_id, rack in sorted(self.daemon.racks.items()):
            watch = rack.step.chips
            for device, chips in sorted(watch.states.items()):
                if chips.state == "unknown":
                    continue
                key = [rack_id, device]
                throttling.add_metric(key, float(chips.state == "throttling"))
                near.add_metric(key, float(chips.state == "near"))
                if chips.margin_c is not None:
                    margin.add_metric(key, chips.margin_c)
            if watch.servers:
                rack_throttling.add_metric([rack_id], float(len(watch.throttling)))
                rack_near.add_metric([rack_id], float(len(watch.near)))
            if rack.config.safety.outlet_limit_c is not None:
                outlet_limit.add_metric([rack_id], rack.config.safety.outlet_limit_c)
        yield from (throttling, near, margin, rack_throttling, rack_near, outlet_limit)


class MpcCollector(_DaemonState):
    """The MPC of each rack that runs one; registered only while some rack does."""

    def collect(self) -> Iterator[Metric]:
        """How often each rack's MPC was in charge, and why it was not."""
        racks = [
            (rack_id, rack.controller)
            for rack_id, rack in self.daemon.racks.items()
            if isinstance(rack.controller, _Mpc)
        ]
        if not racks:
            return
        steps = CounterMetricFamily(
            "coolctl_mpc_steps", "Control steps the MPC was asked for", labels=["rack"]
        )
        fallbacks = CounterMetricFamily(
            "coolctl_mpc_fallbacks",
            "Steps the MPC handed to the PID loops, by reason (blind, infeasible, max_iter,"
            " time_limit, solver_error)",
            labels=["rack", "reason"],
        )
        solve = GaugeMetricFamily(
            "coolctl_mpc_solve_seconds",
            "The solver's own run time: the last solve, and the largest since start",
            labels=["rack", "which"],
        )
        limited = CounterMetricFamily(
            "coolctl_mpc_it_limit_steps",
            "Solved steps that limited IT power through the caps (cooling had run out)",
            labels=["rack"],
        )
        for rack_id, controller in racks:
            stats = controller.stats
            steps.add_metric([rack_id], stats.steps)
            for reason in MPC_FALLBACK_REASONS:
                fallbacks.add_metric([rack_id, reason], stats.fallback_reasons.get(reason, 0))
            solve.add_metric([rack_id, "last"], stats.last_solve_s)
            solve.add_metric([rack_id, "max"], stats.max_solve_s)
            limited.add_metric([rack_id], stats.limited_steps)
        yield from (steps, fallbacks, solve, limited)


class DaemonMetrics:
    """The daemon's collectors, registered in `registry`; the MPC's only while a rack runs one.

    Setting `daemon` (the service does on reload) points every collector at the new daemon and
    registers or unregisters the MPC collector as the new racks need it.
    """

    def __init__(self, daemon: Daemon, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.daemon_wide = DaemonCollector(daemon)
        self.devices = DeviceCollector(daemon)
        self.racks = RackCollector(daemon)
        self.mpc = MpcCollector(daemon)
        self._mpc_registered = False
        for collector in (self.daemon_wide, self.devices, self.racks):
            registry.register(collector)
        self._register_mpc_as_needed()

    @property
    def daemon(self) -> Daemon:
        return self.daemon_wide.daemon

    @daemon.setter
    def daemon(self, daemon: Daemon) -> None:
        for collector in (self.daemon_wide, self.devices, self.racks, self.mpc):
            collector.daemon = daemon
        self._register_mpc_as_needed()

    @property
    def api_requests_by_status(self) -> Mapping[int, int] | None:
        return self.daemon_wide.api_requests_by_status

    @api_requests_by_status.setter
    def api_requests_by_status(self, counts: Mapping[int, int] | None) -> None:
        self.daemon_wide.api_requests_by_status = counts

    def _register_mpc_as_needed(self) -> None:
        wanted = any(isinstance(rack.controller, _Mpc) for rack in self.daemon.racks.values())
        if wanted and not self._mpc_registered:
            self.registry.register(self.mpc)
        elif self._mpc_registered and not wanted:
            self.registry.unregister(self.mpc)
        self._mpc_registered = wanted


_QUALITY = "coolctl_point_quality"
_QUALITY_HELP = "Quality of each point's latest reading, one series per state (1 = current)"
_QUALITY_LABELS = ("rack", "device", "point", "quality")


class _QualityFamily(GaugeMetricFamily):
    """coolctl_point_quality, with its sample lines already rendered (`lines`): they are the
    same in the Prometheus text format and in OpenMetrics for a gauge."""

    def __init__(self) -> None:
        super().__init__(_QUALITY, _QUALITY_HELP, labels=_QUALITY_LABELS)
        self.lines = b""


_QualityEntry = tuple[Quality, list[Sample], bytes]


def _quality_entry(point: PointId, quality: Quality) -> _QualityEntry:
    """One point's quality series: its samples and their exposition lines, written as
    prometheus_client writes them (labels in name order; tests/test_scale_runtime.py holds
    the two to the same bytes)."""
    family = GaugeMetricFamily(_QUALITY, _QUALITY_HELP, labels=_QUALITY_LABELS)
    device, name, rack = _escaped(point.device), _escaped(point.name), _escaped(point.rack)
    lines = []
    for state in Quality:
        value = float(quality is state)
        family.add_metric([point.rack, point.device, point.name, state.value], value)
        lines.append(
            f'{_QUALITY}{{device="{device}",point="{name}",quality="{state.value}",'
            f'rack="{rack}"}} {value!r}\n'
        )
    return quality, family.samples, "".join(lines).encode()


def _escaped(label_value: str) -> str:
    return label_value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _One:
    """One metric family, in the shape an exposition encoder reads a registry in."""

    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> list[Metric]:
        return [self.family]


_EOF = b"# EOF\n"
_QUALITY_HEADER = generate_latest(_One(GaugeMetricFamily(_QUALITY, _QUALITY_HELP)))


async def exposition(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The registry in the text format the scraper accepts, and its content type, rendered one
    metric family at a time with the event loop let in between.

    A row of 32 racks has some 30 000 series; rendered in one go (as prometheus_client's own
    handler does) that held the loop for 150 ms and more, long enough to make several racks'
    control ticks start late at every scrape. A rendering thread is no cure: under the GIL it
    starves the loop thread, which gives the GIL up at every socket call. Families are built
    lazily by the collectors, so a slice is one family's building and rendering.
    """
    encoder, content_type = choose_encoder(accept)
    parts: list[bytes] = []
    for family in registry.collect():
        if isinstance(family, _QualityFamily):
            parts.append(_QUALITY_HEADER + family.lines)
        else:
            part = encoder(_One(family))
            parts.append(part.removesuffix(_EOF))
        await asyncio.sleep(0)
    if "openmetrics" in content_type:
        parts.append(_EOF)
    return b"".join(parts), content_type


def make_handler(registry: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler for /metrics that renders with `exposition` (name[] filters as
    prometheus_client's handler does; compressed by aiohttp when the scraper accepts it)."""

    async def handle(request: web.Request) -> web.Response:
        names = request.query.getall("name[]", [])
        source = registry.restricted_registry(names) if names else registry
        accept = ",".join(request.headers.getall(hdrs.ACCEPT, []))
        body, content_type = await exposition(source, accept)  # type: ignore[arg-type]
        response = web.Response(body=body, headers={"Content-Type": content_type})
        response.enable_compression()
        return response

    return handle
