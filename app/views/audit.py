"""The Audit view: the hub's audit log (who, what, when, why), filterable by action, target,
actor and free text; read with :meth:`Hub.list_audit` off the GUI thread."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox, QVBoxLayout, QWidget

from edgeloop.app.table_models import KeyedTableModel
from edgeloop.app.tasks import Task, TaskRunner
from edgeloop.app.views.common import table_view
from edgeloop.hub.services import Hub
from edgeloop.hub.views import Table, audit_note

__all__ = ["AUDIT_VIEW_COLUMNS", "AuditView", "audit_view_table", "why_of"]

AUDIT_VIEW_COLUMNS = ["when", "who", "what", "target", "why"]


def why_of(entry: Mapping[str, Any]) -> str:
    """The reason recorded with an entry (``reason``/``why``), else the detail worth a column."""
    d = entry.get("detail") or {}
    for key in ("reason", "why", "override_reason"):
        if d.get(key):
            return str(d[key])
    note = audit_note(entry)
    if note:
        return note
    return json.dumps(d, sort_keys=True, default=str)[:160] if d else ""


def audit_view_table(entries: Iterable[Mapping[str, Any]], *, actor: str = "", text: str = "") -> Table:
    """Entries (newest first) whose actor contains ``actor`` and whose row contains ``text``."""
    rows: list[list[str]] = []
    keys: list[str] = []
    for e in entries:
        row = [time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"])), str(e["actor"]), str(e["action"]),
               str(e["target"]), why_of(e)]
        if actor and actor.lower() not in row[1].lower():
            continue
        if text and not any(text.lower() in cell.lower() for cell in row):
            continue
        keys.append(str(e.get("id", len(keys))))
        rows.append(row)
    return Table(list(AUDIT_VIEW_COLUMNS), rows, keys)


class AuditView(QWidget):
    failed = Signal(str)

    def __init__(self, hub: Hub, runner: TaskRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.hub, self.runner = hub, runner
        self.entries = KeyedTableModel(AUDIT_VIEW_COLUMNS, self)
        self.view = table_view(self.entries)
        self.action = QLineEdit()
        self.action.setPlaceholderText("action (exact), e.g. rollback.request")
        self.target = QLineEdit()
        self.target.setPlaceholderText("target (agent, version, rollout)")
        self.actor = QLineEdit()
        self.actor.setPlaceholderText("who")
        self.text = QLineEdit()
        self.text.setPlaceholderText("contains…")
        self.limit = QSpinBox()
        self.limit.setRange(10, 100_000)
        self.limit.setValue(500)
        self.count = QLabel("")
        apply = QPushButton("Filter")
        apply.clicked.connect(self.refresh)
        for edit in (self.action, self.target, self.actor, self.text):
            edit.returnPressed.connect(self.refresh)
        bar = QHBoxLayout()
        for w in (self.action, self.target, self.actor, self.text, QLabel("last"), self.limit, apply):
            bar.addWidget(w)
        lay = QVBoxLayout(self)
        lay.addLayout(bar)
        lay.addWidget(self.view, 1)
        lay.addWidget(self.count)
        self._asked = 0

    def refresh(self) -> Task:
        hub = self.hub
        action, target = self.action.text().strip() or None, self.target.text().strip() or None
        actor, text, limit = self.actor.text().strip(), self.text.text().strip(), self.limit.value()
        task = self.runner.start("audit", lambda _st: audit_view_table(
            hub.list_audit(limit, target=target, action=action), actor=actor, text=text))
        self._asked += 1
        asked = self._asked
        task.result.connect(lambda table: self._show(table) if asked == self._asked else None)  # the newest only
        task.error.connect(self.failed)
        return task

    def _show(self, table: Table) -> None:
        self.entries.set_table(table)
        self.count.setText(f"{len(table.rows)} entries")
