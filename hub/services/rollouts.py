"""Rollouts with quality gates, the library face (docs/rollouts.md).

The hub runtime (``edgeloop hub serve``, or the GUI's) drives every rollout
(:mod:`edgeloop.hub.runtime.rollouts`). These methods work from any process on the same hub
home: a command is stored as a request in the registry, the runtime carries it out within a
fraction of a second and records the outcome, which the method waits for (``wait`` seconds) and
returns -- or raises as the error the runtime met (:class:`RolloutRequestError`, with the
original ``code``). Reads (:meth:`HubRollouts.rollout_status`, :meth:`HubRollouts.rollouts`)
come straight from the registry and need no runtime.

API::

    hub.rollout_plan("vibration:7", "site=plant-a", bake_seconds=600, gates={"min_requests": 200})
        -> RolloutPlan (the version ref resolved to model + version number; validated)
    hub.rollout_start(plan_or_dict, override_reason=None, wait=30.0)      -> status dict
    hub.rollout_start(version="vibration:7", target="site=plant-a", **plan_fields)  (same)
    hub.rollout_status("ro-3", audit=20)  -> {"id", "model", "version", "target", "status", "reason",
                                              "summary": {...per wave counts...}, "state": {...}, "audit": [...]}
    hub.rollouts(active_only=False, limit=50) -> [{"id", "model", "version", "target", "status", "summary", ...}]
    hub.rollout_pause(id, why="") / rollout_resume / rollout_approve  -> status dict
    hub.rollout_abort(id, why="", rollback=False)                       -> status dict
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from edgeloop.hub.errors import HubError
from edgeloop.hub.registry.rollouts import RolloutStore
from edgeloop.hub.rollout.plan import RolloutPlan
from edgeloop.hub.services.delivery import HubDelivery

REQUEST_WAIT_S = 30.0


class NoRuntimeError(HubError):
    """No hub runtime serves this home: nobody would carry out a rollout command."""

    code = "no_runtime"


class RolloutRequestError(HubError):
    """The hub runtime refused or failed a rollout command; ``code`` is the original error's."""

    def __init__(self, message: str, code: str = "rollout", problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.problems = list(problems or [])


class HubRollouts(HubDelivery):
    @property
    def rollout_store(self) -> RolloutStore:
        return RolloutStore(self.registry)

    # --- plans ------------------------------------------------------------------------------------
    def rollout_plan(self, version: str, target: str, **fields: Any) -> RolloutPlan:
        """A validated plan for the version ``version`` names (``model:n``, ``model@alias``, ``model``:
        the newest) to ``target``; ``fields`` are the other plan fields (``gates`` a dict)."""
        v = self.registry.get_version(version)
        return RolloutPlan.from_dict({**fields, "model": v["model_name"], "version": v["version"], "target": target})

    # --- commands (carried out by the hub runtime) -----------------------------------------------
    def rollout_start(self, plan: RolloutPlan | Mapping[str, Any] | None = None, *, version: str | None = None,
                      target: str | None = None, override_reason: str | None = None, wait: float = REQUEST_WAIT_S,
                      **fields: Any) -> dict:
        """Start a rollout; returns :meth:`rollout_status` of it (its first wave deploying).

        Give a plan (a :class:`RolloutPlan` or its dict; its ``version`` is the version number, or a
        version ref such as ``model@production``) or ``version`` + ``target`` + plan fields. Refused
        (:class:`RolloutRequestError`) when the version fails its evaluation gate without
        ``override_reason``, when no online agent matches, or when an active rollout of the model
        targets some of the same agents (``rollout_conflict``)."""
        p: RolloutPlan
        if plan is None:
            if version is None or target is None:
                raise HubError("rollout_start needs a plan, or a version and a target")
            p = self.rollout_plan(version, target, **fields)
        elif isinstance(plan, RolloutPlan):
            p = plan
        else:
            doc = dict(plan)
            if isinstance(doc.get("version"), str) and ("@" in doc["version"] or ":" in doc["version"]):
                v = self.registry.get_version(doc["version"])
                doc.update(model=v["model_name"], version=v["version"])
            p = RolloutPlan.from_dict(doc)
        self.registry.get_version(f"{p.model}:{p.version}")  # a version that does not exist: said now
        result = self._rollout_request("start", None, {"plan": p.to_dict(), "override_reason": override_reason},
                                       wait)
        return self.rollout_status(result["rollout"])

    def rollout_pause(self, rollout_id: str, *, why: str = "", wait: float = REQUEST_WAIT_S) -> dict:
        """No new wave starts until resumed (agents already deploying go on; a failure still applies)."""
        return self._rollout_command("pause", rollout_id, {"why": why}, wait)

    def rollout_resume(self, rollout_id: str, *, why: str = "", wait: float = REQUEST_WAIT_S) -> dict:
        return self._rollout_command("resume", rollout_id, {"why": why}, wait)

    def rollout_approve(self, rollout_id: str, *, why: str = "", wait: float = REQUEST_WAIT_S) -> dict:
        """Start the next wave of a rollout awaiting approval."""
        return self._rollout_command("approve", rollout_id, {"why": why}, wait)

    def rollout_abort(self, rollout_id: str, *, why: str = "", rollback: bool = False,
                      wait: float = REQUEST_WAIT_S) -> dict:
        """Stop the rollout; with ``rollback`` also return every agent that got the new version to the
        version it ran before."""
        return self._rollout_command("abort", rollout_id, {"why": why, "rollback": rollback}, wait)

    def _rollout_command(self, command: str, rollout_id: str, args: dict, wait: float) -> dict:
        self.rollout_store.get(rollout_id)  # an unknown id: NotFoundError naming the recent ones
        self._rollout_request(command, rollout_id, args, wait)
        return self.rollout_status(rollout_id)

    def _rollout_request(self, command: str, rollout_id: str | None, args: dict, wait: float) -> dict:
        if not self.registry.listening()["running"]:
            raise NoRuntimeError("no hub runtime is running for this hub home, so nobody drives rollouts: start "
                                 "`edgeloop hub serve --broker mqtt://HOST:PORT` (or the GUI with a broker), then "
                                 "give the command again")
        store = self.rollout_store
        rid = store.request(command, rollout_id, args, self.actor)
        deadline = time.monotonic() + wait
        while True:
            req = store.get_request(rid)
            if req["done_at"] is not None:
                break
            if time.monotonic() > deadline:
                raise NoRuntimeError(f"the hub runtime did not take the {command} request within {wait:.0f} s; "
                                     "check that `edgeloop hub serve` is running and connected (`edgeloop fleet` "
                                     "says how fresh its view is); an unanswered request expires after 2 minutes")
            time.sleep(0.05)
        result = req["result"] or {}
        if not req["ok"]:
            raise RolloutRequestError(result.get("error", f"the {command} request failed"),
                                      code=result.get("code", "rollout"), problems=result.get("problems"))
        return result

    # --- reads ------------------------------------------------------------------------------------
    def rollout_status(self, rollout_id: str, *, audit: int = 20) -> dict:
        """One rollout: its row, the progress ``summary`` (per wave: targeted and how many agents
        are pending, transferring, verifying, baking, healthy, failed, timed out, rolled back), the
        ``state`` (waves with every agent's status, verdict, reason and figures; without audit) and
        the last ``audit`` audit records."""
        store = self.rollout_store
        row = store.get(rollout_id)
        state = json.loads(row.pop("state"))
        state.pop("audit", None)
        summary = json.loads(row["summary"]) if row.get("summary") else None
        return {**row, "summary": summary, "reason": state.get("reason"), "plan": state.get("plan"),
                "state": state, "audit": store.audit(rollout_id, limit=audit)}

    def rollouts(self, *, active_only: bool = False, limit: int | None = 50) -> list[dict]:
        """Rollouts, newest first (``active_only``: in progress or halted), with their progress summary."""
        return self.rollout_store.list_rollouts(active_only=active_only, limit=limit)


__all__ = ["HubRollouts", "NoRuntimeError", "RolloutRequestError"]
