"""Drift on sensor windows: per-channel window summaries, corrected for the number of features tested.

The process below has what real recordings have: per-channel offsets and noise, sample-and-hold
repeats (adjacent steps identical), an ADC-quantised channel, a constant channel and two classes.
The reference is built by the real builder, the windows are judged by the real agent monitor;
once, the reference comes out of a version the hub trained on tiny window data.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeloop.agent.drift import DriftMonitor, build_reference, window_layout, window_summaries
from edgeloop.agent.errors import BundleFormatError, MessageFormatError, UnsupportedSchemaError
from edgeloop.agent.wire.manifest import DriftReference, Manifest
from edgeloop.hub import views

CHANNELS, STEPS = 4, 32
CONSTANT = 2  # the stuck channel
WINDOW = 200  # rows per drift window
NAMES = [f"ch{c}_t{t}" for c in range(CHANNELS) for t in range(STEPS)]


def sensor_windows(rng: np.random.Generator, n: int, *, offset: dict[int, float] | None = None) -> np.ndarray:
    """``n`` rows of 4 x 32 windows; ``offset`` adds a constant to every sample of a channel."""
    t = np.arange(STEPS)
    label = rng.integers(0, 2, n)[:, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    ch0 = 1.5 + (0.8 + 0.6 * label) * np.sin(2 * np.pi * (2 + label) * t / STEPS + phase) \
        + rng.normal(0, 0.2, (n, STEPS))
    ch0 = np.repeat(ch0[:, ::2], 2, axis=1)  # sample-and-hold: every value twice
    ch1 = 5.0 + np.cumsum(rng.normal(0, 0.15, (n, STEPS // 4)), axis=1) + rng.normal(0, 0.3, (n, 1))
    ch1 = np.repeat(ch1, 4, axis=1)  # held for four steps
    ch2 = np.full((n, STEPS), 3.3)  # constant
    ch3 = np.round(20.0 + 2.0 * label + rng.normal(0, 1.0, (n, STEPS)), 2)  # 0.01 ADC steps
    W = np.stack([ch0, ch1, ch2, ch3], axis=1)
    for c, v in (offset or {}).items():
        W[:, c, :] += v
    return W.reshape(n, CHANNELS * STEPS).astype(np.float32).astype(np.float64)


def channel_std(X: np.ndarray, c: int) -> float:
    return float(X[:, c * STEPS:(c + 1) * STEPS].std())


def monitor(ref: DriftReference) -> DriftMonitor:
    return DriftMonitor(ref, agent_id="pi", model="vib", version="1", bundle_sha256="ab" * 32)


def flagged(report) -> list[str]:
    """The features this window flagged on its own (``drifted`` waits for ``consecutive`` flagged windows)."""
    return [f.name for f in report.features if f.flagged]


def flagged_windows(ref: DriftReference, X: np.ndarray) -> tuple[int, list]:
    reports = monitor(ref).observe(X)
    return len(reports), [flagged(r) for r in reports if flagged(r)]


@pytest.fixture(scope="module")
def train_rows() -> np.ndarray:
    return sensor_windows(np.random.default_rng(1), 400)


@pytest.fixture(scope="module")
def reference(train_rows) -> DriftReference:
    return build_reference(train_rows, NAMES, layout=window_layout(CHANNELS, STEPS))


def test_the_reference_holds_per_channel_summaries_and_the_layout(reference, train_rows):
    assert reference.format == 2 and reference.rows == 400 and reference.layout is not None
    assert (reference.layout.channels, reference.layout.steps) == (CHANNELS, STEPS)
    names = [f.name for f in reference.features]
    assert names[:6] == ["ch0.mean", "ch0.std", "ch0.min", "ch0.max", "ch0.energy", "ch0.values"]
    assert len(names) == 6 * CHANNELS  # not 128 per-step features
    values = reference.features[names.index("ch1.values")]
    assert sum(values.counts) == 400 * STEPS  # every sample of the channel
    assert values.mean == pytest.approx(train_rows[:, STEPS:2 * STEPS].mean())
    const = [f for f in reference.features if f.name.startswith("ch2.")]
    assert all(len(f.edges) == 1 for f in const)  # a constant channel: one value, one edge
    assert reference.features[names.index("ch2.std")].edges == [0.0]


def test_unshifted_windows_of_the_same_process_flag_nothing(reference):
    """The false-alarm rate under no shift, measured: 0 of 50 windows of 200 rows flag anything."""
    n, flagged = flagged_windows(reference, sensor_windows(np.random.default_rng(2), 50 * WINDOW))
    assert n == 50 and flagged == []


def test_the_old_per_step_reference_flags_unshifted_windows():
    """What the issue saw, for contrast: one feature per time step, 30 reference rows, no correction
    (the rule of the previous release) -- most unshifted windows flag some time step."""
    from edgeloop.agent.drift_stats import bin_counts, ks_binned, psi, psi_cutoff, quantile_edges

    rng = np.random.default_rng(3)
    ref_rows, X = sensor_windows(rng, 30), sensor_windows(rng, 20 * WINDOW)
    flagged = np.zeros(20, dtype=bool)
    for j in range(X.shape[1]):
        edges = quantile_edges(ref_rows[:, j], 20)
        r = bin_counts(ref_rows[:, j], edges)
        for w in range(20):
            c = bin_counts(X[w * WINDOW:(w + 1) * WINDOW, j], edges)
            flagged[w] |= psi(r, c) > psi_cutoff(0.2, r.size, 30, WINDOW) and ks_binned(r, c) > 0.15
    assert flagged.sum() >= 15, flagged.sum()
    ref = build_reference(ref_rows, NAMES, layout=window_layout(CHANNELS, STEPS))  # the same 30 rows, today
    assert flagged_windows(ref, X) == (20, [])


def test_a_small_reference_gives_no_false_alarms_only_less_power():
    """40 reference rows (a small training file): still nothing flagged unshifted; a big offset still seen."""
    rng = np.random.default_rng(4)
    ref_rows = sensor_windows(rng, 40)
    ref = build_reference(ref_rows, NAMES, layout=window_layout(CHANNELS, STEPS))
    n, flagged = flagged_windows(ref, sensor_windows(rng, 30 * WINDOW))
    assert n == 30 and flagged == []
    shifted = sensor_windows(rng, 5 * WINDOW, offset={3: 2.0 * channel_std(ref_rows, 3)})
    _, flagged = flagged_windows(ref, shifted)
    assert len(flagged) == 5 and all({name.split(".")[0] for name in f} == {"ch3"} for f in flagged)


@pytest.mark.parametrize("channel", [0, 1, 3])
def test_a_one_std_offset_flags_that_channel_and_only_it(reference, train_rows, channel):
    rng = np.random.default_rng(10 + channel)
    X = sensor_windows(rng, 20 * WINDOW, offset={channel: channel_std(train_rows, channel)})
    reports = monitor(reference).observe(X)
    assert len(reports) == 20
    for r in reports:
        channels = {name.split(".")[0] for name in flagged(r)}
        assert channels == {f"ch{channel}"}, flagged(r)
        assert f"ch{channel}.mean" in flagged(r) and f"ch{channel}.values" in flagged(r)
        assert r.alpha == reference.alpha
        by_name = {f.name: f for f in r.features}
        assert by_name[f"ch{channel}.mean"].p_value < 1e-6
        assert by_name[f"ch{channel}.std"].flagged is False  # an offset leaves the spread alone
    assert reports[0].drifted_features == []  # reported from the second flagged window in a row on
    assert all(f"ch{channel}.mean" in r.drifted_features for r in reports[1:])


def test_the_monitor_computes_what_the_builder_computed(reference, train_rows):
    """Observing the reference rows themselves gives back the reference counts (same summaries, same bins)."""
    ref = DriftReference.from_dict({**reference.to_dict(), "window": 400, "min_rows": 1})
    (rep,) = monitor(ref).observe(train_rows)
    assert [f.counts for f in rep.features] == [f.counts for f in reference.features]
    assert rep.drifted_features == []
    one_by_one = np.vstack([window_summaries(train_rows[i:i + 1], reference.layout) for i in range(50)])
    assert np.array_equal(one_by_one, window_summaries(train_rows[:50], reference.layout))  # batch size is moot


def test_tables_with_many_features_flag_nothing_unshifted():
    """Tables: 30 features (many tests per window), 50 windows of 200 rows -> 0 flagged windows."""
    rng = np.random.default_rng(5)
    names = [f"f{j}" for j in range(30)]

    def rows(n: int) -> np.ndarray:
        return np.column_stack([rng.normal(j, 1 + j % 3, n) if j % 2 else rng.exponential(1 + j % 4, n)
                                for j in range(30)])

    ref = build_reference(rows(2000), names)
    n, flagged = flagged_windows(ref, rows(50 * WINDOW))
    assert n == 50 and flagged == []
    shifted = rows(10 * WINDOW)
    shifted[:, 7] += 1 + 7 % 3  # one std
    _, flagged = flagged_windows(ref, shifted)
    assert flagged == [["f7"]] * 10


# --- the wire format ------------------------------------------------------------------------------------
def test_window_reference_round_trips_and_old_references_still_load(reference):
    from tests.onnx_models import classifier_onnx, manifest_for

    m = manifest_for(classifier_onnx(CHANNELS * STEPS, 2), features=NAMES, labels=["a", "b"], drift=reference)
    back = Manifest.from_bytes(m.to_bytes())
    assert back.drift == reference and back.drift.layout == reference.layout
    # a format-1 reference as an older hub wrote it: no format/rows/alpha/layout; it is judged per column
    old = {k: v for k, v in build_reference(np.random.default_rng(6).normal(size=(500, 2)), ["a", "b"])
           .to_dict().items() if k not in ("format", "rows", "alpha", "layout")}
    legacy = DriftReference.from_dict(old)
    assert (legacy.format, legacy.rows, legacy.alpha, legacy.layout) == (1, 0, 0.01, None)
    reports = monitor(legacy).observe(np.random.default_rng(7).normal(size=(10 * WINDOW, 2)))
    assert len(reports) == 10 and not any(r.drifted_features for r in reports)


def test_references_the_agent_cannot_read_are_refused_clearly(reference):
    newer = {**reference.to_dict(), "format": 3}
    with pytest.raises(UnsupportedSchemaError, match="drift reference format 3 .* upgrade the agent"):
        DriftReference.from_dict(newer)
    unknown = reference.to_dict()
    unknown["layout"] = {**unknown["layout"], "summaries": ["mean", "kurtosis"]}
    with pytest.raises(UnsupportedSchemaError, match="kurtosis.*upgrade the agent"):
        DriftReference.from_dict(unknown)
    renamed = reference.to_dict()
    renamed["features"] = [{**renamed["features"][0], "name": "ch0.average"}, *renamed["features"][1:]]
    with pytest.raises(MessageFormatError, match="layout's channel summaries"):
        DriftReference.from_dict(renamed)
    with pytest.raises(MessageFormatError, match="rows"):
        DriftReference.from_dict({k: v for k, v in reference.to_dict().items() if k != "rows"})
    with pytest.raises(MessageFormatError, match="layout needs format 2"):
        DriftReference.from_dict({k: v for k, v in reference.to_dict().items() if k != "format"})
    from tests.onnx_models import classifier_onnx, manifest_for

    with pytest.raises(MessageFormatError, match="does not cover the 64 input features"):
        Manifest.from_bytes(manifest_for(classifier_onnx(64, 2), features=NAMES[:64], labels=["a", "b"],
                                         drift=reference).to_bytes())
    bad = DriftReference.from_dict(reference.to_dict())
    bad.features = bad.features[::-1]
    with pytest.raises(BundleFormatError, match="window layout's channel summaries"):
        monitor(bad)


# --- the hub's view -----------------------------------------------------------------------------------
def test_drift_lines_group_windows_per_channel_in_natural_order():
    flagged = {"ch10.mean": 3, "ch2.values": 5, "ch2.mean": 5, "ch0_t14": 1, "ch0_t2": 2, "temp": 4}
    flagged.update({f"ch1_t{t}": 1 for t in range(40)})  # an older per-step reference
    summary = {"agent_id": "pi", "model": "vib", "version": "1", "windows": 5, "rows": 1000, "drifting_now": ["x"],
               "last_received_at": None, "drifted_features": flagged, "max_psi": {"ch2.values": 1.5, "ch2.mean": 2.5}}
    lines = views.drift_lines([summary])
    assert [line.split()[0] for line in lines[1:]] == ["ch0", "ch1", "ch2", "ch10", "temp"]
    assert lines[1].endswith("(ch0_t2 2, ch0_t14 1)")
    assert "+34 more" in lines[2] and len(lines) == 6
    assert "flagged in 5 window(s), max PSI 2.50 (mean 5, values 5)" in lines[3]
    capped = views.drift_lines([summary], limit=2)
    assert capped[-1] == "    ... and 3 more flagged (see --json)"


# --- end to end: the hub builds the reference, the agent judges with it ---------------------------------
def test_a_hub_built_window_bundle_feeds_the_agent_monitor(tmp_path):
    """Train a tiny CNN version on window data with the real hub, pack and verify its signed bundle,
    and feed the agent's DriftMonitor from the verified manifest."""
    from edgeloop.agent.wire.bundle import verify_bundle
    from edgeloop.agent.wire.envelope import TrustedKeys
    from edgeloop.hub.datasets import Dataset
    from edgeloop.hub.services import Hub
    from edgeloop.hub.training import TrainParams

    rng = np.random.default_rng(20)
    X = sensor_windows(rng, 240)
    y = (X[:, 3 * STEPS:].mean(axis=1) > 21.0).astype(np.int64)  # the class shows in channel 3's level
    ds = Dataset(NAMES, X, y, ["low", "high"], window_shape=(CHANNELS, STEPS), source="windows.csv")
    hub = Hub(tmp_path / "hub", actor="tests")
    build = hub.build_version(ds, hub.register_dataset(ds, "windows"), "vib",
                              TrainParams(epochs=2, channels=(4,), hidden=(8,), seed=0), quantize=False)
    bundle = hub.build_bundle(build.id)
    manifest = verify_bundle(bundle.path.read_bytes(), TrustedKeys.of([hub.key.public])).manifest
    ref = manifest.drift
    assert ref is not None and ref.layout is not None and ref.format == 2
    assert (ref.layout.channels, ref.layout.steps, ref.layout.channel_names) == (4, 32, ["ch0", "ch1", "ch2", "ch3"])
    assert ref.rows == 240  # every training row, not a sample
    assert len(ref.features) == 24 and manifest.feature_names == NAMES

    n, flagged = flagged_windows(ref, sensor_windows(np.random.default_rng(21), 20 * WINDOW))
    assert n == 20 and flagged == []
    shifted = sensor_windows(np.random.default_rng(22), 5 * WINDOW, offset={1: channel_std(X, 1)})
    _, flagged = flagged_windows(ref, shifted)
    assert len(flagged) == 5 and all({name.split(".")[0] for name in f} == {"ch1"} for f in flagged)
