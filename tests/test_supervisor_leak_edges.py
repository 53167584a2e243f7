"""Edges of coolctl.control.supervisor that its other tests passed by, each found by a mutant that
survived them (scripts/mutation): how the reservoir level's trend counts among the leak votes,
where a low level releases, what a server's shutdown command says, what the shutdown event
names, a standby pump reading exactly 0.5, which valve the supply floor holds, and the setting
a refused level window names.

Built on the fixtures of tests/test_supervisor.py, tests/test_level_trend.py and
tests/test_supply_floor.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_level_trend import config_with_trend, level
from test_supervisor import (
    CHIP,
    LEAK1,
    RACK,
    RUNNING,
    STANDBY_ACTIVE,
    STANDBY_SAFETY,
    by_point,
    kinds,
    make_config,
    snap,
    started,
    with_standby,
)
from test_supervisor_edges import floor_commands
from test_supervisor_plant import LEVEL, POWER
from test_supply_floor import VALVE as VALVE_POINT
from test_supply_floor import auto as floor_auto
from test_supply_floor import snapshot as floor_snapshot
from test_supply_floor import supervisor as floor_supervisor

from coolctl.control.supervisor import (
    LEAK,
    LOW_LEVEL,
    ActuatorRole,
    ActuatorSafety,
    Supervisor,
)
from coolctl.model import PointId, Quality, Reading, Snapshot, Source

SERVER_POWER = PointId(RACK, "srv1", "server_power")


def rope_and_level(now: float, litres: float) -> Snapshot:
    """Normal readings with the rope LEAK1 wet and the reservoir at `litres`."""
    return snap(now, {LEAK1: 1.0}, [Reading(LEVEL, litres, now, Quality.GOOD)])


# -- the leak's votes and the low level's release -----------------------------------------------


def test_with_one_rope_and_the_level_trend_two_votes_need_both() -> None:
    """One rope and the reservoir's trend are two detectors: with `leak_votes=2` a rope that
    reads wet while the level holds steady is one vote, not a leak (one faulty rope must not
    stop the pump), and the rope with the level falling at the leak rate is."""
    supervisor = config_with_trend(leak_points=(LEAK1,), leak_votes=2)
    for t in range(1, 30):  # steady, long enough for the trend to have a slope
        supervisor.step(level(t, 20.0), float(t), [])
    one_vote = supervisor.step(rope_and_level(30.0, 20.0), 30.0, [])
    assert LEAK not in one_vote.interlocks
    for t in range(31, 60):  # the rope still wet, the level now draining at 3 L/min
        decision = supervisor.step(rope_and_level(t, 20.0 - 0.05 * (t - 30)), float(t), [])
        if LEAK in decision.interlocks:
            break
    assert LEAK in decision.interlocks
    assert "reservoir_level falling" in supervisor.state.interlocks[LEAK].reason


def test_a_low_level_releases_at_ten_percent_over_its_minimum_not_a_litre_over() -> None:
    """The release margin is a share of the minimum (10 %): a 20 L minimum holds the pump
    stopped at 21.9 L however long it reads so (a drained reservoir's noise), and releases
    after hold_s at 22.1 L."""
    supervisor = config_with_trend(
        leak_level_drop_l_per_min=None, min_reservoir_level_l=20.0, hold_s=5.0
    )
    assert LOW_LEVEL in supervisor.step(level(1.0, 19.0), 1.0, []).interlocks
    for t in range(2, 20):  # over the minimum and over it + 1.1 L, under 110 % of it
        decision = supervisor.step(level(t, 21.9), float(t), [])
        assert LOW_LEVEL in decision.interlocks
    for t in range(20, 30):
        decision = supervisor.step(level(t, 22.1), float(t), [])
    assert LOW_LEVEL not in decision.interlocks


# -- what commands and events say ---------------------------------------------------------------


def test_a_leak_says_it_shuts_the_server_down() -> None:
    """A server's power set to 0 by the leak interlock: its command's reason (the audit trail an
    operator reads) says the server is shut down, not powered on."""
    server = ActuatorSafety(
        SERVER_POWER, ActuatorRole.SERVER_POWER, 0.0, 1.0, None, 1.0, 0.0, 1.0, on_leak=0.0
    )
    config = make_config()
    supervisor = started(replace(config, actuators=(*config.actuators, server)))
    command = by_point(supervisor.step(snap(1.0, {LEAK1: 1.0}), 1.0, []))[SERVER_POWER]
    assert (command.value, command.source) == (0.0, Source.INTERLOCK)
    assert command.reason.endswith("server shut down")


def test_the_shutdown_event_names_what_was_handed_back() -> None:
    """The shutdown event says which points were commanded on the way out (the pump's hand-back
    value here), and "nothing" only when nothing was."""
    handed = started().shutdown(5.0).events[0].message
    assert handed.endswith("commanded pump_speed_command")
    bare = make_config()
    nothing = started(replace(bare, actuators=bare.actuators[1:])).shutdown(5.0)
    assert nothing.commands == () and nothing.events[0].message.endswith("commanded nothing")


def test_a_negative_level_window_is_refused_naming_the_setting() -> None:
    """A level trend over a negative window is refused by the supervisor's own validation, with
    the setting's name (what the operator wrote in the config), not deeper down."""
    with pytest.raises(ValueError, match="leak_level_window_s must be finite and > 0"):
        Supervisor(make_config(leak_level_window_s=-20.0))


# -- the standby pump and the supply floor ------------------------------------------------------


def test_a_standby_reading_exactly_one_half_has_taken_over() -> None:
    """Boolean points read as 1 at or above 0.5: a standby_pump_active of exactly 0.5 after a
    pump failure is the standby taking over, which spares the rack its caps."""
    supervisor = started(with_standby())
    supervisor.step(snap(1.0, {RUNNING: 0.0}), 1.0, [])
    took = supervisor.step(snap(2.0, {RUNNING: 0.0, STANDBY_ACTIVE: 0.5}), 2.0, [])
    assert kinds(took) == ["standby_took_over"] and supervisor.state.standby_took_over
    later = supervisor.step(snap(5.0, {RUNNING: 0.0, STANDBY_ACTIVE: 0.5}), 5.0, [])
    assert "pump_failure_caps" not in kinds(later) and not supervisor.state.pump_failure_caps


def test_a_valve_on_a_cdu_that_sorts_first_is_not_the_supply_valve() -> None:
    """The supply floor holds only the valve of the CDU whose supply it reads: a valve on
    another CDU goes out as its loop asked, whether that CDU's name sorts before or after."""
    other_valve = PointId(RACK, "cdu0", "valve_command")
    base = floor_supervisor().config
    (valve, setpoint) = base.actuators
    moved = replace(valve, point=other_valve)
    sup = Supervisor(replace(base, actuators=(valve, setpoint, moved)))
    sup.startup(0.0)
    at = floor_auto
    floor_commands(sup, 1.0, floor_snapshot(1.0, 35.0), at(VALVE_POINT, 0.6), at(other_valve, 0.6))
    under = floor_commands(
        sup, 2.0, floor_snapshot(2.0, 24.0), at(VALVE_POINT, 1.0), at(other_valve, 1.0)
    )
    assert under[VALVE_POINT].value == pytest.approx(0.58)  # the supply valve closes
    assert under[other_valve].value == 1.0 and under[other_valve].reason == "loop"


@pytest.mark.parametrize(
    ("value", "said"),
    [(0.0, "server shut down"), (0.5, "server powered on"), (1.0, "server powered on")],
)
def test_a_server_power_value_is_described_as_the_driver_takes_it(value: float, said: str) -> None:
    """A server's power under 0.5 is a shutdown, from 0.5 up a power-on (what the Redfish driver
    sends for it): the reason of the value an interlock sets names the one that goes out."""
    server = ActuatorSafety(
        SERVER_POWER,
        ActuatorRole.SERVER_POWER,
        0.0,
        1.0,
        None,
        1.0,
        0.0,
        1.0,
        on_over_temperature=value,
    )
    config = make_config()
    supervisor = started(replace(config, actuators=(*config.actuators, server)))
    command = by_point(supervisor.step(snap(1.0, {CHIP: 99.0}), 1.0, []))[SERVER_POWER]
    assert command.value == value and command.reason.endswith(f"; {said}")


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (0.0, "standby pump not selected"),
        (0.5, "standby pump selected"),
        (1.0, "standby pump selected"),
    ],
)
def test_a_standby_selector_value_is_described_as_the_cdu_takes_it(value: float, said: str) -> None:
    """A standby selector from 0.5 up selects the standby pump (as a standby_pump_active reading
    from 0.5 up says it took over) and under it does not: a hand-back value's reason says which."""
    standby = replace(STANDBY_SAFETY, shutdown=value)
    config = make_config()
    supervisor = started(replace(config, actuators=(*config.actuators, standby)))
    command = by_point(supervisor.shutdown(5.0))[STANDBY_SAFETY.point]
    assert command.value == value and command.reason == f"shutdown: {said} (hand-back value)"


