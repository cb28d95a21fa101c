"""Dataset schemas: what the columns of a dataset mean, inferred and overridable.

A :class:`Schema` says which column is the label, whether the task is
classification or regression, the features (in order) with their dtype and an
optional allowed ``[min, max]`` range, the class list, and the data's shape
(tabular rows or multichannel sensor windows). Every field is optional: a
partial schema (from a schema file, or built in code) *overrides* what
:func:`edgeloop.hub.datasets.load_dataset` infers from the data, and the loaded
:class:`edgeloop.hub.datasets.Dataset` carries the fully resolved schema in ``.schema``.

Inference (used for every field a schema leaves open)
-----------------------------------------------------
* label column: ``"label"`` when there is such a column, else the last column;
* task: ``"classification"`` when the label column is non-numeric, or numeric
  with integer values only and at most :data:`MAX_INFERRED_CLASSES` (20)
  distinct values; otherwise ``"regression"``;
* feature dtype: ``"int"`` when every value of the column is a whole number,
  else ``"float"`` (the arrays are float32 either way);
* classes: the sorted class names (strings, so ``"10"`` sorts before ``"2"``);
* layout: ``"windows"`` when a ``window_id`` column exists (long format) or when
  every feature column is named ``ch{c}_t{t}`` (wide format); else ``"tabular"``.

Schema file format (JSON, UTF-8)
--------------------------------
One JSON object; every key is optional, unknown keys are an error::

    {
      "label_column": "y",                      # name of the label/target column
      "task": "regression",                     # "classification" | "regression"
      "labels": ["a", "b"],                     # class list, in class-index order
                                                #   (classification only; classes
                                                #   in the data but not listed are
                                                #   an error, listed but absent is fine)
      "features": {                             # per feature column (for window data:
        "temp": {"min": -40, "max": 125},       #   per channel, e.g. "ch0", or the
        "count": {"dtype": "int", "min": 0}     #   long format's channel column names)
      },                                        #   dtype: "float" | "int"; min/max: numbers,
                                                #   inclusive; either may be left out
      "ignore_columns": ["timestamp"],          # columns to drop before anything else
      "layout": "windows",                      # "tabular" | "windows" (default: detected)
      "window_id_column": "window_id",          # long window format: id column ...
      "time_column": "t",                       # ... and step column (optional in the data)
      "window_shape": [3, 32],                  # expected (channels, steps) of window data
      "label_dtype": "string"                   # "string" | "int" | "float" (informational)
    }

(The ``#`` comments are explanations, not JSON.) Values outside a feature's
range are reported with rule ``out_of_range`` (row, column, value and range);
non-whole values in an ``"int"`` feature with rule ``not_integer``; a feature
named in the file but absent from the data with ``unknown_feature``. A schema
file that is not valid JSON or breaks the format raises
:class:`edgeloop.hub.errors.DataValidationError` with rule ``bad_schema`` for each
finding. :meth:`Schema.to_dict` writes this format, so the resolved schema of a
loaded dataset can be saved (:func:`write_schema_file`) and reused.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.hub.datasets.problems import Problem, problems_error
from edgeloop.hub.errors import DataValidationError

__all__ = [
    "DEFAULT_LABEL_COLUMN",
    "DEFAULT_TIME_COLUMN",
    "DEFAULT_WINDOW_ID_COLUMN",
    "FEATURE_DTYPES",
    "LABEL_DTYPES",
    "LAYOUTS",
    "MAX_INFERRED_CLASSES",
    "TASKS",
    "FeatureSpec",
    "Schema",
    "infer_feature_dtype",
    "infer_label_dtype",
    "infer_task",
    "infer_task_from_array",
    "is_missing",
    "is_number",
    "load_schema_file",
    "resolve_label_column",
    "write_schema_file",
]

TASKS = ("classification", "regression")
FEATURE_DTYPES = ("float", "int")
LABEL_DTYPES = ("string", "int", "float")
LAYOUTS = ("tabular", "windows")
DEFAULT_LABEL_COLUMN = "label"
DEFAULT_WINDOW_ID_COLUMN = "window_id"
DEFAULT_TIME_COLUMN = "t"
MAX_INFERRED_CLASSES = 20

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_MISSING = {"", "na", "n/a", "nan", "null", "none", "?", "-"}


def is_missing(cell: str) -> bool:
    """True for cells that spell a missing value: empty, NA, N/A, NaN, null, none, ?, -."""
    return cell.strip().lower() in _MISSING


def is_number(cell: str) -> bool:
    """True for a plain decimal number (no inf/nan, no thousands separators)."""
    return _NUMBER.fullmatch(cell.strip()) is not None


# --------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSpec:
    """dtype (``"float"``/``"int"``) and inclusive allowed range of one feature (or channel); ``None`` = open."""

    dtype: str | None = None
    min: float | None = None
    max: float | None = None

    @property
    def has_range(self) -> bool:
        return self.min is not None or self.max is not None

    def range_text(self) -> str:
        lo = "-inf" if self.min is None else f"{self.min:g}"
        hi = "inf" if self.max is None else f"{self.max:g}"
        return f"[{lo}, {hi}]"

    def merged(self, override: FeatureSpec) -> FeatureSpec:
        return FeatureSpec(
            override.dtype if override.dtype is not None else self.dtype,
            override.min if override.min is not None else self.min,
            override.max if override.max is not None else self.max,
        )

    def to_dict(self) -> dict:
        return {k: v for k, v in (("dtype", self.dtype), ("min", self.min), ("max", self.max)) if v is not None}


_KEYS = ("label_column", "task", "labels", "features", "ignore_columns", "layout", "window_id_column",
         "time_column", "window_shape", "label_dtype")


@dataclass
class Schema:
    """Meaning of a dataset's columns; ``None``/empty fields are inferred from the data.

    ``features`` maps feature names (for window data: channel names) to
    :class:`FeatureSpec`; in a resolved schema (``Dataset.schema``) it lists
    every feature (channel) in column order. See the module docstring for the
    inference rules and the JSON schema-file format.
    """

    label_column: str | None = None
    task: str | None = None
    features: dict[str, FeatureSpec] = field(default_factory=dict)
    labels: list[str] | None = None
    label_dtype: str | None = None
    ignore_columns: list[str] | None = None
    layout: str | None = None
    window_id_column: str | None = None
    time_column: str | None = None
    window_shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        # Programming errors (a Schema built in code) are reported like a bad schema file.
        problems = _check_fields(self.task, self.labels, self.label_column, self.features, self.ignore_columns)
        if self.layout is not None and self.layout not in LAYOUTS:
            problems.append(Problem(None, None, "bad_schema", f"layout: must be one of {LAYOUTS}, got {self.layout!r}"))
        if problems:
            raise problems_error("schema is not valid:", problems, "Fix the schema and load the data again.")
        self.features = {str(k): (v if isinstance(v, FeatureSpec) else FeatureSpec(**v))
                         for k, v in self.features.items()}
        if self.labels is not None:
            self.labels = [str(lab) for lab in self.labels]
        if self.ignore_columns is not None:
            self.ignore_columns = [str(c) for c in self.ignore_columns]
        if self.window_shape is not None:
            self.window_shape = (int(self.window_shape[0]), int(self.window_shape[1]))

    # -- derived -----------------------------------------------------------------
    def ranges(self) -> dict[str, list[float | None]]:
        """``{feature: [min, max]}`` for the features (channels) with a declared range."""
        return {name: [spec.min, spec.max] for name, spec in self.features.items() if spec.has_range}

    def merged(self, override: Schema | None) -> Schema:
        """This schema with every field that ``override`` sets replaced (features merged per name and attribute)."""
        if override is None:
            return replace(self, features=dict(self.features))
        features = dict(self.features)
        for name, spec in override.features.items():
            features[name] = features[name].merged(spec) if name in features else spec
        changes: dict[str, Any] = {"features": features}
        for key in _KEYS:
            if key == "features":
                continue
            value = getattr(override, key)
            if value is not None:
                changes[key] = value
        return replace(self, **changes)

    # -- JSON --------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The schema-file form (JSON-ready); fields left open are omitted."""
        out: dict[str, Any] = {}
        for key in _KEYS:
            value = getattr(self, key)
            if key == "features":
                if value:
                    out[key] = {name: spec.to_dict() for name, spec in value.items()}
            elif value is not None:
                out[key] = list(value) if isinstance(value, (list, tuple)) else value
        return out

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "schema") -> Schema:
        """Parse the schema-file form; raise :class:`DataValidationError` (``bad_schema``) listing every finding."""
        problems: list[Problem] = []

        def bad(key: str, detail: str) -> None:
            problems.append(Problem(None, None, "bad_schema", f"{key}: {detail}"))

        if not isinstance(data, dict):
            bad("(top level)", f"must be a JSON object, got {_json_type(data)}")
            raise _schema_error(source, problems)
        for key in data:
            if key not in _KEYS:
                bad(repr(key), f"unknown key; allowed keys are {', '.join(_KEYS)}")
        kw: dict[str, Any] = {}
        for key in ("label_column", "window_id_column", "time_column"):
            if key in data:
                v = data[key]
                if not isinstance(v, str) or not v.strip():
                    bad(key, f"must be a non-empty string, got {v!r}")
                else:
                    kw[key] = v.strip()
        for key, allowed in (("task", TASKS), ("layout", LAYOUTS), ("label_dtype", LABEL_DTYPES)):
            if key in data:
                if data[key] not in allowed:
                    bad(key, f"must be one of {', '.join(map(repr, allowed))}, got {data[key]!r}")
                else:
                    kw[key] = data[key]
        if "labels" in data:
            v = data["labels"]
            if not isinstance(v, list) or not v:
                bad("labels", f"must be a non-empty list of class names, got {v!r}")
            else:
                names = []
                for i, lab in enumerate(v):
                    if isinstance(lab, bool) or not isinstance(lab, (str, int)) or not str(lab).strip():
                        bad(f"labels[{i}]", f"a class name must be a non-empty string (or an integer), got {lab!r}")
                    else:
                        names.append(str(lab).strip())
                dup = sorted({n for n in names if names.count(n) > 1})
                if dup:
                    bad("labels", f"class names repeat: {dup}")
                if len(names) == len(v) and not dup:
                    kw["labels"] = names
        if "ignore_columns" in data:
            v = data["ignore_columns"]
            if not isinstance(v, list) or not all(isinstance(c, str) and c.strip() for c in v):
                bad("ignore_columns", f"must be a list of column names, got {v!r}")
            else:
                kw["ignore_columns"] = [c.strip() for c in v]
        if "window_shape" in data:
            v = data["window_shape"]
            if (not isinstance(v, list) or len(v) != 2
                    or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in v)):
                bad("window_shape", f"must be [channels, steps], two positive integers, got {v!r}")
            else:
                kw["window_shape"] = (v[0], v[1])
        if "features" in data:
            v = data["features"]
            if not isinstance(v, dict):
                bad("features", f"must be an object mapping feature names to {{dtype, min, max}}, got {_json_type(v)}")
            else:
                specs = {}
                for name, spec in v.items():
                    parsed = _parse_feature(f"features.{name}", spec, bad)
                    if parsed is not None:
                        specs[name.strip()] = parsed
                kw["features"] = specs
        if not problems:
            problems += _check_fields(kw.get("task"), kw.get("labels"), kw.get("label_column"), kw.get("features"),
                                      kw.get("ignore_columns"))
        if problems:
            raise _schema_error(source, problems)
        return cls(**kw)


