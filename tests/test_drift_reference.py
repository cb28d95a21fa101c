"""``Hub.drift_reference``: the reference a version's bundle carries, read back for the Drift view's
histogram; and the view's ``series_for_chart`` drawing it as the baseline.

A real version trained through ``Hub.build_version`` (tiny MLP, fp32 only), its real signed bundle
verified the way an agent verifies it, a real ``DriftMonitor`` on that bundle's reference, its reports
through the wire codec into the real SQLite registry.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from edgeloop.agent.drift import DriftMonitor, WindowPolicy, bin_counts
from edgeloop.agent.wire import messages
from edgeloop.agent.wire.bundle import verify_bundle
from edgeloop.hub.datasets import generate_sensor_data
from edgeloop.hub.errors import NotFoundError
from edgeloop.hub.services.drift import DriftReferenceMissingError
from tests.factories import trusted
from tests.onnx_models import classifier_onnx
from tests.onnx_variants import signed_bundle

MODEL = "pump"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A hub with ``pump:1`` (trained on 600 rows, 3 epochs, fp32) and a signed bundle of it."""
    from edgeloop.hub.services import Hub
    from edgeloop.hub.training import TrainParams

    hub = Hub(tmp_path_factory.mktemp("drift-reference") / "hub", actor="tests")
    data = generate_sensor_data(600, seed=4)
    build = hub.build_version(data, hub.register_dataset(data, "plant"), MODEL, TrainParams(epochs=3, seed=0),
                              quantize=False)
    assert build.id == f"{MODEL}:1"
    bundle = hub.build_bundle(f"{MODEL}:1")
    yield hub, data, bundle
    hub.close()


def _agent_monitor(hub, sha: str, aid: str = "edge-1") -> DriftMonitor:
    """The drift monitor an agent runs on bundle ``sha``: the bundle verified with the hub key, its manifest's
    reference and window defaults (agent/core.py ``_load_verified``)."""
    _rec, data = hub.bundle_bytes(sha)
    vb = verify_bundle(data, trusted(hub.key))
    assert vb.manifest.drift is not None
    return DriftMonitor(vb.manifest.drift, agent_id=aid, model=vb.manifest.model_name, version=vb.manifest.version,
                        bundle_sha256=sha, policy=WindowPolicy.of(vb.manifest.drift))


def test_the_reference_of_a_trained_version_is_the_one_its_agents_judge_with(trained):
    hub, data, bundle = trained
    folder = hub.drift_reference(f"{MODEL}:1")  # the version's folder: what every bundle of it carries
    ref = hub.drift_reference(MODEL, "1", bundle_sha256=bundle.sha256)  # the bundle an agent reports
    assert (folder["source"], folder["bundle_sha256"]) == ("version folder", None)
    assert (ref["source"], ref["bundle_sha256"], ref["version_id"]) == ("bundle", bundle.sha256, f"{MODEL}:1")
    assert folder["features"] == ref["features"] and folder["window"] == ref["window"]
    assert list(ref["features"]) == list(data.feature_names) and ref["rows"] == len(data.X)  # every training row
    for name, f in ref["features"].items():
        assert len(f["counts"]) == len(f["shares"]) == len(f["bins"]) == len(f["edges"]) + 1, name
        assert sum(f["counts"]) == len(data.X) and abs(sum(f["shares"]) - 1.0) < 1e-12, name
        assert f["bins"][0].startswith("<=") and f["bins"][-1].startswith(">")
    assert ref["classes"]["bins"] == list(data.labels) and abs(sum(ref["classes"]["shares"]) - 1.0) < 1e-9
    assert ref["output"] is None  # a classifier: no prediction histogram

    monitor = _agent_monitor(hub, bundle.sha256)
    policy = monitor.policy
    assert ref["window"] == {"rows": policy.rows, "seconds": policy.seconds, "min_rows": policy.min_rows,
                             "consecutive": policy.consecutive}
    drift = monitor.reference
    assert ref["thresholds"] == {"alpha": drift.alpha, "psi_threshold": drift.psi_threshold,
                                 "ks_threshold": drift.ks_threshold}
    assert {f.name: f.edges for f in drift.features} == {n: f["edges"] for n, f in ref["features"].items()}
    # the agent's window counts are over exactly these bins
    X = data.X[:policy.rows]
    [report] = monitor.observe(X)
    for j, fd in enumerate(report.features):
        assert fd.counts == bin_counts(X[:, j], ref["features"][fd.name]["edges"]).tolist(), fd.name


def test_no_reference_is_a_clear_error(trained):
    hub, _data, _bundle = trained
    with pytest.raises(NotFoundError, match="has no version '9'"):
        hub.drift_reference(MODEL, "9")
    with pytest.raises(NotFoundError, match="no model named"):
        hub.drift_reference("nope:1")
    # a version with neither a folder nor a bundle
    reg = hub.registry
    run = reg.start_run(reg.list_datasets()[0]["id"], "ghost", {})
    reg.finish_run(run["id"])
    reg.add_version("ghost", run["id"], hashlib.sha256(b"ghost-1").hexdigest(), task="classification")
    with pytest.raises(DriftReferenceMissingError, match="ghost:1 has no drift reference.*train the version again"):
        hub.drift_reference("ghost:1")
    # a version whose only bundle carries no reference (as agents were given it)
    reg.add_version("ghost", run["id"], hashlib.sha256(b"ghost-2").hexdigest(), task="classification")
    data = signed_bundle(hub.key, classifier_onnx(), model="ghost", version="2")
    path = hub.home.bundles_dir / "ghost-2.elb"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    reg.add_bundle(sha, "ghost:2", path, len(data), hub.key.keyid)
    for ask in ({}, {"bundle_sha256": sha}):
        with pytest.raises(DriftReferenceMissingError, match="carries no drift reference.*edgeloop bundle build"):
            hub.drift_reference("ghost", "2", **ask)
    # an agent reporting a bundle this hub never registered, or another version's bundle
    with pytest.raises(DriftReferenceMissingError, match="is not registered in this hub.*edgeloop deploy pump:1"):
        hub.drift_reference(MODEL, "1", bundle_sha256="ab" * 32)
    with pytest.raises(DriftReferenceMissingError, match="is a bundle of ghost:2, not of pump:1"):
        hub.drift_reference(MODEL, "1", bundle_sha256=sha)


