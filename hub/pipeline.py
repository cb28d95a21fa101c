"""The model factory pipeline: dataset -> run -> ONNX (fp32, int8) -> registered version.

Every artefact is written under the hub home and recorded in the registry with
its lineage: the dataset's content hash, the run (params, metrics, curves, code
and library versions), the version (ONNX hashes, quantization report and
decision), plus the drift reference and smoke test the bundle will carry.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.bundle import sha256
from agent.drift import build_reference

from .data import Dataset, split_dataset
from .errors import ExportError
from .export import (
    check_parity,
    compare_fp32_int8,
    decide_quantization,
    evaluate_onnx,
    export_onnx,
    quantize_static_int8,
)
from .progress import CancelToken, ProgressCallback, ProgressEvent
from .train import TrainParams, code_version, library_versions, train_classifier

CALIBRATION_ROWS = 400
SMOKE_ROWS = 4


@dataclass
class VersionBuild:
    """What :func:`build_version` made; ``version`` is the registry record."""

    version: dict
    run: dict
    metrics: dict
    quantization: dict
    folder: Path
    timings: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.version["id"]


def _emit(progress: ProgressCallback | None, stage: str, message: str, done: float = 0, total: float | None = None):
    if progress is not None:
        progress(ProgressEvent(stage=stage, done=done, total=total, message=message, metrics={}))


def build_version(
    registry,
    models_dir: Path,
    dataset: Dataset,
    dataset_record: dict,
    model_name: str,
    params: TrainParams,
    *,
    split_seed: int = 0,
    quantize: bool = True,
    budget_points: float = 1.0,
    parent_version: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> VersionBuild:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    splits = split_dataset(dataset, split_seed)
    run = registry.start_run(dataset_record["id"], model_name, {**params.to_dict(), "split": splits.to_dict()},
                             code_version=code_version(), library_versions=library_versions())
    try:
        result = train_classifier(dataset, splits, params, progress=progress, cancel=cancel)
    except BaseException:
        registry.finish_run(run["id"], "failed")
        raise
    timings["train_s"] = time.perf_counter() - t0
    registry.finish_run(run["id"], "succeeded", metrics=result.metrics, history=result.history)

    t1 = time.perf_counter()
    _emit(progress, "export", "exporting ONNX and checking parity with torch")
    X_train, X_test, y_test = dataset.X[splits.train], dataset.X[splits.test], dataset.y[splits.test]
    fp32 = export_onnx(result.model, dataset.n_features)
    parity = check_parity(result.model, fp32, X_test[:64])
    quant: dict[str, Any] = {"parity": parity, "chosen": "fp32"}
    int8 = None
    if quantize:
        _emit(progress, "quantize", "static QDQ int8, calibrated on training rows")
        rng = np.random.default_rng(params.seed)
        calib = X_train[rng.permutation(len(X_train))[:CALIBRATION_ROWS]]
        int8 = quantize_static_int8(fp32, calib)
        report = compare_fp32_int8(fp32, int8, X_test, y_test)
        decision = decide_quantization(report, budget_points)
        quant.update({"report": report, **decision.to_dict()})
    else:
        acc = evaluate_onnx(fp32, X_test, y_test)["accuracy"]
        quant.update({"report": {"fp32_accuracy": acc}, "reason": "quantization skipped"})
    timings["export_s"] = time.perf_counter() - t1
    chosen_bytes = int8 if quant["chosen"] == "int8" else fp32

    # drift reference: validation + test rows the model never trained on, plus training rows
    ref_rows = dataset.X[np.concatenate([splits.train, splits.val])]
    predicted = evaluate_onnx(chosen_bytes, ref_rows, dataset.y[np.concatenate([splits.train, splits.val])])["predictions"]
    reference = build_reference(ref_rows, dataset.feature_names, labels=dataset.labels,
                                predicted=np.asarray(predicted, dtype=np.int64))
    smoke_X = X_test[:SMOKE_ROWS]
    smoke_probs = evaluate_onnx(chosen_bytes, smoke_X, y_test[:SMOKE_ROWS])["probabilities"]

    version = registry.add_version(
        model_name, run["id"], sha256(fp32), task=dataset.task,
        int8_sha256=sha256(int8) if int8 is not None else None, chosen=quant["chosen"],
        quantization=_jsonable(quant), metrics=result.metrics, parent_version=parent_version,
    )
    folder = Path(models_dir) / model_name / version["version"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.fp32.onnx").write_bytes(fp32)
    if int8 is not None:
        (folder / "model.int8.onnx").write_bytes(int8)
    (folder / "reference.json").write_text(json.dumps(_jsonable(reference.__dict__ | {
        "features": [f.__dict__ for f in reference.features]})))
    (folder / "meta.json").write_text(json.dumps({
        "feature_names": dataset.feature_names, "labels": dataset.labels, "task": dataset.task,
        "smoke_inputs": smoke_X.tolist(), "smoke_expected": {"probabilities": np.asarray(smoke_probs).tolist()},
        "dataset_sha256": dataset.sha256, "run_id": run["id"], "version_id": version["id"],
        "parent_version": parent_version,
    }))
    if not (folder / "model.fp32.onnx").exists():
        raise ExportError(f"could not write the model files under {folder}")
    return VersionBuild(version=version, run=registry.get_run(run["id"]), metrics=result.metrics,
                        quantization=quant, folder=folder, timings=timings)


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
