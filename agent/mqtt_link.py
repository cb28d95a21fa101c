"""A thin, safe wrapper around a paho-mqtt 2.x client, used by the agent and the hub.

It applies the lessons of paho's issue tracker once: callback API v2, automatic reconnect,
TCP_NODELAY and TCP_QUICKACK (without them QoS 1 round trips wait on delayed ACKs, ~40 ms),
subscriptions renewed on every connect, exceptions in callbacks logged instead of killing
the network thread, and messages handed to the owner's callback which must only enqueue
(never block the network thread). paho's own log lines go to DEBUG only.

Connecting: :meth:`MqttLink.connect` makes the first attempt at once and raises a specific
:class:`~edgeloop.agent.connect_errors.BrokerConnectError` (refused, unknown host, not
authorised, TLS, protocol, timeout); :meth:`MqttLink.start` makes the same attempt, logs
its error and keeps trying in the background (the agent: it serves over HTTP meanwhile).
With ``protocol = "auto"`` it speaks MQTT 5 and falls back to 3.1.1 when the broker
refuses 5 (the embedded amqtt broker); :attr:`MqttLink.protocol` says which is in use.
MQTT 5 properties travel as :class:`MessageProps` both ways (dropped on 3.1.1, where
callers carry the same facts in the payload).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop.agent.connect_errors import (
    PROTOCOL_REFUSALS,
    BrokerConnectError,
    closed_error,
    from_connack,
    from_socket_error,
    timeout_error,
)
from edgeloop.agent.connection import BrokerSettings

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, "mqtt.MQTTMessage"], None]
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only
V5_PROBE_S = 2.0  # protocol auto: no CONNACK to MQTT 5 within this long, try 3.1.1
RETRY_TIMEOUT_S = 10.0  # one background connection attempt at most


@dataclass
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class MessageProps:
    """The MQTT 5 properties of a message that request/response and versioning use."""

    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    message_expiry: int | None = None  # seconds; the broker drops the message when it is older
    content_type: str | None = None

    def user(self, name: str) -> str | None:
        """The (last) value of user property ``name``, None if absent."""
        found = [v for k, v in self.user_properties if k == name]
        return found[-1] if found else None

    def to_paho(self) -> Properties | None:
        p = Properties(PacketTypes.PUBLISH)
        if self.response_topic is not None:
            p.ResponseTopic = self.response_topic
        if self.correlation_data is not None:
            p.CorrelationData = self.correlation_data
        if self.message_expiry is not None:
            p.MessageExpiryInterval = self.message_expiry
        if self.content_type is not None:
            p.ContentType = self.content_type
        if self.user_properties:
            p.UserProperty = list(self.user_properties)
        return p if not p.isEmpty() else None

    def packed(self) -> Properties | None:
        """The same as :meth:`to_paho`, packed now into the bytes paho sends (see :class:`_PackedProperties`)."""
        out = b""
        if self.message_expiry is not None:  # in paho's order, so that the bytes are the same as its own
            out += b"\x02" + struct.pack("!L", self.message_expiry)
        if self.content_type is not None:
            out += b"\x03" + _binary(self.content_type.encode())
        if self.response_topic is not None:
            out += b"\x08" + _binary(self.response_topic.encode())
        if self.correlation_data is not None:
            out += b"\x09" + _binary(self.correlation_data)
        for name, value in self.user_properties:
            out += b"\x26" + _binary(name.encode()) + _binary(value.encode())
        return _PackedProperties(_varint(len(out)) + out, repr(self)) if out else None

    @classmethod
    def of(cls, msg: mqtt.MQTTMessage) -> MessageProps:
        """The properties of a received message (all empty for an MQTT 3.1.1 one)."""
        p = getattr(msg, "properties", None)
        if p is None:
            return cls()
        corr = getattr(p, "CorrelationData", None)
        return cls(response_topic=getattr(p, "ResponseTopic", None),
                   correlation_data=bytes(corr) if corr is not None else None,
                   user_properties=tuple((str(k), str(v)) for k, v in getattr(p, "UserProperty", ())),
                   message_expiry=getattr(p, "MessageExpiryInterval", None),
                   content_type=getattr(p, "ContentType", None))


class _PackedProperties(Properties):
    """PUBLISH properties packed once (:meth:`MessageProps.packed`). paho's own ``Properties`` scans
    its 27 property names for every attribute set and again to pack: measured, an answer with
    Correlation Data and one user property took 120 us to publish that way and 50 us without
    properties. paho calls only ``pack()`` -- and ``str()`` in its DEBUG log -- on the properties
    of a message it publishes (and again when it sends a QoS 1 message anew after a reconnect)."""

    _packed: bytes
    _text: str

    def __init__(self, packed: bytes, text: str) -> None:  # not Properties.__init__: that is the slow part
        object.__setattr__(self, "packetType", PacketTypes.PUBLISH)
        object.__setattr__(self, "_packed", packed)
        object.__setattr__(self, "_text", text)

    def pack(self) -> bytes:
        return self._packed

    def isEmpty(self) -> bool:
        return False  # packed() makes none without a property

    def __str__(self) -> str:
        return self._text


def _binary(data: bytes) -> bytes:
    """MQTT 5 binary data / UTF-8 string: two bytes of length, then the bytes."""
    if len(data) > 0xFFFF:
        raise ValueError(f"an MQTT 5 property value is {len(data)} bytes; the most is 65535")
    return struct.pack("!H", len(data)) + data


def _varint(n: int) -> bytes:
    """MQTT's Variable Byte Integer."""
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _PahoLog(logging.Logger):
    """Where paho logs (``enable_logger``): every line at DEBUG on ``edgeloop.agent.mqtt_link.paho``,
    never above -- paho's ERROR lines ("Client is not connected", "failed to receive on socket")
    describe states this module handles. The first warning or error since the last look is kept
    (unformatted) to diagnose a connection closed before the CONNACK."""

    def __init__(self) -> None:
        super().__init__(f"{__name__}.paho")
        self._out = logging.getLogger(f"{__name__}.paho")
        self.problem: tuple[object, tuple] | None = None

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.WARNING and self.problem is None:  # the first says why; the rest follow from it
            self.problem = (msg, args)
        if self._out.isEnabledFor(logging.DEBUG):
            self._out.debug(msg, *args)

    def take_problem(self) -> str | None:
        got, self.problem = self.problem, None
        if got is None:
            return None
        msg, args = got
        try:
            return str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            return str(msg)


