"""One deploy to many agents: the bundle is published once on a shared transfer topic, missing
chunks are repaired per agent on its own topic, agents holding the bundle get nothing, and
every agent's result comes on its own time (real Mosquitto, real agent processes)."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from contextlib import ExitStack

import pytest

from edgeloop.agent.wire import topics
from edgeloop.agent.wire.messages import Chunk, Event, TransferSpec, decode, new_id
from tests.conftest import wait_until, watch_topic

pytestmark = pytest.mark.broker

CHUNK = 1024  # the test bundles are ~20 KB: about 20 chunks
QUIET = {"transfer_idle_seconds": 60.0}  # no idle re-asking: every repair seen here has another cause
SHARED = f"{topics.ROOT}/transfers/+"


class Wire:
    """What a plain MQTT client sees of a deploy: chunks on the shared topics and on each agent's own."""

    def __init__(self, stack: ExitStack, broker) -> None:
        self.shared = stack.enter_context(watch_topic(broker, SHARED))
        self.own = stack.enter_context(watch_topic(broker, topics.all_agents(topics.BUNDLE)))

    def shared_indices(self) -> list[int]:
        return sorted(Chunk.decode(p).index for _, p in self.shared)

    def own_indices(self, agent_id: str) -> list[int]:
        mine = topics.agent_topic(agent_id, topics.BUNDLE)
        return sorted(Chunk.decode(p).index for t, p in self.own if t == mine)

    def settle(self, n_shared: int) -> None:
        """Wait for the shared chunks to arrive here, then a little for any duplicate."""
        assert wait_until(lambda: len(self.shared) >= n_shared, 10)
        time.sleep(0.3)


def _deploy(fleet, trained, ids, bundle=None, **kw):
    bundle = trained.b1.path.read_bytes() if bundle is None else bundle
    return fleet.deploy_many(ids, bundle, model="sensor-mlp", version=trained.v1.version["version"],
                             chunk_size=kw.pop("chunk_size", CHUNK), **kw)


@contextlib.contextmanager
def _deploying(fleet, trained, ids, release):
    """A deploy of b1 on another thread; ``release()`` lets it finish when the block ends."""
    outs: dict = {}
    thread = threading.Thread(target=lambda: outs.update(_deploy(fleet, trained, ids, timeout=60)))
    thread.start()
    try:
        yield outs
    finally:
        release()
        thread.join(90)


