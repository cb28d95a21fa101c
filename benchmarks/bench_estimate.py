"""Accuracy without labels: does the device's estimate track the realized accuracy under covariate shift?

    python benchmarks/bench_estimate.py [--window 200] [--quick]

For three datasets -- the shipped sensor table (hub/datasets/samples/sensors.csv, MLP), an
scikit-learn table (``load_digits``: 64 pixels, 10 classes, MLP) and synthetic sensor windows
(``generate_sensor_windows``, 3 x 32, 1D-CNN) -- it trains a model as the pipeline does
(``train_model``), calibrates it on the validation split (temperature scaling,
:mod:`edgeloop.hub.training.calibration`), exports it to ONNX (fp32) and builds the manifest's
performance reference on the test split. Then it draws synthetic shifts of several sizes from the
test rows and serves them, in windows of ``--window`` rows, through the agent's pure estimate
(:mod:`edgeloop.agent.performance_estimate`), comparing each window's estimate with the accuracy
the window's rows really get:

* **covariate shift** ``pcK+ s`` / ``pcK- s``: test rows resampled with weights ``exp(s * u)``,
  ``u`` the rows' standardized score on the K-th principal component of the training rows (either
  sign): the mix of inputs moves while each row keeps its true label, i.e. ``P(y | x)`` is
  unchanged. This is what the estimate is for. Directions: the first component, and the two among
  the first ten (either sign) along which the shift lowers the accuracy most (the benchmark picks
  them with the labels, to have harmful shifts; the estimate never sees a label);
* **not covariate shift** (shown, not hidden -- the estimate's blind spots): ``noise s`` adds
  Gaussian noise of ``s`` training standard deviations to every feature and ``offset s`` moves the
  first two features by ``s`` standard deviations, keeping the labels: the observed input of a row
  no longer means what it meant in training (``P(y | x)`` changed), and the model stays confident
  where it is now wrong. The drift monitor's input statistics catch these.

Prints per dataset the test ECE before and after calibration and the accuracy, then per shift the
mean estimate, the realized accuracy, the drop from the reference, the mean absolute error of the
estimate over windows, and how many windows were flagged; at the end the mean absolute error over
all covariate-shift windows (the figure tests/test_performance_estimate.py asserts loosely), the
flag rate on covariate shifts that lower the realized accuracy by >= 5 points and on unshifted
windows, and the error on the other shifts. About 15 s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO.parent) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO.parent))

from edgeloop.agent.performance_estimate import WindowSums, estimate, reference_from_probabilities
from edgeloop.hub.datasets import Dataset, generate_sensor_windows, load_csv, sample_dataset_path
from edgeloop.hub.export import evaluate_onnx, export_onnx
from edgeloop.hub.training import TrainParams, make_splits, train_model
from edgeloop.hub.training.calibration import calibrate

SIZES = (0.0, 0.5, 1.0, 2.0, 3.0)  # covariate shift: exp(s * u) resampling weights
NOISE = (0.5, 1.0)
OFFSET = (1.0, 2.0)
ROWS = 1000  # rows drawn per shift
CALM_ROWS = 6000  # rows drawn without shift


def digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    return Dataset(feature_names=[f"px{i}" for i in range(d.data.shape[1])], X=d.data.astype(np.float32),
                   y=d.target.astype(np.int64), labels=[str(i) for i in range(10)], source="sklearn:digits")


def datasets(quick: bool) -> list[tuple[str, Dataset, TrainParams]]:
    return [
        ("sensors.csv (MLP)", load_csv(sample_dataset_path()), TrainParams(epochs=20 if quick else 40, seed=0)),
        ("sklearn digits (MLP)", digits(), TrainParams(epochs=20 if quick else 40, seed=0)),
        ("sensor windows (CNN)", generate_sensor_windows(1200 if quick else 2400, seed=3),
         TrainParams(epochs=8 if quick else 15, seed=0)),
    ]


def resampled(Z: np.ndarray, direction: np.ndarray, size: float, rng: np.random.Generator) -> np.ndarray:
    """Row indices drawn with weights exp(size * u), u the standardized projection on ``direction``
    (unshifted: ``CALM_ROWS`` rows, for the false-flag rate)."""
    u = Z @ direction
    u = (u - u.mean()) / (u.std() + 1e-12)
    w = np.exp(size * u)
    return rng.choice(Z.shape[0], size=CALM_ROWS if size == 0 else ROWS, replace=True, p=w / w.sum())


def windows(p: np.ndarray, y: np.ndarray, ref, window: int) -> tuple[list[float], list[float], list[bool]]:
    ests, reals, flags = [], [], []
    for s in range(0, len(y) - window + 1, window):
        sums = WindowSums(p.shape[1])
        sums.add(p[s:s + window])
        est = estimate(sums, ref)
        assert est is not None
        ests.append(est.accuracy)
        reals.append(float((p[s:s + window].argmax(1) == y[s:s + window]).mean()))
        flags.append(est.flagged)
    return ests, reals, flags


def run(name: str, ds: Dataset, params: TrainParams, window: int, rng: np.random.Generator) -> dict:
    t0 = time.perf_counter()
    splits = make_splits(ds, 0, (0.6, 0.15, 0.25))
    res = train_model(ds, splits, params)
    Xv, yv = ds.X[splits.val], ds.y[splits.val]
    Xt, yt = ds.X[splits.test], ds.y[splits.test]
    cal = calibrate(res.model, Xv, yv, Xt, yt)
    onnx = export_onnx(cal.model, ds.n_features, parity_X=Xt[:64])
    probs = np.asarray(evaluate_onnx(onnx, Xt, yt)["probabilities"], dtype=np.float64)
    ref = reference_from_probabilities(probs, yt, list(ds.labels), calibration=cal.to_dict())
    Xtr = ds.X[splits.train].astype(np.float64)
    mean, sd = Xtr.mean(axis=0), Xtr.std(axis=0) + 1e-6
    _, _, vt = np.linalg.svd((Xtr - mean) / sd, full_matrices=False)
    Zt = (Xt - mean) / sd
    f = cal.figures
    print(f"\n{name}: {ds.n_rows} rows, test {len(yt)}; {cal.method} T={cal.temperature:.3f}; "
          f"test ECE {f['ece_before']:.4f} -> {f['ece_after']:.4f}; accuracy {f['accuracy_before']:.4f} -> "
          f"{f['accuracy_after']:.4f}; reference measured {ref.accuracy:.4f} estimated {ref.estimated_accuracy:.4f}")
    print(f"  {'shift':<14}{'estimate':>10}{'realized':>10}{'drop':>8}{'MAE':>8}{'flagged':>10}   windows of {window}")
    out: dict = {"name": name, "ece_after": f["ece_after"], "rows": []}

    def report(kind: str, label: str, p: np.ndarray, y: np.ndarray) -> None:
        ests, reals, flags = windows(p, y, ref, window)
        err = [abs(a - b) for a, b in zip(ests, reals, strict=True)]
        realized = float((p.argmax(1) == y).mean())
        out["rows"].append({"kind": kind, "label": label, "drop": ref.accuracy - realized, "errors": err,
                            "flagged": sum(flags), "windows": len(flags)})
        print(f"  {label:<14}{np.mean(ests):>10.4f}{realized:>10.4f}{ref.accuracy - realized:>8.3f}"
              f"{np.mean(err):>8.4f}{sum(flags):>6}/{len(flags):<3}")

    right = probs.argmax(1) == yt
    dirs = [(k, sign) for k in range(min(10, vt.shape[0])) for sign in (1, -1)]

    def harm(d: tuple[int, int]) -> float:  # the accuracy of the test rows under weights exp(2u)
        u = Zt @ (d[1] * vt[d[0]])
        w = np.exp(2.0 * (u - u.mean()) / (u.std() + 1e-12))
        return float((w * right).sum() / w.sum())

    for k, sign in [(0, 1), *sorted(dirs, key=harm)[:2]]:  # PC0 and the two most harmful directions
        for size in SIZES if (k, sign) == (0, 1) else SIZES[1:]:
            idx = resampled(Zt, sign * vt[k], size, rng)
            label = "none" if size == 0 else f"pc{k}{'+' if sign > 0 else '-'} {size}"
            report("covariate", label, probs[idx], yt[idx])
    for kind, sizes in (("noise", NOISE), ("offset", OFFSET)):
        for size in sizes:
            idx = rng.choice(len(yt), size=ROWS, replace=True)
            Xs = Xt[idx].astype(np.float64)
            if kind == "noise":
                Xs = Xs + rng.standard_normal(Xs.shape) * size * sd
            else:
                Xs[:, :2] += size * sd[:2]
            p = np.asarray(evaluate_onnx(onnx, Xs.astype(np.float32), yt[idx])["probabilities"], dtype=np.float64)
            report(kind, f"{kind} {size}", p, yt[idx])
    print(f"  ({time.perf_counter() - t0:.1f} s)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--window", type=int, default=200, help="rows per drift window")
    ap.add_argument("--quick", action="store_true", help="fewer epochs and rows")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the summary figures to FILE as JSON")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    results = [run(n, d, p, a.window, rng) for n, d, p in datasets(a.quick)]
    rows = [row for r in results for row in r["rows"]]
    cov = [e for row in rows if row["kind"] == "covariate" for e in row["errors"]]
    other = [e for row in rows if row["kind"] != "covariate" for e in row["errors"]]
    big = [row for row in rows if row["kind"] == "covariate" and row["drop"] >= 0.05]
    calm = [row for row in rows if row["label"] == "none"]
    print(f"\nMAE estimate vs realized, windows of {a.window}: covariate shifts {np.mean(cov):.4f} "
          f"({len(cov)} windows); noise/offset (not covariate shift) {np.mean(other):.4f} ({len(other)} windows)")
    print(f"covariate shifts lowering realized accuracy by >= 5 pt: {len(big)}; windows flagged among them: "
          f"{sum(r['flagged'] for r in big)} of {sum(r['windows'] for r in big)}; unshifted windows flagged: "
          f"{sum(r['flagged'] for r in calm)} of {sum(r['windows'] for r in calm)}")
    print("test ECE after calibration: " + ", ".join(f"{r['name']} {r['ece_after']:.4f}" for r in results))
    if a.json:
        import json

        a.json.write_text(json.dumps({
            "window": a.window, "mae_covariate": float(np.mean(cov)), "covariate_windows": len(cov),
            "mae_other": float(np.mean(other)), "other_windows": len(other),
            "harmful_shift_windows": sum(r["windows"] for r in big),
            "harmful_shift_flagged": sum(r["flagged"] for r in big),
            "calm_windows": sum(r["windows"] for r in calm), "calm_flagged": sum(r["flagged"] for r in calm),
            "ece_after": {r["name"]: r["ece_after"] for r in results}}, indent=2))

if __name__ == "__main__":
    main()
