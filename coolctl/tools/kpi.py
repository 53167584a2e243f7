"""What a scenario run measured: a trace for plots and the KPIs, all from plant truth.

The controllers see only what the devices expose; the score uses the plant's noiseless state
and its energy accounting (`RackPlant.truth()`), so a controller cannot look good by fooling
its own sensors. Samples are taken once per control period, after the tick, and integrals are
rectangle sums over the scored part of the run (after `warmup_s`); energies are differences of
the plant's own cumulative counters, exact to its integration step.

KPI names and units (the `--json` object of `coolctl sim run`):

| key | unit | what |
|---|---|---|
| `supply_temp_iae_ks` | K·ks | ∫ abs(supply − setpoint) dt / 1000 |
| `supply_temp_max_dev_k` | K | largest abs(supply − setpoint) |
| `max_outlet_temp_c` | °C | hottest server coolant outlet |
| `temp_limit_violation_ks` | K·ks | ∫ over-limit K of supply and hottest outlet dt / 1000 |
| `pump_energy_kwh` | kWh | pump electrical energy |
| `it_energy_kwh` | kWh | server electrical energy |
| `throttled_energy_kwh` | kWh | work the servers wanted and caps or hardware throttling denied |
| `budget_violation_ws` | W·s | ∫ max(0, PDU power − budget) dt (0 without a budget) |
| `controller_step_p99_ms` | ms | p99 of one decision's CPU time: loops, allocator, supervisor |
| `sim_speedup` | — | simulated seconds per wall second, whole run |

(the over-limit K: max(0, supply − max_supply_c) + max(0, hottest outlet − max_outlet_c)),
and beside them: `max_supply_temp_c`, `max_chip_temp_c`, `mean_pump_speed`,
`pdu_energy_kwh`, `failsafe_s` and `interlock_s` (scored seconds the rack spent in failsafe, or
under any interlock), `controller_errors`, `energy_balance_error_pct` (IT heat into the coolant
minus heat removed and stored, in % of the IT heat, over the whole run), `scored_s`, `wall_s`;
and what wears the hardware or puts it at risk:

| key | unit | what |
|---|---|---|
| `interlock_trips` | — | times any interlock engaged (rising edges, one sample per period) |
| `pump_dry_run_s` | s | pump turning, commanded above 0.2, while the flow was under 10 % of rated |
| `valve_strokes_per_h` | 1/h | sum of abs(Δ valve position) per hour (a full stroke is 1.0) |
| `valve_reversals_per_h` | 1/h | valve direction changes per hour, moves under 0.5 % ignored |
| `hardware_throttle_s` | s | time any server was cutting its own power (exact, plant time) |
| `pump_dry_run_max_s` | s | the longest unbroken dry run of the pump (same test as above) |

and what the safety acceptance is judged by (sampled once per period, so to within one period;
a fault that never happens is null in `--json`, one never answered counts to the run's end):

- `leak_detection_s` (s): from a leak starting (coolant leaving the loop) to an interlock;
- `no_flow_detection_s` (s): from flow under 30 % of rated, the pump asked for > 0.2, to an
  interlock;
- `pump_trip_detection_s` (s): from the pump stopping while asked to run to an interlock;
- `min_caps_confirmed_s` (s): from flow under 30 % of rated to IT power at the caps' minimum
  (+10 %), as the PDU measures it (its power less pump and overhead); null without caps;
- `load_step_settling_s` (s): after a `load` event, until the supply stays within ±0.2 K of
  the setpoint in force (a chip boost may lower it; the worst step; null without one);
- `load_step_overshoot_pct` (%): after a `load` event, the swing past the setpoint the other
  way after the supply's first excursion out of the ±0.2 K band, in % of that excursion's
  peak (over 100 % when the swing back is the larger; 0 without an excursion; the worst step);
- `chip_swing_k` (K): max − min of the hottest chip after warm-up (a drift counts: chips that
  cool as the caps follow warming facility water swing by what they cooled);
- `chip_cycle_k` (K): the largest swing of the hottest chip that comes back: over every peak,
  the smaller of its rise from the lowest point before and its fall to the lowest after (and
  troughs alike); an on/off limiter's cycling shows its range here, a one-way drift does not;
- `below_dew_point_s` (s): time the supply was under the room air's dew point (the plant's
  `room_temperature_c` and `room_humidity`): condensation on the pipes.

Every fault counts each time it starts (a rising edge), scored or not as its start is; the
worst one is reported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from coolctl.simulators.plant import PlantTruth
from coolctl.simulators.scenario import Limits

FloatArray = npt.NDArray[np.float64]
_FAULTS = (
    "leak_detection_s",
    "no_flow_detection_s",
    "pump_trip_detection_s",
    "min_caps_confirmed_s",
)

KPI_KEYS: tuple[str, ...] = (
    "supply_temp_iae_ks",
    "supply_temp_max_dev_k",
    "max_outlet_temp_c",
    "temp_limit_violation_ks",
    "pump_energy_kwh",
    "it_energy_kwh",
    "throttled_energy_kwh",
    "budget_violation_ws",
    "controller_step_p99_ms",
    "sim_speedup",
)
EXTRA_KPI_KEYS: tuple[str, ...] = (
    "max_supply_temp_c",
    "max_chip_temp_c",
    "mean_pump_speed",
    "pdu_energy_kwh",
    "failsafe_s",
    "interlock_s",
    "controller_errors",
    "energy_balance_error_pct",
    "scored_s",
    "wall_s",
    "interlock_trips",
    "pump_dry_run_s",
    "valve_strokes_per_h",
    "valve_reversals_per_h",
    "hardware_throttle_s",
    "pump_dry_run_max_s",
    "leak_detection_s",
    "no_flow_detection_s",
    "pump_trip_detection_s",
    "min_caps_confirmed_s",
    "load_step_settling_s",
    "load_step_overshoot_pct",
    "chip_swing_k",
    "chip_cycle_k",
    "below_dew_point_s",
)
TIMING_KEYS = frozenset({"controller_step_p99_ms", "sim_speedup", "wall_s"})
"""KPIs that measure this machine, not the control: they differ between identical runs."""
NO_RATIO_KEYS = frozenset({"energy_balance_error_pct", "controller_errors", "scored_s"})
"""Checks, not scores: a ratio of two rounding errors or of two equal durations says nothing."""

KPI_UNITS: Mapping[str, str] = {
    "supply_temp_iae_ks": "K·ks",
    "supply_temp_max_dev_k": "K",
    "max_outlet_temp_c": "°C",
    "temp_limit_violation_ks": "K·ks",
    "pump_energy_kwh": "kWh",
    "it_energy_kwh": "kWh",
    "throttled_energy_kwh": "kWh",
    "budget_violation_ws": "W·s",
    "controller_step_p99_ms": "ms",
    "sim_speedup": "×",
    "max_supply_temp_c": "°C",
    "max_chip_temp_c": "°C",
    "mean_pump_speed": "",
    "pdu_energy_kwh": "kWh",
    "failsafe_s": "s",
    "interlock_s": "s",
    "controller_errors": "",
    "energy_balance_error_pct": "%",
    "scored_s": "s",
    "wall_s": "s",
    "interlock_trips": "",
    "pump_dry_run_s": "s",
    "valve_strokes_per_h": "1/h",
    "valve_reversals_per_h": "1/h",
    "hardware_throttle_s": "s",
    "pump_dry_run_max_s": "s",
    "leak_detection_s": "s",
    "no_flow_detection_s": "s",
    "pump_trip_detection_s": "s",
    "min_caps_confirmed_s": "s",
    "load_step_settling_s": "s",
    "load_step_overshoot_pct": "%",
    "chip_swing_k": "K",
    "chip_cycle_k": "K",
    "below_dew_point_s": "s",
}

_J_PER_KWH = 3.6e6
DRY_RUN_COMMAND = 0.2
"""A pump commanded above this speed is meant to move coolant..."""
DRY_RUN_FLOW_SHARE = 0.1
"""...and runs dry when the flow is under this share of its rated flow."""
VALVE_REVERSAL_EPSILON = 0.005
"""Valve moves smaller than this (a share of full stroke) do not count as a reversal."""
NO_FLOW_SHARE = 0.3
"""Flow under this share of rated is no flow: the acceptance's "flow falls below 30 %"."""
MIN_CAPS_MARGIN = 1.1
"""IT power within 10 % of the caps' minimum is at minimum caps (the supervisor's own test)."""
SETTLING_BAND_K = 0.2
"""A load step has settled once the supply stays within this of its setpoint."""

