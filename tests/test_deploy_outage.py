"""Deploys against a broker that goes away, deployments left pending by a hub that died, and a bundle
file swapped in the hub's folder (real Mosquitto stopped and restarted on the same port, real agent
processes, real registry files)."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest

from edgeloop.agent.wire.messages import ActiveModel, AgentState
from edgeloop.hub.fleet import Fleet, FleetOptions, MosquittoBroker
from edgeloop.hub.services import Hub
from edgeloop.hub.services.delivery import BundleMismatchError
from tests.conftest import wait_until, write_agent_config

pytestmark = pytest.mark.broker

CHUNK = 1024  # the test bundles are ~20 KB: about 20 chunks, more than the 16 in flight


@pytest.fixture
def private_broker(tmp_path):
    """A Mosquitto of this test alone, which the test stops and starts again on the same port."""
    workdir = tmp_path / "mosquitto"
    broker = MosquittoBroker(workdir=workdir).start()
    holder = {"broker": broker}

    def restart() -> None:
        holder["broker"] = MosquittoBroker(port=broker.address.port, workdir=workdir).start()

    yield broker, restart
    holder["broker"].stop()


def broker_dies_after_first_chunk(fleet: Fleet, broker: MosquittoBroker, then=None):
    """A progress callback: at the first chunk, stop the broker (and wait until the hub noticed)."""
    done = threading.Event()

    def progress(sent: int, total: int) -> None:
        if sent == 1 and not done.is_set():
            done.set()
            broker.stop()
            assert wait_until(lambda: not fleet.link.connected.is_set(), 10)
            if then is not None:
                threading.Thread(target=then, daemon=True).start()

    return progress, done


def start_agent(tmp_path, trained, broker, agent_process, fleet: Fleet) -> str:
    aid = f"outage-{uuid.uuid4().hex[:6]}"
    proc = agent_process(write_agent_config(tmp_path, aid, broker, trained.public_pem))
    assert fleet.wait_online([aid], 30), proc.log()
    return aid


@pytest.mark.reliability("broker loss",
                         "Mosquitto stopped after a deploy's first chunk, back on the same port 3 s later (real "
                         "agent)",
                         "the deploy waits and installs: installed (no RuntimeError)")
def test_a_deploy_waits_out_a_broker_outage_and_installs(tmp_path, trained, private_broker, agent_process):
    broker, restart = private_broker
    with Fleet(broker.address, trained.hub.registry, trained.hub.key) as fleet:
        aid = start_agent(tmp_path, trained, broker, agent_process, fleet)

        def back_in_3s() -> None:
            time.sleep(3)
            restart()

        progress, died = broker_dies_after_first_chunk(fleet, broker, back_in_3s)
        out = fleet.deploy(aid, trained.b1.path.read_bytes(), model="sensor-mlp", version="1", timeout=60,
                           chunk_size=CHUNK, progress=progress)
        assert died.is_set()  # the broker did go away in the middle of the chunks
        assert out.ok, (out.code, out.message)
        assert trained.hub.registry.get_deployment(out.command_id)["status"] == "installed"


@pytest.mark.reliability("broker loss",
                         "Mosquitto stopped after a deploy's first chunk, never back (limit 2 s)",
                         "outcome broker_unreachable naming the broker and what to do; deployment failed, not "
                         "pending")
def test_a_broker_away_for_too_long_ends_the_deploy_with_a_clear_error(tmp_path, trained, private_broker,
                                                                      agent_process):
    broker, _ = private_broker
    options = FleetOptions(broker_outage_s=2.0)
    with Fleet(broker.address, trained.hub.registry, trained.hub.key, options=options) as fleet:
        aid = start_agent(tmp_path, trained, broker, agent_process, fleet)
        progress, died = broker_dies_after_first_chunk(fleet, broker)
        started = time.monotonic()
        out = fleet.deploy(aid, trained.b1.path.read_bytes(), model="sensor-mlp", version="1", timeout=60,
                           chunk_size=CHUNK, progress=progress)
        assert died.is_set() and not out.ok and out.code == "broker_unreachable", (out.code, out.message)
        assert f"the broker {broker.address.url} was unreachable" in out.message and "deploy again" in out.message
        assert time.monotonic() - started < 30  # bounded: not the deploy's timeout of 60 s
        dep = trained.hub.registry.get_deployment(out.command_id)
        assert dep["status"] == "failed" and dep["detail"].startswith("broker_unreachable: ")


@pytest.mark.reliability("hub restart",
                         "deployments left pending by a dead hub (expired and landed, expired and lost, not "
                         "expired)",
                         "settled from the agents' state: installed, failed, still pending")
def test_deployments_left_pending_are_settled_from_the_agents_state_when_a_hub_starts(tmp_path, mosquitto,
                                                                                      faults_tried):
    faults_tried(3)
    hub = Hub(tmp_path / "hub", actor="tests")
    reg = hub.registry
    landed, lost, fresh = "a1" * 32, "b2" * 32, "c3" * 32
    reg.record_agent_state(AgentState(agent_id="kept", status="online", session=1, agent_version="t", started_at=1.0,
                                      active=ActiveModel("m", "2", landed)), member=True)
    past, future = time.time() - 10, time.time() + 600
    reg.add_deployment(landed, "kept", "deploy", "cmd-landed", 1, expires_at=past)  # its result was lost
    reg.add_deployment(lost, "kept", "deploy", "cmd-lost", 2, expires_at=past)  # the hub died mid-deploy
    reg.add_deployment(fresh, "kept", "deploy", "cmd-fresh", 3, expires_at=future)  # may still be under way
    with hub.fleet(mosquitto.address.url):
        pass
    status = {c: reg.get_deployment(c)["status"] for c in ("cmd-landed", "cmd-lost", "cmd-fresh")}
    assert status == {"cmd-landed": "installed", "cmd-lost": "failed", "cmd-fresh": "pending"}
    assert "expired" in reg.get_deployment("cmd-lost")["detail"]


@pytest.mark.reliability("rollback protection",
                         "an older signed bundle copied over the newer one's file in the hub's bundle folder",
                         "BundleMismatchError; no deployment recorded, nothing sent")
def test_a_bundle_file_swapped_in_the_hubs_folder_is_refused_before_anything_is_sent(tmp_path, trained):
    copy = tmp_path / "home"  # a copy of the hub home: its registry reads its own bundle files
    shutil.copytree(trained.hub.home.root, copy, ignore=shutil.ignore_patterns("registry.sqlite*", "*.lock"))
    src, dst = sqlite3.connect(trained.hub.home.registry_path), sqlite3.connect(copy / "registry.sqlite")
    src.backup(dst)
    src.close()
    dst.close()
    hub = Hub(copy, actor="tests")
    rec, data = hub.bundle_bytes(trained.b1.sha256)
    assert Path(rec["path"]).is_relative_to(copy) and len(data) == rec["size"]
    # an older bundle of the same model put in the place of the newer one: a downgrade without the key
    Path(rec["path"]).write_bytes(Path(hub.bundle_bytes(trained.b2.sha256)[0]["path"]).read_bytes())
    before = hub.registry.list_deployments()
    with pytest.raises(BundleMismatchError, match="does not match the registry.*nothing was sent"):
        hub.deploy("mqtt://127.0.0.1:1", ["edge-1"], trained.b1.sha256, override_reason="test")
    assert hub.registry.list_deployments() == before
    assert trained.hub.bundle_bytes(trained.b1.sha256)[1] != Path(rec["path"]).read_bytes()  # the original is intact
