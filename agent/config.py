"""Agent configuration: a small TOML file (read with the standard library).

Example (``edgeloop agent init`` and the demo write one like it)::

    agent_id = "edge-1"
    state_dir = "/var/lib/edgeloop-agent/edge-1"
    trusted_keys = ["/etc/edgeloop/hub_ed25519.pub.pem"]

    [mqtt]
    host = "127.0.0.1"
    port = 1883
    topic_root = "edgeloop/v1"   # per fleet; the hub of this fleet uses the same root

    [http]
    enabled = true
    host = "127.0.0.1"
    port = 8080        # 0 picks a free port
    max_connections = 64  # beyond this, clients get 503 (one thread per connection)

    [limits]
    max_bundle_bytes = 268435456
    max_request_bytes = 1048576
    max_rows = 4096
    max_queued_requests = 1000  # MQTT inference requests waiting; beyond this they get "overloaded"
    min_free_bytes = 16777216   # kept free in state_dir: a deploy needs twice the bundle plus this

    [transfer]
    idle_seconds = 5.0   # ask for missing chunks after this long without one

    [discovery]
    zeroconf = false     # announce _edgeloop._tcp on the local network
    interfaces = []      # addresses to announce on; empty = all
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeloop.agent.errors import ConfigError, KeyFileError
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.envelope import TrustedKeys
from edgeloop.agent.wire.topics import check_agent_id


@dataclass
class AgentConfig:
    agent_id: str
    state_dir: Path
    trusted_keys: list[Path]
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    keepalive: int = 30
    topic_root: str = topics.ROOT  # per fleet: agents and their hub must share it
    http_enabled: bool = True
    http_host: str = "127.0.0.1"
    http_port: int = 0
    http_max_connections: int = 64
    max_bundle_bytes: int = 256 * 1024 * 1024
    max_request_bytes: int = 1024 * 1024
    max_rows: int = 4096
    max_queued_requests: int = 1000
    min_free_bytes: int = 16 * 1024 * 1024
    transfer_idle_seconds: float = 5.0
    zeroconf: bool = False
    zeroconf_interfaces: list[str] = field(default_factory=list)  # empty: all interfaces
    log_level: str = "INFO"
    source: Path | None = field(default=None, compare=False)

    def load_trusted_keys(self) -> TrustedKeys:
        pems = []
        for p in self.trusted_keys:
            try:
                pems.append(Path(p).read_bytes())
            except OSError as exc:
                raise KeyFileError(f"trusted key {p} cannot be read: {exc}") from exc
        keys = TrustedKeys.from_pems(pems)
        if not len(keys):
            raise ConfigError("no trusted keys configured: the agent would refuse every bundle; "
                              "add the hub's public key to trusted_keys")
        return keys

    # --- file I/O --------------------------------------------------------------
    @classmethod
    def load(cls, path: Path) -> AgentConfig:
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text("utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read agent config {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"agent config {path} is not valid TOML: {exc}") from exc
        return cls.from_dict(doc, base=path.parent, source=path)

    @classmethod
    def from_dict(cls, doc: dict, base: Path = Path("."), source: Path | None = None) -> AgentConfig:
        def get(table: str | None, key: str, typ: type, default: Any) -> Any:
            t = doc if table is None else doc.get(table, {})
            if not isinstance(t, dict):
                raise ConfigError(f"[{table}] must be a table")
            val = t.get(key, default)
            if typ is float and isinstance(val, int):
                val = float(val)
            if val is not None and not isinstance(val, typ):
                where = f"{table}.{key}" if table else key
                raise ConfigError(f"config {where} must be {typ.__name__}, got {val!r}")
            return val

        agent_id = get(None, "agent_id", str, None)
        if agent_id is None:
            raise ConfigError("config needs agent_id")
        check_agent_id(agent_id)
        state_dir = get(None, "state_dir", str, None)
        if state_dir is None:
            raise ConfigError("config needs state_dir (where the agent keeps its bundles and state)")
        keys = get(None, "trusted_keys", list, [])
        resolve = lambda p: (base / p) if not Path(p).is_absolute() else Path(p)
        cfg = cls(
            agent_id=agent_id,
            state_dir=resolve(state_dir),
            trusted_keys=[resolve(k) for k in keys],
            mqtt_host=get("mqtt", "host", str, "127.0.0.1"),
            mqtt_port=get("mqtt", "port", int, 1883),
            mqtt_username=get("mqtt", "username", str, None),
            mqtt_password=get("mqtt", "password", str, None),
            keepalive=get("mqtt", "keepalive", int, 30),
            topic_root=topics.check_root(get("mqtt", "topic_root", str, topics.ROOT)),
            http_enabled=get("http", "enabled", bool, True),
            http_host=get("http", "host", str, "127.0.0.1"),
            http_port=get("http", "port", int, 0),
            http_max_connections=get("http", "max_connections", int, 64),
            max_bundle_bytes=get("limits", "max_bundle_bytes", int, 256 * 1024 * 1024),
            max_request_bytes=get("limits", "max_request_bytes", int, 1024 * 1024),
            max_rows=get("limits", "max_rows", int, 4096),
            max_queued_requests=get("limits", "max_queued_requests", int, 1000),
            min_free_bytes=get("limits", "min_free_bytes", int, 16 * 1024 * 1024),
            transfer_idle_seconds=get("transfer", "idle_seconds", float, 5.0),
            zeroconf=get("discovery", "zeroconf", bool, False),
            zeroconf_interfaces=[str(x) for x in get("discovery", "interfaces", list, [])],
            log_level=get(None, "log_level", str, "INFO"),
            source=source,
        )
        if not 0 < cfg.mqtt_port < 65536 or not 0 <= cfg.http_port < 65536:
            raise ConfigError("ports must be within 1..65535 (http may be 0 for a free port)")
        if cfg.max_queued_requests < 1:
            raise ConfigError(f"limits.max_queued_requests must be at least 1, got {cfg.max_queued_requests}")
        if cfg.min_free_bytes < 0:
            raise ConfigError(f"limits.min_free_bytes must be 0 or more, got {cfg.min_free_bytes}")
        return cfg

    def to_toml(self) -> str:
        q = lambda s: '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines = [
            f"agent_id = {q(self.agent_id)}",
            f"state_dir = {q(self.state_dir)}",
            "trusted_keys = [" + ", ".join(q(k) for k in self.trusted_keys) + "]",
            f"log_level = {q(self.log_level)}",
            "",
            "[mqtt]",
            f"host = {q(self.mqtt_host)}",
            f"port = {self.mqtt_port}",
            f"keepalive = {self.keepalive}",
            f"topic_root = {q(self.topic_root)}",
        ]
        if self.mqtt_username:
            lines.append(f"username = {q(self.mqtt_username)}")
        if self.mqtt_password:
            lines.append(f"password = {q(self.mqtt_password)}")
        lines += [
            "",
            "[http]",
            f"enabled = {str(self.http_enabled).lower()}",
            f"host = {q(self.http_host)}",
            f"port = {self.http_port}",
            f"max_connections = {self.http_max_connections}",
            "",
            "[limits]",
            f"max_bundle_bytes = {self.max_bundle_bytes}",
            f"max_request_bytes = {self.max_request_bytes}",
            f"max_rows = {self.max_rows}",
            f"max_queued_requests = {self.max_queued_requests}",
            f"min_free_bytes = {self.min_free_bytes}",
            "",
            "[transfer]",
            f"idle_seconds = {self.transfer_idle_seconds}",
            "",
            "[discovery]",
            f"zeroconf = {str(self.zeroconf).lower()}",
            "interfaces = [" + ", ".join(q(i) for i in self.zeroconf_interfaces) + "]",
            "",
        ]
        return "\n".join(lines)
