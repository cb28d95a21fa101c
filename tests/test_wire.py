"""Round trips of every wire codec, and strict decoding of malformed documents.

``CODECS`` lists one or two samples of every class that goes on the wire (optional
parts present and absent) with its decoder; the parametrized tests below hold each
of them to the same rules: ``from_dict(to_dict(x)) == x``, a missing required field
or a value of the wrong JSON kind is refused by name with MessageFormatError, and
the documents are the ones earlier releases wrote.
"""

import base64
import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

import pytest

from edgeloop.agent.errors import ConfigError, MessageFormatError, PayloadTooLargeError, UnsupportedSchemaError
from edgeloop.agent.wire import messages as m
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.bundle import RawBundle, read_container, write_container
from edgeloop.agent.wire.envelope import (
    COMMAND_PAYLOAD_TYPE,
    MANIFEST_PAYLOAD_TYPE,
    Envelope,
    Signature,
    SigningKey,
    canonical_json,
    seal,
    sign_detached,
)
from edgeloop.agent.wire.manifest import (
    DriftReference,
    FeatureReference,
    FileEntry,
    Manifest,
    SmokeTest,
    TensorSpec,
)
from tests.factories import make_bundle, make_manifest


def _roundtrip(msg):
    back = m.decode(msg.encode())
    assert type(back) is type(msg)
    assert back == msg
    return back


def test_command_roundtrip_and_typed_args():
    spec = {"transfer_id": "ab" * 16, "bundle_sha256": "cd" * 32, "size": 100, "chunk_size": 30, "chunks": 4}
    cmd = m.Command(command="deploy", command_id="c1", agent_id="a1", counter=7, issued_at=1.0,
                    expires_at=2.0, args={"transfer": spec, "model": "demo", "version": "1"})
    back = _roundtrip(cmd)
    assert back.transfer().chunks == 4


@pytest.mark.reliability("message decoding", "a transfer spec with a wrong chunk count or id",
                         "refused with the reason")
def test_transfer_spec_rejects_inconsistent_counts(faults_tried):
    faults_tried(2)
    spec = {"transfer_id": "ab" * 16, "bundle_sha256": "cd" * 32, "size": 100, "chunk_size": 30, "chunks": 3}
    with pytest.raises(MessageFormatError, match="chunks=3"):
        m.TransferSpec.from_dict(spec)
    with pytest.raises(MessageFormatError, match="32 lowercase hex"):
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
@pytest.mark.reliability("message decoding",
                         "a malformed inference request (not JSON, array, no inputs, wildcard reply_to, future "
                         "schema, not UTF-8)",
                         "refused with the reason")
def test_infer_request_malformed(payload, match):
    with pytest.raises(MessageFormatError, match=match):
        m.InferRequest.decode(payload)


@pytest.mark.reliability("message decoding", "JSON over the size limit", "refused: payload too large")
def test_oversized_json_refused():
    with pytest.raises(PayloadTooLargeError):
        m.load_json(b" " * 100, limit=10)


@pytest.mark.reliability("message decoding",
                         "an unknown message type, a future schema, a mistyped field, another message type than "
                         "expected",
                         "refused with the reason")
def test_decode_rejects_unknown_type_wrong_schema_and_bad_fields(faults_tried):
    faults_tried(4)
    with pytest.raises(MessageFormatError, match="unknown message type"):
        m.decode(b'{"schema": 1, "type": "gossip"}')
    ev = m.Event(event="error", agent_id="a", ok=True, at=1.0).to_dict()
    with pytest.raises(UnsupportedSchemaError):
        m.decode(json.dumps({**ev, "schema": 2}))
    with pytest.raises(MessageFormatError, match="field 'ok' must be bool"):
        m.decode(json.dumps({**ev, "ok": "yes"}))
    with pytest.raises(MessageFormatError, match="expected a 'drift_report'"):
        m.decode(json.dumps(ev), expected=m.DriftReport)


@pytest.mark.reliability("message decoding", "a chunk with a flipped bit, bad magic, or cut short",
                         "refused (CRC, magic, too short)")
def test_chunk_roundtrip_and_corruption(faults_tried):
    faults_tried(3)
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


