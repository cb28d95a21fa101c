"""The training loop: AdamW with early stopping on the validation loss, reproducible runs.

:func:`train_model` trains the model :class:`TrainParams` describes (or continues
an ``init_model``, with optional replay rows and EWC penalty) on one thread with
deterministic algorithms, and returns a :class:`TrainResult` with the metrics and
per-epoch history a run record needs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from edgeloop.hub.datasets import Dataset, Splits
from edgeloop.hub.errors import TrainingError
from edgeloop.hub.progress import CancelToken, ProgressCallback, ProgressEvent, null_progress
from edgeloop.hub.training.data import check_splits, dataset_task, dataset_window_shape, validate_for_training
from edgeloop.hub.training.metrics import confusion_matrix, macro_f1, regression_metrics
from edgeloop.hub.training.models import FactoryModel, build_model, standardization_stats
from edgeloop.hub.training.params import TrainParams
from edgeloop.hub.training.replay import EWCPenalty, ReplayData

__all__ = ["STOP_REASONS", "TRAIN_THREADS", "TrainResult", "raw_outputs", "train_classifier", "train_model"]

# One intra-op thread: fastest for models this small (batch 64 x 64 units) and
# the same float summation order on every machine, hence bitwise-repeatable runs.
TRAIN_THREADS = 1
_EVAL_BATCH = 8192  # rows per forward pass when evaluating (bounds memory for CNNs)
# Why training stopped (``metrics["stop_reason"]`` of a run): no better validation loss for
# ``patience`` epochs, the ``epochs`` ceiling reached, or cancelled (recorded by the pipeline).
STOP_REASONS = ("early_stop", "max_epochs", "cancelled")


@dataclass
class TrainResult:
    """A trained model (eval mode, on CPU) and everything a run record needs."""

    model: FactoryModel
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    params: TrainParams
    seconds: float
    device: str
    best_epoch: int
    stopped_early: bool
    feature_names: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    task: str = "classification"
    window_shape: tuple[int, int] | None = None
    samples_per_s: float = 0.0  # training rows (replayed rows included) per second of the epoch loops

    @property
    def stop_reason(self) -> str:
        """``"early_stop"`` or ``"max_epochs"`` (see :data:`STOP_REASONS`)."""
        return "early_stop" if self.stopped_early else "max_epochs"

    def to_dict(self) -> dict:
        """JSON-ready record (everything but the model itself)."""
        return {
            "metrics": self.metrics,
            "history": self.history,
            "params": self.params.to_dict(),
            "seconds": self.seconds,
            "device": self.device,
            "threads": TRAIN_THREADS,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "stop_reason": self.stop_reason,
            "feature_names": list(self.feature_names),
            "labels": list(self.labels),
            "task": self.task,
            "window_shape": list(self.window_shape) if self.window_shape else None,
            "model_config": self.model.config() if hasattr(self.model, "config") else None,
            "samples_per_s": self.samples_per_s,
        }


def _pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@torch.no_grad()
def raw_outputs(model: FactoryModel, X: torch.Tensor) -> torch.Tensor:
    """``model.raw`` of the rows ``X``, in batches of at most 8192 rows."""
    return torch.cat([model.raw(X[s:s + _EVAL_BATCH]) for s in range(0, X.shape[0], _EVAL_BATCH)])


@torch.no_grad()
def _evaluate(model: FactoryModel, X: torch.Tensor, y: torch.Tensor) -> tuple[float, np.ndarray]:
    """Mean loss (as trained) and predictions (class indices, or values in the target's unit)."""
    raw = raw_outputs(model, X)
    if model.task == "classification":
        return float(F.cross_entropy(raw, y).item()), raw.argmax(dim=1).cpu().numpy()
    t = model.target
    loss = F.mse_loss(raw[:, 0], (y - t.mean[0, 0]) / t.std[0, 0]).item()
    return float(loss), model.output(raw)[:, 0].cpu().numpy()


def _check_test(test: tuple[np.ndarray, np.ndarray], dataset: Dataset, task: str) -> tuple[np.ndarray, np.ndarray]:
    X, y = np.asarray(test[0], dtype=np.float32), np.asarray(test[1])
    if X.ndim != 2 or X.shape[1] != dataset.n_features or y.shape != (X.shape[0],) or X.shape[0] == 0:
        raise TrainingError(f"the test set must be rows (n, {dataset.n_features}) with n labels, got X {X.shape} "
                            f"and y {y.shape}; give a test dataset with the training data's columns")
    if task == "classification" and (y.min() < 0 or y.max() >= dataset.n_classes):
        raise TrainingError("the test labels are not indices into the training data's classes; "
                            "align the test dataset to them first (edgeloop.hub.datasets.align_labels)")
    return X, y


def _check_init_model(model: FactoryModel, dataset: Dataset, task: str) -> None:
    if getattr(model, "task", None) != task:
        raise TrainingError(f"init_model is a {getattr(model, 'task', '?')} model but the dataset is {task}")
    if getattr(model, "n_features", None) != dataset.n_features:
        raise TrainingError(f"init_model takes {model.n_features} features, the dataset has {dataset.n_features}")
    if task == "classification" and model.n_outputs != dataset.n_classes:
        raise TrainingError(f"init_model has {model.n_outputs} classes, the dataset {dataset.n_classes}")


def train_model(
    dataset: Dataset,
    splits: Splits,
    params: TrainParams | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    init_model: FactoryModel | None = None,
    replay: ReplayData | tuple[np.ndarray, np.ndarray] | None = None,
    ewc: EWCPenalty | None = None,
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> TrainResult:
    """Train the model ``params`` describes on ``dataset`` (classification or regression).

    The model comes from :func:`build_model` (``params.arch``; a CNN takes its
    ``(channels, steps)`` from ``dataset.window_shape``) with the
    standardization statistics of the training rows, or is a copy of
    ``init_model`` (fine-tuning: its standardization and target scale are kept).
    ``params.arch="auto"`` means the 1D-CNN for window datasets and the MLP for
    tables (the result's ``params`` name the architecture that was trained).
    Loss: cross-entropy on the logits, or mean squared error on the
    standardized target; AdamW. ``replay`` rows are added to every epoch's
    training rows (shuffled together); ``ewc`` adds its penalty to the loss.

    After each epoch the validation loss is computed; the weights of the best
    epoch are restored at the end, and training stops once ``params.patience``
    epochs pass without improvement (``stop_reason`` ``"early_stop"``) or at
    the ``params.epochs`` ceiling (``"max_epochs"``). Progress is reported once
    per epoch (stage ``"train"``, ``done`` = epoch, ``total`` = ``params.epochs``,
    the message names the best epoch so far; an early stop ends with one more
    event at the total) and ``cancel`` is checked before every batch (raising
    :class:`edgeloop.hub.errors.CancelledError`).

    ``test`` (rows ``X``, ``y`` with ``y`` in the dataset's label order) is an
    explicit test set that replaces ``splits.test``; without either (an empty
    test split) the result has no ``test_*`` metrics.

    Metrics: classification -- test/val accuracy, test macro-F1, confusion
    matrix, losses; regression -- test/val MAE, RMSE, R², losses; both --
    ``best_epoch``, ``epochs_run``, ``stop_reason`` and the split sizes
    ``n_train``, ``n_val``, ``n_test``. ``history`` holds one row per epoch
    (train/val loss and val accuracy, or val MAE/RMSE).

    Runs are bitwise repeatable on CPU for a fixed ``params.seed``: the global
    RNG state is forked (the caller's is left untouched), shuffling uses its own
    generator, and the thread count and the deterministic-algorithms flag are
    set for the call and restored afterwards. Uses CUDA when available. (The
    first call in a process spends ~2 s importing torch's compiler stack.)
    """
    params = params or TrainParams()
    progress = progress or null_progress
    task = dataset_task(dataset)
    validate_for_training(dataset, task)
    check_splits(dataset, splits)
    window_shape = dataset_window_shape(dataset)
    if init_model is not None:
        _check_init_model(init_model, dataset, task)
        params = dataclasses.replace(params, arch=init_model.arch)  # a fine-tune keeps the model it continues
    params = params.resolved(window_shape)
    if test is not None:
        test = _check_test(test, dataset, task)
    replay_rows = replay if replay is None or isinstance(replay, ReplayData) else ReplayData(*replay)
    if replay_rows is not None and replay_rows.X.shape[1] != dataset.n_features:
        raise TrainingError(f"replay rows have {replay_rows.X.shape[1]} features, the dataset {dataset.n_features}")

    device = _pick_device()
    saved_threads = torch.get_num_threads()
    saved_det = torch.are_deterministic_algorithms_enabled()
    saved_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    saved_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.set_num_threads(TRAIN_THREADS)
    # Warn-only: an op without a deterministic kernel warns instead of failing.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [torch.cuda.current_device()]):
            torch.manual_seed(params.seed)
            return _train(dataset, splits, params, task, window_shape, device, progress, cancel,
                          init_model, replay_rows, ewc, test)
    finally:
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(saved_det, warn_only=saved_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved_cudnn


def train_classifier(
    dataset: Dataset,
    splits: Splits,
    params: TrainParams | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainResult:
    """:func:`train_model` for classification datasets (kept for existing callers)."""
    if dataset_task(dataset) != "classification":
        raise TrainingError("train_classifier needs a classification dataset; use train_model for regression")
    return train_model(dataset, splits, params, progress=progress, cancel=cancel)


def _new_model(dataset: Dataset, X_train: np.ndarray, y_train: np.ndarray, params: TrainParams, task: str,
               window_shape: tuple[int, int] | None) -> FactoryModel:
    """A fresh model whose input (and, for regression, target) statistics come from the training rows only."""
    per = params.standardize
    if per == "auto":
        per = "channel" if params.arch == "cnn1d" else "feature"
    mean, std = standardization_stats(X_train, window_shape, per=per)
    y_mean = y_std = None
    if task == "regression":
        y_tr = np.asarray(y_train, dtype=np.float64)
        y_mean, y_std = float(y_tr.mean()), float(y_tr.std())
    n_out = 1 if task == "regression" else dataset.n_classes
    return build_model(task, dataset.n_features, n_out, arch=params.arch, window_shape=window_shape,
                       hidden=params.hidden, channels=params.channels, kernel_size=params.kernel_size,
                       mean=mean, std=std, y_mean=y_mean or 0.0, y_std=y_std or 1.0)


def _train(
    dataset: Dataset,
    splits: Splits,
    params: TrainParams,
    task: str,
    window_shape: tuple[int, int] | None,
    device: torch.device,
    progress: ProgressCallback,
    cancel: CancelToken | None,
    init_model: FactoryModel | None,
    replay: ReplayData | None,
    ewc: EWCPenalty | None,
    test: tuple[np.ndarray, np.ndarray] | None,
) -> TrainResult:
    start = time.perf_counter()
    regression = task == "regression"
    y_dtype = np.float32 if regression else np.int64
    if init_model is None:
        model = _new_model(dataset, dataset.X[splits.train], dataset.y[splits.train], params, task, window_shape)
    else:
        model = copy.deepcopy(init_model)
    model = model.to(device)

    def tensors(X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device),
                torch.from_numpy(np.ascontiguousarray(y, dtype=y_dtype)).to(device))

    X_fit, y_fit = dataset.X[splits.train], dataset.y[splits.train]
    if replay is not None and len(replay):
        X_fit = np.concatenate([X_fit, replay.X])
        y_fit = np.concatenate([np.asarray(y_fit, dtype=y_dtype), replay.y.astype(y_dtype)])
    X_tr, y_tr = tensors(X_fit, y_fit)
    X_va, y_va = tensors(dataset.X[splits.val], dataset.y[splits.val])
    X_test_np, y_test_np = test if test is not None else (dataset.X[splits.test], dataset.y[splits.test])
    X_te, y_te = tensors(X_test_np, y_test_np)
    y_val_np, y_test_np = np.asarray(dataset.y[splits.val]), np.asarray(y_test_np)
    if regression:
        t_mean, t_std = model.target.mean[0, 0], model.target.std[0, 0]
        y_tr = (y_tr - t_mean) / t_std  # the loss works on the standardized target
    ewc = ewc.to(device) if ewc is not None else None

    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    shuffle = torch.Generator(device="cpu").manual_seed(params.seed)
    n = X_tr.shape[0]

    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    stale = 0
    loop_s = 0.0
    rows_seen = 0
    for epoch in range(1, params.epochs + 1):
        t_epoch = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=shuffle).to(device)
        total_loss = torch.zeros((), device=device)
        total_pen = torch.zeros((), device=device)
        for s in range(0, n, params.batch_size):
            if cancel is not None:
                cancel.raise_if_cancelled("Training")
            batch = order[s:s + params.batch_size]
            optimizer.zero_grad(set_to_none=True)
            raw = model.raw(X_tr[batch])
            if regression:
                loss = F.mse_loss(raw[:, 0], y_tr[batch])
            else:
                loss = F.cross_entropy(raw, y_tr[batch])
            objective = loss
            if ewc is not None:
                pen = ewc.penalty(model)
                objective = loss + pen
                total_pen += pen.detach() * batch.numel()
            objective.backward()
            optimizer.step()
            total_loss += loss.detach() * batch.numel()
        train_loss = float(total_loss.item()) / n
        loop_s += time.perf_counter() - t_epoch
        rows_seen += n
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"training diverged at epoch {epoch} (loss {train_loss}); lower the learning rate (now {params.lr})"
            )

        model.eval()
        val_loss, val_pred = _evaluate(model, X_va, y_va)
        row: dict[str, float] = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss}
        if regression:
            rm = regression_metrics(y_val_np, val_pred)
            row.update(val_mae=rm["mae"], val_rmse=rm["rmse"])
        else:
            row["val_accuracy"] = float((val_pred == y_val_np).mean())
        if ewc is not None:
            row["ewc_penalty"] = float(total_pen.item()) / n
        history.append(row)
        if val_loss < best_loss:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        message = f"epoch {epoch}/{params.epochs} (best {best_epoch})"
        if epoch == params.epochs:
            message += f"; stopped: max_epochs reached, restoring best epoch {best_epoch}"
        progress(ProgressEvent("train", epoch, params.epochs, message,
                               {k: v for k, v in row.items() if k != "epoch"}))
        if stale >= params.patience:
            break

    stopped_early = len(history) < params.epochs
    if stopped_early:
        progress(ProgressEvent("train", params.epochs, params.epochs,
                               f"stopped early (early_stop) after epoch {len(history)}: no better validation "
                               f"loss for {params.patience} epochs; restoring best epoch {best_epoch}", {}))
    model.load_state_dict(best_state)
    model.eval()

    val_loss, val_pred = _evaluate(model, X_va, y_va)
    metrics: dict[str, Any] = {}
    has_test = X_te.shape[0] > 0
    if has_test:
        test_loss, test_pred = _evaluate(model, X_te, y_te)
    if regression:
        va = regression_metrics(y_val_np, val_pred)
        if has_test:
            te = regression_metrics(y_test_np, test_pred)
            metrics.update(test_mae=te["mae"], test_rmse=te["rmse"], test_r2=te["r2"], test_loss=test_loss)
        metrics.update(val_mae=va["mae"], val_rmse=va["rmse"], val_r2=va["r2"], val_loss=val_loss)
    else:
        if has_test:
            cm = confusion_matrix(y_test_np, test_pred, dataset.n_classes)
            metrics.update(test_accuracy=float((test_pred == y_test_np).mean()), test_macro_f1=macro_f1(cm),
                           test_loss=test_loss, confusion_matrix=cm.tolist())
        metrics.update(val_accuracy=float((val_pred == y_val_np).mean()), val_loss=val_loss)
    metrics.update(best_epoch=best_epoch, epochs_run=len(history), max_epochs=params.epochs,
                   stop_reason="early_stop" if stopped_early else "max_epochs",
                   n_train=int(splits.train.size), n_val=int(splits.val.size), n_test=int(X_te.shape[0]))
    model = model.cpu()
    return TrainResult(
        model=model,
        metrics=metrics,
        history=history,
        params=params,
        seconds=time.perf_counter() - start,
        device=str(device),
        best_epoch=best_epoch,
        stopped_early=stopped_early,
        feature_names=list(dataset.feature_names),
        labels=list(dataset.labels),
        task=task,
        window_shape=window_shape,
        samples_per_s=rows_seen / loop_s if loop_s > 0 else 0.0,
    )
