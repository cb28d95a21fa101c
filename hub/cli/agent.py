"""``edgeloop agent``: the edge agent's own commands (the same parsers as ``edgeloop-agent``), and the
hub's commands about agents: ``enroll`` (config, key pair, pinned key and broker account in one
step), ``keys pin|forget|list`` (their report keys) and ``tag`` (their tags, changed on the hub)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeloop.hub.cli.common import Parents, add_broker_options, command, make_parents, open_hub
from edgeloop.hub.cli.render import emit, text_table


def cmd_agent(args) -> int:
    from edgeloop.agent.cli import run_parsed

    return run_parsed(args)


def cmd_enroll(args) -> int:
    from edgeloop.hub.services.enrollment import parse_tags

    tags = parse_tags(args.tag or [])
    with open_hub(args) as hub:
        doc = hub.enroll_agent(args.agent_id, args.out, broker=args.broker, tags=tags,
                               broker_config=args.broker_config, http_port=args.http_port,
                               state_dir=args.state_dir, replace=args.replace)
    lines = [f"enrolled {doc['agent_id']}: report key {doc['keyid']} pinned"
             + (f", broker account {doc['broker_user']!r} added" if doc["broker_account"] else ""),
             f"wrote {doc['out']}: {', '.join(doc['files'])}",
             *([f"tags: {_tags_text(doc['tags'])}"] if doc["tags"] else []),
             "next:", *(f"  {n}. {step}" for n, step in enumerate(doc["next_steps"], 1))]
    emit(args, doc, lines)
    return 0


def cmd_keys_pin(args) -> int:
    with open_hub(args) as hub:
        doc = hub.pin_agent_key(args.agent_id, args.pubkey, replace=args.replace)
    emit(args, doc, [f"pinned report key {doc['keyid']} for {doc['agent_id']}: its reports must be signed with it"])
    return 0


def cmd_keys_forget(args) -> int:
    with open_hub(args) as hub:
        gone = hub.forget_agent_key(args.agent_id)
    emit(args, {"agent_id": args.agent_id, "forgotten": gone},
         [f"forgot the report key of {args.agent_id}: its next signed state pins a new one" if gone else
          f"no report key pinned for {args.agent_id}; nothing to forget"])
    return 0


def cmd_keys_list(args) -> int:
    from edgeloop.hub.views import when

    with open_hub(args) as hub:
        rows = hub.list_agent_keys()
    emit(args, rows, text_table([[r["agent_id"], r["keyid"], r["source"], when(r["pinned_at"]), r["actor"]]
                                 for r in rows], ["agent", "key", "source", "pinned", "by"])
         if rows else ["(no report keys pinned yet)"])
    return 0


def cmd_tag(args) -> int:
    from edgeloop.hub.services.enrollment import parse_tags

    tags = parse_tags(args.tags or [], "tag")
    if args.hub_only:
        args.broker_options = False  # no broker: the change stays in this hub's registry
        with open_hub(args) as hub:
            doc = hub.set_agent_tags(args.agent_id, tags, args.remove or [])
        emit(args, doc, [f"{doc['agent_id']}: {_tags_text(doc['tags']) or '(no tags)'} (on this hub only)"])
        return 0
    with open_hub(args) as hub, hub.fleet(args.broker) as fleet:
        doc = hub.send_agent_tags(fleet, args.agent_id, tags, args.remove or [], timeout=args.timeout)
    emit(args, doc, [f"{doc['agent_id']}: {'OK' if doc['ok'] else 'FAILED'} [{doc['code']}] "
                     f"{_tags_text(doc['tags']) or '(no tags)'}" + ("" if doc["ok"] else f": {doc['message']}")])
    return 0 if doc["ok"] else 1


def _tags_text(tags: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items()))


def add_hub_agent_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    """enroll, keys pin|forget|list and tag: hub commands (``--home``), not the device's."""
    hub_opts = parents.hub
    x = command(sub, "enroll", "enroll an agent: its config, key pair (pinned now) and broker account in one step",
                parents=hub_opts,
                description="Write the folder an agent runs from: agent.toml (id, broker, credentials, trusted "
                            "keys, tags), the hub's public key, and the agent's own Ed25519 key pair, generated "
                            "here and pinned in the registry at once (its reports are checked against it from "
                            "its first message). With --broker-config (a make-broker-config.sh folder) the agent's "
                            "broker account is added too. Copy the folder to the device and run the agent.")
    x.add_argument("agent_id", metavar="AGENT_ID", help="agent id (letters, digits, _ - .; the broker user name)")
    x.add_argument("--broker", required=True, metavar="URL",
                   help="the broker as the device reaches it: mqtt://host[:port] or mqtts://host[:port]")
    x.add_argument("--tag", action="append", metavar="NAME=VALUE", help="a tag (repeat): site=plant-a")
    x.add_argument("--broker-config", type=Path, default=None, metavar="DIR",
                   help="folder written by packaging/mosquitto/make-broker-config.sh: add the agent's account "
                        "(password generated and hashed into DIR/passwd) and take the broker's CA from it")
    x.add_argument("--http-port", type=int, default=8080, help="the agent's HTTP port (default %(default)s)")
    x.add_argument("--state-dir", default="state", metavar="PATH",
                   help="where the agent keeps bundles and state; relative to the folder (default %(default)s)")
    x.add_argument("--replace", action="store_true",
                   help="enroll an id again (a reinstalled device): pin the new key, refuse the old one's reports")
    x.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write (not one holding a key)")
    x.set_defaults(func=cmd_enroll, wrap=None)

    k = command(sub, "keys", "the agents' report keys pinned on this hub").add_subparsers(
        dest="agent_keys_command", required=True, metavar="SUBCOMMAND")
    x = command(k, "pin", "pin an agent's report key (its agent_key.pub.pem)", parents=hub_opts)
    x.add_argument("agent_id", metavar="AGENT_ID")
    x.add_argument("pubkey", type=Path, metavar="PUBKEY.pem", help="the agent's public key (agent_key.pub.pem)")
    x.add_argument("--replace", action="store_true", help="replace a key pinned before (a reinstalled device)")
    x.set_defaults(func=cmd_keys_pin, wrap=None)
    x = command(k, "forget", "unpin an agent's report key (its next signed state pins one again)", parents=hub_opts)
    x.add_argument("agent_id", metavar="AGENT_ID")
    x.set_defaults(func=cmd_keys_forget, wrap=None)
    x = command(k, "list", "the pinned report keys", parents=hub_opts)
    x.set_defaults(func=cmd_keys_list, wrap=None)

    x = command(sub, "tag", "set or remove an agent's tags (a signed command to the agent)", parents=hub_opts,
                description="Set or remove tags of an agent this hub lists: a signed set_tags command; the agent "
                            "saves them (they replace its config's [tags], also after restarts) and announces them "
                            "in its state. With --hub-only, no broker: the change is kept in this hub's registry "
                            "and overrides what the agent reports (shown by `edgeloop fleet`, used by rollout "
                            "targets).")
    x.add_argument("agent_id", metavar="AGENT_ID")
    x.add_argument("tags", nargs="*", metavar="NAME=VALUE", help="tags to set")
    x.add_argument("--remove", action="append", metavar="NAME", help="a tag to remove (repeat)")
    x.add_argument("--hub-only", action="store_true", help="change them in this hub's registry only (no broker)")
    add_broker_options(x)
    x.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the agent (default %(default)s)")
    x.set_defaults(func=cmd_tag, wrap=None)


def add_commands(sub: argparse._SubParsersAction) -> None:
    from edgeloop.agent.cli import add_agent_commands

    a = sub.add_parser("agent", help="run, provision or enroll an edge agent",
                       description="Run or provision an edge agent (same as edgeloop-agent), or, on the hub, "
                                   "enroll one and manage its report key and tags.")
    subs = a.add_subparsers(dest="agent_command", required=True, metavar="SUBCOMMAND")
    add_agent_commands(subs)
    add_hub_agent_commands(subs, make_parents())
    a.set_defaults(wrap=cmd_agent)
