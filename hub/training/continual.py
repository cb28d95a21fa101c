"""Continual learning: fine-tune a parent model on new data with experience replay and EWC,
and measure how much it forgot of the parent's data."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edgeloop.hub.datasets import Dataset, Splits, align_labels
from edgeloop.hub.errors import TrainingError
from edgeloop.hub.progress import CancelToken, ProgressCallback
from edgeloop.hub.training.data import check_splits, dataset_task, make_splits
from edgeloop.hub.training.loop import TrainResult, raw_outputs, train_model
from edgeloop.hub.training.metrics import regression_metrics
from edgeloop.hub.training.models import FactoryModel
from edgeloop.hub.training.params import TrainParams
from edgeloop.hub.training.replay import EWCPenalty, ReplayData, reservoir_sample

__all__ = ["ContinualResult", "adopt_parent_labels", "fine_tune"]


@dataclass
class ContinualResult:
    """A fine-tuned model and how much it forgot.

    ``metric`` is ``"accuracy"`` (classification) or ``"r2"`` (regression) --
    higher is better for both, so ``forgetting = parent_before - parent_after``
    is positive when the model got worse on the parent's test split.
    ``new_before``/``new_after`` are the same metric on the new data's test
    split (before = the parent model as it was).
    """

    train: TrainResult
    metric: str
    parent_before: float
    parent_after: float
    new_before: float
    new_after: float
    replay_rows: int
    ewc_lambda: float
    seed: int
    new_splits: Splits | None = None
    missing_classes: list[str] = dataclasses.field(default_factory=list)

    @property
    def forgetting(self) -> float:
        return self.parent_before - self.parent_after

    @property
    def model(self) -> FactoryModel:
        return self.train.model

    @property
    def metrics(self) -> dict[str, Any]:
        return self.train.metrics

    def summary(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "parent_test_before": self.parent_before,
            "parent_test_after": self.parent_after,
            "forgetting": self.forgetting,
            "new_test_before": self.new_before,
            "new_test_after": self.new_after,
            "replay_rows": self.replay_rows,
            "ewc_lambda": self.ewc_lambda,
            "seed": self.seed,
            "missing_classes": list(self.missing_classes),
        }

    def to_dict(self) -> dict:
        return {**self.train.to_dict(), "continual": self.summary()}


def adopt_parent_labels(parent_labels: list[str], new_data: Dataset) -> tuple[Dataset, list[str]]:
    """``new_data`` with the parent's label set (class indices re-numbered to it) and the parent's
    classes that no row of ``new_data`` has.

    A site that lacks a class is normal: the child keeps predicting every class
    the parent knows. A class the parent never saw is refused
    (``unseen_label``, :class:`edgeloop.hub.errors.DataValidationError`).
    Regression data are returned unchanged.
    """
    if dataset_task(new_data) != "classification":
        return new_data, []
    aligned = align_labels(new_data, list(parent_labels))
    counts = np.bincount(aligned.y, minlength=len(aligned.labels))
    return aligned, [lab for lab, n in zip(aligned.labels, counts, strict=True) if n == 0]


def _eval_rows(data: Dataset, splits: Splits) -> tuple[np.ndarray, np.ndarray]:
    """The test rows of ``splits``, or its validation rows when the test split is empty (test ratio 0)."""
    idx = splits.test if splits.test.size else splits.val
    return data.X[idx], data.y[idx]


@torch.no_grad()
def _score(model: FactoryModel, X: np.ndarray, y: np.ndarray) -> float:
    """Accuracy (classification) or R² (regression) of a CPU model on rows ``X``."""
    m = model.cpu().eval()
    out = raw_outputs(m, torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)))
    if m.task == "classification":
        return float((out.argmax(dim=1).numpy() == np.asarray(y)).mean())
    return regression_metrics(y, m.output(out)[:, 0].numpy())["r2"]


def fine_tune(
    parent_model: FactoryModel,
    parent_data: Dataset,
    parent_splits: Splits,
    new_data: Dataset,
    params: TrainParams | None = None,
    *,
    new_splits: Splits | None = None,
    replay_size: int = 500,
    ewc_lambda: float = 0.0,
    seed: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    ewc_rows: int = 1000,
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> ContinualResult:
    """Continue training ``parent_model`` on ``new_data`` without forgetting the parent's data.

    * **Experience replay**: a seeded reservoir (:func:`reservoir_sample`) of
      ``replay_size`` of the parent's *training* rows is mixed into every epoch
      (0 turns replay off).
    * **EWC** (``ewc_lambda > 0``): :class:`EWCPenalty` with the diagonal
      Fisher of the parent model on (up to ``ewc_rows`` of) its training rows.

    The parent's standardization (and target scale) are kept, so replayed
    rows mean what they meant. ``new_splits`` default to
    :func:`make_splits` of ``new_data`` with ``seed`` (which defaults to
    ``params.seed`` and also seeds the reservoir and the Fisher sample;
    training runs with ``params`` and that seed). Before and after training
    the metric (accuracy, or R² for regression) is measured on the parent's
    test split and on the new test split; the result's ``metrics`` (= the
    run's) carry these under ``"continual"`` plus ``"forgetting"``.

    The child keeps the parent's label set: ``new_data`` may lack some of the
    parent's classes (they are named in ``missing_classes`` and in a warning
    under the metrics' ``"warnings"``), but may not bring new ones. ``test``
    (explicit test rows, labels in the parent's order) replaces the new data's
    test split; a split without test rows is scored on its validation rows.
    """
    params = params or TrainParams()
    seed = params.seed if seed is None else int(seed)
    params = dataclasses.replace(params, seed=seed)
    task = dataset_task(new_data)
    if dataset_task(parent_data) != task or getattr(parent_model, "task", None) != task:
        raise TrainingError(f"cannot fine-tune: parent model/data task and new data task ({task}) differ")
    if list(parent_data.feature_names) != list(new_data.feature_names):
        raise TrainingError("cannot fine-tune: the new data's feature names differ from the parent's "
                            f"({new_data.feature_names[:5]}... vs {parent_data.feature_names[:5]}...)")
    new_data, missing = adopt_parent_labels(list(parent_data.labels), new_data)
    if replay_size < 0:
        raise TrainingError(f"replay_size must not be negative, got {replay_size}")
    check_splits(parent_data, parent_splits)
    new_splits = new_splits if new_splits is not None else make_splits(new_data, seed)

    parent = copy.deepcopy(parent_model).cpu().eval()
    Xp_test, yp_test = _eval_rows(parent_data, parent_splits)
    Xn_test, yn_test = test if test is not None else _eval_rows(new_data, new_splits)
    parent_before = _score(parent, Xp_test, yp_test)
    new_before = _score(parent, Xn_test, yn_test)

    replay = None
    if replay_size > 0:
        rows = reservoir_sample(parent_splits.train, replay_size, seed)
        replay = ReplayData(parent_data.X[rows], parent_data.y[rows])
    ewc = None
    if ewc_lambda > 0:
        ewc = EWCPenalty.from_data(parent, parent_data.X[parent_splits.train], parent_data.y[parent_splits.train],
                                   ewc_lambda, max_rows=ewc_rows, seed=seed)
    result = train_model(new_data, new_splits, params, progress=progress, cancel=cancel,
                         init_model=parent, replay=replay, ewc=ewc, test=test)
    out = ContinualResult(
        train=result, metric="accuracy" if task == "classification" else "r2",
        parent_before=parent_before, parent_after=_score(result.model, Xp_test, yp_test),
        new_before=new_before, new_after=_score(result.model, Xn_test, yn_test),
        replay_rows=len(replay) if replay is not None else 0, ewc_lambda=float(ewc_lambda), seed=seed,
        new_splits=new_splits, missing_classes=missing,
    )
    result.metrics["continual"] = out.summary()
    result.metrics["forgetting"] = out.forgetting
    if missing:
        result.metrics.setdefault("warnings", []).append(
            f"the new data have no rows of class(es) {', '.join(map(repr, missing))}; the model keeps the "
            f"parent's classes {list(parent_data.labels)} (their accuracy rests on the replayed rows only)")
    return out
