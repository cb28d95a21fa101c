"""Model factory features of the registry on real SQLite files: aliases with history,
evaluation gates (and their recorded overrides), compare, two-way lineage, and the migration of
a frozen schema-1 registry (tests/data/registry_schema1.sql) to the newest schema."""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from pathlib import Path

import pytest

from edgeloop.hub.errors import NotFoundError, RegistryError
from edgeloop.hub.registry import MIGRATIONS, SCHEMA_VERSION, GateError, Registry, normalize_gate
from edgeloop.hub.services import Hub


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def reg(tmp_path):
    with Registry(tmp_path / "registry.sqlite") as r:
        yield r


def make_version(reg: Registry, *, data="sensors.csv", model="iris", metrics=None, params=None,
                 parent=None, quantization=None, chosen="fp32") -> dict:
    """dataset -> run -> version, as the training pipeline records them."""
    ds = reg.add_dataset(sha(data), data, f"file:{data}", 150, ["a", "b"], ["x", "y"])
    run = reg.start_run(ds["id"], model, params or {"epochs": 5, "split": {"seed": 0, "counts": {"test": 30}}},
                        code_version="abc123", library_versions={"torch": "2.13.0"})
    metrics = {"test_accuracy": 0.9, "confusion_matrix": [[1, 0], [0, 1]]} if metrics is None else metrics
    reg.finish_run(run["id"], metrics=metrics, history=[{"epoch": 1, "train_loss": 0.5}])
    return reg.add_version(model, run["id"], sha(f"onnx-{run['id']}"), task="classification",
                           int8_sha256=sha(f"int8-{run['id']}"), chosen=chosen,
                           quantization=quantization or {"reason": "test", "report": {}}, metrics=metrics,
                           parent_version=parent)


# --- aliases -------------------------------------------------------------------------------------
def test_alias_moves_keep_their_history_and_resolve_everywhere(reg):
    v1, v2 = make_version(reg), make_version(reg, data="more.csv")
    first = reg.set_alias("iris", "production", "iris:1", actor="alice", reason="first release")
    assert (first["version_id"], first["updated_by"], first["reason"]) == ("iris:1", "alice", "first release")
    assert reg.resolve("iris@production") == "iris:1"

    moved = reg.set_alias("iris", "production", "2", actor="bob", reason="better on new data")  # bare number
    assert moved["version_id"] == "iris:2"
    assert reg.set_alias("iris", "production", "iris:2", actor="carol")["updated_by"] == "bob"  # no move, no entry
    reg.set_alias("iris", "staging", "@production", actor="bob")  # copy another alias

    history = reg.alias_history("iris", "production")
    assert [(h["previous_version_id"], h["version_id"], h["actor"], h["reason"]) for h in history] == [
        ("iris:1", "iris:2", "bob", "better on new data"), (None, "iris:1", "alice", "first release")]
    assert history[0]["at"] >= history[1]["at"] and history[0]["at_iso"].endswith("+00:00")
    assert not any(h["override_gate"] for h in history)
    assert [h["alias"] for h in reg.alias_history("iris")] == ["staging", "production", "production"]

    # "model@alias" works wherever a version ref does
    assert reg.get_version("iris@production")["id"] == v2["id"]
    assert reg.get_version("iris:2")["aliases"] == ["production", "staging"]
    assert reg.get_version("iris@latest")["id"] == "iris:2"
    assert [v["aliases"] for v in reg.list_versions("iris")] == [[], ["production", "staging"]]
    bundle = reg.add_bundle(sha("b"), "iris@production", "/b.elb", 10, "k")
    assert bundle["version_id"] == "iris:2" and reg.list_bundles("iris@staging")[0]["sha256"] == sha("b")
    assert reg.lineage("iris@production")["versions"][0]["id"] == "iris:2"
    child = make_version(reg, data="third.csv", parent="iris@production")
    assert child["parent_version"] == "iris:2"
    assert reg.get_version("iris:1")["split"] == {"seed": 0, "counts": {"test": 30}}  # the run's split

    removed = reg.remove_alias("iris", "staging", actor="bob", reason="soak test over")
    assert removed["version_id"] == "iris:2"
    assert reg.alias_history("iris", "staging")[0]["version_id"] is None
    with pytest.raises(NotFoundError, match=r"no alias 'staging' \(its aliases: production\)"):
        reg.get_version("iris@staging")
    actions = [a["action"] for a in reg.list_audit(limit=20) if a["action"].startswith("alias.")]
    assert actions == ["alias.remove", "alias.set", "alias.set", "alias.set"]
    assert v1["id"] == "iris:1"


