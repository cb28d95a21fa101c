"""Agent configuration: a small TOML file (read with the standard library, written with tomli-w).

Example (``edgeloop agent init`` and the demo write one like it)::

    agent_id = "edge-1"
    state_dir = "/var/lib/edgeloop-agent/edge-1"
    trusted_keys = ["/etc/edgeloop/hub_ed25519.pub.pem"]
    trusted_roots = ["/etc/edgeloop/root_ed25519.pub.pem"]  # optional: hub keys certified by this offline root
                         # are trusted too (docs/security.md, "Root key, certificates, rotation")
    agent_key = "/var/lib/edgeloop-agent/edge-1/agent_key.pem"  # optional: the key this agent signs its
                         # reports with; created (0600, with agent_key.pub.pem beside it) when missing

    [mqtt]
    host = "127.0.0.1"   # or: url = "mqtts://edge-1@broker.lan" (mqtt:// 1883, mqtts:// 8883)
    port = 1883          # 8883 when [mqtt.tls] is given
    username = "edge-1"  # optional
    password_file = "/etc/edgeloop/mqtt-password"  # first line; or password = "..."; or $EDGELOOP_MQTT_PASSWORD
    protocol = "auto"    # auto (MQTT 5, falling back to 3.1.1), "5" or "3.1.1"
    keepalive = 30
    topic_root = "edgeloop/v1"   # per fleet; the hub of this fleet uses the same root

    [mqtt.tls]           # TLS to the broker (also turned on by an mqtts:// url)
    ca_file = "/etc/edgeloop/broker-ca.pem"   # omitted: the system's trusted CAs
    cert_file = "/etc/edgeloop/edge-1.pem"    # client certificate, where the broker asks for one
    key_file = "/etc/edgeloop/edge-1.key"     # its key (PEM, unencrypted)
    check_hostname = true                     # the broker's certificate must name the host

    [http]
    enabled = true
    host = "127.0.0.1"
    port = 8080        # 0 picks a free port
    max_connections = 64  # open connections at once; beyond this, clients get 503 + Retry-After

    [limits]
    max_bundle_bytes = 268435456
    max_request_bytes = 1048576
    max_rows = 4096
    max_queued_requests = 1000  # MQTT inference requests waiting; beyond this they get "overloaded"
    min_free_bytes = 16777216   # kept free in state_dir: a deploy needs twice the bundle plus this
    install_timeout_seconds = 60.0  # loading + warm-up + smoke test of a new model; past it, refused

    [transfer]
    idle_seconds = 5.0   # ask for missing chunks after this long without one

    [serving]
    report_seconds = 10.0  # serving reports for the hub's rollout gates, while a version is new

    [outbox]               # drift reports and events kept on disk while the broker is unreachable
    max_messages = 1000    # per kind; the oldest are dropped (and counted) beyond it
    max_bytes = 16777216   # per kind

    [drift]                # drift windows; each key left out takes the bundle's default (set by the hub)
    window_rows = 200      # a window closes after this many rows ...
    window_seconds = 3600.0  # ... or this long after its first row, whichever comes first (0: rows only)
    min_rows = 100         # a window closed with fewer rows is reported as too_few_rows, not judged
    consecutive = 2        # flagged windows in a row before a feature is reported drifted

    [homeassistant]      # opt-in MQTT discovery: sensors for the last prediction, drift, latency
    enabled = false
    discovery_prefix = "homeassistant"

    [discovery]
    zeroconf = false     # announce _edgeloop._tcp on the local network
    interfaces = []      # addresses to announce on; empty = all

    [preflight]          # before a deploy activates: measure the bundle's models here (docs/rollouts.md)
    enabled = true       # false: serve the hub's pick, check no memory limit
    always = false       # true: also bundles of one model deployed without a memory limit
    runs = 50            # batch-1 runs timed per model, at most ...
    seconds = 0.3        # ... and for at most this long

    [tags]               # optional: what rollouts target (site=plant-a,hw=pi5); shown by `edgeloop fleet`
    site = "plant-a"
    hw = "pi5"
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeloop.agent.capture import CaptureSettings
from edgeloop.agent.connection import CONFIG_KEYS, BrokerSettings, TlsSettings, parse_url, resolve_password
from edgeloop.agent.errors import ConfigError, KeyFileError, MessageFormatError
from edgeloop.agent.fsutil import atomic_write_bytes
from edgeloop.agent.preflight import PreflightSettings
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.envelope import SigningKey, TrustedKeys
from edgeloop.agent.wire.messages import check_tags
from edgeloop.agent.wire.topics import check_agent_id

AGENT_KEY_FILE = "agent_key.pem"


@dataclass
class AgentConfig:
    agent_id: str
    state_dir: Path
    trusted_keys: list[Path]
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: str | None = None  # prefer mqtt_password_file (or $EDGELOOP_MQTT_PASSWORD)
    mqtt_password_file: Path | None = None
    mqtt_tls: TlsSettings | None = None
    mqtt_protocol: str = "auto"
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
    install_timeout_seconds: float = 60.0
    transfer_idle_seconds: float = 5.0
    serving_report_seconds: float = 10.0  # [serving] report_seconds (agent/serving_report.py)
    outbox_max_messages: int = 1000  # per kind (drift reports, events) kept while the broker is away
    outbox_max_bytes: int = 16 * 1024 * 1024  # per kind
    zeroconf: bool = False
    version_floor: bool = False  # refuse deploys below the newest installed version of a model (agent/floors.py)
    zeroconf_interfaces: list[str] = field(default_factory=list)  # empty: all interfaces
    log_level: str = "INFO"
    ha_enabled: bool = False  # [homeassistant] enabled: publish MQTT discovery configs (docs/metrics.md)
    ha_discovery_prefix: str = "homeassistant"
    drift: dict[str, Any] = field(default_factory=dict)  # [drift] overrides: window_rows, window_seconds, ...
    agent_key: Path | None = None  # the agent's own signing key; None: <state_dir>/agent_key.pem
    capture: CaptureSettings = field(default_factory=CaptureSettings)  # [capture]: opt-in, off by default
    tags: dict[str, str] = field(default_factory=dict)  # [tags]: name = "value", carried in the agent's state
    trusted_roots: list[Path] = field(default_factory=list)  # root keys that certify hub keys (agent/trust_store.py)
    preflight: PreflightSettings = field(default_factory=PreflightSettings)  # [preflight] (agent/preflight.py)
    source: Path | None = field(default=None, compare=False)

    def load_trusted_keys(self, roots: bool = False) -> TrustedKeys:
        """The ``trusted_keys`` (``trusted_roots`` with ``roots``) as public keys."""
        pems = []
        for p in self.trusted_roots if roots else self.trusted_keys:
            try:
                pems.append(Path(p).read_bytes())
            except OSError as exc:
                raise KeyFileError(f"trusted {'root' if roots else 'key'} {p} cannot be read: {exc}") from exc
        keys = TrustedKeys.from_pems(pems)
        if not len(keys) and not roots and not self.trusted_roots:
            raise ConfigError("no trusted keys configured: the agent would refuse every bundle; "
                              "add the hub's public key to trusted_keys (or its root to trusted_roots)")
        return keys

    @property
    def agent_key_path(self) -> Path:
        return Path(self.agent_key) if self.agent_key is not None else Path(self.state_dir) / AGENT_KEY_FILE

    def load_agent_key(self) -> SigningKey:
        """The Ed25519 key this agent signs its reports with, created now when it has none yet (file
        0600, its public key beside it as ``<name>.pub.pem`` for the operator to pin on the hub)."""
        path = self.agent_key_path
        try:
            return SigningKey.from_pem(path.read_bytes(), str(path))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise KeyFileError(f"agent key {path} cannot be read: {exc}; fix its permissions, or move it "
                               "away to make a new one (then pin the new one on the hub)") from exc
        key = SigningKey.generate()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, key.private_pem(), mode=0o600)
            atomic_write_bytes(path.with_name(path.stem + ".pub.pem"), key.public_pem())
        except OSError as exc:
            raise KeyFileError(f"cannot create the agent key {path}: {exc}") from exc
        return key

    def broker_settings(self) -> BrokerSettings:
        """How this agent connects (the password read now: from its file, the config or the environment)."""
        password = resolve_password(password=self.mqtt_password, password_file=self.mqtt_password_file)
        return BrokerSettings(self.mqtt_host, self.mqtt_port, tls=self.mqtt_tls, username=self.mqtt_username,
                              password=password, protocol=self.mqtt_protocol, keepalive=self.keepalive,
                              client_id=f"edgeloop-agent-{self.agent_id}")

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
            **_mqtt_table(doc.get("mqtt", {}), get, resolve),
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
            install_timeout_seconds=get("limits", "install_timeout_seconds", float, 60.0),
            transfer_idle_seconds=get("transfer", "idle_seconds", float, 5.0),
            serving_report_seconds=get("serving", "report_seconds", float, 10.0),
            outbox_max_messages=get("outbox", "max_messages", int, 1000),
            outbox_max_bytes=get("outbox", "max_bytes", int, 16 * 1024 * 1024),
            zeroconf=get("discovery", "zeroconf", bool, False),
            version_floor=get("security", "version_floor", bool, False),
            zeroconf_interfaces=[str(x) for x in get("discovery", "interfaces", list, [])],
            log_level=get(None, "log_level", str, "INFO"),
            drift=_drift_table(doc.get("drift", {}), get),
            capture=CaptureSettings.from_table(doc.get("capture", {})),
            ha_enabled=get("homeassistant", "enabled", bool, False),
            ha_discovery_prefix=_discovery_prefix(get("homeassistant", "discovery_prefix", str, "homeassistant")),
            agent_key=resolve(agent_key) if (agent_key := get(None, "agent_key", str, None)) else None,
            tags=_tags_table(doc.get("tags", {})),
            trusted_roots=[resolve(k) for k in get(None, "trusted_roots", list, [])],
            preflight=PreflightSettings.from_table(doc.get("preflight", {})),
            source=source,
        )
        if cfg.mqtt_protocol not in ("auto", "5", "3.1.1"):
            raise ConfigError(f'config mqtt.protocol must be "auto", "5" or "3.1.1", got {cfg.mqtt_protocol!r}')
        if cfg.keepalive < 5:
            raise ConfigError(f"config mqtt.keepalive must be at least 5 seconds, got {cfg.keepalive}")
        if not 0 < cfg.mqtt_port < 65536 or not 0 <= cfg.http_port < 65536:
            raise ConfigError("ports must be within 1..65535 (http may be 0 for a free port)")
        if cfg.max_queued_requests < 1:
            raise ConfigError(f"limits.max_queued_requests must be at least 1, got {cfg.max_queued_requests}")
        if cfg.min_free_bytes < 0:
            raise ConfigError(f"limits.min_free_bytes must be 0 or more, got {cfg.min_free_bytes}")
        if not cfg.serving_report_seconds > 0:
            raise ConfigError(f"serving.report_seconds must be above 0, got {cfg.serving_report_seconds}")
        if not cfg.install_timeout_seconds > 0:
            raise ConfigError(f"limits.install_timeout_seconds must be above 0, got {cfg.install_timeout_seconds}")
        for key, value in (("max_messages", cfg.outbox_max_messages), ("max_bytes", cfg.outbox_max_bytes)):
            if value < 1:
                raise ConfigError(f"outbox.{key} must be at least 1, got {value}")
        return cfg

    def to_toml(self) -> str:
        """The config as TOML (written with tomli-w; :meth:`load` reads it back equal)."""
        import tomli_w

        mqtt: dict[str, Any] = {"host": self.mqtt_host, "port": self.mqtt_port, "protocol": self.mqtt_protocol,
                                "keepalive": self.keepalive, "topic_root": self.topic_root}
        if self.mqtt_username:
            mqtt["username"] = self.mqtt_username
        if self.mqtt_password_file is not None:
            mqtt["password_file"] = str(self.mqtt_password_file)
        if self.mqtt_password:
            mqtt["password"] = self.mqtt_password
        if self.mqtt_tls is not None:
            tls = {name: str(getattr(self.mqtt_tls, name)) for name in TlsSettings.FILES
                   if getattr(self.mqtt_tls, name) is not None}
            mqtt["tls"] = {**tls, "check_hostname": self.mqtt_tls.check_hostname}
        doc = {
            "agent_id": self.agent_id,
            "state_dir": str(self.state_dir),
            "trusted_keys": [str(k) for k in self.trusted_keys],
            **({"trusted_roots": [str(k) for k in self.trusted_roots]} if self.trusted_roots else {}),
            "log_level": self.log_level,
            **({"agent_key": str(self.agent_key)} if self.agent_key is not None else {}),
            "mqtt": mqtt,
            "http": {"enabled": self.http_enabled, "host": self.http_host, "port": self.http_port,
                     "max_connections": self.http_max_connections},
            "limits": {"max_bundle_bytes": self.max_bundle_bytes, "max_request_bytes": self.max_request_bytes,
                       "max_rows": self.max_rows, "max_queued_requests": self.max_queued_requests,
                       "min_free_bytes": self.min_free_bytes,
                       "install_timeout_seconds": self.install_timeout_seconds},
            "transfer": {"idle_seconds": self.transfer_idle_seconds},
            "serving": {"report_seconds": self.serving_report_seconds},
            "outbox": {"max_messages": self.outbox_max_messages, "max_bytes": self.outbox_max_bytes},
            "discovery": {"zeroconf": self.zeroconf, "interfaces": list(self.zeroconf_interfaces)},
            "security": {"version_floor": self.version_floor},
            **({"drift": dict(self.drift)} if self.drift else {}),
            **({"capture": self.capture.to_table()} if self.capture != CaptureSettings() else {}),
            "homeassistant": {"enabled": self.ha_enabled, "discovery_prefix": self.ha_discovery_prefix},
            **({"tags": dict(self.tags)} if self.tags else {}),
            **({"preflight": self.preflight.to_table()} if self.preflight != PreflightSettings() else {}),
        }
        return tomli_w.dumps(doc)

    def drift_overrides(self) -> dict[str, Any]:
        """The ``[drift]`` settings as keyword arguments of ``WindowPolicy.of`` (rows, seconds, ...)."""
        return {_DRIFT_KEYS[k][0]: v for k, v in self.drift.items()}


_DRIFT_KEYS: dict[str, tuple[str, type]] = {"window_rows": ("rows", int), "window_seconds": ("seconds", float),
                                            "min_rows": ("min_rows", int), "consecutive": ("consecutive", int)}


def _tags_table(table: Any) -> dict[str, str]:
    """The ``[tags]`` table, checked (names and values a rollout target can name)."""
    try:
        return check_tags(table, "config [tags]")
    except MessageFormatError as exc:
        raise ConfigError(str(exc)) from None


def _discovery_prefix(prefix: str) -> str:
    """Home Assistant's discovery prefix: a topic of one or more levels, no wildcards, no empty level."""
    if not prefix or any(not level or set(level) & set("+#\x00") for level in prefix.split("/")):
        raise ConfigError(f"config homeassistant.discovery_prefix {prefix!r} is not a topic prefix: use "
                          "Home Assistant's own (default \"homeassistant\", set in its MQTT integration)")
    return prefix


