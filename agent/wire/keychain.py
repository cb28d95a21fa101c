"""Which hub keys an agent trusts, and why: pure (no I/O, the caller gives ``now``).

Three ways a hub key K is trusted (docs/security.md, "Root key, certificates, rotation"):

* K is in the agent config's ``trusted_keys``;
* K carries a **certificate** signed by a root key in ``trusted_roots`` (the offline root certifies the
  online hub key: ``not_before``/``not_after``, ``serial``), and no **revocation list** of that root
  names it (lists are serial-numbered; only a higher serial replaces the one kept);
* K was introduced by a **rotation statement** signed by a key trusted through ``trusted_keys`` (or an
  earlier rotation): the old key then stays trusted for commands until the statement's ``grace_until``.

The signed items travel in an unsigned ``"trust"`` field beside a command's envelope
(:data:`TRUST_FIELD`, :func:`trust_document`); each item is a DSSE envelope of its own, so it is believed
only for its own signature -- a broker can strip the field (like dropping the message), never forge one.

Commands need a key valid *now*; a bundle's manifest signature needs a key the agent has ever trusted
and that no root revoked (an expired certificate or a rotated-out key still verifies the bundles it
signed: installing one takes a command by a currently valid key that names its sha256).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeloop.agent.errors import EdgeloopError, MessageFormatError, UntrustedKeyError
from edgeloop.agent.wire.envelope import (
    SigningKey,
    TrustedKeys,
    key_id,
    load_raw_public_key,
    open_envelope,
    raw_public_key,
    seal,
)
from edgeloop.agent.wire.fields import dumps, load_json

CERTIFICATE_PAYLOAD_TYPE = "application/vnd.edgeloop.key-certificate+json"
REVOCATIONS_PAYLOAD_TYPE = "application/vnd.edgeloop.key-revocations+json"
ROTATION_PAYLOAD_TYPE = "application/vnd.edgeloop.key-rotation+json"
TRUST_FIELD = "trust"  # beside a command envelope's fields: {"certificates": [...], "revocations": [...], ...}
TRUST_KINDS = ("revocations", "certificates", "rotations")  # the order they are taken in
SCHEMA = 1
MAX_ITEMS = 32  # of each kind in one trust document; more are ignored (endless data)
MAX_REVOKED = 4096  # key ids in one revocation list
CLOCK_SKEW = 600.0  # seconds a certificate may claim to start in the future


class KeyNotCertifiedError(UntrustedKeyError):
    code = "key_not_certified"


class CertificateExpiredError(UntrustedKeyError):
    code = "certificate_expired"


class KeyRevokedError(UntrustedKeyError):
    code = "key_revoked"


class KeyRetiredError(UntrustedKeyError):
    code = "key_retired"


# --- the signed statements ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Certificate:
    """A root's statement that ``key`` is a hub key from ``not_before`` to ``not_after``."""

    key: Ed25519PublicKey
    root: str  # the root's key id (the signer)
    serial: int
    not_before: float
    not_after: float

    @property
    def keyid(self) -> str:
        return key_id(self.key)

    def payload(self) -> dict:
        return {"schema": SCHEMA, "kind": "key_certificate", "key": raw_public_key(self.key), "key_id": self.keyid,
                "root": self.root, "serial": self.serial, "not_before": self.not_before, "not_after": self.not_after}

    @classmethod
    def from_payload(cls, d: Mapping[str, Any], signer: str) -> Certificate:
        _kind(d, "key_certificate")
        key = load_raw_public_key(d.get("key"), "certificate key")
        if d.get("key_id") != key_id(key):
            raise MessageFormatError(f"certificate names key id {d.get('key_id')!r}, its key's id is {key_id(key)}")
        if d.get("root") != signer:
            raise MessageFormatError(f"certificate names root {d.get('root')!r} but {signer} signed it")
        return cls(key, signer, _int(d, "serial"), _time(d, "not_before"), _time(d, "not_after"))


@dataclass(frozen=True)
class Revocations:
    """A root's list of revoked hub key ids; a list with a higher serial replaces a lower one."""

    root: str
    serial: int
    issued_at: float
    revoked: Mapping[str, str]  # key id -> reason

    def payload(self) -> dict:
        return {"schema": SCHEMA, "kind": "key_revocations", "root": self.root, "serial": self.serial,
                "issued_at": self.issued_at, "revoked": dict(sorted(self.revoked.items()))}

    @classmethod
    def from_payload(cls, d: Mapping[str, Any], signer: str) -> Revocations:
        _kind(d, "key_revocations")
        if d.get("root") != signer:
            raise MessageFormatError(f"revocation list names root {d.get('root')!r} but {signer} signed it")
        rev = d.get("revoked")
        if not isinstance(rev, dict) or len(rev) > MAX_REVOKED or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in rev.items()):
            raise MessageFormatError(f"revocation list: 'revoked' must map at most {MAX_REVOKED} key ids to reasons")
        return cls(signer, _int(d, "serial"), _time(d, "issued_at"), dict(rev))


