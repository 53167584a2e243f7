"""The MPC's QP solver, chosen on numbers: OSQP called directly (warm and cold started) against
scipy's SLSQP (what coolctl already depends on), on the problem size the issue names: a
4-state, 2-input linear MPC with a horizon of 20, input and state bounds, in closed loop (each
solve starts where the last step left the system, as in a controller).

    python benchmarks/mpc_solver.py [--steps N] [--slsqp-steps N]

Prints median and p99 solve times per solver and the ratio of each to OSQP warm started (the
baseline, run in the same process), and how far each solver's first move is from OSQP's (all
solve the same QP, so the moves should agree to the solvers' tolerances). Wall times measure
this machine and move with its load. CVXPY is not measured: it is not a dependency, and what
it would add is a modelling layer over the same OSQP.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import osqp  # type: ignore[import-untyped]
from scipy import optimize, sparse

FloatArray = npt.NDArray[np.float64]
NX, NU, HORIZON = 4, 2, 20


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--slsqp-steps", type=int, default=300)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
