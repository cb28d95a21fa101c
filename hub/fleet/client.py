"""The hub's side of MQTT, in one object: :class:`Fleet`.

Composed of :class:`~edgeloop.hub.fleet.core.FleetCore` (connection, fleet state, event
and drift intake), :class:`~edgeloop.hub.fleet.commands.FleetCommands` (signed commands
and their answers) and :class:`~edgeloop.hub.fleet.delivery.FleetDelivery` (bundles in
chunks), plus inference requests for demos and checks. The CLI, the demo and the GUI
drive the fleet through :class:`edgeloop.hub.services.Hub`.
"""

from __future__ import annotations

import logging
import math
import threading

from edgeloop.agent.mqtt_link import MessageProps
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.messages import (
    SCHEMA,
    InferError,
    InferRequest,
    InferResult,
    new_id,
)
from edgeloop.hub.errors import FleetError
from edgeloop.hub.fleet.delivery import FleetDelivery

log = logging.getLogger(__name__)


class Fleet(FleetDelivery):
    # --- inference (for demos and checks) --------------------------------------------------
    def infer(self, agent_id: str, rows, timeout: float = 10.0, model: str | None = None, *, qos: int = 1
              ) -> InferResult | InferError:
        """Ask ``agent_id`` for a prediction over MQTT and wait at most ``timeout`` s for the answer.

        The request names this hub's reply topic both ways: as MQTT 5 properties (Response
        Topic, Correlation Data = the request id, Message Expiry = ``timeout``, so an agent
        that could not start on it in time drops it; user property ``schema``) when the link
        speaks MQTT 5, and as the payload's ``id``/``reply_to``, which every agent reads on
        MQTT 3.1.1. The answer comes at ``qos`` (0 or 1), the request's QoS.
        """
        if qos not in (0, 1):
            raise FleetError(f"inference requests go at QoS 0 or 1, not {qos}")
        rid = new_id()
        ev = threading.Event()
        slot: tuple[threading.Event, list] = (ev, [])
        with self._lock:
            self._replies[rid] = slot
        try:
            req = InferRequest(id=rid, inputs=rows, model=model, reply_to=self.reply_topic)
            props = MessageProps(response_topic=self.reply_topic, correlation_data=rid.encode(),
                                 message_expiry=max(1, math.ceil(timeout)), user_properties=(("schema", str(SCHEMA)),))
            # the link sends props on MQTT 5 only; the payload carries the same for 3.1.1
            self.link.publish(self.topic(agent_id, topics.INFER), req.encode(), qos=qos, props=props)
            if not ev.wait(timeout):
                raise FleetError(f"agent {agent_id} did not answer an inference request within {timeout:.0f} s")
            return slot[1][0]
        finally:
            with self._lock:
                self._replies.pop(rid, None)
