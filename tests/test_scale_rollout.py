"""1,000 simulated agents speaking the real protocol (tests/sim_agent.py over real paho connections,
multiplexed by tests/sim_fleet.py in a child process of their own) against the real hub runtime, a real
Mosquitto and a real SQLite registry: the registry lists every agent exactly once they announced
themselves, and a rollout in waves (canary 1 %, then 10 %, 50 %, the rest) driven by the hub runtime's
rollout driver reaches every agent, with the registry's record of it exact.

Everything on the hub side is the product's: :class:`HubRuntime` ingests the signed states, events
and serving reports, its rollout driver (hub/runtime/rollouts.py) takes the start request from the
registry, deploys each wave (signed commands, one fan-out transfer per wave), judges the gates on the
agents' serving reports during a 1 s bake and stores the state after every batch of steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter

import pytest

from edgeloop.agent.wire import topics
from edgeloop.agent.wire.commands import seal_command
from edgeloop.agent.wire.envelope import SigningKey, TrustedKeys, verify_report
from edgeloop.agent.wire.messages import AgentState, Chunk, Command, Event, TransferSpec, decode, new_id
from edgeloop.hub.registry.rollouts import RolloutStore
from edgeloop.hub.runtime import HubRuntime
from tests.scale_rig import MODEL, make_scale_hub, scale_plan, start_rollout, wait_rollout, wave_sizes
from tests.sim_agent import Publish, SimAgent, Subscribe
from tests.sim_fleet import SimFleetProcess

pytestmark = pytest.mark.broker

N = int(os.environ.get("EDGELOOP_SCALE_AGENTS", "1000"))  # the must-show is 1,000; fewer to debug
PERCENTS = (1.0, 10.0, 50.0)  # canary 1 %, then up to 10 %, 50 %, the rest: 10, 90, 400, 500 agents
WAVES = wave_sizes(N, PERCENTS)
TAGS = {"site": "plant-a", "hw": "sim"}


class Scale:
    def __init__(self, hub, v1, v2, sims: SimFleetProcess, runtime: HubRuntime, prefix: str) -> None:
        self.hub, self.v1, self.v2, self.sims, self.runtime = hub, v1, v2, sims, runtime
        self.ids = sorted(sims.report_keys)
        assert len(self.ids) == N and all(i.startswith(prefix) for i in self.ids)

    def rows(self) -> dict[str, dict]:
        return {a["agent_id"]: a for a in self.hub.list_agents()}

    def all_online(self) -> bool:
        rows = self.rows()
        return all(aid in rows and rows[aid]["status"] == "online" for aid in self.ids)


@pytest.fixture(scope="module")
def scale(tmp_path_factory, mosquitto):
    hub, v1, v2 = make_scale_hub(tmp_path_factory.mktemp("scale-hub"))
    prefix = f"scale{time.monotonic_ns() % 10**6}"  # the session's broker keeps other tests' retained states
    # serving reports every 3 s (spread over the interval), as a real agent's [serving] report_seconds
    sims = SimFleetProcess(mosquitto.address, N, hub.key.public_pem(), prefix=prefix, preinstall=v1.bundle,
                           behaviour={"report_s": 3.0}, tags=TAGS).start()
    runtime = HubRuntime(hub, mosquitto.address.url)
    try:
        runtime.start()
        yield Scale(hub, v1, v2, sims, runtime, prefix)
    finally:
        runtime.stop()
        sims.stop()
        hub.close()


@pytest.mark.slow
def test_registry_lists_every_simulated_agent_exactly_once_they_announce(scale):
    fleet = scale.runtime.fleet
    assert fleet.wait_for(scale.all_online, 90), f"{sum(r['status'] == 'online' for r in scale.rows().values())} " \
                                                 f"of {N} simulated agents listed online"
    rows = scale.rows()
    assert sorted(rows) == scale.ids  # every one, none twice, no other (the broker's other agents are not members)
    for row in rows.values():
        assert (row["status"], row["member"], row["session"]) == ("online", 1, 1), row
        assert (row["active_model"], row["active_version"], row["active_bundle"]) == (MODEL, scale.v1.version,
                                                                                        scale.v1.sha256), row
        assert row["tags"] == TAGS
    # trust on first use: each agent's own report key, pinned from its signed state; nothing refused
    assert {aid: key for aid, key in scale.hub.registry.agent_keys().items() if aid in rows} == scale.sims.report_keys
    assert fleet.trust.refused == 0
    assert scale.sims.summary()["errors"] == []


@pytest.mark.slow
def test_rollout_in_waves_reaches_every_agent_and_the_registry_is_exact(scale):
    hub, fleet = scale.hub, scale.runtime.fleet
    assert fleet.wait_for(scale.all_online, 90)
    started = time.perf_counter()
    # agent_timeout_seconds is generous: on a loaded 2-core box a wave of 500 takes long to deploy, and the
    # driver counts an agent as activated only when the deploy of its whole wave returned
    plan = scale_plan(scale.v2.version, target="site=plant-a,hw=sim", agent_timeout_seconds=180.0,
                      wave_percents=PERCENTS[1:] + (100.0,))
    rid = start_rollout(hub, plan)  # Hub.rollout_start: a request the hub runtime's driver carries out
    status = wait_rollout(hub, rid, timeout=200)  # within pytest's 300 s, so that a failure says why
    took = time.perf_counter() - started
    print(f"\nrollout {rid} of {N} simulated agents: {status['status']} in {took:.1f} s")
    if status["status"] != "completed":  # say what the agents saw of it, beside the hub's reason
        seen = scale.sims.summary()
        odd = {aid: evs for aid, evs in seen["events"].items() if not evs or evs[-1][0] != "install_result"}
        pytest.fail(f"rollout {status['status']}: {status['reason']}; agents' errors {seen['errors'][:3]}; "
                    f"{len(odd)} agents answered otherwise, e.g. {dict(list(odd.items())[:3])}")

    # the rollout's state in the registry: the planned waves, every agent in exactly one, every one healthy
    state = RolloutStore(hub.registry).load(rid)
    waves = [sorted(w.agents) for w in state.waves]
    assert [len(w) for w in waves] == WAVES
    assert sorted(a for w in waves for a in w) == scale.ids
    assert {r.status for w in state.waves for r in w.agents.values()} == {"healthy"}
    assert {r.previous_version for w in state.waves for r in w.agents.values()} == {scale.v1.version}
    assert [w.status for w in state.waves] == ["passed"] * len(WAVES) and state.not_reached == []
    assert [(w["targeted"], w["healthy"]) for w in status["summary"]["waves"]] == [(n, n) for n in WAVES]

    # the agents: every one runs v2 and answered one deploy, in the real agent's order
    summary = scale.sims.summary()
    assert summary["errors"] == [] and summary["connected"] == N
    assert summary["versions"] == {aid: scale.v2.version for aid in scale.ids}
    for aid, evs in summary["events"].items():  # accepted, then (after asking for chunks, if they were late) installed
        assert evs[0] == ("command_result", True, "ok") and evs[-1] == ("install_result", True, "ok"), (aid, evs)
        assert {e[0] for e in evs[1:-1]} <= {"transfer_missing"}, (aid, evs)
    assert summary["serving_reports"] >= N  # the gates judged every agent on its own reports

    # the registry: every agent on v2, one installed deployment each, recorded wave by wave
    assert fleet.wait_for(lambda: all(r["active_version"] == scale.v2.version for r in scale.rows().values()), 30)
    assert {(r["active_bundle"], r["status"]) for r in scale.rows().values()} == {(scale.v2.sha256, "online")}
    deps = [d for d in hub.registry.list_deployments() if d["agent_id"] in scale.sims.report_keys]
    assert Counter(d["agent_id"] for d in deps) == Counter(scale.ids)
    assert {(d["kind"], d["status"], d["target_sha256"]) for d in deps} == {("deploy", "installed", scale.v2.sha256)}
    seq = {d["agent_id"]: int(d["id"].split("-")[-1]) for d in deps}
    for earlier, later in zip(waves, waves[1:], strict=False):  # a wave is deployed only after the one before
        assert max(seq[a] for a in earlier) < min(seq[a] for a in later)
    assert fleet.trust.refused == 0


# --- the simulated agent alone (pure: no broker, no hub) ------------------------------------------------
def _sealed(key, agent_id: str, counter: int, bundle: bytes, version: str, *, shared: bool = True) -> tuple[bytes, str]:
    tid = new_id()
    spec = TransferSpec(tid, hashlib.sha256(bundle).hexdigest(), len(bundle), 1024, -(-len(bundle) // 1024),
                        topic=topics.transfer_topic(tid) if shared else None)
    now = time.time()
    cmd = Command("deploy", new_id(), agent_id, counter, now, now + 300,
                  {"transfer": spec.to_dict(), "bundle_sha256": spec.bundle_sha256, "model": MODEL, "version": version})
    return seal_command(key, cmd), tid


def _chunks(tid: str, bundle: bytes) -> list[bytes]:
    return [Chunk(tid, i, bundle[i * 1024:(i + 1) * 1024]).encode() for i in range(-(-len(bundle) // 1024))]


def test_sim_agent_answers_a_deploy_as_the_real_agent_does(tmp_path):
    hub, v1, v2 = make_scale_hub(tmp_path / "hub")
    agent = SimAgent("sim-1", TrustedKeys.of([hub.key.public]), clock=time.time, tags=TAGS)
    agent.preinstall(v1.bundle)
    mine = TrustedKeys.of([agent.report_key.public])

    def reports(actions) -> list:  # every publication verified with the agent's key and decoded by the real codecs
        out = []
        for a in actions:
            if isinstance(a, Publish) and a.topic.endswith(("/events", "/state")):
                doc = json.loads(a.payload)
                verify_report(doc, mine)
                out.append(decode(a.payload))
        return out

    birth = agent.on_connected()
    assert [type(m) for m in reports(birth)] == [AgentState] and birth[-1].payload == b"online" and birth[-1].retain
    cmd, tid = _sealed(hub.key, "sim-1", 1, v2.bundle, v2.version)
    acts = agent.on_message(topics.agent_topic("sim-1", topics.CMD), cmd)
    assert acts[0] == Subscribe(topics.transfer_topic(tid))  # subscribed before it answers, as the real agent
    (ack,) = reports(acts)
    assert (ack.event, ack.ok, ack.details["chunks"]) == ("command_result", True, len(_chunks(tid, v2.bundle)))
    out = []
    for c in _chunks(tid, v2.bundle):
        out += agent.on_message(topics.transfer_topic(tid), c)
    state, result = reports(out)  # the new state first, then the result
    assert isinstance(state, AgentState) and state.active.version == v2.version
    assert [m.version for m in state.installed] == [v1.version, v2.version]
    assert isinstance(result, Event) and (result.event, result.ok, result.details["bundle_sha256"]) == (
        "install_result", True, v2.sha256)
    replay = reports(agent.on_message(topics.agent_topic("sim-1", topics.CMD), cmd))
    assert [(e.event, e.ok, e.code) for e in replay] == [("command_result", False, "replayed")]


def test_sim_agent_refuses_a_bundle_that_is_not_the_signed_one(tmp_path):
    hub, v1, v2 = make_scale_hub(tmp_path / "hub")
    agent = SimAgent("sim-2", TrustedKeys.of([hub.key.public]), clock=time.time)
    agent.preinstall(v1.bundle)
    events = lambda acts: [decode(a.payload) for a in acts if isinstance(a, Publish) and a.topic.endswith("/events")]
    # chunks of other bytes than the command names (each chunk's CRC is right): the whole sha256 catches it
    cmd, tid = _sealed(hub.key, "sim-2", 1, v2.bundle, v2.version, shared=False)
    agent.on_message(topics.agent_topic("sim-2", topics.CMD), cmd)
    out = []
    for c in _chunks(tid, v2.bundle[:-1] + bytes([v2.bundle[-1] ^ 1])):
        out += agent.on_message(topics.agent_topic("sim-2", topics.BUNDLE), c)
    assert [(e.event, e.ok, e.code) for e in events(out)] == [("install_result", False, "hash_mismatch")]
    # a command signed by another key is refused before anything happens
    forged, _ = _sealed(SigningKey.generate(), "sim-2", 2, v2.bundle, v2.version)
    refused = events(agent.on_message(topics.agent_topic("sim-2", topics.CMD), forged))
    assert [(e.event, e.ok, e.code) for e in refused] == [("command_result", False, "untrusted_key")]
    assert agent.version == v1.version
