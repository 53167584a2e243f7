"""The offline scenario runner: scenario files, the control stack it runs, its KPIs and plots.

Runs are short (minutes of simulated time, a second or two of wall time each); the shipped
suite itself is parsed and checked here, and run whole by benchmarks/scenario_suite.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from coolctl.cli.sim import main as sim_main
from coolctl.config import RackConfig, RedfishDeviceConfig
from coolctl.control.supervisor import Decision
from coolctl.daemon.devices import DeviceHandle
from coolctl.daemon.runtime import RackRuntime
from coolctl.daemon.telemetry import TelemetryStore
from coolctl.drivers.modbus_profile import decode, load_profile
from coolctl.model import Command, PointId, Reading, Snapshot
from coolctl.rack.controllers import build_rack_control
from coolctl.rack.facts import device_facts
from coolctl.rack.safety import DeviceFacts
from coolctl.rack.stack import ThermalCappedAllocator, build_pid_control
from coolctl.simulators.modbus_server import encode_value, load_register_map
from coolctl.simulators.plant import RackPlant
from coolctl.simulators.scenario import (
    Limits,
    Scenario,
    ScenarioError,
    ScenarioPlayer,
    load_scenario,
    parse_scenario,
)
from coolctl.tools.kpi import EXTRA_KPI_KEYS, KPI_KEYS, TIMING_KEYS, Recorder
from coolctl.tools.scenario_runner import (
    ControlStack,
    modbus_quantiser,
    rack_config,
    run_scenario,
    validate_scenario,
)

SHIPPED = Path(__file__).resolve().parent.parent / "simulators" / "scenarios"


def scenario(text: str, tmp_path: Path | None = None, name: str = "s.toml") -> Scenario:
    path = (tmp_path / name) if tmp_path is not None else Path(name)
    if tmp_path is not None:
        path.write_text(text)
    return parse_scenario(text, path)


def problems(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, Path("s.toml"))
    return caught.value.problems


# ---- scenario files ----------------------------------------------------------------------


def test_every_shipped_scenario_parses_and_names_real_devices() -> None:
    paths = sorted(SHIPPED.glob("*.toml"))
    names = {path.stem for path in paths}
    assert {
        "steady-load",
        "load-step-up",
        "load-step-down",
        "diurnal-24h",
        "facility-water-swings",
        "budget-cut",
        "pump-failure",
        "sensor-stuck",
        "sensor-noise",
        "link-loss",
        "leak-detector-stuck",
        "pump-degraded",
        "hot-facility-water",
        "lagged-step",
        "cdu-link-stale",
    } <= names
    for path in paths:
        loaded = load_scenario(path)
        validate_scenario(loaded)  # rack, simulated devices, event devices and points
        assert loaded.description, path
        assert all(e.at_s >= loaded.warmup_s for e in loaded.events), path
    day = load_scenario(SHIPPED / "diurnal-24h.toml")
    assert day.duration_s - day.warmup_s == 24 * 3600


def test_a_scenario_tunes_a_loop_of_the_built_in_rack() -> None:
    """`[rack.loops.NAME]` replaces keys of that loop, as a site tunes its own; the rest of
    the loop and the other loops are the demo rack's."""
    demo = rack_config(scenario("duration_s = 60\n"), "pid")
    tuned = rack_config(
        scenario("duration_s = 60\n[rack.loops.supply]\nkp = 0.1\nfeedforward_lag_s = 5.0\n"),
        "pid",
    )
    supply, before = tuned.loops["supply"], demo.loops["supply"]
    assert (supply.kp, supply.feedforward_lag_s) == (0.1, 5.0)
    assert (before.kp, before.feedforward_lag_s) != (0.1, 5.0)
    assert (
        dataclasses.replace(supply, kp=before.kp, feedforward_lag_s=before.feedforward_lag_s)
        == before
    )
    assert tuned.loops["pump"] == demo.loops["pump"]


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ("[rack.loops.chiller]\nkp = 1.0\n", "no such loop (pump, supply)"),
        ("[rack.loops.supply]\nkp = -1.0\n", "kp"),
        ("[rack.loops.supply]\nkq = 1.0\n", "kq"),
    ],
)
def test_a_loop_key_the_rack_refuses_is_a_scenario_error(table: str, words: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        rack_config(scenario("duration_s = 60\n" + table), "pid")
    assert words in str(caught.value)


def test_a_loop_key_the_rack_refuses_is_named_at_its_line() -> None:
    text = "duration_s = 60\n\n[rack.loops.supply]\nkp = 0.1\nki = -1.0\n\n[rack.loops.chiller]\n"
    with pytest.raises(ScenarioError) as caught:
        rack_config(scenario(text.replace("[rack.loops.chiller]\n", "")), "pid")
    assert caught.value.problems == [
        "s.toml:5: [rack.loops.supply] ki: must be at least 0.0, not -1.0"
    ]
    with pytest.raises(ScenarioError) as caught:
        rack_config(scenario(text.replace("ki = -1.0", "ki = 0.001") + "kp = 1.0\n"), "pid")
    assert str(caught.value).startswith("s.toml:7: [rack.loops.chiller]: the rack has no such")


def test_loops_are_for_the_built_in_rack() -> None:
    text = 'duration_s = 60\n[rack]\nconfig = "site.toml"\n[rack.loops.supply]\nkp = 0.1\n'
    assert any("loops is for the built-in rack" in p for p in problems(text))
    assert any("[rack.loops.NAME]" in p for p in problems("duration_s = 60\n[rack]\nloops = 1\n"))


BASE = "duration_s = 60\nseed = 1\n\n[plant]\ninitial_load = 0.5\n"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (BASE + '\n[[event]]\nat_s = 5\nkind = "melt"\n', 9, "unknown kind 'melt'"),
        (BASE + '\n[[event]]\nat_s = 5\nkind = "load"\nvalue = 1.5\n', 10, "within 0..1"),
        (BASE + '\n[[event]]\nkind = "load"\nvalue = 0.5\n', 7, "at_s is missing"),
        (BASE + '\n[[event]]\nat_s = 5\nkind = "load"\n', 7, "value is missing"),
        (BASE + '\n[[event]]\nat_s = 99\nkind = "pump_fail"\n', 8, "after the end"),
        (BASE + '\n[[event]]\nat_s = 5\nkind = "pump_fail"\nvalue = 1\n', 10, "takes no value"),
        (BASE + '\n[[event]]\nat_s = 5\nkind = "budget"\nvalue = -1\n', 10, "> 0"),
        (BASE + '\n[[event]]\nat_s = 5\nkind = "sensor_stuck"\ndevice = "cdu1"\n', 7, "point"),
        (BASE + '\n[[event]]\nat_s = 5\nkind = "link_loss"\n', 7, "needs a device"),
        (
            BASE + '\n[[event]]\nat_s = 5\nkind = "load"\nvalue = 1\nservers = [0, 18]\n',
            11,
            "0..17",
        ),
        (BASE + '\n[[event]]\nat_s = 5\nkind = "leak"\ncolour = "red"\n', 10, "unknown key"),
        (BASE + '\n[[event]]\nat_s = 5\nkind = "leak"\nramp_s = 3\n', 10, "no ramp_s"),
        ('duration_s = "long"\n', 1, "must be a number"),
        ("duration_s = 60\nperiod = 1\n", 2, "unknown key 'period'"),
        ("duration_s = 60\n\n[plant]\nn_servers = 0\nloop_volume_l = 60\n", 4, "n_servers"),
        ("duration_s = 60\n\n[plant]\ninitial_lode = 0.5\n", 4, "initial_lode"),
        ("duration_s = 60\n\n[limits]\nmax_supply_c = 450\n", 4, "within 0..100"),
        ("duration_s = 60\nwarmup_s = 60\n", 2, "shorter than duration_s"),
        ('duration_s = 60\n\n[rack]\nbmcs = "yes"\n', 4, "true or false"),
        ('duration_s = 60\n\n[rack]\nconfig = "a.toml"\nbmcs = true\n', 5, "built-in rack"),
    ],
)
def test_a_bad_scenario_names_the_line(text: str, line: int, words: str) -> None:
    found = problems(text)
    assert any(p.startswith(f"s.toml:{line}: ") and words in p for p in found), found


