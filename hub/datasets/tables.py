"""From parsed cells to a :class:`~edgeloop.hub.datasets.dataset.Dataset`: the part the CSV and npz readers share.

A reader (:mod:`edgeloop.hub.datasets.csv_io`, :mod:`edgeloop.hub.datasets.npz_io`)
turns its file into a :class:`ParsedTable` -- the feature values (NaN where a
cell was bad), the labels and the file line of every row, plus the cell-level
problems found so far -- and :func:`finish_table` applies the column, schema,
window and label rules, then builds the Dataset with its resolved schema or
raises one :class:`edgeloop.hub.errors.DataValidationError` with every problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeloop.hub.datasets.dataset import Dataset, check_min_rows, column_specs
from edgeloop.hub.datasets.problems import Problem, validation_error
from edgeloop.hub.datasets.schema import (
    DEFAULT_WINDOW_ID_COLUMN,
    FeatureSpec,
    Schema,
    infer_feature_dtype,
    is_missing,
    is_number,
    load_schema_file,
)
from edgeloop.hub.datasets.validation import label_problems, spec_problems, target_problems
from edgeloop.hub.datasets.windows import long_to_wide, window_feature_names

__all__ = ["FLOAT32_OVERFLOW", "ParsedTable", "finish_table", "parse_cell", "schema_overrides"]

# Smallest magnitude that rounds to infinity in float32 (max + half an ulp).
FLOAT32_OVERFLOW = 2.0**128 - 2.0**103


def parse_cell(line: int, column: str, cell: str) -> tuple[float, Problem | None]:
    """The float32-safe value of a numeric cell, or NaN and the problem."""
    if is_missing(cell):
        return math.nan, Problem(line, column, "missing_value", f"the value is missing ({cell!r})")
    if not is_number(cell):
        if cell.lower().lstrip("+-") in ("inf", "infinity"):
            return math.nan, Problem(line, column, "non_finite", f"{cell!r} is not a finite number")
        return math.nan, Problem(line, column, "non_numeric", f"{cell!r} is not a number")
    value = float(cell)
    if not math.isfinite(value) or abs(value) >= FLOAT32_OVERFLOW:
        return math.nan, Problem(line, column, "non_finite", f"{cell!r} is too large for a 32-bit float")
    return value, None


def schema_overrides(schema: Schema | None, schema_file: str | Path | None) -> Schema:
    """The schema file's fields, then ``schema``'s on top."""
    base = load_schema_file(schema_file) if schema_file is not None else Schema()
    return base.merged(schema)


@dataclass
class ParsedTable:
    """What a loader parsed: features (NaN where a cell was bad) and labels, with their file lines."""

    source: str
    convention: str
    names: list[str]  # feature columns (long format: channel columns), file order
    X: np.ndarray  # float32 (n_rows, len(names)), the rows that could be parsed
    lines: list[int]  # file line of each row of X
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
    skip_column_rules: bool = False  # rows with wrong cell counts: the long format's windows cannot be built
    skip_label_rules: bool = False  # no usable label column / y array


def finish_table(tab: ParsedTable, override: Schema, min_rows: int, training: bool = True) -> Dataset:
    """Apply column, schema, window and label rules to a parsed table; build the Dataset or raise.

    ``training=False`` (data to evaluate or predict on) skips the rules that only matter for
    training: the row/class counts (``min_rows``: the fewest rows, checked by
    :func:`~edgeloop.hub.datasets.dataset.check_min_rows`). Constant and identical columns
    are not errors: they are the Dataset's ``warnings``.
    """
    min_rows = check_min_rows(min_rows)
    problems = list(tab.problems)
    long = tab.window_ids is not None
    window_ids = tab.window_ids if tab.window_ids is not None else []
    n_names = len(tab.names)
    # The names a schema may key its features by, and each column's spec.
    if long:
        allowed = {f"ch{c}" for c in range(n_names)} | set(tab.names)
        specs = column_specs([f"ch{c}_t0" for c in range(n_names)], (n_names, 1), override, tab.names)
    elif tab.wide_shape is not None and tab.wide_order is not None:
        c_count, n_steps = tab.wide_shape
        allowed = {f"ch{c}" for c in range(c_count)}
        canonical = column_specs(window_feature_names(c_count, n_steps), tab.wide_shape, override)
        specs = [None] * n_names
        for k, j in enumerate(tab.wide_order):
            specs[j] = canonical[k]
    else:
        allowed = set(tab.names)
        specs = column_specs(tab.names, None, override)
    for name in override.features:
        if name not in allowed:
            shown = sorted(allowed)[:10]
            problems.append(Problem(None, name, "unknown_feature",
                                    f"the schema names feature {name!r}, which is not in the data "
                                    f"(features: {shown}{' ...' if len(allowed) > 10 else ''})"))
    problems += spec_problems(tab.names, tab.X, tab.lines, specs)

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
            keep = [i for i, wid in enumerate(window_ids) if wid is not None]
            kept_ids = [wid for wid in window_ids if wid is not None]
            expected = override.window_shape[1] if override.window_shape is not None else None
            X, row_labels, lines, wproblems = long_to_wide(
                kept_ids, [tab.steps[i] for i in keep] if tab.steps is not None else None,
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
    declared = override.window_shape
    if declared is not None and window_shape is not None and tuple(declared) != window_shape:
        problems.append(Problem(None, None, "window_shape_mismatch",
                                f"the data holds windows of {window_shape[0]} channel(s) × {window_shape[1]} step(s); "
                                f"the schema expects {list(declared)}"))

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
            for line, lab in zip(lines, row_labels, strict=True):
                if lab is not None and lab not in index:
                    problems.append(Problem(line, tab.label_column, "unknown_class",
                                            f"class {lab!r} is not one of {labels}"))
            if training:
                problems += label_problems(tab.label_column, counts, n_total, min_rows, unit)
        elif training:
            targets = np.array(row_labels, dtype=np.float64)
            problems += target_problems(tab.label_column, targets[np.isfinite(targets)], n_total, min_rows, unit)
    if problems:
        raise validation_error(tab.source, problems, convention=tab.convention)

    n = len(lines)
    if classification:
        y = np.array([index[lab] for lab in row_labels], dtype=np.int64)
    else:
        y = np.array(row_labels, dtype=np.float64).astype(np.float32)
    features: dict[str, FeatureSpec] = {}
    if window_shape is not None:
        names = window_feature_names(*window_shape)
        c_count, n_steps = window_shape
        per_channel = specs if long else column_specs(names, window_shape, override)[::n_steps]
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
                   line_numbers=np.asarray(lines, dtype=np.int64), min_rows=min_rows)

