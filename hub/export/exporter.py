"""ONNX export, parity gate, int8 quantization and the fp32-vs-int8 decision.

The exported graph is the whole model, under the agent's ONNX contract: raw
features ("features", FP32 [batch, F]) in; class probabilities
("probabilities", FP32 [batch, C]) or a regression prediction ("prediction",
FP32 [batch, 1]) out; standardization (and a CNN's reshape to [batch, C, T])
inside. Every export is gated on onnxruntime agreeing with torch at batch 1
and batch N (:func:`check_parity`); int8 is shipped only when it measurably
pays (:func:`quantization_report`, :func:`decide_quantization`), fp32 always
remains the fallback.
"""

from __future__ import annotations

import copy
import io
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from edgeloop.agent.wire import tensors
from edgeloop.hub.errors import ExportError

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "LATENCY_BATCHES",
    "OUTPUT_NAME",
    "REGRESSION_OUTPUT_NAME",
    "QuantDecision",
    "check_parity",
    "choose_model",
    "compare_fp32_int8",
    "decide_quantization",
    "evaluate_onnx",
    "export_onnx",
    "make_session",
    "measure_latency_us",
    "output_name_for",
    "quantization_report",
    "quantize_dynamic_int8",
    "quantize_static_int8",
]

INPUT_NAME = tensors.INPUT_NAME
OUTPUT_NAME = tensors.CLASSIFICATION_OUTPUT  # classification (kept as the module's historical default)
REGRESSION_OUTPUT_NAME = tensors.REGRESSION_OUTPUT
# Pinned: the exporters' defaults move between torch releases. 18 is the lowest opset the
# dynamo exporter of torch >= 2.9 writes without a lossy version conversion; onnxruntime has
# run it since 1.14, and the legacy exporter writes it too.
DEFAULT_OPSET = 18
LATENCY_BATCHES = (1, 32)
_EXPORT_BATCH = 4  # >= 2, or the tracer may freeze the batch dimension to 1
_PARITY_ROWS = 16
_QUANT_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul",
              "QLinearConv", "QGemm"}


def output_name_for(task: str) -> str:
    """The agent contract's output name: ``"probabilities"`` or ``"prediction"``."""
    if task == "classification":
        return OUTPUT_NAME
    if task == "regression":
        return REGRESSION_OUTPUT_NAME
    raise ExportError(f"unknown task {task!r}; use 'classification' or 'regression'")


def _model_task(model: nn.Module) -> str:
    return getattr(model, "task", "classification")


def _model_outputs(model: nn.Module) -> int | None:
    n = getattr(model, "n_outputs", None)
    return int(n) if n is not None else getattr(model, "n_classes", None)


# --------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------


def export_onnx(
    model: nn.Module,
    n_features: int | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    parity_X: np.ndarray | None = None,
    atol: float = 1e-4,
) -> bytes:
    """Export a factory model (MLP or 1D-CNN, classifier or regressor) to ONNX bytes.

    ``exporter`` is ``"legacy"`` (TorchScript tracer, ~0.1 s), ``"dynamo"``
    (torch.export, seconds) or ``"auto"``: legacy, falling back to dynamo if the
    legacy exporter fails. The opset is pinned (``opset``, default
    :data:`DEFAULT_OPSET`); the batch dimension is dynamic (exported with an
    example batch of 4). The result must pass ``onnx.checker.check_model`` and
    the serving contract (one FP32 input ``features`` [batch, F], one output
    ``probabilities`` [batch, C] or ``prediction`` [batch, 1], symbolic batch),
    and onnxruntime must agree with torch at batch 1 and batch N
    (:func:`check_parity`) on ``parity_X`` or, without it, on rows drawn from
    the model's own input standardization (``N(mean, std)``). Any failure raises
    :class:`hub.errors.ExportError` with the numbers. The caller's model is not
    modified (a CPU copy is exported).
    """
    if exporter not in ("auto", "legacy", "dynamo"):
        raise ExportError(f"unknown exporter {exporter!r}; use 'auto', 'legacy' or 'dynamo'")
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    model_features = getattr(cpu_model, "n_features", None)
    if n_features is None:
        if model_features is None:
            raise ExportError("n_features is needed for a model without an n_features attribute")
        n_features = int(model_features)
    if model_features is not None and int(model_features) != int(n_features):
        raise ExportError(f"the model takes {model_features} features, export was asked for {n_features}")
    task = _model_task(cpu_model)
    out_name = output_name_for(task)
    example = torch.zeros(_EXPORT_BATCH, n_features, dtype=torch.float32)
    errors: list[str] = []
    data: bytes | None = None
    if exporter in ("auto", "legacy"):
        try:
            data = _export_legacy(cpu_model, example, opset, out_name)
        except Exception as exc:
            errors.append(f"legacy exporter: {type(exc).__name__}: {exc}")
    if data is None and exporter in ("auto", "dynamo"):
        try:
            data = _export_dynamo(cpu_model, example, opset, out_name)
        except Exception as exc:
            errors.append(f"dynamo exporter: {type(exc).__name__}: {exc}")
    if data is None:
        raise ExportError("ONNX export failed; " + " | ".join(errors)
                          + ". Check that the model comes from hub.train.build_model.")
    n_out = 1 if task == "regression" else _model_outputs(cpu_model)
    _check_graph(data, n_features, out_name, n_out)
    got_opset = _opset(data)
    if got_opset != opset:
        raise ExportError(f"the exporter wrote opset {got_opset}, not the pinned opset {opset}; "
                          f"export with opset={got_opset} or use the other exporter")
    check_parity(cpu_model, data, parity_X if parity_X is not None else _parity_rows(cpu_model, n_features), atol)
    return data


