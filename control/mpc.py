"""Model-predictive control of a rack's cooling loop: pump, valve and, when cooling runs out,
the rack's IT power, planned together over a horizon from a model identified on the rack.

Contract (what the daemon and the offline scenario runner call)
---------------------------------------------------------------

    controller = build_mpc(rack, model, settings, fallback)

- `rack: MpcRack` — plain data: the pump-speed and valve actuator points, and how to read each
  model signal from a snapshot (`MpcRack.standard(rack_id, cdu=..., servers=..., pdu=...)`
  wires the canonical point names; control/ does not import coolctl.config, so the caller
  builds this from its config: sum of the BMCs' `cap_min_w` / `cap_max_w` go in `cap_min_w` /
  `cap_max_w`).
- `model: IdentifiedModel` — from control/identify.py, loaded with `IdentifiedModel.from_json`.
- `settings: MpcSettings` — limits, rates, weights and the solver budget (defaults: PLANT.md's).
- `fallback: RackController` — the rack's PID loops exactly as the daemon builds them
  (`coolctl.rack.controllers.build_rack_control(...).controller`).

`MpcController` is a drop-in for `RackController`: `step(snapshot, now) -> list[Command]`
(AUTO commands for the pump speed and the valve, plus whatever loops the MPC does not steer),
`applied(actuator, value, now)`, `loops`, `loop_of`, `inputs`. Power caps are not commanded
here: the MPC sets `it_power_limit_w` (None when it sees no need to throttle), and the caller
passes `controller.allocator_budget_w(budget_w, snapshot, margin_w)` to the power-cap allocator
in place of the rack budget, so caps keep their per-server minimums, priorities and weights.
Counters are in `controller.stats`; the last plan (inputs and predicted outputs over the
horizon) in `controller.plan`.

Structure, and why
------------------

- The MPC drives the pump speed and the valve itself, rather than the PID loops' setpoints.
  What it optimises (pump energy, which goes as speed³) and what it must respect (speed and
  valve bounds and rates) are the actuators; with a PID in between, its own slew and limits
  and its tuning would sit inside the model, the step test would have to run on the closed
  loop, and retuning a loop would silently invalidate the model. The PID loops stay the
  fallback: every step the MPC is in charge they track the value applied (so a hand-over is
  bumpless, as after an override), and on any step the MPC cannot vouch for — a reading it
  needs is not good, the solver fails, runs out of iterations or past its time budget — they
  run instead, with their own (or an operator's) setpoints, and the step is counted in
  `stats.fallback_reasons`.
- Caps (`coordinate_caps`, off by default: the thermal cap loop bounds the caps of an MPC
  rack, see MpcSettings): "the MPC sets the caps the allocator then follows": it limits the
  rack's IT power only when pump and valve cannot keep the temperatures within limits, and
  the allocator shares that limit out. Only once the pump is at its top
  (`caps_only_at_full_pump`): far below the model's operating point the linear model
  misjudges what more pump does for the chips, and left free to choose, the MPC throttled
  servers to save pump watts. A limit is released at
  `it_limit_release_w_per_s`, not at once: capped servers draw less, which must not read as
  the load going away. During a fallback step the last limit is held: a timed-out solve is no
  reason for caps to jump.
- Model: the identified transfer functions run in parallel with the rack (driven by the
  actuators applied and the disturbances measured), and a filtered output bias
  (`bias_gain`) corrects each predicted output to what is measured. That gives offset-free
  tracking and constraints anchored to measurements without amplifying sensor noise, and it
  absorbs the rack's nonlinearity away from the identified operating point step by step.
- Measured disturbances: IT power and facility water temperature, held at their measured value
  over the horizon. IT power shows in the coolant temperatures only after the cold plates, the
  transport delay and the loop's thermal mass, so a step in it moves the pump before the
  temperatures move.
- Objective per step: pump energy, a convex quadratic surrogate of the identified
  `k·speed³` (exact slope at the present speed, curvature taken at the model's operating
  point so that the QP matrix stays fixed and OSQP never refactors); supply temperature
  tracking (squared error); input moves (squared); throttled IT power (linear, priced well
  above pump energy so that pump and valve are used up first).
- Constraints: pump and valve bounds and rates (hard); supply, hottest server outlet and hottest
  chip temperature at most their limit less `backoff_k` (soft: exact L1 penalty plus a small
  quadratic on the slack, so they hold whenever they can be held and a violation that cannot be
  avoided is kept small instead of making the QP infeasible); flow at least
  `min_flow_lpm_per_kw` per kW of IT power (soft, PLANT.md's ~1 L/min per kW rule; more,
  `min_flow_lpm_per_kw_blind`, on a rack whose chip temperatures it cannot read), and never
  under a reserve for the rack's rated power (`reserve_flow_lpm_per_kw`) nor, reading no
  chips, under the pump loop's flow setpoint; the IT
  power limit between the caps' sum of minimums and the measured power.

Solver: OSQP, called directly
-----------------------------

OSQP is a new dependency of control/; it earns its place on numbers (benchmarks/mpc_solver.py,
on the 2-core test machine, 4 states, 2 inputs, horizon 20, in closed loop): OSQP called
directly solves in ~0.13 ms median, ~0.2 ms p99; scipy's SLSQP (what we already have) on the
same QP ~4 ms median and ~90 ms p99, 30x and 450x. CVXPY would add a modelling layer (and its
canonicalisation per solve) over the same OSQP. The rack's own QP is larger (each output's
realisation carries its dead time as states: ~40 states with the server temperatures): in the
scenario suite its solves take about a millisecond at p99, tens of milliseconds when IT power
is being limited. The QP here is built once as sparse matrices; each step only updates vectors
(initial state, disturbances, bounds, linear costs), which OSQP takes without refactoring its
KKT matrix, and starts from the previous solution.

Time budget: control/ reads no clock. The budget is OSQP's own `time_limit` setting (seconds of
solver run time, checked by the C library between iterations) together with a deterministic
`max_iter`. A solve that ends on either is not used: that step falls back to PID. The caller
(runtime, scenario runner) measures the whole step from outside, as it does for any controller.
`stats.last_solve_s` is the run time OSQP reports, for metrics. Same inputs give the same
commands as long as no solve hits the time limit (which only a machine too slow for the
configured budget does).

Pure: no I/O, no clock reads; time is the `now` argument.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import osqp  # type: ignore[import-untyped]
from scipy import sparse

from coolctl.control.identify import (
    CHIP_MAX,
    FACILITY_WATER,
    FLOW,
    IT_POWER,
    OUTLET_MAX,
    PUMP_SPEED,
    PUMP_SPEED_MEASURED,
    SUPPLY,
    VALVE,
    IdentifiedModel,
)
from coolctl.control.loops import PidLoop, RackController
from coolctl.model import Command, PointId, Snapshot, Source

FloatArray = npt.NDArray[np.float64]
Aggregate = Literal["single", "sum", "mean", "max"]

DEFAULT_PUMP_POWER_FULL_SPEED_W = 900.0  # PLANT.md's rated pump, if the model has no figure
SOLVE_TIMES_KEPT = 100_000  # solve times kept for percentiles: a day at 1 s, and then some
_COST_SCALE_W = 1000.0  # the QP's costs are in kW-equivalents: O(1) numbers for OSQP


# -- how the rack is read ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signal:
    """One model signal as points of the rack: a single point, or several combined.

    Every point must have a good reading; otherwise the signal is unknown. (A sum with a server
    missing would read as a load drop, and a max with one missing could hide the hottest.)
    """

    points: tuple[PointId, ...]
    aggregate: Aggregate = "single"

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a signal needs at least one point")
        if self.aggregate == "single" and len(self.points) != 1:
            raise ValueError("a 'single' signal has exactly one point")

    def read(self, snapshot: Snapshot) -> float | None:
        if self.aggregate == "single":
            single = snapshot.value(self.points[0])
            return single if single is not None and math.isfinite(single) else None
        values = []
        for point in self.points:
            value = snapshot.value(point)
            if value is None or not math.isfinite(value):
                return None
            values.append(value)
        if self.aggregate == "sum":
            return math.fsum(values)
        if self.aggregate == "mean":
            return math.fsum(values) / len(values)
        return max(values)  # "max"


@dataclass(frozen=True, slots=True)
class MpcRack:
    """What the MPC drives and reads on one rack, as plain data.

    `signals` maps the model's signal names (control/identify.py) to points. `cap_min_w` and
    `cap_max_w` are the sums of the servers' cap ranges; with `cap_max_w` 0 the MPC never asks
    for less IT power. `rack_power` (the PDU) lets `allocator_budget_w` count the load no cap
    governs. `rated_it_w` is the most IT power the rack may step to (its caps' sum, else its
    power budget; 0: unknown): the flow floor keeps a reserve for it.
    """

    rack: str
    pump: PointId
    valve: PointId | None
    signals: Mapping[str, Signal]
    rack_power: Signal | None = None
    cap_min_w: float = 0.0
    cap_max_w: float = 0.0
    rated_it_w: float = 0.0

    @classmethod
    def standard(
        cls,
        rack: str,
        *,
        cdu: str,
        servers: Sequence[str] = (),
        pdu: str | None = None,
        valve: bool = True,
        cap_min_w: float = 0.0,
        cap_max_w: float = 0.0,
        rated_it_w: float | None = None,
    ) -> MpcRack:
        """Canonical point names on a CDU, server BMCs and a PDU.

        IT power is the sum of the servers' power; without servers it is the PDU's power (which
        also counts the pump and overhead: a fair stand-in for a disturbance), and there is then
        no outlet or chip temperature to constrain. `rated_it_w` None: `cap_max_w`.
        """

        def point(device: str, name: str) -> PointId:
            return PointId(rack, device, name)

        signals: dict[str, Signal] = {
            PUMP_SPEED: Signal((point(cdu, "pump_speed_command"),)),
            FACILITY_WATER: Signal((point(cdu, "facility_supply_temperature"),)),
            SUPPLY: Signal((point(cdu, "supply_temperature"),)),
            "return_temperature": Signal((point(cdu, "return_temperature"),)),
            FLOW: Signal((point(cdu, "flow"),)),
            "pump_power": Signal((point(cdu, "pump_power"),)),
            PUMP_SPEED_MEASURED: Signal((point(cdu, "pump_speed"),)),
        }
        if valve:
            signals[VALVE] = Signal((point(cdu, "valve_command"),))
        if servers:
            signals[IT_POWER] = Signal(tuple(point(s, "power") for s in servers), "sum")
            signals[OUTLET_MAX] = Signal(
                tuple(point(s, "coolant_outlet_temperature") for s in servers), "max"
            )
            signals[CHIP_MAX] = Signal(tuple(point(s, "chip_temperature") for s in servers), "max")
        elif pdu is not None:
            signals[IT_POWER] = Signal((point(pdu, "power"),))
        return cls(
            rack=rack,
            pump=point(cdu, "pump_speed_command"),
            valve=point(cdu, "valve_command") if valve else None,
            signals=signals,
            rack_power=Signal((point(pdu, "power"),)) if pdu is not None else None,
            cap_min_w=cap_min_w,
            cap_max_w=cap_max_w,
            rated_it_w=cap_max_w if rated_it_w is None else rated_it_w,
        )

    def read(self, snapshot: Snapshot) -> dict[str, float | None]:
        """Every signal's value, None where it is not known."""
        return {name: signal.read(snapshot) for name, signal in self.signals.items()}


