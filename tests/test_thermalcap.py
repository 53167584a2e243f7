"""The thermal cap loop: a continuous IT limit when cooling is at its top and margins are short."""

from __future__ import annotations

import pytest

from coolctl.control.thermalcap import (
    CoolingActuator,
    MarginPoint,
    ThermalCapConfig,
    ThermalCapLoop,
)
from coolctl.model import PointId, Quality, Reading, Snapshot

CHIP = PointId("r01", "bmc01", "chip_temperature")
PUMP = PointId("r01", "cdu1", "pump_speed_command")
VALVE = PointId("r01", "cdu1", "valve_command")
POWER = PointId("r01", "pdu1", "power")


def loop(**changes: float) -> ThermalCapLoop:
    config = ThermalCapConfig(
        margins=(MarginPoint(CHIP, 85.0),),
        cooling=(CoolingActuator(PUMP, 1.0), CoolingActuator(VALVE, 1.0)),
        power=(POWER,),
        floor_w=20_000.0,
        **changes,  # type: ignore[arg-type]
    )
    return ThermalCapLoop(config)


def snap(now: float, chip: float, pump: float = 1.0, power: float = 100_000.0) -> Snapshot:
    values = {CHIP: chip, PUMP: pump, VALVE: 1.0, POWER: power}
    return Snapshot([Reading(p, v, now, Quality.GOOD) for p, v in values.items()], now)


def test_no_limit_while_cooling_has_room() -> None:
    thermal = loop()
    assert thermal.step(snap(0.0, chip=84.0, pump=0.7), 0.0) is None  # pump can still go up
    assert thermal.step(snap(1.0, chip=80.0), 1.0) is None  # at the top, but margin is fine


def test_engages_bumplessly_and_lowers_the_limit_while_margin_is_short() -> None:
    thermal = loop()
    first = thermal.step(snap(0.0, chip=84.0), 0.0)
    assert first == pytest.approx(100_000.0)  # engaged at what the rack draws: no step
    second = thermal.step(snap(1.0, chip=84.0), 1.0)
    assert second is not None and second == pytest.approx(100_000.0 - 400.0)  # ki · 1 K · 1 s
    assert thermal.state.worst_point == CHIP and thermal.state.cooling_at_top


def test_release_is_paced_and_lets_go_above_the_power_drawn() -> None:
    thermal = loop(release_rate_w_per_s=2000.0)
    thermal.step(snap(0.0, chip=86.0), 0.0)
    for t in range(1, 30):
        thermal.step(snap(float(t), chip=86.0, power=80_000.0), float(t))
    low = thermal.limit_w
    assert low is not None and low < 90_000.0
    rising = thermal.step(snap(30.0, chip=70.0, power=70_000.0), 30.0)
    assert rising is not None and rising - low <= 2000.0 + 1e-6
    for t in range(31, 200):
        thermal.step(snap(float(t), chip=70.0, power=70_000.0), float(t))
    assert thermal.limit_w is None


def test_lets_go_when_cooling_has_room_again_even_short_of_margin() -> None:
    """A controller that moves the pump off its top while the chips are still short of margin
    (the MPC trading pump energy against caps): the limit rises at the release rate, and lets
    go once it is well above what the rack draws rather than climbing on, unbounded."""
    thermal = loop(release_rate_w_per_s=2000.0)
    thermal.step(snap(0.0, chip=86.0), 0.0)
    for t in range(1, 60):
        limit = thermal.step(snap(float(t), chip=85.5, pump=0.8, power=100_000.0), float(t))
        assert limit is None or limit <= 100_000.0 * 1.15 + 2000.0
    assert thermal.limit_w is None
    # cooling at its top again, still short: it engages afresh at what the rack draws
    again = thermal.step(snap(60.0, chip=85.5, power=95_000.0), 60.0)
    assert again == pytest.approx(95_000.0 - 400.0 * 2.5)  # from the draw, less one ki step


def test_never_below_the_floor_and_holds_without_readings() -> None:
    thermal = loop(ki_w_per_k_s=100_000.0)
    thermal.step(snap(0.0, chip=95.0), 0.0)
    assert thermal.step(snap(1.0, chip=95.0), 1.0) == 20_000.0
    blind = Snapshot([Reading(CHIP, None, 2.0, Quality.STALE)], 2.0)
    assert thermal.step(blind, 2.0) == 20_000.0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="release_rate"):
        loop(release_rate_w_per_s=0.0)


def test_a_chip_margin_needs_only_the_pumps_at_their_top() -> None:
    """A worn pump pinned at full speed: the valve has room (the supply is fine), but only more
    flow would cool the chips, so the loop caps."""
    config = ThermalCapConfig(
        margins=(MarginPoint(CHIP, 85.0, flow_bound=True),),
        cooling=(CoolingActuator(PUMP, 1.0, moves_flow=True), CoolingActuator(VALVE, 1.0)),
        power=(POWER,),
        floor_w=20_000.0,
    )
    thermal = ThermalCapLoop(config)
    values = {CHIP: 84.0, PUMP: 1.0, VALVE: 0.6, POWER: 100_000.0}
    snapshot = Snapshot([Reading(p, v, 0.0, Quality.GOOD) for p, v in values.items()], 0.0)
    assert thermal.step(snapshot, 0.0) == pytest.approx(100_000.0)
    plain = loop()  # the same chip without flow_bound: the valve's room keeps it out
    assert plain.step(snapshot, 0.0) is None


def test_a_supply_short_with_its_valve_open_is_capped_on_while_a_worse_chip_waits_for_flow() -> (
    None
):
    """The chips are the worst margin but the pump is below its top (a controller holds it
    there): their cooling has room. The supply, with less room than its target and the valve
    wide open, has none: the loop caps on the supply, and says so."""
    supply = PointId("r01", "cdu1", "supply_temperature")
    config = ThermalCapConfig(
        margins=(MarginPoint(CHIP, 85.0, flow_bound=True), MarginPoint(supply, 45.0)),
        cooling=(CoolingActuator(PUMP, 1.0, moves_flow=True), CoolingActuator(VALVE, 1.0)),
        power=(POWER,),
        floor_w=20_000.0,
    )
    values = {CHIP: 84.5, supply: 43.8, PUMP: 0.7, VALVE: 1.0, POWER: 100_000.0}
    snapshot = Snapshot([Reading(p, v, 0.0, Quality.GOOD) for p, v in values.items()], 0.0)
    thermal = ThermalCapLoop(config)
    assert thermal.step(snapshot, 0.0) == pytest.approx(100_000.0)
    assert thermal.state.worst_point == supply and thermal.state.cooling_at_top
    assert thermal.state.worst_margin_c == pytest.approx(1.2)