def _opset(data: bytes) -> int | None:
    for imp in onnx.load_from_string(data).opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def _parity_rows(model: nn.Module, n_features: int) -> np.ndarray:
    """Seeded rows around the model's training distribution (its standardization), else N(0, 1)."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((_PARITY_ROWS, n_features))
    st = getattr(model, "standardize", None)
    if st is not None and hasattr(st, "mean"):
        z = st.mean.numpy().reshape(1, -1) + st.std.numpy().reshape(1, -1) * z
    return z.astype(np.float32)


def _export_legacy(model: nn.Module, example: torch.Tensor, opset: int, out_name: str) -> bytes:
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
            output_names=[out_name],
            dynamic_axes={INPUT_NAME: {0: "batch"}, out_name: {0: "batch"}},
            do_constant_folding=True,
        )
    return buf.getvalue()


def _export_dynamo(model: nn.Module, example: torch.Tensor, opset: int, out_name: str) -> bytes:
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch-internal pytree deprecation noise
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[out_name],
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


def _check_graph(data: bytes, n_features: int, out_name: str = OUTPUT_NAME, n_outputs: int | None = None) -> None:
    """Checker plus the serving contract: names, FP32, symbolic batch, feature and output counts."""
    try:
        proto = onnx.load_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ExportError(f"the exported ONNX model does not pass onnx.checker: {exc}") from exc
    g = proto.graph
    problems = []
    if [i.name for i in g.input] != [INPUT_NAME]:
        problems.append(f"inputs are {[i.name for i in g.input]}, expected [{INPUT_NAME!r}]")
    if [o.name for o in g.output] != [out_name]:
        problems.append(f"outputs are {[o.name for o in g.output]}, expected [{out_name!r}]")
    if not problems:
        inp, out = g.input[0], g.output[0]
        if inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            problems.append("input is not FP32")
        if out.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            problems.append("output is not FP32")
        in_dims, out_dims = _dims(inp), _dims(out)
        if len(in_dims) != 2 or not isinstance(in_dims[0], str) or in_dims[1] != n_features:
            problems.append(f"input shape is {in_dims}, expected [batch, {n_features}] with a symbolic batch")
        want = "classes" if out_name == OUTPUT_NAME else "1"
        if len(out_dims) != 2 or not isinstance(out_dims[0], str):
            problems.append(f"output shape is {out_dims}, expected [batch, {want}] with a symbolic batch")
        elif n_outputs is not None and isinstance(out_dims[1], int) and out_dims[1] not in (0, n_outputs):
            problems.append(f"output shape is {out_dims}, expected [batch, {n_outputs}]")
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
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load the model: {exc}") from exc


def _run(session: ort.InferenceSession, X: np.ndarray) -> np.ndarray:
    name = session.get_outputs()[0].name
    return session.run([name], {INPUT_NAME: np.ascontiguousarray(X, dtype=np.float32)})[0]


def check_parity(model: nn.Module, onnx_bytes: bytes, X_sample: np.ndarray, atol: float = 1e-4,
                 rtol: float = 1e-5) -> dict[str, Any]:
    """Compare onnxruntime with torch on ``X_sample`` at batch 1 and batch N.

    Outputs agree when ``|ort - torch| <= atol + rtol * |torch|`` everywhere
    (``numpy.allclose``; the relative term matters only for regression outputs
    in large units). Returns ``{"atol", "rtol", "batch_n", "max_abs_diff_batch1",
    "max_abs_diff_batchN"}``; raises :class:`hub.errors.ExportError` naming the
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


