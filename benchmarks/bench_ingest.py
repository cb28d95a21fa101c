"""Hub ingest: how long until the hub's registry holds a large fleet, against a bare subscriber.

    python benchmarks/bench_ingest.py [--agents 5000] [--repeat 3] [--json [FILE]]

On a private Mosquitto (a real broker process on a free port):

1. **Birth** -- every simulated agent's retained ``status`` ("online") and ``state``
   (an AgentState naming the hub's key id, so each is a member of its fleet) are
   published first. Then, measured from the moment each client starts connecting:
   a bare paho subscriber (QoS 1, same filters; once with MQTT 3.1.1 and once with
   MQTT 5, which the hub speaks to Mosquitto and which costs paho about twice the
   time per message) until it has received all 2N retained messages, and the hub
   runtime (:class:`edgeloop.hub.runtime.HubRuntime`: persistent session, batched
   registry transactions) until its registry holds N
   member agents, online, with their session.
2. **Update** -- with both listening, every agent publishes a retained ``offline``
   status; measured from the first publish until the bare subscriber has all N, and
   until the registry shows all N offline (the view stays current).

Prints the times and the ratios hub/bare (same run, same broker, same messages),
best of ``--repeat`` rounds. No asserts: figures, not tests. Before batching the hub
took 6.5 s vs 0.26 s for 5,000 agents' birth (issue 7).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt

from edgeloop.agent.wire import topics
from edgeloop.agent.wire.messages import ActiveModel, AgentState
from edgeloop.hub.fleet import MosquittoBroker
from edgeloop.hub.runtime import HubRuntime
from edgeloop.hub.services import Hub

ROUND_TIMEOUT_S = 300.0


def publish_all(broker, messages: list[tuple[str, bytes]]) -> float:
    """Publish ``messages`` retained at QoS 1 from one client; seconds until the broker acknowledged all."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{time.monotonic_ns()}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect(broker.address.host, broker.address.port)
    c.loop_start()
    try:
        started = time.perf_counter()
        infos = [c.publish(t, p, qos=1, retain=True) for t, p in messages]
        for info in infos:
            info.wait_for_publish(timeout=ROUND_TIMEOUT_S)
        return time.perf_counter() - started
    finally:
        c.loop_stop()
        c.disconnect()


