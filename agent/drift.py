"""Input and output drift over fixed bins, with numpy only (it runs on the device).

The hub builds a :class:`~edgeloop.agent.wire.manifest.DriftReference` from the training data
(:func:`build_reference`): per feature, interior bin ``edges`` from quantiles and
the reference ``counts`` over the bins ``(-inf, e0], (e0, e1], ..., (e_last, +inf)``.
On the device, :class:`DriftMonitor` counts served rows over the same bins in
tumbling windows and, for each completed window, emits a
:class:`~edgeloop.agent.wire.messages.DriftReport` carrying the raw window counts (histograms
over fixed edges merge by addition, so the hub can aggregate across devices and
time and recompute any statistic) plus PSI, binned KS and a drift flag.

Why the flag needs two statistics and a window-aware PSI cutoff: PSI on small
windows is biased upward -- under no drift ``PSI / (1/N + 1/M)`` is roughly
chi-square with ``B - 1`` degrees of freedom -- so a fixed 0.1 or 0.2 flags
many 200-row windows drawn from the reference itself. See :func:`psi_cutoff`
and :class:`DriftMonitor`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from edgeloop.agent.errors import BundleFormatError, EdgeloopError, InputShapeError, InputValueError
from edgeloop.agent.wire.manifest import DriftReference, FeatureReference
from edgeloop.agent.wire.messages import DriftReport, FeatureDrift

PSI_EPS = 1e-4
PSI_CONFIDENCE = 0.99  # quantile of the no-drift PSI distribution used as cutoff


class DriftReferenceError(EdgeloopError):
    """The data given to :func:`build_reference` cannot make a drift reference."""

    code = "bad_drift_reference"


# --- bins ---------------------------------------------------------------------------
def quantile_edges(values: np.ndarray | Sequence[float], n_bins: int = 20) -> list[float]:
    """Interior edges of about ``n_bins`` equal-frequency bins of ``values``.

    Non-finite values are ignored. Edges are actual data values (``inverted_cdf``
    quantiles), so a discrete feature gets one bin per value instead of edges
    falling between values; ties collapse, so fewer bins may come back. An
    empty or all-NaN input gives ``[]`` (a single bin).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0 or n_bins == 1:
        return []
    qs = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    edges = np.unique(np.quantile(v, qs, method="inverted_cdf"))
    # an edge at the maximum would only open an always-empty last bin
    edges = edges[edges < v.max()] if edges.size > 1 else edges
    return [float(e) for e in edges]


