"""Continual learning: seeded reservoir replay and EWC, forgetting measured on the parent's test split.

Setup where plain fine-tuning clearly forgets: the parent learns all three
pump conditions; the new data come from a drifted process (shift=1: the
thermometer and the mount moved by one standard deviation) and contain only
two of the classes (no "overheating" rows -- a class-imbalanced subset, as
when the data captured after a drift alarm show mostly healthy machines).
Fine-tuned on that alone, the model unlearns "overheating".
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeloop.agent.runtime import ModelRunner
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.hub.datasets import (
    SENSOR_LABELS,
    Dataset,
    dataset_sha256,
    generate_sensor_data,
    split_dataset,
)
from edgeloop.hub.errors import DataValidationError, TrainingError
from edgeloop.hub.pipeline import ParentSpec, build_bundle, build_version
from edgeloop.hub.registry import Registry
from edgeloop.hub.training import (
    EWCPenalty,
    TrainParams,
    fine_tune,
    make_splits,
    reservoir_sample,
    train_model,
)

FINE = TrainParams(epochs=15, patience=15, seed=0)


@pytest.fixture(scope="module")
def parent():
    data = generate_sensor_data(1500, seed=1)
    splits = split_dataset(data, 0)
    return data, splits, train_model(data, splits, TrainParams(epochs=30, patience=6, seed=0))


def _without_overheating(ds: Dataset) -> Dataset:
    keep = ds.y != SENSOR_LABELS.index("overheating")
    return Dataset(ds.feature_names, ds.X[keep], ds.y[keep], ds.labels, source=ds.source + " minus overheating")


@pytest.fixture(scope="module")
def new_data():
    return _without_overheating(generate_sensor_data(900, seed=7, shift=1.0))


def test_reservoir_is_seeded_uniform_and_one_pass():
    a = reservoir_sample(np.arange(100, 1100), 50, seed=3)
    assert a.shape == (50,) and len(set(a.tolist())) == 50 and set(a.tolist()) <= set(range(100, 1100))
    assert np.array_equal(a, reservoir_sample(np.arange(100, 1100), 50, seed=3))
    assert not np.array_equal(a, reservoir_sample(np.arange(100, 1100), 50, seed=4))
    assert np.array_equal(reservoir_sample(7, 10, seed=0), np.arange(7))  # fewer items than slots: all of them
    assert reservoir_sample(7, 0, seed=0).size == 0
    # uniform: every item kept with probability k/n (here 0.2), late items as often as early ones
    hits = np.zeros(100)
    for s in range(2000):
        hits[reservoir_sample(100, 20, seed=s)] += 1
    share = hits / 2000
    assert abs(share.mean() - 0.2) < 1e-9 and share.min() > 0.14 and share.max() < 0.26
    assert abs(share[:50].mean() - share[50:].mean()) < 0.02


def test_replay_forgets_less_than_plain_fine_tuning(parent, new_data):
    data, splits, base = parent
    plain = fine_tune(base.model, data, splits, new_data, FINE, replay_size=0)
    replay = fine_tune(base.model, data, splits, new_data, FINE, replay_size=500)
    assert plain.parent_before == replay.parent_before == pytest.approx(base.metrics["test_accuracy"])
    assert plain.forgetting > 0.15, plain.summary()  # plain fine-tuning clearly forgets (about 25 points)
    assert replay.forgetting < plain.forgetting - 0.10, (plain.summary(), replay.summary())
    for r in (plain, replay):  # both learn the new data
        assert r.new_after > r.new_before + 0.2 and r.new_after > 0.9
        assert r.forgetting == pytest.approx(r.parent_before - r.parent_after)
        c = r.metrics["continual"]
        assert c["forgetting"] == r.metrics["forgetting"] == pytest.approx(r.forgetting)
        assert c["metric"] == "accuracy" and c["parent_test_before"] == r.parent_before
        assert c["new_test_after"] == r.new_after and c["new_test_before"] == r.new_before
    assert (plain.replay_rows, replay.replay_rows) == (0, 500)
    # the parent model itself is untouched
    assert torch.equal(base.model.body[0].weight, parent[2].model.body[0].weight)


def test_fine_tuning_is_deterministic(parent, new_data):
    data, splits, base = parent
    a = fine_tune(base.model, data, splits, new_data, FINE, replay_size=300, ewc_lambda=100.0, seed=5)
    b = fine_tune(base.model, data, splits, new_data, FINE, replay_size=300, ewc_lambda=100.0, seed=5)
    assert a.summary() == b.summary() and a.metrics == b.metrics and a.train.history == b.train.history
    c = fine_tune(base.model, data, splits, new_data, FINE, replay_size=300, ewc_lambda=100.0, seed=6)
    assert c.train.history != a.train.history


def test_ewc_anchors_the_weights(parent, new_data):
    data, splits, base = parent
    ewc = EWCPenalty.from_data(base.model, data.X[splits.train], data.y[splits.train], 1.0, max_rows=400)
    assert set(ewc.fisher) == {n for n, _ in base.model.named_parameters()}
    assert all(bool((f >= 0).all()) for f in ewc.fisher.values())
    assert sum(float(f.sum()) for f in ewc.fisher.values()) > 0
    assert float(ewc.penalty(base.model).detach()) == 0.0  # at the anchor
    plain = fine_tune(base.model, data, splits, new_data, FINE, replay_size=0)
    strong = fine_tune(base.model, data, splits, new_data, FINE, replay_size=0, ewc_lambda=1e4)
    assert strong.forgetting < plain.forgetting - 0.10
    assert "ewc_penalty" in strong.train.history[0]


def test_fine_tune_refuses_mismatched_data(parent):
    data, splits, base = parent
    other = Dataset(["a", "b", "c", "d", "e", "f"], data.X, data.y, data.labels)
    with pytest.raises(TrainingError, match="feature names"):
        fine_tune(base.model, data, splits, other, FINE)
    relabeled = Dataset(data.feature_names, data.X, data.y, ["a", "b", "c"])
    with pytest.raises(DataValidationError, match="unseen in training") as exc:  # classes the parent never saw
        fine_tune(base.model, data, splits, relabeled, FINE)
    assert {p.rule for p in exc.value.problems} == {"unseen_label"}


# --------------------------------------------------------------------------
# the pipeline's parent path
# --------------------------------------------------------------------------


def _register(reg: Registry, ds) -> dict:
    return reg.add_dataset(ds.sha256, ds.source or "data", ds.source or "memory", ds.n_rows, ds.feature_names,
                           ds.labels)


def test_build_version_with_a_parent_records_lineage_and_forgetting(tmp_path, new_data):
    data = generate_sensor_data(900, seed=1)
    assert data.sha256 == dataset_sha256(data.feature_names, data.X, data.y, data.labels, data.label_column)
    with Registry(tmp_path / "registry.sqlite") as reg:
        v1 = build_version(reg, tmp_path / "models", data, _register(reg, data), "pump", TrainParams(epochs=10))
        assert (v1.folder / "model.pt").exists()
        v2 = build_version(reg, tmp_path / "models", new_data, _register(reg, new_data), "pump", FINE,
                           parent=ParentSpec(v1.id, data, replay_size=300))
        rec = reg.get_version(v2.id)
        assert rec["parent_version"] == v1.id
        assert rec["metrics"]["continual"]["replay_rows"] == 300 and "forgetting" in rec["metrics"]
        assert v2.continual == rec["metrics"]["continual"]
        run = reg.get_run(v2.run["id"])
        assert run["params"]["continual"]["parent_version"] == v1.id
        meta = json.loads((v2.folder / "meta.json").read_text())
        assert meta["parent_version"] == v1.id and meta["continual"]["metric"] == "accuracy"
        b = build_bundle(reg, tmp_path / "models", tmp_path / "bundles", v2.id, SigningKey.generate())
        assert b.manifest.lineage["parent_version"] == v1.id
        model_bytes = (v2.folder / f"model.{rec['chosen']}.onnx").read_bytes()
        ModelRunner.load(b.manifest, model_bytes).smoke_test()
        with pytest.raises(TrainingError, match="not the one"):
            build_version(reg, tmp_path / "models", new_data, _register(reg, new_data), "pump", FINE,
                          parent=ParentSpec(v1.id, new_data))


def test_fine_tune_regression_cnn_with_replay_and_ewc():
    from tests.test_train_factory import window_dataset

    old = window_dataset(400, seed=3, task="regression")
    new = window_dataset(300, seed=4, task="regression")
    old_splits = make_splits(old, 0)
    base = train_model(old, old_splits, TrainParams(arch="cnn1d", channels=(8, 8), epochs=10, seed=0))
    res = fine_tune(base.model, old, old_splits, new, TrainParams(arch="cnn1d", epochs=3, seed=0),
                    replay_size=100, ewc_lambda=10.0)
    assert res.metric == "r2" and res.replay_rows == 100
    assert set(res.metrics["continual"]) >= {"parent_test_before", "parent_test_after", "forgetting",
                                             "new_test_before", "new_test_after"}
    assert {"test_rmse", "test_r2", "test_mae"} <= set(res.metrics)
    assert res.train.history[0]["ewc_penalty"] >= 0 and res.model.task == "regression"
    # the parent's input and target scaling are kept, so replayed rows mean what they meant
    assert torch.equal(res.model.standardize.mean, base.model.standardize.mean)
    assert torch.equal(res.model.target.std, base.model.target.std)