def set_low_latency(client: Any, userdata: Any, sock: Any) -> None:
    """paho ``on_socket_open`` callback: TCP_NODELAY (no Nagle wait on our small packets) and
    TCP_QUICKACK (Linux) on a new socket."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if _TCP_QUICKACK is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


class QuickAckClient(mqtt.Client):
    """paho's client with TCP_NODELAY on its sockets (:func:`set_low_latency` as ``on_socket_open``)
    and TCP_QUICKACK re-armed after every read: what a low-latency MQTT requester needs.

    Linux leaves quick-ACK mode again as soon as a connection looks interactive (we send
    right after receiving), so the option set once at connect does not hold: measured
    through a default-config Mosquitto (Nagle on, so it holds its next packet to us until
    we ACK the previous one), a QoS 1 request/response took 42 ms (p50) with the option
    set once, and 0.5 ms re-armed after each read. Setting it while an ACK is pending
    sends that ACK at once; it costs one setsockopt per read on the network thread.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_socket_open = set_low_latency

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        sock: Any = self._sock  # a socket.socket or ssl.SSLSocket (paho types it as a protocol without setsockopt)
        if _TCP_QUICKACK is not None and sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        return rc


class MqttLink:
    """One paho client for ``broker`` (a :class:`BrokerSettings`; ``host``/``port``/``username``/
    ``password``/``keepalive`` are the shorthand for a plain broker). ``broker.client_id``, when
    set, wins over ``client_id``."""

    def __init__(
        self,
        client_id: str,
        host: str | None = None,
        port: int | None = None,
        *,
        broker: BrokerSettings | None = None,
        on_message: MessageHandler,
        subscriptions: Iterable[tuple[str, int]] = (),
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        will: Will | None = None,
        keepalive: int | None = None,
        username: str | None = None,
        password: str | None = None,
        max_queued: int = 10000,
        max_inflight: int = 20,
    ) -> None:
        if broker is None:
            broker = BrokerSettings(host or "127.0.0.1", port or 1883, username=username, password=password,
                                    keepalive=keepalive or 30)
        elif (host, port, username, password, keepalive) != (None, None, None, None, None):
            raise TypeError("MqttLink takes either broker= or host/port/username/password/keepalive")
        self.broker = broker
        self.host, self.port = broker.host, broker.port
        self.keepalive = broker.keepalive
        self.client_id = broker.client_id or client_id
        self._subs = list(subscriptions)
        self._subs_lock = threading.Lock()  # the list, and whether a connect has subscribed it yet
        self._on_message = on_message
        self._on_connect_cb = on_connect
        self._on_disconnect_cb = on_disconnect
        self.connected = threading.Event()
        self.last_error: BrokerConnectError | None = None
        self._stopping = False
        self._loop_running = False
        self._reporting = True  # False during a first attempt: its caller reports the outcome
        self._mqtt5 = broker.protocol != "3.1.1"
        self._protocol_in_use: str | None = None
        self._attempt_done = threading.Event()
        self._attempt_lock = threading.Lock()  # one connection attempt at a time
        self._stop_retrying = threading.Event()
        self._retrier: threading.Thread | None = None
        self._outcome: tuple[str, int, str] = ("", 0, "")  # how the current attempt ended
        self._paho_log = _PahoLog()
        tls = broker.tls.context() if broker.tls is not None else None  # ConfigError for bad files, now
        c = QuickAckClient(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                           protocol=mqtt.MQTTv5 if self._mqtt5 else mqtt.MQTTv311,
                           clean_session=None if self._mqtt5 else not broker.persistent)
        c.enable_logger(self._paho_log)
        c.suppress_exceptions = True
        c.max_queued_messages_set(max_queued)
        c.max_inflight_messages_set(max_inflight)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        if tls is not None:
            c.tls_set_context(tls)
            if not tls.check_hostname:
                c.tls_insecure_set(True)  # else paho checks the name itself
        if broker.username:
            c.username_pw_set(broker.username, broker.password)
        if will is not None:
            c.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_connect_fail = self._handle_connect_fail
        c.on_message = self._handle_message
        self.client = c

    @property
    def protocol(self) -> str | None:
        """``"5"`` or ``"3.1.1"``: the MQTT version of the current (or last) connection; None before one."""
        return self._protocol_in_use

    # --- paho callbacks (network thread: never block here) ------------------------
    def _settle(self, kind: str, rc: int = 0, reason: str = "") -> None:
        """Record how the first attempt ended (only the first outcome counts)."""
        if not self._attempt_done.is_set():
            self._outcome = (kind, rc, reason)
            self._attempt_done.set()

    def _handle_connect(self, client, userdata, flags, reason_code, properties) -> None:
        rc = int(getattr(reason_code, "value", reason_code))
        if rc != 0:
            mqtt5 = self._mqtt5
            if rc in PROTOCOL_REFUSALS and mqtt5 and self.broker.protocol == "auto":
                self._use_protocol(mqtt5=False)  # the next attempt speaks 3.1.1
                log.debug("broker %s refused MQTT 5; falling back to 3.1.1", self.broker.url)
                self._settle("fallback", rc, str(reason_code))
                return
            err = self.last_error = from_connack(rc, str(reason_code), self.broker, mqtt5=mqtt5)
            self._settle("refused", rc, str(reason_code))
            if self._reporting:
                log.warning("%s (the broker refused the connection; retrying)", err)
            return
        self._protocol_in_use = "5" if self._mqtt5 else "3.1.1"
        self.last_error = None
        with self._subs_lock:  # add/remove_subscription wait: none is missed, none renewed after removal
            for topic, qos in self._subs:
                client.subscribe(topic, qos)
            self.connected.set()
        self._settle("ok")
        log.info("connected to MQTT broker %s (MQTT %s)", self.broker.url, self._protocol_in_use)
        if self._on_connect_cb is not None:
            try:
                self._on_connect_cb()
            except Exception:
                log.exception("on_connect handler failed")

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if not was:
            self._settle("closed")
        if was and not self._stopping:
            log.warning("disconnected from MQTT broker %s (%s); reconnecting", self.broker.url, reason_code)
        if self._on_disconnect_cb is not None:
            try:
                self._on_disconnect_cb()
            except Exception:
                log.exception("on_disconnect handler failed")

    def _handle_connect_fail(self, client, userdata) -> None:
        log.debug("connection attempt to %s failed; paho retries", self.broker.url)

    def _handle_message(self, client, userdata, msg) -> None:
        try:
            self._on_message(msg.topic, msg.payload, msg)
        except Exception:
            log.exception("message handler failed for %s", msg.topic)

    # --- connecting ------------------------------------------------------------------
    def _use_protocol(self, *, mqtt5: bool) -> None:
        """Speak MQTT 5 or 3.1.1 from the next CONNECT on. paho fixes the protocol when the client
        is built, and downgrades 3.1.1 to 3.1 itself by setting the same attributes (_handle_connack)."""
        self._mqtt5 = mqtt5
        self.client._protocol = mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311
        self.client._clean_session = not self.broker.persistent

    def _connect_args(self) -> dict[str, Any]:
        if not self._mqtt5:
            return {}
        if not self.broker.persistent:
            return {"clean_start": True}
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.broker.session_expiry
        return {"clean_start": False, "properties": props}

    def _loop_start(self) -> None:
        self.client.loop_start()
        self._loop_running = True

    def _attempt_once(self, deadline: float, timeout: float) -> BrokerConnectError | str | None:
        """One CONNECT; None when connected, ``"retry"``/``"guess"`` to try again at once in 3.1.1
        (the broker refused MQTT 5 / it may not speak it)."""
        self._attempt_done.clear()
        self._paho_log.take_problem()
        try:
            self.client.connect(self.broker.host, self.broker.port, self.broker.keepalive, **self._connect_args())
        except (OSError, ValueError) as exc:  # ssl.CertificateError is a ValueError
            return from_socket_error(exc, self.broker, timeout)
        self._loop_start()
        probing = self._mqtt5 and self.broker.protocol == "auto"
        wait = deadline - time.monotonic()
        if not self._attempt_done.wait(max(0.0, min(wait, V5_PROBE_S) if probing else wait)):
            if probing and deadline - time.monotonic() > 0.2:
                self._use_protocol(mqtt5=False)  # amqtt never answers an MQTT 5 CONNECT that has a Will
                return "guess"
            return timeout_error(self.broker, timeout, tcp=False)
        kind, rc, reason = self._outcome
        if kind == "ok":
            return None
        if kind == "fallback":
            return "retry"
        if kind == "refused":
            return from_connack(rc, reason, self.broker, mqtt5=self._mqtt5)
        err = closed_error(self.broker, self._paho_log.take_problem())
        if probing and err.code == "protocol":
            self._use_protocol(mqtt5=False)  # a broker that drops MQTT 5 CONNECTs instead of refusing them?
            return "guess"
        return err

    def _connect_now(self, timeout: float) -> BrokerConnectError | None:
        """Connect now, MQTT 5 then 3.1.1 where the protocol is auto; on failure no network
        thread is left running (paho's reconnecting takes over only once connected)."""
        deadline = time.monotonic() + timeout
        self._reporting = False
        guessed = False
        with contextlib.suppress(RuntimeError):  # paho refuses while an old socket is open
            self.client.connect_timeout = max(0.2, min(5.0, timeout))
        try:
            outcome = self._attempt_once(deadline, timeout)
            while outcome in ("retry", "guess"):
                guessed = outcome == "guess"
                self._stop_network_thread()
                outcome = self._attempt_once(deadline, timeout)
            if isinstance(outcome, BrokerConnectError):
                self._stop_network_thread()
                if guessed:
                    self._use_protocol(mqtt5=True)  # 3.1.1 did no better: nothing learnt, 5 first again
                self.last_error = outcome
                return outcome
            return None
        finally:
            self._reporting = True

    def connect(self, timeout: float = 10.0) -> MqttLink:
        """Connect now (at most ``timeout`` s); a :class:`BrokerConnectError` saying why if not."""
        self._stopping = False
        err = self._connect_now(timeout)
        if err is not None:
            with contextlib.suppress(Exception):
                self.client.disconnect()
            raise err
        return self

    def start(self, timeout: float = 3.0) -> MqttLink:
        """Connect, trying once now (at most ``timeout`` s) and in the background after that
        (a thread that retries, 1 s apart doubling to 30 s, until connected or stopped): each
        failed attempt is logged as a specific error."""
        self._stopping = False
        self._stop_retrying.clear()
        with self._attempt_lock:
            err = self._connect_now(timeout)
        if err is not None:
            log.error("%s (retrying in the background)", err)
            self._retrier = threading.Thread(target=self._retry, name="mqtt-connect", daemon=True)
            self._retrier.start()
        return self

    def _retry(self) -> None:
        delay = 1.0
        while not self._stop_retrying.wait(delay):
            with self._attempt_lock:
                if self._stop_retrying.is_set():
                    return
                err = self._connect_now(RETRY_TIMEOUT_S)
            if err is None:
                return
            log.warning("%s (retrying in %.0f s)", err, min(delay * 2, 30.0))
            delay = min(delay * 2, 30.0)

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    # --- owner API -------------------------------------------------------------------
    def add_subscription(self, topic: str, qos: int = 1) -> None:
        """Receive ``topic`` from now on (and after every reconnect)."""
        with self._subs_lock:
            self._subs.append((topic, qos))
            if self.connected.is_set():
                self.client.subscribe(topic, qos)

    def remove_subscription(self, topic: str) -> None:
        """Stop receiving ``topic`` (and forget it, so a reconnect does not subscribe again)."""
        with self._subs_lock:
            self._subs = [(t, q) for t, q in self._subs if t != topic]
            if self.connected.is_set():
                self.client.unsubscribe(topic)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                props: MessageProps | None = None) -> mqtt.MQTTMessageInfo:
        """Publish; ``props`` (MQTT 5 properties) are dropped on an MQTT 3.1.1 connection."""
        properties = props.packed() if props is not None and self._mqtt5 else None
        return self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)

    def stop(self, final: Iterable[tuple[str, bytes, int, bool]] = (), timeout: float = 2.0) -> bool:
        """Publish ``final`` messages (e.g. retained offline status), then disconnect; True if they arrived.

        When a final message is not acknowledged within ``timeout`` seconds, the
        connection is dropped WITHOUT an MQTT DISCONNECT, so that the broker
        publishes the Last Will instead of discarding it.
        """
        self._stopping = True
        self._stop_retrying.set()
        with self._attempt_lock:  # an attempt under way ends first (within its timeout)
            pass
        if self._retrier is not None:
            self._retrier.join(timeout=RETRY_TIMEOUT_S + 1)
        connected = self.connected.is_set()
        delivered = False
        if connected:
            infos = [self.client.publish(topic, payload, qos=qos, retain=retain)
                     for topic, payload, qos, retain in final]
            delivered = _wait_published(infos, timeout)
        # the network thread first: disconnecting under it makes paho log "Client is not connected"
        self._stop_network_thread()
        if connected and not delivered:
            log.warning("final messages not acknowledged by %s within %.0f s; dropping the connection "
                        "so that the broker publishes the Last Will", self.broker.url, timeout)
            sock = self.client.socket()
            if sock is not None:
                sock.close()
            return False
        self.client.disconnect()  # with no network thread, paho writes the DISCONNECT at once
        return delivered

    def _stop_network_thread(self) -> None:
        """``loop_stop()``, without waiting out the 1 s select() paho's thread sleeps in.

        paho 2.x wakes that select() through its socket pair whenever it has something to
        send; we do the same after setting the flag ``loop_stop`` sets, so stopping takes
        milliseconds instead of up to a second (every agent stop, every hub command).
        """
        client: Any = self.client
        client._thread_terminate = True  # what loop_stop() sets first (paho-mqtt 2.x)
        wake = getattr(client, "_sockpairW", None)
        if wake is not None:
            with contextlib.suppress(OSError):
                wake.send(b"\0")
        self.client.loop_stop()
        self._loop_running = False


