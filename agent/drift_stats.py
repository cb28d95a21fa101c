"""Drift statistics over fixed bins, with numpy only (they run on the device).

Bins (:func:`quantile_edges`, :func:`bin_counts`), the per-feature statistics (:func:`psi`,
:func:`ks_binned` and its p-value :func:`ks_pvalue`, :func:`js_distance`), the window-size-aware
PSI cutoff (:func:`psi_cutoff`) and the multiple-testing correction (:func:`holm_reject`).
:mod:`edgeloop.agent.drift` uses them; the formulas are checked against scipy in tests/test_drift.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

PSI_EPS = 1e-4
PSI_CONFIDENCE = 0.99  # quantile of the no-drift PSI distribution used as cutoff (one feature tested)


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


def ks_pvalue(d: float, n_eff: float) -> float:
    """Asymptotic two-sample KS p-value of distance ``d`` with ``n_eff = N*M/(N+M)``.

    The Kolmogorov distribution with Stephens' small-sample correction:
    ``Q(lambda) = 2 sum_k (-1)^(k-1) exp(-2 k^2 lambda^2)``, ``lambda = (sqrt(n) + 0.12 + 0.11/sqrt(n)) d``
    (equal to ``scipy.stats.kstwobign.sf(lambda)``). On binned data (ties) it is conservative.
    """
    if n_eff <= 0 or d <= 0:
        return 1.0
    en = math.sqrt(n_eff)
    lam = (en + 0.12 + 0.11 / en) * min(1.0, float(d))
    if lam < 0.2:  # the series converges slowly here and Q is 1 to 7 decimals
        return 1.0
    total, sign = 0.0, 1.0
    for k in range(1, 101):
        term = sign * math.exp(-2.0 * k * k * lam * lam)
        total += term
        if abs(term) < 1e-16 * max(total, 1e-300):
            break
        sign = -sign
    return float(min(1.0, max(0.0, 2.0 * total)))


def holm_reject(p_values: Sequence[float], alpha: float) -> list[bool]:
    """Holm's step-down rejections at family-wise error ``alpha`` over all ``p_values`` tested together.

    Sorted ascending, ``p_(i)`` is rejected while ``p_(i) <= alpha / (K - i)`` (i from 0);
    the first one kept stops it. It rejects everything Bonferroni (``p <= alpha / K``) rejects,
    and sometimes more, with the same guarantee: under no drift at all, the chance that any
    feature is rejected is at most ``alpha``, whatever the dependence between the tests.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    p = np.asarray(p_values, dtype=np.float64).ravel()
    k = p.size
    out = [False] * k
    for i, j in enumerate(np.argsort(p, kind="stable")):
        if p[j] > alpha / (k - i):
            break
        out[int(j)] = True
    return out


def chi2_quantile(prob: float, df: int) -> float:
    """Quantile of the chi-square distribution without scipy.

    Exact for ``df`` 1 and 2 (``z_{(1+p)/2}^2`` and ``-2 ln(1-p)``); the
    Wilson-Hilferty cube approximation above that (within 2% of
    ``scipy.stats.chi2.ppf`` for 0.9 <= p <= 0.999, 5% up to p = 0.99999, slightly low in the far tail).
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


__all__ = [
    "PSI_CONFIDENCE", "PSI_EPS", "bin_counts", "chi2_quantile", "holm_reject", "js_distance", "ks_binned",
    "ks_pvalue", "psi", "psi_cutoff", "quantile_edges",
]
