"""``edgeloop retrain MODEL --from-capture AGENT|TAG``: acting on drift -- fine-tune on the rows an agent
captured and labelled, with replay of the parent's data, and judge the child (docs/operator-guide.md,
"Acting on drift"). A thin face over :meth:`edgeloop.hub.services.Hub.retrain_from_capture`."""

from __future__ import annotations

import argparse
import sys

from edgeloop.hub.cli.common import Parents, command, open_hub
from edgeloop.hub.cli.render import emit
from edgeloop.hub.cli.train import cancel_on_sigint, given_params


def summary_lines(r: dict) -> list[str]:
    """The text summary of a retrain result (``RetrainResult.to_dict()``)."""
    m = r["metric"]
    lines = [
        f"retrained {r['child']} from {r['parent']} on the capture of {', '.join(r['agents'])} "
        f"({len(r['batches'])} batch(es), {r['seconds']:.1f} s)",
        f"  rows used: {r['rows']} ({r['labelled_rows']} labelled"
        + (f", {r['pseudo_labelled_rows']} pseudo-labelled" if r["pseudo_labelled_rows"] else "")
        + f"; {r['unlabelled_rows_skipped']} not used) -> dataset {r['dataset_id']}, run {r['run_id']}",
        f"  gain on the new data:  {m} {r['parent_on_new']:.3f} (parent) -> {r['child_on_new']:.3f} (child), "
        f"{r['gain']:+.3f} on {r['new_rows_test']} held-out captured rows  "
        + ("[beats the parent]" if r["beats_parent"] else "[DOES NOT beat the parent]"),
        f"  forgetting:            {m} {r['parent_test_before']:.3f} -> {r['parent_test_after']:.3f} on the "
        f"parent's test split, {r['forgetting']:+.3f} vs bound {r['max_forgetting']:.3f}  "
        + ("[within]" if r["within_bound"] else "[ABOVE THE BOUND]"),
        f"  replay: {r['replay_rows']} rows of the parent's training data; EWC {r['ewc_lambda']:g}",
    ]
    if r["drifted_agents"]:
        lines.append(f"  drift: {', '.join(r['drifted_agents'])} reported drift on {r['model']}")
    lines += [f"  warning: {w}" for w in r["warnings"]]
    lines.append(("ready for a gated rollout" if r["ready"] else "NOT ready for rollout") + ":")
    lines += [f"  {s}" for s in r["next_steps"]]
    return lines


def cmd_retrain(args) -> int:
    from edgeloop.hub import progress
    from edgeloop.hub.errors import CancelledError
    from edgeloop.hub.services import Hub

    given = given_params(args)
    Hub.train_params(given)  # refuse bad options before anything is loaded
    with open_hub(args) as hub:
        token = progress.CancelToken()
        bar = None if args.quiet else progress.TerminalProgress()
        try:
            with cancel_on_sigint(token):
                result = hub.retrain_from_capture(
                    args.model, args.from_capture, labelled_only=not args.include_unlabelled, parent=args.parent,
                    replay_size=args.replay, ewc_lambda=args.ewc, max_forgetting=args.max_forgetting,
                    min_gain=args.min_gain, min_rows=args.min_rows, params=given or None, since=args.since,
                    quantize=not args.no_quantize, progress=bar, cancel=token)
        except CancelledError as exc:
            print(f"cancelled: {exc}", file=sys.stderr)
            return 130
        finally:
            if bar is not None:
                bar.close()
    doc = result.to_dict()
    emit(args, doc, summary_lines(doc))
    return 0 if result.ready else 1


def add_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    from edgeloop.hub.services.retrain import DEFAULT_MAX_FORGETTING, DEFAULT_REPLAY_ROWS, MIN_RETRAIN_ROWS

    r = command(sub, "retrain", "act on drift: fine-tune a model on the rows an agent captured and labelled",
                parents=parents.hub,
                description="Build a dataset from the batches of MODEL that the agent (or the agents a tag "
                            "selector matches) captured, keeping the rows with a ground-truth label; fine-tune "
                            "the parent (by default the version that served the newest batch) with replay of "
                            "its own training data (and EWC with --ewc); measure the gain on the captured rows' "
                            "test split and the forgetting on the parent's test split; register the child with "
                            "its lineage to the capture. Exit 0 when the child beats the parent and forgets at "
                            "most --max-forgetting (ready for a canary rollout), 1 when it is registered but not "
                            "ready, 2 when refused (no captures, too few labelled rows, another model). "
                            "Progress on stderr; Ctrl-C cancels at the next epoch.")
    r.add_argument("model", help="model name (the parent: the version the capture was served by) or a version "
                                 "(pump:3, pump@production) to continue from")
    r.add_argument("--from-capture", required=True, metavar="AGENT|TAG",
                   help="an agent id, or a tag selector as in rollout targets (site=plant-a, hw=pi5,-id:pi-07)")
    r.add_argument("--parent", default=None, metavar="VERSION", help="the version to continue from")
    r.add_argument("--replay", type=int, default=DEFAULT_REPLAY_ROWS, metavar="ROWS",
                   help="rows of the parent's training data replayed while fine-tuning (default %(default)s; "
                        "all of them when it has fewer)")
    r.add_argument("--ewc", type=float, default=None, metavar="LAMBDA",
                   help="elastic weight consolidation strength (default off)")
    r.add_argument("--max-forgetting", type=float, default=DEFAULT_MAX_FORGETTING, metavar="POINTS",
                   help="the most the parent's test metric (accuracy or R²) may drop, as a fraction "
                        "(default %(default)s)")
    r.add_argument("--min-gain", type=float, default=0.0, metavar="POINTS",
                   help="the child must beat the parent on the new data by more than this (default %(default)s)")
    r.add_argument("--min-rows", type=int, default=MIN_RETRAIN_ROWS, metavar="N",
                   help="labelled rows needed at least (default %(default)s)")
    r.add_argument("--since", type=float, default=None, metavar="UNIX_TIME",
                   help="only batches whose requests ended at or after this time")
    r.add_argument("--include-unlabelled", action="store_true",
                   help="also train on rows without ground truth, labelled with the prediction the model served "
                        "(pseudo-labels; they teach the child the parent's mistakes)")
    r.add_argument("--epochs", type=int, default=None, help="maximum epochs (default 200; early stopping)")
    r.add_argument("--lr", type=float, default=None, help="learning rate")
    r.add_argument("--batch-size", type=int, default=None, help="mini-batch size")
    r.add_argument("--patience", type=int, default=None, help="epochs without a better validation loss")
    r.add_argument("--seed", type=int, default=None, help="random seed")
    r.add_argument("--no-quantize", action="store_true", help="skip int8 quantization (ship fp32)")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_retrain)
