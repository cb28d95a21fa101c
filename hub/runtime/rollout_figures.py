"""What the rollout driver knows of each agent while it bakes, turned into the gates' observation.

:class:`AgentFigures` keeps, for the rollouts in progress: each agent's latest ``serving`` report
(requests, errors, p99 per version since activation; agent/wire/serving.py), whether the wave's deploy
installed on it (the delivery's outcome: verified, smoke-tested, activated), the features drift reports
of the new version flagged on it, and the drift reports that carry an accuracy estimate (calibrated
classifiers: the new version's per agent, and the replaced versions' as the baseline;
:mod:`edgeloop.hub.rollout.estimates`). :meth:`AgentFigures.observation` makes the
:class:`~edgeloop.hub.rollout.gates.Observation` of one agent's run from them (docs/rollouts.md, "The runtime").
Only the driver's thread calls it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from edgeloop.hub.rollout.estimates import estimate_fields
from edgeloop.hub.rollout.gates import Observation
from edgeloop.hub.rollout.state import AgentRun, RolloutState

if TYPE_CHECKING:
    from edgeloop.agent.wire.serving import ServingReport

PERF_KEEP = 500  # drift reports with an accuracy estimate kept per agent (and of the replaced versions)
_OBSERVATION_FIELDS = {f.name for f in dataclasses.fields(Observation)}


class AgentFigures:
    def __init__(self) -> None:
        self.serving: dict[str, ServingReport] = {}  # agent -> its latest serving report
        self.installed: dict[tuple[str, str], bool] = {}  # (rollout, agent) -> the wave's deploy installed
        self.drift: dict[tuple[str, str], set[str]] = {}  # (rollout, agent) -> drifted features of the new version
        # (rollout, agent) -> drift reports with an accuracy estimate of the new version; (rollout, "") -> others'
        self.perf: dict[tuple[str, str], list[dict]] = {}

    def drift_report(self, rep: Any, states: Iterable[RolloutState]) -> list[str]:
        """Take a drift report; the rollouts for which it is a report of the new version (to judge again)."""
        judge = []
        for st in states:
            rid = st.rollout_id
            if rep.model != st.plan.model:
                continue
            new = rep.version == st.plan.version
            if getattr(rep, "performance", None) is not None:
                kept = self.perf.setdefault((rid, rep.agent_id if new else ""), [])
                kept.append(rep.to_dict())
                del kept[:-PERF_KEEP]
            if new and rep.drifted_features:
                self.drift.setdefault((rid, rep.agent_id), set()).update(rep.drifted_features)
            if new:
                judge.append(rid)
        return judge

    def forget(self, rid: str) -> None:
        for d in (self.installed, self.drift, self.perf):
            for key in [k for k in d if k[0] == rid]:
                del d[key]

    def observation(self, st: RolloutState, run: AgentRun, shadow: dict) -> Observation:
        """What the gates judge for ``run`` now; ``shadow`` is ``Hub.shadow_summary`` of the agent ({} if none)."""
        model, rid = st.plan.model, st.rollout_id
        rep = self.serving.get(run.id)
        new = rep.version(model, st.plan.version) if rep is not None else None
        old = rep.version(model, run.previous_version) if rep is not None and run.previous_version else None
        ok = self.installed.get((rid, run.id))
        new_perf = self.perf.get((rid, run.id))
        live_perf = [d for d in self.perf.get((rid, ""), []) if d.get("version") == run.previous_version]
        estimate = estimate_fields(new_perf, live_perf or None) if new_perf else {}
        return Observation(
            **{k: v for k, v in estimate.items() if k in _OBSERVATION_FIELDS},
            installed_ok=ok, smoke_ok=ok, requests=new.requests if new else 0, errors=new.errors if new else 0,
            latency_p99_ms=new.p99_ms if new else None,
            replaced_p99_ms=old.p99_ms if old is not None and run.previous_version != st.plan.version else None,
            drift_flags=tuple(sorted(self.drift.get((rid, run.id), ()))),
            shadow_agreement=shadow.get("agreement"), shadow_requests=int(shadow.get("requests") or 0))


__all__ = ["AgentFigures", "PERF_KEEP"]
