"""Packing a registered version into a signed bundle (manifest + ONNX model).

The manifest's output spec follows the agent's ONNX contract: classification
``probabilities`` FP32 [-1, C] with the class labels; regression ``prediction``
FP32 [-1, 1] with no labels (and a drift reference without output shares, but with
the histogram of the model's predictions as its ``output``, which the agent judges
for output drift).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeloop.agent.fsutil import atomic_write_bytes
from edgeloop.agent.wire.bundle import file_entry, pack_bundle, sha256
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.agent.wire.manifest import (
    VARIANT_NAMES,
    DriftReference,
    Manifest,
    ModelVariant,
    SmokeTest,
    TensorSpec,
    Variants,
)
from edgeloop.agent.wire.performance import PerformanceReference
from edgeloop.agent.wire.tensors import CLASSIFICATION_OUTPUT, INPUT_NAME, REGRESSION_OUTPUT
from edgeloop.hub.errors import NotFoundError

MODEL_FILE = "model.onnx"
SMOKE_ATOL = 1e-4
INT8_SMOKE_ATOL = 1e-3


@dataclass
class BundleBuild:
    sha256: str
    path: Path
    size: int
    manifest: Manifest
    record: dict


def build_bundle(registry, models_dir: Path, bundles_dir: Path, version_ref: str, key: SigningKey,
                 *, actor: str = "hub") -> BundleBuild:
    """Pack and sign the chosen model of ``version_ref`` into ``<bundles_dir>/<model>-<n>-<sha12>.elb``.

    The bundle file is written atomically and durably before the registry row for it is added.
    """
    version = registry.get_version(version_ref)
    folder = Path(models_dir) / version["model_name"] / version["version"]
    if not (folder / "meta.json").exists():
        raise NotFoundError(f"model files of {version['id']} are missing under {folder}; rebuild the version")
    meta = json.loads((folder / "meta.json").read_text())
    ref = DriftReference.from_dict(json.loads((folder / "reference.json").read_text()))
    chosen = version["chosen"]
    model_bytes = (folder / f"model.{chosen}.onnx").read_bytes()
    other, variants = _variants(folder, chosen, version.get("quantization") or {}, meta)
    n_features = len(meta["feature_names"])
    task = meta.get("task", "classification")
    if task == "regression":  # the agent's contract: "prediction" FP32 [-1, 1], no labels
        outputs, labels = [TensorSpec(REGRESSION_OUTPUT, "FP32", [-1, 1])], []
    else:
        outputs, labels = [TensorSpec(CLASSIFICATION_OUTPUT, "FP32", [-1, len(meta["labels"])])], list(meta["labels"])
    manifest = Manifest(
        model_name=version["model_name"],
        version=version["version"],
        task=task,
        created_at=time.time(),
        key_id=key.keyid,
        entrypoint=MODEL_FILE,
        files=[file_entry(MODEL_FILE, model_bytes, role="model")] + [file_entry(p, b, role=f"model-{p.split('.')[1]}")
                                                                     for p, b in other.items()],
        feature_names=list(meta["feature_names"]),
        inputs=[TensorSpec(INPUT_NAME, "FP32", [-1, n_features])],
        outputs=outputs,
        labels=labels,
        drift=ref,
        smoke_test=SmokeTest(inputs=meta["smoke_inputs"], expected=meta["smoke_expected"],
                             atol=SMOKE_ATOL if chosen == "fp32" else INT8_SMOKE_ATOL),
        lineage={"dataset_sha256": meta["dataset_sha256"], "run_id": meta["run_id"],
                 "version_id": version["id"], "parent_version": meta.get("parent_version")},
        quantization={k: v for k, v in (version.get("quantization") or {}).items() if k != "parity"},
        # calibrated classifiers: the held-out accuracy the device's estimate is compared with (older versions: none)
        performance=PerformanceReference.from_dict(meta["performance"]) if meta.get("performance") else None,
        variants=variants,  # fp32 and int8 for the device's pre-flight (edgeloop.agent.preflight)
    )
    data = pack_bundle(manifest, {MODEL_FILE: model_bytes, **other}, key)
    digest = sha256(data)
    Path(bundles_dir).mkdir(parents=True, exist_ok=True)
    path = Path(bundles_dir) / f"{version['model_name']}-{version['version']}-{digest[:12]}.elb"
    atomic_write_bytes(path, data)  # complete on disk before the row that points to it
    record = registry.add_bundle(digest, version["id"], str(path), len(data), key.keyid, actor=actor)
    return BundleBuild(digest, path, len(data), manifest, record)


def _variants(folder: Path, chosen: str, quant: dict, meta: dict) -> tuple[dict[str, bytes], Variants | None]:
    """The model the hub did not pick (``model.<fp32|int8>.onnx``) and the manifest's ``variants``, when the
    version has both an fp32 and an int8 model and their numbers: the device's pre-flight picks between them
    (docs/rollouts.md, "Pre-flight"). ``({}, None)`` for an fp32-only version."""
    report = quant.get("report") or {}
    if not (folder / "model.int8.onnx").exists() or "metric_drop_points" not in report or chosen not in VARIANT_NAMES:
        return {}, None
    from edgeloop.hub.export.sessions import make_session

    other_name = "int8" if chosen == "fp32" else "fp32"
    other_path = f"model.{other_name}.onnx"
    other_bytes = (folder / other_path).read_bytes()
    metric = "rmse" if report.get("metric") == "rmse" else "accuracy"
    smoke_x = np.asarray(meta["smoke_inputs"], dtype=np.float32)
    out = make_session(other_bytes).run(None, {INPUT_NAME: smoke_x})[0]
    other_expected = ({CLASSIFICATION_OUTPUT: np.asarray(out).tolist()} if metric == "accuracy"
                      else {REGRESSION_OUTPUT: np.asarray(out).reshape(-1, 1).tolist()})

    def variant(name: str) -> ModelVariant:
        picked = name == chosen
        return ModelVariant(
            name=name, path=MODEL_FILE if picked else other_path,
            metric_value=_finite(report.get(f"{name}_{metric}")),
            drop_points=float(report["metric_drop_points"]) if name == "int8" else 0.0,
            smoke_expected=meta["smoke_expected"] if picked else other_expected,
            smoke_atol=SMOKE_ATOL if name == "fp32" else INT8_SMOKE_ATOL)

    return {other_path: other_bytes}, Variants(metric=metric, budget_points=float(quant.get("budget_points", 1.0)),
                                               hub_pick=chosen, models=[variant("fp32"), variant("int8")])


def _finite(x: object) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None
