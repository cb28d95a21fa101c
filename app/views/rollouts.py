"""The Rollouts view: a wizard to plan and start a rollout, the live view of the rollouts (per wave
and per agent) with pause, resume, abort and approve, and a one-click signed rollback.

The wizard goes version -> targets (a tag selector) -> strategy, waves, bake time and gates, and
previews which agents each wave hits (:func:`wave_preview`: the agents the target matches, online,
in the order the rollout machine takes them, cut by :meth:`RolloutPlan.wave_counts`). Every command
is a :class:`Hub` method run off the GUI thread (the hub runtime carries it out); rollback asks
for confirmation first: an active rollout is aborted with rollback, a finished one sends every
agent that took the new version a signed rollback to the version it ran before (:meth:`Hub.rollback`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from edgeloop.app.table_models import KeyedTableModel
from edgeloop.app.tasks import Task, TaskRunner
from edgeloop.app.views.common import table_view
from edgeloop.hub.rollout.machine import wave_name
from edgeloop.hub.rollout.plan import FAILURE_POLICIES, STRATEGIES, RolloutPlan
from edgeloop.hub.rollout.selector import AgentRecord
from edgeloop.hub.rollout.state import ACTIVE
from edgeloop.hub.services import Hub
from edgeloop.hub.views import Table, stamp

__all__ = ["AGENT_COLUMNS", "ROLLOUT_COLUMNS", "RolloutWizard", "RolloutsView", "rollback_rollout",
           "rollout_agents_table", "rollouts_table", "wave_preview"]

ROLLOUT_COLUMNS = ["rollout", "version", "target", "status", "waves", "reason", "updated"]
AGENT_COLUMNS = ["wave", "agent", "status", "verdict", "reason", "p99 ms", "requests"]


def wave_preview(plan: RolloutPlan, agents: Iterable[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """``[(wave name, agent ids)]`` a start now would make: the online agents ``plan`` targets,
    sorted as the rollout machine takes them, in waves of :meth:`RolloutPlan.wave_counts`."""
    records = [AgentRecord(id=a["agent_id"], tags=dict(a.get("tags") or {}), online=a.get("status") == "online")
               for a in agents]
    online = sorted(r.id for r in records if r.online and plan.target_spec.matches(r))
    out, at = [], 0
    counts = plan.wave_counts(len(online))
    for i, n in enumerate(counts):
        out.append((wave_name(plan.strategy, i, len(counts)), online[at:at + n]))
        at += n
    return out


def _preview(hub: Hub, fields: dict) -> tuple[RolloutPlan, list[tuple[str, list[str]]]]:
    plan = hub.rollout_plan(fields["version"], fields["target"], **{k: v for k, v in fields.items()
                                                                    if k not in ("version", "target")})
    return plan, wave_preview(plan, hub.list_agents())


def rollouts_table(rollouts: Iterable[Mapping[str, Any]]) -> Table:
    rows, keys = [], []
    for r in rollouts:
        waves = (r.get("summary") or {}).get("waves") or []
        keys.append(r["id"])
        rows.append([r["id"], f"{r['model']}:{r['version']}", r["target"], r["status"],
                     " ".join(f"{w['name']} {w.get('healthy', 0)}/{w['targeted']}" for w in waves) or "-",
                     r.get("reason") or "", stamp(r.get("updated_at"))])
    return Table(list(ROLLOUT_COLUMNS), rows, keys)


def _runs(wave: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    agents = wave["agents"]
    return list(agents.values()) if isinstance(agents, dict) else list(agents)


def rollout_agents_table(status: Mapping[str, Any]) -> Table:
    """Per wave and agent: status, verdict, reason and the figures the gates judged."""
    rows, keys = [], []
    for w in status["state"]["waves"]:
        for a in _runs(w):
            obs = a.get("observation") or {}
            keys.append(f"{w['name']}/{a['id']}")
            rows.append([f"{w['name']} ({w['status']})", a["id"], a["status"], a.get("verdict") or "",
                         a.get("reason") or "", str(obs.get("latency_p99_ms", "")), str(obs.get("requests", ""))])
    return Table(list(AGENT_COLUMNS), rows, keys)


def rollback_rollout(hub: Hub, rollout_id: str, fleet: Any, why: str) -> dict:
    """Return the agents of ``rollout_id`` to what they ran before: an active rollout is aborted
    with rollback (the runtime sends the signed rollbacks), and so is a halted one (its failed wave
    was left on the new version for a look: policy ``halt``); a finished one gets a signed
    :meth:`Hub.rollback` per agent that took the new version. Returns the rollout's status."""
    st = hub.rollout_status(rollout_id, audit=0)
    if st["status"] in (*ACTIVE, "halted"):  # a halted one left its failed wave as it was: the runtime rolls it back
        return hub.rollout_abort(rollout_id, why=why or "rolled back from the app", rollback=True)
    if fleet is None:
        raise RuntimeError("no fleet connection: open the app with a broker (--broker) to send rollbacks")
    by_previous: dict[str, list[str]] = {}
    for w in st["state"]["waves"]:
        for a in _runs(w):
            if a.get("activated") and a.get("previous_version") and a.get("rollback") != "confirmed":
                by_previous.setdefault(a["previous_version"], []).append(a["id"])
    if not by_previous:
        raise RuntimeError(f"rollout {rollout_id}: no agent runs its new version, so there is nothing to roll back")
    results = []
    for previous, ids in sorted(by_previous.items()):
        results += hub.rollback(fleet, ids, f"{st['model']}:{previous}", reason=why or f"rollback of {rollout_id}")
    failed = [r for r in results if not r["ok"]]
    if failed:
        raise RuntimeError("rollback failed on " + ", ".join(f"{r['agent']} ({r['code']}: {r['message']})"
                                                            for r in failed))
    return {**hub.rollout_status(rollout_id, audit=0), "rollback_results": results}


