"""Bundle delivery: signed deploy commands, then the bundle in chunks with flow control,
published once for every agent of the deploy, and chunks sent again to an agent that
reports them missing.

A deploy to several agents is a fan-out: one transfer id and one transfer topic
(``{root}/transfers/{transfer_id}``, named in every signed command) that each agent
subscribes to when it accepts its command. The hub waits for the agents' answers (all of
them, or until none came for :data:`ANSWER_GRACE` seconds), publishes each chunk once on that
topic, and repairs per agent: the chunks an agent reports missing (``transfer_missing``)
go again on that agent's own ``bundle`` topic, and an agent that answered after the
chunks went out gets them there. Agents that already hold the bundle get no chunks. Every
agent's command is followed on its own thread, so one agent that never answers times out
without holding up the others. A deploy to one agent sends the chunks on its own topic.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import paho.mqtt.client as mqtt

from edgeloop.agent.mqtt_link import kept, wait_acked
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.bundle import sha256 as sha256_hex
from edgeloop.agent.wire.commands import Probation
from edgeloop.agent.wire.messages import (
    Chunk,
    Command,
    Event,
    TransferSpec,
    new_id,
)
from edgeloop.hub.errors import FleetError
from edgeloop.hub.fleet.commands import COMMAND_TTL, CommandOutcome, FleetCommands
from edgeloop.hub.fleet.core import Outgoing

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_IN_FLIGHT = 16  # chunks published and not yet acknowledged: never queue a whole bundle in paho
ANSWER_TIMEOUT = 30.0  # seconds an agent has to answer a deploy command (at most the deploy's timeout)
ANSWER_GRACE = 1.0  # seconds the chunks wait for more answers after the latest one
OUTAGE_LOG_S = 5.0  # while the broker is away during a deploy, say so this often
Progress = Callable[[int, int], None]


class DeliveryError(FleetError):
    """A bundle could not be handed to the broker."""

    code = "delivery"


class BrokerOutageError(DeliveryError):
    """The broker stayed away longer than a deploy waits for it."""

    code = "broker_unreachable"


class _FanOut:
    """One bundle on its way to several agents: who answered, and whether the chunks went out."""

    def __init__(self, targets: int) -> None:
        self.targets = targets
        self.answered = 0
        self.waiting = 0  # answered and waiting for chunks
        self.last_answer: float | None = None
        self.closed = False  # answers after this come too late for the shared stream
        self.sent = threading.Event()  # the shared stream is over (or there was none)
        self.failed: DeliveryError | None = None  # why the shared stream stopped short
        self.cond = threading.Condition()

    def answer(self, needs_chunks: bool) -> bool:
        """Count an agent's answer; True if it comes too late to be counted in the shared stream."""
        with self.cond:
            self.answered += 1
            self.last_answer = time.monotonic()
            late = self.closed
            if needs_chunks and not late:
                self.waiting += 1
            self.cond.notify_all()
            return late

    def close(self, deadline: float) -> bool:
        """Wait until every agent answered, or none did for :data:`ANSWER_GRACE` seconds since the
        latest answer, or ``deadline``; then close the list. True if some agent waits for the chunks."""
        with self.cond:
            while self.answered < self.targets:
                until = deadline if self.last_answer is None else min(deadline, self.last_answer + ANSWER_GRACE)
                left = until - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            self.closed = True
            return self.waiting > 0