def test_alias_refuses_bad_names_and_versions_of_other_models(reg):
    make_version(reg)
    make_version(reg, model="wine")
    with pytest.raises(RegistryError, match="of 'wine', not of 'iris'"):
        reg.set_alias("iris", "production", "wine:1")
    with pytest.raises(RegistryError, match="reserved"):
        reg.set_alias("iris", "latest", "iris:1")
    with pytest.raises(RegistryError, match="not allowed"):
        reg.set_alias("iris", "prod uction", "iris:1")
    with pytest.raises(NotFoundError, match="has no version '7'"):
        reg.set_alias("iris", "production", "7")
    with pytest.raises(NotFoundError, match="no model named 'nope'"):
        reg.set_alias("nope", "production", "iris:1")
    with pytest.raises(NotFoundError, match="edgeloop registry alias iris canary VERSION"):
        reg.get_alias("iris", "canary")
    assert reg.list_aliases() == [] and reg.alias_history("iris") == []


# --- gates ------------------------------------------------------------------------------------------
def test_gate_blocks_alias_until_overridden_with_a_recorded_reason(reg):
    weak = make_version(reg, metrics={"test_accuracy": 0.82, "test_macro_f1": 0.9, "test_loss": 0.7})
    strong = make_version(reg, data="b.csv", metrics={"test_accuracy": 0.95, "test_macro_f1": 0.93,
                                                      "test_loss": 0.2})
    model = reg.set_gate("iris", {"test_accuracy": 0.9, "test_macro_f1": 0.85, "max": {"test_loss": 0.5}},
                         actor="lead")
    assert model["gate"] == {"min": {"test_accuracy": 0.9, "test_macro_f1": 0.85}, "max": {"test_loss": 0.5}}

    check = reg.check_gate(weak["id"])
    assert not check["passed"] and check["has_gate"]
    by_metric = {c["metric"]: c for c in check["checks"]}
    assert by_metric["test_accuracy"] == {"metric": "test_accuracy", "bound": "min", "threshold": 0.9,
                                          "value": 0.82, "passed": False, "problem": "below the minimum",
                                          "rows": None}  # the metrics say no test-split size
    assert by_metric["test_macro_f1"]["passed"]
    assert by_metric["test_loss"]["problem"] == "above the maximum"
    assert [f["metric"] for f in check["failures"]] == ["test_accuracy", "test_loss"]
    assert reg.check_gate(strong["id"])["passed"]

    with pytest.raises(GateError) as err:
        reg.set_alias("iris", "production", weak["id"], actor="dev")
    text = str(err.value)
    assert "iris:1 does not pass the evaluation gate of model iris" in text
    assert "test_accuracy = 0.82, minimum 0.9" in text and "test_loss = 0.7, maximum 0.5" in text
    assert "--override-gate" in text and "reason" in text
    assert err.value.code == "gate_failed" and isinstance(err.value, RegistryError)
    assert [f["metric"] for f in err.value.failures] == ["test_accuracy", "test_loss"]
    assert reg.list_aliases("iris") == [] and reg.alias_history("iris") == []  # nothing half-written

    with pytest.raises(RegistryError, match="needs a reason"):
        reg.set_alias("iris", "production", weak["id"], actor="dev", override_gate=True)
    row = reg.set_alias("iris", "production", weak["id"], actor="dev", override_gate=True,
                        reason="customer demo, accepted by QA")
    assert row["version_id"] == "iris:1"
    entry = reg.alias_history("iris", "production")[0]
    assert entry["override_gate"] is True and entry["reason"] == "customer demo, accepted by QA"
    assert [f["metric"] for f in entry["gate_check"]["failures"]] == ["test_accuracy", "test_loss"]
    override = reg.list_audit(action="gate.override")
    assert len(override) == 1 and override[0]["actor"] == "dev" and override[0]["target"] == "iris:1"
    assert override[0]["detail"]["reason"] == "customer demo, accepted by QA"
    assert override[0]["detail"]["purpose"] == "alias iris@production"
    assert {f["metric"] for f in override[0]["detail"]["failures"]} == {"test_accuracy", "test_loss"}

    reg.set_alias("iris", "production", strong["id"], actor="dev")  # passes: no override needed
    assert reg.alias_history("iris", "production")[0]["override_gate"] is False
    assert len(reg.list_audit(action="gate.override")) == 1


