"""The reference rack plant: 18 servers, a CDU loop, a heat exchanger to facility water.

This implements `PLANT.md` (shared with the design notes). Plant time is an argument: the plant
never reads a clock, and with the same seed and the same calls it gives the same trajectory.

Loop layout, following the coolant round the loop within one internal step:

    CDU volume (supply, well mixed, exchanger removes heat)
      -> N parallel cold plates (small mixed volumes, server heat goes in)
      -> return pipe (plug flow, V_pipe: the transport delay)
      -> back into the CDU volume

Every thermal element is updated with the enthalpy flows that the element upstream handed on in
the same step, so the discrete energy balance closes to rounding error; `PlantTruth` reports it.

Where this deviates from PLANT.md, and why:

- Exchanger UA is 29 kW/K at rated flows, not ~27: with PLANT.md's own coolant properties and
  exactly 200 / 250 L/min, 27 kW/K gives T_supply 33.1 / T_return 41.1 degC at full load, just
  outside the 32-33 / 40-41 band PLANT.md asks to check; 29 kW/K gives 32.8 / 40.9.
- UA's flow scaling is done as two film resistances in series, half of 1/UA each at rated
  flows, each scaling with its side's flow^-0.8; so UA falls to zero when either side stops.
- The 10-20 s supply lag is the residence time of the CDU's mixed volume (loop volume minus
  pipe minus cold plates, 34.6 L: 10.4 s at rated flow, longer at low flow), not a fixed lag:
  a fixed lag would create or destroy heat when flow changes.
- Each cold plate holds 0.3 L of coolant, so heat has somewhere to go at zero flow; in steady
  state the outlet is PLANT.md's T_out = T_supply + f_liq*P/(m_dot*cp).
- Chip target is max(T_supply + P*R_cp(q), T_outlet + P*R0): PLANT.md's formula while coolant
  flows, and never cooler than the coolant standing in its cold plate when it does not. R_cp's
  flow is floored at `cold_plate_min_flow_lpm` so it stays finite at zero flow.
- Heat into the coolant is f_liq*P at once; the chip lag delays the chip temperature only (a
  chip's own heat capacity, ~1 kJ/K, is negligible beside the loop's 240 kJ/K).
- tau_chip is the chip lag at rated flow; at other flows it scales with R_cp(q)/R_cp(rated), as
  a heat capacity discharging through R_cp does. With a fixed lag, a pump trip sent chips toward
  a ~2000 degC stagnant-flow target at ~270 K/s and throttled them 40 ms after the trip; now
  they warm at about P*R_cp(rated)/tau_chip (6 K/s) and throttle some 2-3 s after it.
- Hardware throttling holds the chip at T_throttle: a server cuts power just enough that its
  chip does not pass T_throttle within the step, down to `throttle_floor_w` (0 W: thermal
  shutdown). Real GPUs throttle in milliseconds, far below the 0.1 s step.
- Pump heat is not added to the coolant (0.5 kW hydraulic at rated, under 0.5 % of full load).
- A leak lowers the reservoir level only; thermal masses stay as configured.
- The primary valve is slew-limited (`valve_stroke_s` for full travel); PLANT.md is silent, but
  a valve command is not a valve position.
- The standby pump shares one speed state with the duty pump: during the changeover the speed
  runs down, then follows the command with tau_pump from where it is. Degradation applies to the
  duty pump only.
- Power limits are clamped to [`power_limit_min_w`, `server_max_w`] (idle by default: a cap
  cannot push a server below idle).
- A server shut down gracefully (`set_server_power(i, False)`, its BMC's ComputerSystem.Reset)
  keeps drawing what it drew for `server_shutdown_s` while its OS stops (PoweringOff), then
  only `server_standby_w` (its BMC and fans' standby power) until it is powered on again, at
  once (coolctl never does that by itself).
- Numbers PLANT.md leaves open: PDU overhead 800 W; reservoir 20 L, pump starts to cavitate at
  5 L and has no head left 1 L lower; the leak detector is wet once 50 mL have leaked and dries
  when the leak is stopped; cold-plate resistance is 60 % flow-dependent film at rated flow.
- `step_s` is the largest internal step; a parameter set whose fastest time constant is under
  ten steps (few servers, small cold plates) gets it divided into equal sub-steps.
- Throttled energy is demand above the cap in force, plus what thermal throttling cut from the
  cap-lagged power; the cap lag itself after a load step is not counted.

What PLANT.md leaves out, and the plant adds so that it does not flatter the controllers:

- Sensor lag: `sensor_lag_s` (a `[plant]` table, e.g. `sensor_lag_s = { supply_temperature =
  20.0 }`) gives a measured point a first-order lag, a thermowell or a slow transmitter; it acts
  on that point of every device that has it (`chip_temperature`: every server), before noise
  and faults, and never on `truth()`. Default: no lag (PLANT.md gives none).
- The primary valve: `valve_position` is the stem; the flow it passes follows an inherent
  characteristic (R^x - 1)/(R - 1) with rangeability `valve_rangeability` (1: linear, the
  default; ~50: equal percentage, what control valves usually have), installed with authority
  `valve_authority` N (share of the primary's pressure drop the open valve takes; 1, the
  default, means the characteristic is what the loop gets): Q/Q_max = 1/sqrt(1 - N + N/f^2).
  `valve_stiction` is a deadband in stem travel: the stem stays put until the command is more
  than that away from it, then breaks away and travels (at the stroke speed) to the command.
  The defaults are today's linear, frictionless valve.
- Servers differ: each server's contact resistance (cold plate, TIM) is off by a fixed amount
  drawn once from the seed, uniform in +-`chip_spread_k` K at max power (3 K by default), from
  a stream of its own so that the sensors' noise does not change with it; and the cold plates
  do not share the flow equally: `server_flow_shares`, a linear gradient along the manifold
  from 1 + `flow_maldistribution` times the mean at server 0 to 1 - it at the last, summing
  to the loop flow. +-5 % by default (a well-balanced manifold): with +-10 % and the spread,
  the shipped load-step-up's hottest chip sits at 87 degC, hardware-throttling for 1770 of its
  3600 scored s under the demo rack's PID (160 L/min, 35 degC supply); with +-5 % it peaks at
  86.6 degC, with the spread alone at 85.8, with identical servers at 83.5.
- A leak's rate is given at rated loop pressure and scales with (dP/dP_rated)^0.5
  (`leak_pressure_exponent`, the orifice law; 0: a constant rate): a stopped pump stops it (the
  loop has no static head here), a cavitating pump slows it.

- The room: `room_temperature_c` and `room_humidity` (24 °C, 40 % by default: a dew point of
  9.6 °C) are the air around the rack, read by device `room` (`room_temperature`,
  `room_humidity`, `dew_point`); the KPIs count the time the supply spends under that dew point,
  where the pipes would sweat.

Servers are numbered from 0: `set_power_limit(0, ...)` and device `server0` are the same server.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from coolctl.model import ServerPowerState

from .sensors import SensorBank

FloatArray = npt.NDArray[np.float64]

_LPM_TO_LPS = 1.0 / 60.0
_SPREAD_STREAM = 0x5EED  # second word of the seed that draws the servers' spread


def dew_point_c(temperature_c: float, relative_humidity: float) -> float:
    """Dew point of air (Magnus formula, over water, the constants of Alduchov and Eskridge
    1996; within 0.4 K from -40 to 50 degC). The plant's own: simulators do not import the
    controller's (control/dewpoint.py)."""
    a, b = 17.625, 243.04
    gamma = math.log(max(relative_humidity, 1e-6)) + a * temperature_c / (b + temperature_c)
    return b * gamma / (a - gamma)


