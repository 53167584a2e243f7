"""The MPC on the simulated rack, through the scenario runner (the daemon's tick, in simulated
time): it keeps pump, valve and caps within their limits, holds the temperatures on a load
step without throttling, falls back to the PID loops whenever it cannot vouch for a step, and
hands the allocator a lower budget only when cooling has run out."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from coolctl.cli.sim import main as sim_main
from coolctl.config import RackConfig
from coolctl.control.identify import IdentifiedModel
from coolctl.control.mpc import MpcController, MpcSettings, build_mpc
from coolctl.control.supervisor import Decision
from coolctl.model import Command, Snapshot, Source
from coolctl.rack import mpc as mpc_stack
from coolctl.rack.safety import DeviceFacts
from coolctl.rack.stack import RackControl, ThermalCappedAllocator, build_pid_control
from coolctl.simulators.scenario import Scenario, parse_scenario
from coolctl.tools import mpc_model
from coolctl.tools.scenario_runner import RunResult, run_scenario

# A load step on a rack with its BMCs (so outlet and chip temperatures are read): 30 % -> 100 %,
# then down to 50 %.
LOAD_STEP = """
duration_s = 2100.0
period_s = 1.0
seed = 4
warmup_s = 300.0
[rack]
bmcs = true
[plant]
initial_load = 0.3
[[event]]
at_s = 600.0
kind = "load"
value = 1.0
[[event]]
at_s = 1500.0
kind = "load"
value = 0.5
"""

# A second job on a third of a half-loaded rack: six servers to full power, the rack's total
# up by a fifth. The model sees the total, not which servers carry it.
JOB = """
duration_s = 900.0
period_s = 1.0
seed = 2
warmup_s = 300.0
[rack]
bmcs = true
[plant]
initial_load = 0.5
[[event]]
at_s = 600.0
kind = "load"
value = 1.0
servers = [0, 1, 2, 3, 4, 5]
"""

# A budget well under what the busy rack draws: the allocator must cap, the MPC must not raise
# the budget it hands on.
BUDGET = """
duration_s = 900.0
period_s = 1.0
seed = 6
warmup_s = 200.0
[plant]
initial_load = 0.9
[budget]
watts = 130000.0
[[event]]
at_s = 400.0
kind = "budget"
value = 95000.0
"""

# Hot facility water: the pump at full speed cannot hold the chips, only less IT power can.
HOT_WATER = """
duration_s = 800.0
period_s = 1.0
seed = 8
warmup_s = 200.0
[rack]
bmcs = true
[plant]
initial_load = 1.0
[[event]]
at_s = 300.0
kind = "facility_water"
value = 42.0
"""

SHORT = """
duration_s = 400.0
period_s = 1.0
seed = 3
warmup_s = 100.0
[rack]
bmcs = true
[plant]
initial_load = 0.6
"""


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every identification in this session goes to one cache (shared with test_identify),
    never to the user's."""
    cache = tmp_path_factory.getbasetemp() / "mpc-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(mpc_model.CACHE_ENV, str(cache))
        yield cache


@pytest.fixture(scope="session")
def model_path(model_cache: Path) -> Path:
    return mpc_model.default_model_path(1.0)


def scenario(text: str) -> Scenario:
    return parse_scenario(text, Path("test.toml"))


@dataclasses.dataclass
class Recorded:
    """What a run's MPC asked for, what the supervisor decided, and the budgets handed on."""

    controller: MpcController | None = None
    stack: RackControl | None = None
    requested: list[tuple[float, list[Command]]] = dataclasses.field(default_factory=list)
    decisions: list[Decision] = dataclasses.field(default_factory=list)
    budgets: list[tuple[float | None, float | None]] = dataclasses.field(default_factory=list)


