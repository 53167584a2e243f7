"""A simulated CDU controller: the CDU's own loops, modes, local/remote, alarms and room sensors.

Commercial CDUs run their own loops: the pump on a flow (or differential-pressure) setpoint,
the primary valve on a supply-temperature setpoint, and they take those setpoints, a run
command and a mode from a building management system or a rack manager. This module is that
controller, sitting between a plant (`coolctl.simulators.plant.RackPlant`) and the protocol
front-ends that serve the CDU (Modbus, Redfish): they read `read_points()` and hand writes to
`write()`; the simulation advances the plant through `advance()`, which steps the loops.

`MANUAL` is coolctl's direct control: writes to `pump_speed_command` and `valve_command` go
straight to the plant, as the simulated CDU has always done, and it is the starting mode unless
the data (`CduControllerParams`, a `[cdu]` table) says otherwise. In the `AUTO_*` modes the
CDU's loops own the pump and valve, and direct writes are refused. `LOCAL` is not a mode one
writes: it is what the mode reads while the panel has control (`set_remote(False)`), and then
every remote write is refused, as a real CDU locked in local does (an exception code over
Modbus).

Alarms latch: an alarm whose condition was seen reads 1 until it has been acknowledged
(`alarm_acknowledge` = 1) with its condition clear. `alarm_word` packs them, bit N for
`ALARMS[N]`, for register maps that serve a status word.

No clock reads: time advances only by `advance(dt)`, so the offline runner and the live
simulation drive it the same way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from coolctl.model import CduControlMode
from coolctl.simulators.plant import PlantTruth, dew_point_c

ALARMS: tuple[str, ...] = (
    "filter_clogged_alarm",
    "low_level_alarm",
    "conductivity_alarm",
    "ph_alarm",
    "high_pressure_alarm",
    "low_pressure_alarm",
    "pump_1_fault",
    "dew_point_alarm",
    "sensor_fault_alarm",
)
"""The alarms, in the order of their bits in `alarm_word`."""

SETPOINTS: tuple[str, ...] = (
    "supply_temperature_setpoint",
    "flow_setpoint",
    "differential_pressure_setpoint",
)

CDU_WRITABLE: frozenset[str] = frozenset(
    {
        *SETPOINTS,
        "cdu_run_command",
        "cdu_control_mode",
        "alarm_acknowledge",
        "isolation_valve_command",
        "pump_speed_command",
        "valve_command",
    }
)
"""What a remote client may write to the CDU (in the right mode, while it is remote)."""

_AUTO = (
    CduControlMode.AUTO_FLOW,
    CduControlMode.AUTO_PRESSURE,
    CduControlMode.AUTO_FLOW_TEMPERATURE,
)
_WRITABLE_MODES = (CduControlMode.STOPPED, CduControlMode.MANUAL, *_AUTO)


class Plant(Protocol):
    """What the controller needs of the plant (`RackPlant` has it)."""

    def cdu_readings(self) -> dict[str, float]: ...

    def truth(self) -> PlantTruth: ...

    def set_pump_speed_command(self, ratio: float) -> None: ...

    def set_valve_command(self, ratio: float) -> None: ...

    def advance(self, duration_s: float) -> None: ...

    def room_readings(self) -> dict[str, float]: ...


@dataclass(frozen=True, slots=True)
class CduControllerParams:
    """The simulated CDU controller's data: starting state, setpoint ranges, loop gains and
    clamps, alarm thresholds, the room around it. Units are in the names."""

    mode: str = "manual"  # starting mode: a CduControlMode name (not local)
    remote: bool = True  # False: the panel has control from the start
    run: bool = True
    supply_setpoint_c: float = 35.0
    flow_setpoint_lpm: float = 160.0
    differential_pressure_setpoint_pa: float = 100_000.0
    supply_setpoint_min_c: float = 18.0
    supply_setpoint_max_c: float = 50.0
    flow_setpoint_min_lpm: float = 20.0
    flow_setpoint_max_lpm: float = 200.0
    differential_pressure_setpoint_min_pa: float = 10_000.0
    differential_pressure_setpoint_max_pa: float = 200_000.0
    control_period_s: float = 0.1  # the CDU's own loop period
    pump_min: float = 0.2  # clamps of the CDU's own loops
    pump_max: float = 1.0
    valve_min: float = 0.05
    valve_max: float = 1.0
    # pump on flow (per L/min), on ΔP (per Pa); valve on supply temperature (per K, direct:
    # warmer opens), incremental PI so that taking over from manual is bumpless
    flow_kp: float = 0.002
    flow_ki_per_s: float = 0.004
    pressure_kp: float = 2.0e-6
    pressure_ki_per_s: float = 4.0e-6
    supply_kp: float = 0.5
    supply_ki_per_s: float = 0.05
    # alarm thresholds
    low_level_l: float = 8.0
    high_pressure_pa: float = 220_000.0
    low_pressure_pa: float = 5_000.0

    def __post_init__(self) -> None:
        if self.mode.upper() not in CduControlMode.__members__ or self.mode.upper() == "LOCAL":
            names = ", ".join(m.name.lower() for m in _WRITABLE_MODES)
            raise ValueError(f"cdu mode {self.mode!r} is not one of {names}")
        for name, value in dataclasses.asdict(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"cdu parameter {name} must be finite, got {value!r}")
        if self.control_period_s <= 0:
            raise ValueError("cdu parameter control_period_s must be > 0")
        for low, high in (
            ("pump_min", "pump_max"),
            ("valve_min", "valve_max"),
            ("supply_setpoint_min_c", "supply_setpoint_max_c"),
            ("flow_setpoint_min_lpm", "flow_setpoint_max_lpm"),
            ("differential_pressure_setpoint_min_pa", "differential_pressure_setpoint_max_pa"),
        ):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"cdu parameters: {low} must not exceed {high}")

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> CduControllerParams:
        """Defaults overridden by `values` (a `[cdu]` table); unknown keys are errors."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, object] = {}
        for key, value in values.items():
            spec = known.get(key)
            if spec is None:
                raise ValueError(f"unknown cdu parameter {key!r}")
            if spec.type in ("float", float):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"cdu parameter {key} must be a number, got {value!r}")
                kwargs[key] = float(value)
            elif spec.type in ("bool", bool):
                if not isinstance(value, bool):
                    raise ValueError(f"cdu parameter {key} must be true or false")
                kwargs[key] = value
            else:
                kwargs[key] = str(value)
        return cls(**kwargs)  # type: ignore[arg-type]


