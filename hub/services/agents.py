"""The fleet as the hub sees it: connecting to the agents' broker, the agents' last known
state (this hub's fleet, or every agent heard of), how fresh that view is, refusing agent
ids the hub does not know, their drift reports and summaries, and agents announcing
themselves on the network."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.agent.connection import BrokerSettings, broker_from_options
from edgeloop.agent.wire.envelope import key_id, load_public_pem, raw_public_key
from edgeloop.agent.wire.topics import check_agent_id
from edgeloop.hub.errors import FleetError
from edgeloop.hub.services.promotion import HubPromotion

if TYPE_CHECKING:
    from edgeloop.hub.fleet import Fleet, FleetOptions


class UnknownAgentError(FleetError):
    """A command names an agent that is not in this hub's fleet."""

    code = "unknown_agent"


class AgentKeyError(FleetError):
    """An agent's report key cannot be pinned as asked."""

    code = "agent_key"


class HubAgents(HubPromotion):
    def fleet(self, broker: str | BrokerSettings, on_change: Callable[..., Any] | None = None, *,
              runtime: bool = False) -> Fleet:
        """A :class:`edgeloop.hub.fleet.Fleet` for ``broker`` (not started: use it as a context
        manager, or call ``start()``, which raises a specific
        :class:`~edgeloop.agent.connect_errors.BrokerConnectError` when it cannot connect), under
        the topic root of the hub config. ``runtime``: the hub runtime's connection -- this home's
        fixed client id, a persistent session and the hub's retained status (see :meth:`fleet_options`).

        ``broker``: :class:`~edgeloop.agent.connection.BrokerSettings` (credentials, TLS), or a URL
        ``mqtt(s)://[user@]host[:port]``; its user name, if none in the URL, comes from
        ``$EDGELOOP_MQTT_USERNAME`` and its password, if none in the URL, from ``$EDGELOOP_MQTT_PASSWORD``.
        """
        from edgeloop.hub.fleet import Fleet

        settings = broker if isinstance(broker, BrokerSettings) else broker_from_options(broker)
        return Fleet(settings, self.registry, self.key, actor=self.actor,
                     on_change=on_change, options=self.fleet_options(runtime=runtime))

    def fleet_options(self, *, runtime: bool = False) -> FleetOptions:
        """How a fleet of this hub connects: one-shot commands get a random client id and a
        clean session; the runtime gets the home's fixed client id and a persistent session."""
        from edgeloop.hub.fleet import FleetOptions
        from edgeloop.hub.keys import anchor_keyids, trust_material

        c = self.config
        return FleetOptions(topic_root=c.topic_root, client_id=self.registry.hub_client_id() if runtime else None,
                            persistent=runtime, announce=runtime, offline_grace_s=c.offline_grace_s,
                            batch_max=c.batch_max, batch_ms=c.batch_ms, anchor_keyids=tuple(anchor_keyids(self.home)),
                            key_trust=lambda: trust_material(self.home))  # read at each command: certify may run

    def list_agents(self, *, include_foreign: bool = False) -> list[dict]:
        """The agents of this hub's fleet with their last known state; with ``include_foreign``
        also the agents on the broker that do not trust this hub's key (``member`` 0)."""
        return self.registry.list_agents(include_foreign=include_foreign)

    def listening(self) -> dict:
        """How fresh the fleet view is: whether a hub runtime listens, and since when (or when
        one last did); see :meth:`edgeloop.hub.registry.Registry.listening`."""
        return self.registry.listening()

    def unknown_agents(self, agent_ids: Sequence[str]) -> list[str]:
        """The ids among ``agent_ids`` that the registry does not list in this hub's fleet."""
        listed = {a["agent_id"] for a in self.registry.list_agents()}
        return [a for a in dict.fromkeys(agent_ids) if a not in listed]

    def require_agents(self, agent_ids: Sequence[str], fleet: Fleet | None = None, wait: float = 0.5) -> None:
        """Raise :class:`UnknownAgentError` at once for ids not in this hub's fleet, naming the
        known ones. An id the registry does not list counts as known when the started
        ``fleet`` sees its retained state name this hub's key within ``wait`` seconds."""
        missing = self.unknown_agents(agent_ids)
        if missing and fleet is not None:
            missing = fleet.wait_members(missing, wait)
        if not missing:
            return
        rows = {a["agent_id"]: a for a in self.registry.list_agents(include_foreign=True)}
        foreign = [a for a in missing if a in rows or (fleet is not None and a in fleet.agents())]
        known_ids = {a for a, r in rows.items() if r["member"] != 0}
        if fleet is not None:  # members seen on the broker just now, before the registry has stored them
            known_ids |= {a for a in fleet.agents() if fleet.is_member(a)}
        known = sorted(known_ids - set(missing))
        lines = []
        if foreign:
            lines.append(f"agent{'s' if len(foreign) > 1 else ''} {', '.join(foreign)} "
                         f"{'do' if len(foreign) > 1 else 'does'} not trust this hub's key {self.key.keyid}: "
                         f"add the hub's public key ({self.public_key_path}) to the agent's trusted_keys "
                         "and restart it")
        strangers = [a for a in missing if a not in foreign]
        if strangers:
            lines.append(f"no agent {', '.join(repr(a) for a in strangers)} in this hub's fleet; "
                         + (f"known agents: {', '.join(known)}" if known else
                            "this hub knows no agents yet (run `edgeloop hub serve`, and check the broker "
                            f"and the topic root {self.config.topic_root!r})"))
        raise UnknownAgentError("; ".join(lines))

    # --- agents' report keys (docs/security.md, "Agent keys") -----------------------------------
    def pin_agent_key(self, agent_id: str, public_key: bytes | str | Path, *, replace: bool = False) -> dict:
        """Enroll an agent's report key: the PEM public key (bytes, or the path of the agent's
        ``agent_key.pub.pem``) its reports must be signed with, pinned before the agent ever
        connects (nothing on the broker can choose it then). Raises :class:`AgentKeyError` when
        another key is pinned and ``replace`` is not given. Returns ``{"agent_id", "keyid", "source"}``."""
        check_agent_id(agent_id)
        pem = Path(public_key).read_bytes() if isinstance(public_key, (str, Path)) else public_key
        pub = load_public_pem(pem, f"the report key of {agent_id}")
        if not self.registry.pin_agent_key(agent_id, raw_public_key(pub), key_id(pub), source="enrolled",
                                           actor=self.actor, replace=replace):
            old = self.registry.get_agent_key(agent_id) or {}
            raise AgentKeyError(f"agent {agent_id} already has report key {old.get('keyid')} pinned "
                                f"({old.get('source')}); if the agent was reinstalled with a new key, pin this "
                                "one with replace (the old key's reports are refused from then on)")
        return {"agent_id": agent_id, "keyid": key_id(pub), "source": "enrolled"}

    def forget_agent_key(self, agent_id: str) -> bool:
        """Unpin an agent's report key: its next signed state pins a new one (trust on first use
        again). False if none was pinned."""
        return self.registry.forget_agent_key(agent_id, actor=self.actor)

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
