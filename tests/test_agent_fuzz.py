"""Bounded fuzzing of every agent handler (issue 11, "Must show"): the MQTT inference request topic, the
command topic, the bundle-chunk topics (own and shared), the feedback topic, and every HTTP route, on one real
agent running in-process on a real Mosquitto with a real onnxruntime model.

Each test asserts, per generated input: the agent answers (inference: exactly one answer; HTTP: one
response; commands: one event) with a client-error code, never ``internal`` or a 500; every worker
thread is alive; and a valid request right after is served. Examples are few (``max_examples``) and the
database is off, so the file adds seconds, not minutes, and leaves nothing behind.
"""

from __future__ import annotations

import base64
import itertools
import json
import socket
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop.agent.capture import CaptureSettings
from edgeloop.agent.config import AgentConfig
from edgeloop.agent.runtime import ModelRunner
from edgeloop.agent.service import Agent
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.capture import FEEDBACK
from edgeloop.agent.wire.commands import seal_command
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.agent.wire.messages import Command, new_id
from tests.conftest import wait_until, write_agent_config
from tests.onnx_models import FEATURES, LABELS, classifier_onnx, manifest_for

pytestmark = pytest.mark.broker

FUZZ = settings(max_examples=200, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
FEW = settings(FUZZ, max_examples=100)
ROW = [5.1, 3.5, 1.4, 0.2]
SERVER_FAULTS = {"internal", "runtime_error", "bad_output", "overloaded", "model_not_ready", "inference"}

# --- strategies: JSON that is almost right, and the classic hostile shapes ---------------------------------
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-(2**200), 2**200)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from([3.5e38, -1e39, 1e308, 2**128, "\ud800", "1.5", 0, -0.0]))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=6) | st.dictionaries(
    st.sampled_from(["inputs", "id", "reply_to", "model", "name", "shape", "datatype", "data", *FEATURES])
    | st.text(max_size=8), c, max_size=6), max_leaves=24)
hostile_text = st.one_of(
    st.integers(900, 4000).map(lambda n: "[" * n + "]" * n),  # deep nesting
    st.integers(4301, 6000).map(lambda n: "[[" + "9" * n + ",1,2,3]]"),  # integers past Python's 4,300 digits
    st.integers(309, 400).map(lambda n: "[[1" + "0" * n + ".5,1,2,3]]"),  # finite text, infinite float
    st.sampled_from(["NaN", "[[1e39,1,2,3]]", '"\\ud800"', "[" * 50000, "{" * 3, "", "nul\x00l"]),
)


