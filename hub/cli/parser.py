"""``edgeloop``: the command line face of the hub services (the GUI is the other face).

Every command is a thin face over :class:`edgeloop.hub.services.Hub`: it turns its
options into a Hub call and prints the plain records that come back, formatted by
:mod:`edgeloop.hub.views` and :mod:`edgeloop.hub.cli.render`. The commands live in
one module per group (data, train, evaluate, registry, bundles, fleet, hub, keys, demo, up, app, agent).

Heavy libraries (torch, onnx, Qt) are imported only by the commands that need
them, so ``edgeloop agent run`` works on a device with only the agent extras.
Every hub command takes ``--json`` for machine-readable output; errors are
printed as ``error: ...`` on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from edgeloop.agent.errors import EdgeloopError
from edgeloop.hub.cli import agent, app, bundles, capture, data, demo, evaluate, fleet, hub, keys, registry, train
from edgeloop.hub.cli import retrain as retrain_cmd
from edgeloop.hub.cli import rollout as rollout_cli
from edgeloop.hub.cli import up as up_cmd
from edgeloop.hub.cli.common import UsageError, make_parents

__all__ = ["EPILOG", "UsageError", "build_parser", "main"]

EPILOG = """\
The loop:  edgeloop demo                      run everything end to end on embedded defaults
Local:     edgeloop up                        broker :1884, hub runtime, agents; runs until Ctrl-C
Data:      edgeloop data sample|import|list|show
Train:     edgeloop train --data REF --model NAME [--epochs N ...]
Evaluate:  edgeloop eval VERSION --data TEST,  edgeloop predict VERSION --data FILE --out CSV
Registry:  edgeloop registry list|show|compare|lineage|audit
Promote:   edgeloop registry gate|alias|aliases|unalias
Export:    edgeloop export VERSION --out DIR,  edgeloop bundle build|inspect|verify
Fleet:     edgeloop fleet, edgeloop drift, edgeloop deploy, edgeloop rollback
Rollout:   edgeloop rollout start|status|list|pause|resume|approve|abort   (gated waves)
Shadow:    edgeloop deploy VERSION --shadow,  edgeloop shadow status|promote|stop
Preflight: edgeloop preflight [VERSION] [--agent ID]   (each device's fp32/int8 pick and figures)
Capture:   edgeloop capture list|show|on|off|upload|purge   (field data, opt-in)
Retrain:   edgeloop retrain MODEL --from-capture AGENT|TAG   (act on drift: fine-tune on captured rows)
Listen:    edgeloop hub serve [--broker URL]    keep the fleet view current (systemd-friendly)
Agent:     edgeloop agent run --config FILE   (on the device)
Sites:     edgeloop site bridge-config SITE --central URL   (a broker per site, bridged)
Enroll:    edgeloop agent enroll ID --broker URL --out DIR,  edgeloop agent keys|tag
GUI:       edgeloop app

Versions are named model:n (model:3), model (its newest) or model@alias (model@production).
The hub keeps its registry, keys, models and bundles under --home (default: $EDGELOOP_HOME,
else the per-user data folder). Add --json for machine-readable output.
"""


def build_parser() -> argparse.ArgumentParser:
    parents = make_parents()
    p = argparse.ArgumentParser(
        prog="edgeloop", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="edgeloop: train, sign, ship and watch small ML models on edge devices, "
                    "from one workstation.")
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default %(default)s)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.add_commands(sub, parents)
    up_cmd.add_commands(sub, parents)
    data.add_commands(sub, parents)
    train.add_commands(sub, parents)
    evaluate.add_commands(sub, parents)
    registry.add_commands(sub, parents)
    bundles.add_export_command(sub, parents)
    fleet.add_commands(sub, parents)
    rollout_cli.add_commands(sub, parents)
    from edgeloop.hub.cli import shadow

    shadow.add_commands(sub, parents)
    from edgeloop.hub.cli import preflight

    preflight.add_commands(sub, parents)
    capture.add_commands(sub, parents)
    retrain_cmd.add_commands(sub, parents)
    hub.add_commands(sub, parents)
    bundles.add_bundle_commands(sub, parents)
    keys.add_commands(sub, parents)
    fleet.add_discover_command(sub, parents)
    app.add_commands(sub, parents)
    from edgeloop.hub.cli import site

    site.add_commands(sub, parents)
    agent.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "agent":
        logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                            format="%(levelname)s %(name)s: %(message)s")
    try:
        if getattr(args, "wrap", None) is not None and args.command == "agent":
            return args.wrap(args)
        return args.func(args)
    except EdgeloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the user named cannot be read or written
        print(f"error: {exc.strerror or exc}: {exc.filename}" if exc.filename else f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
