"""Random event sequences never put a rollout in an invalid state, and every rollout ends (property-based).

An oracle kept beside the machine checks what matters most: a rollback targets exactly the agents that
got the new version in its scope (not those that refused it before activating, nor those that reverted
on their own), a deploy goes only to online matching agents never deployed before, and a rollout with
stuck agents still reaches an end once time passes.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edgeloop.hub.rollout.errors import RolloutStateError
from edgeloop.hub.rollout.events import (
    Abort,
    AgentProgress,
    AgentReport,
    AgentsSeen,
    Approve,
    Deploy,
    Pause,
    Resume,
    Rollback,
    Start,
    Tick,
)
from edgeloop.hub.rollout.gates import FAIL, Observation, evaluate
from edgeloop.hub.rollout.machine import new_rollout, step
from edgeloop.hub.rollout.plan import Gates, RolloutPlan
from edgeloop.hub.rollout.selector import AgentRecord
from edgeloop.hub.rollout.state import (
    AGENT_FINAL,
    AGENT_STATUSES,
    ROLLOUT_STATUSES,
    TERMINAL,
    WAVE_STATUSES,
    RolloutState,
)

IDS = [f"a{i}" for i in range(6)]
LATE = ["l0", "l1"]
OBS = [
    Observation(True, True, 200, 0, 4.0, 4.0),  # good
    Observation(True, True, 200, 0, 9.0, 4.0),  # slow
    Observation(True, True, 200, 20, 4.0, 4.0),  # errors
    Observation(True, True, 3, 0, 4.0, 4.0),  # too few requests
    Observation(False, None),  # install failed
    Observation(None, False),  # smoke failed, install not reported
    Observation(None, None, drift_flags=("temp",)),  # drift before the install result
    Observation(True, None),  # installed, smoke pending
]
GATES = Gates(min_requests=100, max_error_rate=0.05, max_p99_ratio=1.5, no_drift=True)

plans = st.builds(
    lambda strategy, canary, ramp, policy, approval, late, bake, timeout: RolloutPlan(
        model="m", version="v2", target="site=a", strategy=strategy,
        canary_agents=canary if strategy == "canary" else None,
        ramp=ramp if strategy == "canary" else "rest",
        wave_sizes=(1, 2) if ramp == "sizes" and strategy == "canary" else (),
        wave_percents=(30.0, 60.0) if ramp == "percents" and strategy == "canary" else (),
        failure_policy=policy, approval_required=approval, late_joiners=late, bake_seconds=bake,
        agent_timeout_seconds=timeout, gates=GATES).validate(),
    st.sampled_from(["all_at_once", "canary"]), st.integers(1, 3), st.sampled_from(["rest", "sizes", "double",
                                                                                    "percents"]),
    st.sampled_from(["halt", "rollback_wave", "rollback_all"]), st.booleans(), st.sampled_from(["include", "exclude"]),
    st.sampled_from([0.0, 10.0, 50.0]), st.sampled_from([5.0, 60.0]),
)
records = st.builds(lambda i, online, site, v: AgentRecord(i, {"site": site}, online, v),
                    st.sampled_from(IDS + LATE), st.booleans(), st.sampled_from(["a", "a", "b"]),
                    st.sampled_from(["v1", None]))
agent_ids = st.sampled_from(IDS + LATE + ["ghost"])
events = st.one_of(
    st.builds(AgentProgress, agent_ids, st.sampled_from(["transferring", "verifying", "baking", "failed",
                                                         "rolled_back"]), st.just("r")),
    st.builds(AgentProgress, agent_ids, st.sampled_from(["baking"])),
    st.builds(AgentReport, agent_ids, st.sampled_from(OBS)),
    st.just(Tick()),
    st.builds(Pause), st.builds(Resume), st.builds(Approve),
    st.builds(Abort, by=st.just("op"), why=st.just("test"), rollback=st.booleans()),
    st.builds(lambda rs: AgentsSeen(tuple(rs)), st.lists(records, max_size=3)),
)
steps = st.lists(st.tuples(events, st.sampled_from([0.0, 1.0, 7.0, 30.0, 70.0])), max_size=60)
fleets = st.lists(st.tuples(st.booleans(), st.sampled_from(["a", "b"]), st.sampled_from(["v1", None])),
                  min_size=len(IDS), max_size=len(IDS))


def shape(s: RolloutState):
    return s.status, [(w.status, {i: a.status for i, a in w.agents.items()}) for w in s.waves]


class Oracle:
    def __init__(self, s: RolloutState) -> None:
        self.deployed: set[str] = set()
        self.activated: set[str] = set()
        self.reverted: set[str] = set()
        self.refused: set[str] = set()  # failed before activating
        self.rolled: set[str] = set()
        self.phases = 0
        self.ran_before: dict[str, str | None] = {}

    def before(self, s: RolloutState, ev) -> None:
        """Track what the agents did, from the events only (the machine's own verdicts are not trusted)."""
        if s.status in TERMINAL or s.status in ("planned", "halted", "rolling_back"):
            return
        agent = getattr(ev, "agent", None)
        w = s.wave_of(agent) if agent else None
        if w is None or w.agents[agent].status in AGENT_FINAL:
            return
        if isinstance(ev, AgentProgress):
            if ev.stage == "baking":
                self.activated.add(agent)
            elif ev.stage == "rolled_back":
                self.reverted.add(agent)
            elif ev.stage == "failed" and agent not in self.activated:
                self.refused.add(agent)
        elif isinstance(ev, AgentReport) and s.status in ("running", "baking", "paused"):
            if ev.observation.installed_ok:
                self.activated.add(agent)
            elif evaluate(s.plan.gates, ev.observation).status == FAIL:
                self.refused.add(agent)

    def after(self, prev: RolloutState, s: RolloutState, actions: list) -> None:
        target = s.plan.target_spec
        rollback_now: set[str] = set()
        for a in actions:
            if isinstance(a, Deploy):
                assert s.status == "running" and a.version == "v2" and a.agents
                for i in a.agents:
                    rec = s.agents[i]
                    assert i not in self.deployed, f"{i} deployed twice"
                    assert rec.online and target.matches(rec) and i not in s.late_excluded
                    assert s.plan.late_joiners == "include" or i in s.initial_targets
                    self.deployed.add(i)
                    self.ran_before[i] = rec.version
            elif isinstance(a, Rollback):
                assert not rollback_now & set(a.agents)
                rollback_now |= set(a.agents)
                assert all(self.ran_before[i] == a.to_version for i in a.agents)  # the version it ran at deploy
        if s.rollback_scope and not prev.rollback_scope:  # a rollback phase began (possibly with nothing to do)
            assert not self.rolled, "a second rollback phase"
            self.rolled = rollback_now or {"-"}
            scope_waves = s.waves[-1:] if s.rollback_scope == "wave" else s.waves
            scope = {i for w in scope_waves for i in w.agents}
            assert scope <= self.deployed
            assert rollback_now == scope - self.reverted - self.refused, (rollback_now, scope, self.__dict__)
            self.phases += 1
        else:
            assert not rollback_now, "rollback outside a rollback phase"


def check_invariants(s: RolloutState) -> None:
    assert s.status in ROLLOUT_STATUSES
    seen: set[str] = set()
    for n, w in enumerate(s.waves):
        assert w.index == n and w.status in WAVE_STATUSES and w.agents
        assert not seen & set(w.agents), "an agent in two waves"
        seen |= set(w.agents)
        assert all(a.status in AGENT_STATUSES for a in w.agents.values())
        if n < len(s.waves) - 1:
            assert w.status in ("passed", "failed") and (w.status == "passed" or s.status in (
                "halted", "rolling_back", "rolled_back", "aborted"))
    if s.status == "completed":
        assert all(w.status == "passed" for w in s.waves)
        assert all(a.status == "healthy" for w in s.waves for a in w.agents.values())
    if s.status in ("halted", "rolled_back", "aborted"):
        assert s.reason
    sent = any(a.rollback == "sent" for w in s.waves for a in w.agents.values())
    assert sent == (s.status == "rolling_back")
    if s.status == "awaiting_approval":
        assert s.plan.approval_required and s.waves[-1].status == "passed"
    if s.status == "paused":
        assert s.paused_from in ("running", "baking", "awaiting_approval")
    seqs = [r.seq for r in s.audit]
    assert seqs == list(range(1, len(seqs) + 1))
    assert RolloutState.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def apply(s: RolloutState, ev, now: float, oracle: Oracle) -> RolloutState:
    snapshot = s.to_dict()
    oracle.before(s, ev)
    try:
        new, actions = step(s, ev, now)
    except RolloutStateError:
        assert isinstance(ev, (Pause, Resume, Approve, Abort)) and s.to_dict() == snapshot
        return s
    assert s.to_dict() == snapshot, "step modified its input"
    if s.status in TERMINAL:
        assert new is s and actions == []
    elif shape(new) != shape(s):
        assert len(new.audit) > len(s.audit), "a transition without an audit record"
    oracle.after(s, new, actions)
    check_invariants(new)
    return new


def finish(s: RolloutState, now: float, oracle: Oracle, cooperative: bool) -> RolloutState:
    """Only time, the operator's approval and (when cooperative) good reports: every rollout must end."""
    for _ in range(40):
        if s.status in TERMINAL or s.status == "halted":
            return s
        if cooperative and s.waves:
            for i, a in list(s.waves[-1].agents.items()):
                if a.status not in AGENT_FINAL:
                    s = apply(s, AgentProgress(i, "baking"), now, oracle)
                    s = apply(s, AgentReport(i, OBS[0]), now, oracle)
        ev = Resume() if s.status == "paused" else Approve() if s.status == "awaiting_approval" else Tick()
        now += s.plan.bake_seconds + s.plan.agent_timeout_seconds + 1
        s = apply(s, ev, now, oracle)
    raise AssertionError(f"rollout still {s.status} after 40 steps of time passing")


@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(plans, fleets, steps, st.booleans())
def test_random_event_sequences_keep_every_invariant(plan, fleet_spec, seq, cooperative):
    agents = [AgentRecord(i, {"site": site}, online, v) for i, (online, site, v) in zip(IDS, fleet_spec, strict=True)]
    agents[0] = AgentRecord("a0", {"site": "a"}, True, "v1")  # at least one online target
    now = 0.0
    s = new_rollout("r", plan, now)
    oracle = Oracle(s)
    s = apply(s, Start(agents=tuple(agents)), now, oracle)
    for ev, dt in seq:
        now += dt
        s = apply(s, ev, now, oracle)
    event(f"before finish: {s.status}")
    end = finish(s, now, oracle, cooperative)
    event(f"end: {end.status}, rollback phase: {bool(oracle.phases)}")
