"""onnxruntime sessions as the hub evaluates models: torch-free, so that code which only runs an
exported graph (packing a bundle's variants, evaluating a version) does not import torch."""

from __future__ import annotations

import onnxruntime as ort

from edgeloop.agent.preflight_child import session_options
from edgeloop.hub.errors import ExportError

__all__ = ["make_session"]


def make_session(onnx_bytes: bytes) -> ort.InferenceSession:
    """An onnxruntime CPU session with the small-model options edge agents use.

    The agent's pre-flight recipe (:func:`edgeloop.agent.preflight_child.session_options`): one
    thread, sequential execution, all graph optimizations (needed to fuse QDQ pairs into integer kernels).
    """
    opts = session_options()
    try:
        return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load the model: {exc}") from exc
