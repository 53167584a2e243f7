"""The shipped scenario suite under every available controller: KPIs side by side, with ratios.

For each scenario in simulators/scenarios/ (or those named), runs fixed, pid and mpc (a
controller that cannot run here shows n/a) and prints

- a summary: one line per scenario and controller with the KPIs that decide between them, and
  the ratios against the fixed-speed baseline (pid/fixed, mpc/fixed) and mpc/pid;
- per scenario, the full KPI table with the ratios pid/fixed, mpc/pid and mpc/fixed;
- for the 24-hour scenario, how fast it runs: sim_speedup per controller, where the wall time
  goes (plant, device polls and snapshot, control stack, recording), against the bare plant
  advanced over the same day in this process (the floor any runner has); for the MPC, how much
  of its control time is OSQP's own solve (no change to control/mpc.py's Python can go below
  that) and how much is the rest of the control stack.

Controller KPIs are deterministic (same seed, same numbers); `controller_step_p99_ms`,
`sim_speedup` and `wall_s` measure this machine and move with its load.

    python benchmarks/scenario_suite.py [SCENARIO.toml ...] [--controllers fixed,pid,mpc]
                                        [--plots DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from coolctl.simulators.plant import RackPlant
from coolctl.simulators.scenario import Scenario, load_scenario
from coolctl.tools.kpi import comparison_table, format_kpi, format_ratio, ratio
from coolctl.tools.scenario_runner import (
    CONTROLLERS,
    ControllerUnavailable,
    RunResult,
    controller_factory,
    run_scenario,
)

SUITE = Path(__file__).resolve().parent.parent / "simulators" / "scenarios"
SUMMARY = (
    ("pump_energy_kwh", "pump kWh"),
    ("supply_temp_iae_ks", "IAE K·ks"),
    ("supply_temp_max_dev_k", "max dev K"),
    ("temp_limit_violation_ks", "over limit K·ks"),
    ("max_outlet_temp_c", "max outlet °C"),
    ("throttled_energy_kwh", "throttled kWh"),
    ("budget_violation_ws", "over budget W·s"),
    ("controller_step_p99_ms", "step p99 ms"),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", type=Path, help="default: the shipped suite")
    parser.add_argument("--controllers", default=",".join(CONTROLLERS))
    parser.add_argument("--plots", type=Path, metavar="DIR", help="a compare PNG per scenario")
    parser.add_argument("--json", type=Path, metavar="FILE", help="every KPI, as JSON")
    args = parser.parse_args()
    wanted = [name.strip() for name in args.controllers.split(",") if name.strip()]
    runnable = []
    for name in wanted:
        try:
            controller_factory(name)
        except ControllerUnavailable as exc:
            print(f"{name}: {exc} (n/a below)")
            continue
        runnable.append(name)
    paths = args.scenarios or sorted(SUITE.glob("*.toml"))
    scenarios = [load_scenario(path) for path in paths]
    results: dict[str, dict[str, RunResult]] = {}
    started = time.perf_counter()
    for scenario in scenarios:
        results[scenario.name] = {}
        for name in runnable:
            result = run_scenario(scenario, name)
            results[scenario.name][name] = result
            if result.first_error:
                print(f"{scenario.name} / {name}: controller raised: {result.first_error}")
        if args.plots is not None:
            from coolctl.tools.plots import plot_compare

            args.plots.mkdir(parents=True, exist_ok=True)
            target = args.plots / f"{Path(str(scenario.path)).stem}.png"
            plot_compare(list(results[scenario.name].values()), target)
    total = time.perf_counter() - started
    print(f"\n{len(scenarios)} scenarios x {len(runnable)} controllers in {total:.0f} s\n")
    _summary(scenarios, results, wanted)
    _mpc_solver(scenarios, results)
    for scenario in scenarios:
        print(f"\n## {scenario.name} ({Path(str(scenario.path)).name}): {scenario.description}")
        by_name = {
            name: (results[scenario.name][name].kpis if name in results[scenario.name] else None)
            for name in wanted
        }
        for line in comparison_table(by_name):
            print(f"  {line}")
    day = next((s for s in scenarios if s.duration_s - s.warmup_s >= 24 * 3600), None)
    if day is not None:
        _speed(day, results[day.name])
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    scenario: {
                        name: {k: v if math.isfinite(v) else None for k, v in r.kpis.items()}
                        for name, r in by_controller.items()
                    }
                    for scenario, by_controller in results.items()
                },
                indent=1,
            )
        )
    return 0


def _summary(
    scenarios: list[Scenario], results: dict[str, dict[str, RunResult]], wanted: list[str]
) -> None:
    """One line per scenario and controller, then the ratios: pid/fixed and mpc/fixed (fixed
    speed is the baseline), and mpc/pid."""
    header = ["scenario", "controller", *(label for _, label in SUMMARY)]
    rows = [header]
    for scenario in scenarios:
        runs = results[scenario.name]
        for name in wanted:
            kpis = runs[name].kpis if name in runs else None
            cells = [format_kpi(key, kpis[key] if kpis else None) for key, _ in SUMMARY]
            rows.append([scenario.name, name, *cells])
        for a, b in (("pid", "fixed"), ("mpc", "fixed"), ("mpc", "pid")):
            if a in wanted and b in wanted:
                cells = [
                    format_ratio(
                        ratio(runs[a].kpis[key], runs[b].kpis[key])
                        if a in runs and b in runs
                        else None
                    )
                    for key, _ in SUMMARY
                ]
                rows.append(["", f"{a}/{b}", *cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


MPC_COLUMNS = (
    ("mpc_steps", "steps", "{:.0f}"),
    ("mpc_solves", "solved", "{:.0f}"),
    ("mpc_fallbacks", "to PID", "{:.0f}"),
    ("mpc_fallbacks_blind", "blind", "{:.0f}"),
    ("mpc_fallbacks_max_iter", "max_iter", "{:.0f}"),
    ("mpc_fallbacks_time_limit", "time_limit", "{:.0f}"),
    ("mpc_solve_p99_ms", "solve p99 ms", "{:.2f}"),
    ("mpc_solve_max_ms", "solve max ms", "{:.1f}"),
    ("mpc_solve_total_s", "solve total s", "{:.1f}"),
    ("mpc_it_limit_steps", "IT-limit steps", "{:.0f}"),
)


def _mpc_solver(scenarios: list[Scenario], results: dict[str, dict[str, RunResult]]) -> None:
    """The MPC's own counters per scenario: solves, fallbacks to PID by reason, OSQP's solve
    time (its own run-time figure), steps on which it limited IT power."""
    runs = [(s.name, results[s.name]["mpc"].kpis) for s in scenarios if "mpc" in results[s.name]]
    if not runs:
        return
    rows = [["scenario", *(label for _, label, _ in MPC_COLUMNS)]]
    for name, kpis in runs:
        rows.append([name, *(form.format(kpis.get(key, math.nan)) for key, _, form in MPC_COLUMNS)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print("\nMPC solver (control period 1 s; OSQP's time limit 0.2 s):")
    for row in rows:
        print(
            "  "
            + "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def _speed(day: Scenario, runs: dict[str, RunResult]) -> None:
    """sim_speedup of the day, where its time goes, and the bare plant as the floor."""
    plant = RackPlant(day.plant, seed=day.seed)
    started = time.perf_counter()
    for _ in range(day.ticks):
        plant.advance(day.period_s)
    bare = time.perf_counter() - started
    print(f"\n## speed: {day.name}, {day.ticks * day.period_s / 3600:.1f} h at {day.period_s:g} s")
    print(
        f"  bare plant, advanced one period at a time: {bare:.1f} s ({day.duration_s / bare:.0f}x)"
    )
    print("  controller  sim_speedup  wall s  vs bare plant  plant  devices  control  record")
    for name, result in runs.items():
        timing = result.timing_s
        wall = timing["total"]
        shares = "  ".join(
            f"{100 * timing[part] / wall:5.0f} %"
            for part in ("plant", "devices", "control", "record")
        )
        print(
            f"  {name:<10}  {result.kpis['sim_speedup']:>11.0f}  {wall:>6.1f}  "
            f"{wall / bare:>13.2f}  {shares}"
        )
    mpc = runs.get("mpc")
    if mpc is not None and "mpc_solve_total_s" in mpc.kpis:
        solve = mpc.kpis["mpc_solve_total_s"]
        control = mpc.timing_s["control"]
        print(
            f"  mpc control {control:.1f} s: OSQP's own solves {solve:.1f} s"
            f" ({100 * solve / mpc.timing_s['total']:.0f} % of the wall time), the rest of the"
            f" control stack {control - solve:.1f} s"
        )


if __name__ == "__main__":
    sys.exit(main())
