"""Model factory training: scikit-learn's bundled datasets, regression, run files, determinism, progress, cancel.

Real torch training on small data. Also home of the small data builders the
other factory tests import (``window_dataset``, ``regression_dataset``); both
build real :class:`edgeloop.hub.datasets.Dataset` objects.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeloop.hub.datasets import Dataset, split_dataset
from edgeloop.hub.errors import CancelledError, DataValidationError, TrainingError
from edgeloop.hub.export import (
    check_parity,
    export_onnx,
    make_session,
    quantization_report,
    quantize_static_int8,
)
from edgeloop.hub.progress import CancelToken, ProgressEvent
from edgeloop.hub.training import (
    CNN1D,
    MLPClassifier,
    MLPRegressor,
    TrainParams,
    build_model,
    load_model,
    make_splits,
    regression_metrics,
    save_model,
    standardization_stats,
    train_classifier,
    train_model,
)

sk_datasets = pytest.importorskip("sklearn.datasets")


# --------------------------------------------------------------------------
# data builders (shared with the other factory tests)
# --------------------------------------------------------------------------


def _dataset(feature_names, X, y, labels, window_shape=None, **kw) -> Dataset:
    """A real :class:`edgeloop.hub.datasets.Dataset` (with ``window_shape`` when given)."""
    shape = tuple(window_shape) if window_shape is not None else None
    return Dataset(list(feature_names), X, y, labels, window_shape=shape, **kw)


def regression_dataset(feature_names, X, y, window_shape=None, source="test") -> Dataset:
    """A real :class:`edgeloop.hub.datasets.Dataset` with ``task="regression"`` (float32 target, no labels)."""
    ds = _dataset(feature_names, X, np.asarray(y, dtype=np.float32), [], window_shape, label_column="target",
                  task="regression", source=source)
    assert ds.task == "regression" and ds.y.dtype == np.float32 and ds.labels == []
    return ds


def window_dataset(n: int = 900, seed: int = 0, channels: int = 3, steps: int = 48, *, task: str = "classification"):
    """Multichannel sensor windows stored flat, channel-major: ``X[:, c * steps + t]``.

    Classification: class 0 is noise; class 1 has a short fast oscillation
    (period 4) in channel 0, class 2 a slower one (period 8) in channel 1, each
    at a random position and phase -- translation-invariant patterns a CNN
    finds and a per-column model hardly does. Regression: the target is the
    amplitude of the burst in channel 0. Channels have very different offsets
    and spreads (like temperature / vibration / pressure), and channel 2
    carries an irrelevant random trend.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(16)
    W = rng.normal(0.0, 0.6, (n, channels, steps))
    W[:, channels - 1] += np.linspace(0.0, 1.0, steps) * rng.normal(0.0, 0.5, (n, 1))
    y = rng.integers(0, 3, n) if task == "classification" else rng.uniform(0.2, 2.0, n)
    for i in range(n):
        pos, ph = rng.integers(0, steps - 16), rng.uniform(0, 2 * np.pi)
        if task == "regression":
            W[i, 0, pos:pos + 16] += y[i] * np.sin(2 * np.pi * t / 4 + ph)
        elif y[i] == 1:
            W[i, 0, pos:pos + 16] += 1.5 * np.sin(2 * np.pi * t / 4 + ph)
        elif y[i] == 2:
            W[i, 1, pos:pos + 16] += 1.5 * np.sin(2 * np.pi * t / 8 + ph)
    offsets = np.array([20.0, 0.5, 300.0, 5.0][:channels] + [0.0] * max(0, channels - 4))
    scales = np.array([2.0, 0.1, 10.0, 1.0][:channels] + [1.0] * max(0, channels - 4))
    W = W * scales[None, :, None] + offsets[None, :, None]
    names = [f"ch{c}_t{s}" for c in range(channels) for s in range(steps)]  # hub.windows' naming
    X = W.reshape(n, channels * steps).astype(np.float32)
    if task == "regression":
        return regression_dataset(names, X, y, (channels, steps), source=f"windows(seed={seed})")
    return _dataset(names, X, y.astype(np.int64), ["idle", "fast", "slow"], (channels, steps),
                    source=f"windows(seed={seed})")


