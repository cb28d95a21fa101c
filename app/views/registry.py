"""The Registry view: versions with their metrics and quantization decision (fp32 vs int8,
with the numbers), aliases and gates (edited with a reason, audited by the hub), two
versions compared side by side (metrics, confusion matrices, learning curves) and the
lineage graph of the selected version.

The functions at the top run off the GUI thread on a :class:`Hub`; the widget shows
what they return.
"""

from __future__ import annotations

import json
from html import escape as esc
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from edgeloop.app.table_models import KeyedTableModel
from edgeloop.app.tasks import Task, TaskRunner
from edgeloop.app.views.common import table_view
from edgeloop.app.widgets.curve import CurvePlot
from edgeloop.app.widgets.lineage import LineageGraph, build_graph
from edgeloop.app.widgets.matrix import ConfusionMatrix
from edgeloop.hub.services import Hub
from edgeloop.hub.views import VERSION_COLUMNS, Table, gate_text, headline, num, version_table

__all__ = ["ALIAS_COLUMNS", "COMPARE_COLUMNS", "RegistryView", "compare_versions", "quantization_lines",
           "version_overview", "versions_table"]

ALIAS_COLUMNS = ["alias", "version", "by", "reason"]
COMPARE_COLUMNS = ["metric", "a", "b", "b - a"]
_QUANT_ROWS = [("accuracy", "fp32_accuracy", "int8_accuracy"), ("metric", "fp32_metric", "int8_metric"),
               ("bytes", "fp32_bytes", "int8_bytes"), ("latency µs (batch 1)", "fp32_latency_us_batch1",
                                                       "int8_latency_us_batch1"),
               ("latency µs (batch 32)", "fp32_latency_us_batch32", "int8_latency_us_batch32")]


def versions_table(hub: Hub) -> Table:
    return version_table(hub.list_versions(), hub.list_bundles())


def _labels(hub: Hub, run: dict) -> list[str]:
    """The class names of the run's dataset (empty for regression: the matrix numbers them)."""
    return [str(x) for x in hub.get_dataset(run["dataset_id"]).get("labels") or []]


def version_overview(hub: Hub, ref: str) -> dict:
    """Everything the detail pane shows for one version: detail, aliases, gate, lineage (with the
    captures each child version was trained on) and the class names."""
    detail = hub.version_detail(ref)
    v = detail["version"]
    lineage = hub.lineage(v["id"])
    child_captures = {}
    for tree in lineage["versions"]:
        for child in tree.get("descendants") or []:
            child_captures[child["id"]] = hub.lineage(child["id"]).get("captures") or []
    return {**detail, "aliases": hub.aliases(v["model_name"]), "gate_report": hub.gate_report(v["model_name"]),
            "lineage": lineage, "child_captures": child_captures, "labels": _labels(hub, detail["run"])}


def compare_versions(hub: Hub, a: str, b: str) -> dict:
    """:meth:`Hub.compare` plus each side's run history and confusion matrix, for the plots."""
    cmp = hub.compare(a, b)
    sides = {}
    for side, ref in (("a", a), ("b", b)):
        d = hub.version_detail(ref)
        sides[side] = {"history": d["run"].get("history") or [],
                       "confusion": (d["version"].get("metrics") or {}).get("confusion_matrix"),
                       "labels": _labels(hub, d["run"]), "id": d["version"]["id"]}
    return {**cmp, "sides": sides}


def quantization_lines(version: dict) -> list[str]:
    """The int8 decision with its numbers: fp32 vs int8 side by side, and why."""
    q = version.get("quantization") or {}
    rep = q.get("report") or {}
    lines = [f"ships {q.get('chosen', version.get('chosen'))} ({q.get('method', 'no int8')}): {q.get('reason', '')}"]
    for label, fk, ik in _QUANT_ROWS:
        if fk in rep or ik in rep:
            lines.append(f"  {label:<22} fp32 {num(rep.get(fk)) if rep.get(fk) is not None else '-':>10}   "
                         f"int8 {num(rep.get(ik)) if rep.get(ik) is not None else '-':>10}")
    if "accuracy_delta_points" in rep:
        lines.append(f"  accuracy change {rep['accuracy_delta_points']:+.2f} points (budget "
                     f"{num(q.get('budget_points'))}), prediction agreement {num(rep.get('prediction_agreement'))}"
                     f", decided on {rep.get('n_test')} rows")
    return lines


