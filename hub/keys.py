"""The hub's Ed25519 signing key, kept under ``<home>/keys/``.

* ``hub_ed25519.pem`` -- the PKCS#8 private key, mode 0600. It is written to a
  temporary file opened with ``O_CREAT|O_EXCL`` and mode 0600 (so it is never
  readable by others, not even for an instant) and then hard-linked into place,
  so two processes starting at once agree on one key and nobody reads half a file.
* ``hub_ed25519.pub.pem`` -- its public half, mode 0644, to copy onto agents
  (their ``trusted_keys``). It is rewritten whenever it is missing or stale.

A private key file that group or others may read is refused: the user is told
to ``chmod 600`` it rather than edgeloop silently signing with a leaked key.

Root key, certificates, revocations, rotation (docs/security.md, "Root key, certificates, rotation"):

* the **root** key is offline: :func:`create_root_key` writes it where the operator says (a USB stick),
  never under the home; ``certify``/``revoke`` read it only for the moment they sign;
* ``root_ed25519.pub.pem`` -- the root's public key, recorded at the first ``certify`` (what agents put
  in ``trusted_roots``; :func:`root_public_pem`);
* ``trust.json`` -- the signed statements the hub ships beside every command (:func:`trust_material`):
  the root's certificates of hub keys, its newest revocation list, and the chain of rotation statements;
* ``retired/<key id>.pub.pem`` -- public halves of rotated-out hub keys (their private keys are deleted).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any

from edgeloop.agent.errors import KeyFileError
from edgeloop.agent.fsutil import atomic_write_json, atomic_writer, fsync_dir
from edgeloop.agent.wire.envelope import SigningKey, TrustedKeys, key_id, load_public_pem, open_envelope
from edgeloop.agent.wire.keychain import (
    REVOCATIONS_PAYLOAD_TYPE,
    sign_certificate,
    sign_revocations,
    sign_rotation,
    trust_document,
)
from edgeloop.hub.home import Home

KEY_FILE = "hub_ed25519.pem"
PUBLIC_KEY_FILE = "hub_ed25519.pub.pem"
ROOT_PUBLIC_FILE = "root_ed25519.pub.pem"
TRUST_FILE = "trust.json"
RETIRED_DIR = "retired"
DEFAULT_CERT_DAYS = 365
DEFAULT_GRACE_DAYS = 7


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


# --- the offline root key, certificates, revocations, rotation ---------------------------------------------------
def create_root_key(out: Path) -> SigningKey:
    """A new root key written to ``out`` (0600, never overwriting)."""
    out = Path(out)
    if out.exists():
        raise KeyFileError(f"{out} exists: edgeloop never overwrites a root key (a lost root cannot be replaced "
                           "without touching every agent); choose another path")
    key = SigningKey.generate()
    try:
        _write_exclusive(out, key.private_pem(), 0o600)
    except FileExistsError:
        raise KeyFileError(f"{out} was created meanwhile: not overwritten") from None
    return key


def load_root_key(path: Path) -> SigningKey:
    """The offline root key (its file must be readable by its owner only)."""
    path = Path(path)
    if not path.exists():
        raise KeyFileError(f"root key {path} does not exist (create one with `edgeloop keys root init --out FILE`)")
    return load_private_key(path)


def root_public_pem(home: Path | Home) -> bytes | None:
    """The root public key recorded by the first ``edgeloop keys certify`` (for agents' ``trusted_roots``),
    or None when the hub key was never certified."""
    try:
        return (_keys_dir(home) / ROOT_PUBLIC_FILE).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyFileError(f"cannot read the root public key of {home}: {exc.strerror or exc}") from exc


def root_public_path(home: Path | Home) -> Path:
    return _keys_dir(home) / ROOT_PUBLIC_FILE


def root_keyids(home: Path | Home) -> list[str]:
    """The key id of the recorded root ([] without one): agents whose state lists it are this hub's."""
    pem = root_public_pem(home)
    return [key_id(load_public_pem(pem, str(root_public_path(home))))] if pem else []


def _trust_path(home: Path | Home) -> Path:
    return _keys_dir(home) / TRUST_FILE


def load_trust_state(home: Path | Home) -> dict[str, Any]:
    """``trust.json``: ``certificates``, ``revocations``, ``rotations`` (signed envelopes), ``serials``."""
    path = _trust_path(home)
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        doc = {}
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path} cannot be read ({exc}): restore it from a backup; without it agents that "
                           "trust only the root cannot verify this hub's key") from exc
    if not isinstance(doc, dict):
        raise KeyFileError(f"{path} is not a JSON object: restore it from a backup")
    for kind in ("certificates", "revocations", "rotations"):
        doc.setdefault(kind, [])
    doc.setdefault("serials", {})
    return doc


def trust_material(home: Path | Home) -> dict | None:
    """What the hub ships beside every command (the ``trust`` field), or None when there is nothing."""
    state = load_trust_state(home)
    if not (state["certificates"] or state["revocations"] or state["rotations"]):
        return None
    return trust_document(state["certificates"], state["revocations"], state["rotations"])


def _save_trust_state(home: Path | Home, state: dict) -> None:
    _ensure_keys_dir(_keys_dir(home))
    try:
        atomic_write_json(_trust_path(home), state)
    except OSError as exc:
        raise KeyFileError(f"cannot write {_trust_path(home)}: {exc.strerror or exc}") from exc


