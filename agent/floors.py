"""Version floors: no deploy below the newest version of a model this agent installed by a deploy.

Anti-rollback in the manner of RAUC's ``min-bundle-version`` and TUF's "versions never go down",
switched on by ``[security] version_floor = true`` in the agent config. A command counter already
stops a *replayed* deploy; the floor also stops a *newly signed* deploy of an older version (an
operator's slip, a bundle folder swapped on the hub). Going back stays possible, but only by a
signed ``rollback`` command to a bundle the agent holds: a rollback never lowers the floor.

The floor of a model is the highest of: the version recorded in ``<state_dir>/floors.json``
(raised after every successful deploy) and the active bundle's version (so a crash between the
activation and the floor's save, or an agent that had the floor off until now, loses nothing).
Versions compare as dot-separated integers (``"2"`` < ``"10"``, ``"1.9"`` < ``"1.10"``); a version
that is not of that form has no order, gets no floor and is never refused by one (logged).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from edgeloop.agent.errors import CommandError
from edgeloop.agent.fsutil import atomic_write_json

if TYPE_CHECKING:
    from edgeloop.agent.config import AgentConfig
    from edgeloop.agent.store import InstalledBundle

log = logging.getLogger(__name__)
FLOORS_FILE = "floors.json"
SCHEMA = 1


class VersionFloorError(CommandError):
    """A deploy names an older version of a model than this agent has already installed."""

    code = "below_floor"


def version_key(version: str) -> tuple[int, ...] | None:
    """``"1.10"`` -> ``(1, 10)``; None for a version that is not dot-separated integers."""
    parts = version.split(".") if isinstance(version, str) else []
    if not parts or not all(p.isdigit() and p.isascii() and len(p) <= 18 for p in parts):
        return None
    return tuple(int(p) for p in parts)


def _path(cfg: AgentConfig) -> Path:
    return Path(cfg.state_dir) / FLOORS_FILE


def load_floors(cfg: AgentConfig) -> dict[str, str]:
    """model -> floor version, as saved; an unreadable file counts as no floors (logged)."""
    path = _path(cfg)
    try:
        doc = json.loads(path.read_bytes())
        floors = doc["floors"]
        if doc.get("schema") != SCHEMA or not isinstance(floors, dict):
            raise ValueError(f"schema {doc.get('schema')!r}")
        return {str(k): str(v) for k, v in floors.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("version floors in %s cannot be read (%s): the active bundle's versions are the floors", path,
                    exc)
        return {}


def floor_of(cfg: AgentConfig, model: str, active: InstalledBundle | None) -> str | None:
    """The floor of ``model``: the saved one or the active bundle's version, whichever is higher."""
    candidates = [load_floors(cfg).get(model)]
    if active is not None and active.model == model:
        candidates.append(active.version)
    ordered = [(k, v) for v in candidates if v is not None and (k := version_key(v)) is not None]
    return max(ordered)[1] if ordered else None


def check_floor(cfg: AgentConfig, meta: dict, active: InstalledBundle | None) -> None:
    """Refuse a deploy of ``meta["model"]`` ``meta["version"]`` below its floor (when floors are on)."""
    if not cfg.version_floor:
        return
    model, version = meta.get("model") or "", meta.get("version") or ""
    if not model or not version:
        raise VersionFloorError("this agent keeps version floors (security.version_floor) and the deploy command "
                                "names no model and version: deploy with a hub that names them")
    key = version_key(version)
    if key is None:
        log.info("version %r of %s is not dot-separated integers: no version floor applies", version, model)
        return
    floor = floor_of(cfg, model, active)
    floor_key = version_key(floor) if floor is not None else None
    if floor_key is not None and key < floor_key:
        raise VersionFloorError(
            f"deploy of {model} {version} refused: this agent has installed {model} {floor} (version floor). "
            f"To go back, roll back to a bundle it holds (edgeloop rollback), or deploy {floor} or newer")


def raise_floor(cfg: AgentConfig, model: str, version: str) -> None:
    """After a successful deploy: the floor of ``model`` becomes ``version`` if that is higher.
    A save that fails is logged, not raised: the active bundle's version stands in for it."""
    key = version_key(version)
    if not cfg.version_floor or key is None:
        return
    floors = load_floors(cfg)
    old = floors.get(model)
    old_key = version_key(old) if old is not None else None
    if old_key is not None and old_key >= key:
        return
    floors[model] = version
    try:
        atomic_write_json(_path(cfg), {"schema": SCHEMA, "floors": floors})
    except OSError as exc:
        log.warning("could not save the version floor %s %s: %s (the active version stands in for it)",
                    model, version, exc)
        return
    log.info("version floor of %s is now %s", model, version)
