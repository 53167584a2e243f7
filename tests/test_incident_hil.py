"""What an operator meets in an incident, against the daemon controlling the simulated rack (HIL).

tests/configs/hil-full-rack.toml at 5x: Modbus CDU and PDU, MQTT leak rope and flow meter, two
Redfish BMCs. The operator uses the CLI over the control socket, as in tests/test_operator_hil.py.

- The most dangerous setpoints an operator could try at full load (flow 0, flow below the
  minimum per kW, supply above its limit) are refused with their bounds; the most dangerous
  ones the bounds accept (the lowest flow, the warmest supply, together) leave every chip
  under its throttle point.
- During a leak: an override of the stopped pump says the interlock overrules it (CLI and API),
  the caps metric is what the BMCs were told and read back (not what the allocator asked), and
  after the rope is dry and the interlock reset the override takes effect.
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
from coolctl.simulators.faults import apply_fault
from coolctl.tools.testing import HilRack, hil_rack

CONFIG = Path(__file__).parent / "configs" / "hil-full-rack.toml"
THROTTLE_C = 87.0  # the simulated servers' (PlantParams.throttle_temperature_c)


async def cli(rack: HilRack, *args: str) -> int:
    """The CLI as an operator runs it (its own event loop, so on a thread of its own here)."""
    parser = build_parser()
    parsed = parser.parse_args([*args, "--socket", str(rack.socket_path)])
    return await asyncio.to_thread(run_operator_command, parsed, parser)


async def metric(hil: HilRack, name: str, **labels: str) -> float | None:
    async with aiohttp.ClientSession() as session, session.get(hil.metrics_url) as reply:
        text = await reply.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def kinds(rack: HilRack) -> list[str]:
    return [event.kind for event in rack.daemon.recent_events]


@pytest.mark.hil
@pytest.mark.asyncio
async def test_dangerous_setpoints_at_full_load_are_refused_or_bounded_so_no_chip_throttles(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with hil_rack(CONFIG, time_scale=5.0, load=1.0) as rack:
        runtime = rack.daemon.racks["r01"]
        await rack.wait_until(lambda: rack.value("r01/pdu1/power") is not None, 10.0)
        await rack.wait_until(lambda: "failsafe_cleared" in kinds(rack), 10.0)
        capsys.readouterr()

        # what an operator tried: no flow, a trickle, a supply far over its 45 °C limit
        for target, value, why in (
            ("pump.setpoint", "0", "L/min per kW of the rack's"),
            ("pump.setpoint", "120", "L/min per kW of the rack's"),
            ("pump.setpoint", "5000", "high:"),
            ("supply.setpoint", "80", "7 K under the supply over-temperature limit 45 °C"),
        ):
            code = await cli(
                rack, "override", "set", "r01", target, value, "--ttl", "10m", "--reason", "try"
            )
            err = capsys.readouterr().err
            assert code == 1, (target, value)
            assert "is outside its safe bounds" in err and why in err, err
        assert runtime.override_records == {}

        # the bounds, as `override targets` lists them
        assert await cli(rack, "override", "targets", "r01", "--json") == 0
        targets = {t["target"]: t for t in json.loads(capsys.readouterr().out)["targets"]}
        flow_low = targets["pump.setpoint"]["low"]
        supply_high = targets["supply.setpoint"]["high"]
        power_w = rack.value("r01/pdu1/power")
        assert power_w is not None and power_w > 110_000  # full load
        assert flow_low >= 1.5 * power_w / 1000 * 0.97  # 1.5 L/min per kW (power moves a little)
        assert supply_high == 38.0
        assert await cli(rack, "override", "targets", "r01") == 0
        table = capsys.readouterr().out
        assert table.splitlines()[0].split() == ["TARGET", "BOUNDS", "UNIT", "WHY"]
        assert "cdu1/pump_speed_command" in table and "litres_per_minute" not in table

        # the worst the bounds accept: the lowest flow and the warmest supply at once
        for target, value in (("pump.setpoint", flow_low + 1.0), ("supply.setpoint", supply_high)):
            code = await cli(
                rack, "override", "set", "r01", target, f"{value:g}", "--ttl", "10m",
                "--reason", "worst case",
            )  # fmt: skip
            assert code == 0, capsys.readouterr().err
        plant = rack.plant("r01")
        hottest = 0.0
        started = plant.time_s
        while plant.time_s - started < 200.0:  # the chips settle in about two plant minutes
            truth = plant.truth()
            assert not any(truth.hardware_throttling), truth.chip_temperature_c
            hottest = max(hottest, *truth.chip_temperature_c)
            await asyncio.sleep(0.2)
        assert hottest < THROTTLE_C
        assert plant.truth().hardware_throttle_s == 0.0
        assert "server_throttling" not in kinds(rack)
        # the overrides held: the loops ran at the setpoints asked
        loops = runtime.controller.loops
        assert loops["supply"].setpoint_override == supply_high
        assert loops["pump"].setpoint_override is not None
        assert loops["pump"].setpoint_override >= flow_low
        assert await metric(rack, "coolctl_rack_servers_throttling", rack="r01") == 0.0


@pytest.mark.hil
@pytest.mark.asyncio
async def test_a_leak_as_the_operator_sees_it_then_recovery(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with hil_rack(CONFIG, time_scale=5.0) as rack:
        runtime = rack.daemon.racks["r01"]
        await rack.wait_until(lambda: rack.value("r01/sensors1/leak_detected") == 0.0, 10.0)
        await rack.wait_until(lambda: "failsafe_cleared" in kinds(rack), 10.0)
        # the start-up failsafe's end is announced, after its start
        assert kinds(rack).index("startup") < kinds(rack).index("failsafe_cleared")

        apply_fault(
            rack.simulation, "leak", rack="r01", device=None, point=None, value=5.0, duration_s=None
        )
        await rack.wait_until(lambda: "interlock_leak" in kinds(rack), 5.0)
        # the caps figure is what the BMCs were told and read back: both at their minimum
        await rack.wait_until(
            lambda: (
                rack.value("r01/bmc01/power_limit") == 1500.0
                and rack.value("r01/bmc02/power_limit") == 1500.0
            ),
            10.0,
        )
        read_back = sum(rack.value(f"r01/bmc0{i}/power_limit") or 0.0 for i in (1, 2))
        assert await metric(rack, "coolctl_rack_power_caps_watts", rack="r01") == read_back
        assert runtime.caps_w == read_back == 3000.0
        allocation = runtime.allocator.allocation if runtime.allocator else None
        assert allocation is not None and allocation.allocated_w > read_back  # what it asked

        # an override of the stopped pump: accepted, and says the interlock overrules it
        capsys.readouterr()
        code = await cli(
            rack, "override", "set", "r01", "cdu1/pump_speed_command", "0.6", "--ttl", "10m",
            "--reason", "keep coolant moving",
        )  # fmt: skip
        out = capsys.readouterr().out
        assert code == 0
        assert "not in force: the leak interlock holds r01/cdu1/pump_speed_command at 0" in out
        assert await cli(rack, "status", "--json") == 0
        (status,) = json.loads(capsys.readouterr().out)["racks"]
        (override,) = status["overrides"]
        assert override["in_force"] is False and override["overruled_by"] == ["leak"]
        assert status["caps_w"] == 3000.0
        assert await cli(rack, "status") == 0
        assert "override cdu1/pump_speed_command not in force" in capsys.readouterr().out

        # recovery: the rope dries, the operator resets the latched interlock
        apply_fault(
            rack.simulation, "clear", rack="r01", device=None, point=None, value=None,
            duration_s=None,
        )  # fmt: skip
        await rack.wait_until(lambda: rack.value("r01/sensors1/leak_detected") == 0.0, 10.0)
        await rack.wait_until(
            lambda: runtime.supervisor.state.interlocks["leak"].awaiting_reset, 10.0
        )
        assert await cli(rack, "interlock", "reset", "r01", "--reason", "rope dry, hose fixed") == 0
        assert "r01: leak interlock reset" in capsys.readouterr().out
        pump = rack.plant("r01")
        await rack.wait_until(
            lambda: abs(pump.cdu_readings()["pump_speed_command"] - 0.6) < 0.002, 10.0
        )
        assert await cli(rack, "status", "--json") == 0
        (status,) = json.loads(capsys.readouterr().out)["racks"]
        assert status["interlocks"] == [] and status["overrides"][0]["in_force"] is True
        # the audit log has it all, in the operator's words
        assert await cli(rack, "audit", "--json") == 0
        actions = [r["action"] for r in json.loads(capsys.readouterr().out)["audit"]]
        assert "override_set" in actions and "interlock_reset" in actions
