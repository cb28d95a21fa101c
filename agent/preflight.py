"""Pre-flight on the device: measure a bundle's models on this hardware, then decide which one to serve.

Two parts, kept apart:

* :func:`measure` -- I/O: the models are measured in a short child process
  (``python -m edgeloop.agent.preflight_child``, the bytes on its stdin) so that a model that crashes
  onnxruntime, or eats the memory, cannot take the agent with it. For each model the child records
  whether onnxruntime loads it (its message, and the operators it has no kernel for), the load time, its
  smoke test, batch-1 latency p50/p99 over a short fixed budget (``runs`` runs or ``seconds`` per model,
  whichever ends first, after a few warm-up runs; the models' runs interleaved) and the peak resident
  memory: ``model_mb`` is the growth of the process's peak RSS (``VmHWM``) over its RSS before the model
  was read, i.e. what loading and running the model added. Between two models the child resets ``VmHWM``
  (Linux: ``/proc/self/clear_refs``); where it cannot, each model gets a child of its own (``ru_maxrss``).
* :func:`decide` -- pure: from the figures, the hub's accuracy budget and the deploy's memory limit, the
  pick and its reason. A model is a candidate when it loaded and ran, passed its smoke test (the manifest's
  for the entrypoint, the variant's own for the other model), stays within ``memory_limit_mb`` and loses
  at most ``budget_points`` against fp32 (the hub's numbers). Of the candidates the one with the lowest
  p50 at batch 1 *on this device* is served -- the hub's pick unless another is at least
  ``OVERRIDE_MARGIN`` (10 %) faster, so that models about as fast do not flip with the machine's noise.
  No candidate: the install is refused with the reason's code (``model_load_failed``,
  ``memory_limit_exceeded``, ``smoke_test_failed``, ``accuracy_budget_exceeded``). When the hub's pick
  itself fails its smoke test the bundle is refused (``smoke_test_failed``) even if the other model
  passes: the bundle does not do what its signer promised.

:mod:`edgeloop.agent.preflight_install` runs both during an install (docs/rollouts.md, "Pre-flight").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgeloop.agent.errors import ConfigError
from edgeloop.agent.wire.manifest import SmokeTest, Variants
from edgeloop.agent.wire.preflight import VariantFigures

CHILD_MODULE = "edgeloop.agent.preflight_child"  # what the child runs (light imports: starts fast)
# the device overrides the hub's pick for speed only when the other model's p50 is this much lower: two models
# about as fast would otherwise flip with the machine's noise from one install (and one device) to the next
OVERRIDE_MARGIN = 0.10


@dataclass(frozen=True)
class PreflightSettings:
    """The agent config's ``[preflight]`` table."""

    enabled: bool = True  # false: no pre-flight; the hub's pick (the entrypoint) is served, no memory check
    always: bool = False  # also measure bundles with one model and no memory limit (nothing to decide)
    runs: int = 50  # batch-1 runs timed per model, at most ...
    seconds: float = 0.3  # ... and for at most this long

    KEYS = ("enabled", "always", "runs", "seconds")

    @classmethod
    def from_table(cls, table: Any, where: str = "config [preflight]") -> PreflightSettings:
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where} must be a table")
        unknown = set(table) - set(cls.KEYS)
        if unknown:
            raise ConfigError(f"{where} has unknown keys: {', '.join(sorted(unknown))} (known: {', '.join(cls.KEYS)})")
        given: dict[str, Any] = {k: (float(v) if k == "seconds" and isinstance(v, int) and not isinstance(v, bool)
                                     else v) for k, v in table.items()}
        s = cls(**given)
        for k in ("enabled", "always"):
            if not isinstance(getattr(s, k), bool):
                raise ConfigError(f"{where} {k} must be true or false")
        if isinstance(s.runs, bool) or not isinstance(s.runs, int) or not 1 <= s.runs <= 100_000:
            raise ConfigError(f"{where} runs must be a whole number from 1 to 100000, got {s.runs!r}")
        if not isinstance(s.seconds, float) or not 0 < s.seconds <= 60:
            raise ConfigError(f"{where} seconds must be above 0 and at most 60, got {s.seconds!r}")
        return s

    def to_table(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.KEYS}


# --- measurement (parent side) ---------------------------------------------------------------------
def measure(models: Sequence[tuple[str, bytes]], n_features: int, *, runs: int = 50, seconds: float = 0.3,
            timeout: float = 60.0, smoke: Mapping[str, SmokeTest | None] | None = None) -> list[VariantFigures]:
    """Figures of each ``(name, model bytes)``, in order, measured in child processes (see the module docstring
    and :mod:`edgeloop.agent.preflight_child`); ``smoke[name]``: the smoke test that model must pass here.

    Never raises for a bad model: a model that fails to load, crashes the child while loading or outlasts
    ``timeout`` comes back with ``loaded=False`` and the reason in ``error`` (the others are measured again
    without it)."""
    done: dict[str, VariantFigures] = {}
    pending = list(models)
    while pending:
        got, finished = _run_child(pending, n_features, runs, seconds, timeout, smoke or {})
        if finished and not got:  # cannot happen with a working child; never loop on it
            done.update({n: VariantFigures(n, False, error="the measuring process measured nothing")
                         for n, _ in pending})
            break
        if finished:  # all it loaded were timed; any left (no VmHWM reset there) go to a fresh child
            done.update({f.name: f for f in got})
            pending = pending[len(got):]
            continue
        if len(got) < len(pending):  # it died loading pending[len(got)]: refuse that one, measure the rest again
            culprit = pending[len(got)][0]
            done[culprit] = VariantFigures(culprit, False, error=(
                f"the measuring process died or took over {timeout:g} s (limits.install_timeout_seconds) while "
                "loading it: refused"))
            pending = [m for m in pending if m[0] != culprit]
        else:  # it died while timing them: none of them can be trusted to run
            done.update({f.name: VariantFigures(f.name, False, error=f"the measuring process died or took over "
                                                f"{timeout:g} s while running it") for f in got})
            pending = []
    return [done[name] for name, _ in models]


