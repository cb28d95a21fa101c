"""ONNX export with preprocessing in the graph, onnxruntime-vs-torch parity, int8
quantization (static QDQ or dynamic) and the policy that picks what ships.

Modules: ``onnx_export`` (:func:`export_onnx`, graph checks, opset), ``parity``
(sessions, :func:`check_parity`, :func:`evaluate_onnx`), ``quantize`` (int8) and
``policy`` (:func:`quantization_report`, :func:`decide_quantization`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeloop.hub.lazy import lazy_exports

if TYPE_CHECKING:
    from edgeloop.hub.export.onnx_export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, export_onnx
    from edgeloop.hub.export.parity import check_parity, evaluate_onnx
    from edgeloop.hub.export.policy import (
        choose_model,
        compare_fp32_int8,
        decide_quantization,
        quantization_report,
    )
    from edgeloop.hub.export.quantize import quantize_dynamic_int8, quantize_static_int8
    from edgeloop.hub.export.sessions import make_session

__all__ = [
    "DEFAULT_OPSET", "INPUT_NAME", "OUTPUT_NAME", "check_parity", "choose_model", "compare_fp32_int8",
    "decide_quantization", "evaluate_onnx", "export_onnx", "make_session", "quantization_report",
    "quantize_dynamic_int8", "quantize_static_int8",
]

# imported when first used (PEP 562): the torch-free modules (sessions, policy) must not pay for torch
_WHERE = {"DEFAULT_OPSET": "onnx_export", "INPUT_NAME": "onnx_export", "OUTPUT_NAME": "onnx_export",
          "export_onnx": "onnx_export", "check_parity": "parity", "evaluate_onnx": "parity",
          "choose_model": "policy", "compare_fp32_int8": "policy", "decide_quantization": "policy",
          "quantization_report": "policy", "quantize_dynamic_int8": "quantize", "quantize_static_int8": "quantize",
          "make_session": "sessions"}


__getattr__ = lazy_exports(__name__, _WHERE)
