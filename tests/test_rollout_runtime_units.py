"""The rollout runtime's parts without a broker: the serving report on the wire, the agent's serving
statistics, the registry's rollout store, the CLI's progress view and its refusal without a runtime."""

from __future__ import annotations

import hashlib
import json

import pytest

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.errors import ConfigError, MessageFormatError
from edgeloop.agent.serving_report import REPORT_FOR_S, ServingReporter, ServingStats, percentile
from edgeloop.agent.wire.messages import SCHEMA
from edgeloop.agent.wire.serving import ServingReport, VersionServing
from edgeloop.hub.cli.parser import main as cli
from edgeloop.hub.cli.rollout import progress_lines
from edgeloop.hub.registry import Registry
from edgeloop.hub.registry.rollouts import RolloutStore, run_dict
from edgeloop.hub.rollout.events import AgentProgress, AgentReport, Start, Tick
from edgeloop.hub.rollout.gates import Observation
from edgeloop.hub.rollout.machine import new_rollout, step
from edgeloop.hub.rollout.plan import Gates
from edgeloop.hub.services import Hub
from tests.rollout_rig import fleet, plan


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --- the wire -----------------------------------------------------------------------------------
def test_a_serving_report_round_trips_and_a_bad_one_is_refused_naming_the_field():
    rep = ServingReport("pi-01", 12.5, [VersionServing("iris", "2", 10.0, 40, 1, 0.2, 0.9, active=True),
                                        VersionServing("iris", "1", 1.0, 500, 0, 0.1, 0.3)])
    doc = json.loads(rep.encode())
    assert doc["type"] == "serving" and doc["schema"] == SCHEMA
    assert ServingReport.from_dict(doc) == rep
    assert rep.version("iris", "1").requests == 500 and rep.version("iris", "3") is None
    bad = json.loads(rep.encode())
    bad["versions"][0]["errors"] = 41
    with pytest.raises(MessageFormatError, match="errors"):
        ServingReport.from_dict(bad)
    bad["versions"][0]["errors"] = "1"
    with pytest.raises(MessageFormatError, match="'errors'"):
        ServingReport.from_dict(bad)
    with pytest.raises(MessageFormatError, match="at most 8"):
        ServingReport.from_dict({**doc, "versions": doc["versions"] * 5})


# --- the agent's statistics ----------------------------------------------------------------------
def test_serving_stats_count_since_activation_and_give_the_nearest_rank_p99():
    clock = Clock()
    stats = ServingStats(clock)
    for ms in range(1, 101):  # iris 1: 1..100 ms
        stats.record("iris", "1", float(ms))
    stats.record("iris", "1", None, "inference")  # the model failed: counted
    stats.record("iris", "1", None, "bad_shape")  # the client's mistake: not counted
    clock.t += 5
    for _ in range(3):
        stats.record("iris", "2", 50.0)
    new, old = stats.snapshot(("iris", "2"))
    assert (new.version, new.active, new.requests, new.errors, new.p99_ms) == ("2", True, 3, 0, 50.0)
    assert (old.version, old.requests, old.errors, old.p99_ms, old.p50_ms) == ("1", 101, 1, 99.0, 50.0)
    clock.t += 5  # iris 1 activated again (a rollback): its counts start over, iris 2's stay
    stats.record("iris", "1", 7.0)
    again = {v.version: v for v in stats.snapshot(("iris", "1"))}
    assert again["1"].requests == 1 and again["1"].p99_ms == 7.0 and again["2"].requests == 3
    assert percentile([], 99) is None and percentile([3.0], 99) == 3.0


def test_the_reporter_reports_only_changes_and_only_while_the_version_is_new():
    clock = Clock()
    stats = ServingStats(clock)
    sent: list[ServingReport] = []
    active = ("iris", "2")
    rep = ServingReporter("pi-01", stats, lambda: active, sent.append, 0.5, clock)
    assert rep.report() is None  # nothing served yet
    stats.record("iris", "2", 1.0)
    first = rep.report()
    assert first is not None and first.versions[0].requests == 1
    assert rep.report() is None  # nothing new
    clock.t += REPORT_FOR_S + 1
    stats.record("iris", "2", 1.0)
    assert rep.report() is None  # the version is not new any more


def test_the_agent_config_reads_and_checks_serving_report_seconds(tmp_path):
    cfg = AgentConfig(agent_id="a", state_dir=tmp_path / "s", trusted_keys=[], serving_report_seconds=2.5)
    path = tmp_path / "a.toml"
    path.write_text(cfg.to_toml())
    assert AgentConfig.load(path).serving_report_seconds == 2.5
    path.write_text(cfg.to_toml().replace("report_seconds = 2.5", "report_seconds = 0"))
    with pytest.raises(ConfigError, match="report_seconds"):
        AgentConfig.load(path)


# --- the registry --------------------------------------------------------------------------------
def _run_a_little(s=None, now: float = 100.0):
    s = s or new_rollout("ro-1", plan(bake_seconds=1.0, gates=Gates(min_requests=1)), now)
    s, _ = step(s, Start(agents=fleet(4)), now)
    first = s.waves[0].agents
    for aid in first:
        s, _ = step(s, AgentProgress(aid, "baking"), now + 1)
        s, _ = step(s, AgentReport(aid, Observation(True, True, requests=5)), now + 1)
    s, _ = step(s, Tick(), now + 3)
    return s


