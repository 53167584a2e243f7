"""`coolctl sim run` and `coolctl sim compare`: scenarios offline, in simulated time.

Two functions for `coolctl/cli/main.py`: `add_sim_run_commands(sim_subparsers)` adds both commands
to the `sim` sub-parsers, and `run_sim_command(args)` runs them (None when `args` is another
`sim` command). Building the parser imports nothing heavy; numpy, the plant and matplotlib are
imported only when a scenario runs.

Exit codes: 0 done, 1 a scenario (or the rack config it names) is bad, 2 usage, including a
controller that is not available here (`mpc` without its solver installed).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coolctl.exitcodes import ExitCode

if TYPE_CHECKING:
    from coolctl.simulators.scenario import Scenario
    from coolctl.tools.scenario_runner import RunResult

_CONTROLLERS = (
    "fixed",
    "pid",
    "mpc",
)  # coolctl.tools.scenario_runner.CONTROLLERS, without importing it


def add_sim_run_commands(sim_subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `run` and `compare` to the `coolctl sim` sub-commands."""
    run = sim_subparsers.add_parser(
        "run",
        help="run a scenario offline in simulated time and print its KPIs",
        description="Runs the simulated rack against the daemon's own control stack, far"
        " faster than real time, and prints the KPIs (plant truth, never what the controller"
        " saw).",
    )
    run.add_argument("scenario", type=Path, metavar="SCENARIO.toml")
    run.add_argument("--controller", choices=_CONTROLLERS, default="pid")
    _common(run)
    compare = sim_subparsers.add_parser(
        "compare",
        help="run scenarios with several controllers and print their KPIs side by side",
    )
    compare.add_argument("scenarios", type=Path, nargs="+", metavar="SCENARIO.toml")
    compare.add_argument(
        "--controllers",
        default=",".join(_CONTROLLERS),
        metavar="LIST",
        help="comma-separated, from fixed,pid,mpc (default all; one not available shows n/a)",
    )
    _common(compare)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="write a PNG of the run(s) there"
    )
    parser.add_argument(
        "--fixed-speed",
        type=float,
        default=1.0,
        metavar="S",
        help="pump speed of the fixed baseline, 0.15..1 (default 1.0)",
    )
    parser.add_argument(
        "--mpc-model", type=Path, metavar="FILE", help="identified model for the MPC"
    )


