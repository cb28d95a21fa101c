"""The hub's MQTT connection to the fleet: agents' state and status, events and drift
reports into the registry, and the hub's view of which agents are online.

One paho client (via :class:`edgeloop.agent.mqtt_link.MqttLink`). Its network thread
only queues messages; a worker thread applies them to the registry and wakes up
whoever waits. :class:`edgeloop.hub.fleet.Fleet` adds commands
(:mod:`.commands`), bundle delivery (:mod:`.delivery`) and inference requests.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self, TypeVar

from edgeloop.agent.errors import EdgeloopError, MessageFormatError
from edgeloop.agent.mqtt_link import MqttLink, Will
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.agent.wire.messages import (
    AgentState,
    DriftReport,
    Event,
    Message,
    TransferSpec,
    decode,
    decode_infer_reply,
)
from edgeloop.hub.errors import FleetError
from edgeloop.hub.fleet.brokers import BrokerAddress

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)


class Waiter:
    """Events for one command id, and a condition to wait on them."""

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
class Outgoing:
    """A bundle being sent to an agent (kept to send missing chunks again)."""

    agent_id: str
    spec: TransferSpec
    data: bytes


class FleetCore:
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
        self._waiters: dict[str, Waiter] = {}
        self._recent: OrderedDict[str, list[Event]] = OrderedDict()  # late waiters still see results
        self._replies: dict[str, tuple[threading.Event, list]] = {}
        self._outgoing: dict[str, Outgoing] = {}
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
    def start(self, timeout: float = 10.0) -> Self:
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

    def __enter__(self) -> Self:
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
        # the registry first, so whoever wakes up reads a settled deployment
        self._record_event(ev)
        self._deliver_event(ev)
        self._notify("event", ev)

    def _record_event(self, ev: Event) -> None:
        """Settle the deployment an event reports; a failure is logged, never hides the event."""
        try:
            self.registry.update_deployment_from_event(ev)
        except Exception:
            log.exception("could not record %s of command %s", ev.event, ev.command_id)

    def _deliver_event(self, ev: Event) -> None:
        """Hand an event to whoever waits for it (see :class:`~edgeloop.hub.fleet.commands.FleetCommands`)."""

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


def _decode(payload: bytes, cls: type[M]) -> M:
    """Decode a message that must be of type ``cls``."""
    msg = decode(payload, cls)
    if not isinstance(msg, cls):  # decode() checks the type field; this tells the type checker
        raise MessageFormatError(f"expected a {cls.TYPE!r} message")
    return msg
