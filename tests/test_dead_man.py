"""The dead-man switch (issue 9 item 3): a version deployed on probation reverts on its own unless its
health is confirmed in time -- also with the broker gone, and across a restart of the agent.

Real agent processes (tests/agent_isolated.py), a real Mosquitto (stopped and started again on the same
port for the outage), real onnxruntime models, signed commands from a plain MQTT client (tests/agent_rig.py).
Probations are a few seconds long; the tests wait for events, never for fixed times.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
import uuid
from pathlib import Path

import pytest

from edgeloop.agent.wire import topics
from edgeloop.agent.wire.messages import Chunk, InferError, InferRequest, TransferSpec
from edgeloop.hub.fleet import MosquittoBroker
from tests.agent_rig import CHUNK, AgentRig, plain_client
from tests.conftest import retained, wait_until, watch_topic
from tests.onnx_variants import FLAKY_TABLE, flaky_classifier_onnx, signed_bundle

pytestmark = pytest.mark.broker


@pytest.fixture
def rig(tmp_path, mosquitto):
    with AgentRig(tmp_path, mosquitto) as r:
        yield r


def deploy(rig: AgentRig, aid: str, version: str, probation: dict, bundle: bytes | None = None) -> str:
    """A signed deploy of ``version`` with ``probation`` in its arguments, and its chunks; the command id."""
    data = rig.bundles[version] if bundle is None else bundle
    sha = hashlib.sha256(data).hexdigest()
    spec = TransferSpec(uuid.uuid4().hex, sha, len(data), CHUNK, -(-len(data) // CHUNK))
    cid = rig._send(aid, "deploy", {"transfer": spec.to_dict(), "bundle_sha256": sha, "model": "iris",
                                    "version": version, "probation": probation})
    for i in range(spec.chunks):
        rig.client.publish(topics.agent_topic(aid, topics.BUNDLE),
                           Chunk(spec.transfer_id, i, data[i * CHUNK:(i + 1) * CHUNK]).encode(), qos=1)
    return cid


def installed(rig: AgentRig, cid: str) -> dict:
    assert wait_until(lambda: rig.finals(cid), 60), "no install result"
    ev = rig.finals(cid)[0]
    assert ev["ok"], ev
    return ev


def event(rig: AgentRig, aid: str, kind: str, timeout: float = 30.0) -> dict:
    assert wait_until(lambda: any(e["event"] == kind for e in rig.events_of(aid)), timeout), \
        f"no {kind} event from {aid}: {[(e['event'], e['code']) for e in rig.events_of(aid)]}"
    return next(e for e in rig.events_of(aid) if e["event"] == kind)


def state(rig: AgentRig, aid: str) -> dict:
    return json.loads(retained(rig.broker, topics.agent_topic(aid, topics.STATE)))


def started(rig: AgentRig, versions=("1",)) -> tuple[str, Path]:
    aid = f"dm-{uuid.uuid4().hex[:6]}"
    config = rig.prepare(aid, versions)
    rig.procs[aid] = rig.start(config)
    assert rig.online([aid]), rig.procs[aid].log()
    return aid, config


def on_probation(rig: AgentRig, probation: dict, bundle: bytes | None = None) -> tuple[str, Path, str]:
    """An agent serving version 1, deployed version 2 with ``probation`` (installed): id, config, command id."""
    aid, config = started(rig)
    cid = deploy(rig, aid, "2", probation, bundle)
    installed(rig, cid)
    return aid, config, cid


def assert_reverted(rig: AgentRig, aid: str, cid: str, reason: str) -> dict:
    ev = event(rig, aid, "reverted")
    assert (ev["ok"], ev["code"], ev["command_id"]) == (False, reason, cid), ev
    assert ev["details"]["version"] == "2" and ev["details"]["previous_version"] == "1"
    assert rig.serving_version(aid) == "1"
    st = state(rig, aid)
    assert st["active"]["version"] == "1" and "probation" not in st, st
    return ev


@pytest.mark.reliability("dead-man switch", "a version deployed with require_confirm is never confirmed",
                         "reverts on its own to the previous version at the deadline; reverted/confirm_timeout")
def test_an_unconfirmed_version_reverts_on_its_own(rig):
    aid, _ = started(rig)
    with watch_topic(rig.broker, topics.agent_topic(aid, topics.STATE)) as states:
        cid = deploy(rig, aid, "2", {"seconds": 2, "require_confirm": True})
        installed(rig, cid)
        ev = assert_reverted(rig, aid, cid, "confirm_timeout")
    seen = [json.loads(p) for _, p in states]
    on = [st for st in seen if "probation" in st]  # the state published with the install shows the probation
    assert on and on[0]["active"]["version"] == "2" and on[0]["probation"]["version"] == "2", seen
    assert on[0]["probation"]["require_confirm"] is True and on[0]["probation"]["confirmed"] is False
    assert ev["at"] >= on[0]["probation"]["deadline"]


@pytest.mark.reliability("dead-man switch", "the broker stops right after the swap of a version on probation",
                         "reverts offline (event kept in the outbox), reports reverted when the broker returns")
def test_a_device_that_lost_the_broker_reverts_and_reports_when_it_returns(tmp_path):
    workdir = tmp_path / "mosquitto"
    broker = MosquittoBroker(workdir=workdir).start()
    rig = AgentRig(tmp_path, broker)
    try:
        aid, config, cid = on_probation(rig, {"seconds": 5, "require_confirm": True})
        broker.stop()  # well before the deadline
        outbox = config.parent / f"{aid}-state" / "outbox"

        def kept_reverted() -> bool:  # the revert happened while offline: its event waits on disk
            return any(json.loads(p.read_bytes()).get("event") == "reverted"
                       for p in outbox.rglob("*.msg"))

        assert wait_until(kept_reverted, 30), rig.procs[aid].log()
        proc = rig.procs[aid].proc
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)  # no reconnect before a subscriber listens on the new broker
        try:
            broker = MosquittoBroker(port=broker.address.port, workdir=workdir).start()
            rig.client.loop_stop()
            rig.client.disconnect()
            rig.client = plain_client(broker, rig._on_message, f"{topics.ROOT}/agents/+/events",
                                      f"{topics.ROOT}/agents/+/status", "test/crash/replies")
        finally:
            proc.send_signal(signal.SIGCONT)
        ev = assert_reverted(rig, aid, cid, "confirm_timeout")
        assert ev["at"] < time.time()
    finally:
        rig.close()
        broker.stop()


@pytest.mark.reliability("dead-man switch", "the hub's signed confirm arrives before the deadline",
                         "the new version stays past its deadline; command_result ok and a confirmed event")
def test_a_confirmed_version_stays(rig):
    aid, _, cid = on_probation(rig, {"seconds": 6, "require_confirm": True})
    deadline = state(rig, aid)["probation"]["deadline"]
    confirm = rig._send(aid, "confirm", {"bundle_sha256": rig.sha["2"]})
    assert wait_until(lambda: rig.finals(confirm, ("command_result",)), 20)
    answer = rig.finals(confirm, ("command_result",))[0]
    assert answer["ok"] and answer["details"]["on_probation"] is True, answer
    ok = event(rig, aid, "confirmed")
    assert (ok["ok"], ok["code"], ok["command_id"]) == (True, "confirmed", cid)
    assert wait_until(lambda: time.time() > deadline + 1.0, 10)  # past the deadline: nothing reverts
    assert rig.serving_version(aid) == "2"
    st = state(rig, aid)
    assert st["active"]["version"] == "2" and "probation" not in st
    assert not any(e["event"] == "reverted" for e in rig.events_of(aid))
    again = rig._send(aid, "confirm", {"bundle_sha256": rig.sha["1"]})  # not the version on probation
    assert wait_until(lambda: rig.finals(again, ("command_result",)), 20)
    assert rig.finals(again, ("command_result",))[0]["code"] == "not_on_probation"


@pytest.mark.reliability("dead-man switch", "a version on probation passes its smoke test but fails every request",
                         "reverts at once (before its deadline) with model_failing")
def test_a_model_failing_its_requests_reverts(rig):
    flaky = signed_bundle(rig.key, flaky_classifier_onnx(), version="2")
    aid, _, cid = on_probation(rig, {"seconds": 120}, flaky)
    ids = []
    for _ in range(25):  # a first feature past the model's table: onnxruntime fails on every request
        rid = uuid.uuid4().hex
        ids.append(rid)
        req = InferRequest(id=rid, inputs=[[float(FLAKY_TABLE + 5), 3.5, 1.4, 0.2]], reply_to="test/crash/replies")
        rig.client.publish(topics.agent_topic(aid, topics.INFER), req.encode(), qos=1)
    assert wait_until(lambda: all(r in rig.replies for r in ids), 30)
    assert all(isinstance(rig.replies[r], InferError) for r in ids)
    ev = assert_reverted(rig, aid, cid, "model_failing")
    assert ev["details"]["errors"] >= 20 and ev["at"] < ev["details"]["deadline"]


@pytest.mark.reliability("dead-man switch", "the agent is killed during a probation and restarted after its deadline",
                         "the restarted agent resumes the saved probation and reverts at once (confirm_timeout)")
def test_a_probation_whose_deadline_passed_while_down_reverts_at_restart(rig):
    aid, config, cid = on_probation(rig, {"seconds": 4, "require_confirm": True})
    rig.procs[aid].stop(kill=True)  # during the probation: state.json still holds it
    deadline = json.loads((config.parent / f"{aid}-state" / "state.json").read_text())["probation"]["deadline"]
    assert wait_until(lambda: time.time() > deadline, 10)
    rig.procs[aid] = rig.start(config)
    assert rig.online([aid]), rig.procs[aid].log()
    assert_reverted(rig, aid, cid, "confirm_timeout")


@pytest.mark.reliability("dead-man switch", "the agent is killed during a probation and restarted before its deadline",
                         "it resumes the same probation (same deadline, previous version loaded); a confirm keeps it")
def test_a_probation_resumes_after_a_restart_and_a_confirm_keeps_it(rig):
    aid, config, cid = on_probation(rig, {"seconds": 60, "require_confirm": True})
    before = state(rig, aid)["probation"]
    rig.procs[aid].stop(kill=True)
    rig.procs[aid] = rig.start(config)
    assert rig.online([aid]), rig.procs[aid].log()
    assert wait_until(lambda: "probation" in state(rig, aid), 10)
    after = state(rig, aid)
    assert after["active"]["version"] == "2" and after["probation"]["deadline"] == before["deadline"], after
    confirm = rig._send(aid, "confirm", {"bundle_sha256": rig.sha["2"]})
    ok = event(rig, aid, "confirmed")
    assert (ok["code"], ok["command_id"]) == ("confirmed", cid)
    assert rig.finals(confirm, ("command_result",))[0]["ok"]
    assert rig.serving_version(aid) == "2" and "probation" not in state(rig, aid)


def test_the_hub_deploys_on_probation_and_confirms_from_the_cli(trained, mosquitto, online_agent, fleet, capsys):
    """``edgeloop deploy --probation S --require-confirm`` and ``edgeloop confirm`` (Hub.confirm) on a real agent."""
    from edgeloop.hub.cli import main as hub_cli

    aid, _ = online_agent()
    hub, home, url = trained.hub, str(trained.hub.home.root), mosquitto.address.url
    assert hub.deploy(fleet, [aid], trained.v1.id, override_reason="tests")[0]["ok"]
    assert hub_cli(["deploy", trained.v2.id, "--agent", aid, "--broker", url, "--home", home, "--override-gate",
                    "tests", "--probation", "120", "--require-confirm"]) == 0, capsys.readouterr().err
    assert wait_until(lambda: getattr(fleet.agents().get(aid), "probation", None) is not None, 10)
    on = fleet.agents()[aid].probation
    assert on is not None and on.version == trained.v2.version["version"] and on.require_confirm and not on.confirmed
    capsys.readouterr()
    assert hub_cli(["confirm", trained.v2.id, "--agent", aid, "--broker", url, "--home", home, "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert (result["agent"], result["ok"], result["code"]) == (aid, True, "ok")
    assert wait_until(lambda: fleet.agents()[aid].probation is None, 10)
    assert fleet.agents()[aid].active.version == trained.v2.version["version"]
    [again] = hub.confirm(fleet, [aid], trained.v1.id)  # v1 is not on probation there
    assert (again["ok"], again["code"]) == (False, "not_on_probation")
    assert hub_cli(["deploy", trained.v2.id, "--agent", aid, "--broker", url, "--home", home,
                    "--require-confirm"]) == 2
    assert "--require-confirm need --probation SECONDS" in capsys.readouterr().err


def test_a_version_that_served_its_requests_passes_at_the_deadline(rig):
    """No confirm asked: served ``min_requests`` and never failing, it passes at its deadline (``healthy``)."""
    aid, config, cid = on_probation(rig, {"seconds": 5, "min_requests": 3})
    assert [rig.serving_version(aid) for _ in range(3)] == ["2"] * 3
    ok = event(rig, aid, "confirmed")
    assert (ok["ok"], ok["code"], ok["command_id"]) == (True, "healthy", cid), ok
    assert ok["details"]["requests"] >= 3 and ok["at"] >= ok["details"]["deadline"]
    assert rig.serving_version(aid) == "2" and "probation" not in state(rig, aid)
    assert "probation" not in json.loads((config.parent / f"{aid}-state" / "state.json").read_text())
