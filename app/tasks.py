"""Long work off the GUI thread: a pure function, a task state, results as Qt signals.

The pattern of Orange's concurrent widgets: a view hands :meth:`TaskRunner.start` a
plain function ``fn(state: TaskState) -> result`` that calls only :class:`Hub` methods
(or other pure code). The function reports with :meth:`TaskState.report_progress`
(or passes :meth:`TaskState.progress_callback` to a hub method as its ``progress``)
and stops at a safe point when :meth:`TaskState.is_cancelled` says so (hub methods
take :attr:`TaskState.cancel_token`). The runner runs it on its own
``QThreadPool`` and emits, on the GUI thread, :attr:`Task.progress` for every
report (none is dropped: a learning curve needs every epoch), then exactly one of
:attr:`Task.result`, :attr:`Task.error` or :attr:`Task.cancelled`, then
:attr:`Task.finished`. Widgets never wait on a task; they connect to its signals.
A finished task is freed once nothing refers to it: the runner lets go of it (and
disconnects its slots) after :attr:`Task.finished` has been delivered.
:meth:`TaskRunner.start_in_process` runs the function in the runner's
:class:`WorkerProcess` instead of a thread, for work that holds the GIL (training).
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import threading
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QMetaMethod, QObject, QThreadPool, Signal, Slot

from edgeloop.agent.errors import EdgeloopError
from edgeloop.hub.errors import CancelledError
from edgeloop.hub.progress import CancelToken, ProgressEvent

__all__ = ["Task", "TaskRunner", "TaskState", "WorkerProcess", "error_text"]


def error_text(exc: BaseException) -> str:
    """What the window says about a failure: the message of an edgeloop error (it says
    what to do next), else the exception's type and message plus the last frame."""
    if isinstance(exc, EdgeloopError):
        return str(exc) or type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


class TaskState:
    """What the function sees: a way to report progress and to learn it should stop.

    Any thread may call :meth:`report_progress`; the GUI thread gets each report as a
    :attr:`Task.progress` signal, in order.
    """

    def __init__(self, emit: Callable[[float, str, object], None], token: CancelToken) -> None:
        self._emit = emit
        self.cancel_token = token

    def report_progress(self, fraction: float | None, text: str = "", event: ProgressEvent | None = None) -> None:
        """``fraction`` in [0, 1] (-1 when unknown), a line for a person, and the hub event if any."""
        self._emit(-1.0 if fraction is None else min(max(float(fraction), 0.0), 1.0), text, event)

    def is_cancelled(self) -> bool:
        return self.cancel_token.cancelled

    def progress_callback(self, event: ProgressEvent) -> None:
        """A hub ``progress`` callback: every :class:`ProgressEvent` becomes a report."""
        text = f"{event.stage}: {event.message}" if event.message else event.stage
        self.report_progress(event.fraction, text, event)


class Task(QObject):
    """One run of a function; its signals arrive on the thread that started it (the GUI).

    The runner's tasks have no Qt parent: Python owns each, and it is deleted (on the GUI
    thread) when the runner and every view have let go of it.
    """

    progress = Signal(float, str, object)  # fraction (-1: unknown), text, ProgressEvent or None
    result = Signal(object)
    error = Signal(str)
    cancelled = Signal(str)
    finished = Signal()

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self.token = CancelToken()
        self.running = True
        self.outcome = ""
        self.value: Any = None
        self.message = ""

    def cancel(self) -> None:
        """Ask the function to stop at its next safe point (the hub checks each epoch)."""
        self.token.cancel()

    @Slot(str, object, str)
    def _finish(self, outcome: str, value: object, text: str) -> None:
        self.running = False
        self.outcome, self.value, self.message = outcome, value, text
        if outcome == "result":
            self.result.emit(value)
        elif outcome == "cancelled":
            self.cancelled.emit(text)
        else:
            self.error.emit(text)
        self.finished.emit()


def _task_signals() -> tuple[tuple[str, QMetaMethod], ...]:
    # from a throwaway task's meta-object (the class's): QMetaMethod.fromSignal(task.result) keeps a
    # reference to the task for good (PySide6 6.11), which would leak every task it is asked about
    meta = Task("signals").metaObject()
    found = []
    for i in range(meta.methodOffset(), meta.methodCount()):
        method = meta.method(i)
        name = bytes(method.name().data()).decode()
        if method.methodType() == QMetaMethod.MethodType.Signal and not name.startswith("_"):
            found.append((name, method))
    return tuple(found)


