"""The safety responses through the whole daemon, against the simulated rack (HIL).

The supervisor's logic is unit-tested in test_supervisor.py; these tests check its wiring: that
what the supervisor decides reaches the devices and reads back there. Every response is checked
on the device side (the value the daemon polls back from the simulated CDU or BMC), not in the
daemon's own bookkeeping.

The configs are tests/configs/hil-*.toml (time compressed five-fold) with a few keys changed
per test; `edited` writes the changed copy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from coolctl.model import PointId, RackMode, Source
from coolctl.simulators.faults import apply_fault
from coolctl.simulators.live import DeviceWrite
from coolctl.tools.testing import HilRack, hil_rack

CONFIGS = Path(__file__).parent / "configs"
FULL = CONFIGS / "hil-full-rack.toml"  # Modbus CDU and PDU, MQTT sensors, two Redfish BMCs
MQTT = CONFIGS / "hil-mqtt-rack.toml"  # the same without the BMCs
BMCS = ("bmc01", "bmc02")
CAP_MIN_W, CAP_MAX_W = 1500.0, 7000.0
SCALE = 5.0


def edited(tmp_path: Path, base: Path, *changes: tuple[str, str]) -> Path:
    """`base` with each (old, new) text replaced once; every old text must be there."""
    text = base.read_text()
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / base.name
    path.write_text(text)
    return path


def kinds(rack: HilRack) -> list[str]:
    return [event.kind for event in rack.daemon.recent_events]


def read_back(rack: HilRack, device: str, point: str) -> Callable[[], float | None]:
    """The value the daemon last polled from the device: what the device holds."""
    return lambda: rack.value(f"r01/{device}/{point}")


def caps_read_back(rack: HilRack) -> list[float | None]:
    return [rack.value(f"r01/{bmc}/power_limit") for bmc in BMCS]


def commanded_by(rack: HilRack, device: str, point: str, interlock: str) -> bool:
    """The last command sent to the actuator came from `interlock` (its label, e.g.
    "over-temperature"), whatever other cause also asked for the same value."""
    channel = rack.daemon.racks["r01"].actuators[PointId("r01", device, point)]
    command = channel.stats.last_command
    return (
        command is not None
        and command.source is Source.INTERLOCK
        and f"{interlock} interlock" in command.reason
    )


def fault(rack: HilRack, kind: str, **kwargs: object) -> None:
    arguments: dict[str, object] = {"device": None, "point": None, "value": None}
    arguments.update(kwargs)
    apply_fault(rack.simulation, kind, rack="r01", duration_s=None, **arguments)  # type: ignore[arg-type]


async def running(rack: HilRack) -> None:
    """Wait until the daemon controls the rack from good readings, every cap read back."""
    runtime = rack.daemon.racks["r01"]
    await rack.wait_until(
        lambda: runtime.decision is not None and not runtime.decision.failsafe, 15.0
    )
    if "bmc01" in rack.config.racks["r01"].devices:
        await rack.wait_until(lambda: None not in caps_read_back(rack), 15.0)


async def metric(hil: HilRack, name: str, **labels: str) -> float | None:
    """One sample of `name` from the daemon's /metrics."""
    reader, writer = await asyncio.open_connection(*hil.metrics_url[7:].split("/")[0].split(":"))
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
    await writer.drain()
    body = (await reader.read()).decode()
    writer.close()
    text = body.split("\r\n\r\n", 1)[1]
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


# -- leak ---------------------------------------------------------------------------------------


