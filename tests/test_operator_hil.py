"""An operator at the CLI against the daemon controlling the simulated rack (HIL, real time).

Overrides are set with `coolctl override set` over the control socket; the simulated CDU is
where we check what was really commanded. The plant runs at 5x (tests/configs/hil-rack.toml).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from coolctl.cli.main import build_parser
from coolctl.cli.operator import run_operator_command
from coolctl.model import Source
from coolctl.tools.testing import HilRack, hil_rack

CONFIG = Path(__file__).parent / "configs" / "hil-rack.toml"


async def cli(rack: HilRack, *args: str) -> int:
    """The CLI as an operator runs it (its own event loop, so on a thread of its own here)."""
    parser = build_parser()
    parsed = parser.parse_args([*args, "--socket", str(rack.socket_path)])
    return await asyncio.to_thread(run_operator_command, parsed, parser)


def pump_writes(rack: HilRack) -> list[tuple[float, float]]:
    return [
        (w.wall_time_s, w.value)
        for w in rack.simulation.writes("r01", "cdu1")
        if w.point == "pump_speed_command"
    ]


@pytest.mark.hil
@pytest.mark.asyncio
async def test_override_is_applied_then_expires_and_the_loop_takes_over_bumplessly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with hil_rack(CONFIG, time_scale=5.0, plant={"initial_valve": 0.5}) as rack:
        await rack.wait_until(lambda: len(pump_writes(rack)) > 0, 10.0)
        assert (
            await cli(
                rack,
                "override",
                "set",
                "r01",
                "cdu1/pump_speed_command",
                "0.55",
                "--ttl",
                "3s",
                "--reason",
                "pump seal check",
            )
            == 0
        )
        assert "override set" in capsys.readouterr().out
        plant = rack.plant("r01")
        await rack.wait_until(
            lambda: abs(plant.cdu_readings()["pump_speed_command"] - 0.55) < 0.002, 5.0
        )
        assert await cli(rack, "override", "list", "--json") == 0
        listed = json.loads(capsys.readouterr().out)["overrides"]
        assert [(o["target"], o["value"]) for o in listed] == [("cdu1/pump_speed_command", 0.55)]

        # the override expires by itself; the loop takes over from 0.55 with its slew limit
        await rack.wait_until(lambda: not rack.daemon.racks["r01"].override_records, 8.0)
        held_until = max(t for t, v in pump_writes(rack) if abs(v - 0.55) < 0.002)
        await rack.wait_until(
            lambda: len([w for w in pump_writes(rack) if w[0] > held_until]) > 0, 5.0
        )
        after = [(t, v) for t, v in pump_writes(rack) if t > held_until]
        first_time, first_value = after[0]
        slew_per_s, jitter_s = 0.5, 0.3
        assert abs(first_value - 0.55) <= slew_per_s * (first_time - held_until + jitter_s) + 0.002
        kinds = [e.kind for e in rack.daemon.recent_events]
        assert "override_set" in kinds and "override_expired" in kinds


@pytest.mark.hil
@pytest.mark.asyncio
async def test_refused_override_names_the_bounds_and_changes_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with hil_rack(CONFIG, time_scale=5.0, plant={"initial_valve": 0.5}) as rack:
        code = await cli(
            rack,
            "override",
            "set",
            "r01",
            "cdu1/pump_speed_command",
            "1.4",
            "--permanent",
            "--reason",
            "too much",
        )
        assert code == 1
        err = capsys.readouterr().err
        assert "outside its safe bounds 0.2..1.0" in err
        assert rack.daemon.racks["r01"].override_records == {}
        assert (
            await cli(
                rack, "override", "set", "r01", "nope.setpoint", "1", "--permanent", "--reason", "x"
            )
            == 1
        )
        assert "no loop 'nope'" in capsys.readouterr().err
        # Refusals are counted: the two 4xx answers show in /metrics, by status.
        async with aiohttp.ClientSession() as session, session.get(rack.metrics_url) as reply:
            text = await reply.text()
        refused = {
            sample.labels["code"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "coolctl_control_api_requests"
            for sample in family.samples
            if sample.name.endswith("_total")
        }
        assert sum(v for code, v in refused.items() if code.startswith("4")) >= 2, refused


@pytest.mark.hil
@pytest.mark.asyncio
async def test_manual_mode_stops_automatic_writes_but_keeps_overrides(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with hil_rack(CONFIG, time_scale=5.0, plant={"initial_valve": 0.5}) as rack:
        await rack.wait_until(lambda: len(pump_writes(rack)) > 0, 10.0)
        assert await cli(rack, "mode", "r01", "manual", "--reason", "swapping pump A") == 0
        channel = next(
            c
            for p, c in rack.daemon.racks["r01"].actuators.items()
            if p.name == "pump_speed_command"
        )
        auto_before = channel.stats.commands_by_source.get(Source.AUTO, 0)
        assert (
            await cli(
                rack,
                "override",
                "set",
                "r01",
                "cdu1/pump_speed_command",
                "0.7",
                "--ttl",
                "1h",
                "--reason",
                "hold",
            )
            == 0
        )
        plant = rack.plant("r01")
        await rack.wait_until(
            lambda: abs(plant.cdu_readings()["pump_speed_command"] - 0.7) < 0.002, 5.0
        )
        auto_after = channel.stats.commands_by_source.get(Source.AUTO, 0)
        assert auto_after == auto_before
        capsys.readouterr()
        assert await cli(rack, "status", "--json") == 0
        status = json.loads(capsys.readouterr().out)
        assert status["racks"][0]["mode"] == "manual"
        await rack.wait_until(lambda: len(rack.daemon.recent_events) >= 2, 5.0)
        assert await cli(rack, "events", "--json") == 0
        out = capsys.readouterr().out
        assert "mode_set" in out and "override_set" in out
