"""The Fleet, Rollouts, Drift, Audit and Settings views, offscreen, on a real hub home, a real
Mosquitto and three real agent processes serving a small real ONNX classifier.

The window runs the hub runtime in-process (as ``edgeloop app --broker`` does). A thread sends
every agent inference requests over MQTT, so serving reports carry real requests and latencies
for the rollout gates. iris 3 gives the same answers after ~100x the work: a canary of it fails
its p99 gate (how tests/test_rollout_runtime.py makes a failing canary). A 10 ms QTimer probe
measures the event loop while the GUI waits on the hub: no gap may exceed 100 ms.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6.QtWidgets", reason="the GUI needs the app extras")

from PySide6.QtCore import Qt

from edgeloop.agent.drift import DriftMonitor, WindowPolicy, build_reference
from edgeloop.agent.wire import messages
from edgeloop.app.views.audit import audit_view_table
from edgeloop.app.views.rollouts import wave_preview
from edgeloop.app.views.settings import parse_tags
from edgeloop.app.window import MainWindow
from edgeloop.hub.rollout.plan import RolloutPlan
from tests.conftest import AgentProcess, wait_until
from tests.stall_probe import StallProbe
from tests.test_rollout_runtime import _home, _seed_agent, _traffic

pytestmark = pytest.mark.broker

N = 3


class Rig:
    def __init__(self, hub, broker, tmp) -> None:
        self.hub, self.broker, self.tmp = hub, broker, tmp
        self.configs: dict = {}
        self.procs: dict = {}
        self.stop_traffic = threading.Event()
        self.win: MainWindow | None = None
        self.probe: StallProbe | None = None

    @property
    def ids(self) -> list[str]:
        return sorted(self.configs)

    def active(self, aid: str) -> str | None:
        return self.hub.registry.get_agent(aid)["active_version"]


@pytest.fixture(scope="module")
def rig(tmp_path_factory, mosquitto, qapp):
    tmp = tmp_path_factory.mktemp("app-rollouts")
    hub = _home(tmp)
    r = Rig(hub, mosquitto, tmp)
    for i in range(N):
        _seed_agent(r, f"gui{os.getpid() % 1000}-{i}", {"site": "lab"})
    for aid in r.ids:
        r.procs[aid] = AgentProcess(r.configs[aid], tmp / f"{aid}.log").start()
    win = MainWindow(hub, refresh_ms=300, broker=mosquitto.address.url, settings_path=tmp / "app.ini")
    r.win = win
    traffic = threading.Thread(target=_traffic, args=(r,), daemon=True)
    traffic.start()
    try:
        assert win.runtime is not None, win.runtime_note
        win.resize(1280, 800)
        win.show()
        r.probe = StallProbe()
        online = lambda a: (row := _row(hub, a)).get("status") == "online" and row.get("active_version") == "1"
        assert wait_until(lambda: all(online(a) for a in r.ids), 60), {a: r.procs[a].log()[-2000:] for a in r.ids}
        driver = win.runtime.rollouts
        assert wait_until(lambda: all((rep := driver.figures.serving.get(a)) is not None and
                                      (v := rep.version("iris", "1")) is not None and v.requests >= 3
                                      for a in r.ids), 60), "agents did not report serving iris 1"
        yield r
    finally:
        r.stop_traffic.set()
        win.close()
        for p in r.procs.values():
            if p.proc is not None:
                p.stop(kill=True)
        hub.close()


def _row(hub, aid: str) -> dict:
    try:
        return hub.registry.get_agent(aid)
    except Exception:
        return {}


def _shown(model, key: str, column: str) -> str | None:
    row = model.row_of(key)
    return None if row is None else model.text(row, column)


def test_the_fleet_view_shows_the_live_agents_and_an_agents_detail(rig, qtbot):
    win, probe = rig.win, rig.probe
    win.tabs.setCurrentWidget(win.fleet_view)
    view = win.fleet_view
    with probe.watch():
        qtbot.waitUntil(lambda: all(_shown(view.agents, a, "status") == "online" for a in rig.ids), timeout=10_000)
        assert all(_shown(view.agents, a, "serving") == "iris 1" and _shown(view.agents, a, "tags") == "site=lab"
                   and _shown(view.agents, a, "health") == "ok" and _shown(view.agents, a, "http").startswith("http")
                   for a in rig.ids)
        view.table.selectRow(view.agents.row_of(rig.ids[0]))
        qtbot.waitUntil(lambda: view.detail.toPlainText().startswith(rig.ids[0]), timeout=10_000)
    assert "serving: iris 1" in view.detail.toPlainText() and "recent events:" in view.detail.toPlainText()
    probe.check()


def test_a_rollout_from_the_wizard_with_a_failing_canary_halts_and_rolls_the_canary_back(rig, qtbot):
    win, probe, hub = rig.win, rig.probe, rig.hub
    win.tabs.setCurrentWidget(win.rollouts_view)
    view = win.rollouts_view
    wiz = view.open_wizard()
    qtbot.waitUntil(lambda: wiz.version.count() >= 4, timeout=10_000)
    wiz.version.setCurrentText("iris:3")
    wiz.target.setText("site=lab")
    wiz.canary.setValue(1)
    wiz.bake.setValue(1.0)
    wiz.timeout.setValue(30.0)
    wiz.min_requests.setValue(3)
    wiz.max_error.setValue(0.0)
    wiz.max_p99.setValue(5.0)
    for _ in range(3):
        wiz.next()
    assert wiz.currentId() == 3  # the preview page
    qtbot.waitUntil(lambda: bool(wiz.preview), timeout=10_000)
    assert wiz.preview == [("canary", rig.ids[:1]), ("wave 2", rig.ids[1:])]
    assert f"canary (1): {rig.ids[0]}" in wiz.preview_text.toPlainText()
    with probe.watch():
        wiz.accept()
        qtbot.waitUntil(lambda: view.last_status is not None and view.last_status["status"] == "rolled_back",
                        timeout=60_000)
    probe.check()
    st = view.last_status
    assert len(st["state"]["waves"]) == 1, st  # the second wave never started
    canary = rig.ids[0]
    reason = _shown(view.agents, f"canary/{canary}", "reason")
    assert reason is not None and "p99 latency" in reason, st
    assert "rolled_back" in view.status.text() and "canary failed" in view.status.text()
    assert not view.buttons["pause"].isEnabled() and not view.buttons["abort"].isEnabled()
    assert wait_until(lambda: rig.active(canary) == "1", 20)
    assert all(rig.active(a) == "1" for a in rig.ids[1:])
    sha3 = hub.registry.list_bundles("iris:3")[0]["sha256"]
    assert not [d for a in rig.ids[1:] for d in hub.registry.list_deployments(a) if d.get("bundle_sha256") == sha3]
    win.grab().save(str(rig.tmp / "rollouts.png"))


def test_a_finished_rollout_is_rolled_back_from_the_gui_after_confirmation(rig, qtbot):
    win, probe, hub = rig.win, rig.probe, rig.hub
    win.tabs.setCurrentWidget(win.rollouts_view)
    view = win.rollouts_view
    with probe.watch():
        view.start({"version": "iris:2", "target": "site=lab", "strategy": "all_at_once", "canary_agents": None,
                    "bake_seconds": 1.0, "agent_timeout_seconds": 30.0, "gates": {"min_requests": 3}})
        qtbot.waitUntil(lambda: view.last_status is not None and view.last_status["version"] == "2"
                        and view.last_status["status"] == "completed", timeout=60_000)
    probe.check()
    assert wait_until(lambda: all(rig.active(a) == "2" for a in rig.ids), 20)
    rid = view.selected
    asked: list[str] = []
    view.confirm = lambda title, text: asked.append(text) or False  # the operator says no: nothing is sent
    qtbot.waitUntil(lambda: view.buttons["rollback"].isEnabled(), timeout=5000)
    qtbot.mouseClick(view.buttons["rollback"], Qt.MouseButton.LeftButton)
    assert asked and rid in asked[0]
    time.sleep(0.3)
    assert all(rig.active(a) == "2" for a in rig.ids)
    view.confirm = lambda title, text: asked.append(text) or True
    done: list[dict] = []
    view.changed.connect(done.append)
    with probe.watch():
        qtbot.mouseClick(view.buttons["rollback"], Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: bool(done), timeout=60_000)
    probe.check()
    assert len(asked) == 2
    results = done[0]["rollback_results"]
    assert sorted(r["agent"] for r in results) == rig.ids and all(r["ok"] for r in results), results
    assert wait_until(lambda: all(rig.active(a) == "1" for a in rig.ids), 20)
    audit = hub.list_audit(20, action="rollback.request")
    assert audit and audit[0]["detail"]["results"] == dict.fromkeys(rig.ids, "rolled_back") or audit, audit


def _drift_reports(hub, agents: list[str]) -> None:
    """Windows from the real agent drift monitor, through the wire codec into the registry as the
    fleet's intake stores them; the last agent's feature ``petal_len`` shifts after three windows."""
    rng = np.random.default_rng(3)
    names = ["sepal_len", "sepal_wid", "petal_len", "petal_wid"]
    ref = build_reference(rng.normal(0, 1, (4000, 4)), names, n_bins=10, window=200, min_rows=100)
    for aid in agents:
        mon = DriftMonitor(ref, agent_id=aid, model="iris", version="1", bundle_sha256="ab" * 32,
                           policy=WindowPolicy.of(ref))
        X = rng.normal(0, 1, (1400, 4))
        if aid == agents[-1]:
            X[600:, 2] += 1.5
        for rep in mon.observe(X):
            hub.registry.add_drift_report(messages.decode(rep.encode()))


def test_the_drift_view_charts_a_shifted_agent_with_its_flagged_feature(rig, qtbot):
    win, probe, hub = rig.win, rig.probe, rig.hub
    ok, hot = rig.ids[0], rig.ids[-1]
    _drift_reports(hub, [ok, hot])
    view = win.drift_view
    with probe.watch():
        win.tabs.setCurrentWidget(view)  # shown: read
        qtbot.waitUntil(lambda: view.table_model.row_of(f"iris/{hot}") is not None, timeout=10_000)
        assert _shown(view.table_model, f"iris/{hot}", "drifting") == "petal_len"
        assert _shown(view.table_model, f"iris/{ok}", "drifting") == "-"
        view.table.selectRow(view.table_model.row_of(f"iris/{hot}"))
        qtbot.waitUntil(lambda: view.detail is not None and view.detail["entry"]["agent_id"] == hot, timeout=10_000)
    probe.check()
    assert view.feature.itemData(0) == "petal_len" and view.feature.itemText(0).startswith("⚠")
    assert view.feature.itemData(0, Qt.ItemDataRole.ForegroundRole) is not None  # highlighted
    psi = next(s for s in view.chart.data if s.name == "PSI")
    flagged = view.chart.flagged_points("PSI")
    assert flagged and min(flagged) >= 4 and psi.ys[-1] > view.chart.thresholds["PSI threshold"]
    assert max(psi.ys[:3]) < view.chart.thresholds["PSI threshold"] and not any(psi.flagged[:3])  # before it
    base, cur = view.histogram.shares.values()
    assert abs(sum(base) - 1) < 1e-9 and abs(sum(cur) - 1) < 1e-9
    centre = lambda s: sum(i * x for i, x in enumerate(s))
    assert centre(cur) > centre(base) + 1.5  # 1.5 sd to the right: the current histogram moved up the bins
    assert view.retrain_button.isEnabled() and view.capture_button.isEnabled()
    view.grab().save(str(rig.tmp / "drift.png"))
    # the same agent in the Fleet view's drift column
    win.tabs.setCurrentWidget(win.fleet_view)
    win.fleet_view.refresh_drift()
    qtbot.waitUntil(lambda: (_shown(win.fleet_view.agents, hot, "drift") or "").startswith("DRIFT"), timeout=10_000)
    assert _shown(win.fleet_view.agents, hot, "health") == "degraded (drift)"
    assert _shown(win.fleet_view.agents, ok, "drift").startswith("ok")


def test_audit_and_settings_views(rig, qtbot, tmp_path):
    win, hub = rig.win, rig.hub
    view = win.audit_view
    win.tabs.setCurrentWidget(view)
    view.action.setText("rollback.request")
    view.refresh()
    qtbot.waitUntil(lambda: view.entries.rowCount() >= 1, timeout=10_000)
    assert all(view.entries.text(r, "what") == "rollback.request" for r in range(view.entries.rowCount()))
    assert "rollback of" in view.entries.text(0, "why")  # the reason given with the rollback
    settings = win.settings_view
    win.tabs.setCurrentWidget(settings)
    assert settings.key_id.text() == hub.key.keyid
    results: list[tuple[bool, str]] = []
    settings.tested.connect(lambda ok, text: results.append((ok, text)))
    settings.url.setText(rig.broker.address.url)
    settings.test_connection()
    qtbot.waitUntil(lambda: len(results) == 1, timeout=15_000)
    assert results[0][0] and "connected to" in results[0][1]
    settings.url.setText("mqtt://127.0.0.1:1")  # nothing listens there: the specific error
    settings.test_connection()
    qtbot.waitUntil(lambda: len(results) == 2, timeout=15_000)
    assert not results[1][0] and "127.0.0.1:1" in results[1][1] and "refused" in results[1][1].lower(), results
    pem = tmp_path / "hub.pub.pem"
    settings.export_key(str(pem))
    qtbot.waitUntil(pem.exists, timeout=5000)
    assert pem.read_bytes() == hub.key.public_pem()
    enrolled: list[dict] = []
    settings.enrolled.connect(enrolled.append)
    settings.prefill_enroll("new-pi")
    settings.agent_out.setText(str(tmp_path / "new-pi"))
    settings.agent_broker.setText("mqtt://10.0.0.2:1883")
    settings.agent_tags.setText("site=lab, hw=pi5")
    settings.enroll()
    qtbot.waitUntil(lambda: bool(enrolled), timeout=10_000)
    assert Path(enrolled[0]["config"]).is_file()
    assert enrolled[0]["tags"] == {"site": "lab", "hw": "pi5"}
    assert any(k["agent_id"] == "new-pi" for k in hub.list_agent_keys())
    assert "edgeloop-agent run" in settings.enroll_result.toPlainText()
    settings.prefill_enroll("next-pi")  # the next agent from the Fleet view: its own folder, no stale result
    assert settings.agent_out.text() == str(tmp_path / "next-pi") and not settings.enroll_result.toPlainText()
    win.grab().save(str(rig.tmp / "settings.png"))


def test_wave_preview_takes_agents_as_the_rollout_machine_does():
    agents = [{"agent_id": f"a{i}", "tags": {"site": "x" if i != 3 else "y"}, "status": "offline" if i == 5
               else "online"} for i in (5, 4, 3, 2, 1, 0, 6)]
    plan = RolloutPlan(model="m", version="2", target="site=x", canary_agents=1, ramp="double").validate()
    assert wave_preview(plan, agents) == [("canary", ["a0"]), ("wave 2", ["a1", "a2"]), ("wave 3", ["a4", "a6"])]
    plan = RolloutPlan(model="m", version="2", target="site=x", strategy="all_at_once", canary_agents=None).validate()
    assert wave_preview(plan, agents) == [("wave 1", ["a0", "a1", "a2", "a4", "a6"])]
    assert parse_tags(" site=lab, hw=pi5 ") == {"site": "lab", "hw": "pi5"}
    with pytest.raises(ValueError, match="name=value"):
        parse_tags("site")
    rows = audit_view_table([{"id": 1, "at": 0.0, "actor": "ann", "action": "rollback.request", "target": "v1",
                              "detail": {"reason": "bad canary"}},
                             {"id": 2, "at": 0.0, "actor": "bob", "action": "alias.set", "target": "v2",
                              "detail": {}}], actor="an")
    assert rows.keys == ["1"] and rows.rows[0][-1] == "bad canary"
