"""Opt-in capture of field data: the reservoir, the caps, the signed manifest, feedback labels, and
batches that travel to the hub in checked chunks and become dataset versions with lineage.

Unit tests use a real onnxruntime model; the end-to-end tests a real Mosquitto, a real agent
process, the real hub fleet intake and a real SQLite registry."""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgeloop.agent.capture import Capture, CapturedRow, CaptureSettings, Reservoir, version_seed
from edgeloop.agent.config import AgentConfig
from edgeloop.agent.errors import ConfigError, InputValueError, MessageFormatError, UnsupportedSchemaError
from edgeloop.agent.runtime import ModelRunner
from edgeloop.agent.wire.capture import (
    CaptureManifest,
    Feedback,
    capture_filter,
    parse_capture_leaf,
    sha256_hex,
    split_chunks,
)
from edgeloop.agent.wire.envelope import SigningKey, TrustedKeys, sign_report, verify_report
from edgeloop.agent.wire.fields import dumps
from edgeloop.hub.fleet import MosquittoBroker
from tests.conftest import wait_until, watch_topic, write_agent_config
from tests.onnx_models import FEATURES, LABELS, classifier_onnx, manifest_for
from tests.onnx_variants import signed_bundle


# --- the reservoir ------------------------------------------------------------------------------------
def _row(i: int, size: int = 10) -> CapturedRow:
    return CapturedRow([float(i)], "x", f"r{i}", 0, float(i), size)


def test_reservoir_keeps_a_uniform_sample_with_a_fixed_seed():
    """Algorithm R: each of 100 rows ends in a 10-row sample with probability 0.1 (2000 seeded runs;
    the binomial standard deviation is 0.0067, the bound is 4.5 of them), and first and last rows alike."""
    hits: Counter[int] = Counter()
    runs = 2000
    for seed in range(runs):
        r = Reservoir(10, 1 << 30, seed)
        for i in range(100):
            r.offer(_row(i))
        assert len(r.items) == 10 and r.seen == 100
        hits.update(int(x.values[0]) for x in r.items)
    shares = np.array([hits[i] / runs for i in range(100)])
    assert np.all(np.abs(shares - 0.1) < 0.03), shares
    assert abs(shares[:50].mean() - shares[50:].mean()) < 0.01  # no bias to early or late rows
    a, b = Reservoir(5, 1 << 30, 7), Reservoir(5, 1 << 30, 7)
    for i in range(50):
        a.offer(_row(i))
        b.offer(_row(i))
    assert [x.values for x in a.items] == [x.values for x in b.items]  # seeded: reproducible


def test_reservoir_never_holds_more_rows_or_bytes_than_its_caps():
    rng = random.Random(1)
    r = Reservoir(8, 500, 3)
    for i in range(400):
        r.offer(_row(i, size=rng.randint(40, 120)))
        assert len(r.items) <= 8 and r.bytes <= 500
        assert r.bytes == sum(x.size for x in r.items)
    assert r.seen == 400 and len(r.items) >= 4
    assert version_seed(0, "iris", "1") != version_seed(0, "iris", "2")


# --- the sampler on a real model --------------------------------------------------------------------
@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    model = classifier_onnx()
    return ModelRunner.load(manifest_for(model), model, bundle_sha256="ab" * 32)


def _capture(tmp_path: Path, **settings) -> Capture:
    key = SigningKey.generate()
    return Capture(CaptureSettings(enabled=True, **settings), tmp_path / "capture", agent_id="a1",
                   sign=lambda doc: dumps(sign_report(key, doc)), publish=lambda leaf, data: None,
                   connected=lambda: False)


def _serve(cap: Capture, runner: ModelRunner, n: int, prefix: str = "r") -> np.ndarray:
    x = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    for i in range(n):
        outputs, _ = runner.answer(runner.predict(x[i:i + 1]))
        cap.observe(runner, x[i:i + 1], outputs, f"{prefix}{i}")
    return x


def _spooled(cap: Capture) -> list[tuple[CaptureManifest, str]]:
    out = []
    for bid in cap.spool.pending():
        manifest, data = cap.spool.read(bid)
        out.append((CaptureManifest.from_dict(json.loads(manifest)), data.decode()))
    return out


