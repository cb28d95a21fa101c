"""edgeloop hub: the headless workstation core (data, training, registry, export,
bundles, fleet, drift). Imports the agent package for the wire format; never Qt."""

from edgeloop._version import __version__

__all__ = ["__version__"]
