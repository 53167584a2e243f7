"""HIL: the daemon reads a simulated ORv3 power shelf over Modbus (six PSUs and a BBU, each its
own device) as its rack meter; a lost PSU and a mains loss injected into the simulation become
events once each, show in `coolctl status` and in /metrics, and pass promtool's lint."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_metrics import check_with_promtool, samples, scrape

from coolctl.cli.main import build_parser
from coolctl.cli.operator import run_operator_command
from coolctl.simulators.faults import apply_fault
from coolctl.tools.testing import HilRack, hil_rack

PSUS = 6


def rack_config(tmp_path: Path) -> Path:
    units = "".join(
        f"""
[racks.r01.devices.psu{n}]
driver = "modbus"
address = "127.0.0.1"
port = {15100 + n}
unit = {191 + n}
profile = "orv3-psu"
poll_interval_s = 0.25
"""
        for n in range(1, PSUS + 1)
    )
    bmcs = "".join(
        f"""
[racks.r01.devices.bmc{i}]
driver = "redfish"
kind = "server"
url = "https://127.0.0.1:1"
username = "admin"
poll_interval_s = 0.5
cap_min_w = 1500.0
cap_max_w = 7000.0
"""
        for i in range(2)
    )
    path = tmp_path / "orv3-shelf-rack.toml"
    path.write_text(
        f"""
[racks.r01]
control_period_s = 0.5
power_budget_w = 30000.0

[racks.r01.devices.bbu1]
driver = "modbus"
address = "127.0.0.1"
port = 15100
unit = 64
profile = "orv3-bbu"
poll_interval_s = 0.25
{units}{bmcs}"""
    )
    return path


async def status(rack: HilRack, capsys: pytest.CaptureFixture[str]) -> str:
    parser = build_parser()
    parsed = parser.parse_args(["status", "--socket", str(rack.socket_path)])
    assert await asyncio.to_thread(run_operator_command, parsed, parser) == 0
    return capsys.readouterr().out


@pytest.mark.hil
@pytest.mark.asyncio
async def test_a_lost_psu_and_a_mains_loss_are_events_status_and_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with hil_rack(rack_config(tmp_path), load=0.8, plant={"n_servers": 2}) as rack:
        psus = [f"r01/psu{n}/power" for n in range(1, PSUS + 1)]
        await rack.wait_until(
            lambda: (
                all(rack.value(p) is not None for p in psus)
                and rack.value("r01/bbu1/bbu_charge") is not None
            ),
            15.0,
        )
        drawn = sum(rack.value(p) or 0.0 for p in psus)
        it_power = rack.plant("r01").pdu_readings()["power"]
        assert drawn == pytest.approx(it_power / 0.975, rel=0.1)  # the PSUs meter the rack
        assert "power alarms" not in await status(rack, capsys)

        apply_fault(rack.simulation, "psu_fail", device="psu2")
        apply_fault(rack.simulation, "mains_loss")

        def kinds() -> list[str]:
            return [e.kind for e in rack.daemon.recent_events if e.source == "powercap"]

        await rack.wait_until(lambda: "psu_lost" in kinds() and "bbu_discharging" in kinds(), 15.0)
        assert rack.value("r01/psu2/psu_ok") == 0.0
        assert rack.value("r01/bbu1/bbu_discharging") == 1.0
        lines = (await status(rack, capsys)).splitlines()
        assert lines[-1] == (
            "r01 power alarms: bbu1/bbu_discharging: on battery; psu2/psu_ok: PSU lost"
        )
        text = await scrape(rack.metrics_url)
        apply_fault(rack.simulation, "clear")
        await rack.wait_until(lambda: "bbu_discharge_ended" in kinds(), 15.0)
        await rack.wait_until(lambda: "psu_restored" in kinds(), 15.0)
    assert kinds().count("psu_lost") == 1 and kinds().count("bbu_discharging") == 1
    found = samples(text)
    assert found[("coolctl_psu_ok", frozenset({("rack", "r01"), ("device", "psu2")}))] == 0.0
    assert found[("coolctl_psu_ok", frozenset({("rack", "r01"), ("device", "psu1")}))] == 1.0
    bbu = frozenset({("rack", "r01"), ("device", "bbu1")})
    assert found[("coolctl_bbu_discharging", bbu)] == 1.0
    check_with_promtool(text)
