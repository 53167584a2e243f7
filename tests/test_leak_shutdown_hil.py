"""A leak's graceful shutdown of the rack's servers, through the whole daemon (HIL).

tests/configs/hil-full-rack.toml (two Redfish BMCs, time compressed five-fold) with
`leak_shutdown_servers` on or off. Every outcome is checked on the device side: the host's
PowerState the daemon polls back from the simulated BMC, and the simulated plant's servers
(and the writes the simulated BMCs took), not the daemon's own bookkeeping.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_daemon_safety import fault

from coolctl.model import PointId, ServerPowerState, Source
from coolctl.tools.testing import HilRack, hil_rack

CONFIGS = Path(__file__).parent / "configs"
FULL = CONFIGS / "hil-full-rack.toml"  # Modbus CDU and PDU, MQTT sensors, two Redfish BMCs
BMCS = ("bmc01", "bmc02")  # plant servers 0 and 1
CAP_MIN_W = 1500.0
SCALE = 5.0
PLANT = {"initial_valve": 0.5, "server_shutdown_s": 5.0}  # 1 s of wall time to shut down
ON, OFF = float(ServerPowerState.ON), float(ServerPowerState.OFF)


def config_with(tmp_path: Path, *extra: str) -> Path:
    """The full HIL rack, its pump stopped on a leak after at most 1 s, plus `extra` keys of
    its [racks.r01.safety] table."""
    text = FULL.read_text()
    old = 'leak_response = "stop"'
    assert old in text
    keys = "\n".join((old, "leak_caps_timeout_s = 1.0", *extra))
    path = tmp_path / FULL.name
    path.write_text(text.replace(old, keys, 1))
    return path


def kinds(rack: HilRack) -> list[str]:
    return [event.kind for event in rack.daemon.recent_events]


def power_states(rack: HilRack) -> list[float | None]:
    """What each BMC's host reads, as the daemon last polled it."""
    return [rack.value(f"r01/{bmc}/power_state") for bmc in BMCS]


def plant_states(rack: HilRack) -> list[ServerPowerState]:
    plant = rack.plant("r01")
    return [plant.server_power_state(i) for i in range(len(BMCS))]


def power_writes(rack: HilRack) -> list[float]:
    """Every server_power_command the simulated BMCs took (0 shutdown, 1 on)."""
    return [
        write.value
        for bmc in BMCS
        for write in rack.simulation.writes("r01", bmc)
        if write.point == "server_power_command"
    ]


async def running(rack: HilRack) -> None:
    runtime = rack.daemon.racks["r01"]
    await rack.wait_until(
        lambda: runtime.decision is not None and not runtime.decision.failsafe, 15.0
    )
    caps = [f"r01/{bmc}/power_limit" for bmc in BMCS]
    await rack.wait_until(lambda: all(rack.value(cap) is not None for cap in caps), 15.0)


async def ticks(rack: HilRack, count: int) -> None:
    """Let the rack's control step run `count` more times."""
    runtime = rack.daemon.racks["r01"]
    start = runtime.tick_stats.runs
    await rack.wait_until(lambda: runtime.tick_stats.runs >= start + count, 15.0)


