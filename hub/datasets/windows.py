"""Multichannel sensor windows for sequence models (1D-CNN): naming, detection, long → wide, synthetic data.

A window dataset holds one fixed-length multichannel recording per row. Its
arrays stay *flat*: ``X`` is (n_windows, C*T) in **channel-major** order --
feature ``c*T + t`` is channel ``c`` at step ``t`` and is named ``ch{c}_t{t}``
-- so ``X.reshape(n, C, T)`` gives the (batch, channels, steps) tensor a 1D-CNN
wants while the ONNX input stays ``[batch, C*T]``. ``Dataset.window_shape`` is
``(C, T)``.

Two file layouts are read (by :func:`hub.data.load_dataset`):

* **wide**: one row per window with feature columns named ``ch{c}_t{t}``, in any
  column order; detected when *every* feature column has such a name and the
  names form the complete ``C × T`` grid;
* **long**: one row per time step, ``window_id, t, ch0, ch1, …, label``. Rows are
  grouped by the window id (windows in order of first appearance), ordered by
  the optional time column ``t`` (else by file order), and the channel columns
  (any names; channel ``c`` is the ``c``-th of them) become ``ch{c}_t{t}``. Every
  window must have the same number of steps (rule ``ragged_window``), no step
  twice (``duplicate_step``) and one label throughout (``inconsistent_window_label``).
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgeloop.hub.datasets.problems import Problem

if TYPE_CHECKING:
    from edgeloop.hub.datasets.dataset import Dataset

__all__ = [
    "WINDOW_CLASS_PRIORS",
    "WINDOW_LABELS",
    "WINDOW_SAMPLE_SD",
    "detect_wide_windows",
    "generate_sensor_windows",
    "long_to_wide",
    "parse_window_column",
    "window_feature_names",
]

_WINDOW_COLUMN = re.compile(r"ch(\d+)_t(\d+)")


def window_feature_names(channels: int, steps: int) -> list[str]:
    """``ch{c}_t{t}`` in channel-major order: the feature names of a (channels, steps) window dataset."""
    return [f"ch{c}_t{t}" for c in range(channels) for t in range(steps)]


def parse_window_column(name: str) -> tuple[int, int] | None:
    """``(channel, step)`` of a ``ch{c}_t{t}`` column name, else ``None``."""
    m = _WINDOW_COLUMN.fullmatch(name.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def detect_wide_windows(names: Sequence[str]) -> tuple[tuple[int, int] | None, list[int], list[Problem]]:
    """Look for the wide window layout among feature column ``names``.

    Returns ``(window_shape, order, problems)``: ``window_shape`` is ``(C, T)`` or
    ``None`` (tabular); ``order[k]`` is the index in ``names`` of canonical
    feature ``k`` (channel-major). Problems: ``mixed_window_columns`` (some but
    not all columns are ``ch{c}_t{t}``) and ``incomplete_window_columns`` (the
    names do not form a complete C × T grid).
    """
    parsed = [parse_window_column(n) for n in names]
    hits = [i for i, p in enumerate(parsed) if p is not None]
    if not hits:
        return None, list(range(len(names))), []
    if len(hits) != len(names):
        others = [names[i] for i, p in enumerate(parsed) if p is None]
        return None, list(range(len(names))), [Problem(
            1, None, "mixed_window_columns",
            f"{len(hits)} column(s) are window samples (ch{{c}}_t{{t}}) but {len(others)} are not: "
            f"{others[:5]}{' ...' if len(others) > 5 else ''}; drop them (schema ignore_columns) or set the "
            "schema's layout to 'tabular'")]
    channels = max(p[0] for p in parsed) + 1  # type: ignore[index]
    steps = max(p[1] for p in parsed) + 1  # type: ignore[index]
    where = {p: i for i, p in enumerate(parsed)}
    missing = [f"ch{c}_t{t}" for c in range(channels) for t in range(steps) if (c, t) not in where]
    if missing or len(where) != len(names):
        detail = (f"window columns must form a complete grid of {channels} channel(s) × {steps} step(s); "
                  f"missing {len(missing)}: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
                  if missing else "two columns name the same channel and step")
        return None, list(range(len(names))), [Problem(1, None, "incomplete_window_columns", detail)]
    order = [where[(c, t)] for c in range(channels) for t in range(steps)]
    return (channels, steps), order, []


def long_to_wide(
    window_ids: Sequence[str],
    steps: Sequence[float] | None,
    values: np.ndarray,
    labels: Sequence,
    lines: Sequence[int],
    *,
    window_id_column: str,
    time_column: str | None,
    label_column: str,
    expected_steps: int | None = None,
) -> tuple[np.ndarray, list, list[int], list[Problem]]:
    """Group long-format rows into windows.

    ``values`` is (n_rows, C) with the channel columns of each row; ``labels``
    the row labels (class names or numbers); ``lines`` the rows' file lines.
    Returns ``(X, window_labels, window_lines, problems)`` with ``X`` of shape
    (n_windows, C*T) in channel-major order and each window's first line.
    """
    values = np.asarray(values, dtype=np.float32)
    groups: dict[str, list[int]] = {}
    for i, wid in enumerate(window_ids):
        groups.setdefault(wid, []).append(i)
    problems: list[Problem] = []
    if time_column is not None and steps is not None:
        for wid, rows in groups.items():
            rows.sort(key=lambda i: (steps[i], i))
            for a, b in itertools.pairwise(rows):
                if steps[a] == steps[b]:
                    problems.append(Problem(lines[b], time_column, "duplicate_step",
                                            f"window {wid!r} has step {steps[b]:g} twice (also on line {lines[a]})"))
    counts = Counter(len(rows) for rows in groups.values())
    n_steps = expected_steps if expected_steps is not None else (
        max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0] if counts else 0)
    for wid, rows in groups.items():
        if len(rows) != n_steps:
            problems.append(Problem(min(lines[i] for i in rows), window_id_column, "ragged_window",
                                    f"window {wid!r} has {len(rows)} step(s); every window needs {n_steps} "
                                    f"({'the declared window_shape' if expected_steps is not None else 'as most windows have'})"))
    for wid, rows in groups.items():
        by_line = sorted(rows, key=lambda i: lines[i])
        first = by_line[0]
        for i in by_line[1:]:
            if not _same(labels[i], labels[first]):
                problems.append(Problem(lines[i], label_column, "inconsistent_window_label",
                                        f"window {wid!r} changes its label to {labels[i]!r}; its first row "
                                        f"(line {lines[first]}) has {labels[first]!r}; a window has one label"))
                break
    n_channels = values.shape[1] if values.ndim == 2 else 0
    if problems:
        return np.zeros((0, n_channels * n_steps), np.float32), [], [], problems
    X = np.stack([values[rows].T.reshape(-1) for rows in groups.values()]) if groups else np.zeros((0, 0), np.float32)
    window_labels = [labels[min(rows, key=lambda i: lines[i])] for rows in groups.values()]
    window_lines = [min(lines[i] for i in rows) for rows in groups.values()]
    return X.astype(np.float32), window_labels, window_lines, []


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


# --------------------------------------------------------------------------
# Synthetic vibration windows
# --------------------------------------------------------------------------

WINDOW_LABELS = ["bearing_fault", "imbalance", "normal"]  # sorted, as the loaders order classes
WINDOW_CLASS_PRIORS = {"normal": 0.4, "imbalance": 0.3, "bearing_fault": 0.3}
WINDOW_NOISE_SD = 0.3
# Marginal standard deviation of one sample value of the undrifted process
# (3 channels × 32 steps, from 2*10^5 windows): the unit in which ``shift`` moves every sample.
WINDOW_SAMPLE_SD = 0.72
_RESONANCE = 0.35  # cycles per sample of the ringing a bearing impact excites


def generate_sensor_windows(n_windows: int, seed: int, *, channels: int = 3, steps: int = 32,
                            shift: float = 0.0) -> Dataset:
    """Synthetic vibration windows of a rotating machine, 3 classes, for the 1D-CNN.

    Each window is ``steps`` samples of a ``channels``-axis accelerometer
    (channels 0, 1 radial, 2 axial, repeating for more channels). Process, per
    window (``numpy.random.default_rng(seed)``):

    * condition ~ Categorical(normal 0.4, imbalance 0.3, bearing_fault 0.3);
    * shaft speed ``f`` ~ U(2, 4) revolutions per window, phase ``φ`` ~ U(0, 2π);
    * every condition has a residual once-per-revolution vibration
      ``a · g_c · sin(2π f t/steps + φ + c·π/2)`` with ``a`` ~ U(0.3, 0.9) and
      gain ``g_c`` = 1 on radial and 0.4 on axial channels;
    * **imbalance** adds a stronger sinusoid at the same frequency and phase,
      amplitude ~ U(0.5, 1.5) (times ``g_c``);
    * **bearing_fault** adds periodic impacts: every ``P`` ~ U(steps/8, steps/4)
      samples (random start) an impulse of height ~ U(1, 2.5) rings down,
      ``B · exp(-k/1.2) · cos(2π·0.35·k)`` for ``k`` samples after it, with
      gain ``1/(1 + 0.3c)`` on channel ``c``;
    * white noise N(0, 0.3) on every sample; values rounded to 0.001.

    The classes overlap at the edges (a rough normal machine vs. a mild
    imbalance, small impacts in noise), so a small 1D-CNN separates them well
    but not perfectly; there is no label noise. ``shift`` simulates sensor drift
    (a bias after remounting): every sample moves by ``shift × WINDOW_SAMPLE_SD``
    (0.72, the marginal SD of a sample without drift). Labels are sorted
    (``bearing_fault, imbalance, normal``); ``X`` is (n_windows, channels*steps),
    channel-major, and ``window_shape`` is ``(channels, steps)``.
    """
    from edgeloop.hub.datasets.dataset import Dataset  # late import: hub.data imports this module

    if n_windows < 1 or channels < 1 or steps < 2:
        raise ValueError(f"need n_windows >= 1, channels >= 1, steps >= 2; got {n_windows}, {channels}, {steps}")
    rng = np.random.default_rng(seed)
    priors = np.array([WINDOW_CLASS_PRIORS[lab] for lab in WINDOW_LABELS])
    y = rng.choice(len(WINDOW_LABELS), size=n_windows, p=priors)
    imbalance = (y == WINDOW_LABELS.index("imbalance")).astype(np.float64)
    fault = (y == WINDOW_LABELS.index("bearing_fault")).astype(np.float64)

    t = np.arange(steps, dtype=np.float64)
    c = np.arange(channels, dtype=np.float64)
    radial_gain = np.where(np.arange(channels) % 3 == 2, 0.4, 1.0)
    impact_gain = 1.0 / (1.0 + 0.3 * c)
    speed = rng.uniform(2.0, 4.0, n_windows)
    phase = rng.uniform(0.0, 2.0 * np.pi, n_windows)
    amplitude = rng.uniform(0.3, 0.9, n_windows) + imbalance * rng.uniform(0.5, 1.5, n_windows)
    angle = (2.0 * np.pi * speed[:, None, None] * t[None, None, :] / steps + phase[:, None, None]
             + c[None, :, None] * np.pi / 2.0)
    signal = amplitude[:, None, None] * radial_gain[None, :, None] * np.sin(angle)

    period = rng.uniform(steps / 8.0, steps / 4.0, n_windows)
    start = rng.uniform(0.0, 1.0, n_windows) * period
    height = rng.uniform(1.0, 2.5, n_windows)
    since = np.mod(t[None, :] - start[:, None], period[:, None])  # samples since the last impact
    since = np.where(t[None, :] >= start[:, None], since, np.inf)  # nothing before the first impact
    ringing = np.exp(-since / 1.2) * np.cos(2.0 * np.pi * _RESONANCE * np.where(np.isfinite(since), since, 0.0))
    ringing = np.where(np.isfinite(since), ringing, 0.0)
    signal += (fault * height)[:, None, None] * impact_gain[None, :, None] * ringing[:, None, :]

    signal += rng.normal(0.0, WINDOW_NOISE_SD, signal.shape)
    signal += shift * WINDOW_SAMPLE_SD
    X = np.round(signal, 3).reshape(n_windows, channels * steps).astype(np.float32)
    source = f"generate_sensor_windows(n_windows={n_windows}, seed={seed}, channels={channels}, steps={steps}, shift={shift:g})"
    return Dataset(window_feature_names(channels, steps), X, y.astype(np.int64), list(WINDOW_LABELS),
                   label_column="label", source=source, window_shape=(channels, steps))
