"""The hub's registry: one SQLite file (sqlite-utils, WAL) holding datasets, runs,
models, versions, aliases and gates, bundles, deployments, agents, drift reports,
signing counters and the audit trail, with lineage across all of them."""

from edgeloop.hub.registry.registry import MIGRATIONS, SCHEMA_VERSION, GateError, Registry, normalize_gate

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "GateError", "Registry", "normalize_gate"]
