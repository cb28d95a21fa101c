"""The ingredients of continual learning: experience replay rows (a seeded reservoir of
earlier training rows) and the elastic weight consolidation penalty."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgeloop.hub.errors import TrainingError
from edgeloop.hub.training.models import FactoryModel

__all__ = ["EWCPenalty", "ReplayData", "reservoir_sample"]


def reservoir_sample(items: np.ndarray | int, k: int, seed: int) -> np.ndarray:
    """A uniform random sample of ``k`` of ``items`` in one pass (Vitter's Algorithm R), seeded.

    ``items`` is an array (e.g. the parent's training row indices) or a count
    ``n`` meaning ``arange(n)``. The first ``k`` items fill the reservoir; item
    ``i >= k`` replaces slot ``j ~ U{0..i}`` when ``j < k``. So a stream can be
    sampled without knowing its length, every item ends up in the sample with
    probability ``k / n``, and the same seed gives the same sample.
    """
    arr = np.asarray(items)
    if arr.ndim == 0:  # a count n: sample from arange(n)
        arr = np.arange(int(arr))
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

    m: FactoryModel

    def __init__(self, model: FactoryModel) -> None:
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
    def from_data(cls, model: FactoryModel, X: np.ndarray, y: np.ndarray, lam: float, *,
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
