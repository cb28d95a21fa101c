"""The rollout plan: what to roll out, to whom, in which waves, gated by what.

A plan is a frozen dataclass tree with ``to_dict`` / ``from_dict`` (JSON-ready) and an explicit
``schema`` version. :func:`RolloutPlan.validate` (called by ``from_dict``) lists every problem at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edgeloop.hub.rollout.errors import PlanError, SelectorSyntaxError
from edgeloop.hub.rollout.selector import Target, parse_target

PLAN_SCHEMA = 1
STRATEGIES = ("all_at_once", "canary")
RAMPS = ("rest", "sizes", "percents", "double")
FAILURE_POLICIES = ("halt", "rollback_wave", "rollback_all")
LATE_JOINERS = ("include", "exclude")
MAX_PROBATION_SECONDS = 7 * 24 * 3600.0  # the agent's own bound (agent/wire/commands.py)
MAX_PROBATION_REQUESTS = 1_000_000_000
DRIFT_KEYS = ("rows", "seconds", "min_rows", "consecutive")  # the deploy's ``drift`` (agent WindowPolicy)
# the ``capture`` command's settings (hub/services/captures.py CAPTURE_SETTINGS) plus ``enabled``
CAPTURE_KEYS = ("enabled", "max_rows", "max_bytes", "upload_rows", "chunk_bytes", "spool_max_bytes", "seed")


@dataclass(frozen=True)
class Gates:
    """What every agent of a wave must show during the bake (``None`` turns a gate off)."""

    install_and_smoke: bool = True  # the install verified and the agent's smoke test passed
    min_requests: int = 0  # requests served by the new version before the other gates judge
    max_error_rate: float | None = None  # errors / requests, 0..1
    max_p99_ratio: float | None = None  # new p99 latency / p99 of the version it replaces
    no_drift: bool = False  # any drift flag raised during the bake fails the agent
    min_shadow_agreement: float | None = None  # 0..1, over at least min_shadow_requests
    min_shadow_requests: int = 0
    # estimated accuracy (no labels; calibrated classifiers): fail when it is more than this below the baseline
    # (the live model's estimate, or the bundle's reference) beyond its interval, over >= min_estimate_rows rows
    max_estimate_drop: float | None = None
    min_estimate_rows: int = 0


@dataclass(frozen=True)
class RolloutPlan:
    model: str
    version: str
    target: str  # see selector.py, e.g. "site=plant-a,hw=pi5,-id:pi-07"
    strategy: str = "canary"
    canary_agents: int | None = 1  # canary size as a count ...
    canary_percent: float | None = None  # ... or as a percent of the targeted agents (give one)
    ramp: str = "rest"  # after the canary: rest (one wave) | sizes | percents (cumulative) | double
    wave_sizes: tuple[int, ...] = ()
    wave_percents: tuple[float, ...] = ()
    bake_seconds: float = 300.0
    gates: Gates = field(default_factory=Gates)
    failure_policy: str = "rollback_wave"
    agent_timeout_seconds: float = 600.0
    approval_required: bool = False
    memory_limit_mb: int | None = None  # for the agent's pre-flight (not yet wired)
    late_joiners: str = "include"
    # the device's dead-man switch with each deploy (None: no probation); see docs/rollouts.md "Probation"
    probation_seconds: float | None = None
    probation_min_requests: int = 0
    require_confirm: bool = False  # the runtime confirms each agent once its gates pass
    drift: dict[str, Any] | None = None  # drift window overrides sent with each deploy (DRIFT_KEYS)
    capture: dict[str, Any] | None = None  # capture settings sent to each agent after it activated (CAPTURE_KEYS)
    schema: int = PLAN_SCHEMA

    # --- validation -------------------------------------------------------------------------
    def problems(self) -> list[str]:
        p: list[str] = []
        for name in ("model", "version"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                p.append(f"{name} is empty: give the model name and the version to roll out")
        try:
            parse_target(self.target)
        except SelectorSyntaxError as e:
            p.append(str(e))
        if self.schema != PLAN_SCHEMA:
            p.append(f"plan schema {self.schema!r} is not supported (this hub reads {PLAN_SCHEMA}); upgrade the hub")
        if self.strategy not in STRATEGIES:
            p.append(f"strategy {self.strategy!r} is unknown: use one of {', '.join(STRATEGIES)}")
        if self.strategy == "canary":
            if (self.canary_agents is None) == (self.canary_percent is None):
                p.append("a canary needs exactly one of canary_agents (a count) or canary_percent")
            if self.canary_agents is not None and (not _is_int(self.canary_agents) or self.canary_agents < 1):
                p.append(f"canary_agents must be a whole number >= 1, got {self.canary_agents!r}")
            if self.canary_percent is not None and not (_is_num(self.canary_percent)
                                                        and 0 < self.canary_percent < 100):
                p.append(f"canary_percent must be between 0 and 100 (exclusive), got {self.canary_percent!r}")
        if self.ramp not in RAMPS:
            p.append(f"ramp {self.ramp!r} is unknown: use one of {', '.join(RAMPS)}")
        if self.strategy == "all_at_once" and (self.ramp != "rest" or self.wave_sizes or self.wave_percents):
            p.append("all_at_once has a single wave: drop ramp, wave_sizes and wave_percents, or use strategy canary")
        if self.ramp == "sizes":
            if not self.wave_sizes or not all(_is_int(s) and s >= 1 for s in self.wave_sizes):
                p.append(f"ramp sizes needs wave_sizes, whole numbers >= 1, got {list(self.wave_sizes)!r}")
        elif self.wave_sizes:
            p.append("wave_sizes is given but ramp is not 'sizes': set ramp to sizes or drop wave_sizes")
        if self.ramp == "percents":
            wp = list(self.wave_percents)
            if not wp or not all(_is_num(x) and 0 < x <= 100 for x in wp):
                p.append(f"ramp percents needs wave_percents in (0, 100], got {wp!r}")
            elif any(b <= a for a, b in zip(wp, wp[1:], strict=False)):
                p.append(f"wave_percents are cumulative and must increase, got {wp!r}")
        elif self.wave_percents:
            p.append("wave_percents is given but ramp is not 'percents': set ramp to percents or drop wave_percents")
        for name in ("bake_seconds", "agent_timeout_seconds"):
            v = getattr(self, name)
            if not _is_num(v) or v < 0 or (name == "agent_timeout_seconds" and v == 0):
                p.append(f"{name} must be a number of seconds{' > 0' if name != 'bake_seconds' else ' >= 0'}, "
                         f"got {v!r}")
        if self.failure_policy not in FAILURE_POLICIES:
            p.append(f"failure_policy {self.failure_policy!r} is unknown: use one of {', '.join(FAILURE_POLICIES)}")
        if self.late_joiners not in LATE_JOINERS:
            p.append(f"late_joiners {self.late_joiners!r} is unknown: use include or exclude")
        if self.memory_limit_mb is not None and (not _is_int(self.memory_limit_mb) or self.memory_limit_mb < 1):
            p.append(f"memory_limit_mb must be a whole number of MiB >= 1, got {self.memory_limit_mb!r}")
        if not isinstance(self.approval_required, bool):
            p.append(f"approval_required must be true or false, got {self.approval_required!r}")
        p.extend(_gate_problems(self.gates))
        p.extend(_device_problems(self))
        return p

    def probation_args(self) -> dict[str, Any] | None:
        """The deploy's ``probation`` argument (docs/protocol.md), None when the plan asks for none."""
        if self.probation_seconds is None:
            return None
        return {"seconds": float(self.probation_seconds), "min_requests": int(self.probation_min_requests),
                "require_confirm": bool(self.require_confirm)}

    def validate(self) -> RolloutPlan:
        p = self.problems()
        if p:
            raise PlanError("the rollout plan is invalid:\n  - " + "\n  - ".join(p) + "\nfix these and start again",
                            problems=p)
        return self

    @property
    def target_spec(self) -> Target:
        return parse_target(self.target)

    # --- wave sizes -------------------------------------------------------------------------
    def wave_counts(self, n: int) -> list[int]:
        """Sizes of the waves for ``n`` targeted agents; the last wave also takes any late joiners."""
        if n <= 0:
            return []
        if self.strategy == "all_at_once":
            return [n]
        if self.canary_agents is not None:
            canary = self.canary_agents
        else:
            canary = math.ceil(n * float(self.canary_percent or 0) / 100)
        counts = [min(max(canary, 1), n)]
        left = n - counts[0]
        if self.ramp == "sizes":
            for s in self.wave_sizes:
                if left <= 0:
                    break
                counts.append(min(s, left))
                left -= counts[-1]
        elif self.ramp == "percents":
            for pct in self.wave_percents:
                upto = min(n, math.ceil(n * pct / 100))
                size = upto - (n - left)
                if size > 0:
                    counts.append(size)
                    left -= size
        elif self.ramp == "double":
            size = counts[0]
            while left > 0:
                size *= 2
                counts.append(min(size, left))
                left -= counts[-1]
        if left > 0:
            counts.append(left)
        return counts

    # --- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["wave_sizes"] = list(self.wave_sizes)
        d["wave_percents"] = list(self.wave_percents)
        for name in ("drift", "capture"):
            d[name] = dict(d[name]) if d[name] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolloutPlan:
        if not isinstance(d, Mapping):
            raise PlanError(f"a rollout plan is a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PlanError(f"unknown plan field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(known))}",
                            problems=[f"unknown field {u}" for u in unknown])
        missing = [k for k in ("model", "version", "target") if k not in d]
        if missing:
            raise PlanError(f"the plan lacks {', '.join(missing)}: a plan names the model, version and target",
                            problems=[f"missing {m}" for m in missing])
        if d.get("schema", PLAN_SCHEMA) != PLAN_SCHEMA:
            raise PlanError(f"plan schema {d.get('schema')!r} is not supported (this hub reads {PLAN_SCHEMA}); "
                            "upgrade the hub or write the plan for this version")
        kw = dict(d)
        gates = kw.pop("gates", None) or {}
        if not isinstance(gates, Mapping):
            raise PlanError(f"gates must be an object, got {gates!r}")
        gate_names = {f.name for f in fields(Gates)}
        bad_gates = sorted(set(gates) - gate_names)
        if bad_gates:
            raise PlanError(f"unknown gate(s) {', '.join(bad_gates)}; known gates: {', '.join(sorted(gate_names))}")
        for name in ("wave_sizes", "wave_percents"):
            if name in kw:
                if not isinstance(kw[name], (list, tuple)):
                    raise PlanError(f"{name} must be a list, got {kw[name]!r}")
                kw[name] = tuple(kw[name])
        for name in ("drift", "capture"):
            if kw.get(name) is not None:
                if not isinstance(kw[name], Mapping):
                    raise PlanError(f"{name} must be an object, got {kw[name]!r}")
                kw[name] = dict(kw[name])
        return cls(gates=Gates(**gates), **kw).validate()


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _gate_problems(g: Gates) -> list[str]:
    p = []
    for name in ("max_error_rate", "min_shadow_agreement", "max_estimate_drop"):
        v = getattr(g, name)
        if v is not None and not (_is_num(v) and 0 <= v <= 1):
            p.append(f"gate {name} is a fraction between 0 and 1 (0.02 = 2 %), got {v!r}")
    if g.max_p99_ratio is not None and not (_is_num(g.max_p99_ratio) and g.max_p99_ratio > 0):
        p.append(f"gate max_p99_ratio is a positive ratio (1.2 = at most 20 % slower), got {g.max_p99_ratio!r}")
    for name in ("min_requests", "min_shadow_requests", "min_estimate_rows"):
        v = getattr(g, name)
        if not _is_int(v) or v < 0:
            p.append(f"gate {name} must be a whole number >= 0, got {v!r}")
    for name in ("install_and_smoke", "no_drift"):
        if not isinstance(getattr(g, name), bool):
            p.append(f"gate {name} must be true or false, got {getattr(g, name)!r}")
    if g.min_shadow_agreement is None and _is_int(g.min_shadow_requests) and g.min_shadow_requests > 0:
        p.append("gate min_shadow_requests is set without min_shadow_agreement: set both or neither")
    if g.max_estimate_drop is None and _is_int(g.min_estimate_rows) and g.min_estimate_rows > 0:
        p.append("gate min_estimate_rows is set without max_estimate_drop: set both or neither")
    return p


