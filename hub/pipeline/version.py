"""The model factory pipeline: dataset -> run -> ONNX (fp32, int8) -> registered version.

Every artefact is written under the hub home and recorded in the registry with
its lineage: the dataset's content hash, the run (params, metrics, curves, code
and library versions), the version (ONNX hashes, quantization report and
decision, parent version for a fine-tuned model), plus the drift reference and
smoke test the bundle will carry and the torch weights a later fine-tuning
starts from.

Files of a version (``<models_dir>/<model>/<version>/``, all on disk before the
registry row exists -- see :mod:`edgeloop.hub.pipeline.files`): ``model.fp32.onnx``,
``model.int8.onnx`` (when quantized), ``model.pt`` (:func:`edgeloop.hub.training.save_model`),
``reference.json`` (the input drift reference) and ``meta.json`` (features,
labels, task, architecture, smoke test, lineage; for regression also the
``prediction_reference`` -- quantile edges and counts of the model's
predictions on the reference rows, also in the drift reference as its
``output`` histogram, which the agent judges for output drift).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.agent.drift import (
    RECOMMENDED_REFERENCE_ROWS,
    bin_counts,
    build_reference,
    quantile_edges,
    window_layout,
)
from edgeloop.agent.fsutil import atomic_write_bytes
from edgeloop.agent.wire.bundle import sha256
from edgeloop.hub.datasets import Dataset, Splits, align_labels
from edgeloop.hub.errors import CancelledError, DataValidationError, ExportError, NotFoundError, TrainingError
from edgeloop.hub.export import (
    check_parity,
    decide_quantization,
    evaluate_onnx,
    export_onnx,
    quantization_report,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from edgeloop.hub.export.policy import MIN_DECISION_ROWS
from edgeloop.hub.pipeline.files import discard, install_folder, stage_files
from edgeloop.hub.pipeline.performance import calibrate_classifier, onnx_calibration, performance_reference
from edgeloop.hub.progress import CancelToken, ProgressCallback, ProgressEvent
from edgeloop.hub.training import (
    FactoryModel,
    TrainParams,
    adopt_parent_labels,
    check_fractions,
    check_splits,
    code_version,
    dataset_task,
    dataset_window_shape,
    fine_tune,
    library_versions,
    load_model,
    make_splits,
    model_bytes,
    train_model,
    validate_for_training,
)
from edgeloop.hub.training.data import DEFAULT_FRACTIONS

# Split when a separate test dataset is given: every row of the training data trains or validates.
EXPLICIT_TEST_FRACTIONS = (0.85, 0.15, 0.0)

CALIBRATION_ROWS = 400
SMOKE_ROWS = 4
PARITY_ROWS = 64
PREDICTION_BINS = 20
TORCH_FILE = "model.pt"
QUANT_METHODS = {True: "static", "static": "static", "dynamic": "dynamic"}


@dataclass
class ParentSpec:
    """Continual learning: build the new version by fine-tuning a registered one.

    ``version`` is any registry reference of the parent version (``model:n``);
    ``dataset`` is the parent's training data (its content hash and split must
    match the parent's run, so the replayed rows and the parent test split are
    the ones the parent saw). ``replay_size`` and ``ewc_lambda`` are passed to
    :func:`edgeloop.hub.training.fine_tune`.
    """

    version: str
    dataset: Dataset
    replay_size: int = 500
    ewc_lambda: float = 0.0


@dataclass
class VersionBuild:
    """What :func:`build_version` made; ``version`` is the registry record."""

    version: dict
    run: dict
    metrics: dict
    quantization: dict
    folder: Path
    timings: dict = field(default_factory=dict)
    continual: dict | None = None

    @property
    def id(self) -> str:
        return self.version["id"]

    @property
    def warnings(self) -> list[str]:
        """What the run record warns about (few decision rows, classes missing from the data, ...)."""
        return list(self.metrics.get("warnings") or [])


@dataclass
class TestSet:
    """An explicit test dataset for :func:`build_version` (instead of a test split of the training data):
    its metrics and the int8 decision are judged on it. ``record`` is its registry record, if any."""

    __test__ = False  # not a pytest class

    dataset: Dataset
    record: dict | None = None

    def to_dict(self) -> dict:
        return {"dataset_id": (self.record or {}).get("id"), "sha256": self.dataset.sha256,
                "rows": self.dataset.n_rows, "source": self.dataset.source}


def _emit(progress: ProgressCallback | None, stage: str, message: str, done: float = 0, total: float | None = None):
    if progress is not None:
        progress(ProgressEvent(stage=stage, done=done, total=total, message=message, metrics={}))


@dataclass
class _Parent:
    """A :class:`ParentSpec` resolved: the parent's registry record, torch model and splits."""

    spec: ParentSpec
    record: dict
    model: FactoryModel
    splits: Splits


