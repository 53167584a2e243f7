"""The MPC's QP solver, chosen on numbers, and what coolctl's MPC step costs around it.

1. OSQP called directly (warm and cold started) against scipy's SLSQP (what coolctl already
   depends on), on the problem size the issue names: a 4-state, 2-input linear MPC with a
   horizon of 20, input and state bounds, in closed loop (each solve starts where the last step
   left the system, as in a controller). Median and p99 solve times per solver and the ratio
   of each to OSQP warm started (the baseline, run in the same process), and how far each
   solver's first move is from OSQP's (all solve the same QP, so the moves should agree to the
   solvers' tolerances). CVXPY is not measured: it is not a dependency, and what it would add
   is a modelling layer over the same OSQP.
2. The rack's own MPC (`coolctl.control.mpc`, the model identified on the simulated plant) in
   closed loop on a scenario (`--scenario`, the first `--seconds` of it): each
   `MpcController.step` timed, against OSQP's own run time for that step's solve (the floor
   of any step on this QP) and against the PID stack's `RackController.step` on the same
   scenario, in the same process. "around the solve" is the step less OSQP's run time: the
   Python and numpy work of reading the rack, running the model, building the QP's vectors
   and turning the plan into commands; that is what `control/mpc.py` can make faster without
   changing a decision.

    python benchmarks/mpc_solver.py [--steps N] [--slsqp-steps N]
                                    [--scenario FILE.toml] [--seconds S] [--mpc-model FILE]

Wall times measure this machine and move with its load; the ratios, taken in one process, move
less.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import osqp  # type: ignore[import-untyped]
from scipy import optimize, sparse

FloatArray = npt.NDArray[np.float64]
NX, NU, HORIZON = 4, 2, 20
SUITE = Path(__file__).resolve().parent.parent / "simulators" / "scenarios"


@dataclass(frozen=True)
class Problem:
    a: FloatArray
    b: FloatArray
    q: FloatArray  # state weight
    r: FloatArray  # input weight
    u_max: float
    x_max: float


def problem(seed: int = 0) -> Problem:
    """A stable, lightly damped random system, scaled so that the bounds are active at times."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(NX, NX))
    a = 0.97 * a / max(abs(np.linalg.eigvals(a)))
    b = rng.normal(size=(NX, NU))
    return Problem(a, b, np.diag([10.0, 1.0, 1.0, 1.0]), 0.1 * np.eye(NU), 1.0, 5.0)


def osqp_solver(p: Problem, warm: bool) -> Callable[[FloatArray], FloatArray]:
    """Sparse formulation, z = [x(0..N), u(0..N-1)], built once; a solve updates l and u."""
    n = HORIZON
    big_p = sparse.block_diag(
        [sparse.kron(sparse.eye(n + 1), p.q), sparse.kron(sparse.eye(n), p.r)], format="csc"
    )
    ax = sparse.kron(sparse.eye(n + 1), -sparse.eye(NX)) + sparse.kron(sparse.eye(n + 1, k=-1), p.a)
    bu = sparse.kron(sparse.vstack([sparse.csc_matrix((1, n)), sparse.eye(n)]), p.b)
    aeq = sparse.hstack([ax, bu])
    aineq = sparse.eye((n + 1) * NX + n * NU)
    big_a = sparse.vstack([aeq, aineq], format="csc")
    lineq = np.concatenate([np.full((n + 1) * NX, -p.x_max), np.full(n * NU, -p.u_max)])
    uineq = -lineq
    solver = osqp.OSQP()
    leq = np.zeros((n + 1) * NX)
    solver.setup(
        big_p,
        np.zeros((n + 1) * NX + n * NU),
        big_a,
        np.concatenate([leq, lineq]),
        np.concatenate([leq, uineq]),
        verbose=False,
        warm_starting=warm,
        polishing=False,
        eps_abs=1e-4,
        eps_rel=1e-4,
    )

    def solve(x0: FloatArray) -> FloatArray:
        leq[:NX] = -x0
        solver.update(l=np.concatenate([leq, lineq]), u=np.concatenate([leq, uineq]))
        result = solver.solve()
        start = (n + 1) * NX
        return np.asarray(result.x[start : start + NU], dtype=np.float64)

    return solve


