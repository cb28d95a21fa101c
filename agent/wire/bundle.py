"""Bundle container (an uncompressed tar) and its pure verification.

Layout::

    manifest.json   canonical JSON (see edgeloop.agent.wire.manifest), the signed bytes
    manifest.sig    detached signature envelope over manifest.json (see edgeloop.agent.wire.envelope)
    files/<path>    every file the manifest lists, nothing else

Each name appears once, and only regular files are allowed (no links, devices,
fifos or directories). :func:`write_container` and :func:`read_container` are the
codec (``read_container(write_container(m, s, f)) == RawBundle(m, s, f)``);
:func:`verify_bundle` goes from bytes to a :class:`VerifiedBundle` or raises a
specific :class:`~edgeloop.agent.errors.BundleError` /
:class:`~edgeloop.agent.errors.SignatureError`; it touches no disk and no network.
Nothing is loaded before it passes.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass

from edgeloop.agent.errors import (
    BundleFormatError,
    BundleTooLargeError,
    EdgeloopError,
    HashMismatchError,
    MessageFormatError,
    MissingFileError,
    SignatureError,
    SizeMismatchError,
    UnexpectedFileError,
)
from edgeloop.agent.wire.envelope import MANIFEST_PAYLOAD_TYPE, SigningKey, TrustedKeys, sign_detached, verify_detached
from edgeloop.agent.wire.fields import dumps
from edgeloop.agent.wire.manifest import FileEntry, Manifest

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
FILES_PREFIX = "files/"
DEFAULT_MAX_BUNDLE = 256 * 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class RawBundle:
    manifest: bytes
    signature: bytes
    files: Mapping[str, bytes]


@dataclass(frozen=True)
class VerifiedBundle:
    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes
    files: Mapping[str, bytes]
    keyid: str

    @property
    def model_bytes(self) -> bytes:
        return self.files[self.manifest.entrypoint]


# --- packing (used by the hub) -----------------------------------------------
def file_entry(path: str, data: bytes, role: str = "model") -> FileEntry:
    return FileEntry(path=path, sha256=sha256(data), size=len(data), role=role)


def pack_bundle(manifest: Manifest, files: Mapping[str, bytes], key: SigningKey) -> bytes:
    """Sign ``manifest`` with ``key`` and write the tar container. Deterministic bytes."""
    if manifest.key_id != key.keyid:
        raise SignatureError(f"manifest names key {manifest.key_id} but is being signed with {key.keyid}")
    listed = {f.path: f for f in manifest.files}
    if set(listed) != set(files):
        raise BundleFormatError(f"files given {sorted(files)} differ from files listed {sorted(listed)}")
    for path, data in files.items():
        if listed[path].sha256 != sha256(data) or listed[path].size != len(data):
            raise HashMismatchError(f"{path}: manifest entry does not describe the data given")
    manifest_bytes = manifest.to_bytes()
    sig = dumps(sign_detached(key, MANIFEST_PAYLOAD_TYPE, manifest_bytes))
    return write_container(manifest_bytes, sig, files)


def write_container(manifest_bytes: bytes, signature: bytes, files: Mapping[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        entries = [(MANIFEST_NAME, manifest_bytes), (SIGNATURE_NAME, signature)]
        entries += [(FILES_PREFIX + p, files[p]) for p in sorted(files)]
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# --- unpacking and verification (pure) ------------------------------------------
_KINDS = {  # names of the tar entry types a bundle must not hold, for the error message
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.DIRTYPE: "directory",
    tarfile.FIFOTYPE: "fifo",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
}


def read_container(data: bytes, max_size: int = DEFAULT_MAX_BUNDLE) -> RawBundle:
    """Bytes of a bundle -> its three parts, refusing anything the layout does not allow. Trusts nothing."""
    if len(data) > max_size:
        raise BundleTooLargeError(f"bundle is {len(data)} bytes; this agent accepts at most {max_size}")
    parts: dict[str, bytes] = {}  # manifest.json, manifest.sig, files/<path>, by entry name
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            total = 0
            for member in tar:
                name = member.name
                _check_member(member)
                if name in parts:
                    raise BundleFormatError(f"bundle holds {name!r} twice: refused as ambiguous")
                total += member.size
                if total > max_size:
                    raise BundleTooLargeError(
                        f"bundle content exceeds {max_size} bytes (entry {name!r} brings it to {total})"
                    )
                fh = tar.extractfile(member)
                blob = fh.read() if fh is not None else b""
                if len(blob) != member.size:
                    raise BundleFormatError(f"bundle entry {name!r} is truncated")
                parts[name] = blob
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleFormatError(f"bundle is not a readable edgeloop bundle (truncated or corrupt tar): {exc}") from exc
    manifest = parts.pop(MANIFEST_NAME, None)
    signature = parts.pop(SIGNATURE_NAME, None)
    if manifest is None:
        raise BundleFormatError(
            f"bundle has no {MANIFEST_NAME}: not an edgeloop bundle (build one with `edgeloop bundle build`)"
        )
    if signature is None:
        raise BundleFormatError(f"bundle has no {SIGNATURE_NAME}: unsigned bundles are refused")
    return RawBundle(manifest, signature, {name[len(FILES_PREFIX):]: blob for name, blob in parts.items()})


def _check_member(member: tarfile.TarInfo) -> None:
    """A regular file under an allowed name that stays inside the bundle."""
    name = member.name
    if not member.isfile():
        raise BundleFormatError(
            f"bundle entry {name!r} is a {_KINDS.get(member.type, 'special entry')}, not a regular file: "
            "bundles hold regular files only"
        )
    if name.startswith("/") or ".." in name.split("/") or "\\" in name:
        raise BundleFormatError(f"bundle entry {name!r} tries to leave the bundle")
    if member.size < 0:
        raise BundleFormatError(f"bundle entry {name!r} has a negative size")
    if name not in (MANIFEST_NAME, SIGNATURE_NAME) and not (
        name.startswith(FILES_PREFIX) and len(name) > len(FILES_PREFIX)
    ):
        raise UnexpectedFileError(f"bundle entry {name!r} is not part of the bundle format")


def verify_raw(raw: RawBundle, trusted: TrustedKeys) -> VerifiedBundle:
    """Signature first (over the exact manifest bytes), then every file's size and hash."""
    try:
        signed = verify_detached(raw.signature, raw.manifest, MANIFEST_PAYLOAD_TYPE, trusted)
    except MessageFormatError as exc:
        raise SignatureError(f"{SIGNATURE_NAME} is not a valid signature document: {exc}") from exc
    try:
        manifest = Manifest.from_bytes(raw.manifest)
    except MessageFormatError as exc:
        raise BundleFormatError(f"signed manifest is not valid: {exc}") from exc
    if manifest.key_id != signed.keyid:
        raise SignatureError(f"manifest says it is signed by {manifest.key_id} but {signed.keyid} signed it")
    listed = {f.path for f in manifest.files}
    for entry in manifest.files:
        blob = raw.files.get(entry.path)
        if blob is None:
            raise MissingFileError(f"bundle lacks {entry.path!r}, which its manifest lists")
        if len(blob) != entry.size:
            raise SizeMismatchError(f"{entry.path}: {len(blob)} bytes, manifest says {entry.size}")
        if sha256(blob) != entry.sha256:
            raise HashMismatchError(f"{entry.path}: sha256 does not match the signed manifest (altered file)")
    extra = sorted(set(raw.files) - listed)
    if extra:
        raise UnexpectedFileError(f"bundle holds files its manifest does not list: {', '.join(extra)}")
    return VerifiedBundle(manifest, raw.manifest, raw.signature, dict(raw.files), signed.keyid)


def verify_bundle(data: bytes, trusted: TrustedKeys, max_size: int = DEFAULT_MAX_BUNDLE) -> VerifiedBundle:
    """Bytes of a bundle file -> verified bundle, or a specific error. Pure."""
    return verify_raw(read_container(data, max_size), trusted)


def inspect_bundle(data: bytes) -> tuple[Manifest, dict]:
    """Read a bundle's manifest WITHOUT trusting it (for ``edgeloop bundle inspect``)."""
    raw = read_container(data)
    manifest = Manifest.from_bytes(raw.manifest)
    try:
        sig = json.loads(raw.signature)
    except ValueError:
        sig = {}
    return manifest, sig if isinstance(sig, dict) else {}


__all__ = [
    "EdgeloopError", "RawBundle", "VerifiedBundle", "pack_bundle", "read_container",
    "verify_raw", "verify_bundle", "inspect_bundle", "file_entry", "sha256",
]
