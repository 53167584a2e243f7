"""`coolctl identify`: step-test a rack and fit the model its MPC loads.

    coolctl identify --simulated [--duration S] [--seed N] [--plant KEY=VALUE ...] --out model.json

runs the step test on the simulated plant in simulated time (far faster than real time) and
saves the model. The plant is read only through the points the daemon sees — each device's
readings, noise and all, gathered into a `Snapshot` and turned into model signals by the very
`MpcRack` the MPC uses — so the model is identified as it would be on a real rack. Offline,
and only offline, the test also steps the server load and the facility water temperature:
they are the MPC's measured disturbances, and a plant in simulation lets them be excited on
purpose.

The live path (`coolctl identify RACK --config FILE`) is NOT BUILT YET; it exits with a
message saying so. How it is meant to work: the daemon keeps running the rack; `identify`
asks it over the control API for the step-test plan's pump and valve values as timed operator
overrides (so the safety supervisor still clamps them and every interlock still wins), reads
the same signals back from the daemon's snapshot every control period, aborts and releases
the overrides if a temperature comes within the MPC's back-off of its limit, and fits the
model from what it recorded. The IT power and the facility water are not stepped on a live
rack: the fit takes their natural variation, and `coolctl identify` should refuse to save a
model whose disturbance channels were not excited (`identify` raises on a signal that never
moves).

`add_identify_command(subparsers)` adds the sub-command to `coolctl`'s parser (coolctl/cli.py),
and `run_identify(args) -> int` runs it (exit 0 ok, 1 the fit failed, 2 usage, e.g. the live
path).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coolctl.control.identify import (
    FACILITY_WATER,
    PUMP_SPEED,
    VALVE,
    ChannelPlan,
    IdentifiedModel,
    IdentifySettings,
    StepTestData,
    StepTestPlan,
    identify,
    plan_step_test,
)
from coolctl.control.mpc import MpcRack
from coolctl.model import PointId, Quality, Reading, Snapshot
from coolctl.simulators.plant import PlantParams, RackPlant

EXIT_OK = 0
EXIT_BAD = 1
EXIT_USAGE = 2

LOAD = "load"  # offline excitation only: the servers' load fraction
SIM_RACK = "sim"

# The simulated test: around a mid-load operating point the MPC will work near, pump and valve
# within the range the MPC uses, steps big enough to rise well above the sensor noise.
DEFAULT_OPERATING_POINT: Mapping[str, float] = {
    PUMP_SPEED: 0.6,
    VALVE: 0.6,
    LOAD: 0.6,
    FACILITY_WATER: 30.0,
}
DEFAULT_CHANNELS: tuple[ChannelPlan, ...] = (
    ChannelPlan(PUMP_SPEED, low=0.3, high=0.95, max_rate_per_s=0.05, amplitude=0.25),
    ChannelPlan(VALVE, low=0.2, high=1.0, max_rate_per_s=0.05, amplitude=0.3),
    ChannelPlan(LOAD, low=0.2, high=1.0, max_rate_per_s=1.0, amplitude=0.35),
    ChannelPlan(FACILITY_WATER, low=24.0, high=36.0, max_rate_per_s=0.2, amplitude=4.0),
)


def simulated_rack(plant: RackPlant, rack: str = SIM_RACK) -> MpcRack:
    """The MPC's view of a simulated plant: its devices by their plant names."""
    servers = [f"server{i}" for i in range(plant.n_servers)]
    return MpcRack.standard(
        rack,
        cdu="cdu",
        servers=servers,
        pdu="pdu",
        cap_min_w=plant.params.power_limit_min_w * plant.n_servers,
        cap_max_w=plant.params.server_max_w * plant.n_servers,
    )


def plant_snapshot(plant: RackPlant, rack: str = SIM_RACK) -> Snapshot:
    """Everything the plant's devices expose now, as the daemon's telemetry store would hold it."""
    now = plant.time_s
    devices = ["cdu", "pdu", *(f"server{i}" for i in range(plant.n_servers))]
    readings = [
        Reading(PointId(rack, device, name), value, now, Quality.GOOD)
        for device in devices
        for name, value in plant.readings(device).items()
    ]
    return Snapshot(readings, now)


def run_simulated_step_test(
    plant: RackPlant, plan: StepTestPlan, rack: MpcRack | None = None
) -> StepTestData:
    """Play `plan` on the plant one control period at a time, recording the model's signals.

    At each tick the signals are read first, then the plan's values are applied for the coming
    period, as the daemon reads, then writes: a command recorded at tick k acts from k to k+1.
    """
    rack = rack or simulated_rack(plant)
    names = list(rack.signals)
    record: dict[str, list[float]] = {name: [] for name in names}
    for k in range(plan.samples):
        snapshot = plant_snapshot(plant, rack.rack)
        values = rack.read(snapshot)
        step = plan.at(k)
        _apply(plant, step)
        for name in names:
            value = values[name]
            if name in step and name in (PUMP_SPEED, VALVE):
                value = step[name]  # the command in force from now on
            if value is None:
                raise RuntimeError(f"simulated signal {name} unreadable at t={plant.time_s}")
            record[name].append(value)
        plant.advance(plan.period_s)
    return StepTestData(
        dt_s=plan.period_s,
        signals={name: np.asarray(values, dtype=np.float64) for name, values in record.items()},
        settle_samples=plan.settle_samples,
    )


