"""Dataset formats: npz, schema inference and schema files, regression, sensor windows, new validation rules."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from edgeloop.hub.datasets import (
    WINDOW_LABELS,
    WINDOW_SAMPLE_SD,
    Dataset,
    FeatureSpec,
    Schema,
    align_labels,
    dataset_sha256,
    generate_sensor_data,
    generate_sensor_windows,
    load_csv,
    load_dataset,
    load_npz,
    load_schema_file,
    sample_dataset_path,
    split_dataset,
    validate_dataset,
    validate_labels_known,
    window_feature_names,
    write_csv,
    write_npz,
    write_schema_file,
)
from edgeloop.hub.errors import DataValidationError

SAMPLE_SHA256 = "80f7344afcdbf5611db6e60d77c72dbe2f762c5cb78eaa6245bc1b4d8cfcb7df"


def _write(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def _table(path: Path, names, X, label_name: str, y) -> Path:
    return _write(path, [*names, label_name],
                  [[repr(float(v)) for v in row] + [lab] for row, lab in zip(X, y, strict=True)])


def _error(fn, *args, **kw) -> DataValidationError:
    with pytest.raises(DataValidationError) as err:
        fn(*args, **kw)
    return err.value


def _rules(exc: DataValidationError) -> set[str]:
    return {p.rule for p in exc.problems}


def _regression(n: int = 120, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 1, (n, 3)).astype(np.float32)
    y = (X @ np.array([1.5, -2.0, 0.5]) + rng.normal(0, 0.1, n) + 20).astype(np.float32)
    return Dataset(["a", "b", "c"], X, y, [], label_column="target", task="regression", source="synthetic")


# --------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: generate_sensor_data(200, 4),
    lambda: _regression(),
    lambda: generate_sensor_windows(60, 2, channels=2, steps=8),
], ids=["classification", "regression", "windows"])
def test_npz_round_trip_keeps_arrays_task_shape_and_hash(tmp_path: Path, make):
    ds = make()
    back = load_dataset(write_npz(ds, tmp_path / "d.npz"))
    assert back.sha256 == ds.sha256
    assert np.array_equal(back.X, ds.X) and np.array_equal(back.y, ds.y) and back.y.dtype == ds.y.dtype
    assert (back.task, back.labels, back.feature_names, back.label_column, back.window_shape) == \
        (ds.task, ds.labels, ds.feature_names, ds.label_column, ds.window_shape)
    assert back.source == str(tmp_path / "d.npz") and back.line_numbers[0] == 2
    # the CSV of the same data has the same identity
    assert load_dataset(write_csv(ds, tmp_path / "d.csv"), schema=Schema(task=ds.task)).sha256 == ds.sha256


def test_npz_user_layouts(tmp_path: Path):
    rng = np.random.default_rng(1)
    X = rng.normal(0, 1, (40, 2))
    names = np.array(["b", "a", "b", "a"] * 10)
    np.savez(tmp_path / "strings.npz", X=X, y=names)
    ds = load_dataset(tmp_path / "strings.npz")
    assert ds.labels == ["a", "b"] and ds.feature_names == ["x0", "x1"] and ds.task == "classification"
    assert [ds.labels[i] for i in ds.y[:4]] == ["b", "a", "b", "a"]
    # y as indices into a labels array keeps the array's class order
    np.savez(tmp_path / "idx.npz", X=X, y=np.array([1, 0, 1, 0] * 10), labels=np.array(["b", "a"]),
             feature_names=np.array(["p", "q"]))
    idx = load_dataset(tmp_path / "idx.npz")
    assert idx.labels == ["b", "a"] and idx.feature_names == ["p", "q"]
    assert [idx.labels[i] for i in idx.y[:4]] == ["a", "b", "a", "b"]
    # 3-D X is sensor windows, flattened channel-major
    W = rng.normal(0, 1, (40, 3, 5)).astype(np.float32)
    np.savez(tmp_path / "win.npz", X=W, y=np.arange(40) % 2)
    win = load_dataset(tmp_path / "win.npz")
    assert win.window_shape == (3, 5) and win.feature_names == window_feature_names(3, 5)
    assert np.array_equal(win.X[:, 5:10], W[:, 1, :]) and np.array_equal(win.windows(), W)
    assert win.labels == ["0", "1"]


def test_npz_problems_name_rows_and_arrays(tmp_path: Path):
    X = np.random.default_rng(2).normal(0, 1, (40, 2))
    X[5, 1] = np.nan  # array row 5 -> line 7
    np.savez(tmp_path / "nan.npz", X=X, y=np.arange(40) % 2)
    exc = _error(load_npz, tmp_path / "nan.npz")
    assert [(p.row, p.column, p.rule) for p in exc.problems] == [(7, "x1", "missing_value")]
    assert "array row 0" in str(exc)
    np.savez(tmp_path / "bad_idx.npz", X=X[:, :1], y=np.array([0, 1, 2, 0] * 10), labels=np.array(["a", "b"]))
    exc = _error(load_npz, tmp_path / "bad_idx.npz")
    assert (4, "label", "bad_label_index") in {(p.row, p.column, p.rule) for p in exc.problems}
    np.savez(tmp_path / "no_y.npz", X=X)
    exc = _error(load_dataset, tmp_path / "no_y.npz")
    assert [(p.column, p.rule) for p in exc.problems] == [("y", "bad_npz")]
    np.savez(tmp_path / "short_y.npz", X=X, y=np.zeros(3))
    assert "bad_npz" in _rules(_error(load_dataset, tmp_path / "short_y.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert _rules(_error(load_dataset, tmp_path / "junk.npz")) == {"bad_npz"}
    np.save(tmp_path / "single.npy", X)
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    assert "single .npy" in str(_error(load_dataset, tmp_path / "single.npz"))
    assert _rules(_error(load_dataset, tmp_path / "data.parquet")) == {"unsupported_format"}
    assert _rules(_error(load_dataset, tmp_path / "missing.npz")) == {"file_not_found"}


# --------------------------------------------------------------------------
# schema inference and schema files
# --------------------------------------------------------------------------


def test_schema_inference_classification_vs_regression(tmp_path: Path):
    rng = np.random.default_rng(3)
    X = rng.normal(0, 1, (60, 2)).round(3)
    # few distinct whole numbers -> classes (named by their text)
    few = _table(tmp_path / "few.csv", ["a", "b"], X, "label", [str(i % 3) for i in range(60)])
    ds = load_dataset(few)
    assert ds.task == "classification" and ds.labels == ["0", "1", "2"] and ds.schema.label_dtype == "int"
    # non-integer targets -> regression, y float32, no labels
    reg = _table(tmp_path / "reg.csv", ["a", "b"], X, "label", [f"{v:.2f}" for v in rng.normal(5, 2, 60)])
    ds = load_dataset(reg)
    assert ds.task == "regression" and ds.labels == [] and ds.y.dtype == np.float32 and ds.n_classes == 0
    assert ds.class_counts() == {} and ds.schema.labels is None
    # whole numbers with more than 20 distinct values -> regression
    many = _table(tmp_path / "many.csv", ["a", "b"], X, "label", [str(i) for i in range(60)])
    assert load_dataset(many).task == "regression"
    # no "label" column: the last column is the label; text -> classification
    last = _table(tmp_path / "last.csv", ["a", "b"], X, "kind", ["x" if i % 2 else "y" for i in range(60)])
    ds = load_dataset(last)
    assert ds.label_column == "kind" and ds.feature_names == ["a", "b"] and ds.labels == ["x", "y"]
    # load_csv keeps its strict default: the label column is "label"
    assert _rules(_error(load_csv, last)) >= {"missing_label_column"}
    # feature dtypes
    ints = _write(tmp_path / "ints.csv", ["n", "v", "label"],
                  [[i % 7, f"{v:.3f}", "a" if i % 2 else "b"] for i, v in enumerate(X[:, 0])])
    schema = load_dataset(ints).schema
    assert schema.features == {"n": FeatureSpec("int"), "v": FeatureSpec("float")}
    assert schema.to_dict()["features"] == {"n": {"dtype": "int"}, "v": {"dtype": "float"}}


def test_schema_file_overrides_task_label_column_classes_and_ranges(tmp_path: Path):
    rng = np.random.default_rng(4)
    rows = [[f"{t:.1f}", f"{p:.1f}", str(i % 4), "a" if i % 3 else "b"]
            for i, (t, p) in enumerate(zip(rng.uniform(-20, 80, 60), rng.uniform(90, 110, 60), strict=True))]
    path = _write(tmp_path / "d.csv", ["temp", "pres", "y", "tag"], rows)
    schema_path = tmp_path / "schema.json"
    schema_path.write_text(json.dumps({
        "label_column": "y", "task": "regression", "ignore_columns": ["tag"],
        "features": {"temp": {"min": -40, "max": 125}, "pres": {"dtype": "float"}},
    }), encoding="utf-8")
    ds = load_dataset(path, schema_file=schema_path)
    assert ds.task == "regression" and ds.label_column == "y" and ds.feature_names == ["temp", "pres"]
    assert ds.y.dtype == np.float32 and sorted(set(ds.y.tolist())) == [0.0, 1.0, 2.0, 3.0]
    assert ds.schema.features["temp"] == FeatureSpec("float", -40.0, 125.0)
    assert ds.summary()["ranges"] == {"temp": [-40.0, 125.0]}
    # without the file the few whole-number values would be classes
    assert load_dataset(path, schema=Schema(label_column="y", ignore_columns=["tag"])).task == "classification"
    # a class list fixes the class order; a class outside it is an error on its line
    ordered = load_dataset(path, schema=Schema(label_column="tag", ignore_columns=["y"], labels=["b", "a"]))
    assert ordered.labels == ["b", "a"] and ordered.y[0] == 0  # row 0 is "b"
    exc = _error(load_dataset, path, schema=Schema(label_column="tag", ignore_columns=["y"], labels=["a", "c"]))
    assert next((p.row, p.rule) for p in exc.problems if p.rule == "unknown_class") == (2, "unknown_class")
    # `schema` overrides the schema file
    both = load_dataset(path, schema_file=schema_path, schema=Schema(task="classification"))
    assert both.task == "classification" and both.labels == ["0", "1", "2", "3"]
    # the resolved schema can be saved and reused: same data, same hash
    saved = write_schema_file(ds.schema, tmp_path / "resolved.json")
    assert load_schema_file(saved) == ds.schema
    assert load_dataset(path, schema_file=saved).sha256 == ds.sha256


def test_bad_schema_files_are_refused_with_every_finding(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"task": "clustering", "labels": [], "colour": 1,
                               "features": {"t": {"min": 5, "max": 1}, "u": {"min": "low"}, "v": {"unit": "C"}}}),
                   encoding="utf-8")
    exc = _error(load_schema_file, bad)
    assert _rules(exc) == {"bad_schema"}
    details = " | ".join(p.detail for p in exc.problems)
    for needle in ("'colour': unknown key", "task: must be one of", "labels: must be a non-empty list",
                   "features.t: min 5 is greater than max 1", "features.u.min: must be a finite number",
                   "features.v.unit: unknown key"):
        assert needle in details
    assert str(bad) in str(exc)
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "task": "regression",\n  "labels": ["a",]\n}', encoding="utf-8")
    exc = _error(load_schema_file, broken)
    assert exc.problems[0].row == 3 and "not valid JSON" in str(exc)
    conflict = tmp_path / "conflict.json"
    conflict.write_text(json.dumps({"task": "regression", "labels": ["a"], "label_column": "x",
                                    "features": {"x": {}}}), encoding="utf-8")
    details = [p.detail for p in _error(load_schema_file, conflict).problems]
    assert any("regression" in d and "labels" in d for d in details)
    assert any("cannot be a feature" in d for d in details)
    (tmp_path / "list.json").write_text("[1, 2]", encoding="utf-8")
    assert "must be a JSON object" in str(_error(load_schema_file, tmp_path / "list.json"))
    assert _rules(_error(load_schema_file, tmp_path / "nope.json")) == {"file_not_found"}
    # a feature the data does not have is an error when loading
    data = write_csv(generate_sensor_data(60, 1), tmp_path / "d.csv")
    exc = _error(load_dataset, data, schema=Schema(features={"temperature": FeatureSpec(min=0)}))
    assert [(p.column, p.rule) for p in exc.problems] == [("temperature", "unknown_feature")]


# --------------------------------------------------------------------------
# validation rules: out_of_range, not_integer, unseen labels
# --------------------------------------------------------------------------


def test_out_of_range_names_line_column_value_and_range(tmp_path: Path):
    ds = generate_sensor_data(80, 6)
    rows = [[*map(str, r.tolist()), ds.labels[c]] for r, c in zip(ds.X, ds.y, strict=True)]
    rows[9][0] = "130.5"  # temperature_c on file line 11
    rows[40][5] = "-3"  # rpm on file line 42
    path = _write(tmp_path / "d.csv", [*ds.feature_names, "label"], rows)
    schema = Schema(features={"temperature_c": FeatureSpec(min=-40, max=125), "rpm": FeatureSpec(min=0)})
    exc = _error(load_dataset, path, schema=schema)
    assert [(p.row, p.column, p.rule) for p in exc.problems] == [
        (11, "temperature_c", "out_of_range"), (42, "rpm", "out_of_range")]
    assert ("line 11, column 'temperature_c': [out_of_range] value 130.5 is outside the allowed range [-40, 125]"
            in str(exc))
    assert "line 42, column 'rpm': [out_of_range] value -3 is outside the allowed range [0, inf]" in str(exc)
    # bounds are inclusive
    rows[9][0], rows[40][5] = "125", "0"
    assert load_dataset(_write(path, [*ds.feature_names, "label"], rows), schema=schema).n_rows == 80
    # dtype int: a fractional value is reported
    rows[3][5] = "1700.5"
    exc = _error(load_dataset, _write(path, [*ds.feature_names, "label"], rows),
                 schema=Schema(features={"rpm": FeatureSpec(dtype="int")}))
    assert [(p.row, p.column, p.rule) for p in exc.problems] == [(5, "rpm", "not_integer")]


def test_validate_dataset_checks_new_data_against_the_training_schema():
    train = generate_sensor_data(200, 1)
    schema = train.schema.merged(Schema(features={"humidity_pct": FeatureSpec(min=0, max=100)}))
    new = generate_sensor_data(100, 2)
    validate_dataset(new, schema=schema)
    X = new.X.copy()
    X[17, 4] = 101.5
    moved = Dataset(new.feature_names, X, new.y, new.labels)
    exc = _error(validate_dataset, moved, schema=schema)
    assert [(p.row, p.column, p.rule) for p in exc.problems] == [(19, "humidity_pct", "out_of_range")]
    assert "101.5" in exc.problems[0].detail and "[0, 100]" in exc.problems[0].detail


def test_unseen_labels_are_named_with_their_rows(tmp_path: Path):
    rows = [[f"{i * 0.5:g}", f"{(i * 7) % 11}", "ok" if i % 2 else "bad"] for i in range(40)]
    rows[6][2], rows[31][2], rows[32][2], rows[33][2] = "broken", "broken", "broken", "odd"
    path = _write(tmp_path / "eval.csv", ["a", "b", "label"], rows)
    assert "too_few_class_rows" in _rules(_error(load_csv, path))  # as training data: 'odd' has 1 row
    ds = load_dataset(path, training=False)
    validate_labels_known(ds, ["bad", "ok", "broken", "odd"])
    exc = _error(validate_labels_known, ds, ["bad", "ok"])
    assert [(p.row, p.column, p.rule) for p in exc.problems] == [
        (8, "label", "unseen_label"), (33, "label", "unseen_label"), (34, "label", "unseen_label"),
        (35, "label", "unseen_label")]
    text = str(exc)
    assert "'broken' (lines 8, 33, 34)" in text and "'odd' (line 35)" in text
    assert "line 8, column 'label': [unseen_label] class 'broken'" in text
    # file lines survive blank lines (row index 1 is on line 4 here)
    (tmp_path / "gap.csv").write_text("a,label\n1,x\n\n2,y\n3,x\n4,y\n5,x\n6,y\n", encoding="utf-8")
    gap = load_csv(tmp_path / "gap.csv", training=False)
    assert [p.row for p in _error(validate_labels_known, gap, ["x"]).problems] == [4, 6, 8]
    # align_labels re-numbers to the model's class order
    clean = generate_sensor_data(60, 3)
    order = ["worn_bearing", "overheating", "normal"]
    aligned = align_labels(clean, order)
    assert aligned.labels == order
    assert [aligned.labels[i] for i in aligned.y] == [clean.labels[i] for i in clean.y]
    # regression data given to a classifier is refused
    assert _rules(_error(validate_labels_known, _regression(), ["a"])) == {"task_mismatch"}
    validate_labels_known(_regression(), [])


def test_evaluation_data_skips_only_the_training_rules(tmp_path: Path):
    rows = [[str(i), "1500", "ok" if i % 2 else "bad"] for i in range(8)]  # 8 rows, constant rpm
    path = _write(tmp_path / "eval.csv", ["a", "rpm", "label"], rows)
    assert _rules(_error(load_dataset, path)) == {"too_few_rows"}
    ds = load_dataset(path, training=False)
    assert ds.n_rows == 8 and ds.labels == ["bad", "ok"]
    validate_dataset(ds, training=False)
    # cell and schema rules still apply
    rows[2][0] = "?"
    exc = _error(load_dataset, _write(path, ["a", "rpm", "label"], rows), training=False,
                 schema=Schema(features={"rpm": FeatureSpec(max=1000)}))
    assert [(p.row, p.column, p.rule) for p in exc.problems] == (
        [(4, "a", "missing_value")] + [(line, "rpm", "out_of_range") for line in range(2, 10)])
    # data checked against the training schema of another task is refused
    exc = _error(validate_dataset, ds, schema=_regression().schema, training=False)
    assert "task_mismatch" in _rules(exc) and "unknown_feature" in _rules(exc)


# --------------------------------------------------------------------------
# regression
# --------------------------------------------------------------------------


def test_regression_hash_is_stable_and_content_sensitive(tmp_path: Path):
    ds = _regression()
    assert _regression().sha256 == ds.sha256 and len(ds.sha256) == 64
    a = load_dataset(write_csv(ds, tmp_path / "a.csv"))
    b = load_dataset(write_csv(ds, tmp_path / "b.csv"))
    assert a.sha256 == b.sha256 == ds.sha256 == load_dataset(write_npz(ds, tmp_path / "c.npz")).sha256
    # spelling of the numbers does not matter
    text = (tmp_path / "a.csv").read_text(encoding="utf-8").splitlines()
    spelled = [text[0]] + [",".join(f"{float(c):.12e}" for c in line.split(",")) for line in text[1:]]
    (tmp_path / "spelled.csv").write_text("\r\n".join(spelled) + "\r\n", encoding="utf-8")
    assert load_dataset(tmp_path / "spelled.csv").sha256 == ds.sha256
    # one target changed by one ulp, the task, or the label column name change it
    y2 = ds.y.copy()
    y2[7] = np.nextafter(y2[7], np.float32(np.inf))
    assert dataset_sha256(ds.feature_names, ds.X, y2, [], "target", "regression") != ds.sha256
    assert dataset_sha256(ds.feature_names, ds.X, ds.y, [], "y", "regression") != ds.sha256
    as_classes = Dataset(ds.feature_names, ds.X, np.arange(ds.n_rows) % 2, ["a", "b"], label_column="target")
    assert as_classes.sha256 != ds.sha256
    # load_csv with an empty class list (as a registry record of regression data has) infers the task
    assert load_csv(tmp_path / "a.csv", "target", labels=[]).sha256 == ds.sha256
    # the classification hash is unchanged by the new fields
    assert load_csv(sample_dataset_path()).sha256 == SAMPLE_SHA256
    assert load_dataset(sample_dataset_path()).sha256 == SAMPLE_SHA256


def test_regression_rules_split_and_summary(tmp_path: Path):
    ds = _regression(100)
    s = split_dataset(ds, seed=5)
    assert s.to_dict()["stratified"] is False and s.counts() == {"train": 70, "val": 15, "test": 15}
    assert np.array_equal(np.sort(np.concatenate([s.train, s.val, s.test])), np.arange(100))
    assert np.array_equal(split_dataset(ds, seed=5).test, s.test)
    assert not np.array_equal(split_dataset(ds, seed=6).test, s.test)
    assert split_dataset(generate_sensor_data(100, 1), seed=5).to_dict()["stratified"] is True
    summary = ds.summary()
    assert summary["task"] == "regression" and summary["window_shape"] is None and summary["labels"] == []
    stats = summary["y_stats"]
    assert stats["mean"] == pytest.approx(float(ds.y.mean()), rel=1e-6)
    assert stats["std"] == pytest.approx(float(ds.y.std()), rel=1e-5)
    assert (stats["min"], stats["max"]) == (float(ds.y.min()), float(ds.y.max()))
    json.dumps(summary)
    assert generate_sensor_data(50, 1).summary()["y_stats"] is None
    # bad targets are found on their lines; a constant target is refused
    rows = [[str(i), f"{(i * 7) % 11}", f"{i * 1.5 + 0.25}"] for i in range(40)]
    rows[4][2], rows[9][2] = "n/a", "12,5"
    exc = _error(load_dataset, _write(tmp_path / "r.csv", ["a", "b", "y"], rows), schema=Schema(task="regression"))
    assert [(p.row, p.column, p.rule) for p in exc.problems] == [(6, "y", "missing_value"), (11, "y", "non_numeric")]
    flat = [[r[0], r[1], "3.5"] for r in rows]
    exc = _error(load_dataset, _write(tmp_path / "flat.csv", ["a", "b", "y"], flat), schema=Schema(task="regression"))
    assert [(p.column, p.rule) for p in exc.problems] == [("y", "constant_label")]
    y = ds.y.copy()
    y[3] = np.nan
    exc = _error(validate_dataset, Dataset(ds.feature_names, ds.X, y, [], task="regression"))
    assert [(p.row, p.rule) for p in exc.problems] == [(5, "missing_value")]
    with pytest.raises(DataValidationError, match="no class names"):
        Dataset(["a"], np.zeros((3, 1)), np.zeros(3), ["x"], task="regression")


# --------------------------------------------------------------------------
# sensor windows
# --------------------------------------------------------------------------


def test_window_generator_is_deterministic_and_its_classes_differ():
    ds = generate_sensor_windows(600, 3)
    assert ds.window_shape == (3, 32) and ds.X.shape == (600, 96) and ds.labels == WINDOW_LABELS
    assert ds.feature_names[:2] == ["ch0_t0", "ch0_t1"] and ds.feature_names[32] == "ch1_t0"
    again = generate_sensor_windows(600, 3)
    assert again.sha256 == ds.sha256 and generate_sensor_windows(600, 4).sha256 != ds.sha256
    assert ds.summary()["window_shape"] == [3, 32]
    W = ds.windows()
    assert W.shape == (600, 3, 32) and np.shares_memory(W, ds.X)
    normal, imbalance, fault = (ds.y == WINDOW_LABELS.index(n) for n in ("normal", "imbalance", "bearing_fault"))
    assert min(normal.sum(), imbalance.sum(), fault.sum()) > 120
    rms = np.sqrt((W[:, 0] ** 2).mean(axis=1))
    peak = np.abs(W[:, 0]).max(axis=1) / rms  # impacts are spiky: high crest factor
    assert rms[imbalance].mean() > 1.5 * rms[normal].mean()
    assert peak[fault].mean() > peak[normal].mean() + 0.4
    drifted = generate_sensor_windows(600, 3, shift=1.5)
    assert np.mean(drifted.X - ds.X) == pytest.approx(1.5 * WINDOW_SAMPLE_SD, abs=1e-3)
    assert np.array_equal(drifted.y, ds.y)
    small = generate_sensor_windows(40, 1, channels=5, steps=4)
    assert small.window_shape == (5, 4) and small.n_features == 20


def test_wide_window_columns_are_detected_in_any_column_order(tmp_path: Path):
    ds = generate_sensor_windows(50, 5, channels=2, steps=6)
    canonical = load_dataset(write_csv(ds, tmp_path / "wide.csv"))
    assert canonical.window_shape == (2, 6) and canonical.sha256 == ds.sha256
    # time-major column order in the file: same data, same hash
    with (tmp_path / "wide.csv").open(encoding="utf-8", newline="") as fh:
        text = list(csv.reader(fh))
    order = [c * 6 + t for t in range(6) for c in range(2)] + [12]
    _write(tmp_path / "tmajor.csv", [text[0][j] for j in order], [[r[j] for j in order] for r in text[1:]])
    shuffled = load_dataset(tmp_path / "tmajor.csv")
    assert shuffled.feature_names == window_feature_names(2, 6) and np.array_equal(shuffled.X, ds.X)
    assert shuffled.sha256 == ds.sha256
    # ranges for window data are per channel and name the exact column
    X = ds.X.copy()
    X[3, 6 + 2] = 50.0  # channel 1, step 2, row 3 -> line 5
    hot = write_csv(Dataset(ds.feature_names, X, ds.y, ds.labels, window_shape=(2, 6)), tmp_path / "hot.csv")
    exc = _error(load_dataset, hot, schema=Schema(features={"ch1": FeatureSpec(min=-20, max=20)}))
    assert [(p.row, p.column, p.rule) for p in exc.problems] == [(5, "ch1_t2", "out_of_range")]
    # an incomplete grid or a stray column is refused
    _write(tmp_path / "gap.csv", text[0][1:], [r[1:] for r in text[1:]])
    assert _rules(_error(load_dataset, tmp_path / "gap.csv")) == {"incomplete_window_columns"}
    _write(tmp_path / "mixed.csv", ["rpm"] + text[0], [[str(1500 + i)] + r for i, r in enumerate(text[1:])])
    exc = _error(load_dataset, tmp_path / "mixed.csv")
    assert _rules(exc) == {"mixed_window_columns"} and "rpm" in str(exc)
    assert load_dataset(tmp_path / "mixed.csv", schema=Schema(layout="tabular")).window_shape is None
    assert load_dataset(tmp_path / "mixed.csv", schema=Schema(ignore_columns=["rpm"])).sha256 == ds.sha256
    with pytest.raises(DataValidationError, match="expects"):
        load_dataset(tmp_path / "wide.csv", schema=Schema(window_shape=(3, 4)))


def _long_rows(ds: Dataset, *, shuffle: bool = False) -> list[list[str]]:
    W = ds.windows()
    rows = [[f"w{i:03d}", str(t), *(repr(float(W[i, c, t])) for c in range(W.shape[1])), ds.labels[ds.y[i]]]
            for i in range(ds.n_rows) for t in range(W.shape[2])]
    if shuffle:  # steps out of order within each window (windows stay in order of first appearance)
        rows = [r for i in range(ds.n_rows) for r in reversed(rows[i * W.shape[2]:(i + 1) * W.shape[2]])]
    return rows


def test_long_format_becomes_the_wide_form(tmp_path: Path):
    ds = generate_sensor_windows(40, 7, channels=3, steps=5)
    header = ["window_id", "t", "ch0", "ch1", "ch2", "label"]
    long = load_dataset(_write(tmp_path / "long.csv", header, _long_rows(ds)))
    assert long.window_shape == (3, 5) and long.n_rows == 40 and long.sha256 == ds.sha256
    assert long.line_numbers[:3].tolist() == [2, 7, 12]  # each window's first line
    assert long.schema.window_id_column == "window_id" and long.schema.time_column == "t"
    # steps in any order are sorted by t
    assert load_dataset(_write(tmp_path / "rev.csv", header, _long_rows(ds, shuffle=True))).sha256 == ds.sha256
    # other channel names and id column, declared in a schema; ranges by channel column name
    named = ["rec", "step", "ax", "ay", "az", "label"]
    path = _write(tmp_path / "named.csv", named, _long_rows(ds))
    sch = Schema(window_id_column="rec", time_column="step", features={"ay": FeatureSpec(min=-100, max=100)})
    got = load_dataset(path, schema=sch)
    assert got.sha256 == ds.sha256 and got.schema.features["ch1"].max == 100.0
    exc = _error(load_dataset, path, schema=Schema(window_id_column="rec", time_column="step",
                                                   features={"az": FeatureSpec(max=0.0)}))
    assert {p.column for p in exc.problems} == {"az"} and _rules(exc) == {"out_of_range"}


def test_long_format_failure_modes(tmp_path: Path):
    ds = generate_sensor_windows(40, 8, channels=2, steps=4)
    header = ["window_id", "t", "ch0", "ch1", "label"]
    rows = _long_rows(ds)
    # ragged: window w001 loses a step (its rows start on line 6)
    ragged = rows[:5] + rows[6:]
    exc = _error(load_dataset, _write(tmp_path / "ragged.csv", header, ragged))
    assert [(p.row, p.column, p.rule) for p in exc.problems] == [(6, "window_id", "ragged_window")]
    assert "window 'w001' has 3 step(s); every window needs 4" in str(exc)
    # label changes inside window w002 (lines 10..13) on line 12
    changed = [list(r) for r in rows]
    other = next(lab for lab in WINDOW_LABELS if lab != changed[10][-1])
    changed[10][-1] = other
    exc = _error(load_dataset, _write(tmp_path / "label.csv", header, changed))
    assert [(p.row, p.column, p.rule) for p in exc.problems] == [(12, "label", "inconsistent_window_label")]
    assert f"changes its label to {other!r}; its first row (line 10)" in str(exc)
    # the same step twice
    dup = [list(r) for r in rows]
    dup[1][1] = "0"
    exc = _error(load_dataset, _write(tmp_path / "dup.csv", header, dup))
    assert (3, "t", "duplicate_step") in {(p.row, p.column, p.rule) for p in exc.problems}
    # a declared window length is enforced
    exc = _error(load_dataset, _write(tmp_path / "ok.csv", header, rows), schema=Schema(window_shape=(2, 5)))
    assert _rules(exc) == {"ragged_window"} and len(exc.problems) == 40
    # too few windows is counted in windows, not rows
    exc = _error(load_dataset, _write(tmp_path / "few.csv", header, rows[:4 * 20]))
    assert any(p.rule == "too_few_rows" and "20 window(s)" in p.detail for p in exc.problems)
    # cell problems keep their lines
    bad = [list(r) for r in rows]
    bad[8][3] = "x"
    exc = _error(load_dataset, _write(tmp_path / "cell.csv", header, bad))
    assert [(p.row, p.column, p.rule) for p in exc.problems] == [(10, "ch1", "non_numeric")]
    # layout windows declared for tabular data
    flat = write_csv(generate_sensor_data(40, 1), tmp_path / "flat.csv")
    assert _rules(_error(load_dataset, flat, schema=Schema(layout="windows"))) == {"not_windows"}


# --------------------------------------------------------------------------
# data shipped with scikit-learn
# --------------------------------------------------------------------------

sk = pytest.importorskip("sklearn.datasets")


def test_sklearn_wine_csv_and_npz_agree(tmp_path: Path):
    wine = sk.load_wine()
    names = [str(n) for n in wine.target_names]
    csv_path = _table(tmp_path / "wine.csv", wine.feature_names, wine.data, "cultivar",
                      [names[i] for i in wine.target])
    ds = load_dataset(csv_path)
    assert ds.task == "classification" and ds.label_column == "cultivar" and ds.labels == names
    assert ds.class_counts() == {names[0]: 59, names[1]: 71, names[2]: 48}
    assert ds.feature_names == list(wine.feature_names) and ds.n_rows == 178
    np.savez(tmp_path / "wine.npz", X=wine.data, y=wine.target, labels=np.array(names),
             feature_names=np.array(wine.feature_names), label_column=np.array("cultivar"))
    assert load_dataset(tmp_path / "wine.npz").sha256 == ds.sha256
    assert np.allclose(ds.X, wine.data, rtol=1e-6)


def test_sklearn_breast_cancer_npz_keeps_its_class_order(tmp_path: Path):
    bc = sk.load_breast_cancer()
    np.savez(tmp_path / "bc.npz", X=bc.data, y=bc.target, labels=np.array(bc.target_names),
             feature_names=np.array(bc.feature_names))
    ds = load_dataset(tmp_path / "bc.npz")
    assert ds.labels == ["malignant", "benign"] and ds.class_counts() == {"malignant": 212, "benign": 357}
    assert ds.n_features == 30 and ds.window_shape is None
    back = load_dataset(write_csv(ds, tmp_path / "bc.csv"), schema=Schema(labels=ds.labels))
    assert back.sha256 == ds.sha256
    s = split_dataset(ds, seed=0)
    assert abs((ds.y[s.test] == 0).mean() - 212 / 569) < 0.02  # stratified


def test_sklearn_digits_constant_pixels_are_warned_about_then_ignored(tmp_path: Path):
    digits = sk.load_digits()
    names = list(digits.feature_names)
    path = _table(tmp_path / "digits.csv", names, digits.data, "label", [str(int(v)) for v in digits.target])
    constant = [names[j] for j in np.nonzero(np.ptp(digits.data, axis=0) == 0)[0]]
    (w,) = load_dataset(path).warnings
    assert constant and (w.rule, list(w.columns)) == ("constant_column", constant)
    ds = load_dataset(path, schema=Schema(ignore_columns=constant))
    assert ds.warnings == []
    assert ds.task == "classification" and ds.labels == [str(i) for i in range(10)]
    assert ds.n_features == 64 - len(constant) and ds.schema.label_dtype == "int"
    assert {spec.dtype for spec in ds.schema.features.values()} == {"int"}
    assert [ds.labels[i] for i in ds.y[:10]] == [str(int(v)) for v in digits.target[:10]]


def test_sklearn_diabetes_is_regression_in_csv_and_npz(tmp_path: Path):
    db = sk.load_diabetes()
    path = _table(tmp_path / "diabetes.csv", db.feature_names, db.data, "progression",
                  [repr(float(v)) for v in db.target])
    ds = load_dataset(path)
    assert ds.task == "regression" and ds.label_column == "progression" and ds.n_rows == 442
    assert np.array_equal(ds.y, db.target.astype(np.float32))
    assert ds.summary()["y_stats"]["mean"] == pytest.approx(float(db.target.mean()), rel=1e-6)
    np.savez(tmp_path / "diabetes.npz", X=db.data, y=db.target, feature_names=np.array(db.feature_names),
             label_column=np.array("progression"))
    assert load_dataset(tmp_path / "diabetes.npz").sha256 == ds.sha256
    again = load_dataset(write_csv(ds, tmp_path / "copy.csv"))
    assert again.sha256 == ds.sha256 and split_dataset(again, 1).to_dict() == split_dataset(ds, 1).to_dict()
