"""The demo rack's supply loop, gain-scheduled over flow, on the control review's lagged step:
the gains rise with the flow the chip boost gives, and the supply's peak stays in bounds."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from coolctl.config import RackConfig
from coolctl.control.loops import RackController
from coolctl.rack.safety import DeviceFacts
from coolctl.rack.stack import PidControl, build_pid_control
from coolctl.simulators.scenario import load_scenario
from coolctl.tools.scenario_runner import run_scenario

LAGGED = Path(__file__).resolve().parent.parent / "simulators" / "scenarios" / "lagged-step.toml"


def test_the_lagged_step_runs_the_supply_loop_on_its_flow_schedule() -> None:
    built: list[PidControl] = []
    scales: list[float] = []

    def factory(
        rack: RackConfig, facts: Mapping[str, DeviceFacts], _model: Path | None
    ) -> PidControl:
        built.append(build_pid_control(rack, facts))
        return built[-1]

    def record(*_: object) -> None:
        controller = built[0].controller
        assert isinstance(controller, RackController)
        scales.append(controller.loops["supply"].gain_scale)

    kpis = run_scenario(load_scenario(LAGGED), "pid", factory=factory, on_tick=record).kpis
    schedule = built[0].controller.loops["supply"].spec.schedule
    assert schedule is not None and schedule.point.name == "flow"
    assert min(scales) == 1.0  # 160 L/min before the step: the gains as configured
    assert max(scales) == pytest.approx(1.25, abs=0.01)  # 200 L/min after it
    assert kpis["max_supply_temp_c"] - 35.0 <= 0.5  # the acceptance's supply peak
    # The feedforward timed to the return pipe's transit: the step never takes the supply out
    # of the +-0.2 K band (a lag alone, 5 s: 0.43 K out and a 20 % swing back).
    assert kpis["supply_temp_max_dev_k"] < 0.2
    assert kpis["load_step_overshoot_pct"] <= 10.0
    assert kpis["hardware_throttle_s"] == 0.0
