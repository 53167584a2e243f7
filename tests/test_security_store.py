"""The store stays bounded and its newest rows cost the same however many it holds.

The review found the events table never pruned (`prune_events` never called) and the newest
events listed by scanning the whole table (0.85 s at 500,000 events, on the store's only
thread). The timing is in benchmarks/store_listing.py; here, what it rests on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from test_api import MemoryPlane

from coolctl.model import Event, Severity
from coolctl.ops.api import ControlApi
from coolctl.ops.protocol import EventRecord
from coolctl.ops.store import Store


def event(n: int) -> Event:
    return Event("r01", "flap", Severity.WARNING, f"event {n}", 0.0, source="daemon")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "coolctl.db")
    for n in range(50):
        store.add_event(event(n), 1000.0 + n)
    return store


def test_the_newest_events_and_audit_rows_come_oldest_first(store: Store) -> None:
    assert [e.message for e in store.newest_events(3)] == ["event 47", "event 48", "event 49"]
    for n in range(4):
        store.audit("alice (uid 1000)", "reload", None, {"n": n}, 2000.0 + n)
    assert [a.details["n"] for a in store.newest_audit(2)] == [2, 3]


def test_the_newest_are_read_by_the_primary_key_not_by_a_scan(store: Store) -> None:
    plan = store._read("EXPLAIN QUERY PLAN SELECT id FROM events ORDER BY id DESC LIMIT 5")
    assert "SCAN events" in str(plan) and "TEMP B-TREE" not in str(plan)
    plan = store._read("EXPLAIN QUERY PLAN DELETE FROM events WHERE at < 5")
    assert "USING COVERING INDEX events_at" in str(plan) or "events_at" in str(plan)


def test_events_are_pruned_by_count_and_by_age(store: Store) -> None:
    assert store.prune_events(40) == 10
    assert store.prune_events(40, older_than=1030.0) == 20  # events 10..29
    assert store.events(0, 1)[0].message == "event 30"
    assert store.prune_events(40, older_than=0.0) == 0
    ids_after = [e.id for e in store.newest_events(100)]
    store.add_event(event(99), 5000.0)
    assert store.newest_events(1)[0].id > max(ids_after)  # ids are never reused


class IndexedPlane(MemoryPlane):
    """A plane that reads the newest events by index, and fails if asked to page."""

    def __init__(self) -> None:
        super().__init__()
        self.newest_asked: list[int] = []

    async def newest_events(self, limit: int = 100) -> list[EventRecord]:
        self.newest_asked.append(limit)
        return []

    async def events(self, since_id: int = 0, limit: int = 100) -> list[EventRecord]:
        raise AssertionError("the newest events must not be found by paging from id 0")


@pytest_asyncio.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[ControlApi, IndexedPlane]]:
    plane = IndexedPlane()
    served = ControlApi(plane, socket_path=tmp_path / "control.sock")
    await served.start()
    try:
        yield served, plane
    finally:
        await served.stop()


@pytest.mark.asyncio
async def test_the_api_lists_the_newest_events_by_index(
    api: tuple[ControlApi, IndexedPlane],
) -> None:
    served, plane = api
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(served.socket_path))
        ) as session,
        session.get("http://coolctl/v1/events?limit=20") as response,
    ):
        assert response.status == 200
    assert plane.newest_asked == [20]


@pytest.mark.hil
@pytest.mark.asyncio
async def test_the_daemon_prunes_its_events_as_configured() -> None:
    from dataclasses import replace

    from coolctl.config import load_config
    from coolctl.tools.testing import hil_rack

    config = load_config(Path(__file__).parent / "configs" / "hil-rack.toml")
    config = replace(config, daemon=replace(config.daemon, events_keep=100))
    async with hil_rack(config) as rack:
        store = rack.service.store
        for n in range(150):
            await store.add_event(event(n), 1000.0 + n)
        removed = await rack.service.plane.prune_events()
        assert removed >= 50  # beyond the newest 100, and everything from 1970
        assert len(await store.events(0, 1000)) <= 100