def test_line_numbers_follow_each_event_table_and_skip_multiline_strings() -> None:
    text = (
        'description = """\n[[event]]\nnot a table\n"""\nduration_s = 100\n'  # lines 1-5
        '\n[[event]]\nat_s = 1\nkind = "load"\nvalue = 0.5\n'  # 7-10
        '\n[[event]]  # second\nat_s = 2\nkind = "facility_water"\nvalue = 90\n'  # 12-15
    )
    assert problems(text) == ["s.toml:15: event: value must be within 0..60 °C, not 90"]


def test_every_problem_is_reported_at_once() -> None:
    text = BASE + '\n[[event]]\nat_s = 5\nkind = "melt"\n\n[[event]]\nat_s = 6\nkind = "load"\n'
    assert len(problems(text)) == 2


def test_events_must_be_tables_and_toml_errors_say_where() -> None:
    assert "[[event]]" in problems('duration_s = 9\nevent = [{at_s = 1, kind = "leak"}]\n')[0]
    assert "line 2" in problems("duration_s = 9\nseed = = 1\n")[0]


def test_device_names_are_checked_against_the_rack(tmp_path: Path) -> None:
    bad = scenario(
        BASE
        + '\n[[event]]\nat_s = 5\nkind = "link_loss"\ndevice = "cdu9"\n'
        + '\n[[event]]\nat_s = 6\nkind = "sensor_noise"\ndevice = "cdu1"\npoint = "colour"\n'
        + "value = 1\n",
        tmp_path,
    )
    with pytest.raises(ScenarioError) as caught:
        run_scenario(bad, "pid")
    found = caught.value.problems
    lost = ":7: link_loss: no device 'cdu9' in the rack (it has: cdu1, pdu1)"
    assert any(p.endswith(lost) for p in found), found
    assert any(":12: sensor_noise: cdu1 has no point 'colour'" in p for p in found), found


