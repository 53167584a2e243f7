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
        self.started = asyncio.Event()  # a write has reached the device

    async def write(self, point: str, value: float) -> float:
        self.started.set()
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
    await device.started.wait()  # the first write is in flight
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
    # a lost link (a timeout) is the driver's to back off from: tried at every tick
    assert chan.stats.write_failures == 5 and chan.stats.deferred == 0 and chan.stats.writes == 1
    assert chan.stats.consecutive_failures == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("failed:" in m for m in messages) == 1
    assert sum("succeed again" in m for m in messages) == 1
    await chan.stop()


@pytest.mark.asyncio
async def test_stop_lets_the_write_in_flight_finish() -> None:
    device = Device(delay_s=0.05)
    chan = channel(device)
    chan.submit(command(0.6), 0.0)
    await device.started.wait()
    await chan.stop()
    assert device.written == [0.6]


@pytest.mark.asyncio
async def test_non_finite_commands_are_refused() -> None:
    chan = channel(Device())
    with pytest.raises(ValueError):
        chan.submit(command(float("nan")), 0.0)
    await chan.stop()


class Refusal(Exception):
    """What a driver raises for a write the device refused (not a lost link)."""

    refused = True


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
    # 0.2, 0.4, ... 6.4 s, then every RETRY_MAX_S (8 s): about 20 tries, not 600
    assert len(device.written) == stats.write_failures == stats.readback_mismatches
    assert 15 <= len(device.written) <= 25, device.written
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


@pytest.mark.asyncio
async def test_clamped_commands_are_counted_and_in_range_ones_are_not() -> None:
    chan = channel(Device())
    assert chan.submit(command(0.5), 0.0).value == 0.5
    assert chan.stats.clamped == 0
    assert chan.submit(command(1.5), 1.0).value == 1.0
    assert chan.submit(command(0.1), 2.0).value == 0.2
    assert chan.stats.clamped == 2
    await chan.idle()
    await chan.stop()


@pytest.mark.asyncio
async def test_values_are_quantised_to_whole_counts_within_the_limits() -> None:
    device = Device()
    chan = ActuatorChannel(
        PUMP, ActuatorLimits(0.2005, 0.9995), device.write, resolution=0.001, retry_after_s=0.1
    )
    chan.start()
    assert chan.submit(command(0.12345 + 0.5), 0.0).value == 0.623
    assert chan.submit(command(0.9995), 1.0).value == 0.999  # 1.000 would be above the limit
    assert chan.submit(command(0.2005), 2.0).value == 0.201  # 0.200 would be below it
    await chan.idle()
    assert device.written[-1] == 0.201
    await chan.stop()
    exact = ActuatorChannel(PUMP, ActuatorLimits(0.0, 1.0), device.write, resolution=0.0)
    assert exact.submit(command(0.12345), 0.0).value == 0.12345  # no resolution: as asked


