"""The first operator window, driven headless (QT_QPA_PLATFORM=offscreen) with pytest-qt."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6.QtWidgets", reason="the GUI needs the app extras")

from edgeloop.agent.wire.messages import ActiveModel, AgentState
from edgeloop.app.main import AGENT_COLUMNS, VERSION_COLUMNS, MainWindow


def test_window_lists_versions_and_agents(qtbot, trained, tmp_path):
    reg = trained.hub.registry
    reg.upsert_agent_state(AgentState(agent_id="gui-agent", status="online", session=1, agent_version="0.1.0",
                                      started_at=1.0, http_url="http://127.0.0.1:9",
                                      active=ActiveModel("sensor-mlp", "1", trained.b1.sha256)))
    win = MainWindow(trained.hub, refresh_ms=60_000)
    qtbot.addWidget(win)
    win.show()
    n_versions = len(reg.list_versions())
    qtbot.waitUntil(lambda: win.versions.rowCount() == n_versions, timeout=5000)
    assert [win.versions.horizontalHeaderItem(i).text() for i in range(len(VERSION_COLUMNS))] == VERSION_COLUMNS
    ids = {win.versions.item(r, 0).text() for r in range(win.versions.rowCount())}
    assert {trained.v1.id, trained.v2.id} <= ids
    qtbot.waitUntil(lambda: win.agents.rowCount() >= 1, timeout=5000)
    agents = {win.agents.item(r, 0).text(): r for r in range(win.agents.rowCount())}
    r = agents["gui-agent"]
    assert win.agents.item(r, 1).text() == "online"
    assert win.agents.item(r, 2).text() == "sensor-mlp 1"
    assert len(AGENT_COLUMNS) == win.agents.columnCount()
    assert "versions" in win.info.text()
    shot = tmp_path / "main-window.png"
    assert win.grab().save(str(shot)) and shot.stat().st_size > 1000


def test_refresh_button_picks_up_new_agents(qtbot, trained):
    win = MainWindow(trained.hub, refresh_ms=60_000)
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: "versions" in win.info.text(), timeout=5000)
    before = win.agents.rowCount()
    trained.hub.registry.mark_agent("late-agent", "offline")
    qtbot.mouseClick(win.refresh_button, __import__("PySide6.QtCore", fromlist=["Qt"]).Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: win.agents.rowCount() == before + 1, timeout=5000)
