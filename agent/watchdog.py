"""The agent's watchdog: notices a worker thread that ended while the agent runs, restarts it, reports it.

Every worker (the control and inference threads, the outbox and the HTTP server) is registered with
how to tell it is alive and how to restart it. :meth:`Watchdog.check` -- on the watchdog's own thread,
every ``interval`` seconds -- restarts each dead one and calls ``on_restart``; a worker that died more
than ``max_restarts`` times within ``per_seconds`` (a crash loop), or whose restart failed, is given up
on and calls ``on_give_up``: the agent's health then says why, and ``/v2/health/ready`` answers 503.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("edgeloop.agent.service")

MAX_RESTARTS = 5  # restarts of one worker within PER_SECONDS ...
PER_SECONDS = 60.0  # ... beyond which it is given up on


@dataclass
class Worker:
    name: str
    alive: Callable[[], bool]
    restart: Callable[[], None]
    restarts: int = 0
    recent: deque[float] = field(default_factory=deque)  # monotonic times of recent restarts
    given_up: str = ""  # why it is no longer restarted

    def status(self) -> dict:
        return {"alive": self.alive(), "restarts": self.restarts, "error": self.given_up}


class Watchdog:
    """See the module docstring. ``on_restart(name, restarts, cause)``, ``on_give_up(name, reason)``."""

    def __init__(self, on_restart: Callable[[str, int, str], None], on_give_up: Callable[[str, str], None], *,
                 interval: float = 0.5, max_restarts: int = MAX_RESTARTS, per_seconds: float = PER_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_restart, self.on_give_up = on_restart, on_give_up
        self.interval, self.max_restarts, self.per_seconds, self.clock = interval, max_restarts, per_seconds, clock
        self.causes: dict[str, str] = {}  # worker name -> what ended it last (set by the worker's wrapper)
        self._workers: dict[str, Worker] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, name: str, alive: Callable[[], bool], restart: Callable[[], None]) -> None:
        with self._lock:
            self._workers[name] = Worker(name, alive, restart)

    def start(self, stopping: threading.Event) -> threading.Thread:
        """Check on a daemon thread until ``stopping`` is set."""
        self._thread = threading.Thread(target=self._run, args=(stopping,), name="agent-watchdog", daemon=True)
        self._thread.start()
        return self._thread

    def _run(self, stopping: threading.Event) -> None:
        while not stopping.wait(self.interval):
            try:
                self.check(stopping)
            except Exception:  # the watchdog itself must not end
                log.exception("watchdog check failed")

    def check(self, stopping: threading.Event | None = None) -> None:
        """Restart every dead worker (not while the agent stops); give up on crash loops."""
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            if w.given_up or w.alive() or (stopping is not None and stopping.is_set()):
                continue
            cause = self.causes.pop(w.name, "it ended without an exception")
            now = self.clock()
            while w.recent and now - w.recent[0] > self.per_seconds:
                w.recent.popleft()
            if len(w.recent) >= self.max_restarts:
                w.given_up = (f"the {w.name} worker died {len(w.recent) + 1} times within {self.per_seconds:.0f} s "
                              f"(last: {cause}); restart the agent and see its log")
                log.error("%s", w.given_up)
                self.on_give_up(w.name, w.given_up)
                continue
            try:
                w.restart()
            except Exception as exc:
                w.given_up = f"the {w.name} worker died ({cause}) and could not be restarted: {exc}"
                log.exception("%s", w.given_up)
                self.on_give_up(w.name, w.given_up)
                continue
            w.recent.append(now)
            w.restarts += 1
            log.error("the %s worker died (%s) and was restarted (%d restarts so far)", w.name, cause, w.restarts)
            self.on_restart(w.name, w.restarts, cause)

    def status(self) -> dict[str, dict]:
        """``{name: {"alive": bool, "restarts": int, "error": str}}``, the watchdog itself included."""
        with self._lock:
            workers = list(self._workers.values())
        out = {w.name: w.status() for w in workers}
        if self._thread is not None:
            out["watchdog"] = {"alive": self._thread.is_alive(), "restarts": 0, "error": ""}
        return out

    def problems(self) -> list[str]:
        """Why the agent is not healthy: workers given up on, or dead and not yet restarted."""
        out = []
        for name, st in self.status().items():
            if st["error"]:
                out.append(st["error"])
            elif not st["alive"]:
                out.append(f"the {name} worker is not running")
        return out


__all__ = ["Watchdog", "Worker", "MAX_RESTARTS", "PER_SECONDS"]
