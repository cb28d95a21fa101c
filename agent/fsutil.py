"""Crash-safe file writes: write beside, fsync, rename atomically, fsync the folder.

After a power cut a reader sees either the old file or the new one, never a mix. This is
the project's one atomic-write helper (agent and hub): :func:`atomic_writer` streams into
the file, :func:`atomic_write_bytes` and :func:`atomic_write_json` write a value at once.
Temporary files are named ``.tmp-<name>.<pid>.<random>`` beside the target, so concurrent
writers never share one, and a crash leaves only ``.tmp-*`` files that start-up can delete.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TEMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (a no-op where folders cannot be fsynced)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # not supported on this platform (e.g. Windows)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path | str, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """A binary file handle whose content replaces ``path`` atomically when the block ends.

    The data go to a new temporary file beside ``path`` (created with ``mode``), which is
    flushed and fsynced, renamed over ``path``, and the folder fsynced. If the block
    raises, ``path`` is untouched and the temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably (see :func:`atomic_writer`)."""
    with atomic_writer(path, mode) as fh:
        fh.write(data)


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_bytes(Path(path), json.dumps(obj, indent=1, sort_keys=True).encode("utf-8"))
