"""``edgeloop train``: train, export and register a new model version; Ctrl-C cancels cleanly."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeloop.hub.cli.common import Parents, command, open_hub
from edgeloop.hub.cli.render import emit
from edgeloop.hub.views import num

# CLI option (dest) -> TrainParams field; only options the user gave are passed on.
TRAIN_OPTIONS = ("epochs", "lr", "batch_size", "hidden", "weight_decay", "patience", "seed", "arch",
                 "channels", "kernel_size")


def int_list(text: str) -> tuple[int, ...]:
    """argparse type for ``64,32``."""
    try:
        values = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 64,32") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} needs one or more positive integers, e.g. 64,32")
    return values


def given_params(args: argparse.Namespace) -> dict[str, Any]:
    """The training options given on the command line, as a mapping of TrainParams fields."""
    return {name: getattr(args, name) for name in TRAIN_OPTIONS if getattr(args, name, None) is not None}


@contextlib.contextmanager
def cancel_on_sigint(token) -> Iterator[None]:
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


def _scalar_metrics(metrics: dict | None, prefix: str = "") -> dict:
    return {k: v for k, v in (metrics or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k.startswith(prefix)}


def cmd_train(args) -> int:
    from edgeloop.hub import progress  # looked up at call time: tests swap progress.CancelToken
    from edgeloop.hub.errors import CancelledError, DataValidationError
    from edgeloop.hub.services import Hub

    given = given_params(args)
    if args.run_file is not None:  # the file's values count as chosen (a --from-scratch child inherits the rest)
        from_file, default = Hub.train_params(None, run_file=args.run_file).to_dict(), Hub.train_params(None).to_dict()
        given = {**{k: v for k, v in from_file.items() if v != default[k]}, **given}
    Hub.train_params(given)  # refuse bad options before anything is imported
    with open_hub(args) as hub:
        data_ref, test_ref = args.data, args.test_data
        if Path(data_ref).is_file():  # a file: import it first (idempotent)
            data_ref = hub.import_dataset(data_ref)["id"]
        if test_ref is not None and Path(test_ref).is_file():
            test_ref = hub.import_dataset(test_ref)["id"]
        token = progress.CancelToken()
        bar = None if args.quiet else progress.TerminalProgress()
        try:
            with cancel_on_sigint(token):
                build = hub.train(data_ref, args.model, given, progress=bar, cancel=token,
                                  quantize=not args.no_quantize, budget_points=args.budget, parent=args.parent,
                                  fine_tune=not args.from_scratch, replay_size=args.replay, ewc_lambda=args.ewc,
                                  split=args.split, test_data=test_ref)
        except CancelledError as exc:
            if bar is not None:
                bar.close()
            print(f"cancelled: {exc}", file=sys.stderr)
            return 130
        except DataValidationError as exc:
            if bar is not None:
                bar.close()
            print(f"error: {exc}", file=sys.stderr)
            print("nothing was trained: the data were refused before the first epoch, so no run was recorded",
                  file=sys.stderr)
            return 2
        finally:
            if bar is not None:
                bar.close()
        gate = hub.check_gate(build.id)
    emit(args, *_trained(build, gate))
    return 0


def _trained(build, gate: dict) -> tuple[dict, list[str]]:
    """The JSON document and the text lines reporting a finished training."""
    v, run, q = build.version, build.run, build.quantization
    parent = v.get("parent_version")
    fine_tuned = build.continual
    doc = {"version": v, "run": run, "metrics": build.metrics, "quantization": q,
           "timings": build.timings, "folder": str(build.folder), "parent_version": parent,
           "fine_tuned": bool(fine_tuned), "continual": fine_tuned, "gate": gate}
    lines = [(f"trained {v['id']}  (run {run['id']} on dataset {run['dataset_id']}, "
              f"{build.timings.get('train_s', 0):.1f} s training)")]
    lines += [split_line(build.metrics, (run.get("params") or {}).get("test_data"))]
    lines += [f"  {k:<18} {num(val)}" for k, val in _scalar_metrics(build.metrics, "test_").items()]
    lines.append("  " + stop_line(build.metrics))
    lines.append(f"  ships {v['chosen']}: {q.get('reason', '-')}")
    lines += [f"  warning: {w}" for w in build.metrics.get("warnings") or []]
    if parent and fine_tuned:
        c = fine_tuned
        lines.append(f"  fine-tuned from {parent} ({c.get('replay_rows', 0)} replayed rows, EWC "
                     f"{num(c.get('ewc_lambda'))}): {c.get('metric', 'score')} on the parent's test split "
                     f"{num(c.get('parent_test_before'))} -> {num(c.get('parent_test_after'))} (forgetting "
                     f"{num(c.get('forgetting'))}), on the new test split {num(c.get('new_test_before'))} "
                     f"-> {num(c.get('new_test_after'))}")
    elif parent:
        lines.append(f"  parent {parent}: recorded as parent_version only (lineage; --from-scratch, so "
                     "training started from scratch)")
    if gate["has_gate"]:
        lines.append("  gate: " + ("passed" if gate["passed"] else "FAILED -- " + "; ".join(
            f"{f['metric']} {num(f['value'])} vs {f['bound']} {num(f['threshold'])}" for f in gate["failures"])))
        lines += [f"  warning: {w}" for w in gate.get("warnings") or []]
    lines.append(f"next: edgeloop registry alias {v['model_name']} staging {v['id']}   |   "
                 f"edgeloop export {v['id']} --out DIR")
    return doc, lines


def split_line(metrics: dict, test_data: dict | None = None) -> str:
    """``  rows: train 34, val 6, test 120 (test dataset ds-3)`` from a run's metrics."""
    src = f" (test dataset {test_data.get('dataset_id') or test_data.get('sha256', '')[:12]})" if test_data else ""
    return (f"  rows: train {metrics.get('n_train', '?')}, val {metrics.get('n_val', '?')}, "
            f"test {metrics.get('n_test', '?')}{src}")