def test_a_batch_is_cut_after_upload_rows_and_holds_a_sample_within_max_rows(tmp_path, runner):
    cap = _capture(tmp_path, max_rows=12, upload_rows=30)
    _serve(cap, runner, 29)
    cap._write_cut()
    assert _spooled(cap) == []  # 29 served: not yet
    _serve(cap, runner, 1, prefix="last")
    cap._write_cut()
    [(m, text)] = _spooled(cap)
    assert (m.rows, m.seen_rows, m.labelled_rows, m.model, m.version) == (12, 30, 0, "iris", "1")
    lines = text.splitlines()
    assert lines[0].split(",") == [*FEATURES, "prediction", "label", "request_id", "request_time"]
    assert len(lines) == 13 and all(line.split(",")[4] in LABELS for line in lines[1:])
    assert sha256_hex(text.encode()) == m.sha256 and m.size == len(text.encode())


def test_max_bytes_caps_the_sample_and_capture_is_off_by_default(tmp_path, runner):
    cap = _capture(tmp_path, max_bytes=2048, upload_rows=200)
    _serve(cap, runner, 200)
    cap._write_cut()
    [(m, text)] = _spooled(cap)
    assert m.rows < 200 and m.seen_rows == 200
    assert sum(len(line) + 1 for line in text.splitlines()[1:]) <= 2048 + 24 * m.rows  # the label column aside
    off = Capture(CaptureSettings(), tmp_path / "off", agent_id="a1", sign=lambda d: b"", publish=lambda *a: None,
                  connected=lambda: False)
    _serve(off, runner, 300)
    off._write_cut()
    assert not off.enabled and off.spool.pending() == [] and off.counts["offered"] == 0


def test_feedback_labels_the_rows_of_its_request_and_is_checked(tmp_path, runner):
    cap = _capture(tmp_path, upload_rows=1000)
    _serve(cap, runner, 10)
    assert cap.feedback(Feedback("r3", "virginica")) == 1
    assert cap.feedback(Feedback("r4", 0)) == 1  # a class index
    assert cap.feedback(Feedback("never-asked", "setosa")) == 0
    with pytest.raises(InputValueError, match="not a class of model iris"):
        cap.feedback(Feedback("r5", "tulip"))
    with pytest.raises(MessageFormatError, match='needs "id"'):
        Feedback.decode(b'{"label": "setosa"}')
    assert cap.request_upload() == 10
    cap._write_cut()
    [(m, text)] = _spooled(cap)
    rows = {line.split(",")[6]: line.split(",")[5] for line in text.splitlines()[1:]}
    assert m.labelled_rows == 2 and rows["r3"] == "virginica" and rows["r4"] == "setosa" and rows["r1"] == ""


def test_capture_settings_from_config_and_command(tmp_path):
    doc = {"agent_id": "a1", "state_dir": "s", "capture": {"enabled": True, "max_rows": 50, "upload_rows": 20}}
    cfg = AgentConfig.from_dict(doc, base=tmp_path)
    assert cfg.capture == CaptureSettings(enabled=True, max_rows=50, upload_rows=20)
    (tmp_path / "a.toml").write_text(cfg.to_toml())
    assert AgentConfig.load(tmp_path / "a.toml").capture == cfg.capture
    assert AgentConfig.from_dict({**doc, "capture": {}}, base=tmp_path).capture.enabled is False
    with pytest.raises(ConfigError, match="unknown keys: max_row"):
        AgentConfig.from_dict({**doc, "capture": {"max_row": 5}}, base=tmp_path)
    with pytest.raises(ConfigError, match="max_bytes must be a whole number"):
        CaptureSettings().merged({"max_bytes": -1})
    assert CaptureSettings().merged({"enable": True, "max_rows": 9}).enabled is True


# --- the manifest on the wire ----------------------------------------------------------------------
def _manifest(data: bytes, chunk: int = 1024) -> CaptureManifest:
    return CaptureManifest(batch_id="c" * 32, agent_id="a1", model="iris", version="1", bundle_sha256="ab" * 32,
                           task="classification", feature_names=list(FEATURES), labels=list(LABELS), rows=3,
                           labelled_rows=1, seen_rows=10, first_at=1.0, last_at=2.0, created_at=3.0,
                           sha256=sha256_hex(data), size=len(data), chunk_size=chunk,
                           chunk_sha256=[sha256_hex(c) for c in split_chunks(data, chunk)], columns=["a"])