SERIES: tuple[str, ...] = (
    "t_s",
    "supply_c",
    "return_c",
    "max_outlet_c",
    "max_chip_c",
    "facility_c",
    "flow_lpm",
    "pump_speed",
    "pump_command",
    "pump_power_w",
    "valve",
    "it_power_w",
    "caps_w",
    "pdu_power_w",
    "budget_w",
    "failsafe",
    "interlock",
    "setpoint_c",
)


@dataclass(slots=True)
class Trace:
    """One sample per control period of what plots show; `budget_w` is NaN without a budget."""

    columns: dict[str, FloatArray]
    warmup_s: float = 0.0
    setpoint_c: float = 35.0
    limits: Limits = field(default_factory=Limits)
    throttle_c: float = 87.0
    caps: bool = False  # the rack had server caps to set

    @classmethod
    def empty(cls, ticks: int, warmup_s: float, setpoint_c: float, limits: Limits) -> Trace:
        return cls({name: np.full(ticks, np.nan) for name in SERIES}, warmup_s, setpoint_c, limits)

    def __getitem__(self, name: str) -> FloatArray:
        return self.columns[name]


def _overshoot_pct(error: FloatArray) -> float:
    """The swing past the setpoint after a step's first excursion out of the settling band,
    in % of that excursion's peak: the first excursion is what the step did, the swing back
    is what the loop did with it (over 100 % when the loop swings back further). No
    excursion: 0. (The largest deviation is not the measure: when the loop's swing back is
    the largest, that would call a loop that overshoots by 140 % one that does not.)"""
    outside = np.flatnonzero(np.abs(error) > SETTLING_BAND_K)
    if not outside.size:
        return 0.0
    first = int(outside[0])
    direction = math.copysign(1.0, float(error[first]))
    toward = error[first:] * direction  # > 0: the first excursion's side
    crossed = np.flatnonzero(toward <= 0.0)
    end = int(crossed[0]) if crossed.size else toward.size
    peak = float(toward[:end].max())
    if not crossed.size:
        return 0.0
    back = float((-toward[end:]).max())
    return 100.0 * max(0.0, back) / peak


