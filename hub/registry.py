"""The hub's registry: datasets, runs, models, versions, bundles, deployments,
agents, drift reports, an audit trail and signing counters, in one SQLite file.

Built on sqlite-utils over a real SQLite database in WAL mode with foreign keys
on. Every write runs in a ``BEGIN IMMEDIATE`` transaction (so concurrent
writers -- the hub's MQTT thread, the CLI/GUI thread, a second ``edgeloop``
process -- queue on SQLite's lock instead of failing half-way), and the audit
row of a change is written in the same transaction as the change.

Threads: each thread gets its own connection (created on first use), so one
:class:`Registry` object may be shared between threads.

Schema versioning: the ``meta`` table holds ``schema_version``; :data:`MIGRATIONS`
is the ordered list of migrations (migration *n* takes the schema from version
*n-1* to *n*). Opening a registry applies the missing ones; a registry written by
a newer edgeloop is refused with :class:`RegistryError` (upgrade edgeloop).

Return values: every query returns plain ``dict`` rows keyed by column name,
with JSON columns already decoded (``features``, ``params``, ``metrics`` ...).
Ids are short readable strings:

==============  ============================  ======================================
table           id                            example
==============  ============================  ======================================
datasets        ``ds-<first 12 hex of sha>``  ``ds-3fa1c09e77d2``
runs            ``run-<n>``                   ``run-7``
models          the model name                ``iris``
versions        ``<model>:<n>`` (n = 1, 2..)  ``iris:3``
bundles         the bundle's sha256           ``9c0e...`` (64 hex)
deployments     ``dep-<n>``                   ``dep-12`` (also unique by command_id)
drift_reports   integer                       ``41``
audit           integer                       ``1208``
==============  ============================  ======================================

Timestamps are unix seconds (floats); audit rows also carry an ISO-8601 string.

Mutating methods take a keyword ``actor`` (default ``"hub"``) for their audit
row; agent-originated changes are audited as ``agent:<agent_id>``. A deployment
row keeps ``target_sha256`` (the sha256 its command names) and ``bundle_sha256``
(the foreign key to ``bundles``, None when that bundle is not registered here).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from agent.messages import AgentState, DriftReport, Event

from .errors import NotFoundError, RegistryError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another writer before giving up

TASKS = ("classification", "regression")
RUN_STATUSES = ("running", "succeeded", "failed", "cancelled")
QUANT_CHOICES = ("fp32", "int8")
DEPLOY_KINDS = ("deploy", "rollback")
DEPLOY_STATUSES = ("pending", "installed", "failed", "refused")

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HEX = re.compile(r"^[0-9a-f]+$")
MIN_PREFIX = 8  # hex digits needed to name a bundle by prefix

# Columns holding JSON, decoded on every read.
_JSON_COLUMNS: dict[str, tuple[str, ...]] = {
    "datasets": ("features", "labels"),
    "runs": ("params", "metrics", "history", "library_versions"),
    "versions": ("quantization", "metrics"),
    "agents": ("state",),
    "drift_reports": ("drifted_features", "report"),
    "audit": ("detail",),
}


# --- migrations -----------------------------------------------------------------
def _m001_initial(db: Database) -> None:
    """Version 1: every table of the registry."""
    db["datasets"].create(
        {"id": str, "sha256": str, "name": str, "source": str, "rows": int,
         "features": str, "labels": str, "created_at": float},
        pk="id", not_null={"sha256", "name", "source", "rows", "features", "created_at"},
    )
    db["datasets"].create_index(["sha256"], unique=True)
    db["runs"].create(
        {"id": str, "dataset_id": str, "model_name": str, "params": str, "metrics": str,
         "history": str, "code_version": str, "library_versions": str,
         "started_at": float, "finished_at": float, "status": str},
        pk="id", foreign_keys=[("dataset_id", "datasets", "id")],
        not_null={"dataset_id", "model_name", "params", "started_at", "status"},
    )
    db["runs"].create_index(["dataset_id"])
    db["models"].create(
        {"name": str, "task": str, "created_at": float}, pk="name",
        not_null={"task", "created_at"},
    )
    db["versions"].create(
        {"id": str, "model_name": str, "version": str, "run_id": str, "onnx_sha256": str,
         "int8_sha256": str, "chosen": str, "quantization": str, "metrics": str,
         "created_at": float, "parent_version": str},
        pk="id",
        foreign_keys=[("model_name", "models", "name"), ("run_id", "runs", "id"),
                      ("parent_version", "versions", "id")],
        not_null={"model_name", "version", "run_id", "onnx_sha256", "chosen", "created_at"},
    )
    db["versions"].create_index(["model_name", "version"], unique=True)
    db["versions"].create_index(["run_id"])
    db["bundles"].create(
        {"sha256": str, "version_id": str, "path": str, "size": int, "key_id": str,
         "created_at": float},
        pk="sha256", foreign_keys=[("version_id", "versions", "id")],
        not_null={"version_id", "path", "size", "key_id", "created_at"},
    )
    db["bundles"].create_index(["version_id"])
    db["deployments"].create(
        {"id": str, "bundle_sha256": str, "target_sha256": str, "agent_id": str, "kind": str,
         "command_id": str, "counter": int, "status": str, "detail": str,
         "created_at": float, "updated_at": float},
        pk="id", foreign_keys=[("bundle_sha256", "bundles", "sha256")],
        not_null={"agent_id", "kind", "command_id", "counter", "status", "detail",
                  "created_at", "updated_at"},
        defaults={"detail": ""},
    )
    db["deployments"].create_index(["command_id"], unique=True)
    db["deployments"].create_index(["agent_id"])
    db["deployments"].create_index(["bundle_sha256"])
    db["deployments"].create_index(["target_sha256"])
    db["agents"].create(
        {"agent_id": str, "status": str, "session": int, "agent_version": str, "host": str,
         "http_url": str, "active_model": str, "active_version": str, "active_bundle": str,
         "started_at": float, "last_seen": float, "state": str},
        pk="agent_id", not_null={"status"},
    )
    db["drift_reports"].create(
        {"id": int, "agent_id": str, "model": str, "version": str, "bundle_sha256": str,
         "window": int, "rows": int, "started_at": float, "ended_at": float,
         "drifted_features": str, "report": str, "received_at": float},
        pk="id",
        not_null={"agent_id", "model", "version", "bundle_sha256", "window", "rows",
                  "started_at", "ended_at", "drifted_features", "report", "received_at"},
    )
    # A report re-delivered by MQTT (QoS 1) is the same agent, bundle, window and start.
    db["drift_reports"].create_index(
        ["agent_id", "bundle_sha256", "window", "started_at"], unique=True
    )
    db["drift_reports"].create_index(["agent_id", "model", "version"])
    db["audit"].create(
        {"id": int, "at": float, "at_iso": str, "actor": str, "action": str, "target": str,
         "detail": str},
        pk="id", not_null={"at", "at_iso", "actor", "action", "target", "detail"},
    )
    db["audit"].create_index(["at"])
    db["counters"].create({"key_id": str, "value": int}, pk="key_id", not_null={"value"})


# Append only: never edit a released migration, add a new one.
MIGRATIONS: list[Callable[[Database], None]] = [_m001_initial]
SCHEMA_VERSION = len(MIGRATIONS)


# --- small helpers --------------------------------------------------------------
def _now() -> float:
    return time.time()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


def _decode(table: str, row: dict) -> dict:
    """Decode the JSON columns of one row of ``table``."""
    for col in _JSON_COLUMNS.get(table, ()):
        if isinstance(row.get(col), str):
            row[col] = json.loads(row[col])
    return row


def _check_sha256(value: str, what: str) -> str:
    sha = str(value).strip().lower()
    if len(sha) != 64 or not _HEX.match(sha):
        raise RegistryError(f"{what} must be 64 hex digits, got {value!r}")
    return sha


def _check_model_name(name: str) -> str:
    if not isinstance(name, str) or not _MODEL_NAME.match(name):
        raise RegistryError(
            f"model name {name!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def _check_choice(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise RegistryError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _status_from_event(event: Event) -> str | None:
    """The deployment status an agent event implies, or None if it implies none."""
    if event.event == "command_result":
        return None if event.ok else "refused"
    if event.event in ("install_result", "rollback_result"):
        return "installed" if event.ok else "failed"
    if event.event == "error" and not event.ok:
        return "failed"
    return None


class _Conn:
    """Holder of one thread's connection (weak-referenceable, unlike sqlite3.Connection)."""

    __slots__ = ("db", "__weakref__")

    def __init__(self, db: Database) -> None:
        self.db = db


