"""What every part of :class:`edgeloop.hub.services.Hub` stands on: the home folder, the
registry, the signing key, the acting user and the audit log."""

from __future__ import annotations

import getpass
import shutil
from pathlib import Path
from typing import Any, Self

from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.hub.home import Home, default_home
from edgeloop.hub.keys import export_public_pem, load_or_create_hub_key, private_key_path, public_key_path
from edgeloop.hub.registry import Registry


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