def sklearn_dataset(name: str) -> Dataset:
    """A bundled scikit-learn classification set as a hub Dataset (constant columns dropped)."""
    d = getattr(sk_datasets, f"load_{name}")()
    X = np.asarray(d.data, dtype=np.float32)
    keep = X.std(axis=0) > 0  # e.g. digits' always-blank border pixels; validation refuses constant columns
    names = [str(d.feature_names[i]) if hasattr(d, "feature_names") and d.feature_names is not None
             else f"f{i}" for i in np.nonzero(keep)[0]]
    labels = [str(v) for v in d.target_names]
    return Dataset(names, X[:, keep], np.asarray(d.target, dtype=np.int64), labels, source=f"sklearn.{name}")


# --------------------------------------------------------------------------
# classification on scikit-learn's bundled datasets
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    ds = sklearn_dataset("digits")
    splits = split_dataset(ds, 0)
    return ds, splits, train_model(ds, splits, TrainParams(epochs=60, patience=10, seed=0))


def test_digits_mlp_reaches_95_percent_and_int8_stays_within_a_point(digits):
    ds, splits, result = digits
    m = result.metrics
    assert m["test_accuracy"] >= 0.95, m["test_accuracy"]
    assert m["test_macro_f1"] >= 0.94
    assert np.array(m["confusion_matrix"]).shape == (10, 10)
    assert isinstance(result.model, MLPClassifier) and result.task == "classification"
    fp32 = export_onnx(result.model, ds.n_features, parity_X=ds.X[splits.test[:64]])
    int8 = quantize_static_int8(fp32, ds.X[splits.train[:400]])
    rep = quantization_report(fp32, int8, ds.X[splits.test], ds.y[splits.test], latency_runs=30)
    assert rep["fp32_accuracy"] == pytest.approx(m["test_accuracy"], abs=1e-9)
    assert rep["metric_drop_points"] <= 1.0, rep
    assert rep["prediction_agreement"] >= 0.98


@pytest.mark.parametrize("name, floor", [("wine", 0.9), ("breast_cancer", 0.93)])
def test_wine_and_breast_cancer_train_fine(name, floor):
    ds = sklearn_dataset(name)
    splits = split_dataset(ds, 0)
    r = train_model(ds, splits, TrainParams(epochs=60, patience=10, seed=0))
    assert r.metrics["test_accuracy"] >= floor, r.metrics
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert r.samples_per_s > 0


# --------------------------------------------------------------------------
# regression
# --------------------------------------------------------------------------


def test_diabetes_regression_reports_mae_rmse_r2_and_exports_with_parity():
    d = sk_datasets.load_diabetes()
    ds = regression_dataset([str(n) for n in d.feature_names], d.data, d.target, source="sklearn.diabetes")
    splits = make_splits(ds, 0)
    events: list[ProgressEvent] = []
    r = train_model(ds, splits, TrainParams(epochs=60, patience=10, hidden=(32,), seed=0), progress=events.append)
    m = r.metrics
    assert isinstance(r.model, MLPRegressor) and r.task == "regression" and r.labels == []
    assert {"test_mae", "test_rmse", "test_r2", "val_mae", "val_rmse", "val_r2"} <= set(m)
    y_test = ds.y[splits.test]
    assert m["test_r2"] > 0.25  # the classic diabetes data: R² around 0.4 for good models
    assert m["test_mae"] <= m["test_rmse"] < float(np.std(y_test))
    assert set(r.history[0]) == {"epoch", "train_loss", "val_loss", "val_mae", "val_rmse"}
    assert set(events[0].metrics) == {"train_loss", "val_loss", "val_mae", "val_rmse"}
    with torch.no_grad():
        pred = r.model(torch.from_numpy(ds.X[splits.test])).numpy()
    assert pred.shape == (len(splits.test), 1)  # the agent's "prediction" [-1, 1]
    ref = regression_metrics(y_test, pred[:, 0])
    assert ref["rmse"] == pytest.approx(m["test_rmse"], rel=1e-5)
    skm = pytest.importorskip("sklearn.metrics")
    assert ref["r2"] == pytest.approx(skm.r2_score(y_test, pred[:, 0]), rel=1e-6)
    assert ref["mae"] == pytest.approx(skm.mean_absolute_error(y_test, pred[:, 0]), rel=1e-6)
    # the target's scale lives in the graph: outputs are in the target's unit
    assert abs(float(pred.mean()) - float(y_test.mean())) < 30
    onnx_bytes = export_onnx(r.model, ds.n_features)
    sess = make_session(onnx_bytes)
    assert [o.name for o in sess.get_outputs()] == ["prediction"]
    par = check_parity(r.model, onnx_bytes, ds.X[splits.test])
    assert par["max_abs_diff_batch1"] <= 1e-3 and par["max_abs_diff_batchN"] <= 1e-3


