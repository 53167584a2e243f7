"""The shipped profiles of real CDUs, end to end in setpoint mode: the whole daemon drives the
simulated CDU controller through each vendor register map, as it would drive the real unit.

- `orv3-rpu` (the Open Rack v3 RPU2 as rackmon maps it) over Modbus RTU, unit 13, on a virtual
  RS-485 bus (a paced pty pair at 19,200 baud). The RPU has no run command: its control word
  carries the stop (System_Stop), so a leak writes the mode "stopped".
- `kenmec-style-cdu` (coolctl's reconstruction of such controller tables) over Modbus TCP: a
  run coil, an enumerated mode register, status-word bits, a leak input, an inverted
  pump-overload input and an acknowledge coil.

Each test checks what went over the wire by reading it back through the profile (the daemon's
own readings) and by what the simulated CDU accepted. This file is also the model for testing
a profile of one's own (README, "Bringing up a real CDU"): a config naming the profile, then
`hil_rack(config, modbus_rtu=...)`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from coolctl.cli.main import build_parser
from coolctl.cli.operator import run_operator_command
from coolctl.config import ModbusDeviceConfig, RackConfig, load_config
from coolctl.control.supervisor import ActuatorRole
from coolctl.model import CduControlMode, PointId
from coolctl.rack.check import check_profiles
from coolctl.rack.facts import DeviceFactsRecord, device_facts
from coolctl.rack.setpoints import setpoint_actuators, setpoint_plan
from coolctl.simulators.cdu_controller import CduController
from coolctl.simulators.faults import apply_fault
from coolctl.tools.testing import HilRack, hil_rack

CONFIGS = Path(__file__).parent / "configs"
PROFILES = Path(__file__).parent.parent / "drivers" / "profiles"
TIME_SCALE = 5.0
SERVER_IDLE_W, SERVER_MAX_W, SERVERS = 1500.0, 7000.0, 18
FLOW_LPM, SUPPLY_C = 160.0, 35.0


@dataclass(frozen=True)
class Vendor:
    """One vendor profile's HIL set-up, and how its CDU says what it does."""

    name: str
    config: Path
    device: str
    rtu: bool
    stop_point: str  # what a leak writes to stop the CDU, and its stopped value
    stop_value: float
    alarm: str  # a latched alarm the profile reads


VENDORS = (
    Vendor(
        "orv3-rpu",
        CONFIGS / "hil-orv3-rpu-rtu.toml",
        "rpu",
        rtu=True,
        stop_point="cdu_control_mode",
        stop_value=float(CduControlMode.STOPPED),
        alarm="filter_clogged_alarm",
    ),
    Vendor(
        "kenmec-style-cdu",
        CONFIGS / "hil-kenmec-style-cdu.toml",
        "cdu1",
        rtu=False,
        stop_point="cdu_run_command",
        stop_value=0.0,
        alarm="pump_1_fault",
    ),
)
BY_NAME = {vendor.name: vendor for vendor in VENDORS}


def load_for(rack_power_w: float) -> float:
    return (rack_power_w / SERVERS - SERVER_IDLE_W) / (SERVER_MAX_W - SERVER_IDLE_W)


def vendor_rack(
    vendor: Vendor, rack_power_w: float = 60_000.0
) -> AbstractAsyncContextManager[HilRack]:
    return hil_rack(
        vendor.config, time_scale=TIME_SCALE, load=load_for(rack_power_w), modbus_rtu=vendor.rtu
    )


def cdu(rack: HilRack) -> CduController:
    return rack.simulation.cdus["r01"]


def point(vendor: Vendor, name: str) -> str:
    return f"r01/{vendor.device}/{name}"


def kinds(rack: HilRack) -> list[str]:
    return [event.kind for event in rack.daemon.recent_events]


async def cli(rack: HilRack, *args: str) -> int:
    """The CLI as an operator runs it (its own event loop, so on a thread of its own here)."""
    parser = build_parser()
    parsed = parser.parse_args([*args, "--socket", str(rack.socket_path)])
    return await asyncio.to_thread(run_operator_command, parsed, parser)


async def metrics(rack: HilRack) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """One scrape of the daemon's /metrics: (name, labels) -> value."""
    async with aiohttp.ClientSession() as session, session.get(rack.metrics_url) as reply:
        assert reply.status == 200
        text = await reply.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


