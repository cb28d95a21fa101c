"""Serving reports: per model version, the requests, errors and latency since activation, for the
hub's rollout gates (:mod:`edgeloop.agent.wire.serving`, docs/protocol.md "Serving reports").

:class:`ServingStats` is fed by the request path (:class:`edgeloop.agent.metrics.AgentMetrics`
calls its ``on_request`` hook: a lock, two integer increments and a deque append). Errors count
against the version except the client's own mistakes (malformed inputs: :data:`CLIENT_ERRORS`). A version that
serves again after another one served in between (a re-deploy, a rollback) starts from zero:
the counts are "since activation". The latencies kept are the last :data:`KEEP` answered requests
per version; p99 is their nearest-rank 99th percentile.

:class:`ServingReporter` is a thread that publishes a signed ``serving`` report every
``[serving] report_seconds`` while the active version is new (:data:`REPORT_FOR_S` after its
first request) and something changed since the last report. It carries the active version and
the versions served before it in this process (the one a rollout replaced gives the p99 the
new one is judged against), newest first, at most :data:`~edgeloop.agent.wire.serving.MAX_VERSIONS`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgeloop.agent.wire import topics
from edgeloop.agent.wire.serving import MAX_VERSIONS, ServingReport, VersionServing

log = logging.getLogger(__name__)

KEEP = 1000  # latencies kept per version
REPORT_FOR_S = 3600.0  # a version is "new" (reported) this long after its first request
REACTIVATED_AFTER_S = 1.0  # a version idle this long while another served starts again from zero
# the client's own mistakes: not counted against the version (as the serving's health does not count them)
CLIENT_ERRORS = frozenset({"bad_shape", "bad_value", "bad_message", "unsupported_schema", "payload_too_large",
                           "model_not_found"})


@dataclass
class _Entry:
    since: float
    last_at: float
    requests: int = 0
    errors: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=KEEP))


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0..100) of ``values``; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)]


class ServingStats:
    """Requests per (model, version) since activation (thread-safe; see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._last: tuple[str, str] | None = None  # the version that served the latest request

    def record(self, model: str, version: str, latency_ms: float | None, code: str = "") -> None:
        """One request answered by ``model`` ``version``: in ``latency_ms``, or (None) with error ``code``
        (one of :data:`CLIENT_ERRORS` is the client's mistake and not counted at all)."""
        if latency_ms is None and code in CLIENT_ERRORS:
            return
        now = self.clock()
        key = (model, version)
        with self._lock:
            e = self._entries.get(key)
            if e is not None and key != self._last and self._last in self._entries:
                other = self._entries[self._last]
                if e.last_at < other.since and now - e.last_at >= REACTIVATED_AFTER_S:
                    e = None  # activated again after another version served: counts start over
            if e is None:
                e = self._entries[key] = _Entry(since=now, last_at=now)
                self._forget_old()
            self._last = key
            e.last_at = now
            e.requests += 1
            if latency_ms is None:
                e.errors += 1
            else:
                e.latencies.append(latency_ms)

    def _forget_old(self) -> None:
        if len(self._entries) > MAX_VERSIONS:
            oldest = min(self._entries, key=lambda k: self._entries[k].last_at)
            del self._entries[oldest]

    def snapshot(self, active: tuple[str, str] | None) -> list[VersionServing]:
        """Every version's figures, the active one first, then the most recently served."""
        with self._lock:
            items = [(k, e.since, e.last_at, e.requests, e.errors, list(e.latencies))
                     for k, e in self._entries.items()]
        out = []
        for (model, version), since, _, requests, errors, lat in sorted(
                items, key=lambda it: (it[0] != active, -it[2])):
            out.append(VersionServing(model, version, since, requests, errors, percentile(lat, 50),
                                      percentile(lat, 99), active=(model, version) == active))
        return out[:MAX_VERSIONS]


class ServingReporter:
    """Publishes :class:`ServingReport` s (see the module docstring)."""

    def __init__(self, agent_id: str, stats: ServingStats, active: Callable[[], tuple[str, str] | None],
                 publish: Callable[[ServingReport], None], interval: float, clock: Callable[[], float] = time.time,
                 ) -> None:
        self.agent_id = agent_id
        self.stats = stats
        self.active = active
        self.publish = publish
        self.interval = interval
        self.clock = clock
        self._sent: tuple | None = None
        self.reports = 0

    @classmethod
    def for_agent(cls, agent: Any) -> ServingReporter:
        """Hooked into ``agent``: its metrics feed the stats, its link publishes the signed reports."""
        stats = ServingStats(agent.clock)
        agent.metrics.on_request = stats.record

        def active() -> tuple[str, str] | None:
            runner = agent.serving.active
            return None if runner is None else (runner.name, runner.version)

        def publish(report: ServingReport) -> None:
            if agent.link.connected.is_set():
                agent.link.publish(agent._topic(topics.SERVING), agent._signed(report), qos=0)

        return cls(agent.id, stats, active, publish, agent.cfg.serving_report_seconds, agent.clock)

    def report(self) -> ServingReport | None:
        """The report to publish now, or None (nothing new, or the active version is not new any more)."""
        active = self.active()
        versions = self.stats.snapshot(active)
        current = next((v for v in versions if v.active), None)
        if current is None or self.clock() - current.since > REPORT_FOR_S:
            return None
        key = tuple((v.model, v.version, v.requests) for v in versions)
        if key == self._sent:
            return None
        self._sent = key
        return ServingReport(self.agent_id, self.clock(), versions)

    def start(self, stop: threading.Event) -> threading.Thread:
        def run() -> None:
            while not stop.wait(self.interval):
                try:
                    rep = self.report()
                    if rep is not None:
                        self.publish(rep)
                        self.reports += 1
                except Exception:  # a report is a convenience for the hub's gates; never fatal
                    log.exception("could not publish a serving report")

        thread = threading.Thread(target=run, name="agent-serving-report", daemon=True)
        thread.start()
        return thread


__all__ = ["ServingStats", "ServingReporter", "percentile", "KEEP", "REPORT_FOR_S", "CLIENT_ERRORS"]