def test_the_store_keeps_the_state_and_appends_the_audit_so_a_restart_loads_the_same_state(tmp_path):
    reg = Registry(tmp_path / "registry.db")
    store = RolloutStore(reg)
    made = store.add(lambda rid: new_rollout(rid, plan(bake_seconds=1.0, gates=Gates(min_requests=1)), 100.0),
                     by="ops")
    assert made.rollout_id == "ro-1" and store.load("ro-1").to_dict() == made.to_dict()
    state = _run_a_little(made)
    store.save(state)
    store.save(state)  # saved twice: nothing twice
    assert store.load("ro-1").to_dict() == state.to_dict()
    assert [r["seq"] for r in store.audit("ro-1")] == [r.seq for r in state.audit]
    runs = [a for w in state.waves for a in w.agents.values()]
    assert any(a.observation is not None for a in runs) and all(run_dict(a) == a.to_dict() for a in runs)
    assert store.list_rollouts()[0]["summary"] == state.summary()
    assert store.list_rollouts(active_only=True)[0]["id"] == "ro-1"
    rid = store.request("pause", "ro-1", {"why": "w"}, "ops")
    assert [r["id"] for r in store.pending_requests()] == [rid]
    store.finish_request(rid, False, {"error": "no", "code": "rollout_state"})
    assert store.pending_requests() == [] and store.get_request(rid)["result"]["code"] == "rollout_state"
    with pytest.raises(Exception, match="no rollout 'ro-9'.*ro-1"):
        store.get("ro-9")


# --- the CLI ----------------------------------------------------------------------------------------
def test_the_progress_view_and_the_commands_without_a_runtime(tmp_path, capsys):
    home = tmp_path / "hub"
    hub = Hub(home, actor="ops")
    state = _run_a_little()
    RolloutStore(hub.registry).add(lambda rid: state, by="ops")
    status = hub.rollout_status("ro-1")
    lines = progress_lines(status)
    assert lines[0].startswith("ro-1  m:v2") and "[RUNNING]" in lines[0]
    assert any(line.startswith("canary") and "passed" in line for line in lines)
    assert cli(["rollout", "status", "ro-1", "--home", str(home), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"] == state.summary()
    assert cli(["rollout", "pause", "ro-1", "--home", str(home)]) == 2  # nobody would carry it out
    assert "edgeloop hub serve" in capsys.readouterr().err
    assert cli(["rollout", "start", "--home", str(home)]) == 2
    assert "give the version and the target" in capsys.readouterr().err
    hub.close()


def test_plan_dicts_name_versions_by_ref(tmp_path):
    hub = Hub(tmp_path / "hub", actor="ops")
    reg = hub.registry
    ds = reg.add_dataset(hashlib.sha256(b"d").hexdigest(), "d", "file:d", 10, ["a"], ["x", "y"])
    run = reg.start_run(ds["id"], "iris", {})
    reg.finish_run(run["id"])
    reg.add_version("iris", run["id"], hashlib.sha256(b"m").hexdigest(), task="classification")
    p = hub.rollout_plan("iris", "site=a", bake_seconds=5, gates={"min_requests": 3})
    assert (p.model, p.version, p.bake_seconds, p.gates.min_requests) == ("iris", "1", 5, 3)
    with pytest.raises(Exception, match="no version '7'"):
        hub.rollout_plan("iris:7", "site=a")
    hub.close()


# --- the driver's figures -------------------------------------------------------------------------
def test_the_figures_make_the_observation_of_a_run_from_serving_drift_and_estimates():
    from edgeloop.agent.wire.messages import DriftReport, FeatureDrift
    from edgeloop.agent.wire.performance import PerformanceEstimate
    from edgeloop.hub.runtime.rollout_figures import AgentFigures

    state = _run_a_little()  # model m, v2 over v1; the canary pi-00 is healthy, wave 2 deploying
    run = state.waves[-1].agents["pi-01"]
    figures = AgentFigures()
    assert figures.observation(state, run, {}) == Observation()  # nothing known yet: the gates wait
    figures.installed[("ro-1", "pi-01")] = True
    figures.serving["pi-01"] = ServingReport("pi-01", 1.0, [
        VersionServing("m", "v2", 1.0, 40, 2, 1.0, 9.0, active=True), VersionServing("m", "v1", 0.0, 900, 0, 1.0, 4.0)])

    def drift(version: str, accuracy: float, drifted: bool = False) -> DriftReport:
        pf = PerformanceEstimate(100, accuracy, accuracy - 0.02, accuracy + 0.02, 0.9, 0.9, 0.05, False)
        return DriftReport("pi-01" if version == "v2" else "pi-09", "m", version, "0" * 64, 1, 100, 0.0, 1.0, 0.2,
                           0.1, [FeatureDrift("t", [1], 0.5 if drifted else 0.0, 0.0, 0.0, drifted)], performance=pf)

    assert figures.drift_report(drift("v1", 0.91), [state]) == []  # the replaced version's: the baseline only
    assert figures.drift_report(drift("v2", 0.80, drifted=True), [state]) == ["ro-1"]
    obs = figures.observation(state, run, {"agreement": 0.97, "requests": 50})
    assert (obs.installed_ok, obs.smoke_ok, obs.requests, obs.errors) == (True, True, 40, 2)
    assert (obs.latency_p99_ms, obs.replaced_p99_ms, obs.drift_flags) == (9.0, 4.0, ("t",))
    assert (obs.shadow_agreement, obs.shadow_requests) == (0.97, 50)
    assert obs.estimated_accuracy == pytest.approx(0.80) and obs.baseline_accuracy == pytest.approx(0.91)
    figures.forget("ro-1")
    assert figures.observation(state, run, {}).installed_ok is None
