"""One progress mechanism for every long-running hub job (training, export, ...).

A job reports :class:`ProgressEvent` objects to a :data:`ProgressCallback`; the
terminal (:class:`TerminalProgress`) and the GUI (a callback that forwards events
to a Qt signal) consume the same events, so the hub never knows who is watching.
A job honours a :class:`CancelToken` that another thread (a GUI button, a signal
handler) may trip at any time.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from edgeloop.hub.errors import CancelledError

__all__ = [
    "ProgressEvent",
    "ProgressCallback",
    "CancelToken",
    "TerminalProgress",
    "null_progress",
]


@dataclass(frozen=True)
class ProgressEvent:
    """A snapshot of a job's progress.

    ``done`` and ``total`` are in the stage's own unit (epochs, rows, steps);
    ``total`` is ``None`` when the amount of work is not known in advance.
    ``metrics`` carries numbers worth showing or plotting (loss, accuracy...).
    """

    stage: str
    done: float
    total: float | None = None
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        """``done / total`` clamped to [0, 1], or ``None`` when the total is unknown."""
        if self.total is None or self.total <= 0:
            return None
        return min(max(self.done / self.total, 0.0), 1.0)


ProgressCallback = Callable[[ProgressEvent], None]


def null_progress(event: ProgressEvent) -> None:
    """A progress callback that ignores every event (the default for library calls)."""


class CancelToken:
    """A thread-safe, one-way cancellation flag.

    The job polls :attr:`cancelled` (or calls :meth:`raise_if_cancelled`) at safe
    points; any thread may call :meth:`cancel`. Once cancelled it stays cancelled.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the job to stop at its next safe point."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self, what: str = "The operation") -> None:
        """Raise :class:`edgeloop.hub.errors.CancelledError` if :meth:`cancel` was called."""
        if self._event.is_set():
            raise CancelledError(f"{what} was cancelled on request; nothing was kept. Start it again when ready.")


class TerminalProgress:
    """A progress callback that renders a one-line bar to a text stream.

    On a TTY the line is redrawn in place with ``\\r``; on anything else (a log
    file, CI output) a plain line is written at most every ~10% of a stage, plus
    the first and the last event, so logs stay short. Events without a total are
    written at most once per ``min_interval_s`` on non-TTY streams.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        width: int = 30,
        min_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self.width = width
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._stage: str | None = None
        self._last_bucket = -1
        self._last_time = float("-inf")
        self._line_open = False
        self._lock = threading.Lock()

    @property
    def stream(self) -> TextIO:
        # Resolved late so a redirected sys.stderr (pytest capture) is honoured.
        return self._stream if self._stream is not None else sys.stderr

    def _is_tty(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        try:
            return bool(isatty()) if isatty is not None else False
        except (ValueError, OSError):  # closed stream
            return False

    def render(self, event: ProgressEvent) -> str:
        """The bar text for one event (no line ending), e.g. ``train [#####-----] 20/40 50% loss=0.31``."""
        frac = event.fraction
        parts = [event.stage]
        if frac is not None:
            filled = int(round(frac * self.width))
            parts.append("[" + "#" * filled + "-" * (self.width - filled) + "]")
            parts.append(f"{_num(event.done)}/{_num(event.total)} {frac * 100:3.0f}%")
        elif event.done:
            parts.append(_num(event.done))
        if event.message:
            parts.append(event.message)
        parts.extend(f"{k}={_num(v)}" for k, v in event.metrics.items() if isinstance(v, (int, float)))
        return " ".join(parts)

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            if self._is_tty():
                self._draw_tty(event)
            else:
                self._draw_plain(event)

    def close(self) -> None:
        """End an open in-place line (call when the job ends without reaching its total)."""
        with self._lock:
            if self._line_open:
                self.stream.write("\n")
                self.stream.flush()
                self._line_open = False

    def _new_stage(self, event: ProgressEvent) -> bool:
        if event.stage == self._stage:
            return False
        self._stage = event.stage
        self._last_bucket = -1
        self._last_time = float("-inf")
        return True

    def _draw_tty(self, event: ProgressEvent) -> None:
        out = self.stream
        if self._new_stage(event) and self._line_open:
            out.write("\n")
        out.write("\r" + self.render(event) + "\x1b[K")  # \x1b[K clears a longer previous line
        self._line_open = True
        frac = event.fraction
        if frac is not None and frac >= 1.0:
            out.write("\n")
            self._line_open = False
        out.flush()

    def _draw_plain(self, event: ProgressEvent) -> None:
        first = self._new_stage(event)
        frac = event.fraction
        if frac is not None:
            bucket = int(frac * 10)  # 0..10: one line per ~10%
            if not first and bucket == self._last_bucket:
                return
            self._last_bucket = bucket
        else:
            now = self._clock()
            if not first and now - self._last_time < self.min_interval_s:
                return
            self._last_time = now
        self.stream.write(self.render(event) + "\n")
        self.stream.flush()


def _num(v: Any) -> str:
    """Compact number formatting for bars: integers without decimals, floats to 4 significant digits."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if float(v).is_integer() and abs(v) < 1e12:
        return str(int(v))
    return f"{v:.4g}"
