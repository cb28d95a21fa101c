"""``Hub``'s queries and actions as the CLI and the GUI call them, on real hub homes.

Real SQLite, real PyTorch training (one epoch of the shipped sample data), real signed
bundles; the rollback test runs a real agent process on the test Mosquitto.
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from edgeloop.agent.drift import DriftMonitor
from edgeloop.hub import views
from edgeloop.hub.cli import parser as cli
from edgeloop.hub.datasets import generate_sensor_data, sample_dataset_path, write_csv
from edgeloop.hub.errors import HubError, NotFoundError, TrainingError
from edgeloop.hub.registry import GateError
from edgeloop.hub.services import Hub
from edgeloop.hub.training import TrainParams
from tests.conftest import wait_until


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A hub home with model ``m``: two versions trained for one epoch on the sample data."""
    with Hub(tmp_path_factory.mktemp("hub-api") / "home", actor="tester") as h:
        ds = h.import_dataset(sample_dataset_path(), name="sensors")
        h.train(ds["id"], "m", {"epochs": 1}, quantize=False)
        h.train(ds["id"], "m", {"epochs": 1, "hidden": [8], "seed": 1}, quantize=False)
        yield h


# --- training parameters: one conversion ----------------------------------------------------------
def test_train_params_is_one_strict_conversion(tmp_path):
    assert Hub.train_params(None) == TrainParams()
    given = TrainParams(epochs=2)
    assert Hub.train_params(given) is given
    assert Hub.train_params({"epochs": 3, "hidden": (8, 4)}) == TrainParams(epochs=3, hidden=(8, 4))
    with pytest.raises(TrainingError, match="unknown key 'learning_rate' \\(did you mean 'lr'\\?\\)"):
        Hub.train_params({"learning_rate": 0.1})
    with pytest.raises(TrainingError, match="epochs must be an integer, got '3'"):
        Hub.train_params({"epochs": "3"})
    with pytest.raises(HubError, match="must be TrainParams or a mapping, not list"):
        Hub.train_params([("epochs", 3)])  # a list of pairs is not a mapping

    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps({"epochs": 2, "lr": 0.01, "hidden": [16]}))
    merged = Hub.train_params({"epochs": 5}, run_file=run_file)  # given values override the file's
    assert (merged.epochs, merged.lr, merged.hidden) == (5, 0.01, (16,))
    run_file.write_text(json.dumps({"epoch": 2}))
    with pytest.raises(TrainingError, match=f"run file {run_file}: unknown key 'epoch'"):
        Hub.train_params({}, run_file=run_file)


def test_train_with_a_mapping_records_those_params(hub):
    runs = {r["id"]: r for r in hub.list_runs("m")}
    by_version = {v["id"]: runs[v["run_id"]]["params"] for v in hub.list_versions("m")}
    assert by_version["m:1"]["epochs"] == 1 and by_version["m:1"]["hidden"] == [64, 32]
    assert by_version["m:2"]["hidden"] == [8] and by_version["m:2"]["seed"] == 1


# --- datasets -----------------------------------------------------------------------------------------
def test_dataset_detail_joins_runs_and_versions(hub):
    (ds,) = hub.list_datasets()
    detail = hub.dataset_detail(ds["sha256"][:12])
    assert detail["dataset"] == ds
    assert [v["id"] for v in detail["versions"]] == ["m:1", "m:2"]
    assert {r["id"] for r in detail["runs"]} == {v["run_id"] for v in detail["versions"]}
    assert sum(detail["summary"]["class_counts"].values()) == ds["rows"] > 0
    assert hub.list_runs(dataset=ds["id"]) == detail["runs"] == hub.list_runs("m")

    table = views.dataset_table(hub.list_datasets(), hub.list_runs())
    assert table.header == views.DATASET_COLUMNS and table.keys == [ds["id"]]
    assert dict(zip(table.header, table.rows[0], strict=True))["runs"] == "2"


