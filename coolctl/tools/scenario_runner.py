"""Runs a scenario: the simulated plant against the daemon's own control stack, in simulated time.

Every control period the runner does what the daemon does, in the same order:

1. **poll** each simulated device that is due (its `poll_interval_s` on a fixed grid): the plant's
   readings through its sensor model (`RackPlant.cdu_readings()`, `pdu_readings()`,
   `server_readings(i)`), quantised as the wire would carry them (a Modbus point through its
   register type and scale, so 0.1 °C for the CDU's temperatures; Redfish readings to 2 decimals;
   MQTT payloads as the simulated sensors format them). A device under `link_loss` answers
   nothing: its points come back `stale` with their last value and time, as the Modbus and
   Redfish drivers report a device that timed out. The plant draws all sensor noise from one
   stream, so every device of the full rack is read in config order whatever happens (a lost
   link, the fixed baseline's absent BMCs: read, then discarded): every controller sees the
   same noise on the same readings.
2. **snapshot** from the daemon's `TelemetryStore` (so staleness ages exactly as in the daemon);
3. **tick**: the daemon's own rack step (`coolctl.rack.step.RackStep`, which `RackRuntime.tick`
   calls too): actuators observe the snapshot with its sample times, the budget in force is
   followed (the scenario's, or an upstream one through the rack's `budget_point`), loops step
   (the controller, in the rack's mode: `auto` here), the allocator shares the budget out as
   caps, the supervisor decides (with overrides, none unless a test sets them); a controller
   that raises sends the rack to failsafe, a command that is not finite or lies outside its
   actuator's hard range is refused and counted. The stack is built by `build_pid_control` (or
   the MPC's `build_mpc_control`), the daemon's own constructors;
4. **actuate**, as `ActuatorChannel.submit` does: clamp to the hard range, quantise to the
   device's resolution, skip a value the device already holds (a poll sampled before the last
   write is not taken for a drift), write; a Modbus write lands in the plant at once (the
   daemon's writes take milliseconds, far under a period), a power cap lands its BMC's own
   latency later (`[rack] cap_write_latency_s`, by default each BMC 0.5..2 s, drawn once from
   the seed: `CapWrites`), so that a leak's caps-then-pump sequence and the PDU's confirmation
   are judged against BMCs as slow as real ones;
5. **record** plant truth for the KPIs and the plot (`coolctl.tools.kpi`), never for control;
6. **advance** the plant to the next tick, stopping at each scenario event's own time.

Not simulated: the MQTT fast path (a leak message between ticks is acted on at the next tick
here), write failures and read-back mismatches, an upstream coordinator (the simulated devices
serve no `budget_point`; scenario `budget` events set the budget the way the coordinator would).

Controllers (`--controller`):

- `fixed`: the baseline most racks run today. The pump runs at a constant speed
  (`fixed_pump_speed`, default 1.0: pinned by setting the pump loop's output range to that one
  value), the primary valve keeps its supply-temperature PID (a CDU's own valve controller does
  this), no power caps (no BMCs in the rack: nothing enforces the budget). The supervisor's
  interlocks still act on pump and valve.
- `pid`: the daemon's loops, allocator and supervisor as the rack config has them.
- `mpc`: see "The MPC plug-in point" below.

The rack: the scenario's `[rack] config` and `id`, or by default the built-in demo rack
(`coolctl/data/demo-rack.toml`): its loops, safety and power settings, its Modbus CDU and PDU,
and, when the scenario has a `[budget]` (or `[rack] bmcs = true`), one Redfish BMC per plant
server (`bmc01`, `bmc02`, … for servers 0, 1, …) with caps from the plant's `power_limit_min_w`
to `server_max_w`; without a budget the allocator holds every cap at its maximum. The
scenario's `period_s` is the control period; its budget, if any, the rack's budget.

## The MPC plug-in point

`--controller mpc` imports `coolctl.rack.mpc` and calls

    build_mpc_control(rack: RackConfig, devices: Mapping[str, DeviceFacts],
                      model_path: Path | None) -> ControlStack

(the same arguments as `build_pid_control`, plus the identified model file from `--mpc-model`).
It lives in `coolctl/`, not `control/`, because it reads `RackConfig`, which `control/` may not
import; `control/mpc.py` stays pure and is what it builds on. `ControlStack`
(`coolctl.rack.stack`) is anything with three attributes: `controller` (`step(snapshot, now) ->
list[Command]`, `applied(actuator, value, now)` — `RackController`'s interface: the MPC wraps
the PID loops, which stay its fallback), `allocator` (None, or `step(snapshot, now, budget_w) ->
list[Command]` and `drain_events()` — `PowerCapAllocator`'s: the MPC's lowers the budget it
shares out when cooling runs out) and `supervisor` (the daemon's `Supervisor`, as
`build_pid_control` makes it: the MPC never bypasses it). `RackControl` is one. If the
controller also has `kpis() -> Mapping[str, float]` (`mpc_solves`, `mpc_fallbacks`,
`mpc_solve_p99_ms`, ...), those are added to the run's KPIs. The daemon builds the same stack
for a rack with `controller = "mpc"` (`coolctl.rack.controllers.build_rack_control`).

Without `--mpc-model`, the runner identifies the model itself before the run
(`default_mpc_model`): the built-in step test on the scenario's plant in simulated time, as an
engineer would step-test a rack before handing it to the MPC, cached on disk, so only the first
run for a given plant and period pays the ten seconds or so. If `coolctl.rack.mpc` cannot be
imported, `mpc` raises `ControllerUnavailable` and `coolctl sim run` exits 2; so does a model
file that is missing or does not fit the rack (`MpcModelError`). Tests and benchmarks may pass
any `ControllerFactory` to `run_scenario`.
"""

