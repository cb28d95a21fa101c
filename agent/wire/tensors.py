"""The ONNX tensor names of every edgeloop model: the hub exports them, the agent checks them."""

INPUT_NAME = "features"  # FP32 [batch, n_features], raw (unscaled) values
CLASSIFICATION_OUTPUT = "probabilities"  # FP32 [batch, n_classes], rows sum to 1
REGRESSION_OUTPUT = "prediction"  # FP32 [batch, 1]

__all__ = ["CLASSIFICATION_OUTPUT", "INPUT_NAME", "REGRESSION_OUTPUT"]
