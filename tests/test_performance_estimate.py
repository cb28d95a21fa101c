"""Accuracy without labels (CBPE): the pure estimate, its flag, the wire format, the drift monitor.

The tracking tests use a model that is calibrated by construction: three Gaussian classes whose
posterior probabilities are known exactly, so labels drawn from the posterior are what the world
does. Covariate shift resamples the inputs (towards the hard region between the classes) and
keeps ``P(y | x)``; the estimate must follow the realized accuracy window by window.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeloop.agent.drift import DriftMonitor, build_reference
from edgeloop.agent.errors import MessageFormatError
from edgeloop.agent.performance_estimate import WindowSums, estimate, flag_threshold, reference_from_probabilities
from edgeloop.agent.wire import messages
from edgeloop.agent.wire.manifest import Manifest, TensorSpec
from edgeloop.agent.wire.performance import PerformanceEstimate, PerformanceReference

MEANS = np.array([[0.0, 0.0], [2.2, 0.0], [1.1, 1.9]])
LABELS = ["a", "b", "c"]
WINDOW = 200
MAE_MAX = 0.03  # measured about 0.02 here (Bernoulli noise of 200 rows alone is ~0.017)


def posterior(X: np.ndarray) -> np.ndarray:
    d = -0.5 * ((X[:, None, :] - MEANS[None]) ** 2).sum(axis=2)
    e = np.exp(d - d.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def draw(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 3, n)
    return MEANS[y] + rng.standard_normal((n, 2)), y


def labels_for(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)


def shifted(pool: np.ndarray, size: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Covariate shift: rows resampled towards the centre, where the classes overlap (P(y|x) unchanged)."""
    u = -np.linalg.norm(pool - MEANS.mean(axis=0), axis=1)
    w = np.exp(size * (u - u.mean()) / u.std())
    return pool[rng.choice(len(pool), size=n, p=w / w.sum())]


@pytest.fixture(scope="module")
def reference() -> PerformanceReference:
    rng = np.random.default_rng(1)
    X, _ = draw(3000, rng)
    p = posterior(X)
    return reference_from_probabilities(p, labels_for(p, rng), LABELS, calibration={"method": "temperature"})


def window_estimates(X: np.ndarray, ref: PerformanceReference, rng: np.random.Generator):
    out = []
    for s in range(0, len(X) - WINDOW + 1, WINDOW):
        p = posterior(X[s:s + WINDOW])
        sums = WindowSums(3)
        sums.add(p)
        est = estimate(sums, ref)
        assert est is not None
        out.append((est, float((p.argmax(1) == labels_for(p, rng)).mean())))
    return out


def test_estimate_tracks_realized_accuracy_under_covariate_shift_and_flags_a_drop(reference):
    rng = np.random.default_rng(2)
    pool, _ = draw(20_000, rng)
    errors, covered = [], []
    for size in (0.0, 0.5, 1.0, 2.0, 3.0):
        results = window_estimates(shifted(pool, size, 10 * WINDOW, rng), reference, rng)
        errors += [abs(e.accuracy - r) for e, r in results]
        covered += [e.low <= r <= e.high for e, r in results]
        realized = np.mean([r for _, r in results])
        flagged = np.mean([e.flagged for e, _ in results])
        if size == 0.0:
            assert flagged <= 0.1, "unshifted windows are (almost) never flagged"
        if reference.accuracy - realized >= 0.05:  # a shift that costs >= 5 points raises the flag
            assert flagged >= 0.8, (size, realized, flagged)
    assert realized < reference.accuracy - 0.1, "the largest shift must really hurt, or the test proves nothing"
    assert np.mean(errors) <= MAE_MAX, np.mean(errors)
    assert np.mean(covered) >= 0.85  # the 99% interval covers the realized accuracy (it ignores calibration error)


def test_concept_shift_is_a_known_blind_spot(reference):
    """When P(y | x) changes (here the world swaps classes b and c), the inputs look the same and so does the
    estimate, while the realized accuracy collapses: documented, and shown here rather than hidden."""
    rng = np.random.default_rng(3)
    X, _ = draw(4 * WINDOW, rng)
    p = posterior(X)
    y = np.array([0, 2, 1])[labels_for(p, rng)]
    sums = WindowSums(3)
    sums.add(p)
    est = estimate(sums, reference)
    assert est is not None and not est.flagged
    assert est.accuracy - float((p.argmax(1) == y).mean()) > 0.3


def test_flag_threshold_accounts_for_window_size(reference):
    t = [flag_threshold(reference, m) for m in (50, 200, 1000, 100_000)]
    assert t == sorted(t, reverse=True)
    assert t[-1] == pytest.approx(reference.margin, abs=0.002)
    assert flag_threshold(reference, 0) == float("inf")


