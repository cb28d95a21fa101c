"""Running a shipped ONNX artifact on rows with onnxruntime, as the edge agent runs it
(the agent's session options: one thread, all graph optimizations; no disk)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edgeloop.agent.runtime import session_options
from edgeloop.agent.wire.tensors import INPUT_NAME
from edgeloop.hub.errors import ExportError

__all__ = ["BATCH_ROWS", "run_artifact"]

BATCH_ROWS = 4096  # rows per onnxruntime call: bounded memory on large test files


def run_artifact(model_bytes: bytes, X: np.ndarray, *, what: str = "the model") -> np.ndarray:
    """The model's first output (probabilities ``[n, C]`` or predictions ``[n, 1]``) on ``X``."""
    try:
        session = ort.InferenceSession(model_bytes, sess_options=session_options(),
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime cannot load {what}: {exc}; train the version again") from exc
    output = session.get_outputs()[0].name
    X = np.ascontiguousarray(X, dtype=np.float32)
    parts = [session.run([output], {INPUT_NAME: X[i:i + BATCH_ROWS]})[0] for i in range(0, len(X), BATCH_ROWS)]
    return np.concatenate(parts) if parts else np.zeros((0, 1), dtype=np.float32)
