"""Shadow mode: a candidate version runs beside the live one on the same inputs, off the request path.

The live path only *offers* each answered request to :meth:`ShadowRunner.offer`: one
``put_nowait`` on a bounded queue. When the queue is full the request is dropped from the
comparison (and counted); the live answer never waits for the shadow. One worker thread takes
requests from the queue, runs the shadow's onnxruntime session on the very rows the live model
answered, compares the two answers and accumulates (:class:`ShadowStats`, pure):

* classification: agreement (the same class per row) and the confusion between the two
  (rows = the live version's class, columns = the shadow's);
* regression: agreement within a tolerance, and the distribution of ``shadow - live``;
* both: the latency of each (live: the answered request; shadow: its own run), and the
  requests the shadow failed on -- any exception it raises is caught and counted, never
  seen by the live path.

Every ``report_seconds`` (and when it stops) the worker hands a
:class:`~edgeloop.agent.wire.shadow.ShadowReport` -- the whole comparison since the shadow
started -- to ``publish``. When the live version changes under a running shadow (a deploy, a
rollback, a revert), the comparison starts again against the new live version.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgeloop.agent.errors import EdgeloopError
from edgeloop.agent.runtime import ModelRunner
from edgeloop.agent.wire.shadow import DEFAULT_REPORT_SECONDS, DEFAULT_TOLERANCE, ShadowReport
from edgeloop.agent.wire.tensors import CLASSIFICATION_OUTPUT, REGRESSION_OUTPUT

log = logging.getLogger(__name__)

QUEUE_SIZE = 64  # requests waiting for the shadow at most; more are dropped (counted), never waited for
LATENCY_SAMPLES = 4096  # the last this many latencies (and regression errors) give the percentiles


class ShadowError(EdgeloopError):
    """A version cannot shadow the live one, or a shadow command names no running shadow."""

    code = "shadow_refused"


def _percentiles(values: deque, keys: tuple[tuple[str, float], ...]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.fromiter(values, dtype=np.float64, count=len(values))
    return {name: round(float(np.percentile(arr, q)), 4) for name, q in keys}


class ShadowStats:
    """The comparison accumulated so far (pure: numbers in, numbers out; not thread-safe)."""

    def __init__(self, task: str, labels: list[str], tolerance: float = DEFAULT_TOLERANCE) -> None:
        self.task = task
        self.labels = list(labels)
        self.tolerance = tolerance
        self.requests = self.rows = self.agree_rows = self.errors = 0
        self.last_error = ""
        n = len(self.labels)
        self.confusion = np.zeros((n, n), dtype=np.int64) if task == "classification" else None
        self._live_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._shadow_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._diff: deque[float] = deque(maxlen=LATENCY_SAMPLES)  # shadow - live, regression
        self._diff_n = 0
        self._diff_sum = self._diff_sq = self._diff_abs = self._diff_max = 0.0

    def add_classes(self, live: np.ndarray, shadow: np.ndarray) -> None:
        """One request's predicted class per row, live and shadow."""
        live, shadow = np.asarray(live, dtype=np.int64).reshape(-1), np.asarray(shadow, dtype=np.int64).reshape(-1)
        if live.shape != shadow.shape:
            raise ValueError(f"live answered {live.size} rows, the shadow {shadow.size}")
        assert self.confusion is not None
        n = len(self.labels)
        self.confusion += np.bincount(live * n + shadow, minlength=n * n).reshape(n, n)
        self.requests += 1
        self.rows += int(live.size)
        self.agree_rows += int(np.count_nonzero(live == shadow))

    def add_values(self, live: np.ndarray, shadow: np.ndarray) -> None:
        """One request's regression predictions per row, live and shadow."""
        live = np.asarray(live, dtype=np.float64).reshape(-1)
        shadow = np.asarray(shadow, dtype=np.float64).reshape(-1)
        if live.shape != shadow.shape:
            raise ValueError(f"live answered {live.size} rows, the shadow {shadow.size}")
        diff = shadow - live
        absd = np.abs(diff)
        self.requests += 1
        self.rows += int(live.size)
        self.agree_rows += int(np.count_nonzero(absd <= self.tolerance * np.maximum(1.0, np.abs(live))))
        self._diff.extend(diff.tolist())
        self._diff_n += int(diff.size)
        self._diff_sum += float(diff.sum())
        self._diff_sq += float((diff * diff).sum())
        self._diff_abs += float(absd.sum())
        self._diff_max = max(self._diff_max, float(absd.max()) if absd.size else 0.0)

    def add_latency(self, live_ms: float, shadow_ms: float | None) -> None:
        self._live_ms.append(live_ms)
        if shadow_ms is not None:
            self._shadow_ms.append(shadow_ms)

    def add_error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message[:300]

    @property
    def agreement(self) -> float | None:
        return self.agree_rows / self.rows if self.rows else None

    def error_distribution(self) -> dict[str, float]:
        """Regression: mean, mean absolute, RMS and largest absolute ``shadow - live``, and percentiles of
        the absolute difference (over the last :data:`LATENCY_SAMPLES` rows); empty before the first row."""
        if not self._diff_n:
            return {}
        n = self._diff_n
        absd = deque(abs(v) for v in self._diff)
        return {"mean": round(self._diff_sum / n, 6), "mean_abs": round(self._diff_abs / n, 6),
                "rmse": round(float(np.sqrt(self._diff_sq / n)), 6), "max_abs": round(self._diff_max, 6),
                **{k: round(v, 6) for k, v in _percentiles(absd, (("p50_abs", 50), ("p90_abs", 90),
                                                                   ("p99_abs", 99))).items()}}

    @staticmethod
    def _latency(values: deque) -> dict[str, float]:
        if not values:
            return {}
        return {**_percentiles(values, (("p50", 50), ("p99", 99))),
                "mean": round(float(np.mean(np.fromiter(values, dtype=np.float64))), 4),
                "max": round(max(values), 4)}

    def live_latency(self) -> dict[str, float]:
        return self._latency(self._live_ms)

    def shadow_latency(self) -> dict[str, float]:
        return self._latency(self._shadow_ms)