def _drift_table(table: Any, get: Callable[..., Any]) -> dict[str, Any]:
    """The ``[drift]`` keys given (checked); those left out take the bundle's defaults."""
    if not isinstance(table, dict):
        raise ConfigError("[drift] must be a table")
    unknown = set(table) - set(_DRIFT_KEYS)
    if unknown:
        raise ConfigError(f"config [drift] has unknown keys: {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(_DRIFT_KEYS)})")
    out = {k: get("drift", k, typ, None) for k, (_, typ) in _DRIFT_KEYS.items() if k in table}
    for k, v in out.items():
        if v < (0 if k == "window_seconds" else 1):
            raise ConfigError(f"config drift.{k} must be {'0 or more' if k == 'window_seconds' else 'at least 1'}, "
                              f"got {v}")
    return out


def _mqtt_table(table: Any, get: Callable[..., Any], resolve: Callable[[str], Path]) -> dict[str, Any]:
    """The ``[mqtt]`` connection settings as AgentConfig fields (files checked, paths made absolute)."""
    if not isinstance(table, dict):
        raise ConfigError("[mqtt] must be a table")
    url = get("mqtt", "url", str, None)
    tls_doc = table.get("tls")
    if tls_doc is not None and not isinstance(tls_doc, dict):
        raise ConfigError("[mqtt.tls] must be a table (ca_file, cert_file, key_file, check_hostname)")
    tls: TlsSettings | None = None
    username = get("mqtt", "username", str, None)
    password = get("mqtt", "password", str, None)
    if url is not None:
        if "host" in table or "port" in table:
            raise ConfigError("config [mqtt] gives both url and host/port: keep one")
        scheme, url_user, url_password, host, port = parse_url(url)
        tls = TlsSettings() if scheme in ("mqtts", "ssl") else None
        username = username or url_user
        password = password if password is not None else url_password
    if tls_doc is not None:
        unknown = set(tls_doc) - {*TlsSettings.FILES, "check_hostname"}
        if unknown:
            raise ConfigError(f"config [mqtt.tls] has unknown keys: {', '.join(sorted(unknown))} "
                              "(known: ca_file, cert_file, key_file, check_hostname)")
        files = {}
        for name in TlsSettings.FILES:
            val = tls_doc.get(name)
            if val is not None and not isinstance(val, str):
                raise ConfigError(f"config mqtt.tls.{name} must be str, got {val!r}")
            files[name] = resolve(val) if val else None
        check = tls_doc.get("check_hostname", True)
        if not isinstance(check, bool):
            raise ConfigError(f"config mqtt.tls.check_hostname must be true or false, got {check!r}")
        tls = TlsSettings(**files, check_hostname=check).check(CONFIG_KEYS)
    if url is None:
        host = get("mqtt", "host", str, "127.0.0.1")
        port = get("mqtt", "port", int, 8883 if tls is not None else 1883)
    password_file = get("mqtt", "password_file", str, None)
    if password_file is not None and password is not None:
        raise ConfigError("config [mqtt] gives both password and password_file: keep password_file")
    pw_path = resolve(password_file) if password_file is not None else None
    if pw_path is not None and not pw_path.is_file():
        raise ConfigError(f"mqtt.password_file: {pw_path} does not exist or is not a file")
    return {"mqtt_host": host, "mqtt_port": port, "mqtt_username": username, "mqtt_password": password,
            "mqtt_password_file": pw_path, "mqtt_tls": tls, "mqtt_protocol": get("mqtt", "protocol", str, "auto")}
