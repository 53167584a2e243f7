"""Rack loops: the right commands from a snapshot, failsafe when blind, deterministic."""

from __future__ import annotations

import dataclasses
import math

import pytest

from coolctl.control.loops import (
    ChipBoost,
    FeedForward,
    GainSchedule,
    LoopMode,
    LoopSpec,
    PidLoop,
    RackController,
)
from coolctl.control.pid import PidConfig, PidGains
from coolctl.model import PointId, Quality, Reading, Snapshot, Source

FLOW = PointId("r01", "cdu1", "flow")
SUPPLY = PointId("r01", "cdu1", "supply_temperature")
RETURN = PointId("r01", "cdu1", "return_temperature")
PUMP = PointId("r01", "cdu1", "pump_speed_command")


def pump_loop(**overrides: object) -> LoopSpec:
    fields: dict[str, object] = {
        "name": "pump",
        "measurement": FLOW,
        "actuator": PUMP,
        "setpoint": 150.0,
        "pid": PidConfig(PidGains(kp=0.002, ki=0.004), output_min=0.2, output_max=1.0),
    }
    fields.update(overrides)
    return LoopSpec(**fields)  # type: ignore[arg-type]


def snapshot(now: float, **values: tuple[float | None, Quality]) -> Snapshot:
    points = {"flow": FLOW, "supply": SUPPLY, "ret": RETURN}
    return Snapshot(
        [Reading(points[k], v, now, q) for k, (v, q) in values.items()],
        now,
    )


def test_auto_command_moves_towards_setpoint() -> None:
    loop = PidLoop(pump_loop())
    (low,) = loop.step(snapshot(0.0, flow=(100.0, Quality.GOOD)), 0.0)
    (later,) = loop.step(snapshot(1.0, flow=(100.0, Quality.GOOD)), 1.0)
    assert low.source is Source.AUTO and low.point == PUMP
    assert later.value > low.value  # flow too low: speed goes up
    assert loop.state.mode is LoopMode.AUTO and loop.state.measurement == 100.0
    assert "setpoint 150" in later.reason


def test_blind_loop_asks_for_nothing_and_says_why() -> None:
    loop = PidLoop(pump_loop())
    for quality in (Quality.STALE, Quality.BAD):
        assert loop.step(snapshot(0.0, flow=(120.0, quality)), 0.0) == []
        assert loop.state.mode is LoopMode.BLIND
        assert f"r01/cdu1/flow is {quality.value}" in loop.state.reason
    assert loop.step(snapshot(1.0), 1.0) == []
    assert "is missing" in loop.state.reason


def test_return_from_failsafe_is_bumpless() -> None:
    loop = PidLoop(pump_loop())
    loop.step(snapshot(0.0), 0.0)  # blind
    loop.applied(1.0, 0.0)  # the supervisor sent the pump to its failsafe 1.0
    (command,) = loop.step(snapshot(1.0, flow=(150.0, Quality.GOOD)), 1.0)
    assert command.source is Source.AUTO
    assert abs(command.value - 1.0) < 1e-9  # at setpoint: carries on from where failsafe left it


def test_difference_measurement_for_coolant_delta_t() -> None:
    spec = pump_loop(
        measurement=RETURN,
        measurement_subtrahend=SUPPLY,
        setpoint=10.0,
        pid=PidConfig(PidGains(kp=0.05, ki=0.01), 0.2, 1.0, action="direct"),
    )
    loop = PidLoop(spec)
    loop.step(snapshot(0.0, supply=(30.0, Quality.GOOD), ret=(44.0, Quality.GOOD)), 0.0)
    assert loop.state.measurement == 14.0
    (command,) = loop.step(
        snapshot(1.0, supply=(30.0, Quality.GOOD), ret=(44.0, Quality.GOOD)), 1.0
    )
    assert command.value > 0.2  # ΔT too high: more flow
    assert loop.step(snapshot(2.0, supply=(30.0, Quality.GOOD)), 2.0) == []
    assert "return_temperature is missing" in loop.state.reason