def run_mpc(
    text: str, model_path: Path, settings: Mapping[str, Any] | None = None
) -> tuple[RunResult, Recorded]:
    """Run a scenario under the MPC (optionally with changed settings), recording every step."""
    seen = Recorded()

    def factory(
        rack: RackConfig, devices: Mapping[str, DeviceFacts], _: Path | None
    ) -> RackControl:
        stack = mpc_stack.build_mpc_control(rack, devices, model_path)
        mpc = stack.controller
        assert isinstance(mpc, MpcController)
        if settings:
            pid = build_pid_control(rack, devices)
            changed = dataclasses.replace(mpc.settings, **settings)
            mpc = build_mpc(mpc.rack, mpc.model, changed, pid.controller)
            stack = RackControl(mpc, stack.allocator, stack.supervisor)
            if isinstance(stack.allocator, mpc_stack.MpcAllocator):
                stack.allocator.mpc = mpc
        step = mpc.step

        def recording_step(snapshot: Snapshot, now: float) -> list[Command]:
            commands = step(snapshot, now)
            seen.requested.append((now, commands))
            return commands

        mpc.step = recording_step  # type: ignore[method-assign]
        allocator = stack.allocator
        if isinstance(allocator, mpc_stack.MpcAllocator):
            handed = allocator.mpc.allocator_budget_w

            def recording_budget(
                budget_w: float | None, snapshot: Snapshot, margin_w: float = 0.0
            ) -> float | None:
                out = handed(budget_w, snapshot, margin_w)
                seen.budgets.append((budget_w, out))
                return out

            allocator.mpc.allocator_budget_w = recording_budget  # type: ignore[method-assign]
        seen.controller, seen.stack = mpc, stack
        return stack

    def on_tick(_s: Snapshot, _now: float, _b: float | None, decision: Decision) -> None:
        seen.decisions.append(decision)

    result = run_scenario(scenario(text), "mpc", factory=factory, on_tick=on_tick)
    return result, seen


@pytest.fixture(scope="module")
def load_step(model_path: Path) -> tuple[RunResult, Recorded]:
    return run_mpc(LOAD_STEP, model_path)


# ---- limits --------------------------------------------------------------------------------


def test_mpc_commands_stay_within_pump_and_valve_bounds_and_rates(
    load_step: tuple[RunResult, Recorded],
) -> None:
    _, seen = load_step
    assert seen.controller is not None
    s = seen.controller.settings
    assert (s.pump_min, s.pump_max, s.pump_rate_per_s) == (0.2, 1.0, 0.1)  # the pump loop's
    assert (s.valve_min, s.valve_max, s.valve_rate_per_s) == (0.05, 1.0, 0.05)
    # The rate holds against the value last asked for, whichever controller asked: a step the
    # PID loops took over (a solve past its time limit on a busy host) is where the MPC resumes.
    last: dict[str, float] = {}
    solved = 0
    for _, commands in seen.requested:
        for command in commands:
            name = command.point.name
            if command.source is not Source.AUTO:
                continue
            if command.reason.startswith("MPC"):
                solved += 1
                low, high, rate = {
                    "pump_speed_command": (s.pump_min, s.pump_max, s.pump_rate_per_s),
                    "valve_command": (s.valve_min, s.valve_max, s.valve_rate_per_s),
                }[name]
                assert low <= command.value <= high, command
                if name in last:
                    assert abs(command.value - last[name]) <= rate * 1.0 + 1e-9, command
            last[name] = command.value
    assert solved >= 2 * 2000  # pump and valve, every step but the odd fallback
    # and what reached the plant, after the supervisor, within every actuator's hard range
    assert seen.stack is not None
    hard = {
        a.point: (a.hard_minimum, a.hard_maximum) for a in seen.stack.supervisor.config.actuators
    }
    for decision in seen.decisions:
        for command in decision.commands:
            low, high = hard[command.point]
            assert low <= command.value <= high, command