def test_the_player_applies_ramps_bursts_and_undo_on_time() -> None:
    s = scenario(
        "duration_s = 600\n[plant]\ninitial_load = 0.0\nfacility_water_temperature_c = 30\n"
        '[[event]]\nat_s = 100\nkind = "load"\nvalue = 1.0\nramp_s = 100\n'
        '[[event]]\nat_s = 150\nkind = "load"\nvalue = 0.0\nservers = [0]\nduration_s = 100\n'
        '[[event]]\nat_s = 10\nkind = "facility_water"\nvalue = 20\nramp_s = 10\n'
        '[[event]]\nat_s = 30\nkind = "budget"\nvalue = 5000\nduration_s = 10\n'
        '[[event]]\nat_s = 40\nkind = "link_loss"\ndevice = "pdu1"\nduration_s = 5\n'
    )
    plant = RackPlant(s.plant)
    player = ScenarioPlayer(s, plant)

    def loads() -> list[float]:
        return [(d - 1500.0) / 5500.0 for d in plant.truth().server_demand_w]

    player.apply(15.0)
    assert plant.truth().facility_supply_temperature_c == pytest.approx(25.0)
    player.apply(30.0)
    assert player.budget_w == 5000.0 and plant.truth().facility_supply_temperature_c == 20.0
    player.apply(42.0)
    assert player.budget_w is None and player.links_down == {"pdu1"}
    assert player.next_time() == pytest.approx(45.0)
    player.apply(45.0)
    assert player.links_down == frozenset()
    player.apply(150.0)  # half-way up the ramp: server 0 drops out of it, the rest go on
    assert loads()[0] == 0.0 and loads()[1] == pytest.approx(0.5)
    player.apply(200.0)
    assert loads()[0] == 0.0 and loads()[1:] == pytest.approx([1.0] * 17)
    player.apply(250.0)  # the burst ends: server 0 goes back to where it was
    assert loads()[0] == pytest.approx(0.5)


# ---- the wire -------------------------------------------------------------------------


def test_modbus_quantisation_is_what_the_register_map_carries() -> None:
    for name in ("sim-cdu", "sim-pdu"):
        profile = load_profile(name)
        _, mapped = load_register_map(name)
        by_name = {point.name: point for point in mapped}
        for point in profile.points:
            quantise = modbus_quantiser(point)
            values = (0.0, 0.04, 0.05, 1.0, 34.96, 35.05, 159.87, 7.3e4, 1e6)
            if point.is_state:  # an enumerated point carries its codes, nothing between
                values = (0.0, 1.0, 2.0, 5.0)
            for value in values:
                words = encode_value(by_name[point.name], value)
                assert words is not None
                assert quantise(value) == decode(point, words), (name, point.name, value)


# ---- the runner is the daemon -----------------------------------------------------------


class _FakeClient:
    """A device client for RackRuntime that writes nowhere: the test compares decisions."""

    stats: Any = None

    async def poll(self) -> list[Reading]:
        return []

    async def write(self, point: str, value: float) -> float:
        return value

    async def close(self) -> None:
        return None


def _daemon_runtime(rack: RackConfig) -> tuple[RackRuntime, TelemetryStore]:
    store = TelemetryStore()
    handles = {}
    for device in rack.devices.values():
        facts = device_facts(device)
        handles[device.id] = DeviceHandle(
            rack.id, device, _FakeClient(), facts.writable, facts.point_names, facts.kind
        )
    return RackRuntime(rack, store, handles), store


def _shape(commands: tuple[Command, ...]) -> list[tuple[str, float, str, str]]:
    return [(str(c.point), c.value, c.source.value, c.reason) for c in commands]


