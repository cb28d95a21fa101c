"""The Fleet view: a live table of the agents (status, serving version per model, last seen, tags,
HTTP URL, drift state, health), agents found by zeroconf offered for enrollment, and the detail
page of the selected agent (its models, recent events, latency, drift).

The agents come from the window's :class:`~edgeloop.app.bridge.HubBridge` snapshots (one hub read
per refresh for every view); the drift states are read with :meth:`Hub.drift_summary` off the GUI
thread at most every ``DRIFT_EVERY_S``. The table is a :class:`KeyedTableModel` brought to each
new :class:`Table` in place (1,000+ agents scroll and update without a reset).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from PySide6.QtCore import QItemSelection, Signal, Slot
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from edgeloop.app.table_models import KeyedTableModel
from edgeloop.app.tasks import TaskRunner
from edgeloop.app.views.common import table_view
from edgeloop.hub.services import Hub
from edgeloop.hub.views import Table, ago, audit_note, stamp

__all__ = ["FLEET_VIEW_COLUMNS", "FleetView", "agent_detail", "detail_lines", "drift_states", "fleet_view_table"]

FLEET_VIEW_COLUMNS = ["agent", "status", "serving", "last seen", "tags", "http", "drift", "health"]
DRIFT_EVERY_S = 5.0  # drift states are read again at most this often (the agents table at every refresh)


def drift_states(summary: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Agent id -> its drift state from :meth:`Hub.drift_summary`: ``DRIFT: f1, f2`` or ``ok (N windows)``."""
    by_agent: dict[str, list[Mapping[str, Any]]] = {}
    for e in summary:
        by_agent.setdefault(str(e["agent_id"]), []).append(e)
    out = {}
    for aid, entries in by_agent.items():
        drifting = sorted({f for e in entries for f in (e.get("drifting_now") or [])})
        if drifting:
            out[aid] = f"DRIFT: {', '.join(drifting[:3])}" + (f" +{len(drifting) - 3}" if len(drifting) > 3 else "")
        else:
            out[aid] = f"ok ({sum(int(e.get('windows') or 0) for e in entries)} windows)"
    return out


def fleet_view_table(agents: Table, drift: Mapping[str, str] | None = None) -> Table:
    """The fleet table the CLI prints (:func:`edgeloop.hub.views.fleet_table`, as the window's
    bridge delivers it) with the drift state and health of each agent joined in."""
    drift = drift or {}
    col = {name: i for i, name in enumerate(agents.header)}
    rows = []
    for key, row in zip(agents.keys, agents.rows, strict=True):
        state = drift.get(key, "-")
        status = row[col["status"]]
        health = ("degraded (drift)" if state.startswith("DRIFT") else "ok") if status == "online" else status
        rows.append([row[col["agent"]], status, row[col["serving"]], row[col["last seen"]], row[col["tags"]],
                     row[col["http"]], state, health])
    return Table(list(FLEET_VIEW_COLUMNS), rows, list(agents.keys))


def agent_detail(hub: Hub, agent_id: str, *, rollouts: int = 10) -> dict:
    """What the detail page shows: the agent's record, its models (drift overview per model), its
    recent audited events and the latencies its last rollouts observed."""
    agent = next((a for a in hub.list_agents() if a["agent_id"] == agent_id), None)
    if agent is None:
        return {"agent": None, "models": [], "events": [], "latency": []}
    models = [e for m in hub.drift_overview(agent_id) for e in m["agents"]]
    events = hub.list_audit(20, target=agent_id)
    latency = []
    for r in hub.rollouts(limit=rollouts):
        st = hub.rollout_status(r["id"], audit=0)
        for wave in st["state"]["waves"]:
            run = wave["agents"].get(agent_id) if isinstance(wave["agents"], dict) else next(
                (x for x in wave["agents"] if x.get("id") == agent_id), None)
            obs = (run or {}).get("observation")
            if obs:
                latency.append({"rollout": r["id"], "version": f"{st['model']}:{st['version']}",
                                "p99_ms": obs.get("latency_p99_ms"), "replaced_p99_ms": obs.get("replaced_p99_ms"),
                                "requests": obs.get("requests"), "errors": obs.get("errors")})
    return {"agent": agent, "models": models, "events": events, "latency": latency}


