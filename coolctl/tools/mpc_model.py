"""The offline MPC model: identified on the simulated plant by the built-in step test, cached.

What `coolctl sim run --controller mpc` uses when no `--mpc-model` is given. It lives with the
offline tools, not with the rack's MPC stack (`coolctl.rack.mpc`), because it runs the plant
simulator: a live rack's MPC never identifies its own model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import coolctl
from coolctl.control.identify import MODEL_VERSION, IdentifiedModel
from coolctl.simulators.plant import PlantParams
from coolctl.tools.step_test import identify_simulated

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
