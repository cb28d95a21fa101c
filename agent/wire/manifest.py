"""The bundle manifest: what a signed bundle promises about itself.

The manifest is canonical JSON (``manifest.json`` in the bundle, see
:mod:`edgeloop.agent.wire.bundle`); the Ed25519 signature covers its exact bytes. It
lists every file with its sha256 and size (signing one manifest over all files
defeats mix-and-match), the input/output schema, the drift reference, a smoke test
and the lineage back to the dataset. Every class has an explicit ``to_dict()`` and a
strict ``from_dict()``; ``Manifest.from_bytes(m.to_bytes()) == m``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from edgeloop.agent.errors import MessageFormatError, UnsupportedSchemaError
from edgeloop.agent.wire.envelope import canonical_json
from edgeloop.agent.wire.fields import is_version, list_of, load_json, obj, objects, opt, req
from edgeloop.agent.wire.performance import PerformanceReference

MANIFEST_SCHEMA = 1
MANIFEST_KIND = "edgeloop.bundle"
DATATYPES = ("FP32", "FP64", "INT64", "INT32")
TASKS = ("classification", "regression")


@dataclass
class TensorSpec:
    name: str
    datatype: str  # Open Inference Protocol datatype: FP32, INT64, ...
    shape: list[int]  # -1 marks a dynamic dimension (the batch)

    def to_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> TensorSpec:
        obj(d, where)
        spec = cls(req(d, "name", str, where), req(d, "datatype", str, where), list_of(d, "shape", int, where))
        if spec.datatype not in DATATYPES:
            raise MessageFormatError(f"{where}: datatype {spec.datatype!r} is not one of {DATATYPES}")
        if not all(x == -1 or x > 0 for x in spec.shape):
            raise MessageFormatError(f"{where}: shape must hold positive integers or -1")
        return spec


@dataclass
class FileEntry:
    path: str  # relative to the bundle's files/ folder
    sha256: str
    size: int
    role: str = "model"  # model | model-fp32 | model-int8 | data | other

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "size": self.size, "role": self.role}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> FileEntry:
        obj(d, where)
        e = cls(
            path=req(d, "path", str, where),
            sha256=req(d, "sha256", str, where),
            size=req(d, "size", int, where),
            role=opt(d, "role", str, where, "model"),
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
    min: float | None = None  # smallest and largest reference value: beyond them a served value is
    max: float | None = None  # counted as out of range (absent from older references: not counted)

    def to_dict(self) -> dict:
        return {"name": self.name, "edges": list(self.edges), "counts": list(self.counts),
                "mean": self.mean, "std": self.std, "min": self.min, "max": self.max}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> FeatureReference:
        obj(d, where)
        ref = cls(
            name=req(d, "name", str, where),
            edges=list_of(d, "edges", float, where),
            counts=list_of(d, "counts", int, where),
            mean=req(d, "mean", float, where),
            std=req(d, "std", float, where),
            min=opt(d, "min", float, where),
            max=opt(d, "max", float, where),
        )
        if len(ref.counts) != len(ref.edges) + 1:
            raise MessageFormatError(
                f"{where}: needs len(edges)+1 counts, got {len(ref.counts)} for {len(ref.edges)} edges"
            )
        if any(c < 0 for c in ref.counts):
            raise MessageFormatError(f"{where}: counts must not be negative")
        if not all(math.isfinite(x) for x in ref.edges):
            raise MessageFormatError(f"{where}: edges must be finite")
        if any(b <= a for a, b in zip(ref.edges, ref.edges[1:], strict=False)):
            raise MessageFormatError(f"{where}: edges must be strictly increasing")
        return ref


REFERENCE_FORMAT = 2  # drift reference format written by this release; 1 (no "format" field) is still read
DRIFT_SUMMARIES = ("mean", "std", "min", "max", "energy", "values")  # per-channel window summaries


@dataclass
class WindowLayout:
    """How a window input (``ch{c}_t{t}``, channel-major, ``channels x steps``) is summarised for drift.

    Every served row gives, per channel, the scalar ``summaries`` (``mean``, ``std``, ``min``, ``max``,
    ``energy`` = mean of squares) plus ``values`` (the channel's samples pooled into one histogram);
    the drift features are ``f"{channel_name}.{summary}"``, channel by channel (:meth:`feature_names`).
    """

    channels: int
    steps: int
    channel_names: list[str]
    summaries: list[str] = field(default_factory=lambda: list(DRIFT_SUMMARIES))

    def feature_names(self) -> list[str]:
        return [f"{ch}.{s}" for ch in self.channel_names for s in self.summaries]

    def to_dict(self) -> dict:
        return {"channels": self.channels, "steps": self.steps, "channel_names": list(self.channel_names),
                "summaries": list(self.summaries)}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> WindowLayout:
        obj(d, where)
        lay = cls(channels=req(d, "channels", int, where), steps=req(d, "steps", int, where),
                  channel_names=list_of(d, "channel_names", str, where),
                  summaries=list_of(d, "summaries", str, where))
        if lay.channels <= 0 or lay.steps <= 0:
            raise MessageFormatError(f"{where}: channels and steps must be positive")
        names = lay.channel_names
        if len(names) != lay.channels or len(set(names)) != len(names) or not all(names):
            raise MessageFormatError(f"{where}: channel_names must be {lay.channels} distinct non-empty names")
        unknown = [s for s in lay.summaries if s not in DRIFT_SUMMARIES]
        if unknown:
            raise UnsupportedSchemaError(
                f"{where}: window summaries {unknown} are unknown to this agent (it computes "
                f"{list(DRIFT_SUMMARIES)}); upgrade the agent")
        if not lay.summaries or len(set(lay.summaries)) != len(lay.summaries):
            raise MessageFormatError(f"{where}: summaries must be a non-empty list without repeats")
        return lay


@dataclass
class DriftReference:
    """What the agent's drift monitor compares served rows with (built by ``edgeloop.agent.drift.build_reference``).

    ``format`` 1 (references written before window summaries, where the field is absent): one
    feature per input column, judged with the default ``alpha``. ``format`` 2 adds ``rows``
    (reference rows, required), ``alpha`` (the false-alarm rate per drift window, shared by all
    features tested) and, for window inputs, ``layout``: the features are then per-channel window
    summaries (:class:`WindowLayout`), not input columns. A format newer than
    ``REFERENCE_FORMAT`` is refused with a message saying to upgrade the agent.
    """

    features: list[FeatureReference]
    output_labels: list[str] = field(default_factory=list)
    output_shares: list[float] = field(default_factory=list)
    window: int = 200  # rows per tumbling window
    min_rows: int = 100  # no statistics on fewer rows than this
    psi_threshold: float = 0.2
    ks_threshold: float = 0.15
    format: int = 1  # reference format version (absent = 1)
    rows: int = 0  # reference rows (format 2); 0 = unknown, taken from each feature's counts
    alpha: float = 0.01  # family-wise false-alarm rate per drift window
    layout: WindowLayout | None = None  # window inputs: features are per-channel summaries (format 2)
    window_seconds: float = 0.0  # a window also closes this long after its first row (0: by rows only)
    consecutive: int = 2  # a feature is reported drifted after this many flagged windows in a row
    output: FeatureReference | None = None  # regression: the reference histogram of the model's predictions

    def to_dict(self) -> dict:
        return {
            "features": [f.to_dict() for f in self.features],
            "output_labels": list(self.output_labels),
            "output_shares": list(self.output_shares),
            "window": self.window,
            "min_rows": self.min_rows,
            "psi_threshold": self.psi_threshold,
            "ks_threshold": self.ks_threshold,
            "format": self.format,
            "rows": self.rows,
            "alpha": self.alpha,
            "layout": self.layout.to_dict() if self.layout is not None else None,
            "window_seconds": self.window_seconds,
            "consecutive": self.consecutive,
            "output": self.output.to_dict() if self.output is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "drift") -> DriftReference:
        obj(d, where)
        fmt = opt(d, "format", int, where, 1)
        if fmt < 1 or fmt > REFERENCE_FORMAT:
            raise UnsupportedSchemaError(
                f"{where}: drift reference format {fmt} is not read by this agent (it reads formats 1 to "
                f"{REFERENCE_FORMAT}); upgrade the agent, or build the bundle with a hub of the agent's release")
        layout = opt(d, "layout", dict, where)
        ref = cls(
            features=[FeatureReference.from_dict(f, w) for f, w in objects(d, "features", where)],
            output_labels=list_of(d, "output_labels", str, where, []),
            output_shares=list_of(d, "output_shares", float, where, []),
            window=opt(d, "window", int, where, 200),
            min_rows=opt(d, "min_rows", int, where, 100),
            psi_threshold=opt(d, "psi_threshold", float, where, 0.2),
            ks_threshold=opt(d, "ks_threshold", float, where, 0.15),
            format=fmt,
            rows=opt(d, "rows", int, where, 0),
            alpha=opt(d, "alpha", float, where, 0.01),
            layout=WindowLayout.from_dict(layout, f"{where}.layout") if layout is not None else None,
            window_seconds=opt(d, "window_seconds", float, where, 0.0),
            consecutive=opt(d, "consecutive", int, where, 2),
            output=FeatureReference.from_dict(out, f"{where}.output") if (out := opt(d, "output", dict, where))
            else None,
        )
        if ref.window_seconds < 0 or ref.consecutive < 1:
            raise MessageFormatError(f"{where}: need window_seconds >= 0 and consecutive >= 1")
        if ref.window <= 0 or ref.min_rows <= 0 or ref.min_rows > ref.window:
            raise MessageFormatError(f"{where}: need 0 < min_rows <= window")
        if ref.layout is not None and fmt < 2:
            raise MessageFormatError(f"{where}: a window layout needs format 2 or later, got format {fmt}")
        if ref.rows < 0 or (fmt >= 2 and ref.rows == 0):
            raise MessageFormatError(f"{where}: rows (reference rows) must be positive in format {fmt}")
        if not 0.0 < ref.alpha < 1.0:
            raise MessageFormatError(f"{where}: alpha must be in (0, 1), got {ref.alpha}")
        if ref.layout is not None and [f.name for f in ref.features] != ref.layout.feature_names():
            raise MessageFormatError(
                f"{where}: features must be the layout's channel summaries "
                f"({', '.join(ref.layout.feature_names()[:3])}, ...) in order")
        return ref


@dataclass
class SmokeTest:
    """Inputs the agent runs after install; outputs must match within ``atol``."""

    inputs: list[list[float]]
    expected: dict[str, list]  # output name -> expected values (nested list)
    atol: float = 1e-4

    def to_dict(self) -> dict:
        return {"inputs": copy.deepcopy(self.inputs), "expected": copy.deepcopy(self.expected), "atol": self.atol}

    @classmethod
    def from_dict(cls, d: dict, where: str = "smoke_test") -> SmokeTest:
        obj(d, where)
        return cls(
            inputs=req(d, "inputs", list, where),
            expected=req(d, "expected", dict, where),
            atol=opt(d, "atol", float, where, 1e-4),
        )


VARIANT_NAMES = ("fp32", "int8")
VARIANT_METRICS = ("accuracy", "rmse")


@dataclass
class ModelVariant:
    """One model the bundle carries for the device to choose from (see :class:`Variants`)."""

    name: str  # fp32 | int8
    path: str  # one of the manifest's files
    metric_value: float | None = None  # the metric the hub measured on its test rows (accuracy 0..1, or RMSE)
    drop_points: float = 0.0  # what it loses against fp32, in the budget's unit (fp32: 0)
    smoke_expected: dict = field(default_factory=dict)  # its outputs on smoke_test.inputs (output -> values)
    smoke_atol: float = 1e-4

    def to_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "metric_value": self.metric_value,
                "drop_points": self.drop_points, "smoke_expected": copy.deepcopy(self.smoke_expected),
                "smoke_atol": self.smoke_atol}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> ModelVariant:
        obj(d, where)
        v = cls(name=req(d, "name", str, where), path=req(d, "path", str, where),
                metric_value=opt(d, "metric_value", float, where),
                drop_points=opt(d, "drop_points", float, where, 0.0),
                smoke_expected=opt(d, "smoke_expected", dict, where, {}),
                smoke_atol=opt(d, "smoke_atol", float, where, 1e-4))
        if v.name not in VARIANT_NAMES:
            raise MessageFormatError(f"{where}: variant name {v.name!r} is not one of {VARIANT_NAMES}")
        if not (math.isfinite(v.drop_points) and v.smoke_atol >= 0):
            raise MessageFormatError(f"{where}: drop_points must be finite and smoke_atol 0 or more")
        return v


@dataclass
class Variants:
    """The fp32 and int8 models of one version, with the hub's numbers, for the device's pre-flight.

    The device measures each on its own hardware and serves the fastest whose ``drop_points`` is within
    ``budget_points`` (:mod:`edgeloop.agent.preflight`); ``hub_pick`` is the workstation's decision
    (the manifest's ``entrypoint``, what agents without pre-flight serve). ``metric``: ``accuracy``
    (budget in accuracy points) or ``rmse`` (budget in percent of the fp32 RMSE).
    """

    metric: str
    budget_points: float
    hub_pick: str
    models: list[ModelVariant]

    def get(self, name: str) -> ModelVariant | None:
        return next((v for v in self.models if v.name == name), None)

    def to_dict(self) -> dict:
        return {"metric": self.metric, "budget_points": self.budget_points, "hub_pick": self.hub_pick,
                "models": [v.to_dict() for v in self.models]}

    @classmethod
    def from_dict(cls, d: dict, where: str = "variants") -> Variants:
        obj(d, where)
        vs = cls(metric=req(d, "metric", str, where), budget_points=req(d, "budget_points", float, where),
                 hub_pick=req(d, "hub_pick", str, where),
                 models=[ModelVariant.from_dict(v, w) for v, w in objects(d, "models", where)])
        names = [v.name for v in vs.models]
        if vs.metric not in VARIANT_METRICS:
            raise MessageFormatError(f"{where}: metric must be one of {VARIANT_METRICS}, got {vs.metric!r}")
        if not vs.models or len(set(names)) != len(names):
            raise MessageFormatError(f"{where}: models must list each variant once")
        if vs.hub_pick not in names:
            raise MessageFormatError(f"{where}: hub_pick {vs.hub_pick!r} is not among the models {names}")
        if not math.isfinite(vs.budget_points):
            raise MessageFormatError(f"{where}: budget_points must be finite")
        return vs


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
    variants: Variants | None = None  # fp32 and int8 for the device's pre-flight (absent: entrypoint only)
    # calibrated classifiers: held-out accuracy, measured and estimated, for the device's estimate (older: none)
    performance: PerformanceReference | None = None
    schema: int = MANIFEST_SCHEMA
    kind: str = MANIFEST_KIND

    def to_dict(self) -> dict:
        """Every field, absent optional parts as null (the signed bytes are ``canonical_json`` of this)."""
        return {
            "model_name": self.model_name,
            "version": self.version,
            "task": self.task,
            "created_at": self.created_at,
            "key_id": self.key_id,
            "entrypoint": self.entrypoint,
            "files": [f.to_dict() for f in self.files],
            "feature_names": list(self.feature_names),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "labels": list(self.labels),
            "drift": self.drift.to_dict() if self.drift is not None else None,
            "smoke_test": self.smoke_test.to_dict() if self.smoke_test is not None else None,
            "lineage": copy.deepcopy(self.lineage),
            "quantization": copy.deepcopy(self.quantization),
            "variants": self.variants.to_dict() if self.variants is not None else None,
            "performance": self.performance.to_dict() if self.performance is not None else None,
            "schema": self.schema,
            "kind": self.kind,
        }

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
        obj(d, w)
        if d.get("kind") != MANIFEST_KIND:
            raise MessageFormatError(f"{w}: kind {d.get('kind')!r} is not {MANIFEST_KIND!r}")
        if not is_version(d.get("schema"), MANIFEST_SCHEMA):
            raise UnsupportedSchemaError(
                f"{w}: schema {d.get('schema')!r} is not supported by this agent (reads schema {MANIFEST_SCHEMA}); "
                "upgrade the agent"
            )
        drift = opt(d, "drift", dict, w)
        smoke = opt(d, "smoke_test", dict, w)
        m = cls(
            model_name=req(d, "model_name", str, w),
            version=req(d, "version", str, w),
            task=req(d, "task", str, w),
            created_at=req(d, "created_at", float, w),
            key_id=req(d, "key_id", str, w),
            entrypoint=req(d, "entrypoint", str, w),
            files=[FileEntry.from_dict(f, where) for f, where in objects(d, "files", w)],
            feature_names=list_of(d, "feature_names", str, w),
            inputs=[TensorSpec.from_dict(t, where) for t, where in objects(d, "inputs", w)],
            outputs=[TensorSpec.from_dict(t, where) for t, where in objects(d, "outputs", w)],
            labels=list_of(d, "labels", str, w, []),
            drift=DriftReference.from_dict(drift, f"{w}.drift") if drift is not None else None,
            smoke_test=SmokeTest.from_dict(smoke, f"{w}.smoke_test") if smoke is not None else None,
            lineage=opt(d, "lineage", dict, w, {}),
            quantization=opt(d, "quantization", dict, w, {}),
            # optional within schema 1: manifests without it (older hubs) load; older agents ignore it
            variants=Variants.from_dict(vs, f"{w}.variants") if (vs := opt(d, "variants", dict, w)) else None,
            # optional within schema 1 likewise (docs/performance-estimation.md)
            performance=PerformanceReference.from_dict(pf, f"{w}.performance")
            if (pf := opt(d, "performance", dict, w)) else None,
        )
        m._check(w)
        return m

    def _check(self, w: str) -> None:
        """Consistency across fields (each field is already well-formed)."""
        if self.task not in TASKS:
            raise MessageFormatError(f"{w}: task must be classification or regression, got {self.task!r}")
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise MessageFormatError(f"{w}: a file is listed twice")
        if self.entrypoint not in paths:
            raise MessageFormatError(f"{w}: entrypoint {self.entrypoint!r} is not among the listed files")
        if len(self.inputs) != 1:
            raise MessageFormatError(f"{w}: exactly one input tensor is supported, got {len(self.inputs)}")
        if not self.outputs:
            raise MessageFormatError(f"{w}: at least one output tensor is needed")
        if self.performance is not None and (self.task != "classification" or self.performance.labels != self.labels):
            raise MessageFormatError(f"{w}: a performance reference needs a classifier and its labels in order")
        layout = self.drift.layout if self.drift is not None else None
        if layout is not None and layout.channels * layout.steps != len(self.feature_names):
            raise MessageFormatError(f"{w}: drift layout {layout.channels} x {layout.steps} does not cover the "
                                     f"{len(self.feature_names)} input features")
        if layout is None and self.drift is not None and [f.name for f in self.drift.features] != list(
                self.feature_names):
            raise MessageFormatError(f"{w}: drift reference features must match feature_names in order")
        if self.variants is not None:
            for v in self.variants.models:
                if v.path not in paths:
                    raise MessageFormatError(f"{w}: variant {v.name} names {v.path!r}, which is not a listed file")
            pick = self.variants.get(self.variants.hub_pick)
            if pick is not None and pick.path != self.entrypoint:
                raise MessageFormatError(f"{w}: the hub's pick {pick.name} must be the entrypoint {self.entrypoint!r}")

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
        "variants": [v.name for v in m.variants.models] if m.variants is not None else [],
    }
