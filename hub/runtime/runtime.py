"""The hub runtime: the hub's always-on connection to its fleet.

:class:`HubRuntime` holds the lock of its hub home (one runtime per home), connects a
:class:`edgeloop.hub.fleet.Fleet` with the home's fixed client id and a persistent
session (the broker keeps its QoS 1 subscriptions and queues the reports published
while it is away; they are stored when it returns), publishes the hub's retained
status, ingests status, state, events and drift into the registry in batches, and
records a heartbeat that CLI reads turn into "hub listening since ..." (see
:meth:`edgeloop.hub.registry.Registry.listening`). On every heartbeat it also audits
the agents that stayed offline past the grace period. With ``metrics_port`` it also serves
fleet-level Prometheus metrics (:mod:`edgeloop.hub.runtime.metrics`, docs/metrics.md). It also
drives the rollouts (:attr:`HubRuntime.rollouts`, a :class:`~edgeloop.hub.runtime.rollouts.RolloutDriver`
fed every fleet report; it resumes the rollouts in progress when the runtime starts; docs/rollouts.md).

``edgeloop hub serve`` runs one headless; the GUI runs one in-process when it is given
a broker. One-shot CLI commands keep their own clean sessions with random client ids.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from edgeloop.hub.errors import HubError
from edgeloop.hub.runtime.lock import HomeLock

if TYPE_CHECKING:
    from edgeloop.agent.connection import BrokerSettings
    from edgeloop.hub.fleet import Fleet
    from edgeloop.hub.runtime.metrics import FleetMetricsServer
    from edgeloop.hub.runtime.rollouts import RolloutDriver
    from edgeloop.hub.services import Hub

log = logging.getLogger(__name__)


class HubRuntime:
    """The fleet connection of the hub ``hub`` to ``broker`` (settings or a URL; see the module docstring)."""

    def __init__(self, hub: Hub, broker: BrokerSettings | str, *,
                 on_change: Callable[[str, object], None] | None = None, heartbeat_s: float | None = None,
                 metrics_port: int | None = None, metrics_host: str = "0.0.0.0", rollout_tick_s: float = 0.5) -> None:
        self.hub = hub
        self.broker = broker
        self.on_change = on_change
        self.heartbeat_s = float(heartbeat_s if heartbeat_s is not None else hub.config.heartbeat_s)
        self.lock = HomeLock(hub.home.root)
        self.fleet: Fleet | None = None
        self._stopping = threading.Event()
        self._beat: threading.Thread | None = None
        self.metrics_port, self.metrics_host = metrics_port, metrics_host  # None: no /metrics
        self.metrics: FleetMetricsServer | None = None
        self.rollout_tick_s = rollout_tick_s
        self.rollouts: RolloutDriver | None = None  # drives the rollouts (hub/runtime/rollouts.py)

    @property
    def client_id(self) -> str:
        return self.hub.registry.hub_client_id()

    @property
    def connected(self) -> bool:
        return self.fleet is not None and self.fleet.link.connected.is_set()

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> Self:
        """Take the home's lock, connect, subscribe and start the heartbeat.

        Raises :class:`~edgeloop.hub.runtime.RuntimeLockedError` when another runtime
        serves this home, and the fleet's connection error when the broker cannot be
        reached within ``timeout`` seconds (nothing is left running then).
        """
        self.lock.acquire()
        try:
            fleet = self.hub.fleet(self.broker, self._on_change, runtime=True)
            self.hub.registry.listener_started(
                fleet.client_id, pid=os.getpid(), host=socket.gethostname(), broker=fleet.broker.url,
                topic_root=fleet.root, heartbeat_s=self.heartbeat_s)
            try:
                fleet.start(timeout)
            except BaseException:
                self.hub.registry.listener_stopped(fleet.client_id, connected=False)
                raise
        except BaseException:
            self.lock.release()
            raise
        self.fleet = fleet
        if self.metrics_port is not None:
            self._serve_metrics(fleet)
        self._stopping.clear()
        from edgeloop.hub.runtime.rollouts import RolloutDriver

        self.rollouts = RolloutDriver(self.hub, fleet, tick_s=self.rollout_tick_s).start()  # resumes rollouts
        self._heartbeat()
        self._beat = threading.Thread(target=self._beat_loop, name="hub-heartbeat", daemon=True)
        self._beat.start()
        log.info("hub runtime listening on %s under %s/ as %s (home %s, key %s)", fleet.broker.url, fleet.root,
                 fleet.client_id, self.hub.home.root, self.hub.key.keyid)
        return self

    def stop(self) -> None:
        """Stop the heartbeat, store what was received, say goodbye, give the lock back."""
        fleet, self.fleet = self.fleet, None
        self._stopping.set()
        metrics, self.metrics = self.metrics, None
        if metrics is not None:
            metrics.stop()
        rollouts, self.rollouts = self.rollouts, None
        if rollouts is not None:
            rollouts.stop()
        if self._beat is not None:
            self._beat.join(timeout=max(5.0, self.heartbeat_s))
            self._beat = None
        if fleet is not None:
            was_connected = fleet.link.connected.is_set()
            fleet.stop()
            try:
                self.hub.registry.listener_stopped(fleet.client_id, connected=was_connected)
            except Exception:
                log.exception("could not record that the hub runtime stopped")
            log.info("hub runtime stopped (%d messages stored)", fleet.ingested)
        self.lock.release()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _on_change(self, kind: str, obj: object) -> None:
        """The fleet's reports: to the rollout driver (queued), then to the caller's ``on_change``."""
        if self.rollouts is not None:
            self.rollouts.observe(kind, obj)
        if self.on_change is not None:
            self.on_change(kind, obj)

    def _serve_metrics(self, fleet: Fleet) -> None:
        from edgeloop.hub.runtime.metrics import FleetCollector, FleetMetricsServer

        collector = FleetCollector(self.hub, connected=fleet.link.connected.is_set, ingested=lambda: fleet.ingested)
        try:
            self.metrics = FleetMetricsServer(collector, int(self.metrics_port or 0), self.metrics_host)
        except OSError as exc:
            fleet.stop()
            self.hub.registry.listener_stopped(fleet.client_id, connected=False)
            self.fleet = None
            self.lock.release()
            raise HubError(f"cannot serve metrics on {self.metrics_host}:{self.metrics_port}: {exc}; "
                           "pick a free port with --metrics-port") from exc

    # --- heartbeat -------------------------------------------------------------------------------
    def _beat_loop(self) -> None:
        while not self._stopping.wait(self.heartbeat_s):
            self._heartbeat()

    def _heartbeat(self) -> None:
        fleet = self.fleet
        if fleet is None:
            return
        try:
            self.hub.registry.listener_heartbeat(fleet.client_id, connected=fleet.link.connected.is_set())
            gone = self.hub.registry.audit_offline_agents(fleet.options.offline_grace_s)
        except Exception:
            log.exception("heartbeat: could not write the registry")
            return
        if gone:
            log.info("offline for more than %.0f s: %s", fleet.options.offline_grace_s, ", ".join(gone))