def _resolve_parent(registry, models_dir: Path, parent: ParentSpec, parent_version: str | None,
                    task: str) -> _Parent:
    """The parent's record, torch model and splits, checked against what the registry says it was trained on."""
    pv = registry.get_version(parent.version)
    if parent_version is not None and registry.get_version(parent_version)["id"] != pv["id"]:
        raise TrainingError(f"parent_version {parent_version!r} and parent.version {parent.version!r} differ")
    folder = Path(models_dir) / pv["model_name"] / pv["version"]
    if not (folder / TORCH_FILE).exists():
        raise TrainingError(f"{pv['id']} has no saved torch weights ({folder / TORCH_FILE}); it was built before "
                            "fine-tuning was supported -- train it again, or train the new version from scratch")
    model = load_model(folder / TORCH_FILE)
    if getattr(model, "task", None) != task:
        raise TrainingError(f"{pv['id']} is a {getattr(model, 'task', '?')} model; the new data are {task}")
    run = registry.get_run(pv["run_id"])
    want_sha = registry.get_dataset(run["dataset_id"])["sha256"]
    if parent.dataset.sha256 != want_sha:
        raise TrainingError(f"the parent dataset given (sha256 {parent.dataset.sha256[:16]}…) is not the one "
                            f"{pv['id']} was trained on ({want_sha[:16]}…); load that dataset")
    split = (run.get("params") or {}).get("split") or {}
    fractions = tuple(split.get("fractions", DEFAULT_FRACTIONS))
    labels = _saved_labels(folder)
    if task == "classification" and labels and list(parent.dataset.labels) != labels:
        # the parent was itself fine-tuned on data lacking a class: it trained on them in its label order
        parent = dataclasses.replace(parent, dataset=adopt_parent_labels(labels, parent.dataset)[0])
    splits = make_splits(parent.dataset, int(split.get("seed", 0)), fractions)
    if split.get("sha256") and splits.sha256() != split["sha256"]:
        raise TrainingError(f"re-splitting the parent dataset does not reproduce the split of {run['id']}; "
                            "the data library changed how it splits -- fine-tuning would leak test rows")
    return _Parent(parent, pv, model, splits)


def _saved_labels(folder: Path) -> list[str]:
    """The class names a version's model predicts (its meta.json), or [] when unknown."""
    try:
        return [str(x) for x in json.loads((folder / "meta.json").read_text()).get("labels") or []]
    except (OSError, ValueError):
        return []


