"""``edgeloop rollout start|status|list|pause|resume|approve|abort``: rollouts with quality gates.

A thin face over :class:`edgeloop.hub.services.rollouts.HubRollouts`. The hub runtime
(``edgeloop hub serve``) drives the rollouts; these commands store what the operator asks in the
registry and print what the runtime answered, so they work from any shell on the hub's machine.
``status ID --watch`` (and ``start --watch``) redraws the progress view until the rollout ends.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from edgeloop.hub.cli.common import Parents, UsageError, command, open_hub
from edgeloop.hub.cli.render import emit, text_table
from edgeloop.hub.rollout.plan import FAILURE_POLICIES, RAMPS, STRATEGIES
from edgeloop.hub.rollout.state import TERMINAL

COLUMNS = ("pending", "transferring", "verifying", "baking", "healthy", "failed", "timed_out", "rolled_back")
FINAL_OR_STUCK = (*TERMINAL, "halted", "awaiting_approval")


def progress_lines(status: dict, audit: int = 5) -> list[str]:
    """The progress view: the rollout, then per wave targeted and how many agents are in each status."""
    plan = status.get("plan") or {}
    head = (f"{status['id']}  {status['model']}:{status['version']} -> {status['target']}  "
            f"[{status['status'].upper()}]  strategy {plan.get('strategy', '?')}, "
            f"bake {plan.get('bake_seconds', '?')} s, on failure {plan.get('failure_policy', '?')}")
    lines = [head]
    device = device_line(plan)
    if device:
        lines.append(device)
    if status.get("reason"):
        lines.append(f"reason: {status['reason']}")
    waves = (status.get("summary") or {}).get("waves", [])
    rows = [[w["name"], w["status"], w["targeted"], *(w.get(c, 0) for c in COLUMNS)] for w in waves]
    lines += text_table(rows, ["wave", "status", "targeted", *COLUMNS]) or ["(no wave started)"]
    bad = [a for w in (status.get("state") or {}).get("waves", []) for a in w["agents"]
           if a["status"] in ("failed", "timed_out") or (a["status"] == "rolled_back" and a.get("reason"))]
    for a in bad[:10]:
        lines.append(f"  {a['id']}: {a['status']}: {a.get('reason') or ''}")
    if len(bad) > 10:
        lines.append(f"  ... and {len(bad) - 10} more")
    for r in (status.get("audit") or [])[-audit:]:
        lines.append(f"  {time.strftime('%H:%M:%S', time.localtime(r['at']))} {r['actor']}: {r['what']}"
                     + (f" ({r['why']})" if r.get("why") else ""))
    if status["status"] == "awaiting_approval":
        lines.append(f"next: edgeloop rollout approve {status['id']}")
    elif status["status"] == "halted":
        lines.append(f"next: edgeloop rollout abort {status['id']} [--rollback]")
    return lines


def device_line(plan: dict) -> str:
    """What the rollout sends each device beside the bundle: probation, drift windows, capture."""
    parts = []
    if plan.get("probation_seconds") is not None:
        parts.append(f"probation {plan['probation_seconds']:g} s"
                     + (f", {plan['probation_min_requests']} requests" if plan.get("probation_min_requests") else "")
                     + (", hub confirms" if plan.get("require_confirm") else ""))
    if plan.get("drift"):
        parts.append("drift windows " + " ".join(f"{k}={v}" for k, v in plan["drift"].items()))
    if plan.get("capture"):
        parts.append("capture " + " ".join(f"{k}={v}" for k, v in plan["capture"].items()))
    return ("devices: " + "; ".join(parts)) if parts else ""


def _watch(args: argparse.Namespace, hub: Any, rollout_id: str) -> dict:
    """Redraw the progress view every ``--interval`` s until the rollout ends, halts or awaits approval."""
    tty = sys.stdout.isatty() and not args.json
    while True:
        status = hub.rollout_status(rollout_id)
        if not args.json:
            if tty:
                print("\033[H\033[J", end="")
            print("\n".join(progress_lines(status)), flush=True)
            if not tty:
                print(flush=True)
        if status["status"] in FINAL_OR_STUCK:
            return status
        time.sleep(args.interval)


def _plan_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The plan fields given on the command line (those left out take the plan's defaults)."""
    doc: dict[str, Any] = {}
    if args.plan is not None:
        try:
            doc = json.loads(Path(args.plan).read_text("utf-8"))
        except json.JSONDecodeError as exc:
            raise UsageError(f"{args.plan} is not JSON ({exc}); see docs/rollouts.md for the plan format") from exc
    simple = {"strategy": args.strategy, "ramp": args.ramp, "bake_seconds": args.bake,
              "agent_timeout_seconds": args.agent_timeout, "failure_policy": args.on_failure,
              "memory_limit_mb": args.memory_limit_mb}
    doc.update({k: v for k, v in simple.items() if v is not None})
    if args.canary is not None:
        doc.update(canary_agents=args.canary, canary_percent=None)
    if args.canary_percent is not None:
        doc.update(canary_percent=args.canary_percent, canary_agents=None)
    if args.waves is not None:
        doc.update(wave_sizes=[int(x) for x in args.waves.split(",") if x.strip()], ramp=doc.get("ramp", "sizes"))
    if args.percents is not None:
        doc.update(wave_percents=[float(x) for x in args.percents.split(",") if x.strip()],
                   ramp=doc.get("ramp", "percents"))
    if args.approval:
        doc["approval_required"] = True
    if args.exclude_late_joiners:
        doc["late_joiners"] = "exclude"
    _device_fields(args, doc)
    gates = dict(doc.get("gates") or {})
    for name, value in (("min_requests", args.min_requests), ("max_error_rate", args.max_error_rate),
                        ("max_p99_ratio", args.max_p99_ratio), ("min_shadow_agreement", args.min_shadow_agreement),
                        ("min_shadow_requests", args.min_shadow_requests),
                        ("max_estimate_drop", args.max_estimate_drop), ("min_estimate_rows", args.min_estimate_rows)):
        if value is not None:
            gates[name] = value
    if args.no_drift:
        gates["no_drift"] = True
    if args.skip_smoke:
        gates["install_and_smoke"] = False
    doc["gates"] = gates
    return doc


