"""The state of one rollout: plain dataclasses, JSON round-trippable (the registry stores it after every step)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from edgeloop.hub.rollout.errors import RolloutError
from edgeloop.hub.rollout.gates import Observation
from edgeloop.hub.rollout.plan import RolloutPlan
from edgeloop.hub.rollout.selector import AgentRecord

STATE_SCHEMA = 1
AGENT_STATUSES = ("pending", "transferring", "verifying", "baking", "healthy", "failed", "timed_out", "rolled_back")
AGENT_FINAL = ("healthy", "failed", "timed_out", "rolled_back")
AGENT_BAD = ("failed", "timed_out", "rolled_back")
WAVE_STATUSES = ("deploying", "baking", "passed", "failed")
ROLLOUT_STATUSES = ("planned", "running", "baking", "awaiting_approval", "paused", "halted", "rolling_back",
                    "rolled_back", "completed", "aborted")
TERMINAL = ("completed", "rolled_back", "aborted")
# a rollout in one of these holds its target: the runtime refuses a second rollout of the model to those agents
ACTIVE = ("running", "baking", "awaiting_approval", "paused", "rolling_back")


@dataclass(frozen=True)
class AgentRun:
    """One agent in one wave."""

    id: str
    status: str = "pending"  # AGENT_STATUSES
    since: float = 0.0  # when status last changed
    previous_version: str | None = None  # what a rollback returns it to
    activated: bool = False  # it reported running the new version
    baking_since: float | None = None
    verdict: str = "waiting"  # pass | fail | waiting (gates.py)
    reason: str = ""
    observation: Observation | None = None
    rollback: str | None = None  # None | sent | confirmed | failed | timed_out
    rollback_sent_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["observation"] = self.observation.to_dict() if self.observation else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AgentRun:
        kw = dict(d)
        if kw.get("observation") is not None:
            kw["observation"] = Observation.from_dict(kw["observation"])
        return cls(**kw)


@dataclass
class Wave:
    index: int
    name: str
    agents: dict[str, AgentRun] = field(default_factory=dict)
    status: str = "deploying"  # WAVE_STATUSES
    started_at: float = 0.0
    ended_at: float | None = None

    def counts(self) -> dict[str, int]:
        """How many agents are in each status (the progress view)."""
        c = dict.fromkeys(AGENT_STATUSES, 0)
        for a in self.agents.values():
            c[a.status] += 1
        return c

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "status": self.status, "started_at": self.started_at,
                "ended_at": self.ended_at, "agents": [a.to_dict() for a in self.agents.values()]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Wave:
        runs = [AgentRun.from_dict(a) for a in d["agents"]]
        return cls(index=d["index"], name=d["name"], status=d["status"], started_at=d["started_at"],
                   ended_at=d["ended_at"], agents={a.id: a for a in runs})


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: float
    actor: str  # operator name, agent:<id>, or hub
    event: str  # the event that caused it
    from_status: str
    to_status: str
    what: str
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RolloutState:
    rollout_id: str
    plan: RolloutPlan
    status: str = "planned"
    waves: list[Wave] = field(default_factory=list)
    agents: dict[str, AgentRecord] = field(default_factory=dict)  # the latest records seen
    initial_targets: list[str] = field(default_factory=list)  # resolved at start (online or not)
    planned_counts: list[int] = field(default_factory=list)  # the last wave also takes the rest
    late_excluded: list[str] = field(default_factory=list)
    not_reached: list[str] = field(default_factory=list)  # targeted but offline when the rollout completed
    reason: str | None = None  # why it halted, rolled back or was aborted
    paused_from: str | None = None
    rollback_scope: str | None = None  # wave | all
    created_at: float = 0.0
    updated_at: float = 0.0
    audit: list[AuditRecord] = field(default_factory=list)
    schema: int = STATE_SCHEMA

    def clone(self) -> RolloutState:
        """A copy that shares only immutable parts (AgentRun, AgentRecord, AuditRecord and the plan are frozen)."""
        waves = [replace(w, agents=dict(w.agents)) for w in self.waves]
        return replace(self, waves=waves, agents=dict(self.agents), initial_targets=list(self.initial_targets),
                       planned_counts=list(self.planned_counts), late_excluded=list(self.late_excluded),
                       not_reached=list(self.not_reached), audit=list(self.audit))

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def wave_of(self, agent_id: str) -> Wave | None:
        for w in reversed(self.waves):
            if agent_id in w.agents:
                return w
        return None

    def summary(self) -> dict[str, Any]:
        """Per wave: targeted and how many agents are in each status (what `rollout status` shows)."""
        return {"rollout": self.rollout_id, "status": self.status, "reason": self.reason,
                "waves": [{"name": w.name, "status": w.status, "targeted": len(w.agents), **w.counts()}
                          for w in self.waves]}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema, "rollout_id": self.rollout_id, "plan": self.plan.to_dict(), "status": self.status,
            "waves": [w.to_dict() for w in self.waves],
            "agents": [a.to_dict() for a in self.agents.values()],
            "initial_targets": list(self.initial_targets), "planned_counts": list(self.planned_counts),
            "late_excluded": list(self.late_excluded), "not_reached": list(self.not_reached),
            "reason": self.reason, "paused_from": self.paused_from, "rollback_scope": self.rollback_scope,
            "created_at": self.created_at, "updated_at": self.updated_at,
            "audit": [r.to_dict() for r in self.audit],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolloutState:
        if not isinstance(d, Mapping) or d.get("schema") != STATE_SCHEMA:
            got = d.get("schema") if isinstance(d, Mapping) else type(d).__name__
            raise RolloutError(f"stored rollout state has schema {got!r}; this hub reads {STATE_SCHEMA}: "
                               "upgrade the hub, or abort the rollout from the hub that started it",
                               code="bad_rollout_state")
        try:
            records = [AgentRecord.from_dict(a) for a in d["agents"]]
            state = cls(
                rollout_id=d["rollout_id"], plan=RolloutPlan.from_dict(d["plan"]), status=d["status"],
                waves=[Wave.from_dict(w) for w in d["waves"]], agents={a.id: a for a in records},
                initial_targets=list(d["initial_targets"]), planned_counts=list(d["planned_counts"]),
                late_excluded=list(d["late_excluded"]), not_reached=list(d["not_reached"]), reason=d["reason"],
                paused_from=d["paused_from"], rollback_scope=d["rollback_scope"], created_at=d["created_at"],
                updated_at=d["updated_at"], audit=[AuditRecord(**r) for r in d["audit"]],
            )
        except (KeyError, TypeError) as e:
            raise RolloutError(f"stored rollout state is damaged ({type(e).__name__}: {e}); abort the rollout and "
                               "start a new one", code="bad_rollout_state") from e
        bad = ([state.status] if state.status not in ROLLOUT_STATUSES else []) + [
            w.status for w in state.waves if w.status not in WAVE_STATUSES] + [
            a.status for w in state.waves for a in w.agents.values() if a.status not in AGENT_STATUSES]
        if bad:
            raise RolloutError(f"stored rollout state {state.rollout_id} has unknown status(es) {bad}: it was written "
                               "by another hub version; upgrade the hub or abort the rollout", code="bad_rollout_state")
        return state
