"""`coolctl identify`: step-test a rack and fit the model its MPC loads.

    coolctl identify --simulated [--duration S] [--seed N] [--plant KEY=VALUE ...] --out model.json

runs the step test on the simulated plant in simulated time (far faster than real time) and
saves the model (`coolctl.tools.step_test`: the plant is read only through the points the daemon
sees; offline, the server load and the facility water are stepped too, as the MPC's measured
disturbances).

    coolctl identify RACK --config FILE --out model.json [--duration S] [--json] ...

runs it on a live rack (`coolctl.tools.live_step_test`): the rack's runtime is built as the daemon
builds it, with a step-test controller in the place of its loops, so the safety supervisor
still has the last word; the pump and the valve are stepped within their loops' bounds and
slew around where they stand, everything else stays with the PID loops; the test aborts
(exit 4, no model written) on an interlock, a failsafe, a temperature within --margin of a
supervisor limit, or a signal it cannot read. The daemon must not drive the rack meanwhile:
stop it, or put the rack in manual mode; a daemon that answers on the control socket and runs
the rack in automatic mode is refused (exit 1).

Both print the same fit report (R², NRMSE on held-out data, per output; `--json` prints it as
JSON) and write the same model file (`--out`), which a rack with `controller = "mpc"` and
`mpc_model = FILE` loads.

`add_identify_command(subparsers)` adds the sub-command to `coolctl`'s parser (coolctl/cli/main.py),
and `run_identify(args) -> ExitCode` runs it. Exit codes: 0 ok, 1 the fit failed or the rack is not
free to test, 2 usage, 3 a device did not answer before the test (nothing written), 4 the live
test was aborted (handed back to the PID loops; no model written), 130 interrupted. This
module imports only the standard library at import time: numpy, scipy, OSQP and the drivers
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

from coolctl.exitcodes import ExitCode
from coolctl.model import RackMode

LIVE_HELP = """\
live step test: RACK --config FILE runs the test on the rack's devices, under the daemon's own
safety supervisor (interlocks, failsafe, bounds and slew all hold). STOP THE DAEMON FIRST
(systemctl stop coolctl), or put the rack in manual mode (coolctl mode RACK manual --reason
...) with no override on the pump or valve: a daemon that runs the rack in automatic mode is
refused. The pump and valve are stepped around where they stand, within their loops'
output_min..output_max and slew; the test aborts, hands back to the PID loops and writes no
model on an interlock, a failsafe, or a temperature within --margin of a supervisor limit.
Durations are seconds of the rack's time; a real test takes --duration (40 minutes by
default)."""


# -- the command -------------------------------------------------------------------------------


def add_identify_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add `identify` to coolctl's sub-commands (`subparsers` from `add_subparsers`)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "identify",
        help="step-test a rack and fit the model its MPC loads",
        description=(
            "Step-test the cooling loop and fit the linear model the MPC loads. "
            "--simulated runs the test on the simulated plant in simulated time; "
            "RACK --config FILE runs it on a live rack."
        ),
        epilog=LIVE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "rack", nargs="?", metavar="RACK", help="live: the rack to test (stop its daemon first)"
    )
    parser.add_argument("--config", "-c", type=Path, help="live: the daemon's config")
    parser.add_argument(
        "--simulated", action="store_true", help="step-test the simulated plant offline"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=2400.0,
        metavar="SECONDS",
        help="length of the step test in plant (rack) time (default 2400)",
    )
    parser.add_argument(
        "--period",
        type=float,
        metavar="SECONDS",
        help="simulated: sample period; use the rack's control period (default 1). Live: the"
        " rack's control period, always",
    )
    parser.add_argument("--seed", type=int, default=1, help="plan (and sensor-noise) seed")
    parser.add_argument(
        "--plant",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="simulated: override a plant parameter (PlantParams name), repeatable",
    )
    parser.add_argument("--out", "-o", type=Path, help="write the model here (JSON)")
    parser.add_argument(
        "--json", action="store_true", help="print the fit report as JSON instead of a table"
    )
    live = parser.add_argument_group("live step test")
    live.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="K",
        help="the rack runs K times faster than the wall clock: only a simulated rack served"
        " at --time-scale K with a config scaled to match (default 1)",
    )
    live.add_argument(
        "--settle", type=float, default=60.0, metavar="SECONDS", help="hold at first (60)"
    )
    live.add_argument(
        "--hold-min", type=float, default=20.0, metavar="SECONDS", help="shortest step (20)"
    )
    live.add_argument(
        "--hold-max", type=float, default=90.0, metavar="SECONDS", help="longest step (90)"
    )
    live.add_argument(
        "--pump-step",
        type=float,
        default=0.15,
        metavar="FRACTION",
        help="largest pump speed step from where it stands (0.15)",
    )
    live.add_argument(
        "--valve-step",
        type=float,
        default=0.2,
        metavar="FRACTION",
        help="largest valve step from where it stands (0.2)",
    )
    live.add_argument(
        "--margin",
        type=float,
        default=2.0,
        metavar="KELVIN",
        help="abort when a temperature comes this close to its supervisor limit (2)",
    )
    live.add_argument(
        "--handback",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="after an abort, the PID loops hold the rack this long before the test exits (60)",
    )
    live.add_argument(
        "--socket",
        type=Path,
        metavar="PATH",
        help="the daemon's control socket, asked whether it drives the rack (default: the"
        " config's daemon.control_socket, else $COOLCTL_SOCKET or /run/coolctl/control.sock)",
    )
    live.add_argument(
        "--force",
        action="store_true",
        help="skip asking the control socket (when it cannot answer and you know that no"
        " daemon drives the rack)",
    )
    return parser


def run_identify(args: argparse.Namespace) -> ExitCode:
    if args.rack is not None or args.config is not None:
        if args.simulated:
            print("coolctl identify: --simulated takes no RACK or --config", file=sys.stderr)
            return ExitCode.USAGE
        return run_live(args)
    if not args.simulated:
        print(
            "coolctl identify: give --simulated, or RACK --config FILE for the live test",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    return run_simulated(args)


def run_simulated(args: argparse.Namespace) -> ExitCode:
    from coolctl.simulators.plant import PlantParams
    from coolctl.tools.step_test import identify_simulated

    period = 1.0 if args.period is None else args.period
    if not (math.isfinite(args.duration) and args.duration >= 600.0 and period > 0.0):
        print("coolctl identify: need --duration >= 600 and --period > 0", file=sys.stderr)
        return ExitCode.USAGE
    try:
        overrides = _plant_overrides(args.plant)
        PlantParams.from_dict(overrides)
    except ValueError as exc:
        print(f"coolctl identify: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        model, _ = identify_simulated(
            duration_s=args.duration,
            period_s=period,
            seed=args.seed,
            plant_overrides=overrides,
        )
    except ValueError as exc:
        print(f"coolctl identify: the fit failed: {exc}", file=sys.stderr)
        return ExitCode.BAD
    if args.out is not None:
        args.out.write_text(model.to_json(), encoding="utf-8")
    _print_fit(model, args.out, args.json)
    return ExitCode.OK


def _print_fit(model: Any, out: Path | None, as_json: bool) -> None:
    """The fit report, the same for the simulated and the live test."""
    if as_json:
        print(json.dumps(json.loads(model.to_json())["fit"], indent=2))
        return
    print(model.report())
    if model.pump_power_full_speed_w is not None:
        print(f"pump power at full speed: {model.pump_power_full_speed_w:.0f} W (k·s³ fit)")
    if out is not None:
        print(f"model written to {out}")


def run_live(args: argparse.Namespace) -> ExitCode:
    """`coolctl identify RACK --config FILE`: see the module docstring."""
    if args.rack is None or args.config is None:
        print("coolctl identify: the live test needs RACK and --config FILE", file=sys.stderr)
        return ExitCode.USAGE
    if args.plant or args.period is not None:
        print(
            "coolctl identify: --plant and --period are for --simulated; the live test samples"
            " at the rack's control period",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    if args.out is None:
        print("coolctl identify: the live test needs --out FILE for the model", file=sys.stderr)
        return ExitCode.USAGE
    from coolctl.rack.check import load_or_report
    from coolctl.tools.live_step_test import LiveTestSettings

    try:
        settings = LiveTestSettings(
            duration_s=args.duration,
            time_scale=args.time_scale,
            settle_s=args.settle,
            hold_min_s=args.hold_min,
            hold_max_s=args.hold_max,
            pump_step=args.pump_step,
            valve_step=args.valve_step,
            margin_k=args.margin,
            handback_s=args.handback,
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"coolctl identify: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    config = load_or_report(args.config)
    if config is None:
        return ExitCode.BAD
    rack = config.racks.get(args.rack)
    if rack is None:
        known = ", ".join(sorted(config.racks)) or "none"
        print(
            f"coolctl identify: no rack {args.rack!r} in {args.config} ({known})", file=sys.stderr
        )
        return ExitCode.USAGE
    samples = settings.duration_s / (rack.control_period_s * settings.time_scale)
    if samples < 100:
        print(
            f"coolctl identify: --duration {args.duration:g} s is {samples:.0f} control periods"
            " of this rack; the fit needs at least 100",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    import asyncio

    try:
        return asyncio.run(_live(args, config, settings))
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


async def _live(args: argparse.Namespace, config: Any, settings: Any) -> ExitCode:
    from coolctl.ops.client import default_socket_path
    from coolctl.tools.live_step_test import (
        MODEL_SIGNAL_LABELS,
        RackUnreachable,
        StepTestRefused,
        daemon_mode,
        fit_live,
        run_live_step_test,
    )

    rack_id: str = args.rack
    socket = args.socket or config.daemon.control_socket or default_socket_path()
    mode: str | None = None
    try:
        if not args.force:
            mode = await daemon_mode(socket, rack_id)
        if mode == RackMode.MANUAL:
            _note(
                f"rack {rack_id} is in manual mode on the daemon at {socket}: its allocator"
                " keeps the power caps; the test steps pump and valve"
            )
        rack = config.racks[rack_id]
        wall = settings.duration_s / settings.time_scale
        _note(
            f"step test on rack {rack_id}: {settings.duration_s:g} s of rack time"
            f" ({wall / 60:.1f} min of wall time), a sample every {rack.control_period_s:g} s;"
            " Ctrl-C stops it and hands the rack back to its PID loops (again: at once)"
        )
        result = await run_live_step_test(
            config,
            rack_id,
            settings,
            with_allocator=mode != RackMode.MANUAL,
            handle_signals=True,
            on_progress=_progress(),
        )
    except RackUnreachable as exc:
        print(f"coolctl identify: {exc}", file=sys.stderr)
        return ExitCode.UNREACHABLE
    except StepTestRefused as exc:
        print(f"coolctl identify: {exc}", file=sys.stderr)
        return ExitCode.BAD
    after = (
        f"restart the daemon (systemctl start coolctl) or switch the rack back"
        f" (coolctl mode {rack_id} auto --reason ...)"
    )
    if not result.finished:
        held = "" if result.interrupted else f" held it for {settings.handback_s:g} s and"
        print(
            f"coolctl identify: step test on rack {rack_id} aborted after {result.samples}"
            f" samples: {result.reason}. The PID loops{held} the actuators were handed back as"
            f" the daemon does when it stops; no model written. Now {after}.",
            file=sys.stderr,
        )
        return ExitCode.INTERRUPTED if _by_signal(result.reason) else ExitCode.ABORTED
    for name in result.signals.missing:
        _note(
            f"rack {rack_id} has no points for {MODEL_SIGNAL_LABELS.get(name, name)}: "
            "not in the model"
        )
    try:
        fit = fit_live(result, settings, args.config)
    except ValueError as exc:
        print(f"coolctl identify: the fit failed: {exc}", file=sys.stderr)
        return ExitCode.BAD
    for name, why in fit.left_out.items():
        _note(
            f"{MODEL_SIGNAL_LABELS.get(name, name)} {why}: left out of the model (the MPC will"
            " not anticipate it; identify again while it varies to include it)"
        )
    if fit.short_record:
        _note(f"{result.samples} samples: first-order denominators only (a short test)")
    args.out.write_text(fit.model.to_json(), encoding="utf-8")
    problem = _mpc_check(config, rack_id, args.out)
    _print_fit(fit.model, args.out, args.json)
    if problem is not None:
        _note(f"the MPC on rack {rack_id} does not accept this model: {problem}")
        return ExitCode.BAD
    _note(
        "step test finished with pump and valve where they stood; the actuators were handed"
        f" back as the daemon does when it stops. Now {after}."
    )
    return ExitCode.OK


def _by_signal(reason: str | None) -> bool:
    return reason is not None and reason.startswith("interrupted by")


def _mpc_check(config: Any, rack_id: str, path: Path) -> str | None:
    """Load the model as the daemon's MPC would on this rack; what is wrong, or None."""
    from dataclasses import replace

    from coolctl.config import Controller
    from coolctl.rack.facts import device_facts
    from coolctl.rack.mpc import build_mpc_control

    rack = replace(config.racks[rack_id], controller=Controller.MPC, mpc_model=path)
    try:
        facts = {device.id: device_facts(device) for device in rack.devices.values()}
        build_mpc_control(rack, facts, path)
    except ValueError as exc:
        return str(exc)
    return None


def _note(message: str) -> None:
    print(f"coolctl identify: {message}", file=sys.stderr, flush=True)


def _progress() -> Any:
    """Progress on stderr, about every tenth of the test."""
    shown = [-1]

    def show(index: int, samples: int, values: Any) -> None:
        tenth = 10 * (index + 1) // samples
        if tenth == shown[0]:
            return
        shown[0] = tenth
        parts = [f"{100 * (index + 1) // samples:3d}% ({index + 1}/{samples})"]
        for name, label, unit in (
            ("pump_speed", "pump", ""),
            ("valve", "valve", ""),
            ("supply_temperature", "supply", " degC"),
            ("flow", "flow", " L/min"),
        ):
            value = values.get(name)
            if value is not None:
                parts.append(f"{label} {value:.3g}{unit}")
        _note("step test " + ", ".join(parts))

    return show


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