def _run_child(models: list[tuple[str, bytes]], n_features: int, runs: int, seconds: float,
               timeout: float, smoke: Mapping[str, SmokeTest | None]) -> tuple[list[VariantFigures], bool]:
    """One child measuring ``models`` in order: the figures of those it loaded (timed when it finished), and
    whether it finished."""
    header = {"features": n_features, "runs": runs, "seconds": seconds,
              "models": [{"name": n, "size": len(b), "smoke": s.to_dict() if (s := smoke.get(n)) else None}
                         for n, b in models]}
    stdin = json.dumps(header).encode() + b"\n" + b"".join(b for _, b in models)
    try:
        proc = subprocess.run([sys.executable, "-m", CHILD_MODULE], input=stdin, capture_output=True,
                              timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
        stdout: bytes | None = proc.stdout
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout if isinstance(exc.stdout, bytes) else None
    except OSError as exc:
        return [VariantFigures(models[0][0], False, error=f"the measuring process could not start: {exc}")], True
    return _merge(stdout)


def _merge(stdout: bytes | None) -> tuple[list[VariantFigures], bool]:
    """A child's lines (a line cut short by its end is dropped) as figures, and whether it said ``done``."""
    figs: dict[str, dict] = {}
    finished = False
    for line in (stdout or b"").decode("utf-8", "replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            break
        phase = doc.pop("phase", None)
        if phase == "load":
            figs[doc["name"]] = doc
        elif phase == "time" and doc.get("name") in figs:
            figs[doc["name"]].update(doc)
        elif phase == "done":
            finished = True
    return [VariantFigures.from_dict(d) for d in figs.values()], finished


# --- the decision (pure) ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    pick: str | None  # None: refused
    code: str  # ok | model_load_failed | smoke_test_failed | memory_limit_exceeded | accuracy_budget_exceeded
    reason: str


def decide(figures: Sequence[VariantFigures], variants: Variants | None, hub_pick: str,
           memory_limit_mb: int | None = None) -> Decision:
    """Which model to serve (see the module docstring). ``variants`` None: one model, no accuracy budget."""
    out: dict[str, str] = {}  # name -> why it is not a candidate
    codes: set[str] = set()
    for f in figures:
        spec = variants.get(f.name) if variants is not None else None
        drop = spec.drop_points if spec is not None else 0.0
        if not f.loaded:
            out[f.name] = f"{f.name} cannot be served: {f.error or 'it did not load'}"
            codes.add("model_load_failed")
        elif f.smoke_ok is False:
            out[f.name] = f"{f.name} fails its smoke test here: {f.error}"
            codes.add("smoke_test_failed")
        elif memory_limit_mb is not None and (f.model_mb or 0.0) > memory_limit_mb:
            out[f.name] = f"{f.name} needs {f.model_mb:.1f} MiB > the rollout's memory limit {memory_limit_mb} MiB"
            codes.add("memory_limit_exceeded")
        elif variants is not None and drop > variants.budget_points:
            unit = "pt" if variants.metric == "accuracy" else "% RMSE"
            out[f.name] = f"{f.name} loses {drop:.2f} {unit} > the budget {variants.budget_points:g} {unit}"
            codes.add("accuracy_budget_exceeded")
    candidates = sorted((f for f in figures if f.name not in out),
                        key=lambda f: (f.p50_ms if f.p50_ms is not None else float("inf"), f.name != "int8"))
    not_picked = "; ".join(out[f.name] for f in figures if f.name in out)
    if any(f.name == hub_pick and f.smoke_ok is False for f in figures):  # the bundle does not keep its promise
        return Decision(None, "smoke_test_failed", f"the hub's pick {hub_pick} fails its smoke test here, so the "
                        f"bundle is refused: {not_picked}; the previous model keeps serving")
    if not candidates:
        code = next(c for c in ("memory_limit_exceeded", "model_load_failed", "smoke_test_failed",
                                "accuracy_budget_exceeded") if c in codes)
        return Decision(None, code, f"nothing can be served: {not_picked}; the previous model keeps serving")
    best = candidates[0]
    speed = ", ".join(f"{f.name} {f.p50_ms:.3f} ms" for f in figures if f.p50_ms is not None)
    parts = [f"p50 at batch 1 on this device: {speed}" if speed else "", not_picked]
    hub = next((f for f in candidates if f.name == hub_pick), None)
    if (hub is not None and best is not hub and best.p50_ms is not None and hub.p50_ms is not None
            and best.p50_ms > hub.p50_ms * (1.0 - OVERRIDE_MARGIN)):
        parts.append(f"{best.name} is not {OVERRIDE_MARGIN:.0%} faster than the hub's pick here")
        best = hub
    elif len(candidates) > 1:
        parts.append(f"{best.name} is the fastest within the accuracy budget")
    verdict = f"serve {best.name}" + (f" (the hub picked {hub_pick})" if best.name != hub_pick else " (as the hub)")
    return Decision(best.name, "ok", "; ".join(p for p in parts if p) + f" -> {verdict}")


__all__ = ["Decision", "PreflightSettings", "decide", "measure"]