def test_capture_manifest_round_trips_signed_and_refuses_what_it_does_not_speak():
    data = b"x" * 2500
    m = _manifest(data)
    assert m.chunks == 3
    key = SigningKey.generate()
    signed = json.loads(dumps(sign_report(key, m.to_dict())))
    verify_report(signed, TrustedKeys.of([key.public]))
    assert CaptureManifest.from_dict(signed) == m
    with pytest.raises(UnsupportedSchemaError, match="capture schema 1"):
        CaptureManifest.from_dict({**m.to_dict(), "schema": 2})
    with pytest.raises(MessageFormatError, match="chunk hashes"):
        CaptureManifest.from_dict({**m.to_dict(), "chunk_sha256": m.chunk_sha256[:2]})
    assert parse_capture_leaf(f"capture/{'c' * 32}/manifest") == ("c" * 32, None)
    assert parse_capture_leaf(f"capture/{'c' * 32}/2") == ("c" * 32, 2)
    assert parse_capture_leaf("capture/zz/2") is None
    assert capture_filter("edgeloop/v1") == "edgeloop/v1/agents/+/capture/+/+"


# --- end to end: agent process, broker, hub ----------------------------------------------------------
def _post(url: str, doc: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(doc).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def hub(tmp_path):
    from edgeloop.hub.services import Hub

    return Hub(tmp_path / "hub", actor="tests")


def _online(hub, fleet, tmp_path, broker, agent_process, aid: str, **capture):
    cfg = write_agent_config(tmp_path, aid, broker, hub.key.public_pem(),
                             capture=CaptureSettings(enabled=True, chunk_bytes=1024, **capture))
    proc = agent_process(cfg)
    assert fleet.wait_online([aid], timeout=30), proc.log()
    bundle = signed_bundle(hub.key, classifier_onnx(), version="1")
    out = fleet.deploy(aid, bundle, model="iris", version="1", timeout=60)
    assert out.ok, (out.code, out.message, proc.log())
    return cfg, proc


@pytest.mark.broker
def test_captured_rows_with_labels_become_a_dataset_version_with_lineage(hub, tmp_path, mosquitto, agent_process):
    with hub.fleet(mosquitto.address.url) as fleet, \
            watch_topic(mosquitto, capture_filter("edgeloop/v1")) as wire:
        aid = f"cap-{tmp_path.name[-12:]}".replace("_", "-")
        _, proc = _online(hub, fleet, tmp_path, mosquitto, agent_process, aid, upload_rows=1000)
        url = fleet.agents()[aid].http_url
        x = np.random.default_rng(5).normal(size=(16, 4)).round(3)
        for i in range(10):  # over HTTP, with request ids of ours
            _post(f"{url}/v2/models/iris/infer", {"id": f"h{i}", "inputs": [x[i].tolist()]})
        mqtt_ids = [fleet.infer(aid, [x[10 + i].tolist()], model="iris").id for i in range(6)]
        truth = {f"h{i}": LABELS[i % 3] for i in range(6)} | {mqtt_ids[i]: LABELS[(i + 1) % 3] for i in range(4)}
        for rid in [f"h{i}" for i in range(6)]:
            assert _post(f"{url}/v2/models/iris/feedback", {"id": rid, "label": truth[rid]}) == \
                {"id": rid, "labelled_rows": 1}
        for rid in mqtt_ids[:4]:  # feedback over MQTT, QoS 1, before the upload command below
            info = fleet.link.publish(f"edgeloop/v1/agents/{aid}/feedback", json.dumps(
                {"id": rid, "label": truth[rid]}).encode(), qos=1)
            info.wait_for_publish(10)
        [res] = hub.set_capture(fleet, [aid], upload=True, timeout=30)
        assert res["ok"] and res["details"] == {"rows": 16}, res
        assert wait_until(lambda: len(hub.list_captures()) == 1, 30), proc.log()
        [rec] = hub.list_captures(agent_id=aid, model="iris")
        assert (rec["agent_id"], rec["model"], rec["version"], rec["rows"], rec["labelled_rows"], rec["seen_rows"]) \
            == (aid, "iris", "1", 16, 10, 16)
        assert rec["first_at"] <= rec["last_at"] and rec["bundle_sha256"] and rec["dataset_id"]
        assert rec["manifest"]["chunk_size"] == 1024 and len(rec["manifest"]["chunk_sha256"]) >= 2
        ds = hub.load_dataset(rec["dataset_id"])
        assert ds.n_rows == 10 and ds.feature_names == list(FEATURES) and ds.labels == list(LABELS)
        got = {tuple(np.round(ds.X[i], 3)): ds.labels[ds.y[i]] for i in range(ds.n_rows)}
        want = {tuple(np.float32(x[i])): truth[f"h{i}"] for i in range(6)} | \
               {tuple(np.float32(x[10 + i])): truth[mqtt_ids[i]] for i in range(4)}
        assert {tuple(np.round(np.array(k, np.float32), 3)): v for k, v in want.items()} == got
        assert hub.get_dataset(rec["dataset_id"])["name"] == f"capture-{aid}-iris"
        detail = hub.capture_detail(rec["batch_id"][:8])
        assert detail["dataset"]["id"] == rec["dataset_id"] and "6 unlabelled rows" in rec["note"]

        # a tampered chunk is refused; the genuine one, sent after it, is taken
        batch = rec["batch_id"]
        mine = [(t, p) for t, p in wire if f"/capture/{batch}/" in t]
        manifest = next(p for t, p in mine if t.endswith("/manifest"))
        chunks = sorted(((int(t.rsplit("/", 1)[1]), p) for t, p in mine if not t.endswith("/manifest")))
        hub.purge_captures(batch_id=batch)
        assert hub.list_captures() == [] and not (hub.home.root / rec["path"]).exists()
        refused = fleet.captures.refused
        base = f"edgeloop/v1/agents/{aid}/capture/{batch}"
        fleet.link.publish(f"{base}/manifest", manifest, qos=1).wait_for_publish(10)
        for seq, data in chunks:
            bad = data.replace(b",", b";", 1) if seq == 0 else data
            fleet.link.publish(f"{base}/{seq}", bad, qos=1).wait_for_publish(10)
        assert wait_until(lambda: fleet.captures.refused > refused, 15)
        assert hub.list_captures() == []
        fleet.link.publish(f"{base}/0", chunks[0][1], qos=1).wait_for_publish(10)
        assert wait_until(lambda: len(hub.list_captures()) == 1, 15)
        assert hub.load_dataset(hub.list_captures()[0]["dataset_id"]).n_rows == 10
        assert hub.capture_dataset([batch]).sha256 == ds.sha256  # the rows of several batches, as one dataset

        # a label that does not fit is a 400; a signed command turns capture off, and feedback is then a 409
        _post(f"{url}/v2/models/iris/infer", {"id": "late", "inputs": [x[0].tolist()]})  # in the new sample
        with pytest.raises(urllib.error.HTTPError) as bad:
            _post(f"{url}/v2/models/iris/feedback", {"id": "late", "label": "tulip"})
        assert bad.value.code == 400
        [off] = hub.set_capture(fleet, [aid], enable=False, timeout=30)
        assert off["ok"] and off["details"]["enabled"] is False, off
        with pytest.raises(urllib.error.HTTPError) as refused_fb:
            _post(f"{url}/v2/models/iris/feedback", {"id": "h8", "label": "setosa"})
        assert refused_fb.value.code == 409


@pytest.mark.broker
def test_a_batch_cut_while_the_broker_is_down_survives_an_agent_restart_and_arrives(hub, tmp_path, agent_process):
    workdir = tmp_path / "mosquitto"
    broker = MosquittoBroker(workdir=workdir).start()
    try:
        with hub.fleet(broker.address.url) as fleet:
            aid = "cap-outage"
            cfg, proc = _online(hub, fleet, tmp_path, broker, agent_process, aid, max_rows=12, upload_rows=30,
                                resend_seconds=2)
            url = fleet.agents()[aid].http_url
            broker.stop()
            for i in range(30):  # HTTP answers without the broker; the 30th row cuts the batch
                _post(f"{url}/v2/models/iris/infer", {"id": f"q{i}", "inputs": [[0.1 * i, 1.0, 2.0, 0.5]]})
            spool = tmp_path / f"{aid}-state" / "capture"
            assert wait_until(lambda: len(list(spool.glob("*.manifest"))) == 1, 15), proc.log()
            proc.stop()
            proc.start()  # the spool is on disk: a restart loses nothing
            broker = MosquittoBroker(port=broker.address.port, workdir=workdir).start()
            assert wait_until(lambda: len(hub.list_captures()) == 1, 60), proc.log()
            [rec] = hub.list_captures()
            assert (rec["rows"], rec["seen_rows"], rec["labelled_rows"], rec["dataset_id"]) == (12, 30, 0, None)
            assert "0 of 12 rows carry a label" in rec["note"]
            assert wait_until(lambda: not list(spool.glob("*.manifest")), 15)  # the hub acknowledged: off the disk
            assert cfg.exists()
    finally:
        broker.stop()
