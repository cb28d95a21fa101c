"""The hub runtime drives rollouts over 20 real agent processes on a real Mosquitto.

One module-scoped fleet (20 agents, each with iris 1 active, tagged ring=x or ring=y) and one hub
home with four signed versions of a small real ONNX classifier: 2 and 4 as good as 1, 3 the same
answers after two 1024x1024 matrix products (0.1-0.4 s a request instead of ~0.1 ms: a latency
regression the p99 gate, at 3x the replaced version's, must catch). A thread sends every agent
inference requests over MQTT the whole time, so the agents' serving reports carry real requests and
latencies (min_requests, error rate and p99 gates are judged on them).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import pytest

from edgeloop.agent.fsutil import CRASH_ENV
from edgeloop.agent.store import AgentStore
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.messages import InferRequest
from edgeloop.hub.cli.parser import main as cli
from edgeloop.hub.runtime import HubRuntime
from edgeloop.hub.services import Hub
from edgeloop.hub.services.rollouts import RolloutRequestError
from tests.agent_rig import plain_client
from tests.conftest import REPO, AgentProcess, wait_until, write_agent_config
from tests.onnx_models import classifier_onnx
from tests.onnx_variants import signed_bundle, slow_classifier_onnx

pytestmark = pytest.mark.broker

N = 20
ROW = [5.1, 3.5, 1.4, 0.2]
FAST = {"min_requests": 3, "max_error_rate": 0.0}


@dataclass
class Rig:
    hub: Hub
    broker: object
    tmp: object
    configs: dict = field(default_factory=dict)
    procs: dict = field(default_factory=dict)
    runtime: HubRuntime | None = None
    stop_traffic: threading.Event = field(default_factory=threading.Event)

    @property
    def ids(self) -> list[str]:
        return sorted(self.configs)

    def ring(self, name: str) -> list[str]:
        return [a for i, a in enumerate(self.ids) if (i % 2 == 0) == (name == "x")]

    def start_runtime(self) -> HubRuntime:
        self.runtime = HubRuntime(self.hub, self.broker.address.url, heartbeat_s=1.0, rollout_tick_s=0.2).start()
        return self.runtime

    def stop_runtime(self) -> None:
        if self.runtime is not None:
            self.runtime.stop()
            self.runtime = None

    def start_agent(self, aid: str, crash_at: str | None = None) -> AgentProcess:
        env_before = os.environ.pop(CRASH_ENV, None)
        if crash_at:
            os.environ[CRASH_ENV] = crash_at
        try:
            self.procs[aid] = AgentProcess(self.configs[aid], self.tmp / f"{aid}.log").start()
        finally:
            os.environ.pop(CRASH_ENV, None)
            if env_before is not None:
                os.environ[CRASH_ENV] = env_before
        return self.procs[aid]

    def active(self, aid: str) -> str | None:
        return self.hub.registry.get_agent(aid)["active_version"]

    def wait_status(self, rid: str, statuses: tuple[str, ...], timeout: float = 60.0) -> dict:
        ok = wait_until(lambda: self.hub.rollout_status(rid)["status"] in statuses, timeout, 0.1)
        st = self.hub.rollout_status(rid, audit=200)
        assert ok, _explain(st)
        return st

    def deployments_of(self, aid: str, version: str) -> list[dict]:
        sha = self.hub.registry.list_bundles(f"iris:{version}")[0]["sha256"]
        return [d for d in self.hub.registry.list_deployments(aid) if d.get("bundle_sha256") == sha]


def _row(hub: Hub, aid: str) -> dict:
    try:
        return hub.registry.get_agent(aid)
    except Exception:
        return {}


def _explain(st: dict) -> str:
    lines = [f"{st['id']} {st['status']} reason={st.get('reason')}"]
    for w in st["state"]["waves"]:
        lines += [f"  {w['name']} {w['status']}: " + ", ".join(f"{a['id']}={a['status']}({a['reason']})"
                                                         for a in w["agents"])]
    lines += [f"  {r['actor']}: {r['what']} {r['why']}" for r in st["audit"][-30:]]
    return "\n".join(lines)


def _home(tmp) -> Hub:
    """A hub with iris 1..4 registered and signed (no torch: small real ONNX models)."""
    hub = Hub(tmp / "hub", actor="tests")
    reg = hub.registry
    ds = reg.add_dataset(hashlib.sha256(b"iris-rollouts").hexdigest(), "iris", "file:iris", 150,
                         ["a", "b", "c", "d"], ["setosa", "versicolor", "virginica"])
    run = reg.start_run(ds["id"], "iris", {})
    reg.finish_run(run["id"])
    hub.home.bundles_dir.mkdir(parents=True, exist_ok=True)
    models = {"1": classifier_onnx(), "2": classifier_onnx(), "3": slow_classifier_onnx(size=1024, rounds=2),
              "4": classifier_onnx()}
    for v, model in models.items():
        reg.add_version("iris", run["id"], hashlib.sha256(model + v.encode()).hexdigest(), task="classification")
        data = signed_bundle(hub.key, model, model="iris", version=v)
        path = hub.home.bundles_dir / f"iris-{v}.elb"
        path.write_bytes(data)
        reg.add_bundle(hashlib.sha256(data).hexdigest(), f"iris:{v}", path, len(data), hub.key.keyid)
    return hub


def _traffic(rig, to: list[str] | None = None, period: float = 0.25) -> None:
    """Inference requests to the agents ``to`` (default: every agent of the rig), one each per ``period``,
    until ``rig.stop_traffic`` is set."""
    client = plain_client(rig.broker, lambda *a: None, f"test/rollouts/{uuid.uuid4().hex[:6]}")
    try:
        while not rig.stop_traffic.wait(period):
            for aid in rig.ids if to is None else to:
                req = InferRequest(id=uuid.uuid4().hex, inputs=[ROW], reply_to="test/rollouts/replies")
                client.publish(topics.agent_topic(aid, topics.INFER), req.encode(), qos=0)
    finally:
        client.loop_stop()
        client.disconnect()


def _seed_agent(rig, aid: str, tags: dict[str, str]) -> None:
    """Agent ``aid`` of the rig: iris 1 installed in its state directory, its config written (not started)."""
    b1, data = rig.hub.resolve_bundle("iris:1")
    AgentStore(rig.tmp / f"{aid}-state").install(b1["sha256"], data, "iris", "1")
    rig.configs[aid] = write_agent_config(rig.tmp, aid, rig.broker, rig.hub.key.public_pem(),
                                          serving_report_seconds=0.5, tags=tags)


@pytest.fixture(scope="module")
def rig(tmp_path_factory, mosquitto):
    tmp = tmp_path_factory.mktemp("rollouts")
    hub = _home(tmp)
    r = Rig(hub, mosquitto, tmp)
    for i in range(N):
        _seed_agent(r, f"ro{os.getpid() % 1000}-{i:02d}", {"ring": "x" if i % 2 == 0 else "y", "site": "lab"})
    for aid in r.ids:
        r.start_agent(aid)
    r.start_runtime()
    t0 = time.monotonic()
    traffic = threading.Thread(target=_traffic, args=(r,), daemon=True)
    traffic.start()
    try:
        assert wait_until(lambda: all(_row(hub, a).get("status") == "online" and _row(hub, a).get("active_version")
                                      == "1" for a in r.ids), 90), {a: r.procs[a].log()[-2000:] for a in r.ids[:2]}
        print(f"fleet online in {time.monotonic() - t0:.1f} s")
        driver = r.runtime.rollouts
        assert wait_until(lambda: all((rep := driver.figures.serving.get(a)) is not None and
                                      (v := rep.version("iris", "1")) is not None and v.requests >= 5
                                      for a in r.ids), 60), "agents did not report serving iris 1"
        print(f"serving reports in {time.monotonic() - t0:.1f} s")
        yield r
    finally:
        r.stop_traffic.set()
        r.stop_runtime()
        for p in r.procs.values():
            if p.proc is not None:
                p.stop(kill=True)


# --- scenarios (in file order: each leaves the fleet as the next expects) -----------------------
def test_a_canary_failing_its_p99_gate_halts_rolls_back_and_leaves_the_others_untouched(rig):
    st = rig.hub.rollout_start(version="iris:3", target="site=lab", strategy="canary", canary_agents=1, ramp="rest",
                               bake_seconds=1.0, agent_timeout_seconds=30.0, failure_policy="rollback_wave",
                               gates={"min_requests": 3, "max_p99_ratio": 3.0})
    rid = st["id"]
    assert st["summary"]["waves"][0]["name"] == "canary" and st["summary"]["waves"][0]["targeted"] == 1
    st = rig.wait_status(rid, ("rolled_back",), 60)
    canary = st["state"]["waves"][0]["agents"][0]
    assert len(st["state"]["waves"]) == 1, _explain(st)  # no second wave ever started
    assert "p99 latency" in canary["reason"] and canary["rollback"] == "confirmed", _explain(st)
    assert "canary failed" in st["reason"] and "p99 latency" in st["reason"]
    obs = canary["observation"]
    print(f"canary p99 {obs['latency_p99_ms']:.1f} ms over the replaced {obs['replaced_p99_ms']:.2f} ms")
    assert obs["latency_p99_ms"] > 3 * obs["replaced_p99_ms"]
    assert wait_until(lambda: rig.active(canary["id"]) == "1", 20)  # the canary serves iris 1 again
    others = [a for a in rig.ids if a != canary["id"]]
    assert all(rig.active(a) == "1" and not rig.deployments_of(a, "3") for a in others)  # never sent iris 3
    actions = [r["what"] for r in st["audit"]]
    assert any("failed a gate" in w for w in actions) and any("rolling back 1 agent" in w for w in actions)


def test_a_good_version_rolls_out_wave_by_wave_with_approval_pause_and_resume(rig, capsys):
    ring = rig.ring("x")
    st = rig.hub.rollout_start(version="iris:2", target="ring=x", canary_agents=1,
                               ramp="sizes", wave_sizes=[3], bake_seconds=1.0, agent_timeout_seconds=30.0,
                               approval_required=True, gates=FAST)
    rid = st["id"]
    st = rig.wait_status(rid, ("awaiting_approval",), 60)
    assert [w["status"] for w in st["summary"]["waves"]] == ["passed"]
    with pytest.raises(RolloutRequestError) as exc:  # nothing to resume
        rig.hub.rollout_resume(rid)
    assert exc.value.code == "rollout_state"
    with pytest.raises(RolloutRequestError) as exc:  # one rollout per model and agent at a time
        rig.hub.rollout_start(version="iris:4", target=f"id:{ring[-1]}", strategy="all_at_once", gates=FAST)
    assert exc.value.code == "rollout_conflict" and rid in str(exc.value)
    with pytest.raises(RolloutRequestError) as exc:
        rig.hub.rollout_start(version="iris:4", target="ring=z", gates=FAST)
    assert exc.value.code == "no_targets"
    assert rig.hub.rollout_pause(rid, why="lunch")["status"] == "paused"
    assert rig.hub.rollout_resume(rid)["status"] == "awaiting_approval"
    assert cli(["rollout", "approve", rid, "--home", str(rig.hub.home.root), "--why", "canary fine"]) == 0
    st = rig.wait_status(rid, ("awaiting_approval",), 60)
    assert [w["status"] for w in st["summary"]["waves"]] == ["passed", "passed"]
    rig.hub.rollout_approve(rid)
    st = rig.wait_status(rid, ("completed",), 60)
    waves = st["state"]["waves"]
    assert [len(w["agents"]) for w in waves] == [1, 3, 6] and all(w["status"] == "passed" for w in waves)
    assert all(waves[i]["ended_at"] <= waves[i + 1]["started_at"] for i in range(2))  # one wave after the other
    assert all(a["status"] == "healthy" and a["observation"]["requests"] >= 3 for w in waves for a in w["agents"])
    assert wait_until(lambda: all(rig.active(a) == "2" for a in ring), 20)
    assert all(rig.active(a) == "1" for a in rig.ring("y"))  # outside the target: untouched
    capsys.readouterr()
    assert cli(["rollout", "status", rid, "--home", str(rig.hub.home.root)]) == 0
    out = capsys.readouterr().out
    assert "[COMPLETED]" in out and "canary" in out and "wave 3" in out and "healthy" in out
    assert cli(["rollout", "list", "--home", str(rig.hub.home.root), "--json"]) == 0
    assert rid in capsys.readouterr().out
    whos = [(r["actor"], r["action"]) for r in rig.hub.list_audit(50, target=rid)]
    assert ("tests", "rollout.approve") in whos and ("tests", "rollout.pause") in whos


@pytest.mark.reliability("rollouts", "the hub runtime is killed (SIGKILL) in the middle of a rollout, then started "
                         "again", "the rollout resumes from the registry and completes; every agent runs the version")
def test_a_hub_runtime_killed_mid_rollout_resumes_and_completes(rig):
    ring = rig.ring("y")
    rig.stop_runtime()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    serve = subprocess.Popen([sys.executable, "-m", "edgeloop.hub.cli", "hub", "serve", "--home",
                              str(rig.hub.home.root), "--broker", rig.broker.address.url],
                             stdout=subprocess.DEVNULL, stderr=open(rig.tmp / "serve.log", "ab"), env=env, cwd=REPO)
    try:
        assert wait_until(lambda: rig.hub.listening()["listening"], 30), (rig.tmp / "serve.log").read_text()
        st = rig.hub.rollout_start(version="iris:2", target="ring=y", canary_agents=1, ramp="rest",
                                   bake_seconds=2.0, agent_timeout_seconds=30.0, gates=FAST)
        rid = st["id"]
        assert wait_until(lambda: any(w["baking"] for w in rig.hub.rollout_status(rid)["summary"]["waves"]), 30)
    finally:
        serve.send_signal(signal.SIGKILL)
        serve.wait(10)
    killed_at = rig.hub.rollout_status(rid)
    assert killed_at["status"] in ("running", "baking"), _explain(killed_at)
    rig.start_runtime()
    st = rig.wait_status(rid, ("completed",), 90)
    assert [len(w["agents"]) for w in st["state"]["waves"]] == [1, 9]
    assert wait_until(lambda: all(rig.active(a) == "2" for a in ring), 20)
    seqs = [r["seq"] for r in rig.hub.rollout_store.audit(rid)]
    assert seqs == list(range(1, len(seqs) + 1))  # the audit survived the kill whole, nothing twice


@pytest.mark.reliability("rollouts", "an agent is killed (SIGKILL) mid-rollout, when the bundle's last chunk landed",
                         "after its restart the transfer completes, the agent activates and the rollout completes")
def test_an_agent_killed_mid_transfer_completes_the_rollout_after_its_restart(rig):
    aid = rig.ring("y")[-1]
    rig.procs[aid].stop()
    proc = rig.start_agent(aid, crash_at="transfer_complete")
    assert wait_until(lambda: _row(rig.hub, aid).get("status") == "online", 30), proc.log()
    st = rig.hub.rollout_start(version="iris:4", target=f"id:{aid}", strategy="all_at_once", bake_seconds=1.0,
                               agent_timeout_seconds=40.0, gates=FAST)
    rid = st["id"]
    assert proc.proc is not None and proc.proc.wait(30) == -9, proc.log()[-3000:]  # died with the bundle complete
    proc.proc = None
    proc._log.close()
    mid = rig.hub.rollout_status(rid)
    assert mid["status"] == "running", _explain(mid)
    assert mid["state"]["waves"][0]["agents"][0]["status"] in ("pending", "transferring"), _explain(mid)
    rig.start_agent(aid)
    st = rig.wait_status(rid, ("completed",), 60)
    assert st["state"]["waves"][0]["agents"][0]["status"] == "healthy", _explain(st)
    assert wait_until(lambda: rig.active(aid) == "4", 20)


@pytest.mark.reliability("rollouts", "an agent stops answering (SIGSTOP) while a rollout deploys to it",
                         "it times out into a visible timed_out state, the rollout halts, and the next rollout to "
                         "that agent supersedes the halted one and completes")
def test_a_stuck_agent_times_out_visibly_and_never_blocks_the_next_rollout(rig, capsys):
    aid = rig.ring("y")[0]
    rig.procs[aid].proc.send_signal(signal.SIGSTOP)
    try:
        st = rig.hub.rollout_start(version="iris:4", target=f"id:{aid}", strategy="all_at_once", bake_seconds=1.0,
                                   agent_timeout_seconds=2.0, failure_policy="halt", gates=FAST)
        rid = st["id"]
        st = rig.wait_status(rid, ("halted",), 30)
        run = st["state"]["waves"][0]["agents"][0]
        assert run["status"] == "timed_out" and "stuck in" in run["reason"], _explain(st)
    finally:
        rig.procs[aid].proc.send_signal(signal.SIGCONT)
    capsys.readouterr()
    rc = cli(["rollout", "start", "iris:4", "--target", f"id:{aid}", "--strategy", "all_at_once", "--bake", "1",
              "--agent-timeout", "40", "--min-requests", "3", "--max-error-rate", "0", "--watch", "--interval", "0.2",
              "--json", "--home", str(rig.hub.home.root)])
    out = capsys.readouterr().out
    assert rc == 0, out
    st2 = json.loads(out)  # --watch --json: the status once it ended
    assert st2["status"] == "completed" and st2["id"] != rid, _explain(st2)
    assert rig.hub.rollout_status(rid)["status"] == "aborted"  # superseded: aborted, without a rollback
    assert "superseded" in rig.hub.rollout_status(rid)["reason"]
    assert wait_until(lambda: rig.active(aid) == "4", 20)
