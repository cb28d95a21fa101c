"""Drift math against hand-computed numbers and scipy, and the tumbling-window monitor."""

from __future__ import annotations

import dataclasses
import json
import math
import threading

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from edgeloop.agent.drift import (
    DriftMonitor,
    DriftReferenceError,
    bin_counts,
    build_reference,
    chi2_quantile,
    holm_reject,
    js_distance,
    ks_binned,
    ks_pvalue,
    psi,
    psi_cutoff,
    quantile_edges,
)
from edgeloop.agent.errors import BundleFormatError, InputShapeError, InputValueError
from edgeloop.agent.wire import messages
from edgeloop.agent.wire.manifest import DriftReference, FeatureReference, Manifest
from tests.onnx_models import classifier_onnx, manifest_for

NAMES = ["x_normal", "x_expo", "x_uniform", "x_discrete"]


def sample(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """Four features of different shapes; ``shift`` moves the normal one by that many std."""
    return np.column_stack([
        rng.normal(10.0, 2.0, n) + shift * 2.0,
        rng.exponential(1.5, n),
        rng.uniform(-1.0, 1.0, n),
        rng.integers(0, 5, n).astype(float),
    ])


@pytest.fixture(scope="module")
def reference() -> DriftReference:
    return build_reference(sample(np.random.default_rng(12345), 5000), NAMES)


def monitor(ref: DriftReference, clock=None) -> DriftMonitor:
    kw = {"clock": clock} if clock is not None else {}
    return DriftMonitor(ref, agent_id="pi-1", model="iris", version="3", bundle_sha256="ab" * 32, **kw)


# --- bins ----------------------------------------------------------------------------
def test_quantile_edges_are_sorted_unique_finite_and_about_n_bins():
    v = np.random.default_rng(0).normal(size=10_000)
    v[:5] = [np.nan, np.inf, -np.inf, np.nan, np.nan]
    edges = quantile_edges(v, 20)
    assert len(edges) == 19
    assert all(isinstance(e, float) and math.isfinite(e) for e in edges)
    assert edges == sorted(set(edges))
    counts = bin_counts(v[np.isfinite(v)], edges)
    assert counts.sum() == np.isfinite(v).sum()
    assert counts.min() >= 0.04 * counts.sum() and counts.max() <= 0.06 * counts.sum()  # equal-frequency


def test_quantile_edges_of_discrete_and_constant_features():
    assert quantile_edges(np.repeat([0.0, 1.0, 2.0], [50, 30, 20]), 20) == [0.0, 1.0]  # one bin per value
    assert bin_counts(np.repeat([0.0, 1.0, 2.0], [50, 30, 20]), [0.0, 1.0]).tolist() == [50, 30, 20]
    assert quantile_edges(np.full(100, 7.0)) == [7.0]
    assert quantile_edges([np.nan, np.nan]) == []


def test_bin_counts_follow_left_closed_searchsorted_convention():
    edges = [0.0, 1.0, 2.0]
    # bins: (-inf,0], (0,1], (1,2], (2,inf); a value equal to an edge falls in the bin it closes
    counts = bin_counts([-5.0, 0.0, 0.5, 1.0, 1.0000001, 2.0, 3.0, np.inf, np.nan], edges)
    assert counts.dtype == np.int64
    assert counts.tolist() == [2, 2, 2, 2]


# --- statistics ----------------------------------------------------------------------------
def test_psi_matches_hand_computation():
    # p = (.5, .5), q = (.8, .2): 0.3 ln 1.6 + (-0.3) ln 0.4
    assert psi([50, 50], [80, 20]) == pytest.approx(0.3 * math.log(1.6) - 0.3 * math.log(0.4), rel=1e-12)
    assert psi([50, 50], [80, 20]) == pytest.approx(0.415888, abs=1e-6)
    assert psi([10, 20, 30], [10, 20, 30]) == 0.0


def test_psi_clamps_empty_bins_with_epsilon():
    # p' = (1, 1e-4), q = (.5, .5)
    want = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert psi([100, 0], [50, 50]) == pytest.approx(want, rel=1e-12)
    assert psi([100, 0], [50, 50]) == pytest.approx(4.604318, abs=1e-6)


def test_ks_binned_matches_hand_computation_and_ks_2samp_of_bin_indices():
    # CDFs .1 .3 .6 1 vs .4 .7 .9 1 -> largest gap 0.4
    assert ks_binned([10, 20, 30, 40], [40, 30, 20, 10]) == pytest.approx(0.4)
    rng = np.random.default_rng(3)
    ref, cur = rng.integers(0, 8, 700), rng.integers(0, 8, 300) + (rng.random(300) < 0.3)
    rc, cc = np.bincount(ref, minlength=9), np.bincount(cur, minlength=9)
    assert ks_binned(rc, cc) == pytest.approx(stats.ks_2samp(ref, cur).statistic, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_js_distance_matches_scipy_base2(seed):
    rng = np.random.default_rng(seed)
    p, q = rng.random(6), rng.random(6)
    q[2] = 0.0
    assert js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2), abs=1e-9)
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_distance([3, 1], [30, 10]) == pytest.approx(0.0, abs=1e-9)