def _device_fields(args: argparse.Namespace, doc: dict[str, Any]) -> None:
    """--probation ..., --drift-window-* and --capture ... into the plan's device fields."""
    if args.probation is not None:
        doc["probation_seconds"] = args.probation
    if args.probation_min_requests is not None:
        doc["probation_min_requests"] = args.probation_min_requests
    if args.require_confirm:
        doc["require_confirm"] = True
    drift = dict(doc.get("drift") or {})
    for key, value in (("rows", args.drift_window_rows), ("seconds", args.drift_window_seconds),
                       ("min_rows", args.drift_min_rows), ("consecutive", args.drift_consecutive)):
        if value is not None:
            drift[key] = value
    if drift:
        doc["drift"] = drift
    capture = dict(doc.get("capture") or {})
    if args.capture:
        capture["enabled"] = True
    for key, value in (("max_rows", args.capture_max_rows), ("max_bytes", args.capture_max_bytes),
                       ("upload_rows", args.capture_upload_rows)):
        if value is not None:
            capture[key] = value
    if capture:
        doc["capture"] = capture


def cmd_start(args) -> int:
    fields = _plan_fields(args)
    model, version, target = fields.pop("model", None), fields.pop("version", None), fields.pop("target", None)
    ref = args.version or (f"{model}:{version}" if model and version else version)
    target = args.target or target
    if not ref or not target:
        raise UsageError("give the version and the target: edgeloop rollout start MODEL:N --target T "
                         "(or a --plan naming model, version and target)")
    with open_hub(args) as hub:
        status = hub.rollout_start(hub.rollout_plan(ref, target, **fields), override_reason=args.override_gate)
        if args.watch:
            status = _watch(args, hub, status["id"])
    if args.json or not args.watch:
        emit(args, status, progress_lines(status))
    return 0


def cmd_status(args) -> int:
    with open_hub(args) as hub:
        if args.watch:
            status = _watch(args, hub, args.id)
            if args.json:
                emit(args, status, [])
            return 0
        status = hub.rollout_status(args.id, audit=args.audit)
    emit(args, status, progress_lines(status, audit=args.audit))
    return 0


