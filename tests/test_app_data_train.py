"""The operator window's Data, Train and Registry views, driven offscreen with pytest-qt on a
real hub home: import (checked, then registered) -> train (the learning curve gets every
epoch) -> the registry shows the version, with a QTimer probe proving the event loop never
stalls more than 100 ms meanwhile. Compare and lineage run on the shared trained hub."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6.QtWidgets", reason="the GUI needs the app extras")


from edgeloop.app.tasks import TaskRunner
from edgeloop.app.views.train import TrainRequest, default_params
from edgeloop.app.widgets.curve import nice_range, x_ticks
from edgeloop.app.widgets.lineage import build_graph
from edgeloop.app.window import MainWindow, startup_problem
from edgeloop.hub.datasets import generate_sensor_data, generate_sensor_windows, load_dataset, write_csv
from edgeloop.hub.errors import HubError
from edgeloop.hub.services import Hub
from tests.stall_probe import StallProbe


def _wait_task(qtbot, task, timeout=10_000):
    assert task is not None
    qtbot.waitUntil(lambda: not task.running, timeout=timeout)
    return task


def test_import_train_and_the_registry_shows_it_without_stalling_the_gui(qtbot, tmp_path):
    good, bad, windows = tmp_path / "pump.csv", tmp_path / "broken.csv", tmp_path / "vib.csv"
    write_csv(generate_sensor_data(90, seed=3), good)
    lines = good.read_text().splitlines()
    lines[4] = lines[4].replace(lines[4].split(",")[1], "oops", 1)  # line 5: a non-number
    bad.write_text("\n".join(lines) + "\n")
    write_csv(generate_sensor_windows(36, seed=4, channels=2, steps=16), windows)
    hub = Hub(tmp_path / "hub", actor="gui-test")
    win = MainWindow(hub, refresh_ms=60_000)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    data = win.data_view
    qtbot.waitUntil(lambda: not win.runner.running and not win.bridge.busy, timeout=10_000)  # first paint, reads
    probe = StallProbe()
    probe.start()

    # 1. a broken file: the validation report (line, column, rule) and nothing registered
    _wait_task(qtbot, data.check(str(bad)))
    assert data.inspection is not None and not data.inspection.valid
    assert not data.register_button.isEnabled()
    report = [[data.problems.text(r, c) for c in ("kind", "line", "column", "rule")]
              for r in range(data.problems.rowCount())]
    assert ["problem", "5", "vibration_rms", "non_numeric"] in report, report
    assert hub.list_datasets() == []

    probe.phase = "import"
    # 2. the good file: preview, inferred schema (editable JSON), then registered
    _wait_task(qtbot, data.check(str(good)))
    assert data.inspection.valid and data.register_button.isEnabled()
    assert "temperature_c" in data.preview.toPlainText().splitlines()[0]
    schema = json.loads(data.schema_edit.toPlainText())
    assert schema["label_column"] == "label" and schema["task"] == "classification"
    data.name_edit.setText("pump")
    with qtbot.waitSignal(data.registered, timeout=10_000) as got:
        data.register()
    record = got.args[0]
    assert record["name"] == "pump" and record["rows"] == 90
    qtbot.waitUntil(lambda: data.datasets.row_of(record["id"]) is not None, timeout=10_000)
    row = data.datasets.row_of(record["id"])
    assert data.datasets.text(row, "sha256") == record["sha256"][:16]
    assert data.datasets.text(row, "size").endswith("KiB")

    probe.phase = "windows"
    # window data: shown as channels x steps, a few windows plotted
    _wait_task(qtbot, data.check(str(windows)))
    assert data.inspection.valid and data.inspection.summary["window_shape"] == [2, 16]
    with qtbot.waitSignal(data.registered, timeout=10_000) as got:
        data.register()
    wid = got.args[0]["id"]
    qtbot.waitUntil(lambda: data.datasets.row_of(wid) is not None, timeout=10_000)
    _wait_task(qtbot, data.show_dataset(data.datasets.row_of(wid)))
    assert "2 channels × 16 steps" in data.detail.text()
    assert data.windows_box.isVisible() and [p.names() for p in data.window_plots] == [["ch0", "ch1"]] * 3
    assert len(data.window_plots[0].series("ch1")) == 16

    probe.phase = "train"
    # 3. train: the curve receives every epoch, the record follows
    train = win.train_view
    qtbot.waitUntil(lambda: train.dataset.findData(record["id"]) >= 0, timeout=10_000)
    train.dataset.setCurrentIndex(train.dataset.findData(record["id"]))
    assert train.arch.currentText() == "mlp" and train.params()["hidden"] == [32]  # 90 rows: a small MLP
    train.model.setText("gui-model")
    train.epochs.setValue(5)
    train.patience.setValue(50)
    with qtbot.waitSignal(train.trained, timeout=120_000) as got:
        assert train.start() is not None
    result = got.args[0]
    assert train.epochs_seen == [1, 2, 3, 4, 5]
    assert [x for x, _ in train.loss_plot.series("train_loss")] == [1, 2, 3, 4, 5]
    assert len(train.loss_plot.series("val_loss")) == 5 and len(train.score_plot.series("val_accuracy")) == 5
    assert train.epochs_seen == [h["epoch"] for h in result["run"]["history"]]
    assert result["version"]["id"] == "gui-model:1" and "gui-model:1" in train.record.toPlainText()
    assert "ships " in train.record.toPlainText()

    probe.phase = "registry"
    # 4. the registry shows the new version (refreshed after training), with its detail
    qtbot.waitUntil(lambda: win.versions.row_of("gui-model:1") is not None, timeout=10_000)
    reg = win.registry_view
    _wait_task(qtbot, reg.select("gui-model:1"))
    assert reg.selected() == "gui-model:1" and "fp32" in reg.summary.text()
    assert len(reg.curve.series("val_loss")) == 5 and len(reg.matrix.matrix) == 3
    assert set(reg.lineage.graph.kinds()) >= {"dataset", "run", "version"}
    stalls = probe.stop()
    assert probe.ticks > 20
    assert not stalls, f"the event loop stalled (phase, wall ms, ms not queued for a CPU): {stalls}; all: {probe.gaps}"

    # 5. aliases and gates: refused without a reason, audited with one
    assert reg.set_alias("staging", "") is None and "reason" in win.banner.text
    _wait_task(qtbot, reg.set_alias("staging", "first GUI build"))
    assert hub.aliases("gui-model")[0]["version_id"] == "gui-model:1"
    _wait_task(qtbot, reg.save_gate('{"test_accuracy": 0.2}', "a floor for the demo"))
    assert hub.gate_report("gui-model")["gate"]["min"] == {"test_accuracy": 0.2}
    audit = {(e["action"], e["target"]): e["detail"] for e in hub.list_audit(20)}
    assert audit[("alias.set", "gui-model@staging")]["reason"] == "first GUI build"
    assert audit[("model.gate", "gui-model")]["reason"] == "a floor for the demo"  # the change's own entry
    assert not any(action == "gate.reason" for action, _ in audit)
    qtbot.waitUntil(lambda: reg.aliases.row_of("staging") is not None, timeout=10_000)
    assert reg.aliases.text(reg.aliases.row_of("staging"), "reason") == "first GUI build"

    # 6. cancel: a long run stops at the next epoch, kept as cancelled
    req = TrainRequest(record["id"], "gui-model", {"epochs": 5000, "patience": 5000, "hidden": [8]})
    task = train.start(req)
    qtbot.waitUntil(lambda: len(train.epochs_seen) >= 1, timeout=60_000)
    with qtbot.waitSignal(task.cancelled, timeout=30_000):
        train.cancel()
    assert task.outcome == "cancelled" and "cancelled" in train.status.text()
    assert hub.list_runs("gui-model")[0]["status"] == "cancelled"
    win.close()
    hub.close()


def test_the_stall_probe_sees_a_thread_that_holds_the_gil(qtbot):
    """The probe's point: a worker thread in a long C call (holding the GIL) freezes the event loop."""
    probe = StallProbe()
    probe.start()
    hog = threading.Thread(target=lambda: sum(range(4 * 10**7)))  # one C loop, the GIL held throughout
    qtbot.wait(50)
    hog.start()
    qtbot.waitUntil(lambda: not hog.is_alive(), timeout=60_000)
    qtbot.wait(50)
    stalls = probe.stop()
    assert stalls, f"a GIL-holding thread went unnoticed: {probe.gaps}"


