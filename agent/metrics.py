"""The agent's Prometheus metrics (served as ``GET /metrics`` by :mod:`edgeloop.agent.http_api`).

One :class:`AgentMetrics` per agent owns its own :class:`~prometheus_client.CollectorRegistry`
(never the process-global one: two agents in one process, as in tests, keep their numbers apart).
The request path calls two small methods, :meth:`AgentMetrics.answered` and :meth:`AgentMetrics.failed`;
they touch only cached label children (a counter increment and a histogram observation, a few
microseconds). Everything else -- drift statistics, queue depth, transfers, worker restarts,
model health, up/ready -- is read from the agent when Prometheus scrapes (:class:`_StateCollector`),
so it costs nothing between scrapes.

Every metric, its type, labels and meaning: docs/metrics.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from edgeloop.agent.wire.messages import DriftReport

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format every Prometheus version reads
# seconds; edge models answer in tens of microseconds to tens of milliseconds
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PROTOCOLS = ("http", "mqtt")
NONE = ""  # the model/version label of a request refused while no model was active


@dataclass(frozen=True)
class AgentProbes:
    """How the scrape-time collector reads the agent (callables, so this module imports no agent part)."""

    active: Callable[[], Any]  # the active ModelRunner (name, version, bundle_sha256) or None
    health: Callable[[], dict]  # AgentCore.health(): ready, reasons, model (ModelHealth dict), workers
    queue_depth: Callable[[], int] = lambda: 0  # MQTT requests waiting for the inference thread
    transfers: Callable[[], Iterable[tuple[str, int, int]]] = lambda: ()  # (transfer id, bytes received, total)


class AgentMetrics:
    """The registry of one agent, and the calls the rest of the agent makes (see the module docstring)."""

    def __init__(self, agent_id: str, probes: AgentProbes | None = None) -> None:
        self.agent_id = agent_id
        self.probes = probes
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter("edgeloop_agent_requests", "Inference requests answered, by model, version, "
                                 "protocol and outcome (ok, error)", ["model", "version", "protocol", "outcome"],
                                 registry=r)
        self._errors = Counter("edgeloop_agent_errors", "Inference requests answered with an error, by protocol "
                               "and error code", ["protocol", "code"], registry=r)
        self._latency = Histogram("edgeloop_agent_inference_latency_seconds", "Time to validate the inputs and "
                                  "run the model, per answered request", ["model", "version"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self._swaps = Counter("edgeloop_agent_model_swaps", "Times the served model changed (deploys, rollbacks, "
                              "the model restored at start)", registry=r)
        self._windows = Counter("edgeloop_agent_drift_windows", "Drift windows closed, by model, version and "
                                "status (ok, too_few_rows, ...)", ["model", "version", "status"], registry=r)
        self._ok: dict[tuple[str, str, str], tuple[Any, Any]] = {}  # (protocol, model, version) -> children
        self._fail: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}  # (protocol, code, model, version)
        self._lock = threading.Lock()
        self.last_drift: DriftReport | None = None  # the last window closed (by the active model or before)
        self.last_answer: tuple[Any, dict, float] | None = None  # (runner, outputs, latency ms) of the last answer
        self.answers = 0  # requests answered without error, both protocols (the HA publisher watches it)
        # (model, version, latency ms or None for an error, error code) of every answered request: the serving
        self.on_request: Callable[..., None] | None = None  # reports (agent/serving_report.py)
        if probes is not None:
            r.register(_StateCollector(self, probes))

    # --- the request path: cached children only ---------------------------------------------------
    def answered(self, protocol: str, runner: Any, latency_ms: float, outputs: dict) -> None:
        """One request answered by ``runner`` in ``latency_ms`` (its validation and model run)."""
        key = (protocol, runner.name, runner.version)
        children = self._ok.get(key)
        if children is None:
            children = self._ok_children(key)
        children[0].inc()
        children[1].observe(latency_ms / 1000.0)
        self.last_answer = (runner, outputs, latency_ms)
        self.answers += 1
        if self.on_request is not None:
            self.on_request(runner.name, runner.version, latency_ms)

    def failed(self, protocol: str, code: str) -> None:
        """One request answered with error ``code`` (the active model, if any, is its model label)."""
        runner = self.probes.active() if self.probes is not None else None
        key = (protocol, code, runner.name if runner is not None else NONE,
               runner.version if runner is not None else NONE)
        children = self._fail.get(key)
        if children is None:
            with self._lock:
                children = self._fail[key] = (self._requests.labels(key[2], key[3], protocol, "error"),
                                              self._errors.labels(protocol, code))
        children[0].inc()
        children[1].inc()
        if self.on_request is not None and runner is not None:
            self.on_request(key[2], key[3], None, code)

    def _ok_children(self, key: tuple[str, str, str]) -> tuple[Any, Any]:
        protocol, model, version = key
        with self._lock:
            children = self._ok[key] = (self._requests.labels(model, version, protocol, "ok"),
                                        self._latency.labels(model, version))
        return children

    # --- off the request path --------------------------------------------------------------------------
    def model_swapped(self) -> None:
        self._swaps.inc()

    def drift(self, report: DriftReport) -> None:
        """A drift window closed: counted, and its statistics shown until the next one."""
        self._windows.labels(report.model, report.version, report.status).inc()
        self.last_drift = report

    def exposition(self) -> bytes:
        """The text a scrape gets (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry)