def test_the_drift_view_draws_the_bundle_reference_against_the_last_judged_window(trained):
    pytest.importorskip("PySide6.QtWidgets", reason="the GUI needs the app extras")
    from edgeloop.app.views.drift import drift_detail, series_for_chart

    hub, data, bundle = trained
    monitor = _agent_monitor(hub, bundle.sha256, aid="edge-ref")
    n = monitor.policy.rows
    shift = np.zeros(data.X.shape[1])
    shift[0] = 2 * data.X[:, 0].std()  # the first feature (temperature_c) moves up by 2 sd in window 4
    X = np.concatenate([data.X[:3 * n], data.X[:n] + shift])
    reports = monitor.observe(X)
    assert len(reports) == 4
    for rep in reports:
        hub.registry.add_drift_report(messages.decode(rep.encode()))
    feature = data.feature_names[0]
    d = drift_detail(hub, MODEL, "edge-ref", feature)
    assert d["reference"]["bundle_sha256"] == bundle.sha256 and d["reference_error"] is None
    ref = hub.drift_reference(MODEL, "1", bundle_sha256=bundle.sha256)["features"][feature]
    _lines, hist = series_for_chart(d["series"])
    assert list(hist) == ["reference (bundle)", "current (window 4)"]
    assert hist["reference (bundle)"] == ref["shares"]
    assert hist["current (window 4)"] == [float(c) for c in reports[-1].features[0].counts]
    centre = lambda s: sum(i * x for i, x in enumerate(s)) / sum(s)
    assert centre(hist["current (window 4)"]) > centre(hist["reference (bundle)"]) + 2  # shifted up the bins


def _series(counts: list[list[int]], *, reference: dict | None = None, status: list[str] | None = None) -> dict:
    status = status or ["ok"] * len(counts)
    return {"points": [{"window": i + 1, "psi": 0.1, "ks": 0.1, "counts": c, "status": s, "bundle_sha256": "b" * 64}
                       for i, (c, s) in enumerate(zip(counts, status, strict=True))],
            "reference": reference}


def test_series_for_chart_uses_the_reference_shares_and_falls_back_with_a_label():
    pytest.importorskip("PySide6.QtWidgets", reason="the GUI needs the app extras")
    from edgeloop.app.views.drift import series_for_chart

    wins = [[5, 5, 0], [4, 6, 0], [1, 2, 7], [0, 0, 3]]
    ref = {"shares": [0.5, 0.25, 0.25], "bundle_sha256": "b" * 64}
    _lines, hist = series_for_chart(_series(wins, reference=ref, status=["ok", "ok", "ok", "too_few_rows"]))
    assert hist == {"reference (bundle)": [0.5, 0.25, 0.25], "current (window 3)": [1.0, 2.0, 7.0]}
    assert series_for_chart(_series(wins[:1], reference=ref, status=["too_few_rows"]))[1] == {
        "reference (bundle)": [0.5, 0.25, 0.25]}  # nothing judged yet: the reference alone
    # no reference: the first two judged windows, and the label says why
    _lines, hist = series_for_chart(_series(wins))
    assert hist == {"baseline (first 2 windows; no bundle reference)": [9.0, 11.0, 0.0],
                    "current (window 4)": [0.0, 0.0, 3.0]}
    for other in ({"shares": [0.5, 0.5], "bundle_sha256": "b" * 64},  # other bins
                  {"shares": [0.5, 0.25, 0.25], "bundle_sha256": "c" * 64}):  # another bundle's reference
        _lines, hist = series_for_chart(_series(wins, reference=other))
        assert list(hist) == ["baseline (first 2 windows; reference bins differ)", "current (window 4)"]


def test_the_accuracy_chart_draws_the_flag_line_below_the_reference():
    pytest.importorskip("PySide6.QtWidgets", reason="the GUI needs the app extras")
    from edgeloop.app.views.drift import accuracy_lines

    # ``threshold`` is the drop that flags a window of that size (agent/performance_estimate.py flag_threshold)
    lines = accuracy_lines({"accuracy": 0.97, "reference": 0.99, "threshold": 0.012})
    assert lines["reference"] == 0.99 and lines["flagged below"] == pytest.approx(0.978)
    assert accuracy_lines({"accuracy": 0.97, "reference": 0.99, "threshold": None}) == {"reference": 0.99}
    assert accuracy_lines({"accuracy": 0.97, "reference": 0.99, "threshold": float("inf")}) == {"reference": 0.99}
    assert accuracy_lines({"accuracy": 0.97}) == {}
