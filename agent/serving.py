"""The served models, shared by the MQTT and HTTP front ends.

An agent serves one active version per model name (several models per agent): each model has
its own slot, replaced on its own; a request names its model, or -- naming none -- goes to the
only model served (with several, it is refused with the list of their names).

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

**Health of the active model** (:meth:`Serving.health`): the outcome of its last ``health_window``
real requests that reached the model (inputs the model was run on; a client's malformed input is
the client's fault and does not count). The model is *failing* when at least ``health_min_requests``
of them were answered and more than ``health_max_error_rate`` of them failed; ``/v2/health/ready``
then answers 503 with the reason, and ``on_health_change`` is called on every change between
failing and not (the agent reports it as a ``model_health`` event). Activation starts a new window.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeloop.agent.drift import DriftMonitor
from edgeloop.agent.errors import ModelNotFoundError, ModelNotReadyError
from edgeloop.agent.runtime import DEFAULT_MAX_ROWS, ModelRunner, coerce_inputs
from edgeloop.agent.wire.messages import DriftReport
from edgeloop.agent.wire.tensors import CLASSIFICATION_OUTPUT, REGRESSION_OUTPUT

log = logging.getLogger(__name__)

DriftCallback = Callable[[DriftReport], None]

HEALTH_WINDOW = 100  # the last this many requests that reached the model ...
HEALTH_MIN_REQUESTS = 20  # ... at least this many of them ...
HEALTH_MAX_ERROR_RATE = 0.5  # ... and more than this share failed: the model is failing


@dataclass(frozen=True)
class ModelHealth:
    """The active model's rolling error rate (see the module docstring); JSON-ready via :meth:`to_dict`."""

    model: str
    version: str
    requests: int  # requests in the window (at most ``window``)
    errors: int  # of them, the ones the model failed on
    window: int
    total_requests: int  # since activation
    total_errors: int
    last_error: str  # "<code>: <message>" of the last failure, "" if none
    failing: bool

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "requests": self.requests, "errors": self.errors,
                "error_rate": round(self.error_rate, 4), "window": self.window,
                "total_requests": self.total_requests, "total_errors": self.total_errors,
                "last_error": self.last_error, "failing": self.failing}


