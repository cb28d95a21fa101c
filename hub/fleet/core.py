"""The hub's MQTT connection to the fleet: agents' state and status, events and drift
reports into the registry, and the hub's view of which agents are online.

One paho client (via :class:`edgeloop.agent.mqtt_link.MqttLink`), subscribed under the
fleet's topic root only (:class:`FleetOptions`). Its network thread only queues
messages; a worker thread applies them in batches -- it reads up to ``batch_max``
messages or ``batch_ms`` of them (a batch ends when none follows within ``gap_ms``), then
writes what they say in one registry transaction (should a write fail, the batch is
written again with each write in its own savepoint, so a bad one spoils nothing else)
-- and, once a batch is committed, wakes up whoever waits, so a woken caller reads a
settled registry.

Identity: a message's agent is the one its topic names, never the payload's ``agent_id``; a
state, event or drift report counts only when the key pinned for that agent signed it and it
names that agent (:mod:`.trust`); anything else is refused and logged before it can touch the
registry. Deployments left pending past their command's expiry are settled from the agents'
reported states at start and on every member's state.

Fleet membership: an agent belongs to this hub when its retained state lists the
hub's key id among the keys it trusts. Foreign agents' states are kept as non-member
rows (listed with ``--all``, never audited); their drift reports are not stored.

:class:`edgeloop.hub.fleet.Fleet` adds commands (:mod:`.commands`), bundle delivery
(:mod:`.delivery`) and inference requests. The hub runtime
(:mod:`edgeloop.hub.runtime`) runs one with a fixed client id and a persistent session.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Self, TypeVar

from edgeloop.agent.connect_errors import BrokerConnectError
from edgeloop.agent.connection import BrokerSettings
from edgeloop.agent.errors import EdgeloopError, MessageFormatError
from edgeloop.agent.mqtt_link import MqttLink, Will
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.capture import CAPTURE, capture_filter
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.agent.wire.fields import load_json
from edgeloop.agent.wire.messages import (
    AgentState,
    DriftReport,
    Event,
    Message,
    TransferSpec,
    decode_infer_reply,
)
from edgeloop.agent.wire.serving import ServingReport
from edgeloop.agent.wire.shadow import ShadowReport
from edgeloop.hub.fleet.capture_intake import CaptureIntake
from edgeloop.hub.fleet.trust import RefusedReportError, ReportTrust, UnpinnedReportError
from edgeloop.hub.registry import OFFLINE_GRACE_S

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

INTAKE_LEAVES = (topics.STATUS, topics.STATE, topics.EVENTS, topics.DRIFT, topics.SERVING, topics.SHADOW)
HELD_MAX = 1000  # reports of agents with no pinned key, held until their state pins one
SETTLE_EVERY_S = 30.0  # a quiet worker settles deployments whose command expired this often


@dataclass(frozen=True)
class FleetOptions:
    """How a :class:`FleetCore` connects and ingests.

    One-shot commands use the defaults: a random client id with a clean session, no
    retained hub status. The hub runtime gives its fixed client id, ``persistent=True``
    (the broker keeps its subscriptions and queues QoS 1 reports while it is away) and
    ``announce=True`` (retained ``online``/``offline`` on ``<root>/hub/status``).
    """

    topic_root: str = topics.ROOT
    client_id: str | None = None
    persistent: bool = False
    announce: bool = False
    offline_grace_s: float = OFFLINE_GRACE_S  # offline longer than this: audited (agent.offline)
    batch_max: int = 500  # messages per registry transaction at most
    batch_ms: float = 50.0  # milliseconds per registry transaction at most
    gap_ms: float = 2.0  # a batch ends when no message follows within this (a lone message waits no longer)
    broker_outage_s: float = 120.0  # a deploy waits this long for a broker that went away, then fails clearly
    anchor_keyids: tuple[str, ...] = ()  # the hub's root key ids: an agent whose state lists one is a member too
    key_trust: Callable[[], Mapping | None] | None = None  # certificates etc. sent with commands (hub/keys.py)


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
    def __init__(self, broker: BrokerSettings, registry, key: SigningKey, *, actor: str = "hub",
                 on_change: Callable[[str, object], None] | None = None,
                 options: FleetOptions | None = None) -> None:
        self.broker = broker
        self.registry = registry
        self.key = key
        self.actor = actor
        self.on_change = on_change  # (kind, obj): "status", "state", "event", "drift", "capture", "serving", "shadow"
        self.options = options or FleetOptions()
        self.keyid = key.keyid  # agents whose state lists it are this hub's fleet
        self.fleet_keyids = frozenset({key.keyid, *self.options.anchor_keyids})  # ... or the hub's root
        self.root = topics.check_root(self.options.topic_root)
        self.client_id = self.options.client_id or f"edgeloop-hub-{uuid.uuid4().hex[:8]}"
        self.reply_topic = f"{self.root}/hub/{self.client_id}/replies"
        self._q: queue.Queue = queue.Queue()
        # membership as stored (1 member, 0 foreign, None undecided); loaded at start, kept by the worker
        self._members: dict[str, int | None] = {}
        self._ignored: set[str] = set()  # agents whose reports were dropped (logged once each)
        self._held: deque[tuple[str, bytes]] = deque()  # reports of agents with no pinned key yet
        self._after: list[Callable[[], None]] | None = None  # wake-ups held until the batch commits
        self._writes: list[tuple[str, Callable[[], object]]] | None = None  # the batch's registry writes
        self.ingested = 0  # messages applied (for benchmarks and checks)
        self.batches = 0  # registry transactions they took
        self._states: dict[str, AgentState] = {}
        self._status: dict[str, str] = {}
        # the session a status belongs to: that of the newest state known when it arrived,
        # else of the first state after it (see _gone_by_status)
        self._status_session: dict[str, int | None] = {}
        self._waiters: dict[str, Waiter] = {}
        self._recent: OrderedDict[str, list[Event]] = OrderedDict()  # late waiters still see results
        self._sent_to: OrderedDict[str, str] = OrderedDict()  # command id -> the agent it was sent to
        self._replies: dict[str, tuple[threading.Event, list]] = {}
        self._outgoing: dict[str, Outgoing] = {}
        self._lock = threading.RLock()  # wait_for() predicates may call agents()
        self._state_cond = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self.trust = ReportTrust({})  # the agents' pinned report keys: loaded from the registry at start
        self.captures = CaptureIntake(registry, lambda: self.trust,  # captured field data (.capture_intake)
                                      ack=lambda aid, batch: self._later(lambda: self._ack_capture(aid, batch)))
        self.link = MqttLink(
            client_id=self.client_id, broker=self._session(broker),
            on_message=self._on_message,
            subscriptions=self._subscriptions(),
            on_connect=self._announce,
            will=self._will(),
        )

    def _session(self, settings: BrokerSettings) -> BrokerSettings:
        """``settings`` with this fleet's client id and session kind (persistent for the runtime)."""
        return settings.replace(client_id=self.client_id, persistent=self.options.persistent)

    def _subscriptions(self) -> list[tuple[str, int]]:
        """QoS 1, under this fleet's root only (a persistent session keeps what they match)."""
        return ([(topics.all_agents(leaf, root=self.root), 1) for leaf in INTAKE_LEAVES] + [(self.reply_topic, 1)]
                + [(capture_filter(self.root), 1)])

    def _will(self) -> Will | None:
        """Only the hub runtime speaks for the hub: one-shot commands leave its status alone."""
        if not self.options.announce:
            return None
        return Will(topics.hub_status_topic(self.root), topics.OFFLINE.encode(), 1, True)

    def topic(self, agent_id: str, leaf: str) -> str:
        """An agent's topic under this fleet's root."""
        return topics.agent_topic(agent_id, leaf, root=self.root)

    # --- lifecycle ---------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> Self:
        self._members = self.registry.agent_membership()
        self.trust = ReportTrust(self.registry.agent_keys(), lookup=self._pinned_key)
        self._settle_expired()
        self._worker = threading.Thread(target=self._work, name="fleet-worker", daemon=True)
        self._worker.start()
        try:
            self.link.connect(timeout)  # a specific BrokerConnectError (refused, not authorised, TLS...)
        except BrokerConnectError:
            self.stop()
            raise
        return self

    def _settle_expired(self, agent_id: str | None = None) -> None:
        """Deployments left pending past their command's expiry (a hub that died while it waited,
        an install result lost) are settled from the agents' reported states."""
        for dep in self.registry.settle_expired_deployments(agent_id=agent_id):
            log.info("deployment %s to %s settled as %s: %s", dep["id"], dep["agent_id"], dep["status"],
                     dep["detail"])

    def _pinned_key(self, agent_id: str) -> str | None:
        row = self.registry.get_agent_key(agent_id)
        return None if row is None else row["public_key"]

    def stop(self) -> None:
        goodbye = (topics.hub_status_topic(self.root), topics.OFFLINE.encode(), 1, True)
        self.link.stop(final=[goodbye] if self.options.announce else [])
        self._q.put(None)
        if self._worker is not None:
            self._worker.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _announce(self) -> None:
        if self.options.announce:
            self.link.publish(topics.hub_status_topic(self.root), topics.ONLINE, qos=1, retain=True)

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
            try:
                item = self._q.get(timeout=SETTLE_EVERY_S)
            except queue.Empty:  # quiet: deployments whose command expired meanwhile are settled
                try:
                    self._settle_expired()
                except Exception:
                    log.exception("could not settle expired deployments")
                continue
            if item is None or self._apply_batch(item):
                return

    def _apply_batch(self, first: tuple[str, bytes]) -> bool:
        """Apply ``first`` and the messages that follow it (up to ``batch_max`` messages or
        ``batch_ms``, until none comes within ``gap_ms``): read them all, then write what
        they say in one registry transaction, then wake whoever waits. True when the stop
        marker came."""
        opts = self.options
        deadline = time.monotonic() + opts.batch_ms / 1000.0
        gap = opts.gap_ms / 1000.0
        stop = False
        self._after, self._writes = [], []
        try:
            item, n = first, 0
            while True:
                self._apply_one(*item)
                n += 1
                left = deadline - time.monotonic()
                if n >= opts.batch_max or left <= 0:
                    break
                try:
                    nxt = self._q.get_nowait() if self._q.qsize() else self._q.get(timeout=min(gap, left))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                item = nxt
            self._commit(self._writes)
            self.batches += 1
        except Exception:
            log.exception("the registry did not take a batch of %d fleet messages", len(self._writes or ()))
        finally:
            after, self._after, self._writes = self._after, None, None
            self._wake()
            for fn in after:
                fn()
        return stop

    def _apply_one(self, topic: str, payload: bytes) -> None:
        try:
            self._apply(topic, payload)
        except UnpinnedReportError as exc:
            self._hold(topic, payload, exc)
        except RefusedReportError as exc:
            log.warning("%s", exc)
        except EdgeloopError as exc:
            log.warning("ignored malformed message on %s: %s", topic, exc)
        except Exception:
            log.exception("failed to handle message on %s", topic)
        self.ingested += 1

    def _store(self, what: str, write: Callable[[], object]) -> None:
        """Write to the registry with the batch (at once outside a batch)."""
        if self._writes is None:
            write()
        else:
            self._writes.append((what, write))

    def _commit(self, writes: list[tuple[str, Callable[[], object]]]) -> None:
        """All ``writes`` in one transaction; if that fails, each again in a transaction of its own,
        so that one bad write -- or a transaction that cannot commit -- loses nothing else (it is
        logged). A write must have no effect outside the registry: it may run twice."""
        if not writes:
            return
        try:
            with self.registry.transaction():
                for _, write in writes:
                    write()
            return
        except Exception as exc:
            log.warning("a batch of %d registry writes failed (%s); writing them one by one", len(writes), exc)
        for what, write in writes:
            try:
                with self.registry.transaction():
                    write()
            except Exception:
                log.exception("could not store %s", what)

    def _later(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the registry holds what this batch wrote (at once outside a batch).
        Waiters on the fleet view (:meth:`wait_for`) are woken after every batch."""
        if self._after is None:
            fn()
        else:
            self._after.append(fn)

    def _changed(self, kind: str, obj: object) -> None:
        """Tell ``on_change`` (the GUI) about ``obj`` once the batch is committed."""
        if self.on_change is not None:
            self._later(lambda: self._notify(kind, obj))

    def _wake(self) -> None:
        with self._state_cond:
            self._state_cond.notify_all()

    def _apply(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse_agent_topic(topic, root=self.root)
        if parsed is None:
            return
        agent_id, leaf = parsed  # who sent it: the topic says, the agent's pinned key proves (see .trust)
        if leaf == topics.STATUS:
            if not payload:
                return  # retained message cleared
            self._apply_status(agent_id, payload.decode("utf-8", "replace").strip())
        elif leaf == topics.STATE:
            if not payload:
                return
            doc = load_json(payload, "agent state")
            st = AgentState.from_dict(doc)
            if st.agent_id != agent_id:
                raise RefusedReportError(f"refused a state on the topic of agent {agent_id}: it names agent "
                                         f"{st.agent_id!r}")
            pin = self.trust.check_state(agent_id, doc, not self.fleet_keyids.isdisjoint(st.trusted_keys))
            self._apply_state(st)
            if pin is not None:
                self._store(f"report key of {agent_id}", lambda: self.registry.pin_agent_key(
                    pin.agent_id, pin.public_key, pin.keyid, source="first_use", actor=f"agent:{agent_id}"))
                self._release(agent_id)
        elif leaf == topics.EVENTS:
            self._handle_event(self._report(agent_id, payload, Event))
        elif leaf.startswith(CAPTURE + "/"):  # the signed manifest proves the agent (held while no key is pinned)
            record = self.captures.take(agent_id, leaf, payload, self._store)
            if record is not None:
                self._changed("capture", record)
        elif leaf == topics.SERVING:  # signed like events; not stored, handed to on_change (rollout gates)
            if self._listed(agent_id):
                try:
                    self._changed("serving", self._report(agent_id, payload, ServingReport))
                except UnpinnedReportError:  # never held: the next report supersedes it
                    log.debug("serving report of %s dropped: no key pinned yet", agent_id)
        elif leaf == topics.DRIFT:
            rep = self._report(agent_id, payload, DriftReport)
            if not self._listed(agent_id):
                self._ignore(agent_id, "drift report")
                return
            self._store(f"drift report {rep.window} of {agent_id}", lambda: self.registry.record_drift_report(rep))
            if rep.drifted_features:
                log.info("agent %s reports drift on %s", agent_id, ", ".join(rep.drifted_features))
            self._changed("drift", rep)
        elif leaf == topics.SHADOW:  # a shadow version's comparison with the live one (agent/wire/shadow.py)
            shadow = self._report(agent_id, payload, ShadowReport)
            if not self._listed(agent_id):
                self._ignore(agent_id, "shadow report")
                return
            self._store(f"shadow report {shadow.seq} of {agent_id}", lambda: self.registry.record_shadow_report(shadow))
            self._changed("shadow", shadow)

    def _hold(self, topic: str, payload: bytes, why: UnpinnedReportError) -> None:
        """Keep a report of an agent with no pinned key until its state pins one (bounded: the oldest
        is refused when :data:`HELD_MAX` wait)."""
        if len(self._held) >= HELD_MAX:
            old_topic, _ = self._held.popleft()
            self.trust.refused += 1
            log.warning("refused a report on %s: no key was pinned for its agent while %d reports waited",
                        old_topic, HELD_MAX)
        self._held.append((topic, payload))
        log.info("%s; held until its state pins one", why)

    def _release(self, agent_id: str) -> None:
        """Apply the reports held for ``agent_id``, now that its key is pinned."""
        mine = [(t, p) for t, p in self._held if (topics.parse_agent_topic(t, root=self.root) or ("",))[0] == agent_id]
        if mine:
            self._held = deque(x for x in self._held if x not in mine)
            for topic, payload in mine:
                self._apply_one(topic, payload)

    def _report(self, agent_id: str, payload: bytes, cls: type[M]) -> M:
        """An event or drift report, only if the key pinned for ``agent_id`` (the topic's) signed it
        and it names that agent; else :class:`RefusedReportError`."""
        doc = load_json(payload, cls.TYPE)
        self.trust.check_report(agent_id, doc, cls.TYPE.replace("_", " "))
        msg = cls.from_dict(doc)
        if not isinstance(msg, cls):  # from_dict returns cls; this tells the type checker
            raise MessageFormatError(f"expected a {cls.TYPE!r} message")
        return msg

    def _apply_status(self, agent_id: str, status: str) -> None:
        with self._state_cond:
            self._status[agent_id] = status
            known = self._states.get(agent_id)
            self._status_session[agent_id] = known.session if known is not None else None
        # an agent with no row yet: its state (which says whose fleet it is in) decides; until
        # then the status is only remembered here, and the state's upsert takes it into account
        if agent_id in self._members:
            self._store(f"status of {agent_id}", lambda: self.registry.record_agent_status(
                agent_id, status, grace=self.options.offline_grace_s))
        self._changed("status", (agent_id, status))

    def _apply_state(self, st: AgentState) -> None:
        member = not self.fleet_keyids.isdisjoint(st.trusted_keys)
        with self._state_cond:
            self._states[st.agent_id] = st
            gone = self._gone_by_status(st)
        # status wins: after kill -9 the retained state still says "online" while the
        # Last Will set the status to "offline"; the registry records the agent offline
        stored = dataclasses.replace(st, status=topics.OFFLINE) if gone else st
        self._store(f"state of {st.agent_id}", lambda: self.registry.record_agent_state(
            stored, member=member, grace=self.options.offline_grace_s))
        if member:
            self._store(f"expired deployments of {st.agent_id}", lambda: self._settle_expired(st.agent_id))
        self._members[st.agent_id] = int(member)
        if member:
            self._ignored.discard(st.agent_id)
        self._changed("state", st)

    def _listed(self, agent_id: str) -> bool:
        """In this hub's fleet: a member, or a row no hub decided yet (older registries)."""
        return agent_id in self._members and self._members[agent_id] != 0

    def _ignore(self, agent_id: str, what: str) -> None:
        if agent_id not in self._ignored:
            self._ignored.add(agent_id)
            log.info("ignoring %s of agent %s: it is not in this hub's fleet (its state does not list "
                     "this hub's key %s)", what, agent_id, self.keyid)

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
        # the registry first, so whoever wakes up (after the batch commits) reads a settled deployment
        self._store(f"event {ev.event} of {ev.agent_id}", lambda: self._record_event(ev))
        self._later(lambda: self._deliver_event(ev))
        self._changed("event", ev)

    def _record_event(self, ev: Event) -> None:
        """Settle the deployment an event reports; a failure is logged, never hides the event."""
        try:
            with self.registry.savepoint():
                self.registry.update_deployment_from_event(ev)
                self.registry.add_preflight_from_event(ev)  # a pre-flight's figures and pick (per device)
        except Exception:
            log.exception("could not record %s of command %s", ev.event, ev.command_id)

    def _ack_capture(self, agent_id: str, batch_id: str) -> None:
        """Tell the agent its captured batch is kept (a signed ``capture_ack``; see :mod:`.commands`)."""

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

    def is_member(self, agent_id: str) -> bool:
        """Whether the agent's state, as seen by this connection, lists this hub's key."""
        with self._lock:
            st = self._states.get(agent_id)
            return st is not None and not self.fleet_keyids.isdisjoint(st.trusted_keys)

    def wait_members(self, agent_ids: list[str], timeout: float) -> list[str]:
        """Wait up to ``timeout`` s for each agent's state to name this hub's key (retained
        states arrive right after connecting); returns the ids still not seen as members."""
        self.wait_for(lambda: all(self.is_member(a) for a in agent_ids), timeout)
        return [a for a in agent_ids if not self.is_member(a)]

