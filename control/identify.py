"""Model identification for coolctl's MPC: a low-order linear model fitted to step-test data.

The MPC never looks inside the plant. What it knows of the rack is what a step test shows
through the points the daemon reads: pump speed and valve commands, IT power and facility water
temperature in; supply, return, flow, hottest server coolant outlet and hottest chip out. This
module turns such a record into a model the MPC can load, and says how good that model is.

Model structure, and why:

- One multi-input, single-output transfer function per output, with a common denominator:

      A(q) (y(k) - y0) = sum_j q^-d_j B_j(q) (v_j(k) - v0_j)

  `A` of order `na` (1-3), each `B_j` of order `nb` (1-3), a whole-sample dead time `d_j >= 1`
  per input. That is first-order-plus-dead-time when na = nb = 1, and a second-order one with
  a zero when needed: the supply temperature has a fast part (the CDU volume) and a slow one
  (heat going round the loop), the return temperature a transport delay that a pure lag cannot
  show. `d_j >= 1` because the daemon reads and writes at the same tick: nothing it writes now
  can show in what it has just read.
- Fitted for simulation, not for one-step prediction (output error): the MPC runs the model in
  parallel with the rack and corrects it with a filtered output bias, so what matters is how
  well the model alone follows the rack over many steps. Least squares (ARX) gives the dead
  times and a starting point; `scipy.optimize.least_squares` then minimises the simulation
  error. An ARX model driven by noisy measured outputs, extrapolated 20 steps, amplifies the
  sensor noise in its `y(k) - y(k-1)` terms; a simulated model does not.
- Orders are picked per output on the estimation data only (AIC on the simulation error); the
  last `holdout_fraction` of the record is never used for fitting and is where the fit quality
  is measured.
- Deviation variables around the operating point of the test (the mean of its settling
  period), so the model is linear where the rack was tested. The rack is not linear (heat goes
  as power over flow, the chips' cold-plate resistance as flow^-0.8); the MPC's output bias
  absorbs the offset away from that point, and the identification report says how far the
  model reaches.

Fit quality, per output, on the held-out part (the model simulated from the inputs alone):

- `nrmse` = ||y - ŷ|| / ||y - mean(y)|| (so a model that predicts the mean scores 1, a perfect
  one 0; 100·(1 - nrmse) is the "fit %" of system-identification tools), `r2` = 1 - nrmse²;
- `r2_one_step`: the same for the one-step-ahead prediction (easy: it is shown for contrast);
- `r2_horizon`: how well the model predicts the *change* of the output over `horizon_steps`
  from any held-out sample, bias-corrected the way the MPC does; the closest single number to
  how useful the model is to the MPC.

Pure: numpy and scipy only; no I/O (the JSON text is returned and parsed, files are the
caller's), no clock reads, deterministic (the step-test plan takes a seed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import optimize
from scipy import signal as sps

FloatArray = npt.NDArray[np.float64]

MODEL_FORMAT = "coolctl-identified-model"
MODEL_VERSION = 1

# The model's signals. Names are the model's own, not points: the MPC maps each to the points of
# the rack it runs (see control/mpc.py, MpcRack), so one model file serves any rack wired alike.
PUMP_SPEED = "pump_speed"  # commanded pump speed, fraction of full speed
VALVE = "valve"  # commanded primary valve opening, fraction
IT_POWER = "it_power"  # servers' electrical power, W
FACILITY_WATER = "facility_water"  # facility water entering the CDU, degC
SUPPLY = "supply_temperature"  # coolant to the rack, degC
RETURN = "return_temperature"  # coolant back from the rack, degC
FLOW = "flow"  # secondary flow, L/min
OUTLET_MAX = "outlet_temperature_max"  # hottest server coolant outlet, degC
CHIP_MAX = "chip_temperature_max"  # hottest chip, degC
PUMP_POWER = "pump_power"  # pump electrical power, W (for the energy term, not a model output)
PUMP_SPEED_MEASURED = "pump_speed_measured"  # measured pump speed, for the pump power fit

MANIPULATED = (PUMP_SPEED, VALVE)
MEASURED_DISTURBANCES = (IT_POWER, FACILITY_WATER)
OUTPUTS = (SUPPLY, RETURN, FLOW, OUTLET_MAX, CHIP_MAX)

UNITS: Mapping[str, str] = {
    PUMP_SPEED: "ratio",
    VALVE: "ratio",
    IT_POWER: "watts",
    FACILITY_WATER: "celsius",
    SUPPLY: "celsius",
    RETURN: "celsius",
    FLOW: "litres_per_minute",
    OUTLET_MAX: "celsius",
    CHIP_MAX: "celsius",
    PUMP_POWER: "watts",
    PUMP_SPEED_MEASURED: "ratio",
}

SourceValue = str | int | float | bool


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return value


# -- step-test data ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepTestData:
    """A step-test record: one sample per `dt_s` of every signal, all of equal length.

    The first `settle_samples` are taken at the operating point before anything moves; their
    mean is the point the model is linearised around (with none, the first sample is).
    """

    dt_s: float
    signals: Mapping[str, FloatArray]
    settle_samples: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.dt_s) and self.dt_s > 0.0):
            raise ValueError(f"dt_s must be finite and > 0, got {self.dt_s!r}")
        lengths = {name: len(values) for name, values in self.signals.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"signals differ in length: {lengths}")
        for name, values in self.signals.items():
            if not np.all(np.isfinite(values)):
                raise ValueError(f"signal {name!r} has non-finite samples")
        if self.settle_samples < 0 or self.settle_samples > self.samples:
            raise ValueError(f"settle_samples {self.settle_samples} outside 0..{self.samples}")

    @property
    def samples(self) -> int:
        return next((len(v) for v in self.signals.values()), 0)

    def reference(self) -> dict[str, float]:
        """The operating point: the mean of the settling period (or the first sample)."""
        count = max(1, self.settle_samples)
        return {name: float(np.mean(values[:count])) for name, values in self.signals.items()}


# -- the step-test plan ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelPlan:
    """What a step test may do with one channel (an actuator, or offline a load or facility
    water excitation): stay within [low, high], move at most `max_rate_per_s`, and step by
    between half and all of `amplitude` away from the operating point."""

    name: str
    low: float
    high: float
    max_rate_per_s: float
    amplitude: float

    def __post_init__(self) -> None:
        for what in ("low", "high", "max_rate_per_s", "amplitude"):
            _finite(getattr(self, what), f"{self.name}: {what}")
        if self.low > self.high:
            raise ValueError(f"{self.name}: low {self.low} above high {self.high}")
        if self.max_rate_per_s <= 0.0 or self.amplitude < 0.0:
            raise ValueError(f"{self.name}: max_rate_per_s must be > 0 and amplitude >= 0")


@dataclass(frozen=True, slots=True)
class StepTestPlan:
    """A perturbation schedule: the value of every channel at each sample, `period_s` apart."""

    period_s: float
    settle_samples: int
    values: Mapping[str, FloatArray]

    @property
    def samples(self) -> int:
        return next((len(v) for v in self.values.values()), 0)

    def at(self, index: int) -> dict[str, float]:
        return {name: float(values[index]) for name, values in self.values.items()}


def plan_step_test(
    channels: Sequence[ChannelPlan],
    operating_point: Mapping[str, float],
    *,
    duration_s: float,
    period_s: float,
    settle_s: float = 60.0,
    min_hold_s: float = 20.0,
    max_hold_s: float = 90.0,
    seed: int = 0,
) -> StepTestPlan:
    """Random steps on every channel at once, each on its own independent schedule.

    Independent schedules (a generalised binary noise with random amplitudes) excite every
    input-output path in one record, so a multi-input model can tell the inputs apart; random
    hold times between `min_hold_s` and `max_hold_s` cover both the fast and the slow dynamics.
    Each channel starts and ends at its operating point (clipped into its bounds), holds it for
    `settle_s` first, never leaves [low, high] and ramps between levels at no more than its rate.
    Pure: the same arguments and seed give the same plan.
    """
    _finite(duration_s, "duration_s")
    if not (period_s > 0.0 and duration_s >= period_s):
        raise ValueError("need period_s > 0 and duration_s >= period_s")
    if not 0.0 < min_hold_s <= max_hold_s:
        raise ValueError("need 0 < min_hold_s <= max_hold_s")
    samples = math.floor(duration_s / period_s + 1e-9)
    settle = min(samples, round(settle_s / period_s))
    rng = np.random.default_rng(seed)
    values: dict[str, FloatArray] = {}
    for channel in channels:
        if channel.name not in operating_point:
            raise ValueError(f"no operating point for channel {channel.name!r}")
        start = min(max(operating_point[channel.name], channel.low), channel.high)
        targets = np.full(samples, start)
        k = settle
        while k < samples:
            hold = round(float(rng.uniform(min_hold_s, max_hold_s)) / period_s)
            size = channel.amplitude * rng.uniform(0.5, 1.0) * (1.0 if rng.random() < 0.5 else -1)
            level = start + size
            if not channel.low <= level <= channel.high:
                level = start - size  # the other way round stays inside if either does
            targets[k : k + max(1, hold)] = min(max(level, channel.low), channel.high)
            k += max(1, hold)
        # the last stretch returns to the operating point, so the test leaves the rack as found
        tail = min(samples - settle, round(max_hold_s / period_s))
        if tail > 0:
            targets[samples - tail :] = start
        values[channel.name] = _ramp(targets, start, channel.max_rate_per_s * period_s)
    return StepTestPlan(period_s=period_s, settle_samples=settle, values=values)


def _ramp(targets: FloatArray, start: float, max_step: float) -> FloatArray:
    """Follow `targets` moving at most `max_step` per sample (a ramp between levels)."""
    out = np.empty_like(targets)
    value = start
    for k, target in enumerate(targets):
        value += min(max(float(target) - value, -max_step), max_step)
        out[k] = value
    return out


# -- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Channel:
    """One input's path into one output: a dead time and the numerator coefficients.

    Contributes `numerator[0]·v(k - delay) + numerator[1]·v(k - delay - 1) + ...` to y(k).
    """

    delay: int
    numerator: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.delay < 1:
            raise ValueError(f"delay must be >= 1 sample, got {self.delay}")
        for b in self.numerator:
            _finite(b, "numerator coefficient")


@dataclass(frozen=True, slots=True)
class OutputModel:
    """`y(k) + a1·y(k-1) + ... = sum of channels`, all in deviations from the operating point."""

    denominator: tuple[float, ...]  # a1..a_na
    channels: Mapping[str, Channel]

    @property
    def order(self) -> int:
        """State dimension of this output's realisation."""
        lags = [c.delay + len(c.numerator) - 1 for c in self.channels.values()]
        return max([len(self.denominator), 1, *lags])

    def steady_state_gain(self, signal: str) -> float:
        """Output change per unit step of `signal`, once settled."""
        channel = self.channels.get(signal)
        if channel is None:
            return 0.0
        return sum(channel.numerator) / (1.0 + sum(self.denominator))

    def simulate(self, deviations: Mapping[str, FloatArray], samples: int) -> FloatArray:
        """The output deviation driven by input deviations, from rest."""
        den = np.array([1.0, *self.denominator])
        y = np.zeros(samples)
        for name, channel in self.channels.items():
            num = np.concatenate([np.zeros(channel.delay), np.array(channel.numerator)])
            y += sps.lfilter(num, den, deviations[name][:samples])
        return y


