"""Writes overrides to a coolctl store until killed; the crash test in test_store.py runs it.

Usage: store_writer.py PATH N

Prints `start` once imported, `open` once the store is open, then for each of N overrides
`write <target> <value>` just before set_override and `ack <target> <value>` only after it
returned, each flushed at once: an `ack` line is a promise that the override is durable, and
the last `write` without its `ack` is the one write that may or may not have happened.

Targets are unique to this run (a random prefix), and every fifth write replaces an earlier
target of the run with a new value, so kills also land in the replace path; the last
acknowledged value of a target is the one that must survive.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from coolctl.ops.store import Store


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    path, count = Path(argv[1]), int(argv[2])
    run = secrets.token_hex(4)
    say("start")
    store = Store(path)
    say("open")
    for i in range(count):
        # Every fifth write replaces the target written three steps before.
        slot = i - 3 if i % 5 == 4 else i
        target = f"w{run}/point{slot}"
        value = i * 1.5 + 0.25  # distinct per write: a value can only come from its own write
        say(f"write {target} {value!r}")
        store.set_override("crash", target, value, "writer", f"write {i}", 1000.0 + i, None)
        say(f"ack {target} {value!r}")
    store.close()
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
