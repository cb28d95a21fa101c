"""The rollout gate on estimated accuracy: plan validation, the rule, pooling drift reports, the machine halting."""

from __future__ import annotations

import pytest

from edgeloop.hub.rollout.errors import PlanError
from edgeloop.hub.rollout.estimates import estimate_fields, pooled_estimate
from edgeloop.hub.rollout.events import Start
from edgeloop.hub.rollout.gates import FAIL, PASS, WAITING, Observation, evaluate
from edgeloop.hub.rollout.plan import Gates, RolloutPlan
from tests.rollout_rig import GOOD, Driver, fleet, plan

GATE = Gates(max_estimate_drop=0.03, min_estimate_rows=200)


def obs(est: float | None, rows: int = 400, margin: float = 0.01, baseline: float | None = 0.93) -> Observation:
    return Observation(installed_ok=True, smoke_ok=True, requests=rows, estimated_accuracy=est, estimate_rows=rows,
                       estimate_margin=margin, baseline_accuracy=baseline)


def test_the_rule_waits_for_rows_fails_beyond_the_interval_and_passes_otherwise():
    assert evaluate(GATE, obs(None)).status == WAITING
    assert evaluate(GATE, obs(0.80, rows=150)).status == WAITING
    assert evaluate(GATE, obs(0.90, baseline=None)).status == WAITING
    assert evaluate(GATE, obs(0.91)).status == PASS  # 2 points below
    assert evaluate(GATE, obs(0.885, margin=0.02)).status == PASS  # 4.5 below, but its interval reaches 2.5
    v = evaluate(GATE, obs(0.88, margin=0.01))
    assert v.status == FAIL and "estimated accuracy 88.0%" in v.reason and "below the baseline 93.0%" in v.reason
    assert evaluate(Gates(), obs(0.5)).status == PASS  # the gate off: nothing judged


def test_plan_validation_and_json_round_trip():
    p = plan(gates=GATE)
    again = RolloutPlan.from_dict(p.to_dict())
    assert again.gates.max_estimate_drop == 0.03 and again.gates.min_estimate_rows == 200
    for bad, msg in (({"max_estimate_drop": 1.5}, "max_estimate_drop is a fraction"),
                     ({"max_estimate_drop": 0.02, "min_estimate_rows": -1}, "min_estimate_rows must be"),
                     ({"min_estimate_rows": 100}, "without max_estimate_drop")):
        with pytest.raises(PlanError, match=msg):
            RolloutPlan.from_dict({**p.to_dict(), "gates": bad})
    o = obs(0.9)
    assert Observation.from_dict(o.to_dict()) == o


def _report(acc: float, rows: int, half: float, ref: float = 0.93, labelled: int = 0, correct: int = 0) -> dict:
    return {"performance": {"rows": rows, "accuracy": acc, "low": acc - half, "high": acc + half, "reference": ref,
                            "labelled": labelled, "correct": correct}}


def test_pooling_weights_windows_by_rows_and_prefers_the_live_models_estimate():
    reports = [_report(0.9, 100, 0.06, labelled=10, correct=9), _report(0.8, 300, 0.04), {"performance": None}, {}]
    p = pooled_estimate(reports)
    assert p is not None and p["rows"] == 400 and p["accuracy"] == pytest.approx(0.825)
    assert p["margin"] == pytest.approx(((0.06 * 100) ** 2 + (0.04 * 300) ** 2) ** 0.5 / 400)
    assert p["realized"] == pytest.approx(0.9) and p["labelled"] == 10
    assert pooled_estimate([{}, {"performance": None}]) is None
    assert estimate_fields([]) == {}
    assert estimate_fields(reports)["baseline_accuracy"] == 0.93  # the bundle's reference
    live = [_report(0.84, 500, 0.03)]  # the replaced version on the same traffic: the world changed, not the model
    f = estimate_fields(reports, live)
    assert f["baseline_accuracy"] == pytest.approx(0.84)
    assert evaluate(GATE, Observation(installed_ok=True, smoke_ok=True, requests=400, **f)).status == PASS


def test_a_canary_whose_estimate_falls_is_halted_and_nobody_else_gets_the_version():
    d = Driver(plan(gates=Gates(min_requests=100, max_estimate_drop=0.03, min_estimate_rows=200),
                    failure_policy="halt"))
    d(Start(agents=fleet(4)))
    [canary] = d.current()
    fields = estimate_fields([_report(0.85, 200, 0.02), _report(0.86, 200, 0.02)])
    d.activate([canary], Observation(**{**GOOD.to_dict(), **fields}))
    assert d.state.status == "halted" and "estimated accuracy" in d.state.reason
    assert [x.agents for x in d.deploys()] == [(canary,)]
