"""The agent's on-disk store: installed bundles, the active pointer, replay counters.

Layout under ``state_dir``::

    state.json              active bundles (one per model name: ``models``; ``active`` is the one
                            activated last), history, accepted command counters, session, the
                            commands accepted but not yet answered (``pending``), and the active
                            version's ``probation`` (the dead-man switch, edgeloop.agent.dead_man)
    state.prev.json         the last state written before it (the fallback when state.json is unreadable)
    bundles/<sha256>.elb    verified bundles exactly as received (re-verified on every load)
    incoming/<id>.part      bundle transfers in progress (see edgeloop.agent.transfer); a
                            verified one is renamed to bundles/ (same file system), not copied
    incoming/<id>.json      a transfer's spec and bitmap of received chunks

Every write goes through :mod:`edgeloop.agent.fsutil` (write beside, fsync, atomic rename,
fsync the folder), or is a fsynced transfer file renamed into ``bundles/``. A bundle file is
complete on disk before ``state.json`` names it, so the active pointer changes last: a power
cut at any point leaves either the old model or the new one active, never a half-written one.

The state in memory changes only after the new state is durably on disk: a failed save (a
full disk: :class:`~edgeloop.agent.errors.DiskFullError`) leaves memory and disk as they were.

Start-up: a ``state.json`` that cannot be read falls back to ``state.prev.json``; when neither
can be read (or state.json is gone) while bundles are on disk, the bundles are kept as
:attr:`AgentStore.unclaimed` for the agent to re-verify and adopt. The agent then removes
everything else no state references -- bundle files, leftovers of interrupted writes
(:meth:`AgentStore.collect_garbage`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeloop.agent.errors import StoreError
from edgeloop.agent.fsutil import atomic_write_bytes, disk_full_error, fsync_dir

log = logging.getLogger(__name__)
STATE_SCHEMA = 1
HISTORY_LIMIT = 10  # installed bundles kept for rollback
BUNDLE_SUFFIX = ".elb"


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
    active: str | None = None  # the bundle activated last (of any model): what a single-model agent serves
    # model name -> its active bundle: every model this agent serves (several models per agent). A
    # state.json of an older agent has none: it is derived from ``active`` when read (see from_dict)
    models: dict[str, str] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)  # previously active, newest first
    installed: dict[str, InstalledBundle] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # key id -> highest accepted command counter
    session: int = 0  # increments on every broker connect
    # command id -> {"event": result event kind, "bundle_sha256": ...}: accepted, result not yet reported
    pending: dict[str, dict] = field(default_factory=dict)
    # the active version on probation (the dead-man switch, edgeloop.agent.probation): None when it is not
    probation: dict | None = None
    tags: dict[str, str] | None = None  # set by the hub's signed set_tags: replaces the config's [tags]
    schema: int = STATE_SCHEMA

    def to_dict(self) -> dict:
        return {"active": self.active, "models": dict(self.models), "history": list(self.history),
                "installed": {sha: b.to_dict() for sha, b in self.installed.items()},
                "counters": dict(self.counters), "session": self.session,
                "pending": copy.deepcopy(self.pending), "schema": self.schema,
                **({"probation": copy.deepcopy(self.probation)} if self.probation is not None else {}),
                **({"tags": dict(self.tags)} if self.tags is not None else {})}

    @classmethod
    def from_dict(cls, d: dict) -> StoreState:
        if not isinstance(d, dict):
            raise TypeError(f"a JSON object was expected, not {type(d).__name__}")
        if d.get("schema") != STATE_SCHEMA:
            raise StoreError(f"state.json schema {d.get('schema')!r} is not {STATE_SCHEMA}; upgrade the agent")
        pending = d.get("pending", {})
        if not isinstance(pending, dict) or not all(isinstance(v, dict) for v in pending.values()):
            raise TypeError("pending is not an object of objects")
        installed = {k: InstalledBundle.from_dict(v) for k, v in d.get("installed", {}).items()}
        active = d.get("active")
        models = d.get("models")
        if not isinstance(models, dict):  # written by a single-model agent: its one active bundle
            models = {installed[active].model: active} if active in installed else {}
        return cls(
            active=active,
            models={str(k): str(v) for k, v in models.items()},
            history=list(d.get("history", [])),
            installed=installed,
            counters={str(k): int(v) for k, v in d.get("counters", {}).items()},
            session=int(d.get("session", 0)),
            pending={str(k): dict(v) for k, v in pending.items()},
            probation=dict(d["probation"]) if isinstance(d.get("probation"), dict) else None,
            tags={str(k): str(v) for k, v in d["tags"].items()} if isinstance(d.get("tags"), dict) else None,
        )


def is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


class AgentStore:
    """Owns ``state_dir``. Thread-safe; every state change is durably saved before it shows in memory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.bundles_dir = self.root / "bundles"
        self.incoming_dir = self.root / "incoming"
        self._lock = threading.RLock()
        for d in (self.root, self.bundles_dir, self.incoming_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.recovered: str | None = None  # how an unreadable state.json was replaced, for the agent to report
        self.unclaimed: list[str] = []  # bundles on disk with no readable state naming them (to re-verify)
        self.state = self._load()

    # --- state ---------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    @property
    def prev_path(self) -> Path:
        return self.root / "state.prev.json"

    def collect_garbage(self) -> None:
        """Remove what no state references: leftovers of interrupted writes, and bundle files that
        neither the state nor a journalled command names (unless no state could be read: then they
        are :attr:`unclaimed`). Only the agent calls this, at start-up, before it writes anything:
        never a second process (``edgeloop-agent status``) while an agent runs."""
        for d in (self.root, self.bundles_dir):
            for p in d.glob(".tmp-*"):
                log.info("removing leftover temporary file %s (interrupted write)", p)
                p.unlink(missing_ok=True)
        self._collect_bundles()

    def _bundle_files(self) -> list[str]:
        return sorted(p.name[: -len(BUNDLE_SUFFIX)] for p in self.bundles_dir.glob(f"*{BUNDLE_SUFFIX}")
                      if is_sha256(p.name[: -len(BUNDLE_SUFFIX)]))

    @staticmethod
    def _read(path: Path) -> StoreState:
        return StoreState.from_dict(json.loads(path.read_text("utf-8")))

    def _load(self) -> StoreState:
        problems = []
        state: StoreState | None = None
        if self.state_path.exists():
            for path in (self.state_path, self.prev_path):
                try:
                    state = self._read(path)
                    break
                except FileNotFoundError:
                    problems.append(f"{path.name} is missing")
                except (ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
                    problems.append(f"{path.name} is unreadable ({exc})")
            if problems:
                log.error("%s", "; ".join(problems))
                self._keep_aside(self.state_path)
                self.recovered = ("fell back to the previous copy, state.prev.json" if state is not None
                                  else "no readable copy: started from the verified bundles on disk")
        if state is None:
            state = StoreState()
            self.unclaimed = self._bundle_files()
            if self.unclaimed and self.recovered is None:
                self.recovered = "state.json is missing: started from the verified bundles on disk"
        if problems or self.unclaimed:
            log.warning("store %s: %s; %s", self.root, "; ".join(problems) or "no state.json", self.recovered)
        # drop pointers to bundles that are gone (e.g. removed by hand)
        for sha in list(state.installed):
            if not self.bundle_path(sha).exists():
                log.warning("bundle %s listed in state.json is missing on disk; forgetting it", sha[:12])
                state.installed.pop(sha)
        state.history = [s for s in state.history if s in state.installed]
        for model, sha in list(state.models.items()):  # a model's bundle is gone: its newest previous one
            if sha not in state.installed:
                older = [s for s in state.history if state.installed[s].model == model]
                if older:
                    state.models[model] = older[0]
                    state.history.remove(older[0])
                else:
                    state.models.pop(model)
        if state.active not in state.models.values():
            state.active = next(iter(state.models.values()), None)
        return state

    def _keep_aside(self, path: Path) -> None:
        """Keep a copy of an unreadable state file for a post-mortem (one copy, the newest); the
        file itself stays until the next save replaces it."""
        try:
            shutil.copyfile(path, path.with_name(path.name + ".unreadable"))
        except OSError as exc:
            log.warning("could not keep a copy of %s: %s", path, exc)

    def _collect_bundles(self) -> None:
        keep = set(self.state.installed) | set(self.unclaimed) | {
            p.get("bundle_sha256") for p in self.state.pending.values()}
        for path in self.bundles_dir.iterdir():
            name = path.name[: -len(BUNDLE_SUFFIX)] if path.name.endswith(BUNDLE_SUFFIX) else None
            if name in keep:
                continue
            log.info("removing %s: no state references it (left by an interrupted install)", path)
            try:
                path.unlink()
            except OSError as exc:
                log.warning("could not remove %s: %s", path, exc)

    def _change(self, edit: Callable[[StoreState], object]) -> StoreState:
        """Apply ``edit`` to a copy of the state, save the copy durably, then make it the state.

        A failed save raises (:class:`DiskFullError` for a full disk, :class:`StoreError` otherwise)
        and leaves the state in memory and on disk as it was.
        """
        with self._lock:
            new = copy.deepcopy(self.state)
            edit(new)
            data = json.dumps(new.to_dict(), indent=1, sort_keys=True).encode("utf-8")
            try:
                atomic_write_bytes(self.state_path, data)
            except OSError as exc:
                raise disk_full_error(exc, self.state_path, len(data), "save the agent state") or StoreError(
                    f"could not save {self.state_path}: {exc}; the agent keeps its previous state") from exc
            self.state = new
            try:  # the fallback copy; the state above is already durable
                atomic_write_bytes(self.prev_path, data)
            except OSError as exc:
                log.warning("could not write %s (the fallback copy of the state): %s", self.prev_path, exc)
            return new

    # --- counters, sessions, commands in flight ------------------------------
    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self.state.counters)

    def accept_counter(self, keyid: str, counter: int, command_id: str | None = None,
                       pending: dict | None = None) -> None:
        """Persist a command counter *before* acting on the command; with ``pending``, remember the
        command (``command_id``) as accepted but not yet answered, in the same save."""
        def edit(st: StoreState) -> None:
            if counter <= st.counters.get(keyid, 0):
                raise StoreError(f"counter {counter} for key {keyid} is not above the stored one")
            st.counters[keyid] = counter
            if command_id is not None and pending is not None:
                st.pending[command_id] = dict(pending)
        self._change(edit)

    def pending(self) -> dict[str, dict]:
        with self._lock:
            return copy.deepcopy(self.state.pending)

    def settle(self, command_id: str) -> None:
        """The command's result was reported: forget it."""
        with self._lock:
            if command_id in self.state.pending:
                self._change(lambda st: st.pending.pop(command_id, None))

    def next_session(self, minimum: int = 0) -> int:
        """The next session number (at least ``minimum``), saved."""
        def edit(st: StoreState) -> None:
            st.session = max(st.session + 1, minimum)
        return self._change(edit).session

    # --- bundles ---------------------------------------------------------------
    def bundle_path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise StoreError(f"{sha256!r} is not a bundle sha256")
        return self.bundles_dir / f"{sha256}{BUNDLE_SUFFIX}"

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
            wrote = not path.exists()
            if wrote:
                try:
                    atomic_write_bytes(path, data)
                except OSError as exc:
                    raise disk_full_error(exc, path, len(data), "store the bundle") or StoreError(
                        f"could not write {path}: {exc}") from exc
            try:
                self._activate(sha256, InstalledBundle(sha256, model, version, time.time()))
            except StoreError:
                if wrote and sha256 not in self.state.installed:
                    path.unlink(missing_ok=True)  # nothing on disk that no state names
                raise

    def install_file(self, sha256: str, path: Path, model: str, version: str,
                     before_save: Callable[[], None] | None = None) -> None:
        """Move a verified, fsynced bundle file (a finished transfer) into the store and make it
        active: one rename, no copy; the pointer changes last. ``path`` must be on the store's
        file system (``incoming/`` is). If the state cannot be saved, the file is removed again."""
        with self._lock:
            target = self.bundle_path(sha256)
            had = sha256 in self.state.installed
            os.replace(path, target)
            fsync_dir(self.bundles_dir)
            if before_save is not None:
                before_save()
            try:
                self._activate(sha256, InstalledBundle(sha256, model, version, time.time()))
            except StoreError:
                if not had:
                    target.unlink(missing_ok=True)
                raise

    def activate_file(self, sha256: str, model: str, version: str) -> None:
        """Name and activate a verified bundle file already in ``bundles/`` (an install a crash
        interrupted after the rename, before the state named it)."""
        with self._lock:
            if not self.bundle_path(sha256).exists():
                raise StoreError(f"bundle {sha256[:12]} is not in this agent's store")
            self._activate(sha256, InstalledBundle(sha256, model, version, time.time()))

    def adopt(self, sha256: str, model: str, version: str, installed_at: float) -> None:
        """Name a re-verified bundle found on disk without a state (recovery) as installed, at the end
        of the history (adopt the newest first), without activating it."""
        def edit(st: StoreState) -> None:
            st.installed[sha256] = InstalledBundle(sha256, model, version, installed_at)
            if sha256 not in st.models.values() and sha256 not in st.history:
                st.history.append(sha256)
        self._change(edit)
        with self._lock:
            self.unclaimed = [s for s in self.unclaimed if s != sha256]

    def forget_unclaimed(self, sha256: str) -> None:
        """Remove a bundle found without a state that did not verify."""
        with self._lock:
            self.unclaimed = [s for s in self.unclaimed if s != sha256]
            self.bundle_path(sha256).unlink(missing_ok=True)

    def activate(self, sha256: str) -> None:
        """Make an already installed bundle active (rollback)."""
        with self._lock:
            if sha256 not in self.state.installed:
                raise StoreError(f"bundle {sha256[:12]} is not installed on this agent")
            self._activate(sha256)

    def _activate(self, sha256: str, new: InstalledBundle | None = None, end_probation: bool = False) -> None:
        dropped: list[str] = []

        def edit(st: StoreState) -> None:
            if end_probation:
                st.probation = None
            if new is not None:
                st.installed[sha256] = new
            model = st.installed[sha256].model  # one active bundle per model: it replaces that model's
            prev = st.models.get(model)
            if prev and prev != sha256:
                st.history = [prev] + [s for s in st.history if s not in (prev, sha256)]
            else:
                st.history = [s for s in st.history if s != sha256]
            st.models[model] = sha256
            st.active = sha256
            dropped[:] = _prune(st)

        self._change(edit)
        for sha in dropped:  # files go only after state.json no longer names them
            try:
                os.unlink(self.bundle_path(sha))
            except OSError:
                pass

    # --- probation (the dead-man switch) ----------------------------------------
    def probation(self) -> dict | None:
        with self._lock:
            return copy.deepcopy(self.state.probation)

    def tags(self) -> dict[str, str] | None:
        """The tags the hub set with a signed ``set_tags`` (None: the config's ``[tags]`` apply)."""
        with self._lock:
            return None if self.state.tags is None else dict(self.state.tags)

    def set_tags(self, tags: dict[str, str] | None) -> None:
        """Save the tags the hub set (None: back to the config's)."""
        self._change(lambda st: setattr(st, "tags", None if tags is None else dict(tags)))

    def set_probation(self, probation: dict | None) -> None:
        """Save the probation of the active version (None: it has none, or it ended)."""
        self._change(lambda st: setattr(st, "probation", copy.deepcopy(probation)))

    def revert_probation(self, sha256: str | None) -> None:
        """End the probation by making ``sha256`` active again (None: no bundle), in one save."""
        with self._lock:
            if sha256 is not None and sha256 not in self.state.installed:
                raise StoreError(f"bundle {sha256[:12]} to revert to is not installed on this agent")
            if sha256 is None:
                model = str((self.state.probation or {}).get("model", ""))

                def edit(st: StoreState) -> None:
                    _deactivate(st, model or None)
                    st.probation = None
                self._change(edit)
            else:
                self._activate(sha256, end_probation=True)

    def deactivate(self, model: str | None = None) -> None:
        """No bundle of ``model`` is active any more (None: of any model)."""
        self._change(lambda st: _deactivate(st, model))

    def active(self, model: str | None = None) -> InstalledBundle | None:
        """The active bundle of ``model``; None: the one activated last (a single-model agent's only one)."""
        with self._lock:
            sha = self.state.models.get(model) if model is not None else self.state.active
            return self.state.installed.get(sha) if sha else None

    def actives(self) -> list[InstalledBundle]:
        """The active bundle of every model served, by model name."""
        with self._lock:
            return [self.state.installed[sha] for _, sha in sorted(self.state.models.items())
                    if sha in self.state.installed]

    def previous(self, model: str) -> list[str]:
        """The previously active bundles of ``model``, newest first (what the agent falls back to)."""
        with self._lock:
            return [s for s in self.state.history if s in self.state.installed
                    and self.state.installed[s].model == model]

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


def _deactivate(st: StoreState, model: str | None) -> None:
    for name in [m for m in st.models if model is None or m == model]:
        sha = st.models.pop(name)
        st.history = [sha] + [s for s in st.history if s != sha]
    if st.active not in st.models.values():
        st.active = next(iter(st.models.values()), None)


def _prune(st: StoreState) -> list[str]:
    keep = {st.active, *st.models.values(), *st.history[: HISTORY_LIMIT - 1]}
    keep |= {p.get("bundle_sha256") for p in st.pending.values()}
    if st.probation is not None:  # what a version on probation reverts to
        keep.add(st.probation.get("previous_sha256"))
    dropped = [sha for sha in st.installed if sha not in keep]
    for sha in dropped:
        st.installed.pop(sha)
    st.history = [s for s in st.history if s not in dropped]
    return dropped
