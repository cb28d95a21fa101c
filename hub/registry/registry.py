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
aliases         (model, alias)                ``iris`` + ``production``
alias_history   integer                       ``17``
==============  ============================  ======================================

Version references (accepted by every method that takes one): ``iris:3``;
``iris`` or ``iris:latest`` or ``iris@latest`` for the newest version;
``iris@production`` for where that alias points now (:meth:`Registry.resolve`).
Version rows also carry ``aliases`` (names pointing at them) and ``split`` (the
run's split record).

Model factory (schema 2): a model may have an *evaluation gate* -- minimum (and,
for lower-is-better metrics, maximum) values of its versions' metrics, see
:func:`normalize_gate`. A version failing its gate cannot be aliased
(:meth:`Registry.set_alias`) or deployed (``Hub.check_deployable``) unless the
gate is overridden with a reason, which is recorded; :class:`GateError` lists
each failing metric. Aliases (``production``, ``staging``...) move with a full
history (:meth:`Registry.alias_history`).

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
import math
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from edgeloop.agent.wire.messages import AgentState, DriftReport, Event
from edgeloop.hub.errors import NotFoundError, RegistryError

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
    "models": ("gate",),
    "alias_history": ("gate_check",),
}

# Evaluation gates and aliases.
GATE_BOUNDS = ("min", "max")
RESERVED_ALIASES = ("latest",)  # ``model@latest`` always means the newest version
_ALIAS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
GATE_EXAMPLE = '{"test_accuracy": 0.9, "test_macro_f1": 0.85, "max": {"test_rmse": 3.0}}'



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


def _m002_model_factory(db: Database) -> None:
    """Version 2: evaluation gates on models, aliases with their history, child lookups.

    * ``models.gate``: the model's evaluation gate (JSON, see :func:`normalize_gate`),
      NULL for no gate;
    * ``aliases``: where each named alias of a model (``production``, ``staging``...)
      points now, one row per (model, alias);
    * ``alias_history``: every move (and removal) of an alias, append only: who,
      when, why, from which version to which, and the gate check when overridden;
    * an index on ``versions.parent_version`` so lineage finds a version's children.
    """
    db["models"].add_column("gate", str)
    db["aliases"].create(
        {"model_name": str, "alias": str, "version_id": str, "updated_at": float,
         "updated_by": str, "reason": str},
        pk=("model_name", "alias"),
        foreign_keys=[("model_name", "models", "name"), ("version_id", "versions", "id")],
        not_null={"version_id", "updated_at", "updated_by", "reason"}, defaults={"reason": ""},
    )
    db["aliases"].create_index(["version_id"])
    db["alias_history"].create(
        {"id": int, "model_name": str, "alias": str, "version_id": str,
         "previous_version_id": str, "actor": str, "reason": str, "override_gate": int,
         "gate_check": str, "at": float, "at_iso": str},
        pk="id",
        foreign_keys=[("model_name", "models", "name"), ("version_id", "versions", "id"),
                      ("previous_version_id", "versions", "id")],
        not_null={"model_name", "alias", "actor", "reason", "override_gate", "at", "at_iso"},
        defaults={"reason": "", "override_gate": 0},
    )
    db["alias_history"].create_index(["model_name", "alias"])
    db["versions"].create_index(["parent_version"])


# Append only: never edit a released migration, add a new one.
MIGRATIONS: list[Callable[[Database], None]] = [_m001_initial, _m002_model_factory]
SCHEMA_VERSION = len(MIGRATIONS)


# --- small helpers --------------------------------------------------------------
def _now() -> float:
    return time.time()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


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


