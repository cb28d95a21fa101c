"""``edgeloop preflight [VERSION] [--agent ID]``: what each device's pre-flight measured of a deployed version's
models and which one it serves; thin over :meth:`edgeloop.hub.services.Hub.preflight_results`."""

from __future__ import annotations

import argparse

from edgeloop.hub.cli.common import Parents, command, open_hub
from edgeloop.hub.cli.render import emit, text_table


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def preflight_lines(rows: list[dict], detail: bool = False) -> list[str]:
    """One row per agent and bundle; with ``detail`` the figures of every model and the reason."""
    table = []
    for r in rows:
        figs = {f["name"]: f for f in r["report"].get("figures", [])}
        served = figs.get(r["pick"] or "", {})
        table.append([r["agent_id"], f"{r['model']}:{r['version']}", r["pick"] or "REFUSED", r["hub_pick"],
                      r["code"], _num(served.get("p50_ms")), _num(served.get("p99_ms")),
                      _num(served.get("model_mb"), ".1f"),
                      "-" if r["memory_limit_mb"] is None else r["memory_limit_mb"]])
    lines = text_table(table, ["agent", "version", "device pick", "hub pick", "code", "p50 ms", "p99 ms", "MiB",
                               "limit MiB"])
    if detail:
        for r in rows:
            lines += ["", f"{r['agent_id']} {r['model']}:{r['version']} (bundle {r['bundle_sha256'][:12]}): "
                          f"{r['reason']}"]
            drops = r["report"].get("drops") or {}
            lines += ["  " + x for x in text_table(
                [[f["name"], "yes" if f["loaded"] else "NO", _num(f.get("p50_ms")), _num(f.get("p99_ms")),
                  _num(f.get("load_ms"), ".1f"), _num(f.get("model_mb"), ".1f"), _num(drops.get(f["name"]), ".2f"),
                  ",".join(f.get("unsupported_ops") or []) or "-", (f.get("error") or "")[:80]]
                 for f in r["report"].get("figures", [])],
                ["model", "loads", "p50 ms", "p99 ms", "load ms", "MiB", "drop", "unsupported ops", "error"])]
    return lines


def cmd_preflight(args) -> int:
    with open_hub(args) as hub:
        rows = hub.preflight_results(args.ref, agent=args.agent, latest=not args.all)
    emit(args, rows, preflight_lines(rows, args.detail) or ["(no pre-flight reports yet)"])
    return 0


def add_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    x = command(sub, "preflight", "each device's pre-flight: its fp32/int8 pick and the figures it measured",
                description="Before activating a deployed bundle, each agent measures its models on its own hardware "
                            "(load, unsupported operators, p50/p99 latency at batch 1, memory) and serves the fastest "
                            "within the accuracy budget the hub recorded; a model that cannot load or needs more than "
                            "the deploy's --memory-limit-mb is refused. Lists those reports, newest first.",
                parents=parents.hub)
    x.add_argument("ref", nargs="?", default=None, help="only this version (model:n, model, model@alias)")
    x.add_argument("--agent", default=None, help="only this agent")
    x.add_argument("--all", action="store_true", help="every report, not only the newest per agent and bundle")
    x.add_argument("--detail", action="store_true", help="also every model's figures and the reason")
    x.set_defaults(func=cmd_preflight)
