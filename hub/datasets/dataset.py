"""Datasets for the model factory: load (CSV, NumPy .npz), infer/override a schema, validate, hash, split, generate.

Everything that reaches training goes through :class:`Dataset`, whose
construction checks the arrays' structure, and through the loaders
(:func:`load_dataset`, :func:`load_csv`, :func:`load_npz`) or
:func:`validate_dataset` (in-memory arrays), which refuse bad data loudly with a
:class:`hub.errors.DataValidationError` naming row, column and rule of every
problem. Row numbers are *file line numbers*: the header is line 1, the first
data row is line 2 -- what a user sees in an editor or spreadsheet. Arrays
(``.npz`` files, in-memory datasets) are numbered the same way: array row 0 is
line 2, as in :func:`write_csv`'s output.

Two tasks: ``"classification"`` (``y`` int64 indices into ``labels``) and
``"regression"`` (``y`` float32 targets, ``labels`` empty). Two shapes: tabular
rows, and multichannel sensor windows (``window_shape = (C, T)``, ``X`` flat
and channel-major; see :mod:`hub.windows`). What the columns mean is a
:class:`hub.schema.Schema`: inferred from the data and overridable by a small
JSON schema file (format in :mod:`hub.schema`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeloop.hub.datasets.problems import (
    ARRAY_ROW_CONVENTION,
    MAX_PROBLEMS,
    ROW_CONVENTION,
    Problem,
    validation_error,
)
from edgeloop.hub.datasets.schema import (
    DEFAULT_TIME_COLUMN,
    DEFAULT_WINDOW_ID_COLUMN,
    TASKS,
    FeatureSpec,
    Schema,
    infer_feature_dtype,
    infer_label_dtype,
    infer_task,
    infer_task_from_array,
    is_missing,
    is_number,
    load_schema_file,
    resolve_label_column,
    write_schema_file,
)
from edgeloop.hub.datasets.windows import (
    WINDOW_LABELS,
    detect_wide_windows,
    generate_sensor_windows,
    long_to_wide,
    window_feature_names,
)
from edgeloop.hub.errors import DataValidationError

__all__ = [
    "DATA_SUFFIXES",
    "SENSOR_FEATURES",
    "SENSOR_LABELS",
    "WINDOW_LABELS",
    "Dataset",
    "FeatureSpec",
    "Problem",
    "Schema",
    "Splits",
    "align_labels",
    "dataset_sha256",
    "generate_sensor_data",
    "generate_sensor_windows",
    "load_csv",
    "load_dataset",
    "load_npz",
    "load_schema_file",
    "sample_dataset_path",
    "split_dataset",
    "validate",
    "validate_dataset",
    "validate_labels_known",
    "write_csv",
    "write_npz",
    "write_schema_file",
]

# --------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------

MIN_ROWS = 30  # fewer rows than this cannot give meaningful train/val/test splits
MIN_CLASS_ROWS = 3  # a class needs one row in each of train, val and test
DATA_SUFFIXES = (".csv", ".npz")


@dataclass
class Dataset:
    """A classification or regression table held as arrays.

    ``X`` is float32 (n_rows, n_features). For ``task == "classification"``
    ``y`` holds int64 indices into ``labels``; for ``"regression"`` ``y`` holds
    float32 targets and ``labels`` is empty. ``window_shape`` is ``(C, T)`` for
    multichannel sensor windows (feature names ``ch{c}_t{t}``, channel-major, so
    ``X.reshape(n, C, T)`` is the (batch, channels, steps) view) and ``None``
    for tabular data. ``schema`` is the resolved :class:`hub.schema.Schema`
    (derived from the arrays when not given); ``line_numbers`` are the file
    lines the rows came from (``None``: row ``i`` is line ``i + 2``). Neither
    enters the hash.

    ``sha256`` is computed at construction from the content (see
    :func:`dataset_sha256`), so it identifies the data -- not the file layout --
    and is the same across runs and platforms. Treat the arrays as read-only:
    the hash is not recomputed if they are changed in place.
    """

    feature_names: list[str]
    X: np.ndarray
    y: np.ndarray
    labels: list[str]
    label_column: str = "label"
    task: str = "classification"
    source: str = ""
    window_shape: tuple[int, int] | None = None
    schema: Schema | None = field(default=None, repr=False)
    line_numbers: np.ndarray | None = field(default=None, repr=False)
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        self.feature_names = [str(n) for n in self.feature_names]
        self.labels = [str(lab) for lab in self.labels]
        self.X = np.ascontiguousarray(self.X, dtype=np.float32)
        y_dtype = np.float32 if self.task == "regression" else np.int64
        self.y = np.ascontiguousarray(self.y, dtype=y_dtype)
        if self.window_shape is not None:
            self.window_shape = (int(self.window_shape[0]), int(self.window_shape[1]))
        if self.line_numbers is not None:
            self.line_numbers = np.ascontiguousarray(self.line_numbers, dtype=np.int64)
        problems = _structure_problems(self)
        if not problems:
            self.schema = _schema_of_arrays(self).merged(self.schema)
            problems = _schema_consistency_problems(self)
        if problems:
            raise _validation_error(self.source or "dataset", problems)
        self.sha256 = dataset_sha256(self.feature_names, self.X, self.y, self.labels, self.label_column, self.task,
                                     window_shape=self.window_shape)

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def n_classes(self) -> int:
        """Number of classes (0 for regression)."""
        return len(self.labels)

    @property
    def is_windows(self) -> bool:
        return self.window_shape is not None

    def windows(self) -> np.ndarray:
        """``X`` as (n_rows, C, T) -- a view; only for window datasets."""
        if self.window_shape is None:
            raise ValueError(f"{self.source or 'dataset'} is tabular, not sensor windows")
        return self.X.reshape(self.n_rows, *self.window_shape)

    def row_number(self, index: int) -> int:
        """File line of row ``index`` (the first line of a window in long format)."""
        return int(self.line_numbers[index]) if self.line_numbers is not None else int(index) + 2

    def class_counts(self) -> dict[str, int]:
        """Rows per class name, in label order (empty for regression)."""
        if self.task != "classification":
            return {}
        counts = np.bincount(self.y, minlength=len(self.labels))
        return {lab: int(c) for lab, c in zip(self.labels, counts)}

    def y_stats(self) -> dict[str, float] | None:
        """Mean, std, min and max of a regression target (``None`` for classification)."""
        if self.task != "regression" or self.y.size == 0:
            return None
        y = self.y.astype(np.float64)
        return {"mean": float(y.mean()), "std": float(y.std()), "min": float(y.min()), "max": float(y.max())}

    def summary(self) -> dict:
        """JSON-ready description for run records and the GUI (no arrays)."""
        schema = self.schema or Schema()
        return {
            "source": self.source,
            "sha256": self.sha256,
            "task": self.task,
            "rows": self.n_rows,
            "n_features": self.n_features,
            "feature_names": list(self.feature_names),
            "window_shape": list(self.window_shape) if self.window_shape is not None else None,
            "label_column": self.label_column,
            "labels": list(self.labels),
            "class_counts": self.class_counts(),
            "y_stats": self.y_stats(),
            "ranges": schema.ranges(),
        }


def dataset_sha256(
    feature_names: Sequence[str],
    X: np.ndarray,
    y: np.ndarray,
    labels: Sequence[str],
    label_column: str,
    task: str = "classification",
    *,
    window_shape: Sequence[int] | None = None,
) -> str:
    """Content hash of a dataset, stable across runs, machines and numpy versions.

    It covers a canonical JSON header (names, labels, label column, task, shape
    and, for window data only, ``window_shape``; sorted keys, UTF-8) followed by
    the raw bytes of ``X`` as little-endian float32 and ``y`` as little-endian
    int64 (classification) or float32 (regression), in C order. CSV/npz
    formatting (quoting, number spelling, line endings, column order of window
    samples) does not change it; any change of a value, a name or the row order
    does.
    """
    X = np.ascontiguousarray(X, dtype="<f4")
    y = np.ascontiguousarray(y, dtype="<f4" if task == "regression" else "<i8")
    header = {
        "feature_names": list(feature_names),
        "labels": list(labels),
        "label_column": label_column,
        "task": task,
        "shape": [int(s) for s in X.shape],
    }
    if window_shape is not None:
        header["window_shape"] = [int(s) for s in window_shape]
    h = hashlib.sha256()
    h.update(b"edgeloop.dataset.v1\n")
    h.update(json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    h.update(b"\n")
    h.update(X.tobytes(order="C"))
    h.update(y.tobytes(order="C"))
    return h.hexdigest()


def _structure_problems(ds: Dataset) -> list[Problem]:
    """Shape/type consistency of a Dataset's fields (programming errors, not data errors)."""
    p: list[Problem] = []
    if ds.task not in TASKS:
        p.append(Problem(None, None, "unsupported_task", f"task {ds.task!r}; supported: {', '.join(TASKS)}"))
    if ds.X.ndim != 2:
        p.append(Problem(None, None, "bad_shape", f"X must be 2-D (rows, features), got shape {ds.X.shape}"))
        return p
    if ds.y.ndim != 1 or ds.y.shape[0] != ds.X.shape[0]:
        p.append(Problem(None, ds.label_column, "bad_shape", f"y must be 1-D with {ds.X.shape[0]} rows, got shape {ds.y.shape}"))
    if len(ds.feature_names) != ds.X.shape[1]:
        p.append(Problem(None, None, "bad_shape", f"{len(ds.feature_names)} feature names for {ds.X.shape[1]} columns"))
    if len(set(ds.feature_names)) != len(ds.feature_names):
        p.append(Problem(None, None, "duplicate_column_name", f"feature names repeat: {ds.feature_names}"))
    if ds.label_column in ds.feature_names:
        p.append(Problem(None, ds.label_column, "duplicate_column_name", "the label column is also a feature name"))
    if ds.task == "regression":
        if ds.labels:
            p.append(Problem(None, ds.label_column, "labels_for_regression",
                             f"a regression dataset has no class names, got {ds.labels}"))
    else:
        if len(set(ds.labels)) != len(ds.labels):
            p.append(Problem(None, ds.label_column, "duplicate_label", f"class names repeat: {ds.labels}"))
        if ds.y.size and ds.y.ndim == 1 and (ds.y.min() < 0 or ds.y.max() >= len(ds.labels)):
            p.append(Problem(None, ds.label_column, "bad_label_index", f"y must lie in [0, {len(ds.labels)})"))
    if ds.window_shape is not None:
        c, t = ds.window_shape
        if c < 1 or t < 1 or c * t != ds.X.shape[1]:
            p.append(Problem(None, None, "bad_window_shape",
                             f"window_shape {ds.window_shape} does not fit {ds.X.shape[1]} features (needs C*T)"))
        elif ds.feature_names != window_feature_names(c, t):
            p.append(Problem(None, None, "bad_window_shape",
                             "window features must be named ch{c}_t{t} in channel-major order (hub.windows.window_feature_names)"))
    if ds.line_numbers is not None and ds.line_numbers.shape != (ds.X.shape[0],):
        p.append(Problem(None, None, "bad_shape", f"line_numbers must have {ds.X.shape[0]} entries"))
    return p