def test_statistics_refuse_mismatched_or_empty_histograms():
    with pytest.raises(ValueError, match="bins"):
        psi([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="positive total"):
        ks_binned([0, 0], [1, 1])


@pytest.mark.parametrize("prob", [0.9, 0.95, 0.99, 0.999])
def test_chi2_quantile_within_two_percent_of_scipy(prob):
    for df in list(range(1, 41)) + [50, 99, 200]:
        assert chi2_quantile(prob, df) == pytest.approx(stats.chi2.ppf(prob, df), rel=0.02), (prob, df)


@pytest.mark.parametrize("n_eff", [5, 33.3, 100, 1000, 5000])
def test_ks_pvalue_is_the_kolmogorov_tail_with_stephens_correction(n_eff):
    en = math.sqrt(n_eff)
    for d in np.linspace(0.0, 1.0, 41):
        want = 1.0 if d == 0 else float(stats.kstwobign.sf((en + 0.12 + 0.11 / en) * d))
        assert ks_pvalue(float(d), n_eff) == pytest.approx(want, abs=1e-7), d


def test_ks_pvalue_of_binned_windows_is_close_to_scipy_ks_2samp():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=2000), rng.normal(0.2, 1.0, size=200)
    edges = quantile_edges(a, 20)
    d = ks_binned(bin_counts(a, edges), bin_counts(b, edges))
    exact = stats.ks_2samp(a, b, method="asymp")
    assert d <= exact.statistic + 1e-12  # binned KS is a lower bound of the raw KS
    assert ks_pvalue(exact.statistic, 2000 * 200 / 2200) == pytest.approx(exact.pvalue, rel=0.1)


def test_holm_rejects_step_down_and_at_least_what_bonferroni_rejects():
    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    assert holm_reject(p, 0.05) == [True, False, False, True, False]  # 0.005<=.01, 0.01<=.0125, 0.03>.0167 stops
    rng = np.random.default_rng(0)
    for _ in range(200):
        ps = rng.uniform(0, 0.05, rng.integers(1, 30))
        holm = holm_reject(ps, 0.05)
        assert all(h for h, q in zip(holm, ps, strict=True) if q <= 0.05 / len(ps))
        order = np.argsort(ps)  # a rejected p-value implies every smaller one is rejected
        ranks = [holm[j] for j in order]
        assert ranks == sorted(ranks, reverse=True)
    with pytest.raises(ValueError, match="alpha"):
        holm_reject([0.1], 0.0)


def test_psi_cutoff_is_window_aware():
    # 20 bins, 5000 reference rows: chi2_{.99,19} * (1/5000 + 1/M)
    small = psi_cutoff(0.1, 20, 5000, 100)
    assert small == pytest.approx(stats.chi2.ppf(0.99, 19) * (1 / 5000 + 1 / 100), rel=0.02)
    assert small > 0.3
    assert psi_cutoff(0.1, 20, 5000, 100_000) == 0.1  # the base wins on big windows
    assert psi_cutoff(0.2, 1, 5000, 100) == 0.2  # a single bin carries no information


# --- reference -------------------------------------------------------------------------------
def test_build_reference_fills_every_field_and_survives_the_manifest_round_trip():
    rng = np.random.default_rng(1)
    X = sample(rng, 1000)
    pred = np.repeat([0, 1, 2], [500, 300, 200])
    ref = build_reference(X, NAMES, labels=["a", "b", "c"], predicted=pred, window=150, min_rows=50,
                          psi_threshold=0.25, ks_threshold=0.2)
    assert [f.name for f in ref.features] == NAMES
    for j, f in enumerate(ref.features):
        assert len(f.counts) == len(f.edges) + 1 and sum(f.counts) == 1000
        assert f.mean == pytest.approx(X[:, j].mean()) and f.std == pytest.approx(X[:, j].std())
    assert ref.output_labels == ["a", "b", "c"] and ref.output_shares == pytest.approx([0.5, 0.3, 0.2])
    assert (ref.window, ref.min_rows, ref.psi_threshold, ref.ks_threshold) == (150, 50, 0.25, 0.2)
    mb = classifier_onnx(4, 3)
    m = manifest_for(mb, features=NAMES, labels=["a", "b", "c"], drift=ref)
    back = Manifest.from_bytes(m.to_bytes())
    assert back.drift == ref