def _sensed(truth: PlantTruth) -> dict[str, float]:
    """What the CDU controller's own instruments show of the plant."""
    return {
        "supply_temperature": truth.supply_temperature_c,
        "flow": truth.flow_lpm,
        "differential_pressure": truth.differential_pressure_pa,
        "pump_speed": truth.pump_speed,
        "pump_speed_command": truth.pump_speed_command,
        "pump_running": float(truth.pump_running),
        "reservoir_level": truth.reservoir_level_l,
    }


@dataclass(slots=True)
class _Pi:
    """Incremental PI: u += kp·Δe + ki·e·dt, clamped; starts from the actuator as it is."""

    kp: float
    ki_per_s: float
    last_error: float | None = None

    def step(self, output: float, error: float, dt: float, low: float, high: float) -> float:
        previous = error if self.last_error is None else self.last_error
        self.last_error = error
        value = output + self.kp * (error - previous) + self.ki_per_s * error * dt
        return min(max(value, low), high)


@dataclass(slots=True)
class _Alarm:
    condition: bool = False  # seen now
    forced: bool = False  # injected (filter, conductivity, pH, sensor: no model behind them)
    latched: bool = False


class CduController:
    """The CDU's own controller over one plant; see the module docstring."""

    def __init__(self, plant: Plant, params: CduControllerParams | None = None) -> None:
        self.plant = plant
        self.params = p = params if params is not None else CduControllerParams()
        self.writes_refused = 0  # remote writes the CDU refused
        self._remote = p.remote
        self._mode = CduControlMode[p.mode.upper()]
        self._run = p.run
        self._isolation_open = True  # the rack's isolation valves (CoolantConnector.ValveControl)
        self._setpoints: dict[str, float] = {
            "supply_temperature_setpoint": p.supply_setpoint_c,
            "flow_setpoint": p.flow_setpoint_lpm,
            "differential_pressure_setpoint": p.differential_pressure_setpoint_pa,
        }
        self._ranges: dict[str, tuple[float, float]] = {
            "supply_temperature_setpoint": (p.supply_setpoint_min_c, p.supply_setpoint_max_c),
            "flow_setpoint": (p.flow_setpoint_min_lpm, p.flow_setpoint_max_lpm),
            "differential_pressure_setpoint": (
                p.differential_pressure_setpoint_min_pa,
                p.differential_pressure_setpoint_max_pa,
            ),
        }
        self._pump_pi = _Pi(p.flow_kp, p.flow_ki_per_s)
        self._valve_pi = _Pi(p.supply_kp, p.supply_ki_per_s)
        self._pump = 0.0
        self._valve = 0.0
        self._alarms = {name: _Alarm() for name in ALARMS}
        self._acknowledged = 0.0
        self._pending_s = 0.0
        self._room_override: tuple[float, float] | None = None  # set_room: not the plant's air
        # the last auto mode: what the panel runs on when it takes control
        self._local_mode = self._mode if self._mode in _AUTO else CduControlMode.AUTO_FLOW
        truth = self.plant.truth()
        self._pump = truth.pump_speed_command
        self._valve = truth.valve_command

    # -- what it shows -----------------------------------------------------------------------

    @property
    def mode(self) -> CduControlMode:
        """The mode as the CDU reports it: LOCAL while the panel has control."""
        return self._mode if self._remote else CduControlMode.LOCAL

    @property
    def remote(self) -> bool:
        return self._remote

    @property
    def running(self) -> bool:
        return (
            self._run
            and self._isolation_open
            and self._effective_mode() is not CduControlMode.STOPPED
        )

    def setpoint(self, name: str) -> float:
        return self._setpoints[name]

    def setpoint_range(self, name: str) -> tuple[float, float]:
        return self._ranges[name]

    @property
    def alarm_word(self) -> int:
        """Bit N set while alarm ALARMS[N] reads active."""
        return sum(1 << i for i, name in enumerate(ALARMS) if self._alarm_value(name))

    def read_points(self) -> dict[str, float]:
        """The plant's CDU readings and the controller's own points."""
        values = self.plant.cdu_readings()
        values.update(self._setpoints)
        values["cdu_run_command"] = float(self._run)
        values["isolation_valve_command"] = float(self._isolation_open)
        values["cdu_remote"] = float(self._remote)
        values["cdu_control_mode"] = float(self.mode)
        values["alarm_acknowledge"] = self._acknowledged
        values.update({name: float(self._alarm_value(name)) for name in ALARMS})
        values["alarm_word"] = float(self.alarm_word)
        room_c, room_rh = self._room()
        values["room_temperature"] = room_c
        values["room_humidity"] = room_rh
        values["dew_point"] = dew_point_c(room_c, room_rh)
        return values

    # -- remote writes -----------------------------------------------------------------------

    def write(self, name: str, value: float) -> None:
        """A remote write; ValueError when the CDU refuses it (counted in `writes_refused`)."""
        try:
            self._write(name, value)
        except ValueError:
            self.writes_refused += 1
            raise

    def _write(self, name: str, value: float) -> None:
        if not math.isfinite(value):
            raise ValueError(f"{name}: {value!r} is not a number")
        if not self._remote:
            raise ValueError(f"{name}: the CDU is in local control (its panel); remote refused")
        if name in self._setpoints:
            low, high = self._ranges[name]
            if not low <= value <= high:
                raise ValueError(f"{name} {value:g} outside {low:g}..{high:g}")
            self._setpoints[name] = value
        elif name == "cdu_run_command":
            self._run = value >= 0.5
            self._apply_outputs()
        elif name == "isolation_valve_command":
            self._isolation_open = value >= 0.5  # closed: the pumps stop (nowhere to pump)
            self._apply_outputs()
        elif name == "cdu_control_mode":
            code = round(value)
            if code != value or code not in {int(m) for m in _WRITABLE_MODES}:
                raise ValueError(f"cdu_control_mode {value:g} is not a mode one can write")
            self._set_mode(CduControlMode(code))
        elif name == "alarm_acknowledge":
            self._acknowledged = 1.0 if value >= 0.5 else 0.0
            if value >= 0.5:
                self.acknowledge()
        elif name in ("pump_speed_command", "valve_command"):
            if self._mode is not CduControlMode.MANUAL:
                raise ValueError(
                    f"{name}: the CDU is in {self._mode.name.lower()} mode; its own loops"
                    " drive the pump and valve (write cdu_control_mode = MANUAL first)"
                )
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} {value:g} outside 0..1")
            if name == "pump_speed_command":
                self._pump = value
                self.plant.set_pump_speed_command(value if self._run else 0.0)
            else:
                self._valve = value
                self.plant.set_valve_command(value)
        else:
            raise ValueError(f"{name} is not writable on the CDU")

    def _set_mode(self, mode: CduControlMode) -> None:
        if mode in _AUTO and self._mode not in _AUTO:
            self._pump_pi.last_error = None  # bumpless: the loops start from where things are
            self._valve_pi.last_error = None
        self._mode = mode
        if mode in _AUTO:
            self._local_mode = mode
        self._apply_outputs()

    # -- the panel and injected conditions ---------------------------------------------------

    def set_remote(self, remote: bool) -> None:
        """The panel's local/remote switch. Going local, the CDU keeps running its own loops
        on the setpoints it holds (in its last auto mode)."""
        if remote == self._remote:
            return
        self._remote = remote
        if not remote and self._mode not in _AUTO:
            self._pump_pi.last_error = None
            self._valve_pi.last_error = None

    def set_room(self, temperature_c: float, humidity: float) -> None:
        if not (math.isfinite(temperature_c) and 0.0 <= humidity <= 1.0):
            raise ValueError("room temperature must be finite and humidity within 0..1")
        self._room_override = (temperature_c, humidity)

    def _room(self) -> tuple[float, float]:
        """The air its room sensors read: the plant's room, unless set_room said otherwise."""
        if self._room_override is not None:
            return self._room_override
        air = self.plant.room_readings()
        return air["room_temperature"], air["room_humidity"]

    def force_alarm(self, name: str, active: bool = True) -> None:
        """Raise (or clear the cause of) an alarm that has no model behind it."""
        if name not in self._alarms:
            raise ValueError(f"unknown alarm {name!r}; known: {', '.join(ALARMS)}")
        alarm = self._alarms[name]
        alarm.forced = active
        if active:
            alarm.latched = True

    def acknowledge(self) -> list[str]:
        """Clear every latched alarm whose condition is gone; the names cleared."""
        cleared = []
        for name, alarm in self._alarms.items():
            if alarm.latched and not (alarm.condition or alarm.forced):
                alarm.latched = False
                cleared.append(name)
        return cleared

    # -- time --------------------------------------------------------------------------------

    def advance(self, duration_s: float) -> None:
        """Advance the plant by exactly `duration_s`, stepping the CDU's loops at every
        boundary of its control period on the way (the plant keeps the caller's clock)."""
        if not (math.isfinite(duration_s) and duration_s >= 0.0):
            raise ValueError(f"duration must be finite and >= 0, got {duration_s!r}")
        period = self.params.control_period_s
        remaining = duration_s
        while self._pending_s + remaining >= period - 1e-12:
            to_boundary = min(remaining, max(0.0, period - self._pending_s))
            self.plant.advance(to_boundary)
            remaining -= to_boundary
            self._pending_s = 0.0
            self.step(period)
        self.plant.advance(remaining)
        self._pending_s += remaining

    def step(self, dt: float) -> None:
        """One control period of the CDU's loops and alarm logic, on the plant as it is.

        The CDU's own instruments read the plant's state without the noise of the sensors
        coolctl reads: the controller draws nothing from the sensor model, so the readings
        coolctl sees are the same stream with or without it."""
        readings = _sensed(self.plant.truth())
        mode = self._effective_mode()
        p = self.params
        if mode in _AUTO and self.running:
            if mode is CduControlMode.AUTO_PRESSURE:
                self._pump_pi.kp, self._pump_pi.ki_per_s = p.pressure_kp, p.pressure_ki_per_s
                measured, target = "differential_pressure", "differential_pressure_setpoint"
            else:
                self._pump_pi.kp, self._pump_pi.ki_per_s = p.flow_kp, p.flow_ki_per_s
                measured, target = "flow", "flow_setpoint"
            pump_error = self._setpoints[target] - readings[measured]
            start = max(self._pump, p.pump_min)
            self._pump = self._pump_pi.step(start, pump_error, dt, p.pump_min, p.pump_max)
            supply_error = (
                readings["supply_temperature"] - self._setpoints["supply_temperature_setpoint"]
            )
            self._valve = self._valve_pi.step(
                self._valve, supply_error, dt, p.valve_min, p.valve_max
            )
        if mode is not CduControlMode.MANUAL or not self.running:
            self._apply_outputs()  # manual: the last direct writes stand as they were applied
        self._update_alarms(readings)

    def _effective_mode(self) -> CduControlMode:
        return self._mode if self._remote else self._local_mode

    def _apply_outputs(self) -> None:
        mode = self._effective_mode()
        stopped = not self._run or not self._isolation_open or mode is CduControlMode.STOPPED
        self.plant.set_pump_speed_command(0.0 if stopped else self._pump)
        self.plant.set_valve_command(self._valve)

    def _update_alarms(self, readings: Mapping[str, float]) -> None:
        p = self.params
        dp = readings.get("differential_pressure", 0.0)
        commanded = readings.get("pump_speed_command", 0.0) > 0.0
        conditions = {
            "low_level_alarm": readings.get("reservoir_level", math.inf) < p.low_level_l,
            "high_pressure_alarm": dp > p.high_pressure_pa,
            "low_pressure_alarm": commanded
            and readings.get("pump_speed", 0.0) > 0.5 * p.pump_min
            and dp < p.low_pressure_pa,
            "pump_1_fault": commanded and readings.get("pump_running", 1.0) < 0.5,
            "dew_point_alarm": readings.get("supply_temperature", math.inf)
            <= dew_point_c(*self._room()),
        }
        for name, alarm in self._alarms.items():
            alarm.condition = conditions.get(name, False)
            if alarm.condition or alarm.forced:
                alarm.latched = True
        if self._acknowledged and not any(a.latched for a in self._alarms.values()):
            self._acknowledged = 0.0

    def _alarm_value(self, name: str) -> bool:
        alarm = self._alarms[name]
        return alarm.latched or alarm.condition or alarm.forced
