"""``edgeloop export`` and ``edgeloop bundle build|inspect|verify|export``: a version's files, its
signed bundle, and air-gapped delivery files."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from edgeloop.agent.errors import EdgeloopError
from edgeloop.hub.cli.common import Parents, UsageError, command, open_hub
from edgeloop.hub.cli.render import emit
from edgeloop.hub.views import feature_summary


def cmd_export(args) -> int:
    with open_hub(args) as hub:
        out = hub.export(args.version, args.out)
    lines = [f"exported {out['version']} to {out['out_dir']}"]
    lines += [f"  {Path(f['path']).name:<32} {f['size']:>8} B  sha256 {f['sha256'][:16]}…" for f in out["files"]]
    lines.append(f"  {Path(out['report']).name:<32} report (metrics, params, quantization, lineage)")
    emit(args, out, lines)
    return 0


def cmd_bundle_build(args) -> int:
    with open_hub(args) as hub:
        b = hub.build_bundle(args.version)
    path = b.path
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = Path(shutil.copy2(b.path, args.out / b.path.name))
    doc = {"sha256": b.sha256, "path": str(path), "size": b.size, "version": b.record["version_id"],
           "key_id": b.manifest.key_id}
    emit(args, doc, [f"bundle of {doc['version']}: {path}", f"  {b.size} bytes, sha256 {b.sha256}",
                     f"  signed by hub key {b.manifest.key_id}"])
    return 0


def cmd_bundle_inspect(args) -> int:
    from edgeloop.agent.wire.bundle import inspect_bundle, sha256

    data = Path(args.file).read_bytes()
    manifest, sig = inspect_bundle(data)
    doc = {"sha256": sha256(data), "size": len(data), "manifest": manifest.to_dict(), "signature": sig}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    m = manifest
    inp = m.inputs[0]
    lines = [f"bundle {args.file}  ({len(data)} bytes, sha256 {doc['sha256']})",
             f"  model {m.model_name} version {m.version} ({m.task}), created "
             f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(m.created_at))}",
             f"  signed by key {m.key_id} (NOT verified here: use `edgeloop bundle verify`)",
             f"  input {inp.name} {inp.datatype}{inp.shape}: {feature_summary(m.feature_names)}",
             f"  outputs: {', '.join(f'{o.name} {o.datatype}{o.shape}' for o in m.outputs)}; labels {m.labels}"]
    lines += [f"  file {f.path} ({f.role}) {f.size} B sha256 {f.sha256[:16]}…" for f in m.files]
    if m.drift:
        lines.append(f"  drift reference: {len(m.drift.features)} features, window {m.drift.window} rows, "
                     f"PSI > {m.drift.psi_threshold} and KS > {m.drift.ks_threshold}")
    if m.smoke_test:
        lines.append(f"  smoke test: {len(m.smoke_test.inputs)} rows, atol {m.smoke_test.atol}")
    lines.append(f"  lineage: {json.dumps(m.lineage)}")
    lines.append(f"  quantization: {m.quantization.get('chosen', 'fp32')} -- {m.quantization.get('reason', '')}")
    print("\n".join(lines))
    return 0


def cmd_bundle_verify(args) -> int:
    from edgeloop.agent.wire.bundle import sha256, verify_bundle
    from edgeloop.agent.wire.envelope import TrustedKeys

    if args.key:
        trusted = TrustedKeys.from_pems([Path(k).read_bytes() for k in args.key])
    else:
        with open_hub(args) as hub:
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


def cmd_bundle_export(args) -> int:
    if (args.version is None) == (args.rollback is None):
        raise UsageError("give either VERSION (a deploy) or --rollback TO_VERSION, not both or neither")
    probation = None
    if args.probation is not None:
        from edgeloop.agent.wire.commands import Probation

        try:
            probation = Probation(args.probation, args.min_requests)
        except EdgeloopError as exc:
            raise UsageError(f"{exc}: give --probation a number of seconds above 0") from exc
    elif args.min_requests:
        raise UsageError("--min-requests needs --probation SECONDS (the deadline)")
    with open_hub(args) as hub:
        doc = hub.export_airgap(args.rollback or args.version, args.out, args.agent, rollback=bool(args.rollback),
                                expires_days=args.expires_days, reason=args.reason or "",
                                override_reason=args.override_gate, probation=probation)
    until = time.strftime("%Y-%m-%d %H:%M", time.localtime(doc["expires_at"]))
    what = "rollback to" if doc["kind"] == "rollback" else "deploy of"
    lines = [f"wrote {doc['path']} ({doc['size']} bytes): signed {what} {doc['version']} "
             f"[bundle {doc['bundle_sha256'][:12]}{'' if doc['bundle_included'] else ', not included'}]",
             *(f"  agent {c['agent']}: command {c['command_id']} (counter {c['counter']})" for c in doc["commands"]),
             f"  valid until {until}; apply on the device with: edgeloop-agent install {doc['path']} --config CONFIG"]
    emit(args, doc, lines)
    return 0


def add_export_command(sub: argparse._SubParsersAction, parents: Parents) -> None:
    x = command(sub, "export", "copy a version's ONNX models (fp32, int8) and a JSON report to a folder",
                parents=parents.hub,
                description="Export VERSION as MODEL-N.fp32.onnx, MODEL-N.int8.onnx (when quantized) and "
                            "MODEL-N.report.json (metrics, params, curves, quantization decision, gate, lineage). "
                            "The files are checked against the hashes in the registry.")
    x.add_argument("version", help="model:n, model (its newest) or model@alias")
    x.add_argument("--out", "-o", type=Path, required=True, help="folder to write to (created if needed)")
    x.set_defaults(func=cmd_export)


def add_bundle_commands(sub: argparse._SubParsersAction, parents: Parents) -> None:
    b = command(sub, "bundle", "build, inspect or verify a signed bundle file").add_subparsers(
        dest="bundle_command", required=True, metavar="SUBCOMMAND")
    x = command(b, "build", "pack and sign a version's bundle (manifest + ONNX model)", parents=parents.hub,
                description="Pack VERSION's shipped model with its manifest (features, drift reference, smoke "
                            "test, lineage) into a bundle signed with the hub key, and register it.")
    x.add_argument("version", help="model:n, model (its newest) or model@alias")
    x.add_argument("--out", "-o", type=Path, default=None, help="also copy the bundle file into this folder")
    x.set_defaults(func=cmd_bundle_build)
    x = command(b, "inspect", "print a bundle's manifest (without trusting it)", parents=[parents.js])
    x.add_argument("file", type=Path, help="the bundle file (.elb)")
    x.set_defaults(func=cmd_bundle_inspect)
    x = command(b, "verify", "check signature and hashes against trusted keys "
                "(the hub key unless --key is given); exit 1 if refused", parents=parents.hub)
    x.add_argument("file", type=Path, help="the bundle file (.elb)")
    x.add_argument("--key", action="append", help="trusted public key PEM (repeat)")
    x.set_defaults(func=cmd_bundle_verify)
    x = command(b, "export", "write a signed deploy (or rollback) for air-gapped agents to one file",
                parents=parents.hub,
                description="Write FILE holding VERSION's signed bundle and one signed deploy command per --agent "
                            "(or, with --rollback, signed rollback commands to that version's bundle, which the "
                            "agents must still hold). Carry it to the device and run `edgeloop-agent install FILE`: "
                            "it is verified exactly as over MQTT (signature, target, counter, expiry, hash, smoke "
                            "test) and applied once. The commands use the hub's counter like MQTT commands: a newer "
                            "command sent to the agent before the file is installed makes the file a replay. "
                            "Commands are valid for --expires-days (default 7, the most an agent accepts). Each is "
                            "recorded as a pending deployment, settled when the agent reports after it next "
                            "reaches the broker. A version below its gate is refused unless --override-gate.")
    x.add_argument("version", nargs="?", default=None, help="model:n, model (its newest), model@alias or a bundle "
                   "sha256 (deploy)")
    x.add_argument("--rollback", metavar="TO_VERSION", default=None,
                   help="write rollback commands to this version (or bundle sha256) instead of a deploy")
    x.add_argument("--out", "-o", type=Path, required=True, help="file to write (e.g. sensor-mlp-3.airgap)")
    x.add_argument("--agent", action="append", required=True, metavar="ID",
                   help="agent the file is for (repeat; each gets its own signed command)")
    x.add_argument("--expires-days", type=float, default=7.0,
                   help="days the commands stay valid, at most 7 (default %(default)s)")
    x.add_argument("--reason", default=None, help="why (recorded with a rollback)")
    x.add_argument("--override-gate", default=None, metavar="REASON",
                   help="deploy a version below its evaluation gate anyway (audited)")
    x.add_argument("--probation", type=float, default=None, metavar="SECONDS",
                   help="deploy on the agent's dead-man switch: it reverts on its own unless the new version "
                        "passes its checks within SECONDS (no hub confirm: the device may never reach the hub)")
    x.add_argument("--min-requests", type=int, default=0, metavar="N",
                   help="with --probation: the new version must serve N real requests without failing in time")
    x.set_defaults(func=cmd_bundle_export)
