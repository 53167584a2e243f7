"""HIL: a rack on two feeds, each an SNMP PDU (apc-rpdu2) with its servers on branch 1, all
four servers at full load under an ample budget. The branch breakers (63 A, derated to 0.8)
cannot carry four full servers alone, so coolctl lowers the caps until either feed could carry
the whole rack; then feed B fails (its PDU goes silent and feed A takes every server's power).
No breaker on feed A goes over its rating, measured by the PDU, and the caps had been lowered
before the failure, not after it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coolctl.tools.testing import HilRack, eventually, hil_rack

SERVERS = 4
RATING_A = 63.0
DERATING = 0.8
VOLTS = 230.0
BRANCH_LIMIT_W = DERATING * RATING_A * VOLTS  # 11 592 W for the four servers' caps together


def rack_config(tmp_path: Path) -> Path:
    community = tmp_path / "community"
    community.write_text("public\n")
    pdus = "".join(
        f"""
[racks.r01.devices.pdu{feed}]
driver = "snmp"
address = "127.0.0.1"
profile = "apc-rpdu2"
version = "2c"
community_file = "{community}"
feed = "{feed}"
branch_rating_a = {RATING_A}
poll_interval_s = 0.25
timeout_s = 0.2
"""
        for feed in ("a", "b")
    )
    bmcs = "".join(
        f"""
[racks.r01.devices.bmc{i}]
driver = "redfish"
kind = "server"
url = "https://127.0.0.1:1"
username = "admin"
poll_interval_s = 0.25
timeout_s = 2.0
cap_min_w = 1500.0
cap_max_w = 7000.0
branches = ["pdua/1", "pdub/1"]
"""
        for i in range(SERVERS)
    )
    text = f"""
[site]
name = "breakers-hil"

[racks.r01]
control_period_s = 0.25
power_budget_w = 100000.0

[racks.r01.power]
derating = {DERATING}
voltage_v = {VOLTS}
overhead_w = 500.0
{pdus}{bmcs}"""
    path = tmp_path / "breakers.toml"
    path.write_text(text)
    return path


def caps(rack: HilRack) -> list[float | None]:
    return [rack.value(f"r01/bmc{i}/power_limit") for i in range(SERVERS)]


def branch_a(rack: HilRack) -> float | None:
    return rack.value("r01/pdua/branch_current.1")


@pytest.mark.hil
@pytest.mark.asyncio
async def test_losing_a_feed_overloads_no_breaker_on_the_other(tmp_path: Path) -> None:
    plant = {"n_servers": SERVERS, "cap_tau_s": 0.1}
    async with hil_rack(rack_config(tmp_path), load=1.0, plant=plant) as rack:
        # the caps come down to what one branch can carry alone (they start at 7 kW each)
        await rack.wait_until(
            lambda: (
                all(c is not None for c in caps(rack))
                and sum(c or 0.0 for c in caps(rack)) <= BRANCH_LIMIT_W + 1.0
            ),
            20.0,
        )
        lowered = caps(rack)
        assert all(c is not None and c < 7000.0 for c in lowered)
        # servers follow their caps: each feed carries half of them, well under its breaker
        half_a = RATING_A * DERATING / 2
        await rack.wait_until(lambda: (branch_a(rack) or 1e9) <= half_a + 1.0, 10.0)

        # feed B fails: its PDU stops answering and feed A takes every server's whole power
        pdu_a = rack.simulation.snmp[("r01", "pdua")]
        pdu_b = rack.simulation.snmp[("r01", "pdub")]
        pdu_b.faults.silent = True
        pdu_b.pdu.share = 0.0
        pdu_a.pdu.share = 1.0
        await rack.wait_until(lambda: (branch_a(rack) or 0.0) > half_a + 2.0, 5.0)
        polls = rack.daemon.poll_stats[("r01", "pdua")]
        seen: list[float] = []
        for _ in range(12):  # twelve polls of feed A after the failure (three seconds' worth)
            runs = polls.runs
            await eventually(lambda runs=runs: polls.runs > runs, 10.0, what="a poll of feed A")
            current = branch_a(rack)
            if current is not None:
                seen.append(current)
        assert seen and max(seen) <= RATING_A, seen  # never over the breaker's rating
        assert max(seen) <= RATING_A * DERATING + 0.5  # nor over its derated limit
        # no cap had to rise for that; they stay within what one branch may carry
        assert sum(c or 0.0 for c in caps(rack)) <= BRANCH_LIMIT_W + 1.0