@pytest.mark.hil
@pytest.mark.asyncio
async def test_a_leak_shuts_every_server_down_with_the_caps_and_none_comes_back_on_by_itself(
    tmp_path: Path,
) -> None:
    config = config_with(tmp_path, "leak_shutdown_servers = true")
    async with hil_rack(config, time_scale=SCALE, plant=PLANT) as rack:
        runtime = rack.daemon.racks["r01"]
        await running(rack)
        await rack.wait_until(lambda: power_states(rack) == [ON, ON], 10.0)

        fault(rack, "leak", value=5.0)
        await rack.wait_until(lambda: "interlock_leak" in kinds(rack), 10.0)
        # every host reads Off, as its BMC reports it; the caps at their minimum; the pump at
        # its leak value (stopped)
        await rack.wait_until(lambda: power_states(rack) == [OFF, OFF], 15.0)
        caps = [f"r01/{bmc}/power_limit" for bmc in BMCS]
        await rack.wait_until(lambda: [rack.value(c) for c in caps] == [CAP_MIN_W] * 2, 10.0)
        await rack.wait_until(lambda: rack.value("r01/cdu1/pump_speed_command") == 0.0, 10.0)
        assert plant_states(rack) == [ServerPowerState.OFF] * 2
        # off, each draws its standby power only, as its BMC reads it
        powers = [f"r01/{bmc}/power" for bmc in BMCS]
        await rack.wait_until(lambda: all((rack.value(p) or 1e9) < 200.0 for p in powers), 10.0)
        # one graceful shutdown each, as supervised interlock commands with their reason
        assert power_writes(rack) == [0.0, 0.0]
        for bmc in BMCS:
            channel = runtime.actuators[PointId("r01", bmc, "server_power_command")]
            command = channel.stats.last_command
            assert command is not None and command.source is Source.INTERLOCK
            assert "leak interlock" in command.reason and "server shut down" in command.reason

        # the rope dries; the operator resets the latched leak: the pump runs again, the
        # servers stay off
        fault(rack, "clear")
        await rack.wait_until(
            lambda: runtime.supervisor.state.interlocks["leak"].awaiting_reset, 10.0
        )
        runtime.reset_interlock("leak", "tester", "rope dry, hose fixed")
        await rack.wait_until(lambda: "interlock_leak_reset" in kinds(rack), 5.0)
        await rack.wait_until(lambda: (rack.value("r01/cdu1/pump_speed_command") or 0) > 0, 10.0)
        await ticks(rack, 10)
        assert power_states(rack) == [OFF, OFF]
        assert plant_states(rack) == [ServerPowerState.OFF] * 2
        assert power_writes(rack) == [0.0, 0.0]  # nothing powered them on
        # and the hand-back on the way out leaves them be too
        decision = runtime.supervisor.shutdown(rack.daemon.racks["r01"].clock())
        assert all(c.point.name != "server_power_command" for c in decision.commands)


@pytest.mark.hil
@pytest.mark.asyncio
async def test_without_the_key_a_leak_shuts_no_server_down(tmp_path: Path) -> None:
    async with hil_rack(config_with(tmp_path), time_scale=SCALE, plant=PLANT) as rack:
        runtime = rack.daemon.racks["r01"]
        await running(rack)
        assert all(
            a.point.name != "server_power_command" for a in runtime.supervisor.config.actuators
        )
        fault(rack, "leak", value=5.0)
        await rack.wait_until(lambda: "interlock_leak" in kinds(rack), 10.0)
        caps = [f"r01/{bmc}/power_limit" for bmc in BMCS]
        await rack.wait_until(lambda: [rack.value(c) for c in caps] == [CAP_MIN_W] * 2, 10.0)
        await rack.wait_until(lambda: rack.value("r01/cdu1/pump_speed_command") == 0.0, 10.0)
        await ticks(rack, 10)
        assert plant_states(rack) == [ServerPowerState.ON] * 2
        assert power_writes(rack) == []
        assert power_states(rack) == [None, None]  # the hosts are not even read


@pytest.mark.hil
@pytest.mark.asyncio
async def test_failsafe_never_touches_a_servers_power(tmp_path: Path) -> None:
    # blind, the caps fall at once (chips always "warm" for the hold): failsafe writes caps
    config = config_with(tmp_path, "leak_shutdown_servers = true", "failsafe_hold_under_c = 1.0")
    async with hil_rack(config, time_scale=SCALE, plant=PLANT) as rack:
        runtime = rack.daemon.racks["r01"]
        await running(rack)
        await rack.wait_until(lambda: power_states(rack) == [ON, ON], 10.0)
        fault(rack, "link_loss", device="cdu1")
        await rack.wait_until(
            lambda: runtime.decision is not None and runtime.decision.failsafe, 10.0
        )
        caps = [f"r01/{bmc}/power_limit" for bmc in BMCS]
        await rack.wait_until(lambda: [rack.value(c) for c in caps] == [CAP_MIN_W] * 2, 10.0)
        await ticks(rack, 10)
        assert runtime.decision is not None and runtime.decision.failsafe
        assert power_states(rack) == [ON, ON]
        assert plant_states(rack) == [ServerPowerState.ON] * 2
        assert power_writes(rack) == []
        for bmc in BMCS:  # not even a command that found the host already on
            channel = runtime.actuators[PointId("r01", bmc, "server_power_command")]
            assert channel.stats.last_command is None
