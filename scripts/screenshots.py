"""Screenshots of every view of the operator window, for docs/operator-guide.md.

Builds a throwaway hub home in a temporary folder (two small tabular datasets, one of
sensor windows, two trained versions, a signed bundle, an alias and a gate, three agents,
drift windows and a canary rollout), opens the real window offscreen and drives it the way
an operator would: checks a broken file and a good one, trains a continual-learning child
in the Train view, then opens the Registry's detail, aliases, compare and lineage tabs, the
Fleet, the rollout wizard, Rollouts, Drift, Audit and Settings. Each view is saved as a PNG
in docs/screenshots/ (or --out DIR), one progress line per view. Nothing outside the
temporary folder and the output folder is touched; no broker is needed.

Run it as ``scripts/screenshots`` (QT_QPA_PLATFORM defaults to offscreen, so it needs no
display). It trains three small models and takes about 20 s on two idle cores.
tests/test_screenshots.py runs it in CI and checks that it writes every picture the guide
links to.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PySide6.QtCore import QtMsgType, qInstallMessageHandler  # noqa: E402
from PySide6.QtWidgets import QApplication, QWidget  # noqa: E402

from edgeloop.agent.wire.messages import ActiveModel, AgentState  # noqa: E402
from edgeloop.app.views.train import TrainRequest  # noqa: E402
from edgeloop.app.window import MainWindow  # noqa: E402
from edgeloop.hub.datasets import generate_sensor_data, generate_sensor_windows, write_csv  # noqa: E402
from edgeloop.hub.services import Hub  # noqa: E402

# Every picture, in the order the script takes it, with what it shows (--help lists them).
VIEWS: tuple[tuple[str, str], ...] = (
    ("data-validation", "Data: a broken file's validation report"),
    ("data-schema", "Data: a good file's inferred schema"),
    ("data-datasets", "Data: the datasets, a window dataset selected"),
    ("train-running", "Train: a continual-learning child, epoch by epoch"),
    ("train-done", "Train: the run's record with the forgetting figures"),
    ("registry-detail", "Registry: a version's detail"),
    ("registry-aliases", "Registry: aliases and the gate"),
    ("registry-compare", "Registry: two versions compared"),
    ("registry-lineage", "Registry: the lineage of a version with a fine-tuned child"),
    ("fleet", "Fleet: the drifting agent's detail"),
    ("rollouts-wizard", "Rollouts: the wizard's wave preview (its own window, 640x560)"),
    ("rollouts", "Rollouts: a canary baking"),
    ("drift", "Drift: a shifted agent's charts"),
    ("audit", "Audit: the audit log"),
    ("settings", "Settings"),
)

# Failures reported by the Train view (or a picture taken in a slot); a wait gives up on the first
# instead of timing out.
FAILURES: list[str] = []


def _quiet_qt(mode: QtMsgType, context: object, message: str) -> None:
    """Qt's messages go to stderr as usual, less the offscreen plugin's note on every window shown."""
    if "does not support propagateSizeHints" not in message:
        print(message, file=sys.stderr)


def wait(app: QApplication, pred: Callable[[], bool], timeout: float = 180.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not pred():
        if FAILURES:
            raise SystemExit(f"screenshots: failed while waiting for {what or 'the window'}: {FAILURES[0]}")
        if time.monotonic() > end:
            raise SystemExit(f"screenshots: timed out after {timeout:.0f} s waiting for {what or 'the window'}")
        app.processEvents()
        time.sleep(0.02)


class Shots:
    """Saves each picture to ``out`` and prints a progress line for it."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.names: list[str] = []
        self.t0 = time.monotonic()

    def save(self, widget: QWidget, name: str) -> None:
        path = self.out / f"{name}.png"
        if not widget.grab().save(str(path)):
            raise SystemExit(f"screenshots: could not write {path}; check that the folder is writable")
        self.names.append(path.name)
        print(f"[{len(self.names):2d}/{len(VIEWS)}] {path.name:<22} {time.monotonic() - self.t0:5.1f} s",
              flush=True)


def say(text: str) -> None:
    print(text, flush=True)


