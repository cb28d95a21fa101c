"""``edgeloop capture list|show|on|off|upload|purge``: field data captured by agents (opt-in; see
docs/operator-guide.md, "Capturing field data")."""

from __future__ import annotations

import argparse
import time

from edgeloop.hub.cli.common import Parents, UsageError, add_broker_options, command, open_hub
from edgeloop.hub.cli.render import emit, text_table


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def cmd_list(args) -> int:
    with open_hub(args) as hub:
        rows = hub.list_captures(args.agent, args.model)
    emit(args, rows, text_table([[r["batch_id"][:12], r["agent_id"], f"{r['model']}:{r['version']}", r["rows"],
                                  r["labelled_rows"], r["seen_rows"], _when(r["first_at"]), _when(r["last_at"]),
                                  r["dataset_id"] or "-"] for r in rows],
                                ["batch", "agent", "model", "rows", "labelled", "served", "first request",
                                 "last request", "dataset"]))
    return 0


def cmd_show(args) -> int:
    with open_hub(args) as hub:
        d = hub.capture_detail(args.batch)
    c = d["capture"]
    lines = [f"batch {c['batch_id']} from agent {c['agent_id']}",
             f"model {c['model']} version {c['version']} (bundle {(c['bundle_sha256'] or '-')[:16]})",
             f"requests {_when(c['first_at'])} .. {_when(c['last_at'])}",
             f"rows {c['rows']} ({c['labelled_rows']} labelled) sampled from {c['seen_rows']} served",
             f"file {c['path']} ({c['size']} bytes, sha256 {c['sha256'][:16]}...)",
             f"dataset {c['dataset_id'] or '-'}" + (f" ({d['dataset']['name']})" if d["dataset"] else ""),
             *([f"note: {c['note']}"] if c.get("note") else []),
             "columns: " + ", ".join(d["columns"]), *d["head"]]
    emit(args, d, lines)
    return 0


def _send(args, **kw) -> int:
    with open_hub(args) as hub:
        results = hub.set_capture(args.broker, args.agent, timeout=args.timeout, **kw)
    emit(args, results, [f"{r['agent']}: {'OK' if r['ok'] else 'FAILED'} [{r['code']}] {r['message']}"
                         for r in results])
    return 0 if all(r["ok"] for r in results) else 1


def cmd_on(args) -> int:
    settings = {k: getattr(args, k) for k in ("max_rows", "max_bytes", "upload_rows") if getattr(args, k) is not None}
    return _send(args, enable=True, **settings)


def cmd_off(args) -> int:
    return _send(args, enable=False)


def cmd_upload(args) -> int:
    return _send(args, upload=True)


def cmd_purge(args) -> int:
    if args.batch is None and args.agent is None and not args.all:
        raise UsageError("edgeloop capture purge needs a batch id, --agent ID or --all")
    with open_hub(args) as hub:
        removed = hub.purge_captures(batch_id=args.batch, agent_id=args.agent)
    emit(args, removed, [f"purged {r['batch_id']} of {r['agent_id']} ({r['rows']} rows)" for r in removed])
    return 0


def add_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    c = command(sub, "capture", "field data captured by agents (opt-in): list, show, turn on/off, upload, purge",
                description="Batches of served rows (inputs, the model's output, labels sent later) that agents "
                            "with capture on uploaded. Capture is off unless an agent's [capture] or a signed "
                            "command turns it on; see docs/operator-guide.md, 'Capturing field data'.")
    s = c.add_subparsers(dest="capture_command", required=True, metavar="ACTION")
    x = command(s, "list", "captured batches, newest first", parents=parents.hub)
    x.add_argument("--agent", default=None, help="only this agent")
    x.add_argument("--model", default=None, help="only this model")
    x.set_defaults(func=cmd_list)
    x = command(s, "show", "one batch: lineage, counts, dataset, first rows", parents=parents.hub)
    x.add_argument("batch", help="batch id (or a unique prefix of 6+ hex digits)")
    x.set_defaults(func=cmd_show)
    x = command(s, "on", "turn capture on (signed command)", parents=parents.hub)
    x.add_argument("--max-rows", dest="max_rows", type=int, default=None, help="rows one sample keeps at most")
    x.add_argument("--max-bytes", dest="max_bytes", type=int, default=None, help="bytes one sample keeps at most")
    x.add_argument("--upload-rows", dest="upload_rows", type=int, default=None, help="rows served per batch")
    x.set_defaults(func=cmd_on)
    x2 = command(s, "off", "turn capture off (signed command)", parents=parents.hub)
    x2.set_defaults(func=cmd_off)
    x3 = command(s, "upload", "cut the agents' samples now and upload them (signed command)", parents=parents.hub)
    x3.set_defaults(func=cmd_upload)
    for p in (x, x2, x3):
        p.add_argument("--agent", action="append", required=True, help="agent id (repeat for several)")
        add_broker_options(p)
        p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait per agent")
    x = command(s, "purge", "delete captured batches (the hub's copies and records)", parents=parents.hub)
    x.add_argument("batch", nargs="?", default=None, help="one batch id")
    x.add_argument("--agent", default=None, help="every batch of this agent")
    x.add_argument("--all", action="store_true", help="every batch")
    x.set_defaults(func=cmd_purge)