def _record_root(home: Path | Home, root: SigningKey) -> None:
    have = root_public_pem(home)
    if have is not None and have != root.public_pem():
        raise KeyFileError(
            f"this hub's root is {root_keyids(home)[0]}, not {root.keyid}: certify with the recorded root, or "
            f"move {root_public_path(home)} and {_trust_path(home)} aside to change roots (every agent's "
            "trusted_roots must change too)")
    if have is None:
        _write_public_if_stale(root_public_path(home), root.public_pem())


def certify(home: Path | Home, root: SigningKey, days: float = DEFAULT_CERT_DAYS, now: float | None = None) -> dict:
    """Sign a certificate for the hub's current key with ``root`` and keep it (shipped with every command)."""
    if not 0 < days <= 3650:
        raise KeyFileError(f"--days must be within 1..3650, got {days}")
    now = time.time() if now is None else now
    hub = load_or_create_hub_key(home)
    _record_root(home, root)
    state = load_trust_state(home)
    serial = int(state["serials"].get("certificate", 0)) + 1
    env = sign_certificate(root, hub.public, serial, now, now + days * 86400)
    state["certificates"] = [c for c in state["certificates"] if _payload(c).get("key_id") != hub.keyid] + [env]
    state["serials"]["certificate"] = serial
    _save_trust_state(home, state)
    return {"key_id": hub.keyid, "root": root.keyid, "serial": serial, "not_before": now,
            "not_after": now + days * 86400}


def revoke(home: Path | Home, root: SigningKey, keyid: str, reason: str = "", now: float | None = None) -> dict:
    """Add ``keyid`` to the root's revocation list (a new list, serial + 1), drop its certificate."""
    if not (len(keyid) == 16 and all(c in "0123456789abcdef" for c in keyid)):
        raise KeyFileError(f"{keyid!r} is not a key id (16 lowercase hex digits, as `edgeloop keys show` prints)")
    now = time.time() if now is None else now
    _record_root(home, root)
    state = load_trust_state(home)
    revoked = dict(_current_revoked(state, root))
    revoked[keyid] = reason
    serial = int(state["serials"].get("revocations", 0)) + 1
    state["revocations"] = [sign_revocations(root, serial, revoked, now)]
    state["certificates"] = [c for c in state["certificates"] if _payload(c).get("key_id") not in revoked]
    state["serials"]["revocations"] = serial
    _save_trust_state(home, state)
    current = load_or_create_hub_key(home).keyid
    return {"revoked": sorted(revoked), "serial": serial, "root": root.keyid, "current_key_revoked": keyid == current}


def _current_revoked(state: dict, root: SigningKey) -> dict[str, str]:
    for env in state["revocations"]:
        signed = open_envelope(env, REVOCATIONS_PAYLOAD_TYPE, TrustedKeys.of([root.public]))
        rev = json.loads(signed.payload).get("revoked", {})
        return dict(rev) if isinstance(rev, dict) else {}
    return {}


def _payload(env: dict) -> dict:
    """The payload of an envelope this hub signed and stored (not verified: our own file)."""
    try:
        doc = json.loads(base64.b64decode(env["payload"]))
    except (KeyError, TypeError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def rotate(home: Path | Home, grace_days: float = DEFAULT_GRACE_DAYS, now: float | None = None) -> dict:
    """A new hub key; the old one signs a rotation statement (kept in ``trust.json``, shipped with every
    command) and its private key is deleted (its public half kept in ``retired/``)."""
    if not 0 <= grace_days <= 365:
        raise KeyFileError(f"--grace-days must be within 0..365, got {grace_days}")
    now = time.time() if now is None else now
    old = load_or_create_hub_key(home)
    path = private_key_path(home)
    staged = path.with_name(f".{path.name}.rotating")
    state = load_trust_state(home)
    if staged.exists():  # an interrupted rotation: finish it if its statement was saved (agents may have it)
        new = load_private_key(staged)
        if not any(_payload(r).get("new_key_id") == new.keyid for r in state["rotations"]):
            staged.unlink()
    if not staged.exists():
        new = SigningKey.generate()
        _write_exclusive(staged, new.private_pem(), 0o600)
        retired = _keys_dir(home) / RETIRED_DIR
        retired.mkdir(mode=0o700, exist_ok=True)
        _write_public_if_stale(retired / f"{old.keyid}.pub.pem", old.public_pem())
        state["rotations"] = [*state["rotations"], sign_rotation(old, new.public, now + grace_days * 86400, now)]
        _save_trust_state(home, state)
    os.replace(staged, path)  # from here on the hub signs with the new key
    fsync_dir(path.parent)
    _write_public_if_stale(public_key_path(home), new.public_pem())
    return {"old_key_id": old.keyid, "new_key_id": new.keyid, "grace_until": now + grace_days * 86400,
            "certified": bool(root_public_pem(home))}


def anchor_keyids(home: Path | Home) -> list[str]:
    """Key ids besides the current hub key that make an agent's state a member of this hub's fleet: the
    root's, and every rotated-out hub key's (an agent that trusts an old key learns the new one from the
    rotation statements sent with the next command)."""
    retired = _keys_dir(home) / RETIRED_DIR
    old = sorted(p.name.removesuffix(".pub.pem") for p in retired.glob("*.pub.pem")) if retired.is_dir() else []
    return root_keyids(home) + old