@dataclass(frozen=True)
class ShadowInfo:
    """What a report says about the shadow and this agent."""

    agent_id: str
    bundle_sha256: str
    report_seconds: float = DEFAULT_REPORT_SECONDS
    tolerance: float = DEFAULT_TOLERANCE
    command_id: str = ""


def check_shadowable(shadow: ModelRunner, live: ModelRunner | None) -> None:
    """Raise :class:`ShadowError` unless ``shadow`` can run on what ``live`` answers: the same model, task,
    feature names (in order) and labels."""
    if live is None:
        raise ShadowError("no version is live on this agent: there is nothing to shadow (deploy one first)")
    ms, ml = shadow.manifest, live.manifest
    for what, a, b in (("model", ms.model_name, ml.model_name), ("task", ms.task, ml.task),
                       ("features", list(ms.feature_names), list(ml.feature_names)),
                       ("labels", [str(x) for x in ms.labels], [str(x) for x in ml.labels])):
        if a != b:
            raise ShadowError(f"{ms.model_name} {ms.version} cannot shadow the live {ml.model_name} {ml.version}: "
                              f"its {what} differ ({a!r} vs {b!r}); a shadow must be a version of the live model "
                              "with the same inputs and outputs")


class ShadowRunner:
    """One shadow version running beside the live one (see the module docstring)."""

    def __init__(self, runner: ModelRunner, live: ModelRunner | None, info: ShadowInfo,
                 publish: Callable[[ShadowReport], None], *, queue_size: int = QUEUE_SIZE,
                 clock: Callable[[], float] = time.time) -> None:
        check_shadowable(runner, live)  # raises when nothing is live
        assert live is not None
        self.runner = runner
        self._primary = CLASSIFICATION_OUTPUT if runner.is_classifier else REGRESSION_OUTPUT
        self.info = info
        self.publish = publish
        self.clock = clock
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._seq = 0
        self._reset(live)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="shadow", daemon=True)

    def _reset(self, live: ModelRunner) -> None:
        self.live_version, self.live_sha256 = live.version, live.bundle_sha256
        self.started_at = self.clock()
        self.stats = ShadowStats(self.runner.task, [str(x) for x in self.runner.manifest.labels], self.info.tolerance)
        self.dropped = 0
        self._seq = 0

    def start(self) -> ShadowRunner:
        self._thread.start()
        log.info("shadow %s %s started beside live %s (reports every %.1f s)", self.runner.name, self.runner.version,
                 self.live_version, self.info.report_seconds)
        return self

    @property
    def version(self) -> str:
        return self.runner.version

    # --- the live path: never waits -------------------------------------------------------------
    def offer(self, live: ModelRunner, x: np.ndarray, predicted: np.ndarray | None, outputs: dict,
              live_ms: float) -> None:
        """An answered request (the live runner, its rows, its answer, its latency): queued for the shadow,
        or dropped (counted) when the queue is full. Never blocks, never raises."""
        try:
            self._queue.put_nowait((live, x, predicted, outputs, live_ms))
        except queue.Full:
            self.dropped += 1  # read by the worker under the GIL; an off-by-one under a race only

    # --- the worker ---------------------------------------------------------------------------------------
    def _work(self) -> None:
        next_report = time.monotonic() + self.info.report_seconds
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=max(0.01, min(0.25, next_report - time.monotonic())))
            except queue.Empty:
                item = None
            if item is not None:
                self._compare(*item)
                self._queue.task_done()
            if time.monotonic() >= next_report:
                self._report(final=False)
                next_report = time.monotonic() + self.info.report_seconds

    def _compare(self, live: ModelRunner, x: np.ndarray, predicted: np.ndarray | None, outputs: dict,
                 live_ms: float) -> None:
        with self._lock:
            if live.bundle_sha256 != self.live_sha256:  # the live version changed: a new comparison
                log.info("live version is now %s: shadow comparison of %s starts again", live.version,
                         self.runner.version)
                self._reset(live)
            stats = self.stats
        started = time.perf_counter()
        try:  # the primary output only, no JSON-ready lists: the less the worker holds the GIL, the better
            out = np.asarray(self.runner.predict(x)[self._primary])
            if not np.isfinite(out).all():
                raise ShadowError(f"the shadow produced non-finite values in {self._primary!r}", code="bad_output")
            shadow_ms = (time.perf_counter() - started) * 1000.0
            with self._lock:
                if stats.task == "classification":
                    if predicted is None:
                        raise ShadowError("the live answer has no predicted class")
                    stats.add_classes(predicted, out.reshape(out.shape[0], -1).argmax(axis=1))
                else:
                    stats.add_values(np.asarray(outputs[REGRESSION_OUTPUT]), out)
                stats.add_latency(live_ms, shadow_ms)
        except Exception as exc:  # whatever the shadow does, the live answer is out already
            with self._lock:
                stats.add_error(f"{getattr(exc, 'code', type(exc).__name__)}: {exc}")
                stats.add_latency(live_ms, None)
            log.debug("shadow %s failed on a request: %s", self.runner.version, exc)

    def snapshot(self, final: bool = False) -> ShadowReport:
        """The comparison so far as a report (thread-safe)."""
        with self._lock:
            s, m = self.stats, self.runner.manifest
            rep = ShadowReport(
                agent_id=self.info.agent_id, model=m.model_name, version=m.version,
                bundle_sha256=self.info.bundle_sha256, live_version=self.live_version,
                live_sha256=self.live_sha256, task=s.task, started_at=self.started_at, at=self.clock(),
                seq=self._seq, requests=s.requests, rows=s.rows, agree_rows=s.agree_rows, errors=s.errors,
                dropped=self.dropped, last_error=s.last_error, labels=list(s.labels),
                confusion=s.confusion.tolist() if s.confusion is not None else None,
                error=s.error_distribution(), tolerance=s.tolerance, live_latency_ms=s.live_latency(),
                shadow_latency_ms=s.shadow_latency(), final=final)
            self._seq += 1
        return rep

    def _report(self, final: bool) -> None:
        try:
            self.publish(self.snapshot(final))
        except Exception:
            log.exception("could not publish the shadow report")

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until the requests queued so far were compared (tests, and before a final report)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def stop(self, timeout: float = 5.0) -> ShadowReport:
        """Stop the worker (the requests still queued are compared first) and publish the final report."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        while True:  # what was queued before the stop still counts
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._compare(*item)
            self._queue.task_done()
        rep = self.snapshot(final=True)
        try:
            self.publish(rep)
        except Exception:
            log.exception("could not publish the final shadow report")
        log.info("shadow %s stopped: %d requests compared, agreement %s, %d errors, %d dropped", self.runner.version,
                 rep.requests, "n/a" if rep.agreement is None else f"{rep.agreement:.2%}", rep.errors, rep.dropped)
        return rep


__all__ = ["ShadowRunner", "ShadowStats", "ShadowInfo", "ShadowError", "check_shadowable", "QUEUE_SIZE"]
