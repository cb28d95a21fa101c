"""Seeded train/validation/test splits of a dataset: stratified for classification, shuffled for regression."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from edgeloop.hub.datasets.dataset import MIN_CLASS_ROWS, Dataset
from edgeloop.hub.datasets.problems import Problem, validation_error
from edgeloop.hub.errors import DataValidationError

__all__ = ["Splits", "split_dataset"]


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
            raise validation_error(dataset.source or "dataset", [Problem(
                None, None, "too_few_rows", f"{dataset.n_rows} row(s); need 3 to split")])
        train, val, test = (np.sort(p).astype(np.int64) for p in _cut(rng.permutation(dataset.n_rows), fr))
        return Splits(train, val, test, int(seed), fr, stratified=False)
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
        for part, piece in zip(parts, _cut(rng.permutation(idx), fr), strict=True):
            part.append(piece)
    if problems:
        raise validation_error(dataset.source or "dataset", problems)
    train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts)
    return Splits(train, val, test, int(seed), fr)

