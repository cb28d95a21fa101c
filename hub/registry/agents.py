"""The agents a hub has heard of: their last reported state and status, whether they
belong to this hub's fleet, and the audit of the changes that matter.

Membership (``agents.member``): 1 when the agent's retained state lists this hub's key
id among the keys it trusts, 0 when it does not (a *foreign* agent on a shared broker:
its row is kept so that ``edgeloop fleet --all`` can list it, but nothing about it is
audited), NULL when no hub decided it (rows of registries older than schema 3, rows
written through this API without ``member=``). Member and undecided rows are listed.

What is audited (routine reconnects are not -- an agent that drops off the broker and
returns within the grace period leaves no audit row):

* ``agent.joined`` -- first seen (or a foreign agent started trusting this hub's key);
* ``agent.left`` -- a member stopped listing this hub's key;
* ``agent.active`` -- the active bundle changed;
* ``agent.offline`` -- offline for longer than the grace period (found by
  :meth:`FleetAgents.audit_offline_agents`, which the hub runtime calls on every
  heartbeat, or when the agent returns after such an absence);
* ``agent.online`` -- back after an audited ``agent.offline``.

Agent-originated changes are audited as ``agent:<agent_id>``, the hub's own findings
(status topic, grace period) as ``hub``.

Tags (schema 6): ``tags`` holds what the agent's state carries, ``hub_tags`` the operator's
changes (``agent.tags`` audited); every agent row read here has ``tags`` merged from the two
(a hub value overrides the agent's, a hub ``null`` removes it), ``reported_tags`` and ``hub_tags``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from sqlite_utils import Database

from edgeloop.agent.wire.messages import AgentState
from edgeloop.hub.errors import NotFoundError, RegistryError
from edgeloop.hub.registry.db import RegistryDatabase
from edgeloop.hub.registry.fields import dumps, now

log = logging.getLogger(__name__)

ONLINE = "online"
OFFLINE_GRACE_S = 120.0  # an agent offline for longer than this is audited (agent.offline)

_COLUMNS = ("status", "session", "started_at", "active_bundle", "member", "offline_since", "down")


def _json_object(text: Any) -> dict:
    if isinstance(text, dict):
        return text
    return json.loads(text) if isinstance(text, str) and text else {}


def _with_tags(row: dict) -> dict:
    """The row with ``tags`` (the agent's own merged with the hub's changes), ``reported_tags`` and ``hub_tags``."""
    reported, hub = _json_object(row.get("tags")), _json_object(row.get("hub_tags"))
    merged = {**reported, **hub}
    row.update(reported_tags=reported, hub_tags=hub,
               tags={k: v for k, v in sorted(merged.items()) if v is not None}, models=_models(row))
    return row


def _models(row: dict) -> list[dict]:
    """The active version of every model the agent serves (``[{"model", "version", "bundle_sha256"}]``, by
    name), from its last state; an older agent's state names only ``active``."""
    try:
        state = _json_object(row.get("state"))
    except ValueError:
        state = {}
    models = state.get("models") if isinstance(state.get("models"), list) else None
    if not models:
        models = [{"model": row["active_model"], "version": row.get("active_version"),
                   "bundle_sha256": row.get("active_bundle")}] if row.get("active_model") else []
    return sorted(({"model": str(m.get("model")), "version": m.get("version"),
                    "bundle_sha256": m.get("bundle_sha256")} for m in models if isinstance(m, dict)),
                  key=lambda m: m["model"])


def _member_flag(member: bool | None) -> int | None:
    return None if member is None else int(bool(member))