def test_disabled_loop_commands_nothing() -> None:
    loop = PidLoop(pump_loop(enabled=False))
    assert loop.step(snapshot(0.0, flow=(100.0, Quality.GOOD)), 0.0) == []
    assert loop.state.mode is LoopMode.DISABLED


def test_rack_controller_is_deterministic() -> None:
    def run() -> list[float]:
        controller = RackController("r01", [pump_loop()])
        values = []
        for step in range(20):
            now = float(step)
            flow = 100.0 + 2.5 * step
            commands = controller.step(snapshot(now, flow=(flow, Quality.GOOD)), now)
            values += [c.value for c in commands]
        return values

    assert run() == run()


def test_applied_clamp_keeps_integrator_consistent() -> None:
    controller = RackController("r01", [pump_loop()])
    controller.step(snapshot(0.0, flow=(50.0, Quality.GOOD)), 0.0)
    controller.applied(PUMP, 0.5, 0.0)  # the clamp held the pump lower than asked
    (second,) = controller.step(snapshot(1.0, flow=(50.0, Quality.GOOD)), 1.0)
    # continues from what was applied, plus one second of integral action: no windup jump
    assert 0.5 < second.value <= 0.5 + 0.004 * 100 * 1.0 + 1e-9


def test_start_is_bumpless_from_the_actuators_current_value() -> None:
    loop = PidLoop(pump_loop())
    at_setpoint = Snapshot(
        [
            Reading(FLOW, 150.0, 0.0, Quality.GOOD),
            Reading(PUMP, 0.63, 0.0, Quality.GOOD),
        ],
        0.0,
    )
    (command,) = loop.step(at_setpoint, 0.0)
    assert abs(command.value - 0.63) < 1e-9  # takes over where the device stands


def test_setpoint_override_is_followed() -> None:
    loop = PidLoop(pump_loop())
    loop.setpoint_override = 100.0
    loop.step(snapshot(0.0, flow=(100.0, Quality.GOOD)), 0.0)
    assert loop.state.setpoint == 100.0 and "setpoint 100" in loop.state.reason


def test_loops_driven_by_another_controller_follow_it_and_take_over_bumplessly() -> None:
    valve = PointId("r01", "cdu1", "valve_command")
    supply_loop = pump_loop(
        name="supply",
        measurement=SUPPLY,
        actuator=valve,
        setpoint=35.0,
        pid=PidConfig(PidGains(kp=0.05, ki=0.01), 0.0, 1.0, action="direct"),
    )
    controller = RackController("r01", [pump_loop(), supply_loop])
    readings = {"flow": (150.0, Quality.GOOD), "supply": (35.0, Quality.GOOD)}
    commands = controller.step_except(snapshot(0.0, **readings), 0.0, {PUMP: 0.62}, "the MPC")
    assert [c.point for c in commands] == [valve]  # only the loop nobody else drives
    pump = controller.loops["pump"]
    assert pump.state.mode is LoopMode.AUTO and pump.state.output == 0.62
    assert pump.state.reason == "pump: the MPC" and pump.state.measurement == 150.0
    # The other controller stands down: the pump loop starts from where it left the pump.
    (handed_back,) = [c for c in controller.step(snapshot(1.0, **readings), 1.0) if c.point == PUMP]
    assert abs(handed_back.value - 0.62) < 1e-9  # at its setpoint: no kick


# -- feedforward from measured IT power --------------------------------------------------------


def _ff_loop(lag_s: float, delay_s: float = 0.0) -> PidLoop:
    power = PointId("r01", "pdu1", "power")
    spec = LoopSpec(
        name="supply",
        measurement=PointId("r01", "cdu1", "supply_temperature"),
        actuator=PointId("r01", "cdu1", "valve_command"),
        setpoint=35.0,
        pid=PidConfig(PidGains(kp=0.0, ki=0.0), output_min=0.0, output_max=1.0, action="direct"),
        feedforward=FeedForward((power,), gain_per_w=5e-6, lag_s=lag_s, delay_s=delay_s),
    )
    return PidLoop(spec)


