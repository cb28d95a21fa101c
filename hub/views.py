"""What the CLI and the GUI both show, formatted once: plain records in, rows of text out.

Each ``*_table`` returns a :class:`Table` (column names and one list of cells per row);
the CLI prints it aligned, the GUI puts it in a table model. ``gate_text`` and
``drift_lines`` give the one-line gate verdict and the drift summary as text;
``drift_overview_lines`` the fleet's drift per model and agent (``edgeloop drift``). Keeping the
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


FLEET_COLUMNS = ["agent", "status", "serving", "bundle", "http", "tags", "last seen"]
MEMBERSHIP = {1: "member", 0: "foreign", None: "?"}  # agents.member: this hub's key trusted, not, undecided


def fleet_table(agents: Iterable[Mapping[str, Any]], now: float | None = None, *, membership: bool = False) -> Table:
    """One row per agent record (as :meth:`edgeloop.hub.services.Hub.list_agents` returns them);
    ``membership`` adds a ``fleet`` column (member, foreign, ``?`` for undecided), for ``--all``."""
    rows, keys = [], []
    for a in agents:
        keys.append(str(a["agent_id"]))
        row = [str(a["agent_id"]), a.get("status") or "?",
               _serving(a), ", ".join((m.get("bundle_sha256") or "-")[:12] for m in a.get("models") or [])
               or (a.get("active_bundle") or "-")[:12], a.get("http_url") or "-",
               ",".join(f"{k}={v}" for k, v in sorted((a.get("tags") or {}).items())) or "-",
               ago(a.get("last_seen"), now)]
        rows.append(row + [MEMBERSHIP.get(a.get("member"), "?")] if membership else row)
    return Table(list(FLEET_COLUMNS) + (["fleet"] if membership else []), rows, keys)


def _serving(agent: Mapping[str, Any]) -> str:
    """What an agent serves: ``model version`` of each of its models (several models per agent)."""
    models = agent.get("models") or []
    if models:
        return ", ".join(f"{m.get('model')} {m.get('version') or ''}".strip() for m in models)
    return f"{agent.get('active_model') or '-'} {agent.get('active_version') or ''}".strip()


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
             f" {'ok' if c['passed'] else 'FAIL'}" + (f" on {c['rows']} rows" if c.get("rows") is not None else "")
             for c in check["checks"]]
    return ("passed" if check["passed"] else "FAILED") + " (" + "; ".join(parts) + ")"


EVALUATION_COLUMNS = ["eval", "version", "model", "dataset", "rows", "scores", "when"]
_EVAL_SCORES = ("accuracy", "macro_f1", "mae", "rmse", "r2")


def evaluation_table(evaluations: Iterable[Mapping[str, Any]], chosen: Mapping[str, str] | None = None) -> Table:
    """One row per evaluation record (``edgeloop eval``); ``chosen`` (version id -> the artifact it
    ships) marks the shipped model with ``*``."""
    rows, keys = [], []
    for e in evaluations:
        keys.append(str(e["id"]))
        m = e.get("metrics") or {}
        shipped = "*" if chosen and chosen.get(str(e["version_id"])) == e["artifact"] else ""
        rows.append([str(e["id"]), str(e["version_id"]), f"{e['artifact']}{shipped}",
                     f"{e.get('dataset_name') or '-'} ({e.get('dataset_id') or str(e['dataset_sha256'])[:12]})",
                     str(e["rows"]), "  ".join(f"{k} {num(m[k])}" for k in _EVAL_SCORES if k in m),
                     when(e.get("created_at"))])
    return Table(list(EVALUATION_COLUMNS), rows, keys)


DRIFT_GROUPS_SHOWN = 12  # flagged channels (features) listed per entry; --json has all of them
DRIFT_MEMBERS_SHOWN = 6  # flagged summaries (older references: time steps) named per channel


def _member_key(group: str, name: str, natural_key: Any) -> tuple:
    """A channel's summaries in their own order (mean, std, min, max, energy, values), other names naturally."""
    from edgeloop.agent.wire.manifest import DRIFT_SUMMARIES

    tail = name[len(group) + 1:] if name.startswith(group + ".") else None
    if tail in DRIFT_SUMMARIES:
        return (0, DRIFT_SUMMARIES.index(tail))
    return (1, natural_key(name))


