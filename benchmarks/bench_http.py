"""The agent's HTTP serving against MLServer, same model, same client, ratios from the same run.

    bash benchmarks/setup_mlserver.sh            # once: MLServer 1.7 in benchmarks/.mlserver-venv
    pip install -e '.[bench]'                    # the client: tritonclient[http]
    python benchmarks/bench_http.py [--requests 2000] [--seconds 5] [--concurrency 8 32] [--rounds 3]

The model is the sample sensor MLP the hub trains, exports and signs.
Both servers run in their own processes on 127.0.0.1:

* agent:    edgeloop.agent.http_api.HttpApi over Serving with the bundle's drift monitor, loaded
            from the verified bundle exactly as the agent loads it;
* MLServer: 1.7 with benchmarks/mlserver_onnx.py (onnxruntime with the agent's session options),
            access log off, in two configurations: its default (``parallel_workers=1``, inference
            in a worker process) and ``parallel_workers=0`` (inference in the server process).
            Ratios are taken against the better MLServer figure of the two, metric by metric.

The client is tritonclient.http (geventhttpclient, keep-alive connections, JSON tensors) asking
for the ``probabilities`` output of one real row of the sample data per request, rows taken in
turn. Each server's answers are checked against onnxruntime before timing. Reported: p50/p95
latency at concurrency 1, and requests/s (and p50) at each ``--concurrency`` with that many
requests in flight (one client process, gevent greenlets), plus a raw ``session.run`` baseline.
The servers are measured in turn within each of ``--rounds`` rounds (so a busy moment of the
machine hits them alike); each figure is the median over the rounds. The client shares the
machine with the servers. No asserts: figures, not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
MODEL = "sensor-mlp"
DEFAULT_MLSERVER_VENV = HERE / ".mlserver-venv"


# --- the agent's side, run in its own process: python bench_http.py --serve-agent DIR ---------------------
def serve_agent(workdir: Path) -> None:
    """Load the bundle like the agent does and serve it over HTTP until stdin closes."""
    from edgeloop.agent.drift import DriftMonitor
    from edgeloop.agent.http_api import HttpApi
    from edgeloop.agent.runtime import ModelRunner
    from edgeloop.agent.serving import Serving
    from edgeloop.agent.wire.bundle import verify_bundle
    from edgeloop.agent.wire.envelope import TrustedKeys

    data = (workdir / "bundle.bin").read_bytes()
    vb = verify_bundle(data, TrustedKeys.from_pems([(workdir / "hub.pub").read_bytes()]))
    sha = (workdir / "bundle.sha256").read_text().strip()
    runner = ModelRunner.load(vb.manifest, vb.model_bytes, bundle_sha256=sha)
    runner.smoke_test()
    monitor = None
    if vb.manifest.drift is not None:
        monitor = DriftMonitor(vb.manifest.drift, agent_id="bench", model=vb.manifest.model_name,
                               version=vb.manifest.version, bundle_sha256=sha)
    serving = Serving(on_drift_report=lambda report: None)
    serving.activate(runner, monitor)
    with HttpApi(serving, host="127.0.0.1", port=0) as api:
        print(api.port, flush=True)
        sys.stdin.read()  # the benchmark closes our stdin to stop us


# --- model -------------------------------------------------------------------------------------------
def build_model(workdir: Path) -> None:
    """Train, export, quantize-check and sign the sample MLP with the hub; keep what the servers need."""
    from edgeloop.agent.wire.bundle import verify_bundle
    from edgeloop.agent.wire.envelope import TrustedKeys
    from edgeloop.hub.datasets import load_csv, sample_dataset_path
    from edgeloop.hub.services import Hub
    from edgeloop.hub.training import TrainParams

    hub = Hub(workdir / "hub", actor="bench")
    try:
        ds = load_csv(sample_dataset_path())
        rec = hub.register_dataset(ds)
        v = hub.build_version(ds, rec, MODEL, TrainParams(epochs=10, seed=0))
        b = hub.build_bundle(v.id)
        data = b.path.read_bytes()
        vb = verify_bundle(data, TrustedKeys.of([hub.key.public]))
        (workdir / "bundle.bin").write_bytes(data)
        (workdir / "bundle.sha256").write_text(b.sha256)
        shutil.copyfile(hub.public_key_path, workdir / "hub.pub")
        (workdir / "model.onnx").write_bytes(vb.model_bytes)
        import numpy as np

        np.save(workdir / "rows.npy", np.ascontiguousarray(ds.X[:512], dtype=np.float32))
        (workdir / "model.json").write_text(json.dumps({
            "version": v.id, "features": ds.n_features, "bytes": len(vb.model_bytes),
            "quantization": vb.manifest.quantization.get("chosen", "fp32")}))
    finally:
        hub.close()


# --- servers -----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, path: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                c.close()
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on port {port} was not ready after {timeout:.0f} s")


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_agent(workdir: Path) -> Server:
    log = workdir / "agent.log"
    proc = subprocess.Popen([sys.executable, __file__, "--serve-agent", str(workdir)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("wb"), text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.isdigit():
        raise RuntimeError(f"the agent server did not start; see {log}")
    port = int(line)
    wait_ready(port, f"/v2/models/{MODEL}/ready", proc)
    return Server("agent", port, proc, log)


def agent_session_options() -> dict:
    """The agent's onnxruntime session options, as plain values for the MLServer runtime."""
    from edgeloop.agent.runtime import session_options

    so = session_options(1)
    keys = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")
    return {"intra_op_num_threads": so.intra_op_num_threads, "inter_op_num_threads": so.inter_op_num_threads,
            "log_severity_level": so.log_severity_level, "execution_mode": int(so.execution_mode),
            "graph_optimization_level": int(so.graph_optimization_level),
            "config": {k: so.get_session_config_entry(k) for k in keys}}


