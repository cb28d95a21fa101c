"""The hub's side of MQTT, in one object: :class:`Fleet`.

Composed of :class:`~edgeloop.hub.fleet.core.FleetCore` (connection, fleet state, event
and drift intake), :class:`~edgeloop.hub.fleet.commands.FleetCommands` (signed commands
and their answers) and :class:`~edgeloop.hub.fleet.delivery.FleetDelivery` (bundles in
chunks), plus inference requests for demos and checks. The CLI, the demo and the GUI
drive the fleet through :class:`edgeloop.hub.services.Hub`.
"""

from __future__ import annotations

import logging
import threading

from edgeloop.agent.wire import topics
from edgeloop.agent.wire.messages import (
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
