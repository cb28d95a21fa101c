"""Drift references, built on the hub and read on the device (numpy only).

The hub builds a :class:`~edgeloop.agent.wire.manifest.DriftReference` from the training data
(:func:`build_reference`): per drift feature, interior bin ``edges`` from quantiles, the reference
``counts`` over the bins ``(-inf, e0], (e0, e1], ..., (e_last, +inf)``, mean, std, min and max. For
tables a drift feature is an input column. For sensor windows (``ch{c}_t{t}``, ``C x T`` values per
row) it is a per-channel *window summary* (:class:`~edgeloop.agent.wire.manifest.WindowLayout`): each
row's ``mean``, ``std``, ``min``, ``max`` and ``energy`` (mean of squares) of the channel, plus
``values`` -- the channel's samples pooled into one histogram -- named ``ch0.mean`` ...
(:func:`window_summaries`, the same code on the hub and on the device). For regression the reference
also holds the histogram of the model's predictions (``output``). The reference carries the agents'
default window policy (rows, seconds, minimum rows, consecutive windows); see
:mod:`edgeloop.agent.drift` for the monitor that uses it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from edgeloop.agent.drift_stats import bin_counts, quantile_edges
from edgeloop.agent.errors import EdgeloopError
from edgeloop.agent.wire.manifest import (
    DRIFT_SUMMARIES,
    REFERENCE_FORMAT,
    DriftReference,
    FeatureReference,
    WindowLayout,
)

DEFAULT_ALPHA = 0.01  # chance per drift window that unshifted data flags any feature at all (before PSI and KS floors)
RECOMMENDED_REFERENCE_ROWS = 200  # fewer reference rows still give no false alarms, only less power
DEFAULT_WINDOW_SECONDS = 3600.0  # a window also closes an hour after its first row (quiet devices still report)
DEFAULT_CONSECUTIVE = 2  # flagged windows in a row before a feature is reported drifted
ROWS_PER_BIN = 10  # a small reference gets fewer bins: at least this many reference rows per bin


class DriftReferenceError(EdgeloopError):
    """The data given to :func:`build_reference` cannot make a drift reference."""

    code = "bad_drift_reference"


# --- names ------------------------------------------------------------------------------------
_DIGITS = re.compile(r"(\d+)")
_STEP_COLUMN = re.compile(r"(ch\d+)_t\d+")


def natural_key(name: str) -> tuple:
    """Sort key that orders the numbers in a name by value: ``ch0_t2`` before ``ch0_t14``, ``ch2`` before ``ch10``."""
    parts = _DIGITS.split(name)
    return tuple(int(t) if i % 2 else t.lower() for i, t in enumerate(parts))


def feature_group(name: str) -> str:
    """The channel a drift feature belongs to (``ch0.mean`` -> ``ch0``; a per-step ``ch0_t14`` of an
    older reference -> ``ch0``); a table feature is its own group."""
    head, dot, tail = name.rpartition(".")
    if dot and head and tail in DRIFT_SUMMARIES:
        return head
    m = _STEP_COLUMN.fullmatch(name)
    return m.group(1) if m else name


# --- window summaries (the same code on the hub and on the device) -------------------------------
def window_layout(channels: int, steps: int, channel_names: Sequence[str] | None = None,
                  summaries: Sequence[str] = DRIFT_SUMMARIES) -> WindowLayout:
    """The :class:`WindowLayout` of ``channels x steps`` windows (channel names default to ``ch{c}``)."""
    names = [str(n) for n in channel_names] if channel_names else [f"ch{c}" for c in range(channels)]
    if channels <= 0 or steps <= 0 or len(names) != channels or len(set(names)) != channels:
        raise DriftReferenceError(f"a window layout needs channels, steps > 0 and {channels} distinct channel "
                                  f"names, got channels={channels}, steps={steps}, names={names}")
    unknown = [x for x in summaries if x not in DRIFT_SUMMARIES]
    if unknown or not summaries:
        raise DriftReferenceError(f"window summaries {unknown or '[]'} are not among {list(DRIFT_SUMMARIES)}")
    return WindowLayout(channels=int(channels), steps=int(steps), channel_names=names, summaries=list(summaries))


def window_summaries(X: np.ndarray, layout: WindowLayout) -> np.ndarray:
    """Per row, the layout's summaries channel by channel: an (n, channels * len(summaries)) array.

    ``X`` is (n, channels * steps), channel-major. A ``values`` column holds the channel's mean
    (its histogram is taken from the pooled samples, see :func:`pooled_values`). Summaries are
    rounded to float32, so a device whose float64 arithmetic differs in the last bits from the
    hub's still puts a value in the same bin (a constant channel's mean is its value exactly);
    the ``std`` of a row whose channel is constant is exactly 0.
    """
    X = np.asarray(X, dtype=np.float64)
    W = X.reshape(X.shape[0], layout.channels, layout.steps)
    need = set(layout.summaries)
    stats: dict[str, np.ndarray] = {}
    if need & {"mean", "values"}:
        stats["mean"] = stats["values"] = W.mean(axis=2)
    if need & {"min", "std"}:
        stats["min"] = W.min(axis=2)
    if need & {"max", "std"}:
        stats["max"] = W.max(axis=2)
    if "std" in need:
        std = W.std(axis=2)
        std[stats["min"] == stats["max"]] = 0.0
        stats["std"] = std
    if "energy" in need:
        stats["energy"] = np.mean(W * W, axis=2)
    cols = [stats[s][:, c] for c in range(layout.channels) for s in layout.summaries]
    out = np.column_stack(cols) if cols else np.zeros((X.shape[0], 0))
    return out.astype(np.float32).astype(np.float64)


def pooled_values(X: np.ndarray, layout: WindowLayout, channel: int) -> np.ndarray:
    """The samples of ``channel`` in every row of ``X``: an (n, steps) view."""
    t = layout.steps
    return np.asarray(X, dtype=np.float64)[:, channel * t:(channel + 1) * t]


def reference_bins(rows: int, n_bins: int) -> int:
    """Bins for a reference of ``rows`` rows: ``n_bins``, fewer on small references (``ROWS_PER_BIN``), at least 2."""
    return max(2, min(int(n_bins), int(rows) // ROWS_PER_BIN))


# --- building a reference (hub side, numpy only) ------------------------------------------
def build_reference(
    X: np.ndarray,
    feature_names: Sequence[str],
    *,
    n_bins: int = 20,
    labels: Sequence[str] = (),
    predicted: np.ndarray | None = None,
    window: int = 200,
    min_rows: int = 100,
    psi_threshold: float = 0.2,
    ks_threshold: float = 0.15,
    alpha: float = DEFAULT_ALPHA,
    layout: WindowLayout | None = None,
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
    consecutive: int = DEFAULT_CONSECUTIVE,
) -> DriftReference:
    """Drift reference of the rows ``X`` (n, f): quantile edges, counts, mean and std per drift feature.

    Without ``layout`` the drift features are the columns (``feature_names``); with a
    :class:`WindowLayout` (see :func:`window_layout`) they are the per-channel window summaries
    (:func:`window_summaries`; ``values`` bins every sample of the channel). Use every row the
    model was trained and validated on: the statistics account for the reference size ``N`` (the
    two-sample KS test and the PSI cutoff both use ``1/N + 1/M``), so a small reference gives no
    more false alarms, only less power -- below ``RECOMMENDED_REFERENCE_ROWS`` (200) rows only
    large shifts are flagged, and a reference of ``N`` rows gets ``min(n_bins, N // 10)`` bins.

    ``predicted`` are the model's predicted class indices on ``X``; with ``labels`` they give the
    reference class shares for output drift. Without labels (regression) ``predicted`` are the
    model's predicted values on ``X``: their histogram becomes the reference's ``output``, so the
    agent judges output drift too. ``alpha`` is the false-alarm rate per drift window shared by all
    features. ``window``, ``window_seconds``, ``min_rows`` and ``consecutive`` are the defaults of
    the agents' :class:`WindowPolicy` (an agent config's ``[drift]`` overrides them).
    """
    X = np.asarray(X, dtype=np.float64)
    names = list(feature_names)
    if X.ndim != 2 or X.shape[0] == 0:
        raise DriftReferenceError(f"reference data must be a non-empty 2-D array (rows, features), got shape {X.shape}")
    if X.shape[1] != len(names):
        raise DriftReferenceError(f"reference data has {X.shape[1]} columns but {len(names)} feature names were given")
    if not 0 < min_rows <= window:
        raise DriftReferenceError(f"need 0 < min_rows <= window, got min_rows={min_rows}, window={window}")
    if not 0.0 < alpha < 1.0:
        raise DriftReferenceError(f"alpha is a false-alarm rate per window in (0, 1), got {alpha}")
    if window_seconds < 0 or consecutive < 1:
        raise DriftReferenceError(f"need window_seconds >= 0 and consecutive >= 1, got {window_seconds}, {consecutive}")
    rows = X.shape[0]
    nb = reference_bins(rows, n_bins)
    if layout is None:
        columns = [(name, X[:, j]) for j, name in enumerate(names)]
    else:
        if layout.channels * layout.steps != X.shape[1]:
            raise DriftReferenceError(f"window layout {layout.channels} x {layout.steps} does not cover the "
                                      f"{X.shape[1]} columns of the reference data")
        if not np.isfinite(X).all():
            raise DriftReferenceError("window reference data must be finite; drop or repair rows with NaN/inf")
        S = window_summaries(X, layout)
        columns = [(name, pooled_values(X, layout, src) if src is not None else S[:, j])
                   for j, (name, src) in enumerate(zip(layout.feature_names(), layout_sources(layout), strict=True))]
    features = [_feature_reference(name, col, nb) for name, col in columns]
    ref = DriftReference(features=features, window=int(window), min_rows=int(min_rows),
                         psi_threshold=float(psi_threshold), ks_threshold=float(ks_threshold),
                         format=REFERENCE_FORMAT, rows=int(rows), alpha=float(alpha), layout=layout,
                         window_seconds=float(window_seconds), consecutive=int(consecutive))
    if labels:
        ref.output_labels = [str(x) for x in labels]
        if predicted is not None:
            ref.output_shares = _class_shares(predicted, len(labels), X.shape[0])
    elif predicted is not None:  # regression: the predictions' histogram
        pred = np.asarray(predicted, dtype=np.float64).ravel()
        if pred.size != rows:
            raise DriftReferenceError(f"predicted has {pred.size} values for {rows} reference rows")
        ref.output = _feature_reference("prediction", pred, nb)
    return ref


def _feature_reference(name: str, col: np.ndarray, n_bins: int) -> FeatureReference:
    finite = col[np.isfinite(col)]
    if finite.size == 0:
        raise DriftReferenceError(f"feature {name!r} has no finite values in the reference data")
    edges = quantile_edges(finite, n_bins)
    return FeatureReference(name=name, edges=edges, counts=[int(c) for c in bin_counts(finite, edges)],
                            mean=float(finite.mean()), std=float(finite.std()),
                            min=float(finite.min()), max=float(finite.max()))


def layout_sources(layout: WindowLayout) -> list[int | None]:
    """Per drift feature of ``layout``: the channel whose pooled samples it bins (``values``), else ``None``."""
    return [c if s == "values" else None for c in range(layout.channels) for s in layout.summaries]


def _class_shares(predicted: np.ndarray, n_classes: int, n_rows: int) -> list[float]:
    pred = np.asarray(predicted).ravel()
    if pred.size != n_rows:
        raise DriftReferenceError(f"predicted has {pred.size} entries for {n_rows} reference rows")
    if not np.issubdtype(pred.dtype, np.integer) or pred.min() < 0 or pred.max() >= n_classes:
        raise DriftReferenceError(f"predicted must hold class indices in 0..{n_classes - 1}")
    counts = np.bincount(pred.astype(np.int64), minlength=n_classes)
    return [float(s) for s in counts / counts.sum()]


__all__ = [
    "DEFAULT_ALPHA", "DEFAULT_CONSECUTIVE", "DEFAULT_WINDOW_SECONDS", "RECOMMENDED_REFERENCE_ROWS", "ROWS_PER_BIN",
    "DriftReferenceError", "build_reference", "feature_group", "layout_sources", "natural_key", "pooled_values",
    "reference_bins", "window_layout", "window_summaries",
]
