"""The estimated-accuracy gate through the real hub runtime: a canary whose accuracy estimate falls on real
traffic is halted (issue 14), with no label anywhere.

A real agent process serves the calibrated sensor model v1; the hub runtime rolls v2 out to it with the
gate ``max_estimate_drop``. During the bake the traffic is the rows v2 finds hard (covariate shift: picked
by the inputs alone), so the estimate in the agent's drift windows falls below v2's reference, and the
runtime halts the rollout with that reason.
"""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import pytest

from edgeloop.hub.export import evaluate_onnx
from edgeloop.hub.runtime import HubRuntime

pytestmark = pytest.mark.broker


def _post(url: str, doc: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(doc).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_a_canary_whose_estimated_accuracy_falls_on_real_traffic_is_halted_by_the_runtime(
        trained, fleet, online_agent, mosquitto):
    hub, ds, v1, v2 = trained.hub, trained.dataset, trained.v1, trained.v2
    aid, proc = online_agent(drift={"window_rows": 100, "min_rows": 50}, serving_report_seconds=0.5)
    out = fleet.deploy(aid, trained.b1.path.read_bytes(), model="sensor-mlp", version=v1.version["version"],
                       timeout=60)
    assert out.ok, (out.message, proc.log())
    served = (v2.folder / f"model.{v2.version['chosen']}.onnx").read_bytes()
    conf = np.asarray(evaluate_onnx(served, ds.X, ds.y)["probabilities"]).max(axis=1)
    hard = ds.X[conf < np.quantile(conf, 0.2)]  # the rows v2 is least sure of
    assert v2.version["metrics"]["performance"]["estimated_accuracy"] - conf[conf < np.quantile(conf, 0.2)].mean() > 0.1

    runtime = HubRuntime(hub, mosquitto.address.url, heartbeat_s=1.0, rollout_tick_s=0.2).start()
    try:
        st = hub.rollout_start(version=f"sensor-mlp:{v2.version['version']}", target=f"id:{aid}",
                               strategy="all_at_once", bake_seconds=1.0, agent_timeout_seconds=60.0,
                               failure_policy="halt",
                               gates={"min_requests": 3, "max_estimate_drop": 0.03, "min_estimate_rows": 200})

        def running() -> bool:
            return hub.rollout_status(st["id"])["status"] in ("running", "baking")

        url = f"{fleet.agents()[aid].http_url}/v2/models/sensor-mlp/infer"
        rng = np.random.default_rng(0)
        deadline = time.monotonic() + 90
        while running() and time.monotonic() < deadline:  # 100 hard rows a request: one drift window each
            rows = hard[rng.choice(len(hard), 100)]
            try:
                _post(url, {"inputs": [{"name": "features", "shape": list(rows.shape), "datatype": "FP32",
                                        "data": rows.tolist()}]})
            except OSError:  # an answer lost while the agent swaps versions
                pass
            time.sleep(0.05)
        done = hub.rollout_status(st["id"], audit=50)
        assert done["status"] == "halted", (done, proc.log()[-3000:])
        assert "estimated accuracy" in done["reason"], done["reason"]
        reports = hub.registry.list_drift_reports(aid, model="sensor-mlp", version=v2.version["version"])
        perf = [r["report"]["performance"] for r in reports if r["report"].get("performance")]
        assert perf and all(p["flagged"] for p in perf[-2:])  # the agent's own windows say the same
    finally:
        runtime.stop()
