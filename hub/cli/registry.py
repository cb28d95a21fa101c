"""``edgeloop registry``: versions, comparisons, lineage, the audit log, aliases and gates."""

from __future__ import annotations

import argparse
import json
import math

from edgeloop.hub.cli.common import Parents, UsageError, command, open_hub
from edgeloop.hub.cli.render import emit, show, table_lines, text_table
from edgeloop.hub.views import ago, audit_table, evaluation_table, gate_text, num, version_table, when


# --- versions, comparisons, lineage, audit ------------------------------------------------------
def cmd_registry_list(args) -> int:
    with open_hub(args) as hub:
        versions = hub.list_versions(args.model)
        emit(args, versions, table_lines(version_table(versions, hub.list_bundles())))
    return 0


def cmd_registry_show(args) -> int:
    with open_hub(args) as hub:
        doc = hub.version_detail(args.ref)
        doc["evaluations"] = hub.list_evaluations(doc["version"]["id"])
    v, run, gate = doc["version"], doc["run"], doc["gate"]
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
             *[f"warning: {w}" for w in (run.get("metrics") or {}).get("warnings") or []],
             "gate: " + (gate_text(gate) if gate["has_gate"] else "none (set one with edgeloop registry gate)")]
    lines += [f"bundle {b['sha256'][:16]}…  {b['size']} B  {b['path']}" for b in doc["bundles"]]
    evaluations = table_lines(evaluation_table(doc["evaluations"], {v["id"]: v["chosen"]}))
    lines += (["evaluations on test sets (* = the model it ships):"] + [f"  {line}" for line in evaluations]
              if evaluations else [f"evaluations: none (score it on a test set: edgeloop eval {v['id']} --data FILE)"])
    emit(args, doc, lines)
    return 0


def _lineage_link(link: dict) -> str:
    return f"{link['id']} (run {link['run_id']}, dataset {link.get('dataset_id') or '?'})"


def lineage_lines(lin: dict) -> list[str]:
    """A lineage record as a tree: dataset, runs, versions (with parents and children), bundles, deployments."""
    ds = lin["dataset"]
    lines = [f"dataset {ds['id']}  sha256 {ds['sha256']}  ({ds['rows']} rows, {ds.get('name', '')})"]
    lines += [f"  ← captured by {c['agent_id']} serving {c['model']}:{c['version']}: batch {c['batch_id'][:12]}  "
              f"({c['rows']} rows, {c['labelled_rows']} labelled)" for c in lin.get("captures") or []]
    if lin.get("deployment"):
        d = lin["deployment"]
        lines.insert(0, f"deployment {d['id']} ({d['kind']} to {d['agent_id']}, {d['status']}, command "
                        f"{d['command_id']}) comes from:")
    for run in lin["runs"]:
        lines.append(f"  └─ run {run['id']}  {run['status']}  {run['model_name']}  "
                     f"code {run.get('code_version') or '?'}")
        for v in (x for x in lin["versions"] if x["run_id"] == run["id"]):
            aliases = ", ".join(f"@{a}" for a in v.get("aliases") or [])
            lines.append(f"      └─ version {v['id']}  ships {v['chosen']}" + (f"  {aliases}" if aliases else ""))
            lines += [f"          ↑ derived from {_lineage_link(a)}" for a in v.get("ancestors", [])]
            lines += [f"          ↓ continued by {_lineage_link(c)}" for c in v.get("descendants", [])]
            for b in v.get("bundles", []):
                lines.append(f"          └─ bundle {b['sha256'][:16]}…  key {b['key_id']}")
                lines += [f"              └─ {d['kind']} to {d['agent_id']}: {d['status']} "
                          f"({d['id']}, {ago(d['created_at'])})" for d in b.get("deployments", [])]
    if not lin["runs"]:
        lines.append("  (no training runs on this dataset yet)")
    return lines


def cmd_registry_lineage(args) -> int:
    return show(args, lambda hub: hub.lineage(args.ref), lineage_lines)


def cmd_registry_audit(args) -> int:
    return show(args, lambda hub: hub.list_audit(limit=args.limit, target=args.target, action=args.action),
                lambda rows: table_lines(audit_table(rows)))


def cmd_registry_compare(args) -> int:
    with open_hub(args) as hub:
        c = hub.compare(args.a, args.b)
    rows = [[name, num(m["a"]), num(m["b"]), "-" if m["delta"] is None else f"{m['delta']:+.4g}"]
            for name, m in c["metrics"].items()]
    lines = [f"A = {c['a']['id']} (run {c['a']['run_id']}, dataset {c['a']['dataset_id']})",
             f"B = {c['b']['id']} (run {c['b']['run_id']}, dataset {c['b']['dataset_id']})"
             + ("" if c["same_dataset"] else "  -- different datasets: metrics are not directly comparable"),
             ""] + text_table(rows, ["metric", "A", "B", "B - A"])
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
    for side in ("a", "b"):
        q = c["quantization"][side]
        lines.append(f"{side.upper()} ships {q['chosen']}: {q['reason'] or '-'}")
    for side in ("a", "b"):
        g = c["gate"][side]
        if g["has_gate"]:
            lines.append(f"gate {side.upper()}: {gate_text(g)}")
    emit(args, c, lines)
    return 0