class Recorder:
    """Samples plant truth once per tick into the trace and the KPI sums."""

    def __init__(
        self,
        ticks: int,
        period_s: float,
        warmup_s: float,
        setpoint_c: float,
        limits: Limits,
        rated_flow_lpm: float = 200.0,
        min_caps_w: float | None = None,
        load_steps_s: Sequence[float] = (),
    ) -> None:
        """`min_caps_w`: the sum of the server caps' minimums (None: the rack sets no caps);
        `load_steps_s`: when the scenario's `load` events start, for the settling KPIs."""
        self.trace = Trace.empty(ticks, warmup_s, setpoint_c, limits)
        self._period_s = period_s
        self._warmup_s = warmup_s
        self._setpoint_c = setpoint_c
        self._limits = limits
        self._start: PlantTruth | None = None
        self._iae = 0.0
        self._max_dev = 0.0
        self._max_outlet = -math.inf
        self._max_supply = -math.inf
        self._max_chip = -math.inf
        self._violation = 0.0
        self._budget_ws = 0.0
        self._speed_sum = 0.0
        self._failsafe_s = 0.0
        self._interlock_s = 0.0
        self._dry_flow_lpm = DRY_RUN_FLOW_SHARE * rated_flow_lpm
        self._interlocked = False
        self._trips = 0
        self._dry_s = 0.0
        self._valve: float | None = None
        self._stroke = 0.0
        self._valve_turn: float | None = None  # the valve's last extreme position
        self._valve_direction = 0  # +1 opening, -1 closing, 0 not yet moved
        self._reversals = 0
        self._scored = 0
        self._columns = [self.trace.columns[name] for name in SERIES]
        self._no_flow_lpm = NO_FLOW_SHARE * rated_flow_lpm
        self._min_caps_w = None if min_caps_w is None else MIN_CAPS_MARGIN * min_caps_w
        self._load_steps_s = tuple(sorted(load_steps_s))
        self._dry_run_s = 0.0  # the dry run going on now
        self._dry_max_s = 0.0
        self._min_chip = math.inf
        self._below_dew_s = 0.0
        # faults: whether the condition held at the last sample, and when an open one began
        self._fault_was: dict[str, bool] = dict.fromkeys(_FAULTS, False)
        self._fault_open: dict[str, float] = {}  # fault -> its onset, until answered
        self._fault_worst: dict[str, float] = {}

    def sample(
        self,
        k: int,
        now: float,
        truth: PlantTruth,
        budget_w: float | None,
        failsafe: bool,
        interlocked: bool,
        setpoint_c: float | None = None,
    ) -> None:
        """`setpoint_c`: the supply setpoint in force (a chip boost may have moved it), which
        the load steps' settling is judged against; None: the scenario's."""
        supply = truth.supply_temperature_c
        outlet = max(truth.outlet_temperature_c)
        chip = max(truth.chip_temperature_c)
        pdu = truth.pdu_power_w
        row = (
            now,
            supply,
            truth.return_temperature_c,
            outlet,
            chip,
            truth.facility_supply_temperature_c,
            truth.flow_lpm,
            truth.pump_speed,
            truth.pump_speed_command,
            truth.pump_power_w,
            truth.valve_position,
            math.fsum(truth.server_power_w),
            math.fsum(truth.power_limit_w),
            pdu,
            math.nan if budget_w is None else budget_w,
            float(failsafe),
            float(interlocked),
            self._setpoint_c if setpoint_c is None else setpoint_c,
        )
        for column, value in zip(self._columns, row, strict=True):
            column[k] = value
        tripped = interlocked and not self._interlocked
        self._interlocked = interlocked
        self._faults(now, truth, interlocked)
        if now < self._warmup_s - 1e-9:
            return
        if self._start is None:
            self._start = truth
        dt = self._period_s
        limits = self._limits
        deviation = abs(supply - self._setpoint_c)
        self._iae += deviation * dt
        self._max_dev = max(self._max_dev, deviation)
        self._max_outlet = max(self._max_outlet, outlet)
        self._max_supply = max(self._max_supply, supply)
        self._max_chip = max(self._max_chip, chip)
        excess = max(0.0, supply - limits.max_supply_c) + max(0.0, outlet - limits.max_outlet_c)
        self._violation += excess * dt
        if budget_w is not None:
            self._budget_ws += max(0.0, pdu - budget_w) * dt
        self._speed_sum += truth.pump_speed
        self._failsafe_s += dt if failsafe else 0.0
        self._interlock_s += dt if interlocked else 0.0
        self._trips += tripped
        dry = truth.pump_speed_command > DRY_RUN_COMMAND and truth.flow_lpm < self._dry_flow_lpm
        if dry and truth.pump_running:  # a tripped pump is stopped, not running dry
            self._dry_s += dt
            self._dry_run_s += dt
            self._dry_max_s = max(self._dry_max_s, self._dry_run_s)
        else:
            self._dry_run_s = 0.0
        self._min_chip = min(self._min_chip, chip)
        if supply < truth.room_dew_point_c:
            self._below_dew_s += dt
        self._valve_wear(truth.valve_position)
        self._scored += 1

    def _faults(self, now: float, truth: PlantTruth, interlocked: bool) -> None:
        """Open a fault on its rising edge (if its start is scored); close it when answered."""
        commanded = truth.pump_speed_command > DRY_RUN_COMMAND
        no_flow = truth.flow_lpm < self._no_flow_lpm
        at_min_caps = self._min_caps_w is not None and (
            math.fsum(truth.server_power_w) <= self._min_caps_w
        )
        conditions = {
            "leak_detection_s": truth.leak_rate_lpm > 0.0,
            "no_flow_detection_s": no_flow and commanded,
            "pump_trip_detection_s": commanded and not truth.pump_running,
            "min_caps_confirmed_s": no_flow and self._min_caps_w is not None,
        }
        answered = {
            "leak_detection_s": interlocked,
            "no_flow_detection_s": interlocked,
            "pump_trip_detection_s": interlocked,
            "min_caps_confirmed_s": at_min_caps,
        }
        scored = now >= self._warmup_s - 1e-9
        for name, now_true in conditions.items():
            if now_true and not self._fault_was[name] and scored and name not in self._fault_open:
                self._fault_open[name] = now
            self._fault_was[name] = now_true
            onset = self._fault_open.get(name)
            if onset is not None and answered[name]:
                self._close(name, now - onset)

    def _close(self, name: str, seconds: float) -> None:
        del self._fault_open[name]
        self._fault_worst[name] = max(self._fault_worst.get(name, 0.0), seconds)

    def _settling(self) -> tuple[float, float]:
        """Worst settling time (s) and overshoot (%) over the scored load steps: the supply's
        last exit from the band before the next step, and `_overshoot_pct`; both from the
        setpoint in force (a chip boost lowers it on purpose: that is not an error of the
        loop)."""
        t = self.trace["t_s"]
        supply = self.trace["supply_c"]
        steps = [s for s in self._load_steps_s if s >= self._warmup_s - 1e-9]
        if not steps:
            return math.nan, math.nan
        worst_settle, worst_over = 0.0, 0.0
        for i, start in enumerate(steps):
            stop = steps[i + 1] if i + 1 < len(steps) else math.inf
            window = (t >= start - 1e-9) & (t < stop - 1e-9) & np.isfinite(supply)
            if not window.any():
                continue
            times, error = t[window], supply[window] - self.trace["setpoint_c"][window]
            outside = np.flatnonzero(np.abs(error) > SETTLING_BAND_K)
            settle = 0.0
            if outside.size:
                last = int(outside[-1])
                settle = float(times[last + 1] - start) if last + 1 < times.size else math.inf
            worst_settle = max(worst_settle, settle)
            worst_over = max(worst_over, _overshoot_pct(error))
        return worst_settle, worst_over

    def _chip_cycle_k(self) -> float:
        """The largest swing of the hottest chip after warm-up that comes back: a peak over
        both the lowest point before it and the lowest after it counts the smaller rise (a
        trough likewise); a one-way drift has no such peak, an on/off cycle has its range."""
        t, chip = self.trace["t_s"], self.trace["max_chip_c"]
        values = chip[(t >= self._warmup_s - 1e-9) & np.isfinite(chip)]
        if values.size < 3:
            return 0.0
        low_before = np.minimum.accumulate(values)
        low_after = np.minimum.accumulate(values[::-1])[::-1]
        high_before = np.maximum.accumulate(values)
        high_after = np.maximum.accumulate(values[::-1])[::-1]
        peaks = np.minimum(values - low_before, values - low_after)
        troughs = np.minimum(high_before - values, high_after - values)
        return float(max(peaks.max(), troughs.max()))

    def _valve_wear(self, position: float) -> None:
        """Stem travel, and reversals: a move of more than the epsilon back from the last
        extreme in the direction of travel."""
        if self._valve is not None:
            self._stroke += abs(position - self._valve)
        self._valve = position
        turn = self._valve_turn
        if turn is None:
            self._valve_turn = position
            return
        direction = self._valve_direction
        if direction * (position - turn) > 0.0:  # further the same way: a new extreme
            self._valve_turn = position
        elif abs(position - turn) > VALVE_REVERSAL_EPSILON:
            self._reversals += direction != 0
            self._valve_direction = 1 if position > turn else -1
            self._valve_turn = position

    def kpis(
        self,
        end: PlantTruth,
        step_times_s: Sequence[float],
        wall_s: float,
        duration_s: float,
        controller_errors: int,
    ) -> dict[str, float]:
        """The KPI object (see the module docstring)."""
        start = self._start if self._start is not None else end
        steps = np.asarray(step_times_s, dtype=float)
        p99 = float(np.percentile(steps, 99)) * 1000.0 if steps.size else 0.0
        it_heat = end.it_heat_to_coolant_j
        balance = 100.0 * end.energy_balance_error_j / it_heat if it_heat > 0 else 0.0
        scored = max(self._scored, 1)
        hours = self._scored * self._period_s / 3600.0
        for name, onset in list(self._fault_open.items()):  # never answered: to the end
            self._close(name, end.time_s - onset)
        faults = {
            name: self._fault_worst.get(name, math.nan)
            for name in ("leak_detection_s", "no_flow_detection_s", "pump_trip_detection_s")
        }
        settling_s, overshoot_pct = self._settling()
        kpis = {
            "supply_temp_iae_ks": self._iae / 1000.0,
            "supply_temp_max_dev_k": self._max_dev,
            "max_outlet_temp_c": self._max_outlet,
            "temp_limit_violation_ks": self._violation / 1000.0,
            "pump_energy_kwh": (end.pump_energy_j - start.pump_energy_j) / _J_PER_KWH,
            "it_energy_kwh": (end.it_energy_j - start.it_energy_j) / _J_PER_KWH,
            "throttled_energy_kwh": (end.throttled_energy_j - start.throttled_energy_j)
            / _J_PER_KWH,
            "budget_violation_ws": self._budget_ws,
            "controller_step_p99_ms": p99,
            "sim_speedup": duration_s / wall_s if wall_s > 0 else math.inf,
            "max_supply_temp_c": self._max_supply,
            "max_chip_temp_c": self._max_chip,
            "mean_pump_speed": self._speed_sum / scored,
            "pdu_energy_kwh": (end.pdu_energy_j - start.pdu_energy_j) / _J_PER_KWH,
            "failsafe_s": self._failsafe_s,
            "interlock_s": self._interlock_s,
            "controller_errors": float(controller_errors),
            "energy_balance_error_pct": balance,
            "scored_s": self._scored * self._period_s,
            "wall_s": wall_s,
            "interlock_trips": float(self._trips),
            "pump_dry_run_s": self._dry_s,
            "valve_strokes_per_h": self._stroke / hours if hours > 0 else 0.0,
            "valve_reversals_per_h": self._reversals / hours if hours > 0 else 0.0,
            "hardware_throttle_s": end.hardware_throttle_s - start.hardware_throttle_s,
            "pump_dry_run_max_s": self._dry_max_s,
            **faults,
            "min_caps_confirmed_s": self._fault_worst.get("min_caps_confirmed_s", math.nan),
            "load_step_settling_s": settling_s,
            "load_step_overshoot_pct": overshoot_pct,
            "chip_swing_k": self._max_chip - self._min_chip if self._scored else 0.0,
            "chip_cycle_k": self._chip_cycle_k(),
            "below_dew_point_s": self._below_dew_s,
        }
        return kpis


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None when it means nothing (0/0, x/0)."""
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator == 0.0:
        return None
    return numerator / denominator


def format_kpi(key: str, value: float | None) -> str:
    """A KPI as a table shows it: enough digits to compare, no more."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if key in ("controller_errors", "failsafe_s", "interlock_s", "scored_s", "interlock_trips"):
        return f"{value:.0f}"
    if key == "sim_speedup":
        return f"{value:.0f}"
    magnitude = abs(value)
    if magnitude == 0.0:
        return "0"
    if magnitude >= 1000:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01:
        return f"{value:.3f}"
    return f"{value:.2e}"