def drift_lines(summary: Iterable[Mapping[str, Any]], now: float | None = None,
                limit: int = DRIFT_GROUPS_SHOWN) -> list[str]:
    """Per (agent, model, version) drift summary entry: a headline and one line per flagged channel
    (windows: ``ch0.mean`` ... grouped by channel) or feature (tables), in natural order
    (``ch2`` before ``ch10``), at most ``limit`` of them, then how many more were flagged."""
    from edgeloop.agent.drift import feature_group, natural_key

    lines = []
    for s in summary:
        flagged = s.get("drifted_features") or {}
        max_psi = s.get("max_psi") or {}
        lines.append(f"{s['agent_id']}  {s['model']}:{s['version']}  {s['windows']} windows, {s['rows']} rows, "
                     f"{'DRIFTING' if s.get('drifting_now') else 'stable'} (last window "
                     f"{ago(s.get('last_received_at'), now)})")
        groups: dict[str, list[str]] = {}
        for name in flagged:
            groups.setdefault(feature_group(name), []).append(name)
        for group in sorted(groups, key=natural_key)[:limit]:
            names = sorted(groups[group], key=lambda n: _member_key(group, n, natural_key))
            windows = max(flagged[n] for n in names)
            worst = max(float(max_psi.get(n, 0.0)) for n in names)
            parts = [f"{n[len(group) + 1:] if n.startswith(group + '.') else n} {flagged[n]}" for n in names]
            if len(parts) > DRIFT_MEMBERS_SHOWN:
                parts = [*parts[:DRIFT_MEMBERS_SHOWN], f"+{len(parts) - DRIFT_MEMBERS_SHOWN} more"]
            detail = "" if names == [group] else f" ({', '.join(parts)})"
            lines.append(f"    {group:<16} flagged in {windows} window(s), max PSI {worst:.2f}{detail}")
        if len(groups) > limit:
            lines.append(f"    ... and {len(groups) - limit} more flagged (see --json)")
        if not flagged:
            lines.append("    no feature flagged")
    return lines


def _grouped(names: Iterable[str], limit: int = DRIFT_GROUPS_SHOWN) -> str:
    """Features by channel (``ch1 (mean, values)``), natural order; tables: the names; at most ``limit`` groups."""
    from edgeloop.agent.drift import feature_group, natural_key

    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(feature_group(name), []).append(name)
    parts = []
    for group in sorted(groups, key=natural_key)[:limit]:
        members = sorted(groups[group], key=lambda n: _member_key(group, n, natural_key))
        tails = [n[len(group) + 1:] if n.startswith(group + ".") else n for n in members]
        parts.append(group if members == [group] else f"{group} ({', '.join(tails[:DRIFT_MEMBERS_SHOWN])}"
                     f"{', ...' if len(tails) > DRIFT_MEMBERS_SHOWN else ''})")
    more = len(groups) - limit
    return ", ".join(parts) + (f", +{more} more" if more > 0 else "")


def _trend(entry: Mapping[str, Any]) -> str:
    """Features flagged per window, oldest first; ``-`` for a window with too few rows to judge."""
    return " ".join("-" if st != "ok" else str(n)
                    for n, st in zip(entry.get("trend", []), entry.get("trend_status", []), strict=False))


def _stat_text(f: Mapping[str, Any]) -> str:
    p = f.get("p_value")
    return f"PSI {f['psi']:.3f} KS {f['ks']:.3f}" + (f" p {p:.1e}" if p is not None else "")


def drift_controls_text(controls: Mapping[str, Any]) -> str:
    """The false-alarm controls an agent judged its windows with, in words."""
    alpha, k, min_rows = controls.get("alpha"), controls.get("consecutive") or 1, controls.get("min_rows")
    parts = [f"alpha {alpha:g} per window over {controls.get('features_tested', 0)} features (Holm)"
             if alpha is not None else "no family-wise control (older agent)",
             f"drifted after {k} flagged window{'s' if k != 1 else ''} in a row"]
    if min_rows:
        parts.append(f"windows under {min_rows} rows not judged")
    return "false alarms: " + ", ".join(parts)


def drift_overview_lines(overview: Iterable[Mapping[str, Any]], now: float | None = None, *,
                         detail: bool = False) -> list[str]:
    """``Hub.drift_overview`` as text: per model a headline and its controls, per agent a summary
    (drifted and flagged features by channel, worst statistic, trend); ``detail`` adds a line per feature."""
    lines = []
    for model in overview:
        agents = model["agents"]
        lines.append(f"{model['model']}: {len(agents)} agent(s), {model['agents_drifting']} drifting")
        controls = {drift_controls_text(a["controls"]) for a in agents}
        lines.extend(f"  {c}" for c in sorted(controls))
        for a in agents:
            state = "DRIFTING" if a["alarm"] else ("flagged" if a["flagged"] else "stable")
            few = f" ({a['too_few_rows']} with too few rows)" if a["too_few_rows"] else ""
            lines.append(f"  {a['agent_id']}  v{a['version']}  {state}  {a['windows']} windows{few}, {a['rows']} rows, "
                         f"last {ago(a.get('last_received_at'), now)}")
            if a["drifting"]:
                lines.append(f"    drifted: {_grouped(a['drifting'])}")
            newly = [n for n in a["flagged"] if n not in a["drifting"]]
            if newly:
                lines.append(f"    flagged in the last window only: {_grouped(newly)}")
            if a["worst"] is not None:
                lines.append(f"    worst: {a['worst']['name']} {_stat_text(a['worst'])}")
            if a["output"] is not None:
                o = a["output"]
                verdict = "DRIFTED" if o["drifted"] else ("flagged" if o["flagged"] else "stable")
                lines.append(f"    output (prediction): {verdict}, {_stat_text(o)}, mean {num(o.get('mean'))}")
            elif a.get("output_js") is not None:
                lines.append(f"    predicted classes: JS {a['output_js']:.3f} from the reference shares")
            if a["missing"] or a["out_of_range"]:
                lines.append(f"    last window: {a['missing']} missing, {a['out_of_range']} out-of-range values")
            lines.append(f"    trend (features flagged per window, oldest first): {_trend(a)}")
            if a.get("performance"):
                lines.extend(_accuracy_lines(a["performance"]))
            if detail:
                lines.extend(_feature_lines(a["features"]))
    return lines


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):.1f}%"


