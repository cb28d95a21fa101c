"""Helpers for the rollout state-machine tests: a driver that keeps the time, the state and every action."""

from __future__ import annotations

import json

from edgeloop.hub.rollout.events import AgentProgress, AgentReport, Deploy, Rollback, Tick
from edgeloop.hub.rollout.gates import Observation
from edgeloop.hub.rollout.machine import new_rollout, step
from edgeloop.hub.rollout.plan import Gates, RolloutPlan
from edgeloop.hub.rollout.selector import AgentRecord
from edgeloop.hub.rollout.state import RolloutState

GOOD = Observation(installed_ok=True, smoke_ok=True, requests=200, errors=0, latency_p99_ms=4.0, replaced_p99_ms=4.0)
SLOW = Observation(installed_ok=True, smoke_ok=True, requests=200, errors=0, latency_p99_ms=9.0, replaced_p99_ms=4.0)
FEW = Observation(installed_ok=True, smoke_ok=True, requests=3, errors=0, latency_p99_ms=4.0, replaced_p99_ms=4.0)
GATES = Gates(min_requests=100, max_error_rate=0.01, max_p99_ratio=1.5)


def fleet(n: int, prefix: str = "pi", online: bool = True, version: str = "v1", **tags: str) -> tuple[AgentRecord, ...]:
    return tuple(AgentRecord(f"{prefix}-{i:02d}", {"site": "plant-a", **tags}, online, version) for i in range(n))


def plan(**kw) -> RolloutPlan:
    base = dict(model="m", version="v2", target="site=plant-a", strategy="canary", canary_agents=1, ramp="rest",
                bake_seconds=60.0, gates=GATES, failure_policy="rollback_wave", agent_timeout_seconds=120.0)
    base.update(kw)
    return RolloutPlan(**base).validate()


class Driver:
    def __init__(self, p: RolloutPlan, now: float = 1000.0, rollout_id: str = "r-1") -> None:
        self.now = now
        self.state: RolloutState = new_rollout(rollout_id, p, now)
        self.actions: list = []

    def __call__(self, event, dt: float = 0.0):
        self.now += dt
        self.state, acts = step(self.state, event, self.now)
        self.actions.extend(acts)
        return acts

    def deploys(self) -> list[Deploy]:
        return [a for a in self.actions if isinstance(a, Deploy)]

    def rollbacks(self) -> list[Rollback]:
        return [a for a in self.actions if isinstance(a, Rollback)]

    def current(self) -> list[str]:
        return list(self.state.waves[-1].agents)

    def activate(self, ids, obs: Observation = GOOD) -> None:
        for i in ids:
            for stage in ("transferring", "verifying", "baking"):
                self(AgentProgress(i, stage), 1)
            self(AgentReport(i, obs), 1)

    def bake(self) -> list:
        return self(Tick(), self.state.plan.bake_seconds + 1)

    def round_trip(self) -> None:
        self.state = RolloutState.from_dict(json.loads(json.dumps(self.state.to_dict())))