def as_bytes(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


rows = st.lists(st.lists(scalars | st.floats(-10, 10), min_size=0, max_size=6), max_size=4) | json_values
infer_docs = st.fixed_dictionaries({"inputs": rows}, optional={
    "id": scalars, "reply_to": st.text(max_size=20) | st.sampled_from(["a/#", "a/+/b", "\ud800", "t" * 70000]),
    "model": scalars, "version": scalars, "schema": scalars, "type": scalars})
tensor_docs = st.fixed_dictionaries({"inputs": st.lists(st.fixed_dictionaries({"data": json_values}, optional={
    "name": st.sampled_from(["features", "x"]) | scalars, "shape": json_values | st.lists(st.integers(), max_size=3),
    "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "fp32"]) | scalars, "parameters": json_values}),
    min_size=0, max_size=2)}, optional={"id": scalars, "outputs": json_values})
payloads = st.one_of(infer_docs.map(as_bytes), tensor_docs.map(as_bytes), json_values.map(as_bytes),
                     hostile_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
                     hostile_text.map(lambda t: b'{"inputs": ' + t.encode("utf-8", "surrogatepass") + b"}"),
                     st.binary(max_size=300))


# --- one agent for the module -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hub_signing_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def agent(tmp_path_factory, mosquitto, hub_signing_key):
    tmp = tmp_path_factory.mktemp("fuzz")
    aid = f"fuzz-{uuid.uuid4().hex[:8]}"
    cfg = AgentConfig.load(write_agent_config(tmp, aid, mosquitto, hub_signing_key.public_pem(),
                                              max_queued_requests=1000,  # capture on: feedback is parsed
                                              capture=CaptureSettings(enabled=True, upload_rows=100_000)))
    a = Agent(cfg).start()
    assert a.link.connected.wait(15) and wait_until(lambda: a.session > 0, 15), "agent did not connect"
    a.first_session = a.session  # a new session would mean the broker dropped the agent
    mb = classifier_onnx()
    a.serving.activate(ModelRunner.load(manifest_for(mb), mb))
    a.answers, a.events = [], []  # what the agent answered and reported, as it did (in-process)
    answer, publish_event = a._answer, a._publish_event

    def recorded_answer(job, topic, payload):
        answer(job, topic, payload)  # a publish that raises is not recorded: the test then waits in vain
        a.answers.append((topic, json.loads(payload)))

    def recorded_event(ev):
        a.events.append(ev)
        publish_event(ev)

    a._answer, a._publish_event = recorded_answer, recorded_event
    yield a
    a.stop()


def assert_all_workers_alive(a: Agent) -> None:
    workers = a.watchdog.status()
    assert set(workers) >= {"control", "inference", "outbox", "http", "watchdog"}
    assert all(w["alive"] and w["restarts"] == 0 for w in workers.values()), workers
    assert a.link.connected.is_set() and a.session == a.first_session, "the broker dropped the agent"


def assert_inference_served(a: Agent) -> None:
    before = len(a.answers)
    a._accept_infer(json.dumps({"id": "valid", "inputs": [ROW] * 3}).encode(), None)
    assert wait_until(lambda: len(a.answers) > before, 10)
    topic, doc = a.answers[-1]
    assert doc["type"] == "infer_result" and doc["id"] == "valid" and len(doc["outputs"]["label"]) == 3, doc


_counter = itertools.count(1)


def signed(a: Agent, key: SigningKey, command: str, args, **over) -> tuple[str, bytes]:
    now = time.time()
    cmd = Command(command=command, command_id=new_id(), agent_id=over.pop("agent_id", a.id),
                  counter=next(_counter), issued_at=now, expires_at=now + 300, args=args)
    return cmd.command_id, seal_command(key, cmd)


def assert_commands_served(a: Agent, key: SigningKey) -> None:
    """A valid signed command right after: the control thread takes it and answers it (a rollback to a
    bundle the store does not hold is refused with ``store``)."""
    cid, payload = signed(a, key, "rollback", {"bundle_sha256": "0" * 64})
    a._on_message(topics.agent_topic(a.id, topics.CMD), payload, None)
    assert wait_until(lambda: any(e.command_id == cid for e in a.events), 10)
    ev = next(e for e in a.events if e.command_id == cid)
    assert ev.event == "rollback_result" and not ev.ok and ev.code == "store", ev


# --- MQTT: the inference request topic --------------------------------------------------------------------
def _message(qos: int, response_topic: str | None, correlation: bytes | None) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=b"edgeloop/v1/agents/x/infer")
    msg.qos = qos
    if response_topic is not None or correlation is not None:
        msg.properties = Properties(PacketTypes.PUBLISH)
        if response_topic is not None:
            msg.properties.ResponseTopic = response_topic
        if correlation is not None:
            msg.properties.CorrelationData = correlation
    return msg


@pytest.mark.reliability("MQTT inference input", "hypothesis: malformed/hostile request payloads (deep "
                         "nesting, 5000-digit ints, float32 overflow, binary, bad reply_to) x QoS x Response Topic",
                         "exactly one answer each, a client-error code; every thread alive; no reconnect; "
                         "valid request served")
def test_fuzzed_inference_requests_each_get_one_client_error_or_result(agent, faults_tried):
    @FUZZ
    @given(payload=payloads, qos=st.sampled_from([0, 1, 2]),
           response_topic=st.none() | st.text(max_size=16) | st.sampled_from(["a/#", "\ud800", "x\x00y", "t" * 70000]),
           correlation=st.none() | st.binary(max_size=16))
    def check(payload, qos, response_topic, correlation):
        faults_tried(1)
        before = len(agent.answers)
        agent._accept_infer(payload, _message(qos, response_topic, correlation))
        assert wait_until(lambda: len(agent.answers) > before, 10, 0.001), f"no answer to {payload[:200]!r}"
        _, doc = agent.answers[before]
        assert doc["type"] in ("infer_result", "infer_error"), doc
        if doc["type"] == "infer_error":
            assert doc["code"] not in SERVER_FAULTS, doc
        assert agent._infer_q.qsize() == 0 and len(agent.answers) == before + 1

    check()
    assert_all_workers_alive(agent)
    assert_inference_served(agent)


# --- MQTT: the command topic --------------------------------------------------------------------------------
@pytest.mark.reliability("signed commands", "hypothesis: garbage envelopes and validly signed commands "
                         "with fuzzed names and args", "each refused with a specific code (never internal); "
                         "threads alive; valid signed command and inference served")
def test_fuzzed_commands_unsigned_or_signed_are_each_refused_with_a_specific_code(agent, hub_signing_key,
                                                                                 faults_tried):
    cmd_topic = topics.agent_topic(agent.id, topics.CMD)
    envelope = st.fixed_dictionaries({}, optional={
        "payload": st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()) | scalars,
        "signatures": json_values, "signature": json_values, "keyid": scalars, "schema": scalars})

    @FEW
    @given(raw=st.one_of(payloads, envelope.map(as_bytes)),
           command=st.sampled_from(["deploy", "rollback", "reboot", ""]) | st.text(max_size=8),
           args=st.dictionaries(st.sampled_from(["bundle_sha256", "transfer", "model", "version", "size"])
                                | st.text(max_size=6), json_values, max_size=5),
           use_signed=st.booleans())
    def check(raw, command, args, use_signed):
        before = len(agent.events)
        cid = None
        if use_signed:
            try:
                cid, raw = signed(agent, hub_signing_key, command, args)
            except ValueError:  # NaN/Infinity in args: no hub can sign that (strict JSON)
                reject()
        faults_tried(1)
        agent._on_message(cmd_topic, raw, None)
        assert wait_until(lambda: len(agent.events) > before, 10, 0.001), f"no event for {raw[:200]!r}"
        for ev in agent.events[before:]:
            assert ev.code != "internal", ev
            if use_signed and ev.command_id == cid:
                assert ev.ok is False, ev  # no generated args describe a deploy that can start
        assert any(not e.ok for e in agent.events[before:])

    check()
    assert_all_workers_alive(agent)
    assert_commands_served(agent, hub_signing_key)
    assert_inference_served(agent)


# --- MQTT: the bundle chunk topics (own and shared) ------------------------------------------------------
@pytest.mark.reliability("transfers", "hypothesis: malformed chunks on the own and the "
                         "shared transfer topic", "dropped (no internal event); threads alive; valid command "
                         "and inference served")
def test_fuzzed_bundle_chunks_are_dropped_and_the_agent_goes_on(agent, hub_signing_key, faults_tried):
    tid = uuid.uuid4().hex
    chunk_docs = st.fixed_dictionaries({}, optional={
        "transfer_id": st.sampled_from([tid, "../../etc", ""]) | scalars, "index": scalars,
        "data": st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()) | scalars,
        "sha256": scalars, "type": st.just("chunk") | scalars, "schema": scalars})
    own, shared = topics.agent_topic(agent.id, topics.BUNDLE), topics.transfer_topic(tid, agent.root)

    @settings(FUZZ, max_examples=150)
    @given(raw=st.one_of(payloads, chunk_docs.map(as_bytes)), on_shared=st.booleans())
    def check(raw, on_shared):
        faults_tried(1)
        agent._on_message(shared if on_shared else own, raw, None)

    check()
    assert_commands_served(agent, hub_signing_key)  # after every chunk above: the queue is in order
    assert not [e for e in agent.events if e.code == "internal"]
    assert_all_workers_alive(agent)
    assert_inference_served(agent)