class _ErrorWindow:
    """Outcomes of the last ``size`` requests answered by one model (thread-safe, O(1) per request)."""

    def __init__(self, size: int, min_requests: int, max_error_rate: float) -> None:
        self.size, self.min_requests, self.max_error_rate = size, min_requests, max_error_rate
        self._lock = threading.Lock()
        self._outcomes: deque[bool] = deque()  # True: failed
        self._errors = self._total = self._total_errors = 0
        self._last_error = ""
        self._failing = False

    def record(self, failed: bool, error: str = "") -> bool | None:
        """Count one request; the new ``failing`` when it changed with this request, else None."""
        with self._lock:
            self._outcomes.append(failed)
            self._errors += failed
            self._total += 1
            if failed:
                self._total_errors += 1
                self._last_error = error[:300]
            if len(self._outcomes) > self.size:
                self._errors -= self._outcomes.popleft()
            failing = self._is_failing()
            if failing == self._failing:
                return None
            self._failing = failing
            return failing

    def _is_failing(self) -> bool:
        n = len(self._outcomes)
        return n >= self.min_requests and self._errors > self.max_error_rate * n

    def snapshot(self, runner: ModelRunner) -> ModelHealth:
        with self._lock:
            return ModelHealth(runner.name, runner.version, len(self._outcomes), self._errors, self.size,
                               self._total, self._total_errors, self._last_error, self._failing)


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
    """Rows on their way to one :class:`DriftMonitor`, observed in batches (see the module docstring).

    A window closed by time (``policy.seconds`` after its first row) is closed by :meth:`tick` -- the
    agent's control loop calls it twice a second -- even when no request follows; rows held back when
    the time came still count in the window they arrived in.
    """

    def __init__(self, monitor: DriftMonitor, batch_rows: int = DRIFT_BATCH_ROWS) -> None:
        self.monitor = monitor
        self.window = monitor.policy.rows
        self.batch_rows = batch_rows
        self._regression = monitor.reference.output is not None
        self._probabilities = monitor.estimates  # a calibrated classifier: the monitor estimates accuracy
        self._lock = threading.Lock()
        self._rows: list[np.ndarray] = []
        self._predicted: list[np.ndarray] = []
        self._held = 0  # rows held back, not yet given to the monitor
        self._arrived = 0.0  # when the last held rows arrived (monitor clock)
        self._in_window = monitor.pending_rows  # rows the monitor's open window holds
        self._deadline = self._next_deadline()  # when the open window's time is up (None: by rows only)

    def predictions(self, predicted: np.ndarray | None, outputs: dict[str, list]) -> np.ndarray | None:
        """What the monitor is given of the answer: class indices (class probabilities when it estimates
        accuracy), or a regression model's predictions."""
        if self._probabilities and predicted is not None and CLASSIFICATION_OUTPUT in outputs:
            return np.asarray(outputs[CLASSIFICATION_OUTPUT], dtype=np.float64)
        if predicted is not None or not self._regression:
            return predicted
        values = outputs.get(REGRESSION_OUTPUT)
        return np.asarray(values, dtype=np.float64).reshape(-1) if values is not None else None

    def add(self, x: np.ndarray, predicted: np.ndarray | None) -> list[DriftReport]:
        """Hold or observe rows ``x``; return the windows they closed. Never raises."""
        n = int(x.shape[0])
        now = self.monitor.now()
        with self._lock:
            reports = self._close_if_due(now)
            self._rows.append(x)
            if predicted is not None:
                self._predicted.append(predicted)
            self._held += n
            self._arrived = now
            if 0 < self._in_window and self._in_window + self._held < self.window and self._held < self.batch_rows:
                return reports
            return reports + self._observe_held()

    def tick(self) -> list[DriftReport]:
        """Close the open window if its time is up (held rows go into it first). Never raises."""
        now = self.monitor.now()
        with self._lock:
            return self._close_if_due(now)

    def drain(self) -> list[DriftReport]:
        """Give every held row to the monitor now (before its window is flushed)."""
        with self._lock:
            return self._observe_held() if self._held else []

    def _close_if_due(self, now: float) -> list[DriftReport]:
        if self._deadline is None or now < self._deadline:
            return []
        reports = self._observe_held() if self._held else []
        try:
            closed = self.monitor.tick()
        except Exception:  # drift is a side channel: never fail a request over it
            log.exception("closing a drift window by time failed")
            closed = None
        self._in_window = self.monitor.pending_rows
        self._deadline = self._next_deadline()
        return reports + ([closed] if closed is not None else [])

    def _next_deadline(self) -> float | None:
        left = self.monitor.seconds_left()
        return None if left is None else self.monitor.now() + left

    def _observe_held(self) -> list[DriftReport]:
        rows, predicted = self._rows, self._predicted
        self._rows, self._predicted, self._held = [], [], 0
        x = rows[0] if len(rows) == 1 else np.concatenate(rows)
        pred = None
        if predicted:
            pred = predicted[0] if len(predicted) == 1 else np.concatenate(predicted)
        try:
            return self.monitor.observe(x, pred, at=self._arrived)
        except Exception:  # drift is a side channel: never fail a request over it
            log.exception("drift monitor failed; the request was answered anyway")
            return []
        finally:
            self._in_window = self.monitor.pending_rows
            self._deadline = self._next_deadline()


@dataclass(frozen=True)
class Served:
    """The active model and its drift monitor, as :meth:`Serving.lookup` found them (immutable)."""

    runner: ModelRunner
    monitor: DriftMonitor | None
    feed: _DriftFeed | None = None
    errors: _ErrorWindow | None = None


