"""Run provenance: which code and which library versions produced a model."""

from __future__ import annotations

import importlib
import platform
import subprocess
from pathlib import Path

__all__ = ["code_version", "library_versions"]


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that determine a model's numbers (None = not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "numpy", "onnx", "onnxruntime"):
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except Exception:
            out[name] = None
    return out


def code_version() -> str:
    """The edgeloop code that ran: ``git describe`` of this checkout, else the package version.

    Only a git work tree whose top level is the directory holding ``hub/`` counts,
    so an installed copy inside some other repository is not misreported. Git is
    run with ``--no-optional-locks`` so it never writes the index.
    """
    root = Path(__file__).resolve().parents[2]
    try:
        top = _git(root, "rev-parse", "--show-toplevel")
        if top and Path(top).resolve() == root:
            described = _git(root, "describe", "--always", "--dirty", "--tags")
            if described:
                return described
    except (OSError, subprocess.SubprocessError):
        pass
    from edgeloop.hub import __version__

    return f"edgeloop-{__version__}"


def _git(cwd: Path, *args: str) -> str | None:
    proc = subprocess.run(
        ["git", "--no-optional-locks", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None
