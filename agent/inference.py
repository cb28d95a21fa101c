"""The agent's MQTT inference thread: requests from the ``infer`` topic, answers to the
requester's ``reply_to`` topic (or ``infer/result``), errors with a code and a message.

HTTP requests do not pass here: the HTTP server's threads call the same
:class:`~edgeloop.agent.serving.Serving`.
"""

from __future__ import annotations

import json
import logging

from edgeloop.agent.core import AgentCore
from edgeloop.agent.errors import EdgeloopError, InferenceError
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.messages import InferError, InferRequest, InferResult

log = logging.getLogger("edgeloop.agent.service")


class AgentInference(AgentCore):
    def _infer_loop(self) -> None:
        while True:
            payload = self._infer_q.get()
            if payload is None:
                return
            try:
                self._handle_infer(payload)
            except Exception:
                log.exception("inference request failed unexpectedly")
                self._reply_error(payload, None, "internal", "internal error; see the agent log")

    def _handle_infer(self, payload: bytes) -> None:
        try:
            req = InferRequest.decode(payload, limit=self.cfg.max_request_bytes)
        except EdgeloopError as exc:
            self._reply_error(payload, None, exc.code, str(exc))
            return
        reply = req.reply_to or topics.agent_topic(self.id, topics.INFER_RESULT)
        try:
            out = self.serving.infer(req.inputs, req.model, max_rows=self.cfg.max_rows)
        except InferenceError as exc:
            self._reply_error(payload, reply, exc.code, str(exc), req.id)
            return
        res = InferResult(id=req.id, model=out.model, version=out.version, outputs=out.outputs,
                          latency_ms=round(out.latency_ms, 3))
        self.link.publish(reply, res.encode(), qos=1)

    def _reply_error(self, payload: bytes, reply: str | None, code: str, message: str, rid: str | None = None) -> None:
        if rid is None:
            rid = _peek_field(payload, "id")
        if reply is None:
            reply = _peek_field(payload, "reply_to") or topics.agent_topic(self.id, topics.INFER_RESULT)
            if any(c in reply for c in "+#\0"):
                reply = topics.agent_topic(self.id, topics.INFER_RESULT)
        self.link.publish(reply, InferError(id=rid, code=code, message=message).encode(), qos=1)


def _peek_field(payload: bytes, key: str) -> str:
    """Best-effort read of a field from an untrusted, possibly malformed JSON message."""
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return ""
    val = obj.get(key) if isinstance(obj, dict) else None
    return str(val) if isinstance(val, (str, int)) and not isinstance(val, bool) else ""
