"""What the command modules share: the usage error, the parent parsers of hub commands,
declaring a subcommand, the broker options of commands that connect, and opening the hub."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeloop.agent.connection import (
    ENV_BROKER,
    PROTOCOLS,
    BrokerSettings,
    broker_from_options,
    password_in_url_warning,
    url_has_password,
)
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


# --- the broker ------------------------------------------------------------------------------
def add_broker_options(p: argparse.ArgumentParser, what: str = "the agents are connected to") -> None:
    """``--broker URL`` and the credentials and TLS options of a command that connects.

    :func:`broker_settings` (called by :func:`open_hub`) turns them into ``args.broker``, a
    :class:`~edgeloop.agent.connection.BrokerSettings`.
    """
    g = p.add_argument_group("broker", "where the MQTT broker is and how to log in to it")
    g.add_argument("--broker", default=None, metavar="URL",
                   help=f"the broker {what}: mqtt://[user@]host[:port] (port 1883) or mqtts://[user@]host[:port] "
                        f"(TLS, port 8883) (default: ${ENV_BROKER}); a password is better given with "
                        "--password-file or $EDGELOOP_MQTT_PASSWORD than in the URL, visible in ps")
    g.add_argument("--username", default=None, help="user name (default: the URL's, else $EDGELOOP_MQTT_USERNAME)")
    g.add_argument("--password-file", type=Path, default=None, metavar="FILE",
                   help="file whose first line is the password (default: $EDGELOOP_MQTT_PASSWORD)")
    g.add_argument("--ca-file", type=Path, default=None, metavar="PEM",
                   help="CA certificate the broker's certificate must be signed by (mqtts://; default: the "
                        "system's CAs)")
    g.add_argument("--cert-file", type=Path, default=None, metavar="PEM",
                   help="client certificate, for a broker that asks for one (with --key-file)")
    g.add_argument("--key-file", type=Path, default=None, metavar="PEM", help="the client certificate's key")
    g.add_argument("--no-check-hostname", action="store_true",
                   help="accept a broker certificate issued for another name (tests only)")
    g.add_argument("--mqtt-protocol", choices=PROTOCOLS, default="auto",
                   help="MQTT version: auto tries 5, then 3.1.1 (default %(default)s)")
    p.set_defaults(broker_options=True)


def broker_settings(args: argparse.Namespace, env=None) -> BrokerSettings:
    """The broker named by :func:`add_broker_options`' options (and the environment)."""
    env = os.environ if env is None else env
    if isinstance(args.broker, BrokerSettings):
        return args.broker
    url = args.broker or env.get(ENV_BROKER)
    if not url:
        raise UsageError(f"no broker given: pass --broker mqtt://host[:port] or set ${ENV_BROKER}")
    if args.broker and url_has_password(args.broker):
        print(password_in_url_warning("--broker"), file=sys.stderr)
    return broker_from_options(url, username=args.username, password_file=args.password_file,
                               ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file,
                               no_check_hostname=args.no_check_hostname, protocol=args.mqtt_protocol, env=env)


def open_hub(args: argparse.Namespace) -> Hub:
    """The hub at ``--home`` (imported here, so ``edgeloop agent`` never loads the hub's libraries).

    For a command with broker options, ``args.broker`` becomes their
    :class:`~edgeloop.agent.connection.BrokerSettings` first (a bad option fails before the hub opens).
    """
    from edgeloop.hub.services import Hub

    if getattr(args, "broker_options", False):
        args.broker = broker_settings(args)
    return Hub(args.home)
