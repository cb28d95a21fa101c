"""Zeroconf: an agent announces itself and the hub finds it (real mDNS on the loopback interface)."""

from pathlib import Path

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.discovery import SERVICE_TYPE, AgentAnnouncer, browse


def test_announced_agent_is_discovered():
    cfg = AgentConfig(agent_id="zc-test-1", state_dir=Path("unused"), trusted_keys=[], mqtt_host="10.1.2.3",
                      mqtt_port=1884)
    ann = AgentAnnouncer("zc-test-1", cfg, 8123, interfaces=["127.0.0.1"]).start()
    try:
        found = {a.agent_id: a for a in browse(timeout=2.0, interfaces=["127.0.0.1"])}
    finally:
        ann.close()
    assert "zc-test-1" in found
    a = found["zc-test-1"]
    assert a.http_port == 8123 and a.broker == "10.1.2.3:1884" and "127.0.0.1" in a.addresses
    assert len(SERVICE_TYPE.split(".")[0]) - 1 <= 15  # DNS-SD service label limit