def test_the_mpc_moves_the_valve_by_its_deadband_or_not_at_all(
    load_step: tuple[RunResult, Recorded],
) -> None:
    """Every valve move the MPC asks for is at least its deadband (a smaller one would be a
    reversal on the sensor's noise), unless it ends at one of the valve's bounds; and the
    MPC's chip limit is the thermal cap's (83.5 degC on the demo rack) less room for a step."""
    _, seen = load_step
    assert seen.controller is not None
    s = seen.controller.settings
    assert s.valve_deadband == 0.02 and s.chip_max_c == 83.5 - 1.5
    last: float | None = None
    moves = 0
    for _, commands in seen.requested:
        for command in commands:
            if command.point.name != "valve_command" or command.source is not Source.AUTO:
                continue
            if last is not None and command.reason.startswith("MPC") and command.value != last:
                moves += 1
                at_bound = command.value in (s.valve_min, s.valve_max)
                assert at_bound or abs(command.value - last) >= s.valve_deadband - 1e-9, command
            last = command.value
    assert moves > 0  # the load steps move it


def test_load_step_under_mpc_holds_every_limit_without_throttling(
    load_step: tuple[RunResult, Recorded],
) -> None:
    result, seen = load_step
    kpis = result.kpis
    assert kpis["temp_limit_violation_ks"] == 0.0
    assert kpis["max_supply_temp_c"] < 40.0 and kpis["max_outlet_temp_c"] < 60.0
    # servers differ by +-3 K: the hottest chip throttles a little (1.6 % of the IT energy,
    # against none on identical servers); the MPC's chip margin is the next piece of work
    assert kpis["throttled_energy_kwh"] < 0.02 * kpis["it_energy_kwh"]
    assert kpis["controller_errors"] == 0 and kpis["failsafe_s"] == 0
    assert kpis["mpc_solves"] >= 0.99 * kpis["mpc_steps"]
    assert kpis["mpc_solve_p99_ms"] < 200.0  # the solver's own budget (fallback beyond it)
    # the pump follows the load: it works harder at 100 % than at 30 %
    pumps = {
        now: c.value for now, cs in seen.requested for c in cs if c.point.name.startswith("pump")
    }
    assert pumps[1400.0] > pumps[590.0] + 0.2


def test_mpc_uses_less_pump_energy_than_fixed_speed_on_the_load_step(
    load_step: tuple[RunResult, Recorded],
) -> None:
    fixed = run_scenario(scenario(LOAD_STEP), "fixed").kpis
    # (0.68x: the flow reserve for the rack's rated power runs the pump at 0.75 at 30 % load)
    assert load_step[0].kpis["pump_energy_kwh"] < 0.75 * fixed["pump_energy_kwh"]


def test_a_job_on_a_few_servers_leaves_their_chips_under_82_degc(model_path: Path) -> None:
    """The MPC keeps a flow reserve for the rack's rated power, believes a server hotter than
    its model at once, and plans its chips under the thermal cap's limit with room for a step:
    a job on six servers takes their chips from about 70 degC to under 82, with no throttling
    (without the reserve 84.5, without the bias believed at once 83.7, planned at 83.5 82.9)."""
    result, _ = run_mpc(JOB, model_path)
    kpis = result.kpis
    assert kpis["max_chip_temp_c"] <= 82.0
    assert kpis["hardware_throttle_s"] == 0.0


def test_caps_stay_in_range_and_the_mpc_never_raises_the_budget(model_path: Path) -> None:
    result, seen = run_mpc(BUDGET, model_path)
    caps = [
        c.value
        for decision in seen.decisions
        for c in decision.commands
        if c.point.name == "power_limit"
    ]
    assert caps and all(1500.0 <= cap <= 7000.0 for cap in caps)
    assert seen.budgets
    for given, handed in seen.budgets:
        assert given is not None and handed is not None and handed <= given
    assert result.kpis["budget_violation_ws"] < 0.02 * 95000.0 * 500.0
    assert result.kpis["temp_limit_violation_ks"] == 0.0