def _ff_snapshot(now: float, watts: float | None) -> Snapshot:
    readings = [
        Reading(PointId("r01", "cdu1", "supply_temperature"), 35.0, now, Quality.GOOD),
        Reading(PointId("r01", "cdu1", "valve_command"), 0.5, now, Quality.GOOD),
    ]
    if watts is not None:
        readings.append(Reading(PointId("r01", "pdu1", "power"), watts, now, Quality.GOOD))
    return Snapshot(readings, now)


def test_a_load_step_moves_the_valve_before_the_temperature_does() -> None:
    loop = _ff_loop(lag_s=0.0)
    first = loop.step(_ff_snapshot(0.0, 40_000.0), 0.0)
    assert first[0].value == pytest.approx(0.5)  # bumpless: starts where the valve is
    stepped = loop.step(_ff_snapshot(1.0, 100_000.0), 1.0)
    assert stepped[0].value == pytest.approx(0.5 + 5e-6 * 60_000.0)


def test_feedforward_lag_and_a_lost_power_reading() -> None:
    loop = _ff_loop(lag_s=9.0)
    loop.step(_ff_snapshot(0.0, 40_000.0), 0.0)
    one = loop.step(_ff_snapshot(1.0, 100_000.0), 1.0)[0].value
    assert one == pytest.approx(0.5 + 5e-6 * 6_000.0)  # a tenth of the way after 1 s of 9 s
    held = loop.step(_ff_snapshot(2.0, None), 2.0)[0].value
    assert held == pytest.approx(one)  # the PDU went quiet: the lagged power holds


def test_feedforward_waits_its_dead_time_then_moves_at_once() -> None:
    loop = _ff_loop(lag_s=0.0, delay_s=6.0)
    loop.step(_ff_snapshot(0.0, 40_000.0), 0.0)
    moves = [loop.step(_ff_snapshot(float(t), 100_000.0), float(t))[0].value for t in range(1, 9)]
    assert moves[:6] == pytest.approx([0.5] * 6)  # the heat is still in the return pipe
    assert moves[6:] == pytest.approx([0.5 + 5e-6 * 60_000.0] * 2)  # 6 s after the step (1 s)


def test_a_lost_power_reading_holds_the_delayed_feedforward() -> None:
    loop = _ff_loop(lag_s=0.0, delay_s=2.0)
    loop.step(_ff_snapshot(0.0, 40_000.0), 0.0)
    loop.step(_ff_snapshot(1.0, 100_000.0), 1.0)
    held = loop.step(_ff_snapshot(2.0, None), 2.0)[0].value
    assert held == pytest.approx(0.5)  # quiet PDU: the step it saw has not come due, nothing moves
    assert loop.step(_ff_snapshot(3.0, 100_000.0), 3.0)[0].value == pytest.approx(0.8)


# -- a loop pinned at its top and short of its setpoint -----------------------------------------


def test_a_pump_pinned_at_full_speed_short_of_its_flow_is_an_alarm() -> None:
    from coolctl.control.loops import SaturationWatch

    flow, pump = PointId("r01", "cdu1", "flow"), PointId("r01", "cdu1", "pump_speed_command")
    spec = LoopSpec(
        name="pump",
        measurement=flow,
        actuator=pump,
        setpoint=160.0,
        pid=PidConfig(PidGains(kp=0.01, ki=0.01), output_min=0.2, output_max=1.0),
    )
    loop = PidLoop(spec)
    watch = SaturationWatch("r01", after_s=60.0)

    def tick(now: float, measured: float) -> list[str]:
        readings = [
            Reading(flow, measured, now, Quality.GOOD),
            Reading(pump, 1.0, now, Quality.GOOD),
        ]
        loop.step(Snapshot(readings, now), now)
        return [event.kind for event in watch.step({"pump": loop}, now)]

    assert tick(0.0, 150.0) == []
    assert all(tick(float(t), 150.0) == [] for t in range(1, 60))
    assert tick(60.0, 150.0) == ["loop_saturated"]
    assert tick(61.0, 150.0) == []  # once
    assert tick(62.0, 159.0) == ["loop_saturation_cleared"]  # within 2 % of the setpoint


