"""``edgeloop eval`` and ``edgeloop predict``: score a version's shipped model on your own test
set (recorded, usable by gates), and write its predictions for a file."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeloop.hub.cli.common import Parents, command, open_hub
from edgeloop.hub.cli.render import emit, text_table
from edgeloop.hub.views import num

_SCORES = {"classification": ("accuracy", "macro_f1"), "regression": ("mae", "rmse", "r2")}


def evaluation_lines(doc: dict) -> list[str]:
    """An evaluation result (:meth:`Hub.evaluate`) as text: scores per artifact, the fp32/int8
    difference, per-class counts of the shipped model, warnings and the next step."""
    ds, task = doc["dataset"], doc["task"]
    scores = _SCORES[task]
    lines = [f"evaluated {doc['version']} on {ds['name'] or ds['source']} ({ds['id'] or 'not registered'}, "
             f"{ds['rows']} rows, sha256 {ds['sha256'][:16]}…)"]
    rows = [[e["artifact"], "yes" if e["shipped"] else "no", str(e["rows"]), *(num(e["metrics"][k]) for k in scores),
             str(e["id"])] for e in doc["evaluations"]]
    lines += ["  " + line for line in text_table(rows, ["model", "ships", "rows", *scores, "eval"])]
    by_kind = {e["artifact"]: e["metrics"] for e in doc["evaluations"]}
    if len(by_kind) == 2:
        k = scores[0]
        delta = by_kind["int8"][k] - by_kind["fp32"][k]
        lines.append(f"  int8 - fp32: {k} {delta * 100:+.2f} points" if task == "classification"
                     else f"  int8 - fp32: {k} {delta:+.4g}")
    shipped = next((e for e in doc["evaluations"] if e["shipped"]), doc["evaluations"][0])
    per_class = shipped["metrics"].get("per_class")
    if per_class:
        lines.append(f"per class ({shipped['artifact']} model):")
        lines += ["  " + line for line in text_table(
            [[name, c["support"], c["predicted"], c["correct"], num(c["recall"], 3), num(c["precision"], 3),
              num(c["f1"], 3)] for name, c in per_class.items()],
            ["class", "rows", "predicted", "correct", "recall", "precision", "f1"])]
    lines += [f"warning: {w}" for w in doc["warnings"]]
    metric = f"eval.{scores[0]}"
    bound = "--max" if task == "regression" else "--min"
    lines.append(f"next: edgeloop registry gate {doc['model']} {bound} {metric}=VALUE   |   "
                 f"edgeloop predict {doc['version']} --data FILE --out preds.csv")
    return lines


def cmd_eval(args) -> int:
    with open_hub(args) as hub:
        doc = hub.evaluate(args.version, args.data, artifact=args.artifact, label_column=args.label_column,
                           name=args.name)
    emit(args, doc, evaluation_lines(doc))
    return 0


def cmd_predict(args) -> int:
    with open_hub(args) as hub:
        doc = hub.predict(args.version, args.data, args.out, artifact=args.artifact, label_column=args.label_column)
    lines = [f"wrote {doc['rows']} predictions of {doc['version']} ({doc['artifact']} model) to {doc['out']}",
             "  columns: " + ", ".join(doc["columns"])]
    if doc["ignored_columns"]:
        lines.append("  ignored column(s) the model does not read: " + ", ".join(doc["ignored_columns"]))
    if doc["label_column"]:
        lines.append(f"next: edgeloop eval {doc['version']} --data {doc['source']}   (the file has labels in "
                     f"{doc['label_column']!r}: score them)")
    emit(args, doc, lines)
    return 0


_DATA_HELP = ("a CSV or NPZ file, read like `edgeloop data import` reads it (validated, registered by content "
              "hash), or a registered dataset (name, ds-... id or sha256)")


def add_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    x = command(sub, "eval", "score a version's shipped model on your own test set (recorded, usable by gates)",
                parents=parents.hub,
                description="Score the ONNX model(s) a version ships -- fp32, and int8 where the version has one "
                            "-- with onnxruntime on a separate test set, and record each evaluation in the "
                            "registry, linked to the version and the test set's sha256. Classification: accuracy, "
                            "macro-F1, per-class counts and the confusion matrix (--json); regression: MAE, RMSE, "
                            "R². The test file needs the true labels (a 'label' column, the training data's label "
                            "column, or name it with --label-column); its feature columns must be those the model "
                            "reads (any order; other columns are ignored). Gates read the scores as eval.accuracy, "
                            "eval.int8.accuracy ... (edgeloop registry gate MODEL --min eval.accuracy=0.9), and "
                            "edgeloop registry show VERSION lists them.\n"
                            "  edgeloop eval press:3 --data plant-a-test.csv\n"
                            "  edgeloop eval press@production --data ds-3fa1c09e77d2 --artifact int8")
    x.add_argument("version", help="the version: model:n, model (its newest) or model@alias")
    x.add_argument("--data", required=True, metavar="DATASET_OR_FILE", help=_DATA_HELP)
    x.add_argument("--artifact", choices=["fp32", "int8", "all"], default="all",
                   help="which model to score: fp32, int8 or all that the version has (default %(default)s)")
    x.add_argument("--label-column", default=None, metavar="NAME", help="the file's column of true labels/values")
    x.add_argument("--name", default=None, help="name a test file is registered under (default: its file name)")
    x.set_defaults(func=cmd_eval)
    x = command(sub, "predict", "write a version's predictions for every row of a file (CSV)",
                parents=parents.hub,
                description="Run the model a version ships (or --artifact) with onnxruntime on every row of a "
                            "CSV/NPZ file -- labels optional -- and write a CSV: the row's line in the input "
                            "(a window's first line in the long layout), the true label when the file has one, "
                            "then predicted_label and probability_<class> per class (classification) or "
                            "predicted_value (regression).\n"
                            "  edgeloop predict press:3 --data today.csv --out preds.csv")
    x.add_argument("version", help="the version: model:n, model (its newest) or model@alias")
    x.add_argument("--data", required=True, metavar="FILE", help="a CSV or NPZ file (or a registered dataset)")
    x.add_argument("--out", required=True, type=Path, help="the CSV file to write")
    x.add_argument("--artifact", choices=["fp32", "int8"], default=None,
                   help="which model to run (default: the one the version ships)")
    x.add_argument("--label-column", default=None, metavar="NAME",
                   help="the file's column of true labels, copied beside the predictions")
    x.set_defaults(func=cmd_predict)