def stop_line(metrics: dict) -> str:
    """``stopped: early_stop after epoch 41 of max 200; best epoch 21 restored``."""
    reason = metrics.get("stop_reason", "?")
    line = (f"stopped: {reason} after epoch {metrics.get('epochs_run', '?')} of max {metrics.get('max_epochs', '?')}; "
            f"best epoch {metrics.get('best_epoch', '?')} restored")
    if reason == "max_epochs" and metrics.get("best_epoch") == metrics.get("epochs_run"):
        line += " (still improving: raise --epochs)"
    return line


def add_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    t = command(sub, "train", "train, export and register a new model version", parents=parents.hub,
                description="Train a model on a registered dataset, export it to ONNX (fp32 and static int8), "
                            "decide which to ship, and register the run (params, metrics, curves, code and "
                            "library versions, split sizes, best epoch and why training stopped) and the new "
                            "version. Training runs until the validation loss has not improved for --patience "
                            "epochs (at most --epochs) and keeps the best epoch's weights. Progress is shown "
                            "on stderr; Ctrl-C cancels cleanly at the next epoch. Options not given keep their "
                            "defaults (or the --run-file's values; with --from --from-scratch, the parent's "
                            "architecture). Data refused before the first epoch record no run.")
    t.add_argument("--data", required=True,
                   help="dataset id/sha256 (see edgeloop data list), or a CSV file to import")
    t.add_argument("--split", default=None, metavar="TRAIN,VAL,TEST",
                   help="split ratios of --data, summing to 1 (default 0.7,0.15,0.15; with --test-data "
                        "0.85,0.15,0). A TEST of 0 trains on all rows but the validation rows, e.g. 0.8,0.2,0")
    t.add_argument("--test-data", default=None, metavar="DATASET_OR_FILE",
                   help="a separate test dataset (id/sha256 or a file to import): test metrics and the int8 "
                        "decision are judged on it; train/val come from --data")
    t.add_argument("--model", required=True, help="model name; each training adds its next version (name:n)")
    t.add_argument("--epochs", type=int, default=None,
                   help="maximum epochs; early stopping usually ends sooner (default 200)")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default 0.003)")
    t.add_argument("--batch-size", type=int, default=None, help="mini-batch size (default 64)")
    t.add_argument("--hidden", type=int_list, default=None, help="MLP layer widths, e.g. 64,32")
    t.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 1e-4)")
    t.add_argument("--patience", type=int, default=None,
                   help="stop after this many epochs without a better validation loss; the best epoch's weights "
                        "are kept (default 20)")
    t.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    t.add_argument("--arch", choices=["mlp", "cnn1d"], default=None,
                   help="model architecture (default: cnn1d for window datasets, mlp for tables; with --from, "
                        "the parent's)")
    t.add_argument("--channels", type=int_list, default=None, help="CNN channel widths, e.g. 16,32 (cnn1d)")
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