@dataclass(frozen=True)
class Rotation:
    """The old key's statement: ``new_key`` replaces me; accept me until ``grace_until``."""

    old: str  # the old key's id (the signer)
    new_key: Ed25519PublicKey
    grace_until: float
    issued_at: float

    @property
    def new(self) -> str:
        return key_id(self.new_key)

    def payload(self) -> dict:
        return {"schema": SCHEMA, "kind": "key_rotation", "old_key_id": self.old,
                "new_key": raw_public_key(self.new_key), "new_key_id": self.new, "grace_until": self.grace_until,
                "issued_at": self.issued_at}

    @classmethod
    def from_payload(cls, d: Mapping[str, Any], signer: str) -> Rotation:
        _kind(d, "key_rotation")
        if d.get("old_key_id") != signer:
            raise MessageFormatError(f"rotation names old key {d.get('old_key_id')!r} but {signer} signed it")
        new_key = load_raw_public_key(d.get("new_key"), "rotation's new key")
        if d.get("new_key_id") != key_id(new_key) or key_id(new_key) == signer:
            raise MessageFormatError("rotation's new key id does not match its key (or names the old key)")
        return cls(signer, new_key, _time(d, "grace_until"), _time(d, "issued_at"))


def _kind(d: Mapping[str, Any], kind: str) -> None:
    if d.get("schema") != SCHEMA or d.get("kind") != kind:
        raise MessageFormatError(f"expected a schema {SCHEMA} {kind!r}, got {d.get('kind')!r} "
                                 f"schema {d.get('schema')!r}")


def _int(d: Mapping[str, Any], name: str) -> int:
    v = d.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 2**63:
        raise MessageFormatError(f"field {name!r} must be a positive integer")
    return v


def _time(d: Mapping[str, Any], name: str) -> float:
    v = d.get(name)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
        raise MessageFormatError(f"field {name!r} must be a time (seconds since the epoch)")
    return float(v)


# --- signing (hub side) ---------------------------------------------------------------------------------------
def sign_certificate(root: SigningKey, key: Ed25519PublicKey, serial: int, not_before: float,
                     not_after: float) -> dict:
    if not_after <= not_before:
        raise ValueError("a certificate must end after it starts")
    cert = Certificate(key, root.keyid, serial, not_before, not_after)
    return seal(root, CERTIFICATE_PAYLOAD_TYPE, dumps(cert.payload()))


def sign_revocations(root: SigningKey, serial: int, revoked: Mapping[str, str], issued_at: float) -> dict:
    return seal(root, REVOCATIONS_PAYLOAD_TYPE, dumps(Revocations(root.keyid, serial, issued_at, revoked).payload()))


def sign_rotation(old: SigningKey, new_key: Ed25519PublicKey, grace_until: float, issued_at: float) -> dict:
    return seal(old, ROTATION_PAYLOAD_TYPE, dumps(Rotation(old.keyid, new_key, grace_until, issued_at).payload()))


def trust_document(certificates: Iterable[dict] = (), revocations: Iterable[dict] = (),
                   rotations: Iterable[dict] = ()) -> dict:
    """What travels in :data:`TRUST_FIELD`: signed envelopes, rotations oldest first."""
    return {"certificates": list(certificates), "revocations": list(revocations), "rotations": list(rotations)}


def signer_keyids(envelope: Any) -> list[str]:
    """The key ids an (unverified) envelope says signed it, for choosing the keys to verify with."""
    sigs = envelope.get("signatures") if isinstance(envelope, Mapping) else None
    if not isinstance(sigs, list):
        return []
    return [s["keyid"] for s in sigs[:MAX_ITEMS] if isinstance(s, Mapping) and isinstance(s.get("keyid"), str)]


