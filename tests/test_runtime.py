"""ModelRunner, coerce_inputs and Serving on real onnxruntime sessions (no mocks)."""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest

from edgeloop.agent.drift import DriftMonitor, build_reference
from edgeloop.agent.errors import (
    BundleError,
    InferenceError,
    InputShapeError,
    InputValueError,
    ModelNotFoundError,
    ModelNotReadyError,
    SmokeTestError,
)
from edgeloop.agent.runtime import ModelContractError, ModelRunner, coerce_inputs
from edgeloop.agent.serving import InferOutcome, Serving
from edgeloop.agent.wire.manifest import SmokeTest, TensorSpec
from tests.onnx_models import (
    FEATURES,
    LABELS,
    classifier_onnx,
    classifier_smoke,
    expected_prediction,
    expected_probabilities,
    manifest_for,
    nan_regression_onnx,
    regression_onnx,
)
from tests.onnx_variants import contract_breaking_onnx, logits_classifier_onnx

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


@pytest.fixture(scope="module")
def clf() -> ModelRunner:
    mb = classifier_onnx()
    return ModelRunner.load(manifest_for(mb, smoke=classifier_smoke()), mb, bundle_sha256="ab" * 32)


@pytest.fixture(scope="module")
def reg() -> ModelRunner:
    mb = regression_onnx()
    return ModelRunner.load(manifest_for(mb, task="regression", model="price"), mb)


@pytest.fixture
def manifest():
    return manifest_for(classifier_onnx())


# --- loading and the contract -----------------------------------------------------------
def test_runner_exposes_identity_and_uses_the_small_model_recipe(clf):
    assert (clf.name, clf.version, clf.bundle_sha256) == ("iris", "1", "ab" * 32)
    assert clf.manifest.feature_names == list(FEATURES)
    assert clf.session.get_providers() == ["CPUExecutionProvider"]
    opts = clf.session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_threads_argument_reaches_the_session():
    mb = classifier_onnx()
    r = ModelRunner.load(manifest_for(mb), mb, threads=2)
    assert r.session.get_session_options().intra_op_num_threads == 2


def test_classifier_outputs_match_numpy(clf):
    x = coerce_inputs(ROWS, clf.manifest)
    raw = clf.predict(x)
    want = expected_probabilities(np.asarray(ROWS))
    assert raw["probabilities"].dtype == np.float32
    np.testing.assert_allclose(raw["probabilities"], want, atol=1e-6)
    out = clf.postprocess(raw)
    assert set(out) == {"probabilities", "class_index", "label"}
    assert out["class_index"] == want.argmax(axis=1).tolist()
    assert out["label"] == [LABELS[i] for i in want.argmax(axis=1)]
    assert all(type(v) is float for row in out["probabilities"] for v in row)
    json.dumps(out, allow_nan=False)


def test_regressor_outputs_a_flat_prediction_list(reg):
    out = reg.postprocess(reg.predict(coerce_inputs(ROWS, reg.manifest)))
    assert list(out) == ["prediction"]
    np.testing.assert_allclose(out["prediction"], expected_prediction(np.asarray(ROWS)).ravel(), atol=1e-5)


def test_non_finite_model_output_is_an_inference_error():
    mb = nan_regression_onnx()
    r = ModelRunner.load(manifest_for(mb, task="regression"), mb)
    with pytest.raises(InferenceError, match="non-finite") as exc:
        r.infer([ROWS[0]])
    assert exc.value.code == "bad_output"


@pytest.mark.parametrize("model_bytes,manifest_kw,match", [
    (classifier_onnx(input_name="x"), {}, "input is named 'x', the manifest says 'features'"),
    (classifier_onnx(model_features=5), {}, "takes 5 features but the manifest lists 4"),
    (classifier_onnx(output_name="probs"), {}, "must output 'probabilities'"),
    (classifier_onnx(n_classes=2), {}, "2 class probabilities but the manifest has 3 labels"),
    (classifier_onnx(), {"input_name": "inputs"}, "manifest says 'inputs'"),
    (classifier_onnx(), {"outputs": [TensorSpec("probabilities", "FP32", [-1, 3]),
                                     TensorSpec("logits", "FP32", [-1, 3])]}, "lists output 'logits'"),
    (regression_onnx(), {}, "must output 'probabilities'"),
    (classifier_onnx(batch=1), {}, "fixed batch size 1"),
])
def test_model_manifest_mismatch_is_a_bundle_error(model_bytes, manifest_kw, match):
    with pytest.raises(ModelContractError, match=match) as exc:
        ModelRunner.load(manifest_for(model_bytes, **manifest_kw), model_bytes)
    assert isinstance(exc.value, BundleError)
    assert "rebuild the bundle" in str(exc.value) or "re-export" in str(exc.value).lower()


