"""The feedforward's dead time: a signal answered late, by the sample times it was given."""

from __future__ import annotations

import math

import pytest

from coolctl.control.delay import DelayLine


def test_the_line_answers_with_the_newest_sample_that_is_old_enough() -> None:
    line = DelayLine(delay_s=2.0)
    assert line.at(0.0) is None  # nothing seen yet
    for now, value in [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]:
        line.push(now, value)
    assert line.at(3.0) == 2.0  # the sample at 1 s
    assert line.at(3.5) == 2.0  # 1.5 s is due: 1 s is still the newest old enough
    assert line.at(4.0) == 3.0
    assert line.at(10.0) == 4.0  # long after: the last sample holds


def test_a_young_line_answers_with_its_oldest_sample() -> None:
    line = DelayLine(delay_s=6.0)
    line.push(0.0, 40.0)
    line.push(1.0, 100.0)
    assert line.at(1.0) == 40.0  # not 0 nor None: a loop just started feeds forward what it saw


def test_no_delay_is_the_signal_itself() -> None:
    line = DelayLine(delay_s=0.0)
    line.push(0.0, 1.0)
    line.push(0.5, 2.0)
    assert line.at(0.5) == 2.0


def test_time_that_runs_backwards_starts_the_line_afresh() -> None:
    line = DelayLine(delay_s=1.0)
    line.push(10.0, 1.0)
    line.push(11.0, 2.0)
    line.push(5.0, 7.0)  # a clock reset: the old samples are from another time line
    assert line.at(5.0) == 7.0
    line.push(6.0, 8.0)
    assert line.at(6.0) == 7.0


def test_memory_stays_bounded_by_the_delay() -> None:
    line = DelayLine(delay_s=3.0)
    for t in range(10_000):
        line.push(float(t), float(t))
        assert line.at(float(t)) == max(0.0, t - 3.0)
    assert len(line._samples) <= 4


@pytest.mark.parametrize("delay_s", [-1.0, math.nan])
def test_a_negative_or_unknown_delay_is_refused(delay_s: float) -> None:
    with pytest.raises(ValueError, match="delay_s"):
        DelayLine(delay_s)
