"""`leak_shutdown_servers` in the offline scenario runner: a leak at full load, with and without.

The rack is the demo rack (`coolctl/data/demo-rack.toml`: the Modbus CDU and PDU, the MQTT
sensors and 18 server BMCs), given to the scenario as a rack config file (`[rack] config`),
less its two Redfish monitors of the CDU and PDU (as the runner's built-in rack has them), once
with `leak_shutdown_servers = true` and once without. The verdicts come from plant truth (the
trace's IT power: a server shut down draws only its standby power), from what each simulated
BMC reads back (its `power_state`) and from the supervisor's decisions and events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from coolctl.control.supervisor import Decision
from coolctl.model import PointId, ServerPowerState, Snapshot, Source
from coolctl.simulators.plant import PlantParams
from coolctl.simulators.scenario import parse_scenario
from coolctl.tools.scenario_runner import RunResult, rack_config, run_scenario

SERVERS = PlantParams().n_servers
BMCS = [f"bmc{i + 1:02d}" for i in range(SERVERS)]
LEAK_AT_S = 200.0
LEAK_FOR_S = 120.0
DURATION_S = 600.0
CAP_MIN_W = 1500.0  # the demo rack's cap_min_w
CAP_LANDS_S = 3.0  # a cap write lands 0.5..2 s after it is sent (the runner's BMC latency)
DROPPED = ("[racks.r01.devices.cdu2]", "[racks.r01.devices.pdu2]")


def demo_rack(tmp_path: Path, shutdown: bool, whole: bool = False) -> Path:
    """The demo rack's config, with the key or without, less its Redfish CDU and PDU unless
    `whole`."""
    text = resources.files("coolctl.data").joinpath("demo-rack.toml").read_text("utf-8")
    kept: list[str] = []
    dropping = False
    for line in text.splitlines():
        if line.startswith("["):
            dropping = not whole and line.strip() in DROPPED
        if not dropping:
            kept.append(line)
    text = "\n".join(kept) + "\n"
    if shutdown:
        header = "[racks.r01.safety]\n"
        assert header in text
        text = text.replace(header, header + "leak_shutdown_servers = true\n", 1)
    path = tmp_path / (
        ("whole-" if whole else "") + ("shutdown.toml" if shutdown else "plain.toml")
    )
    path.write_text(text)
    return path


@dataclass
class Seen:
    """What the control side saw and decided, tick by tick."""

    power_states: dict[float, dict[str, float | None]] = field(default_factory=dict)
    power_commands: list[tuple[float, str, float, Source]] = field(default_factory=list)
    isolation_commands: list[tuple[float, str, float]] = field(default_factory=list)

    def hook(
        self, snapshot: Snapshot, now: float, _budget: float | None, decision: Decision
    ) -> None:
        self.power_states[now] = {
            bmc: snapshot.value(PointId("r01", bmc, "power_state")) for bmc in BMCS
        }
        for command in decision.commands:
            if command.point.name == "server_power_command":
                self.power_commands.append(
                    (now, command.point.device, command.value, command.source)
                )
            if command.point.name == "isolation_valve_command":
                self.isolation_commands.append((now, command.point.device, command.value))


def leak_at_full_load(
    tmp_path: Path, shutdown: bool, whole: bool = False
) -> tuple[RunResult, Seen]:
    config = demo_rack(tmp_path, shutdown, whole)
    text = (
        f'name = "leak-shutdown"\nduration_s = {DURATION_S}\nperiod_s = 1.0\nseed = 11\n'
        f'warmup_s = 120.0\n[rack]\nconfig = "{config}"\n[plant]\ninitial_load = 1.0\n'
        f'[[event]]\nat_s = {LEAK_AT_S}\nkind = "leak"\nvalue = 2.0\nduration_s = {LEAK_FOR_S}\n'
    )
    scenario = parse_scenario(text, tmp_path / f"leak-{shutdown}-{whole}.toml")
    rack = rack_config(scenario, "pid")
    assert rack.safety.leak_shutdown_servers is shutdown
    assert sorted(d for d in rack.devices if d.startswith("bmc")) == BMCS
    seen = Seen()
    return run_scenario(scenario, "pid", on_tick=seen.hook), seen


def leak_tripped_at(result: RunResult) -> float:
    trips = [e.ts for e in result.rack_events if e.kind == "interlock_leak"]
    assert len(trips) == 1, [e.kind for e in result.rack_events]
    return trips[0]


def assert_sane(result: RunResult) -> None:
    kpis = result.kpis
    assert kpis["leak_detection_s"] <= 5.0
    assert kpis["pump_dry_run_s"] == 0.0
    assert kpis["interlock_trips"] == 1.0
    assert kpis["controller_errors"] == 0.0
    assert kpis["failsafe_s"] == 0.0
    assert abs(kpis["energy_balance_error_pct"]) < 0.1
    assert result.first_error is None


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, tuple[RunResult, Seen]]:
    tmp_path = tmp_path_factory.mktemp("leak-shutdown")
    return {shutdown: leak_at_full_load(tmp_path, shutdown) for shutdown in (True, False)}


def test_a_leak_shuts_every_server_down_and_they_stay_off(
    runs: dict[bool, tuple[RunResult, Seen]],
) -> None:
    result, seen = runs[True]
    assert_sane(result)
    tripped = leak_tripped_at(result)
    assert LEAK_AT_S <= tripped <= LEAK_AT_S + 5.0
    t = result.trace["t_s"]
    after = t >= tripped + CAP_LANDS_S
    # the caps go to their minimum with the trip, and stay there (the interlock is latched)
    assert np.all(result.trace["caps_w"][after] == SERVERS * CAP_MIN_W)
    assert np.all(result.trace["interlock"][after] == 1.0)
    # every server is sent one graceful shutdown, in the decision that trips, by the interlock;
    # the supervisor repeats it while the leak holds, and never asks for a server on
    first = {device: now for now, device, _, _ in reversed(seen.power_commands)}
    assert sorted(first) == BMCS and set(first.values()) == {tripped}
    assert all(v == 0.0 and s is Source.INTERLOCK for _, _, v, s in seen.power_commands)
    # before the leak every host is on; the BMCs read each one stopping, then off
    assert all(v == ServerPowerState.ON for v in seen.power_states[tripped - 1.0].values())
    stopping = seen.power_states[tripped + 5.0]
    assert all(v == ServerPowerState.POWERING_OFF for v in stopping.values()), stopping
    shutdown_s = PlantParams().server_shutdown_s
    off_from = tripped + shutdown_s + 5.0
    for now, states in seen.power_states.items():
        if now >= off_from:
            assert all(v == ServerPowerState.OFF for v in states.values()), (now, states)
    # plant truth: every server draws its standby power only (once the power supplies have
    # settled, seconds), through the leak and after it
    standby_w = PlantParams().server_standby_w
    assert np.all(result.trace["it_power_w"][t >= off_from] < SERVERS * (standby_w + 20.0))
    it_w = result.trace["it_power_w"][t >= off_from + 10.0]
    assert len(it_w) > 300 and np.allclose(it_w, SERVERS * standby_w, rtol=0.01)
    assert np.all(result.trace["it_power_w"][t < tripped] > 0.9 * SERVERS * 7000.0)
    # off well after the leak stopped and its cause cleared (awaiting an operator's reset)
    cleared = [e.ts for e in result.rack_events if e.kind == "interlock_leak_awaiting_reset"]
    assert cleared and cleared[0] >= LEAK_AT_S + LEAK_FOR_S and t[-1] - cleared[0] > 200.0
    assert result.kpis["hardware_throttle_s"] == 0.0


def test_without_the_key_the_same_leak_leaves_every_server_on(
    runs: dict[bool, tuple[RunResult, Seen]],
) -> None:
    result, seen = runs[False]
    assert_sane(result)
    tripped = leak_tripped_at(result)
    t = result.trace["t_s"]
    after = t >= tripped + CAP_LANDS_S
    assert np.all(result.trace["caps_w"][after] == SERVERS * CAP_MIN_W)
    assert seen.power_commands == []
    # the host power is not even read without the key
    assert all(v is None for states in seen.power_states.values() for v in states.values())
    # plant truth: the servers run on, held to their minimum caps, never at standby power
    late = result.trace["it_power_w"][t >= tripped + 60.0]
    assert np.all(late > 0.5 * SERVERS * CAP_MIN_W)
    assert not math.isclose(float(late.min()), SERVERS * PlantParams().server_standby_w)


def test_the_whole_demo_rack_keeps_coolant_moving_through_a_leak(tmp_path: Path) -> None:
    """The demo rack as shipped, its Redfish CDU included (which can shut its isolation
    valves): at the leak's safe speed the valves stay open, so the pump keeps coolant moving
    past the servers. (Shut, that CDU stops its pumps: the pump asked to run dry for minutes and
    the chips at their throttle.)"""
    result, seen = leak_at_full_load(tmp_path, shutdown=False, whole=True)
    rack = rack_config(result.scenario, "pid")
    assert "cdu2" in rack.devices and rack.safety.leak_response.value == "safe_speed"
    assert_sane(result)
    assert seen.isolation_commands == []
    assert result.kpis["hardware_throttle_s"] == 0.0
    tripped = leak_tripped_at(result)
    t = result.trace["t_s"]
    assert np.all(result.trace["flow_lpm"][t >= tripped + 15.0] > 40.0)  # the safe speed's flow
