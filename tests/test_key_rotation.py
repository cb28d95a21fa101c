"""Root key, certificates, revocation and rotation end to end: real agent processes, a real Mosquitto, a
real hub home (a copy of the session's trained hub, so its key can be rotated), real signed bundles."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from edgeloop.agent.config import AgentConfig
from edgeloop.hub import keys as hub_keys
from tests.conftest import wait_until

MODEL = "sensor-mlp"


def _home(trained, tmp_path: Path) -> Path:
    home = tmp_path / "hub-home"
    shutil.copytree(trained.hub.home.root, home)
    return home


def _agent(tmp_path: Path, mosquitto, aid: str, *, keys: list[bytes] = (), roots: list[bytes] = ()) -> Path:
    def files(kind: str, pems) -> list[Path]:
        out = []
        for i, pem in enumerate(pems):
            (p := tmp_path / f"{aid}-{kind}-{i}.pub.pem").write_bytes(pem)
            out.append(p)
        return out

    cfg = AgentConfig(agent_id=aid, state_dir=tmp_path / f"{aid}-state", trusted_keys=files("key", keys),
                      trusted_roots=files("root", roots), mqtt_host=mosquitto.address.host,
                      mqtt_port=mosquitto.address.port, http_port=0, transfer_idle_seconds=1.0)
    path = tmp_path / f"{aid}.toml"
    path.write_text(cfg.to_toml())
    return path


def _hub(home: Path):
    from edgeloop.hub.services import Hub

    return Hub(home, actor="tests")


def _signed_by(fleet, aid: str, key, sha: str):
    """A rollback command signed by ``key`` (counter far above anything sent), and the agent's answer."""
    cmd = fleet.make_command(aid, "rollback", {"bundle_sha256": sha, "reason": "test"})
    cmd = dataclasses.replace(cmd, counter=cmd.counter + 10**6)
    fleet.send(cmd, key=key)
    return fleet.wait_result(cmd.command_id, ("rollback_result",), 30)


def _active(fleet, aid: str) -> str | None:
    st = fleet.agents().get(aid)
    return st.active.bundle_sha256 if st is not None and st.active else None


@pytest.mark.broker
@pytest.mark.reliability("key trust", "a real agent trusting only the root: deploy by a certified hub key, then the "
                         "key is stolen and revoked from the root",
                         "certified key accepted; after revoke its commands and bundles refused key_revoked "
                         "(also after a restart)")
def test_root_certifies_hub_key_and_revocation_reaches_the_agent(trained, mosquitto, agent_process, tmp_path,
                                                                 faults_tried):
    home = _home(trained, tmp_path)
    (tmp_path / "usb").mkdir()
    root = hub_keys.create_root_key(tmp_path / "usb" / "root.pem")  # offline: never under the hub home
    old = hub_keys.load_or_create_hub_key(home)
    hub_keys.certify(home, root, days=30)
    assert hub_keys.root_public_pem(home) == root.public_pem()
    aid = "root-only"
    proc = agent_process(_agent(tmp_path, mosquitto, aid, roots=[hub_keys.root_public_pem(home)]))
    with _hub(home).fleet(mosquitto.address.url) as fleet:
        assert fleet.wait_online([aid], 30), proc.log()
        assert fleet.wait_for(lambda: fleet.is_member(aid), 10)  # its state lists the root
        out = fleet.deploy(aid, trained.b1.path.read_bytes(), model=MODEL, version=trained.v1.version["version"],
                           timeout=60)
        assert out.ok, (out, proc.log())
    saved = json.loads((tmp_path / f"{aid}-state" / "trust.json").read_text())
    assert len(saved["certificates"]) == 1

    # the workstation key is stolen: a new key, certified; the old one revoked from the root
    hub_keys.rotate(home, grace_days=7)
    hub_keys.certify(home, root, days=30)
    hub_keys.revoke(home, root, old.keyid, "stolen")
    hub = _hub(home)
    fresh = hub.build_bundle(trained.v1.id)  # rebuilt: signed by the new key
    with hub.fleet(mosquitto.address.url) as fleet:
        assert fleet.wait_online([aid], 30)
        out = fleet.deploy(aid, fresh.path.read_bytes(), model=MODEL, version=trained.v1.version["version"],
                           timeout=60)
        assert out.ok, (out, proc.log())  # brings the new certificate and the revocation list
        ev = _signed_by(fleet, aid, old, fresh.sha256)
        assert ev is not None and not ev.ok and ev.code == "key_revoked", (ev, proc.log())
        assert "revoked by root" in ev.message
        out = fleet.deploy(aid, trained.b2.path.read_bytes(), model=MODEL, version=trained.v2.version["version"],
                           timeout=60)  # a bundle the stolen key signed, sent under a valid command
        assert not out.ok and out.code == "key_revoked", (out, proc.log())
        proc.stop()
        proc.start()
        assert wait_until(lambda: _active(fleet, aid) == fresh.sha256 and fleet.is_online(aid), 30), proc.log()
        ev = _signed_by(fleet, aid, old, fresh.sha256)  # the revocation was kept across the restart
        assert ev is not None and ev.code == "key_revoked", (ev, proc.log())
    faults_tried(3)


@pytest.mark.broker
@pytest.mark.reliability("key trust", "a real agent trusting one hub key: the key is rotated (signed by the old key, "
                         "grace period over), then the old key signs a command",
                         "new key accepted without editing the agent; old key refused key_retired (also after a "
                         "restart); bundles the old key signed still install")
def test_rotation_signed_by_the_old_key(trained, mosquitto, agent_process, tmp_path, faults_tried):
    home = _home(trained, tmp_path)
    old = hub_keys.load_or_create_hub_key(home)
    aid = "one-key"
    proc = agent_process(_agent(tmp_path, mosquitto, aid, keys=[old.public_pem()]))
    with _hub(home).fleet(mosquitto.address.url) as fleet:
        assert fleet.wait_online([aid], 30), proc.log()
        assert fleet.deploy(aid, trained.b1.path.read_bytes(), model=MODEL, version=trained.v1.version["version"],
                            timeout=60).ok, proc.log()
    rot = hub_keys.rotate(home, grace_days=0)  # the grace period ends at once
    hub = _hub(home)
    assert hub.key.keyid == rot["new_key_id"] != old.keyid
    with hub.fleet(mosquitto.address.url) as fleet:
        assert fleet.wait_online([aid], 30)
        assert fleet.wait_for(lambda: fleet.is_member(aid), 10)  # still listed by the old key id
        out = fleet.deploy(aid, trained.b2.path.read_bytes(), model=MODEL, version=trained.v2.version["version"],
                           timeout=60)  # command by the new key; bundle signed by the old one
        assert out.ok, (out, proc.log())
        assert fleet.wait_for(lambda: fleet.agents()[aid].trusted_keys == [rot["new_key_id"]], 10), \
            fleet.agents()[aid].trusted_keys
        ev = _signed_by(fleet, aid, old, trained.b1.sha256)
        assert ev is not None and ev.code == "key_retired", (ev, proc.log())
        proc.stop()
        proc.start()
        assert wait_until(lambda: _active(fleet, aid) == trained.b2.sha256 and fleet.is_online(aid), 30), proc.log()
        back = fleet.rollback(aid, trained.b1.sha256, reason="test", timeout=30)  # the new key, after a restart
        assert back.ok, (back, proc.log())
        ev = _signed_by(fleet, aid, old, trained.b2.sha256)
        assert ev is not None and ev.code == "key_retired", (ev, proc.log())
    faults_tried(2)