@pytest.mark.reliability("message decoding",
                         "a manifest with a ../../etc/passwd path, an unknown entrypoint, a future schema",
                         "refused with the reason")
def test_manifest_rejects_escaping_paths_and_bad_entrypoint(faults_tried):
    faults_tried(3)
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


# --- every codec: explicit, symmetric, strict -------------------------------------
_KEY = SigningKey.generate()


def _manifest_full() -> Manifest:
    """Two files (model.fp32.onnx, model.onnx), drift reference, smoke test, lineage, quantization."""
    smoke = SmokeTest([[1.0, 2.0, 3.0]], {"probabilities": [[0.5, 0.5]]}, 1e-3)
    man = make_manifest(_KEY, {"model.onnx": b"abc", "model.fp32.onnx": b"defg"}, smoke=smoke)
    man.entrypoint = "model.onnx"
    man.file("model.fp32.onnx").role = "model-fp32"
    man.quantization = {"chosen": "int8", "numbers": {"fp32": 1.0}}
    return man


def _manifest_bare() -> Manifest:
    """No labels, drift reference, smoke test, lineage or quantization."""
    return Manifest(model_name="r", version="2", task="regression", created_at=3.0, key_id="ab" * 8,
                    entrypoint="m.onnx", files=[FileEntry("m.onnx", "0" * 64, 0)], feature_names=["x"],
                    inputs=[TensorSpec("features", "FP32", [-1, 1])],
                    outputs=[TensorSpec("prediction", "FP64", [-1, 1])])


_SPEC = m.TransferSpec("ab" * 16, "cd" * 32, 100, 30, 4)
_DRIFT_REF = DriftReference(features=[FeatureReference("t", [0.0, 1.5], [3, 0, 2], 0.7, 0.2)],
                            output_labels=["a", "b"], output_shares=[0.25, 0.75], window=100, min_rows=50,
                            psi_threshold=0.3, ks_threshold=0.1)
_ENVELOPE_SIG = Signature("ab" * 8, bytes(range(64)))