def test_per_class_estimates_and_labels():
    ref = PerformanceReference(accuracy=0.9, estimated_accuracy=0.9, rows=100, confidence_sd=0.1,
                               labels=["x", "y"])
    sums = WindowSums(2)
    sums.add(np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [np.nan, 1.0]]))  # the non-finite row is skipped
    sums.add_labels(2, 3)
    est = estimate(sums, ref)
    assert est is not None and est.rows == 3
    assert est.accuracy == pytest.approx(0.8)
    x, y = est.per_class
    assert (x.predicted, y.predicted) == (2, 1)
    assert x.precision == pytest.approx(0.85) and y.precision == pytest.approx(0.7)
    assert x.recall == pytest.approx(1.7 / 2.0) and y.recall == pytest.approx(0.7 / 1.0)
    assert (est.labelled, est.correct, est.realized) == (3, 2, pytest.approx(2 / 3))
    assert est.error == pytest.approx(0.8 - 2 / 3)
    assert estimate(WindowSums(2), ref) is None
    with pytest.raises(ValueError):
        sums.add_labels(3, 2)


# --- wire -------------------------------------------------------------------------------------------
def test_reference_and_estimate_round_trip_and_refuse_nonsense(reference):
    assert PerformanceReference.from_dict(reference.to_dict()) == reference
    sums = WindowSums(3)
    sums.add(posterior(draw(300, np.random.default_rng(4))[0]))
    est = estimate(sums, reference)
    assert est is not None and PerformanceEstimate.from_dict(est.to_dict()) == est
    bad = {**reference.to_dict(), "accuracy": 1.5}
    with pytest.raises(MessageFormatError, match="accuracy"):
        PerformanceReference.from_dict(bad)
    with pytest.raises(MessageFormatError, match="upgrade the agent"):
        PerformanceReference.from_dict({**reference.to_dict(), "method": "dle"})
    with pytest.raises(MessageFormatError, match="low <= accuracy"):
        PerformanceEstimate.from_dict({**est.to_dict(), "low": 0.99, "accuracy": 0.5})


def _manifest(performance: PerformanceReference | None, labels=LABELS) -> Manifest:
    return Manifest(model_name="m", version="1", task="classification", created_at=1.0, key_id="k" * 16,
                    entrypoint="model.onnx", files=[], feature_names=["x0", "x1"],
                    inputs=[TensorSpec("features", "FP32", [-1, 2])], outputs=[TensorSpec("probabilities", "FP32",
                                                                                          [-1, 3])],
                    labels=list(labels), performance=performance)


def test_manifest_carries_the_reference_and_old_manifests_still_load(reference):
    from edgeloop.agent.wire.manifest import FileEntry

    def with_file(m: Manifest) -> dict:
        d = m.to_dict()
        d["files"] = [FileEntry("model.onnx", "0" * 64, 1).to_dict()]
        return d

    m = Manifest.from_dict(with_file(_manifest(reference)))
    assert m.performance == reference
    old = with_file(_manifest(None))
    old.pop("performance")  # as written by hubs before calibration
    assert Manifest.from_dict(old).performance is None
    with pytest.raises(MessageFormatError, match="labels in order"):
        Manifest.from_dict(with_file(_manifest(reference, labels=["c", "b", "a"])))


# --- the drift monitor ----------------------------------------------------------------------------
def _monitor(ref: PerformanceReference | None, window: int = WINDOW) -> DriftMonitor:
    rng = np.random.default_rng(5)
    X, _ = draw(2000, rng)
    drift = build_reference(X, ["x0", "x1"], labels=LABELS, predicted=posterior(X).argmax(1), window=window,
                            min_rows=window // 2)
    return DriftMonitor(drift, agent_id="pi-1", model="m", version="1", bundle_sha256="ab" * 32, performance=ref)


def test_monitor_reports_the_estimate_and_realized_accuracy_on_the_wire(reference):
    mon = _monitor(reference)
    assert mon.estimates
    X, _ = draw(WINDOW + 50, np.random.default_rng(6))
    p = posterior(X)
    mon.record_labels(40, 50)
    reports = mon.observe(X, p)  # class probabilities as "predicted": argmax for the counts, all for the estimate
    assert len(reports) == 1
    rep = messages.decode(reports[0].encode())
    assert isinstance(rep, messages.DriftReport) and rep.performance is not None
    pf = rep.performance
    assert pf.rows == WINDOW and pf.accuracy == pytest.approx(p[:WINDOW].max(axis=1).mean())
    assert (pf.labelled, pf.correct, pf.realized) == (50, 40, 0.8)
    assert sum(rep.output_counts) == WINDOW and rep.output_counts == np.bincount(p[:WINDOW].argmax(1),
                                                                                 minlength=3).tolist()
    flushed = mon.flush()  # 50 rows, below min_rows 100: counts only, the estimate is never flagged
    assert flushed is None or (flushed.performance is not None and not flushed.performance.flagged)


def test_monitor_without_a_reference_reports_no_estimate_and_keeps_taking_class_indices():
    mon = _monitor(None)
    assert not mon.estimates
    X, _ = draw(WINDOW, np.random.default_rng(7))
    (rep,) = mon.observe(X, posterior(X).argmax(1))
    assert rep.performance is None and messages.decode(rep.encode()).performance is None  # type: ignore[union-attr]
    d = rep.to_dict()
    d.pop("performance")  # a report of an older agent
    assert messages.DriftReport.from_dict(d).performance is None