from __future__ import annotations

import dataclasses
import heapq
import importlib
import math
import re
import struct
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from coolctl.config import (
    CduControl,
    ConfigError,
    DeviceConfig,
    DeviceKind,
    MqttDeviceConfig,
    RackConfig,
    RedfishDeviceConfig,
    parse_config,
)
from coolctl.control.limits import ActuatorClamp, ActuatorLimits
from coolctl.control.supervisor import Decision, Override, Supervisor
from coolctl.daemon.telemetry import TelemetryStore
from coolctl.drivers.modbus_profile import RegisterPoint, load_profile
from coolctl.drivers.redfish import kind_points
from coolctl.model import Command, Event, PointId, Quality, RackMode, Reading, Snapshot
from coolctl.rack.check import load_checked_config
from coolctl.rack.facts import device_facts
from coolctl.rack.safety import DeviceFacts
from coolctl.rack.setpoints import build_setpoint_control
from coolctl.rack.stack import AutoController, CapAllocator, ControlStack, build_pid_control
from coolctl.rack.step import RackStep, Refused, StackFactory, StepResult
from coolctl.simulators.cdu_controller import CDU_WRITABLE, CduController
from coolctl.simulators.plant import RackPlant
from coolctl.simulators.scenario import Scenario, ScenarioError, ScenarioEvent, ScenarioPlayer
from coolctl.tools.kpi import Recorder, Trace

CONTROLLERS: tuple[str, ...] = ("fixed", "pid", "mpc")
MPC_MODULE = "coolctl.rack.mpc"
MPC_FACTORY = "build_mpc_control"
MPC_UNAVAILABLE = "the MPC controller is not available here"
SIMULATED_MQTT_PROFILE = "sim-mqtt-sensors"
SIMULATED_ROOM_PROFILE = "sim-room-sensor"
_ROOM_POINTS: Mapping[str, tuple[str, int]] = {  # point -> (room reading, decimals published)
    "room_temperature": ("room_temperature", 2),
    "room_humidity": ("room_humidity", 3),
    "dew_point": ("dew_point", 2),
}


class ControllerUnavailable(RuntimeError):
    """The controller asked for cannot be built here (the MPC without its solver installed)."""


ControllerFactory = Callable[[RackConfig, Mapping[str, DeviceFacts], Path | None], ControlStack]


def _pid_factory(
    rack: RackConfig, devices: Mapping[str, DeviceFacts], model_path: Path | None
) -> ControlStack:
    if rack.cdu_control == CduControl.SETPOINTS:  # a CDU that runs its own loops
        return build_setpoint_control(rack, devices)
    return build_pid_control(rack, devices)  # whatever the rack config's `controller`


def controller_factory(name: str) -> ControllerFactory:
    """The factory for `fixed`, `pid` (both the daemon's stack) or `mpc` (see the docstring)."""
    if name in ("fixed", "pid"):
        return _pid_factory
    if name != "mpc":
        raise ValueError(f"unknown controller {name!r}; known: {', '.join(CONTROLLERS)}")
    try:
        module = importlib.import_module(MPC_MODULE)
    except ModuleNotFoundError as exc:  # coolctl without its solver (osqp, scipy)
        raise ControllerUnavailable(f"{MPC_UNAVAILABLE}: {exc.name} is not installed") from exc
    factory = getattr(module, MPC_FACTORY, None)
    if factory is None:
        raise ControllerUnavailable(MPC_UNAVAILABLE)
    return factory  # type: ignore[no-any-return]


def default_mpc_model(scenario: Scenario) -> Path:
    """The MPC's model when no `--mpc-model` is given: identified on the scenario's own plant
    (its structure; the step test picks its own operating point) by the built-in step test, in
    simulated time, cached (`coolctl.tools.mpc_model.default_model_path`). As on a real rack, the
    model comes from a test on the plant before the run, never from the run itself."""
    from coolctl.tools.mpc_model import default_model_path

    return default_model_path(scenario.period_s, scenario.plant)


# ------------------------------------------------------------------------------ the rack


