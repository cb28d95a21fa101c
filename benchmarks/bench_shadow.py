"""Shadow mode's cost on the answered request: latency with a shadow running vs without, same run.

    python benchmarks/bench_shadow.py [--requests 2000] [--rounds 3] [--hidden 64] [--shadow-hidden 64]

One real agent process (``python -m edgeloop.agent.cli run``) on a private Mosquitto, serving an MLP
(6 features, ``--hidden`` units, 3 classes; built with onnx.helper) loaded from a signed bundle in its
store. The client asks over HTTP (Open Inference Protocol v2), one keep-alive connection
(``http.client``; tritonclient is used instead when installed), one row per request, one request in
flight -- the latency an answered request sees. Each round measures ``--requests`` requests with no
shadow, then sends a signed ``deploy`` with ``"shadow": true`` of a second MLP of the same shape and other
weights (``--shadow-hidden`` makes it bigger), waits for its ``install_result``, measures again with the
shadow running on every request, and stops it (signed ``stop_shadow``). The first round transfers the
shadow bundle; later rounds find it in the agent's store. Printed: p50 / p99 / mean of each phase (median
over rounds), the on/off ratios, and what the shadow reported (requests compared, dropped, agreement).
``--bound P50_RATIO,P99_RATIO`` exits 1 when a ratio of the agent's HTTP figures is above it.

First, an interleaved measurement in this process, which a busy machine blurs less: the same
:class:`~edgeloop.agent.serving.Serving` answers ``--requests`` requests in blocks of 100, the shadow
hook on in every other block (the first 10 requests of a block are not counted), and the medians of
the two are compared -- the cost the live path pays to offer each request to the shadow, with the
shadow's worker running beside it.
No asserts otherwise: figures, not tests.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = "bench-mlp"
FEATURES = [f"f{i}" for i in range(6)]
LABELS = ["a", "b", "c"]
CHUNK = 64 * 1024


def mlp_onnx(hidden: int, seed: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(6, hidden)).astype(np.float32)
    w2 = (rng.normal(size=(hidden, 3)) / np.sqrt(hidden)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["features", "w1"], ["h0"]), helper.make_node("Relu", ["h0"], ["h"]),
             helper.make_node("MatMul", ["h", "w2"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return bytes(model.SerializeToString())


def bundle(key, model: bytes, version: str) -> bytes:
    from edgeloop.agent.wire.bundle import file_entry, pack_bundle
    from edgeloop.agent.wire.manifest import Manifest, TensorSpec

    manifest = Manifest(model_name=MODEL, version=version, task="classification", created_at=time.time(),
                        key_id=key.keyid, entrypoint="model.onnx", files=[file_entry("model.onnx", model)],
                        feature_names=FEATURES, inputs=[TensorSpec("features", "FP32", [-1, 6])],
                        outputs=[TensorSpec("probabilities", "FP32", [-1, 3])], labels=LABELS, lineage={})
    return pack_bundle(manifest, {"model.onnx": model}, key)


class Commander:
    """Signed commands and chunks to the agent; its events and shadow reports."""

    def __init__(self, host: str, port: int, key, agent_id: str) -> None:
        import paho.mqtt.client as mqtt

        from edgeloop.agent.wire import topics

        self.key, self.aid, self.topics, self.counter = key, agent_id, topics, 0
        self.events: list[dict] = []
        self.reports: list[dict] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.subscribe([(topics.agent_topic(agent_id, topics.EVENTS), 1),
                               (topics.agent_topic(agent_id, topics.SHADOW), 1)])
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self.cond:
            (self.reports if msg.topic.endswith("/shadow") else self.events).append(json.loads(msg.payload))
            self.cond.notify_all()

    def send(self, command: str, args: dict) -> str:
        from edgeloop.agent.wire.commands import seal_command
        from edgeloop.agent.wire.messages import Command

        self.counter += 1
        now = time.time()
        cmd = Command(command=command, command_id=uuid.uuid4().hex, agent_id=self.aid, counter=self.counter,
                      issued_at=now, expires_at=now + 300, args=args)
        self.client.publish(self.topics.agent_topic(self.aid, self.topics.CMD), seal_command(self.key, cmd), qos=1)
        return cmd.command_id

    def wait(self, cid: str, kind: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev in self.events:
                    if ev.get("command_id") == cid and (ev["event"] == kind or not ev["ok"]):
                        return ev
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no {kind} for command {cid}")
                self.cond.wait(1.0)

    def shadow_deploy(self, data: bytes, version: str) -> dict:
        from edgeloop.agent.wire.messages import Chunk, TransferSpec
        from edgeloop.agent.wire.shadow import shadow_args

        sha = hashlib.sha256(data).hexdigest()
        spec = TransferSpec(uuid.uuid4().hex, sha, len(data), CHUNK, -(-len(data) // CHUNK))
        cid = self.send("deploy", {"transfer": spec.to_dict(), "bundle_sha256": sha, "model": MODEL,
                                   "version": version, **shadow_args(1.0)})
        for i in range(spec.chunks):
            self.client.publish(self.topics.agent_topic(self.aid, self.topics.BUNDLE),
                                Chunk(spec.transfer_id, i, data[i * CHUNK:(i + 1) * CHUNK]).encode(), qos=1)
        return self.wait(cid, "install_result")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def http_client(port: int):
    """``ask(row) -> seconds``: one request on a keep-alive connection (tritonclient when installed)."""
    try:
        import tritonclient.http as th

        tc = th.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=30, network_timeout=30)

        def ask_triton(row: list[float]) -> float:
            inp = th.InferInput("features", [1, 6], "FP32")
            inp.set_data_from_numpy(np.asarray([row], dtype=np.float32), binary_data=False)
            t = time.perf_counter()
            tc.infer(MODEL, [inp], outputs=[th.InferRequestedOutput("probabilities", binary_data=False)])
            return time.perf_counter() - t

        return ask_triton, "tritonclient.http"
    except ImportError:
        pass
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    path = f"/v2/models/{MODEL}/infer"
    headers = {"Content-Type": "application/json"}

    def ask(row: list[float]) -> float:
        body = json.dumps({"inputs": [{"name": "features", "shape": [1, 6], "datatype": "FP32", "data": row}]})
        t = time.perf_counter()
        conn.request("POST", path, body, headers)
        resp = conn.getresponse()
        data = resp.read()
        took = time.perf_counter() - t
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
        return took

    return ask, "http.client (keep-alive)"


def phase(ask, rows: list[list[float]], n: int) -> list[float]:
    for r in rows[:50]:  # warm-up
        ask(r)
    return [ask(rows[i % len(rows)]) * 1000.0 for i in range(n)]


def figures(ms: list[float]) -> dict[str, float]:
    arr = np.asarray(ms)
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)), "mean": float(arr.mean())}


def paired(key, live: bytes, shadow: bytes, rows: list[list[float]], n: int) -> None:
    """In-process: Serving.infer with the shadow hook on and off on alternate requests."""
    from edgeloop.agent.runtime import ModelRunner
    from edgeloop.agent.serving import Serving
    from edgeloop.agent.shadow import ShadowInfo, ShadowRunner
    from edgeloop.agent.wire.bundle import verify_bundle
    from edgeloop.agent.wire.envelope import TrustedKeys

    def runner(data: bytes, sha: str) -> ModelRunner:
        vb = verify_bundle(data, TrustedKeys.of([key.public]))
        return ModelRunner.load(vb.manifest, vb.model_bytes, bundle_sha256=sha)

    lv, sv = runner(live, "1" * 64), runner(shadow, "2" * 64)
    sr = ShadowRunner(sv, lv, ShadowInfo("bench", "2" * 64, 3600.0), lambda r: None).start()
    serving = Serving()
    serving.activate(lv)
    times: dict[bool, list[float]] = {True: [], False: []}
    block, settle = 100, 10  # blocks of requests alternate on/off; the first of each block settle the change
    for i in range(n + 2 * block):
        on = bool((i // block) % 2)
        serving.shadow = sr.offer if on else None
        t = time.perf_counter()
        serving.infer([rows[i % len(rows)]])
        if i >= 2 * block and i % block >= settle:
            times[on].append((time.perf_counter() - t) * 1e6)
    rep = sr.stop()
    f = {k: (statistics.median(v), float(np.percentile(v, 99))) for k, v in times.items()}
    print(f"in-process Serving.infer, {n} requests, shadow hook on/off in alternate blocks "
          f"(shadow compared {rep.requests}, dropped {rep.dropped}):")
    print(f"  off: p50 {f[False][0]:.1f} us, p99 {f[False][1]:.1f} us;  on: p50 {f[True][0]:.1f} us, "
          f"p99 {f[True][1]:.1f} us;  added p50 {f[True][0] - f[False][0]:+.1f} us", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--shadow-hidden", type=int, default=64)
    ap.add_argument("--bound", default=None, metavar="P50,P99", help="exit 1 when an on/off ratio is above it")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    args = ap.parse_args()

    from edgeloop.agent.config import AgentConfig
    from edgeloop.agent.store import AgentStore
    from edgeloop.agent.wire.envelope import SigningKey
    from edgeloop.hub.fleet import MosquittoBroker, free_port

    key = SigningKey.generate()
    live = bundle(key, mlp_onnx(args.hidden, 1), "1")
    shadow = bundle(key, mlp_onnx(args.shadow_hidden, 2), "2")
    rows = np.random.default_rng(0).normal(size=(500, 6)).round(4).tolist()
    paired(key, live, shadow, rows, args.requests)
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker() as broker:
        work = Path(tmp)
        (work / "hub.pub").write_bytes(key.public_pem())
        AgentStore(work / "state").install(hashlib.sha256(live).hexdigest(), live, MODEL, "1")
        http_port = free_port()
        cfg = AgentConfig(agent_id="bench-shadow", state_dir=work / "state", trusted_keys=[work / "hub.pub"],
                          mqtt_host=broker.address.host, mqtt_port=broker.address.port, http_port=http_port)
        (work / "agent.toml").write_text(cfg.to_toml())
        log = open(work / "agent.log", "wb")
        argv = [sys.executable, "-m", "edgeloop.agent.cli", "run", "--config", str(work / "agent.toml")]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        cmd = Commander(broker.address.host, broker.address.port, key, "bench-shadow")
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=2)
                    c.request("GET", "/v2/health/ready")
                    if c.getresponse().status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the agent did not become ready:\n{(work / 'agent.log').read_text()[-3000:]}")
                time.sleep(0.2)
            ask, client = http_client(http_port)
            off: list[dict] = []
            on: list[dict] = []
            for r in range(args.rounds):
                off.append(figures(phase(ask, rows, args.requests)))
                ev = cmd.shadow_deploy(shadow, "2")
                if not ev["ok"]:
                    raise SystemExit(f"shadow deploy failed: {ev}")
                on.append(figures(phase(ask, rows, args.requests)))
                stopped = cmd.wait(cmd.send("stop_shadow", {}), "command_result")
                rep = stopped["details"].get("report", {})
                print(f"round {r + 1}: off p50 {off[-1]['p50']:.3f} ms, on p50 {on[-1]['p50']:.3f} ms; shadow compared "
                      f"{rep.get('requests')} requests, dropped {rep.get('dropped')}, agreement "
                      f"{rep.get('agreement')}, shadow p50 {rep.get('shadow_p50_ms')} ms", flush=True)
        finally:
            cmd.close()
            proc.terminate()
            proc.wait(15)
            log.close()
    med = {name: {k: statistics.median(f[k] for f in figs) for k in ("p50", "p99", "mean")}
           for name, figs in (("off", off), ("on", on))}
    ratio = {k: med["on"][k] / med["off"][k] for k in ("p50", "p99", "mean")}
    print(f"\nclient: {client}; {args.requests} requests per phase, {args.rounds} rounds, medians; "
          f"live MLP hidden {args.hidden}, shadow MLP hidden {args.shadow_hidden}")
    print(f"{'':12}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    for name in ("off", "on"):
        print(f"shadow {name:5}{med[name]['p50']:10.3f}{med[name]['p99']:10.3f}{med[name]['mean']:10.3f}")
    print(f"{'on / off':12}{ratio['p50']:10.2f}{ratio['p99']:10.2f}{ratio['mean']:10.2f}")
    if args.json:
        args.json.write_text(json.dumps({"client": client, "requests": args.requests, "rounds": args.rounds,
                                         "hidden": args.hidden, "shadow_hidden": args.shadow_hidden,
                                         "off_ms": med["off"], "on_ms": med["on"], "ratio": ratio}, indent=2))
    if args.bound:
        p50_bound, p99_bound = (float(x) for x in args.bound.split(","))
        ok = ratio["p50"] <= p50_bound and ratio["p99"] <= p99_bound
        print(f"bound p50 <= {p50_bound}, p99 <= {p99_bound}: {'within' if ok else 'EXCEEDED'}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