# (sample, decoder): every class that goes on the wire, with optional parts present and absent
CODECS: dict[str, tuple[Any, Callable[[dict], Any]]] = {
    "active_model": (m.ActiveModel("demo", "2", "ab" * 32), lambda d: m.ActiveModel.from_dict(d, "active")),
    "agent_state_full": (m.AgentState(
        agent_id="a1", status="online", session=3, agent_version="0.1.0", started_at=1.5, host="pi",
        http_url="http://127.0.0.1:8080", active=m.ActiveModel("demo", "2", "ab" * 32),
        installed=[m.ActiveModel("demo", "1", "cd" * 32)], trusted_keys=["ab" * 8, "cd" * 8],
        tags={"site": "plant-a", "hw": "pi5"}), m.AgentState.from_dict),
    "agent_state_bare": (m.AgentState(agent_id="a1", status="offline", session=0, agent_version="0.1.0",
                                      started_at=0.0), m.AgentState.from_dict),
    "agent_state_probation": (m.AgentState(
        agent_id="a1", status="online", session=1, agent_version="0.1.0", started_at=0.0,
        probation=m.ProbationStatus("2", 9.5, 3, 1, "demo", "ab" * 32, 5, True, False)), m.AgentState.from_dict),
    "transfer_spec": (_SPEC, lambda d: m.TransferSpec.from_dict(d, "transfer")),
    "transfer_spec_shared_topic": (dataclasses.replace(_SPEC, topic="edgeloop/v1/transfers/" + "ab" * 16),
                                   lambda d: m.TransferSpec.from_dict(d, "transfer")),
    "command_full": (m.Command(command="deploy", command_id="c1", agent_id="a1", counter=7, issued_at=1.0,
                               expires_at=2.0, args={"transfer": _SPEC.to_dict(), "model": "demo"}),
                     m.Command.from_dict),
    "command_bare": (m.Command("rollback", "c2", "a1", 8, 1.0, 2.0), m.Command.from_dict),
    "event_full": (m.Event(event="install_result", agent_id="a1", ok=False, at=3.0, code="hash_mismatch",
                           message="altered", command_id="c1", details={"bundle_sha256": "x", "n": [1, 2]}),
                   m.Event.from_dict),
    "event_bare": (m.Event(event="error", agent_id="a1", ok=True, at=0.5), m.Event.from_dict),
    "infer_result": (m.InferResult("r1", "demo", "1", {"probabilities": [[0.1, 0.9]]}, 0.5), m.InferResult.from_dict),
    "infer_error": (m.InferError("r1", "bad_shape", "expected 3 features"), m.InferError.from_dict),
    "feature_drift": (m.FeatureDrift("t", [1, 0, 3], 0.5, 0.3, 1.2, True),
                      lambda d: m.FeatureDrift.from_dict(d, "feature")),
    "drift_report_full": (m.DriftReport(
        agent_id="a1", model="demo", version="1", bundle_sha256="ab" * 32, window=2, rows=200, started_at=1.0,
        ended_at=2.0, psi_threshold=0.2, ks_threshold=0.1,
        features=[m.FeatureDrift("t", [1, 2, 3], 0.5, 0.3, 1.2, True)], output_counts=[100, 100], output_js=0.05),
        m.DriftReport.from_dict),
    "drift_report_bare": (m.DriftReport(
        agent_id="a1", model="demo", version="1", bundle_sha256="ab" * 32, window=0, rows=0, started_at=1.0,
        ended_at=1.0, psi_threshold=0.2, ks_threshold=0.1, features=[]), m.DriftReport.from_dict),
    "tensor_spec": (TensorSpec("features", "FP32", [-1, 3]), lambda d: TensorSpec.from_dict(d, "tensor")),
    "file_entry": (FileEntry("sub/data.bin", "0f" * 32, 12, "data"), lambda d: FileEntry.from_dict(d, "file")),
    "feature_reference": (FeatureReference("t", [0.0, 1.5], [3, 0, 2], 0.7, 0.2),
                          lambda d: FeatureReference.from_dict(d, "feature")),
    "drift_reference_full": (_DRIFT_REF, lambda d: DriftReference.from_dict(d, "drift")),
    "drift_reference_bare": (DriftReference(features=[]), lambda d: DriftReference.from_dict(d, "drift")),
    "smoke_test": (SmokeTest([[1.0, 2.0]], {"prediction": [[0.5]]}, 1e-3), lambda d: SmokeTest.from_dict(d, "smoke")),
    "manifest_full": (_manifest_full(), Manifest.from_dict),
    "manifest_bare": (_manifest_bare(), Manifest.from_dict),
    "signature": (_ENVELOPE_SIG, lambda d: Signature.from_dict(d, "signature")),
    "envelope_detached": (Envelope(MANIFEST_PAYLOAD_TYPE, (_ENVELOPE_SIG,)), lambda d: Envelope.from_dict(d)),
    "envelope_sealed": (Envelope(COMMAND_PAYLOAD_TYPE, (_ENVELOPE_SIG, Signature("cd" * 8, b"\0" * 64)), b'{"a":1}'),
                        lambda d: Envelope.from_dict(d)),
}
# keys every document of the class must carry whatever its defaults say (schema versions, kinds, types)
HEADER_KEYS = {"schema", "type", "kind"}


@pytest.mark.parametrize("name", sorted(CODECS))
def test_codec_roundtrip(name):
    sample, decode = CODECS[name]
    d = sample.to_dict()
    assert decode(d) == sample
    assert decode(json.loads(json.dumps(d, allow_nan=False))) == sample  # JSON-ready, not just Python-equal
    if isinstance(sample, m.Message):
        assert m.decode(sample.encode()) == sample
        assert m.decode(sample.encode(), expected=type(sample)) == sample


@pytest.mark.parametrize("name", sorted(CODECS))
def test_to_dict_is_a_copy(name):
    """Editing the document (as the hub does before signing) never reaches back into the object."""
    sample, decode = CODECS[name]
    before = json.dumps(sample.to_dict(), sort_keys=True, default=repr)
    d = sample.to_dict()
    _scribble(d)
    assert json.dumps(sample.to_dict(), sort_keys=True, default=repr) == before


def _scribble(value):
    if isinstance(value, dict):
        for k in list(value):
            _scribble(value[k])
        value["scribbled"] = True
    elif isinstance(value, list):
        for item in value:
            _scribble(item)
        value.append("scribbled")


