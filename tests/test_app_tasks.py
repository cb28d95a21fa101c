"""TaskRunner over a long session: finished tasks, their connections and the views' lambdas do not pile up.

The window starts a task for every read (the bridge's refresh, the rollouts view twice a second while it
follows a rollout), so a session of a day starts tens of thousands. Tasks used to stay children of the runner
for good (~7 kB each with their connections; 14 MB per 2,000). These tests start thousands of short tasks
connected the way the views connect (a bound slot, a lambda capturing the view, signal to signal, a lambda
capturing the task itself) and check that none survives, that each is destroyed on the GUI thread, that the
process's memory stays flat, and that a view still holding a finished task can use it.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from collections.abc import Callable

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6.QtWidgets", reason="the GUI needs the app extras")

from PySide6.QtCore import QObject, Signal

from edgeloop.app.tasks import Task, TaskRunner, TaskState

N = 2_000


class Marker:
    """Captured by a view's lambda: alive as long as the connection holding the lambda."""


class View(QObject):
    """Connects to tasks the way the window's views do."""

    changed = Signal(object)
    failed = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.results: list[object] = []
        self.finished = 0
        self.markers: list[weakref.ref[Marker]] = []

    def on_result(self, value: object) -> None:
        self.results.append(value)

    def watch(self, task: Task) -> None:
        marker = Marker()
        self.markers.append(weakref.ref(marker))
        task.result.connect(self.on_result)  # a bound slot
        task.result.connect(lambda v, m=marker: self.changed.emit((m, v)))  # a lambda holding the view
        task.error.connect(self.failed)  # signal to signal
        task.finished.connect(lambda: self._done(task))  # a lambda holding the task itself

    def _done(self, task: Task) -> None:
        assert not task.running and task.outcome == "result"
        self.finished += 1


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def run_tasks(qapp, runner: TaskRunner, view: View, n: int,
              on_task: Callable[[Task], None] = lambda t: None) -> None:
    """Start ``n`` short tasks watched by ``view`` and process events until every one has finished."""
    before = view.finished
    for i in range(n):
        task = runner.start("read", lambda st, i=i: i * 2)
        view.watch(task)
        on_task(task)
        del task
    deadline = time.monotonic() + 60
    while view.finished < before + n or runner.running:
        assert time.monotonic() < deadline, f"{view.finished - before} of {n} tasks finished in 60 s"
        qapp.processEvents()
        time.sleep(0.001)
    qapp.processEvents()
    gc.collect()


@pytest.fixture
def runner():
    r = TaskRunner(max_threads=2)
    yield r
    assert r.stop(5000)


def test_finished_tasks_and_their_connections_are_freed_on_the_gui_thread(qapp, runner):
    view = View()
    tasks: list[weakref.ref[Task]] = []
    destroyed_on: list[int] = []

    def track(task: Task) -> None:
        tasks.append(weakref.ref(task))
        task.destroyed.connect(lambda *_: destroyed_on.append(threading.get_ident()))

    run_tasks(qapp, runner, view, N, track)
    assert sorted(view.results) == [i * 2 for i in range(N)] and view.finished == N
    live = sum(ref() is not None for ref in tasks)
    assert live == 0, f"{live} of {N} finished tasks are still alive"
    assert runner.findChildren(Task) == [] and runner.running == []
    # the Qt objects themselves went (not only the Python wrappers), each on the GUI thread
    assert len(destroyed_on) == N and set(destroyed_on) == {threading.get_ident()}
    # the views' lambdas (and what they capture) went with the connections
    assert sum(ref() is not None for ref in view.markers) == 0
    # the view itself is held by nothing the tasks left behind
    view_ref = weakref.ref(view)
    del view
    gc.collect()
    assert view_ref() is None, "a finished task's connection still holds the view"


def test_memory_stays_flat_over_many_tasks(qapp, runner):
    view = View()
    run_tasks(qapp, runner, view, N)  # warm-up: the pool's threads, Qt's and Python's caches
    view.results.clear()
    view.markers.clear()
    start = rss_mb()
    rounds = 3
    for _ in range(rounds):
        run_tasks(qapp, runner, view, N)
        view.results.clear()
        view.markers.clear()
    grown = rss_mb() - start
    # kept tasks cost ~7 kB each (42 MB here); the bound allows 1 kB a task for the allocator's noise
    bound = rounds * N / 1024
    print(f"{rounds * N} tasks: RSS {start:.1f} -> {start + grown:.1f} MB")
    assert grown < bound, f"RSS grew {grown:.1f} MB over {rounds * N} finished tasks (bound {bound:.1f} MB)"


def test_a_view_holding_a_finished_task_can_still_use_it(qapp, runner):
    seen: list[str] = []
    progress: list[str] = []

    def work(state: TaskState) -> str:
        for i in range(20):
            state.report_progress((i + 1) / 20, f"step {i + 1}")
        return "ok"

    task = runner.start("held", work)
    order: list[tuple[str, bool]] = []
    task.progress.connect(lambda _f, text, _e: progress.append(text))
    task.result.connect(lambda v, t=task: order.append(("result", t in runner.running)))
    task.finished.connect(lambda t=task: order.append(("finished", t in runner.running)))
    deadline = time.monotonic() + 10
    while task.running:
        assert time.monotonic() < deadline
        qapp.processEvents()
        time.sleep(0.001)
    # every report, in order; the outcome, then finished; the runner lets go before the finished slots
    assert progress == [f"step {i}" for i in range(1, 21)]
    assert order == [("result", True), ("finished", False)]
    assert (task.outcome, task.value, task.name) == ("result", "ok", "held")
    # the view's reference keeps the task, and its Qt object, usable
    task.cancel()
    assert task.token.cancelled and task.objectName() == ""
    task.result.connect(seen.append)  # nothing more comes: the task is finished
    qapp.processEvents()
    assert seen == []
    ref = weakref.ref(task)
    del task
    gc.collect()
    assert ref() is None


def test_errors_and_cancels_free_their_tasks_too(qapp, runner):
    refs: list[weakref.ref[Task]] = []
    outcomes: list[str] = []

    def fail(_st: TaskState) -> None:
        raise ValueError("bad row")

    def cancelled(st: TaskState) -> None:
        while not st.is_cancelled():
            time.sleep(0.001)
        st.cancel_token.raise_if_cancelled("the test job")

    for i in range(200):
        task = runner.start("x", fail if i % 2 else cancelled)
        task.error.connect(lambda text: outcomes.append("error"))
        task.cancelled.connect(lambda text: outcomes.append("cancelled"))
        task.cancel() if not i % 2 else None
        refs.append(weakref.ref(task))
        del task
    deadline = time.monotonic() + 30
    while runner.running:
        assert time.monotonic() < deadline
        qapp.processEvents()
        time.sleep(0.001)
    qapp.processEvents()
    gc.collect()
    assert sorted(outcomes) == ["cancelled"] * 100 + ["error"] * 100
    assert sum(r() is not None for r in refs) == 0
