"""The dataset model: :class:`Dataset`, its content hash, and how its columns map to a schema.

Everything that reaches training is a :class:`Dataset`, whose construction
checks the arrays' structure (shapes, names, label indices, window layout, the
resolved schema) and refuses an inconsistent one with a
:class:`edgeloop.hub.errors.DataValidationError`. The value rules (missing and
non-finite cells, ranges, label counts) are in
:mod:`edgeloop.hub.datasets.validation`; the files are read by
:func:`edgeloop.hub.datasets.load_dataset` (:mod:`~edgeloop.hub.datasets.csv_io`,
:mod:`~edgeloop.hub.datasets.npz_io`), which refuse bad data loudly, naming
row, column and rule of every problem. Row numbers are *file line numbers*: the
header is line 1, the first data row is line 2 -- what a user sees in an editor
or spreadsheet. Arrays (``.npz`` files, in-memory datasets) are numbered the
same way: array row 0 is line 2, as in ``write_csv``'s output.

Two tasks: ``"classification"`` (``y`` int64 indices into ``labels``) and
``"regression"`` (``y`` float32 targets, ``labels`` empty). Two shapes: tabular
rows, and multichannel sensor windows (``window_shape = (C, T)``, ``X`` flat
and channel-major; see :mod:`edgeloop.hub.datasets.windows`). What the columns
mean is a :class:`edgeloop.hub.datasets.schema.Schema`: inferred from the data
and overridable by a small JSON schema file (format in
:mod:`edgeloop.hub.datasets.schema`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from edgeloop.hub.datasets.data_warnings import DataWarning, column_warnings, few_rows_warning
from edgeloop.hub.datasets.problems import Problem, problems_error, validation_error
from edgeloop.hub.datasets.schema import TASKS, FeatureSpec, Schema, infer_feature_dtype
from edgeloop.hub.datasets.windows import window_feature_names

__all__ = [
    "MIN_CLASS_ROWS",
    "MIN_ROWS",
    "MIN_ROWS_FLOOR",
    "Dataset",
    "check_min_rows",
    "column_specs",
    "dataset_sha256",
    "schema_feature_keys",
]

MIN_ROWS = 30  # the default (and recommended) fewest rows: fewer give train/val/test splits too small to trust
MIN_CLASS_ROWS = 3  # a class needs one row in each of train, val and test
# The lowest ``min_rows`` a load accepts: two classes of MIN_CLASS_ROWS rows, the smallest
# classification data that can be split at all. Between it and MIN_ROWS data load with a
# ``few_rows`` warning.
MIN_ROWS_FLOOR = 2 * MIN_CLASS_ROWS


def check_min_rows(min_rows: int) -> int:
    """``min_rows`` as an int, refused (rule ``bad_min_rows``) when not a whole number >= :data:`MIN_ROWS_FLOOR`."""
    if isinstance(min_rows, bool) or not isinstance(min_rows, int | np.integer) or min_rows < MIN_ROWS_FLOOR:
        detail = (f"min_rows must be a whole number of at least {MIN_ROWS_FLOOR} (two classes of "
                  f"{MIN_CLASS_ROWS} rows: one of each class for train, validation and test), got {min_rows!r}")
        raise problems_error(f"min_rows {min_rows!r} cannot be used:", [Problem(None, None, "bad_min_rows", detail)],
                             f"Give min_rows (data import --min-rows) of {MIN_ROWS_FLOOR} or more; "
                             f"the default is {MIN_ROWS}.")
    return int(min_rows)


@dataclass
class Dataset:
    """A classification or regression table held as arrays.

    ``X`` is float32 (n_rows, n_features). For ``task == "classification"``
    ``y`` holds int64 indices into ``labels``; for ``"regression"`` ``y`` holds
    float32 targets and ``labels`` is empty. ``window_shape`` is ``(C, T)`` for
    multichannel sensor windows (feature names ``ch{c}_t{t}``, channel-major, so
    ``X.reshape(n, C, T)`` is the (batch, channels, steps) view) and ``None``
    for tabular data. ``schema`` is the resolved :class:`~edgeloop.hub.datasets.schema.Schema`
    (derived from the arrays when not given); ``line_numbers`` are the file
    lines the rows came from (``None``: row ``i`` is line ``i + 2``); ``min_rows``
    the fewest rows the data was accepted with (what
    :func:`~edgeloop.hub.datasets.validate_dataset` checks by default). None of
    these enters the hash. ``warnings`` lists the
    :class:`~edgeloop.hub.datasets.data_warnings.DataWarning` findings (constant and
    identical columns, fewer rows than :data:`MIN_ROWS`), computed on first use.

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
    min_rows: int = field(default=MIN_ROWS, repr=False)
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
        self.min_rows = int(self.min_rows)
        problems = _structure_problems(self)
        if not problems:
            self.schema = _schema_of_arrays(self).merged(self.schema)
            problems = _schema_consistency_problems(self)
        if problems:
            raise validation_error(self.source or "dataset", problems)
        self.sha256 = dataset_sha256(self.feature_names, self.X, self.y, self.labels, self.label_column, self.task,
                                     window_shape=self.window_shape)

    @cached_property
    def warnings(self) -> list[DataWarning]:
        """Constant and identical feature columns, and ``few_rows`` below :data:`MIN_ROWS` (see
        :mod:`edgeloop.hub.datasets.data_warnings`); empty for clean data."""
        found = column_warnings(self.feature_names, self.X, self.window_shape)
        few = few_rows_warning(self.n_rows, MIN_ROWS, self.min_rows, "window" if self.is_windows else "row")
        return found + ([few] if few is not None else [])

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
        return {lab: int(c) for lab, c in zip(self.labels, counts, strict=True)}

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
            "warnings": [w.to_dict() for w in self.warnings],
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
        p.append(Problem(None, ds.label_column, "bad_shape",
                         f"y must be 1-D with {ds.X.shape[0]} rows, got shape {ds.y.shape}"))
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
                             "window features must be named ch{c}_t{t} in channel-major order "
                             "(edgeloop.hub.datasets.window_feature_names)"))
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
    expected = schema_feature_keys(ds.feature_names, ds.window_shape)
    if list(schema.features) != expected:
        extra = [k for k in schema.features if k not in expected]
        kind = "channels" if ds.window_shape else "features"
        p.append(Problem(None, None, "schema_mismatch", f"schema features {extra[:8]} are not {kind} of the dataset"))
    return p


def schema_feature_keys(feature_names: Sequence[str], window_shape: tuple[int, int] | None) -> list[str]:
    """Names a resolved schema lists in ``features``: the features, or for window data the channels ``ch{c}``."""
    if window_shape is not None:
        return [f"ch{c}" for c in range(window_shape[0])]
    return list(feature_names)


def column_specs(ds_names: Sequence[str], window_shape: tuple[int, int] | None, schema: Schema | None,
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