# --- the registry ---------------------------------------------------------------
class Registry:
    """The hub's registry in the SQLite file ``path`` (created and migrated on open)."""

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

    def __enter__(self) -> "Registry":
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
                    db["meta"].upsert({"key": "schema_version", "value": str(number)}, pk="key")
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
        rows = self._db()[table].rows_where(where, args, order_by=order_by, limit=limit)
        return [_decode(table, r) for r in rows]

    def _first(self, table: str, where: str, args: Sequence) -> dict | None:
        rows = self._rows(table, where, args, limit=1)
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
        return self._first("audit", "id = ?", [row_id])

    def _audit(self, db: Database, actor: str, action: str, target: str, **detail: Any) -> int:
        at = _now()
        table = db["audit"].insert({
            "at": at, "at_iso": _iso(at), "actor": str(actor), "action": str(action),
            "target": str(target), "detail": _dumps(detail),
        })
        return table.last_pk

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

    # -- datasets ---------------------------------------------------------------------
    def add_dataset(
        self, sha256: str, name: str, source: str, rows: int, features: Sequence[str],
        labels: Sequence[Any] | None = None, *, actor: str = "hub",
    ) -> dict:
        """Register a dataset by content hash; adding the same bytes again returns the existing row."""
        sha = _check_sha256(sha256, "dataset sha256")
        with self._write() as db:
            existing = self._first("datasets", "sha256 = ?", [sha])
            if existing is not None:
                return existing
            record = {
                "id": self._dataset_id(sha), "sha256": sha, "name": name, "source": str(source),
                "rows": int(rows), "features": _dumps(list(features)),
                "labels": _dumps(list(labels)) if labels is not None else None,
                "created_at": _now(),
            }
            db["datasets"].insert(record)
            self._audit(db, actor, "dataset.add", record["id"], name=name, sha256=sha, rows=int(rows))
        return self.get_dataset(record["id"])

    def _dataset_id(self, sha: str) -> str:
        """``ds-<sha12>``, lengthened in the (astronomically unlikely) case of a clash."""
        for n in (12, 16, 24, 64):
            candidate = f"ds-{sha[:n]}"
            if self._first("datasets", "id = ?", [candidate]) is None:
                return candidate
        raise RegistryError(f"dataset id for {sha} is already taken")  # same sha: unreachable

    def get_dataset(self, ref: str) -> dict:
        """A dataset by id (``ds-...``), full sha256 or a sha256 prefix of at least 8 hex digits."""
        ref = str(ref).strip().lower()
        row = self._first("datasets", "id = ?", [ref])
        if row is None and len(ref) >= MIN_PREFIX and _HEX.match(ref):
            row = self._unique_prefix("datasets", "sha256", ref, "dataset")
        if row is None:
            raise NotFoundError(
                f"no dataset {ref!r}; give its id (ds-...) or sha256, see list_datasets()"
            )
        return row

    def list_datasets(self) -> list[dict]:
        return self._rows("datasets", order_by="created_at DESC")

    def _unique_prefix(self, table: str, column: str, prefix: str, what: str) -> dict | None:
        rows = self._rows(table, f"{column} LIKE ?", [prefix + "%"], limit=2)
        if len(rows) > 1:
            raise RegistryError(f"{what} prefix {prefix!r} is ambiguous; give more hex digits")
        return rows[0] if rows else None

    # -- runs ---------------------------------------------------------------------------
    def start_run(
        self, dataset: str, model_name: str, params: dict, *, code_version: str = "",
        library_versions: dict | None = None, actor: str = "hub",
    ) -> dict:
        """Open a training run (status ``running``) on ``dataset`` (id or sha256)."""
        _check_model_name(model_name)
        with self._write() as db:
            dataset_id = self.get_dataset(dataset)["id"]
            run_id = f"run-{self._next_seq(db, 'runs', 'run-')}"
            db["runs"].insert({
                "id": run_id, "dataset_id": dataset_id, "model_name": model_name,
                "params": _dumps(dict(params)), "metrics": None, "history": None,
                "code_version": code_version, "library_versions": _dumps(library_versions or {}),
                "started_at": _now(), "finished_at": None, "status": "running",
            })
            self._audit(db, actor, "run.start", run_id, dataset_id=dataset_id, model_name=model_name)
        return self.get_run(run_id)

    def finish_run(
        self, run_id: str, status: str = "succeeded", *, metrics: dict | None = None,
        history: Any = None, actor: str = "hub",
    ) -> dict:
        """Close a running run with its final ``status``, metrics and training history."""
        _check_choice(status, RUN_STATUSES[1:], "a finished run's status")
        with self._write() as db:
            run = self.get_run(run_id)
            if run["status"] != "running":
                raise RegistryError(f"{run_id} already finished ({run['status']}); start a new run")
            db["runs"].update(run_id, {
                "status": status, "metrics": _dumps(metrics or {}), "history": _dumps(history),
                "finished_at": _now(),
            })
            self._audit(db, actor, f"run.{status}", run_id, metrics=metrics or {})
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> dict:
        row = self._first("runs", "id = ?", [str(run_id).strip()])
        if row is None:
            raise NotFoundError(f"no training run {run_id!r}; run ids look like run-7, see list_runs()")
        return row

    def list_runs(self, model_name: str | None = None) -> list[dict]:
        """Newest first; optionally only the runs of one model."""
        if model_name is None:
            return self._rows("runs", order_by="started_at DESC")
        return self._rows("runs", "model_name = ?", [model_name], "started_at DESC")

    # -- models and versions ------------------------------------------------------------
    def add_model(self, name: str, task: str, *, actor: str = "hub") -> dict:
        """Register a model name with its task; idempotent (a different task is refused)."""
        _check_model_name(name)
        _check_choice(task, TASKS, "task")
        with self._write() as db:
            self._ensure_model(db, name, task, actor)
        return self.get_model(name)

    def _ensure_model(self, db: Database, name: str, task: str | None, actor: str) -> None:
        existing = self._first("models", "name = ?", [name])
        if existing is None:
            if task is None:
                raise RegistryError(
                    f"model {name!r} is not registered yet; pass task='classification' or "
                    "'regression' for its first version"
                )
            _check_choice(task, TASKS, "task")
            db["models"].insert({"name": name, "task": task, "created_at": _now()})
            self._audit(db, actor, "model.add", name, task=task)
        elif task is not None and existing["task"] != task:
            raise RegistryError(
                f"model {name!r} is a {existing['task']} model, not {task}; pick another model name"
            )

    def get_model(self, name: str) -> dict:
        row = self._first("models", "name = ?", [name])
        if row is None:
            raise NotFoundError(f"no model named {name!r}; known models: {self._model_names()}")
        return row

    def list_models(self) -> list[dict]:
        return self._rows("models", order_by="name")

    def _model_names(self) -> str:
        return ", ".join(m["name"] for m in self.list_models()) or "none yet (train one first)"

    def add_version(
        self, model_name: str, run_id: str, onnx_sha256: str, *, task: str | None = None,
        int8_sha256: str | None = None, chosen: str = "fp32", quantization: dict | None = None,
        metrics: dict | None = None, parent_version: str | None = None, actor: str = "hub",
    ) -> dict:
        """Register the next version (``<model>:<n>``) of ``model_name`` built by ``run_id``.

        ``task`` is required when the model has no version yet. ``chosen`` says which
        export is served; ``int8`` needs ``int8_sha256``. ``parent_version`` is any
        :meth:`get_version` reference to the version this one was derived from.
        """
        _check_model_name(model_name)
        onnx = _check_sha256(onnx_sha256, "onnx_sha256")
        int8 = _check_sha256(int8_sha256, "int8_sha256") if int8_sha256 is not None else None
        _check_choice(chosen, QUANT_CHOICES, "chosen")
        if chosen == "int8" and int8 is None:
            raise RegistryError("chosen='int8' needs int8_sha256 (the quantized model's hash)")
        with self._write() as db:
            run = self.get_run(run_id)
            if run["status"] in ("failed", "cancelled"):
                raise RegistryError(f"{run_id} {run['status']}; only a successful run can make a version")
            self._ensure_model(db, model_name, task, actor)
            parent = self.get_version(parent_version)["id"] if parent_version else None
            number = self._next_version_number(db, model_name)
            version_id = f"{model_name}:{number}"
            db["versions"].insert({
                "id": version_id, "model_name": model_name, "version": str(number),
                "run_id": run["id"], "onnx_sha256": onnx, "int8_sha256": int8, "chosen": chosen,
                "quantization": _dumps(quantization or {}), "metrics": _dumps(metrics or {}),
                "created_at": _now(), "parent_version": parent,
            })
            self._audit(db, actor, "version.add", version_id, run_id=run["id"], chosen=chosen,
                        parent_version=parent)
        return self.get_version(version_id)

    def _next_version_number(self, db: Database, model_name: str) -> int:
        row = db.execute(
            "SELECT MAX(CAST(version AS INTEGER)) FROM versions WHERE model_name = ?", [model_name]
        ).fetchone()
        return int(row[0] or 0) + 1

    def get_version(self, ref: str) -> dict:
        """A version by ``"<model>:<n>"``, or ``"<model>"`` / ``"<model>:latest"`` for the newest."""
        model, _, number = str(ref).strip().rpartition(":")
        if not model:  # no colon: the whole ref is a model name
            model, number = number, ""
        if number in ("", "latest"):
            rows = self._rows("versions", "model_name = ?", [model],
                              "CAST(version AS INTEGER) DESC", 1)
            if not rows:
                self.get_model(model)  # raises "no model named ..." with the known names
                raise NotFoundError(f"model {model!r} has no versions yet; train and export one")
            return rows[0]
        row = self._first("versions", "id = ?", [f"{model}:{number}"])
        if row is None:
            self.get_model(model)
            known = ", ".join(v["version"] for v in self.list_versions(model)) or "none"
            raise NotFoundError(f"model {model!r} has no version {number!r}; its versions: {known}")
        return row

    def list_versions(self, model_name: str | None = None) -> list[dict]:
        """Every version (or one model's), by model name then version number."""
        order = "model_name, CAST(version AS INTEGER)"
        if model_name is None:
            return self._rows("versions", order_by=order)
        return self._rows("versions", "model_name = ?", [model_name], order)

    # -- bundles ------------------------------------------------------------------------------
    def add_bundle(
        self, sha256: str, version: str, path: Path | str, size: int, key_id: str,
        *, actor: str = "hub",
    ) -> dict:
        """Record a signed bundle of ``version`` (any get_version ref); idempotent by sha256."""
        sha = _check_sha256(sha256, "bundle sha256")
        with self._write() as db:
            version_id = self.get_version(version)["id"]
            existing = self._first("bundles", "sha256 = ?", [sha])
            if existing is not None:
                if existing["version_id"] != version_id:
                    raise RegistryError(
                        f"bundle {sha[:12]} is already registered for {existing['version_id']}, "
                        f"not {version_id}"
                    )
                return existing
            db["bundles"].insert({
                "sha256": sha, "version_id": version_id, "path": str(path), "size": int(size),
                "key_id": key_id, "created_at": _now(),
            })
            self._audit(db, actor, "bundle.add", sha, version_id=version_id, size=int(size),
                        key_id=key_id)
        return self.get_bundle(sha)

    def get_bundle(self, ref: str) -> dict:
        """A bundle by sha256 or a unique prefix of at least 8 hex digits."""
        prefix = str(ref).strip().lower()
        if len(prefix) < MIN_PREFIX or not _HEX.match(prefix):
            raise NotFoundError(
                f"{ref!r} does not name a bundle: give its sha256 or at least {MIN_PREFIX} hex digits of it"
            )
        row = self._unique_prefix("bundles", "sha256", prefix, "bundle")
        if row is None:
            raise NotFoundError(f"no bundle with sha256 {prefix}...; see list_bundles()")
        return row

    def list_bundles(self, version: str | None = None) -> list[dict]:
        """Newest first; optionally only the bundles of one version (any get_version ref)."""
        if version is None:
            return self._rows("bundles", order_by="created_at DESC")
        version_id = self.get_version(version)["id"]
        return self._rows("bundles", "version_id = ?", [version_id], "created_at DESC")

    # -- deployments ---------------------------------------------------------------------------
    def add_deployment(
        self, bundle_sha256: str | None, agent_id: str, kind: str, command_id: str, counter: int,
        *, status: str = "pending", detail: str = "", actor: str = "hub",
    ) -> dict:
        """Record a deploy/rollback command sent to ``agent_id``.

        ``target_sha256`` is always the full sha256 the command names.
        ``bundle_sha256`` links to the registered bundle (foreign key); it is None
        when the bundle is not in this registry (e.g. a rollback to a bundle an
        agent got elsewhere) -- such deployments are still recorded and audited.
        A prefix (>= 8 hex digits) must name a registered bundle. ``bundle_sha256``
        may itself be None only for a rollback.
        """
        _check_choice(kind, DEPLOY_KINDS, "deployment kind")
        _check_choice(status, DEPLOY_STATUSES, "deployment status")
        if bundle_sha256 is None and kind == "deploy":
            raise RegistryError("a deploy needs the bundle's sha256")
        with self._write() as db:
            target, registered = self._deployment_target(bundle_sha256)
            if self._first("deployments", "command_id = ?", [command_id]) is not None:
                raise RegistryError(f"command {command_id} is already recorded; use a new command id")
            dep_id = f"dep-{self._next_seq(db, 'deployments', 'dep-')}"
            now = _now()
            db["deployments"].insert({
                "id": dep_id, "bundle_sha256": target if registered else None,
                "target_sha256": target, "agent_id": agent_id, "kind": kind,
                "command_id": command_id, "counter": int(counter), "status": status,
                "detail": detail, "created_at": now, "updated_at": now,
            })
            self._audit(db, actor, kind, agent_id, deployment=dep_id, bundle_sha256=target,
                        registered=registered, command_id=command_id, counter=int(counter))
        return self.get_deployment(command_id)

    def _deployment_target(self, ref: str | None) -> tuple[str | None, bool]:
        """(full sha256 or None, whether it is a registered bundle)."""
        if ref is None:
            return None, False
        text = str(ref).strip().lower()
        if len(text) == 64 and _HEX.match(text):
            return text, self._first("bundles", "sha256 = ?", [text]) is not None
        return self.get_bundle(text)["sha256"], True

    def update_deployment_status(
        self, command_id: str, status: str, detail: str = "", *, actor: str = "hub"
    ) -> dict:
        """Set the status of the deployment made by ``command_id`` (e.g. from an agent event)."""
        _check_choice(status, DEPLOY_STATUSES, "deployment status")
        with self._write() as db:
            dep = self.get_deployment(command_id)
            db["deployments"].update(dep["id"], {"status": status, "detail": detail,
                                                 "updated_at": _now()})
            self._audit(db, actor, f"deployment.{status}", dep["agent_id"], deployment=dep["id"],
                        command_id=dep["command_id"], previous=dep["status"], detail=detail)
        return self.get_deployment(command_id)

    def update_deployment_from_event(self, event: Event) -> dict | None:
        """Settle a deployment from an agent event; None if the event settles nothing.

        ``command_result`` that is not ok -> ``refused`` (the agent would not run
        the command); ``install_result``/``rollback_result`` -> ``installed`` or
        ``failed``; a failed ``error`` event about a command -> ``failed``.
        Events about commands this registry never recorded are ignored.
        """
        status = _status_from_event(event)
        if status is None or event.command_id is None:
            return None
        dep = self._first("deployments", "command_id = ?", [event.command_id])
        if dep is None:
            return None
        if status == "refused" and dep["status"] != "pending":
            # a duplicate or replay of a command that already settled: record it, keep the outcome
            self.audit(f"agent:{event.agent_id}", "command.refused_again", dep["agent_id"],
                       command_id=event.command_id, code=event.code, message=event.message)
            return None
        detail = event.message if event.ok else f"{event.code}: {event.message}".rstrip(": ")
        return self.update_deployment_status(
            event.command_id, status, detail, actor=f"agent:{event.agent_id}"
        )

    def get_deployment(self, ref: str) -> dict:
        """A deployment by command id or deployment id (``dep-<n>``)."""
        row = self._first("deployments", "command_id = ? OR id = ?", [ref, ref])
        if row is None:
            raise NotFoundError(f"no deployment for command {ref!r}; see list_deployments()")
        return row

    def list_deployments(self, agent_id: str | None = None) -> list[dict]:
        """Newest first; optionally only one agent's."""
        order = "created_at DESC, CAST(SUBSTR(id, 5) AS INTEGER) DESC"
        if agent_id is None:
            return self._rows("deployments", order_by=order)
        return self._rows("deployments", "agent_id = ?", [agent_id], order)

    # -- agents -------------------------------------------------------------------------------
    def upsert_agent_state(self, state: AgentState) -> dict:
        """Store an agent's (retained) state message; returns the agent's row.

        A state older than the stored one -- by (started_at, session), e.g. the
        last will of a previous connection arriving after the new birth message --
        is ignored, and the stored row is returned unchanged.
        """
        with self._write() as db:
            old = self._first("agents", "agent_id = ?", [state.agent_id])
            if old is not None and self._is_stale(state, old):
                log.info("ignoring stale state of %s (session %s)", state.agent_id, state.session)
                return old
            active = state.active
            db["agents"].upsert({
                "agent_id": state.agent_id, "status": state.status, "session": state.session,
                "agent_version": state.agent_version, "host": state.host,
                "http_url": state.http_url,
                "active_model": active.model if active else None,
                "active_version": active.version if active else None,
                "active_bundle": active.bundle_sha256 if active else None,
                "started_at": state.started_at, "last_seen": _now(),
                "state": _dumps(state.to_dict()),
            }, pk="agent_id")
            self._audit_agent_change(db, old, state)
        return self.get_agent(state.agent_id)

    @staticmethod
    def _is_stale(state: AgentState, old: dict) -> bool:
        return (state.started_at, state.session) < (old["started_at"] or 0.0, old["session"] or 0)

    def _audit_agent_change(self, db: Database, old: dict | None, state: AgentState) -> None:
        """Audit status and active-bundle changes (not every repeated heartbeat)."""
        bundle = state.active.bundle_sha256 if state.active else None
        if old is None or old["status"] != state.status:
            self._audit(db, f"agent:{state.agent_id}", f"agent.{state.status}", state.agent_id,
                        session=state.session, agent_version=state.agent_version)
        if old is not None and old["active_bundle"] != bundle:
            self._audit(db, f"agent:{state.agent_id}", "agent.active", state.agent_id,
                        previous=old["active_bundle"], bundle_sha256=bundle)

    def mark_agent(self, agent_id: str, status: str, *, actor: str = "hub") -> dict:
        """Set an agent's status (``online``/``offline``/...) as the hub sees it.

        An agent not seen before gets a row with just its status (its status
        topic may arrive before its state message); ``last_seen`` is set then.
        """
        if not agent_id or not status:
            raise RegistryError("mark_agent needs an agent id and a status such as 'online' or 'offline'")
        with self._write() as db:
            old = self._first("agents", "agent_id = ?", [agent_id])
            if old is None:
                db["agents"].insert({"agent_id": agent_id, "status": status, "last_seen": _now()})
                self._audit(db, actor, f"agent.{status}", agent_id, previous=None)
            elif old["status"] != status:
                db["agents"].update(agent_id, {"status": status})
                self._audit(db, actor, f"agent.{status}", agent_id, previous=old["status"])
        return self.get_agent(agent_id)

    def get_agent(self, agent_id: str) -> dict:
        row = self._first("agents", "agent_id = ?", [agent_id])
        if row is None:
            raise NotFoundError(f"no agent {agent_id!r} has reported to this hub; see list_agents()")
        return row

    def list_agents(self) -> list[dict]:
        return self._rows("agents", order_by="agent_id")

    # -- drift --------------------------------------------------------------------------------
    def add_drift_report(self, report: DriftReport) -> dict:
        """Store one drift window; a re-delivered report is stored once. Returns the row."""
        key = [report.agent_id, report.bundle_sha256, report.window, report.started_at]
        where = "agent_id = ? AND bundle_sha256 = ? AND window = ? AND started_at = ?"
        with self._write() as db:
            existing = self._first("drift_reports", where, key)
            if existing is not None:
                return existing
            drifted = report.drifted_features
            table = db["drift_reports"].insert({
                "agent_id": report.agent_id, "model": report.model, "version": report.version,
                "bundle_sha256": report.bundle_sha256, "window": report.window,
                "rows": report.rows, "started_at": report.started_at,
                "ended_at": report.ended_at, "drifted_features": _dumps(drifted),
                "report": _dumps(report.to_dict()), "received_at": _now(),
            })
            row_id = table.last_pk
            if drifted:
                self._audit(db, f"agent:{report.agent_id}", "drift.detected", report.agent_id,
                            model=report.model, version=report.version, window=report.window,
                            features=drifted, report_id=row_id)
        return self._first("drift_reports", "id = ?", [row_id])

    def list_drift_reports(
        self, agent_id: str | None = None, *, model: str | None = None,
        version: str | None = None, limit: int | None = 100,
    ) -> list[dict]:
        """Newest window first, filtered by any of agent, model and version."""
        clauses, args = [], []
        for column, value in (("agent_id", agent_id), ("model", model), ("version", version)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        return self._rows("drift_reports", " AND ".join(clauses) or None, args,
                          "ended_at DESC, id DESC", limit)

    def drift_summary(self, agent_id: str | None = None) -> list[dict]:
        """Per (agent, model, version): how drift went over all stored windows.

        Each entry: ``agent_id, model, version, bundle_sha256`` (of the last window),
        ``windows`` (count), ``rows`` (total), ``first_started_at``,
        ``last_window, last_ended_at, last_received_at``, ``drifting_now`` (features
        flagged in the last window), ``drifted_features`` ({name: windows that
        flagged it}, most flagged first) and ``max_psi`` ({name: highest PSI seen}).
        """
        reports = self._rows("drift_reports", "agent_id = ?" if agent_id else None,
                             [agent_id] if agent_id else None, "ended_at, id")
        groups: dict[tuple[str, str, str], dict] = {}
        for r in reports:
            key = (r["agent_id"], r["model"], r["version"])
            if key not in groups:
                groups[key] = self._new_summary(r)
            self._add_to_summary(groups[key], r)
        for entry in groups.values():
            flagged = entry["drifted_features"]
            entry["drifted_features"] = dict(sorted(flagged.items(), key=lambda kv: (-kv[1], kv[0])))
        return [groups[k] for k in sorted(groups)]

    @staticmethod
    def _new_summary(r: dict) -> dict:
        return {"agent_id": r["agent_id"], "model": r["model"], "version": r["version"],
                "bundle_sha256": r["bundle_sha256"], "windows": 0, "rows": 0,
                "first_started_at": r["started_at"], "last_window": None, "last_ended_at": None,
                "last_received_at": None, "drifting_now": [], "drifted_features": {},
                "max_psi": {}}

    @staticmethod
    def _add_to_summary(entry: dict, r: dict) -> None:
        """Fold one report row (rows arrive oldest first) into its summary entry."""
        entry["windows"] += 1
        entry["rows"] += r["rows"]
        entry["first_started_at"] = min(entry["first_started_at"], r["started_at"])
        entry.update(bundle_sha256=r["bundle_sha256"], last_window=r["window"],
                     last_ended_at=r["ended_at"], last_received_at=r["received_at"],
                     drifting_now=list(r["drifted_features"]))
        for name in r["drifted_features"]:
            entry["drifted_features"][name] = entry["drifted_features"].get(name, 0) + 1
        for feature in r["report"].get("features", []):
            name, psi = feature["name"], float(feature["psi"])
            entry["max_psi"][name] = max(psi, entry["max_psi"].get(name, psi))

    # -- lineage --------------------------------------------------------------------------------
    def lineage(self, ref: str) -> dict:
        """Walk dataset -> run -> version(s) -> bundles -> deployments from any link.

        ``ref`` is a run id (``run-7``), a version (``iris:3``, or ``iris`` for the
        latest) or a bundle sha256 (prefix of >= 8 hex digits). Returns::

            {"ref": ref, "kind": "run" | "version" | "bundle",
             "dataset": {...}, "run": {...},
             "versions": [{...version, "bundles": [{...bundle, "deployments": [...]}]}],
             "deployments": [...every deployment above, newest first]}

        A bundle ref narrows the tree to that bundle; a run ref includes every
        version the run produced.
        """
        with self._snapshot():
            kind, run, versions, bundle = self._resolve_lineage_ref(str(ref).strip())
            tree = [self._version_tree(v, bundle) for v in versions]
            deployments = [d for v in tree for b in v["bundles"] for d in b["deployments"]]
            deployments.sort(key=lambda d: d["created_at"], reverse=True)
            return {
                "ref": ref, "kind": kind, "dataset": self.get_dataset(run["dataset_id"]),
                "run": run, "versions": tree, "deployments": deployments,
            }

    def _resolve_lineage_ref(self, ref: str) -> tuple[str, dict, list[dict], dict | None]:
        """(kind, run, versions, bundle-or-None) for a run, version or bundle reference."""
        if ref.startswith("run-"):
            run = self.get_run(ref)
            return "run", run, self._rows("versions", "run_id = ?", [run["id"]],
                                          "model_name, CAST(version AS INTEGER)"), None
        if ":" not in ref and len(ref) >= MIN_PREFIX and _HEX.match(ref.lower()):
            with contextlib.suppress(NotFoundError):
                bundle = self.get_bundle(ref)
                version = self.get_version(bundle["version_id"])
                return "bundle", self.get_run(version["run_id"]), [version], bundle
        if ":" in ref or self._first("models", "name = ?", [ref]) is not None:
            version = self.get_version(ref)
            return "version", self.get_run(version["run_id"]), [version], None
        raise NotFoundError(
            f"{ref!r} names no run, version or bundle; use a run id (run-7), a version "
            f"(model:3, or model for its latest) or at least {MIN_PREFIX} hex digits of a bundle sha256"
        )

    def _version_tree(self, version: dict, only_bundle: dict | None) -> dict:
        bundles = [only_bundle] if only_bundle else self._rows(
            "bundles", "version_id = ?", [version["id"]], "created_at")
        return {**version, "bundles": [
            {**b, "deployments": self._rows("deployments", "target_sha256 = ?", [b["sha256"]],
                                            "created_at DESC")}
            for b in bundles
        ]}