class Offset(Device):
    """Reads back what was written plus `offset_counts` of a 0.001 count."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    async def write(self, point: str, value: float) -> float:
        self.written.append(value)
        return value + self.offset


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("resolution", "offset", "matches"),
    [
        (0.001, 0.0004, True),  # within half a count: the register holds it
        (0.001, 0.0005, True),  # half a count exactly (float dust either way): still it
        (0.001, 0.0006, False),
        (0.0, 0.5e-9, True),  # no resolution: float dust only
        (0.0, 1.5e-9, False),
    ],
)
async def test_a_read_back_within_half_a_count_is_the_value_written(
    resolution: float, offset: float, matches: bool
) -> None:
    device = Offset(offset)
    chan = ActuatorChannel(PUMP, ActuatorLimits(0.0, 1.0), device.write, resolution=resolution)
    chan.start()
    chan.submit(command(0.5), 0.0)
    await chan.idle()
    assert (chan.stats.writes, chan.stats.readback_mismatches) == ((1, 0) if matches else (0, 1))
    await chan.stop()


@pytest.mark.asyncio
async def test_a_poll_sampled_before_the_write_is_not_a_drift() -> None:
    device = Device()
    now = [10.0]
    chan = ActuatorChannel(
        PUMP, ActuatorLimits(0.0, 1.0), device.write, resolution=0.001, clock=lambda: now[0]
    )
    chan.start()
    chan.submit(command(0.5), 10.0)
    await chan.idle()  # confirmed at 10.0 on the readings' clock
    chan.observe(0.3, 10.5, sampled_at=9.9)  # the device before the write
    chan.submit(command(0.5), 10.5)
    chan.observe(0.3, 10.5, sampled_at=10.0)  # sampled as it was confirmed: still before
    chan.submit(command(0.5), 10.5)
    assert chan.stats.skipped_unchanged == 2 and chan.stats.drifts == 0
    chan.observe(0.3, 10.6, sampled_at=10.1)  # after it: someone turned the knob
    chan.submit(command(0.5), 10.6)
    await chan.idle()
    assert device.written == [0.5, 0.5] and chan.stats.drifts == 1
    await chan.stop()


@pytest.mark.asyncio
async def test_a_device_that_keeps_losing_its_value_is_rewritten_with_backoff() -> None:
    device = Device()
    chan = ActuatorChannel(
        PUMP, ActuatorLimits(0.0, 1.0), device.write, resolution=0.001, retry_after_s=1.0
    )
    chan.start()

    async def tick(now: float) -> None:
        chan.submit(command(0.5), now)
        await chan.idle()

    await tick(100.0)
    assert device.written == [0.5]
    chan.observe(0.3, 101.0, sampled_at=101.0)  # the first drift: rewritten at once
    await tick(101.0)
    assert len(device.written) == 2 and chan.stats.drifts == 1
    chan.observe(0.3, 102.0, sampled_at=102.0)  # lost again: back off one period
    await tick(102.0)
    await tick(102.9)
    assert len(device.written) == 2 and chan.stats.deferred == 2
    await tick(103.0)
    assert len(device.written) == 3
    chan.observe(0.3, 104.0, sampled_at=104.0)  # and again: two periods
    await tick(104.0)
    await tick(105.9)
    assert len(device.written) == 3
    await tick(106.0)
    assert len(device.written) == 4 and chan.stats.drifts == 3
    chan.observe(0.5, 107.0, sampled_at=107.0)  # kept at last: the count starts over
    chan.submit(command(0.6), 107.0)
    await chan.idle()
    chan.observe(0.3, 108.0, sampled_at=108.0)
    await tick(108.0)  # a first drift again: at once
    assert device.written[-2:] == [0.6, 0.5]
    await chan.stop()


@pytest.mark.asyncio
async def test_a_device_readable_again_is_written_at_once_whatever_the_backoff() -> None:
    device = Device()
    chan = ActuatorChannel(
        PUMP, ActuatorLimits(0.0, 1.0), device.write, resolution=0.001, retry_after_s=10.0
    )
    chan.start()
    device.fail_with = Refusal("locked in local control")
    chan.submit(command(0.5), 100.0)
    await chan.idle()
    chan.observe(None, 101.0)  # its readings go stale too
    chan.submit(command(0.5), 101.0)
    assert chan.stats.deferred == 1
    device.fail_with = None
    chan.observe(0.3, 102.0, sampled_at=102.0)  # readable again: the link is back
    chan.submit(command(0.5), 102.0)
    await chan.idle()
    assert device.written == [0.5] and chan.stats.writes == 1
    await chan.stop()


@pytest.mark.asyncio
async def test_commands_are_counted_by_source_and_a_channel_without_resolution_is_exact() -> None:
    device = Device()
    chan = ActuatorChannel(PUMP, ActuatorLimits(0.0, 1.0), device.write)
    chan.start()
    asked = [(0.12345, Source.AUTO, 0.0), (0.2, Source.AUTO, 1.0), (0.0, Source.INTERLOCK, 2.0)]
    for value, source, now in asked:
        chan.submit(command(value, source), now)
        await chan.idle()
    assert chan.stats.commands_by_source == {Source.AUTO: 2, Source.INTERLOCK: 1}
    assert device.written[0] == 0.12345  # no resolution given: written as asked
    await chan.stop()


@pytest.mark.asyncio
async def test_unchanged_means_within_half_a_count_of_what_the_device_holds() -> None:
    device = Device()
    chan = channel(device)
    chan.submit(command(0.5), 0.0)
    await chan.idle()
    chan.observe(0.5004, 1.0, sampled_at=1.0)  # the device holds it, to within half a count
    chan.submit(command(0.5), 1.0)
    assert chan.stats.skipped_unchanged == 1 and chan.stats.drifts == 0
    chan.submit(command(0.501), 2.0)  # one count more: written
    await chan.idle()
    assert device.written == [0.5, 0.501]
    await chan.stop()


@pytest.mark.asyncio
async def test_a_device_that_keeps_losing_its_value_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    device = Device()
    chan = ActuatorChannel(
        PUMP, ActuatorLimits(0.0, 1.0), device.write, resolution=0.001, retry_after_s=0.1
    )
    chan.start()
    with caplog.at_level(logging.WARNING, logger="coolctl.daemon.actuation"):
        for k in range(5):
            chan.submit(command(0.5), 10.0 * k)
            await chan.idle()
            chan.observe(0.3, 10.0 * k + 5.0, sampled_at=10.0 * k + 5.0)
    assert chan.stats.drifts == 5 and len(device.written) == 5
    assert sum("does not keep" in r.getMessage() for r in caplog.records) == 1
    await chan.stop()