@pytest.mark.parametrize("name", sorted(CODECS))
@pytest.mark.reliability("message decoding", "each field of each message left out",
                         "a required field refused by name, an optional one defaulted")
def test_missing_field_is_named_or_defaulted(name, faults_tried):
    """A required field left out is refused by name; an optional one decodes to its default."""
    sample, decode = CODECS[name]
    for f in dataclasses.fields(sample):
        d = sample.to_dict()
        if f.name not in d:  # left out when absent (a detached envelope has no payload)
            assert getattr(sample, f.name) is None and f.default is None, f.name
            continue
        del d[f.name]
        faults_tried()
        optional = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if optional and f.name not in HEADER_KEYS:
            default = f.default_factory() if callable(f.default_factory) else f.default
            assert decode(d) == dataclasses.replace(sample, **{f.name: default}), f.name
        else:
            with pytest.raises(MessageFormatError, match=f.name):
                decode(d)
    if isinstance(sample, m.Message):
        for header in ("schema", "type"):
            d = sample.to_dict()
            del d[header]
            faults_tried()
            with pytest.raises(MessageFormatError, match=header):
                decode(d)


_WRONG_VALUES = ["text", 7, 1.5, True, [1], {"k": 1}]


def _json_kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


@pytest.mark.parametrize("name", sorted(CODECS))
@pytest.mark.reliability("message decoding", "each field of each message given another JSON kind",
                         "refused naming the field")
def test_wrong_json_type_is_refused_by_name(name, faults_tried):
    """Any field given a value of another JSON kind -> MessageFormatError naming it (never KeyError/TypeError)."""
    sample, decode = CODECS[name]
    refused = 0
    for key, value in sample.to_dict().items():
        if key == "drifted_features" or value is None:  # derived on output / an absent optional part
            continue
        for wrong in _WRONG_VALUES:
            if _json_kind(wrong) == _json_kind(value) and key not in HEADER_KEYS:
                continue
            if type(wrong) is type(value) and wrong == value:
                continue
            d = sample.to_dict()
            d[key] = wrong
            with pytest.raises(MessageFormatError, match=key):
                decode(d)
            refused += 1
    faults_tried(refused)
    assert refused >= 4


def test_codecs_write_the_documents_they_always_wrote():
    """The explicit codecs reproduce the pre-codec format (``dataclasses.asdict`` plus the message header),
    so peers of the previous release read them, and manifests sign to the same bytes."""
    for name, (sample, _) in CODECS.items():
        if isinstance(sample, (Signature, Envelope)):
            continue  # signature documents were hand-built dicts; see test_envelope_documents_unchanged
        expected = dataclasses.asdict(sample)
        if isinstance(sample, m.TransferSpec) and sample.topic is None:
            del expected["topic"]  # added later, optional: absent when the agent's own topic carries the chunks
        if isinstance(sample, m.AgentState) and sample.probation is None:
            del expected["probation"]  # added later (the dead-man switch), optional: absent when none
        if isinstance(sample, m.Message):
            expected = {"schema": m.SCHEMA, "type": sample.TYPE, **expected}
        if isinstance(sample, m.DriftReport):
            expected["drifted_features"] = sample.drifted_features
        assert sample.to_dict() == expected, name
    man = _manifest_full()
    assert man.to_bytes() == canonical_json(dataclasses.asdict(man))


def test_envelope_documents_unchanged():
    key = SigningKey.generate()
    detached = sign_detached(key, MANIFEST_PAYLOAD_TYPE, b"payload")
    assert list(detached) == ["schema", "payload_type", "signatures"]
    assert list(detached["signatures"][0]) == ["keyid", "sig"]
    sealed = seal(key, COMMAND_PAYLOAD_TYPE, b"payload")
    assert list(sealed) == ["schema", "payload_type", "signatures", "payload"]
    assert base64.b64decode(sealed["payload"]) == b"payload"
    assert Envelope.from_dict(sealed).payload == b"payload"
    assert Envelope.from_dict(detached).signatures[0].keyid == key.keyid