def test_manifest_features_disagreeing_with_its_input_shape_is_refused():
    mb = classifier_onnx()
    m = manifest_for(mb)
    m.inputs = [TensorSpec("features", "FP32", [-1, 3])]
    with pytest.raises(ModelContractError, match=r"shape \[-1, 3\] but lists 4 feature names"):
        ModelRunner.load(m, mb)


def test_garbage_bytes_are_a_bundle_error():
    with pytest.raises(BundleError, match="not a model onnxruntime"):
        ModelRunner.load(manifest_for(b"not onnx"), b"not onnx")


# --- smoke test ------------------------------------------------------------------------------------
def test_smoke_test_passes_for_the_right_model(clf):
    clf.smoke_test()  # expected values come from numpy; must not raise
    assert clf.manifest.smoke_test is not None


def test_smoke_test_mismatch_names_output_and_difference():
    mb = classifier_onnx()
    r = ModelRunner.load(manifest_for(mb, smoke=classifier_smoke(perturb=0.01)), mb)
    with pytest.raises(SmokeTestError, match=r"output 'probabilities' differs .* by up to 0\.01"):
        r.smoke_test()


def test_smoke_test_checks_labels_and_unknown_outputs():
    mb = classifier_onnx()
    want = expected_probabilities(np.asarray(ROWS[:1])).argmax(axis=1)
    good = SmokeTest(inputs=ROWS[:1], expected={"label": [LABELS[int(want[0])]], "class_index": want.tolist()})
    ModelRunner.load(manifest_for(mb, smoke=good), mb).smoke_test()
    wrong = SmokeTest(inputs=ROWS[:1], expected={"label": ["nope"]})
    with pytest.raises(SmokeTestError, match="'label'"):
        ModelRunner.load(manifest_for(mb, smoke=wrong), mb).smoke_test()
    unknown = SmokeTest(inputs=ROWS[:1], expected={"scores": [[0.1]]})
    with pytest.raises(SmokeTestError, match="does not produce"):
        ModelRunner.load(manifest_for(mb, smoke=unknown), mb).smoke_test()
    bad_inputs = SmokeTest(inputs=[[1.0, 2.0]], expected={"probabilities": [[1, 0, 0]]})
    with pytest.raises(SmokeTestError, match="could not run"):
        ModelRunner.load(manifest_for(mb, smoke=bad_inputs), mb).smoke_test()


def test_no_smoke_test_is_fine(reg):
    assert reg.manifest.smoke_test is None
    assert reg.smoke_test() is None


def test_regression_smoke_test_compares_flat_expected_values():
    mb = regression_onnx()
    exp = expected_prediction(np.asarray(ROWS)).ravel().tolist()
    r = ModelRunner.load(manifest_for(mb, task="regression", smoke=SmokeTest(ROWS, {"prediction": exp})), mb)
    r.smoke_test()
    r2 = ModelRunner.load(manifest_for(mb, task="regression",
                                       smoke=SmokeTest(ROWS, {"prediction": [v + 1 for v in exp]})), mb)
    with pytest.raises(SmokeTestError, match="'prediction'"):
        r2.smoke_test()


# --- coerce_inputs -------------------------------------------------------------------------------
def test_coerce_accepts_every_documented_form(manifest):
    want = np.asarray(ROWS[:2], dtype=np.float32)
    as_dicts = [dict(zip(FEATURES, r, strict=True)) for r in ROWS[:2]]
    for given in (ROWS[:2], [tuple(r) for r in ROWS[:2]], as_dicts, np.asarray(ROWS[:2])):
        x = coerce_inputs(given, manifest)
        assert x.dtype == np.float32 and x.flags.c_contiguous
        np.testing.assert_array_equal(x, want)
    np.testing.assert_array_equal(coerce_inputs(ROWS[0], manifest), want[:1])
    np.testing.assert_array_equal(coerce_inputs(as_dicts[0], manifest), want[:1])
    np.testing.assert_array_equal(coerce_inputs([[1, 2, 3, 4]], manifest), [[1, 2, 3, 4]])  # ints are numbers


