"""The hub's Ed25519 signing key, kept under ``<home>/keys/``.

* ``hub_ed25519.pem`` -- the PKCS#8 private key, mode 0600. It is written to a
  temporary file opened with ``O_CREAT|O_EXCL`` and mode 0600 (so it is never
  readable by others, not even for an instant) and then hard-linked into place,
  so two processes starting at once agree on one key and nobody reads half a file.
* ``hub_ed25519.pub.pem`` -- its public half, mode 0644, to copy onto agents
  (their ``trusted_keys``). It is rewritten whenever it is missing or stale.

A private key file that group or others may read is refused: the user is told
to ``chmod 600`` it rather than edgeloop silently signing with a leaked key.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from edgeloop.agent.errors import KeyFileError
from edgeloop.agent.fsutil import atomic_writer, fsync_dir
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.hub.home import Home

KEY_FILE = "hub_ed25519.pem"
PUBLIC_KEY_FILE = "hub_ed25519.pub.pem"


def _keys_dir(home: Path | Home) -> Path:
    """Accept a home root path or a :class:`Home`."""
    root = home.root if isinstance(home, Home) else Path(home)
    return root / "keys"


def private_key_path(home: Path | Home) -> Path:
    return _keys_dir(home) / KEY_FILE


def public_key_path(home: Path | Home) -> Path:
    return _keys_dir(home) / PUBLIC_KEY_FILE


def load_or_create_hub_key(home: Path | Home) -> SigningKey:
    """The hub's signing key: loaded if present, generated (0600) on first use."""
    path = private_key_path(home)
    _ensure_keys_dir(path.parent)
    if not path.exists():
        _create_private_key(path)
    key = load_private_key(path)
    _write_public_if_stale(public_key_path(home), key.public_pem())
    return key


def export_public_pem(home: Path | Home) -> bytes:
    """The hub's public key as PEM (what agents must trust); creates the key if needed."""
    return load_or_create_hub_key(home).public_pem()


def load_private_key(path: Path) -> SigningKey:
    """Read a private key file after checking that only its owner can read it."""
    check_private_permissions(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read the hub key {path}: {exc.strerror or exc}") from exc
    try:
        return SigningKey.from_pem(data, source=str(path))
    except KeyFileError as exc:
        raise KeyFileError(
            f"{exc}. The file is damaged: restore it from a backup, or move it aside to "
            "generate a new key (every agent must then be given the new public key)."
        ) from exc


def check_private_permissions(path: Path) -> None:
    """Refuse a private key that group or others can access (POSIX only)."""
    if os.name != "posix":
        return
    try:
        st = path.stat()
    except OSError as exc:
        raise KeyFileError(f"cannot stat the hub key {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"hub key {path} is not a regular file; move it aside and try again")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"hub key {path} has mode {mode:04o}, so other users can read it; "
            f"run `chmod 600 {path}` and try again (and consider the key leaked if "
            "the machine is shared)"
        )


def _ensure_keys_dir(keys_dir: Path) -> None:
    """Create the keys directory 0700, and tighten it if it is looser."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name == "posix" and stat.S_IMODE(keys_dir.stat().st_mode) & 0o077:
        try:
            os.chmod(keys_dir, 0o700)
        except OSError as exc:
            raise KeyFileError(
                f"keys directory {keys_dir} is accessible to other users and cannot be "
                f"tightened ({exc.strerror or exc}); run `chmod 700 {keys_dir}`"
            ) from exc


def _create_private_key(path: Path) -> None:
    """Generate a key into a 0600 temp file, then link it into place atomically.

    If another process created the key meanwhile, its key wins and ours is dropped. (This
    is create-if-absent, which :func:`edgeloop.agent.fsutil.atomic_writer` -- a replace --
    cannot express: two first uses racing must agree on one key, not overwrite each other.)
    """
    key = SigningKey.generate()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    _write_exclusive(tmp, key.private_pem(), 0o600)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # lost a race: use the key the other process wrote
    except OSError:
        # No hard links on this filesystem: create the final file exclusively instead.
        try:
            _write_exclusive(path, key.private_pem(), 0o600)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _write_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (must not exist) with ``mode`` from the start, write, fsync."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    except FileExistsError:
        raise
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise KeyFileError(f"cannot write key file {path}: {exc.strerror or exc}") from exc


def _write_public_if_stale(path: Path, pem: bytes) -> None:
    """(Re)write the public key file, mode 0644, if missing or not matching the private key."""
    try:
        if path.read_bytes() == pem:
            return
    except OSError:
        pass
    try:
        with atomic_writer(path, 0o644) as fh:
            os.fchmod(fh.fileno(), 0o644)  # the umask may have removed read bits
            fh.write(pem)
    except OSError as exc:
        raise KeyFileError(f"cannot write public key file {path}: {exc.strerror or exc}") from exc
