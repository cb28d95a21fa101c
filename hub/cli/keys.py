"""``edgeloop keys show``: the hub signing key's id and files, or its public PEM."""

from __future__ import annotations

import argparse
import sys

from edgeloop.hub.cli.common import Parents, command, open_hub
from edgeloop.hub.cli.render import emit


def cmd_keys_show(args) -> int:
    with open_hub(args) as hub:
        if args.public:
            sys.stdout.write(hub.key.public_pem().decode())
            return 0
        doc = hub.key_info()
    emit(args, doc, [f"hub key {doc['key_id']}", f"  private {doc['private']} (0600, never leaves this machine)",
                     f"  public  {doc['public']} (copy to agents: trusted_keys)"])
    return 0


def add_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    k = command(sub, "keys", "the hub signing key").add_subparsers(dest="keys_command", required=True,
                                                                   metavar="SUBCOMMAND")
    x = command(k, "show", "show the key id and files (creates the key on first use)", parents=parents.hub)
    x.add_argument("--public", action="store_true", help="print the public key PEM (to provision agents)")
    x.set_defaults(func=cmd_keys_show)
