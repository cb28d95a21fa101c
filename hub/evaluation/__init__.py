"""Evaluating a version's shipped ONNX artifacts on separate test data: the scores
(pure numpy, :mod:`.scoring`), running the artifacts with onnxruntime
(:mod:`.inference`, no disk), the names gates give evaluation metrics
(:mod:`.names`), and reading a test file against a model's inputs (:mod:`.inputs`,
the one module here that reads files). Finding a version's files and recording the
evaluation is :mod:`edgeloop.hub.services.evaluation`'s job; storing it, the
registry's (:mod:`edgeloop.hub.registry.evaluations`)."""

from edgeloop.hub.evaluation.names import (
    ARTIFACTS,
    EVAL_METRICS,
    EVAL_PREFIX,
    LOWER_IS_BETTER,
    close_match,
    eval_metric_names,
    parse_eval_metric,
)
from edgeloop.hub.evaluation.scoring import FEW_ROWS, score, score_classification, score_regression

__all__ = [
    "ARTIFACTS", "EVAL_METRICS", "EVAL_PREFIX", "FEW_ROWS", "LOWER_IS_BETTER", "close_match", "eval_metric_names",
    "parse_eval_metric", "score", "score_classification", "score_regression",
]
