"""The hub's registry: datasets, runs, models, versions, bundles, deployments,
agents, drift reports, an audit trail and signing counters, in one SQLite file.

Built on sqlite-utils over a real SQLite database in WAL mode with foreign keys
on (:mod:`edgeloop.hub.registry.db`). Every write runs in a ``BEGIN IMMEDIATE``
transaction (so concurrent writers -- the hub's MQTT thread, the CLI/GUI thread,
a second ``edgeloop`` process -- queue on SQLite's lock instead of failing
half-way), and the audit row of a change is written in the same transaction as
the change.

Threads: each thread gets its own connection (created on first use), so one
:class:`Registry` object may be shared between threads. :meth:`Registry.transaction`
groups many writes into one commit (the fleet intake writes in batches), and
:meth:`Registry.savepoint` lets one of them fail alone.

Schema versioning: the ``meta`` table holds ``schema_version``; :data:`MIGRATIONS`
(:mod:`edgeloop.hub.registry.migrations`) is the ordered list of migrations
(migration *n* takes the schema from version *n-1* to *n*). Opening a registry
applies the missing ones; a registry written by a newer edgeloop is refused with
:class:`RegistryError` (upgrade edgeloop).

Return values: every query returns plain ``dict`` rows keyed by column name,
with JSON columns already decoded (``features``, ``params``, ``metrics`` ...).
Ids are short readable strings:

==============  ============================  ======================================
table           id                            example
==============  ============================  ======================================
datasets        ``ds-<first 12 hex of sha>``  ``ds-3fa1c09e77d2``
runs            ``run-<n>``                   ``run-7``
models          the model name                ``iris``
versions        ``<model>:<n>`` (n = 1, 2..)  ``iris:3``
bundles         the bundle's sha256           ``9c0e...`` (64 hex)
deployments     ``dep-<n>``                   ``dep-12`` (also unique by command_id)
agents          the agent id                  ``edge-1``
listeners       the hub runtime's client id   ``edgeloop-hub-3fa1c09e77d2b4a1``
drift_reports   integer                       ``41``
evaluations     integer                       ``3``
audit           integer                       ``1208``
aliases         (model, alias)                ``iris`` + ``production``
alias_history   integer                       ``17``
==============  ============================  ======================================

Version references (accepted by every method that takes one): ``iris:3``;
``iris`` or ``iris:latest`` or ``iris@latest`` for the newest version;
``iris@production`` for where that alias points now (:meth:`Registry.resolve`).
Version rows also carry ``aliases`` (names pointing at them) and ``split`` (the
run's split record).

Model factory (schema 2): a model may have an *evaluation gate* -- minimum (and,
for lower-is-better metrics, maximum) values of its versions' metrics, see
:func:`normalize_gate`. A version failing its gate cannot be aliased
(:meth:`Registry.set_alias`) or deployed (``Hub.check_deployable``) unless the
gate is overridden with a reason, which is recorded; :class:`GateError` lists
each failing metric. Aliases (``production``, ``staging``...) move with a full
history (:meth:`Registry.alias_history`).

Timestamps are unix seconds (floats); audit rows also carry an ISO-8601 string.

Mutating methods take a keyword ``actor`` (default ``"hub"``) for their audit
row; agent-originated changes are audited as ``agent:<agent_id>``. A deployment
row keeps ``target_sha256`` (the sha256 its command names) and ``bundle_sha256``
(the foreign key to ``bundles``, None when that bundle is not registered here).
"""

from __future__ import annotations

from edgeloop.hub.registry.agents import FleetAgents
from edgeloop.hub.registry.captures import Captures
from edgeloop.hub.registry.evaluations import Evaluations
from edgeloop.hub.registry.fleet_log import FleetLog
from edgeloop.hub.registry.lineage import Lineage
from edgeloop.hub.registry.listeners import Listeners
from edgeloop.hub.registry.preflight import Preflights
from edgeloop.hub.registry.promotion import Promotion
from edgeloop.hub.registry.shadow import ShadowReports


class Registry(Promotion, Evaluations, FleetLog, FleetAgents, Listeners, Lineage, Captures, ShadowReports,
               Preflights):
    """The hub's registry in the SQLite file ``path`` (created and migrated on open).

    Composed of its parts, each a module of this package over the common base
    :class:`~edgeloop.hub.registry.db.RegistryDatabase` (connections, transactions,
    migrations, audit, signing counters):

    * :class:`~edgeloop.hub.registry.catalog.Catalog` -- datasets, runs, models, versions
      and version references;
    * :class:`~edgeloop.hub.registry.promotion.Promotion` -- aliases and their history,
      evaluation gates, compare;
    * :class:`~edgeloop.hub.registry.evaluations.Evaluations` -- evaluations of versions'
      shipped artifacts on separate test data (what ``eval.`` gate metrics read);
    * :class:`~edgeloop.hub.registry.fleet_log.FleetLog` -- bundles, deployments, drift reports;
    * :class:`~edgeloop.hub.registry.agents.FleetAgents` -- agents: state, status, fleet
      membership, the audit of their changes;
    * :class:`~edgeloop.hub.registry.listeners.Listeners` -- the hub runtime's heartbeat
      (how fresh the fleet view is);
    * :class:`~edgeloop.hub.registry.lineage.Lineage` -- lineage walks;
    * :class:`~edgeloop.hub.registry.shadow.ShadowReports` -- shadow comparisons (newest report per run).
    """
