"""Evaluation on your own test set (``edgeloop eval``/``predict``, ``Hub.evaluate``/``predict``) and
gates on its metrics.

Real parts throughout: models trained with torch on scikit-learn's bundled datasets through the
hub, their shipped ONNX files run by onnxruntime, the registry in a real SQLite file. The train and
held-out files are written separately (a fixed TEST split, as public benchmarks come), and the
scores are checked against scikit-learn's metrics on the predictions ``predict`` wrote.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from edgeloop.hub.cli import parser as cli
from edgeloop.hub.datasets import load_dataset
from edgeloop.hub.errors import DataValidationError, RegistryError
from edgeloop.hub.evaluation import close_match, parse_eval_metric, score_classification, score_regression
from edgeloop.hub.registry import GateError, Registry, UnknownMetricError
from edgeloop.hub.services import Hub
from tests.test_registry_factory import make_version

sk = pytest.importorskip("sklearn.datasets")
skm = pytest.importorskip("sklearn.metrics")


def write_table(path: Path, names, X, labels, label_column: str | None = "label") -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*names, *([label_column] if label_column else [])])
        for row, lab in zip(X, labels, strict=True):
            w.writerow([*(repr(float(v)) for v in row), *([lab] if label_column else [])])
    return path


def split_files(tmp: Path, name: str, test_share: float = 0.33, seed: int = 0):
    """A bundled scikit-learn set as a training CSV and a separate held-out CSV (class names as labels).

    Columns constant in the training rows are left out of the training file (nothing to learn) but
    kept in the held-out file, which the model must then ignore."""
    d = getattr(sk, f"load_{name}")()
    X, y = np.asarray(d.data, dtype=np.float64), np.asarray(d.target)
    names = [str(n) for n in d.feature_names] if getattr(d, "feature_names", None) is not None else \
        [f"f{j}" for j in range(X.shape[1])]
    labels = np.array([str(d.target_names[c]) for c in y])
    order = np.random.default_rng(seed).permutation(len(X))
    cut = int(len(X) * (1 - test_share))
    tr, te = order[:cut], order[cut:]
    keep = np.ptp(X[tr], axis=0) > 0
    train = write_table(tmp / f"{name}-train.csv", [n for n, k in zip(names, keep, strict=True) if k],
                        X[tr][:, keep], labels[tr])
    test = write_table(tmp / f"{name}-test.csv", names, X[te], labels[te])
    return train, test, labels[te]


def read_predictions(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def wine(tmp_path_factory):
    """A hub with a wine classifier (fp32 and int8 files), and its held-out file."""
    tmp = tmp_path_factory.mktemp("wine")
    train, test, truth = split_files(tmp, "wine")
    hub = Hub(tmp / "home", actor="tester")
    record = hub.import_dataset(train)
    build = hub.train(record["id"], "wine", {"epochs": 40, "patience": 40, "seed": 0})
    yield hub, build.version, test, truth, tmp
    hub.close()


# --- evaluate -----------------------------------------------------------------------------------------
def test_eval_scores_fp32_and_int8_on_a_held_out_file_and_records_both(wine):
    hub, version, test, truth, _ = wine
    assert version["int8_sha256"], "the wine version keeps an int8 model"
    doc = hub.evaluate(version["id"], test)
    assert [(e["artifact"], e["shipped"]) for e in doc["evaluations"]] == [
        ("fp32", version["chosen"] == "fp32"), ("int8", version["chosen"] == "int8")]
    sha = load_dataset(test, training=False).sha256  # the normal reader's hash of the held-out file
    for e in doc["evaluations"]:
        assert (e["version_id"], e["dataset_sha256"], e["rows"]) == (version["id"], sha, len(truth))
        assert e["dataset_id"] == doc["dataset"]["id"] == hub.registry.get_dataset(sha)["id"]
        assert e["metrics"]["accuracy"] >= 0.85, e["metrics"]
        assert sum(c["support"] for c in e["metrics"]["per_class"].values()) == len(truth)
    stored = hub.list_evaluations(version["id"])
    assert [e["id"] for e in stored] == sorted((e["id"] for e in doc["evaluations"]), reverse=True)
    assert stored[0]["metrics"] == doc["evaluations"][-1]["metrics"]  # JSON round trip


def test_eval_scores_match_scikit_learn_on_what_predict_wrote(wine):
    hub, version, test, truth, tmp = wine
    doc = hub.evaluate(version["id"], test, artifact="fp32")
    (e,) = doc["evaluations"]
    out = hub.predict(version["id"], test, tmp / "fp32.csv", artifact="fp32")
    rows = read_predictions(Path(out["out"]))
    assert len(rows) == out["rows"] == len(truth)
    assert [int(r["line"]) for r in rows] == list(range(2, len(truth) + 2))
    assert [r["true_label"] for r in rows] == list(truth)
    pred = [r["predicted_label"] for r in rows]
    labels = list(e["metrics"]["labels"])
    assert e["metrics"]["accuracy"] == pytest.approx(skm.accuracy_score(truth, pred))
    assert e["metrics"]["macro_f1"] == pytest.approx(skm.f1_score(truth, pred, average="macro"))
    assert e["metrics"]["confusion_matrix"] == skm.confusion_matrix(truth, pred, labels=labels).tolist()
    probs = np.array([[float(r[f"probability_{lab}"]) for lab in labels] for r in rows])
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert [labels[i] for i in probs.argmax(axis=1)] == pred


def test_predict_runs_the_artifact_asked_for_on_files_with_or_without_labels(wine):
    hub, version, test, truth, tmp = wine
    header, *body = list(csv.reader(test.open()))
    # no label column, features in another order: the same rows, the same predictions
    order = list(reversed(range(len(header) - 1)))
    nolab = tmp / "nolabels.csv"
    with nolab.open("w", newline="") as fh:
        csv.writer(fh).writerows([[header[j] for j in order]] + [[r[j] for j in order] for r in body])
    fp32 = read_predictions(Path(hub.predict(version["id"], test, tmp / "a.csv", artifact="fp32")["out"]))
    plain = hub.predict(version["id"], nolab, tmp / "b.csv", artifact="fp32")
    assert plain["label_column"] is None and "true_label" not in plain["columns"]
    unlabelled = read_predictions(Path(plain["out"]))
    assert [r["predicted_label"] for r in unlabelled] == [r["predicted_label"] for r in fp32]
    assert [r["probability_" + truth[0]] for r in unlabelled] == [r["probability_" + truth[0]] for r in fp32]
    # the int8 file is another model: its probabilities differ from fp32's somewhere
    int8 = read_predictions(Path(hub.predict(version["id"], test, tmp / "c.csv", artifact="int8")["out"]))
    cols = [c for c in fp32[0] if c.startswith("probability_")]
    assert any(a[c] != b[c] for a, b in zip(fp32, int8, strict=True) for c in cols)
    with pytest.raises(DataValidationError, match="no label column.*edgeloop predict"):
        hub.evaluate(version["id"], nolab)  # eval needs the truth
    assert hub.registry.list_audit(action="version.predict")


def test_eval_refuses_files_it_cannot_score_with_the_next_step(wine):
    hub, version, test, truth, tmp = wine
    header, *body = list(csv.reader(test.open()))
    # a class the model never saw
    unseen = tmp / "unseen.csv"
    with unseen.open("w", newline="") as fh:
        csv.writer(fh).writerows([header] + [r[:-1] + ["merlot"] if i == 3 else r for i, r in enumerate(body)])
    with pytest.raises(DataValidationError, match="unseen in training.*merlot.*line 5"):
        hub.evaluate(version["id"], unseen)
    # a feature column the model reads is missing
    missing = tmp / "missing.csv"
    with missing.open("w", newline="") as fh:
        csv.writer(fh).writerows([r[1:] for r in [header, *body]])
    with pytest.raises(DataValidationError, match=f"lacks 1 feature column.*{header[0]}"):
        hub.evaluate(version["id"], missing)
    # two unknown columns: which holds the labels?
    two = tmp / "two.csv"
    with two.open("w", newline="") as fh:
        csv.writer(fh).writerows([header[:-1] + ["truth", "site"]] + [r + ["a"] for r in body])
    with pytest.raises(DataValidationError, match="--label-column"):
        hub.evaluate(version["id"], two)
    assert hub.evaluate(version["id"], two, label_column="truth", artifact="fp32")["ignored_columns"][-1] == "site"
    with pytest.raises(RegistryError, match="does not exist"):
        hub.evaluate(version["id"], tmp / "nowhere.csv")


def test_a_test_set_without_some_classes_is_scored_with_a_warning(wine):
    hub, version, test, truth, tmp = wine
    header, *body = list(csv.reader(test.open()))
    some = [r for r in body if r[-1] != truth[0]][:12]
    few = tmp / "few.csv"
    with few.open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *some])
    doc = hub.evaluate(version["id"], few, artifact="fp32")
    (e,) = doc["evaluations"]
    assert e["rows"] == 12 and e["metrics"]["absent_classes"] == [truth[0]]
    assert e["metrics"]["per_class"][truth[0]]["support"] == 0
    text = " ".join(doc["warnings"])
    assert "only 12 rows" in text and f"no rows of class(es) {truth[0]}" in text


def test_eval_by_dataset_reference_and_on_the_training_data_warns(wine):
    hub, version, test, truth, _ = wine
    first = hub.evaluate(version["id"], test, artifact="fp32")
    assert first["dataset"]["name"] == "wine-test"  # registered under its file name
    again = hub.evaluate(version["id"], "wine-test", artifact="fp32")
    assert again["dataset"]["sha256"] == first["dataset"]["sha256"]
    assert again["evaluations"][0]["metrics"] == first["evaluations"][0]["metrics"]
    run = hub.registry.get_run(version["run_id"])
    own = hub.evaluate(version["id"], run["dataset_id"], artifact="fp32")
    assert any("trained on" in w for w in own["warnings"])


# --- gates on evaluation metrics ------------------------------------------------------------------
def test_gates_read_evaluations_and_refuse_a_deploy_in_user_words(wine):
    hub, version, test, truth, tmp = wine
    vid = version["id"]
    hub.set_gate("wine", {"eval.int8.accuracy": 0.5})
    fresh = make_version(hub.registry, data="other.csv", model="wine")  # a version with no evaluation
    check = hub.check_gate(fresh["id"])
    assert not check["passed"] and "no evaluation of its int8 model" in check["failures"][0]["problem"]
    assert f"edgeloop eval {fresh['id']}" in check["failures"][0]["problem"]

    doc = hub.evaluate(vid, test)
    int8_eval = [e for e in doc["evaluations"] if e["artifact"] == "int8"][0]
    check = hub.check_gate(vid)
    assert check["passed"] and check["checks"][0]["evaluation"]["id"] == int8_eval["id"]
    assert check["checks"][0]["value"] == int8_eval["metrics"]["accuracy"]

    hub.set_gate("wine", {"min": {"eval.accuracy": 0.9999}, "eval_data": "wine-test"})
    assert hub.registry.get_gate("wine")["eval_data"]["sha256"] == doc["dataset"]["sha256"]
    with pytest.raises(GateError) as err:
        hub.check_deployable(vid)
    text = str(err.value)
    shipped = version["chosen"]
    assert f"{vid} does not pass the evaluation gate of model wine, so it cannot be deployed" in text
    assert "eval.accuracy = " in text and "minimum 0.9999" in text and f"{shipped} model on wine-test" in text
    assert f"edgeloop deploy {vid}" in text and "--override-gate WHY" in text
    assert "check_deployable" not in text and "API" not in text

    # a gate pinned to one test set does not read evaluations on another
    header, *body = list(csv.reader(test.open()))
    other = tmp / "other-test.csv"
    with other.open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *body[:20]])
    hub.evaluate(vid, other, artifact=shipped)
    pinned = hub.check_gate(vid)["checks"][0]
    assert pinned["evaluation"]["dataset_name"] == "wine-test"
    hub.set_gate("wine", {"eval.accuracy": 0.5})  # not pinned: the newest evaluation, on any test set
    assert hub.check_gate(vid)["checks"][0]["evaluation"]["dataset_name"] == "other-test"
    hub.set_gate("wine", None)


def test_unknown_gate_metric_is_refused_at_once_with_the_names_that_exist(wine, capsys):
    hub, version, *_ = wine
    before = hub.registry.get_model("wine")["gate"]
    with pytest.raises(UnknownMetricError) as err:
        hub.set_gate("wine", {"accuracy": 0.9})
    assert err.value.suggestion == "test_accuracy" and err.value.code == "unknown_metric"
    text = str(err.value)
    assert "records no metric 'accuracy' -- did you mean test_accuracy?" in text
    assert "test_macro_f1" in text and "eval.accuracy" in text and "eval.int8.macro_f1" in text
    assert hub.registry.get_model("wine")["gate"] == before  # nothing stored
    with pytest.raises(UnknownMetricError, match="did you mean eval.macro_f1"):
        hub.set_gate("wine", {"max": {"eval.macro_f2": 0.1}})

    home = str(hub.home.root)
    capsys.readouterr()
    rc = cli.main(["registry", "gate", "wine", "--min", "test_acuracy=0.9", "--home", home])
    _, err_text = capsys.readouterr()
    assert rc == 2 and err_text.startswith("error: model wine records no metric 'test_acuracy'")
    assert "did you mean test_accuracy?" in err_text and "edgeloop eval" in err_text


# --- the command line ---------------------------------------------------------------------------------
def test_eval_and_predict_commands(wine, capsys):
    hub, version, test, truth, tmp = wine
    home = str(hub.home.root)
    capsys.readouterr()
    assert cli.main(["eval", version["id"], "--data", str(test), "--home", home]) == 0
    out = capsys.readouterr().out
    assert f"evaluated {version['id']} on wine-test" in out and "int8 - fp32: accuracy" in out
    assert "per class" in out and "next: edgeloop registry gate wine --min eval.accuracy=VALUE" in out
    assert cli.main(["eval", version["id"], "--data", str(test), "--artifact", "int8", "--json",
                     "--home", home]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [e["artifact"] for e in doc["evaluations"]] == ["int8"]
    assert cli.main(["predict", version["id"], "--data", str(test), "--out", str(tmp / "p.csv"),
                     "--home", home]) == 0
    assert f"wrote {len(truth)} predictions" in capsys.readouterr().out
    assert len(read_predictions(tmp / "p.csv")) == len(truth)
    assert cli.main(["registry", "show", version["id"], "--home", home]) == 0
    shown = capsys.readouterr().out
    assert "evaluations on test sets" in shown and "wine-test" in shown
    assert cli.main(["eval", version["id"], "--data", str(tmp / "nope.csv"), "--home", home]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["predict", version["id"], "--data", str(test), "--out", str(tmp / "no" / "p.csv"),
                     "--home", home]) == 2
    assert "create it or choose another --out" in capsys.readouterr().err


# --- the other bundled sets: held-out files, both artifacts --------------------------------------
@pytest.mark.parametrize("name, floor", [("breast_cancer", 0.9), ("digits", 0.9)])
def test_held_out_files_of_breast_cancer_and_digits(tmp_path, name, floor):
    train, test, truth = split_files(tmp_path, name)
    with Hub(tmp_path / "home", actor="tester") as hub:
        record = hub.import_dataset(train)
        version = hub.train(record["id"], name, {"epochs": 25, "patience": 25, "seed": 0}).version
        doc = hub.evaluate(version["id"], test)
    assert {e["artifact"] for e in doc["evaluations"]} == {"fp32", "int8"}
    if name == "digits":  # pixels blank in every training row are left out of training, ignored in the test file
        assert doc["ignored_columns"] and any("ignored" in w for w in doc["warnings"])
    for e in doc["evaluations"]:
        assert e["rows"] == len(truth) and e["metrics"]["accuracy"] >= floor, (e["artifact"], e["metrics"])
        assert e["metrics"]["macro_f1"] >= floor - 0.05


# --- the scores, the gate names and the registry rows, without training -------------------------------
def test_scores_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    p[:60] = t[:60]
    s = score_classification(t, p, ["a", "b", "c", "d"])
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(t, p))
    assert s["macro_f1"] == pytest.approx(skm.f1_score(t, p, average="macro"))
    assert s["confusion_matrix"] == skm.confusion_matrix(t, p).tolist()
    rec = skm.recall_score(t, p, average=None)
    assert [s["per_class"][k]["recall"] for k in "abcd"] == pytest.approx(list(rec))
    y, yhat = rng.normal(10, 3, 300), rng.normal(10, 3, 300)
    r = score_regression(y, yhat)
    assert r["mae"] == pytest.approx(skm.mean_absolute_error(y, yhat))
    assert r["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, yhat)))
    assert r["r2"] == pytest.approx(skm.r2_score(y, yhat))


def test_gate_metric_names():
    assert parse_eval_metric("eval.accuracy") == (None, "accuracy")
    assert parse_eval_metric("eval.int8.rmse") == ("int8", "rmse")
    assert parse_eval_metric("test_accuracy") is None and parse_eval_metric("eval.") is None
    assert close_match("accuracy", ["test_accuracy", "eval.accuracy"]) == "test_accuracy"
    assert close_match("test_acc", ["test_accuracy", "val_loss"]) == "test_accuracy"
    assert close_match("zzz", ["test_accuracy"]) is None


def test_registry_evaluation_rows_and_gate_checks(tmp_path):
    with Registry(tmp_path / "r.sqlite") as reg:
        v = make_version(reg, metrics={"test_accuracy": 0.9})
        sha = hashlib.sha256(b"test set").hexdigest()
        with pytest.raises(RegistryError, match="at least one row"):
            reg.add_evaluation(v["id"], "fp32", sha, 0, {"accuracy": 1.0})
        with pytest.raises(RegistryError, match="must be 64 hex digits"):
            reg.add_evaluation(v["id"], "fp32", "abc", 5, {"accuracy": 1.0})
        first = reg.add_evaluation(v["id"], "fp32", sha, 50, {"accuracy": 0.8}, dataset_name="t")
        second = reg.add_evaluation(v["id"], "fp32", sha, 50, {"accuracy": 0.95}, dataset_name="t")
        assert first["dataset_id"] is None and first["metrics"] == {"accuracy": 0.8}
        assert reg.latest_evaluation(v["id"], "fp32")["id"] == second["id"]
        assert reg.latest_evaluation(v["id"], "int8") is None
        assert [e["id"] for e in reg.list_evaluations(model="iris")] == [second["id"], first["id"]]
        reg.set_gate("iris", {"eval.accuracy": 0.9, "eval.int8.accuracy": 0.9})
        checks = {c["metric"]: c for c in reg.check_gate(v["id"])["checks"]}
        assert checks["eval.accuracy"]["passed"] and checks["eval.accuracy"]["evaluation"]["rows"] == 50
        assert "no evaluation of its int8 model" in checks["eval.int8.accuracy"]["problem"]
        assert reg.list_audit(action="evaluation.add")[0]["detail"]["scores"] == {"accuracy": 0.95}
        names = reg.metric_names("iris")
        assert names["runs"] == ["test_accuracy"] and "eval.macro_f1" in names["evaluations"]
        # a decision resting on fewer than 30 rows is taken, and said to be noisy; 50 evaluation rows are enough
        few = make_version(reg, data="few.csv", metrics={"test_accuracy": 0.9, "n_test": 12})
        reg.add_evaluation(few["id"], "fp32", sha, 50, {"accuracy": 0.95}, dataset_name="t")
        reg.set_gate("iris", {"test_accuracy": 0.8, "eval.accuracy": 0.9})
        check = reg.check_gate(few["id"])
        assert check["passed"] and {c["metric"]: c["rows"] for c in check["checks"]} == {
            "test_accuracy": 12, "eval.accuracy": 50}
        (warning,) = check["warnings"]
        assert warning.startswith("gate metric test_accuracy rests on 12 rows (< 30)") and "edgeloop eval" in warning


# --- windows and regression -------------------------------------------------------------------------
def test_window_model_scores_wide_files_in_any_column_order_and_the_long_layout(tmp_path):
    from edgeloop.hub.datasets import generate_sensor_windows, write_csv

    train = write_csv(generate_sensor_windows(150, 0, steps=16), tmp_path / "train.csv")
    held = generate_sensor_windows(60, 1, steps=16)
    names, windows = held.feature_names, held.windows()
    labels = [held.labels[c] for c in held.y]
    order = np.random.default_rng(0).permutation(len(names))  # wide columns shuffled
    wide = write_table(tmp_path / "wide.csv", [names[j] for j in order], held.X[:, order], labels)
    long = tmp_path / "long.csv"  # window_id, t, ch0.., label: one line per time step
    with long.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["window_id", "t", *(f"ch{c}" for c in range(windows.shape[1])), "label"])
        for i, win in enumerate(windows):
            w.writerows([[f"w{i}", t, *(repr(float(v)) for v in win[:, t]), labels[i]] for t in range(win.shape[1])])
    with Hub(tmp_path / "home", actor="tester") as hub:
        version = hub.train(hub.import_dataset(train)["id"], "vib", {"arch": "mlp", "epochs": 3, "seed": 0},
                            quantize=False).version  # layouts are the point here, not the model
        by_wide = hub.evaluate(version["id"], wide, artifact="fp32")["evaluations"][0]
        by_long = hub.evaluate(version["id"], long, artifact="fp32")["evaluations"][0]
        rows = read_predictions(Path(hub.predict(version["id"], long, tmp_path / "p.csv")["out"]))
    assert by_wide["rows"] == by_long["rows"] == 60
    assert by_wide["metrics"]["confusion_matrix"] == by_long["metrics"]["confusion_matrix"]
    assert by_wide["dataset_sha256"] == by_long["dataset_sha256"]  # the same windows, whatever the layout
    assert [int(r["line"]) for r in rows[:3]] == [2, 18, 34]  # a window's first line in the long file


def test_regression_eval_and_a_max_gate_on_its_rmse(tmp_path):
    d = sk.load_diabetes()
    names = [str(n) for n in d.feature_names]
    target = [repr(float(v)) for v in d.target]
    train = write_table(tmp_path / "train.csv", names, d.data[:330], target[:330], "progression")
    test = write_table(tmp_path / "test.csv", names, d.data[330:], target[330:], "progression")
    with Hub(tmp_path / "home", actor="tester") as hub:
        version = hub.train(hub.import_dataset(train)["id"], "dia", {"epochs": 30, "seed": 0, "hidden": [32]}).version
        doc = hub.evaluate(version["id"], test)
        out = hub.predict(version["id"], test, tmp_path / "p.csv")
        shipped = next(e for e in doc["evaluations"] if e["shipped"])
        hub.set_gate("dia", {"max": {"eval.rmse": shipped["metrics"]["rmse"] + 1.0}})
        assert hub.check_gate(version["id"])["passed"]
        hub.set_gate("dia", {"max": {"eval.rmse": shipped["metrics"]["rmse"] - 1.0}})
        with pytest.raises(GateError, match="eval.rmse = .*maximum"):
            hub.check_deployable(version["id"])
    rows = read_predictions(Path(out["out"]))
    assert out["columns"] == ["line", "true_value", "predicted_value"] and len(rows) == 442 - 330
    truth, pred = [float(r["true_value"]) for r in rows], [float(r["predicted_value"]) for r in rows]
    m = shipped["metrics"]
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(truth, pred), rel=1e-5)
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(truth, pred)), rel=1e-5)
    assert m["r2"] == pytest.approx(skm.r2_score(truth, pred), rel=1e-4) and m["r2"] > 0.2


def test_npz_files_with_and_without_labels_or_names(wine):
    hub, version, test, truth, tmp = wine
    csv_eval = hub.evaluate(version["id"], test, artifact="fp32")["evaluations"][0]
    header, *body = list(csv.reader(test.open()))
    X = np.array([[float(v) for v in r[:-1]] for r in body])
    np.savez(tmp / "named.npz", X=X, y=np.array(truth), feature_names=np.array(header[:-1]))
    npz_eval = hub.evaluate(version["id"], tmp / "named.npz", artifact="fp32")["evaluations"][0]
    assert npz_eval["metrics"]["confusion_matrix"] == csv_eval["metrics"]["confusion_matrix"]
    np.savez(tmp / "bare.npz", X=X)  # no y, no names: predictions, columns in the model's order
    vid = version["id"]
    bare = read_predictions(Path(hub.predict(vid, tmp / "bare.npz", tmp / "b.csv", artifact="fp32")["out"]))
    named = read_predictions(Path(hub.predict(vid, tmp / "named.npz", tmp / "n.csv", artifact="fp32")["out"]))
    assert [r["predicted_label"] for r in bare] == [r["predicted_label"] for r in named]
    with pytest.raises(DataValidationError, match="no array 'y'.*edgeloop predict"):
        hub.evaluate(version["id"], tmp / "bare.npz")


# --- the case: real-sensor recordings, a small training file and a large separate TEST file --------
def test_recordings_import_unmodified_train_by_default_and_eval_beats_one_nearest_neighbour(tmp_path, capsys):
    from tests import sensor_recordings as sr

    train_x, train_y = sr.recordings(90, 0)
    test_x, test_y = sr.recordings(600, 1)
    train = sr.write_csv(tmp_path / "train.csv", train_x, train_y)
    test = sr.write_csv(tmp_path / "test.csv", test_x, test_y)
    home = str(tmp_path / "home")

    def run_json(*argv: str):
        capsys.readouterr()
        assert cli.main([*argv, "--home", home, "--json"]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    imported = run_json("data", "import", str(train))  # held and stuck columns: warnings, not refusals
    rules = {w["rule"]: w["columns"] for w in imported["warnings"]}
    assert rules["constant_column"] == [f"ch2_t{t}" for t in range(sr.STEPS)]  # the stuck sensor
    assert rules["duplicate_column"] == [f"ch1_t{t}" for t in range(1, sr.STEPS, 2)]  # held samples
    built = run_json("train", "--data", imported["id"], "--model", "rec", "--quiet")  # the defaults
    run = built["run"]
    assert run["params"]["arch"] == "cnn1d"  # windows get the 1D-CNN without being asked
    m = run["metrics"]
    # validation loss decided when to stop, well before the ceiling, and the best epoch's weights were kept
    assert m["stop_reason"] == "early_stop" and m["best_epoch"] < m["epochs_run"] < m["max_epochs"], m
    doc = run_json("eval", built["version"]["id"], "--data", str(test))
    shipped = next(e for e in doc["evaluations"] if e["shipped"])
    assert shipped["artifact"] == built["version"]["chosen"] and shipped["rows"] == 600
    baseline = sr.one_nn_accuracy(train_x, train_y, test_x, test_y)
    assert shipped["metrics"]["accuracy"] > baseline + 0.05, (shipped["metrics"]["accuracy"], baseline)
