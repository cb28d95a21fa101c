"""benchmarks/run_all: one cheap benchmark end to end into a doc, and no benchmark left out of it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_ALL = REPO / "benchmarks" / "run_all"


def test_quick_drift_run_renders_machine_baseline_and_ratio(tmp_path: Path) -> None:
    out = tmp_path / "performance.md"
    proc = subprocess.run([sys.executable, str(RUN_ALL), "--quick", "--only", "drift", "--out", str(out),
                           "--results", str(tmp_path / "results")], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"wrote .*performance\.md in [\d.]+ min", proc.stdout)
    doc = out.read_text()
    # the machine block, with the facts that make figures comparable
    assert "## The machine" in doc
    for fact in ("| CPU |", "| cores |", "| memory |", "| Python |", "onnxruntime ", "| Mosquitto |",
                 "| load average (1/5/15 min) | start "):
        assert fact in doc, fact
    assert "Smoke run (`--quick`)" in doc
    # the section: its command, and rows with our figure, the same-run baseline's figure and the ratio
    assert "## Drift bookkeeping per request" in doc
    assert "**Command:** `python benchmarks/bench_drift.py --requests 100 --rounds 3`" in doc
    rows = re.findall(r"^\| (.+?): served with the drift monitor, per request \| ([\d.]+) µs \| served without a "
                      r"monitor .*? \| ([\d.]+) µs \| ([\d.]+)x \|$", doc, re.M)
    assert len(rows) == 2, doc
    for _, ours, base, ratio in rows:
        assert float(ours) > 0 and float(base) > 0
        assert abs(float(ratio) - float(ours) / float(base)) < 0.01
    assert (tmp_path / "results" / "drift.json").exists() and (tmp_path / "results" / "run.json").exists()
    # only what was asked for ran
    assert "## HTTP serving" not in doc

    # a benchmark whose peer is missing, or that failed, keeps its section with the reason (re-rendered from
    # the run's run.json, nothing run again)
    run_json = tmp_path / "results" / "run.json"
    run = json.loads(run_json.read_text())
    run["runs"] += [
        {"name": "http", "status": "unavailable", "command": "python benchmarks/bench_http.py",
         "why": "tritonclient is not installed: `pip install -e '.[bench]'`"},
        {"name": "shadow", "status": "failed", "command": "python benchmarks/bench_shadow.py", "seconds": 1.0,
         "rc": 1, "tail": ["Traceback (most recent call last):", "RuntimeError: the agent did not start"]},
    ]
    run_json.write_text(json.dumps(run))
    again = tmp_path / "again.md"
    subprocess.run([sys.executable, str(RUN_ALL), "--render", str(tmp_path / "results"), "--out", str(again)],
                   cwd=REPO, check=True, capture_output=True, timeout=60)
    doc = again.read_text()
    assert "## HTTP serving: the agent vs MLServer" in doc
    assert "**Not run here: tritonclient is not installed: `pip install -e '.[bench]'`**" in doc
    assert "## Shadow mode's cost on the answered request" in doc
    assert "**Failed** (1)" in doc and "RuntimeError: the agent did not start" in doc
    assert len(re.findall(r"served with the drift monitor, per request \|", doc)) == 2


def test_every_benchmark_is_known_to_run_all() -> None:
    listed = subprocess.run([sys.executable, str(RUN_ALL), "--list"], cwd=REPO, capture_output=True, text=True,
                            check=True, timeout=60).stdout.split()
    scripts = set(listed[1::2])
    on_disk = {p.name for p in (REPO / "benchmarks").glob("bench_*.py")}
    assert on_disk, "no benchmarks found"
    assert on_disk <= scripts, f"benchmarks/run_all does not run {sorted(on_disk - scripts)}: add them to " \
                               "benchmarks/suite_specs.py BENCHES"
    assert scripts <= on_disk, f"run_all lists scripts that are gone: {sorted(scripts - on_disk)}"
    # and each of them takes --json FILE, which run_all collects
    for name in sorted(on_disk):
        assert '"--json"' in (REPO / "benchmarks" / name).read_text(), f"{name} has no --json option"
