"""Rollout state machine scenarios: waves, gates, halts and rollbacks, pause / approve, timeouts, late joiners,
a JSON round trip mid-rollout. Pure: events in, actions out, no broker."""

from dataclasses import replace

import pytest

from edgeloop.hub.rollout.errors import RolloutError, RolloutStateError
from edgeloop.hub.rollout.events import (
    Abort,
    AgentProgress,
    AgentsSeen,
    Approve,
    Deploy,
    Pause,
    Resume,
    Rollback,
    Start,
    Tick,
)
from edgeloop.hub.rollout.machine import conflicting_rollouts
from edgeloop.hub.rollout.selector import AgentRecord
from edgeloop.hub.rollout.state import RolloutState
from tests.rollout_rig import FEW, GOOD, SLOW, Driver, fleet, plan


def test_good_version_completes_wave_by_wave():
    d = Driver(plan(ramp="sizes", wave_sizes=(2, 3)))
    d(Start(agents=fleet(10)))
    for expected in (1, 2, 3, 4):
        assert [len(x.agents) for x in d.deploys()][-1] == expected and d.state.status == "running"
        wave = d.current()
        d.activate(wave)
        assert d.state.status == "baking" and len(d.deploys()) == len(d.state.waves)  # no next wave before the bake
        d.bake()
    assert d.state.status == "completed" and d.state.reason is None
    assert [w.name for w in d.state.waves] == ["canary", "wave 2", "wave 3", "wave 4"]
    assert all(w.status == "passed" for w in d.state.waves) and not d.rollbacks()
    assert sorted(i for x in d.deploys() for i in x.agents) == [a.id for a in fleet(10)]
    assert {x.version for x in d.deploys()} == {"v2"}


@pytest.mark.parametrize("policy", ["rollback_wave", "halt"])
def test_canary_failing_the_latency_gate_halts_and_rolls_back_the_canary_only(policy):
    d = Driver(plan(failure_policy=policy))
    d(Start(agents=fleet(6)))
    [canary] = d.current()
    d.activate([canary], SLOW)
    assert len(d.deploys()) == 1 and d.deploys()[0].agents == (canary,)  # nobody else got it
    assert "p99 latency 9.00 ms is 2.25x" in d.state.reason and d.state.waves[0].status == "failed"
    if policy == "halt":
        assert d.state.status == "halted" and not d.rollbacks()
        with pytest.raises(RolloutStateError, match="halted.*abort it"):
            d(Resume())
        d(Abort(by="ana", why="bad build", rollback=True))
    assert d.state.status == "rolling_back"
    assert d.rollbacks() == [Rollback((canary,), "m", "v1", d.state.reason)]
    d(AgentProgress(canary, "rolled_back"), 1)
    assert d.state.status == "rolled_back" and d.state.waves[0].agents[canary].status == "rolled_back"
    assert "p99" in d.state.reason and len(d.state.waves) == 1
    assert d(Tick(), 10_000) == []  # terminal: nothing more happens


def test_rollback_all_targets_every_agent_that_got_the_new_version():
    d = Driver(plan(failure_policy="rollback_all", ramp="sizes", wave_sizes=(3,)))
    d(Start(agents=fleet(5, version="v1") + (AgentRecord("new-1", {"site": "plant-a"}, True, None),)))
    d.activate(d.current())
    d.bake()
    w2 = d.current()
    assert len(w2) == 3
    d.activate(w2[:1])  # activated and baking
    d(AgentProgress(w2[2], "transferring"), 1)  # still transferring: it may yet activate, so it is rolled back too
    d(AgentProgress(w2[1], "failed", "signature did not verify"), 1)  # refused before activating: left alone
    targets = sorted(i for r in d.rollbacks() for i in r.agents)
    assert targets == sorted([*d.state.waves[0].agents, w2[0], w2[2]]) and "new-1" in targets
    assert d.state.rollback_scope == "all" and "signature did not verify" in d.state.reason
    assert {r.to_version for r in d.rollbacks()} == {None, "v1"}


def test_rollback_to_the_version_each_agent_ran():
    agents = fleet(2, version="v1") + (AgentRecord("fresh", {"site": "plant-a"}, True, None),)
    d = Driver(plan(strategy="all_at_once", canary_agents=None))
    d(Start(agents=agents))
    d.activate(d.current(), replace(GOOD, smoke_ok=False))
    assert sorted((r.to_version or "-", r.agents) for r in d.rollbacks()) == [("-", ("fresh",)),
                                                                            ("v1", ("pi-00", "pi-01"))]


def test_pause_stops_new_waves_and_resume_goes_on():
    d = Driver(plan())
    d(Start(agents=fleet(4)))
    d.activate(d.current())
    d(Pause(by="ana", why="shift change"))
    d.bake()
    assert d.state.status == "paused" and d.state.waves[0].status == "passed" and len(d.deploys()) == 1
    with pytest.raises(RolloutStateError, match="not paused"):
        d(Resume()), d(Resume())
    assert d.state.status == "running" and len(d.deploys()) == 2
    assert any(r.actor == "ana" and r.what.startswith("paused") and r.why == "shift change" for r in d.state.audit)


