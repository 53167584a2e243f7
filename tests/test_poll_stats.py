"""The poll bookkeeping the Modbus and Redfish drivers share: a run of failures is reported
once when it starts and once when it ends."""

from __future__ import annotations

from coolctl.drivers.poll_stats import PollChange, PollStats


def test_a_run_of_failures_is_reported_once_at_each_end() -> None:
    stats = PollStats()
    outcomes = [False, True, True, True, False, False, True, False]
    changes = [stats.record_poll(failed, float(i), i + 0.25) for i, failed in enumerate(outcomes)]
    assert changes == [
        PollChange.NONE,
        PollChange.STARTED_FAILING,
        PollChange.NONE,
        PollChange.NONE,
        PollChange.RECOVERED,
        PollChange.NONE,
        PollChange.STARTED_FAILING,
        PollChange.RECOVERED,
    ]
    assert (stats.polls, stats.poll_failures, stats.consecutive_failures) == (8, 4, 0)
    assert stats.last_success_ts == 7.25 and stats.last_poll_duration_s == 0.25
