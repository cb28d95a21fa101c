"""Accuracy without labels: confidence-based performance estimation (CBPE), numpy only.

A calibrated classifier's top-class probability ``c_i`` is the chance that its answer on row ``i``
is right, so over a window of ``M`` rows the expected accuracy is ``mean(c_i)`` -- no labels
needed. This holds while the model stays calibrated on the rows it serves: under covariate shift
(inputs move, the relation of label to input stays) it degrades gracefully; under label shift or
concept shift, and for uncalibrated models, it does not (docs/performance-estimation.md).

* :func:`reference_from_probabilities` -- the hub side: the held-out split's measured and estimated
  accuracy, per class, and the spread of ``c`` (a :class:`PerformanceReference` for the manifest);
* :class:`WindowSums` -- what a drift window accumulates: ``sum c``, ``sum c^2``, per predicted class
  its rows and ``sum c``, per class the probability mass ``sum p_k``, and feedback labels;
* :func:`estimate` -- a window's :class:`PerformanceEstimate`:

  - accuracy ``A = sum c / M``; interval ``A +- z * sqrt(sum c (1 - c)) / M`` (the realized accuracy
    of ``M`` independent rows with success chances ``c_i`` has that variance: Poisson-binomial);
  - per class ``k``: precision ``sum_{pred=k} c / #pred=k`` and recall ``sum_{pred=k} c / sum p_k``,
    the recall with a normal interval over ``sum p_k`` expected rows of the class;
  - flag when ``reference.estimated_accuracy - A > margin + z_1 * confidence_sd / sqrt(M)``: the drop
    beyond the stated ``margin`` and beyond what a window of ``M`` unshifted rows reaches by chance
    (one-sided at ``reference.confidence``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from edgeloop.agent.wire.performance import (
    DEFAULT_CONFIDENCE,
    DEFAULT_MARGIN,
    ClassEstimate,
    ClassReference,
    PerformanceEstimate,
    PerformanceReference,
)

__all__ = ["WindowSums", "confidences", "estimate", "flag_threshold", "reference_from_probabilities"]


def _z(p: float) -> float:
    return float(NormalDist().inv_cdf(p))


def _clip01(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


def confidences(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class and top-class probability of each row of ``probabilities`` (n, C)."""
    p = np.asarray(probabilities, dtype=np.float64)
    pred = p.argmax(axis=1)
    return pred, p[np.arange(p.shape[0]), pred]


def flag_threshold(ref: PerformanceReference, rows: int) -> float:
    """The drop of a window's estimate below ``ref.estimated_accuracy`` that flags it (window-size aware)."""
    if rows <= 0:
        return math.inf
    return float(ref.margin + _z(ref.confidence) * ref.confidence_sd / math.sqrt(rows))


