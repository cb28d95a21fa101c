"""What the rollout driver sends each device after its deploy: the hub's ``confirm`` of a version on
probation once the agent's gates pass (``require_confirm``), and the plan's ``capture`` settings once
the agent activated the new version.

Each is sent at most once per rollout and agent (again after a runtime restart, which is harmless: a
second confirm of a passed probation answers ``not_on_probation``, a capture command sets the same
settings). The sends run on the driver's worker threads; their outcomes come back through ``report``
(the driver's queue) and are audited in the registry (``rollout.confirm``, ``rollout.capture``, target the
rollout id). A confirm that fails fails the agent in the rollout (its device reverts at its deadline),
a capture that fails is logged and audited only (it is no health matter).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from edgeloop.hub.rollout.gates import PASS
from edgeloop.hub.rollout.state import RolloutState

log = logging.getLogger(__name__)

Submit = Callable[[Callable[..., None], tuple], None]
Report = Callable[[str, str, str, bool, str], None]  # rollout, agent, kind ("confirm" | "capture"), ok, reason


class DeviceFollowUp:
    """Confirms and capture settings of the rollouts one driver runs."""

    def __init__(self, hub: Any, fleet: Any, submit: Submit, report: Report) -> None:
        self.hub = hub
        self.fleet = fleet
        self.submit = submit
        self.report = report
        self.sent: set[tuple[str, str, str]] = set()  # (rollout, agent, kind)

    # --- when to send ---------------------------------------------------------------------------
    def activated(self, st: RolloutState, agent_id: str) -> None:
        """The agent activated the new version: the plan's capture settings go to it."""
        if st.plan.capture and self._once(st.rollout_id, agent_id, "capture"):
            self.submit(self._capture, (st.rollout_id, agent_id, dict(st.plan.capture)))

    def judged(self, st: RolloutState, agent_id: str) -> None:
        """The agent's verdict may have turned pass: confirm its probation (once) when the plan asks."""
        if not (st.plan.require_confirm and st.plan.probation_seconds is not None):
            return
        w = st.wave_of(agent_id)
        run = w.agents[agent_id] if w is not None else None
        if run is None or run.rollback is not None or run.verdict != PASS or run.status not in ("baking", "healthy"):
            return
        if self._once(st.rollout_id, agent_id, "confirm"):
            self.submit(self._confirm, (st.rollout_id, agent_id, f"{st.plan.model}:{st.plan.version}"))

    def resumed(self, st: RolloutState) -> None:
        """After a runtime restart: what the current wave's activated agents may still lack."""
        if st.terminal or not st.waves or st.status in ("halted", "rolling_back"):
            return
        for a in st.waves[-1].agents.values():
            if a.activated and a.rollback is None and a.status in ("baking", "healthy"):
                self.activated(st, a.id)
                self.judged(st, a.id)

    def forget(self, rid: str) -> None:
        self.sent = {k for k in self.sent if k[0] != rid}

    def _once(self, rid: str, agent_id: str, kind: str) -> bool:
        key = (rid, agent_id, kind)
        if key in self.sent:
            return False
        self.sent.add(key)
        return True

    # --- the sends (worker threads) ---------------------------------------------------------------
    def _confirm(self, rid: str, agent_id: str, ref: str) -> None:
        try:
            r = self.hub.confirm(self.fleet, [agent_id], ref, timeout=30.0)[0]
            ok, reason = bool(r["ok"]), f"{r['code']}: {r['message']}"
        except Exception as exc:
            ok, reason = False, f"{getattr(exc, 'code', 'error')}: {exc}"
        self._audit(rid, agent_id, "confirm", ok, reason)
        self.report(rid, agent_id, "confirm", ok, reason)

    def _capture(self, rid: str, agent_id: str, settings: dict) -> None:
        enable = settings.pop("enabled", None)
        try:
            r = self.hub.set_capture(self.fleet, [agent_id], enable=enable, timeout=30.0, **settings)[0]
            ok, reason = bool(r["ok"]), f"{r['code']}: {r['message']}"
        except Exception as exc:
            ok, reason = False, f"{getattr(exc, 'code', 'error')}: {exc}"
        if not ok:
            log.warning("rollout %s: capture settings for %s failed: %s", rid, agent_id, reason)
        self._audit(rid, agent_id, "capture", ok, reason)
        self.report(rid, agent_id, "capture", ok, reason)

    def _audit(self, rid: str, agent_id: str, kind: str, ok: bool, reason: str) -> None:
        try:
            self.hub.registry.audit("hub", f"rollout.{kind}", rid, agent=agent_id, ok=ok, result=reason)
        except Exception:
            log.exception("rollout %s: could not audit the %s of %s", rid, kind, agent_id)


__all__ = ["DeviceFollowUp"]