def settle(app: QApplication, win: MainWindow, seconds: float = 0.3) -> None:
    wait(app, lambda: not win.runner.running and not win.bridge.busy, what="the window's reads")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def build_home(hub: Hub, files: Path) -> None:
    write_csv(generate_sensor_data(400, seed=1), files / "pump-site-a.csv")
    write_csv(generate_sensor_data(240, seed=2, shift=0.6), files / "pump-site-b.csv")
    write_csv(generate_sensor_windows(60, seed=3, channels=3, steps=32), files / "vibration-windows.csv")
    a = hub.import_dataset(files / "pump-site-a.csv")
    hub.import_dataset(files / "pump-site-b.csv")
    hub.import_dataset(files / "vibration-windows.csv")
    v1 = hub.train(a["id"], "pump", {"epochs": 30, "patience": 8, "seed": 0})
    hub.train(a["id"], "pump", {"epochs": 30, "patience": 8, "seed": 1, "hidden": [16]})
    bundle = hub.build_bundle(v1.id)
    hub.set_alias("pump", "production", v1.id, reason="best test accuracy of the first runs")
    hub.set_gate("pump", {"test_accuracy": 0.8})
    for i, status in enumerate(("online", "online", "offline")):
        active = ActiveModel("pump", "1", bundle.sha256) if status == "online" else None
        hub.registry.upsert_agent_state(AgentState(agent_id=f"pump-{i + 1:02d}", status=status, session=1,
                                                   agent_version="0.1.0", started_at=time.time() - 3600,
                                                   http_url=f"http://10.0.0.{i + 11}:8080", active=active))


def add_drift(hub: Hub) -> None:
    """Drift windows from the real agent monitor on pump:1's bundle (its reference, verified as an agent
    verifies it) for pump-01 (the process it was trained on) and pump-02 (vibration drifts upwards)."""
    import numpy as np

    from edgeloop.agent.drift import DriftMonitor, WindowPolicy
    from edgeloop.agent.wire import messages
    from edgeloop.agent.wire.bundle import verify_bundle
    from edgeloop.agent.wire.envelope import TrustedKeys
    from edgeloop.agent.wire.tensors import INPUT_NAME
    from edgeloop.hub.export.sessions import make_session

    sha = hub.list_bundles("pump:1")[0]["sha256"]
    _rec, data = hub.bundle_bytes(sha)
    vb = verify_bundle(data, TrustedKeys.of([hub.key.public]))
    drift = vb.manifest.drift
    assert drift is not None, "pump:1's bundle carries no drift reference"
    session = make_session(vb.model_bytes)
    probs_out = next(o.name for o in session.get_outputs() if "prob" in o.name)
    field = generate_sensor_data(2400, seed=7)
    col = list(field.feature_names).index("vibration_rms")
    for aid in ("pump-01", "pump-02"):
        mon = DriftMonitor(drift, agent_id=aid, model="pump", version="1", bundle_sha256=sha,
                           policy=WindowPolicy(rows=200, seconds=0.0, min_rows=100, consecutive=2),
                           performance=vb.manifest.performance)  # the accuracy the agent estimates
        X = field.X.copy()
        if aid == "pump-02":  # the mount loosens: vibration creeps up by 0.3 to 2 standard deviations
            X[1000:, col] += np.linspace(0.3, 2.0, len(X) - 1000) * X[:, col].std()
        probs = session.run([probs_out], {INPUT_NAME: X.astype(np.float32)})[0]
        for rep in mon.observe(X, probs):
            hub.registry.add_drift_report(messages.decode(rep.encode()))