def detail_lines(detail: Mapping[str, Any], now: float | None = None) -> list[str]:
    a = detail.get("agent")
    if a is None:
        return ["(the agent is no longer known to the hub)"]
    lines = [f"{a['agent_id']}: {a.get('status')} (last seen {ago(a.get('last_seen'), now)})",
             f"  serving: {a.get('active_model') or '-'} {a.get('active_version') or ''}  bundle "
             f"{(a.get('active_bundle') or '-')[:12]}", f"  http: {a.get('http_url') or '-'}",
             "  tags: " + (", ".join(f"{k}={v}" for k, v in sorted((a.get("tags") or {}).items())) or "-"), "",
             "models (drift):"]
    for m in detail.get("models", []):
        worst = m.get("worst") or {}
        lines.append(f"  {m['model']} {m['version']}: {m['windows']} windows, "
                     + (f"DRIFTING {', '.join(m['drifting'][:4])}" if m.get("drifting") else "no drift")
                     + (f"; worst {worst.get('name')} psi {worst.get('psi', 0):.3f}" if worst else ""))
    if not detail.get("models"):
        lines.append("  (no drift reports)")
    lines += ["", "latency (rollout observations):"]
    for x in detail.get("latency", []):
        lines.append(f"  {x['rollout']} {x['version']}: p99 {x['p99_ms']} ms (was {x['replaced_p99_ms']} ms) over "
                     f"{x['requests']} requests, {x['errors']} errors")
    if not detail.get("latency"):
        lines.append("  (none yet)")
    lines += ["", "recent events:"]
    for e in detail.get("events", []):
        note = audit_note(e)
        lines.append(f"  {stamp(e['at'])} {e['actor']}: {e['action']}" + (f" ({note})" if note else ""))
    if not detail.get("events"):
        lines.append("  (none)")
    return lines


def _found_text(d: Mapping[str, Any]) -> str:
    return (f"{d['agent_id']}  {', '.join(d.get('addresses') or [])}:{d.get('http_port')}  "
            f"broker {d.get('broker') or '?'}  " + ("(enrolled)" if d.get("enrolled") else "(not enrolled)"))


def _discover(hub: Hub, timeout: float) -> list[dict]:
    known = {a["agent_id"] for a in hub.list_agents()} | {k["agent_id"] for k in hub.list_agent_keys()}
    return [{**d, "enrolled": d["agent_id"] in known} for d in hub.discover(timeout=timeout)]


