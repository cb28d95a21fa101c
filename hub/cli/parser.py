"""``edgeloop``: the command line face of the hub services (the GUI is the other face).

Heavy libraries (torch, onnx, Qt) are imported only by the commands that need
them, so ``edgeloop agent run`` works on a device with only the agent extras.
Every hub command takes ``--json`` for machine-readable output; errors are
printed as ``error: ...`` on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeloop.agent.errors import EdgeloopError

EPILOG = """\
The loop:  edgeloop demo                      run everything end to end on embedded defaults
Data:      edgeloop data sample|import|list|show
Train:     edgeloop train --data REF --model NAME [--epochs N ...]
Registry:  edgeloop registry list|show|compare|lineage|audit
Promote:   edgeloop registry gate|alias|aliases|unalias
Export:    edgeloop export VERSION --out DIR,  edgeloop bundle build|inspect|verify
Fleet:     edgeloop fleet, edgeloop drift, edgeloop deploy, edgeloop rollback
Agent:     edgeloop agent run --config FILE   (on the device)
GUI:       edgeloop app

Versions are named model:n (model:3), model (its newest) or model@alias (model@production).
The hub keeps its registry, keys, models and bundles under --home (default: $EDGELOOP_HOME,
else the per-user data folder). Add --json for machine-readable output.
"""


class UsageError(EdgeloopError):
    """A command line value that cannot be used (printed as ``error: ...``, exit 2)."""

    code = "usage"


# --- helpers ---------------------------------------------------------------------
def _hub(args):
    from edgeloop.hub.services import Hub

    return Hub(args.home)


def _emit(args, data: Any, text_lines: list[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print("\n".join(text_lines) if text_lines else "(nothing yet)")


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    d = time.time() - ts
    if d < 120:
        return f"{d:.0f} s ago"
    if d < 7200:
        return f"{d / 60:.0f} min ago"
    if d < 172800:
        return f"{d / 3600:.0f} h ago"
    return f"{d / 86400:.0f} d ago"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    if not rows:
        return []
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*map(str, r)) for r in rows]


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _headline(metrics: dict | None) -> str:
    """The version's main test metric, e.g. ``acc 0.916`` or ``rmse 2.31``."""
    m = metrics or {}
    for key, short in (("test_accuracy", "acc"), ("test_rmse", "rmse"), ("test_r2", "r2"), ("test_mae", "mae")):
        if isinstance(m.get(key), (int, float)):
            return f"{short} {m[key]:.3f}"
    return "-"


def _scalar_metrics(metrics: dict | None, prefix: str = "") -> dict:
    return {k: v for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k.startswith(prefix)}


def _int_list(text: str) -> tuple[int, ...]:
    """argparse type for ``64,32``."""
    try:
        values = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 64,32") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} needs one or more positive integers, e.g. 64,32")
    return values


def _metric_specs(specs: list[str] | None, option: str) -> dict[str, float]:
    """``["test_accuracy=0.9", ...]`` -> ``{"test_accuracy": 0.9}`` with helpful errors."""
    out: dict[str, float] = {}
    for spec in specs or []:
        name, sep, value = str(spec).partition("=")
        name = name.strip()
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name or number is None or not math.isfinite(number):
            raise UsageError(f"bad metric spec {spec!r} for {option}: use METRIC=VALUE with a number, "
                             f"e.g. {option} test_accuracy=0.9")
        out[name] = number
    return out


