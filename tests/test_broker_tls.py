"""A Mosquitto that wants a password on one listener, and TLS (certificates made here) plus a client
certificate plus a password on another: the hub and a real agent process get in with the right
settings, and ``edgeloop deploy`` says exactly what is wrong -- quickly -- with each wrong one."""

from __future__ import annotations

import argparse
import getpass
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeloop.agent import cli as agent_cli
from edgeloop.agent.config import AgentConfig
from edgeloop.agent.connect_errors import BrokerConnectError
from edgeloop.agent.connection import BrokerSettings, TlsSettings
from edgeloop.agent.wire.messages import InferResult
from edgeloop.hub.cli import parser as hub_cli
from edgeloop.hub.cli.common import add_broker_options, broker_settings
from edgeloop.hub.fleet import MosquittoBroker, free_port, wait_for_port
from tests.certs import CertAuthority, Issued

pytestmark = pytest.mark.broker

USER, PASSWORD = "edge", "tls-s3cret"


@dataclass
class SecureBroker:
    plain_port: int  # password required
    tls_port: int  # TLS, client certificate and password required
    ca: Path
    client: Issued
    rogue_ca: Path  # trusted by nobody
    rogue_client: Issued  # signed by the rogue CA
    work: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def password_file(self, password: str = PASSWORD) -> Path:
        path = self.work / f"pw-{abs(hash(password))}"
        path.write_text(password + "\n")
        return path

    def tls(self) -> BrokerSettings:
        return BrokerSettings("127.0.0.1", self.tls_port, username=USER, password=PASSWORD,
                              tls=TlsSettings(self.ca, self.client.cert, self.client.key))


@pytest.fixture(scope="module")
def secure(tmp_path_factory) -> Iterator[SecureBroker]:
    work = tmp_path_factory.mktemp("secure-broker")
    ca, rogue = CertAuthority(work, "edgeloop-test-ca"), CertAuthority(work, "rogue-ca")
    server = ca.issue("broker", "broker", server=True, ips=("127.0.0.1",))  # not "localhost"
    client = ca.issue("edge-client", "edge", server=False)
    rogue_client = rogue.issue("rogue-client", "edge", server=False)
    passwd = work / "passwd"
    passwd.touch(mode=0o600)
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), USER, PASSWORD], check=True, timeout=10,
                   capture_output=True)
    plain_port, tls_port = free_port(), free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"user {getpass.getuser()}\n"
        "per_listener_settings true\npersistence false\n"
        "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
        f"listener {plain_port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
        f"listener {tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
        f"cafile {ca.path}\ncertfile {server.cert}\nkeyfile {server.key}\nrequire_certificate true\n"
    )
    log_path = work / "mosquitto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([MosquittoBroker.executable(), "-c", str(conf)], stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            wait_for_port("127.0.0.1", plain_port)
            wait_for_port("127.0.0.1", tls_port)
            yield SecureBroker(plain_port, tls_port, ca.path, client, rogue.path, rogue_client, work, log_path)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_hub_and_an_agent_written_by_init_connect_over_tls_with_password_and_deploy(
        trained, tmp_path, secure, agent_process, capsys):
    key = tmp_path / "hub.pub.pem"
    key.write_bytes(trained.public_pem)
    cfg_path = tmp_path / "tls-edge.toml"
    rc = agent_cli.main(["init", "--id", "tls-edge", "--broker", f"mqtts://{USER}@127.0.0.1:{secure.tls_port}",
                         "--password-file", str(secure.password_file()), "--ca-file", str(secure.ca),
                         "--cert-file", str(secure.client.cert), "--key-file", str(secure.client.key),
                         "--trusted-key", str(key), "--state-dir", str(tmp_path / "tls-edge-state"),
                         "--http-port", "0", "--out", str(cfg_path)])
    assert rc == 0, capsys.readouterr().err
    cfg = AgentConfig.load(cfg_path)
    assert cfg.mqtt_tls == TlsSettings(secure.ca, secure.client.cert, secure.client.key, check_hostname=True)
    assert (cfg.mqtt_host, cfg.mqtt_port, cfg.mqtt_username, cfg.mqtt_password) == (
        "127.0.0.1", secure.tls_port, USER, None)
    assert PASSWORD not in cfg_path.read_text()  # only the password file's name is in the config
    proc = agent_process(cfg_path)
    with trained.hub.fleet(secure.tls()) as fleet:
        assert fleet.link.protocol == "5"  # Mosquitto speaks MQTT 5
        assert fleet.wait_online(["tls-edge"], 30), proc.log()
        out = fleet.deploy("tls-edge", trained.b1.path.read_bytes(), model="sensor-mlp",
                           version=trained.v1.version["version"], timeout=30)
        assert out.ok, out.message
        res = fleet.infer("tls-edge", trained.dataset.X[:2].tolist())
        assert isinstance(res, InferResult) and len(res.outputs["label"]) == 2
    assert "connected to MQTT broker mqtts://edge@127.0.0.1" in proc.log() and "(MQTT 5)" in proc.log()
    connected = [line for line in secure.log().splitlines() if "as edgeloop-agent-tls-edge " in line]
    assert connected and all(f"u'{USER}'" in line for line in connected), secure.log()


def _deploy(home: Path, *broker_args: str) -> list[str]:
    # an agent id the registry has never seen: the command connects first, to look for it
    return ["deploy", "sensor-mlp", "--agent", "never-seen-xyz", "--timeout", "1", "--home", str(home),
            *broker_args]