def rack_config(
    scenario: Scenario, controller: str = "pid", fixed_pump_speed: float = 1.0
) -> RackConfig:
    """The rack config a controller runs the scenario with (see the module docstring)."""
    rack = _demo_rack(scenario) if scenario.rack.config is None else _configured_rack(scenario)
    rack = dataclasses.replace(rack, control_period_s=scenario.period_s)
    if scenario.budget_w is not None:
        rack = dataclasses.replace(rack, power_budget_w=scenario.budget_w)
    if controller == "fixed":
        rack = _fixed(rack, fixed_pump_speed)
    return rack


_LOOP_PROBLEM = re.compile(r"racks\.[^.]+\.loops\.([^.:]+)\.([^.:]+): (.*)$", re.DOTALL)


def _loop_problem(scenario: Scenario, problem: str) -> str:
    """The rack config's problem with a `[rack.loops]` key, at that key's line of the scenario."""
    found = _LOOP_PROBLEM.search(problem)
    if found is None:
        return f"{scenario.where(1)}: [rack.loops]: {problem}"
    loop, key, message = found.groups()
    where = scenario.where(scenario.rack.loop_line(loop, key))
    return f"{where}: [rack.loops.{loop}] {key}: {message}"


def _demo_rack(scenario: Scenario) -> RackConfig:
    """The built-in demo rack: its Modbus CDU and PDU, plus a BMC per server with a budget."""
    text = resources.files("coolctl.data").joinpath("demo-rack.toml").read_text("utf-8")
    demo = tomllib.loads(text)
    rack_id, rack = next(iter(demo["racks"].items()))
    devices = {
        name: entry
        for name, entry in rack.get("devices", {}).items()
        if entry.get("driver") == "modbus" and load_profile(entry["profile"]).kind in ("cdu", "pdu")
    }
    bmcs = scenario.rack.bmcs
    if bmcs or (bmcs is None and scenario.budget_w is not None):
        p = scenario.plant
        width = max(2, len(str(p.n_servers)))
        for i in range(p.n_servers):
            devices[f"bmc{i + 1:0{width}d}"] = {
                "driver": "redfish",
                "kind": "server",
                "url": f"https://bmc{i + 1}.sim.invalid",
                "auth": "none",
                "cap_min_w": p.power_limit_min_w,
                "cap_max_w": p.server_max_w,
            }

    if scenario.rack.room_sensor:
        devices["room1"] = {"driver": "mqtt", "profile": SIMULATED_ROOM_PROFILE}

    def kept(ref: str) -> bool:
        return all(part.strip().split("/")[0] in devices for part in ref.split(" - "))

    safety = dict(rack.get("safety", {}))
    limits = safety.get("temperature_limits", {})
    safety["temperature_limits"] = {ref: v for ref, v in limits.items() if kept(ref)}
    loops = {
        name: loop
        for name, loop in rack.get("loops", {}).items()
        if kept(loop["measurement"]) and kept(loop["actuator"])
    }
    for name, keys in scenario.rack.loops.items():
        if name not in loops:
            known = ", ".join(sorted(loops))
            where = scenario.where(scenario.rack.loop_line(name))
            raise ScenarioError(
                [f"{where}: [rack.loops.{name}]: the rack has no such loop ({known})"]
            )
        loops[name] = {**loops[name], **keys}
    table: dict[str, Any] = {
        key: value
        for key, value in rack.items()
        if key not in ("devices", "loops", "safety", "budget_point", "power_budget_w")
    }
    table.update(devices=devices, loops=loops, safety=safety)
    document: dict[str, Any] = {"site": {"name": "scenario"}, "racks": {rack_id: table}}
    if scenario.rack.room_sensor:  # never connected: the runner serves the sensor itself
        document["mqtt"] = {"broker": "127.0.0.1:1883"}
    try:
        config = parse_config(document)
    except ConfigError as exc:  # a [rack.loops] key the rack config refuses
        raise ScenarioError([_loop_problem(scenario, p) for p in exc.problems]) from exc
    return config.racks[rack_id]


def _configured_rack(scenario: Scenario) -> RackConfig:
    path = scenario.rack.config
    assert path is not None
    where = scenario.where(1)
    try:
        config = load_checked_config(path)
    except ConfigError as exc:
        raise ScenarioError([f"{where}: rack config {path}: {p}" for p in exc.problems]) from exc
    rack_id = scenario.rack.id
    if rack_id is None:
        if len(config.racks) != 1:
            racks = ", ".join(config.racks)
            raise ScenarioError([f"{where}: [rack] id is needed: {path} has racks {racks}"])
        rack_id = next(iter(config.racks))
    if rack_id not in config.racks:
        raise ScenarioError([f"{where}: {path} has no rack {rack_id!r}"])
    return config.racks[rack_id]


def _fixed(rack: RackConfig, speed: float) -> RackConfig:
    """The baseline: pump pinned at `speed`, valve loop kept, no server caps."""
    loops = {
        name: (
            # a pump that runs at one speed keeps it when the rack is blind, too
            dataclasses.replace(loop, output_min=speed, output_max=speed, failsafe_output=speed)
            if loop.actuator.point == "pump_speed_command"
            else loop
        )
        for name, loop in rack.loops.items()
    }
    devices = {
        name: device
        for name, device in rack.devices.items()
        if not (isinstance(device, RedfishDeviceConfig) and device.kind == DeviceKind.SERVER)
    }
    return dataclasses.replace(rack, loops=loops, devices=devices)


