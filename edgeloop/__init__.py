"""edgeloop: train, sign, ship, serve and watch small ML models on a fleet of edge devices.

The public Python API (see docs/api.md). Names load on first use, so an agent-only
install (``pip install 'edgeloop[agent]'``, no torch, no Qt) can import this package
and the agent's names without the hub's dependencies::

    from edgeloop import Hub                 # the workstation: data, training, registry, fleet
    from edgeloop import Agent, AgentConfig  # the device side
    from edgeloop import wire                # topics, message, manifest and command codecs
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop._version import __version__

# A source checkout keeps agent/, hub/ and app/ beside this folder; pyproject.toml maps them into
# the package when installing. When this folder itself is imported from a checkout -- Python run
# from the repository root finds it before the installed package -- look for them there too.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "agent" / "__init__.py").is_file():
    __path__.append(str(_checkout))

# public name -> (module, attribute or None for the module itself)
_API: dict[str, tuple[str, str | None]] = {
    "Hub": ("edgeloop.hub.services", "Hub"),
    "TrainParams": ("edgeloop.hub.training", "TrainParams"),
    "CancelToken": ("edgeloop.hub.progress", "CancelToken"),
    "ProgressEvent": ("edgeloop.hub.progress", "ProgressEvent"),
    "EdgeloopError": ("edgeloop.agent.errors", "EdgeloopError"),
    "Agent": ("edgeloop.agent.service", "Agent"),
    "AgentConfig": ("edgeloop.agent.config", "AgentConfig"),
    "wire": ("edgeloop.agent.wire", None),
}

__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from edgeloop.agent import wire as wire
    from edgeloop.agent.config import AgentConfig as AgentConfig
    from edgeloop.agent.errors import EdgeloopError as EdgeloopError
    from edgeloop.agent.service import Agent as Agent
    from edgeloop.hub.progress import CancelToken as CancelToken
    from edgeloop.hub.progress import ProgressEvent as ProgressEvent
    from edgeloop.hub.services import Hub as Hub
    from edgeloop.hub.training import TrainParams as TrainParams


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'edgeloop' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
