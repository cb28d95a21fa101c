"""The agent's MQTT inference thread: requests from its ``infer`` topic, each answered with an
``infer_result`` or an ``infer_error`` (a code and a message).

Where the answer goes, the first that applies:

1. MQTT 5: the request's **Response Topic** property;
2. the payload's ``reply_to`` field (MQTT 3.1.1 -- the embedded amqtt broker --, ``mosquitto_pub``);
3. ``<root>/agents/<id>/infer/result``.

The answer's ``id`` is the request's payload ``id``. On an MQTT 5 connection the answer also
carries the request's **Correlation Data** (when it had one) and the user property
``schema`` = the wire schema version, whatever its destination.

**QoS**: the answer goes out at the QoS the request was delivered with (the agent subscribes
at QoS 1, so 0 or 1). A QoS 0 requester gets a QoS 0 answer: no PUBACK exchange on either leg,
the fastest round trip through a broker that leaves Nagle on.

**Message Expiry** (MQTT 5): a request whose Message Expiry Interval -- what the broker left
of it when it delivered the request -- ran out while the request waited in the agent's queue
is dropped without an answer: its requester has given up on it, as the broker would have
dropped it. The agent logs the first such drop at WARNING (the rest at DEBUG) and counts them
in :attr:`AgentInference.expired_requests`.

Threads: the paho network thread calls :meth:`AgentInference._accept_infer`, which queues the
request for the inference thread (or answers ``overloaded`` when the queue is full) -- except a
small request (``INLINE_MAX_BYTES``) to a model whose last answer took under ``INLINE_MAX_MS``,
when nothing is queued or being answered: that one is answered on the network thread at once,
saving the wake-up of the inference thread (measured through Mosquitto: agent/echo p50 ratios of
1.3-1.5x instead of 1.5-1.7x) while holding the network thread no longer than a packet's worth of
work. HTTP requests do not pass here: the HTTP server's threads call the same
:class:`~edgeloop.agent.serving.Serving`.

**No message can end a thread**: both the network thread's callback and the inference loop catch
every exception per message, also one raised while building or publishing the error answer (a
payload nested too deeply to read, a ``reply_to`` that is not a publishable topic name: a lone
surrogate, a wildcard, a control character or noncharacter -- Mosquitto would drop the agent's
connection --, over 65,535 bytes); such an answer goes to ``infer/result`` instead, and an
answer that cannot be published at all is logged and dropped. Should the inference thread end
anyway, the agent's watchdog (:mod:`edgeloop.agent.watchdog`) restarts it and reports it.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from edgeloop.agent.core import AgentCore
from edgeloop.agent.errors import EdgeloopError, InferenceError
from edgeloop.agent.mqtt_link import MessageProps
from edgeloop.agent.runtime import ModelRunner
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.messages import SCHEMA, InferError, InferRequest, InferResult

log = logging.getLogger("edgeloop.agent.service")

INLINE_MAX_MS = 0.5  # a request to a model that answered the last one faster may be answered on the network thread
INLINE_MAX_BYTES = 4096  # ... if it is this small (a few dozen rows)
SCHEMA_PROPERTY = ("schema", str(SCHEMA))  # the user property every MQTT 5 answer carries
_NO_PROPS = MessageProps()


@dataclass(frozen=True)
class InferJob:
    """One request as the network thread received it."""

    payload: bytes
    qos: int  # as delivered: the answer's QoS
    props: MessageProps  # MQTT 5 properties (all empty on 3.1.1)
    received: float  # time.monotonic() on arrival

    def expired(self, now: float) -> bool:
        """Whether its Message Expiry Interval ran out while it waited."""
        expiry = self.props.message_expiry
        return expiry is not None and now - self.received > expiry


MAX_TOPIC_BYTES = 65535  # MQTT's limit on a topic name's UTF-8 length
# what a topic name must not hold: wildcards; NUL, control characters and noncharacters (Mosquitto drops the
# connection of a client that publishes to such a topic: one request could disconnect the agent); surrogates
_NOT_IN_TOPIC = re.compile("[+#\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ud800-\udfff"
                           + "".join(f"{chr(p | 0xFFFE)}{chr(p | 0xFFFF)}" for p in range(0, 0x110000, 0x10000)) + "]")
_NOT_IN_ASCII_TOPIC = re.compile("[+#\x00-\x1f\x7f]")


def valid_topic(topic: str) -> bool:
    """A topic an answer can be published to: non-empty, at most 65,535 bytes of UTF-8, no wildcards,
    no NUL, control character, noncharacter or lone surrogate."""
    if topic.isascii():  # the common case, checked with a small character class
        return 0 < len(topic) <= MAX_TOPIC_BYTES and _NOT_IN_ASCII_TOPIC.search(topic) is None
    return bool(topic) and _NOT_IN_TOPIC.search(topic) is None and len(topic.encode("utf-8")) <= MAX_TOPIC_BYTES


class AgentInference(AgentCore):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.expired_requests = 0  # requests dropped because their Message Expiry ran out in the queue
        self._serving_lock = threading.Lock()  # held while a request is being answered, on either thread
        self._quick: ModelRunner | None = None  # the served model, while its last answer was quick

    # --- network thread: answer a quick one at once, else queue; never wait ------------
    def _accept_infer(self, payload: bytes, msg: Any) -> None:
        """Answer or queue a request (``msg``: the paho message it came in); ``overloaded`` when full.
        Runs on paho's network thread: never raises, never waits for a lock."""
        try:
            job = InferJob(payload, min(int(getattr(msg, "qos", 1)), 1),
                           MessageProps.of(msg) if msg is not None else _NO_PROPS, time.monotonic())
            self._accept_job(job)
        except Exception:
            log.exception("could not accept an inference request of %d bytes; it was dropped", len(payload))

    def _accept_job(self, job: InferJob) -> None:
        if self._answer_here(job):
            try:
                self._serve(job)
            finally:
                self._serving_lock.release()
            return
        try:
            self._infer_q.put_nowait(job)
        except queue.Full:
            self._reply_error(job, "overloaded", "agent is overloaded: request dropped, retry later")

    def _answer_here(self, job: InferJob) -> bool:
        """Whether to answer ``job`` on the network thread (then holding the serving lock): a small
        request, nothing queued or being answered, and the served model answered the last request
        in under INLINE_MAX_MS. That saves waking the inference thread (measured: ~70 us of a 0.3 ms
        overhead, more on a loaded machine) and holds the network thread no longer than that."""
        if len(job.payload) > INLINE_MAX_BYTES:
            return False
        quick = self._quick
        if quick is None or quick is not self.serving.active:
            return False
        if not self._serving_lock.acquire(blocking=False):
            return False
        if self._infer_q.qsize():  # requests already waiting go first
            self._serving_lock.release()
            return False
        return True

    # --- the inference thread --------------------------------------------------------
    def _infer_loop(self) -> None:
        while True:
            job = self._infer_q.get()
            if job is None:
                return
            with self._serving_lock:
                self._serve(job)

    def _serve(self, job: InferJob) -> None:
        """Answer one request; never raises (an error answer that fails too is logged)."""
        try:
            self._handle_infer(job)
        except Exception:
            log.exception("inference request failed unexpectedly")
            self._reply_error(job, "internal", "internal error; see the agent log")

    def _handle_infer(self, job: InferJob) -> None:
        if job.expired(time.monotonic()):
            self._drop_expired(job)
            return
        if job.props.response_topic is not None and not valid_topic(job.props.response_topic):
            self._reply_error(job, "bad_message", "the Response Topic must be a topic name without wildcards")
            return
        try:
            req = InferRequest.decode(job.payload, limit=self.cfg.max_request_bytes)
        except EdgeloopError as exc:
            self._reply_error(job, exc.code, str(exc))
            return
        reply = job.props.response_topic or req.reply_to or self._topic(topics.INFER_RESULT)
        if not valid_topic(reply):
            self._reply_error(job, "bad_message", "reply_to must be a topic name the broker accepts: no "
                              "wildcards, NUL, control characters or noncharacters, at most "
                              f"{MAX_TOPIC_BYTES} bytes of UTF-8; send a plain topic such as plant/line1/answers",
                              rid=req.id, reply=self._topic(topics.INFER_RESULT))
            return
        try:
            out = self.serving.infer(req.inputs, req.model, max_rows=self.cfg.max_rows, request_id=req.id)
        except InferenceError as exc:
            self._reply_error(job, exc.code, str(exc), rid=req.id, reply=reply)
            return
        self._quick = out.runner if out.latency_ms < INLINE_MAX_MS else None
        self.metrics.answered("mqtt", out.runner, out.latency_ms, out.outputs)
        res = InferResult(id=req.id, model=out.model, version=out.version, outputs=out.outputs,
                          latency_ms=round(out.latency_ms, 3))
        self._answer(job, reply, res.encode())

    def _drop_expired(self, job: InferJob) -> None:
        self.expired_requests += 1
        self.metrics.failed("mqtt", "expired")
        waited = time.monotonic() - job.received
        (log.warning if self.expired_requests == 1 else log.debug)(
            "dropped an inference request that waited %.1f s, past its Message Expiry of %d s "
            "(%d dropped so far); the agent is slower than its requesters expect",
            waited, job.props.message_expiry, self.expired_requests)

    def _answer(self, job: InferJob, topic: str, payload: bytes) -> None:
        """Publish an answer at the request's QoS, with its Correlation Data echoed (MQTT 5)."""
        props = MessageProps(correlation_data=job.props.correlation_data, user_properties=(SCHEMA_PROPERTY,))
        self.link.publish(topic, payload, qos=job.qos, props=props)

    def _reply_error(self, job: InferJob, code: str, message: str, *, rid: str | None = None,
                     reply: str | None = None) -> None:
        """Answer an error; ``rid``/``reply`` default to what can be read from a possibly malformed request
        (read with one parse). Never raises: an answer that cannot be published is logged and dropped."""
        try:
            self.metrics.failed("mqtt", code)
            if rid is None or reply is None:
                peeked_id, peeked_reply = _peek_fields(job.payload)
                rid = peeked_id if rid is None else rid
                reply = self._error_destination(job, peeked_reply) if reply is None else reply
            self._answer(job, reply, InferError(id=rid, code=code, message=message).encode())
        except Exception:
            log.warning("could not answer an inference request with %s", code, exc_info=True)

    def _error_destination(self, job: InferJob, reply_to: str) -> str:
        """The Response Topic, else the payload's ``reply_to``, else ``infer/result``: the first usable."""
        if job.props.response_topic is not None and valid_topic(job.props.response_topic):
            return job.props.response_topic
        return reply_to if valid_topic(reply_to) else self._topic(topics.INFER_RESULT)


def _peek_fields(payload: bytes) -> tuple[str, str]:
    """Best-effort read of ``id`` and ``reply_to`` from an untrusted, possibly malformed JSON message
    ("" for what cannot be read). Never raises."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deeply, a too-long integer
        return "", ""
    if not isinstance(obj, dict):
        return "", ""
    return _text(obj.get("id")), _text(obj.get("reply_to"))


def _text(val: Any) -> str:
    if isinstance(val, str):
        return val
    if isinstance(val, int) and not isinstance(val, bool):
        return str(val) if abs(val) < 10**64 else ""
    return ""
