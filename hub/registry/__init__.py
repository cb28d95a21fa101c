"""The hub's registry: one SQLite file (sqlite-utils, WAL) holding datasets, runs,
models, versions, aliases and gates, bundles, deployments, agents, drift reports,
signing counters and the audit trail, with lineage across all of them.

:class:`Registry` (registry.py) is composed of one module per concern: db.py
(connections, transactions, audit, counters), migrations.py, catalog.py (datasets,
runs, models, versions), promotion.py (aliases, gates, compare), evaluations.py
(scores on separate test data), fleet_log.py
(bundles, deployments, drift), agents.py (agents, fleet membership), listeners.py
(the hub runtime's heartbeat) and lineage.py."""

from edgeloop.hub.registry.agents import OFFLINE_GRACE_S
from edgeloop.hub.registry.migrations import MIGRATIONS, SCHEMA_VERSION
from edgeloop.hub.registry.promotion import GateError, UnknownMetricError, normalize_gate
from edgeloop.hub.registry.registry import Registry

__all__ = ["MIGRATIONS", "OFFLINE_GRACE_S", "SCHEMA_VERSION", "GateError", "Registry", "UnknownMetricError",
           "normalize_gate"]
