"""The MPC's control stack for one rack: what `coolctl sim run --controller mpc` and the daemon
(a rack with `controller = "mpc"`) build.

It lives in coolctl/, not control/, because it reads `RackConfig` and model files; the MPC
itself (`coolctl.control.mpc`) stays pure. The stack is the PID stack with two changes:

- the controller is an `MpcController` that drives the pump and the valve, with the rack's PID
  loops as its fallback (they track what the MPC sends, and run whenever it cannot vouch for
  a step: a reading it needs is not good, the solver fails or runs out of time);
- the power-cap allocator is handed the MPC's IT-power limit in place of the rack budget when
  the MPC decides that pump and valve alone cannot hold the temperatures
  (`MpcController.allocator_budget_w`), so caps keep their per-server minimums, priorities
  and weights; the PID stack's thermal cap loop (chips, outlets) still bounds it. The safety
  supervisor is the daemon's own, unchanged: it has the last word.

The model: the file given (`--mpc-model`, `mpc_model` in the rack config), written by
`coolctl identify`. A live rack needs a model identified on that rack, and its config must name
the file; only the offline scenario runner, given none, identifies one on the simulated plant
first (`coolctl.tools.mpc_model`), so nothing here imports the simulators.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coolctl.config import RackConfig
from coolctl.control.identify import IdentifiedModel
from coolctl.control.mpc import MpcController, MpcRack, MpcSettings, build_mpc
from coolctl.control.powercap import PowerCapAllocator
from coolctl.model import Command, Snapshot
from coolctl.rack.safety import DeviceFacts, server_caps
from coolctl.rack.stack import RackControl, ThermalCappedAllocator, build_pid_control

PUMP_POINT = "pump_speed_command"
VALVE_POINT = "valve_command"
SUPPLY_POINT = "supply_temperature"
DEFAULT_SUPPLY_MAX_C = 45.0  # ASHRAE W45, the scenarios' default limit too
SOLVER_BUDGET_SHARE = 0.2  # of the control period: the rest is the daemon's tick
MAX_SOLVER_BUDGET_S = 0.2
CHIP_STEP_ROOM_K = 1.5  # the MPC plans its chips this far under the thermal cap's limit


class MpcModelError(ValueError):
    """The model file is missing, unreadable, or not a model this MPC can run on this rack."""


class MpcAllocator(ThermalCappedAllocator):
    """The rack's allocator, handed the MPC's IT-power limit in place of the budget, and still
    under the PID stack's thermal cap loop where `base` has one: the MPC's limit is on the
    supply temperature only, the thermal cap's on the chips and the server outlets as well.

    A subclass rather than a wrapper so that everything that reads an allocator (metrics, the
    control API's status, the demo) sees the same `allocation` and `config`.
    """

    def __init__(self, base: PowerCapAllocator, mpc: MpcController, margin_w: float) -> None:
        thermal = base.thermal if isinstance(base, ThermalCappedAllocator) else None
        super().__init__(base.config, thermal)
        self.mpc = mpc
        self.margin_w = margin_w

    def step(self, snapshot: Snapshot, now: float, budget_w: float | None) -> list[Command]:
        budget = self.mpc.allocator_budget_w(budget_w, snapshot, self.margin_w)
        return super().step(snapshot, now, budget)


def build_mpc_control(
    rack: RackConfig, devices: Mapping[str, DeviceFacts], model_path: Path | None
) -> RackControl:
    """The MPC stack for `rack` (see the module docstring); MpcModelError for a bad model.

    `model_path` None: the rack config's `mpc_model`. (The offline runner, which has no model
    file of its own, identifies one first: `coolctl.tools.mpc_model.default_model_path`.)
    """
    pid = build_pid_control(rack, devices)
    path = model_path if model_path is not None else rack.mpc_model
    if path is None:
        raise MpcModelError(f"rack {rack.id}: the MPC needs a model file (mpc_model)")
    model = load_model(path)
    mpc_rack = mpc_rack_of(rack, devices)
    try:
        mpc = build_mpc(mpc_rack, model, mpc_settings(rack), pid.controller)
    except ValueError as exc:
        raise MpcModelError(f"mpc_model {path}: {exc}") from exc
    allocator = (
        None if pid.allocator is None else MpcAllocator(pid.allocator, mpc, rack.power.margin_w)
    )
    return RackControl(controller=mpc, allocator=allocator, supervisor=pid.supervisor)


def load_model(path: Path) -> IdentifiedModel:
    """The identified model in `path`; MpcModelError saying what is wrong with it."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise MpcModelError(f"mpc_model {path}: {exc.strerror or exc}") from exc
    try:
        return IdentifiedModel.from_json(text)
    except ValueError as exc:
        raise MpcModelError(f"mpc_model {path}: {exc}") from exc