def _pre_process(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    except Exception:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def _has_conv(proto: onnx.ModelProto) -> bool:
    return any(n.op_type in ("Conv", "ConvTranspose") for n in proto.graph.node)


def _tail_nodes(proto: onnx.ModelProto) -> list[str]:
    """Nodes after the last Gemm/MatMul/Conv (the output transform: Softmax, or Mul/Add of a target scale).

    Quantizing them would round probabilities or predictions to 8-bit steps for
    no speed gain, so they stay float.
    """
    nodes = list(proto.graph.node)  # ONNX graphs are stored in topological order
    heavy = [i for i, n in enumerate(nodes) if n.op_type in ("Gemm", "MatMul", "Conv")]
    start = heavy[-1] + 1 if heavy else 0
    return [n.name for n in nodes[start:] if n.name]


def quantize_static_int8(
    fp32_bytes: bytes,
    calibration_X: np.ndarray,
    *,
    per_channel: bool | None = None,
    calibrate_method: str = "minmax",
) -> bytes:
    """Static QDQ int8 quantization (S8S8) of an fp32 model, calibrated on ``calibration_X``.

    ``quant_pre_process`` runs first (shape inference and graph optimization);
    the calibration rows -- a few hundred training rows -- set the activation
    ranges (``calibrate_method`` ``"minmax"``, or ``"percentile"``/``"entropy"``
    when outliers clip). ``per_channel=None`` means per-channel weight scales
    for CNNs (weight ranges vary per output channel) and per-tensor for MLPs.
    The ``features`` input and the output stay FP32 at the graph boundary
    (QuantizeLinear/DequantizeLinear sit inside), and the output transform
    (softmax, regression target scale) stays in float. Raises
    :class:`hub.errors.ExportError` on failure.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    X = np.ascontiguousarray(calibration_X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] < 1:
        raise ExportError(f"calibration data must be a non-empty 2-D array, got shape {X.shape}")
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if calibrate_method not in methods:
        raise ExportError(f"unknown calibration method {calibrate_method!r}; use one of {', '.join(methods)}")

    class Reader(_ArrayReader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="edgeloop-quant-") as tmp:
        src, pre, dst = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(fp32_bytes)
        try:
            _pre_process(src, pre)
            proto = onnx.load(str(pre))
            if per_channel is None:
                per_channel = _has_conv(proto)
            quantize_static(
                str(pre),
                str(dst),
                Reader(X),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[calibrate_method],
                per_channel=bool(per_channel),
                nodes_to_exclude=_tail_nodes(proto),
            )
        except Exception as exc:
            raise ExportError(f"int8 quantization failed: {type(exc).__name__}: {exc}; ship the fp32 model") from exc
        data = dst.read_bytes()
    _check_quantized(data, fp32_bytes)
    return data


def _gemm_to_matmul(proto: onnx.ModelProto) -> int:
    """Rewrite ``Gemm(A, W, b)`` with constant ``W`` as ``MatMul(A, W') + b`` in place; returns the count.

    onnxruntime's dynamic quantizer handles MatMul but not Gemm (torch's legacy
    exporter writes ``nn.Linear`` as Gemm with ``transB=1``).
    """
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    new_nodes: list[onnx.NodeProto] = []
    count = 0
    for node in g.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or (len(node.input) > 2 and node.input[2] and node.input[2] not in inits)):
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        if attrs.get("transB", 0):
            w = w.T
        w = np.ascontiguousarray(w * float(attrs.get("alpha", 1.0)), dtype=np.float32)
        base = node.name or f"gemm{count}"
        w_name = f"{base}_W_matmul"
        g.initializer.append(numpy_helper.from_array(w, w_name))
        has_bias = len(node.input) > 2 and bool(node.input[2])
        mm_out = f"{base}_matmul_out" if has_bias else node.output[0]
        new_nodes.append(onnx.helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=f"{base}_MatMul"))
        if has_bias:
            b = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32) * float(attrs.get("beta", 1.0))
            b_name = f"{base}_B_add"
            g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(b, dtype=np.float32), b_name))
            new_nodes.append(onnx.helper.make_node("Add", [mm_out, b_name], [node.output[0]], name=f"{base}_Add"))
        count += 1
    del g.node[:]
    g.node.extend(new_nodes)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return count


def quantize_dynamic_int8(fp32_bytes: bytes) -> bytes:
    """Dynamic int8 quantization (int8 weights, activations quantized at run time) of an MLP.

    No calibration data is needed. Only for MLPs: onnxruntime runs dynamically
    quantized convolutions slower than fp32 (2.2x measured on a 1D CNN), so a
    model with a Conv is refused -- use :func:`quantize_static_int8`. Linear
    layers are rewritten from Gemm to MatMul + Add first (the dynamic quantizer
    handles MatMul only). Raises :class:`hub.errors.ExportError`.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if _has_conv(onnx.load_from_string(fp32_bytes)):
        raise ExportError("dynamic quantization is for MLPs; this model has convolutions -- "
                          "use static QDQ quantization (quantize_static_int8) for CNNs")
    with tempfile.TemporaryDirectory(prefix="edgeloop-dquant-") as tmp:
        src, pre, mm, dst = (Path(tmp, n) for n in ("fp32.onnx", "pre.onnx", "mm.onnx", "int8.onnx"))
        src.write_bytes(fp32_bytes)
        try:
            _pre_process(src, pre)
            proto = onnx.load(str(pre))
            _gemm_to_matmul(proto)
            tail = set(_tail_nodes(proto))
            onnx.checker.check_model(proto)
            onnx.save(proto, str(mm))
            quantize_dynamic(str(mm), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                             nodes_to_exclude=sorted(tail))
        except Exception as exc:
            raise ExportError(f"dynamic int8 quantization failed: {type(exc).__name__}: {exc}; "
                              "ship the fp32 model") from exc
        data = dst.read_bytes()
    _check_quantized(data, fp32_bytes)
    return data


def _check_quantized(data: bytes, fp32_bytes: bytes | None = None) -> None:
    proto = onnx.load_from_string(data)
    for vi in list(proto.graph.input) + list(proto.graph.output):
        if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"quantized model changed the type of {vi.name!r}; it must stay FP32 at the boundary")
    want_out = [o.name for o in onnx.load_from_string(fp32_bytes).graph.output] if fp32_bytes else None
    outs = [o.name for o in proto.graph.output]
    if [i.name for i in proto.graph.input] != [INPUT_NAME] or (want_out is not None and outs != want_out):
        raise ExportError("quantized model renamed its input or output")
    if not any(n.op_type in _QUANT_OPS for n in proto.graph.node):
        raise ExportError("quantization produced no quantized nodes; nothing was quantized")