def test_wrong_feature_count_says_what_is_expected(manifest):
    with pytest.raises(InputShapeError) as exc:
        coerce_inputs([[1.0, 2.0]], manifest)
    msg = str(exc.value)
    assert "expected 4 features named sepal_length, sepal_width, petal_length, petal_width, got 2" in msg
    with pytest.raises(InputShapeError, match="got 5"):
        coerce_inputs([1, 2, 3, 4, 5], manifest)
    with pytest.raises(InputShapeError, match="got 3"):
        coerce_inputs(np.zeros((2, 3)), manifest)


@pytest.mark.parametrize("text,match", [
    ("[[1, NaN, 3, 4]]", r"row 0, feature 'sepal_width' is NaN"),
    ("[[1, 2, 3, 4], [1, 2, Infinity, 4]]", r"row 1, feature 'petal_length' is \+Infinity"),
    ("[[1, 2, 3, -Infinity]]", r"row 0, feature 'petal_width' is -Infinity"),
    ("[[1, null, 3, 4]]", r"row 0, feature 'sepal_width' is null"),
    ('[["1.5", 2, 3, 4]]', r"row 0, feature 'sepal_length' is a string"),
    ("[[1, 2, true, 4]]", r"row 0, feature 'petal_length' is a boolean"),
    ("[[1, 2, 3, [4]]]", r"row 0, feature 'petal_width' is a list"),
    ("[[1e39, 2, 3, 4]]", r"row 0, feature 'sepal_length' is 1e\+39, outside the float32 range"),
    ("[[1, 2, 3, 1" + "0" * 400 + "]]", r"row 0, feature 'petal_width' .*outside the float32 range"),
    ('{"sepal_length": 1, "sepal_width": NaN, "petal_length": 3, "petal_width": 4}',
     r"row 0, feature 'sepal_width' is NaN"),
])
def test_bad_values_name_row_and_feature(manifest, text, match):
    with pytest.raises(InputValueError, match=match):
        coerce_inputs(json.loads(text), manifest)


def test_bad_array_values_are_refused(manifest):
    with pytest.raises(InputValueError, match="row 1, feature 'sepal_width' is NaN"):
        coerce_inputs(np.array([[1, 2, 3, 4], [1, np.nan, 3, 4]]), manifest)
    with pytest.raises(InputValueError, match="dtype"):
        coerce_inputs(np.array([["a", "b", "c", "d"]]), manifest)


@pytest.mark.parametrize("given,match", [
    ([], "inputs are empty"),
    ({}, "missing sepal_length"),
    ("1,2,3,4", "got str"),
    (None, "got NoneType"),
    ([[1, 2, 3, 4], [1, 2, 3]], "ragged inputs: row 1 has 3 values but row 0 has 4"),
    ([[1, 2, 3, 4], 5], "ragged inputs: row 1 is a int"),
    ([1, [2], 3, 4], "ragged inputs"),
    ([{"sepal_length": 1}], "missing sepal_width"),
    ([dict(zip(FEATURES, [1, 2, 3, 4], strict=True)) | {"colour": 1}], "unknown colour"),
    ([dict(zip(FEATURES, [1, 2, 3, 4], strict=True)), [1, 2, 3, 4]], "do not mix"),
])
def test_bad_shapes_are_refused(manifest, given, match):
    with pytest.raises(InputShapeError, match=match):
        coerce_inputs(given, manifest)


