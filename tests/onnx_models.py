"""Small real ONNX models (built with onnx.helper) and matching manifests for serving tests.

The models follow the project's ONNX contract: one FP32 input ``features``
``[-1, F]``; classifiers output ``probabilities`` = softmax(x W + b) ``[-1, C]``,
regressors output ``prediction`` = x w + b ``[-1, 1]``. ``expected_*`` compute
the same functions in numpy so tests can check onnxruntime's answers.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeloop.agent.wire.bundle import file_entry
from edgeloop.agent.wire.manifest import DriftReference, Manifest, SmokeTest, TensorSpec

OPSET = 17
IR_VERSION = 9
LABELS = ("setosa", "versicolor", "virginica")
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def classifier_weights(n_features: int = 4, n_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n_features, n_classes)).astype(np.float32),
            rng.normal(size=(n_classes,)).astype(np.float32))


def regression_weights(n_features: int = 4, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_features, 1)).astype(np.float32), np.array([0.5], dtype=np.float32)


def _model(nodes, inits, inputs, outputs) -> bytes:
    graph = helper.make_graph(nodes, "edgeloop_test", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeloop-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def classifier_onnx(n_features: int = 4, n_classes: int = 3, *, seed: int = 0, input_name: str = "features",
                    output_name: str = "probabilities", batch: int | str = "N",
                    model_features: int | None = None) -> bytes:
    """softmax(x W + b); ``model_features`` builds a model whose input width differs from ``n_features``."""
    f = model_features if model_features is not None else n_features
    W, b = classifier_weights(f, n_classes, seed)
    nodes = [helper.make_node("MatMul", [input_name, "W"], ["logits0"]),
             helper.make_node("Add", ["logits0", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], [output_name], axis=-1)]
    return _model(
        nodes, [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")],
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, f])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, n_classes])])


def regression_onnx(n_features: int = 4, *, seed: int = 1) -> bytes:
    w, b = regression_weights(n_features, seed)
    nodes = [helper.make_node("MatMul", ["features", "w"], ["xw"]),
             helper.make_node("Add", ["xw", "b"], ["prediction"])]
    return _model(
        nodes, [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["N", 1])])


def nan_regression_onnx(n_features: int = 4) -> bytes:
    """A regressor whose output is log(x0 - 1000): NaN for ordinary inputs (a broken model)."""
    sel = np.zeros((n_features, 1), dtype=np.float32)
    sel[0, 0] = 1.0
    nodes = [helper.make_node("MatMul", ["features", "sel"], ["x0"]),
             helper.make_node("Sub", ["x0", "k"], ["shifted"]),
             helper.make_node("Log", ["shifted"], ["prediction"])]
    return _model(
        nodes, [numpy_helper.from_array(sel, "sel"), numpy_helper.from_array(np.array([1000.0], np.float32), "k")],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["N", 1])])


def expected_probabilities(x: np.ndarray, n_features: int = 4, n_classes: int = 3, seed: int = 0) -> np.ndarray:
    W, b = classifier_weights(n_features, n_classes, seed)
    z = np.asarray(x, dtype=np.float64) @ W.astype(np.float64) + b
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_prediction(x: np.ndarray, n_features: int = 4, seed: int = 1) -> np.ndarray:
    w, b = regression_weights(n_features, seed)
    return np.asarray(x, dtype=np.float64) @ w.astype(np.float64) + b


def manifest_for(model_bytes: bytes, *, task: str = "classification", model: str = "iris", version: str = "1",
                 features: tuple[str, ...] | list[str] = FEATURES, labels: tuple[str, ...] | list[str] = LABELS,
                 smoke: SmokeTest | None = None, drift: DriftReference | None = None,
                 input_name: str = "features", outputs: list[TensorSpec] | None = None) -> Manifest:
    """A manifest describing ``model_bytes`` the way the hub's bundler would."""
    f = len(features)
    if outputs is None:
        outputs = ([TensorSpec("probabilities", "FP32", [-1, len(labels)])] if task == "classification"
                   else [TensorSpec("prediction", "FP32", [-1, 1])])
    return Manifest(
        model_name=model, version=version, task=task, created_at=1.7e9, key_id="0" * 16,
        entrypoint="model.onnx", files=[file_entry("model.onnx", model_bytes)],
        feature_names=list(features), inputs=[TensorSpec(input_name, "FP32", [-1, f])], outputs=outputs,
        labels=list(labels) if task == "classification" else [], drift=drift, smoke_test=smoke,
        lineage={"run_id": "test"},
    )


def classifier_smoke(rows: list[list[float]] | None = None, *, atol: float = 1e-4, perturb: float = 0.0) -> SmokeTest:
    """A smoke test whose expected probabilities come from numpy (``perturb`` makes it wrong)."""
    rows = rows or [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    probs = expected_probabilities(np.asarray(rows)) + perturb
    return SmokeTest(inputs=rows, expected={"probabilities": probs.tolist()}, atol=atol)


__all__ = [
    "LABELS", "FEATURES", "classifier_onnx", "regression_onnx", "nan_regression_onnx",
    "expected_probabilities", "expected_prediction", "manifest_for", "classifier_smoke",
]
