"""``edgeloop``: the command line face of the hub services (the GUI is the other face).

Heavy libraries (torch, onnx, Qt) are imported only by the commands that need
them, so ``edgeloop agent run`` works on a device with only the agent extras.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from agent.errors import EdgeloopError

EPILOG = """\
The loop:  edgeloop demo                      run everything end to end on embedded defaults
Registry:  edgeloop registry list|show|lineage|audit
Fleet:     edgeloop fleet, edgeloop drift, edgeloop deploy, edgeloop rollback
Bundles:   edgeloop bundle inspect|verify FILE
Agent:     edgeloop agent run --config FILE   (on the device)
GUI:       edgeloop app

The hub keeps its registry, keys, models and bundles under --home (default: $EDGELOOP_HOME,
else the per-user data folder). Add --json to list commands for machine-readable output.
"""


# --- helpers ---------------------------------------------------------------------
def _hub(args):
    from .services import Hub

    return Hub(args.home)


def _emit(args, data: Any, text_lines: list[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print("\n".join(text_lines) if text_lines else "(nothing yet)")


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    d = time.time() - ts
    if d < 120:
        return f"{d:.0f} s ago"
    if d < 7200:
        return f"{d / 60:.0f} min ago"
    if d < 172800:
        return f"{d / 3600:.0f} h ago"
    return f"{d / 86400:.0f} d ago"


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    if not rows:
        return []
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*map(str, r)) for r in rows]


# --- commands ------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from .demo import DemoOptions, run_demo
    from .home import default_home

    opts = DemoOptions(home=Path(args.home) if args.home else default_home(), broker=args.broker,
                       epochs=args.epochs, json=args.json)
    result = run_demo(opts)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_registry_list(args) -> int:
    with _hub(args) as hub:
        versions = hub.registry.list_versions()
        rows = []
        for v in versions:
            m = v.get("metrics") or {}
            q = v.get("quantization") or {}
            rep = q.get("report") or {}
            bundles = hub.registry.list_bundles(v["id"])
            rows.append([v["id"], v["run_id"], f"{m.get('test_accuracy', float('nan')):.3f}",
                         v["chosen"], f"{rep.get('accuracy_delta_points', float('nan')):+.2f}",
                         bundles[0]["sha256"][:12] if bundles else "-",
                         time.strftime("%Y-%m-%d %H:%M", time.localtime(v["created_at"]))])
        _emit(args, versions, _table(rows, ["version", "run", "test_acc", "ships", "int8_dpt", "bundle", "created"]))
    return 0


def cmd_registry_show(args) -> int:
    with _hub(args) as hub:
        v = hub.registry.get_version(args.ref)
        run = hub.registry.get_run(v["run_id"])
        doc = {"version": v, "run": run, "bundles": hub.registry.list_bundles(v["id"])}
        lines = [f"{v['id']}  (run {run['id']}, dataset {run['dataset_id']}, ships {v['chosen']})",
                 "metrics: " + json.dumps({k: val for k, val in (v.get('metrics') or {}).items()
                                           if not isinstance(val, list)}),
                 "params: " + json.dumps(run.get("params")),
                 "quantization: " + str((v.get("quantization") or {}).get("reason", "-"))]
        lines += [f"bundle {b['sha256'][:16]}…  {b['size']} B  {b['path']}" for b in doc["bundles"]]
        _emit(args, doc, lines)
    return 0


def cmd_registry_lineage(args) -> int:
    with _hub(args) as hub:
        lin = hub.registry.lineage(args.ref)
        ds, run = lin["dataset"], lin["run"]
        lines = [f"dataset {ds['id']}  sha256 {ds['sha256']}  ({ds['rows']} rows, {ds.get('name', '')})",
                 f"  └─ run {run['id']}  {run['status']}  code {run.get('code_version', '?')}"]
        for v in lin["versions"]:
            lines.append(f"      └─ version {v['id']}  ships {v['chosen']}")
            for b in v.get("bundles", []):
                lines.append(f"          └─ bundle {b['sha256'][:16]}…  key {b['key_id']}")
                for d in b.get("deployments", []):
                    lines.append(f"              └─ {d['kind']} to {d['agent_id']}: {d['status']} "
                                 f"({_ago(d['created_at'])})")
        _emit(args, lin, lines)
    return 0


def cmd_registry_audit(args) -> int:
    with _hub(args) as hub:
        rows = hub.registry.list_audit(limit=args.limit)
        lines = _table([[time.strftime("%m-%d %H:%M:%S", time.localtime(r["at"])), r["actor"], r["action"],
                         r["target"]] for r in rows], ["at", "actor", "action", "target"])
        _emit(args, rows, lines)
    return 0


def cmd_fleet(args) -> int:
    with _hub(args) as hub:
        agents = hub.registry.list_agents()
        rows = [[a["agent_id"], a.get("status") or "?",
                 f"{a.get('active_model') or '-'} {a.get('active_version') or ''}".strip(),
                 (a.get("active_bundle") or "-")[:12], a.get("http_url") or "-", _ago(a.get("last_seen"))]
                for a in agents]
        _emit(args, agents, _table(rows, ["agent", "status", "serving", "bundle", "http", "last seen"]))
    return 0


def cmd_drift(args) -> int:
    with _hub(args) as hub:
        summary = hub.registry.drift_summary(args.agent)
        lines = []
        for s in summary:
            flagged = s.get("drifted_features") or {}
            lines.append(f"{s['agent_id']}  {s['model']}:{s['version']}  {s['windows']} windows, {s['rows']} rows, "
                         f"{'DRIFTING' if s.get('drifting_now') else 'stable'} (last window "
                         f"{_ago(s.get('last_received_at'))})")
            for name, n in flagged.items():
                lines.append(f"    {name:<16} flagged in {n} window(s), max PSI {s['max_psi'].get(name, 0):.2f}")
            if not flagged:
                lines.append("    no feature flagged")
        _emit(args, summary, lines)
    return 0


def cmd_bundle_inspect(args) -> int:
    from agent.bundle import inspect_bundle, sha256

    data = Path(args.file).read_bytes()
    manifest, sig = inspect_bundle(data)
    doc = {"sha256": sha256(data), "size": len(data), "manifest": manifest.to_dict(), "signature": sig}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        m = manifest
        print(f"bundle {args.file}  ({len(data)} bytes, sha256 {doc['sha256']})")
        print(f"  model {m.model_name} version {m.version} ({m.task}), created "
              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(m.created_at))}")
        print(f"  signed by key {m.key_id} (NOT verified here: use `edgeloop bundle verify`)")
        print(f"  input {m.inputs[0].name} {m.inputs[0].datatype}{m.inputs[0].shape}: {', '.join(m.feature_names)}")
        print(f"  outputs: {', '.join(f'{o.name} {o.datatype}{o.shape}' for o in m.outputs)}; labels {m.labels}")
        for f in m.files:
            print(f"  file {f.path} ({f.role}) {f.size} B sha256 {f.sha256[:16]}…")
        if m.drift:
            print(f"  drift reference: {len(m.drift.features)} features, window {m.drift.window} rows, "
                  f"PSI > {m.drift.psi_threshold} and KS > {m.drift.ks_threshold}")
        if m.smoke_test:
            print(f"  smoke test: {len(m.smoke_test.inputs)} rows, atol {m.smoke_test.atol}")
        print(f"  lineage: {json.dumps(m.lineage)}")
        print(f"  quantization: {m.quantization.get('chosen', 'fp32')} -- {m.quantization.get('reason', '')}")
    return 0


def cmd_bundle_verify(args) -> int:
    from agent.bundle import sha256, verify_bundle
    from agent.envelope import TrustedKeys

    if args.key:
        trusted = TrustedKeys.from_pems([Path(k).read_bytes() for k in args.key])
    else:
        with _hub(args) as hub:
            trusted = TrustedKeys.of([hub.key.public])
    data = Path(args.file).read_bytes()
    try:
        vb = verify_bundle(data, trusted)
    except EdgeloopError as exc:
        doc = {"ok": False, "code": exc.code, "error": str(exc)}
        print(json.dumps(doc) if args.json else f"REFUSED [{exc.code}]: {exc}")
        return 1
    doc = {"ok": True, "sha256": sha256(data), "key_id": vb.keyid, "model": vb.manifest.model_name,
           "version": vb.manifest.version, "files": len(vb.files)}
    print(json.dumps(doc) if args.json else
          f"OK: {vb.manifest.model_name} {vb.manifest.version} signed by {vb.keyid}; {len(vb.files)} file(s) match")
    return 0


def cmd_keys_show(args) -> int:
    with _hub(args) as hub:
        key = hub.key
        if args.public:
            sys.stdout.write(key.public_pem().decode())
            return 0
        doc = {"key_id": key.keyid, "private": str(hub.home.keys_dir / "hub_ed25519.pem"),
               "public": str(hub.public_key_path)}
        _emit(args, doc, [f"hub key {key.keyid}", f"  private {doc['private']} (0600, never leaves this machine)",
                          f"  public  {doc['public']} (copy to agents: trusted_keys)"])
    return 0


def _resolve_bundle(hub, ref: str) -> tuple[dict, bytes]:
    from .errors import NotFoundError

    try:
        return hub.bundle_bytes(ref)
    except (NotFoundError, EdgeloopError):
        v = hub.registry.get_version(ref)
        bundles = hub.registry.list_bundles(v["id"])
        if not bundles:
            b = hub.build_bundle(v["id"])
            return hub.bundle_bytes(b.sha256)
        return hub.bundle_bytes(bundles[0]["sha256"])


def cmd_deploy(args) -> int:
    with _hub(args) as hub:
        rec, data = _resolve_bundle(hub, args.ref)
        v = hub.registry.get_version(rec["version_id"])
        with hub.fleet(args.broker) as fleet:
            results = []
            for aid in args.agent:
                out = fleet.deploy(aid, data, model=v["model_name"], version=v["version"], timeout=args.timeout)
                results.append({"agent": aid, "ok": out.ok, "code": out.code, "message": out.message,
                                "seconds": round(out.seconds, 3)})
        _emit(args, results, [f"{r['agent']}: {'OK' if r['ok'] else 'FAILED'} [{r['code']}] {r['message']}"
                              for r in results])
        return 0 if all(r["ok"] for r in results) else 1


def cmd_rollback(args) -> int:
    with _hub(args) as hub:
        rec, _ = _resolve_bundle(hub, args.to)
        with hub.fleet(args.broker) as fleet:
            results = []
            for aid in args.agent:
                out = fleet.rollback(aid, rec["sha256"], reason=args.reason or "", timeout=args.timeout)
                results.append({"agent": aid, "ok": out.ok, "code": out.code, "message": out.message})
        _emit(args, results, [f"{r['agent']}: {'OK' if r['ok'] else 'REFUSED/FAILED'} [{r['code']}] {r['message']}"
                              for r in results])
        return 0 if all(r["ok"] for r in results) else 1


def cmd_discover(args) -> int:
    from agent.discovery import browse

    found = browse(timeout=args.timeout)
    _emit(args, [a.__dict__ for a in found],
          _table([[a.agent_id, ",".join(a.addresses), a.http_port or "-", a.broker, a.version] for a in found],
                 ["agent", "addresses", "http", "broker", "version"]))
    return 0


def cmd_app(args) -> int:
    """Start the GUI as its own process: hub never imports app (app -> hub -> agent)."""
    import importlib.util
    import subprocess

    if importlib.util.find_spec("PySide6") is None or importlib.util.find_spec("app") is None:
        print("error: the GUI needs the app extras: pip install 'edgeloop[app]'", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "app"] + (["--home", str(args.home)] if args.home else [])
    return subprocess.call(cmd)


def cmd_agent(args) -> int:
    from agent.cli import run_parsed

    return run_parsed(args)


# --- parser ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", type=Path, default=None,
                        help="hub home folder (default: $EDGELOOP_HOME, else the per-user data folder)")
    js = argparse.ArgumentParser(add_help=False)
    js.add_argument("--json", action="store_true", help="machine-readable output")

    p = argparse.ArgumentParser(
        prog="edgeloop", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="edgeloop: train, sign, ship and watch small ML models on edge devices, "
                    "from one workstation.")
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default %(default)s)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", parents=[common, js], help="run the whole loop end to end on embedded defaults",
                       description="Train, export, quantize, sign, deploy to two local agent processes over "
                                   "MQTT, serve over MQTT and HTTP, detect drift, roll back -- and print a summary. "
                                   "State stays in the registry for `edgeloop registry list`, `fleet`, `drift`.")
    d.add_argument("--broker", default=None,
                   help="mqtt://host:port of an existing broker, or 'mosquitto' to start a private one "
                        "(default: an embedded amqtt broker on a free port)")
    d.add_argument("--epochs", type=int, default=40, help="training epochs of the first version (default %(default)s)")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("registry", help="model versions, lineage and the audit log").add_subparsers(
        dest="registry_command", required=True, metavar="SUBCOMMAND")
    x = r.add_parser("list", parents=[common, js], help="list model versions with metrics and bundles")
    x.set_defaults(func=cmd_registry_list)
    x = r.add_parser("show", parents=[common, js], help="show one version (model:n, or model for the latest)")
    x.add_argument("ref")
    x.set_defaults(func=cmd_registry_show)
    x = r.add_parser("lineage", parents=[common, js],
                     help="dataset -> run -> version -> bundle -> deployments for a run, version or bundle")
    x.add_argument("ref", help="run id, model:version, or bundle sha256 (8+ hex digits)")
    x.set_defaults(func=cmd_registry_lineage)
    x = r.add_parser("audit", parents=[common, js], help="recent audit log entries (who did what, when)")
    x.add_argument("--limit", type=int, default=30)
    x.set_defaults(func=cmd_registry_audit)

    f = sub.add_parser("fleet", parents=[common, js], help="agents, their status and what they serve "
                       "(as last reported to the registry)")
    f.set_defaults(func=cmd_fleet)
    f = sub.add_parser("drift", parents=[common, js], help="drift windows and flagged features per agent and model")
    f.add_argument("--agent", default=None, help="only this agent")
    f.set_defaults(func=cmd_drift)

    for name, fn, helptext in (("deploy", cmd_deploy, "push a version's signed bundle to agents over MQTT"),
                               ("rollback", cmd_rollback, "send a signed rollback to a bundle the agents hold")):
        x = sub.add_parser(name, parents=[common, js], help=helptext)
        if name == "deploy":
            x.add_argument("ref", help="model:version, model (latest) or bundle sha256 prefix")
        else:
            x.add_argument("--to", required=True, help="model:version or bundle sha256 prefix to return to")
            x.add_argument("--reason", default="", help="recorded in the audit log")
        x.add_argument("--agent", action="append", required=True, help="agent id (repeat for several)")
        x.add_argument("--broker", required=True, help="mqtt://host:port the agents are connected to")
        x.add_argument("--timeout", type=float, default=120.0, help="seconds to wait per agent")
        x.set_defaults(func=fn)

    b = sub.add_parser("bundle", help="inspect or verify a bundle file").add_subparsers(
        dest="bundle_command", required=True, metavar="SUBCOMMAND")
    x = b.add_parser("inspect", parents=[js], help="print a bundle's manifest (without trusting it)")
    x.add_argument("file", type=Path)
    x.set_defaults(func=cmd_bundle_inspect)
    x = b.add_parser("verify", parents=[common, js], help="check signature and hashes against trusted keys "
                     "(the hub key unless --key is given); exit 1 if refused")
    x.add_argument("file", type=Path)
    x.add_argument("--key", action="append", help="trusted public key PEM (repeat)")
    x.set_defaults(func=cmd_bundle_verify)

    k = sub.add_parser("keys", help="the hub signing key").add_subparsers(dest="keys_command", required=True,
                                                                         metavar="SUBCOMMAND")
    x = k.add_parser("show", parents=[common, js], help="show the key id and files (creates the key on first use)")
    x.add_argument("--public", action="store_true", help="print the public key PEM (to provision agents)")
    x.set_defaults(func=cmd_keys_show)

    x = sub.add_parser("discover", parents=[js], help="list agents announcing themselves with zeroconf")
    x.add_argument("--timeout", type=float, default=3.0)
    x.set_defaults(func=cmd_discover)

    x = sub.add_parser("app", parents=[common], help="open the operator GUI (PySide6)")
    x.set_defaults(func=cmd_app)

    from agent.cli import add_agent_commands

    a = sub.add_parser("agent", help="run or provision an edge agent (same as edgeloop-agent)")
    add_agent_commands(a.add_subparsers(dest="agent_command", required=True, metavar="SUBCOMMAND"))
    a.set_defaults(wrap=cmd_agent)
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
