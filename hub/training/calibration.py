"""Post-hoc calibration of classifiers: temperature scaling, expected calibration error, reliability bins.

A classifier's top-class probability should be the chance its answer is right -- the device's
accuracy estimate (:mod:`edgeloop.agent.performance_estimate`) rests on it. Networks trained with
cross-entropy and early stopping are usually over-confident; **temperature scaling** (Guo et al.,
2017: one scalar ``T``, ``softmax(logits / T)``) fixes most of it without changing a single
prediction (the argmax is unchanged), so accuracy is untouched. ``T`` is fitted on the validation
split by minimising the negative log-likelihood (convex in ``1/T``: a golden-section search).

The method is chosen by measurement (:func:`calibrate`): temperature scaling is kept when it lowers
the validation split's ECE, else the model ships as trained (``method: "none"``). The calibrated
model is :class:`TemperatureScaled` -- the trained model with the division inside, so the exported
ONNX graph (fp32 and int8 alike) serves calibrated probabilities.

ECE (:func:`expected_calibration_error`): rows binned by top-class probability into ``bins``
equal-width bins; ``sum_b (n_b / n) * |accuracy_b - confidence_b|``. :func:`reliability_bins` gives
the per-bin numbers of a reliability diagram.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeloop.hub.errors import TrainingError

__all__ = ["ECE_BINS", "Calibration", "TemperatureScaled", "calibrate", "expected_calibration_error",
           "fit_temperature", "reliability_bins", "softmax"]

ECE_BINS = 15  # the usual choice (Guo et al.); with few rows per bin ECE is biased upward
_BETA_RANGE = (0.01, 20.0)  # 1/T searched here: T from 0.05 to 100


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(logits: np.ndarray, y: np.ndarray, beta: float) -> float:
    z = logits * beta
    zmax = z.max(axis=1, keepdims=True)
    lse = (zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1)))
    return float((lse - z[np.arange(z.shape[0]), y]).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray, *, iterations: int = 80) -> float:
    """The temperature ``T`` minimising the mean NLL of ``softmax(logits / T)`` on labels ``y``."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if z.ndim != 2 or z.shape[0] != y.size or y.size == 0:
        raise TrainingError(f"temperature scaling needs logits (n, C) and n labels, got {z.shape} and {y.shape}")
    lo, hi = _BETA_RANGE
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = _nll(z, y, c), _nll(z, y, d)
    for _ in range(iterations):  # NLL is convex in beta = 1/T
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = _nll(z, y, c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = _nll(z, y, d)
    return float(1.0 / ((a + b) / 2.0))


def reliability_bins(probabilities: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Per equal-width confidence bin: ``lo, hi, rows, confidence`` (mean top probability), ``accuracy``."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    pred = p.argmax(axis=1)
    conf = p[np.arange(p.shape[0]), pred]
    right = pred == y
    idx = np.minimum((conf * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        mine = idx == b
        n = int(mine.sum())
        out.append({"lo": b / bins, "hi": (b + 1) / bins, "rows": n,
                    "confidence": float(conf[mine].mean()) if n else None,
                    "accuracy": float(right[mine].mean()) if n else None})
    return out


def expected_calibration_error(probabilities: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the row-weighted mean gap between accuracy and mean confidence over equal-width bins."""
    rows = reliability_bins(probabilities, y, bins)
    n = sum(r["rows"] for r in rows)
    if n == 0:
        raise TrainingError("ECE needs at least one row")
    return float(sum(r["rows"] * abs(r["accuracy"] - r["confidence"]) for r in rows if r["rows"]) / n)


class TemperatureScaled(nn.Module):
    """A factory classifier with its logits divided by ``temperature`` before the softmax.

    Exposes what export and parity read (``task``, ``arch``, ``n_features``, ``n_outputs``,
    ``standardize``, ``raw``, ``config``), so it exports like the model it wraps (the division is
    in the graph); the saved torch weights stay the trained model's (fine-tuning starts from them
    and calibrates again).
    """

    temperature: torch.Tensor

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise TrainingError(f"a temperature must be a positive number, got {temperature}")
        self.model = model
        self.task = "classification"
        self.arch = getattr(model, "arch", "mlp")
        self.n_features = int(model.n_features)  # type: ignore[arg-type]
        self.n_outputs = self.n_classes = int(model.n_outputs)  # type: ignore[arg-type]
        self.standardize = getattr(model, "standardize", None)
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.raw(x) / self.temperature  # type: ignore[operator]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.raw(x), dim=-1)

    def config(self) -> dict:
        return {**self.model.config(), "temperature": float(self.temperature)}  # type: ignore[operator]


@dataclass
class Calibration:
    """What :func:`calibrate` decided and measured; ``model`` is what to export."""

    model: nn.Module
    method: str  # "temperature" | "none"
    temperature: float
    figures: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "temperature": self.temperature, **self.figures}


@torch.no_grad()
def _logits(model: nn.Module, X: np.ndarray) -> np.ndarray:
    xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    out = [model.raw(xt[s:s + 8192]).double().numpy() for s in range(0, xt.shape[0], 8192)]  # type: ignore[operator]
    return np.concatenate(out) if out else np.zeros((0, int(getattr(model, "n_outputs", 0))))


def calibrate(model: nn.Module, X_val: np.ndarray, y_val: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, *,
              split: str = "test", bins: int = ECE_BINS) -> Calibration:
    """Calibrate on the validation rows; the method is chosen by measurement.

    Candidates: ``none`` (the model as trained) and ``temperature`` (one ``T`` fitted on the
    validation rows by NLL); temperature scaling is kept when it lowers the validation ECE.
    (A per-row temperature growing with the row's distance from the training data was tried and
    measured worse: on the sample data a row moved across a class boundary by noise is not far
    from the data, so no input-only correction can see it -- see docs/performance-estimation.md.)

    ``figures``: ``ece_before``/``ece_after``, ``accuracy_before``/``accuracy_after`` and the
    reliability bins before and after on the held-out rows (``split`` names them), the validation
    ECE before and after, the fitted temperature, row counts and ``bins``.
    """
    model = model.cpu().eval()
    zv, zt = _logits(model, X_val), _logits(model, X_test)
    yv, yt = np.asarray(y_val, dtype=np.int64), np.asarray(y_test, dtype=np.int64)
    t = fit_temperature(zv, yv) if yv.size else 1.0
    val_before = expected_calibration_error(softmax(zv), yv, bins) if yv.size else None
    val_after = expected_calibration_error(softmax(zv, t), yv, bins) if yv.size else None
    keep = val_before is not None and val_after is not None and val_after < val_before
    temperature = t if keep else 1.0
    before, after = softmax(zt), softmax(zt, temperature)
    figures: dict[str, Any] = {
        "fitted_temperature": t, "fitted_on": "val", "val_rows": int(yv.size), "val_ece_before": val_before,
        "val_ece_after": val_after if keep else val_before, "split": split, "rows": int(yt.size), "bins": bins,
    }
    if yt.size:
        figures.update(
            ece_before=expected_calibration_error(before, yt, bins),
            ece_after=expected_calibration_error(after, yt, bins),
            accuracy_before=float((before.argmax(1) == yt).mean()),
            accuracy_after=float((after.argmax(1) == yt).mean()),
            reliability_before=reliability_bins(before, yt, bins),
            reliability_after=reliability_bins(after, yt, bins),
        )
    wrapped = TemperatureScaled(model, temperature) if keep else model
    return Calibration(wrapped, "temperature" if keep else "none", float(temperature), figures)
