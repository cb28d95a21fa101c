"""Drift window overrides a deploy carried (``drift``, :mod:`edgeloop.agent.wire.drift_windows`), kept per
bundle in ``<state_dir>/drift_windows.json`` so that a restart, a rollback or a probation's fallback to that
bundle keeps them. They win over the agent config's ``[drift]``, which wins over the bundle's defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeloop.agent.fsutil import atomic_write_json

WINDOWS_FILE = "drift_windows.json"


def _path(state_dir: Path) -> Path:
    return Path(state_dir) / WINDOWS_FILE


def load_windows(state_dir: Path) -> dict[str, dict[str, Any]]:
    """bundle sha256 -> its overrides (empty when none was saved or the file is unreadable)."""
    try:
        doc = json.loads(_path(state_dir).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    windows = doc.get("windows") if isinstance(doc, dict) else None
    return {str(k): dict(v) for k, v in windows.items() if isinstance(v, dict)} if isinstance(windows, dict) else {}


def save_windows(state_dir: Path, sha: str, overrides: dict[str, Any] | None, keep: set[str]) -> None:
    """Remember the deploy's ``overrides`` for bundle ``sha`` (None: it gave none, any older ones are dropped),
    forgetting bundles no longer in ``keep``. Written only when something changes."""
    before = load_windows(state_dir)
    windows = {k: v for k, v in before.items() if k in keep and k != sha}
    if overrides:
        windows[sha] = dict(overrides)
    if windows != before:
        atomic_write_json(_path(state_dir), {"windows": windows})


def policy_overrides(state_dir: Path, sha: str, config: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``WindowPolicy.of`` for bundle ``sha``: the config's ``[drift]``, then the deploy's."""
    return {**config, **load_windows(state_dir).get(sha, {})}


__all__ = ["WINDOWS_FILE", "load_windows", "policy_overrides", "save_windows"]
