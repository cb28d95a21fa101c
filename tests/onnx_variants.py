"""Real ONNX models beyond the plain ones of tests/onnx_models.py, for fault and edge tests.

All follow the project's ONNX contract and compute the classifier of
:func:`tests.onnx_models.classifier_onnx` (softmax(x W + b), seed 0) on ordinary
inputs, so :func:`tests.onnx_models.classifier_smoke` is their smoke test too:

* :func:`flaky_classifier_onnx` fails inside onnxruntime when a row's first
  feature is ``>= table_size`` (a ``Gather`` index out of bounds); warm-up rows
  (zeros) and the smoke test rows pass;
* :func:`slow_classifier_onnx` spends a fixed, input-dependent amount of work on
  every batch (``rounds`` ``size`` x ``size`` matrix products that constant folding
  cannot remove), so a burst of requests piles up in the agent's queue;
* :func:`logits_classifier_onnx` also outputs its ``logits`` (an extra output a
  manifest may list, passed through to clients).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgeloop.agent.wire.bundle import pack_bundle
from edgeloop.agent.wire.envelope import SigningKey
from tests.onnx_models import _model, classifier_smoke, classifier_weights, manifest_for

FLAKY_TABLE = 10


def _classifier_parts(n_features: int, n_classes: int) -> tuple[list, list]:
    """logits = x W + b (seed 0, as classifier_onnx); nodes and initializers."""
    W, b = classifier_weights(n_features, n_classes, 0)
    nodes = [helper.make_node("MatMul", ["features", "W"], ["xw"]),
             helper.make_node("Add", ["xw", "b"], ["logits"])]
    return nodes, [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")]


def _io(n_features: int, n_classes: int) -> tuple[list, list]:
    return ([helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_features])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_classes])])


def flaky_classifier_onnx(n_features: int = 4, n_classes: int = 3, table_size: int = FLAKY_TABLE) -> bytes:
    """softmax(x W + b + table[int(x0)]) with a zero table: fails at run time once ``x0 >= table_size``."""
    nodes, inits = _classifier_parts(n_features, n_classes)
    nodes += [
        helper.make_node("Gather", ["features", "first"], ["x0"], axis=1),  # [N, 1]
        helper.make_node("Cast", ["x0"], ["i0"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "i0"], ["g"], axis=0),  # [N, 1]; out of bounds -> error
        helper.make_node("Add", ["logits", "g"], ["logits_g"]),
        helper.make_node("Softmax", ["logits_g"], ["probabilities"], axis=-1),
    ]
    inits += [numpy_helper.from_array(np.array([0], dtype=np.int64), "first"),
              numpy_helper.from_array(np.zeros(table_size, dtype=np.float32), "table")]
    return _model(nodes, inits, *_io(n_features, n_classes))


def slow_classifier_onnx(n_features: int = 4, n_classes: int = 3, size: int = 1024, rounds: int = 2) -> bytes:
    """softmax(x W + b + 0 * mean(heavy(x))): the answer of classifier_onnx, after ``rounds`` big products."""
    nodes, inits = _classifier_parts(n_features, n_classes)
    nodes += [helper.make_node("ReduceMean", ["features"], ["m"], keepdims=1),  # [1, 1], depends on x
              helper.make_node("Expand", ["m", "square"], ["h0"])]  # [size, size]
    for r in range(rounds):
        nodes += [helper.make_node("MatMul", [f"h{r}", f"h{r}"], [f"p{r}"]),
                  helper.make_node("Tanh", [f"p{r}"], [f"h{r + 1}"])]  # bounded: no overflow
    nodes += [helper.make_node("ReduceMean", [f"h{rounds}"], ["hm"], keepdims=1),
              helper.make_node("Mul", ["hm", "zero"], ["nothing"]),
              helper.make_node("Add", ["logits", "nothing"], ["logits_h"]),
              helper.make_node("Softmax", ["logits_h"], ["probabilities"], axis=-1)]
    inits += [numpy_helper.from_array(np.array([size, size], dtype=np.int64), "square"),
              numpy_helper.from_array(np.zeros((1, 1), dtype=np.float32), "zero")]
    return _model(nodes, inits, *_io(n_features, n_classes))


def logits_classifier_onnx(n_features: int = 4, n_classes: int = 3) -> bytes:
    """classifier_onnx plus a second output ``logits`` [-1, C]."""
    nodes, inits = _classifier_parts(n_features, n_classes)
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    inputs, outputs = _io(n_features, n_classes)
    outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_classes]))
    return _model(nodes, inits, inputs, outputs)


def contract_breaking_onnx(defect: str, n_features: int = 4, n_classes: int = 3) -> bytes:
    """A classifier that breaks one rule of the ONNX contract (``defect``):

    ``double_input`` (FP64 features), ``two_inputs``, ``rank3_input`` ([N, 1, F]),
    ``int_output`` (INT64 probabilities).
    """
    W, b = classifier_weights(n_features, n_classes, 0)
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")]
    in_type = TensorProto.FLOAT
    in_shape: list[str | int] = ["N", n_features]
    out_type = TensorProto.FLOAT
    inputs: list = []
    x, pre, post = "features", [], []  # nodes before x W + b / after the softmax
    if defect == "double_input":
        in_type, x = TensorProto.DOUBLE, "xf"
        pre = [helper.make_node("Cast", ["features"], [x], to=TensorProto.FLOAT)]
    elif defect == "two_inputs":
        inputs, x = [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", n_features])], "xm"
        pre = [helper.make_node("Mul", ["features", "mask"], [x])]
    elif defect == "rank3_input":
        in_shape, x = ["N", 1, n_features], "xs"
        pre = [helper.make_node("Squeeze", ["features", "one"], [x])]
    elif defect == "int_output":
        out_type = TensorProto.INT64
        post = [helper.make_node("Cast", ["softmax"], ["probabilities"], to=TensorProto.INT64)]
    else:
        raise ValueError(f"unknown defect {defect!r}")
    if defect == "rank3_input":
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "one"))
    nodes = pre + [helper.make_node("MatMul", [x, "W"], ["xw"]),
                   helper.make_node("Add", ["xw", "b"], ["logits"]),
                   helper.make_node("Softmax", ["logits"], ["softmax" if post else "probabilities"], axis=-1)]
    return _model(nodes + post, inits,
                  [helper.make_tensor_value_info("features", in_type, in_shape), *inputs],
                  [helper.make_tensor_value_info("probabilities", out_type, ["N", n_classes])])


def signed_bundle(key: SigningKey, model_bytes: bytes, *, model: str = "iris", version: str = "1") -> bytes:
    """A bundle of ``model_bytes`` (iris features and labels, classifier smoke test) signed with ``key``."""
    manifest = dataclasses.replace(
        manifest_for(model_bytes, model=model, version=version, smoke=classifier_smoke()), key_id=key.keyid)
    return pack_bundle(manifest, {"model.onnx": model_bytes}, key)


__all__ = ["FLAKY_TABLE", "flaky_classifier_onnx", "slow_classifier_onnx", "logits_classifier_onnx",
           "contract_breaking_onnx", "signed_bundle"]