def test_a_failure_during_a_pause_still_rolls_back():
    d = Driver(plan())
    d(Start(agents=fleet(3)))
    d(Pause())
    d.activate(d.current(), SLOW)
    assert d.state.status == "rolling_back" and d.state.paused_from is None


def test_approve_next_wave():
    d = Driver(plan(approval_required=True, ramp="sizes", wave_sizes=(1,)))
    d(Start(agents=fleet(3)))
    with pytest.raises(RolloutStateError, match="approve when it awaits approval"):
        d(Approve())
    d.activate(d.current())
    d.bake()
    assert d.state.status == "awaiting_approval" and len(d.deploys()) == 1
    d(Tick(), 10_000)
    assert d.state.status == "awaiting_approval" and len(d.deploys()) == 1  # waits for the operator, not the clock
    d(Pause()), d(Resume())
    assert d.state.status == "awaiting_approval"
    d(Approve(by="ben"))
    assert len(d.deploys()) == 2 and d.state.status == "running"
    d.activate(d.current())
    d.bake()
    d(Approve(by="ben"))
    d.activate(d.current())
    d.bake()
    assert d.state.status == "completed"  # no approval asked when nothing is left


def test_a_stuck_agent_times_out_visibly_and_never_blocks():
    d = Driver(plan(strategy="all_at_once", canary_agents=None, agent_timeout_seconds=100))
    d(Start(agents=fleet(3)))
    a, b, c = d.current()
    d.activate([a, b])
    d(AgentProgress(c, "transferring"), 1)
    d(Tick(), 99)
    assert d.state.waves[0].agents[c].status == "transferring"
    d(Tick(), 2)
    run = d.state.waves[0].agents[c]
    assert run.status == "timed_out" and "stuck in transferring for 100 s" in run.reason
    assert d.state.status == "rolling_back" and sorted(d.rollbacks()[0].agents) == [a, b, c]
    d(AgentProgress(a, "rolled_back"))
    d(AgentProgress(b, "rolled_back"))
    d(Tick(), 100)  # c never answers: its rollback times out too, and the rollout ends
    assert d.state.status == "rolled_back" and d.state.waves[0].agents[c].rollback == "timed_out"


def test_an_agent_that_reports_too_little_times_out_after_the_bake():
    d = Driver(plan(bake_seconds=60, agent_timeout_seconds=100, failure_policy="halt"))
    d(Start(agents=fleet(2)))
    d.activate(d.current(), FEW)
    d(Tick(), 150)
    assert d.state.status == "baking"
    d(Tick(), 20)
    assert d.state.status == "halted" and "not enough data" in d.state.reason and "3 of 100 requests" in d.state.reason


def test_a_device_that_reverts_on_its_own_fails_its_wave_and_is_not_rolled_back_again():
    d = Driver(plan(strategy="all_at_once", canary_agents=None))
    d(Start(agents=fleet(2)))
    a, b = d.current()
    d.activate([a, b])
    d(AgentProgress(a, "rolled_back", "smoke test failed after the swap"), 1)
    assert "reverted on its own: smoke test failed" in d.state.reason
    assert [r.agents for r in d.rollbacks()] == [(b,)]


def test_late_joiners_included():
    d = Driver(plan(ramp="sizes", wave_sizes=(1,)))
    d(Start(agents=fleet(3)))
    d(AgentsSeen((AgentRecord("late-1", {"site": "plant-a"}), AgentRecord("other", {"site": "plant-b"}))))
    d.activate(d.current())
    d.bake()
    d.activate(d.current())
    d.bake()
    assert d.current() == ["pi-02", "late-1"]  # the last wave takes the rest, late joiners included (last)
    d.activate(d.current())
    d(AgentsSeen((AgentRecord("late-2", {"site": "plant-a"}),)))
    d.bake()
    assert d.state.waves[-1].name == "wave 4 (late joiners)" and d.current() == ["late-2"]
    d.activate(d.current())
    d.bake()
    assert d.state.status == "completed" and "other" not in {i for x in d.deploys() for i in x.agents}


def test_late_joiners_excluded_are_listed_and_offline_targets_not_reached():
    d = Driver(plan(late_joiners="exclude"))
    d(Start(agents=fleet(2) + (AgentRecord("off", {"site": "plant-a"}, online=False),)))
    d(AgentsSeen((AgentRecord("late-1", {"site": "plant-a"}),)))
    assert d.state.late_excluded == ["late-1"] and any("late joiner late-1 left out" in r.what for r in d.state.audit)
    for _ in range(2):
        d.activate(d.current())
        d.bake()
    assert d.state.status == "completed" and d.state.not_reached == ["off"]
    assert {i for x in d.deploys() for i in x.agents} == {"pi-00", "pi-01"}


