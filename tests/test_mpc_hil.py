"""Hardware in the loop: the daemon runs a rack under the MPC (`controller = "mpc"`) against the
simulated CDU and PDU over real Modbus TCP, in real time.

As in test_hil.py, the plant runs five times faster than real time and tests/configs/hil-rack.toml
scales the daemon's periods and rates to match; the model, identified on the plant at 1 s
periods, is the same model at 0.2 s of wall time per sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from coolctl.control.identify import IdentifiedModel
from coolctl.control.mpc import FALLBACK_REASONS, MpcController
from coolctl.tools import mpc_model
from coolctl.tools.testing import hil_rack

CONFIG = Path(__file__).parent / "configs" / "hil-rack.toml"
TIME_SCALE = 5.0
SERVER_IDLE_W, SERVER_MAX_W, SERVERS = 1500.0, 7000.0, 18


def load_for(rack_power_w: float) -> float:
    return (rack_power_w / SERVERS - SERVER_IDLE_W) / (SERVER_MAX_W - SERVER_IDLE_W)


@pytest.fixture(scope="module")
def mpc_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """hil-rack.toml with the rack under the MPC, and its model at the compressed time."""
    cache = tmp_path_factory.getbasetemp() / "mpc-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(mpc_model.CACHE_ENV, str(cache))
        model = IdentifiedModel.from_json(mpc_model.default_model_path(1.0).read_text())
    folder = tmp_path_factory.mktemp("mpc-hil")
    model_path = folder / "model.json"
    model_path.write_text(dataclasses.replace(model, dt_s=1.0 / TIME_SCALE).to_json())
    text = CONFIG.read_text()
    head = "[racks.r01]\n"
    assert text.count(head) == 1
    text = text.replace(head, f'{head}controller = "mpc"\nmpc_model = "{model_path}"\n')
    path = folder / "hil-mpc-rack.toml"
    path.write_text(text)
    yield path


@pytest.mark.hil
@pytest.mark.asyncio
async def test_the_daemon_runs_a_rack_under_the_mpc_through_a_load_step(mpc_config: Path) -> None:
    async with hil_rack(mpc_config, time_scale=TIME_SCALE, load=load_for(50_000.0)) as rack:
        runtime = rack.daemon.racks["r01"]
        mpc = runtime.controller
        assert isinstance(mpc, MpcController)
        plant = rack.plant("r01")
        await rack.wait_until(lambda: mpc.stats.solves >= 50, 20.0)
        flow_before = rack.value("r01/cdu1/flow")
        plant.set_load(load_for(100_000.0))
        solves = mpc.stats.solves
        # 60 s of plant time: the load step, the pump and valve following it
        await rack.wait_until(lambda: mpc.stats.solves >= solves + 60, 30.0)
        await rack.wait_until(
            lambda: abs((rack.value("r01/cdu1/supply_temperature") or 0.0) - 35.0) < 1.5, 20.0
        )
        truth = plant.truth()
        flow = rack.value("r01/cdu1/flow")
        power = rack.value("r01/pdu1/power")
        assert flow is not None and power is not None and power > 90_000.0
        # a rack without BMCs: the MPC cannot read the chips and keeps the flow per kW up, and
        # never under the flow the pump loop holds (160 L/min), at half load as at full
        assert flow > 1.2 * power / 1000.0
        assert flow_before is not None and min(flow, flow_before) > 0.95 * 160.0
        assert truth.supply_temperature_c < 40.0
        # the MPC was in charge; the daemon never went to failsafe
        stats = mpc.stats
        assert stats.solves > 10 * max(1, stats.fallbacks - stats.fallback_reasons.get("blind", 0))
        assert runtime.decision is not None and not runtime.decision.failsafe
        writes = rack.simulation.writes("r01", "cdu1")
        pumps = [w.value for w in writes if w.point == "pump_speed_command"]
        valves = [w.value for w in writes if w.point == "valve_command"]
        assert pumps and valves
        assert all(0.2 - 1e-3 <= v <= 1.0 + 1e-3 for v in pumps)
        assert all(0.05 - 1e-3 <= v <= 1.0 + 1e-3 for v in valves)
        # and /metrics tells operators how the MPC fares
        async with aiohttp.ClientSession() as session, session.get(rack.metrics_url) as reply:
            text = await reply.text()
        samples = {
            (sample.name, sample.labels.get("reason", "")): sample.value
            for family in text_string_to_metric_families(text)
            if family.name.startswith("coolctl_mpc_")
            for sample in family.samples
            if sample.labels.get("rack") == "r01"
        }
        assert samples[("coolctl_mpc_steps_total", "")] >= stats.solves
        fallbacks = [v for (name, _), v in samples.items() if name == "coolctl_mpc_fallbacks_total"]
        assert len(fallbacks) == len(FALLBACK_REASONS) and sum(fallbacks) <= stats.fallbacks
