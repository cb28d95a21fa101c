"""What ``benchmarks/run_all`` runs: one :class:`Bench` per ``bench_*.py``, with its arguments (full and
``--quick``), what it needs, the prose of its section in docs/performance.md, and how its ``--json`` file
becomes the section's table: one row per figure -- ours, the same-run baseline, and ours ÷ baseline.

Adding a benchmark: give it a ``--json FILE`` option, add a :class:`Bench` to :data:`BENCHES` (the test
tests/test_run_all.py fails while a ``bench_*.py`` is missing here).
"""

from __future__ import annotations

import importlib.util
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Row:
    figure: str
    ours: str
    baseline: str  # which baseline, in words
    base_value: str
    ratio: str  # ours ÷ baseline, or "—" where there is no number to divide by


@dataclass(frozen=True)
class Bench:
    name: str  # for --only
    script: str  # bench_*.py
    title: str
    measures: str  # markdown: what is measured
    baseline: str  # markdown: the same-run baseline (the peer)
    read: str  # markdown: how to read the table
    args: tuple[str, ...]  # the full run's arguments
    quick: tuple[str, ...]  # --quick
    table: Callable[[dict], tuple[list[Row], list[str]]]  # the --json file -> rows, notes
    needs: Callable[[], str | None] = lambda: None  # why it cannot run here, with the command that fixes it
    timeout_s: int = 900


# --- formatting ----------------------------------------------------------------------------------------
def ms(x: float) -> str:
    return f"{x:.3f} ms" if x < 10 else f"{x:.1f} ms"


def sec(x: float) -> str:
    return f"{x:.2f} s" if x >= 1 else f"{x * 1000:.0f} ms" if x >= 0.01 else f"{x * 1000:.1f} ms"


def spread(each: list[float]) -> str:
    """The median of the runs' ratios, with their range when there are several."""
    med = f"{statistics.median(each):.2f}x"
    return med if len(each) < 2 else f"{med} ({min(each):.2f}-{max(each):.2f})"


def ratio(ours: float, base: float) -> str:
    return f"{ours / base:.2f}x" if base else "—"


def num(x: object) -> float:
    return float(str(x).replace(",", ""))


# --- what a benchmark needs ------------------------------------------------------------------------------
def _module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _mosquitto() -> str | None:
    if shutil.which("mosquitto") or any(Path(p).exists() for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")):
        return None
    return "Mosquitto is not installed: `apt-get install mosquitto` (the benchmark starts its own, default config)"


def _tritonclient() -> str | None:
    if _module("tritonclient") and _module("geventhttpclient"):
        return None
    return ("the client both servers are measured with, tritonclient, is not installed: "
            "`pip install -e '.[bench]'` (and, for the peer, `bash benchmarks/setup_mlserver.sh`)")


def _mqtt_peers() -> str | None:
    if not _module("amqtt"):
        return "amqtt (the second broker) is not installed: `pip install -e '.[dev]'`"
    return _mosquitto()


def _sklearn() -> str | None:
    if _module("sklearn"):
        return None
    return "scikit-learn (the digits data set) is not installed: `pip install scikit-learn`"


def mlserver_version() -> str | None:
    """MLServer in benchmarks/.mlserver-venv, or None: read from its dist-info, nothing started."""
    for info in sorted((HERE / ".mlserver-venv").glob("lib/python*/site-packages/mlserver-*.dist-info")):
        return info.name[len("mlserver-"):-len(".dist-info")]
    return None


def mosquitto_version() -> str:
    exe = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)
    if exe is None:
        return "not installed"
    out = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=10).stdout
    return out.split("\n")[0].strip()


