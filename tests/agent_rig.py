"""A plain MQTT client that drives real agent processes the way a hub does, without a hub: it signs
commands with its own key, sends bundles in chunks, watches every agent's events and status, and
asks for inferences. Used by the crash-consistency and disk-full tests (no torch, no registry).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt

from edgeloop.agent.fsutil import CRASH_ENV
from edgeloop.agent.store import AgentStore
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.commands import seal_command
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.agent.wire.messages import Chunk, Command, InferRequest, InferResult, TransferSpec, decode_infer_reply
from tests.conftest import AgentProcess, wait_until, write_agent_config
from tests.onnx_models import classifier_onnx
from tests.onnx_variants import signed_bundle

FINAL = ("install_result", "rollback_result")
CHUNK = 2048


def plain_client(broker, on_message, *subscriptions: str) -> mqtt.Client:
    """A plain paho client (what a device or an integrator uses), subscribed (QoS 1) and looping."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(broker.address.host, broker.address.port)
    client.subscribe([(t, 1) for t in subscriptions])
    client.loop_start()
    assert subscribed.wait(10), f"could not subscribe to {subscriptions} on {broker.address.url}"
    return client


class AgentRig:
    """A signing key, two signed bundles (iris 1 and 2), and a plain MQTT client that watches every
    agent's events and status and sends commands, chunks and inference requests."""

    def __init__(self, tmp_path: Path, broker, state_root: Path | None = None) -> None:
        self.tmp_path = tmp_path  # configs and logs
        self.state_root = state_root or tmp_path  # the agents' state folders
        self.broker = broker
        self.key = SigningKey.generate()
        self.bundles = {v: signed_bundle(self.key, classifier_onnx(), version=v) for v in ("1", "2")}
        self.sha = {v: hashlib.sha256(b).hexdigest() for v, b in self.bundles.items()}
        self.counter = 0
        self.events: list[dict] = []
        self.status: dict[str, str] = {}
        self.states: dict[str, int] = {}  # state messages seen per agent
        self.replies: dict[str, object] = {}
        self.procs: dict[str, AgentProcess] = {}
        self._lock = threading.Lock()
        self.client = plain_client(broker, self._on_message, f"{topics.ROOT}/agents/+/events",
                                   f"{topics.ROOT}/agents/+/status", f"{topics.ROOT}/agents/+/state",
                                   "test/crash/replies")

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            if msg.topic.endswith("/events"):
                self.events.append(json.loads(msg.payload))
            elif msg.topic.endswith("/status"):
                self.status[msg.topic.split("/")[-2]] = msg.payload.decode()
            elif msg.topic.endswith("/state"):
                aid = msg.topic.split("/")[-2]
                self.states[aid] = self.states.get(aid, 0) + 1
            else:
                reply = decode_infer_reply(msg.payload)
                self.replies[reply.id] = reply

    def close(self) -> None:
        """Kill the agents still running (what they left was checked already) and disconnect."""
        for p in self.procs.values():
            if p.proc is not None:
                p.stop(kill=True)
        self.client.loop_stop()
        self.client.disconnect()

    def __enter__(self) -> AgentRig:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- agents ----------------------------------------------------------------------------------
    def prepare(self, aid: str, versions: tuple[str, ...], **config) -> Path:
        """An agent config whose store already holds ``versions`` (the last one active)."""
        store = AgentStore(self.state_root / f"{aid}-state")
        for v in versions:
            store.install(self.sha[v], self.bundles[v], "iris", v)
        return write_agent_config(self.state_root, aid, self.broker, self.key.public_pem(),
                                  transfer_idle_seconds=config.pop("transfer_idle_seconds", 60.0), **config)

    def start(self, config: Path, crash_at: str | None = None) -> AgentProcess:
        self.status.pop(config.stem, None)
        old = os.environ.pop(CRASH_ENV, None)
        if crash_at is not None:
            os.environ[CRASH_ENV] = crash_at
        try:
            return AgentProcess(config, self.tmp_path / f"{config.stem}.log").start()
        finally:
            os.environ.pop(CRASH_ENV, None)
            if old is not None:
                os.environ[CRASH_ENV] = old

    def online(self, aids) -> bool:
        return wait_until(lambda: all(self.status.get(a) == topics.ONLINE for a in aids), 60)

    # --- commands ----------------------------------------------------------------------------------
    def _send(self, aid: str, command: str, args: dict, ttl: float = 120.0) -> str:
        self.counter += 1
        now = time.time()
        cmd = Command(command=command, command_id=uuid.uuid4().hex, agent_id=aid, counter=self.counter,
                      issued_at=now, expires_at=now + ttl, args=args)
        self.client.publish(topics.agent_topic(aid, topics.CMD), seal_command(self.key, cmd), qos=1)
        return cmd.command_id

    def deploy(self, aid: str, version: str, *, bundle: bytes | None = None, ttl: float = 120.0,
               chunks: int | None = None) -> str:
        """Send a deploy of ``version`` (or of ``bundle``, named as ``version``) and its first ``chunks``
        chunks (all by default); the command id."""
        data = self.bundles[version] if bundle is None else bundle
        sha = hashlib.sha256(data).hexdigest()
        spec = TransferSpec(uuid.uuid4().hex, sha, len(data), CHUNK, -(-len(data) // CHUNK))
        cid = self._send(aid, "deploy", {"transfer": spec.to_dict(), "bundle_sha256": sha,
                                         "model": "iris", "version": version}, ttl)
        for i in range(spec.chunks if chunks is None else chunks):  # behind the command: handled in order
            chunk = Chunk(spec.transfer_id, i, data[i * CHUNK:(i + 1) * CHUNK])
            self.client.publish(topics.agent_topic(aid, topics.BUNDLE), chunk.encode(), qos=1)
        return cid

    def rollback(self, aid: str, version: str) -> str:
        return self._send(aid, "rollback", {"bundle_sha256": self.sha[version]})

    def finals(self, cid: str, kinds: tuple[str, ...] = FINAL) -> list[dict]:
        with self._lock:
            return [e for e in self.events if e.get("command_id") == cid and e.get("event") in kinds]

    def events_of(self, aid: str) -> list[dict]:
        with self._lock:
            return [e for e in self.events if e.get("agent_id") == aid]

    def serving_version(self, aid: str) -> str:
        rid = uuid.uuid4().hex
        req = InferRequest(id=rid, inputs=[[5.1, 3.5, 1.4, 0.2]], reply_to="test/crash/replies")
        self.client.publish(topics.agent_topic(aid, topics.INFER), req.encode(), qos=1)
        assert wait_until(lambda: rid in self.replies, 20), f"{aid} did not answer an inference request"
        reply = self.replies[rid]
        assert isinstance(reply, InferResult), reply
        return reply.version
