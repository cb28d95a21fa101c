"""Model factory figures, as ratios against baselines measured in the same run.

    python benchmarks/bench_factory.py [--epochs 15] [--latency-runs 500]

On the shipped sample sensor data (MLP) and on a synthetic multichannel window
dataset (1D-CNN):

* quantization: fp32 vs int8 (static QDQ; per-channel for the CNN; plus dynamic
  int8 for the MLP) -- size ratio, onnxruntime latency ratio int8/fp32 at
  batch 1 and batch 32 (edge session options: 1 thread, sequential, all graph
  optimizations; medians of interleaved runs), held-out metric change, and the
  decision :func:`edgeloop.hub.export.decide_quantization` takes;
* training throughput: samples/s of :func:`edgeloop.hub.training.train_model` (whole call:
  validation every epoch, best-state copies, final evaluation) against a bare
  PyTorch loop (same model, data, batch size, optimizer, seed, one thread) --
  the overhead ratio bare/train_model.

Prints tables; no asserts: figures, not tests. About 30 s on 2 cores.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
import onnxruntime as ort
import torch
from torch.nn import functional as F

from edgeloop.hub.datasets import Dataset, generate_sensor_windows, load_csv, sample_dataset_path, split_dataset
from edgeloop.hub.export import (
    decide_quantization,
    export_onnx,
    quantization_report,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from edgeloop.hub.training import (
    TRAIN_THREADS,
    TrainParams,
    build_model,
    standardization_stats,
    train_model,
)


def window_data(n: int, seed: int) -> Dataset:
    """edgeloop.hub.datasets' synthetic vibration windows."""
    return generate_sensor_windows(n, seed=seed)


def bare_loop(model: torch.nn.Module, X: np.ndarray, y: np.ndarray, p: TrainParams) -> float:
    """Seconds for ``p.epochs`` epochs of the plainest AdamW + cross-entropy loop on ``model``."""
    torch.manual_seed(p.seed)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    gen = torch.Generator().manual_seed(p.seed)
    model.train()
    t0 = time.perf_counter()
    for _ in range(p.epochs):
        order = torch.randperm(len(Xt), generator=gen)
        for s in range(0, len(Xt), p.batch_size):
            b = order[s:s + p.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model.raw(Xt[b]), yt[b])
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def throughput(ds: Dataset, splits, params: TrainParams, repeats: int) -> dict:
    """Best-of-``repeats`` samples/s of train_model (whole call) and of the bare loop, same work."""
    fixed = TrainParams(**{**params.to_dict(), "patience": params.epochs})  # no early stop: equal epochs
    X, y = ds.X[splits.train], ds.y[splits.train]
    n = len(splits.train) * fixed.epochs
    tm, bare, loop_only = [], [], []
    saved = torch.get_num_threads()
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = train_model(ds, splits, fixed)
        tm.append(time.perf_counter() - t0)
        loop_only.append(r.samples_per_s)
        per = "channel" if fixed.arch == "cnn1d" else "feature"
        mean, std = standardization_stats(X, getattr(ds, "window_shape", None), per=per)
        torch.set_num_threads(TRAIN_THREADS)
        try:
            torch.manual_seed(fixed.seed)
            model = build_model("classification", ds.n_features, ds.n_classes, arch=fixed.arch,
                                window_shape=getattr(ds, "window_shape", None), hidden=fixed.hidden,
                                channels=fixed.channels, kernel_size=fixed.kernel_size, mean=mean, std=std)
            bare.append(bare_loop(model, X, y, fixed))
        finally:
            torch.set_num_threads(saved)
    return {"train_model": n / min(tm), "train_model_loop": max(loop_only), "bare": n / min(bare),
            "rows": len(splits.train), "epochs": fixed.epochs}