def test_linear_target_is_learned_almost_exactly():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(600, 8)) * np.arange(1, 9) + 100.0
    w = rng.normal(size=8)
    y = (X - 100.0) @ w + 50.0 + rng.normal(0.0, 0.3, 600)
    ds = regression_dataset([f"x{i}" for i in range(8)], X, y)
    r = train_model(ds, make_splits(ds, 0), TrainParams(epochs=60, patience=10, seed=0))
    assert r.metrics["test_r2"] > 0.98 and r.metrics["test_rmse"] < 0.1 * float(np.std(y))


def test_regression_target_must_be_usable():
    ds = regression_dataset([f"x{i}" for i in range(3)], np.random.default_rng(0).normal(size=(60, 3)), np.ones(60))
    with pytest.raises(DataValidationError, match="nothing to learn"):
        train_model(ds, make_splits(ds, 0), TrainParams(epochs=1))
    with pytest.raises(TrainingError, match="regression"):
        y = np.random.default_rng(0).normal(size=60)
        good = regression_dataset([f"x{i}" for i in range(3)], np.random.default_rng(1).normal(size=(60, 3)), y)
        train_classifier(good, make_splits(good, 0), TrainParams(epochs=1))


# --------------------------------------------------------------------------
# the factory, determinism, progress, cancel
# --------------------------------------------------------------------------


def test_build_model_covers_every_kind_and_refuses_nonsense():
    x = torch.randn(5, 12)
    for task, n_out, shape in (("classification", 3, (5, 3)), ("regression", 1, (5, 1))):
        for arch in ("mlp", "cnn1d"):
            m = build_model(task, 12, n_out, arch=arch, window_shape=(3, 4), hidden=(8,), channels=(4, 4),
                            kernel_size=3).eval()
            assert m.task == task and m.arch == arch and m(x).shape == shape
            again = load_model(save_model(m, _tmp_file(f"{task}-{arch}.pt")))
            assert torch.equal(again(x), m(x))
    with pytest.raises(TrainingError, match="window_shape"):
        build_model("classification", 12, 3, arch="cnn1d")
    with pytest.raises(TrainingError, match="covers 10 values"):
        build_model("classification", 12, 3, arch="cnn1d", window_shape=(2, 5))
    with pytest.raises(TrainingError, match="1 output"):
        build_model("regression", 12, 2)
    with pytest.raises(TrainingError, match="unknown architecture"):
        build_model("classification", 12, 3, arch="transformer")
    mean, _ = standardization_stats(np.arange(24, dtype=np.float32).reshape(2, 12), (3, 4), per="channel")
    assert mean.shape == (12,) and len(set(mean[:4].tolist())) == 1 and mean[4] != mean[0]


def _tmp_file(name: str):
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="edgeloop-test-")) / name


def test_same_seed_gives_identical_metrics_for_every_kind():
    win = window_dataset(300, seed=1)
    reg = window_dataset(300, seed=2, task="regression")
    for ds, params in ((win, TrainParams(arch="cnn1d", epochs=3, channels=(8, 8), seed=4)),
                       (reg, TrainParams(arch="cnn1d", epochs=3, channels=(8,), seed=4)),
                       (reg, TrainParams(arch="mlp", epochs=3, seed=4))):
        splits = make_splits(ds, 0)
        a = train_model(ds, splits, params)
        b = train_model(ds, splits, params)
        assert a.metrics == b.metrics and a.history == b.history
        for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
            assert ka == kb and torch.equal(va, vb)