# -- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MpcSettings:
    """Limits, weights and the solver budget. Temperatures in degC, rates per second.

    Weights are costs per control step in one currency, "watts of pump power": 1 W of pump power
    for a step costs `pump_energy_weight_per_w`; a supply temperature 1 K off its setpoint costs
    `supply_weight_per_k2`; each W of IT power withheld costs `throttle_weight_per_w`; each K a
    soft limit is exceeded (after the back-off) costs `slack_weight_per_k` plus
    `slack_weight_per_k2` per K². A flow shortfall is priced per L/min at `flow_slack_factor`
    of a K. Moves cost `*_move_weight` per (fraction of full travel)².
    """

    horizon: int = 20
    pump_min: float = 0.2
    pump_max: float = 1.0
    pump_rate_per_s: float = 0.1
    valve_min: float = 0.05
    valve_max: float = 1.0
    valve_rate_per_s: float = 0.05
    # A valve move smaller than this (of full travel) is not made: the valve holds and the
    # next solve plans from where it stands (a valve's smallest moves are reversals that wear
    # it, and a sticky one does not make them anyway). With the move weight and the bias gain
    # below, 0.02 took the simulated steady load from 106 full strokes and 1880 reversals an
    # hour to 0.13 and 5 (supply IAE 0.12 -> 0.04 K·ks); the three together, not one alone.
    valve_deadband: float = 0.02
    supply_setpoint_c: float | None = None  # None: the PID supply loop's setpoint, else 35
    supply_max_c: float = 45.0
    outlet_max_c: float | None = 60.0
    chip_max_c: float | None = 86.0
    backoff_k: float = 1.0
    min_flow_lpm_per_kw: float | None = 1.0
    # ... and when the MPC reads no chip temperatures (no BMCs) it cannot see the chips warm
    # as flow falls, so the flow rule alone must keep them cool, also when a job burst loads
    # a few servers fully while the rack's total is modest. On the diurnal scenario (no BMCs):
    # 1.3 L/min per kW let bursts reach the chips' throttle point (0.5 kWh of work lost in a
    # day), 1.45 held them at 85 degC with none lost, 1.6 cost a third more pump energy.
    min_flow_lpm_per_kw_blind: float | None = 1.45
    # ... and, whatever the load, this per kW of the rack's rated IT power (`MpcRack.rated_it_w`):
    # a job landing on a few servers heats their chips in seconds, faster than the pump
    # follows, and the rack's total (what the rule above reads) hardly moves. Under the rule
    # above alone the MPC ran load step up's 30 % at 57 L/min, and the step to full load took
    # the hottest chip from 77 to 86.9 degC; with the rest of this version, a reserve of 1.0
    # held that run to 82.7, 1.2 to 81.8 (pump energy on steady load 0.085 -> 0.39 kWh, the
    # PID's 0.47).
    reserve_flow_lpm_per_kw: float | None = 1.2
    pump_power_full_speed_w: float | None = None  # None: the model's, else 900 W
    pump_energy_weight_per_w: float = 1.0
    # 1000: at 100 the MPC let the supply sit ~0.2 K off for minutes after a load step to save
    # a few pump watts (load step up: 7x the PID's IAE; at 1000, 1.4x; steady load noise-bound)
    supply_weight_per_k2: float = 1000.0
    pump_move_weight: float = 2000.0
    valve_move_weight: float = 20000.0  # 200 moved the valve on every 0.1 K of sensor noise
    throttle_weight_per_w: float = 5.0
    slack_weight_per_k: float = 1.0e5
    slack_weight_per_k2: float = 1.0e4
    flow_slack_factor: float = 0.2
    # The MPC's own IT-power limit, off: the thermal cap loop (a PI on the margins, only with
    # cooling at its top) bounds the caps of an MPC rack as of a PID one. On its linear model
    # the MPC's limit went from none to the caps' minimum whenever pump and valve topped out
    # (load step up at full load: 27 kW for 118 drawn, once every 5-6 minutes, 24.5 kWh of the
    # run's 105 lost), where the thermal cap lowers the power a little, as needed.
    coordinate_caps: bool = False
    caps_threshold_w: float = 200.0  # a limit less than this below the measured power is none
    # Caps only once the pump is at its top (within one step's move): the model is linear
    # about its operating point, and far below it (low flow) it underrates what more pump
    # does for the chips, so a free choice between pump and caps drifted into throttling.
    caps_only_at_full_pump: bool = True
    # An IT-power limit is raised again at most this fast: a limit makes the measured IT power
    # fall, which must not read as the load going away (caps off, load back, caps on, ...).
    # Not much slower: after a pump trip the interlock's caps are gone at once, and every
    # second the MPC's limit lingers is work lost (500 W/s cost 1.9 kWh more than the PID).
    it_limit_release_w_per_s: float = 2000.0
    # the share of each step's prediction error taken into the bias: 0.5 passed the sensor's
    # 0.1 K steps on to the plan, and the plan to the valve
    bias_gain: float = 0.1
    reset_after_s: float = 30.0  # a gap this long re-initialises the model from readings
    max_iter: int = 4000
    time_limit_s: float = 0.2
    eps: float = 1e-3

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"MpcSettings.{name} must be finite, got {value!r}")
        if self.horizon < 2:
            raise ValueError("horizon must be at least 2 steps")
        if not 0.0 <= self.pump_min <= self.pump_max <= 1.0:
            raise ValueError("need 0 <= pump_min <= pump_max <= 1")
        if not 0.0 <= self.valve_min <= self.valve_max <= 1.0:
            raise ValueError("need 0 <= valve_min <= valve_max <= 1")
        if not 0.0 <= self.valve_deadband < 1.0:
            raise ValueError("valve_deadband must be within [0, 1)")
        positive = ("pump_rate_per_s", "valve_rate_per_s", "time_limit_s", "eps", "reset_after_s")
        for name in positive:
            if getattr(self, name) <= 0.0:
                raise ValueError(f"MpcSettings.{name} must be > 0")
        if not 0.0 < self.bias_gain <= 1.0:
            raise ValueError("bias_gain must be within (0, 1]")
        if self.max_iter < 1:
            raise ValueError("max_iter must be >= 1")


