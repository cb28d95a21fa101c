"""What every part of :class:`edgeloop.hub.services.Hub` stands on: the home folder, its
config file, the registry, the signing key, the acting user and the audit log.

The hub config is ``<home>/hub.toml`` (optional; every value has a default)::

    [fleet]
    broker = "mqtt://broker.local:1883"   # what `edgeloop hub serve` connects to
    topic_root = "edgeloop/v1"            # this fleet's topic root: the agents' [mqtt] topic_root
    offline_grace_s = 120                 # offline longer than this is audited (agent.offline)

    [runtime]
    heartbeat_s = 10    # how often the hub runtime records that it is listening
    batch_max = 500     # fleet messages per registry transaction at most
    batch_ms = 50       # milliseconds per registry transaction at most

Other sections are left to the parts that read them.
"""

from __future__ import annotations

import getpass
import math
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from edgeloop.agent.errors import ConfigError
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.hub.home import Home, default_home
from edgeloop.hub.keys import export_public_pem, load_or_create_hub_key, private_key_path, public_key_path
from edgeloop.hub.registry import OFFLINE_GRACE_S, Registry

HUB_CONFIG_NAME = "hub.toml"
_KEYS: dict[str, dict[str, type]] = {
    "fleet": {"broker": str, "topic_root": str, "offline_grace_s": float},
    "runtime": {"heartbeat_s": float, "batch_max": int, "batch_ms": float},
}


@dataclass(frozen=True)
class HubConfig:
    """The hub's settings from ``<home>/hub.toml`` (see the module docstring)."""

    broker: str | None = None
    topic_root: str = topics.ROOT
    offline_grace_s: float = OFFLINE_GRACE_S
    heartbeat_s: float = 10.0
    batch_max: int = 500
    batch_ms: float = 50.0

    @classmethod
    def load(cls, path: Path) -> HubConfig:
        """Read ``path``; a missing file gives the defaults. Raises ConfigError naming the key at fault."""
        try:
            doc = tomllib.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read the hub config {path}: {exc}; fix or remove the file") from exc
        values: dict[str, Any] = {}
        for section, keys in _KEYS.items():
            table = doc.get(section, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: [{section}] must be a table")
            for key, value in table.items():
                if key not in keys:
                    raise ConfigError(f"{path}: unknown key {key!r} in [{section}]; known: {', '.join(keys)}")
                values[key] = _checked(path, section, key, value, keys[key])
        config = cls(**values)
        topics.check_root(config.topic_root)
        return config


def _checked(path: Path, section: str, key: str, value: Any, kind: type) -> Any:
    """``value`` of [section] ``key`` if it is a ``kind`` (numbers: finite, above zero)."""
    if kind is str:
        if isinstance(value, str) and value.strip():
            return value.strip()
        raise ConfigError(f"{path}: [{section}] {key} must be a non-empty string, got {value!r}")
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or (kind is int and not isinstance(value, int)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{path}: [{section}] {key} must be a positive {'whole ' if kind is int else ''}number, "
                          f"got {value!r}")
    return kind(value)


def default_actor() -> str:
    """The login name (recorded in the audit log), or ``"operator"`` where there is none."""
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers)
        return "operator"


class HubCore:
    """Opens the registry under the home folder; loads (or creates) the hub key on first use."""

    def __init__(self, home: Path | str | Home | None = None, *, actor: str | None = None) -> None:
        if isinstance(home, Home):
            self.home = home
        else:
            self.home = Home(Path(home) if home is not None else default_home())
        self.home.ensure()
        self.registry = Registry(self.home.registry_path)
        self.actor = actor or default_actor()
        self._key: SigningKey | None = None
        self._config: HubConfig | None = None

    def close(self) -> None:
        self.registry.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def reset(self) -> None:
        """Close the registry and delete everything under the home (a demo or test starting over)."""
        self.close()
        shutil.rmtree(self.home.root, ignore_errors=True)

    # --- config -----------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.home.root / HUB_CONFIG_NAME

    @property
    def config(self) -> HubConfig:
        """The hub config (``<home>/hub.toml``, read on first use; defaults without the file)."""
        if self._config is None:
            self._config = HubConfig.load(self.config_path)
        return self._config

    def use_config(self, config: HubConfig) -> None:
        """Use ``config`` instead of ``<home>/hub.toml`` in this process (command line overrides)."""
        topics.check_root(config.topic_root)
        self._config = config

    # --- keys -------------------------------------------------------------------------
    @property
    def key(self) -> SigningKey:
        if self._key is None:
            self._key = load_or_create_hub_key(self.home)
        return self._key

    @property
    def public_key_path(self) -> Path:
        export_public_pem(self.home)
        return public_key_path(self.home)

    def key_info(self) -> dict:
        """``{"key_id", "private", "public"}``: the hub key's id and its two files (created on first use)."""
        return {"key_id": self.key.keyid, "private": str(private_key_path(self.home)),
                "public": str(self.public_key_path)}

    # --- audit log ----------------------------------------------------------------------
    def audit(self, action: str, target: str, **detail: Any) -> dict:
        """Record that :attr:`actor` did ``action`` to ``target``; returns the audit row."""
        return self.registry.audit(self.actor, action, target, **detail)

    def list_audit(self, limit: int = 50, *, target: str | None = None, action: str | None = None) -> list[dict]:
        """Audit rows, newest first; optionally only those about ``target`` or of one ``action``."""
        return self.registry.list_audit(limit=limit, target=target, action=action)