def _wrong(secure: SecureBroker) -> dict[str, tuple[list[str], str, str]]:
    """name -> (broker options, error code, what the message must say)."""
    tls = f"mqtts://{USER}@127.0.0.1:{secure.tls_port}"
    good_cert = ["--cert-file", str(secure.client.cert), "--key-file", str(secure.client.key)]
    good_pw = ["--password-file", str(secure.password_file())]
    return {
        "wrong password": (["--broker", f"mqtt://{USER}@127.0.0.1:{secure.plain_port}", "--password-file",
                            str(secure.password_file("nope"))], "not_authorised", f"refused user '{USER}'"),
        "unknown user": (["--broker", f"mqtt://nobody@127.0.0.1:{secure.plain_port}", *good_pw],
                         "not_authorised", "refused user 'nobody'"),
        "no credentials": (["--broker", f"mqtt://127.0.0.1:{secure.plain_port}"], "not_authorised",
                           "does not accept anonymous clients"),
        "untrusted CA": (["--broker", tls, "--ca-file", str(secure.rogue_ca), *good_cert, *good_pw], "tls",
                         "not signed by a CA this side trusts"),
        "hostname mismatch": (["--broker", f"mqtts://{USER}@localhost:{secure.tls_port}", "--ca-file",
                               str(secure.ca), *good_cert, *good_pw], "tls", "does not name 'localhost'"),
        "no client certificate": (["--broker", tls, "--ca-file", str(secure.ca), *good_pw], "tls",
                                  "requires a client certificate"),
        "client certificate of another CA": (["--broker", tls, "--ca-file", str(secure.ca), "--cert-file",
                                              str(secure.rogue_client.cert), "--key-file",
                                              str(secure.rogue_client.key), *good_pw], "tls",
                                             "rejected this side's client certificate"),
        "plain MQTT to the TLS port": (["--broker", f"mqtt://{USER}@127.0.0.1:{secure.tls_port}", *good_pw],
                                       "protocol", "use mqtts://"),
        "TLS to the plain port": (["--broker", f"mqtts://{USER}@127.0.0.1:{secure.plain_port}", "--ca-file",
                                   str(secure.ca), *good_pw], "protocol", "TLS"),
        "nothing listening": (["--broker", f"mqtt://127.0.0.1:{free_port()}"], "refused", "nothing is listening"),
        "unknown host": (["--broker", "mqtt://no-such-broker.invalid:1883"], "unknown_host", "does not resolve"),
    }


CASES = ["wrong password", "unknown user", "no credentials", "untrusted CA", "hostname mismatch",
         "no client certificate", "client certificate of another CA", "plain MQTT to the TLS port",
         "TLS to the plain port", "nothing listening", "unknown host"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.reliability("broker access control",
                         "a hub with one wrong broker setting (password, user, CA, host name, client certificate, "
                         "port, host)",
                         "its own error within 3 s, exit 2; the API gives the same code")
def test_each_wrong_setting_gets_its_own_error_at_once(trained, secure, capsys, case):
    options, code, says = _wrong(secure)[case]
    started = time.monotonic()
    rc = hub_cli.main(_deploy(trained.hub.home.root, *options))
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: cannot connect to the MQTT broker at ") and says in err, err
    assert took < 3.0, f"{case}: {took:.1f} s"  # it was 10 s, and the same message for all
    with pytest.raises(BrokerConnectError) as info:  # the API says the same, with its code
        trained.hub.fleet(_settings(secure, options)).start(timeout=5)
    assert info.value.code == code and says in str(info.value)


def _settings(secure: SecureBroker, options: list[str]) -> BrokerSettings:
    """What the hub CLI makes of ``options`` (the same function)."""
    p = argparse.ArgumentParser()
    add_broker_options(p)
    return broker_settings(p.parse_args(options), env={})


def test_a_password_in_the_url_works_but_the_cli_warns_it_is_visible_in_ps(trained, secure, capsys):
    rc = hub_cli.main(_deploy(trained.hub.home.root, "--broker",
                              f"mqtt://{USER}:{PASSWORD}@127.0.0.1:{secure.plain_port}"))
    err = capsys.readouterr().err
    assert "warning: the password in --broker is visible to every user of this machine (ps" in err
    assert "--password-file FILE, or set EDGELOOP_MQTT_PASSWORD" in err
    # it logged in: what fails is the agent id nobody has seen, not the connection
    assert rc == 2 and "never-seen-xyz" in err and "cannot connect" not in err, err


def test_the_password_can_come_from_the_environment_and_the_cli_prints_no_paho_lines(trained, secure, tmp_path):
    env = {"EDGELOOP_MQTT_PASSWORD": PASSWORD, "EDGELOOP_MQTT_USERNAME": USER, "PATH": "/usr/bin:/bin",
           "EDGELOOP_BROKER": f"mqtt://127.0.0.1:{secure.plain_port}"}
    ok = subprocess.run([sys.executable, "-m", "edgeloop.hub.cli", *_deploy(trained.hub.home.root)],
                        capture_output=True, text=True, timeout=120, env=env)
    assert "never-seen-xyz" in ok.stderr and "cannot connect" not in ok.stderr, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "edgeloop.hub.cli", *_deploy(trained.hub.home.root)],
                         capture_output=True, text=True, timeout=120, env={**env, "EDGELOOP_MQTT_PASSWORD": "nope"})
    assert bad.returncode == 2 and f"refused user '{USER}'" in bad.stderr, bad.stderr
    for out in (ok, bad):  # nothing of paho's own logging reaches the terminal
        assert "paho" not in out.stderr and "Client is not connected" not in out.stderr, out.stderr
        assert out.stderr.count("\n") == 1, out.stderr  # the one error line
