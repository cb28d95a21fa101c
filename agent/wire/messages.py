"""Typed messages exchanged over MQTT, and their (de)serialization.

Every JSON message carries ``"schema": 1`` and a ``"type"``. ``decode`` is strict:
it raises :class:`MessageFormatError` (or :class:`UnsupportedSchemaError`) with a
message naming the field at fault, so a malformed message is answered, never
half-understood. Bundle chunks are binary (see :class:`Chunk`).

Inference requests are deliberately lenient about ``schema``/``type`` so that an
IoT device can send ``{"id": "1", "inputs": [[...]]}`` with plain ``mosquitto_pub``.
"""

from __future__ import annotations

import json
import math
import struct
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from edgeloop.agent.errors import MessageFormatError, PayloadTooLargeError, UnsupportedSchemaError

SCHEMA = 1
MAX_JSON_MESSAGE = 4 * 1024 * 1024  # bytes; larger JSON messages are refused


# --- field helpers ----------------------------------------------------------
def _req(d: dict, key: str, typ: type | tuple, where: str) -> Any:
    if key not in d:
        raise MessageFormatError(f"{where}: missing field {key!r}")
    val = d[key]
    if typ is float and isinstance(val, int) and not isinstance(val, bool):
        val = float(val)
    if not isinstance(val, typ) or (isinstance(val, bool) and typ in (int, float)):
        tname = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise MessageFormatError(f"{where}: field {key!r} must be {tname}, got {type(val).__name__}")
    return val


def _opt(d: dict, key: str, typ: type | tuple, where: str, default: Any = None) -> Any:
    if d.get(key) is None:
        return default
    return _req(d, key, typ, where)


