"""Ed25519 keys and the signature envelope (DSSE-style), pure and I/O free.

The envelope signs ``PAE(payload_type, payload)`` -- the pre-authentication
encoding of the DSSE spec (github.com/secure-systems-lab/dsse, protocol.md) --
so a signed manifest can never be replayed as a command and vice versa. The
signature document is an :class:`Envelope` (``"schema": 1``, ``payload_type``,
``signatures`` and, for commands, the base64 ``payload``) with an explicit
``to_dict()``/``from_dict()``; used by :mod:`edgeloop.agent.wire.bundle` (detached,
``manifest.sig``) and :mod:`edgeloop.agent.wire.commands` (sealed).

Key ids are the first 16 hex digits of sha256(raw public key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edgeloop.agent.errors import (
    KeyFileError,
    MessageFormatError,
    SignatureError,
    UnsupportedSchemaError,
    UntrustedKeyError,
)
from edgeloop.agent.wire.fields import is_version

ENVELOPE_SCHEMA = 1
MANIFEST_PAYLOAD_TYPE = "application/vnd.edgeloop.manifest+json"
COMMAND_PAYLOAD_TYPE = "application/vnd.edgeloop.command+json"
REPORT_PAYLOAD_TYPE = "application/vnd.edgeloop.report+json"
REPORT_SIGNATURE_FIELD = "signed"  # a signed report: the message's fields plus its detached envelope here
REPORT_KEY_FIELD = "report_key"  # in an agent's state: the raw Ed25519 public key (base64) it signs reports with


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no spaces, UTF-8, no NaN/Infinity."""
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except ValueError as exc:  # NaN or Infinity
        raise MessageFormatError(f"cannot encode non-finite number in signed data: {exc}") from exc
    except UnicodeEncodeError as exc:  # a lone surrogate in a string
        raise MessageFormatError(f"signed data holds a string that is not valid Unicode: {exc}") from exc


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: Any, what: str) -> bytes:
    """Strict base64 (no stray characters) -> bytes, or MessageFormatError naming ``what``."""
    if not isinstance(text, str):
        raise MessageFormatError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise MessageFormatError(f"{what} is not valid base64: {exc}") from exc


# --- keys ------------------------------------------------------------------
def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    """A private Ed25519 key with its key id."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def keyid(self) -> str:
        return key_id(self.public)

    def private_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> bytes:
        return public_pem(self.public)

    @classmethod
    def from_pem(cls, data: bytes, source: str = "key") -> SigningKey:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{source} is not a PEM Ed25519 private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{source} holds a {type(key).__name__}, edgeloop needs Ed25519")
        return cls(key)

    def signature(self, payload_type: str, payload: bytes) -> Signature:
        return Signature(self.keyid, self.private.sign(pae(payload_type, payload)))

    def sign(self, payload_type: str, payload: bytes) -> dict:
        return self.signature(payload_type, payload).to_dict()


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_pem(data: bytes, source: str = "key") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{source} is not a PEM Ed25519 public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{source} holds a {type(key).__name__}, edgeloop needs Ed25519")
    return key


@dataclass(frozen=True)
class TrustedKeys:
    """The set of public keys an agent accepts signatures from, by key id."""

    keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)

    @classmethod
    def of(cls, publics: Iterable[Ed25519PublicKey]) -> TrustedKeys:
        return cls({key_id(k): k for k in publics})

    @classmethod
    def from_pems(cls, pems: Iterable[bytes]) -> TrustedKeys:
        return cls.of(load_public_pem(p) for p in pems)

    def __len__(self) -> int:
        return len(self.keys)

    def keyids(self) -> list[str]:
        """The ids of the trusted keys, sorted (an agent's state lists them so hubs find their agents)."""
        return sorted(self.keys)


# --- envelope --------------------------------------------------------------
@dataclass(frozen=True)
class Signature:
    """One signature in an envelope: who signed (key id) and the raw Ed25519 signature."""

    keyid: str
    sig: bytes

    def to_dict(self) -> dict:
        return {"keyid": self.keyid, "sig": b64e(self.sig)}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Signature:
        if not isinstance(d, Mapping):
            raise MessageFormatError(f"{where} must be an object with keyid and sig")
        kid = d.get("keyid")
        if not isinstance(kid, str):
            raise MessageFormatError(f"{where}: field 'keyid' must be a string")
        return cls(keyid=kid, sig=b64d(d.get("sig"), f"{where}.sig"))


@dataclass(frozen=True)
class Envelope:
    """The signature document (schema-versioned JSON object).

    Detached (``payload`` None, the bundle's ``manifest.sig``) or carrying its
    payload base64-encoded (a signed command). ``from_dict`` checks the shape only;
    :func:`verify_detached` / :func:`open_envelope` check the payload type and the
    signatures.
    """

    payload_type: str
    signatures: tuple[Signature, ...]
    payload: bytes | None = None
    schema: int = ENVELOPE_SCHEMA

    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "schema": self.schema,
            "payload_type": self.payload_type,
            "signatures": [s.to_dict() for s in self.signatures],
        }
        if self.payload is not None:
            out["payload"] = b64e(self.payload)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], what: str = "envelope") -> Envelope:
        schema = d.get("schema")
        if not is_version(schema, ENVELOPE_SCHEMA):
            raise UnsupportedSchemaError(
                f"{what}: schema {schema!r} is not supported (this version reads schema {ENVELOPE_SCHEMA}); "
                "upgrade the agent if the hub is newer"
            )
        ptype = d.get("payload_type")
        if not isinstance(ptype, str):
            raise MessageFormatError(f"{what}: field 'payload_type' must be a string")
        sigs = d.get("signatures")
        if not isinstance(sigs, list):
            raise MessageFormatError(f"{what}: field 'signatures' must be a list")
        payload = d.get("payload")
        return cls(
            payload_type=ptype,
            signatures=tuple(Signature.from_dict(s, f"{what}.signatures[{i}]") for i, s in enumerate(sigs)),
            payload=b64d(payload, f"{what} payload") if payload is not None else None,
            schema=ENVELOPE_SCHEMA,
        )


