"""Typed messages exchanged over MQTT, and their (de)serialization.

Every JSON message carries ``"schema": 1`` and a ``"type"``. Each class has an
explicit ``to_dict()`` and a strict ``from_dict()`` (``from_dict(x.to_dict()) == x``);
``decode`` picks the class by ``type`` and raises :class:`MessageFormatError` (or
:class:`UnsupportedSchemaError`) with a message naming the field at fault, so a
malformed message is answered, never half-understood. Bundle chunks are binary
(see :class:`Chunk`).

Inference requests are deliberately lenient about ``schema``/``type`` so that an
IoT device can send ``{"id": "1", "inputs": [[...]]}`` with plain ``mosquitto_pub``.
"""

from __future__ import annotations

import copy
import math
import re
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edgeloop.agent.errors import MessageFormatError, PayloadTooLargeError, UnsupportedSchemaError
from edgeloop.agent.wire.fields import (
    MAX_JSON_MESSAGE,
    dumps,
    is_version,
    list_of,
    load_json,
    obj,
    objects,
    opt,
    req,
)
from edgeloop.agent.wire.performance import PerformanceEstimate

SCHEMA = 1


def _check_header(d: dict, expected_type: str) -> None:
    schema = d.get("schema")
    if not is_version(schema, SCHEMA):
        raise UnsupportedSchemaError(
            f"{expected_type}: schema {schema!r} is not supported by this version (speaks schema {SCHEMA})"
        )
    if d.get("type") != expected_type:
        raise MessageFormatError(f"expected a {expected_type!r} message, got type {d.get('type')!r}")


@dataclass
class Message:
    """Base of the JSON messages that ``decode`` knows by their ``type``."""

    TYPE: ClassVar[str] = ""

    def _header(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "type": self.TYPE}

    def to_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict) -> Message:
        raise NotImplementedError

    def encode(self) -> bytes:
        return dumps(self.to_dict())


# --- agent state (retained birth certificate) -------------------------------
@dataclass
class ActiveModel:
    model: str
    version: str
    bundle_sha256: str

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "bundle_sha256": self.bundle_sha256}

    @classmethod
    def from_dict(cls, d: dict, where: str = "active") -> ActiveModel:
        obj(d, where)
        return cls(
            model=req(d, "model", str, where),
            version=req(d, "version", str, where),
            bundle_sha256=req(d, "bundle_sha256", str, where),
        )


