"""An event-loop stall probe for the GUI tests: a 10 ms QTimer on the GUI thread; the longest gap
between its ticks is how long the event loop was blocked (plus the 10 ms period).

The machine running the tests is shared (2 cores, several test workers and agent processes): the OS
may leave the GUI thread waiting for a CPU however free its event loop is. Linux counts that wait per
thread (``/proc/self/task/<tid>/schedstat``, second field), so each gap is *charged* its wall time
minus what the GUI thread spent queued for a CPU: what it would have been on an idle machine. Work
on the GUI thread and waits for the GIL (a worker thread holding it in a long C call) both count;
only the queueing for a CPU does not. Where schedstat is missing the whole wall gap is charged.

Two ways to use it: ``with probe.watch(): ...`` then ``probe.check()``; or ``probe.start()``,
``probe.phase = "train"`` as the test moves on, and ``probe.stop()`` (the charged gaps over the
limit, with their phase). ``EDGELOOP_STALL_DUMP=1`` dumps every thread's stack when a tick is 100 ms
late, to find what held the loop.
"""

from __future__ import annotations

import faulthandler
import os
import threading
import time
from contextlib import contextmanager

from PySide6.QtCore import QTimer

STALL_MS = 100
DUMP_STALLS = bool(os.environ.get("EDGELOOP_STALL_DUMP"))


def runqueue_wait(tid: int | None = None) -> float | None:
    """Seconds thread ``tid`` (default: the caller) has spent runnable but not running (waiting for a
    CPU), from Linux's schedstat; None where it is unavailable."""
    try:
        with open(f"/proc/self/task/{tid or threading.get_native_id()}/schedstat") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class StallProbe:
    """A 10 ms timer; ``gaps`` keeps (phase, wall ms, charged ms) of every gap over 50 ms."""

    def __init__(self) -> None:
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.phase = "start"
        self.ticks = 0
        self.max_gap_ms = 0.0  # wall clock
        self.max_stall_ms = 0.0  # charged: wall minus the GUI thread's wait for a CPU
        self.gaps: list[tuple[str, int, int]] = []
        self._last: tuple[float, float] | None = None

    def _tick(self) -> None:
        if DUMP_STALLS:
            faulthandler.dump_traceback_later(STALL_MS / 1000)
        now, queued = time.monotonic(), runqueue_wait()
        if self._last is not None:
            wall = now - self._last[0]
            charged = wall - (queued - self._last[1]) if queued is not None else wall
            self.max_gap_ms = max(self.max_gap_ms, wall * 1000)
            self.max_stall_ms = max(self.max_stall_ms, charged * 1000)
            if wall > 0.05:
                self.gaps.append((self.phase, round(wall * 1000), round(charged * 1000)))
            self.ticks += 1
        self._last = (now, queued if queued is not None else 0.0)

    def start(self) -> None:
        self._last = None
        self.max_gap_ms = self.max_stall_ms = 0.0
        self.timer.start()

    def stop(self, limit_ms: float = STALL_MS) -> list[tuple[str, int, int]]:
        """Stop; the gaps charged over ``limit_ms``: (phase, wall ms, charged ms)."""
        self.timer.stop()
        if DUMP_STALLS:
            faulthandler.cancel_dump_traceback_later()
        return [g for g in self.gaps if g[2] > limit_ms]

    @contextmanager
    def watch(self):
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def check(self, limit_ms: float = STALL_MS) -> None:
        print(f"event loop: longest gap {self.max_gap_ms:.0f} ms wall, {self.max_stall_ms:.0f} ms not queued for "
              f"a CPU, over {self.ticks} ticks (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        assert self.ticks > 0
        assert self.max_stall_ms < limit_ms, (f"the event loop stalled {self.max_stall_ms:.0f} ms; gaps over 50 ms "
                                              f"(phase, wall ms, charged ms): {self.gaps}")
        if os.getloadavg()[0] < (os.cpu_count() or 1):
            assert self.max_gap_ms < limit_ms, f"the event loop stalled {self.max_gap_ms:.0f} ms (wall)"