def add_rollout(hub: Hub) -> None:
    """A canary of pump:3 baking on pump-01 (pump-02 waits for the next wave), built with the pure rollout
    machine and stored as the hub runtime stores a rollout (the screenshots run without a broker)."""
    from edgeloop.hub.rollout.events import AgentProgress, AgentReport, Start
    from edgeloop.hub.rollout.gates import Observation
    from edgeloop.hub.rollout.machine import new_rollout, step
    from edgeloop.hub.rollout.selector import AgentRecord

    plan = hub.rollout_plan("pump:3", "id:pump-01,id:pump-02", bake_seconds=600, gates={"min_requests": 200})

    def make(rid: str):  # type: ignore[no-untyped-def]
        t = time.time() - 120
        state, _ = step(new_rollout(rid, plan, t), Start(agents=(AgentRecord("pump-01", {}, True, "1"),
                                                                 AgentRecord("pump-02", {}, True, "1"))), t)
        for i, stage in enumerate(("transferring", "verifying", "baking")):
            state, _ = step(state, AgentProgress("pump-01", stage), t + 2 + i)
        obs = Observation(installed_ok=True, smoke_ok=True, requests=140, errors=0, latency_p99_ms=3.9,
                          replaced_p99_ms=4.1)
        state, _ = step(state, AgentReport("pump-01", obs), t + 90)
        return state

    hub.rollout_store.add(make, by="operator")


def shoot_fleet_rollouts_drift(app: QApplication, win: MainWindow, hub: Hub, shoot: Callable[[str], None],
                               shots: Shots) -> None:
    """Fleet (with an agent's detail), the rollout wizard's wave preview, Rollouts, Drift, Audit and
    Settings."""
    add_drift(hub)
    fleet = win.fleet_view
    win.tabs.setCurrentWidget(fleet)
    win.refresh_all()
    fleet.refresh_drift()
    wait(app, lambda: fleet.agents.rowCount() == 3 and fleet.drift != {}, what="the fleet")
    fleet.table.selectRow(fleet.agents.row_of("pump-02"))
    wait(app, lambda: fleet.detail.toPlainText().startswith("pump-02"), what="the agent's detail")
    shoot("fleet")
    win.tabs.setCurrentWidget(win.rollouts_view)
    wizard = win.rollouts_view.open_wizard()
    wizard.resize(640, 560)
    wait(app, lambda: wizard.version.count() > 0, what="the versions")
    wizard.version.setCurrentText("pump:3")
    wizard.target.setText("id:pump-01,id:pump-02")
    wizard.bake.setValue(600)
    wizard.min_requests.setValue(200)
    for _ in range(3):
        wizard.next()
    wait(app, lambda: bool(wizard.preview) or "cannot" in wizard.preview_text.toPlainText(), what="the preview")
    settle(app, win)
    shots.save(wizard, "rollouts-wizard")
    wizard.close()
    add_rollout(hub)
    view = win.rollouts_view
    wait(app, lambda: view.rollouts.rowCount() == 1, what="the rollout")
    view.rollouts_view.selectRow(0)
    wait(app, lambda: view.last_status is not None, what="the rollout's waves")
    shoot("rollouts")
    drift = win.drift_view
    win.tabs.setCurrentWidget(drift)
    wait(app, lambda: drift.table_model.row_of("pump/pump-02") is not None, what="the drift overview")
    drift.table.selectRow(drift.table_model.row_of("pump/pump-02"))
    wait(app, lambda: drift.detail is not None, what="the drift charts")
    shoot("drift")
    win.tabs.setCurrentWidget(win.audit_view)
    shoot("audit")
    win.tabs.setCurrentWidget(win.settings_view)
    shoot("settings")


