"""``edgeloop hub serve`` and ``edgeloop hub status``: the hub runtime, headless, and how
fresh the fleet view is (see :mod:`edgeloop.hub.runtime`)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import types

from edgeloop.agent.connection import ENV_BROKER
from edgeloop.hub.cli.common import Parents, UsageError, add_broker_options, broker_settings, command, open_hub
from edgeloop.hub.cli.render import emit
from edgeloop.hub.views import freshness_line

log = logging.getLogger("edgeloop.hub.serve")

SERVE_DESCRIPTION = """\
Keep the hub connected to its fleet until stopped: the hub runtime.

It connects to the broker with this hub home's fixed client id and a persistent session
and subscribes (QoS 1) to the status, state, events and drift of every agent under the
fleet's topic root. The broker keeps that session while the runtime is away and queues
the reports published meanwhile; they are stored when the runtime returns. Agents whose
state does not list this hub's key are other hubs' agents: listed by `edgeloop fleet
--all`, never audited, their drift not stored.

While it runs, `edgeloop fleet` and `edgeloop drift` say "hub listening since ...";
otherwise they say since when nobody listened. One runtime per hub home: a second one
is refused (the first one's pid is named). The GUI runs the same runtime in-process
when given a broker (`edgeloop app --broker URL`, or [fleet] broker in hub.toml).

Settings come from <home>/hub.toml ([fleet] broker, topic_root, offline_grace_s;
[runtime] heartbeat_s, batch_max, batch_ms); --broker (else $EDGELOOP_BROKER) and
--topic-root override them. Credentials and TLS: the broker options below.

For systemd: logs go to stderr with timestamps, SIGTERM or SIGINT stop it cleanly
(received reports stored, retained hub status set offline, exit 0); it exits 1 when the
broker cannot be reached at start (Restart=on-failure retries) and 2 when the home is
already served or the settings are wrong. packaging/edgeloop-hub.service is a unit file.

--metrics-port PORT serves fleet-level Prometheus metrics (agents online/offline, deployments
by outcome, drift reports received, flagged agents) at http://HOST:PORT/metrics.
"""


def cmd_serve(args) -> int:
    from edgeloop.agent.connect_errors import BrokerConnectError
    from edgeloop.hub.errors import FleetError
    from edgeloop.hub.runtime import HubRuntime

    _log_to_stderr(args.log_level)
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    with open_hub(args) as hub:
        if args.topic_root is not None:
            hub.use_config(dataclasses.replace(hub.config, topic_root=args.topic_root))
        if not args.broker and not os.environ.get(ENV_BROKER):
            args.broker = hub.config.broker
        if not args.broker and not os.environ.get(ENV_BROKER):
            raise UsageError(f"no broker to listen to: pass --broker mqtt://HOST:PORT, set ${ENV_BROKER}, or set "
                             f"[fleet] broker in {hub.config_path}")
        broker = broker_settings(args)
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            runtime = HubRuntime(hub, broker, metrics_port=args.metrics_port, metrics_host=args.metrics_host)
            try:
                runtime.start(timeout=args.connect_timeout)
            except (BrokerConnectError, FleetError) as exc:  # systemd's Restart=on-failure tries again
                log.error("%s", exc)
                return 1
            try:
                stop.wait()
                log.info("%s received: stopping", received[0] if received else "stop")
            finally:
                runtime.stop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    log.info("stopped")
    return 0


def _log_to_stderr(level_name: str) -> None:
    """INFO (DEBUG if asked) to stderr with timestamps; paho's packet log stays out of it."""
    level = min(getattr(logging, str(level_name).upper(), logging.INFO), logging.INFO)
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level > logging.DEBUG:
        logging.getLogger("edgeloop.agent.mqtt_link.paho").setLevel(logging.WARNING)


def cmd_status(args) -> int:
    from edgeloop.hub.runtime import HomeLock

    with open_hub(args) as hub:
        doc = {**hub.listening(), "lock_holder": HomeLock(hub.home.root).holder(),
               "client_id": hub.registry.hub_client_id(), "topic_root": hub.config.topic_root}
    emit(args, doc, [freshness_line(doc), f"client id {doc['client_id']}, topic root {doc['topic_root']}"])
    return 0 if doc["listening"] else 1


def add_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    h = command(sub, "hub", "the hub runtime: keep listening to the fleet (serve), is it listening (status)")
    hs = h.add_subparsers(dest="hub_command", required=True, metavar="SUBCOMMAND")
    x = command(hs, "serve", "run the hub runtime until stopped (headless; for systemd)", SERVE_DESCRIPTION,
                parents=[parents.common])
    add_broker_options(x, "to listen to, else [fleet] broker in <home>/hub.toml")
    x.set_defaults(broker_options=False)  # resolved by cmd_serve, which falls back on the hub config
    x.add_argument("--topic-root", default=None, metavar="ROOT",
                   help="the fleet's topic root (default: [fleet] topic_root in <home>/hub.toml, else edgeloop/v1)")
    x.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="seconds to reach the broker at start before giving up (default %(default)s)")
    x.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve fleet-level Prometheus metrics on http://HOST:PORT/metrics (docs/metrics.md)")
    x.add_argument("--metrics-host", default="0.0.0.0", metavar="HOST",
                   help="address the metrics server listens on (default %(default)s)")
    x.set_defaults(func=cmd_serve)
    x = command(hs, "status", "whether a hub runtime listens for this home, and since when (exit 1 if not)",
                parents=parents.hub)
    x.set_defaults(func=cmd_status)
