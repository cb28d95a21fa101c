"""Round trips of every wire message, and strict decoding of malformed ones."""

import json
import math

import pytest

from edgeloop.agent.errors import ConfigError, MessageFormatError, PayloadTooLargeError, UnsupportedSchemaError
from edgeloop.agent.wire import messages as m
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.agent.wire.manifest import Manifest
from tests.factories import make_manifest


def _roundtrip(msg):
    back = m.decode(msg.encode())
    assert type(back) is type(msg)
    assert back == msg
    return back


def test_agent_state_roundtrip():
    st = m.AgentState(agent_id="a1", status="online", session=3, agent_version="0.1.0", started_at=1.5,
                      host="pi", http_url="http://127.0.0.1:8080",
                      active=m.ActiveModel("demo", "2", "ab" * 32),
                      installed=[m.ActiveModel("demo", "1", "cd" * 32), m.ActiveModel("demo", "2", "ab" * 32)])
    _roundtrip(st)
    _roundtrip(m.AgentState(agent_id="a1", status="offline", session=0, agent_version="0.1.0", started_at=0.0))


def test_command_roundtrip_and_typed_args():
    spec = {"transfer_id": "ab" * 16, "bundle_sha256": "cd" * 32, "size": 100, "chunk_size": 30, "chunks": 4}
    cmd = m.Command(command="deploy", command_id="c1", agent_id="a1", counter=7, issued_at=1.0,
                    expires_at=2.0, args={"transfer": spec, "model": "demo", "version": "1"})
    back = _roundtrip(cmd)
    assert back.transfer().chunks == 4


def test_transfer_spec_rejects_inconsistent_counts():
    spec = {"transfer_id": "ab" * 16, "bundle_sha256": "cd" * 32, "size": 100, "chunk_size": 30, "chunks": 3}
    with pytest.raises(MessageFormatError, match="chunks=3"):
        m.TransferSpec.from_dict(spec)
    with pytest.raises(MessageFormatError, match="32 hex"):
        m.TransferSpec.from_dict({**spec, "transfer_id": "zz" * 16, "chunks": 4})


def test_event_roundtrip_and_unknown_kind():
    ev = m.Event(event="install_result", agent_id="a1", ok=False, at=3.0, code="hash_mismatch",
                 message="altered", command_id="c1", details={"bundle_sha256": "x"})
    _roundtrip(ev)
    d = ev.to_dict()
    d["event"] = "party"
    with pytest.raises(MessageFormatError, match="unknown event kind"):
        m.Event.from_dict(d)


def test_infer_result_and_error_roundtrip():
    _roundtrip(m.InferResult(id="r1", model="demo", version="1", outputs={"label": ["a"]}, latency_ms=0.5))
    err = m.InferError(id="r1", code="bad_shape", message="expected 3 features")
    assert m.decode_infer_reply(err.encode()) == err


def test_drift_report_roundtrip_lists_drifted_features():
    rep = m.DriftReport(agent_id="a1", model="demo", version="1", bundle_sha256="ab" * 32, window=2, rows=200,
                        started_at=1.0, ended_at=2.0, psi_threshold=0.2, ks_threshold=0.1,
                        features=[m.FeatureDrift("t", [1, 2, 3], 0.5, 0.3, 1.2, True),
                                  m.FeatureDrift("v", [2, 2, 2], 0.01, 0.02, 0.1, False)],
                        output_counts=[100, 100], output_js=0.05)
    back = _roundtrip(rep)
    assert back.drifted_features == ["t"]
    assert json.loads(rep.encode())["drifted_features"] == ["t"]


def test_infer_request_lenient_for_iot_clients():
    req = m.InferRequest.decode(b'{"id": 5, "inputs": [[1, 2, 3]]}')
    assert req.id == "5" and req.inputs == [[1, 2, 3]] and req.reply_to is None
    back = m.InferRequest.decode(m.InferRequest("x", [[1.0]], "demo", "my/reply").encode())
    assert back == m.InferRequest("x", [[1.0]], "demo", "my/reply")


