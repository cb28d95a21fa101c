"""``edgeloop fleet``, ``drift``, ``deploy``, ``confirm``, ``rollback`` and ``discover``: the agents,
what they report, and getting bundles onto them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgeloop.agent.errors import MessageFormatError
from edgeloop.agent.wire.commands import Probation
from edgeloop.hub.cli.common import Parents, UsageError, add_broker_options, command, open_hub
from edgeloop.hub.cli.render import emit, table_lines, text_table
from edgeloop.hub.views import drift_overview_lines, fleet_table, freshness_line

if TYPE_CHECKING:
    from edgeloop.agent.connection import BrokerSettings
    from edgeloop.hub.fleet import Fleet
    from edgeloop.hub.services import Hub


def _fresh_read(args, fetch: Callable[[Hub], Any], lines: Callable[[Any], list[str]], none: str) -> int:
    """A fleet read: the records, under a line saying how fresh they are (on stderr with --json)."""
    with open_hub(args) as hub:
        data = fetch(hub)
        fresh = freshness_line(hub.listening())
    if args.json:
        print(fresh, file=sys.stderr)
        emit(args, data, [])
    else:
        print("\n".join([fresh, *(lines(data) or [none])]))
    return 0


def cmd_fleet(args) -> int:
    return _fresh_read(args, lambda hub: hub.list_agents(include_foreign=args.all),
                       lambda agents: table_lines(fleet_table(agents, membership=args.all)), "(no agents yet)")


def cmd_drift(args) -> int:
    return _fresh_read(args, lambda hub: hub.drift_overview(args.agent, args.model),
                       lambda overview: drift_overview_lines(overview, detail=args.detail), "(no drift reports yet)")


def _on_known_agents(hub: Hub, broker: BrokerSettings, agent_ids: list[str], act: Callable[[Fleet], list[dict]],
                     ) -> list[dict]:
    """``act(fleet)`` on a fleet connected to ``broker``, once every agent id is known to be in
    this hub's fleet: listed by the registry, or -- given half a second after connecting --
    named by a retained state that lists this hub's key. A typo fails in under a second,
    naming the known ids, instead of waiting for an answer that cannot come."""
    with hub.fleet(broker) as fleet:
        hub.require_agents(agent_ids, fleet)
        return act(fleet)


def _probation(args) -> Probation | None:
    """--probation SECONDS [--min-requests N] [--require-confirm] as the deploy's probation (or None)."""
    if args.probation is None:
        if args.min_requests or args.require_confirm:
            raise UsageError("--min-requests and --require-confirm need --probation SECONDS (the deadline)")
        return None
    try:
        return Probation(args.probation, args.min_requests, args.require_confirm)
    except MessageFormatError as exc:
        raise UsageError(f"{exc}: give --probation a number of seconds above 0") from exc


def cmd_deploy(args) -> int:
    probation = _probation(args)
    if args.shadow and probation is not None:
        raise UsageError("--shadow installs without activating: give --probation to `edgeloop shadow promote`")
    with open_hub(args) as hub:
        if not args.override_gate:  # a version below its gate is refused before anything connects
            hub.check_deployable(hub.version_of(args.ref)["id"])
        results = _on_known_agents(hub, args.broker, args.agent, lambda fleet: hub.deploy(
            fleet, args.agent, args.ref, override_reason=args.override_gate, timeout=args.timeout,
            probation=probation, shadow=args.shadow, shadow_report_seconds=args.shadow_report_seconds,
            memory_limit_mb=args.memory_limit_mb))
    lines = [f"{r['agent']}: {'OK' if r['ok'] else 'FAILED'} [{r['code']}] {r['message']}" for r in results]
    if results and results[0]["gate"]["overridden"]:
        lines.insert(0, f"evaluation gate of {results[0]['version']} OVERRIDDEN: {args.override_gate}")
    emit(args, results, lines)
    return 0 if all(r["ok"] for r in results) else 1


def cmd_confirm(args) -> int:
    with open_hub(args) as hub:
        results = _on_known_agents(hub, args.broker, args.agent, lambda fleet: hub.confirm(
            fleet, args.agent, args.ref, timeout=args.timeout))
    emit(args, results, [f"{r['agent']}: {'CONFIRMED' if r['ok'] else 'NOT CONFIRMED'} [{r['code']}] {r['message']}"
                         for r in results])
    return 0 if all(r["ok"] for r in results) else 1