_TASK_SIGNALS = _task_signals()


def _run(fn: Callable[[TaskState], Any], tid: int, token: CancelToken,
         report: Callable[[int, float, str, object], None], done: Callable[[int, str, object, str], None]) -> None:
    """Runs ``fn`` on a pool thread; reports go to the runner's queued signals under the task's id.

    It holds no reference to the :class:`Task`: the last reference to a task is always dropped on
    the GUI thread, so the QObject is never deleted from a pool thread. (A plain callable, not a
    Python ``QRunnable`` subclass: PySide6 6.11 keeps some of those wrappers, and what they hold,
    for good.)
    """
    state = TaskState(lambda f, t, e: report(tid, f, t, e), token)
    try:
        value = fn(state)
    except CancelledError as exc:
        done(tid, "cancelled", None, str(exc))
    except Exception as exc:  # shown in the window: the task's error signal
        done(tid, "error", None, error_text(exc))
    else:
        if token.cancelled:
            done(tid, "cancelled", value, "cancelled on request")
        else:
            done(tid, "result", value, "")


def _worker_main(conn: Any, cancel: Any, warm: tuple[str, ...]) -> None:
    """The worker process: imports ``warm`` modules, then runs one job at a time from ``conn``.

    A job is ``(fn, args)``; it runs as ``fn(state, *args)`` with progress reports and the
    outcome sent back down ``conn``; ``cancel`` (an event the GUI side sets) trips the job's
    :class:`CancelToken`. ``None`` ends the process.
    """
    import importlib

    for name in warm:
        try:
            importlib.import_module(name)
        except Exception:  # only a warm-up: the job reports a real import failure
            pass
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        fn, args = job
        token = CancelToken()
        running = threading.Event()
        running.set()

        def watch(token: CancelToken = token, running: threading.Event = running) -> None:
            while running.is_set():
                if cancel.wait(0.05):
                    token.cancel()
                    return
        threading.Thread(target=watch, daemon=True).start()
        state = TaskState(lambda f, t, e: conn.send(("progress", (f, t, e))), token)
        try:
            value = fn(state, *args)
        except CancelledError as exc:
            outcome: tuple[str, Any] = ("cancelled", str(exc))
        except Exception as exc:
            outcome = ("error", error_text(exc))
        else:
            outcome = ("result", value)
        running.clear()
        conn.send(outcome)


class WorkerProcess:
    """One long-lived (spawned) Python process for work that holds the GIL in long C calls.

    torch's ONNX export, onnxruntime sessions and quantization hold the GIL for up to a
    second at a time; in a thread of the GUI's process they would freeze the window. The
    process imports ``warm`` (torch, the training pipeline) when it starts -- in the
    background, so the first training run does not pay for it -- and then runs one job at
    a time. A job's function and arguments must be picklable (a module-level function,
    plain data). A process that dies is reported as the job's error and is started again
    for the next job.
    """

    def __init__(self, warm: tuple[str, ...] = ()) -> None:
        self.warm = warm
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Any = None
        self._cancel: Any = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def _ensure(self) -> None:
        if self.alive:
            return
        ctx = multiprocessing.get_context("spawn")
        self._conn, theirs = ctx.Pipe()
        self._cancel = ctx.Event()
        self._proc = ctx.Process(target=_worker_main, args=(theirs, self._cancel, self.warm), daemon=True,
                                 name="edgeloop-app-worker")
        self._proc.start()
        theirs.close()

    def start(self) -> None:
        """Start the process now (it warms up in the background)."""
        with self._lock:
            self._ensure()

    def call(self, state: TaskState, fn: Callable[..., Any], args: tuple) -> Any:
        """Run ``fn(state', *args)`` in the process; reports go to ``state``, cancel comes from it."""
        with self._lock:
            self._ensure()
            self._cancel.clear()
            self._conn.send((fn, args))
            while True:
                if state.is_cancelled():
                    self._cancel.set()
                if self._conn.poll(0.05):
                    try:
                        kind, payload = self._conn.recv()
                    except (EOFError, OSError):
                        break
                    if kind == "progress":
                        state.report_progress(*payload)
                    elif kind == "result":
                        return payload
                    elif kind == "cancelled":
                        raise CancelledError(payload)
                    else:
                        raise _ChildError(payload)
                elif not self._proc.is_alive():
                    break
            code = self._proc.exitcode
            self._proc = None
            raise _ChildError(f"the worker process ended (exit code {code}) before the job finished; "
                              "see the console for why, and try again")

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if self._cancel is not None:
            self._cancel.set()
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        proc.join(timeout_s)
        if proc.is_alive():
            proc.kill()
            proc.join(1)
        self._conn.close()