@dataclass
class WindowSums:
    """What one drift window accumulates for the estimate (adds up exactly: windows merge by addition)."""

    n_classes: int
    rows: int = 0
    conf: float = 0.0  # sum of the top-class probabilities
    conf_sq: float = 0.0  # sum of their squares
    pred_rows: np.ndarray = field(init=False)  # rows predicted as each class
    pred_conf: np.ndarray = field(init=False)  # sum of c over the rows predicted as each class
    mass: np.ndarray = field(init=False)  # sum of p_k over all rows
    labelled: int = 0  # feedback labels that arrived during the window ...
    correct: int = 0  # ... and how many matched the model's answer

    def __post_init__(self) -> None:
        self.pred_rows = np.zeros(self.n_classes, dtype=np.int64)
        self.pred_conf = np.zeros(self.n_classes)
        self.mass = np.zeros(self.n_classes)

    def add(self, probabilities: np.ndarray) -> None:
        """Add the rows' class probabilities (n, C); rows with non-finite values are skipped."""
        p = np.asarray(probabilities, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != self.n_classes:
            raise ValueError(f"expected probabilities of shape (n, {self.n_classes}), got {p.shape}")
        p = p[np.isfinite(p).all(axis=1)]
        if not p.shape[0]:
            return
        pred, c = confidences(p)
        self.rows += int(p.shape[0])
        self.conf += float(c.sum())
        self.conf_sq += float((c * c).sum())
        self.pred_rows += np.bincount(pred, minlength=self.n_classes)[: self.n_classes]
        self.pred_conf += np.bincount(pred, weights=c, minlength=self.n_classes)[: self.n_classes]
        self.mass += p.sum(axis=0)

    def add_labels(self, correct: int, labelled: int) -> None:
        """Feedback: ``labelled`` ground-truth labels arrived, ``correct`` of them equal to the model's answer."""
        if labelled < 0 or not 0 <= correct <= labelled:
            raise ValueError(f"need 0 <= correct <= labelled, got {correct} of {labelled}")
        self.labelled += int(labelled)
        self.correct += int(correct)


def estimate(sums: WindowSums, ref: PerformanceReference) -> PerformanceEstimate | None:
    """The window's estimate against ``ref``; None when the window has no rows."""
    m = sums.rows
    if m <= 0:
        return None
    acc = _clip01(sums.conf / m)
    z2 = _z(1.0 - (1.0 - ref.confidence) / 2.0)
    half = z2 * math.sqrt(max(0.0, sums.conf - sums.conf_sq)) / m
    threshold = flag_threshold(ref, m)
    per_class = []
    for k, label in enumerate(ref.labels):
        n_pred, mass = int(sums.pred_rows[k]), float(sums.mass[k])
        precision = _clip01(sums.pred_conf[k] / n_pred) if n_pred else None
        recall = _clip01(sums.pred_conf[k] / mass) if mass > 1e-12 else None
        lo = hi = None
        if recall is not None:
            h = z2 * math.sqrt(recall * (1.0 - recall) / max(mass, 1.0))
            lo, hi = _clip01(recall - h), _clip01(recall + h)
        per_class.append(ClassEstimate(label, n_pred, precision, recall, lo, hi))
    return PerformanceEstimate(
        rows=m, accuracy=acc, low=_clip01(acc - half), high=_clip01(acc + half),
        reference=ref.estimated_accuracy, reference_measured=ref.accuracy, threshold=threshold,
        flagged=bool(ref.estimated_accuracy - acc > threshold), per_class=per_class,
        labelled=sums.labelled, correct=sums.correct,
        realized=(sums.correct / sums.labelled) if sums.labelled else None, confidence=ref.confidence,
    )


def reference_from_probabilities(probabilities: np.ndarray, y: np.ndarray, labels: list[str], *,
                                 calibration: dict | None = None, split: str = "test",
                                 margin: float = DEFAULT_MARGIN,
                                 confidence: float = DEFAULT_CONFIDENCE) -> PerformanceReference:
    """The held-out split's figures for the manifest: measured and estimated accuracy, per class, spread of c."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if p.ndim != 2 or p.shape[0] != y.size or y.size == 0 or p.shape[1] != len(labels):
        raise ValueError(f"need probabilities (n, {len(labels)}) and n labels, got {p.shape} and {y.shape}")
    pred, c = confidences(p)
    right = pred == y
    per_class = []
    for k, label in enumerate(labels):
        mine, as_k = y == k, pred == k
        mass = float(p[:, k].sum())
        per_class.append(ClassReference(
            label=label, support=int(mine.sum()),
            accuracy=float(right[mine].mean()) if mine.any() else 0.0,
            estimated=_clip01(float(c[as_k].sum()) / mass) if mass > 1e-12 else 0.0,
            precision=float(right[as_k].mean()) if as_k.any() else None,
            estimated_precision=float(c[as_k].mean()) if as_k.any() else None))
    return PerformanceReference(
        accuracy=float(right.mean()), estimated_accuracy=_clip01(float(c.mean())), rows=int(y.size),
        confidence_sd=float(min(0.5, c.std())), labels=list(labels), per_class=per_class,
        calibration=dict(calibration or {}), split=split, margin=float(margin), confidence=float(confidence))
