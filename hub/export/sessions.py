"""onnxruntime sessions as the hub evaluates models: torch-free, so that code which only runs an
exported graph (packing a bundle's variants, evaluating a version) does not import torch."""

from __future__ import annotations

import onnxruntime as ort

from edgeloop.hub.errors import ExportError

__all__ = ["make_session"]


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