class _ChildError(EdgeloopError):
    """An error the worker process reported (its text is already what the window shows)."""


class TaskRunner(QObject):
    """Runs tasks on a private pool (``max_threads`` at a time; more wait their turn).

    ``running`` lists unfinished tasks; :meth:`stop` cancels them all and waits.
    """

    started = Signal(object)  # the Task, when it starts
    # from the pool threads, queued to the runner's (the GUI) thread: task id, then as Task.progress
    _report = Signal(int, float, str, object)
    _done = Signal(int, str, object, str)  # task id, outcome ("result" | "error" | "cancelled"), value, text

    def __init__(self, parent: QObject | None = None, max_threads: int = 2,
                 worker: WorkerProcess | None = None) -> None:
        super().__init__(parent)
        self.worker = worker or WorkerProcess()
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max_threads)
        self.running: list[Task] = []
        self._tasks: dict[int, Task] = {}  # unfinished, by id
        self._ids = itertools.count(1)
        self._stopped = False
        self._report.connect(self._on_report)
        self._done.connect(self._on_done)

    def start(self, name: str, fn: Callable[[TaskState], Any]) -> Task:
        """Run ``fn(state)`` off the GUI thread; connect to the returned task's signals."""
        task = Task(name)
        if self._stopped:
            task._finish("cancelled", None, "the window is closing")
            return task
        tid = next(self._ids) % 2**31  # an int signal argument: a C++ int
        self._tasks[tid] = task
        self.running.append(task)
        # first of its finished slots (a view's finished slot sees it gone from ``running``); a
        # partial of the id, not a lambda holding the task
        task.finished.connect(functools.partial(self._forget, tid))
        self.started.emit(task)
        self.pool.start(functools.partial(_run, fn, tid, task.token, self._report.emit, self._done.emit))
        return task

    def start_in_process(self, name: str, fn: Callable[..., Any], *args: Any) -> Task:
        """Run ``fn(state, *args)`` in :attr:`worker` (a separate process; see :class:`WorkerProcess`)."""
        worker = self.worker
        return self.start(name, lambda state: worker.call(state, fn, args))

    @Slot(int, float, str, object)
    def _on_report(self, tid: int, fraction: float, text: str, event: object) -> None:
        task = self._tasks.get(tid)
        if task is not None:
            task.progress.emit(fraction, text, event)

    @Slot(int, str, object, str)
    def _on_done(self, tid: int, outcome: str, value: object, text: str) -> None:
        task = self._tasks.get(tid)
        if task is None:
            return
        task._finish(outcome, value, text)
        self._forget(tid)
        self._release(task)
        # ``task`` goes with this frame: when no view holds it, Python deletes the QObject here, on
        # the GUI thread and after its last signal. (Qt-parented tasks were never deleted: ~7 kB each
        # with their connections, every refresh's reads for the whole session. deleteLater is not
        # used: a view may still hold the task, and its wrapper must stay valid.)

    def _forget(self, tid: int) -> None:
        task = self._tasks.pop(tid, None)
        if task is not None and task in self.running:
            self.running.remove(task)

    @staticmethod
    def _release(task: Task) -> None:
        """Disconnect every slot of a finished task (it emits nothing more): a view's lambda that
        captures the task must not keep it, and the view, alive."""
        for name, method in _TASK_SIGNALS:
            if task.isSignalConnected(method):  # disconnect() warns when nothing is connected
                getattr(task, name).disconnect()

    def stop(self, timeout_ms: int = 30_000) -> bool:
        """Cancel every task and wait for the pool; False if one did not stop in time."""
        self._stopped = True
        for task in list(self.running):
            task.cancel()
        self.pool.clear()
        done = self.pool.waitForDone(timeout_ms)
        self.worker.stop()
        return done
