"""The wire format, pure and shared: what travels between hub, agents and integrators.

No I/O here -- bytes in, typed values or a specific error out -- so every module can
be tested without a broker, a disk or a model:

==============  ================================================================
``topics``      MQTT topic names and agent-id rules
``messages``    typed message dataclasses and their codecs (schema-versioned JSON)
``manifest``    the bundle manifest: files, tensor contract, drift reference, smoke test
``envelope``    Ed25519 keys and DSSE-style signature envelopes
``bundle``      the bundle container (tar) and its verification
``commands``    sealing and verifying signed commands (target, expiry, counter)
``tensors``     the ONNX tensor names every edgeloop model uses
==============  ================================================================

The hub imports these modules; nothing of the format is spelled twice.
"""