@pytest.mark.parametrize("n_rows", [1, 3, 40])  # up to 64 values are range-checked in Python, more with numpy
def test_rows_of_plain_numbers_become_the_same_float32_values_on_every_path(manifest, n_rows):
    rng = np.random.default_rng(n_rows)
    rows = rng.normal(0, 1e3, size=(n_rows, 4)).tolist()
    rows[0][1] = 7  # ints are numbers
    rows[-1][3] = float(np.finfo(np.float32).max)  # the largest float32 is in range
    want = np.asarray(rows, dtype=np.float64).astype(np.float32)
    x = coerce_inputs(rows, manifest)
    assert x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_array_equal(x, want)
    np.testing.assert_array_equal(coerce_inputs([tuple(r) for r in rows], manifest), want)  # the general path
    for bad, match in ((float("nan"), "is NaN"), (3.5e38, r"is 3.5e\+38, outside the float32 range"),
                       (10**400, "is .*outside"), (True, "is a boolean"), ("1", "is a string")):
        broken = [list(r) for r in rows]
        broken[-1][2] = bad
        with pytest.raises(InputValueError, match=rf"row {n_rows - 1}, feature 'petal_length' {match}"):
            coerce_inputs(broken, manifest)


def test_too_many_rows(manifest):
    coerce_inputs([ROWS[0]] * 10, manifest, max_rows=10)
    with pytest.raises(InputShapeError, match="11 rows in one request; the limit is 10"):
        coerce_inputs([ROWS[0]] * 11, manifest, max_rows=10)


# --- Serving -----------------------------------------------------------------------------------------
def test_serving_not_ready_then_ready_then_deactivated(clf):
    s = Serving()
    assert not s.ready() and s.active is None
    with pytest.raises(ModelNotReadyError, match="deploy a bundle"):
        s.infer(ROWS)
    s.activate(clf)
    assert s.ready() and s.active is clf
    out = s.infer(ROWS, "iris")
    assert isinstance(out, InferOutcome)
    assert (out.model, out.version, out.rows) == ("iris", "1", 3)
    assert out.latency_ms > 0
    assert out.outputs["label"] == clf.infer(ROWS)["label"]
    s.deactivate()
    assert not s.ready()
    with pytest.raises(ModelNotReadyError):
        s.infer(ROWS)


def test_serving_unknown_model_lists_the_served_one(clf):
    s = Serving()
    s.activate(clf)
    with pytest.raises(ModelNotFoundError, match="model 'wine' is not served here; this agent serves 'iris'"):
        s.infer(ROWS, "wine")
    with pytest.raises(ModelNotFoundError, match="serves 'iris'"):
        s.metadata("wine")


def test_serving_passes_coerce_errors_and_row_limit(clf):
    s = Serving(max_rows=2)
    s.activate(clf)
    with pytest.raises(InputShapeError, match="limit is 2"):
        s.infer(ROWS)
    assert s.infer(ROWS, max_rows=3).rows == 3
    with pytest.raises(InputValueError, match="NaN"):
        s.infer([[1.0, float("nan"), 1.0, 1.0]])


