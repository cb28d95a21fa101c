"""Gate evaluation over what one agent reports during the bake: pass, fail (with the reason) or waiting."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from edgeloop.hub.rollout.errors import RolloutError
from edgeloop.hub.rollout.plan import Gates

PASS, FAIL, WAITING = "pass", "fail", "waiting"


@dataclass(frozen=True)
class Observation:
    """What an agent reports about the new version while it bakes (cumulative since activation)."""

    installed_ok: bool | None = None  # None: not reported yet
    smoke_ok: bool | None = None
    requests: int = 0
    errors: int = 0
    latency_p99_ms: float | None = None
    replaced_p99_ms: float | None = None  # the replaced version's p99 on this device; None: nothing replaced
    drift_flags: tuple[str, ...] = ()
    shadow_agreement: float | None = None  # 0..1
    shadow_requests: int = 0
    # accuracy without labels (calibrated classifiers; see hub/rollout/estimates.py for filling these from the
    # new version's drift reports): its estimate pooled over the bake, the rows behind it, the half-width of its
    # interval, and what it is compared with -- the live model's estimate on the same traffic, or the reference
    estimated_accuracy: float | None = None
    estimate_rows: int = 0
    estimate_margin: float = 0.0
    baseline_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["drift_flags"] = list(self.drift_flags)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Observation:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise RolloutError(f"observation has unknown field(s) {', '.join(unknown)}; "
                               f"known: {', '.join(sorted(names))}", code="bad_observation")
        kw = dict(d)
        if "drift_flags" in kw:
            kw["drift_flags"] = tuple(kw["drift_flags"])
        return cls(**kw)


@dataclass(frozen=True)
class Verdict:
    status: str  # PASS | FAIL | WAITING
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"status": self.status, "reason": self.reason}


def evaluate(gates: Gates, obs: Observation) -> Verdict:
    """Judge one agent. A failure that more data cannot undo fails at once; otherwise wait for enough data."""
    if gates.install_and_smoke:
        if obs.installed_ok is False:
            return Verdict(FAIL, "the new version did not install")
        if obs.smoke_ok is False:
            return Verdict(FAIL, "the new version failed its smoke test on the device")
    if gates.no_drift and obs.drift_flags:
        return Verdict(FAIL, f"drift was flagged on {', '.join(sorted(obs.drift_flags))}")
    if gates.install_and_smoke and (obs.installed_ok is None or obs.smoke_ok is None):
        return Verdict(WAITING, "waiting for the install and smoke test result")
    if obs.requests < gates.min_requests:
        return Verdict(WAITING, f"{obs.requests} of {gates.min_requests} requests observed so far")
    if gates.max_error_rate is not None and obs.requests > 0:
        rate = obs.errors / obs.requests
        if rate > gates.max_error_rate:
            return Verdict(FAIL, f"error rate {rate:.1%} ({obs.errors} of {obs.requests} requests) is above "
                                 f"the allowed {gates.max_error_rate:.1%}")
    if gates.max_p99_ratio is not None and obs.replaced_p99_ms is not None:
        if obs.latency_p99_ms is None:
            return Verdict(WAITING, "waiting for the p99 latency of the new version")
        if obs.replaced_p99_ms > 0:
            ratio = obs.latency_p99_ms / obs.replaced_p99_ms
            if ratio > gates.max_p99_ratio:
                return Verdict(FAIL, f"p99 latency {obs.latency_p99_ms:.2f} ms is {ratio:.2f}x the replaced "
                                     f"version's {obs.replaced_p99_ms:.2f} ms (allowed {gates.max_p99_ratio:.2f}x)")
    if gates.max_estimate_drop is not None:
        if obs.estimated_accuracy is None or obs.baseline_accuracy is None or \
                obs.estimate_rows < max(1, gates.min_estimate_rows):
            return Verdict(WAITING, f"{obs.estimate_rows} of {max(1, gates.min_estimate_rows)} rows with an "
                                    "accuracy estimate so far")
        drop = obs.baseline_accuracy - (obs.estimated_accuracy + obs.estimate_margin)
        if drop > gates.max_estimate_drop:
            return Verdict(FAIL, f"estimated accuracy {obs.estimated_accuracy:.1%} (+-{obs.estimate_margin:.1%}, "
                                 f"{obs.estimate_rows} rows) is {obs.baseline_accuracy - obs.estimated_accuracy:.1%} "
                                 f"below the baseline {obs.baseline_accuracy:.1%} (allowed drop "
                                 f"{gates.max_estimate_drop:.1%} beyond the interval)")
    if gates.min_shadow_agreement is not None:
        if obs.shadow_requests < gates.min_shadow_requests or obs.shadow_agreement is None:
            return Verdict(WAITING, f"{obs.shadow_requests} of {gates.min_shadow_requests} shadow requests compared")
        if obs.shadow_agreement < gates.min_shadow_agreement:
            return Verdict(FAIL, f"shadow agreement {obs.shadow_agreement:.1%} over {obs.shadow_requests} requests "
                                 f"is below the required {gates.min_shadow_agreement:.1%}")
    return Verdict(PASS, "all gates pass")
