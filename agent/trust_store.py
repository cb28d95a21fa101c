"""The agent's keychain on disk: ``<state_dir>/trust.json`` holds the signed statements it accepted.

:class:`AgentTrust` joins the config (``trusted_keys``, ``trusted_roots``) with what certificates,
revocation lists and rotation statements taught the agent (:mod:`edgeloop.agent.wire.keychain`, pure),
saves every change durably **before** the message that brought it is acted on, and verifies commands
and bundles with the keys valid for them. At start the saved statements are checked again, one by
one, against the configured keys and roots (a statement that no longer verifies is dropped).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from edgeloop.agent.errors import KeyFileError, MessageFormatError
from edgeloop.agent.fsutil import atomic_write_json
from edgeloop.agent.wire.bundle import DEFAULT_MAX_BUNDLE, VerifiedBundle, read_container, verify_raw
from edgeloop.agent.wire.commands import VerifiedCommand, verify_command
from edgeloop.agent.wire.envelope import TrustedKeys, parse_json_object
from edgeloop.agent.wire.fields import MAX_JSON_MESSAGE
from edgeloop.agent.wire.keychain import TRUST_FIELD, Keychain, signer_keyids

log = logging.getLogger("edgeloop.agent.trust")

TRUST_FILE = "trust.json"


class AgentTrust:
    """What this agent trusts now; thread-safe (the control thread learns, others read)."""

    def __init__(self, keys: TrustedKeys, roots: TrustedKeys, state_dir: Path,
                 clock: Callable[[], float]) -> None:
        self.path = Path(state_dir) / TRUST_FILE
        self.clock = clock
        self._lock = threading.Lock()
        chain = Keychain.of(keys, roots)
        saved = self._read()
        if saved is not None:
            chain, notes = chain.learn(saved, clock())
            for note in notes:
                if "ignored" in note:
                    log.warning("%s: %s", self.path, note)
        self.chain = chain

    def _read(self) -> Mapping | None:
        try:
            return parse_json_object(self.path.read_bytes(), str(self.path))
        except FileNotFoundError:
            return None
        except (OSError, MessageFormatError) as exc:  # a damaged file: the config's keys still hold
            log.error("%s cannot be read (%s): starting from the configured keys and roots; the hub sends its "
                      "certificates, revocations and rotations again with every command", self.path, exc)
            return None

    # --- learning ------------------------------------------------------------------------------
    def learn(self, document: object) -> list[str]:
        """Take a trust document (see :func:`edgeloop.agent.wire.keychain.trust_document`); saved
        before this returns. Returns what was taken or ignored."""
        if document is None:
            return []
        with self._lock:
            chain, notes = self.chain.learn(document, self.clock())
            if chain.accepted != self.chain.accepted:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_json(self.path, chain.statements())
                except OSError as exc:
                    raise KeyFileError(f"cannot save {self.path}: {exc}; free space in the state folder",
                                       code="disk_full" if exc.errno == 28 else "store") from exc
                self.chain = chain
        for note in notes:
            log.info("trust: %s", note)
        return notes

    # --- verifying ------------------------------------------------------------------------------
    def verify_command(self, envelope: bytes, agent_id: str, now: float,
                       last_counters: Mapping[str, int]) -> VerifiedCommand:
        """:func:`~edgeloop.agent.wire.commands.verify_command` with the keys valid now, after taking
        the statements that came with the command."""
        if len(envelope) > MAX_JSON_MESSAGE:
            raise MessageFormatError(f"command of {len(envelope)} bytes exceeds {MAX_JSON_MESSAGE}")
        doc = parse_json_object(envelope, "command envelope")
        self.learn(doc.get(TRUST_FIELD))
        signers = signer_keyids(doc)  # none: verify_command names what is wrong with the envelope
        trusted = self.chain.for_commands(signers, now) if signers else TrustedKeys({})
        return verify_command(envelope, trusted, agent_id, now, last_counters)

    def verify_bundle(self, data: bytes, max_size: int = DEFAULT_MAX_BUNDLE) -> VerifiedBundle:
        """:func:`~edgeloop.agent.wire.bundle.verify_bundle` with every key this agent ever trusted
        that no root revoked."""
        raw = read_container(data, max_size)
        try:
            sig = json.loads(raw.signature)
        except (ValueError, RecursionError):
            sig = None
        signers = signer_keyids(sig)  # none: verify_raw names what is wrong with manifest.sig
        return verify_raw(raw, self.chain.for_bundles(signers) if signers else TrustedKeys({}))

    def keyids(self) -> list[str]:
        """The hub keys valid now and the roots: what the agent's state lists (``trusted_keys``)."""
        return self.chain.trusted_keyids(self.clock())