def _schema_consistency_problems(ds: Dataset) -> list[Problem]:
    """A resolved schema must describe the dataset it belongs to."""
    p: list[Problem] = []
    schema = ds.schema
    assert schema is not None
    mismatch = [(key, getattr(schema, key), want) for key, want in (
        ("task", ds.task), ("label_column", ds.label_column), ("window_shape", ds.window_shape),
        ("labels", list(ds.labels) if ds.task == "classification" else None),
        ("layout", "windows" if ds.window_shape is not None else "tabular"),
    ) if getattr(schema, key) != want]
    for key, got, want in mismatch:
        p.append(Problem(None, None, "schema_mismatch", f"schema {key} is {got!r} but the dataset's is {want!r}"))
    expected = _schema_feature_keys(ds.feature_names, ds.window_shape)
    if list(schema.features) != expected:
        extra = [k for k in schema.features if k not in expected]
        p.append(Problem(None, None, "schema_mismatch",
                         f"schema features {extra[:8]} are not {'channels' if ds.window_shape else 'features'} of the dataset"))
    return p


def _schema_feature_keys(feature_names: Sequence[str], window_shape: tuple[int, int] | None) -> list[str]:
    """Names a resolved schema lists in ``features``: the features, or for window data the channels ``ch{c}``."""
    if window_shape is not None:
        return [f"ch{c}" for c in range(window_shape[0])]
    return list(feature_names)


