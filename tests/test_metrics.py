"""/metrics of a daemon running against the simulated rack: names, values, and promtool's lint."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from coolctl.daemon.metrics import point_metric_name
from coolctl.tools.testing import hil_rack

CONFIG = Path(__file__).parent / "configs" / "hil-rack.toml"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run scripts/test, which installs it")
    return path


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.hil
@pytest.mark.asyncio
async def test_metrics_show_points_devices_loops_and_pass_promtool() -> None:
    async with hil_rack(CONFIG, time_scale=5.0, plant={"initial_valve": 0.5}) as rack:
        await rack.wait_until(
            lambda: (
                rack.daemon.racks["r01"].tick_stats.runs > 5
                and all(c.stats.writes > 0 for c in rack.daemon.racks["r01"].actuators.values())
            ),
            10.0,
        )
        text = await scrape(rack.metrics_url)
    found = samples(text)
    cdu = frozenset({("rack", "r01"), ("device", "cdu1")})
    supply = found[("coolctl_supply_temperature_celsius", cdu)]
    assert 25.0 < supply < 45.0
    assert found[("coolctl_flow_litres_per_minute", cdu)] > 0
    assert ("coolctl_pump_speed_ratio", cdu) in found
    assert ("coolctl_leak_detected", cdu) in found
    assert found[("coolctl_power_watts", frozenset({("rack", "r01"), ("device", "pdu1")}))] > 1e4
    assert found[("coolctl_device_up", cdu)] == 1.0
    assert found[("coolctl_device_polls_total", cdu)] > 0
    assert ("coolctl_device_last_success_timestamp_seconds", cdu) in found
    good = frozenset({("rack", "r01"), ("device", "cdu1"), ("point", "flow"), ("quality", "good")})
    assert found[("coolctl_point_quality", good)] == 1.0
    pump_loop = frozenset({("rack", "r01"), ("loop", "pump"), ("unit", "litres_per_minute")})
    assert found[("coolctl_loop_setpoint", pump_loop)] == 160.0
    assert ("coolctl_loop_measurement", pump_loop) in found
    auto = frozenset({("rack", "r01"), ("loop", "pump"), ("mode", "auto")})
    assert found[("coolctl_loop_mode", auto)] == 1.0
    pump = frozenset({("rack", "r01"), ("device", "cdu1"), ("point", "pump_speed_command")})
    assert found[("coolctl_actuator_writes_total", pump)] > 0
    assert found[("coolctl_actuator_write_failures_total", pump)] == 0
    assert found[("coolctl_control_ticks_total", frozenset({("rack", "r01")}))] > 5

    check_with_promtool(text)


def check_with_promtool(text: str) -> None:
    """`promtool check metrics` must report nothing at all."""
    lint = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0 and lint.stdout.strip() == "" and lint.stderr.strip() == "", (
        lint.stdout + lint.stderr
    )


def test_point_metric_names_carry_base_units() -> None:
    assert point_metric_name("supply_temperature") == "coolctl_supply_temperature_celsius"
    assert point_metric_name("differential_pressure") == "coolctl_differential_pressure_pascals"
    assert point_metric_name("energy") == "coolctl_energy_joules"
    assert point_metric_name("leak_detected") == "coolctl_leak_detected"