def _device_problems(plan: RolloutPlan) -> list[str]:
    """The settings carried to each device: probation, drift windows, capture."""
    p = []
    ps = plan.probation_seconds
    if ps is not None and not (_is_num(ps) and 0 < ps <= MAX_PROBATION_SECONDS):
        p.append(f"probation_seconds must be above 0 and at most {MAX_PROBATION_SECONDS:.0f} (7 days), got {ps!r}")
    if not _is_int(plan.probation_min_requests) or not 0 <= plan.probation_min_requests <= MAX_PROBATION_REQUESTS:
        p.append(f"probation_min_requests must be a whole number >= 0, got {plan.probation_min_requests!r}")
    if not isinstance(plan.require_confirm, bool):
        p.append(f"require_confirm must be true or false, got {plan.require_confirm!r}")
    if ps is None and (plan.require_confirm is True or plan.probation_min_requests not in (0, None)):
        p.append("require_confirm and probation_min_requests need probation_seconds (the device's deadline)")
    if (ps is not None and _is_num(ps) and plan.require_confirm is False and _is_num(plan.bake_seconds)
            and plan.bake_seconds < ps):
        p.append(f"without require_confirm a device decides its probation only at its deadline: bake_seconds "
                 f"({plan.bake_seconds!r}) must be at least probation_seconds ({ps!r}), or set require_confirm")
    if (ps is not None and plan.require_confirm is True and _is_int(plan.probation_min_requests)
            and _is_int(plan.gates.min_requests) and plan.probation_min_requests > plan.gates.min_requests):
        p.append(f"probation_min_requests ({plan.probation_min_requests}) is above gate min_requests "
                 f"({plan.gates.min_requests}): the hub confirms once the gates pass, so raise min_requests")
    if plan.drift is not None:
        d = plan.drift
        unknown = sorted(set(d) - set(DRIFT_KEYS)) if isinstance(d, Mapping) else []
        if not isinstance(d, Mapping) or not d:
            p.append(f"drift is an object with some of {', '.join(DRIFT_KEYS)}, got {d!r}")
        elif unknown:
            p.append(f"drift has unknown key(s) {', '.join(unknown)}; known: {', '.join(DRIFT_KEYS)}")
        else:
            for k, v in d.items():
                if k == "seconds":
                    if not (_is_num(v) and v >= 0):
                        p.append(f"drift.seconds must be a number of seconds >= 0 (0: by rows only), got {v!r}")
                elif not (_is_int(v) and v >= 1):
                    p.append(f"drift.{k} must be a whole number >= 1, got {v!r}")
    if plan.capture is not None:
        c = plan.capture
        unknown = sorted(set(c) - set(CAPTURE_KEYS)) if isinstance(c, Mapping) else []
        if not isinstance(c, Mapping) or not c:
            p.append(f"capture is an object with some of {', '.join(CAPTURE_KEYS)}, got {c!r}")
        elif unknown:
            p.append(f"capture has unknown key(s) {', '.join(unknown)}; known: {', '.join(CAPTURE_KEYS)}")
        else:
            if "enabled" in c and not isinstance(c["enabled"], bool):
                p.append(f"capture.enabled must be true or false, got {c['enabled']!r}")
            for k, v in c.items():
                if k != "enabled" and not (_is_int(v) and v >= 0):
                    p.append(f"capture.{k} must be a whole number >= 0, got {v!r}")
    return p