# --- tables ---------------------------------------------------------------------------------------------
def http_table(d: dict) -> tuple[list[Row], list[str]]:
    servers = d["servers"]
    agent = servers["agent"]
    peers = {n: f for n, f in servers.items() if n != "agent"}
    raw = d["raw_session_run"]
    rows: list[Row] = []
    peer = "best MLServer (" + ", ".join(peers) + ")" if peers else "MLServer: NOT RUN"
    for key, label in (("p50_ms", "p50 latency, 1 request in flight"), ("p95_ms", "p95 latency, 1 request in flight")):
        if peers:
            b = min(f[key] for f in peers.values())
            rows.append(Row(label, ms(agent[key]), peer, ms(b), ratio(agent[key], b)))
        else:
            rows.append(Row(label, ms(agent[key]), peer, "—", "—"))
    for n in d["concurrency"]:
        label = f"requests/s, {n} in flight"
        if peers:
            b = max(f["rps"][str(n)] for f in peers.values())
            rows.append(Row(label, f"{agent['rps'][str(n)]:,.0f}", peer, f"{b:,.0f}", ratio(agent["rps"][str(n)], b)))
        else:
            rows.append(Row(label, f"{agent['rps'][str(n)]:,.0f}", peer, "—", "—"))
    rows.append(Row("p50 latency, 1 in flight", ms(agent["p50_ms"]), "raw onnxruntime `session.run`, in process",
                    ms(raw["p50_ms"]), ratio(agent["p50_ms"], raw["p50_ms"])))
    model = d["model"]
    notes = [f"model: {model.get('version')} ({model.get('quantization')}, {model.get('bytes')} B ONNX); "
             f"{d['requests']} sequential requests, {d['seconds']:g} s per throughput figure, medians of "
             f"{d['rounds']} interleaved rounds"]
    for name, f in peers.items():
        notes.append(f"{name}: p50 {ms(f['p50_ms'])}, p95 {ms(f['p95_ms'])}, "
                     + ", ".join(f"{f['rps'][str(n)]:,.0f} req/s @{n}" for n in d["concurrency"]))
    if not d.get("mlserver"):
        notes.append("**MLServer was not found** (benchmarks/.mlserver-venv): only the raw-engine baseline ran. "
                     "Set it up with `bash benchmarks/setup_mlserver.sh` and rerun `benchmarks/run_all --only http`.")
    return rows, notes


def mqtt_table(d: dict) -> tuple[list[Row], list[str]]:
    ip = d["in_process"]
    rows = [Row("compute floor p50: agent `Serving.infer`", ms(ip["served_p50_ms"]), "raw onnxruntime `session.run`",
                ms(ip["raw_p50_ms"]), ratio(ip["served_p50_ms"], ip["raw_p50_ms"]))]
    for broker, label in (("mosquitto", "Mosquitto, default config"), ("amqtt", "amqtt")):
        for req, f in d[broker].items():
            rows.append(Row(f"{label}: {req}, p50 round trip", ms(f["agent_p50_ms"]), "raw paho echo, same broker",
                            ms(f["echo_p50_ms"]), ratio(f["agent_p50_ms"], f["echo_p50_ms"])))
            rows.append(Row(f"{label}: {req}, p95 round trip", ms(f["agent_p95_ms"]), "raw paho echo, same broker",
                            ms(f["echo_p95_ms"]), ratio(f["agent_p95_ms"], f["echo_p95_ms"])))
    notes = [f"{d['broker_version']}; {d['requests']} round trips per figure"]
    if d.get("requesters"):
        notes.append("requesters' own sockets, the agent answering (p50): "
                     + "; ".join(f"{k} {ms(v['p50_ms'])}" for k, v in d["requesters"].items()))
    return rows, notes


def fanout_table(d: dict) -> tuple[list[Row], list[str]]:
    rows = []
    for n, r in d["runs"].items():
        each = [a / b for a, b in zip(r["deploy_s"], r["raw_s"], strict=True)]
        side = [a / b for a, b in zip(r["hub_side_s"], r["raw_s"], strict=True)]
        rows.append(Row(f"{n} agents: deploy, call to last install result", sec(statistics.median(r["deploy_s"])),
                        "raw paho fan-out (N subscriber processes)", sec(statistics.median(r["raw_s"])),
                        spread(each)))
        rows.append(Row(f"{n} agents: hub side, first chunk to last ack", sec(statistics.median(r["hub_side_s"])),
                        "raw paho fan-out", sec(statistics.median(r["raw_s"])),
                        spread(side)))
        rc, dc = statistics.median(r["raw_cpu_s"]), statistics.median(r["deploy_cpu_s"])
        rows.append(Row(f"{n} agents: CPU time of every process", sec(dc), "raw fan-out's CPU time", sec(rc),
                        ratio(dc, rc)))
    return rows, [f"chunks of {d['chunk_kib']} KiB; medians of {d['repeat']} runs, ratio = median of each run's "
                  "ratio (range)"]