def supply_setpoint(scenario: Scenario, rack: RackConfig) -> float:
    """The reference the supply temperature is scored against."""
    if scenario.limits.supply_setpoint_c is not None:
        return scenario.limits.supply_setpoint_c
    for loop in rack.loops.values():
        measurement = loop.measurement
        if measurement.subtrahend is None and measurement.minuend.point == "supply_temperature":
            return loop.setpoint
    return 35.0


# ------------------------------------------------------------------------------ the wire

Quantise = Callable[[float], float]
_INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}


def modbus_quantiser(point: RegisterPoint) -> Quantise:
    """What a value becomes on its way through the register: the simulated device's encoding
    (round to the nearest count, clamp to the type) and the driver's decoding."""
    scale, offset = point.scale, point.offset
    if point.data_type == "bool":
        return lambda value: 1.0 if abs(value) >= 0.5 else 0.0
    if point.data_type == "float32":

        def single(value: float) -> float:
            counts = (value - offset) / scale
            packed = struct.pack(">f", max(-3.4e38, min(3.4e38, counts)))
            raw: float = struct.unpack(">f", packed)[0]
            return raw * scale + offset

        return single
    low, high = _INT_RANGES[point.data_type]

    def counts(value: float) -> float:
        raw = math.floor((value - offset) / scale + 0.5)
        return float(low if raw < low else high if raw > high else raw) * scale + offset

    return counts


def _rounder(digits: int) -> Quantise:
    return lambda value: round(value, digits)


@dataclass(slots=True)
class _WirePoint:
    point: PointId
    source: str  # the plant device's reading it comes from
    quantise: Quantise


class PlantReader(Protocol):
    """What a simulated device reads: the plant's devices (`SimPlant` serves the CDU's
    through its own controller)."""

    def readings(self, device: str) -> Mapping[str, float]: ...


class SimPlant:
    """The plant with the CDU's own controller in front of it (`CduController`): the CDU's
    points are the controller's, writes to the CDU go through it, time through it too. In
    its manual mode (direct control) pump and valve commands reach the plant as they are."""

    def __init__(self, plant: RackPlant) -> None:
        self.plant = plant
        self.cdu = CduController(plant)

    def readings(self, device: str) -> Mapping[str, float]:
        return self.cdu.read_points() if device == "cdu" else self.plant.readings(device)


@dataclass(slots=True)
class SimDevice:
    """One configured device as the simulated rack serves it."""

    name: str
    plant_device: str  # cdu, pdu, server<i>
    points: tuple[_WirePoint, ...]
    interval_s: float
    next_due_s: float = 0.0
    last: list[Reading] | None = None  # the last good poll, in `points` order
    phantom: bool = False  # read for its noise draws only: not a device of this rack

    def poll(self, plant: PlantReader, now: float, link_down: bool) -> list[Reading]:
        """One poll: fresh readings, or, with the link down, the last ones gone stale.

        The plant is read either way, so that a lost link leaves the noise of every other
        reading as it would have been.
        """
        values = plant.readings(self.plant_device)
        if link_down:
            if self.last is None:
                return [Reading(p.point, None, now, Quality.MISSING) for p in self.points]
            return [Reading(r.point, r.value, r.ts, Quality.STALE) for r in self.last]
        good = Quality.GOOD
        self.last = [Reading(p.point, p.quantise(values[p.source]), now, good) for p in self.points]
        return self.last


_REDFISH_DIGITS = 2  # the simulated Redfish sensors' Reading
# a BMC's host power, read as the daemon reads it: only on a rack that shuts servers down
_HOST_POWER_POINTS = frozenset({"power_state", "server_power_command"})
_REDFISH_CONTROL_DIGITS = 3  # a Control's SetPoint
_MQTT_POINTS: Mapping[str, tuple[str, int]] = {  # point -> (CDU reading, decimals published)
    "inlet_temperature": ("supply_temperature", 2),
    "flow": ("flow", 1),
    "leak_detected": ("leak_detected", 0),
}


def sim_devices(rack: RackConfig, plant_points: Mapping[str, Sequence[str]]) -> list[SimDevice]:
    """A simulated device for every configured device; ScenarioError for one it cannot serve.

    `plant_points` is what each plant device (cdu, pdu, server<i>) reports. BMCs stand for
    plant servers 0, 1, 2, … in config order, as `coolctl sim serve` has them.
    """
    devices = []
    servers = 0
    for device in rack.devices.values():
        devices.append(
            _sim_device(rack.id, device, servers, plant_points, rack.safety.leak_shutdown_servers)
        )
        servers += isinstance(device, RedfishDeviceConfig) and device.kind == DeviceKind.SERVER
    return devices


