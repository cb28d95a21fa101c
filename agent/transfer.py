"""Receiving a bundle in chunks: one ``.part`` file, one incremental sha256, a persisted bitmap.

Chunks may arrive in any order, twice, or not at all. Each is written once, at its
offset in ``incoming/<transfer_id>.part``; the sha256 of the contiguous prefix grows
as chunks arrive (a chunk that fills a gap brings the chunks after it in by reading
them back from the file), so the whole-file hash named in the signed deploy command
is known when the last chunk lands, without a second pass. The file is fsynced once,
at the end (:meth:`Transfer.finish`), and then renamed into the store by
:meth:`edgeloop.agent.store.AgentStore.install_file` -- never copied.

For resuming after a restart or reconnect, the bitmap of received chunks is saved
(after an fsync of the data, so it never claims more than is on disk) every few MiB,
when the transfer goes quiet, when the last chunk arrived (so a crash while installing
resumes with a complete transfer, installed on restart), and on a clean close.

The ``.part`` file gets its whole size reserved when the transfer opens (``posix_fallocate``),
so a full disk shows at once (:class:`~edgeloop.agent.errors.DiskFullError`), not halfway.
Every transfer has an expiry (its deploy command's); a record without one (an older agent's)
expires ``default_lifetime`` seconds after it was last written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from edgeloop.agent.errors import HashMismatchError, MessageFormatError, StoreError, TransferError
from edgeloop.agent.fsutil import FULL_ERRNOS, atomic_write_json, disk_full_error
from edgeloop.agent.wire.messages import Chunk, TransferSpec

log = logging.getLogger(__name__)
BITMAP_SAVE_BYTES = 4 * 1024 * 1024  # data received since the last save that triggers one
BITMAP_SAVE_IDLE = 0.5  # seconds without a chunk after which unsaved progress is saved


class Transfer:
    def __init__(self, folder: Path, spec: TransferSpec, command_id: str, meta: dict | None = None,
                 expires_at: float | None = None) -> None:
        self.spec = spec
        self.command_id = command_id
        self.meta = dict(meta or {})
        self.expires_at = expires_at  # the deploy command's expiry: the transfer is abandoned after it
        self.part_path = Path(folder) / f"{spec.transfer_id}.part"
        self.info_path = Path(folder) / f"{spec.transfer_id}.json"
        self.received = bytearray(spec.chunks)  # 0/1 per chunk
        self.last_activity = time.monotonic()
        self.following = False  # subscribed to the transfer's shared topic (the agent's control sets it)
        self.asked = False  # asked for missing chunks once the shared stream ended (see AgentControl)
        self.quiet_asks = 0  # times missing chunks were asked for since the last new chunk (backs off)
        self._save_failed = False  # a bitmap save failed (logged once until one succeeds)
        self._count = 0
        self._hash = hashlib.sha256()
        self._hashed = 0  # chunks 0.._hashed-1 are in self._hash
        self._unsaved = 0  # bytes written since the bitmap was last saved
        self._fd: int | None = None

    # --- lifecycle -------------------------------------------------------------
    @classmethod
    def open(cls, folder: Path, spec: TransferSpec, command_id: str, meta: dict | None = None,
             expires_at: float | None = None) -> Transfer:
        t = cls(folder, spec, command_id, meta, expires_at)
        if t.info_path.exists() and t.part_path.exists():
            t._resume()
            return t
        t._fd = os.open(t.part_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _reserve(t._fd, spec.size)
            t._save_bitmap()
        except (OSError, StoreError) as exc:
            t.discard()
            if isinstance(exc, StoreError):
                raise
            raise disk_full_error(exc, t.part_path, spec.size, "reserve space for the bundle") or TransferError(
                f"cannot create {t.part_path}: {exc}") from exc
        return t

    @classmethod
    def load_pending(cls, folder: Path, default_lifetime: float | None = None) -> list[Transfer]:
        """Transfers interrupted by a restart, ready to ask for their missing chunks (or, complete,
        to be installed).

        A record without its ``.part`` (the bundle was already moved into the store), a ``.part``
        without its record (a crash before the first bitmap save) and anything else in ``folder``
        are leftovers: removed. A record without an expiry gets ``default_lifetime`` seconds from
        its last write.
        """
        out = []
        folder = Path(folder)
        for info in folder.glob("*.json"):
            part = info.with_suffix(".part")
            try:
                doc = json.loads(info.read_text("utf-8"))
                spec = TransferSpec.from_dict(doc["spec"])
                if not part.exists():
                    raise TransferError("its .part file is gone")
                expires = doc.get("expires_at")
                if expires is None and default_lifetime is not None:
                    expires = info.stat().st_mtime + default_lifetime
                out.append(cls.open(folder, spec, doc["command_id"], doc.get("meta"),
                                    float(expires) if expires is not None else None))
            except (ValueError, KeyError, TypeError, MessageFormatError, TransferError, OSError) as exc:
                log.warning("dropping transfer record %s: %s", info, exc)
                info.unlink(missing_ok=True)
                part.unlink(missing_ok=True)
        keep = {name for t in out for name in (t.part_path.name, t.info_path.name)}
        for path in folder.iterdir():
            if path.name not in keep and path.is_file():
                log.info("removing %s: no transfer record references it", path)
                path.unlink(missing_ok=True)
        return out

    def _resume(self) -> None:
        doc = json.loads(self.info_path.read_text("utf-8"))
        bits = doc.get("received", "")
        if len(bits) == self.spec.chunks:
            self.received = bytearray(1 if c == "1" else 0 for c in bits)
        self._count = sum(self.received)
        self._fd = os.open(self.part_path, os.O_RDWR)
        self._advance_hash()  # the prefix on disk, read back once
        log.info("resuming transfer %s: %d of %d chunks on disk", self.spec.transfer_id[:8],
                 self._count, self.spec.chunks)

    def _save_bitmap(self) -> None:
        """Save the record; a full disk raises :class:`DiskFullError`, another failure OSError."""
        if self._fd is not None:
            os.fsync(self._fd)  # data first, then the claim that it is there
        doc = {"spec": self.spec.to_dict(), "command_id": self.command_id, "meta": self.meta,
               "expires_at": self.expires_at, "received": "".join("1" if b else "0" for b in self.received)}
        try:
            atomic_write_json(self.info_path, doc)
        except OSError as exc:
            full = disk_full_error(exc, self.info_path, len(json.dumps(doc)), "save the transfer record")
            if full is not None:
                raise full from exc
            raise
        self._unsaved = 0

    def _try_save_bitmap(self) -> bool:
        """Save the record; a failure only delays resuming (logged once until a save works again)."""
        try:
            self._save_bitmap()
        except (OSError, StoreError) as exc:
            if not self._save_failed:
                log.warning("transfer %s: could not save its record (%s); it goes on in memory",
                            self.spec.transfer_id[:8], exc)
            self._save_failed = True
            return False
        self._save_failed = False
        return True

    def save_if_idle(self, now: float) -> bool:
        """Save the bitmap when chunks came since the last save and none for a while; True if saved."""
        if self._unsaved and self._fd is not None and now - self.last_activity >= BITMAP_SAVE_IDLE:
            return self._try_save_bitmap()
        return False

    def close(self) -> None:
        """Save what was received (a clean stop) and close the file; the transfer resumes on the next start."""
        if self._fd is not None:
            if self._unsaved:
                self._try_save_bitmap()
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.part_path.unlink(missing_ok=True)
        self.info_path.unlink(missing_ok=True)

    # --- data ------------------------------------------------------------------
    @property
    def count_received(self) -> int:
        return self._count

    @property
    def complete(self) -> bool:
        return self._count == self.spec.chunks

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
        if self._fd is None:
            raise TransferError(f"transfer {self.spec.transfer_id[:8]} is closed")
        offset = chunk.index * self.spec.chunk_size
        try:
            _pwrite_all(self._fd, chunk.data, offset)
        except OSError as exc:
            raise disk_full_error(exc, self.part_path, len(chunk.data), f"write chunk {chunk.index}") or TransferError(
                f"cannot write chunk {chunk.index} to {self.part_path}: {exc}") from exc
        self.received[chunk.index] = 1
        self._count += 1
        self.quiet_asks = 0
        if chunk.index == self._hashed:  # the usual case: in order, hashed from memory
            self._hash.update(chunk.data)
            self._hashed += 1
            self._advance_hash()
        self._unsaved += len(chunk.data)
        if self._unsaved >= BITMAP_SAVE_BYTES or self.complete:
            self._try_save_bitmap()
        return True

    def _advance_hash(self) -> None:
        """Extend the hashed prefix over chunks already on disk (after a gap was filled, or a resume)."""
        assert self._fd is not None
        while self._hashed < self.spec.chunks and self.received[self._hashed]:
            i = self._hashed
            self._hash.update(os.pread(self._fd, self.expected_length(i), i * self.spec.chunk_size))
            self._hashed += 1

    def finish(self) -> Path:
        """The complete file, checked against the signed command's sha256, fsynced and closed.

        Returns the ``.part`` path, ready to be renamed into the store. Raises
        :class:`HashMismatchError` when the bytes are not the promised ones.
        """
        if not self.complete:
            raise TransferError(f"transfer incomplete: {len(self.missing())} chunks missing")
        if self._fd is None:
            raise TransferError(f"transfer {self.spec.transfer_id[:8]} is closed")
        digest = self._hash.hexdigest()
        if self._hashed != self.spec.chunks or digest != self.spec.bundle_sha256:
            raise HashMismatchError(
                f"received bundle has sha256 {digest[:16]}…, the deploy command promised "
                f"{self.spec.bundle_sha256[:16]}…: altered or corrupted in transit"
            )
        os.fsync(self._fd)  # the one fsync of the data
        os.close(self._fd)
        self._fd = None
        return self.part_path


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """``os.pwrite`` until every byte is written (a short write is continued, not lost)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(f"pwrite wrote {n} bytes at offset {offset}")
        view, offset = view[n:], offset + n


def _reserve(fd: int, size: int) -> None:
    """Give the file its full size, with the blocks reserved where the platform can (a full disk shows now)."""
    if size > 0 and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as exc:
            if exc.errno in FULL_ERRNOS:
                raise
    os.ftruncate(fd, size)  # no reservation on this platform or file system
