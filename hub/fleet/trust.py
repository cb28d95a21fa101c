"""Which agent a report comes from: the topic says who, the agent's pinned key proves it.

Every agent signs its events, drift reports and retained state with its own Ed25519 key
(:func:`edgeloop.agent.wire.envelope.sign_report`); its state carries the public key
(``report_key``). The hub pins one key per agent id (registry table ``agent_keys``):

* at enrollment, by the operator (:meth:`edgeloop.hub.services.Hub.pin_agent_key`, from the
  agent's ``agent_key.pub.pem``) -- the strong way: no message can choose the key;
* else on first use: the first signed state of a member agent (its state lists this hub's
  key) whose signature its own ``report_key`` verifies.

From then on a report counts only when the key pinned for the agent its **topic** names
signed it and the agent id inside equals the topic's; anything else is refused and logged
(:class:`RefusedReportError`), before it can touch the registry. Events and drift reports
of an agent with no pinned key yet are held (:class:`UnpinnedReportError`, bounded) until its
state pins one: a hub's queued messages may reach it before the agent's retained state. A
state that is not signed is still taken from an agent with no pinned key (older agents), never
once a key is pinned. See
docs/security.md ("Agent keys") for the limits of trust on first use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeloop.agent.errors import EdgeloopError
from edgeloop.agent.wire.envelope import (
    REPORT_KEY_FIELD,
    TrustedKeys,
    is_signed_report,
    key_id,
    load_raw_public_key,
    verify_report,
)

log = logging.getLogger(__name__)


class RefusedReportError(EdgeloopError):
    """A report whose sender is not who its topic says, or whose signature does not hold."""

    code = "refused_report"


class UnpinnedReportError(RefusedReportError):
    """A report of an agent with no pinned key yet: held until its state pins one (its queued reports
    may reach a hub before its retained state does)."""

    code = "unpinned_report"


@dataclass(frozen=True)
class NewPin:
    """A key to pin on first use (written with the batch that takes the state)."""

    agent_id: str
    public_key: str  # raw, base64
    keyid: str


class ReportTrust:
    """The pinned keys (loaded from the registry at start) and the checks of every report."""

    def __init__(self, pins: dict[str, str], lookup: Callable[[str], str | None] = lambda agent_id: None) -> None:
        self._pins: dict[str, Ed25519PublicKey] = {}
        self._raw: dict[str, str] = {}
        self._lookup = lookup  # the registry's pin now (an operator may pin or forget while the hub runs)
        for agent_id, raw in pins.items():
            self._take(agent_id, raw)
        self.refused = 0  # reports refused (for tests and benchmarks)

    def _take(self, agent_id: str, raw: str | None) -> None:
        self._pins.pop(agent_id, None)
        self._raw.pop(agent_id, None)
        if raw is None:
            return
        try:
            self._pins[agent_id] = load_raw_public_key(raw, f"pinned key of {agent_id}")
            self._raw[agent_id] = raw
        except EdgeloopError as exc:
            log.error("the registry's pinned key of agent %s is unreadable (%s): its reports are refused "
                      "until the key is pinned again", agent_id, exc)

    def _refreshed(self, agent_id: str) -> bool:
        """Read the agent's pin from the registry again; True if it changed."""
        try:
            raw = self._lookup(agent_id)
        except Exception:
            log.exception("could not read the pinned key of agent %s", agent_id)
            return False
        if raw == self._raw.get(agent_id):
            return False
        self._take(agent_id, raw)
        return True

    def pinned(self, agent_id: str) -> str | None:
        return self._raw.get(agent_id)

    def check_state(self, agent_id: str, doc: dict[str, Any], member: bool) -> NewPin | None:
        """Raise :class:`RefusedReportError` for a state the pinned key did not sign; a key to pin
        when this is a member's first signed state."""
        pinned = self._pins.get(agent_id)
        if pinned is not None:
            self._verify(agent_id, doc, pinned, "state")
            return None
        if not member:
            return None  # no key pinned, none to pin: a foreign agent's key is none of this hub's business
        if self._refreshed(agent_id):
            return self.check_state(agent_id, doc, member)
        if not is_signed_report(doc):
            return None  # an agent that does not sign yet: its state is taken, its reports are not
        raw = doc.get(REPORT_KEY_FIELD)
        try:
            key = load_raw_public_key(raw, "report_key of the state")
        except EdgeloopError as exc:
            raise self._refuse(agent_id, "state", f"its report_key is unusable: {exc}") from None
        self._verify(agent_id, doc, key, "state")
        self._pins[agent_id] = key
        self._raw[agent_id] = str(raw)
        log.info("pinned the report key %s of agent %s (trust on first use)", key_id(key), agent_id)
        return NewPin(agent_id, str(raw), key_id(key))

    def check_report(self, agent_id: str, doc: dict[str, Any], what: str) -> None:
        """Raise :class:`RefusedReportError` unless the key pinned for ``agent_id`` (the topic's)
        signed ``doc`` and ``doc`` names that agent."""
        pinned = self._pins.get(agent_id)
        if pinned is None and self._refreshed(agent_id):
            pinned = self._pins.get(agent_id)
        if pinned is None:
            raise UnpinnedReportError(f"a {what} on the topic of agent {agent_id}, for which no key is pinned yet "
                                      "(its signed state was not seen; or pin its agent_key.pub.pem on the hub)")
        self._verify(agent_id, doc, pinned, what)
        named = doc.get("agent_id")
        if named != agent_id:
            raise self._refuse(agent_id, what, f"it names agent {named!r}, not the agent of its topic")

    def forget(self, agent_id: str) -> None:
        self._pins.pop(agent_id, None)
        self._raw.pop(agent_id, None)

    def _verify(self, agent_id: str, doc: dict[str, Any], key: Ed25519PublicKey, what: str) -> None:
        try:
            verify_report(doc, TrustedKeys.of([key]))
        except EdgeloopError as exc:
            if key is self._pins.get(agent_id) and self._refreshed(agent_id) and agent_id in self._pins:
                self._verify(agent_id, doc, self._pins[agent_id], what)  # pinned anew meanwhile
                return
            raise self._refuse(agent_id, what, str(exc)) from None

    def _refuse(self, agent_id: str, what: str, why: str) -> RefusedReportError:
        self.refused += 1
        return RefusedReportError(f"refused a {what} on the topic of agent {agent_id}: {why}")
