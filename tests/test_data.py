"""Datasets: synthetic generator, content hash, CSV round trip, validation rules, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeloop.hub.datasets import (
    MIN_ROWS,
    SENSOR_FEATURES,
    SENSOR_LABELS,
    TEMPERATURE_SD,
    VIBRATION_SD,
    Dataset,
    Problem,
    dataset_sha256,
    generate_sensor_data,
    load_csv,
    sample_dataset_path,
    split_dataset,
    validate_dataset,
    write_csv,
)
from edgeloop.hub.errors import DataValidationError, HubError

# Content hash of the shipped hub/datasets/samples/sensors.csv. It depends only on the file
# and on dataset_sha256's canonical form, so it must not change across
# platforms or library versions; regenerate the file only on purpose.
SAMPLE_SHA256 = "80f7344afcdbf5611db6e60d77c72dbe2f762c5cb78eaa6245bc1b4d8cfcb7df"


# --------------------------------------------------------------------------
# generator and hash
# --------------------------------------------------------------------------


def test_generator_is_deterministic_and_seed_dependent():
    a, b = generate_sensor_data(500, 3), generate_sensor_data(500, 3)
    assert np.array_equal(a.X, b.X) and np.array_equal(a.y, b.y)
    assert a.sha256 == b.sha256 and len(a.sha256) == 64
    c = generate_sensor_data(500, 4)
    assert c.sha256 != a.sha256
    assert a.feature_names == SENSOR_FEATURES and a.labels == SENSOR_LABELS
    assert a.X.dtype == np.float32 and a.X.shape == (500, 6) and a.y.dtype == np.int64
    assert a.task == "classification" and a.label_column == "label"


def test_generator_classes_are_informative_but_overlap():
    ds = generate_sensor_data(4000, 11)
    counts = ds.class_counts()
    assert set(counts) == set(SENSOR_LABELS) and all(v > 500 for v in counts.values())
    t = SENSOR_FEATURES.index("temperature_c")
    v = SENSOR_FEATURES.index("vibration_rms")
    y = ds.y
    over, worn, normal = (SENSOR_LABELS.index(n) for n in ("overheating", "worn_bearing", "normal"))
    assert ds.X[y == over, t].mean() > ds.X[y == normal, t].mean() + 5
    assert ds.X[y == worn, v].mean() > 1.5 * ds.X[y == normal, v].mean()
    # overlap: some normal rows are hotter than the median overheating row
    assert (ds.X[y == normal, t] > np.median(ds.X[y == over, t])).mean() > 0.02


def test_shift_moves_temperature_and_vibration_only():
    base, drifted = generate_sensor_data(2000, 5), generate_sensor_data(2000, 5, shift=2.0)
    t, v = SENSOR_FEATURES.index("temperature_c"), SENSOR_FEATURES.index("vibration_rms")
    assert np.mean(drifted.X[:, t] - base.X[:, t]) == pytest.approx(2.0 * TEMPERATURE_SD, abs=0.01)
    assert np.mean(drifted.X[:, v] - base.X[:, v]) == pytest.approx(2.0 * VIBRATION_SD, abs=0.01)
    others = [i for i in range(6) if i not in (t, v)]
    assert np.array_equal(drifted.X[:, others], base.X[:, others])
    assert np.array_equal(drifted.y, base.y)
    assert drifted.sha256 != base.sha256


def test_sha256_covers_values_names_and_order():
    ds = generate_sensor_data(100, 1)
    args = (ds.feature_names, ds.X, ds.y, ds.labels, ds.label_column)
    assert dataset_sha256(*args) == ds.sha256
    X2 = ds.X.copy()
    X2[57, 2] = np.nextafter(X2[57, 2], np.float32(np.inf))  # one ulp
    assert dataset_sha256(ds.feature_names, X2, ds.y, ds.labels, "label") != ds.sha256
    renamed = ["temp"] + ds.feature_names[1:]
    assert dataset_sha256(renamed, ds.X, ds.y, ds.labels, "label") != ds.sha256
    assert dataset_sha256(ds.feature_names, ds.X[::-1], ds.y[::-1], ds.labels, "label") != ds.sha256
    # dtype/layout of the input arrays does not matter, only the values
    assert dataset_sha256(ds.feature_names, np.asfortranarray(ds.X.astype(np.float64)), ds.y.astype(np.int32),
                          ds.labels, "label") == ds.sha256


def test_shipped_sample_is_stable_and_reproducible():
    path = sample_dataset_path()
    assert path.is_file() and path.name == "sensors.csv"
    assert (path.parent / "README.md").is_file()
    ds = load_csv(path)
    assert ds.n_rows == 3000 and ds.feature_names == SENSOR_FEATURES and ds.labels == SENSOR_LABELS
    assert ds.sha256 == SAMPLE_SHA256
    assert generate_sensor_data(3000, 7).sha256 == SAMPLE_SHA256  # scripts/make_sample_data.py defaults
    assert SAMPLE_SHA256 in (path.parent / "README.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------
# CSV round trip
# --------------------------------------------------------------------------


def test_csv_round_trip_keeps_content_and_hash(tmp_path: Path):
    ds = generate_sensor_data(200, 9)
    path = write_csv(ds, tmp_path / "sub" / "d.csv")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(SENSOR_FEATURES + ["label"])
    assert lines[1].split(",")[-1] in SENSOR_LABELS
    back = load_csv(path)
    assert np.array_equal(back.X, ds.X) and np.array_equal(back.y, ds.y)
    assert back.labels == ds.labels and back.feature_names == ds.feature_names
    assert back.sha256 == ds.sha256 and back.source == str(path)


def test_csv_round_trip_of_awkward_floats_is_bitwise(tmp_path: Path):
    rng = np.random.default_rng(0)
    X = np.concatenate([
        rng.normal(0, 1, (40, 3)) * np.array([1e-30, 1.0, 1e30]),
        rng.standard_cauchy((40, 3)),
    ]).astype(np.float32)
    X[0] = [np.float32(0.1), np.float32(-0.0), np.finfo(np.float32).max]
    y = np.arange(80) % 2
    ds = Dataset(["a", "b", "c"], X, y, ["no", "yes"], label_column="target")
    back = load_csv(write_csv(ds, tmp_path / "x.csv"), label_column="target")
    assert np.array_equal(back.X.view(np.uint32), ds.X.view(np.uint32))
    assert back.sha256 == ds.sha256


def test_hash_ignores_csv_spelling(tmp_path: Path):
    rows = "\n".join(f"{i}.0,{(i * 7) % 13},{'x' if i % 3 else 'y'}" for i in range(40))
    plain = tmp_path / "plain.csv"
    plain.write_text("a,b,label\n" + rows + "\n", encoding="utf-8")
    fancy = tmp_path / "fancy.csv"
    fancy_rows = "\r\n".join(f'"{i}",{(i * 7) % 13}.000, {"x" if i % 3 else "y"} ' for i in range(40))
    fancy.write_bytes(("\ufeffa, b ,label\r\n" + fancy_rows + "\r\n\r\n").encode("utf-8"))
    assert load_csv(plain).sha256 == load_csv(fancy).sha256


def test_explicit_label_order_and_unknown_class(tmp_path: Path):
    ds = generate_sensor_data(60, 2)
    path = write_csv(ds, tmp_path / "d.csv")
    order = ["worn_bearing", "normal", "overheating"]
    back = load_csv(path, labels=order)
    assert back.labels == order
    assert [back.labels[i] for i in back.y] == [ds.labels[i] for i in ds.y]
    with pytest.raises(DataValidationError) as err:
        load_csv(path, labels=["normal", "overheating"])
    assert all(p.rule == "unknown_class" and p.column == "label" for p in err.value.problems)
    first_worn = 2 + int(np.nonzero(ds.y == SENSOR_LABELS.index("worn_bearing"))[0][0])
    assert err.value.problems[0].row == first_worn
    assert f"line {first_worn}, column 'label': [unknown_class]" in str(err.value)


# --------------------------------------------------------------------------
# validation rules: each names line (header = line 1), column and rule
# --------------------------------------------------------------------------


def _valid_rows(n: int = 40) -> list[list[str]]:
    """A valid table: a, b, c numeric (not constant, not duplicates), label with 2 classes."""
    return [[f"{i * 0.5:g}", f"{(i * 7) % 11}", f"{(i * i) % 17}", "ok" if i % 2 else "bad"] for i in range(n)]


def _load_invalid(tmp_path: Path, rows: list[list[str]], header: str = "a,b,c,label") -> DataValidationError:
    path = tmp_path / "bad.csv"
    path.write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(DataValidationError) as err:
        load_csv(path)
    exc = err.value
    assert isinstance(exc, HubError) and exc.code == "invalid_data"
    assert "header is line 1, the first data row is line 2" in str(exc)
    assert all(isinstance(p, Problem) for p in exc.problems)
    return exc


def _only(exc: DataValidationError, rule: str) -> Problem:
    found = [p for p in exc.problems if p.rule == rule]
    assert len(found) == 1, exc.problems
    return found[0]


def test_valid_rows_load(tmp_path: Path):
    path = tmp_path / "ok.csv"
    path.write_text("a,b,c,label\n" + "\n".join(",".join(r) for r in _valid_rows()) + "\n", encoding="utf-8")
    ds = load_csv(path)
    assert ds.n_rows == 40 and ds.labels == ["bad", "ok"] and ds.feature_names == ["a", "b", "c"]


def test_missing_value_names_line_and_column(tmp_path: Path):
    rows = _valid_rows()
    rows[3][1] = ""  # data row 4 -> file line 5
    rows[10][2] = "NA"  # file line 12
    exc = _load_invalid(tmp_path, rows)
    assert [(p.row, p.column, p.rule) for p in exc.problems] == [(5, "b", "missing_value"), (12, "c", "missing_value")]
    assert "line 5, column 'b': [missing_value]" in str(exc)
    assert "line 12, column 'c': [missing_value]" in str(exc)


def test_missing_label_is_reported(tmp_path: Path):
    rows = _valid_rows()
    rows[0][3] = " "
    p = _only(_load_invalid(tmp_path, rows), "missing_value")
    assert (p.row, p.column) == (2, "label")


def test_non_numeric_and_non_finite_cells(tmp_path: Path):
    rows = _valid_rows()
    rows[6][0] = "12,5".replace(",", ";")  # decimal comma typed with a semicolon
    rows[20][2] = "inf"
    rows[21][1] = "1e40"  # overflows float32
    exc = _load_invalid(tmp_path, rows)
    bad = _only(exc, "non_numeric")
    assert (bad.row, bad.column) == (8, "a") and "'12;5' is not a number" in bad.detail
    assert "line 8, column 'a': [non_numeric]" in str(exc)
    inf = sorted((p.row, p.column) for p in exc.problems if p.rule == "non_finite")
    assert inf == [(22, "c"), (23, "b")]


def _load_valid(tmp_path: Path, rows: list[list[str]], header: str = "a,b,c,label") -> Dataset:
    path = tmp_path / "ok.csv"
    path.write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n", encoding="utf-8")
    return load_csv(path)


def test_constant_column_is_a_warning(tmp_path: Path):
    rows = _valid_rows()
    for r in rows:
        r[1] = "3.5"
    ds = _load_valid(tmp_path, rows)
    (w,) = ds.warnings
    assert (w.rule, w.columns) == ("constant_column", ("b",)) and "3.5" in w.detail
    assert ds.summary()["warnings"] == [w.to_dict()]
    validate_dataset(ds)  # not an error for training either


def test_duplicate_columns_by_name_and_by_content(tmp_path: Path):
    rows = _valid_rows()
    for r in rows:
        r[2] = r[0]
    (w,) = _load_valid(tmp_path, rows).warnings
    assert (w.rule, w.columns, w.groups) == ("duplicate_column", ("c",), (("a", "c"),)) and "c = a" in w.detail
    assert _load_valid(tmp_path, _valid_rows()).warnings == []
    exc = _load_invalid(tmp_path, _valid_rows(), header="a,b,a,label")
    p = _only(exc, "duplicate_column_name")
    assert (p.row, p.column) == (1, "a")


def test_fewer_than_two_classes(tmp_path: Path):
    rows = _valid_rows()
    for r in rows:
        r[3] = "ok"
    p = _only(_load_invalid(tmp_path, rows), "too_few_classes")
    assert p.column == "label" and "'ok'" in p.detail


def test_too_few_rows_and_too_small_class(tmp_path: Path):
    exc = _load_invalid(tmp_path, _valid_rows(10))
    p = _only(exc, "too_few_rows")
    assert p.row is None and f"at least {MIN_ROWS}" in p.detail
    rows = _valid_rows()
    rows[0][3] = "rare"
    p = _only(_load_invalid(tmp_path, rows), "too_few_class_rows")
    assert p.column == "label" and "'rare'" in p.detail


def test_structural_problems(tmp_path: Path):
    exc = _load_invalid(tmp_path, _valid_rows(), header="a,b,c,target")
    p = _only(exc, "missing_label_column")
    assert (p.row, p.column) == (1, "label")
    rows = _valid_rows()
    rows[4] = rows[4][:3]
    p = _only(_load_invalid(tmp_path, rows), "wrong_cell_count")
    assert p.row == 6 and "3 cells" in p.detail


def test_every_problem_is_reported_and_lines_survive_blank_lines(tmp_path: Path):
    rows = [",".join(r) for r in _valid_rows()]
    rows[2] = "x,1,2,ok"  # file line 4
    rows.insert(5, "")  # a blank line: later rows move down one line
    rows[10] = rows[10].replace(rows[10].split(",")[1], "", 1)  # the row printed at file line 12
    path = tmp_path / "multi.csv"
    path.write_text("a,b,c,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(DataValidationError) as err:
        load_csv(path)
    found = {(p.row, p.column, p.rule) for p in err.value.problems}
    assert found == {(4, "a", "non_numeric"), (12, "b", "missing_value")}
    text = path.read_text(encoding="utf-8").splitlines()
    assert text[4 - 1].startswith("x,") and text[12 - 1].split(",")[1] == ""


def test_validate_dataset_rejects_bad_arrays():
    ds = generate_sensor_data(100, 3)
    ds.X[41, 4] = np.nan  # would be file line 43
    ds.X[:, 5] = 1500.0
    with pytest.raises(DataValidationError) as err:
        validate_dataset(ds)
    got = {(p.row, p.column, p.rule) for p in err.value.problems}
    assert got == {(43, "humidity_pct", "missing_value")}  # the constant rpm is a warning
    assert [(w.rule, w.columns) for w in ds.warnings] == [("constant_column", ("rpm",))]


def test_dataset_structure_is_checked():
    with pytest.raises(DataValidationError, match="feature names"):
        Dataset(["a"], np.zeros((3, 2)), np.zeros(3), ["x", "y"])
    with pytest.raises(DataValidationError, match=r"y must lie in \[0, 2\)"):
        Dataset(["a", "b"], np.zeros((3, 2)), np.array([0, 1, 2]), ["x", "y"])


def test_missing_file_and_empty_file(tmp_path: Path):
    with pytest.raises(DataValidationError, match="does not exist"):
        load_csv(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(DataValidationError, match="is empty"):
        load_csv(tmp_path / "empty.csv")
    with pytest.raises(DataValidationError, match="is a folder"):
        load_csv(tmp_path)
    (tmp_path / "latin1.csv").write_bytes("a,b,label\n1,2,gr\xfcn\n".encode("latin-1"))
    with pytest.raises(DataValidationError, match="not UTF-8") as err:
        load_csv(tmp_path / "latin1.csv")
    assert err.value.problems[0].rule == "not_utf8"


# --------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------


def test_split_is_deterministic_stratified_and_complete():
    ds = generate_sensor_data(1000, 2)
    a, b = split_dataset(ds, seed=3), split_dataset(ds, seed=3)
    for part in ("train", "val", "test"):
        assert np.array_equal(getattr(a, part), getattr(b, part))
    assert a.to_dict() == b.to_dict()
    everything = np.concatenate([a.train, a.val, a.test])
    assert np.array_equal(np.sort(everything), np.arange(ds.n_rows))  # disjoint and complete
    for c in range(ds.n_classes):
        n_c = int((ds.y == c).sum())
        for part, frac in zip((a.train, a.val, a.test), (0.7, 0.15, 0.15), strict=True):
            assert abs(int((ds.y[part] == c).sum()) - frac * n_c) <= 1
    other = split_dataset(ds, seed=4)
    assert not np.array_equal(other.test, a.test)
    d = a.to_dict()
    assert d["seed"] == 3 and d["fractions"] == [0.7, 0.15, 0.15]
    assert sum(d["counts"].values()) == 1000 and d["counts"] == a.counts()
    assert d["sha256"] == b.sha256() != other.sha256()


def test_split_keeps_tiny_classes_in_every_part_and_checks_fractions():
    X = np.arange(40, dtype=np.float32).reshape(20, 2) * np.array([1, 3], dtype=np.float32)
    y = np.array([0] * 17 + [1] * 3)
    ds = Dataset(["a", "b"], X, y, ["big", "small"])
    s = split_dataset(ds, seed=0)
    for part in (s.train, s.val, s.test):
        assert (ds.y[part] == 1).sum() == 1
    with pytest.raises(DataValidationError, match="fractions"):
        split_dataset(ds, 0, fractions=(0.8, 0.3, 0.1))
