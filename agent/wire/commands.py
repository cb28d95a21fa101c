"""Signed commands: sealing (hub side) and pure verification (agent side).

A command is acted on only if its envelope is signed by a trusted key, it names
this agent, it has not expired, and its counter is higher than any counter this
agent has accepted from that key (replay protection; the agent persists the
counters). Verification touches no disk or network: the caller supplies ``now``
and the counters and persists the new counter *before* acting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgeloop.agent.errors import (
    ExpiredCommandError,
    MessageFormatError,
    ReplayError,
    UnknownCommandError,
    WrongTargetError,
)
from edgeloop.agent.wire.envelope import (
    COMMAND_PAYLOAD_TYPE,
    SigningKey,
    TrustedKeys,
    open_envelope,
    parse_json_object,
    seal,
)
from edgeloop.agent.wire.fields import MAX_JSON_MESSAGE, dumps, load_json
from edgeloop.agent.wire.messages import COMMAND_TYPES, Command

MAX_CLOCK_SKEW = 600.0  # seconds a command may claim to come from the future
# how far one command's counter may jump past the last accepted from its key: a hub signs one counter
# per command, so a jump past this is a fault or an attack that would lock the hub out (fast-forward)
MAX_COUNTER_JUMP = 1 << 32


@dataclass(frozen=True)
class VerifiedCommand:
    command: Command
    keyid: str


def seal_command(key: SigningKey, command: Command) -> bytes:
    """Sign a command; the bytes go to ``edgeloop/v1/agents/{id}/cmd``."""
    return dumps(seal(key, COMMAND_PAYLOAD_TYPE, dumps(command.to_dict())))


def verify_command(
    envelope: bytes,
    trusted: TrustedKeys,
    agent_id: str,
    now: float,
    last_counters: Mapping[str, int],
) -> VerifiedCommand:
    """Bytes from the cmd topic -> a command this agent may act on, or a specific error."""
    if len(envelope) > MAX_JSON_MESSAGE:
        raise MessageFormatError(f"command of {len(envelope)} bytes exceeds {MAX_JSON_MESSAGE}")
    doc = parse_json_object(envelope, "command envelope")
    signed = open_envelope(doc, COMMAND_PAYLOAD_TYPE, trusted)
    cmd = Command.from_dict(load_json(signed.payload, "command"))
    if cmd.agent_id != agent_id:
        raise WrongTargetError(f"command {cmd.command_id} is for agent {cmd.agent_id!r}, not this agent ({agent_id!r})")
    if now > cmd.expires_at:
        raise ExpiredCommandError(
            f"command {cmd.command_id} expired {now - cmd.expires_at:.0f} s ago; issue a new one"
        )
    if cmd.issued_at > now + MAX_CLOCK_SKEW:
        raise ExpiredCommandError(
            f"command {cmd.command_id} claims to be issued {cmd.issued_at - now:.0f} s in the future; check clocks"
        )
    last = last_counters.get(signed.keyid, 0)
    if cmd.counter <= last:
        raise ReplayError(
            f"command {cmd.command_id} has counter {cmd.counter}, not above {last} already accepted from key "
            f"{signed.keyid}: a replay (or a duplicate delivery), refused"
        )
    if cmd.counter - last > MAX_COUNTER_JUMP:
        raise ReplayError(
            f"command {cmd.command_id} has counter {cmd.counter}, more than {MAX_COUNTER_JUMP} past {last} accepted "
            f"from key {signed.keyid}: refused, so that one command cannot lock the hub out (see docs/security.md, "
            "\"Counters\")", code="counter_jump")
    if cmd.command not in COMMAND_TYPES:
        raise UnknownCommandError(f"unknown command {cmd.command!r}; this agent knows {', '.join(COMMAND_TYPES)}")
    return VerifiedCommand(cmd, signed.keyid)
