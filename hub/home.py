"""The hub's home directory: where the registry, keys, bundles and models live.

Layout (all under one root so that a demo, a test or a second workstation can
use its own by pointing ``EDGELOOP_HOME`` somewhere else)::

    <root>/registry.sqlite   the SQLite registry (edgeloop.hub.registry)
    <root>/keys/             the hub's Ed25519 signing key (0700; edgeloop.hub.keys)
    <root>/bundles/          signed bundles, named by sha256
    <root>/models/           exported ONNX models
    <root>/datasets/         imported datasets, named by sha256
    <root>/agents/           per-agent scratch (downloaded logs, ...)
    <root>/runs/             training-run artefacts (checkpoints, curves)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

HOME_ENV = "EDGELOOP_HOME"
APP_NAME = "edgeloop"


def default_home() -> Path:
    """``$EDGELOOP_HOME`` if set (``~`` expanded), else the platform's user data dir."""
    env = os.environ.get(HOME_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir(APP_NAME))


@dataclass(frozen=True)
class Home:
    """Paths inside one hub home directory; :meth:`ensure` creates them."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser())

    @classmethod
    def default(cls) -> Home:
        return cls(default_home())

    @property
    def registry_path(self) -> Path:
        return self.root / "registry.sqlite"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def bundles_dir(self) -> Path:
        return self.root / "bundles"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def agents_dir(self) -> Path:
        return self.root / "agents"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def ensure(self) -> Home:
        """Create the root and every sub-directory (keys/ private to the user)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for d in (self.bundles_dir, self.models_dir, self.datasets_dir, self.agents_dir, self.runs_dir):
            d.mkdir(exist_ok=True)
        self.keys_dir.mkdir(mode=0o700, exist_ok=True)
        if os.name == "posix":
            os.chmod(self.keys_dir, 0o700)
        return self
