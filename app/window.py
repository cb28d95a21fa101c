"""The first operator window: registry versions and fleet agents, refreshed off the GUI thread.

The tables are :class:`edgeloop.app.table_models.KeyedTableModel` s behind ``QTableView`` s,
updated in place from the :class:`edgeloop.app.bridge.Snapshot` s the bridge delivers;
the window itself never calls the hub. Given a broker (``--broker``, or ``[fleet] broker``
in the hub config), it runs the hub runtime (:class:`edgeloop.hub.runtime.HubRuntime`)
in-process while it is open, so the fleet view stays current; its status line says how
fresh that view is, as ``edgeloop fleet`` does.
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

from edgeloop.agent.errors import EdgeloopError
from edgeloop.app.bridge import HubBridge, Snapshot
from edgeloop.app.table_models import KeyedTableModel
from edgeloop.hub.runtime import HubRuntime
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

    def __init__(self, hub: Hub, refresh_ms: int = 5000, broker: str | None = None) -> None:
        super().__init__()
        self.runtime: HubRuntime | None = None
        self.runtime_note = ""
        if broker:
            self.start_runtime(hub, broker)
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

    def start_runtime(self, hub: Hub, broker: str) -> None:
        """Run the hub runtime in-process; when it cannot start (another one serves this home,
        the broker is unreachable) the window still opens and says why."""
        try:
            self.runtime = HubRuntime(hub, broker).start(timeout=5.0)
        except EdgeloopError as exc:
            self.runtime_note = f"hub runtime not started: {exc}"

    @Slot(object)
    def show_snapshot(self, snapshot: Snapshot) -> None:
        self.versions.set_table(snapshot.versions)
        self.agents.set_table(snapshot.agents)
        lines = [f"{len(snapshot.versions.rows)} versions, {len(snapshot.agents.rows)} agents — "
                 f"updated {time.strftime('%H:%M:%S', time.localtime(snapshot.taken_at))}", snapshot.freshness,
                 self.runtime_note]
        self.info.setText("\n".join(line for line in lines if line))

    @Slot(str)
    def show_error(self, message: str) -> None:
        self.info.setText(f"error: {message}")

    def closeEvent(self, event: QCloseEvent) -> None:
        self.timer.stop()
        self.bridge.stop()
        runtime, self.runtime = self.runtime, None
        if runtime is not None:
            runtime.stop()
        super().closeEvent(event)


def run_app(home: Path | None = None, broker: str | None = None) -> int:
    """Open the window on the hub home ``home`` (the default home when None) until it is closed,
    running the hub runtime for ``broker`` (default: ``[fleet] broker`` of the hub config)."""
    app = QApplication.instance() or QApplication(sys.argv[:1])
    hub = Hub(home)
    try:
        win = MainWindow(hub, broker=broker or hub.config.broker)
        win.show()
        return app.exec()
    finally:
        hub.close()