# --- aliases and gates ------------------------------------------------------------------------------
def cmd_registry_alias(args) -> int:
    if args.override_gate and not (args.reason or "").strip():
        raise UsageError("--override-gate needs --reason WHY (it is recorded in the alias history and "
                         "the audit log)")
    with open_hub(args) as hub:
        row = hub.set_alias(args.model, args.alias, args.version, reason=args.reason or "",
                            override_gate=args.override_gate)
    before = row["previous_version_id"]
    text = f"{args.model}@{args.alias} -> {row['version_id']}"
    if row["moved"]:
        text += f" (was {before})" if before else " (new alias)"
    else:
        text += " (already there; nothing changed)"
    if row["override_gate"]:
        text += "\n  evaluation gate OVERRIDDEN: " + row["reason"]
    emit(args, row, [text])
    return 0


def cmd_registry_unalias(args) -> int:
    with open_hub(args) as hub:
        row = hub.remove_alias(args.model, args.alias, reason=args.reason or "")
    emit(args, row, [f"removed {args.model}@{args.alias} (was {row['version_id']})"])
    return 0


def cmd_registry_aliases(args) -> int:
    with open_hub(args) as hub:
        aliases = hub.aliases(args.model)
    lines = []
    for a in aliases:
        lines.append(f"{args.model}@{a['alias']} -> {a['version_id'] or '(removed)'}")
        for h in a["history"]:
            move = f"{h['previous_version_id'] or '-'} -> {h['version_id'] or '(removed)'}"
            note = f'  "{h["reason"]}"' if h["reason"] else ""
            flag = "  [gate overridden]" if h["override_gate"] else ""
            lines.append(f"    {when(h['at'])}  {h['actor']:<12} {move}{note}{flag}")
    if not aliases:
        lines = [(f"model {args.model} has no aliases yet; add one with "
                  f"edgeloop registry alias {args.model} production VERSION")]
    emit(args, aliases, lines)
    return 0


def metric_specs(groups: list[list[str]] | None, option: str) -> dict[str, float]:
    """``--min a=1 b=2 --min c=3`` (argparse gives ``[["a=1", "b=2"], ["c=3"]]``) ->
    ``{"a": 1.0, "b": 2.0, "c": 3.0}``, with helpful errors."""
    out: dict[str, float] = {}
    for spec in (spec for group in groups or [] for spec in group):
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


def cmd_registry_gate(args) -> int:
    mins = metric_specs(args.min, "--min")
    maxs = metric_specs(args.max, "--max")
    if args.clear and (mins or maxs or args.eval_data):
        raise UsageError("give either --clear or --min/--max/--eval-data, not both")
    changed = bool(args.clear or mins or maxs or args.eval_data)
    if args.reason.strip() and not changed:
        raise UsageError("--reason goes with a change of the gate (--min, --max, --eval-data or --clear)")
    with open_hub(args) as hub:
        if args.clear:
            hub.set_gate(args.model, None, reason=args.reason)
        elif changed:
            gate: dict = {"min": mins, "max": maxs} if mins or maxs else dict(hub.registry.get_gate(args.model))
            if args.eval_data:
                gate["eval_data"] = args.eval_data
            hub.set_gate(args.model, gate, reason=args.reason)
        report = hub.gate_report(args.model)
    gate, checks = report["gate"], report["versions"]
    doc = {"model": report["model"], "gate": gate, "has_gate": report["has_gate"], "changed": changed,
           "versions": checks, "task": report["task"], "metric_names": report["metric_names"]}
    if not doc["has_gate"]:
        names = report["metric_names"]
        lines = [f"model {args.model} has no evaluation gate" + (" (cleared)" if args.clear else "")
                 + f"; set one with: edgeloop registry gate {args.model} --min test_accuracy=0.9",
                 "  metrics its training runs record: " + (", ".join(names["runs"]) or "none yet"),
                 "  metrics of evaluations on a test set (edgeloop eval): " + ", ".join(names["evaluations"])]
    else:
        lines = [f"evaluation gate of {args.model}" + (" (updated)" if changed else "") + ":"]
        lines += [f"  {m} >= {num(t)}" for m, t in gate["min"].items()]
        lines += [f"  {m} <= {num(t)}" for m, t in gate["max"].items()]
        on = gate.get("eval_data")
        if any(m.startswith("eval.") for bound in ("min", "max") for m in gate[bound]) or on:
            lines.append("  eval. metrics read on: " + (f"{on.get('name') or '?'} ({on.get('id') or on['sha256'][:12]})"
                                                        if on else "the newest evaluation, on any test set"))
        if checks:
            lines.append("versions:")
            lines += [f"  {c['version']:<20} {gate_text(c)}" for c in checks]
            lines += [f"  warning ({c['version']}): {w}" for c in checks for w in c.get("warnings") or []]
    emit(args, doc, lines)
    return 0


