"""The registry's SQLite file: connections, transactions, migrations on open, generic
row readers, the audit trail and the signing counters.

:class:`RegistryDatabase` is the base of every part of :class:`~edgeloop.hub.registry.Registry`.
It opens the file in WAL mode with foreign keys on. Every write runs in a
``BEGIN IMMEDIATE`` transaction (:meth:`RegistryDatabase._write`), so concurrent
writers -- the hub's MQTT thread, the CLI/GUI thread, a second ``edgeloop`` process --
queue on SQLite's lock instead of failing half-way; the audit row of a change is
written in the same transaction as the change. Each thread gets its own connection
(created on first use), so one registry object may be shared between threads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

from sqlite_utils import Database
from sqlite_utils.db import Table

from edgeloop.hub.errors import RegistryError
from edgeloop.hub.registry.fields import dumps, iso, now
from edgeloop.hub.registry.migrations import MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another writer before giving up

# Columns holding JSON, decoded on every read.
_JSON_COLUMNS: dict[str, tuple[str, ...]] = {
    "datasets": ("features", "labels", "warnings"),
    "runs": ("params", "metrics", "history", "library_versions"),
    "versions": ("quantization", "metrics"),
    "agents": ("state",),
    "drift_reports": ("drifted_features", "report"),
    "audit": ("detail",),
    "models": ("gate",),
    "alias_history": ("gate_check",),
    "evaluations": ("metrics",),
}


def _decode(table: str, row: dict) -> dict:
    """Decode the JSON columns of one row of ``table``."""
    for col in _JSON_COLUMNS.get(table, ()):
        if isinstance(row.get(col), str):
            row[col] = json.loads(row[col])
    return row


def inserted_id(table: Table) -> int:
    """The integer primary key of the row ``table.insert(...)`` just wrote."""
    if table.last_pk is None:  # sqlite-utils sets it on every insert
        raise RegistryError(f"the registry did not report the id of the new {table.name} row")
    return int(table.last_pk)


class _Conn:
    """Holder of one thread's connection (weak-referenceable, unlike sqlite3.Connection)."""

    __slots__ = ("db", "__weakref__")

    def __init__(self, db: Database) -> None:
        self.db = db


