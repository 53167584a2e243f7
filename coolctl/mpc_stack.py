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
  and weights. The safety supervisor is the daemon's own, unchanged: it has the last word.

The model: the file given (`--mpc-model`, `mpc_model` in the rack config), written by
`coolctl identify`. Without one, `default_model_path` identifies a model on the simulated plant
with the built-in step test in simulated time and caches the file (see there): what the
offline scenario runner uses when no model is given. The daemon never does that: a live rack
needs a model identified on that rack, and its config must name the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import coolctl
from coolctl.config import RackConfig
from coolctl.control.identify import MODEL_VERSION, IdentifiedModel
from coolctl.control.mpc import MpcController, MpcRack, MpcSettings, build_mpc
from coolctl.control.powercap import PowerCapAllocator
from coolctl.control_stack import RackControl, build_pid_control
from coolctl.model import Command, Snapshot
from coolctl.safety import DeviceFacts, server_caps
from coolctl.simulators.plant import PlantParams

PUMP_POINT = "pump_speed_command"
VALVE_POINT = "valve_command"
SUPPLY_POINT = "supply_temperature"
DEFAULT_SUPPLY_MAX_C = 45.0  # ASHRAE W45, the scenarios' default limit too
SOLVER_BUDGET_SHARE = 0.2  # of the control period: the rest is the daemon's tick
MAX_SOLVER_BUDGET_S = 0.2

# The built-in identification experiment (`default_model_path`): PLANT.md's rack stepped
# around a mid-load operating point. Bump the recipe when anything that changes the fitted
# model changes, so that cached files from before are not reused.
IDENTIFY_RECIPE = 1
IDENTIFY_SAMPLES = 2400  # control periods of step test
IDENTIFY_SEED = 1
# Plant parameters that set where the plant starts, not what it is: the step test picks its own
# operating point, so these do not enter the model's identity.
_OPERATING_POINT_PARAMS = frozenset(
    {"initial_load", "initial_pump_speed", "initial_valve", "facility_water_temperature_c"}
)
CACHE_ENV = "COOLCTL_CACHE_DIR"


class MpcModelError(ValueError):
    """The model file is missing, unreadable, or not a model this MPC can run on this rack."""


class MpcAllocator(PowerCapAllocator):
    """The rack's allocator, handed the MPC's IT-power limit in place of the budget.

    A subclass rather than a wrapper so that everything that reads an allocator (metrics, the
    control API's status, the demo) sees the same `allocation` and `config`.
    """

    def __init__(self, base: PowerCapAllocator, mpc: MpcController, margin_w: float) -> None:
        super().__init__(base.config)
        self.mpc = mpc
        self.margin_w = margin_w

    def step(self, snapshot: Snapshot, now: float, budget_w: float | None) -> list[Command]:
        budget = self.mpc.allocator_budget_w(budget_w, snapshot, self.margin_w)
        return super().step(snapshot, now, budget)


def build_mpc_control(
    rack: RackConfig, devices: Mapping[str, DeviceFacts], model_path: Path | None
) -> RackControl:
    """The MPC stack for `rack` (see the module docstring); MpcModelError for a bad model.

    `model_path` None: the cached model of PLANT.md's default rack at this control period
    (`default_model_path`), for offline runs only.
    """
    pid = build_pid_control(rack, devices)
    path = model_path if model_path is not None else default_model_path(rack.control_period_s)
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
    servers = [d for d in server_caps(rack) if d.redfish is not None]
    return MpcRack.standard(
        rack.id,
        cdu=cdu,
        servers=[d.id for d in servers],
        pdu=pdu,
        valve=VALVE_POINT in devices[cdu].writable,
        cap_min_w=sum(d.redfish.cap_min_w for d in servers if d.redfish is not None),
        cap_max_w=sum(d.redfish.cap_max_w for d in servers if d.redfish is not None),
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
    limit on the CDU's supply temperature. The solver's time budget: a share of the control
    period, so a slow solve still leaves the tick on time.
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
    fields["time_limit_s"] = min(MAX_SOLVER_BUDGET_S, SOLVER_BUDGET_SHARE * rack.control_period_s)
    return MpcSettings(**fields)


# -- the built-in identification, cached ---------------------------------------------------------


def default_model_path(period_s: float, plant: PlantParams | None = None) -> Path:
    """A model file for the simulated plant `plant` (PLANT.md's rack by default) sampled every
    `period_s`: identified with the built-in step test (`coolctl identify --simulated`'s, run for
    `IDENTIFY_SAMPLES` periods in simulated time, about ten seconds here) the first time, then
    read from the cache.

    The cache is `$COOLCTL_CACHE_DIR`, else `$XDG_CACHE_HOME/coolctl`, else
    `~/.cache/coolctl`; the file name is a hash of everything that decides the model (the
    plant's structural parameters, the period, the recipe, the coolctl version), so a changed
    plant is identified anew. Where the cache cannot be written, the model is written to a
    private temporary file instead, identified again next time.
    """
    from coolctl.step_test import identify_simulated

    overrides = _structural_overrides(plant)
    duration_s = IDENTIFY_SAMPLES * period_s
    key = json.dumps(
        {
            "recipe": IDENTIFY_RECIPE,
            "model_version": MODEL_VERSION,
            "coolctl": coolctl.__version__,
            "period_s": period_s,
            "duration_s": duration_s,
            "seed": IDENTIFY_SEED,
            "plant": overrides,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = _cache_dir() / f"mpc-model-{digest}.json"
    if path.is_file():
        try:
            IdentifiedModel.from_json(path.read_text("utf-8"))
        except (OSError, ValueError):
            pass  # a torn or stale file: identify again and replace it
        else:
            return path
    model, _ = identify_simulated(
        duration_s=duration_s, period_s=period_s, seed=IDENTIFY_SEED, plant_overrides=overrides
    )
    return _write_atomically(path, model.to_json())


def _structural_overrides(plant: PlantParams | None) -> dict[str, Any]:
    """The parameters of `plant` that differ from PLANT.md's defaults and shape the model."""
    if plant is None:
        return {}
    default = PlantParams()
    return {
        f.name: getattr(plant, f.name)
        for f in dataclasses.fields(PlantParams)
        if f.name not in _OPERATING_POINT_PARAMS
        and getattr(plant, f.name) != getattr(default, f.name)
    }


def _cache_dir() -> Path:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "coolctl"


def _write_atomically(path: Path, text: str) -> Path:
    """Write `text` to `path` by rename (a concurrent reader sees the old file or the new one,
    never half); if the cache cannot be written, to a temporary file, whose path is returned."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    except OSError:
        fd, temp = tempfile.mkstemp(prefix="coolctl-mpc-model-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        return Path(temp)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temp, path)
    except OSError:
        Path(temp).unlink(missing_ok=True)
        raise
    return path