def build_version(
    registry,
    models_dir: Path,
    dataset: Dataset,
    dataset_record: dict,
    model_name: str,
    params: TrainParams,
    *,
    split_seed: int = 0,
    quantize: bool | str = True,
    budget_points: float = 1.0,
    parent_version: str | None = None,
    actor: str = "hub",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    parent: ParentSpec | None = None,
    fractions: tuple[float, float, float] | None = None,
    test: TestSet | None = None,
) -> VersionBuild:
    """Train (or fine-tune), export, quantize, evaluate and register one model version.

    ``dataset`` may be a classification or regression dataset, flat or with a
    ``window_shape`` (``params.arch`` picks MLP or 1D-CNN). ``quantize``:
    ``True``/``"static"`` (QDQ int8 calibrated on training rows; per-channel
    for CNNs), ``"dynamic"`` (MLPs only) or ``False``; the int8 model is kept
    only when :func:`edgeloop.hub.export.decide_quantization` says so (``budget_points``),
    and the report and decision go to the version's ``quantization``. A failed
    quantization ships fp32 with the error as the reason.

    ``parent`` (a :class:`ParentSpec`) fine-tunes that version's saved model
    with replay/EWC (:func:`edgeloop.hub.training.fine_tune`) instead of training from
    scratch; the new version records it as ``parent_version`` and its metrics
    carry the forgetting numbers under ``"continual"``. ``parent_version``
    alone only records lineage (e.g. a retrain on new data).

    ``fractions`` are the (train, val, test) split ratios (default 0.7/0.15/0.15;
    a test ratio of 0 trains on every row but the validation rows). ``test``
    is a separate test dataset: the split then defaults to 0.85/0.15/0 and the
    test metrics and the int8 decision are judged on it. Without test rows the
    int8 decision is judged on the validation rows. A decision on fewer than
    ``MIN_DECISION_ROWS`` rows is warned about (``metrics["warnings"]``).

    Data that are refused (validation, splits, a test set that does not match)
    raise before the run is opened: a run that never started is not recorded.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    task = dataset_task(dataset)
    window_shape = dataset_window_shape(dataset)
    method = QUANT_METHODS.get(quantize) if quantize is not False else None
    if quantize is not False and method is None:
        raise ExportError(f"quantize={quantize!r}; use True/'static', 'dynamic' or False")
    # Everything that can refuse the data happens before the run is opened.
    validate_for_training(dataset, task)
    resolved = None
    if parent is not None:
        resolved = _resolve_parent(registry, models_dir, parent, parent_version, task)
        parent_version = resolved.record["id"]
        dataset = adopt_parent_labels(list(resolved.spec.dataset.labels), dataset)[0]
        params = _with_config(params, resolved.model.config())  # the parent's architecture is kept
    params = params.resolved(window_shape)
    if method == "dynamic" and params.arch == "cnn1d" and parent is None:
        raise ExportError("dynamic quantization is for MLPs; use quantize='static' for a CNN")
    test_rows = _test_rows(dataset, test) if test is not None else None
    fractions = check_fractions(fractions or (EXPLICIT_TEST_FRACTIONS if test is not None else DEFAULT_FRACTIONS),
                                explicit_test=test is not None)
    splits = make_splits(dataset, split_seed, fractions)
    check_splits(dataset, splits)
    run_params: dict[str, Any] = {**params.to_dict(), "split": splits.to_dict()}
    if test is not None:
        run_params["test_data"] = test.to_dict()
    if resolved is not None:
        spec = resolved.spec
        run_params["continual"] = {"parent_version": parent_version, "replay_size": spec.replay_size,
                                   "ewc_lambda": spec.ewc_lambda, "parent_dataset_sha256": spec.dataset.sha256,
                                   "model_config": resolved.model.config()}  # the parent's architecture is kept
    run = registry.start_run(dataset_record["id"], model_name, run_params,
                             code_version=code_version(), library_versions=library_versions(), actor=actor)
    continual = None
    epochs_seen = _EpochCounter(progress)
    try:
        if resolved is not None:
            spec = resolved.spec
            cres = fine_tune(resolved.model, spec.dataset, resolved.splits, dataset, params, new_splits=splits,
                             replay_size=spec.replay_size, ewc_lambda=spec.ewc_lambda, seed=params.seed,
                             progress=epochs_seen, cancel=cancel, test=test_rows)
            result, continual = cres.train, cres.summary()
        else:
            result = train_model(dataset, splits, params, progress=epochs_seen, cancel=cancel, test=test_rows)
    except CancelledError:
        registry.finish_run(run["id"], "cancelled", metrics={"stop_reason": "cancelled",
                                                             "epochs_run": epochs_seen.epochs}, actor=actor)
        raise
    except BaseException:
        registry.finish_run(run["id"], "failed", actor=actor)
        raise
    timings["train_s"] = time.perf_counter() - t0
    # The rows the int8 decision (and the smoke test) use: the explicit test set, the test split, or
    # -- with a test ratio of 0 -- the validation split.
    if test_rows is not None:
        X_test, y_test, decided_on = test_rows[0], test_rows[1], "test_data"
    elif splits.test.size:
        X_test, y_test, decided_on = dataset.X[splits.test], dataset.y[splits.test], "test"
    else:
        X_test, y_test, decided_on = dataset.X[splits.val], dataset.y[splits.val], "val"
    warnings = list(result.metrics.get("warnings") or [])
    if decided_on == "val":
        warnings.append("no test rows (split test ratio 0 and no --test-data): there are no test metrics, and "
                        f"the int8 decision is judged on the {len(X_test)} validation rows")
    if method is not None and len(X_test) < MIN_DECISION_ROWS:
        warnings.append(f"the int8 decision rests on {len(X_test)} {decided_on} rows (< {MIN_DECISION_ROWS}); "
                        "give more rows or a separate test dataset (--test-data) before trusting it")
    if warnings:
        result.metrics["warnings"] = warnings
    result.metrics["decision_rows"] = {"split": decided_on, "rows": int(len(X_test))}
    served_model: Any = result.model  # classifiers: calibrated on the validation rows (docs/performance-estimation.md)
    if task == "classification":
        calibration = calibrate_classifier(result.model, dataset.X[splits.val], dataset.y[splits.val], X_test,
                                           y_test, decided_on)
        served_model = calibration.model
        result.metrics["calibration"] = _jsonable(calibration.to_dict())
    registry.finish_run(run["id"], "succeeded", metrics=_jsonable(result.metrics), history=result.history,
                        actor=actor)

    t1 = time.perf_counter()
    _emit(progress, "export", "exporting ONNX and checking parity with torch")
    X_train = dataset.X[splits.train]
    fp32 = export_onnx(served_model, dataset.n_features, parity_X=X_test[:PARITY_ROWS])
    parity = check_parity(served_model, fp32, X_test[:PARITY_ROWS])
    quant: dict[str, Any] = {"parity": parity, "chosen": "fp32"}
    int8 = None
    if method is not None:
        rng = np.random.default_rng(params.seed)
        try:
            if method == "static":
                _emit(progress, "quantize", "static QDQ int8, calibrated on training rows")
                calib = X_train[rng.permutation(len(X_train))[:CALIBRATION_ROWS]]
                per_channel = result.model.arch == "cnn1d"
                int8 = quantize_static_int8(fp32, calib, per_channel=per_channel)
                quant.update(method="static_qdq", per_channel=per_channel)
            else:
                _emit(progress, "quantize", "dynamic int8 (weights int8, activations at run time)")
                int8 = quantize_dynamic_int8(fp32)
                quant.update(method="dynamic", per_channel=False)
        except ExportError as exc:
            int8 = None
            fp32_only = evaluate_onnx(fp32, X_test, y_test)
            quant.update({"report": _fp32_numbers(fp32_only, task), "budget_points": float(budget_points),
                          "reason": f"{exc} -> ship fp32"})
        if int8 is not None:
            report = quantization_report(fp32, int8, X_test, y_test, task)
            decision = decide_quantization(report, budget_points)
            quant.update({"report": report, **decision.to_dict()})
    else:
        quant.update({"report": _fp32_numbers(evaluate_onnx(fp32, X_test, y_test), task),
                      "reason": "quantization skipped"})
    quant["decided_on"] = {"split": decided_on, "rows": int(len(X_test))}
    timings["export_s"] = time.perf_counter() - t1
    chosen_bytes = int8 if quant["chosen"] == "int8" and int8 is not None else fp32

    # drift reference: every row of the training data (more rows, more power; see build_reference), per-channel
    # window summaries for windows, and the chosen model's outputs on those rows
    ref_rows = dataset.X
    ref_out = evaluate_onnx(chosen_bytes, ref_rows, dataset.y)
    layout = window_layout(*window_shape) if window_shape else None
    if len(ref_rows) < RECOMMENDED_REFERENCE_ROWS:
        _emit(progress, "drift", f"drift reference from {len(ref_rows)} rows (fewer than "
                                 f"{RECOMMENDED_REFERENCE_ROWS}): only large shifts will be flagged")
    prediction_reference = None
    if task == "classification":
        reference = build_reference(ref_rows, dataset.feature_names, labels=dataset.labels, layout=layout,
                                    predicted=np.asarray(ref_out["predictions"], dtype=np.int64))
    else:
        preds = np.asarray(ref_out["predictions"], dtype=np.float64)
        reference = build_reference(ref_rows, dataset.feature_names, layout=layout, predicted=preds)  # + output
        edges = quantile_edges(preds, PREDICTION_BINS)
        prediction_reference = {"edges": edges, "counts": [int(c) for c in bin_counts(preds, edges)],
                                "mean": float(preds.mean()), "std": float(preds.std()), "rows": int(preds.size)}
    smoke_X = X_test[:SMOKE_ROWS]
    smoke_out = evaluate_onnx(chosen_bytes, smoke_X, y_test[:SMOKE_ROWS])
    smoke_expected = ({"probabilities": np.asarray(smoke_out["probabilities"]).tolist()} if task == "classification"
                      else {"prediction": np.asarray(smoke_out["outputs"]).reshape(-1, 1).tolist()})

    version_metrics = dict(result.metrics)
    performance = None
    if task == "classification":  # what the served graphs' probabilities are worth, and the device's reference
        cal = {**result.metrics["calibration"], "onnx": onnx_calibration({"fp32": fp32, "int8": int8}, X_test, y_test)}
        version_metrics["calibration"] = cal
        performance = performance_reference(chosen_bytes, X_test, y_test, list(dataset.labels), cal, decided_on)
        version_metrics["performance"] = performance
    if prediction_reference is not None:
        version_metrics["prediction_reference"] = prediction_reference
    meta = {
        "feature_names": dataset.feature_names, "labels": list(dataset.labels), "task": task,
        "arch": result.model.arch, "model_config": result.model.config(),
        "window_shape": list(window_shape) if window_shape else None,
        "smoke_inputs": smoke_X.tolist(), "smoke_expected": smoke_expected,
        "dataset_sha256": dataset.sha256, "run_id": run["id"], "version_id": None,  # known once registered
        "parent_version": parent_version,
    }
    if prediction_reference is not None:
        meta["prediction_reference"] = prediction_reference
    if continual is not None:
        meta["continual"] = continual
    if performance is not None:
        meta["performance"] = performance

    # The files go on disk (staged, fsynced) first; the registry row is inserted only after
    # they are renamed into place, inside its transaction -- see edgeloop.hub.pipeline.files.
    files = {"model.fp32.onnx": fp32}
    if int8 is not None:
        files["model.int8.onnx"] = int8
    files[TORCH_FILE] = model_bytes(result.model)
    files["reference.json"] = json.dumps(_jsonable(reference.to_dict())).encode("utf-8")
    model_dir = Path(models_dir) / model_name
    staging = model_dir / f".staging-{run['id']}"
    placing: list[tuple[str, Path]] = []  # (version id, final folder) once the rename is attempted

    def write_files(info: dict) -> None:
        meta["version_id"] = info["id"]
        atomic_write_bytes(staging / "meta.json", json.dumps(_jsonable(meta)).encode("utf-8"))
        final = model_dir / info["version"]
        placing.append((info["id"], final))
        install_folder(staging, final)

    try:
        stage_files(staging, files)
        version = registry.add_version(
            model_name, run["id"], sha256(fp32), task=task,
            int8_sha256=sha256(int8) if int8 is not None else None, chosen=quant["chosen"],
            quantization=_jsonable(quant), metrics=_jsonable(version_metrics), parent_version=parent_version,
            actor=actor, write_files=write_files,
        )
    except BaseException:
        _undo_files(registry, staging, placing)
        raise
    return VersionBuild(version=version, run=registry.get_run(run["id"]), metrics=result.metrics,
                        quantization=quant, folder=model_dir / version["version"], timings=timings,
                        continual=continual)


class _EpochCounter:
    """A progress callback that passes events on and remembers the last training epoch reported."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress
        self.epochs = 0

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage == "train" and not event.message.startswith("stopped"):
            self.epochs = int(event.done)
        if self.progress is not None:
            self.progress(event)


