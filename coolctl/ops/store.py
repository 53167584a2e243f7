"""Durable state of coolctl: operator overrides, rack modes, the audit log and events.

An acknowledged operator action must outlive the daemon: after a restart, a `kill -9` or a
power cut, coolctl has to come back with the same overrides and modes, and the audit log has
to show who did what. So the store is one SQLite file in WAL mode with `synchronous=FULL`:
a method returns only once its transaction is fsynced, and each method is exactly one
transaction, so an override and its audit row are stored together or not at all.

Times are Unix seconds chosen by the caller (the store never reads a clock), which keeps
expiry decisions reproducible and testable.

`Store` is synchronous and confined to the thread that opened it; `AsyncStore` runs one on a
dedicated worker thread so that fsyncs never stall the control loops' event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar

from coolctl.model import Event, RackMode, Severity
from coolctl.ops.protocol import AuditRecord, EventRecord, OverrideRecord

APPLICATION_ID: Final = 0x636F6F6C  # "cool": marks an SQLite file as a coolctl store
SCHEMA_VERSION: Final = 3
SYSTEM_WHO: Final = "coolctl"  # who ends overrides that expire or that a migration supersedes
BUSY_TIMEOUT_MS: Final = 5000  # an sqlite3 shell reading the file may briefly hold a lock

# Each entry moves the schema from version i to i + 1, in one transaction together with the
# new user_version, so a crash mid-migration leaves the previous version intact.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 0 -> 1: overrides with their history, the append-only audit log, events.
    (
        f"PRAGMA application_id = {APPLICATION_ID}",
        # AUTOINCREMENT everywhere: ids are never reused, so clients following the audit log or
        # the events by `since_id` never skip a row, even after the newest events were pruned.
        """
        CREATE TABLE overrides (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            rack TEXT NOT NULL CHECK (rack <> ''),
            target TEXT NOT NULL CHECK (target <> ''),
            value REAL NOT NULL,
            who TEXT NOT NULL CHECK (who <> ''),
            why TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL,
            ended_at REAL,
            ended_by TEXT,
            end_reason TEXT CHECK (end_reason IN ('cleared', 'replaced', 'expired')),
            CHECK ((ended_at IS NULL) = (ended_by IS NULL)),
            CHECK ((ended_at IS NULL) = (end_reason IS NULL))
        )
        """,
        # Override rows are history: never deleted, and only ended once.
        """
        CREATE TRIGGER overrides_no_delete BEFORE DELETE ON overrides
        BEGIN SELECT RAISE(ABORT, 'coolctl override history is never deleted'); END
        """,
        """
        CREATE TRIGGER overrides_end_only BEFORE UPDATE ON overrides
        WHEN OLD.ended_at IS NOT NULL
            OR NEW.id IS NOT OLD.id OR NEW.rack IS NOT OLD.rack OR NEW.target IS NOT OLD.target
            OR NEW.value IS NOT OLD.value OR NEW.who IS NOT OLD.who OR NEW.why IS NOT OLD.why
            OR NEW.created_at IS NOT OLD.created_at OR NEW.expires_at IS NOT OLD.expires_at
        BEGIN SELECT RAISE(ABORT, 'coolctl override history is immutable'); END
        """,
        """
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            who TEXT NOT NULL CHECK (who <> ''),
            action TEXT NOT NULL CHECK (action <> ''),
            rack TEXT,
            details TEXT NOT NULL
        )
        """,
        # The audit log is evidence: nothing in coolctl (or a careless script) may rewrite it.
        """
        CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'coolctl audit log is append-only'); END
        """,
        """
        CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'coolctl audit log is append-only'); END
        """,
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            rack TEXT NOT NULL,
            kind TEXT NOT NULL,
            severity TEXT NOT NULL,
            message TEXT NOT NULL,
            source TEXT NOT NULL
        )
        """,
    ),
    # 1 -> 2: per-rack modes, and at most one open override per (rack, target).
    (
        """
        CREATE TABLE modes (
            rack TEXT PRIMARY KEY CHECK (rack <> ''),
            mode TEXT NOT NULL CHECK (mode IN ('auto', 'manual')),
            set_at REAL NOT NULL,
            set_by TEXT NOT NULL,
            why TEXT NOT NULL
        )
        """,
        # Version 1 did not enforce a single open override per target; end all but the newest
        # (as replaced by it) before the unique index can exist. Rows are visited in id order,
        # so the subqueries only ever see newer rows, which are not yet changed.
        f"""
        UPDATE overrides
        SET ended_at = (
                SELECT MIN(newer.created_at) FROM overrides AS newer
                WHERE newer.rack = overrides.rack AND newer.target = overrides.target
                    AND newer.ended_at IS NULL AND newer.id > overrides.id
            ),
            ended_by = '{SYSTEM_WHO}',
            end_reason = 'replaced'
        WHERE ended_at IS NULL AND EXISTS (
            SELECT 1 FROM overrides AS newer
            WHERE newer.rack = overrides.rack AND newer.target = overrides.target
                AND newer.ended_at IS NULL AND newer.id > overrides.id
        )
        """,
        """
        CREATE UNIQUE INDEX overrides_open ON overrides (rack, target) WHERE ended_at IS NULL
        """,
    ),
    # 2 -> 3: events are pruned by age, which must not scan the table.
    ("CREATE INDEX events_at ON events (at)",),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

