"""The closed loop on real parts: an agent sees a shifted process, flags drift, captures labelled rows;
the hub retrains with replay of the parent's data; the child beats the parent on the new data while
forgetting at most FORGETTING_BOUND on the parent's test split, and a canary rollout of the child to that
agent passes its gates.

Real Mosquitto, a real agent process (no torch in it), real onnxruntime on the agent and in the hub's
evaluation, real PyTorch fine-tuning, a real hub runtime driving the rollout and a real SQLite registry.
The unit tests below cover the pure pieces of :mod:`edgeloop.hub.services.retrain` and its refusals on
real registry records.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import pytest

from edgeloop.agent.capture import CaptureSettings
from edgeloop.agent.wire.capture import CaptureManifest, sha256_hex, split_chunks
from edgeloop.hub.cli.parser import main
from edgeloop.hub.datasets import SENSOR_LABELS, generate_sensor_data
from edgeloop.hub.services.retrain import (
    RetrainError,
    batches_of_source,
    capture_source,
    pseudo_labelled,
    resolve_source,
    select_batches,
    verdict,
)
from tests.conftest import wait_until, write_agent_config

MODEL = "pump"
SHIFT = 1.5  # the thermometer and the mount moved by 1.5 standard deviations
FORGETTING_BOUND = 0.03  # the parent's test accuracy may drop by at most 3 points
PARENT_PARAMS = {"epochs": 25, "patience": 8, "seed": 0}
CHILD_PARAMS = {"epochs": 30, "patience": 10, "seed": 0}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A hub with the parent version ``pump:1``, trained on the undrifted process."""
    from edgeloop.hub.services import Hub
    from edgeloop.hub.training import TrainParams

    h = Hub(tmp_path_factory.mktemp("closed-loop") / "hub", actor="tests")
    data = generate_sensor_data(1200, seed=1)
    build = h.build_version(data, h.register_dataset(data, "plant"), MODEL, TrainParams(**PARENT_PARAMS),
                            quantize=False)
    assert build.id == f"{MODEL}:1" and build.metrics["test_accuracy"] > 0.9
    yield h
    h.close()


