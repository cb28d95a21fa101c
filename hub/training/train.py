"""PyTorch training of the model factory's models, reproducible and reportable.

Every model carries its own preprocessing (:class:`Standardize` with the
training mean/std as buffers) and its own output transform (softmax for
classification, the training target's scale for regression), so the exported
ONNX graph takes raw sensor values ("features", FP32 [batch, F]) and returns
what the agent serves ("probabilities" [batch, C] or "prediction" [batch, 1]):
there is no separate scaler to ship, and no way for training and serving to
disagree about it.

Models (:func:`build_model`):

* :class:`MLPClassifier` / :class:`MLPRegressor` -- Standardize -> [Linear -> ReLU]* -> Linear;
* :class:`CNN1D` -- for multichannel sensor windows stored flat, channel-major
  (``x[:, c * T + t]``): Standardize -> reshape [batch, C, T] -> [Conv1d -> ReLU (-> MaxPool)]*
  -> global average pooling -> Linear. Both steps happen inside the graph.

Training (:func:`train_model`) is AdamW with early stopping on the validation
loss; :func:`fine_tune` continues a parent model on new data with experience
replay (a seeded reservoir of the parent's training rows) and an optional EWC
penalty, and reports forgetting on the parent's test split.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import json
import math
import platform
import subprocess
import time
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgeloop.hub.datasets import MIN_ROWS, Dataset, Splits, split_dataset, validate_dataset
from edgeloop.hub.errors import DataValidationError, TrainingError
from edgeloop.hub.progress import CancelToken, ProgressCallback, ProgressEvent, null_progress

__all__ = [
    "ARCHS",
    "CNN1D",
    "TASKS",
    "TRAIN_THREADS",
    "ContinualResult",
    "EWCPenalty",
    "MLPClassifier",
    "MLPRegressor",
    "ReplayData",
    "Standardize",
    "TargetScale",
    "TrainParams",
    "TrainResult",
    "build_model",
    "code_version",
    "confusion_matrix",
    "dataset_task",
    "dataset_window_shape",
    "fine_tune",
    "library_versions",
    "load_model",
    "macro_f1",
    "make_splits",
    "model_from_config",
    "regression_metrics",
    "reservoir_sample",
    "save_model",
    "standardization_stats",
    "train_classifier",
    "train_model",
]

# One intra-op thread: fastest for models this small (batch 64 x 64 units) and
# the same float summation order on every machine, hence bitwise-repeatable runs.
TRAIN_THREADS = 1
TASKS = ("classification", "regression")
ARCHS = ("mlp", "cnn1d")
STANDARDIZE = ("auto", "feature", "channel")
_EVAL_BATCH = 8192  # rows per forward pass when evaluating (bounds memory for CNNs)


# --------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------

_INT_FIELDS = ("epochs", "batch_size", "patience", "seed", "kernel_size")
_FLOAT_FIELDS = ("lr", "weight_decay")
_TUPLE_FIELDS = ("hidden", "channels")
_STR_FIELDS = {"arch": ARCHS, "standardize": STANDARDIZE}
# Spellings other tools use for these parameters (named in the unknown-key error).
_ALIASES = {"learning_rate": "lr", "max_epochs": "epochs", "n_epochs": "epochs", "batch": "batch_size",
            "hidden_sizes": "hidden", "hidden_layers": "hidden", "layers": "hidden", "random_seed": "seed",
            "random_state": "seed", "wd": "weight_decay", "early_stopping_patience": "patience",
            "conv_channels": "channels", "filters": "channels", "kernel": "kernel_size", "model": "arch"}


@dataclass
class TrainParams:
    """Hyper-parameters of :func:`train_model` (recorded with every run).

    ``arch`` picks the model (``"mlp"`` or ``"cnn1d"``); ``hidden`` are the MLP
    layer widths, ``channels`` the CNN's Conv1d widths (one block each) with
    ``kernel_size``. ``standardize`` is ``"feature"`` (one mean/std per input
    column), ``"channel"`` (one per sensor channel of a window dataset) or
    ``"auto"`` (channel for the CNN, feature for the MLP). Fields after
    ``seed`` were added later, so positional construction still works.
    """

    hidden: tuple[int, ...] = (64, 32)
    epochs: int = 40
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    patience: int = 8  # epochs without a better validation loss before stopping
    seed: int = 0
    arch: str = "mlp"
    channels: tuple[int, ...] = (16, 32)
    kernel_size: int = 5
    standardize: str = "auto"

    def __post_init__(self) -> None:
        bad = []
        for name in _TUPLE_FIELDS:
            value = getattr(self, name)
            try:
                setattr(self, name, tuple(int(h) for h in value))
            except (TypeError, ValueError):
                bad.append(f"{name}={value!r} (need a list of positive integers)")
        if not bad:
            if not self.hidden or any(h < 1 for h in self.hidden):
                bad.append(f"hidden={self.hidden} (need one or more positive layer widths)")
            if not self.channels or any(c < 1 for c in self.channels):
                bad.append(f"channels={self.channels} (need one or more positive Conv1d widths)")
        if self.epochs < 1:
            bad.append(f"epochs={self.epochs} (need >= 1)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            bad.append(f"lr={self.lr} (need a positive number)")
        if self.batch_size < 1:
            bad.append(f"batch_size={self.batch_size} (need >= 1)")
        if self.weight_decay < 0:
            bad.append(f"weight_decay={self.weight_decay} (need >= 0)")
        if self.patience < 1:
            bad.append(f"patience={self.patience} (need >= 1)")
        if self.kernel_size < 1:
            bad.append(f"kernel_size={self.kernel_size} (need >= 1)")
        for name, allowed in _STR_FIELDS.items():
            if getattr(self, name) not in allowed:
                bad.append(f"{name}={getattr(self, name)!r} (need one of {', '.join(map(repr, allowed))})")
        if bad:
            raise TrainingError("invalid training parameters: " + "; ".join(bad) + ". Correct them and start again.")

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in _TUPLE_FIELDS:
            d[name] = list(getattr(self, name))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "training parameters") -> TrainParams:
        """Parameters from a mapping (a parsed run file); unknown keys and wrong types are errors.

        Missing keys keep their defaults. Raises :class:`hub.errors.TrainingError`
        naming every unknown key (with the closest known name) and every value of
        the wrong type.
        """
        if not isinstance(d, Mapping):
            raise TrainingError(f"{where} must be a table of parameters, got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        problems = []
        for key in d:
            if key not in known:
                close = [_ALIASES[key]] if key in _ALIASES else difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"unknown key {key!r}{hint}")
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key not in known:
                continue
            if key in _INT_FIELDS:
                if isinstance(value, bool) or not isinstance(value, int):
                    problems.append(f"{key} must be an integer, got {value!r}")
                    continue
            elif key in _FLOAT_FIELDS:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    problems.append(f"{key} must be a number, got {value!r}")
                    continue
                value = float(value)
            elif key in _TUPLE_FIELDS:
                if not isinstance(value, (list, tuple)) or any(
                        isinstance(v, bool) or not isinstance(v, int) for v in value):
                    problems.append(f"{key} must be a list of integers, got {value!r}")
                    continue
                value = tuple(value)
            elif key in _STR_FIELDS and not isinstance(value, str):
                problems.append(f"{key} must be a string, got {value!r}")
                continue
            kwargs[key] = value
        if problems:
            raise TrainingError(f"{where}: " + "; ".join(problems) + f". Known keys: {', '.join(known)}.")
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainParams:
        """Parameters from a run file: JSON (``.json``) or TOML (``.toml``).

        The file holds the parameters at its top level, or in one ``train``
        table (``[train]`` in TOML, ``{"train": {...}}`` in JSON); any other key
        is an error (see :meth:`from_dict`).
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".json", ".toml"):
            raise TrainingError(f"run file {path} must end in .json or .toml, not {suffix or '(no suffix)'!r}")
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise TrainingError(f"run file {path} does not exist; check the path") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise TrainingError(f"run file {path} cannot be read: {exc}") from exc
        try:
            d = json.loads(text) if suffix == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise TrainingError(f"run file {path} is not valid {suffix[1:].upper()}: {exc}") from exc
        if isinstance(d, Mapping) and list(d) == ["train"] and isinstance(d["train"], Mapping):
            d = d["train"]
        return cls.from_dict(d, where=f"run file {path}")


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------


