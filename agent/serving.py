"""The served model, shared by the MQTT and HTTP front ends.

:class:`Serving` holds the active :class:`~edgeloop.agent.runtime.ModelRunner` and its
:class:`~edgeloop.agent.drift.DriftMonitor` as one immutable pair, swapped by a single
attribute assignment under a lock; a request reads the pair once, so it is
answered entirely by the old model or entirely by the new one, never a mix,
and in-flight requests finish on the model they started with. A front end that must
read a request against the model before running it (HTTP: the v2 tensor form names the
input and its width) takes the pair once with :meth:`Serving.lookup` and hands it to
:meth:`Serving.infer`, so the body is read, answered and described by one model even when
another is activated in between; :attr:`InferOutcome.runner` names the model that answered.

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
    """One answered request: who answered (``runner``, and its name and version), the JSON-ready outputs,
    and how long it took."""

    model: str
    version: str
    outputs: dict[str, list]
    rows: int
    latency_ms: float
    runner: ModelRunner


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
class Served:
    """The active model and its drift monitor, as :meth:`Serving.lookup` found them (immutable)."""

    runner: ModelRunner
    monitor: DriftMonitor | None
    feed: _DriftFeed | None = None


class Serving:
    """Active model + drift monitor; thread-safe for any number of request threads."""

    def __init__(self, on_drift_report: DriftCallback | None = None, *, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self.on_drift_report = on_drift_report
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._slot: Served | None = None

    # --- model lifecycle --------------------------------------------------------------------
    def activate(self, runner: ModelRunner, monitor: DriftMonitor | None = None) -> None:
        """Serve ``runner`` from the next request on; the previous monitor's partial window is flushed."""
        with self._lock:
            old = self._slot
            feed = None
            if monitor is not None:  # the same monitor again keeps its feed (and the rows it holds)
                feed = old.feed if old is not None and old.monitor is monitor else _DriftFeed(monitor)
            self._slot = Served(runner, monitor, feed)
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
    def lookup(self, model: str | None = None, version: str | None = None) -> Served:
        """The active model, if it is ``model`` (any name when None) at ``version`` (any when None).

        Raises :class:`ModelNotReadyError` (nothing active) or :class:`ModelNotFoundError` (another
        model or version is active). Pass the result to :meth:`infer` to answer with this very model.
        """
        slot = self._slot
        if slot is None:
            raise ModelNotReadyError("no model is active on this agent yet; deploy a bundle to it and retry")
        runner = slot.runner
        if (model is not None and model != runner.name) or (version is not None and version != runner.version):
            asked = f"model {model or runner.name!r}" + (f" version {version!r}" if version is not None else "")
            raise ModelNotFoundError(
                f"{asked} is not served here; this agent serves {runner.name!r} (version {runner.version})")
        return slot

    def infer(self, inputs: Any, model: str | None = None, *, version: str | None = None,
              max_rows: int | None = None, served: Served | None = None) -> InferOutcome:
        """Validate ``inputs``, run the model, feed its drift monitor.

        The model is ``served`` (from :meth:`lookup`: it answers even if another one was activated
        since), else the active one, looked up by ``model`` and ``version`` as :meth:`lookup` does.
        Raises what :meth:`lookup` raises, :class:`InputShapeError` / :class:`InputValueError` (bad
        inputs) or :class:`InferenceError`.
        """
        started = time.perf_counter()
        if served is None:
            served = self.lookup(model, version)
        elif model is not None or version is not None:
            raise TypeError("infer() takes either served= or model/version, not both")
        runner = served.runner
        x = coerce_inputs(inputs, runner.manifest, self.max_rows if max_rows is None else max_rows)
        outputs, predicted = runner.answer(runner.predict(x))
        latency_ms = (time.perf_counter() - started) * 1000.0
        if served.feed is not None:
            for report in served.feed.add(x, predicted):
                self._emit(report)
        return InferOutcome(model=runner.name, version=runner.version, outputs=outputs, rows=int(x.shape[0]),
                            latency_ms=latency_ms, runner=runner)

    def metadata(self, name: str, version: str | None = None) -> dict:
        """KServe v2 model metadata of the active model, if it is ``name`` (at ``version``, if given).

        Raises :class:`ModelNotFoundError` otherwise, also when no model is active (a model that is
        not here is not found, whether or not another one is).
        """
        try:
            runner = self.lookup(name, version).runner
        except ModelNotReadyError as exc:
            raise ModelNotFoundError(f"model {name!r} is not served here: {exc}") from exc
        m = runner.manifest
        inputs = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in m.inputs]
        outputs = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in m.outputs]
        if runner.is_classifier:
            outputs += [{"name": "class_index", "datatype": "INT64", "shape": [-1]},
                        {"name": "label", "datatype": "BYTES", "shape": [-1]}]
        return {"name": m.model_name, "versions": [m.version], "platform": "onnxruntime",
                "inputs": inputs, "outputs": outputs}

    # --- internals ---------------------------------------------------------------------------------
    def _emit(self, report: DriftReport) -> None:
        if self.on_drift_report is None:
            return
        try:
            self.on_drift_report(report)
        except Exception:
            log.exception("drift report callback failed for window %d of %s", report.window, report.model)

    def _flush(self, old: Served | None) -> None:
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


__all__ = ["Serving", "Served", "InferOutcome"]