def _alias_table(aliases: list[dict]) -> Table:
    rows = [[a["alias"], a.get("version_id") or "(removed)", str(a.get("updated_by") or ""), str(a.get("reason") or "")]
            for a in aliases]
    return Table(list(ALIAS_COLUMNS), rows, [a["alias"] for a in aliases])


def _compare_table(cmp: dict) -> Table:
    rows, keys = [], []

    def order(name: str) -> tuple[int, str]:  # test and validation scores first, the details after
        return (0 if name.startswith("test_") else 1 if name.startswith("val_") else 2 if "." not in name else 3,
                name)
    for name in sorted(cmp["metrics"], key=order):
        m = cmp["metrics"][name]
        keys.append(name)
        rows.append([name, "-" if m["a"] is None else num(m["a"]), "-" if m["b"] is None else num(m["b"]),
                     "-" if m["delta"] is None else f"{m['delta']:+.4g}"])
    for name, ch in cmp["params"]["changed"].items():
        keys.append(f"param:{name}")
        rows.append([f"param {name}", str(ch["a"]), str(ch["b"]), "changed"])
    return Table(list(COMPARE_COLUMNS), rows, keys)


def plot_history(plot: CurvePlot, history: list[dict], prefix: str = "") -> None:
    for name in ("train_loss", "val_loss", "val_accuracy", "val_mae"):
        pts = [(h["epoch"], h[name]) for h in history if name in h]
        if pts:
            plot.set_series(f"{prefix}{name}", [y for _, y in pts], [x for x, _ in pts])