def trend_trips(falling_l_per_s: float, drop_l_per_min: float) -> bool:
    """Whether a level falling at `falling_l_per_s`, read every second for half a minute, trips
    the level-trend leak detector set to `drop_l_per_min`."""
    supervisor = config_with_trend(leak_level_drop_l_per_min=drop_l_per_min)
    tripped = False
    for t in range(1, 31):
        decision = supervisor.step(level(t, 20.0 - falling_l_per_s * t), float(t), [])
        tripped = tripped or LEAK in decision.interlocks
    return tripped


def test_the_level_trend_trips_at_its_drop_rate_in_litres_a_minute() -> None:
    """`leak_level_drop_l_per_min` is a rate per minute, and a level falling at exactly that
    rate is a leak: 1/16 L/s (exact in floating point, so is the fitted slope) is 3.75 L/min;
    1 % over the rate trips, 1 % under does not."""
    assert trend_trips(0.0625, 3.75)
    assert trend_trips(1.01 / 60.0, 1.0)
    assert not trend_trips(0.99 / 60.0, 1.0)


def test_a_level_trend_without_readings_does_not_hold_a_leak_that_has_cleared() -> None:
    """A level that is not read gives the trend no evidence either way: a rope's leak that has
    dried releases after its hold as it would without the trend."""
    supervisor = config_with_trend(hold_s=2.0)  # the level is never read
    assert LEAK in supervisor.step(snap(1.0, {LEAK1: 1.0}), 1.0, []).interlocks
    supervisor.step(snap(2.0), 2.0, [])
    assert kinds(supervisor.step(snap(4.5), 4.5, [])) == ["interlock_leak_cleared"]


