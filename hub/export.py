"""ONNX export, parity gate, static int8 quantization and the fp32-vs-int8 decision.

The exported graph is the whole model: raw features ("features", FP32
[batch, F]) in, class probabilities ("probabilities", FP32 [batch, C]) out, with
the standardization inside. Every export is gated on onnxruntime agreeing with
torch (:func:`check_parity`); int8 is shipped only when it measurably pays
(:func:`decide_quantization`), fp32 always remains the fallback.
"""

from __future__ import annotations

import copy
import io
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from .errors import ExportError

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "DEFAULT_OPSET",
    "export_onnx",
    "check_parity",
    "make_session",
    "quantize_static_int8",
    "evaluate_onnx",
    "compare_fp32_int8",
    "QuantDecision",
    "decide_quantization",
    "choose_model",
]

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
DEFAULT_OPSET = 17
_EXPORT_BATCH = 4  # >= 2, or the tracer may freeze the batch dimension to 1


# --------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------


def export_onnx(model: nn.Module, n_features: int, *, opset: int = DEFAULT_OPSET, exporter: str = "auto") -> bytes:
    """Export ``model`` (raw features -> probabilities) to ONNX bytes.

    ``exporter`` is ``"legacy"`` (TorchScript tracer, ~0.1 s), ``"dynamo"``
    (torch.export, seconds) or ``"auto"``: legacy, falling back to dynamo if
    the legacy exporter fails. The result is checked with
    ``onnx.checker.check_model`` and must have one FP32 input ``features``
    [batch, n_features] and one output ``probabilities`` [batch, C] with a
    symbolic batch dimension; otherwise :class:`hub.errors.ExportError`.
    The caller's model is not modified (a CPU copy is exported).
    """
    if exporter not in ("auto", "legacy", "dynamo"):
        raise ExportError(f"unknown exporter {exporter!r}; use 'auto', 'legacy' or 'dynamo'")
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    example = torch.zeros(_EXPORT_BATCH, n_features, dtype=torch.float32)
    errors: list[str] = []
    data: bytes | None = None
    if exporter in ("auto", "legacy"):
        try:
            data = _export_legacy(cpu_model, example, opset)
        except Exception as exc:  # noqa: BLE001 - reported below, or the dynamo path takes over
            errors.append(f"legacy exporter: {type(exc).__name__}: {exc}")
    if data is None and exporter in ("auto", "dynamo"):
        try:
            data = _export_dynamo(cpu_model, example, opset)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"dynamo exporter: {type(exc).__name__}: {exc}")
    if data is None:
        raise ExportError("ONNX export failed; " + " | ".join(errors) + ". Check that the model is a plain MLPClassifier.")
    _check_graph(data, n_features)
    return data