def _sim_device(
    rack: str,
    device: DeviceConfig,
    server: int,
    plant_points: Mapping[str, Sequence[str]],
    host_power: bool = False,
) -> SimDevice:
    def wire(name: str, source: str, quantise: Quantise) -> _WirePoint:
        return _WirePoint(PointId(rack, device.id, name), source, quantise)

    if isinstance(device, RedfishDeviceConfig):
        kind = device.kind
        plant_device = f"server{server}" if kind == "server" else kind
        if plant_device not in plant_points:
            count = sum(1 for name in plant_points if name.startswith("server"))
            raise ScenarioError(
                [f"{rack}/{device.id}: the plant has {count} servers; this BMC would be one more"]
            )
        offered = plant_points[plant_device]
        points = tuple(
            wire(
                name,
                name,
                _rounder(_REDFISH_CONTROL_DIGITS if name == "power_limit" else _REDFISH_DIGITS),
            )
            for name in kind_points(device.kind.literal)
            if name in offered and (host_power or name not in _HOST_POWER_POINTS)
        )
        return SimDevice(device.id, plant_device, points, device.poll_interval_s)
    if isinstance(device, MqttDeviceConfig) and device.profile == SIMULATED_ROOM_PROFILE:
        points = tuple(
            wire(name, source, _rounder(digits)) for name, (source, digits) in _ROOM_POINTS.items()
        )
        return SimDevice(device.id, "room", points, device.poll_interval_s)
    if isinstance(device, MqttDeviceConfig):
        if device.profile != SIMULATED_MQTT_PROFILE:
            raise ScenarioError(
                [f"{rack}/{device.id}: MQTT profile {device.profile!r} is not simulated"]
            )
        points = tuple(
            wire(name, source, _rounder(digits)) for name, (source, digits) in _MQTT_POINTS.items()
        )
        return SimDevice(device.id, "cdu", points, device.poll_interval_s)
    profile = load_profile(device.profile)
    if profile.kind not in ("cdu", "pdu"):
        raise ScenarioError(
            [f"{rack}/{device.id}: a {profile.kind} device ({device.profile}) is not simulated"]
        )
    offered = plant_points[profile.kind]
    missing = [point.name for point in profile.points if point.name not in offered]
    if missing:
        raise ScenarioError(
            [f"{rack}/{device.id}: the plant's {profile.kind} has no {', '.join(missing)}"]
        )
    points = tuple(wire(p.name, p.name, modbus_quantiser(p)) for p in profile.points)
    return SimDevice(device.id, profile.kind, points, device.poll_interval_s)


# ------------------------------------------------------------------------------ actuation


class SimActuator:
    """One writable point, as `ActuatorChannel.submit` treats a command, written at once."""

    __slots__ = (
        "clamp",
        "device_value",
        "last_written",
        "limits",
        "resolution",
        "write",
        "written_at",
    )

    def __init__(
        self, limits: ActuatorLimits, resolution: float, write: Callable[[float], None]
    ) -> None:
        self.limits = limits
        self.clamp = ActuatorClamp(limits)
        self.resolution = resolution
        self.write = write
        self.last_written: float | None = None
        self.device_value: float | None = None
        self.written_at: float | None = None

    def observe(
        self, device_value: float | None, now: float, sampled_at: float | None = None
    ) -> None:
        """`ActuatorChannel.observe`: a value sampled before the last write is the device
        before that write, not a drift."""
        written_at = self.written_at
        if sampled_at is not None and written_at is not None and sampled_at <= written_at:
            return
        self.device_value = device_value
        if device_value is not None and self.clamp.last_value is None:
            self.clamp.accept(device_value, now)

    def submit(self, command: Command, now: float) -> None:
        value = self._quantised(self.clamp.clamp(command, now).value)
        last = self.last_written
        tolerance = max(self.resolution / 2, 1e-9)
        device = self.device_value
        if (
            last is not None
            and abs(value - last) <= tolerance
            and (device is None or abs(device - last) <= tolerance)
        ):
            return
        self.write(value)
        self.last_written = self.device_value = value
        self.written_at = now
        self.clamp.accept(value, now)

    def _quantised(self, value: float) -> float:
        step = self.resolution
        if step <= 0:
            return value
        quantised = round(value / step) * step
        low, high = self.limits.minimum, self.limits.maximum
        if quantised < low:
            quantised = math.ceil(low / step - 1e-9) * step
        elif quantised > high:
            quantised = math.floor(high / step + 1e-9) * step
        return round(quantised, 9)


_LATENCY_STREAM = 0xCA95  # second word of the seed that draws the BMCs' write latencies


