"""``edgeloop-agent`` (also ``edgeloop agent``): run and provision an edge agent.

Only agent dependencies are needed: no torch, no Qt, no hub.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tomllib
from pathlib import Path

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.connection import parse_url, password_in_url_warning, tls_from_options
from edgeloop.agent.errors import ConfigError, EdgeloopError


def add_agent_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``run``, ``init``, ``status`` and ``install`` on a subparsers object."""
    p = sub.add_parser("run", help="run the agent until interrupted (SIGINT/SIGTERM stop it cleanly)",
                       description="Connect to the broker, serve the active model over MQTT and HTTP, "
                                   "accept signed deploy/rollback commands, report drift.")
    p.add_argument("--config", "-c", required=True, type=Path, help="agent config file (TOML)")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (overrides the config)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("init", help="write an agent config file",
                       description="Write a TOML config for a new agent. Copy the hub's public key "
                                   "(edgeloop keys show --public) to the device and name it with --trusted-key.")
    p.add_argument("--id", required=True, help="agent id (letters, digits, _ - .)")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", metavar="URL",
                   help="mqtt://[user@]host[:port] or mqtts://[user@]host[:port] (TLS, port 8883) "
                        "(default %(default)s)")
    p.add_argument("--username", default=None, help="user name to log in to the broker with")
    p.add_argument("--password-file", type=Path, default=None,
                   help="file whose first line is the broker password (the config names the file; "
                        "without one the agent reads $EDGELOOP_MQTT_PASSWORD)")
    p.add_argument("--ca-file", type=Path, default=None,
                   help="CA certificate (PEM) the broker's certificate is checked against (turns on TLS; "
                        "default with mqtts://: the system's CAs)")
    p.add_argument("--cert-file", type=Path, default=None, help="client certificate (PEM), with --key-file")
    p.add_argument("--key-file", type=Path, default=None, help="the client certificate's key (PEM, unencrypted)")
    p.add_argument("--no-check-hostname", action="store_true",
                   help="accept a broker certificate that names another host (tests only)")
    p.add_argument("--protocol", choices=("auto", "5", "3.1.1"), default="auto",
                   help="MQTT version: auto tries 5 and falls back to 3.1.1 (default %(default)s)")
    p.add_argument("--trusted-key", action="append", required=True, type=Path,
                   help="hub public key PEM this agent trusts (repeat for several)")
    p.add_argument("--state-dir", required=True, type=Path, help="where bundles and state are kept")
    p.add_argument("--http-port", type=int, default=8080, help="HTTP port, 0 for a free one (default %(default)s)")
    p.add_argument("--http-host", default="127.0.0.1", help="HTTP bind address (default %(default)s)")
    p.add_argument("--zeroconf", action="store_true", help="announce the agent with zeroconf")
    p.add_argument("--out", "-o", required=True, type=Path, help="config file to write")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("status", help="show what an agent has installed (reads its state dir; no broker)",
                       description="Show the active model, the installed bundles and the accepted command "
                                   "counters, read from the state folder; works while the agent is stopped.")
    p.add_argument("--config", "-c", required=True, type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)


    p = sub.add_parser("install", help="apply an air-gapped file from `edgeloop bundle export` (deploy or rollback)",
                       description="Apply FILE (written by `edgeloop bundle export`) with the same checks as a "
                                   "deploy or rollback over MQTT: signature, target agent, counter (a file is "
                                   "applied once; again it is refused as replayed), expiry, bundle hash, manifest, "
                                   "smoke test, atomic install. A running agent is handed the file through its "
                                   "inbox (<state_dir>/inbox); a stopped one is updated in-process. The result is "
                                   "reported to the hub when the agent next reaches the broker. Exit 0 when "
                                   "installed, 2 when refused, 1 when no result came within --timeout.")
    p.add_argument("file", type=Path, help="the file (.airgap) from `edgeloop bundle export`")
    p.add_argument("--config", "-c", required=True, type=Path, help="agent config file (TOML)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for a running agent's result (default %(default)s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_install)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # paho's own lines are DEBUG (edgeloop.agent.mqtt_link.paho): shown only when asked for


def cmd_run(args: argparse.Namespace) -> int:
    from edgeloop.agent.service import Agent

    cfg = AgentConfig.load(args.config)
    setup_logging(args.log_level or cfg.log_level)
    agent = Agent(cfg)

    def on_signal(signum: int, frame: object) -> None:
        # only flags here: the clean stop (offline state, HTTP, zeroconf) runs on the main thread
        if agent.stop_requested:  # a second signal while a slow stop is under way
            os.write(2, f"signal {signum} again: exiting without finishing the clean stop\n".encode())
            os._exit(128 + signum)
        agent.request_stop(f"{signal.Signals(signum).name} received")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.run_forever()
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from edgeloop.agent.fsutil import atomic_write_bytes
    from edgeloop.agent.wire.topics import check_agent_id

    check_agent_id(args.id)
    scheme, url_user, url_password, host, port = parse_url(args.broker)
    if url_password is not None:
        print(password_in_url_warning("--broker"), file=sys.stderr)
    if url_password is not None and args.password_file is not None:
        raise ConfigError("give the password either in --broker or with --password-file, not both")
    tls = tls_from_options(scheme, ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file,
                           no_check_hostname=args.no_check_hostname)
    if args.password_file is not None and not args.password_file.is_file():
        raise ConfigError(f"--password-file: {args.password_file} does not exist or is not a file")
    cfg = AgentConfig(
        agent_id=args.id, state_dir=args.state_dir.resolve(), trusted_keys=[k.resolve() for k in args.trusted_key],
        mqtt_host=host, mqtt_port=port, mqtt_username=args.username or url_user, mqtt_password=url_password,
        mqtt_password_file=args.password_file.resolve() if args.password_file else None, mqtt_tls=tls,
        mqtt_protocol=args.protocol, http_host=args.http_host, http_port=args.http_port, zeroconf=args.zeroconf,
    )
    cfg.load_trusted_keys()  # fail now, not on the device at 3 a.m.
    text = cfg.to_toml()
    AgentConfig.from_dict(tomllib.loads(text), base=args.out.parent)  # what the agent will read back
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # owner-only: it may name a password (file), a client key
    atomic_write_bytes(args.out, text.encode(), mode=0o600)
    print(f"wrote {args.out}; start the agent with: edgeloop agent run --config {args.out}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from edgeloop.agent.store import AgentStore

    cfg = AgentConfig.load(args.config)
    store = AgentStore(cfg.state_dir)
    active = store.active()
    doc = {
        "agent_id": cfg.agent_id,
        "state_dir": str(cfg.state_dir),
        "active": active.to_dict() if active else None,
        "models": [b.to_dict() for b in store.actives()],  # the active version of every model served
        "installed": [b.to_dict() for b in store.installed()],
        "counters": store.counters(),
        "session": store.state.session,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"agent {cfg.agent_id}  (state in {cfg.state_dir})")
        shown = f"{active.model} {active.version} [{active.sha256[:12]}]" if active else "none"
        print(f"  active: {shown}")
        for b in store.actives() if len(store.actives()) > 1 else []:
            print(f"  serving: {b.model} {b.version} [{b.sha256[:12]}]")
        for b in store.installed():
            print(f"  installed: {b.model} {b.version} [{b.sha256[:12]}]")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from edgeloop.agent.airgap import NEXT_STEP, Inbox, install_in_process
    from edgeloop.agent.control import MAX_COMMAND_LIFETIME
    from edgeloop.agent.service import Agent
    from edgeloop.agent.wire.airgap import AirgapFile

    cfg = AgentConfig.load(args.config)
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file}: {exc}") from exc
    try:
        AirgapFile.decode(data, cfg.max_bundle_bytes)  # a damaged copy is told at once, the agent decodes again
    except EdgeloopError as exc:
        return _print_install(args, {"ok": False, "code": exc.code, "message": str(exc), "agent_id": cfg.agent_id,
                                     "next_step": NEXT_STEP.get(exc.code), "mode": "none"})
    inbox = Inbox(cfg.state_dir)
    if inbox.can_tell_running() and inbox.try_lock():  # no agent runs on this state folder: apply it here
        try:
            result = {**install_in_process(Agent(cfg), data, MAX_COMMAND_LIFETIME), "mode": "in-process"}
        finally:
            inbox.unlock()
    else:
        name = inbox.drop(data)
        got = inbox.wait_result(name, args.timeout)
        if got is None:
            print(f"handed {args.file} to the running agent {cfg.agent_id}, but no result came within "
                  f"{args.timeout:.0f} s; it may still be installing: its result will be in "
                  f"{inbox.dir / (name + '.result.json')} and is reported to the hub", file=sys.stderr)
            return 1
        result = {**got, "mode": "running agent"}
    return _print_install(args, result)


def _print_install(args: argparse.Namespace, result: dict) -> int:
    if args.json:
        print(json.dumps(result, indent=2))
    elif result["ok"]:
        print(f"{result['message']} (agent {result['agent_id']}, {result['mode']}); the result is reported to "
              "the hub now if the agent is connected, else when it next reaches the broker")
    else:
        print(f"REFUSED [{result['code']}]: {result['message']}", file=sys.stderr)
        if result.get("next_step"):
            print(f"  next: {result['next_step']}", file=sys.stderr)
    return 0 if result["ok"] else 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeloop-agent",
        description="The edgeloop edge agent: verifies and installs signed model bundles, serves them "
                    "with onnxruntime over MQTT and HTTP, and reports drift.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_agent_commands(sub)
    return parser


def run_parsed(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except EdgeloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return run_parsed(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
