"""Rollouts in the registry (schema 8): their state after every step, their audit, and the operator
commands waiting for the hub runtime.

:class:`RolloutStore` wraps a :class:`~edgeloop.hub.registry.Registry` (its connections and
transactions). The state machine's state is stored as JSON without its audit records
(``rollouts.state``); the audit records are appended to ``rollout_audit`` as they come, so a
step at 1,000 agents never rewrites thousands of them. :meth:`RolloutStore.load` puts the two
together again (``RolloutState.from_dict``): what a restarted hub runtime resumes from.

Operator commands (``rollout_requests``): a CLI, the GUI or a script adds a request
(:meth:`RolloutStore.request`); the hub runtime (:mod:`edgeloop.hub.runtime.rollouts`) takes the
pending ones in order (:meth:`RolloutStore.pending_requests`), carries them out and records the
outcome (:meth:`RolloutStore.finish_request`), which the requester waits for.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from edgeloop.hub.errors import NotFoundError
from edgeloop.hub.registry.fields import dumps, now
from edgeloop.hub.rollout.gates import Observation
from edgeloop.hub.rollout.state import ACTIVE, AgentRun, AuditRecord, RolloutState

REQUEST_COMMANDS = ("start", "pause", "resume", "approve", "abort")


_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(AgentRun))
_OBS_FIELDS = tuple(f.name for f in dataclasses.fields(Observation))


def run_dict(run: AgentRun) -> dict[str, Any]:
    """``run.to_dict()``, without ``dataclasses.asdict``'s deep copies (every field is a plain value or the
    flat observation; a test checks the two agree)."""
    d = {name: getattr(run, name) for name in _RUN_FIELDS}
    obs = run.observation
    if obs is not None:
        od = {name: getattr(obs, name) for name in _OBS_FIELDS}
        od["drift_flags"] = list(obs.drift_flags)
        d["observation"] = od
    return d


class RolloutStore:
    """Rollouts, their audit and pending operator commands in the registry ``registry``."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        # AgentRun -> its dict, by identity: a step shares the runs it did not change, so a save converts
        # only the changed ones (the runs are frozen; the entry holds the run, so its id is not reused)
        self._runs: dict[str, dict[int, tuple[AgentRun, dict[str, Any]]]] = {}  # per rollout

    def _state_doc(self, state: RolloutState) -> dict[str, Any]:
        """``state.to_dict()`` without its audit (kept in ``rollout_audit``), the unchanged runs not converted again."""
        doc = dataclasses.replace(state, audit=[], waves=[]).to_dict()
        cache = self._runs.get(state.rollout_id, {})
        seen: dict[int, tuple[AgentRun, dict[str, Any]]] = {}
        waves = []
        for w in state.waves:
            wd = dataclasses.replace(w, agents={}).to_dict()
            for run in w.agents.values():
                hit = cache.get(id(run))
                if hit is None or hit[0] is not run:
                    hit = (run, run_dict(run))
                seen[id(run)] = hit
                wd["agents"].append(hit[1])
            waves.append(wd)
        doc["waves"] = waves
        if state.terminal:
            self._runs.pop(state.rollout_id, None)
        else:
            self._runs[state.rollout_id] = seen
        return doc

    # --- rollouts --------------------------------------------------------------------------------
    def add(self, make: Callable[[str], RolloutState], *, by: str, override_reason: str | None = None
            ) -> RolloutState:
        """Allocate the next id (``ro-<n>``), build the state with ``make(id)`` and store it."""
        reg = self.registry
        with reg._write() as db:
            rid = f"ro-{reg._next_seq(db, 'rollouts', 'ro-')}"
            state = make(rid)
            p = state.plan
            db.table("rollouts").insert({
                "id": rid, "model": p.model, "version": p.version, "target": p.target, "status": state.status,
                "state": dumps(self._state_doc(state)), "summary": dumps(state.summary()), "created_by": by,
                "override_reason": override_reason, "created_at": state.created_at or now(),
                "updated_at": state.updated_at or now()})
            self._append_audit(db, rid, state.audit, 0)
            reg._audit(db, by, "rollout.create", rid, model=p.model, version=p.version, agents=p.target)
        return state

    def save(self, state: RolloutState) -> None:
        """Store ``state`` after a step: the row, and the audit records not stored yet."""
        reg = self.registry
        with reg._write() as db:
            row = db.execute("SELECT MAX(seq) FROM rollout_audit WHERE rollout_id = ?",
                             [state.rollout_id]).fetchone()
            stored = int(row[0] or 0)
            db.execute("UPDATE rollouts SET status = ?, state = ?, summary = ?, updated_at = ? WHERE id = ?",
                       [state.status, dumps(self._state_doc(state)), dumps(state.summary()), state.updated_at or now(),
                        state.rollout_id])
            self._append_audit(db, state.rollout_id, state.audit, stored)

    @staticmethod
    def _append_audit(db: Any, rid: str, audit: list[AuditRecord], after: int) -> None:
        rows = [(rid, r.seq, r.at, r.actor, r.event, r.from_status, r.to_status, r.what, r.why)
                for r in audit if r.seq > after]
        if rows:
            db.conn.executemany("INSERT INTO rollout_audit (rollout_id, seq, at, actor, event, from_status, "
                                "to_status, what, why) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def load(self, rollout_id: str) -> RolloutState:
        """The stored state with its whole audit (what a restarted runtime resumes from)."""
        row = self.get(rollout_id)
        doc = json.loads(row["state"])
        doc["audit"] = [{k: a[k] for k in ("seq", "at", "actor", "event", "from_status", "to_status", "what", "why")}
                        for a in self.audit(rollout_id)]
        return RolloutState.from_dict(doc)

    def get(self, rollout_id: str) -> dict:
        row = self.registry._first("rollouts", "id = ?", [rollout_id])
        if row is None:
            known = ", ".join(r["id"] for r in self.list_rollouts(limit=10)) or "none yet"
            raise NotFoundError(f"no rollout {rollout_id!r}; recent rollouts: {known} (`edgeloop rollout list`)")
        return row

    def audit(self, rollout_id: str, limit: int | None = None) -> list[dict]:
        """Audit records in order (the last ``limit`` of them)."""
        if limit is None:
            return self.registry._rows("rollout_audit", "rollout_id = ?", [rollout_id], "seq")
        rows = self.registry._rows("rollout_audit", "rollout_id = ?", [rollout_id], "seq DESC", limit)
        return rows[::-1]

    def list_rollouts(self, *, active_only: bool = False, limit: int | None = None) -> list[dict]:
        """Rollouts, newest first, without their state (``summary`` decoded); ``active_only``: those
        in progress or halted (what a hub runtime drives)."""
        where = f"status IN ({', '.join('?' for _ in ACTIVE)}, 'halted')" if active_only else None
        args = list(ACTIVE) if active_only else None
        rows = self.registry._db().table("rollouts").rows_where(
            where, args, order_by="created_at DESC, id DESC", limit=limit,
            select="id, model, version, target, status, summary, created_by, override_reason, created_at, "
                   "updated_at")
        out = []
        for r in rows:
            r["summary"] = json.loads(r["summary"]) if r.get("summary") else None
            out.append(r)
        return out

    # --- operator requests -------------------------------------------------------------------------
    def request(self, command: str, rollout_id: str | None, args: dict[str, Any], by: str) -> int:
        if command not in REQUEST_COMMANDS:
            raise ValueError(f"unknown rollout request {command!r}")
        with self.registry._write() as db:
            cur = db.conn.execute("INSERT INTO rollout_requests (rollout_id, command, args, by, created_at) "
                                  "VALUES (?, ?, ?, ?, ?)", [rollout_id, command, dumps(args), by, now()])
            return int(cur.lastrowid or 0)

    def pending_requests(self) -> list[dict]:
        rows = self.registry._rows("rollout_requests", "done_at IS NULL", [], "id")
        for r in rows:
            r["args"] = json.loads(r["args"])
        return rows

    def finish_request(self, request_id: int, ok: bool, result: dict[str, Any]) -> None:
        with self.registry._write() as db:
            db.execute("UPDATE rollout_requests SET done_at = ?, ok = ?, result = ? WHERE id = ?",
                       [now(), int(ok), dumps(result), request_id])

    def get_request(self, request_id: int) -> dict:
        row = self.registry._first("rollout_requests", "id = ?", [request_id])
        if row is None:
            raise NotFoundError(f"no rollout request {request_id}")
        row["args"] = json.loads(row["args"])
        row["result"] = json.loads(row["result"]) if row.get("result") else None
        return row


__all__ = ["RolloutStore", "REQUEST_COMMANDS", "run_dict"]
