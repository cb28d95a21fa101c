"""What training needs to know about a dataset before it starts: its task, window shape,
validity (regression target checks included) and train/validation/test splits."""

from __future__ import annotations

import math

import numpy as np

from edgeloop.hub.datasets import MIN_ROWS, Dataset, Splits, split_dataset, validate_dataset
from edgeloop.hub.errors import DataValidationError, TrainingError
from edgeloop.hub.training.params import TASKS

__all__ = ["DEFAULT_FRACTIONS", "check_fractions", "check_splits", "dataset_task", "dataset_window_shape",
           "make_splits", "parse_split", "validate_for_training"]

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)  # train, validation, test


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
    min_rows = getattr(dataset, "min_rows", MIN_ROWS)  # what the dataset was accepted with (data import --min-rows)
    if X.shape[0] < min_rows:
        problems.append(f"{X.shape[0]} data row(s); at least {min_rows} are needed")
    if problems:
        raise DataValidationError(f"{getattr(dataset, 'source', '') or 'dataset'} is not valid regression data: "
                                  + "; ".join(problems) + ". Fix the data and load it again; nothing was trained.")


def check_fractions(fractions, *, explicit_test: bool = False) -> tuple[float, float, float]:
    """``(train, val, test)`` split ratios, checked: three finite numbers >= 0 that sum to 1,
    with training and validation rows (early stopping needs them); the test ratio may be 0.
    With ``explicit_test`` (a separate test dataset) the test ratio must be 0."""
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise TrainingError(f"split {fractions!r} is not three numbers TRAIN,VAL,TEST, e.g. 0.7,0.15,0.15") from None
    if len(fr) != 3 or not all(math.isfinite(f) for f in fr):
        raise TrainingError(f"split {fractions!r} needs three numbers TRAIN,VAL,TEST, e.g. 0.7,0.15,0.15 "
                            "or 0.8,0.2,0 (no test split)")
    if any(f < 0 for f in fr):
        raise TrainingError(f"split {','.join(f'{f:g}' for f in fr)} has a negative ratio; use ratios >= 0")
    if not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise TrainingError(f"split ratios {','.join(f'{f:g}' for f in fr)} sum to {sum(fr):g}, not 1; "
                            "e.g. 0.7,0.15,0.15 or 0.8,0.2,0")
    if fr[0] <= 0:
        raise TrainingError("the training ratio of the split is 0; give training rows, e.g. 0.8,0.2,0")
    if fr[1] <= 0:
        raise TrainingError("the validation ratio of the split is 0; early stopping needs validation rows, "
                            "e.g. 0.8,0.2,0")
    if explicit_test and fr[2] > 0:
        raise TrainingError(f"split test ratio {fr[2]:g} with a separate test dataset: the test rows come from that "
                            f"dataset, so give TRAIN,VAL,0 (e.g. {fr[0] + fr[2]:g},{fr[1]:g},0)")
    return fr[0], fr[1], fr[2]


def parse_split(text: str, *, explicit_test: bool = False) -> tuple[float, float, float]:
    """``"0.8,0.2,0"`` -> ``(0.8, 0.2, 0.0)``, checked by :func:`check_fractions`."""
    parts = [p for p in str(text).replace(" ", "").split(",") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise TrainingError(f"split {text!r} is not three comma-separated numbers TRAIN,VAL,TEST, "
                            "e.g. 0.7,0.15,0.15") from None
    return check_fractions(values, explicit_test=explicit_test)


def check_splits(dataset: Dataset, splits: Splits, *, need_test: bool = False) -> None:
    """The split indices exist in ``dataset``; train and validation are not empty (nor test with ``need_test``)."""
    for name in ("train", "val", "test"):
        idx = getattr(splits, name)
        if idx.size == 0:
            if name == "test" and not need_test:
                continue
            raise TrainingError(f"the {name} split is empty; use more rows or other split fractions")
        if idx.min() < 0 or idx.max() >= dataset.n_rows:
            raise TrainingError(
                f"the {name} split refers to rows outside the dataset ({dataset.n_rows} rows); "
                "split this dataset again with split_dataset()"
            )


def make_splits(dataset: Dataset, seed: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> Splits:
    """:func:`edgeloop.hub.datasets.split_dataset`, also for regression datasets and a test ratio of 0.

    Classification splits are stratified by class. For a regression dataset
    that ``split_dataset`` cannot split (no classes to stratify by), the rows
    are permuted with ``numpy.random.default_rng(seed)`` and cut by ``fractions``.
    With a test ratio of 0 (see :func:`check_fractions`) the test split is
    empty and every row goes to train or validation (stratified the same way).
    """
    fractions = check_fractions(fractions)
    if fractions[2] == 0:
        return _train_val_split(dataset, seed, fractions)
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


def _train_val_split(dataset: Dataset, seed: int, fr: tuple[float, float, float]) -> Splits:
    """Every row in train or validation (none for test): per class for classification, else over all rows."""
    rng = np.random.default_rng(seed)
    classification = dataset_task(dataset) == "classification"
    groups = ([np.nonzero(dataset.y == c)[0] for c in range(dataset.n_classes)] if classification
              else [np.arange(dataset.n_rows)])
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for idx in groups:
        if idx.size == 0:
            continue
        if idx.size < 2:
            raise TrainingError(f"{idx.size} row(s) cannot be split into train and validation; use more rows")
        perm = rng.permutation(idx)
        n_val = min(idx.size - 1, max(1, round(idx.size * fr[1])))
        val.append(perm[:n_val])
        train.append(perm[n_val:])
    return Splits(np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(val)).astype(np.int64),
                  np.zeros(0, np.int64), int(seed), fr, stratified=classification)