class CapWrites:
    """Power-cap writes in flight: each BMC applies a write its own latency after it was sent.

    The runner sets `now` before each tick (a write is sent at the tick's time) and lands the
    writes that are due as it advances the plant (`next_time`, `land`). A BMC's writes land in
    the order they were sent. Latency 0 lands at once.
    """

    def __init__(self, plant: RackPlant, latencies_s: Sequence[float]) -> None:
        self._plant = plant
        self.latencies_s = tuple(latencies_s)
        self._pending: list[tuple[float, int, int, float]] = []  # (due, order, server, watts)
        self._order = 0
        self.now = 0.0

    @classmethod
    def drawn(cls, plant: RackPlant, seed: int, latency_s: tuple[float, float]) -> CapWrites:
        """Each of the plant's servers a fixed latency, uniform in `latency_s`, from the seed."""
        low, high = latency_s
        rng = np.random.default_rng([seed, _LATENCY_STREAM])
        return cls(plant, rng.uniform(low, high, plant.n_servers).tolist())

    def send(self, server: int, watts: float) -> None:
        latency = self.latencies_s[server] if server < len(self.latencies_s) else 0.0
        if latency <= 0.0:
            self._plant.set_power_limit(server, watts)
            return
        self._order += 1
        heapq.heappush(self._pending, (self.now + latency, self._order, server, watts))

    def next_time(self) -> float:
        return self._pending[0][0] if self._pending else math.inf

    def land(self, now: float) -> None:
        """Apply every write due by `now`."""
        pending = self._pending
        while pending and pending[0][0] <= now + 1e-9:
            _, _, server, watts = heapq.heappop(pending)
            self._plant.set_power_limit(server, watts)


def _plant_writer(
    plant: RackPlant,
    point: PointId,
    servers: Mapping[str, int],
    caps: CapWrites | None,
    cdu: CduController | None = None,
) -> Callable[[float], None]:
    if cdu is not None and point.name in CDU_WRITABLE:
        name = point.name
        return lambda value: cdu.write(name, value)  # its own loops, or straight through
    if point.name == "pump_speed_command":
        return plant.set_pump_speed_command
    if point.name == "valve_command":
        return plant.set_valve_command
    if point.name == "power_limit" and point.device in servers:
        index = servers[point.device]
        if caps is not None:
            return lambda watts: caps.send(index, watts)
        return lambda watts: plant.set_power_limit(index, watts)
    if point.name == "server_power_command" and point.device in servers:
        index = servers[point.device]  # ComputerSystem.Reset: 0 graceful shutdown, 1 on
        return lambda value: plant.set_server_power(index, value >= 0.5)
    raise ScenarioError([f"{point}: the simulated rack cannot write this point"])


# ------------------------------------------------------------------------------ the run


TickHook = Callable[[Snapshot, float, float | None, Decision], None]
"""Sees each tick: the snapshot, the time, the budget in force and the supervisor's decision."""


@dataclass(slots=True)
class RunResult:
    """A finished run: its KPIs, its trace, and what happened on the way."""

    scenario: Scenario
    controller: str
    kpis: dict[str, float]
    trace: Trace
    events: list[tuple[float, ScenarioEvent]]  # scenario events as applied
    rack_events: list[Event]  # supervisor and allocator events, as the daemon would log them
    timing_s: dict[str, float]  # wall time by phase: plant, devices, control, rest
    first_error: str | None = None  # the first controller exception, if any


@dataclass(slots=True)
class _Timers:
    plant: float = 0.0
    devices: float = 0.0
    control: float = 0.0
    rest: float = 0.0


