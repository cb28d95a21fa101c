"""Accuracy without labels end to end: a real agent process serving a calibrated bundle on a real Mosquitto.

The agent (isolated from torch and the hub) puts its accuracy estimate in every drift window; feedback
labels sent over HTTP add the realized accuracy; the hub stores the reports and shows estimate beside
realized. Then the traffic shifts (towards the rows the model finds hard, chosen by their inputs only:
covariate shift), the estimate falls, and the rollout gate on estimated accuracy, fed from those very
reports, halts a canary running that version.
"""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from edgeloop.agent.capture import CaptureSettings
from edgeloop.hub.export import evaluate_onnx
from edgeloop.hub.rollout.estimates import estimate_fields
from edgeloop.hub.rollout.events import Start
from edgeloop.hub.rollout.gates import Observation
from edgeloop.hub.rollout.plan import Gates
from edgeloop.hub.rollout.selector import AgentRecord
from edgeloop.hub.views import drift_overview_lines
from tests.conftest import wait_until
from tests.rollout_rig import Driver, plan

pytestmark = pytest.mark.broker

WINDOW = 150


def _post(url: str, doc: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(doc).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_estimate_and_realized_accuracy_reach_the_hub_and_a_falling_canary_is_halted(trained, fleet, online_agent):
    hub, ds, v1 = trained.hub, trained.dataset, trained.v1
    aid, proc = online_agent(drift={"window_rows": WINDOW, "min_rows": 100},
                             capture=CaptureSettings(enabled=True, max_rows=2000, upload_rows=100_000))
    out = fleet.deploy(aid, trained.b1.path.read_bytes(), model="sensor-mlp", version=v1.version["version"],
                       timeout=30)
    assert out.ok, (out.message, proc.log())
    url = f"{fleet.agents()[aid].http_url}/v2/models/sensor-mlp"
    served = (v1.folder / f"model.{v1.version['chosen']}.onnx").read_bytes()
    ev = evaluate_onnx(served, ds.X, ds.y)
    right = np.asarray(ev["predictions"]) == ds.y
    conf = np.asarray(ev["probabilities"]).max(axis=1)
    rng = np.random.default_rng(0)

    def window(idx: np.ndarray, tag: str) -> int:
        """One drift window: 100 rows, their labels (feedback), then 50 rows that close it."""
        a, b = idx[:100], idx[100:]
        _post(f"{url}/infer", {"id": f"{tag}-a", "inputs": [{"name": "features", "shape": [len(a), ds.n_features],
                                                             "datatype": "FP32", "data": ds.X[a].tolist()}]})
        got = _post(f"{url}/feedback", {"id": f"{tag}-a", "label": [ds.labels[i] for i in ds.y[a]]})
        assert got["labelled_rows"] == 100, got
        _post(f"{url}/infer", {"id": f"{tag}-b", "inputs": [{"name": "features", "shape": [len(b), ds.n_features],
                                                             "datatype": "FP32", "data": ds.X[b].tolist()}]})
        return int(right[a].sum())

    calm = rng.choice(ds.n_rows, WINDOW, replace=False)
    calm_correct = window(calm, "calm")
    hard = np.flatnonzero(conf < np.quantile(conf, 0.2))  # covariate shift: picked by the inputs alone
    shifted = [window(rng.choice(hard, WINDOW), f"hard{i}") for i in range(2)]

    def reports() -> list[dict]:
        return hub.registry.list_drift_reports(aid, model="sensor-mlp")

    assert wait_until(lambda: len(reports()) >= 3, 20), proc.log()
    rows = sorted(reports(), key=lambda r: r["window"])
    perf = [r["report"]["performance"] for r in rows]
    ref = v1.version["metrics"]["performance"]
    assert all(p is not None for p in perf)
    assert perf[0]["reference"] == pytest.approx(ref["estimated_accuracy"])
    assert (perf[0]["labelled"], perf[0]["correct"]) == (100, calm_correct)  # realized, beside the estimate
    assert abs(perf[0]["accuracy"] - conf[calm].mean()) < 1e-4 and not perf[0]["flagged"]
    for p, correct in zip(perf[1:3], shifted, strict=True):
        assert (p["labelled"], p["correct"]) == (100, correct)
        assert p["flagged"] and p["accuracy"] < ref["estimated_accuracy"] - 0.05  # the estimate fell ...
        assert p["realized"] < ref["accuracy"] - 0.05  # ... because the realized accuracy did

    overview = hub.drift_overview(aid, "sensor-mlp")[0]["agents"][0]["performance"]
    assert overview["labelled_windows"] == 3 and overview["mean_abs_error"] is not None
    series = hub.accuracy_series(aid, "sensor-mlp")
    assert [p["realized"] for p in series["points"]] == [p["realized"] for p in perf]
    text = "\n".join(drift_overview_lines(hub.drift_overview(aid, "sensor-mlp")))
    assert "accuracy estimate" in text and "BELOW REFERENCE" in text and "realized" in text

    # the rollout gate, fed from the canary's real drift reports, halts the rollout
    d = Driver(plan(gates=Gates(min_requests=100, max_estimate_drop=0.03, min_estimate_rows=200),
                    failure_policy="halt"))
    d(Start(agents=(AgentRecord(aid, {"site": "plant-a"}, True, "v1"),
                    *(AgentRecord(f"zz-{i}", {"site": "plant-a"}, True, "v1") for i in range(2)))))
    assert d.current() == [aid]
    fields = estimate_fields([r["report"] for r in rows[1:3]])
    assert fields["estimate_rows"] == 2 * WINDOW and fields["baseline_accuracy"] == pytest.approx(
        ref["estimated_accuracy"])
    d.activate([aid], Observation(installed_ok=True, smoke_ok=True, requests=3 * WINDOW, **fields))
    assert d.state.status == "halted" and "estimated accuracy" in d.state.reason, d.state.reason
    assert [dep.agents for dep in d.deploys()] == [(aid,)]  # nobody else got the version
