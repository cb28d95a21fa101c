"""The Settings view: the broker connection (URL, credentials, TLS files) with a test-connection
button that says exactly what failed, the hub key (id, public key export for provisioning an
agent) and the 'enroll an agent' helper that writes the agent's folder and config
(:meth:`Hub.enroll_agent`). Every hub call runs off the GUI thread."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from PySide6.QtCore import QSettings, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from edgeloop.agent.connection import broker_from_options
from edgeloop.app.tasks import Task, TaskRunner
from edgeloop.hub.services import Hub

__all__ = ["SettingsView", "export_public_key", "parse_tags", "test_broker"]


def test_broker(hub: Hub, url: str, *, username: str = "", password_file: str = "", ca_file: str = "",
                cert_file: str = "", key_file: str = "", timeout: float = 5.0) -> str:
    """Connect to the broker as the hub would and disconnect; raises the specific error
    (:class:`~edgeloop.agent.connect_errors.BrokerConnectError` with its code, or a ConfigError)."""
    opt = lambda s: Path(s) if s else None
    settings = broker_from_options(url, username=username or None, password_file=opt(password_file),
                                   ca_file=opt(ca_file), cert_file=opt(cert_file), key_file=opt(key_file))
    t0 = time.monotonic()
    fleet = hub.fleet(settings)
    fleet.start(timeout)
    try:
        return f"connected to {settings.url} in {(time.monotonic() - t0) * 1000:.0f} ms"
    finally:
        fleet.stop()


test_broker.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def export_public_key(hub: Hub, out: Path | str) -> str:
    """Copy the hub's public key (PEM) to ``out`` for an agent's ``trusted_keys``; returns the path."""
    shutil.copyfile(hub.public_key_path, out)
    return str(out)


def parse_tags(text: str) -> dict[str, str]:
    """``site=lab, ring=x`` -> ``{"site": "lab", "ring": "x"}``."""
    tags = {}
    for part in text.split(","):
        if part.strip():
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"tag {part.strip()!r} needs a value: write name=value")
            tags[key.strip()] = value.strip()
    return tags


class SettingsView(QWidget):
    failed = Signal(str)
    tested = Signal(bool, str)  # ok, what happened
    enrolled = Signal(dict)

    def __init__(self, hub: Hub, runner: TaskRunner, settings: QSettings | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.hub, self.runner, self.settings = hub, runner, settings
        self.url = QLineEdit(hub.config.broker or "")
        self.url.setPlaceholderText("mqtt://host:1883 or mqtts://host:8883")
        self.username = QLineEdit()
        self.password_file = QLineEdit()
        self.ca_file, self.cert_file, self.key_file = QLineEdit(), QLineEdit(), QLineEdit()
        for name, edit in (("broker/url", self.url), ("broker/username", self.username),
                           ("broker/password_file", self.password_file), ("broker/ca_file", self.ca_file),
                           ("broker/cert_file", self.cert_file), ("broker/key_file", self.key_file)):
            if settings is not None and settings.value(name):
                edit.setText(str(settings.value(name)))
            edit.editingFinished.connect(lambda n=name, e=edit: self._remember(n, e.text()))
        self.test_button = QPushButton("Test connection")
        self.test_button.clicked.connect(self.test_connection)
        self.test_result = QLabel("")
        self.test_result.setWordWrap(True)
        broker = QGroupBox("Broker")
        form = QFormLayout(broker)
        form.addRow("URL", self.url)
        form.addRow("user name", self.username)
        form.addRow("password file", self.password_file)
        form.addRow("CA file", self.ca_file)
        form.addRow("client certificate", self.cert_file)
        form.addRow("client key", self.key_file)
        form.addRow(self.test_button, self.test_result)

        info = hub.key_info()
        self.key_id = QLabel(info["key_id"])
        self.key_id.setTextInteractionFlags(self.key_id.textInteractionFlags().TextSelectableByMouse)
        export = QPushButton("Export the public key…")
        export.clicked.connect(self._export)
        key = QGroupBox("Hub key")
        kf = QFormLayout(key)
        kf.addRow("key id", self.key_id)
        kf.addRow("public key", QLabel(info["public"]))
        kf.addRow(export)

        self.agent_id = QLineEdit()
        self.agent_out = QLineEdit()
        self.agent_out.setPlaceholderText("folder to write (copied to the device)")
        self.agent_broker = QLineEdit(hub.config.broker or "")
        self.agent_broker.setPlaceholderText("the broker as the device reaches it")
        self.agent_tags = QLineEdit()
        self.agent_tags.setPlaceholderText("site=plant-a, hw=pi5")
        self.http_port = QSpinBox()
        self.http_port.setRange(0, 65535)
        self.http_port.setValue(8080)
        self.enroll_button = QPushButton("Write the agent's folder")
        self.enroll_button.clicked.connect(self.enroll)
        self.enroll_result = QPlainTextEdit()
        self.enroll_result.setReadOnly(True)
        self.enroll_result.setMaximumHeight(120)
        enroll = QGroupBox("Enroll an agent")
        ef = QFormLayout(enroll)
        ef.addRow("agent id", self.agent_id)
        row = QHBoxLayout()
        row.addWidget(self.agent_out, 1)
        browse = QPushButton("…")
        browse.clicked.connect(lambda: self.agent_out.setText(QFileDialog.getExistingDirectory(self) or
                                                              self.agent_out.text()))
        row.addWidget(browse)
        ef.addRow("folder", row)
        ef.addRow("broker", self.agent_broker)
        ef.addRow("tags", self.agent_tags)
        ef.addRow("HTTP port", self.http_port)
        ef.addRow(self.enroll_button)
        ef.addRow(self.enroll_result)

        lay = QVBoxLayout(self)
        for box in (broker, key, enroll):
            lay.addWidget(box)
        lay.addStretch(1)

    def _remember(self, name: str, value: str) -> None:
        if self.settings is not None:
            self.settings.setValue(name, value)

    def test_connection(self) -> Task:
        hub = self.hub
        args: dict[str, str] = dict(username=self.username.text().strip(),
                                    password_file=self.password_file.text().strip(),
                                    ca_file=self.ca_file.text().strip(), cert_file=self.cert_file.text().strip(),
                                    key_file=self.key_file.text().strip())
        url = self.url.text().strip()
        self.test_button.setEnabled(False)
        self.test_result.setText("connecting…")
        task = self.runner.start("test broker", lambda _st: test_broker(hub, url, **args))  # type: ignore[arg-type]
        task.result.connect(lambda text: self._tested(True, text))
        task.error.connect(lambda text: self._tested(False, text))
        task.finished.connect(lambda: self.test_button.setEnabled(True))
        return task

    def _tested(self, ok: bool, text: str) -> None:
        self.test_result.setText(("✔ " if ok else "✘ ") + text)
        self.tested.emit(ok, text)

    def _export(self) -> None:
        out, _ = QFileDialog.getSaveFileName(self, "Export the hub's public key", "hub_ed25519.pub.pem")
        if out:
            self.export_key(out)

    def export_key(self, out: str) -> Task:
        hub = self.hub
        task = self.runner.start("export key", lambda _st: export_public_key(hub, out))
        task.result.connect(lambda path: self.test_result.setText(f"public key written to {path}"))
        task.error.connect(self.failed)
        return task

    def prefill_enroll(self, agent_id: str) -> None:
        """From the Fleet view: an agent found by zeroconf, to enroll. A folder named after the agent
        enrolled before becomes the new agent's sibling folder; the last result is cleared."""
        previous, out = self.agent_id.text().strip(), self.agent_out.text().strip()
        if previous and out and Path(out).name == previous:
            self.agent_out.setText(str(Path(out).with_name(agent_id)))
        self.agent_id.setText(agent_id)
        self.enroll_result.clear()
        self.agent_out.setFocus()

    def enroll(self) -> Task | None:
        hub = self.hub
        try:
            tags = parse_tags(self.agent_tags.text())
        except ValueError as exc:
            self.failed.emit(str(exc))
            return None
        aid, out, broker, port = (self.agent_id.text().strip(), self.agent_out.text().strip(),
                                  self.agent_broker.text().strip(), self.http_port.value())
        if not (aid and out and broker):
            self.failed.emit("enrolling needs an agent id, a folder to write and the broker URL the device uses")
            return None
        self.enroll_button.setEnabled(False)  # one enrollment at a time: a second click would find the key written
        task = self.runner.start("enroll", lambda _st: hub.enroll_agent(aid, out, broker=broker, tags=tags,
                                                                         http_port=port))
        task.result.connect(self._enrolled)
        task.error.connect(self.failed)
        task.finished.connect(lambda: self.enroll_button.setEnabled(True))
        return task

    def _enrolled(self, result: dict) -> None:
        self.enroll_result.setPlainText("\n".join([f"wrote {result['config']} (agent key {result['keyid']})",
                                                   *[f"- {s}" for s in result["next_steps"]]]))
        self.enrolled.emit(result)
