"""HIL: the daemon reads a simulated SNMP PDU (raritan-pdu2, v2c) as its rack meter; its points,
table rows among them, reach /metrics (an `index` label per row) and pass promtool's lint."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_metrics import check_with_promtool, samples, scrape

from coolctl.tools.testing import hil_rack


def rack_config(tmp_path: Path) -> Path:
    community = tmp_path / "community"
    community.write_text("public\n")
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
    path = tmp_path / "snmp-rack.toml"
    path.write_text(
        f"""
[racks.r01]
control_period_s = 0.5
power_budget_w = 30000.0

[racks.r01.devices.pdu]
driver = "snmp"
address = "127.0.0.1"
profile = "raritan-pdu2"
version = "2c"
community_file = "{community}"
poll_interval_s = 0.25
{bmcs}"""
    )
    return path


@pytest.mark.hil
@pytest.mark.asyncio
async def test_an_snmp_pdu_meters_the_rack_and_shows_in_metrics(tmp_path: Path) -> None:
    plant = {"n_servers": 2}
    async with hil_rack(rack_config(tmp_path), load=0.8, plant=plant) as rack:
        await rack.wait_until(lambda: rack.value("r01/pdu/outlet_power.2") is not None, 15.0)
        power = rack.value("r01/pdu/power")
        assert power is not None
        assert power == pytest.approx(rack.plant("r01").pdu_readings()["power"], rel=0.1)
        text = await scrape(rack.metrics_url)
    found = samples(text)
    pdu = {("rack", "r01"), ("device", "pdu")}
    assert found[("coolctl_device_up", frozenset(pdu))] == 1.0
    assert found[("coolctl_power_watts", frozenset(pdu))] > 1000.0
    assert found[("coolctl_outlet_power_watts", frozenset({*pdu, ("index", "1")}))] > 100.0
    assert ("coolctl_branch_current_amperes", frozenset({*pdu, ("index", "1")})) in found
    assert ("coolctl_voltage_volts", frozenset(pdu)) in found
    check_with_promtool(text)
