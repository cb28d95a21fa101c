"""``edgeloop agent``: the edge agent's own commands (the same parsers as ``edgeloop-agent``)."""

from __future__ import annotations

import argparse


def cmd_agent(args) -> int:
    from edgeloop.agent.cli import run_parsed

    return run_parsed(args)


def add_commands(sub: argparse._SubParsersAction) -> None:
    from edgeloop.agent.cli import add_agent_commands

    a = sub.add_parser("agent", help="run or provision an edge agent (same as edgeloop-agent)",
                       description="Run or provision an edge agent (same as edgeloop-agent).")
    add_agent_commands(a.add_subparsers(dest="agent_command", required=True, metavar="SUBCOMMAND"))
    a.set_defaults(wrap=cmd_agent)
