"""PyTorch training of tabular classifiers, reproducible and reportable.

The model carries its own preprocessing (:class:`Standardize` with the training
mean/std as buffers) and ends in a softmax, so the exported ONNX graph takes raw
sensor values and returns probabilities: there is no separate scaler to ship,
and no way for training and serving to disagree about it.
"""

from __future__ import annotations

import copy
import importlib
import math
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import Dataset, Splits, validate_dataset
from .errors import TrainingError
from .progress import CancelToken, ProgressCallback, ProgressEvent, null_progress

__all__ = [
    "TRAIN_THREADS",
    "TrainParams",
    "TrainResult",
    "Standardize",
    "MLPClassifier",
    "train_classifier",
    "confusion_matrix",
    "macro_f1",
    "library_versions",
    "code_version",
]

# One intra-op thread: fastest for models this small (batch 64 x 64 units) and
# the same float summation order on every machine, hence bitwise-repeatable runs.
TRAIN_THREADS = 1


@dataclass
class TrainParams:
    """Hyper-parameters of :func:`train_classifier` (recorded with every run)."""

    hidden: tuple[int, ...] = (64, 32)
    epochs: int = 40
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    patience: int = 8  # epochs without a better validation loss before stopping
    seed: int = 0

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        bad = []
        if not self.hidden or any(h < 1 for h in self.hidden):
            bad.append(f"hidden={self.hidden} (need one or more positive layer widths)")
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
        if bad:
            raise TrainingError("invalid training parameters: " + "; ".join(bad) + ". Correct them and start again.")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


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


class MLPClassifier(nn.Module):
    """Standardize -> [Linear -> ReLU]* -> Linear -> Softmax.

    :meth:`forward` returns class probabilities (what is exported and served);
    :meth:`logits` returns the pre-softmax scores used by the training loss.
    """

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
        self.n_classes = int(n_classes)
        self.hidden = tuple(int(h) for h in hidden)
        self.standardize = Standardize(
            np.zeros(n_features, np.float32) if mean is None else mean,
            np.ones(n_features, np.float32) if std is None else std,
        )
        layers: list[nn.Module] = []
        width = self.n_features
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, self.n_classes))
        self.body = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.standardize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=-1)


@dataclass
class TrainResult:
    """A trained model (eval mode, on CPU) and everything a run record needs."""

    model: MLPClassifier
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    params: TrainParams
    seconds: float
    device: str
    best_epoch: int
    stopped_early: bool
    feature_names: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

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


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------


def _pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@torch.no_grad()
def _evaluate(model: MLPClassifier, X: torch.Tensor, y: torch.Tensor) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and predicted classes on one split."""
    logits = model.logits(X)
    loss = nn.functional.cross_entropy(logits, y).item()
    return float(loss), logits.argmax(dim=1).cpu().numpy()


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


def train_classifier(
    dataset: Dataset,
    splits: Splits,
    params: TrainParams | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainResult:
    """Train an :class:`MLPClassifier` with AdamW on cross-entropy, with early stopping.

    The data are validated first (:func:`hub.data.validate_dataset`); the
    standardization statistics come from the training rows only. After each
    epoch the validation loss is computed; the weights of the best epoch are
    restored at the end, and training stops once ``params.patience`` epochs
    pass without improvement. Progress is reported once per epoch (stage
    ``"train"``, ``done`` = epoch, ``total`` = ``params.epochs``) and ``cancel``
    is checked before every batch (raising :class:`hub.errors.CancelledError`).

    Runs are bitwise repeatable on CPU for a fixed ``params.seed``: the global
    RNG state is forked (the caller's is left untouched), shuffling uses its own
    generator, and the thread count and the deterministic-algorithms flag are
    set for the call and restored afterwards. (The first call in a process
    spends ~2 s importing torch's compiler stack; later calls do not.)
    """
    params = params or TrainParams()
    progress = progress or null_progress
    validate_dataset(dataset)
    _check_splits(dataset, splits)

    device = _pick_device()
    saved_threads = torch.get_num_threads()
    saved_det = torch.are_deterministic_algorithms_enabled()
    saved_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(TRAIN_THREADS)
    # Warn-only: an op without a deterministic kernel (none in this model) warns instead of failing.
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [torch.cuda.current_device()]):
            torch.manual_seed(params.seed)
            return _train(dataset, splits, params, device, progress, cancel)
    finally:
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(saved_det, warn_only=saved_warn)


def _train(
    dataset: Dataset,
    splits: Splits,
    params: TrainParams,
    device: torch.device,
    progress: ProgressCallback,
    cancel: CancelToken | None,
) -> TrainResult:
    start = time.perf_counter()
    X_train_np = dataset.X[splits.train]
    mean = X_train_np.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = X_train_np.std(axis=0, dtype=np.float64).astype(np.float32)
    model = MLPClassifier(dataset.n_features, dataset.n_classes, params.hidden, mean, std).to(device)

    def tensors(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(dataset.X[idx]).to(device), torch.from_numpy(dataset.y[idx]).to(device)

    X_tr, y_tr = tensors(splits.train)
    X_va, y_va = tensors(splits.val)
    X_te, y_te = tensors(splits.test)
    y_val_np, y_test_np = dataset.y[splits.val], dataset.y[splits.test]

    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    shuffle = torch.Generator(device="cpu").manual_seed(params.seed)
    n = X_tr.shape[0]

    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    stale = 0
    for epoch in range(1, params.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=shuffle).to(device)
        total_loss = 0.0
        for s in range(0, n, params.batch_size):
            if cancel is not None:
                cancel.raise_if_cancelled("Training")
            batch = order[s:s + params.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model.logits(X_tr[batch]), y_tr[batch])
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * batch.numel()
        train_loss = total_loss / n
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"training diverged at epoch {epoch} (loss {train_loss}); lower the learning rate (now {params.lr})"
            )

        model.eval()
        val_loss, val_pred = _evaluate(model, X_va, y_va)
        val_acc = float((val_pred == y_val_np).mean())
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_acc}
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
    cm = confusion_matrix(y_test_np, test_pred, dataset.n_classes)
    metrics = {
        "test_accuracy": float((test_pred == y_test_np).mean()),
        "test_macro_f1": macro_f1(cm),
        "test_loss": test_loss,
        "confusion_matrix": cm.tolist(),
        "val_accuracy": float((val_pred == y_val_np).mean()),
        "val_loss": val_loss,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
    }
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
    )


# --------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that determine a model's numbers (None = not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "numpy", "onnx", "onnxruntime"):
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except Exception:  # noqa: BLE001 - an absent or broken library is recorded, not fatal
            out[name] = None
    return out


def code_version() -> str:
    """The edgeloop code that ran: ``git describe`` of this checkout, else the package version.

    Only a git work tree whose top level is the directory holding ``hub/`` counts,
    so an installed copy inside some other repository is not misreported. Git is
    run with ``--no-optional-locks`` so it never writes the index.
    """
    root = Path(__file__).resolve().parent.parent
    try:
        top = _git(root, "rev-parse", "--show-toplevel")
        if top and Path(top).resolve() == root:
            described = _git(root, "describe", "--always", "--dirty", "--tags")
            if described:
                return described
    except (OSError, subprocess.SubprocessError):
        pass
    from . import __version__

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
