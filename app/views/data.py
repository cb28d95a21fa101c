"""The Data view: import a CSV or NPZ file -- preview, inferred (editable) schema and the
validation report (line, column, rule) before anything is registered -- and the hub's
datasets with their versions, hashes, sizes and class balance; window data are shown
as channels x steps with a plot of a few windows.

The functions at the top are what the view runs off the GUI thread (pure, on a
:class:`Hub`); the widget only shows their results.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from edgeloop.app.table_models import KeyedTableModel
from edgeloop.app.tasks import TaskRunner, TaskState
from edgeloop.app.views.common import table_view
from edgeloop.app.widgets.curve import CurvePlot
from edgeloop.hub.datasets import MIN_ROWS
from edgeloop.hub.services import Hub
from edgeloop.hub.views import Table, feature_summary

__all__ = ["DATASET_COLUMNS", "PROBLEM_COLUMNS", "DataView", "Inspection", "inspect_file", "dataset_rows",
           "register_file", "dataset_overview"]

PROBLEM_COLUMNS = ["kind", "line", "column", "rule", "detail"]
DATASET_COLUMNS = ["dataset", "name", "rows", "features", "sha256", "size", "classes", "runs", "versions"]
WINDOWS_SHOWN = 3


@dataclass
class Inspection:
    """What a file would import as: its first lines, the schema, the summary and every problem."""

    path: str
    preview: str
    schema: dict | None
    summary: dict | None
    problems: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    message: str = ""

    @classmethod
    def from_dict(cls, doc: dict) -> Inspection:
        """From :meth:`Hub.inspect_dataset`'s result."""
        return cls(str(doc["path"]), str(doc.get("preview") or ""), doc.get("schema"), doc.get("summary"),
                   list(doc.get("problems") or []), list(doc.get("warnings") or []), str(doc.get("message") or ""))

    @property
    def valid(self) -> bool:
        return self.summary is not None and not self.problems

    def table(self) -> Table:
        rows, keys = [], []
        for i, p in enumerate(self.problems):
            keys.append(f"p{i}")
            rows.append(["problem", "-" if p.get("row") is None else str(p["row"]), p.get("column") or "-",
                         str(p["rule"]), str(p["detail"])])
        for i, w in enumerate(self.warnings):
            keys.append(f"w{i}")
            rows.append(["warning", "-", ", ".join(map(str, w.get("columns") or [])) or "-", str(w.get("rule", "?")),
                         str(w.get("detail", ""))])
        return Table(list(PROBLEM_COLUMNS), rows, keys)


def inspect_file(hub: Hub, path: str | Path, schema: dict | None = None, min_rows: int = MIN_ROWS,
                 state: TaskState | None = None) -> Inspection:
    """What the import would make of ``path`` (``schema`` overrides what is inferred), registering
    nothing: :meth:`Hub.inspect_dataset`."""
    path = Path(path)
    if state is not None:
        state.report_progress(0.1, f"reading {path.name}")
    return Inspection.from_dict(hub.inspect_dataset(path, schema=schema or None, min_rows=min_rows))


def register_file(hub: Hub, path: str | Path, schema: dict | None, name: str | None, min_rows: int) -> dict:
    """Import ``path`` into the hub (validated again there); ``schema`` (edited) goes as a schema file."""
    if not schema:
        return hub.import_dataset(path, name=name or None, min_rows=min_rows)
    with tempfile.TemporaryDirectory() as tmp:
        schema_file = Path(tmp) / "schema.json"
        schema_file.write_text(json.dumps(schema), encoding="utf-8")
        return hub.import_dataset(path, schema_file=schema_file, name=name or None, min_rows=min_rows)


def _size(hub: Hub, sha: str) -> int | None:
    for suffix in (".csv", ".npz"):
        f = hub.home.datasets_dir / f"{sha[:16]}{suffix}"
        if f.exists():
            return f.stat().st_size
    return None


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return f"{n:.1f} GiB"


def dataset_rows(hub: Hub) -> Table:
    """The hub's datasets: id, name, rows, features, sha256, size of its copy, classes, runs, versions."""
    runs = hub.list_runs()
    versions = hub.list_versions()
    run_ds = {r["id"]: r["dataset_id"] for r in runs}
    rows, keys = [], []
    for d in hub.list_datasets():
        n_runs = sum(1 for r in runs if r["dataset_id"] == d["id"])
        n_versions = sum(1 for v in versions if run_ds.get(v["run_id"]) == d["id"])
        keys.append(str(d["id"]))
        rows.append([str(d["id"]), str(d.get("name", "")), str(d["rows"]),
                     feature_summary(d.get("features") or [], limit=3), str(d["sha256"])[:16],
                     _bytes(_size(hub, str(d["sha256"]))), ",".join(map(str, d.get("labels") or [])) or "-",
                     str(n_runs), str(n_versions)])
    return Table(list(DATASET_COLUMNS), rows, keys)


