"""Export and quantization of every model kind: 1D-CNN windows, regression, dynamic int8, parity report, policy.

Real torch training and real onnxruntime on small synthetic data.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgeloop.hub.datasets import split_dataset
from edgeloop.hub.errors import ExportError
from edgeloop.hub.export import (
    DEFAULT_OPSET,
    check_parity,
    decide_quantization,
    evaluate_onnx,
    export_onnx,
    make_session,
    quantization_report,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from edgeloop.hub.training import CNN1D, TrainParams, build_model, make_splits, train_model
from tests.test_train_factory import window_dataset

CNN = TrainParams(arch="cnn1d", epochs=25, patience=6, channels=(16, 32), seed=0)


@pytest.fixture(scope="module")
def windows():
    ds = window_dataset(900, seed=0)
    splits = split_dataset(ds, 0)
    return ds, splits, train_model(ds, splits, CNN)


@pytest.fixture(scope="module")
def cnn_fp32(windows):
    ds, splits, result = windows
    return export_onnx(result.model, ds.n_features, parity_X=ds.X[splits.test[:32]])


def _dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_cnn_learns_windows_well_above_chance(windows):
    result = windows[2]
    assert isinstance(result.model, CNN1D)
    assert result.metrics["test_accuracy"] >= 0.85  # chance is ~0.33
    # standardization is per channel: one mean per channel, repeated over its steps
    mean = result.model.standardize.mean.numpy()[0].reshape(3, 48)
    assert np.allclose(mean, mean[:, :1]) and not np.allclose(mean[0, 0], mean[2, 0])


def test_cnn_export_dynamic_batch_reshape_inside_and_parity(windows, cnn_fp32):
    ds, splits, result = windows
    proto = onnx.load_from_string(cnn_fp32)
    onnx.checker.check_model(proto)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [DEFAULT_OPSET]
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("features", "probabilities")
    assert isinstance(_dims(inp)[0], str) and _dims(inp)[1] == 144 and _dims(out)[1] == 3
    ops = [n.op_type for n in proto.graph.node]
    assert ops[:2] == ["Sub", "Div"] and "Reshape" in ops and "Conv" in ops and ops[-1] == "Softmax"
    session = make_session(cnn_fp32)
    for batch in (1, 7, 64):
        probs = session.run(None, {"features": ds.X[:batch]})[0]
        assert probs.shape == (batch, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    par = check_parity(result.model, cnn_fp32, ds.X[splits.test[:64]])
    assert par["max_abs_diff_batch1"] <= 1e-4 and par["max_abs_diff_batchN"] <= 1e-4


def test_cnn_dynamo_export_is_equivalent(windows, cnn_fp32):
    ds, splits, result = windows
    dyn = export_onnx(result.model, exporter="dynamo", parity_X=ds.X[splits.test[:16]])
    a = make_session(dyn).run(None, {"features": ds.X[:9]})[0]
    b = make_session(cnn_fp32).run(None, {"features": ds.X[:9]})[0]
    assert np.allclose(a, b, atol=1e-5)


def test_static_per_channel_qdq_on_the_cnn(windows, cnn_fp32):
    ds, splits, _ = windows
    q = quantize_static_int8(cnn_fp32, ds.X[splits.train[:300]])  # per_channel defaults to True for a CNN
    proto = onnx.load_from_string(q)
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and ops[-1] == "Softmax"
    per_channel_scales = [i for i in proto.graph.initializer if i.name.endswith("_scale") and len(i.dims) == 1
                          and i.dims[0] > 1]
    assert per_channel_scales, "per-channel quantization gives one weight scale per output channel"
    rep = quantization_report(cnn_fp32, q, ds.X[splits.test], ds.y[splits.test], latency_runs=60)
    assert rep["task"] == "classification" and rep["metric"] == "accuracy"
    assert abs(rep["accuracy_delta_points"]) <= 3.0 and rep["prediction_agreement"] >= 0.95
    for b in (1, 32):
        assert rep[f"fp32_latency_us_batch{b}"] > 0 and rep[f"int8_latency_us_batch{b}"] > 0
        assert rep[f"latency_ratio_batch{b}"] == pytest.approx(
            rep[f"int8_latency_us_batch{b}"] / rep[f"fp32_latency_us_batch{b}"])
    assert rep["size_ratio"] == pytest.approx(len(q) / len(cnn_fp32))
    # the policy's rule, applied by hand to the report's numbers: int8 iff it loses at most
    # 1 accuracy point (the default budget) and is not slower at batch 1
    drop = 100.0 * (rep["fp32_accuracy"] - rep["int8_accuracy"])
    assert rep["metric_drop_points"] == pytest.approx(drop)
    lat8, lat32 = rep["int8_latency_us_batch1"], rep["fp32_latency_us_batch1"]
    expected = "int8" if drop <= 1.0 and lat8 <= lat32 else "fp32"
    d = decide_quantization(rep)
    assert d.chosen == expected, (d.reason, drop, lat8, lat32)
    assert f"int8 {lat8:.1f} µs vs fp32 {lat32:.1f} µs at batch 1" in d.reason and d.reason.endswith(expected)


def test_dynamic_quantization_is_for_mlps_only(windows, cnn_fp32):
    ds, splits, _ = windows
    with pytest.raises(ExportError, match="dynamic quantization is for MLPs"):
        quantize_dynamic_int8(cnn_fp32)
    mlp = train_model(ds, splits, TrainParams(arch="mlp", epochs=8, hidden=(64, 32), seed=0))
    fp32 = export_onnx(mlp.model)
    q = quantize_dynamic_int8(fp32)
    ops = {n.op_type for n in onnx.load_from_string(q).graph.node}
    assert "DynamicQuantizeLinear" in ops and ("MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops)
    assert "Softmax" in ops and "Gemm" not in ops
    sess = make_session(q)
    assert sess.get_inputs()[0].type == "tensor(float)" and sess.get_outputs()[0].name == "probabilities"
    rep = quantization_report(fp32, q, ds.X[splits.test], ds.y[splits.test], latency_runs=30)
    assert rep["prediction_agreement"] >= 0.95 and rep["int8_bytes"] < rep["fp32_bytes"]


def test_regression_cnn_export_int8_and_report():
    ds = window_dataset(600, seed=3, task="regression")
    splits = make_splits(ds, 0)
    r = train_model(ds, splits, TrainParams(arch="cnn1d", epochs=25, patience=6, channels=(16, 16), seed=0))
    assert r.metrics["test_r2"] > 0.5, r.metrics
    fp32 = export_onnx(r.model, parity_X=ds.X[splits.test[:32]])
    out = onnx.load_from_string(fp32).graph.output[0]
    assert out.name == "prediction" and _dims(out)[1] == 1 and isinstance(_dims(out)[0], str)
    ev = evaluate_onnx(fp32, ds.X[splits.test], ds.y[splits.test])
    assert ev["rmse"] == pytest.approx(r.metrics["test_rmse"], rel=1e-4)
    assert ev["predictions"].shape == (len(splits.test),)
    q = quantize_static_int8(fp32, ds.X[splits.train[:300]])
    proto = onnx.load_from_string(q)
    assert [n.op_type for n in proto.graph.node][-2:] == ["Mul", "Add"]  # the target scale stays float
    rep = quantization_report(fp32, q, ds.X[splits.test], ds.y[splits.test], latency_runs=30)
    assert rep["task"] == "regression" and rep["metric"] == "rmse" and "prediction_agreement" not in rep
    assert rep["rmse_delta"] == pytest.approx(rep["int8_rmse"] - rep["fp32_rmse"])
    assert rep["metric_drop_points"] == pytest.approx(100 * rep["rmse_delta"] / rep["fp32_rmse"])
    assert rep["max_abs_diff"] > 0 and {"fp32_r2", "int8_r2", "fp32_mae", "int8_mae"} <= set(rep)


def test_regression_policy_budget_is_percent_of_rmse():
    base = {"metric": "rmse", "fp32_latency_us_batch1": 20.0, "int8_latency_us_batch1": 15.0}
    ok = decide_quantization({**base, "metric_drop_points": 0.6})
    assert ok.chosen == "int8" and "RMSE change +0.60% of fp32 <= budget 1%" in ok.reason
    worse = decide_quantization({**base, "metric_drop_points": 2.5})
    assert worse.chosen == "fp32" and "> budget 1%" in worse.reason
    assert decide_quantization({**base, "metric_drop_points": 2.5}, budget_points=3).chosen == "int8"
    slow = decide_quantization({**base, "metric_drop_points": -1.0, "int8_latency_us_batch1": 21.0})
    assert slow.chosen == "fp32" and "int8 slower" in slow.reason


def test_pinned_opset_and_parity_failures_are_reported_with_numbers(windows, cnn_fp32):
    ds, splits, result = windows
    other = build_model("classification", 144, 3, arch="cnn1d", window_shape=(3, 48),
                        mean=result.model.standardize.mean.numpy()[0], std=result.model.standardize.std.numpy()[0])
    with pytest.raises(ExportError) as err:
        check_parity(other.eval(), cnn_fp32, ds.X[splits.test[:8]])
    assert "batch 1" in str(err.value) and "max abs diff" in str(err.value)
    with pytest.raises(ExportError, match="pinned opset 17"):
        export_onnx(result.model, exporter="dynamo", opset=17)  # torch's dynamo exporter starts at opset 18
    legacy17 = export_onnx(result.model, exporter="legacy", opset=17)
    assert [o.version for o in onnx.load_from_string(legacy17).opset_import if o.domain in ("", "ai.onnx")] == [17]


def test_export_refuses_a_feature_count_the_model_does_not_take(windows):
    with pytest.raises(ExportError, match="takes 144 features"):
        export_onnx(windows[2].model, 10)
    with torch.no_grad():
        assert windows[2].model(torch.zeros(2, 144)).shape == (2, 3)


def test_cnn_on_hub_sensor_windows_beats_the_mlp():
    """On edgeloop.hub.datasets' own synthetic vibration windows the CNN beats a flat MLP."""
    from edgeloop.hub.datasets import generate_sensor_windows

    ds = generate_sensor_windows(800, seed=0)
    splits = split_dataset(ds, 0)
    cnn = train_model(ds, splits, TrainParams(arch="cnn1d", epochs=20, patience=5, channels=(16, 32), seed=0))
    mlp = train_model(ds, splits, TrainParams(arch="mlp", epochs=20, patience=5, seed=0))
    assert cnn.metrics["test_accuracy"] >= 0.9 and cnn.metrics["test_accuracy"] > mlp.metrics["test_accuracy"]
    fp32 = export_onnx(cnn.model, parity_X=ds.X[splits.test[:32]])
    assert evaluate_onnx(fp32, ds.X[splits.test], ds.y[splits.test])["accuracy"] == pytest.approx(
        cnn.metrics["test_accuracy"])
