"""The agent as a real process on a real Mosquitto: deploy, serve, refuse, survive.

Agents run isolated from torch/Qt/hub (tests/agent_isolated.py); bundles come
from real PyTorch training; signatures use real Ed25519 keys.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edgeloop.agent.mqtt_link import MqttLink, Will
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.bundle import read_container, write_container
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.agent.wire.messages import InferError, InferResult
from edgeloop.hub.fleet import MosquittoBroker
from tests.conftest import wait_until, watch_topic
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

    # for another agent: valid signature, wrong target (a rollback to b1, which this agent holds)
    installed = [m.bundle_sha256 for m in fleet.agents()[aid].installed]
    other = make_command(trained.hub.key, "someone-else", trained.hub.registry.next_counter(trained.hub.key.keyid),
                         args={"bundle_sha256": trained.b1.sha256})
    fleet.link.publish(topics.agent_topic(aid, topics.CMD), other, qos=1)
    out = fleet.outcome(_command_id(other), ("rollback_result",), 10)
    assert out.code == "wrong_target" and not out.ok, out
    assert out.event is not None and out.event.event == "command_result" and out.event.agent_id == aid
    # none of the refused commands changed what is served or what is installed
    assert _active(fleet, aid).bundle_sha256 == trained.b2.sha256
    assert [m.bundle_sha256 for m in fleet.agents()[aid].installed] == installed
    assert fleet.infer(aid, _rows(trained)).version == trained.v2.version["version"]

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
    assert got[2]["id"] == "n" and got[2]["code"] == "bad_value" and "nan" in got[2]["message"].lower()
    assert got[3]["id"] == "i" and got[3]["code"] == "bad_value"
    # and the agent keeps serving
    assert isinstance(fleet.infer(aid, _rows(trained)), InferResult)


def test_restart_keeps_model_version_and_replay_state(trained, fleet, online_agent):
    aid, proc = online_agent()
    assert _deploy(fleet, aid, trained.b1, trained.v1).ok
    cmd = fleet.make_command(aid, "rollback", {"bundle_sha256": trained.b1.sha256})
    sent = fleet.send(cmd)
    assert fleet.outcome(cmd.command_id, ("rollback_result",), 10).ok
    assert proc.stop(kill=True) == -signal.SIGKILL  # power cut: no clean shutdown
    assert fleet.wait_for(lambda: fleet.status(aid) == "offline", 15)  # the Last Will
    assert wait_until(lambda: trained.hub.registry.get_agent(aid)["status"] == "offline", 5)
    proc.start()
    assert fleet.wait_online([aid], 30), proc.log()
    st = fleet.agents()[aid]
    assert st.active.bundle_sha256 == trained.b1.sha256 and st.session >= 2
    # the Will of the previous session does not keep the new one offline in the registry
    assert wait_until(lambda: trained.hub.registry.get_agent(aid)["status"] == "online", 5)
    assert trained.hub.registry.get_agent(aid)["session"] == st.session
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
    sent: list[list[int]] = []  # the indices of every send: the first pass, then the agent's requests
    real = fleet._send_chunks

    def lossy(agent_id, spec, data, indices, progress=None):
        idx = list(indices)
        sent.append(idx)
        if len(sent) == 1:  # first pass: drop every other chunk
            idx = idx[::2]
        real(agent_id, spec, data, idx, progress)

    fleet._send_chunks = lossy
    out = fleet.deploy(aid, trained.b1.path.read_bytes(), model="sensor-mlp",
                       version=trained.v1.version["version"], chunk_size=1024, timeout=30)
    assert out.ok, out.message
    dropped = set(sent[0][1::2])
    assert len(sent[0]) > 4 and dropped
    # every lost chunk was asked for by the agent (transfer_missing) and sent again
    resent = set().union(*sent[1:]) if len(sent) > 1 else set()
    assert dropped <= resent, (sorted(dropped), sent[1:])


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


# --- stopping: what a hub that connects afterwards sees ---------------------------------------
@contextlib.contextmanager
def _late_hub(tmp_path, mosquitto, trained):
    """A NEW hub client with its own empty registry: all it can know comes from retained messages."""
    from edgeloop.hub.fleet import Fleet
    from edgeloop.hub.registry import Registry

    reg = Registry(tmp_path / "late-hub.sqlite")
    try:
        with Fleet(mosquitto.address, reg, trained.hub.key, actor="late-hub") as late:
            yield late, reg
    finally:
        reg.close()


def _retained_view(late, reg, aid, session):
    """Wait until the late hub has applied the retained status and state of ``aid`` (registry included)."""
    assert late.wait_for(lambda: late.status(aid) is not None and aid in late.agents(), 10)

    def recorded():
        return any(row["agent_id"] == aid and row["session"] == session for row in reg.list_agents())

    assert wait_until(recorded, 10), "the late hub never recorded the retained state"
    return late.agents()[aid], late.status(aid), reg.get_agent(aid)["status"]


def _port_closed(url: str) -> bool:
    parsed = urllib.parse.urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=2):
            return False
    except OSError:
        return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_agent_cleanly(trained, fleet, online_agent, mosquitto, tmp_path, sig):
    """SIGTERM/SIGINT: exit 0, offline state published by the agent itself, HTTP and zeroconf closed."""
    from edgeloop.agent.discovery import browse

    aid, proc = online_agent(zeroconf=True, zeroconf_interfaces=["127.0.0.1"])
    before = fleet.agents()[aid]
    assert before.http_url and not _port_closed(before.http_url)
    if sig == signal.SIGTERM:
        assert aid in {a.agent_id for a in browse(timeout=2.0, interfaces=["127.0.0.1"])}
    assert proc.stop(sig=sig, timeout=20) == 0, proc.log()
    log = proc.log()
    assert f"agent {aid} stopped (offline state published)" in log, log
    assert f"withdrew the zeroconf announcement of {aid}" in log
    assert _port_closed(before.http_url)
    if sig == signal.SIGTERM:
        assert aid not in {a.agent_id for a in browse(timeout=2.0, interfaces=["127.0.0.1"])}
    with _late_hub(tmp_path, mosquitto, trained) as (late, reg):
        state, status, recorded = _retained_view(late, reg, aid, before.session)
        # only the agent publishes its state topic: "offline" there is its own goodbye, not the Last Will
        assert state.status == "offline" and state.session == before.session
        assert state.active == before.active and state.http_url == before.http_url
        assert status == "offline" and recorded == "offline" and not late.is_online(aid)


def test_killed_agent_is_offline_for_a_hub_that_connects_later(trained, fleet, online_agent, mosquitto, tmp_path):
    """kill -9: the retained state still says online, the Last Will says offline, and the status wins."""
    aid, proc = online_agent()
    before = fleet.agents()[aid]
    assert proc.stop(kill=True) == -signal.SIGKILL
    assert "stopped" not in proc.log()
    assert fleet.wait_for(lambda: fleet.status(aid) == "offline", 15)  # the Last Will, seen live
    with _late_hub(tmp_path, mosquitto, trained) as (late, reg):
        state, status, recorded = _retained_view(late, reg, aid, before.session)
        assert state.status == "online" and state.session == before.session  # the agent never said goodbye
        assert status == "offline"
        assert recorded == "offline" and not late.is_online(aid)


def test_link_goodbye_discards_the_will_and_an_unacknowledged_one_keeps_it(mosquitto):
    """MqttLink.stop: DISCONNECT only after the broker acknowledged the goodbye; otherwise drop the
    connection so that the broker publishes the Last Will (a clean DISCONNECT would discard it)."""
    base = f"edgeloop-test/{uuid.uuid4().hex[:8]}"

    def connect(name: str) -> MqttLink:
        link = MqttLink(client_id=f"{base.replace('/', '-')}-{name}", host=mosquitto.address.host,
                        port=mosquitto.address.port, on_message=lambda *a: None,
                        will=Will(f"{base}/{name}/will", b"gone", 1, False)).start()
        assert link.wait_connected(10)
        return link

    with watch_topic(mosquitto, f"{base}/#") as got:
        clean = connect("clean")
        assert clean.stop(final=[(f"{base}/clean/bye", b"bye", 1, False)]) is True
        lost = connect("lost")
        lost.client.loop_stop()  # nothing reads the broker's PUBACK any more: the goodbye stays unacknowledged
        assert lost.stop(final=[(f"{base}/lost/bye", b"bye", 1, False)], timeout=0.5) is False
        assert wait_until(lambda: (f"{base}/lost/will", b"gone") in got, 10), got
        time.sleep(0.5)  # a Will of the clean link would have arrived by now
    assert (f"{base}/clean/bye", b"bye") in got
    assert (f"{base}/clean/will", b"gone") not in got


def test_status_wins_only_over_a_state_of_the_same_session(trained, mosquitto, tmp_path):
    """Retained state "online" + status "offline" (the Will) -> offline; a NEW session's birth is not
    overruled by the previous session's Will, and the agent counts as online once its status says so."""
    from edgeloop.agent.wire.messages import AgentState

    aid = f"fake-{uuid.uuid4().hex[:8]}"
    state_topic, status_topic = topics.agent_topic(aid, topics.STATE), topics.agent_topic(aid, topics.STATUS)

    def state(session: int) -> bytes:
        return AgentState(agent_id=aid, status="online", session=session, agent_version="test",
                          started_at=1000.0 + session, trusted_keys=[trained.hub.key.keyid]).encode()

    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect(mosquitto.address.host, mosquitto.address.port)
    pub.loop_start()
    try:
        pub.publish(state_topic, state(3), qos=1, retain=True).wait_for_publish(5)
        pub.publish(status_topic, b"offline", qos=1, retain=True).wait_for_publish(5)
        with _late_hub(tmp_path, mosquitto, trained) as (late, reg):
            got, status, recorded = _retained_view(late, reg, aid, 3)
            assert got.status == "online" and status == "offline" and recorded == "offline"
            pub.publish(state_topic, state(4), qos=1, retain=True).wait_for_publish(5)
            assert wait_until(lambda: reg.get_agent(aid)["session"] == 4, 10)
            assert reg.get_agent(aid)["status"] == "online" and not late.is_online(aid)
            pub.publish(status_topic, b"online", qos=1, retain=True).wait_for_publish(5)
            assert late.wait_for(lambda: late.is_online(aid), 10)
    finally:
        for topic in (state_topic, status_topic):  # clear the retained messages
            pub.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()
