"""Setpoint mode without I/O: the simulated CDU controller, the translation of the
supervisor's decisions into setpoint commands, a CDU in local control, alarm events.

Hand-built snapshots go through the one rack step (`RackStep`) with the stack setpoint mode
builds from tests/configs/hil-setpoints-rack.toml; the simulated CDU controller runs against
the plant in simulated time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import pytest

from coolctl.config import RackConfig, load_config
from coolctl.control.supervisor import ActuatorRole
from coolctl.model import (
    CduControlMode,
    Command,
    PointId,
    Quality,
    Reading,
    Snapshot,
    Source,
)
from coolctl.rack.facts import device_facts
from coolctl.rack.safety import DeviceFacts
from coolctl.rack.setpoints import SetpointController, setpoint_supervisor_config
from coolctl.rack.step import RackStep
from coolctl.simulators.cdu_controller import (
    ALARMS,
    CduController,
    CduControllerParams,
    dew_point_c,
)
from coolctl.simulators.plant import PlantParams, RackPlant
from coolctl.simulators.scenario import load_scenario
from coolctl.tools.scenario_runner import run_scenario

CONFIG = Path(__file__).resolve().parent / "configs" / "hil-setpoints-rack.toml"
RACK = "r01"


def point(name: str, device: str = "cdu1") -> PointId:
    return PointId(RACK, device, name)


def rack_config() -> RackConfig:
    return load_config(CONFIG).racks[RACK]


def facts_of(rack: RackConfig) -> dict[str, DeviceFacts]:
    return {device.id: device_facts(device) for device in rack.devices.values()}


HEALTHY: Mapping[str, float] = {
    "supply_temperature": 35.0,
    "return_temperature": 41.0,
    "flow": 160.0,
    "differential_pressure": 95_000.0,
    "pump_speed": 0.8,
    "pump_running": 1.0,
    "standby_pump_active": 0.0,
    "reservoir_level": 20.0,
    "leak_detected": 0.0,
    "cdu_remote": 1.0,
    "cdu_control_mode": float(CduControlMode.AUTO_FLOW),
    "supply_temperature_setpoint": 35.0,
    "flow_setpoint": 160.0,
    "cdu_run_command": 1.0,
    **dict.fromkeys(ALARMS, 0.0),
}


def snapshot(now: float, **changes: float) -> Snapshot:
    values = {**HEALTHY, **changes}
    readings = [Reading(point(name), value, now, Quality.GOOD) for name, value in values.items()]
    readings.append(Reading(point("power", "pdu1"), 60_000.0, now, Quality.GOOD))
    return Snapshot(readings, now)


def by_point(commands: tuple[Command, ...]) -> dict[str, Command]:
    return {command.point.name: command for command in commands}


# -- the translation --------------------------------------------------------------------------


def test_setpoint_mode_supervises_setpoints_run_and_mode_not_pump_and_valve() -> None:
    rack = rack_config()
    config, plan = setpoint_supervisor_config(rack, facts_of(rack))
    roles = {a.point.name: a for a in config.actuators}
    assert set(roles) == {
        "supply_temperature_setpoint",
        "flow_setpoint",
        "cdu_run_command",
        "cdu_control_mode",
    }
    assert plan.mode_code is CduControlMode.AUTO_FLOW
    run = roles["cdu_run_command"]
    assert run.role is ActuatorRole.PUMP and run.on_leak == 0.0 and run.on_low_level == 0.0
    supply, flow = roles["supply_temperature_setpoint"], roles["flow_setpoint"]
    assert supply.on_over_temperature == supply.minimum == 18.0  # the coldest supply allowed
    assert flow.on_over_temperature == flow.maximum == 200.0  # the most flow allowed
    # failsafe: the configured safe set points (default: the loops' own), the CDU kept in auto
    assert (supply.failsafe, flow.failsafe) == (35.0, 160.0)
    assert roles["cdu_control_mode"].failsafe == float(CduControlMode.AUTO_FLOW)
    assert all(a.shutdown is None for a in roles.values())  # the CDU keeps its own loops
    assert config.rated_flow_lpm is None and config.pump_running == point("pump_running")


def test_configured_failsafe_set_points_and_alarm_stops() -> None:
    rack = rack_config()
    cdu = dataclasses.replace(
        rack.cdu,
        failsafe_supply_temperature_c=30.0,
        failsafe_flow_lpm=190.0,
        stop_on_alarms=("low_level_alarm",),
    )
    config, _ = setpoint_supervisor_config(dataclasses.replace(rack, cdu=cdu), facts_of(rack))
    failsafe = {a.point.name: a.failsafe for a in config.actuators}
    assert failsafe["supply_temperature_setpoint"] == 30.0
    assert failsafe["flow_setpoint"] == 190.0
    assert point("low_level_alarm") in config.leak_points


def test_a_loop_whose_set_point_the_cdu_cannot_take_is_refused_by_name() -> None:
    rack = rack_config()
    loops = dict(rack.loops)
    loops["pump"] = dataclasses.replace(loops["pump"], setpoint=400.0)
    with pytest.raises(ValueError, match="loop pump's setpoint 400 does not fit"):
        setpoint_supervisor_config(dataclasses.replace(rack, loops=loops), facts_of(rack))


def test_the_step_asks_for_set_points_and_a_leak_stops_the_cdu() -> None:
    rack = rack_config()
    step = RackStep(rack, facts_of(rack))
    assert isinstance(step.stack.controller, SetpointController)
    first = by_point(step.step(snapshot(0.0), 0.0, budget_w=None).commands)
    assert first["supply_temperature_setpoint"].value == 35.0
    assert first["flow_setpoint"].value == 160.0
    assert first["cdu_run_command"].value == 1.0
    assert first["cdu_control_mode"].value == float(CduControlMode.AUTO_FLOW)
    assert {c.source for c in first.values()} == {Source.AUTO}
    step.interlocks(snapshot(0.5, leak_detected=1.0), 0.5)  # wet: debounced for 1 s
    wet = step.interlocks(snapshot(1.6, leak_detected=1.0), 1.6)
    assert by_point(wet.commands)["cdu_run_command"].value == 0.0
    assert "leak" in wet.decision.interlocks
    later = by_point(step.step(snapshot(1.8, leak_detected=1.0), 1.8, budget_w=None).commands)
    assert later["cdu_run_command"].value == 0.0
    assert later["cdu_run_command"].source is Source.INTERLOCK


def test_over_temperature_asks_for_the_coldest_supply_and_the_most_flow() -> None:
    rack = rack_config()
    step = RackStep(rack, facts_of(rack))
    step.step(snapshot(0.0), 0.0, budget_w=None)
    hot = by_point(step.step(snapshot(0.2, supply_temperature=46.0), 0.2, budget_w=None).commands)
    assert hot["supply_temperature_setpoint"].value == 18.0
    assert hot["flow_setpoint"].value == 200.0
    assert hot["cdu_run_command"].value == 1.0


def test_a_cdu_in_local_control_gets_nothing_and_is_announced_once() -> None:
    rack = rack_config()
    step = RackStep(rack, facts_of(rack))
    step.step(snapshot(0.0), 0.0, budget_w=None)
    local = float(CduControlMode.LOCAL)
    held = step.step(snapshot(0.2, cdu_remote=0.0, cdu_control_mode=local), 0.2, budget_w=None)
    assert not held.commands and held.held
    assert [e.kind for e in held.events if e.source == "cdu"] == ["cdu_local"]
    again = step.step(snapshot(0.4, cdu_remote=0.0), 0.4, budget_w=None)
    assert not again.commands and not [e for e in again.events if e.kind == "cdu_local"]
    back = step.step(snapshot(0.6), 0.6, budget_w=None)
    assert back.commands and [e.kind for e in back.events] == ["cdu_remote"]


def test_each_alarm_is_an_event_once_per_change() -> None:
    rack = rack_config()
    step = RackStep(rack, facts_of(rack))
    first = step.step(snapshot(0.0), 0.0, budget_w=None).events
    assert not [e for e in first if e.source == "cdu"]  # alarms seen clear: nothing to say
    raised = step.step(snapshot(0.2, filter_clogged_alarm=1.0), 0.2, budget_w=None)
    assert [e.kind for e in raised.events] == ["cdu_alarm"]
    assert "filter_clogged_alarm" in raised.events[0].message
    same = step.step(snapshot(0.4, filter_clogged_alarm=1.0), 0.4, budget_w=None)
    assert not same.events
    cleared = step.step(snapshot(0.6), 0.6, budget_w=None)
    assert [e.kind for e in cleared.events] == ["cdu_alarm_cleared"]
    assert [(a.point.name, a.active) for a in step.cdu.alarms()][:1] == [
        ("filter_clogged_alarm", False)
    ]


# -- the simulated CDU controller -------------------------------------------------------------


def plant(load: float = 0.4) -> RackPlant:
    return RackPlant(PlantParams.from_dict({"initial_load": load}), seed=3)


def test_the_cdu_holds_its_set_points_through_a_load_step() -> None:
    rack_plant = plant()
    cdu = CduController(rack_plant)
    cdu.write("cdu_control_mode", float(CduControlMode.AUTO_FLOW))
    cdu.advance(300.0)
    rack_plant.set_load(1.0)
    worst_supply = worst_flow = 0.0
    for _ in range(300):
        cdu.advance(1.0)
        truth = rack_plant.cdu_readings()
        worst_supply = max(worst_supply, abs(truth["supply_temperature"] - 35.0))
        worst_flow = max(worst_flow, abs(truth["flow"] - 160.0))
    assert worst_supply < 0.5 and worst_flow < 3.0


def test_modes_local_remote_and_refusals() -> None:
    cdu = CduController(plant())
    assert cdu.mode is CduControlMode.MANUAL
    cdu.write("pump_speed_command", 0.7)  # manual: direct writes go through
    cdu.write("cdu_control_mode", float(CduControlMode.AUTO_PRESSURE))
    with pytest.raises(ValueError, match="its own loops"):
        cdu.write("pump_speed_command", 0.5)
    with pytest.raises(ValueError, match="outside"):
        cdu.write("supply_temperature_setpoint", 80.0)
    with pytest.raises(ValueError, match="not a mode one can write"):
        cdu.write("cdu_control_mode", float(CduControlMode.LOCAL))
    cdu.set_remote(False)
    assert cdu.mode is CduControlMode.LOCAL and cdu.running  # the panel runs its loops
    with pytest.raises(ValueError, match="local control"):
        cdu.write("flow_setpoint", 150.0)
    assert cdu.writes_refused == 4
    cdu.set_remote(True)
    cdu.write("cdu_run_command", 0.0)
    cdu.advance(5.0)
    assert not cdu.running and cdu.plant.cdu_readings()["pump_speed_command"] == 0.0


def test_alarms_latch_until_acknowledged_with_their_cause_gone() -> None:
    cdu = CduController(plant())
    cdu.force_alarm("conductivity_alarm")
    cdu.advance(1.0)
    assert cdu.read_points()["conductivity_alarm"] == 1.0
    assert cdu.alarm_word == 1 << ALARMS.index("conductivity_alarm")
    cdu.write("alarm_acknowledge", 1.0)  # cause still there: stays
    assert cdu.read_points()["conductivity_alarm"] == 1.0
    cdu.force_alarm("conductivity_alarm", active=False)
    cdu.advance(1.0)
    assert cdu.read_points()["conductivity_alarm"] == 1.0  # latched
    cdu.write("alarm_acknowledge", 1.0)
    assert cdu.read_points()["conductivity_alarm"] == 0.0 and cdu.alarm_word == 0


def test_dew_point_and_its_alarm() -> None:
    assert dew_point_c(25.0, 0.6) == pytest.approx(16.7, abs=0.1)  # psychrometric tables
    the_plant = plant()
    cdu = CduController(the_plant)
    cdu.advance(1.0)  # the room sensors read the plant's room air, and its dew point
    points = cdu.read_points()
    assert points["dew_point"] == pytest.approx(the_plant.room_readings()["dew_point"])
    cdu.set_room(30.0, 0.95)
    assert cdu.read_points()["dew_point"] == pytest.approx(dew_point_c(30.0, 0.95))
    cdu.set_room(38.0, 0.95)  # dew point above the supply: condensation
    cdu.advance(1.0)
    assert cdu.read_points()["dew_point_alarm"] == 1.0


def test_params_from_data_refuse_unknown_keys_and_bad_values() -> None:
    assert CduControllerParams.from_dict({"mode": "auto_flow"}).mode == "auto_flow"
    with pytest.raises(ValueError, match="unknown cdu parameter"):
        CduControllerParams.from_dict({"flux": 1.0})
    with pytest.raises(ValueError, match="not one of"):
        CduControllerParams.from_dict({"mode": "local"})
    with pytest.raises(ValueError, match="must not exceed"):
        CduControllerParams.from_dict({"pump_min": 0.9, "pump_max": 0.5})


# -- in simulated time -----------------------------------------------------------------------


def test_a_load_step_scenario_in_setpoint_mode_offline() -> None:
    """The scenario runner serves the CDU through its own controller: the shipped load step
    (one hour, simulated), with the rack driving the CDU by its setpoints."""
    shipped = resources.files("coolctl.simulators.scenarios").joinpath("load-step-up.toml")
    scenario = load_scenario(Path(str(shipped)))
    scenario = dataclasses.replace(scenario, rack=dataclasses.replace(scenario.rack, config=CONFIG))
    result = run_scenario(scenario, "pid")
    kpis = result.kpis
    print(
        f"\nload-step-up in setpoint mode: supply max deviation"
        f" {kpis['supply_temp_max_dev_k']:.3f} K, IAE {kpis['supply_temp_iae_ks']:.3f} K·ks,"
        f" mean pump {kpis['mean_pump_speed']:.2f}"
    )
    assert result.first_error is None and kpis["controller_errors"] == 0.0
    assert kpis["failsafe_s"] == 0.0 and kpis["interlock_s"] == 0.0
    assert kpis["supply_temp_max_dev_k"] < 0.5