class Serving:
    """Active model + drift monitor per model name; thread-safe for any number of request threads."""

    def __init__(self, on_drift_report: DriftCallback | None = None, *, max_rows: int = DEFAULT_MAX_ROWS,
                 on_health_change: Callable[[ModelHealth], None] | None = None,
                 on_activate: Callable[[ModelRunner], None] | None = None,
                 health_window: int = HEALTH_WINDOW, health_min_requests: int = HEALTH_MIN_REQUESTS,
                 health_max_error_rate: float = HEALTH_MAX_ERROR_RATE) -> None:
        self.on_drift_report = on_drift_report
        self.on_health_change = on_health_change
        self.on_activate = on_activate  # told of every model swap (the agent's metrics count them)
        # rows of every answered request with their outputs and request id (the agent's opt-in capture)
        self.capture: Callable[[ModelRunner, np.ndarray, dict[str, list], str], None] | None = None
        # every answered request offered to a shadow version (edgeloop.agent.shadow: a non-blocking put)
        self.shadow: Callable[[ModelRunner, np.ndarray, np.ndarray | None, dict[str, list], float], None] | None = None
        self.max_rows = max_rows
        self._health_limits = (health_window, min(health_min_requests, health_window), health_max_error_rate)
        self._lock = threading.Lock()
        self._slots: dict[str, Served] = {}  # model name -> its active version (replaced whole, never edited)
        self._last: str | None = None  # the model activated last: what .active names (a single model's)

    # --- model lifecycle --------------------------------------------------------------------
    def activate(self, runner: ModelRunner, monitor: DriftMonitor | None = None) -> None:
        """Serve ``runner`` from the next request on; the previous monitor's partial window is flushed."""
        with self._lock:
            old = self._slots.get(runner.name)
            feed = None
            if monitor is not None:  # the same monitor again keeps its feed (and the rows it holds)
                feed = old.feed if old is not None and old.monitor is monitor else _DriftFeed(monitor)
            slots = dict(self._slots)
            slots[runner.name] = Served(runner, monitor, feed, _ErrorWindow(*self._health_limits))
            self._slots, self._last = slots, runner.name
        log.info("serving %s version %s", runner.name, runner.version)
        if self.on_activate is not None and (old is None or old.runner is not runner):
            self.on_activate(runner)
        if old is not None and old.monitor is not monitor:
            self._flush(old)

    def deactivate(self, model: str | None = None) -> None:
        """Stop serving ``model`` (None: every model); its requests get :class:`ModelNotReadyError` or
        :class:`ModelNotFoundError` until the next :meth:`activate`."""
        with self._lock:
            slots = dict(self._slots)
            gone = [slots.pop(n) for n in list(slots) if model is None or n == model]
            self._slots = slots
            if self._last not in slots:
                self._last = next(iter(slots), None)
        for old in gone:
            self._flush(old)

    def _slot(self, model: str | None = None) -> Served | None:
        """``model``'s slot; None: the model activated last."""
        name = self._last if model is None else model
        return self._slots.get(name) if name is not None else None

    @property
    def active(self) -> ModelRunner | None:
        """The model activated last (a single-model agent's only one); see :meth:`runner` for a named one."""
        slot = self._slot()
        return slot.runner if slot is not None else None

    @property
    def monitor(self) -> DriftMonitor | None:
        slot = self._slot()
        return slot.monitor if slot is not None else None

    def runner(self, model: str) -> ModelRunner | None:
        """The active version of ``model``, if it is served."""
        slot = self._slots.get(model)
        return slot.runner if slot is not None else None

    def models(self) -> list[str]:
        """The names of the models served, sorted."""
        return sorted(self._slots)

    def ready(self) -> bool:
        return bool(self._slots)

    def health(self, model: str | None = None) -> ModelHealth | None:
        """``model``'s rolling error rate (None: the model activated last); None when it is not served."""
        slot = self._slot(model)
        if slot is None or slot.errors is None:
            return None
        return slot.errors.snapshot(slot.runner)

    def problems(self, model: str | None = None) -> list[str]:
        """Why this agent cannot serve ``model`` well (None: any of its models): none active, or one
        is failing (else [])."""
        if not self._slots:
            return ["no model is active; deploy a bundle to this agent"]
        out = []
        for name in [model] if model is not None else self.models():
            h = self.health(name)
            if h is not None and h.failing:
                out.append(f"model {h.model} version {h.version} failed {h.errors} of its last {h.requests} "
                           f"requests (last: {h.last_error})")
        return out

    # --- requests ------------------------------------------------------------------------------
    def lookup(self, model: str | None = None, version: str | None = None) -> Served:
        """The active version of ``model`` (None: the only model served), if it is ``version`` (any when None).

        Raises :class:`ModelNotReadyError` (nothing active) or :class:`ModelNotFoundError` (that model
        or version is not active, or no model named while several are served). Pass the result to
        :meth:`infer` to answer with this very model.
        """
        slots = self._slots
        if not slots:
            raise ModelNotReadyError("no model is active on this agent yet; deploy a bundle to it and retry")
        served = ", ".join(f"{s.runner.name!r} (version {s.runner.version})" for _, s in sorted(slots.items()))
        if model is None:
            if len(slots) > 1:
                raise ModelNotFoundError(f"this agent serves several models: {served}; name the model of the "
                                         "request (\"model\" on MQTT, /v2/models/<name>/infer on HTTP)")
            slot = next(iter(slots.values()))
        else:
            found = slots.get(model)
            if found is None:
                asked = f"model {model!r}" + (f" version {version!r}" if version is not None else "")
                raise ModelNotFoundError(f"{asked} is not served here; this agent serves {served}")
            slot = found
        runner = slot.runner
        if version is not None and version != runner.version:
            raise ModelNotFoundError(f"model {runner.name!r} version {version!r} is not served here; this agent "
                                     f"serves {served}")
        return slot

    def infer(self, inputs: Any, model: str | None = None, *, version: str | None = None,
              max_rows: int | None = None, served: Served | None = None, request_id: str = "") -> InferOutcome:
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
        try:
            outputs, predicted = runner.answer(runner.predict(x))
        except Exception as exc:  # the model failed on valid inputs: it counts against its health
            self._record(served, True, f"{getattr(exc, 'code', 'internal')}: {exc}")
            raise
        self._record(served, False)
        latency_ms = (time.perf_counter() - started) * 1000.0
        if served.feed is not None:
            for report in served.feed.add(x, served.feed.predictions(predicted, outputs)):
                self._emit(report)
        if self.capture is not None:
            self.capture(runner, x, outputs, request_id)
        shadow = self.shadow
        if shadow is not None:
            shadow(runner, x, predicted, outputs, latency_ms)
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

    def tick_drift(self) -> None:
        """Close each model's drift window if its time is up (the agent calls this periodically)."""
        for slot in list(self._slots.values()):
            if slot.feed is not None:
                for report in slot.feed.tick():
                    self._emit(report)

    # --- internals ---------------------------------------------------------------------------------
    def _record(self, served: Served, failed: bool, error: str = "") -> None:
        if served.errors is None:
            return
        changed = served.errors.record(failed, error)
        if changed is None:
            return
        health = served.errors.snapshot(served.runner)
        (log.error if changed else log.info)(
            "model %s version %s is %s: %d of its last %d requests failed%s", health.model, health.version,
            "failing" if changed else "healthy again", health.errors, health.requests,
            f" (last: {health.last_error})" if changed else "")
        if self.on_health_change is None:
            return
        try:
            self.on_health_change(health)
        except Exception:
            log.exception("model health callback failed")

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


__all__ = ["Serving", "Served", "InferOutcome", "ModelHealth", "HEALTH_WINDOW", "HEALTH_MIN_REQUESTS",
           "HEALTH_MAX_ERROR_RATE"]
