"""Drift reports and events kept on disk while the broker is unreachable, sent in order when it returns.

While the agent is connected and nothing is waiting, a report goes straight to the MQTT
client (QoS 1), as before. While the broker is unreachable -- or while older reports of
the same kind still wait -- it is written to the outbox instead: one file per message under
``<state_dir>/outbox/<kind>/`` (:func:`edgeloop.agent.fsutil.atomic_write_bytes`), so it also
survives a restart of the agent. After the agent's birth state on every connect the
outbox is sent in order, events first (they may answer a command the hub waits for),
then drift reports; a file leaves the disk only once the broker acknowledged it.

Each kind is bounded by a number of messages and a number of bytes; when a new message
does not fit, the oldest are dropped and counted. The count is kept on disk and reported
to the hub as an ``error`` event with code ``reports_dropped`` once the outbox is empty.
A full disk or an unwritable outbox never stops the agent: it logs once, keeps serving,
and drops (and counts) what it could not keep. A file that cannot be read back as the
message it should hold is removed with a log line.

Threads: callers (the control thread, HTTP request threads, the inference thread) only
publish to paho or hand the message to a queue; the outbox thread writes files and waits
for acknowledgements. Nothing here runs on paho's network thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from edgeloop.agent.fsutil import TEMP_PREFIX, atomic_write_bytes, atomic_write_json
from edgeloop.agent.mqtt_link import kept, wait_acked

log = logging.getLogger(__name__)

EVENTS = "events"
DRIFT = "drift"
KINDS = (EVENTS, DRIFT)  # flushed in this order: answers to commands before drift reports
DEFAULT_MAX_MESSAGES = 1000  # per kind
DEFAULT_MAX_BYTES = 16 * 1024 * 1024  # per kind
BATCH = 20  # messages in flight at once while flushing (paho's default max_inflight)
RETRY_S = 1.0  # a flush cut short (slow acknowledgements) goes on this often, however busy the outbox is

_NAME_RE = re.compile(r"^(\d{12})\.msg$")
_DROPPED_FILE = "dropped.json"

Publish = Callable[[str, bytes], mqtt.MQTTMessageInfo]  # (kind, payload) -> paho's receipt


@dataclass(frozen=True)
class Entry:
    """One message on disk: its sequence number (the order) and its size."""

    seq: int
    size: int


class Spool:
    """A bounded first-in-first-out queue of messages of one kind, one file per message.

    Not thread-safe: :class:`Outbox` calls it under its lock. ``validate`` turns the bytes
    of a file back into a message or raises; files it refuses are removed with a log line.
    """

    def __init__(self, folder: Path, *, kind: str, validate: Callable[[bytes], object],
                 max_messages: int = DEFAULT_MAX_MESSAGES, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError(f"outbox bounds must be at least 1, got {max_messages} messages, {max_bytes} bytes")
        self.folder = Path(folder)
        self.kind = kind
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._validate = validate
        self.entries: deque[Entry] = deque()
        self.bytes = 0
        self.dropped = 0  # dropped since the last report; kept in dropped.json
        self._next_seq = 1
        self._failing: str | None = None  # why the folder cannot be written (logged once)
        self._full_logged = False
        self._load()

    # --- the queue --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def append(self, payload: bytes, in_flight: Container[int] = ()) -> bool:
        """Keep ``payload`` after the others; drop the oldest while it does not fit. False: not kept.

        Messages whose sequence number is in ``in_flight`` are still held by the MQTT client
        (it sends them again after a reconnect): dropping their files does not count them.
        """
        size = len(payload)
        if size > self.max_bytes:
            self._count_dropped(1, f"a message of {size} bytes is larger than the whole outbox ({self.max_bytes})")
            return False
        lost = 0
        while self.entries and (len(self.entries) >= self.max_messages or self.bytes + size > self.max_bytes):
            oldest = self.entries.popleft()
            self.bytes -= oldest.size
            self._unlink(oldest.seq)
            lost += oldest.seq not in in_flight
        seq = self._next_seq
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self._path(seq), payload, mode=0o600)
        except OSError as exc:
            self._failed(exc)
            self._count_dropped(lost + 1)
            return False
        self._next_seq += 1
        self.entries.append(Entry(seq, size))
        self.bytes += size
        if self._failing is not None:
            log.warning("outbox %s is writable again", self.folder)
            self._failing = None
        if lost:
            self._count_dropped(lost, f"the outbox is full ({self.max_messages} messages, {self.max_bytes} bytes)")
        return True

    def peek(self, n: int) -> list[tuple[Entry, bytes]]:
        """The oldest ``n`` messages that can be read back; unreadable or corrupt ones are removed."""
        out: list[tuple[Entry, bytes]] = []
        for entry in list(self.entries):
            if len(out) >= n:
                break
            data = self._read(self._path(entry.seq))
            if data is None:
                self.remove(entry)
                continue
            out.append((entry, data))
        return out

    def remove(self, entry: Entry) -> None:
        """Forget a message (sent, or unreadable) and delete its file."""
        with contextlib.suppress(ValueError):
            self.entries.remove(entry)
            self.bytes -= entry.size
        self._unlink(entry.seq)

    def clear_dropped(self, reported: int) -> None:
        """``reported`` drops were told to the hub: count only those that came after."""
        self.dropped = max(0, self.dropped - reported)
        self._full_logged = False
        self._save_dropped()

    # --- files ----------------------------------------------------------------------------
    def _path(self, seq: int) -> Path:
        return self.folder / f"{seq:012d}.msg"

    def _load(self) -> None:
        try:
            names = sorted(p.name for p in self.folder.iterdir()) if self.folder.is_dir() else []
        except OSError as exc:
            self._failed(exc)
            return
        for name in names:
            m = _NAME_RE.match(name)
            if name.startswith(TEMP_PREFIX):  # a write interrupted by a crash: never a message
                self._unlink_path(self.folder / name)
            elif m is not None:
                data = self._read(self.folder / name)
                if data is not None:
                    seq = int(m.group(1))
                    self.entries.append(Entry(seq, len(data)))
                    self.bytes += len(data)
                    self._next_seq = max(self._next_seq, seq + 1)
        self.dropped = self._load_dropped()
        lost = 0
        while len(self.entries) > self.max_messages or self.bytes > self.max_bytes:  # the bounds were lowered
            oldest = self.entries.popleft()
            self.bytes -= oldest.size
            self._unlink(oldest.seq)
            lost += 1
        if lost:
            self._count_dropped(lost, "it held more than its bounds allow")
        if self.entries:
            log.info("outbox %s holds %d %s (%d bytes) from before; they are sent once the broker is reachable",
                     self.folder, len(self.entries), self.kind, self.bytes)

    def _read(self, path: Path) -> bytes | None:
        try:
            data = path.read_bytes()
            self._validate(data)
        except OSError as exc:
            log.warning("outbox file %s cannot be read (%s); it is skipped", path, exc)
            self._unlink_path(path)
            return None
        except Exception as exc:  # what validate raises for a corrupt file
            log.warning("outbox file %s is corrupt (%s); it is ignored and removed", path, exc)
            self._unlink_path(path)
            return None
        return data

    def _load_dropped(self) -> int:
        path = self.folder / _DROPPED_FILE
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning("outbox counter %s is unreadable (%s); counting drops from 0", path, exc)
            return 0
        n = doc.get("dropped") if isinstance(doc, dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            log.warning("outbox counter %s is corrupt (%r); counting drops from 0", path, doc)
            return 0
        return n

    def _save_dropped(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.folder / _DROPPED_FILE, {"dropped": self.dropped})
        except OSError as exc:
            self._failed(exc)

    def _count_dropped(self, n: int, why: str | None = None) -> None:
        if n <= 0:
            return
        self.dropped += n
        if why is not None and not self._full_logged:
            self._full_logged = True
            log.warning("outbox %s: dropping the oldest %s: %s (counted, reported when the broker is back)",
                        self.folder, self.kind, why)
        self._save_dropped()

    def _failed(self, exc: OSError) -> None:
        if self._failing is None:
            log.error("outbox %s cannot be written (%s): while the broker is unreachable, %s are dropped and "
                      "counted; the agent keeps serving. Free disk space or fix the folder's permissions",
                      self.folder, exc, self.kind)
        self._failing = str(exc)

    def _unlink(self, seq: int) -> None:
        self._unlink_path(self._path(seq))

    def _unlink_path(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            self._failed(exc)


class Outbox:
    """Drift reports and events: straight to the broker when possible, else on disk until it is back.

    ``publish(kind, payload)`` hands one message to the MQTT client (QoS 1) and returns
    paho's receipt; ``connected()`` says whether the link is up; ``dropped_report(counts)``
    makes the event payload telling the hub how many messages of each kind were dropped.
    Call :meth:`flush_soon` after the birth state of every connect.
    """

    def __init__(self, folder: Path, *, publish: Publish, connected: Callable[[], bool],
                 validators: dict[str, Callable[[bytes], object]],
                 dropped_report: Callable[[dict[str, int]], bytes],
                 max_messages: int = DEFAULT_MAX_MESSAGES, max_bytes: int = DEFAULT_MAX_BYTES,
                 ack_timeout: float = 10.0) -> None:
        self._publish = publish
        self._connected = connected
        self._dropped_report = dropped_report
        self.ack_timeout = ack_timeout
        self.spools = {kind: Spool(Path(folder) / kind, kind=kind, validate=validators[kind],
                                   max_messages=max_messages, max_bytes=max_bytes) for kind in KINDS}
        # A message waiting is counted in _queued (handed to the outbox thread) until it is in
        # its spool, and stays in the spool until the broker acknowledged it: while either is
        # non-zero, submit() queues instead of publishing, so nothing overtakes older messages.
        self._lock = threading.Lock()  # _queued, and submit's decision (held briefly)
        self._io_lock = threading.Lock()  # the spools' files and _in_flight (held while writing)
        self._queued = dict.fromkeys(KINDS, 0)
        self._in_flight: dict[tuple[str, int], mqtt.MQTTMessageInfo] = {}  # spooled, handed to paho
        self._q: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._flush_wanted = threading.Event()
        self._ready = False  # a flush was asked since the last connect: the birth state is out
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # --- any thread ----------------------------------------------------------------------
    def submit(self, kind: str, payload: bytes) -> None:
        """Send ``payload`` now if the link is up and nothing of its kind waits; else keep it. Never blocks
        on the disk while the outbox thread runs."""
        with self._lock:
            if self._queued[kind] == 0 and not self.spools[kind] and self._connected():
                self._publish(kind, payload)  # paho queues it in memory if the link just went down
                return
            running = self._thread is not None and not self._stopping.is_set()
            if running:  # put under the lock: stop() cannot slip between the check and the put
                self._queued[kind] += 1
                self._q.put((kind, payload))
                return
        with self._io_lock:  # not started, or stopped: keep it here and now
            self._handle(kind, payload)

    def flush_soon(self) -> None:
        """The agent is connected and its birth state is out: send what waits (on the outbox thread)."""
        with self._lock:  # never undone by a _retry() that saw the link down just before this connect
            self._ready = True
        self._flush_wanted.set()
        self._q.put(None)

    def pending(self) -> dict[str, int]:
        """Messages waiting, by kind (on disk or about to be written)."""
        with self._lock, self._io_lock:
            return {k: len(self.spools[k]) + self._queued[k] for k in KINDS}

    def start(self) -> Outbox:
        self._thread = threading.Thread(target=self._run, name="agent-outbox", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Write or send what was handed over, then end the outbox thread; later messages are handled inline."""
        with self._lock:
            self._stopping.set()
        self._q.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the outbox thread ---------------------------------------------------------------
    def _run(self) -> None:
        next_retry = time.monotonic() + RETRY_S
        while True:
            if self._flush_wanted.is_set() and not self._stopping.is_set():
                self._flush_wanted.clear()
                self._flush()
                next_retry = time.monotonic() + RETRY_S
            try:
                item = self._q.get(timeout=max(0.0, next_retry - time.monotonic()))
            except queue.Empty:
                item = None
            if item is not None:
                self._take(*item)
            if self._stopping.is_set():
                self._drain()
                return
            if time.monotonic() >= next_retry:  # due even while messages keep coming (steady traffic)
                self._retry()
                next_retry = time.monotonic() + RETRY_S

    def _take(self, kind: str, payload: bytes) -> None:
        with self._io_lock:
            self._handle(kind, payload)
        with self._lock:  # only now: until it is in its spool, it still holds back newer messages
            self._queued[kind] -= 1

    def _drain(self) -> None:
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._take(*item)

    def _handle(self, kind: str, payload: bytes) -> None:
        """Publish, or keep on disk behind older messages of its kind. Call with ``_io_lock`` held."""
        spool = self.spools[kind]
        if not spool and self._connected():
            self._publish(kind, payload)
        else:
            spool.append(payload, in_flight={seq for (k, seq) in self._in_flight if k == kind})

    def _retry(self) -> None:
        """Idle: a flush cut short (slow acknowledgements) goes on; a lost link waits for the next connect."""
        with self._lock:
            if not self._connected():
                self._ready = False
                return
            ready = self._ready
        if ready and any(self.spools[k] for k in KINDS):
            self._flush()

    def _flush(self) -> None:
        with self._io_lock:  # forget receipts of messages dropped from the disk since
            kept = {(k, e.seq) for k in KINDS for e in self.spools[k].entries}
            self._in_flight = {key: info for key, info in self._in_flight.items() if key in kept}
        for kind in KINDS:
            while not self._stopping.is_set():
                self._drain()  # newer messages go behind the ones on disk, or straight out if none wait
                if not self._connected():
                    return
                with self._io_lock:
                    batch = self.spools[kind].peek(BATCH)
                if not batch:
                    break
                sent = self._send(kind, batch)
                with self._io_lock:
                    for entry in sent:
                        self.spools[kind].remove(entry)
                        self._in_flight.pop((kind, entry.seq), None)
                if len(sent) < len(batch):
                    return  # link lost or broker slow: the rest stays on disk
        self._report_dropped()

    def _send(self, kind: str, batch: list[tuple[Entry, bytes]]) -> list[Entry]:
        """Publish ``batch`` (or wait for copies paho still holds); the entries acknowledged, oldest first."""
        receipts = []
        with self._io_lock:
            for entry, data in batch:
                info = self._in_flight.get((kind, entry.seq))
                if info is None or not kept(info):  # paho holds no copy that it will send (again) itself
                    info = self._publish(kind, data)
                    self._in_flight[(kind, entry.seq)] = info
                receipts.append((entry, info))
        deadline = time.monotonic() + self.ack_timeout
        acked = []
        for entry, info in receipts:
            if not self._acknowledged(info, deadline):
                break
            acked.append(entry)
        return acked

    def _acknowledged(self, info: mqtt.MQTTMessageInfo, deadline: float) -> bool:
        while True:
            if not kept(info):  # not queued by paho: it will not arrive
                return False
            if wait_acked(info, min(0.2, max(0.0, deadline - time.monotonic()))):
                return True  # also one published while the link was down, which paho sent after the reconnect
            if time.monotonic() >= deadline or not self._connected() or self._stopping.is_set():
                return False

    def _report_dropped(self) -> None:
        counts = {k: self.spools[k].dropped for k in KINDS if self.spools[k].dropped}
        if not counts or not self._connected() or self._stopping.is_set():
            return
        info = self._publish(EVENTS, self._dropped_report(counts))
        if self._acknowledged(info, time.monotonic() + self.ack_timeout):
            log.warning("told the hub that %s were dropped while the broker was unreachable",
                        _counted(counts.items()))
            with self._io_lock:
                for k, n in counts.items():
                    self.spools[k].clear_dropped(n)


def _counted(counts: Iterable[tuple[str, int]]) -> str:
    return " and ".join(f"{n} {kind}" for kind, n in counts)


__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_MESSAGES", "DRIFT", "EVENTS", "KINDS", "Outbox", "Spool"]
