"""onnxruntime sessions with the edge agents' options, the onnxruntime-vs-torch parity gate,
and scoring an ONNX model on labelled rows."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from edgeloop.agent.wire.tensors import INPUT_NAME, REGRESSION_OUTPUT
from edgeloop.hub.errors import ExportError
from edgeloop.hub.export.sessions import make_session

__all__ = ["check_parity", "evaluate_onnx", "make_session"]


def _run(session: ort.InferenceSession, X: np.ndarray) -> np.ndarray:
    name = session.get_outputs()[0].name
    return session.run([name], {INPUT_NAME: np.ascontiguousarray(X, dtype=np.float32)})[0]


def check_parity(model: nn.Module, onnx_bytes: bytes, X_sample: np.ndarray, atol: float = 1e-4,
                 rtol: float = 1e-5) -> dict[str, Any]:
    """Compare onnxruntime with torch on ``X_sample`` at batch 1 and batch N.

    Outputs agree when ``|ort - torch| <= atol + rtol * |torch|`` everywhere
    (``numpy.allclose``; the relative term matters only for regression outputs
    in large units). Returns ``{"atol", "rtol", "batch_n", "max_abs_diff_batch1",
    "max_abs_diff_batchN"}``; raises :class:`edgeloop.hub.errors.ExportError` naming the
    batch, the difference and the tolerance when they disagree (or when the
    shapes differ, e.g. a frozen batch dimension).
    """
    X = np.ascontiguousarray(X_sample, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] < 2:
        raise ExportError(f"parity needs a 2-D sample of at least 2 rows, got shape {X.shape}")
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    session = make_session(onnx_bytes)
    result: dict[str, Any] = {"atol": float(atol), "rtol": float(rtol), "batch_n": int(X.shape[0])}
    for key, batch in (("max_abs_diff_batch1", X[:1]), ("max_abs_diff_batchN", X)):
        with torch.no_grad():
            expected = cpu_model(torch.from_numpy(batch)).numpy()
        try:
            got = _run(session, batch)
        except Exception as exc:
            raise ExportError(f"onnxruntime failed at batch {batch.shape[0]}: {exc}") from exc
        if got.shape != expected.shape:
            raise ExportError(
                f"ONNX output shape {got.shape} differs from torch {expected.shape} at batch {batch.shape[0]}; "
                "the batch dimension is probably frozen -- re-export with a batch of at least 2"
            )
        g64, e64 = got.astype(np.float64), expected.astype(np.float64)
        diff = float(np.max(np.abs(g64 - e64)))
        result[key] = diff
        if not (np.isfinite(diff) and np.all(np.abs(g64 - e64) <= atol + rtol * np.abs(e64))):
            raise ExportError(
                f"ONNX and torch disagree at batch {batch.shape[0]}: max abs diff {diff:.3g} > tolerance {atol:.3g} "
                f"(+ {rtol:.0e} x |torch output|); the exported graph is wrong -- do not ship it "
                "(try the other exporter or another opset)"
            )
    return result


def _onnx_task(session: ort.InferenceSession) -> str:
    return "regression" if session.get_outputs()[0].name == REGRESSION_OUTPUT else "classification"


def _regression_numbers(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    t = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(pred, dtype=np.float64).ravel()
    if t.size == 0:
        return {"mae": float("nan"), "rmse": float("nan"), "r2": float("nan")}
    err = p - t
    sst = float(np.sum((t - t.mean()) ** 2))
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2))),
            "r2": float(1.0 - float(np.sum(err ** 2)) / sst) if sst > 0 else 0.0}


def evaluate_onnx(onnx_bytes: bytes, X: np.ndarray, y: np.ndarray, task: str | None = None) -> dict[str, Any]:
    """Run an ONNX model on ``X`` and score it against ``y``.

    ``task`` defaults to what the output name says. Classification: ``accuracy``,
    ``predictions`` (int64 class indices), ``probabilities`` (float32 [n, C]).
    Regression: ``mae``, ``rmse``, ``r2``, ``predictions`` (float32 [n]). Both:
    ``n`` and ``outputs`` (the raw output array), so two models' outputs can be
    compared directly.
    """
    session = make_session(onnx_bytes)
    task = task or _onnx_task(session)
    out = _run(session, X)
    if task == "regression":
        y = np.asarray(y, dtype=np.float64)
        pred = out.reshape(out.shape[0], -1)[:, 0].astype(np.float32)
        return {**_regression_numbers(y, pred), "n": int(y.size), "predictions": pred, "outputs": out}
    y = np.asarray(y, dtype=np.int64)
    pred = out.argmax(axis=1).astype(np.int64)
    return {
        "accuracy": float((pred == y).mean()) if y.size else float("nan"),
        "n": int(y.size),
        "predictions": pred,
        "probabilities": out,
        "outputs": out,
    }
