"""Shadow mode on the wire: the shadow report an agent publishes while a candidate version runs
beside the live one, and the arguments of the shadow commands.

A version deployed with ``"shadow": true`` (a signed ``deploy``) is transferred, verified, loaded
and smoke-tested like any install, but not activated: the live version keeps answering, and the
agent runs the shadow on the same inputs off the request path (:mod:`edgeloop.agent.shadow`).
Every ``report_seconds`` it publishes a :class:`ShadowReport` on ``{root}/agents/{id}/shadow``
(QoS 1, signed like every report; not kept while the broker is unreachable: each report holds
the whole comparison since the shadow started, so the next one supersedes a lost one).

``SHADOW_SCHEMA`` is this message's own version; a reader refuses one it does not speak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from edgeloop.agent.errors import MessageFormatError, UnsupportedSchemaError
from edgeloop.agent.wire.fields import is_version, list_of, load_json, obj, opt, req
from edgeloop.agent.wire.messages import Message

SHADOW_SCHEMA = 1
SHADOW_REPORT_TYPE = "shadow_report"
TASKS = ("classification", "regression")
DEFAULT_REPORT_SECONDS = 10.0  # how often a running shadow reports (deploy args ``shadow_report_seconds``)
MIN_REPORT_SECONDS = 0.2
MAX_REPORT_SECONDS = 3600.0
DEFAULT_TOLERANCE = 1e-3  # regression: |shadow - live| <= tolerance * max(1, |live|) counts as agreeing
LATENCY_KEYS = ("p50", "p99", "mean", "max")
ERROR_KEYS = ("mean", "mean_abs", "rmse", "max_abs", "p50_abs", "p90_abs", "p99_abs")


def _number(d: dict, key: str, where: str) -> float | None:
    """An optional finite number (JSON null: None)."""
    value = opt(d, key, float, where)
    if value is not None and not math.isfinite(value):
        raise MessageFormatError(f"{where}: field {key!r} must be a finite number")
    return value


def _figures(d: dict, key: str, keys: tuple[str, ...], where: str) -> dict[str, float]:
    """An object of finite numbers under exactly the names ``keys`` (absent or null: empty)."""
    raw = opt(d, key, dict, where)
    if raw is None:
        return {}
    inner = f"{where}.{key}"
    out = {}
    for k in keys:
        v = _number(raw, k, inner)
        if v is None:
            raise MessageFormatError(f"{inner}: missing field {k!r}")
        out[k] = v
    extra = sorted(set(raw) - set(keys))
    if extra:
        raise MessageFormatError(f"{inner}: unknown fields {', '.join(extra)}")
    return out


@dataclass
class ShadowReport(Message):
    """The comparison of a shadow version with the live one on one agent, since the shadow started.

    ``requests`` / ``rows``: requests (and their rows) the live version answered that the shadow
    also ran on; ``agreement`` = ``agree_rows / rows`` (classification: the same class; regression:
    within ``tolerance`` relative to ``max(1, |live|)``), None before the first row. ``confusion``
    (classification): ``confusion[i][j]`` rows the live version put in class ``labels[i]`` and the
    shadow in ``labels[j]``. ``error`` (regression): the distribution of ``shadow - live``.
    ``errors``: requests the shadow failed on (the live answer went out regardless);
    ``dropped``: requests not compared because the shadow's queue was full (it never slows the
    live path). Latencies in milliseconds: live = the answered request, shadow = its own run.
    ``final``: the last report of this shadow (stopped, promoted or replaced)."""

    TYPE: ClassVar[str] = SHADOW_REPORT_TYPE
    agent_id: str
    model: str
    version: str  # the shadow's
    bundle_sha256: str
    live_version: str
    live_sha256: str
    task: str
    started_at: float
    at: float
    seq: int = 0  # 0, 1, 2 ... per shadow run
    requests: int = 0
    rows: int = 0
    agree_rows: int = 0
    errors: int = 0
    dropped: int = 0
    last_error: str = ""
    labels: list[str] = field(default_factory=list)
    confusion: list[list[int]] | None = None
    error: dict[str, float] = field(default_factory=dict)
    tolerance: float = DEFAULT_TOLERANCE
    live_latency_ms: dict[str, float] = field(default_factory=dict)
    shadow_latency_ms: dict[str, float] = field(default_factory=dict)
    final: bool = False

    @property
    def agreement(self) -> float | None:
        return self.agree_rows / self.rows if self.rows else None

    def _header(self) -> dict:
        return {"schema": SHADOW_SCHEMA, "type": self.TYPE}

    def to_dict(self) -> dict:
        return {
            **self._header(),
            "agent_id": self.agent_id, "model": self.model, "version": self.version,
            "bundle_sha256": self.bundle_sha256, "live_version": self.live_version, "live_sha256": self.live_sha256,
            "task": self.task, "started_at": self.started_at, "at": self.at, "seq": self.seq,
            "requests": self.requests, "rows": self.rows, "agree_rows": self.agree_rows,
            "agreement": self.agreement, "errors": self.errors, "dropped": self.dropped,
            "last_error": self.last_error, "labels": list(self.labels),
            "confusion": None if self.confusion is None else [list(r) for r in self.confusion],
            "error": dict(self.error) or None, "tolerance": self.tolerance,
            "live_latency_ms": dict(self.live_latency_ms) or None,
            "shadow_latency_ms": dict(self.shadow_latency_ms) or None, "final": self.final,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ShadowReport:
        w = SHADOW_REPORT_TYPE
        obj(d, w)
        if not is_version(d.get("schema"), SHADOW_SCHEMA):
            raise UnsupportedSchemaError(f"{w}: schema {d.get('schema')!r} is not supported by this version "
                                         f"(speaks schema {SHADOW_SCHEMA})")
        if d.get("type") != w:
            raise MessageFormatError(f"expected a {w!r} message, got type {d.get('type')!r}")
        task = req(d, "task", str, w)
        if task not in TASKS:
            raise MessageFormatError(f"{w}: task {task!r} is not one of {', '.join(TASKS)}")
        counts = {k: opt(d, k, int, w, 0) for k in ("seq", "requests", "rows", "agree_rows", "errors", "dropped")}
        for k, v in counts.items():
            if v < 0:
                raise MessageFormatError(f"{w}: field {k!r} must not be negative, got {v}")
        if counts["agree_rows"] > counts["rows"]:
            raise MessageFormatError(f"{w}: agree_rows {counts['agree_rows']} exceeds rows {counts['rows']}")
        labels = list_of(d, "labels", str, w, [])
        confusion = None
        if d.get("confusion") is not None:
            rows = req(d, "confusion", list, w)
            confusion = []
            for i, row in enumerate(rows):
                if not isinstance(row, list) or len(row) != len(labels) or \
                        not all(type(c) is int and c >= 0 for c in row):
                    raise MessageFormatError(f"{w}: confusion[{i}] must be {len(labels)} counts (one per label)")
                confusion.append(list(row))
            if len(confusion) != len(labels):
                raise MessageFormatError(f"{w}: confusion has {len(confusion)} rows for {len(labels)} labels")
            if sum(map(sum, confusion)) != counts["rows"]:
                raise MessageFormatError(f"{w}: confusion counts {sum(map(sum, confusion))} rows, not {counts['rows']}")
        tolerance = _number(d, "tolerance", w)
        return cls(
            agent_id=req(d, "agent_id", str, w), model=req(d, "model", str, w), version=req(d, "version", str, w),
            bundle_sha256=req(d, "bundle_sha256", str, w), live_version=req(d, "live_version", str, w),
            live_sha256=req(d, "live_sha256", str, w), task=task,
            started_at=req(d, "started_at", float, w), at=req(d, "at", float, w), **counts,
            last_error=opt(d, "last_error", str, w, ""), labels=labels, confusion=confusion,
            error=_figures(d, "error", ERROR_KEYS, w),
            tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance,
            live_latency_ms=_figures(d, "live_latency_ms", LATENCY_KEYS, w),
            shadow_latency_ms=_figures(d, "shadow_latency_ms", LATENCY_KEYS, w),
            final=opt(d, "final", bool, w, False),
        )

    @classmethod
    def decode(cls, data: bytes) -> ShadowReport:
        return cls.from_dict(load_json(data, SHADOW_REPORT_TYPE))

    def summary(self) -> dict:
        """The flat figures a rollout gate and an operator read (``Hub.shadow_summary``)."""
        return {
            "agent": self.agent_id, "model": self.model, "version": self.version, "bundle_sha256": self.bundle_sha256,
            "live_version": self.live_version, "live_sha256": self.live_sha256, "task": self.task,
            "requests": self.requests, "rows": self.rows, "agreement": self.agreement, "errors": self.errors,
            "dropped": self.dropped, "last_error": self.last_error,
            "live_p50_ms": self.live_latency_ms.get("p50"), "live_p99_ms": self.live_latency_ms.get("p99"),
            "shadow_p50_ms": self.shadow_latency_ms.get("p50"), "shadow_p99_ms": self.shadow_latency_ms.get("p99"),
            "labels": list(self.labels), "confusion": self.confusion, "error": dict(self.error) or None,
            "tolerance": self.tolerance, "started_at": self.started_at, "at": self.at, "final": self.final,
        }


def report_seconds(args: dict, where: str = "deploy.args") -> float:
    """The deploy's ``shadow_report_seconds`` (default :data:`DEFAULT_REPORT_SECONDS`), checked."""
    value = opt(args, "shadow_report_seconds", float, where, DEFAULT_REPORT_SECONDS)
    if not (math.isfinite(value) and MIN_REPORT_SECONDS <= value <= MAX_REPORT_SECONDS):
        raise MessageFormatError(f"{where}: shadow_report_seconds must be between {MIN_REPORT_SECONDS} and "
                                 f"{MAX_REPORT_SECONDS}, got {value}")
    return value


def tolerance_of(args: dict, where: str = "deploy.args") -> float:
    """The deploy's ``shadow_tolerance`` for regression agreement (default :data:`DEFAULT_TOLERANCE`)."""
    value = opt(args, "shadow_tolerance", float, where, DEFAULT_TOLERANCE)
    if not (math.isfinite(value) and value >= 0):
        raise MessageFormatError(f"{where}: shadow_tolerance must be a finite number >= 0, got {value}")
    return value


def shadow_args(every: float | None = None, tolerance: float | None = None) -> dict:
    """The arguments that make a ``deploy`` a shadow deploy (reports every ``every`` seconds); checked here
    rather than refused by every agent."""
    args: dict = {"shadow": True}
    if every is not None:
        args["shadow_report_seconds"] = float(every)
    if tolerance is not None:
        args["shadow_tolerance"] = float(tolerance)
    report_seconds(args, "shadow")
    tolerance_of(args, "shadow")
    return args


__all__ = ["SHADOW_SCHEMA", "SHADOW_REPORT_TYPE", "ShadowReport", "DEFAULT_REPORT_SECONDS", "DEFAULT_TOLERANCE",
           "report_seconds", "tolerance_of", "shadow_args"]