def test_gate_format_missing_metrics_and_clearing(reg):
    v = make_version(reg, metrics={"test_rmse": 2.5, "continual": {"forgetting": 0.04}})
    reg.set_gate("iris", {"max": {"test_rmse": 3.0, "continual.forgetting": 0.02}, "min": {"test_r2": 0.8}})
    check = reg.check_gate(v["id"])
    assert {c["metric"]: (c["passed"], c["value"]) for c in check["checks"]} == {
        "test_rmse": (True, 2.5), "continual.forgetting": (False, 0.04), "test_r2": (False, None)}
    assert "missing" in {c["metric"]: c for c in check["checks"]}["test_r2"]["problem"]

    for bad, message in (({"test_accuracy": "high"}, "not a finite number"),
                         ({"min": {"a": 0.9}, "max": {"a": 0.5}}, "above maximum"),
                         ({"max": 3.0}, "must map metric names"),
                         ([0.9], "must be a mapping")):
        with pytest.raises(RegistryError, match=message) as err:
            reg.set_gate("iris", bad)
        assert "A gate looks like" in str(err.value) or "mapping like" in str(err.value)
    assert normalize_gate({"acc": 1}) == {"min": {"acc": 1.0}, "max": {}}

    assert reg.set_gate("iris", None)["gate"] is None
    assert reg.get_gate("iris") == {"min": {}, "max": {}}
    assert reg.check_gate("iris:1") | {"checks": None} == {
        "version": "iris:1", "model": "iris", "gate": {"min": {}, "max": {}}, "has_gate": False,
        "passed": True, "checks": None, "failures": [], "warnings": []}
    assert [a["action"] for a in reg.list_audit(action="model.gate")] == ["model.gate", "model.gate"]


def test_hub_check_deployable_raises_or_audits_the_override(tmp_path):
    with Hub(tmp_path / "home", actor="operator") as hub:
        make_version(hub.registry, metrics={"test_accuracy": 0.7})
        assert hub.check_deployable("iris:1")["passed"]  # no gate yet
        hub.set_gate("iris", {"test_accuracy": 0.9})
        with pytest.raises(GateError, match="cannot be deployed") as err:
            hub.check_deployable("iris:1")
        assert "--override-gate WHY" in str(err.value)
        assert hub.registry.list_audit(action="gate.override") == []
        ok = hub.check_deployable("iris:1", override_reason="rollback target during incident 42")
        assert ok["overridden"] and not ok["passed"] and ok["reason"] == "rollback target during incident 42"
        (row,) = hub.registry.list_audit(action="gate.override")
        assert (row["actor"], row["target"], row["detail"]["purpose"]) == ("operator", "iris:1", "deploy")
        assert row["detail"]["failures"][0]["value"] == 0.7


