"""The air-gapped delivery file: signed commands and (for a deploy) the signed bundle, in one file.

``edgeloop bundle export`` writes it; ``edgeloop-agent install FILE`` hands its parts to the
same code that handles them over MQTT (docs/bundle-format.md, "Air-gapped delivery file")::

    magic        16 bytes   b"EDGELOOP-AIRGAP\\n"
    header_len    4 bytes   big-endian unsigned, at most MAX_HEADER
    header        JSON      UTF-8 object (below)
    bundle        bundle_size bytes (0 for a rollback file): the signed bundle (.elb) as built

The header is an index, not a trust anchor: nothing in it is signed. Every command is a signed
command envelope (exactly the bytes the hub would publish on the agent's ``cmd`` topic) and the
bundle is the signed bundle whose sha256 the deploy command names; the agent verifies both as if
they came from the broker. Header fields: ``format`` (1), ``kind`` (``deploy``/``rollback``),
``created_at``, ``key_id``, ``model``, ``version``, ``bundle_sha256`` (null without a bundle),
``bundle_size``, ``commands``: a list of ``{"agent_id", "command_id", "envelope"}`` (the envelope
as JSON text), one per agent the file is for. Nothing may follow the bundle.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

from edgeloop.agent.errors import MessageFormatError
from edgeloop.agent.wire.fields import MAX_JSON_MESSAGE

MAGIC = b"EDGELOOP-AIRGAP\n"
FORMAT = 1
KINDS = ("deploy", "rollback")
MAX_HEADER = 64 * 1024 * 1024  # bytes of JSON header at most (a command envelope is ~1 KiB)
_LEN = struct.Struct(">I")


class AirgapFormatError(MessageFormatError):
    """The file is not an air-gapped delivery file, or it is cut short or padded."""

    code = "bad_file"


@dataclass(frozen=True)
class FileCommand:
    agent_id: str
    command_id: str
    envelope: bytes  # the signed command envelope, as published on the cmd topic


@dataclass
class AirgapFile:
    kind: str
    created_at: float
    key_id: str
    model: str
    version: str
    commands: list[FileCommand] = field(default_factory=list)
    bundle: bytes = b""
    bundle_sha256: str | None = None

    def encode(self) -> bytes:
        header = {
            "format": FORMAT, "kind": self.kind, "created_at": self.created_at, "key_id": self.key_id,
            "model": self.model, "version": self.version, "bundle_sha256": self.bundle_sha256,
            "bundle_size": len(self.bundle),
            "commands": [{"agent_id": c.agent_id, "command_id": c.command_id, "envelope": c.envelope.decode()}
                         for c in self.commands],
        }
        raw = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
        return MAGIC + _LEN.pack(len(raw)) + raw + self.bundle

    def for_agent(self, agent_id: str) -> list[FileCommand]:
        return [c for c in self.commands if c.agent_id == agent_id]

    @classmethod
    def decode(cls, data: bytes, max_bundle_bytes: int | None = None) -> AirgapFile:
        """Parse a file (no signature is checked here: the agent verifies each part as it would over MQTT)."""
        if not data.startswith(MAGIC):
            raise AirgapFormatError("not an edgeloop air-gapped delivery file (it does not start with "
                                    f"{MAGIC!r}); write one with `edgeloop bundle export`")
        at = len(MAGIC)
        if len(data) < at + _LEN.size:
            raise AirgapFormatError("air-gapped file cut short in its header length: copy it again")
        (n,) = _LEN.unpack_from(data, at)
        at += _LEN.size
        if n > MAX_HEADER or len(data) < at + n:
            raise AirgapFormatError(f"air-gapped file header of {n} bytes is cut short or too large: copy it again")
        try:
            header = json.loads(data[at:at + n])
        except (ValueError, RecursionError) as exc:
            raise AirgapFormatError(f"air-gapped file header is not JSON ({exc}): copy it again") from exc
        at += n
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            got = header.get("format") if isinstance(header, dict) else "?"
            raise AirgapFormatError(f"air-gapped file format {got} is not {FORMAT}: export it again with the "
                                    "hub's edgeloop version matching this agent")
        kind = _get(header, "kind", str)
        if kind not in KINDS:
            raise AirgapFormatError(f"air-gapped file kind {kind!r} is not one of {', '.join(KINDS)}")
        size = _get(header, "bundle_size", int)
        if size < 0 or (max_bundle_bytes is not None and size > max_bundle_bytes):
            raise AirgapFormatError(f"air-gapped file says its bundle has {size} bytes (this agent takes at most "
                                    f"{max_bundle_bytes})")
        if len(data) - at != size:
            raise AirgapFormatError(f"air-gapped file holds {len(data) - at} bytes of bundle, its header says {size}: "
                                    "cut short or padded in transit; copy it again")
        commands = []
        for i, c in enumerate(_get(header, "commands", list)):
            if not isinstance(c, dict):
                raise AirgapFormatError(f"air-gapped file command {i} is not an object")
            env = _get(c, "envelope", str).encode()
            if len(env) > MAX_JSON_MESSAGE:
                raise AirgapFormatError(f"air-gapped file command {i} is {len(env)} bytes (at most {MAX_JSON_MESSAGE})")
            commands.append(FileCommand(_get(c, "agent_id", str), _get(c, "command_id", str), env))
        if not commands:
            raise AirgapFormatError("air-gapped file holds no command")
        sha = header.get("bundle_sha256")
        return cls(kind=kind, created_at=float(_get(header, "created_at", (int, float))),
                   key_id=_get(header, "key_id", str), model=_get(header, "model", str),
                   version=_get(header, "version", str), commands=commands,
                   bundle=data[at:], bundle_sha256=sha if isinstance(sha, str) else None)


def _get(d: dict, key: str, typ):
    value = d.get(key)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise AirgapFormatError(f"air-gapped file header: {key!r} is missing or of the wrong type")
    return value