def ingest_table(d: dict) -> tuple[list[Row], list[str]]:
    n = d["agents"]
    rows = [Row(f"birth: registry holds {n:,} agents", sec(d["hub_birth_s"]), "bare paho subscriber, MQTT 3.1.1",
                sec(d["bare_birth_s"]), ratio(d["hub_birth_s"], d["bare_birth_s"])),
            Row(f"birth: registry holds {n:,} agents", sec(d["hub_birth_s"]), "bare paho subscriber, MQTT 5",
                sec(d["bare5_birth_s"]), ratio(d["hub_birth_s"], d["bare5_birth_s"])),
            Row(f"update: {n:,} agents offline in the registry", sec(d["hub_update_s"]), "bare paho subscriber",
                sec(d["bare_update_s"]), ratio(d["hub_update_s"], d["bare_update_s"]))]
    ok = "all" if d["all_correct"] else "NOT ALL"
    return rows, [f"best of {len(d['rounds'])} rounds; registry rows correct after birth: {ok}"]


def factory_table(d: dict) -> tuple[list[Row], list[str]]:
    rows = []
    for t in d["training"]:
        ours, bare = num(t["train_model_samples_s"]), num(t["bare_samples_s"])
        rows.append(Row(f"{t['model']}: training samples/s (`train_model`)", f"{ours:,.0f}",
                        "bare PyTorch loop", f"{bare:,.0f}", ratio(ours, bare)))
    for q in d["quantization"]:
        for b in ("b1", "b32"):
            i8, f32 = num(q[f"int8_us_{b}"]), num(q[f"fp32_us_{b}"])
            rows.append(Row(f"{q['model']} int8 {q['int8']}: latency, batch {b[1:]}", f"{i8:.1f} µs", "fp32 model",
                            f"{f32:.1f} µs", ratio(i8, f32)))
        rows.append(Row(f"{q['model']} int8 {q['int8']}: size", f"{num(q['int8_bytes']):,.0f} B", "fp32 model",
                        f"{num(q['fp32_bytes']):,.0f} B", ratio(num(q["int8_bytes"]), num(q["fp32_bytes"]))))
    notes = [f"{q['model']} int8 {q['int8']}: accuracy {q['delta_acc_points']} points vs fp32 "
             f"({q['fp32_acc_pct']} %), agreement {q['agreement']}, ships **{q['ships']}**" for q in d["quantization"]]
    return rows, [f"{d['epochs']} epochs per throughput run, {d['latency_runs']} latency runs", *notes]


def drift_table(d: dict) -> tuple[list[Row], list[str]]:
    rows = [Row(f"{c['name']}: served with the drift monitor, per request", f"{c['monitored_us']:.1f} µs",
                "served without a monitor (onnxruntime + coerce + post)", f"{c['infer_us']:.1f} µs",
                ratio(c["monitored_us"], c["infer_us"])) for c in d["cases"]]
    return rows, [f"{d['requests']} one-row requests x {d['rounds']} interleaved rounds, medians"]


def rollout_machine_table(d: dict) -> tuple[list[Row], list[str]]:
    none = "none: the pure core alone"
    rows = [Row(f"{d['agents']:,} agents, {d['waves']} waves: time per step",
                f"{d['seconds'] / d['steps'] * 1e6:.0f} µs", none, "—", "—"),
            Row("whole rollout", sec(d["seconds"]), none, "—", "—"),
            Row("state JSON size / load time",
                f"{d['state_json_bytes'] / 1e6:.2f} MB / {d['state_load_s'] * 1e3:.0f} ms", none, "—", "—")]
    return rows, [f"{d['steps']:,} steps, ended {d['status']}, {d['audit_records']:,} audit records"]


