"""Device pre-flight results (table ``preflights``, schema 9): what each agent measured of a deployed
bundle's models on its own hardware and which one it serves (:mod:`edgeloop.agent.preflight`)."""

from __future__ import annotations

import json
from typing import Any

from edgeloop.agent.wire.messages import Event
from edgeloop.agent.wire.preflight import PreflightReport
from edgeloop.hub.registry.catalog import Catalog
from edgeloop.hub.registry.fields import now


class Preflights(Catalog):
    """Pre-flight reports: record (idempotent), list."""

    def add_preflight_from_event(self, ev: Event, *, actor: str | None = None) -> dict | None:
        """Record the report of a ``preflight`` event (its ``details``); None for another event. The same
        report again (QoS 1 redelivery) is returned unchanged. Raises MessageFormatError for a bad report."""
        if ev.event != "preflight":
            return None
        r = PreflightReport.from_dict(ev.details)
        with self._write() as db:
            found = self._first("preflights", "agent_id = ? AND bundle_sha256 = ? AND measured_at = ?",
                                [ev.agent_id, r.bundle_sha256, r.measured_at])
            if found is not None:
                return _decoded(found)
            row = {"agent_id": ev.agent_id, "model": r.model, "version": r.version, "bundle_sha256": r.bundle_sha256,
                   "command_id": ev.command_id, "pick": r.pick, "hub_pick": r.hub_pick, "code": r.code,
                   "reason": r.reason, "memory_limit_mb": r.memory_limit_mb,
                   "report": json.dumps(r.to_dict(), sort_keys=True), "measured_at": r.measured_at,
                   "received_at": now()}
            rid = db.table("preflights").insert(row).last_pk
            self._audit(db, actor or f"agent:{ev.agent_id}", "preflight.report", ev.agent_id, model=r.model,
                        version=r.version, bundle_sha256=r.bundle_sha256, pick=r.pick, hub_pick=r.hub_pick,
                        code=r.code)
        return _decoded({**row, "id": rid})

    def list_preflights(self, *, agent_id: str | None = None, model: str | None = None,
                        version: str | None = None, latest: bool = False) -> list[dict]:
        """Pre-flight reports, newest first; of one agent and/or one model (and version). With ``latest``,
        only the newest of each agent and bundle."""
        given = {k: v for k, v in (("agent_id", agent_id), ("model", model), ("version", version)) if v is not None}
        where = " AND ".join(f"{k} = ?" for k in given) or None
        rows = [_decoded(r) for r in self._rows("preflights", where, list(given.values()) or None,
                                                "measured_at DESC, id DESC")]
        if not latest:
            return rows
        newest: dict[tuple[str, str], dict] = {}
        for r in rows:  # newest first: the first of each agent and bundle
            newest.setdefault((r["agent_id"], r["bundle_sha256"]), r)
        return list(newest.values())


def _decoded(row: dict[str, Any]) -> dict:
    if isinstance(row.get("report"), str):
        row["report"] = json.loads(row["report"])
    row["ok"] = row.get("pick") is not None
    return row