def test_dataset_detail_shows_the_record_when_the_copy_is_gone(tmp_path):
    csv_path = write_csv(generate_sensor_data(120, 3), tmp_path / "small.csv")
    with Hub(tmp_path / "home", actor="tester") as h:
        rec = h.import_dataset(csv_path)
        (h.home.datasets_dir / f"{rec['sha256'][:16]}.csv").unlink()  # the hub's copy of the data
        detail = h.dataset_detail(rec["id"])
        assert detail["dataset"]["id"] == rec["id"] and detail["runs"] == [] and detail["versions"] == []
        assert "copy of dataset" in detail["summary"]["error"] and "missing" in detail["summary"]["error"]
        with pytest.raises(NotFoundError):
            h.dataset_detail("ds-000000000000")


# --- versions, bundles -------------------------------------------------------------------------------
def test_version_detail_and_the_version_table(hub):
    detail = hub.version_detail("m:1")
    v = detail["version"]
    assert v["id"] == "m:1" and detail["run"]["id"] == v["run_id"] and detail["run"]["status"] == "succeeded"
    assert detail["gate"]["version"] == "m:1" and detail["gate"]["has_gate"] is False
    bundle = hub.build_bundle("m:1")
    assert [b["sha256"] for b in hub.version_detail("m:1")["bundles"]] == [bundle.sha256]

    table = views.version_table(hub.list_versions(), hub.list_bundles())
    rows = dict(zip(table.keys, table.rows, strict=True))
    assert rows["m:1"][table.header.index("bundle")] == bundle.sha256[:12]
    assert rows["m:2"][table.header.index("bundle")] == "-"


# --- aliases, gates, audit ---------------------------------------------------------------------------
def test_alias_moves_report_what_changed_and_gates_are_reported_per_version(hub):
    first = hub.set_alias("m", "production", "m:1", reason="first release")
    assert (first["version_id"], first["previous_version_id"], first["moved"], first["override_gate"]) == (
        "m:1", None, True, False)
    again = hub.set_alias("m", "production", "1")
    assert (again["previous_version_id"], again["moved"], again["override_gate"]) == ("m:1", False, False)

    hub.set_gate("m", {"min": {"test_accuracy": 1.01}})  # no version can reach it
    try:
        report = hub.gate_report("m")
        assert report["has_gate"] is True and report["gate"]["min"] == {"test_accuracy": 1.01}
        assert [(c["version"], c["passed"]) for c in report["versions"]] == [("m:1", False), ("m:2", False)]
        assert report["task"] == "classification"
        assert views.gate_text(report["versions"][0]).startswith("FAILED (test_accuracy ")
        with pytest.raises(GateError):
            hub.set_alias("m", "production", "m:2")
        moved = hub.set_alias("m", "production", "m:2", reason="field trial", override_gate=True)
        assert (moved["previous_version_id"], moved["moved"], moved["override_gate"]) == ("m:1", True, True)
    finally:
        hub.set_gate("m", None)
    assert hub.gate_report("m")["has_gate"] is False

    (override,) = hub.list_audit(action="gate.override", target="m:2")
    assert override["actor"] == "tester" and override["detail"]["reason"] == "field trial"
    moves = hub.list_audit(action="alias.set", target="m@production")
    assert [(m["detail"]["previous"], m["detail"]["version"]) for m in moves] == [("m:1", "m:2"), (None, "m:1")]
    table = views.audit_table(moves)
    assert [r[table.header.index("detail")] for r in table.rows] == ["m:1 -> m:2 (field trial)",
                                                                      "- -> m:1 (first release)"]
    noted = hub.audit("note.test", "m:1", why="checking the audit method")
    assert hub.list_audit(limit=1)[0] == noted and noted["actor"] == "tester"