def _with_config(params: TrainParams, config: dict) -> TrainParams:
    """``params`` describing the architecture ``config`` (a ``model.config()``) -- what a fine-tune trains."""
    fields: dict[str, Any] = {"arch": config.get("arch", "mlp")}
    for name in ("hidden", "channels", "kernel_size"):
        if name in config:
            fields[name] = tuple(config[name]) if name != "kernel_size" else int(config[name])
    return dataclasses.replace(params, **fields)


def _test_rows(dataset: Dataset, test: TestSet) -> tuple[np.ndarray, np.ndarray]:
    """The explicit test set's rows, its classes numbered as the training data's; refused when it does not fit."""
    t = test.dataset
    name = t.source or (test.record or {}).get("name") or "the test dataset"
    if dataset_task(t) != dataset_task(dataset):
        raise DataValidationError(f"{name} is {dataset_task(t)} data but the training data are "
                                  f"{dataset_task(dataset)}; give a test dataset of the same task. "
                                  "Nothing was trained.")
    if list(t.feature_names) != list(dataset.feature_names):
        diff = sorted(set(t.feature_names) ^ set(dataset.feature_names))[:6]
        raise DataValidationError(f"{name} has other columns than the training data (differing: {diff or 'order'}); "
                                  "give a test dataset with the training data's columns. Nothing was trained.")
    aligned = align_labels(t, list(dataset.labels)) if dataset_task(t) == "classification" else t
    return aligned.X, aligned.y


def _undo_files(registry, staging: Path, placing: list[tuple[str, Path]]) -> None:
    """After a failed registration: remove the staging folder, or -- when it was already renamed into
    place -- the final folder, unless a row for it exists after all."""
    renamed = not staging.exists()
    discard(staging)
    for version_id, folder in placing if renamed else []:
        try:
            registry.get_version(version_id)
        except NotFoundError:
            discard(folder)
        except Exception:  # the registry cannot say; leave the files (the next build moves them aside)
            pass


def _fp32_numbers(ev: dict, task: str) -> dict:
    if task == "classification":
        return {"fp32_accuracy": ev["accuracy"]}
    return {"fp32_rmse": ev["rmse"], "fp32_mae": ev["mae"], "fp32_r2": ev["r2"]}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
