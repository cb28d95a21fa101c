"""The pre-flight report: what an agent measured of a bundle's models on its own hardware, and its pick.

Sent as the ``details`` of a ``preflight`` event (docs/protocol.md, "Pre-flight"), one per install that
ran a pre-flight, before the ``install_result``; the hub stores it per device
(``Hub.preflight_results``). Pure: typed dataclasses with ``to_dict()`` and a strict ``from_dict()``
(``PreflightReport.from_dict(r.to_dict()) == r``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from edgeloop.agent.errors import MessageFormatError, UnsupportedSchemaError
from edgeloop.agent.wire.fields import is_version, list_of, obj, objects, opt, req

PREFLIGHT_FORMAT = 1
# what a pre-flight answers: a pick (ok), or why nothing can be served (the install is refused)
PREFLIGHT_CODES = ("ok", "model_load_failed", "smoke_test_failed", "memory_limit_exceeded", "accuracy_budget_exceeded")


@dataclass
class VariantFigures:
    """One model measured in a short child process: load, operator support, batch-1 latency, memory."""

    name: str  # fp32 | int8 (or the entrypoint's name when the bundle carries one model)
    loaded: bool
    error: str | None = None  # onnxruntime's message when it could not load or run the model
    unsupported_ops: list[str] = field(default_factory=list)  # operators this onnxruntime has no kernel for
    runs: int = 0  # batch-1 runs timed
    p50_ms: float | None = None
    p99_ms: float | None = None
    load_ms: float | None = None
    peak_rss_mb: float | None = None  # the measuring process's peak resident memory
    model_mb: float | None = None  # peak RSS growth from loading + running it (what memory_limit_mb bounds)
    smoke_ok: bool | None = None  # its smoke test passed here (None: not run); the reason in ``error``

    def to_dict(self) -> dict:
        return {"name": self.name, "loaded": self.loaded, "error": self.error,
                "unsupported_ops": list(self.unsupported_ops), "runs": self.runs, "p50_ms": self.p50_ms,
                "p99_ms": self.p99_ms, "load_ms": self.load_ms, "peak_rss_mb": self.peak_rss_mb,
                "model_mb": self.model_mb, "smoke_ok": self.smoke_ok}

    @classmethod
    def from_dict(cls, d: dict, where: str = "figures") -> VariantFigures:
        obj(d, where)
        return cls(name=req(d, "name", str, where), loaded=req(d, "loaded", bool, where),
                   error=opt(d, "error", str, where), unsupported_ops=list_of(d, "unsupported_ops", str, where, []),
                   runs=opt(d, "runs", int, where, 0), p50_ms=opt(d, "p50_ms", float, where),
                   p99_ms=opt(d, "p99_ms", float, where), load_ms=opt(d, "load_ms", float, where),
                   peak_rss_mb=opt(d, "peak_rss_mb", float, where), model_mb=opt(d, "model_mb", float, where),
                   smoke_ok=opt(d, "smoke_ok", bool, where))


@dataclass
class PreflightReport:
    """The pre-flight of one bundle on one agent: the figures of each model and the device's pick.

    ``pick`` is the variant the agent serves (None: refused, ``code`` says why, nothing was activated);
    ``hub_pick`` the workstation's decision from the manifest. ``budget_points`` and ``metric`` are the
    accuracy budget the hub recorded (None for a bundle without variants).
    """

    model: str
    version: str
    bundle_sha256: str
    pick: str | None
    hub_pick: str
    code: str
    reason: str
    figures: list[VariantFigures]
    measured_at: float
    memory_limit_mb: int | None = None
    budget_points: float | None = None
    metric: str | None = None
    drops: dict[str, float] = field(default_factory=dict)  # variant -> the hub's drop_points
    format: int = PREFLIGHT_FORMAT

    @property
    def ok(self) -> bool:
        return self.pick is not None

    @property
    def disagrees(self) -> bool:
        """The device picked another model than the workstation."""
        return self.pick is not None and self.pick != self.hub_pick

    def figures_of(self, name: str) -> VariantFigures | None:
        return next((f for f in self.figures if f.name == name), None)

    def to_dict(self) -> dict:
        return {"format": self.format, "model": self.model, "version": self.version,
                "bundle_sha256": self.bundle_sha256, "pick": self.pick, "hub_pick": self.hub_pick,
                "code": self.code, "reason": self.reason, "figures": [f.to_dict() for f in self.figures],
                "measured_at": self.measured_at, "memory_limit_mb": self.memory_limit_mb,
                "budget_points": self.budget_points, "metric": self.metric, "drops": copy.deepcopy(self.drops)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "preflight") -> PreflightReport:
        obj(d, where)
        fmt = d.get("format")
        if not is_version(fmt, PREFLIGHT_FORMAT):
            raise UnsupportedSchemaError(f"{where}: format {fmt!r} is not read here (reads {PREFLIGHT_FORMAT}); "
                                         "upgrade the hub")
        r = cls(model=req(d, "model", str, where), version=req(d, "version", str, where),
                bundle_sha256=req(d, "bundle_sha256", str, where), pick=opt(d, "pick", str, where),
                hub_pick=req(d, "hub_pick", str, where), code=req(d, "code", str, where),
                reason=opt(d, "reason", str, where, ""),
                figures=[VariantFigures.from_dict(f, w) for f, w in objects(d, "figures", where)],
                measured_at=req(d, "measured_at", float, where),
                memory_limit_mb=opt(d, "memory_limit_mb", int, where),
                budget_points=opt(d, "budget_points", float, where), metric=opt(d, "metric", str, where),
                drops={str(k): float(v) for k, v in opt(d, "drops", dict, where, {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if r.code not in PREFLIGHT_CODES:
            raise MessageFormatError(f"{where}: code {r.code!r} is not one of {PREFLIGHT_CODES}")
        if (r.code == "ok") != (r.pick is not None):
            raise MessageFormatError(f"{where}: a pick goes with code ok, a refusal with its reason code")
        return r


def memory_limit_arg(args: dict, where: str = "deploy.args") -> int | None:
    """A deploy's optional ``memory_limit_mb`` (a whole number of MiB >= 1), checked."""
    val = opt(args, "memory_limit_mb", int, where)
    if val is not None and val < 1:
        raise MessageFormatError(f"{where}: memory_limit_mb must be at least 1 MiB, got {val}")
    return val


__all__ = ["PREFLIGHT_CODES", "PREFLIGHT_FORMAT", "PreflightReport", "VariantFigures", "memory_limit_arg"]
