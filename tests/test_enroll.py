"""Enrolling an agent in one step (``Hub.enroll_agent``, ``edgeloop agent enroll``): the folder it writes
loads with ``AgentConfig.load`` after being copied elsewhere, a real agent process runs from it with
the key made at enrollment (pinned on the hub before the agent ever connects), and the hub takes its
signed state and events (real Mosquitto, real keys, real registry). With the shipped secure broker
setup (packaging/mosquitto), enrollment also adds the agent's broker account: after a broker reload
the agent logs in over TLS with it. Plus the refusals (a folder holding a key, an id enrolled
already, a password in the URL) and ``edgeloop agent keys pin|forget|list``."""

from __future__ import annotations

import getpass
import json
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.connection import BrokerSettings, TlsSettings
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.hub.cli import main
from edgeloop.hub.fleet import MosquittoBroker, free_port, wait_for_port
from edgeloop.hub.services import Hub
from edgeloop.hub.services.agents import AgentKeyError
from edgeloop.hub.services.enrollment import EnrollmentError
from tests.conftest import REPO, AgentProcess, unavailable, wait_until

SHA = "ab" * 32


@pytest.fixture
def hub(tmp_path):
    with Hub(tmp_path / "hub", actor="tests") as h:
        yield h


def agent_id(prefix: str = "enr") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def device_copy(folder: Path, tmp_path: Path) -> Path:
    """The enrolled folder as copied onto a device (elsewhere: every path in it must be relative)."""
    dest = tmp_path / "device" / folder.name
    shutil.copytree(folder, dest)
    return dest / "agent.toml"


@pytest.mark.broker
def test_an_enrolled_agent_runs_from_its_folder_and_the_hub_takes_its_signed_reports(hub, mosquitto, tmp_path):
    aid = agent_id()
    doc = hub.enroll_agent(aid, tmp_path / "out" / aid, broker=mosquitto.address.url,
                           tags={"site": "plant-a", "hw": "pi5"}, http_port=0)
    out = Path(doc["out"])
    assert {"agent.toml", "agent_key.pem", "agent_key.pub.pem", "hub_ed25519.pub.pem"} <= set(doc["files"])
    assert (out / "agent_key.pem").stat().st_mode & 0o777 == 0o600
    assert (out / "agent.toml").stat().st_mode & 0o777 == 0o600
    made = SigningKey.from_pem((out / "agent_key.pem").read_bytes())
    pinned = hub.registry.get_agent_key(aid)
    assert pinned["source"] == "enrolled" and pinned["keyid"] == made.keyid == doc["keyid"]
    assert [a["action"] for a in hub.list_audit(target=aid)][:2] == ["agent.enrolled", "agent.key_pinned"]

    config = device_copy(out, tmp_path)
    cfg = AgentConfig.load(config)
    base = config.parent
    assert (cfg.agent_id, cfg.tags, cfg.topic_root) == (aid, {"site": "plant-a", "hw": "pi5"}, hub.config.topic_root)
    assert cfg.agent_key_path == base / "agent_key.pem" and cfg.state_dir == base / "state"
    assert cfg.trusted_keys == [base / "hub_ed25519.pub.pem"] and cfg.load_trusted_keys().keyids() == [hub.key.keyid]
    shutil.rmtree(out)  # the agent runs from the device's copy only

    proc = AgentProcess(config, tmp_path / "agent.log").start()
    try:
        with hub.fleet(mosquitto.address.url) as fleet:
            # a state signed by any other key than the pinned one would be refused: joining proves the agent
            # signs with the key made at enrollment (not one it made itself)
            assert fleet.wait_online([aid], 30), proc.log()
            assert wait_until(lambda: fleet.is_member(aid), 10)
            outcome = fleet.rollback(aid, SHA, reason="enrollment test", timeout=30)  # refused, signed by the agent
            assert outcome.code not in ("timeout", "ok") and not outcome.ok, outcome
            assert fleet.trust.refused == 0
        row = hub.registry.get_agent(aid)
        assert row["tags"] == {"hw": "pi5", "site": "plant-a"} and row["member"] == 1
        assert hub.registry.get_agent_key(aid)["source"] == "enrolled"  # not moved by the agent's state
        assert SigningKey.from_pem((base / "agent_key.pem").read_bytes()).keyid == made.keyid  # used, not replaced
        assert not (base / "state" / "agent_key.pem").exists()
    finally:
        assert proc.stop() == 0, proc.log()


