"""The fleet as the hub sees it: connecting to the agents' broker, the agents' last known
state, their drift reports and summaries, and agents announcing themselves on the network."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgeloop.hub.services.promotion import HubPromotion

if TYPE_CHECKING:
    from edgeloop.hub.fleet import Fleet


class HubAgents(HubPromotion):
    def fleet(self, broker_url: str, on_change: Callable[..., Any] | None = None) -> Fleet:
        """A :class:`edgeloop.hub.fleet.Fleet` for the broker at ``broker_url`` (not started:
        use it as a context manager, or call ``start()``)."""
        from edgeloop.hub.fleet import BrokerAddress, Fleet

        return Fleet(BrokerAddress.parse(broker_url), self.registry, self.key, actor=self.actor,
                     on_change=on_change)

    def list_agents(self) -> list[dict]:
        """The agents this hub has heard from, with their last known state."""
        return self.registry.list_agents()

    def drift_summary(self, agent_id: str | None = None) -> list[dict]:
        """Per (agent, model, version): windows, rows, features flagged and highest PSI
        (see :meth:`Registry.drift_summary`); optionally one agent's."""
        return self.registry.drift_summary(agent_id)

    def drift_reports(self, agent_id: str | None = None, *, model: str | None = None,
                      version: str | None = None, limit: int | None = 100) -> list[dict]:
        """Drift report windows, newest first, filtered by any of agent, model and version."""
        return self.registry.list_drift_reports(agent_id, model=model, version=version, limit=limit)

    @staticmethod
    def discover(timeout: float = 3.0, interfaces: list[str] | None = None) -> list[dict]:
        """Agents announcing themselves with zeroconf within ``timeout`` seconds:
        ``[{"agent_id", "addresses", "http_port", "broker", "version"}]``."""
        from edgeloop.agent.discovery import browse

        return [dataclasses.asdict(a) for a in browse(timeout=timeout, interfaces=interfaces)]