def _export_legacy(model: nn.Module, example: torch.Tensor, opset: int) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter is deprecated, still supported
        torch.onnx.export(
            model,
            (example,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    return buf.getvalue()


def _export_dynamo(model: nn.Module, example: torch.Tensor, opset: int) -> bytes:
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch-internal pytree deprecation noise
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            optimize=True,
            verbose=False,
        )
    if program is None:
        raise ExportError("the dynamo exporter returned no program")
    proto = program.model_proto
    return proto.SerializeToString()


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.dim_param else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _check_graph(data: bytes, n_features: int) -> None:
    """Checker plus the serving contract: names, FP32, symbolic batch, feature count."""
    try:
        proto = onnx.load_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001 - any checker failure means an unusable file
        raise ExportError(f"the exported ONNX model does not pass onnx.checker: {exc}") from exc
    g = proto.graph
    problems = []
    if [i.name for i in g.input] != [INPUT_NAME]:
        problems.append(f"inputs are {[i.name for i in g.input]}, expected [{INPUT_NAME!r}]")
    if [o.name for o in g.output] != [OUTPUT_NAME]:
        problems.append(f"outputs are {[o.name for o in g.output]}, expected [{OUTPUT_NAME!r}]")
    if not problems:
        inp, out = g.input[0], g.output[0]
        if inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            problems.append("input is not FP32")
        in_dims, out_dims = _dims(inp), _dims(out)
        if len(in_dims) != 2 or not isinstance(in_dims[0], str) or in_dims[1] != n_features:
            problems.append(f"input shape is {in_dims}, expected [batch, {n_features}] with a symbolic batch")
        if len(out_dims) != 2 or not isinstance(out_dims[0], str):
            problems.append(f"output shape is {out_dims}, expected [batch, classes] with a symbolic batch")
    if problems:
        raise ExportError("the exported ONNX model breaks the serving contract: " + "; ".join(problems))


# --------------------------------------------------------------------------
# sessions, parity
# --------------------------------------------------------------------------


def make_session(onnx_bytes: bytes) -> ort.InferenceSession:
    """An onnxruntime CPU session with the small-model options edge agents use.

    One intra-op and one inter-op thread, sequential execution, all graph
    optimizations (needed to fuse QDQ pairs into integer kernels).
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types
        raise ExportError(f"onnxruntime cannot load the model: {exc}") from exc


def _run(session: ort.InferenceSession, X: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(X, dtype=np.float32)})[0]


def check_parity(model: nn.Module, onnx_bytes: bytes, X_sample: np.ndarray, atol: float = 1e-4) -> dict[str, Any]:
    """Compare onnxruntime with torch on ``X_sample`` at batch 1 and batch N.

    Returns ``{"atol", "batch_n", "max_abs_diff_batch1", "max_abs_diff_batchN"}``;
    raises :class:`hub.errors.ExportError` naming the batch, the difference and
    the tolerance when they disagree (or when the shapes differ).
    """
    X = np.ascontiguousarray(X_sample, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] < 2:
        raise ExportError(f"parity needs a 2-D sample of at least 2 rows, got shape {X.shape}")
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    session = make_session(onnx_bytes)
    result: dict[str, Any] = {"atol": float(atol), "batch_n": int(X.shape[0])}
    for key, batch in (("max_abs_diff_batch1", X[:1]), ("max_abs_diff_batchN", X)):
        with torch.no_grad():
            expected = cpu_model(torch.from_numpy(batch)).numpy()
        try:
            got = _run(session, batch)
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"onnxruntime failed at batch {batch.shape[0]}: {exc}") from exc
        if got.shape != expected.shape:
            raise ExportError(
                f"ONNX output shape {got.shape} differs from torch {expected.shape} at batch {batch.shape[0]}; "
                "the batch dimension is probably frozen -- re-export with a batch of at least 2"
            )
        diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
        result[key] = diff
        if not diff <= atol:  # also catches NaN
            raise ExportError(
                f"ONNX and torch disagree at batch {batch.shape[0]}: max abs diff {diff:.3g} > tolerance {atol:.3g}; "
                "the exported graph is wrong -- do not ship it (try the other exporter or another opset)"
            )
    return result


# --------------------------------------------------------------------------
# quantization
# --------------------------------------------------------------------------


class _ArrayReader:
    """A CalibrationDataReader over rows of a float32 array, in small batches."""

    def __init__(self, X: np.ndarray, batch: int = 32) -> None:
        self._X = np.ascontiguousarray(X, dtype=np.float32)
        self._batch = batch
        self._it: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for s in range(0, self._X.shape[0], self._batch):
            yield {INPUT_NAME: self._X[s:s + self._batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def quantize_static_int8(fp32_bytes: bytes, calibration_X: np.ndarray, *, per_channel: bool = False) -> bytes:
    """Static QDQ int8 quantization (S8S8, MinMax calibration) of an fp32 model.

    ``quant_pre_process`` runs first (shape inference and graph optimization);
    the calibration rows -- a few hundred training rows -- set the activation
    ranges. The ``features`` input and ``probabilities`` output stay FP32 at the
    graph boundary (QuantizeLinear/DequantizeLinear sit inside), and the final
    Softmax stays in float so probabilities are not rounded to 8 bits. Raises
    :class:`hub.errors.ExportError` on failure.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    X = np.ascontiguousarray(calibration_X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] < 1:
        raise ExportError(f"calibration data must be a non-empty 2-D array, got shape {X.shape}")

    class Reader(_ArrayReader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="edgeloop-quant-") as tmp:
        src, pre, dst = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(fp32_bytes)
        try:
            try:
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
            except Exception:  # noqa: BLE001 - symbolic shape inference is optional (needs sympy)
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            # Quantizing the softmax output would round probabilities to 1/255
            # steps for no speed gain; keep the final softmax in float.
            softmax = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Softmax"]
            quantize_static(
                str(pre),
                str(dst),
                Reader(X),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                per_channel=per_channel,
                nodes_to_exclude=softmax,
            )
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"int8 quantization failed: {type(exc).__name__}: {exc}; ship the fp32 model") from exc
        data = dst.read_bytes()
    _check_quantized(data)
    return data


def _check_quantized(data: bytes) -> None:
    proto = onnx.load_from_string(data)
    for vi in list(proto.graph.input) + list(proto.graph.output):
        if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"quantized model changed the type of {vi.name!r}; it must stay FP32 at the boundary")
    if [i.name for i in proto.graph.input] != [INPUT_NAME] or [o.name for o in proto.graph.output] != [OUTPUT_NAME]:
        raise ExportError("quantized model renamed its input or output")
    if not any(n.op_type == "QuantizeLinear" for n in proto.graph.node):
        raise ExportError("quantization produced no QuantizeLinear nodes; nothing was quantized")