@dataclass(frozen=True, slots=True)
class PlantParams:
    """Every number of the plant, with PLANT.md's defaults; a scenario's `[plant]` table overrides.

    Units are in the names. Derived constants (R0, R1, pump curve coefficients, CDU volume) are
    properties so that overriding a rated point keeps the plant consistent.
    """

    # servers
    n_servers: int = 18
    server_idle_w: float = 1500.0
    server_max_w: float = 7000.0
    power_limit_min_w: float = 1500.0
    cap_tau_s: float = 1.0
    liquid_fraction: float = 0.85
    chip_tau_s: float = 7.0
    throttle_temperature_c: float = 87.0
    throttle_floor_w: float = 0.0
    chip_spread_k: float = 3.0
    server_standby_w: float = 20.0  # a server powered off: its BMC's standby power
    server_shutdown_s: float = 30.0  # a graceful shutdown: the OS stops for this long
    # cold plates: R_cp(q) = R0 + R1/q^exponent, calibrated at rated flow and max power
    chip_rated_temperature_c: float = 75.0
    chip_rated_supply_c: float = 32.0
    cold_plate_film_share: float = 0.6
    cold_plate_flow_exponent: float = 0.8
    cold_plate_min_flow_lpm: float = 0.05
    cold_plate_volume_l: float = 0.3
    flow_maldistribution: float = 0.05
    # coolant (PG25) and facility water
    coolant_density_kg_m3: float = 1025.0
    coolant_cp_j_per_kg_k: float = 3900.0
    facility_density_kg_m3: float = 997.0
    facility_cp_j_per_kg_k: float = 4180.0
    # loop
    loop_volume_l: float = 60.0
    pipe_volume_l: float = 20.0
    # pump: H = H0*s^2 - k_p*Q^2 against dP = k_sys*Q^2
    pump_rated_flow_lpm: float = 200.0
    pump_rated_pressure_pa: float = 150_000.0
    pump_shutoff_pressure_pa: float = 250_000.0
    pump_efficiency: float = 0.55
    pump_min_speed: float = 0.15
    pump_tau_s: float = 2.0
    pump_spindown_s: float = 1.0
    standby_pump: bool = False
    standby_changeover_s: float = 0.25
    # exchanger and primary side
    hx_ua_rated_w_per_k: float = 29_000.0
    hx_flow_exponent: float = 0.8
    primary_max_flow_lpm: float = 250.0
    valve_stroke_s: float = 10.0
    valve_rangeability: float = 1.0
    valve_authority: float = 1.0
    valve_stiction: float = 0.0
    facility_water_temperature_c: float = 30.0
    # reservoir
    reservoir_capacity_l: float = 20.0
    reservoir_min_level_l: float = 5.0
    cavitation_band_l: float = 1.0
    leak_detect_volume_l: float = 0.05
    leak_pressure_exponent: float = 0.5
    # PDU
    pdu_overhead_w: float = 800.0
    # the air around the rack: its dew point is where condensation starts on the pipes
    room_temperature_c: float = 24.0
    room_humidity: float = 0.4
    # initial state (the plant starts in the steady state of these)
    initial_load: float = 0.0
    initial_pump_speed: float = 1.0
    initial_valve: float = 1.0
    # integration: the largest internal step (see `_internal_step_s`)
    step_s: float = 0.1
    # sensor noise, one sigma
    temperature_noise_c: float = 0.05
    flow_noise_lpm: float = 0.5
    pressure_noise_pa: float = 300.0
    ratio_noise: float = 0.001
    pump_power_noise_w: float = 5.0
    heat_noise_w: float = 500.0
    level_noise_l: float = 0.05
    server_power_noise_w: float = 10.0
    pdu_power_noise_w: float = 50.0
    # sensor lag: (point, time constant in s) pairs; a `[plant]` table gives it as a table,
    # e.g. `sensor_lag_s = { supply_temperature = 20.0 }`
    sensor_lag_s: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.sensor_lag_s, Mapping):
            lags = tuple(sorted(self.sensor_lag_s.items()))
            object.__setattr__(self, "sensor_lag_s", lags)
        _validate(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> PlantParams:
        """Defaults overridden by `values` (a `[plant]` TOML table); unknown keys are errors."""
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs: dict[str, object] = {}
        for key, value in values.items():
            if key not in kinds:
                raise ValueError(f"unknown plant parameter {key!r}")
            if key == "sensor_lag_s":
                kwargs[key] = _lags(value)
                continue
            kwargs[key] = _coerce(key, str(kinds[key]), value)
        return cls(**kwargs)  # type: ignore[arg-type]

    @property
    def server_flow_shares(self) -> tuple[float, ...]:
        """Each cold plate's share of the loop flow: a linear gradient along the manifold,
        server 0 (nearest the CDU) getting 1 + `flow_maldistribution` times the mean, the last
        1 - `flow_maldistribution`; the shares sum to 1."""
        n = self.n_servers
        if n == 1:
            return (1.0,)
        m = self.flow_maldistribution
        return tuple((1.0 + m * (1.0 - 2.0 * i / (n - 1))) / n for i in range(n))

    @property
    def room_dew_point_c(self) -> float:
        """Dew point of the room air: supply under it wets the pipes."""
        return dew_point_c(self.room_temperature_c, self.room_humidity)

    @property
    def cdu_volume_l(self) -> float:
        """Mixed volume at the CDU: what is neither return pipe nor cold plate."""
        return self.loop_volume_l - self.pipe_volume_l - self.n_servers * self.cold_plate_volume_l

    @property
    def rated_server_flow_lpm(self) -> float:
        return self.pump_rated_flow_lpm / self.n_servers

    @property
    def cold_plate_r_rated_k_per_w(self) -> float:
        return (self.chip_rated_temperature_c - self.chip_rated_supply_c) / self.server_max_w

    @property
    def cold_plate_r0_k_per_w(self) -> float:
        """Conduction part of R_cp, independent of flow."""
        return (1.0 - self.cold_plate_film_share) * self.cold_plate_r_rated_k_per_w

    @property
    def cold_plate_r1(self) -> float:
        """Film part of R_cp at 1 L/min per server, in K/W * (L/min)^exponent."""
        film = self.cold_plate_film_share * self.cold_plate_r_rated_k_per_w
        return film * math.pow(self.rated_server_flow_lpm, self.cold_plate_flow_exponent)

    @property
    def system_k_pa_per_lpm2(self) -> float:
        """k_sys of the system curve dP = k_sys*Q^2, through the rated point."""
        return self.pump_rated_pressure_pa / self.pump_rated_flow_lpm**2

    @property
    def pump_k_pa_per_lpm2(self) -> float:
        """k_p of the pump curve, so that the curves cross at the rated point at full speed."""
        return (
            self.pump_shutoff_pressure_pa - self.pump_rated_pressure_pa
        ) / self.pump_rated_flow_lpm**2


_POSITIVE = (
    "server_max_w", "cap_tau_s", "chip_tau_s", "coolant_density_kg_m3",
    "coolant_cp_j_per_kg_k", "facility_density_kg_m3", "facility_cp_j_per_kg_k",
    "loop_volume_l", "pipe_volume_l", "pump_rated_flow_lpm", "pump_rated_pressure_pa",
    "pump_tau_s", "pump_spindown_s", "hx_ua_rated_w_per_k", "hx_flow_exponent",
    "primary_max_flow_lpm", "valve_stroke_s", "reservoir_capacity_l", "cavitation_band_l",
    "cold_plate_flow_exponent", "cold_plate_min_flow_lpm", "cold_plate_volume_l", "step_s",
    "leak_detect_volume_l", "valve_rangeability",
)  # fmt: skip
_NON_NEGATIVE = (
    "server_idle_w", "power_limit_min_w", "throttle_floor_w", "standby_changeover_s",
    "reservoir_min_level_l", "pdu_overhead_w", "temperature_noise_c", "flow_noise_lpm",
    "pressure_noise_pa", "ratio_noise", "pump_power_noise_w", "heat_noise_w", "level_noise_l",
    "server_power_noise_w", "pdu_power_noise_w", "chip_spread_k", "leak_pressure_exponent",
    "server_standby_w", "server_shutdown_s",
)  # fmt: skip
_UNIT_INTERVAL = ("initial_load", "initial_pump_speed", "initial_valve", "valve_stiction")
_OPEN_FRACTIONS = (
    "liquid_fraction",
    "pump_efficiency",
    "valve_authority",
    "room_humidity",
)  # in (0, 1]  fmt: skip
# Points with a physical sensor behind them, which `sensor_lag_s` may slow down (commands,
# switches, caps and counters are not measured through a sensing element).
LAGGABLE_POINTS = frozenset(
    {
        "supply_temperature", "return_temperature", "flow", "differential_pressure",
        "pump_speed", "pump_power", "heat_removed", "reservoir_level",
        "facility_supply_temperature", "facility_return_temperature", "primary_flow",
        "valve_position", "power", "chip_temperature", "coolant_outlet_temperature",
    }
)  # fmt: skip


def _coerce(key: str, kind: str, value: object) -> object:
    """Check a `[plant]` value against its field's type; TOML integers are fine for floats."""
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"plant parameter {key!r} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"plant parameter {key!r} must be a number, got {value!r}")
    if kind == "int":
        if not isinstance(value, int):
            raise ValueError(f"plant parameter {key!r} must be an integer, got {value!r}")
        return value
    return float(value)


def _lags(value: object) -> tuple[tuple[str, float], ...]:
    """A `[plant] sensor_lag_s` table: point names to time constants in seconds (or the
    (point, seconds) pairs `PlantParams` holds them as, when a plant is rebuilt from another's
    fields: the MPC's step test on a scenario's plant)."""
    if isinstance(value, tuple) and all(
        isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) for pair in value
    ):
        value = dict(value)
    if not isinstance(value, Mapping):
        raise ValueError(
            f"plant parameter 'sensor_lag_s' must be a table of point = seconds, got {value!r}"
        )
    return tuple(
        (str(point), float(_coerce("sensor_lag_s", "float", tau)))  # type: ignore[arg-type]
        for point, tau in sorted(value.items())
    )


