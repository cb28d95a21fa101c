"""Classification and regression metrics (numpy only: no scikit-learn in hub code)."""

from __future__ import annotations

import numpy as np

from edgeloop.hub.errors import TrainingError
from edgeloop.hub.evaluation.scoring import score_regression

__all__ = ["confusion_matrix", "macro_f1", "regression_metrics"]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``cm[i, j]`` = rows of true class ``i`` predicted as class ``j``."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in truth or prediction.

    A class that is predicted but never true (or vice versa) scores 0, like
    scikit-learn's ``f1_score(average="macro", zero_division=0)``.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    present = (support + predicted) > 0
    if not present.any():
        return 0.0
    denom = support + predicted  # 2TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[present].mean())


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``{"mae", "rmse", "r2"}`` (R² = 1 - SSE/SST, like scikit-learn; 0.0 when the truth is constant)."""
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.size == 0 or t.size != p.size:
        raise TrainingError(f"regression metrics need equally long non-empty arrays, got {t.size} and {p.size}")
    scores = score_regression(t, p)  # the same numbers `edgeloop eval` reports
    return {k: scores[k] for k in ("mae", "rmse", "r2")}