def main(argv: list[str] | None = None) -> int:
    views = "\n".join(f"  {name + '.png':<22} {what}" for name, what in VIEWS)
    p = argparse.ArgumentParser(
        prog="scripts/screenshots", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"pictures written (1280x820 unless noted; existing files of these names are replaced):\n{views}")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots", metavar="DIR",
                   help="folder for the PNGs, created if missing (default: docs/screenshots/)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    qInstallMessageHandler(_quiet_qt)
    app = QApplication.instance() or QApplication(["screenshots"])
    with tempfile.TemporaryDirectory(prefix="edgeloop-screenshots-") as tmp:
        files = Path(tmp)
        shots = Shots(args.out)
        hub = Hub(files / "hub", actor="operator")
        win = MainWindow(hub, refresh_ms=60_000, settings_path=files / "app.ini")
        # the training process imports torch while the home is built: Train need not wait for it
        win.warm_worker()
        settle(app, win, 0.0)
        say(f"building a throwaway hub home in {files} (trains pump:1 and pump:2) ...")
        build_home(hub, files)
        say(f"opening the window offscreen; writing {len(VIEWS)} pictures to {args.out}")
        win.refresh_all()
        win.resize(1280, 820)
        win.show()
        settle(app, win)

        def shoot(name: str) -> None:
            settle(app, win)
            shots.save(win, name)

        # Data: a broken file's validation report, a good file's inferred schema, the datasets
        data = win.data_view
        win.tabs.setCurrentWidget(data)
        broken = files / "pump-broken.csv"
        lines = (files / "pump-site-b.csv").read_text().splitlines()
        lines[3] = lines[3].replace(lines[3].split(",")[0], "hot", 1)
        lines[7] = ",".join(lines[7].split(",")[:-2]) + ",," + lines[7].split(",")[-1]
        broken.write_text("\n".join(lines) + "\n")
        data.check(str(broken))
        shoot("data-validation")
        data.check(str(files / "pump-site-b.csv"))
        settle(app, win)
        data.import_tabs.setCurrentWidget(data.schema_edit)
        shoot("data-schema")
        rows = data.datasets.keys()
        data.datasets_view.selectRow(next(i for i, k in enumerate(rows)
                                          if "vibration" in data.datasets.text(i, "name")))
        shoot("data-datasets")

        # Train: a continual-learning child of pump:1 on site B, watched live
        train = win.train_view
        win.tabs.setCurrentWidget(train)
        site_b = next(k for i, k in enumerate(rows) if data.datasets.text(i, "name") == "pump-site-b")
        train.dataset.setCurrentIndex(train.dataset.findData(site_b))
        train.parent_version.setCurrentIndex(train.parent_version.findData("pump:1"))
        train.model.setText("pump")
        train.epochs.setValue(25)
        train.patience.setValue(25)
        train.replay.setValue(200)
        train.ewc.setValue(50.0)
        done: list[dict] = []
        train.trained.connect(done.append)
        train.failed.connect(FAILURES.append)
        say("training pump:3, a continual-learning child of pump:1, in the Train view ...")
        task = train.start(TrainRequest(site_b, "pump", train.params(), parent="pump:1", replay_size=200,
                                        ewc_lambda=50.0))
        if task is None:
            raise SystemExit(f"screenshots: the Train view did not start: {FAILURES}")
        running: list[bool] = []

        def shoot_running(*_: object) -> None:
            # On the GUI thread, right after the view drew the 8th epoch (connected after the view's own
            # slot): the picture shows the run going, however fast the rest of it is.
            if not running and len(train.epochs_seen) >= 8:
                running.append(True)
                try:
                    shots.save(win, "train-running")
                except SystemExit as exc:
                    FAILURES.append(str(exc))

        task.progress.connect(shoot_running)
        wait(app, lambda: bool(running), what="the first epochs")
        wait(app, lambda: bool(done), timeout=300, what="training")
        shoot("train-done")

        # Registry: detail, aliases and gate, compare, lineage
        reg = win.registry_view
        win.tabs.setCurrentWidget(reg)
        wait(app, lambda: reg.versions.row_of("pump:3") is not None, what="the new version")
        reg.versions_view.selectRow(reg.versions.row_of("pump:1"))
        wait(app, lambda: reg.selected() == "pump:1", what="pump:1")
        shoot("registry-detail")
        reg.tabs.setCurrentIndex(1)
        shoot("registry-aliases")
        reg.tabs.setCurrentIndex(2)
        reg.compare("pump:1", "pump:2")
        wait(app, lambda: reg.comparison is not None, what="the comparison")
        shoot("registry-compare")
        reg.tabs.setCurrentIndex(3)
        shoot("registry-lineage")

        shoot_fleet_rollouts_drift(app, win, hub, shoot, shots)
        win.close()
        hub.close()
    expected = [f"{name}.png" for name, _ in VIEWS]
    if shots.names != expected:  # VIEWS is what --help and the progress count promise
        raise SystemExit(f"screenshots: took {shots.names}, but VIEWS lists {expected}; update VIEWS")
    say(f"wrote {len(shots.names)} screenshots to {args.out} in {time.monotonic() - shots.t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