def run_sim_command(args: argparse.Namespace) -> ExitCode | None:
    """Run `coolctl sim run|compare`; None for any other `sim` command."""
    command = getattr(args, "sim_command", None)
    if command not in ("run", "compare"):
        return None
    if not 0.15 <= args.fixed_speed <= 1.0:
        print("--fixed-speed must be within 0.15..1", file=sys.stderr)
        return ExitCode.USAGE
    if args.plot is not None and not _matplotlib_available():
        print(
            "--plot needs matplotlib, which coolctl leaves out of a daemon's install:"
            " pip install 'coolctl[plot]'",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    if command == "run":
        return _run(args)
    controllers = [name.strip() for name in args.controllers.split(",") if name.strip()]
    unknown = [name for name in controllers if name not in _CONTROLLERS]
    if unknown or not controllers:
        print(f"--controllers: choose from {', '.join(_CONTROLLERS)}", file=sys.stderr)
        return ExitCode.USAGE
    return _compare(args, controllers)


def _matplotlib_available() -> bool:
    """Checked before a run, so a missing plotting library costs no simulated day."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


# ------------------------------------------------------------------------------ run


def _run(args: argparse.Namespace) -> ExitCode:
    from coolctl.simulators.scenario import ScenarioError, load_scenario
    from coolctl.tools.scenario_runner import ControllerUnavailable, run_scenario

    try:
        scenario = load_scenario(args.scenario)
        result = run_scenario(
            scenario,
            args.controller,
            fixed_pump_speed=args.fixed_speed,
            model_path=args.mpc_model,
        )
    except ControllerUnavailable as exc:
        print(f"coolctl sim run: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except ScenarioError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return ExitCode.BAD
    if args.plot is not None:
        from coolctl.tools.plots import plot_run

        plot_run(result, args.plot)
    if args.json:
        print(json.dumps(_json_kpis(result), sort_keys=False))
    else:
        _print_run(result, args.plot)
    return ExitCode.OK


def _json_kpis(result: RunResult) -> dict[str, Any]:
    """The KPI object: scenario and controller, then every KPI (non-finite as null)."""
    out: dict[str, Any] = {"scenario": result.scenario.name, "controller": result.controller}
    for key, value in result.kpis.items():
        out[key] = value if math.isfinite(value) else None
    return out


def _print_run(result: RunResult, plot: Path | None) -> None:
    from coolctl.tools.kpi import KPI_KEYS, KPI_UNITS, format_kpi

    scenario = result.scenario
    kpis = result.kpis
    print(f"scenario    {scenario.name} ({scenario.path})")
    print(f"controller  {result.controller}")
    print(
        f"simulated   {scenario.ticks * scenario.period_s:g} s at {scenario.period_s:g} s periods"
        f" in {kpis['wall_s']:.2f} s ({kpis['sim_speedup']:.0f}x real time);"
        f" scored after {scenario.warmup_s:g} s warm-up"
    )
    for at, event in result.events:
        print(f"  {at:>9.0f} s  {event.label}")
    counts: dict[str, int] = {}
    for rack_event in result.rack_events:
        counts[rack_event.kind] = counts.get(rack_event.kind, 0) + 1
    if counts:
        shown = ", ".join(f"{kind} {n}" for kind, n in counts.items())
        print(f"rack events {shown}")
    if result.first_error:
        print(f"controller raised {int(kpis['controller_errors'])} times; first: ")
        print(f"  {result.first_error}")
    print()
    keys = [*KPI_KEYS, *(k for k in kpis if k not in KPI_KEYS)]
    width = max(len(k) for k in keys)
    for key in keys:
        print(f"{key.ljust(width)}  {format_kpi(key, kpis[key]):>12}  {KPI_UNITS.get(key, '')}")
    if plot is not None:
        print(f"\nplot        {plot}")


# ------------------------------------------------------------------------------ compare


def _compare(args: argparse.Namespace, controllers: Sequence[str]) -> ExitCode:
    from coolctl.simulators.scenario import ScenarioError, load_scenario
    from coolctl.tools.kpi import NO_RATIO_KEYS, comparison_table, ratio, ratio_pairs
    from coolctl.tools.scenario_runner import (
        ControllerUnavailable,
        controller_factory,
        run_scenario,
        validate_scenario,
    )

    runnable = []
    for name in controllers:
        try:
            controller_factory(name)
        except ControllerUnavailable as exc:
            print(f"coolctl sim compare: {name}: {exc}; shown as n/a", file=sys.stderr)
            continue
        runnable.append(name)
    try:
        scenarios = [load_scenario(path) for path in args.scenarios]
        for scenario in scenarios:  # every problem before the first long run
            validate_scenario(scenario)
    except ScenarioError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return ExitCode.BAD
    report: list[dict[str, Any]] = []
    plots: list[Path] = []
    for scenario in scenarios:
        results: list[RunResult] = []
        try:
            for name in runnable:
                results.append(
                    run_scenario(
                        scenario,
                        name,
                        fixed_pump_speed=args.fixed_speed,
                        model_path=args.mpc_model,
                    )
                )
        except ScenarioError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return ExitCode.BAD
        by_name: dict[str, Mapping[str, float] | None] = dict.fromkeys(controllers)
        by_name.update({r.controller: r.kpis for r in results})
        if args.plot is not None and results:
            from coolctl.tools.plots import plot_compare

            target = _plot_path(args.plot, scenario, len(scenarios))
            plot_compare(results, target)
            plots.append(target)
        if args.json:
            ratios = {
                f"{a}/{b}": {
                    key: _finite_or_none(ratio(ka[key], kb[key]))
                    for key in ka
                    if key in kb and key not in NO_RATIO_KEYS
                }
                for a, b in ratio_pairs(controllers)
                if (ka := by_name[a]) is not None and (kb := by_name[b]) is not None
            }
            report.append(
                {
                    "scenario": scenario.name,
                    "path": str(scenario.path),
                    "kpis": {
                        name: None
                        if kpis is None
                        else {k: _finite_or_none(v) for k, v in kpis.items()}
                        for name, kpis in by_name.items()
                    },
                    "ratios": ratios,
                }
            )
        else:
            print(f"{scenario.name} ({scenario.path})")
            for line in comparison_table(by_name):
                print(f"  {line}")
            print()
    if args.json:
        print(json.dumps({"scenarios": report, "plots": [str(p) for p in plots]}))
    else:
        for target in plots:
            print(f"plot {target}")
    return ExitCode.OK


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _plot_path(plot: Path, scenario: Scenario, count: int) -> Path:
    """FILE.png for one scenario; FILE-<scenario>.png each when several."""
    if count == 1:
        return plot
    slug = re.sub(r"[^A-Za-z0-9]+", "-", scenario.name).strip("-").lower() or "scenario"
    return plot.with_name(f"{plot.stem}-{slug}{plot.suffix or '.png'}")


def main(argv: Sequence[str] | None = None) -> ExitCode:
    """`python -m coolctl.cli.sim run|compare ...`: the same commands without the rest of
    the CLI (for scripts, and until `coolctl sim` has them)."""
    parser = argparse.ArgumentParser(prog="coolctl sim")
    commands = parser.add_subparsers(dest="sim_command", metavar="COMMAND", required=True)
    add_sim_run_commands(commands)
    args = parser.parse_args(argv)
    status = run_sim_command(args)
    return ExitCode.USAGE if status is None else status


if __name__ == "__main__":
    sys.exit(main())
