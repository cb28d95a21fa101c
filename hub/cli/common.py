"""What the command modules share: the usage error, the parent parsers of hub commands,
declaring a subcommand, and opening the hub."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeloop.agent.errors import EdgeloopError

if TYPE_CHECKING:
    from edgeloop.hub.services import Hub


class UsageError(EdgeloopError):
    """A command line value that cannot be used (printed as ``error: ...``, exit 2)."""

    code = "usage"


@dataclass(frozen=True)
class Parents:
    """The option groups subcommands inherit: ``--home`` (common) and ``--json`` (js)."""

    common: argparse.ArgumentParser
    js: argparse.ArgumentParser

    @property
    def hub(self) -> tuple[argparse.ArgumentParser, ...]:
        """What every command working on a hub home takes: ``--home`` and ``--json``."""
        return (self.common, self.js)


def make_parents() -> Parents:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", type=Path, default=None,
                        help="hub home folder (default: $EDGELOOP_HOME, else the per-user data folder)")
    js = argparse.ArgumentParser(add_help=False)
    js.add_argument("--json", action="store_true", help="machine-readable output")
    return Parents(common, js)


def command(subparsers, name: str, help_text: str, description: str | None = None, parents=(),
            **kw) -> argparse.ArgumentParser:
    """A subcommand whose --help shows ``description`` (defaults to the one-line help)."""
    return subparsers.add_parser(name, parents=list(parents), help=help_text,
                                 description=description or (help_text[:1].upper() + help_text[1:] + "."),
                                 formatter_class=argparse.RawDescriptionHelpFormatter, **kw)


def open_hub(args: argparse.Namespace) -> Hub:
    """The hub at ``--home`` (imported here, so ``edgeloop agent`` never loads the hub's libraries)."""
    from edgeloop.hub.services import Hub

    return Hub(args.home)