def _apply(plant: RackPlant, values: Mapping[str, float]) -> None:
    if PUMP_SPEED in values:
        plant.set_pump_speed_command(values[PUMP_SPEED])
    if VALVE in values:
        plant.set_valve_command(values[VALVE])
    if LOAD in values:
        plant.set_load(values[LOAD])
    if FACILITY_WATER in values:
        plant.set_facility_water_temperature(values[FACILITY_WATER])


def identify_simulated(
    *,
    duration_s: float = 2400.0,
    period_s: float = 1.0,
    seed: int = 1,
    plant_overrides: Mapping[str, Any] | None = None,
    operating_point: Mapping[str, float] | None = None,
    channels: Sequence[ChannelPlan] = DEFAULT_CHANNELS,
    settings: IdentifySettings | None = None,
) -> tuple[IdentifiedModel, StepTestData]:
    """Step-test a fresh simulated plant and fit its model; the record is returned too."""
    point = dict(DEFAULT_OPERATING_POINT)
    point.update(operating_point or {})
    overrides: dict[str, Any] = {
        "initial_load": point[LOAD],
        "initial_pump_speed": point[PUMP_SPEED],
        "initial_valve": point[VALVE],
        "facility_water_temperature_c": point[FACILITY_WATER],
    }
    overrides.update(plant_overrides or {})
    plant = RackPlant(PlantParams.from_dict(overrides), seed=seed)
    plan = plan_step_test(channels, point, duration_s=duration_s, period_s=period_s, seed=seed)
    data = run_simulated_step_test(plant, plan)
    source: dict[str, str | int | float | bool] = {
        "kind": "simulated",
        "seed": seed,
        "duration_s": duration_s,
        "period_s": period_s,
        "operating_point": json.dumps(point, sort_keys=True),
    }
    if plant_overrides:
        source["plant"] = json.dumps(dict(plant_overrides), sort_keys=True)
    model = identify(data, settings=settings, source=source)
    return model, data


# -- the command -------------------------------------------------------------------------------


def add_identify_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add `identify` to coolctl's sub-commands (`subparsers` from `add_subparsers`)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "identify",
        help="step-test a rack and fit the model its MPC loads",
        description=(
            "Step-test the cooling loop and fit the linear model the MPC loads. "
            "--simulated runs the test on the simulated plant in simulated time; "
            "the live path (RACK --config) is not built yet."
        ),
    )
    parser.add_argument("rack", nargs="?", metavar="RACK", help="live: the rack (not built yet)")
    parser.add_argument("--config", "-c", type=Path, help="live: the daemon's config")
    parser.add_argument(
        "--simulated", action="store_true", help="step-test the simulated plant offline"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=2400.0,
        metavar="SECONDS",
        help="length of the step test in plant time (default 2400)",
    )
    parser.add_argument(
        "--period",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="sample period; use the rack's control period (default 1)",
    )
    parser.add_argument("--seed", type=int, default=1, help="plan and sensor-noise seed")
    parser.add_argument(
        "--plant",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a plant parameter (PlantParams name), repeatable",
    )
    parser.add_argument("--out", "-o", type=Path, help="write the model here (JSON)")
    parser.add_argument(
        "--json", action="store_true", help="print the fit report as JSON instead of a table"
    )
    return parser


def run_identify(args: argparse.Namespace) -> int:
    if not args.simulated:
        print(
            "coolctl identify: the live step test (RACK --config) is not built yet; "
            "use --simulated, or see coolctl/identify_cli.py for how it will work",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.rack is not None or args.config is not None:
        print("coolctl identify: --simulated takes no RACK or --config", file=sys.stderr)
        return EXIT_USAGE
    if not (math.isfinite(args.duration) and args.duration >= 600.0 and args.period > 0.0):
        print("coolctl identify: need --duration >= 600 and --period > 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        overrides = _plant_overrides(args.plant)
        PlantParams.from_dict(overrides)
    except ValueError as exc:
        print(f"coolctl identify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        model, _ = identify_simulated(
            duration_s=args.duration,
            period_s=args.period,
            seed=args.seed,
            plant_overrides=overrides,
        )
    except ValueError as exc:
        print(f"coolctl identify: the fit failed: {exc}", file=sys.stderr)
        return EXIT_BAD
    if args.out is not None:
        args.out.write_text(model.to_json(), encoding="utf-8")
    if args.json:
        print(json.dumps(json.loads(model.to_json())["fit"], indent=2))
    else:
        print(model.report())
        if model.pump_power_full_speed_w is not None:
            print(f"pump power at full speed: {model.pump_power_full_speed_w:.0f} W (k·s³ fit)")
        if args.out is not None:
            print(f"model written to {args.out}")
    return EXIT_OK


def _plant_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--plant takes KEY=VALUE, not {pair!r}")
        value: Any
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError as exc:
                    raise ValueError(f"--plant {key}: {text!r} is not a number") from exc
        overrides[key] = value
    return overrides