# --------------------------------------------------------------------------
# evaluation and the fp32/int8 decision
# --------------------------------------------------------------------------


def _onnx_task(session: ort.InferenceSession) -> str:
    return "regression" if session.get_outputs()[0].name == REGRESSION_OUTPUT_NAME else "classification"


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
    for s, name in zip(sessions, names):
        for i in range(warmup):
            s.run([name], {INPUT_NAME: batches[i % len(batches)]})
    times: list[list[float]] = [[] for _ in sessions]
    for i in range(runs):
        xb = batches[i % len(batches)]
        for k, (s, name) in enumerate(zip(sessions, names)):
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

    def to_dict(self) -> dict:
        return {"chosen": self.chosen, "reason": self.reason, "budget_points": self.budget_points}


def decide_quantization(report: dict[str, Any], budget_points: float = 1.0) -> QuantDecision:
    """int8 only if its metric drops by at most ``budget_points`` AND it is not slower at batch 1.

    Classification: the budget is in accuracy points. Regression: in percent of
    the fp32 RMSE (``budget_points=1.0`` allows the int8 RMSE to be up to 1 %
    higher). The reason string carries the numbers.
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
    reason = f"{quality}; {speed} ({'not slower' if not_slower else 'int8 slower'}) -> ship {chosen}"
    return QuantDecision(chosen, reason, float(budget_points))


def choose_model(report: dict[str, Any], budget_points: float = 1.0) -> str:
    """``"int8"`` or ``"fp32"`` per :func:`decide_quantization` (use that for the reason)."""
    return decide_quantization(report, budget_points).chosen
