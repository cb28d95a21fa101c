"""Shadow mode from the hub: what the agents report of a shadow version, promoting it, stopping it.

A version is deployed as shadow with ``Hub.deploy(..., shadow=True)`` (``edgeloop deploy --shadow``):
each agent installs it beside the live version and runs it on the same requests without answering
with it, and reports the comparison (agreement, confusion or error distribution, latency of each,
errors) on its ``shadow`` topic; the fleet's intake keeps the newest report of each shadow run in the
registry. :meth:`HubShadow.shadow_summary` reads it (a rollout's ``min_shadow_agreement`` gate does);
:meth:`HubShadow.promote_shadow` makes the shadow the live version from the agent's store -- no second
transfer -- and :meth:`HubShadow.stop_shadow` ends it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from edgeloop.agent.wire.commands import Probation
from edgeloop.agent.wire.shadow import ShadowReport
from edgeloop.hub.errors import HubError, NotFoundError
from edgeloop.hub.services.delivery import HubDelivery, _result

if TYPE_CHECKING:
    from edgeloop.hub.fleet import Fleet


class NoShadowReportError(HubError):
    """No shadow run of that agent is known to the registry."""

    code = "no_shadow"


class HubShadow(HubDelivery):
    def shadow_summary(self, agent_id: str, model: str | None = None, *, version: str | None = None) -> dict | None:
        """The newest shadow run the agent reported (of ``model``, and of that shadow ``version``, if given), or
        None. A rollout passes the candidate's ``version``: an older shadow's figures never count for it.

        Keys: ``agent``, ``model``, ``version`` (the shadow's), ``bundle_sha256``, ``live_version``,
        ``live_sha256``, ``task``, ``requests`` (compared), ``rows``, ``agreement`` (0..1, None before the
        first row), ``errors`` (requests the shadow failed on), ``dropped`` (not compared: the shadow's
        queue was full), ``last_error``, ``live_p50_ms``, ``live_p99_ms``, ``shadow_p50_ms``,
        ``shadow_p99_ms``, ``labels`` and ``confusion`` (classification: rows = live class, columns =
        shadow class), ``error`` (regression: distribution of shadow - live), ``tolerance``,
        ``started_at``, ``at`` (agent clock), ``received_at`` (hub clock), ``final`` (the shadow stopped)
        and ``running`` (not final).
        """
        row = self.registry.latest_shadow(agent_id, model, version)
        if row is None:
            return None
        rep = ShadowReport.from_dict(row["report"])
        return {**rep.summary(), "received_at": row["received_at"], "running": not rep.final}

    def shadow_runs(self, agent_id: str | None = None, model: str | None = None, limit: int = 50) -> list[dict]:
        """Shadow runs, newest first (one summary each, as :meth:`shadow_summary`)."""
        rows = self.registry.list_shadow_reports(agent_id, model=model, limit=limit)
        return [{**ShadowReport.from_dict(r["report"]).summary(), "received_at": r["received_at"],
                 "running": not r["final"]} for r in rows]

    def promote_shadow(self, fleet: Fleet | str, agent_ids: Sequence[str], ref: str | None = None, *,
                       probation: Probation | None = None, timeout: float = 60.0) -> list[dict]:
        """Make each agent's shadow version its live version, from the agent's store (no transfer).

        ``ref`` (a version ref or bundle sha256 prefix) names the shadow; without it, the shadow the
        agent reported last. The activation is the agent's usual one (re-verified, smoke-tested, the
        version floor raised), on ``probation`` when given (the dead-man switch). Recorded as a deploy
        and audited as ``shadow.promote``. Returns one result per agent, as :meth:`deploy` does; ``code``
        ``no_shadow`` when that bundle is not running as shadow there (deploy it with ``shadow=True``).
        """
        targets = {aid: self._shadow_target(aid, ref) for aid in agent_ids}

        def one(started: Fleet, aid: str) -> dict:
            sha, model, version, version_id = targets[aid]
            args: dict = {"bundle_sha256": sha, "model": model, "version": version}
            if probation is not None:
                args["probation"] = probation.to_dict()
            with self.registry.transaction():
                cmd = started.make_command(aid, "promote_shadow", args, ttl=max(300.0, timeout + 60.0))
                self.registry.add_deployment(bundle_sha256=sha, agent_id=aid, kind="deploy", command_id=cmd.command_id,
                                             counter=cmd.counter, actor=self.actor, expires_at=cmd.expires_at)
            started.send(cmd)
            return _result(aid, started.outcome(cmd.command_id, ("install_result",), timeout), version_id, sha)

        results = self._on_fleet(fleet, agent_ids, one)
        self.registry.audit(self.actor, "shadow.promote", ",".join(agent_ids), ref=ref,
                            results={r["agent"]: r["code"] for r in results})
        return results

    def stop_shadow(self, fleet: Fleet | str, agent_ids: Sequence[str], *, timeout: float = 30.0) -> list[dict]:
        """End each agent's shadow (its final report goes out; the bundle stays in the agent's store).
        Returns one result per agent: ``{"agent", "ok", "code", "message", "seconds", "stopped"}``."""
        def one(started: Fleet, aid: str) -> dict:
            cmd = started.make_command(aid, "stop_shadow", {})
            started.send(cmd)
            out = started.outcome(cmd.command_id, ("command_result",), timeout)
            return {"agent": aid, "ok": out.ok, "code": out.code, "message": out.message,
                    "seconds": round(out.seconds, 3), "stopped": bool(out.details.get("stopped"))}

        results = self._on_fleet(fleet, agent_ids, one)
        self.registry.audit(self.actor, "shadow.stop", ",".join(agent_ids),
                            results={r["agent"]: r["code"] for r in results})
        return results

    def _shadow_target(self, agent_id: str, ref: str | None) -> tuple[str, str, str, str]:
        """(bundle sha256, model, version, version id) of the shadow to promote on ``agent_id``."""
        if ref is not None:
            rec = self._bundle_record(ref)
            v = self.registry.get_version(rec["version_id"])
            return rec["sha256"], v["model_name"], v["version"], v["id"]
        s = self.shadow_summary(agent_id)
        if s is None:
            raise NoShadowReportError(f"agent {agent_id} has reported no shadow version; deploy one with "
                                      "`edgeloop deploy VERSION --shadow` (or name the version to promote)")
        try:
            version_id = self.registry.get_bundle(s["bundle_sha256"])["version_id"]
        except NotFoundError:
            version_id = f"{s['model']}:{s['version']}"
        return s["bundle_sha256"], s["model"], s["version"], version_id


__all__ = ["HubShadow", "NoShadowReportError"]
