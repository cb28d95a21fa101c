"""The agent process: MQTT + HTTP front ends over a store, a runner and a drift monitor.

Threads and who owns what:

* paho's network thread sorts incoming messages into queues (and answers small inference
  requests to a quick model itself: :mod:`.inference`);
* the **control** thread owns the store and the transfers: it verifies commands,
  writes chunks, installs, rolls back and publishes state and events;
* the **inference** thread answers MQTT inference requests; HTTP requests are
  answered on the HTTP server's own threads; both go through :class:`Serving`,
  whose active model is swapped atomically by the control thread;
* the **outbox** thread keeps drift reports and events on disk while the broker is
  unreachable and sends them, in order, after the birth state of the next connect
  (:mod:`edgeloop.agent.outbox`).

Every topic is under the fleet's topic root (``[mqtt] topic_root``, default ``edgeloop/v1``);
messages under any other root are ignored.

A bundle is loaded only after :func:`edgeloop.agent.wire.bundle.verify_bundle` passes,
its smoke test passes, and it is on disk; until then the previous model keeps serving.

The parts live in one module each: :mod:`.core` (config, store, serving, link, loading,
publishing), :mod:`.control` (the control thread) and :mod:`.inference` (MQTT inference).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from typing import Any

from edgeloop.agent.control import MAX_COMMAND_LIFETIME, SHARED_CHUNK, AgentControl
from edgeloop.agent.http_api import HttpApi
from edgeloop.agent.inference import AgentInference
from edgeloop.agent.transfer import Transfer
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.capture import FEEDBACK

log = logging.getLogger(__name__)


class Agent(AgentControl, AgentInference):
    """The agent process (see the module docstring): ``Agent(config).run_forever()``."""

    def start(self) -> Agent:
        self._restore()
        self._resume_shadow()  # a shadow that ran before a restart runs again (edgeloop.agent.shadow_control)
        for t in Transfer.load_pending(self.store.incoming_dir, default_lifetime=MAX_COMMAND_LIFETIME):
            self._transfers[t.spec.transfer_id] = t
        if self.cfg.http_enabled:
            self.http = HttpApi(
                self.serving, host=self.cfg.http_host, port=self.cfg.http_port,
                max_body=self.cfg.max_request_bytes, max_connections=self.cfg.http_max_connections,
                health=self.health, metrics=self.metrics, feedback=self.http_feedback,
            ).start()
            log.info("HTTP (Open Inference Protocol v2) on %s", self.http.url)
        self.outbox.start()
        self.capture.start()  # uploads captured batches (edgeloop.agent.capture)
        self._start_workers([("control", self._control_loop), ("inference", self._infer_loop)])  # + watchdog
        self.link.start()
        from edgeloop.agent.serving_report import ServingReporter  # serving reports for rollout gates

        self._threads.append(ServingReporter.for_agent(self).start(self._stop))
        if self.cfg.ha_enabled:  # opt-in Home Assistant MQTT discovery (docs/metrics.md)
            from edgeloop.agent.homeassistant import HomeAssistant

            self._threads.append(HomeAssistant.for_agent(self).start(self._stop))
        if self.cfg.zeroconf:
            self._start_discovery()
        log.info("agent %s started (state in %s, broker %s:%s, topic root %s)", self.id, self.cfg.state_dir,
                 self.cfg.mqtt_host, self.cfg.mqtt_port, self.root)
        return self

    def stop(self) -> None:
        """Stop cleanly (idempotent): retained offline ``state`` and ``status``, then HTTP, zeroconf, transfers."""
        if self._stop.is_set():
            return
        self._stop.set()
        log.info("agent %s stopping", self.id)
        self._control_q.put(("stop", None))
        while True:  # never blocks on a full request queue: requests still waiting are dropped
            try:
                self._infer_q.put_nowait(None)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._infer_q.get_nowait()
        for t in self._threads:
            t.join(timeout=5)
        self.capture.stop()  # batches cut are on disk
        self.outbox.stop()  # what was handed over is sent or on disk; later reports are kept inline
        delivered = False
        try:
            offline = self._state_payload(topics.OFFLINE)
            delivered = self.link.stop(final=[
                (self._topic(topics.STATE), offline, 1, True),
                (self._topic(topics.STATUS), topics.OFFLINE.encode(), 1, True),
            ])
        except Exception:  # the rest of the stop must still happen
            log.exception("could not publish the offline state")
        closers = [("HTTP server", self.http.stop if self.http is not None else None),
                   ("zeroconf announcement", self._discovery.close if self._discovery is not None else None),
                   *((f"transfer {tid[:8]}", t.close) for tid, t in self._transfers.items())]
        for what, close in closers:
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("could not close the %s", what)
        log.info("agent %s stopped (%s)", self.id, "offline state published" if delivered else
                 "offline state NOT published: broker unreachable or slow; its Last Will reports the agent offline")

    def run_forever(self, poll: float = 0.2) -> None:
        """Start, serve until :meth:`request_stop`, then :meth:`stop` on this (the calling) thread."""
        self.start()
        try:
            while self._stop_reason is None:
                time.sleep(poll)
            log.info("agent %s: %s", self.id, self._stop_reason)
        finally:
            self.stop()

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask :meth:`run_forever` to stop. Only sets a flag: safe from a signal handler."""
        if self._stop_reason is None:
            self._stop_reason = reason

    @property
    def stop_requested(self) -> bool:
        return self._stop_reason is not None

    def _on_connected(self) -> None:
        """Control thread, on every connect: the birth state first, then what the outbox kept."""
        super()._on_connected()
        self.outbox.flush_soon()
        self.capture.wake()

    # --- network thread: sort, never block --------------------------------------------
    def _on_message(self, topic: str, payload: bytes, msg: Any) -> None:
        parsed = topics.parse_agent_topic(topic, self.root)
        if parsed is None:
            if topics.parse_transfer_topic(topic, self.root) is not None:
                self._control_q.put((SHARED_CHUNK, payload))  # a fan-out deploy's chunks
            return
        if parsed[0] != self.id:
            return
        leaf = parsed[1]
        if leaf in (topics.CMD, topics.BUNDLE):
            self._control_q.put((leaf, payload))
        elif leaf == FEEDBACK:
            self._mqtt_feedback(payload)  # a label for a captured request (small; no disk, no broker)
        elif leaf == topics.INFER:
            self._accept_infer(payload, msg)  # answered now or queued, with its QoS and MQTT 5 properties

    def _start_discovery(self) -> None:
        try:
            from edgeloop.agent.discovery import AgentAnnouncer

            self._discovery = AgentAnnouncer(self.id, self.cfg, self.http.port if self.http else None,
                                             interfaces=self.cfg.zeroconf_interfaces or None).start()
        except Exception as exc:  # discovery is a convenience; never fatal
            log.warning("zeroconf announcement failed: %s", exc)