class _StateCollector:
    """What is read from the agent when Prometheus scrapes (see the module docstring)."""

    def __init__(self, metrics: AgentMetrics, probes: AgentProbes) -> None:
        self.metrics, self.probes = metrics, probes

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: the names below are this module's own

    def collect(self) -> Iterator[Metric]:
        health = self.probes.health()
        yield _gauge("edgeloop_agent_up", "1 while the agent process runs", [], [([], 1)])
        yield _gauge("edgeloop_agent_ready", "1 when /v2/health/ready answers 200 (a model is active and not "
                     "failing, every worker runs)", [], [([], 1 if health.get("ready") else 0)])
        runner = self.probes.active()
        info = InfoMetricFamily("edgeloop_agent_active_model", "The model served now (none: no series)",
                                labels=["model", "version", "bundle_sha256"])
        if runner is not None:
            info.add_metric([runner.name, runner.version, runner.bundle_sha256 or ""], {})
        yield info
        yield _gauge("edgeloop_agent_inference_queue_depth", "MQTT inference requests waiting for the inference "
                     "thread", [], [([], self.probes.queue_depth())])
        yield from self._model_health(health.get("model"))
        restarts = [([name], st.get("restarts", 0)) for name, st in sorted(health.get("workers", {}).items())]
        yield _gauge("edgeloop_agent_worker_restarts", "Times the watchdog restarted each worker thread",
                     ["worker"], restarts, counter=True)
        yield _gauge("edgeloop_agent_worker_alive", "1 while the worker thread runs", ["worker"],
                     [([name], 1 if st.get("alive") else 0) for name, st in sorted(health.get("workers", {}).items())])
        transfers = list(self.probes.transfers())
        yield _gauge("edgeloop_agent_transfer_received_bytes", "Bytes of each bundle transfer in progress received "
                     "so far", ["transfer"], [([t], got) for t, got, _ in transfers])
        yield _gauge("edgeloop_agent_transfer_size_bytes", "Size of each bundle transfer in progress", ["transfer"],
                     [([t], total) for t, _, total in transfers])
        yield from _drift(self.metrics.last_drift)

    @staticmethod
    def _model_health(model: dict | None) -> Iterator[Metric]:
        rows = [] if model is None else [([model["model"], model["version"]], model)]
        yield _gauge("edgeloop_agent_model_error_rate", "Share of the active model's last requests (its rolling "
                     "health window) that failed", ["model", "version"], [(k, m["error_rate"]) for k, m in rows])
        yield _gauge("edgeloop_agent_model_failing", "1 when the active model fails too many requests (ready "
                     "answers 503)", ["model", "version"], [(k, 1 if m["failing"] else 0) for k, m in rows])


def _drift(report: DriftReport | None) -> Iterator[Metric]:
    """The last closed window's per-feature statistics (labels: model, version, feature)."""
    names = ["model", "version", "feature"]
    feats = [] if report is None else [([report.model, report.version, f.name], f) for f in report.features]
    if report is not None and report.output is not None:
        feats.append(([report.model, report.version, "__output__"], report.output))
    yield _gauge("edgeloop_agent_drift_psi", "PSI of each feature in the last drift window", names,
                 [(k, f.psi) for k, f in feats])
    yield _gauge("edgeloop_agent_drift_ks", "KS statistic of each feature in the last drift window", names,
                 [(k, f.ks) for k, f in feats])
    yield _gauge("edgeloop_agent_drift_drifted", "1 when the feature is flagged as drifted (after the "
                 "configured run of windows)", names, [(k, 1 if f.drifted else 0) for k, f in feats])
    yield _gauge("edgeloop_agent_drift_flagged", "1 when the last window alone judged the feature shifted", names,
                 [(k, 1 if f.flagged else 0) for k, f in feats])
    yield _gauge("edgeloop_agent_drift_out_of_range", "Values beyond the reference's range in the last window",
                 names, [(k, f.out_of_range) for k, f in feats])
    key = [] if report is None else [([report.model, report.version], report)]
    yield _gauge("edgeloop_agent_drift_window_rows", "Rows in the last drift window", ["model", "version"],
                 [(k, r.rows) for k, r in key])
    yield _gauge("edgeloop_agent_drift_window_sequence", "Sequence number of the last drift window",
                 ["model", "version"], [(k, r.window) for k, r in key])
    yield _gauge("edgeloop_agent_drift_drifted_features", "Features drifted in the last window",
                 ["model", "version"], [(k, len(r.drifted_features)) for k, r in key])
    yield _gauge("edgeloop_agent_drift_output_js", "Jensen-Shannon distance of the predicted-class shares "
                 "to the reference (classifiers)", ["model", "version"],
                 [(k, r.output_js) for k, r in key if r.output_js is not None])


def _gauge(name: str, doc: str, labels: list[str], rows: Iterable[tuple[list[str], float]],
           counter: bool = False) -> Metric:
    fam: Any = (CounterMetricFamily if counter else GaugeMetricFamily)(name, doc, labels=labels)
    for values, value in rows:
        fam.add_metric(values, float(value))
    return fam


__all__ = ["AgentMetrics", "AgentProbes", "CONTENT_TYPE", "LATENCY_BUCKETS"]