@dataclass
class ProbationStatus:
    """A version on probation (the dead-man switch): reverted unless confirmed by ``deadline`` (wall clock)."""

    version: str
    deadline: float
    requests: int = 0  # real requests served by it on probation
    errors: int = 0  # of them, failed
    model: str = ""
    bundle_sha256: str = ""
    min_requests: int = 0
    require_confirm: bool = False
    confirmed: bool = False  # the hub's signed confirm came

    def to_dict(self) -> dict:
        return {"version": self.version, "deadline": self.deadline, "requests": self.requests, "errors": self.errors,
                "model": self.model, "bundle_sha256": self.bundle_sha256, "min_requests": self.min_requests,
                "require_confirm": self.require_confirm, "confirmed": self.confirmed}

    @classmethod
    def from_dict(cls, d: dict, where: str = "probation") -> ProbationStatus:
        obj(d, where)
        return cls(version=req(d, "version", str, where), deadline=req(d, "deadline", float, where),
                   requests=opt(d, "requests", int, where, 0), errors=opt(d, "errors", int, where, 0),
                   model=opt(d, "model", str, where, ""), bundle_sha256=opt(d, "bundle_sha256", str, where, ""),
                   min_requests=opt(d, "min_requests", int, where, 0),
                   require_confirm=opt(d, "require_confirm", bool, where, False),
                   confirmed=opt(d, "confirmed", bool, where, False))


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
    # ids of the hub keys this agent trusts: a hub lists an agent as its own when its key is here
    trusted_keys: list[str] = field(default_factory=list)
    # the agent's tags (its config's [tags]), for rollout targets such as site=plant-a,hw=pi5; optional
    tags: dict[str, str] = field(default_factory=dict)
    probation: ProbationStatus | None = None  # the active version is on probation (absent: it is not)
    # the active version of every model this agent serves, by name (several models per agent); ``active``
    # stays the one activated last. A state of an older agent has none: see served()
    models: list[ActiveModel] = field(default_factory=list)

    def served(self) -> list[ActiveModel]:
        """Every model this agent serves: ``models``, or (an older agent's state) its one ``active``."""
        return list(self.models) if self.models else ([self.active] if self.active is not None else [])

    def active_of(self, model: str) -> ActiveModel | None:
        """The active version of ``model`` on this agent, if it serves it."""
        return next((m for m in self.served() if m.model == model), None)

    def to_dict(self) -> dict:
        d = {
            **self._header(),
            "agent_id": self.agent_id, "status": self.status, "session": self.session,
            "agent_version": self.agent_version, "started_at": self.started_at, "host": self.host,
            "http_url": self.http_url, "active": self.active.to_dict() if self.active is not None else None,
            "installed": [m.to_dict() for m in self.installed], "trusted_keys": list(self.trusted_keys),
            "tags": dict(self.tags),  # optional when read: states of older agents have none
        }
        if self.probation is not None:  # left out when none: older hubs and agents read the same
            d["probation"] = self.probation.to_dict()
        d["models"] = [m.to_dict() for m in self.models]  # optional when read: older agents' states have none
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AgentState:
        _check_header(d, cls.TYPE)
        w = cls.TYPE
        active = opt(d, "active", dict, w)
        return cls(
            agent_id=req(d, "agent_id", str, w),
            status=req(d, "status", str, w),
            session=req(d, "session", int, w),
            agent_version=req(d, "agent_version", str, w),
            started_at=req(d, "started_at", float, w),
            host=opt(d, "host", str, w, ""),
            http_url=opt(d, "http_url", str, w),
            active=ActiveModel.from_dict(active, f"{w}.active") if active is not None else None,
            installed=[ActiveModel.from_dict(x, where) for x, where in objects(d, "installed", w, [])],
            trusted_keys=list_of(d, "trusted_keys", str, w, []),
            tags=check_tags(opt(d, "tags", dict, w, {}), f"{w}.tags"),
            probation=ProbationStatus.from_dict(p, f"{w}.probation") if (p := opt(d, "probation", dict, w)) else None,
            models=[ActiveModel.from_dict(x, where) for x, where in objects(d, "models", w, [])],
        )


# --- agent tags ---------------------------------------------------------------
MAX_TAGS = 32
_TAG_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]{0,63}")
_TAG_VALUE = re.compile(r"[A-Za-z0-9_.\-:/]{1,128}")


def check_tags(tags: Any, where: str = "tags") -> dict[str, str]:
    """``tags`` as a ``{name: value}`` dict of strings, or :class:`MessageFormatError` naming the bad
    one. Names: letters, digits, ``_ . - /`` (first a letter or digit, at most 64); values: letters,
    digits, ``_ . - : /`` (1-128) -- what a rollout target such as ``site=plant-a,hw=pi5`` can name."""
    if not isinstance(tags, dict):
        raise MessageFormatError(f"{where} must be a table of name = \"value\", got {type(tags).__name__}")
    if len(tags) > MAX_TAGS:
        raise MessageFormatError(f"{where} has {len(tags)} tags; at most {MAX_TAGS} are allowed")
    for k, v in tags.items():
        if not isinstance(k, str) or not _TAG_KEY.fullmatch(k):
            raise MessageFormatError(f"{where}: tag name {k!r} is not allowed: use letters, digits, '_', '.', "
                                     "'-' or '/' (starting with a letter or digit, at most 64)")
        if not isinstance(v, str) or not _TAG_VALUE.fullmatch(v):
            raise MessageFormatError(f"{where}: tag {k} = {v!r} is not allowed: a value is 1-128 letters, digits, "
                                     f"'_', '.', '-', ':' or '/' (in TOML: {k} = \"plant-a\")")
    return dict(tags)