class RolloutWizard(QWizard):
    """Version -> targets -> strategy, waves, bake time and gates; the last page previews the waves."""

    def __init__(self, hub: Hub, runner: TaskRunner, versions: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.hub, self.runner = hub, runner
        self.setWindowTitle("New rollout")
        self.version = QComboBox()
        self.version.setEditable(True)
        self.version.addItems(versions)
        self.target = QLineEdit()
        self.target.setPlaceholderText("site=plant-a,hw=pi5,-id:pi-07")
        self.strategy = QComboBox()
        self.strategy.addItems(list(STRATEGIES))
        self.strategy.setCurrentText("canary")
        self.canary = QSpinBox()
        self.canary.setRange(1, 10_000)
        self.ramp = QComboBox()
        self.ramp.addItems(["rest", "double", "sizes"])
        self.wave_sizes = QLineEdit()
        self.wave_sizes.setPlaceholderText("ramp sizes: 5,20")
        self.bake = QDoubleSpinBox()
        self.bake.setRange(0.0, 7 * 86400.0)
        self.bake.setValue(300.0)
        self.bake.setSuffix(" s")
        self.timeout = QDoubleSpinBox()
        self.timeout.setRange(1.0, 86400.0)
        self.timeout.setValue(600.0)
        self.timeout.setSuffix(" s")
        self.policy = QComboBox()
        self.policy.addItems(list(FAILURE_POLICIES))
        self.policy.setCurrentText("rollback_wave")
        self.approval = QCheckBox("wait for approval between waves")
        self.min_requests = QSpinBox()
        self.min_requests.setRange(0, 10_000_000)
        self.max_error = QDoubleSpinBox()
        self.max_error.setRange(0.0, 1.0)
        self.max_error.setDecimals(4)
        self.max_error.setValue(0.01)
        self.max_p99 = QDoubleSpinBox()
        self.max_p99.setRange(0.0, 1000.0)
        self.max_p99.setValue(1.5)
        self.max_p99.setSpecialValueText("off")
        self.no_drift = QCheckBox("fail an agent that raises a drift flag while baking")
        self.max_estimate_drop = QDoubleSpinBox()
        self.max_estimate_drop.setRange(0.0, 1.0)
        self.max_estimate_drop.setDecimals(3)
        self.max_estimate_drop.setSingleStep(0.01)
        self.max_estimate_drop.setSpecialValueText("off")
        self.max_estimate_drop.setToolTip("Fail an agent whose estimated accuracy (no labels needed: calibrated "
                                          "classifiers) falls more than this below the live version's")
        self.min_estimate_rows = QSpinBox()
        self.min_estimate_rows.setRange(0, 10_000_000)
        self.min_estimate_rows.setValue(200)
        self.preview_text = QPlainTextEdit()
        self.preview_text.setReadOnly(True)
        self.preview: list[tuple[str, list[str]]] = []
        self.plan: RolloutPlan | None = None
        self.addPage(self._page("Version", "Which version to roll out", [("version", self.version)]))
        self.addPage(self._page("Targets", "Which agents: a tag selector (rollout target syntax)",
                                [("target", self.target)]))
        self.addPage(self._page("Strategy", "Waves, bake time, gates", [
            ("strategy", self.strategy), ("canary agents", self.canary), ("then", self.ramp),
            ("wave sizes", self.wave_sizes), ("bake time", self.bake), ("agent timeout", self.timeout),
            ("on failure", self.policy), ("", self.approval), ("gate: min requests", self.min_requests),
            ("gate: max error rate", self.max_error), ("gate: max p99 ratio", self.max_p99), ("", self.no_drift),
            ("gate: max estimated-accuracy drop", self.max_estimate_drop),
            ("…over at least (rows)", self.min_estimate_rows)]))
        page = self._page("Preview", "Which agents each wave hits", [])
        form = page.layout()
        assert form is not None
        form.addWidget(self.preview_text)
        self.addPage(page)
        self.currentIdChanged.connect(lambda i: self.update_preview() if i == 3 else None)

    @staticmethod
    def _page(title: str, subtitle: str, rows: list[tuple[str, QWidget]]) -> QWizardPage:
        page = QWizardPage()
        page.setTitle(title)
        page.setSubTitle(subtitle)
        form = QFormLayout(page)
        for label, w in rows:
            form.addRow(label, w)
        return page

    def fields(self) -> dict:
        """The plan fields the form says (``version`` a version ref, ``target`` a selector)."""
        gates: dict[str, Any] = {"min_requests": self.min_requests.value(), "max_error_rate": self.max_error.value(),
                                 "max_p99_ratio": self.max_p99.value() or None, "no_drift": self.no_drift.isChecked()}
        if self.max_estimate_drop.value():
            gates.update(max_estimate_drop=self.max_estimate_drop.value(),
                         min_estimate_rows=self.min_estimate_rows.value())
        f: dict[str, Any] = {"version": self.version.currentText().strip(), "target": self.target.text().strip(),
                             "strategy": self.strategy.currentText(), "bake_seconds": self.bake.value(),
                             "agent_timeout_seconds": self.timeout.value(),
                             "failure_policy": self.policy.currentText(),
                             "approval_required": self.approval.isChecked(), "gates": gates}
        if f["strategy"] == "canary":
            f.update(canary_agents=self.canary.value(), ramp=self.ramp.currentText())
            if f["ramp"] == "sizes":
                f["wave_sizes"] = [int(x) for x in self.wave_sizes.text().replace(" ", "").split(",") if x]
        else:
            f.update(canary_agents=None)
        return f

    def prefill(self, f: Mapping[str, Any]) -> None:
        """Set the form from plan fields (the keys :meth:`fields` returns; absent ones keep their default)."""
        if "version" in f:
            self.version.setCurrentText(str(f["version"]))
        if "target" in f:
            self.target.setText(str(f["target"]))
        if "strategy" in f:
            self.strategy.setCurrentText(str(f["strategy"]))
        if f.get("canary_agents"):
            self.canary.setValue(int(f["canary_agents"]))
        for key, box in (("bake_seconds", self.bake), ("agent_timeout_seconds", self.timeout)):
            if f.get(key) is not None:
                box.setValue(float(f[key]))
        if "failure_policy" in f:
            self.policy.setCurrentText(str(f["failure_policy"]))
        gates = f.get("gates") or {}
        if gates.get("min_requests") is not None:
            self.min_requests.setValue(int(gates["min_requests"]))
        if "max_error_rate" in gates:
            self.max_error.setValue(float(gates["max_error_rate"] or 0.0))
        if "max_p99_ratio" in gates:
            self.max_p99.setValue(float(gates["max_p99_ratio"] or 0.0))
        if "no_drift" in gates:
            self.no_drift.setChecked(bool(gates["no_drift"]))
        if "max_estimate_drop" in gates:
            self.max_estimate_drop.setValue(float(gates["max_estimate_drop"] or 0.0))
        if gates.get("min_estimate_rows") is not None:
            self.min_estimate_rows.setValue(int(gates["min_estimate_rows"]))

    def update_preview(self) -> Task:
        self.preview_text.setPlainText("working out the waves…")
        hub, fields = self.hub, self.fields()
        task = self.runner.start("rollout preview", lambda _st: _preview(hub, fields))
        task.result.connect(self._show_preview)
        task.error.connect(lambda msg: self.preview_text.setPlainText(f"this plan cannot start: {msg}"))
        return task

    def _show_preview(self, pair: tuple[RolloutPlan, list[tuple[str, list[str]]]]) -> None:
        self.plan, self.preview = pair
        lines = [f"{self.plan.model}:{self.plan.version} to {self.plan.target!r}, bake {self.plan.bake_seconds:g} s, "
                 f"on failure {self.plan.failure_policy}"]
        lines += [f"{name} ({len(ids)}): {', '.join(ids)}" for name, ids in self.preview]
        if not self.preview:
            lines.append("no online agent matches this target")
        self.preview_text.setPlainText("\n".join(lines))


class RolloutsView(QWidget):
    """The rollouts (refreshed by :meth:`refresh`) and the selected one's waves, agents and audit."""

    failed = Signal(str)
    changed = Signal(dict)  # a command's resulting rollout status

    def __init__(self, hub: Hub, runner: TaskRunner, fleet: Callable[[], Any] = lambda: None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.hub, self.runner, self.fleet = hub, runner, fleet
        self.confirm: Callable[[str, str], bool] = self._ask
        self.rollouts = KeyedTableModel(ROLLOUT_COLUMNS, self)
        self.rollouts_view = _fitted(table_view(self.rollouts, stretch_last=True))
        self.agents = KeyedTableModel(AGENT_COLUMNS, self)
        self.agents_view = _fitted(table_view(self.agents, stretch_last=True))
        self.audit = QPlainTextEdit()
        self.audit.setReadOnly(True)
        self.status = QLabel("select a rollout")
        self.buttons: dict[str, QPushButton] = {}
        bar = QHBoxLayout()
        new = QPushButton("New rollout…")
        new.clicked.connect(lambda _c=False: self.open_wizard())
        bar.addWidget(new)
        for name in ("pause", "resume", "approve", "abort", "rollback"):
            b = QPushButton("Roll back…" if name == "rollback" else name.capitalize())
            b.clicked.connect(lambda _c=False, n=name: self.command(n))
            b.setEnabled(False)
            self.buttons[name] = b
            bar.addWidget(b)
        bar.addStretch(1)
        lower = QSplitter()
        lower.addWidget(self.agents_view)
        lower.addWidget(self.audit)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.rollouts_view)
        split.addWidget(lower)
        lay = QVBoxLayout(self)
        lay.addLayout(bar)
        lay.addWidget(self.status)
        lay.addWidget(split, 1)
        self.selected: str | None = None
        self.last_status: dict | None = None
        self.wizard: RolloutWizard | None = None
        self._busy = False
        self.rollouts_view.selectionModel().selectionChanged.connect(self._selected)
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.refresh)
        self.timer.start(500)  # a running rollout moves fast: its view follows at 2 Hz

    # --- reading ------------------------------------------------------------------------------
    @Slot()
    def refresh(self) -> None:
        """Read the rollouts (and the selected one) again; nothing while the view is hidden."""
        if self._busy or not self.isVisible():
            return
        self._busy = True
        hub, rid = self.hub, self.selected

        def read(_st: object) -> tuple[Table, dict | None]:
            return rollouts_table(hub.rollouts(limit=100)), (hub.rollout_status(rid, audit=40) if rid else None)

        task = self.runner.start("rollouts", read)
        task.result.connect(self._show)
        task.error.connect(self.failed)
        task.finished.connect(lambda: setattr(self, "_busy", False))

    def _show(self, pair: tuple[Table, dict | None]) -> None:
        table, st = pair
        self.rollouts.set_table(table)
        self.rollouts_view.resizeColumnsToContents()
        if st is not None and st["id"] == self.selected:
            self.show_status(st)

    def show_status(self, st: dict) -> None:
        self.last_status = st
        self.agents.set_table(rollout_agents_table(st))
        self.agents_view.resizeColumnsToContents()
        self.status.setText(f"{st['id']} {st['model']}:{st['version']} -> {st['target']}: {st['status']}"
                            + (f" — {st['reason']}" if st.get("reason") else ""))
        self.audit.setPlainText("\n".join(f"{stamp(r['at'])} {r['actor']}: {r['what']}" + (f" ({r['why']})"
                                                                                           if r.get("why") else "")
                                          for r in st.get("audit", [])))
        s = st["status"]
        self.buttons["pause"].setEnabled(s in ("running", "baking", "awaiting_approval"))
        self.buttons["resume"].setEnabled(s == "paused")
        self.buttons["approve"].setEnabled(s == "awaiting_approval")
        self.buttons["abort"].setEnabled(s in ACTIVE)
        self.buttons["rollback"].setEnabled(s not in ("rolled_back", "planned"))

    def _selected(self, *_: object) -> None:
        rows = self.rollouts_view.selectionModel().selectedRows()
        if rows:
            self.select(self.rollouts.keys()[rows[0].row()])

    def select(self, rollout_id: str) -> None:
        self.selected = rollout_id
        self.refresh()

    # --- commands -----------------------------------------------------------------------------
    @staticmethod
    def _ask(title: str, text: str) -> bool:
        answer = QMessageBox.question(None, title, text)
        return answer == QMessageBox.StandardButton.Yes

    def command(self, name: str, why: str = "") -> Task | None:
        rid = self.selected
        if rid is None:
            return None
        hub = self.hub
        if name == "rollback":
            if not self.confirm("Roll back", f"Send a signed rollback to every agent of {rid} that took the new "
                                             "version, returning it to the version it ran before?"):
                return None
            fleet = self.fleet()
            task = self.runner.start("rollback", lambda _st: rollback_rollout(hub, rid, fleet, why))
        elif name == "abort":
            if not self.confirm("Abort", f"Stop {rid}? Agents that took the new version keep it."):
                return None
            task = self.runner.start("abort", lambda _st: hub.rollout_abort(rid, why=why))
        else:
            method = {"pause": hub.rollout_pause, "resume": hub.rollout_resume, "approve": hub.rollout_approve}[name]
            task = self.runner.start(name, lambda _st: method(rid, why=why))
        for b in self.buttons.values():
            b.setEnabled(False)
        self.status.setText(f"{name}: waiting for the hub runtime…")
        task.result.connect(self._commanded)
        task.error.connect(self.failed)
        task.finished.connect(self.refresh)
        return task

    def _started(self, st: dict) -> None:
        self.select(st["id"])
        self._commanded(st)

    def _commanded(self, st: dict) -> None:
        self.changed.emit(st)
        if st.get("id") == self.selected:
            self.show_status(st)

    def open_wizard(self, prefill: Mapping[str, Any] | None = None) -> RolloutWizard:
        """Show the wizard; its version list fills in when the hub has been read. ``prefill``
        (from the Drift view's closed loop: version, target, strategy, canary_agents, gates) sets
        the form; the operator still reviews the waves and starts it."""
        hub = self.hub
        wizard = RolloutWizard(hub, self.runner, [], self)
        if prefill:
            wizard.prefill(prefill)
        task = self.runner.start("versions", lambda _st: [f"{v['model_name']}:{v['version']}"
                                                          for v in hub_versions(hub)])

        def versions(refs: list[str]) -> None:
            if not wizard.version.count():
                text = wizard.version.currentText()
                wizard.version.addItems(refs)
                if prefill:  # adding items selects the first: keep the version asked for
                    wizard.version.setCurrentText(text)

        task.result.connect(versions)
        task.error.connect(self.failed)
        wizard.accepted.connect(lambda: self.start(wizard.fields()))
        self.wizard = wizard
        wizard.show()
        return wizard

    def start(self, fields: dict) -> Task:
        hub = self.hub
        self.status.setText(f"starting {fields['version']} -> {fields['target']}…")
        task = self.runner.start("rollout start", lambda _st: hub.rollout_start(
            version=fields["version"], target=fields["target"],
            **{k: v for k, v in fields.items() if k not in ("version", "target")}))
        task.result.connect(self._started)
        task.error.connect(self.failed)
        return task


def _fitted(view: QTableView) -> QTableView:
    """Columns as wide as their text (fitted after each update: these tables are small), the last fills."""
    view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    view.setWordWrap(False)
    return view


def hub_versions(hub: Hub) -> list[dict]:
    """The registry's versions, newest first per model."""
    return sorted(hub.list_versions(), key=lambda v: (v["model_name"], -int(v["version"])))