def test_regression_reference_ignores_predicted_values():
    ref = build_reference(np.arange(20.0).reshape(10, 2), ["a", "b"], predicted=np.linspace(0, 1, 10))
    assert ref.output_labels == [] and ref.output_shares == []


def test_build_reference_refuses_unusable_data():
    with pytest.raises(DriftReferenceError, match="columns"):
        build_reference(np.zeros((10, 3)), ["a", "b"])
    with pytest.raises(DriftReferenceError, match="non-empty"):
        build_reference(np.zeros((0, 2)), ["a", "b"])
    with pytest.raises(DriftReferenceError, match="no finite values"):
        build_reference(np.array([[1.0, np.nan], [2.0, np.nan]]), ["a", "b"])
    with pytest.raises(DriftReferenceError, match="4 entries for 5 reference rows"):
        build_reference(np.zeros((5, 1)), ["a"], labels=["x", "y"], predicted=np.zeros(4, dtype=int))
    with pytest.raises(DriftReferenceError, match="class indices"):
        build_reference(np.zeros((4, 1)), ["a"], labels=["x", "y"], predicted=np.array([0, 1, 2, 0]))


# --- monitor ---------------------------------------------------------------------------------------
def test_identical_distribution_is_almost_never_flagged(reference):
    flagged_per_seed = []
    for seed in range(10):
        rng = np.random.default_rng(1000 + seed)
        mon = monitor(reference)
        reports = mon.observe(sample(rng, 100 * 200))
        assert len(reports) == 100
        flagged_per_seed.append(sum(bool(r.drifted_features) for r in reports))
    assert max(flagged_per_seed) <= 2, flagged_per_seed
    assert sum(flagged_per_seed) <= 5, flagged_per_seed


def test_one_std_mean_shift_is_flagged_on_that_feature_only(reference):
    rng = np.random.default_rng(7)
    reports = monitor(reference).observe(sample(rng, 20 * 200, shift=1.0))
    assert len(reports) == 20
    assert all([f.name for f in r.features if f.flagged] == ["x_normal"] for r in reports)
    # reported drifted from the second flagged window in a row on (``consecutive`` = 2)
    assert reports[0].drifted_features == [] and reports[0].features[0].streak == 1
    assert all(r.drifted_features == ["x_normal"] for r in reports[1:])
    f0 = reports[0].features[0]
    assert f0.psi > 0.5 and f0.ks > 0.25
    assert f0.mean == pytest.approx(12.0, abs=0.5)


def test_windows_split_exactly_at_boundaries(reference):
    rng = np.random.default_rng(11)
    X = sample(rng, 760)
    times = iter(range(100, 200))
    mon = monitor(reference, clock=lambda: float(next(times)))
    got = []
    for lo, hi in [(0, 150), (150, 300), (300, 650), (650, 760)]:
        got += mon.observe(X[lo:hi])
    assert [r.window for r in got] == [1, 2, 3]
    assert [r.rows for r in got] == [200, 200, 200]
    for k, r in enumerate(got):
        rows = X[200 * k:200 * (k + 1)]
        for j, f in enumerate(r.features):
            assert f.counts == bin_counts(rows[:, j], reference.features[j].edges).tolist()
            assert f.mean == pytest.approx(rows[:, j].mean())
        assert r.started_at < r.ended_at
    assert mon.pending_rows == 160
    last = mon.flush()
    assert last is not None and last.window == 4 and last.rows == 160
    assert last.features[3].counts == bin_counts(X[600:, 3], reference.features[3].edges).tolist()
    assert mon.pending_rows == 0


def test_flush_needs_min_rows(reference):
    mon = monitor(reference)
    mon.observe(sample(np.random.default_rng(2), reference.min_rows - 1))
    assert mon.flush() is None
    assert mon.pending_rows == reference.min_rows - 1  # kept for the next window
    mon.observe(sample(np.random.default_rng(3), 1))
    rep = mon.flush()
    assert rep is not None and rep.rows == reference.min_rows and rep.window == 1


def test_report_round_trips_through_the_wire_format_with_plain_types():
    rng = np.random.default_rng(5)
    X = sample(rng, 2000)
    pred = (X[:, 2] > 0).astype(np.int64)
    ref = build_reference(X, NAMES, labels=["neg", "pos"], predicted=pred)
    mon = monitor(ref)
    Xw = sample(rng, 200, shift=2.0)
    (rep,) = mon.observe(Xw, np.zeros(200, dtype=np.int64))  # every prediction "neg"
    assert rep.output_counts == [200, 0]
    assert rep.output_js == pytest.approx(jensenshannon([1, 0], ref.output_shares, base=2), abs=1e-9)
    data = rep.encode()
    doc = json.loads(data)
    assert doc["drifted_features"] == [] and [f["name"] for f in doc["features"] if f["flagged"]] == ["x_normal"]
    assert all(type(c) is int for f in doc["features"] for c in f["counts"])
    back = messages.decode(data)
    assert back == rep
    assert type(back.features[0].psi) is float and type(rep.features[0].psi) is float