def cmd_list(args) -> int:
    with open_hub(args) as hub:
        rows = hub.rollouts(active_only=args.active, limit=args.limit)

    def healthy(r: dict) -> str:
        waves = (r.get("summary") or {}).get("waves", [])
        return " ".join(f"{w['name']}:{w['healthy']}/{w['targeted']}" for w in waves)

    table = [[r["id"], f"{r['model']}:{r['version']}", r["target"], r["status"], healthy(r),
              time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"]))] for r in rows]
    emit(args, rows, text_table(table, ["id", "version", "target", "status", "healthy per wave", "started"]))
    return 0


def _operator(name: str):
    def run(args) -> int:
        kw: dict[str, Any] = {"why": args.why or ""}
        if name == "abort":
            kw["rollback"] = args.rollback
        with open_hub(args) as hub:
            status = getattr(hub, f"rollout_{name}")(args.id, **kw)
        emit(args, status, progress_lines(status))
        return 0
    return run


def add_commands(sub, parents: Parents) -> None:
    p = command(sub, "rollout", "roll a version out to agents in gated waves",
                "Roll a version out in waves (canary first), each baking under quality gates; a failed gate\n"
                "halts the rollout and, by policy, rolls the wave or everything back. The hub runtime\n"
                "(`edgeloop hub serve`) drives rollouts; see docs/rollouts.md and the operator guide.")
    rs = p.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")

    s = command(rs, "start", "start a rollout", parents=parents.hub)
    s.add_argument("version", nargs="?", help="the version: model:n, model@alias or model (its newest)")
    s.add_argument("--target", help="which agents: id:pi-01, site=plant-a,hw=pi5, !legacy, -id:pi-07 ...")
    s.add_argument("--plan", type=Path, help="a plan as JSON (docs/rollouts.md); options given here override it")
    s.add_argument("--strategy", choices=STRATEGIES)
    s.add_argument("--canary", type=int, metavar="N", help="canary size in agents (default 1)")
    s.add_argument("--canary-percent", type=float, metavar="P", help="canary size in percent of the targets")
    s.add_argument("--ramp", choices=RAMPS, help="after the canary: rest, sizes, percents or double")
    s.add_argument("--waves", metavar="N,N", help="wave sizes after the canary (ramp sizes)")
    s.add_argument("--percents", metavar="P,P", help="cumulative percents of the targets (ramp percents)")
    s.add_argument("--bake", type=float, metavar="S", help="bake seconds per wave")
    s.add_argument("--agent-timeout", type=float, metavar="S", help="an agent without progress this long times out")
    s.add_argument("--min-requests", type=int, metavar="N", help="gate: requests served before judging")
    s.add_argument("--max-error-rate", type=float, metavar="R", help="gate: errors / requests at most (0..1)")
    s.add_argument("--max-p99-ratio", type=float, metavar="X", help="gate: p99 latency / the replaced version's")
    s.add_argument("--no-drift", action="store_true", help="gate: any drift flag fails the agent")
    s.add_argument("--min-shadow-agreement", type=float, metavar="A", help="gate: shadow agreement at least (0..1)")
    s.add_argument("--min-shadow-requests", type=int, metavar="N", help="gate: shadow requests compared first")
    s.add_argument("--max-estimate-drop", type=float, metavar="D",
                   help="gate: the estimated accuracy (no labels needed) may fall at most D below the live model's "
                        "or the reference's, beyond its interval (docs/performance-estimation.md)")
    s.add_argument("--min-estimate-rows", type=int, metavar="N", help="gate: rows behind the estimate first")
    s.add_argument("--skip-smoke", action="store_true", help="do not gate on the install and smoke test")
    s.add_argument("--on-failure", choices=FAILURE_POLICIES, help="halt, rollback_wave (default) or rollback_all")
    s.add_argument("--approval", action="store_true", help="wait for `rollout approve` after each passed wave")
    s.add_argument("--exclude-late-joiners", action="store_true", help="never touch agents that match later")
    s.add_argument("--memory-limit-mb", type=int, metavar="MB", help="passed to the agents' pre-flight")
    s.add_argument("--probation", type=float, metavar="S",
                   help="each device reverts on its own unless healthy within S seconds (dead-man switch)")
    s.add_argument("--probation-min-requests", type=int, metavar="N", help="probation: requests served first")
    s.add_argument("--require-confirm", action="store_true",
                   help="probation: the device also waits for the hub's confirm, sent once its gates pass")
    s.add_argument("--drift-window-rows", type=int, metavar="N", help="each device closes drift windows at N rows")
    s.add_argument("--drift-window-seconds", type=float, metavar="S", help="... or S s after their first row")
    s.add_argument("--drift-min-rows", type=int, metavar="N", help="drift windows under N rows are not judged")
    s.add_argument("--drift-consecutive", type=int, metavar="K", help="a feature drifts after K flagged windows")
    s.add_argument("--capture", action="store_true", help="turn capture of field data on on each device")
    s.add_argument("--capture-max-rows", type=int, metavar="N", help="capture: sample size in rows")
    s.add_argument("--capture-max-bytes", type=int, metavar="B", help="capture: sample size in bytes")
    s.add_argument("--capture-upload-rows", type=int, metavar="N", help="capture: cut a batch every N rows served")
    s.add_argument("--override-gate", metavar="WHY", help="deploy a version below its evaluation gate (recorded)")
    s.add_argument("--watch", action="store_true", help="show the progress until the rollout ends or stops")
    s.add_argument("--interval", type=float, default=1.0, help="--watch redraw interval (s)")
    s.set_defaults(func=cmd_start)

    st = command(rs, "status", "a rollout's progress per wave", parents=parents.hub)
    st.add_argument("id")
    st.add_argument("--watch", action="store_true", help="redraw until the rollout ends, halts or awaits approval")
    st.add_argument("--interval", type=float, default=1.0)
    st.add_argument("--audit", type=int, default=10, help="audit records shown (default %(default)s)")
    st.set_defaults(func=cmd_status)

    ls = command(rs, "list", "rollouts, newest first", parents=parents.hub)
    ls.add_argument("--active", action="store_true", help="only those in progress or halted")
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(func=cmd_list)

    for name, text in (("pause", "no new wave starts until resumed"), ("resume", "resume a paused rollout"),
                       ("approve", "start the next wave of a rollout awaiting approval"),
                       ("abort", "stop a rollout (--rollback: return its agents to their previous version)")):
        o = command(rs, name, text, parents=parents.hub)
        o.add_argument("id")
        o.add_argument("--why", default="", help="recorded in the rollout's audit")
        if name == "abort":
            o.add_argument("--rollback", action="store_true", help="also roll back every agent that got it")
        o.set_defaults(func=_operator(name))