@pytest.mark.hil
@pytest.mark.asyncio
async def test_a_leak_on_a_rack_with_bmcs_drops_every_cap_to_its_minimum_then_stops_the_pump(
    tmp_path: Path,
) -> None:
    config = edited(
        tmp_path,
        FULL,
        ('leak_response = "stop"', 'leak_response = "stop"\nleak_caps_timeout_s = 1.0'),
    )
    async with hil_rack(config, time_scale=SCALE, plant={"initial_valve": 0.5}) as rack:
        await running(rack)
        await rack.wait_until(lambda: caps_read_back(rack) == [CAP_MAX_W] * 2, 10.0)
        fault(rack, "leak", value=5.0)
        await rack.wait_until(lambda: "interlock_leak" in kinds(rack), 10.0)
        # the caps fall first, and the BMCs report them
        await rack.wait_until(lambda: caps_read_back(rack) == [CAP_MIN_W, CAP_MIN_W], 10.0)
        # then the pump stops (16 servers without BMCs keep the PDU above what the caps
        # could bring it to, so the pump waits for leak_caps_timeout_s)
        pump = read_back(rack, "cdu1", "pump_speed_command")
        await rack.wait_until(lambda: pump() == 0.0, 10.0)
        assert "leak_caps_unconfirmed" in kinds(rack)  # the wait ran out: pump stopped anyway
        decision = rack.daemon.racks["r01"].decision
        assert decision is not None and "leak" in decision.interlocks
        # and both stay there while the leak is latched
        ticks = rack.daemon.racks["r01"].tick_stats.runs
        await rack.wait_until(lambda: rack.daemon.racks["r01"].tick_stats.runs >= ticks + 5, 10.0)
        assert caps_read_back(rack) == [CAP_MIN_W, CAP_MIN_W] and pump() == 0.0


@pytest.mark.hil
@pytest.mark.asyncio
async def test_the_mqtt_fast_path_stops_the_pump_before_the_next_tick(tmp_path: Path) -> None:
    """With a 5 s control period, the leak message itself stops the pump: the pump's stop is
    written and read back before the tick after the leak has run."""
    config = edited(
        tmp_path,
        MQTT,
        ("control_period_s = 0.2", "control_period_s = 5.0"),
        ("failsafe_after_s = 0.6", "failsafe_after_s = 15.0"),
        ('leak_response = "stop"', 'leak_response = "stop"\nleak_debounce_s = 0.0'),
    )
    async with hil_rack(config, time_scale=SCALE, plant={"initial_valve": 0.5}) as rack:
        runtime = rack.daemon.racks["r01"]
        await rack.wait_until(lambda: rack.value("r01/sensors1/leak_detected") == 0.0, 10.0)
        pump = rack.daemon.racks["r01"].actuators[_pump(rack)]
        # just after a tick: the next one is a whole period away
        ticks = runtime.tick_stats.runs
        await rack.wait_until(lambda: runtime.tick_stats.runs > ticks, 10.0, poll_s=0.005)
        ticks = runtime.tick_stats.runs
        leaked = time.monotonic()
        fault(rack, "leak", value=5.0)
        await rack.wait_until(lambda: pump.stats.last_written == 0.0, 10.0, poll_s=0.002)
        stopped = time.monotonic()
        assert runtime.tick_stats.runs == ticks, "the pump stopped only at the next tick"
        writes = [w for w in rack.simulation.writes("r01", "cdu1") if w.point == pump.point.name]
        assert writes[-1].value == 0.0 and writes[-1].wall_time_s >= leaked
        print(
            "\nfast path: leak injected -> pump stop read back in"
            f" {1e3 * (stopped - leaked):.0f} ms"
        )


def _pump(rack: HilRack) -> PointId:
    return next(p for p in rack.daemon.racks["r01"].actuators if p.name == "pump_speed_command")


@pytest.mark.hil
@pytest.mark.asyncio
async def test_leak_response_safe_speed_slows_the_pump_to_its_safe_speed(tmp_path: Path) -> None:
    config = edited(
        tmp_path,
        MQTT,
        ('leak_response = "stop"', 'leak_response = "safe_speed"\npump_safe_speed = 0.3'),
    )
    async with hil_rack(config, time_scale=SCALE, plant={"initial_valve": 0.5}) as rack:
        await running(rack)
        pump = read_back(rack, "cdu1", "pump_speed_command")
        await rack.wait_until(lambda: (pump() or 0.0) > 0.35, 10.0)  # running faster
        fault(rack, "leak", value=5.0)
        await rack.wait_until(lambda: "interlock_leak" in kinds(rack), 10.0)
        await rack.wait_until(lambda: pump() == pytest.approx(0.3, abs=1e-3), 5.0)
        ticks = rack.daemon.racks["r01"].tick_stats.runs
        await rack.wait_until(lambda: rack.daemon.racks["r01"].tick_stats.runs >= ticks + 5, 10.0)
        assert pump() == pytest.approx(0.3, abs=1e-3)  # not stopped, not back to the loop


# -- over-temperature and pump failure ------------------------------------------------------------