def test_regression_reports_have_no_output_drift(reference):
    (rep,) = monitor(reference).observe(sample(np.random.default_rng(9), 200))
    assert rep.output_counts == [] and rep.output_js is None
    assert rep.psi_threshold == reference.psi_threshold and rep.ks_threshold == reference.ks_threshold


def test_monitor_is_thread_safe(reference):
    mon = monitor(reference)
    X = sample(np.random.default_rng(4), 8 * 50 * 7)
    out: list = []
    lock = threading.Lock()

    def feed(part: np.ndarray) -> None:
        for k in range(0, len(part), 7):
            reps = mon.observe(part[k:k + 7])
            with lock:
                out.extend(reps)

    threads = [threading.Thread(target=feed, args=(X[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.window for r in out) == list(range(1, len(X) // 200 + 1))
    assert all(r.rows == 200 and sum(r.features[0].counts) == 200 for r in out)
    assert mon.pending_rows == len(X) % 200


def test_monitor_refuses_bad_rows_and_bad_references(reference):
    mon = monitor(reference)
    with pytest.raises(InputShapeError, match="4 features"):
        mon.observe(np.zeros((3, 2)))
    with pytest.raises(InputShapeError, match="predicted"):
        mon.observe(np.zeros((3, 4)), np.zeros(2, dtype=int))
    assert mon.observe(np.zeros((0, 4))) == []
    bad = DriftReference(features=[FeatureReference("a", [0.0], [0, 0], 0.0, 1.0)])
    with pytest.raises(BundleFormatError, match="no reference rows"):
        monitor(bad)
    bad_shares = DriftReference(features=[FeatureReference("a", [0.0], [1, 1], 0.0, 1.0)],
                                output_labels=["x", "y"], output_shares=[1.0])
    with pytest.raises(BundleFormatError, match="output shares"):
        monitor(bad_shares)


def test_parameters_outside_their_domain_are_refused():
    with pytest.raises(ValueError, match="n_bins must be at least 1, got 0"):
        quantile_edges([1.0, 2.0], 0)
    for prob in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"prob must be in \(0, 1\)"):
            chi2_quantile(prob, 3)
    with pytest.raises(ValueError, match="df must be at least 1, got 0"):
        chi2_quantile(0.99, 0)
    with pytest.raises(DriftReferenceError, match="need 0 < min_rows <= window, got min_rows=60, window=50"):
        build_reference(np.zeros((10, 1)), ["a"], window=50, min_rows=60)


def test_monitor_takes_one_flat_row_and_counts_windows(reference):
    mon = DriftMonitor(dataclasses.replace(reference, window=2, min_rows=1), agent_id="pi-1", model="iris",
                       version="3", bundle_sha256="ab" * 32)
    assert mon.observe(np.array([10.0, 1.0, 0.0, 2.0])) == [] and mon.pending_rows == 1  # one 1-D row
    (report,) = mon.observe(np.array([10.0, 1.0, 0.0, 2.0]))
    assert report.window == 1 and report.rows == 2 and mon.windows_emitted == 1 and mon.pending_rows == 0


def test_monitor_refuses_predictions_that_are_not_class_indices():
    ref = build_reference(np.random.default_rng(3).normal(size=(100, 2)), ["a", "b"], labels=["x", "y"],
                          predicted=np.repeat([0, 1], 50), window=10, min_rows=5)
    mon = monitor(ref)
    with pytest.raises(InputValueError, match="integer class indices"):
        mon.observe(np.zeros((2, 2)), np.array([0.5, 1.0]))
    with pytest.raises(InputValueError, match="must not be negative"):
        mon.observe(np.zeros((2, 2)), np.array([0, -1]))
    assert mon.pending_rows == 0  # refused rows are not counted


def test_references_with_inconsistent_bins_or_shares_are_refused():
    with pytest.raises(BundleFormatError, match="has 3 counts for 1 edges .*rebuild the bundle"):
        monitor(DriftReference(features=[FeatureReference("a", [0.0], [1, 1, 1], 0.0, 1.0)]))
    with pytest.raises(BundleFormatError, match="non-negative with a positive sum"):
        monitor(DriftReference(features=[FeatureReference("a", [0.0], [1, 1], 0.0, 1.0)],
                               output_labels=["x", "y"], output_shares=[0.0, 0.0]))