def slsqp_solver(p: Problem) -> Callable[[FloatArray], FloatArray]:
    """Condensed formulation: inputs only (x = Φ x0 + Γ u), bounds on u, states as linear
    inequalities with their Jacobian given; warm started from the shifted last solution."""
    n = HORIZON
    phi = np.vstack([np.linalg.matrix_power(p.a, k) for k in range(1, n + 1)])
    gamma = np.zeros((n * NX, n * NU))
    for row in range(n):
        for col in range(row + 1):
            block = np.linalg.matrix_power(p.a, row - col) @ p.b
            gamma[row * NX : (row + 1) * NX, col * NU : (col + 1) * NU] = block
    qbar = np.kron(np.eye(n), p.q)
    rbar = np.kron(np.eye(n), p.r)
    h = gamma.T @ qbar @ gamma + rbar
    last = np.zeros(n * NU)

    def solve(x0: FloatArray) -> FloatArray:
        nonlocal last
        free = phi @ x0
        f = gamma.T @ qbar @ free
        constraints = [
            {
                "type": "ineq",
                "fun": lambda u: p.x_max - (free + gamma @ u),
                "jac": lambda u: -gamma,
            },
            {
                "type": "ineq",
                "fun": lambda u: p.x_max + (free + gamma @ u),
                "jac": lambda u: gamma,
            },
        ]
        start = np.concatenate([last[NU:], last[-NU:]])
        result = optimize.minimize(
            lambda u: 0.5 * u @ h @ u + f @ u,
            start,
            jac=lambda u: h @ u + f,
            bounds=[(-p.u_max, p.u_max)] * (n * NU),
            constraints=constraints,
            method="SLSQP",
            options={"maxiter": 200, "ftol": 1e-8},
        )
        last = np.asarray(result.x, dtype=np.float64)
        return last[:NU].copy()

    return solve


def closed_loop(
    p: Problem, solve: Callable[[FloatArray], FloatArray], steps: int, seed: int = 1
) -> tuple[list[float], list[FloatArray]]:
    """Run the controller `steps` times on the system with a disturbance; solve times (s) and
    the states each solve started from."""
    rng = np.random.default_rng(seed)
    x = np.array([4.0, -2.0, 1.0, 0.0])
    times: list[float] = []
    starts: list[FloatArray] = []
    for _ in range(steps):
        starts.append(x.copy())
        started = time.perf_counter()
        u = solve(x)
        times.append(time.perf_counter() - started)
        x = p.a @ x + p.b @ u + rng.normal(0.0, 0.3, NX)
        if rng.random() < 0.05:  # now and then a kick, so that bounds become active
            x += rng.normal(0.0, 3.0, NX)
        x = np.clip(x, -0.8 * p.x_max, 0.8 * p.x_max)  # keep every QP feasible
    return times, starts


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


@dataclass
class StepTimes:
    """Per-step wall time of a controller's `step`, and for the MPC OSQP's own run time of the
    solve that step's commands came from (NaN on a step that fell back to PID)."""

    step_s: list[float] = dataclasses.field(default_factory=list)
    solve_s: list[float] = dataclasses.field(default_factory=list)


def timed_factory(name: str, times: StepTimes) -> Callable[..., Any]:
    """The scenario runner's factory for `name`, with the controller's `step` timed."""
    from coolctl.tools.scenario_runner import controller_factory

    build = controller_factory(name)

    def factory(rack: Any, facts: Mapping[str, Any], model_path: Path | None) -> Any:
        stack = build(rack, facts, model_path)
        controller = stack.controller
        step = controller.step
        stats = getattr(controller, "stats", None)
        clock = time.perf_counter

        def timed_step(snapshot: Any, now: float) -> Any:
            solves = stats.solves if stats is not None else 0
            started = clock()
            commands = step(snapshot, now)
            times.step_s.append(clock() - started)
            if stats is not None:  # a step whose commands came from a solve: its run time
                solved = stats.solves > solves
                times.solve_s.append(stats.last_solve_s if solved else float("nan"))
            return commands

        controller.step = timed_step  # type: ignore[method-assign]
        return stack

    return factory