def settled(rack: HilRack, vendor: Vendor) -> bool:
    flow = rack.value(point(vendor, "flow"))
    supply = rack.value(point(vendor, "supply_temperature"))
    return (
        flow is not None
        and supply is not None
        and abs(flow - FLOW_LPM) <= 3.0
        and abs(supply - SUPPLY_C) <= 0.5
    )


@pytest.mark.hil
@pytest.mark.asyncio
@pytest.mark.parametrize("name", list(BY_NAME))
async def test_the_daemon_drives_the_cdu_through_its_vendor_profile(name: str) -> None:
    vendor = BY_NAME[name]
    async with vendor_rack(vendor) as rack:
        controller = cdu(rack)
        device = rack.config.racks["r01"].devices[vendor.device]
        assert isinstance(device, ModbusDeviceConfig)
        assert device.transport == ("rtu" if vendor.rtu else "tcp")
        assert controller.mode is CduControlMode.MANUAL  # as the simulated CDU starts
        await rack.wait_until(lambda: controller.mode is CduControlMode.AUTO_FLOW, 15.0)
        # read back through the profile: the device's raw code, mapped to coolctl's state
        auto_flow = float(CduControlMode.AUTO_FLOW)
        await rack.wait_until(
            lambda: rack.value(point(vendor, "cdu_control_mode")) == auto_flow, 5.0
        )
        assert rack.value(point(vendor, "cdu_remote")) == 1.0
        # the CDU's own loops follow the setpoints coolctl wrote
        await rack.wait_until(lambda: settled(rack, vendor), 60.0)
        assert controller.setpoint("flow_setpoint") == pytest.approx(FLOW_LPM)
        assert controller.setpoint("supply_temperature_setpoint") == pytest.approx(SUPPLY_C)
        assert rack.value(point(vendor, "flow_setpoint")) == pytest.approx(FLOW_LPM)
        written = {w.point for w in rack.simulation.writes("r01", vendor.device)}
        assert {"supply_temperature_setpoint", "flow_setpoint", "cdu_control_mode"} <= written
        assert not written & {"pump_speed_command", "valve_command"}
        assert controller.writes_refused == 0
        # the CDU's own state as metrics: its mode one series per state, remote, not held
        scraped = await metrics(rack)
        device_labels = {"rack": "r01", "device": vendor.device}
        for mode in CduControlMode:
            expected = 1.0 if mode is CduControlMode.AUTO_FLOW else 0.0
            key = ("coolctl_cdu_control_mode", labels(**device_labels, mode=mode.name.lower()))
            assert scraped[key] == expected, mode
        assert scraped[("coolctl_cdu_remote", labels(**device_labels))] == 1.0
        assert scraped[("coolctl_cdu_local", labels(**device_labels))] == 0.0
        poll_s = scraped[("coolctl_device_poll_duration_seconds", labels(**device_labels))]
        polls = scraped[("coolctl_device_polls_total", labels(**device_labels))]
        transport = "RTU 19,200 baud" if vendor.rtu else "TCP"
        print(
            f"\n{vendor.name} over {transport}: last poll {poll_s * 1e3:.1f} ms, {polls:.0f} polls"
        )


@pytest.mark.hil
@pytest.mark.asyncio
@pytest.mark.parametrize("name", list(BY_NAME))
async def test_a_leak_stops_the_cdu_through_its_vendor_profile(name: str) -> None:
    vendor = BY_NAME[name]
    async with vendor_rack(vendor) as rack:
        controller = cdu(rack)
        await rack.wait_until(lambda: controller.mode is CduControlMode.AUTO_FLOW, 15.0)
        await rack.wait_until(lambda: rack.value(point(vendor, "leak_detected")) == 0.0, 5.0)
        rack.plant("r01").start_leak(5.0)
        await rack.wait_until(lambda: "interlock_leak" in kinds(rack), 10.0)
        await rack.wait_until(lambda: not controller.running, 10.0)
        # read back through the profile: the stop the daemon wrote is what the CDU reports
        stop = point(vendor, vendor.stop_point)
        await rack.wait_until(lambda: rack.value(stop) == vendor.stop_value, 5.0)
        await rack.wait_until(lambda: (rack.value(point(vendor, "flow")) or 0.0) < 5.0, 20.0)
        decision = rack.daemon.racks["r01"].decision
        assert decision is not None and "leak" in decision.interlocks
        stops = [
            w.value
            for w in rack.simulation.writes("r01", vendor.device)
            if w.point == vendor.stop_point
        ]
        assert stops and stops[-1] == vendor.stop_value


