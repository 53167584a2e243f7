"""The durable store: round trips, replace and expiry semantics, the append-only audit log,
schema migrations, refusal of foreign/corrupt/newer files, AsyncStore, a model-based check
of override bookkeeping, and acknowledged writes surviving `kill -9`."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import coolctl.ops.store
from coolctl.model import Event, Severity
from coolctl.ops.protocol import OverrideRecord
from coolctl.ops.store import APPLICATION_ID, SCHEMA_VERSION, AsyncStore, Store, StoreError

WRITER = Path(__file__).with_name("store_writer.py")
PUMP = "cdu1/pump_speed_command"
SETPOINT = "pump.setpoint"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "coolctl.db"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    with Store(path) as opened:
        yield opened


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection, as a careless script or an intruder with file access would use."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def overrides_table(path: Path) -> list[tuple[Any, ...]]:
    with raw(path) as conn:
        return conn.execute(
            "SELECT id, target, value, ended_at, ended_by, end_reason FROM overrides ORDER BY id"
        ).fetchall()


# -- opening ---------------------------------------------------------------------------------


def test_new_store_is_private_and_marked_as_coolctl(path: Path, store: Store) -> None:
    store.set_override("r1", PUMP, 0.5, "alice", "test", 100.0, None)  # creates -wal and -shm
    for suffix in ("", "-wal", "-shm"):
        file = Path(f"{path}{suffix}")
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    with raw(path) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_existing_store_with_loose_mode_is_tightened(path: Path) -> None:
    Store(path).close()
    path.chmod(0o644)
    Store(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_everything_survives_a_restart(path: Path) -> None:
    with Store(path) as store:
        override = store.set_override("r1", PUMP, 0.7, "alice", "flush", 100.0, 200.0)
        store.set_mode("r1", "manual", "alice", "maintenance", 101.0)
        event = store.add_event(Event("r1", "failsafe", Severity.CRITICAL, "lost", 5.0), 102.0)
        log = store.audit_log()
    with Store(path) as store:
        assert store.active_overrides(150.0) == [override]
        assert store.modes() == {"r1": "manual"}
        assert store.events() == [event]
        assert store.audit_log() == log
        assert store.integrity_check()


def test_closed_store_refuses_calls(store: Store) -> None:
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.active_overrides(0.0)
    with pytest.raises(StoreError, match="closed"):
        store.set_mode("r1", "auto", "alice", "", 0.0)


def test_store_is_confined_to_its_thread(store: Store) -> None:
    """The daemon gives the store one thread; use from another is a bug, not a storage error."""
    errors: list[BaseException] = []

    def elsewhere() -> None:
        try:
            store.modes()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], sqlite3.ProgrammingError)


def test_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        Store(tmp_path / "nowhere" / "coolctl.db")


# -- overrides -------------------------------------------------------------------------------


def test_override_round_trip(store: Store) -> None:
    record = store.set_override("r1", PUMP, 0.6, "alice", "flush air", 100.0, 160.0)
    assert record == OverrideRecord(record.id, "r1", PUMP, 0.6, "alice", "flush air", 100.0, 160.0)
    permanent = store.set_override("r2", SETPOINT, 31.5, "bob", "", 101.0, None)
    assert permanent.expires_at is None
    assert store.active_overrides(120.0) == [record, permanent]
    [entry] = [a for a in store.audit_log() if a.details["id"] == record.id]
    assert (entry.who, entry.action, entry.rack, entry.at) == ("alice", "override_set", "r1", 100.0)
    assert entry.details == {
        "id": record.id,
        "target": PUMP,
        "value": 0.6,
        "expires_at": 160.0,
        "why": "flush air",
        "old_value": None,
        "replaced_id": None,
    }


def test_setting_again_replaces_the_active_override(path: Path, store: Store) -> None:
    first = store.set_override("r1", PUMP, 0.6, "alice", "flush", 100.0, None)
    other_rack = store.set_override("r2", PUMP, 0.3, "alice", "flush", 100.0, None)
    second = store.set_override("r1", PUMP, 0.8, "bob", "more flow", 110.0, 500.0)
    assert second.id != first.id
    assert store.active_overrides(120.0) == [other_rack, second]
    last = store.audit_log()[-1]
    assert (last.action, last.who) == ("override_set", "bob")
    assert last.details["old_value"] == 0.6 and last.details["replaced_id"] == first.id
    # History is kept: the replaced row is ended, not deleted.
    assert overrides_table(path)[0] == (first.id, PUMP, 0.6, 110.0, "bob", "replaced")


def test_clear_ends_the_override_and_is_audited(path: Path, store: Store) -> None:
    record = store.set_override("r1", PUMP, 0.6, "alice", "flush", 100.0, None)
    assert store.clear_override("r1", PUMP, "bob", "done", 120.0) == record
    assert store.active_overrides(120.0) == []
    last = store.audit_log()[-1]
    assert (last.action, last.who, last.rack, last.at) == ("override_clear", "bob", "r1", 120.0)
    assert last.details == {"id": record.id, "target": PUMP, "value": 0.6, "why": "done"}
    assert overrides_table(path) == [(record.id, PUMP, 0.6, 120.0, "bob", "cleared")]


def test_clearing_nothing_returns_none_and_audits_nothing(store: Store) -> None:
    assert store.clear_override("r1", PUMP, "bob", "done", 120.0) is None
    store.set_override("r1", PUMP, 0.6, "alice", "flush", 100.0, 130.0)
    assert store.clear_override("r2", PUMP, "bob", "wrong rack", 120.0) is None
    assert store.clear_override("r1", PUMP, "bob", "too late", 130.0) is None  # expired
    assert [a.action for a in store.audit_log()] == ["override_set"]


def test_expiry_is_exactly_at_expires_at(store: Store) -> None:
    record = store.set_override("r1", PUMP, 0.6, "alice", "flush", 100.0, 160.0)
    just_before = math.nextafter(160.0, 0.0)
    assert store.active_overrides(just_before) == [record]
    assert store.expire_overrides(just_before) == []
    assert store.active_overrides(160.0) == []
    assert store.expire_overrides(160.0) == [record]
    assert store.expire_overrides(160.0) == []  # returned once
    assert store.expire_overrides(1e9) == []
    last = store.audit_log()[-1]
    assert (last.action, last.who, last.at) == ("override_expired", "coolctl", 160.0)
    assert last.details["id"] == record.id and last.details["set_by"] == "alice"


def test_expire_leaves_permanent_and_future_overrides(store: Store) -> None:
    soon = store.set_override("r1", PUMP, 0.6, "alice", "a", 100.0, 110.0)
    later = store.set_override("r1", SETPOINT, 30.0, "alice", "b", 100.0, 300.0)
    forever = store.set_override("r2", PUMP, 0.4, "alice", "c", 100.0, None)
    assert store.expire_overrides(200.0) == [soon]
    assert store.active_overrides(200.0) == [later, forever]


def test_setting_over_an_uncollected_expired_override(path: Path, store: Store) -> None:
    """It had already expired, so it is ended as expired (not replaced) and old_value is None."""
    old = store.set_override("r1", PUMP, 0.6, "alice", "flush", 100.0, 110.0)
    new = store.set_override("r1", PUMP, 0.9, "bob", "again", 120.0, None)
    assert [a.action for a in store.audit_log()] == [
        "override_set",
        "override_expired",
        "override_set",
    ]
    assert store.audit_log()[-1].details["old_value"] is None
    assert store.expire_overrides(200.0) == []
    assert store.active_overrides(200.0) == [new]
    assert overrides_table(path)[0] == (old.id, PUMP, 0.6, 120.0, "coolctl", "expired")


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("value", math.nan),
        ("value", math.inf),
        ("at", -math.inf),
        ("at", math.nan),
        ("expires_at", math.nan),
        ("expires_at", 100.0),  # == at: would be born expired
        ("expires_at", 50.0),
        ("who", ""),
        ("who", "   "),
        ("target", ""),
        ("rack", ""),
    ],
)
def test_set_override_refuses_bad_input(store: Store, field: str, bad: Any) -> None:
    arguments: dict[str, Any] = {
        "rack": "r1",
        "target": PUMP,
        "value": 0.5,
        "who": "alice",
        "why": "x",
        "at": 100.0,
        "expires_at": 200.0,
    }
    arguments[field] = bad
    with pytest.raises(ValueError, match=field):
        store.set_override(**arguments)
    assert store.active_overrides(150.0) == []
    assert store.audit_log() == []


def test_other_methods_refuse_bad_input(store: Store) -> None:
    with pytest.raises(ValueError, match="who"):
        store.clear_override("r1", PUMP, "", "x", 1.0)
    with pytest.raises(ValueError, match="target"):
        store.clear_override("r1", "", "bob", "x", 1.0)
    with pytest.raises(ValueError, match="at"):
        store.active_overrides(math.nan)
    with pytest.raises(ValueError, match="at"):
        store.expire_overrides(math.inf)
    with pytest.raises(ValueError, match="mode"):
        store.set_mode("r1", "off", "alice", "x", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="who"):
        store.set_mode("r1", "auto", "", "x", 1.0)
    with pytest.raises(ValueError, match="who"):
        store.audit("", "reload", None, {}, 1.0)
    with pytest.raises(ValueError, match="JSON"):
        store.audit("alice", "reload", None, {"x": math.nan}, 1.0)
    with pytest.raises(ValueError, match="JSON"):
        store.audit("alice", "reload", None, {"x": object()}, 1.0)
    with pytest.raises(ValueError, match="limit"):
        store.audit_log(limit=-1)
    with pytest.raises(ValueError, match="keep"):
        store.prune_events(-1)
    with pytest.raises(ValueError, match="at"):
        store.add_event(Event("r1", "x", Severity.INFO, "m", 0.0), math.nan)
    assert store.audit_log() == [] and store.events() == [] and store.modes() == {}


# -- modes -----------------------------------------------------------------------------------


def test_modes_round_trip_and_audit(store: Store) -> None:
    assert store.modes() == {}
    store.set_mode("r1", "manual", "alice", "maintenance", 100.0)
    store.set_mode("r2", "auto", "alice", "", 101.0)
    store.set_mode("r1", "auto", "bob", "done", 102.0)
    assert store.modes() == {"r1": "auto", "r2": "auto"}
    log = store.audit_log()
    assert [(a.action, a.rack, a.who) for a in log] == [
        ("mode_set", "r1", "alice"),
        ("mode_set", "r2", "alice"),
        ("mode_set", "r1", "bob"),
    ]
    assert log[0].details == {"mode": "manual", "old_mode": None, "why": "maintenance"}
    assert log[2].details == {"mode": "auto", "old_mode": "manual", "why": "done"}


# -- audit -----------------------------------------------------------------------------------


def test_audit_round_trip_and_paging(store: Store) -> None:
    first = store.audit("alice", "reload", None, {"config": "/etc/coolctl.toml", "ok": True}, 1.0)
    assert first.details == {"config": "/etc/coolctl.toml", "ok": True}
    assert first.rack is None
    records = [store.audit("bob", "note", "r1", {"n": n, "l": [1, 2]}, 2.0 + n) for n in range(5)]
    assert store.audit_log() == [first, *records]
    assert store.audit_log(since_id=first.id, limit=2) == records[:2]
    assert store.audit_log(since_id=records[-1].id) == []
    assert store.audit_log(limit=0) == []
    # Tuples go in as JSON arrays; the record returned is what audit_log will give back.
    tupled = store.audit("bob", "note", None, {"pair": (1, 2)}, 9.0)
    assert tupled.details == {"pair": [1, 2]} and store.audit_log()[-1] == tupled


def test_audit_rows_cannot_be_updated_or_deleted(path: Path, store: Store) -> None:
    store.audit("alice", "reload", None, {}, 1.0)
    store.set_override("r1", PUMP, 0.5, "alice", "x", 2.0, None)
    with raw(path) as conn:
        for statement in (
            "UPDATE audit SET who = 'mallory'",
            "UPDATE audit SET details = '{}' WHERE id = 1",
            "DELETE FROM audit WHERE id = 1",
            "DELETE FROM audit",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(statement)
    assert [a.who for a in store.audit_log()] == ["alice", "alice"]


def test_override_history_cannot_be_rewritten(path: Path, store: Store) -> None:
    store.set_override("r1", PUMP, 0.5, "alice", "x", 2.0, None)
    store.clear_override("r1", PUMP, "bob", "y", 3.0)
    with raw(path) as conn:
        for statement in (
            "DELETE FROM overrides",
            "UPDATE overrides SET value = 0.9",
            "UPDATE overrides SET ended_at = NULL, ended_by = NULL, end_reason = NULL",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="override history"):
                conn.execute(statement)


# -- events ----------------------------------------------------------------------------------


def test_events_round_trip_page_and_prune(store: Store) -> None:
    event = Event("r1", "interlock_leak", Severity.CRITICAL, "leak under cdu1", 12.5, "interlock")
    record = store.add_event(event, 1000.0)
    assert record.as_json() == {
        "id": record.id,
        "at": 1000.0,
        "rack": "r1",
        "kind": "interlock_leak",
        "severity": "critical",
        "message": "leak under cdu1",
        "source": "interlock",
    }
    records = [
        store.add_event(Event("r1", "tick", Severity.INFO, str(n), float(n)), 1001.0 + n)
        for n in range(9)
    ]
    assert store.events() == [record, *records]
    assert store.events(since_id=records[2].id, limit=3) == records[3:6]
    assert store.prune_events(keep=4) == 6
    assert store.events() == records[-4:]
    assert store.prune_events(keep=4) == 0
    assert store.prune_events(keep=0) == 4
    assert store.events() == []
    # Ids are never reused, so a follower at since_id=last never misses what comes next.
    newer = store.add_event(event, 2000.0)
    assert newer.id > records[-1].id
    assert store.events(since_id=records[-1].id) == [newer]


def test_pruning_events_leaves_overrides_and_audit(store: Store) -> None:
    store.set_override("r1", PUMP, 0.5, "alice", "x", 1.0, None)
    store.add_event(Event("r1", "x", Severity.WARNING, "m", 0.0), 2.0)
    assert store.prune_events(0) == 1
    assert len(store.active_overrides(3.0)) == 1 and len(store.audit_log()) == 1


# -- migrations and refusals -----------------------------------------------------------------

# The version 1 schema, as a coolctl of that version left it on disk.
VERSION_1 = (
    "PRAGMA application_id = 1668247404",
    """CREATE TABLE overrides (
        id INTEGER PRIMARY KEY AUTOINCREMENT, rack TEXT NOT NULL, target TEXT NOT NULL,
        value REAL NOT NULL, who TEXT NOT NULL, why TEXT NOT NULL, created_at REAL NOT NULL,
        expires_at REAL, ended_at REAL, ended_by TEXT, end_reason TEXT)""",
    """CREATE TRIGGER overrides_no_delete BEFORE DELETE ON overrides
        BEGIN SELECT RAISE(ABORT, 'coolctl override history is never deleted'); END""",
    """CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
        who TEXT NOT NULL, action TEXT NOT NULL, rack TEXT, details TEXT NOT NULL)""",
    """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'coolctl audit log is append-only'); END""",
    """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'coolctl audit log is append-only'); END""",
    """CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
        rack TEXT NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL, message TEXT NOT NULL,
        source TEXT NOT NULL)""",
    "PRAGMA user_version = 1",
)


def test_version_1_store_is_migrated_with_its_data(path: Path) -> None:
    assert APPLICATION_ID == 1668247404
    with raw(path) as conn:
        for statement in VERSION_1:
            conn.execute(statement)
        insert = (
            "INSERT INTO overrides (rack, target, value, who, why, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        # Version 1 allowed two open overrides of one target; the newest must win.
        conn.execute(insert, ("r1", PUMP, 0.4, "alice", "old", 100.0, None))
        conn.execute(insert, ("r1", PUMP, 0.6, "bob", "new", 110.0, None))
        conn.execute(insert, ("r1", SETPOINT, 30.0, "bob", "sp", 111.0, 500.0))
        conn.execute(
            "INSERT INTO audit (at, who, action, rack, details) VALUES (100, 'alice', "
            "'override_set', 'r1', '{\"value\": 0.4}')"
        )
        conn.execute(
            "INSERT INTO events (at, rack, kind, severity, message, source) "
            "VALUES (105, 'r1', 'failsafe', 'critical', 'lost cdu1', 'supervisor')"
        )
    with Store(path) as store:
        active = store.active_overrides(200.0)
        assert [(o.target, o.value, o.who) for o in active] == [
            (PUMP, 0.6, "bob"),
            (SETPOINT, 30.0, "bob"),
        ]
        assert [(a.action, a.details) for a in store.audit_log()] == [
            ("override_set", {"value": 0.4})
        ]
        assert [(e.kind, e.severity) for e in store.events()] == [("failsafe", "critical")]
        # What version 2 added works on the migrated file.
        store.set_mode("r1", "manual", "alice", "after upgrade", 300.0)
        assert store.modes() == {"r1": "manual"}
        replaced = store.set_override("r1", PUMP, 0.7, "carol", "x", 310.0, None)
        assert store.audit_log()[-1].details["old_value"] == 0.6
        assert store.integrity_check()
    assert overrides_table(path)[0] == (1, PUMP, 0.4, 110.0, "coolctl", "replaced")
    with raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        with pytest.raises(sqlite3.IntegrityError):  # at most one open override per target now
            conn.execute(
                "INSERT INTO overrides (rack, target, value, who, why, created_at) "
                "VALUES ('r1', ?, 0.1, 'x', '', 1)",
                (PUMP,),
            )
    assert replaced.id == 4


def test_newer_store_is_refused_and_left_alone(path: Path) -> None:
    Store(path).close()
    with raw(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match=rf"newer coolctl \(schema version {SCHEMA_VERSION + 1}"):
        Store(path)
    with raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


def test_non_sqlite_file_is_refused_and_left_alone(path: Path) -> None:
    content = b"# coolctl config, not a database\n" * 40
    path.write_bytes(content)
    path.chmod(0o644)
    with pytest.raises(StoreError, match=r"not a coolctl store.*not an SQLite database"):
        Store(path)
    assert path.read_bytes() == content
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_foreign_sqlite_database_is_refused(path: Path) -> None:
    with raw(path) as conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
    with pytest.raises(StoreError, match=r"not a coolctl store.*application_id 0x0"):
        Store(path)
    with raw(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # untouched


def test_empty_file_becomes_a_store(path: Path) -> None:
    path.touch(mode=0o600)
    with Store(path) as store:
        assert store.integrity_check()


def break_not_null_behind_coolctls_back(path: Path) -> None:
    """Store a NULL override value by editing the schema around it, as only a hand-edit or a
    damaged disk could: the pages stay well-formed, the content is not."""
    with raw(path) as conn:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_master SET sql = replace(sql, 'value REAL NOT NULL', 'value REAL') "
            "WHERE name = 'overrides'"
        )
    with raw(path) as conn:
        conn.execute(
            "INSERT INTO overrides (rack, target, value, who, why, created_at) "
            "VALUES ('r1', 'cdu1/x', NULL, 'mallory', '', 1)"
        )
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_master SET sql = replace(sql, 'value REAL,', 'value REAL NOT NULL,') "
            "WHERE name = 'overrides'"
        )


def test_store_with_broken_content_is_refused(path: Path) -> None:
    with Store(path) as store:
        store.set_override("r1", PUMP, 0.5, "alice", "x", 1.0, None)
        assert store.integrity_check()
        break_not_null_behind_coolctls_back(path)
        assert not store.integrity_check()
    with pytest.raises(StoreError, match=r"corrupt: NULL value in overrides\.value"):
        Store(path)


def test_corrupt_store_is_refused(path: Path) -> None:
    with Store(path) as store:
        for n in range(300):
            store.set_override("r1", f"cdu1/point{n}", float(n), "alice", "x" * 50, 1.0, None)
    page_size = 4096
    size = path.stat().st_size
    assert size > 4 * page_size
    with path.open("r+b") as file:  # scribble over a page in the middle of the file
        file.seek((size // page_size // 2) * page_size)
        file.write(b"\xa5" * page_size)
    with pytest.raises(StoreError, match="the coolctl store is corrupt"):
        Store(path)


# -- AsyncStore ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_store_from_an_event_loop(path: Path) -> None:
    async with AsyncStore(path) as store:
        assert any(t.name.startswith("coolctl-store") for t in threading.enumerate())
        records = await asyncio.gather(
            *(
                store.set_override("r1", f"cdu1/point{n}", n / 10, "alice", "x", 100.0, 150.0)
                for n in range(10)
            )
        )
        assert sorted(r.id for r in records) == list(range(1, 11))
        assert await store.active_overrides(120.0) == records
        assert await store.clear_override("r1", "cdu1/point0", "bob", "y", 121.0) == records[0]
        assert await store.expire_overrides(150.0) == records[1:]
        await store.set_mode("r1", "manual", "bob", "y", 122.0)
        assert await store.modes() == {"r1": "manual"}
        entry = await store.audit("bob", "reload", None, {"ok": True}, 123.0)
        assert (await store.audit_log(since_id=entry.id - 1)) == [entry]
        event = await store.add_event(Event("r1", "x", Severity.INFO, "m", 0.0), 124.0)
        assert await store.events() == [event]
        assert await store.prune_events(0) == 1
        assert await store.integrity_check()
        with pytest.raises(ValueError, match="value"):
            await store.set_override("r1", PUMP, math.nan, "alice", "x", 1.0, None)
    with pytest.raises(StoreError, match="not open"):
        await store.modes()
    await store.close()  # idempotent
    with Store(path) as reopened:
        assert reopened.modes() == {"r1": "manual"}


@pytest.fixture
def not_a_database(path: Path) -> Path:
    path.write_bytes(b"not a database" * 100)
    return path


@pytest.mark.asyncio
async def test_async_store_open_failure_is_a_store_error(not_a_database: Path) -> None:
    store = AsyncStore(not_a_database)
    with pytest.raises(StoreError, match="not a coolctl store"):
        await store.open()
    with pytest.raises(StoreError, match="not open"):
        await store.active_overrides(0.0)


# -- model-based check of override bookkeeping -----------------------------------------------

Key = tuple[str, str]


class OverrideBookkeeping(RuleBasedStateMachine):
    """Random set/clear/expire/time steps against a dict of the overrides not yet ended.

    Times move in steps of whole and half seconds and TTLs are whole seconds, so expiry lands
    exactly on query times often.
    """

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory()
        self.store = Store(Path(self.directory.name) / "coolctl.db")
        self.now = 0.0
        self.open: dict[Key, tuple[float, float | None]] = {}  # not ended: value, expires_at

    def active(self, at: float) -> dict[Key, tuple[float, float | None]]:
        return {k: v for k, v in self.open.items() if v[1] is None or v[1] > at}

    @rule(
        rack=st.sampled_from(["r1", "r2"]),
        point=st.sampled_from([PUMP, SETPOINT]),
        value=st.floats(-1e6, 1e6, allow_nan=False),
        ttl=st.none() | st.integers(1, 3).map(float),
    )
    def set(self, rack: str, point: str, value: float, ttl: float | None) -> None:
        expires_at = None if ttl is None else self.now + ttl
        record = self.store.set_override(rack, point, value, "op", "why", self.now, expires_at)
        assert (record.rack, record.target, record.value) == (rack, point, value)
        self.open[(rack, point)] = (value, expires_at)

    @rule(rack=st.sampled_from(["r1", "r2"]), point=st.sampled_from([PUMP, SETPOINT]))
    def clear(self, rack: str, point: str) -> None:
        cleared = self.store.clear_override(rack, point, "op", "why", self.now)
        expected = self.active(self.now).get((rack, point))
        if expected is None:
            assert cleared is None
        else:
            assert cleared is not None and (cleared.value, cleared.expires_at) == expected
            del self.open[(rack, point)]

    @rule()
    def expire(self) -> None:
        expired = self.store.expire_overrides(self.now)
        due = {k for k, (_, e) in self.open.items() if e is not None and e <= self.now}
        assert {(o.rack, o.target) for o in expired} == due
        for key in due:
            del self.open[key]

    @rule(step=st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    def advance(self, step: float) -> None:
        self.now += step

    @invariant()
    def active_overrides_match(self) -> None:
        for at in (self.now, self.now + 1.0):
            stored = {
                (o.rack, o.target): (o.value, o.expires_at) for o in self.store.active_overrides(at)
            }
            assert stored == self.active(at)

    def teardown(self) -> None:
        self.store.close()
        self.directory.cleanup()


OverrideBookkeeping.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None
)
test_override_bookkeeping_matches_a_model = OverrideBookkeeping.TestCase


# -- crash safety ----------------------------------------------------------------------------

Kill = str | int  # "start": while opening; "write0": during the first write; n: after n acks


def crash_plan(rng: random.Random) -> list[Kill]:
    """Ten kills: two while a fresh file is being created, two during the first write, one
    right after opening, then after 1, 2 and three random numbers of acks."""
    return ["start", "start", "write0", "write0", "open", 1, 2, *rng.sample(range(3, 300), 3)]


def kill_writer(path: Path, kill: Kill, rng: random.Random) -> tuple[list[str], list[str]]:
    """Run the writer until `kill`, wait a random 0-3 ms more, SIGKILL it; its write and ack
    lines, including those still in the pipe when it died."""
    # The writer imports the very coolctl this test imported, installed or not.
    package_root = str(Path(coolctl.ops.store.__file__).resolve().parent.parent)
    pythonpath = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, str(WRITER), str(path), "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": pythonpath},
    )
    assert process.stdout is not None and process.stderr is not None
    lines: list[str] = []
    try:
        while True:
            line = process.stdout.readline()
            assert line, f"writer ended early: {process.stderr.read()}"
            lines.append(line.rstrip("\n"))
            acked = sum(1 for seen in lines if seen.startswith("ack "))
            if (
                (kill == "start" and line == "start\n")
                or (kill == "open" and line == "open\n")
                or (kill == "write0" and line.startswith("write "))
                or (isinstance(kill, int) and acked == kill)
            ):
                break
        delay = rng.uniform(0.0, 0.003)
        if delay:
            threading.Event().wait(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        # Read on through the same buffered file: communicate() would skip what it buffered.
        rest, errors = process.stdout.read(), process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL, errors
    lines += rest.splitlines()  # a complete line in the pipe was written: it counts
    writes = [line.split(" ", 1)[1] for line in lines if line.startswith("write ")]
    acks = [line.split(" ", 1)[1] for line in lines if line.startswith("ack ")]
    return writes, acks


def test_acknowledged_writes_survive_kill_9(path: Path) -> None:
    """Each round kills the writer, then reopens the store and requires exactly: every earlier
    override and every acknowledged one with its last acknowledged value, plus possibly the one
    write in flight (whole, with its audit row) and nothing else; a passing integrity_check;
    and a store that takes writes again."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    known: dict[str, float] = {}  # the writer's overrides as verified after the last round
    audited = 0
    plan = crash_plan(rng)
    for round_, kill in enumerate(plan):
        writes, acks = kill_writer(path, kill, rng)
        context = f"seed {seed}, round {round_}, kill {kill!r}, {len(acks)} acks"
        assert acks == writes[: len(acks)], context
        expected = dict(known)
        for ack in acks:
            target, value = ack.split(" ")
            expected[target] = float(value)
        with_flight = dict(expected)
        if len(writes) > len(acks):
            target, value = writes[len(acks)].split(" ")
            with_flight[target] = float(value)
        with Store(path) as store:
            assert store.integrity_check(), context
            active = store.active_overrides(1e9)
            stored = {o.target: o.value for o in active if o.rack == "crash"}
            assert stored in (expected, with_flight), context
            # An override and its audit row are one transaction: both or neither.
            log = [a for a in store.audit_log(limit=1_000_000) if a.rack == "crash"]
            assert all(a.action == "override_set" for a in log), context
            with raw(path) as conn:
                rows = conn.execute(
                    "SELECT id, value FROM overrides WHERE rack = 'crash' ORDER BY id"
                ).fetchall()
            assert [(a.details["id"], a.details["value"]) for a in log] == rows, context
            assert len(log) in (audited + len(acks), audited + len(acks) + 1), context
            # And it takes writes again, still append-only.
            check = store.set_override("check", f"round{round_}", 1.0, "test", "", 1.0, None)
            assert store.clear_override("check", check.target, "test", "", 2.0) == check
            with raw(path) as conn, pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute("DELETE FROM audit")
        known, audited = stored, len(log)
    assert len(plan) == 10
    with Store(path) as store:
        assert store.integrity_check()
        assert {o.target: o.value for o in store.active_overrides(1e9)} == known
    assert os.stat(path).st_mode & 0o077 == 0
