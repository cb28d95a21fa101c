"""The Drift view: per model -> agent -> feature, charts over time with thresholds, the
reference-vs-current histogram, flagged features highlighted, estimated vs realized accuracy,
and the closed loop started from here: capture -> retrain -> canary.

The functions at the top call only :class:`Hub` methods (off the GUI thread). The baseline of the
histogram is the reference the agent judges against, as its bundle carries it (``Hub.drift_reference``:
the reference's shares over the same bins as the windows' counts); the current one is the last judged
window. Where the hub cannot read that reference (a bundle it did not build, a version without one) or
its bins differ, the baseline falls back to the agent's first judged windows, and its label says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from edgeloop.app.table_models import KeyedTableModel
from edgeloop.app.tasks import Task, TaskRunner, TaskState
from edgeloop.app.views.common import table_view
from edgeloop.app.widgets.chart import HistogramChart, Series, ThresholdChart
from edgeloop.hub.errors import HubError
from edgeloop.hub.services import Hub
from edgeloop.hub.services.retrain import DEFAULT_MAX_FORGETTING
from edgeloop.hub.views import Table, ago

__all__ = ["DRIFT_COLUMNS", "DriftView", "accuracy_lines", "drift_detail", "drift_table", "feature_order",
           "series_for_chart"]

DRIFT_COLUMNS = ["model", "agent", "version", "windows", "drifting", "worst", "trend", "last window"]
BASELINE_WINDOWS = 2  # first judged windows summed for the histogram's baseline
FLAG_RULE = ("A window is flagged (red dot) only when the feature's KS test rejects (Holm-corrected over the "
             "features) and KS and PSI are both above their thresholds, PSI's raised for small windows "
             "(agent/drift_stats.py psi_cutoff): a point above a dashed line alone is sampling noise.")


class CaptureWaitError(HubError):
    """An agent cut its capture sample but the batch did not reach the hub in time."""


def drift_table(overview: Iterable[Mapping[str, Any]], now: float | None = None) -> Table:
    rows, keys = [], []
    for m in overview:
        for a in m["agents"]:
            worst = a.get("worst") or {}
            keys.append(f"{m['model']}/{a['agent_id']}")
            rows.append([m["model"], a["agent_id"], str(a["version"]), str(a["windows"]),
                         ", ".join(a["drifting"][:4]) + (" …" if len(a["drifting"]) > 4 else "") or
                         ("OUTPUT" if (a.get("output") or {}).get("drifted") else "-"),
                         f"{worst.get('name')} psi {worst.get('psi', 0.0):.3f}" if worst else "-",
                         " ".join(str(t) for t in a.get("trend", [])), ago(a.get("last_ended_at"), now)])
    return Table(list(DRIFT_COLUMNS), rows, keys)


def feature_order(entry: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """``(feature, flagged)`` of an overview entry, drifted and flagged ones first, then by PSI."""
    feats = entry.get("features") or {}
    order = sorted(feats.items(), key=lambda kv: (not kv[1].get("drifted"), not kv[1].get("flagged"),
                                                  -float(kv[1].get("psi", 0.0)), kv[0]))
    return [(name, bool(f.get("drifted") or f.get("flagged"))) for name, f in order]


def drift_detail(hub: Hub, model: str, agent_id: str, feature: str | None = None) -> dict:
    """The selected agent's overview entry, one feature's series (the worst when ``feature`` is
    None), the drift reference of the bundle the agent reports (``reference``; None with the reason in
    ``reference_error`` when the hub cannot read it) and the accuracy series (estimated vs realized).
    The series carries its feature's reference bins as ``reference`` (or None) and ``reference_error``."""
    entry = next((a for m in hub.drift_overview(agent_id, model) for a in m["agents"]), None)
    if entry is None:
        return {"entry": None, "feature": None, "series": None, "accuracy": None, "reference": None,
                "reference_error": None}
    feats = feature_order(entry)
    name = feature or (feats[0][0] if feats else ("prediction" if entry.get("output") else None))
    series = hub.drift_series(agent_id, model, name, version=entry["version"]) if name else None
    reference, why = None, None
    try:
        reference = hub.drift_reference(model, entry["version"], bundle_sha256=entry.get("bundle_sha256"))
    except HubError as exc:  # the chart falls back to the first windows and says so
        why = str(exc)
    if series is not None:
        bins = None
        if reference is not None:
            bins = (reference["classes"] if name == "classes" else reference["output"] if name == "prediction"
                    else reference["features"].get(name))
            why = None if bins is not None else f"the bundle's reference has no {name!r}"
        series = {**series, "reference_error": why,
                  "reference": {**bins, "bundle_sha256": reference["bundle_sha256"]} if bins and reference else None}
    accuracy = hub.accuracy_series(agent_id, model, version=entry["version"]) if entry.get("performance") else None
    return {"entry": entry, "feature": name, "series": series, "accuracy": accuracy, "reference": reference,
            "reference_error": why}