def test_serving_metadata_is_kserve_shaped(clf, reg):
    s = Serving()
    s.activate(clf)
    md = s.metadata("iris")
    assert md["name"] == "iris" and md["versions"] == ["1"] and md["platform"] == "onnxruntime"
    assert md["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in md["outputs"]] == ["probabilities", "class_index", "label"]
    assert md["outputs"][2]["datatype"] == "BYTES"
    s.activate(reg)
    assert s.metadata("price")["outputs"] == [{"name": "prediction", "datatype": "FP32", "shape": [-1, 1]}]


def test_serving_feeds_drift_and_survives_a_failing_callback(clf, caplog):
    rng = np.random.default_rng(0)
    ref_rows = rng.normal(5.0, 1.0, size=(2000, 4))
    preds = clf.answer(clf.predict(ref_rows.astype(np.float32)))[1]
    ref = build_reference(ref_rows, list(FEATURES), labels=list(LABELS), predicted=preds, window=100, min_rows=50)
    reports = []

    def callback(report):
        reports.append(report)
        raise RuntimeError("broker is down")

    s = Serving(on_drift_report=callback)
    mon = DriftMonitor(ref, agent_id="pi", model="iris", version="1", bundle_sha256="ab" * 32)
    s.activate(clf, mon)
    with caplog.at_level(logging.ERROR, logger="edgeloop.agent.serving"):
        out = s.infer(rng.normal(5.0, 1.0, size=(250, 4)).tolist())
    assert out.rows == 250  # the failing callback did not break inference
    assert [r.window for r in reports] == [1, 2]
    assert sum(reports[0].output_counts) == 100 and reports[0].output_js is not None
    assert "drift report callback failed" in caplog.text
    assert mon.pending_rows == 50
    s.deactivate()  # flushes the partial window of the outgoing model
    assert [r.window for r in reports] == [1, 2, 3] and reports[2].rows == 50


def test_swap_under_load_answers_every_request_with_one_model(clf, reg):
    s = Serving()
    s.activate(clf)
    errors, answers = [], []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                out = s.infer([ROWS[0]])
                answers.append((out.model, tuple(out.outputs)))
            except Exception as exc:  # nothing may fail during a swap
                errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(50):
        s.activate(reg if i % 2 else clf)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert answers and {a for a in answers} <= {("iris", ("probabilities", "class_index", "label")),
                                                ("price", ("prediction",))}


# --- more of the contract, the runner's edges ----------------------------------------------------------
@pytest.mark.parametrize("defect,match", [
    ("double_input", r"input 'features' is tensor\(double\), the contract is FP32"),
    ("two_inputs", r"has 2 inputs \(features, mask\); the contract is one input"),
    ("rank3_input", r"input 'features' has rank 3 .*needs \[-1, 4\]"),
    ("int_output", r"output 'probabilities' is tensor\(int64\), the contract is FP32"),
])
def test_models_breaking_the_onnx_contract_are_refused(defect, match):
    mb = contract_breaking_onnx(defect)
    with pytest.raises(ModelContractError, match=match):
        ModelRunner.load(manifest_for(mb), mb)


def test_manifests_without_an_input_or_without_labels_are_refused():
    mb = classifier_onnx()
    m = manifest_for(mb)
    m.inputs = []
    with pytest.raises(ModelContractError, match="declares no input tensor"):
        ModelRunner.load(m, mb)
    m = manifest_for(mb)
    m.labels = []
    with pytest.raises(ModelContractError, match="classifier iris 1 .* has no labels"):
        ModelRunner.load(m, mb)
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
        ModelRunner.load(manifest_for(mb), mb, threads=0)


def test_extra_outputs_listed_by_the_manifest_are_passed_through():
    mb = logits_classifier_onnx()
    outputs = [TensorSpec("probabilities", "FP32", [-1, 3]), TensorSpec("logits", "FP32", [-1, 3])]
    r = ModelRunner.load(manifest_for(mb, outputs=outputs), mb)
    out = r.infer(ROWS[:2])
    assert list(out) == ["logits", "probabilities", "class_index", "label"]
    logits = np.asarray(out["logits"])
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True),
                               expected_probabilities(np.asarray(ROWS[:2])), atol=1e-5)
    assert out["class_index"] == logits.argmax(axis=1).tolist()


def test_runner_identity_and_predict_refuses_wrong_widths(clf, reg):
    assert (clf.task, clf.input_name, clf.is_classifier) == ("classification", "features", True)
    assert (reg.task, reg.is_classifier) == ("regression", False)
    assert reg.answer(reg.predict(np.zeros((2, 4), np.float32)))[1] is None
    with pytest.raises(InputShapeError, match="expected 4 features .* got 3"):
        clf.predict(np.zeros((2, 3), np.float32))


def test_coerce_numpy_arrays_of_one_row_no_rows_or_too_many_dimensions(manifest):
    one = coerce_inputs(np.asarray(ROWS[0]), manifest)  # a 1-D array is one row
    assert one.shape == (1, 4) and one.dtype == np.float32
    np.testing.assert_array_equal(one, np.asarray([ROWS[0]], dtype=np.float32))
    with pytest.raises(InputShapeError, match=r"must be 2-D \(rows, 4\), got shape \(1, 2, 4\)"):
        coerce_inputs(np.zeros((1, 2, 4)), manifest)
    with pytest.raises(InputShapeError, match="inputs are empty"):
        coerce_inputs(np.zeros((0, 4)), manifest)


def test_smoke_tests_that_cannot_run_or_compare_are_smoke_test_errors():
    mb = classifier_onnx()
    probs = expected_probabilities(np.asarray(ROWS[:2])).tolist()
    cases = [
        (SmokeTest([[1.0, 2.0]], {"probabilities": probs}), "could not run: row 0: expected 4 features"),
        (SmokeTest(ROWS[:2], {"probabilities": [["high", "low", "low"]] * 2}), "are not numbers"),
        (SmokeTest(ROWS[:2], {"probabilities": probs[0]}), r"has shape \[2, 3\], expected \[3\]"),
    ]
    for smoke, match in cases:
        r = ModelRunner.load(manifest_for(mb, smoke=smoke), mb)
        with pytest.raises(SmokeTestError, match=match):
            r.smoke_test()
    flat = [v for row in probs for v in row]  # same values, another shape: compared as the output's shape
    ModelRunner.load(manifest_for(mb, smoke=SmokeTest(ROWS[:2], {"probabilities": flat})), mb).smoke_test()