@pytest.mark.hil
@pytest.mark.asyncio
async def test_over_temperature_opens_pump_and_valve_fully_and_drops_the_caps() -> None:
    async with hil_rack(FULL, time_scale=SCALE, plant={"initial_valve": 0.3}) as rack:
        await running(rack)
        await rack.wait_until(lambda: caps_read_back(rack) == [CAP_MAX_W] * 2, 10.0)
        # the rack inlet sensor climbs 2 °C per plant second (10 °C per wall second) past 45 °C
        fault(rack, "sensor_drift", device="sensors1", point="inlet_temperature", value=2.0)
        await rack.wait_until(lambda: "interlock_over_temperature" in kinds(rack), 10.0)
        pump = read_back(rack, "cdu1", "pump_speed_command")
        valve = read_back(rack, "cdu1", "valve_command")
        await rack.wait_until(
            lambda: pump() == 1.0 and valve() == 1.0 and caps_read_back(rack) == [CAP_MIN_W] * 2,
            10.0,
        )
        decision = rack.daemon.racks["r01"].decision
        assert decision is not None and "over_temperature" in decision.interlocks
        for device, point in [("cdu1", "pump_speed_command"), ("cdu1", "valve_command")] + [
            (bmc, "power_limit") for bmc in BMCS
        ]:
            assert commanded_by(rack, device, point, "over-temperature"), point


@pytest.mark.hil
@pytest.mark.asyncio
async def test_pump_failure_without_a_standby_drops_the_caps_after_the_changeover_wait() -> None:
    async with hil_rack(FULL, time_scale=SCALE, plant={"initial_valve": 0.5}) as rack:
        await running(rack)
        await rack.wait_until(lambda: caps_read_back(rack) == [CAP_MAX_W] * 2, 10.0)
        fault(rack, "pump_fail")
        await rack.wait_until(lambda: "interlock_pump_failure" in kinds(rack), 10.0)
        await rack.wait_until(lambda: "pump_failure_caps" in kinds(rack), 10.0)
        await rack.wait_until(lambda: caps_read_back(rack) == [CAP_MIN_W] * 2, 10.0)
        assert rack.daemon.racks["r01"].supervisor.state.pump_failure_caps
        # the caps are the pump failure's (the stopped pump may trip loss of flow as well)
        assert all(commanded_by(rack, bmc, "power_limit", "pump failure") for bmc in BMCS)
        assert "standby_took_over" not in kinds(rack)


@pytest.mark.hil
@pytest.mark.asyncio
async def test_pump_failure_with_a_standby_that_takes_over_spares_the_caps() -> None:
    # the plant's standby takes over after 3 s of plant time (0.6 s wall): long enough for the
    # daemon to see the duty pump stop, well within the config's standby_changeover_s (2 s)
    plant = {"initial_valve": 0.5, "standby_pump": True, "standby_changeover_s": 3.0}
    async with hil_rack(FULL, time_scale=SCALE, plant=plant) as rack:
        await running(rack)
        await rack.wait_until(lambda: caps_read_back(rack) == [CAP_MAX_W] * 2, 10.0)
        before = caps_read_back(rack)
        fault(rack, "pump_fail")
        await rack.wait_until(lambda: "interlock_pump_failure" in kinds(rack), 10.0)
        await rack.wait_until(lambda: "standby_took_over" in kinds(rack), 10.0)
        assert rack.value("r01/cdu1/standby_pump_active") == 1.0
        # well past the changeover wait: no caps were applied for the failure
        runtime = rack.daemon.racks["r01"]
        ticks = runtime.tick_stats.runs
        await rack.wait_until(lambda: runtime.tick_stats.runs >= ticks + 15, 15.0)
        assert "pump_failure_caps" not in kinds(rack)
        state = runtime.supervisor.state
        assert not state.pump_failure_caps
        assert all(cap is not None and cap > CAP_MIN_W for cap in caps_read_back(rack)), before


# -- the budget ----------------------------------------------------------------------------------


async def publish_budget(rack: HilRack, watts: float) -> None:
    host, port = (rack.mqtt_broker or "").rsplit(":", 1)
    async with aiomqtt.Client(host, port=int(port)) as coordinator:
        await coordinator.publish(
            "row-a/r01/budget", f'{{"watts": {watts}}}'.encode(), qos=1, retain=True
        )


