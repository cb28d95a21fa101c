"""edgeloop hub: the headless workstation core (data, training, registry, export,
bundles, fleet, rollouts, drift). Imports agent/ for the wire format; never Qt."""

__version__ = "0.1.0"
