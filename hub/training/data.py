"""What training needs to know about a dataset before it starts: its task, window shape,
validity (regression target checks included) and train/validation/test splits."""

from __future__ import annotations

import numpy as np

from edgeloop.hub.datasets import MIN_ROWS, Dataset, Splits, split_dataset, validate_dataset
from edgeloop.hub.errors import DataValidationError, TrainingError
from edgeloop.hub.training.params import TASKS

__all__ = ["check_splits", "dataset_task", "dataset_window_shape", "make_splits", "validate_for_training"]

_CLASS_RULES = {"too_few_classes", "too_few_class_rows", "bad_label_index"}


def dataset_task(dataset: Dataset) -> str:
    """``dataset.task`` (``"classification"`` when the dataset has none), checked."""
    task = getattr(dataset, "task", "classification") or "classification"
    if task not in TASKS:
        raise TrainingError(f"dataset task {task!r} is not supported; use one of {', '.join(TASKS)}")
    return task


def dataset_window_shape(dataset: Dataset) -> tuple[int, int] | None:
    """``dataset.window_shape`` as ``(channels, steps)`` checked against the column count, or None."""
    ws = getattr(dataset, "window_shape", None)
    if ws is None:
        return None
    try:
        c, t = (int(v) for v in ws)
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"dataset window_shape {ws!r} is not (channels, steps)") from exc
    if c < 1 or t < 1 or c * t != dataset.n_features:
        raise TrainingError(f"dataset window_shape {(c, t)} does not cover its {dataset.n_features} columns")
    return c, t


def validate_for_training(dataset: Dataset, task: str) -> None:
    """:func:`edgeloop.hub.datasets.validate_dataset`, plus the target checks regression needs.

    A validator that predates regression datasets reports class rules for a
    regression target (or cannot count its classes); those are not data
    problems and are skipped, every other finding is raised.
    """
    if task == "classification":
        validate_dataset(dataset)
        return
    checked_features = False
    try:
        validate_dataset(dataset)
        checked_features = True
    except DataValidationError as exc:
        real = [p for p in exc.problems if getattr(p, "rule", None) not in _CLASS_RULES]
        if len(real) == len(exc.problems):
            raise
        if real:
            raise DataValidationError(
                "\n".join(line for line in str(exc).splitlines() if not any(r in line for r in _CLASS_RULES)),
                real) from exc
        checked_features = True
    except (TypeError, ValueError, AttributeError):  # an older validator cannot count a float target's classes
        pass
    X = np.asarray(dataset.X)
    y = np.asarray(dataset.y)
    problems = []
    if not checked_features and not np.isfinite(X).all():
        first = np.argwhere(~np.isfinite(X))[0]
        r, c = int(first[0]), int(first[1])
        problems.append(f"line {r + 2}, column {dataset.feature_names[c]!r}: the value is {X[r, c]}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        problems.append(f"the target must be 1-D with {X.shape[0]} values, got shape {y.shape}")
    elif not np.isfinite(y.astype(np.float64)).all():
        r = int(np.argwhere(~np.isfinite(y.astype(np.float64)))[0][0])
        problems.append(f"line {r + 2}: the target value is {y[r]}")
    elif y.size and np.all(y == y[0]):
        problems.append(f"every target value is {y[0]:g}; there is nothing to learn")
    if X.shape[0] < MIN_ROWS:
        problems.append(f"{X.shape[0]} data row(s); at least {MIN_ROWS} are needed")
    if problems:
        raise DataValidationError(f"{getattr(dataset, 'source', '') or 'dataset'} is not valid regression data: "
                                  + "; ".join(problems) + ". Fix the data and load it again; nothing was trained.")


def check_splits(dataset: Dataset, splits: Splits) -> None:
    for name in ("train", "val", "test"):
        idx = getattr(splits, name)
        if idx.size == 0:
            raise TrainingError(f"the {name} split is empty; use more rows or other split fractions")
        if idx.min() < 0 or idx.max() >= dataset.n_rows:
            raise TrainingError(
                f"the {name} split refers to rows outside the dataset ({dataset.n_rows} rows); "
                "split this dataset again with split_dataset()"
            )


def make_splits(dataset: Dataset, seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> Splits:
    """:func:`edgeloop.hub.datasets.split_dataset`, also for regression datasets.

    Classification splits are stratified by class. For a regression dataset
    that ``split_dataset`` cannot split (no classes to stratify by), the rows
    are permuted with ``numpy.random.default_rng(seed)`` and cut by ``fractions``.
    """
    if dataset_task(dataset) == "classification":
        return split_dataset(dataset, seed, fractions)
    try:
        splits = split_dataset(dataset, seed, fractions)
        if splits.train.size and splits.val.size and splits.test.size:
            return splits
    except (DataValidationError, TypeError, ValueError, AttributeError):
        pass
    n = dataset.n_rows
    idx = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * fractions[1]))
    n_test = max(1, round(n * fractions[2]))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise TrainingError(f"{n} rows cannot be split into train/val/test")
    parts = (idx[:n_train], idx[n_train:n_train + n_val], idx[n_train + n_val:])
    train, val, test = (np.sort(p).astype(np.int64) for p in parts)
    fr = (float(fractions[0]), float(fractions[1]), float(fractions[2]))
    return Splits(train, val, test, int(seed), fr, stratified=False)
