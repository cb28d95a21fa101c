"""What ships: the fp32-vs-int8 report (metric change, output difference, size, latency)
and the decision -- int8 only when it costs at most a budget of the metric and is not slower."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from edgeloop.agent.wire.tensors import INPUT_NAME
from edgeloop.hub.errors import ExportError
from edgeloop.hub.export.parity import evaluate_onnx, make_session

__all__ = [
    "LATENCY_BATCHES",
    "MIN_DECISION_ROWS",
    "QuantDecision",
    "choose_model",
    "compare_fp32_int8",
    "decide_quantization",
    "measure_latency_us",
    "quantization_report",
]

LATENCY_BATCHES = (1, 32)
# A metric change judged on fewer rows than this is mostly noise (one row of 29 is 3.4 points): the
# decision is still made, with a warning in its record.
MIN_DECISION_ROWS = 30


def measure_latency_us(models: Sequence[bytes | ort.InferenceSession], X: np.ndarray, batch: int = 1, *,
                       runs: int = 300, warmup: int = 30) -> list[float]:
    """Median latency (µs) of ``session.run`` at ``batch`` rows for each model, with the edge session options.

    Runs are interleaved (model A, model B, A, B, ...) so machine noise hits all
    alike; batches cycle through the rows of ``X`` (tiled when there are fewer
    than ``batch`` rows).
    """
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ExportError(f"latency needs a non-empty 2-D sample, got shape {X.shape}")
    if X.shape[0] < batch:
        X = np.tile(X, (int(np.ceil(batch / X.shape[0])), 1))
    starts = range(0, max(1, min(X.shape[0] - batch + 1, 64 * batch)), batch)
    batches = [np.ascontiguousarray(X[s:s + batch]) for s in starts]
    sessions = [m if isinstance(m, ort.InferenceSession) else make_session(m) for m in models]
    names = [s.get_outputs()[0].name for s in sessions]
    for s, name in zip(sessions, names, strict=True):
        for i in range(warmup):
            s.run([name], {INPUT_NAME: batches[i % len(batches)]})
    times: list[list[float]] = [[] for _ in sessions]
    for i in range(runs):
        xb = batches[i % len(batches)]
        for k, (s, name) in enumerate(zip(sessions, names, strict=True)):
            t0 = time.perf_counter_ns()
            s.run([name], {INPUT_NAME: xb})
            times[k].append((time.perf_counter_ns() - t0) / 1000.0)
    return [float(np.median(t)) for t in times]


def quantization_report(
    fp32: bytes,
    int8: bytes,
    X_test: np.ndarray,
    y_test: np.ndarray,
    task: str | None = None,
    *,
    latency_runs: int = 300,
    batches: Sequence[int] = LATENCY_BATCHES,
) -> dict[str, Any]:
    """The fp32-vs-int8 parity report: metric change, agreement, output difference, size, latency.

    Classification: ``fp32_accuracy``, ``int8_accuracy``, ``accuracy_delta_points``
    (int8 - fp32, in percentage points; negative = int8 worse) and
    ``prediction_agreement`` (share of rows with the same class). Regression:
    ``fp32_rmse``, ``int8_rmse``, ``rmse_delta`` (int8 - fp32, target unit),
    ``rmse_delta_pct`` (in % of the fp32 RMSE), MAE and R² of both.
    Both: ``metric`` and ``metric_drop_points`` (the loss :func:`decide_quantization`
    compares with its budget: accuracy points lost, or % RMSE gained),
    ``max_abs_diff`` of the outputs, ``fp32_bytes``, ``int8_bytes``,
    ``size_ratio`` (int8/fp32), median ``fp32_latency_us_batch{b}`` /
    ``int8_latency_us_batch{b}`` and ``latency_ratio_batch{b}`` (int8/fp32) for
    ``b`` in ``batches`` (default 1 and 32), measured interleaved with the
    edge session options (:func:`make_session`) on this machine, and ``n_test``.
    """
    a = evaluate_onnx(fp32, X_test, y_test, task)
    task = task or ("regression" if "rmse" in a else "classification")
    b = evaluate_onnx(int8, X_test, y_test, task)
    report: dict[str, Any] = {"task": task}
    if task == "regression":
        delta = b["rmse"] - a["rmse"]
        pct = 100.0 * delta / a["rmse"] if a["rmse"] > 0 else (0.0 if delta == 0 else float("inf"))
        report.update({
            "fp32_rmse": a["rmse"], "int8_rmse": b["rmse"], "rmse_delta": delta, "rmse_delta_pct": pct,
            "fp32_mae": a["mae"], "int8_mae": b["mae"], "fp32_r2": a["r2"], "int8_r2": b["r2"],
            "metric": "rmse", "metric_drop_points": pct,
        })
    else:
        report.update({
            "fp32_accuracy": a["accuracy"], "int8_accuracy": b["accuracy"],
            "accuracy_delta_points": (b["accuracy"] - a["accuracy"]) * 100.0,
            "prediction_agreement": float((a["predictions"] == b["predictions"]).mean()),
            "metric": "accuracy", "metric_drop_points": (a["accuracy"] - b["accuracy"]) * 100.0,
        })
    report["max_abs_diff"] = float(np.max(np.abs(a["outputs"].astype(np.float64) - b["outputs"].astype(np.float64))))
    report.update({"fp32_bytes": len(fp32), "int8_bytes": len(int8), "size_ratio": len(int8) / len(fp32)})
    sessions = [make_session(fp32), make_session(int8)]
    for bs in batches:
        runs = latency_runs if bs == 1 else max(30, latency_runs // 3)
        l32, l8 = measure_latency_us(sessions, np.asarray(X_test), int(bs), runs=runs)
        report[f"fp32_latency_us_batch{bs}"] = l32
        report[f"int8_latency_us_batch{bs}"] = l8
        report[f"latency_ratio_batch{bs}"] = l8 / l32 if l32 > 0 else float("nan")
    report["n_test"] = a["n"]
    return report


def compare_fp32_int8(fp32: bytes, int8: bytes, X_test: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    """:func:`quantization_report` with the task read from the models' output name (kept for callers)."""
    return quantization_report(fp32, int8, X_test, y_test)