def quant_rows(name: str, ds: Dataset, splits, model, per_channel: bool, runs: int, dynamic: bool) -> list[list]:
    X_tr, X_te, y_te = ds.X[splits.train], ds.X[splits.test], ds.y[splits.test]
    fp32 = export_onnx(model, ds.n_features, parity_X=X_te[:64])
    rng = np.random.default_rng(0)
    variants = [("static QDQ" + (" per-channel" if per_channel else ""),
                 quantize_static_int8(fp32, X_tr[rng.permutation(len(X_tr))[:400]], per_channel=per_channel))]
    if dynamic:
        variants.append(("dynamic", quantize_dynamic_int8(fp32)))
    rows = []
    for label, int8 in variants:
        rep = quantization_report(fp32, int8, X_te, y_te, latency_runs=runs)
        d = decide_quantization(rep)
        rows.append([name, label, f"{rep['fp32_bytes']}", f"{rep['int8_bytes']}", f"{rep['size_ratio']:.2f}",
                     f"{rep['fp32_latency_us_batch1']:.1f}", f"{rep['int8_latency_us_batch1']:.1f}",
                     f"{rep['latency_ratio_batch1']:.2f}",
                     f"{rep['fp32_latency_us_batch32']:.1f}", f"{rep['int8_latency_us_batch32']:.1f}",
                     f"{rep['latency_ratio_batch32']:.2f}",
                     f"{100 * rep['fp32_accuracy']:.2f}", f"{-rep['metric_drop_points']:+.2f}",
                     f"{rep['prediction_agreement']:.3f}", d.chosen])
    return rows


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15, help="epochs of the throughput runs (default %(default)s)")
    ap.add_argument("--latency-runs", type=int, default=500, help="batch-1 runs per model (default %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="throughput repeats, best kept (default %(default)s)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    args = ap.parse_args()
    t_start = time.perf_counter()
    print(f"edgeloop model factory benchmark -- python {platform.python_version()}, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}, {platform.machine()}, {torch.get_num_threads()} torch threads available; "
          f"training on {TRAIN_THREADS} thread, ORT sessions on 1 thread")

    sensors = load_csv(sample_dataset_path())
    s_split = split_dataset(sensors, 0)
    windows = window_data(1500, seed=0)
    w_split = split_dataset(windows, 0)
    cases = [
        ("sensors/mlp", sensors, s_split, TrainParams(arch="mlp", hidden=(64, 32), epochs=40, seed=0), False),
        ("windows/cnn1d", windows, w_split, TrainParams(arch="cnn1d", channels=(16, 32), epochs=40, seed=0), True),
    ]
    print(f"data: sample sensors {sensors.n_rows} rows x {sensors.n_features} features; windows "
          f"{windows.n_rows} x {windows.n_features} (window_shape {getattr(windows, 'window_shape', None)}, "
          f"{windows.source})\n")

    qrows, trows = [], []
    for name, ds, sp, params, is_cnn in cases:
        t0 = time.perf_counter()
        trained = train_model(ds, sp, params)
        fit_s = time.perf_counter() - t0
        print(f"{name}: trained {trained.metrics['epochs_run']} epochs in {fit_s:.1f} s, "
              f"test accuracy {trained.metrics['test_accuracy']:.4f}")
        qrows += quant_rows(name, ds, sp, trained.model, per_channel=is_cnn, runs=args.latency_runs,
                            dynamic=not is_cnn)
        tp = throughput(ds, sp, TrainParams(**{**params.to_dict(), "epochs": args.epochs}), args.repeats)
        trows.append([name, tp["rows"], tp["epochs"], f"{tp['bare']:.0f}", f"{tp['train_model']:.0f}",
                      f"{tp['train_model_loop']:.0f}", f"{tp['bare'] / tp['train_model']:.2f}"])

    print("\nQuantization (int8 vs fp32; latency = median µs per session.run; acc in %, Δ in points)")
    print(table(qrows, ["model", "int8", "fp32 B", "int8 B", "size", "fp32 b1", "int8 b1", "ratio b1",
                        "fp32 b32", "int8 b32", "ratio b32", "fp32 acc", "Δ acc", "agree", "ships"]))
    print("\nTraining throughput (samples/s; overhead = bare / train_model, whole call incl. validation)")
    print(table(trows, ["model", "train rows", "epochs", "bare loop", "train_model", "its loop only",
                        "overhead"]))
    print(f"\ntotal {time.perf_counter() - t_start:.1f} s")
    if args.json:
        import json

        qhead = ["model", "int8", "fp32_bytes", "int8_bytes", "size_ratio", "fp32_us_b1", "int8_us_b1", "ratio_b1",
                 "fp32_us_b32", "int8_us_b32", "ratio_b32", "fp32_acc_pct", "delta_acc_points", "agreement", "ships"]
        thead = ["model", "train_rows", "epochs", "bare_samples_s", "train_model_samples_s", "loop_only_samples_s",
                 "overhead"]
        args.json.write_text(json.dumps({"epochs": args.epochs, "latency_runs": args.latency_runs,
                                         "quantization": [dict(zip(qhead, r, strict=True)) for r in qrows],
                                         "training": [dict(zip(thead, r, strict=True)) for r in trows]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