def mpc_rack_of(rack: RackConfig, devices: Mapping[str, DeviceFacts]) -> MpcRack:
    """What the MPC drives and reads: the CDU the pump loop drives (else the first CDU with a
    writable pump speed), the PDU the allocator reads, and the servers whose caps it sets."""
    cdu = _pump_device(rack, devices)
    pdu = next((name for name, facts in devices.items() if facts.kind == "pdu"), None)
    servers = server_caps(rack)
    cap_max_w = sum(d.cap_max_w for d in servers)
    return MpcRack.standard(
        rack.id,
        cdu=cdu,
        servers=[d.id for d in servers],
        pdu=pdu,
        valve=VALVE_POINT in devices[cdu].writable,
        cap_min_w=sum(d.cap_min_w for d in servers),
        cap_max_w=cap_max_w,
        # what the rack may step to: its caps' range, else (no BMCs) its power budget
        rated_it_w=cap_max_w or (rack.power_budget_w or 0.0),
    )


def _pump_device(rack: RackConfig, devices: Mapping[str, DeviceFacts]) -> str:
    for loop in rack.loops.values():
        if loop.actuator.point == PUMP_POINT and loop.actuator.device in devices:
            return loop.actuator.device
    for name, facts in devices.items():
        if facts.kind == "cdu" and PUMP_POINT in facts.writable:
            return name
    raise MpcModelError(f"rack {rack.id}: the MPC needs a CDU with a writable {PUMP_POINT}")


def mpc_settings(rack: RackConfig) -> MpcSettings:
    """The MPC's limits from the rack's config, where it has them.

    Pump and valve ranges and rates: the loops on those actuators (the same range the PID
    fallback keeps; the supervisor clamps both anyway). Supply limit: the safety supervisor's
    limit on the CDU's supply temperature. Chip limit: `safety.thermal_cap_chip_c` less
    `CHIP_STEP_ROOM_K`, where set. The solver's time budget: a share of the control period, so a
    slow solve still leaves the tick on time.
    """
    fields: dict[str, Any] = {}
    for loop in rack.loops.values():
        prefix = {PUMP_POINT: "pump", VALVE_POINT: "valve"}.get(loop.actuator.point)
        if prefix is None:
            continue
        fields[f"{prefix}_min"] = loop.output_min
        fields[f"{prefix}_max"] = loop.output_max
        if loop.slew_per_s is not None:
            fields[f"{prefix}_rate_per_s"] = loop.slew_per_s
    supply_limits = [
        limit for ref, limit in rack.safety.temperature_limits.items() if ref.point == SUPPLY_POINT
    ]
    fields["supply_max_c"] = min(supply_limits, default=DEFAULT_SUPPLY_MAX_C)
    if rack.safety.thermal_cap_chip_c is not None:
        # Under the chips' limit the thermal cap keeps, by room for a load step: the chips rise
        # for seconds before pump and valve catch up (a job on six servers of a half-loaded
        # rack, tests/test_mpc.py: hottest chip 82.9 degC planned at 83.5, 81.8 at 82.0).
        fields["chip_max_c"] = rack.safety.thermal_cap_chip_c - CHIP_STEP_ROOM_K
    fields["time_limit_s"] = min(MAX_SOLVER_BUDGET_S, SOLVER_BUDGET_SHARE * rack.control_period_s)
    return MpcSettings(**fields)
