"""edgeloop agent: the light, headless side that runs on edge devices.

This package owns the wire format (:mod:`edgeloop.agent.wire`: topics, messages,
bundle manifest, signature envelope, signed commands) that the hub imports. It
never imports torch, Qt, the hub or the app.
"""

from edgeloop._version import __version__

__all__ = ["__version__"]
