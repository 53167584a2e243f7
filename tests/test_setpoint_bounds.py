"""Safe setpoint bounds (coolctl.rack.bounds): what they are, and that no setpoint an operator
can reach drives the simulated rack into throttling at full load (hypothesis, offline plant)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from coolctl.config import RackConfig, load_config
from coolctl.model import PointId, Quality, Reading
from coolctl.rack.bounds import (
    hold_inside,
    live_bounds,
    loop_bounds,
    static_bounds,
)
from coolctl.rack.check import check_profiles
from coolctl.rack.facts import device_facts, setpoint_bounds
from coolctl.rack.safety import DeviceFacts
from coolctl.rack.stack import ControlStack
from coolctl.simulators.scenario import parse_scenario
from coolctl.tools.demo import builtin_config_path
from coolctl.tools.scenario_runner import build_pid_control, run_scenario

DEMO = load_config(builtin_config_path())
RACK = DEMO.racks["r01"]


def reading(device: str, point: str, value: float) -> Reading:
    return Reading(PointId("r01", device, point), value, 0.0, Quality.GOOD)


def test_supply_setpoint_stays_under_its_limit_and_over_the_facility_water() -> None:
    loop = RACK.loops["supply"]
    facts = {d.id: device_facts(d) for d in RACK.devices.values()}
    static = loop_bounds(RACK, loop, setpoint_bounds(loop, facts))
    assert static is not None
    assert static.high == 38.0  # the 45 °C supply limit less the 7 K margin
    assert "7 K under the supply over-temperature limit 45 °C" in static.why_high
    live = loop_bounds(
        RACK,
        loop,
        setpoint_bounds(loop, facts),
        [reading("cdu1", "facility_supply_temperature", 30.0), reading("env", "dew_point", 31.5)],
    )
    assert live is not None
    assert live.low == 33.5  # the dew point (the higher) plus 2 K
    assert "2 K over the dew point (31.5 °C)" in live.why_low
    assert not live.contains(80.0) and not live.contains(30.0) and live.contains(35.0)


def test_flow_setpoint_stays_within_the_pump_and_over_a_minimum_per_kw() -> None:
    loop = RACK.loops["pump"]
    facts = {d.id: device_facts(d) for d in RACK.devices.values()}
    power = Reading(PointId("r01", "pdu1", "power"), 116_000.0, 0.0, Quality.GOOD)
    bounds = loop_bounds(RACK, loop, setpoint_bounds(loop, facts), [power])
    assert bounds is not None
    assert bounds.high == 200.0  # rated_flow_lpm
    assert bounds.low == pytest.approx(174.0)  # 1.5 L/min per kW of 116 kW
    assert "1.5 L/min per kW of the rack's 116.0 kW" in bounds.why_low
    for value in (0.0, 500.0, 5000.0):
        assert not bounds.contains(value)
    assert "L/min (low: " in bounds.text()


def test_pressure_setpoint_stays_on_the_loops_curve_between_the_minimum_flow_and_rated() -> None:
    """With the loop's ΔP at rated flow, a ΔP setpoint stays under it and over the ΔP that
    gives the minimum flow per kW (ΔP ∝ flow²); without it, the sensor's range only."""
    unrated = static_bounds(RACK, "pressure", (0.0, 655_350.0))
    assert (unrated.low, unrated.high) == (0.0, 655_350.0)
    assert live_bounds(RACK, unrated, "pressure", {}, 116_000.0) == unrated
    safety = dataclasses.replace(RACK.safety, rated_differential_pressure_pa=150_000.0)
    rack = dataclasses.replace(RACK, safety=safety)
    static = static_bounds(rack, "pressure", (0.0, 655_350.0))
    assert static.high == 150_000.0 and "rated_differential_pressure_pa" in static.why_high
    live = live_bounds(rack, static, "pressure", {}, 116_000.0)
    # 174 L/min needed of the pump's 200 at 150 kPa: (174 / 200)² × 150 kPa
    assert live.low == pytest.approx(150_000.0 * (174.0 / 200.0) ** 2)
    assert "174 L/min" in live.why_low
    assert not live.contains(0.0) and not live.contains(200_000.0) and live.contains(140_000.0)


def test_bounds_without_readings_and_the_hold() -> None:
    static = static_bounds(RACK, "flow", (0.0, 6553.5))
    assert (static.low, static.high) == (0.0, 200.0)
    live = live_bounds(RACK, static, "flow", {}, None)
    assert live == static
    loop = RACK.loops["pump"]
    power = Reading(PointId("r01", "pdu1", "power"), 100_000.0, 0.0, Quality.GOOD)
    held, bounds = hold_inside(RACK, loop, (0.0, 6553.5), [power], 40.0)
    assert held == 150.0 and bounds is not None


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rack.toml"
    path.write_text(text, "utf-8")
    return path


def problems_for(tmp_path: Path, old: str, new: str) -> list[str]:
    text = builtin_config_path().read_text("utf-8")
    assert old in text
    return check_profiles(load_config(write(tmp_path, text.replace(old, new))))


