"""Crash-safe file writes: write beside, fsync, rename atomically, fsync the folder.

After a power cut a reader sees either the old file or the new one, never a mix. This is
the project's one atomic-write helper (agent and hub): :func:`atomic_writer` streams into
the file, :func:`atomic_write_bytes` and :func:`atomic_write_json` write a value at once.
Temporary files are named ``.tmp-<name>.<pid>.<random>`` beside the target, so concurrent
writers never share one, and a crash leaves only ``.tmp-*`` files that start-up can delete.

:func:`disk_full_error` turns a write that failed on a full file system into a
:class:`~edgeloop.agent.errors.DiskFullError` naming the free and needed bytes.
:func:`crash_point` is a test hook: ``$EDGELOOP_TEST_CRASH_AT`` names a step at which the
process kills itself (SIGKILL, as a power cut would); unset, it does nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from edgeloop.agent.errors import DiskFullError

TEMP_PREFIX = ".tmp-"
CRASH_ENV = "EDGELOOP_TEST_CRASH_AT"  # tests only: the step at which crash_point() kills the process
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def crash_point(step: str) -> None:
    """Tests only: die here, without any clean-up, when ``$EDGELOOP_TEST_CRASH_AT`` is ``step``."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def free_bytes(path: Path | str) -> int | None:
    """Free bytes on the file system holding ``path`` (None when it cannot be asked)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def disk_full_error(exc: OSError, path: Path | str, needed: int, what: str) -> DiskFullError | None:
    """A :class:`DiskFullError` for ``exc`` when it says the file system is full, else None."""
    if exc.errno not in FULL_ERRNOS:
        return None
    free = free_bytes(Path(path).parent if not Path(path).is_dir() else path)
    shown = f"{free} bytes free" if free is not None else "free space unknown"
    return DiskFullError(f"disk full: could not {what} ({path}): {shown}, about {needed} bytes needed; "
                         "free some space in the agent's state_dir (old logs, other files on that disk)",
                         free=free, needed=needed)


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
