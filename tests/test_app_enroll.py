"""Finding an agent on the network and enrolling it from the desktop app, offscreen, end to end.

A real agent process announces itself with zeroconf (``[discovery] zeroconf`` on the loopback
interface, as tests/test_agent_e2e.py runs it) before the hub knows it: it talks to the test's
Mosquitto under a topic root of its own, so the hub never hears of it over MQTT. The Fleet view's
*Find agents on the network* button (the real :meth:`Hub.discover` browse, InterfaceChoice.All)
lists it as not enrolled; *Enroll the selected agent…* opens Settings with its id filled in; the
Settings view writes the agent's folder (:meth:`Hub.enroll_agent`). The written config is then run
as the device would: the announcing agent is stopped, a real agent process starts from the
enrolled folder, and the window's in-process hub runtime takes its signed state (the key pinned at
enrollment) and shows it online in the Fleet view.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6.QtWidgets", reason="the GUI needs the app extras")
pytest.importorskip("zeroconf", reason="discovery needs zeroconf")

from PySide6.QtCore import Qt

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.app.window import MainWindow
from edgeloop.hub.services import Hub
from tests.conftest import AgentProcess, wait_until, write_agent_config

pytestmark = pytest.mark.broker


def _found(view, agent_id: str):
    """The found-list item of ``agent_id`` (None if it is not listed)."""
    for i in range(view.found.count()):
        item = view.found.item(i)
        if item.text().startswith(f"{agent_id}  "):
            return item
    return None


def _click(qtbot, found, item) -> None:
    qtbot.mouseClick(found.viewport(), Qt.MouseButton.LeftButton, pos=found.visualItemRect(item).center())


def _discover(view, qtbot, agent_id: str, state: str):
    """Click *Find agents on the network*; the item of ``agent_id`` once it says ``state``."""
    view.found.clear()
    qtbot.mouseClick(view.discover_button, Qt.MouseButton.LeftButton)
    assert not view.discover_button.isEnabled() and view.discover_button.text() == "searching…"
    qtbot.waitUntil(lambda: view.discover_button.isEnabled(), timeout=15_000)
    item = _found(view, agent_id)
    texts = [view.found.item(i).text() for i in range(view.found.count())]
    assert item is not None, texts
    assert item.text().endswith(state), texts
    return item


@pytest.fixture
def window(qapp, tmp_path, mosquitto):
    hub = Hub(tmp_path / "hub", actor="tests")
    win = MainWindow(hub, refresh_ms=600_000, broker=mosquitto.address.url, settings_path=tmp_path / "app.ini")
    try:
        assert win.runtime is not None, win.runtime_note
        win.show()
        yield win
    finally:
        win.close()
        hub.close()


def test_an_agent_found_by_zeroconf_is_enrolled_from_the_app_and_runs_from_the_written_folder(
        window, qtbot, mosquitto, tmp_path):
    win, hub = window, window.hub
    aid = f"zc-enroll-{os.getpid()}-{time.monotonic_ns() % 100_000}"
    errors: list[str] = []
    for view in (win.fleet_view, win.settings_view):
        view.failed.connect(errors.append)

    # the device before enrollment: a real agent announcing itself, unknown to the hub
    device = tmp_path / "before"
    device.mkdir()
    before = write_agent_config(device, aid, mosquitto, SigningKey.generate().public_pem(), zeroconf=True,
                                zeroconf_interfaces=["127.0.0.1"], topic_root=f"unenrolled-{os.getpid()}")
    announcing = AgentProcess(before, tmp_path / "before.log").start()
    enrolled_proc: AgentProcess | None = None
    try:
        assert wait_until(lambda: f"announced {aid}" in announcing.log(), 20), announcing.log()
        assert aid not in {a["agent_id"] for a in hub.list_agents()}

        fleet = win.fleet_view
        win.tabs.setCurrentWidget(fleet)
        item = _discover(fleet, qtbot, aid, "(not enrolled)")
        assert f"broker {mosquitto.address.host}:{mosquitto.address.port}" in item.text()
        assert not fleet.enroll_button.isEnabled()
        _click(qtbot, fleet.found, item)
        assert fleet.found.currentItem() is item and fleet.enroll_button.isEnabled()
        qtbot.mouseClick(fleet.enroll_button, Qt.MouseButton.LeftButton)
        settings = win.settings_view
        assert win.tabs.currentWidget() is settings
        assert settings.agent_id.text() == aid

        out = tmp_path / "device" / aid
        settings.agent_out.setText(str(out))
        settings.agent_broker.setText(mosquitto.address.url)
        settings.agent_tags.setText("site=lab, hw=pi5")
        settings.http_port.setValue(0)
        results: list[dict] = []
        settings.enrolled.connect(results.append)
        qtbot.mouseClick(settings.enroll_button, Qt.MouseButton.LeftButton)
        assert not settings.enroll_button.isEnabled()  # no second enrollment while this one runs
        qtbot.waitUntil(lambda: bool(results or errors) and settings.enroll_button.isEnabled(), timeout=10_000)
        assert not errors, errors
        result = results[0]
        config = Path(result["config"])
        assert config == out / "agent.toml" and config.is_file()
        assert f"wrote {config}" in settings.enroll_result.toPlainText()
        cfg = AgentConfig.load(config)  # the agent's own loader
        assert (cfg.agent_id, cfg.tags, cfg.topic_root) == (aid, {"site": "lab", "hw": "pi5"}, hub.config.topic_root)
        assert (cfg.mqtt_host, cfg.mqtt_port) == (mosquitto.address.host, mosquitto.address.port)
        assert cfg.load_agent_key().keyid == result["keyid"]
        assert cfg.load_trusted_keys().keyids() == [hub.key.keyid]
        assert {k["agent_id"]: k["keyid"] for k in hub.list_agent_keys()}.get(aid) == result["keyid"]

        win.tabs.setCurrentWidget(fleet)  # the entry enrolled from it says so at once: no second enrollment
        assert fleet.found.currentItem().text().endswith("(enrolled)") and not fleet.enroll_button.isEnabled()
        item = _discover(fleet, qtbot, aid, "(enrolled)")  # still announcing: the device runs its old config
        _click(qtbot, fleet.found, item)
        assert fleet.found.currentItem() is item and not fleet.enroll_button.isEnabled()

        # the folder copied onto the device: its agent restarts from it and joins the hub's fleet
        assert announcing.stop() == 0, announcing.log()
        enrolled_proc = AgentProcess(config, tmp_path / "enrolled.log").start()
        online = lambda: any(a["agent_id"] == aid and a["status"] == "online" for a in hub.list_agents())
        assert wait_until(online, 20), enrolled_proc.log()[-3000:]
        row = hub.registry.get_agent(aid)
        assert row["tags"] == {"site": "lab", "hw": "pi5"}
        assert hub.registry.get_agent_key(aid)["keyid"] == result["keyid"]  # it signs with the enrolled key
        win.refresh_all()
        qtbot.waitUntil(lambda: (r := fleet.agents.row_of(aid)) is not None
                        and fleet.agents.text(r, "status") == "online", timeout=10_000)
        assert fleet.agents.text(fleet.agents.row_of(aid), "tags") == "hw=pi5,site=lab"
        assert not errors, errors
    finally:
        for p in (announcing, enrolled_proc):
            if p is not None and p.proc is not None and p.proc.poll() is None:
                p.stop()