class RegistryView(QWidget):
    """Versions (refreshed by the window), and for the selected one: detail, aliases and gate,
    compare, lineage."""

    changed = Signal()  # an alias or gate was changed: the window refreshes
    failed = Signal(str)

    def __init__(self, hub: Hub, runner: TaskRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.hub, self.runner = hub, runner
        self.overview: dict[str, Any] | None = None
        self.comparison: dict[str, Any] | None = None
        self.versions = KeyedTableModel(VERSION_COLUMNS, self)
        self.versions_view = table_view(self.versions)
        self.versions_view.selectionModel().currentRowChanged.connect(lambda cur, _p: self.select_row(cur.row()))
        # detail
        self.summary = QLabel("Select a version.")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.curve = CurvePlot("learning curve", "epoch")
        self.matrix = ConfusionMatrix()
        self.matrix.setMinimumWidth(320)
        detail = QWidget()
        dl = QGridLayout(detail)
        dl.addWidget(self.summary, 0, 0, 1, 2)
        dl.addWidget(self.curve, 1, 0)
        dl.addWidget(self.matrix, 1, 1)
        dl.setRowStretch(1, 1)
        # aliases and gate
        self.aliases = KeyedTableModel(ALIAS_COLUMNS, self)
        self.aliases_view = table_view(self.aliases, stretch_last=True)
        self.alias_name = QLineEdit()
        self.alias_name.setPlaceholderText("alias, e.g. production")
        self.reason = QLineEdit()
        self.reason.setPlaceholderText("reason (kept in the audit log)")
        set_alias = QPushButton("Point alias at this version")
        set_alias.clicked.connect(lambda: self.set_alias())
        remove_alias = QPushButton("Remove alias")
        remove_alias.clicked.connect(lambda: self.remove_alias())
        self.gate_edit = QLineEdit()
        self.gate_edit.setPlaceholderText('{"test_accuracy": 0.9, "max": {"test_loss": 0.4}}  (empty: no gate)')
        save_gate = QPushButton("Save gate")
        save_gate.clicked.connect(lambda: self.save_gate())
        self.gate_status = QLabel("")
        self.gate_status.setWordWrap(True)
        promo = QWidget()
        pf = QFormLayout(promo)
        pf.addRow(self.aliases_view)
        row = QHBoxLayout()
        row.addWidget(self.alias_name)
        row.addWidget(set_alias)
        row.addWidget(remove_alias)
        pf.addRow("Alias", row)
        pf.addRow("Reason", self.reason)
        grow = QHBoxLayout()
        grow.addWidget(self.gate_edit)
        grow.addWidget(save_gate)
        pf.addRow("Gate", grow)
        pf.addRow(self.gate_status)
        # compare
        self.compare_a, self.compare_b = QComboBox(), QComboBox()
        compare_button = QPushButton("Compare")
        compare_button.clicked.connect(lambda: self.compare())
        self.compare_model = KeyedTableModel(COMPARE_COLUMNS, self)
        self.compare_view = table_view(self.compare_model, stretch_last=True)
        self.matrix_a, self.matrix_b = ConfusionMatrix("a"), ConfusionMatrix("b")
        self.compare_curve = CurvePlot("learning curves (a, b)", "epoch")
        comp = QWidget()
        cl = QGridLayout(comp)
        pick = QHBoxLayout()
        for w in (QLabel("a"), self.compare_a, QLabel("b"), self.compare_b, compare_button):
            pick.addWidget(w)
        cl.addLayout(pick, 0, 0, 1, 3)
        cl.addWidget(self.compare_view, 1, 0, 2, 1)
        cl.addWidget(self.matrix_a, 1, 1)
        cl.addWidget(self.matrix_b, 1, 2)
        cl.addWidget(self.compare_curve, 2, 1, 1, 2)
        cl.setColumnStretch(0, 3)
        cl.setColumnStretch(1, 2)
        cl.setColumnStretch(2, 2)
        # lineage
        self.lineage = LineageGraph()
        self.tabs = QTabWidget()
        self.tabs.addTab(detail, "Detail")
        self.tabs.addTab(promo, "Aliases && gate")
        self.tabs.addTab(comp, "Compare")
        self.tabs.addTab(self.lineage, "Lineage")
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.versions_view)
        split.addWidget(self.tabs)
        split.setSizes([200, 420])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(split)

    # --- versions -----------------------------------------------------------------------
    def set_versions(self, table: Table) -> None:
        self.versions.set_table(table)
        for combo in (self.compare_a, self.compare_b):
            current = combo.currentText()
            if [combo.itemText(i) for i in range(combo.count())] != table.keys:
                combo.clear()
                combo.addItems(table.keys)
                if current in table.keys:
                    combo.setCurrentText(current)
        if self.compare_b.count() > 1 and self.compare_a.currentText() == self.compare_b.currentText():
            self.compare_b.setCurrentIndex(1)

    def selected(self) -> str | None:
        return self.overview["version"]["id"] if self.overview else None

    def select_row(self, row: int) -> Task | None:
        keys = self.versions.keys()
        return self.select(keys[row]) if 0 <= row < len(keys) else None

    def select(self, ref: str) -> Task:
        hub = self.hub
        task = self.runner.start("version", lambda st: version_overview(hub, ref))
        task.result.connect(self.show_overview)
        task.error.connect(self.failed)
        return task

    def show_overview(self, ov: dict) -> None:
        self.overview = ov
        v, run = ov["version"], ov["run"]
        m = v.get("metrics") or {}
        gate = ov.get("gate") or {}
        lines = [f"<b>{esc(v['id'])}</b> — {esc(headline(m))} — from {run['id']} on {run['dataset_id']}"
                 + (f", fine-tuned from {v['parent_version']}" if v.get("parent_version") else ""),
                 f"stopped {m.get('stop_reason', '?')} at epoch {m.get('epochs_run', '?')} (best "
                 f"{m.get('best_epoch', '?')}); aliases: {', '.join(v.get('aliases') or []) or 'none'}; "
                 f"bundles: {len(ov['bundles'])}",
                 esc(f"gate: {gate_text(gate) if gate.get('checks') else 'none set'}"),
                 "<pre>" + esc("\n".join(quantization_lines(v))) + "</pre>"]
        self.summary.setText("<br>".join(lines))
        self.curve.clear()
        plot_history(self.curve, run.get("history") or [])
        self.matrix.set_matrix(m.get("confusion_matrix"), ov.get("labels") or [],
                               f"{v['id']} on its test rows")
        self.aliases.set_table(_alias_table(ov["aliases"]))
        g = ov["gate_report"]["gate"]
        self.gate_edit.setText(json.dumps({k: g[k] for k in ("min", "max", "eval_data") if g.get(k)})
                               if ov["gate_report"]["has_gate"] else "")
        self.lineage.set_graph(build_graph(ov["lineage"], ov["child_captures"]))

    # --- aliases and gates (each an audited hub call) -----------------------------------
    def _after_change(self, task: Task, what: str) -> None:
        def done(_result: object) -> None:
            self.gate_status.setText(what)
            self.changed.emit()
            if self.selected():
                self.select(str(self.selected()))
        task.result.connect(done)
        task.error.connect(self.failed)

    def set_alias(self, alias: str | None = None, reason: str | None = None) -> Task | None:
        version = self.selected()
        alias = (alias if alias is not None else self.alias_name.text()).strip()
        reason = (reason if reason is not None else self.reason.text()).strip()
        if not version or not alias:
            self.failed.emit("select a version and name the alias first")
            return None
        if not reason:
            self.failed.emit("give a reason for moving the alias (it is kept in the audit log)")
            return None
        hub, model = self.hub, str(self.overview["version"]["model_name"]) if self.overview else ""
        task = self.runner.start("alias", lambda st: hub.set_alias(model, alias, version, reason=reason))
        self._after_change(task, f"{model}@{alias} -> {version} ({reason})")
        return task

    def remove_alias(self, alias: str | None = None, reason: str | None = None) -> Task | None:
        alias = (alias if alias is not None else self.alias_name.text()).strip()
        reason = (reason if reason is not None else self.reason.text()).strip()
        if not self.overview or not alias or not reason:
            self.failed.emit("select a version, name the alias and give a reason to remove it")
            return None
        hub, model = self.hub, str(self.overview["version"]["model_name"])
        task = self.runner.start("alias", lambda st: hub.remove_alias(model, alias, reason=reason))
        self._after_change(task, f"{model}@{alias} removed ({reason})")
        return task

    def save_gate(self, text: str | None = None, reason: str | None = None) -> Task | None:
        text = (text if text is not None else self.gate_edit.text()).strip()
        reason = (reason if reason is not None else self.reason.text()).strip()
        if not self.overview:
            self.failed.emit("select a version of the model first")
            return None
        if not reason:
            self.failed.emit("give a reason for changing the gate (it is kept in the audit log)")
            return None
        try:
            gate = json.loads(text) if text else None
        except ValueError as exc:
            self.failed.emit(f"the gate is not valid JSON ({exc}); write it like "
                             '{"test_accuracy": 0.9, "max": {"test_loss": 0.4}}')
            return None
        hub, model = self.hub, str(self.overview["version"]["model_name"])
        task = self.runner.start("gate", lambda st: hub.set_gate(model, gate, reason=reason))
        self._after_change(task, f"gate of {model} {'cleared' if not gate else 'saved'} ({reason})")
        return task

    # --- compare ------------------------------------------------------------------------
    def compare(self, a: str | None = None, b: str | None = None) -> Task | None:
        a = a or self.compare_a.currentText()
        b = b or self.compare_b.currentText()
        if not a or not b:
            self.failed.emit("pick two versions to compare")
            return None
        hub = self.hub
        task = self.runner.start("compare", lambda st: compare_versions(hub, a, b))
        task.result.connect(self.show_comparison)
        task.error.connect(self.failed)
        return task

    def show_comparison(self, cmp: dict) -> None:
        self.comparison = cmp
        self.compare_model.set_table(_compare_table(cmp))
        sa, sb = cmp["sides"]["a"], cmp["sides"]["b"]
        self.matrix_a.set_matrix(sa["confusion"], sa["labels"], f"a: {sa['id']}")
        self.matrix_b.set_matrix(sb["confusion"], sb["labels"], f"b: {sb['id']}")
        self.compare_curve.clear()
        plot_history(self.compare_curve, sa["history"], "a ")
        plot_history(self.compare_curve, sb["history"], "b ")
