"""Actuator channels: clamp, coalesce, skip unchanged, count failures, finish writes on stop.

The writer here is a plain coroutine standing in for a device's write-and-read-back, so that the
channel's bookkeeping can be driven step by step; the same channel runs against real Modbus
devices in test_hil.py.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from coolctl.control.limits import ActuatorLimits
from coolctl.daemon.actuation import ActuatorChannel
from coolctl.model import Command, PointId, Source

PUMP = PointId("r01", "cdu1", "pump_speed_command")


class Device:
    """Holds the written value; each write takes `delay_s` and may be made to fail."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.written: list[float] = []
        self.fail_with: Exception | None = None

    async def write(self, point: str, value: float) -> float:
        await asyncio.sleep(self.delay_s)
        if self.fail_with is not None:
            raise self.fail_with
        self.written.append(value)
        return round(value, 3)  # the register holds thousandths


def command(value: float, source: Source = Source.AUTO) -> Command:
    return Command(PUMP, value, source, "test")


def channel(device: Device, slew: float | None = None) -> ActuatorChannel:
    chan = ActuatorChannel(PUMP, ActuatorLimits(0.2, 1.0, slew), device.write, resolution=0.001)
    chan.start()
    return chan


@pytest.mark.asyncio
async def test_commands_queued_behind_a_slow_write_are_coalesced() -> None:
    device = Device(delay_s=0.05)
    chan = channel(device)
    chan.submit(command(0.5), 0.0)
    await asyncio.sleep(0.01)  # the first write is in flight
    chan.submit(command(0.6), 0.1)
    chan.submit(command(0.7), 0.2)
    await chan.idle()
    assert device.written == [0.5, 0.7]  # the middle one was overtaken, never written
    assert chan.stats.coalesced == 1 and chan.stats.writes == 2
    await chan.stop()


@pytest.mark.asyncio
async def test_unchanged_values_are_not_rewritten_unless_the_device_drifted() -> None:
    device = Device()
    chan = channel(device)
    chan.submit(command(0.5), 0.0)
    await chan.idle()
    chan.observe(0.5, 1.0)
    chan.submit(command(0.5002), 1.0)  # within half a count of what the device holds
    await chan.idle()
    assert device.written == [0.5] and chan.stats.skipped_unchanged == 1
    chan.observe(0.42, 2.0)  # someone else moved the setpoint: write ours again
    chan.submit(command(0.5), 2.0)
    await chan.idle()
    assert device.written == [0.5, 0.5]
    await chan.stop()


@pytest.mark.asyncio
async def test_bounds_and_slew_hold_and_the_first_command_ramps_from_the_device_value() -> None:
    device = Device()
    chan = channel(device, slew=0.1)
    chan.observe(0.3, 0.0)  # what the device held when the daemon started
    applied = chan.submit(command(1.5), 1.0)
    assert applied.value == pytest.approx(0.4) and "slew-limited" in applied.reason
    await chan.idle()
    low = chan.submit(command(-3.0), 100.0)
    assert low.value == 0.2 and "clamped to min 0.2" in low.reason
    await chan.idle()
    assert device.written == [pytest.approx(0.4), 0.2]
    await chan.stop()


@pytest.mark.asyncio
async def test_write_failures_are_counted_and_logged_once_per_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    device = Device()
    chan = channel(device)
    device.fail_with = TimeoutError("no reply within 0.5 s")
    with caplog.at_level(logging.INFO, logger="coolctl.daemon.actuation"):
        for step in range(5):
            chan.submit(command(0.3 + step * 0.01), float(step))
            await chan.idle()
        device.fail_with = None
        chan.submit(command(0.5), 10.0)
        await chan.idle()
    # failed at 0 (retry due at 1), at 1 (due at 3), deferred at 2, failed at 3 (due at 7),
    # deferred at 4: the backoff doubles from the channel's retry_after_s (1 s)
    assert chan.stats.write_failures == 3 and chan.stats.deferred == 2 and chan.stats.writes == 1
    assert chan.stats.consecutive_failures == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("failed" in m for m in messages) == 1
    assert sum("succeed again" in m for m in messages) == 1
    await chan.stop()


@pytest.mark.asyncio
async def test_stop_lets_the_write_in_flight_finish() -> None:
    device = Device(delay_s=0.05)
    chan = channel(device)
    chan.submit(command(0.6), 0.0)
    await asyncio.sleep(0.01)
    await chan.stop()
    assert device.written == [0.6]


@pytest.mark.asyncio
async def test_non_finite_commands_are_refused() -> None:
    chan = channel(Device())
    with pytest.raises(ValueError):
        chan.submit(command(float("nan")), 0.0)
    await chan.stop()


class Stubborn(Device):
    """Answers every write but keeps holding `holds`: a device that never reads back."""

    def __init__(self, holds: float) -> None:
        super().__init__()
        self.holds = holds

    async def write(self, point: str, value: float) -> float:
        self.written.append(value)
        return self.holds


@pytest.mark.asyncio
async def test_a_device_that_never_reads_back_is_retried_with_bounded_backoff() -> None:
    device = Stubborn(holds=0.5)
    chan = ActuatorChannel(
        PUMP, ActuatorLimits(0.2, 1.0), device.write, resolution=0.001, retry_after_s=0.2
    )
    chan.start()
    ticks = 0
    for ticks in range(1, 601):  # two minutes of 0.2 s ticks asking for the same value
        chan.submit(command(0.8), ticks * 0.2)
        await chan.idle()
    stats = chan.stats
    # 0.2, 0.4, 0.8, ... 25.6 s, then every RETRY_MAX_S (30 s): 8 + 3 tries, not 600
    assert len(device.written) == stats.write_failures == stats.readback_mismatches
    assert 8 <= len(device.written) <= 12, device.written
    assert stats.deferred == ticks - len(device.written)
    assert stats.writes == 0 and stats.last_written is None
    assert stats.consecutive_failures == len(device.written)
    # once the device reads back again, the next due retry succeeds and the backoff resets
    device.holds = 0.8
    chan.submit(command(0.8), ticks * 0.2 + 31.0)
    await chan.idle()
    assert stats.writes == 1 and stats.consecutive_failures == 0
    chan.submit(command(0.7), ticks * 0.2 + 31.2)
    await chan.idle()
    assert device.written[-1] == 0.7
    await chan.stop()


@pytest.mark.asyncio
async def test_the_backoff_never_delays_a_new_safety_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    device = Stubborn(holds=0.5)
    chan = ActuatorChannel(
        PUMP, ActuatorLimits(0.0, 1.0), device.write, resolution=0.001, retry_after_s=10.0
    )
    chan.start()
    with caplog.at_level(logging.WARNING, logger="coolctl.daemon.actuation"):
        chan.submit(command(0.8), 0.0)
        await chan.idle()
        chan.submit(command(0.9), 1.0)  # automatic control waits for the retry
        chan.submit(command(0.8, Source.INTERLOCK), 1.1)  # the value that failed: waits too
        await chan.idle()
        assert device.written == [0.8] and chan.stats.deferred == 2
        chan.submit(command(0.0, Source.INTERLOCK), 1.2)  # a new safety value: at once
        await chan.idle()
        chan.submit(command(1.0, Source.FAILSAFE), 1.3)
        await chan.idle()
    assert device.written == [0.8, 0.0, 1.0]
    assert sum("reads back" in r.getMessage() for r in caplog.records) == 1  # once per state
    await chan.stop()
