"""The hub registry on a real SQLite file: schema, lineage, counters, agents, drift, audit."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edgeloop.agent.wire.messages import ActiveModel, AgentState, DriftReport, Event, FeatureDrift
from edgeloop.hub.errors import NotFoundError, RegistryError
from edgeloop.hub.home import Home, default_home
from edgeloop.hub.registry import SCHEMA_VERSION, Registry

REPO = Path(__file__).resolve().parents[1]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def reg(tmp_path):
    with Registry(tmp_path / "registry.sqlite") as r:
        yield r


def make_version(reg: Registry, *, data="iris.csv", model="iris", parent=None) -> dict:
    """dataset -> run -> version, as the training pipeline records them."""
    ds = reg.add_dataset(sha(data), data, f"file:{data}", 150, ["a", "b"], ["x", "y"])
    run = reg.start_run(ds["id"], model, {"epochs": 5}, code_version="abc123",
                        library_versions={"torch": "2.13.0"})
    reg.finish_run(run["id"], metrics={"accuracy": 0.96}, history=[{"epoch": 1, "loss": 0.5}])
    return reg.add_version(model, run["id"], sha(f"onnx-{run['id']}"), task="classification",
                           int8_sha256=sha(f"int8-{run['id']}"), chosen="int8",
                           quantization={"accuracy_drop": 0.001}, metrics={"accuracy": 0.96},
                           parent_version=parent)


def agent_state(agent_id="edge-1", *, status="online", session=1, started_at=1000.0, bundle=None,
                version="1") -> AgentState:
    active = ActiveModel("iris", version, bundle) if bundle else None
    return AgentState(agent_id=agent_id, status=status, session=session, agent_version="0.1.0",
                      started_at=started_at, host="pi-kitchen", http_url="http://10.0.0.5:8080",
                      active=active, installed=[active] if active else [])


def drift_report(window: int, drifted: dict[str, float], *, agent_id="edge-1", version="1",
                 bundle=None) -> DriftReport:
    """A report over features a, b, c; ``drifted`` maps the flagged ones to their PSI."""
    feats = [FeatureDrift(name=n, counts=[3, 4, 3], psi=drifted.get(n, 0.01), ks=0.05, mean=0.5,
                          drifted=n in drifted) for n in ("a", "b", "c")]
    return DriftReport(agent_id=agent_id, model="iris", version=version,
                       bundle_sha256=bundle or sha("bundle"), window=window, rows=100,
                       started_at=1000.0 + 60 * window, ended_at=1060.0 + 60 * window,
                       psi_threshold=0.2, ks_threshold=0.2, features=feats)


# --- schema ----------------------------------------------------------------------------------
def test_migrates_an_empty_file_to_the_current_schema(tmp_path):
    path = tmp_path / "sub" / "registry.sqlite"
    with Registry(path) as reg:
        assert reg.schema_version == SCHEMA_VERSION >= 1
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"meta", "datasets", "runs", "models", "versions", "bundles", "deployments",
            "agents", "drift_reports", "audit", "counters"} <= tables
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    with Registry(path) as again:  # reopening migrates nothing and keeps the data
        assert again.schema_version == SCHEMA_VERSION
        assert again.list_versions() == []


def test_bundle_paths_are_kept_relative_to_the_home_so_a_copied_home_reads_its_own_files(tmp_path):
    import shutil

    home = tmp_path / "home"
    (home / "bundles").mkdir(parents=True)
    (home / "bundles" / "b.elb").write_bytes(b"original")
    with Registry(home / "registry.sqlite") as reg:
        v = make_version(reg)
        reg.add_bundle(sha("b"), v["id"], home / "bundles" / "b.elb", 8, "k")
        reg.add_bundle(sha("elsewhere"), v["id"], "/srv/bundles/e.elb", 8, "k")  # outside the home: as given
        assert Path(reg.get_bundle(sha("b"))["path"]) == (home / "bundles" / "b.elb").resolve()
        stored = dict(reg._db().execute("SELECT sha256, path FROM bundles").fetchall())
    assert stored == {sha("b"): "bundles/b.elb", sha("elsewhere"): "/srv/bundles/e.elb"}
    shutil.copytree(home, tmp_path / "copy")
    (tmp_path / "copy" / "bundles" / "b.elb").write_bytes(b"the copy")
    with Registry(tmp_path / "copy" / "registry.sqlite") as copy:
        assert Path(copy.get_bundle(sha("b"))["path"]).read_bytes() == b"the copy"
        assert Path(copy.list_bundles()[-1]["path"]).read_bytes() == b"the copy"


def test_migration_5_makes_the_absolute_bundle_paths_of_a_schema_4_home_relative(tmp_path):
    home = tmp_path / "home"
    with Registry(home / "registry.sqlite") as reg:
        v = make_version(reg)
        reg.add_bundle(sha("b"), v["id"], home / "bundles" / "b.elb", 8, "k")
        reg.add_deployment(sha("b"), "edge-1", "deploy", "cmd-old", 1)
    conn = sqlite3.connect(home / "registry.sqlite")  # as schema 4 stored it: absolute, no agent_keys
    conn.execute("UPDATE bundles SET path = ?", [str(home / "bundles" / "b.elb")])
    conn.execute("DROP TABLE agent_keys")
    conn.execute("ALTER TABLE deployments DROP COLUMN expires_at")
    conn.execute("ALTER TABLE agents DROP COLUMN tags")  # migration 6
    conn.execute("ALTER TABLE agents DROP COLUMN hub_tags")
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'captures'").fetchone():  # migration 7
        conn.execute("DROP TABLE captures")
    for table in ("rollout_requests", "rollout_audit", "rollouts"):  # migration 8
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute("DROP TABLE IF EXISTS preflights")  # migration 9
    conn.execute("DROP TABLE IF EXISTS shadow_reports")  # migration 10
    conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with Registry(home / "registry.sqlite") as reg:
        assert reg.schema_version == SCHEMA_VERSION
        assert reg._db().execute("SELECT path FROM bundles").fetchall() == [("bundles/b.elb",)]
        assert reg.agent_keys() == {}
        dep = reg.get_deployment("cmd-old")  # pending from before: settled an hour after it was sent
        assert dep["expires_at"] == dep["created_at"] + 3600


def test_refuses_a_registry_from_a_newer_edgeloop(tmp_path):
    path = tmp_path / "registry.sqlite"
    Registry(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    conn.commit()
    conn.close()
    with pytest.raises(RegistryError) as err:
        Registry(path)
    assert f"schema version {SCHEMA_VERSION + 1}" in str(err.value)
    assert "Upgrade edgeloop" in str(err.value)


def test_refuses_a_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "registry.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(RegistryError) as err:
        Registry(path)
    assert str(path) in str(err.value) and "move it aside" in str(err.value)


def test_foreign_keys_are_enforced(reg):
    with pytest.raises(NotFoundError):
        reg.start_run("ds-000000000000", "iris", {})
    with pytest.raises(NotFoundError, match="run-404"):
        reg.add_version("iris", "run-404", sha("x"), task="classification")
    with pytest.raises(NotFoundError, match="no model named 'nope'"):
        reg.add_bundle(sha("b"), "nope:1", "/b", 1, "k")
    # bypassing the API on the registry's own connection still cannot leave a dangling row
    conn = reg._db().conn
    assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO bundles (sha256, version_id, path, size, key_id, created_at) "
                     "VALUES (?, 'nope:1', '/b', 1, 'k', 0)", [sha("b")])
    assert reg.list_bundles() == []


# --- datasets, runs, versions ----------------------------------------------------------------
def test_add_dataset_is_idempotent_by_sha256(reg):
    first = reg.add_dataset(sha("iris"), "iris.csv", "builtin", 150, ["a", "b"], ["setosa", "virginica"])
    again = reg.add_dataset(sha("iris"), "renamed.csv", "elsewhere", 150, ["a", "b"])
    assert first["id"] == again["id"] == f"ds-{sha('iris')[:12]}"
    assert again["name"] == "iris.csv"  # the existing record, unchanged
    assert first["features"] == ["a", "b"] and first["labels"] == ["setosa", "virginica"]
    assert len(reg.list_datasets()) == 1
    assert [a["action"] for a in reg.list_audit()] == ["dataset.add"]
    assert reg.get_dataset(sha("iris")[:10])["id"] == first["id"]


def test_versions_are_numbered_per_model_and_resolved_by_ref(reg):
    v1 = make_version(reg, data="a.csv")
    v2 = make_version(reg, data="b.csv", parent=v1["id"])
    other = make_version(reg, data="c.csv", model="wine")
    assert (v1["id"], v2["id"], other["id"]) == ("iris:1", "iris:2", "wine:1")
    assert v2["parent_version"] == "iris:1"
    assert v1["quantization"] == {"accuracy_drop": 0.001} and v1["chosen"] == "int8"
    assert reg.get_version("iris")["id"] == "iris:2"
    assert reg.get_version("iris:latest")["id"] == "iris:2"
    assert reg.get_version("iris:1")["onnx_sha256"] == v1["onnx_sha256"]
    assert [v["id"] for v in reg.list_versions()] == ["iris:1", "iris:2", "wine:1"]
    with pytest.raises(NotFoundError, match="has no version '9'; its versions: 1, 2"):
        reg.get_version("iris:9")
    with pytest.raises(NotFoundError, match="known models: iris, wine"):
        reg.get_version("mnist")
    with pytest.raises(RegistryError, match="classification model"):
        reg.add_version("iris", v1["run_id"], sha("z"), task="regression")
    with pytest.raises(RegistryError, match="int8_sha256"):
        reg.add_version("iris", v1["run_id"], sha("z"), chosen="int8")


def test_run_lifecycle_records_metrics_and_refuses_failed_runs(reg):
    ds = reg.add_dataset(sha("d"), "d.csv", "file", 10, ["a"])
    run = reg.start_run(ds["sha256"], "iris", {"lr": 0.01})
    assert run["id"] == "run-1" and run["status"] == "running" and run["dataset_id"] == ds["id"]
    failed = reg.finish_run(run["id"], "failed", metrics={"loss": float("nan")})
    assert failed["status"] == "failed" and failed["finished_at"] >= failed["started_at"]
    with pytest.raises(RegistryError, match="already finished"):
        reg.finish_run(run["id"])
    with pytest.raises(RegistryError, match="only a successful run"):
        reg.add_version("iris", run["id"], sha("m"), task="classification")
    assert reg.start_run(ds["id"], "iris", {})["id"] == "run-2"


# --- lineage -----------------------------------------------------------------------------------
def test_lineage_walks_from_bundle_to_dataset_and_deployments(reg):
    v = make_version(reg)
    bundle_sha = sha("bundle-bytes")
    reg.add_bundle(bundle_sha, v["id"], "/home/bundles/b.tar", 4096, "0123456789abcdef")
    other_bundle = sha("other-bundle")
    reg.add_bundle(other_bundle, v["id"], "/home/bundles/o.tar", 10, "0123456789abcdef")
    reg.add_deployment(bundle_sha, "edge-1", "deploy", "cmd-1", 1)
    reg.add_deployment(bundle_sha, "edge-2", "deploy", "cmd-2", 2)
    reg.update_deployment_status("cmd-1", "installed", "ok")

    lin = reg.lineage(bundle_sha[:10])
    assert lin["kind"] == "bundle"
    assert lin["dataset"]["sha256"] == sha("iris.csv")
    assert lin["run"]["id"] == v["run_id"] and lin["run"]["params"] == {"epochs": 5}
    assert [x["id"] for x in lin["versions"]] == ["iris:1"]
    bundles = lin["versions"][0]["bundles"]
    assert [b["sha256"] for b in bundles] == [bundle_sha]  # narrowed to the bundle asked about
    assert {(d["agent_id"], d["status"]) for d in bundles[0]["deployments"]} == {
        ("edge-1", "installed"), ("edge-2", "pending")}
    assert {d["command_id"] for d in lin["deployments"]} == {"cmd-1", "cmd-2"}

    by_version = reg.lineage("iris:1")
    assert by_version["kind"] == "version"
    assert {b["sha256"] for b in by_version["versions"][0]["bundles"]} == {bundle_sha, other_bundle}
    by_run = reg.lineage(v["run_id"])
    assert by_run["kind"] == "run" and by_run["dataset"]["id"] == lin["dataset"]["id"]
    assert len(by_run["deployments"]) == 2
    assert reg.lineage("iris")["versions"][0]["id"] == "iris:1"


def test_lineage_of_unknown_refs_says_what_to_give(reg):
    make_version(reg)
    with pytest.raises(NotFoundError, match="run-7"):
        reg.lineage("nonsense")
    with pytest.raises(NotFoundError, match="no training run 'run-99'"):
        reg.lineage("run-99")
    with pytest.raises(NotFoundError):
        reg.lineage("deadbeefdeadbeef")
    with pytest.raises(NotFoundError, match="at least 8 hex digits"):
        reg.get_bundle("abc")


# --- deployments --------------------------------------------------------------------------------
def test_deployments_track_status_and_unregistered_rollback_targets(reg):
    v = make_version(reg)
    b = reg.add_bundle(sha("b1"), v["id"], "/b1", 1, "k")
    dep = reg.add_deployment(b["sha256"][:12], "edge-1", "deploy", "cmd-a", 7)
    assert dep["id"] == "dep-1" and dep["bundle_sha256"] == b["sha256"] and dep["status"] == "pending"
    with pytest.raises(RegistryError, match="already recorded"):
        reg.add_deployment(b["sha256"], "edge-1", "deploy", "cmd-a", 8)
    with pytest.raises(RegistryError, match="must be one of"):
        reg.update_deployment_status("cmd-a", "done")
    with pytest.raises(NotFoundError):
        reg.update_deployment_status("cmd-unknown", "failed")

    foreign = sha("bundle from elsewhere")
    rb = reg.add_deployment(foreign, "edge-1", "rollback", "cmd-b", 9)
    assert rb["bundle_sha256"] is None and rb["target_sha256"] == foreign

    ev = Event(event="install_result", agent_id="edge-1", ok=False, at=1.0, code="smoke_test_failed",
               message="outputs differ", command_id="cmd-a")
    settled = reg.update_deployment_from_event(ev)
    assert settled["status"] == "failed" and settled["detail"] == "smoke_test_failed: outputs differ"
    refused = Event(event="command_result", agent_id="edge-1", ok=False, at=2.0, code="replayed",
                    message="counter 9 <= 9", command_id="cmd-b")
    assert reg.update_deployment_from_event(refused)["status"] == "refused"
    accepted = Event(event="command_result", agent_id="edge-1", ok=True, at=3.0, command_id="cmd-a")
    assert reg.update_deployment_from_event(accepted) is None
    assert [d["command_id"] for d in reg.list_deployments("edge-1")] == ["cmd-b", "cmd-a"]
    assert reg.list_deployments("edge-9") == []
    actions = [a["action"] for a in reg.list_audit(limit=3)]
    assert actions == ["deployment.refused", "deployment.failed", "rollback"]


# --- counters --------------------------------------------------------------------------------------
def test_next_counter_increases_across_instances_and_reopen(tmp_path):
    path = tmp_path / "registry.sqlite"
    a, b = Registry(path), Registry(path)
    values = [a.next_counter("key1"), b.next_counter("key1"), a.next_counter("key1"), b.next_counter("key1")]
    assert values == [1, 2, 3, 4]
    assert a.next_counter("key2") == 1  # per signing key
    a.close()
    b.close()
    with Registry(path) as c:
        assert c.next_counter("key1") == 5


def test_next_counter_is_unique_under_threads_and_processes(tmp_path):
    path = tmp_path / "registry.sqlite"
    reg = Registry(path)
    other = Registry(path)
    got: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def take(r: Registry) -> None:
        barrier.wait()
        mine = [r.next_counter("k") for _ in range(40)]
        assert mine == sorted(mine) and len(set(mine)) == len(mine)  # strictly increasing per caller
        with lock:
            got.extend(mine)

    script = ("import sys; from edgeloop.hub.registry import Registry; r = Registry(sys.argv[1]); "
              "print(' '.join(str(r.next_counter('k')) for _ in range(40)))")
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE,
                              text=True, env=env, cwd=REPO) for _ in range(2)]
    threads = [threading.Thread(target=take, args=(reg if i % 2 else other,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        got.extend(int(x) for x in out.split())
    assert sorted(got) == list(range(1, 8 * 40 + 2 * 40 + 1))
    assert reg.next_counter("k") == 8 * 40 + 2 * 40 + 1
    reg.close()
    other.close()


# --- agents ----------------------------------------------------------------------------------------
def test_agent_state_upsert_and_marking(reg):
    bundle = sha("b")
    row = reg.upsert_agent_state(agent_state(bundle=bundle))
    assert row["status"] == "online" and row["session"] == 1 and row["host"] == "pi-kitchen"
    assert (row["active_model"], row["active_version"], row["active_bundle"]) == ("iris", "1", bundle)
    assert row["state"]["type"] == "agent_state" and row["state"]["active"]["bundle_sha256"] == bundle
    assert row["last_seen"] > 0

    newer = reg.upsert_agent_state(agent_state(session=2, bundle=sha("b2"), version="2"))
    assert newer["session"] == 2 and newer["active_version"] == "2"
    # the last will of session 1 arriving late must not mark the live agent offline
    late = reg.upsert_agent_state(agent_state(status="offline", session=1))
    assert late["status"] == "online" and late["session"] == 2
    restarted = reg.upsert_agent_state(agent_state(session=1, started_at=2000.0))
    assert restarted["session"] == 1 and restarted["active_bundle"] is None

    assert reg.mark_agent("edge-1", "offline")["status"] == "offline"
    assert reg.mark_agent("edge-2", "online")["status"] == "online"  # status before its state
    assert [a["agent_id"] for a in reg.list_agents()] == ["edge-1", "edge-2"]
    # audited: first seen and bundle changes; going offline is not (yet: see the grace period tests)
    actions = [(a["actor"], a["action"]) for a in reversed(reg.list_audit())]
    assert actions == [("agent:edge-1", "agent.joined"), ("agent:edge-1", "agent.active"),
                       ("agent:edge-1", "agent.active"), ("hub", "agent.joined")]
    with pytest.raises(NotFoundError, match="edge-9"):
        reg.get_agent("edge-9")


# --- drift -------------------------------------------------------------------------------------------
def test_drift_reports_are_stored_and_summarised(reg):
    b1 = sha("b1")
    reg.add_drift_report(drift_report(1, {}, bundle=b1))
    stored = reg.add_drift_report(drift_report(2, {"a": 0.35}, bundle=b1))
    assert stored["drifted_features"] == ["a"] and stored["report"]["window"] == 2
    reg.add_drift_report(drift_report(3, {"a": 0.50, "b": 0.25}, bundle=b1))
    reg.add_drift_report(drift_report(2, {"a": 0.35}, bundle=b1))  # MQTT re-delivery: stored once
    reg.add_drift_report(drift_report(1, {"c": 0.9}, agent_id="edge-2", bundle=b1))

    assert len(reg.list_drift_reports("edge-1")) == 3
    summary = reg.drift_summary("edge-1")
    assert len(summary) == 1
    s = summary[0]
    assert (s["agent_id"], s["model"], s["version"], s["bundle_sha256"]) == ("edge-1", "iris", "1", b1)
    assert s["windows"] == 3 and s["rows"] == 300 and s["last_window"] == 3
    assert s["drifted_features"] == {"a": 2, "b": 1}
    assert list(s["drifted_features"]) == ["a", "b"]  # most flagged first
    assert s["drifting_now"] == ["a", "b"]
    assert s["max_psi"] == {"a": 0.50, "b": 0.25, "c": 0.01}

    everyone = reg.drift_summary()
    assert [(x["agent_id"], x["drifted_features"]) for x in everyone] == [
        ("edge-1", {"a": 2, "b": 1}), ("edge-2", {"c": 1})]
    drift_audit = reg.list_audit(action="drift.detected")
    assert len(drift_audit) == 3 and drift_audit[-1]["detail"]["features"] == ["a"]


# --- audit --------------------------------------------------------------------------------------------
def test_audit_rows_are_written_for_changes(reg):
    v = make_version(reg)
    reg.add_bundle(sha("bb"), v["id"], "/bb", 1, "kid")
    row = reg.audit("alice", "note", "iris:1", reason="release candidate")
    assert row["actor"] == "alice" and row["detail"] == {"reason": "release candidate"}
    assert row["at_iso"].endswith("+00:00")
    log = reg.list_audit()
    assert [a["action"] for a in reversed(log)] == [
        "dataset.add", "run.start", "run.succeeded", "model.add", "version.add", "bundle.add", "note"]
    assert log[1]["target"] == sha("bb") and log[1]["detail"]["version_id"] == "iris:1"
    assert len(reg.list_audit(limit=2)) == 2
    assert [a["action"] for a in reg.list_audit(target="iris:1")] == ["note", "version.add"]


def test_registry_is_usable_from_several_threads(reg):
    ds = reg.add_dataset(sha("t"), "t.csv", "file", 1, ["a"])
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            run = reg.start_run(ds["id"], "iris", {"i": i})
            reg.finish_run(run["id"])
            reg.upsert_agent_state(agent_state(f"edge-{i}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r["id"] for r in reg.list_runs()) == sorted(f"run-{n}" for n in range(1, 7))
    assert len(reg.list_agents()) == 6


def test_closed_registry_says_so(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    reg.close()
    with pytest.raises(RegistryError, match="closed"):
        reg.list_agents()


# --- home ---------------------------------------------------------------------------------------------
def test_home_layout_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELOOP_HOME", str(tmp_path / "h"))
    assert default_home() == tmp_path / "h"
    home = Home(default_home()).ensure()
    assert home.registry_path == tmp_path / "h" / "registry.sqlite"
    for d in (home.keys_dir, home.bundles_dir, home.models_dir, home.datasets_dir,
              home.agents_dir, home.runs_dir):
        assert d.is_dir() and d.parent == home.root
    if os.name == "posix":
        assert home.keys_dir.stat().st_mode & 0o777 == 0o700
    monkeypatch.delenv("EDGELOOP_HOME")
    assert default_home().name == "edgeloop"