# --- parsers ----------------------------------------------------------------------------------------
def add_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    hub_opts = parents.hub
    r = command(sub, "registry", "model versions, aliases, gates, comparisons, lineage and the audit log",
                description="The registry keeps every dataset, run, version, bundle and deployment with its "
                            "lineage, the aliases (production, staging...) and their history, each model's "
                            "evaluation gate, and an audit log.").add_subparsers(
        dest="registry_command", required=True, metavar="SUBCOMMAND")
    x = command(r, "list", "list model versions with metrics, aliases and bundles", parents=hub_opts)
    x.add_argument("--model", default=None, help="only this model's versions")
    x.set_defaults(func=cmd_registry_list)
    x = command(r, "show", "show one version: metrics, params, split, quantization, gate, bundles", parents=hub_opts)
    x.add_argument("ref", help="model:n, model (its newest) or model@alias")
    x.set_defaults(func=cmd_registry_show)
    x = command(r, "compare", "compare two versions: metrics side by side, params diff, quantization",
                parents=hub_opts)
    x.add_argument("a", help="version A (model:n, model@alias)")
    x.add_argument("b", help="version B; deltas are B - A")
    x.set_defaults(func=cmd_registry_compare)
    x = command(r, "lineage", "dataset -> run -> version -> bundle -> deployments, from any of them",
                parents=hub_opts,
                description="Walk the lineage from a dataset (id or sha256), a run, a version, a bundle or a "
                            "deployment (id or command id) -- forward to bundles and deployments, back to the "
                            "dataset sha256 -- including parent/child versions of continual learning.")
    x.add_argument("ref", help="ds-... or dataset sha256, run-N, model:n / model@alias, bundle sha256 "
                               "(8+ hex digits), dep-N or a command id")
    x.set_defaults(func=cmd_registry_lineage)
    x = command(r, "audit", "recent audit log entries (who did what, when)", parents=hub_opts)
    x.add_argument("--limit", type=int, default=30, help="entries to show (default %(default)s)")
    x.add_argument("--target", default=None, help="only entries about this target (e.g. model:2, model@production)")
    x.add_argument("--action", default=None, help="only this action (e.g. gate.override, alias.set, deploy)")
    x.set_defaults(func=cmd_registry_audit)
    x = command(r, "alias", "point an alias (production, staging, ...) of a model at a version", parents=hub_opts,
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
    x = command(r, "unalias", "remove an alias of a model (kept in its history)", parents=hub_opts)
    x.add_argument("model", help="model name")
    x.add_argument("alias", help="alias name")
    x.add_argument("--reason", default="", help="why (kept in the alias history)")
    x.set_defaults(func=cmd_registry_unalias)
    x = command(r, "aliases", "a model's aliases with their history (every move: who, when, why)",
                parents=hub_opts)
    x.add_argument("model", help="model name")
    x.set_defaults(func=cmd_registry_aliases)
    x = command(r, "gate", "show or set a model's evaluation gate (minimum/maximum metrics)", parents=hub_opts,
                description="An evaluation gate declares the metrics a version of MODEL must reach before it "
                            "can be aliased or deployed, e.g.\n"
                            "  edgeloop registry gate sensor-mlp --min test_accuracy=0.9 --min test_macro_f1=0.85\n"
                            "  edgeloop registry gate my-regressor --max test_rmse=3.0\n"
                            "  edgeloop registry gate sensor-mlp --min eval.accuracy=0.9 --eval-data plant-test\n"
                            "Metrics are those the training runs record (test_accuracy, test_macro_f1, "
                            "test_loss, test_mae, test_rmse, test_r2, continual.forgetting...) and, with the "
                            "eval. prefix, those of `edgeloop eval` on your own test set: eval.accuracy, "
                            "eval.macro_f1, eval.mae, eval.rmse, eval.r2 read the evaluation of the model the "
                            "version ships, eval.fp32.accuracy / eval.int8.accuracy that of one artifact. "
                            "An unknown name is refused with the names that exist.\n"
                            "Setting --min/--max replaces the whole gate; without options the gate and how "
                            "each version fares are shown.")
    x.add_argument("model", help="model name")
    x.add_argument("--min", action="append", nargs="+", metavar="METRIC=VALUE", default=None,
                   help="lowest acceptable value of a metric (higher is better), e.g. test_accuracy=0.9")
    x.add_argument("--max", action="append", nargs="+", metavar="METRIC=VALUE", default=None,
                   help="highest acceptable value of a metric (lower is better), e.g. test_rmse=3.0")
    x.add_argument("--eval-data", default=None, metavar="DATASET",
                   help="read eval. metrics on this test set only (dataset name, id or sha256, as edgeloop eval "
                        "registered it); default: the newest evaluation on any test set")
    x.add_argument("--clear", action="store_true", help="remove the gate")
    x.add_argument("--reason", default="", help="why the gate changes (kept in its model.gate audit entry)")
    x.set_defaults(func=cmd_registry_gate)