# --- compare ------------------------------------------------------------------------------------------
def test_compare_puts_metrics_params_and_quantization_side_by_side(reg):
    a = make_version(reg, metrics={"test_accuracy": 0.90, "test_loss": 0.3, "val_accuracy": 0.91},
                     params={"epochs": 5, "hidden": [64, 32], "split": {"seed": 0}},
                     quantization={"reason": "int8 within budget", "budget_points": 1.0,
                                   "report": {"accuracy_delta_points": -0.2, "int8_bytes": 900}}, chosen="int8")
    b = make_version(reg, data="b.csv", metrics={"test_accuracy": 0.95, "test_loss": 0.2, "test_macro_f1": 0.9},
                     params={"epochs": 8, "hidden": [64, 32], "split": {"seed": 1}, "arch": "mlp"},
                     quantization={"reason": "int8 slower", "report": {"accuracy_delta_points": 0.0}})
    c = reg.compare(a["id"], "iris@latest")
    assert (c["a"]["id"], c["b"]["id"]) == ("iris:1", "iris:2") and c["same_dataset"] is False
    assert c["metrics"]["test_accuracy"]["a"] == 0.90 and c["metrics"]["test_accuracy"]["b"] == 0.95
    assert c["metrics"]["test_accuracy"]["delta"] == pytest.approx(0.05)
    assert c["metrics"]["test_loss"]["delta"] == pytest.approx(-0.1)
    assert c["metrics"]["test_macro_f1"] == {"a": None, "b": 0.9, "delta": None}  # union of metrics
    assert c["metrics"]["val_accuracy"] == {"a": 0.91, "b": None, "delta": None}
    assert "confusion_matrix" not in c["metrics"]
    assert c["params"]["changed"] == {"epochs": {"a": 5, "b": 8}, "split.seed": {"a": 0, "b": 1}}
    assert c["params"]["same"] == {"hidden": [64, 32]} and c["params"]["only_b"] == {"arch": "mlp"}
    assert c["quantization"]["a"] == {"chosen": "int8", "reason": "int8 within budget", "budget_points": 1.0,
                                      "report": {"accuracy_delta_points": -0.2, "int8_bytes": 900}}
    assert c["quantization"]["b"]["chosen"] == "fp32"
    assert c["gate"]["a"]["passed"] and not c["gate"]["a"]["has_gate"]
    assert b["id"] == "iris:2"


# --- lineage ----------------------------------------------------------------------------------------
def test_lineage_walks_back_from_a_deployment_to_the_dataset_sha(reg):
    v = make_version(reg, data="field-data.csv")
    bundle = reg.add_bundle(sha("bundle"), v["id"], "/b.elb", 100, "key1")
    command_id = uuid.uuid4().hex  # the fleet's command ids are 32 hex digits, like a sha prefix
    dep = reg.add_deployment(bundle["sha256"], "edge-1", "deploy", command_id, 1)
    reg.add_deployment(bundle["sha256"], "edge-2", "deploy", "cmd-other", 2)

    for ref in (dep["id"], command_id):
        lin = reg.lineage(ref)
        assert lin["kind"] == "deployment" and lin["deployment"]["id"] == dep["id"]
        assert lin["dataset"]["sha256"] == sha("field-data.csv")
        assert lin["run"]["id"] == v["run_id"] and [x["id"] for x in lin["versions"]] == ["iris:1"]
        assert [b["sha256"] for b in lin["versions"][0]["bundles"]] == [bundle["sha256"]]
        assert {d["command_id"] for d in lin["deployments"]} == {command_id, "cmd-other"}

    foreign = reg.add_deployment(sha("elsewhere"), "edge-1", "rollback", "cmd-rb", 3)
    with pytest.raises(NotFoundError, match="not registered in this hub"):
        reg.lineage(foreign["id"])


