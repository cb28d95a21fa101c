"""Screenshots of every view of the operator window, for docs/operator-guide.md.

Builds a throwaway hub home (two small tabular datasets, one of sensor windows, two
versions, a signed bundle, an alias and a gate), opens the real window offscreen and
drives it the way an operator would: checks a broken file and a good one, trains a
continual-learning child in the Train view, then opens the Registry's detail, aliases,
compare and lineage tabs and the Fleet view. Each view is saved as a PNG in
docs/screenshots/ (or --out). Run it as ``scripts/screenshots``.
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

from PySide6.QtWidgets import QApplication  # noqa: E402

from edgeloop.agent.wire.messages import ActiveModel, AgentState  # noqa: E402
from edgeloop.app.views.train import TrainRequest  # noqa: E402
from edgeloop.app.window import MainWindow  # noqa: E402
from edgeloop.hub.datasets import generate_sensor_data, generate_sensor_windows, write_csv  # noqa: E402
from edgeloop.hub.services import Hub  # noqa: E402


def wait(app: QApplication, pred: Callable[[], bool], timeout: float = 180.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise SystemExit(f"screenshots: timed out waiting for {what or 'the window'}")
        app.processEvents()
        time.sleep(0.02)


def settle(app: QApplication, win: MainWindow, seconds: float = 0.3) -> None:
    wait(app, lambda: not win.runner.running and not win.bridge.busy, what="the window's reads")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def build_home(root: Path, files: Path) -> Hub:
    hub = Hub(root, actor="operator")
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
    return hub


def add_drift(hub: Hub) -> None:
    """Drift windows from the real agent monitor for pump-01 (steady) and pump-02 (vibration shifts)."""
    import numpy as np

    from edgeloop.agent.drift import DriftMonitor, WindowPolicy, build_reference
    from edgeloop.agent.wire import messages

    rng = np.random.default_rng(5)
    names = ["temperature", "vibration", "pressure", "current"]
    ref = build_reference(rng.normal(0, 1, (4000, 4)), names, n_bins=10, window=200, min_rows=100)
    sha = hub.list_bundles()[0]["sha256"]
    for aid in ("pump-01", "pump-02"):
        mon = DriftMonitor(ref, agent_id=aid, model="pump", version="1", bundle_sha256=sha,
                           policy=WindowPolicy.of(ref))
        X = rng.normal(0, 1, (2400, 4))
        if aid == "pump-02":
            X[1000:, 1] += np.linspace(0.3, 2.0, 1400)
        for rep in mon.observe(X):
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
                               out: Path) -> list[str]:
    """Fleet (with an agent's detail), the rollout wizard's wave preview, Drift, Audit and Settings;
    returns the names of the shots taken of windows other than the main one (the wizard)."""
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
    if not wizard.grab().save(str(out / "rollouts-wizard.png")):
        raise SystemExit(f"screenshots: could not write {out / 'rollouts-wizard.png'}")
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
    return ["rollouts-wizard.png"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication(["screenshots"])
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp)
        hub = build_home(files / "hub", files)
        win = MainWindow(hub, refresh_ms=60_000, settings_path=files / "app.ini")
        win.resize(1280, 820)
        win.show()
        settle(app, win)
        shots: list[str] = []

        def shoot(name: str) -> None:
            settle(app, win)
            path = args.out / f"{name}.png"
            if not win.grab().save(str(path)):
                raise SystemExit(f"screenshots: could not write {path}")
            shots.append(path.name)

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
        train.start(TrainRequest(site_b, "pump", train.params(), parent="pump:1", replay_size=200, ewc_lambda=50.0))
        wait(app, lambda: len(train.epochs_seen) >= 8, what="the first epochs")
        shoot("train-running")
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

        shots += shoot_fleet_rollouts_drift(app, win, hub, shoot, args.out)
        win.close()
        hub.close()
    print(f"wrote {len(shots)} screenshots to {args.out}: {', '.join(shots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
