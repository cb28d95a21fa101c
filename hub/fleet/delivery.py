"""Bundle delivery: a signed deploy command, then the bundle in chunks with flow control,
and chunks sent again when an agent reports them missing."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from edgeloop.agent.wire import topics
from edgeloop.agent.wire.bundle import sha256 as sha256_hex
from edgeloop.agent.wire.messages import (
    Chunk,
    Event,
    TransferSpec,
    new_id,
)
from edgeloop.hub.fleet.commands import CommandOutcome, FleetCommands
from edgeloop.hub.fleet.core import Outgoing

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_IN_FLIGHT = 16  # chunks published and not yet acknowledged: never queue a whole bundle in paho


class FleetDelivery(FleetCommands):
    def _record_event(self, ev: Event) -> None:
        if ev.event == "transfer_missing":
            self._resend(ev)
        else:
            super()._record_event(ev)

    def deploy(self, agent_id: str, bundle: bytes, *, model: str, version: str, timeout: float = 120.0,
               chunk_size: int = DEFAULT_CHUNK_SIZE, progress: Callable[[int, int], None] | None = None,
               ) -> CommandOutcome:
        """Send a signed deploy command, stream the bundle in chunks, wait for the install result."""
        started = time.perf_counter()
        sha = sha256_hex(bundle)
        spec = TransferSpec(new_id(), sha, len(bundle), chunk_size, math.ceil(len(bundle) / chunk_size))
        cmd = self.make_command(agent_id, "deploy", {
            "transfer": spec.to_dict(), "bundle_sha256": sha, "model": model, "version": version})
        self.registry.add_deployment(bundle_sha256=sha, agent_id=agent_id, kind="deploy",
                                     command_id=cmd.command_id, counter=cmd.counter, actor=self.actor)
        with self._lock:
            self._outgoing[spec.transfer_id] = Outgoing(agent_id, spec, bundle)
        try:
            self.send(cmd)
            ack = self.wait_result(cmd.command_id, ("command_result",), min(timeout, 30.0))
            if ack is None:
                return self._timeout(cmd, "the agent did not acknowledge the deploy command", started)
            if not ack.ok:
                return CommandOutcome(cmd.command_id, False, ack.code, ack.message, ack,
                                      time.perf_counter() - started)
            if ack.details.get("chunks", spec.chunks):
                self._send_chunks(agent_id, spec, bundle, range(spec.chunks), progress)
            res = self.wait_result(cmd.command_id, ("install_result",), timeout)
            if res is None:
                return self._timeout(cmd, "no install result from the agent", started)
            return CommandOutcome(cmd.command_id, res.ok, res.code, res.message, res,
                                  time.perf_counter() - started, res.details)
        finally:
            self._forget(cmd.command_id)
            with self._lock:
                self._outgoing.pop(spec.transfer_id, None)

    def _send_chunks(self, agent_id: str, spec: TransferSpec, data: bytes, indices,
                     progress: Callable[[int, int], None] | None = None) -> None:
        topic = topics.agent_topic(agent_id, topics.BUNDLE)
        window: list = []
        indices = list(indices)
        for n, i in enumerate(indices, 1):
            chunk = Chunk(spec.transfer_id, i, data[i * spec.chunk_size:(i + 1) * spec.chunk_size])
            window.append(self.link.publish(topic, chunk.encode(), qos=1))
            if len(window) >= MAX_IN_FLIGHT:  # flow control: never queue the whole bundle in paho
                window.pop(0).wait_for_publish(timeout=30)
            if progress is not None:
                progress(n, len(indices))
        for info in window:
            info.wait_for_publish(timeout=30)

    def _resend(self, ev: Event) -> None:
        tid = ev.details.get("transfer_id")
        missing = ev.details.get("missing") or []
        if not isinstance(tid, str):
            return
        with self._lock:
            out = self._outgoing.get(tid)
        if out is None or out.agent_id != ev.agent_id:
            return
        idx = [i for i in missing if isinstance(i, int) and 0 <= i < out.spec.chunks]
        log.info("resending %d chunks of transfer %s to %s", len(idx), tid[:8], ev.agent_id)
        threading.Thread(target=self._send_chunks, args=(out.agent_id, out.spec, out.data, idx),
                         daemon=True, name="fleet-resend").start()