# --- MQTT: the feedback topic (labels for captured requests) ---------------------------------------------
@pytest.mark.reliability("capture feedback", "hypothesis: malformed labels, ids and payloads on the feedback "
                         "topic", "refused and logged; threads alive; a valid label for a captured request taken")
def test_fuzzed_feedback_is_refused_and_a_valid_label_is_taken_after(agent, faults_tried):
    topic = topics.agent_topic(agent.id, FEEDBACK)
    feedback_docs = st.fixed_dictionaries({}, optional={"id": scalars, "label": json_values | scalars,
                                                        "schema": scalars, "type": scalars})

    @FEW
    @given(raw=st.one_of(payloads, feedback_docs.map(as_bytes)))
    def check(raw):
        faults_tried(1)
        agent._on_message(topic, raw, None)

    check()
    assert_all_workers_alive(agent)
    agent._accept_infer(json.dumps({"id": "labelled", "inputs": [ROW]}).encode(), None)
    assert wait_until(lambda: any(doc.get("id") == "labelled" for _, doc in agent.answers), 10)
    taken = agent.feedback(json.dumps({"id": "labelled", "label": LABELS[0]}).encode())
    assert taken == {"id": "labelled", "labelled_rows": 1}, taken
    assert_inference_served(agent)


# --- HTTP: every route, and malformed requests -----------------------------------------------------------
ROUTES = ["/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/iris", "/v2/models/iris/ready",
          "/v2/models/iris/infer", "/v2/models/iris/versions/1/infer", "/v2/models/other/infer",
          "/v2/models/iris/versions/1", "/v2/models/iris/versions/1/ready", "/v2/models/iris/feedback",
          "/metrics"]