class Standardize(nn.Module):
    """``(x - mean) / std`` with the statistics stored as buffers (saved and exported with the model)."""

    def __init__(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        std_t = torch.as_tensor(np.asarray(std, dtype=np.float32))
        # A (near-)constant column would divide by ~0; validation rejects constant
        # columns, this only guards against tiny spreads blowing up the inputs.
        std_t = torch.clamp(std_t, min=1e-6)
        self.register_buffer("mean", mean_t.reshape(1, -1).clone())
        self.register_buffer("std", std_t.reshape(1, -1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TargetScale(nn.Module):
    """``z * std + mean``: maps a regressor's standardized output back to the target's unit."""

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([[float(mean)]], dtype=torch.float32))
        self.register_buffer("std", torch.tensor([[max(float(std), 1e-6)]], dtype=torch.float32))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean


class _FactoryModel(nn.Module):
    """Common interface: ``raw`` (what the loss sees) and ``forward`` (what is exported and served)."""

    task: str = "classification"
    arch: str = "mlp"
    n_features: int
    n_outputs: int

    def raw(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def output(self, raw: torch.Tensor) -> torch.Tensor:
        if self.task == "classification":
            return torch.softmax(raw, dim=-1)
        return self.target(raw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.raw(x))

    def config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


def _mlp_body(n_in: int, hidden: tuple[int, ...], n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def _stats(n: int, mean, std) -> tuple[np.ndarray, np.ndarray]:
    return (np.zeros(n, np.float32) if mean is None else mean, np.ones(n, np.float32) if std is None else std)


class MLPClassifier(_FactoryModel):
    """Standardize -> [Linear -> ReLU]* -> Linear -> Softmax.

    :meth:`forward` returns class probabilities (what is exported and served);
    :meth:`logits` returns the pre-softmax scores used by the training loss.
    """

    task = "classification"
    arch = "mlp"

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        hidden: tuple[int, ...] = (64, 32),
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.n_features = int(n_features)
        self.n_classes = self.n_outputs = int(n_classes)
        self.hidden = tuple(int(h) for h in hidden)
        self.standardize = Standardize(*_stats(self.n_features, mean, std))
        self.body = _mlp_body(self.n_features, self.hidden, self.n_classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.standardize(x))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=-1)

    def config(self) -> dict:
        return {"task": self.task, "arch": self.arch, "n_features": self.n_features,
                "n_outputs": self.n_outputs, "hidden": list(self.hidden)}


class MLPRegressor(_FactoryModel):
    """Standardize -> [Linear -> ReLU]* -> Linear(1) -> TargetScale: one prediction per row, in the target's unit."""

    task = "regression"
    arch = "mlp"

    def __init__(
        self,
        n_features: int,
        hidden: tuple[int, ...] = (64, 32),
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
        y_mean: float = 0.0,
        y_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.n_features = int(n_features)
        self.n_outputs = 1
        self.hidden = tuple(int(h) for h in hidden)
        self.standardize = Standardize(*_stats(self.n_features, mean, std))
        self.body = _mlp_body(self.n_features, self.hidden, 1)
        self.target = TargetScale(y_mean, y_std)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.standardize(x))

    def config(self) -> dict:
        return {"task": self.task, "arch": self.arch, "n_features": self.n_features,
                "n_outputs": 1, "hidden": list(self.hidden)}


class CNN1D(_FactoryModel):
    """A small 1D-CNN over multichannel windows given as flat, channel-major rows.

    Standardize (on the flat row) -> reshape to [batch, C, T] -> one block per
    entry of ``channels``: Conv1d(kernel_size, same padding) -> ReLU, with
    MaxPool1d(2) between blocks while the sequence is long enough -> global
    average pooling over time -> Linear head -> Softmax (classification) or
    TargetScale (regression). Input and output are those of the MLPs, so the
    serving contract does not change.
    """

    arch = "cnn1d"

    def __init__(
        self,
        task: str,
        window_shape: tuple[int, int],
        n_outputs: int,
        channels: tuple[int, ...] = (16, 32),
        kernel_size: int = 5,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
        y_mean: float = 0.0,
        y_std: float = 1.0,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise TrainingError(f"unknown task {task!r}; use one of {TASKS}")
        c, t = (int(v) for v in window_shape)
        if c < 1 or t < 1:
            raise TrainingError(f"window_shape must be (channels, steps) with positive sizes, got {window_shape}")
        self.task = task
        self.n_channels, self.n_steps = c, t
        self.n_features = c * t
        self.n_outputs = 1 if task == "regression" else int(n_outputs)
        if task == "classification":
            self.n_classes = self.n_outputs
        self.channels = tuple(int(w) for w in channels)
        self.kernel_size = int(kernel_size)
        self.standardize = Standardize(*_stats(self.n_features, mean, std))
        layers: list[nn.Module] = []
        width, length = c, t
        for i, ch in enumerate(self.channels):
            layers += [nn.Conv1d(width, ch, self.kernel_size, padding=self.kernel_size // 2), nn.ReLU()]
            width = ch
            length = length + 2 * (self.kernel_size // 2) - self.kernel_size + 1
            if i < len(self.channels) - 1 and length >= 4:
                layers.append(nn.MaxPool1d(2))
                length //= 2
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(width, self.n_outputs)
        if task == "regression":
            self.target = TargetScale(y_mean, y_std)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        z = self.standardize(x).reshape(-1, self.n_channels, self.n_steps)
        z = self.pool(self.features(z)).flatten(1)
        return self.head(z)

    def config(self) -> dict:
        return {"task": self.task, "arch": self.arch, "n_features": self.n_features, "n_outputs": self.n_outputs,
                "window_shape": [self.n_channels, self.n_steps], "channels": list(self.channels),
                "kernel_size": self.kernel_size}


def build_model(
    task: str,
    n_features: int,
    n_outputs: int,
    *,
    arch: str = "mlp",
    window_shape: tuple[int, int] | None = None,
    hidden: tuple[int, ...] = (64, 32),
    channels: tuple[int, ...] = (16, 32),
    kernel_size: int = 5,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    y_mean: float = 0.0,
    y_std: float = 1.0,
) -> nn.Module:
    """The one model factory: an MLP or 1D-CNN classifier or regressor.

    ``n_outputs`` is the number of classes (classification) or 1 (regression).
    ``arch="cnn1d"`` needs ``window_shape = (channels, steps)`` with
    ``channels * steps == n_features`` (rows are stored flat, channel-major).
    ``mean``/``std`` (length ``n_features``) are the input standardization and
    ``y_mean``/``y_std`` the regression target's (see :func:`standardization_stats`).
    """
    if task not in TASKS:
        raise TrainingError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if arch not in ARCHS:
        raise TrainingError(f"unknown architecture {arch!r}; use one of {', '.join(ARCHS)}")
    if task == "regression" and int(n_outputs) != 1:
        raise TrainingError(f"a regression model has 1 output, not {n_outputs}")
    if task == "classification" and int(n_outputs) < 2:
        raise TrainingError(f"a classifier needs at least 2 classes, got {n_outputs}")
    for name, arr in (("mean", mean), ("std", std)):
        if arr is not None and np.asarray(arr).size != n_features:
            raise TrainingError(f"{name} has {np.asarray(arr).size} values for {n_features} features")
    if arch == "cnn1d":
        if window_shape is None:
            raise TrainingError("arch='cnn1d' needs window_shape=(channels, steps); the dataset has none")
        c, t = (int(v) for v in window_shape)
        if c * t != n_features:
            raise TrainingError(f"window_shape {tuple(window_shape)} covers {c * t} values, the rows have {n_features}")
        return CNN1D(task, (c, t), n_outputs, channels, kernel_size, mean, std, y_mean, y_std)
    if task == "classification":
        return MLPClassifier(n_features, n_outputs, hidden, mean, std)
    return MLPRegressor(n_features, hidden, mean, std, y_mean, y_std)


def model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """An untrained model with the architecture described by ``model.config()`` (load weights into it)."""
    return build_model(config["task"], int(config["n_features"]), int(config["n_outputs"]),
                       arch=config.get("arch", "mlp"), window_shape=config.get("window_shape"),
                       hidden=tuple(config.get("hidden", (64, 32))), channels=tuple(config.get("channels", (16, 32))),
                       kernel_size=int(config.get("kernel_size", 5)))


def save_model(model: nn.Module, path: str | Path) -> Path:
    """Save architecture and weights (standardization included) so :func:`load_model` can rebuild it.

    Only tensors and plain values are stored: ``torch.load(weights_only=True)`` reads it.
    """
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": "edgeloop.model.v1", "config": model.config(), "state_dict": state}, path)
    return path


def load_model(path: str | Path) -> nn.Module:
    """The model :func:`save_model` wrote, in eval mode on the CPU."""
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
        model = model_from_config(blob["config"])
        model.load_state_dict(blob["state_dict"])
    except (OSError, KeyError, RuntimeError, TypeError) as exc:
        raise TrainingError(f"cannot load the model saved at {path}: {type(exc).__name__}: {exc}") from exc
    return model.eval()


def standardization_stats(
    X: np.ndarray, window_shape: tuple[int, int] | None = None, *, per: str = "feature"
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (float32, one per column) of the training rows ``X``.

    ``per="channel"`` pools each sensor channel of a window dataset over all
    its time steps (rows stored flat, channel-major) and repeats the channel's
    statistics over its steps, so the graph's standardization stays a plain
    per-column ``(x - mean) / std``.
    """
    X = np.asarray(X, dtype=np.float64)
    if per == "channel":
        if window_shape is None:
            raise TrainingError("per-channel standardization needs a window_shape (channels, steps)")
        c, t = (int(v) for v in window_shape)
        W = X.reshape(X.shape[0], c, t)
        mean = np.repeat(W.mean(axis=(0, 2)), t)
        std = np.repeat(W.std(axis=(0, 2)), t)
    elif per == "feature":
        mean, std = X.mean(axis=0), X.std(axis=0)
    else:
        raise TrainingError(f"standardize per {per!r}; use 'feature' or 'channel'")
    return mean.astype(np.float32), std.astype(np.float32)


@dataclass
class TrainResult:
    """A trained model (eval mode, on CPU) and everything a run record needs."""

    model: nn.Module
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
            "feature_names": list(self.feature_names),
            "labels": list(self.labels),
            "task": self.task,
            "window_shape": list(self.window_shape) if self.window_shape else None,
            "model_config": self.model.config() if hasattr(self.model, "config") else None,
            "samples_per_s": self.samples_per_s,
        }


# --------------------------------------------------------------------------
# metrics (no sklearn in hub code)
# --------------------------------------------------------------------------


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``cm[i, j]`` = rows of true class ``i`` predicted as class ``j``."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in truth or prediction.

    A class that is predicted but never true (or vice versa) scores 0, like
    scikit-learn's ``f1_score(average="macro", zero_division=0)``.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    present = (support + predicted) > 0
    if not present.any():
        return 0.0
    denom = support + predicted  # 2TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[present].mean())


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``{"mae", "rmse", "r2"}`` (R² = 1 - SSE/SST, like scikit-learn; 0.0 when the truth is constant)."""
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.size == 0 or t.size != p.size:
        raise TrainingError(f"regression metrics need equally long non-empty arrays, got {t.size} and {p.size}")
    err = p - t
    sst = float(np.sum((t - t.mean()) ** 2))
    sse = float(np.sum(err ** 2))
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err ** 2))),
        "r2": float(1.0 - sse / sst) if sst > 0 else 0.0,
    }


# --------------------------------------------------------------------------
# data checks and splits
# --------------------------------------------------------------------------

_CLASS_RULES = {"too_few_classes", "too_few_class_rows", "bad_label_index"}


def _task(dataset: Dataset) -> str:
    task = getattr(dataset, "task", "classification") or "classification"
    if task not in TASKS:
        raise TrainingError(f"dataset task {task!r} is not supported; use one of {', '.join(TASKS)}")
    return task


def _window_shape(dataset: Dataset) -> tuple[int, int] | None:
    ws = getattr(dataset, "window_shape", None)
    if ws is None:
        return None
    try:
        c, t = (int(v) for v in ws)
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"dataset window_shape {ws!r} is not (channels, steps)") from exc
    if c < 1 or t < 1 or c * t != dataset.n_features:
        raise TrainingError(f"dataset window_shape {(c, t)} does not cover its {dataset.n_features} columns")
    return c, t


def _validate(dataset: Dataset, task: str) -> None:
    """:func:`hub.data.validate_dataset`, plus the target checks regression needs.

    A ``hub.data`` that predates regression datasets reports class rules for a
    regression target (or cannot count its classes); those are not data
    problems and are skipped, every other finding is raised.
    """
    if task == "classification":
        validate_dataset(dataset)
        return
    checked_features = False
    try:
        validate_dataset(dataset)
        checked_features = True
    except DataValidationError as exc:
        real = [p for p in exc.problems if getattr(p, "rule", None) not in _CLASS_RULES]
        if len(real) == len(exc.problems):
            raise
        if real:
            raise DataValidationError(
                "\n".join(line for line in str(exc).splitlines() if not any(r in line for r in _CLASS_RULES)),
                real) from exc
        checked_features = True
    except (TypeError, ValueError, AttributeError):  # an older validator cannot count a float target's classes
        pass
    X = np.asarray(dataset.X)
    y = np.asarray(dataset.y)
    problems = []
    if not checked_features and not np.isfinite(X).all():
        r, c = (int(v) for v in np.argwhere(~np.isfinite(X))[0])
        problems.append(f"line {r + 2}, column {dataset.feature_names[c]!r}: the value is {X[r, c]}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        problems.append(f"the target must be 1-D with {X.shape[0]} values, got shape {y.shape}")
    elif not np.isfinite(y.astype(np.float64)).all():
        r = int(np.argwhere(~np.isfinite(y.astype(np.float64)))[0][0])
        problems.append(f"line {r + 2}: the target value is {y[r]}")
    elif y.size and np.all(y == y[0]):
        problems.append(f"every target value is {y[0]:g}; there is nothing to learn")
    if X.shape[0] < MIN_ROWS:
        problems.append(f"{X.shape[0]} data row(s); at least {MIN_ROWS} are needed")
    if problems:
        raise DataValidationError(f"{getattr(dataset, 'source', '') or 'dataset'} is not valid regression data: "
                                  + "; ".join(problems) + ". Fix the data and load it again; nothing was trained.")


def dataset_task(dataset: Dataset) -> str:
    """``dataset.task`` (``"classification"`` when the dataset has none), checked."""
    return _task(dataset)


def dataset_window_shape(dataset: Dataset) -> tuple[int, int] | None:
    """``dataset.window_shape`` as ``(channels, steps)`` checked against the column count, or None."""
    return _window_shape(dataset)


def _check_splits(dataset: Dataset, splits: Splits) -> None:
    for name in ("train", "val", "test"):
        idx = getattr(splits, name)
        if idx.size == 0:
            raise TrainingError(f"the {name} split is empty; use more rows or other split fractions")
        if idx.min() < 0 or idx.max() >= dataset.n_rows:
            raise TrainingError(
                f"the {name} split refers to rows outside the dataset ({dataset.n_rows} rows); "
                "split this dataset again with split_dataset()"
            )


def make_splits(dataset: Dataset, seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> Splits:
    """:func:`hub.data.split_dataset`, also for regression datasets.

    Classification splits are stratified by class. For a regression dataset
    whose ``hub.data`` cannot split it (no classes to stratify by), the rows
    are permuted with ``numpy.random.default_rng(seed)`` and cut by ``fractions``.
    """
    if _task(dataset) == "classification":
        return split_dataset(dataset, seed, fractions)
    try:
        splits = split_dataset(dataset, seed, fractions)
        if splits.train.size and splits.val.size and splits.test.size:
            return splits
    except (DataValidationError, TypeError, ValueError, AttributeError):
        pass
    n = dataset.n_rows
    idx = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * fractions[1]))
    n_test = max(1, round(n * fractions[2]))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise TrainingError(f"{n} rows cannot be split into train/val/test")
    parts = (idx[:n_train], idx[n_train:n_train + n_val], idx[n_train + n_val:])
    train, val, test = (np.sort(p).astype(np.int64) for p in parts)
    fr = tuple(float(f) for f in fractions)
    try:
        return Splits(train, val, test, int(seed), fr, stratified=False)  # type: ignore[arg-type, call-arg]
    except TypeError:  # a hub.data whose Splits has no ``stratified`` field
        return Splits(train, val, test, int(seed), fr)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# replay and EWC
# --------------------------------------------------------------------------


def reservoir_sample(items: np.ndarray | int, k: int, seed: int) -> np.ndarray:
    """A uniform random sample of ``k`` of ``items`` in one pass (Vitter's Algorithm R), seeded.

    ``items`` is an array (e.g. the parent's training row indices) or a count
    ``n`` meaning ``arange(n)``. The first ``k`` items fill the reservoir; item
    ``i >= k`` replaces slot ``j ~ U{0..i}`` when ``j < k``. So a stream can be
    sampled without knowing its length, every item ends up in the sample with
    probability ``k / n``, and the same seed gives the same sample.
    """
    arr = np.arange(int(items)) if np.isscalar(items) else np.asarray(items)
    k = int(k)
    if k < 0:
        raise TrainingError(f"reservoir size must not be negative, got {k}")
    n = arr.shape[0]
    if k >= n:
        return arr.copy()
    reservoir = arr[:k].copy()
    if k == 0:
        return reservoir
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, np.arange(k + 1, n + 1))  # j_i ~ U{0..i} for i = k..n-1
    for i in np.nonzero(draws < k)[0]:  # in stream order: later items overwrite earlier ones
        reservoir[draws[i]] = arr[k + i]
    return reservoir


@dataclass
class ReplayData:
    """Rows of earlier data mixed into every training epoch (experience replay)."""

    X: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        self.X = np.ascontiguousarray(self.X, dtype=np.float32)
        self.y = np.ascontiguousarray(self.y)
        if self.X.ndim != 2 or self.y.shape != (self.X.shape[0],):
            raise TrainingError(f"replay rows must be X (n, F) with y (n,), got {self.X.shape} and {self.y.shape}")

    def __len__(self) -> int:
        return int(self.X.shape[0])


class _RawOf(nn.Module):
    """``forward`` = the wrapped model's ``raw`` (for torch.func calls)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m.raw(x)


class EWCPenalty:
    """Elastic weight consolidation (Kirkpatrick et al. 2017), diagonal Fisher.

    ``penalty(model) = lambda / 2 * sum_i F_i * (theta_i - theta*_i)^2`` with
    ``theta*`` the parent's parameters and ``F`` the diagonal of the empirical
    Fisher information: the mean over parent training rows of the squared
    per-row gradient of the negative log-likelihood (cross-entropy for
    classification; squared error on the standardized target, i.e. a
    unit-variance Gaussian, for regression).
    """

    def __init__(self, anchors: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor], lam: float) -> None:
        if not (lam >= 0 and math.isfinite(lam)):
            raise TrainingError(f"ewc_lambda must be a non-negative number, got {lam}")
        self.anchors = anchors
        self.fisher = fisher
        self.lam = float(lam)

    @classmethod
    def from_data(cls, model: nn.Module, X: np.ndarray, y: np.ndarray, lam: float, *,
                  max_rows: int = 1000, seed: int = 0, chunk: int = 256) -> EWCPenalty:
        """Fisher diagonal of ``model`` on (a seeded sample of at most ``max_rows`` of) ``X``, ``y``."""
        m = copy.deepcopy(model).cpu().eval()
        idx = reservoir_sample(len(X), max_rows, seed)
        Xs = torch.from_numpy(np.ascontiguousarray(X[idx], dtype=np.float32))
        task = m.task
        if task == "classification":
            ys = torch.from_numpy(np.asarray(y[idx], dtype=np.int64))
        else:
            scale = m.target
            ys = (torch.from_numpy(np.asarray(y[idx], dtype=np.float32)) - scale.mean[0, 0]) / scale.std[0, 0]
        wrapper = _RawOf(m)
        params = {k: v.detach() for k, v in wrapper.named_parameters()}
        buffers = {k: v.detach() for k, v in wrapper.named_buffers()}

        def loss_one(p, x, t):
            out = torch.func.functional_call(wrapper, (p, buffers), (x.unsqueeze(0),))
            if task == "classification":
                return F.cross_entropy(out, t.unsqueeze(0))
            return 0.5 * (out[0, 0] - t) ** 2

        per_row = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))
        fisher = {k: torch.zeros_like(v) for k, v in params.items()}
        with torch.no_grad():
            for s in range(0, Xs.shape[0], chunk):
                grads = per_row(params, Xs[s:s + chunk], ys[s:s + chunk])
                for k, g in grads.items():
                    fisher[k] += (g ** 2).sum(dim=0)
        n = max(1, Xs.shape[0])
        strip = len("m.")
        return cls({k[strip:]: v.clone() for k, v in params.items()},
                   {k[strip:]: v / n for k, v in fisher.items()}, lam)

    def to(self, device: torch.device) -> EWCPenalty:
        return EWCPenalty({k: v.to(device) for k, v in self.anchors.items()},
                          {k: v.to(device) for k, v in self.fisher.items()}, self.lam)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        total = None
        for name, p in model.named_parameters():
            if name in self.fisher:
                term = (self.fisher[name] * (p - self.anchors[name]) ** 2).sum()
                total = term if total is None else total + term
        if total is None:
            raise TrainingError("EWC penalty: the model shares no parameters with the parent")
        return 0.5 * self.lam * total


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------


def _pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@torch.no_grad()
def _raw_outputs(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.raw(X[s:s + _EVAL_BATCH]) for s in range(0, X.shape[0], _EVAL_BATCH)])


@torch.no_grad()
def _evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> tuple[float, np.ndarray]:
    """Mean loss (as trained) and predictions (class indices, or values in the target's unit)."""
    raw = _raw_outputs(model, X)
    if model.task == "classification":
        return float(F.cross_entropy(raw, y).item()), raw.argmax(dim=1).cpu().numpy()
    t = model.target
    loss = F.mse_loss(raw[:, 0], (y - t.mean[0, 0]) / t.std[0, 0]).item()
    return float(loss), model.output(raw)[:, 0].cpu().numpy()


def _check_init_model(model: nn.Module, dataset: Dataset, task: str) -> None:
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
    init_model: nn.Module | None = None,
    replay: ReplayData | tuple[np.ndarray, np.ndarray] | None = None,
    ewc: EWCPenalty | None = None,
) -> TrainResult:
    """Train the model ``params`` describes on ``dataset`` (classification or regression).

    The model comes from :func:`build_model` (``params.arch``; a CNN takes its
    ``(channels, steps)`` from ``dataset.window_shape``) with the
    standardization statistics of the training rows, or is a copy of
    ``init_model`` (fine-tuning: its standardization and target scale are kept).
    Loss: cross-entropy on the logits, or mean squared error on the
    standardized target; AdamW. ``replay`` rows are added to every epoch's
    training rows (shuffled together); ``ewc`` adds its penalty to the loss.

    After each epoch the validation loss is computed; the weights of the best
    epoch are restored at the end, and training stops once ``params.patience``
    epochs pass without improvement. Progress is reported once per epoch
    (stage ``"train"``, ``done`` = epoch, ``total`` = ``params.epochs``) and
    ``cancel`` is checked before every batch (raising
    :class:`hub.errors.CancelledError`).

    Metrics: classification -- test/val accuracy, test macro-F1, confusion
    matrix, losses; regression -- test/val MAE, RMSE, R², losses. ``history``
    holds one row per epoch (train/val loss and val accuracy, or val MAE/RMSE).

    Runs are bitwise repeatable on CPU for a fixed ``params.seed``: the global
    RNG state is forked (the caller's is left untouched), shuffling uses its own
    generator, and the thread count and the deterministic-algorithms flag are
    set for the call and restored afterwards. Uses CUDA when available. (The
    first call in a process spends ~2 s importing torch's compiler stack.)
    """
    params = params or TrainParams()
    progress = progress or null_progress
    task = _task(dataset)
    _validate(dataset, task)
    _check_splits(dataset, splits)
    window_shape = _window_shape(dataset)
    if init_model is not None:
        _check_init_model(init_model, dataset, task)
    if replay is not None and not isinstance(replay, ReplayData):
        replay = ReplayData(*replay)
    if replay is not None and replay.X.shape[1] != dataset.n_features:
        raise TrainingError(f"replay rows have {replay.X.shape[1]} features, the dataset {dataset.n_features}")

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
                          init_model, replay, ewc)
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
    if _task(dataset) != "classification":
        raise TrainingError("train_classifier needs a classification dataset; use train_model for regression")
    return train_model(dataset, splits, params, progress=progress, cancel=cancel)


def _new_model(dataset: Dataset, X_train: np.ndarray, y_train: np.ndarray, params: TrainParams, task: str,
               window_shape: tuple[int, int] | None) -> nn.Module:
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
    init_model: nn.Module | None,
    replay: ReplayData | None,
    ewc: EWCPenalty | None,
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
    X_te, y_te = tensors(dataset.X[splits.test], dataset.y[splits.test])
    y_val_np, y_test_np = np.asarray(dataset.y[splits.val]), np.asarray(dataset.y[splits.test])
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
        progress(ProgressEvent("train", epoch, params.epochs,
                               f"epoch {epoch}/{params.epochs}", {k: v for k, v in row.items() if k != "epoch"}))
        if stale >= params.patience:
            break

    stopped_early = len(history) < params.epochs
    if stopped_early:
        progress(ProgressEvent("train", params.epochs, params.epochs,
                               f"stopped early after epoch {len(history)}: no better validation loss "
                               f"for {params.patience} epochs; using epoch {best_epoch}", {}))
    model.load_state_dict(best_state)
    model.eval()

    val_loss, val_pred = _evaluate(model, X_va, y_va)
    test_loss, test_pred = _evaluate(model, X_te, y_te)
    if regression:
        te, va = regression_metrics(y_test_np, test_pred), regression_metrics(y_val_np, val_pred)
        metrics: dict[str, Any] = {
            "test_mae": te["mae"], "test_rmse": te["rmse"], "test_r2": te["r2"], "test_loss": test_loss,
            "val_mae": va["mae"], "val_rmse": va["rmse"], "val_r2": va["r2"], "val_loss": val_loss,
        }
    else:
        cm = confusion_matrix(y_test_np, test_pred, dataset.n_classes)
        metrics = {
            "test_accuracy": float((test_pred == y_test_np).mean()),
            "test_macro_f1": macro_f1(cm),
            "test_loss": test_loss,
            "confusion_matrix": cm.tolist(),
            "val_accuracy": float((val_pred == y_val_np).mean()),
            "val_loss": val_loss,
        }
    metrics.update(best_epoch=best_epoch, epochs_run=len(history))
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


# --------------------------------------------------------------------------
# continual learning
# --------------------------------------------------------------------------


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

    @property
    def forgetting(self) -> float:
        return self.parent_before - self.parent_after

    @property
    def model(self) -> nn.Module:
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
        }

    def to_dict(self) -> dict:
        return {**self.train.to_dict(), "continual": self.summary()}


