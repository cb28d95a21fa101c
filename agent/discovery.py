"""Zeroconf (mDNS/DNS-SD) announcement and discovery of agents.

Agents announce ``_edgeloop._tcp.local.`` (service type labels must be at most
15 characters) with a small TXT record: ``txtvers=1`` first, then the agent id,
its MQTT broker and its HTTP port. The hub browses the same type to list agents
on the local network before they ever reach the broker.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zeroconf import ServiceInfo, Zeroconf

log = logging.getLogger(__name__)
SERVICE_TYPE = "_edgeloop._tcp.local."


@dataclass(frozen=True)
class DiscoveredAgent:
    agent_id: str
    addresses: tuple[str, ...]
    http_port: int | None
    broker: str
    version: str


def _txt(agent_id: str, broker: str, version: str) -> dict[str, str]:
    return {"txtvers": "1", "agent_id": agent_id, "broker": broker, "version": version}


class AgentAnnouncer:
    def __init__(self, agent_id: str, cfg, http_port: int | None, interfaces=None) -> None:
        from edgeloop.agent import __version__

        self.agent_id = agent_id
        self.http_port = http_port
        self.broker = f"{cfg.mqtt_host}:{cfg.mqtt_port}"
        self.version = __version__
        self.interfaces = interfaces
        self._zc: Zeroconf | None = None
        self._info: ServiceInfo | None = None

    def start(self) -> AgentAnnouncer:
        from zeroconf import InterfaceChoice, ServiceInfo, Zeroconf

        ifaces = self.interfaces or InterfaceChoice.All
        zc = self._zc = Zeroconf(interfaces=ifaces)
        addrs = [socket.inet_aton(a) for a in (self.interfaces or [_primary_ip()])]
        info = ServiceInfo(
            SERVICE_TYPE,
            f"{self.agent_id}.{SERVICE_TYPE}",
            addresses=addrs,
            port=self.http_port or 0,
            properties=_txt(self.agent_id, self.broker, self.version),
            server=f"{self.agent_id}.local.",
        )
        try:
            zc.register_service(info)
        except BaseException:
            self.close()  # no half-started announcer keeps zeroconf threads alive
            raise
        self._info = info
        log.info("announced %s on zeroconf", info.name)
        return self

    def close(self) -> None:
        """Withdraw the announcement (goodbye packets) and close; safe to call twice."""
        zc, info, self._zc, self._info = self._zc, self._info, None, None
        if zc is None:
            return
        try:
            if info is not None:
                zc.unregister_service(info)
        finally:
            zc.close()
        log.info("withdrew the zeroconf announcement of %s", self.agent_id)


def _primary_ip() -> str:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent by connect() on UDP
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def browse(timeout: float = 3.0, interfaces=None) -> list[DiscoveredAgent]:
    """Agents answering on the local network within ``timeout`` seconds."""
    from zeroconf import InterfaceChoice, ServiceBrowser, ServiceStateChange, Zeroconf

    zc = Zeroconf(interfaces=interfaces or InterfaceChoice.All)
    found: dict[str, DiscoveredAgent] = {}
    lock = threading.Lock()

    def on_change(zeroconf, service_type, name, state_change):
        if state_change is not ServiceStateChange.Added:
            return
        info = zeroconf.get_service_info(service_type, name, timeout=2000)
        if info is None:
            return
        props = {k.decode(): (v.decode() if v else "") for k, v in info.properties.items()}
        agent = DiscoveredAgent(
            agent_id=props.get("agent_id", name.split(".")[0]),
            addresses=tuple(info.parsed_addresses()),
            http_port=info.port or None,
            broker=props.get("broker", ""),
            version=props.get("version", ""),
        )
        with lock:
            found[agent.agent_id] = agent

    browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
    try:
        time.sleep(timeout)
    finally:
        browser.cancel()
        zc.close()
    with lock:
        return sorted(found.values(), key=lambda a: a.agent_id)
