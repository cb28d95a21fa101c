"""Deploys a real agent process refuses, and what it leaves untouched when it does.

Real Mosquitto, real agent processes (isolated from hub/torch/Qt), real signed bundles.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeloop.agent.wire.messages import InferResult

pytestmark = pytest.mark.broker


def _state(tmp_path: Path, aid: str) -> dict:
    return json.loads((tmp_path / f"{aid}-state" / "state.json").read_text())


def _stored_bundles(tmp_path: Path, aid: str) -> set[str]:
    return {p.stem for p in (tmp_path / f"{aid}-state" / "bundles").glob("*.elb")}


def _incoming(tmp_path: Path, aid: str) -> list[str]:
    return sorted(p.name for p in (tmp_path / f"{aid}-state" / "incoming").iterdir())


def test_bundle_naming_another_model_or_version_than_the_command_is_refused(trained, fleet, online_agent, tmp_path):
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