def test_progress_and_cancel_work_for_cnn_training():
    ds = window_dataset(300, seed=1)
    splits = split_dataset(ds, 0)
    token = CancelToken()
    seen: list[ProgressEvent] = []

    def cancel_after_two(event: ProgressEvent) -> None:
        seen.append(event)
        if event.done == 2:
            token.cancel()

    threads = torch.get_num_threads()
    with pytest.raises(CancelledError, match="cancelled"):
        train_model(ds, splits, TrainParams(arch="cnn1d", epochs=20, channels=(8,)), progress=cancel_after_two,
                    cancel=token)
    assert [e.done for e in seen] == [1, 2] and all(e.total == 20 and e.stage == "train" for e in seen)
    assert set(seen[0].metrics) == {"train_loss", "val_loss", "val_accuracy"}
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()


def test_cnn_needs_a_window_shape():
    ds = sklearn_dataset("wine")
    with pytest.raises(TrainingError, match="window_shape"):
        train_model(ds, split_dataset(ds, 0), TrainParams(arch="cnn1d", epochs=1))


# --------------------------------------------------------------------------
# run files
# --------------------------------------------------------------------------


def test_run_files_json_and_toml(tmp_path):
    j = tmp_path / "run.json"
    j.write_text(json.dumps({"arch": "cnn1d", "channels": [8, 16], "epochs": 12, "lr": 0.001, "seed": 3}))
    p = TrainParams.from_file(j)
    assert (p.arch, p.channels, p.epochs, p.lr, p.seed, p.hidden) == ("cnn1d", (8, 16), 12, 0.001, 3, (64, 32))
    t = tmp_path / "run.toml"
    t.write_text('[train]\narch = "mlp"\nhidden = [32]\nbatch_size = 32\nweight_decay = 0\npatience = 4\n')
    q = TrainParams.from_file(t)
    assert (q.hidden, q.batch_size, q.weight_decay, q.patience) == ((32,), 32, 0.0, 4)
    assert TrainParams.from_dict(q.to_dict()) == q  # a run record's params load back


def test_run_file_with_an_unknown_key_fails_clearly(tmp_path):
    t = tmp_path / "run.toml"
    t.write_text('epochs = 10\nlearning_rate = 0.01\n')
    with pytest.raises(TrainingError) as err:
        TrainParams.from_file(t)
    msg = str(err.value)
    assert "unknown key 'learning_rate'" in msg and str(t) in msg and "Known keys:" in msg and "'lr'" in msg
    with pytest.raises(TrainingError, match="epochs must be an integer"):
        TrainParams.from_dict({"epochs": "ten"})
    with pytest.raises(TrainingError, match="hidden must be a list of integers"):
        TrainParams.from_dict({"hidden": 64})
    with pytest.raises(TrainingError, match="arch='resnet'"):
        TrainParams.from_dict({"arch": "resnet"})
    bad = tmp_path / "run.json"
    bad.write_text("{epochs: 3}")
    with pytest.raises(TrainingError, match="not valid JSON"):
        TrainParams.from_file(bad)
    with pytest.raises(TrainingError, match=".json or .toml"):
        TrainParams.from_file(tmp_path / "run.yaml")
    with pytest.raises(TrainingError, match="does not exist"):
        TrainParams.from_file(tmp_path / "missing.toml")


def test_cnn_model_type_and_window_metadata():
    ds = window_dataset(300, seed=1)
    r = train_model(ds, split_dataset(ds, 0), TrainParams(arch="cnn1d", epochs=2, channels=(8,)))
    assert isinstance(r.model, CNN1D) and r.window_shape == (3, 48)
    rec = r.to_dict()
    assert rec["model_config"]["window_shape"] == [3, 48] and rec["params"]["arch"] == "cnn1d"