def kept(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether paho holds the QoS 1 message of ``info`` until the broker acknowledges it: also one
    published while the link was down (``MQTT_ERR_NO_CONN``), which paho sends once reconnected --
    publishing it again would send it twice. Not one refused because paho's queue was full."""
    return info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN, mqtt.MQTT_ERR_AGAIN)


def wait_acked(info: mqtt.MQTTMessageInfo, timeout: float) -> bool:
    """Whether the broker acknowledged the QoS 1 message of ``info`` within ``timeout`` seconds.

    Unlike paho's ``wait_for_publish`` -- which raises ``RuntimeError`` for a message published
    while the link was down although paho sends it after the reconnect -- this waits for the
    acknowledgement whatever the link did meanwhile; False at once for a message paho did not keep."""
    if not kept(info):
        return False
    deadline = time.monotonic() + timeout
    cond: threading.Condition = info._condition  # paho sets _published under it and notifies
    with cond:
        while not info._published:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            cond.wait(left)
    return True


def _wait_published(infos: list[mqtt.MQTTMessageInfo], timeout: float) -> bool:
    """Whether every message was acknowledged by the broker within ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    for info in infos:
        try:
            info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
        except (RuntimeError, ValueError):  # queue full / not connected: it will not arrive
            return False
        if not info.is_published():
            return False
    return True
