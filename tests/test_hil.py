"""Hardware in the loop: the daemon against the simulated rack over real Modbus TCP, in real time.

The plant runs five times faster than real time (time_scale = 5) and tests/configs/hil-rack.toml
scales the daemon's periods, integral gains and slew rates to match, so that a load step that
takes a minute to settle on a real rack settles here in about twelve seconds of wall time.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from coolctl.model import PointId, Quality
from coolctl.simulators.live import DeviceWrite
from coolctl.tools.testing import HilRack, hil_rack

CONFIG = Path(__file__).parent / "configs" / "hil-rack.toml"
TIME_SCALE = 5.0
SERVER_IDLE_W, SERVER_MAX_W, SERVERS = 1500.0, 7000.0, 18


def load_for(rack_power_w: float) -> float:
    """The load fraction that makes the 18 simulated servers draw `rack_power_w` together."""
    return (rack_power_w / SERVERS - SERVER_IDLE_W) / (SERVER_MAX_W - SERVER_IDLE_W)


def settled(rack: HilRack) -> bool:
    flow = rack.value("r01/cdu1/flow")
    supply = rack.value("r01/cdu1/supply_temperature")
    return (
        flow is not None
        and supply is not None
        and abs(flow - 160.0) <= 3.0
        and abs(supply - 35.0) <= 0.5
    )


async def settle(rack: HilRack, hold_s: float, timeout_s: float) -> float:
    """Wait until the rack has stayed settled for `hold_s`; return the wall time it took."""
    started = time.monotonic()
    since: float | None = None

    def held() -> bool:
        nonlocal since
        now = time.monotonic()
        if not settled(rack):
            since = None
            return False
        since = since or now
        return now - since >= hold_s

    await rack.wait_until(held, timeout_s)
    return time.monotonic() - started - hold_s


def assert_within_bounds_and_slew(
    writes: list[DeviceWrite], point: str, low: float, high: float, slew_per_s: float
) -> int:
    """Every value the device received is within bounds and within slew of the one before."""
    values = [w for w in writes if w.point == point]
    count = 0.001  # one register count: the device quantises what it is sent
    jitter_s = 0.1  # a write may reach the device up to this much after it was decided
    for before, after in itertools.pairwise(values):
        assert low - count <= after.value <= high + count, after
        allowed = slew_per_s * (after.wall_time_s - before.wall_time_s + jitter_s) + count
        assert abs(after.value - before.value) <= allowed, (before, after)
    return len(values)


@pytest.mark.hil
@pytest.mark.asyncio
async def test_load_step_40_to_100_kw_settles_within_bounds() -> None:
    start_load = load_for(40_000.0)
    async with hil_rack(
        CONFIG, time_scale=TIME_SCALE, load=start_load, plant={"initial_valve": 0.3}
    ) as rack:
        plant = rack.plant("r01")
        first = await settle(rack, hold_s=2.0, timeout_s=30.0)
        before_kw = rack.value("r01/pdu1/power")
        plant.set_load(load_for(100_000.0))
        stepped = time.monotonic()
        # the heat reaches the exchanger only after the loop's transport delay: wait for the
        # return temperature to show it, then for both loops to settle again
        warmer = (rack.value("r01/cdu1/return_temperature") or 0.0) + 3.0
        await rack.wait_until(
            lambda: (rack.value("r01/cdu1/return_temperature") or 0.0) > warmer, 15.0
        )
        await settle(rack, hold_s=4.0, timeout_s=40.0)
        after = time.monotonic() - stepped - 4.0
        after_kw = rack.value("r01/pdu1/power")
        print(
            f"\nHIL: settled from start in {first:.1f} s wall ({first * TIME_SCALE:.0f} s plant);"
            f" rack {before_kw and before_kw / 1e3:.1f} -> {after_kw and after_kw / 1e3:.1f} kW;"
            f" settled after the step in {after:.1f} s wall ({after * TIME_SCALE:.0f} s plant)"
        )
        assert before_kw is not None and after_kw is not None
        assert after_kw - before_kw > 50_000  # the step really happened
        assert time.monotonic() - stepped < 40.0
        writes = rack.simulation.writes("r01", "cdu1")
        pumps = assert_within_bounds_and_slew(writes, "pump_speed_command", 0.2, 1.0, 0.5)
        valves = assert_within_bounds_and_slew(writes, "valve_command", 0.05, 1.0, 0.25)
        assert pumps > 0 and valves > 0
        # the valve opened to carry the extra heat, and both loops ended in automatic control
        assert plant.cdu_readings()["valve_command"] > 0.3
        modes = {
            loop.spec.name: loop.state.mode.value
            for loop in rack.daemon.racks["r01"].controller.loops.values()
        }
        assert modes == {"pump": "auto", "supply": "auto"}


@pytest.mark.hil
@pytest.mark.asyncio
async def test_dead_cdu_turns_points_stale_and_loops_failsafe_then_recovers() -> None:
    async with hil_rack(CONFIG, time_scale=TIME_SCALE, plant={"initial_valve": 0.5}) as rack:
        await rack.wait_until(lambda: rack.value("r01/cdu1/flow") is not None, 5.0)
        server = rack.simulation.servers[("r01", "cdu1")]
        server.set_offline(True)
        flow = PointId("r01", "cdu1", "flow")
        loops = rack.daemon.racks["r01"].controller.loops

        runtime = rack.daemon.racks["r01"]

        def failsafe() -> bool:
            reading = rack.daemon.store.current(flow, rack.daemon.clock())
            decision = runtime.decision
            return (
                reading.quality is Quality.STALE
                and loops["pump"].state.mode.value == "blind"
                and decision is not None
                and decision.failsafe
            )

        await rack.wait_until(failsafe, 5.0)
        stale = rack.daemon.store.current(flow, rack.daemon.clock())
        assert stale.value is not None and rack.daemon.clock() - stale.ts > 0.3  # old, not fresh
        handle = rack.daemon.devices[("r01", "cdu1")]
        assert handle.client.stats.consecutive_failures > 0
        server.set_offline(False)
        await rack.wait_until(
            lambda: runtime.decision is not None and not runtime.decision.failsafe, 10.0
        )
        assert loops["pump"].state.mode.value == "auto"
        assert rack.value("r01/cdu1/flow") is not None
        kinds = [event.kind for event in rack.daemon.recent_events]
        assert "failsafe" in kinds and "failsafe_cleared" in kinds
