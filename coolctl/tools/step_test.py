"""The offline step test: the simulated plant stepped in simulated time, and the model fitted.

What `coolctl identify --simulated` runs, and what the scenario runner's MPC uses when it is given
no model file (`coolctl.tools.mpc_model.default_model_path`). The plant is read only through the
points the daemon sees — each device's readings, noise and all, gathered into a `Snapshot` and
turned into model signals by the very `MpcRack` the MPC uses — so the model is identified as it
would be on a real rack. Offline, and only offline, the test also steps the server load and the
facility water temperature: they are the MPC's measured disturbances, and a plant in
simulation lets them be excited on purpose.

Kept apart from `coolctl.cli.identify` so that the command line does not import scipy and OSQP
for every `coolctl` command.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from coolctl.control.identify import (
    FACILITY_WATER,
    PUMP_SPEED,
    VALVE,
    ChannelPlan,
    IdentifiedModel,
    IdentifySettings,
    StepTestData,
    StepTestPlan,
    identify,
    plan_step_test,
)
from coolctl.control.mpc import MpcRack
from coolctl.model import PointId, Quality, Reading, Snapshot
from coolctl.simulators.plant import PlantParams, RackPlant

LOAD = "load"  # offline excitation only: the servers' load fraction
SIM_RACK = "sim"

# The simulated test: around a mid-load operating point the MPC will work near, pump and valve
# within the range the MPC uses, steps big enough to rise well above the sensor noise.
DEFAULT_OPERATING_POINT: Mapping[str, float] = {
    PUMP_SPEED: 0.6,
    VALVE: 0.6,
    LOAD: 0.6,
    FACILITY_WATER: 30.0,
}
DEFAULT_CHANNELS: tuple[ChannelPlan, ...] = (
    ChannelPlan(PUMP_SPEED, low=0.3, high=0.95, max_rate_per_s=0.05, amplitude=0.25),
    ChannelPlan(VALVE, low=0.2, high=1.0, max_rate_per_s=0.05, amplitude=0.3),
    ChannelPlan(LOAD, low=0.2, high=1.0, max_rate_per_s=1.0, amplitude=0.35),
    ChannelPlan(FACILITY_WATER, low=24.0, high=36.0, max_rate_per_s=0.2, amplitude=4.0),
)


def simulated_rack(plant: RackPlant, rack: str = SIM_RACK) -> MpcRack:
    """The MPC's view of a simulated plant: its devices by their plant names."""
    servers = [f"server{i}" for i in range(plant.n_servers)]
    return MpcRack.standard(
        rack,
        cdu="cdu",
        servers=servers,
        pdu="pdu",
        cap_min_w=plant.params.power_limit_min_w * plant.n_servers,
        cap_max_w=plant.params.server_max_w * plant.n_servers,
    )


def plant_snapshot(plant: RackPlant, rack: str = SIM_RACK) -> Snapshot:
    """Everything the plant's devices expose now, as the daemon's telemetry store would hold it."""
    now = plant.time_s
    devices = ["cdu", "pdu", *(f"server{i}" for i in range(plant.n_servers))]
    readings = [
        Reading(PointId(rack, device, name), value, now, Quality.GOOD)
        for device in devices
        for name, value in plant.readings(device).items()
    ]
    return Snapshot(readings, now)


def run_simulated_step_test(
    plant: RackPlant, plan: StepTestPlan, rack: MpcRack | None = None
) -> StepTestData:
    """Play `plan` on the plant one control period at a time, recording the model's signals.

    At each tick the signals are read first, then the plan's values are applied for the coming
    period, as the daemon reads, then writes: a command recorded at tick k acts from k to k+1.
    """
    rack = rack or simulated_rack(plant)
    names = list(rack.signals)
    record: dict[str, list[float]] = {name: [] for name in names}
    for k in range(plan.samples):
        snapshot = plant_snapshot(plant, rack.rack)
        values = rack.read(snapshot)
        step = plan.at(k)
        _apply(plant, step)
        for name in names:
            value = values[name]
            if name in step and name in (PUMP_SPEED, VALVE):
                value = step[name]  # the command in force from now on
            if value is None:
                raise RuntimeError(f"simulated signal {name} unreadable at t={plant.time_s}")
            record[name].append(value)
        plant.advance(plan.period_s)
    return StepTestData(
        dt_s=plan.period_s,
        signals={name: np.asarray(values, dtype=np.float64) for name, values in record.items()},
        settle_samples=plan.settle_samples,
    )


def _apply(plant: RackPlant, values: Mapping[str, float]) -> None:
    if PUMP_SPEED in values:
        plant.set_pump_speed_command(values[PUMP_SPEED])
    if VALVE in values:
        plant.set_valve_command(values[VALVE])
    if LOAD in values:
        plant.set_load(values[LOAD])
    if FACILITY_WATER in values:
        plant.set_facility_water_temperature(values[FACILITY_WATER])


def identify_simulated(
    *,
    duration_s: float = 2400.0,
    period_s: float = 1.0,
    seed: int = 1,
    plant_overrides: Mapping[str, Any] | None = None,
    operating_point: Mapping[str, float] | None = None,
    channels: Sequence[ChannelPlan] = DEFAULT_CHANNELS,
    settings: IdentifySettings | None = None,
) -> tuple[IdentifiedModel, StepTestData]:
    """Step-test a fresh simulated plant and fit its model; the record is returned too."""
    point = dict(DEFAULT_OPERATING_POINT)
    point.update(operating_point or {})
    overrides: dict[str, Any] = {
        "initial_load": point[LOAD],
        "initial_pump_speed": point[PUMP_SPEED],
        "initial_valve": point[VALVE],
        "facility_water_temperature_c": point[FACILITY_WATER],
    }
    overrides.update(plant_overrides or {})
    plant = RackPlant(PlantParams.from_dict(overrides), seed=seed)
    plan = plan_step_test(channels, point, duration_s=duration_s, period_s=period_s, seed=seed)
    data = run_simulated_step_test(plant, plan)
    source: dict[str, str | int | float | bool] = {
        "kind": "simulated",
        "seed": seed,
        "duration_s": duration_s,
        "period_s": period_s,
        "operating_point": json.dumps(point, sort_keys=True),
    }
    if plant_overrides:
        source["plant"] = json.dumps(dict(plant_overrides), sort_keys=True)
    model = identify(data, settings=settings, source=source)
    return model, data