class RegistryDatabase:
    """The registry's SQLite file ``path`` (created and migrated on open)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._conns: weakref.WeakSet[_Conn] = weakref.WeakSet()
        self._conns_lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RegistryError(f"cannot create the directory of registry {self.path}: {exc}") from exc
        try:
            self._enable_wal()
            self.schema_version = self.migrate()
        except BaseException:
            self.close()
            raise

    # -- lifecycle ---------------------------------------------------------------
    def close(self) -> None:
        """Close every thread's connection; the registry cannot be used afterwards."""
        self._closed = True
        with self._conns_lock:
            holders = list(self._conns)
            self._conns.clear()
        for holder in holders:
            with contextlib.suppress(sqlite3.Error):
                holder.db.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({str(self.path)!r})"

    # -- connections and transactions ------------------------------------------
    def _db(self) -> Database:
        """This thread's connection, opened on first use."""
        if self._closed:
            raise RegistryError(f"registry {self.path} is closed; open a new Registry")
        holder = getattr(self._local, "conn", None)
        if holder is None:
            holder = _Conn(self._connect())
            self._local.conn = holder
            with self._conns_lock:
                self._conns.add(holder)
        return holder.db

    def _connect(self) -> Database:
        """A connection with foreign keys on and a generous busy timeout.

        ``isolation_level=None``: the driver never opens transactions behind our
        back; :meth:`_write` and :meth:`_snapshot` open them explicitly.
        """
        try:
            conn = sqlite3.connect(
                str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise RegistryError(f"cannot open registry {self.path}: {exc}") from exc
        return Database(conn, execute_plugins=False)

    def _enable_wal(self) -> None:
        """Switch the file to WAL (persistent) so readers never block the writer."""
        try:
            mode = self._db().conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from exc
        if str(mode).lower() != "wal":
            log.warning("registry %s: WAL not available (journal_mode=%s)", self.path, mode)

    def _open_error(self, exc: sqlite3.Error) -> RegistryError:
        return RegistryError(
            f"{self.path} is not a usable edgeloop registry ({exc}); move it aside to start "
            "a fresh registry, or set EDGELOOP_HOME to another directory"
        )

    @contextlib.contextmanager
    def _write(self) -> Iterator[Database]:
        """A ``BEGIN IMMEDIATE`` transaction (joined if this thread is already in one)."""
        db = self._db()
        if db.conn.in_transaction:
            yield db
            return
        try:
            db.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise self._busy_error(exc) from exc
        try:
            yield db
            db.conn.execute("COMMIT")
        except BaseException as exc:
            if db.conn.in_transaction:
                db.conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.IntegrityError):
                raise RegistryError(f"the registry refused the change: {exc}") from exc
            if isinstance(exc, sqlite3.OperationalError):
                raise self._busy_error(exc) from exc
            raise

    def transaction(self) -> contextlib.AbstractContextManager[Database]:
        """One write transaction for several changes (``BEGIN IMMEDIATE`` ... ``COMMIT``).

        Every registry write made on this thread inside it joins it, so a batch of
        changes costs one commit; an exception rolls the whole batch back. Combine
        with :meth:`savepoint` so that one bad change does not undo the others.
        """
        return self._write()

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[Database]:
        """A part of the running transaction that can fail alone: on an exception only
        its own changes are undone, then the exception propagates. Outside a
        transaction it is one (see :meth:`transaction`)."""
        db = self._db()
        if not db.conn.in_transaction:
            with self._write() as outer:
                yield outer
            return
        db.conn.execute("SAVEPOINT edgeloop_part")
        try:
            yield db
        except BaseException:
            db.conn.execute("ROLLBACK TO edgeloop_part")
            db.conn.execute("RELEASE edgeloop_part")
            raise
        db.conn.execute("RELEASE edgeloop_part")

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Database]:
        """A read transaction, so several queries see one consistent state."""
        db = self._db()
        if db.conn.in_transaction:
            yield db
            return
        db.conn.execute("BEGIN")
        try:
            yield db
        finally:
            if db.conn.in_transaction:
                db.conn.execute("COMMIT")

    def _busy_error(self, exc: sqlite3.OperationalError) -> RegistryError:
        if "locked" in str(exc) or "busy" in str(exc):
            return RegistryError(
                f"registry {self.path} stayed locked by another edgeloop process for "
                f"{BUSY_TIMEOUT_S:.0f} s; wait for it to finish and try again"
            )
        return RegistryError(f"registry {self.path}: {exc}")

    # -- schema --------------------------------------------------------------------
    def migrate(self) -> int:
        """Apply the migrations this file lacks; returns the resulting schema version."""
        try:
            with self._write() as db:
                db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
                current = self._stored_schema_version(db)
                if current > SCHEMA_VERSION:
                    raise RegistryError(
                        f"registry {self.path} has schema version {current}, but this edgeloop "
                        f"only knows versions up to {SCHEMA_VERSION}: it was written by a newer "
                        "edgeloop. Upgrade edgeloop (pip install -U edgeloop) to use it."
                    )
                for number in range(current + 1, SCHEMA_VERSION + 1):
                    MIGRATIONS[number - 1](db)
                    db.table("meta").upsert({"key": "schema_version", "value": str(number)}, pk="key")
                    log.info("registry %s migrated to schema version %d", self.path, number)
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from exc
        return SCHEMA_VERSION

    def _stored_schema_version(self, db: Database) -> int:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            return 0
        try:
            return int(row[0])
        except (TypeError, ValueError):
            raise RegistryError(
                f"registry {self.path} has a damaged schema_version {row[0]!r}; restore it "
                "from a backup or move it aside"
            ) from None

    # -- generic reads ---------------------------------------------------------------
    def _rows(
        self, table: str, where: str | None = None, args: Sequence | None = None,
        order_by: str | None = None, limit: int | None = None,
    ) -> list[dict]:
        rows = self._db().table(table).rows_where(where, args, order_by=order_by, limit=limit)
        return [_decode(table, r) for r in rows]

    def _first(self, table: str, where: str, args: Sequence) -> dict | None:
        rows = self._rows(table, where, args, limit=1)
        return rows[0] if rows else None

    def _existing(self, table: str, where: str, args: Sequence) -> dict:
        """The row that must be there: just written in this transaction, or named by a foreign key."""
        row = self._first(table, where, args)
        if row is None:
            raise RegistryError(f"registry {self.path}: the {table} row {list(args)} is missing; "
                                "another process may have deleted it, try again")
        return row

    def _unique_prefix(self, table: str, column: str, prefix: str, what: str) -> dict | None:
        rows = self._rows(table, f"{column} LIKE ?", [prefix + "%"], limit=2)
        if len(rows) > 1:
            raise RegistryError(f"{what} prefix {prefix!r} is ambiguous; give more hex digits")
        return rows[0] if rows else None

    def _next_seq(self, db: Database, table: str, prefix: str) -> int:
        """Next number for ids like ``run-<n>`` (call inside a write transaction)."""
        row = db.execute(
            f'SELECT MAX(CAST(SUBSTR(id, ?) AS INTEGER)) FROM "{table}" WHERE id LIKE ?',
            [len(prefix) + 1, prefix + "%"],
        ).fetchone()
        return int(row[0] or 0) + 1

    # -- audit -------------------------------------------------------------------------
    def audit(self, actor: str, action: str, target: str, **detail: Any) -> dict:
        """Record that ``actor`` did ``action`` to ``target``; returns the audit row."""
        with self._write() as db:
            row_id = self._audit(db, actor, action, target, **detail)
        return self._existing("audit", "id = ?", [row_id])

    def _audit(self, db: Database, actor: str, action: str, target: str, **detail: Any) -> int:
        at = now()
        cursor = db.conn.execute(  # plain SQL: the fleet intake writes many of these
            "INSERT INTO audit (at, at_iso, actor, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)",
            [at, iso(at), str(actor), str(action), str(target), dumps(detail)])
        if cursor.lastrowid is None:
            raise RegistryError(f"registry {self.path} did not report the id of the new audit row")
        return int(cursor.lastrowid)

    def list_audit(
        self, limit: int = 50, *, target: str | None = None, action: str | None = None
    ) -> list[dict]:
        """Newest first; optionally only rows about ``target`` or of one ``action``."""
        clauses, args = [], []
        if target is not None:
            clauses.append("target = ?")
            args.append(target)
        if action is not None:
            clauses.append("action = ?")
            args.append(action)
        return self._rows("audit", " AND ".join(clauses) or None, args, "id DESC", limit)

    # -- counters -----------------------------------------------------------------------
    def next_counter(self, key_id: str) -> int:
        """The next command counter for signing key ``key_id`` (1, 2, 3, ...).

        Atomic across threads and processes (one ``BEGIN IMMEDIATE`` upsert) and
        durable across restarts, so a counter value is never handed out twice.
        """
        if not key_id:
            raise RegistryError("next_counter needs the signing key's id")
        with self._write() as db:
            row = db.execute(
                "INSERT INTO counters (key_id, value) VALUES (?, 1) "
                "ON CONFLICT(key_id) DO UPDATE SET value = value + 1 RETURNING value",
                [key_id],
            ).fetchone()
        return int(row[0])
