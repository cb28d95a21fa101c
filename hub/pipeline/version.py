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
predictions on the reference rows. The bundle manifest has no field for a
regression output reference, so it stays in meta.json and in the registry
version's ``metrics``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.agent.drift import bin_counts, build_reference, quantile_edges
from edgeloop.agent.fsutil import atomic_write_bytes
from edgeloop.agent.wire.bundle import sha256
from edgeloop.hub.datasets import Dataset, Splits
from edgeloop.hub.errors import CancelledError, ExportError, NotFoundError, TrainingError
from edgeloop.hub.export import (
    check_parity,
    decide_quantization,
    evaluate_onnx,
    export_onnx,
    quantization_report,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from edgeloop.hub.pipeline.files import discard, install_folder, stage_files
from edgeloop.hub.progress import CancelToken, ProgressCallback, ProgressEvent
from edgeloop.hub.training import (
    FactoryModel,
    TrainParams,
    code_version,
    dataset_task,
    dataset_window_shape,
    fine_tune,
    library_versions,
    load_model,
    make_splits,
    model_bytes,
    train_model,
)

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
    fractions = tuple(split.get("fractions", (0.7, 0.15, 0.15)))
    splits = make_splits(parent.dataset, int(split.get("seed", 0)), fractions)
    if split.get("sha256") and splits.sha256() != split["sha256"]:
        raise TrainingError(f"re-splitting the parent dataset does not reproduce the split of {run['id']}; "
                            "the data library changed how it splits -- fine-tuning would leak test rows")
    return _Parent(parent, pv, model, splits)


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
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    task = dataset_task(dataset)
    window_shape = dataset_window_shape(dataset)
    method = QUANT_METHODS.get(quantize) if quantize is not False else None
    if quantize is not False and method is None:
        raise ExportError(f"quantize={quantize!r}; use True/'static', 'dynamic' or False")
    if method == "dynamic" and params.arch == "cnn1d" and parent is None:
        raise ExportError("dynamic quantization is for MLPs; use quantize='static' for a CNN")
    resolved = None
    if parent is not None:
        resolved = _resolve_parent(registry, models_dir, parent, parent_version, task)
        parent_version = resolved.record["id"]
    splits = make_splits(dataset, split_seed)
    run_params: dict[str, Any] = {**params.to_dict(), "split": splits.to_dict()}
    if resolved is not None:
        spec = resolved.spec
        run_params["continual"] = {"parent_version": parent_version, "replay_size": spec.replay_size,
                                   "ewc_lambda": spec.ewc_lambda, "parent_dataset_sha256": spec.dataset.sha256,
                                   "model_config": resolved.model.config()}  # the parent's architecture is kept
    run = registry.start_run(dataset_record["id"], model_name, run_params,
                             code_version=code_version(), library_versions=library_versions(), actor=actor)
    continual = None
    try:
        if resolved is not None:
            spec = resolved.spec
            cres = fine_tune(resolved.model, spec.dataset, resolved.splits, dataset, params, new_splits=splits,
                             replay_size=spec.replay_size, ewc_lambda=spec.ewc_lambda, seed=params.seed,
                             progress=progress, cancel=cancel)
            result, continual = cres.train, cres.summary()
        else:
            result = train_model(dataset, splits, params, progress=progress, cancel=cancel)
    except CancelledError:
        registry.finish_run(run["id"], "cancelled", actor=actor)
        raise
    except BaseException:
        registry.finish_run(run["id"], "failed", actor=actor)
        raise
    timings["train_s"] = time.perf_counter() - t0
    registry.finish_run(run["id"], "succeeded", metrics=_jsonable(result.metrics), history=result.history,
                        actor=actor)

    t1 = time.perf_counter()
    _emit(progress, "export", "exporting ONNX and checking parity with torch")
    X_train, X_test, y_test = dataset.X[splits.train], dataset.X[splits.test], dataset.y[splits.test]
    fp32 = export_onnx(result.model, dataset.n_features, parity_X=X_test[:PARITY_ROWS])
    parity = check_parity(result.model, fp32, X_test[:PARITY_ROWS])
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
    timings["export_s"] = time.perf_counter() - t1
    chosen_bytes = int8 if quant["chosen"] == "int8" and int8 is not None else fp32

    # drift reference: training + validation rows, and the chosen model's outputs on them
    ref_idx = np.concatenate([splits.train, splits.val])
    ref_rows = dataset.X[ref_idx]
    ref_out = evaluate_onnx(chosen_bytes, ref_rows, dataset.y[ref_idx])
    prediction_reference = None
    if task == "classification":
        reference = build_reference(ref_rows, dataset.feature_names, labels=dataset.labels,
                                    predicted=np.asarray(ref_out["predictions"], dtype=np.int64))
    else:
        reference = build_reference(ref_rows, dataset.feature_names)
        preds = np.asarray(ref_out["predictions"], dtype=np.float64)
        edges = quantile_edges(preds, PREDICTION_BINS)
        prediction_reference = {"edges": edges, "counts": [int(c) for c in bin_counts(preds, edges)],
                                "mean": float(preds.mean()), "std": float(preds.std()), "rows": int(preds.size)}
    smoke_X = X_test[:SMOKE_ROWS]
    smoke_out = evaluate_onnx(chosen_bytes, smoke_X, y_test[:SMOKE_ROWS])
    smoke_expected = ({"probabilities": np.asarray(smoke_out["probabilities"]).tolist()} if task == "classification"
                      else {"prediction": np.asarray(smoke_out["outputs"]).reshape(-1, 1).tolist()})

    version_metrics = dict(result.metrics)
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
