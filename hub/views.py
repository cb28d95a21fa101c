"""What the CLI and the GUI both show, formatted once: plain records in, rows of text out.

Each ``*_table`` returns a :class:`Table` (column names and one list of cells per row);
the CLI prints it aligned, the GUI puts it in a table model. ``gate_text`` and
``drift_lines`` give the one-line gate verdict and the drift summary as text. Keeping the
formatting here means the terminal and the window never disagree about what a column says.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # a stable id per row (agent id, version id...)


def ago(ts: float | None, now: float | None = None) -> str:
    """``"12 s ago"``, ``"5 min ago"``, ``"3 h ago"``, ``"2 d ago"`` or ``"never"``."""
    if not ts:
        return "never"
    d = (time.time() if now is None else now) - ts
    if d < 120:
        return f"{d:.0f} s ago"
    if d < 7200:
        return f"{d / 60:.0f} min ago"
    if d < 172800:
        return f"{d / 3600:.0f} h ago"
    return f"{d / 86400:.0f} d ago"


def when(ts: float | None) -> str:
    """Local date and time to the minute, or ``"-"``."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def num(value: Any, digits: int = 4) -> str:
    """A metric value for display: ``-`` for None, ``nan``, or ``digits`` significant digits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def headline(metrics: Mapping[str, Any] | None) -> str:
    """The version's main test metric, e.g. ``acc 0.916`` or ``rmse 2.310``."""
    m = metrics or {}
    for key, short in (("test_accuracy", "acc"), ("test_rmse", "rmse"), ("test_r2", "r2"), ("test_mae", "mae")):
        value = m.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return f"{short} {value:.3f}"
    return "-"


FLEET_COLUMNS = ["agent", "status", "serving", "bundle", "http", "last seen"]
MEMBERSHIP = {1: "member", 0: "foreign", None: "?"}  # agents.member: this hub's key trusted, not, undecided


def fleet_table(agents: Iterable[Mapping[str, Any]], now: float | None = None, *, membership: bool = False) -> Table:
    """One row per agent record (as :meth:`edgeloop.hub.services.Hub.list_agents` returns them);
    ``membership`` adds a ``fleet`` column (member, foreign, ``?`` for undecided), for ``--all``."""
    rows, keys = [], []
    for a in agents:
        keys.append(str(a["agent_id"]))
        row = [str(a["agent_id"]), a.get("status") or "?",
               f"{a.get('active_model') or '-'} {a.get('active_version') or ''}".strip(),
               (a.get("active_bundle") or "-")[:12], a.get("http_url") or "-", ago(a.get("last_seen"), now)]
        rows.append(row + [MEMBERSHIP.get(a.get("member"), "?")] if membership else row)
    return Table(list(FLEET_COLUMNS) + (["fleet"] if membership else []), rows, keys)


def freshness_line(listening: Mapping[str, Any], now: float | None = None) -> str:
    """How fresh the fleet view is, from :meth:`edgeloop.hub.services.Hub.listening`: ``hub listening
    since ...``, or ``no hub has listened since ...; agent states may be stale (run ...)``."""
    if listening.get("listening"):
        return (f"hub listening since {stamp(listening['since'])} ({ago(listening['since'], now)}; "
                f"pid {listening['pid']} on {listening['host']}, {listening['broker']}, "
                f"topics under {listening['topic_root']}/)")
    last = listening.get("last_listened_at")
    stale = "agent states may be stale"
    if listening.get("running"):
        return (f"the hub runtime (pid {listening['pid']} on {listening['host']}) cannot reach the broker "
                f"{listening['broker']}" + (f"; it last listened at {stamp(last)} ({ago(last, now)})" if last else "")
                + f"; {stale}")
    if last:
        return f"no hub has listened since {stamp(last)} ({ago(last, now)}); {stale} (run `edgeloop hub serve`)"
    return f"no hub has listened yet; {stale} (run `edgeloop hub serve`)"


