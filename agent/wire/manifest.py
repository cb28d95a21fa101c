"""The bundle manifest: what a signed bundle promises about itself.

The manifest is canonical JSON (``manifest.json`` in the bundle); the Ed25519
signature covers its exact bytes. It lists every file with its sha256 and size
(signing one manifest over all files defeats mix-and-match), the input/output
schema, the drift reference, a smoke test and the lineage back to the dataset.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from edgeloop.agent.errors import MessageFormatError, UnsupportedSchemaError
from edgeloop.agent.wire.envelope import canonical_json
from edgeloop.agent.wire.messages import _opt, _req, load_json

MANIFEST_SCHEMA = 1
MANIFEST_KIND = "edgeloop.bundle"
DATATYPES = ("FP32", "FP64", "INT64", "INT32")


@dataclass
class TensorSpec:
    name: str
    datatype: str  # Open Inference Protocol datatype: FP32, INT64, ...
    shape: list[int]  # -1 marks a dynamic dimension (the batch)

    @classmethod
    def from_dict(cls, d: dict, where: str) -> TensorSpec:
        spec = cls(_req(d, "name", str, where), _req(d, "datatype", str, where), _req(d, "shape", list, where))
        if spec.datatype not in DATATYPES:
            raise MessageFormatError(f"{where}: datatype {spec.datatype!r} is not one of {DATATYPES}")
        if not all(isinstance(x, int) and not isinstance(x, bool) and (x == -1 or x > 0) for x in spec.shape):
            raise MessageFormatError(f"{where}: shape must hold positive integers or -1")
        return spec


@dataclass
class FileEntry:
    path: str  # relative to the bundle's files/ folder
    sha256: str
    size: int
    role: str = "model"  # model | model-fp32 | data | other

    @classmethod
    def from_dict(cls, d: dict, where: str) -> FileEntry:
        e = cls(
            path=_req(d, "path", str, where),
            sha256=_req(d, "sha256", str, where),
            size=_req(d, "size", int, where),
            role=_opt(d, "role", str, where, "model"),
        )
        if not e.path or e.path.startswith("/") or ".." in e.path.split("/") or "\\" in e.path:
            raise MessageFormatError(f"{where}: file path {e.path!r} must be relative and stay in the bundle")
        if len(e.sha256) != 64 or any(c not in "0123456789abcdef" for c in e.sha256):
            raise MessageFormatError(f"{where}: sha256 must be 64 lowercase hex digits")
        if e.size < 0:
            raise MessageFormatError(f"{where}: size must not be negative")
        return e


@dataclass
class FeatureReference:
    """Reference distribution of one input feature over fixed bins.

    ``edges`` are interior bin edges (ascending, de-duplicated); there are
    ``len(edges) + 1`` bins: (-inf, e0], (e0, e1], ..., (e_last, +inf).
    """

    name: str
    edges: list[float]
    counts: list[int]
    mean: float
    std: float

    @classmethod
    def from_dict(cls, d: dict, where: str) -> FeatureReference:
        ref = cls(
            name=_req(d, "name", str, where),
            edges=[float(x) for x in _req(d, "edges", list, where)],
            counts=_req(d, "counts", list, where),
            mean=_req(d, "mean", float, where),
            std=_req(d, "std", float, where),
        )
        if len(ref.counts) != len(ref.edges) + 1:
            raise MessageFormatError(f"{where}: needs len(edges)+1 counts, got {len(ref.counts)} for {len(ref.edges)} edges")
        if any(b <= a for a, b in zip(ref.edges, ref.edges[1:])):
            raise MessageFormatError(f"{where}: edges must be strictly increasing")
        if not all(math.isfinite(x) for x in ref.edges):
            raise MessageFormatError(f"{where}: edges must be finite")
        return ref


@dataclass
class DriftReference:
    features: list[FeatureReference]
    output_labels: list[str] = field(default_factory=list)
    output_shares: list[float] = field(default_factory=list)
    window: int = 200  # rows per tumbling window
    min_rows: int = 100  # no statistics on fewer rows than this
    psi_threshold: float = 0.2
    ks_threshold: float = 0.15

    @classmethod
    def from_dict(cls, d: dict, where: str = "drift") -> DriftReference:
        feats = _req(d, "features", list, where)
        ref = cls(
            features=[FeatureReference.from_dict(f, f"{where}.features[{i}]") for i, f in enumerate(feats)],
            output_labels=_opt(d, "output_labels", list, where, []),
            output_shares=[float(x) for x in _opt(d, "output_shares", list, where, [])],
            window=_opt(d, "window", int, where, 200),
            min_rows=_opt(d, "min_rows", int, where, 100),
            psi_threshold=_opt(d, "psi_threshold", float, where, 0.2),
            ks_threshold=_opt(d, "ks_threshold", float, where, 0.15),
        )
        if ref.window <= 0 or ref.min_rows <= 0 or ref.min_rows > ref.window:
            raise MessageFormatError(f"{where}: need 0 < min_rows <= window")
        return ref


@dataclass
class SmokeTest:
    """Inputs the agent runs after install; outputs must match within ``atol``."""

    inputs: list[list[float]]
    expected: dict[str, list]  # output name -> expected values (nested list)
    atol: float = 1e-4

    @classmethod
    def from_dict(cls, d: dict, where: str = "smoke_test") -> SmokeTest:
        return cls(
            inputs=_req(d, "inputs", list, where),
            expected=_req(d, "expected", dict, where),
            atol=_opt(d, "atol", float, where, 1e-4),
        )


@dataclass
class Manifest:
    model_name: str
    version: str
    task: str  # classification | regression
    created_at: float
    key_id: str
    entrypoint: str  # path of the ONNX model to serve (one of files)
    files: list[FileEntry]
    feature_names: list[str]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str] = field(default_factory=list)
    drift: DriftReference | None = None
    smoke_test: SmokeTest | None = None
    lineage: dict = field(default_factory=dict)  # dataset_sha256, run_id, version_id, parent...
    quantization: dict = field(default_factory=dict)  # decision and its numbers
    schema: int = MANIFEST_SCHEMA
    kind: str = MANIFEST_KIND

    def to_dict(self) -> dict:
        return asdict(self)

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    def file(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        w = "manifest"
        if d.get("kind") != MANIFEST_KIND:
            raise MessageFormatError(f"{w}: kind {d.get('kind')!r} is not {MANIFEST_KIND!r}")
        if d.get("schema") != MANIFEST_SCHEMA:
            raise UnsupportedSchemaError(
                f"{w}: schema {d.get('schema')!r} is not supported by this agent (reads schema {MANIFEST_SCHEMA}); upgrade the agent"
            )
        drift = d.get("drift")
        smoke = d.get("smoke_test")
        m = cls(
            model_name=_req(d, "model_name", str, w),
            version=_req(d, "version", str, w),
            task=_req(d, "task", str, w),
            created_at=_req(d, "created_at", float, w),
            key_id=_req(d, "key_id", str, w),
            entrypoint=_req(d, "entrypoint", str, w),
            files=[FileEntry.from_dict(f, f"{w}.files[{i}]") for i, f in enumerate(_req(d, "files", list, w))],
            feature_names=_req(d, "feature_names", list, w),
            inputs=[TensorSpec.from_dict(t, f"{w}.inputs[{i}]") for i, t in enumerate(_req(d, "inputs", list, w))],
            outputs=[TensorSpec.from_dict(t, f"{w}.outputs[{i}]") for i, t in enumerate(_req(d, "outputs", list, w))],
            labels=_opt(d, "labels", list, w, []),
            drift=DriftReference.from_dict(drift) if drift is not None else None,
            smoke_test=SmokeTest.from_dict(smoke) if smoke is not None else None,
            lineage=_opt(d, "lineage", dict, w, {}),
            quantization=_opt(d, "quantization", dict, w, {}),
        )
        if m.task not in ("classification", "regression"):
            raise MessageFormatError(f"{w}: task must be classification or regression, got {m.task!r}")
        paths = [f.path for f in m.files]
        if len(set(paths)) != len(paths):
            raise MessageFormatError(f"{w}: a file is listed twice")
        if m.entrypoint not in paths:
            raise MessageFormatError(f"{w}: entrypoint {m.entrypoint!r} is not among the listed files")
        if len(m.inputs) != 1:
            raise MessageFormatError(f"{w}: exactly one input tensor is supported, got {len(m.inputs)}")
        if not m.outputs:
            raise MessageFormatError(f"{w}: at least one output tensor is needed")
        if m.drift is not None and [f.name for f in m.drift.features] != list(m.feature_names):
            raise MessageFormatError(f"{w}: drift reference features must match feature_names in order")
        return m

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        return cls.from_dict(load_json(data, "manifest"))


def manifest_summary(m: Manifest) -> dict[str, Any]:
    return {
        "model": m.model_name,
        "version": m.version,
        "task": m.task,
        "features": len(m.feature_names),
        "entrypoint": m.entrypoint,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256[:16]} for f in m.files],
        "key_id": m.key_id,
        "quantization": m.quantization.get("chosen", "fp32"),
    }