def _check_alias_name(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS_NAME.match(alias):
        raise RegistryError(
            f"alias {alias!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-', starting "
            "with a letter (e.g. production, staging, canary-eu)"
        )
    if alias in RESERVED_ALIASES:
        raise RegistryError(f"alias {alias!r} is reserved: model@{alias} always means the newest version")
    return alias


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def normalize_gate(gate: Any, model: str = "the model") -> dict:
    """The stored form ``{"min": {metric: value}, "max": {metric: value}}`` of a gate.

    A gate is a mapping of metric name to the *minimum* acceptable value, plus
    optional ``"min"`` and ``"max"`` sub-mappings; ``"max"`` holds upper bounds
    for metrics where lower is better (losses, RMSE)::

        {"test_accuracy": 0.9, "test_macro_f1": 0.85}          # minima
        {"max": {"test_rmse": 3.0}, "min": {"test_r2": 0.8}}   # explicit bounds
        {"test_accuracy": 0.9, "max": {"test_loss": 0.4}}      # both

    ``None`` or ``{}`` means no gate. Thresholds must be finite numbers; a metric
    may have both bounds if the minimum is not above the maximum.
    """
    out: dict[str, dict[str, float]] = {"min": {}, "max": {}}
    if gate is None:
        return out
    if not isinstance(gate, dict):
        raise RegistryError(f"the gate of {model} must be a mapping like {GATE_EXAMPLE}, got {gate!r}")
    problems: list[str] = []

    def add(bound: str, metric: Any, value: Any) -> None:
        if not isinstance(metric, str) or not metric.strip():
            problems.append(f"metric names must be non-empty strings, got {metric!r}")
        elif not _is_number(value) or not math.isfinite(value):
            problems.append(f"{bound} {metric}={value!r} is not a finite number")
        else:
            out[bound][metric.strip()] = float(value)

    for key, value in gate.items():
        if key in GATE_BOUNDS:
            if not isinstance(value, dict):
                problems.append(f"{key!r} must map metric names to numbers, got {value!r}")
                continue
            for metric, threshold in value.items():
                add(key, metric, threshold)
        else:
            add("min", key, value)
    for metric in set(out["min"]) & set(out["max"]):
        if out["min"][metric] > out["max"][metric]:
            problems.append(f"{metric}: minimum {out['min'][metric]:g} is above maximum {out['max'][metric]:g}")
    if problems:
        raise RegistryError(f"invalid evaluation gate for {model}: " + "; ".join(problems)
                            + f". A gate looks like {GATE_EXAMPLE}")
    return out


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if _is_number(value) else str(value)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and scalars are leaves)."""
    if not isinstance(d, dict):
        return {prefix: d} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


# Metric entries that are references or tables, not scores (left out of gates and comparisons).
_NOT_SCORES = ("prediction_reference", "confusion_matrix")


def _numeric_metrics(*sources: dict | None) -> dict[str, float]:
    """Numeric (non-bool, scalar) metrics, nested ones flattened (``continual.forgetting``);
    earlier sources win."""
    out: dict[str, float] = {}
    for src in sources:
        flat = _flatten({k: v for k, v in (src or {}).items() if k not in _NOT_SCORES})
        for key, value in flat.items():
            if key not in out and _is_number(value):
                out[key] = float(value)
    return out


class GateError(RegistryError):
    """A version fails its model's evaluation gate (``.check`` holds the whole check).

    ``.failures`` lists each failing metric as ``{"metric", "bound", "threshold",
    "value", "passed", "problem"}``.
    """

    code = "gate_failed"

    def __init__(self, check: dict, action: str = "be used") -> None:
        self.check = check
        self.version = check.get("version")
        self.failures = list(check.get("failures", []))
        lines = [(f"{self.version} does not pass the evaluation gate of model {check.get('model')}, "
                  f"so it cannot {action}:")]
        for f in self.failures:
            limit = "minimum" if f["bound"] == "min" else "maximum"
            if f["value"] is None:
                lines.append(f"  {f['metric']}: {f['problem']} ({limit} {_fmt(f['threshold'])})")
            else:
                lines.append(f"  {f['metric']} = {_fmt(f['value'])}, {limit} {_fmt(f['threshold'])} "
                             f"({f['problem']})")
        lines.append("Override only with a recorded reason: `edgeloop registry alias ... --override-gate "
                     "--reason WHY`, `edgeloop deploy ... --override-gate WHY` (API: override_gate=True "
                     "with reason=..., or check_deployable(..., override_reason=WHY)).")
        super().__init__("\n".join(lines))


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

    def __enter__(self) -> Registry:
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
        """A dataset by id (``ds-...``), full sha256, a sha256 prefix of at least 8 hex
        digits, or its name (the newest dataset of that name)."""
        name = str(ref).strip()
        ref = name.lower()
        row = self._first("datasets", "id = ?", [ref])
        if row is None and len(ref) >= MIN_PREFIX and _HEX.match(ref):
            row = self._unique_prefix("datasets", "sha256", ref, "dataset")
        if row is None:
            rows = self._rows("datasets", "name = ?", [name], "created_at DESC", limit=1)
            row = rows[0] if rows else None
        if row is None:
            raise NotFoundError(
                f"no dataset {name!r}; give its name, id (ds-...) or sha256 (see `edgeloop data list`)"
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
        write_files: Callable[[dict], None] | None = None,
    ) -> dict:
        """Register the next version (``<model>:<n>``) of ``model_name`` built by ``run_id``.

        ``task`` is required when the model has no version yet. ``chosen`` says which
        export is served; ``int8`` needs ``int8_sha256``. ``parent_version`` is any
        :meth:`get_version` reference to the version this one was derived from.

        ``write_files``, when given, is called inside the registry's write transaction
        with ``{"id", "model_name", "version"}`` once the number is allocated and
        before the row exists: it puts the version's files in place (durably). If it
        raises, nothing is recorded -- so a version row never points at missing files.
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
            if write_files is not None:
                write_files({"id": version_id, "model_name": model_name, "version": str(number)})
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
        """A version by reference (every method taking a version ref accepts these):

        * ``"<model>:<n>"`` -- that version (``iris:3``);
        * ``"<model>"`` or ``"<model>:latest"`` or ``"<model>@latest"`` -- the newest;
        * ``"<model>@<alias>"`` -- where the alias points now (``iris@production``).

        Besides its columns the row carries ``aliases`` (names pointing at it now)
        and ``split`` (the run's train/val/test split record, when the run has one).
        """
        text = str(ref).strip()
        if "@" in text:
            model, _, alias = text.partition("@")
            if alias != "latest":
                return self._version_extras([self._alias_target(model, alias)])[0]
            text = model
        model, _, number = text.rpartition(":")
        if not model:  # no colon: the whole ref is a model name
            model, number = number, ""
        if number in ("", "latest"):
            rows = self._rows("versions", "model_name = ?", [model],
                              "CAST(version AS INTEGER) DESC", 1)
            if not rows:
                self.get_model(model)  # raises "no model named ..." with the known names
                raise NotFoundError(f"model {model!r} has no versions yet; train and export one")
            return self._version_extras(rows)[0]
        row = self._first("versions", "id = ?", [f"{model}:{number}"])
        if row is None:
            self.get_model(model)
            known = ", ".join(v["version"] for v in self._rows(
                "versions", "model_name = ?", [model], "CAST(version AS INTEGER)")) or "none"
            raise NotFoundError(f"model {model!r} has no version {number!r}; its versions: {known}")
        return self._version_extras([row])[0]

    def resolve(self, ref: str) -> str:
        """The version id (``model:n``) a version reference names now (see :meth:`get_version`)."""
        return self.get_version(ref)["id"]

    def list_versions(self, model_name: str | None = None) -> list[dict]:
        """Every version (or one model's), by model name then version number."""
        order = "model_name, CAST(version AS INTEGER)"
        if model_name is None:
            return self._version_extras(self._rows("versions", order_by=order))
        return self._version_extras(self._rows("versions", "model_name = ?", [model_name], order))

    def _version_extras(self, rows: list[dict]) -> list[dict]:
        """Add ``aliases`` and ``split`` to version rows (two queries for any number of rows)."""
        if not rows:
            return rows
        db = self._db()
        ids = [r["id"] for r in rows]
        marks = ", ".join("?" * len(ids))
        aliases: dict[str, list[str]] = {}
        for version_id, alias in db.execute(
                f"SELECT version_id, alias FROM aliases WHERE version_id IN ({marks}) ORDER BY alias", ids):
            aliases.setdefault(version_id, []).append(alias)
        run_ids = sorted({r["run_id"] for r in rows})
        splits: dict[str, Any] = {}
        for run_id, params in db.execute(
                f"SELECT id, params FROM runs WHERE id IN ({', '.join('?' * len(run_ids))})", run_ids):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                splits[run_id] = json.loads(params).get("split")
        for r in rows:
            r["aliases"] = aliases.get(r["id"], [])
            r["split"] = splits.get(r["run_id"])
        return rows

    def _qualify(self, model: str, version_ref: str) -> str:
        """A version ref relative to ``model``: ``3`` -> ``model:3``, ``@staging`` -> ``model@staging``."""
        text = str(version_ref).strip()
        if text.isdigit():
            return f"{model}:{text}"
        if text.startswith("@"):
            return f"{model}{text}"
        return text

    # -- aliases -------------------------------------------------------------------------------
    def _alias_target(self, model: str, alias: str) -> dict:
        row = self._first("aliases", "model_name = ? AND alias = ?", [model, alias])
        if row is None:
            self.get_model(model)
            known = ", ".join(a["alias"] for a in self.list_aliases(model)) or "none yet"
            raise NotFoundError(
                f"model {model!r} has no alias {alias!r} (its aliases: {known}); point one at a "
                f"version with `edgeloop registry alias {model} {alias} VERSION`"
            )
        return self._first("versions", "id = ?", [row["version_id"]])

    def set_alias(
        self, model: str, alias: str, version_ref: str, *, actor: str = "hub", reason: str = "",
        override_gate: bool = False,
    ) -> dict:
        """Point ``model@alias`` at a version of ``model``; every move is kept in the alias history.

        ``version_ref`` is any version ref of the same model (``iris:3``, ``3``,
        ``iris@staging``...). A version failing the model's evaluation gate raises
        :class:`GateError` unless ``override_gate=True`` with a ``reason``; the
        override is recorded in the alias history and as a ``gate.override``
        audit row. Pointing an alias where it already points changes nothing.
        Returns the alias row (see :meth:`get_alias`).
        """
        _check_model_name(model)
        _check_alias_name(alias)
        reason = str(reason or "").strip()
        if override_gate and not reason:
            raise RegistryError("overriding the evaluation gate needs a reason (it is recorded in the "
                                "alias history and the audit log)")
        with self._write() as db:
            self.get_model(model)
            version = self.get_version(self._qualify(model, version_ref))
            if version["model_name"] != model:
                raise RegistryError(f"{version['id']} is a version of {version['model_name']!r}, not of "
                                    f"{model!r}; an alias of {model} can only point at {model}:<n>")
            current = self._first("aliases", "model_name = ? AND alias = ?", [model, alias])
            if current is not None and current["version_id"] == version["id"]:
                return self.get_alias(model, alias)
            check = self.check_gate(version["id"])
            overridden = not check["passed"]
            if overridden and not override_gate:
                raise GateError(check, action=f"become {model}@{alias}")
            now = _now()
            db["aliases"].upsert({"model_name": model, "alias": alias, "version_id": version["id"],
                                  "updated_at": now, "updated_by": str(actor), "reason": reason},
                                 pk=("model_name", "alias"))
            previous = current["version_id"] if current else None
            db["alias_history"].insert({
                "model_name": model, "alias": alias, "version_id": version["id"],
                "previous_version_id": previous, "actor": str(actor), "reason": reason,
                "override_gate": int(overridden), "gate_check": _dumps(check) if overridden else None,
                "at": now, "at_iso": _iso(now),
            })
            self._audit(db, actor, "alias.set", f"{model}@{alias}", version=version["id"],
                        previous=previous, reason=reason, override_gate=overridden)
            if overridden:
                self._audit(db, actor, "gate.override", version["id"], purpose=f"alias {model}@{alias}",
                            reason=reason, failures=check["failures"])
        return self.get_alias(model, alias)

    def remove_alias(self, model: str, alias: str, *, actor: str = "hub", reason: str = "") -> dict:
        """Delete ``model@alias`` (the removal is kept in its history); returns the removed row."""
        reason = str(reason or "").strip()
        with self._write() as db:
            current = self.get_alias(model, alias)
            db["aliases"].delete((model, alias))
            now = _now()
            db["alias_history"].insert({
                "model_name": model, "alias": alias, "version_id": None,
                "previous_version_id": current["version_id"], "actor": str(actor), "reason": reason,
                "override_gate": 0, "gate_check": None, "at": now, "at_iso": _iso(now),
            })
            self._audit(db, actor, "alias.remove", f"{model}@{alias}", previous=current["version_id"],
                        reason=reason)
        return current

    def get_alias(self, model: str, alias: str) -> dict:
        """``{"model_name", "alias", "version_id", "updated_at", "updated_by", "reason"}``."""
        row = self._first("aliases", "model_name = ? AND alias = ?", [model, alias])
        if row is None:
            self._alias_target(model, alias)  # raises the helpful NotFoundError
        return row

    def list_aliases(self, model: str | None = None) -> list[dict]:
        """Current aliases (of every model, or one), by model then alias name."""
        if model is None:
            return self._rows("aliases", order_by="model_name, alias")
        return self._rows("aliases", "model_name = ?", [model], "alias")

    def alias_history(self, model: str, alias: str | None = None) -> list[dict]:
        """Every move of ``model@alias`` (or of all the model's aliases), newest first.

        Each row: ``id, model_name, alias, version_id`` (None for a removal),
        ``previous_version_id, actor, reason, override_gate`` (bool), ``gate_check``
        (the failed check when the gate was overridden, else None), ``at, at_iso``.
        """
        self.get_model(model)
        if alias is None:
            rows = self._rows("alias_history", "model_name = ?", [model], "id DESC")
        else:
            rows = self._rows("alias_history", "model_name = ? AND alias = ?", [model, alias], "id DESC")
        for r in rows:
            r["override_gate"] = bool(r["override_gate"])
        return rows

    # -- evaluation gates ---------------------------------------------------------------------
    def set_gate(self, model: str, gate: dict | None, *, actor: str = "hub") -> dict:
        """Store the evaluation gate of ``model`` (see :func:`normalize_gate`); None or {} clears it.

        Existing aliases are not re-checked; the gate applies to the next alias
        move or deployment. Returns the model row (``gate`` in stored form or None).
        """
        normalized = normalize_gate(gate, repr(model))
        empty = not normalized["min"] and not normalized["max"]
        with self._write() as db:
            old = self.get_model(model)
            db["models"].update(model, {"gate": None if empty else _dumps(normalized)})
            self._audit(db, actor, "model.gate", model, previous=old.get("gate"),
                        gate=None if empty else normalized)
        return self.get_model(model)

    def get_gate(self, model: str) -> dict:
        """The gate of ``model`` as ``{"min": {...}, "max": {...}}`` (both empty: no gate)."""
        return normalize_gate(self.get_model(model).get("gate"), repr(model))

    def check_gate(self, version_ref: str) -> dict:
        """Check a version's metrics against its model's gate.

        Returns ``{"version", "model", "gate", "has_gate", "passed", "checks",
        "failures"}``; each check is ``{"metric", "bound": "min"|"max", "threshold",
        "value", "passed", "problem"}`` (``problem`` is "" when it passed). A metric
        the version does not have (or that is not a finite number) fails. A model
        without a gate passes every version.
        """
        with self._snapshot():
            version = self.get_version(version_ref)
            gate = self.get_gate(version["model_name"])
            run = self.get_run(version["run_id"])
        metrics = _numeric_metrics(version.get("metrics"), run.get("metrics"))
        checks = []
        for bound in GATE_BOUNDS:
            for metric, threshold in sorted(gate[bound].items()):
                value = metrics.get(metric)
                if value is None:
                    ok, problem = False, "missing from the version's metrics"
                elif not math.isfinite(value):
                    ok, problem = False, "not a finite number"
                elif bound == "min":
                    ok, problem = value >= threshold, "" if value >= threshold else "below the minimum"
                else:
                    ok, problem = value <= threshold, "" if value <= threshold else "above the maximum"
                checks.append({"metric": metric, "bound": bound, "threshold": threshold,
                               "value": value, "passed": ok, "problem": problem})
        failures = [c for c in checks if not c["passed"]]
        return {"version": version["id"], "model": version["model_name"], "gate": gate,
                "has_gate": bool(checks), "passed": not failures, "checks": checks, "failures": failures}

    # -- compare --------------------------------------------------------------------------------
    def compare(self, a_ref: str, b_ref: str) -> dict:
        """Two versions side by side: metrics (with delta b - a), params diff, quantization.

        Returns ``{"a": {...}, "b": {...}`` (id, model, run, dataset, created_at,
        chosen, parent_version, aliases), ``"metrics": {name: {"a", "b", "delta"}}``
        over the union of numeric version and run metrics (a side lacking a metric
        has None, as has the delta), ``"params": {"changed": {name: {"a", "b"}},
        "only_a": {...}, "only_b": {...}, "same": {...}}`` with nested params
        flattened (``split.seed``), ``"quantization": {"a": {...}, "b": {...}}``
        (chosen, reason, budget and the fp32/int8 report numbers), ``"same_dataset"``
        and ``"gate": {"a": check, "b": check}``.
        """
        with self._snapshot():
            sides = {}
            for side, ref in (("a", a_ref), ("b", b_ref)):
                v = self.get_version(ref)
                run = self.get_run(v["run_id"])
                sides[side] = (v, run, self.check_gate(v["id"]))
        (va, ra, ga), (vb, rb, gb) = sides["a"], sides["b"]
        ma = _numeric_metrics(va.get("metrics"), ra.get("metrics"))
        mb = _numeric_metrics(vb.get("metrics"), rb.get("metrics"))
        metrics = {}
        for name in sorted(set(ma) | set(mb)):
            a, b = ma.get(name), mb.get(name)
            metrics[name] = {"a": a, "b": b, "delta": (b - a) if a is not None and b is not None else None}
        pa, pb = _flatten(ra.get("params") or {}), _flatten(rb.get("params") or {})
        params: dict[str, dict] = {"changed": {}, "only_a": {}, "only_b": {}, "same": {}}
        for name in sorted(set(pa) | set(pb)):
            if name not in pb:
                params["only_a"][name] = pa[name]
            elif name not in pa:
                params["only_b"][name] = pb[name]
            elif pa[name] == pb[name]:
                params["same"][name] = pa[name]
            else:
                params["changed"][name] = {"a": pa[name], "b": pb[name]}

        def summary(v: dict, run: dict) -> dict:
            return {"id": v["id"], "model": v["model_name"], "run_id": run["id"],
                    "dataset_id": run["dataset_id"], "created_at": v["created_at"],
                    "chosen": v["chosen"], "parent_version": v.get("parent_version"),
                    "aliases": v.get("aliases", [])}

        def quant(v: dict) -> dict:
            q = v.get("quantization") or {}
            report = {k: val for k, val in (q.get("report") or {}).items() if _is_number(val)}
            return {"chosen": v["chosen"], "reason": q.get("reason", ""),
                    "budget_points": q.get("budget_points"), "report": report}

        return {"a": summary(va, ra), "b": summary(vb, rb), "metrics": metrics, "params": params,
                "quantization": {"a": quant(va), "b": quant(vb)},
                "same_dataset": ra["dataset_id"] == rb["dataset_id"], "gate": {"a": ga, "b": gb}}

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
        """Walk dataset -> run(s) -> version(s) -> bundles -> deployments from any link.

        ``ref`` is any of:

        * a dataset id (``ds-3fa1c09e77d2``) or sha256 (prefix of >= 8 hex digits):
          every run on the dataset and everything made from them;
        * a run id (``run-7``): every version the run produced;
        * a version ref (``iris:3``, ``iris`` for the latest, ``iris@production``);
        * a bundle sha256 (prefix of >= 8 hex digits): narrowed to that bundle;
        * a deployment id (``dep-12``) or the command id of a deploy/rollback:
          walks back from the deployment to its bundle, version, run and dataset.

        Returns::

            {"ref": ref, "kind": "dataset" | "run" | "version" | "bundle" | "deployment",
             "dataset": {...},
             "run": {...} (the run; for a dataset, its newest run or None),
             "runs": [{...run}, ...] (oldest first),
             "versions": [{...version, "bundles": [{...bundle, "deployments": [...]}],
                           "ancestors": [...], "descendants": [...]}],
             "deployments": [...every deployment above, newest first],
             "deployment": {...} (only for a deployment ref, else None)}

        ``ancestors`` follow ``parent_version`` up (nearest first) and
        ``descendants`` follow it down (breadth first): versions fine-tuned from
        this one, possibly on other datasets. Each is ``{"id", "parent_version",
        "run_id", "dataset_id", "dataset_sha256", "created_at"}``.
        """
        with self._snapshot():
            start = self._resolve_lineage_ref(str(ref).strip())
            tree = [self._version_tree(v, start["bundle"]) for v in start["versions"]]
            deployments = [d for v in tree for b in v["bundles"] for d in b["deployments"]]
            deployments.sort(key=lambda d: (d["created_at"], d["id"]), reverse=True)
            runs = start["runs"]
            return {
                "ref": ref, "kind": start["kind"], "dataset": start["dataset"],
                "run": runs[-1] if runs else None, "runs": runs, "versions": tree,
                "deployments": deployments, "deployment": start["deployment"],
            }

    def _resolve_lineage_ref(self, ref: str) -> dict:
        """Where a lineage walk starts: kind, dataset, runs, versions, bundle, deployment."""
        def start(kind: str, runs: list[dict], versions: list[dict], bundle: dict | None = None,
                  deployment: dict | None = None, dataset: dict | None = None) -> dict:
            if dataset is None:
                dataset = self.get_dataset(runs[0]["dataset_id"])
            return {"kind": kind, "dataset": dataset, "runs": runs, "versions": versions,
                    "bundle": bundle, "deployment": deployment}

        order = "model_name, CAST(version AS INTEGER)"
        if ref.startswith("run-"):
            run = self.get_run(ref)
            return start("run", [run], self._version_extras(self._rows("versions", "run_id = ?", [run["id"]], order)))
        deployment = self._first("deployments", "id = ? OR command_id = ?", [ref, ref])
        if deployment is not None:
            return self._deployment_start(deployment, start)
        if ref.lower().startswith("ds-"):
            return self._dataset_start(self.get_dataset(ref), start, order)
        if "@" not in ref and ":" not in ref and len(ref) >= MIN_PREFIX and _HEX.match(ref.lower()):
            bundle = self._unique_prefix("bundles", "sha256", ref.lower(), "bundle")
            dataset = self._unique_prefix("datasets", "sha256", ref.lower(), "dataset")
            if bundle is not None and dataset is not None:
                raise RegistryError(f"{ref!r} is the start of both a bundle and a dataset sha256; "
                                    f"give more hex digits or the dataset id ({dataset['id']})")
            if bundle is not None:
                version = self.get_version(bundle["version_id"])
                return start("bundle", [self.get_run(version["run_id"])], [version], bundle)
            if dataset is not None:
                return self._dataset_start(dataset, start, order)
        model = ref.partition("@")[0].rpartition(":")[0] or ref.partition("@")[0]
        if "@" in ref or ":" in ref or self._first("models", "name = ?", [model]) is not None:
            version = self.get_version(ref)
            return start("version", [self.get_run(version["run_id"])], [version])
        raise NotFoundError(
            f"{ref!r} names no dataset, run, version, bundle or deployment; use a dataset id (ds-...) "
            f"or sha256, a run id (run-7), a version (model:3, model for its latest, model@alias), "
            f"at least {MIN_PREFIX} hex digits of a bundle or dataset sha256, or a deployment "
            "(dep-12, or its command id)"
        )

    def _dataset_start(self, dataset: dict, start, order: str) -> dict:
        runs = self._rows("runs", "dataset_id = ?", [dataset["id"]],
                          "started_at, CAST(SUBSTR(id, 5) AS INTEGER)")
        versions: list[dict] = []
        if runs:
            marks = ", ".join("?" * len(runs))
            versions = self._version_extras(
                self._rows("versions", f"run_id IN ({marks})", [r["id"] for r in runs], order))
        return start("dataset", runs, versions, dataset=dataset)

    def _deployment_start(self, deployment: dict, start) -> dict:
        sha = deployment["bundle_sha256"] or deployment["target_sha256"]
        bundle = self._first("bundles", "sha256 = ?", [sha]) if sha else None
        if bundle is None:
            raise NotFoundError(
                f"deployment {deployment['id']} ({deployment['kind']} to {deployment['agent_id']}) names "
                f"bundle {str(sha)[:16]}…, which is not registered in this hub (a rollback to a bundle "
                "from elsewhere), so its lineage ends there"
            )
        version = self.get_version(bundle["version_id"])
        return start("deployment", [self.get_run(version["run_id"])], [version], bundle, deployment)

    def _version_tree(self, version: dict, only_bundle: dict | None) -> dict:
        bundles = [only_bundle] if only_bundle else self._rows(
            "bundles", "version_id = ?", [version["id"]], "created_at")
        return {**version, "bundles": [
            {**b, "deployments": self._rows("deployments", "target_sha256 = ?", [b["sha256"]],
                                            "created_at DESC")}
            for b in bundles
        ], "ancestors": self._ancestors(version), "descendants": self._descendants(version["id"])}

    def _link(self, version: dict) -> dict:
        run = self._first("runs", "id = ?", [version["run_id"]]) or {}
        dataset = self._first("datasets", "id = ?", [run.get("dataset_id")]) or {}
        return {"id": version["id"], "parent_version": version.get("parent_version"),
                "run_id": version["run_id"], "dataset_id": run.get("dataset_id"),
                "dataset_sha256": dataset.get("sha256"), "created_at": version["created_at"]}

    def _ancestors(self, version: dict) -> list[dict]:
        out, seen = [], {version["id"]}
        parent = version.get("parent_version")
        while parent and parent not in seen:
            seen.add(parent)
            row = self._first("versions", "id = ?", [parent])
            if row is None:
                break
            out.append(self._link(row))
            parent = row.get("parent_version")
        return out

    def _descendants(self, version_id: str) -> list[dict]:
        out, seen, frontier = [], {version_id}, [version_id]
        while frontier:
            marks = ", ".join("?" * len(frontier))
            children = [c for c in self._rows("versions", f"parent_version IN ({marks})", frontier,
                                              "created_at, model_name, CAST(version AS INTEGER)")
                        if c["id"] not in seen]
            seen.update(c["id"] for c in children)
            out.extend(self._link(c) for c in children)
            frontier = [c["id"] for c in children]
        return out