CHIPS = (PointId("r01", "bmc01", "chip_temperature"), PointId("r01", "bmc02", "chip_temperature"))


def chips_at(now: float, flow: float, *chips: float | None) -> Snapshot:
    readings = [Reading(FLOW, flow, now, Quality.GOOD)]
    readings += [
        Reading(p, c, now, Quality.GOOD if c is not None else Quality.STALE)
        for p, c in zip(CHIPS, chips, strict=True)
    ]
    return Snapshot(readings, now)


def test_chip_boost_raises_the_flow_setpoint_while_the_hottest_chip_is_hot() -> None:
    loop = PidLoop(pump_loop(boost=ChipBoost(CHIPS, above_c=78.0, boosted=190.0)))
    loop.step(chips_at(0.0, 150.0, 70.0, 75.0), 0.0)
    assert loop.setpoint == 150.0  # cool chips: no boost
    loop.step(chips_at(1.0, 150.0, 70.0, 80.0), 1.0)  # the hottest 2 K over
    first = loop.setpoint
    assert 150.0 < first < 190.0
    for k in range(2, 200):
        loop.step(chips_at(float(k), 150.0, 70.0, 80.0), float(k))
    assert loop.setpoint == pytest.approx(190.0)  # the integral took it all the way
    assert "setpoint 190" in loop.state.reason
    loop.step(chips_at(200.0, 150.0, None, None), 200.0)  # no chip reads good: hold
    assert loop.setpoint == pytest.approx(190.0)
    loop.step(chips_at(201.0, 150.0, 70.0, 77.0), 201.0)  # cooler: it comes back, slowly
    assert 150.0 < loop.setpoint < 190.0


def test_chip_boost_lowers_a_supply_setpoint_toward_its_boosted_value() -> None:
    spec = LoopSpec(
        name="supply",
        measurement=SUPPLY,
        actuator=PointId("r01", "cdu1", "valve_command"),
        setpoint=35.0,
        pid=PidConfig(PidGains(kp=0.1, ki=0.01), output_min=0.0, output_max=1.0, action="direct"),
        boost=ChipBoost(CHIPS, above_c=80.0, boosted=34.0, kp_per_k=1.0),
    )
    loop = PidLoop(spec)
    hot = Snapshot(
        [Reading(SUPPLY, 35.0, 0.0, Quality.GOOD)]
        + [Reading(p, 85.0, 0.0, Quality.GOOD) for p in CHIPS],
        0.0,
    )
    loop.step(hot, 0.0)
    assert loop.setpoint == pytest.approx(34.0)


def test_a_followed_loop_keeps_its_chip_boost_current() -> None:
    """While another controller (the MPC) drives the actuator, the loop's setpoint still moves
    with the chips: the MPC holds the supply at that setpoint, and the loop takes over from it."""
    loop = PidLoop(pump_loop(boost=ChipBoost(CHIPS, above_c=78.0, boosted=190.0)))
    loop.follow(0.6, chips_at(0.0, 150.0, 70.0, 75.0), 0.0, "the MPC")
    assert loop.setpoint == 150.0
    for k in range(1, 200):
        loop.follow(0.6, chips_at(float(k), 150.0, 70.0, 80.0), float(k), "the MPC")
    assert loop.setpoint == pytest.approx(190.0)
    assert loop.state.setpoint == pytest.approx(190.0) and loop.state.output == 0.6


POWER = PointId("r01", "pdu1", "power")