@torch.no_grad()
def _score(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    """Accuracy (classification) or R² (regression) of a CPU model on rows ``X``."""
    m = model.cpu().eval()
    out = _raw_outputs(m, torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)))
    if m.task == "classification":
        return float((out.argmax(dim=1).numpy() == np.asarray(y)).mean())
    return regression_metrics(y, m.output(out)[:, 0].numpy())["r2"]


def fine_tune(
    parent_model: nn.Module,
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
    """
    params = params or TrainParams()
    seed = params.seed if seed is None else int(seed)
    params = dataclasses.replace(params, seed=seed)
    task = _task(new_data)
    if _task(parent_data) != task or getattr(parent_model, "task", None) != task:
        raise TrainingError(f"cannot fine-tune: parent model/data task and new data task ({task}) differ")
    if list(parent_data.feature_names) != list(new_data.feature_names):
        raise TrainingError("cannot fine-tune: the new data's feature names differ from the parent's "
                            f"({new_data.feature_names[:5]}... vs {parent_data.feature_names[:5]}...)")
    if task == "classification" and list(parent_data.labels) != list(new_data.labels):
        raise TrainingError(f"cannot fine-tune: the new data's classes {new_data.labels} differ from the "
                            f"parent's {parent_data.labels}; give both datasets the same label list")
    if replay_size < 0:
        raise TrainingError(f"replay_size must not be negative, got {replay_size}")
    _check_splits(parent_data, parent_splits)
    new_splits = new_splits if new_splits is not None else make_splits(new_data, seed)

    parent = copy.deepcopy(parent_model).cpu().eval()
    Xp_test, yp_test = parent_data.X[parent_splits.test], parent_data.y[parent_splits.test]
    Xn_test, yn_test = new_data.X[new_splits.test], new_data.y[new_splits.test]
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
                         init_model=parent, replay=replay, ewc=ewc)
    out = ContinualResult(
        train=result, metric="accuracy" if task == "classification" else "r2",
        parent_before=parent_before, parent_after=_score(result.model, Xp_test, yp_test),
        new_before=new_before, new_after=_score(result.model, Xn_test, yn_test),
        replay_rows=len(replay) if replay is not None else 0, ewc_lambda=float(ewc_lambda), seed=seed,
        new_splits=new_splits,
    )
    result.metrics["continual"] = out.summary()
    result.metrics["forgetting"] = out.forgetting
    return out


# --------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that determine a model's numbers (None = not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "numpy", "onnx", "onnxruntime"):
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except Exception:
            out[name] = None
    return out


def code_version() -> str:
    """The edgeloop code that ran: ``git describe`` of this checkout, else the package version.

    Only a git work tree whose top level is the directory holding ``hub/`` counts,
    so an installed copy inside some other repository is not misreported. Git is
    run with ``--no-optional-locks`` so it never writes the index.
    """
    root = Path(__file__).resolve().parents[2]
    try:
        top = _git(root, "rev-parse", "--show-toplevel")
        if top and Path(top).resolve() == root:
            described = _git(root, "describe", "--always", "--dirty", "--tags")
            if described:
                return described
    except (OSError, subprocess.SubprocessError):
        pass
    from edgeloop.hub import __version__

    return f"edgeloop-{__version__}"


def _git(cwd: Path, *args: str) -> str | None:
    proc = subprocess.run(
        ["git", "--no-optional-locks", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None