def test_lineage_from_a_dataset_and_through_parent_versions(reg):
    v1 = make_version(reg, data="2024.csv")
    v2 = make_version(reg, data="2025.csv", parent=v1["id"])  # continual learning on new data
    v3 = make_version(reg, data="2025.csv", parent=v2["id"])
    failed_run = reg.start_run(sha("2025.csv")[:12], "iris", {"epochs": 1})
    reg.finish_run(failed_run["id"], "failed")

    lin = reg.lineage(sha("2025.csv")[:10])  # a dataset sha prefix
    assert lin["kind"] == "dataset" and lin["dataset"]["sha256"] == sha("2025.csv")
    assert [r["id"] for r in lin["runs"]] == [v2["run_id"], v3["run_id"], failed_run["id"]]
    assert [x["id"] for x in lin["versions"]] == ["iris:2", "iris:3"]
    assert lin["run"]["id"] == failed_run["id"]  # the newest run
    assert reg.lineage(lin["dataset"]["id"])["kind"] == "dataset"  # ds-<sha12> too

    back = reg.lineage("iris:3")["versions"][0]["ancestors"]
    assert [(a["id"], a["dataset_sha256"]) for a in back] == [("iris:2", sha("2025.csv")),
                                                              ("iris:1", sha("2024.csv"))]
    forward = reg.lineage("iris:1")["versions"][0]["descendants"]
    assert [(d["id"], d["parent_version"]) for d in forward] == [("iris:2", "iris:1"), ("iris:3", "iris:2")]
    old = reg.lineage(sha("2024.csv")[:12])
    assert old["versions"][0]["descendants"][0]["dataset_sha256"] == sha("2025.csv")
    with pytest.raises(NotFoundError, match="dep-12"):
        reg.lineage("nothing-like-this")


# --- schema migration ---------------------------------------------------------------------------------
SCHEMA1_DUMP = Path(__file__).parent / "data" / "registry_schema1.sql"


def frozen_schema1(path: Path) -> Path:
    """A registry file at ``path`` as edgeloop 0.1 left it (tests/data/registry_schema1.sql)."""
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA1_DUMP.read_text())
    conn.close()
    return path


