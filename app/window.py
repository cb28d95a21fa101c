"""The operator window: Data, Train, Registry, Fleet, Rollouts, Drift, Audit and Settings views over one hub home.

Every view calls :class:`edgeloop.hub.services.Hub` methods through the window's
:class:`edgeloop.app.tasks.TaskRunner` (long work off the GUI thread, results as
signals); the versions and fleet tables are :class:`edgeloop.app.table_models.KeyedTableModel`
s updated in place from the :class:`edgeloop.app.bridge.Snapshot` s the bridge delivers.
Given a broker (``--broker``, or ``[fleet] broker`` in the hub config), it runs the hub
runtime (:class:`edgeloop.hub.runtime.HubRuntime`) in-process while it is open, so the
fleet view stays current; its status line says how fresh that view is, as ``edgeloop
fleet`` does. Errors go to the banner at the top of the window; the window's size,
layout and tab are remembered in ``<home>/app.ini``. Shortcuts: Ctrl+1..8 the views,
F5 refresh, Ctrl+O import a file, Ctrl+T train, Esc dismiss the error.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path

from PySide6.QtCore import QSettings, QTimer, Slot
from PySide6.QtGui import QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from edgeloop.agent.errors import EdgeloopError
from edgeloop.app.bridge import HubBridge, Snapshot
from edgeloop.app.startup import platform_problem
from edgeloop.app.table_models import KeyedTableModel
from edgeloop.app.tasks import TaskRunner, WorkerProcess
from edgeloop.app.views.audit import AuditView
from edgeloop.app.views.common import table_view
from edgeloop.app.views.data import DataView
from edgeloop.app.views.drift import DriftView
from edgeloop.app.views.fleet import FleetView
from edgeloop.app.views.registry import RegistryView
from edgeloop.app.views.rollouts import RolloutsView
from edgeloop.app.views.settings import SettingsView
from edgeloop.app.views.train import TrainView
from edgeloop.app.widgets.banner import ErrorBanner
from edgeloop.hub.fleet import Fleet
from edgeloop.hub.runtime import HubRuntime
from edgeloop.hub.services import Hub
from edgeloop.hub.views import FLEET_COLUMNS

__all__ = ["SHORTCUTS", "MainWindow", "run_app", "startup_problem"]

SHORTCUTS = {"Ctrl+1": "Data", "Ctrl+2": "Train", "Ctrl+3": "Registry", "Ctrl+4": "Fleet", "Ctrl+5": "Rollouts",
             "Ctrl+6": "Drift", "Ctrl+7": "Audit", "Ctrl+8": "Settings", "F5": "refresh",
             "Ctrl+O": "import a file", "Ctrl+T": "train", "Esc": "dismiss the error"}


WARM_MODULES = ("torch", "onnxruntime", "edgeloop.hub.pipeline", "edgeloop.hub.training")


def _choices(hub: Hub) -> tuple[list[dict], list[dict]]:
    return hub.list_datasets(), hub.list_versions()


class MainWindow(QMainWindow):
    """The views in tabs, refreshed every ``refresh_ms`` (versions, fleet) and by F5 / Refresh."""

    def __init__(self, hub: Hub, refresh_ms: int = 5000, broker: str | None = None,
                 settings_path: Path | str | None = None) -> None:
        super().__init__()
        # The GUI thread asks for the GIL on every event; with the default 5 ms switch interval a
        # busy worker thread (parsing a CSV, formatting a table) keeps it that long each time.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
        self.hub = hub
        self.runtime: HubRuntime | None = None
        self.runtime_note = ""
        if broker:
            self.start_runtime(hub, broker)
        self.setWindowTitle(f"edgeloop — {hub.home.root}")
        self.bridge = HubBridge(hub, self)
        self.runner = TaskRunner(self, worker=WorkerProcess(WARM_MODULES))
        self.banner = ErrorBanner()
        self.data_view = DataView(hub, self.runner)
        self.train_view = TrainView(hub, self.runner)
        self.registry_view = RegistryView(hub, self.runner)
        self.versions = self.registry_view.versions
        self.versions_view = self.registry_view.versions_view
        self.agents = KeyedTableModel(FLEET_COLUMNS, self)
        self.agents_view = table_view(self.agents)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.data_view, "Data")
        self.tabs.addTab(self.train_view, "Train")
        self.tabs.addTab(self.registry_view, "Registry")
        self.fleet_view = FleetView(hub, self.runner)  # fed by the bridge's snapshots (show_snapshot)
        self.rollouts_view = RolloutsView(hub, self.runner, self.fleet)
        self.drift_view = DriftView(hub, self.runner, self.fleet)
        self.audit_view = AuditView(hub, self.runner)
        self.settings_view = SettingsView(hub, self.runner)
        for page, name in ((self.fleet_view, "Fleet"), (self.rollouts_view, "Rollouts"), (self.drift_view, "Drift"),
                           (self.audit_view, "Audit"), (self.settings_view, "Settings")):
            self.tabs.addTab(page, name)
            page.failed.connect(lambda msg, n=name: self.show_error(msg, n))
        self.fleet_view.enroll_requested.connect(self._enroll)
        self.settings_view.enrolled.connect(lambda result: self.fleet_view.mark_enrolled(result["agent_id"]))
        self.drift_view.canary_requested.connect(self._canary)
        self.tabs.currentChanged.connect(self._tab_shown)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("Read the hub again (F5)")
        self.refresh_button.clicked.connect(self.refresh_all)
        self.info = QLabel("loading…")
        box = QWidget()
        lay = QVBoxLayout(box)
        lay.addWidget(self.banner)
        lay.addWidget(self.tabs, 1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.info, 1)
        bottom.addWidget(self.refresh_button)
        lay.addLayout(bottom)
        self.setCentralWidget(box)
        self.resize(1100, 720)
        for view in (self.data_view, self.train_view, self.registry_view):
            view.failed.connect(lambda msg, v=view: self.show_error(msg, self.tabs.tabText(self.tabs.indexOf(v))))
        self.data_view.registered.connect(lambda _rec: self.refresh_choices())
        # the training process starts (and imports torch, in the background) once training is likely
        self.data_view.registered.connect(lambda _rec: self.warm_worker())
        self.tabs.currentChanged.connect(lambda _i: self.warm_worker() if self.tabs.currentWidget()
                                         is self.train_view else None)
        self.train_view.trained.connect(lambda _res: self.refresh_all())
        self.registry_view.changed.connect(self.bridge.refresh)
        self.bridge.snapshot.connect(self.show_snapshot)
        self.bridge.failed.connect(self.show_error)
        self._shortcuts()
        self.settings = QSettings(str(settings_path or Path(hub.home.root) / "app.ini"), QSettings.Format.IniFormat)
        self.restore_state()
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.bridge.refresh)
        self.timer.start(refresh_ms)
        self.refresh_all()

    def warm_worker(self) -> None:
        """Start the training worker process now, so the first Train does not wait for torch to load."""
        if not self.runner.worker.alive:
            self.runner.worker.start()

    def _shortcuts(self) -> None:
        for i in range(min(self.tabs.count(), 9)):
            QShortcut(QKeySequence(f"Ctrl+{i + 1}"), self, lambda i=i: self.tabs.setCurrentIndex(i))
        QShortcut(QKeySequence("F5"), self, self.refresh_all)
        QShortcut(QKeySequence("Ctrl+O"), self, self._import)
        QShortcut(QKeySequence("Ctrl+T"), self, self._train)
        QShortcut(QKeySequence("Esc"), self, self.banner.dismiss)

    def fleet(self) -> Fleet | None:
        """The hub runtime's fleet connection (signed commands go through it); None without a broker."""
        return self.runtime.fleet if self.runtime is not None else None

    def _enroll(self, agent_id: str) -> None:
        self.tabs.setCurrentWidget(self.settings_view)
        self.settings_view.prefill_enroll(agent_id)

    def _canary(self, fields: dict) -> None:
        """The Drift view's closed loop proposes a canary: the rollout wizard opens with it filled in."""
        self.tabs.setCurrentWidget(self.rollouts_view)
        self.rollouts_view.open_wizard(fields)

    def _tab_shown(self, _index: int) -> None:
        """The Drift and Audit views are read when shown (and by F5), not on every refresh."""
        if self.tabs.currentWidget() is self.drift_view:
            self.drift_view.refresh()
        elif self.tabs.currentWidget() is self.audit_view:
            self.audit_view.refresh()

    def _import(self) -> None:
        self.tabs.setCurrentWidget(self.data_view)
        self.data_view.browse()

    def _train(self) -> None:
        self.tabs.setCurrentWidget(self.train_view)
        self.train_view.start()

    def start_runtime(self, hub: Hub, broker: str) -> None:
        """Run the hub runtime in-process; when it cannot start (another one serves this home,
        the broker is unreachable) the window still opens and says why."""
        try:
            self.runtime = HubRuntime(hub, broker).start(timeout=5.0)
        except EdgeloopError as exc:
            self.runtime_note = f"hub runtime not started: {exc}"

    # --- refreshing -----------------------------------------------------------------------
    @Slot()
    def refresh_all(self) -> None:
        self.bridge.refresh()
        self.refresh_choices()
        self._tab_shown(self.tabs.currentIndex())

    def refresh_choices(self) -> None:
        """Datasets (Data view) and the dataset/parent lists of the Train view."""
        self.data_view.refresh()
        hub = self.hub
        task = self.runner.start("choices", lambda st: _choices(hub))
        task.result.connect(lambda pair: self.train_view.set_choices(*pair))
        task.error.connect(self.show_error)

    @Slot(object)
    def show_snapshot(self, snapshot: Snapshot) -> None:
        self.registry_view.set_versions(snapshot.versions)
        self.agents.set_table(snapshot.agents)
        self.fleet_view.set_agents(snapshot.agents)
        lines = [f"{len(snapshot.versions.rows)} versions, {len(snapshot.agents.rows)} agents — "
                 f"updated {time.strftime('%H:%M:%S', time.localtime(snapshot.taken_at))}", snapshot.freshness,
                 self.runtime_note]
        self.info.setText("\n".join(line for line in lines if line))

    @Slot(str)
    def show_error(self, message: str, where: str = "") -> None:
        self.info.setText(f"error: {message}")
        self.banner.show_error(message, where)

    # --- state ----------------------------------------------------------------------------
    def restore_state(self) -> None:
        geometry = self.settings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        tab = self.settings.value("window/tab")
        if tab is not None:
            self.tabs.setCurrentIndex(int(tab))

    def save_state(self) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/tab", self.tabs.currentIndex())
        self.settings.sync()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.save_state()
        self.timer.stop()
        self.runner.stop()
        self.bridge.stop()
        runtime, self.runtime = self.runtime, None
        if runtime is not None:
            runtime.stop()
        super().closeEvent(event)


