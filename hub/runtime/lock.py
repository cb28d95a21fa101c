"""One hub runtime per hub home: an exclusive OS lock on ``<home>/hub.lock``.

``flock`` locks belong to the open file: the kernel drops them when the process ends,
however it ends, so a crashed runtime never leaves a stale lock behind. The file also
holds the holder's pid, so a second runtime can say which process to stop.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Self

from edgeloop.hub.errors import HubError

LOCK_NAME = "hub.lock"


class RuntimeLockedError(HubError):
    """Another hub runtime already serves this hub home."""

    code = "runtime_locked"


class HomeLock:
    """The exclusive lock of one hub home (see the module docstring)."""

    def __init__(self, home_root: Path) -> None:
        self.home_root = Path(home_root)
        self.path = self.home_root / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> Self:
        """Take the lock now or raise :class:`RuntimeLockedError` naming the holder's pid."""
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"pid {holder}" if holder.isdigit() else "a process that is starting"
            raise RuntimeLockedError(
                f"another hub runtime ({who}) already serves the hub home {self.home_root}; stop it first "
                f"(`kill {holder or 'PID'}`, or `systemctl stop edgeloop-hub` where it runs as a service), "
                "or use another --home") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def holder(self) -> int | None:
        """The pid written by whoever holds or last held the lock (None when unknown)."""
        try:
            text = self.path.read_text("ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        """Give the lock up (the file stays: removing it would race with the next holder)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor of the open file drops the flock

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
