"""Training options of the model factory on a real hub home: early stopping decided by the
validation loss (best epoch, stop reason), split ratios and a separate test dataset (split sizes
beside the metrics, few-row warnings), from-scratch children that inherit their parent's
architecture, fine-tuning on a site that lacks a class, and refused data that record no run.

All training here is tiny (tens of rows, a few epochs; quantization off unless the test is about it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeloop.hub.cli import parser as cli
from edgeloop.hub.datasets import SENSOR_LABELS, Dataset, generate_sensor_data, generate_sensor_windows, write_csv
from edgeloop.hub.errors import DataValidationError, TrainingError
from edgeloop.hub.pipeline import build_version
from edgeloop.hub.progress import ProgressEvent
from edgeloop.hub.services import Hub
from edgeloop.hub.training import TrainParams, make_splits, parse_split

TINY = {"epochs": 2, "hidden": [8], "seed": 0}


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys, *argv):
    rc, out, err = run(capsys, *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


def _noise(n: int = 80, seed: int = 0) -> Dataset:
    """Random labels: the training loss falls, the validation loss soon rises (over-fitting)."""
    rng = np.random.default_rng(seed)
    return Dataset([f"f{i}" for i in range(6)], rng.normal(size=(n, 6)), np.arange(n) % 2, ["a", "b"],
                   source="noise")


def _csv(ds: Dataset, path: Path) -> Path:
    return write_csv(ds, path)


# --- early stopping ------------------------------------------------------------------------------
def test_early_stopping_is_decided_by_validation_loss_and_recorded(tmp_path, capsys):
    home = tmp_path / "home"
    events: list[ProgressEvent] = []
    with Hub(home) as hub:
        rec = hub.register_dataset(_noise(), name="noise")
        build = hub.train(rec["id"], "m", {"epochs": 60, "patience": 3, "lr": 0.03, "hidden": [64, 64],
                                           "batch_size": 16}, quantize=False, progress=events.append)
        run_rec = hub.registry.get_run(build.run["id"])
    m = run_rec["metrics"]
    assert m["stop_reason"] == "early_stop" and m["max_epochs"] == 60
    assert m["best_epoch"] < m["epochs_run"] < 60  # stopped on the validation loss, not the ceiling
    history = run_rec["history"]
    assert len(history) == m["epochs_run"]
    best = min(history, key=lambda r: r["val_loss"])
    assert best["epoch"] == m["best_epoch"]  # the best epoch's weights were kept ...
    assert m["val_loss"] == pytest.approx(best["val_loss"], rel=1e-5)  # ... and evaluated
    assert m["n_train"] + m["n_val"] + m["n_test"] == 80 and min(m["n_train"], m["n_val"], m["n_test"]) > 0
    assert any("early_stop" in e.message and f"best epoch {m['best_epoch']}" in e.message for e in events)
    rc, out, _ = run(capsys, "registry", "show", build.id, "--home", home)
    assert rc == 0 and '"stop_reason": "early_stop"' in out and f'"best_epoch": {m["best_epoch"]}' in out


def test_a_cancelled_run_records_why_and_when_it_stopped(tmp_path):
    from edgeloop.hub.errors import CancelledError
    from edgeloop.hub.progress import CancelToken

    token = CancelToken()

    def cancel_after_two(event: ProgressEvent) -> None:
        if event.stage == "train" and event.done == 2:
            token.cancel()

    with Hub(tmp_path / "home") as hub:
        rec = hub.register_dataset(_noise(), name="noise")
        with pytest.raises(CancelledError):
            hub.train(rec["id"], "m", {"epochs": 10, "hidden": [8]}, progress=cancel_after_two, cancel=token)
        (run_rec,) = hub.list_runs()
    assert run_rec["status"] == "cancelled"
    assert (run_rec["metrics"]["stop_reason"], run_rec["metrics"]["epochs_run"]) == ("cancelled", 2)


def test_defaults_are_a_generous_ceiling_and_the_data_pick_the_architecture():
    p = TrainParams()
    assert (p.epochs, p.patience, p.arch) == (200, 20, "auto")
    assert p.resolved((3, 16)).arch == "cnn1d" and p.resolved(None).arch == "mlp"
    assert TrainParams(arch="mlp").resolved((3, 16)).arch == "mlp"  # a chosen architecture stays


def test_windows_train_a_cnn_by_default_and_reaching_the_ceiling_is_named(tmp_path):
    with Hub(tmp_path / "home") as hub:
        rec = hub.register_dataset(generate_sensor_windows(60, 1, channels=2, steps=16), name="win")
        build = hub.train(rec["id"], "w", {"epochs": 2, "channels": [4]}, quantize=False)
    assert build.run["params"]["arch"] == "cnn1d"
    assert build.metrics["stop_reason"] == "max_epochs" and build.metrics["epochs_run"] == 2


# --- split ratios and an explicit test set ----------------------------------------------------------
def test_split_ratios_are_checked_with_clear_errors():
    assert parse_split("0.8,0.2,0") == (0.8, 0.2, 0.0)
    for text, msg in (("0.5,0.5", "three numbers"), ("0.8,x,0.1", "not three comma-separated"),
                      ("0.6,0.3,0.3", "sum to 1.2"), ("0.9,0,0.1", "early stopping needs validation"),
                      ("0,0.5,0.5", "training ratio"), ("1.2,-0.2,0", "negative")):
        with pytest.raises(TrainingError, match=msg):
            parse_split(text)
    with pytest.raises(TrainingError, match="give TRAIN,VAL,0"):
        parse_split("0.7,0.15,0.15", explicit_test=True)
    ds = generate_sensor_data(90, 2)
    s = make_splits(ds, 0, (0.8, 0.2, 0.0))
    assert s.test.size == 0 and s.train.size + s.val.size == 90
    assert set(ds.y[s.val]) == set(ds.y)  # stratified: every class validates


def test_split_option_trains_on_all_rows_but_validation(tmp_path, capsys):
    home = tmp_path / "home"
    data = _csv(generate_sensor_data(100, 2), tmp_path / "train.csv")
    doc = run_json(capsys, "train", "--data", data, "--model", "m", "--epochs", "2", "--hidden", "8",
                   "--split", "0.8,0.2,0", "-q", "--home", home)
    m = doc["metrics"]
    assert (m["n_train"], m["n_val"], m["n_test"]) == (80, 20, 0) and "test_accuracy" not in m
    assert any("no test rows" in w for w in m["warnings"])
    assert doc["quantization"]["decided_on"] == {"split": "val", "rows": 20}  # judged on what exists
    assert doc["run"]["params"]["split"]["fractions"] == [0.8, 0.2, 0.0]
    rc, out, err = run(capsys, "train", "--data", data, "--model", "m", "--epochs", "1", "--split", "0.6,0.3,0.3",
                       "--home", home)
    assert rc == 2 and "sum to 1.2" in err
    with Hub(home) as hub:
        assert len(hub.list_runs()) == 1  # the refused split opened no run


def test_test_data_judges_metrics_and_int8_decision_and_few_rows_are_warned(tmp_path, capsys):
    home = tmp_path / "home"
    train = _csv(generate_sensor_data(100, 2), tmp_path / "train.csv")
    test = _csv(generate_sensor_data(40, 9), tmp_path / "test.csv")
    rc, out, err = run(capsys, "train", "--data", train, "--model", "m", "--epochs", "2", "--hidden", "8",
                       "--test-data", test, "-q", "--home", home)
    assert rc == 0, err
    assert "rows: train 85, val 15, test 40 (test dataset" in out
    with Hub(home) as hub:
        v = hub.version_detail("m:1")
        test_id = hub.import_dataset(test)["id"]
        train_id = hub.import_dataset(train)["id"]
        m, q = v["run"]["metrics"], v["version"]["quantization"]
        assert m["n_test"] == 40 and (m["n_train"], m["n_val"]) == (85, 15)
        assert v["run"]["params"]["test_data"]["dataset_id"] == test_id
        assert q["report"]["n_test"] == 40 and q["decided_on"] == {"split": "test_data", "rows": 40}
        assert "warning" not in q and not m.get("warnings")  # 40 rows: no few-rows warning
        api = hub.train(train_id, "m", TINY, split="0.8,0.2,0", test_data=test_id, quantize=False)
        assert (api.metrics["n_train"], api.metrics["n_val"], api.metrics["n_test"]) == (80, 20, 40)
        with pytest.raises(TrainingError, match="give TRAIN,VAL,0"):
            hub.train(train_id, "m", TINY, split=(0.7, 0.15, 0.15), test_data=test_id)
        small = hub.register_dataset(generate_sensor_data(60, 3), name="small")  # default split: 9 test rows
        few = hub.train(small["id"], "s", TINY)
    assert few.metrics["n_test"] < 30
    assert any(f"rests on {few.metrics['n_test']} test rows" in w for w in few.warnings)
    assert few.quantization["report"]["n_test"] == few.metrics["n_test"] and "warning" in few.quantization


# --- parents: from scratch, fine-tuned, a missing class ------------------------------------------------
def test_from_scratch_child_inherits_the_parents_architecture(tmp_path, capsys):
    home = tmp_path / "home"
    with Hub(home) as hub:
        old = hub.register_dataset(generate_sensor_windows(60, 1, channels=2, steps=16), name="old")
        new = hub.register_dataset(generate_sensor_windows(60, 5, channels=2, steps=16), name="new")
        hub.train(old["id"], "c", {"epochs": 1, "channels": [4], "kernel_size": 3}, quantize=False)
        hub.train(old["id"], "p", {"epochs": 1, "arch": "mlp", "hidden": [8]}, quantize=False)
        cnn_child = hub.train(new["id"], "c", {"epochs": 1}, parent="c:1", fine_tune=False, quantize=False)
        mlp_child = hub.train(new["id"], "p", {"epochs": 1}, parent="p:1", fine_tune=False, quantize=False)
        told = hub.train(new["id"], "p", {"epochs": 1, "arch": "cnn1d", "channels": [4]}, parent="p:1",
                         fine_tune=False, quantize=False)
        tuned = hub.train(new["id"], "c", {"epochs": 1}, parent="c:1", replay_size=20, quantize=False)
    p = cnn_child.run["params"]
    assert (p["arch"], p["channels"], p["kernel_size"]) == ("cnn1d", [4], 3) and cnn_child.continual is None
    assert cnn_child.version["parent_version"] == "c:1"
    assert (mlp_child.run["params"]["arch"], mlp_child.run["params"]["hidden"]) == ("mlp", [8])  # not the default CNN
    assert told.run["params"]["arch"] == "cnn1d"  # told otherwise
    meta = json.loads((tuned.folder / "meta.json").read_text())
    assert tuned.run["params"]["arch"] == meta["arch"] == "cnn1d" and tuned.run["params"]["channels"] == [4]
    rc, out, _ = run(capsys, "registry", "show", tuned.id, "--home", home)
    assert rc == 0 and '"arch": "cnn1d"' in out


def test_fine_tune_on_a_site_missing_a_class_keeps_the_parents_classes(tmp_path, capsys):
    home = tmp_path / "home"
    parent = _csv(generate_sensor_data(150, 1), tmp_path / "plant.csv")
    site = generate_sensor_data(90, 7, shift=0.5)
    keep = site.y != SENSOR_LABELS.index("overheating")
    site_csv = _csv(Dataset(site.feature_names, site.X[keep], site.y[keep], site.labels), tmp_path / "site.csv")
    run_json(capsys, "train", "--data", parent, "--model", "m", "--epochs", "2", "--hidden", "8", "-q",
             "--no-quantize", "--home", home)
    rc, out, err = run(capsys, "train", "--data", site_csv, "--model", "m", "--from", "m:1", "--replay", "30",
                       "--epochs", "2", "--no-quantize", "-q", "--home", home)
    assert rc == 0, err
    assert "warning:" in out and "'overheating'" in out
    with Hub(home) as hub:
        assert hub.registry.get_dataset(hub.import_dataset(site_csv)["id"])["labels"] == ["normal", "worn_bearing"]
        v = hub.version_detail("m:2")
        meta = json.loads((hub.home.models_dir / "m" / "2" / "meta.json").read_text())
    assert meta["labels"] == list(SENSOR_LABELS)  # the child predicts every class the parent knows
    m = v["run"]["metrics"]
    assert m["continual"]["missing_classes"] == ["overheating"]
    assert any("'overheating'" in w for w in m["warnings"])
    assert np.array(m["confusion_matrix"]).shape == (3, 3)
    # the child of the site model continues in the parent's classes, on data that have all three
    grandchild = run_json(capsys, "train", "--data", parent, "--model", "m", "--from", "m:2", "--replay", "30",
                          "--epochs", "1", "--no-quantize", "-q", "--home", home)
    assert grandchild["continual"]["missing_classes"] == [] and grandchild["version"]["parent_version"] == "m:2"


# --- refused data ---------------------------------------------------------------------------------------
def test_refused_data_record_no_run(tmp_path, capsys):
    home = tmp_path / "home"
    bad = _noise(40)
    bad.X[3, 1] = np.nan  # refused by validation before any epoch
    with Hub(home) as hub:
        rec = hub.registry.add_dataset(bad.sha256, "bad", "memory", bad.n_rows, bad.feature_names, bad.labels)
        with pytest.raises(DataValidationError, match="missing_value"):
            build_version(hub.registry, hub.home.models_dir, bad, rec, "m", TrainParams(epochs=1))
        assert hub.list_runs() == []
    train = _csv(generate_sensor_data(60, 2), tmp_path / "train.csv")
    other = generate_sensor_data(40, 3)
    renamed = _csv(Dataset([f"x{i}" for i in range(other.n_features)], other.X, other.y, other.labels),
                   tmp_path / "other.csv")
    rc, out, err = run(capsys, "train", "--data", train, "--model", "m", "--epochs", "1", "--test-data", renamed,
                       "--home", home)
    assert rc == 2 and "other columns than the training data" in err
    assert "nothing was trained" in err and "no run was recorded" in err
    with Hub(home) as hub:
        assert hub.list_runs() == [] and hub.list_versions() == []


# --- progress goes to stderr ------------------------------------------------------------------------------
def test_demo_training_progress_goes_to_stderr_not_its_report(tmp_path, capsys):
    import io

    from edgeloop.hub.demo import Demo, DemoOptions

    report = io.StringIO()
    demo = Demo(DemoOptions(home=tmp_path / "home", epochs=1), out=report)
    try:
        demo._data_and_train()
    finally:
        demo.hub.close()
    err = capsys.readouterr().err
    assert "train [" in err and "epoch 1/1" in err  # the bar, on stderr
    assert "train [" not in report.getvalue() and "registered version" in report.getvalue()
