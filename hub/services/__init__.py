"""``Hub``: the one way in for the CLI, the GUI and scripts."""

from edgeloop.hub.services.hub import Hub, default_actor

__all__ = ["Hub", "default_actor"]