def contents(path: Path) -> dict[str, tuple[list[str], list[tuple]]]:
    """Every table's column names and rows (in rowid order)."""
    conn = sqlite3.connect(path)
    out = {}
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
        columns = [c[1] for c in conn.execute(f'PRAGMA table_info("{table}")')]
        out[table] = (columns, conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid').fetchall())
    conn.close()
    return out


def rows_of(path: Path, table: str, columns: list[str]) -> list[tuple]:
    conn = sqlite3.connect(path)
    names = ", ".join(f'"{c}"' for c in columns)
    rows = conn.execute(f'SELECT {names} FROM "{table}" ORDER BY rowid').fetchall()
    conn.close()
    return rows


def schema(path: Path) -> dict[str, dict]:
    """Tables with their columns, indexes and foreign keys, as SQLite reports them."""
    conn = sqlite3.connect(path)
    out = {}
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
        indexes = {}
        for _, name, unique, origin, partial in conn.execute(f'PRAGMA index_list("{table}")'):
            columns = [c[2] for c in conn.execute(f'PRAGMA index_info("{name}")')]
            indexes[name] = (unique, origin, partial, columns)
        out[table] = {
            "columns": [tuple(c[1:]) for c in conn.execute(f'PRAGMA table_info("{table}")')],
            "indexes": indexes,
            "foreign_keys": sorted(tuple(f[2:]) for f in conn.execute(f'PRAGMA foreign_key_list("{table}")')),
        }
    conn.close()
    return out


def test_a_frozen_schema_1_registry_is_migrated_to_the_newest_keeping_its_data(tmp_path):
    path = frozen_schema1(tmp_path / "registry.sqlite")
    before = contents(path)
    assert before["meta"] == (["key", "value"], [("schema_version", "1")])
    assert "aliases" not in before and "gate" not in before["models"][0]
    assert len(before["audit"][1]) == 23 and len(before["versions"][1]) == 2  # the dump holds real rows

    with Registry(path) as reg:
        assert reg.schema_version == SCHEMA_VERSION == len(MIGRATIONS) == 10
    for table, (columns, rows) in before.items():  # every schema-1 row, unchanged, but for the version
        if table != "meta":
            assert rows_of(path, table, columns) == rows, table
    assert rows_of(path, "meta", ["key", "value"]) == [("schema_version", "10")]
    assert rows_of(path, "models", ["name", "gate"]) == [("iris", None)]
    after = schema(path)
    assert {"aliases", "alias_history", "listeners", "evaluations", "agent_keys"} <= set(after)
    # schema 3: the old agent row is undecided (listed), first seen when it was last seen
    assert rows_of(path, "agents", ["member", "down", "offline_since"]) == [(None, 0, None)] * 2
    assert rows_of(path, "agents", ["first_seen"]) == rows_of(path, "agents", ["last_seen"])
    assert "idx_versions_parent_version" in after["versions"]["indexes"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()

    with Registry(path) as reg:  # reopening migrates nothing; the old rows read like new ones
        latest = reg.get_version("iris")
        assert (latest["id"], latest["parent_version"], latest["chosen"]) == ("iris:2", "iris:1", "fp32")
        assert reg.get_run("run-1")["params"]["hidden"] == [32, 16] and reg.get_run("run-3")["status"] == "failed"
        assert reg.get_dataset("iris.csv")["labels"] == ["setosa", "versicolor", "virginica"]
        assert [d["status"] for d in reg.list_deployments("pi-kitchen")] == ["pending", "failed", "installed"]
        lin = reg.lineage("dep-1")
        assert (lin["dataset"]["name"], lin["versions"][0]["id"]) == ("iris.csv", "iris:1")
        assert [d["id"] for d in reg.lineage("iris:1")["versions"][0]["descendants"]] == ["iris:2"]
        assert reg.drift_summary("pi-kitchen")[0]["drifted_features"] == {"petal_width": 1}
        assert reg.get_agent("pi-kitchen")["state"]["active"]["version"] == "1"
        assert [a["agent_id"] for a in reg.list_agents()] == ["pi-garage", "pi-kitchen"]
        assert reg.next_counter("5f1c2a9e0b7d4c38") == 4  # the signing counter carries on
        reg.set_gate("iris", {"accuracy": 0.96})  # gates read the metrics schema 1 stored
        assert [c["value"] for c in reg.check_gate("iris:2")["failures"]] == [0.9515]
        reg.set_alias("iris", "production", "1", actor="ops", reason="migrated")
        assert reg.resolve("iris@production") == "iris:1"
        assert reg.alias_history("iris", "production")[0]["reason"] == "migrated"
        assert [a["action"] for a in reg.list_audit(limit=3)] == ["alias.set", "model.gate", "note"]


def test_migrating_the_frozen_schema_1_file_gives_the_schema_of_a_new_registry(tmp_path):
    """Released migrations stay append-only: an edit to migration 1 shows up here as a
    difference between an old registry brought up to date and a new one."""
    old = frozen_schema1(tmp_path / "old.sqlite")
    Registry(old).close()
    new = tmp_path / "new.sqlite"
    Registry(new).close()
    expected = schema(new)
    assert set(expected) == {"meta", "datasets", "runs", "models", "versions", "bundles", "deployments",
                             "agents", "drift_reports", "audit", "counters", "aliases", "alias_history",
                             "listeners", "evaluations", "agent_keys", "captures",
                             "shadow_reports", "preflights", "rollouts", "rollout_audit", "rollout_requests"}
    assert sum(len(t["indexes"]) for t in expected.values()) >= 15
    assert schema(old) == expected
