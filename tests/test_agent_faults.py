"""A real agent process under faults: overload, a model failing at run time, a restart mid-transfer.

Real Mosquitto, real agent processes (isolated from hub/torch/Qt), real onnxruntime
models that misbehave on purpose (tests/onnx_variants.py).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeloop.agent.wire import topics
from edgeloop.agent.wire.messages import (
    Chunk,
    Event,
    InferError,
    InferRequest,
    InferResult,
    decode,
    decode_infer_reply,
)
from tests.agent_rig import AgentRig, plain_client
from tests.conftest import wait_until
from tests.onnx_models import _model, expected_probabilities
from tests.onnx_variants import FLAKY_TABLE, flaky_classifier_onnx, signed_bundle, slow_classifier_onnx

pytestmark = pytest.mark.broker

GOOD_ROW = [5.1, 3.5, 1.4, 0.2]


def _deploy_iris(fleet, aid: str, bundle: bytes) -> None:
    out = fleet.deploy(aid, bundle, model="iris", version="1", timeout=30)
    assert out.ok, out.message


class _Requester:
    """A plain MQTT client (what a device would use) that fires requests and collects every reply."""

    def __init__(self, broker, reply_topic: str) -> None:
        self.replies: list[InferResult | InferError] = []
        self._lock = threading.Lock()
        self.client = plain_client(broker, self._on_message, reply_topic)
        self.reply_topic = reply_topic

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.replies.append(decode_infer_reply(msg.payload))

    def send(self, aid: str, rid: str, rows) -> None:
        req = InferRequest(id=rid, inputs=rows, reply_to=self.reply_topic)
        self.client.publish(topics.agent_topic(aid, topics.INFER), req.encode(), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.reliability("overload", "a burst of 12 MQTT requests on a queue of 2",
                         "every request answered once, the excess overloaded (retry); served again after")
def test_a_full_request_queue_answers_overloaded_and_recovers(trained, fleet, online_agent, mosquitto):
    aid, proc = online_agent(max_queued_requests=2)
    _deploy_iris(fleet, aid, signed_bundle(trained.hub.key, slow_classifier_onnx()))  # ~tens of ms a request
    req = _Requester(mosquitto, f"test/{aid}/burst")
    try:
        burst = [f"b{i}" for i in range(12)]
        for rid in burst:  # all at once: one is running, two wait, the rest do not fit
            req.send(aid, rid, [GOOD_ROW])
        assert wait_until(lambda: len(req.replies) >= len(burst), 30), proc.log()
        time.sleep(0.5)  # a second answer to any request would show up here
        assert sorted(r.id for r in req.replies) == sorted(burst)  # every request answered exactly once
        served = [r for r in req.replies if isinstance(r, InferResult)]
        refused = [r for r in req.replies if isinstance(r, InferError)]
        assert refused and all(r.code == "overloaded" and "retry" in r.message for r in refused)
        assert len(served) >= 2  # at least as many as the queue holds
        np.testing.assert_allclose(served[0].outputs["probabilities"], expected_probabilities(np.asarray([GOOD_ROW])),
                                   atol=1e-5)
        # after the burst, requests are served again
        req.send(aid, "after", [GOOD_ROW])
        assert wait_until(lambda: any(r.id == "after" for r in req.replies), 10)
        assert isinstance(next(r for r in req.replies if r.id == "after"), InferResult)
    finally:
        req.close()


def _post(url: str, rows) -> tuple[int, dict]:
    body = json.dumps({"inputs": [{"name": "features", "shape": [len(rows), 4], "datatype": "FP32",
                                   "data": [v for r in rows for v in r]}]}).encode()
    request = urllib.request.Request(f"{url}/v2/models/iris/infer", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.reliability("model health", "a model that passed its smoke test fails on a valid row (HTTP and MQTT)",
                         "500 / runtime_error without a traceback; the next requests are served; process alive")
def test_a_model_failing_at_run_time_is_a_500_and_a_runtime_error_and_serving_goes_on(
        trained, fleet, online_agent, faults_tried):
    faults_tried(2)
    aid, proc = online_agent()
    _deploy_iris(fleet, aid, signed_bundle(trained.hub.key, flaky_classifier_onnx()))  # passed its smoke test
    url = fleet.agents()[aid].http_url
    poison = [float(FLAKY_TABLE + 2), 1.0, 1.0, 1.0]  # a valid row on which the model itself fails

    status, doc = _post(url, [GOOD_ROW, poison])
    assert status == 500 and set(doc) == {"error"}
    assert doc["error"].startswith("runtime_error: onnxruntime failed on a batch of 2 rows")
    assert "Traceback" not in doc["error"]
    status, doc = _post(url, [GOOD_ROW])  # the server keeps serving
    assert status == 200
    probs = next(o for o in doc["outputs"] if o["name"] == "probabilities")
    np.testing.assert_allclose(probs["data"], expected_probabilities(np.asarray([GOOD_ROW])).ravel(), atol=1e-5)

    res = fleet.infer(aid, [poison])
    assert isinstance(res, InferError) and res.code == "runtime_error" and "onnxruntime failed" in res.message
    assert isinstance(fleet.infer(aid, [GOOD_ROW]), InferResult)
    assert proc.proc is not None and proc.proc.poll() is None


@pytest.mark.reliability("transfers", "the agent stopped mid-transfer and started again",
                         "asks only for the chunks it lacks, installs, serves")
def test_transfer_resumes_after_the_agent_restarts_mid_transfer(trained, fleet, online_agent, tmp_path):
    # no idle re-asking before the restart: the restart alone must bring the missing chunks
    aid, proc = online_agent(transfer_idle_seconds=120.0)
    incoming = tmp_path / f"{aid}-state" / "incoming"
    bundle = trained.b1.path.read_bytes()
    chunk_size, first_part = 512, 32  # the agent persists its chunk bitmap every 16 chunks
    n_chunks = -(-len(bundle) // chunk_size)
    assert n_chunks > first_part + 2
    sent: list[list[int]] = []
    real = fleet._send_chunks

    def cut_short(agent_id, spec, data, indices, progress=None):
        idx = list(indices)
        sent.append(idx)
        real(agent_id, spec, data, idx[:first_part] if len(sent) == 1 else idx, progress)

    fleet._send_chunks = cut_short
    result: list = []
    deploying = threading.Thread(target=lambda: result.append(fleet.deploy(
        aid, bundle, model="sensor-mlp", version=trained.v1.version["version"], chunk_size=chunk_size,
        timeout=60)))
    deploying.start()

    def on_disk() -> int:
        records = list(incoming.glob("*.json"))
        return json.loads(records[0].read_text())["received"].count("1") if records else 0

    try:
        assert wait_until(lambda: on_disk() == first_part, 30), proc.log()
        assert proc.stop() == 0  # SIGTERM while the transfer is incomplete
        assert fleet.wait_for(lambda: fleet.status(aid) == "offline", 10)
        assert _part_files(incoming) == 2  # .part and .json survive the stop
        proc.start()
    finally:
        deploying.join(90)
    assert result and result[0].ok, (result, proc.log())
    assert result[0].details["bundle_sha256"] == trained.b1.sha256
    assert sent[0] == list(range(n_chunks))
    assert sent[1:] == [list(range(first_part, n_chunks))]  # asked again only for what it lacked
    assert f"{first_part} of {n_chunks} chunks on disk" in proc.log()
    assert _part_files(incoming) == 0
    assert fleet.agents()[aid].active.bundle_sha256 == trained.b1.sha256
    assert isinstance(fleet.infer(aid, trained.dataset.X[:2].tolist()), InferResult)


def _part_files(folder: Path) -> int:
    return len(list(folder.iterdir()))


class _Listener:
    """A plain MQTT client that records every message on some topics."""

    def __init__(self, broker, *subscriptions: str) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.client = plain_client(broker, lambda c, u, m: self.got.append((m.topic, bytes(m.payload))),
                                   *subscriptions)

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p in self.got if t == topic]

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.reliability("transfers",
                         "junk on the agent's topics: a non-envelope command, a wildcard reply_to, a garbage chunk, a "
                         "chunk of an unknown transfer, a short chunk",
                         "command refused bad_message, error sent to infer/result, chunks dropped; the deploy "
                         "completes")
def test_junk_on_the_agent_topics_is_answered_or_dropped_and_a_deploy_still_completes(
        trained, fleet, online_agent, mosquitto, faults_tried):
    faults_tried(5)
    aid, proc = online_agent()
    events, results = topics.agent_topic(aid, topics.EVENTS), topics.agent_topic(aid, topics.INFER_RESULT)
    ears = _Listener(mosquitto, events, results)
    try:
        ears.publish(topics.agent_topic(aid, topics.CMD), b"not an envelope")
        assert wait_until(lambda: ears.on(events), 10), proc.log()
        refused = decode(ears.on(events)[0], Event)
        assert (refused.event, refused.ok, refused.code, refused.command_id) == ("command_result", False,
                                                                                 "bad_message", None)
        # a reply_to with MQTT wildcards cannot be published to: the error goes to the agent's result topic
        ears.publish(topics.agent_topic(aid, topics.INFER), b'{"id": "w", "inputs": [[1]], "reply_to": "a/+/b"}')
        assert wait_until(lambda: ears.on(results), 10), proc.log()
        err = decode_infer_reply(ears.on(results)[0])
        assert isinstance(err, InferError) and err.id == "w" and err.code == "bad_message"

        real = fleet._send_chunks

        def junk_first(agent_id, spec, data, indices, progress=None):
            bundle_topic = topics.agent_topic(agent_id, topics.BUNDLE)
            ears.publish(bundle_topic, b"\x00 not a chunk")
            ears.publish(bundle_topic, Chunk("9" * 32, 0, data[:spec.chunk_size]).encode())  # unknown transfer
            ears.publish(bundle_topic, Chunk(spec.transfer_id, 0, b"short").encode())  # wrong length
            real(agent_id, spec, data, indices, progress)

        fleet._send_chunks = junk_first
        out = fleet.deploy(aid, trained.b1.path.read_bytes(), model="sensor-mlp",
                           version=trained.v1.version["version"], chunk_size=4096, timeout=30)
        assert out.ok, (out, proc.log())
        log = proc.log()
        assert "dropped a bad bundle chunk" in log
        assert "chunk 0 of" in log and "has 5 bytes, expected 4096" in log
        assert isinstance(fleet.infer(aid, trained.dataset.X[:1].tolist()), InferResult)
    finally:
        ears.close()


@pytest.mark.reliability("state files", "the only stored bundle cut short on disk while the agent is stopped",
                         "starts empty, an error event says which bundle and why, model_not_ready; a new deploy works")
def test_an_agent_whose_only_bundle_is_corrupt_starts_empty_says_why_and_takes_a_new_deploy(
        trained, fleet, online_agent, tmp_path, mosquitto):
    aid, proc = online_agent()
    assert fleet.deploy(aid, trained.b1.path.read_bytes(), model="sensor-mlp",
                        version=trained.v1.version["version"], timeout=30).ok
    assert proc.stop() == 0
    stored = tmp_path / f"{aid}-state" / "bundles" / f"{trained.b1.sha256}.elb"
    stored.write_bytes(stored.read_bytes()[:4096])  # cut short on disk: the model is gone
    ears = _Listener(mosquitto, topics.agent_topic(aid, topics.EVENTS))
    try:
        proc.start()
        assert fleet.wait_online([aid], 30), proc.log()
        assert wait_until(lambda: ears.got, 10), proc.log()
        ev = decode(ears.got[0][1], Event)
        assert ev.event == "error" and not ev.ok and f"stored bundle {trained.b1.sha256[:12]} cannot be served" \
            in ev.message
    finally:
        ears.close()
    assert fleet.agents()[aid].active is None
    assert json.loads((tmp_path / f"{aid}-state" / "state.json").read_text())["active"] is None
    res = fleet.infer(aid, trained.dataset.X[:1].tolist())
    assert isinstance(res, InferError) and res.code == "model_not_ready"
    assert fleet.deploy(aid, trained.b2.path.read_bytes(), model="sensor-mlp",
                        version=trained.v2.version["version"], timeout=30).ok
    assert fleet.infer(aid, trained.dataset.X[:1].tolist()).version == trained.v2.version["version"]


# --- durability: install deadline, a corrupt state, abandoned transfers (a plain MQTT rig, no hub) ---------
@pytest.fixture
def rig(tmp_path, mosquitto):
    with AgentRig(tmp_path, mosquitto) as r:
        yield r


def _start(rig: AgentRig, versions: tuple[str, ...], **config) -> str:
    aid = f"dur-{uuid.uuid4().hex[:8]}"
    rig.procs[aid] = rig.start(rig.prepare(aid, versions, **config))
    assert rig.online([aid]), rig.procs[aid].log()
    return aid


def endless_classifier_onnx(n_features: int = 4, n_classes: int = 3, rounds: int = 2**40) -> bytes:
    """A classifier (contract-conforming) whose every run first loops ``rounds`` times: a warm-up that never ends."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "tiny"], ["v_out"])],
        "forever",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["N", n_features])],
        [numpy_helper.from_array(np.zeros((1,), dtype=np.float32), "tiny")])
    nodes = [helper.make_node("Loop", ["trips", "keep_going", "features"], ["looped"], body=body),
             helper.make_node("MatMul", ["looped", "W"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    inits = [numpy_helper.from_array(np.array(rounds, dtype=np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "keep_going"),
             numpy_helper.from_array(np.ones((n_features, n_classes), dtype=np.float32), "W")]
    return _model(nodes, inits, [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_features])],
                  [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_classes])])


