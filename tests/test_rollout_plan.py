"""The rollout plan (validation, wave sizes, JSON form) and the gates (pass / fail with a reason / waiting)."""

import json
from dataclasses import replace

import pytest

from edgeloop.hub.rollout.errors import PlanError
from edgeloop.hub.rollout.gates import FAIL, PASS, WAITING, Observation, evaluate
from edgeloop.hub.rollout.plan import PLAN_SCHEMA, Gates, RolloutPlan
from tests.rollout_rig import GATES, GOOD, plan


@pytest.mark.parametrize("kw, n, counts", [
    (dict(strategy="all_at_once", canary_agents=None), 7, [7]),
    (dict(), 7, [1, 6]),
    (dict(canary_agents=None, canary_percent=10), 25, [3, 22]),  # ceil(2.5)
    (dict(canary_agents=None, canary_percent=1), 5, [1, 4]),  # at least one
    (dict(canary_agents=3), 2, [2]),  # never more than there are
    (dict(ramp="sizes", wave_sizes=(2, 3)), 10, [1, 2, 3, 4]),  # the rest in a last wave
    (dict(ramp="sizes", wave_sizes=(5, 5)), 4, [1, 3]),
    (dict(ramp="double"), 20, [1, 2, 4, 8, 5]),
    (dict(canary_agents=2, ramp="double"), 5, [2, 3]),
    (dict(ramp="percents", wave_percents=(25, 50, 100)), 20, [1, 4, 5, 10]),
    (dict(ramp="percents", wave_percents=(5, 50)), 20, [1, 9, 10]),  # 5 % of 20 is the canary already
    (dict(), 0, []),
])
def test_wave_counts(kw, n, counts):
    got = plan(**kw).wave_counts(n)
    assert got == counts and sum(got) == n


@pytest.mark.parametrize("kw, words", [
    (dict(strategy="blue-green"), "strategy 'blue-green' is unknown"),
    (dict(canary_agents=None), "exactly one of canary_agents"),
    (dict(canary_percent=5), "exactly one of canary_agents"),
    (dict(canary_agents=0), "canary_agents must be a whole number >= 1"),
    (dict(canary_agents=None, canary_percent=100), "canary_percent must be between 0 and 100"),
    (dict(ramp="sizes"), "ramp sizes needs wave_sizes"),
    (dict(wave_sizes=(2,)), "ramp is not 'sizes'"),
    (dict(ramp="percents", wave_percents=(50, 20)), "must increase"),
    (dict(strategy="all_at_once", canary_agents=None, ramp="double"), "all_at_once has a single wave"),
    (dict(bake_seconds=-1), "bake_seconds must be a number of seconds >= 0"),
    (dict(agent_timeout_seconds=0), "agent_timeout_seconds must be a number of seconds > 0"),
    (dict(failure_policy="retry"), "failure_policy 'retry' is unknown"),
    (dict(late_joiners="maybe"), "late_joiners 'maybe' is unknown"),
    (dict(memory_limit_mb=0), "memory_limit_mb"),
    (dict(target="site==a"), "not understood"),
    (dict(version=""), "version is empty"),
    (dict(gates=Gates(max_error_rate=2)), "max_error_rate is a fraction between 0 and 1"),
    (dict(gates=Gates(max_p99_ratio=0)), "max_p99_ratio is a positive ratio"),
    (dict(gates=Gates(min_shadow_requests=50)), "set both or neither"),
    (dict(gates=Gates(min_requests=-1)), "min_requests must be a whole number"),
])
def test_invalid_plans_are_refused_with_the_specific_problem(kw, words):
    with pytest.raises(PlanError) as e:
        plan(**kw)
    assert any(words in p for p in e.value.problems), e.value.problems
    assert "fix these" in str(e.value) and e.value.code == "bad_plan"


def test_every_problem_is_listed_at_once():
    with pytest.raises(PlanError) as e:
        plan(strategy="x", bake_seconds=-1, failure_policy="y")
    assert len(e.value.problems) == 3


