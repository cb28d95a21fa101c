"""``edgeloop site``: a site broker per location, bridged to the central broker (docs/multi-site.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from edgeloop.hub.cli.common import Parents, UsageError, command
from edgeloop.hub.cli.render import emit

ENV_PASSWORD = "EDGELOOP_BRIDGE_PASSWORD"

DESCRIPTION = """\
Write the Mosquitto bridge configuration of one site: its agents connect to the site broker, and the
bridge carries the fleet's topics to and from the central broker the hub uses, at QoS 1, with a
persistent session -- reports are queued at the site while the uplink is down and delivered when it
returns. Put the file in /etc/mosquitto/conf.d/ on the site broker and restart Mosquitto.

example:
  edgeloop site bridge-config plant-a --central mqtts://hub.example.com:8883 --cafile ca.pem \\
      --username plant-a --password-file bridge.pass --out /etc/mosquitto/conf.d/edgeloop-bridge.conf
"""


def cmd_bridge_config(args) -> int:
    from edgeloop.hub.fleet.bridge import BridgeSpec, bridge_config

    password = None
    if args.password_file is not None:
        lines = args.password_file.read_text().splitlines()
        password = lines[0] if lines else ""
    elif os.environ.get(ENV_PASSWORD):
        password = os.environ[ENV_PASSWORD]
    if password is not None and args.username is None:
        raise UsageError("a bridge password needs --username (the bridge's user on the central broker)")
    spec = BridgeSpec(site=args.site, central=args.central, root=args.root, central_root=args.central_root,
                      username=args.username, password=password, cafile=args.cafile, certfile=args.certfile,
                      keyfile=args.keyfile, inference=args.inference, queue_limit=args.queue_limit,
                      mosquitto_central=not args.not_mosquitto, reconnect_max_s=args.reconnect_max)
    text = bridge_config(spec)
    lines = spec.topic_lines()
    doc: dict[str, object] = {"site": spec.site, "connection": spec.connection_name, "central": spec.central,
           "topics": lines, "out": str(args.out) if args.out else None,
           "notification_topic": f"{spec.central_root or spec.root}/sites/{spec.site}/bridge"}
    if args.out is None:
        if args.json:
            emit(args, {**doc, "config": text}, [])
        else:
            sys.stdout.write(text)
        return 0
    _write_private(args.out, text, secret=password is not None)
    emit(args, doc, [
        f"bridge of site {spec.site} written to {args.out}"
        + (" (0600: it holds the bridge password)" if password is not None else ""),
        f"  {len(lines)} topic patterns under {spec.root}/ cross to {spec.central}",
        f"  the bridge's state (1 up, 0 down) is retained on {doc['notification_topic']}",
        "next: restart the site's Mosquitto (systemctl restart mosquitto) and point its agents at it",
    ])
    return 0


def _write_private(path: Path, text: str, secret: bool) -> None:
    from edgeloop.agent.fsutil import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())
    os.chmod(path, 0o600 if secret else 0o644)


def add_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    s = command(sub, "site", "a broker per site, bridged to the central broker").add_subparsers(
        dest="site_command", required=True, metavar="SUBCOMMAND")
    x = command(s, "bridge-config", "write the Mosquitto bridge of one site to the central broker",
                description=DESCRIPTION, parents=(parents.js,))
    x.add_argument("site", help="the site's name (letters, digits, '_', '-', '.'), e.g. plant-a")
    x.add_argument("--central", required=True, metavar="URL",
                   help="the central broker: mqtt://HOST:1883 or mqtts://HOST:8883 (comma-separated: fail over)")
    x.add_argument("--root", default="edgeloop/v1", help="the fleet's topic root at the site (default %(default)s)")
    x.add_argument("--central-root", default=None, metavar="ROOT",
                   help="the same topics under another root on the central broker, e.g. plant-a/edgeloop/v1 "
                        "(an ACL per site); the hub then uses that root (default: the same root)")
    x.add_argument("--username", default=None, help="the bridge's user on the central broker")
    x.add_argument("--password-file", type=Path, default=None, metavar="FILE",
                   help=f"file whose first line is the bridge's password (default: ${ENV_PASSWORD})")
    x.add_argument("--cafile", type=Path, default=None, metavar="PEM", help="CA of the central broker (mqtts://)")
    x.add_argument("--certfile", type=Path, default=None, metavar="PEM", help="this site's client certificate")
    x.add_argument("--keyfile", type=Path, default=None, metavar="PEM", help="the key of --certfile")
    x.add_argument("--inference", action="store_true",
                   help="also bridge inference requests (in) and results (out); off: answered at the site only")
    x.add_argument("--queue-limit", type=int, default=100_000, metavar="N",
                   help="messages queued per client while it is away (default %(default)s)")
    x.add_argument("--reconnect-max", type=int, default=60, metavar="S",
                   help="while the uplink is down the bridge retries from 2 s, backing off up to S "
                        "(default %(default)s)")
    x.add_argument("--not-mosquitto", action="store_true",
                   help="the central broker is not Mosquitto (EMQX, HiveMQ, VerneMQ): turn off try_private")
    x.add_argument("--out", type=Path, default=None, metavar="FILE", help="write here (default: print it)")
    x.set_defaults(func=cmd_bridge_config)