def startup_problem(exc: BaseException, home: Path | None) -> str:
    """What to tell the operator when the hub home does not open, with the fix."""
    where = str(home) if home else "the default hub home"
    text = str(exc) or type(exc).__name__
    low = text.lower()
    if "database" in low or "sqlite" in low or "malformed" in low:
        fix = ("the registry database is damaged: restore registry.sqlite in the home from a backup, or move "
               "it aside to start a fresh registry")
    elif isinstance(exc, (NotADirectoryError, FileExistsError, PermissionError)) or "directory" in low:
        fix = "pass --home with a folder you can write (or set EDGELOOP_HOME)"
    else:
        fix = "check the folder given with --home (or EDGELOOP_HOME), or run `edgeloop hub init` there"
    return f"edgeloop app: cannot open the hub home {where}: {text}\nFix: {fix}."


def _report_unhandled(win: MainWindow):
    def hook(kind: type[BaseException], exc: BaseException, tb: object) -> None:
        win.show_error(f"{kind.__name__}: {exc} (an internal error; the window stays usable)")
        sys.__excepthook__(kind, exc, tb)  # type: ignore[arg-type]
    return hook


def run_app(home: Path | None = None, broker: str | None = None) -> int:
    """Open the window on the hub home ``home`` (the default home when None) until it is closed,
    running the hub runtime for ``broker`` (default: ``[fleet] broker`` of the hub config)."""
    problem = None if QApplication.instance() else platform_problem()
    if problem:  # no display, or the Qt platform libraries are missing: say so instead of a Qt abort
        print(problem, file=sys.stderr)
        return 2
    app = QApplication.instance() or QApplication(sys.argv[:1])
    try:
        hub = Hub(home)
        hub.list_versions()  # a corrupt registry shows here, not later in a view
    except Exception as exc:  # explained on stderr and in a dialog, with the fix
        message = startup_problem(exc, home)
        print(message, file=sys.stderr)
        if os.environ.get("QT_QPA_PLATFORM") != "offscreen":
            QMessageBox.critical(None, "edgeloop", message)
        return 2
    try:
        win = MainWindow(hub, broker=broker or hub.config.broker)
        sys.excepthook = _report_unhandled(win)
        win.show()
        gc.collect()
        gc.freeze()  # the objects of start-up (Qt wrappers, modules) leave the collector: a full collection
        # then takes a few ms instead of 50-150 ms on the GUI thread (measured in tests/test_app_soak.py)
        return app.exec()
    finally:
        sys.excepthook = sys.__excepthook__
        hub.close()
