"""A thin, safe wrapper around a paho-mqtt 2.x client, used by the agent and the hub.

It applies the lessons of paho's issue tracker once: callback API v2, async
connect with automatic reconnect, TCP_NODELAY (without it QoS 1 round trips wait
on delayed ACKs, ~40 ms), subscriptions renewed on every connect, exceptions in
callbacks logged instead of killing the network thread, and messages handed to
the owner's callback which must only enqueue (never block the network thread).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, "mqtt.MQTTMessage"], None]


@dataclass
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class MqttLink:
    def __init__(
        self,
        client_id: str,
        host: str,
        port: int,
        *,
        on_message: MessageHandler,
        subscriptions: Iterable[tuple[str, int]] = (),
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        will: Will | None = None,
        keepalive: int = 30,
        username: str | None = None,
        password: str | None = None,
        max_queued: int = 10000,
        max_inflight: int = 20,
    ) -> None:
        self.host, self.port = host, port
        self.keepalive = keepalive
        self._subs = list(subscriptions)
        self._on_message = on_message
        self._on_connect_cb = on_connect
        self._on_disconnect_cb = on_disconnect
        self.connected = threading.Event()
        self._stopping = False
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True
        )
        c.enable_logger(logging.getLogger(f"{__name__}.paho"))
        c.suppress_exceptions = True
        c.max_queued_messages_set(max_queued)
        c.max_inflight_messages_set(max_inflight)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        if username:
            c.username_pw_set(username, password)
        if will is not None:
            c.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_message = self._handle_message
        c.on_socket_open = self._handle_socket_open
        self.client = c

    # --- paho callbacks (network thread: never block here) ------------------------
    @staticmethod
    def _handle_socket_open(client, userdata, sock) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def _handle_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code != 0:
            log.warning("broker %s:%s refused the connection: %s", self.host, self.port, reason_code)
            return
        for topic, qos in self._subs:
            client.subscribe(topic, qos)
        self.connected.set()
        log.info("connected to MQTT broker %s:%s", self.host, self.port)
        if self._on_connect_cb is not None:
            try:
                self._on_connect_cb()
            except Exception:
                log.exception("on_connect handler failed")

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if was and not self._stopping:
            log.warning("disconnected from MQTT broker %s:%s (%s); reconnecting", self.host, self.port, reason_code)
        if self._on_disconnect_cb is not None:
            try:
                self._on_disconnect_cb()
            except Exception:
                log.exception("on_disconnect handler failed")

    def _handle_message(self, client, userdata, msg) -> None:
        try:
            self._on_message(msg.topic, msg.payload, msg)
        except Exception:
            log.exception("message handler failed for %s", msg.topic)

    # --- owner API -------------------------------------------------------------------
    def start(self) -> MqttLink:
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def add_subscription(self, topic: str, qos: int = 1) -> None:
        self._subs.append((topic, qos))
        if self.connected.is_set():
            self.client.subscribe(topic, qos)

    def remove_subscription(self, topic: str) -> None:
        """Stop receiving ``topic`` (and forget it, so a reconnect does not subscribe again)."""
        self._subs = [(t, q) for t, q in self._subs if t != topic]
        if self.connected.is_set():
            self.client.unsubscribe(topic)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def stop(self, final: Iterable[tuple[str, bytes, int, bool]] = (), timeout: float = 2.0) -> bool:
        """Publish ``final`` messages (e.g. retained offline status), then disconnect; True if they arrived.

        When a final message is not acknowledged within ``timeout`` seconds, the
        connection is dropped WITHOUT an MQTT DISCONNECT, so that the broker
        publishes the Last Will instead of discarding it.
        """
        self._stopping = True
        connected = self.connected.is_set()
        delivered = False
        if connected:
            infos = [self.client.publish(topic, payload, qos=qos, retain=retain)
                     for topic, payload, qos, retain in final]
            delivered = _wait_published(infos, timeout)
        # the network thread first: disconnecting under it makes paho log "Client is not connected"
        self._stop_network_thread()
        if connected and not delivered:
            log.warning("final messages not acknowledged by %s:%s within %.0f s; dropping the connection "
                        "so that the broker publishes the Last Will", self.host, self.port, timeout)
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
