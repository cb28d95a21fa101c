"""The first operator window: registry versions and fleet agents, refreshed off the GUI thread.

The tables are :class:`edgeloop.app.table_models.KeyedTableModel` s behind ``QTableView`` s,
updated in place from the :class:`edgeloop.app.bridge.Snapshot` s the bridge delivers;
the window itself never calls the hub.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from PySide6.QtCore import QTimer, Slot
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QHeaderView,
    QLabel,
    QMainWindow,
    QPushButton,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from edgeloop.app.bridge import HubBridge, Snapshot
from edgeloop.app.table_models import KeyedTableModel
from edgeloop.hub.services import Hub
from edgeloop.hub.views import FLEET_COLUMNS, VERSION_COLUMNS


def _view(model: KeyedTableModel) -> QTableView:
    view = QTableView()
    view.setModel(model)
    view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    view.verticalHeader().setVisible(False)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    return view


class MainWindow(QMainWindow):
    """Registry and Fleet tabs, refreshed every ``refresh_ms`` and by the Refresh button."""

    def __init__(self, hub: Hub, refresh_ms: int = 5000) -> None:
        super().__init__()
        self.setWindowTitle(f"edgeloop — {hub.home.root}")
        self.bridge = HubBridge(hub, self)
        self.versions = KeyedTableModel(VERSION_COLUMNS, self)
        self.agents = KeyedTableModel(FLEET_COLUMNS, self)
        self.versions_view = _view(self.versions)
        self.agents_view = _view(self.agents)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.versions_view, "Registry")
        self.tabs.addTab(self.agents_view, "Fleet")
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.bridge.refresh)
        self.info = QLabel("loading…")
        box = QWidget()
        lay = QVBoxLayout(box)
        lay.addWidget(self.tabs)
        lay.addWidget(self.info)
        lay.addWidget(self.refresh_button)
        self.setCentralWidget(box)
        self.resize(900, 480)
        self.bridge.snapshot.connect(self.show_snapshot)
        self.bridge.failed.connect(self.show_error)
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.bridge.refresh)
        self.timer.start(refresh_ms)
        self.bridge.refresh()

    @Slot(object)
    def show_snapshot(self, snapshot: Snapshot) -> None:
        self.versions.set_table(snapshot.versions)
        self.agents.set_table(snapshot.agents)
        self.info.setText(f"{len(snapshot.versions.rows)} versions, {len(snapshot.agents.rows)} agents — "
                          f"updated {time.strftime('%H:%M:%S', time.localtime(snapshot.taken_at))}")

    @Slot(str)
    def show_error(self, message: str) -> None:
        self.info.setText(f"error: {message}")

    def closeEvent(self, event: QCloseEvent) -> None:
        self.timer.stop()
        self.bridge.stop()
        super().closeEvent(event)


def run_app(home: Path | None = None) -> int:
    """Open the window on the hub home ``home`` (the default home when None) until it is closed."""
    app = QApplication.instance() or QApplication(sys.argv[:1])
    hub = Hub(home)
    try:
        win = MainWindow(hub)
        win.show()
        return app.exec()
    finally:
        hub.close()
