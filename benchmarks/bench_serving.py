"""Serving overhead of the agent, as ratios against baselines measured in the same run.

    python benchmarks/bench_serving.py [--requests 300]

* in-process:  Serving.infer (validation + ORT + postprocess + drift)  ÷  raw session.run
* MQTT:        request/response through a real agent process  ÷  raw broker echo (same client, same broker)
* HTTP:        POST /v2/models/{m}/infer  ÷  GET /v2/health/live on the same server

Brokers: a private Mosquitto (if installed) and the embedded amqtt broker.
Prints p50/p95 in milliseconds and the ratios of the p50s. No asserts: figures, not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.runtime import ModelRunner, session_options
from edgeloop.agent.serving import Serving
from edgeloop.agent.wire.bundle import verify_bundle
from edgeloop.agent.wire.envelope import TrustedKeys
from edgeloop.hub.datasets import load_csv, sample_dataset_path
from edgeloop.hub.fleet import EmbeddedBroker, MosquittoBroker
from edgeloop.hub.services import Hub
from edgeloop.hub.training import TrainParams


def stats(ms: list[float]) -> tuple[float, float]:
    s = sorted(ms)
    return statistics.median(s), s[max(0, int(0.95 * len(s)) - 1)]


def timed(fn, n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def row(name: str, ms: list[float], base: list[float] | None = None) -> str:
    p50, p95 = stats(ms)
    ratio = f"{p50 / stats(base)[0]:6.2f}x" if base else "  base "
    return f"  {name:<44} p50 {p50:8.3f} ms   p95 {p95:8.3f} ms   {ratio}"


class EchoClient:
    """One paho client with TCP_NODELAY; request/response by topic."""

    def __init__(self, host: str, port: int, sub: str) -> None:
        import socket

        self.got = threading.Event()
        self.last = b""
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.c.on_socket_open = lambda c, u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.c.on_message = self._on
        self.c.connect(host, port)
        self.c.subscribe(sub, 1)
        self.c.loop_start()
        time.sleep(0.3)

    def _on(self, c, u, m) -> None:
        self.last = m.payload
        self.got.set()

    def roundtrip(self, topic: str, payload: bytes, qos: int = 1) -> bytes:
        self.got.clear()
        self.c.publish(topic, payload, qos=qos)
        if not self.got.wait(10):
            raise RuntimeError("no answer")
        return self.last

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    n = args.requests
    tmp = Path(tempfile.mkdtemp(prefix="edgeloop-bench-"))
    hub = Hub(tmp / "hub", actor="bench")
    ds = load_csv(sample_dataset_path())
    rec = hub.register_dataset(ds)
    v = hub.build_version(ds, rec, "bench-mlp", TrainParams(epochs=10, seed=0))
    b = hub.build_bundle(v.id)
    vb = verify_bundle(b.path.read_bytes(), TrustedKeys.of([hub.key.public]))
    x1 = ds.X[:1]
    print(f"model: {v.id} ({vb.manifest.quantization.get('chosen', 'fp32')}), {len(vb.model_bytes)} B ONNX, "
          f"{ds.n_features} features, {os.cpu_count()} CPUs, {n} requests each\n")

    # --- in-process -------------------------------------------------------------------
    import onnxruntime as ort

    sess = ort.InferenceSession(vb.model_bytes, session_options(1), providers=["CPUExecutionProvider"])
    raw = timed(lambda: sess.run(None, {"features": x1}), n)
    serving = Serving()
    runner = ModelRunner.load(vb.manifest, vb.model_bytes, bundle_sha256=b.sha256)
    from edgeloop.agent.drift import DriftMonitor

    serving.activate(runner, DriftMonitor(vb.manifest.drift, agent_id="bench", model="m", version="1",
                                          bundle_sha256=b.sha256))
    rows = x1.tolist()
    inproc = timed(lambda: serving.infer(rows), n)
    print("in-process")
    print(row("raw onnxruntime session.run (batch 1)", raw))
    print(row("agent Serving.infer (validate+run+post+drift)", inproc, raw))

    # --- over brokers -------------------------------------------------------------------
    brokers = []
    try:
        brokers.append(("mosquitto", MosquittoBroker().start()))
    except Exception as exc:  # not installed
        print(f"\n(mosquitto unavailable: {exc})")
    brokers.append(("embedded amqtt", EmbeddedBroker().start()))
    pub = hub.public_key_path
    http_done = False
    for name, broker in brokers:
        cfg = AgentConfig(agent_id=f"bench-{name.split()[0]}", state_dir=tmp / f"agent-{name.split()[0]}",
                          trusted_keys=[pub], mqtt_host=broker.address.host, mqtt_port=broker.address.port)
        cfg_path = tmp / f"{cfg.agent_id}.toml"
        cfg_path.write_text(cfg.to_toml())
        log = open(tmp / f"{cfg.agent_id}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "edgeloop.agent.cli", "run", "--config", str(cfg_path),
                                 "--log-level", "WARNING"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            with hub.fleet(broker.address.url) as fleet:
                if not fleet.wait_online([cfg.agent_id], 30):
                    raise RuntimeError("agent did not come online")
                out = fleet.deploy(cfg.agent_id, b.path.read_bytes(), model="bench-mlp", version=v.version["version"])
                assert out.ok, out.message
                http_url = fleet.agents()[cfg.agent_id].http_url
            from edgeloop.agent.wire import topics

            echo = EchoClient(broker.address.host, broker.address.port, "bench/echo")
            base = timed(lambda: echo.roundtrip("bench/echo", b'{"id":"1","inputs":[[0,0,0,0,0,0]]}'), n)
            echo.close()
            client = EchoClient(broker.address.host, broker.address.port, "bench/reply")
            req = json.dumps({"id": "b", "inputs": rows, "reply_to": "bench/reply"}).encode()
            agent_rt = timed(lambda: client.roundtrip(topics.agent_topic(cfg.agent_id, topics.INFER), req), n)
            client.close()
            print(f"\nMQTT via {name} (QoS 1, loopback)")
            print(row("raw broker echo (publish -> own subscription)", base))
            print(row("agent inference request/response", agent_rt, base))
            if not http_done:
                http_done = True
                live = timed(lambda: urllib.request.urlopen(f"{http_url}/v2/health/live", timeout=5).read(), n)
                body = json.dumps({"inputs": [{"name": "features", "shape": [1, ds.n_features],
                                               "datatype": "FP32", "data": rows[0]}]}).encode()
                infer_url = f"{http_url}/v2/models/bench-mlp/infer"
                http = timed(lambda: urllib.request.urlopen(urllib.request.Request(
                    infer_url, body, {"Content-Type": "application/json"}), timeout=5).read(), n)
                print("\nHTTP (Open Inference Protocol, urllib client, new connection per request)")
                print(row("GET /v2/health/live (server baseline)", live))
                print(row("POST /v2/models/{m}/infer", http, live))
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()
    for _, broker in brokers:
        broker.stop()
    hub.close()


if __name__ == "__main__":
    main()
