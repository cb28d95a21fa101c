"""Calibration at training time: temperature scaling fitted on the validation split, inside the exported graph.

Real PyTorch training, real ONNX export and static int8 quantization, real onnxruntime: on the
shipped sample table (the pipeline, through the session's trained hub), an scikit-learn table
(digits) and windowed sensor data (1D-CNN), the test split's expected calibration error after
calibration is at most 0.05 and the accuracy moves by at most 0.5 point -- in torch, in the fp32
graph and in the int8 graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeloop.agent.wire.bundle import inspect_bundle
from edgeloop.hub.datasets import Dataset, generate_sensor_windows
from edgeloop.hub.export import evaluate_onnx, export_onnx, quantize_static_int8
from edgeloop.hub.training import TrainParams, make_splits, train_model
from edgeloop.hub.training.calibration import (
    TemperatureScaled,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    softmax,
)

ECE_MAX = 0.05
ACCURACY_TOLERANCE = 0.005


# --- the math -------------------------------------------------------------------------------------
def test_fit_temperature_recovers_the_temperature_that_generated_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (20_000, 4))
    for t0 in (0.5, 2.0):
        p = softmax(logits, t0)
        y = (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)
        assert fit_temperature(logits, y) == pytest.approx(t0, rel=0.05)


def test_ece_and_reliability_bins_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    y = np.array([0, 1, 1, 1])
    bins = reliability_bins(probs, y, bins=2)  # [0, .5): none; [.5, 1]: all four rows
    assert [b["rows"] for b in bins] == [0, 4]
    assert bins[1]["confidence"] == pytest.approx((0.9 + 0.8 + 0.7 + 0.55) / 4)
    assert bins[1]["accuracy"] == pytest.approx(0.75)
    assert expected_calibration_error(probs, y, bins=2) == pytest.approx(abs(0.75 - 2.95 / 4))


# --- real models ------------------------------------------------------------------------------------
def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    return Dataset(feature_names=[f"px{i}" for i in range(d.data.shape[1])], X=d.data.astype(np.float32),
                   y=d.target.astype(np.int64), labels=[str(i) for i in range(10)], source="sklearn:digits")


def _check_graphs(cal, ds: Dataset, splits, per_channel: bool) -> dict:
    Xt, yt = ds.X[splits.test], ds.y[splits.test]
    fp32 = export_onnx(cal.model, ds.n_features, parity_X=Xt[:64])
    int8 = quantize_static_int8(fp32, ds.X[splits.train][:400], per_channel=per_channel)
    torch_acc = cal.figures["accuracy_before"]
    out = {}
    for name, graph in (("fp32", fp32), ("int8", int8)):
        ev = evaluate_onnx(graph, Xt, yt)
        out[name] = ece = expected_calibration_error(ev["probabilities"], yt)
        assert ece <= ECE_MAX, f"{name} graph: test ECE {ece:.4f}"
        assert abs(ev["accuracy"] - torch_acc) <= ACCURACY_TOLERANCE, (name, ev["accuracy"], torch_acc)
    if cal.method == "temperature":  # the division is in the graph: the served probabilities are the calibrated ones
        served = evaluate_onnx(fp32, Xt[:32], yt[:32])["probabilities"]
        uncalibrated = evaluate_onnx(export_onnx(cal.model.model, ds.n_features), Xt[:32], yt[:32])["probabilities"]
        assert np.allclose(served, softmax(np.log(np.clip(uncalibrated, 1e-30, 1)), cal.temperature), atol=2e-4)
    return out


@pytest.mark.parametrize("name", ["sklearn-digits", "sensor-windows"])
def test_calibrated_graphs_fp32_and_int8_meet_the_ece_bound(name):
    if name == "sklearn-digits":
        ds, params = _digits(), TrainParams(epochs=15, seed=0)
    else:
        ds, params = generate_sensor_windows(1200, seed=3), TrainParams(epochs=8, seed=0)
    splits = make_splits(ds, 0, (0.6, 0.15, 0.25))
    res = train_model(ds, splits, params)
    cal = calibrate(res.model, ds.X[splits.val], ds.y[splits.val], ds.X[splits.test], ds.y[splits.test])
    f = cal.figures
    assert f["ece_after"] <= ECE_MAX, f
    assert f["val_ece_after"] <= f["val_ece_before"]  # chosen by measurement on the validation split
    assert abs(f["accuracy_after"] - f["accuracy_before"]) <= ACCURACY_TOLERANCE
    assert sum(b["rows"] for b in f["reliability_after"]) == splits.test.size
    _check_graphs(cal, ds, splits, per_channel=ds.window_shape is not None)


def test_pipeline_records_calibration_in_run_registry_and_manifest(trained):
    """The sample table through the real pipeline: figures in the run and the version, both graphs
    checked, and the bundle's manifest carries the performance reference."""
    hub = trained.hub
    version = hub.registry.get_version(trained.v1.id)
    run = hub.registry.get_run(version["run_id"])
    assert run["metrics"]["calibration"]["method"] in ("temperature", "none")
    cal = version["metrics"]["calibration"]
    assert cal["ece_after"] <= ECE_MAX and cal["split"] == "test"
    assert abs(cal["accuracy_after"] - cal["accuracy_before"]) <= ACCURACY_TOLERANCE
    assert set(cal["onnx"]) >= {"fp32"}
    for name, g in cal["onnx"].items():  # fp32 and (when quantized) int8 alike
        assert g["ece"] <= ECE_MAX, (name, g["ece"])
        assert abs(g["accuracy"] - cal["accuracy_after"]) <= ACCURACY_TOLERANCE, name
    assert "int8" in cal["onnx"], "the pipeline quantizes by default: both graphs are checked"
    manifest = inspect_bundle(Path(trained.b1.path).read_bytes())[0]
    perf = manifest.performance
    assert perf is not None and perf.labels == manifest.labels
    assert perf.calibration["method"] == cal["method"] and perf.split == "test"
    assert abs(perf.accuracy - perf.estimated_accuracy) <= ECE_MAX  # calibrated: estimate ~ measured
    assert [c.label for c in perf.per_class] == manifest.labels
    meta = json.loads((hub.home.models_dir / version["model_name"] / version["version"] / "meta.json").read_text())
    assert meta["performance"] == perf.to_dict()


def test_temperature_scaled_refuses_a_bad_temperature():
    from edgeloop.hub.errors import TrainingError
    from edgeloop.hub.training import build_model

    with pytest.raises(TrainingError, match="positive"):
        TemperatureScaled(build_model("classification", 3, 2), 0.0)