# -- what a step decided -----------------------------------------------------------------------


@dataclass(slots=True)
class MpcStats:
    """Counters for metrics: how often the MPC was in charge, and why it was not."""

    steps: int = 0
    solves: int = 0  # steps whose commands came from a solved QP
    fallbacks: int = 0  # steps handed to the PID loops
    fallback_reasons: dict[str, int] = field(default_factory=dict)
    consecutive_fallbacks: int = 0
    last_status: str = ""
    last_reason: str = ""
    last_iterations: int = 0
    last_solve_s: float = 0.0  # as OSQP reports its own run time
    max_solve_s: float = 0.0
    total_solve_s: float = 0.0  # OSQP's run time over every solve
    # the latest solve times, for percentiles (bounded: a daemon runs for months)
    recent_solve_s: deque[float] = field(default_factory=lambda: deque(maxlen=SOLVE_TIMES_KEPT))
    limited_steps: int = 0  # solved steps that handed the allocator an IT-power limit

    def fell_back(self, reason: str, detail: str) -> None:
        self.fallbacks += 1
        self.consecutive_fallbacks += 1
        self.fallback_reasons[reason] = self.fallback_reasons.get(reason, 0) + 1
        self.last_reason = detail


@dataclass(frozen=True, slots=True)
class MpcPlan:
    """The last plan: inputs and predicted outputs over the horizon (for plots and status)."""

    time: float
    pump: tuple[float, ...]
    valve: tuple[float, ...]
    it_power_w: tuple[float, ...]
    predicted: Mapping[str, tuple[float, ...]]
    bias: Mapping[str, float]
    supply_setpoint_c: float


FALLBACK_REASONS = ("blind", "time_limit", "max_iter", "infeasible", "solver_error")


# -- the controller ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Soft:
    """One soft output constraint row per horizon step."""

    output: int  # index into the MPC's outputs
    kind: Literal["max", "min_flow"]
    limit: float  # max: the limit in the output's unit; min_flow: L/min per W of IT power
    weight: float  # slack price factor (1 for K)


def build_mpc(
    rack: MpcRack, model: IdentifiedModel, settings: MpcSettings, fallback: RackController
) -> MpcController:
    """The MPC for one rack; raises ValueError if the model or the rack lacks what it needs."""
    return MpcController(rack, model, settings, fallback)


