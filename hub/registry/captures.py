"""Batches of field data captured by agents (opt-in, see :mod:`edgeloop.agent.capture`).

One row per batch the hub received whole and checked (table ``captures``, schema 7): its lineage
(agent, model, version, bundle, the time range of its requests), its row counts, the hub's copy
of its CSV (``path``, relative to the hub home) and the dataset its labelled rows were registered
as (``dataset_id``, None when too few rows carried a label: ``note`` says why).
"""

from __future__ import annotations

import json
from typing import Any

from edgeloop.hub.errors import NotFoundError
from edgeloop.hub.registry.catalog import Catalog
from edgeloop.hub.registry.fields import now


class Captures(Catalog):
    """Captured batches: record (idempotent by batch id), list, get, forget."""

    def add_capture(self, record: dict[str, Any], *, actor: str = "hub") -> dict:
        """Record a received batch (``record``: the columns of ``captures``; ``manifest`` a dict).
        A batch already recorded is returned unchanged (an agent sends a batch again until the broker
        acknowledged it)."""
        with self._write() as db:
            existing = self._first("captures", "batch_id = ?", [record["batch_id"]])
            if existing is not None:
                return _decoded(existing)
            row = {**record, "manifest": json.dumps(record.get("manifest") or {}, sort_keys=True),
                   "received_at": record.get("received_at") or now()}
            db.table("captures").insert(row)
            self._audit(db, actor, "capture.add", record["batch_id"], agent_id=record["agent_id"],
                        model=record["model"], version=record["version"], rows=record["rows"],
                        labelled_rows=record["labelled_rows"], dataset_id=record.get("dataset_id"))
        return self.get_capture(record["batch_id"])

    def has_capture(self, batch_id: str) -> bool:
        return self._first("captures", "batch_id = ?", [batch_id]) is not None

    def get_capture(self, batch_id: str) -> dict:
        """A batch by id, or by a unique prefix of at least 6 of its hex digits."""
        ref = str(batch_id).strip().lower()
        row = self._first("captures", "batch_id = ?", [ref])
        if row is None and len(ref) >= 6:
            rows = self._rows("captures", "batch_id LIKE ?", [ref + "%"], limit=2)
            row = rows[0] if len(rows) == 1 else None
        if row is None:
            raise NotFoundError(f"no captured batch {batch_id!r}; see `edgeloop capture list`")
        return _decoded(row)

    def list_captures(self, *, agent_id: str | None = None, model: str | None = None) -> list[dict]:
        """Captured batches, newest first; of one agent and/or one model."""
        given = {k: v for k, v in (("agent_id", agent_id), ("model", model)) if v is not None}
        where = " AND ".join(f"{k} = ?" for k in given) or None
        rows = self._rows("captures", where, list(given.values()) or None, "received_at DESC")
        return [_decoded(r) for r in rows]

    def delete_capture(self, batch_id: str, *, actor: str = "hub") -> dict:
        """Forget a batch (its row; the caller removes the files). Returns the row it was."""
        row = self.get_capture(batch_id)
        with self._write() as db:
            db.execute("DELETE FROM captures WHERE batch_id = ?", [row["batch_id"]])
            self._audit(db, actor, "capture.delete", row["batch_id"], agent_id=row["agent_id"])
        return row


def _decoded(row: dict) -> dict:
    if isinstance(row.get("manifest"), str):
        row["manifest"] = json.loads(row["manifest"])
    return row
