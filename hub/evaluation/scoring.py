"""Scores of predictions against the truth (numpy only, no model, no disk).

Classification: accuracy, macro-F1 (over the classes that occur in the truth or the
predictions, like scikit-learn's ``f1_score(average="macro", zero_division=0)`` and
the training runs' ``test_macro_f1``), the confusion matrix and per-class counts with
precision, recall and F1. Regression: MAE, RMSE and R² (1 - SSE/SST; 0.0 when the
truth is constant), plus the means of truth and prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["FEW_ROWS", "score", "score_classification", "score_regression"]

FEW_ROWS = 30  # below this a score moves by more than 3 points per row: said as a warning


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


def score_classification(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """``{"accuracy", "macro_f1", "rows", "labels", "confusion_matrix", "per_class", "absent_classes"}``.

    ``y_true`` and ``y_pred`` are class indices into ``labels``. ``confusion_matrix[i][j]``
    counts rows of true class ``i`` predicted as ``j``; ``per_class[label]`` is
    ``{"support", "predicted", "correct", "precision", "recall", "f1"}``;
    ``absent_classes`` lists the classes no row of the truth has.
    """
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    n = len(labels)
    if t.size == 0 or t.size != p.size:
        raise ValueError(f"scoring needs equally long non-empty arrays, got {t.size} and {p.size}")
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    per_class: dict[str, dict[str, Any]] = {}
    f1s = []
    for i, label in enumerate(labels):
        support, predicted, correct = int(cm[i].sum()), int(cm[:, i].sum()), int(cm[i, i])
        f1 = _ratio(2 * correct, support + predicted)
        if support + predicted:
            f1s.append(f1)
        per_class[str(label)] = {"support": support, "predicted": predicted, "correct": correct,
                                 "precision": _ratio(correct, predicted), "recall": _ratio(correct, support),
                                 "f1": f1}
    return {"accuracy": float(np.trace(cm) / t.size), "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
            "rows": int(t.size), "labels": [str(lab) for lab in labels], "confusion_matrix": cm.tolist(),
            "per_class": per_class,
            "absent_classes": [str(lab) for i, lab in enumerate(labels) if not cm[i].sum()]}


def score_regression(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """``{"mae", "rmse", "r2", "rows", "target_mean", "prediction_mean"}``."""
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.size == 0 or t.size != p.size:
        raise ValueError(f"scoring needs equally long non-empty arrays, got {t.size} and {p.size}")
    err = p - t
    sst = float(np.sum((t - t.mean()) ** 2))
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2))),
            "r2": 1.0 - float(np.sum(err ** 2)) / sst if sst > 0 else 0.0, "rows": int(t.size),
            "target_mean": float(t.mean()), "prediction_mean": float(p.mean())}


def score(task: str, y_true: np.ndarray, outputs: np.ndarray, labels: Sequence[str] = ()) -> dict[str, Any]:
    """Score a model's raw outputs: class probabilities ``[n, C]`` (classification; the
    predicted class is the most probable) or predictions ``[n, 1]`` (regression)."""
    out = np.asarray(outputs)
    if task == "regression":
        return score_regression(y_true, out.reshape(out.shape[0], -1)[:, 0])
    return score_classification(y_true, out.argmax(axis=1), labels)
