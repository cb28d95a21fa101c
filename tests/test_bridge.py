"""A site broker bridged to a central broker (``edgeloop site bridge-config``), on real Mosquittos.

Agents connect to the site broker, the hub to the central one; the generated bridge carries the
fleet's topics. A deploy crosses in, drift reports cross out, and while the uplink is down the site
keeps answering local requests and queues its agents' reports, which reach the hub when it returns.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgeloop.agent.errors import ConfigError
from edgeloop.agent.wire import messages, topics
from edgeloop.agent.wire.messages import InferRequest
from edgeloop.hub.cli import parser as cli
from edgeloop.hub.fleet import MosquittoBroker
from edgeloop.hub.fleet.bridge import DOWNLINK, UPLINK, BridgeSpec, bridge_config, notification_topic
from edgeloop.hub.runtime import HubRuntime
from tests.conftest import wait_until, write_agent_config


def _central(workdir: Path, port: int | None = None) -> MosquittoBroker:
    """The central broker, persistent (its clients' sessions and queues survive a restart)."""
    workdir.mkdir(parents=True, exist_ok=True)
    # "user root": Mosquitto started as root would save its database as the user mosquitto, who cannot
    # enter pytest's private temporary folders
    user = "user root\n" if os.geteuid() == 0 else ""
    return MosquittoBroker(port=port, workdir=workdir,
                           extra_config=f"{user}persistence true\npersistence_location {workdir}/\n").start()


class Listener:
    """A persistent-session subscriber (a hub-like consumer) on one broker, keeping every message."""

    def __init__(self, broker: MosquittoBroker, client_id: str, *filters: str) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_message = self._on
        self.filters = filters
        self.client.on_connect = lambda c, *a: c.subscribe([(f, 1) for f in filters])
        self.client.connect(broker.address.host, broker.address.port)
        self.client.loop_start()

    def _on(self, client, userdata, msg) -> None:
        with self.lock:
            self.got.append((msg.topic, msg.payload))

    def of(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.got if t == topic]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_config_is_what_mosquitto_accepts_and_bad_settings_are_refused(mosquitto, tmp_path):
    spec = BridgeSpec("plant-a", f"mqtt://127.0.0.1:{mosquitto.address.port}", central_root="plant-a/edgeloop/v1",
                      username="plant-a", password="s3cret")
    text = bridge_config(spec)
    assert "connection edgeloop-site-plant-a\n" in text and "cleansession false\n" in text
    assert "remote_username plant-a\n" in text and "remote_password s3cret\n" in text
    # each fleet topic in one direction only, mapped to the central root
    for t in UPLINK:
        assert f"topic {t} out 1 edgeloop/v1/ plant-a/edgeloop/v1/\n" in text
    for t in DOWNLINK:
        assert f"topic {t} in 1 edgeloop/v1/ plant-a/edgeloop/v1/\n" in text
    assert not set(UPLINK) & set(DOWNLINK)
    assert "infer" not in text.replace("inference", "")  # inference stays at the site unless asked for
    assert "agents/+/infer in 1" in bridge_config(BridgeSpec("plant-a", "mqtt://h", inference=True))

    site = MosquittoBroker(extra_config=text).start()  # the real broker parses and runs it
    try:
        assert site.proc is not None and site.proc.poll() is None
    finally:
        site.stop()

    bad = BridgeSpec("plant a", "http://hub", cafile=Path("ca.pem"), certfile=Path("c.pem"), queue_limit=10)
    with pytest.raises(ConfigError) as e:
        bridge_config(bad)
    msg = str(e.value)
    for part in ("site name 'plant a'", "'http://hub' is not a broker URL", "give both --certfile and --keyfile",
                 "queue_limit must be"):
        assert part in msg
    with pytest.raises(ConfigError, match="mqtts:// needs --cafile"):
        bridge_config(BridgeSpec("s", "mqtts://hub:8883"))


def test_every_topic_of_the_layout_crosses_in_its_direction():
    """The layout in agent/wire/topics.py says who publishes each topic: the bridge carries each one."""
    layout = [line.split() for line in (topics.__doc__ or "").splitlines() if "/agents/{agent_id}/" in line]
    assert len(layout) >= 8
    for words in layout:
        leaf = words[0].split("/agents/{agent_id}/", 1)[1]
        line = " ".join(words)
        if "agent -> hub" in line:
            assert f"agents/+/{leaf}" in UPLINK, f"{leaf} goes agent -> hub but does not cross the bridge"
        elif "hub -> agent" in line:
            assert f"agents/+/{leaf}" in DOWNLINK, f"{leaf} goes hub -> agent but does not cross the bridge"
        else:  # inference, local by default, both ways with --inference
            assert leaf in ("infer", "infer/result"), line


def test_cli_writes_the_file_private_when_it_holds_a_password(tmp_path, capsys, monkeypatch):
    out = tmp_path / "conf.d" / "edgeloop-bridge.conf"
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    rc = cli.main(["site", "bridge-config", "plant-b", "--central", "mqtt://central.example:1883",
                   "--username", "plant-b", "--password-file", str(pw), "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0 and "written to" in printed and "restart the site's Mosquitto" in printed
    assert out.stat().st_mode & 0o777 == 0o600 and "remote_password hunter2" in out.read_text()
    assert cli.main(["site", "bridge-config", "plant-b", "--central", "mqtt://central.example", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["connection"] == "edgeloop-site-plant-b" and doc["config"].startswith("# edgeloop: bridge")
    monkeypatch.setenv("EDGELOOP_BRIDGE_PASSWORD", "x")
    assert cli.main(["site", "bridge-config", "plant-b", "--central", "mqtt://c"]) == 2
    assert "needs --username" in capsys.readouterr().err


def _infer_at_site(site: MosquittoBroker, agent_id: str, rows: list, n: int, timeout: float = 20.0) -> int:
    """``n`` inference requests made at the site (a local integrator); the answers counted."""
    answers: list[bytes] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_message = lambda cl, u, m: answers.append(m.payload)
    reply = f"local/{agent_id}/answers"
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.connect(site.address.host, site.address.port)
    c.subscribe(reply, 1)
    c.loop_start()
    try:
        assert done.wait(10)
        for i in range(n):
            req = InferRequest(id=f"r{i}-{time.monotonic_ns()}", inputs=[rows[i % len(rows)]], reply_to=reply)
            c.publish(topics.agent_topic(agent_id, topics.INFER), req.encode(), qos=1)
        wait_until(lambda: len(answers) >= n, timeout)
        return len(answers)
    finally:
        c.loop_stop()
        c.disconnect()


@pytest.mark.reliability("fleet", "the site's uplink to the central broker is lost and comes back",
                         "the site keeps answering; queued drift reports reach the hub when the uplink returns")
def test_a_rollout_and_drift_cross_the_bridge_and_reports_survive_a_lost_uplink(trained, tmp_path, agent_process):
    central = _central(tmp_path / "central")
    port = central.address.port
    spec = BridgeSpec("plant-a", central.address.url, reconnect_max_s=4)  # retries at most 4 s apart
    site = MosquittoBroker(workdir=tmp_path / "site", extra_config=bridge_config(spec) + "log_type notice\n").start()
    listener = None
    try:
        listener = Listener(central, "test-drift-intake", topics.all_agents(topics.DRIFT),
                            notification_topic("plant-a"))
        assert wait_until(lambda: listener.of(notification_topic("plant-a"))[-1:] == [b"1"], 20), \
            "the bridge did not report itself up on the central broker"
        aid = "site-a1"
        cfg = write_agent_config(tmp_path, aid, site, trained.public_pem,
                                 drift={"window_rows": 20, "min_rows": 10, "consecutive": 1})
        proc = agent_process(cfg)
        rows = trained.dataset.X[:40].tolist()
        hub = trained.hub
        runtime = HubRuntime(hub, central.address.url, heartbeat_s=1.0, rollout_tick_s=0.2).start()
        try:  # the hub sees only the central broker: a gated rollout to the site's agent
            assert runtime.fleet is not None and runtime.fleet.wait_online([aid], 30), proc.log()
            version = f"sensor-mlp:{trained.v1.version['version']}"
            st = hub.rollout_start(version=version, target=f"id:{aid}", strategy="all_at_once", bake_seconds=1.0,
                                   agent_timeout_seconds=60.0, gates={"min_requests": 10, "max_error_rate": 0.0})
            served = 0
            while hub.rollout_status(st["id"])["status"] in ("running", "baking") and served < 2000:
                served += _infer_at_site(site, aid, rows, 10, timeout=5)  # local traffic feeds the gates
            done = hub.rollout_status(st["id"], audit=50)
            assert done["status"] == "completed", done  # commands and chunks came in, results and stats went out
            assert runtime.fleet.agents()[aid].active.version == trained.v1.version["version"]
        finally:
            runtime.stop()

        drift_topic = topics.agent_topic(aid, topics.DRIFT)
        assert _infer_at_site(site, aid, rows, 40) == 40
        assert wait_until(lambda: len(listener.of(drift_topic)) >= 2, 20), proc.log()
        before = len(listener.of(drift_topic))

        # the uplink goes: the site goes on answering its own requests and queues the reports
        central.stop()
        assert _infer_at_site(site, aid, rows, 60) == 60
        time.sleep(1.0)  # the agent publishes its three reports to the site broker
        central = _central(tmp_path / "central", port=port)  # the listener and the bridge reconnect on their own
        assert wait_until(lambda: len(listener.of(drift_topic)) >= before + 3, 60), \
            (f"only {len(listener.of(drift_topic)) - before} of 3 queued reports arrived; agent log:\n{proc.log()}\n"
             f"site broker log:\n{(tmp_path / 'site' / 'mosquitto.log').read_text()[-3000:]}")
        reports = [messages.decode(p) for p in listener.of(drift_topic)]
        windows = [r.window for r in reports if isinstance(r, messages.DriftReport) and r.agent_id == aid]
        assert sorted(set(windows)) == list(range(min(windows), min(windows) + before + 3))  # none lost
        assert wait_until(lambda: listener.of(notification_topic("plant-a"))[-1:] == [b"1"], 30)
    finally:
        if listener is not None:
            listener.close()
        site.stop()
        central.stop()