def rack_step_costs(path: Path, seconds: float, model: Path | None) -> None:
    """Part 2 of the module docstring: the MPC's step against its own solve and the PID's step,
    on `seconds` of the scenario at `path`."""
    from coolctl.simulators.scenario import load_scenario
    from coolctl.tools.scenario_runner import default_mpc_model, run_scenario

    scenario = load_scenario(path)
    if seconds > 0:
        scenario = dataclasses.replace(scenario, duration_s=min(seconds, scenario.duration_s))
    model_path = model if model is not None else default_mpc_model(scenario)
    runs: dict[str, StepTimes] = {}
    for name in ("pid", "mpc"):
        runs[name] = StepTimes()
        run_scenario(scenario, name, factory=timed_factory(name, runs[name]), model_path=model_path)
    mpc, pid = runs["mpc"], runs["pid"]
    step = np.asarray(mpc.step_s)
    solve = np.asarray(mpc.solve_s)
    solved = np.isfinite(solve)
    around = step[solved] - solve[solved]
    print(
        f"\nthe rack's MPC in closed loop: {scenario.name}, {scenario.ticks} steps of"
        f" {scenario.period_s:g} s ({int(solved.sum())} solved), model {model_path.name}"
    )
    print(f"{'per step':<34} {'median ms':>10} {'p99 ms':>8} {'mean ms':>8} {'total s':>8}")
    rows = [
        ("MpcController.step", step),
        ("  OSQP's run time (the solve)", solve[solved]),
        ("  around the solve (step - solve)", around),
        ("RackController.step (PID)", np.asarray(pid.step_s)),
    ]
    for label, values in rows:
        print(
            f"{label:<34} {np.median(values) * 1e3:>10.3f} {np.percentile(values, 99) * 1e3:>8.3f}"
            f" {values.mean() * 1e3:>8.3f} {values.sum():>8.2f}"
        )
    ratios = (
        ("MPC step / OSQP solve (mean)", step[solved].mean() / solve[solved].mean()),
        ("around the solve / OSQP solve (mean)", around.mean() / solve[solved].mean()),
        ("MPC step / PID step (mean)", step.mean() / np.mean(pid.step_s)),
        ("MPC step / PID step (p99)", p99(mpc.step_s) / p99(pid.step_s)),
    )
    for label, value in ratios:
        print(f"{label:<38} {value:>6.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--slsqp-steps", type=int, default=300)
    parser.add_argument(
        "--scenario", type=Path, default=SUITE / "diurnal-24h.toml", help="for part 2"
    )
    parser.add_argument(
        "--seconds", type=float, default=7200.0, help="of the scenario (0: all of it)"
    )
    parser.add_argument("--mpc-model", type=Path, help="default: the cached simulated model")
    parser.add_argument("--no-rack", action="store_true", help="part 1 only")
    args = parser.parse_args()
    p = problem()
    baseline, starts = closed_loop(p, osqp_solver(p, warm=True), args.steps)
    rows = [("OSQP direct, warm start", baseline)]
    cold, _ = closed_loop(p, osqp_solver(p, warm=False), args.steps)
    rows.append(("OSQP direct, cold start", cold))
    slsqp, _ = closed_loop(p, slsqp_solver(p), args.slsqp_steps)
    rows.append(("scipy SLSQP (condensed)", slsqp))
    # the same QPs from the same states: do the solvers agree on the first move?
    reference = osqp_solver(p, warm=False)
    check = slsqp_solver(p)
    gaps = [float(np.max(np.abs(reference(x) - check(x)))) for x in starts[:100]]
    base_median, base_p99 = statistics.median(baseline), p99(baseline)
    print(f"{NX}-state, {NU}-input MPC, horizon {HORIZON}, in closed loop")
    print(
        f"{'solver':<26} {'solves':>6} {'median ms':>10} {'p99 ms':>8} {'x median':>9} {'x p99':>7}"
    )
    for name, times in rows:
        median, tail = statistics.median(times), p99(times)
        print(
            f"{name:<26} {len(times):>6} {median * 1e3:>10.3f} {tail * 1e3:>8.3f}"
            f" {median / base_median:>9.1f} {tail / base_p99:>7.1f}"
        )
    print(f"first move, SLSQP vs OSQP: max difference {max(gaps):.2e} (inputs within ±{p.u_max})")
    if not args.no_rack:
        rack_step_costs(args.scenario, args.seconds, args.mpc_model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
