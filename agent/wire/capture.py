"""Captured field data on the wire: the signed capture manifest, feedback labels, topics.

An agent with capture on (:mod:`edgeloop.agent.capture`) uploads a batch of captured rows as
one CSV file, in chunks, each on its own topic, after its manifest::

    {root}/agents/{id}/capture/{batch_id}/manifest   the CaptureManifest, signed by the agent (QoS 1)
    {root}/agents/{id}/capture/{batch_id}/{seq}      chunk seq = 0, 1, ...: raw bytes of the CSV (QoS 1)
    {root}/agents/{id}/feedback                      anyone -> agent: {"id": request id, "label": ...}

The manifest names the batch, the agent, the model and version that answered, the rows and
their time range, the CSV's size and sha256, the chunk size and the sha256 of every chunk:
the hub checks each chunk as it arrives and the whole file before it keeps anything (the same
integrity checks as a bundle transfer). ``CAPTURE_SCHEMA`` is the manifest's own version;
a reader refuses one it does not speak.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from edgeloop.agent.errors import MessageFormatError, UnsupportedSchemaError
from edgeloop.agent.wire.fields import is_version, list_of, load_json, obj, opt, req

CAPTURE_SCHEMA = 1
CAPTURE_MANIFEST_TYPE = "capture_manifest"
CAPTURE = "capture"
FEEDBACK = "feedback"
MANIFEST_LEAF = "manifest"
BATCH_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_CAPTURE_CHUNK = 256 * 1024
MAX_FEEDBACK_BYTES = 64 * 1024
# the columns after the model's feature names, in this order
PREDICTION_COLUMN = "prediction"
LABEL_COLUMN = "label"
REQUEST_ID_COLUMN = "request_id"
REQUEST_TIME_COLUMN = "request_time"
EXTRA_COLUMNS = (PREDICTION_COLUMN, LABEL_COLUMN, REQUEST_ID_COLUMN, REQUEST_TIME_COLUMN)


def capture_leaf(batch_id: str, seq: int | str) -> str:
    """The leaf under ``{root}/agents/{id}/`` of a batch's manifest (``seq="manifest"``) or chunk ``seq``."""
    return f"{CAPTURE}/{batch_id}/{seq}"


def capture_filter(root: str) -> str:
    """The hub's subscription to every agent's capture uploads (two levels: batch, seq)."""
    return f"{root}/agents/+/{CAPTURE}/+/+"


