"""The registry's schema migrations.

The ``meta`` table holds ``schema_version``; :data:`MIGRATIONS` is the ordered list
of migrations (migration *n* takes the schema from version *n-1* to *n*, inside the
write transaction that records the new version). Released migrations are never
edited -- registries on users' disks were built by them -- a change of schema is a
new migration appended to the list (tests/test_registry_factory.py migrates a frozen
schema-1 file to prove it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlite_utils import Database


def _m001_initial(db: Database) -> None:
    """Version 1: every table of the registry."""
    db.table("datasets").create(
        {"id": str, "sha256": str, "name": str, "source": str, "rows": int,
         "features": str, "labels": str, "created_at": float},
        pk="id", not_null={"sha256", "name", "source", "rows", "features", "created_at"},
    )
    db.table("datasets").create_index(["sha256"], unique=True)
    db.table("runs").create(
        {"id": str, "dataset_id": str, "model_name": str, "params": str, "metrics": str,
         "history": str, "code_version": str, "library_versions": str,
         "started_at": float, "finished_at": float, "status": str},
        pk="id", foreign_keys=[("dataset_id", "datasets", "id")],
        not_null={"dataset_id", "model_name", "params", "started_at", "status"},
    )
    db.table("runs").create_index(["dataset_id"])
    db.table("models").create(
        {"name": str, "task": str, "created_at": float}, pk="name",
        not_null={"task", "created_at"},
    )
    db.table("versions").create(
        {"id": str, "model_name": str, "version": str, "run_id": str, "onnx_sha256": str,
         "int8_sha256": str, "chosen": str, "quantization": str, "metrics": str,
         "created_at": float, "parent_version": str},
        pk="id",
        foreign_keys=[("model_name", "models", "name"), ("run_id", "runs", "id"),
                      ("parent_version", "versions", "id")],
        not_null={"model_name", "version", "run_id", "onnx_sha256", "chosen", "created_at"},
    )
    db.table("versions").create_index(["model_name", "version"], unique=True)
    db.table("versions").create_index(["run_id"])
    db.table("bundles").create(
        {"sha256": str, "version_id": str, "path": str, "size": int, "key_id": str,
         "created_at": float},
        pk="sha256", foreign_keys=[("version_id", "versions", "id")],
        not_null={"version_id", "path", "size", "key_id", "created_at"},
    )
    db.table("bundles").create_index(["version_id"])
    db.table("deployments").create(
        {"id": str, "bundle_sha256": str, "target_sha256": str, "agent_id": str, "kind": str,
         "command_id": str, "counter": int, "status": str, "detail": str,
         "created_at": float, "updated_at": float},
        pk="id", foreign_keys=[("bundle_sha256", "bundles", "sha256")],
        not_null={"agent_id", "kind", "command_id", "counter", "status", "detail",
                  "created_at", "updated_at"},
        defaults={"detail": ""},
    )
    db.table("deployments").create_index(["command_id"], unique=True)
    db.table("deployments").create_index(["agent_id"])
    db.table("deployments").create_index(["bundle_sha256"])
    db.table("deployments").create_index(["target_sha256"])
    db.table("agents").create(
        {"agent_id": str, "status": str, "session": int, "agent_version": str, "host": str,
         "http_url": str, "active_model": str, "active_version": str, "active_bundle": str,
         "started_at": float, "last_seen": float, "state": str},
        pk="agent_id", not_null={"status"},
    )
    db.table("drift_reports").create(
        {"id": int, "agent_id": str, "model": str, "version": str, "bundle_sha256": str,
         "window": int, "rows": int, "started_at": float, "ended_at": float,
         "drifted_features": str, "report": str, "received_at": float},
        pk="id",
        not_null={"agent_id", "model", "version", "bundle_sha256", "window", "rows",
                  "started_at", "ended_at", "drifted_features", "report", "received_at"},
    )
    # A report re-delivered by MQTT (QoS 1) is the same agent, bundle, window and start.
    db.table("drift_reports").create_index(
        ["agent_id", "bundle_sha256", "window", "started_at"], unique=True
    )
    db.table("drift_reports").create_index(["agent_id", "model", "version"])
    db.table("audit").create(
        {"id": int, "at": float, "at_iso": str, "actor": str, "action": str, "target": str,
         "detail": str},
        pk="id", not_null={"at", "at_iso", "actor", "action", "target", "detail"},
    )
    db.table("audit").create_index(["at"])
    db.table("counters").create({"key_id": str, "value": int}, pk="key_id", not_null={"value"})


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
    db.table("models").add_column("gate", str)
    db.table("aliases").create(
        {"model_name": str, "alias": str, "version_id": str, "updated_at": float,
         "updated_by": str, "reason": str},
        pk=("model_name", "alias"),
        foreign_keys=[("model_name", "models", "name"), ("version_id", "versions", "id")],
        not_null={"version_id", "updated_at", "updated_by", "reason"}, defaults={"reason": ""},
    )
    db.table("aliases").create_index(["version_id"])
    db.table("alias_history").create(
        {"id": int, "model_name": str, "alias": str, "version_id": str,
         "previous_version_id": str, "actor": str, "reason": str, "override_gate": int,
         "gate_check": str, "at": float, "at_iso": str},
        pk="id",
        foreign_keys=[("model_name", "models", "name"), ("version_id", "versions", "id"),
                      ("previous_version_id", "versions", "id")],
        not_null={"model_name", "alias", "actor", "reason", "override_gate", "at", "at_iso"},
        defaults={"reason": "", "override_gate": 0},
    )
    db.table("alias_history").create_index(["model_name", "alias"])
    db.table("versions").create_index(["parent_version"])


def _m003_live_fleet(db: Database) -> None:
    """Version 3: fleet membership, offline tracking and the hub runtime's heartbeat.

    * ``agents.member``: 1 when the agent's state lists this hub's key id among the keys
      it trusts, 0 when it does not (a foreign agent on a shared broker: kept so that
      ``edgeloop fleet --all`` can list it, never audited), NULL when no hub decided yet
      (rows of older registries, rows written directly through the registry API);
    * ``agents.offline_since``: when the agent was last seen going offline (NULL while
      online); ``agents.down``: 1 once it stayed offline past the grace period and that
      was audited (``agent.offline``), so its return is audited too (``agent.online``);
    * ``agents.first_seen``: when this registry first recorded the agent;
    * ``listeners``: one row per hub runtime client id (one per hub home): its process,
      broker and topic root, when it started, since when it is connected, its last
      heartbeat and when it stopped -- what CLI reads print as the freshness of the view.
    """
    agents = db.table("agents")
    agents.add_column("member", int)
    agents.add_column("offline_since", float)
    agents.add_column("down", int, not_null_default=0)
    agents.add_column("first_seen", float)
    db.execute("UPDATE agents SET first_seen = last_seen")
    agents.create_index(["member"])
    db.table("listeners").create(
        {"id": str, "pid": int, "host": str, "broker": str, "topic_root": str, "heartbeat_s": float,
         "started_at": float, "heartbeat_at": float, "connected_since": float, "last_listened_at": float,
         "stopped_at": float},
        pk="id", not_null={"pid", "host", "broker", "topic_root", "heartbeat_s", "started_at", "heartbeat_at"},
    )


def _m004_evaluations(db: Database) -> None:
    """Version 4: dataset warnings and evaluations of shipped artifacts on separate test data.

    * ``datasets.warnings``: JSON list of findings that do not refuse a dataset (identical
      or constant columns, fewer rows than recommended...), each ``{"rule", "detail", ...}``;
      NULL for none (and for rows of older registries);
    * ``evaluations``: one row per scoring of a version's shipped artifact (``artifact``
      ``fp32`` or ``int8``) with onnxruntime on a dataset, linked to the dataset by its
      content hash (``dataset_id`` when the dataset is registered here), with the number of
      rows scored and the metrics (JSON) -- append only: the newest per (version,
      dataset, artifact) is what gates read.
    """
    db.table("datasets").add_column("warnings", str)
    db.table("evaluations").create(
        {"id": int, "version_id": str, "dataset_id": str, "dataset_sha256": str, "dataset_name": str,
         "artifact": str, "rows": int, "metrics": str, "created_at": float, "actor": str},
        pk="id",
        foreign_keys=[("version_id", "versions", "id"), ("dataset_id", "datasets", "id")],
        not_null={"version_id", "dataset_sha256", "artifact", "rows", "metrics", "created_at", "actor"},
    )
    db.table("evaluations").create_index(["version_id", "dataset_sha256", "artifact"])


def _m005_agent_keys(db: Database) -> None:
    """Version 5: agents' report keys, and bundle paths relative to the hub home.

    * ``agent_keys``: the Ed25519 public key (raw, base64) each agent signs its reports with,
      pinned once -- by the operator at enrollment (``source`` ``enrolled``) or from the
      agent's first signed state (``first_use``); reports not signed by it are refused;
    * ``bundles.path``: relative to the folder of the registry file (the hub home), so a copied
      home reads its own files; absolute paths under that folder are rewritten, others
      (bundles kept elsewhere) stay as they are;
    * ``deployments.expires_at``: when the deployment's signed command expires -- a deployment
      still pending then is settled from the agent's reported state; pending rows of older
      registries get an hour from their creation.
    """
    db.table("deployments").add_column("expires_at", float)
    db.execute("UPDATE deployments SET expires_at = created_at + 3600 WHERE status = 'pending'")
    db.table("agent_keys").create(
        {"agent_id": str, "keyid": str, "public_key": str, "source": str, "pinned_at": float, "actor": str},
        pk="agent_id", not_null={"keyid", "public_key", "source", "pinned_at", "actor"},
    )
    home = registry_folder(db)
    if home is None:
        return
    for sha, path in db.execute("SELECT sha256, path FROM bundles").fetchall():
        rel = relative_to_home(path, home)
        if rel != path:
            db.execute("UPDATE bundles SET path = ? WHERE sha256 = ?", [rel, sha])


def registry_folder(db: Database) -> Path | None:
    """The folder of the registry's file (the hub home); None for an in-memory database."""
    for _, name, file in db.execute("PRAGMA database_list").fetchall():
        if name == "main" and file:
            return Path(file).resolve().parent
    return None


