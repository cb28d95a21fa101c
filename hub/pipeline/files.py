"""Putting a version's files on disk so that a registry row never points at missing or partial files.

The files are written into a staging folder beside their final place
(``<models>/<model>/.staging-<run id>``), each durably
(:func:`edgeloop.agent.fsutil.atomic_write_bytes`: written, fsynced, renamed,
folder fsynced). Inside the registry's write transaction -- once the version
number is known and before the row is inserted -- the staging folder is renamed
to ``<models>/<model>/<n>`` and the model folder fsynced
(:func:`install_folder`). A crash before the rename leaves only a staging
folder; a crash after it leaves a complete folder without a row, which the next
version with that number moves aside.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

from edgeloop.agent.fsutil import atomic_write_bytes, fsync_dir

__all__ = ["discard", "install_folder", "stage_files"]

log = logging.getLogger(__name__)


def stage_files(staging: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` (file name -> bytes) durably into ``staging``, a fresh folder beside the final one.

    A folder of that name left by an earlier crash is removed first.
    """
    parent = staging.parent
    if not parent.is_dir():
        parent.mkdir(parents=True, exist_ok=True)
        fsync_dir(parent.parent)
    discard(staging)
    staging.mkdir()
    fsync_dir(parent)
    for file_name, data in files.items():
        atomic_write_bytes(staging / file_name, data)


def install_folder(staging: Path, final: Path) -> None:
    """Rename the complete ``staging`` folder to ``final`` and fsync their parent.

    Whatever already sits at ``final`` belongs to no registered version (the
    registry has just given out that number), so it is moved aside to
    ``.replaced-<name>-<random>`` rather than mixed with the new files.
    """
    if final.exists() or final.is_symlink():
        aside = final.with_name(f".replaced-{final.name}-{uuid.uuid4().hex[:8]}")
        log.warning("%s holds files of no registered version (left by an interrupted build); moved to %s",
                    final, aside.name)
        os.replace(final, aside)
    os.replace(staging, final)
    fsync_dir(final.parent)


def discard(folder: Path) -> None:
    """Remove ``folder`` and what is in it, if it exists (an unregistered staging or final folder)."""
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