def parse_capture_leaf(leaf: str) -> tuple[str, int | None] | None:
    """``capture/<batch>/manifest`` -> ``(batch, None)``; ``capture/<batch>/3`` -> ``(batch, 3)``;
    None for any other leaf (or a malformed one)."""
    parts = leaf.split("/")
    if len(parts) != 3 or parts[0] != CAPTURE or not BATCH_ID_RE.match(parts[1]):
        return None
    if parts[2] == MANIFEST_LEAF:
        return parts[1], None
    if parts[2].isdigit() and len(parts[2]) <= 6:
        return parts[1], int(parts[2])
    return None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class CaptureManifest:
    """What a batch holds and how to check it (signed by the agent with its report key)."""

    batch_id: str  # 32 hex digits
    agent_id: str
    model: str
    version: str
    bundle_sha256: str
    task: str  # classification | regression
    feature_names: list[str]
    labels: list[str]  # class names of a classifier (the label and prediction columns hold them)
    rows: int
    labelled_rows: int
    seen_rows: int  # rows served while the batch was sampled (rows / seen_rows: the sampling rate)
    first_at: float  # request time of the oldest row
    last_at: float  # ... and of the newest
    created_at: float
    sha256: str  # of the whole CSV
    size: int
    chunk_size: int
    chunk_sha256: list[str] = field(default_factory=list)  # one per chunk, in order
    columns: list[str] = field(default_factory=list)  # the CSV header

    TYPE = CAPTURE_MANIFEST_TYPE

    @property
    def chunks(self) -> int:
        return len(self.chunk_sha256)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": CAPTURE_SCHEMA, "type": self.TYPE, "batch_id": self.batch_id, "agent_id": self.agent_id,
                "model": self.model, "version": self.version, "bundle_sha256": self.bundle_sha256,
                "task": self.task, "feature_names": list(self.feature_names), "labels": list(self.labels),
                "rows": self.rows, "labelled_rows": self.labelled_rows, "seen_rows": self.seen_rows,
                "first_at": self.first_at, "last_at": self.last_at, "created_at": self.created_at,
                "sha256": self.sha256, "size": self.size, "chunk_size": self.chunk_size,
                "chunk_sha256": list(self.chunk_sha256), "columns": list(self.columns)}

    @classmethod
    def from_dict(cls, d: Any) -> CaptureManifest:
        w = "capture manifest"
        obj(d, w)
        if not is_version(d.get("schema"), CAPTURE_SCHEMA):
            raise UnsupportedSchemaError(f"{w}: schema {d.get('schema')!r} is not supported (this edgeloop speaks "
                                         f"capture schema {CAPTURE_SCHEMA}); upgrade the hub or the agent")
        if d.get("type") != CAPTURE_MANIFEST_TYPE:
            raise MessageFormatError(f"expected a {CAPTURE_MANIFEST_TYPE!r} message, got type {d.get('type')!r}")
        m = cls(batch_id=req(d, "batch_id", str, w), agent_id=req(d, "agent_id", str, w),
                model=req(d, "model", str, w), version=req(d, "version", str, w),
                bundle_sha256=opt(d, "bundle_sha256", str, w, ""), task=req(d, "task", str, w),
                feature_names=list_of(d, "feature_names", str, w), labels=list_of(d, "labels", str, w, []),
                rows=req(d, "rows", int, w), labelled_rows=req(d, "labelled_rows", int, w),
                seen_rows=req(d, "seen_rows", int, w), first_at=req(d, "first_at", float, w),
                last_at=req(d, "last_at", float, w), created_at=req(d, "created_at", float, w),
                sha256=req(d, "sha256", str, w), size=req(d, "size", int, w),
                chunk_size=req(d, "chunk_size", int, w), chunk_sha256=list_of(d, "chunk_sha256", str, w),
                columns=list_of(d, "columns", str, w, []))
        m.check()
        return m

    def check(self) -> None:
        w = f"capture manifest {self.batch_id}"
        if not BATCH_ID_RE.match(self.batch_id):
            raise MessageFormatError(f"{w}: batch_id must be 32 lowercase hex digits")
        if self.task not in ("classification", "regression"):
            raise MessageFormatError(f"{w}: task must be classification or regression, got {self.task!r}")
        if not 0 <= self.labelled_rows <= self.rows <= max(self.seen_rows, self.rows) or self.rows < 1:
            raise MessageFormatError(f"{w}: rows {self.rows}, labelled_rows {self.labelled_rows} are inconsistent")
        if not 0 < self.chunk_size <= MAX_CAPTURE_CHUNK:
            raise MessageFormatError(f"{w}: chunk_size must be within 1..{MAX_CAPTURE_CHUNK}, got {self.chunk_size}")
        expected = max(1, -(-self.size // self.chunk_size))
        if self.size < 1 or len(self.chunk_sha256) != expected:
            raise MessageFormatError(f"{w}: {len(self.chunk_sha256)} chunk hashes for {self.size} bytes in chunks "
                                     f"of {self.chunk_size} (expected {expected})")
        for h in (self.sha256, *self.chunk_sha256):
            if not re.fullmatch(r"[0-9a-f]{64}", h):
                raise MessageFormatError(f"{w}: {h!r} is not a sha256 (64 lowercase hex digits)")
        if self.last_at < self.first_at:
            raise MessageFormatError(f"{w}: last_at is before first_at")


def split_chunks(data: bytes, chunk_size: int) -> list[bytes]:
    """``data`` in pieces of ``chunk_size`` bytes (the last one shorter)."""
    return [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]


@dataclass(frozen=True)
class Feedback:
    """A ground-truth label for an answered request: ``label`` a class name (or index) or a number,
    or a list of them, one per row of the request."""

    id: str
    label: Any

    @classmethod
    def decode(cls, payload: bytes | str) -> Feedback:
        d = load_json(payload, "feedback", MAX_FEEDBACK_BYTES)
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: Any) -> Feedback:
        obj(d, "feedback")
        rid = d.get("id")
        if not isinstance(rid, str) or not rid or len(rid) > 200:
            raise MessageFormatError('feedback needs "id": the id of the answered request (a string of 1-200 '
                                     'characters), e.g. {"id": "req-1", "label": "normal"}')
        if "label" not in d:
            raise MessageFormatError(f'feedback for {rid!r} has no "label": give the true class name or value')
        return cls(rid, d["label"])


__all__ = ["CAPTURE", "CAPTURE_MANIFEST_TYPE", "CAPTURE_SCHEMA", "CaptureManifest", "EXTRA_COLUMNS", "FEEDBACK",
           "Feedback", "LABEL_COLUMN", "MANIFEST_LEAF", "MAX_CAPTURE_CHUNK", "PREDICTION_COLUMN",
           "REQUEST_ID_COLUMN", "REQUEST_TIME_COLUMN", "capture_filter", "capture_leaf", "parse_capture_leaf",
           "sha256_hex", "split_chunks"]
