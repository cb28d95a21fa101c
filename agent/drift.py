"""Input and output drift over fixed bins, with numpy only (it runs on the device).

The hub builds a :class:`~edgeloop.agent.wire.manifest.DriftReference` from the training data
(:func:`build_reference`): per drift feature, interior bin ``edges`` from quantiles and the
reference ``counts`` over the bins ``(-inf, e0], (e0, e1], ..., (e_last, +inf)``. For tables a
drift feature is an input column. For sensor windows (``ch{c}_t{t}``, ``C x T`` values per row) it
is a per-channel *window summary* (:class:`~edgeloop.agent.wire.manifest.WindowLayout`): each
row's ``mean``, ``std``, ``min``, ``max`` and ``energy`` (mean of squares) of the channel, plus
``values`` -- the channel's samples pooled into one histogram -- named ``ch0.mean`` ...
(:func:`window_summaries`, the same code on the hub and on the device). Hundreds of per-step
features from a few dozen rows flagged half of all features on unshifted recordings; a few
summaries per channel, tested together, do not. Building references lives in
:mod:`edgeloop.agent.drift_reference` (its names are re-exported here).

On the device, :class:`DriftMonitor` counts served rows over the same bins in tumbling windows,
closed by row count or time (:class:`WindowPolicy`), and, for each closed window, emits a
:class:`~edgeloop.agent.wire.messages.DriftReport` carrying the raw window counts (histograms
over fixed edges merge by addition, so the hub can aggregate across devices and time and
recompute any statistic) plus PSI, binned KS, its p-value and drift flags. The flag accounts for
the window size (PSI is biased upward on small windows, see :func:`psi_cutoff`) and for the number
of features tested together (Holm's correction of the KS p-values at the reference's ``alpha`` per
window); a feature is reported drifted after ``consecutive`` flagged windows; see :class:`DriftMonitor`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgeloop.agent.drift_reference import (
    DEFAULT_ALPHA,
    DEFAULT_CONSECUTIVE,
    DEFAULT_WINDOW_SECONDS,
    RECOMMENDED_REFERENCE_ROWS,
    DriftReferenceError,
    build_reference,
    feature_group,
    layout_sources,
    natural_key,
    pooled_values,
    reference_bins,
    window_layout,
    window_summaries,
)
from edgeloop.agent.drift_stats import (
    PSI_CONFIDENCE,
    PSI_EPS,
    bin_counts,
    chi2_quantile,
    holm_reject,
    js_distance,
    ks_binned,
    ks_pvalue,
    psi,
    psi_cutoff,
    quantile_edges,
)
from edgeloop.agent.errors import BundleFormatError, EdgeloopError, InputShapeError, InputValueError
from edgeloop.agent.performance_estimate import WindowSums, estimate
from edgeloop.agent.wire.manifest import DRIFT_SUMMARIES, DriftReference, FeatureReference, WindowLayout
from edgeloop.agent.wire.messages import DriftReport, FeatureDrift
from edgeloop.agent.wire.performance import PerformanceEstimate, PerformanceReference


# --- the on-device monitor ------------------------------------------------------------------
class DriftConfigError(EdgeloopError):
    """A drift window setting (agent config ``[drift]`` or the reference's defaults) is out of range."""

    code = "bad_drift_config"


@dataclass(frozen=True)
class WindowPolicy:
    """When a drift window closes and when its verdict counts.

    A window closes after ``rows`` rows or ``seconds`` after its first row (0: by rows only),
    whichever comes first. A window closed with fewer than ``min_rows`` rows is reported with
    status ``too_few_rows`` (its counts, not judged). A feature is reported ``drifted`` once it
    was flagged in ``consecutive`` judged windows in a row.
    """

    rows: int
    seconds: float
    min_rows: int
    consecutive: int

    @classmethod
    def of(cls, ref: DriftReference, *, rows: int | None = None, seconds: float | None = None,
           min_rows: int | None = None, consecutive: int | None = None) -> WindowPolicy:
        """The reference's defaults (the hub's), each overridden where given (the agent config's ``[drift]``).

        ``min_rows`` above ``rows`` is lowered to ``rows`` (a full window is always judged).
        """
        r = int(rows if rows is not None else ref.window)
        s = float(seconds if seconds is not None else ref.window_seconds)
        m = int(min_rows if min_rows is not None else ref.min_rows)
        k = int(consecutive if consecutive is not None else ref.consecutive)
        if r < 1 or s < 0 or m < 1 or k < 1:
            raise DriftConfigError(f"drift windows need rows >= 1, seconds >= 0, min_rows >= 1 and consecutive >= 1, "
                                   f"got rows={r}, seconds={s}, min_rows={m}, consecutive={k}; fix [drift] in the "
                                   "agent config")
        return cls(rows=r, seconds=s, min_rows=min(m, r), consecutive=k)


@dataclass
class _Window:
    """Counts of the window being filled (the last bin of each feature's counts: missing values)."""

    counts: list[np.ndarray]
    sums: np.ndarray
    finite: np.ndarray
    out_of_range: np.ndarray
    outputs: np.ndarray  # class counts (classification) or prediction bins + missing (regression)
    output_sum: float = 0.0  # regression: sum of the finite predictions ...
    output_out_of_range: int = 0  # ... and how many lie beyond the reference's range
    rows: int = 0
    started_at: float | None = None

    @classmethod
    def empty(cls, bins: list[_FeatureBins], n_outputs: int) -> _Window:
        k = len(bins)
        return cls(counts=[np.zeros(b.edges.size + 2, dtype=np.int64) for b in bins],
                   sums=np.zeros(k), finite=np.zeros(k, dtype=np.int64), out_of_range=np.zeros(k, dtype=np.int64),
                   outputs=np.zeros(n_outputs, dtype=np.int64))


@dataclass
class _FeatureBins:
    edges: np.ndarray
    ref_counts: np.ndarray
    n_ref: int  # reference rows (not samples: a pooled ``values`` feature has steps samples per row)
    channel: int | None = None  # ``values`` features: the channel whose samples are binned
    per_row: int = 1  # values binned per row (``values``: the steps)
    lo: float = -math.inf  # reference range; beyond it a value counts as out of range
    hi: float = math.inf
    cutoffs: dict[int, float] = field(default_factory=dict)  # window rows -> PSI cutoff
    ref_cdf: np.ndarray = field(init=False)  # the reference side of ks_binned and psi, computed once
    ref_eps: np.ndarray = field(init=False)
    ref_log: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        p = self.ref_counts / self.ref_counts.sum()
        self.ref_cdf = np.cumsum(p)
        self.ref_eps = np.maximum(p, PSI_EPS)
        self.ref_log = np.log(self.ref_eps)


class DriftMonitor:
    """Tumbling-window drift monitor of one served model. Thread-safe.

    Rows arrive through :meth:`observe`. A window closes after ``policy.rows`` rows (a large
    batch is split exactly at window boundaries) or, with ``policy.seconds`` > 0, that long after
    its first row -- on the next :meth:`observe` or :meth:`tick` (the agent ticks twice a second,
    so a window closes on time even when no request follows) -- whichever comes first, and
    produces a :class:`DriftReport` numbered 1, 2, 3... (``closed_by`` ``rows``, ``time`` or
    ``flush``). A window of fewer than ``policy.min_rows`` rows gets status ``too_few_rows``: its
    raw counts are reported (the hub aggregates them) but nothing in it is judged. With a window
    layout in the reference, each row is first reduced to its per-channel summaries
    (:func:`window_summaries`), the drift features.

    **Drift rule.** Of the ``K`` drift features tested in a judged window of ``M`` rows (``N``
    reference rows), feature ``j`` is ``flagged`` when all three hold:

    * its binned KS distance's p-value (:func:`ks_pvalue`, ``n = N*M/(N+M)``) is
      rejected by Holm's procedure at ``reference.alpha`` over all ``K`` p-values
      (:func:`holm_reject`): under no drift, at most ``alpha`` of windows flag
      anything, however many features there are;
    * ``PSI > max(reference.psi_threshold, chi2_{1 - alpha/K, B-1} * (1/N + 1/M))``
      (:func:`psi_cutoff`): above the configured threshold *and* above what
      ``K`` drift-free features reach by chance on windows of this size;
    * binned ``KS > reference.ks_threshold``: a shift of probability mass big
      enough to matter (on large windows a p-value flags tiny differences).

    and ``drifted`` once it was flagged in ``policy.consecutive`` judged windows in a row
    (``streak``). For a pooled ``values`` feature ``M`` and ``N`` count rows, not samples
    (samples of one row are not independent), which keeps the test conservative. A format-1
    reference (one feature per column, written by older hubs) is judged by the same rule.

    Per feature the window also counts ``missing`` (non-finite) values, which are not binned,
    and ``out_of_range`` values (beyond the reference's min and max, where the reference has them).

    Output drift. Classification: predicted class counts of the window and their Jensen-Shannon
    distance (base 2) to the reference class shares, reported, not flagged (class shares move
    with the world). Regression (a reference with an ``output`` histogram): the predictions are
    binned and judged like one more feature, on their own (``alpha``, not shared with the inputs),
    as the report's ``output``.

    Accuracy without labels. With a ``performance`` reference (a calibrated classifier's manifest)
    and class probabilities given as ``predicted`` (rows x classes), each window also carries its
    estimated accuracy (:mod:`edgeloop.agent.performance_estimate`) as the report's ``performance``,
    flagged only in judged windows; feedback labels (:meth:`record_labels`) add the realized accuracy.
    """

    def __init__(
        self,
        reference: DriftReference,
        *,
        agent_id: str,
        model: str,
        version: str,
        bundle_sha256: str,
        policy: WindowPolicy | None = None,
        clock: Callable[[], float] = time.time,
        performance: PerformanceReference | None = None,
    ) -> None:
        self.reference = reference
        self.policy = policy if policy is not None else WindowPolicy.of(reference)
        self.agent_id = agent_id
        self.model = model
        self.version = version
        self.bundle_sha256 = bundle_sha256
        self._clock = clock
        self._layout = _check_layout(reference)
        sources = layout_sources(self._layout) if self._layout is not None else [None] * len(reference.features)
        steps = self._layout.steps if self._layout is not None else 1
        self._bins = [_feature_bins(f, reference, src, steps) for f, src in zip(reference.features, sources,
                                                                                strict=True)]
        self._ref_shares = _reference_shares(reference)
        self._out = _feature_bins(reference.output, reference, None, 1) if reference.output is not None else None
        self._n_outputs = self._out.edges.size + 2 if self._out is not None else len(reference.output_labels)
        self._confidence = 1.0 - reference.alpha / max(1, len(self._bins))
        self._lo = np.array([b.lo for b in self._bins])
        self._hi = np.array([b.hi for b in self._bins])
        self._streak = np.zeros(len(self._bins), dtype=np.int64)
        self._out_streak = 0
        self._lock = threading.Lock()
        self._win = _Window.empty(self._bins, self._n_outputs)
        self._number = 0
        # a classifier's performance reference (regression and label mismatches: no estimate)
        ok = performance is not None and reference.output is None and (
            not reference.output_labels or performance.labels == list(reference.output_labels))
        self.performance = performance if ok else None
        self._sums = WindowSums(len(performance.labels)) if ok and performance is not None else None

    @property
    def estimates(self) -> bool:
        """Whether windows carry an accuracy estimate (then give class probabilities as ``predicted``)."""
        return self._sums is not None

    def record_labels(self, correct: int, labelled: int) -> None:
        """Feedback labels arrived: ``correct`` of ``labelled`` equal the model's answer (the open window's)."""
        with self._lock:
            if self._sums is not None:
                self._sums.add_labels(correct, labelled)

    @property
    def n_features(self) -> int:
        """Values per served row (the model's input features)."""
        lay = self._layout
        return lay.channels * lay.steps if lay is not None else len(self._bins)

    @property
    def pending_rows(self) -> int:
        """Rows in the window being filled."""
        with self._lock:
            return self._win.rows

    @property
    def windows_emitted(self) -> int:
        with self._lock:
            return self._number

    def now(self) -> float:
        """The monitor's clock (window start and end times)."""
        return float(self._clock())

    def observe(self, X: np.ndarray, predicted: np.ndarray | None = None, *,
                at: float | None = None) -> list[DriftReport]:
        """Add served rows ``X`` (n, f) and the model's answers; return the windows that closed.

        ``predicted``: class indices (classification) or predicted values (regression). Non-finite
        values are counted as missing, not binned. A window whose time was up when the rows arrived
        (``at``, default now) closes before they are added.
        """
        X = self._check_rows(X)
        n = X.shape[0]
        probs = None
        if predicted is not None and self._out is None and np.ndim(predicted) == 2:  # class probabilities
            probs = np.asarray(predicted, dtype=np.float64)
            predicted = probs.argmax(axis=1) if probs.shape[0] else np.zeros(0, dtype=np.int64)
        pred = self._check_predicted(predicted, n)
        if n == 0:
            return []
        V = window_summaries(X, self._layout) if self._layout is not None else X  # one value per row and feature
        finite = bool(np.isfinite(X).all())
        idx = [self._bin_index(self._binned(X, V, j, b), b, finite) for j, b in enumerate(self._bins)]
        out_idx = self._bin_index(pred, self._out, False) if self._out is not None and pred is not None else pred
        oor = self._out_of_range(X, V)
        reports = []
        with self._lock:
            if self._due(float(self._clock()) if at is None else at):
                reports.append(self._close_window("time"))
            start = 0
            while start < n:
                take = min(self.policy.rows - self._win.rows, n - start)
                self._add(V, idx, out_idx, oor, pred if self._out is not None else None, start, start + take)
                if probs is not None and self._sums is not None:
                    self._sums.add(probs[start:start + take])
                start += take
                if self._win.rows >= self.policy.rows:
                    reports.append(self._close_window("rows"))
        return reports

    def tick(self) -> DriftReport | None:
        """Close the window if its time is up (``policy.seconds`` after its first row); else None."""
        with self._lock:
            return self._close_window("time") if self._due(float(self._clock())) else None

    def seconds_left(self) -> float | None:
        """Seconds until the open window's time is up; None when it is empty or windows close by rows only."""
        with self._lock:
            w = self._win
            if not self.policy.seconds or w.rows == 0 or w.started_at is None:
                return None
            return max(0.0, w.started_at + self.policy.seconds - float(self._clock()))

    def flush(self) -> DriftReport | None:
        """Close the partial window if it has at least ``policy.min_rows`` rows.

        With fewer rows nothing is emitted and the rows stay for the next window.
        """
        with self._lock:
            if self._win.rows < self.policy.min_rows:
                return None
            return self._close_window("flush")

    def _binned(self, X: np.ndarray, V: np.ndarray, j: int, b: _FeatureBins) -> np.ndarray:
        """What feature ``j`` bins: its column of ``V``, or for ``values`` the channel's samples (n, steps)."""
        if self._layout is not None and b.channel is not None:
            return pooled_values(X, self._layout, b.channel)
        return V[:, j]

    @staticmethod
    def _bin_index(values: np.ndarray, b: _FeatureBins, finite: bool) -> np.ndarray:
        """Bin of each value; non-finite values go to the extra last bin (missing). ``finite``: known finite."""
        idx = np.searchsorted(b.edges, values, side="left")
        if finite:
            return idx
        bad = ~np.isfinite(values)
        if bad.any():
            idx[bad] = b.edges.size + 1
        return idx

    def _out_of_range(self, X: np.ndarray, V: np.ndarray) -> np.ndarray:
        """Per row and feature: values beyond the reference's range (n, K)."""
        if self._layout is None:
            return ((V < self._lo) | (V > self._hi)).astype(np.int64)
        oor = ((V < self._lo) | (V > self._hi)).astype(np.int64)
        for j, b in enumerate(self._bins):
            if b.channel is not None:
                s = pooled_values(X, self._layout, b.channel)
                oor[:, j] = ((s < b.lo) | (s > b.hi)).sum(axis=1)
        return oor

    # --- internals (called with the lock held) -----------------------------------------------
    def _due(self, now: float) -> bool:
        w = self._win
        return bool(self.policy.seconds and w.rows and w.started_at is not None
                    and now - w.started_at >= self.policy.seconds)

    def _add(self, V: np.ndarray, idx: list[np.ndarray], pred: np.ndarray | None, oor: np.ndarray,
             values: np.ndarray | None, lo: int, hi: int) -> None:
        w = self._win
        if w.rows == 0:
            w.started_at = float(self._clock())
        for j, b in enumerate(self._bins):
            w.counts[j] += np.bincount(idx[j][lo:hi].ravel(), minlength=b.edges.size + 2)
        part = V[lo:hi]
        ok = np.isfinite(part)
        w.sums += np.where(ok, part, 0.0).sum(axis=0)
        w.finite += ok.sum(axis=0)
        w.out_of_range += oor[lo:hi].sum(axis=0)
        if pred is not None and w.outputs.size:
            w.outputs += np.bincount(pred[lo:hi], minlength=w.outputs.size)[: w.outputs.size]
        if values is not None and self._out is not None:
            v = values[lo:hi]
            w.output_sum += float(v[np.isfinite(v)].sum())
            w.output_out_of_range += int(((v < self._out.lo) | (v > self._out.hi)).sum())
        w.rows += hi - lo

    def _judge(self, b: _FeatureBins, counts: np.ndarray) -> tuple[float, float, float, float, int]:
        """PSI, KS, its p-value, the PSI cutoff and the rows of one feature's window counts (no missing)."""
        total = int(counts.sum())
        m = total // b.per_row
        if m <= 0:
            return 0.0, 0.0, 1.0, math.inf, 0
        # psi() and ks_binned() with the reference side computed once (the same numbers, see tests)
        q = counts / total
        k = float(min(1.0, np.max(np.abs(b.ref_cdf - np.cumsum(q)))))
        qe = np.maximum(q, PSI_EPS)
        p = float(max(0.0, np.sum((qe - b.ref_eps) * (np.log(qe) - b.ref_log))))
        cutoff = b.cutoffs.get(m)
        if cutoff is None:
            cutoff = b.cutoffs.setdefault(m, psi_cutoff(self.reference.psi_threshold, b.ref_counts.size, b.n_ref, m,
                                                        confidence=self._confidence))
        return p, k, ks_pvalue(k, b.n_ref * m / (b.n_ref + m)), cutoff, m

    def _close_window(self, closed_by: str) -> DriftReport:
        w = self._win
        self._number += 1
        ref, policy = self.reference, self.policy
        judged = w.rows >= policy.min_rows
        stats = [self._judge(b, w.counts[j][:-1]) for j, b in enumerate(self._bins)]
        rejected = holm_reject([s[2] for s in stats], ref.alpha) if stats and judged else [False] * len(stats)
        features = []
        for j, fref in enumerate(ref.features):
            p, k, pv, cutoff, _ = stats[j]
            flagged = bool(judged and rejected[j] and k > ref.ks_threshold and p > cutoff)
            if judged:
                self._streak[j] = self._streak[j] + 1 if flagged else 0
            features.append(FeatureDrift(
                name=fref.name, counts=[int(c) for c in w.counts[j][:-1]], psi=_finite(p), ks=_finite(k),
                mean=_finite(w.sums[j] / w.finite[j]) if w.finite[j] else 0.0, p_value=_finite(pv),
                drifted=bool(judged and flagged and self._streak[j] >= policy.consecutive),
                flagged=flagged, streak=int(self._streak[j]), missing=int(w.counts[j][-1]),
                out_of_range=int(w.out_of_range[j]),
            ))
        output_counts = [int(c) for c in w.outputs] if self._out is None else []
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
            output_js=output_js, alpha=float(ref.alpha),
            status="ok" if judged else "too_few_rows", closed_by=closed_by, min_rows=policy.min_rows,
            consecutive=policy.consecutive, output=self._output_drift(w, judged),
            performance=self._estimate(judged),
        )
        self._win = _Window.empty(self._bins, self._n_outputs)
        return report

    def _estimate(self, judged: bool) -> PerformanceEstimate | None:
        """The window's accuracy estimate (flagged only when judged); the sums start again."""
        sums, ref = self._sums, self.performance
        if sums is None or ref is None:
            return None
        est = estimate(sums, ref)
        self._sums = WindowSums(sums.n_classes)
        if est is not None and not judged:
            est.flagged = False
        return est

    def _output_drift(self, w: _Window, judged: bool) -> FeatureDrift | None:
        """Regression: the window's prediction histogram judged alone (KS at ``alpha``, PSI and KS floors)."""
        b = self._out
        if b is None or w.outputs[:-1].sum() == 0:
            return None
        counts = w.outputs[:-1]
        p, k, pv, _, m = self._judge(b, counts)
        cutoff = psi_cutoff(self.reference.psi_threshold, b.ref_counts.size, b.n_ref, m,
                            confidence=1.0 - self.reference.alpha)
        flagged = bool(judged and pv <= self.reference.alpha and k > self.reference.ks_threshold and p > cutoff)
        if judged:
            self._out_streak = self._out_streak + 1 if flagged else 0
        mean = w.output_sum / float(counts.sum())
        return FeatureDrift(name="prediction", counts=[int(c) for c in counts], psi=_finite(p), ks=_finite(k),
                            mean=_finite(mean), p_value=_finite(pv),
                            drifted=bool(flagged and self._out_streak >= self.policy.consecutive), flagged=flagged,
                            streak=self._out_streak, missing=int(w.outputs[-1]),
                            out_of_range=w.output_out_of_range)

    def _check_rows(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1 and X.size == self.n_features:
            X = X.reshape(1, -1)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise InputShapeError(
                f"drift monitor expects rows of {self.n_features} features, got an array of shape {X.shape}")
        return X

    def _check_predicted(self, predicted: np.ndarray | None, n: int) -> np.ndarray | None:
        if predicted is None:
            return None
        pred = np.asarray(predicted).ravel()
        if pred.size != n:
            raise InputShapeError(f"drift monitor got {pred.size} predicted values for {n} rows")
        if self._out is not None:  # regression: predicted values
            return pred.astype(np.float64, copy=False)
        if pred.size and not np.issubdtype(pred.dtype, np.integer):
            raise InputValueError("predicted classes must be integer class indices")
        pred = pred.astype(np.int64, copy=False)
        if pred.size and pred.min() < 0:
            raise InputValueError("predicted class indices must not be negative")
        return pred


def _check_layout(ref: DriftReference) -> WindowLayout | None:
    lay = ref.layout
    if lay is None:
        return None
    if [f.name for f in ref.features] != lay.feature_names():
        raise BundleFormatError("drift reference features are not its window layout's channel summaries in order; "
                                "rebuild the bundle")
    unknown = [s for s in lay.summaries if s not in DRIFT_SUMMARIES]
    if unknown:
        raise BundleFormatError(f"drift reference uses window summaries {unknown} this agent does not compute; "
                                "upgrade the agent")
    return lay


def _feature_bins(f: FeatureReference, ref: DriftReference, channel: int | None, steps: int) -> _FeatureBins:
    edges = np.asarray(f.edges, dtype=np.float64)
    counts = np.asarray(f.counts, dtype=np.float64)
    if counts.size != edges.size + 1:
        raise BundleFormatError(
            f"drift reference of feature {f.name!r} has {counts.size} counts for {edges.size} edges "
            "(needs len(edges)+1); rebuild the bundle")
    if (counts < 0).any() or counts.sum() <= 0:
        raise BundleFormatError(
            f"drift reference of feature {f.name!r} has no reference rows in its counts; rebuild the bundle")
    n_ref = ref.rows if ref.rows > 0 else int(counts.sum())  # format 1: one count per row
    lo = f.min if f.min is not None else -math.inf
    hi = f.max if f.max is not None else math.inf
    return _FeatureBins(edges=edges, ref_counts=counts, n_ref=int(n_ref), channel=channel,
                        per_row=steps if channel is not None else 1, lo=float(lo), hi=float(hi))


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
    "DEFAULT_ALPHA", "DEFAULT_CONSECUTIVE", "DEFAULT_WINDOW_SECONDS", "PSI_CONFIDENCE", "PSI_EPS",
    "RECOMMENDED_REFERENCE_ROWS", "DriftConfigError", "DriftMonitor", "DriftReferenceError", "WindowPolicy",
    "layout_sources",
    "bin_counts", "build_reference", "chi2_quantile", "feature_group", "holm_reject", "js_distance", "ks_binned",
    "ks_pvalue", "natural_key", "pooled_values", "psi", "psi_cutoff", "quantile_edges", "reference_bins",
    "window_layout", "window_summaries",
]