def _column_specs(ds_names: Sequence[str], window_shape: tuple[int, int] | None, schema: Schema | None,
                  channel_aliases: Sequence[str] = ()) -> list[FeatureSpec | None]:
    """The schema's spec for each column of X (window data: the spec of the column's channel)."""
    if schema is None or not schema.features:
        return [None] * len(ds_names)
    if window_shape is None:
        return [schema.features.get(n) for n in ds_names]
    c_count, steps = window_shape
    per_channel = []
    for c in range(c_count):
        spec = schema.features.get(f"ch{c}") or FeatureSpec()
        if c < len(channel_aliases) and channel_aliases[c] in schema.features:
            spec = spec.merged(schema.features[channel_aliases[c]])
        per_channel.append(spec)
    return [per_channel[j // steps] for j in range(len(ds_names))]


def _schema_of_arrays(ds: Dataset) -> Schema:
    """The resolved schema of an in-memory dataset built without one."""
    if ds.window_shape is not None:
        c_count, steps = ds.window_shape
        features = {f"ch{c}": FeatureSpec(infer_feature_dtype(ds.X[:, c * steps:(c + 1) * steps]))
                    for c in range(c_count)}
    else:
        features = {n: FeatureSpec(infer_feature_dtype(ds.X[:, j])) for j, n in enumerate(ds.feature_names)}
    return Schema(
        label_column=ds.label_column, task=ds.task, features=features,
        labels=list(ds.labels) if ds.task == "classification" else None,
        label_dtype="string" if ds.task == "classification" else "float",
        layout="windows" if ds.window_shape is not None else "tabular",
        window_shape=ds.window_shape,
    )


# --------------------------------------------------------------------------
# Validation rules
# --------------------------------------------------------------------------

# Smallest magnitude that rounds to infinity in float32 (max + half an ulp).
_FLOAT32_OVERFLOW = 2.0**128 - 2.0**103


def _validation_error(source: str, problems: list[Problem], convention: str = ROW_CONVENTION,
                      headline: str | None = None) -> DataValidationError:
    return validation_error(source, problems[:MAX_PROBLEMS], convention=convention, headline=headline)


def _column_problems(names: Sequence[str], columns: Sequence[np.ndarray]) -> list[Problem]:
    """Constant and duplicate-content columns among fully numeric feature columns."""
    problems: list[Problem] = []
    seen: dict[bytes, str] = {}
    for name, col in zip(names, columns):
        if col.size and np.all(col == col[0]):
            problems.append(
                Problem(None, name, "constant_column", f"every value is {col[0]:g}; it carries no information -- drop the column")
            )
            continue
        key = np.ascontiguousarray(col, dtype="<f4").tobytes()
        if key in seen:
            problems.append(
                Problem(None, name, "duplicate_column", f"has exactly the same values as column {seen[key]!r}; drop one of them")
            )
        else:
            seen[key] = name
    return problems


def _spec_problems(names: Sequence[str], X: np.ndarray, lines: Sequence[int],
                   specs: Sequence[FeatureSpec | None]) -> list[Problem]:
    """``out_of_range`` and ``not_integer`` findings of the finite values of each column, row by row."""
    problems: list[Problem] = []
    hits: list[tuple[int, int, Problem]] = []
    for j, (name, spec) in enumerate(zip(names, specs)):
        if spec is None:
            continue
        col = X[:, j].astype(np.float64)
        finite = np.isfinite(col)
        if spec.has_range:
            lo = -np.inf if spec.min is None else spec.min
            hi = np.inf if spec.max is None else spec.max
            # compare as float32, the precision the data is kept in
            lo32, hi32 = np.float32(lo), np.float32(hi)
            bad = finite & ((X[:, j] < lo32) | (X[:, j] > hi32))
            for i in np.nonzero(bad)[0][:MAX_PROBLEMS]:
                hits.append((int(i), j, Problem(int(lines[i]), name, "out_of_range",
                                                f"value {float(X[i, j]):g} is outside the allowed range {spec.range_text()}")))
        if spec.dtype == "int":
            bad = finite & (col != np.round(col))
            for i in np.nonzero(bad)[0][:MAX_PROBLEMS]:
                hits.append((int(i), j, Problem(int(lines[i]), name, "not_integer",
                                                f"value {float(X[i, j]):g} is not a whole number; the schema declares dtype 'int'")))
    hits.sort(key=lambda h: (h[0], h[1]))
    problems += [h[2] for h in hits[:MAX_PROBLEMS]]
    return problems


def _label_problems(label_column: str, class_counts: dict[str, int], n_rows: int, min_rows: int,
                    unit: str = "data row") -> list[Problem]:
    problems: list[Problem] = []
    if n_rows < min_rows:
        problems.append(Problem(None, None, "too_few_rows", f"{n_rows} {unit}(s); at least {min_rows} are needed"))
    present = {k: v for k, v in class_counts.items() if v > 0}
    if len(present) < 2:
        found = ", ".join(repr(k) for k in present) or "none"
        problems.append(
            Problem(None, label_column, "too_few_classes", f"found {len(present)} class(es) ({found}); a classifier needs at least 2")
        )
    for name, count in present.items():
        if count < MIN_CLASS_ROWS:
            problems.append(
                Problem(
                    None,
                    label_column,
                    "too_few_class_rows",
                    f"class {name!r} has {count} {unit}(s); each class needs at least {MIN_CLASS_ROWS} (one per train/val/test split)",
                )
            )
    return problems


def _target_problems(label_column: str, y: np.ndarray, n_rows: int, min_rows: int, unit: str = "data row") -> list[Problem]:
    """Regression counterpart of :func:`_label_problems` (``y``: the finite targets)."""
    problems: list[Problem] = []
    if n_rows < min_rows:
        problems.append(Problem(None, None, "too_few_rows", f"{n_rows} {unit}(s); at least {min_rows} are needed"))
    if y.size and np.all(y == y[0]):
        problems.append(Problem(None, label_column, "constant_label",
                                f"every target value is {float(y[0]):g}; there is nothing to learn"))
    return problems


def _parse_cell(line: int, column: str, cell: str) -> tuple[float, Problem | None]:
    """The float32-safe value of a numeric cell, or NaN and the problem."""
    if is_missing(cell):
        return math.nan, Problem(line, column, "missing_value", f"the value is missing ({cell!r})")
    if not is_number(cell):
        if cell.lower().lstrip("+-") in ("inf", "infinity"):
            return math.nan, Problem(line, column, "non_finite", f"{cell!r} is not a finite number")
        return math.nan, Problem(line, column, "non_numeric", f"{cell!r} is not a number")
    value = float(cell)
    if not math.isfinite(value) or abs(value) >= _FLOAT32_OVERFLOW:
        return math.nan, Problem(line, column, "non_finite", f"{cell!r} is too large for a 32-bit float")
    return value, None


def _rows_of(ds: Dataset) -> np.ndarray:
    return ds.line_numbers if ds.line_numbers is not None else np.arange(ds.n_rows, dtype=np.int64) + 2


def validate_dataset(dataset: Dataset, *, min_rows: int = MIN_ROWS, schema: Schema | None = None,
                     training: bool = True) -> None:
    """Apply the value rules of the loaders to an in-memory :class:`Dataset`.

    Non-finite features (and regression targets), constant and duplicate
    columns, the schema's ranges and dtypes (``schema``, default
    ``dataset.schema``: pass the training data's schema to check new data
    against it), and the label rules (too few rows/classes/class rows; a
    constant regression target; these last and the constant/duplicate column
    rules are skipped with ``training=False``, for data to evaluate on). A
    schema for another task is ``task_mismatch``; a feature it names that the
    data lacks is ``unknown_feature``. Row numbers are ``dataset.line_numbers``
    when known, else the line the row would have in :func:`write_csv`'s output
    (row index 0 is line 2). Raises :class:`hub.errors.DataValidationError`.
    """
    problems: list[Problem] = []
    lines = _rows_of(dataset)
    bad = ~np.isfinite(dataset.X)
    if bad.any():
        for r, c in zip(*np.nonzero(bad)):
            v = dataset.X[r, c]
            rule = "missing_value" if np.isnan(v) else "non_finite"
            problems.append(Problem(int(lines[r]), dataset.feature_names[c], rule, f"the value is {v}"))
            if len(problems) >= MAX_PROBLEMS:
                break
    if dataset.task == "regression":
        for r in np.nonzero(~np.isfinite(dataset.y))[0][:MAX_PROBLEMS]:
            v = dataset.y[r]
            problems.append(Problem(int(lines[r]), dataset.label_column, "missing_value" if np.isnan(v) else "non_finite",
                                    f"the target is {v}"))
    ok_cols = [c for c in range(dataset.n_features) if not bad[:, c].any() and training]
    problems += _column_problems([dataset.feature_names[c] for c in ok_cols], [dataset.X[:, c] for c in ok_cols])
    schema = schema if schema is not None else dataset.schema
    if schema is not None and schema.task is not None and schema.task != dataset.task:
        problems.append(Problem(None, dataset.label_column, "task_mismatch",
                                f"the schema is for {schema.task} but this is {dataset.task} data"))
    if schema is not None and schema.features:
        keys = set(_schema_feature_keys(dataset.feature_names, dataset.window_shape))
        for name in schema.features:
            if name not in keys:
                problems.append(Problem(None, name, "unknown_feature",
                                        f"the schema names feature {name!r}, which this data does not have"))
        specs = _column_specs(dataset.feature_names, dataset.window_shape, schema)
        problems += _spec_problems(dataset.feature_names, dataset.X, lines, specs)
    if training and dataset.task == "regression":
        problems += _target_problems(dataset.label_column, dataset.y[np.isfinite(dataset.y)], dataset.n_rows, min_rows)
    elif training:
        problems += _label_problems(dataset.label_column, dataset.class_counts(), dataset.n_rows, min_rows)
    if problems:
        raise _validation_error(dataset.source or "dataset", problems)


def validate_labels_known(dataset: Dataset, known_labels: Sequence[str]) -> None:
    """Refuse data whose classes were not seen in training (for fine-tuning or evaluating a model).

    Every row whose class name is not in ``known_labels`` is a problem with
    rule ``unseen_label`` (row, label column, class); the message starts by
    naming the unseen classes and their rows. A regression dataset has no
    classes: it passes when ``known_labels`` is empty and is refused
    (``task_mismatch``) otherwise. Raises :class:`hub.errors.DataValidationError`.
    """
    known = [str(k) for k in known_labels]
    source = dataset.source or "dataset"
    if dataset.task != "classification":
        if known:
            raise _validation_error(source, [Problem(None, dataset.label_column, "task_mismatch",
                                                     f"this is {dataset.task} data but the model predicts classes {known}")])
        return
    known_set = set(known)
    unseen_idx = [c for c, lab in enumerate(dataset.labels) if lab not in known_set]
    if not unseen_idx:
        return
    lines = _rows_of(dataset)
    rows = np.nonzero(np.isin(dataset.y, unseen_idx))[0]
    if rows.size == 0:
        return  # unseen classes are only in the class list, no row has them
    problems = [Problem(int(lines[i]), dataset.label_column, "unseen_label",
                        f"class {dataset.labels[dataset.y[i]]!r} was not seen in training (known classes: {known})")
                for i in rows[:MAX_PROBLEMS]]
    parts = []
    for c in unseen_idx:
        where = [int(lines[i]) for i in np.nonzero(dataset.y == c)[0]]
        if where:
            shown = ", ".join(map(str, where[:10])) + (f", ... ({len(where)} rows)" if len(where) > 10 else "")
            parts.append(f"{dataset.labels[c]!r} ({'line' if len(where) == 1 else 'lines'} {shown})")
    headline = f"{source} has label(s) unseen in training: {'; '.join(parts)}. The model knows {known}."
    raise _validation_error(source, problems, headline=headline)


def align_labels(dataset: Dataset, known_labels: Sequence[str]) -> Dataset:
    """``dataset`` with its class indices re-numbered to ``known_labels`` (the model's order).

    Checks :func:`validate_labels_known` first; the result's ``labels`` is
    ``known_labels`` (so its hash differs when the order does).
    """
    validate_labels_known(dataset, known_labels)
    if dataset.task != "classification" or list(dataset.labels) == [str(k) for k in known_labels]:
        return dataset
    known = [str(k) for k in known_labels]
    index = {lab: i for i, lab in enumerate(known)}
    remap = np.array([index.get(lab, -1) for lab in dataset.labels], dtype=np.int64)
    schema = (dataset.schema or Schema()).merged(Schema(labels=known))
    return Dataset(dataset.feature_names, dataset.X, remap[dataset.y], known, label_column=dataset.label_column,
                   task=dataset.task, source=dataset.source, window_shape=dataset.window_shape, schema=schema,
                   line_numbers=dataset.line_numbers)


# --------------------------------------------------------------------------
# From parsed cells to a Dataset (shared by the CSV and npz loaders)
# --------------------------------------------------------------------------


@dataclass
class _Table:
    """What a loader parsed: features (NaN where a cell was bad) and labels, with their file lines."""

    source: str
    convention: str
    names: list[str]  # feature columns (long format: channel columns), file order
    X: np.ndarray  # float32 (n_rows, len(names)), the rows that could be parsed
    lines: list[int]  # file line of each row of X
    col_ok: list[bool]  # no bad cell in the column
    label_column: str
    task: str
    label_dtype: str
    texts: list[str | None] | None = None  # classification: class name per row of X (None: bad)
    targets: np.ndarray | None = None  # regression: float64 per row of X (NaN: bad)
    class_list: list[str] | None = None  # class order from the file (npz labels array)
    wide_shape: tuple[int, int] | None = None
    wide_order: list[int] | None = None
    window_ids: list[str | None] | None = None  # long format: window id per row of X
    steps: list[float] | None = None  # long format with a time column
    window_id_column: str | None = None
    time_column: str | None = None
    problems: list[Problem] = field(default_factory=list)
    n_rows_total: int | None = None  # rows in the file, including unparseable ones
    skip_column_rules: bool = False  # rows with wrong cell counts: column-level rules are meaningless
    skip_label_rules: bool = False  # no usable label column / y array


def _finish(tab: _Table, override: Schema, min_rows: int, training: bool = True) -> Dataset:
    """Apply column, schema, window and label rules to a parsed table; build the Dataset or raise.

    ``training=False`` (data to evaluate or predict on) skips the rules that only matter for
    training: constant/duplicate columns and the row/class counts.
    """
    problems = list(tab.problems)
    long = tab.window_ids is not None
    n_names = len(tab.names)
    # The names a schema may key its features by, and each column's spec.
    if long:
        allowed = {f"ch{c}" for c in range(n_names)} | set(tab.names)
        specs = _column_specs([f"ch{c}_t0" for c in range(n_names)], (n_names, 1), override, tab.names)
    elif tab.wide_shape is not None and tab.wide_order is not None:
        c_count, n_steps = tab.wide_shape
        allowed = {f"ch{c}" for c in range(c_count)}
        canonical = _column_specs(window_feature_names(c_count, n_steps), tab.wide_shape, override)
        specs = [None] * n_names
        for k, j in enumerate(tab.wide_order):
            specs[j] = canonical[k]
    else:
        allowed = set(tab.names)
        specs = _column_specs(tab.names, None, override)
    for name in override.features:
        if name not in allowed:
            shown = sorted(allowed)[:10]
            problems.append(Problem(None, name, "unknown_feature",
                                    f"the schema names feature {name!r}, which is not in the data "
                                    f"(features: {shown}{' ...' if len(allowed) > 10 else ''})"))
    if training and not tab.skip_column_rules and tab.X.shape[0]:
        ok = [j for j, good in enumerate(tab.col_ok) if good]
        problems += _column_problems([tab.names[j] for j in ok], [tab.X[:, j] for j in ok])
    problems += _spec_problems(tab.names, tab.X, tab.lines, specs)

    classification = tab.task == "classification"
    if classification:
        row_labels: list = list(tab.texts) if tab.texts is not None else [None] * len(tab.lines)
    else:
        row_labels = list(tab.targets) if tab.targets is not None else [math.nan] * len(tab.lines)
    lines = list(tab.lines)
    n_total = tab.n_rows_total if tab.n_rows_total is not None else len(lines)
    X = tab.X
    unit = "data row"
    window_shape = tab.wide_shape
    label_rules = not tab.skip_label_rules
    if long:
        if tab.skip_column_rules:
            label_rules = False
        else:
            keep = [i for i, wid in enumerate(tab.window_ids) if wid is not None]
            expected = override.window_shape[1] if override.window_shape is not None else None
            X, row_labels, lines, wproblems = long_to_wide(
                [tab.window_ids[i] for i in keep], [tab.steps[i] for i in keep] if tab.steps is not None else None,
                tab.X[keep], [row_labels[i] for i in keep], [tab.lines[i] for i in keep],
                window_id_column=tab.window_id_column or DEFAULT_WINDOW_ID_COLUMN, time_column=tab.time_column,
                label_column=tab.label_column, expected_steps=expected)
            problems += wproblems
            unit, n_total = "window", len(lines)
            if wproblems:
                label_rules = False  # the windows are not known yet
            elif X.shape[0]:
                window_shape = (n_names, X.shape[1] // max(n_names, 1))
    elif tab.wide_order is not None and tab.wide_shape is not None:
        X = tab.X[:, tab.wide_order]
    if override.window_shape is not None and window_shape is not None and tuple(override.window_shape) != window_shape:
        problems.append(Problem(None, None, "window_shape_mismatch",
                                f"the data holds windows of {window_shape[0]} channel(s) × {window_shape[1]} step(s); "
                                f"the schema expects {list(override.window_shape)}"))

    labels: list[str] = []
    index: dict[str, int] = {}
    if label_rules:
        if classification:
            counts: dict[str, int] = {}
            for lab in row_labels:
                if lab is not None:
                    counts[lab] = counts.get(lab, 0) + 1
            labels = list(override.labels or tab.class_list or sorted(counts))
            index = {lab: i for i, lab in enumerate(labels)}
            for line, lab in zip(lines, row_labels):
                if lab is not None and lab not in index:
                    problems.append(Problem(line, tab.label_column, "unknown_class", f"class {lab!r} is not one of {labels}"))
            if training:
                problems += _label_problems(tab.label_column, counts, n_total, min_rows, unit)
        elif training:
            targets = np.array(row_labels, dtype=np.float64)
            problems += _target_problems(tab.label_column, targets[np.isfinite(targets)], n_total, min_rows, unit)
    if problems:
        raise _validation_error(tab.source, problems, tab.convention)

    n = len(lines)
    if classification:
        y = np.array([index[lab] for lab in row_labels], dtype=np.int64)
    else:
        y = np.array(row_labels, dtype=np.float64).astype(np.float32)
    features: dict[str, FeatureSpec] = {}
    if window_shape is not None:
        names = window_feature_names(*window_shape)
        c_count, n_steps = window_shape
        per_channel = specs if long else _column_specs(names, window_shape, override)[::n_steps]
        for c in range(c_count):
            spec = per_channel[c] or FeatureSpec()
            dtype = spec.dtype or infer_feature_dtype(X[:, c * n_steps:(c + 1) * n_steps])
            features[f"ch{c}"] = FeatureSpec(dtype, spec.min, spec.max)
    else:
        names = list(tab.names)
        for j, name in enumerate(names):
            spec = specs[j] or FeatureSpec()
            features[name] = FeatureSpec(spec.dtype or infer_feature_dtype(X[:, j]), spec.min, spec.max)
    resolved = Schema(
        label_column=tab.label_column, task=tab.task, features=features,
        labels=labels if classification else None,
        label_dtype=override.label_dtype or tab.label_dtype,
        ignore_columns=override.ignore_columns,
        layout="windows" if window_shape is not None else "tabular",
        window_id_column=tab.window_id_column if long else None,
        time_column=tab.time_column if long else None,
        window_shape=window_shape,
    )
    return Dataset(names, np.asarray(X).reshape(n, len(names)), y, labels, label_column=tab.label_column,
                   task=tab.task, source=tab.source, window_shape=window_shape, schema=resolved,
                   line_numbers=np.asarray(lines, dtype=np.int64))


def _table_from_cells(header: Sequence[str], rows: Sequence[tuple[int, Sequence[str]]], override: Schema,
                      source: str) -> _Table:
    """Parse CSV cells (``rows``: (file line, cells)) into a :class:`_Table`, collecting cell-level problems."""
    problems: list[Problem] = []
    names = [h.strip() for h in header]
    for i, name in enumerate(names):
        if not name:
            problems.append(Problem(1, f"#{i + 1}", "empty_column_name", f"header cell {i + 1} is empty; name every column"))
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            problems.append(Problem(1, name, "duplicate_column_name", "this column name appears more than once in the header"))
        seen.add(name)
    ignored = set(override.ignore_columns or ())
    for name in override.ignore_columns or ():
        if name not in names:
            problems.append(Problem(1, name, "unknown_column", "the schema's ignore_columns names a column the file does not have"))
    kept = [i for i, n in enumerate(names) if n not in ignored]
    kept_names = [names[i] for i in kept]

    label_column = resolve_label_column(kept_names, override.label_column)
    if label_column not in kept_names:
        problems.append(Problem(1, label_column, "missing_label_column", f"no column named {label_column!r}; header has {names}"))
    label_idx = names.index(label_column) if label_column in kept_names else None

    wid_col = override.window_id_column or DEFAULT_WINDOW_ID_COLUMN
    long = override.layout != "tabular" and wid_col in kept_names and wid_col != label_column
    wid_idx = names.index(wid_col) if long else None
    time_col = override.time_column or DEFAULT_TIME_COLUMN
    time_idx = names.index(time_col) if long and time_col in kept_names and time_col != label_column else None
    feature_idx = [i for i in kept if i not in (label_idx, wid_idx, time_idx)]
    if not feature_idx:
        problems.append(Problem(1, None, "no_features", "there are no feature columns besides the label"))
    feature_names = [names[i] for i in feature_idx]

    wide_shape, wide_order = None, None
    if not long and override.layout != "tabular" and feature_names:
        wide_shape, wide_order, wproblems = detect_wide_windows(feature_names)
        problems += wproblems
    if override.layout == "windows" and not long and wide_shape is None and feature_names:
        problems.append(Problem(1, None, "not_windows",
                                f"the schema says layout 'windows' but there is no {wid_col!r} column (long format) "
                                "and the feature columns are not named ch{c}_t{t} (wide format)"))

    # Task: declared, implied by a class list, or inferred from the label cells.
    label_cells = [cells[label_idx] for _, cells in rows if label_idx is not None and len(cells) == len(names)]
    if override.task is not None:
        task = override.task
        label_dtype = "float" if task == "regression" else infer_label_dtype(label_cells)
    elif override.labels is not None or label_idx is None:
        task, label_dtype = "classification", infer_label_dtype(label_cells)
    else:
        task, label_dtype = infer_task(label_cells)

    n_rows = 0
    values: list[list[float]] = []
    lines: list[int] = []
    col_ok = [True] * len(feature_idx)
    texts: list[str | None] = []
    targets: list[float] = []
    window_ids: list[str | None] = []
    steps: list[float] = []
    wrong_counts = False
    for line, cells in rows:
        n_rows += 1
        if len(problems) >= MAX_PROBLEMS:
            continue  # keep counting rows only
        if len(cells) != len(names):
            problems.append(Problem(line, None, "wrong_cell_count", f"has {len(cells)} cells, the header has {len(names)}"))
            wrong_counts = True
            continue
        lab = cells[label_idx].strip() if label_idx is not None else ""
        if task == "classification":
            if label_idx is not None and is_missing(lab):
                problems.append(Problem(line, label_column, "missing_value", "the label is empty"))
            texts.append(None if label_idx is None or is_missing(lab) else lab)
        elif label_idx is not None:
            value, problem = _parse_cell(line, label_column, lab)
            if problem is not None:
                problems.append(problem)
            targets.append(value)
        if wid_idx is not None:
            wid = cells[wid_idx].strip()
            if is_missing(wid):
                problems.append(Problem(line, wid_col, "missing_value", "the window id is empty"))
            window_ids.append(None if is_missing(wid) else wid)
        if time_idx is not None:
            value, problem = _parse_cell(line, time_col, cells[time_idx].strip())
            if problem is not None:
                problems.append(problem)
            steps.append(value)
        row = []
        for j, ci in enumerate(feature_idx):
            value, problem = _parse_cell(line, names[ci], cells[ci].strip())
            if problem is not None:
                problems.append(problem)
                col_ok[j] = False
            row.append(value)
        values.append(row)
        lines.append(line)
    X = np.array(values, dtype=np.float64).reshape(len(values), len(feature_idx)).astype(np.float32)
    return _Table(
        source=source, convention=ROW_CONVENTION, names=feature_names, X=X, lines=lines,
        col_ok=col_ok, label_column=label_column, task=task, label_dtype=label_dtype,
        texts=texts if task == "classification" else None,
        targets=np.array(targets, dtype=np.float64) if task == "regression" and label_idx is not None else None,
        wide_shape=wide_shape, wide_order=wide_order,
        window_ids=window_ids if long else None, steps=steps if time_idx is not None else None,
        window_id_column=wid_col if long else None, time_column=time_col if time_idx is not None else None,
        problems=problems, n_rows_total=n_rows, skip_column_rules=wrong_counts or len(problems) >= MAX_PROBLEMS,
        skip_label_rules=label_idx is None,
    )


def validate(
    header: Sequence[str],
    rows: Iterable[tuple[int, Sequence[str]]],
    *,
    label_column: str | None = "label",
    min_rows: int = MIN_ROWS,
    source: str = "data",
    schema: Schema | None = None,
    training: bool = True,
) -> None:
    """Check raw CSV cells; raise on any problem.

    ``rows`` yields ``(line_number, cells)`` with line numbers as in the file
    (header = line 1). ``schema`` (optional) overrides what is inferred; its
    ``label_column`` wins over ``label_column`` (``None``: infer). Rules:
    ``missing_label_column``, ``empty_column_name``, ``duplicate_column_name``,
    ``no_features``, ``wrong_cell_count``, ``missing_value`` (empty, NA, NaN,
    null, ...), ``non_numeric``, ``non_finite`` (inf), ``constant_column``,
    ``duplicate_column`` (same values as another column), ``too_few_rows``,
    ``too_few_classes``, ``too_few_class_rows``, ``unknown_class``; for
    regression ``constant_label``; with a schema ``out_of_range``,
    ``not_integer``, ``unknown_feature``, ``unknown_column``; for windows
    ``mixed_window_columns``, ``incomplete_window_columns``, ``not_windows``,
    ``ragged_window``, ``duplicate_step``, ``inconsistent_window_label`` and
    ``window_shape_mismatch``. Every problem found is reported, not just the first.

    Raises :class:`hub.errors.DataValidationError` whose ``problems`` is a list
    of :class:`Problem`.
    """
    override = Schema(label_column=label_column).merged(schema)
    _finish(_table_from_cells(header, list(rows), override, source), override, min_rows, training)


# --------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------


def _format_column(col: np.ndarray) -> list[str]:
    """Shortest decimal spelling of each float32 that reads back to the same float32.

    Reading goes through float64 (``float(text)``) then float32; the shortest
    float32 spelling almost always survives that double rounding, and where it
    would not, the exact float64 spelling (``repr``) is used instead.
    """
    col = np.asarray(col, dtype=np.float32)
    texts = [np.format_float_positional(v, unique=True, trim="-") for v in col]
    back = np.array([float(t) for t in texts], dtype=np.float64).astype(np.float32)
    for i in np.nonzero(back.view(np.uint32) != col.view(np.uint32))[0]:
        texts[i] = repr(float(col[i]))
    return texts


def write_csv(dataset: Dataset, path: str | Path) -> Path:
    """Write ``dataset`` as UTF-8 CSV: a header row, features then the label column.

    The label column holds class names (classification) or the targets
    (regression); window data are written in the wide ``ch{c}_t{t}`` layout.
    Numbers are written so that :func:`load_csv` reads back identical float32
    values, hence the same :attr:`Dataset.sha256` -- for a regression target
    with at most 20 distinct whole values pass the schema (``task``) when
    loading, or save ``dataset.schema`` with :func:`write_schema_file` next to it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = [_format_column(dataset.X[:, j]) for j in range(dataset.n_features)]
    if dataset.task == "regression":
        label_text = _format_column(dataset.y)
    else:
        label_text = [dataset.labels[i] for i in dataset.y]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow([*dataset.feature_names, dataset.label_column])
        for i in range(dataset.n_rows):
            w.writerow([c[i] for c in cols] + [label_text[i]])
    tmp.replace(path)
    return path


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    source = str(path)
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise DataValidationError(
                    f"{source} is empty; expected a header row and data rows ({ROW_CONVENTION}).",
                    [Problem(None, None, "empty_file", "the file has no header row")],
                )
            rows: list[tuple[int, list[str]]] = []
            for cells in reader:
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue  # blank line
                rows.append((reader.line_num, cells))
    except FileNotFoundError as exc:
        raise _file_error(source, "file_not_found", "does not exist; check the path.", exc) from exc
    except UnicodeDecodeError as exc:
        raise _file_error(source, "not_utf8", f"is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                          "save it as UTF-8 CSV.", exc) from exc
    except IsADirectoryError as exc:
        raise _file_error(source, "not_a_file", "is a folder; give the path of a CSV file.", exc) from exc
    except PermissionError as exc:
        raise _file_error(source, "not_readable", "cannot be read (permission denied); check the file's "
                          "permissions.", exc) from exc
    except csv.Error as exc:
        raise _file_error(source, "bad_csv", f"is not readable CSV: {exc}.", exc) from exc
    return header, rows


def _overrides(schema: Schema | None, schema_file: str | Path | None) -> Schema:
    """The schema file's fields, then ``schema``'s on top."""
    base = load_schema_file(schema_file) if schema_file is not None else Schema()
    return base.merged(schema)


def load_csv(
    path: str | Path,
    label_column: str = "label",
    *,
    labels: Sequence[str] | None = None,
    min_rows: int = MIN_ROWS,
    task: str | None = None,
    schema: Schema | None = None,
    schema_file: str | Path | None = None,
    training: bool = True,
) -> Dataset:
    """Read and validate a CSV (header row; numeric features; class names or numeric targets in ``label_column``).

    Class indices follow ``labels`` when given (a class not listed there is a
    problem; an empty list counts as not given), else the sorted class names.
    The task is ``task`` when given, else inferred (see :mod:`hub.schema`);
    window layouts (wide ``ch{c}_t{t}`` columns, long format with a
    ``window_id`` column) are detected. A schema file and/or ``schema``
    override the inferred schema -- including ``label_column``, which then wins
    over this function's default -- while ``labels`` and ``task`` win over both.
    ``training=False``: see :func:`load_dataset`.
    Raises :class:`hub.errors.DataValidationError` listing every problem with
    its line number (header = line 1), column and rule; nothing is returned
    unless the whole file is valid.
    """
    path = Path(path)
    override = Schema(label_column=label_column).merged(_overrides(schema, schema_file))
    override = override.merged(Schema(labels=list(labels) if labels else None, task=task))
    header, rows = _read_csv(path)
    return _finish(_table_from_cells(header, rows, override, str(path)), override, min_rows, training)


# --------------------------------------------------------------------------
# NumPy .npz
# --------------------------------------------------------------------------


def write_npz(dataset: Dataset, path: str | Path) -> Path:
    """Write ``dataset`` as an uncompressed ``.npz`` that :func:`load_npz` reads back with the same hash.

    Arrays: ``X`` (n, F) float32, ``y`` (int64 class indices or float32
    targets), ``feature_names``, ``labels`` (classification only) and the
    0-d/1-d metadata ``label_column``, ``task`` and (window data)
    ``window_shape``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "X": dataset.X,
        "y": dataset.y,
        "feature_names": np.array(dataset.feature_names, dtype=str),
        "label_column": np.array(dataset.label_column, dtype=str),
        "task": np.array(dataset.task, dtype=str),
    }
    if dataset.task == "classification":
        arrays["labels"] = np.array(dataset.labels, dtype=str)
    if dataset.window_shape is not None:
        arrays["window_shape"] = np.array(dataset.window_shape, dtype=np.int64)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, **arrays)
    tmp.replace(path)
    return path


def _file_error(source: str, rule: str, detail: str, exc: BaseException | None = None) -> DataValidationError:
    """A data file that cannot be read: the message names the file, the problem carries the rule."""
    return DataValidationError(f"{source} {detail}", [Problem(None, None, rule, str(exc) if exc else detail)])


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    source = str(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise _file_error(source, "file_not_found", "does not exist; check the path.", exc) from exc
    except IsADirectoryError as exc:
        raise _file_error(source, "not_a_file", "is a folder; give the path of a .npz file.", exc) from exc
    except PermissionError as exc:
        raise _file_error(source, "not_readable", "cannot be read (permission denied).", exc) from exc
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _file_error(source, "bad_npz", f"is not a NumPy .npz archive ({exc}); save it with numpy.savez(path, X=..., y=...).", exc) from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise _file_error(source, "bad_npz", "holds a single .npy array; save X and y with numpy.savez(path, X=..., y=...).")
    out: dict[str, np.ndarray] = {}
    with loaded:
        for key in loaded.files:
            try:
                out[key] = loaded[key]
            except (ValueError, OSError, zipfile.BadZipFile) as exc:
                raise _file_error(source, "bad_npz", f"array {key!r} cannot be read without pickle ({exc}); "
                                 "store numbers and strings only.", exc) from exc
    return out


def _npz_text(a: np.ndarray) -> list[str] | None:
    if a.dtype.kind == "U":
        return [str(s) for s in a.reshape(-1)]
    if a.dtype.kind == "S":
        return [s.decode("utf-8", "replace") for s in a.reshape(-1)]
    return None


def load_npz(
    path: str | Path,
    *,
    schema: Schema | None = None,
    schema_file: str | Path | None = None,
    min_rows: int = MIN_ROWS,
    training: bool = True,
) -> Dataset:
    """Read and validate a NumPy ``.npz`` dataset.

    Arrays: ``X`` (required): numeric (n, F), or (n, C, T) for sensor windows
    (flattened channel-major); ``y`` (required): n class names (strings), class
    values (integers), class indices into ``labels``, or regression targets;
    optional ``feature_names`` (F strings; ``ch{c}_t{t}`` names are detected as
    windows; default ``x0, x1, …``), ``labels`` (class names; ``y`` then holds
    indices), and the metadata :func:`write_npz` stores (``label_column``,
    ``task``, ``window_shape``), which a schema file / ``schema`` override.
    Other arrays are ignored. Problems name rows as lines of the equivalent CSV
    (array row 0 is line 2). Raises :class:`hub.errors.DataValidationError`.
    """
    path = Path(path)
    source = str(path)
    arrays = _read_npz(path)
    problems: list[Problem] = []
    bad = lambda key, detail: problems.append(Problem(None, key, "bad_npz", detail))
    for key in ("X", "y"):
        if key not in arrays:
            bad(key, f"the archive has no array {key!r} (it has {sorted(arrays)}); save X and y with numpy.savez")
    if problems:
        raise _validation_error(source, problems, ARRAY_ROW_CONVENTION)

    meta: dict = {}
    for key in ("label_column", "task"):
        if key in arrays:
            text = _npz_text(arrays[key])
            if text is None or len(text) != 1:
                bad(key, f"must be a single string, got {arrays[key]!r}")
            elif key == "task" and text[0] not in TASKS:
                bad(key, f"must be one of {TASKS}, got {text[0]!r}")
            else:
                meta[key] = text[0]
    if "window_shape" in arrays:
        ws = arrays["window_shape"]
        if ws.dtype.kind not in "iu" or ws.shape != (2,) or (ws < 1).any():
            bad("window_shape", f"must be two positive integers (channels, steps), got {ws!r}")
        else:
            meta["window_shape"] = (int(ws[0]), int(ws[1]))
    override = Schema(**meta).merged(_overrides(schema, schema_file))

    X = arrays["X"]
    y = arrays["y"]
    if X.dtype.kind not in "biuf":
        bad("X", f"must be numeric, got dtype {X.dtype}")
    if X.ndim not in (2, 3):
        bad("X", f"must be (rows, features) or (rows, channels, steps), got shape {X.shape}")
    if problems:
        raise _validation_error(source, problems, ARRAY_ROW_CONVENTION)
    n = int(X.shape[0])
    if y.shape != (n,):
        bad("y", f"must be 1-D with one entry per row of X ({n}), got shape {y.shape}")
    window_shape = (int(X.shape[1]), int(X.shape[2])) if X.ndim == 3 else None
    Xf = X.reshape(n, -1).astype(np.float64)
    names: list[str] | None = None
    if "feature_names" in arrays:
        names = _npz_text(arrays["feature_names"])
        if names is None or arrays["feature_names"].ndim != 1:
            bad("feature_names", "must be a 1-D array of strings")
            names = None
        else:
            names = [s.strip() for s in names]
            if window_shape is not None and len(names) == window_shape[0]:
                names = None  # channel names of 3-D X: the flat names are canonical
            elif len(names) != Xf.shape[1]:
                bad("feature_names", f"has {len(names)} names for {Xf.shape[1]} features")
                names = None
            elif len(set(names)) != len(names):
                dup = sorted({s for s in names if names.count(s) > 1})
                problems.append(Problem(None, dup[0], "duplicate_column_name", f"feature names repeat: {dup}"))
    if names is None:
        names = window_feature_names(*window_shape) if window_shape is not None else [f"x{j}" for j in range(Xf.shape[1])]
    class_list = None
    if "labels" in arrays:
        class_list = _npz_text(arrays["labels"])
        if class_list is None or arrays["labels"].ndim != 1:
            bad("labels", "must be a 1-D array of class names (strings)")
            class_list = None
        else:
            class_list = [s.strip() for s in class_list]
    if problems:
        raise _validation_error(source, problems, ARRAY_ROW_CONVENTION)

    ignored = set(override.ignore_columns or ())
    for name in override.ignore_columns or ():
        if name not in names:
            problems.append(Problem(None, name, "unknown_column", "the schema's ignore_columns names a feature the file does not have"))
    keep = [j for j, nm in enumerate(names) if nm not in ignored]
    names = [names[j] for j in keep]
    Xf = Xf[:, keep]
    label_column = override.label_column or "label"
    if label_column in names:
        problems.append(Problem(None, label_column, "duplicate_column_name", "the label column is also a feature name"))

    wide_shape, wide_order = window_shape, list(range(len(names))) if window_shape is not None else None
    if window_shape is None and override.layout != "tabular":
        wide_shape, wide_order, wproblems = detect_wide_windows(names)
        problems += wproblems
    if override.layout == "windows" and wide_shape is None:
        problems.append(Problem(None, None, "not_windows", "the schema says layout 'windows' but X is 2-D and its "
                                "feature names are not ch{c}_t{t}"))
    if window_shape is not None and override.layout == "tabular":
        problems.append(Problem(None, None, "not_windows", "the schema says layout 'tabular' but X is 3-D (windows)"))

    # Features: non-finite values and float32 overflow, cell by cell.
    lines = list(range(2, n + 2))
    col_ok = [True] * len(names)
    with np.errstate(invalid="ignore", over="ignore"):
        bad_cells = ~np.isfinite(Xf) | (np.abs(Xf) >= _FLOAT32_OVERFLOW)
    for r, c in zip(*np.nonzero(bad_cells)):
        v = Xf[r, c]
        rule = "missing_value" if np.isnan(v) else "non_finite"
        problems.append(Problem(int(r) + 2, names[c], rule, f"the value is {v}"))
        col_ok[c] = False
        if len(problems) >= MAX_PROBLEMS:
            break
    Xf = np.where(bad_cells, np.nan, Xf)

    # Task and labels.
    y_text = _npz_text(y)
    if override.task is not None:
        task = override.task
        label_dtype = "string" if y_text is not None else ("float" if task == "regression" else "int")
    elif override.labels is not None or class_list is not None:
        task, label_dtype = "classification", "string" if y_text is not None else "int"
    else:
        task, label_dtype = infer_task_from_array(y) if y_text is None else ("classification", "string")
    texts: list[str | None] | None = None
    targets: np.ndarray | None = None
    if y.shape == (n,):
        if task == "classification":
            texts = []
            if y_text is not None:
                for i, s in enumerate(y_text):
                    if is_missing(s):
                        problems.append(Problem(i + 2, label_column, "missing_value", "the label is empty"))
                        texts.append(None)
                    else:
                        texts.append(s.strip())
            else:
                yv = y.astype(np.float64)
                for i, v in enumerate(yv):
                    if not np.isfinite(v):
                        problems.append(Problem(i + 2, label_column, "missing_value" if np.isnan(v) else "non_finite",
                                                f"the label is {v}"))
                        texts.append(None)
                    elif class_list is not None:
                        if v != round(v) or not 0 <= v < len(class_list):
                            problems.append(Problem(i + 2, label_column, "bad_label_index",
                                                    f"{v:g} is not an index into labels (0..{len(class_list) - 1})"))
                            texts.append(None)
                        else:
                            texts.append(class_list[int(v)])
                    else:
                        texts.append(str(int(v)) if v == round(v) else np.format_float_positional(v, trim="-"))
        else:
            if class_list is not None:
                problems.append(Problem(None, "labels", "labels_for_regression",
                                        "the archive has a labels array but the task is regression"))
            if y_text is not None:
                vals = []
                for i, s in enumerate(y_text):
                    value, problem = _parse_cell(i + 2, label_column, s.strip())
                    if problem is not None:
                        problems.append(problem)
                    vals.append(value)
                targets = np.array(vals, dtype=np.float64)
            else:
                targets = y.astype(np.float64)
                for i in np.nonzero(~np.isfinite(targets) | (np.abs(targets) >= _FLOAT32_OVERFLOW))[0][:MAX_PROBLEMS]:
                    v = targets[i]
                    problems.append(Problem(int(i) + 2, label_column, "missing_value" if np.isnan(v) else "non_finite",
                                            f"the target is {v}"))
                    targets[i] = np.nan
    tab = _Table(
        source=source, convention=ARRAY_ROW_CONVENTION, names=names, X=Xf.astype(np.float32), lines=lines,
        col_ok=col_ok, label_column=label_column, task=task, label_dtype=label_dtype, texts=texts,
        targets=targets, class_list=class_list, wide_shape=wide_shape, wide_order=wide_order,
        problems=problems, skip_label_rules=y.shape != (n,),
    )
    return _finish(tab, override, min_rows, training)


# --------------------------------------------------------------------------
# One entry point
# --------------------------------------------------------------------------


def load_dataset(
    path: str | Path,
    *,
    schema: Schema | None = None,
    schema_file: str | Path | None = None,
    min_rows: int = MIN_ROWS,
    training: bool = True,
) -> Dataset:
    """Load a dataset file, choosing the reader by suffix: ``.csv`` (:func:`load_csv`) or ``.npz`` (:func:`load_npz`).

    The schema is inferred (label column ``"label"`` or else the last column;
    task, dtypes, classes, layout -- see :mod:`hub.schema`), then overridden by
    ``schema_file`` (JSON, format in :mod:`hub.schema`) and then by ``schema``.
    The result is validated (every problem with row, column and rule, raised as
    :class:`hub.errors.DataValidationError`) and carries the resolved schema in
    ``.schema``. Loading the same data twice gives the same ``sha256``.
    ``min_rows`` is the fewest rows (windows) training accepts; ``training=False``
    loads data to evaluate or fine-tune on: every cell, schema and window rule
    still applies, the training-only rules (constant/duplicate columns, row and
    class counts) do not -- check its classes with :func:`validate_labels_known`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return load_npz(path, schema=schema, schema_file=schema_file, min_rows=min_rows, training=training)
    if suffix == ".csv":
        override = _overrides(schema, schema_file)
        header, rows = _read_csv(path)
        return _finish(_table_from_cells(header, rows, override, str(path)), override, min_rows, training)
    raise DataValidationError(
        f"{path} has an unsupported file type {path.suffix!r}; use one of {', '.join(DATA_SUFFIXES)}.",
        [Problem(None, None, "unsupported_format", f"suffix {path.suffix!r}")],
    )


# --------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------


@dataclass
class Splits:
    """Row indices of the train/validation/test parts (sorted int64 arrays)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int
    fractions: tuple[float, float, float]
    stratified: bool = True

    def counts(self) -> dict[str, int]:
        return {"train": int(self.train.size), "val": int(self.val.size), "test": int(self.test.size)}

    def sha256(self) -> str:
        """Hash of the three index arrays, so a run record pins the exact split."""
        h = hashlib.sha256()
        for part in (self.train, self.val, self.test):
            a = np.ascontiguousarray(part, dtype="<i8")
            h.update(len(a).to_bytes(8, "little"))
            h.update(a.tobytes())
        return h.hexdigest()

    def to_dict(self) -> dict:
        """JSON-ready record: seed, fractions, stratification, counts and the index hash (not the indices)."""
        return {
            "seed": self.seed,
            "fractions": list(self.fractions),
            "stratified": self.stratified,
            "counts": self.counts(),
            "sha256": self.sha256(),
        }


def _cut(idx: np.ndarray, fr: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_val = max(1, int(round(idx.size * fr[1])))
    n_test = max(1, int(round(idx.size * fr[2])))
    n_train = idx.size - n_val - n_test
    if n_train < 1:
        n_train, n_val, n_test = 1, 1, idx.size - 2
    return idx[:n_train], idx[n_train:n_train + n_val], idx[n_train + n_val:]


def split_dataset(
    dataset: Dataset, seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> Splits:
    """Deterministic train/val/test split: stratified for classification, a plain shuffle for regression.

    Classification: within each class the rows are permuted with
    ``numpy.random.default_rng(seed)`` and cut by ``fractions``; every class with
    at least 3 rows gets at least one row in each part. Regression: all rows are
    permuted with the same generator and cut by ``fractions`` (each part gets at
    least one row). Same dataset and seed give the same indices.
    """
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(f <= 0 for f in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise DataValidationError(
            f"split fractions must be three positive numbers summing to 1, got {fractions}",
            [Problem(None, None, "bad_fractions", str(fractions))],
        )
    rng = np.random.default_rng(seed)
    if dataset.task == "regression":
        if dataset.n_rows < 3:
            raise _validation_error(dataset.source or "dataset", [Problem(
                None, None, "too_few_rows", f"{dataset.n_rows} row(s); need 3 to split")])
        train, val, test = (np.sort(p).astype(np.int64) for p in _cut(rng.permutation(dataset.n_rows), fr))  # type: ignore[arg-type]
        return Splits(train, val, test, int(seed), fr, stratified=False)  # type: ignore[arg-type]
    parts: list[list[np.ndarray]] = [[], [], []]
    problems: list[Problem] = []
    for c, name in enumerate(dataset.labels):
        idx = np.nonzero(dataset.y == c)[0]
        if idx.size == 0:
            continue
        if idx.size < MIN_CLASS_ROWS:
            problems.append(Problem(None, dataset.label_column, "too_few_class_rows",
                                    f"class {name!r} has {idx.size} row(s); need {MIN_CLASS_ROWS} to split"))
            continue
        for part, piece in zip(parts, _cut(rng.permutation(idx), fr)):  # type: ignore[arg-type]
            part.append(piece)
    if problems:
        raise _validation_error(dataset.source or "dataset", problems)
    train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts)
    return Splits(train, val, test, int(seed), fr)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Synthetic sensor process
# --------------------------------------------------------------------------

SENSOR_FEATURES = ["temperature_c", "vibration_rms", "pressure_kpa", "current_a", "humidity_pct", "rpm"]
SENSOR_LABELS = ["normal", "overheating", "worn_bearing"]  # sorted, as load_csv orders classes
SENSOR_CLASS_PRIORS = {"normal": 0.6, "overheating": 0.2, "worn_bearing": 0.2}
# Marginal standard deviations of the undrifted process (from 10^6 rows); the
# unit in which ``shift`` moves temperature and vibration.
TEMPERATURE_SD = 7.68  # °C
VIBRATION_SD = 0.95  # mm/s
LABEL_NOISE = 0.02
_DECIMALS = {"temperature_c": 2, "vibration_rms": 3, "pressure_kpa": 1, "current_a": 2, "humidity_pct": 1, "rpm": 0}


def generate_sensor_data(n_rows: int, seed: int, *, shift: float = 0.0) -> Dataset:
    """Synthetic condition-monitoring data of an electric pump motor (3 classes).

    Process, per row (``numpy.random.default_rng(seed)``):

    * condition ~ Categorical(normal 0.6, overheating 0.2, worn_bearing 0.2);
    * hidden operating point: load ~ U(0.35, 1.0) of rated load, ambient
      temperature ~ N(22, 3) °C, relative humidity ~ N(50, 12) % clipped to [5, 95];
    * ``rpm`` = 1800 - 150·load + N(0, 15) (induction-motor slip), worn bearings
      add friction (-15 rpm);
    * ``current_a`` = 6 + 14·load + N(0, 0.9), +2 A when overheating, +0.8 A
      with a worn bearing;
    * ``temperature_c`` = ambient + 20 + 25·load + 0.04·(humidity - 50) + N(0, 2.5),
      +12 °C when overheating, +3 °C with a worn bearing;
    * ``vibration_rms`` (mm/s) = (0.8 + 1.2·load) · exp(N(0, 0.2)), ×2.2 with a
      worn bearing, ×1.1 when overheating;
    * ``pressure_kpa`` (coolant) = 250 + 40·load + N(0, 10), -25 kPa when
      overheating (coolant loss is what overheats the motor);
    * then 2% of the labels are replaced by a random class (labelling mistakes).

    Classes overlap through the load and noise terms (a hot day at full load
    looks like mild overheating), so a small MLP reaches about 90-97% accuracy,
    not 100%. Values are rounded to sensor resolution (rpm to 1, pressure and
    humidity to 0.1, temperature and current to 0.01, vibration to 0.001).

    ``shift`` simulates drift (a recalibrated thermometer and a loosened
    mount): temperature moves by ``shift × TEMPERATURE_SD`` and vibration by
    ``shift × VIBRATION_SD``, the features' standard deviations under the
    undrifted process (7.68 °C and 0.95 mm/s). Labels are not changed.
    """
    if n_rows < 1:
        raise ValueError(f"n_rows must be positive, got {n_rows}")
    rng = np.random.default_rng(seed)
    priors = np.array([SENSOR_CLASS_PRIORS[lab] for lab in SENSOR_LABELS])
    y = rng.choice(len(SENSOR_LABELS), size=n_rows, p=priors)
    over = (y == SENSOR_LABELS.index("overheating")).astype(np.float64)
    worn = (y == SENSOR_LABELS.index("worn_bearing")).astype(np.float64)

    load = rng.uniform(0.35, 1.0, n_rows)
    ambient = rng.normal(22.0, 3.0, n_rows)
    humidity = np.clip(rng.normal(50.0, 12.0, n_rows), 5.0, 95.0)
    rpm = 1800.0 - 150.0 * load + rng.normal(0.0, 15.0, n_rows) - 15.0 * worn
    current = 6.0 + 14.0 * load + rng.normal(0.0, 0.9, n_rows) + 2.0 * over + 0.8 * worn
    temperature = (ambient + 20.0 + 25.0 * load + 0.04 * (humidity - 50.0) + rng.normal(0.0, 2.5, n_rows)
                   + 12.0 * over + 3.0 * worn)
    vibration = (0.8 + 1.2 * load) * np.exp(rng.normal(0.0, 0.2, n_rows)) * (1.0 + 1.2 * worn + 0.1 * over)
    pressure = 250.0 + 40.0 * load + rng.normal(0.0, 10.0, n_rows) - 25.0 * over

    flip = rng.random(n_rows) < LABEL_NOISE
    y = np.where(flip, rng.integers(0, len(SENSOR_LABELS), n_rows), y)

    temperature = temperature + shift * TEMPERATURE_SD
    vibration = vibration + shift * VIBRATION_SD
    cols = {
        "temperature_c": temperature,
        "vibration_rms": vibration,
        "pressure_kpa": pressure,
        "current_a": current,
        "humidity_pct": humidity,
        "rpm": rpm,
    }
    X = np.stack([np.round(cols[n], _DECIMALS[n]) for n in SENSOR_FEATURES], axis=1).astype(np.float32)
    source = f"generate_sensor_data(n_rows={n_rows}, seed={seed}, shift={shift:g})"
    return Dataset(list(SENSOR_FEATURES), X, y.astype(np.int64), list(SENSOR_LABELS), label_column="label", source=source)


def sample_dataset_path() -> Path:
    """Path of the shipped sample CSV (``hub/data/sensors.csv``, written by scripts/make_sample_data.py)."""
    return Path(__file__).resolve().parent / "samples" / "sensors.csv"