# --- drift views --------------------------------------------------------------------------------------
def test_drift_summary_and_reports_of_windows_an_agent_computed(hub):
    bundle = hub.build_bundle("m:2")
    reference = bundle.manifest.drift
    assert reference is not None
    monitor = DriftMonitor(reference, agent_id="edge-drift", model="m", version="2", bundle_sha256=bundle.sha256)
    shifted = generate_sensor_data(2 * reference.window, seed=11, shift=2.0)
    reports = monitor.observe(shifted.X)
    assert len(reports) == 2
    for r in reports:  # what the fleet does with each report it receives
        hub.registry.add_drift_report(r)

    (summary,) = hub.drift_summary("edge-drift")
    assert (summary["model"], summary["version"], summary["windows"], summary["rows"]) == (
        "m", "2", 2, 2 * reference.window)
    assert "temperature_c" in summary["drifted_features"] and summary["drifting_now"]
    assert [r["window"] for r in hub.drift_reports("edge-drift")] == [2, 1]
    assert [r["window"] for r in hub.drift_reports("edge-drift", limit=1)] == [2]
    assert hub.drift_reports("edge-drift", model="other") == [] and hub.drift_summary("nobody") == []

    lines = views.drift_lines([summary])
    assert lines[0].startswith(f"edge-drift  m:2  2 windows, {2 * reference.window} rows, DRIFTING (last window ")
    temperature = next(line for line in lines if line.strip().startswith("temperature_c"))
    assert f"flagged in {summary['drifted_features']['temperature_c']} window(s)" in temperature


# --- keys -----------------------------------------------------------------------------------------------
def test_key_info_names_the_key_and_its_files(tmp_path):
    with Hub(tmp_path / "home") as h:
        info = h.key_info()
        assert info["key_id"] == h.key.keyid
        assert open(info["public"], "rb").read() == h.key.public_pem()
        if os.name == "posix":
            assert stat.S_IMODE(os.stat(info["private"]).st_mode) == 0o600


# --- rollback on a real agent --------------------------------------------------------------------------
@pytest.mark.broker
def test_rollback_returns_an_agent_to_a_bundle_it_holds_and_is_audited(capsys, trained, fleet, online_agent,
                                                                       mosquitto):
    hub = trained.hub
    aid, _ = online_agent()
    for bundle in (trained.b1, trained.b2):
        (deployed,) = hub.deploy(fleet, [aid], bundle.sha256, timeout=30)
        assert deployed["ok"], deployed

    def serving(sha: str) -> bool:
        active = fleet.agents()[aid].active
        return active is not None and active.bundle_sha256 == sha

    assert wait_until(lambda: serving(trained.b2.sha256))

    # over a broker URL, as the CLI passes it: the hub connects a fleet of its own
    (back,) = hub.rollback(mosquitto.address.url, [aid], trained.b1.sha256[:12], reason="bad batch", timeout=30)
    assert (back["agent"], back["ok"], back["code"]) == (aid, True, "ok"), back
    assert (back["version"], back["bundle_sha256"]) == (trained.v1.id, trained.b1.sha256)
    assert wait_until(lambda: serving(trained.b1.sha256))
    request = hub.list_audit(action="rollback.request", target=trained.v1.id)[0]
    assert request["detail"] == {"bundle_sha256": trained.b1.sha256, "reason": "bad batch", "results": {aid: "ok"}}
    rollbacks = [d for d in hub.registry.list_deployments(aid) if d["kind"] == "rollback"]
    assert [(d["target_sha256"], d["status"]) for d in rollbacks] == [(trained.b1.sha256, "installed")]

    # on a started fleet, one result per agent: an agent nobody runs times out
    ghost = f"{aid}-ghost"
    results = hub.rollback(fleet, [aid, ghost], trained.b2.sha256, timeout=2)
    assert [(r["agent"], r["ok"], r["code"]) for r in results] == [(aid, True, "ok"), (ghost, False, "timeout")]
    assert wait_until(lambda: serving(trained.b2.sha256))

    # a bundle the registry does not know is refused before anything is sent
    with pytest.raises(NotFoundError):
        hub.rollback(fleet, [aid], "ab" * 32)
    assert len([d for d in hub.registry.list_deployments(aid) if d["kind"] == "rollback"]) == 2

    # the CLI's rollback goes through Hub.rollback (its audit row carries the reason)
    capsys.readouterr()
    rc = cli.main(["rollback", "--to", trained.b1.sha256[:12], "--agent", aid, "--broker", mosquitto.address.url,
                   "--reason", "from the cli", "--timeout", "30", "--home", str(hub.home.root), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    (printed,) = json.loads(out)
    assert (printed["agent"], printed["ok"], printed["bundle_sha256"]) == (aid, True, trained.b1.sha256)
    assert hub.list_audit(action="rollback.request", limit=1)[0]["detail"]["reason"] == "from the cli"
    assert wait_until(lambda: serving(trained.b1.sha256))
