#!/usr/bin/env python
"""Write the shipped sample dataset: hub/datasets/samples/sensors.csv and its README.md.

The data come from :func:`edgeloop.hub.datasets.generate_sensor_data` (3000 rows, seed 7 by
default), so the file can always be regenerated bit for bit; its content hash is
written into the README. Usage::

    python scripts/make_sample_data.py [--rows 3000] [--seed 7] [--out hub/datasets/samples]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from edgeloop.hub.datasets import SENSOR_FEATURES, Dataset, generate_sensor_data, load_csv, write_csv

REPO = Path(__file__).resolve().parent.parent

COLUMNS = {
    "temperature_c": ("°C", "motor housing temperature"),
    "vibration_rms": ("mm/s", "RMS vibration velocity at the drive-end bearing"),
    "pressure_kpa": ("kPa", "coolant loop pressure"),
    "current_a": ("A", "phase current"),
    "humidity_pct": ("%", "ambient relative humidity (mostly uninformative, a realistic distractor)"),
    "rpm": ("1/min", "shaft speed"),
    "label": ("", "machine condition: normal, overheating or worn_bearing"),
}


def readme(ds: Dataset, rows: int, seed: int) -> str:
    """The README text: columns, the generating process, class balance and the content hash."""
    lines = [
        "# Sample data: pump-motor condition monitoring (synthetic)",
        "",
        f"`sensors.csv` holds {ds.n_rows} rows of simulated sensor readings of an electric pump motor,",
        "each labelled with the motor's condition. It is the dataset the edgeloop demo trains on.",
        f"It was written by `python scripts/make_sample_data.py --rows {rows} --seed {seed}`",
        f"(`edgeloop.hub.datasets.generate_sensor_data({rows}, {seed})`); do not edit it by hand -- regenerate it.",
        "",
        "## Columns",
        "",
        "| column | unit | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| `{name}` | {unit} | {meaning} |" for name, (unit, meaning) in COLUMNS.items()]
    lines += [
        "",
        "The file is UTF-8 CSV with a header row; the label column holds class names.",
        "",
        "## How the data are generated",
        "",
        "Per row: a condition is drawn (normal 60%, overheating 20%, worn_bearing 20%) and a hidden",
        "operating point (load 35-100% of rated, ambient temperature ~N(22, 3) °C, humidity ~N(50, 12) %).",
        "Speed falls and current rises with load; temperature follows ambient + load; vibration grows with",
        "load with log-normal noise. Overheating (caused by coolant loss) adds +12 °C, +2 A and -25 kPa",
        "coolant pressure; a worn bearing multiplies vibration by 2.2 and adds +3 °C, +0.8 A and -15 rpm.",
        "Finally 2% of the labels are replaced by a random class, as real labelling mistakes would.",
        "The classes overlap (a hot day at full load looks like mild overheating), so a small MLP",
        "reaches roughly 90-97% accuracy, not 100%. The full process is documented in",
        "`edgeloop.hub.datasets.generate_sensor_data`; its `shift` argument produces drifted data for drift demos.",
        "",
        "## Class balance and per-class means",
        "",
        "| class | rows | " + " | ".join(f"`{n}`" for n in SENSOR_FEATURES) + " |",
        "|---|---|" + "---|" * len(SENSOR_FEATURES),
    ]
    for c, name in enumerate(ds.labels):
        mask = ds.y == c
        means = ds.X[mask].mean(axis=0, dtype=np.float64)
        lines.append(f"| {name} | {int(mask.sum())} | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    lines += [
        "",
        "## Identity",
        "",
        f"Content hash (`edgeloop.hub.datasets.Dataset.sha256`): `{ds.sha256}`",
        "",
        "The hash covers the column names, class names and the float32/int64 arrays (see",
        "`edgeloop.hub.datasets.dataset_sha256`), not the CSV spelling.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=REPO / "hub" / "datasets" / "samples")
    args = ap.parse_args(argv)

    ds = generate_sensor_data(args.rows, args.seed)
    csv_path = write_csv(ds, args.out / "sensors.csv")
    back = load_csv(csv_path)
    if back.sha256 != ds.sha256:
        print(f"error: {csv_path} does not read back to the generated data", file=sys.stderr)
        return 1
    readme_path = args.out / "README.md"
    keep = ""  # hand-written sections after the generated part survive regeneration
    if readme_path.exists():
        old = readme_path.read_text(encoding="utf-8")
        marker = "## Loading your own data"
        if marker in old:
            keep = "\n" + old[old.index(marker):]
    readme_path.write_text(readme(ds, args.rows, args.seed).rstrip("\n") + "\n" + keep, encoding="utf-8")
    print(f"wrote {csv_path} ({ds.n_rows} rows, sha256 {ds.sha256}) and {args.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
