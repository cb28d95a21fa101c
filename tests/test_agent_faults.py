"""A real agent process under faults: overload, a model failing at run time, a restart mid-transfer.

Real Mosquitto, real agent processes (isolated from hub/torch/Qt), real onnxruntime
models that misbehave on purpose (tests/onnx_variants.py).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

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
from tests.conftest import wait_until
from tests.onnx_models import expected_probabilities
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
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.address.host, broker.address.port)
        self.client.subscribe(reply_topic, 1)
        self.client.loop_start()
        assert subscribed.wait(10)
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


def test_a_model_failing_at_run_time_is_a_500_and_a_runtime_error_and_serving_goes_on(
        trained, fleet, online_agent):
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
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self.got.append((m.topic, bytes(m.payload)))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.address.host, broker.address.port)
        self.client.subscribe([(t, 1) for t in subscriptions])
        self.client.loop_start()
        assert subscribed.wait(10)

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p in self.got if t == topic]

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_junk_on_the_agent_topics_is_answered_or_dropped_and_a_deploy_still_completes(
        trained, fleet, online_agent, mosquitto):
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
