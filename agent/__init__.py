"""edgeloop agent: the light, headless side that runs on edge devices.

This package owns the wire format (topics, messages, bundle manifest, signature
envelope) that the hub imports. It never imports torch, Qt, hub or app.
"""

__version__ = "0.1.0"
