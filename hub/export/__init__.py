"""ONNX export with preprocessing in the graph, onnxruntime-vs-torch parity, int8
quantization (static QDQ or dynamic) and the policy that picks what ships."""

from edgeloop.hub.export.exporter import (
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAME,
    check_parity,
    choose_model,
    compare_fp32_int8,
    decide_quantization,
    evaluate_onnx,
    export_onnx,
    make_session,
    quantization_report,
    quantize_dynamic_int8,
    quantize_static_int8,
)

__all__ = [
    "DEFAULT_OPSET", "INPUT_NAME", "OUTPUT_NAME", "check_parity", "choose_model", "compare_fp32_int8",
    "decide_quantization", "evaluate_onnx", "export_onnx", "make_session", "quantization_report",
    "quantize_dynamic_int8", "quantize_static_int8",
]
