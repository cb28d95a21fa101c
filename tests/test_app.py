"""The operator window, driven headless (QT_QPA_PLATFORM=offscreen) with pytest-qt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6.QtWidgets", reason="the GUI needs the app extras")

from PySide6.QtCore import QPersistentModelIndex, Qt

from edgeloop.agent.wire.messages import ActiveModel, AgentState
from edgeloop.app.bridge import HubBridge
from edgeloop.app.table_models import KeyedTableModel
from edgeloop.app.window import MainWindow
from edgeloop.hub.errors import HubError
from edgeloop.hub.services import Hub
from edgeloop.hub.views import FLEET_COLUMNS, VERSION_COLUMNS, Table, version_table

REPO = Path(__file__).resolve().parents[1]


def _state(agent_id: str, status: str = "online", session: int = 1, active: ActiveModel | None = None) -> AgentState:
    return AgentState(agent_id=agent_id, status=status, session=session, agent_version="0.1.0", started_at=1.0,
                      http_url="http://127.0.0.1:9", active=active)


def test_window_lists_versions_and_agents(qtbot, trained, tmp_path):
    reg = trained.hub.registry
    reg.upsert_agent_state(_state("gui-agent", active=ActiveModel("sensor-mlp", "1", trained.b1.sha256)))
    win = MainWindow(trained.hub, refresh_ms=60_000)
    qtbot.addWidget(win)
    win.show()
    n_versions = len(reg.list_versions())
    qtbot.waitUntil(lambda: win.versions.rowCount() == n_versions, timeout=5000)
    assert win.versions.header == VERSION_COLUMNS
    headers = [win.versions.headerData(i, Qt.Orientation.Horizontal) for i in range(win.versions.columnCount())]
    assert headers == VERSION_COLUMNS
    assert {trained.v1.id, trained.v2.id} <= set(win.versions.keys())
    # the window shows what the CLI prints: the same hub.views table, cell for cell
    cli = version_table(trained.hub.list_versions(), trained.hub.list_bundles())
    shown = [[win.versions.text(r, c) for c in range(len(VERSION_COLUMNS))] for r in range(win.versions.rowCount())]
    assert shown == cli.rows
    qtbot.waitUntil(lambda: win.agents.row_of("gui-agent") is not None, timeout=5000)
    r = win.agents.row_of("gui-agent")
    assert r is not None
    assert win.agents.text(r, "status") == "online"
    assert win.agents.text(r, "serving") == "sensor-mlp 1"
    assert win.agents.text(r, "bundle") == trained.b1.sha256[:12]
    assert win.agents_view.model() is win.agents and win.agents.columnCount() == len(FLEET_COLUMNS)
    assert "versions" in win.info.text()
    shot = tmp_path / "main-window.png"
    assert win.grab().save(str(shot)) and shot.stat().st_size > 1000


def test_refresh_button_picks_up_new_agents(qtbot, trained):
    win = MainWindow(trained.hub, refresh_ms=60_000)
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: "versions" in win.info.text(), timeout=5000)
    before = win.agents.rowCount()
    trained.hub.registry.mark_agent("late-agent", "offline")
    qtbot.mouseClick(win.refresh_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: win.agents.rowCount() == before + 1, timeout=5000)
    assert win.agents.text(win.agents.row_of("late-agent"), "status") == "offline"


class _WatchedHub(Hub):
    """A real hub that notes which thread calls it and labels the agents it returns."""

    def __init__(self, home: Path, fail: bool = False) -> None:
        super().__init__(home, actor="tests")
        self.fail = fail
        self.threads: list[int] = []

    def list_agents(self) -> list[dict]:
        self.threads.append(threading.get_ident())
        if self.fail:
            raise HubError("the registry is locked; try again")
        return [{**a, "http_url": "via-hub"} for a in super().list_agents()]


def test_the_window_reads_through_hub_methods_off_the_gui_thread(qtbot, tmp_path):
    hub = _WatchedHub(tmp_path / "hub")
    hub.registry.upsert_agent_state(_state("a1"))
    win = MainWindow(hub, refresh_ms=60_000)
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: win.agents.rowCount() == 1, timeout=5000)
    assert win.agents.text(0, "http") == "via-hub"  # what Hub.list_agents returned, not the SQLite row
    assert hub.threads and threading.get_ident() not in hub.threads
    win.close()
    hub.close()


def test_a_failing_hub_call_shows_the_error(qtbot, tmp_path):
    hub = _WatchedHub(tmp_path / "hub", fail=True)
    win = MainWindow(hub, refresh_ms=60_000)
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: win.info.text().startswith("error:"), timeout=5000)
    assert "registry is locked; try again" in win.info.text()
    assert win.agents.rowCount() == 0
    win.close()
    hub.close()


def test_refreshes_asked_for_while_one_runs_are_coalesced(qtbot, tmp_path):
    with Hub(tmp_path / "hub", actor="tests") as hub:
        bridge = HubBridge(hub)
        got: list[object] = []
        bridge.snapshot.connect(got.append)
        for _ in range(10):
            bridge.refresh()
        assert bridge.busy
        qtbot.waitUntil(lambda: not bridge.busy and len(got) == 2, timeout=5000)  # the first, then one more
        qtbot.wait(50)
        assert len(got) == 2
        assert bridge.stop()


def _table(*rows: tuple[str, str]) -> Table:
    return Table(["agent", "status"], [[k, s] for k, s in rows], [k for k, _ in rows])


class _Spy:
    def __init__(self, model: KeyedTableModel) -> None:
        self.events: list[tuple] = []
        model.rowsInserted.connect(lambda _p, a, b: self.events.append(("insert", a, b)))
        model.rowsRemoved.connect(lambda _p, a, b: self.events.append(("remove", a, b)))
        model.rowsMoved.connect(lambda _p, a, b, _d, to: self.events.append(("move", a, b, to)))
        model.dataChanged.connect(lambda tl, br, _roles: self.events.append(("changed", tl.row(), br.row())))
        model.modelReset.connect(lambda: self.events.append(("reset",)))


def test_the_table_model_updates_rows_in_place_by_key(qtmodeltester):
    model = KeyedTableModel(["agent", "status"])
    spy = _Spy(model)
    model.set_table(_table(("a", "online"), ("b", "online"), ("c", "online"), ("d", "online")))
    assert spy.events == [("insert", 0, 3)]
    qtmodeltester.check(model)
    c_index = QPersistentModelIndex(model.index(2, 1))

    spy.events.clear()
    model.set_table(_table(("a", "online"), ("b", "offline"), ("c", "offline"), ("d", "online")))
    assert spy.events == [("changed", 1, 2)]  # one range for the two changed neighbours

    spy.events.clear()
    model.set_table(_table(("a", "online"), ("b", "offline"), ("c", "offline"), ("d", "online")))
    assert spy.events == []  # nothing changed, nothing signalled

    spy.events.clear()  # drop a, add x and y after b, move d above c, change c
    model.set_table(_table(("b", "offline"), ("x", "new"), ("y", "new"), ("d", "online"), ("c", "online")))
    assert spy.events == [("remove", 0, 0), ("insert", 1, 2), ("move", 4, 4, 3), ("changed", 4, 4)]
    assert model.keys() == ["b", "x", "y", "d", "c"]
    assert [model.text(r, "status") for r in range(5)] == ["offline", "new", "new", "online", "online"]
    assert c_index.isValid() and c_index.row() == 4  # a selection on c follows it
    qtmodeltester.check(model)

    spy.events.clear()
    model.set_table(_table())
    assert spy.events == [("remove", 0, 4)] and model.rowCount() == 0
    assert ("reset",) not in spy.events


def test_the_table_model_refuses_tables_it_cannot_key():
    model = KeyedTableModel(["agent", "status"])
    with pytest.raises(ValueError, match="not unique"):
        model.set_table(_table(("a", "online"), ("a", "offline")))
    with pytest.raises(ValueError, match="give every row a key"):
        model.set_table(Table(["agent", "status"], [["a", "online"]], []))
    with pytest.raises(ValueError, match="columns"):
        model.set_table(Table(["agent"], [["a"]], ["a"]))
    assert model.rowCount() == 0


def test_the_installed_pyside6_keeps_its_references_to_none():
    """scripts/qt_none_refcount.py fails on a PySide6 that drops None references (6.12.0)."""
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "qt_none_refcount.py")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "drop=0" in proc.stdout


# --- a thousand agents, thousands of refreshes --------------------------------------------------
N_AGENTS = 1000
BRIDGE_REFRESHES = 250  # hub call on the pool -> signal -> model update, each after real status changes
REPLAYS = 7  # direct refreshes after each: the window shown again the snapshots it got before
CHANGES = 3  # agents whose state changes between bridge refreshes


def soak(home: str, out: str) -> int:
    """The child process: the real window on ``home``, auto-refreshing while agents change.

    Writes counters and the final table to ``out`` (JSON); an abort leaves no file and a
    non-zero exit status, which the test reports with the child's output.
    """
    import gc
    import random

    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(["soak"])
    hub = Hub(home, actor="tests")
    rng = random.Random(7)
    ids = [a["agent_id"] for a in hub.list_agents()]
    sessions = dict.fromkeys(ids, 1)
    stats: dict[str, Any] = dict.fromkeys(("bridge", "direct", "changes", "inserted", "removed", "moved", "changed",
                                            "resets"), 0)
    win = MainWindow(hub, refresh_ms=1)
    win.show()
    model = win.agents

    def add(name: str, n: int = 1) -> None:
        stats[name] += n

    model.rowsInserted.connect(lambda _p, a, b: add("inserted", b - a + 1))
    model.rowsRemoved.connect(lambda _p, a, b: add("removed", b - a + 1))
    model.rowsMoved.connect(lambda *_: add("moved"))
    model.dataChanged.connect(lambda tl, br, _roles: add("changed", br.row() - tl.row() + 1))
    model.modelReset.connect(lambda: add("resets"))
    loop = QEventLoop()
    seen: list = []
    target = [3]

    def on_snapshot(snapshot) -> None:  # after the window showed it
        stats["bridge"] += 1
        seen[:] = [*seen[-3:], snapshot]
        for k in range(REPLAYS if len(seen) > 1 else 0):  # older and newer snapshots, alternately
            win.show_snapshot(seen[k % len(seen)])
            stats["direct"] += 1
        for aid in rng.sample(ids, CHANGES):  # what the MQTT thread would store between refreshes
            sessions[aid] += 1
            status = "offline" if sessions[aid] % 2 == 0 else "online"
            active = ActiveModel("m", str(sessions[aid]), f"{sessions[aid]:064x}") if sessions[aid] % 3 == 0 else None
            hub.registry.upsert_agent_state(_state(aid, status, sessions[aid], active))
            stats["changes"] += 1
        if stats["bridge"] % 50 == 0:  # now and then a new agent reports
            aid = f"new-agent-{stats['bridge']:04d}"
            hub.registry.upsert_agent_state(_state(aid))
            ids.append(aid)
            sessions[aid] = 1
        if stats["bridge"] >= target[0]:
            win.timer.stop()
            loop.quit()

    def run_until(n: int) -> None:
        target[0] = n
        win.timer.start(1)
        QTimer.singleShot(100_000, loop.quit)  # a watchdog; the parent sees too few refreshes
        loop.exec()
        win.timer.stop()
        settle()

    def settle() -> None:  # deliver the refresh still running, and start none
        while win.bridge.busy:
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)

    win.bridge.snapshot.connect(on_snapshot)
    run_until(3)  # warm-up: lazy initialisation anywhere in Qt, SQLite or Python settles here
    gc.collect()
    stats["none_before"] = sys.getrefcount(None)
    run_until(BRIDGE_REFRESHES)
    win.bridge.snapshot.disconnect(on_snapshot)
    gc.collect()
    stats["none_after"] = sys.getrefcount(None)
    win.bridge.refresh()  # a last one, so the window shows the registry as it is now
    settle()
    stats["shown"] = {k: model.text(r, "status") for r, k in enumerate(model.keys())}
    stats["order"] = model.keys()
    stats["registry"] = {a["agent_id"]: a["status"] for a in hub.list_agents()}
    win.close()
    hub.close()
    Path(out).write_text(json.dumps(stats))
    return 0


def test_a_thousand_agents_refreshed_thousands_of_times_do_not_crash_the_window(tmp_path):
    home = tmp_path / "hub"
    with Hub(home, actor="tests") as hub:
        for i in range(N_AGENTS):
            active = ActiveModel("sensor-mlp", "1", "ab" * 32) if i % 2 else None
            hub.registry.upsert_agent_state(_state(f"agent-{i:04d}", "online" if i % 3 else "offline", 1, active))
    out = tmp_path / "soak.json"
    child = (f"import runpy, sys; sys.exit(runpy.run_path({__file__!r})['soak']"
             f"({str(home)!r}, {str(out)!r}))")
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=240, cwd=REPO,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert proc.returncode == 0 and out.exists(), (f"the window's process ended with {proc.returncode}:\n"
                                                   f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    stats = json.loads(out.read_text())
    assert stats["bridge"] >= BRIDGE_REFRESHES
    assert stats["bridge"] + stats["direct"] >= 2000
    assert stats["none_after"] >= stats["none_before"], f"PySide6 dropped references to None: {stats}"
    # rows really changed in place: statuses and new agents came through, nothing was reset
    assert stats["changes"] >= CHANGES * BRIDGE_REFRESHES
    assert stats["changed"] > stats["changes"] and stats["inserted"] >= N_AGENTS + BRIDGE_REFRESHES // 50
    assert stats["removed"] > 0 and stats["resets"] == 0  # replayed older snapshots lack the newest agents
    assert stats["inserted"] - stats["removed"] == len(stats["shown"]) and stats["inserted"] < 2 * N_AGENTS
    assert stats["shown"] == stats["registry"] and len(stats["shown"]) == N_AGENTS + BRIDGE_REFRESHES // 50
    assert stats["order"] == sorted(stats["registry"])
    initial = {f"agent-{i:04d}": "online" if i % 3 else "offline" for i in range(N_AGENTS)}
    assert sum(stats["shown"][k] != status for k, status in initial.items()) > 100