def _post(url: str, doc: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(doc).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _serve(url: str, X: np.ndarray, prefix: str) -> list[tuple[str, str, str]]:
    """One HTTP request per row; (request id, served label, version) per row."""
    out = []
    for i, row in enumerate(X):
        rid = f"{prefix}{i}"
        answer = _post(f"{url}/v2/models/{MODEL}/infer", {"id": rid, "inputs": [row.tolist()]})
        label = next(t["data"][0] for t in answer["outputs"] if t["name"] == "label")
        out.append((rid, label, answer["model_version"]))
    return out


def _canary(hub, broker, url: str, X: np.ndarray, version: str, agent: str) -> dict:
    """Roll ``version`` out to ``agent`` as a one-agent canary (install and smoke, 20 requests without an
    error, no drift flag during the bake), driven by a real hub runtime while requests keep coming."""
    from edgeloop.hub.runtime import HubRuntime

    runtime = HubRuntime(hub, broker.address.url, heartbeat_s=1.0, rollout_tick_s=0.2).start()
    stop = threading.Event()

    def traffic() -> None:
        i = 0
        while not stop.wait(0.01):
            try:
                _post(f"{url}/v2/models/{MODEL}/infer", {"id": f"c{i}", "inputs": [X[i % len(X)].tolist()]})
            except OSError:  # an answer lost while the agent swaps models: the gates count what it served
                pass
            i += 1

    thread = threading.Thread(target=traffic, daemon=True)
    try:
        assert wait_until(lambda: hub.listening()["running"], 10)
        thread.start()
        st = hub.rollout_start(version=version, target=f"id:{agent}", canary_agents=1, ramp="rest", bake_seconds=1.0,
                               agent_timeout_seconds=30.0,
                               gates={"min_requests": 20, "max_error_rate": 0.0, "no_drift": True})
        wait_until(lambda: hub.rollout_status(st["id"])["status"] not in ("running", "baking"), 60, 0.1)
        return hub.rollout_status(st["id"], audit=50)
    finally:
        stop.set()
        thread.join(10)
        runtime.stop()


@pytest.mark.broker
def test_drift_capture_retrain_with_replay_and_back_to_the_agent(hub, tmp_path, mosquitto, agent_process):
    t0 = time.perf_counter()
    aid = "press-drift"
    cfg = write_agent_config(tmp_path, aid, mosquitto, hub.key.public_pem(),
                             capture=CaptureSettings(enabled=True, max_rows=1000, upload_rows=100_000),
                             drift={"window_rows": 100, "window_seconds": 0.0, "min_rows": 50, "consecutive": 2},
                             serving_report_seconds=0.5)
    proc = agent_process(cfg)
    with hub.fleet(mosquitto.address.url) as fleet:
        assert fleet.wait_online([aid], timeout=30), proc.log()
        [dep] = hub.deploy(fleet, [aid], f"{MODEL}:1", timeout=60)
        assert dep["ok"], (dep, proc.log())
        url = fleet.agents()[aid].http_url

        # 1. the process shifts: the agent serves 300 drifted rows and flags drift on the shifted sensors
        field = generate_sensor_data(300, seed=7, shift=SHIFT)
        served = _serve(url, field.X, "f")
        assert {v for _, _, v in served} == {"1"}
        truth = [SENSOR_LABELS[int(k)] for k in field.y]
        parent_field_acc = np.mean([lab == t for (_, lab, _), t in zip(served, truth, strict=True)])

        def alarm() -> dict | None:
            view = hub.drift_overview(aid, MODEL)
            return view[0]["agents"][0] if view and view[0]["agents"][0]["alarm"] else None

        assert wait_until(lambda: alarm() is not None, 20), (hub.drift_overview(aid, MODEL), proc.log())
        assert {"temperature_c", "vibration_rms"} <= set(alarm()["drifting"])

        # 2. ground truth arrives for 9 of 10 requests; the sample is cut and reaches the hub
        for i, (rid, _, _) in enumerate(served):
            if i % 10 != 9:
                assert _post(f"{url}/v2/models/{MODEL}/feedback", {"id": rid, "label": truth[i]})["labelled_rows"] == 1
        [up] = hub.set_capture(fleet, [aid], upload=True, timeout=30)
        assert up["ok"], up
        assert wait_until(lambda: len(hub.list_captures(aid)) == 1, 30), proc.log()
        [batch] = hub.list_captures(aid)
        assert (batch["rows"], batch["labelled_rows"]) == (300, 270)

        # 3. the hub retrains with replay of the parent's data
        events = []
        result = hub.retrain_from_capture(MODEL, aid, params=CHILD_PARAMS, max_forgetting=FORGETTING_BOUND,
                                          quantize=False, progress=events.append)
        child_version = result.child.rsplit(":", 1)[1]
        assert (result.parent, result.batches, result.agents) == (f"{MODEL}:1", [batch["batch_id"]], [aid])
        assert result.child.startswith(f"{MODEL}:") and result.child != result.parent
        assert (result.rows, result.labelled_rows, result.unlabelled_rows_skipped) == (270, 270, 30)
        assert result.replay_rows == 840  # every training row of the parent (1200 rows, 70 % train)
        assert result.child_on_new > result.parent_on_new + 0.2 and result.gain > 0.2, result.to_dict()
        assert result.forgetting <= FORGETTING_BOUND and result.ready, result.to_dict()
        assert result.drifted_agents == [aid] and result.canary == aid
        assert result.next_steps[0].startswith(f"edgeloop rollout start {result.child} --target id:{aid}")
        assert {e.stage for e in events} >= {"retrain", "train"}
        print(f"\nclosed loop: gain {result.gain:+.3f} ({result.parent_on_new:.3f} -> {result.child_on_new:.3f} "
              f"on {result.new_rows_test} captured test rows), forgetting {result.forgetting:+.3f} "
              f"(bound {FORGETTING_BOUND}) on the parent's test split, parent served {parent_field_acc:.3f}")

        # lineage: capture batch -> dataset -> run -> child, continued from the parent
        child = hub.registry.get_version(result.child)
        assert child["parent_version"] == result.parent
        lin = hub.lineage(result.child)
        assert lin["dataset"]["id"] == result.dataset_id and lin["run"]["id"] == result.run_id
        assert [c["batch_id"] for c in lin["captures"]] == [batch["batch_id"]]
        assert lin["versions"][0]["ancestors"][0]["id"] == result.parent

        # 4. real onnxruntime on data of the shifted process the loop never saw: the child is better
        fresh = generate_sensor_data(400, seed=11, shift=SHIFT)
        ds = hub.register_dataset(fresh, "shifted-test")["id"]
        acc = {v: hub.evaluate(v, ds)["evaluations"][0]["metrics"]["accuracy"] for v in (result.parent, result.child)}
        assert acc[result.child] > acc[result.parent] + 0.1, acc

        # 5. a canary rollout of the child to the agent that drifted, judged by its gates while it serves
        st = _canary(hub, mosquitto, url, field.X, result.child, result.canary)
        [wave] = st["state"]["waves"]  # one target agent: the canary is the only wave
        assert (st["status"], wave["status"]) == ("completed", "passed"), st
        [agent] = wave["agents"]
        assert (agent["id"], agent["status"]) == (aid, "healthy") and agent["observation"]["requests"] >= 20, st
        again = _serve(url, field.X[:150], "g")  # the agent now answers the shifted process better
        assert {v for _, _, v in again} == {child_version}
        child_field_acc = np.mean([lab == t for (_, lab, _), t in zip(again, truth[:150], strict=True)])
        assert child_field_acc > np.mean([lab == t for (_, lab, _), t in zip(served[:150], truth[:150],
                                                                               strict=True)]) + 0.1
    print(f"closed loop: field accuracy on the agent {parent_field_acc:.3f} (parent) -> {child_field_acc:.3f} "
          f"(child, first 150 rows); evaluation {acc}; {time.perf_counter() - t0:.1f} s")


# --- the pure pieces -------------------------------------------------------------------------------------
AGENTS = [{"agent_id": "pi-01", "tags": {"site": "plant-a", "hw": "pi5"}},
          {"agent_id": "pi-02", "tags": {"site": "plant-a", "hw": "pi4"}},
          {"agent_id": "pi-03", "tags": {"site": "plant-b"}}]


def test_a_source_is_an_agent_or_a_tag_selector():
    assert resolve_source("pi-02", AGENTS, []) == ["pi-02"]
    assert resolve_source("gone-07", AGENTS, ["gone-07"]) == ["gone-07"]  # captured, no longer listed
    assert resolve_source("site=plant-a", AGENTS, []) == ["pi-01", "pi-02"]
    assert resolve_source("site=plant-a,hw!=pi4", AGENTS, []) == ["pi-01"]
    with pytest.raises(RetrainError, match="known agents: pi-01, pi-02, pi-03; tags: .*site=plant-b") as exc:
        resolve_source("site=plant-z", AGENTS, [])
    assert exc.value.code == "unknown_source"
    with pytest.raises(RetrainError, match="neither an agent nor a tag selector"):
        resolve_source("a b", AGENTS, [])


def _rec(batch: str, agent: str, model: str = MODEL, version: str = "1", at: float = 0.0) -> dict:
    return {"batch_id": batch, "agent_id": agent, "model": model, "version": version, "received_at": at,
            "last_at": at}


def test_batches_are_selected_by_agent_model_and_time_or_refused_with_the_next_step():
    caps = [_rec("b1", "pi-01", at=1.0), _rec("b2", "pi-01", at=3.0), _rec("b3", "pi-02", at=2.0),
            _rec("b4", "pi-03", model="iris", at=4.0)]
    assert [c["batch_id"] for c in select_batches(caps, MODEL, ["pi-01", "pi-02"])] == ["b2", "b3", "b1"]
    assert [c["batch_id"] for c in select_batches(caps, MODEL, ["pi-01"], since=2.0)] == ["b2"]
    with pytest.raises(RetrainError, match=r"no captured batches from pi-09; turn capture on \(edgeloop capture on "
                                           r"--agent pi-09") as none:
        select_batches(caps, MODEL, ["pi-09"])
    assert none.value.code == "no_captures"
    with pytest.raises(RetrainError, match=f"pi-03 captured rows of iris:1, not of model {MODEL}") as other:
        select_batches(caps, MODEL, ["pi-03"])
    assert other.value.code == "other_model"


def test_verdict_sources_and_pseudo_labels():
    c = {"new_test_before": 0.5, "new_test_after": 0.8, "parent_test_before": 0.95, "parent_test_after": 0.93}
    v = verdict(c, 0.03)
    assert v["gain"] == pytest.approx(0.3) and v["forgetting"] == pytest.approx(0.02) and v["ready"]
    assert not verdict(c, 0.01)["within_bound"] and not verdict(c, 0.03, min_gain=0.31)["beats_parent"]
    assert verdict({**c, "parent_test_after": 0.92}, 0.03)["ready"]  # exactly at the bound is within it
    assert batches_of_source(capture_source(["ab" * 16, "cd" * 16])) == ["ab" * 16, "cd" * 16]
    assert batches_of_source("capture:pi-01/" + "ef" * 16) == ["ef" * 16]  # the intake's per-batch source
    assert batches_of_source("plant.csv") == []
    data, n = pseudo_labelled(b"a,b,prediction,label,request_id\n1,2,x,,r1\n3,4,y,z,r2\n5,6,,,r3\n")
    assert n == 1 and data.decode().splitlines()[1:] == ["1,2,x,x,r1", "3,4,y,z,r2", "5,6,,,r3"]


# --- refusals and the command on real registry records ----------------------------------------------------
def _batch(hub, agent: str, X: np.ndarray, labels: list[str], *, model: str = MODEL, version: str = "1",
           features: list[str] | None = None, prediction: str = "normal") -> dict:
    """A captured batch as the fleet's intake keeps it: the CSV under the hub home and its registry row."""
    features = features or list(generate_sensor_data(1, seed=0).feature_names)
    header = [*features, "prediction", "label", "request_id", "request_time"]
    lines = [",".join(header)] + [",".join([*(f"{v:g}" for v in row), prediction, lab, f"r{i}", f"{100.0 + i}"])
                                  for i, (row, lab) in enumerate(zip(X, labels, strict=True))]
    data = ("\n".join(lines) + "\n").encode()
    batch_id = sha256_hex(data + agent.encode())[:32]
    m = CaptureManifest(batch_id=batch_id, agent_id=agent, model=model, version=version, bundle_sha256="ab" * 32,
                        task="classification", feature_names=features, labels=list(SENSOR_LABELS), rows=len(X),
                        labelled_rows=sum(1 for lab in labels if lab), seen_rows=len(X), first_at=100.0,
                        last_at=100.0 + len(X), created_at=time.time(), sha256=sha256_hex(data), size=len(data),
                        chunk_size=65536, chunk_sha256=[sha256_hex(c) for c in split_chunks(data, 65536)],
                        columns=header)
    rel = f"captures/{batch_id}.csv"
    (hub.home.root / "captures").mkdir(exist_ok=True)
    (hub.home.root / rel).write_bytes(data)
    return hub.registry.add_capture({
        "batch_id": batch_id, "agent_id": agent, "model": model, "version": version, "bundle_sha256": "ab" * 32,
        "task": "classification", "rows": m.rows, "labelled_rows": m.labelled_rows, "seen_rows": m.seen_rows,
        "first_at": m.first_at, "last_at": m.last_at, "created_at": m.created_at, "received_at": time.time(),
        "sha256": m.sha256, "size": m.size, "path": rel, "dataset_id": None, "note": "", "manifest": m.to_dict()})


def _labels(ds, every: int = 0) -> list[str]:
    """The true class names, every ``every``-th left out (no feedback came for it)."""
    return ["" if every and i % every == every - 1 else SENSOR_LABELS[int(k)] for i, k in enumerate(ds.y)]


def test_retrain_refuses_what_captured_data_cannot_support(hub, capsys):
    few = generate_sensor_data(40, seed=31, shift=SHIFT)
    _batch(hub, "few-labels", few.X, _labels(few, every=2))  # 20 of 40 labelled
    versions = len(hub.list_versions(MODEL))
    with pytest.raises(RetrainError, match=r"the 1 captured batch\(es\) from few-labels hold 20 labelled rows "
                                           r"\(20 rows not used.*\); a retrain needs at least 50: send labels for "
                                           r"30 more served requests") as exc:
        hub.retrain_from_capture(MODEL, "few-labels")
    assert exc.value.code == "too_few_rows"
    _batch(hub, "iris-box", few.X, _labels(few), model="iris")
    with pytest.raises(RetrainError, match=f"iris-box captured rows of iris:1, not of model {MODEL}"):
        hub.retrain_from_capture(MODEL, "iris-box")
    _batch(hub, "other-inputs", few.X[:, :5], _labels(few), features=["a", "b", "c", "d", "e"])
    with pytest.raises(RetrainError, match=f"which are not the inputs of {MODEL}:1") as layout:
        hub.retrain_from_capture(MODEL, "other-inputs")
    assert layout.value.code == "feature_layout"
    assert len(hub.list_versions(MODEL)) == versions  # nothing was trained
    assert main(["retrain", MODEL, "--from-capture", "nobody-here", "--home", str(hub.home.root)]) == 2
    err = capsys.readouterr().err
    assert "error: no agent is 'nobody-here'" in err and "known agents:" in err


def test_edgeloop_retrain_summarizes_gain_and_forgetting_and_joins_batches(hub, capsys):
    new = generate_sensor_data(200, seed=41, shift=SHIFT)
    a = _batch(hub, "cli-edge", new.X[:100], _labels(new, every=10)[:100])
    b = _batch(hub, "cli-edge", new.X[100:], _labels(new, every=10)[100:], prediction="overheating")
    home = str(hub.home.root)
    rc = main(["retrain", MODEL, "--from-capture", "cli-edge", "--parent", f"{MODEL}:1", "--home", home,
               "--epochs", "20", "--no-quantize", "--max-forgetting", "0.05"])
    out, err = capsys.readouterr()
    child = out.split()[1]
    assert out.startswith(f"retrained {child} from {MODEL}:1 on the capture of cli-edge (2 batch(es)")
    assert "rows used: 180 (180 labelled; 20 not used)" in out
    assert "gain on the new data:  accuracy" in out and "forgetting:" in out and "vs bound 0.050" in out
    assert "retrain" in err  # progress on stderr
    doc = hub.registry.lineage(child)
    assert {c["batch_id"] for c in doc["captures"]} == {a["batch_id"], b["batch_id"]}
    assert rc == (0 if "ready for a gated rollout:" in out else 1)
    assert main(["registry", "lineage", child, "--home", home]) == 0
    tree = capsys.readouterr().out
    assert f"← captured by cli-edge serving {MODEL}:1: batch {a['batch_id'][:12]}  (100 rows, 90 labelled)" in tree
    assert f"version {child}" in tree and f"derived from {MODEL}:1" in tree

    rc = main(["retrain", MODEL, "--from-capture", "cli-edge", "--home", home, "--epochs", "20", "--no-quantize",
               "--include-unlabelled", "--json", "-q"])
    doc = json.loads(capsys.readouterr().out)
    assert (doc["rows"], doc["labelled_rows"], doc["pseudo_labelled_rows"]) == (200, 180, 20)
    assert any("prediction as their label" in w for w in doc["warnings"])
    assert doc["lineage"]["batches"] == doc["batches"] and rc == (0 if doc["ready"] else 1)