def dataset_overview(hub: Hub, ref: str) -> dict:
    """A dataset's detail (:meth:`Hub.dataset_detail`) plus, for window data, a few windows to plot."""
    detail = hub.dataset_detail(ref)
    summary = detail["summary"]
    out: dict[str, Any] = {**detail, "windows": []}
    if summary.get("window_shape"):
        ds = hub.load_dataset(ref)
        w = ds.windows()
        for i in range(min(WINDOWS_SHOWN, len(w))):
            label = ds.labels[int(ds.y[i])] if ds.task == "classification" else f"{float(ds.y[i]):.3g}"
            out["windows"].append({"row": i, "label": label, "channels": w[i].astype(float).tolist()})
    return out


def balance_text(summary: dict) -> str:
    counts = summary.get("class_counts") or {}
    total = sum(counts.values()) or 1
    if counts:
        return "class balance: " + ", ".join(f"{k} {v} ({100 * v / total:.0f}%)" for k, v in counts.items())
    ys = summary.get("y_stats")
    return (f"target: mean {ys['mean']:.4g}, sd {ys['std']:.4g}, range {ys['min']:.4g}..{ys['max']:.4g}"
            if ys else "")


class DataView(QWidget):
    """Import (check, then register) and the datasets list with a detail pane."""

    registered = Signal(dict)  # the registry record of an imported dataset
    failed = Signal(str)

    def __init__(self, hub: Hub, runner: TaskRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.hub, self.runner = hub, runner
        self.inspection: Inspection | None = None
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("a .csv or .npz file")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self.browse)
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("name (default: the file's name)")
        self.min_rows = QSpinBox()
        self.min_rows.setRange(6, 1_000_000)
        self.min_rows.setValue(MIN_ROWS)
        self.check_button = QPushButton("Check")
        self.check_button.clicked.connect(lambda: self.check())
        self.register_button = QPushButton("Register")
        self.register_button.setEnabled(False)
        self.register_button.clicked.connect(self.register)
        self.status = QLabel("Choose a file, Check it, then Register it.")
        self.status.setWordWrap(True)
        top = QHBoxLayout()
        for w in (QLabel("File"), self.path_edit, browse, self.name_edit, QLabel("min rows"), self.min_rows,
                  self.check_button, self.register_button):
            top.addWidget(w)
        self.preview = QPlainTextEdit()
        self.preview.setReadOnly(True)
        self.preview.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.schema_edit = QPlainTextEdit()
        self.schema_edit.setPlaceholderText("the inferred schema appears here (JSON); edit it and Check again")
        self.problems = KeyedTableModel(PROBLEM_COLUMNS, self)
        self.problems_view = table_view(self.problems, stretch_last=True)
        self.import_tabs = QTabWidget()
        self.import_tabs.addTab(self.preview, "Preview")
        self.import_tabs.addTab(self.schema_edit, "Schema")
        self.import_tabs.addTab(self.problems_view, "Validation")
        self.datasets = KeyedTableModel(DATASET_COLUMNS, self)
        self.datasets_view = table_view(self.datasets)
        self.datasets_view.selectionModel().currentRowChanged.connect(lambda cur, _prev: self.show_dataset(cur.row()))
        self.detail = QLabel("")
        self.detail.setWordWrap(True)
        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.window_plots = [CurvePlot(f"window {i + 1}", "step") for i in range(WINDOWS_SHOWN)]
        self.windows_box = QWidget()
        wl = QHBoxLayout(self.windows_box)
        wl.setContentsMargins(0, 0, 0, 0)
        for plot in self.window_plots:
            plot.setMinimumSize(150, 150)
            wl.addWidget(plot)
        self.windows_box.hide()
        lower = QSplitter(Qt.Orientation.Horizontal)
        lower.addWidget(self.datasets_view)
        side = QWidget()
        form = QFormLayout(side)
        form.addRow(self.detail)
        form.addRow(self.windows_box)
        lower.addWidget(side)
        lower.setSizes([600, 400])
        upper = QWidget()
        ul = QVBoxLayout(upper)
        ul.setContentsMargins(0, 0, 0, 0)
        ul.addLayout(top)
        ul.addWidget(self.status)
        ul.addWidget(self.import_tabs)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(upper)
        split.addWidget(lower)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(split)

    # --- import -------------------------------------------------------------------------
    def browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import data", "", "Data (*.csv *.npz)")
        if path:
            self.path_edit.setText(path)
            self.check()

    def edited_schema(self) -> dict | None:
        text = self.schema_edit.toPlainText().strip()
        if not text:
            return None
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("the schema must be one JSON object")
        return value

    def check(self, path: str | None = None):
        """Inspect the file (with the edited schema, if any) off the GUI thread; returns the task."""
        if path is not None:
            self.path_edit.setText(path)
            self.schema_edit.clear()
        target = self.path_edit.text().strip()
        if not target:
            self.failed.emit("choose a file to import first")
            return None
        try:
            schema = self.edited_schema()
        except ValueError as exc:
            self.failed.emit(f"the schema is not valid JSON: {exc}; correct it or clear it to infer it again")
            return None
        self.register_button.setEnabled(False)
        self.status.setText(f"checking {target} …")
        hub, min_rows = self.hub, self.min_rows.value()
        task = self.runner.start("check", lambda st: inspect_file(hub, target, schema, min_rows, st))
        task.result.connect(self.show_inspection)
        task.error.connect(self.failed)
        return task

    def show_inspection(self, ins: Inspection) -> None:
        self.inspection = ins
        self.preview.setPlainText(ins.preview)
        if ins.schema is not None:
            self.schema_edit.setPlainText(json.dumps(ins.schema, indent=2))
        self.problems.set_table(ins.table())
        if ins.valid:
            s = ins.summary or {}
            self.status.setText(f"{ins.message}; task {s.get('task')}; {balance_text(s)}"
                                + (f"; {len(ins.warnings)} warning(s)" if ins.warnings else "")
                                + ". Register it to keep it.")
        else:
            self.status.setText(f"refused: {len(ins.problems)} problem(s) — see Validation. {ins.message}")
            self.import_tabs.setCurrentWidget(self.problems_view)
        self.register_button.setEnabled(ins.valid)

    def register(self):
        ins = self.inspection
        if ins is None or not ins.valid:
            self.failed.emit("Check the file first; only valid data can be registered")
            return None
        try:
            schema = self.edited_schema()
        except ValueError as exc:
            self.failed.emit(f"the schema is not valid JSON: {exc}")
            return None
        if schema == ins.schema:
            schema = None  # as inferred: the hub infers it again
        hub, path, name, min_rows = self.hub, ins.path, self.name_edit.text().strip(), self.min_rows.value()
        self.register_button.setEnabled(False)
        task = self.runner.start("import", lambda st: register_file(hub, path, schema, name, min_rows))
        task.result.connect(self._registered)
        task.error.connect(self.failed)
        return task

    def _registered(self, record: dict) -> None:
        self.status.setText(f"registered {record['id']} ({record['name']}, {record['rows']} rows, "
                            f"sha256 {record['sha256'][:16]}…)")
        self.registered.emit(record)
        self.refresh()

    # --- datasets -----------------------------------------------------------------------
    def refresh(self):
        hub = self.hub
        task = self.runner.start("datasets", lambda st: dataset_rows(hub))
        task.result.connect(self.datasets.set_table)
        task.error.connect(self.failed)
        return task

    def show_dataset(self, row: int):
        keys = self.datasets.keys()
        if not 0 <= row < len(keys):
            return None
        hub, ref = self.hub, keys[row]
        task = self.runner.start("dataset", lambda st: dataset_overview(hub, ref))
        task.result.connect(self._show_overview)
        task.error.connect(self.failed)
        return task

    def _show_overview(self, ov: dict) -> None:
        d, s = ov["dataset"], ov["summary"]
        lines = [f"<b>{d['id']}</b> {d.get('name', '')} — sha256 {d['sha256']}",
                 f"{d['rows']} rows; features {feature_summary(d.get('features') or [], s.get('window_shape'))}",
                 balance_text(s) or s.get("error", ""),
                 f"{len(ov['runs'])} run(s), versions: {', '.join(v['id'] for v in ov['versions']) or 'none'}"]
        self.detail.setText("<br>".join(line for line in lines if line))
        if ov["windows"]:  # channels x steps: one plot per window, one line per channel
            for plot, w in zip(self.window_plots, ov["windows"] + [None] * WINDOWS_SHOWN, strict=False):
                plot.clear()
                if w is None:
                    plot.hide()
                    continue
                plot.title = f"row {w['row'] + 2}: {w['label']}"
                for c, values in enumerate(w["channels"]):
                    plot.set_series(f"ch{c}", values)
                plot.show()
            self.windows_box.show()
        else:
            self.windows_box.hide()
