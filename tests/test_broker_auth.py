"""An agent on a Mosquitto that wants a username and password (a real broker and a real password file).

The broker has two listeners sharing one topic space: one that requires a password
(the agents') and one open to anonymous clients (the test's hub; tests/test_broker_tls.py
has a hub logging in with a password and TLS). An agent with the right password connects and serves;
one with a wrong password says the broker refused it, keeps retrying, and stays up.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.connection import BrokerSettings
from edgeloop.agent.wire.messages import InferResult
from edgeloop.hub.fleet import MosquittoBroker, free_port, wait_for_port
from tests.conftest import wait_until, write_agent_config

pytestmark = pytest.mark.broker

USER, PASSWORD = "edge-agent", "s3cret-pass"


@dataclass
class _Listener:
    address: BrokerSettings


@dataclass
class AuthBroker:
    agents: _Listener  # password required
    hub: _Listener  # anonymous
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory) -> Iterator[AuthBroker]:
    work = tmp_path_factory.mktemp("auth-broker")
    passwd = work / "passwd"
    passwd.touch(mode=0o600)
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), USER, PASSWORD], check=True, timeout=10,
                   capture_output=True)
    assert USER in passwd.read_text() and PASSWORD not in passwd.read_text()  # stored hashed
    agents_port, hub_port = free_port(), free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"user {getpass.getuser()}\n"  # as root, mosquitto would drop to a user that cannot read tmp_path
        "per_listener_settings true\n"
        "persistence false\n"
        "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
        f"listener {agents_port} 127.0.0.1\n"
        "allow_anonymous false\n"
        f"password_file {passwd}\n"
        f"listener {hub_port} 127.0.0.1\n"
        "allow_anonymous true\n"
    )
    log_path = work / "mosquitto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([MosquittoBroker.executable(), "-c", str(conf)], stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            wait_for_port("127.0.0.1", agents_port)
            wait_for_port("127.0.0.1", hub_port)
            yield AuthBroker(_Listener(BrokerSettings("127.0.0.1", agents_port)),
                             _Listener(BrokerSettings("127.0.0.1", hub_port)), log_path)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture
def auth_fleet(trained, auth_broker):
    with trained.hub.fleet(auth_broker.hub.address.url) as f:
        yield f


def test_agent_with_the_right_password_connects_and_serves(trained, tmp_path, auth_broker, auth_fleet,
                                                           agent_process):
    cfg = write_agent_config(tmp_path, "auth-ok", auth_broker.agents, trained.public_pem,
                             mqtt_username=USER, mqtt_password=PASSWORD)
    proc = agent_process(cfg)
    assert auth_fleet.wait_online(["auth-ok"], 30), proc.log()
    out = auth_fleet.deploy("auth-ok", trained.b1.path.read_bytes(), model="sensor-mlp",
                            version=trained.v1.version["version"], timeout=30)
    assert out.ok, out.message
    res = auth_fleet.infer("auth-ok", trained.dataset.X[:2].tolist())
    assert isinstance(res, InferResult) and len(res.outputs["label"]) == 2
    # it got in as that user (mosquitto logs each client's username on connect)
    connected = [line for line in auth_broker.log().splitlines() if "as edgeloop-agent-auth-ok " in line]
    assert connected and all(f"u'{USER}'" in line for line in connected), auth_broker.log()


@pytest.mark.reliability("broker access control", "an agent with a wrong broker password",
                         "says so, keeps retrying with back-off, HTTP stays up, never online, no traceback")
def test_agent_with_a_wrong_password_says_so_keeps_retrying_and_stays_up(trained, tmp_path, auth_broker,
                                                                        auth_fleet, agent_process):
    http_port = free_port()
    cfg = write_agent_config(tmp_path, "auth-bad", auth_broker.agents, trained.public_pem,
                             mqtt_username=USER, mqtt_password="wrong")
    cfg.write_text(dataclasses.replace(AgentConfig.load(cfg), http_port=http_port).to_toml())
    proc = agent_process(cfg)

    def refusals() -> int:
        return sum("cannot connect to the MQTT broker" in line and f"refused user '{USER}': not authorised" in line
                   for line in proc.log().splitlines())

    # it retries after 1 s, then backs off (2 s, 4 s ...): two refusals prove it keeps trying
    assert wait_until(lambda: refusals() >= 2, 15), proc.log()
    assert proc.proc is not None and proc.proc.poll() is None, proc.log()
    assert "Traceback" not in proc.log()
    assert auth_fleet.status("auth-bad") is None  # it never got through
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/live", timeout=5) as r:
        assert r.status == 200 and json.loads(r.read()) == {"live": True}
    time.sleep(0.2)
    assert proc.stop() == 0  # and it stops cleanly when asked, connected or not