@pytest.mark.parametrize("payload,match", [
    (b"not json", "not valid JSON"),
    (b"[1,2]", "must be a JSON object"),
    (b'{"id": "1"}', "missing field 'inputs'"),
    (b'{"id": "1", "inputs": [], "reply_to": "a/#"}', "wildcards"),
    (b'{"id": "1", "inputs": [], "schema": 9}', "schema 9"),
    (b"\xff\xfe", "not UTF-8|not valid JSON"),
])
def test_infer_request_malformed(payload, match):
    with pytest.raises(MessageFormatError, match=match):
        m.InferRequest.decode(payload)


def test_oversized_json_refused():
    with pytest.raises(PayloadTooLargeError):
        m.load_json(b" " * 100, limit=10)


def test_decode_rejects_unknown_type_wrong_schema_and_bad_fields():
    with pytest.raises(MessageFormatError, match="unknown message type"):
        m.decode(b'{"schema": 1, "type": "gossip"}')
    ev = m.Event(event="error", agent_id="a", ok=True, at=1.0).to_dict()
    with pytest.raises(UnsupportedSchemaError):
        m.decode(json.dumps({**ev, "schema": 2}))
    with pytest.raises(MessageFormatError, match="field 'ok' must be bool"):
        m.decode(json.dumps({**ev, "ok": "yes"}))
    with pytest.raises(MessageFormatError, match="expected a 'drift_report'"):
        m.decode(json.dumps(ev), expected=m.DriftReport)


def test_chunk_roundtrip_and_corruption():
    c = m.Chunk(transfer_id="ab" * 16, index=3, data=b"hello" * 10)
    raw = c.encode()
    assert m.Chunk.decode(raw) == c
    bad = bytearray(raw)
    bad[-1] ^= 1
    with pytest.raises(MessageFormatError, match="CRC"):
        m.Chunk.decode(bytes(bad))
    with pytest.raises(MessageFormatError, match="magic"):
        m.Chunk.decode(b"XXXX" + raw[4:])
    with pytest.raises(MessageFormatError, match="shorter"):
        m.Chunk.decode(raw[:5])


def test_manifest_roundtrip_is_canonical():
    key = SigningKey.generate()
    man = make_manifest(key, {"model.onnx": b"abc"})
    data = man.to_bytes()
    back = Manifest.from_bytes(data)
    assert back == man and back.to_bytes() == data


def test_manifest_rejects_escaping_paths_and_bad_entrypoint():
    key = SigningKey.generate()
    d = make_manifest(key, {"model.onnx": b"abc"}).to_dict()
    d["files"][0]["path"] = "../../etc/passwd"
    with pytest.raises(MessageFormatError, match="stay in the bundle"):
        Manifest.from_dict(d)
    d = make_manifest(key, {"model.onnx": b"abc"}).to_dict()
    d["entrypoint"] = "other.onnx"
    with pytest.raises(MessageFormatError, match="entrypoint"):
        Manifest.from_dict(d)
    d = make_manifest(key, {"model.onnx": b"abc"}).to_dict()
    d["schema"] = 99
    with pytest.raises(UnsupportedSchemaError, match="upgrade the agent"):
        Manifest.from_dict(d)


def test_topics():
    assert topics.agent_topic("edge-1", topics.INFER_RESULT) == "edgeloop/v1/agents/edge-1/infer/result"
    assert topics.parse_agent_topic("edgeloop/v1/agents/edge-1/infer/result") == ("edge-1", "infer/result")
    assert topics.parse_agent_topic("other/v1/agents/x/cmd") is None
    assert topics.all_agents("state") == "edgeloop/v1/agents/+/state"
    for bad in ("a/b", "a+", "#", "", "x" * 65, " a"):
        with pytest.raises(ConfigError):
            topics.check_agent_id(bad)
    assert max(t.count("/") for t in [topics.agent_topic("a", topics.INFER_RESULT)]) <= 7


def test_nan_cannot_be_encoded():
    with pytest.raises(ValueError):
        m.InferResult(id="r", model="m", version="1", outputs={"p": [math.nan]}, latency_ms=1.0).encode()
