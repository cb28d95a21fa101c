"""What the CLI and the GUI both show, formatted once: plain records in, rows of text out.

Each ``*_table`` returns a :class:`Table` (column names and one list of cells per row);
the CLI prints it aligned, the GUI puts it in a table model. Keeping the formatting here
means the terminal and the window never disagree about what a column says.
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


def fleet_table(agents: Iterable[Mapping[str, Any]], now: float | None = None) -> Table:
    """One row per agent record (as :meth:`edgeloop.hub.services.Hub.list_agents` returns them)."""
    rows, keys = [], []
    for a in agents:
        keys.append(str(a["agent_id"]))
        rows.append([str(a["agent_id"]), a.get("status") or "?",
                     f"{a.get('active_model') or '-'} {a.get('active_version') or ''}".strip(),
                     (a.get("active_bundle") or "-")[:12], a.get("http_url") or "-", ago(a.get("last_seen"), now)])
    return Table(list(FLEET_COLUMNS), rows, keys)


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