def test_mpc_limits_it_power_only_when_the_pump_is_at_its_top(model_path: Path) -> None:
    """With the MPC's own IT-power limit on (`coordinate_caps`; by default the thermal cap
    loop caps an MPC rack): facility water at 42 degC, the pump runs out; then, and only then,
    the MPC hands the allocator an IT-power limit, and the chips are held below the throttle
    point by caps rather than by the servers' own thermal throttling."""
    # (the chip limit as the thermal cap's: at full load and 30 degC water the chips are then
    # within it, and the water's heat is what runs the pump out)
    result, seen = run_mpc(HOT_WATER, model_path, {"coordinate_caps": True, "chip_max_c": 83.5})
    assert seen.controller is not None
    assert result.kpis["mpc_it_limit_steps"] > 0
    pumps = {
        now: c.value for now, cs in seen.requested for c in cs if c.point.name.startswith("pump")
    }
    # one budget handed on per tick: the first one under "none" came with the pump at its top
    first = next(i for i, (_, handed) in enumerate(seen.budgets) if handed is not None)
    assert first > 300 and pumps[float(first - 1)] >= 0.9 - 1e-9
    assert result.kpis["temp_limit_violation_ks"] == 0.0


def test_the_thermal_cap_still_bounds_the_caps_under_the_mpc(model_path: Path) -> None:
    """The MPC's IT limit is on the supply alone; the PID stack's thermal cap loop (chips,
    outlets) stays under it: the MPC stack's allocator carries that loop, and no tick's caps
    add up to more than the limit it had in force."""
    limits: list[tuple[float, float]] = []
    caps_sum: dict[float, float] = {}

    def factory(
        rack: RackConfig, devices: Mapping[str, DeviceFacts], _: Path | None
    ) -> RackControl:
        stack = mpc_stack.build_mpc_control(rack, devices, model_path)
        allocator = stack.allocator
        assert isinstance(allocator, mpc_stack.MpcAllocator)
        assert isinstance(allocator, ThermalCappedAllocator)
        thermal = allocator.thermal
        assert thermal is not None
        step = allocator.step

        def recording(snapshot: Snapshot, now: float, budget_w: float | None) -> list[Command]:
            commands = step(snapshot, now, budget_w)
            if thermal.limit_w is not None:
                limits.append((now, thermal.limit_w))
                caps_sum[now] = allocator.allocation.allocated_w
            return commands

        allocator.step = recording  # type: ignore[method-assign]
        return stack

    result = run_scenario(scenario(HOT_WATER), "mpc", factory=factory)
    kinds = [event.kind for event in result.rack_events]
    assert "thermal_cap_engaged" in kinds
    assert limits
    assert all(caps_sum[now] <= limit + 1.0 for now, limit in limits)


# ---- fallback ------------------------------------------------------------------------------


class _Info:
    def __init__(self, status_val: int) -> None:
        self.status = "forced"
        self.status_val = status_val
        self.iter = 1
        self.run_time = 1e-4


class _Result:
    def __init__(self, status_val: int) -> None:
        self.info = _Info(status_val)
        self.x = None