@pytest.mark.hil
@pytest.mark.asyncio
async def test_the_budget_holds_in_manual_mode() -> None:
    async with hil_rack(FULL, time_scale=SCALE, plant={"initial_valve": 0.5}) as rack:
        await running(rack)
        runtime = rack.daemon.racks["r01"]
        await rack.wait_until(lambda: caps_read_back(rack) == [CAP_MAX_W] * 2, 10.0)
        await rack.service.plane.set_mode("r01", RackMode.MANUAL, "test", "budget in manual")
        pump_writes = len(rack.simulation.writes("r01", "cdu1"))
        # 18 servers at 60 % draw about 86 kW, 16 of them without caps: 85 kW leaves the two
        # capped servers a few kW between them
        await publish_budget(rack, 85_000.0)
        await rack.wait_until(lambda: runtime.power_budget_w == 85_000.0, 10.0)

        def capped() -> bool:
            allocation = runtime.allocator.allocation if runtime.allocator else None
            caps = caps_read_back(rack)
            return (
                allocation is not None
                and allocation.available_w is not None
                and None not in caps
                and sum(c for c in caps if c is not None) <= allocation.available_w + 1.0
                and all(c is not None and c < CAP_MAX_W for c in caps)
            )

        await rack.wait_until(capped, 10.0)
        assert runtime.mode == RackMode.MANUAL
        # manual: the loops wrote nothing to the CDU meanwhile
        assert len(rack.simulation.writes("r01", "cdu1")) == pump_writes


@pytest.mark.hil
@pytest.mark.asyncio
async def test_an_infeasible_budget_shows_in_its_metric_and_event() -> None:
    async with hil_rack(FULL, time_scale=SCALE, plant={"initial_valve": 0.5}) as rack:
        await running(rack)
        assert await metric(rack, "coolctl_rack_power_budget_feasible", rack="r01") == 1.0
        runtime = rack.daemon.racks["r01"]
        runtime.power_budget_w = 20_000.0  # far below what the uncapped servers draw
        await rack.wait_until(lambda: "power_budget_infeasible" in kinds(rack), 10.0)
        event = next(e for e in rack.daemon.recent_events if e.kind == "power_budget_infeasible")
        assert event.severity.value == "critical" and "cannot be met" in event.message
        assert await metric(rack, "coolctl_rack_power_budget_feasible", rack="r01") == 0.0
        await rack.wait_until(lambda: caps_read_back(rack) == [CAP_MIN_W] * 2, 10.0)
        runtime.power_budget_w = 200_000.0  # what a config reload would do
        await rack.wait_until(lambda: "power_budget_met" in kinds(rack), 10.0)
        assert await metric(rack, "coolctl_rack_power_budget_feasible", rack="r01") == 1.0


# -- reload --------------------------------------------------------------------------------------


@pytest.mark.hil
@pytest.mark.asyncio
async def test_a_reloaded_config_takes_effect_and_overrides_survive_it(tmp_path: Path) -> None:
    config = edited(tmp_path, MQTT)
    async with hil_rack(config, time_scale=SCALE, plant={"initial_valve": 0.5}) as rack:
        await running(rack)
        plane = rack.service.plane
        await plane.set_override("r01", "cdu1/valve_command", 0.6, None, "test", "survives")
        valve = read_back(rack, "cdu1", "valve_command")
        await rack.wait_until(lambda: valve() == pytest.approx(0.6, abs=1e-3), 10.0)
        old = rack.daemon
        assert old.racks["r01"].controller.loops["pump"].spec.setpoint == 160.0
        config.write_text(config.read_text().replace("setpoint = 160.0", "setpoint = 150.0", 1))
        await rack.service.reload()
        new = rack.daemon
        assert new is not old and "reloaded" in kinds(rack)
        runtime = new.racks["r01"]
        assert runtime.controller.loops["pump"].spec.setpoint == 150.0
        assert "cdu1/valve_command" in runtime.override_records
        # the new daemon's loop writes the pump for the new setpoint; the device holds it
        pump = runtime.actuators[_pump(rack)]
        pump_read_back = read_back(rack, "cdu1", "pump_speed_command")

        def new_setpoint_written() -> bool:
            command, written = pump.stats.last_command, pump.stats.last_written
            return (
                command is not None
                and "setpoint 150" in command.reason
                and written is not None
                and pump_read_back() == pytest.approx(written, abs=1e-3)
            )

        await rack.wait_until(new_setpoint_written, 10.0)
        # the new daemon starts in failsafe until the MQTT sensors are heard again (the valve
        # to its failsafe 1.0), then the override holds the valve again
        await rack.wait_until(lambda: valve() == pytest.approx(0.6, abs=1e-3), 15.0)
        assert runtime.decision is not None and not runtime.decision.failsafe