class FleetDelivery(FleetCommands):
    def _record_event(self, ev: Event) -> None:
        if ev.event != "transfer_missing":  # a request for chunks settles no deployment
            super()._record_event(ev)

    def _deliver_event(self, ev: Event) -> None:
        if ev.event == "transfer_missing":  # once, after the batch: never replayed with a retried write
            self._resend(ev)
        super()._deliver_event(ev)

    def transfer_topic(self, transfer_id: str) -> str:
        """The topic a fan-out deploy publishes its chunks on (every target subscribes to it)."""
        return topics.transfer_topic(transfer_id, self.root)

    def deploy(self, agent_id: str, bundle: bytes, *, model: str, version: str, timeout: float = 120.0,
               chunk_size: int = DEFAULT_CHUNK_SIZE, progress: Progress | None = None,
               probation: Probation | None = None) -> CommandOutcome:
        """Send a signed deploy command, stream the bundle in chunks, wait for the install result."""
        return self.deploy_many([agent_id], bundle, model=model, version=version, timeout=timeout,
                                chunk_size=chunk_size, progress=progress, probation=probation)[agent_id]

    def deploy_many(self, agent_ids: Sequence[str], bundle: bytes, *, model: str, version: str,
                    timeout: float = 120.0, chunk_size: int = DEFAULT_CHUNK_SIZE, progress: Progress | None = None,
                    probation: Probation | None = None, shadow: dict | None = None,
                    memory_limit_mb: int | None = None, drift: dict | None = None) -> dict[str, CommandOutcome]:
        """Deploy ``bundle`` to every agent of ``agent_ids`` at once; one outcome per agent.

        Each agent gets its own signed command (recorded as a deployment); the chunks are
        published once for all of them (see the module docstring). An agent has
        ``min(timeout, max(30, 0.1 × targets))`` s to answer its command and ``timeout`` s after the chunks went
        out to report its install. ``progress(sent, total)`` follows the chunks. With ``probation``
        each agent keeps the previous version ready and reverts on its own unless the new one is
        confirmed (the dead-man switch, docs/protocol.md; :meth:`confirm`). With ``memory_limit_mb`` each
        agent's pre-flight refuses the bundle when its model needs more memory (docs/rollouts.md).
        """
        started = time.perf_counter()
        ids = list(dict.fromkeys(agent_ids))
        if not ids:
            return {}
        sha = sha256_hex(bundle)
        tid = new_id()
        spec = TransferSpec(tid, sha, len(bundle), chunk_size, math.ceil(len(bundle) / chunk_size),
                            topic=self.transfer_topic(tid) if len(ids) > 1 else None)
        args: dict[str, Any] = {"transfer": spec.to_dict(), "bundle_sha256": sha, "model": model, "version": version}
        if probation is not None:
            args["probation"] = probation.to_dict()
        if memory_limit_mb is not None:  # the agent's pre-flight refuses a model that needs more
            args["memory_limit_mb"] = int(memory_limit_mb)
        if drift:  # drift window overrides the agent keeps with this version (docs/protocol.md)
            args["drift"] = dict(drift)
        args.update(shadow or {})  # a shadow deploy: installed beside the live version, not activated
        with self.registry.transaction():  # every agent's counter and deployment row: one commit
            # valid as long as the hub waits for it: the agent abandons the transfer once it expired
            cmds = [self.make_command(aid, "deploy", args, ttl=max(COMMAND_TTL, timeout + 60.0)) for aid in ids]
            for cmd in cmds:
                self.registry.add_deployment(bundle_sha256=sha, agent_id=cmd.agent_id, kind="deploy",
                                             command_id=cmd.command_id, counter=cmd.counter, actor=self.actor,
                                             expires_at=cmd.expires_at)
        with self._lock:
            for aid in ids:
                self._outgoing[_key(tid, aid)] = Outgoing(aid, spec, bundle)
        fan = _FanOut(len(ids))
        outcomes: dict[str, CommandOutcome] = {}
        # a big wave's answers queue up in the hub's intake: 0.1 s more per target beyond 300 agents
        answer_timeout = min(timeout, max(ANSWER_TIMEOUT, 0.1 * len(ids)))

        def follow(cmd: Command) -> None:
            try:
                outcomes[cmd.agent_id] = self._follow_deploy(cmd, spec, bundle, fan, answer_timeout, timeout,
                                                             started)
            except Exception as exc:  # one agent's failure is its own result, never the others'
                log.exception("deploy to %s failed", cmd.agent_id)
                outcomes[cmd.agent_id] = CommandOutcome(cmd.command_id, False, "error", f"deploy failed: {exc}",
                                                        None, time.perf_counter() - started)
                self._fail_pending(cmd.command_id, f"error: deploy failed: {exc}")
            finally:
                self._forget(cmd.command_id)
                with self._lock:
                    self._outgoing.pop(_key(tid, cmd.agent_id), None)

        threads: list[threading.Thread] = []
        try:
            for cmd in cmds:
                self.send(cmd)
                threads.append(threading.Thread(target=follow, args=(cmd,), name=f"deploy-{cmd.agent_id}",
                                                daemon=True))
                threads[-1].start()
            if fan.close(time.monotonic() + answer_timeout):
                try:
                    self._send_chunks(ids[0] if spec.topic is None else None, spec, bundle, range(spec.chunks),
                                      progress)
                except DeliveryError as exc:
                    fan.failed = exc  # every agent waiting for these chunks gets this as its outcome
        except BaseException as exc:  # the hub's own failure (Ctrl-C included): no deployment left pending
            for cmd in cmds:
                self._fail_pending(cmd.command_id, f"error: the hub stopped the deploy ({type(exc).__name__}: {exc})")
            raise
        finally:
            fan.sent.set()
            for t in threads:
                t.join()
            with self._lock:
                for aid in ids:
                    self._outgoing.pop(_key(tid, aid), None)
        return {aid: outcomes[aid] for aid in ids}

    def _fail_pending(self, command_id: str, detail: str) -> None:
        """Mark a deployment failed if it is still pending (logged if even that fails)."""
        try:
            if self.registry.get_deployment(command_id)["status"] == "pending":
                self.registry.update_deployment_status(command_id, "failed", detail, actor=self.actor)
        except Exception:
            log.exception("could not mark the deployment of command %s failed", command_id)

    def _follow_deploy(self, cmd: Command, spec: TransferSpec, bundle: bytes, fan: _FanOut,
                       answer_timeout: float, timeout: float, started: float) -> CommandOutcome:
        """One agent's deploy: its answer, its chunks if it answered late, its install result."""
        ack = self.wait_result(cmd.command_id, ("command_result",), answer_timeout)
        if ack is None:
            return self._timeout(cmd, "the agent did not acknowledge the deploy command", started)
        needs_chunks = bool(ack.ok and ack.details.get("chunks", spec.chunks))
        late = fan.answer(needs_chunks)
        if not ack.ok:
            return CommandOutcome(cmd.command_id, False, ack.code, ack.message, ack, time.perf_counter() - started)
        if needs_chunks:
            fan.sent.wait()
            if fan.failed is not None:
                return self._undelivered(cmd, fan.failed, started)
            if late:
                log.info("agent %s answered after the chunks went out; sending them on its own topic",
                         cmd.agent_id)
                try:
                    self._send_chunks(cmd.agent_id, spec, bundle, range(spec.chunks))
                except DeliveryError as exc:
                    return self._undelivered(cmd, exc, started)
        res = self.wait_result(cmd.command_id, ("install_result",), timeout)
        if res is None:
            return self._timeout(cmd, "no install result from the agent", started)
        return CommandOutcome(cmd.command_id, res.ok, res.code, res.message, res,
                              time.perf_counter() - started, res.details)

    def _undelivered(self, cmd: Command, exc: DeliveryError, started: float) -> CommandOutcome:
        self.registry.update_deployment_status(cmd.command_id, "failed", f"{exc.code}: {exc}", actor=self.actor)
        return CommandOutcome(cmd.command_id, False, exc.code, str(exc), None, time.perf_counter() - started)

    def _send_chunks(self, agent_id: str | None, spec: TransferSpec, data: bytes, indices: Iterable[int],
                     progress: Progress | None = None) -> None:
        """Publish chunks on ``agent_id``'s own bundle topic, or (None) on the transfer's shared topic,
        with at most :data:`MAX_IN_FLIGHT` unacknowledged. A broker outage is waited out (see
        :meth:`_await_ack`); :class:`BrokerOutageError` when it lasts too long."""
        if agent_id is None:
            if spec.topic is None:
                raise ValueError("a transfer without a shared topic needs an agent id")
            topic = spec.topic
        else:
            topic = self.topic(agent_id, topics.BUNDLE)
        window: deque[mqtt.MQTTMessageInfo] = deque()
        indices = list(indices)
        for n, i in enumerate(indices, 1):
            chunk = Chunk(spec.transfer_id, i, data[i * spec.chunk_size:(i + 1) * spec.chunk_size])
            window.append(self._publish_kept(topic, chunk.encode()))
            if len(window) >= MAX_IN_FLIGHT:  # flow control: never queue the whole bundle in paho
                self._await_ack(window.popleft(), spec)
            if progress is not None:
                progress(n, len(indices))
        for info in window:
            self._await_ack(info, spec)

    def _publish_kept(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        """Publish at QoS 1 a message paho keeps until acknowledged (also while the broker is away)."""
        info = self.link.publish(topic, payload, qos=1)
        if not kept(info):
            raise DeliveryError(f"the MQTT client refused a chunk ({mqtt.error_string(info.rc)}); "
                                "nothing more is sent for this deploy")
        return info

    def _await_ack(self, info: mqtt.MQTTMessageInfo, spec: TransferSpec) -> None:
        """Wait for the broker's acknowledgement of one chunk. While the broker is unreachable paho
        keeps the chunk and sends it once reconnected: the wait goes on, logged every
        :data:`OUTAGE_LOG_S` s, for at most ``options.broker_outage_s`` s without an acknowledgement."""
        limit = self.options.broker_outage_s
        started = time.monotonic()
        while not wait_acked(info, OUTAGE_LOG_S):
            waited = time.monotonic() - started
            state = "connected but not acknowledging" if self.link.connected.is_set() else "unreachable"
            if waited >= limit:
                raise BrokerOutageError(
                    f"the broker {self.broker.url} was {state} for {waited:.0f} s while transfer "
                    f"{spec.transfer_id[:8]} was being sent (the limit is {limit:.0f} s); the deploy was stopped. "
                    "Check the broker, then deploy again: agents resume the transfer where it stopped")
            log.warning("broker %s %s for %.0f s; transfer %s waits (up to %.0f s)", self.broker.url, state,
                        waited, spec.transfer_id[:8], limit)

    def _resend(self, ev: Event) -> None:
        tid = ev.details.get("transfer_id")
        missing = ev.details.get("missing") or []
        if not isinstance(tid, str):
            return
        with self._lock:
            out = self._outgoing.get(_key(tid, ev.agent_id))
        if out is None:
            return
        idx = [i for i in missing if isinstance(i, int) and 0 <= i < out.spec.chunks]
        log.info("resending %d chunks of transfer %s to %s", len(idx), tid[:8], ev.agent_id)
        threading.Thread(target=self._resend_quietly, args=(out, idx), daemon=True, name="fleet-resend").start()

    def _resend_quietly(self, out: Outgoing, idx: list[int]) -> None:
        try:
            self._send_chunks(out.agent_id, out.spec, out.data, idx)
        except Exception as exc:  # the agent asks again for what it still misses
            log.warning("resending chunks of transfer %s to %s stopped: %s", out.spec.transfer_id[:8],
                        out.agent_id, exc)


def _key(transfer_id: str, agent_id: str) -> str:
    """The key of one agent's share of a transfer in ``_outgoing``."""
    return f"{transfer_id}/{agent_id}"
