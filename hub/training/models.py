"""The model factory's PyTorch models, with their preprocessing inside.

Every model carries its own standardization (:class:`Standardize` with the
training mean/std as buffers) and its own output transform (softmax for
classification, :class:`TargetScale` with the training target's scale for
regression), so the exported ONNX graph takes raw sensor values and returns
what the agent serves; there is no separate scaler to ship.

* :class:`MLPClassifier` / :class:`MLPRegressor` -- Standardize -> [Linear -> ReLU]* -> Linear;
* :class:`CNN1D` -- for multichannel sensor windows stored flat, channel-major
  (``x[:, c * T + t]``): Standardize -> reshape [batch, C, T] -> [Conv1d -> ReLU (-> MaxPool)]*
  -> global average pooling -> Linear.

:func:`build_model` is the one factory; :func:`save_model` / :func:`load_model`
store and rebuild a model (architecture and weights).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeloop.hub.errors import TrainingError
from edgeloop.hub.training.params import ARCHS, TASKS

__all__ = [
    "CNN1D",
    "FactoryModel",
    "MLPClassifier",
    "MLPRegressor",
    "Standardize",
    "TargetScale",
    "build_model",
    "load_model",
    "model_bytes",
    "model_from_config",
    "save_model",
    "standardization_stats",
]


class Standardize(nn.Module):
    """``(x - mean) / std`` with the statistics stored as buffers (saved and exported with the model)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        std_t = torch.as_tensor(np.asarray(std, dtype=np.float32))
        # standardization_stats gives a constant column std 1; this only guards
        # against tiny spreads blowing up the inputs.
        std_t = torch.clamp(std_t, min=1e-6)
        self.register_buffer("mean", mean_t.reshape(1, -1).clone())
        self.register_buffer("std", std_t.reshape(1, -1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TargetScale(nn.Module):
    """``z * std + mean``: maps a regressor's standardized output back to the target's unit."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([[float(mean)]], dtype=torch.float32))
        self.register_buffer("std", torch.tensor([[max(float(std), 1e-6)]], dtype=torch.float32))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean


class FactoryModel(nn.Module):
    """Common interface: ``raw`` (what the loss sees) and ``forward`` (what is exported and served)."""

    task: str = "classification"
    arch: str = "mlp"
    n_features: int
    n_outputs: int
    standardize: Standardize
    target: TargetScale  # regression models only

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


def _stats(n: int, mean: np.ndarray | None, std: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    return (np.zeros(n, np.float32) if mean is None else mean, np.ones(n, np.float32) if std is None else std)


class MLPClassifier(FactoryModel):
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


class MLPRegressor(FactoryModel):
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


class CNN1D(FactoryModel):
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
) -> FactoryModel:
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


def model_from_config(config: Mapping[str, Any]) -> FactoryModel:
    """An untrained model with the architecture described by ``model.config()`` (load weights into it)."""
    return build_model(config["task"], int(config["n_features"]), int(config["n_outputs"]),
                       arch=config.get("arch", "mlp"), window_shape=config.get("window_shape"),
                       hidden=tuple(config.get("hidden", (64, 32))), channels=tuple(config.get("channels", (16, 32))),
                       kernel_size=int(config.get("kernel_size", 5)))


def _saved_form(model: FactoryModel) -> dict[str, Any]:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"format": "edgeloop.model.v1", "config": model.config(), "state_dict": state}


def save_model(model: FactoryModel, path: str | Path) -> Path:
    """Save architecture and weights (standardization included) so :func:`load_model` can rebuild it.

    Only tensors and plain values are stored: ``torch.load(weights_only=True)`` reads it.
    """
    path = Path(path)
    torch.save(_saved_form(model), path)
    return path


def model_bytes(model: FactoryModel) -> bytes:
    """What :func:`save_model` stores, as bytes (for callers that write the file themselves)."""
    buf = io.BytesIO()
    torch.save(_saved_form(model), buf)
    return buf.getvalue()


def load_model(path: str | Path) -> FactoryModel:
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
    per-column ``(x - mean) / std``. A column (channel) with one value in every
    row gets std 1, not 0: it enters the model as zeros, and a different value
    met later stays a finite, unscaled offset.
    """
    X = np.asarray(X, dtype=np.float64)
    if per == "channel":
        if window_shape is None:
            raise TrainingError("per-channel standardization needs a window_shape (channels, steps)")
        c, t = (int(v) for v in window_shape)
        W = X.reshape(X.shape[0], c, t)
        mean = np.repeat(W.mean(axis=(0, 2)), t)
        std = np.repeat(W.std(axis=(0, 2)), t)
        constant = np.repeat(np.ptp(W, axis=(0, 2)) == 0, t) if X.shape[0] else np.zeros(c * t, bool)
    elif per == "feature":
        mean, std = X.mean(axis=0), X.std(axis=0)
        constant = np.ptp(X, axis=0) == 0 if X.shape[0] else np.zeros(X.shape[1], bool)
    else:
        raise TrainingError(f"standardize per {per!r}; use 'feature' or 'channel'")
    std = np.where(constant, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)

