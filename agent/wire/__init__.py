"""The wire format, pure and shared: what travels between hub, agents and integrators.

No I/O here -- bytes in, typed values or a specific error out; clocks and data are
passed in -- so every module can be tested without a broker, a disk or a model.
Every serialized class has an explicit ``to_dict()`` and a strict ``from_dict()`` (or
one ``encode``/``decode`` codec), and malformed input raises
:class:`~edgeloop.agent.errors.MessageFormatError` or a more specific subclass:

==============  ================================================================
``topics``      MQTT topic names and agent-id rules
``fields``      strict field readers and JSON helpers behind every decoder
``messages``    typed message dataclasses and their codecs (schema-versioned JSON)
``manifest``    the bundle manifest: files, tensor contract, drift reference, smoke test
``envelope``    Ed25519 keys and DSSE-style signature envelopes (``Envelope`` codec)
``bundle``      the bundle container (tar) and its verification
``commands``    sealing and verifying signed commands (target, expiry, counter)
``tensors``     the ONNX tensor names every edgeloop model uses
==============  ================================================================

The hub imports these modules; nothing of the format is spelled twice.
"""

from edgeloop.agent.wire import bundle, commands, envelope, manifest, messages, tensors, topics

__all__ = ["bundle", "commands", "envelope", "manifest", "messages", "tensors", "topics"]