def estimate_table(d: dict) -> tuple[list[Row], list[str]]:
    truth = "the window's realized accuracy (labels)"
    rows = [Row("mean abs. error of the estimate, covariate shift", f"{d['mae_covariate']:.4f}", truth, "exact", "—"),
            Row("mean abs. error, noise/offset (not covariate shift)", f"{d['mae_other']:.4f}", truth, "exact", "—"),
            Row("windows flagged, shifts costing >= 5 points", f"{d['harmful_shift_flagged']} of "
                f"{d['harmful_shift_windows']}", truth, "all", "—"),
            Row("windows flagged, no shift", f"{d['calm_flagged']} of {d['calm_windows']}", truth, "none", "—")]
    return rows, [f"windows of {d['window']} rows; test ECE after calibration: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in d["ece_after"].items())]


def shadow_table(d: dict) -> tuple[list[Row], list[str]]:
    rows = [Row(f"{k} latency over HTTP, shadow running", ms(d["on_ms"][k]), "same agent, no shadow",
                ms(d["off_ms"][k]), ratio(d["on_ms"][k], d["off_ms"][k])) for k in ("p50", "p99", "mean")]
    return rows, [f"client {d['client']}; {d['requests']} requests per phase, {d['rounds']} rounds, medians; "
                  f"live MLP hidden {d['hidden']}, shadow hidden {d['shadow_hidden']}"]


def scale_rollout_table(d: dict) -> tuple[list[Row], list[str]]:
    rows, notes = [], []
    n = d["agents"]
    for mode, r in d["modes"].items():
        rows.append(Row(f"{mode} to {n:,} agents, start to all waves done", sec(r["rollout_s"]),
                        "raw fan-out of the same bytes to the same waves", sec(r["raw_s"]),
                        ratio(r["rollout_s"], r["raw_s"])))
        per_kib = (r["rss_peak_mib"] - r["rss_before_mib"]) * 1024 / n
        rows.append(Row(f"{mode}: hub memory per agent (peak - before)", f"{per_kib:.1f} KiB", "none", "—", "—"))
        exact = r.get("registry_exact") and r.get("agents_ok") and not r.get("refused")
        notes.append(f"{mode}: {r['status']}, ingest {sec(r['ingest_s'])}, hub CPU {sec(r['cpu_s'])}, "
                     f"registry exact: {'yes' if exact else 'NO'}")
    return rows, notes


# --- the list --------------------------------------------------------------------------------------------
BENCHES: list[Bench] = [
    Bench("http", "bench_http.py", "HTTP serving: the agent vs MLServer",
          "Open Inference Protocol v2 over HTTP on 127.0.0.1: the agent's `HttpApi` serving the sample sensor MLP "
          "(trained, exported and signed by the hub, loaded from the verified bundle) against MLServer 1.7 serving "
          "the same ONNX with the same onnxruntime session options. Client: tritonclient.http, keep-alive "
          "connections, one real row per request.",
          "MLServer (its default `parallel_workers=1` and `parallel_workers=0`; the better figure of the two, "
          "metric by metric), and raw onnxruntime `session.run` in process (the engine alone).",
          "Latency rows: below 1.00x the agent answers faster than MLServer (target <= 0.50x at p50). "
          "Requests/s rows: above 1.00x the agent serves more. The last row is the whole HTTP path over the engine "
          "alone: what serving costs on top of onnxruntime.",
          ("--requests", "1000", "--seconds", "3", "--concurrency", "8", "32", "--rounds", "3"),
          ("--requests", "100", "--seconds", "1", "--concurrency", "8", "--rounds", "1", "--mlserver-workers", "1"),
          http_table, _tritonclient),
    Bench("mqtt", "bench_mqtt.py", "MQTT request/response: the agent vs a raw paho echo",
          "Inference requests over MQTT (one real row each, MQTT 5 Response Topic + Correlation Data, or 3.1.1 "
          "`reply_to`) to a real `edgeloop-agent run` process, on a Mosquitto in its default configuration and on "
          "the embedded amqtt broker; the requester is paho with TCP_NODELAY + TCP_QUICKACK.",
          "a raw paho echo process on the same broker answering each request with a canned copy of a real agent "
          "answer (same size), measured in alternating blocks of 10 round trips; and raw `session.run` for the "
          "in-process compute floor.",
          "agent ÷ echo is what the agent adds to a round trip the broker alone costs; target: p50 <= 2x on both "
          "brokers.",
          ("--requests", "300", "--slow-requests", "30"), ("--requests", "30", "--slow-requests", "5"),
          mqtt_table, _mqtt_peers),
    Bench("fanout", "bench_fanout.py", "Bundle delivery: deploy vs a raw broker fan-out",
          "One ~10 MB signed bundle deployed with `Fleet.deploy_many` to N real agent processes (each writes, "
          "hashes, fsyncs, verifies, loads and activates it), on a default-config Mosquitto.",
          "a raw fan-out: one plain paho publisher and N plain paho subscriber processes, the same bytes in the same "
          "chunks (QoS 1, <= 16 unacknowledged), each subscriber writing and hashing them; back to back with the "
          "deploy in every run.",
          "deploy ÷ raw is the price of signatures, answers, verification and activation over moving the bytes; the "
          "CPU row adds every process's CPU time, which is what the wall time follows on a quiet machine.",
          ("--agents", "10", "--repeat", "3"), ("--agents", "2", "--repeat", "1"), fanout_table, _mosquitto),
    Bench("ingest", "bench_ingest.py", "Hub ingest: the registry vs a bare subscriber",
          "How long until the hub's registry (`HubRuntime`: persistent session, batched transactions) holds N "
          "simulated agents' retained status and state (birth), and until it shows all N offline (update).",
          "a bare paho subscriber on the same broker and filters, receiving the same messages (MQTT 3.1.1, and "
          "MQTT 5, which the hub speaks).",
          "hub ÷ bare is the cost of turning messages into verified registry rows over merely receiving them.",
          ("--agents", "5000", "--repeat", "2"), ("--agents", "200", "--repeat", "1"), ingest_table, _mosquitto),
    Bench("factory", "bench_factory.py", "Model factory: training vs a bare PyTorch loop, int8 vs fp32",
          "Training throughput of `train_model` (whole call: validation every epoch, best-state copies, final "
          "evaluation) on the sample sensor MLP and a 1D-CNN on synthetic windows; and their int8 exports.",
          "a bare PyTorch loop (same model, data, batch size, optimizer, seed, one thread); for int8, the fp32 model "
          "in onnxruntime with the edge session options.",
          "Training: below 1.00x `train_model` is slower than the bare loop by that factor (its validation and "
          "bookkeeping). int8 rows: below 1.00x int8 is faster/smaller; the notes say which variant ships.",
          (), ("--epochs", "2", "--latency-runs", "50", "--repeats", "1"), factory_table),
    Bench("drift", "bench_drift.py", "Drift bookkeeping per request",
          "The agent's served path (`Serving.infer`, one row per request) with a real `DriftMonitor` on a tiny "
          "onnxruntime model (so the ratio is an upper bound), a 4-feature table and 4x32 sensor windows.",
          "the same served path without a monitor, interleaved in the same run.",
          "monitored ÷ plain - 1 is the drift bookkeeping's share of a request; on a real model it is smaller.",
          (), ("--requests", "100", "--rounds", "3"), drift_table, timeout_s=300),
    Bench("rollout_machine", "bench_rollout_machine.py", "The rollout state machine at fleet scale",
          "The pure rollout core (no broker, no registry) driving one rollout (canary, then doubling waves) to "
          "completion; every agent reports transferring, verifying, baking and one good observation.",
          "none -- there is no peer for the pure core; absolute figures.",
          "Time per step bounds what the hub spends deciding; the state size is what the registry stores.",
          (), ("--agents", "100"), rollout_machine_table, timeout_s=300),
    Bench("estimate", "bench_estimate.py", "Accuracy without labels: the estimate vs the realized accuracy",
          "The agent's label-free accuracy estimate (calibrated confidences) per window of served rows under "
          "synthetic shifts, on three data sets.",
          "the realized accuracy of the same windows (the labels the agent never sees).",
          "The error is in accuracy units (0.02 = 2 points). Covariate shift is what the estimate is for; "
          "noise/offset shifts are its blind spot, which the drift monitor covers.",
          (), ("--quick",), estimate_table, _sklearn),
    Bench("shadow", "bench_shadow.py", "Shadow mode's cost on the answered request",
          "HTTP latency of a real agent process while a shadow model runs on every request.",
          "the same agent without a shadow, in the same round.",
          "on ÷ off is what a shadow costs the live answer; near 1.00x is the goal.",
          ("--requests", "1000", "--rounds", "3"), ("--requests", "300", "--rounds", "1"), shadow_table, _mosquitto),
    Bench("scale_rollout", "bench_scale_rollout.py", "A rollout to a large simulated fleet",
          "A rollout in waves (and a plain wave-by-wave deploy) through the real hub runtime in its own process to "
          "N simulated agents speaking the real protocol; the hub's time and memory per agent.",
          "a raw broker fan-out of the same bytes to the same N clients in the same waves.",
          "rollout ÷ raw includes the bakes and gates of a rollout; deploy ÷ raw the protocol alone.",
          (), ("--agents", "50"), scale_rollout_table, _mosquitto),
]


def known_scripts() -> set[str]:
    return {b.script for b in BENCHES}


if __name__ == "__main__":
    sys.exit("run benchmarks/run_all")
