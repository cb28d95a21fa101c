"""Accuracy without labels on the wire: the bundle's performance reference and a window's estimate.

:class:`PerformanceReference` rides in the manifest (``manifest.performance``, absent from bundles
of older hubs and from regression models): how the model was calibrated (temperature scaling
fitted on the validation split, expected calibration error before and after) and what it achieved
on the held-out split -- measured accuracy beside the accuracy estimated from its own calibrated
probabilities, overall and per class -- plus the drop ``margin`` and ``confidence`` of the
on-device flag. :class:`PerformanceEstimate` rides in every judged drift window
(``DriftReport.performance``): the window's estimated accuracy with a confidence interval from the
window size, per-class estimates, the flag, and -- where ground-truth labels arrived through the
feedback path -- the realized accuracy beside it. The math is in
:mod:`edgeloop.agent.performance_estimate`; see docs/performance-estimation.md.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from edgeloop.agent.errors import MessageFormatError
from edgeloop.agent.wire.fields import list_of, obj, objects, opt, req

PERFORMANCE_METHODS = ("cbpe",)  # confidence-based performance estimation (expected accuracy = mean max prob.)
DEFAULT_MARGIN = 0.01  # the estimate may fall this far below the reference before the noise allowance
DEFAULT_CONFIDENCE = 0.95  # one-sided: the flag's allowance for a window's sampling noise


def _fraction(value: float, name: str, where: str) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise MessageFormatError(f"{where}: {name} must be a fraction in [0, 1], got {value}")
    return value


def _opt_fraction(d: dict, key: str, where: str) -> float | None:
    value = opt(d, key, float, where)
    return None if value is None else _fraction(value, key, where)


@dataclass
class ClassReference:
    """One class on the held-out split: rows of it, measured and estimated recall and precision."""

    label: str
    support: int  # held-out rows of this class
    accuracy: float  # measured recall: share of its rows predicted as it
    estimated: float  # recall estimated from the calibrated probabilities alone
    precision: float | None = None  # measured: share of rows predicted as it that are it (None: never predicted)
    estimated_precision: float | None = None

    def to_dict(self) -> dict:
        return {"label": self.label, "support": self.support, "accuracy": self.accuracy,
                "estimated": self.estimated, "precision": self.precision,
                "estimated_precision": self.estimated_precision}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> ClassReference:
        obj(d, where)
        support = req(d, "support", int, where)
        if support < 0:
            raise MessageFormatError(f"{where}: support must not be negative")
        return cls(label=req(d, "label", str, where), support=support,
                   accuracy=_fraction(req(d, "accuracy", float, where), "accuracy", where),
                   estimated=_fraction(req(d, "estimated", float, where), "estimated", where),
                   precision=_opt_fraction(d, "precision", where),
                   estimated_precision=_opt_fraction(d, "estimated_precision", where))


@dataclass
class PerformanceReference:
    """What the calibrated model achieved on the held-out split, and the on-device flag's settings.

    ``accuracy`` is measured (labels); ``estimated_accuracy`` the mean of the calibrated top-class
    probability on the same rows -- what the device computes per window, so a window is compared
    with ``estimated_accuracy`` (like with like). ``confidence_sd`` is the standard deviation of the
    top-class probability over those rows (the estimate's noise on a window of ``M`` rows is
    ``confidence_sd / sqrt(M)``). ``calibration``: ``method`` (``temperature`` or ``none``),
    ``temperature``, ``ece_before``/``ece_after`` and their ``split``, ``bins``.
    """

    accuracy: float
    estimated_accuracy: float
    rows: int
    confidence_sd: float
    labels: list[str]
    per_class: list[ClassReference] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)
    split: str = "test"  # the held-out split the figures come from (test, test_data or val)
    margin: float = DEFAULT_MARGIN
    confidence: float = DEFAULT_CONFIDENCE
    method: str = "cbpe"

    def to_dict(self) -> dict:
        return {"method": self.method, "accuracy": self.accuracy, "estimated_accuracy": self.estimated_accuracy,
                "rows": self.rows, "confidence_sd": self.confidence_sd, "labels": list(self.labels),
                "per_class": [c.to_dict() for c in self.per_class], "calibration": copy.deepcopy(self.calibration),
                "split": self.split, "margin": self.margin, "confidence": self.confidence}

    @classmethod
    def from_dict(cls, d: dict, where: str = "performance") -> PerformanceReference:
        obj(d, where)
        method = opt(d, "method", str, where, "cbpe")
        if method not in PERFORMANCE_METHODS:
            raise MessageFormatError(f"{where}: performance method {method!r} is unknown to this agent "
                                     f"(it knows {', '.join(PERFORMANCE_METHODS)}); upgrade the agent")
        ref = cls(
            accuracy=_fraction(req(d, "accuracy", float, where), "accuracy", where),
            estimated_accuracy=_fraction(req(d, "estimated_accuracy", float, where), "estimated_accuracy", where),
            rows=req(d, "rows", int, where),
            confidence_sd=req(d, "confidence_sd", float, where),
            labels=list_of(d, "labels", str, where),
            per_class=[ClassReference.from_dict(c, w) for c, w in objects(d, "per_class", where, [])],
            calibration=opt(d, "calibration", dict, where, {}),
            split=opt(d, "split", str, where, "test"),
            margin=opt(d, "margin", float, where, DEFAULT_MARGIN),
            confidence=opt(d, "confidence", float, where, DEFAULT_CONFIDENCE),
            method=method,
        )
        if ref.rows <= 0:
            raise MessageFormatError(f"{where}: rows must be positive")
        if not (math.isfinite(ref.confidence_sd) and 0.0 <= ref.confidence_sd <= 0.5):
            raise MessageFormatError(f"{where}: confidence_sd must be in [0, 0.5], got {ref.confidence_sd}")
        if not (math.isfinite(ref.margin) and 0.0 <= ref.margin < 1.0):
            raise MessageFormatError(f"{where}: margin must be in [0, 1), got {ref.margin}")
        if not 0.5 <= ref.confidence < 1.0:
            raise MessageFormatError(f"{where}: confidence must be in [0.5, 1), got {ref.confidence}")
        if len(ref.labels) < 2 or len(set(ref.labels)) != len(ref.labels):
            raise MessageFormatError(f"{where}: labels must be at least 2 distinct class names")
        if ref.per_class and [c.label for c in ref.per_class] != ref.labels:
            raise MessageFormatError(f"{where}: per_class must follow labels in order")
        return ref


@dataclass
class ClassEstimate:
    """One class in a window: rows predicted as it, estimated precision and recall (recall with its interval)."""

    label: str
    predicted: int
    precision: float | None  # None: no row predicted as this class
    recall: float | None  # None: the probabilities give this class no mass
    recall_low: float | None = None
    recall_high: float | None = None

    def to_dict(self) -> dict:
        return {"label": self.label, "predicted": self.predicted, "precision": self.precision,
                "recall": self.recall, "recall_low": self.recall_low, "recall_high": self.recall_high}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> ClassEstimate:
        obj(d, where)
        predicted = req(d, "predicted", int, where)
        if predicted < 0:
            raise MessageFormatError(f"{where}: predicted must not be negative")
        return cls(label=req(d, "label", str, where), predicted=predicted,
                   precision=_opt_fraction(d, "precision", where), recall=_opt_fraction(d, "recall", where),
                   recall_low=_opt_fraction(d, "recall_low", where),
                   recall_high=_opt_fraction(d, "recall_high", where))


@dataclass
class PerformanceEstimate:
    """A drift window's estimated accuracy (no labels needed) and, where labels arrived, the realized one.

    ``accuracy`` is the mean calibrated top-class probability of the window's ``rows``; ``low`` and
    ``high`` bound the accuracy the window's rows would realize if the model is as calibrated on them
    as on the held-out split (``confidence`` two-sided). ``flagged``: ``accuracy`` fell below
    ``reference`` (the held-out estimate) by more than ``threshold`` (the reference's margin plus the
    window's noise allowance). ``labelled``/``correct``/``realized``: feedback labels that arrived
    while the window was open and how many matched the model's answer (``realized`` None: none).
    """

    rows: int
    accuracy: float
    low: float
    high: float
    reference: float  # the held-out split's estimated accuracy
    reference_measured: float  # the held-out split's measured accuracy
    threshold: float  # drop below ``reference`` that flags
    flagged: bool
    per_class: list[ClassEstimate] = field(default_factory=list)
    labelled: int = 0
    correct: int = 0
    realized: float | None = None
    confidence: float = DEFAULT_CONFIDENCE

    @property
    def drop(self) -> float:
        """How far the estimate is below the reference (negative: above it)."""
        return self.reference - self.accuracy

    @property
    def error(self) -> float | None:
        """Estimate minus realized accuracy (None without labels)."""
        return None if self.realized is None else self.accuracy - self.realized

    def to_dict(self) -> dict:
        return {"rows": self.rows, "accuracy": self.accuracy, "low": self.low, "high": self.high,
                "reference": self.reference, "reference_measured": self.reference_measured,
                "threshold": self.threshold, "flagged": self.flagged,
                "per_class": [c.to_dict() for c in self.per_class], "labelled": self.labelled,
                "correct": self.correct, "realized": self.realized, "confidence": self.confidence}

    @classmethod
    def from_dict(cls, d: dict, where: str = "performance") -> PerformanceEstimate:
        obj(d, where)
        est = cls(
            rows=req(d, "rows", int, where),
            accuracy=_fraction(req(d, "accuracy", float, where), "accuracy", where),
            low=_fraction(req(d, "low", float, where), "low", where),
            high=_fraction(req(d, "high", float, where), "high", where),
            reference=_fraction(req(d, "reference", float, where), "reference", where),
            reference_measured=_fraction(req(d, "reference_measured", float, where), "reference_measured", where),
            threshold=req(d, "threshold", float, where),
            flagged=req(d, "flagged", bool, where),
            per_class=[ClassEstimate.from_dict(c, w) for c, w in objects(d, "per_class", where, [])],
            labelled=opt(d, "labelled", int, where, 0),
            correct=opt(d, "correct", int, where, 0),
            realized=_opt_fraction(d, "realized", where),
            confidence=opt(d, "confidence", float, where, DEFAULT_CONFIDENCE),
        )
        if est.rows < 0 or est.labelled < 0 or not 0 <= est.correct <= est.labelled:
            raise MessageFormatError(f"{where}: need rows >= 0 and 0 <= correct <= labelled")
        if not est.low <= est.accuracy <= est.high:
            raise MessageFormatError(f"{where}: need low <= accuracy <= high")
        return est


__all__ = ["DEFAULT_CONFIDENCE", "DEFAULT_MARGIN", "PERFORMANCE_METHODS", "ClassEstimate", "ClassReference",
           "PerformanceEstimate", "PerformanceReference"]
