"""Value rules of datasets: missing and non-finite cells, columns, schema ranges and dtypes, labels and targets.

The ``*_problems`` helpers collect :class:`~edgeloop.hub.datasets.problems.Problem`
findings and are shared with the readers (:mod:`edgeloop.hub.datasets.tables`);
:func:`validate_dataset` applies them to an in-memory
:class:`~edgeloop.hub.datasets.dataset.Dataset`, and
:func:`validate_labels_known` / :func:`align_labels` check and re-number the
classes of data meant for an existing model. Every rule raises one
:class:`edgeloop.hub.errors.DataValidationError` listing all problems.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeloop.hub.datasets.dataset import MIN_CLASS_ROWS, Dataset, check_min_rows, column_specs, schema_feature_keys
from edgeloop.hub.datasets.problems import MAX_PROBLEMS, Problem, validation_error
from edgeloop.hub.datasets.schema import FeatureSpec, Schema

__all__ = [
    "align_labels",
    "label_problems",
    "spec_problems",
    "target_problems",
    "validate_dataset",
    "validate_labels_known",
]


def spec_problems(names: Sequence[str], X: np.ndarray, lines: Sequence[int] | np.ndarray,
                  specs: Sequence[FeatureSpec | None]) -> list[Problem]:
    """``out_of_range`` and ``not_integer`` findings of the finite values of each column, row by row."""
    problems: list[Problem] = []
    hits: list[tuple[int, int, Problem]] = []
    for j, (name, spec) in enumerate(zip(names, specs, strict=True)):
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
                detail = f"value {float(X[i, j]):g} is outside the allowed range {spec.range_text()}"
                hits.append((int(i), j, Problem(int(lines[i]), name, "out_of_range", detail)))
        if spec.dtype == "int":
            bad = finite & (col != np.round(col))
            for i in np.nonzero(bad)[0][:MAX_PROBLEMS]:
                detail = f"value {float(X[i, j]):g} is not a whole number; the schema declares dtype 'int'"
                hits.append((int(i), j, Problem(int(lines[i]), name, "not_integer", detail)))
    hits.sort(key=lambda h: (h[0], h[1]))
    problems += [h[2] for h in hits[:MAX_PROBLEMS]]
    return problems


def label_problems(label_column: str, class_counts: dict[str, int], n_rows: int, min_rows: int,
                   unit: str = "data row") -> list[Problem]:
    """Row, class and rows-per-class counts of classification data (``unit``: what a row is)."""
    problems: list[Problem] = []
    if n_rows < min_rows:
        problems.append(Problem(None, None, "too_few_rows", f"{n_rows} {unit}(s); at least {min_rows} are needed"))
    present = {k: v for k, v in class_counts.items() if v > 0}
    if len(present) < 2:
        found = ", ".join(repr(k) for k in present) or "none"
        problems.append(Problem(None, label_column, "too_few_classes",
                                f"found {len(present)} class(es) ({found}); a classifier needs at least 2"))
    for name, count in present.items():
        if count < MIN_CLASS_ROWS:
            problems.append(Problem(None, label_column, "too_few_class_rows",
                                    f"class {name!r} has {count} {unit}(s); each class needs at least "
                                    f"{MIN_CLASS_ROWS} (one per train/val/test split)"))
    return problems


def target_problems(label_column: str, y: np.ndarray, n_rows: int, min_rows: int,
                    unit: str = "data row") -> list[Problem]:
    """Regression counterpart of :func:`label_problems` (``y``: the finite targets)."""
    problems: list[Problem] = []
    if n_rows < min_rows:
        problems.append(Problem(None, None, "too_few_rows", f"{n_rows} {unit}(s); at least {min_rows} are needed"))
    if y.size and np.all(y == y[0]):
        problems.append(Problem(None, label_column, "constant_label",
                                f"every target value is {float(y[0]):g}; there is nothing to learn"))
    return problems


def _rows_of(ds: Dataset) -> np.ndarray:
    return ds.line_numbers if ds.line_numbers is not None else np.arange(ds.n_rows, dtype=np.int64) + 2


def validate_dataset(dataset: Dataset, *, min_rows: int | None = None, schema: Schema | None = None,
                     training: bool = True) -> None:
    """Apply the value rules of the loaders to an in-memory :class:`Dataset`.

    Non-finite features (and regression targets), the schema's ranges and
    dtypes (``schema``, default ``dataset.schema``: pass the training data's
    schema to check new data against it), and the label rules (fewer rows than
    ``min_rows`` -- default ``dataset.min_rows``, what it was loaded with --,
    too few classes/class rows, a constant regression target; these are
    skipped with ``training=False``, for data to evaluate on). Constant and
    identical columns are not errors: see ``dataset.warnings``. A
    schema for another task is ``task_mismatch``; a feature it names that the
    data lacks is ``unknown_feature``. Row numbers are ``dataset.line_numbers``
    when known, else the line the row would have in ``write_csv``'s output
    (row index 0 is line 2). Raises :class:`edgeloop.hub.errors.DataValidationError`.
    """
    min_rows = dataset.min_rows if min_rows is None else check_min_rows(min_rows)
    problems: list[Problem] = []
    lines = _rows_of(dataset)
    bad = ~np.isfinite(dataset.X)
    if bad.any():
        for r, c in zip(*np.nonzero(bad), strict=True):
            v = dataset.X[r, c]
            rule = "missing_value" if np.isnan(v) else "non_finite"
            problems.append(Problem(int(lines[r]), dataset.feature_names[c], rule, f"the value is {v}"))
            if len(problems) >= MAX_PROBLEMS:
                break
    if dataset.task == "regression":
        for r in np.nonzero(~np.isfinite(dataset.y))[0][:MAX_PROBLEMS]:
            v = dataset.y[r]
            rule = "missing_value" if np.isnan(v) else "non_finite"
            problems.append(Problem(int(lines[r]), dataset.label_column, rule, f"the target is {v}"))
    schema = schema if schema is not None else dataset.schema
    if schema is not None and schema.task is not None and schema.task != dataset.task:
        problems.append(Problem(None, dataset.label_column, "task_mismatch",
                                f"the schema is for {schema.task} but this is {dataset.task} data"))
    if schema is not None and schema.features:
        keys = set(schema_feature_keys(dataset.feature_names, dataset.window_shape))
        for name in schema.features:
            if name not in keys:
                problems.append(Problem(None, name, "unknown_feature",
                                        f"the schema names feature {name!r}, which this data does not have"))
        specs = column_specs(dataset.feature_names, dataset.window_shape, schema)
        problems += spec_problems(dataset.feature_names, dataset.X, lines, specs)
    if training and dataset.task == "regression":
        problems += target_problems(dataset.label_column, dataset.y[np.isfinite(dataset.y)], dataset.n_rows, min_rows)
    elif training:
        problems += label_problems(dataset.label_column, dataset.class_counts(), dataset.n_rows, min_rows)
    if problems:
        raise validation_error(dataset.source or "dataset", problems)


def validate_labels_known(dataset: Dataset, known_labels: Sequence[str]) -> None:
    """Refuse data whose classes were not seen in training (for fine-tuning or evaluating a model).

    Every row whose class name is not in ``known_labels`` is a problem with
    rule ``unseen_label`` (row, label column, class); the message starts by
    naming the unseen classes and their rows. A regression dataset has no
    classes: it passes when ``known_labels`` is empty and is refused
    (``task_mismatch``) otherwise. Raises :class:`edgeloop.hub.errors.DataValidationError`.
    """
    known = [str(k) for k in known_labels]
    source = dataset.source or "dataset"
    if dataset.task != "classification":
        if known:
            detail = f"this is {dataset.task} data but the model predicts classes {known}"
            raise validation_error(source, [Problem(None, dataset.label_column, "task_mismatch", detail)])
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
    raise validation_error(source, problems, headline=headline)


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

