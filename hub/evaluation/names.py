"""What gates call the metrics of evaluations, and close-match suggestions for metric names.

An evaluation (``edgeloop eval``) scores a version's ONNX artifact on a test set. A
gate reads its metrics under the ``eval.`` prefix:

* ``eval.<metric>`` -- the evaluation of the artifact the version **ships** (its
  ``chosen`` model: ``fp32`` or ``int8``);
* ``eval.fp32.<metric>``, ``eval.int8.<metric>`` -- that artifact, whichever ships.

``<metric>`` is one of :data:`EVAL_METRICS` for the model's task. Pure functions.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EVAL_PREFIX = "eval"
ARTIFACTS = ("fp32", "int8")
EVAL_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1"),
    "regression": ("mae", "rmse", "r2"),
}
LOWER_IS_BETTER = ("mae", "rmse")  # gate these with --max

__all__ = ["ARTIFACTS", "EVAL_METRICS", "EVAL_PREFIX", "LOWER_IS_BETTER", "close_match", "eval_metric_names",
           "parse_eval_metric"]


def parse_eval_metric(name: str) -> tuple[str | None, str] | None:
    """``"eval.accuracy"`` -> ``(None, "accuracy")`` (the shipped artifact), ``"eval.int8.rmse"`` ->
    ``("int8", "rmse")``; None for a name that is not an evaluation metric."""
    head, dot, rest = str(name).partition(".")
    if head != EVAL_PREFIX or not dot or not rest:
        return None
    artifact, dot, metric = rest.partition(".")
    if dot and artifact in ARTIFACTS and metric:
        return artifact, metric
    return None, rest


def eval_metric_names(task: str | None) -> list[str]:
    """Every gate name of an evaluation metric for ``task`` (both tasks' when None)."""
    tasks = [task] if task in EVAL_METRICS else list(EVAL_METRICS)
    metrics = [m for t in tasks for m in EVAL_METRICS[str(t)]]
    return ([f"{EVAL_PREFIX}.{m}" for m in metrics]
            + [f"{EVAL_PREFIX}.{a}.{m}" for a in ARTIFACTS for m in metrics])


def close_match(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name`` (difflib), also trying it with the usual prefixes
    (``accuracy`` -> ``test_accuracy``); None when nothing is close."""
    names = sorted(set(known))
    for candidate in (name, f"test_{name}", f"{EVAL_PREFIX}.{name}"):
        if candidate != name and candidate in names:
            return candidate
    found = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return found[0] if found else None