class MpcController:
    """See the module docstring. One per rack; not thread-safe (one tick at a time)."""

    def __init__(
        self,
        rack: MpcRack,
        model: IdentifiedModel,
        settings: MpcSettings,
        fallback: RackController,
    ) -> None:
        self.rack = rack
        self.model = model
        self.settings = settings
        self.fallback = fallback
        self.stats = MpcStats()
        self.it_power_limit_w: float | None = None
        self._check(rack, model)
        self._outputs, self._softs = self._choose_outputs(rack, model, settings)
        self._needed = (*model.disturbances, *self._outputs)
        # what a step reads: the signals it needs, and IT power (the caps' decision); the
        # actuator positions only when the MPC does not know what was applied
        self._reads = tuple(
            (name, rack.signals[name])
            for name in dict.fromkeys((*self._needed, IT_POWER))
            if name in rack.signals
        )
        self._plan: MpcPlan | None = None
        self._plan_parts: _PlanParts | None = None
        self._plan_of: _PlanParts | None = None
        self._setup_model()
        self._setup_qp()
        # the model's state and what the MPC knows of the actuators
        self._x: FloatArray | None = None
        self._bias = np.zeros(len(self._outputs))
        # the servers' temperatures, whose bias rises at once (see `_advance`)
        self._rises_at_once = np.array([o in (CHIP_MAX, OUTLET_MAX) for o in self._outputs])
        self._last_time: float | None = None
        self._last_d: FloatArray | None = None
        self._applied: dict[PointId, float] = {}

    # -- RackController's interface ------------------------------------------------------------

    @property
    def loops(self) -> dict[str, PidLoop]:
        return self.fallback.loops

    @property
    def inputs(self) -> list[PointId]:
        points = {p for s in self.rack.signals.values() for p in s.points}
        points.update(self.fallback.inputs)
        return sorted(points)

    def loop_of(self, actuator: PointId) -> PidLoop | None:
        return self.fallback.loop_of(actuator)

    def applied(self, actuator: PointId, value: float, now: float) -> None:
        """The actuator now holds `value` (clamped, overridden, interlocked, failsafe)."""
        if actuator in self._actuators:
            self._applied[actuator] = value
        self.fallback.applied(actuator, value, now)

    # -- one step ------------------------------------------------------------------------------

    @property
    def plan(self) -> MpcPlan | None:
        """The last plan: inputs and predicted outputs over the horizon (None before the first
        solve). Built when asked for, not every step: nothing in the loop reads it."""
        parts = self._plan_parts
        if parts is not None and parts is not self._plan_of:
            self._plan = parts.build(self._outputs, self._op_y, self._scale_y, self._c)
            self._plan_of = parts
        return self._plan

    def step(self, snapshot: Snapshot, now: float) -> list[Command]:
        self.stats.steps += 1
        values = {name: signal.read(snapshot) for name, signal in self._reads}
        missing = [name for name in self._needed if values.get(name) is None]
        current = self._current_inputs(values, snapshot)
        if missing or current is None:
            what = ", ".join(missing) or "actuator position"
            return self._fall_back(snapshot, now, "blind", f"MPC blind: {what} not good")
        d = np.array([values[name] or 0.0 for name in self.model.disturbances])
        y = np.array([values[name] or 0.0 for name in self._outputs])
        elapsed = self._advance(now, current, d, y)
        setpoint = self._supply_setpoint()
        try:
            result = self._solve(current, d, setpoint, values)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
            return self._fall_back(snapshot, now, "solver_error", f"MPC solver error: {exc}")
        status = str(result.info.status)
        self.stats.last_status = status
        self.stats.last_iterations = int(result.info.iter)
        self.stats.last_solve_s = float(result.info.run_time)
        self.stats.max_solve_s = max(self.stats.max_solve_s, self.stats.last_solve_s)
        self.stats.total_solve_s += self.stats.last_solve_s
        self.stats.recent_solve_s.append(self.stats.last_solve_s)
        reason = _status_reason(int(result.info.status_val))
        z = np.asarray(result.x, dtype=np.float64)
        if reason is None and not np.isfinite(z).all():
            reason = "solver_error"
        if reason is not None:
            return self._fall_back(snapshot, now, reason, f"MPC not used: OSQP {status}")
        return self._commands(snapshot, now, z, current, d, setpoint, elapsed)

    def kpis(self) -> dict[str, float]:
        """Counters for a scenario run's KPIs and the daemon's metrics: steps, solves,
        fallbacks (by reason), OSQP's own solve time (p99, max, and the total: how much of a
        run's control time is the solver's), steps that limited IT power."""
        stats = self.stats
        times = np.asarray(stats.recent_solve_s, dtype=np.float64)
        out = {
            "mpc_steps": float(stats.steps),
            "mpc_solves": float(stats.solves),
            "mpc_fallbacks": float(stats.fallbacks),
            "mpc_solve_p99_ms": float(np.percentile(times, 99)) * 1e3 if times.size else 0.0,
            "mpc_solve_max_ms": stats.max_solve_s * 1e3,
            "mpc_solve_total_s": stats.total_solve_s,
            "mpc_it_limit_steps": float(stats.limited_steps),
        }
        for reason in FALLBACK_REASONS:
            out[f"mpc_fallbacks_{reason}"] = float(stats.fallback_reasons.get(reason, 0))
        return out

    def allocator_budget_w(
        self, budget_w: float | None, snapshot: Snapshot, margin_w: float = 0.0
    ) -> float | None:
        """The budget to hand the power-cap allocator: the rack's, or less when the MPC limits
        IT power. The allocator takes budget − margin − non-server load for the caps, so the
        MPC's IT limit is handed on as limit + margin + non-server load (the PDU's power less
        the IT power, when both are read)."""
        limit = self.it_power_limit_w
        if limit is None:
            return budget_w
        non_server = 0.0
        rack_power = None if self.rack.rack_power is None else self.rack.rack_power.read(snapshot)
        it_signal = self.rack.signals.get(IT_POWER)
        it_power = None if it_signal is None else it_signal.read(snapshot)
        if rack_power is not None and it_power is not None:
            non_server = max(0.0, rack_power - it_power)
        thermal = limit + margin_w + non_server
        return thermal if budget_w is None else min(budget_w, thermal)

    # -- setup ---------------------------------------------------------------------------------

    @property
    def _actuators(self) -> tuple[PointId, ...]:
        return (self.rack.pump,) if self.rack.valve is None else (self.rack.pump, self.rack.valve)

    def _check(self, rack: MpcRack, model: IdentifiedModel) -> None:
        if tuple(model.inputs) != (PUMP_SPEED, VALVE):
            raise ValueError(f"the MPC needs a model with inputs {PUMP_SPEED}, {VALVE}")
        for name in (*model.disturbances, SUPPLY):
            if name not in rack.signals:
                raise ValueError(f"rack {rack.rack}: no points for model signal {name!r}")
        if SUPPLY not in model.outputs:
            raise ValueError(f"the model has no {SUPPLY} output")
        if rack.valve is None and VALVE not in rack.signals:
            raise ValueError("without a valve actuator the MPC needs the valve position read")

    @staticmethod
    def _choose_outputs(
        rack: MpcRack, model: IdentifiedModel, settings: MpcSettings
    ) -> tuple[tuple[str, ...], tuple[_Soft, ...]]:
        """The outputs the MPC predicts: supply always; flow, outlet and chip when limited and
        both the model and the rack have them."""
        outputs = [SUPPLY]
        softs = [_Soft(0, "max", settings.supply_max_c - settings.backoff_k, 1.0)]
        limited = ((OUTLET_MAX, settings.outlet_max_c), (CHIP_MAX, settings.chip_max_c))
        for name, limit in limited:
            if limit is not None and name in model.outputs and name in rack.signals:
                outputs.append(name)
                softs.append(_Soft(len(outputs) - 1, "max", limit - settings.backoff_k, 1.0))
        sees_chips = CHIP_MAX in outputs
        per_kw = settings.min_flow_lpm_per_kw if sees_chips else settings.min_flow_lpm_per_kw_blind
        if per_kw is not None and FLOW in model.outputs and FLOW in rack.signals:
            outputs.append(FLOW)
            softs.append(
                _Soft(len(outputs) - 1, "min_flow", per_kw / 1000.0, settings.flow_slack_factor)
            )
        return tuple(outputs), tuple(softs)

    def _setup_model(self) -> None:
        """The model in scaled deviations: each signal divided by its spread in the step test,
        so that watts, kelvins and fractions meet the QP as numbers of like size."""
        model = self.model
        ss = model.state_space(self._outputs)
        signals = model.signals
        scale_v = np.array([model.scale[s] for s in signals])
        block_scale = np.concatenate(
            [np.full(model.models[name].order, model.scale[name]) for name in self._outputs]
        )
        self._a = ss.a  # block-diagonal per output: scaling each block alike leaves it as is
        self._b = (ss.b * scale_v[None, :]) / block_scale[:, None]
        self._c = ss.c
        self._nx = ss.states
        self._scale_v = scale_v
        self._op_v = np.array([model.operating_point[s] for s in signals])
        self._scale_y = np.array([model.scale[name] for name in self._outputs])
        self._op_y = np.array([model.operating_point[name] for name in self._outputs])
        self._n_inputs = len(model.inputs)
        self._it_index = signals.index(IT_POWER) if IT_POWER in signals else None
        power = self.settings.pump_power_full_speed_w or model.pump_power_full_speed_w
        self._pump_full_w = (
            power if power is not None and power > 0 else (DEFAULT_PUMP_POWER_FULL_SPEED_W)
        )

    def _setup_qp(self) -> None:
        """The sparse QP, built once; each step only updates vectors (see the docstring).

        Variables z = [x(1..N), u(0..N-1), θ, e(1..N)]: model states, pump and valve, the IT
        power withheld (one value held over the horizon: a cap is a slow decision, and one
        variable per step left OSQP juggling near-equivalent plans), and the slacks of the soft
        limits. Rows: dynamics, input bounds, moves, θ bounds, soft limits, slacks >= 0.
        """
        s = self.settings
        n, nx, nu, ns = s.horizon, self._nx, self._n_inputs, len(self._softs)
        self._ix = 0
        self._iu = n * nx
        self._it = self._iu + n * nu
        self._ie = self._it + 1
        nz = self._ie + n * ns
        self._nz = nz
        a, b, c = self._a, self._b, self._c
        bu = b[:, :nu]
        # θ in units that price it at ~0.1 per unit in the QP's currency: a variable with a
        # large linear price per unit slows OSQP's ADMM by an order of magnitude (measured).
        weight = max(s.throttle_weight_per_w, 1e-6)
        self._theta_unit_w = min(max(0.1 * _COST_SCALE_W / weight, 1.0), 1000.0)
        if self._it_index is not None:
            b_it = b[:, self._it_index] * (self._theta_unit_w / self._scale_v[self._it_index])
        else:
            b_it = np.zeros(nx)

        def block(rows: int, start: int, matrix: Any) -> Any:
            """`matrix` placed at column `start` of a `rows` x nz block."""
            width = matrix.shape[1]
            return sparse.hstack(
                [
                    sparse.csr_matrix((rows, start)),
                    sparse.csr_matrix(matrix),
                    sparse.csr_matrix((rows, nz - start - width)),
                ]
            )

        # dynamics: x[k+1] - A x[k] - Bu u[k] + B_it θ = rhs[k]
        shift = sparse.kron(sparse.eye(n), sparse.eye(nx)) - sparse.kron(
            sparse.eye(n, k=-1), sparse.csr_matrix(a)
        )
        dynamics = sparse.hstack(
            [
                shift,
                sparse.kron(sparse.eye(n), sparse.csr_matrix(-bu)),
                sparse.csr_matrix(np.tile(b_it, n).reshape(n * nx, 1)),
                sparse.csr_matrix((n * nx, n * ns)),
            ]
        )
        bounds_u = block(n * nu, self._iu, sparse.eye(n * nu))
        moves = block(
            (n - 1) * nu,
            self._iu,
            sparse.eye((n - 1) * nu, n * nu, k=nu) - sparse.eye((n - 1) * nu, n * nu),
        )
        bounds_theta = block(1, self._it, sparse.eye(1))
        # soft limits, one row per limit per step k = 1..N, on x[k]
        c_soft = np.array([c[sc.output] for sc in self._softs])
        e_soft = np.array(
            [(-1.0 if sc.kind == "max" else 1.0) / self._scale_y[sc.output] for sc in self._softs]
        )
        theta_soft = np.array(
            [
                sc.limit * self._theta_unit_w / self._scale_y[sc.output]
                if sc.kind == "min_flow"
                else 0.0
                for sc in self._softs
            ]
        )
        soft = sparse.hstack(
            [
                sparse.kron(sparse.eye(n), sparse.csr_matrix(c_soft)),
                sparse.csr_matrix((n * ns, n * nu)),
                sparse.csr_matrix(np.tile(theta_soft, n).reshape(n * ns, 1)),
                sparse.kron(sparse.eye(n), sparse.diags(e_soft)),
            ]
        )
        slacks = block(n * ns, self._ie, sparse.eye(n * ns))
        self._A = sparse.vstack(
            [dynamics, bounds_u, moves, bounds_theta, soft, slacks], format="csc"
        )
        self._rows_u = n * nx
        self._rows_move = self._rows_u + n * nu
        self._rows_t = self._rows_move + (n - 1) * nu
        self._rows_soft = self._rows_t + 1
        self._rows_slack = self._rows_soft + n * ns
        m = self._A.shape[0]

        # objective ½ zᵀPz + qᵀz, in kW-equivalents; the fixed parts are here, the rest in q
        sup = self._outputs.index(SUPPLY)
        tracking = 2.0 * s.supply_weight_per_k2 * self._scale_y[sup] ** 2 * np.outer(c[sup], c[sup])
        scale_u = self._scale_v[:nu]
        move_w = np.array([s.pump_move_weight, s.valve_move_weight]) * scale_u**2
        # Σ_k w (u[k] - u[k-1])², u[-1] the present position (its part is linear, in q)
        ends = np.ones(n)
        ends[:-1] = 2.0
        moves_p = sparse.kron(
            sparse.diags(ends) - sparse.eye(n, k=1) - sparse.eye(n, k=-1),
            sparse.diags(2.0 * move_w),
        )
        s_op = self._op_v[0]
        curvature = 6.0 * self._pump_full_w * max(s_op, 0.05) * s.pump_energy_weight_per_w
        energy = sparse.kron(sparse.eye(n), sparse.diags([curvature * scale_u[0] ** 2, 0.0]))
        # θ: a small quadratic keeps the throttle decision unique (price rises 10 % per 10 kW)
        theta_p = 2.0 * n * 0.1 * weight / 10_000.0 * self._theta_unit_w**2
        slack_p = np.tile([2.0 * s.slack_weight_per_k2 * sc.weight for sc in self._softs], n)
        p = sparse.block_diag(
            [
                sparse.kron(sparse.eye(n), sparse.csr_matrix(tracking)),
                moves_p + energy,
                sparse.csr_matrix([[theta_p]]),
                sparse.diags(slack_p),
            ],
            format="csc",
        )
        self._P = sparse.triu(p, format="csc") / _COST_SCALE_W
        self._move_w = move_w
        self._curvature = curvature
        self._solver = osqp.OSQP()
        self._solver.setup(
            self._P,
            np.zeros(nz),
            self._A,
            np.full(m, -np.inf),
            np.full(m, np.inf),
            verbose=False,
            warm_starting=True,
            polishing=False,
            max_iter=s.max_iter,
            time_limit=s.time_limit_s,
            eps_abs=s.eps,
            eps_rel=s.eps,
            adaptive_rho=1,  # by iterations, never by measured time: keeps solves deterministic
            adaptive_rho_interval=25,
            check_termination=5,
            # The duality-gap test (new in OSQP 1.0) relates the gap to the objective; with a
            # soft limit held off by a large slack price the objective is large, and that test
            # alone held 15 % of such solves to max_iter although primal and dual residuals
            # were met (measured on the simulated rack with 44 degC facility water).
            check_dualgap=False,
        )
        self._setup_vectors()

    def _setup_vectors(self) -> None:
        """The QP's vectors as far as they do not change from step to step, computed once.

        A step writes only what changes (the dynamics' right-hand side, the first move's bounds,
        θ's bound, the soft limits' finite side, the linear costs) into buffers kept for it, and
        hands them to OSQP's extension directly: the same numbers, by the same arithmetic, as
        building every vector afresh, without the Python and numpy overhead that used to cost
        more than half as much as the solve itself.
        """
        s = self.settings
        n, nx, nu, ns = s.horizon, self._nx, self._n_inputs, len(self._softs)
        m = self._A.shape[0]
        self._op_u, self._sc_u = self._op_v[:nu], self._scale_v[:nu]
        self._op_d, self._sc_d = self._op_v[nu:], self._scale_v[nu:]
        self._b_d = self._b[:, nu:]
        self._low = np.array([s.pump_min, s.valve_min])
        self._high = np.array([s.pump_max, s.valve_max])
        self._rate_per_s = np.array([s.pump_rate_per_s, s.valve_rate_per_s])
        self._rate = self._rate_per_s * self.model.dt_s
        self._pump_topped_at = s.pump_max - s.pump_rate_per_s * self.model.dt_s - 1e-9
        self._sup = self._outputs.index(SUPPLY)
        self._c_sup = self._c[self._sup]
        self._two_w_t = 2.0 * (s.supply_weight_per_k2 * self._scale_y[self._sup])
        self._slope_factor = 3.0 * self._pump_full_w
        self._sc_u0 = self._sc_u[0]
        self._curvature_u = self._curvature * self._sc_u0**2
        self._move_q = -2.0 * self._move_w
        # bounds: l and u, their constant parts filled in here
        lo = np.empty(m)
        hi = np.empty(m)
        u_rows = slice(self._rows_u, self._rows_move)
        lo[u_rows].reshape(n, nu)[:] = (self._low - self._op_u) / self._sc_u
        hi[u_rows].reshape(n, nu)[:] = (self._high - self._op_u) / self._sc_u
        step = self._rate / self._sc_u
        lo[self._rows_move : self._rows_t].reshape(n - 1, nu)[:] = -step
        hi[self._rows_move : self._rows_t].reshape(n - 1, nu)[:] = step
        lo[self._rows_t] = 0.0
        self._soft_rows: list[tuple[slice, int, bool, float]] = []
        for i, sc in enumerate(self._softs):
            rows = slice(self._rows_soft + i, self._rows_slack, ns)
            if sc.kind == "max":
                lo[rows] = -np.inf
            else:
                hi[rows] = np.inf
            self._soft_rows.append((rows, sc.output, sc.kind == "max", sc.limit))
        lo[self._rows_slack :] = 0.0
        hi[self._rows_slack :] = np.inf
        self._lo, self._hi = lo, hi
        self._lo_dynamics = lo[: n * nx].reshape(n, nx)
        # linear costs: throttled power and slack prices are fixed, the rest is added per step
        q = np.zeros(self._nz)
        q[self._it] = n * s.throttle_weight_per_w * self._theta_unit_w
        q[self._ie :].reshape(n, ns)[:] = [s.slack_weight_per_k * sc.weight for sc in self._softs]
        self._q_fixed = q
        self._q = q.copy()
        self._q_tracking = self._q[self._ix : self._iu].reshape(n, nx)
        self._q_scaled = np.empty(self._nz)
        # what OSQP's Python interface would do on update (infinite bounds to its infinity)
        # and solve, without the interface: `_solve` calls the extension directly when there
        # is one (osqp 1.x), else the interface
        self._osqp_infinity = float(self._solver.constant("OSQP_INFTY"))
        self._l_osqp = np.empty(m)
        self._u_osqp = np.empty(m)
        ext = getattr(self._solver, "_solver", None)
        direct = ("update_data_vec", "solve", "info", "solution")
        self._osqp_ext: Any = ext if all(hasattr(ext, name) for name in direct) else None

    # -- the model in parallel with the rack ---------------------------------------------------

    def _current_inputs(
        self, values: Mapping[str, float | None], snapshot: Snapshot
    ) -> FloatArray | None:
        """Pump and valve as last applied (by the MPC, the PID, or the supervisor), else read."""
        pump = self._applied.get(self.rack.pump)
        if pump is None:
            pump = self._read(PUMP_SPEED, values, snapshot)
        valve = None if self.rack.valve is None else self._applied.get(self.rack.valve)
        if valve is None:
            valve = self._read(VALVE, values, snapshot)
        if pump is None or valve is None:
            return None
        return np.array([pump, valve])

    def _read(
        self, name: str, values: Mapping[str, float | None], snapshot: Snapshot
    ) -> float | None:
        if name in values:
            return values[name]
        signal = self.rack.signals.get(name)
        return None if signal is None else signal.read(snapshot)

    def _advance(self, now: float, u: FloatArray, d: FloatArray, y: FloatArray) -> float:
        """Bring the model's state to `now` and update the output bias; return the time since
        the last step (one model step at the first)."""
        dt = self.model.dt_s
        last = self._last_time
        elapsed = dt if last is None else now - last
        if self._x is None or last is None or elapsed > self.settings.reset_after_s or elapsed < 0:
            # (re)start: the rack is taken as settled where it stands, the bias takes the rest
            v_now = self._normalise(u, d)
            self._x = np.linalg.solve(np.eye(self._nx) - self._a, self._b @ v_now)
            self._bias = y - self._predict_y(self._x)
        else:
            steps = math.floor(elapsed / dt + 0.5)
            if steps > 0:
                last_d = self._last_d if self._last_d is not None else d
                v_last = self._normalise(u, last_d)  # u: what was applied since then
                x = self._x
                for _ in range(steps):
                    x = self._a @ x + self._b @ v_last
                self._x = x
                gain = self.settings.bias_gain
                error = y - self._predict_y(x)
                self._bias += gain * (error - self._bias)
                # A server hotter than the model says is believed at once, a cooler one slowly:
                # the model sees the rack's total power, not which servers draw it, and a job on
                # a few servers heats their chips while the total hardly moves.
                rising = self._rises_at_once & (error > self._bias)
                self._bias[rising] = error[rising]
        self._last_time = now
        self._last_d = d
        return elapsed

    def _normalise(self, u: FloatArray, d: FloatArray) -> FloatArray:
        normalised: FloatArray = (np.concatenate([u, d]) - self._op_v) / self._scale_v
        return normalised

    def _predict_y(self, x: FloatArray) -> FloatArray:
        predicted: FloatArray = self._op_y + self._scale_y * (self._c @ x)
        return predicted

    def _flow_floor_lpm(self) -> float:
        """The flow kept whatever the load: the reserve for the rack's rated power; and on a
        rack whose chips it cannot read, at least the flow the pump loop would hold (its
        setpoint, boost included): without chip readings the MPC has no ground to run the pump
        lower than the flow the rack was commissioned with."""
        per_kw = self.settings.reserve_flow_lpm_per_kw
        floor = 0.0 if per_kw is None else per_kw * self.rack.rated_it_w / 1000.0
        if CHIP_MAX in self._outputs:
            return floor
        flow = self.rack.signals[FLOW].points[0]
        loop = self._loop_on(flow)
        return floor if loop is None else max(floor, loop.setpoint)

    def _loop_on(self, point: PointId) -> PidLoop | None:
        """The fallback's loop that holds `point` (not a difference), if any."""
        for loop in self.fallback.loops.values():
            if loop.spec.measurement == point and loop.spec.measurement_subtrahend is None:
                return loop
        return None

    def _supply_setpoint(self) -> float:
        if self.settings.supply_setpoint_c is not None:
            return self.settings.supply_setpoint_c
        loop = self._loop_on(self.rack.signals[SUPPLY].points[0])
        return 35.0 if loop is None else loop.setpoint

    # -- the QP --------------------------------------------------------------------------------

    def _bounds(self, current: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Per-input bounds and the per-step move limit (not to be modified: shared)."""
        if self.rack.valve is not None:
            return self._low, self._high, self._rate
        low = self._low.copy()  # no valve to move: hold it where it reads
        high = self._high.copy()
        low[1] = high[1] = current[1]
        return low, high, self._rate

    def _solve(
        self,
        current: FloatArray,
        d: FloatArray,
        setpoint: float,
        values: Mapping[str, float | None],
    ) -> Any:
        """Update the QP's vectors for this step and solve it. What is written where, and why
        only that, see `_setup_vectors`; the arithmetic of each value is as it always was."""
        s = self.settings
        n, nx, nu = s.horizon, self._nx, self._n_inputs
        assert self._x is not None
        op_u, sc_u = self._op_u, self._sc_u
        lo, hi = self._lo, self._hi
        # dynamics: the disturbances held over the horizon, the initial state in the first
        d_norm = (d - self._op_d) / self._sc_d
        self._lo_dynamics[:] = self._b_d @ d_norm
        lo[:nx] += self._a @ self._x
        hi[: n * nx] = lo[: n * nx]
        # inputs: the first from the present position, within a move
        low, high, rate = self._bounds(current)
        iu = self._rows_u
        lo[iu : iu + nu] = (np.maximum(low, np.minimum(current - rate, high)) - op_u) / sc_u
        hi[iu : iu + nu] = (np.minimum(high, np.maximum(current + rate, low)) - op_u) / sc_u
        if self.rack.valve is None:  # the valve's bounds move with its reading
            lo[iu + nu : self._rows_move].reshape(n - 1, nu)[:] = (low - op_u) / sc_u
            hi[iu + nu : self._rows_move].reshape(n - 1, nu)[:] = (high - op_u) / sc_u
        # IT power withheld: 0 up to what the caps' minimums leave
        it_power = float(values.get(IT_POWER) or 0.0)
        theta_max = 0.0
        if (
            s.coordinate_caps
            and self.rack.cap_max_w > 0.0
            and self._it_index is not None
            and (current[0] >= self._pump_topped_at or not s.caps_only_at_full_pump)
        ):
            theta_max = max(0.0, it_power - self.rack.cap_min_w) / self._theta_unit_w
        hi[self._rows_t] = theta_max
        # soft output limits: the finite side
        floor_lpm = self._flow_floor_lpm()
        for rows, o, is_max, limit in self._soft_rows:
            base = self._op_y[o] + self._bias[o]
            if is_max:
                hi[rows] = (limit - base) / self._scale_y[o]
            else:
                lo[rows] = (max(limit * it_power, floor_lpm) - base) / self._scale_y[o]

        # linear costs
        q = self._q
        q[:] = self._q_fixed
        sup = self._sup
        offset = self._op_y[sup] + self._bias[sup] - setpoint
        self._q_tracking += self._two_w_t * offset * self._c_sup
        # pump energy: exact slope at the present speed, fixed curvature (see _setup_qp)
        s0 = float(current[0])
        slope = self._slope_factor * s0 * s0 * s.pump_energy_weight_per_w
        u0_norm = (current - op_u) / sc_u
        delta = u0_norm[0]  # present speed, normalised
        q[self._iu : self._it : nu] += slope * self._sc_u0 - self._curvature_u * delta
        # the first move is from the present position
        q[self._iu : self._iu + nu] += self._move_q * u0_norm
        np.divide(q, _COST_SCALE_W, out=self._q_scaled)
        ext = self._osqp_ext
        if ext is None:
            self._solver.update(q=self._q_scaled, l=lo, u=hi)
            return self._solver.solve(raise_error=False)
        np.maximum(lo, -self._osqp_infinity, out=self._l_osqp)
        np.minimum(hi, self._osqp_infinity, out=self._u_osqp)
        ext.update_data_vec(q=self._q_scaled, l=self._l_osqp, u=self._u_osqp)
        ext.solve()
        return _Solution(ext.info, ext.solution.x)

    # -- results -------------------------------------------------------------------------------

    def _commands(
        self,
        snapshot: Snapshot,
        now: float,
        z: FloatArray,
        current: FloatArray,
        d: FloatArray,
        setpoint: float,
        elapsed: float,
    ) -> list[Command]:
        s = self.settings
        n, nx, nu = s.horizon, self._nx, self._n_inputs
        u_plan = self._op_u + self._sc_u * z[self._iu : self._it].reshape(n, nu)
        # OSQP meets constraints to its tolerance; what is sent meets them exactly
        low, high, _ = self._bounds(current)
        window = self._rate_per_s * min(max(elapsed, 0.0), self.model.dt_s)
        # (np.clip's arithmetic, without its dispatch: a step's worth of microseconds)
        first = np.minimum(
            np.maximum(u_plan[0], np.maximum(low, current - window)),
            np.minimum(high, current + window),
        )
        first = np.minimum(np.maximum(first, low), high)
        valve_at, valve_move = current[-1], first[-1] - current[-1]  # inputs: pump, valve
        if low[-1] <= valve_at <= high[-1] and abs(valve_move) < s.valve_deadband:
            first[-1] = valve_at  # a move under the deadband is not made
        theta = max(float(z[self._it]), 0.0) * self._theta_unit_w
        it_power = float(d[self._it_index - nu]) if self._it_index is not None else 0.0
        wanted = max(it_power - theta, self.rack.cap_min_w) if theta >= s.caps_threshold_w else None
        self.it_power_limit_w = self._released(wanted, elapsed)
        xs = z[self._ix : self._iu].reshape(n, nx)
        self._plan_parts = _PlanParts(
            now, u_plan, it_power - theta, xs, self._bias.copy(), setpoint
        )
        self.stats.solves += 1
        self.stats.consecutive_fallbacks = 0
        sup = _predicted(self._sup, xs, self._op_y, self._bias, self._scale_y, self._c)
        why = (
            f"MPC: supply {sup[0]:.2f}->{sup[-1]:.2f} degC over {n} steps (setpoint"
            f" {setpoint:.1f}), IT power {it_power / 1000:.1f} kW"
        )
        if self.it_power_limit_w is not None:
            self.stats.limited_steps += 1
            why += f", IT limit {self.it_power_limit_w / 1000:.1f} kW"
        commands = [Command(self.rack.pump, float(first[0]), Source.AUTO, why)]
        if self.rack.valve is not None:
            commands.append(Command(self.rack.valve, float(first[1]), Source.AUTO, why))
        for command in commands:
            self._applied[command.point] = command.value
        commands.extend(self._other_loops(snapshot, now, commands))
        return commands

    def _released(self, wanted: float | None, elapsed: float) -> float | None:
        """The IT-power limit to hand on: `wanted` when it is lower than the one in force,
        else the one in force raised by at most the release rate (None once it reaches the
        caps' maximum: no limit)."""
        previous = self.it_power_limit_w
        if previous is None or (wanted is not None and wanted <= previous):
            return wanted
        raised = previous + self.settings.it_limit_release_w_per_s * max(elapsed, 0.0)
        if wanted is not None and wanted <= raised:
            return wanted
        return None if raised >= self.rack.cap_max_w else raised

    def _other_loops(
        self, snapshot: Snapshot, now: float, commands: Sequence[Command]
    ) -> list[Command]:
        """PID loops on the MPC's actuators track what it sent (bumpless fallback); the loops on
        any other actuator run as usual."""
        sent = {c.point: c.value for c in commands}
        return self.fallback.step_except(
            snapshot, now, sent, "tracking the MPC (PID is its fallback)"
        )

    def _fall_back(self, snapshot: Snapshot, now: float, reason: str, detail: str) -> list[Command]:
        """PID for this step. The model keeps running on what is applied, the caps' limit holds."""
        self.stats.fell_back(reason, detail)
        commands = self.fallback.step(snapshot, now)
        for command in commands:
            if command.point in self._actuators:
                self._applied[command.point] = command.value
        return commands


@dataclass(frozen=True, slots=True)
class _Solution:
    """What `MpcController.step` reads of a solve: OSQP's info (status, status_val, iter,
    run_time) and the solution."""

    info: Any
    x: Any


def _predicted(
    i: int, xs: FloatArray, op_y: FloatArray, bias: FloatArray, scale_y: FloatArray, c: FloatArray
) -> FloatArray:
    """Output `i` over the horizon from the planned states `xs`, bias-corrected."""
    predicted: FloatArray = op_y[i] + bias[i] + scale_y[i] * (xs @ c[i])
    return predicted


@dataclass(frozen=True, slots=True)
class _PlanParts:
    """A solved step's plan as arrays; `MpcController.plan` turns it into an `MpcPlan` when
    asked for one."""

    time: float
    u_plan: FloatArray  # horizon x inputs, in actuator units
    it_power_w: float
    xs: FloatArray  # horizon x states
    bias: FloatArray
    supply_setpoint_c: float

    def build(
        self, outputs: Sequence[str], op_y: FloatArray, scale_y: FloatArray, c: FloatArray
    ) -> MpcPlan:
        return MpcPlan(
            time=self.time,
            pump=tuple(self.u_plan[:, 0].tolist()),
            valve=tuple(self.u_plan[:, 1].tolist()),
            it_power_w=(self.it_power_w,) * self.u_plan.shape[0],
            predicted={
                name: tuple(_predicted(i, self.xs, op_y, self.bias, scale_y, c).tolist())
                for i, name in enumerate(outputs)
            },
            bias={name: float(self.bias[i]) for i, name in enumerate(outputs)},
            supply_setpoint_c=self.supply_setpoint_c,
        )


def _status_reason(status: int) -> str | None:
    """None for a usable solution; else the fallback reason it counts under."""
    if status in (_SOLVED, _SOLVED_INACCURATE):
        return None
    if status == _TIME_LIMIT:
        return "time_limit"
    if status == _MAX_ITER:
        return "max_iter"
    if status in _INFEASIBLE:
        return "infeasible"
    return "solver_error"


_SOLVED = int(osqp.SolverStatus.OSQP_SOLVED)
_SOLVED_INACCURATE = int(osqp.SolverStatus.OSQP_SOLVED_INACCURATE)
_TIME_LIMIT = int(osqp.SolverStatus.OSQP_TIME_LIMIT_REACHED)
_MAX_ITER = int(osqp.SolverStatus.OSQP_MAX_ITER_REACHED)
_INFEASIBLE = {
    int(osqp.SolverStatus.OSQP_PRIMAL_INFEASIBLE),
    int(osqp.SolverStatus.OSQP_PRIMAL_INFEASIBLE_INACCURATE),
    int(osqp.SolverStatus.OSQP_DUAL_INFEASIBLE),
    int(osqp.SolverStatus.OSQP_DUAL_INFEASIBLE_INACCURATE),
}
