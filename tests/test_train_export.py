"""Training (real torch), ONNX export and parity, int8 quantization (real onnxruntime), progress and cancel."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeloop.hub.datasets import generate_sensor_data, load_csv, sample_dataset_path, split_dataset
from edgeloop.hub.errors import CancelledError, DataValidationError, ExportError, TrainingError
from edgeloop.hub.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    check_parity,
    choose_model,
    compare_fp32_int8,
    decide_quantization,
    evaluate_onnx,
    export_onnx,
    make_session,
    quantize_static_int8,
)
from edgeloop.hub.progress import CancelToken, ProgressEvent, TerminalProgress, null_progress
from edgeloop.hub.training import (
    MLPClassifier,
    TrainParams,
    code_version,
    confusion_matrix,
    library_versions,
    macro_f1,
    train_classifier,
)

FAST = TrainParams(epochs=6, patience=6, seed=0)


@pytest.fixture(scope="module")
def sample():
    ds = load_csv(sample_dataset_path())
    return ds, split_dataset(ds, seed=0)


@pytest.fixture(scope="module")
def trained(sample):
    ds, splits = sample
    return train_classifier(ds, splits, FAST)


@pytest.fixture(scope="module")
def fp32_bytes(trained, sample):
    return export_onnx(trained.model, sample[0].n_features)


@pytest.fixture(scope="module")
def int8_bytes(fp32_bytes, sample):
    ds, splits = sample
    return quantize_static_int8(fp32_bytes, ds.X[splits.train[:300]])


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------


def test_training_reaches_good_accuracy_in_a_few_epochs(trained, sample):
    ds, splits = sample
    m = trained.metrics
    assert m["test_accuracy"] >= 0.85
    assert m["val_accuracy"] >= 0.85
    assert m["test_accuracy"] < 1.0  # the data are noisy on purpose
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == splits.test.size
    assert np.trace(cm) / cm.sum() == pytest.approx(m["test_accuracy"])
    assert 0.8 <= m["test_macro_f1"] <= 1.0
    assert [h["epoch"] for h in trained.history] == list(range(1, len(trained.history) + 1))
    assert set(trained.history[0]) == {"epoch", "train_loss", "val_loss", "val_accuracy"}
    assert trained.history[-1]["train_loss"] < trained.history[0]["train_loss"]
    best = min(trained.history, key=lambda h: h["val_loss"])
    assert trained.best_epoch == best["epoch"] and m["val_loss"] == pytest.approx(best["val_loss"], abs=1e-6)
    assert not trained.model.training and trained.device in ("cpu", "cuda")
    assert trained.seconds > 0
    rec = trained.to_dict()
    assert rec["params"]["hidden"] == [64, 32] and "model" not in rec and rec["labels"] == ds.labels


def test_macro_f1_matches_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 4, 300)
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, 4, 300))
    y_pred[y_pred == 3] = 2  # class 3 never predicted: its F1 is 0
    cm = confusion_matrix(y_true, y_pred, 5)  # class 4 absent everywhere: ignored
    assert macro_f1(cm) == pytest.approx(sk.f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert np.array_equal(cm[:4, :4], sk.confusion_matrix(y_true, y_pred, labels=[0, 1, 2, 3]))


def test_same_seed_gives_identical_runs_and_leaves_global_state_alone(sample):
    ds, splits = sample
    params = TrainParams(epochs=3, seed=5)
    torch.manual_seed(1234)
    before_rng = torch.get_rng_state()
    threads = torch.get_num_threads()
    a = train_classifier(ds, splits, params)
    b = train_classifier(ds, splits, params)
    assert a.metrics == b.metrics and a.history == b.history
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    c = train_classifier(ds, splits, TrainParams(epochs=3, seed=6))
    assert c.history != a.history
    assert torch.equal(torch.get_rng_state(), before_rng)
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


def test_standardization_uses_training_rows_only(trained, sample):
    ds, splits = sample
    st = trained.model.standardize
    assert np.allclose(st.mean.numpy()[0], ds.X[splits.train].mean(axis=0), rtol=1e-5)
    assert np.allclose(st.std.numpy()[0], ds.X[splits.train].std(axis=0), rtol=1e-4)
    assert "standardize.mean" in trained.model.state_dict()  # buffers travel with the weights


def test_invalid_data_and_params_never_reach_training(sample):
    ds, splits = sample
    bad = generate_sensor_data(200, 1)
    bad.X[17, 0] = np.nan
    with pytest.raises(DataValidationError) as err:
        train_classifier(bad, split_dataset(generate_sensor_data(200, 1), 0), FAST)
    assert (err.value.problems[0].row, err.value.problems[0].column) == (19, "temperature_c")
    with pytest.raises(TrainingError, match="epochs=0"):
        TrainParams(epochs=0)
    small = split_dataset(generate_sensor_data(50, 1), 0)
    with pytest.raises(TrainingError, match="outside the dataset"):
        train_classifier(generate_sensor_data(40, 1), small, FAST)


# --------------------------------------------------------------------------
# progress and cancel
# --------------------------------------------------------------------------


def test_progress_events_arrive_per_epoch(sample):
    ds, splits = sample
    events: list[ProgressEvent] = []
    result = train_classifier(ds, splits, TrainParams(epochs=4, patience=10), progress=events.append)
    assert [e.done for e in events] == [1, 2, 3, 4]
    assert all(e.stage == "train" and e.total == 4 for e in events)
    assert events[-1].fraction == 1.0
    assert events[2].metrics["val_loss"] == pytest.approx(result.history[2]["val_loss"])
    assert set(events[0].metrics) == {"train_loss", "val_loss", "val_accuracy"}


def test_early_stopping_ends_with_a_complete_event(sample):
    ds, splits = sample
    events: list[ProgressEvent] = []
    r = train_classifier(ds, splits, TrainParams(epochs=200, patience=1), progress=events.append)
    assert r.stopped_early and len(r.history) < 200
    assert r.history[-1]["val_loss"] >= r.history[-2]["val_loss"]  # stopped on a non-improving epoch
    assert len(events) == len(r.history) + 1
    assert events[-1].fraction == 1.0 and "stopped early" in events[-1].message


def test_cancel_token_stops_training(sample):
    ds, splits = sample
    token = CancelToken()
    seen: list[float] = []

    def cancel_after_two(event: ProgressEvent) -> None:
        seen.append(event.done)
        if event.done == 2:
            token.cancel()

    threads = torch.get_num_threads()
    with pytest.raises(CancelledError, match="cancelled"):
        train_classifier(ds, splits, TrainParams(epochs=20), progress=cancel_after_two, cancel=token)
    assert seen == [1, 2] and token.cancelled
    assert torch.get_num_threads() == threads
    early = CancelToken()
    early.cancel()
    with pytest.raises(CancelledError):
        train_classifier(ds, splits, FAST, cancel=early)


def test_terminal_progress_plain_stream_writes_about_every_ten_percent():
    out = io.StringIO()
    bar = TerminalProgress(out)
    for e in range(1, 41):
        bar(ProgressEvent("train", e, 40, metrics={"val_loss": 0.25}))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert 10 <= len(lines) <= 12
    assert lines[-1].startswith("train [" + "#" * 30 + "] 40/40 100%") and "val_loss=0.25" in lines[-1]
    null_progress(ProgressEvent("x", 1))  # accepts anything, does nothing


def test_terminal_progress_tty_redraws_in_place():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    bar = TerminalProgress(out, width=10)
    for e in range(1, 6):
        bar(ProgressEvent("train", e, 5))
    bar(ProgressEvent("export", 3, None, "tracing"))
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 6
    assert "\rtrain [##########] 5/5 100%" in text
    assert text.endswith("export 3 tracing\x1b[K\n")


# --------------------------------------------------------------------------
# export and parity
# --------------------------------------------------------------------------


def test_export_has_named_fp32_io_and_dynamic_batch(fp32_bytes, sample):
    proto = onnx.load_from_string(fp32_bytes)
    onnx.checker.check_model(proto)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == (INPUT_NAME, OUTPUT_NAME) == ("features", "probabilities")
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value and dims[1].dim_value == 6
    session = make_session(fp32_bytes)
    X = sample[0].X
    for batch in (5, 1):
        probs = session.run(None, {"features": X[:batch]})[0]
        assert probs.shape == (batch, 3)
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_parity_at_batch_1_and_n(trained, fp32_bytes, sample):
    ds, splits = sample
    report = check_parity(trained.model, fp32_bytes, ds.X[splits.test[:64]])
    assert report["batch_n"] == 64 and report["atol"] == 1e-4
    assert report["max_abs_diff_batch1"] <= 1e-4 and report["max_abs_diff_batchN"] <= 1e-4


def test_parity_failure_raises_with_the_numbers(trained, fp32_bytes, sample):
    ds, splits = sample
    other = MLPClassifier(6, 3, (64, 32), trained.model.standardize.mean.numpy()[0],
                          trained.model.standardize.std.numpy()[0]).eval()
    with pytest.raises(ExportError) as err:
        check_parity(other, fp32_bytes, ds.X[splits.test[:8]])
    msg = str(err.value)
    assert "batch 1" in msg and "max abs diff" in msg and "tolerance 0.0001" in msg


def test_standardization_is_inside_the_graph(trained, fp32_bytes, sample):
    ds, splits = sample
    raw = ds.X[splits.test[:32]]  # raw sensor values, never standardized by the caller
    with torch.no_grad():
        expected = trained.model(torch.from_numpy(raw)).numpy()
        without = torch.softmax(trained.model.body(torch.from_numpy(raw)), dim=-1).numpy()
    got = make_session(fp32_bytes).run(None, {"features": raw})[0]
    assert np.allclose(got, expected, atol=1e-5)
    assert np.abs(got - without).max() > 0.1  # skipping the standardization would show
    ops = [n.op_type for n in onnx.load_from_string(fp32_bytes).graph.node]
    assert ops[:2] == ["Sub", "Div"] and ops[-1] == "Softmax"


def test_dynamo_exporter_gives_an_equivalent_graph(trained, fp32_bytes, sample):
    ds, splits = sample
    dyn = export_onnx(trained.model, 6, exporter="dynamo")
    report = check_parity(trained.model, dyn, ds.X[splits.test[:16]])
    assert report["max_abs_diff_batchN"] <= 1e-4
    a = make_session(dyn).run(None, {"features": ds.X[:7]})[0]
    b = make_session(fp32_bytes).run(None, {"features": ds.X[:7]})[0]
    assert np.allclose(a, b, atol=1e-5)


def test_export_rejects_unknown_exporter(trained):
    with pytest.raises(ExportError, match="unknown exporter"):
        export_onnx(trained.model, 6, exporter="magic")


# --------------------------------------------------------------------------
# quantization and the decision
# --------------------------------------------------------------------------


def test_int8_quantization_keeps_fp32_boundary_and_accuracy(fp32_bytes, int8_bytes, sample):
    ds, splits = sample
    proto = onnx.load_from_string(int8_bytes)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert proto.graph.input[0].name == "features"
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    X_test, y_test = ds.X[splits.test], ds.y[splits.test]
    report = compare_fp32_int8(fp32_bytes, int8_bytes, X_test, y_test)
    assert report["fp32_accuracy"] >= 0.85
    assert abs(report["accuracy_delta_points"]) <= 3.0
    assert report["accuracy_delta_points"] == pytest.approx(100 * (report["int8_accuracy"] - report["fp32_accuracy"]))
    assert report["prediction_agreement"] >= 0.95
    assert 0 < report["max_abs_diff"] < 0.2
    assert report["int8_bytes"] < report["fp32_bytes"] == len(fp32_bytes)
    assert report["fp32_latency_us_batch1"] > 0 and report["int8_latency_us_batch1"] > 0
    ev = evaluate_onnx(int8_bytes, X_test[:5], y_test[:5])
    assert ev["predictions"].shape == (5,) and ev["probabilities"].shape == (5, 3)
    assert ev["accuracy"] == pytest.approx(float((ev["predictions"] == y_test[:5]).mean()))
    # int8 iff it loses at most 1 accuracy point (the default budget) and is not slower at batch 1
    drop = -report["accuracy_delta_points"]
    not_slower = report["int8_latency_us_batch1"] <= report["fp32_latency_us_batch1"]
    expected = "int8" if drop <= 1.0 and not_slower else "fp32"
    decision = decide_quantization(report)
    assert decision.chosen == expected and decision.reason.endswith(f"ship {expected}")
    assert choose_model(report) == expected


def test_per_channel_quantization_also_works(fp32_bytes, sample):
    ds, splits = sample
    q = quantize_static_int8(fp32_bytes, ds.X[splits.train[:200]], per_channel=True)
    out = evaluate_onnx(q, ds.X[splits.test], ds.y[splits.test])
    assert out["accuracy"] >= 0.85
    sess = ort.InferenceSession(q, providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(float)"


def test_quantization_rejects_bad_calibration(fp32_bytes):
    with pytest.raises(ExportError, match="calibration"):
        quantize_static_int8(fp32_bytes, np.zeros((0, 6), np.float32))


def _report(drop_points: float, lat_fp32: float, lat_int8: float) -> dict:
    return {"accuracy_delta_points": -drop_points, "fp32_latency_us_batch1": lat_fp32,
            "int8_latency_us_batch1": lat_int8}


def test_choose_model_needs_both_accuracy_and_speed():
    assert choose_model(_report(0.5, 20.0, 15.0)) == "int8"
    assert choose_model(_report(1.0, 20.0, 20.0)) == "int8"  # exactly on the budget, not slower
    assert choose_model(_report(1.5, 20.0, 15.0)) == "fp32"  # too inaccurate
    assert choose_model(_report(1.5, 20.0, 15.0), budget_points=2.0) == "int8"
    assert choose_model(_report(-0.4, 20.0, 25.0)) == "fp32"  # more accurate but slower
    slow = decide_quantization(_report(0.2, 20.0, 25.0))
    assert "int8 slower" in slow.reason and "ship fp32" in slow.reason
    inaccurate = decide_quantization(_report(2.0, 20.0, 10.0))
    assert "2.00 pt > budget 1 pt" in inaccurate.reason
    assert inaccurate.to_dict() == {"chosen": "fp32", "reason": inaccurate.reason, "budget_points": 1.0}


# --------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------


def test_library_and_code_versions():
    v = library_versions()
    assert set(v) == {"python", "torch", "numpy", "onnx", "onnxruntime"}
    assert v["torch"] == torch.__version__ and v["onnxruntime"] == ort.__version__
    cv = code_version()
    assert isinstance(cv, str) and cv
