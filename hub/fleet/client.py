"""The hub's side of MQTT: fleet state, signed commands, bundle pushes, drift intake.

One paho client (via :class:`agent.mqtt_link.MqttLink`). Its network thread only
queues messages; a worker thread owned by :class:`Fleet` applies them to the
registry and wakes up whoever waits for a command's result. The CLI, the demo
and the GUI all drive the fleet through this class.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from edgeloop.agent.errors import EdgeloopError, MessageFormatError
from edgeloop.agent.mqtt_link import MqttLink, Will
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.bundle import sha256 as sha256_hex
from edgeloop.agent.wire.commands import seal_command
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.agent.wire.messages import (
    AgentState,
    Chunk,
    Command,
    DriftReport,
    Event,
    InferError,
    InferRequest,
    InferResult,
    Message,
    TransferSpec,
    decode,
    decode_infer_reply,
    new_id,
)
from edgeloop.hub.errors import FleetError
from edgeloop.hub.fleet.brokers import BrokerAddress

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_IN_FLIGHT = 16
COMMAND_TTL = 300.0
RECENT_RESULTS = 256
M = TypeVar("M", bound=Message)


@dataclass
class CommandOutcome:
    command_id: str
    ok: bool
    code: str
    message: str
    event: Event | None = None
    seconds: float = 0.0
    details: dict = field(default_factory=dict)


class _Waiter:
    def __init__(self, kinds: tuple[str, ...]) -> None:
        self.kinds = kinds
        self.events: list[Event] = []
        self.cond = threading.Condition()

    def offer(self, ev: Event) -> None:
        with self.cond:
            self.events.append(ev)
            self.cond.notify_all()

    def wait(self, pred: Callable[[Event], bool], timeout: float) -> Event | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev in self.events:
                    if pred(ev):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)


@dataclass
class _Outgoing:
    agent_id: str
    spec: TransferSpec
    data: bytes


class Fleet:
    def __init__(self, broker: BrokerAddress, registry, key: SigningKey, *, actor: str = "hub",
                 on_change: Callable[[str, object], None] | None = None) -> None:
        self.broker = broker
        self.registry = registry
        self.key = key
        self.actor = actor
        self.on_change = on_change  # (kind, obj) for GUIs: "state", "event", "drift"
        self.client_id = f"edgeloop-hub-{uuid.uuid4().hex[:8]}"
        self.reply_topic = f"{topics.ROOT}/hub/{self.client_id}/replies"
        self._q: queue.Queue = queue.Queue()
        self._states: dict[str, AgentState] = {}
        self._status: dict[str, str] = {}
        # the session a status belongs to: that of the newest state known when it arrived,
        # else of the first state after it (see _gone_by_status)
        self._status_session: dict[str, int | None] = {}
        self._waiters: dict[str, _Waiter] = {}
        self._recent: OrderedDict[str, list[Event]] = OrderedDict()  # late waiters still see results
        self._replies: dict[str, tuple[threading.Event, list]] = {}
        self._outgoing: dict[str, _Outgoing] = {}
        self._lock = threading.RLock()  # wait_for() predicates may call agents()
        self._state_cond = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self.link = MqttLink(
            client_id=self.client_id, host=broker.host, port=broker.port, on_message=self._on_message,
            subscriptions=[(topics.all_agents(leaf), 1) for leaf in
                           (topics.STATUS, topics.STATE, topics.EVENTS, topics.DRIFT)] + [(self.reply_topic, 1)],
            on_connect=self._announce,
            will=Will(topics.HUB_STATUS, topics.OFFLINE.encode(), 1, True),
        )

    # --- lifecycle ---------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> Fleet:
        self._worker = threading.Thread(target=self._work, name="fleet-worker", daemon=True)
        self._worker.start()
        self.link.start()
        if not self.link.wait_connected(timeout):
            self.stop()
            raise FleetError(f"cannot reach the MQTT broker at {self.broker.url} within {timeout:.0f} s; "
                             "is it running? (the demo starts one for you)")
        return self

    def stop(self) -> None:
        self.link.stop(final=[(topics.HUB_STATUS, topics.OFFLINE.encode(), 1, True)])
        self._q.put(None)
        if self._worker is not None:
            self._worker.join(timeout=5)

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _announce(self) -> None:
        self.link.publish(topics.HUB_STATUS, topics.ONLINE, qos=1, retain=True)

    # --- network thread: sort only ----------------------------------------------------
    def _on_message(self, topic: str, payload: bytes, msg) -> None:
        if topic == self.reply_topic:
            self._on_reply(payload)
            return
        self._q.put((topic, payload))

    def _on_reply(self, payload: bytes) -> None:
        try:
            reply = decode_infer_reply(payload)
        except EdgeloopError as exc:
            log.warning("unreadable inference reply: %s", exc)
            return
        with self._lock:
            slot = self._replies.get(reply.id)
        if slot is not None:
            slot[1].append(reply)
            slot[0].set()

    # --- worker thread: owns registry writes ---------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            topic, payload = item
            try:
                self._apply(topic, payload)
            except EdgeloopError as exc:
                log.warning("ignored malformed message on %s: %s", topic, exc)
            except Exception:
                log.exception("failed to handle message on %s", topic)

    def _apply(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse_agent_topic(topic)
        if parsed is None:
            return
        agent_id, leaf = parsed
        if leaf == topics.STATUS:
            status = payload.decode("utf-8", "replace").strip()
            if not payload:
                return  # retained message cleared
            with self._state_cond:
                self._status[agent_id] = status
                known = self._states.get(agent_id)
                self._status_session[agent_id] = known.session if known is not None else None
                self._state_cond.notify_all()
            self.registry.mark_agent(agent_id, status)
            self._notify("status", (agent_id, status))
        elif leaf == topics.STATE:
            if not payload:
                return
            st = _decode(payload, AgentState)
            if st.agent_id != agent_id:
                raise MessageFormatError(f"state on {topic} names agent {st.agent_id}")
            with self._state_cond:
                self._states[agent_id] = st
                gone = self._gone_by_status(st)
                self._state_cond.notify_all()
            # status wins: after kill -9 the retained state still says "online" while the
            # Last Will set the status to "offline"; the registry records the agent offline
            self.registry.upsert_agent_state(dataclasses.replace(st, status=topics.OFFLINE) if gone else st)
            self._notify("state", st)
        elif leaf == topics.EVENTS:
            self._handle_event(_decode(payload, Event))
        elif leaf == topics.DRIFT:
            rep = _decode(payload, DriftReport)
            self.registry.add_drift_report(rep)
            if rep.drifted_features:
                log.info("agent %s reports drift on %s", agent_id, ", ".join(rep.drifted_features))
            self._notify("drift", rep)

    def _gone_by_status(self, st: AgentState) -> bool:
        """A state saying online while the status says offline for that same session (the Last Will).

        A status seen before any state (retained messages of a hub that just connected)
        belongs to the first state that follows. A state of a newer session is a new
        birth: its "online" status follows at once. Call with the lock held.
        """
        aid = st.agent_id
        if aid in self._status and self._status_session.get(aid) is None:
            self._status_session[aid] = st.session
        return (st.status == topics.ONLINE and self._status.get(aid) == topics.OFFLINE
                and self._status_session.get(aid) == st.session)

    def _handle_event(self, ev: Event) -> None:
        # the registry first, so whoever wakes up reads a settled deployment; a registry
        # failure is logged and must not hide the result from the waiter
        if ev.event == "transfer_missing":
            self._resend(ev)
        else:
            try:
                self.registry.update_deployment_from_event(ev)
            except Exception:
                log.exception("could not record %s of command %s", ev.event, ev.command_id)
        if ev.command_id:
            with self._lock:
                self._recent.setdefault(ev.command_id, []).append(ev)
                self._recent.move_to_end(ev.command_id)
                while len(self._recent) > RECENT_RESULTS:
                    self._recent.popitem(last=False)
                w = self._waiters.get(ev.command_id)
            if w is not None:
                w.offer(ev)
        self._notify("event", ev)

    def _notify(self, kind: str, obj: object) -> None:
        if self.on_change is not None:
            try:
                self.on_change(kind, obj)
            except Exception:
                log.exception("on_change callback failed")

    # --- fleet view ------------------------------------------------------------------------
    def agents(self) -> dict[str, AgentState]:
        with self._lock:
            return dict(self._states)

    def status(self, agent_id: str) -> str | None:
        """The agent's ``status`` topic as last seen (``online``/``offline``), None if never seen."""
        with self._lock:
            return self._status.get(agent_id)

    def is_online(self, agent_id: str) -> bool:
        """Both the status and the state say online (the status wins where they disagree)."""
        with self._lock:
            st = self._states.get(agent_id)
            return self._status.get(agent_id) == topics.ONLINE and st is not None and st.status == topics.ONLINE

    def wait_for(self, pred: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._state_cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._state_cond.wait(left)
            return True

    def wait_online(self, agent_ids: list[str], timeout: float = 30.0) -> bool:
        return self.wait_for(lambda: all(self.is_online(a) for a in agent_ids), timeout)

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
        payload = raw if raw is not None else seal_command(key or self.key, cmd)
        with self._lock:
            if raw is not None:
                self._waiters[cmd.command_id] = _Waiter(())
                self._recent.pop(cmd.command_id, None)
            else:
                self._waiters.setdefault(cmd.command_id, _Waiter(()))
        self.link.publish(topics.agent_topic(cmd.agent_id, topics.CMD), payload, qos=1)
        return payload

    def wait_result(self, command_id: str, kinds: tuple[str, ...], timeout: float,
                    accept_failed_command_result: bool = True) -> Event | None:
        with self._lock:
            w = self._waiters.get(command_id)
            if w is None:
                w = self._waiters[command_id] = _Waiter(kinds)
                for ev in self._recent.get(command_id, []):
                    w.events.append(ev)

        def pred(ev: Event) -> bool:
            return ev.event in kinds or (accept_failed_command_result and ev.event == "command_result" and not ev.ok)

        return w.wait(pred, timeout)

    def deploy(self, agent_id: str, bundle: bytes, *, model: str, version: str, timeout: float = 120.0,
               chunk_size: int = DEFAULT_CHUNK_SIZE, progress: Callable[[int, int], None] | None = None,
               ) -> CommandOutcome:
        """Send a signed deploy command, stream the bundle in chunks, wait for the install result."""
        started = time.perf_counter()
        sha = sha256_hex(bundle)
        spec = TransferSpec(new_id(), sha, len(bundle), chunk_size, math.ceil(len(bundle) / chunk_size))
        cmd = self.make_command(agent_id, "deploy", {
            "transfer": spec.to_dict(), "bundle_sha256": sha, "model": model, "version": version})
        self.registry.add_deployment(bundle_sha256=sha, agent_id=agent_id, kind="deploy",
                                     command_id=cmd.command_id, counter=cmd.counter, actor=self.actor)
        with self._lock:
            self._outgoing[spec.transfer_id] = _Outgoing(agent_id, spec, bundle)
        try:
            self.send(cmd)
            ack = self.wait_result(cmd.command_id, ("command_result",), min(timeout, 30.0))
            if ack is None:
                return self._timeout(cmd, "the agent did not acknowledge the deploy command", started)
            if not ack.ok:
                return CommandOutcome(cmd.command_id, False, ack.code, ack.message, ack,
                                      time.perf_counter() - started)
            if ack.details.get("chunks", spec.chunks):
                self._send_chunks(agent_id, spec, bundle, range(spec.chunks), progress)
            res = self.wait_result(cmd.command_id, ("install_result",), timeout)
            if res is None:
                return self._timeout(cmd, "no install result from the agent", started)
            return CommandOutcome(cmd.command_id, res.ok, res.code, res.message, res,
                                  time.perf_counter() - started, res.details)
        finally:
            self._forget(cmd.command_id)
            with self._lock:
                self._outgoing.pop(spec.transfer_id, None)

    def _forget(self, command_id: str) -> None:
        """Drop the waiter of a settled command (late events stay in the bounded recent list)."""
        with self._lock:
            self._waiters.pop(command_id, None)

    def rollback(self, agent_id: str, bundle_sha256: str, *, reason: str = "", timeout: float = 60.0,
                 ) -> CommandOutcome:
        started = time.perf_counter()
        cmd = self.make_command(agent_id, "rollback", {"bundle_sha256": bundle_sha256, "reason": reason})
        self.registry.add_deployment(bundle_sha256=bundle_sha256, agent_id=agent_id, kind="rollback",
                                     command_id=cmd.command_id, counter=cmd.counter, actor=self.actor)
        self.send(cmd)
        return self.outcome(cmd.command_id, ("rollback_result",), timeout, started)

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

    def _send_chunks(self, agent_id: str, spec: TransferSpec, data: bytes, indices,
                     progress: Callable[[int, int], None] | None = None) -> None:
        topic = topics.agent_topic(agent_id, topics.BUNDLE)
        window: list = []
        indices = list(indices)
        for n, i in enumerate(indices, 1):
            chunk = Chunk(spec.transfer_id, i, data[i * spec.chunk_size:(i + 1) * spec.chunk_size])
            window.append(self.link.publish(topic, chunk.encode(), qos=1))
            if len(window) >= MAX_IN_FLIGHT:  # flow control: never queue the whole bundle in paho
                window.pop(0).wait_for_publish(timeout=30)
            if progress is not None:
                progress(n, len(indices))
        for info in window:
            info.wait_for_publish(timeout=30)

    def _resend(self, ev: Event) -> None:
        tid = ev.details.get("transfer_id")
        missing = ev.details.get("missing") or []
        if not isinstance(tid, str):
            return
        with self._lock:
            out = self._outgoing.get(tid)
        if out is None or out.agent_id != ev.agent_id:
            return
        idx = [i for i in missing if isinstance(i, int) and 0 <= i < out.spec.chunks]
        log.info("resending %d chunks of transfer %s to %s", len(idx), tid[:8], ev.agent_id)
        threading.Thread(target=self._send_chunks, args=(out.agent_id, out.spec, out.data, idx),
                         daemon=True, name="fleet-resend").start()

    # --- inference (for demos and checks) --------------------------------------------------
    def infer(self, agent_id: str, rows, timeout: float = 10.0, model: str | None = None
              ) -> InferResult | InferError:
        rid = new_id()
        ev = threading.Event()
        slot: tuple[threading.Event, list] = (ev, [])
        with self._lock:
            self._replies[rid] = slot
        try:
            req = InferRequest(id=rid, inputs=rows, model=model, reply_to=self.reply_topic)
            self.link.publish(topics.agent_topic(agent_id, topics.INFER), req.encode(), qos=1)
            if not ev.wait(timeout):
                raise FleetError(f"agent {agent_id} did not answer an inference request within {timeout:.0f} s")
            return slot[1][0]
        finally:
            with self._lock:
                self._replies.pop(rid, None)


def _decode(payload: bytes, cls: type[M]) -> M:
    """Decode a message that must be of type ``cls``."""
    msg = decode(payload, cls)
    if not isinstance(msg, cls):  # decode() checks the type field; this tells the type checker
        raise MessageFormatError(f"expected a {cls.TYPE!r} message")
    return msg