def load_json(data: bytes | str, what: str = "message", limit: int = MAX_JSON_MESSAGE) -> dict:
    if len(data) > limit:
        raise PayloadTooLargeError(f"{what} is {len(data)} bytes; the limit is {limit}")
    try:
        obj = json.loads(data)
    except UnicodeDecodeError as exc:
        raise MessageFormatError(f"{what} is not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise MessageFormatError(f"{what} is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    if not isinstance(obj, dict):
        raise MessageFormatError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _check_envelope(d: dict, expected_type: str) -> None:
    schema = d.get("schema")
    if schema != SCHEMA:
        raise UnsupportedSchemaError(
            f"{expected_type}: schema {schema!r} is not supported by this version (speaks schema {SCHEMA})"
        )
    if d.get("type") != expected_type:
        raise MessageFormatError(f"expected a {expected_type!r} message, got type {d.get('type')!r}")


def dumps(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


@dataclass
class Message:
    TYPE: ClassVar[str] = ""

    def to_dict(self) -> dict:
        out = {"schema": SCHEMA, "type": self.TYPE}
        out.update(asdict(self))
        return out

    def encode(self) -> bytes:
        return dumps(self.to_dict())


# --- agent state (retained birth certificate) -------------------------------
@dataclass
class ActiveModel:
    model: str
    version: str
    bundle_sha256: str

    @classmethod
    def from_dict(cls, d: dict, where: str = "active") -> ActiveModel:
        return cls(
            model=_req(d, "model", str, where),
            version=_req(d, "version", str, where),
            bundle_sha256=_req(d, "bundle_sha256", str, where),
        )


@dataclass
class AgentState(Message):
    TYPE: ClassVar[str] = "agent_state"
    agent_id: str
    status: str  # "online" | "offline"
    session: int  # increments on every connect (like Sparkplug's bdSeq)
    agent_version: str
    started_at: float
    host: str = ""
    http_url: str | None = None
    active: ActiveModel | None = None
    installed: list[ActiveModel] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> AgentState:
        _check_envelope(d, cls.TYPE)
        w = cls.TYPE
        active = d.get("active")
        if active is not None and not isinstance(active, dict):
            raise MessageFormatError(f"{w}: field 'active' must be an object or null")
        installed = _opt(d, "installed", list, w, [])
        return cls(
            agent_id=_req(d, "agent_id", str, w),
            status=_req(d, "status", str, w),
            session=_req(d, "session", int, w),
            agent_version=_req(d, "agent_version", str, w),
            started_at=_req(d, "started_at", float, w),
            host=_opt(d, "host", str, w, ""),
            http_url=_opt(d, "http_url", str, w),
            active=ActiveModel.from_dict(active) if active else None,
            installed=[ActiveModel.from_dict(x, f"{w}.installed") for x in installed],
        )


# --- commands (payload of a signed envelope) --------------------------------
COMMAND_TYPES = ("deploy", "rollback")


@dataclass
class TransferSpec:
    transfer_id: str  # uuid4 hex, 32 chars
    bundle_sha256: str
    size: int
    chunk_size: int
    chunks: int

    @classmethod
    def from_dict(cls, d: dict, where: str = "transfer") -> TransferSpec:
        spec = cls(
            transfer_id=_req(d, "transfer_id", str, where),
            bundle_sha256=_req(d, "bundle_sha256", str, where),
            size=_req(d, "size", int, where),
            chunk_size=_req(d, "chunk_size", int, where),
            chunks=_req(d, "chunks", int, where),
        )
        if len(spec.transfer_id) != 32:
            raise MessageFormatError(f"{where}: transfer_id must be 32 hex digits")
        try:
            bytes.fromhex(spec.transfer_id)
        except ValueError:
            raise MessageFormatError(f"{where}: transfer_id must be 32 hex digits") from None
        if spec.size <= 0 or spec.chunk_size <= 0:
            raise MessageFormatError(f"{where}: size and chunk_size must be positive")
        if spec.chunks != math.ceil(spec.size / spec.chunk_size):
            raise MessageFormatError(
                f"{where}: chunks={spec.chunks} does not match size {spec.size} / chunk_size {spec.chunk_size}"
            )
        return spec


@dataclass
class Command(Message):
    """What the hub signs. ``counter`` strictly increases per signing key."""

    TYPE: ClassVar[str] = "command"
    command: str  # one of COMMAND_TYPES
    command_id: str
    agent_id: str
    counter: int
    issued_at: float
    expires_at: float
    args: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> Command:
        _check_envelope(d, cls.TYPE)
        w = cls.TYPE
        return cls(
            command=_req(d, "command", str, w),
            command_id=_req(d, "command_id", str, w),
            agent_id=_req(d, "agent_id", str, w),
            counter=_req(d, "counter", int, w),
            issued_at=_req(d, "issued_at", float, w),
            expires_at=_req(d, "expires_at", float, w),
            args=_opt(d, "args", dict, w, {}),
        )

    # typed views of args
    def transfer(self) -> TransferSpec:
        return TransferSpec.from_dict(_req(self.args, "transfer", dict, "deploy.args"), "deploy.args.transfer")

    def target_bundle(self) -> str:
        return _req(self.args, "bundle_sha256", str, f"{self.command}.args")


# --- events (agent -> hub) ---------------------------------------------------
EVENT_KINDS = (
    "command_result",  # a command was accepted or refused (code says why)
    "transfer_progress",  # chunks received so far
    "transfer_missing",  # agent asks for chunks again (after a gap or restart)
    "install_result",  # bundle verified + installed + smoke-tested + activated, or not
    "rollback_result",
    "error",  # anything else worth telling the hub
)


@dataclass
class Event(Message):
    TYPE: ClassVar[str] = "event"
    event: str
    agent_id: str
    ok: bool
    at: float
    code: str = "ok"
    message: str = ""
    command_id: str | None = None
    details: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> Event:
        _check_envelope(d, cls.TYPE)
        w = cls.TYPE
        ev = _req(d, "event", str, w)
        if ev not in EVENT_KINDS:
            raise MessageFormatError(f"{w}: unknown event kind {ev!r}")
        return cls(
            event=ev,
            agent_id=_req(d, "agent_id", str, w),
            ok=_req(d, "ok", bool, w),
            at=_req(d, "at", float, w),
            code=_opt(d, "code", str, w, "ok"),
            message=_opt(d, "message", str, w, ""),
            command_id=_opt(d, "command_id", str, w),
            details=_opt(d, "details", dict, w, {}),
        )


# --- inference ----------------------------------------------------------------
@dataclass
class InferRequest:
    """``{"id": "...", "inputs": [[f1, f2, ...], ...], "model": optional, "reply_to": optional}``.

    ``inputs`` may also be one flat row ``[f1, f2, ...]`` or an object
    ``{"feature_name": value, ...}`` / a list of such objects.
    """

    id: str
    inputs: Any
    model: str | None = None
    reply_to: str | None = None

    @classmethod
    def decode(cls, data: bytes, limit: int = MAX_JSON_MESSAGE) -> InferRequest:
        d = load_json(data, "inference request", limit)
        schema = d.get("schema", SCHEMA)
        if schema != SCHEMA:
            raise UnsupportedSchemaError(f"inference request: schema {schema!r} is not supported")
        w = "inference request"
        rid = d.get("id", "")
        if isinstance(rid, (int, float)) and not isinstance(rid, bool):
            rid = str(rid)
        if not isinstance(rid, str):
            raise MessageFormatError(f"{w}: field 'id' must be a string")
        if "inputs" not in d:
            raise MessageFormatError(f"{w}: missing field 'inputs' (a list of feature rows)")
        reply_to = _opt(d, "reply_to", str, w)
        if reply_to is not None and (not reply_to or any(c in reply_to for c in "+#\0")):
            raise MessageFormatError(f"{w}: reply_to must be a topic name without wildcards")
        return cls(id=rid, inputs=d["inputs"], model=_opt(d, "model", str, w), reply_to=reply_to)

    def encode(self) -> bytes:
        out = {"schema": SCHEMA, "type": "infer_request", "id": self.id, "inputs": self.inputs}
        if self.model is not None:
            out["model"] = self.model
        if self.reply_to is not None:
            out["reply_to"] = self.reply_to
        return dumps(out)


@dataclass
class InferResult(Message):
    TYPE: ClassVar[str] = "infer_result"
    id: str
    model: str
    version: str
    outputs: dict  # output name -> nested list
    latency_ms: float

    @classmethod
    def from_dict(cls, d: dict) -> InferResult:
        _check_envelope(d, cls.TYPE)
        w = cls.TYPE
        return cls(
            id=_req(d, "id", str, w),
            model=_req(d, "model", str, w),
            version=_req(d, "version", str, w),
            outputs=_req(d, "outputs", dict, w),
            latency_ms=_req(d, "latency_ms", float, w),
        )


@dataclass
class InferError(Message):
    TYPE: ClassVar[str] = "infer_error"
    id: str
    code: str
    message: str

    @classmethod
    def from_dict(cls, d: dict) -> InferError:
        _check_envelope(d, cls.TYPE)
        w = cls.TYPE
        return cls(id=_req(d, "id", str, w), code=_req(d, "code", str, w), message=_req(d, "message", str, w))


def decode_infer_reply(data: bytes) -> InferResult | InferError:
    d = load_json(data, "inference reply")
    if d.get("type") == InferError.TYPE:
        return InferError.from_dict(d)
    return InferResult.from_dict(d)


# --- drift ---------------------------------------------------------------------
@dataclass
class FeatureDrift:
    name: str
    counts: list[int]  # window counts over the reference bins (len(edges) + 1)
    psi: float
    ks: float
    mean: float
    drifted: bool

    @classmethod
    def from_dict(cls, d: dict, where: str) -> FeatureDrift:
        counts = _req(d, "counts", list, where)
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise MessageFormatError(f"{where}: counts must be non-negative integers")
        return cls(
            name=_req(d, "name", str, where),
            counts=counts,
            psi=_req(d, "psi", float, where),
            ks=_req(d, "ks", float, where),
            mean=_req(d, "mean", float, where),
            drifted=_req(d, "drifted", bool, where),
        )


@dataclass
class DriftReport(Message):
    TYPE: ClassVar[str] = "drift_report"
    agent_id: str
    model: str
    version: str
    bundle_sha256: str
    window: int  # window sequence number since the model was activated
    rows: int
    started_at: float
    ended_at: float
    psi_threshold: float
    ks_threshold: float
    features: list[FeatureDrift]
    output_counts: list[int] = field(default_factory=list)  # predicted class counts
    output_js: float | None = None  # Jensen-Shannon distance to the reference class shares

    @property
    def drifted_features(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["drifted_features"] = self.drifted_features
        return out

    @classmethod
    def from_dict(cls, d: dict) -> DriftReport:
        _check_envelope(d, cls.TYPE)
        w = cls.TYPE
        feats = _req(d, "features", list, w)
        return cls(
            agent_id=_req(d, "agent_id", str, w),
            model=_req(d, "model", str, w),
            version=_req(d, "version", str, w),
            bundle_sha256=_req(d, "bundle_sha256", str, w),
            window=_req(d, "window", int, w),
            rows=_req(d, "rows", int, w),
            started_at=_req(d, "started_at", float, w),
            ended_at=_req(d, "ended_at", float, w),
            psi_threshold=_req(d, "psi_threshold", float, w),
            ks_threshold=_req(d, "ks_threshold", float, w),
            features=[FeatureDrift.from_dict(f, f"{w}.features[{i}]") for i, f in enumerate(feats)],
            output_counts=_opt(d, "output_counts", list, w, []),
            output_js=_opt(d, "output_js", float, w),
        )


# --- generic decode ------------------------------------------------------------
_JSON_TYPES: dict[str, type] = {
    c.TYPE: c for c in (AgentState, Command, Event, InferResult, InferError, DriftReport)
}


def decode(data: bytes | str, expected: type | None = None) -> Message:
    """Decode any JSON message by its ``type``; with ``expected``, insist on that class."""
    d = load_json(data)
    typ = d.get("type")
    cls = _JSON_TYPES.get(typ) if isinstance(typ, str) else None
    if expected is not None:
        if cls is not expected:
            raise MessageFormatError(f"expected a {expected.TYPE!r} message, got type {typ!r}")
    elif cls is None:
        raise MessageFormatError(f"unknown message type {typ!r}; known: {', '.join(sorted(_JSON_TYPES))}")
    return cls.from_dict(d)


# --- binary bundle chunks -------------------------------------------------------
CHUNK_MAGIC = b"ELCK"
CHUNK_VERSION = 1
_CHUNK_HEADER = struct.Struct(">4sB16sII")  # magic, version, transfer id, index, crc32
CHUNK_HEADER_SIZE = _CHUNK_HEADER.size
MAX_CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Chunk:
    transfer_id: str  # 32 hex digits
    index: int
    data: bytes

    def encode(self) -> bytes:
        return _CHUNK_HEADER.pack(
            CHUNK_MAGIC, CHUNK_VERSION, bytes.fromhex(self.transfer_id), self.index, zlib.crc32(self.data)
        ) + self.data

    @classmethod
    def decode(cls, payload: bytes) -> Chunk:
        if len(payload) < CHUNK_HEADER_SIZE:
            raise MessageFormatError(f"bundle chunk is {len(payload)} bytes, shorter than its header")
        if len(payload) > CHUNK_HEADER_SIZE + MAX_CHUNK_SIZE:
            raise PayloadTooLargeError(f"bundle chunk of {len(payload)} bytes exceeds {MAX_CHUNK_SIZE}")
        magic, version, tid, index, crc = _CHUNK_HEADER.unpack_from(payload)
        if magic != CHUNK_MAGIC:
            raise MessageFormatError("bundle chunk has a bad magic number (not an edgeloop chunk)")
        if version != CHUNK_VERSION:
            raise UnsupportedSchemaError(f"bundle chunk version {version} is not supported")
        data = bytes(payload[CHUNK_HEADER_SIZE:])
        if zlib.crc32(data) != crc:
            raise MessageFormatError(f"bundle chunk {index} failed its CRC check (corrupted in transit)")
        return cls(transfer_id=tid.hex(), index=index, data=data)


def new_id() -> str:
    return uuid.uuid4().hex
