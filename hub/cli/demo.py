"""``edgeloop demo``: the whole loop end to end on embedded defaults (see :mod:`edgeloop.hub.demo`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeloop.hub.cli.common import Parents, command


def cmd_demo(args) -> int:
    from edgeloop.hub.demo import DemoOptions, run_demo
    from edgeloop.hub.home import default_home

    opts = DemoOptions(home=Path(args.home) if args.home else default_home(), broker=args.broker,
                       epochs=args.epochs, json=args.json)
    result = run_demo(opts)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


def add_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    d = command(sub, "demo", "run the whole loop end to end on embedded defaults", parents=parents.hub,
                description="Train, export, quantize, sign, deploy to two local agent processes over "
                            "MQTT, serve over MQTT and HTTP, detect drift, roll back -- and print a summary. "
                            "State stays in the registry for `edgeloop registry list`, `fleet`, `drift`.")
    d.add_argument("--broker", default=None,
                   help="mqtt://host:port of an existing broker, or 'mosquitto' to start a private one "
                        "(default: an embedded amqtt broker on a free port)")
    d.add_argument("--epochs", type=int, default=40,
                   help="training epochs of the first version (default %(default)s)")
    d.set_defaults(func=cmd_demo)
