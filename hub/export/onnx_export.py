"""ONNX export of a factory model under the agent's ONNX contract, with the graph checked.

The exported graph is the whole model: raw features (``features``, FP32
[batch, F]) in; class probabilities (``probabilities``, FP32 [batch, C]) or a
regression prediction (``prediction``, FP32 [batch, 1]) out; standardization
(and a CNN's reshape to [batch, C, T]) inside. The tensor names come from
:mod:`edgeloop.agent.wire.tensors`; the opset is pinned; every export is gated
on onnxruntime agreeing with torch (:func:`edgeloop.hub.export.parity.check_parity`).
"""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import onnx
import torch
from torch import nn

from edgeloop.agent.wire import tensors
from edgeloop.hub.errors import ExportError
from edgeloop.hub.export.parity import check_parity

__all__ = ["DEFAULT_OPSET", "INPUT_NAME", "OUTPUT_NAME", "REGRESSION_OUTPUT_NAME", "export_onnx", "output_name_for"]

INPUT_NAME = tensors.INPUT_NAME
OUTPUT_NAME = tensors.CLASSIFICATION_OUTPUT  # classification (kept as the module's historical default)
REGRESSION_OUTPUT_NAME = tensors.REGRESSION_OUTPUT
# Pinned: the exporters' defaults move between torch releases. 18 is the lowest opset the
# dynamo exporter of torch >= 2.9 writes without a lossy version conversion; onnxruntime has
# run it since 1.14, and the legacy exporter writes it too.
DEFAULT_OPSET = 18
_EXPORT_BATCH = 4  # >= 2, or the tracer may freeze the batch dimension to 1
_PARITY_ROWS = 16


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
    :class:`edgeloop.hub.errors.ExportError` with the numbers. The caller's model is not
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
                          + ". Check that the model comes from edgeloop.hub.training.build_model.")
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
            # torch annotates f as str | PathLike, but the legacy exporter writes to binary file objects too
            buf,  # type: ignore[arg-type]
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