def test_boost_feedforward_from_power_raises_the_flow_setpoint_through_its_lag() -> None:
    boost = ChipBoost((), above_c=math.inf, boosted=200.0, power_points=(POWER,))
    boost = dataclasses.replace(boost, from_w=80_000.0, full_w=110_000.0, power_lag_s=10.0)
    loop = PidLoop(pump_loop(setpoint=160.0, boost=boost))

    def at(now: float, watts: float | None) -> Snapshot:
        readings = [Reading(FLOW, 160.0, now, Quality.GOOD)]
        if watts is not None:
            readings.append(Reading(POWER, watts, now, Quality.GOOD))
        return Snapshot(readings, now)

    loop.step(at(0.0, 70_000.0), 0.0)
    assert loop.setpoint == 160.0  # under 80 kW: no boost
    loop.step(at(1.0, 125_000.0), 1.0)  # a load step: through the lag, not at once
    assert 160.0 < loop.setpoint < 170.0
    for k in range(2, 120):
        loop.step(at(float(k), 125_000.0), float(k))
    assert loop.setpoint == pytest.approx(200.0, abs=0.5)
    loop.step(at(120.0, None), 120.0)  # the PDU unread: the boost holds
    assert loop.setpoint == pytest.approx(200.0, abs=0.5)


# -- gain scheduling over flow -----------------------------------------------------------------


def test_gain_schedule_interpolates_and_is_flat_beyond_its_ends() -> None:
    schedule = GainSchedule(FLOW, (160.0, 200.0), (1.0, 1.5))
    assert schedule.multiplier(100.0) == 1.0
    assert schedule.multiplier(180.0) == pytest.approx(1.25)
    assert schedule.multiplier(250.0) == 1.5
    for at, multipliers in (((200.0, 160.0), (1.0, 1.0)), ((160.0,), (1.0, 2.0)), ((), ())):
        with pytest.raises(ValueError):
            GainSchedule(FLOW, at, multipliers)
    with pytest.raises(ValueError):
        GainSchedule(FLOW, (160.0,), (-1.0,))


def _scheduled_supply_loop(schedule: GainSchedule | None) -> PidLoop:
    valve = PointId("r01", "cdu1", "valve_command")
    pid = PidConfig(PidGains(kp=0.1, ki=0.0), output_min=0.0, output_max=1.0, action="direct")
    return PidLoop(
        LoopSpec("supply", SUPPLY, valve, 35.0, pid, schedule=schedule),
    )


def _supply_snapshot(now: float, supply: float, flow: float | None) -> Snapshot:
    readings = [Reading(SUPPLY, supply, now, Quality.GOOD)]
    if flow is not None:
        readings.append(Reading(FLOW, flow, now, Quality.GOOD))
    return Snapshot(readings, now)


def test_gain_schedule_scales_the_supply_loop_with_the_flow() -> None:
    schedule = GainSchedule(FLOW, (160.0, 200.0), (1.0, 2.0))
    moves = {}
    for flow in (160.0, 200.0):
        loop = _scheduled_supply_loop(schedule)
        start = loop.step(_supply_snapshot(0.0, 35.0, flow), 0.0)[0].value
        moved = loop.step(_supply_snapshot(1.0, 36.0, flow), 1.0)[0].value
        moves[flow] = moved - start
        assert loop.gain_scale == (1.0 if flow == 160.0 else 2.0)
    assert moves[160.0] == pytest.approx(0.1)  # kp * 1 K
    assert moves[200.0] == pytest.approx(0.2)  # twice the gain at 200 L/min


def test_gain_schedule_holds_its_multiplier_while_the_flow_is_unread() -> None:
    loop = _scheduled_supply_loop(GainSchedule(FLOW, (160.0, 200.0), (1.0, 2.0)))
    loop.step(_supply_snapshot(0.0, 35.0, 200.0), 0.0)
    loop.step(_supply_snapshot(1.0, 35.0, None), 1.0)
    assert loop.gain_scale == 2.0  # a lost flow meter does not retune the loop


def test_no_schedule_keeps_the_configured_gains() -> None:
    loop = _scheduled_supply_loop(None)
    loop.step(_supply_snapshot(0.0, 35.0, 200.0), 0.0)
    moved = loop.step(_supply_snapshot(1.0, 36.0, 200.0), 1.0)[0].value
    assert loop.gain_scale == 1.0 and moved == pytest.approx(loop.pid.output)