@pytest.mark.reliability("signing keys",
                         "enroll into a folder holding an agent key; enroll an enrolled id again without replace; "
                         "a password in the broker URL; a bad tag; a broker folder not made by the script",
                         "each refused with what to do, before anything is written: the key file and the pin unchanged")
def test_enrollment_refuses_to_overwrite_a_key_or_take_an_enrolled_id_without_replace(hub, tmp_path, faults_tried):
    faults_tried(5)
    aid = agent_id()
    first = hub.enroll_agent(aid, tmp_path / "a", broker="mqtt://broker.lan")
    key_a = (tmp_path / "a" / "agent_key.pem").read_bytes()
    with pytest.raises(EnrollmentError, match="already holds an agent key"):
        hub.enroll_agent(agent_id(), tmp_path / "a", broker="mqtt://broker.lan")
    assert (tmp_path / "a" / "agent_key.pem").read_bytes() == key_a
    with pytest.raises(AgentKeyError, match="pass --replace"):
        hub.enroll_agent(aid, tmp_path / "b", broker="mqtt://broker.lan")
    assert not (tmp_path / "b").exists()  # refused before anything was written
    assert hub.registry.get_agent_key(aid)["keyid"] == first["keyid"]

    again = hub.enroll_agent(aid, tmp_path / "b", broker="mqtt://broker.lan", replace=True)  # reinstalled device
    assert again["keyid"] != first["keyid"] == SigningKey.from_pem(key_a).keyid
    assert hub.registry.get_agent_key(aid)["keyid"] == again["keyid"]

    with pytest.raises(EnrollmentError, match="without a password"):
        hub.enroll_agent(agent_id(), tmp_path / "c", broker="mqtt://u:secret@broker.lan")
    with pytest.raises(EnrollmentError, match="tag name"):
        hub.enroll_agent(agent_id(), tmp_path / "c", broker="mqtt://broker.lan", tags={"bad key": "x"})
    with pytest.raises(EnrollmentError, match="not a folder written by"):
        hub.enroll_agent(agent_id(), tmp_path / "c", broker="mqtt://broker.lan", broker_config=tmp_path)
    assert not (tmp_path / "c").exists()