def _require(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ValueError(f"plant parameter {key!r} {why}")


def _validate(p: PlantParams) -> None:
    """Reject parameter sets that would make the plant unphysical or the integration unstable."""
    for f in dataclasses.fields(p):
        value = getattr(p, f.name)
        if isinstance(value, float):
            _require(math.isfinite(value), f.name, f"must be finite, got {value!r}")
    _require(p.n_servers >= 1, "n_servers", "must be at least 1")
    for key in _POSITIVE:
        _require(getattr(p, key) > 0.0, key, "must be > 0")
    for key in _NON_NEGATIVE:
        _require(getattr(p, key) >= 0.0, key, "must be >= 0")
    for key in _UNIT_INTERVAL:
        _require(0.0 <= getattr(p, key) <= 1.0, key, "must be within 0..1")
    for key in _OPEN_FRACTIONS:
        _require(0.0 < getattr(p, key) <= 1.0, key, "must be within (0, 1]")
    _require(0.0 < p.cold_plate_film_share < 1.0, "cold_plate_film_share", "must be within (0, 1)")
    _require(0.0 <= p.pump_min_speed < 1.0, "pump_min_speed", "must be within [0, 1)")
    _require(p.server_idle_w <= p.server_max_w, "server_idle_w", "must not exceed server_max_w")
    _require(p.power_limit_min_w <= p.server_max_w, "power_limit_min_w", "must not exceed max")
    _require(p.throttle_floor_w <= p.server_max_w, "throttle_floor_w", "must not exceed max")
    _require(
        p.pump_shutoff_pressure_pa > p.pump_rated_pressure_pa,
        "pump_shutoff_pressure_pa",
        "must exceed pump_rated_pressure_pa",
    )
    _require(
        p.reservoir_min_level_l < p.reservoir_capacity_l,
        "reservoir_min_level_l",
        "must be below reservoir_capacity_l",
    )
    _require(
        p.chip_rated_temperature_c > p.chip_rated_supply_c,
        "chip_rated_temperature_c",
        "must exceed chip_rated_supply_c",
    )
    _require(p.cdu_volume_l > 0.0, "loop_volume_l", "must exceed pipe and cold-plate volumes")
    _require(0.0 <= p.flow_maldistribution < 1.0, "flow_maldistribution", "must be within [0, 1)")
    _require(
        p.chip_spread_k < p.cold_plate_r0_k_per_w * p.server_max_w,
        "chip_spread_k",
        "must stay below the cold plates' conduction rise at max power",
    )
    for point, tau in p.sensor_lag_s:
        _require(
            point in LAGGABLE_POINTS,
            "sensor_lag_s",
            f"names {point!r}, not a measured point ({', '.join(sorted(LAGGABLE_POINTS))})",
        )
        _require(math.isfinite(tau) and tau >= 0.0, "sensor_lag_s", f"{point} must be >= 0 s")


def _internal_step_s(p: PlantParams) -> float:
    """`step_s`, divided evenly until it is at most a tenth of the fastest time constant."""
    substeps = max(1, math.ceil(p.step_s / (_smallest_time_constant_s(p) / 10.0) - 1e-9))
    return p.step_s / substeps


def _smallest_time_constant_s(p: PlantParams) -> float:
    """The fastest dynamics kept: lags, and the coolant residence times at rated flow."""
    rated_lps = p.pump_rated_flow_lpm * _LPM_TO_LPS
    lags = [tau for _, tau in p.sensor_lag_s if tau > 0.0]
    return min(
        p.cap_tau_s,
        p.chip_tau_s,
        p.pump_tau_s,
        p.cold_plate_volume_l / (min(p.server_flow_shares) * rated_lps),
        p.cdu_volume_l / rated_lps,
        *lags,
    )


@dataclass(frozen=True, slots=True)
class PlantTruth:
    """The plant's noiseless state and cumulative energy accounting, for tests and scoring.

    Energies are joules since construction. `throttled_energy_j` is work wanted but denied:
    `cap_denied_energy_j` (demand above the cap in force) plus `thermal_throttled_energy_j`
    (power the hardware cut to hold its chip at the throttle temperature).
    `hardware_throttle_s` is plant time (since construction) during which at least one server
    was cutting its own power; `hardware_throttling` says which servers do now.
    `valve_position` is the stem, `valve_opening` the share of `primary_max_flow_lpm` it passes
    (its installed characteristic); `leak_rate_lpm` is what leaks now, at the loop's pressure.
    """

    time_s: float
    supply_temperature_c: float
    return_temperature_c: float
    rack_outlet_temperature_c: float
    flow_lpm: float
    differential_pressure_pa: float
    pump_speed: float
    pump_speed_command: float
    pump_power_w: float
    hydraulic_power_w: float
    pump_running: bool
    standby_pump_active: bool
    valve_position: float
    valve_command: float
    valve_opening: float
    primary_flow_lpm: float
    facility_supply_temperature_c: float
    facility_return_temperature_c: float
    heat_removed_w: float
    it_heat_to_coolant_w: float
    reservoir_level_l: float
    leak_rate_lpm: float
    leak_detected: bool
    pdu_power_w: float
    server_demand_w: tuple[float, ...]
    server_power_w: tuple[float, ...]
    power_limit_w: tuple[float, ...]
    chip_temperature_c: tuple[float, ...]
    outlet_temperature_c: tuple[float, ...]
    server_flow_lpm: tuple[float, ...]
    hardware_throttling: tuple[bool, ...]
    it_heat_to_coolant_j: float
    heat_removed_j: float
    stored_heat_change_j: float
    pump_energy_j: float
    it_energy_j: float
    pdu_energy_j: float
    cap_denied_energy_j: float
    thermal_throttled_energy_j: float
    hardware_throttle_s: float
    room_dew_point_c: float

    @property
    def throttled_energy_j(self) -> float:
        return self.cap_denied_energy_j + self.thermal_throttled_energy_j

    @property
    def energy_balance_error_j(self) -> float:
        """IT heat into the coolant minus (heat removed + heat stored): zero if nothing leaks."""
        return self.it_heat_to_coolant_j - self.heat_removed_j - self.stored_heat_change_j


class _PlugFlowPipe:
    """A plug-flow delay line: parcels of coolant that leave in the order they came in.

    Parcels smaller than `min_parcel_l` merge with the one before, which bounds the parcel count
    at low flow at the price of mixing over `min_parcel_l` (a 0.5 % blur of a 20 L pipe).
    """

    __slots__ = ("_min_parcel_l", "_parcels")

    def __init__(self, volume_l: float, temperature_c: float, min_parcel_l: float) -> None:
        self._min_parcel_l = min_parcel_l
        count = max(1, round(volume_l / min_parcel_l))
        self._parcels: deque[list[float]] = deque(
            [volume_l / count, temperature_c] for _ in range(count)
        )

    def push_pop(self, volume_l: float, temperature_c: float) -> float:
        """Push `volume_l` in at `temperature_c`; return the temperature of what comes out."""
        parcels = self._parcels
        last = parcels[-1]
        if last[0] < self._min_parcel_l:
            merged = last[0] + volume_l
            last[1] = (last[0] * last[1] + volume_l * temperature_c) / merged
            last[0] = merged
        else:
            parcels.append([volume_l, temperature_c])
        remaining = volume_l
        heat = 0.0
        while True:
            first = parcels[0]
            if first[0] > remaining or len(parcels) == 1:
                take = min(remaining, first[0])
                heat += take * first[1]
                first[0] -= take
                break
            heat += first[0] * first[1]
            remaining -= first[0]
            parcels.popleft()
        return heat / volume_l

    def heat_content_l_c(self) -> float:
        """Sum of volume x temperature, in litre-degC."""
        return math.fsum(v * t for v, t in self._parcels)


@dataclass(slots=True)
class _PumpState:
    """Which pump turns and how fast."""

    speed: float
    duty_failed: bool = False
    standby_active: bool = False
    standby_failed: bool = False
    changeover_s: float = 0.0
    head_fraction: float = 1.0

    @property
    def healthy(self) -> bool:
        if self.standby_active:
            return not self.standby_failed
        return not self.duty_failed


_HOST_POWER_POINTS = frozenset({"power_state", "server_power_command"})


def _server_device(name: str) -> int | None:
    if name.startswith("server") and name[6:].isdigit():
        return int(name[6:])
    return None


class RackPlant:
    """One liquid-cooled rack in plant time. See the module docstring for the physics.

    Servers are numbered 0..n_servers-1, as devices `server0`, `server1`, ...
    """

    def __init__(self, params: PlantParams | None = None, seed: int = 0) -> None:
        p = params if params is not None else PlantParams()
        self._p = p
        n = p.n_servers
        self._dt = _internal_step_s(p)
        self._steps = 0
        self._pending_s = 0.0
        self._init_constants(p)
        # actuators and hydraulics
        self._pump_command = p.initial_pump_speed
        self._pump = _PumpState(speed=self._speed_target())
        self._valve_command = p.initial_valve
        self._valve = p.initial_valve
        self._valve_moving = False
        self._opening = self._installed_opening(self._valve)
        self._level_l = p.reservoir_capacity_l
        self._leak_lpm = 0.0
        self._leaked_l = 0.0
        self._facility_c = p.facility_water_temperature_c
        self._flow_lpm = 0.0
        self._dp_pa = 0.0
        self._hydraulic_w = 0.0
        self._pump_w = 0.0
        self._update_hydraulics()
        # servers: their differences are fixed at construction, from the seed but from a stream
        # of their own, so the sensors' noise is the same whatever the spread
        spread = np.random.default_rng([seed, _SPREAD_STREAM]).uniform(-1.0, 1.0, n)
        self._share: FloatArray = np.array(p.server_flow_shares)
        self._r0: FloatArray = p.cold_plate_r0_k_per_w + spread * (p.chip_spread_k / p.server_max_w)
        self._throttling: npt.NDArray[np.bool_] = np.zeros(n, dtype=bool)
        self._r_cp_flow = math.nan  # the loop flow `_r_cp_cache` was computed for
        self._r_cp_cache: FloatArray = self._r0.copy()
        demand = p.server_idle_w + p.initial_load * (p.server_max_w - p.server_idle_w)
        self._demand_w: FloatArray = np.full(n, demand)
        self._cap_w: FloatArray = np.full(n, p.server_max_w)
        self._powered: npt.NDArray[np.bool_] = np.ones(n, dtype=bool)  # False: off (standby)
        self._shutdown_left_s: FloatArray = np.full(n, math.inf)  # inf: no shutdown under way
        self._target_w: FloatArray = np.minimum(self._demand_w, self._cap_w)
        self._cap_denied_w = 0.0
        self._lagged_w: FloatArray = self._target_w.copy()
        self._power_w: FloatArray = self._target_w.copy()
        self._it_power_w = float(self._power_w.sum())
        # heat exchanger cache, keyed on the flows it was computed for
        self._hx_key = (-1.0, -1.0)
        self._hx_conductance_w_k = 0.0
        self._heat_removed_w = 0.0
        self._it_heat_w = 0.0
        self._init_temperatures()
        self._pipe = _PlugFlowPipe(p.pipe_volume_l, self._return_c, p.pipe_volume_l / 200.0)
        # accounting
        self._stored_initial_j = self._stored_heat_j()
        self._it_heat_j = 0.0
        self._removed_j = 0.0
        self._pump_j = 0.0
        self._it_j = 0.0
        self._pdu_j = 0.0
        self._cap_denied_j = 0.0
        self._thermal_j = 0.0
        self._throttle_s = 0.0
        self._sensors = SensorBank(self._sensor_sigmas(), seed)
        self._init_sensor_lags()

    # ---- construction helpers -------------------------------------------------------------

    def _init_constants(self, p: PlantParams) -> None:
        """Per-step constants, so that the step itself does little but arithmetic."""
        dt = self._dt
        self._c_per_l = p.coolant_density_kg_m3 * p.coolant_cp_j_per_kg_k / 1000.0  # J/(K*L)
        self._cfw_per_l = p.facility_density_kg_m3 * p.facility_cp_j_per_kg_k / 1000.0
        self._c_plate_j_k = p.cold_plate_volume_l * self._c_per_l
        self._c_cdu_j_k = p.cdu_volume_l * self._c_per_l
        self._a_cap = 1.0 - math.exp(-dt / p.cap_tau_s)
        # chip lag dt/tau at a flow is this over R_cp(flow): tau_chip at rated flow
        self._chip_rate = dt * p.cold_plate_r_rated_k_per_w / p.chip_tau_s
        self._a_pump = 1.0 - math.exp(-dt / p.pump_tau_s)
        self._r1 = p.cold_plate_r1
        self._k_sys = p.system_k_pa_per_lpm2
        self._hx_half_r = 0.5 / p.hx_ua_rated_w_per_k

    def _init_temperatures(self) -> None:
        """Start in the steady state of the initial load, pump speed and valve.

        If that state would throttle (too little flow or primary water for the load), it is not
        the steady state of this plant; the loop then starts cold, at facility temperature.
        """
        p = self._p
        n = p.n_servers
        fw = self._facility_c
        heat_w = p.liquid_fraction * float(self._power_w.sum())
        c_hot = self._flow_lpm * _LPM_TO_LPS * self._c_per_l
        conductance = self._hx_conductance(self._flow_lpm, self._primary_lpm())
        self._set_loop_temperatures(fw, fw, np.full(n, fw))
        if c_hot > 0.0 and conductance > 0.0:
            return_c = fw + heat_w / conductance
            supply_c = return_c - heat_w / c_hot
            outlet_c = supply_c + p.liquid_fraction * self._power_w / (self._share * c_hot)
            chip_c = self._chip_targets(supply_c, outlet_c)
            if float(chip_c.max()) <= p.throttle_temperature_c:
                self._set_loop_temperatures(supply_c, return_c, outlet_c)
        self._heat_removed_w = conductance * (self._return_c - fw)
        self._it_heat_w = heat_w

    def _set_loop_temperatures(
        self, supply_c: float, return_c: float, outlet_c: FloatArray
    ) -> None:
        """Coolant temperatures, and chips at their steady targets (at most T_throttle)."""
        p = self._p
        self._supply_c = supply_c
        self._return_c = return_c
        self._outlet_c: FloatArray = outlet_c
        self._rack_outlet_c = float(self._share @ outlet_c)
        target = self._chip_targets(supply_c, outlet_c)
        self._chip_c: FloatArray = np.minimum(target, max(p.throttle_temperature_c, supply_c))

    def _chip_targets(self, supply_c: float, outlet_c: FloatArray) -> FloatArray:
        """Steady chip temperatures at the present power and flow."""
        r_cp = self._r_cp(self._flow_lpm)
        power = self._power_w
        return np.maximum(supply_c + power * r_cp, outlet_c + power * self._r0)

    def _init_sensor_lags(self) -> None:
        """Lagged points by device, each filter starting at its point's present true value."""
        p = self._p
        lags = {point: tau for point, tau in p.sensor_lag_s if tau > 0.0}
        self._lag_alpha: dict[str, list[tuple[str, float]]] = {}
        self._lagged: dict[str, dict[str, float]] = {}
        for device in self._sensors.devices:
            points = [
                (point, 1.0 - math.exp(-self._dt / lags[point]))
                for point in self._sensors.device(device).points
                if point in lags
            ]
            if points:
                self._lag_alpha[device] = points
                raw = self._raw_readings(device)
                self._lagged[device] = {point: raw[point] for point, _ in points}

    def _step_sensor_lags(self) -> None:
        """Each lagged sensor's element moves toward its point's true value (first order)."""
        for device, points in self._lag_alpha.items():
            raw = self._raw_readings(device)
            state = self._lagged[device]
            for point, alpha in points:
                state[point] += (raw[point] - state[point]) * alpha

    def _sensor_sigmas(self) -> dict[str, dict[str, float]]:
        """Default noise of every exposed point; commands, booleans and counters have none."""
        p = self._p
        t, r = p.temperature_noise_c, p.ratio_noise
        cdu = {
            "supply_temperature": t,
            "return_temperature": t,
            "flow": p.flow_noise_lpm,
            "differential_pressure": p.pressure_noise_pa,
            "pump_speed": r,
            "pump_speed_command": 0.0,
            "pump_power": p.pump_power_noise_w,
            "pump_running": 0.0,
            "standby_pump_active": 0.0,
            "heat_removed": p.heat_noise_w,
            "reservoir_level": p.level_noise_l,
            "leak_detected": 0.0,
            "facility_supply_temperature": t,
            "facility_return_temperature": t,
            "primary_flow": p.flow_noise_lpm,
            "valve_position": r,
            "valve_command": 0.0,
        }
        devices: dict[str, dict[str, float]] = {
            "cdu": cdu,
            "pdu": {"power": p.pdu_power_noise_w, "energy": 0.0},
            "room": {"room_temperature": t, "room_humidity": r, "dew_point": t},
        }
        for i in range(p.n_servers):
            devices[f"server{i}"] = {
                "power": p.server_power_noise_w,
                "power_limit": 0.0,
                "chip_temperature": t,
                "coolant_outlet_temperature": t,
            }
        return devices

    # ---- public state ---------------------------------------------------------------------

    @property
    def params(self) -> PlantParams:
        return self._p

    @property
    def n_servers(self) -> int:
        return self._p.n_servers

    @property
    def internal_step_s(self) -> float:
        """The fixed integration step: `step_s`, or an even fraction of it for fast dynamics."""
        return self._dt

    @property
    def time_s(self) -> float:
        """Plant time: whole internal steps taken since construction."""
        return self._steps * self._dt

    # ---- actuators, load and disturbances -------------------------------------------------

    def set_pump_speed_command(self, ratio: float) -> None:
        """Speed command 0..1; the pump runs at no less than its minimum unless told 0."""
        self._pump_command = _clamp(_finite(ratio, "pump speed command"), 0.0, 1.0)

    def set_valve_command(self, ratio: float) -> None:
        self._valve_command = _clamp(_finite(ratio, "valve command"), 0.0, 1.0)

    def set_power_limit(self, server: int, watts: float) -> None:
        """Cap one server; clamped to [power_limit_min_w, server_max_w]."""
        i = self._server_index(server)
        p = self._p
        self._cap_w[i] = _clamp(_finite(watts, "power limit"), p.power_limit_min_w, p.server_max_w)
        self._update_targets()

    def set_server_power(self, server: int, on: bool) -> None:
        """Power one server on (at once) or shut it down gracefully: it goes on drawing its
        power for `server_shutdown_s` (PoweringOff), then only `server_standby_w`. Asking
        again for what is already under way changes nothing."""
        i = self._server_index(server)
        if on:
            self._shutdown_left_s[i] = math.inf
            if not self._powered[i]:
                self._powered[i] = True
                self._update_targets()
        elif self._powered[i] and math.isinf(self._shutdown_left_s[i]):
            self._shutdown_left_s[i] = self._p.server_shutdown_s
            self._step_shutdowns(0.0)

    def server_power_state(self, server: int) -> ServerPowerState:
        """Where a server's power stands, as its BMC's PowerState says it."""
        i = self._server_index(server)
        if not self._powered[i]:
            return ServerPowerState.OFF
        if math.isfinite(self._shutdown_left_s[i]):
            return ServerPowerState.POWERING_OFF
        return ServerPowerState.ON

    def _step_shutdowns(self, dt: float) -> None:
        """Servers whose OS has finished stopping power off."""
        left = self._shutdown_left_s
        if not np.isfinite(left).any():
            return
        left -= dt
        done = left <= 1e-9
        if done.any():
            self._powered[done] = False
            left[done] = math.inf
            self._update_targets()

    def set_load(self, fraction: float, servers: Sequence[int] | None = None) -> None:
        """Load 0..1 of each server's span between idle and max, on all servers or some."""
        p = self._p
        load = _clamp(_finite(fraction, "load"), 0.0, 1.0)
        demand = p.server_idle_w + load * (p.server_max_w - p.server_idle_w)
        if servers is None:
            self._demand_w[:] = demand
        else:
            for server in servers:
                self._demand_w[self._server_index(server)] = demand
        self._update_targets()

    def set_facility_water_temperature(self, celsius: float) -> None:
        """Facility water supply temperature, a step; the facility side has no dynamics here."""
        self._facility_c = _finite(celsius, "facility water temperature")

    # ---- faults ---------------------------------------------------------------------------

    def fail_pump(self) -> None:
        """The pump that turns stops (speed runs down over `pump_spindown_s`).

        With a standby pump fitted and healthy, it takes over after `standby_changeover_s`.
        """
        pump = self._pump
        if pump.standby_active:
            pump.standby_failed = True
        else:
            pump.duty_failed = True
            pump.changeover_s = 0.0

    def restore_pump(self) -> None:
        """Both pumps repaired; the duty pump turns again."""
        pump = self._pump
        pump.duty_failed = False
        pump.standby_failed = False
        pump.standby_active = False
        pump.changeover_s = 0.0

    def degrade_pump(self, head_fraction: float) -> None:
        """Scale the duty pump's shut-off head H0 (1.0 = as new)."""
        self._pump.head_fraction = _clamp(_finite(head_fraction, "head fraction"), 0.0, 1.0)

    def start_leak(self, litres_per_minute: float) -> None:
        rate = _finite(litres_per_minute, "leak rate")
        if rate < 0.0:
            raise ValueError(f"leak rate must be >= 0, got {rate}")
        if self._leak_lpm == 0.0:
            self._leaked_l = 0.0
        self._leak_lpm = rate

    def stop_leak(self) -> None:
        """The leak is fixed and the detector dried."""
        self._leak_lpm = 0.0
        self._leaked_l = 0.0

    def refill(self) -> None:
        self._level_l = self._p.reservoir_capacity_l

    def stick_sensor(self, device: str, point: str, stuck: bool = True) -> None:
        """Freeze a reading at the current (noiseless) value, or release it."""
        self._sensors.device(device).sensor(point)  # rejects unknown devices and points
        value = self._true_readings(device)[point] if stuck else None
        self._sensors.stick(device, point, value)

    def set_sensor_noise(self, device: str, point: str, sigma: float) -> None:
        self._sensors.set_noise(device, point, sigma)

    def set_sensor_drift(self, device: str, point: str, rate_per_s: float) -> None:
        """Add a ramp of `rate_per_s` (the point's unit per second) from now; 0 removes it."""
        self._sensors.set_drift(device, point, _finite(rate_per_s, "drift"), self.time_s)

    def reset_sensor(self, device: str, point: str) -> None:
        """Clear every fault on one sensor and restore its default noise (a server's host
        power is a state its BMC knows, not a sensor: nothing to clear)."""
        if _server_device(device) is not None and point in _HOST_POWER_POINTS:
            return
        self._sensors.reset(device, point)

    # ---- readings -------------------------------------------------------------------------

    def readings(self, device: str) -> dict[str, float]:
        """What device `cdu`, `pdu` or `server<i>` reports, through its sensors (a server's
        host power too: a state its BMC knows, no sensor, so it takes no draw from the noise
        stream, and the other readings are what they were before servers could shut down)."""
        values = self._sensors.read(device, self._true_readings(device), self.time_s)
        index = _server_device(device)
        if index is not None and index < self._p.n_servers:
            state = self.server_power_state(index)
            values["power_state"] = float(state)
            values["server_power_command"] = float(state is ServerPowerState.ON)
        return values

    def cdu_readings(self) -> dict[str, float]:
        return self.readings("cdu")

    def pdu_readings(self) -> dict[str, float]:
        return self.readings("pdu")

    def server_readings(self, server: int) -> dict[str, float]:
        return self.readings(f"server{self._server_index(server)}")

    def _true_readings(self, device: str) -> dict[str, float]:
        """What the device's sensing elements hold: the plant's state, through any lag."""
        raw = self._raw_readings(device)
        lagged = self._lagged.get(device)
        if lagged is not None:
            raw.update(lagged)
        return raw

    def room_readings(self) -> dict[str, float]:
        """The air around the rack, true values: what room sensors and a CDU's own read."""
        return {
            "room_temperature": self._p.room_temperature_c,
            "room_humidity": self._p.room_humidity,
            "dew_point": self._p.room_dew_point_c,
        }

    def _raw_readings(self, device: str) -> dict[str, float]:
        if device == "cdu":
            return self._cdu_truth()
        if device == "pdu":
            return {"power": self._pdu_power_w(), "energy": self._pdu_j}
        if device == "room":  # the air around the rack, as a room sensor reads it
            return self.room_readings()
        index = _server_device(device)
        if index is None or index >= self._p.n_servers:
            raise ValueError(f"unknown device {device!r}")
        return {
            "power": float(self._power_w[index]),
            "power_limit": float(self._cap_w[index]),
            "chip_temperature": float(self._chip_c[index]),
            "coolant_outlet_temperature": float(self._outlet_c[index]),
        }

    def _cdu_truth(self) -> dict[str, float]:
        return {
            "supply_temperature": self._supply_c,
            "return_temperature": self._return_c,
            "flow": self._flow_lpm,
            "differential_pressure": self._dp_pa,
            "pump_speed": self._pump.speed,
            "pump_speed_command": self._pump_command,
            "pump_power": self._pump_w,
            "pump_running": float(self._pump_running()),
            "standby_pump_active": float(self._pump.standby_active),
            "heat_removed": self._heat_removed_w,
            "reservoir_level": self._level_l,
            "leak_detected": float(self._leak_detected()),
            "facility_supply_temperature": self._facility_c,
            "facility_return_temperature": self._facility_return_c(),
            "primary_flow": self._primary_lpm(),
            "valve_position": self._valve,
            "valve_command": self._valve_command,
        }

    def truth(self) -> PlantTruth:
        """Noiseless state and energy accounting; for tests and scoring, never for control."""
        return PlantTruth(
            time_s=self.time_s,
            supply_temperature_c=self._supply_c,
            return_temperature_c=self._return_c,
            rack_outlet_temperature_c=self._rack_outlet_c,
            flow_lpm=self._flow_lpm,
            differential_pressure_pa=self._dp_pa,
            pump_speed=self._pump.speed,
            pump_speed_command=self._pump_command,
            pump_power_w=self._pump_w,
            hydraulic_power_w=self._hydraulic_w,
            pump_running=self._pump_running(),
            standby_pump_active=self._pump.standby_active,
            valve_position=self._valve,
            valve_command=self._valve_command,
            valve_opening=self._opening,
            primary_flow_lpm=self._primary_lpm(),
            facility_supply_temperature_c=self._facility_c,
            facility_return_temperature_c=self._facility_return_c(),
            heat_removed_w=self._heat_removed_w,
            it_heat_to_coolant_w=self._it_heat_w,
            reservoir_level_l=self._level_l,
            leak_rate_lpm=self._leak_rate_lpm(),
            leak_detected=self._leak_detected(),
            pdu_power_w=self._pdu_power_w(),
            server_demand_w=tuple(self._demand_w.tolist()),
            server_power_w=tuple(self._power_w.tolist()),
            power_limit_w=tuple(self._cap_w.tolist()),
            chip_temperature_c=tuple(self._chip_c.tolist()),
            outlet_temperature_c=tuple(self._outlet_c.tolist()),
            server_flow_lpm=tuple((self._share * self._flow_lpm).tolist()),
            hardware_throttling=tuple(self._throttling.tolist()),
            it_heat_to_coolant_j=self._it_heat_j,
            heat_removed_j=self._removed_j,
            stored_heat_change_j=self._stored_heat_j() - self._stored_initial_j,
            pump_energy_j=self._pump_j,
            it_energy_j=self._it_j,
            pdu_energy_j=self._pdu_j,
            cap_denied_energy_j=self._cap_denied_j,
            thermal_throttled_energy_j=self._thermal_j,
            hardware_throttle_s=self._throttle_s,
            room_dew_point_c=self._p.room_dew_point_c,
        )

    # ---- integration ----------------------------------------------------------------------

    def advance(self, duration_s: float) -> None:
        """Integrate `duration_s` of plant time in whole internal steps.

        A remainder shorter than a step is carried to the next call, so many short calls add up
        to the same trajectory as one long one.
        """
        duration = _finite(duration_s, "duration")
        if duration < 0.0:
            raise ValueError(f"duration must be >= 0, got {duration}")
        self._pending_s += duration
        steps = math.floor(self._pending_s / self._dt + 1e-9)
        self._pending_s = max(0.0, self._pending_s - steps * self._dt)
        step = self._step
        for _ in range(steps):
            step()

    def _step(self) -> None:
        """One internal step around the loop: actuators, servers, pipe, exchanger."""
        dt = self._dt
        self._step_shutdowns(dt)
        self._step_actuators(dt)
        self._step_reservoir(dt)
        self._update_hydraulics()
        flow_lpm = self._flow_lpm
        supply_c = self._supply_c
        self._step_servers(dt, flow_lpm, supply_c)
        volume_l = flow_lpm * _LPM_TO_LPS * dt
        if volume_l > 0.0:
            self._return_c = self._pipe.push_pop(volume_l, self._rack_outlet_c)
        self._step_cdu(dt, flow_lpm, volume_l, supply_c)
        pump_w = self._pump_w
        self._pump_j += pump_w * dt
        self._pdu_j += (self._it_power_w + pump_w + self._p.pdu_overhead_w) * dt
        self._cap_denied_j += self._cap_denied_w * dt
        if self._lag_alpha:
            self._step_sensor_lags()
        self._steps += 1

    def _step_actuators(self, dt: float) -> None:
        """Pump speed (lag, run-down, changeover) and valve travel (stiction, slew limit)."""
        pump = self._pump
        p = self._p
        if pump.duty_failed and p.standby_pump and not pump.standby_active:
            pump.changeover_s += dt
            if pump.changeover_s >= p.standby_changeover_s - 1e-9:
                pump.standby_active = True
        if pump.healthy:
            pump.speed += (self._speed_target() - pump.speed) * self._a_pump
        else:
            speed = pump.speed - dt / p.pump_spindown_s
            pump.speed = speed if speed > 1e-9 else 0.0
        error = self._valve_command - self._valve
        if self._valve_moving or abs(error) > p.valve_stiction:
            travel = dt / p.valve_stroke_s
            self._valve += _clamp(error, -travel, travel)
            self._valve_moving = abs(error) > travel
            self._opening = self._installed_opening(self._valve)

    def _step_reservoir(self, dt: float) -> None:
        """A leak drains the reservoir, which keeps the loop itself full until it runs dry."""
        if self._leak_lpm > 0.0:
            leaked_l = self._leak_rate_lpm() * _LPM_TO_LPS * dt
            self._level_l -= min(self._level_l, leaked_l)
            self._leaked_l += leaked_l

    def _step_servers(self, dt: float, flow_lpm: float, supply_c: float) -> None:
        """Server power (cap lag, hardware throttle), chip temperatures, cold-plate outlets."""
        p = self._p
        n = p.n_servers
        lagged = self._lagged_w
        lagged += (self._target_w - lagged) * self._a_cap
        r_cp = self._r_cp(flow_lpm)
        outlet = self._outlet_c
        chip = self._chip_c
        e = np.exp(-self._chip_rate / r_cp)
        target = np.maximum(lagged * r_cp + supply_c, lagged * self._r0 + outlet)
        new_chip = target + (chip - target) * e
        if float(new_chip.max()) > p.throttle_temperature_c:
            power = self._throttle(lagged, chip, outlet, supply_c, r_cp, e)
            target = np.maximum(power * r_cp + supply_c, power * self._r0 + outlet)
            new_chip = target + (chip - target) * e
            self._thermal_j += float((lagged - power).sum()) * dt
            self._throttling = power < lagged - 1e-6
            if self._throttling.any():
                self._throttle_s += dt
        else:
            power = lagged
            if self._throttling.any():
                self._throttling = np.zeros(n, dtype=bool)
        self._chip_c = new_chip
        it_w = float(power.sum())
        self._power_w = power.copy() if power is lagged else power
        self._it_power_w = it_w
        # cold plates: implicit in the outflow, so positive and bounded at any flow
        g_j_k = self._share * (flow_lpm * _LPM_TO_LPS * dt * self._c_per_l)
        denominator = self._c_plate_j_k + g_j_k
        outlet *= self._c_plate_j_k / denominator
        outlet += power * (p.liquid_fraction * dt / denominator)
        outlet += g_j_k * supply_c / denominator
        self._rack_outlet_c = float(self._share @ outlet)
        self._it_heat_w = p.liquid_fraction * it_w
        self._it_heat_j += self._it_heat_w * dt
        self._it_j += it_w * dt

    def _throttle(
        self,
        lagged: FloatArray,
        chip: FloatArray,
        outlet: FloatArray,
        supply_c: float,
        r_cp: FloatArray,
        e: FloatArray,
    ) -> FloatArray:
        """Power each server may draw so its chip ends the step no hotter than T_throttle."""
        p = self._p
        allowed_target = (p.throttle_temperature_c - e * chip) / (1.0 - e)
        hold = np.minimum((allowed_target - supply_c) / r_cp, (allowed_target - outlet) / self._r0)
        return np.maximum(np.minimum(lagged, hold), np.minimum(lagged, p.throttle_floor_w))

    def _step_cdu(self, dt: float, flow_lpm: float, volume_l: float, supply_c: float) -> None:
        """The CDU volume: return coolant comes in, the exchanger takes heat out."""
        if volume_l <= 0.0:
            self._heat_removed_w = 0.0
            return
        conductance = self._hx_conductance(flow_lpm, self._primary_lpm())
        heat_w = conductance * (self._return_c - self._facility_c)
        self._heat_removed_w = heat_w
        self._removed_j += heat_w * dt
        inflow_j_k = volume_l * self._c_per_l
        self._supply_c = (
            supply_c + (inflow_j_k * (self._return_c - supply_c) - heat_w * dt) / self._c_cdu_j_k
        )

    # ---- physics helpers ------------------------------------------------------------------

    def _speed_target(self) -> float:
        command = self._pump_command
        return 0.0 if command <= 0.0 else max(command, self._p.pump_min_speed)

    def _update_hydraulics(self) -> None:
        """Operating point where the pump curve meets the system curve (instantaneous)."""
        p = self._p
        pump = self._pump
        head = 1.0 if pump.standby_active else pump.head_fraction
        head *= _clamp(
            (self._level_l - p.reservoir_min_level_l + p.cavitation_band_l) / p.cavitation_band_l,
            0.0,
            1.0,
        )
        flow = pump.speed * p.pump_rated_flow_lpm * math.sqrt(head)
        self._flow_lpm = flow
        self._dp_pa = self._k_sys * flow * flow
        self._hydraulic_w = flow * _LPM_TO_LPS / 1000.0 * self._dp_pa
        self._pump_w = self._hydraulic_w / p.pump_efficiency

    def _r_cp(self, flow_lpm: float) -> FloatArray:
        """Each cold plate's resistance chip-to-supply at loop flow `flow_lpm`, in K/W."""
        if flow_lpm != self._r_cp_flow:
            p = self._p
            q = np.maximum(self._share * flow_lpm, p.cold_plate_min_flow_lpm)
            self._r_cp_cache = self._r0 + self._r1 / q**p.cold_plate_flow_exponent
            self._r_cp_flow = flow_lpm
        return self._r_cp_cache

    def _installed_opening(self, position: float) -> float:
        """Share of the primary's full flow the valve passes at stem `position` (0..1).

        Inherent characteristic (R^x - 1)/(R - 1), equal percentage for rangeability R > 1 and
        linear at R = 1, then installed with authority N: Q/Q_max = 1/sqrt(1 - N + N/f^2).
        """
        p = self._p
        r = p.valve_rangeability
        f = position if r == 1.0 else (math.pow(r, position) - 1.0) / (r - 1.0)
        n = p.valve_authority
        if n >= 1.0 or f <= 0.0:
            return max(f, 0.0)
        return 1.0 / math.sqrt(1.0 - n + n / (f * f))

    def _primary_lpm(self) -> float:
        return self._opening * self._p.primary_max_flow_lpm

    def _leak_rate_lpm(self) -> float:
        """The leak's rate now: its rated-pressure rate scaled by (dP/dP_rated)^exponent."""
        if self._leak_lpm <= 0.0:
            return 0.0
        p = self._p
        ratio = self._dp_pa / p.pump_rated_pressure_pa
        return self._leak_lpm * math.pow(ratio, p.leak_pressure_exponent)

    def _hx_conductance(self, flow_lpm: float, primary_lpm: float) -> float:
        """eps * C_min of the counterflow exchanger, in W/K (heat = this x (T_ret - T_fw))."""
        key = (flow_lpm, primary_lpm)
        if key == self._hx_key:
            return self._hx_conductance_w_k
        p = self._p
        c_hot = flow_lpm * _LPM_TO_LPS * self._c_per_l
        c_cold = primary_lpm * _LPM_TO_LPS * self._cfw_per_l
        conductance = 0.0
        if c_hot > 0.0 and c_cold > 0.0:
            x = p.hx_flow_exponent
            ua = 1.0 / (
                self._hx_half_r / (flow_lpm / p.pump_rated_flow_lpm) ** x
                + self._hx_half_r / (primary_lpm / p.primary_max_flow_lpm) ** x
            )
            c_min, c_max = min(c_hot, c_cold), max(c_hot, c_cold)
            conductance = _counterflow_effectiveness(ua / c_min, c_min / c_max) * c_min
        self._hx_key = key
        self._hx_conductance_w_k = conductance
        return conductance

    def _facility_return_c(self) -> float:
        c_cold = self._primary_lpm() * _LPM_TO_LPS * self._cfw_per_l
        if c_cold <= 0.0:
            return self._facility_c
        return self._facility_c + self._heat_removed_w / c_cold

    def _pump_running(self) -> bool:
        return self._pump.healthy and self._speed_target() > 0.0

    def _leak_detected(self) -> bool:
        return self._leak_lpm > 0.0 and self._leaked_l >= self._p.leak_detect_volume_l

    def _pdu_power_w(self) -> float:
        return float(self._power_w.sum()) + self._pump_w + self._p.pdu_overhead_w

    def _stored_heat_j(self) -> float:
        """Heat in the coolant above 0 degC: cold plates, CDU volume and the return pipe."""
        return (
            self._c_plate_j_k * float(self._outlet_c.sum())
            + self._c_cdu_j_k * self._supply_c
            + self._c_per_l * self._pipe.heat_content_l_c()
        )

    def _update_targets(self) -> None:
        """Power each server heads for, and the work the caps deny, after a demand or cap change."""
        np.minimum(self._demand_w, self._cap_w, out=self._target_w)
        denied = np.maximum(self._demand_w - self._cap_w, 0.0)
        if not self._powered.all():  # servers shut down draw standby power; no cap denies it
            off = ~self._powered
            self._target_w[off] = self._p.server_standby_w
            denied[off] = 0.0
        self._cap_denied_w = float(denied.sum())

    def _server_index(self, server: int) -> int:
        if isinstance(server, bool) or not 0 <= server < self._p.n_servers:
            raise ValueError(f"server index {server!r} outside 0..{self._p.n_servers - 1}")
        return int(server)


def _counterflow_effectiveness(ntu: float, capacity_ratio: float) -> float:
    """Counterflow exchanger effectiveness from NTU and C_min/C_max."""
    if capacity_ratio > 1.0 - 1e-9:
        return ntu / (1.0 + ntu)
    decay = math.exp(-ntu * (1.0 - capacity_ratio))
    return (1.0 - decay) / (1.0 - capacity_ratio * decay)


def _clamp(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


def _finite(value: float, what: str) -> float:
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return result
