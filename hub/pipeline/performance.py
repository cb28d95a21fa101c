"""The pipeline's calibration step and the performance reference a bundle carries.

:func:`calibrate_classifier` fits the post-hoc calibration on the validation split
(:func:`edgeloop.hub.training.calibration.calibrate`) and returns the model to export;
:func:`onnx_calibration` measures what the exported graphs (fp32 and int8 alike) serve on the
held-out rows -- ECE, reliability bins and accuracy; :func:`performance_reference` is the
manifest's :class:`~edgeloop.agent.wire.performance.PerformanceReference` of the chosen graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeloop.agent.performance_estimate import reference_from_probabilities
from edgeloop.hub.export import evaluate_onnx
from edgeloop.hub.training.calibration import (
    ECE_BINS,
    Calibration,
    calibrate,
    expected_calibration_error,
    reliability_bins,
)

__all__ = ["calibrate_classifier", "onnx_calibration", "performance_reference"]

CALIBRATION_SUMMARY = ("method", "temperature", "fitted_on", "split", "rows", "bins", "ece_before", "ece_after",
                       "accuracy_before", "accuracy_after", "val_ece_before", "val_ece_after")


def calibrate_classifier(model, X_val: np.ndarray, y_val: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                         split: str) -> Calibration:
    """Temperature scaling fitted on the validation rows, judged on them, measured on ``split``'s rows."""
    return calibrate(model, X_val, y_val, X_test, y_test, split=split)


def onnx_calibration(graphs: dict[str, bytes | None], X: np.ndarray, y: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per exported graph (``fp32``, ``int8``): ``ece``, ``accuracy``, ``rows`` and ``reliability`` on ``X``."""
    out: dict[str, dict[str, Any]] = {}
    if len(X) == 0:
        return out
    for name, data in graphs.items():
        if data is None:
            continue
        probs = np.asarray(evaluate_onnx(data, X, y, "classification")["probabilities"], dtype=np.float64)
        out[name] = {"ece": expected_calibration_error(probs, y, ECE_BINS),
                     "accuracy": float((probs.argmax(1) == np.asarray(y)).mean()), "rows": int(len(X)),
                     "reliability": reliability_bins(probs, y, ECE_BINS)}
    return out


def performance_reference(graph: bytes, X: np.ndarray, y: np.ndarray, labels: list[str],
                          calibration: dict[str, Any], split: str) -> dict[str, Any] | None:
    """The chosen graph's held-out figures (measured and estimated accuracy, per class) for the manifest."""
    if len(X) == 0:
        return None
    probs = np.asarray(evaluate_onnx(graph, X, y, "classification")["probabilities"], dtype=np.float64)
    summary = {k: calibration[k] for k in CALIBRATION_SUMMARY if calibration.get(k) is not None}
    return reference_from_probabilities(probs, y, labels, calibration=summary, split=split).to_dict()