def accuracy_lines(point: Mapping[str, Any]) -> dict[str, float]:
    """The accuracy chart's dashed lines for a window's estimate: the bundle's reference (the held-out
    split's estimated accuracy) and the flag line below it (``threshold`` is the drop that flags a window
    of that size, not an accuracy)."""
    ref, drop = point.get("reference"), point.get("threshold")
    if ref is None:
        return {}
    lines = {"reference": float(ref)}
    if drop is not None and math.isfinite(float(drop)):
        lines["flagged below"] = float(ref) - float(drop)
    return lines


def series_for_chart(series: Mapping[str, Any]) -> tuple[list[Series], dict[str, list[float]]]:
    """PSI and KS per window (flagged windows marked) and the histogram's baseline and current bars.

    The baseline is the series' ``reference`` shares (``drift_detail`` puts the feature's bins of
    ``Hub.drift_reference`` there) as ``"reference (bundle)"``; the current one is the counts of the last
    judged window, ``"current (window N)"`` (the chart turns both into shares). Without a reference, or
    with one whose bins are not the window's (another length, another bundle), the baseline is the sum
    of the first ``BASELINE_WINDOWS`` judged windows, labelled with why."""
    pts = [p for p in series["points"] if "psi" in p]
    xs = [float(p["window"]) for p in pts]
    flags = [bool(p.get("flagged") or p.get("drifted")) for p in pts]
    lines = [Series("PSI", xs, [float(p["psi"]) for p in pts], flags),
             Series("KS", xs, [float(p["ks"]) for p in pts], flags)]
    judged = [p for p in series["points"] if p.get("status", "ok") == "ok" and p.get("counts")]
    ref = series.get("reference") or {}
    shares = [float(x) for x in ref.get("shares") or []]
    if not judged:
        return lines, {"reference (bundle)": shares} if shares else {}
    last = judged[-1]
    width = len(last["counts"])
    current = (f"current (window {last['window']})", [float(c) for c in last["counts"]])
    same = len(shares) == width and ref.get("bundle_sha256") in (None, last.get("bundle_sha256"))
    if same:
        return lines, dict([("reference (bundle)", shares), current])
    why = "reference bins differ" if shares else "no bundle reference"
    base = [p["counts"] for p in judged[:BASELINE_WINDOWS] if len(p["counts"]) == width]
    return lines, dict([(f"baseline (first {BASELINE_WINDOWS} windows; {why})",
                         [float(sum(c)) for c in zip(*base, strict=True)]), current])


UPLOAD_WAIT_S = 60.0  # how long a retrain waits for the agent's fresh capture batch to arrive


def _fetch_capture(hub: Hub, fleet: Any, agent_id: str, st: TaskState) -> str:
    """Ask the agent to cut its capture sample now and wait until the batch is in the hub; what
    happened, in words. Without a fleet connection or captured rows, the batches already in the hub
    are used (the retrain says what to do when there are none)."""
    if fleet is None:
        return "no fleet connection: retraining on the batches already received"
    before = {c["batch_id"] for c in hub.list_captures(agent_id)}
    st.report_progress(None, f"asking {agent_id} to upload its capture")
    [res] = hub.set_capture(fleet, [agent_id], upload=True)
    rows = int((res.get("details") or {}).get("rows") or 0)
    if not res["ok"] or rows == 0:
        return f"{agent_id} had no new rows to upload ({res['message']}): retraining on the batches received"
    deadline = time.monotonic() + UPLOAD_WAIT_S
    while time.monotonic() < deadline:
        st.cancel_token.raise_if_cancelled("waiting for the capture upload")
        if {c["batch_id"] for c in hub.list_captures(agent_id)} - before:
            return f"{agent_id} uploaded {rows} captured rows"
        st.report_progress(None, f"waiting for {agent_id}'s {rows} captured rows")
        time.sleep(0.2)
    raise CaptureWaitError(f"{agent_id} cut a sample of {rows} rows but it did not reach the hub within "
                           f"{UPLOAD_WAIT_S:g} s: check the agent's log and the broker, then retrain again "
                           "(the agent keeps the batch in its spool until the hub has it)")