def start_mlserver(workdir: Path, venv: Path, workers: int) -> Server:
    root = workdir / f"mlserver-w{workers}"
    (root / MODEL).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(workdir / "model.onnx", root / MODEL / "model.onnx")
    (root / MODEL / "model-settings.json").write_text(json.dumps({
        "name": MODEL, "implementation": "mlserver_onnx.OnnxRuntime",
        "parameters": {"uri": "./model.onnx", "extra": {"session_options": agent_session_options()}}}))
    port = free_port()
    (root / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "debug": False, "parallel_workers": workers}))
    log = root / "mlserver.log"
    env = dict(os.environ, PYTHONPATH=str(HERE))
    proc = subprocess.Popen([str(venv / "bin" / "mlserver"), "start", str(root)], cwd=root, env=env,
                            stdin=subprocess.PIPE, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_ready(port, f"/v2/models/{MODEL}/ready", proc, timeout=120)
    except RuntimeError as exc:
        proc.kill()
        raise RuntimeError(f"MLServer did not start ({exc}); see {log}") from None
    return Server(f"MLServer w={workers}", port, proc, log)


# --- the client ----------------------------------------------------------------------------------
@dataclass
class Figures:
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    rps: dict[int, float] = field(default_factory=dict)
    load_p50_ms: dict[int, float] = field(default_factory=dict)


def pct(ms: list[float], q: float) -> float:
    s = sorted(ms)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


class Client:
    """tritonclient.http with ``concurrency`` keep-alive connections; one row per request, rows in turn."""

    def __init__(self, port: int, rows, concurrency: int) -> None:
        import tritonclient.http as th

        self.th = th
        self.client = th.InferenceServerClient(f"127.0.0.1:{port}", concurrency=concurrency,
                                               connection_timeout=10, network_timeout=30)
        self.rows = rows
        self.i = 0
        self.outputs = [th.InferRequestedOutput("probabilities", binary_data=False)]

    def infer(self):
        row = self.rows[self.i % len(self.rows)][None, :]
        self.i += 1
        inp = self.th.InferInput("features", list(row.shape), "FP32")
        inp.set_data_from_numpy(row, binary_data=False)
        return self.client.infer(MODEL, [inp], outputs=self.outputs).as_numpy("probabilities")

    def close(self) -> None:
        self.client.close()


def check_answers(port: int, rows, expected) -> None:
    import numpy as np

    c = Client(port, rows[:32], 1)
    try:
        got = np.concatenate([c.infer() for _ in range(32)])
    finally:
        c.close()
    np.testing.assert_allclose(got, expected[:32], atol=1e-5)


def latency(port: int, rows, n: int) -> tuple[float, float]:
    c = Client(port, rows, 1)
    try:
        for _ in range(min(200, n)):
            c.infer()
        ms = []
        for _ in range(n):
            t = time.perf_counter()
            c.infer()
            ms.append((time.perf_counter() - t) * 1000)
    finally:
        c.close()
    return pct(ms, 0.5), pct(ms, 0.95)


def throughput(port: int, rows, concurrency: int, seconds: float) -> tuple[float, float]:
    """Requests/s with ``concurrency`` requests in flight, and their p50 latency in ms."""
    import gevent

    c = Client(port, rows, concurrency)
    ms: list[float] = []

    def worker(until: float, record: bool) -> None:
        while time.perf_counter() < until:
            t = time.perf_counter()
            c.infer()
            if record:
                ms.append((time.perf_counter() - t) * 1000)

    try:
        warm = time.perf_counter() + min(1.0, seconds / 3)
        gevent.joinall([gevent.spawn(worker, warm, False) for _ in range(concurrency)], raise_error=True)
        start = time.perf_counter()
        gevent.joinall([gevent.spawn(worker, start + seconds, True) for _ in range(concurrency)], raise_error=True)
        elapsed = time.perf_counter() - start
    finally:
        c.close()
    return len(ms) / elapsed, statistics.median(ms)


def measure(servers: list[Server], rows, args: argparse.Namespace) -> dict[str, Figures]:
    """Every figure of every server, in ``args.rounds`` interleaved rounds; the median of each figure."""
    runs: dict[str, list[Figures]] = {s.name: [] for s in servers}
    for r in range(args.rounds):
        figs = {s.name: Figures() for s in servers}
        for s in servers:
            figs[s.name].p50_ms, figs[s.name].p95_ms = latency(s.port, rows, args.requests)
        for n in args.concurrency:
            for s in servers:
                figs[s.name].rps[n], figs[s.name].load_p50_ms[n] = throughput(s.port, rows, n, args.seconds)
        for name, f in figs.items():
            runs[name].append(f)
        print(f"  round {r + 1}/{args.rounds} done", flush=True)
    return {name: _median(fs, args.concurrency) for name, fs in runs.items()}


def _median(figs: list[Figures], concurrency: list[int]) -> Figures:
    med = statistics.median
    return Figures(p50_ms=med(f.p50_ms for f in figs), p95_ms=med(f.p95_ms for f in figs),
                   rps={n: med(f.rps[n] for f in figs) for n in concurrency},
                   load_p50_ms={n: med(f.load_p50_ms[n] for f in figs) for n in concurrency})


def raw_session(workdir: Path, rows, n: int) -> tuple[float, float]:
    import onnxruntime as ort

    from edgeloop.agent.runtime import session_options

    sess = ort.InferenceSession(str(workdir / "model.onnx"), session_options(1), providers=["CPUExecutionProvider"])
    ms = []
    for i in range(n + 200):
        x = rows[i % len(rows)][None, :]
        t = time.perf_counter()
        sess.run(None, {"features": x})
        if i >= 200:
            ms.append((time.perf_counter() - t) * 1000)
    return pct(ms, 0.5), pct(ms, 0.95)


def expected_probabilities(workdir: Path, rows):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(workdir / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(["probabilities"], {"features": rows})[0]


# --- report ------------------------------------------------------------------------------------------
def best(figs: list[Figures], pick: Callable[[Figures], float], lower: bool) -> float:
    values = [pick(f) for f in figs]
    return min(values) if lower else max(values)


def report(results: dict[str, Figures], raw: tuple[float, float], concurrency: list[int]) -> None:
    names = list(results)
    w = max(len(n) for n in names) + 2
    print(f"\n{'':<{w}}{'p50 ms':>9}{'p95 ms':>9}" + "".join(f"{f'req/s@{n}':>12}{f'p50@{n}':>9}" for n in concurrency))
    print(f"{'onnxruntime session.run':<{w}}{raw[0]:>9.3f}{raw[1]:>9.3f}")
    for name, f in results.items():
        print(f"{name:<{w}}{f.p50_ms:>9.3f}{f.p95_ms:>9.3f}"
              + "".join(f"{f.rps[n]:>12,.0f}{f.load_p50_ms[n]:>9.2f}" for n in concurrency))
    peers = [f for n, f in results.items() if n != "agent"]
    if "agent" not in results or not peers:
        return
    a = results["agent"]
    p50 = best(peers, lambda f: f.p50_ms, lower=True)
    print(f"\nagent ÷ best MLServer: p50 {a.p50_ms / p50:.2f}x (target <= 0.50x)", end="")
    for n in concurrency:
        rps = best(peers, lambda f, n=n: f.rps[n], lower=False)
        print(f"; throughput@{n} {a.rps[n] / rps:.2f}x (target >= 1.00x)", end="")
    print(f"\nagent p50 over raw session.run: +{a.p50_ms - raw[0]:.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000, help="sequential requests for the latency figures")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per throughput figure")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each figure is their median")
    ap.add_argument("--mlserver-venv", type=Path, default=DEFAULT_MLSERVER_VENV)
    ap.add_argument("--mlserver-workers", type=int, nargs="*", default=[1, 0],
                    help="MLServer parallel_workers settings to run (default: 1 = its default, and 0)")
    ap.add_argument("--workdir", type=Path, help="keep the model here and reuse it on the next run")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    ap.add_argument("--serve-agent", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_agent is not None:
        serve_agent(args.serve_agent)
        return

    import numpy as np

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgeloop-bench-http-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "model.json").exists():
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                        "import bench_http; bench_http.build_model(bench_http.Path(sys.argv[2]))",
                        str(HERE), str(workdir)], check=True, cwd=REPO)
    info = json.loads((workdir / "model.json").read_text())
    rows = np.load(workdir / "rows.npy")
    expected = expected_probabilities(workdir, rows)
    print(f"model: {info['version']} ({info['quantization']}), {info['bytes']} B ONNX, {info['features']} features; "
          f"{os.cpu_count()} CPUs; {args.requests} sequential requests, {args.seconds:g} s per throughput figure")
    raw = raw_session(workdir, rows, args.requests)

    mlserver = args.mlserver_venv / "bin" / "mlserver"
    plan: list[Callable[[], Server]] = [lambda: start_agent(workdir)]
    if mlserver.exists():
        plan += [lambda w=w: start_mlserver(workdir, args.mlserver_venv, w) for w in args.mlserver_workers]
    else:
        print(f"(MLServer not found at {mlserver}: run benchmarks/setup_mlserver.sh; agent figures only)")
    servers: list[Server] = []
    try:
        for start in plan:
            servers.append(start())
            check_answers(servers[-1].port, rows, expected)
        results = measure(servers, rows, args)
    finally:
        for server in servers:
            server.stop()
    report(results, raw, args.concurrency)
    if args.json:
        args.json.write_text(json.dumps({
            "model": info, "requests": args.requests, "seconds": args.seconds, "rounds": args.rounds,
            "concurrency": args.concurrency, "mlserver": mlserver.exists(),
            "raw_session_run": {"p50_ms": raw[0], "p95_ms": raw[1]},
            "servers": {name: {"p50_ms": f.p50_ms, "p95_ms": f.p95_ms, "rps": {str(n): f.rps[n] for n in f.rps},
                               "load_p50_ms": {str(n): f.load_p50_ms[n] for n in f.load_p50_ms}}
                        for name, f in results.items()}}, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
