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
async def test_a_failure_whose_text_carries_changing_numbers_is_logged_once_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A device that refuses every write with a new transaction id and the value in its text:
    one line when it starts, one when it ends with how many failed, not one per tick."""
    device = Device()
    chan = channel(device)
    with caplog.at_level(logging.INFO, logger="coolctl.daemon.actuation"):
        for step in range(6):
            value = 0.3 + step * 0.01
            device.fail_with = OSError(f"transaction {1000 + step}: write of {value:.2f} refused")
            chan.submit(command(value), float(step))
            await chan.idle()
        device.fail_with = ValueError("answer garbled")  # another failure: logged
        chan.submit(command(0.45), 7.0)
        await chan.idle()
        device.fail_with = None
        chan.submit(command(0.5), 10.0)
        await chan.idle()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("failed:" in m for m in messages) == 2, messages
    assert sum("succeed again after 7 failures" in m for m in messages) == 1, messages
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
    assert chan.stats.write_failures == 5 and chan.stats.writes == 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("failed:" in m for m in messages) == 1
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
