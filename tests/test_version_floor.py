"""Version floors (``[security] version_floor = true``): a deploy below the newest version of a model the
agent installed is refused (``below_floor``), also after a restart; a signed rollback may go below it and
does not lower it. Real agent processes, a real Mosquitto, real signed bundles; the floor logic on real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.floors import FLOORS_FILE, VersionFloorError, check_floor, floor_of, raise_floor, version_key
from edgeloop.agent.store import InstalledBundle
from tests.conftest import wait_until

MODEL = "sensor-mlp"


def _cfg(tmp_path: Path, on: bool = True) -> AgentConfig:
    return AgentConfig(agent_id="floor-unit", state_dir=tmp_path, trusted_keys=[], version_floor=on)


def _active(version: str, model: str = MODEL) -> InstalledBundle:
    return InstalledBundle("0" * 64, model, version, 0.0)


@pytest.mark.parametrize(("version", "key"), [("1", (1,)), ("10", (10,)), ("1.10.0", (1, 10, 0)), ("v2", None),
                                              ("1.x", None), ("", None), ("١", None), ("1" * 19, None)])
def test_version_keys_are_dot_separated_integers(version, key):
    assert version_key(version) == key


def test_the_floor_rises_with_deploys_never_falls_and_survives_a_new_process(tmp_path):
    cfg = _cfg(tmp_path)
    check_floor(cfg, {"model": MODEL, "version": "1"}, None)  # no floor yet
    raise_floor(cfg, MODEL, "10")
    raise_floor(cfg, MODEL, "9")  # lower: ignored
    assert json.loads((tmp_path / FLOORS_FILE).read_text())["floors"] == {MODEL: "10"}
    assert floor_of(_cfg(tmp_path), MODEL, None) == "10"  # read back from the file
    with pytest.raises(VersionFloorError) as info:
        check_floor(cfg, {"model": MODEL, "version": "9"}, None)
    assert info.value.code == "below_floor" and "has installed sensor-mlp 10" in str(info.value)
    assert "edgeloop rollback" in str(info.value)
    check_floor(cfg, {"model": MODEL, "version": "10"}, None)  # the same version again: allowed
    check_floor(cfg, {"model": "other-model", "version": "1"}, None)  # floors are per model
    check_floor(cfg, {"model": MODEL, "version": "nightly"}, None)  # unordered versions: no floor


@pytest.mark.reliability("rollback protection", "floors.json unreadable",
                         "the active version stands in: an older deploy still refused")
def test_the_active_version_stands_in_for_a_lost_or_unreadable_floor(tmp_path):
    cfg = _cfg(tmp_path)
    (tmp_path / FLOORS_FILE).write_text("{not json")
    with pytest.raises(VersionFloorError):
        check_floor(cfg, {"model": MODEL, "version": "1"}, _active("2"))
    check_floor(cfg, {"model": MODEL, "version": "1"}, _active("2", model="other-model"))


@pytest.mark.reliability("rollback protection", "a deploy naming no model and version while the floor is on", "refused")
def test_off_by_default_and_a_deploy_naming_no_version_is_refused_when_on(tmp_path):
    off = _cfg(tmp_path, on=False)
    assert AgentConfig.load(_write(tmp_path, off)).version_floor is False
    raise_floor(off, MODEL, "5")
    assert not (tmp_path / FLOORS_FILE).exists()
    check_floor(off, {"model": MODEL, "version": "1"}, _active("5"))
    on = _cfg(tmp_path)
    assert AgentConfig.load(_write(tmp_path, on)).version_floor is True
    with pytest.raises(VersionFloorError, match="names no model and version"):
        check_floor(on, {"model": "", "version": ""}, None)


def _write(tmp_path: Path, cfg: AgentConfig) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(cfg.to_toml())
    return path


@pytest.mark.broker
@pytest.mark.reliability("rollback protection",
                         "a real agent told to deploy an older version already in its store (also after a signed "
                         "rollback and a restart)",
                         "refused below_floor, the newer stays active; a signed rollback still works")
def test_an_agent_with_a_floor_refuses_older_deploys_but_takes_a_signed_rollback(trained, fleet, online_agent,
                                                                                 faults_tried):
    faults_tried(3)
    v1, v2 = trained.v1.version["version"], trained.v2.version["version"]
    assert version_key(v1) < version_key(v2)
    aid, proc = online_agent(version_floor=True)

    def deploy(bundle, version):
        return fleet.deploy(aid, bundle.path.read_bytes(), model=MODEL, version=version, timeout=30)

    def active() -> str | None:
        st = fleet.agents()[aid].active
        return st.bundle_sha256 if st else None

    assert deploy(trained.b1, v1).ok
    assert deploy(trained.b2, v2).ok
    out = deploy(trained.b1, v1)  # in the agent's store already: refused before activation
    assert not out.ok and out.code == "below_floor", out
    assert f"has installed {MODEL} {v2}" in out.message
    assert active() == trained.b2.sha256
    # the operator's way back: a signed rollback, which leaves the floor where it is
    back = fleet.rollback(aid, trained.b1.sha256, reason="test")
    assert back.ok, back.message
    assert fleet.wait_for(lambda: active() == trained.b1.sha256, 10)
    assert not deploy(trained.b1, v1).ok
    # kept across a restart
    proc.stop()
    proc.start()
    assert fleet.wait_online([aid], 30), proc.log()
    assert wait_until(lambda: active() == trained.b1.sha256, 10)
    out = deploy(trained.b1, v1)
    assert not out.ok and out.code == "below_floor", (out, proc.log())
    assert deploy(trained.b2, v2).ok
