"""Shadow comparisons reported by agents (table ``shadow_reports``, schema 10).

One row per shadow run: a shadow version compared with one live version on one agent since the
run started. Each :class:`~edgeloop.agent.wire.shadow.ShadowReport` holds the whole comparison so
far, so the row keeps the newest one (the highest ``seq``); a re-delivered or older report
changes nothing.
"""

from __future__ import annotations

import json

from edgeloop.agent.wire.shadow import ShadowReport
from edgeloop.hub.registry.db import RegistryDatabase
from edgeloop.hub.registry.fields import now

_KEY = "agent_id = ? AND bundle_sha256 = ? AND live_sha256 = ? AND started_at = ?"


class ShadowReports(RegistryDatabase):
    """Shadow runs: record the newest report of each, read the latest."""

    def record_shadow_report(self, report: ShadowReport) -> bool:
        """Keep ``report`` as its run's newest (the fleet's intake); False when a newer one is stored."""
        key = [report.agent_id, report.bundle_sha256, report.live_sha256, report.started_at]
        row = {"agent_id": report.agent_id, "model": report.model, "version": report.version,
               "bundle_sha256": report.bundle_sha256, "live_version": report.live_version,
               "live_sha256": report.live_sha256, "task": report.task, "started_at": report.started_at,
               "at": report.at, "seq": report.seq, "requests": report.requests, "agreement": report.agreement,
               "errors": report.errors, "dropped": report.dropped, "final": int(report.final),
               "report": json.dumps(report.to_dict(), sort_keys=True), "received_at": now()}
        with self._write() as db:
            old = db.execute(f"SELECT id, seq FROM shadow_reports WHERE {_KEY}", key).fetchone()
            if old is None:
                db.table("shadow_reports").insert(row)
                self._audit(db, f"agent:{report.agent_id}", "shadow.start", report.agent_id, model=report.model,
                            version=report.version, live_version=report.live_version,
                            bundle_sha256=report.bundle_sha256)
            elif report.seq > old[1]:
                db.table("shadow_reports").update(old[0], row)
            else:
                return False
            if report.final:
                self._audit(db, f"agent:{report.agent_id}", "shadow.end", report.agent_id, model=report.model,
                            version=report.version, live_version=report.live_version, requests=report.requests,
                            agreement=report.agreement, errors=report.errors)
        return True

    def latest_shadow(self, agent_id: str, model: str | None = None, version: str | None = None) -> dict | None:
        """The newest shadow run of ``agent_id`` (of ``model`` and shadow ``version``, if given) with its report
        decoded; None if none."""
        where, args = "agent_id = ?", [agent_id]
        for column, value in (("model", model), ("version", version)):
            if value is not None:
                where, args = f"{where} AND {column} = ?", [*args, value]
        rows = self._rows("shadow_reports", where, args, "at DESC, id DESC", limit=1)
        return _decoded(rows[0]) if rows else None

    def list_shadow_reports(self, agent_id: str | None = None, *, model: str | None = None,
                            limit: int | None = 100) -> list[dict]:
        """Shadow runs, newest first; of one agent and/or one model."""
        given = {k: v for k, v in (("agent_id", agent_id), ("model", model)) if v is not None}
        where = " AND ".join(f"{k} = ?" for k in given) or None
        rows = self._rows("shadow_reports", where, list(given.values()) or None, "at DESC, id DESC", limit=limit)
        return [_decoded(r) for r in rows]


def _decoded(row: dict) -> dict:
    return {**row, "final": bool(row["final"]), "report": json.loads(row["report"])}


__all__ = ["ShadowReports"]