@pytest.mark.hil
@pytest.mark.asyncio
@pytest.mark.parametrize("name", list(BY_NAME))
async def test_a_latched_alarm_is_acknowledged_through_its_vendor_profile(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    vendor = BY_NAME[name]
    alarm = point(vendor, vendor.alarm)
    async with vendor_rack(vendor) as rack:
        await rack.wait_until(lambda: rack.value(alarm) == 0.0, 10.0)
        apply_fault(rack.simulation, "cdu_alarm", rack="r01", point=vendor.alarm)
        await rack.wait_until(lambda: "cdu_alarm" in kinds(rack), 10.0)
        assert rack.value(alarm) == 1.0
        capsys.readouterr()
        assert await cli(rack, "alarms", "r01") == 0
        listed = capsys.readouterr().out
        assert vendor.alarm in listed and "ACTIVE" in listed
        key = (
            "coolctl_cdu_alarm_active",
            labels(rack="r01", device=vendor.device, alarm=vendor.alarm),
        )
        assert (await metrics(rack))[key] == 1.0
        apply_fault(rack.simulation, "clear", rack="r01")  # the cause goes; the alarm latches
        assert cdu(rack).read_points()[vendor.alarm] == 1.0
        assert await cli(rack, "alarms", "ack", "r01", "--reason", "checked at the unit") == 0
        await rack.wait_until(lambda: "cdu_alarm_cleared" in kinds(rack), 10.0)
        assert rack.value(alarm) == 0.0
        assert (await metrics(rack))[key] == 0.0
        acks = [
            w
            for w in rack.simulation.writes("r01", vendor.device)
            if w.point == "alarm_acknowledge"
        ]
        assert [w.value for w in acks] == [1.0]  # the profile's acknowledge write, once


@pytest.mark.hil
@pytest.mark.asyncio
@pytest.mark.parametrize("name", list(BY_NAME))
async def test_a_cdu_its_panel_took_is_left_alone_through_its_vendor_profile(name: str) -> None:
    """Neither map has a "local" mode code: the remote bit says it, and the mode register
    keeps showing the mode the panel runs the CDU in."""
    vendor = BY_NAME[name]
    async with vendor_rack(vendor) as rack:
        controller = cdu(rack)
        runtime = rack.daemon.racks["r01"]
        await rack.wait_until(lambda: controller.mode is CduControlMode.AUTO_FLOW, 15.0)
        apply_fault(rack.simulation, "cdu_local", rack="r01")
        await rack.wait_until(lambda: "cdu_local" in kinds(rack), 10.0)
        assert rack.value(point(vendor, "cdu_remote")) == 0.0
        local_key = ("coolctl_cdu_local", labels(rack="r01", device=vendor.device))
        assert (await metrics(rack))[local_key] == 1.0
        writes_before = len(rack.simulation.writes("r01", vendor.device))
        refused_before = controller.writes_refused
        runs = runtime.tick_stats.runs
        await rack.wait_until(lambda: runtime.tick_stats.runs >= runs + 10, 10.0)
        assert len(rack.simulation.writes("r01", vendor.device)) == writes_before
        assert controller.writes_refused == refused_before
        apply_fault(rack.simulation, "clear", rack="r01")
        await rack.wait_until(lambda: "cdu_remote" in kinds(rack), 10.0)
        assert (await metrics(rack))[local_key] == 0.0


# --- what setpoint mode makes of each vendor profile, offline ---------------------------------


def rack_facts(config: Path) -> tuple[RackConfig, dict[str, DeviceFactsRecord]]:
    rack = load_config(config).racks["r01"]
    return rack, {device.id: device_facts(device) for device in rack.devices.values()}


def test_the_orv3_rpu_is_stopped_through_its_control_word() -> None:
    rack, facts = rack_facts(BY_NAME["orv3-rpu"].config)
    plan = setpoint_plan(rack, facts)
    assert plan.run is None and plan.mode == PointId("r01", "rpu", "cdu_control_mode")
    mode = next(a for a in setpoint_actuators(plan) if a.point == plan.mode)
    assert mode.role is ActuatorRole.PUMP  # the supervisor's pump responses stop it
    assert mode.on_leak == mode.on_low_level == float(CduControlMode.STOPPED)
    assert mode.minimum == mode.maximum == mode.failsafe == float(CduControlMode.AUTO_FLOW)
    assert facts["rpu"].writable["cdu_control_mode"].codes == frozenset({0, 1, 2, 4})


def test_the_kenmec_style_cdu_is_stopped_by_its_run_coil() -> None:
    rack, facts = rack_facts(BY_NAME["kenmec-style-cdu"].config)
    plan = setpoint_plan(rack, facts)
    assert plan.run == PointId("r01", "cdu1", "cdu_run_command")
    mode = next(a for a in setpoint_actuators(plan) if a.point == plan.mode)
    assert mode.role is ActuatorRole.SETPOINT and mode.on_leak is None


def test_a_cdu_that_cannot_be_stopped_or_lacks_the_mode_is_refused() -> None:
    rack, facts = rack_facts(BY_NAME["orv3-rpu"].config)
    rpu = facts["rpu"]
    mode = rpu.writable["cdu_control_mode"]
    no_stop = dataclasses.replace(mode, codes=frozenset({1, 2, 4}))
    writable = {**rpu.writable, "cdu_control_mode": no_stop}
    with pytest.raises(ValueError, match=r'cdu_run_command writable .* "stopped" state'):
        setpoint_plan(rack, {**facts, "rpu": dataclasses.replace(rpu, writable=writable)})
    no_flow = dataclasses.replace(mode, codes=frozenset({0, 1, 3}))
    writable = {**rpu.writable, "cdu_control_mode": no_flow}
    with pytest.raises(ValueError, match="no state auto_flow"):
        setpoint_plan(rack, {**facts, "rpu": dataclasses.replace(rpu, writable=writable)})


def test_check_config_wants_the_valve_only_in_direct_mode(tmp_path: Path) -> None:
    config = BY_NAME["orv3-rpu"].config
    assert check_profiles(load_config(config)) == []
    direct = tmp_path / "direct.toml"
    direct.write_text(config.read_text().replace('cdu_control = "setpoints"', ""))
    problems = check_profiles(load_config(direct))
    assert any("'valve_command' is not writable in profile 'orv3-rpu'" in p for p in problems)


@pytest.mark.hil
@pytest.mark.asyncio
async def test_a_write_enable_the_profile_declares_is_written_before_each_setpoint(
    tmp_path: Path,
) -> None:
    """Neither shipped CDU map names a write-enable, so this one is the test's own: the
    Kenmec-style map with an [[unlock]] register. The simulated CDU refuses the setpoints and
    the mode until it is written, and locks again after each write."""
    profile = tmp_path / "locked-cdu.toml"
    text = (PROFILES / "kenmec-style-cdu.toml").read_text()
    profile.write_text(
        text.replace('name = "kenmec-style-cdu"', 'name = "locked-cdu"')
        + '\n[[unlock]]\ntable = "holding"\naddress = 5010\nvalue = 0xA5A5\nrelock = 0\n'
        + 'points = ["supply_temperature_setpoint", "flow_setpoint", "cdu_control_mode"]\n'
    )
    config = tmp_path / "locked.toml"
    vendor = BY_NAME["kenmec-style-cdu"]
    config.write_text(
        vendor.config.read_text().replace('"kenmec-style-cdu"', json.dumps(str(profile)))
    )
    async with hil_rack(config, time_scale=TIME_SCALE, load=load_for(60_000.0)) as rack:
        controller = cdu(rack)
        await rack.wait_until(lambda: controller.mode is CduControlMode.AUTO_FLOW, 15.0)
        await rack.wait_until(lambda: settled(rack, vendor), 60.0)
        assert controller.setpoint("flow_setpoint") == pytest.approx(FLOW_LPM)
        assert controller.setpoint("supply_temperature_setpoint") == pytest.approx(SUPPLY_C)
        assert "write_refused" not in kinds(rack)
        server = rack.simulation.servers[("r01", vendor.device)]
        assert server.registers("supply_temperature_setpoint") == [round(SUPPLY_C * 10)]
