"""Packing a registered version into a signed bundle (manifest + ONNX model).

The manifest's output spec follows the agent's ONNX contract: classification
``probabilities`` FP32 [-1, C] with the class labels; regression ``prediction``
FP32 [-1, 1] with no labels (and a drift reference without output shares, but with
the histogram of the model's predictions as its ``output``, which the agent judges
for output drift).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from edgeloop.agent.fsutil import atomic_write_bytes
from edgeloop.agent.wire.bundle import file_entry, pack_bundle, sha256
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.agent.wire.manifest import DriftReference, Manifest, SmokeTest, TensorSpec
from edgeloop.agent.wire.tensors import CLASSIFICATION_OUTPUT, INPUT_NAME, REGRESSION_OUTPUT
from edgeloop.hub.errors import NotFoundError

MODEL_FILE = "model.onnx"
SMOKE_ATOL = 1e-4


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
        files=[file_entry(MODEL_FILE, model_bytes, role="model")],
        feature_names=list(meta["feature_names"]),
        inputs=[TensorSpec(INPUT_NAME, "FP32", [-1, n_features])],
        outputs=outputs,
        labels=labels,
        drift=ref,
        smoke_test=SmokeTest(inputs=meta["smoke_inputs"], expected=meta["smoke_expected"],
                             atol=SMOKE_ATOL if chosen == "fp32" else 1e-3),
        lineage={"dataset_sha256": meta["dataset_sha256"], "run_id": meta["run_id"],
                 "version_id": version["id"], "parent_version": meta.get("parent_version")},
        quantization={k: v for k, v in (version.get("quantization") or {}).items() if k != "parity"},
    )
    data = pack_bundle(manifest, {MODEL_FILE: model_bytes}, key)
    digest = sha256(data)
    Path(bundles_dir).mkdir(parents=True, exist_ok=True)
    path = Path(bundles_dir) / f"{version['model_name']}-{version['version']}-{digest[:12]}.elb"
    atomic_write_bytes(path, data)  # complete on disk before the row that points to it
    record = registry.add_bundle(digest, version["id"], str(path), len(data), key.keyid, actor=actor)
    return BundleBuild(digest, path, len(data), manifest, record)