# --- Serving edges ----------------------------------------------------------------------------------------
def test_serving_looks_up_a_model_by_name_and_version(clf):
    s = Serving()
    with pytest.raises(ModelNotReadyError, match="no model is active"):
        s.lookup("iris")
    s.activate(clf)
    assert s.lookup("iris").runner is clf and s.lookup("iris", "1").runner is clf and s.lookup().runner is clf
    with pytest.raises(ModelNotFoundError, match="this agent serves 'iris'"):
        s.lookup("wine")
    with pytest.raises(ModelNotFoundError, match="version '7' is not served"):
        s.lookup("iris", "7")
    served = s.lookup("iris")
    with pytest.raises(TypeError, match="either served= or model/version"):
        s.infer(ROWS[:1], "iris", served=served)
    s.deactivate()
    # a lookup taken before the deactivation still answers with the model it found
    assert s.infer(ROWS[:1], served=served).runner is clf
    with pytest.raises(ModelNotFoundError, match="no model is active"):
        s.metadata("iris")


def test_a_failing_drift_monitor_never_fails_a_request(clf, caplog):
    # a monitor built for three features watching a four-feature model: every observe() raises
    ref = build_reference(np.random.default_rng(1).normal(size=(500, 3)), ["a", "b", "c"], window=50, min_rows=10)
    mon = DriftMonitor(ref, agent_id="pi", model="iris", version="1", bundle_sha256="ab" * 32)
    s = Serving()
    s.activate(clf, mon)
    assert s.monitor is mon
    with caplog.at_level(logging.ERROR, logger="edgeloop.agent.serving"):
        out = s.infer(ROWS)
    assert out.rows == 3 and out.outputs["label"] == clf.infer(ROWS)["label"]
    assert "drift monitor failed; the request was answered anyway" in caplog.text
    assert mon.pending_rows == 0


def test_drift_windows_close_without_a_callback(clf):
    rng = np.random.default_rng(2)
    ref = build_reference(rng.normal(5.0, 1.0, size=(500, 4)), list(FEATURES), window=20, min_rows=5)
    mon = DriftMonitor(ref, agent_id="pi", model="iris", version="1", bundle_sha256="ab" * 32)
    s = Serving()  # nobody listens: reports are dropped quietly
    s.activate(clf, mon)
    assert s.infer(rng.normal(5.0, 1.0, size=(45, 4)).tolist()).rows == 45
    assert mon.pending_rows == 5  # two windows of 20 closed


# --- rows reach the drift monitor in batches, with the same reports ---------------------------------------
def _reference(window: int = 50, min_rows: int = 10):
    rng = np.random.default_rng(4)
    return build_reference(rng.normal(5.0, 1.0, size=(600, 4)), list(FEATURES), labels=list(LABELS),
                           predicted=rng.integers(0, 3, size=600), window=window, min_rows=min_rows)


def test_batched_drift_reports_equal_observing_every_request_at_once(clf):
    """Small requests are held back and observed together, yet every report (numbers, rows, counts, and the
    request on which each window started and closed) is what observing each request at once gives."""
    ref = _reference()
    request = [0]
    direct = DriftMonitor(ref, agent_id="pi", model="iris", version="1", bundle_sha256="ab" * 32,
                          clock=lambda: float(request[0]))
    batched = DriftMonitor(ref, agent_id="pi", model="iris", version="1", bundle_sha256="ab" * 32,
                           clock=lambda: float(request[0]))
    got = []
    s = Serving(on_drift_report=got.append)
    s.activate(clf, batched)
    want = []
    rng = np.random.default_rng(5)
    for i in range(180):
        request[0] = i
        rows = rng.normal(5.0, 1.0, size=(int(rng.choice([1, 1, 1, 2, 7])), 4))
        out = s.infer(rows.tolist())
        want += direct.observe(rows.astype(np.float32), np.asarray(out.outputs["class_index"]))
        assert [r.window for r in got] == [r.window for r in want]  # each window closed on the same request
    assert len(want) >= 4 and got == want
    assert batched.pending_rows < direct.pending_rows  # some rows are still held back...
    request[0] = 999
    s.deactivate()  # ...and reach the monitor before its partial window is flushed
    assert got[-1] == direct.flush()


