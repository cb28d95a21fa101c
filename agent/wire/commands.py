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
from edgeloop.agent.wire.fields import MAX_JSON_MESSAGE, dumps, load_json, obj, opt, req
from edgeloop.agent.wire.messages import COMMAND_TYPES, Command

MAX_CLOCK_SKEW = 600.0  # seconds a command may claim to come from the future
# how far one command's counter may jump past the last accepted from its key: a hub signs one counter
# per command, so a jump past this is a fault or an attack that would lock the hub out (fast-forward)
MAX_COUNTER_JUMP = 1 << 32


MAX_PROBATION_SECONDS = 7 * 24 * 3600.0  # a probation longer than a command may live makes no sense
MAX_PROBATION_REQUESTS = 1_000_000_000
PROBATION_FIELDS = ("seconds", "min_requests", "require_confirm")


class ProbationArgsError(MessageFormatError):
    """A deploy's ``probation`` argument is malformed: the deploy is refused, nothing is installed."""

    code = "bad_probation"


@dataclass(frozen=True)
class Probation:
    """A deploy's ``probation`` argument (the dead-man switch, docs/protocol.md): after activating, the
    agent keeps the previous version loaded and reverts to it unless, within ``seconds``, the new one
    served ``min_requests`` real requests without failing and -- with ``require_confirm`` -- the hub
    sent a signed ``confirm``."""

    seconds: float
    min_requests: int = 0
    require_confirm: bool = False

    def __post_init__(self) -> None:
        if not (0 < self.seconds <= MAX_PROBATION_SECONDS):  # NaN too
            raise ProbationArgsError(f"deploy.args.probation: seconds must be above 0 and at most "
                                     f"{MAX_PROBATION_SECONDS:.0f} (7 days), got {self.seconds!r}")
        if not 0 <= self.min_requests <= MAX_PROBATION_REQUESTS:
            raise ProbationArgsError(f"deploy.args.probation: min_requests must be 0 to {MAX_PROBATION_REQUESTS}, "
                                     f"got {self.min_requests!r}")

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "min_requests": self.min_requests, "require_confirm": self.require_confirm}

    @classmethod
    def from_dict(cls, d: object, where: str = "deploy.args.probation") -> Probation:
        fields = obj(d, where)
        unknown = sorted(set(fields) - set(PROBATION_FIELDS))
        if unknown:
            raise ProbationArgsError(f"{where}: unknown field(s) {', '.join(unknown)}; known: "
                                     f"{', '.join(PROBATION_FIELDS)} (upgrade the agent if the hub is newer)")
        return cls(seconds=req(fields, "seconds", float, where),
                   min_requests=opt(fields, "min_requests", int, where, 0),
                   require_confirm=opt(fields, "require_confirm", bool, where, False))


def probation_of(cmd: Command) -> Probation | None:
    """The deploy's probation, None when it asks for none (a plain deploy: no dead-man switch)."""
    raw = cmd.args.get("probation") if cmd.command == "deploy" else None
    return None if raw is None else Probation.from_dict(raw)


def confirm_target(cmd: Command) -> str:
    """The bundle a ``confirm`` command confirms (sha256, 64 lowercase hex digits)."""
    sha = req(cmd.args, "bundle_sha256", str, "confirm.args")
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise MessageFormatError("confirm.args: bundle_sha256 must be 64 lowercase hex digits (the bundle to confirm)")
    return sha


@dataclass(frozen=True)
class VerifiedCommand:
    command: Command
    keyid: str


def seal_command(key: SigningKey, command: Command, trust: Mapping | None = None) -> bytes:
    """Sign a command; the bytes go to ``edgeloop/v1/agents/{id}/cmd``. ``trust``: the hub's certificates,
    revocation list and rotation statements, carried unsigned beside the envelope (agent/wire/keychain.py)."""
    env = seal(key, COMMAND_PAYLOAD_TYPE, dumps(command.to_dict()))
    return dumps({**env, "trust": dict(trust)} if trust else env)


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
    probation_of(cmd)  # a malformed probation refuses the deploy before its counter is used
    if cmd.command == "confirm":
        confirm_target(cmd)
    return VerifiedCommand(cmd, signed.keyid)
