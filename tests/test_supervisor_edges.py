"""Edges of coolctl.control.supervisor that the main tests pass by: what it reports as
commanded, how long a silent sensor is said to have been silent, and a pump that stops while a
leak asks it for its safe speed."""

from __future__ import annotations

from dataclasses import replace

from test_supervisor import (
    CAP1,
    CAP2,
    LEAK1,
    PUMP,
    PUMP_SAFETY,
    RUNNING,
    UNKNOWN,
    VALVE,
    VALVE_SAFETY,
    auto,
    by_point,
    cap,
    kinds,
    make_config,
    snap,
    started,
)

from coolctl.control.supervisor import Supervisor


def test_commanded_is_the_last_value_sent_and_none_before_any() -> None:
    supervisor = Supervisor(make_config())
    assert supervisor.commanded(PUMP) is None
    supervisor.startup(0.0)
    assert supervisor.commanded(PUMP) == 0.8  # the failsafe value of start-up
    decision = supervisor.step(snap(1.0), 1.0, [auto(VALVE, 0.95)])
    assert supervisor.commanded(VALVE) == by_point(decision)[VALVE].value == 0.95
    assert supervisor.commanded(UNKNOWN) is None


def test_a_silent_sensor_is_said_silent_for_the_time_since_start_up() -> None:
    supervisor = Supervisor(make_config(silent_after_s=10.0))
    supervisor.startup(100.0)
    supervisor.step(snap(100.0), 100.0, [])
    alarm = supervisor.step(snap(112.0, {LEAK1: None}), 112.0, [])
    assert kinds(alarm) == ["safety_sensor_silent"]
    assert "has not reported in 12 s since start-up" in alarm.events[0].message


def test_a_pump_that_stops_while_a_leak_asks_for_its_safe_speed_is_a_pump_failure() -> None:
    """Only a leak value of 0 stops the pump on purpose; at a safe speed it must keep running,
    and a pump that stops then has failed (the standby, or the caps, must follow)."""
    safe_speed = replace(PUMP_SAFETY, on_leak=0.3)
    supervisor = started(make_config(actuators=(safe_speed, VALVE_SAFETY, cap(CAP1), cap(CAP2))))
    leak = supervisor.step(snap(1.0, {LEAK1: 1.0}), 1.0, [])
    assert by_point(leak)[PUMP].value == 0.3 and "leak" in leak.interlocks
    running = supervisor.step(snap(2.0, {LEAK1: 1.0}), 2.0, [])
    assert "pump_failure" not in running.interlocks
    stopped = supervisor.step(snap(3.0, {LEAK1: 1.0, RUNNING: 0.0}), 3.0, [])
    assert "pump_failure" in stopped.interlocks
    assert "interlock_pump_failure" in kinds(stopped)
