"""How long `coolctl events` (the newest N events) takes on a store of a million events.

    python benchmarks/store_listing.py [--rows 1000000] [--limit 100] [--rounds 5]

The store is filled with `--rows` events in one transaction (a flapping sensor's worth), then:

- baseline: one `events(since_id, limit)` page of `--limit` rows from the start of the table,
  the cheapest read the store has (what a client following by id pays per call);
- newest by index: `newest_events(limit)`, what the control API answers `coolctl events` with;
- newest by paging: the control API's former way, paging from id 0 to the end of the table;
- prune: `prune_events` down to 100,000 rows, by count, then by age (one pass each).

Each figure is the median of `--rounds` rounds, with its ratio to the baseline measured in the
same process. The store runs on this thread (the daemon runs it on its own store thread).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from coolctl.model import Event, Severity
from coolctl.ops.store import Store


def fill(store: Store, rows: int) -> None:
    """`rows` events, one a second, through the store's own connection in one transaction."""
    conn = store._connection()  # autocommit: one explicit transaction, not one per row
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO events (at, rack, kind, severity, message, source) "
        "VALUES (?, 'r01', 'leak', 'warning', ?, 'daemon')",
        ((1.7e9 + i, f"leak sensor flapping ({i})") for i in range(rows)),
    )
    conn.execute("COMMIT")


def median_s(call: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def newest_by_paging(store: Store, limit: int) -> list[object]:
    """The former control API's way: page from the start until an empty page."""
    newest: list[object] = []
    since = 0
    while page := store.events(since, 1000):
        newest = (newest + page)[-limit:]
        since = page[-1].id
    return newest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, Store(Path(folder) / "coolctl.db") as store:
        started = time.perf_counter()
        fill(store, args.rows)
        store.add_event(Event("r01", "last", Severity.INFO, "the newest", 0.0), 1.8e9)
        print(f"filled {args.rows + 1:,} events in {time.perf_counter() - started:.1f} s")
        rows, limit = args.rows + 1, args.limit
        assert [e.message for e in store.newest_events(limit)][-1] == "the newest"
        assert store.newest_events(limit) == newest_by_paging(store, limit)
        baseline = median_s(lambda: store.events(0, limit), args.rounds)
        by_index = median_s(lambda: store.newest_events(limit), args.rounds)
        paging = median_s(lambda: newest_by_paging(store, limit), max(1, args.rounds // 2))
        print(f"| read ({rows:,} events) | ms | ratio |")
        print("|---|---:|---:|")
        for name, seconds in (
            (f"baseline: the first {limit} events by id", baseline),
            (f"newest {limit} by index (newest_events)", by_index),
            (f"newest {limit} by paging from id 0 (before)", paging),
        ):
            print(f"| {name} | {seconds * 1000:.3f} | {seconds / baseline:.2f} |")
        started = time.perf_counter()
        removed = store.prune_events(100_000)
        by_count = time.perf_counter() - started
        started = time.perf_counter()
        removed_old = store.prune_events(100_000, older_than=1.7e9 + rows - 50_000)
        by_age = time.perf_counter() - started
        print(f"prune to 100,000 by count: {removed:,} rows in {by_count:.2f} s")
        print(
            f"prune by age (older than the last 50,000 s): {removed_old:,} rows in {by_age:.2f} s"
        )
        after = median_s(lambda: store.newest_events(limit), 5)
        print(f"newest {limit} after pruning: {after * 1000:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