def test_infer_request_codec_roundtrip_with_and_without_optional_fields():
    full = m.InferRequest("x", [[1.0, 2.0]], "demo", "my/reply")
    bare = m.InferRequest("y", {"f0": 1.0})
    for req in (full, bare):
        assert m.InferRequest.from_dict(req.to_dict()) == req
        assert m.InferRequest.decode(req.encode()) == req
    assert "model" not in bare.to_dict() and "reply_to" not in bare.to_dict()
    assert bare.to_dict()["type"] == "infer_request"


@pytest.mark.reliability("message decoding", "chunks with a bad id, a negative index, too much data, a future version",
                         "refused with the reason")
def test_chunk_codec_edges(faults_tried):
    faults_tried(6)
    for c in (m.Chunk("0" * 32, 0, b""), m.Chunk("f" * 32, 2**32 - 1, b"\0" * m.MAX_CHUNK_SIZE)):
        raw = c.encode()
        assert len(raw) == m.CHUNK_HEADER_SIZE + len(c.data)
        assert m.Chunk.decode(raw) == c
    with pytest.raises(MessageFormatError, match="lowercase hex"):
        m.Chunk("AB" * 16, 0, b"x").encode()  # would come back as lowercase: not a round trip
    with pytest.raises(MessageFormatError, match="32 lowercase hex"):
        m.Chunk("ab" * 8, 0, b"x").encode()  # would be zero-padded by struct: not a round trip
    with pytest.raises(MessageFormatError, match="index"):
        m.Chunk("ab" * 16, -1, b"x").encode()
    with pytest.raises(PayloadTooLargeError):
        m.Chunk("ab" * 16, 0, b"\0" * (m.MAX_CHUNK_SIZE + 1)).encode()
    future = bytearray(m.Chunk("ab" * 16, 1, b"x").encode())
    future[4] = 2
    with pytest.raises(UnsupportedSchemaError, match="version 2"):
        m.Chunk.decode(bytes(future))
    with pytest.raises(PayloadTooLargeError):
        m.Chunk.decode(bytes(m.CHUNK_HEADER_SIZE + m.MAX_CHUNK_SIZE + 1))


def test_container_codec_roundtrip():
    key = SigningKey.generate()
    raw = read_container(make_bundle(key))
    again = read_container(write_container(raw.manifest, raw.signature, raw.files))
    assert again == raw
    assert read_container(write_container(b"{}", b"{}", {})) == RawBundle(b"{}", b"{}", {})


def _mutate(d: dict, path: str, value) -> dict:
    """Copy of ``d`` with the item at ``a.b.0.c`` set to ``value``."""
    out = json.loads(json.dumps(d))
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