def test_each_tick_decides_what_the_daemon_decides(tmp_path: Path) -> None:
    """The daemon's RackRuntime.tick, fed the runner's snapshots, decides the same commands."""
    s = scenario(
        "duration_s = 420\nseed = 3\n[plant]\ninitial_load = 0.8\n[budget]\nwatts = 120000\n"
        '[[event]]\nat_s = 60\nkind = "budget"\nvalue = 90000\n'
        '[[event]]\nat_s = 100\nkind = "link_loss"\ndevice = "cdu1"\nduration_s = 20\n'
        '[[event]]\nat_s = 200\nkind = "pump_fail"\nduration_s = 30\n'
        '[[event]]\nat_s = 330\nkind = "load"\nvalue = 0.3\n'
        '[[event]]\nat_s = 360\nkind = "leak"\nduration_s = 20\n',
        tmp_path,
    )
    runtime, store = _daemon_runtime(rack_config(s, "pid"))
    loop = asyncio.new_event_loop()
    compared = []

    def same_as_daemon(
        snapshot: Snapshot, now: float, budget: float | None, ours: Decision
    ) -> None:
        store.update(snapshot.values())
        runtime.clock = lambda: now
        runtime.power_budget_w = budget
        loop.run_until_complete(runtime.tick())
        assert runtime.decision is not None
        assert _shape(runtime.decision.commands) == _shape(ours.commands), now
        assert runtime.decision.failsafe == ours.failsafe
        assert runtime.decision.interlocks == ours.interlocks
        compared.append(now)

    try:
        result = run_scenario(s, "pid", on_tick=same_as_daemon)
    finally:
        loop.close()
    assert len(compared) == 420
    kinds = {event.kind for event in result.rack_events}
    assert {"failsafe", "interlock_pump_failure", "pump_failure_caps", "interlock_leak"} <= kinds


def test_the_controllers_are_built_by_the_daemons_own_constructor(tmp_path: Path) -> None:
    s = scenario(BASE + "[budget]\nwatts = 110000\n", tmp_path)
    built: list[str] = []

    def spy(
        rack: RackConfig, devices: Mapping[str, DeviceFacts], model: Path | None
    ) -> ControlStack:
        built.append(rack.id)
        return build_rack_control(rack, devices)

    run_scenario(s, "pid", factory=spy)
    assert built == ["r01"]


def test_fixed_is_a_pinned_pump_with_the_valve_loop_and_no_caps(tmp_path: Path) -> None:
    s = scenario(BASE + "[budget]\nwatts = 110000\n", tmp_path)
    fixed, pid = rack_config(s, "fixed", 0.9), rack_config(s, "pid")
    pump = fixed.loops["pump"]
    assert (pump.output_min, pump.output_max) == (0.9, 0.9)
    assert fixed.loops["supply"] == pid.loops["supply"]
    assert not any(isinstance(d, RedfishDeviceConfig) for d in fixed.devices.values())
    assert sum(1 for d in pid.devices.values() if isinstance(d, RedfishDeviceConfig)) == 18
    result = run_scenario(s, "fixed", fixed_pump_speed=0.9)
    assert result.trace["pump_command"][10:].tolist() == [0.9] * 50  # after a slew from 1.0


def test_bmcs_without_a_budget_leave_every_cap_at_its_maximum(tmp_path: Path) -> None:
    s = scenario(BASE + "[rack]\nbmcs = true\n", tmp_path)
    assert (
        sum(1 for d in rack_config(s, "pid").devices.values() if isinstance(d, RedfishDeviceConfig))
        == 18
    )
    result = run_scenario(s, "pid")
    assert result.trace.caps and result.trace["caps_w"][-1] == 18 * 7000.0
    assert result.kpis["throttled_energy_kwh"] == 0.0