def _parse_feature(key: str, spec: Any, bad) -> FeatureSpec | None:
    if not isinstance(spec, dict):
        bad(key, f"must be an object with optional keys dtype, min, max, got {_json_type(spec)}")
        return None
    ok = True
    for k in spec:
        if k not in ("dtype", "min", "max"):
            bad(f"{key}.{k}", "unknown key; allowed keys are dtype, min, max")
            ok = False
    dtype = spec.get("dtype")
    if dtype is not None and dtype not in FEATURE_DTYPES:
        bad(f"{key}.dtype", f"must be one of {', '.join(map(repr, FEATURE_DTYPES))}, got {dtype!r}")
        ok = False
    bounds: dict[str, float | None] = {}
    for k in ("min", "max"):
        v = spec.get(k)
        if v is None:
            bounds[k] = None
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            bad(f"{key}.{k}", f"must be a finite number, got {v!r}")
            ok = False
        else:
            bounds[k] = float(v)
    if ok and bounds["min"] is not None and bounds["max"] is not None and bounds["min"] > bounds["max"]:
        bad(key, f"min {bounds['min']:g} is greater than max {bounds['max']:g}")
        ok = False
    return FeatureSpec(dtype, bounds["min"], bounds["max"]) if ok else None


def _check_fields(task: Any, labels: Any, label_column: Any, features: Any, ignore_columns: Any) -> list[Problem]:
    """Cross-field rules of a schema."""
    p: list[Problem] = []
    if task is not None and task not in TASKS:
        p.append(Problem(None, None, "bad_schema", f"task: must be one of {TASKS}, got {task!r}"))
    if task == "regression" and labels is not None:
        p.append(Problem(None, None, "bad_schema", "labels: a class list makes no sense for task 'regression'"))
    if label_column is not None:
        if label_column in (features or {}):
            p.append(Problem(None, None, "bad_schema",
                             f"features: the label column {label_column!r} cannot be a feature"))
        if label_column in (ignore_columns or []):
            p.append(Problem(None, None, "bad_schema",
                             f"ignore_columns: the label column {label_column!r} cannot be ignored"))
    return p


