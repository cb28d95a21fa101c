"""The agent's on-disk store: installed bundles, the active pointer, replay counters.

Layout under ``state_dir``::

    state.json              active bundle, history, accepted command counters, session
    bundles/<sha256>.elb    verified bundles exactly as received (re-verified on every load)
    incoming/<id>.part      bundle transfers in progress (see edgeloop.agent.transfer); a
                            verified one is renamed to bundles/ (same file system), not copied
    incoming/<id>.json      a transfer's spec and bitmap of received chunks

Every write goes through :mod:`edgeloop.agent.fsutil` (write beside, fsync, atomic rename,
fsync the folder), or is a fsynced transfer file renamed into ``bundles/``. A bundle file is
complete on disk before ``state.json`` names it, so the active pointer changes last: a power
cut at any point leaves either the old model or the new one active, never a half-written one.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeloop.agent.errors import StoreError
from edgeloop.agent.fsutil import atomic_write_bytes, atomic_write_json, fsync_dir

log = logging.getLogger(__name__)
STATE_SCHEMA = 1
HISTORY_LIMIT = 10  # installed bundles kept for rollback


@dataclass
class InstalledBundle:
    sha256: str
    model: str
    version: str
    installed_at: float

    def to_dict(self) -> dict:
        return {"sha256": self.sha256, "model": self.model, "version": self.version,
                "installed_at": self.installed_at}

    @classmethod
    def from_dict(cls, d: dict) -> InstalledBundle:
        return cls(sha256=str(d["sha256"]), model=str(d["model"]), version=str(d["version"]),
                   installed_at=float(d["installed_at"]))


@dataclass
class StoreState:
    active: str | None = None
    history: list[str] = field(default_factory=list)  # previously active, newest first
    installed: dict[str, InstalledBundle] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # key id -> highest accepted command counter
    session: int = 0  # increments on every broker connect
    schema: int = STATE_SCHEMA

    def to_dict(self) -> dict:
        return {"active": self.active, "history": list(self.history),
                "installed": {sha: b.to_dict() for sha, b in self.installed.items()},
                "counters": dict(self.counters), "session": self.session, "schema": self.schema}

    @classmethod
    def from_dict(cls, d: dict) -> StoreState:
        if d.get("schema") != STATE_SCHEMA:
            raise StoreError(f"state.json schema {d.get('schema')!r} is not {STATE_SCHEMA}; upgrade the agent")
        return cls(
            active=d.get("active"),
            history=list(d.get("history", [])),
            installed={k: InstalledBundle.from_dict(v) for k, v in d.get("installed", {}).items()},
            counters={str(k): int(v) for k, v in d.get("counters", {}).items()},
            session=int(d.get("session", 0)),
        )


class AgentStore:
    """Owns ``state_dir``. Thread-safe; all state changes are persisted before returning."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.bundles_dir = self.root / "bundles"
        self.incoming_dir = self.root / "incoming"
        self._lock = threading.RLock()
        for d in (self.root, self.bundles_dir, self.incoming_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._clean_temp_files()
        self.state = self._load()

    # --- state ---------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def _clean_temp_files(self) -> None:
        for d in (self.root, self.bundles_dir):
            for p in d.glob(".tmp-*"):
                log.info("removing leftover temporary file %s (interrupted write)", p)
                p.unlink(missing_ok=True)

    def _load(self) -> StoreState:
        if not self.state_path.exists():
            return StoreState()
        try:
            state = StoreState.from_dict(json.loads(self.state_path.read_text("utf-8")))
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(
                f"{self.state_path} is unreadable ({exc}); move it aside to start with an empty store"
            ) from exc
        # drop pointers to bundles that are gone (e.g. removed by hand)
        for sha in list(state.installed):
            if not self.bundle_path(sha).exists():
                log.warning("bundle %s listed in state.json is missing on disk; forgetting it", sha[:12])
                state.installed.pop(sha)
        state.history = [s for s in state.history if s in state.installed]
        if state.active and state.active not in state.installed:
            state.active = state.history.pop(0) if state.history else None
        return state

    def _save(self) -> None:
        atomic_write_json(self.state_path, self.state.to_dict())

    # --- counters and sessions ----------------------------------------------
    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self.state.counters)

    def accept_counter(self, keyid: str, counter: int) -> None:
        """Persist a command counter *before* acting on the command."""
        with self._lock:
            if counter <= self.state.counters.get(keyid, 0):
                raise StoreError(f"counter {counter} for key {keyid} is not above the stored one")
            self.state.counters[keyid] = counter
            self._save()

    def next_session(self) -> int:
        with self._lock:
            self.state.session += 1
            self._save()
            return self.state.session

    # --- bundles ---------------------------------------------------------------
    def bundle_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise StoreError(f"{sha256!r} is not a bundle sha256")
        return self.bundles_dir / f"{sha256}.elb"

    def has_bundle(self, sha256: str) -> bool:
        with self._lock:
            return sha256 in self.state.installed and self.bundle_path(sha256).exists()

    def read_bundle(self, sha256: str) -> bytes:
        try:
            return self.bundle_path(sha256).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"bundle {sha256[:12]} is not in this agent's store") from None

    def install(self, sha256: str, data: bytes, model: str, version: str) -> None:
        """Write a verified bundle and make it active (the pointer changes last)."""
        with self._lock:
            path = self.bundle_path(sha256)
            if not path.exists():
                atomic_write_bytes(path, data)
            self.state.installed[sha256] = InstalledBundle(sha256, model, version, time.time())
            self._activate(sha256)

    def install_file(self, sha256: str, path: Path, model: str, version: str) -> None:
        """Move a verified, fsynced bundle file (a finished transfer) into the store and make it
        active: one rename, no copy; the pointer changes last. ``path`` must be on the store's
        file system (``incoming/`` is)."""
        with self._lock:
            target = self.bundle_path(sha256)
            os.replace(path, target)
            fsync_dir(self.bundles_dir)
            self.state.installed[sha256] = InstalledBundle(sha256, model, version, time.time())
            self._activate(sha256)

    def activate(self, sha256: str) -> None:
        """Make an already installed bundle active (rollback)."""
        with self._lock:
            if sha256 not in self.state.installed:
                raise StoreError(f"bundle {sha256[:12]} is not installed on this agent")
            self._activate(sha256)

    def _activate(self, sha256: str) -> None:
        prev = self.state.active
        if prev and prev != sha256:
            self.state.history = [prev] + [s for s in self.state.history if s not in (prev, sha256)]
        else:
            self.state.history = [s for s in self.state.history if s != sha256]
        self.state.active = sha256
        dropped = self._prune()
        self._save()
        for sha in dropped:  # files go only after state.json no longer names them
            try:
                os.unlink(self.bundle_path(sha))
            except OSError:
                pass

    def _prune(self) -> list[str]:
        keep = {self.state.active, *self.state.history[: HISTORY_LIMIT - 1]}
        dropped = [sha for sha in self.state.installed if sha not in keep]
        for sha in dropped:
            self.state.installed.pop(sha)
        self.state.history = [s for s in self.state.history if s not in dropped]
        return dropped

    def deactivate(self) -> None:
        with self._lock:
            self.state.active = None
            self._save()

    def active(self) -> InstalledBundle | None:
        with self._lock:
            return self.state.installed.get(self.state.active) if self.state.active else None

    def installed(self) -> list[InstalledBundle]:
        with self._lock:
            return sorted(self.state.installed.values(), key=lambda b: b.installed_at)

    def get(self, sha256: str) -> InstalledBundle | None:
        """The installed bundle with this sha256, if any."""
        with self._lock:
            return self.state.installed.get(sha256)

    def find(self, model: str, version: str) -> InstalledBundle | None:
        with self._lock:
            for b in self.state.installed.values():
                if b.model == model and b.version == version:
                    return b
        return None
