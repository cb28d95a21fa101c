"""Drift bookkeeping cost per request, as a ratio to the inference itself.

    python benchmarks/bench_drift.py [--requests 400] [--rounds 30]

A real onnxruntime model (tests/onnx_models.py: softmax(xW+b), the smallest model an agent could
serve, so the ratio is an upper bound) answered through :class:`edgeloop.agent.serving.Serving`
with and without a real :class:`~edgeloop.agent.drift.DriftMonitor`, one row per request (the
common edge case), in two shapes:

* a table: 4 features, 20 bins each, 200-row windows;
* sensor windows: 4 channels x 32 steps (128 inputs) summarised per channel (6 summaries each,
  24 drift features), 200-row windows.

Per request it reports the inference alone (coerce + onnxruntime + postprocess, the served path
without a monitor), the served path with the monitor, and the ratio of their difference (the drift
bookkeeping: feed batching, binning, window closes with their statistics) to the inference. Medians
of many short interleaved rounds (each spans two windows, so window closes are included), which
keeps a busy machine's bursts out of the figure. About 10 s. Prints a table; no asserts.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
import onnxruntime as ort

from edgeloop.agent.drift import DriftMonitor, WindowPolicy, build_reference, window_layout
from edgeloop.agent.runtime import ModelRunner
from edgeloop.agent.serving import Serving
from tests.onnx_models import classifier_onnx, manifest_for


def case(name: str, n_features: int, layout_shape: tuple[int, int] | None, rng: np.random.Generator) -> dict:
    names = [f"f{j}" for j in range(n_features)] if layout_shape is None else [
        f"ch{c}_t{t}" for c in range(layout_shape[0]) for t in range(layout_shape[1])]
    ref_rows = rng.normal(0, 1, (2000, n_features))
    layout = window_layout(*layout_shape) if layout_shape else None
    ref = build_reference(ref_rows, names, labels=["a", "b", "c"], predicted=rng.integers(0, 3, 2000), layout=layout)
    mb = classifier_onnx(n_features)
    manifest = manifest_for(mb, features=names, drift=ref)
    runner = ModelRunner.load(manifest, mb)
    plain, monitored = Serving(), Serving(on_drift_report=lambda r: None)
    plain.activate(runner)
    monitored.activate(runner, DriftMonitor(ref, agent_id="bench", model="m", version="1", bundle_sha256="0" * 64,
                                            policy=WindowPolicy.of(ref, seconds=3600.0)))
    return {"name": name, "plain": plain, "monitored": monitored, "rows": rng.normal(0, 1, (4096, n_features)),
            "drift_features": len(ref.features)}


def per_request_us(serving: Serving, rows: np.ndarray, requests: int) -> float:
    payloads = [rows[i % len(rows)][None, :].tolist() for i in range(requests)]
    t0 = time.perf_counter()
    for p in payloads:
        serving.infer(p)
    return (time.perf_counter() - t0) / requests * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400, help="requests per round and path (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=30, help="interleaved rounds; medians reported (default %(default)s)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    args = ap.parse_args()
    out: dict = {"requests": args.requests, "rounds": args.rounds, "cases": []}
    rng = np.random.default_rng(0)
    cases = [case("table, 4 features", 4, None, rng), case("windows, 4 x 32 -> 24 summaries", 128, (4, 32), rng)]
    print(f"python {platform.python_version()}, onnxruntime {ort.__version__}, numpy {np.__version__}, "
          f"{args.requests} one-row requests x {args.rounds} rounds, 200-row windows")
    print(f"{'case':<34} {'infer us':>9} {'+drift us':>10} {'drift us':>9} {'ratio':>7}")
    for c in cases:
        per_request_us(c["plain"], c["rows"], 200)  # warm up both paths
        per_request_us(c["monitored"], c["rows"], 200)
        plain, mon = [], []
        for _ in range(args.rounds):
            plain.append(per_request_us(c["plain"], c["rows"], args.requests))
            mon.append(per_request_us(c["monitored"], c["rows"], args.requests))
        p, m = statistics.median(plain), statistics.median(mon)
        print(f"{c['name']:<34} {p:9.1f} {m:10.1f} {m - p:9.1f} {(m - p) / p:7.2f}")
        out["cases"].append({"name": c["name"], "infer_us": p, "monitored_us": m})
    print("ratio = drift bookkeeping per request / inference per request (served path without a monitor)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