@contextlib.contextmanager
def _cancel_on_sigint(token) -> Iterator[None]:
    """First Ctrl-C trips ``token`` (the job stops at its next safe point); a second aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if token.cancelled:
            raise KeyboardInterrupt
        token.cancel()
        print("\ncancelling at the next safe point (Ctrl-C again to abort at once)...", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# --- commands ------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from edgeloop.hub.demo import DemoOptions, run_demo
    from edgeloop.hub.home import default_home

    opts = DemoOptions(home=Path(args.home) if args.home else default_home(), broker=args.broker,
                       epochs=args.epochs, json=args.json)
    result = run_demo(opts)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


# --- data ---------------------------------------------------------------------------------
def _dataset_lines(rec: dict, summary: dict | None = None) -> list[str]:
    lines = [f"dataset {rec['id']}  {rec.get('name', '')}",
             f"  sha256   {rec['sha256']}",
             f"  source   {rec.get('source', '')}",
             f"  rows     {rec['rows']}",
             f"  features {len(rec.get('features') or [])}: {', '.join(rec.get('features') or [])}"]
    if rec.get("labels"):
        lines.append(f"  labels   {', '.join(map(str, rec['labels']))}")
    if summary:
        if summary.get("task"):
            lines.append(f"  task     {summary['task']}")
        counts = summary.get("class_counts")
        if counts:
            lines.append("  classes  " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    lines.append(f"  added    {_when(rec.get('created_at'))}")
    return lines


def cmd_data_import(args) -> int:
    with _hub(args) as hub:
        rec = hub.import_dataset(args.file, schema_file=args.schema, name=args.name)
        lines = _dataset_lines(rec, rec.get("summary"))
        lines.append(f"next: edgeloop train --data {rec['id']} --model NAME")
        _emit(args, rec, lines)
    return 0


def cmd_data_list(args) -> int:
    with _hub(args) as hub:
        rows = hub.list_datasets()
        runs = hub.registry.list_runs()
        table = [[d["id"], d.get("name", ""), d["rows"], len(d.get("features") or []),
                  ",".join(map(str, d.get("labels") or [])) or "-",
                  sum(1 for r in runs if r["dataset_id"] == d["id"]), _when(d["created_at"])] for d in rows]
        _emit(args, rows, _table(table, ["dataset", "name", "rows", "features", "labels", "runs", "added"]))
    return 0


def cmd_data_show(args) -> int:
    with _hub(args) as hub:
        rec = hub.get_dataset(args.ref)
        runs = [r for r in hub.registry.list_runs() if r["dataset_id"] == rec["id"]]
        run_ids = {r["id"] for r in runs}
        versions = [v for v in hub.registry.list_versions() if v["run_id"] in run_ids]
        summary = None
        try:
            from edgeloop.hub.services.hub import _dataset_summary

            summary = _dataset_summary(hub.load_dataset(rec["id"]))
        except EdgeloopError as exc:  # the copy is gone or changed: show the record anyway
            summary = {"error": str(exc)}
        doc = {"dataset": rec, "summary": summary, "runs": runs, "versions": versions}
        lines = _dataset_lines(rec, summary)
        if summary and summary.get("error"):
            lines.append(f"  warning: {summary['error']}")
        lines += ["", "runs:"] + (_table([[r["id"], r["model_name"], r["status"], _headline(r.get("metrics")),
                                           _when(r["started_at"])] for r in runs],
                                         ["run", "model", "status", "test", "started"]) or ["  none yet"])
        lines += ["", "versions: " + (", ".join(v["id"] for v in versions) or "none yet")]
        _emit(args, doc, lines)
    return 0


def cmd_data_sample(args) -> int:
    from edgeloop.hub.datasets import generate_sensor_data, write_csv

    ds = generate_sensor_data(args.rows, args.seed, shift=args.shift)
    path = write_csv(ds, args.out)
    doc = {"path": str(path), "rows": ds.n_rows, "features": list(ds.feature_names), "labels": list(ds.labels),
           "seed": args.seed, "shift": args.shift, "sha256": ds.sha256, "class_counts": ds.class_counts()}
    _emit(args, doc, [(f"wrote {ds.n_rows} rows of synthetic sensor data to {path} "
                       f"(seed {args.seed}, shift {args.shift:g} sd; sha256 {ds.sha256[:16]}…)"),
                      "  classes " + ", ".join(f"{k} {v}" for k, v in ds.class_counts().items()),
                      f"next: edgeloop data import {path}"])
    return 0


# --- train ----------------------------------------------------------------------------------
# CLI option (dest) -> TrainParams field; only options the user gave are passed on.
TRAIN_OPTIONS = ("epochs", "lr", "batch_size", "hidden", "weight_decay", "patience", "seed", "arch",
                 "channels", "kernel_size")


def _train_params(args):
    from edgeloop.hub.training import TrainParams

    given = {name: getattr(args, name) for name in TRAIN_OPTIONS if getattr(args, name, None) is not None}
    known = {f.name for f in dataclasses.fields(TrainParams)}
    unsupported = [n for n in given if n not in known]
    if unsupported:
        raise UsageError("this edgeloop's trainer has no " + ", ".join(f"--{n.replace('_', '-')}" for n in unsupported)
                         + " option; leave it out or upgrade edgeloop")
    if args.run_file is not None:
        if hasattr(TrainParams, "from_file"):
            base = TrainParams.from_file(args.run_file)
        else:
            try:
                loaded = json.loads(Path(args.run_file).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot read run file {args.run_file}: {exc}") from exc
            if not isinstance(loaded, dict) or set(loaded) - known:
                raise UsageError(f"run file {args.run_file} must be a JSON object with keys among "
                                 f"{', '.join(sorted(known))}")
            base = TrainParams(**loaded)
        return dataclasses.replace(base, **given) if given else base
    return TrainParams(**given)


def cmd_train(args) -> int:
    from edgeloop.hub.errors import CancelledError
    from edgeloop.hub.progress import CancelToken, TerminalProgress

    params = _train_params(args)
    with _hub(args) as hub:
        data_ref = args.data
        if Path(data_ref).is_file():  # a file: import it first (idempotent)
            data_ref = hub.import_dataset(data_ref)["id"]
        token = CancelToken()
        bar = None if args.quiet else TerminalProgress()
        try:
            with _cancel_on_sigint(token):
                build = hub.train(data_ref, args.model, params, progress=bar, cancel=token,
                                  quantize=not args.no_quantize, budget_points=args.budget, parent=args.parent,
                                  fine_tune=not args.from_scratch, replay_size=args.replay, ewc_lambda=args.ewc)
        except CancelledError as exc:
            if bar is not None:
                bar.close()
            print(f"cancelled: {exc}", file=sys.stderr)
            return 130
        finally:
            if bar is not None:
                bar.close()
        v, run, q = build.version, build.run, build.quantization
        gate = hub.check_gate(v["id"])
        parent = v.get("parent_version")
        fine_tuned = getattr(build, "continual", None)
        doc = {"version": v, "run": run, "metrics": build.metrics, "quantization": q,
               "timings": build.timings, "folder": str(build.folder), "parent_version": parent,
               "fine_tuned": bool(fine_tuned), "continual": fine_tuned, "gate": gate}
        lines = [(f"trained {v['id']}  (run {run['id']} on dataset {run['dataset_id']}, "
                  f"{build.timings.get('train_s', 0):.1f} s training)")]
        lines += [f"  {k:<18} {_num(val)}" for k, val in _scalar_metrics(build.metrics, "test_").items()]
        lines.append(f"  ships {v['chosen']}: {q.get('reason', '-')}")
        if parent and fine_tuned:
            c = fine_tuned
            lines.append(f"  fine-tuned from {parent} ({c.get('replay_rows', 0)} replayed rows, EWC "
                         f"{_num(c.get('ewc_lambda'))}): {c.get('metric', 'score')} on the parent's test split "
                         f"{_num(c.get('parent_test_before'))} -> {_num(c.get('parent_test_after'))} (forgetting "
                         f"{_num(c.get('forgetting'))}), on the new test split {_num(c.get('new_test_before'))} "
                         f"-> {_num(c.get('new_test_after'))}")
        elif parent:
            lines.append(f"  parent {parent}: recorded as parent_version only (lineage; --from-scratch, so "
                         "training started from scratch)")
        if gate["has_gate"]:
            lines.append("  gate: " + ("passed" if gate["passed"] else "FAILED -- " + "; ".join(
                f"{f['metric']} {_num(f['value'])} vs {f['bound']} {_num(f['threshold'])}" for f in gate["failures"])))
        lines.append(f"next: edgeloop registry alias {v['model_name']} staging {v['id']}   |   "
                     f"edgeloop export {v['id']} --out DIR")
        _emit(args, doc, lines)
    return 0


# --- registry --------------------------------------------------------------------------------
def cmd_registry_list(args) -> int:
    with _hub(args) as hub:
        versions = hub.registry.list_versions(args.model)
        bundles = hub.registry.list_bundles()
        rows = []
        for v in versions:
            rep = (v.get("quantization") or {}).get("report") or {}
            mine = [b for b in bundles if b["version_id"] == v["id"]]
            rows.append([v["id"], v["run_id"], _headline(v.get("metrics")), v["chosen"],
                         f"{rep['accuracy_delta_points']:+.2f}" if "accuracy_delta_points" in rep else "-",
                         ",".join(v.get("aliases") or []) or "-", v.get("parent_version") or "-",
                         mine[0]["sha256"][:12] if mine else "-", _when(v["created_at"])])
        _emit(args, versions, _table(rows, ["version", "run", "test", "ships", "int8_dpt", "aliases", "parent",
                                            "bundle", "created"]))
    return 0


def cmd_registry_show(args) -> int:
    with _hub(args) as hub:
        v = hub.registry.get_version(args.ref)
        run = hub.registry.get_run(v["run_id"])
        gate = hub.check_gate(v["id"])
        doc = {"version": v, "run": run, "bundles": hub.registry.list_bundles(v["id"]), "gate": gate}
        split = v.get("split") or {}
        lines = [f"{v['id']}  (run {run['id']}, dataset {run['dataset_id']}, ships {v['chosen']})",
                 "aliases: " + (", ".join(f"{v['model_name']}@{a}" for a in v.get("aliases") or []) or "-"),
                 f"parent: {v.get('parent_version') or '-'}",
                 "metrics: " + json.dumps({k: val for k, val in (v.get('metrics') or {}).items()
                                           if not isinstance(val, list)}),
                 "params: " + json.dumps({k: val for k, val in (run.get("params") or {}).items() if k != "split"}),
                 "split: " + (f"seed {split.get('seed')}, counts {json.dumps(split.get('counts'))}, "
                              f"sha256 {str(split.get('sha256', ''))[:16]}…" if split else "-"),
                 f"code: {run.get('code_version') or '?'}; libraries: "
                 + ", ".join(f"{k} {val}" for k, val in (run.get("library_versions") or {}).items() if val),
                 "quantization: " + str((v.get("quantization") or {}).get("reason", "-")),
                 "gate: " + (_gate_text(gate) if gate["has_gate"] else "none (set one with edgeloop registry gate)")]
        lines += [f"bundle {b['sha256'][:16]}…  {b['size']} B  {b['path']}" for b in doc["bundles"]]
        _emit(args, doc, lines)
    return 0


def _gate_text(check: dict) -> str:
    parts = [f"{c['metric']} {_num(c['value'])} {'>=' if c['bound'] == 'min' else '<='} {_num(c['threshold'])}"
             f" {'ok' if c['passed'] else 'FAIL'}" for c in check["checks"]]
    return ("passed" if check["passed"] else "FAILED") + " (" + "; ".join(parts) + ")"


def _lineage_link(link: dict) -> str:
    return f"{link['id']} (run {link['run_id']}, dataset {link.get('dataset_id') or '?'})"


def cmd_registry_lineage(args) -> int:
    with _hub(args) as hub:
        lin = hub.lineage(args.ref)
        ds = lin["dataset"]
        lines = [f"dataset {ds['id']}  sha256 {ds['sha256']}  ({ds['rows']} rows, {ds.get('name', '')})"]
        if lin.get("deployment"):
            d = lin["deployment"]
            lines.insert(0, f"deployment {d['id']} ({d['kind']} to {d['agent_id']}, {d['status']}, command "
                            f"{d['command_id']}) comes from:")
        for run in lin["runs"]:
            lines.append(f"  └─ run {run['id']}  {run['status']}  {run['model_name']}  code {run.get('code_version') or '?'}")
            for v in (x for x in lin["versions"] if x["run_id"] == run["id"]):
                aliases = ", ".join(f"@{a}" for a in v.get("aliases") or [])
                lines.append(f"      └─ version {v['id']}  ships {v['chosen']}" + (f"  {aliases}" if aliases else ""))
                for a in v.get("ancestors", []):
                    lines.append(f"          ↑ derived from {_lineage_link(a)}")
                for c in v.get("descendants", []):
                    lines.append(f"          ↓ continued by {_lineage_link(c)}")
                for b in v.get("bundles", []):
                    lines.append(f"          └─ bundle {b['sha256'][:16]}…  key {b['key_id']}")
                    for d in b.get("deployments", []):
                        lines.append(f"              └─ {d['kind']} to {d['agent_id']}: {d['status']} "
                                     f"({d['id']}, {_ago(d['created_at'])})")
        if not lin["runs"]:
            lines.append("  (no training runs on this dataset yet)")
        _emit(args, lin, lines)
    return 0


def cmd_registry_audit(args) -> int:
    with _hub(args) as hub:
        rows = hub.registry.list_audit(limit=args.limit, target=args.target, action=args.action)
        lines = _table([[time.strftime("%m-%d %H:%M:%S", time.localtime(r["at"])), r["actor"], r["action"],
                         r["target"], _audit_note(r)] for r in rows], ["at", "actor", "action", "target", "detail"])
        _emit(args, rows, lines)
    return 0


def _audit_note(row: dict) -> str:
    d = row.get("detail") or {}
    if row["action"] == "gate.override":
        return f"{d.get('purpose', '')}: {d.get('reason', '')}"
    if row["action"].startswith("alias."):
        return f"{d.get('previous') or '-'} -> {d.get('version') or '-'}" + (f" ({d['reason']})" if d.get("reason") else "")
    return ""


def cmd_registry_alias(args) -> int:
    with _hub(args) as hub:
        before = None
        with contextlib.suppress(EdgeloopError):
            before = hub.registry.get_alias(args.model, args.alias)["version_id"]
        if args.override_gate and not (args.reason or "").strip():
            raise UsageError("--override-gate needs --reason WHY (it is recorded in the alias history and "
                             "the audit log)")
        row = hub.set_alias(args.model, args.alias, args.version, reason=args.reason or "",
                            override_gate=args.override_gate)
        moved = before != row["version_id"]
        text = f"{args.model}@{args.alias} -> {row['version_id']}"
        text += (f" (was {before})" if before else " (new alias)") if moved else " (already there; nothing changed)"
        history = hub.registry.alias_history(args.model, args.alias)
        if moved and history and history[0]["override_gate"]:
            text += "\n  evaluation gate OVERRIDDEN: " + row["reason"]
        _emit(args, {**row, "previous_version_id": before, "moved": moved}, [text])
    return 0


def cmd_registry_unalias(args) -> int:
    with _hub(args) as hub:
        row = hub.remove_alias(args.model, args.alias, reason=args.reason or "")
        _emit(args, row, [f"removed {args.model}@{args.alias} (was {row['version_id']})"])
    return 0


def cmd_registry_aliases(args) -> int:
    with _hub(args) as hub:
        aliases = hub.aliases(args.model)
        lines = []
        for a in aliases:
            target = a["version_id"] or "(removed)"
            lines.append(f"{args.model}@{a['alias']} -> {target}")
            for h in a["history"]:
                move = f"{h['previous_version_id'] or '-'} -> {h['version_id'] or '(removed)'}"
                note = f'  "{h["reason"]}"' if h["reason"] else ""
                flag = "  [gate overridden]" if h["override_gate"] else ""
                lines.append(f"    {_when(h['at'])}  {h['actor']:<12} {move}{note}{flag}")
        if not aliases:
            lines = [(f"model {args.model} has no aliases yet; add one with "
                      f"edgeloop registry alias {args.model} production VERSION")]
        _emit(args, aliases, lines)
    return 0


def cmd_registry_compare(args) -> int:
    with _hub(args) as hub:
        c = hub.compare(args.a, args.b)
        a, b = c["a"]["id"], c["b"]["id"]
        rows = [[name, _num(m["a"]), _num(m["b"]), "-" if m["delta"] is None else f"{m['delta']:+.4g}"]
                for name, m in c["metrics"].items()]
        lines = [f"A = {a} (run {c['a']['run_id']}, dataset {c['a']['dataset_id']})",
                 f"B = {b} (run {c['b']['run_id']}, dataset {c['b']['dataset_id']})"
                 + ("" if c["same_dataset"] else "  -- different datasets: metrics are not directly comparable"),
                 ""] + _table(rows, ["metric", "A", "B", "B - A"])
        p = c["params"]
        lines.append("")
        if p["changed"]:
            lines.append("params changed: " + "; ".join(f"{k} {json.dumps(v['a'])} -> {json.dumps(v['b'])}"
                                                          for k, v in p["changed"].items()))
        else:
            lines.append("params: identical")
        if p["only_a"]:
            lines.append("only in A: " + "; ".join(f"{k}={json.dumps(v)}" for k, v in p["only_a"].items()))
        if p["only_b"]:
            lines.append("only in B: " + "; ".join(f"{k}={json.dumps(v)}" for k, v in p["only_b"].items()))
        for side, vid in (("a", a), ("b", b)):
            q = c["quantization"][side]
            lines.append(f"{side.upper()} ships {q['chosen']}: {q['reason'] or '-'}")
        for side, vid in (("a", a), ("b", b)):
            g = c["gate"][side]
            if g["has_gate"]:
                lines.append(f"gate {side.upper()}: {_gate_text(g)}")
        _emit(args, c, lines)
    return 0


def cmd_registry_gate(args) -> int:
    with _hub(args) as hub:
        mins = _metric_specs(args.min, "--min")
        maxs = _metric_specs(args.max, "--max")
        if args.clear and (mins or maxs):
            raise UsageError("give either --clear or --min/--max, not both")
        changed = bool(args.clear or mins or maxs)
        if changed:
            model = hub.set_gate(args.model, None if args.clear else {"min": mins, "max": maxs})
        else:
            model = hub.registry.get_model(args.model)
        gate = hub.registry.get_gate(args.model)
        checks = [hub.check_gate(v["id"]) for v in hub.registry.list_versions(args.model)]
        doc = {"model": args.model, "gate": gate, "has_gate": bool(gate["min"] or gate["max"]),
               "changed": changed, "versions": checks, "task": model.get("task")}
        if not doc["has_gate"]:
            lines = [f"model {args.model} has no evaluation gate" + (" (cleared)" if args.clear else "")
                     + f"; set one with: edgeloop registry gate {args.model} --min test_accuracy=0.9"]
        else:
            lines = [f"evaluation gate of {args.model}" + (" (updated)" if changed else "") + ":"]
            lines += [f"  {m} >= {_num(t)}" for m, t in gate["min"].items()]
            lines += [f"  {m} <= {_num(t)}" for m, t in gate["max"].items()]
            if checks:
                lines.append("versions:")
                lines += [f"  {c['version']:<20} {_gate_text(c)}" for c in checks]
        _emit(args, doc, lines)
    return 0


# --- export and bundles -------------------------------------------------------------------------
def cmd_export(args) -> int:
    with _hub(args) as hub:
        out = hub.export(args.version, args.out)
        lines = [f"exported {out['version']} to {out['out_dir']}"]
        lines += [f"  {Path(f['path']).name:<32} {f['size']:>8} B  sha256 {f['sha256'][:16]}…" for f in out["files"]]
        lines.append(f"  {Path(out['report']).name:<32} report (metrics, params, quantization, lineage)")
        _emit(args, out, lines)
    return 0


def cmd_bundle_build(args) -> int:
    import shutil

    with _hub(args) as hub:
        b = hub.build_bundle(args.version)
        path = b.path
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            path = Path(shutil.copy2(b.path, args.out / b.path.name))
        doc = {"sha256": b.sha256, "path": str(path), "size": b.size, "version": b.record["version_id"],
               "key_id": b.manifest.key_id}
        _emit(args, doc, [f"bundle of {doc['version']}: {path}", f"  {b.size} bytes, sha256 {b.sha256}",
                          f"  signed by hub key {b.manifest.key_id}"])
    return 0


def cmd_fleet(args) -> int:
    with _hub(args) as hub:
        agents = hub.registry.list_agents()
        rows = [[a["agent_id"], a.get("status") or "?",
                 f"{a.get('active_model') or '-'} {a.get('active_version') or ''}".strip(),
                 (a.get("active_bundle") or "-")[:12], a.get("http_url") or "-", _ago(a.get("last_seen"))]
                for a in agents]
        _emit(args, agents, _table(rows, ["agent", "status", "serving", "bundle", "http", "last seen"]))
    return 0


def cmd_drift(args) -> int:
    with _hub(args) as hub:
        summary = hub.registry.drift_summary(args.agent)
        lines = []
        for s in summary:
            flagged = s.get("drifted_features") or {}
            lines.append(f"{s['agent_id']}  {s['model']}:{s['version']}  {s['windows']} windows, {s['rows']} rows, "
                         f"{'DRIFTING' if s.get('drifting_now') else 'stable'} (last window "
                         f"{_ago(s.get('last_received_at'))})")
            for name, n in flagged.items():
                lines.append(f"    {name:<16} flagged in {n} window(s), max PSI {s['max_psi'].get(name, 0):.2f}")
            if not flagged:
                lines.append("    no feature flagged")
        _emit(args, summary, lines)
    return 0


def cmd_bundle_inspect(args) -> int:
    from edgeloop.agent.wire.bundle import inspect_bundle, sha256

    data = Path(args.file).read_bytes()
    manifest, sig = inspect_bundle(data)
    doc = {"sha256": sha256(data), "size": len(data), "manifest": manifest.to_dict(), "signature": sig}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        m = manifest
        print(f"bundle {args.file}  ({len(data)} bytes, sha256 {doc['sha256']})")
        print(f"  model {m.model_name} version {m.version} ({m.task}), created "
              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(m.created_at))}")
        print(f"  signed by key {m.key_id} (NOT verified here: use `edgeloop bundle verify`)")
        print(f"  input {m.inputs[0].name} {m.inputs[0].datatype}{m.inputs[0].shape}: {', '.join(m.feature_names)}")
        print(f"  outputs: {', '.join(f'{o.name} {o.datatype}{o.shape}' for o in m.outputs)}; labels {m.labels}")
        for f in m.files:
            print(f"  file {f.path} ({f.role}) {f.size} B sha256 {f.sha256[:16]}…")
        if m.drift:
            print(f"  drift reference: {len(m.drift.features)} features, window {m.drift.window} rows, "
                  f"PSI > {m.drift.psi_threshold} and KS > {m.drift.ks_threshold}")
        if m.smoke_test:
            print(f"  smoke test: {len(m.smoke_test.inputs)} rows, atol {m.smoke_test.atol}")
        print(f"  lineage: {json.dumps(m.lineage)}")
        print(f"  quantization: {m.quantization.get('chosen', 'fp32')} -- {m.quantization.get('reason', '')}")
    return 0


def cmd_bundle_verify(args) -> int:
    from edgeloop.agent.wire.bundle import sha256, verify_bundle
    from edgeloop.agent.wire.envelope import TrustedKeys

    if args.key:
        trusted = TrustedKeys.from_pems([Path(k).read_bytes() for k in args.key])
    else:
        with _hub(args) as hub:
            trusted = TrustedKeys.of([hub.key.public])
    data = Path(args.file).read_bytes()
    try:
        vb = verify_bundle(data, trusted)
    except EdgeloopError as exc:
        doc = {"ok": False, "code": exc.code, "error": str(exc)}
        print(json.dumps(doc) if args.json else f"REFUSED [{exc.code}]: {exc}")
        return 1
    doc = {"ok": True, "sha256": sha256(data), "key_id": vb.keyid, "model": vb.manifest.model_name,
           "version": vb.manifest.version, "files": len(vb.files)}
    print(json.dumps(doc) if args.json else
          f"OK: {vb.manifest.model_name} {vb.manifest.version} signed by {vb.keyid}; {len(vb.files)} file(s) match")
    return 0


def cmd_keys_show(args) -> int:
    with _hub(args) as hub:
        key = hub.key
        if args.public:
            sys.stdout.write(key.public_pem().decode())
            return 0
        doc = {"key_id": key.keyid, "private": str(hub.home.keys_dir / "hub_ed25519.pem"),
               "public": str(hub.public_key_path)}
        _emit(args, doc, [f"hub key {key.keyid}", f"  private {doc['private']} (0600, never leaves this machine)",
                          f"  public  {doc['public']} (copy to agents: trusted_keys)"])
    return 0


def _resolve_bundle(hub, ref: str) -> tuple[dict, bytes]:
    return hub.resolve_bundle(ref)


def cmd_deploy(args) -> int:
    with _hub(args) as hub:
        results = hub.deploy(args.broker, args.agent, args.ref, override_reason=args.override_gate,
                             timeout=args.timeout)
        lines = [f"{r['agent']}: {'OK' if r['ok'] else 'FAILED'} [{r['code']}] {r['message']}" for r in results]
        if results and results[0]["gate"]["overridden"]:
            lines.insert(0, f"evaluation gate of {results[0]['version']} OVERRIDDEN: {args.override_gate}")
        _emit(args, results, lines)
        return 0 if all(r["ok"] for r in results) else 1


def cmd_rollback(args) -> int:
    with _hub(args) as hub:
        rec, _ = _resolve_bundle(hub, args.to)
        with hub.fleet(args.broker) as fleet:
            results = []
            for aid in args.agent:
                out = fleet.rollback(aid, rec["sha256"], reason=args.reason or "", timeout=args.timeout)
                results.append({"agent": aid, "ok": out.ok, "code": out.code, "message": out.message})
        _emit(args, results, [f"{r['agent']}: {'OK' if r['ok'] else 'REFUSED/FAILED'} [{r['code']}] {r['message']}"
                              for r in results])
        return 0 if all(r["ok"] for r in results) else 1


def cmd_discover(args) -> int:
    from edgeloop.agent.discovery import browse

    found = browse(timeout=args.timeout)
    _emit(args, [a.__dict__ for a in found],
          _table([[a.agent_id, ",".join(a.addresses), a.http_port or "-", a.broker, a.version] for a in found],
                 ["agent", "addresses", "http", "broker", "version"]))
    return 0


def cmd_app(args) -> int:
    """Start the GUI as its own process: hub never imports app (app -> hub -> agent)."""
    import importlib.util
    import subprocess

    if importlib.util.find_spec("PySide6") is None or importlib.util.find_spec("app") is None:
        print("error: the GUI needs the app extras: pip install 'edgeloop[app]'", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "edgeloop.app"] + (["--home", str(args.home)] if args.home else [])
    return subprocess.call(cmd)


def cmd_agent(args) -> int:
    from edgeloop.agent.cli import run_parsed

    return run_parsed(args)


# --- parser ---------------------------------------------------------------------------
def _sub(subparsers, name: str, help_text: str, description: str | None = None, parents=(), **kw):
    """A subcommand whose --help shows ``description`` (defaults to the one-line help)."""
    return subparsers.add_parser(name, parents=list(parents), help=help_text,
                                 description=description or (help_text[:1].upper() + help_text[1:] + "."),
                                 formatter_class=argparse.RawDescriptionHelpFormatter, **kw)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", type=Path, default=None,
                        help="hub home folder (default: $EDGELOOP_HOME, else the per-user data folder)")
    js = argparse.ArgumentParser(add_help=False)
    js.add_argument("--json", action="store_true", help="machine-readable output")
    hub_opts = (common, js)

    p = argparse.ArgumentParser(
        prog="edgeloop", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="edgeloop: train, sign, ship and watch small ML models on edge devices, "
                    "from one workstation.")
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default %(default)s)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = _sub(sub, "demo", "run the whole loop end to end on embedded defaults", parents=hub_opts,
             description="Train, export, quantize, sign, deploy to two local agent processes over "
                         "MQTT, serve over MQTT and HTTP, detect drift, roll back -- and print a summary. "
                         "State stays in the registry for `edgeloop registry list`, `fleet`, `drift`.")
    d.add_argument("--broker", default=None,
                   help="mqtt://host:port of an existing broker, or 'mosquitto' to start a private one "
                        "(default: an embedded amqtt broker on a free port)")
    d.add_argument("--epochs", type=int, default=40, help="training epochs of the first version (default %(default)s)")
    d.set_defaults(func=cmd_demo)

    # data
    data = _sub(sub, "data", "import, list and inspect datasets; write sample data",
                description="Datasets are validated on import and registered by the sha256 of their "
                            "content; runs and versions link back to them.").add_subparsers(
        dest="data_command", required=True, metavar="SUBCOMMAND")
    x = _sub(data, "import", "validate a data file and register it as a dataset", parents=hub_opts,
             description="Validate a CSV file (every problem is reported with its line, column and rule) "
                         "and register it by content hash; importing the same data again is a no-op. "
                         "A schema file (JSON) can name the label column, the task, classes, feature "
                         "ranges and columns to ignore.")
    x.add_argument("file", type=Path, help="the data file (CSV with a header row)")
    x.add_argument("--schema", type=Path, default=None, help="schema file (JSON) overriding what is inferred")
    x.add_argument("--name", default=None, help="a name for the dataset (default: the file name)")
    x.set_defaults(func=cmd_data_import)
    x = _sub(data, "list", "list registered datasets", parents=hub_opts,
             description="List registered datasets with their rows, features, labels and number of runs.")
    x.set_defaults(func=cmd_data_list)
    x = _sub(data, "show", "show one dataset: schema summary, class counts, runs and versions", parents=hub_opts)
    x.add_argument("ref", help="dataset id (ds-...) or sha256 (8+ hex digits)")
    x.set_defaults(func=cmd_data_show)
    x = _sub(data, "sample", "write synthetic sensor data (CSV) to try the loop with", parents=[js],
             description="Write a synthetic machine-sensor dataset (temperature, vibration, pressure, current, "
                         "humidity, rpm; classes normal/overheating/worn_bearing) as CSV. --shift moves "
                         "temperature and vibration by that many standard deviations, to simulate drift.")
    x.add_argument("--out", "-o", type=Path, required=True, help="CSV file to write")
    x.add_argument("--rows", type=int, default=3000, help="number of rows (default %(default)s)")
    x.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    x.add_argument("--shift", type=float, default=0.0, help="drift in standard deviations (default %(default)s)")
    x.set_defaults(func=cmd_data_sample)

    # train
    t = _sub(sub, "train", "train, export and register a new model version", parents=hub_opts,
             description="Train a model on a registered dataset, export it to ONNX (fp32 and static int8), "
                         "decide which to ship, and register the run (params, metrics, curves, code and "
                         "library versions) and the new version. Progress is shown on stderr; Ctrl-C "
                         "cancels cleanly at the next epoch. Options not given keep their defaults "
                         "(or the --run-file's values).")
    t.add_argument("--data", required=True, help="dataset id/sha256 (see edgeloop data list), or a CSV file to import")
    t.add_argument("--model", required=True, help="model name; each training adds its next version (name:n)")
    t.add_argument("--epochs", type=int, default=None, help="maximum epochs (default 40)")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default 0.003)")
    t.add_argument("--batch-size", type=int, default=None, help="mini-batch size (default 64)")
    t.add_argument("--hidden", type=_int_list, default=None, help="MLP layer widths, e.g. 64,32")
    t.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 1e-4)")
    t.add_argument("--patience", type=int, default=None, help="early-stopping patience in epochs (default 8)")
    t.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    t.add_argument("--arch", choices=["mlp", "cnn1d"], default=None, help="model architecture (default mlp)")
    t.add_argument("--channels", type=_int_list, default=None, help="CNN channel widths, e.g. 16,32 (cnn1d)")
    t.add_argument("--kernel-size", type=int, default=None, help="CNN kernel size (cnn1d)")
    t.add_argument("--run-file", type=Path, default=None,
                   help="training parameters from a file (JSON or TOML); options given here override it")
    t.add_argument("--from", dest="parent", default=None, metavar="VERSION",
                   help="continue from this version (continual learning); recorded as its parent_version")
    t.add_argument("--from-scratch", action="store_true",
                   help="with --from: train from scratch and record the parent as lineage only")
    t.add_argument("--replay", type=int, default=None, metavar="ROWS",
                   help="with --from: rows of the parent's training data replayed while fine-tuning")
    t.add_argument("--ewc", type=float, default=None, metavar="LAMBDA",
                   help="with --from: elastic weight consolidation strength (0 = off)")
    t.add_argument("--no-quantize", action="store_true", help="skip int8 quantization (ship fp32)")
    t.add_argument("--budget", type=float, default=1.0, metavar="POINTS",
                   help="accuracy points int8 may lose and still ship (default %(default)s)")
    t.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    # registry
    r = _sub(sub, "registry", "model versions, aliases, gates, comparisons, lineage and the audit log",
             description="The registry keeps every dataset, run, version, bundle and deployment with its "
                         "lineage, the aliases (production, staging...) and their history, each model's "
                         "evaluation gate, and an audit log.").add_subparsers(
        dest="registry_command", required=True, metavar="SUBCOMMAND")
    x = _sub(r, "list", "list model versions with metrics, aliases and bundles", parents=hub_opts)
    x.add_argument("--model", default=None, help="only this model's versions")
    x.set_defaults(func=cmd_registry_list)
    x = _sub(r, "show", "show one version: metrics, params, split, quantization, gate, bundles", parents=hub_opts)
    x.add_argument("ref", help="model:n, model (its newest) or model@alias")
    x.set_defaults(func=cmd_registry_show)
    x = _sub(r, "compare", "compare two versions: metrics side by side, params diff, quantization",
             parents=hub_opts)
    x.add_argument("a", help="version A (model:n, model@alias)")
    x.add_argument("b", help="version B; deltas are B - A")
    x.set_defaults(func=cmd_registry_compare)
    x = _sub(r, "lineage", "dataset -> run -> version -> bundle -> deployments, from any of them",
             parents=hub_opts,
             description="Walk the lineage from a dataset (id or sha256), a run, a version, a bundle or a "
                         "deployment (id or command id) -- forward to bundles and deployments, back to the "
                         "dataset sha256 -- including parent/child versions of continual learning.")
    x.add_argument("ref", help="ds-... or dataset sha256, run-N, model:n / model@alias, bundle sha256 "
                               "(8+ hex digits), dep-N or a command id")
    x.set_defaults(func=cmd_registry_lineage)
    x = _sub(r, "audit", "recent audit log entries (who did what, when)", parents=hub_opts)
    x.add_argument("--limit", type=int, default=30, help="entries to show (default %(default)s)")
    x.add_argument("--target", default=None, help="only entries about this target (e.g. model:2, model@production)")
    x.add_argument("--action", default=None, help="only this action (e.g. gate.override, alias.set, deploy)")
    x.set_defaults(func=cmd_registry_audit)
    x = _sub(r, "alias", "point an alias (production, staging, ...) of a model at a version", parents=hub_opts,
             description="Point MODEL@ALIAS at VERSION; every move is kept with who, when and why "
                         "(edgeloop registry aliases MODEL). A version below the model's evaluation gate "
                         "is refused unless --override-gate is given with --reason (both recorded).")
    x.add_argument("model", help="model name")
    x.add_argument("alias", help="alias name, e.g. production or staging")
    x.add_argument("version", help="the version: n, model:n or model@other-alias")
    x.add_argument("--reason", default="", help="why (kept in the alias history)")
    x.add_argument("--override-gate", action="store_true",
                   help="move it even though the version fails the gate (needs --reason)")
    x.set_defaults(func=cmd_registry_alias)
    x = _sub(r, "unalias", "remove an alias of a model (kept in its history)", parents=hub_opts)
    x.add_argument("model", help="model name")
    x.add_argument("alias", help="alias name")
    x.add_argument("--reason", default="", help="why (kept in the alias history)")
    x.set_defaults(func=cmd_registry_unalias)
    x = _sub(r, "aliases", "a model's aliases with their history (every move: who, when, why)", parents=hub_opts)
    x.add_argument("model", help="model name")
    x.set_defaults(func=cmd_registry_aliases)
    x = _sub(r, "gate", "show or set a model's evaluation gate (minimum/maximum metrics)", parents=hub_opts,
             description="An evaluation gate declares the metrics a version of MODEL must reach before it "
                         "can be aliased or deployed, e.g.\n"
                         "  edgeloop registry gate sensor-mlp --min test_accuracy=0.9 --min test_macro_f1=0.85\n"
                         "  edgeloop registry gate my-regressor --max test_rmse=3.0\n"
                         "Setting --min/--max replaces the whole gate; without options the gate and how "
                         "each version fares are shown.")
    x.add_argument("model", help="model name")
    x.add_argument("--min", action="append", nargs="+", metavar="METRIC=VALUE", default=None,
                   help="lowest acceptable value of a metric (higher is better), e.g. test_accuracy=0.9")
    x.add_argument("--max", action="append", nargs="+", metavar="METRIC=VALUE", default=None,
                   help="highest acceptable value of a metric (lower is better), e.g. test_rmse=3.0")
    x.add_argument("--clear", action="store_true", help="remove the gate")
    x.set_defaults(func=cmd_registry_gate)

    # export and bundles
    x = _sub(sub, "export", "copy a version's ONNX models (fp32, int8) and a JSON report to a folder",
             parents=hub_opts,
             description="Export VERSION as MODEL-N.fp32.onnx, MODEL-N.int8.onnx (when quantized) and "
                         "MODEL-N.report.json (metrics, params, curves, quantization decision, gate, lineage). "
                         "The files are checked against the hashes in the registry.")
    x.add_argument("version", help="model:n, model (its newest) or model@alias")
    x.add_argument("--out", "-o", type=Path, required=True, help="folder to write to (created if needed)")
    x.set_defaults(func=cmd_export)

    f = _sub(sub, "fleet", "agents, their status and what they serve (as last reported to the registry)",
             parents=hub_opts)
    f.set_defaults(func=cmd_fleet)
    f = _sub(sub, "drift", "drift windows and flagged features per agent and model", parents=hub_opts)
    f.add_argument("--agent", default=None, help="only this agent")
    f.set_defaults(func=cmd_drift)

    x = _sub(sub, "deploy", "push a version's signed bundle to agents over MQTT", parents=hub_opts,
             description="Check the version against its model's evaluation gate, then push its signed bundle "
                         "(packed now if it has none) to each agent and wait for the install result. "
                         "A version below its gate is refused unless --override-gate REASON is given "
                         "(recorded in the audit log).")
    x.add_argument("ref", help="model:version, model (latest), model@alias or bundle sha256 prefix")
    x.add_argument("--override-gate", default=None, metavar="REASON",
                   help="deploy even though the version fails its evaluation gate; REASON is audited")
    x.add_argument("--agent", action="append", required=True, help="agent id (repeat for several)")
    x.add_argument("--broker", required=True, help="mqtt://host:port the agents are connected to")
    x.add_argument("--timeout", type=float, default=120.0, help="seconds to wait per agent")
    x.set_defaults(func=cmd_deploy)
    x = _sub(sub, "rollback", "send a signed rollback to a bundle the agents hold", parents=hub_opts)
    x.add_argument("--to", required=True, help="model:version, model@alias or bundle sha256 prefix to return to")
    x.add_argument("--reason", default="", help="recorded in the audit log")
    x.add_argument("--agent", action="append", required=True, help="agent id (repeat for several)")
    x.add_argument("--broker", required=True, help="mqtt://host:port the agents are connected to")
    x.add_argument("--timeout", type=float, default=120.0, help="seconds to wait per agent")
    x.set_defaults(func=cmd_rollback)

    b = _sub(sub, "bundle", "build, inspect or verify a signed bundle file").add_subparsers(
        dest="bundle_command", required=True, metavar="SUBCOMMAND")
    x = _sub(b, "build", "pack and sign a version's bundle (manifest + ONNX model)", parents=hub_opts,
             description="Pack VERSION's shipped model with its manifest (features, drift reference, smoke "
                         "test, lineage) into a bundle signed with the hub key, and register it.")
    x.add_argument("version", help="model:n, model (its newest) or model@alias")
    x.add_argument("--out", "-o", type=Path, default=None, help="also copy the bundle file into this folder")
    x.set_defaults(func=cmd_bundle_build)
    x = _sub(b, "inspect", "print a bundle's manifest (without trusting it)", parents=[js])
    x.add_argument("file", type=Path, help="the bundle file (.elb)")
    x.set_defaults(func=cmd_bundle_inspect)
    x = _sub(b, "verify", "check signature and hashes against trusted keys "
             "(the hub key unless --key is given); exit 1 if refused", parents=hub_opts)
    x.add_argument("file", type=Path, help="the bundle file (.elb)")
    x.add_argument("--key", action="append", help="trusted public key PEM (repeat)")
    x.set_defaults(func=cmd_bundle_verify)

    k = _sub(sub, "keys", "the hub signing key").add_subparsers(dest="keys_command", required=True,
                                                                metavar="SUBCOMMAND")
    x = _sub(k, "show", "show the key id and files (creates the key on first use)", parents=hub_opts)
    x.add_argument("--public", action="store_true", help="print the public key PEM (to provision agents)")
    x.set_defaults(func=cmd_keys_show)

    x = _sub(sub, "discover", "list agents announcing themselves with zeroconf", parents=[js])
    x.add_argument("--timeout", type=float, default=3.0, help="seconds to listen (default %(default)s)")
    x.set_defaults(func=cmd_discover)

    x = _sub(sub, "app", "open the operator GUI (PySide6)", parents=[common])
    x.set_defaults(func=cmd_app)

    from edgeloop.agent.cli import add_agent_commands

    a = sub.add_parser("agent", help="run or provision an edge agent (same as edgeloop-agent)",
                       description="Run or provision an edge agent (same as edgeloop-agent).")
    add_agent_commands(a.add_subparsers(dest="agent_command", required=True, metavar="SUBCOMMAND"))
    a.set_defaults(wrap=cmd_agent)
    return p


def _flatten_specs(args) -> None:
    """``--min a=1 b=2 --min c=3`` arrives as nested lists; flatten them."""
    for name in ("min", "max"):
        value = getattr(args, name, None)
        if value is not None and value and isinstance(value[0], list):
            setattr(args, name, [item for group in value for item in group])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _flatten_specs(args)
    if args.command != "agent":
        logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                            format="%(levelname)s %(name)s: %(message)s")
    try:
        if getattr(args, "wrap", None) is not None and args.command == "agent":
            return args.wrap(args)
        return args.func(args)
    except EdgeloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the user named cannot be read or written
        print(f"error: {exc.strerror or exc}: {exc.filename}" if exc.filename else f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
