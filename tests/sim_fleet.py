"""N simulated agents (:class:`tests.sim_agent.SimAgent`) in one process, each its own real paho
client and MQTT connection, all driven by ONE thread over one ``selectors`` loop.

No paho network thread per agent: every client is used through paho's external-loop interface
(``on_socket_open`` / ``on_socket_register_write`` / ``loop_read`` / ``loop_write`` /
``loop_misc``), so a thousand connections cost one thread and a file descriptor each
(``RLIMIT_NOFILE`` is raised to its hard limit at start). Every callback -- and so every agent --
runs on that thread; other threads talk to the fleet through :meth:`SimFleet.call`. Each client
connects with the agent's client id (``edgeloop-agent-<id>``), MQTT 5, a clean session and the
retained ``offline`` status as its Last Will, like the real agent. A connection that drops stays down
(no reconnect: a test that drops the broker would see it). A clean :meth:`SimFleet.stop` waits for its
last messages' acknowledgements before it disconnects, so the broker never fires the Last Will for it.

    with SimFleet(broker.address, [SimAgent(...), ...]) as sims:   # connected, birth states sent
        ...
        sims.kill(["sim-0007"])   # dropped without DISCONNECT: the broker publishes its Last Will

:class:`SimFleetProcess` runs such a fleet in a child process of its own (spawned), so that a hub in the
calling process does not share its interpreter lock with a thousand agents; the parent asks it for a
``summary()`` (versions, events, errors) over a pipe.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import paho.mqtt.client as mqtt

from tests.sim_agent import Action, Publish, SimAgent, Subscribe, Unsubscribe

log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT_BATCH = 64  # TCP connects started per loop turn (the broker accepts them while we go on)
TICK_S = 0.5  # SimAgent.tick (transfers, probation), as the real control thread
MISC_S = 1.0  # paho's loop_misc (keepalive pings, timeouts) for every client


def raise_nofile() -> tuple[int, int]:
    """The soft limit of open files up to the hard one; returns (soft, hard) now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class SimFleet:
    """See the module docstring. ``address`` has ``host`` and ``port`` (a ``BrokerSettings``)."""

    def __init__(self, address: Any, agents: Sequence[SimAgent], *, keepalive: int = 60) -> None:
        self.host, self.port = address.host, int(address.port)
        self.keepalive = keepalive
        self.agents = {a.id: a for a in agents}
        soft, _ = raise_nofile()
        if soft < 3 * len(agents) + 64:
            raise RuntimeError(f"{len(agents)} simulated agents need about {3 * len(agents)} open files; the limit "
                               f"is {soft} (raise it with ulimit -n)")
        self.clients: dict[str, mqtt.Client] = {}
        self.connected: set[str] = set()
        self.refused: dict[str, str] = {}  # agent id -> CONNACK reason (never connected)
        self.received = 0  # messages delivered to agents
        self.sent = 0  # messages published by agents
        self.errors: list[str] = []  # exceptions raised by an agent or a callback (a test fails on any)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._calls: queue.Queue[tuple[Callable[[], Any], Future]] = queue.Queue()
        self._to_connect: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> SimFleet:
        """Connect every agent (their birth states go out on CONNACK); wait until all are connected."""
        for a in self.agents.values():
            self.clients[a.id] = self._client(a)
        self._to_connect = list(self.agents)
        self._thread = threading.Thread(target=self._run, name="sim-fleet", daemon=True)
        self._thread.start()
        if not self.wait(lambda: len(self.connected) + len(self.refused) >= len(self.agents), timeout):
            raise TimeoutError(f"{len(self.connected)} of {len(self.agents)} simulated agents connected within "
                               f"{timeout:.0f} s ({len(self.refused)} refused)")
        if self.refused:
            raise ConnectionError(f"the broker refused {len(self.refused)} simulated agents, e.g. "
                                  f"{next(iter(self.refused.items()))}")
        return self

    def stop(self, clean: bool = True, timeout: float = 10.0, forget: bool = False) -> None:
        """Stop: with ``clean`` every agent publishes its offline state and status (``forget``: clears both
        retained messages) and disconnects."""
        if self._thread is None:
            return
        if clean:  # the last words acknowledged first: closing on unread PUBACKs resets the connection, and the
            with contextlib.suppress(Exception):  # broker then drops the DISCONNECT and publishes the Last Will
                infos = self.call(lambda: self._goodbye(forget), timeout)
                self.wait(lambda: all(i.is_published() for i in infos), timeout)
                self.call(lambda: [self.clients[aid].disconnect() for aid in list(self.connected)], timeout)
                self.wait(lambda: not self.connected, timeout)
        self._stop.set()
        self._wake()
        self._thread.join(timeout)
        self._thread = None
        for c in self.clients.values():
            with contextlib.suppress(Exception):
                c._sock_close()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> SimFleet:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- from other threads ---------------------------------------------------------------------
    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run ``fn`` on the fleet's thread (where the agents live) and return what it returns."""
        fut: Future = Future()
        self._calls.put((fn, fut))
        self._wake()
        return fut.result(timeout)

    def wait(self, pred: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``pred()`` holds (checked after every loop turn, on the fleet's thread)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def kill(self, agent_ids: Iterable[str]) -> None:
        """Drop these agents' connections without DISCONNECT (a power cut: the broker sends the Last Will)."""
        ids = list(agent_ids)

        def drop() -> None:
            for aid in ids:
                c = self.clients[aid]
                sock = c.socket()
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                self.connected.discard(aid)
                c._sock_close()
        self.call(drop)

    def versions(self) -> dict[str, str | None]:
        return self.call(lambda: {a.id: a.version for a in self.agents.values()})

    # --- the loop (the fleet's thread) -------------------------------------------------------------
    def _client(self, agent: SimAgent) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=agent.client_id, protocol=mqtt.MQTTv5,
                        userdata=agent)
        will = agent.will()
        c.will_set(will.topic, will.payload, will.qos, will.retain)
        c.max_inflight_messages_set(20)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_disconnect = self._on_disconnect
        c.on_socket_open = lambda client, ud, sock: self._sel.register(sock, selectors.EVENT_READ, client)
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = lambda client, ud, sock: self._sel.modify(
            sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)
        c.on_socket_unregister_write = self._unregister_write
        return c

    def _unregister_write(self, client: mqtt.Client, ud: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.modify(sock, selectors.EVENT_READ, client)

    def _on_socket_close(self, client: mqtt.Client, ud: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)

    def _run(self) -> None:
        next_tick = next_misc = time.monotonic()
        while not self._stop.is_set():
            self._connect_some()
            try:
                ready = self._sel.select(timeout=0.05)
            except OSError as exc:
                self.errors.append(f"select: {exc}")
                break
            for key, mask in ready:
                client = key.data
                if client is None:
                    self._drain_wake()
                    continue
                self._guard(client, mask)
            self._run_calls()
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_S
                for a in self.agents.values():
                    if a.id in self.connected:
                        self._carry_out(a, a.tick)
            if now >= next_misc:
                next_misc = now + MISC_S
                for c in self.clients.values():
                    if c.socket() is not None:
                        c.loop_misc()
            with self._cond:
                self._cond.notify_all()

    def _guard(self, client: mqtt.Client, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ:
                client.loop_read(10)
            if mask & selectors.EVENT_WRITE and client.socket() is not None:
                client.loop_write()
        except Exception as exc:  # an agent's bug: recorded for the test, the others go on
            log.exception("simulated agent failed")
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _connect_some(self) -> None:
        batch, self._to_connect = self._to_connect[:CONNECT_BATCH], self._to_connect[CONNECT_BATCH:]
        for aid in batch:
            try:
                self.clients[aid].connect(self.host, self.port, self.keepalive, clean_start=True)
            except OSError as exc:
                self.refused[aid] = f"connect: {exc}"

    def _run_calls(self) -> None:
        while True:
            try:
                fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    # --- paho callbacks (the fleet's thread) ----------------------------------------------------
    def _on_connect(self, client: mqtt.Client, agent: SimAgent, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            self.refused[agent.id] = str(rc)
            return
        self.connected.add(agent.id)
        subs = agent.subscriptions()
        client.subscribe([(s.topic, s.qos) for s in subs])
        self._carry_out(agent, agent.on_connected)

    def _on_disconnect(self, client: mqtt.Client, agent: SimAgent, *args: Any) -> None:
        self.connected.discard(agent.id)

    def _on_message(self, client: mqtt.Client, agent: SimAgent, msg: mqtt.MQTTMessage) -> None:
        self.received += 1
        self._carry_out(agent, lambda: agent.on_message(msg.topic, msg.payload))

    def _carry_out(self, agent: SimAgent, produce: Callable[[], list[Action]]) -> list[mqtt.MQTTMessageInfo]:
        try:
            actions = produce()
        except Exception as exc:
            log.exception("simulated agent %s failed", agent.id)
            self.errors.append(f"{agent.id}: {type(exc).__name__}: {exc}")
            return []
        client = self.clients[agent.id]
        infos = []
        for act in actions:
            if isinstance(act, Publish):
                infos.append(client.publish(act.topic, act.payload, act.qos, act.retain))
                self.sent += 1
            elif isinstance(act, Subscribe):
                client.subscribe(act.topic, act.qos)
            elif isinstance(act, Unsubscribe):
                client.unsubscribe(act.topic)
        return infos

    def _goodbye(self, forget: bool) -> list[mqtt.MQTTMessageInfo]:
        infos = []
        for a in self.agents.values():
            if a.id in self.connected:
                infos += self._carry_out(a, lambda a=a: a.goodbye(forget))
        return infos


# --- the fleet in a child process ----------------------------------------------------------------
def _serve(conn: Any, address: tuple[str, int], n: int, prefix: str, hub_pem: bytes, preinstall: bytes | None,
           behaviour: dict[str, Any], tags: dict[str, str]) -> None:
    """The child process: build and connect the agents, then answer the parent's requests (see SimFleetProcess)."""
    from edgeloop.agent.connection import BrokerSettings
    from edgeloop.agent.wire.envelope import TrustedKeys, raw_public_key
    from tests.sim_agent import Behaviour

    agents = make_agents(n, TrustedKeys.from_pems([hub_pem]), prefix=prefix, tags=lambda i: dict(tags))
    for a in agents:
        a.behaviour = Behaviour(**behaviour)
        if preinstall is not None:
            a.preinstall(preinstall)
    fleet = SimFleet(BrokerSettings(*address), agents)
    try:
        fleet.start(timeout=120)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", {a.id: raw_public_key(a.report_key.public) for a in agents}))
    while True:
        what = conn.recv()
        if what == "stop":
            fleet.stop(forget=True)  # a shared test broker keeps no retained message of a thousand agents
            conn.send(("stopped", None))
            return
        if what == "summary":
            conn.send(("summary", fleet.call(lambda: {
                "versions": {a.id: a.version for a in agents},
                "events": {a.id: [(e.event, e.ok, e.code) for e in a.events] for a in agents},
                "serving_reports": sum(a.serving_reports for a in agents),
                "connected": len(fleet.connected), "received": fleet.received, "sent": fleet.sent,
                "errors": list(fleet.errors)})))


class SimFleetProcess:
    """``n`` simulated agents ``<prefix>-0000`` ... in a child process of their own (its own interpreter:
    the agents do not compete with a hub in this process for the GIL). They trust ``hub_pem``, start
    with ``preinstall`` (a bundle) active and carry ``tags``; ``behaviour``: :class:`Behaviour` fields."""

    def __init__(self, address: Any, n: int, hub_pem: bytes, *, prefix: str = "sim", preinstall: bytes | None = None,
                 behaviour: dict[str, Any] | None = None, tags: dict[str, str] | None = None) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no fork of a process that runs threads
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, name="sim-fleet", daemon=True, args=(
            child, (address.host, int(address.port)), n, prefix, hub_pem, preinstall, behaviour or {}, tags or {}))
        self.report_keys: dict[str, str] = {}  # agent id -> its report key (raw, base64)

    def start(self, timeout: float = 120.0) -> SimFleetProcess:
        self.proc.start()
        kind, value = self._answer(timeout)
        if kind != "ready":
            raise RuntimeError(f"the simulated agents did not start: {value}")
        self.report_keys = value
        return self

    def _answer(self, timeout: float) -> tuple[str, Any]:
        if not self._conn.poll(timeout):
            raise TimeoutError(f"the simulated agents' process did not answer within {timeout:.0f} s")
        return self._conn.recv()

    def summary(self, timeout: float = 60.0) -> dict[str, Any]:
        """``versions`` and ``events`` (event, ok, code) per agent, ``errors``, ``connected`` and counts."""
        self._conn.send("summary")
        return self._answer(timeout)[1]

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(Exception):
                self._conn.send("stop")
                self._answer(timeout)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()

    def __enter__(self) -> SimFleetProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def make_agents(n: int, hub_keys: Any, *, prefix: str = "sim", clock: Callable[[], float] = time.time,
                tags: Callable[[int], dict[str, str]] | None = None, **kw: Any) -> list[SimAgent]:
    """``n`` simulated agents ``<prefix>-0000`` ... trusting ``hub_keys`` (a ``TrustedKeys``)."""
    width = max(4, len(str(n - 1)))
    return [SimAgent(f"{prefix}-{i:0{width}d}", hub_keys, clock=clock, tags=tags(i) if tags else None, **kw)
            for i in range(n)]


__all__ = ["SimFleet", "SimFleetProcess", "make_agents", "raise_nofile"]