class FleetAgents(RegistryDatabase):
    """Agents: state, status, membership and their audit (see the module docstring)."""

    # -- writes -------------------------------------------------------------------------------
    def upsert_agent_state(self, state: AgentState, *, member: bool | None = None,
                           grace: float = OFFLINE_GRACE_S) -> dict:
        """Store an agent's (retained) state message; returns the agent's row.

        A state older than the stored one -- by (started_at, session), e.g. the
        last will of a previous connection arriving after the new birth message --
        is ignored, and the stored row is returned unchanged. ``member``: whether
        the state names this hub's key (None: leave the stored membership as it is).
        """
        self.record_agent_state(state, member=member, grace=grace)
        return self.get_agent(state.agent_id)

    def record_agent_state(self, state: AgentState, *, member: bool | None = None,
                           grace: float = OFFLINE_GRACE_S) -> bool:
        """:meth:`upsert_agent_state` without reading the row back (the fleet's intake);
        False when the state was stale and ignored."""
        with self._write() as db:
            old = self._agent_row(db, state.agent_id)
            if old is not None and self._is_stale(state, old):
                log.info("ignoring stale state of %s (session %s)", state.agent_id, state.session)
                return False
            at = now()
            active = state.active
            flag = _member_flag(member) if member is not None else (old["member"] if old else None)
            values: dict[str, Any] = {
                "session": state.session, "agent_version": state.agent_version, "host": state.host,
                "http_url": state.http_url,
                "active_model": active.model if active else None,
                "active_version": active.version if active else None,
                "active_bundle": active.bundle_sha256 if active else None,
                "started_at": state.started_at, "last_seen": at, "state": dumps(state.to_dict()),
                "member": flag, "tags": dumps(state.tags) if state.tags else None,
            }
            actor = f"agent:{state.agent_id}"
            values.update(self._status_change(db, state.agent_id, old, state.status, flag, at, grace, actor))
            self._write_agent(db, state.agent_id, old, values, at)
            if flag == 0:
                if old is not None and old["member"] == 1:
                    self._audit(db, actor, "agent.left", state.agent_id, trusted_keys=list(state.trusted_keys))
            else:
                self._audit_joined(db, state, old, flag)
                bundle = values["active_bundle"]
                if old is not None and old["active_bundle"] != bundle:
                    self._audit(db, actor, "agent.active", state.agent_id, previous=old["active_bundle"],
                                bundle_sha256=bundle)
        return True

    def mark_agent(self, agent_id: str, status: str, *, actor: str = "hub", member: bool | None = None,
                   grace: float = OFFLINE_GRACE_S) -> dict:
        """Set an agent's status (``online``/``offline``/...) as the hub sees it; returns the row.

        An agent not seen before gets a row with just its status (its status topic may
        arrive before its state message). See :meth:`record_agent_status`.
        """
        self.record_agent_status(agent_id, status, actor=actor, member=member, grace=grace)
        return self.get_agent(agent_id)

    def record_agent_status(self, agent_id: str, status: str, *, actor: str = "hub", member: bool | None = None,
                            grace: float = OFFLINE_GRACE_S) -> None:
        """:meth:`mark_agent` without reading the row back (the fleet's intake)."""
        if not agent_id or not status:
            raise RegistryError("mark_agent needs an agent id and a status such as 'online' or 'offline'")
        with self._write() as db:
            old = self._agent_row(db, agent_id)
            at = now()
            flag = _member_flag(member) if member is not None else (old["member"] if old else None)
            values: dict[str, Any] = {"member": flag}
            values.update(self._status_change(db, agent_id, old, status, flag, at, grace, actor))
            if old is None:
                values["last_seen"] = at
                if flag != 0:
                    self._audit(db, actor, "agent.joined", agent_id, status=status)
            self._write_agent(db, agent_id, old, values, at)

    def audit_offline_agents(self, grace: float = OFFLINE_GRACE_S, at: float | None = None) -> list[str]:
        """Audit ``agent.offline`` for every listed agent offline for longer than ``grace``
        seconds and not audited yet; returns their ids (the hub runtime calls it on every
        heartbeat)."""
        at = now() if at is None else at
        with self._write() as db:
            rows = db.conn.execute(
                "SELECT agent_id, offline_since FROM agents WHERE member IS NOT 0 AND down = 0 "
                "AND status != ? AND offline_since IS NOT NULL AND offline_since <= ? ORDER BY agent_id",
                [ONLINE, at - grace]).fetchall()
            for agent_id, since in rows:
                self._audit_down(db, agent_id, since, at, grace)
                db.conn.execute("UPDATE agents SET down = 1 WHERE agent_id = ?", [agent_id])
        return [r[0] for r in rows]

    # -- report keys (schema 5) -------------------------------------------------------------------
    def pin_agent_key(self, agent_id: str, public_key: str, keyid: str, *, source: str = "enrolled",
                      actor: str = "hub", replace: bool = False) -> bool:
        """Pin the public key (raw, base64) ``agent_id`` signs its reports with; audited
        ``agent.key_pinned``. False, and nothing written, when another key is pinned already
        and ``replace`` is not given (the same key again is a no-op that returns True)."""
        with self._write() as db:
            old = db.conn.execute("SELECT public_key FROM agent_keys WHERE agent_id = ?", [agent_id]).fetchone()
            if old is not None and old[0] == public_key:
                return True
            if old is not None and not replace:
                return False
            db.conn.execute("INSERT OR REPLACE INTO agent_keys (agent_id, keyid, public_key, source, pinned_at, actor) "
                            "VALUES (?, ?, ?, ?, ?, ?)", [agent_id, keyid, public_key, source, now(), actor])
            self._audit(db, actor, "agent.key_pinned", agent_id, keyid=keyid, source=source,
                        replaced=old is not None)
        return True

    def forget_agent_key(self, agent_id: str, *, actor: str = "hub") -> bool:
        """Unpin an agent's key (its next signed state pins a new one); False if none was pinned."""
        with self._write() as db:
            gone = db.conn.execute("DELETE FROM agent_keys WHERE agent_id = ?", [agent_id]).rowcount
            if gone:
                self._audit(db, actor, "agent.key_forgotten", agent_id)
        return bool(gone)

    def agent_keys(self) -> dict[str, str]:
        """``{agent_id: public key (raw, base64)}`` of every pinned key."""
        return {r[0]: r[1] for r in self._db().execute("SELECT agent_id, public_key FROM agent_keys")}

    def get_agent_key(self, agent_id: str) -> dict | None:
        return self._first("agent_keys", "agent_id = ?", [agent_id])

    def list_agent_keys(self) -> list[dict]:
        """Every pinned key's row (agent_id, keyid, public_key, source, pinned_at, actor), by agent id."""
        return self._rows("agent_keys", None, None, "agent_id")

    # -- tags (schema 6) -------------------------------------------------------------------------
    def set_hub_tags(self, agent_id: str, tags: Mapping[str, str], remove: Iterable[str] = (), *,
                     actor: str = "hub") -> dict:
        """Set (``tags``) or remove (``remove``) tags of an agent the registry lists, on the hub's side:
        they override what the agent reports until changed again; audited ``agent.tags``. Returns the
        agent's row (``tags`` merged)."""
        remove = list(remove)
        with self._write() as db:
            row = db.conn.execute("SELECT hub_tags FROM agents WHERE agent_id = ?", [agent_id]).fetchone()
            if row is None:
                raise NotFoundError(f"no agent {agent_id!r} has reported to this hub: tags can be changed once it "
                                    "is listed by `edgeloop fleet` (or set them in its config's [tags])")
            hub = {**_json_object(row[0]), **dict(tags), **dict.fromkeys(remove)}
            db.conn.execute("UPDATE agents SET hub_tags = ? WHERE agent_id = ?",
                            [dumps(hub) if hub else None, agent_id])
            self._audit(db, actor, "agent.tags", agent_id, set=dict(tags), removed=remove)
        return self.get_agent(agent_id)

    def clear_hub_tags(self, agent_id: str, *, actor: str = "hub") -> bool:
        """Drop the hub's tag changes of an agent (its own tags apply again); False if it had none."""
        with self._write() as db:
            n = db.conn.execute("UPDATE agents SET hub_tags = NULL WHERE agent_id = ? AND hub_tags IS NOT NULL",
                                [agent_id]).rowcount
            if n:
                self._audit(db, actor, "agent.tags", agent_id, cleared=True)
        return bool(n)

    # -- reads ----------------------------------------------------------------------------------
    def get_agent(self, agent_id: str) -> dict:
        row = self._first("agents", "agent_id = ?", [agent_id])
        if row is None:
            raise NotFoundError(f"no agent {agent_id!r} has reported to this hub; see list_agents()")
        return _with_tags(row)

    def list_agents(self, *, include_foreign: bool = False) -> list[dict]:
        """Agents by id: this hub's fleet (members and undecided rows), or every agent
        heard of with ``include_foreign``."""
        return [_with_tags(r) for r in
                self._rows("agents", None if include_foreign else "member IS NOT 0", None, "agent_id")]

    def agent_membership(self) -> dict[str, int | None]:
        """``{agent_id: 1 | 0 | None}`` for every agent row (see the module docstring)."""
        return {r[0]: r[1] for r in self._db().execute("SELECT agent_id, member FROM agents")}

    # -- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _agent_row(db: Database, agent_id: str) -> dict | None:
        row = db.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM agents WHERE agent_id = ?", [agent_id]).fetchone()
        return None if row is None else dict(zip(_COLUMNS, row, strict=True))

    @staticmethod
    def _write_agent(db: Database, agent_id: str, old: dict | None, values: dict[str, Any], at: float) -> None:
        if old is None:
            values = {"agent_id": agent_id, "first_seen": at, "down": 0, **values}
            db.conn.execute(f"INSERT INTO agents ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                       list(values.values()))
        else:
            db.conn.execute(f"UPDATE agents SET {', '.join(f'{k} = ?' for k in values)} WHERE agent_id = ?",
                       [*values.values(), agent_id])

    @staticmethod
    def _is_stale(state: AgentState, old: dict) -> bool:
        return (state.started_at, state.session) < (old["started_at"] or 0.0, old["session"] or 0)

    def _status_change(self, db: Database, agent_id: str, old: dict | None, status: str, member: int | None,
                       at: float, grace: float, actor: str) -> dict[str, Any]:
        """The status columns for ``status`` and the audit rows the change calls for."""
        was_online = old is not None and old["status"] == ONLINE
        if status != ONLINE:
            since = old["offline_since"] if old is not None and not was_online and old["offline_since"] else at
            return {"status": status, "offline_since": since}
        values: dict[str, Any] = {"status": status, "offline_since": None, "down": 0}
        if old is None or was_online or member == 0:
            return values
        since = old["offline_since"]
        if not old["down"] and since is not None and at - since > grace:
            self._audit_down(db, agent_id, since, at, grace)  # nobody was listening when it passed
            old = {**old, "down": 1}
        if old["down"]:
            self._audit(db, actor, "agent.online", agent_id,
                        offline_since=since, offline_s=round(at - since, 1) if since is not None else None)
        return values

    def _audit_down(self, db: Database, agent_id: str, since: float, at: float, grace: float) -> None:
        self._audit(db, "hub", "agent.offline", agent_id, offline_since=since, offline_s=round(at - since, 1),
                    grace_s=grace)

    def _audit_joined(self, db: Database, state: AgentState, old: dict | None, member: int | None) -> None:
        if old is None or (old["member"] == 0 and member == 1):
            self._audit(db, f"agent:{state.agent_id}", "agent.joined", state.agent_id, status=state.status,
                        session=state.session, agent_version=state.agent_version,
                        trusted_keys=list(state.trusted_keys))
