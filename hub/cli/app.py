"""``edgeloop app``: the operator GUI, started as its own process (hub never imports app)."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys

from edgeloop.hub.cli.common import Parents, command


def cmd_app(args) -> int:
    """Start the GUI as its own process: hub never imports app (app -> hub -> agent)."""
    if importlib.util.find_spec("PySide6") is None or importlib.util.find_spec("edgeloop.app") is None:
        print("error: the GUI needs the app extras: pip install 'edgeloop[app]'", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "edgeloop.app"] + (["--home", str(args.home)] if args.home else [])
    if args.broker:  # the GUI runs the hub runtime in-process on this broker (else [fleet] broker in hub.toml)
        cmd += ["--broker", args.broker]
    return subprocess.call(cmd)


def add_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    x = command(sub, "app", "open the operator GUI (PySide6)", parents=[parents.common],
                description="Open the operator GUI. With --broker (or [fleet] broker in the hub's hub.toml) the "
                            "window runs the hub runtime in-process, so the fleet view is live.")
    x.add_argument("--broker", default=None, metavar="URL",
                   help="MQTT broker of the fleet, e.g. mqtt://localhost:1883 (credentials: see `edgeloop hub serve "
                        "--help`)")
    x.set_defaults(func=cmd_app)
