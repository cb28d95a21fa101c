"""One ~10 MB bundle to N co-located agents, as a ratio against a raw MQTT fan-out in the same run.

    python benchmarks/bench_fanout.py [--agents 10 20] [--repeat 3] [--chunk-kib 64]

* deploy:   ``Fleet.deploy_many`` to N real agent processes, from the call to the last install
            result (signed commands, answers, the chunks once on the shared transfer topic,
            each agent writing, hashing, fsyncing, verifying, loading and activating the bundle);
* hub side: the same deploy from its first chunk published to its last chunk acknowledged by
            the broker;
* raw:      one plain paho publisher and N plain paho subscriber processes, the same bytes in the
            same chunks (same header, QoS 1, at most 16 unacknowledged): each subscriber writes
            the chunks to a file and hashes them; from the first publish to the last "done".

The bundle is real and passes verification: the sample sensor model signed by the hub, padded
with a larger real ONNX model (a 1536x1536 MLP trained on the same data) listed in its signed
manifest. The broker is a Mosquitto with a default configuration (a listener, nothing tuned),
started here. Each run measures the raw fan-out and then the deploy, back to back; the table
shows medians over ``--repeat`` runs, the ratios are medians of each run's own ratio (robust
to other load drifting on the machine), with their range. The CPU columns add up the CPU time
of every process taking part (agents or raw subscribers, the broker, the hub or raw publisher):
on a machine whose cores the agents share, that is what the wall time follows when it is quiet.
Linux only (/proc). No asserts: figures, not tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt

from edgeloop.agent.wire.messages import CHUNK_HEADER_SIZE, Chunk, new_id

IN_FLIGHT = 16  # the hub's flow control (edgeloop.hub.fleet.delivery.MAX_IN_FLIGHT), used by the raw publisher too


# --- the raw baseline ------------------------------------------------------------------------------
def raw_subscriber(host: str, port: int, topic: str, done_topic: str, path: str, size: int, chunk: int) -> None:
    """A subscriber process: every chunk written at its offset in ``path`` and hashed; "done" at the end."""
    n = math.ceil(size / chunk)
    state: dict = {"got": 0, "next": 0, "cpu": 0.0}
    h = hashlib.sha256()
    pending: dict[int, bytes] = {}
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    finished = threading.Event()

    def on_message(c, u, msg) -> None:
        (index,) = struct.unpack_from(">I", msg.payload, 21)
        data = msg.payload[CHUNK_HEADER_SIZE:]
        os.pwrite(fd, data, index * chunk)
        pending[index] = data
        while state["next"] in pending:
            h.update(pending.pop(state["next"]))
            state["next"] += 1
        state["got"] += 1
        if state["got"] == n:
            c.publish(done_topic, f"{h.hexdigest()} {time.process_time() - state['cpu']}", qos=1)
            finished.set()

    def ready(*args) -> None:
        state["cpu"] = time.process_time()  # the transfer's CPU time from here on
        c.publish(done_topic, b"ready", qos=1)

    c = _client()
    c.on_message = on_message
    c.on_subscribe = ready
    c.connect(host, port)
    c.subscribe(topic, 1)
    c.loop_start()
    finished.wait(300)
    time.sleep(0.2)
    c.loop_stop()
    os.close(fd)


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _client() -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_socket_open = lambda c, u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def raw_fanout(host: str, port: int, data: bytes, chunk: int, n_subs: int, workdir: Path,
               broker_pid: int) -> tuple[float, float]:
    """Seconds from the first chunk published to the last subscriber's "done" (hash checked), and
    the CPU seconds it took (subscribers, broker and this process)."""
    topic, done_topic = f"bench/raw/{new_id()}", f"bench/raw-done/{new_id()}"
    ready, done = [], []
    all_ready, all_done = threading.Event(), threading.Event()

    def on_message(c, u, msg) -> None:
        (ready if msg.payload == b"ready" else done).append(msg.payload)
        if len(ready) == n_subs:
            all_ready.set()
        if len(done) == n_subs:
            all_done.set()

    pub = _client()
    pub.on_message = on_message
    pub.connect(host, port)
    pub.subscribe(done_topic, 1)
    pub.loop_start()
    time.sleep(0.2)
    subs = [subprocess.Popen([sys.executable, __file__, "--raw-subscriber", host, str(port), topic, done_topic,
                              str(workdir / f"raw-{i}.bin"), str(len(data)), str(chunk)]) for i in range(n_subs)]
    try:
        if not all_ready.wait(60):
            raise RuntimeError(f"only {len(ready)} of {n_subs} raw subscribers came up")
        tid = new_id()
        cpu0 = _cpu(broker_pid) + time.process_time()
        started = time.perf_counter()
        window: list = []
        for i in range(math.ceil(len(data) / chunk)):
            window.append(pub.publish(topic, Chunk(tid, i, data[i * chunk:(i + 1) * chunk]).encode(), qos=1))
            if len(window) >= IN_FLIGHT:
                window.pop(0).wait_for_publish(30)
        for info in window:
            info.wait_for_publish(30)
        if not all_done.wait(120):
            raise RuntimeError(f"only {len(done)} of {n_subs} raw subscribers finished")
        seconds = time.perf_counter() - started
        cpu = _cpu(broker_pid) + time.process_time() - cpu0
        want = hashlib.sha256(data).hexdigest()
        if any(d.split()[0].decode() != want for d in done):
            raise RuntimeError("a raw subscriber hashed other bytes")
        return seconds, cpu + sum(float(d.split()[1]) for d in done)
    finally:
        for p in subs:
            p.wait(30)
        pub.loop_stop()
        pub.disconnect()


# --- the bundle ------------------------------------------------------------------------------------
def build_bundles(hub, count: int) -> tuple[list[bytes], str, str]:
    """``count`` distinct signed ~10 MB bundles (sample model + a larger real model), and the model name
    and version their manifests name."""
    from edgeloop.agent.wire.bundle import file_entry, inspect_bundle, pack_bundle, read_container
    from edgeloop.hub.datasets import load_csv, sample_dataset_path
    from edgeloop.hub.training import TrainParams

    ds = load_csv(sample_dataset_path())
    rec = hub.register_dataset(ds, "sensors")
    small = hub.build_version(ds, rec, "fanout-bench", TrainParams(epochs=4, seed=0))
    big = hub.build_version(ds, rec, "fanout-pad", TrainParams(hidden=(1536, 1536), epochs=1, patience=1))
    raw = hub.build_bundle(small.id).path.read_bytes()
    manifest, _ = inspect_bundle(raw)
    files = dict(read_container(raw).files)
    files["extra/larger-model.onnx"] = (hub.home.models_dir / "fanout-pad" / big.version["version"]
                                        / "model.fp32.onnx").read_bytes()
    out = []
    for r in range(count):  # distinct bundles: agents holding one would skip it
        m = dataclasses.replace(manifest, created_at=manifest.created_at + r, files=[
            *manifest.files, file_entry("extra/larger-model.onnx", files["extra/larger-model.onnx"], role="other")])
        out.append(pack_bundle(m, files, hub.key))
    return out, manifest.model_name, manifest.version


# --- agents and the broker ---------------------------------------------------------------------------
def default_mosquitto(workdir: Path) -> tuple[subprocess.Popen, int]:
    """A Mosquitto with a default configuration: one listener (2.x needs allow_anonymous for it), nothing tuned."""
    from edgeloop.hub.fleet import MosquittoBroker, free_port, wait_for_port

    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen([MosquittoBroker.executable(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port)
    return proc, port


def start_agents(n: int, port: int, workdir: Path, trusted: Path) -> tuple[list[str], list[subprocess.Popen]]:
    from edgeloop.agent.config import AgentConfig

    ids, procs = [], []
    for i in range(n):
        aid = f"fan-{i:02d}-{new_id()[:6]}"
        cfg = AgentConfig(agent_id=aid, state_dir=workdir / aid, trusted_keys=[trusted], mqtt_host="127.0.0.1",
                          mqtt_port=port, http_enabled=False)
        path = workdir / f"{aid}.toml"
        path.write_text(cfg.to_toml())
        log = open(workdir / f"{aid}.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "edgeloop.agent.cli", "run", "--config", str(path),
                                       "--log-level", "WARNING"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO))
        ids.append(aid)
    return ids, procs


def deploy_once(fleet, ids: list[str], bundle: bytes, model: str, version: str, chunk: int,
                pids: list[int]) -> tuple[float, float, float]:
    """(seconds to every install result, seconds of the shared chunk stream at the hub, CPU seconds of
    the agents, the broker and this process: ``pids`` are the agents' and the broker's)."""
    stream: list[float] = []
    real = fleet._send_chunks

    def timed(agent_id, spec, data, indices, progress=None):
        t = time.perf_counter()
        real(agent_id, spec, data, indices, progress)
        if agent_id is None or len(ids) == 1:
            stream.append(time.perf_counter() - t)

    fleet._send_chunks = timed
    try:
        cpu0 = sum(_cpu(p) for p in pids) + time.process_time()
        started = time.perf_counter()
        outs = fleet.deploy_many(ids, bundle, model=model, version=version, chunk_size=chunk, timeout=120)
        seconds = time.perf_counter() - started
        time.sleep(0.2)  # the agents' last bits of work after their install result (state, logs)
        cpu = sum(_cpu(p) for p in pids) + time.process_time() - cpu0
    finally:
        del fleet._send_chunks
    failed = {a: f"{o.code}: {o.message}" for a, o in outs.items() if not o.ok}
    if failed:
        raise RuntimeError(f"deploy failed on {len(failed)} agents: {failed}")
    return seconds, stream[0], cpu


def _ratios(ours: list[float], raw: list[float]) -> str:
    """The median of the runs' ratios, and their range."""
    each = [a / b for a, b in zip(ours, raw, strict=True)]
    return f"{statistics.median(each):>5.2f}x ({min(each):.2f}-{max(each):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk-kib", type=int, default=64)
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    args = ap.parse_args()
    import json

    summary: dict = {"repeat": args.repeat, "chunk_kib": args.chunk_kib, "runs": {}}
    from edgeloop.hub.services import Hub

    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-fanout-"))
    chunk = args.chunk_kib * 1024
    broker, port = default_mosquitto(workdir)
    hub = Hub(workdir / "hub", actor="bench")
    try:
        bundles, model, version = build_bundles(hub, args.repeat * len(args.agents))
        print(f"bundle {len(bundles[0]) / 1e6:.1f} MB in {math.ceil(len(bundles[0]) / chunk)} chunks of "
              f"{args.chunk_kib} KiB; default-config Mosquitto; {os.cpu_count()} CPUs; medians of {args.repeat}; "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"{'agents':>6}  {'raw fan-out':>11}  {'deploy':>8}  {'ratio (range)':>18}  {'hub side':>8}  "
              f"{'ratio (range)':>18}  {'CPU: raw':>8}  {'deploy':>7}  {'ratio':>5}")
        for n in args.agents:
            ids, procs = start_agents(n, port, workdir, hub.public_key_path)
            try:
                with hub.fleet(f"mqtt://127.0.0.1:{port}") as fleet:
                    if not fleet.wait_online(ids, 60):
                        raise RuntimeError(f"agents did not come online; logs in {workdir}")
                    raw, dep, side, raw_cpu, dep_cpu = [], [], [], [], []
                    for _ in range(args.repeat):
                        r, rc = raw_fanout("127.0.0.1", port, bundles[0], chunk, n, workdir, broker.pid)
                        d, s, dc = deploy_once(fleet, ids, bundles.pop(), model, version, chunk,
                                               [p.pid for p in procs] + [broker.pid])
                        for values, v in ((raw, r), (raw_cpu, rc), (dep, d), (side, s), (dep_cpu, dc)):
                            values.append(v)
                rc, dc = statistics.median(raw_cpu), statistics.median(dep_cpu)
                print(f"{n:>6}  {statistics.median(raw) * 1000:>8.0f} ms  {statistics.median(dep) * 1000:>5.0f} ms  "
                      f"{_ratios(dep, raw)}  {statistics.median(side) * 1000:>5.0f} ms  {_ratios(side, raw)}  "
                      f"{rc * 1000:>5.0f} ms  {dc * 1000:>4.0f} ms  {dc / rc:>4.2f}x")
                summary["runs"][str(n)] = {"raw_s": raw, "deploy_s": dep, "hub_side_s": side,
                                           "raw_cpu_s": raw_cpu, "deploy_cpu_s": dep_cpu}
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait(15)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
    finally:
        hub.close()
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--raw-subscriber":
        h, p, t, dt, path, size, ch = sys.argv[2:9]
        raw_subscriber(h, int(p), t, dt, path, int(size), int(ch))
    else:
        main()