def test_a_solver_that_never_finishes_hands_every_step_to_pid_exactly(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OSQP never converges: every step falls back, and the run is the PID run, number for
    number (the PID loops are the fallback, unchanged)."""
    import osqp  # type: ignore[import-untyped]

    max_iter = int(osqp.SolverStatus.OSQP_MAX_ITER_REACHED)
    monkeypatch.setattr(MpcController, "_solve", lambda self, *args: _Result(max_iter))
    result, _ = run_mpc(SHORT, model_path)
    pid = run_scenario(scenario(SHORT), "pid").kpis
    kpis = result.kpis
    assert kpis["mpc_solves"] == 0 and kpis["mpc_fallbacks"] == kpis["mpc_steps"] == 400
    assert kpis["mpc_fallbacks_max_iter"] == 400
    for key in ("pump_energy_kwh", "supply_temp_iae_ks", "max_outlet_temp_c", "it_energy_kwh"):
        assert kpis[key] == pid[key], key


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        ("infeasible", "infeasible"),
        ("raise", "solver_error"),
        ("time_limit", "time_limit"),
    ],
)
def test_infeasible_failed_or_late_solves_fall_back_and_are_counted(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: str, reason: str
) -> None:
    import osqp  # type: ignore[import-untyped]

    status = {
        "infeasible": int(osqp.SolverStatus.OSQP_PRIMAL_INFEASIBLE),
        "time_limit": int(osqp.SolverStatus.OSQP_TIME_LIMIT_REACHED),
    }
    calls = {"n": 0}
    original = MpcController._solve

    def solve(self: MpcController, *args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] % 2:  # every other step fails
            return original(self, *args)
        if outcome == "raise":
            raise ArithmeticError("forced")
        return _Result(status[outcome])

    monkeypatch.setattr(MpcController, "_solve", solve)
    result, seen = run_mpc(SHORT, model_path)
    kpis = result.kpis
    assert kpis[f"mpc_fallbacks_{reason}"] == kpis["mpc_fallbacks"] == 200
    assert kpis["mpc_solves"] == 200 and kpis["controller_errors"] == 0
    assert kpis["temp_limit_violation_ks"] == 0.0
    fallback_steps = [cs for _, cs in seen.requested if not cs[0].reason.startswith("MPC")]
    assert len(fallback_steps) == 200  # those steps' commands are the PID loops'


def test_a_lost_bmc_blinds_the_mpc_and_pid_takes_over_until_it_is_back(model_path: Path) -> None:
    text = (
        SHORT + '[[event]]\nat_s = 150.0\nkind = "link_loss"\ndevice = "bmc03"\nduration_s = 60.0\n'
    )
    result, seen = run_mpc(text, model_path)
    kpis = result.kpis
    assert kpis["mpc_fallbacks_blind"] > 30  # its power goes stale, the sum is unknown
    assert kpis["mpc_fallbacks"] == kpis["mpc_fallbacks_blind"]
    late = [cs for now, cs in seen.requested if now > 300.0]
    assert all(cs[0].reason.startswith("MPC") for cs in late)  # in charge again


# ---- pieces --------------------------------------------------------------------------------


def test_an_it_limit_is_released_gradually(load_step: tuple[RunResult, Recorded]) -> None:
    _, seen = load_step
    mpc = seen.controller
    assert mpc is not None
    rate = mpc.settings.it_limit_release_w_per_s
    mpc.it_power_limit_w = 60_000.0
    assert mpc._released(50_000.0, 1.0) == 50_000.0  # lower: at once
    assert mpc._released(None, 2.0) == 60_000.0 + 2 * rate  # none wanted: up at the rate
    mpc.it_power_limit_w = mpc.rack.cap_max_w - 10.0
    assert mpc._released(None, 1.0) is None  # past the caps' maximum: no limit at all


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="pump_min"):
        MpcSettings(pump_min=0.8, pump_max=0.5)
    with pytest.raises(ValueError, match="horizon"):
        MpcSettings(horizon=1)
    with pytest.raises(ValueError, match="finite"):
        MpcSettings(supply_max_c=float("nan"))
    with pytest.raises(ValueError, match="valve_deadband"):
        MpcSettings(valve_deadband=1.0)


def test_a_model_that_does_not_fit_is_refused_with_why(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = IdentifiedModel.from_json(model_path.read_text())
    other = dataclasses.replace(model, inputs=("valve", "pump_speed"))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(other.to_json())
    text = tmp_path / "short.toml"
    text.write_text(SHORT)
    for path, says in ((wrong, "needs a model with inputs"), (tmp_path / "none.json", "No such")):
        assert sim_main(["run", str(text), "--controller", "mpc", "--mpc-model", str(path)]) == 2
        assert says in capsys.readouterr().err


def test_sim_run_mpc_without_a_model_identifies_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_path: Path
) -> None:
    text = tmp_path / "short.toml"
    text.write_text(SHORT)
    assert sim_main(["run", str(text), "--controller", "mpc", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"mpc_solves"' in out and '"temp_limit_violation_ks": 0' in out
