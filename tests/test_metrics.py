"""Prometheus ``GET /metrics`` of the agent (issue 10 item 5): real requests over HTTP and over MQTT
through a real Mosquitto to a real in-process agent with a real onnxruntime model, then the scrape is
parsed with prometheus_client's own text parser and its numbers checked against what was sent."""

from __future__ import annotations

import json
import threading
import urllib.request
import uuid

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.drift import DriftMonitor, build_reference
from edgeloop.agent.runtime import ModelRunner
from edgeloop.agent.service import Agent
from edgeloop.agent.wire import topics
from tests.conftest import wait_until, write_agent_config
from tests.onnx_models import FEATURES, classifier_onnx, manifest_for

pytestmark = pytest.mark.broker

WINDOW = 50


def served_model(agent_id: str, version: str = "1") -> tuple[ModelRunner, DriftMonitor]:
    """The iris classifier with a drift reference (windows of WINDOW rows) and its monitor."""
    rng = np.random.default_rng(0)
    ref = build_reference(rng.normal(5, 1, size=(1000, 4)), list(FEATURES), window=WINDOW, min_rows=WINDOW // 2)
    mb = classifier_onnx()
    runner = ModelRunner.load(manifest_for(mb, version=version, drift=ref), mb)
    return runner, DriftMonitor(ref, agent_id=agent_id, model="iris", version=version, bundle_sha256="ab" * 32)


def start_agent(tmp_path, broker, hub_key, agent_id: str, **config) -> Agent:
    """A real agent in this process on ``broker``, connected (``config``: AgentConfig fields)."""
    a = Agent(AgentConfig.load(write_agent_config(tmp_path, agent_id, broker, hub_key.public_pem(), **config)))
    a.start()
    assert a.link.connected.wait(15), "agent did not connect"
    return a


@pytest.fixture
def agent(tmp_path, mosquitto, hub_key):
    a = start_agent(tmp_path, mosquitto, hub_key, f"met-{uuid.uuid4().hex[:8]}")
    a.serving.activate(*served_model(a.id))
    yield a
    a.stop()


def scrape(a: Agent) -> tuple[str, dict]:
    """(Content-Type, {(name, labels as a sorted tuple): value}) of GET /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{a.http.port}/metrics", timeout=10) as r:
        ctype, text = r.headers["Content-Type"], r.read().decode("utf-8")
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return ctype, samples


def post(a: Agent, body: bytes) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{a.http.port}/v2/models/iris/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def mqtt_requests(a: Agent, broker, payloads: list[bytes]) -> list[dict]:
    """Publish each payload to the agent's infer topic (answers to a reply_to of ours); the answers."""
    replies = f"plant/{a.id}/answers"
    got: list[dict] = []
    subscribed = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_message = lambda client, userdata, msg: got.append(json.loads(msg.payload))
    c.on_subscribe = lambda *args: subscribed.set()
    c.connect(broker.address.host, broker.address.port)
    c.subscribe(replies, 1)
    c.loop_start()
    try:
        assert subscribed.wait(10)
        for p in payloads:
            c.publish(topics.agent_topic(a.id, topics.INFER), p, qos=1)
        assert wait_until(lambda: len(got) == len(payloads), 15), got
    finally:
        c.loop_stop()
        c.disconnect()
    return got


def L(**labels: str) -> tuple:
    return tuple(sorted(labels.items()))


def test_metrics_count_http_and_mqtt_requests_latency_and_drift(agent, mosquitto):
    rng = np.random.default_rng(1)
    batches = [rng.normal(5, 1, size=(10, 4)).tolist() for _ in range(5)]  # 50 rows: one drift window
    for rows in batches:
        assert post(agent, json.dumps({"inputs": rows}).encode()) == 200
    assert post(agent, json.dumps({"inputs": [[1.0, 2.0]]}).encode()) == 400  # 2 features, not 4
    assert post(agent, b"{not json") == 400
    reply_to = f"plant/{agent.id}/answers"
    answers = mqtt_requests(agent, mosquitto, [
        *(json.dumps({"id": f"m{i}", "inputs": [[5.1, 3.5, 1.4, 0.2]], "reply_to": reply_to}).encode()
          for i in range(3)),
        json.dumps({"id": "bad", "inputs": [[1.0]], "reply_to": reply_to}).encode(),
    ])
    assert sorted(x.get("type", "") for x in answers).count("infer_error") == 1

    ctype, m = scrape(agent)
    assert ctype.startswith("text/plain; version=0.0.4")
    model = {"model": "iris", "version": "1"}
    req = "edgeloop_agent_requests_total"
    assert m[(req, L(**model, protocol="http", outcome="ok"))] == 5
    assert m[(req, L(**model, protocol="http", outcome="error"))] == 2
    assert m[(req, L(**model, protocol="mqtt", outcome="ok"))] == 3
    assert m[(req, L(**model, protocol="mqtt", outcome="error"))] == 1
    errors = {k[1]: v for k, v in m.items() if k[0] == "edgeloop_agent_errors_total"}
    assert sum(v for lab, v in errors.items() if ("protocol", "http") in lab) == 2
    assert sum(v for lab, v in errors.items() if ("protocol", "mqtt") in lab) == 1
    assert all(("code", "") not in lab for lab in errors)  # every error names its code
    # the latency histogram: one observation per answered request, buckets cumulative up to +Inf
    hist = "edgeloop_agent_inference_latency_seconds"
    assert m[(hist + "_count", L(**model))] == 8
    assert m[(hist + "_sum", L(**model))] > 0
    buckets = sorted((float(dict(lab)["le"]), v) for (n, lab), v in m.items() if n == hist + "_bucket")
    assert buckets[-1] == (float("inf"), 8) and all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:], strict=False))
    # the drift window the 50 HTTP rows closed, per feature
    for f in FEATURES:
        key = L(**model, feature=f)
        assert ("edgeloop_agent_drift_psi", key) in m and ("edgeloop_agent_drift_ks", key) in m
        assert m[("edgeloop_agent_drift_drifted", key)] in (0.0, 1.0)
    assert m[("edgeloop_agent_drift_window_rows", L(**model))] == WINDOW
    assert m[("edgeloop_agent_drift_windows_total", L(**model, status="ok"))] == 1
    # state read at scrape time
    assert m[("edgeloop_agent_up", ())] == 1 and m[("edgeloop_agent_ready", ())] == 1
    assert m[("edgeloop_agent_model_swaps_total", ())] == 1
    assert m[("edgeloop_agent_active_model_info", L(**model, bundle_sha256=""))] == 1
    assert m[("edgeloop_agent_inference_queue_depth", ())] == 0
    assert m[("edgeloop_agent_model_error_rate", L(**model))] == 0  # client errors never reached the model
    assert m[("edgeloop_agent_worker_restarts_total", L(worker="inference"))] == 0


def test_a_model_swap_is_counted_and_the_new_version_labels_its_requests(agent):
    agent.serving.activate(*served_model(agent.id, version="2"))
    assert post(agent, json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()) == 200
    _, m = scrape(agent)
    assert m[("edgeloop_agent_model_swaps_total", ())] == 2
    assert m[("edgeloop_agent_requests_total", L(model="iris", version="2", protocol="http", outcome="ok"))] == 1
    assert ("edgeloop_agent_active_model_info", L(model="iris", version="2", bundle_sha256="")) in m
    assert ("edgeloop_agent_active_model_info", L(model="iris", version="1", bundle_sha256="")) not in m


def test_metrics_of_an_agent_without_a_model_say_not_ready(tmp_path, mosquitto, hub_key):
    a = start_agent(tmp_path, mosquitto, hub_key, "met-empty")
    try:
        assert post(a, json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()) == 503
        _, m = scrape(a)
    finally:
        a.stop()
    assert m[("edgeloop_agent_up", ())] == 1 and m[("edgeloop_agent_ready", ())] == 0
    assert m[("edgeloop_agent_requests_total", L(model="", version="", protocol="http", outcome="error"))] == 1
    assert not [k for k in m if k[0] == "edgeloop_agent_active_model_info"]
