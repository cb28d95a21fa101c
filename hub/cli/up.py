"""``edgeloop up``: bring up a local stack and keep it running until Ctrl-C (see :mod:`edgeloop.hub.stack`)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import types
from pathlib import Path

from edgeloop.hub.cli.common import Parents, command

UP_DESCRIPTION = """\
Bring up a local stack and keep it running until Ctrl-C (or SIGTERM):

  broker   Mosquitto when installed, else the embedded amqtt broker, on 127.0.0.1:1884
           (1883 is left to a system Mosquitto)
  hub      the hub runtime (as `edgeloop hub serve`), metrics on http://127.0.0.1:9184/metrics
  agents   edge-1, edge-2, ... (`edgeloop agent run`), HTTP on 127.0.0.1:8081, 8082, ...,
           each serving the demo model

The demo model is the newest sensor-mlp version in the hub home; with none, one is trained from
the shipped sample first (a few seconds). Every agent that does not serve it gets it deployed.
State lives in the hub home: <home>/stack/ (agent configs, logs, Mosquitto's persistence,
stack.json while it runs) and <home>/agents/<id>/ (the agents' own state, shared with
`edgeloop demo`), so a second `up` finds the same agents serving the same model.

Once everything runs it prints the broker URL and each agent's HTTP, inference and metrics
URLs (--json: the same as one JSON document on stdout), and the examples of README.md and
docs/integrations/ work as written. A busy port is named with the option that moves it.
Ctrl-C stops the agents (each says goodbye), the hub runtime, then the broker; exit 0.
"""


class _Stop(Exception):
    """A signal arrived while the stack was still starting."""


def cmd_up(args) -> int:
    from edgeloop.hub.home import default_home
    from edgeloop.hub.stack import LocalStack, StackOptions

    opts = StackOptions(home=Path(args.home) if args.home else default_home(), port=args.port,
                        http_port=args.http_port, metrics_port=args.metrics_port, agents=args.agents,
                        broker=args.broker, model=args.model, epochs=args.epochs)
    out = sys.stderr if args.json else sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    stop = threading.Event()
    received: list[str] = []
    starting = True

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()
        if starting:
            raise _Stop()

    stack = LocalStack(opts, say)
    _log_to(stack.plan.hub_log, args.log_level)
    say(f"edgeloop up -- hub home {stack.hub.home.root} (state in {stack.plan.dir})")
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            info = stack.start()
            starting = False
        except _Stop:
            say(f"{received[0]} received while starting: stopped")
            return 130
        say("\nRunning:")
        for line in info.summary():
            say(line)
        say("\nTry (from another terminal):\n"
            f"  mosquitto_sub -p {opts.port} -v -t 'edgeloop/v1/agents/+/status' -C {opts.agents}\n"
            f"  curl -s {info.agents[0].infer_url} -d '{{\"inputs\": [[68.4, 1.8, 302.3, 20.4, 67.4, 1647]]}}'\n"
            f"  edgeloop fleet{'' if args.home is None else f' --home {args.home}'}\n"
            "Ctrl-C stops everything.")
        if args.json:
            print(json.dumps(info.to_dict()), flush=True)
        from edgeloop.hub.stack import StackError

        try:
            while not stop.wait(0.5):
                stack.check()
        except StackError as exc:
            say(f"error: {exc}; stopping")
            return 1
        say(f"\n{received[0] if received else 'stop'} received: stopping the agents, the hub runtime, the broker")
        return 0
    finally:
        starting = False
        for s, handler in previous.items():
            signal.signal(s, handler)
        codes = stack.stop()
        if codes:
            say("stopped (agents exited with " + ", ".join(f"{a} {c}" for a, c in codes.items()) + ")")


def _log_to(path: Path, level_name: str) -> None:
    """The hub runtime's and the stack's log go to <home>/stack/hub.log, not the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    level = min(getattr(logging, str(level_name).upper(), logging.INFO), logging.INFO)
    for name in ("edgeloop", "amqtt"):
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.setLevel(level if name == "edgeloop" else logging.WARNING)
        lg.propagate = False
    logging.getLogger("edgeloop.agent.mqtt_link.paho").setLevel(logging.WARNING)


def add_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    from edgeloop.hub.stack.plan import AGENTS, BROKER_KINDS, BROKER_PORT, HTTP_PORT, METRICS_PORT

    u = command(sub, "up", "bring up a local broker, hub runtime and agents; keep them running until Ctrl-C",
                UP_DESCRIPTION, parents=parents.hub)
    u.add_argument("--port", type=int, default=BROKER_PORT,
                   help="the broker's port on 127.0.0.1 (default %(default)s)")
    u.add_argument("--http-port", type=int, default=HTTP_PORT, metavar="PORT",
                   help="edge-1's HTTP port; edge-2 gets the next one, ... (default %(default)s)")
    u.add_argument("--metrics-port", type=int, default=METRICS_PORT, metavar="PORT",
                   help="the hub runtime's Prometheus metrics port (default %(default)s)")
    u.add_argument("--agents", type=int, default=AGENTS, metavar="N",
                   help="how many local agents: edge-1 ... edge-N (default %(default)s)")
    u.add_argument("--broker", choices=BROKER_KINDS, default="auto",
                   help="auto: Mosquitto when installed, else the embedded broker (default %(default)s)")
    u.add_argument("--model", default=None, metavar="VERSION",
                   help="the version the agents serve (default: the newest sensor-mlp, trained if none)")
    u.add_argument("--epochs", type=int, default=40,
                   help="training epochs when the demo model has to be trained (default %(default)s)")
    u.set_defaults(func=cmd_up)