@pytest.mark.hil
@pytest.mark.asyncio
async def test_reload_failed_is_emitted_when_the_new_daemon_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coolctl.daemon.runtime import Daemon
    from coolctl.ops.protocol import ControlError

    config = edited(tmp_path, MQTT)
    async with hil_rack(config, time_scale=SCALE, plant={"initial_valve": 0.5}) as rack:
        await running(rack)
        old = rack.daemon

        starts = []

        class Broken(Daemon):
            async def start(self) -> None:
                starts.append(self)
                if len(starts) == 1:  # the reloaded daemon fails; the old config's starts
                    raise OSError("no such device")
                await super().start()

        monkeypatch.setattr("coolctl.daemon.service.Daemon", Broken)
        with pytest.raises(ControlError, match="old config kept"):
            await rack.service.reload()
        back = rack.daemon
        assert back is not old and back.config is old.config and len(starts) == 2
        assert rack.service.plane.daemon is back and rack.metrics.collectors.daemon is back
        failed = [e for e in back.recent_events if e.kind == "reload_failed"]
        assert len(failed) == 1 and "no such device" in failed[0].message
        assert failed[0].severity.value == "warning"
        # the old config controls the rack again, from good readings
        runtime = back.racks["r01"]
        await rack.wait_until(
            lambda: runtime.decision is not None and not runtime.decision.failsafe, 10.0
        )
        ticks = runtime.tick_stats.runs
        await rack.wait_until(lambda: runtime.tick_stats.runs >= ticks + 3, 5.0)


# -- a device that never reads back --------------------------------------------------------------


@pytest.mark.hil
@pytest.mark.asyncio
async def test_a_valve_that_never_reads_back_is_retried_with_backoff_not_every_tick() -> None:
    async with hil_rack(
        CONFIGS / "hil-rack.toml", time_scale=SCALE, plant={"initial_valve": 0.3}
    ) as rack:
        await running(rack)
        cdu = rack.simulation.points[("r01", "cdu1")]
        # the CDU acknowledges valve writes but its valve stays where it is: the register
        # reads back the write, then the plant's value again at the next refresh
        accept = cdu.write_point

        def valve_stays(name: str, value: float) -> None:
            if name != "valve_command":
                accept(name, value)
                return
            cdu.writes.append(DeviceWrite(time.monotonic(), cdu.plant.time_s, name, value))

        cdu.write_point = valve_stays  # type: ignore[method-assign]
        runtime = rack.daemon.racks["r01"]
        valve = next(p for p in runtime.actuators if p.name == "valve_command")
        channel = runtime.actuators[valve]
        arrivals = len([w for w in rack.simulation.writes("r01", "cdu1") if w.point == valve.name])
        drifts = channel.stats.drifts
        ticks = runtime.tick_stats.runs
        await rack.wait_until(lambda: channel.stats.drifts >= drifts + 2, 10.0)
        await rack.wait_until(lambda: runtime.tick_stats.runs >= ticks + 40, 30.0)
        tried = len([w for w in rack.simulation.writes("r01", "cdu1") if w.point == valve.name])
        tried -= arrivals
        stats = channel.stats
        print(
            f"\n{runtime.tick_stats.runs - ticks} ticks: {tried} valve writes tried,"
            f" {stats.drifts - drifts} lost, {stats.deferred} deferred"
        )
        # 40 ticks of 0.2 s: rewrites after 0, 0.2, 0.4, 0.8, 1.6, 3.2 s... about 7, never 40
        assert 2 <= tried <= 12
        assert stats.deferred >= 20
        # and the operator sees it: the counters are exported as they are held
        where = {"rack": "r01", "device": "cdu1", "point": "valve_command"}
        drifted = await metric(rack, "coolctl_actuator_drifts_total", **where)
        held_back = await metric(rack, "coolctl_actuator_deferred_total", **where)
        assert drifted is not None and drifted >= 2
        assert held_back is not None and held_back >= 20