def test_check_config_refuses_implausible_limits_and_unsafe_explicit_bounds(
    tmp_path: Path,
) -> None:
    limit = '"cdu1/supply_temperature" = 45.0'
    problems = problems_for(tmp_path, limit, '"cdu1/supply_temperature" = 145.0')
    assert any("145 °C is not a plausible limit for a coolant" in p for p in problems)
    problems = problems_for(tmp_path, "setpoint = 35.0", "setpoint = 35.0\nsetpoint_max = 60.0")
    assert any("loops.supply.setpoint_max: 60 °C is above the safe bound 38" in p for p in problems)
    problems = problems_for(tmp_path, "setpoint = 35.0", "setpoint = 43.0")
    assert any("loops.supply.setpoint: 43 °C is outside the safe bounds" in p for p in problems)
    problems = problems_for(tmp_path, "setpoint = 160.0", "setpoint = 160.0\nsetpoint_max = 400.0")
    assert any(
        "loops.pump.setpoint_max: 400 L/min is above the safe bound 200" in p for p in problems
    )
    assert check_profiles(DEMO) == []


# -- the property: no reachable setpoint throttles a chip at full load ------------------------


def _full_load(budget_w: float | None, facility_c: float) -> str:
    budget = f"[budget]\nwatts = {budget_w}\n" if budget_w is not None else ""
    return f"""
name = "full load under an operator's setpoints"
duration_s = 900.0
period_s = 1.0
seed = 3
warmup_s = 0.0
[rack]
bmcs = true
{budget}
[plant]
initial_load = 1.0
facility_water_temperature_c = {facility_c}
"""


def _held_by_bounds(asked: Mapping[str, float]):  # type: ignore[no-untyped-def]
    """A controller factory whose loops take the operator's setpoints, held inside the safe
    bounds every tick by `hold_inside`, as the daemon's rack runtime does."""

    def factory(
        rack: RackConfig, facts: Mapping[str, DeviceFacts], _model: Path | None
    ) -> ControlStack:
        stack = build_pid_control(rack, facts)
        controller = stack.controller
        inner = controller.step

        def step(snapshot, now):  # type: ignore[no-untyped-def]
            for loop_id, value in asked.items():
                loop = rack.loops[loop_id]
                held, _ = hold_inside(
                    rack, loop, setpoint_bounds(loop, facts), snapshot.values(), value
                )
                controller.loops[loop_id].setpoint_override = held
            return inner(snapshot, now)

        controller.step = step  # type: ignore[method-assign]
        return stack

    return factory


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# the corners: the least flow and the warmest supply the bounds leave, at full power and under
# the demo's budget, with cold and warm facility water
@example(flow=0.0, supply=100.0, budget_w=None, facility_c=25.0)
@example(flow=0.0, supply=100.0, budget_w=None, facility_c=32.0)
@example(flow=0.0, supply=100.0, budget_w=120_000.0, facility_c=30.0)
@given(
    flow=st.one_of(st.floats(0.0, 6553.5), st.sampled_from([0.0, 40.0, 120.0, 174.0, 5000.0])),
    supply=st.one_of(st.floats(0.0, 100.0), st.sampled_from([80.0, 40.0, 45.0, 20.0])),
    budget_w=st.sampled_from([120_000.0, None]),
    facility_c=st.floats(25.0, 32.0),
)
def test_no_reachable_setpoint_throttles_a_chip_at_full_load(
    flow: float, supply: float, budget_w: float | None, facility_c: float
) -> None:
    scenario = parse_scenario(_full_load(budget_w, facility_c))
    result = run_scenario(scenario, factory=_held_by_bounds({"pump": flow, "supply": supply}))
    kpis = result.kpis
    assert kpis["hardware_throttle_s"] == 0.0, (flow, supply, kpis["max_chip_temp_c"])
    assert kpis["max_chip_temp_c"] < scenario.plant.throttle_temperature_c
    assert math.isfinite(kpis["max_supply_temp_c"])


def test_the_unbounded_setpoints_of_the_report_do_throttle() -> None:
    """Without the bounds, and without the chip boost and thermal cap that would otherwise
    carry the rack, the flow an operator tried (0 L/min) throttles the chips at full load:
    what the property above rules out is real, and the bounds alone rule it out."""
    scenario = parse_scenario(_full_load(120_000.0, 30.0))

    def unbounded(
        rack: RackConfig, facts: Mapping[str, DeviceFacts], _m: Path | None
    ) -> ControlStack:
        unboosted = {
            name: dataclasses.replace(
                loop,
                boost_above_c=None,
                boost_from_kw=None,
                boost_setpoint=None,
                boost_full_kw=None,
            )
            for name, loop in rack.loops.items()
        }
        no_thermal_cap = dataclasses.replace(
            rack.safety, thermal_cap=False, thermal_cap_chip_c=None
        )
        rack = dataclasses.replace(rack, loops=unboosted, safety=no_thermal_cap)
        stack = build_pid_control(rack, facts)
        stack.controller.loops["pump"].setpoint_override = 0.0
        return stack

    kpis = run_scenario(scenario, factory=unbounded).kpis
    assert kpis["hardware_throttle_s"] > 0.0