def test_compare_and_lineage_on_trained_versions(qtbot, trained):
    win = MainWindow(trained.hub, refresh_ms=60_000)
    qtbot.addWidget(win)
    reg = win.registry_view
    a, b = trained.v1.id, trained.v2.id
    _wait_task(qtbot, reg.compare(a, b))
    cmp = reg.comparison
    assert cmp is not None and cmp["a"]["id"] == a and cmp["b"]["id"] == b
    r = reg.compare_model.row_of("test_accuracy")
    assert r is not None
    m = cmp["metrics"]["test_accuracy"]
    assert reg.compare_model.text(r, "b - a") == f"{m['b'] - m['a']:+.4g}"
    assert reg.compare_model.row_of("param:hidden") is not None  # v2 has other layers
    assert reg.matrix_a.matrix == trained.v1.version["metrics"]["confusion_matrix"]
    assert {"a val_loss", "b val_loss"} <= set(reg.compare_curve.names())
    _wait_task(qtbot, reg.select(a))
    kinds = reg.lineage.graph.kinds()
    assert kinds.count("dataset") == 1 and "bundle" in kinds  # dataset -> run -> version -> bundle
    assert ("v:" + a, "b:" + trained.b1.sha256) in reg.lineage.graph.edges
    win.close()


def test_lineage_graph_links_deployments_captures_and_children():
    lineage = {
        "dataset": {"id": "ds-1", "name": "site", "rows": 90, "sha256": "ab" * 32},
        "captures": [],
        "runs": [{"id": "run-1", "status": "done"}],
        "versions": [{"id": "m:1", "run_id": "run-1", "chosen": "int8", "ancestors": [],
                      "bundles": [{"sha256": "cd" * 32, "deployments": [{"id": "dep-1", "agent_id": "pump-7"}]}],
                      "descendants": [{"id": "m:2", "parent_version": "m:1", "dataset_id": "ds-2"},
                                      {"id": "m:3", "parent_version": "m:2", "dataset_id": "ds-3"}]}],
    }
    g = build_graph(lineage, {"m:2": [{"batch_id": "cap-9", "agent_id": "pump-7", "rows": 40}]})
    assert [n.kind for n in g.nodes] == ["dataset", "run", "version", "bundle", "deployment", "child", "capture",
                                         "child"]
    edges = set(g.edges)
    assert {("ds:ds-1", "run:run-1"), ("run:run-1", "v:m:1"), ("v:m:1", "b:" + "cd" * 32),
            ("b:" + "cd" * 32, "dep:dep-1"), ("dep:dep-1", "cap:cap-9"), ("cap:cap-9", "v:m:2"),
            ("v:m:2", "v:m:3")} == edges
    assert [c[0].kind for c in g.columns()] == ["dataset", "run", "version", "bundle", "deployment", "capture",
                                                "child"]


