"""Counters of one polled device, shared by the Modbus and Redfish drivers.

Both drivers count polls, failures by kind and the current run of failed polls the same way,
and log once when a run of failures starts and once when it ends; this is that bookkeeping, so
the two cannot drift apart. Times are `time.monotonic()` seconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class PollChange(enum.Enum):
    """What one poll changed about the device's health: what the driver logs, once."""

    NONE = "none"
    STARTED_FAILING = "started_failing"
    RECOVERED = "recovered"


@dataclass(slots=True)
class PollStats:
    """Counters for metrics and the operator's `status` view."""

    polls: int = 0
    poll_failures: int = 0  # polls that did not read every point good
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    consecutive_failures: int = 0
    last_success_ts: float | None = None  # end of the last poll that read every point good
    last_poll_duration_s: float = 0.0
    connected: bool = False
    writes: int = 0
    write_failures: int = 0

    def count(self, kind: str) -> None:
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1

    def record_poll(self, failed: bool, started: float, done: float) -> PollChange:
        """Count one poll; say whether it started a run of failures or ended one."""
        self.polls += 1
        self.last_poll_duration_s = done - started
        if failed:
            self.poll_failures += 1
            self.consecutive_failures += 1
            first = self.consecutive_failures == 1
            return PollChange.STARTED_FAILING if first else PollChange.NONE
        self.last_success_ts = done
        ended, self.consecutive_failures = self.consecutive_failures, 0
        return PollChange.RECOVERED if ended else PollChange.NONE