# --- commands (payload of a signed envelope) --------------------------------
COMMAND_TYPES = ("deploy", "rollback", "confirm", "capture", "capture_upload", "capture_ack", "set_tags",
                 "promote_shadow", "stop_shadow")


@dataclass
class TransferSpec:
    transfer_id: str  # uuid4 hex, 32 chars
    bundle_sha256: str
    size: int
    chunk_size: int
    chunks: int
    # where the chunks come: a transfer topic shared by every agent of a fan-out deploy;
    # None = the agent's own bundle topic
    topic: str | None = None

    def to_dict(self) -> dict:
        d = {
            "transfer_id": self.transfer_id,
            "bundle_sha256": self.bundle_sha256,
            "size": self.size, "chunk_size": self.chunk_size, "chunks": self.chunks,
        }
        if self.topic is not None:
            d["topic"] = self.topic
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "transfer") -> TransferSpec:
        obj(d, where)
        spec = cls(
            transfer_id=req(d, "transfer_id", str, where),
            bundle_sha256=req(d, "bundle_sha256", str, where),
            size=req(d, "size", int, where),
            chunk_size=req(d, "chunk_size", int, where),
            chunks=req(d, "chunks", int, where),
            topic=opt(d, "topic", str, where),
        )
        if spec.topic is not None and (not spec.topic or any(c in spec.topic for c in "+#\0")):
            raise MessageFormatError(f"{where}: topic must be a plain topic name, got {spec.topic!r}")
        if not _is_transfer_id(spec.transfer_id):
            raise MessageFormatError(f"{where}: transfer_id must be 32 lowercase hex digits")
        if spec.size <= 0 or spec.chunk_size <= 0:
            raise MessageFormatError(f"{where}: size and chunk_size must be positive")
        if spec.chunks != math.ceil(spec.size / spec.chunk_size):
            raise MessageFormatError(
                f"{where}: chunks={spec.chunks} does not match size {spec.size} / chunk_size {spec.chunk_size}"
            )
        return spec