def relative_to_home(path: str, home: Path) -> str:
    """``path`` relative to ``home`` (POSIX separators) when it lies under it, else unchanged."""
    p = Path(path)
    if not p.is_absolute():
        return path
    try:
        return p.resolve().relative_to(home).as_posix()
    except ValueError:
        return path


def _m006_agent_tags(db: Database) -> None:
    """Version 6: agents' tags (what rollouts target, e.g. ``site=plant-a,hw=pi5``).

    * ``agents.tags``: JSON object of the tags the agent's state carries (its config's ``[tags]``);
      NULL for agents that reported none (and rows of older registries);
    * ``agents.hub_tags``: JSON object of the operator's changes made on the hub
      (``edgeloop agent tag``): ``name: value`` sets or overrides a tag, ``name: null`` removes
      the agent's own; NULL for none. The tags shown and targeted are the two merged.
    """
    agents = db.table("agents")
    agents.add_column("tags", str)
    agents.add_column("hub_tags", str)


def _m007_captures(db: Database) -> None:
    """Version 7: batches of field data captured by agents (opt-in; ``edgeloop capture``).

    ``captures``: one row per batch received whole (sha256 checked against its manifest, signed by
    the agent): its lineage -- agent, model, version, bundle, time range of the requests -- the rows,
    labelled rows, rows served while it was sampled, where the hub keeps the batch's CSV
    (``path``, relative to the hub home) and the dataset its labelled rows were registered as
    (``dataset_id``; NULL when too few rows carried a label, the reason in ``note``).
    """
    db.table("captures").create(
        {"batch_id": str, "agent_id": str, "model": str, "version": str, "bundle_sha256": str, "task": str,
         "rows": int, "labelled_rows": int, "seen_rows": int, "first_at": float, "last_at": float,
         "created_at": float, "received_at": float, "sha256": str, "size": int, "path": str,
         "dataset_id": str, "note": str, "manifest": str},
        pk="batch_id", foreign_keys=[("dataset_id", "datasets", "id")],
        not_null={"agent_id", "model", "version", "rows", "labelled_rows", "received_at", "sha256", "path"},
    )
    db.table("captures").create_index(["agent_id", "model", "received_at"])