_OVERRIDE_COLUMNS: Final = "id, rack, target, value, who, why, created_at, expires_at"
_AUDIT_COLUMNS: Final = "id, at, who, action, rack, details"
_EVENT_COLUMNS: Final = "id, at, rack, kind, severity, message, source"


class StoreError(Exception):
    """The store cannot be used or a write did not happen: the file is not a coolctl store, is
    corrupt, was written by a newer coolctl, or SQLite failed (disk full, I/O error)."""


class Store:
    """sqlite3 in WAL mode, synchronous=FULL, one connection, thread-confined.

    The daemon runs it on one dedicated thread (see AsyncStore); using it from another thread
    raises sqlite3.ProgrammingError. Each method is one transaction: it either happened
    completely or not at all, and a method that returned has been fsynced.
    """

    def __init__(self, path: Path) -> None:
        """Open (creating if needed) the store at `path`, migrating an older schema.

        Refuses (StoreError) a file that is not a coolctl store, one written by a newer
        coolctl, and one that fails `PRAGMA quick_check`: running on a corrupt store could
        silently lose overrides, so the daemon must stop and let an operator decide.
        """
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        try:
            # O_CREAT with 0600: the file says who did what, so other users may not read it.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open the coolctl store: {exc}") from exc
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the coolctl store: {exc}") from exc
        try:
            self._open(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _open(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            application_id, version, objects = self._identify(conn)
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from exc
        fresh = application_id == 0 and version == 0 and objects == 0
        if application_id != APPLICATION_ID and not fresh:
            raise StoreError(
                f"{self.path}: not a coolctl store (an SQLite database with application_id "
                f"{application_id:#x}, expected {APPLICATION_ID:#x})"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: written by a newer coolctl (schema version {version}; this "
                f"coolctl knows up to {SCHEMA_VERSION}); refusing to open it"
            )
        # Only now is the file known to be ours, so tightening its mode harms no one else's.
        self._restrict_mode()
        try:
            if not fresh:
                problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
                if problems != ["ok"]:
                    raise StoreError(
                        f"{self.path}: the coolctl store is corrupt: " + "; ".join(problems[:5])
                    )
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL (journal mode {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                self._migrate(conn, target)
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from exc
        self._restrict_mode()  # the -wal and -shm files exist now

    def _open_error(self, exc: sqlite3.DatabaseError) -> StoreError:
        """Name the cause an operator has to act on: a wrong file, a damaged one, or else."""
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # primary result code
        if code == sqlite3.SQLITE_NOTADB:
            return StoreError(f"{self.path}: not a coolctl store (not an SQLite database: {exc})")
        if code == sqlite3.SQLITE_CORRUPT:
            return StoreError(f"{self.path}: the coolctl store is corrupt ({exc})")
        return StoreError(f"{self.path}: cannot open the coolctl store: {exc}")

    @staticmethod
    def _identify(conn: sqlite3.Connection) -> tuple[int, int, int]:
        application_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        objects = int(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])
        return application_id, version, objects

    def _restrict_mode(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{self.path}{suffix}")
            try:
                mode = stat.S_IMODE(path.stat().st_mode)
                if mode & 0o077:
                    path.chmod(mode & 0o700)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StoreError(f"{path}: cannot restrict access to the store: {exc}") from exc

    @staticmethod
    def _migrate(conn: sqlite3.Connection, target: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) >= target:
                conn.execute("COMMIT")
                return
            for statement in _MIGRATIONS[target - 1]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the connection; SQLite checkpoints the WAL into the database on the way."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- transactions -----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path}: the store is closed")
        return self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; returns only after COMMIT, i.e. after the fsync of the WAL.

        BEGIN IMMEDIATE takes the write lock up front, so a transaction never fails half way
        for lack of it. Any failure rolls back and surfaces as StoreError.
        """
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.ProgrammingError:
            raise  # a coolctl bug (wrong thread), not a storage failure
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: write failed: {exc}") from exc

    def _read(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self._connection()
        try:
            return conn.execute(sql, parameters).fetchall()
        except sqlite3.ProgrammingError:
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: read failed: {exc}") from exc

    @staticmethod
    def _append_audit(
        conn: sqlite3.Connection,
        who: str,
        action: str,
        rack: str | None,
        details: Mapping[str, Any],
        at: float,
    ) -> AuditRecord:
        text = _details_json(details)
        cursor = conn.execute(
            "INSERT INTO audit (at, who, action, rack, details) VALUES (?, ?, ?, ?, ?)",
            (at, who, action, rack, text),
        )
        assert cursor.lastrowid is not None
        return AuditRecord(cursor.lastrowid, at, who, action, rack, json.loads(text))

    @staticmethod
    def _open_override(conn: sqlite3.Connection, rack: str, target: str) -> OverrideRecord | None:
        row = conn.execute(
            f"SELECT {_OVERRIDE_COLUMNS} FROM overrides "
            "WHERE rack = ? AND target = ? AND ended_at IS NULL",
            (rack, target),
        ).fetchone()
        return _override(row) if row is not None else None

    @staticmethod
    def _end(
        conn: sqlite3.Connection, override: OverrideRecord, at: float, by: str, reason: str
    ) -> None:
        conn.execute(
            "UPDATE overrides SET ended_at = ?, ended_by = ?, end_reason = ? WHERE id = ?",
            (at, by, reason, override.id),
        )

    def _end_expired(self, conn: sqlite3.Connection, override: OverrideRecord, at: float) -> None:
        self._end(conn, override, at, SYSTEM_WHO, "expired")
        self._append_audit(
            conn,
            SYSTEM_WHO,
            "override_expired",
            override.rack,
            {
                "id": override.id,
                "target": override.target,
                "value": override.value,
                "expires_at": override.expires_at,
                "set_by": override.who,
            },
            at,
        )

    # -- overrides --------------------------------------------------------------------------

    def set_override(
        self,
        rack: str,
        target: str,
        value: float,
        who: str,
        why: str,
        at: float,
        expires_at: float | None,
    ) -> OverrideRecord:
        """Store an override, replacing the active one of the same (rack, target).

        The replaced override is ended (`replaced` by `who`) and the audit row `override_set`
        carries its value as `old_value`, all in the same transaction. An override of the same
        target that had already expired but was not yet collected is ended as expired first
        (audited `override_expired`), so history says what really happened to it.
        """
        _require_text(rack=rack, target=target, who=who)
        _require_str(why=why)
        value = _require_finite(value=value)
        at = _require_finite(at=at)
        if expires_at is not None:
            expires_at = _require_finite(expires_at=expires_at)
            if expires_at <= at:
                raise ValueError(f"expires_at ({expires_at}) must be after at ({at})")
        with self._write() as conn:
            old = self._open_override(conn, rack, target)
            replaced: OverrideRecord | None = None
            if old is not None:
                if _active(old, at):
                    replaced = old
                    self._end(conn, old, at, who, "replaced")
                else:
                    self._end_expired(conn, old, at)
            cursor = conn.execute(
                "INSERT INTO overrides (rack, target, value, who, why, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rack, target, value, who, why, at, expires_at),
            )
            assert cursor.lastrowid is not None
            record = OverrideRecord(cursor.lastrowid, rack, target, value, who, why, at, expires_at)
            self._append_audit(
                conn,
                who,
                "override_set",
                rack,
                {
                    "id": record.id,
                    "target": target,
                    "value": value,
                    "expires_at": expires_at,
                    "why": why,
                    "old_value": replaced.value if replaced is not None else None,
                    "replaced_id": replaced.id if replaced is not None else None,
                },
                at,
            )
        return record

    def clear_override(
        self, rack: str, target: str, who: str, why: str, at: float
    ) -> OverrideRecord | None:
        """End the active override of (rack, target), audited `override_clear`.

        Returns the cleared override, or None (and audits nothing, as nothing changed) when
        there is none active at `at`.
        """
        _require_text(rack=rack, target=target, who=who)
        _require_str(why=why)
        at = _require_finite(at=at)
        with self._write() as conn:
            old = self._open_override(conn, rack, target)
            if old is None or not _active(old, at):
                return None
            self._end(conn, old, at, who, "cleared")
            self._append_audit(
                conn,
                who,
                "override_clear",
                rack,
                {"id": old.id, "target": target, "value": old.value, "why": why},
                at,
            )
        return old

    def active_overrides(self, at: float) -> list[OverrideRecord]:
        """Overrides neither ended nor expired at `at` (one expiring exactly at `at` is not
        active), oldest first."""
        at = _require_finite(at=at)
        rows = self._read(
            f"SELECT {_OVERRIDE_COLUMNS} FROM overrides "
            "WHERE ended_at IS NULL AND (expires_at IS NULL OR expires_at > ?) ORDER BY id",
            (at,),
        )
        return [_override(row) for row in rows]

    def expire_overrides(self, at: float) -> list[OverrideRecord]:
        """End the overrides expired by `at` (expires_at <= at), each audited
        `override_expired` by "coolctl", and return them; each is returned only once."""
        at = _require_finite(at=at)
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT {_OVERRIDE_COLUMNS} FROM overrides "
                "WHERE ended_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ? "
                "ORDER BY id",
                (at,),
            ).fetchall()
            expired = [_override(row) for row in rows]
            for override in expired:
                self._end_expired(conn, override, at)
        return expired

    # -- modes ------------------------------------------------------------------------------

    def set_mode(self, rack: str, mode: RackMode, who: str, why: str, at: float) -> None:
        """Set a rack's mode, audited `mode_set` with the previous mode (even if unchanged:
        the operator's request itself is worth recording)."""
        _require_text(rack=rack, who=who)
        _require_str(why=why)
        try:
            mode = RackMode(mode)
        except ValueError:
            modes = sorted(each.value for each in RackMode)
            raise ValueError(f"mode must be one of {modes}, not {mode!r}") from None
        at = _require_finite(at=at)
        with self._write() as conn:
            row = conn.execute("SELECT mode FROM modes WHERE rack = ?", (rack,)).fetchone()
            conn.execute(
                "INSERT INTO modes (rack, mode, set_at, set_by, why) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (rack) DO UPDATE SET mode = excluded.mode, set_at = excluded.set_at,"
                " set_by = excluded.set_by, why = excluded.why",
                (rack, mode.value, at, who, why),
            )
            self._append_audit(
                conn,
                who,
                "mode_set",
                rack,
                {"mode": mode.value, "old_mode": row[0] if row is not None else None, "why": why},
                at,
            )

    def modes(self) -> dict[str, RackMode]:
        """The stored mode of every rack that ever had one set."""
        known = {each.value: each for each in RackMode}
        modes: dict[str, RackMode] = {}
        for rack, mode in self._read("SELECT rack, mode FROM modes ORDER BY rack"):
            if mode in known:
                modes[rack] = known[mode]
        return modes

    # -- audit ------------------------------------------------------------------------------

    def audit(
        self, who: str, action: str, rack: str | None, details: Mapping[str, Any], at: float
    ) -> AuditRecord:
        """Append one audit row for an action the store does not audit itself (reload, ...).

        `details` must be JSON-serialisable without NaN or infinities; the returned record
        carries them as read back from JSON, i.e. exactly as `audit_log` will.
        """
        _require_text(who=who, action=action)
        if rack is not None:
            _require_text(rack=rack)
        at = _require_finite(at=at)
        _details_json(details)  # refuse bad details before taking the write lock
        with self._write() as conn:
            return self._append_audit(conn, who, action, rack, details, at)

    def audit_log(self, since_id: int = 0, limit: int = 100) -> list[AuditRecord]:
        """Audit rows with id > since_id, oldest first, at most `limit`."""
        _require_limit(limit)
        rows = self._read(
            f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE id > ? ORDER BY id LIMIT ?",
            (since_id, limit),
        )
        return [
            AuditRecord(id_, at, who, action, rack, json.loads(details))
            for id_, at, who, action, rack, details in rows
        ]

    # -- events -----------------------------------------------------------------------------

    def add_event(self, event: Event, at: float) -> EventRecord:
        """Store an event at wall-clock time `at` (the event's own `ts` is monotonic and means
        nothing after a restart, so it is not kept)."""
        _require_text(rack=event.rack, kind=event.kind)
        _require_str(message=event.message, source=event.source)
        severity = Severity(event.severity).value
        at = _require_finite(at=at)
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO events (at, rack, kind, severity, message, source) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (at, event.rack, event.kind, severity, event.message, event.source),
            )
            assert cursor.lastrowid is not None
            return EventRecord(
                cursor.lastrowid, at, event.rack, event.kind, severity, event.message, event.source
            )

    def events(self, since_id: int = 0, limit: int = 100) -> list[EventRecord]:
        """Events with id > since_id, oldest first, at most `limit`."""
        _require_limit(limit)
        rows = self._read(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (since_id, limit),
        )
        return [EventRecord(*row) for row in rows]

    def newest_events(self, limit: int = 100) -> list[EventRecord]:
        """The newest `limit` events, oldest first: read backwards along the primary key, so
        the cost is `limit` rows however many the table holds."""
        _require_limit(limit)
        rows = self._read(f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY id DESC LIMIT ?", (limit,))
        return [EventRecord(*row) for row in reversed(rows)]

    def newest_audit(self, limit: int = 100) -> list[AuditRecord]:
        """The newest `limit` audit rows, oldest first, by the primary key as newest_events."""
        _require_limit(limit)
        rows = self._read(f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [
            AuditRecord(id_, at, who, action, rack, json.loads(details))
            for id_, at, who, action, rack, details in reversed(rows)
        ]

    def prune_events(self, keep: int, older_than: float | None = None) -> int:
        """Delete all but the newest `keep` events, and those stored before the wall-clock time
        `older_than`; return how many went.

        Events are the only bounded table: a flapping sensor may raise thousands of them,
        whereas overrides and audit rows are operator actions and are kept for good.
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ValueError(f"keep must be a non-negative integer, not {keep!r}")
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM events WHERE id <= "
                "(SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (keep,),
            )
            removed = cursor.rowcount
            if older_than is not None:
                cutoff = _require_finite(older_than=older_than)
                removed += conn.execute("DELETE FROM events WHERE at < ?", (cutoff,)).rowcount
            return removed

    # -- health -----------------------------------------------------------------------------

    def integrity_check(self) -> bool:
        """Full `PRAGMA integrity_check` (slower than the quick_check done on open: it also
        checks indexes against their tables)."""
        rows = self._read("PRAGMA integrity_check")
        return [str(row[0]) for row in rows] == ["ok"]


_P = ParamSpec("_P")
_T = TypeVar("_T")


class AsyncStore:
    """The Store API as coroutines, run on one dedicated worker thread.

    Each call waits for its fsync on the worker, so the event loop (and the control loops on
    it) never blocks on the disk. Calls run one at a time in the order they were made.
    A cancelled call may still take effect: its transaction runs to completion on the worker.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._store: Store | None = None

    async def open(self) -> None:
        """Open the store on the worker thread (which then owns the connection for good)."""
        if self._executor is not None:
            raise StoreError(f"{self.path}: the store is already open")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coolctl-store")
        try:
            self._store = await asyncio.get_running_loop().run_in_executor(
                executor, Store, self.path
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    async def close(self) -> None:
        """Close the store on its thread, then let the thread go."""
        executor, store = self._executor, self._store
        self._executor = self._store = None
        if executor is None or store is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, store.close)
        finally:
            executor.shutdown(wait=False)  # its only work has finished; the thread exits

    async def __aenter__(self) -> AsyncStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, method: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        if self._executor is None:
            raise StoreError(f"{self.path}: the store is not open")
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(method, *args, **kwargs)
        )

    def _opened(self) -> Store:
        if self._store is None:
            raise StoreError(f"{self.path}: the store is not open")
        return self._store

    async def set_override(
        self,
        rack: str,
        target: str,
        value: float,
        who: str,
        why: str,
        at: float,
        expires_at: float | None,
    ) -> OverrideRecord:
        return await self._call(
            self._opened().set_override, rack, target, value, who, why, at, expires_at
        )

    async def clear_override(
        self, rack: str, target: str, who: str, why: str, at: float
    ) -> OverrideRecord | None:
        return await self._call(self._opened().clear_override, rack, target, who, why, at)

    async def active_overrides(self, at: float) -> list[OverrideRecord]:
        return await self._call(self._opened().active_overrides, at)

    async def expire_overrides(self, at: float) -> list[OverrideRecord]:
        return await self._call(self._opened().expire_overrides, at)

    async def set_mode(self, rack: str, mode: RackMode, who: str, why: str, at: float) -> None:
        await self._call(self._opened().set_mode, rack, mode, who, why, at)

    async def modes(self) -> dict[str, RackMode]:
        return await self._call(self._opened().modes)

    async def audit(
        self, who: str, action: str, rack: str | None, details: Mapping[str, Any], at: float
    ) -> AuditRecord:
        return await self._call(self._opened().audit, who, action, rack, details, at)

    async def audit_log(self, since_id: int = 0, limit: int = 100) -> list[AuditRecord]:
        return await self._call(self._opened().audit_log, since_id, limit)

    async def add_event(self, event: Event, at: float) -> EventRecord:
        return await self._call(self._opened().add_event, event, at)

    async def events(self, since_id: int = 0, limit: int = 100) -> list[EventRecord]:
        return await self._call(self._opened().events, since_id, limit)

    async def newest_events(self, limit: int = 100) -> list[EventRecord]:
        return await self._call(self._opened().newest_events, limit)

    async def newest_audit(self, limit: int = 100) -> list[AuditRecord]:
        return await self._call(self._opened().newest_audit, limit)

    async def prune_events(self, keep: int, older_than: float | None = None) -> int:
        return await self._call(self._opened().prune_events, keep, older_than)

    async def integrity_check(self) -> bool:
        return await self._call(self._opened().integrity_check)


# -- helpers --------------------------------------------------------------------------------


def _override(row: tuple[Any, ...]) -> OverrideRecord:
    return OverrideRecord(*row)


def _active(override: OverrideRecord, at: float) -> bool:
    return override.expires_at is None or override.expires_at > at


def _require_text(**fields: str) -> None:
    """Names (rack, target, who, action, kind) must say something: an audit row by "" is
    useless as evidence, and an override of "" can never be applied."""
    for name, text in fields.items():
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{name} must be a non-empty string, not {text!r}")


def _require_str(**fields: str) -> None:
    for name, text in fields.items():
        if not isinstance(text, str):
            raise ValueError(f"{name} must be a string, not {text!r}")


def _require_finite(**fields: float) -> float:
    """SQLite stores NaN as NULL and compares infinities oddly; refuse both up front."""
    ((name, number),) = fields.items()
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ValueError(f"{name} must be a number, not {number!r}")
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, not {number!r}")
    return float(number)


def _require_limit(limit: int) -> None:
    # SQLite reads a negative LIMIT as "no limit"; a caller asking for one has a bug.
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative integer, not {limit!r}")


def _details_json(details: Mapping[str, Any]) -> str:
    if not isinstance(details, Mapping):
        raise ValueError(f"details must be a mapping, not {type(details).__name__}")
    try:
        return json.dumps(dict(details), allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"details are not storable as JSON: {exc}") from exc


__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "AsyncStore", "Store", "StoreError"]