# semantic refusals that a type check cannot catch: (codec, path, value, error, message)
MALFORMED = [
    ("agent_state_full", "installed.0", "demo", MessageFormatError, r"agent_state: installed\[0\] must be a JSON obj"),
    ("agent_state_full", "session", True, MessageFormatError, "'session' must be int, got bool"),
    ("transfer_spec", "transfer_id", "AB" * 16, MessageFormatError, "32 lowercase hex"),
    ("transfer_spec", "size", 0, MessageFormatError, "must be positive"),
    ("transfer_spec", "chunks", 3, MessageFormatError, "chunks=3 does not match"),
    ("event_full", "event", "party", MessageFormatError, "unknown event kind 'party'"),
    ("event_full", "schema", 2, UnsupportedSchemaError, "schema 2 is not supported"),
    ("feature_drift", "counts.1", -1, MessageFormatError, "non-negative"),
    ("feature_drift", "counts.1", 1.5, MessageFormatError, r"counts\[1\] must be int"),
    ("drift_report_full", "features.0", 3, MessageFormatError, r"drift_report: features\[0\] must be a JSON object"),
    ("drift_report_full", "features.0.psi", "high", MessageFormatError, r"drift_report\.features\[0\]: field 'psi'"),
    ("drift_report_full", "output_counts.0", "many", MessageFormatError, r"output_counts\[0\] must be int"),
    ("tensor_spec", "datatype", "FP16", MessageFormatError, "datatype 'FP16' is not one of"),
    ("tensor_spec", "shape.1", 0, MessageFormatError, "positive integers or -1"),
    ("tensor_spec", "shape.0", "N", MessageFormatError, r"shape\[0\] must be int"),
    ("file_entry", "path", "a\\b", MessageFormatError, "stay in the bundle"),
    ("file_entry", "path", "/etc/passwd", MessageFormatError, "stay in the bundle"),
    ("file_entry", "sha256", "0F" * 32, MessageFormatError, "64 lowercase hex"),
    ("file_entry", "size", -1, MessageFormatError, "must not be negative"),
    ("feature_reference", "edges.0", "low", MessageFormatError, r"edges\[0\] must be float"),
    ("feature_reference", "edges", [2.0, 1.0], MessageFormatError, "strictly increasing"),
    ("feature_reference", "counts", [1, 2], MessageFormatError, "needs len\\(edges\\)\\+1 counts"),
    ("feature_reference", "counts.0", -3, MessageFormatError, "must not be negative"),
    ("drift_reference_full", "min_rows", 500, MessageFormatError, "min_rows <= window"),
    ("drift_reference_full", "output_labels.0", 1, MessageFormatError, r"output_labels\[0\] must be str"),
    ("manifest_full", "kind", "other", MessageFormatError, "kind 'other' is not 'edgeloop.bundle'"),
    ("manifest_full", "schema", 2, UnsupportedSchemaError, "upgrade the agent"),
    ("manifest_full", "task", "ranking", MessageFormatError, "task must be classification or regression"),
    ("manifest_full", "files.0.path", "model.onnx", MessageFormatError, "listed twice"),
    ("manifest_full", "files.0", "model.onnx", MessageFormatError, r"manifest: files\[0\] must be a JSON object"),
    ("manifest_full", "entrypoint", "other.onnx", MessageFormatError, "entrypoint 'other.onnx' is not among"),
    ("manifest_full", "outputs", [], MessageFormatError, "at least one output"),
    ("manifest_full", "feature_names.0", 5, MessageFormatError, r"feature_names\[0\] must be str"),
    ("manifest_full", "feature_names.0", "renamed", MessageFormatError, "must match feature_names"),
    ("manifest_full", "drift.features.0.edges", [1.0, float("inf")], MessageFormatError, "edges must be finite"),
    ("manifest_full", "smoke_test.expected", [], MessageFormatError, r"manifest\.smoke_test: field 'expected'"),
    ("envelope_sealed", "schema", 2, UnsupportedSchemaError, "schema 2 is not supported"),
    ("envelope_sealed", "signatures.0", "sig", MessageFormatError, r"signatures\[0\] must be an object"),
    ("envelope_sealed", "signatures.1.sig", "@@@", MessageFormatError, r"signatures\[1\]\.sig is not valid base64"),
    ("envelope_sealed", "payload", "not base64!", MessageFormatError, "payload is not valid base64"),
]


@pytest.mark.parametrize("name,path,value,error,match", MALFORMED, ids=[f"{c[0]}:{c[1]}" for c in MALFORMED])
@pytest.mark.reliability("message decoding",
                         "semantically bad documents (bad counts, paths, kinds, edges, signatures...)",
                         "refused with the reason")
def test_malformed_documents_are_refused_with_the_reason(name, path, value, error, match):
    sample, decode = CODECS[name]
    with pytest.raises(error, match=match):
        decode(_mutate(sample.to_dict(), path, value))


@pytest.mark.reliability("message decoding", "a manifest that is an array, or not JSON", "refused with the reason")
def test_manifest_from_bytes_refuses_non_objects(faults_tried):
    faults_tried(2)
    with pytest.raises(MessageFormatError, match="manifest must be a JSON object, got list"):
        Manifest.from_bytes(b"[]")
    with pytest.raises(MessageFormatError, match="manifest is not valid JSON"):
        Manifest.from_bytes(b"{")


@pytest.mark.reliability("message decoding", "command arguments with required fields missing",
                         "refused naming the field")
def test_typed_command_args_are_checked(faults_tried):
    faults_tried(2)
    cmd = m.Command("deploy", "c1", "a1", 1, 1.0, 2.0, args={"model": "demo"})
    with pytest.raises(MessageFormatError, match="deploy.args: missing field 'transfer'"):
        cmd.transfer()
    with pytest.raises(MessageFormatError, match="deploy.args: missing field 'bundle_sha256'"):
        cmd.target_bundle()