def test_a_rack_config_file_can_be_run_mqtt_sensors_and_all(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "deploy" / "config" / "example.toml"
    s = scenario(
        f'duration_s = 120\n[rack]\nconfig = "{example}"\n[plant]\ninitial_load = 0.5\n'
        '[[event]]\nat_s = 30\nkind = "link_loss"\ndevice = "sensors1"\nduration_s = 20\n',
        tmp_path,
    )
    rack = rack_config(s, "pid")
    assert {d.driver for d in rack.devices.values()} >= {"modbus", "mqtt"}
    result = run_scenario(s, "pid")
    assert result.kpis["failsafe_s"] == 0.0
    assert abs(result.trace["supply_c"][-1] - 35.0) < 0.5
    assert s.rack.config == example


def test_every_controller_sees_the_same_noise(tmp_path: Path) -> None:
    """The fixed baseline has no BMCs and links come and go, yet the CDU's noise is the same."""
    s = scenario(
        "duration_s = 120\nseed = 9\n[plant]\ninitial_load = 0.5\n[budget]\nwatts = 1e5\n"
        '[[event]]\nat_s = 20\nkind = "link_loss"\ndevice = "bmc03"\nduration_s = 30\n',
        tmp_path,
    )
    facility = PointId("r01", "cdu1", "facility_supply_temperature")  # the same truth for both
    seen: dict[str, list[float | None]] = {"fixed": [], "pid": []}
    for name, values in seen.items():

        def record(snapshot: Snapshot, *_: object, into: list[float | None] = values) -> None:
            into.append(snapshot.value(facility))

        run_scenario(s, name, on_tick=record)
    assert seen["fixed"] == seen["pid"] and len(set(seen["pid"])) > 10


# ---- KPIs --------------------------------------------------------------------------------


STEADY = (
    "duration_s = 3900\nperiod_s = 1.0\nseed = 5\nwarmup_s = 300\n[plant]\ninitial_load = 0.6\n"
)


@pytest.fixture(scope="module")
def steady_runs() -> dict[str, dict[str, float]]:
    s = parse_scenario(STEADY, Path("steady.toml"))
    return {name: run_scenario(s, name).kpis for name in ("fixed", "pid")}


def test_a_steady_hour_is_sane(steady_runs: dict[str, dict[str, float]]) -> None:
    pid, fixed = steady_runs["pid"], steady_runs["fixed"]
    assert pid["supply_temp_max_dev_k"] < 0.5
    assert pid["supply_temp_iae_ks"] < 0.5  # under 0.14 K on average over the hour
    for kpis in (pid, fixed):
        assert kpis["temp_limit_violation_ks"] == 0.0
        assert kpis["throttled_energy_kwh"] == 0.0
        assert kpis["budget_violation_ws"] == 0.0
        assert kpis["failsafe_s"] == 0.0 and kpis["controller_errors"] == 0.0
        assert kpis["scored_s"] == 3600.0
        # 18 servers at 1.5 + 0.6 x 5.5 kW for an hour
        assert kpis["it_energy_kwh"] == pytest.approx(18 * 4.8, rel=1e-6)
        assert kpis["controller_step_p99_ms"] < 100.0
        assert kpis["sim_speedup"] > 100.0
    # the flow loop holds 160 L/min (speed 0.8): (0.8)^3 of the full-speed pump power
    assert pid["pump_energy_kwh"] / fixed["pump_energy_kwh"] == pytest.approx(0.512, rel=0.03)
    assert 30.0 < pid["max_outlet_temp_c"] < 60.0


def test_energy_balances_over_a_run_with_events(tmp_path: Path) -> None:
    s = scenario(
        BASE.replace("60", "900")
        + '[[event]]\nat_s = 100\nkind = "load"\nvalue = 1.0\n'
        + '[[event]]\nat_s = 300\nkind = "facility_water"\nvalue = 36\nramp_s = 200\n'
        + '[[event]]\nat_s = 600\nkind = "pump_fail"\nduration_s = 30\n',
        tmp_path,
    )
    result = run_scenario(s, "pid")
    assert abs(result.kpis["energy_balance_error_pct"]) < 1e-6
    assert (
        result.kpis["pdu_energy_kwh"]
        > result.kpis["it_energy_kwh"] + result.kpis["pump_energy_kwh"]
    )


def test_same_seed_same_kpis_other_seed_other_noise() -> None:
    text = (
        "duration_s = 600\nseed = 7\n[plant]\ninitial_load = 0.5\n[budget]\nwatts = 100000\n"
        '[[event]]\nat_s = 200\nkind = "load"\nvalue = 0.9\n'
        '[[event]]\nat_s = 300\nkind = "sensor_noise"\ndevice = "cdu1"\npoint = "flow"\nvalue = 5\n'
    )
    first = run_scenario(parse_scenario(text, Path("a.toml")), "pid").kpis
    again = run_scenario(parse_scenario(text, Path("a.toml")), "pid").kpis
    other = run_scenario(parse_scenario(text.replace("seed = 7", "seed = 8"), None), "pid").kpis

    def control(kpis: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in kpis.items() if k not in TIMING_KEYS}

    assert control(first) == control(again)
    assert control(first) != control(other)


def test_a_budget_cut_is_held_with_caps_and_overrun_without(tmp_path: Path) -> None:
    s = scenario(
        "duration_s = 600\nseed = 2\nwarmup_s = 60\n[plant]\ninitial_load = 0.9\n"
        "[budget]\nwatts = 130000\n"
        '[[event]]\nat_s = 120\nkind = "budget"\nvalue = 90000\n',
        tmp_path,
    )
    pid, fixed = run_scenario(s, "pid").kpis, run_scenario(s, "fixed").kpis
    # caps are sent at once and land after each BMC's latency (0.5..2 s); the servers follow
    # within their cap lag (tau 1 s): ~30 kW x ~1-3 s
    assert pid["budget_violation_ws"] < 120_000.0
    # uncapped, the rack runs ~28 kW over for 480 s
    assert fixed["budget_violation_ws"] > 1e7
    assert pid["throttled_energy_kwh"] > 1.0 and fixed["throttled_energy_kwh"] == 0.0


def test_a_lost_cdu_link_sends_the_rack_to_failsafe_and_back(tmp_path: Path) -> None:
    s = scenario(
        "duration_s = 300\nseed = 4\n[plant]\ninitial_load = 0.6\n"
        '[[event]]\nat_s = 100\nkind = "link_loss"\ndevice = "cdu1"\nduration_s = 30\n',
        tmp_path,
    )
    result = run_scenario(s, "pid")
    trace = result.trace
    failsafe = trace["failsafe"] > 0.5
    t = trace["t_s"]
    # blind after failsafe_after_s (3 s) of stale readings; clear after hold_s (10 s) of good
    assert t[failsafe].min() == pytest.approx(104.0, abs=1.0)
    assert t[failsafe].max() == pytest.approx(140.0, abs=1.5)
    assert trace["pump_command"][(t > 106) & (t < 130)].min() == 1.0  # failsafe: full cooling
    kinds = [e.kind for e in result.rack_events]
    assert "failsafe" in kinds and "failsafe_cleared" in kinds
    assert result.kpis["failsafe_s"] == pytest.approx(37.0, abs=2.0)


# ---- the commands ---------------------------------------------------------------------------


def test_wear_and_dry_running_kpis_count_what_the_plant_did() -> None:
    plant = RackPlant()
    base = plant.truth()
    recorder = Recorder(12, 1.0, 2.0, 35.0, Limits(), rated_flow_lpm=200.0)
    valve = [0.5, 0.5, 0.6, 0.7, 0.698, 0.6, 0.6, 0.65, 0.65, 0.65, 0.65, 0.65]
    flow = [200.0] * 8 + [10.0, 10.0, 30.0, 10.0]
    command = [1.0] * 11 + [0.1]
    interlocked = [True, False, True, True, False, False, True, False, False, False, False, False]
    for k in range(12):
        truth = dataclasses.replace(
            base,
            valve_position=valve[k],
            flow_lpm=flow[k],
            pump_speed_command=command[k],
            hardware_throttle_s=float(k >= 5),
        )
        recorder.sample(k, float(k), truth, None, False, interlocked[k])
    kpis = recorder.kpis(truth, [], 1.0, 12.0, 0)
    assert kpis["interlock_trips"] == 2.0  # at 2 and 6 s (0 s was in the warm-up)
    assert kpis["pump_dry_run_s"] == 2.0  # 8 and 9 s: 11 s is not commanded to run
    scored_h = 10 / 3600  # from 2 s on
    assert kpis["valve_strokes_per_h"] == pytest.approx((0.1 + 0.002 + 0.098 + 0.05) / scored_h)
    assert kpis["valve_reversals_per_h"] == pytest.approx(2 / scored_h)  # the 0.002 back: no
    assert kpis["hardware_throttle_s"] == 1.0


def chip_kpis(chips: list[float]) -> dict[str, float]:
    """The KPIs of a run whose hottest chip follows `chips`, one sample a second (none warm-up)."""
    base = RackPlant().truth()
    recorder = Recorder(len(chips), 1.0, 0.0, 35.0, Limits(), rated_flow_lpm=200.0)
    for k, chip in enumerate(chips):
        truth = dataclasses.replace(base, chip_temperature_c=(chip, chip - 3.0))
        recorder.sample(k, float(k), truth, None, False, False)
    return recorder.kpis(truth, [], 1.0, float(len(chips)), 0)


def test_chip_cycle_counts_swings_that_come_back_and_not_a_drift() -> None:
    # an on/off limiter: 55 <-> 87 with a wiggle at the top; its range is its cycle
    cycling = chip_kpis([55.0, 70.0, 87.0, 86.7, 86.9, 70.0, 55.0, 70.0, 87.0, 60.0])
    assert cycling["chip_cycle_k"] == pytest.approx(32.0)
    # chips that rise 2 K, then cool 26 K as the caps follow warming water: a drift
    drift = chip_kpis([80.0, 81.0, 82.0, 81.8, 81.9, 75.0, 65.0, 56.0, 56.0])
    assert drift["chip_swing_k"] == pytest.approx(26.0)
    assert drift["chip_cycle_k"] == pytest.approx(2.0)
    # one excursion and back: a trough between two highs
    dip = chip_kpis([80.0, 70.0, 60.0, 79.0, 80.0])
    assert dip["chip_cycle_k"] == pytest.approx(20.0)
    assert chip_kpis([70.0, 71.0, 72.0])["chip_cycle_k"] == 0.0


def step_kpis(supply: list[float]) -> dict[str, float]:
    """The KPIs of a run whose supply follows `supply` (setpoint 35 °C), a load step at 0."""
    base = RackPlant().truth()
    recorder = Recorder(len(supply), 1.0, 0.0, 35.0, Limits(), load_steps_s=(0.0,))
    for k, value in enumerate(supply):
        truth = dataclasses.replace(base, supply_temperature_c=value)
        recorder.sample(k, float(k), truth, None, False, False)
    return recorder.kpis(truth, [], 1.0, float(len(supply)), 0)


def test_overshoot_is_the_swing_back_after_the_first_excursion() -> None:
    # the step warms the supply 0.4 K; the loop then pulls it 0.6 K under: 150 %, not 0
    # (the largest deviation is the loop's own swing back)
    swung = step_kpis([35.0, 35.1, 35.4, 35.2, 35.0, 34.7, 34.4, 34.6, 34.9, 35.0, 35.0])
    assert swung["load_step_overshoot_pct"] == pytest.approx(150.0)
    assert swung["load_step_settling_s"] == pytest.approx(8.0)
    # a dip inside the band before the excursion is not the excursion
    damped = step_kpis([35.0, 34.85, 35.5, 35.3, 34.95, 35.0, 35.0])
    assert damped["load_step_overshoot_pct"] == pytest.approx(10.0)
    # never out of the band: no overshoot; out and back without crossing: none either
    assert step_kpis([35.0, 35.1, 34.9, 35.0])["load_step_overshoot_pct"] == 0.0
    assert step_kpis([35.0, 35.5, 35.3, 35.1, 35.05])["load_step_overshoot_pct"] == 0.0


SHORT = "duration_s = 240\nseed = 1\n[plant]\ninitial_load = 0.5\n"


def test_sim_run_json_has_exactly_the_kpis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "short.toml"
    path.write_text(SHORT + '[[event]]\nat_s = 60\nkind = "load"\nvalue = 0.9\n')
    assert sim_main(["run", str(path), "--controller", "pid", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"scenario", "controller", *KPI_KEYS, *EXTRA_KPI_KEYS}
    assert out["controller"] == "pid" and out["scenario"] == "short"
    assert all(isinstance(out[k], float) and math.isfinite(out[k]) for k in KPI_KEYS)


def test_sim_run_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "short.toml"
    path.write_text(SHORT + '[budget]\nwatts = 90000\n[[event]]\nat_s = 60\nkind = "pump_fail"\n')
    png = tmp_path / "run.png"
    assert sim_main(["run", str(path), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000
    assert "supply_temp_iae_ks" in capsys.readouterr().out


def test_sim_compare_prints_side_by_side_and_plots_each_scenario(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("one", "two"):
        (tmp_path / f"{name}.toml").write_text(f'name = "{name}"\n' + SHORT)
    png = tmp_path / "cmp.png"
    args = ["compare", str(tmp_path / "one.toml"), str(tmp_path / "two.toml")]
    assert sim_main([*args, "--controllers", "fixed,pid", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "pid/fixed" in out and out.count("pump_energy_kwh") == 2
    assert (tmp_path / "cmp-one.png").exists() and (tmp_path / "cmp-two.png").exists()
    assert sim_main([*args, "--controllers", "fixed,pid", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    first = report["scenarios"][0]
    assert set(first["kpis"]) == {"fixed", "pid"}
    ratio = first["ratios"]["pid/fixed"]["pump_energy_kwh"]
    assert ratio == pytest.approx(0.512, rel=0.05)


def test_bad_scenarios_exit_1_with_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(SHORT + '\n[[event]]\nat_s = 1\nkind = "flood"\n')
    assert sim_main(["run", str(path)]) == 1
    assert f"{path}:8: event: unknown kind 'flood'" in capsys.readouterr().err


def test_sim_run_plot_without_matplotlib_says_how_to_get_it_before_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import coolctl.cli.sim

    monkeypatch.setattr(coolctl.cli.sim, "_matplotlib_available", lambda: False)
    scenario = tmp_path / "s.toml"
    scenario.write_text(SHORT)
    assert sim_main(["run", str(scenario), "--plot", str(tmp_path / "x.png")]) == 2
    assert "coolctl[plot]" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_caps_come_back_after_a_blind_rack_held_them() -> None:
    """A CDU link lost long enough for failsafe: once the readings are back, the allocator
    raises the caps again (it must learn what the supervisor held, not what it asked)."""
    scenario = load_scenario(SHIPPED / "cdu-link-stale.toml")
    result = run_scenario(scenario, "pid")
    assert result.kpis["failsafe_s"] > 0
    assert result.trace["caps_w"][-1] > 100_000.0
    assert result.kpis["throttled_energy_kwh"] < 2.0
    silent = [e for e in result.rack_events if e.kind == "safety_sensor_silent"]
    assert all("cdu1" in e.message for e in silent)  # BMCs without leak detectors are not silent


def test_cap_write_latency_is_parsed_and_checked() -> None:
    base = "duration_s = 60\n[rack]\n"
    assert scenario(base + "bmcs = true\n").rack.cap_write_latency_s == (0.5, 2.0)
    assert scenario(base + "cap_write_latency_s = 1.5\n").rack.cap_write_latency_s == (1.5, 1.5)
    assert scenario(base + "cap_write_latency_s = [0, 3]\n").rack.cap_write_latency_s == (0.0, 3.0)
    assert any("low <= high" in p for p in problems(base + "cap_write_latency_s = [2, 1]\n"))
    assert any(">= 0" in p or "within" in p for p in problems(base + "cap_write_latency_s = -1\n"))
    assert any("room_sensor" in p for p in problems(base + 'room_sensor = "yes"\n'))


def test_slow_bmcs_let_a_budget_cut_overrun_longer(tmp_path: Path) -> None:
    text = (
        "duration_s = 300\nseed = 2\nwarmup_s = 60\n[plant]\ninitial_load = 0.9\n"
        "[budget]\nwatts = 130000\n[rack]\ncap_write_latency_s = LATENCY\n"
        '[[event]]\nat_s = 120\nkind = "budget"\nvalue = 90000\n'
    )
    at_once = run_scenario(scenario(text.replace("LATENCY", "0"), tmp_path), "pid").kpis
    slow = run_scenario(scenario(text.replace("LATENCY", "3"), tmp_path), "pid").kpis
    assert slow["budget_violation_ws"] > at_once["budget_violation_ws"] + 30_000.0 * 2.0


def test_a_pump_trip_is_scored_from_plant_truth(tmp_path: Path) -> None:
    s = scenario(
        "duration_s = 300\nseed = 3\nwarmup_s = 60\n[plant]\ninitial_load = 0.9\n"
        '[budget]\nwatts = 130000\n[[event]]\nat_s = 120\nkind = "pump_fail"\n'
        "duration_s = 60\n",
        tmp_path,
    )
    kpis = run_scenario(s, "pid").kpis
    assert kpis["pump_trip_detection_s"] <= 5.0
    assert kpis["no_flow_detection_s"] <= 5.0
    assert 0.0 <= kpis["min_caps_confirmed_s"] <= 10.0
    assert math.isnan(kpis["leak_detection_s"])  # no leak in this run
    assert math.isnan(kpis["load_step_settling_s"])
    assert kpis["pump_dry_run_max_s"] <= kpis["pump_dry_run_s"] <= 5.0  # stopped, not dry
    assert kpis["chip_swing_k"] > 5.0  # the chips heat while the pump is down


def test_a_humid_room_is_read_by_the_room_sensor_and_the_supply_floor_acts(
    tmp_path: Path,
) -> None:
    # room air at 40 °C, 80 %: a dew point of 36 °C, over the supply loop's 35 °C setpoint
    s = scenario(
        "duration_s = 600\nseed = 3\n[rack]\nroom_sensor = true\n[plant]\ninitial_load = 0.3\n"
        "room_temperature_c = 40.0\nroom_humidity = 0.8\n",
        tmp_path,
    )
    seen: list[float | None] = []

    def record(snapshot: Snapshot, now: float, budget: float | None, decision: Decision) -> None:
        seen.append(snapshot.value(PointId("r01", "room1", "dew_point")))

    result = run_scenario(s, "pid", on_tick=record)
    kpis = result.kpis
    assert seen[-1] == pytest.approx(36.0, abs=0.2)  # Magnus at 40 °C, 80 %
    assert "supply_under_floor" in {e.kind for e in result.rack_events}
    # the valve closes: the supply rises over the dew point instead of sitting at 35 °C
    assert 0.0 < kpis["below_dew_point_s"] < kpis["scored_s"] / 2


def test_the_demo_rack_caps_on_its_chips_without_an_interlock_at_them() -> None:
    rack = rack_config(scenario("duration_s = 60\n[rack]\nbmcs = true\n"), "pid")
    stack = build_pid_control(rack, {d.id: device_facts(d) for d in rack.devices.values()})
    assert isinstance(stack.allocator, ThermalCappedAllocator)
    margins = stack.allocator.thermal.config.margins
    chips = [m for m in margins if m.point.name == "chip_temperature"]
    assert len(chips) == 18 and all(m.flow_bound and m.limit_c == 83.5 for m in chips)
    limits = stack.supervisor.config.temperature_limits
    assert not any(t.point.name == "chip_temperature" for t in limits)
    pump = stack.controller.loops["pump"].spec.boost
    assert pump is not None and pump.boosted == 200.0 and len(pump.points) == 18