def test_plan_json_round_trip_and_schema():
    p = plan(ramp="percents", wave_percents=(10, 50), approval_required=True, memory_limit_mb=256,
             gates=Gates(min_requests=10, no_drift=True, min_shadow_agreement=0.98, min_shadow_requests=100))
    d = json.loads(json.dumps(p.to_dict()))
    assert d["schema"] == PLAN_SCHEMA and RolloutPlan.from_dict(d) == p
    with pytest.raises(PlanError, match="schema 99 is not supported"):
        RolloutPlan.from_dict({**d, "schema": 99})
    with pytest.raises(PlanError, match="unknown plan field.*colour"):
        RolloutPlan.from_dict({**d, "colour": "red"})
    with pytest.raises(PlanError, match="unknown gate.*max_latency"):
        RolloutPlan.from_dict({**d, "gates": {"max_latency": 3}})
    with pytest.raises(PlanError, match="lacks target"):
        RolloutPlan.from_dict({"model": "m", "version": "v2"})
    assert RolloutPlan.from_dict({"model": "m", "version": "v2", "target": "hw=pi5"}).strategy == "canary"


# --- gates -----------------------------------------------------------------------------------
ALL = Gates(min_requests=100, max_error_rate=0.01, max_p99_ratio=1.5, no_drift=True, min_shadow_agreement=0.95,
            min_shadow_requests=50)
OK = replace(GOOD, shadow_agreement=0.99, shadow_requests=60)


@pytest.mark.parametrize("obs, status, words", [
    (OK, PASS, "all gates pass"),
    (replace(OK, installed_ok=False), FAIL, "did not install"),
    (replace(OK, smoke_ok=False), FAIL, "failed its smoke test"),
    (replace(OK, smoke_ok=None), WAITING, "smoke test"),
    (replace(OK, drift_flags=("temp", "vibration")), FAIL, "drift was flagged on temp, vibration"),
    (replace(OK, requests=40), WAITING, "40 of 100 requests"),
    (replace(OK, errors=3), FAIL, "error rate 1.5% (3 of 200 requests) is above the allowed 1.0%"),
    (replace(OK, errors=2), PASS, ""),
    (replace(OK, latency_p99_ms=6.4), FAIL, "p99 latency 6.40 ms is 1.60x the replaced version's 4.00 ms"),
    (replace(OK, latency_p99_ms=6.0), PASS, ""),
    (replace(OK, latency_p99_ms=None), WAITING, "p99 latency of the new version"),
    (replace(OK, replaced_p99_ms=None, latency_p99_ms=50.0), PASS, ""),  # nothing replaced: no ratio to judge
    (replace(OK, shadow_requests=10), WAITING, "10 of 50 shadow requests"),
    (replace(OK, shadow_agreement=0.9), FAIL, "shadow agreement 90.0% over 60 requests is below the required 95.0%"),
])
def test_gates(obs, status, words):
    v = evaluate(ALL, obs)
    assert v.status == status and words in v.reason


def test_gates_that_are_off_do_not_judge():
    bad = Observation(installed_ok=False, smoke_ok=False, requests=1, errors=1, latency_p99_ms=99, replaced_p99_ms=1,
                      drift_flags=("x",), shadow_agreement=0.1, shadow_requests=1)
    assert evaluate(Gates(install_and_smoke=False), bad).status == PASS
    assert evaluate(GATES, Observation()).status == WAITING


def test_observation_round_trip_and_unknown_fields():
    o = replace(OK, drift_flags=("a",))
    assert Observation.from_dict(json.loads(json.dumps(o.to_dict()))) == o
    with pytest.raises(Exception, match="unknown field.*cpu"):
        Observation.from_dict({"cpu": 3})


def test_the_plan_in_docs_rollouts_md_is_valid_and_its_examples_hold():
    from tests.conftest import REPO

    text = (REPO / "docs" / "rollouts.md").read_text(encoding="utf-8")
    block = text.split("```json\n", 1)[1].split("```", 1)[0]
    p = RolloutPlan.from_dict(json.loads(block))
    assert p.wave_counts(20) == [1, 2, 4, 8, 5] and "1, 2, 4, 8, 5" in text
    assert replace(p, ramp="percents", wave_percents=(25, 50, 100)).validate().wave_counts(20) == [1, 4, 5, 10]
    assert "1, 4, 5, 10" in text