@dataclass(frozen=True)
class Signed:
    """The result of a successful verification: the payload and who signed it."""

    payload: bytes
    payload_type: str
    keyid: str


def sign_detached(key: SigningKey, payload_type: str, payload: bytes) -> dict:
    """A signature document for bytes stored elsewhere (the bundle's manifest.json)."""
    return Envelope(payload_type, (key.signature(payload_type, payload),)).to_dict()


def seal(key: SigningKey, payload_type: str, payload: bytes) -> dict:
    """An envelope that carries its payload (used for commands)."""
    return Envelope(payload_type, (key.signature(payload_type, payload),), payload).to_dict()


def _check_signatures(env: Envelope, payload: bytes, expected_type: str, trusted: TrustedKeys) -> Signed:
    if env.payload_type != expected_type:
        raise SignatureError(
            f"envelope carries a {env.payload_type!r} payload where {expected_type!r} was expected"
        )
    if not env.signatures:
        raise SignatureError("envelope has no signatures")
    message = pae(expected_type, payload)
    seen_unknown = []
    for entry in env.signatures:
        pub = trusted.keys.get(entry.keyid)
        if pub is None:
            seen_unknown.append(entry.keyid)
            continue
        try:
            pub.verify(entry.sig, message)
        except InvalidSignature:
            raise SignatureError(
                f"signature by key {entry.keyid} does not match the signed data: it was altered "
                "after signing or signed by another key with the same id"
            ) from None
        return Signed(payload=payload, payload_type=env.payload_type, keyid=entry.keyid)
    raise UntrustedKeyError(
        f"signed by unknown key(s) {', '.join(seen_unknown)}; trusted: "
        f"{', '.join(sorted(trusted.keys)) or 'none'}. Provision the hub's public key on "
        "this agent (trusted_keys in its config) if the signer is legitimate."
    )


def verify_detached(
    signature_doc: bytes, payload: bytes, expected_type: str, trusted: TrustedKeys
) -> Signed:
    """``signature_doc`` (a detached :class:`Envelope`'s JSON) must sign ``payload`` as ``expected_type``."""
    env = Envelope.from_dict(parse_json_object(signature_doc, "signature document"), "signature document")
    return _check_signatures(env, payload, expected_type, trusted)


def open_envelope(envelope: bytes | Mapping[str, Any], expected_type: str, trusted: TrustedKeys) -> Signed:
    """An :class:`Envelope` carrying its payload -> the payload, if a trusted key signed it as ``expected_type``."""
    doc = parse_json_object(envelope, "envelope") if isinstance(envelope, (bytes, bytearray, str)) else envelope
    env = Envelope.from_dict(doc, "envelope")
    if env.payload is None:
        raise MessageFormatError("envelope has no payload: a signed command carries its payload (base64)")
    return _check_signatures(env, env.payload, expected_type, trusted)


# --- signed reports (agent -> hub) ---------------------------------------------------------
def sign_report(key: SigningKey, message: Mapping[str, Any]) -> dict:
    """``message`` (a report's ``to_dict()``: an event, a drift report, the agent's state) with a
    detached :class:`Envelope` under ``"signed"`` that signs the canonical JSON of every other field
    as :data:`REPORT_PAYLOAD_TYPE`. Readers that do not check signatures read the message as before."""
    body = {k: v for k, v in message.items() if k != REPORT_SIGNATURE_FIELD}
    return {**body, REPORT_SIGNATURE_FIELD: sign_detached(key, REPORT_PAYLOAD_TYPE, canonical_json(body))}


def is_signed_report(doc: Mapping[str, Any]) -> bool:
    return REPORT_SIGNATURE_FIELD in doc


def verify_report(doc: Mapping[str, Any], trusted: TrustedKeys) -> Signed:
    """A parsed report (see :func:`sign_report`) -> who signed it, if a key of ``trusted`` did.

    :class:`SignatureError` for an unsigned or altered report, :class:`UntrustedKeyError` for
    one signed by another key; the message fields are checked by the caller's ``from_dict``."""
    env_doc = doc.get(REPORT_SIGNATURE_FIELD)
    if env_doc is None:
        raise SignatureError("the report is not signed (no 'signed' field): agents sign every report "
                             "with their own key; upgrade the agent")
    if not isinstance(env_doc, Mapping):
        raise MessageFormatError("the report's 'signed' field must be a signature envelope (object)")
    env = Envelope.from_dict(env_doc, "report signature")
    if env.payload is not None:
        raise MessageFormatError("a report signature is detached: it signs the report's other fields")
    body = canonical_json({k: v for k, v in doc.items() if k != REPORT_SIGNATURE_FIELD})
    return _check_signatures(env, body, REPORT_PAYLOAD_TYPE, trusted)


def raw_public_key(public: Ed25519PublicKey) -> str:
    """The raw 32 bytes of an Ed25519 public key, base64 (what an agent's state carries)."""
    return b64e(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def load_raw_public_key(text: Any, what: str = "public key") -> Ed25519PublicKey:
    raw = b64d(text, what)
    if len(raw) != 32:
        raise MessageFormatError(f"{what} must be 32 bytes (a raw Ed25519 public key), got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def parse_json_object(data: bytes | bytearray | str, what: str) -> dict:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:  # also: nested too deeply, an integer of over 4,300 digits
        raise MessageFormatError(f"{what} is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(obj, dict):
        raise MessageFormatError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj
