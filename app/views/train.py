"""The Train view: parameters with defaults per data kind, a live learning curve (loss and
accuracy per epoch, as the hub reports them), cancel, and the run's record afterwards;
continual learning from a parent version with replay and EWC, and its forgetting figures.

:func:`train_task` is what runs off the GUI thread: one :meth:`Hub.train` call with the
task's progress callback and cancel token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from edgeloop.app.tasks import Task, TaskRunner, TaskState
from edgeloop.app.widgets.curve import CurvePlot
from edgeloop.hub.progress import ProgressEvent
from edgeloop.hub.services import Hub
from edgeloop.hub.views import headline, num, window_grid

__all__ = ["TrainRequest", "TrainView", "default_params", "record_text", "train_job", "train_task"]


def default_params(summary: dict | None) -> dict[str, Any]:
    """Sensible starting parameters for the data: a 1D-CNN for sensor windows (batch 32, a kernel
    no longer than the window), an MLP for tables; epochs are a ceiling (early stopping decides)."""
    window = (summary or {}).get("window_shape")
    rows = int((summary or {}).get("rows") or 0)
    base: dict[str, Any] = {"epochs": 200, "patience": 20, "lr": 3e-3, "seed": 0, "weight_decay": 1e-4}
    if window:
        steps = int(window[1])
        return {**base, "arch": "cnn1d", "channels": [16, 32], "kernel_size": max(1, min(5, steps)),
                "batch_size": 32}
    return {**base, "arch": "mlp", "hidden": [64, 32] if rows >= 200 else [32], "batch_size": 64 if rows >= 500 else 32}


@dataclass(frozen=True)
class TrainRequest:
    dataset: str
    model: str
    params: dict
    parent: str | None = None
    fine_tune: bool = True
    replay_size: int | None = None
    ewc_lambda: float | None = None


def train_task(hub: Hub, req: TrainRequest, state: TaskState) -> dict:
    """Train one version; returns its version and run records, quantization and continual figures."""
    build = hub.train(req.dataset, req.model, req.params, progress=state.progress_callback,
                      cancel=state.cancel_token, parent=req.parent, fine_tune=req.fine_tune,
                      replay_size=req.replay_size, ewc_lambda=req.ewc_lambda)
    return {"version": build.version, "run": build.run, "metrics": build.metrics,
            "quantization": build.quantization, "continual": build.continual, "warnings": build.warnings}


def train_job(state: TaskState, home: str, actor: str, req: TrainRequest) -> dict:
    """:func:`train_task` on the hub home ``home``, opened here: what the worker process runs."""
    with Hub(home, actor=actor) as hub:
        return train_task(hub, req, state)


def record_text(result: dict) -> str:
    """The run's record for a person: version, metrics, stop, int8 decision, forgetting."""
    v, run, m = result["version"], result["run"], result["metrics"]
    q = result.get("quantization") or {}
    lines = [f"version {v['id']} from {run['id']} on {run['dataset_id']} — {headline(m)}",
             f"stopped: {m.get('stop_reason', '?')} after {m.get('epochs_run', '?')} epoch(s); best epoch "
             f"{m.get('best_epoch', '?')}; rows train/val/test {m.get('n_train')}/{m.get('n_val')}/{m.get('n_test')}",
             f"ships {q.get('chosen', v.get('chosen'))}: {q.get('reason', '')}"]
    c = result.get("continual")
    if c:
        lines.append(f"continual from {v.get('parent_version')}: {c['metric']} on the parent's test data "
                     f"{num(c['parent_test_before'])} -> {num(c['parent_test_after'])} (forgetting "
                     f"{num(c['forgetting'])}); on the new data {num(c['new_test_before'])} -> "
                     f"{num(c['new_test_after'])}; replay {c['replay_rows']} rows, EWC λ {num(c['ewc_lambda'])}")
        if c.get("missing_classes"):
            lines.append(f"classes absent from the new data (kept): {', '.join(c['missing_classes'])}")
    lines += [f"warning: {w}" for w in result.get("warnings") or []]
    params = run.get("params") or {}
    lines.append("params: " + ", ".join(f"{k}={params[k]}" for k in sorted(params) if not isinstance(params[k], dict)))
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(p) for p in text.replace(" ", "").split(",") if p]


class TrainView(QWidget):
    """Start a training run, watch its learning curve, cancel it, read its record."""

    trained = Signal(dict)  # train_task's result
    failed = Signal(str)

    def __init__(self, hub: Hub, runner: TaskRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.hub, self.runner = hub, runner
        self.task: Task | None = None
        self.summaries: dict[str, dict] = {}
        self.epochs_seen: list[int] = []
        self.dataset = QComboBox()
        self.dataset.currentIndexChanged.connect(self._dataset_changed)
        self.model = QLineEdit("model")
        self.arch = QComboBox()
        self.arch.addItems(["auto", "mlp", "cnn1d"])
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 10_000)
        self.patience = QSpinBox()
        self.patience.setRange(1, 10_000)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(1e-5, 1.0)
        self.lr.setSingleStep(1e-3)
        self.batch = QSpinBox()
        self.batch.setRange(1, 65_536)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.hidden = QLineEdit()
        self.channels = QLineEdit()
        self.kernel = QSpinBox()
        self.kernel.setRange(1, 1024)
        self.parent_version = QComboBox()
        self.fine_tune = QCheckBox("fine-tune the parent (replay + EWC)")
        self.fine_tune.setChecked(True)
        self.replay = QSpinBox()
        self.replay.setRange(-1, 1_000_000)
        self.replay.setSpecialValueText("default (500)")
        self.replay.setValue(-1)
        self.ewc = QDoubleSpinBox()
        self.ewc.setRange(-1.0, 1e6)
        self.ewc.setSpecialValueText("default (0)")
        self.ewc.setValue(-1.0)
        form = QFormLayout()
        for label, w in (("Dataset", self.dataset), ("Model name", self.model), ("Architecture", self.arch),
                         ("Max epochs", self.epochs), ("Patience", self.patience), ("Learning rate", self.lr),
                         ("Batch size", self.batch), ("Seed", self.seed), ("MLP layers", self.hidden),
                         ("CNN channels", self.channels), ("Kernel size", self.kernel)):
            form.addRow(label, w)
        cont = QGroupBox("Continual learning")
        cf = QFormLayout(cont)
        cf.addRow("Parent version", self.parent_version)
        cf.addRow(self.fine_tune)
        cf.addRow("Replay rows", self.replay)
        cf.addRow("EWC λ", self.ewc)
        self.start_button = QPushButton("Train")
        self.start_button.clicked.connect(lambda: self.start())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        left = QVBoxLayout()
        left.addLayout(form)
        left.addWidget(cont)
        left.addLayout(buttons)
        left.addStretch(1)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.status = QLabel("Pick a dataset and press Train.")
        self.status.setWordWrap(True)
        self.loss_plot = CurvePlot("loss per epoch", "epoch")
        self.score_plot = CurvePlot("validation score per epoch", "epoch")
        self.record = QPlainTextEdit()
        self.record.setReadOnly(True)
        self.record.setPlaceholderText("the run's record appears here when training ends")
        right = QVBoxLayout()
        right.addWidget(self.progress)
        right.addWidget(self.status)
        plots = QHBoxLayout()
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.score_plot)
        right.addLayout(plots, 3)
        right.addWidget(self.record, 2)
        lay = QHBoxLayout(self)
        lw = QWidget()
        lw.setLayout(left)
        lw.setMaximumWidth(340)
        lay.addWidget(lw)
        lay.addLayout(right, 1)
        self.apply_defaults(default_params(None))

    # --- choices ------------------------------------------------------------------------
    def set_choices(self, datasets: list[dict], versions: list[dict]) -> None:
        """Fill the dataset and parent lists (records from the hub), keeping the current picks."""
        current, parent = self.dataset.currentData(), self.parent_version.currentData()
        self.summaries = {d["id"]: {"rows": d["rows"], "window_shape": window_grid(d.get("features") or [])}
                          for d in datasets}
        self.dataset.blockSignals(True)  # the operator's parameters stay unless the dataset changes
        self.dataset.clear()
        for d in datasets:
            self.dataset.addItem(f"{d['id']} {d.get('name', '')} ({d['rows']} rows)", d["id"])
        kept = current is not None and self.dataset.findData(current) >= 0
        if kept:
            self.dataset.setCurrentIndex(self.dataset.findData(current))
        self.dataset.blockSignals(False)
        self.parent_version.clear()
        self.parent_version.addItem("(none: train from scratch)", None)
        for v in versions:
            self.parent_version.addItem(f"{v['id']} {headline(v.get('metrics'))}", v["id"])
        if not kept:
            self._dataset_changed()
        if parent is not None and self.parent_version.findData(parent) >= 0:
            self.parent_version.setCurrentIndex(self.parent_version.findData(parent))

    def _dataset_changed(self, *_: object) -> None:
        self.apply_defaults(default_params(self.summaries.get(self.dataset.currentData())))

    def apply_defaults(self, p: dict[str, Any]) -> None:
        self.arch.setCurrentText(p.get("arch", "auto"))
        self.epochs.setValue(int(p["epochs"]))
        self.patience.setValue(int(p["patience"]))
        self.lr.setValue(float(p["lr"]))
        self.batch.setValue(int(p["batch_size"]))
        self.seed.setValue(int(p["seed"]))
        self.hidden.setText(",".join(map(str, p.get("hidden", [64, 32]))))
        self.channels.setText(",".join(map(str, p.get("channels", [16, 32]))))
        self.kernel.setValue(int(p.get("kernel_size", 5)))

    def params(self) -> dict[str, Any]:
        """The parameters as :meth:`Hub.train` takes them (only the fields the chosen arch uses)."""
        p: dict[str, Any] = {"arch": self.arch.currentText(), "epochs": self.epochs.value(),
                             "patience": self.patience.value(), "lr": self.lr.value(),
                             "batch_size": self.batch.value(), "seed": self.seed.value()}
        if p["arch"] in ("mlp", "auto"):
            p["hidden"] = _ints(self.hidden.text())
        if p["arch"] in ("cnn1d", "auto"):
            p["channels"] = _ints(self.channels.text())
            p["kernel_size"] = self.kernel.value()
        return p

    def request(self) -> TrainRequest:
        parent = self.parent_version.currentData()
        return TrainRequest(
            dataset=str(self.dataset.currentData() or ""), model=self.model.text().strip(), params=self.params(),
            parent=parent, fine_tune=self.fine_tune.isChecked(),
            replay_size=self.replay.value() if parent and self.replay.value() >= 0 else None,
            ewc_lambda=self.ewc.value() if parent and self.ewc.value() >= 0 else None)

    # --- running ------------------------------------------------------------------------
    def start(self, req: TrainRequest | None = None) -> Task | None:
        if self.task is not None and self.task.running:
            self.failed.emit("a training run is already going; cancel it or wait for it")
            return None
        try:
            req = req or self.request()
        except ValueError as exc:
            self.failed.emit(f"check the layer widths (comma-separated integers): {exc}")
            return None
        if not req.dataset:
            self.failed.emit("no dataset to train on: import one in the Data view first")
            return None
        self.loss_plot.clear()
        self.score_plot.clear()
        self.epochs_seen = []
        self.record.clear()
        self.progress.setValue(0)
        self.status.setText(f"training {req.model} on {req.dataset} …")
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        # in its own process: torch's export and onnxruntime hold the GIL for long stretches
        task = self.runner.start_in_process("train", train_job, str(self.hub.home.root), self.hub.actor, req)
        task.progress.connect(self.on_progress)
        task.result.connect(self.on_result)
        task.error.connect(self.on_error)
        task.cancelled.connect(self.on_cancelled)
        task.finished.connect(self._idle)
        self.task = task
        return task

    def cancel(self) -> None:
        if self.task is not None and self.task.running:
            self.task.cancel()
            self.status.setText("cancelling at the end of this epoch …")

    def on_progress(self, fraction: float, text: str, event: object) -> None:
        if isinstance(event, ProgressEvent) and event.stage == "train" and event.metrics:
            epoch = int(event.done)
            self.epochs_seen.append(epoch)
            m = event.metrics
            for name in ("train_loss", "val_loss"):
                if name in m:
                    self.loss_plot.add_point(name, epoch, m[name])
            for name in ("val_accuracy", "val_mae", "val_rmse"):
                if name in m:
                    self.score_plot.add_point(name, epoch, m[name])
            if "ewc_penalty" in m:
                self.loss_plot.add_point("ewc_penalty", epoch, m["ewc_penalty"])
        if fraction >= 0:
            self.progress.setValue(int(fraction * 1000))
        self.status.setText(text)

    def on_result(self, result: dict) -> None:
        self.progress.setValue(1000)
        self.status.setText(f"trained {result['version']['id']}")
        self.record.setPlainText(record_text(result))
        self.trained.emit(result)

    def on_error(self, message: str) -> None:
        self.status.setText("training failed (see the message above)")
        self.failed.emit(message)

    def on_cancelled(self, message: str) -> None:
        self.status.setText(f"cancelled: {message}")

    def _idle(self) -> None:
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
