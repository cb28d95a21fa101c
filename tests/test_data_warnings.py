"""What real recordings hold imports and trains: constant and identical columns are warnings (windows and
tables), the long format trains as it imports, ``min_rows`` is an option, and the CLI summarizes windows.

Real hub homes (SQLite registry), real torch training of one or two epochs, real ONNX export and onnxruntime.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgeloop.hub.cli import parser as cli
from edgeloop.hub.datasets import (
    MIN_ROWS,
    MIN_ROWS_FLOOR,
    Dataset,
    generate_sensor_data,
    generate_sensor_windows,
    load_dataset,
    window_feature_names,
    write_csv,
)
from edgeloop.hub.errors import DataValidationError
from edgeloop.hub.services import Hub
from edgeloop.hub.training.models import standardization_stats

CHANNELS, STEPS = 3, 8


def _recorded_windows(n: int = 60, seed: int = 0) -> Dataset:
    """Windows like real sensors give: channel 1 sampled at half rate and held (steps 2k and 2k+1 are
    identical in every row), channel 2 stuck at one value."""
    ds = generate_sensor_windows(n, seed, channels=CHANNELS, steps=STEPS)
    W = ds.windows().copy()
    W[:, 1, 1::2] = W[:, 1, 0::2]
    W[:, 2, :] = 1.0
    return Dataset(ds.feature_names, W.reshape(n, -1), ds.y, ds.labels, window_shape=ds.window_shape,
                   source="recorded")


def _table_with_bad_columns(n: int, seed: int = 0) -> Dataset:
    """The sample sensors table plus a constant column and a copy of an existing column."""
    ds = generate_sensor_data(n, seed)
    X = np.column_stack([ds.X, np.full(n, 230.0), ds.X[:, 0]])
    names = [*ds.feature_names, "mains_v", "temperature_copy"]
    return Dataset(names, X, ds.y, ds.labels, source="table")


def _rules(items) -> list[str]:
    return [w["rule"] if isinstance(w, dict) else w.rule for w in items]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with Hub(tmp_path_factory.mktemp("warnings") / "home", actor="tester") as h:
        yield h


# --- constant and identical columns: warnings, then training ------------------------------------------
def test_windows_with_held_samples_and_a_stuck_channel_import_with_warnings_and_train(hub, tmp_path):
    path = write_csv(_recorded_windows(), tmp_path / "recorded.csv")
    rec = hub.import_dataset(path)
    assert rec["summary"]["window_shape"] == [CHANNELS, STEPS]
    constant, duplicate = rec["warnings"]
    assert constant["rule"] == "constant_column" and constant["columns"] == [f"ch2_t{t}" for t in range(STEPS)]
    assert "ch2 (all 8 steps)" in constant["detail"]
    assert duplicate["rule"] == "duplicate_column"
    assert duplicate["columns"] == [f"ch1_t{t}" for t in range(1, STEPS, 2)]
    assert duplicate["groups"][0] == ["ch1_t0", "ch1_t1"] and "hold their value" in duplicate["detail"]
    assert hub.get_dataset(rec["id"])["warnings"] == rec["warnings"]  # kept in the registry record
    assert hub.load_dataset(rec["id"]).summary()["warnings"] == rec["warnings"]  # and found again on reload

    build = hub.train(rec["id"], "recorded", {"epochs": 2}, quantize=False)
    assert build.run["status"] == "succeeded"
    assert np.isfinite(build.metrics["test_accuracy"]) and np.isfinite(build.metrics["test_loss"])
    # the exported model answers with finite probabilities, also when the stuck channel moves
    session = ort.InferenceSession(str(build.folder / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    X = _recorded_windows(12, seed=5).X.copy()
    X[:, 2 * STEPS:] = 1.5
    (probs,) = [o for o in session.run(None, {session.get_inputs()[0].name: X}) if o.ndim == 2]
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)


def test_tables_with_constant_and_copied_columns_import_with_warnings_and_train(hub, tmp_path):
    rec = hub.import_dataset(write_csv(_table_with_bad_columns(120), tmp_path / "table.csv"))
    assert _rules(rec["warnings"]) == ["constant_column", "duplicate_column"]
    assert rec["warnings"][0]["columns"] == ["mains_v"] and "230" in rec["warnings"][0]["detail"]
    assert rec["warnings"][1]["groups"] == [["temperature_c", "temperature_copy"]]
    build = hub.train(rec["id"], "table", {"epochs": 1}, quantize=False)
    assert build.run["status"] == "succeeded" and np.isfinite(build.metrics["test_accuracy"])


def test_a_constant_column_is_scaled_by_one_not_by_zero():
    X = np.column_stack([np.arange(10.0), np.full(10, 7.0)])
    mean, std = standardization_stats(X)
    assert mean[1] == 7.0 and std[1] == 1.0 and std[0] > 0
    W = _recorded_windows(20).X
    _, std = standardization_stats(W, (CHANNELS, STEPS), per="channel")
    assert np.all(std[2 * STEPS:] == 1.0) and np.all(std[:2 * STEPS] > 0)


# --- the long format: what imports, trains ------------------------------------------------------------
def _write_long(path: Path, ds: Dataset) -> Path:
    W = ds.windows()
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["window_id", "t", *(f"s{c}" for c in range(W.shape[1])), "label"])
        for i in range(ds.n_rows):
            for t in range(W.shape[2]):
                w.writerow([f"w{i:03d}", t, *(repr(float(W[i, c, t])) for c in range(W.shape[1])),
                            ds.labels[ds.y[i]]])
    return path


def test_long_format_imports_reloads_identically_and_trains(hub, tmp_path):
    ds = _recorded_windows(45, seed=2)
    rec = hub.import_dataset(_write_long(tmp_path / "long.csv", ds))
    assert rec["sha256"] == ds.sha256 and _rules(rec["warnings"]) == ["constant_column", "duplicate_column"]
    again = hub.load_dataset(rec["id"])  # how training reads it
    assert again.sha256 == ds.sha256 and again.window_shape == (CHANNELS, STEPS)
    build = hub.train(rec["id"], "long", {"epochs": 1}, quantize=False)
    assert build.run["status"] == "succeeded" and build.run["dataset_id"] == rec["id"]


# --- min_rows -----------------------------------------------------------------------------------------
def test_min_rows_is_an_option_with_a_floor_and_a_warning(hub, tmp_path):
    ds = generate_sensor_data(300, 1)
    keep = np.concatenate([np.nonzero(ds.y == c)[0][:6] for c in range(ds.n_classes)])  # 18 rows, 6 per class
    small = Dataset(ds.feature_names, ds.X[keep], ds.y[keep], ds.labels, source="site")
    path = write_csv(small, tmp_path / "site.csv")
    with pytest.raises(DataValidationError) as err:
        hub.import_dataset(path)  # the default stays 30
    assert [p.rule for p in err.value.problems] == ["too_few_rows"]
    assert f"at least {MIN_ROWS}" in str(err.value)
    with pytest.raises(DataValidationError) as err:
        load_dataset(path, min_rows=MIN_ROWS_FLOOR - 1)
    assert [p.rule for p in err.value.problems] == ["bad_min_rows"] and f"at least {MIN_ROWS_FLOOR}" in str(err.value)

    rec = hub.import_dataset(path, min_rows=10)
    (few,) = rec["warnings"]
    assert few["rule"] == "few_rows" and "18 row(s), fewer than the 30 recommended" in few["detail"]
    assert load_dataset(path, min_rows=18).warnings[0].rule == "few_rows"
    assert load_dataset(path, min_rows=18).min_rows == 18
    build = hub.train(rec["id"], "site", {"epochs": 1}, quantize=False)  # what imports, trains
    assert build.run["status"] == "succeeded"


# --- the command line: windows as channels × steps ----------------------------------------------------
def _cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_summarizes_windows_and_prints_warnings(capsys, tmp_path):
    home = tmp_path / "home"
    path = write_csv(_recorded_windows(), tmp_path / "recorded.csv")
    rc, out, err = _cli(capsys, "data", "import", path, "--home", home)
    assert rc == 0, err
    assert "features windows of 3 channels × 8 steps (ch0, ch1, ch2; 24 values)" in out
    assert "ch0_t5" not in out.replace("ch1_t1 = ch1_t0", "")  # no list of every feature name
    assert "warning  [constant_column]" in out and "warning  [duplicate_column]" in out
    rc, out, _ = _cli(capsys, "data", "import", path, "--home", home, "--json")
    doc = json.loads(out)
    assert doc["features"] == window_feature_names(CHANNELS, STEPS)  # --json keeps every name
    assert _rules(doc["warnings"]) == ["constant_column", "duplicate_column"]
    rc, out, _ = _cli(capsys, "data", "show", doc["id"], "--home", home)
    assert rc == 0 and "windows of 3 channels × 8 steps" in out and "warning  [constant_column]" in out
    assert "ch2_t7" not in out

    with Hub(home) as h:
        h.train(doc["id"], "w", {"epochs": 1}, quantize=False)
    rc, out, err = _cli(capsys, "bundle", "build", "w:1", "--out", tmp_path / "b", "--home", home, "--json")
    assert rc == 0, err
    bundle = json.loads(out)["path"]
    rc, out, _ = _cli(capsys, "bundle", "inspect", bundle)
    assert rc == 0 and "windows of 3 channels × 8 steps (ch0, ch1, ch2; 24 values)" in out
    assert "ch0_t7" not in out
    rc, out, _ = _cli(capsys, "bundle", "inspect", bundle, "--json")
    assert json.loads(out)["manifest"]["feature_names"] == window_feature_names(CHANNELS, STEPS)

    small = write_csv(generate_sensor_data(20, 3), tmp_path / "small.csv")
    rc, _, err = _cli(capsys, "data", "import", small, "--home", home)
    assert rc != 0 and "too_few_rows" in err
    rc, out, err = _cli(capsys, "data", "import", small, "--min-rows", "12", "--home", home)
    assert rc == 0, err
    assert "warning  [few_rows] 20 row(s)" in out and "features 6: temperature_c" in out
