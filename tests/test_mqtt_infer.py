"""Inference request/response over MQTT with integrators' own clients: MQTT 5 (Response Topic,
Correlation Data, Message Expiry) and MQTT 3.1.1 (``reply_to`` in the payload), answers at the
QoS of the request.

Real Mosquitto and the embedded amqtt broker, real agent processes, plain paho clients.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop.agent.mqtt_link import MessageProps
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.messages import SCHEMA, InferError, InferResult, decode_infer_reply
from tests.conftest import wait_until, write_agent_config
from tests.onnx_models import expected_probabilities
from tests.onnx_variants import signed_bundle, slow_classifier_onnx

pytestmark = pytest.mark.broker


@dataclass
class Got:
    topic: str
    qos: int
    reply: InferResult | InferError
    correlation: bytes | None
    user: list[tuple[str, str]]


class Client:
    """A plain paho client of an integrator (MQTT 5 or 3.1.1) that collects what arrives on ``replies``."""

    def __init__(self, broker, replies: str, *, v5: bool) -> None:
        self.got: list[Got] = []
        self.strange: list[str] = []  # what arrived that is not an answer
        self.replies = replies
        self.v5 = v5
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"integrator-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect(broker.address.host, broker.address.port)
        self.c.subscribe(replies, 1)  # QoS 1: what arrives at QoS 0 was published at QoS 0
        self.c.loop_start()
        assert subscribed.wait(10), f"could not subscribe to {replies}"

    def _on_message(self, client, userdata, msg) -> None:
        if not mqtt.topic_matches_sub(self.replies, msg.topic):
            return  # amqtt 0.12 sends every new client the retained messages of other clients' subscriptions
        props = getattr(msg, "properties", None)
        corr = getattr(props, "CorrelationData", None)
        try:
            reply = decode_infer_reply(msg.payload)
        except Exception as exc:  # noted, and the test fails on it; paho's thread goes on
            self.strange.append(f"{msg.topic}: {msg.payload[:200]!r}: {exc}")
            return
        self.got.append(Got(msg.topic, msg.qos, reply, bytes(corr) if corr is not None else None,
                            [tuple(p) for p in getattr(props, "UserProperty", [])]))

    def request(self, topic: str, body: dict | bytes, qos: int, *, response_topic: str | None = None,
                correlation: bytes | None = None, expiry: int | None = None) -> None:
        props = None
        if self.v5:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
            if expiry is not None:
                props.MessageExpiryInterval = expiry
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.c.publish(topic, payload, qos=qos, properties=props).wait_for_publish(10)

    def wait(self, n: int, timeout: float = 10.0) -> list[Got]:
        assert wait_until(lambda: len(self.got) >= n, timeout), f"{len(self.got)} of {n} answers arrived"
        assert not self.strange, self.strange
        return self.got

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _deploy(fleet, aid, trained) -> None:
    out = fleet.deploy(aid, trained.b1.path.read_bytes(), model="sensor-mlp",
                       version=trained.v1.version["version"], timeout=60)
    assert out.ok, out.message


def _rows(trained, n=2):
    return trained.dataset.X[:n].tolist()


def test_mqtt5_client_gets_its_answer_on_its_response_topic_with_its_correlation_data(
        trained, fleet, online_agent, mosquitto):
    aid, _ = online_agent()
    _deploy(fleet, aid, trained)
    expected = fleet.infer(aid, _rows(trained))
    assert isinstance(expected, InferResult)
    mine, decoy = f"plant/{aid}/v5/answers", f"plant/{aid}/v5/not-here"
    client = Client(mosquitto, f"plant/{aid}/v5/#", v5=True)
    try:
        infer = topics.agent_topic(aid, topics.INFER)
        # the Response Topic wins over a reply_to in the payload; no id in the payload at all
        client.request(infer, {"inputs": _rows(trained), "reply_to": decoy}, 1,
                       response_topic=mine, correlation=b"\x00corr-1\xff")
        client.request(infer, {"inputs": _rows(trained)}, 0, response_topic=mine, correlation=b"corr-0")
        client.request(infer, b"{not json", 1, response_topic=mine, correlation=b"corr-bad")
        # a Response Topic with a wildcard (Mosquitto lets it through): refused, answered on reply_to
        client.request(infer, {"id": "w", "inputs": _rows(trained), "reply_to": mine}, 1,
                       response_topic=f"plant/{aid}/+/answers", correlation=b"corr-wild")
        got = client.wait(4)
        time.sleep(0.3)  # an answer on the decoy topic would show up here
        assert len(client.got) == 4 and all(g.topic == mine for g in got)
        by_corr = {g.correlation: g for g in got}
        one, zero, bad = by_corr[b"\x00corr-1\xff"], by_corr[b"corr-0"], by_corr[b"corr-bad"]
        wild = by_corr[b"corr-wild"].reply
        assert isinstance(wild, InferError) and wild.code == "bad_message" and wild.id == "w"
        assert "Response Topic" in wild.message
        assert isinstance(one.reply, InferResult) and one.qos == 1
        assert one.reply.outputs["label"] == expected.outputs["label"]
        np.testing.assert_allclose(one.reply.outputs["probabilities"], expected.outputs["probabilities"], atol=1e-6)
        assert isinstance(zero.reply, InferResult) and zero.qos == 0  # QoS 0 request: QoS 0 answer
        assert isinstance(bad.reply, InferError) and bad.reply.code == "bad_message" and bad.qos == 1
        assert all(("schema", str(SCHEMA)) in g.user for g in got)
    finally:
        client.close()


@pytest.mark.parametrize("qos", [0, 1])
def test_mqtt311_client_with_reply_to_gets_its_answer_at_its_qos(trained, fleet, online_agent, mosquitto, qos):
    aid, _ = online_agent()
    _deploy(fleet, aid, trained)
    reply_to = f"plant/{aid}/answers"
    client = Client(mosquitto, reply_to, v5=False)
    default = Client(mosquitto, topics.agent_topic(aid, topics.INFER_RESULT), v5=False)
    try:
        client.request(topics.agent_topic(aid, topics.INFER), {"id": "r1", "inputs": _rows(trained),
                                                               "reply_to": reply_to}, qos)
        (got,) = client.wait(1)
        assert got.topic == reply_to and got.qos == qos and got.correlation is None
        assert isinstance(got.reply, InferResult) and got.reply.id == "r1"
        # no reply_to: the answer goes to .../infer/result, still at the request's QoS
        default.request(topics.agent_topic(aid, topics.INFER), {"id": 7, "inputs": _rows(trained, 1)}, qos)
        (dflt,) = default.wait(1)
        assert isinstance(dflt.reply, InferResult) and dflt.reply.id == "7" and dflt.qos == qos
    finally:
        client.close()
        default.close()


def test_fleet_infer_speaks_mqtt5_properties_and_gets_them_back(trained, fleet, online_agent, mosquitto):
    aid, _ = online_agent()
    _deploy(fleet, aid, trained)
    assert fleet.link.protocol == "5"
    seen: list[mqtt.MQTTMessage] = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    watcher.on_subscribe = lambda *a: subscribed.set()
    watcher.on_message = lambda c, u, m: seen.append(m)
    watcher.connect(mosquitto.address.host, mosquitto.address.port)
    watcher.subscribe([(topics.agent_topic(aid, topics.INFER), 1), (fleet.reply_topic, 1)])
    watcher.loop_start()
    try:
        assert subscribed.wait(10)
        res = fleet.infer(aid, _rows(trained), timeout=5)
        assert isinstance(res, InferResult)
        assert wait_until(lambda: len(seen) >= 2, 5)
        request = next(m for m in seen if m.topic.endswith("/infer"))
        answer = next(m for m in seen if m.topic == fleet.reply_topic)
        rid = json.loads(request.payload)["id"]
        assert request.properties.ResponseTopic == fleet.reply_topic
        assert bytes(request.properties.CorrelationData) == rid.encode()
        assert 0 < request.properties.MessageExpiryInterval <= 5
        assert bytes(answer.properties.CorrelationData) == rid.encode() and res.id == rid
        assert ("schema", str(SCHEMA)) in [tuple(p) for p in answer.properties.UserProperty]
        # QoS 0 on request
        assert isinstance(fleet.infer(aid, _rows(trained, 1), qos=0), InferResult)
        assert wait_until(lambda: sum(m.topic == fleet.reply_topic for m in seen) >= 2, 5)
        assert [m.qos for m in seen if m.topic == fleet.reply_topic] == [1, 0]
    finally:
        watcher.loop_stop()
        watcher.disconnect()


def test_requests_whose_message_expiry_ran_out_in_the_queue_are_dropped(trained, fleet, online_agent, mosquitto):
    aid, proc = online_agent()
    out = fleet.deploy(aid, signed_bundle(trained.hub.key, slow_classifier_onnx()), model="iris", version="1",
                       timeout=30)  # tens of ms a request
    assert out.ok, out.message
    client = Client(mosquitto, f"plant/{aid}/slow", v5=True)
    row = [5.1, 3.5, 1.4, 0.2]
    try:
        infer = topics.agent_topic(aid, topics.INFER)
        for i in range(30):  # at once: the requests without expiry alone keep the agent busy for over a second
            client.request(infer, {"id": f"keep-{i}", "inputs": [row]}, 1, response_topic=f"plant/{aid}/slow")
            client.request(infer, {"id": f"exp-{i}", "inputs": [row]}, 1, response_topic=f"plant/{aid}/slow",
                           expiry=1)
        assert wait_until(lambda: sum(g.reply.id.startswith("keep-") for g in client.got) == 30, 60), proc.log()
        client.request(infer, {"id": "late", "inputs": [row]}, 1, response_topic=f"plant/{aid}/slow", expiry=5)
        assert wait_until(lambda: any(g.reply.id == "late" for g in client.got), 10)
        answered = {g.reply.id for g in client.got}
        assert all(isinstance(g.reply, InferResult) for g in client.got)
        expired = [f"exp-{i}" for i in range(30) if f"exp-{i}" not in answered]
        assert "exp-0" in answered  # served long before its second was up
        assert expired and "exp-29" in expired, sorted(answered)
        np.testing.assert_allclose(client.got[0].reply.outputs["probabilities"],
                                   expected_probabilities(np.asarray([row])), atol=1e-5)
        assert "past its Message Expiry of 1 s" in proc.log()
    finally:
        client.close()


def test_embedded_broker_311_answers_reply_to_at_the_requests_qos(trained, tmp_path, embedded_broker, agent_process):
    cfg = write_agent_config(tmp_path, "amqtt-infer", embedded_broker, trained.public_pem)
    proc = agent_process(cfg)
    with trained.hub.fleet(embedded_broker.address) as fleet:
        assert fleet.link.protocol == "3.1.1"
        assert fleet.wait_online(["amqtt-infer"], 30), proc.log()
        _deploy(fleet, "amqtt-infer", trained)
        res = fleet.infer("amqtt-infer", _rows(trained), qos=0)  # props dropped: the payload carries reply_to
        assert isinstance(res, InferResult)
        client = Client(embedded_broker, "plant/amqtt/answers", v5=False)
        try:
            for qos in (0, 1):
                client.request(topics.agent_topic("amqtt-infer", topics.INFER),
                               {"id": f"q{qos}", "inputs": _rows(trained), "reply_to": "plant/amqtt/answers"}, qos)
            got = {g.reply.id: g for g in client.wait(2)}
            assert set(got) == {"q0", "q1"} and all(g.topic == "plant/amqtt/answers" for g in got.values())
            # (no QoS check here: amqtt 0.12 delivers every message at the subscription's QoS, so the agent,
            # subscribed at QoS 1, sees QoS 1 requests only -- Mosquitto's tests above check the QoS)
            assert all(isinstance(g.reply, InferResult) and g.reply.outputs["label"] == res.outputs["label"]
                       for g in got.values())
        finally:
            client.close()


def _health(fleet, aid) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{fleet.agents()[aid].http_url}/v2/health/ready", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.reliability("MQTT inference input", "11 hostile requests: 3000-deep JSON, lone surrogates / "
                         "control char / noncharacter / wildcard / 70 kB reply_to, 5000-digit ints, non-UTF-8",
                         "each answered (bad reply_to -> infer/result), thread alive, no reconnect, next served")
def test_no_anonymous_message_stops_mqtt_inference(trained, fleet, online_agent, mosquitto, faults_tried):
    """Issue 11 item 1: 3,000 levels of nesting, or a lone surrogate in reply_to, made the error path raise
    again (RecursionError while peeking fields, UnicodeEncodeError from publish) and the inference thread
    ended: later requests were dropped, then answered ``overloaded``, while /ready said 200."""
    aid, proc = online_agent()
    _deploy(fleet, aid, trained)
    session = fleet.agents()[aid].session
    mine = f"plant/{aid}/answers"
    client = Client(mosquitto, mine, v5=False)
    default = Client(mosquitto, topics.agent_topic(aid, topics.INFER_RESULT), v5=False)
    infer = topics.agent_topic(aid, topics.INFER)
    big = _rows(trained, 60)  # over INLINE_MAX_BYTES: answered on the inference thread, never inline
    try:
        hostile = [
            b'{"id": "deep", "reply_to": "' + mine.encode() + b'", "inputs": ' + b"[" * 3000 + b"]" * 3000 + b"}",
            b'{"id": "surrogate", "reply_to": "plant/\\ud800/x", "inputs": ' + json.dumps(big).encode() + b"}",
            b'{"id": "surrogate-ok", "reply_to": "plant/\\udfff", "inputs": ' + json.dumps(big).encode() + b"}",
            b'{"id": "wild", "reply_to": "plant/#", "inputs": ' + json.dumps(big).encode() + b"}",
            # Mosquitto drops the connection of a client publishing to a topic with a control character
            b'{"id": "control", "reply_to": "plant/\\u0001", "inputs": ' + json.dumps(big).encode() + b"}",
            b'{"id": "nonchar", "reply_to": "plant/\\uffff", "inputs": ' + json.dumps(big).encode() + b"}",
            b'{"id": "long", "reply_to": "' + b"t" * 70000 + b'", "inputs": ' + json.dumps(big).encode() + b"}",
            b'{"id": ' + b"9" * 5000 + b', "reply_to": "' + mine.encode() + b'", "inputs": []}',
            b'{"id": "num", "reply_to": "' + mine.encode() + b'", "inputs": [[' + b"9" * 5000 + b"]]}",
            b'[' * 100000,
            b"\xff\xfe not utf-8",
        ]
        faults_tried(len(hostile))
        for payload in hostile:
            client.request(infer, payload, 1)
        for i in range(5):
            client.request(infer, {"id": f"ok-{i}", "inputs": big, "reply_to": mine}, 1)
        assert wait_until(lambda: sum(g.reply.id.startswith("ok-") for g in client.got) == 5, 20), proc.log()
        ok = [g.reply for g in client.got if g.reply.id.startswith("ok-")]
        assert all(isinstance(r, InferResult) and len(r.outputs["label"]) == 60 for r in ok)
        assert len(client.got) == 5  # nothing else could be answered on reply_to: ...
        # ... not a topic name, or a payload that cannot be read at all (no id, no reply_to): infer/result
        assert wait_until(lambda: len(default.got) >= 11, 10), [g.reply for g in default.got]
        codes = sorted((g.reply.id, g.reply.code) for g in default.got if isinstance(g.reply, InferError))
        assert codes == sorted([("surrogate", "bad_message"), ("surrogate-ok", "bad_message"),
                                ("control", "bad_message"), ("nonchar", "bad_message"),
                                ("wild", "bad_message"), ("long", "bad_message"), ("", "too_deep"),
                                ("", "number_too_large"), ("", "number_too_large"), ("", "too_deep"),
                                ("", "bad_message")]), codes
        status, health = _health(fleet, aid)
        assert status == 200 and health["workers"]["inference"] == {"alive": True, "restarts": 0, "error": ""}
        assert "Traceback" not in proc.log() and "disconnected" not in proc.log()
        assert fleet.agents()[aid].session == session  # never dropped by the broker: no new session
    finally:
        client.close()
        default.close()


@pytest.mark.parametrize("props", [
    MessageProps(correlation_data=b"\x00corr\xff", user_properties=(("schema", "1"),)),
    MessageProps(response_topic="plant/é/answers", correlation_data=b"", message_expiry=70000,
                 content_type="application/json", user_properties=(("schema", "1"), ("ü", "x" * 300))),
    MessageProps(message_expiry=0),
    MessageProps(user_properties=(("k", "v" * 200),) * 3),
])
def test_packed_properties_are_the_bytes_paho_packs(props):
    """The agent publishes answers with properties packed once (paho's own packing is slow)."""
    mine, pahos = props.packed(), props.to_paho()
    assert mine is not None and pahos is not None
    assert mine.pack() == pahos.pack()
    assert MessageProps().packed() is None
