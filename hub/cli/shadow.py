"""``edgeloop shadow status|promote|stop``: a version running as shadow beside the live one
(deployed with ``edgeloop deploy VERSION --shadow``); thin over :class:`edgeloop.hub.services.shadow.HubShadow`."""

from __future__ import annotations

import argparse

from edgeloop.hub.cli.common import Parents, add_broker_options, command, open_hub
from edgeloop.hub.cli.fleet import _on_known_agents, _probation
from edgeloop.hub.cli.render import emit, text_table


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def status_lines(runs: list[dict], detail: bool = False) -> list[str]:
    """One row per shadow run; with ``detail`` the confusion (classification) or error distribution."""
    lines = text_table([[r["agent"], r["model"], r["version"], r["live_version"], r["requests"], _pct(r["agreement"]),
                         r["errors"], r["dropped"], f"{_ms(r['live_p50_ms'])}/{_ms(r['live_p99_ms'])}",
                         f"{_ms(r['shadow_p50_ms'])}/{_ms(r['shadow_p99_ms'])}",
                         "running" if r["running"] else "stopped"] for r in runs],
                       ["agent", "model", "shadow", "live", "requests", "agreement", "errors", "dropped",
                        "live p50/p99 ms", "shadow p50/p99 ms", "state"])
    if not detail:
        return lines
    for r in runs:
        lines.append("")
        lines.append(f"{r['agent']}: shadow {r['model']} {r['version']} vs live {r['live_version']}"
                     + (f" (last error: {r['last_error']})" if r["last_error"] else ""))
        if r["confusion"] is not None:
            labels = r["labels"]
            lines += ["  rows: live class, columns: shadow class"]
            table = [[lab, *row] for lab, row in zip(labels, r["confusion"], strict=True)]
            lines += ["  " + x for x in text_table(table, ["live \\ shadow", *labels])]
        elif r["error"]:
            lines.append("  shadow - live: " + ", ".join(f"{k} {v:g}" for k, v in r["error"].items()))
    return lines


def cmd_status(args) -> int:
    with open_hub(args) as hub:
        if args.agent:
            found = [hub.shadow_summary(a, args.model) for a in args.agent]
            runs = [r for r in found if r is not None]
        else:
            runs = hub.shadow_runs(model=args.model, limit=args.limit)
    emit(args, runs, status_lines(runs, args.detail) or ["(no shadow reports yet)"])
    return 0


def cmd_promote(args) -> int:
    probation = _probation(args)
    with open_hub(args) as hub:
        results = _on_known_agents(hub, args.broker, args.agent, lambda fleet: hub.promote_shadow(
            fleet, args.agent, args.ref, probation=probation, timeout=args.timeout))
    emit(args, results, [f"{r['agent']}: {'PROMOTED' if r['ok'] else 'FAILED'} [{r['code']}] {r['message']}"
                         for r in results])
    return 0 if all(r["ok"] for r in results) else 1


def cmd_stop(args) -> int:
    with open_hub(args) as hub:
        results = _on_known_agents(hub, args.broker, args.agent, lambda fleet: hub.stop_shadow(
            fleet, args.agent, timeout=args.timeout))
    emit(args, results, [f"{r['agent']}: {'OK' if r['ok'] else 'FAILED'} [{r['code']}] {r['message']}"
                         for r in results])
    return 0 if all(r["ok"] for r in results) else 1


def add_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = command(sub, "shadow", "a version running as shadow beside the live one: status, promote, stop",
                description="Shadow mode: `edgeloop deploy VERSION --shadow` installs a version beside the live one; "
                            "each agent runs it on the same requests without answering with it and reports "
                            "agreement, confusion (or error distribution), latency of each and errors.")
    ss = p.add_subparsers(dest="shadow_command", required=True, metavar="ACTION")
    x = command(ss, "status", "the comparison each agent reported last", parents=parents.hub)
    x.add_argument("--agent", action="append", default=None, help="agent id (repeat for several; default: all)")
    x.add_argument("--model", default=None, help="only this model")
    x.add_argument("--limit", type=int, default=50, help="runs listed without --agent (default %(default)s)")
    x.add_argument("--detail", action="store_true", help="also the confusion matrix or the error distribution")
    x.set_defaults(func=cmd_status)
    x = command(ss, "promote", "make the shadow the live version, from the agent's store (no second transfer)",
                parents=parents.hub)
    x.add_argument("ref", nargs="?", default=None,
                   help="the shadow's model:version or bundle sha256 prefix (default: the one each agent reported)")
    x.add_argument("--agent", action="append", required=True, help="agent id (repeat for several)")
    add_broker_options(x)
    x.add_argument("--timeout", type=float, default=60.0, help="seconds to wait per agent")
    x.add_argument("--probation", type=float, default=None, metavar="SECONDS",
                   help="dead-man switch: revert on its own unless the promoted version is confirmed within SECONDS")
    x.add_argument("--min-requests", type=int, default=0, metavar="N",
                   help="with --probation: it must serve N real requests without failing in time")
    x.add_argument("--require-confirm", action="store_true",
                   help="with --probation: the agent also waits for `edgeloop confirm` before the deadline")
    x.set_defaults(func=cmd_promote)
    x = command(ss, "stop", "end the shadow (final report; the bundle stays in the agent's store)",
                parents=parents.hub)
    x.add_argument("--agent", action="append", required=True, help="agent id (repeat for several)")
    add_broker_options(x)
    x.add_argument("--timeout", type=float, default=30.0, help="seconds to wait per agent")
    x.set_defaults(func=cmd_stop)