def stamp(ts: float | None) -> str:
    """Local date and time to the second, or ``"-"``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


VERSION_COLUMNS = ["version", "run", "test", "ships", "int8_dpt", "aliases", "parent", "bundle", "created"]


def version_table(versions: Iterable[Mapping[str, Any]], bundles: Sequence[Mapping[str, Any]] = ()) -> Table:
    """One row per version record; ``bundles`` (newest first) fills the bundle column."""
    newest: dict[str, str] = {}
    for b in bundles:
        newest.setdefault(str(b["version_id"]), str(b["sha256"]))
    rows, keys = [], []
    for v in versions:
        rep = (v.get("quantization") or {}).get("report") or {}
        delta = rep.get("accuracy_delta_points")
        keys.append(str(v["id"]))
        rows.append([str(v["id"]), str(v["run_id"]), headline(v.get("metrics")), str(v["chosen"]),
                     f"{delta:+.2f}" if isinstance(delta, int | float) else "-",
                     ",".join(v.get("aliases") or []) or "-", v.get("parent_version") or "-",
                     newest.get(str(v["id"]), "-")[:12], when(v.get("created_at"))])
    return Table(list(VERSION_COLUMNS), rows, keys)


DATASET_COLUMNS = ["dataset", "name", "rows", "features", "labels", "runs", "added"]


def dataset_table(datasets: Iterable[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]] = ()) -> Table:
    """One row per dataset record; ``runs`` (run records) fills the runs column."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[str(r["dataset_id"])] = counts.get(str(r["dataset_id"]), 0) + 1
    rows, keys = [], []
    for d in datasets:
        keys.append(str(d["id"]))
        rows.append([str(d["id"]), str(d.get("name", "")), str(d["rows"]), str(len(d.get("features") or [])),
                     ",".join(map(str, d.get("labels") or [])) or "-", str(counts.get(str(d["id"]), 0)),
                     when(d.get("created_at"))])
    return Table(list(DATASET_COLUMNS), rows, keys)


AUDIT_COLUMNS = ["at", "actor", "action", "target", "detail"]


def audit_table(entries: Iterable[Mapping[str, Any]]) -> Table:
    """One row per audit entry (newest first, as :meth:`Hub.list_audit` returns them)."""
    rows, keys = [], []
    for e in entries:
        keys.append(str(e.get("id", "")))
        rows.append([time.strftime("%m-%d %H:%M:%S", time.localtime(e["at"])), str(e["actor"]), str(e["action"]),
                     str(e["target"]), audit_note(e)])
    return Table(list(AUDIT_COLUMNS), rows, keys)


def audit_note(entry: Mapping[str, Any]) -> str:
    """The detail worth a column: an override's reason, an alias move."""
    d = entry.get("detail") or {}
    if entry["action"] == "gate.override":
        return f"{d.get('purpose', '')}: {d.get('reason', '')}"
    if str(entry["action"]).startswith("alias."):
        move = f"{d.get('previous') or '-'} -> {d.get('version') or '-'}"
        return move + (f" ({d['reason']})" if d.get("reason") else "")
    return ""


def gate_text(check: Mapping[str, Any]) -> str:
    """A gate check in one line: ``passed (test_accuracy 0.93 >= 0.9 ok)`` or ``FAILED (...)``."""
    parts = [f"{c['metric']} {num(c['value'])} {'>=' if c['bound'] == 'min' else '<='} {num(c['threshold'])}"
             f" {'ok' if c['passed'] else 'FAIL'}" for c in check["checks"]]
    return ("passed" if check["passed"] else "FAILED") + " (" + "; ".join(parts) + ")"


def drift_lines(summary: Iterable[Mapping[str, Any]], now: float | None = None) -> list[str]:
    """Per (agent, model, version) drift summary entry: a headline and one line per flagged feature."""
    lines = []
    for s in summary:
        flagged = s.get("drifted_features") or {}
        lines.append(f"{s['agent_id']}  {s['model']}:{s['version']}  {s['windows']} windows, {s['rows']} rows, "
                     f"{'DRIFTING' if s.get('drifting_now') else 'stable'} (last window "
                     f"{ago(s.get('last_received_at'), now)})")
        for name, n in flagged.items():
            lines.append(f"    {name:<16} flagged in {n} window(s), max PSI {s['max_psi'].get(name, 0):.2f}")
        if not flagged:
            lines.append("    no feature flagged")
    return lines
