"""Drift windows that fit the device: closed by rows or time, too few rows, K flagged windows in a row,
regression output drift, missing and out-of-range counts -- through the real serving path.

Rows are answered by real onnxruntime models (tests/onnx_models.py) in :class:`Serving`, whose
drift feed gives them to the real :class:`DriftMonitor`; time is a test clock, and the agent's
periodic call (:meth:`Serving.tick_drift`) closes windows whose time is up.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.drift import (
    DriftConfigError,
    DriftMonitor,
    WindowPolicy,
    bin_counts,
    build_reference,
    ks_binned,
    psi,
)
from edgeloop.agent.errors import ConfigError, MessageFormatError
from edgeloop.agent.runtime import ModelRunner
from edgeloop.agent.serving import Serving
from edgeloop.agent.wire import messages
from edgeloop.agent.wire.manifest import DriftReference
from edgeloop.agent.wire.messages import DriftReport
from tests.onnx_models import classifier_onnx, expected_prediction, manifest_for, regression_onnx

NAMES = ["temp", "load", "count", "ratio"]
LABELS = ["a", "b", "c"]


def process(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """The plant: a normal, a skewed, a discrete and a bounded feature; ``shift`` moves ``temp`` by that many std."""
    return np.column_stack([rng.normal(20.0 + 2.0 * shift, 2.0, n), rng.exponential(1.5, n),
                            rng.poisson(3.0, n).astype(np.float64), rng.uniform(0.0, 1.0, n)])


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def serve(task: str, reference: DriftReference, policy: WindowPolicy, clock: Clock) -> tuple[Serving, list]:
    mb = classifier_onnx() if task == "classification" else regression_onnx()
    manifest = manifest_for(mb, task=task, features=NAMES, labels=LABELS, drift=reference)
    runner = ModelRunner.load(manifest, mb)
    reports: list[DriftReport] = []
    serving = Serving(on_drift_report=reports.append)
    serving.activate(runner, DriftMonitor(reference, agent_id="pi", model=manifest.model_name, version="1",
                                          bundle_sha256="ab" * 32, policy=policy, clock=clock))
    return serving, reports


def stream(serving: Serving, clock: Clock, X: np.ndarray, seconds: float, batch: int = 10) -> None:
    """Requests of ``batch`` rows spread evenly over ``seconds``; the agent ticks after each."""
    t0 = clock.t
    for i in range(0, len(X), batch):
        serving.infer(X[i:i + batch].tolist())
        clock.t = t0 + seconds * min(len(X), i + batch) / len(X)
        serving.tick_drift()


def flagged(report: DriftReport) -> list[str]:
    return [f.name for f in report.features if f.flagged]


@pytest.fixture(scope="module")
def reference() -> DriftReference:
    rng = np.random.default_rng(100)
    X = process(rng, 4000)
    pred = rng.integers(0, 3, 4000)
    return build_reference(X, NAMES, labels=LABELS, predicted=pred, window=1000, min_rows=100,
                           window_seconds=60.0)


def test_unshifted_data_flags_nothing_over_60_time_closed_windows(reference):
    """The false-alarm claim. 60 windows of 100-400 rows (a device's traffic varies), closed by time:
    no feature is reported drifted, and at most 2 windows flag anything on their own.

    Measured (this process, 4000 reference rows, 4 features, alpha 0.01, windows of 100-400 rows,
    2000 windows over 20 seeds): 2 windows (0.1%) flag a feature on their own; with ``consecutive = 2``
    none reports one drifted (docs/operator-guide.md, "Drift windows").
    """
    clock = Clock()
    serving, reports = serve("classification", reference, WindowPolicy.of(reference), clock)
    rng = np.random.default_rng(7)
    for rows in rng.integers(10, 41, 60) * 10:
        stream(serving, clock, process(rng, int(rows)), 60.0)
    assert len(reports) == 60
    assert all(r.closed_by == "time" and r.status == "ok" for r in reports)
    assert sorted({r.rows for r in reports})[0] >= 100 and max(r.rows for r in reports) <= 400
    assert [r.drifted_features for r in reports if r.drifted_features] == []
    assert sum(bool(flagged(r)) for r in reports) <= 2
    assert all(r.output_counts and sum(r.output_counts) == r.rows for r in reports)


def test_a_one_feature_shift_flags_that_feature_only_after_two_windows(reference):
    clock = Clock()
    serving, reports = serve("classification", reference, WindowPolicy.of(reference), clock)
    rng = np.random.default_rng(8)
    for _ in range(6):
        stream(serving, clock, process(rng, 250, shift=1.0), 60.0)
    assert len(reports) == 6 and all(flagged(r) == ["temp"] for r in reports)
    assert reports[0].drifted_features == []  # one flagged window is not yet drift (consecutive = 2)
    assert [r.drifted_features for r in reports[1:]] == [["temp"]] * 5
    assert [r.features[0].streak for r in reports] == [1, 2, 3, 4, 5, 6]
    for r in reports:  # the monitor's statistics are psi() and ks_binned() of the counts it sends
        for f, fref in zip(r.features, reference.features, strict=True):
            assert f.psi == pytest.approx(psi(fref.counts, f.counts), rel=1e-9, abs=1e-12)
            assert f.ks == pytest.approx(ks_binned(fref.counts, f.counts), rel=1e-9, abs=1e-12)
    # unshifted again: the streak ends at once
    stream(serving, clock, process(rng, 250), 60.0)
    assert reports[-1].drifted_features == [] and reports[-1].features[0].streak == 0


def test_a_30_row_time_closed_window_is_reported_as_too_few_rows(reference):
    """30 rows, then nothing: the agent's tick closes the window on time; it carries its counts but is
    not judged, even though the rows are far off."""
    clock = Clock()
    serving, reports = serve("classification", reference, WindowPolicy.of(reference), clock)
    X = process(np.random.default_rng(9), 30, shift=5.0)
    serving.infer(X.tolist())
    clock.t += 59.0
    serving.tick_drift()
    assert reports == []
    clock.t += 1.0
    serving.tick_drift()  # no request: the periodic call alone closes it
    (rep,) = reports
    assert (rep.rows, rep.status, rep.closed_by, rep.min_rows) == (30, "too_few_rows", "time", 100)
    assert rep.drifted_features == [] and flagged(rep) == []
    assert [f.counts for f in rep.features] == [bin_counts(X[:, j], reference.features[j].edges).tolist()
                                                 for j in range(4)]
    assert rep.ended_at - rep.started_at == pytest.approx(60.0)
    back = messages.decode(rep.encode())
    assert back == rep and back.status == "too_few_rows"


def test_rows_close_a_window_before_its_time_and_held_rows_stay_in_their_window(reference):
    clock = Clock()
    policy = WindowPolicy.of(reference, rows=200, seconds=60.0, min_rows=50)
    serving, reports = serve("classification", reference, policy, clock)
    rng = np.random.default_rng(10)
    stream(serving, clock, process(rng, 500), 10.0, batch=5)  # 500 rows in 10 s: two full windows by rows
    assert [(r.rows, r.closed_by) for r in reports] == [(200, "rows"), (200, "rows")]
    serving.infer(process(rng, 3).tolist())  # a small request is held back by the feed ...
    clock.t += 60.0
    serving.tick_drift()  # ... and still counted in the window it arrived in
    assert [(r.rows, r.closed_by, r.status) for r in reports[2:]] == [(103, "time", "ok")]


def test_regression_output_drift_is_shipped_and_judged():
    """The model's predictions on the reference rows are the reference's ``output``; served
    predictions are binned and judged. A shift that moves the predictions is reported on ``output``."""
    rng = np.random.default_rng(11)
    X = process(rng, 4000)
    ref = build_reference(X, NAMES, predicted=expected_prediction(X), window=250, min_rows=100, window_seconds=0)
    assert ref.output is not None and sum(ref.output.counts) == 4000
    assert DriftReference.from_dict(ref.to_dict()).output == ref.output  # it survives the manifest
    clock = Clock()
    serving, reports = serve("regression", ref, WindowPolicy.of(ref), clock)
    stream(serving, clock, process(rng, 1000), 10.0)
    assert len(reports) == 4 and all(r.output is not None and not r.output.flagged for r in reports)
    assert all(sum(r.output.counts) == 250 and r.output_counts == [] for r in reports)
    shifted = process(rng, 750, shift=1.5)
    stream(serving, clock, shifted, 10.0)
    out = [r.output for r in reports[4:]]
    assert all(o is not None and o.flagged for o in out)
    assert [o.drifted for o in out if o is not None] == [False, True, True]
    assert out[-1] is not None and out[-1].mean == pytest.approx(expected_prediction(shifted[500:]).mean(), rel=1e-4)
    assert messages.decode(reports[-1].encode()) == reports[-1]


def test_missing_and_out_of_range_values_are_counted_not_binned(reference):
    mon = DriftMonitor(reference, agent_id="pi", model="m", version="1", bundle_sha256="ab" * 32,
                       policy=WindowPolicy.of(reference, rows=100))
    X = process(np.random.default_rng(12), 100)
    X[:7, 0] = np.nan
    X[7:10, 1] = np.inf
    X[10:15, 3] = 5.0  # the reference's ratio lies in [0, 1]
    X[15:17, 0] = -1000.0
    (rep,) = mon.observe(X)
    f = {x.name: x for x in rep.features}
    assert (f["temp"].missing, f["load"].missing, f["ratio"].missing) == (7, 3, 0)
    assert (f["temp"].out_of_range, f["ratio"].out_of_range, f["count"].out_of_range) == (2, 5, 0)
    assert sum(f["temp"].counts) == 93 and sum(f["ratio"].counts) == 100
    assert f["temp"].mean == pytest.approx(np.nanmean(X[:, 0]))


def test_window_counts_merge_to_the_counts_of_all_rows(reference):
    """Agents send raw counts with every window: added up they equal the histogram of every row served."""
    clock = Clock()
    serving, reports = serve("classification", reference, WindowPolicy.of(reference, rows=300), clock)
    X = process(np.random.default_rng(13), 1350)
    stream(serving, clock, X, 100.0, batch=7)
    serving.deactivate()  # flushes the last partial window (150 rows >= min_rows)
    assert [r.closed_by for r in reports] == ["rows"] * 4 + ["flush"] and sum(r.rows for r in reports) == 1350
    for j, fref in enumerate(reference.features):
        merged = np.sum([r.features[j].counts for r in reports], axis=0)
        assert merged.tolist() == bin_counts(X[:, j], fref.edges).tolist()


def test_agent_config_drift_section_overrides_the_bundle_defaults(tmp_path, reference):
    base = {"agent_id": "pi", "state_dir": str(tmp_path)}
    cfg = AgentConfig.from_dict({**base, "drift": {"window_rows": 500, "window_seconds": 900, "consecutive": 3}})
    assert cfg.drift_overrides() == {"rows": 500, "seconds": 900.0, "consecutive": 3}
    policy = WindowPolicy.of(reference, **cfg.drift_overrides())
    assert policy == WindowPolicy(rows=500, seconds=900.0, min_rows=reference.min_rows, consecutive=3)
    assert AgentConfig.load(_write(tmp_path, cfg.to_toml())).drift == cfg.drift
    assert WindowPolicy.of(reference) == WindowPolicy(1000, 60.0, 100, 2)  # the hub's defaults, from the bundle
    assert WindowPolicy.of(reference, rows=50).min_rows == 50  # a full window is always judged
    with pytest.raises(ConfigError, match="unknown keys: window"):
        AgentConfig.from_dict({**base, "drift": {"window": 10}})
    with pytest.raises(ConfigError, match="drift.consecutive must be at least 1"):
        AgentConfig.from_dict({**base, "drift": {"consecutive": 0}})
    with pytest.raises(DriftConfigError, match="fix \\[drift\\]"):
        WindowPolicy.of(reference, seconds=-1.0)


def test_the_report_codec_reads_older_reports_and_refuses_bad_new_fields(reference):
    mon = DriftMonitor(reference, agent_id="pi", model="m", version="1", bundle_sha256="ab" * 32,
                       policy=WindowPolicy.of(reference, rows=100))
    (rep,) = mon.observe(process(np.random.default_rng(14), 100))
    doc = rep.to_dict()
    for key in ("status", "closed_by", "min_rows", "consecutive", "output"):
        del doc[key]
    for f in doc["features"]:
        for key in ("flagged", "streak", "missing", "out_of_range"):
            del f[key]
    old = DriftReport.from_dict(doc)  # a report of an older agent
    assert (old.status, old.closed_by, old.features[0].flagged, old.features[0].missing) == ("ok", "rows", None, 0)
    with pytest.raises(MessageFormatError, match="status must be one of ok, too_few_rows"):
        DriftReport.from_dict({**rep.to_dict(), "status": "maybe"})
    bad = rep.to_dict()
    bad["features"][0]["missing"] = -1
    with pytest.raises(MessageFormatError, match="missing must be a non-negative integer"):
        DriftReport.from_dict(bad)


def _write(tmp_path, text: str):
    path = tmp_path / "agent.toml"
    path.write_text(text, "utf-8")
    return path


def test_a_real_agent_closes_a_quiet_window_on_time_and_publishes_it(tmp_path, mosquitto, reference):
    """The agent process (config ``[drift] window_seconds = 1``) answers one 30-row request; with no
    further request its control loop closes the window a second later and publishes it, signed, as
    too few rows."""
    import dataclasses
    import hashlib
    import json
    import uuid

    from edgeloop.agent.store import AgentStore
    from edgeloop.agent.wire import topics
    from edgeloop.agent.wire.bundle import pack_bundle
    from edgeloop.agent.wire.messages import InferRequest
    from tests.agent_rig import AgentRig
    from tests.conftest import wait_until, watch_topic
    from tests.onnx_models import FEATURES, classifier_smoke

    with AgentRig(tmp_path, mosquitto) as rig:
        mb = classifier_onnx()
        ref = dataclasses.replace(reference, features=[dataclasses.replace(f, name=n)
                                                       for f, n in zip(reference.features, FEATURES, strict=True)])
        manifest = dataclasses.replace(manifest_for(mb, smoke=classifier_smoke(), drift=ref), key_id=rig.key.keyid)
        bundle = pack_bundle(manifest, {"model.onnx": mb}, rig.key)
        aid = f"drift-{uuid.uuid4().hex[:8]}"
        AgentStore(tmp_path / f"{aid}-state").install(hashlib.sha256(bundle).hexdigest(), bundle, "iris", "1")
        config = rig.prepare(aid, (), drift={"window_seconds": 1.0})
        assert AgentConfig.load(config).drift == {"window_seconds": 1.0}
        with watch_topic(mosquitto, topics.agent_topic(aid, topics.DRIFT)) as got:
            rig.procs[aid] = rig.start(config)
            assert rig.online([aid]), rig.procs[aid].log()
            rows = process(np.random.default_rng(15), 30).tolist()
            rig.client.publish(topics.agent_topic(aid, topics.INFER),
                               InferRequest(id="r1", inputs=rows, reply_to="test/crash/replies").encode(), qos=1)
            assert wait_until(lambda: "r1" in rig.replies, 20), rig.procs[aid].log()
            assert wait_until(lambda: got, 20), rig.procs[aid].log()
        doc = json.loads(got[0][1])
        assert (doc["rows"], doc["status"], doc["closed_by"], doc["window"]) == (30, "too_few_rows", "time", 1)
        assert [sum(f["counts"]) for f in doc["features"]] == [30] * 4


def test_a_hub_built_regression_bundle_ships_its_prediction_histogram(tmp_path):
    """The hub trains a tiny regression version; its signed bundle's reference has the ``output``
    histogram of the model's predictions, and the agent's monitor judges served predictions with it."""
    from edgeloop.agent.wire.bundle import verify_bundle
    from edgeloop.agent.wire.envelope import TrustedKeys
    from edgeloop.hub.datasets import Dataset
    from edgeloop.hub.services import Hub
    from edgeloop.hub.training import TrainParams

    rng = np.random.default_rng(16)
    X = process(rng, 300)
    y = (0.5 * X[:, 0] + X[:, 1]).astype(np.float32)
    ds = Dataset(NAMES, X, y, [], label_column="y", task="regression", source="plant.csv")
    hub = Hub(tmp_path / "hub", actor="tests")
    build = hub.build_version(ds, hub.register_dataset(ds, "plant"), "plant",
                              TrainParams(epochs=2, hidden=(8,), seed=0), quantize=False)
    manifest = verify_bundle(hub.build_bundle(build.id).path.read_bytes(), TrustedKeys.of([hub.key.public])).manifest
    ref = manifest.drift
    assert ref is not None and ref.output is not None and sum(ref.output.counts) == 300
    assert ref.window_seconds == 3600.0 and ref.consecutive == 2  # the hub's defaults for the agents
    mon = DriftMonitor(ref, agent_id="pi", model="plant", version="1", bundle_sha256="ab" * 32,
                       policy=WindowPolicy.of(ref, rows=100))
    (rep,) = mon.observe(X[:100], np.full(100, ref.output.max + 10.0))  # predictions far above the reference
    assert rep.output is not None and rep.output.flagged and rep.output.out_of_range == 100
