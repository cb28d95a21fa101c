"""The served model, shared by the MQTT and HTTP front ends.

:class:`Serving` holds the active :class:`~edgeloop.agent.runtime.ModelRunner` and its
:class:`~edgeloop.agent.drift.DriftMonitor` as one immutable pair, swapped by a single
attribute assignment under a lock; a request reads the pair once, so it is
answered entirely by the old model or entirely by the new one, never a mix,
and in-flight requests finish on the model they started with.

Rows reach the drift monitor in batches (:class:`_DriftFeed`): a small request in the
middle of a window is held back and observed with the next ones, which spares every
request the monitor's per-call cost. Windows still close on the same request as if each
request were observed at once, and the first row of each window is observed when it
arrives, so reports (numbers, rows, counts, start and end times) are the same.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeloop.agent.drift import DriftMonitor
from edgeloop.agent.errors import ModelNotFoundError, ModelNotReadyError
from edgeloop.agent.runtime import DEFAULT_MAX_ROWS, ModelRunner, coerce_inputs
from edgeloop.agent.wire.messages import DriftReport

log = logging.getLogger(__name__)

DriftCallback = Callable[[DriftReport], None]


@dataclass(frozen=True)
class InferOutcome:
    """One answered request: who answered, the JSON-ready outputs, and how long it took."""

    model: str
    version: str
    outputs: dict[str, list]
    rows: int
    latency_ms: float


DRIFT_BATCH_ROWS = 64


class _DriftFeed:
    """Rows on their way to one :class:`DriftMonitor`, observed in batches (see the module docstring)."""

    def __init__(self, monitor: DriftMonitor, batch_rows: int = DRIFT_BATCH_ROWS) -> None:
        self.monitor = monitor
        self.window = monitor.reference.window
        self.batch_rows = batch_rows
        self._lock = threading.Lock()
        self._rows: list[np.ndarray] = []
        self._predicted: list[np.ndarray] = []
        self._held = 0  # rows held back, not yet given to the monitor
        self._in_window = monitor.pending_rows  # rows the monitor's open window holds

    def add(self, x: np.ndarray, predicted: np.ndarray | None) -> list[DriftReport]:
        """Hold or observe rows ``x``; return the windows they closed. Never raises."""
        n = int(x.shape[0])
        with self._lock:
            self._rows.append(x)
            if predicted is not None:
                self._predicted.append(predicted)
            self._held += n
            if 0 < self._in_window and self._in_window + self._held < self.window and self._held < self.batch_rows:
                return []
            return self._observe_held()

    def drain(self) -> list[DriftReport]:
        """Give every held row to the monitor now (before its window is flushed)."""
        with self._lock:
            return self._observe_held() if self._held else []

    def _observe_held(self) -> list[DriftReport]:
        rows, predicted, held = self._rows, self._predicted, self._held
        self._rows, self._predicted, self._held = [], [], 0
        self._in_window = (self._in_window + held) % self.window
        x = rows[0] if len(rows) == 1 else np.concatenate(rows)
        pred = None
        if predicted:
            pred = predicted[0] if len(predicted) == 1 else np.concatenate(predicted)
        try:
            return self.monitor.observe(x, pred)
        except Exception:  # drift is a side channel: never fail a request over it
            log.exception("drift monitor failed; the request was answered anyway")
            self._in_window = self.monitor.pending_rows
            return []


@dataclass(frozen=True)
class _Active:
    runner: ModelRunner
    monitor: DriftMonitor | None
    feed: _DriftFeed | None = None


class Serving:
    """Active model + drift monitor; thread-safe for any number of request threads."""

    def __init__(self, on_drift_report: DriftCallback | None = None, *, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self.on_drift_report = on_drift_report
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._slot: _Active | None = None

    # --- model lifecycle --------------------------------------------------------------------
    def activate(self, runner: ModelRunner, monitor: DriftMonitor | None = None) -> None:
        """Serve ``runner`` from the next request on; the previous monitor's partial window is flushed."""
        with self._lock:
            old = self._slot
            feed = None
            if monitor is not None:  # the same monitor again keeps its feed (and the rows it holds)
                feed = old.feed if old is not None and old.monitor is monitor else _DriftFeed(monitor)
            self._slot = _Active(runner, monitor, feed)
        log.info("serving %s version %s", runner.name, runner.version)
        if old is not None and old.monitor is not monitor:
            self._flush(old)

    def deactivate(self) -> None:
        """Stop serving; requests get :class:`ModelNotReadyError` until the next :meth:`activate`."""
        with self._lock:
            old, self._slot = self._slot, None
        self._flush(old)

    @property
    def active(self) -> ModelRunner | None:
        slot = self._slot
        return slot.runner if slot is not None else None

    @property
    def monitor(self) -> DriftMonitor | None:
        slot = self._slot
        return slot.monitor if slot is not None else None

    def ready(self) -> bool:
        return self._slot is not None

    # --- requests ------------------------------------------------------------------------------
    def infer(self, inputs: Any, model: str | None = None, *, max_rows: int | None = None) -> InferOutcome:
        """Validate ``inputs``, run the active model, feed the drift monitor.

        Raises :class:`ModelNotReadyError` (nothing active), :class:`ModelNotFoundError`
        (``model`` names another model), :class:`InputShapeError` /
        :class:`InputValueError` (bad inputs) or :class:`InferenceError`.
        """
        started = time.perf_counter()
        slot = self._current(model)
        runner = slot.runner
        x = coerce_inputs(inputs, runner.manifest, self.max_rows if max_rows is None else max_rows)
        outputs, predicted = runner.answer(runner.predict(x))
        latency_ms = (time.perf_counter() - started) * 1000.0
        if slot.feed is not None:
            for report in slot.feed.add(x, predicted):
                self._emit(report)
        return InferOutcome(model=runner.name, version=runner.version, outputs=outputs, rows=int(x.shape[0]),
                            latency_ms=latency_ms)

    def metadata(self, name: str) -> dict:
        """KServe v2 model metadata of the active model, if it is called ``name``."""
        runner = self._served(name)
        m = runner.manifest
        inputs = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in m.inputs]
        outputs = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in m.outputs]
        if runner.is_classifier:
            outputs += [{"name": "class_index", "datatype": "INT64", "shape": [-1]},
                        {"name": "label", "datatype": "BYTES", "shape": [-1]}]
        return {"name": m.model_name, "versions": [m.version], "platform": "onnxruntime",
                "inputs": inputs, "outputs": outputs}

    def model_ready(self, name: str) -> bool:
        """Whether ``name`` is the active model (raises :class:`ModelNotFoundError` if another one is)."""
        slot = self._slot
        if slot is None:
            return False
        self._served(name)
        return True

    # --- internals ---------------------------------------------------------------------------------
    def _current(self, model: str | None) -> _Active:
        slot = self._slot
        if slot is None:
            raise ModelNotReadyError("no model is active on this agent yet; deploy a bundle to it and retry")
        if model is not None and model != slot.runner.name:
            raise ModelNotFoundError(
                f"model {model!r} is not served here; this agent serves {slot.runner.name!r} "
                f"(version {slot.runner.version})")
        return slot

    def _served(self, name: str) -> ModelRunner:
        slot = self._slot
        if slot is None:
            raise ModelNotFoundError(f"model {name!r} is not served here: no model is active on this agent")
        if name != slot.runner.name:
            raise ModelNotFoundError(
                f"model {name!r} is not served here; this agent serves {slot.runner.name!r} "
                f"(version {slot.runner.version})")
        return slot.runner

    def _emit(self, report: DriftReport) -> None:
        if self.on_drift_report is None:
            return
        try:
            self.on_drift_report(report)
        except Exception:
            log.exception("drift report callback failed for window %d of %s", report.window, report.model)

    def _flush(self, old: _Active | None) -> None:
        if old is None or old.monitor is None or old.feed is None:
            return
        for held in old.feed.drain():
            self._emit(held)
        try:
            report = old.monitor.flush()
        except Exception:
            log.exception("flushing the drift monitor of %s failed", old.runner.name)
            return
        if report is not None:
            self._emit(report)


__all__ = ["Serving", "InferOutcome"]
