"""Deploys a real agent process refuses, and what it leaves untouched when it does.

Real Mosquitto, real agent processes (isolated from hub/torch/Qt), real signed bundles.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from edgeloop.agent.wire.messages import InferResult
from tests.agent_rig import AgentRig
from tests.conftest import wait_until
from tests.onnx_models import classifier_onnx
from tests.onnx_variants import signed_bundle

pytestmark = pytest.mark.broker


def _state(tmp_path: Path, aid: str) -> dict:
    return json.loads((tmp_path / f"{aid}-state" / "state.json").read_text())


def _stored_bundles(tmp_path: Path, aid: str) -> set[str]:
    return {p.stem for p in (tmp_path / f"{aid}-state" / "bundles").glob("*.elb")}


def _incoming(tmp_path: Path, aid: str) -> list[str]:
    return sorted(p.name for p in (tmp_path / f"{aid}-state" / "incoming").iterdir())


@pytest.mark.reliability("bundle verification",
                         "a validly signed bundle of another model or version than the deploy names (sent, and "
                         "already in the store)",
                         "refused bundle_mismatch; the active version keeps serving; nothing left on disk")
def test_bundle_naming_another_model_or_version_than_the_command_is_refused(trained, fleet, online_agent, tmp_path,
                                                                            faults_tried):
    faults_tried(3)
    aid, _ = online_agent()
    v1, v2 = trained.v1.version["version"], trained.v2.version["version"]
    assert fleet.deploy(aid, trained.b1.path.read_bytes(), model="sensor-mlp", version=v1, timeout=30).ok
    before = fleet.infer(aid, trained.dataset.X[:3].tolist())
    assert isinstance(before, InferResult)

    # transferred in full, verified, then refused: the command says another version / another model
    for model, version in (("sensor-mlp", v1), ("another-model", v2)):
        out = fleet.deploy(aid, trained.b2.path.read_bytes(), model=model, version=version, timeout=30)
        assert not out.ok and out.code == "bundle_mismatch", out
        assert f"bundle holds sensor-mlp {v2}" in out.message and f"named {model} {version}" in out.message
        assert trained.hub.registry.get_deployment(out.command_id)["status"] == "failed"
    st = _state(tmp_path, aid)
    assert st["active"] == trained.b1.sha256 and set(st["installed"]) == {trained.b1.sha256}
    assert _stored_bundles(tmp_path, aid) == {trained.b1.sha256}
    assert _incoming(tmp_path, aid) == []  # the refused transfers are gone too
    after = fleet.infer(aid, trained.dataset.X[:3].tolist())
    assert isinstance(after, InferResult) and after.version == v1 and after.outputs == before.outputs

    # a bundle already in the store is checked against the command as well
    assert fleet.deploy(aid, trained.b2.path.read_bytes(), model="sensor-mlp", version=v2, timeout=30).ok
    out = fleet.deploy(aid, trained.b1.path.read_bytes(), model="sensor-mlp", version=v2, timeout=30)
    assert not out.ok and out.code == "bundle_mismatch", out
    assert _state(tmp_path, aid)["active"] == trained.b2.sha256
    assert fleet.infer(aid, trained.dataset.X[:1].tolist()).version == v2
    # and the same stored bundle named correctly is activated without a transfer
    out = fleet.deploy(aid, trained.b1.path.read_bytes(), model="sensor-mlp", version=v1, timeout=30)
    assert out.ok and out.details["bundle_sha256"] == trained.b1.sha256, out
    assert _state(tmp_path, aid)["active"] == trained.b1.sha256


@pytest.mark.reliability("disk full", "a deploy to an agent with less free space than it must keep",
                         "refused insufficient_space before any transfer, saying how much it keeps free")
def test_too_little_free_space_refuses_the_deploy_before_any_transfer(trained, fleet, online_agent, tmp_path):
    reserve = 2**60  # an exabyte kept free: no disk this test runs on has that much
    aid, _ = online_agent(min_free_bytes=reserve)
    out = fleet.deploy(aid, trained.b1.path.read_bytes(), model="sensor-mlp",
                       version=trained.v1.version["version"], timeout=30)
    assert not out.ok and out.code == "insufficient_space", out
    assert "MiB free in" in out.message and "limits.min_free_bytes" in out.message
    assert f"{reserve / 2**20:.1f} MiB" in out.message  # says how much it keeps free
    assert _stored_bundles(tmp_path, aid) == set() and _incoming(tmp_path, aid) == []
    assert _state(tmp_path, aid)["active"] is None
    assert fleet.agents()[aid].active is None


# --- a plain MQTT rig (no hub): commands the hub would never send --------------------------------------
@pytest.fixture
def rig(tmp_path, mosquitto):
    with AgentRig(tmp_path, mosquitto) as r:
        yield r


@pytest.mark.reliability("signed commands", "a validly signed command that lives 31 years",
                         "refused expiry_too_far without using its counter; a 6-day command accepted")
def test_a_command_valid_for_more_than_seven_days_is_refused_without_using_its_counter(rig, tmp_path):
    aid = f"ref-{uuid.uuid4().hex[:8]}"
    rig.procs[aid] = rig.start(rig.prepare(aid, ("1", "2")))
    assert rig.online([aid]), rig.procs[aid].log()
    far = rig._send(aid, "rollback", {"bundle_sha256": rig.sha["1"]}, ttl=31 * 365 * 86400.0)  # 31 years
    assert wait_until(lambda: rig.finals(far), 20), rig.procs[aid].log()
    [refused] = rig.finals(far)
    assert (refused["ok"], refused["code"]) == (False, "expiry_too_far") and "at most 7 days" in refused["message"]
    assert _state(tmp_path, aid)["counters"] == {} and rig.serving_version(aid) == "2"
    near = rig._send(aid, "rollback", {"bundle_sha256": rig.sha["1"]}, ttl=6 * 86400.0)  # within the cap
    assert wait_until(lambda: rig.finals(near), 20) and [e["ok"] for e in rig.finals(near)] == [True]
    assert rig.serving_version(aid) == "1"


@pytest.mark.reliability("bundle verification",
                         "another validly signed bundle swapped into the agent's store under a stored bundle's name "
                         "(deploy, rollback)",
                         "both refused hash_mismatch; the active version keeps serving")
def test_a_bundle_swapped_in_the_store_is_refused_when_a_deploy_or_rollback_names_it(rig, tmp_path, faults_tried):
    faults_tried(2)
    aid = f"ref-{uuid.uuid4().hex[:8]}"
    config = rig.prepare(aid, ("1", "2"))  # 2 serves, 1 kept for rollback
    # an attacker with the disk (not the key) puts another validly signed bundle under 1's name
    (tmp_path / f"{aid}-state" / "bundles" / f"{rig.sha['1']}.elb").write_bytes(
        signed_bundle(rig.key, classifier_onnx(), version="0"))
    rig.procs[aid] = rig.start(config)
    assert rig.online([aid]), rig.procs[aid].log()
    for cid in (rig.deploy(aid, "1"), rig.rollback(aid, "1")):
        assert wait_until(lambda cid=cid: rig.finals(cid), 20), rig.procs[aid].log()
        [answer] = rig.finals(cid)  # the install's (rollback's) result: what the hub waits for
        assert (answer["ok"], answer["code"]) == (False, "hash_mismatch") and "altered" in answer["message"], answer
    assert rig.serving_version(aid) == "2" and _state(tmp_path, aid)["active"] == rig.sha["2"]
