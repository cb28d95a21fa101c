"""Receiving a bundle in chunks: a ``.part`` file plus a persisted bitmap.

Chunks may arrive in any order, twice, or not at all. Each is written at its
offset; the bitmap of received chunks is saved (after an fsync of the data) every
few chunks, so after a restart or a reconnect the agent asks only for what it
lacks. The whole-file sha256 named in the signed deploy command is checked before
anything else looks at the bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from edgeloop.agent.errors import HashMismatchError, MessageFormatError, TransferError
from edgeloop.agent.fsutil import atomic_write_json
from edgeloop.agent.wire.messages import Chunk, TransferSpec

log = logging.getLogger(__name__)
BITMAP_SAVE_EVERY = 16


class Transfer:
    def __init__(self, folder: Path, spec: TransferSpec, command_id: str, meta: dict | None = None) -> None:
        self.spec = spec
        self.command_id = command_id
        self.meta = dict(meta or {})
        self.part_path = Path(folder) / f"{spec.transfer_id}.part"
        self.info_path = Path(folder) / f"{spec.transfer_id}.json"
        self.received = bytearray(spec.chunks)  # 0/1 per chunk
        self.last_activity = time.monotonic()
        self._unsaved = 0
        self._fd: int | None = None

    # --- lifecycle -------------------------------------------------------------
    @classmethod
    def open(cls, folder: Path, spec: TransferSpec, command_id: str, meta: dict | None = None) -> Transfer:
        t = cls(folder, spec, command_id, meta)
        if t.info_path.exists() and t.part_path.exists():
            t._resume()
        else:
            t._fd = os.open(t.part_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.ftruncate(t._fd, spec.size)
            t._save_bitmap(force=True)
        return t

    @classmethod
    def load_pending(cls, folder: Path) -> list[Transfer]:
        """Transfers interrupted by a restart, ready to ask for their missing chunks."""
        out = []
        for info in Path(folder).glob("*.json"):
            try:
                doc = json.loads(info.read_text("utf-8"))
                spec = TransferSpec.from_dict(doc["spec"])
                out.append(cls.open(folder, spec, doc["command_id"], doc.get("meta")))
            except (ValueError, KeyError, MessageFormatError, OSError) as exc:
                log.warning("dropping unreadable transfer record %s: %s", info, exc)
                info.unlink(missing_ok=True)
                info.with_suffix(".part").unlink(missing_ok=True)
        return out

    def _resume(self) -> None:
        doc = json.loads(self.info_path.read_text("utf-8"))
        bits = doc.get("received", "")
        if len(bits) == self.spec.chunks:
            self.received = bytearray(1 if c == "1" else 0 for c in bits)
        self._fd = os.open(self.part_path, os.O_RDWR)
        log.info("resuming transfer %s: %d of %d chunks on disk", self.spec.transfer_id[:8],
                 self.count_received, self.spec.chunks)

    def _save_bitmap(self, force: bool = False) -> None:
        if not force and self._unsaved < BITMAP_SAVE_EVERY:
            return
        if self._fd is not None:
            os.fsync(self._fd)  # data first, then the claim that it is there
        atomic_write_json(self.info_path, {
            "spec": self.spec.to_dict(), "command_id": self.command_id, "meta": self.meta,
            "received": "".join("1" if b else "0" for b in self.received),
        })
        self._unsaved = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        self.close()
        self.part_path.unlink(missing_ok=True)
        self.info_path.unlink(missing_ok=True)

    # --- data ------------------------------------------------------------------
    @property
    def count_received(self) -> int:
        return sum(self.received)

    @property
    def complete(self) -> bool:
        return self.count_received == self.spec.chunks

    def missing(self, limit: int = 1000) -> list[int]:
        return [i for i, b in enumerate(self.received) if not b][:limit]

    def expected_length(self, index: int) -> int:
        if index == self.spec.chunks - 1:
            return self.spec.size - index * self.spec.chunk_size
        return self.spec.chunk_size

    def write(self, chunk: Chunk) -> bool:
        """Store one chunk; returns True when it was new. Raises on a chunk that cannot belong."""
        if chunk.transfer_id != self.spec.transfer_id:
            raise TransferError("chunk belongs to another transfer")
        if not 0 <= chunk.index < self.spec.chunks:
            raise TransferError(f"chunk index {chunk.index} outside 0..{self.spec.chunks - 1}")
        if len(chunk.data) != self.expected_length(chunk.index):
            raise TransferError(
                f"chunk {chunk.index} has {len(chunk.data)} bytes, expected {self.expected_length(chunk.index)}"
            )
        self.last_activity = time.monotonic()
        if self.received[chunk.index]:
            return False
        assert self._fd is not None
        os.pwrite(self._fd, chunk.data, chunk.index * self.spec.chunk_size)
        self.received[chunk.index] = 1
        self._unsaved += 1
        self._save_bitmap(force=self.complete)
        return True

    def read_verified(self) -> bytes:
        """The whole file, after checking it against the signed command's sha256."""
        if not self.complete:
            raise TransferError(f"transfer incomplete: {len(self.missing())} chunks missing")
        data = self.part_path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != self.spec.size or digest != self.spec.bundle_sha256:
            raise HashMismatchError(
                f"received bundle has sha256 {digest[:16]}…, the deploy command promised "
                f"{self.spec.bundle_sha256[:16]}…: altered or corrupted in transit"
            )
        return data
