"""``edgeloop data``: check, import, list and inspect datasets; write synthetic sample data."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeloop.hub.cli.common import Parents, command, open_hub
from edgeloop.hub.cli.render import emit, table_lines, text_table
from edgeloop.hub.datasets.dataset import MIN_ROWS, MIN_ROWS_FLOOR
from edgeloop.hub.views import dataset_table, feature_summary, headline, warning_lines, when


def dataset_lines(rec: dict, summary: dict | None = None) -> list[str]:
    """A dataset record (and the summary of its data) as indented text: window data as
    channels × steps, not every ``ch{c}_t{t}`` name (``--json`` keeps them all), and its warnings."""
    window_shape = (summary or {}).get("window_shape")
    lines = [f"dataset {rec['id']}  {rec.get('name', '')}",
             f"  sha256   {rec['sha256']}",
             f"  source   {rec.get('source', '')}",
             f"  rows     {rec['rows']}",
             f"  features {feature_summary(rec.get('features') or [], window_shape)}"]
    if rec.get("labels"):
        lines.append(f"  labels   {', '.join(map(str, rec['labels']))}")
    if summary:
        if summary.get("task"):
            lines.append(f"  task     {summary['task']}")
        counts = summary.get("class_counts")
        if counts:
            lines.append("  classes  " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    lines.append(f"  added    {when(rec.get('created_at'))}")
    # the record's warnings; a record from before warnings were kept: those of the data
    lines += warning_lines(rec.get("warnings") or (summary or {}).get("warnings"))
    return lines


def cmd_data_import(args) -> int:
    with open_hub(args) as hub:
        rec = hub.import_dataset(args.file, schema_file=args.schema, name=args.name, min_rows=args.min_rows)
        lines = dataset_lines(rec, rec.get("summary"))
        lines.append(f"next: edgeloop train --data {rec['id']} --model NAME")
        emit(args, rec, lines)
    return 0


def inspection_lines(doc: dict, options: str = "") -> list[str]:
    """:meth:`Hub.inspect_dataset`'s result as text: valid with its summary and warnings, or
    refused with every problem as line, column, rule and detail."""
    if doc["valid"]:
        summary = doc["summary"] or {}
        lines = [f"{doc['path']}: {doc['message']}", f"  task     {summary.get('task')}"]
        counts = summary.get("class_counts")
        if counts:
            lines.append("  classes  " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        lines += warning_lines(doc["warnings"])
        lines.append(f"nothing registered; next: edgeloop data import {doc['path']}{options}")
        return lines
    rows = [["-" if p.get("row") is None else p["row"], p.get("column") or "-", p.get("rule", "?"),
             p.get("detail", "")] for p in doc["problems"]]
    return ([f"{doc['path']}: refused, {len(rows)} problem(s); nothing registered"]
            + text_table(rows, ["line", "column", "rule", "detail"])
            + ["fix the data (or pass --schema FILE) and check it again"])


def cmd_data_check(args) -> int:
    with open_hub(args) as hub:
        doc = hub.inspect_dataset(args.file, schema_file=args.schema, min_rows=args.min_rows)
    options = (f" --schema {args.schema}" if args.schema else "") + (
        f" --min-rows {args.min_rows}" if args.min_rows != MIN_ROWS else "")
    emit(args, doc, inspection_lines(doc, options))
    return 0 if doc["valid"] else 1


def cmd_data_list(args) -> int:
    with open_hub(args) as hub:
        rows = hub.list_datasets()
        emit(args, rows, table_lines(dataset_table(rows, hub.list_runs())))
    return 0


def cmd_data_show(args) -> int:
    with open_hub(args) as hub:
        doc = hub.dataset_detail(args.ref)
    rec, summary, runs, versions = doc["dataset"], doc["summary"], doc["runs"], doc["versions"]
    lines = dataset_lines(rec, summary)
    if summary.get("error"):
        lines.append(f"  warning: {summary['error']}")
    lines += ["", "runs:"] + (text_table([[r["id"], r["model_name"], r["status"], headline(r.get("metrics")),
                                            when(r["started_at"])] for r in runs],
                                          ["run", "model", "status", "test", "started"]) or ["  none yet"])
    lines += ["", "versions: " + (", ".join(v["id"] for v in versions) or "none yet")]
    emit(args, doc, lines)
    return 0


def cmd_data_sample(args) -> int:
    from edgeloop.hub.datasets import generate_sensor_data, write_csv

    ds = generate_sensor_data(args.rows, args.seed, shift=args.shift)
    path = write_csv(ds, args.out)
    doc = {"path": str(path), "rows": ds.n_rows, "features": list(ds.feature_names), "labels": list(ds.labels),
           "seed": args.seed, "shift": args.shift, "sha256": ds.sha256, "class_counts": ds.class_counts()}
    emit(args, doc, [(f"wrote {ds.n_rows} rows of synthetic sensor data to {path} "
                      f"(seed {args.seed}, shift {args.shift:g} sd; sha256 {ds.sha256[:16]}…)"),
                     "  classes " + ", ".join(f"{k} {v}" for k, v in ds.class_counts().items()),
                     f"next: edgeloop data import {path}"])
    return 0


def add_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    data = command(sub, "data", "import, list and inspect datasets; write sample data",
                   description="Datasets are validated on import and registered by the sha256 of their "
                               "content; runs and versions link back to them.").add_subparsers(
        dest="data_command", required=True, metavar="SUBCOMMAND")
    x = command(data, "import", "validate a data file and register it as a dataset", parents=parents.hub,
                description="Validate a CSV file or a .npz archive (every problem is reported with its line, column "
                            "and rule) and register it by content hash; importing the same data again is a no-op. "
                            "A schema file (JSON) can name the label column, the task, classes, feature "
                            "ranges and columns to ignore.\n\n"
                            "Constant columns, columns identical to another one (sensors that hold their value "
                            "between samples) and fewer rows than recommended do not refuse the data: they are "
                            "printed as warnings and kept in the dataset's record (`data show`).")
    x.add_argument("file", type=Path, help="the data file (CSV with a header row, or .npz)")
    x.add_argument("--schema", type=Path, default=None, help="schema file (JSON) overriding what is inferred")
    x.add_argument("--min-rows", type=int, default=MIN_ROWS, metavar="N",
                   help=f"fewest rows (windows) to accept (default %(default)s, at least {MIN_ROWS_FLOOR}); "
                        f"below {MIN_ROWS} the data import with a few_rows warning: the validation and test "
                        "splits are then small")
    x.add_argument("--name", default=None, help="a name for the dataset (default: the file name)")
    x.set_defaults(func=cmd_data_import)
    x = command(data, "check", "validate a data file without registering it (exit 1: refused)",
                parents=parents.hub,
                description="Validate a CSV file or a .npz archive exactly as `data import` would, registering "
                            "nothing: print the summary and warnings of valid data (exit 0), or every problem "
                            "with its file line (the header is line 1), column and rule (exit 1). --json prints "
                            "the inspection: valid, preview, the resolved schema, summary, problems, warnings.")
    x.add_argument("file", type=Path, help="the data file (CSV with a header row, or .npz)")
    x.add_argument("--schema", type=Path, default=None, help="schema file (JSON) overriding what is inferred")
    x.add_argument("--min-rows", type=int, default=MIN_ROWS, metavar="N",
                   help=f"fewest rows (windows) to accept (default %(default)s, at least {MIN_ROWS_FLOOR})")
    x.set_defaults(func=cmd_data_check)
    x = command(data, "list", "list registered datasets", parents=parents.hub,
                description="List registered datasets with their rows, features, labels and number of runs.")
    x.set_defaults(func=cmd_data_list)
    x = command(data, "show", "show one dataset: schema summary, class counts, runs and versions",
                parents=parents.hub)
    x.add_argument("ref", help="dataset id (ds-...) or sha256 (8+ hex digits)")
    x.set_defaults(func=cmd_data_show)
    x = command(data, "sample", "write synthetic sensor data (CSV) to try the loop with", parents=[parents.js],
                description="Write a synthetic machine-sensor dataset (temperature, vibration, pressure, current, "
                            "humidity, rpm; classes normal/overheating/worn_bearing) as CSV. --shift moves "
                            "temperature and vibration by that many standard deviations, to simulate drift.")
    x.add_argument("--out", "-o", type=Path, required=True, help="CSV file to write")
    x.add_argument("--rows", type=int, default=3000, help="number of rows (default %(default)s)")
    x.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    x.add_argument("--shift", type=float, default=0.0, help="drift in standard deviations (default %(default)s)")
    x.set_defaults(func=cmd_data_sample)