@dataclass(frozen=True)
class QuantDecision:
    """Which model to ship and why (stored in the manifest's ``quantization``)."""

    chosen: str  # "int8" | "fp32"
    reason: str
    budget_points: float
    warning: str | None = None  # e.g. judged on fewer than MIN_DECISION_ROWS rows

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"chosen": self.chosen, "reason": self.reason, "budget_points": self.budget_points}
        if self.warning:
            d["warning"] = self.warning
        return d


def decide_quantization(report: dict[str, Any], budget_points: float = 1.0) -> QuantDecision:
    """int8 only if its metric drops by at most ``budget_points`` AND it is not slower at batch 1.

    Classification: the budget is in accuracy points. Regression: in percent of
    the fp32 RMSE (``budget_points=1.0`` allows the int8 RMSE to be up to 1 %
    higher). The reason string carries the numbers. When the report's
    ``n_test`` (the rows the metrics were measured on: the explicit test set
    when one was given) is below :data:`MIN_DECISION_ROWS`, the decision
    carries a ``warning`` saying so.
    """
    regression = report.get("metric") == "rmse"
    if "metric_drop_points" in report:
        drop = float(report["metric_drop_points"])
    else:
        drop = -float(report["accuracy_delta_points"])
    lat8, lat32 = float(report["int8_latency_us_batch1"]), float(report["fp32_latency_us_batch1"])
    within = drop <= budget_points
    not_slower = lat8 <= lat32
    cmp = "<=" if within else ">"
    if regression:
        quality = f"RMSE change {drop:+.2f}% of fp32 {cmp} budget {budget_points:g}%"
    else:
        quality = f"accuracy drop {drop:.2f} pt {cmp} budget {budget_points:g} pt"
    speed = f"int8 {lat8:.1f} µs vs fp32 {lat32:.1f} µs at batch 1"
    chosen = "int8" if within and not_slower else "fp32"
    reason = f"{quality}; {speed} ({'not slower' if not_slower else 'int8 slower'})"
    n = report.get("n_test")
    warning = None
    if n is not None and int(n) < MIN_DECISION_ROWS:
        warning = (f"decided on {int(n)} test rows (< {MIN_DECISION_ROWS}): one row is "
                   f"{100.0 / max(int(n), 1):.1f} points; use more test rows")
        reason += f"; only {int(n)} test rows"
    return QuantDecision(chosen, f"{reason} -> ship {chosen}", float(budget_points), warning)


def choose_model(report: dict[str, Any], budget_points: float = 1.0) -> str:
    """``"int8"`` or ``"fp32"`` per :func:`decide_quantization` (use that for the reason)."""
    return decide_quantization(report, budget_points).chosen
