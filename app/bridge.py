"""The window's one way to the hub: :class:`Hub` calls on a worker thread, results as Qt signals.

Widgets never touch SQLite or MQTT. :class:`HubBridge` runs :func:`load_snapshot` (which
calls only :class:`edgeloop.hub.services.Hub` methods and formats the records with
:mod:`edgeloop.hub.views`) on its own thread pool, and hands the result back on the GUI
thread as :attr:`HubBridge.snapshot` (or :attr:`HubBridge.failed`). A refresh asked for
while one is running is not queued behind it: one more runs when it finishes, so a slow
hub never piles up work.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QObject, QThreadPool, Signal, Slot

from edgeloop.hub.services import Hub
from edgeloop.hub.views import Table, fleet_table, freshness_line, version_table


@dataclass(frozen=True)
class Snapshot:
    """What the window shows, formatted: the registry's versions, the fleet's agents and how
    fresh the fleet view is (the line `edgeloop fleet` prints above its table)."""

    versions: Table
    agents: Table
    taken_at: float
    freshness: str = ""


def load_snapshot(hub: Hub) -> Snapshot:
    """Read versions, bundles and agents through ``hub`` and format them (any thread)."""
    versions = hub.list_versions()
    bundles = hub.list_bundles()
    agents = hub.list_agents()
    listening = hub.listening()
    now = time.time()
    return Snapshot(version_table(versions, bundles), fleet_table(agents, now), now, freshness_line(listening, now))


def _job(fn: Callable[[], object], done: Callable[[object, str], None]) -> None:
    """Runs ``fn`` on a pool thread and passes ``(result, None)`` or ``(None, error text)`` on. A plain
    callable for ``QThreadPool.start``: PySide6 6.11 sometimes never frees a Python ``QRunnable``
    subclass (nor what it holds), one per refresh (see app/tasks.py)."""
    try:
        result = fn()
    except Exception as exc:  # shown in the window's status line
        done(None, str(exc) or type(exc).__name__)
    else:
        done(result, "")


class HubBridge(QObject):
    """Refreshes :class:`Snapshot` s off the GUI thread; results arrive as signals on the GUI thread."""

    snapshot = Signal(object)  # a Snapshot
    failed = Signal(str)
    _finished = Signal(object, str)  # from the pool thread; queued to this object's (the GUI) thread

    def __init__(self, hub: Hub, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.hub = hub
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(1)  # one hub read at a time; later refreshes wait (coalesced)
        self._busy = False
        self._again = False
        self._stopped = False
        self._finished.connect(self._deliver)

    @property
    def busy(self) -> bool:
        """Whether a refresh is running."""
        return self._busy

    @Slot()
    def refresh(self) -> None:
        """Read the hub again (now, or right after the refresh that is running)."""
        if self._stopped:
            return
        if self._busy:
            self._again = True
            return
        self._busy = True
        hub = self.hub
        self.pool.start(functools.partial(_job, functools.partial(load_snapshot, hub), self._finished.emit))

    @Slot(object, str)
    def _deliver(self, result: object, error: str) -> None:
        self._busy = False
        if self._stopped:
            return
        if error:
            self.failed.emit(error)
        else:
            self.snapshot.emit(result)
        if self._again:
            self._again = False
            self.refresh()

    def stop(self, timeout_ms: int = 10_000) -> bool:
        """Start no more refreshes and wait for the running one; False if it did not end in time."""
        self._stopped = True
        self._again = False
        self.pool.clear()
        return self.pool.waitForDone(timeout_ms)