def retrain_job(state: TaskState, home: str, actor: str, model: str, agent_id: str, fetched: str,
                max_forgetting: float = DEFAULT_MAX_FORGETTING, epochs: int | None = None) -> dict:
    """:meth:`Hub.retrain_from_capture` on the hub home ``home``, opened here: what the worker process
    runs (training holds the GIL; the window's process must stay free for the event loop). ``epochs``
    None keeps the parent's training parameters' ceiling."""
    with Hub(home, actor=actor) as hub:
        result = hub.retrain_from_capture(model, agent_id, max_forgetting=max_forgetting,
                                          params={"epochs": epochs} if epochs else None,
                                          progress=state.progress_callback, cancel=state.cancel_token)
    return {**result.to_dict(), "fetched": fetched}


def canary_fields(child: str, agent_id: str) -> dict:
    """The rollout the closed loop proposes: the retrained version as a one-agent canary on the agent
    that drifted, failed by any error or drift flag while it bakes (the operator reviews it in the wizard)."""
    return {"version": child, "target": f"id:{agent_id}", "strategy": "canary", "canary_agents": 1,
            "bake_seconds": 300.0, "failure_policy": "rollback_wave",
            "gates": {"min_requests": 20, "max_error_rate": 0.0, "max_p99_ratio": None, "no_drift": True}}