# --- the keychain -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Keychain:
    """What an agent trusts: its configured keys and roots, plus what signed statements taught it.

    Immutable; :meth:`learn` returns a new keychain. :attr:`accepted` holds the envelopes it took, in
    order, which is all that needs persisting (:meth:`learn` of them again rebuilds the same keychain)."""

    keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)  # trusted_keys of the config
    roots: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)  # trusted_roots of the config
    certificates: Mapping[tuple[str, str], Certificate] = field(default_factory=dict)  # (root, key id) -> newest
    revocations: Mapping[str, Revocations] = field(default_factory=dict)  # root -> highest serial
    learned: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)  # introduced by rotations
    retired: Mapping[str, float] = field(default_factory=dict)  # rotated-out key id -> grace_until
    accepted: tuple[tuple[str, str, dict], ...] = ()  # (kind, what it is about, envelope) taken, in order

    @classmethod
    def of(cls, keys: TrustedKeys, roots: TrustedKeys | None = None) -> Keychain:
        return cls(dict(keys.keys), dict(roots.keys) if roots is not None else {})

    # --- taking statements ---------------------------------------------------------------
    def learn(self, document: Any, now: float) -> tuple[Keychain, list[str]]:
        """Take the valid statements of a trust document; returns the new keychain and one note per
        statement ignored (why) or taken. Never raises on bad input: a bad statement is skipped."""
        if not isinstance(document, Mapping):
            return self, ([] if document is None else ["trust document is not an object: ignored"])
        chain, notes = self, []
        for kind in TRUST_KINDS:
            items = document.get(kind, [])
            if not isinstance(items, list):
                notes.append(f"trust document: {kind!r} is not a list: ignored")
                continue
            for env in items[:MAX_ITEMS]:
                try:
                    chain, note = chain._take(kind, env, now)
                except (EdgeloopError, ValueError, TypeError) as exc:
                    note = f"{kind[:-1]} ignored: {exc}"
                if note:
                    notes.append(note)
        return chain, notes

    def _take(self, kind: str, env: Any, now: float) -> tuple[Keychain, str]:
        if not isinstance(env, Mapping):
            raise MessageFormatError("not a signed envelope (object)")
        if kind == "rotations":
            signer_ids = signer_keyids(env)
            valid = {k: self._known(k) for k in signer_ids if self._command_error(k, now) is None}
            signed = open_envelope(env, ROTATION_PAYLOAD_TYPE, TrustedKeys(valid))
            return self._rotate(Rotation.from_payload(load_json(signed.payload, "rotation"), signed.keyid), env)
        ptype = CERTIFICATE_PAYLOAD_TYPE if kind == "certificates" else REVOCATIONS_PAYLOAD_TYPE
        signed = open_envelope(env, ptype, TrustedKeys(self.roots))
        doc = load_json(signed.payload, kind[:-1])
        if kind == "certificates":
            cert = Certificate.from_payload(doc, signed.keyid)
            have = self.certificates.get((cert.root, cert.keyid))
            if have is not None and have.serial >= cert.serial:
                return self, ""
            return (replace(self, certificates={**self.certificates, (cert.root, cert.keyid): cert},
                            accepted=self._accept(kind, f"{cert.root}/{cert.keyid}", env)),
                    f"certificate {cert.serial} of root {cert.root} for key {cert.keyid} taken")
        rev = Revocations.from_payload(doc, signed.keyid)
        have_rev = self.revocations.get(rev.root)
        if have_rev is not None and have_rev.serial >= rev.serial:
            return self, ("" if have_rev.serial > rev.serial or have_rev == rev else
                          f"revocation list {rev.serial} of root {rev.root} differs from the one kept: ignored")
        return (replace(self, revocations={**self.revocations, rev.root: rev},
                        accepted=self._accept(kind, rev.root, env)),
                f"revocation list {rev.serial} of root {rev.root} taken "
                f"(revokes {', '.join(sorted(rev.revoked)) or 'none'})")

    def _rotate(self, rot: Rotation, env: Mapping[str, Any]) -> tuple[Keychain, str]:
        if rot.old in self.retired:
            return self, "" if rot.new in self.learned or self._certified(rot.new) else \
                f"key {rot.old} already rotated: a second rotation to {rot.new} is ignored"
        learned = dict(self.learned)
        if rot.old in self.keys or rot.old in self.learned:  # a certified key's successor needs its own certificate
            learned[rot.new] = rot.new_key
        return (replace(self, learned=learned, retired={**self.retired, rot.old: rot.grace_until},
                        accepted=self._accept("rotations", rot.old, env)),
                f"key {rot.old} rotated to {rot.new}; the old key is accepted until {rot.grace_until:.0f}")

    def _accept(self, kind: str, about: str, env: Mapping[str, Any]) -> tuple[tuple[str, str, dict], ...]:
        """The accepted statements with ``env`` in place of the one it replaces (same kind and subject)."""
        return (*(a for a in self.accepted if a[:2] != (kind, about)), (kind, about, dict(env)))

    # --- questions ---------------------------------------------------------------------------
    def revoked_by(self, keyid: str) -> Revocations | None:
        return next((r for r in self.revocations.values() if keyid in r.revoked), None)

    def _certified(self, keyid: str) -> list[Certificate]:
        return [c for (root, k), c in self.certificates.items() if k == keyid and root in self.roots]

    def _public(self, keyid: str) -> Ed25519PublicKey | None:
        if keyid in self.keys:
            return self.keys[keyid]
        if keyid in self.learned:
            return self.learned[keyid]
        certs = self._certified(keyid)
        return certs[0].key if certs else None

    def _known(self, keyid: str) -> Ed25519PublicKey:
        key = self._public(keyid)
        if key is None:  # only asked after an error check said the key is known
            raise UntrustedKeyError(f"key {keyid} is not known")
        return key

    def _command_error(self, keyid: str, now: float) -> UntrustedKeyError | None:
        """Why a command signed by ``keyid`` is not accepted now, or None when it is."""
        common = self._error(keyid)
        if common is not None:
            return common
        grace = self.retired.get(keyid)
        if grace is not None and now > grace:
            return KeyRetiredError(
                f"key {keyid} was rotated out and its grace period ended {now - grace:.0f} s ago: the hub signs with "
                "its new key now (run `edgeloop keys show` on the hub; a hub that still signs with the old key "
                "needs its current key file back)")
        if keyid in self.keys or keyid in self.learned:
            return None
        certs = self._certified(keyid)
        if any(c.not_before - CLOCK_SKEW <= now <= c.not_after for c in certs):
            return None
        last = max(certs, key=lambda c: c.not_after)
        if now > last.not_after:
            return CertificateExpiredError(
                f"the certificate of key {keyid} (root {last.root}, serial {last.serial}) expired "
                f"{(now - last.not_after) / 86400:.1f} days ago: certify the hub key again "
                "(`edgeloop keys certify --root ROOT.pem`) and resend")
        return CertificateExpiredError(
            f"the certificate of key {keyid} is not valid before {last.not_before:.0f} (now {now:.0f}): "
            "check the clocks of the hub and this agent")

    def _error(self, keyid: str) -> UntrustedKeyError | None:
        """Revoked, or not known at all (the errors commands and bundles share)."""
        rev = self.revoked_by(keyid)
        if rev is not None:
            return KeyRevokedError(
                f"key {keyid} was revoked by root {rev.root} (list {rev.serial}: {rev.revoked[keyid] or 'no reason'}): "
                "nothing it signs is accepted; sign with a certified key (`edgeloop keys rotate`, then "
                "`edgeloop keys certify --root ROOT.pem`) and rebuild its bundles")
        if self._public(keyid) is not None:
            return None
        if self.roots:
            return KeyNotCertifiedError(
                f"key {keyid} is not in trusted_keys and no certificate from a trusted root "
                f"({', '.join(sorted(self.roots))}) for it came with the message: certify the hub key "
                "(`edgeloop keys certify --root ROOT.pem`) and send again")
        return UntrustedKeyError(
            f"signed by unknown key {keyid}; trusted: {', '.join(self.trusted_keyids()) or 'none'}. Provision the "
            "hub's public key (trusted_keys) or its root (trusted_roots) on this agent if the signer is legitimate.")

    def for_commands(self, signers: Iterable[str], now: float) -> TrustedKeys:
        """The keys among ``signers`` a command may be signed by now; raises the most specific
        :class:`UntrustedKeyError` (revoked, retired, certificate expired, not certified) when none is."""
        return self._pick(signers, lambda k: self._command_error(k, now))

    def for_bundles(self, signers: Iterable[str]) -> TrustedKeys:
        """The keys among ``signers`` that may have signed a bundle: any key this agent trusted at some
        time that no root revoked (a bundle is installed only under a command valid now)."""
        return self._pick(signers, self._error)

    def _pick(self, signers: Iterable[str], error_of: Any) -> TrustedKeys:
        ok: dict[str, Ed25519PublicKey] = {}
        first: UntrustedKeyError | None = None
        for keyid in list(signers)[:MAX_ITEMS]:
            err = error_of(keyid)
            if err is None:
                ok[keyid] = self._known(keyid)
            elif first is None:
                first = err
        if not ok:
            raise first or UntrustedKeyError("the envelope names no signer")
        return TrustedKeys(ok)

    def trusted_keyids(self, now: float | None = None) -> list[str]:
        """The hub keys and roots this agent trusts (now, when given): what its state lists."""
        ids = set(self.keys) | set(self.learned) | set(self.roots) | {k for (_, k) in self.certificates}
        if now is not None:
            ids = {k for k in ids if k in self.roots or self._command_error(k, now) is None}
        return sorted(ids)

    def statements(self) -> dict:
        """The accepted envelopes as a trust document (what an agent persists and learns again at start)."""
        out: dict[str, list[dict]] = {kind: [] for kind in TRUST_KINDS}
        for kind, _, env in self.accepted:
            out[kind].append(env)
        return trust_document(out["certificates"], out["revocations"], out["rotations"])
