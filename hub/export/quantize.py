"""int8 quantization of an fp32 ONNX model: static QDQ (calibrated on training rows) or dynamic.

The ``features`` input and the output stay FP32 at the graph boundary, and the
output transform (softmax, a regression target scale) stays in float.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeloop.agent.wire.tensors import INPUT_NAME
from edgeloop.hub.errors import ExportError

__all__ = ["quantize_dynamic_int8", "quantize_static_int8"]

_QUANT_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul",
              "QLinearConv", "QGemm"}


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
    :class:`edgeloop.hub.errors.ExportError` on failure.
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
    handles MatMul only). Raises :class:`edgeloop.hub.errors.ExportError`.
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
