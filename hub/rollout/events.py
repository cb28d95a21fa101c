"""Events the runtime feeds into :func:`edgeloop.hub.rollout.machine.step`, and the actions it gets back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeloop.hub.rollout.errors import RolloutError
from edgeloop.hub.rollout.gates import Observation
from edgeloop.hub.rollout.plan import RolloutPlan
from edgeloop.hub.rollout.selector import AgentRecord

# what an agent reports while it takes the new version on (in order), and the two endings
STAGES = ("transferring", "verifying", "baking", "failed", "rolled_back")


# --- events ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    by: str = "operator"
    agents: tuple[AgentRecord, ...] = ()  # the hub's agent records now (also kept up to date by AgentsSeen)


@dataclass(frozen=True)
class AgentsSeen:
    """New or changed agent records (tags, online); the machine merges them into the ones it knows."""

    agents: tuple[AgentRecord, ...] = ()


@dataclass(frozen=True)
class AgentProgress:
    """``baking`` means the agent activated the new version; ``rolled_back`` outside a rollback means
    the device reverted on its own (its dead-man switch), which fails its wave."""

    agent: str
    stage: str
    reason: str = ""

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise RolloutError(f"agent {self.agent!r} reported stage {self.stage!r}; known stages: {', '.join(STAGES)}",
                               code="bad_stage")


@dataclass(frozen=True)
class AgentReport:
    agent: str
    observation: Observation


@dataclass(frozen=True)
class Tick:
    """Time passed (``now`` is the argument of ``step``): timeouts and bake ends are checked on every event."""


@dataclass(frozen=True)
class OperatorCommand:
    by: str = "operator"
    why: str = ""


@dataclass(frozen=True)
class Pause(OperatorCommand):
    """No new wave starts; agents already deploying go on, and a failure still applies the failure policy."""


@dataclass(frozen=True)
class Resume(OperatorCommand):
    pass


@dataclass(frozen=True)
class Approve(OperatorCommand):
    """Start the next wave (the plan asks for an approval after each wave that passed)."""


@dataclass(frozen=True)
class Abort(OperatorCommand):
    rollback: bool = False  # also roll back every agent that got the new version


Event = Start | AgentsSeen | AgentProgress | AgentReport | Tick | Pause | Resume | Approve | Abort


# --- actions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Deploy:
    agents: tuple[str, ...]
    model: str
    version: str
    wave: int
    memory_limit_mb: int | None = None
    probation: dict[str, Any] | None = None  # the deploy's dead-man switch {seconds, min_requests, require_confirm}
    drift: dict[str, Any] | None = None  # drift window overrides {rows, seconds, min_rows, consecutive}

    def to_dict(self) -> dict[str, Any]:
        return {"action": "deploy", "agents": list(self.agents), "model": self.model, "version": self.version,
                "wave": self.wave, "memory_limit_mb": self.memory_limit_mb,
                "probation": dict(self.probation) if self.probation else None,
                "drift": dict(self.drift) if self.drift else None}

    @classmethod
    def of(cls, plan: RolloutPlan, agents: tuple[str, ...], wave: int) -> Deploy:
        """The deploy of ``agents`` in wave ``wave``, with what the plan sends to each device."""
        return cls(agents, plan.model, plan.version, wave, plan.memory_limit_mb, plan.probation_args(),
                   dict(plan.drift) if plan.drift else None)


@dataclass(frozen=True)
class Rollback:
    agents: tuple[str, ...]
    model: str
    to_version: str | None  # None: the agent ran no version of this model before
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"action": "rollback", "agents": list(self.agents), "model": self.model,
                "to_version": self.to_version, "reason": self.reason}


@dataclass(frozen=True)
class Notify:
    level: str  # info | warning | error
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"action": "notify", "level": self.level, "message": self.message, "data": dict(self.data)}


Action = Deploy | Rollback | Notify
