"""Several models per agent: one real agent process serves two models (a classifier ``iris`` and a
regressor ``gauge``), each with its own active version, answering on its own MQTT request (``model``)
and HTTP address (``/v2/models/{name}``); deploy and rollback of one leave the other alone; drift
reports carry their own model; a restart keeps both; and a state dir written by a single-model agent
(no ``models`` in state.json) loads unchanged and becomes the first of the two.

Real Mosquitto, real onnxruntime, real signed bundles, a real agent process (tests/agent_rig.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest

from edgeloop.agent.drift import build_reference
from edgeloop.agent.store import AgentStore, StoreState
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.bundle import pack_bundle
from edgeloop.agent.wire.manifest import SmokeTest
from edgeloop.agent.wire.messages import (
    ActiveModel,
    AgentState,
    Chunk,
    InferError,
    InferRequest,
    InferResult,
    TransferSpec,
)
from tests.agent_rig import CHUNK, AgentRig, plain_client
from tests.conftest import wait_until, write_agent_config
from tests.onnx_models import (
    FEATURES,
    classifier_onnx,
    classifier_smoke,
    expected_prediction,
    manifest_for,
    regression_onnx,
)

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
WINDOW = 20  # rows per drift window: a few requests close one


def _bundle(key, model: str, version: str) -> bytes:
    """A signed bundle of ``model`` (iris: classifier, gauge: regressor) with a drift reference."""
    rng = np.random.default_rng(7)
    X = rng.normal([5.8, 3.0, 3.7, 1.2], [0.8, 0.4, 1.7, 0.7], (400, 4))
    ref = build_reference(X, list(FEATURES), window=WINDOW, min_rows=10, window_seconds=0)
    if model == "iris":
        mb, task, smoke = classifier_onnx(), "classification", classifier_smoke(ROWS)
    else:
        mb, task = regression_onnx(), "regression"
        smoke = SmokeTest(inputs=ROWS, expected={"prediction": expected_prediction(np.asarray(ROWS)).tolist()})
    manifest = dataclasses.replace(manifest_for(mb, task=task, model=model, version=version, smoke=smoke,
                                                drift=ref), key_id=key.keyid)
    return pack_bundle(manifest, {"model.onnx": mb}, key)


class Watch:
    """The agent's retained state and its drift reports, as a plain MQTT client sees them."""

    def __init__(self, broker, aid: str) -> None:
        self.state: dict | None = None
        self.drift: list[dict] = []
        self._lock = threading.Lock()
        self.client = plain_client(broker, self._on, topics.agent_topic(aid, topics.STATE),
                                   topics.agent_topic(aid, topics.DRIFT))

    def _on(self, client, userdata, msg) -> None:
        doc = json.loads(msg.payload)
        with self._lock:
            if msg.topic.endswith("/state"):
                self.state = doc
            else:
                self.drift.append(doc)

    def served(self) -> dict[str, str]:
        with self._lock:
            return {m["model"]: m["version"] for m in (self.state or {}).get("models", [])}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _deploy(rig: AgentRig, aid: str, bundle: bytes, model: str, version: str) -> None:
    sha = hashlib.sha256(bundle).hexdigest()
    spec = TransferSpec(uuid.uuid4().hex, sha, len(bundle), CHUNK, -(-len(bundle) // CHUNK))
    cid = rig._send(aid, "deploy", {"transfer": spec.to_dict(), "bundle_sha256": sha, "model": model,
                                    "version": version})
    for i in range(spec.chunks):
        rig.client.publish(topics.agent_topic(aid, topics.BUNDLE),
                           Chunk(spec.transfer_id, i, bundle[i * CHUNK:(i + 1) * CHUNK]).encode(), qos=1)
    _final_ok(rig, cid)


def _final_ok(rig: AgentRig, cid: str) -> None:
    assert wait_until(lambda: rig.finals(cid), 60), f"no result for command {cid}: {rig.events[-3:]}"
    final = rig.finals(cid)[0]
    assert final["ok"], final


def _ask(rig: AgentRig, aid: str, model: str | None, rows: list | None = None) -> InferResult | InferError:
    rid = uuid.uuid4().hex
    req = InferRequest(id=rid, inputs=rows or ROWS, model=model, reply_to="test/crash/replies")
    rig.client.publish(topics.agent_topic(aid, topics.INFER), req.encode(), qos=1)
    assert wait_until(lambda: rid in rig.replies, 20), f"{aid} did not answer"
    reply = rig.replies[rid]
    assert isinstance(reply, (InferResult, InferError))
    return reply


def _versions(rig: AgentRig, aid: str) -> dict[str, str]:
    """What each model answers with on MQTT: {model: version}."""
    out = {}
    for model in ("iris", "gauge"):
        reply = _ask(rig, aid, model)
        assert isinstance(reply, InferResult), reply
        assert reply.model == model
        out[model] = reply.version
    return out


def _http(url: str, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _old_format(state_dir) -> None:
    """Rewrite the store's state files as a single-model agent wrote them (no ``models``)."""
    for name in ("state.json", "state.prev.json"):
        path = state_dir / name
        doc = json.loads(path.read_text())
        doc.pop("models")
        path.write_text(json.dumps(doc))


def test_two_models_on_one_agent(tmp_path, mosquitto):
    broker = mosquitto
    aid = "mm1"
    with AgentRig(tmp_path, broker) as rig:
        b = {(m, v): _bundle(rig.key, m, v) for m, v in (("iris", "1"), ("iris", "2"), ("gauge", "1"),
                                                          ("gauge", "2"))}
        # a state dir as a single-model agent left it: iris 1 then 2 installed, 2 active
        store = AgentStore(tmp_path / f"{aid}-state")
        for v in ("1", "2"):
            store.install(hashlib.sha256(b["iris", v]).hexdigest(), b["iris", v], "iris", v)
        _old_format(store.root)
        config = write_agent_config(tmp_path, aid, broker, rig.key.public_pem(), transfer_idle_seconds=60.0)
        watch = Watch(broker, aid)
        try:
            agent = rig.procs[aid] = rig.start(config)
            assert rig.online([aid])
            one = _ask(rig, aid, None)  # one model: a request naming none goes to it, as before
            assert isinstance(one, InferResult) and (one.model, one.version) == ("iris", "2")
            assert wait_until(lambda: watch.served() == {"iris": "2"}, 10), watch.state

            _deploy(rig, aid, b["gauge", "1"], "gauge", "1")  # a second model: added, not replacing iris
            assert _versions(rig, aid) == {"iris": "2", "gauge": "1"}
            refused = _ask(rig, aid, None)
            assert isinstance(refused, InferError) and refused.code == "model_not_found", refused
            assert "'gauge'" in refused.message and "'iris'" in refused.message
            assert wait_until(lambda: watch.served() == {"iris": "2", "gauge": "1"}, 10), watch.state
            state = watch.state
            assert state is not None
            assert state["active"]["model"] == "gauge"  # the one activated last, for older hubs

            url = state["http_url"]
            assert _http(f"{url}/v2/models/iris")[1]["versions"] == ["2"]
            assert _http(f"{url}/v2/models/gauge")[1]["versions"] == ["1"]
            code, doc = _http(f"{url}/v2/models/gauge/versions/1/infer", {"inputs": ROWS})
            assert code == 200 and doc["model_name"] == "gauge" and doc["model_version"] == "1", doc
            code, doc = _http(f"{url}/v2/models/iris/infer", {"inputs": ROWS})
            assert code == 200 and (doc["model_name"], doc["model_version"]) == ("iris", "2"), doc
            assert _http(f"{url}/v2/models/gauge/versions/2")[0] == 404
            assert _http(f"{url}/v2/models/other")[0] == 404
            assert _http(f"{url}/v2/models/iris/ready")[0] == 200
            code, health = _http(f"{url}/v2/health/ready")
            assert code == 200 and [(h["model"], h["version"]) for h in health["models"]] == [("gauge", "1"),
                                                                                             ("iris", "2")]

            rows = ROWS * (WINDOW // 2)  # one request of WINDOW rows closes a window of that model
            assert isinstance(_ask(rig, aid, "gauge", rows), InferResult)
            assert wait_until(lambda: any(d["model"] == "gauge" for d in watch.drift), 15), watch.drift
            assert not any(d["model"] == "iris" for d in watch.drift)
            assert isinstance(_ask(rig, aid, "iris", rows), InferResult)
            assert wait_until(lambda: any(d["model"] == "iris" for d in watch.drift), 15), watch.drift
            assert {(d["model"], d["version"]) for d in watch.drift} == {("gauge", "1"), ("iris", "2")}

            _deploy(rig, aid, b["gauge", "2"], "gauge", "2")  # one model's deploy ...
            assert _versions(rig, aid) == {"iris": "2", "gauge": "2"}  # ... leaves the other alone
            cid = rig._send(aid, "rollback", {"bundle_sha256": hashlib.sha256(b["iris", "1"]).hexdigest()})
            _final_ok(rig, cid)  # a rollback of iris (to a bundle of the old single-model state)
            assert _versions(rig, aid) == {"iris": "1", "gauge": "2"}
            assert wait_until(lambda: watch.served() == {"iris": "1", "gauge": "2"}, 10), watch.state

            assert agent.stop() == 0  # a restart keeps both
            rig.status.pop(aid, None)
            agent = rig.procs[aid] = rig.start(config)
            assert rig.online([aid])
            assert _versions(rig, aid) == {"iris": "1", "gauge": "2"}
            saved = json.loads((store.root / "state.json").read_text())
            names = {sha: saved["installed"][sha]["model"] for sha in saved["models"].values()}
            assert sorted(names.values()) == ["gauge", "iris"]
        finally:
            watch.close()


# --- the store and the wire, without a process ----------------------------------------------------
SHA = {k: hashlib.sha256(k.encode()).hexdigest() for k in ("a1", "a2", "b1", "b2")}


def _fill(tmp_path) -> AgentStore:
    s = AgentStore(tmp_path / "st")
    for k in ("a1", "a2", "b1", "b2"):
        s.install(SHA[k], k.encode(), {"a": "alpha", "b": "beta"}[k[0]], k[1])
    return s


def test_store_keeps_one_active_version_per_model(tmp_path):
    s = _fill(tmp_path)
    assert [(b.model, b.version) for b in s.actives()] == [("alpha", "2"), ("beta", "2")]
    assert s.active().sha256 == SHA["b2"]  # the one activated last
    assert s.active("alpha").sha256 == SHA["a2"] and s.previous("alpha") == [SHA["a1"]]
    s.activate(SHA["a1"])  # a rollback of alpha leaves beta
    assert [(b.model, b.version) for b in s.actives()] == [("alpha", "1"), ("beta", "2")]
    assert s.previous("alpha") == [SHA["a2"]] and s.previous("beta") == [SHA["b1"]]
    again = AgentStore(s.root)  # read back
    assert again.state.models == s.state.models and again.active().sha256 == SHA["a1"]
    s.deactivate("beta")
    assert [b.model for b in s.actives()] == ["alpha"] and s.active("beta") is None


@pytest.mark.reliability("state files", "a state.json written by a single-model agent (no models)",
                         "loads unchanged: its active bundle is the one model served")
def test_a_single_model_state_loads(tmp_path):
    s = AgentStore(tmp_path / "st")
    for k in ("a1", "a2"):
        s.install(SHA[k], k.encode(), "alpha", k[1])
    _old_format(s.root)
    old = json.loads(s.state_path.read_text())
    assert "models" not in old
    loaded = AgentStore(s.root)
    assert loaded.state.models == {"alpha": SHA["a2"]} and loaded.active().sha256 == SHA["a2"]
    assert loaded.previous("alpha") == [SHA["a1"]]
    assert StoreState.from_dict(old).to_dict()["models"] == {"alpha": SHA["a2"]}


def test_agent_state_models_round_trip_and_old_states_decode():
    a, b = ActiveModel("alpha", "2", SHA["a2"]), ActiveModel("beta", "1", SHA["b1"])
    st = AgentState(agent_id="x", status="online", session=1, agent_version="0", started_at=1.0, active=b,
                    installed=[a, b], models=[a, b])
    assert AgentState.from_dict(st.to_dict()) == st
    assert st.active_of("alpha") == a and st.active_of("gamma") is None
    old = st.to_dict()
    del old["models"]  # an older agent's state: its one active model
    decoded = AgentState.from_dict(old)
    assert decoded.models == [] and decoded.served() == [b] and decoded.active_of("beta") == b


def test_rollout_and_fleet_view_read_each_models_version():
    from edgeloop.hub.runtime.rollouts import agent_record
    from edgeloop.hub.views import fleet_table

    row = {"agent_id": "x", "status": "online", "tags": {}, "active_model": "beta", "active_version": "1",
           "active_bundle": SHA["b1"], "models": [{"model": "alpha", "version": "2", "bundle_sha256": SHA["a2"]},
                                                  {"model": "beta", "version": "1", "bundle_sha256": SHA["b1"]}]}
    assert agent_record(row, "alpha").version == "2" and agent_record(row, "beta").version == "1"
    assert agent_record(row, "gamma").version is None
    old = {k: v for k, v in row.items() if k != "models"}  # a row of an older agent
    assert agent_record(old, "beta").version == "1" and agent_record(old, "alpha").version is None
    assert fleet_table([row]).rows[0][2] == "alpha 2, beta 1"


def test_an_expired_deploy_settles_from_any_models_active_bundle():
    from edgeloop.hub.registry.fleet_log import _active_bundles

    state = json.dumps({"active": {"model": "beta"}, "models": [{"model": "alpha", "bundle_sha256": SHA["a2"]},
                                                                 {"model": "beta", "bundle_sha256": SHA["b1"]}]})
    assert _active_bundles(SHA["b1"], state) == {SHA["a2"], SHA["b1"]}
    assert _active_bundles(SHA["b1"], json.dumps({"active": None})) == {SHA["b1"]}  # an older agent's state
    assert _active_bundles(None, None) == set() and _active_bundles(None, "not json") == set()
