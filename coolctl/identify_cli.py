"""`coolctl identify`: step-test a rack and fit the model its MPC loads.

    coolctl identify --simulated [--duration S] [--seed N] [--plant KEY=VALUE ...] --out model.json

runs the step test on the simulated plant in simulated time (far faster than real time) and
saves the model (`coolctl.step_test`: the plant is read only through the points the daemon
sees; offline, the server load and the facility water are stepped too, as the MPC's measured
disturbances). The fit report (R², NRMSE on held-out data, per output) is printed; `--json`
prints it as JSON.

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
path). This module imports only the standard library at import time: numpy, scipy and OSQP
load when the command runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_BAD = 1
EXIT_USAGE = 2


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
    from coolctl.simulators.plant import PlantParams
    from coolctl.step_test import identify_simulated

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
