"""The reservoir level's trend as a leak detector: coolctl.control.level_trend and the
supervisor's use of it, and what a leak that drains the reservoir does to the pump."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
from test_supervisor import (
    CAP1,
    CAP2,
    PUMP,
    PUMP_SAFETY,
    VALVE_SAFETY,
    by_point,
    cap,
    kinds,
    make_config,
    snap,
    started,
)

from coolctl.control.level_trend import LevelTrend
from coolctl.control.supervisor import Supervisor
from coolctl.model import PointId, Quality, Reading, Snapshot

LEVEL = PointId("r01", "cdu1", "reservoir_level")


def test_the_slope_is_a_least_squares_fit_over_the_window() -> None:
    trend = LevelTrend(20.0)
    for t in range(0, 31):
        trend.add(float(t), 20.0 - 0.05 * t)  # 3 L/min
    assert trend.slope_l_per_s(30.0) == pytest.approx(-0.05)


def test_no_slope_from_too_few_readings_or_too_short_a_span() -> None:
    trend = LevelTrend(20.0)
    for t in range(4):
        trend.add(float(t), 20.0 - t)
    assert trend.slope_l_per_s(3.0) is None  # four readings
    for t in range(4, 14):
        trend.add(float(t), 20.0 - t)
    assert trend.slope_l_per_s(13.0) is None  # 13 s of a 20 s window
    trend.add(16.0, 4.0)
    assert trend.slope_l_per_s(16.0) == pytest.approx(-1.0)


def test_a_reading_seen_again_or_not_finite_is_not_a_sample() -> None:
    trend = LevelTrend(10.0)
    for t in range(11):
        trend.add(float(t), 10.0)
        trend.add(float(t), 0.0)  # the same reading's time again: ignored
    trend.add(11.0, math.nan)
    assert trend.slope_l_per_s(10.0) == 0.0
    with pytest.raises(ValueError, match="window_s"):
        LevelTrend(0.0)


def config_with_trend(**changes: object) -> Supervisor:
    pump = replace(PUMP_SAFETY, on_leak=0.3, on_low_level=0.0)
    settings: dict[str, object] = {
        "actuators": (pump, VALVE_SAFETY, cap(CAP1), cap(CAP2)),
        "reservoir_level": LEVEL,
        "min_reservoir_level_l": 8.0,
        "leak_level_drop_l_per_min": 1.0,
        "leak_level_window_s": 20.0,
    }
    return started(make_config(**{**settings, **changes}))


def level(now: float, litres: float) -> Snapshot:
    return snap(now, extra=[Reading(LEVEL, litres, now, Quality.GOOD)])


def test_a_reservoir_draining_at_the_leak_rate_trips_the_leak_interlock() -> None:
    supervisor = config_with_trend()
    noise = random.Random(1)
    for t in range(1, 40):  # steady, with the simulated sensor's noise: nothing
        decision = supervisor.step(level(t, 20.0 + noise.gauss(0.0, 0.05)), float(t), [])
        assert "leak" not in decision.interlocks
    tripped_at = None
    for t in range(40, 80):  # 3 L/min from t = 40
        litres = 20.0 - 0.05 * (t - 40) + noise.gauss(0.0, 0.05)
        decision = supervisor.step(level(t, litres), float(t), [])
        if "leak" in decision.interlocks:
            tripped_at = t
            assert kinds(decision)[0] == "interlock_leak"
            assert "reservoir_level falling" in decision.events[0].message
            break
    assert tripped_at is not None and tripped_at - 40 <= 15
    assert by_point(decision)[CAP1].value == 100.0  # the leak's caps


def test_a_falling_level_is_one_vote_among_the_ropes() -> None:
    """Two votes: the level alone is not enough, the level and a rope are."""
    supervisor = config_with_trend(leak_votes=2)
    for t in range(1, 30):
        decision = supervisor.step(level(t, 20.0 - 0.05 * t), float(t), [])
    assert "leak" not in decision.interlocks
    both = supervisor.step(
        snap(
            30.0,
            {PointId("r01", "sensors1", "leak_detected"): 1.0},
            [Reading(LEVEL, 18.5, 30.0, Quality.GOOD)],
        ),
        30.0,
        [],
    )
    assert "leak" in both.interlocks


def test_the_leak_releases_only_once_the_level_has_steadied() -> None:
    supervisor = config_with_trend(hold_s=5.0)
    for t in range(1, 30):
        supervisor.step(level(t, 20.0 - 0.05 * t), float(t), [])
    assert "leak" in supervisor.state.interlocks
    litres = 20.0 - 0.05 * 29
    for t in range(30, 60):  # still draining at 0.6 L/min: over half the rate
        litres -= 0.01
        decision = supervisor.step(level(t, litres), float(t), [])
        assert "leak" in decision.interlocks
    for t in range(60, 100):  # steady
        decision = supervisor.step(level(t, litres), float(t), [])
    assert "leak" not in decision.interlocks


def test_a_leak_at_safe_speed_stops_the_pump_once_the_reservoir_is_low() -> None:
    """The leak asks for a safe speed, the low level for a stop: the stop wins, or the leak
    drains the reservoir and the pump runs dry."""
    supervisor = config_with_trend()
    for t in range(1, 20):
        decision = supervisor.step(level(t, 20.0 - 0.05 * t), float(t), [])
    assert by_point(decision)[PUMP].value == 0.3
    low = supervisor.step(level(20.0, 7.5), 20.0, [])
    assert {"leak", "low_coolant_level"} <= low.interlocks
    assert by_point(low)[PUMP].value == 0.0


def test_a_low_level_clears_only_a_margin_over_its_minimum() -> None:
    supervisor = config_with_trend(leak_level_drop_l_per_min=None, hold_s=5.0)
    supervisor.step(level(1.0, 7.9), 1.0, [])
    for t in range(2, 20):  # the level reads just over its minimum, longer than hold_s
        decision = supervisor.step(level(t, 8.05), float(t), [])
        assert "low_coolant_level" in decision.interlocks
    for t in range(20, 30):  # refilled
        decision = supervisor.step(level(t, 12.0), float(t), [])
    assert "low_coolant_level" not in decision.interlocks


def test_a_level_drop_that_is_not_positive_is_refused() -> None:
    for drop in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="leak_level_drop_l_per_min"):
            Supervisor(make_config(leak_level_drop_l_per_min=drop))
    with pytest.raises(ValueError, match="leak_level_window_s"):
        Supervisor(make_config(leak_level_window_s=0.0))
