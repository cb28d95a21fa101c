"""The pre-flight during an install: measure, decide, report, remember the pick -- or refuse.

Called by the control thread (:mod:`edgeloop.agent.control`) for a deploy, after the bundle verified and
before anything is loaded for serving: :func:`preflight_install` measures the bundle's models in a child
process (:func:`edgeloop.agent.preflight.measure`), decides (:func:`~edgeloop.agent.preflight.decide`),
publishes a ``preflight`` event whose details are the :class:`~edgeloop.agent.wire.preflight.PreflightReport`,
saves the pick (``<state_dir>/preflight.json``, bundle sha256 -> variant) and raises
:class:`PreflightError` when nothing can be served: the install is refused, nothing is activated, the
previous model keeps serving.

It runs when the manifest carries variants (a choice to make), when the deploy names a
``memory_limit_mb`` (a limit to enforce), or on every install with ``[preflight] always = true``;
never with ``[preflight] enabled = false``. :func:`served_variant` gives the manifest and model bytes
every later load of the bundle serves (install, restart, rollback, probation fallback): the saved pick,
else the entrypoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from edgeloop.agent.errors import BundleError
from edgeloop.agent.fsutil import atomic_write_json
from edgeloop.agent.preflight import PreflightSettings, decide, measure
from edgeloop.agent.wire.bundle import VerifiedBundle
from edgeloop.agent.wire.manifest import Manifest, SmokeTest
from edgeloop.agent.wire.preflight import PreflightReport

log = logging.getLogger("edgeloop.agent.service")

PICKS_FILE = "preflight.json"


class PreflightError(BundleError):
    """The pre-flight found no model of the bundle this device can serve (its ``code`` says why)."""

    code = "preflight_refused"


def _picks_path(state_dir: Path) -> Path:
    return Path(state_dir) / PICKS_FILE


def load_picks(state_dir: Path) -> dict[str, str]:
    """bundle sha256 -> the variant the pre-flight picked (empty when none was saved or it is unreadable)."""
    try:
        doc = json.loads(_picks_path(state_dir).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    picks = doc.get("picks") if isinstance(doc, dict) else None
    return {str(k): str(v) for k, v in picks.items()} if isinstance(picks, dict) else {}


def save_pick(state_dir: Path, sha: str, pick: str, keep: set[str]) -> None:
    """Remember ``pick`` for bundle ``sha`` (durably), forgetting bundles no longer in ``keep``."""
    picks = {k: v for k, v in load_picks(state_dir).items() if k in keep}
    picks[sha] = pick
    atomic_write_json(_picks_path(state_dir), {"picks": picks})


def served_variant(vb: VerifiedBundle, pick: str | None) -> tuple[Manifest, bytes]:
    """The manifest (entrypoint and smoke test of the picked model) and the bytes to serve ``vb`` with."""
    m = vb.manifest
    v = m.variants.get(pick) if m.variants is not None and pick else None
    if v is None or v.path == m.entrypoint:
        return m, vb.model_bytes
    smoke = m.smoke_test
    if smoke is not None:
        smoke = SmokeTest(inputs=smoke.inputs, expected=v.smoke_expected or smoke.expected, atol=v.smoke_atol)
    return dataclasses.replace(m, entrypoint=v.path, smoke_test=smoke), vb.files[v.path]


def wanted(settings: PreflightSettings, manifest: Manifest, memory_limit_mb: int | None) -> bool:
    """Whether an install of ``manifest`` runs a pre-flight (see the module docstring)."""
    if not settings.enabled:
        return False
    return settings.always or memory_limit_mb is not None or (
        manifest.variants is not None and len(manifest.variants.models) > 1)


def hub_pick(manifest: Manifest) -> str:
    if manifest.variants is not None:
        return manifest.variants.hub_pick
    return str(manifest.quantization.get("chosen") or "fp32")


def run_preflight(vb: VerifiedBundle, sha: str, settings: PreflightSettings, memory_limit_mb: int | None,
                  timeout: float, now: float) -> PreflightReport:
    """Measure the bundle's models and decide (no I/O beyond the measuring child)."""
    m = vb.manifest
    if m.variants is not None:
        models = [(v.name, vb.files[v.path]) for v in m.variants.models]
    else:
        models = [(hub_pick(m), vb.model_bytes)]
    smoke = {name: served_variant(vb, name)[0].smoke_test for name, _ in models}  # what each must pass here
    figures = measure(models, m.n_features, runs=settings.runs, seconds=settings.seconds, timeout=timeout,
                      smoke=smoke)
    d = decide(figures, m.variants, hub_pick(m), memory_limit_mb)
    vs = m.variants
    return PreflightReport(
        model=m.model_name, version=m.version, bundle_sha256=sha, pick=d.pick, hub_pick=hub_pick(m), code=d.code,
        reason=d.reason, figures=figures, measured_at=now, memory_limit_mb=memory_limit_mb,
        budget_points=vs.budget_points if vs is not None else None, metric=vs.metric if vs is not None else None,
        drops={v.name: v.drop_points for v in vs.models} if vs is not None else {})


def preflight_install(agent: Any, vb: VerifiedBundle, sha: str, meta: dict, command_id: str) -> None:
    """The install's pre-flight on ``agent`` (an :class:`~edgeloop.agent.control.AgentControl`): see the module
    docstring. ``meta`` is the deploy's (``memory_limit_mb``). Raises :class:`PreflightError` on a refusal."""
    settings: PreflightSettings = agent.cfg.preflight
    limit = meta.get("memory_limit_mb")
    if not wanted(settings, vb.manifest, limit):
        return
    report = run_preflight(vb, sha, settings, limit, agent.cfg.install_timeout_seconds, agent.clock())
    (log.info if report.ok else log.warning)("pre-flight of %s %s (bundle %s): %s", report.model, report.version,
                                             sha[:12], report.reason)
    if report.ok:
        keep = {b.sha256 for b in agent.store.installed()} | {sha}
        save_pick(agent.cfg.state_dir, sha, str(report.pick), keep)  # before activation: a restart serves it too
    msg = (f"{report.model} {report.version}: pre-flight picks {report.pick}" if report.ok
           else f"{report.model} {report.version}: pre-flight refuses the bundle") + f" ({report.reason})"
    agent._publish_event(agent._event("preflight", report.ok, report.code, msg, command_id, report.to_dict()))
    if not report.ok:
        raise PreflightError(f"pre-flight refused {report.model} {report.version}: {report.reason}. Nothing was "
                             "activated. Raise the rollout's memory_limit_mb, or rebuild the model smaller or "
                             "for this onnxruntime", code=report.code)


__all__ = ["PICKS_FILE", "PreflightError", "load_picks", "preflight_install", "run_preflight", "save_pick",
           "served_variant", "wanted"]
