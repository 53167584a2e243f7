"""The exit codes of every `coolctl` command, one table for the CLI, the daemon and the tools.

Scripts and systemd units test these numbers, so a value never changes meaning:

| code | meaning |
|---|---|
| 0 | success |
| 1 | the thing checked is bad or was refused (config, profile, device, scenario, an |
|   | override out of bounds, a fit that failed) |
| 2 | usage error |
| 3 | a needed service (the daemon, a device, a simulation) could not be reached |
| 4 | a live identification test was aborted and handed back to the automatic loops |
| 130 | interrupted (Ctrl-C) |
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    BAD = 1
    USAGE = 2
    UNREACHABLE = 3
    ABORTED = 4
    INTERRUPTED = 130
