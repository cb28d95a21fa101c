"""The hub runtime: the hub's always-on fleet connection (``edgeloop hub serve``, or
in-process in the GUI), one per hub home, with a persistent broker session and a
heartbeat that tells CLI reads how fresh the fleet view is."""

from edgeloop.hub.runtime.lock import LOCK_NAME, HomeLock, RuntimeLockedError
from edgeloop.hub.runtime.runtime import HubRuntime

__all__ = ["LOCK_NAME", "HomeLock", "HubRuntime", "RuntimeLockedError"]
