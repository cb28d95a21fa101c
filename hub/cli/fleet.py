"""``edgeloop fleet``, ``drift``, ``deploy``, ``rollback`` and ``discover``: the agents, what
they report, and getting bundles onto them."""

from __future__ import annotations

import argparse

from edgeloop.hub.cli.common import Parents, command, open_hub
from edgeloop.hub.cli.render import emit, show, table_lines, text_table
from edgeloop.hub.views import drift_lines, fleet_table


def cmd_fleet(args) -> int:
    return show(args, lambda hub: hub.list_agents(), lambda agents: table_lines(fleet_table(agents)))


def cmd_drift(args) -> int:
    return show(args, lambda hub: hub.drift_summary(args.agent), drift_lines)


def cmd_deploy(args) -> int:
    with open_hub(args) as hub:
        results = hub.deploy(args.broker, args.agent, args.ref, override_reason=args.override_gate,
                             timeout=args.timeout)
    lines = [f"{r['agent']}: {'OK' if r['ok'] else 'FAILED'} [{r['code']}] {r['message']}" for r in results]
    if results and results[0]["gate"]["overridden"]:
        lines.insert(0, f"evaluation gate of {results[0]['version']} OVERRIDDEN: {args.override_gate}")
    emit(args, results, lines)
    return 0 if all(r["ok"] for r in results) else 1


def cmd_rollback(args) -> int:
    with open_hub(args) as hub:
        results = hub.rollback(args.broker, args.agent, args.to, reason=args.reason or "", timeout=args.timeout)
    emit(args, results, [f"{r['agent']}: {'OK' if r['ok'] else 'REFUSED/FAILED'} [{r['code']}] {r['message']}"
                         for r in results])
    return 0 if all(r["ok"] for r in results) else 1


def cmd_discover(args) -> int:
    from edgeloop.hub.services import Hub

    found = Hub.discover(timeout=args.timeout)
    emit(args, found, text_table([[a["agent_id"], ",".join(a["addresses"]), a["http_port"] or "-", a["broker"],
                                   a["version"]] for a in found], ["agent", "addresses", "http", "broker", "version"]))
    return 0


def add_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    """fleet, drift, deploy and rollback (discover comes later in the command list)."""
    hub_opts = parents.hub
    f = command(sub, "fleet", "agents, their status and what they serve (as last reported to the registry)",
                parents=hub_opts)
    f.set_defaults(func=cmd_fleet)
    f = command(sub, "drift", "drift windows and flagged features per agent and model", parents=hub_opts)
    f.add_argument("--agent", default=None, help="only this agent")
    f.set_defaults(func=cmd_drift)

    x = command(sub, "deploy", "push a version's signed bundle to agents over MQTT", parents=hub_opts,
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
    x = command(sub, "rollback", "send a signed rollback to a bundle the agents hold", parents=hub_opts)
    x.add_argument("--to", required=True, help="model:version, model@alias or bundle sha256 prefix to return to")
    x.add_argument("--reason", default="", help="recorded in the audit log")
    x.add_argument("--agent", action="append", required=True, help="agent id (repeat for several)")
    x.add_argument("--broker", required=True, help="mqtt://host:port the agents are connected to")
    x.add_argument("--timeout", type=float, default=120.0, help="seconds to wait per agent")
    x.set_defaults(func=cmd_rollback)


def add_discover_command(sub: argparse._SubParsersAction, parents: Parents) -> None:
    x = command(sub, "discover", "list agents announcing themselves with zeroconf", parents=[parents.js])
    x.add_argument("--timeout", type=float, default=3.0, help="seconds to listen (default %(default)s)")
    x.set_defaults(func=cmd_discover)