def _accuracy_lines(p: Mapping[str, Any]) -> list[str]:
    """A calibrated classifier's estimated accuracy (no labels) beside the realized one (feedback labels)."""
    state = "BELOW REFERENCE" if p.get("flagged") else "ok"
    line = (f"    accuracy estimate {_pct(p.get('accuracy'))} ({_pct(p.get('low'))}-{_pct(p.get('high'))}), "
            f"reference {_pct(p.get('reference'))} (measured {_pct(p.get('reference_measured'))}): {state}")
    if p.get("realized") is not None:
        line += f"; realized {_pct(p['realized'])} on {p.get('labelled')} labels"
    out = [line, "    accuracy trend, estimate/realized (oldest first): " + " ".join(
        f"{_pct(e)}/{_pct(r)}" for e, r in zip(p.get("trend_estimate") or [], p.get("trend_realized") or [],
                                             strict=False))]
    if p.get("mean_abs_error") is not None:
        out.append(f"    estimate error over {p['labelled_windows']} labelled window(s): mean "
                   f"{100 * p['mean_error']:+.1f} pt, mean absolute {100 * p['mean_abs_error']:.1f} pt")
    return out


def _feature_lines(features: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per feature, in the reference's order (channel by channel)."""
    out = []
    for name, f in features.items():
        mark = "DRIFTED" if f["drifted"] else ("flagged" if f["flagged"] else "-")
        extra = "".join(f", {f[k]} {k.replace('_', '-')}" for k in ("missing", "out_of_range") if f.get(k))
        out.append(f"      {name:<16} {mark:<8} {_stat_text(f)}, streak {f.get('streak') or 0}, "
                   f"drifted in {f['windows_drifted']} window(s){extra}")
    return out


def window_grid(names: Sequence[str]) -> tuple[int, int] | None:
    """``(channels, steps)`` when ``names`` are exactly the ``ch{c}_t{t}`` names of a complete window grid."""
    from edgeloop.hub.datasets.windows import parse_window_column, window_feature_names

    parsed = [parse_window_column(str(n)) for n in names]
    if not parsed or any(p is None for p in parsed):
        return None
    channels = max(p[0] for p in parsed if p is not None) + 1
    steps = max(p[1] for p in parsed if p is not None) + 1
    wanted = window_feature_names(channels, steps)
    return (channels, steps) if len(names) == len(wanted) and set(map(str, names)) == set(wanted) else None


def feature_summary(names: Sequence[str], window_shape: Sequence[int] | None = None, *, limit: int = 8) -> str:
    """Features for a person to read: window data (``window_shape``, else detected from
    ``ch{c}_t{t}`` names) as ``windows of 3 channels × 32 steps (ch0, ch1, ch2; 96 values)``,
    a table as ``6: temp, vibration, ...``. ``--json`` output keeps the full list."""
    shape = tuple(int(v) for v in window_shape) if window_shape else window_grid(names)
    if shape is not None and len(shape) == 2:
        channels, steps = shape
        chans = [f"ch{c}" for c in range(channels)]
        shown = ", ".join(chans) if channels <= limit else f"{', '.join(chans[:limit - 1])}, ..., {chans[-1]}"
        return (f"windows of {channels} channel{'s' if channels != 1 else ''} × {steps} steps "
                f"({shown}; {channels * steps} values)")
    return f"{len(names)}: {', '.join(map(str, names))}"


def warning_lines(warnings: Iterable[Mapping[str, Any]] | None, indent: str = "  ") -> list[str]:
    """A dataset's warnings (``{"rule", "detail", ...}`` records) as ``warning [rule] detail`` lines."""
    return [f"{indent}warning  [{w.get('rule', '?')}] {w.get('detail', '')}" for w in warnings or ()]