def test_task_runner_reports_progress_results_errors_and_cancel(qtbot, tmp_path):
    runner = TaskRunner()
    seen: list[tuple[float, str]] = []

    def work(state):
        for i in range(5):
            state.report_progress((i + 1) / 5, f"step {i + 1}")
        return "done"

    task = runner.start("ok", work)
    task.progress.connect(lambda f, t, _e: seen.append((f, t)))
    with qtbot.waitSignal(task.result, timeout=5000) as got:
        pass
    assert got.args == ["done"] and [t for _, t in seen] == [f"step {i}" for i in range(1, 6)]

    notes = tmp_path / "notes.txt"
    notes.write_text("not data\n")
    task = runner.start("bad", lambda st: load_dataset(notes))
    with qtbot.waitSignal(task.error, timeout=5000) as err:
        pass
    assert "unsupported file type '.txt'" in err.args[0] and "Traceback" not in err.args[0]
    assert task.outcome == "error"

    def slow(state):
        while not state.is_cancelled():
            time.sleep(0.005)
        state.cancel_token.raise_if_cancelled("the test job")

    task = runner.start("slow", slow)
    with qtbot.waitSignal(task.cancelled, timeout=5000) as cancelled:
        task.cancel()
    assert "cancelled" in cancelled.args[0]
    assert runner.stop(5000) and runner.running == []


def test_defaults_scales_and_startup_messages(tmp_path):
    assert default_params({"rows": 3000})["arch"] == "mlp"
    windows = default_params({"rows": 40, "window_shape": [3, 4]})
    assert windows["arch"] == "cnn1d" and windows["kernel_size"] == 4
    assert nice_range([]) == (0.0, 1.0) and nice_range([2.0, 2.0]) == (1.5, 2.5)
    lo, hi = nice_range([0.0, 1.0])
    assert lo < 0.0 and hi > 1.0
    assert x_ticks(1.0, 12.0, 4, whole=True) == [1.0, 4.0, 6.0, 9.0, 12.0]  # no tick at 3.75 epochs
    assert x_ticks(1.0, 3.0, 4, whole=True) == [1.0, 2.0, 3.0]  # fewer epochs than ticks: each once
    assert x_ticks(0.0, 1.0, 4, whole=False) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert "Fix:" in startup_problem(HubError("database disk image is malformed"), tmp_path)
    assert "backup" in startup_problem(HubError("database disk image is malformed"), tmp_path)
    assert "--home" in startup_problem(NotADirectoryError("not a directory"), tmp_path / "f")


@pytest.mark.reliability("operator GUI", "started where Qt cannot open a window (no display; an X server that is "
                         "not there)", "explained on stderr with the fix instead of a Qt abort")
def test_a_start_without_a_usable_display_is_explained_with_the_fix(tmp_path):
    from edgeloop.app.startup import platform_problem

    bare = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    assert platform_problem({**bare, "QT_QPA_PLATFORM": "offscreen"}, "linux") is None
    no_display = platform_problem(bare, "linux")
    assert no_display is not None and "no display" in no_display and "QT_QPA_PLATFORM=offscreen" in no_display
    gone = platform_problem({**bare, "DISPLAY": ":93", "QT_QPA_PLATFORM": "xcb"}, "linux")
    assert gone is not None and "Fix: install the Qt platform libraries" in gone, gone