def _m008_rollouts(db: Database) -> None:
    """Version 8: rollouts with quality gates (hub/registry/rollouts.py, docs/rollouts.md).

    * ``rollouts``: one row per rollout: its id (``ro-<n>``), model, version, target and status (as
      columns, for listing), the state machine's state as JSON without its audit (``state``), the
      progress summary (``summary``), who started it, the gate override reason, and when;
    * ``rollout_audit``: the state's audit records, appended (never rewritten) after every step;
    * ``rollout_requests``: operator commands (start, pause, resume, approve, abort) waiting for the
      hub runtime, which carries them out and records the result (``done_at``, ``ok``, ``result``).
    """
    db.table("rollouts").create(
        {"id": str, "model": str, "version": str, "target": str, "status": str, "state": str, "summary": str,
         "created_by": str, "override_reason": str, "created_at": float, "updated_at": float},
        pk="id", not_null={"model", "version", "target", "status", "state", "created_at", "updated_at"},
    )
    db.table("rollouts").create_index(["status"])
    db.table("rollout_audit").create(
        {"rollout_id": str, "seq": int, "at": float, "actor": str, "event": str, "from_status": str,
         "to_status": str, "what": str, "why": str},
        pk=("rollout_id", "seq"), foreign_keys=[("rollout_id", "rollouts", "id")],
    )
    db.table("rollout_requests").create(
        {"id": int, "rollout_id": str, "command": str, "args": str, "by": str, "created_at": float,
         "done_at": float, "ok": int, "result": str},
        pk="id", not_null={"command", "args", "by", "created_at"},
    )
    db.table("rollout_requests").create_index(["done_at"])


