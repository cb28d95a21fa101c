"""MQTT inference request/response through the agent, against a raw paho echo through the same
broker in the same run; printed as ratios.

    python benchmarks/bench_mqtt.py [--requests 1000] [--slow-requests 60]

Brokers, both started by the benchmark on 127.0.0.1:

* Mosquitto in its DEFAULT configuration (``MosquittoBroker(tcp_nodelay=False)``: no
  ``set_tcp_nodelay``, so Nagle is on in the broker -- what almost every user runs);
* the embedded amqtt broker (MQTT 3.1.1 only).

The agent is a real ``edgeloop-agent run`` process serving the sample sensor MLP, trained,
exported, signed and deployed by the hub over the same broker. The raw echo is a separate
process too: a plain paho client subscribed like the agent, answering each request at the
request's QoS with a canned copy of a real agent answer (same size), to the request's Response
Topic with its Correlation Data (MQTT 5) or to a fixed topic (3.1.1). Requests carry one real row
of the sample data, with fixed-width ids so that every request and answer has the same size.

The requester is the same paho client for both: TCP_NODELAY and TCP_QUICKACK re-armed after
every read (``edgeloop.agent.mqtt_link.QuickAckClient``, what the docs tell integrators);
MQTT 5 requests use Response Topic + Correlation Data, MQTT 3.1.1 ones ``reply_to`` in the payload.
Agent and echo are measured in alternating blocks of 10 round trips, so that both see the same
machine load.

Second table: what a requester's own sockets cost it on the default Mosquitto, against the
agent -- plain paho (no TCP_NODELAY, no TCP_QUICKACK), TCP_NODELAY only, both -- at QoS 1 and 0.

No asserts: figures, not tests (the target is agent p50 <= 2x the echo on both brokers).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[1]

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop.agent.mqtt_link import QuickAckClient

if TYPE_CHECKING:
    from edgeloop.hub.services import Hub

MODEL = "sensor-mlp"
ECHO_REQUESTS = "bench/echo/requests"
REPLIES = "bench/replies"
ECHO_REPLIES = f"{REPLIES}/echo0000"  # where the echo answers 3.1.1 requests (as long as a requester's topic)


# --- clients -------------------------------------------------------------------------------------------
def paho_client(*, v5: bool, nodelay: bool = True, quickack: bool = True) -> mqtt.Client:
    """A paho client with the socket options asked for (QuickAckClient sets both)."""
    cid = f"bench-{uuid.uuid4().hex[:8]}"
    proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    if quickack:
        return QuickAckClient(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=proto)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=proto)
    if nodelay:
        def no_nagle(client: mqtt.Client, userdata: Any, sock: Any) -> None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        c.on_socket_open = no_nagle
    return c


def connect(c: mqtt.Client, host: str, port: int, subscribe: str | None = None) -> None:
    ready = threading.Event()

    def on_connect(*args: Any) -> None:
        if subscribe:
            c.subscribe(subscribe, 1)
        else:
            ready.set()

    c.on_connect = on_connect
    c.on_subscribe = lambda *args: ready.set()
    c.connect(host, port)
    c.loop_start()
    if not ready.wait(15):
        raise RuntimeError(f"could not connect/subscribe on {host}:{port}")


class Requester:
    """Sequential request/response; one reply topic; the time from publish to the answer's arrival."""

    def __init__(self, host: str, port: int, *, v5: bool, nodelay: bool = True, quickack: bool = True,
                 reply_topic: str | None = None) -> None:
        self.v5 = v5
        self.reply_topic = reply_topic or f"{REPLIES}/{uuid.uuid4().hex[:8]}"
        self.got = threading.Event()
        self.answer = b""
        self.answer_qos = -1
        self.c = paho_client(v5=v5, nodelay=nodelay, quickack=quickack)
        self.c.on_message = self._on_message
        connect(self.c, host, port, self.reply_topic)
        self.n = 0

    def _on_message(self, client, userdata, msg) -> None:
        self.answer, self.answer_qos = msg.payload, msg.qos
        self.got.set()

    def request(self, topic: str, row: list[float], qos: int) -> bytes:
        """One request: MQTT 5 properties, or ``reply_to`` in the payload on 3.1.1."""
        self.n += 1
        rid = f"{self.n:010d}"
        body: dict = {"id": rid, "inputs": [row]}
        props = None
        if self.v5:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = self.reply_topic
            props.CorrelationData = rid.encode()
        else:
            body["reply_to"] = self.reply_topic
        payload = json.dumps(body, separators=(",", ":")).encode()
        self.got.clear()
        self.c.publish(topic, payload, qos=qos, properties=props)
        if not self.got.wait(10):
            raise RuntimeError(f"no answer on {self.reply_topic} within 10 s")
        return self.answer

    def asker(self, topic: str, rows: list[list[float]], qos: int) -> Callable[[], bytes]:
        """A function asking one request on ``topic``, the rows in turn."""
        cycle = itertools.cycle(rows)
        return lambda: self.request(topic, next(cycle), qos)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def run_echo(host: str, port: int, v5: bool, answer_file: str) -> None:
    """The raw echo (its own process): answer each request at its QoS with the canned answer."""
    answer = Path(answer_file).read_bytes()
    c = paho_client(v5=v5)

    def on_message(client, userdata, msg) -> None:
        props = getattr(msg, "properties", None)
        topic = getattr(props, "ResponseTopic", None)
        out = None
        if props is not None and topic is not None:
            out = Properties(PacketTypes.PUBLISH)
            out.CorrelationData = props.CorrelationData
        client.publish(topic or ECHO_REPLIES, answer, qos=msg.qos, properties=out)

    c.on_message = on_message
    connect(c, host, port, ECHO_REQUESTS)
    print("ready", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    c.loop_stop()
    c.disconnect()


# --- figures ---------------------------------------------------------------------------------------------
@dataclass
class Figures:
    ms: list[float]

    @property
    def p50(self) -> float:
        return statistics.median(self.ms)

    @property
    def p95(self) -> float:
        s = sorted(self.ms)
        return s[min(len(s) - 1, max(0, round(0.95 * len(s)) - 1))]

    @property
    def over_20(self) -> int:
        return sum(m > 20 for m in self.ms)


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def alternate(a: Callable[[], object], b: Callable[[], object], n: int, per: int = 10, warmup: int = 30
              ) -> tuple[Figures, Figures]:
    """``n`` calls of each, in alternating blocks of ``per``, after a warm-up of each."""
    timed(a, warmup)
    timed(b, warmup)
    fa: list[float] = []
    fb: list[float] = []
    while len(fa) < n:
        k = min(per, n - len(fa))
        fa += timed(a, k)
        fb += timed(b, k)
    return Figures(fa), Figures(fb)


# --- setup ------------------------------------------------------------------------------------------------
@dataclass
class Model:
    hub: Hub
    bundle: bytes
    version: str
    rows: list[list[float]]
    pub_key: Path


def build_model(tmp: Path) -> Model:
    from edgeloop.hub.datasets import load_csv, sample_dataset_path
    from edgeloop.hub.services import Hub
    from edgeloop.hub.training import TrainParams

    hub = Hub(tmp / "hub", actor="bench")
    ds = load_csv(sample_dataset_path())
    rec = hub.register_dataset(ds)
    v = hub.build_version(ds, rec, MODEL, TrainParams(epochs=10, seed=0))
    b = hub.build_bundle(v.id)
    return Model(hub, b.path.read_bytes(), v.version["version"], [list(map(float, r)) for r in ds.X[:64]],
                 hub.public_key_path)


def start_agent(tmp: Path, name: str, broker, model: Model) -> subprocess.Popen:
    from edgeloop.agent.config import AgentConfig

    cfg = AgentConfig(agent_id=f"bench-{name}", state_dir=tmp / f"agent-{name}", trusted_keys=[model.pub_key],
                      mqtt_host=broker.address.host, mqtt_port=broker.address.port, http_port=0)
    path = tmp / f"bench-{name}.toml"
    path.write_text(cfg.to_toml())
    log = open(tmp / f"bench-{name}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "edgeloop.agent.cli", "run", "--config", str(path),
                             "--log-level", "WARNING"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def start_echo(broker, v5: bool, answer: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, __file__, "--echo", broker.address.host, str(broker.address.port),
                             "5" if v5 else "3.1.1", str(answer)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=REPO)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the echo responder did not start")
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def line(name: str, echo: Figures, agent: Figures) -> str:
    return (f"  {name:<20} {echo.p50:8.3f} {echo.p95:8.3f}   {agent.p50:8.3f} {agent.p95:8.3f} {agent.over_20:5d}"
            f"   {agent.p50 / echo.p50:6.2f}x")


HEADER = (f"  {'request':<20} {'echo p50':>8} {'p95':>8}   {'agent p50':>8} {'p95':>8} {'>20ms':>5}   "
          f"{'agent/echo p50':>6}")


def bench_broker(name: str, broker, agent_v5: bool, model: Model, tmp: Path, n: int, with_v5_requests: bool
                 ) -> dict[str, tuple[Figures, Figures]]:
    host, port = broker.address.host, broker.address.port
    agent = start_agent(tmp, name, broker, model)
    echos: list[subprocess.Popen] = []
    results: dict[str, tuple[Figures, Figures]] = {}
    try:
        with model.hub.fleet(broker.address) as fleet:
            aid = f"bench-{name}"
            if not fleet.wait_online([aid], 30):
                raise RuntimeError(f"agent did not come online; see {tmp / (aid + '.log')}")
            out = fleet.deploy(aid, model.bundle, model=MODEL, version=model.version, timeout=60)
            if not out.ok:
                raise RuntimeError(f"deploy failed: {out.message}")
        infer_topic = f"edgeloop/v1/agents/{aid}/infer"
        probe = Requester(host, port, v5=False)
        answer = tmp / f"answer-{name}.json"
        answer.write_bytes(probe.request(infer_topic, model.rows[0], 1))
        probe.close()
        if b'"infer_result"' not in answer.read_bytes():
            raise RuntimeError(f"the agent did not answer with a result: {answer.read_bytes()[:300]!r}")
        echos.append(start_echo(broker, agent_v5, answer))
        rows = model.rows
        for v5 in ([True, False] if with_v5_requests else [False]):
            for qos in (1, 0):
                req = Requester(host, port, v5=v5)
                # MQTT 5: the echo answers to the Response Topic; 3.1.1: to its fixed topic
                echo_req = req if v5 else Requester(host, port, v5=False, reply_topic=ECHO_REPLIES)
                echo_f, agent_f = alternate(echo_req.asker(ECHO_REQUESTS, rows, qos),
                                            req.asker(infer_topic, rows, qos), n)
                results[f"MQTT {'5' if v5 else '3.1.1'} QoS {qos}"] = (echo_f, agent_f)
                req.close()
                if echo_req is not req:
                    echo_req.close()
    finally:
        for e in echos:
            stop(e)
        agent.terminate()
        agent.wait(15)
    return results


def bench_requesters(name: str, broker, model: Model, tmp: Path, n: int, slow_n: int) -> dict[str, Figures]:
    """The agent on ``broker``, asked by requesters with different socket options."""
    host, port = broker.address.host, broker.address.port
    aid = f"bench-{name}"
    agent = start_agent(tmp, name, broker, model)
    out: dict[str, Figures] = {}
    try:
        with model.hub.fleet(broker.address) as fleet:
            if not fleet.wait_online([aid], 30):
                raise RuntimeError("agent did not come online")
            if not fleet.deploy(aid, model.bundle, model=MODEL, version=model.version, timeout=60).ok:
                raise RuntimeError("deploy failed")
        topic = f"edgeloop/v1/agents/{aid}/infer"
        kinds = [("plain paho", False, False), ("TCP_NODELAY", True, False), ("NODELAY + QUICKACK", True, True)]
        for label, nodelay, quickack in kinds:
            for qos in (1, 0):
                req = Requester(host, port, v5=False, nodelay=nodelay, quickack=quickack)
                count = n if (quickack or qos == 0) else slow_n  # the slow ones take ~45 ms each
                ask = req.asker(topic, model.rows, qos)
                timed(ask, 5)
                out[f"{label}, QoS {qos}"] = Figures(timed(ask, count))
                req.close()
    finally:
        agent.terminate()
        agent.wait(15)
    return out


def in_process(model: Model, n: int) -> tuple[Figures, Figures]:
    """The agent's compute floor: Serving.infer (validate, run, post, drift) against raw session.run."""
    import numpy as np
    import onnxruntime as ort

    from edgeloop.agent.drift import DriftMonitor
    from edgeloop.agent.runtime import ModelRunner, session_options
    from edgeloop.agent.serving import Serving
    from edgeloop.agent.wire.bundle import sha256, verify_bundle
    from edgeloop.agent.wire.envelope import TrustedKeys

    vb = verify_bundle(model.bundle, TrustedKeys.of([model.hub.key.public]))
    sess = ort.InferenceSession(vb.model_bytes, session_options(1), providers=["CPUExecutionProvider"])
    x = np.asarray(model.rows[:1], dtype=np.float32)
    serving = Serving()
    sha = sha256(model.bundle)
    monitor = None
    if vb.manifest.drift is not None:
        monitor = DriftMonitor(vb.manifest.drift, agent_id="bench", model=MODEL, version="1", bundle_sha256=sha)
    serving.activate(ModelRunner.load(vb.manifest, vb.model_bytes, bundle_sha256=sha), monitor)
    raw = timed(lambda: sess.run(None, {"features": x}), n)
    served = timed(lambda: serving.infer(model.rows[:1]), n)
    return Figures(raw), Figures(served)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000, help="round trips per figure (default 1000)")
    ap.add_argument("--slow-requests", type=int, default=60,
                    help="round trips for requesters that stall ~40 ms each (default 60)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    ap.add_argument("--echo", nargs=4, metavar=("HOST", "PORT", "PROTOCOL", "ANSWER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo:
        host, port, proto, answer = args.echo
        run_echo(host, int(port), proto == "5", answer)
        return

    import logging

    logging.basicConfig(level=logging.WARNING)
    from edgeloop.hub.fleet import EmbeddedBroker, MosquittoBroker

    n = args.requests
    tmp = Path(tempfile.mkdtemp(prefix="edgeloop-bench-mqtt-"))
    model = build_model(tmp)
    version = subprocess.run([MosquittoBroker.executable(), "-h"], capture_output=True, text=True).stdout.split("\n")[0]
    exe = version.split()[0]
    print(f"{os.cpu_count()} CPUs, loopback; {n} round trips per figure; one real row per request "
          f"(sample data), the agent's real answer size for the echo\n")
    raw, served = in_process(model, 2000)
    summary: dict = {"requests": n, "broker_version": version, "in_process": {"raw_p50_ms": raw.p50,
                     "served_p50_ms": served.p50}, "mosquitto": {}, "amqtt": {}, "requesters": {}}
    print("in-process compute floor (p50): raw session.run "
          f"{raw.p50:.3f} ms, agent Serving.infer {served.p50:.3f} ms\n")

    mosq = MosquittoBroker(tcp_nodelay=False).start()
    amqtt = EmbeddedBroker().start()
    logging.getLogger("amqtt").setLevel(logging.ERROR)  # its complaints about the agent's MQTT 5 probe
    try:
        print(f"{version}, DEFAULT config (no set_tcp_nodelay: Nagle on in the broker); agent speaks MQTT 5")
        print("requester: paho + TCP_NODELAY + TCP_QUICKACK re-armed (QuickAckClient); milliseconds")
        print(HEADER)
        for label, (echo, agent) in bench_broker("mosquitto", mosq, True, model, tmp, n, True).items():
            print(line(label, echo, agent))
            summary["mosquitto"][label] = {"echo_p50_ms": echo.p50, "echo_p95_ms": echo.p95,
                                           "agent_p50_ms": agent.p50, "agent_p95_ms": agent.p95}
        print("\nembedded amqtt broker (MQTT 3.1.1 only); agent speaks MQTT 3.1.1")
        print(HEADER)
        for label, (echo, agent) in bench_broker("amqtt", amqtt, False, model, tmp, n, False).items():
            print(line(label, echo, agent))
            summary["amqtt"][label] = {"echo_p50_ms": echo.p50, "echo_p95_ms": echo.p95,
                                       "agent_p50_ms": agent.p50, "agent_p95_ms": agent.p95}
        tuned = MosquittoBroker(tcp_nodelay=True).start()
        try:
            for label, broker in ((f"the DEFAULT {exe}", mosq), (f"a {exe} with set_tcp_nodelay true", tuned)):
                print(f"\nwhat the requester's own sockets cost it: the agent on {label}, MQTT 3.1.1 requests, ms")
                print(f"  {'requester':<28} {'p50':>8} {'p95':>8} {'>20ms':>7}")
                kind = "sockets-default" if broker is mosq else "sockets-tuned"
                for name, f in bench_requesters(kind, broker, model, tmp, n, args.slow_requests).items():
                    print(f"  {name:<28} {f.p50:8.3f} {f.p95:8.3f} {f.over_20:4d}/{len(f.ms)}")
                    summary["requesters"][f"{kind}: {name}"] = {"p50_ms": f.p50, "p95_ms": f.p95}
        finally:
            tuned.stop()
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
    finally:
        mosq.stop()
        amqtt.stop()
        model.hub.close()


if __name__ == "__main__":
    main()
