"""Console-script launchers for the parts that need more than the agent extra.

``edgeloop`` needs the hub extra (torch, onnx, sqlite-utils...) and ``edgeloop-app`` the
app extra (PySide6). In an agent-only install these launchers print which extra to
install and exit 2, instead of a traceback. ``edgeloop-agent`` needs neither and starts
:mod:`edgeloop.agent.cli` directly.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

# the third-party modules each extra brings (the top-level import names)
HUB_MODULES = frozenset({"torch", "onnx", "onnxscript", "sqlite_utils", "amqtt", "platformdirs", "sympy",
                         "onnxruntime", "zeroconf"})
APP_MODULES = frozenset({"PySide6", "shiboken6"})


def _missing_extra(exc: ModuleNotFoundError, command: str) -> int:
    name = (exc.name or "").split(".")[0]
    extra = "app" if name in APP_MODULES else "hub"
    print(f"{command}: this install lacks {name!r}, which the {extra!r} extra provides.\n"
          f"Install it with:  pip install 'edgeloop[{extra}]'\n"
          "(a device only needs the agent: `edgeloop-agent --help`)", file=sys.stderr)
    return 2


def _run(loader: Callable[[], Callable[[], int]], command: str, known: frozenset[str]) -> int:
    try:
        return loader()()
    except ModuleNotFoundError as exc:  # also raised by a command's late import (training needs torch)
        if (exc.name or "").split(".")[0] in known:
            return _missing_extra(exc, command)
        raise


def _hub_cli() -> Callable[[], int]:
    from edgeloop.hub.cli import main

    return main


def _app_cli() -> Callable[[], int]:
    from edgeloop.app.__main__ import main

    return main


def hub_main() -> int:
    """``edgeloop``: the workstation CLI."""
    return _run(_hub_cli, "edgeloop", HUB_MODULES | APP_MODULES)


def app_main() -> int:
    """``edgeloop-app``: the operator GUI."""
    return _run(_app_cli, "edgeloop-app", HUB_MODULES | APP_MODULES)