def test_the_cli_enrolls_and_pins_forgets_and_lists_report_keys(tmp_path, capsys):
    home = tmp_path / "hub"
    aid = agent_id()
    assert main(["agent", "enroll", aid, "--broker", "mqtts://broker.lan", "--tag", "site=plant-a",
                 "--out", str(tmp_path / "dev"), "--home", str(home), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tags"] == {"site": "plant-a"} and any("edgeloop-agent run --config" in s for s in doc["next_steps"])
    cfg = AgentConfig.load(tmp_path / "dev" / "agent.toml")
    assert cfg.mqtt_tls is not None and cfg.mqtt_port == 8883 and cfg.mqtt_username is None

    assert main(["agent", "enroll", aid, "--broker", "mqtt://broker.lan", "--out", str(tmp_path / "d2"),
                 "--home", str(home)]) == 2
    assert "--replace" in capsys.readouterr().err
    assert main(["agent", "enroll", "x", "--broker", "mqtt://b", "--tag", "site", "--out", str(tmp_path / "d3"),
                 "--home", str(home)]) == 2
    assert "not name=value" in capsys.readouterr().err

    other = SigningKey.generate()
    (tmp_path / "other.pub.pem").write_bytes(other.public_pem())
    assert main(["agent", "keys", "pin", aid, str(tmp_path / "other.pub.pem"), "--home", str(home)]) == 2
    assert "already has report key" in capsys.readouterr().err
    assert main(["agent", "keys", "pin", aid, str(tmp_path / "other.pub.pem"), "--replace", "--home", str(home)]) == 0
    assert other.keyid in capsys.readouterr().out
    assert main(["agent", "keys", "list", "--home", str(home), "--json"]) == 0
    assert [(r["agent_id"], r["keyid"]) for r in json.loads(capsys.readouterr().out)] == [(aid, other.keyid)]
    assert main(["agent", "keys", "forget", aid, "--home", str(home)]) == 0
    assert "forgot" in capsys.readouterr().out
    assert main(["agent", "keys", "forget", aid, "--home", str(home)]) == 0
    assert "nothing to forget" in capsys.readouterr().out
    assert main(["agent", "keys", "list", "--home", str(home)]) == 0
    assert "no report keys" in capsys.readouterr().out


# --- with the shipped secure broker setup -----------------------------------------------------------
@pytest.mark.broker
def test_enrollment_adds_a_broker_account_the_agent_logs_in_with_over_tls(hub, tmp_path):
    if shutil.which("mosquitto_passwd") is None or shutil.which("openssl") is None:
        unavailable("needs mosquitto_passwd and openssl (apt-get install mosquitto openssl)")
    port, folder, data = free_port(), tmp_path / "broker", tmp_path / "data"
    data.mkdir()
    made = subprocess.run(["sh", str(REPO / "packaging" / "mosquitto" / "make-broker-config.sh"), "--out",
                           str(folder), "--host", "127.0.0.1", "--agent", "edge-a", "--port", str(port),
                           "--bind", "127.0.0.1", "--data", str(data)], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    log = tmp_path / "mosquitto.log"
    conf = tmp_path / "test.conf"
    conf.write_text((folder / "mosquitto.conf").read_text()
                    + f"\nuser {getpass.getuser()}\nlog_dest file {log}\nlog_type all\n")
    broker = subprocess.Popen([MosquittoBroker.executable(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    proc = None
    try:
        wait_for_port("127.0.0.1", port)
        aid = agent_id("tls")
        doc = hub.enroll_agent(aid, tmp_path / "out", broker=f"mqtts://127.0.0.1:{port}", broker_config=folder,
                               tags={"site": "plant-b"}, http_port=0)
        assert doc["broker_account"] and doc["broker_user"] == aid
        assert any("reload the broker" in s for s in doc["next_steps"])
        password = (tmp_path / "out" / "mqtt-password").read_text().strip()
        assert (folder / "passwords" / aid).read_text().strip() == password
        users = [line.split(":")[0] for line in (folder / "passwd").read_text().splitlines()]
        assert sorted(users) == sorted(["hub", "edge-a", aid])  # added, the others kept
        assert password not in (folder / "passwd").read_text()  # hashed
        broker.send_signal(signal.SIGHUP)  # the next step printed: reload the broker
        assert wait_until(lambda: "Reloading config" in log.read_text(errors="replace"), 10)

        config = device_copy(tmp_path / "out", tmp_path)
        proc = AgentProcess(config, tmp_path / "agent.log").start()
        hub_login = BrokerSettings("127.0.0.1", port, tls=TlsSettings(folder / "ca.pem"), username="hub",
                                   password=(folder / "passwords" / "hub").read_text().strip())
        with hub.fleet(hub_login) as fleet:
            assert fleet.wait_online([aid], 30), proc.log() + log.read_text(errors="replace")
            assert wait_until(lambda: fleet.is_member(aid), 10)
            assert fleet.trust.refused == 0
        assert hub.registry.get_agent(aid)["tags"] == {"site": "plant-b"}
    finally:
        if proc is not None:
            proc.stop()
        broker.terminate()
        broker.wait(timeout=10)


def test_a_hub_certified_by_an_offline_root_enrolls_agents_that_trust_the_root(hub, tmp_path):
    from edgeloop.hub import keys

    plain = hub.enroll_agent(agent_id(), tmp_path / "before", broker="mqtt://broker.lan")
    assert "hub_root.pub.pem" not in plain["files"]
    assert AgentConfig.load(tmp_path / "before" / "agent.toml").trusted_roots == []

    root = keys.create_root_key(tmp_path / "root.pem")
    keys.certify(hub.home, root)
    doc = hub.enroll_agent(agent_id(), tmp_path / "after", broker="mqtt://broker.lan")
    config = device_copy(Path(doc["out"]), tmp_path)
    cfg = AgentConfig.load(config)
    assert cfg.trusted_roots == [config.parent / "hub_root.pub.pem"]
    assert (config.parent / "hub_root.pub.pem").read_bytes() == root.public_pem()
    assert cfg.trusted_keys == [config.parent / "hub_ed25519.pub.pem"]  # and the hub key itself, as before