class BareSubscriber:
    """A plain paho client counting what arrives on the hub's filters (no decoding, no storage)."""

    def __init__(self, broker, root: str, protocol: int = mqtt.MQTTv311) -> None:
        self.broker = broker
        self.count = 0
        self.target = 0
        self.done = threading.Event()
        self.reached_at = 0.0
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{time.monotonic_ns()}",
                             protocol=protocol)
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, u, f, rc, p: [c.subscribe(topics.all_agents(leaf, root=root), 1)
                                                    for leaf in (topics.STATUS, topics.STATE)]

    def _on_message(self, client, userdata, msg) -> None:
        self.count += 1
        if self.target and self.count >= self.target and not self.done.is_set():
            self.reached_at = time.perf_counter()
            self.done.set()

    def expect(self, n: int) -> None:
        self.count, self.target, self.reached_at = 0, n, 0.0
        self.done.clear()

    def start(self) -> float:
        """Connect and subscribe; returns the time the connection started."""
        started = time.perf_counter()
        self.c.connect(self.broker.address.host, self.broker.address.port)
        self.c.loop_start()
        return started

    def wait(self) -> float:
        if not self.done.wait(ROUND_TIMEOUT_S):
            raise SystemExit(f"the bare subscriber got {self.count} of {self.target} messages")
        return self.reached_at

    def stop(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def registry_count(path: Path, where: str) -> int:
    conn = sqlite3.connect(path, timeout=30)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM agents WHERE {where}").fetchone()[0])
    finally:
        conn.close()


def wait_registry(path: Path, where: str, n: int, poll_s: float = 0.01) -> float:
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    while time.monotonic() < deadline:
        if registry_count(path, where) >= n:
            return time.perf_counter()
        time.sleep(poll_s)
    raise SystemExit(f"the registry holds {registry_count(path, where)} of {n} agents ({where})")


def one_round(n: int, tag: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="edgeloop-bench-ingest-"))
    broker = MosquittoBroker(extra_config="max_queued_messages 0\nmax_inflight_messages 100\n").start()
    hub = Hub(work / "home", actor="bench")
    try:
        keyid = hub.key.keyid
        ids = [f"{tag}-{i:05d}" for i in range(n)]
        birth: list[tuple[str, bytes]] = []
        for i, aid in enumerate(ids):
            st = AgentState(agent_id=aid, status=topics.ONLINE, session=1, agent_version="0.2.0",
                            started_at=1_700_000_000.0 + i, host=f"host-{i}",
                            http_url=f"http://10.0.{i // 250}.{i % 250}:8080",
                            active=ActiveModel("sensor-mlp", "3", f"{i:064x}"), trusted_keys=[keyid])
            birth.append((topics.agent_topic(aid, topics.STATUS), topics.ONLINE.encode()))
            birth.append((topics.agent_topic(aid, topics.STATE), st.encode()))
        publish_s = publish_all(broker, birth)

        bare5 = BareSubscriber(broker, topics.ROOT, mqtt.MQTTv5)
        bare5.expect(2 * n)
        t0 = bare5.start()
        bare5_birth = bare5.wait() - t0
        bare5.stop()
        bare = BareSubscriber(broker, topics.ROOT)
        bare.expect(2 * n)
        t0 = bare.start()
        bare_birth = bare.wait() - t0

        db = hub.home.registry_path
        t0 = time.perf_counter()
        runtime = HubRuntime(hub, broker.address.url).start(timeout=30)
        try:
            hub_birth = wait_registry(db, "member = 1 AND status = 'online' AND session = 1", n) - t0
            correct = registry_count(db, "member = 1 AND status = 'online' AND active_version = '3'")

            bare.expect(n)
            update = [(topics.agent_topic(aid, topics.STATUS), topics.OFFLINE.encode()) for aid in ids]
            t0 = time.perf_counter()
            publish_all(broker, update)
            bare_update = bare.wait() - t0
            hub_update = wait_registry(db, "member = 1 AND status = 'offline'", n) - t0
            fleet = runtime.fleet
            protocol = fleet.link.protocol if fleet is not None else None
            messages, batches = (fleet.ingested, fleet.batches) if fleet is not None else (0, 0)
        finally:
            runtime.stop()
            bare.stop()
        return {"agents": n, "publish_s": publish_s, "bare_birth_s": bare_birth, "bare5_birth_s": bare5_birth,
                "hub_birth_s": hub_birth, "bare_update_s": bare_update, "hub_update_s": hub_update,
                "correct_rows": correct, "hub_protocol": protocol, "messages": messages, "transactions": batches}
    finally:
        hub.close()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=3, help="rounds; the best of each figure is shown")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="print the figures as JSON instead of text, or with FILE write them there as well")
    args = p.parse_args(argv)
    rounds = [one_round(args.agents, f"bench{r}") for r in range(args.repeat)]
    keys = ("bare_birth_s", "bare5_birth_s", "hub_birth_s", "bare_update_s", "hub_update_s")
    best = {k: min(r[k] for r in rounds) for k in keys}
    summary = {**best, "agents": args.agents, "rounds": rounds,
               "birth_ratio": best["hub_birth_s"] / best["bare_birth_s"],
               "birth_ratio_mqtt5": best["hub_birth_s"] / best["bare5_birth_s"],
               "update_ratio": best["hub_update_s"] / best["bare_update_s"],
               "all_correct": all(r["correct_rows"] == args.agents for r in rounds)}
    if args.json == "-":
        print(json.dumps(summary, indent=2))
        return 0
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    print(f"hub ingest, {args.agents} simulated agents, retained status + state on Mosquitto "
          f"(best of {args.repeat} rounds)")
    print(f"  birth  (2 x {args.agents} retained messages on connect; the hub speaks MQTT "
          f"{rounds[0]['hub_protocol']}):")
    print(f"    hub registry {best['hub_birth_s']:.3f} s;  bare paho MQTT 3.1.1 {best['bare_birth_s']:.3f} s "
          f"-> {summary['birth_ratio']:.1f}x;  bare paho MQTT 5 {best['bare5_birth_s']:.3f} s "
          f"-> {summary['birth_ratio_mqtt5']:.1f}x")
    print(f"  update ({args.agents} live status changes, from the first publish): hub registry "
          f"{best['hub_update_s']:.3f} s;  bare paho {best['bare_update_s']:.3f} s -> {summary['update_ratio']:.1f}x")
    print(f"  registry rows correct after birth: {'all' if summary['all_correct'] else 'NOT ALL'} "
          f"({', '.join(str(r['correct_rows']) for r in rounds)}); "
          f"{rounds[-1]['messages']} messages in {rounds[-1]['transactions']} registry transactions (last round)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