class FleetView(QWidget):
    """The agents table (refreshed by :meth:`refresh`), the detail page, zeroconf discovery."""

    failed = Signal(str)
    enroll_requested = Signal(str)  # an agent id found by zeroconf, to enroll in the Settings view
    refreshed = Signal()

    def __init__(self, hub: Hub, runner: TaskRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.hub, self.runner = hub, runner
        self.agents = KeyedTableModel(FLEET_VIEW_COLUMNS, self)
        self.table = table_view(self.agents)  # Stretch: ResizeToContents would measure 1,000 rows per change
        self.detail = QPlainTextEdit()
        self.detail.setReadOnly(True)
        self.detail.setPlaceholderText("select an agent for its models, recent events, latency and drift")
        self.found = QListWidget()
        self.discover_button = QPushButton("Find agents on the network (zeroconf)")
        # not connect(self.discover): clicked(bool) would pass checked=False as the timeout (a 0 s browse)
        self.discover_button.clicked.connect(lambda: self.discover())
        self.enroll_button = QPushButton("Enroll the selected agent…")
        self.enroll_button.setEnabled(False)
        self.enroll_button.clicked.connect(self._enroll)
        self.found.currentItemChanged.connect(lambda cur, _prev: self._can_enroll(cur))
        self.count = QLabel("")
        side = QWidget()
        sl = QVBoxLayout(side)
        sl.addWidget(QLabel("Agent detail"))
        sl.addWidget(self.detail, 3)
        sl.addWidget(self.discover_button)
        sl.addWidget(self.found, 1)
        sl.addWidget(self.enroll_button)
        split = QSplitter()
        split.addWidget(self.table)
        split.addWidget(side)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        lay = QVBoxLayout(self)
        top = QHBoxLayout()
        top.addWidget(self.count, 1)
        lay.addLayout(top)
        lay.addWidget(split, 1)
        self.table.selectionModel().selectionChanged.connect(self._selected)
        self._busy = False
        self._drift_read_at = -1e9
        self._agents: Table | None = None
        self._stale = False
        self.drift: dict[str, str] = {}
        self.selected: str | None = None

    # --- the table ------------------------------------------------------------------------
    @Slot(object)
    def set_agents(self, agents: Table) -> None:
        """A new fleet table (from the window's bridge): shown in place, drift states joined in."""
        self._agents = agents
        if not self.isVisible():  # hidden: brought up to date when shown (a 1,000-row join saved per refresh)
            self._stale = True
            return
        self.show_table(fleet_view_table(agents, self.drift))
        if time.monotonic() - self._drift_read_at > DRIFT_EVERY_S:
            self.refresh_drift()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self._stale and self._agents is not None:
            self.set_agents(self._agents)

    def refresh_drift(self) -> None:
        """Read the drift states again (at most one read at a time)."""
        if self._busy:
            return
        self._busy = True
        self._drift_read_at = time.monotonic()
        hub = self.hub
        task = self.runner.start("fleet drift", lambda _st: drift_states(hub.drift_summary()))
        task.result.connect(self._drift_read)
        task.error.connect(self.failed)
        task.finished.connect(lambda: setattr(self, "_busy", False))

    def _drift_read(self, states: dict[str, str]) -> None:
        self.drift = states
        if self._agents is not None:
            self.set_agents(self._agents)

    def show_table(self, table: Table) -> None:
        self._stale = False
        self.agents.set_table(table)
        online = sum(1 for r in table.rows if r[1] == "online")
        drifting = sum(1 for r in table.rows if r[6].startswith("DRIFT"))
        self.count.setText(f"{len(table.rows)} agents, {online} online, {drifting} drifting")
        self.refreshed.emit()

    # --- the detail page ----------------------------------------------------------------------
    def _selected(self, selected: QItemSelection, _old: QItemSelection) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self.show_agent(self.agents.keys()[rows[0].row()])

    def show_agent(self, agent_id: str) -> None:
        self.selected = agent_id
        hub = self.hub
        task = self.runner.start("agent detail", lambda _st: agent_detail(hub, agent_id))
        task.result.connect(lambda d: self.detail.setPlainText("\n".join(detail_lines(d))))
        task.error.connect(self.failed)

    # --- discovery --------------------------------------------------------------------------
    def discover(self, timeout: float = 3.0) -> None:
        self.discover_button.setEnabled(False)
        self.discover_button.setText("searching…")
        hub = self.hub
        task = self.runner.start("discover", lambda _st: _discover(hub, timeout))
        task.result.connect(self.show_found)
        task.error.connect(self.failed)
        task.finished.connect(self._discovered)

    def _discovered(self) -> None:
        self.discover_button.setEnabled(True)
        self.discover_button.setText("Find agents on the network (zeroconf)")

    @Slot(object)
    def show_found(self, found: list[dict]) -> None:
        self.found.clear()
        for d in found:
            item = QListWidgetItem(_found_text(d))
            item.setData(256, d)
            self.found.addItem(item)
        if not found:
            self.found.addItem(QListWidgetItem("no agent answered"))

    def mark_enrolled(self, agent_id: str) -> None:
        """``agent_id`` was just enrolled (the Settings view): its found entry says so and cannot be
        enrolled again (the hub would refuse the pinned id) until the next discovery reads it anew."""
        for i in range(self.found.count()):
            item = self.found.item(i)
            d = item.data(256)
            if d and d["agent_id"] == agent_id:
                d = {**d, "enrolled": True}
                item.setData(256, d)
                item.setText(_found_text(d))
        self._can_enroll(self.found.currentItem())

    def _can_enroll(self, item: QListWidgetItem | None) -> None:
        self.enroll_button.setEnabled(item is not None and not (item.data(256) or {"enrolled": True}).get("enrolled"))

    def _enroll(self) -> None:
        item = self.found.currentItem()
        if item is not None and item.data(256):
            self.enroll_requested.emit(item.data(256)["agent_id"])
