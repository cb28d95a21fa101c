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
    return subprocess.call(cmd)


def add_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    x = command(sub, "app", "open the operator GUI (PySide6)", parents=[parents.common])
    x.set_defaults(func=cmd_app)