class DriftView(QWidget):
    """The overview table; for the selected agent: feature charts, histogram, accuracy, actions."""

    failed = Signal(str)
    acted = Signal(str, object)  # "capture" | "retrain", its result
    canary_requested = Signal(dict)  # the rollout fields of the closed loop's canary (to the rollout wizard)

    def __init__(self, hub: Hub, runner: TaskRunner, fleet: Callable[[], Any] = lambda: None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.hub, self.runner, self.fleet = hub, runner, fleet
        self.table_model = KeyedTableModel(DRIFT_COLUMNS, self)
        self.table = table_view(self.table_model)
        self.feature = QComboBox()
        self.feature.activated.connect(lambda _i: self.show_feature(self.feature.currentData()))
        self.chart = ThresholdChart("drift per window")
        self.histogram = HistogramChart("reference vs current")
        self.accuracy = ThresholdChart("estimated vs realized accuracy")
        self.summary = QLabel("select an agent")
        self.summary.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.capture_button = QPushButton("1. Capture from this agent")
        self.retrain_button = QPushButton("2. Retrain from its captures")
        self.canary_button = QPushButton("3. Canary the retrained version")
        self.capture_button.clicked.connect(self.capture)
        self.retrain_button.clicked.connect(self.retrain)
        self.canary_button.clicked.connect(self.canary)
        for b in (self.capture_button, self.retrain_button, self.canary_button):
            b.setEnabled(False)
        self.max_forgetting = QDoubleSpinBox()  # the retrain's bound on forgetting (as `edgeloop retrain`)
        self.max_forgetting.setRange(0.0, 1.0)
        self.max_forgetting.setDecimals(3)
        self.max_forgetting.setSingleStep(0.01)
        self.max_forgetting.setValue(DEFAULT_MAX_FORGETTING)
        self.max_forgetting.setToolTip("How far the parent's test score may drop for the child to be offered")
        self.epochs = QSpinBox()
        self.epochs.setRange(0, 100_000)
        self.epochs.setSpecialValueText("as the parent")
        self.epochs.setToolTip("Most epochs of the fine-tuning (early stopping decides)")
        knobs = QFormLayout()
        knobs.addRow("max forgetting", self.max_forgetting)
        knobs.addRow("epochs", self.epochs)
        charts = QWidget()
        grid = QGridLayout(charts)
        row = QHBoxLayout()
        row.addWidget(QLabel("feature"))
        row.addWidget(self.feature, 1)
        grid.addLayout(row, 0, 0, 1, 2)
        grid.addWidget(self.summary, 1, 0, 1, 2)
        grid.addWidget(self.chart, 2, 0)
        self.chart_note = QLabel(FLAG_RULE)
        self.chart_note.setWordWrap(True)
        self.chart_note.setStyleSheet("color: #555")
        grid.addWidget(self.chart_note, 4, 0, 1, 2)
        grid.addWidget(self.histogram, 2, 1)
        grid.addWidget(self.accuracy, 3, 0)
        acts = QVBoxLayout()
        acts.addWidget(self.capture_button)
        acts.addLayout(knobs)
        for w in (self.retrain_button, self.canary_button, self.progress, self.cancel_button):
            acts.addWidget(w)
        acts.addStretch(1)
        grid.addLayout(acts, 3, 1)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(charts)
        split.setStretchFactor(1, 3)
        QVBoxLayout(self).addWidget(split)
        self.selected: tuple[str, str] | None = None
        self.detail: dict | None = None
        self.child: str | None = None
        self.running: Task | None = None
        self._asked = 0
        self.table.selectionModel().selectionChanged.connect(self._selected)

    # --- reading ------------------------------------------------------------------------------
    def refresh(self) -> Task:
        hub = self.hub
        task = self.runner.start("drift", lambda _st: drift_table(hub.drift_overview()))
        task.result.connect(self.table_model.set_table)
        task.error.connect(self.failed)
        return task

    def _selected(self, *_: object) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            model, agent = self.table_model.keys()[rows[0].row()].split("/", 1)
            self.select(model, agent)

    def select(self, model: str, agent_id: str, feature: str | None = None) -> Task:
        self.selected = (model, agent_id)
        hub = self.hub
        task = self.runner.start("drift detail", lambda _st: drift_detail(hub, model, agent_id, feature))
        self._asked += 1
        asked = self._asked
        task.result.connect(lambda d: self.show_detail(d) if asked == self._asked else None)  # the newest only
        task.error.connect(self.failed)
        return task

    def show_feature(self, feature: str | None) -> None:
        if self.selected and feature:
            self.select(*self.selected, feature=feature)

    def show_detail(self, d: dict) -> None:
        self.detail = d
        entry = d["entry"]
        for b in (self.capture_button, self.retrain_button):
            b.setEnabled(entry is not None)
        if entry is None:
            self.summary.setText("no drift reports for this agent")
            return
        self.feature.clear()
        for i, (name, flagged) in enumerate(feature_order(entry)):
            self.feature.addItem(("⚠ " if flagged else "") + name, name)
            if flagged:
                self.feature.setItemData(i, QColor("#d62728"), Qt.ItemDataRole.ForegroundRole)
        if d["feature"] is not None:
            self.feature.setCurrentIndex(max(0, self.feature.findData(d["feature"])))
        controls = entry.get("controls") or {}
        self.summary.setText(
            f"{entry['agent_id']} on {entry['model']} {entry['version']}: {entry['windows']} windows; "
            + (f"DRIFTING: {', '.join(entry['drifting'][:6])}" if entry["drifting"] else "no feature drifting")
            + f"; flagged now: {', '.join(entry.get('flagged', [])[:6]) or '-'}")
        if d["series"] is not None:
            lines, hist = series_for_chart(d["series"])
            thresholds = {k: float(controls[f"{k}_threshold"]) for k in ("psi", "ks")
                          if controls.get(f"{k}_threshold") is not None}
            self.chart.title = f"{d['feature']}: PSI and KS per window"
            self.chart.set_data(lines, {f"{k.upper()} threshold": v for k, v in thresholds.items()})
            self.histogram.title = f"{d['feature']}: reference vs current"
            self.histogram.set_counts(hist)
        acc = d.get("accuracy")
        if acc and acc["points"]:
            pts = acc["points"]
            xs = [float(p["window"]) for p in pts]
            est = Series("estimated", xs, [float(p["accuracy"]) for p in pts], [bool(p.get("flagged")) for p in pts])
            lab = [p for p in pts if p.get("realized") is not None]
            real = Series("realized", [float(p["window"]) for p in lab], [float(p["realized"]) for p in lab])
            self.accuracy.set_data([est, real], accuracy_lines(pts[-1]))
        else:
            self.accuracy.set_data([], {})

    # --- the closed loop ----------------------------------------------------------------------
    def _run(self, name: str, fn: Callable[..., Any], *args: Any, in_process: bool = False) -> Task:
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        self.cancel_button.setVisible(True)
        task = self.runner.start_in_process(name, fn, *args) if in_process else self.runner.start(name, fn)
        self.running = task

        def cancel() -> None:
            task.cancel()

        self.cancel_button.clicked.connect(cancel)
        task.progress.connect(self._progress)
        task.result.connect(lambda r: self.acted.emit(name, r))
        task.error.connect(self.failed)

        def done() -> None:
            self.cancel_button.clicked.disconnect(cancel)
            if self.running is task:  # a step that started the next one leaves the bar to it
                self.running = None
                self.progress.setVisible(False)
                self.cancel_button.setVisible(False)

        task.finished.connect(done)
        return task

    def _progress(self, fraction: float, _text: str, _event: object) -> None:
        if fraction >= 0:
            self.progress.setRange(0, 100)
            self.progress.setValue(int(fraction * 100))

    def capture(self) -> Task | None:
        if self.selected is None:
            return None
        hub, fleet, (_model, aid) = self.hub, self.fleet(), self.selected
        if fleet is None:
            self.failed.emit("no fleet connection: open the app with a broker (--broker) to send commands")
            return None
        task = self._run("capture", lambda _st: hub.set_capture(fleet, [aid], enable=True))
        task.result.connect(lambda results: self._captured(aid, results))
        return task

    def _captured(self, aid: str, results: list[dict]) -> None:
        [res] = results
        if not res["ok"]:
            self.failed.emit(f"{aid} refused capture: {res['message']} ({res['code']})")
            return
        self.summary.setText(f"{aid} captures the rows it serves now; send their ground truth to its feedback "
                             "endpoint (POST /v2/models/<model>/feedback), then retrain from its captures")

    def retrain(self) -> Task | None:
        if self.selected is None:
            return None
        hub, fleet, (model, aid) = self.hub, self.fleet(), self.selected
        self.canary_button.setEnabled(False)
        self.retrain_button.setEnabled(False)
        # the agent's fresh capture first (a thread: it waits on the fleet), then the training (its own process)
        fetch = self._run("capture upload", lambda st: _fetch_capture(hub, fleet, aid, st))
        fetch.result.connect(lambda fetched: self._retrain_in_worker(model, aid, str(fetched)))
        fetch.error.connect(lambda _msg: self.retrain_button.setEnabled(True))
        return fetch

    def _retrain_in_worker(self, model: str, aid: str, fetched: str) -> Task:
        self.summary.setText(f"{fetched}; retraining {model} from {aid}'s captures…")
        task = self._run("retrain", retrain_job, str(self.hub.home.root), self.hub.actor, model, aid, fetched,
                         self.max_forgetting.value(), self.epochs.value() or None, in_process=True)
        task.result.connect(self._retrained)
        task.finished.connect(lambda: self.retrain_button.setEnabled(self.selected is not None))
        return task

    def _retrained(self, result: dict) -> None:
        self.child = str(result.get("child"))
        ready = bool(result.get("ready"))
        self.canary_button.setEnabled(ready)
        gain, forgetting = result.get("gain"), result.get("forgetting")
        figures = (f" (gain {gain:+.3f} on the new data, forgetting {forgetting:+.3f})"
                   if isinstance(gain, float) and isinstance(forgetting, float) else "")
        self.summary.setText(f"{result.get('fetched', '')}; retrained {self.child} from {result.get('rows')} "
                             f"captured rows{figures}: "
                             + ("ready for a canary" if ready else "not better than its parent; not offered"))

    def canary(self) -> dict | None:
        """Propose the canary of the retrained version: the Rollouts view's wizard opens with it filled in."""
        if self.selected is None or self.child is None:
            return None
        fields = canary_fields(self.child, self.selected[1])
        self.canary_requested.emit(fields)
        return fields