@pytest.mark.reliability("installs",
                         "a model whose warm-up never ends (ONNX Loop of 2^40), a rollback queued behind it",
                         "refused install_timeout at the deadline; the rollback succeeds; nothing of it left on disk")
def test_a_model_whose_warm_up_never_ends_is_refused_at_the_install_deadline_and_blocks_no_rollback(rig):
    aid = _start(rig, ("1", "2"), install_timeout_seconds=2.0)  # 2 active
    endless = signed_bundle(rig.key, endless_classifier_onnx(), version="9")
    cid = rig.deploy(aid, "9", bundle=endless)
    rb = rig.rollback(aid, "1")  # queued behind the install that never ends by itself
    assert wait_until(lambda: rig.finals(cid) and rig.finals(rb), 60), rig.procs[aid].log()
    [refused] = rig.finals(cid)
    assert (refused["ok"], refused["code"]) == (False, "install_timeout"), refused
    assert "within 2 s" in refused["message"] and "abandoned" in refused["message"]
    assert [e["ok"] for e in rig.finals(rb)] == [True]
    assert rig.serving_version(aid) == "1"
    state_dir = rig.state_root / f"{aid}-state"
    state = json.loads((state_dir / "state.json").read_text())
    assert state["active"] == rig.sha["1"] and hashlib.sha256(endless).hexdigest() not in state["installed"]
    assert {p.stem for p in (state_dir / "bundles").iterdir()} == set(state["installed"])
    assert list((state_dir / "incoming").iterdir()) == []
    assert rig.procs[aid].proc is not None and rig.procs[aid].proc.poll() is None