def _m009_preflight(db: Database) -> None:
    """Version 9: device pre-flight results (``edgeloop preflight``; agent/wire/preflight.py).

    ``preflights``: one row per ``preflight`` event an agent sent for a deploy (unique by agent, bundle and
    the time it measured): the model, version and bundle, the device's ``pick`` (NULL: refused, ``code`` says
    why), the hub's pick, the reason, the deploy's ``memory_limit_mb``, and ``report`` (the whole
    PreflightReport as JSON: every model's load result, unsupported operators, p50/p99 at batch 1 and memory).
    """
    db.table("preflights").create(
        {"id": int, "agent_id": str, "model": str, "version": str, "bundle_sha256": str, "command_id": str,
         "pick": str, "hub_pick": str, "code": str, "reason": str, "memory_limit_mb": int, "report": str,
         "measured_at": float, "received_at": float},
        pk="id", not_null={"agent_id", "model", "version", "bundle_sha256", "hub_pick", "code", "report",
                           "measured_at", "received_at"},
    )
    db.table("preflights").create_index(["agent_id", "bundle_sha256", "measured_at"], unique=True)
    db.table("preflights").create_index(["model", "version"])


def _m010_shadow(db: Database) -> None:
    """Version 10: shadow comparisons (``edgeloop shadow``; agent/wire/shadow.py).

    ``shadow_reports``: one row per shadow run -- a shadow version compared with one live version on
    one agent since ``started_at`` -- holding its newest report (each report carries the whole
    comparison, so a newer ``seq`` replaces the row's figures): requests, agreement, errors, dropped,
    ``final`` once the shadow stopped, and the report itself (JSON: confusion or error distribution,
    latencies of both versions).
    """
    db.table("shadow_reports").create(
        {"id": int, "agent_id": str, "model": str, "version": str, "bundle_sha256": str, "live_version": str,
         "live_sha256": str, "task": str, "started_at": float, "at": float, "seq": int, "requests": int,
         "agreement": float, "errors": int, "dropped": int, "final": int, "report": str, "received_at": float},
        pk="id", not_null={"agent_id", "model", "version", "bundle_sha256", "started_at", "seq", "report"},
    )
    db.table("shadow_reports").create_index(["agent_id", "bundle_sha256", "live_sha256", "started_at"], unique=True)
    db.table("shadow_reports").create_index(["agent_id", "model", "at"])


# Append only: never edit a released migration, add a new one.
MIGRATIONS: list[Callable[[Database], None]] = [_m001_initial, _m002_model_factory, _m003_live_fleet,
                                                _m004_evaluations, _m005_agent_keys, _m006_agent_tags,
                                                _m007_captures, _m008_rollouts, _m009_preflight, _m010_shadow]
SCHEMA_VERSION = len(MIGRATIONS)