class SimRack:
    """The control side of one simulated rack: devices, store, actuators, and the rack step.

    `tick` calls the daemon's own step (`coolctl.rack.step.RackStep`, as `RackRuntime.tick`
    does); only the I/O around it is simulated: the snapshot comes from the simulated devices'
    polls, the commands go to `SimActuator`s that write into the plant at once.
    """

    def __init__(
        self,
        rack: RackConfig,
        factory: StackFactory[ControlStack],
        devices: Sequence[SimDevice],
        plant: RackPlant,
        facts: Mapping[str, DeviceFacts],
        budget_w: float | None,
        caps: CapWrites | None = None,
    ) -> None:
        self.rack = rack
        self.caps = caps  # None: cap writes land at once
        self.step = RackStep(rack, facts, factory)
        self.devices = list(devices)
        self.plant = plant
        self.sim_plant = SimPlant(plant)  # the CDU's own controller in front of the plant
        self.store = TelemetryStore()
        for device in rack.devices.values():
            self.store.register_device(rack.id, device.id, device.stale_after_s)
        self.budget_w = budget_w  # the scenario's; an upstream one (budget_point) wins
        self.mode: RackMode = RackMode.AUTO
        self.overrides: dict[PointId, Override] = {}
        self.controller_errors = 0  # controllers that raised, and commands refused
        self.first_error: str | None = None
        self.refused: list[Refused] = []
        self.events: list[Event] = []
        self.decision: Decision | None = None
        self.step_times_s: list[float] = []
        servers = {
            d.name: int(d.plant_device[6:]) for d in devices if d.plant_device[:6] == "server"
        }
        self.actuators: dict[PointId, SimActuator] = {}
        for safety in self.supervisor.config.actuators:
            point = safety.point
            spec = facts[point.device].writable[point.name]
            self.actuators[point] = SimActuator(
                ActuatorLimits(safety.hard_minimum, safety.hard_maximum),
                spec.resolution,
                _plant_writer(plant, point, servers, caps, self.sim_plant.cdu),
            )

    @property
    def controller(self) -> AutoController:
        return self.step.stack.controller

    @property
    def allocator(self) -> CapAllocator | None:
        return self.step.stack.allocator

    @property
    def supervisor(self) -> Supervisor:
        return self.step.stack.supervisor

    @property
    def power_budget_w(self) -> float | None:
        """The budget in force: an upstream coordinator's (`budget_point`), else the scenario's."""
        return self.step.budget_w(self.budget_w)

    def poll(self, now: float, links_down: frozenset[str]) -> None:
        """Poll every device that is due at `now`."""
        for device in self.devices:
            if now + 1e-9 >= device.next_due_s:
                if device.phantom:
                    self.plant.readings(device.plant_device)
                else:
                    self.store.update(device.poll(self.sim_plant, now, device.name in links_down))
                periods = math.floor((now - device.next_due_s) / device.interval_s + 1e-9) + 1
                device.next_due_s += periods * device.interval_s

    def start_up(self, now: float) -> None:
        """`RackRuntime.start_up`: failsafe outputs unless every required reading is there."""
        if self.caps is not None:
            self.caps.now = now
        result = self.step.start_up(self.store.snapshot(now, self.rack.id), now)
        if result is not None:
            self._apply(result, now)

    def tick(self, now: float) -> tuple[Snapshot, Decision]:
        """One control step: snapshot → the rack step → actuators."""
        if self.caps is not None:
            self.caps.now = now
        snapshot = self.store.snapshot(now, self.rack.id)
        for point, value, sampled_at in self.step.readbacks(snapshot):
            self.actuators[point].observe(value, now, sampled_at)
        started = time.thread_time()  # CPU time: a busy machine must not inflate the p99
        result = self.step.step(
            snapshot, now, mode=self.mode, budget_w=self.budget_w, overrides=self.overrides
        )
        self.step_times_s.append(time.thread_time() - started)
        self._apply(result, now)
        return snapshot, result.decision

    def _apply(self, result: StepResult, now: float) -> None:
        """`RackRuntime._apply`, with the daemon's logs kept as counts and the first error."""
        self.decision = result.decision
        error = result.error
        if error is not None:
            self.controller_errors += 1
            if self.first_error is None:
                self.first_error = f"t={now:g} s: {type(error).__name__}: {error}"
        self.controller_errors += len(result.refused)
        self.refused.extend(result.refused)
        for command in result.commands:
            actuator = self.actuators.get(command.point)
            if actuator is not None:
                actuator.submit(command, now)
        self.events.extend(result.events)


def _supply_setpoint_in_force(controller: AutoController) -> float | None:
    """The supply loop's setpoint now (an override or a chip boost moves it), if it has one."""
    loops = getattr(controller, "loops", None)
    if not isinstance(loops, Mapping):
        return None
    for loop in loops.values():
        spec = getattr(loop, "spec", None)
        if (
            spec is not None
            and spec.measurement_subtrahend is None
            and spec.measurement.name == "supply_temperature"
        ):
            return float(loop.setpoint)
    return None


def _min_caps_w(rack: RackConfig, scenario: Scenario) -> float | None:
    """The sum of the server caps' minimums, each no lower than the plant's servers can be
    capped (None: the rack has no server caps)."""
    floor = scenario.plant.power_limit_min_w
    minimums = [
        max(device.cap_min_w, floor)
        for device in rack.devices.values()
        if isinstance(device, RedfishDeviceConfig) and device.kind == DeviceKind.SERVER
    ]
    return math.fsum(minimums) if minimums else None


def _plant_points(scenario: Scenario) -> dict[str, tuple[str, ...]]:
    """What each plant device reports, from a throwaway plant (the run's own keeps its noise)."""
    probe = SimPlant(RackPlant(scenario.plant, seed=scenario.seed))
    names = ["cdu", "pdu", "room", *(f"server{i}" for i in range(probe.plant.n_servers))]
    return {name: tuple(probe.readings(name)) for name in names}


def _check_events(
    scenario: Scenario, full: RackConfig, plant_points: Mapping[str, Sequence[str]]
) -> tuple[dict[str, str], list[SimDevice]]:
    """Check the events' device names against the full rack (the fixed baseline's has no BMCs,
    but a BMC's link loss is a no-op for it, not an error). Returns the names sensor faults may
    use, mapped to the plant's devices, and the full rack's simulated devices."""
    every = sim_devices(full, plant_points)
    # sensor faults act on the plant's sensor model, which MQTT devices do not go through
    sensor_names = {
        d.name: d.plant_device
        for d in every
        if not isinstance(full.devices[d.name], MqttDeviceConfig)
    }
    cdus = [name for name, plant_device in sensor_names.items() if plant_device == "cdu"]
    links = [d.name for d in every]
    problems = scenario.check_devices(full.id, sensor_names, links, cdus, plant_points)
    if problems:
        raise ScenarioError(problems)
    return sensor_names, every


