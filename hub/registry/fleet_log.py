"""What happened in the fleet: signed bundles, deploy/rollback commands and their
outcome, and the drift reports agents send (the agents themselves: :mod:`.agents`).

Ids: bundles by their sha256, deployments ``dep-<n>`` (also unique by command id),
drift reports by an integer. A deployment row keeps
``target_sha256`` (the sha256 its command names) and ``bundle_sha256`` (the foreign
key to ``bundles``, None when that bundle is not registered here). Agent-originated
changes are audited as ``agent:<agent_id>``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edgeloop.agent.wire.messages import DriftReport, Event
from edgeloop.hub.errors import NotFoundError, RegistryError
from edgeloop.hub.registry.catalog import Catalog
from edgeloop.hub.registry.db import inserted_id
from edgeloop.hub.registry.fields import HEX, MIN_PREFIX, check_choice, check_sha256, dumps, now
from edgeloop.hub.registry.migrations import relative_to_home

log = logging.getLogger(__name__)

DEPLOY_KINDS = ("deploy", "rollback")
DEPLOY_STATUSES = ("pending", "installed", "failed", "refused")
_DRIFT_KEY = "agent_id = ? AND bundle_sha256 = ? AND window = ? AND started_at = ?"


def _status_from_event(event: Event) -> str | None:
    """The deployment status an agent event implies, or None if it implies none."""
    if event.event == "command_result":
        return None if event.ok else "refused"
    if event.event in ("install_result", "rollback_result"):
        return "installed" if event.ok else "failed"
    if event.event == "error" and not event.ok:
        return "failed"
    return None


class FleetLog(Catalog):
    """Bundles, deployments and drift reports."""

    # -- bundles ------------------------------------------------------------------------------
    def add_bundle(
        self, sha256: str, version: str, path: Path | str, size: int, key_id: str,
        *, actor: str = "hub",
    ) -> dict:
        """Record a signed bundle of ``version`` (any get_version ref); idempotent by sha256."""
        sha = check_sha256(sha256, "bundle sha256")
        with self._write() as db:
            version_id = self.get_version(version)["id"]
            existing = self._first("bundles", "sha256 = ?", [sha])
            if existing is not None:
                if existing["version_id"] != version_id:
                    raise RegistryError(
                        f"bundle {sha[:12]} is already registered for {existing['version_id']}, "
                        f"not {version_id}"
                    )
                return self._bundle_row(existing)
            db.table("bundles").insert({
                "sha256": sha, "version_id": version_id, "path": self._home_relative(path), "size": int(size),
                "key_id": key_id, "created_at": now(),
            })
            self._audit(db, actor, "bundle.add", sha, version_id=version_id, size=int(size),
                        key_id=key_id)
        return self.get_bundle(sha)

    def get_bundle(self, ref: str) -> dict:
        """A bundle by sha256 or a unique prefix of at least 8 hex digits."""
        prefix = str(ref).strip().lower()
        if len(prefix) < MIN_PREFIX or not HEX.match(prefix):
            raise NotFoundError(
                f"{ref!r} does not name a bundle: give its sha256 or at least {MIN_PREFIX} hex digits of it"
            )
        row = self._unique_prefix("bundles", "sha256", prefix, "bundle")
        if row is None:
            raise NotFoundError(f"no bundle with sha256 {prefix}...; see list_bundles()")
        return self._bundle_row(row)

    def list_bundles(self, version: str | None = None) -> list[dict]:
        """Newest first; optionally only the bundles of one version (any get_version ref)."""
        if version is None:
            return [self._bundle_row(r) for r in self._rows("bundles", order_by="created_at DESC")]
        version_id = self.get_version(version)["id"]
        return [self._bundle_row(r) for r in self._rows("bundles", "version_id = ?", [version_id], "created_at DESC")]

    def _home_relative(self, path: Path | str) -> str:
        """How a bundle path is stored: relative to the registry's folder (the hub home) when under it."""
        return relative_to_home(str(path), self.path.resolve().parent)

    def _bundle_row(self, row: dict) -> dict:
        """A bundle row as read: its ``path`` absolute, a stored relative path taken from this
        registry's folder (so a copied hub home reads its own files)."""
        path = Path(row["path"])
        return row if path.is_absolute() else {**row, "path": str(self.path.resolve().parent / path)}

    # -- deployments ---------------------------------------------------------------------------
    def add_deployment(
        self, bundle_sha256: str | None, agent_id: str, kind: str, command_id: str, counter: int,
        *, status: str = "pending", detail: str = "", actor: str = "hub", expires_at: float | None = None,
    ) -> dict:
        """Record a deploy/rollback command sent to ``agent_id`` (``expires_at``: when its signed
        command expires; see :meth:`settle_expired_deployments`).

        ``target_sha256`` is always the full sha256 the command names.
        ``bundle_sha256`` links to the registered bundle (foreign key); it is None
        when the bundle is not in this registry (e.g. a rollback to a bundle an
        agent got elsewhere) -- such deployments are still recorded and audited.
        A prefix (>= 8 hex digits) must name a registered bundle. ``bundle_sha256``
        may itself be None only for a rollback.
        """
        check_choice(kind, DEPLOY_KINDS, "deployment kind")
        check_choice(status, DEPLOY_STATUSES, "deployment status")
        if bundle_sha256 is None and kind == "deploy":
            raise RegistryError("a deploy needs the bundle's sha256")
        with self._write() as db:
            target, registered = self._deployment_target(bundle_sha256)
            if self._first("deployments", "command_id = ?", [command_id]) is not None:
                raise RegistryError(f"command {command_id} is already recorded; use a new command id")
            dep_id = f"dep-{self._next_seq(db, 'deployments', 'dep-')}"
            at = now()
            db.table("deployments").insert({
                "id": dep_id, "bundle_sha256": target if registered else None,
                "target_sha256": target, "agent_id": agent_id, "kind": kind,
                "command_id": command_id, "counter": int(counter), "status": status,
                "detail": detail, "created_at": at, "updated_at": at, "expires_at": expires_at,
            })
            self._audit(db, actor, kind, agent_id, deployment=dep_id, bundle_sha256=target,
                        registered=registered, command_id=command_id, counter=int(counter))
        return self.get_deployment(command_id)

    def _deployment_target(self, ref: str | None) -> tuple[str | None, bool]:
        """(full sha256 or None, whether it is a registered bundle)."""
        if ref is None:
            return None, False
        text = str(ref).strip().lower()
        if len(text) == 64 and HEX.match(text):
            return text, self._first("bundles", "sha256 = ?", [text]) is not None
        return self.get_bundle(text)["sha256"], True

    def update_deployment_status(
        self, command_id: str, status: str, detail: str = "", *, actor: str = "hub"
    ) -> dict:
        """Set the status of the deployment made by ``command_id`` (e.g. from an agent event)."""
        check_choice(status, DEPLOY_STATUSES, "deployment status")
        with self._write() as db:
            dep = self.get_deployment(command_id)
            db.table("deployments").update(dep["id"], {"status": status, "detail": detail,
                                                       "updated_at": now()})
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
        if dep["agent_id"] != event.agent_id:
            log.warning("agent %s reported on command %s, which was sent to %s: ignored", event.agent_id,
                        event.command_id, dep["agent_id"])
            return None
        if status == "refused" and dep["status"] != "pending":
            # a duplicate or replay of a command that already settled: record it, keep the outcome
            if not self._recorded_refusal(dep["agent_id"], event):
                self.audit(f"agent:{event.agent_id}", "command.refused_again", dep["agent_id"],
                           command_id=event.command_id, code=event.code, message=event.message, at=event.at)
            return None
        if dep["status"] == status:
            return None  # the same event again (QoS 1 redelivery, or a second hub process heard it too)
        detail = event.message if event.ok else f"{event.code}: {event.message}".rstrip(": ")
        return self.update_deployment_status(
            event.command_id, status, detail, actor=f"agent:{event.agent_id}"
        )

    def settle_expired_deployments(self, *, agent_id: str | None = None, at: float | None = None) -> list[dict]:
        """Settle every deployment still pending after its command expired (the agent can no longer
        act on it: its install result was lost, or whoever sent it died) from the agent's last
        reported state: ``installed`` when that state has the target active, else ``failed``.
        Optionally only ``agent_id``'s. Returns the settled rows."""
        at = now() if at is None else at
        sql = ("SELECT d.command_id, d.target_sha256, a.active_bundle, a.state FROM deployments d "
               "LEFT JOIN agents a ON a.agent_id = d.agent_id "
               "WHERE d.status = 'pending' AND d.expires_at IS NOT NULL AND d.expires_at <= ?")
        args: list = [at]
        if agent_id is not None:
            sql += " AND d.agent_id = ?"
            args.append(agent_id)
        settled = []
        with self._write() as db:
            for command_id, target, active, state in db.execute(sql, args).fetchall():
                if target in _active_bundles(active, state):
                    status, detail = "installed", "settled from the agent's state: the target bundle is active"
                else:
                    status = "failed"
                    detail = (f"expired: no result before the command expired; the agent reports "
                              f"{'bundle ' + active[:12] if active else 'no bundle'} active")
                settled.append(self.update_deployment_status(command_id, status, detail, actor="hub"))
        return settled

    def _recorded_refusal(self, agent_id: str, event: Event) -> bool:
        """Whether this very refusal (same command, same time on the agent) is audited already."""
        row = self._db().execute(
            "SELECT 1 FROM audit WHERE action = 'command.refused_again' AND target = ? "
            "AND json_extract(detail, '$.command_id') = ? AND json_extract(detail, '$.at') = ? LIMIT 1",
            [agent_id, event.command_id, event.at]).fetchone()
        return row is not None

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

    # -- drift --------------------------------------------------------------------------------
    def add_drift_report(self, report: DriftReport) -> dict:
        """Store one drift window; a re-delivered report is stored once. Returns the row."""
        row_id = self.record_drift_report(report)
        if row_id is None:
            key = [report.agent_id, report.bundle_sha256, report.window, report.started_at]
            return self._existing("drift_reports", _DRIFT_KEY, key)
        return self._existing("drift_reports", "id = ?", [row_id])

    def record_drift_report(self, report: DriftReport) -> int | None:
        """:meth:`add_drift_report` without reading the row back (the fleet's intake): the new
        row's id, None when this window was stored already."""
        key = [report.agent_id, report.bundle_sha256, report.window, report.started_at]
        with self._write() as db:
            if db.execute(f"SELECT 1 FROM drift_reports WHERE {_DRIFT_KEY} LIMIT 1", key).fetchone():
                return None
            drifted = report.drifted_features
            table = db.table("drift_reports").insert({
                "agent_id": report.agent_id, "model": report.model, "version": report.version,
                "bundle_sha256": report.bundle_sha256, "window": report.window,
                "rows": report.rows, "started_at": report.started_at,
                "ended_at": report.ended_at, "drifted_features": dumps(drifted),
                "report": dumps(report.to_dict()), "received_at": now(),
            })
            row_id = inserted_id(table)
            if drifted:
                self._audit(db, f"agent:{report.agent_id}", "drift.detected", report.agent_id,
                            model=report.model, version=report.version, window=report.window,
                            features=drifted, report_id=row_id)
        return row_id

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



def _active_bundles(active: str | None, state: str | None) -> set[str]:
    """Every bundle an agent's last state has active: one per model it serves (``models``), or its
    ``active`` one (an older agent's state)."""
    try:
        models = json.loads(state).get("models") if state else None
    except (ValueError, AttributeError):
        models = None
    found = {m.get("bundle_sha256") for m in models if isinstance(m, dict)} if isinstance(models, list) else set()
    return {b for b in found | {active} if b}