def bin_counts(values: np.ndarray | Sequence[float], edges: Sequence[float]) -> np.ndarray:
    """Counts of ``values`` in the ``len(edges) + 1`` bins; NaN values are not counted."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), v, side="left")
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.int64)


# --- statistics ------------------------------------------------------------------------
def _proportions(counts: np.ndarray | Sequence[float], what: str) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64).ravel()
    total = c.sum()
    if c.size == 0 or not np.isfinite(total) or total <= 0 or (c < 0).any():
        raise ValueError(f"{what} must be non-negative with a positive total, got {c.tolist()}")
    return c / total


def _same_bins(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"reference has {a.size} bins but the window has {b.size}")


def psi(ref_counts: np.ndarray | Sequence[float], cur_counts: np.ndarray | Sequence[float],
        eps: float = PSI_EPS) -> float:
    """Population stability index ``sum((q'-p') * ln(q'/p'))`` over bin proportions.

    ``p' = max(p, eps)`` and ``q' = max(q, eps)`` keep empty bins finite (ε = 1e-4,
    as Evidently does); the result is >= 0.
    """
    p = _proportions(ref_counts, "reference counts")
    q = _proportions(cur_counts, "window counts")
    _same_bins(p, q)
    p = np.maximum(p, eps)
    q = np.maximum(q, eps)
    return float(max(0.0, np.sum((q - p) * np.log(q / p))))


def ks_binned(ref_counts: np.ndarray | Sequence[float], cur_counts: np.ndarray | Sequence[float]) -> float:
    """Kolmogorov-Smirnov distance ``max |CDF_ref - CDF_cur|`` evaluated at the bin edges.

    On shared edges this equals ``ks_2samp`` of the bin indices, a lower bound of
    the KS distance of the raw data.
    """
    p = _proportions(ref_counts, "reference counts")
    q = _proportions(cur_counts, "window counts")
    _same_bins(p, q)
    return float(min(1.0, np.max(np.abs(np.cumsum(p) - np.cumsum(q)))))


def js_distance(p: np.ndarray | Sequence[float], q: np.ndarray | Sequence[float]) -> float:
    """Jensen-Shannon distance with base-2 logs (0 = same, 1 = disjoint).

    ``p`` and ``q`` are counts or shares over the same classes; both are
    normalised first (like ``scipy.spatial.distance.jensenshannon``).
    """
    pp = _proportions(p, "first distribution")
    qq = _proportions(q, "second distribution")
    _same_bins(pp, qq)
    m = 0.5 * (pp + qq)

    def _kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    div = 0.5 * _kl(pp) + 0.5 * _kl(qq)
    return float(min(1.0, math.sqrt(max(0.0, div))))


def chi2_quantile(prob: float, df: int) -> float:
    """Quantile of the chi-square distribution without scipy.

    Exact for ``df`` 1 and 2 (``z_{(1+p)/2}^2`` and ``-2 ln(1-p)``); the
    Wilson-Hilferty cube approximation above that (within 2% of
    ``scipy.stats.chi2.ppf`` for 0.9 <= p <= 0.999).
    """
    if not 0.0 < prob < 1.0:
        raise ValueError(f"prob must be in (0, 1), got {prob}")
    if df < 1:
        raise ValueError(f"df must be at least 1, got {df}")
    if df == 1:
        return NormalDist().inv_cdf((1.0 + prob) / 2.0) ** 2
    if df == 2:
        return -2.0 * math.log1p(-prob)
    z = NormalDist().inv_cdf(prob)
    a = 2.0 / (9.0 * df)
    return df * max(0.0, 1.0 - a + z * math.sqrt(a)) ** 3


def psi_cutoff(base: float, n_bins: int, n_ref: int, n_cur: int, confidence: float = PSI_CONFIDENCE) -> float:
    """Window-size-aware PSI threshold: ``max(base, chi2_{confidence, B-1} * (1/N + 1/M))``.

    Under no drift, ``PSI / (1/N + 1/M)`` is approximately chi-square with ``B - 1``
    degrees of freedom (``N`` reference rows, ``M`` window rows, ``B`` bins), so
    the second term is the PSI that only ``1 - confidence`` of drift-free windows
    exceed. With 20 bins and 200-row windows it is about 0.2.
    """
    if n_bins < 2 or n_ref <= 0 or n_cur <= 0:
        return float(base)
    return float(max(base, chi2_quantile(confidence, n_bins - 1) * (1.0 / n_ref + 1.0 / n_cur)))


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
) -> DriftReference:
    """Drift reference of the rows ``X`` (n, f): quantile edges, counts, mean and std per feature.

    ``predicted`` are the model's predicted class indices on ``X``; with
    ``labels`` they give the reference class shares for output drift (without
    labels, as for regression, ``predicted`` is ignored). Use data
    the model was validated on (not only its training rows) for a realistic
    reference; a few thousand rows give stable edges.
    """
    X = np.asarray(X, dtype=np.float64)
    names = list(feature_names)
    if X.ndim != 2 or X.shape[0] == 0:
        raise DriftReferenceError(f"reference data must be a non-empty 2-D array (rows, features), got shape {X.shape}")
    if X.shape[1] != len(names):
        raise DriftReferenceError(f"reference data has {X.shape[1]} columns but {len(names)} feature names were given")
    if not 0 < min_rows <= window:
        raise DriftReferenceError(f"need 0 < min_rows <= window, got min_rows={min_rows}, window={window}")
    features = []
    for j, name in enumerate(names):
        col = X[:, j]
        finite = col[np.isfinite(col)]
        if finite.size == 0:
            raise DriftReferenceError(f"feature {name!r} has no finite values in the reference data")
        edges = quantile_edges(finite, n_bins)
        features.append(FeatureReference(
            name=name, edges=edges, counts=[int(c) for c in bin_counts(finite, edges)],
            mean=float(finite.mean()), std=float(finite.std()),
        ))
    ref = DriftReference(features=features, window=int(window), min_rows=int(min_rows),
                         psi_threshold=float(psi_threshold), ks_threshold=float(ks_threshold))
    if labels:  # without labels (regression) there are no classes, and ``predicted`` is ignored
        ref.output_labels = [str(x) for x in labels]
        if predicted is not None:
            ref.output_shares = _class_shares(predicted, len(labels), X.shape[0])
    return ref


def _class_shares(predicted: np.ndarray, n_classes: int, n_rows: int) -> list[float]:
    pred = np.asarray(predicted).ravel()
    if pred.size != n_rows:
        raise DriftReferenceError(f"predicted has {pred.size} entries for {n_rows} reference rows")
    if not np.issubdtype(pred.dtype, np.integer) or pred.min() < 0 or pred.max() >= n_classes:
        raise DriftReferenceError(f"predicted must hold class indices in 0..{n_classes - 1}")
    counts = np.bincount(pred.astype(np.int64), minlength=n_classes)
    return [float(s) for s in counts / counts.sum()]


# --- the on-device monitor ------------------------------------------------------------------
@dataclass
class _Window:
    """Counts of the window being filled."""

    counts: list[np.ndarray]
    sums: np.ndarray
    outputs: np.ndarray
    rows: int = 0
    started_at: float | None = None

    @classmethod
    def empty(cls, ref: DriftReference) -> _Window:
        return cls(
            counts=[np.zeros(len(f.edges) + 1, dtype=np.int64) for f in ref.features],
            sums=np.zeros(len(ref.features), dtype=np.float64),
            outputs=np.zeros(len(ref.output_labels), dtype=np.int64),
        )


@dataclass
class _FeatureBins:
    edges: np.ndarray
    ref_counts: np.ndarray
    n_ref: int
    cutoffs: dict[int, float] = field(default_factory=dict)  # window rows -> PSI cutoff


class DriftMonitor:
    """Tumbling-window drift monitor of one served model. Thread-safe.

    Rows arrive through :meth:`observe`; every ``reference.window`` rows close a
    window (a large batch is split exactly at window boundaries, so windows are
    always the same size) and produce a :class:`DriftReport` numbered 1, 2, 3...

    **Drift rule.** A feature is ``drifted`` in a window of ``M`` rows when both

    * ``PSI > psi_cutoff(reference.psi_threshold, B, N, M)``, i.e. above the
      configured threshold *and* above the 99th percentile of PSI under no drift
      (``chi2_{0.99, B-1} * (1/N + 1/M)``), and
    * binned ``KS > reference.ks_threshold``.

    Alone, PSI exceeds its cutoff in about 2-4% of drift-free 200-row windows
    (the chi-square approximation is a little optimistic at this size) and KS
    exceeds 0.15 in about 0.1% or less (N >= 1000 reference rows); requiring both
    keeps 200-row windows drawn from the reference almost never flagged, while
    a mean shift of one standard deviation (PSI ~ 1, KS ~ 0.38 for a normal
    feature) is flagged in practically every window. PSI measures how far the
    whole histogram moved; KS demands a real shift of probability mass, which
    PSI's small-sample noise in sparse bins cannot fake. (A change that keeps
    the CDF within 0.15 everywhere, e.g. a modest change of spread, shows in PSI
    and the raw counts but is not flagged.)

    Output drift (classification): predicted class counts of the window and
    their Jensen-Shannon distance (base 2) to the reference class shares.
    These are reported, not flagged: class shares move with the world.
    """

    def __init__(
        self,
        reference: DriftReference,
        *,
        agent_id: str,
        model: str,
        version: str,
        bundle_sha256: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reference = reference
        self.agent_id = agent_id
        self.model = model
        self.version = version
        self.bundle_sha256 = bundle_sha256
        self._clock = clock
        self._bins = [_feature_bins(f) for f in reference.features]
        self._ref_shares = _reference_shares(reference)
        self._lock = threading.Lock()
        self._win = _Window.empty(reference)
        self._number = 0

    @property
    def n_features(self) -> int:
        return len(self._bins)

    @property
    def pending_rows(self) -> int:
        """Rows in the window being filled."""
        with self._lock:
            return self._win.rows

    @property
    def windows_emitted(self) -> int:
        with self._lock:
            return self._number

    def observe(self, X: np.ndarray, predicted: np.ndarray | None = None) -> list[DriftReport]:
        """Add served rows ``X`` (n, f) and their predicted class indices; return completed windows.

        Rows must be finite (the serving path validates them before inference).
        """
        X = self._check_rows(X)
        n = X.shape[0]
        pred = self._check_predicted(predicted, n)
        if n == 0:
            return []
        idx = [np.searchsorted(b.edges, X[:, j], side="left") for j, b in enumerate(self._bins)]
        reports = []
        with self._lock:
            start = 0
            while start < n:
                take = min(self.reference.window - self._win.rows, n - start)
                self._add(X, idx, pred, start, start + take)
                start += take
                if self._win.rows >= self.reference.window:
                    reports.append(self._close_window())
        return reports

    def flush(self) -> DriftReport | None:
        """Close the partial window if it has at least ``reference.min_rows`` rows.

        With fewer rows nothing is emitted and the rows stay for the next window.
        """
        with self._lock:
            if self._win.rows < self.reference.min_rows:
                return None
            return self._close_window()

    # --- internals (called with the lock held) -----------------------------------------------
    def _add(self, X: np.ndarray, idx: list[np.ndarray], pred: np.ndarray | None, lo: int, hi: int) -> None:
        w = self._win
        if w.rows == 0:
            w.started_at = float(self._clock())
        for j, b in enumerate(self._bins):
            w.counts[j] += np.bincount(idx[j][lo:hi], minlength=b.edges.size + 1)
        w.sums += X[lo:hi].sum(axis=0)
        if pred is not None and w.outputs.size:
            w.outputs += np.bincount(pred[lo:hi], minlength=w.outputs.size)[: w.outputs.size]
        w.rows += hi - lo

    def _close_window(self) -> DriftReport:
        w = self._win
        self._number += 1
        ref = self.reference
        features = []
        for j, (fref, b) in enumerate(zip(ref.features, self._bins, strict=True)):
            counts = w.counts[j]
            p = psi(b.ref_counts, counts)
            k = ks_binned(b.ref_counts, counts)
            cutoff = b.cutoffs.get(w.rows)
            if cutoff is None:
                cutoff = b.cutoffs.setdefault(w.rows, psi_cutoff(ref.psi_threshold, counts.size, b.n_ref, w.rows))
            features.append(FeatureDrift(
                name=fref.name, counts=[int(c) for c in counts], psi=_finite(p), ks=_finite(k),
                mean=_finite(w.sums[j] / w.rows), drifted=bool(p > cutoff and k > ref.ks_threshold),
            ))
        output_counts = [int(c) for c in w.outputs]
        output_js = None
        if self._ref_shares is not None and sum(output_counts) > 0:
            output_js = _finite(js_distance(self._ref_shares, w.outputs))
        now = float(self._clock())
        report = DriftReport(
            agent_id=self.agent_id, model=self.model, version=self.version, bundle_sha256=self.bundle_sha256,
            window=self._number, rows=int(w.rows),
            started_at=_finite(w.started_at if w.started_at is not None else now), ended_at=_finite(now),
            psi_threshold=float(ref.psi_threshold), ks_threshold=float(ref.ks_threshold),
            features=features,
            output_counts=output_counts if sum(output_counts) > 0 else [],
            output_js=output_js,
        )
        self._win = _Window.empty(ref)
        return report

    def _check_rows(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1 and X.size == self.n_features:
            X = X.reshape(1, -1)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise InputShapeError(
                f"drift monitor expects rows of {self.n_features} features, got an array of shape {X.shape}")
        if not np.isfinite(X).all():
            raise InputValueError("drift monitor was given non-finite values; validate rows before observing them")
        return X

    def _check_predicted(self, predicted: np.ndarray | None, n: int) -> np.ndarray | None:
        if predicted is None:
            return None
        pred = np.asarray(predicted).ravel()
        if pred.size != n:
            raise InputShapeError(f"drift monitor got {pred.size} predicted classes for {n} rows")
        if pred.size and not np.issubdtype(pred.dtype, np.integer):
            raise InputValueError("predicted classes must be integer class indices")
        pred = pred.astype(np.int64, copy=False)
        if pred.size and pred.min() < 0:
            raise InputValueError("predicted class indices must not be negative")
        return pred


def _feature_bins(f: FeatureReference) -> _FeatureBins:
    edges = np.asarray(f.edges, dtype=np.float64)
    counts = np.asarray(f.counts, dtype=np.float64)
    if counts.size != edges.size + 1:
        raise BundleFormatError(
            f"drift reference of feature {f.name!r} has {counts.size} counts for {edges.size} edges "
            "(needs len(edges)+1); rebuild the bundle")
    if (counts < 0).any() or counts.sum() <= 0:
        raise BundleFormatError(
            f"drift reference of feature {f.name!r} has no reference rows in its counts; rebuild the bundle")
    return _FeatureBins(edges=edges, ref_counts=counts, n_ref=int(counts.sum()))


def _reference_shares(ref: DriftReference) -> np.ndarray | None:
    if not ref.output_shares:
        return None
    shares = np.asarray(ref.output_shares, dtype=np.float64)
    if shares.size != len(ref.output_labels):
        raise BundleFormatError(
            f"drift reference has {shares.size} output shares for {len(ref.output_labels)} labels; rebuild the bundle")
    if (shares < 0).any() or not np.isfinite(shares).all() or shares.sum() <= 0:
        raise BundleFormatError("drift reference output shares must be non-negative with a positive sum")
    return shares


def _finite(x: float) -> float:
    """A plain, JSON-safe Python float (non-finite values, which the math avoids, become 0.0)."""
    x = float(x)
    return x if math.isfinite(x) else 0.0


__all__ = [
    "DriftMonitor", "DriftReferenceError", "build_reference", "quantile_edges", "bin_counts",
    "psi", "ks_binned", "js_distance", "chi2_quantile", "psi_cutoff", "PSI_EPS",
]