@pytest.mark.reliability("state files",
                         "a real agent starts with state.json corrupt, or both state.json and state.prev.json corrupt",
                         "starts from the previous copy or its re-verified bundles, serves, reports state_recovered, "
                         "takes a rollback")
def test_an_agent_with_a_corrupt_state_starts_from_the_previous_copy_or_its_verified_bundles(rig, tmp_path,
                                                                                             faults_tried):
    faults_tried(2)
    agents = {}
    for garbage_in in (("state.json",), ("state.json", "state.prev.json")):
        aid = f"dur-{uuid.uuid4().hex[:8]}"
        config = rig.prepare(aid, ("1", "2"))  # 2 active, 1 in its history
        for name in garbage_in:
            (tmp_path / f"{aid}-state" / name).write_text('{"active": "trunc')
        agents[aid] = garbage_in
        rig.procs[aid] = rig.start(config)
    assert rig.online(agents), {a: p.log() for a, p in rig.procs.items()}
    for aid, garbage_in in agents.items():
        assert rig.serving_version(aid) == "2"
        assert wait_until(lambda aid=aid: [e for e in rig.events_of(aid) if e.get("code") == "state_recovered"], 10)
        [ev] = [e for e in rig.events_of(aid) if e.get("code") == "state_recovered"]
        assert ("state.prev.json" if len(garbage_in) == 1 else "verified bundles") in ev["message"]
        state = json.loads((tmp_path / f"{aid}-state" / "state.json").read_text())  # saved again (session)
        assert state["active"] == rig.sha["2"] and set(state["installed"]) == {rig.sha["1"], rig.sha["2"]}
        assert (tmp_path / f"{aid}-state" / "state.json.unreadable").read_text() == '{"active": "trunc'
    aid = next(iter(agents))
    rb = rig.rollback(aid, "1")  # and it takes commands (its counters came back with the copy)
    assert wait_until(lambda: rig.finals(rb), 20) and [e["ok"] for e in rig.finals(rb)] == [True]
    assert rig.serving_version(aid) == "1"