def _is_transfer_id(text: str) -> bool:
    """32 lowercase hex digits: chunk headers carry the 16 raw bytes, which decode as lowercase."""
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


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

    def to_dict(self) -> dict:
        return {
            **self._header(),
            "command": self.command, "command_id": self.command_id, "agent_id": self.agent_id,
            "counter": self.counter, "issued_at": self.issued_at, "expires_at": self.expires_at,
            "args": copy.deepcopy(self.args),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Command:
        _check_header(d, cls.TYPE)
        w = cls.TYPE
        return cls(
            command=req(d, "command", str, w),
            command_id=req(d, "command_id", str, w),
            agent_id=req(d, "agent_id", str, w),
            counter=req(d, "counter", int, w),
            issued_at=req(d, "issued_at", float, w),
            expires_at=req(d, "expires_at", float, w),
            args=opt(d, "args", dict, w, {}),
        )

    # typed views of args
    def transfer(self) -> TransferSpec:
        return TransferSpec.from_dict(req(self.args, "transfer", dict, "deploy.args"), "deploy.args.transfer")

    def target_bundle(self) -> str:
        return req(self.args, "bundle_sha256", str, f"{self.command}.args")


# --- events (agent -> hub) ---------------------------------------------------
EVENT_KINDS = (
    "command_result",  # a command was accepted or refused (code says why)
    "transfer_progress",  # chunks received so far
    "transfer_missing",  # agent asks for chunks again (after a gap or restart)
    "install_result",  # bundle verified + installed + smoke-tested + activated, or not
    "rollback_result",
    "reverted",  # the dead-man switch: a version on probation was not confirmed; the previous one serves again
    "confirmed",  # a version on probation passed it (confirmed by the hub, or healthy until its deadline)
    "preflight",  # what a deploy's pre-flight measured and picked, or why it refused (edgeloop.agent.wire.preflight)
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

    def to_dict(self) -> dict:
        return {
            **self._header(),
            "event": self.event, "agent_id": self.agent_id, "ok": self.ok, "at": self.at, "code": self.code,
            "message": self.message, "command_id": self.command_id, "details": copy.deepcopy(self.details),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Event:
        _check_header(d, cls.TYPE)
        w = cls.TYPE
        ev = req(d, "event", str, w)
        if ev not in EVENT_KINDS:
            raise MessageFormatError(f"{w}: unknown event kind {ev!r}; known: {', '.join(EVENT_KINDS)}")
        return cls(
            event=ev,
            agent_id=req(d, "agent_id", str, w),
            ok=req(d, "ok", bool, w),
            at=req(d, "at", float, w),
            code=opt(d, "code", str, w, "ok"),
            message=opt(d, "message", str, w, ""),
            command_id=opt(d, "command_id", str, w),
            details=opt(d, "details", dict, w, {}),
        )


# --- inference ----------------------------------------------------------------
@dataclass
class InferRequest:
    """``{"id": "...", "inputs": [[f1, f2, ...], ...], "model": optional, "reply_to": optional}``.

    ``inputs`` may also be one flat row ``[f1, f2, ...]`` or an object
    ``{"feature_name": value, ...}`` / a list of such objects (checked by the runtime).
    """

    TYPE: ClassVar[str] = "infer_request"
    id: str
    inputs: Any
    model: str | None = None
    reply_to: str | None = None

    def to_dict(self) -> dict:
        out = {"schema": SCHEMA, "type": self.TYPE, "id": self.id, "inputs": copy.deepcopy(self.inputs)}
        if self.model is not None:
            out["model"] = self.model
        if self.reply_to is not None:
            out["reply_to"] = self.reply_to
        return out

    @classmethod
    def from_dict(cls, d: dict, where: str = "inference request") -> InferRequest:
        """Lenient header: ``schema`` and ``type`` may be left out (a bare ``mosquitto_pub``)."""
        schema = d.get("schema", SCHEMA)
        if not is_version(schema, SCHEMA):
            raise UnsupportedSchemaError(f"{where}: schema {schema!r} is not supported (speaks schema {SCHEMA})")
        rid = d.get("id", "")
        if isinstance(rid, (int, float)) and not isinstance(rid, bool):
            rid = str(rid)
        if not isinstance(rid, str):
            raise MessageFormatError(f"{where}: field 'id' must be a string")
        if "inputs" not in d:
            raise MessageFormatError(f"{where}: missing field 'inputs' (a list of feature rows)")
        reply_to = opt(d, "reply_to", str, where)
        if reply_to is not None and (not reply_to or any(c in reply_to for c in "+#\0")):
            raise MessageFormatError(f"{where}: reply_to must be a topic name without wildcards")
        return cls(id=rid, inputs=d["inputs"], model=opt(d, "model", str, where), reply_to=reply_to)

    @classmethod
    def decode(cls, data: bytes, limit: int = MAX_JSON_MESSAGE) -> InferRequest:
        return cls.from_dict(load_json(data, "inference request", limit))

    def encode(self) -> bytes:
        return dumps(self.to_dict())


@dataclass
class InferResult(Message):
    TYPE: ClassVar[str] = "infer_result"
    id: str
    model: str
    version: str
    outputs: dict  # output name -> nested list
    latency_ms: float

    def to_dict(self) -> dict:
        return {
            **self._header(),
            "id": self.id, "model": self.model, "version": self.version, "outputs": copy.deepcopy(self.outputs),
            "latency_ms": self.latency_ms,
        }

    @classmethod
    def from_dict(cls, d: dict) -> InferResult:
        _check_header(d, cls.TYPE)
        w = cls.TYPE
        return cls(
            id=req(d, "id", str, w),
            model=req(d, "model", str, w),
            version=req(d, "version", str, w),
            outputs=req(d, "outputs", dict, w),
            latency_ms=req(d, "latency_ms", float, w),
        )


@dataclass
class InferError(Message):
    TYPE: ClassVar[str] = "infer_error"
    id: str
    code: str
    message: str

    def to_dict(self) -> dict:
        return {**self._header(), "id": self.id, "code": self.code, "message": self.message}

    @classmethod
    def from_dict(cls, d: dict) -> InferError:
        _check_header(d, cls.TYPE)
        w = cls.TYPE
        return cls(id=req(d, "id", str, w), code=req(d, "code", str, w), message=req(d, "message", str, w))


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
    p_value: float | None = None  # KS p-value (before the multiple-testing correction); absent from older agents
    # absent from older agents (None / 0): this window's own verdict, judged windows flagged in a row,
    # non-finite values (not in counts), values beyond the reference's min and max
    flagged: bool | None = None
    streak: int | None = None
    missing: int = 0
    out_of_range: int = 0

    def to_dict(self) -> dict:
        return {
            "name": self.name, "counts": list(self.counts), "psi": self.psi, "ks": self.ks, "mean": self.mean,
            "drifted": self.drifted, "p_value": self.p_value, "flagged": self.flagged, "streak": self.streak,
            "missing": self.missing, "out_of_range": self.out_of_range,
        }

    @classmethod
    def from_dict(cls, d: dict, where: str) -> FeatureDrift:
        obj(d, where)
        counts = list_of(d, "counts", int, where)
        if any(c < 0 for c in counts):
            raise MessageFormatError(f"{where}: counts must be non-negative integers")
        return cls(
            name=req(d, "name", str, where),
            counts=counts,
            psi=req(d, "psi", float, where),
            ks=req(d, "ks", float, where),
            mean=req(d, "mean", float, where),
            drifted=req(d, "drifted", bool, where),
            p_value=opt(d, "p_value", float, where),
            flagged=opt(d, "flagged", bool, where),
            streak=_non_negative(d, "streak", where),
            missing=_non_negative(d, "missing", where) or 0,
            out_of_range=_non_negative(d, "out_of_range", where) or 0,
        )


def _non_negative(d: dict, key: str, where: str) -> int | None:
    """An optional count (absent from older agents: None)."""
    value = opt(d, key, int, where)
    if value is not None and value < 0:
        raise MessageFormatError(f"{where}: {key} must be a non-negative integer, got {value}")
    return value


DRIFT_STATUSES = ("ok", "too_few_rows")  # judged, or closed with fewer than min_rows rows (counts only)
DRIFT_CLOSED_BY = ("rows", "time", "flush")


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
    alpha: float | None = None  # false-alarm rate per window shared by the features (Holm); absent from older agents
    # absent from older agents (defaults): judged or not, what closed the window, the agent's window policy,
    # and for regression the prediction histogram judged like a feature
    status: str = "ok"
    closed_by: str = "rows"
    min_rows: int | None = None
    consecutive: int | None = None
    output: FeatureDrift | None = None
    # calibrated classifiers: accuracy estimated without labels, realized where labels arrived (older: None)
    performance: PerformanceEstimate | None = None

    @property
    def drifted_features(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    def to_dict(self) -> dict:
        """The fields, plus ``drifted_features`` (derived, for readers; ``from_dict`` recomputes it)."""
        return {
            **self._header(),
            "agent_id": self.agent_id, "model": self.model, "version": self.version,
            "bundle_sha256": self.bundle_sha256,
            "window": self.window, "rows": self.rows, "started_at": self.started_at, "ended_at": self.ended_at,
            "psi_threshold": self.psi_threshold, "ks_threshold": self.ks_threshold,
            "features": [f.to_dict() for f in self.features],
            "output_counts": list(self.output_counts), "output_js": self.output_js, "alpha": self.alpha,
            "status": self.status, "closed_by": self.closed_by, "min_rows": self.min_rows,
            "consecutive": self.consecutive, "output": self.output.to_dict() if self.output is not None else None,
            "performance": self.performance.to_dict() if self.performance is not None else None,
            "drifted_features": self.drifted_features,
        }

    @classmethod
    def from_dict(cls, d: dict) -> DriftReport:
        _check_header(d, cls.TYPE)
        w = cls.TYPE
        return cls(
            agent_id=req(d, "agent_id", str, w),
            model=req(d, "model", str, w),
            version=req(d, "version", str, w),
            bundle_sha256=req(d, "bundle_sha256", str, w),
            window=req(d, "window", int, w),
            rows=req(d, "rows", int, w),
            started_at=req(d, "started_at", float, w),
            ended_at=req(d, "ended_at", float, w),
            psi_threshold=req(d, "psi_threshold", float, w),
            ks_threshold=req(d, "ks_threshold", float, w),
            features=[FeatureDrift.from_dict(f, where) for f, where in objects(d, "features", w)],
            output_counts=list_of(d, "output_counts", int, w, []),
            output_js=opt(d, "output_js", float, w),
            alpha=opt(d, "alpha", float, w),
            status=_one_of(d, "status", DRIFT_STATUSES, w),
            closed_by=_one_of(d, "closed_by", DRIFT_CLOSED_BY, w),
            min_rows=opt(d, "min_rows", int, w),
            consecutive=opt(d, "consecutive", int, w),
            output=FeatureDrift.from_dict(out, f"{w}.output") if (out := opt(d, "output", dict, w)) else None,
            performance=PerformanceEstimate.from_dict(pf, f"{w}.performance")
            if (pf := opt(d, "performance", dict, w)) else None,
        )


def _one_of(d: dict, key: str, allowed: tuple[str, ...], where: str) -> str:
    value = opt(d, key, str, where, allowed[0])
    if value not in allowed:
        raise MessageFormatError(f"{where}: {key} must be one of {', '.join(allowed)}, got {value!r}")
    return value


# --- generic decode ------------------------------------------------------------
_JSON_TYPES: dict[str, type[Message]] = {
    c.TYPE: c for c in (AgentState, Command, Event, InferResult, InferError, DriftReport)
}


def decode(data: bytes | str, expected: type[Message] | None = None) -> Message:
    """Decode any JSON message by its ``type``; with ``expected``, insist on that class."""
    d = load_json(data)
    typ = d.get("type")
    cls = _JSON_TYPES.get(typ) if isinstance(typ, str) else None
    if expected is not None and cls is not expected:
        raise MessageFormatError(f"expected a {expected.TYPE!r} message, got type {typ!r}")
    if cls is None:
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
    """One piece of a bundle: binary header (magic, version, transfer id, index, CRC-32) + data."""

    transfer_id: str  # 32 hex digits
    index: int
    data: bytes

    def encode(self) -> bytes:
        if not _is_transfer_id(self.transfer_id):
            raise MessageFormatError(f"bundle chunk: transfer_id {self.transfer_id!r} must be 32 lowercase hex digits")
        if not 0 <= self.index < 2**32:
            raise MessageFormatError(f"bundle chunk: index {self.index} is outside 0..2**32-1")
        if len(self.data) > MAX_CHUNK_SIZE:
            raise PayloadTooLargeError(f"bundle chunk of {len(self.data)} bytes exceeds {MAX_CHUNK_SIZE}")
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


__all__ = [
    "SCHEMA", "MAX_JSON_MESSAGE", "load_json", "dumps", "Message", "ActiveModel", "ProbationStatus", "AgentState",
    "check_tags", "MAX_TAGS", "COMMAND_TYPES", "TransferSpec", "Command", "EVENT_KINDS", "Event", "InferRequest",
    "InferResult",
    "InferError", "decode_infer_reply", "FeatureDrift", "DriftReport", "DRIFT_STATUSES", "DRIFT_CLOSED_BY",
    "decode", "CHUNK_MAGIC",
    "CHUNK_VERSION", "CHUNK_HEADER_SIZE", "MAX_CHUNK_SIZE", "Chunk", "new_id",
]