def _n_chunks(trained) -> int:
    return -(-trained.b1.size // CHUNK)


def _serving(fleet, aid: str, sha: str) -> bool:
    active = fleet.agents().get(aid)
    return active is not None and active.active is not None and active.active.bundle_sha256 == sha


def test_a_deploy_to_several_agents_publishes_each_chunk_once_on_one_shared_topic(
        trained, fleet, online_agent, mosquitto):
    agents = [online_agent(**QUIET) for _ in range(3)]
    ids = [aid for aid, _ in agents]
    n = _n_chunks(trained)
    with ExitStack() as stack:
        wire = Wire(stack, mosquitto)
        outs = _deploy(fleet, trained, ids, timeout=30)
        assert list(outs) == ids
        assert all(o.ok for o in outs.values()), {a: (o.code, o.message) for a, o in outs.items()}
        wire.settle(n)
        assert wire.shared_indices() == list(range(n))  # every chunk once, for all three agents
        assert wire.own == []  # and nothing on any agent's own topic
        (topic,) = {t for t, _ in wire.shared}
    for aid, proc in agents:
        assert wait_until(lambda a=aid: _serving(fleet, a, trained.b1.sha256)), proc.log()
        log = proc.log()
        assert f"following transfer topic {topic}" in log and f"left transfer topic {topic}" in log

    # through the Hub, as the CLI deploys: one result per agent, in the order asked, the bundle sent once
    with ExitStack() as stack:
        wire = Wire(stack, mosquitto)
        results = trained.hub.deploy(fleet, ids, trained.b2.sha256, timeout=30)
        assert [(r["agent"], r["ok"], r["bundle_sha256"]) for r in results] == [
            (aid, True, trained.b2.sha256) for aid in ids], results
        wire.settle(1)
        assert wire.shared_indices() == list(range(-(-trained.b2.size // (64 * 1024)))) and wire.own == []
    deployed = {d["agent_id"]: d["status"] for aid in ids for d in trained.hub.registry.list_deployments(aid)
                if d["bundle_sha256"] == trained.b2.sha256}
    assert deployed == dict.fromkeys(ids, "installed")


def test_chunks_lost_on_the_shared_topic_are_sent_again_to_each_agent_on_its_own_topic(
        trained, fleet, online_agent, mosquitto, monkeypatch):
    ids = [online_agent(**QUIET)[0] for _ in range(2)]
    n = _n_chunks(trained)
    lost = {1, 4}
    real = fleet._send_chunks

    def lossy(agent_id, spec, data, indices, progress=None):
        idx = list(indices)
        real(agent_id, spec, data, [i for i in idx if i not in lost] if agent_id is None else idx, progress)

    monkeypatch.setattr(fleet, "_send_chunks", lossy)
    with ExitStack() as stack:
        wire = Wire(stack, mosquitto)
        outs = _deploy(fleet, trained, ids, timeout=30)
        assert all(o.ok for o in outs.values()), outs
        wire.settle(n - len(lost))
        assert wire.shared_indices() == sorted(set(range(n)) - lost)
        # each agent saw the end of the stream with two gaps and asked at once for exactly those
        assert {aid: wire.own_indices(aid) for aid in ids} == {aid: sorted(lost) for aid in ids}


def test_an_agent_restarted_mid_transfer_resumes_and_gets_only_what_it_lacks(
        trained, fleet, online_agent, mosquitto, monkeypatch, tmp_path):
    (a, _), (b, proc_b) = online_agent(**QUIET), online_agent(**QUIET)
    n, first = _n_chunks(trained), 8
    hold = threading.Event()
    real = fleet._send_chunks

    def paused(agent_id, spec, data, indices, progress=None):
        idx = list(indices)
        if agent_id is not None:
            return real(agent_id, spec, data, idx, progress)
        real(None, spec, data, idx[:first], progress)
        assert hold.wait(60)
        real(None, spec, data, idx[first:], progress)

    monkeypatch.setattr(fleet, "_send_chunks", paused)
    incoming = tmp_path / f"{b}-state" / "incoming"

    def on_disk() -> int:
        records = list(incoming.glob("*.json"))
        return json.loads(records[0].read_text())["received"].count("1") if records else 0

    with ExitStack() as stack:
        wire = Wire(stack, mosquitto)
        with _deploying(fleet, trained, [a, b], release=hold.set) as outs:
            assert wait_until(lambda: on_disk() == first, 30), proc_b.log()  # saved when the stream paused
            assert proc_b.stop(kill=True) == -signal.SIGKILL
            proc_b.start()  # resumes: follows the shared topic again and asks for chunks 8..n-1
            assert wait_until(lambda: _serving(fleet, b, trained.b1.sha256), 30), proc_b.log()
        assert outs[a].ok and outs[b].ok, outs
        wire.settle(n)
        assert wire.shared_indices() == list(range(n))
        assert wire.own_indices(b) == list(range(first, n)) and wire.own_indices(a) == []
    assert f"{first} of {n} chunks on disk" in proc_b.log()
    assert list(incoming.iterdir()) == []


def test_an_agent_answering_after_the_stream_gets_the_bundle_on_its_own_topic(
        trained, fleet, online_agent, mosquitto):
    (a, _), (b, proc_b) = online_agent(**QUIET), online_agent(**QUIET)
    n = _n_chunks(trained)
    assert proc_b.proc is not None
    proc_b.proc.send_signal(signal.SIGSTOP)  # b hears its command only after the others got the bundle
    with ExitStack() as stack:
        wire = Wire(stack, mosquitto)
        with _deploying(fleet, trained, [a, b], release=lambda: proc_b.proc.send_signal(signal.SIGCONT)) as outs:
            assert wait_until(lambda: len(wire.shared) >= n, 20)
        assert outs[a].ok and outs[b].ok, outs
        wire.settle(n)
        assert wire.shared_indices() == list(range(n))
        assert wire.own_indices(b) == list(range(n)) and wire.own_indices(a) == []


def test_agents_holding_the_bundle_get_no_chunks(trained, fleet, online_agent, mosquitto):
    (a, proc_a), (b, _) = online_agent(**QUIET), online_agent(**QUIET)
    assert fleet.deploy(a, trained.b1.path.read_bytes(), model="sensor-mlp", version=trained.v1.version["version"],
                        timeout=30).ok
    n = _n_chunks(trained)
    with ExitStack() as stack:
        wire = Wire(stack, mosquitto)
        events = stack.enter_context(watch_topic(mosquitto, topics.agent_topic(a, topics.EVENTS)))
        outs = _deploy(fleet, trained, [a, b], timeout=30)
        assert outs[a].ok and outs[b].ok, outs
        wire.settle(n)
        assert wire.shared_indices() == list(range(n)) and wire.own == []
        answers = [e for e in (decode(p, Event) for _, p in events) if e.event == "command_result"]
        assert [(e.ok, e.details) for e in answers] == [(True, {"chunks": 0, "in_store": True})]
        assert wire.shared_indices() == list(range(n))

        # both hold it now: nothing at all is published
        outs = _deploy(fleet, trained, [a, b], timeout=30)
        assert outs[a].ok and outs[b].ok, outs
        time.sleep(0.3)
        assert wire.shared_indices() == list(range(n)) and wire.own == []
    assert "following transfer topic" not in proc_a.log()


def test_an_agent_that_never_answers_times_out_alone_while_the_others_install(
        trained, fleet, online_agent, mosquitto):
    mute, proc = online_agent(**QUIET)  # online, then frozen: its command is never answered
    ids = [mute] + [online_agent(**QUIET)[0] for _ in range(2)]
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.time()
        outs = _deploy(fleet, trained, ids, timeout=6)
    finally:
        proc.proc.send_signal(signal.SIGCONT)
    assert (outs[mute].ok, outs[mute].code) == (False, "timeout")
    assert "did not acknowledge the deploy command" in outs[mute].message and outs[mute].seconds >= 6
    for aid in ids[1:]:
        assert outs[aid].ok, outs[aid]
        # installed while the first agent of the list was still being waited for
        assert outs[aid].event is not None and outs[aid].event.at < started + 5
        assert outs[aid].seconds < 5
    (dep,) = trained.hub.registry.list_deployments(mute)
    assert dep["status"] == "failed"


def test_a_transfer_is_abandoned_when_its_command_expires_or_is_replaced_and_a_foreign_topic_is_refused(
        trained, fleet, online_agent, tmp_path):
    aid, proc = online_agent(**QUIET)
    bundle = trained.b1.path.read_bytes()
    incoming = tmp_path / f"{aid}-state" / "incoming"

    def command(topic_of, ttl: float):
        tid = new_id()
        spec = TransferSpec(tid, trained.b1.sha256, len(bundle), CHUNK, _n_chunks(trained), topic=topic_of(tid))
        cmd = fleet.make_command(aid, "deploy", {"transfer": spec.to_dict(), "bundle_sha256": trained.b1.sha256,
                                                 "model": "sensor-mlp", "version": trained.v1.version["version"]},
                                 ttl=ttl)
        fleet.send(cmd)
        return cmd, spec, fleet.wait_result(cmd.command_id, ("command_result",), 10)

    _, _, ack = command(lambda tid: f"elsewhere/v1/transfers/{tid}", 60)
    assert ack is not None and (ack.ok, ack.code) == (False, "transfer")
    assert "elsewhere/v1/transfers" in ack.message and "same topic root" in ack.message

    cmd, _, ack = command(fleet.transfer_topic, 2.0)  # accepted, but no chunk ever comes
    assert ack is not None and ack.ok, ack
    res = fleet.wait_result(cmd.command_id, ("install_result",), 15)
    assert res is not None and (res.ok, res.code) == (False, "transfer"), res
    assert "abandoned" in res.message and "expired with 0 of" in res.message
    assert wait_until(lambda: proc.log().count("left transfer topic") == 1)
    assert list(incoming.iterdir()) == []

    # a second deploy of the same bundle replaces a transfer still under way
    first, _, ack = command(fleet.transfer_topic, 60)
    assert ack is not None and ack.ok and len(list(incoming.iterdir())) == 2
    second, spec, ack = command(fleet.transfer_topic, 60)
    assert ack is not None and ack.ok, ack
    res = fleet.wait_result(first.command_id, ("install_result",), 10)
    assert res is not None and (res.ok, res.code) == (False, "transfer"), res
    assert f"deploy command {second.command_id} sends the same bundle again" in res.message
    fleet._send_chunks(aid, spec, bundle, range(spec.chunks))  # its chunks may come on the agent's own topic
    res = fleet.wait_result(second.command_id, ("install_result",), 15)
    assert res is not None and res.ok, res
    assert wait_until(lambda: proc.log().count("left transfer topic") == 3)
    assert list(incoming.iterdir()) == []
