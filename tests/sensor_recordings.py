"""Windowed recordings with the properties of real sensors, written as the wide ``ch{c}_t{t}`` CSV layout.

Three channels of ``STEPS`` samples per window and three classes, each a pulse shape (square, triangle,
sine burst) at a random position in the window, so the class is *where-invariant*: a model must recognise
a shape, not a position (a 1-nearest-neighbour match on raw windows struggles; a 1D-CNN does not). Like
real recordings:

* channel 0 carries the pulse, with noise and a per-recording offset;
* channel 1 is sampled at half the rate and held (sample-and-hold), so columns ``ch1_t{2k}`` and
  ``ch1_t{2k+1}`` are identical in every row;
* channel 2 is a sensor stuck at a constant value (every ``ch2_t*`` column is constant);
* the training file is small and the TEST file large and separate.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

STEPS = 32
CHANNELS = 3
LABELS = ("square", "triangle", "burst")


def _pulse(kind: str, width: int) -> np.ndarray:
    t = np.arange(width)
    if kind == "square":
        return np.ones(width)
    if kind == "triangle":
        return 1.0 - np.abs(2.0 * t / (width - 1) - 1.0)
    return np.sin(2 * np.pi * 2 * t / width)  # two periods of a sine


def recordings(n: int, seed: int, *, offset: tuple[float, float, float] = (0.0, 0.0, 0.0),
               noise: float = 0.4, wander: float = 0.1) -> tuple[np.ndarray, list[str]]:
    """``n`` windows (n, CHANNELS * STEPS) channel-major, and their labels (classes in turn).

    ``offset`` shifts each channel (a drifted sensor); ``noise`` is white noise per sample and ``wander``
    the step of a slow random-walk baseline on channel 0.
    """
    rng = np.random.default_rng(seed)
    x = np.zeros((n, CHANNELS, STEPS))
    labels = []
    for i in range(n):
        kind = LABELS[i % len(LABELS)]
        width = int(rng.integers(6, 20))
        start = int(rng.integers(0, STEPS - width + 1))
        sig = np.zeros(STEPS)
        sig[start:start + width] = _pulse(kind, width) * rng.uniform(1.0, 2.5)
        baseline = np.cumsum(rng.normal(0, wander, STEPS)) + rng.normal(0, 0.3)  # wander + offset per recording
        x[i, 0] = 20.0 + sig + baseline + rng.normal(0, noise, STEPS)
        slow = 5.0 + 0.5 * sig[::2] + rng.normal(0, noise, STEPS // 2)
        x[i, 1] = np.repeat(slow, 2)  # held between samples
        x[i, 2] = 1.0  # a stuck sensor
        labels.append(kind)
    x += np.asarray(offset)[None, :, None]
    return x.reshape(n, CHANNELS * STEPS), labels


def write_csv(path: Path, x: np.ndarray, labels: list[str]) -> Path:
    names = [f"ch{c}_t{t}" for c in range(CHANNELS) for t in range(STEPS)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*names, "label"])
        for row, label in zip(x, labels, strict=True):
            w.writerow([*(f"{v:.4f}" for v in row), label])
    return path


def one_nn_accuracy(train_x: np.ndarray, train_y: list[str], test_x: np.ndarray, test_y: list[str]) -> float:
    """Accuracy of a 1-nearest-neighbour classifier (Euclidean, on per-column standardized windows)."""
    mu, sd = train_x.mean(axis=0), train_x.std(axis=0)
    sd[sd == 0] = 1.0
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    d = (b * b).sum(1)[:, None] - 2 * b @ a.T + (a * a).sum(1)[None, :]
    pred = np.asarray(train_y)[d.argmin(axis=1)]
    return float((pred == np.asarray(test_y)).mean())