def test_an_offline_target_that_comes_back_is_deployed():
    d = Driver(plan(late_joiners="exclude"))
    d(Start(agents=fleet(2) + (AgentRecord("off", {"site": "plant-a"}, online=False),)))
    d.activate(d.current())
    d(AgentsSeen((AgentRecord("off", {"site": "plant-a"}, online=True),)))
    d.bake()
    assert d.current() == ["off", "pi-01"]


def test_start_needs_an_online_target_and_operator_commands_need_the_right_status():
    d = Driver(plan())
    with pytest.raises(RolloutError, match="matches no online agent.*check the agents' tags"):
        d(Start(agents=fleet(2, online=False)))
    with pytest.raises(RolloutStateError):
        d(Pause())
    d(Start(agents=fleet(2)))
    with pytest.raises(RolloutStateError, match="already started"):
        d(Start())
    d(Abort(by="ana", why="wrong model"))
    assert d.state.status == "aborted" and d.state.reason == "aborted by ana: wrong model"
    before = d.state
    assert d(AgentProgress("pi-00", "baking")) == [] and d.state is before
    with pytest.raises(RolloutStateError, match="start a new rollout"):
        d(Resume())


def test_step_never_modifies_its_input():
    d = Driver(plan())
    d(Start(agents=fleet(3)))
    snapshot = d.state.to_dict()
    held = d.state
    d.activate(d.current(), SLOW)
    assert held.to_dict() == snapshot and d.state.status == "rolling_back"


def _script(d: Driver) -> list:
    """A rollout with a pause, an approval, a late joiner, a stuck agent and a gate failure in wave 3."""
    return [
        lambda: d(Start(agents=fleet(8))),
        lambda: d.activate(d.current()),
        lambda: d(Pause(by="ana")),
        lambda: d.bake(),
        lambda: d(Resume(by="ana")),
        lambda: d(Approve(by="ben")),
        lambda: d(AgentsSeen((AgentRecord("late", {"site": "plant-a"}),))),
        lambda: d.activate(d.current()[:-1]),
        lambda: d(Tick(), 130),  # the last agent of wave 2 is stuck: timed out, wave 2 rolled back
        lambda: [d(AgentProgress(i, "rolled_back"), 1) for i in d.current()],
    ]


def test_json_round_trip_mid_rollout_ends_where_the_uninterrupted_run_ends():
    p = plan(approval_required=True, ramp="sizes", wave_sizes=(2, 2))
    ref = Driver(p)
    for act in _script(ref):
        act()
    assert ref.state.status == "rolled_back" and "timed out" not in ref.state.reason  # sanity: the script ran
    assert "stuck in pending" in ref.state.reason
    for cut in range(1, len(_script(ref))):
        d = Driver(p)
        for i, act in enumerate(_script(d)):
            if i == cut:
                d.round_trip()  # as if the hub restarted and loaded the stored state
            act()
        assert d.state == ref.state and [a.to_dict() for a in d.actions] == [a.to_dict() for a in ref.actions]
        assert any(isinstance(a, Deploy) for a in d.actions)


def test_one_rollout_per_model_and_agent_at_a_time():
    agents = fleet(3) + fleet(2, prefix="b", site="plant-b")
    running = Driver(plan(), rollout_id="run")
    running(Start(agents=agents))
    halted = Driver(plan(target="site=plant-b", failure_policy="halt"), rollout_id="halt")
    halted(Start(agents=agents))
    halted.activate(halted.current(), SLOW)
    done = Driver(plan(strategy="all_at_once", canary_agents=None, target="id:pi-00"), rollout_id="done")
    done(Start(agents=agents))
    done(Abort())
    states = [running.state, halted.state, done.state]
    assert halted.state.status == "halted" and done.state.status == "aborted"
    assert conflicting_rollouts(states, plan(target="id:pi-00,id:b-00"), agents) == (["run"], ["halt"])
    assert conflicting_rollouts(states, plan(target="site=plant-b"), agents) == ([], ["halt"])
    assert conflicting_rollouts(states, plan(model="other"), agents) == ([], [])
    assert conflicting_rollouts(states, plan(target="id:nobody"), agents) == ([], [])


def test_a_damaged_or_foreign_stored_state_is_refused_with_the_next_step():
    d = Driver(plan())
    d(Start(agents=fleet(2)))
    good = d.state.to_dict()
    for damaged, words in [({**good, "schema": 2}, "schema 2; this hub reads 1"),
                           ({**good, "status": "exploding"}, "unknown status(es) ['exploding']"),
                           ({k: v for k, v in good.items() if k != "waves"}, "damaged (KeyError")]:
        with pytest.raises(RolloutError, match=r"upgrade the hub|abort the rollout") as e:
            RolloutState.from_dict(damaged)
        assert words in str(e.value) and e.value.code == "bad_rollout_state"
