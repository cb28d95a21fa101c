"""Signed commands to agents: counters from the registry, sealing with the hub key, and
waiting for the agent's answer (an event naming the command id)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from edgeloop.agent.wire import topics
from edgeloop.agent.wire.commands import seal_command
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.agent.wire.messages import (
    Command,
    Event,
    new_id,
)
from edgeloop.hub.fleet.core import FleetCore, Waiter

log = logging.getLogger(__name__)

COMMAND_TTL = 300.0  # seconds a signed command stays valid
RECENT_RESULTS = 256  # events kept for callers that start waiting after the answer came
SENT_REMEMBERED = 4096  # commands whose addressee is remembered (answers from anyone else are ignored)


@dataclass
class CommandOutcome:
    command_id: str
    ok: bool
    code: str
    message: str
    event: Event | None = None
    seconds: float = 0.0
    details: dict = field(default_factory=dict)


class FleetCommands(FleetCore):
    def _deliver_event(self, ev: Event) -> None:
        if ev.command_id:
            with self._lock:
                sent_to = self._sent_to.get(ev.command_id)
                if sent_to is not None and sent_to != ev.agent_id:
                    log.warning("agent %s answered command %s, which went to %s: ignored", ev.agent_id,
                                ev.command_id, sent_to)
                    return
                self._recent.setdefault(ev.command_id, []).append(ev)
                self._recent.move_to_end(ev.command_id)
                while len(self._recent) > RECENT_RESULTS:
                    self._recent.popitem(last=False)
                w = self._waiters.get(ev.command_id)
            if w is not None:
                w.offer(ev)

    def _ack_capture(self, agent_id: str, batch_id: str) -> None:
        """A signed ``capture_ack``: the batch is in the registry, the agent may delete it (not answered)."""
        try:
            cmd = self.make_command(agent_id, "capture_ack", {"batch_id": batch_id})
            self.send(cmd)
            self._forget(cmd.command_id)
        except Exception:  # the agent sends the batch again, and is acknowledged then
            log.exception("could not acknowledge capture batch %s of %s", batch_id, agent_id)

    # --- commands ------------------------------------------------------------------------------
    def make_command(self, agent_id: str, command: str, args: dict, ttl: float = COMMAND_TTL) -> Command:
        now = time.time()
        return Command(command=command, command_id=new_id(), agent_id=topics.check_agent_id(agent_id),
                       counter=self.registry.next_counter(self.key.keyid), issued_at=now,
                       expires_at=now + ttl, args=args)

    def send(self, cmd: Command, key: SigningKey | None = None, raw: bytes | None = None) -> bytes:
        """Sign (with ``key`` or the hub key) and publish; returns the exact bytes sent.

        With ``raw``, publish those bytes as they are (used to show that a replayed
        command is refused); earlier results for the same command id are forgotten.
        """
        trust = self.options.key_trust() if self.options.key_trust is not None else None
        payload = raw if raw is not None else seal_command(key or self.key, cmd, trust)
        with self._lock:
            self._sent_to[cmd.command_id] = cmd.agent_id
            while len(self._sent_to) > SENT_REMEMBERED:
                self._sent_to.popitem(last=False)
            if raw is not None:
                self._waiters[cmd.command_id] = Waiter(())
                self._recent.pop(cmd.command_id, None)
            else:
                self._waiters.setdefault(cmd.command_id, Waiter(()))
        self.link.publish(self.topic(cmd.agent_id, topics.CMD), payload, qos=1)
        return payload

    def wait_result(self, command_id: str, kinds: tuple[str, ...], timeout: float,
                    accept_failed_command_result: bool = True) -> Event | None:
        with self._lock:
            w = self._waiters.get(command_id)
            if w is None:
                w = self._waiters[command_id] = Waiter(kinds)
                for ev in self._recent.get(command_id, []):
                    w.events.append(ev)

        def pred(ev: Event) -> bool:
            return ev.event in kinds or (accept_failed_command_result and ev.event == "command_result" and not ev.ok)

        return w.wait(pred, timeout)

    def _forget(self, command_id: str) -> None:
        """Drop the waiter of a settled command (late events stay in the bounded recent list)."""
        with self._lock:
            self._waiters.pop(command_id, None)

    def rollback(self, agent_id: str, bundle_sha256: str, *, reason: str = "", timeout: float = 60.0,
                 ) -> CommandOutcome:
        started = time.perf_counter()
        cmd = self.make_command(agent_id, "rollback", {"bundle_sha256": bundle_sha256, "reason": reason})
        self.registry.add_deployment(bundle_sha256=bundle_sha256, agent_id=agent_id, kind="rollback",
                                     command_id=cmd.command_id, counter=cmd.counter, actor=self.actor,
                                     expires_at=cmd.expires_at)
        self.send(cmd)
        return self.outcome(cmd.command_id, ("rollback_result",), timeout, started)

    def confirm(self, agent_id: str, bundle_sha256: str, *, timeout: float = 30.0) -> CommandOutcome:
        """Send a signed ``confirm`` of the bundle on probation on the agent (the dead-man switch) and wait
        for its answer: ok, or ``not_on_probation`` (it reverted already, or another version is on probation)."""
        started = time.perf_counter()
        cmd = self.make_command(agent_id, "confirm", {"bundle_sha256": bundle_sha256})
        self.send(cmd)
        return self.outcome(cmd.command_id, ("command_result",), timeout, started)

    def outcome(self, command_id: str, kinds: tuple[str, ...], timeout: float, started: float | None = None,
                ) -> CommandOutcome:
        started = time.perf_counter() if started is None else started
        try:
            ev = self.wait_result(command_id, kinds, timeout)
        finally:
            self._forget(command_id)
        if ev is None:
            return CommandOutcome(command_id, False, "timeout", f"no answer within {timeout:.0f} s", None,
                                  time.perf_counter() - started)
        return CommandOutcome(command_id, ev.ok, ev.code, ev.message, ev, time.perf_counter() - started,
                              ev.details)

    def _timeout(self, cmd: Command, why: str, started: float) -> CommandOutcome:
        self.registry.update_deployment_status(cmd.command_id, "failed", f"timeout: {why}", actor=self.actor)
        return CommandOutcome(cmd.command_id, False, "timeout", f"{why} (is agent {cmd.agent_id} online?)",
                              None, time.perf_counter() - started)
