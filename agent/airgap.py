"""Air-gapped delivery on the agent: ``edgeloop-agent install FILE`` and the inbox the control thread watches.

A file from ``edgeloop bundle export`` (:mod:`edgeloop.agent.wire.airgap`) is applied by
:func:`apply_file`, which hands its signed command to the control thread's own
``_handle_command`` and its bundle, cut into the chunks the command's transfer names, to
``_handle_chunk``: the same verification (signature, target, counter, expiry, lifetime), the
same journal, the same install (hash, manifest, smoke test, atomic rename) and the same events
as a deploy or rollback over MQTT. The events go through the outbox, so a result reached
while the broker is away is sent when the agent next connects.

Hand-over (:class:`Inbox`): the running agent holds an exclusive lock on ``inbox/agent.lock``
in its state folder. ``install`` drops the file into ``inbox/`` (temp file + rename) and waits for
``<name>.result.json``, which the control thread writes after applying it (it looks every
half second). With nobody holding the lock the agent is not running: ``install`` takes the lock
and applies the file in-process through the same functions; the result waits in the outbox.
A file being applied is renamed ``<name>.working``; after a crash it is applied again (an
interrupted transfer gets its chunks again; a command already accepted is refused as replayed).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from edgeloop.agent.errors import EdgeloopError
from edgeloop.agent.fsutil import atomic_write_bytes
from edgeloop.agent.wire.airgap import AirgapFile
from edgeloop.agent.wire.messages import Chunk, Event

AgentControl = Any  # edgeloop.agent.control.AgentControl (not imported: control imports this module)

log = logging.getLogger(__name__)

INBOX = "inbox"
SUFFIX = ".airgap"
RESULT_EVENTS = ("install_result", "rollback_result")
LOOK_EVERY_S = 0.5  # the control thread looks into the inbox this often at most (it turns once per chunk)

# the next step printed with a refusal, by the code the agent answered with (the same codes as over MQTT)
NEXT_STEP = {
    "bad_signature": "the file was altered or not signed by a key this agent trusts: export it again from its hub",
    "untrusted_key": "the file is signed by a key this agent does not trust: export it from the hub whose key "
                     "is in the agent config's trusted_keys",
    "wrong_target": "the file is for other agents: export it again with --agent set to this agent's id",
    "replayed": "this file (or a newer command from the hub) was already applied here: export a new file",
    "expired": "the file's command expired: export it again (edgeloop bundle export ... --expires-days N)",
    "expiry_too_far": "export it again with --expires-days 7 or less (or check the hub's clock)",
    "hash_mismatch": "the bundle in the file was altered or damaged in transit: copy it again or export it again",
    "bad_file": "the file is damaged or not an export: copy it again or export it again",
    "below_floor": "the agent refuses versions below its floor: export a newer version",
}


class InboxError(EdgeloopError):
    code = "inbox"


class Inbox:
    """``<state_dir>/inbox``: files handed to the running agent, and their results."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / INBOX
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None
        self._next_look = 0.0

    # --- the lock: held by whoever applies files (the running agent, or install in-process) ---------
    def try_lock(self) -> bool:
        """Take ``agent.lock`` (non-blocking); False if another process holds it."""
        if self._lock_fd is not None:
            return True
        try:
            import fcntl
        except ImportError:  # no flock (Windows): the agent takes the inbox, install always hands files over
            return True
        fd = os.open(self.dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    @staticmethod
    def can_tell_running() -> bool:
        """Whether the lock tells a running agent apart (flock exists here)."""
        try:
            import fcntl  # noqa: F401
        except ImportError:
            return False
        return True

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    # --- the installing side -------------------------------------------------------------------
    def drop(self, data: bytes) -> str:
        """Hand a file to the running agent; returns its name (to wait for the result)."""
        name = uuid.uuid4().hex
        atomic_write_bytes(self.dir / f"{name}{SUFFIX}", data)
        return name

    def wait_result(self, name: str, timeout: float, poll: float = 0.2) -> dict | None:
        path = self.dir / f"{name}.result.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                doc = json.loads(path.read_text())
                path.unlink(missing_ok=True)
                return doc
            time.sleep(poll)
        return None

    # --- the agent's side --------------------------------------------------------------------------
    def waiting(self) -> list[Path]:
        """Files to apply, oldest first: left ``.working`` by a crash, then new ones."""
        files = [p for p in self.dir.iterdir() if p.suffix in (SUFFIX, ".working") and not p.name.startswith(".")]
        return sorted(files, key=lambda p: (p.suffix != ".working", p.stat().st_mtime))

    def write_result(self, name: str, result: dict) -> None:
        atomic_write_bytes(self.dir / f"{name}.result.json", json.dumps(result, indent=1).encode())


def check_inbox(agent: AgentControl, inbox: Inbox) -> None:
    """Control thread, every turn: apply the files dropped into the inbox (needs the lock)."""
    now = time.monotonic()
    if now < inbox._next_look:
        return
    inbox._next_look = now + LOOK_EVERY_S
    if not inbox.try_lock():
        return  # `edgeloop-agent install` applies a file in-process right now
    for path in inbox.waiting():
        name = path.stem
        working = path.with_suffix(".working")
        if path != working:
            os.replace(path, working)
        try:
            result = apply_file(agent, working.read_bytes())
        except Exception as exc:  # a bug or an unreadable file: answered, never retried every turn
            log.exception("air-gapped file %s could not be applied", name)
            result = _result(agent.id, None, False, "internal", f"the agent could not apply the file: {exc}; "
                             "see its log", [])
        inbox.write_result(name, result)
        working.unlink(missing_ok=True)
        log.info("air-gapped file %s: %s %s", name, result["code"], result["message"])


def apply_file(agent: AgentControl, data: bytes) -> dict:
    """Apply an air-gapped file on the control thread's own code path; returns the result for this agent:
    ``{"ok", "code", "message", "agent_id", "command_id", "events"}`` (the events it answered with)."""
    try:
        f = AirgapFile.decode(data, agent.cfg.max_bundle_bytes)
    except EdgeloopError as exc:
        return _result(agent.id, None, False, exc.code, str(exc), [])
    mine = f.for_agent(agent.id)
    # none for this agent: the first command goes the same way, and is refused as wrong_target
    commands = mine or f.commands[:1]
    events: list[Event] = []
    with _captured(agent, events):
        for c in commands:
            _apply_command(agent, f, c.envelope)
    answers = [e for e in events if e.command_id in {c.command_id for c in commands}]
    cid = commands[0].command_id
    final = ([e for e in answers if e.event in RESULT_EVENTS] or [e for e in answers if not e.ok] or answers)
    if not final:
        return _result(agent.id, cid, False, "no_answer", "the agent did not answer the file's command; see its log",
                       [])
    last = final[-1]
    return _result(agent.id, last.command_id or cid, last.ok, last.code, last.message, answers,
                   pending=last.event == "command_result" and last.ok)


def _apply_command(agent: AgentControl, f: AirgapFile, envelope: bytes) -> None:
    transfers_before = set(agent._transfers)
    resumed = _resumed_transfer(agent, envelope, transfers_before)
    if resumed is None:
        agent._handle_command(envelope)
        opened = [t for tid, t in agent._transfers.items() if tid not in transfers_before]
    else:
        opened = [resumed]  # accepted before a crash: only its chunks are still wanted
    for t in opened:
        spec = t.spec
        for i in t.missing(spec.chunks):
            piece = f.bundle[i * spec.chunk_size:(i + 1) * spec.chunk_size]
            if piece:
                agent._handle_chunk(Chunk(spec.transfer_id, i, piece).encode())
        if spec.transfer_id in agent._transfers and not t.complete:  # the file's bundle is shorter than named
            agent._abandon(t, f"the file holds {len(f.bundle)} bytes of bundle, the command names {spec.size}")


def _resumed_transfer(agent: AgentControl, envelope: bytes, open_ids: set[str]) -> Any:
    """The open transfer of this file's command (an install interrupted by a crash), if any."""
    try:
        doc = json.loads(envelope)
        inner = json.loads(base64.b64decode(doc["payload"]))
        tid = inner["args"]["transfer"]["transfer_id"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    t = agent._transfers.get(tid) if tid in open_ids else None
    return t if t is not None and t.command_id == inner.get("command_id") else None


@contextlib.contextmanager
def _captured(agent: AgentControl, events: list[Event]):
    """Keep a copy of every event the agent publishes meanwhile (they still go out as usual)."""
    publish = agent._publish_event

    def tap(ev: Event) -> None:
        events.append(ev)
        publish(ev)

    agent._publish_event = tap  # an instance attribute shadows the method until removed
    try:
        yield
    finally:
        agent.__dict__.pop("_publish_event", None)  # the class's method again


def _result(agent_id: str, command_id: str | None, ok: bool, code: str, message: str, events: list[Event],
            pending: bool = False) -> dict:
    return {"ok": ok, "code": code, "message": message, "agent_id": agent_id, "command_id": command_id,
            "pending": pending, "next_step": None if ok else NEXT_STEP.get(code),
            "events": [e.to_dict() for e in events]}


def install_in_process(agent: AgentControl, data: bytes, lifetime: float) -> dict:
    """Apply ``data`` with an agent that never connects (the agent is stopped; the caller holds the inbox lock):
    the same restore, verification and install; the events wait in the outbox on disk."""
    from edgeloop.agent.transfer import Transfer

    agent._restore()
    for t in Transfer.load_pending(agent.store.incoming_dir, default_lifetime=lifetime):
        agent._transfers[t.spec.transfer_id] = t
    try:
        return apply_file(agent, data)
    finally:
        agent.outbox.stop()
        for t in agent._transfers.values():
            t.close()