def _json_type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


def _schema_error(source: str, problems: list[Problem]) -> DataValidationError:
    return problems_error(f"schema file {source} is not valid: {len(problems)} problem(s):", problems,
                          "Fix the schema file (format: see edgeloop.hub.datasets.schema) and load the data again.")


def load_schema_file(path: str | Path) -> Schema:
    """Read a JSON schema file (format: module docstring); raise ``DataValidationError`` (``bad_schema``) if invalid."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise DataValidationError(f"schema file {source} does not exist; check the path.",
                                  [Problem(None, None, "file_not_found", str(exc))]) from exc
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise DataValidationError(f"schema file {source} cannot be read as UTF-8 text: {exc}",
                                  [Problem(None, None, "bad_schema", str(exc))]) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        detail = f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        raise _schema_error(source, [Problem(exc.lineno, None, "bad_schema", detail)]) from exc
    return Schema.from_dict(data, source=source)


def write_schema_file(schema: Schema, path: str | Path) -> Path:
    """Write ``schema.to_dict()`` as indented UTF-8 JSON (readable by :func:`load_schema_file`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(schema.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------


def infer_task(label_texts: Iterable[str]) -> tuple[str, str]:
    """``(task, label_dtype)`` from the label column's (non-missing) cells; see the module docstring."""
    texts = [t.strip() for t in label_texts if not is_missing(t)]
    if not texts or not all(is_number(t) for t in texts):
        return "classification", "string"
    values = np.array([float(t) for t in texts], dtype=np.float64)
    return _numeric_task(values)


def infer_label_dtype(label_texts: Iterable[str]) -> str:
    """``"string"`` unless every (non-missing) label cell is a number: then ``"int"`` or ``"float"``."""
    texts = [t.strip() for t in label_texts if not is_missing(t)]
    if not texts or not all(is_number(t) for t in texts):
        return "string"
    values = np.array([float(t) for t in texts], dtype=np.float64)
    return "int" if bool(np.all(values == np.round(values))) else "float"


def infer_task_from_array(y: np.ndarray) -> tuple[str, str]:
    """``(task, label_dtype)`` of a label array: strings are classes, numbers follow :func:`infer_task`."""
    y = np.asarray(y)
    if y.dtype.kind in "USO":
        return "classification", "string"
    if y.dtype.kind == "b":
        return "classification", "int"
    values = y.astype(np.float64)
    return _numeric_task(values[np.isfinite(values)])


def _numeric_task(values: np.ndarray) -> tuple[str, str]:
    integral = bool(np.all(values == np.round(values)))
    if integral and np.unique(values).size <= MAX_INFERRED_CLASSES:
        return "classification", "int"
    return "regression", "int" if integral else "float"


def infer_feature_dtype(column: np.ndarray) -> str:
    """``"int"`` when every finite value is a whole number, else ``"float"``."""
    col = np.asarray(column, dtype=np.float64)
    col = col[np.isfinite(col)]
    return "int" if col.size and bool(np.all(col == np.round(col))) else "float"


def resolve_label_column(names: Sequence[str], declared: str | None) -> str:
    """The declared label column, else ``"label"`` when present, else the last column."""
    if declared:
        return declared
    if DEFAULT_LABEL_COLUMN in names or not names:
        return DEFAULT_LABEL_COLUMN
    return names[-1]