def format_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


RATIO_PAIRS: tuple[tuple[str, str], ...] = (("pid", "fixed"), ("mpc", "pid"), ("mpc", "fixed"))


def ratio_pairs(controllers: Sequence[str]) -> list[tuple[str, str]]:
    """The ratios a comparison shows: pid/fixed and mpc/pid (and mpc/fixed), where both ran
    or were asked for (an absent controller shows n/a)."""
    return [(a, b) for a, b in RATIO_PAIRS if a in controllers and b in controllers]


def comparison_table(
    by_controller: Mapping[str, Mapping[str, float] | None],
    keys: Sequence[str] = (*KPI_KEYS, *EXTRA_KPI_KEYS),
) -> list[str]:
    """Lines of a side-by-side KPI table, one column per controller (None: did not run,
    shown n/a), then the ratios of `ratio_pairs`."""
    names = list(by_controller)
    pairs = ratio_pairs(names)
    header = ["KPI", "unit", *names, *(f"{a}/{b}" for a, b in pairs)]
    rows = [header]
    for key in keys:
        row = [key, KPI_UNITS.get(key, "")]
        for name in names:
            kpis = by_controller[name]
            row.append(format_kpi(key, None if kpis is None else kpis.get(key)))
        for a, b in pairs:
            ka, kb = by_controller[a], by_controller[b]
            value = None
            if key in NO_RATIO_KEYS:
                row.append("")
                continue
            if ka is not None and kb is not None and key in ka and key in kb:
                value = ratio(ka[key], kb[key])
            row.append(format_ratio(value))
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return [
        "  ".join(
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
