"""The first operator window: registry versions and fleet agents, refreshed off the GUI thread.

Widgets never touch SQLite or MQTT: a :class:`HubBridge` calls the hub services
in a worker thread and hands results back with Qt signals.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QApplication,
    QHeaderView,
    QLabel,
    QMainWindow,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from edgeloop.hub.services import Hub

VERSION_COLUMNS = ["Version", "Run", "Test accuracy", "Ships", "int8 Δ (pt)", "Created"]
AGENT_COLUMNS = ["Agent", "Status", "Serving", "Bundle", "HTTP", "Last seen"]


class _Job(QRunnable):
    def __init__(self, fn, done) -> None:
        super().__init__()
        self.fn, self.done = fn, done

    def run(self) -> None:
        try:
            self.done(self.fn(), None)
        except Exception as exc:  # reported in the status bar
            self.done(None, exc)


class HubBridge(QObject):
    """Runs hub service calls on a thread pool; results arrive as signals on the GUI thread."""

    snapshot = Signal(list, list)
    failed = Signal(str)

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.hub = hub
        self.pool = QThreadPool.globalInstance()

    def _load(self):
        from edgeloop.hub.registry import Registry

        reg = Registry(self.hub.home.registry_path)  # one connection per thread
        try:
            versions = reg.list_versions()
            agents = reg.list_agents()
        finally:
            reg.close()
        return versions, agents

    @Slot()
    def refresh(self) -> None:
        def done(result, exc):
            if exc is not None:
                self.failed.emit(str(exc))
            else:
                self.snapshot.emit(*result)

        self.pool.start(_Job(self._load, done))


def _fill(table: QTableWidget, rows: list[list[str]]) -> None:
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, val in enumerate(row):
            table.setItem(r, c, QTableWidgetItem(str(val)))


def _table(columns: list[str]) -> QTableWidget:
    t = QTableWidget(0, len(columns))
    t.setHorizontalHeaderLabels(columns)
    t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    t.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    t.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
    return t


class MainWindow(QMainWindow):
    def __init__(self, hub: Hub, refresh_ms: int = 5000) -> None:
        super().__init__()
        self.setWindowTitle(f"edgeloop — {hub.home.root}")
        self.bridge = HubBridge(hub)
        self.versions = _table(VERSION_COLUMNS)
        self.agents = _table(AGENT_COLUMNS)
        tabs = QTabWidget()
        tabs.addTab(self.versions, "Registry")
        tabs.addTab(self.agents, "Fleet")
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.bridge.refresh)
        self.info = QLabel("loading…")
        box = QWidget()
        lay = QVBoxLayout(box)
        lay.addWidget(tabs)
        lay.addWidget(self.info)
        lay.addWidget(self.refresh_button)
        self.setCentralWidget(box)
        self.resize(900, 480)
        self.bridge.snapshot.connect(self.show_snapshot)
        self.bridge.failed.connect(lambda msg: self.info.setText(f"error: {msg}"))
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.bridge.refresh)
        self.timer.start(refresh_ms)
        self.bridge.refresh()

    @Slot(list, list)
    def show_snapshot(self, versions: list, agents: list) -> None:
        _fill(self.versions, [[
            v["id"], v["run_id"], f"{(v.get('metrics') or {}).get('test_accuracy', float('nan')):.3f}",
            v["chosen"], f"{((v.get('quantization') or {}).get('report') or {}).get('accuracy_delta_points', 0):+.2f}",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(v["created_at"]))] for v in versions])
        _fill(self.agents, [[
            a["agent_id"], a.get("status") or "?",
            f"{a.get('active_model') or '-'} {a.get('active_version') or ''}".strip(),
            (a.get("active_bundle") or "-")[:12], a.get("http_url") or "-",
            time.strftime("%H:%M:%S", time.localtime(a["last_seen"])) if a.get("last_seen") else "-"]
            for a in agents])
        self.info.setText(f"{len(versions)} versions, {len(agents)} agents — updated {time.strftime('%H:%M:%S')}")


def run_app(home: Path | None = None) -> int:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    hub = Hub(home)
    win = MainWindow(hub)
    win.show()
    return app.exec()
