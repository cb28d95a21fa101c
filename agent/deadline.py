"""A deadline for the slow steps of an install -- loading a model, its warm-up, its smoke test --
that can be abandoned when it passes.

onnxruntime runs are stopped with ``RunOptions.terminate``, set from a timer thread: a model
whose warm-up never ends (an ONNX ``Loop`` of 2^40 rounds) is interrupted between two of its
nodes, also inside a loop body, and the run raises. Creating a session cannot be interrupted
in-process: it runs on a thread of its own which is abandoned at the deadline (it ends when
onnxruntime returns; its result is thrown away). Either way the caller gets an
:class:`~edgeloop.agent.errors.InstallTimeoutError` and the control thread goes on.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import onnxruntime as ort

from edgeloop.agent.errors import InstallTimeoutError

T = TypeVar("T")


class Deadline:
    """``seconds`` from now (None: no deadline); ``what`` names the job in error messages."""

    def __init__(self, seconds: float | None, what: str = "the install") -> None:
        self.seconds = seconds
        self.what = what
        self.at = None if seconds is None else time.monotonic() + seconds

    def remaining(self, step: str) -> float | None:
        if self.at is None:
            return None
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.expired(step)
        return left

    def expired(self, step: str) -> InstallTimeoutError:
        return InstallTimeoutError(
            f"{self.what} did not finish within {self.seconds:g} s ({step} was still running, abandoned); "
            "the previous model keeps serving. Check the model (a loop that never ends?) or raise "
            "limits.install_timeout_seconds in the agent config")

    def call(self, step: str, fn: Callable[[], T]) -> T:
        """``fn()`` on a thread of its own; abandoned (InstallTimeoutError) when the deadline passes."""
        left = self.remaining(step)
        if left is None:
            return fn()
        box: dict[str, object] = {}

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: B036 - handed to the caller
                box["error"] = exc

        worker = threading.Thread(target=run, name=f"install-{step}", daemon=True)
        worker.start()
        worker.join(left)
        if worker.is_alive():
            raise self.expired(step)
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]

    @contextlib.contextmanager
    def run_options(self, step: str) -> Iterator[ort.RunOptions | None]:
        """RunOptions for one session run that terminate it at the deadline; a run that was
        terminated raises InstallTimeoutError (whatever onnxruntime raised is its cause)."""
        left = self.remaining(step)
        if left is None:
            yield None
            return
        ro = ort.RunOptions()
        timer = threading.Timer(left, lambda: setattr(ro, "terminate", True))
        timer.daemon = True
        timer.start()
        try:
            yield ro
        except Exception as exc:
            if ro.terminate:
                raise self.expired(step) from exc
            raise
        finally:
            timer.cancel()