paths = st.sampled_from(ROUTES) | st.builds(
    lambda parts: "/" + "/".join(parts), st.lists(st.sampled_from(["v2", "models", "iris", "infer", "ready",
                                                                   "versions", "feedback", "metrics", "%2F",
                                                                   "..", "%00", ""])
                                                  | st.text("abc%/?#", max_size=5), max_size=6))


def _http(port: int, request: bytes) -> list[int]:
    """Send raw bytes, read until the server closes; the status of every response."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return [int(line.split(b" ")[1]) for line in data.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


def _ok_status(status: int) -> bool:
    """2xx answers, 4xx refusals, and the two protocol-level refusals (an unknown method: 501, another HTTP
    version: 505); never 500 (a bug) or 503 (the model is healthy and active throughout)."""
    return 200 <= status < 300 or 400 <= status < 500 or status in (501, 505)


@pytest.mark.reliability("HTTP input", "hypothesis: every route x method x malformed bodies and headers, "
                         "and raw byte heads", "4xx (or 501/505) for each, never 500/503; threads alive; "
                         "valid infer and ready served")
def test_fuzzed_http_requests_on_every_route_get_client_errors_and_the_server_goes_on(agent, faults_tried):
    port = agent.http.port

    @FUZZ
    @given(method=st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "BREW", "get"]),
           path=paths, body=payloads | st.just(b""), extra=st.sampled_from([
               b"", b"Expect: 100-continue\r\n", b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n"]))
    def check(method, path, body, extra):
        faults_tried(1)
        line = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head = line.encode("latin-1", "replace") + extra + b"Content-Length: %d\r\n\r\n" % len(body)
        statuses = _http(port, head + body)
        assert statuses and all(_ok_status(s) for s in statuses), (statuses, head, body[:200])

    check()

    @FEW
    @given(body=payloads, route=st.sampled_from(["/v2/models/iris/infer", "/v2/models/iris/versions/1/infer"]))
    def check_infer(body, route):  # the inference route alone: every body reaches the parser and the model
        faults_tried(1)
        statuses = _http(port, b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                         % (route.encode(), len(body), body))
        assert len(statuses) == 1 and _ok_status(statuses[0]), (statuses, body[:200])

    check_infer()

    @FEW
    @given(raw=st.binary(max_size=400) | st.builds(lambda a, b: a + b"\r\n\r\n" + b, st.binary(max_size=100),
                                                   st.binary(max_size=100)))
    def check_raw(raw):
        faults_tried(1)
        statuses = _http(port, raw)
        assert all(_ok_status(s) for s in statuses), (statuses, raw[:200])

    check_raw()
    assert_all_workers_alive(agent)
    ok = b'{"inputs": [[1, 2, 3, 4]]}'
    assert _http(port, b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(ok), ok)) == [200]
    assert _http(port, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n") == [200]
    assert agent.health()["ready"] is True