# --------------------------------------------------------------------------
# evaluation and the fp32/int8 decision
# --------------------------------------------------------------------------


def evaluate_onnx(onnx_bytes: bytes, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Run an ONNX classifier on ``X``; returns accuracy, predictions and probabilities.

    ``predictions`` (int64) and ``probabilities`` (float32) are arrays so that
    two models' outputs can be compared directly.
    """
    y = np.asarray(y, dtype=np.int64)
    probs = _run(make_session(onnx_bytes), X)
    pred = probs.argmax(axis=1).astype(np.int64)
    return {
        "accuracy": float((pred == y).mean()) if y.size else float("nan"),
        "n": int(y.size),
        "predictions": pred,
        "probabilities": probs,
    }


def _latency_us_batch1(sessions: list[ort.InferenceSession], X: np.ndarray, runs: int = 300, warmup: int = 30) -> list[float]:
    """Median batch-1 latency (µs) of each session, measured interleaved so drift hits all alike."""
    rows = [np.ascontiguousarray(X[i:i + 1], dtype=np.float32) for i in range(min(len(X), 64))]
    for s in sessions:
        for i in range(warmup):
            _run(s, rows[i % len(rows)])
    times: list[list[float]] = [[] for _ in sessions]
    for i in range(runs):
        row = rows[i % len(rows)]
        for k, s in enumerate(sessions):
            t0 = time.perf_counter_ns()
            s.run([OUTPUT_NAME], {INPUT_NAME: row})
            times[k].append((time.perf_counter_ns() - t0) / 1000.0)
    return [float(np.median(t)) for t in times]


def compare_fp32_int8(fp32: bytes, int8: bytes, X_test: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    """Accuracy, agreement, output difference, size and batch-1 latency of fp32 vs int8.

    Latency is the median over interleaved single-row runs with the edge
    session options (:func:`make_session`) on this machine.
    ``accuracy_delta_points`` = (int8 - fp32) accuracy in percentage points
    (negative = int8 is worse).
    """
    a = evaluate_onnx(fp32, X_test, y_test)
    b = evaluate_onnx(int8, X_test, y_test)
    lat_fp32, lat_int8 = _latency_us_batch1([make_session(fp32), make_session(int8)], np.asarray(X_test))
    return {
        "fp32_accuracy": a["accuracy"],
        "int8_accuracy": b["accuracy"],
        "accuracy_delta_points": (b["accuracy"] - a["accuracy"]) * 100.0,
        "prediction_agreement": float((a["predictions"] == b["predictions"]).mean()),
        "max_abs_diff": float(np.max(np.abs(a["probabilities"] - b["probabilities"]))),
        "fp32_bytes": len(fp32),
        "int8_bytes": len(int8),
        "fp32_latency_us_batch1": lat_fp32,
        "int8_latency_us_batch1": lat_int8,
        "n_test": a["n"],
    }


@dataclass(frozen=True)
class QuantDecision:
    """Which model to ship and why (stored in the manifest's ``quantization``)."""

    chosen: str  # "int8" | "fp32"
    reason: str
    budget_points: float

    def to_dict(self) -> dict:
        return {"chosen": self.chosen, "reason": self.reason, "budget_points": self.budget_points}


def decide_quantization(report: dict[str, Any], budget_points: float = 1.0) -> QuantDecision:
    """int8 only if it loses at most ``budget_points`` accuracy points AND is not slower at batch 1."""
    drop = -float(report["accuracy_delta_points"])
    lat8, lat32 = float(report["int8_latency_us_batch1"]), float(report["fp32_latency_us_batch1"])
    within = drop <= budget_points
    not_slower = lat8 <= lat32
    acc = f"accuracy drop {drop:.2f} pt {'<=' if within else '>'} budget {budget_points:g} pt"
    speed = f"int8 {lat8:.1f} µs vs fp32 {lat32:.1f} µs at batch 1"
    chosen = "int8" if within and not_slower else "fp32"
    reason = f"{acc}; {speed} ({'not slower' if not_slower else 'int8 slower'}) -> ship {chosen}"
    return QuantDecision(chosen, reason, float(budget_points))


def choose_model(report: dict[str, Any], budget_points: float = 1.0) -> str:
    """``"int8"`` or ``"fp32"`` per :func:`decide_quantization` (use that for the reason)."""
    return decide_quantization(report, budget_points).chosen
