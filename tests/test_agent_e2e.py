"""The agent as a real process on a real Mosquitto: deploy, serve, refuse, survive.

Agents run isolated from torch/Qt/hub (tests/agent_isolated.py); bundles come
from real PyTorch training; signatures use real Ed25519 keys.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from edgeloop.agent.wire import topics
from edgeloop.agent.wire.bundle import read_container, write_container
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.agent.wire.messages import InferError, InferResult
from edgeloop.hub.fleet import MosquittoBroker
from tests.conftest import wait_until
from tests.factories import make_command

pytestmark = pytest.mark.broker


def _command_id(envelope: bytes) -> str:
    from edgeloop.agent.wire.envelope import b64d

    return json.loads(b64d(json.loads(envelope)["payload"], "payload"))["command_id"]


def _rows(trained, n=3):
    return trained.dataset.X[:n].tolist()


def _deploy(fleet, aid, bundle, trained_version):
    return fleet.deploy(aid, bundle.path.read_bytes(), model="sensor-mlp",
                        version=trained_version.version["version"], timeout=30)


def _active(fleet, aid):
    st = fleet.agents().get(aid)
    return st.active if st else None


def test_deploy_serve_and_state(trained, fleet, online_agent):
    aid, _ = online_agent()
    out = _deploy(fleet, aid, trained.b1, trained.v1)
    assert out.ok, out.message
    assert out.details["bundle_sha256"] == trained.b1.sha256
    assert fleet.wait_for(lambda: (_active(fleet, aid) or None) is not None, 10)
    assert _active(fleet, aid).version == trained.v1.version["version"]
    res = fleet.infer(aid, _rows(trained))
    assert isinstance(res, InferResult)
    assert len(res.outputs["label"]) == 3 and set(res.outputs["label"]) <= set(trained.dataset.labels)
    np.testing.assert_allclose(np.sum(res.outputs["probabilities"], axis=1), 1.0, atol=1e-5)
    # the registry recorded the deployment as installed
    deps = trained.hub.registry.list_deployments(aid)
    assert deps[0]["status"] == "installed" and deps[0]["kind"] == "deploy"


def test_http_open_inference_protocol(trained, fleet, online_agent):
    aid, _ = online_agent()
    assert _deploy(fleet, aid, trained.b1, trained.v1).ok
    url = fleet.agents()[aid].http_url
    with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{url}/v2/models/sensor-mlp", timeout=5) as r:
        meta = json.loads(r.read())
    assert meta["name"] == "sensor-mlp" and meta["inputs"][0]["shape"][-1] == 6
    X = trained.dataset.X[:2]
    body = {"id": "r1", "inputs": [{"name": "features", "shape": [2, 6], "datatype": "FP32",
                                    "data": X.ravel().tolist()}]}
    req = urllib.request.Request(f"{url}/v2/models/sensor-mlp/infer", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        doc = json.loads(r.read())
    assert doc["id"] == "r1" and doc["model_name"] == "sensor-mlp"
    labels = next(o for o in doc["outputs"] if o["name"] == "label")
    mqtt = fleet.infer(aid, X.tolist())
    assert labels["data"] == mqtt.outputs["label"]  # both faces answer the same
    bad = urllib.request.Request(f"{url}/v2/models/sensor-mlp/infer", b'{"inputs": [[1, 2]]}',
                                 {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bad, timeout=5)
    assert err.value.code == 400 and "6" in json.loads(err.value.read())["error"]


@pytest.mark.parametrize("where", ["model", "manifest"])
def test_tampered_bundle_refused_previous_keeps_serving(trained, fleet, online_agent, where):
    aid, _ = online_agent()
    assert _deploy(fleet, aid, trained.b1, trained.v1).ok
    before = fleet.infer(aid, _rows(trained))
    raw = read_container(trained.b2.path.read_bytes())
    files = dict(raw.files)
    manifest = raw.manifest
    if where == "model":
        blob = bytearray(files["model.onnx"])
        blob[len(blob) // 2] ^= 0x01
        files["model.onnx"] = bytes(blob)
    else:
        manifest = manifest.replace(b'"version":"', b'"version":"9', 1)
    tampered = write_container(manifest, raw.signature, files)
    out = fleet.deploy(aid, tampered, model="sensor-mlp", version=trained.v2.version["version"], timeout=30)
    assert not out.ok
    assert out.code == ("hash_mismatch" if where == "model" else "bad_signature")
    assert _active(fleet, aid).bundle_sha256 == trained.b1.sha256
    after = fleet.infer(aid, _rows(trained))
    assert isinstance(after, InferResult) and after.version == trained.v1.version["version"]
    assert after.outputs == before.outputs
    assert trained.hub.registry.get_deployment(out.command_id)["status"] == "failed"


def test_rollback_forged_replayed_expired(trained, fleet, online_agent):
    aid, _ = online_agent()
    assert _deploy(fleet, aid, trained.b1, trained.v1).ok
    assert _deploy(fleet, aid, trained.b2, trained.v2).ok
    assert fleet.wait_for(lambda: _active(fleet, aid).bundle_sha256 == trained.b2.sha256, 10)

    ok = fleet.rollback(aid, trained.b1.sha256, reason="test")
    assert ok.ok, ok.message
    assert fleet.wait_for(lambda: _active(fleet, aid).bundle_sha256 == trained.b1.sha256, 10)

    # forged: a well-formed command signed by a key the agent does not trust
    forged = fleet.make_command(aid, "rollback", {"bundle_sha256": trained.b2.sha256})
    fleet.send(forged, key=SigningKey.generate())
    out = fleet.outcome(forged.command_id, ("rollback_result",), 10)
    assert not out.ok and out.code == "untrusted_key"

    # replayed: the exact bytes of the accepted rollback, again
    cmd = fleet.make_command(aid, "rollback", {"bundle_sha256": trained.b2.sha256})
    sent = fleet.send(cmd)
    assert fleet.outcome(cmd.command_id, ("rollback_result",), 10).ok
    fleet.send(cmd, raw=sent)
    out = fleet.outcome(cmd.command_id, ("rollback_result",), 10)
    assert not out.ok and out.code == "replayed"

    # expired: signed by the hub key, counter fresh, but past its expiry
    stale = make_command(trained.hub.key, aid, trained.hub.registry.next_counter(trained.hub.key.keyid),
                         args={"bundle_sha256": trained.b1.sha256}, now=time.time() - 3600, ttl=60)
    fleet.link.publish(topics.agent_topic(aid, topics.CMD), stale, qos=1)
    out = fleet.outcome(_command_id(stale), ("rollback_result",), 10)
    assert not out.ok and out.code == "expired"

    # for another agent: valid signature, wrong target
    other = make_command(trained.hub.key, "someone-else", trained.hub.registry.next_counter(trained.hub.key.keyid),
                         args={"bundle_sha256": trained.b1.sha256})
    fleet.link.publish(topics.agent_topic(aid, topics.CMD), other, qos=1)
    # none of the refused commands changed what is served
    time.sleep(0.5)
    assert _active(fleet, aid).bundle_sha256 == trained.b2.sha256

    # rollback to a bundle the agent never had
    out = fleet.rollback(aid, "ab" * 32)
    assert not out.ok and out.code == "store"


def test_malformed_inference_gets_clear_errors(trained, fleet, online_agent):
    aid, _ = online_agent()
    assert _deploy(fleet, aid, trained.b1, trained.v1).ok
    cases = {
        "wrong feature count": ([[1.0, 2.0]], None, "bad_shape"),
        "string": ([["hot"] * 6], None, "bad_value"),
        "unknown model": (_rows(trained, 1), "no-such-model", "model_not_found"),
    }
    for name, (rows, model, code) in cases.items():
        res = fleet.infer(aid, rows, model=model)
        assert isinstance(res, InferError), name
        assert res.code == code, (name, res)
        assert res.message
    # non-JSON straight onto the topic: the error goes to the default result topic
    import paho.mqtt.client as mqtt

    got = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_message = lambda cl, u, m: got.append(json.loads(m.payload))
    c.connect(fleet.broker.host, fleet.broker.port)
    c.subscribe(topics.agent_topic(aid, topics.INFER_RESULT), 1)
    c.loop_start()
    time.sleep(0.3)
    c.publish(topics.agent_topic(aid, topics.INFER), b"{not json", qos=1)
    c.publish(topics.agent_topic(aid, topics.INFER), b"x" * (2 * 1024 * 1024), qos=1)
    c.publish(topics.agent_topic(aid, topics.INFER), b'{"id": "n", "inputs": [[NaN, 1, 2, 3, 4, 5]]}', qos=1)
    c.publish(topics.agent_topic(aid, topics.INFER), b'{"id": "i", "inputs": [[Infinity, 1, 2, 3, 4, 5]]}', qos=1)
    assert wait_until(lambda: len(got) >= 4, 10)
    c.loop_stop()
    c.disconnect()
    assert got[0]["type"] == "infer_error" and got[0]["code"] == "bad_message"
    assert got[1]["code"] == "payload_too_large"
    assert got[2]["id"] == "n" and got[2]["code"] == "bad_value" and "NaN" in got[2]["message"] or "nan" in got[2]["message"].lower()
    assert got[3]["id"] == "i" and got[3]["code"] == "bad_value"
    # and the agent keeps serving
    assert isinstance(fleet.infer(aid, _rows(trained)), InferResult)


def test_restart_keeps_model_version_and_replay_state(trained, fleet, online_agent):
    aid, proc = online_agent()
    assert _deploy(fleet, aid, trained.b1, trained.v1).ok
    cmd = fleet.make_command(aid, "rollback", {"bundle_sha256": trained.b1.sha256})
    sent = fleet.send(cmd)
    assert fleet.outcome(cmd.command_id, ("rollback_result",), 10).ok
    proc.stop(kill=True)  # power cut: no clean shutdown
    assert fleet.wait_for(lambda: fleet.status(aid) == "offline", 15)  # the Last Will
    proc.start()
    assert fleet.wait_online([aid], 30), proc.log()
    st = fleet.agents()[aid]
    assert st.active.bundle_sha256 == trained.b1.sha256 and st.session >= 2
    assert isinstance(fleet.infer(aid, _rows(trained)), InferResult)
    fleet.send(cmd, raw=sent)
    out = fleet.outcome(cmd.command_id, ("rollback_result",), 10)
    assert out.code == "replayed"


def test_tampered_store_on_disk_falls_back(trained, fleet, online_agent, tmp_path):
    aid, proc = online_agent()
    assert _deploy(fleet, aid, trained.b1, trained.v1).ok
    assert _deploy(fleet, aid, trained.b2, trained.v2).ok
    proc.stop()
    stored = tmp_path / f"{aid}-state" / "bundles" / f"{trained.b2.sha256}.elb"
    data = bytearray(stored.read_bytes())
    data[data.index(b"onnx") + 600] ^= 0xFF  # somewhere in the model
    stored.write_bytes(bytes(data))
    proc.start()
    assert fleet.wait_online([aid], 30)
    assert fleet.wait_for(lambda: _active(fleet, aid).bundle_sha256 == trained.b1.sha256, 10), proc.log()
    assert "cannot be served" in proc.log()


def test_lost_chunks_are_asked_for_again(trained, fleet, online_agent):
    aid, _ = online_agent(transfer_idle_seconds=0.5)
    sent = []
    real = fleet._send_chunks

    def lossy(agent_id, spec, data, indices, progress=None):
        idx = list(indices)
        if not sent:  # first pass: drop every other chunk
            sent.append(idx)
            idx = idx[::2]
        real(agent_id, spec, data, idx, progress)

    fleet._send_chunks = lossy
    out = fleet.deploy(fleet_agent := aid, trained.b1.path.read_bytes(), model="sensor-mlp",
                       version=trained.v1.version["version"], chunk_size=1024, timeout=30)
    assert out.ok, out.message
    assert len(sent[0]) > 4 and fleet_agent == aid


def test_oversized_bundle_refused_before_transfer(trained, fleet, online_agent):
    aid, _ = online_agent(max_bundle_bytes=1000)
    out = _deploy(fleet, aid, trained.b1, trained.v1)
    assert not out.ok and out.code == "bundle_too_large"


def test_mosquitto_clients_alone_get_a_prediction(trained, fleet, online_agent, mosquitto):
    """An IoT device with only mosquitto_pub/mosquitto_sub can use the agent."""
    if not shutil.which("mosquitto_pub") or not shutil.which("mosquitto_sub"):
        pytest.fail("mosquitto-clients are not installed (.ci/run installs them)")
    aid, _ = online_agent()
    assert _deploy(fleet, aid, trained.b1, trained.v1).ok
    host, port = mosquitto.address.host, str(mosquitto.address.port)
    reply = f"plant/line1/{aid}/answers"
    sub = subprocess.Popen(["mosquitto_sub", "-h", host, "-p", port, "-t", reply, "-C", "1", "-W", "15"],
                           stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    row = ", ".join(str(float(v)) for v in trained.dataset.X[0])
    payload = f'{{"id": "iot-1", "inputs": [[{row}]], "reply_to": "{reply}"}}'
    subprocess.run(["mosquitto_pub", "-h", host, "-p", port, "-t", topics.agent_topic(aid, topics.INFER),
                    "-m", payload, "-q", "1"], check=True, timeout=10)
    out, _ = sub.communicate(timeout=20)
    doc = json.loads(out)
    assert doc["id"] == "iot-1" and doc["type"] == "infer_result"
    assert doc["outputs"]["label"] == fleet.infer(aid, _rows(trained, 1)).outputs["label"]
    # the retained status is readable the same way
    status = subprocess.run(["mosquitto_sub", "-h", host, "-p", port, "-t", topics.agent_topic(aid, topics.STATUS),
                             "-C", "1", "-W", "5"], capture_output=True, text=True, timeout=10)
    assert status.stdout.strip() == "online"


def test_agent_survives_broker_restart(trained, tmp_path, agent_process):
    """Broker loss: the agent reconnects on its own and announces itself again."""
    from edgeloop.hub.services import Hub  # noqa: F401  (hub used via trained)
    from tests.conftest import write_agent_config

    broker = MosquittoBroker().start()
    port = broker.address.port
    try:
        cfg = write_agent_config(tmp_path, "survivor", broker, trained.public_pem)
        proc = agent_process(cfg)
        with trained.hub.fleet(broker.address.url) as fleet:
            assert fleet.wait_online(["survivor"], 30), proc.log()
            assert fleet.deploy("survivor", trained.b1.path.read_bytes(), model="sensor-mlp",
                                version=trained.v1.version["version"], timeout=30).ok
        broker.stop()
        time.sleep(1.5)
        broker = MosquittoBroker(port=port).start()
        with trained.hub.fleet(broker.address.url) as fleet:
            assert fleet.wait_online(["survivor"], 40), proc.log()
            assert isinstance(fleet.infer("survivor", _rows(trained)), InferResult)
    finally:
        broker.stop()


def test_signed_bundle_failing_its_smoke_test_is_not_activated(trained, fleet, online_agent):
    """Validly signed, but the model does not produce what the manifest promises: refused, old model serves."""
    import dataclasses

    from edgeloop.agent.wire.bundle import pack_bundle, verify_bundle
    from edgeloop.agent.wire.envelope import TrustedKeys
    from edgeloop.agent.wire.manifest import SmokeTest

    aid, _ = online_agent()
    assert _deploy(fleet, aid, trained.b1, trained.v1).ok
    vb = verify_bundle(trained.b2.path.read_bytes(), TrustedKeys.of([trained.hub.key.public]))
    smoke = vb.manifest.smoke_test
    wrong = {k: (np.asarray(v) * 0 + 0.5).tolist() for k, v in smoke.expected.items()}
    manifest = dataclasses.replace(vb.manifest, smoke_test=SmokeTest(smoke.inputs, wrong, smoke.atol))
    bad = pack_bundle(manifest, dict(vb.files), trained.hub.key)
    out = fleet.deploy(aid, bad, model="sensor-mlp", version=vb.manifest.version, timeout=30)
    assert not out.ok and out.code == "smoke_test_failed", out
    assert _active(fleet, aid).bundle_sha256 == trained.b1.sha256
    assert fleet.infer(aid, _rows(trained)).version == trained.v1.version["version"]
