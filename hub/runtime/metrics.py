"""Fleet-level Prometheus metrics of the hub runtime (``edgeloop hub serve --metrics-port N``).

Everything is read from the registry when Prometheus scrapes (nothing is counted between scrapes),
and served by prometheus_client's own HTTP server thread on its own registry (never the global
one). Every metric, its type, labels and meaning: docs/metrics.md.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from edgeloop.hub.services import Hub

log = logging.getLogger(__name__)

# the newest drift window of each agent (what "flagged now" means)
_LATEST_DRIFT = """
SELECT agent_id, model, version, drifted_features FROM drift_reports d
WHERE id = (SELECT id FROM drift_reports e WHERE e.agent_id = d.agent_id ORDER BY ended_at DESC, id DESC LIMIT 1)
"""


class FleetCollector:
    """Reads the hub's registry on every scrape (``connected``/``ingested``: the runtime's link and intake)."""

    def __init__(self, hub: Hub, connected: Callable[[], bool] = lambda: False,
                 ingested: Callable[[], int] = lambda: 0) -> None:
        self.hub, self.connected, self.ingested = hub, connected, ingested

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        reg = self.hub.registry
        up = GaugeMetricFamily("edgeloop_hub_broker_connected", "1 while the hub runtime is connected to the broker")
        up.add_metric([], 1 if self.connected() else 0)
        yield up
        got = CounterMetricFamily("edgeloop_hub_messages_ingested", "Agent messages (status, state, events, "
                                  "drift) the runtime stored since it started")
        got.add_metric([], self.ingested())
        yield got
        agents = Counter(str(a.get("status") or "unknown") for a in reg.list_agents())
        fam = GaugeMetricFamily("edgeloop_hub_agents", "Agents of this hub's fleet by last known status",
                                labels=["status"])
        for status in sorted({"online", "offline", *agents}):
            fam.add_metric([status], agents.get(status, 0))
        yield fam
        deps = Counter((d["kind"], d["status"]) for d in reg.list_deployments())
        fam = GaugeMetricFamily("edgeloop_hub_deployments", "Deployments (deploy, rollback commands) recorded, by "
                                "kind and outcome (pending, installed, failed, ...)", labels=["kind", "status"])
        for (kind, status), n in sorted(deps.items()):
            fam.add_metric([kind, status], n)
        yield fam
        db: Any = reg._db()  # plain counts: reading every report through list_drift_reports would parse them all
        (reports,) = db.execute("SELECT COUNT(*) FROM drift_reports").fetchone()
        received = CounterMetricFamily("edgeloop_hub_drift_reports", "Drift windows received from agents and stored")
        received.add_metric([], reports)
        yield received
        yield from _drift_now(db.execute(_LATEST_DRIFT).fetchall())


def _drift_now(rows: list[tuple[str, str, str, str]]) -> Iterator[Metric]:
    per_agent = GaugeMetricFamily("edgeloop_hub_agent_drifted_features", "Features drifted in each agent's newest "
                                  "drift window", labels=["agent_id", "model", "version"])
    flagged = 0
    for agent_id, model, version, drifted in sorted(rows):
        n = len(json.loads(drifted or "[]"))
        flagged += n > 0
        per_agent.add_metric([agent_id, model, version], n)
    total = GaugeMetricFamily("edgeloop_hub_flagged_agents", "Agents whose newest drift window flagged a feature")
    total.add_metric([], flagged)
    yield total
    yield per_agent


class FleetMetricsServer:
    """prometheus_client's HTTP server thread serving a :class:`FleetCollector` on ``host:port`` (0: a free port)."""

    def __init__(self, collector: FleetCollector, port: int, host: str = "0.0.0.0") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._server.server_port)
        log.info("fleet metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


__all__ = ["FleetCollector", "FleetMetricsServer"]