@dataclass(frozen=True, slots=True)
class FitQuality:
    """How well one output is modelled on held-out data (see the module docstring)."""

    r2: float
    nrmse: float
    r2_one_step: float
    r2_horizon: float
    horizon_steps: int
    samples: int
    na: int
    nb: int


@dataclass(frozen=True, slots=True)
class StateSpace:
    """x(k+1) = a x(k) + b v(k); y(k) = c x(k), in deviations from the operating point.

    `v` is ordered as `signals`, `y` as `outputs`; the state is one block per output (observer
    canonical form of its transfer function), so its first state *is* that output.
    """

    a: FloatArray
    b: FloatArray
    c: FloatArray
    signals: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def states(self) -> int:
        return int(self.a.shape[0])


@dataclass(frozen=True, slots=True)
class IdentifiedModel:
    """A linear model of one rack's cooling loop, as fitted from a step test, with its report.

    Saved and loaded as versioned JSON (`to_json` / `from_json`). `operating_point` and `scale`
    (each signal's spread in the test, for the MPC's numerical scaling) cover every signal.
    """

    dt_s: float
    inputs: tuple[str, ...]
    disturbances: tuple[str, ...]
    outputs: tuple[str, ...]
    operating_point: Mapping[str, float]
    scale: Mapping[str, float]
    models: Mapping[str, OutputModel]
    fit: Mapping[str, FitQuality] = field(default_factory=dict)
    pump_power_full_speed_w: float | None = None
    source: Mapping[str, SourceValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _finite(self.dt_s, "dt_s")
        if self.dt_s <= 0.0:
            raise ValueError("dt_s must be > 0")
        signals = set(self.signals)
        for name in (*self.signals, *self.outputs):
            if name not in self.operating_point or name not in self.scale:
                raise ValueError(f"signal {name!r} has no operating point or scale")
            if not self.scale[name] > 0.0:
                raise ValueError(f"scale of {name!r} must be > 0")
        for output in self.outputs:
            if output not in self.models:
                raise ValueError(f"output {output!r} has no model")
            unknown = set(self.models[output].channels) - signals
            if unknown:
                raise ValueError(f"output {output!r} uses unknown signals {sorted(unknown)}")

    @property
    def signals(self) -> tuple[str, ...]:
        """Every input of the model: manipulated first, then measured disturbances."""
        return (*self.inputs, *self.disturbances)

    def steady_state_gain(self, output: str, signal: str) -> float:
        return self.models[output].steady_state_gain(signal)

    def state_space(self, outputs: Sequence[str] | None = None) -> StateSpace:
        """A realisation of the chosen outputs (all by default); block-diagonal per output."""
        chosen = tuple(self.outputs if outputs is None else outputs)
        signals = self.signals
        blocks = [_observer_canonical(self.models[name], signals) for name in chosen]
        nx = sum(a.shape[0] for a, _ in blocks)
        a_full = np.zeros((nx, nx))
        b_full = np.zeros((nx, len(signals)))
        c_full = np.zeros((len(chosen), nx))
        row = 0
        for i, (a, b) in enumerate(blocks):
            n = a.shape[0]
            a_full[row : row + n, row : row + n] = a
            b_full[row : row + n, :] = b
            c_full[i, row] = 1.0
            row += n
        return StateSpace(a_full, b_full, c_full, signals, chosen)

    def simulate(self, signals: Mapping[str, FloatArray]) -> dict[str, FloatArray]:
        """Every output, simulated from the recorded inputs alone, in absolute units."""
        samples = len(next(iter(signals.values())))
        deviations = {s: signals[s] - self.operating_point[s] for s in self.signals}
        return {
            output: self.operating_point[output] + self.models[output].simulate(deviations, samples)
            for output in self.outputs
        }

    # -- JSON ----------------------------------------------------------------------------------

    def to_json(self) -> str:
        document: dict[str, Any] = {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "dt_s": self.dt_s,
            "inputs": list(self.inputs),
            "disturbances": list(self.disturbances),
            "outputs": list(self.outputs),
            "units": {name: UNITS.get(name, "") for name in (*self.signals, *self.outputs)},
            "operating_point": dict(self.operating_point),
            "scale": dict(self.scale),
            "pump_power_full_speed_w": self.pump_power_full_speed_w,
            "models": {
                name: {
                    "denominator": list(model.denominator),
                    "channels": {
                        signal: {"delay": ch.delay, "numerator": list(ch.numerator)}
                        for signal, ch in model.channels.items()
                    },
                }
                for name, model in self.models.items()
            },
            "fit": {
                name: {
                    "r2": q.r2,
                    "nrmse": q.nrmse,
                    "r2_one_step": q.r2_one_step,
                    "r2_horizon": q.r2_horizon,
                    "horizon_steps": q.horizon_steps,
                    "samples": q.samples,
                    "na": q.na,
                    "nb": q.nb,
                }
                for name, q in self.fit.items()
            },
            "source": dict(self.source),
        }
        return json.dumps(document, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> IdentifiedModel:
        """Parse a model file; a wrong format, version or shape is a ValueError saying what."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"model file is not JSON: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("format") != MODEL_FORMAT:
            raise ValueError(f"not a {MODEL_FORMAT} file")
        version = raw.get("version")
        if version != MODEL_VERSION:
            raise ValueError(
                f"model file version {version!r} is not supported (this coolctl reads"
                f" version {MODEL_VERSION}); identify the rack again"
            )
        try:
            models = {
                name: OutputModel(
                    denominator=tuple(float(a) for a in entry["denominator"]),
                    channels={
                        signal: Channel(int(ch["delay"]), tuple(float(b) for b in ch["numerator"]))
                        for signal, ch in entry["channels"].items()
                    },
                )
                for name, entry in raw["models"].items()
            }
            fit = {
                name: FitQuality(
                    r2=float(q["r2"]),
                    nrmse=float(q["nrmse"]),
                    r2_one_step=float(q["r2_one_step"]),
                    r2_horizon=float(q["r2_horizon"]),
                    horizon_steps=int(q["horizon_steps"]),
                    samples=int(q["samples"]),
                    na=int(q["na"]),
                    nb=int(q["nb"]),
                )
                for name, q in raw.get("fit", {}).items()
            }
            power = raw.get("pump_power_full_speed_w")
            return cls(
                dt_s=float(raw["dt_s"]),
                inputs=tuple(str(s) for s in raw["inputs"]),
                disturbances=tuple(str(s) for s in raw["disturbances"]),
                outputs=tuple(str(s) for s in raw["outputs"]),
                operating_point={k: float(v) for k, v in raw["operating_point"].items()},
                scale={k: float(v) for k, v in raw["scale"].items()},
                models=models,
                fit=fit,
                pump_power_full_speed_w=None if power is None else float(power),
                source=dict(raw.get("source", {})),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"model file is missing or mistypes {exc}") from exc

    def report(self) -> str:
        """A table of the fit, one line per output, for operators."""
        lines = [
            f"{'output':<24} {'na':>2} {'nb':>2} {'R2':>7} {'NRMSE':>7} {'R2 1-step':>9}"
            f" {'R2 Δ@h':>7}"
        ]
        for name in self.outputs:
            q = self.fit.get(name)
            if q is None:
                lines.append(f"{name:<24} (no fit report)")
                continue
            lines.append(
                f"{name:<24} {q.na:>2} {q.nb:>2} {q.r2:>7.3f} {q.nrmse:>7.3f}"
                f" {q.r2_one_step:>9.3f} {q.r2_horizon:>7.3f}"
            )
        if self.fit:
            q = next(iter(self.fit.values()))
            lines.append(
                f"(held-out samples: {q.samples}; Δ@h: change over {q.horizon_steps} steps,"
                " bias-corrected as the MPC predicts)"
            )
        return "\n".join(lines)


def _observer_canonical(
    model: OutputModel, signals: Sequence[str]
) -> tuple[FloatArray, FloatArray]:
    """(a, b) of one output in observer canonical form; its first state is the output."""
    n = model.order
    a = np.zeros((n, n))
    den = np.zeros(n)
    den[: len(model.denominator)] = model.denominator
    a[:, 0] = -den
    a[np.arange(n - 1), np.arange(1, n)] = 1.0
    b = np.zeros((n, len(signals)))
    for j, signal in enumerate(signals):
        channel = model.channels.get(signal)
        if channel is None:
            continue
        for lag, coefficient in enumerate(channel.numerator):
            b[channel.delay + lag - 1, j] = coefficient
    return a, b


# -- fitting -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdentifySettings:
    """Search space and data split for `identify`."""

    denominator_orders: tuple[int, ...] = (1, 2)
    numerator_orders: tuple[int, ...] = (1, 2)
    max_delay: int = 15
    holdout_fraction: float = 0.3
    horizon_steps: int = 20
    refine: bool = True  # output-error refinement after least squares


def identify(
    data: StepTestData,
    *,
    inputs: Sequence[str] = MANIPULATED,
    disturbances: Sequence[str] = MEASURED_DISTURBANCES,
    outputs: Sequence[str] = OUTPUTS,
    settings: IdentifySettings | None = None,
    source: Mapping[str, SourceValue] | None = None,
) -> IdentifiedModel:
    """Fit one transfer function per output and report its quality on held-out data.

    Signals named but absent from `data` are an error; outputs are fitted independently.
    """
    settings = settings or IdentifySettings()
    signals = (*inputs, *disturbances)
    missing = [name for name in (*signals, *outputs) if name not in data.signals]
    if missing:
        raise ValueError(f"step-test data lacks signals {missing}")
    n = data.samples
    if not 0.0 < settings.holdout_fraction < 1.0:
        raise ValueError("holdout_fraction must be within (0, 1)")
    split = round(n * (1.0 - settings.holdout_fraction))
    if split < 50 or n - split < 20:
        raise ValueError(f"{n} samples are too few to fit and hold some out")
    reference = data.reference()
    scale = {
        name: max(float(np.std(data.signals[name][:split])), _SCALE_FLOOR.get(name, 1e-3))
        for name in (*signals, *outputs)
    }
    deviations = {s: data.signals[s] - reference[s] for s in signals}
    for s in signals:
        if float(np.std(deviations[s][:split])) < 1e-9:
            raise ValueError(f"signal {s!r} never moves in the estimation data: not excited")
    models: dict[str, OutputModel] = {}
    fit: dict[str, FitQuality] = {}
    operating_point = dict(reference)
    for output in outputs:
        y = data.signals[output] - reference[output]
        model, offset = _fit_output(y, deviations, signals, split, scale, settings)
        models[output] = model
        operating_point[output] = reference[output] + offset
        fit[output] = _quality(model, offset, y, deviations, split, settings.horizon_steps)
    pump_power = _pump_power_coefficient(data)
    return IdentifiedModel(
        dt_s=data.dt_s,
        inputs=tuple(inputs),
        disturbances=tuple(disturbances),
        outputs=tuple(outputs),
        operating_point=operating_point,
        scale=scale,
        models=models,
        fit=fit,
        pump_power_full_speed_w=pump_power,
        source=dict(source or {}),
    )


# Scale floors: a signal that barely moves still gets a sensible unit for the MPC's scaling.
_SCALE_FLOOR: Mapping[str, float] = {
    PUMP_SPEED: 0.01,
    VALVE: 0.01,
    IT_POWER: 1000.0,
    FACILITY_WATER: 0.1,
    FLOW: 1.0,
}


def _pump_power_coefficient(data: StepTestData) -> float | None:
    """Pump electrical power at full speed, from P = k·s³ (affinity laws) fitted by least
    squares to the measured pump power; None without a pump power record."""
    power = data.signals.get(PUMP_POWER)
    speed = data.signals.get(PUMP_SPEED_MEASURED, data.signals.get(PUMP_SPEED))
    if power is None or speed is None:
        return None
    cube = speed**3
    denominator = float(cube @ cube)
    return float(power @ cube) / denominator if denominator > 0.0 else None


def _regressors(
    deviations: Mapping[str, FloatArray], signals: Sequence[str], delays: Sequence[int], nb: int
) -> FloatArray:
    """Columns v_j(k - d_j - l), l = 0..nb-1, with the past before the record at rest (0)."""
    columns = []
    for signal, delay in zip(signals, delays, strict=True):
        v = deviations[signal]
        for lag in range(nb):
            columns.append(_shift(v, delay + lag))
    return np.column_stack(columns)


def _shift(v: FloatArray, by: int) -> FloatArray:
    out = np.zeros_like(v)
    if by < len(v):
        out[by:] = v[: len(v) - by]
    return out


def _arx(
    y: FloatArray,
    deviations: Mapping[str, FloatArray],
    signals: Sequence[str],
    delays: Sequence[int],
    na: int,
    nb: int,
    stop: int,
) -> tuple[FloatArray, FloatArray, float]:
    """Least squares y(k) = -Σ a_i y(k-i) + Σ b v(k-d-l) + c over samples [start, stop).

    Returns (a, b flattened per signal then lag, residual mean square). Regressors are scaled to
    unit spread first so that watts and fractions sit in one well-conditioned problem.
    """
    start = max(na, max(delays) + nb)
    past = np.column_stack([_shift(y, i) for i in range(1, na + 1)])
    inputs = _regressors(deviations, signals, delays, nb)
    phi = np.column_stack([-past, inputs, np.ones_like(y)])[start:stop]
    target = y[start:stop]
    norms = np.maximum(np.std(phi, axis=0), 1e-12)
    norms[-1] = 1.0
    theta, *_ = np.linalg.lstsq(phi / norms, target, rcond=None)
    theta = theta / norms
    residual = target - phi @ theta
    return theta[:na], theta[na:-1], float(residual @ residual) / max(1, len(target))


def _choose_delays(
    y: FloatArray,
    deviations: Mapping[str, FloatArray],
    signals: Sequence[str],
    na: int,
    nb: int,
    stop: int,
    max_delay: int,
) -> list[int]:
    """Dead time per input by coordinate descent on the ARX residual (a few passes)."""
    delays = [1] * len(signals)
    best = _arx(y, deviations, signals, delays, na, nb, stop)[2]
    for _ in range(3):
        changed = False
        for j in range(len(signals)):
            for d in range(1, max_delay + 1):
                if d == delays[j]:
                    continue
                trial = [*delays[:j], d, *delays[j + 1 :]]
                cost = _arx(y, deviations, signals, trial, na, nb, stop)[2]
                if cost < best * (1.0 - 1e-6):
                    best, delays, changed = cost, trial, True
        if not changed:
            break
    return delays


def _stable(denominator: Iterable[float]) -> bool:
    den = [1.0, *denominator]
    return len(den) == 1 or bool(np.all(np.abs(np.roots(den)) < 0.9995))


def _simulate_params(
    params: FloatArray,
    deviations: Mapping[str, FloatArray],
    signals: Sequence[str],
    delays: Sequence[int],
    na: int,
    nb: int,
    stop: int,
) -> FloatArray:
    den = np.concatenate([[1.0], params[:na]])
    y = np.full(stop, params[-1])
    for j, (signal, delay) in enumerate(zip(signals, delays, strict=True)):
        num = np.concatenate([np.zeros(delay), params[na + j * nb : na + (j + 1) * nb]])
        y += sps.lfilter(num, den, deviations[signal][:stop])
    return y


def _fit_output(
    y: FloatArray,
    deviations: Mapping[str, FloatArray],
    signals: Sequence[str],
    split: int,
    scale: Mapping[str, float],
    settings: IdentifySettings,
) -> tuple[OutputModel, float]:
    """The best (na, nb) by AIC on the estimation part's simulation error; with its offset."""
    best: tuple[float, OutputModel, float] | None = None
    for na in settings.denominator_orders:
        for nb in settings.numerator_orders:
            delays = _choose_delays(y, deviations, signals, na, nb, split, settings.max_delay)
            a, b, _ = _arx(y, deviations, signals, delays, na, nb, split)
            arx: FloatArray = np.concatenate([a, b, [0.0]])
            params: FloatArray | None = arx
            if settings.refine or not _stable(a):
                params = _refine(arx, y, deviations, signals, delays, na, nb, split, scale)
                if params is None and _stable(a):
                    params = arx  # the refinement failed; least squares alone is still a model
            if params is None or not _stable(params[:na]):
                continue
            simulated = _simulate_params(params, deviations, signals, delays, na, nb, split)
            error = y[:split] - simulated
            mse = max(float(error @ error) / split, 1e-300)
            aic = split * math.log(mse) + 2.0 * len(params)
            if best is None or aic < best[0]:
                channels = {
                    signal: Channel(
                        delay, tuple(float(v) for v in params[na + j * nb : na + (j + 1) * nb])
                    )
                    for j, (signal, delay) in enumerate(zip(signals, delays, strict=True))
                }
                model = OutputModel(tuple(float(v) for v in params[:na]), channels)
                best = (aic, model, float(params[-1]))
    if best is None:
        raise ValueError("no stable model found for an output; is the test long enough?")
    return best[1], best[2]


def _refine(
    start: FloatArray,
    y: FloatArray,
    deviations: Mapping[str, FloatArray],
    signals: Sequence[str],
    delays: Sequence[int],
    na: int,
    nb: int,
    split: int,
    scale: Mapping[str, float],
) -> FloatArray | None:
    """Output-error refinement: minimise the simulation error from the ARX starting point.

    The parameters are scaled (numerators by the spread of their input) so that the solver's
    finite differences see every parameter alike. An unstable denominator costs a large
    constant residual, which keeps the search inside the stable region it starts in.
    """
    x_scale = np.ones_like(start)
    for j, signal in enumerate(signals):
        x_scale[na + j * nb : na + (j + 1) * nb] = 1.0 / scale[signal]
    target = y[:split]
    penalty = np.full(split, 1e3 * (float(np.std(target)) + 1.0))

    def residuals(scaled: FloatArray) -> FloatArray:
        params = scaled * x_scale
        if not _stable(params[:na]):
            return penalty
        return _simulate_params(params, deviations, signals, delays, na, nb, split) - target

    initial = start / x_scale
    if not _stable(start[:na]):
        initial[:na] = 0.0
        initial[0] = -0.9  # a slow stable first-order start
    try:
        result = optimize.least_squares(residuals, initial, method="trf", max_nfev=200)
    except (ValueError, np.linalg.LinAlgError):
        return None
    params = np.asarray(result.x, dtype=np.float64) * x_scale
    return params if np.all(np.isfinite(params)) else None


def _quality(
    model: OutputModel,
    offset: float,
    y: FloatArray,
    deviations: Mapping[str, FloatArray],
    split: int,
    horizon: int,
) -> FitQuality:
    """Fit on the held-out samples [split, n) of the record (see the module docstring)."""
    n = len(y)
    simulated = offset + model.simulate(deviations, n)
    measured = y[split:]
    predicted = simulated[split:]
    nrmse = _nrmse(measured, predicted)
    # one step ahead: the ARX form of the same model, fed the measured past outputs
    den = np.array([1.0, *model.denominator])
    forced = simulated - offset
    # y(k) = -Σa y(k-i) + [A(q) forced](k) + offset·A(1): forced is the input-driven part
    one_step = sps.lfilter(den, [1.0], forced) + offset * float(den.sum())
    for i, a in enumerate(model.denominator, start=1):
        one_step -= a * _shift(y, i)
    r2_one = 1.0 - _nrmse(measured, one_step[split:]) ** 2
    # change over the horizon, bias-corrected: ŷ(t+h) - ŷ(t) against y(t+h) - y(t)
    h = min(horizon, len(measured) - 1)
    measured_change = measured[h:] - measured[:-h]
    predicted_change = predicted[h:] - predicted[:-h]
    r2_h = 1.0 - _nrmse(measured_change, predicted_change) ** 2
    return FitQuality(
        r2=1.0 - nrmse**2,
        nrmse=nrmse,
        r2_one_step=r2_one,
        r2_horizon=r2_h,
        horizon_steps=h,
        samples=len(measured),
        na=len(model.denominator),
        nb=max((len(c.numerator) for c in model.channels.values()), default=0),
    )


def _nrmse(measured: FloatArray, predicted: FloatArray) -> float:
    spread = float(np.linalg.norm(measured - measured.mean()))
    error = float(np.linalg.norm(measured - predicted))
    if spread <= 0.0:
        return 0.0 if error == 0.0 else math.inf
    return error / spread