def test_reactivating_the_same_monitor_keeps_the_rows_it_holds(clf):
    mon = DriftMonitor(_reference(window=100, min_rows=5), agent_id="pi", model="iris", version="1",
                       bundle_sha256="ab" * 32)
    got = []
    s = Serving(on_drift_report=got.append)
    s.activate(clf, mon)
    for _ in range(20):
        s.infer([ROWS[0]])
    s.activate(clf, mon)  # e.g. a rollback to the bundle already served: same monitor, no flush
    assert got == []
    for _ in range(10):
        s.infer([ROWS[1]])
    s.deactivate()
    assert [r.rows for r in got] == [30]


def test_a_regression_model_feeds_its_drift_monitor_in_batches_too(reg):
    rng = np.random.default_rng(6)
    ref = build_reference(rng.normal(5.0, 1.0, size=(600, 4)), list(FEATURES), window=40, min_rows=10)
    mon = DriftMonitor(ref, agent_id="pi", model="price", version="1", bundle_sha256="ab" * 32)
    got = []
    s = Serving(on_drift_report=got.append)
    s.activate(reg, mon)
    for _ in range(100):
        s.infer(rng.normal(5.0, 1.0, size=(1, 4)).tolist())
    assert [(r.window, r.rows, r.output_counts) for r in got] == [(1, 40, []), (2, 40, [])]
    s.deactivate()
    assert got[-1].rows == 20


# --- issue 11 item 10: hostile numbers and nesting are the client's error (400), never a crash (500) -----------
@pytest.mark.parametrize("text,code,match", [
    ('{"inputs": [[' + "9" * 5000 + ", 1, 2, 3]]}", "number_too_large", "a number too long to read"),
    ('{"inputs": ' + "[" * 3000 + "]" * 3000 + "}", "too_deep", "nests arrays or objects too deeply"),
    ('{"inputs": [[1, 2, 3, ' + '{"a": ' * 3000 + "1" + "}" * 3000 + "]]}", "too_deep", "too deeply"),
])
@pytest.mark.reliability("message decoding", "5000-digit integers, 3000-deep arrays and objects",
                         "MessageFormatError number_too_large / too_deep (400), not a 500")
def test_json_with_huge_integers_or_deep_nesting_is_a_specific_format_error(text, code, match):
    from edgeloop.agent.errors import MessageFormatError
    from edgeloop.agent.wire.messages import InferRequest, load_json

    for data in (text, text.encode()):
        with pytest.raises(MessageFormatError, match=match) as err:
            load_json(data, "inference request")
        assert err.value.code == code
    with pytest.raises(MessageFormatError) as err:
        InferRequest.decode(text.encode())
    assert err.value.code == code


@pytest.mark.parametrize("value,match", [
    (10**4000, r"is an integer of 4001 digits, outside the float32 range"),
    (-(10**300), r"is an integer of 301 digits, outside the float32 range"),
    (3.5e38, r"is 3.5e\+38, outside the float32 range"),
    (-1e300, r"is -1e\+300, outside the float32 range"),
    (2**128, r"is an integer of 39 digits|is 340282366920938463463374607431768211456, outside"),
])
@pytest.mark.reliability("message decoding", "values beyond float32 (incl. a 4000-digit int) on 6 input forms",
                         "bad_value (400) naming row and feature, message kept short")
def test_values_beyond_float32_are_bad_values_on_every_input_form(manifest, value, match):
    rows = [[1.0, 2.0, 3.0, value]]
    named = dict(zip(FEATURES, rows[0], strict=True))
    for form in (rows, rows[0], named, [named], [tuple(rows[0])], rows * 50):
        with pytest.raises(InputValueError, match=rf"feature 'petal_width' {match}") as err:
            coerce_inputs(form, manifest)
        assert len(str(err.value)) < 300  # a 4000-digit number is described, not echoed