def cmd_rollback(args) -> int:
    with open_hub(args) as hub:
        results = _on_known_agents(hub, args.broker, args.agent, lambda fleet: hub.rollback(
            fleet, args.agent, args.to, reason=args.reason or "", timeout=args.timeout))
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
    """fleet, drift, deploy, confirm and rollback (discover comes later in the command list)."""
    hub_opts = parents.hub
    f = command(sub, "fleet", "agents, their status and what they serve (as last reported to the registry)",
                parents=hub_opts,
                description="The agents of this hub's fleet -- those whose state lists this hub's key -- with "
                            "their status and what they serve, as last reported to the registry, under a line "
                            "saying how fresh that is (whether `edgeloop hub serve` is listening).")
    f.add_argument("--all", action="store_true",
                   help="also list agents on the broker that do not trust this hub's key (other hubs' fleets)")
    f.set_defaults(func=cmd_fleet)
    f = command(sub, "drift", "drift per model and agent: drifted features, worst statistic, trend", parents=hub_opts,
                description="The drift the agents judged on their devices, per model and agent (the version it "
                            "reported last): features reported drifted (flagged in enough windows in a row) and "
                            "flagged in the last window, grouped by channel for window inputs, the worst "
                            "statistic, the trend over the last windows, and the false-alarm controls used.")
    f.add_argument("--agent", default=None, help="only this agent")
    f.add_argument("--model", default=None, help="only this model")
    f.add_argument("--detail", action="store_true", help="also a line per feature (PSI, KS, p-value, streak)")
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
    add_broker_options(x)
    x.add_argument("--timeout", type=float, default=120.0, help="seconds to wait per agent")
    x.add_argument("--probation", type=float, default=None, metavar="SECONDS",
                   help="dead-man switch: each agent keeps the previous version ready and reverts to it on its own "
                        "unless the new one is confirmed within SECONDS (see --min-requests, --require-confirm)")
    x.add_argument("--min-requests", type=int, default=0, metavar="N",
                   help="with --probation: the new version must serve N real requests without failing in time")
    x.add_argument("--require-confirm", action="store_true",
                   help="with --probation: the agent also waits for `edgeloop confirm` before the deadline")
    x.add_argument("--shadow", action="store_true",
                   help="install beside the live version without activating it: the agents run it on the same "
                        "requests and report agreement (see `edgeloop shadow status|promote|stop`)")
    x.add_argument("--shadow-report-seconds", type=float, default=None, metavar="S",
                   help="with --shadow: how often each agent reports the comparison (default 10)")
    x.add_argument("--memory-limit-mb", type=int, default=None, metavar="MIB",
                   help="each agent's pre-flight refuses the bundle before activating it when its model needs more "
                        "memory there (see `edgeloop preflight`)")
    x.set_defaults(func=cmd_deploy)
    x = command(sub, "confirm", "confirm a version deployed with --probation, so the agents keep it",
                parents=hub_opts,
                description="Send each agent a signed confirm of the version it runs on probation (deployed with "
                            "--probation --require-confirm): it keeps that version instead of reverting to the "
                            "previous one at the deadline. An agent that already reverted answers not_on_probation.")
    x.add_argument("ref", help="model:version, model@alias or bundle sha256 prefix (the version on probation)")
    x.add_argument("--agent", action="append", required=True, help="agent id (repeat for several)")
    add_broker_options(x)
    x.add_argument("--timeout", type=float, default=30.0, help="seconds to wait per agent")
    x.set_defaults(func=cmd_confirm)
    x = command(sub, "rollback", "send a signed rollback to a bundle the agents hold", parents=hub_opts)
    x.add_argument("--to", required=True, help="model:version, model@alias or bundle sha256 prefix to return to")
    x.add_argument("--reason", default="", help="recorded in the audit log")
    x.add_argument("--agent", action="append", required=True, help="agent id (repeat for several)")
    add_broker_options(x)
    x.add_argument("--timeout", type=float, default=120.0, help="seconds to wait per agent")
    x.set_defaults(func=cmd_rollback)


def add_discover_command(sub: argparse._SubParsersAction, parents: Parents) -> None:
    x = command(sub, "discover", "list agents announcing themselves with zeroconf", parents=[parents.js])
    x.add_argument("--timeout", type=float, default=3.0, help="seconds to listen (default %(default)s)")
    x.set_defaults(func=cmd_discover)