def validate_scenario(scenario: Scenario) -> None:
    """Everything `run_scenario` checks before it runs, for every controller: its rack config,
    the devices the runner must simulate, the events' devices and points. ScenarioError."""
    plant_points = _plant_points(scenario)
    sim_devices(rack_config(scenario, "fixed"), plant_points)
    _check_events(scenario, rack_config(scenario, "pid"), plant_points)


def run_scenario(
    scenario: Scenario,
    controller: str = "pid",
    *,
    factory: ControllerFactory | None = None,
    fixed_pump_speed: float = 1.0,
    model_path: Path | None = None,
    on_tick: TickHook | None = None,
) -> RunResult:
    """Run `scenario` with `controller`; see the module docstring for what happens per tick.

    `factory` replaces the controller's own (tests, benchmarks); `on_tick` sees every tick's
    snapshot, time and decision (the test that the runner decides as the daemon does).
    """
    build = factory if factory is not None else controller_factory(controller)
    rack = rack_config(scenario, controller, fixed_pump_speed)
    facts: dict[str, DeviceFacts] = {d.id: device_facts(d) for d in rack.devices.values()}
    plant_points = _plant_points(scenario)
    # The full rack's devices are all read, in its order, even those this controller's rack
    # lacks (the fixed baseline's BMCs): the plant's sensors draw their noise from one stream,
    # so every controller then sees the same noise on the same readings.
    full = rack if controller != "fixed" else rack_config(scenario, "pid")
    sensor_names, devices = _check_events(scenario, full, plant_points)
    for device in devices:
        device.phantom = device.name not in rack.devices
    plant = RackPlant(scenario.plant, seed=scenario.seed)
    player = ScenarioPlayer(scenario, plant, sensor_names)
    try:
        if controller == "mpc" and factory is None and model_path is None:
            model_path = default_mpc_model(scenario)
        stack = build(rack, facts, model_path)
    except ValueError as exc:  # the MPC's contract: a model that is missing or does not fit
        if controller != "mpc" or factory is not None:
            raise
        raise ControllerUnavailable(f"the MPC cannot run: {exc}") from exc
    caps = CapWrites.drawn(plant, scenario.seed, scenario.rack.cap_write_latency_s)
    sim = SimRack(rack, lambda _rack, _facts: stack, devices, plant, facts, scenario.budget_w, caps)
    ticks, period = scenario.ticks, scenario.period_s
    recorder = Recorder(
        ticks,
        period,
        scenario.warmup_s,
        supply_setpoint(scenario, rack),
        scenario.limits,
        scenario.plant.pump_rated_flow_lpm,
        min_caps_w=_min_caps_w(rack, scenario) if stack.allocator is not None else None,
        load_steps_s=[e.at_s for e in scenario.events if e.kind == "load"],
    )
    recorder.trace.throttle_c = scenario.plant.throttle_temperature_c
    recorder.trace.caps = stack.allocator is not None
    timers = _Timers()
    clock = time.perf_counter
    wall_start = clock()
    player.apply(0.0)
    sim.poll(0.0, player.links_down)
    sim.start_up(0.0)
    sim_s = 0.0
    for k in range(ticks):
        now = k * period
        t0 = clock()
        sim.poll(now, player.links_down)
        t1 = clock()
        sim.budget_w = player.budget_w
        snapshot, decision = sim.tick(now)
        t2 = clock()
        budget_w = sim.power_budget_w
        if on_tick is not None:
            on_tick(snapshot, now, budget_w, decision)
        recorder.sample(
            k,
            now,
            plant.truth(),
            budget_w,
            decision.failsafe,
            bool(decision.interlocks),
            _supply_setpoint_in_force(sim.controller),
        )
        t3 = clock()
        end = (k + 1) * period
        while (due := min(player.next_time(), caps.next_time())) < end - 1e-9:
            sim.sim_plant.cdu.advance(max(0.0, due - sim_s))  # the plant, with the CDU's loops
            sim_s = max(sim_s, due)
            player.apply(due)
            caps.land(due)
        sim.sim_plant.cdu.advance(end - sim_s)
        sim_s = end
        player.apply(end)
        caps.land(end)
        t4 = clock()
        timers.devices += t1 - t0
        timers.control += t2 - t1
        timers.rest += t3 - t2
        timers.plant += t4 - t3
    wall_s = clock() - wall_start
    kpis = recorder.kpis(
        plant.truth(), sim.step_times_s, wall_s, ticks * period, sim.controller_errors
    )
    extra = getattr(sim.controller, "kpis", None)
    if callable(extra):
        kpis.update({str(k): float(v) for k, v in extra().items()})
    return RunResult(
        scenario=scenario,
        controller=controller,
        kpis=kpis,
        trace=recorder.trace,
        events=list(player.applied),
        rack_events=sim.events,
        timing_s={
            "plant": timers.plant,
            "devices": timers.devices,
            "control": timers.control,
            "record": timers.rest,
            "total": wall_s,
        },
        first_error=sim.first_error,
    )