def test_the_votes_asked_for_are_capped_at_the_detectors_a_rack_has() -> None:
    """`leak_votes = 3` on a rack with one rope and the level trend: both wet is a leak (the
    rack cannot vote with a detector it lacks), one alone is not."""
    supervisor = config_with_trend(leak_votes=3, leak_points=(LEAK1,))
    tripped_at = None
    for t in range(1, 31):
        readings = [Reading(LEVEL, 20.0 - 0.1 * t, float(t), Quality.GOOD)]
        decision = supervisor.step(snap(t, {LEAK1: 1.0}, extra=readings), float(t), [])
        if LEAK in decision.interlocks:
            tripped_at = t
            break
    assert tripped_at is not None and tripped_at > 10  # the rope alone did not trip it


def test_the_caps_of_a_leak_are_confirmed_once_and_stay_confirmed() -> None:
    """Once the PDU shows the leak's caps took hold, the pump takes its leak value and stays
    there tick after tick: the confirmation is said once, and not undone while the leak lasts."""
    config = make_config(power=(POWER,), leak_caps_power_w=30_000.0, leak_caps_timeout_s=60.0)
    supervisor = started(config)
    supervisor.step(snap(1.0, {LEAK1: 1.0, POWER: 90_000.0}), 1.0, [])
    assert not supervisor.state.leak_caps_confirmed
    confirmed = supervisor.step(snap(2.0, {LEAK1: 1.0, POWER: 20_000.0}), 2.0, [])
    assert kinds(confirmed) == ["leak_caps_confirmed"]
    for now in (3.0, 4.0, 5.0):
        decision = supervisor.step(snap(now, {LEAK1: 1.0, POWER: 20_000.0}), now, [])
        assert kinds(decision) == [] and supervisor.state.leak_caps_confirmed


def low_level_after(litres: float, then: float | Quality) -> tuple[bool, bool]:
    """(tripped, clear) of the low-level interlock: level readings of `litres`, then `then`,
    against an 8 L minimum (hold 5 s)."""
    supervisor = config_with_trend(leak_level_drop_l_per_min=None, hold_s=5.0)
    supervisor.step(level(1.0, litres), 1.0, [])
    second = snap(2.0, {LEVEL: then}) if isinstance(then, Quality) else level(2.0, then)
    decision = supervisor.step(second, 2.0, [])
    status = supervisor.state.interlocks.get(LOW_LEVEL)
    return LOW_LEVEL in decision.interlocks, status is not None and status.clear_since == 2.0


def test_the_low_level_boundaries() -> None:
    """Under the minimum is low; exactly at it is not. A level that has been low clears at
    exactly 10 % over the minimum, not under. Between the two a level never low is no
    interlock (only a margin for the release), and a level that went bad is blindness, not
    a low level."""
    assert low_level_after(7.9, 7.9)[0]
    assert low_level_after(12.0, 8.0) == (False, False)
    assert low_level_after(7.9, 8.0 * 1.1) == (True, True)  # clear, held for its 5 s
    assert low_level_after(12.0, 8.4) == (False, False)
    assert not low_level_after(12.0, Quality.BAD)[0]


def releases_after_a_rope_leak(falling_l_per_s: float, drop_l_per_min: float) -> bool:
    """Whether a rope's leak, wet for one tick while the reservoir level falls steadily at
    `falling_l_per_s` (under the trend's `drop_l_per_min`), releases after its 2 s hold."""
    supervisor = config_with_trend(leak_level_drop_l_per_min=drop_l_per_min, hold_s=2.0)
    for t in range(1, 31):
        readings = [Reading(LEVEL, 30.0 - falling_l_per_s * t, float(t), Quality.GOOD)]
        wet = {LEAK1: 1.0} if t == 20 else {}
        decision = supervisor.step(snap(t, wet, extra=readings), float(t), [])
        if t == 20:
            assert LEAK in decision.interlocks
    return LEAK not in decision.interlocks


def test_a_leak_releases_only_once_the_level_falls_at_under_half_the_drop_rate() -> None:
    """The release waits while the level still falls at half the trend's drop rate or more
    (so a drain near the rate does not trip and clear by turns): at exactly half of 7.5 L/min
    (1/16 L/s, exact) the leak holds; at 1 L/min it releases."""
    assert not releases_after_a_rope_leak(0.0625, 7.5)
    assert releases_after_a_rope_leak(1.0 / 60.0, 7.5)