@pytest.mark.reliability("transfers", "the hub dies after the first chunk of a transfer",
                         "reported once as expired (transfer), at most 4 asks for chunks, files and journal gone")
def test_a_transfer_abandoned_by_its_hub_expires_is_reported_once_and_asks_less_and_less(rig):
    aid = _start(rig, ("1",), transfer_idle_seconds=0.3)
    cid = rig.deploy(aid, "2", ttl=4.0, chunks=1)  # the hub dies after the first chunk
    assert wait_until(lambda: rig.finals(cid), 30), rig.procs[aid].log()
    time.sleep(1.0)  # anything the agent would still send about it arrives here
    finals = rig.finals(cid)
    assert len(finals) == 1 and finals[0]["code"] == "transfer" and "expired" in finals[0]["message"], finals
    asks = rig.finals(cid, ("transfer_missing",))
    # idle 0.3 s, backed off 0.3, 0.6, 1.2, 2.4 s: at most 4 asks in its 4 s (without backing off ~13)
    assert 1 <= len(asks) <= 4, [a["at"] for a in asks]
    assert max(a["at"] for a in asks) < finals[0]["at"]  # none after it was dropped
    state_dir = rig.state_root / f"{aid}-state"
    assert list((state_dir / "incoming").iterdir()) == []
    assert json.loads((state_dir / "state.json").read_text())["pending"] == {}
    assert rig.serving_version(aid) == "1"
