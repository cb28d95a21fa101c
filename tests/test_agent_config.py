"""The agent's TOML config: defaults, round trip, and a clear error for every bad file."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeloop.agent import cli as agent_cli
from edgeloop.agent.config import AgentConfig
from edgeloop.agent.connection import TlsSettings
from edgeloop.agent.errors import ConfigError, KeyFileError
from edgeloop.agent.wire.envelope import SigningKey

MINIMAL = 'agent_id = "edge-1"\nstate_dir = "state"\ntrusted_keys = ["hub.pub.pem"]\n'


def _load(tmp_path: Path, text: str) -> AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return AgentConfig.load(path)


def test_a_minimal_file_gets_the_documented_defaults_and_paths_relative_to_it(tmp_path):
    cfg = _load(tmp_path, MINIMAL)
    assert cfg.state_dir == tmp_path / "state" and cfg.trusted_keys == [tmp_path / "hub.pub.pem"]
    assert (cfg.mqtt_host, cfg.mqtt_port, cfg.mqtt_username, cfg.mqtt_password) == ("127.0.0.1", 1883, None, None)
    assert (cfg.max_queued_requests, cfg.min_free_bytes) == (1000, 16 * 1024 * 1024)
    assert cfg.source == tmp_path / "agent.toml"


def test_every_setting_survives_to_toml_and_back(tmp_path):
    cfg = AgentConfig(agent_id="edge-2", state_dir=tmp_path / 'st "quoted"', trusted_keys=[tmp_path / "k.pem"],
                      mqtt_host="broker.lan", mqtt_port=8883, mqtt_username="edge", mqtt_password='p"w\\d',
                      keepalive=10, http_enabled=False, http_host="0.0.0.0", http_port=8081,
                      http_max_connections=8, max_bundle_bytes=1000, max_request_bytes=2000, max_rows=30,
                      max_queued_requests=5, min_free_bytes=0, transfer_idle_seconds=2.5, zeroconf=True,
                      zeroconf_interfaces=["192.168.1.5"], log_level="DEBUG")
    again = _load(tmp_path, cfg.to_toml())
    assert again == cfg  # `source` is not compared


def test_integers_are_accepted_where_seconds_are_floats(tmp_path):
    cfg = _load(tmp_path, MINIMAL + "[transfer]\nidle_seconds = 3\n")
    assert cfg.transfer_idle_seconds == 3.0 and isinstance(cfg.transfer_idle_seconds, float)


@pytest.mark.parametrize("text,match", [
    ('state_dir = "s"\n', "config needs agent_id"),
    ('agent_id = "a"\n', "config needs state_dir"),
    ('agent_id = "a/b"\nstate_dir = "s"\n', "agent id"),
    (MINIMAL + "mqtt = 5\n", r"\[mqtt\] must be a table"),
    (MINIMAL + '[mqtt]\nport = "1883"\n', r"config mqtt.port must be int, got '1883'"),
    (MINIMAL.replace('"state"', "7"), "config state_dir must be str, got 7"),
    (MINIMAL + "[mqtt]\nport = 0\n", "ports must be within 1..65535"),
    (MINIMAL + "[http]\nport = 70000\n", "ports must be within 1..65535"),
    (MINIMAL + "[limits]\nmax_queued_requests = 0\n", "limits.max_queued_requests must be at least 1, got 0"),
    (MINIMAL + "[limits]\nmin_free_bytes = -1\n", "limits.min_free_bytes must be 0 or more, got -1"),
    (MINIMAL + "[limits\n", "is not valid TOML"),
])
def test_bad_files_are_refused_with_what_is_wrong(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        _load(tmp_path, text)


def test_an_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read agent config .*missing.toml"):
        AgentConfig.load(tmp_path / "missing.toml")


def test_trusted_keys_are_read_and_their_problems_named(tmp_path):
    key = SigningKey.generate()
    (tmp_path / "hub.pub.pem").write_bytes(key.public_pem())
    cfg = _load(tmp_path, MINIMAL)
    assert list(cfg.load_trusted_keys().keys) == [key.keyid]
    cfg.trusted_keys = [tmp_path / "gone.pem"]
    with pytest.raises(KeyFileError, match=r"trusted key .*gone.pem cannot be read"):
        cfg.load_trusted_keys()
    cfg.trusted_keys = []
    with pytest.raises(ConfigError, match="no trusted keys configured.*add the hub's public key"):
        cfg.load_trusted_keys()


# --- the [mqtt] connection settings ------------------------------------------------------------
def test_a_url_with_tls_and_a_password_file_become_broker_settings(tmp_path, monkeypatch):
    (tmp_path / "ca.pem").write_text("not read until connecting")
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = _load(tmp_path, MINIMAL + '[mqtt]\nurl = "mqtts://edge@broker.lan"\npassword_file = "pw"\n'
                                    'protocol = "3.1.1"\n[mqtt.tls]\nca_file = "ca.pem"\n')
    assert (cfg.mqtt_host, cfg.mqtt_port, cfg.mqtt_username, cfg.mqtt_password) == ("broker.lan", 8883, "edge", None)
    assert cfg.mqtt_tls == TlsSettings(ca_file=tmp_path / "ca.pem") and cfg.mqtt_password_file == tmp_path / "pw"
    monkeypatch.setenv("EDGELOOP_MQTT_PASSWORD", "from-env")  # the file wins
    b = cfg.broker_settings()
    assert (b.url, b.password, b.protocol, b.client_id) == ("mqtts://edge@broker.lan:8883", "s3cret", "3.1.1",
                                                            "edgeloop-agent-edge-1")
    assert "s3cret" not in repr(b) and "s3cret" not in str(b)


def test_without_a_password_in_the_config_the_environment_gives_it(tmp_path, monkeypatch):
    cfg = _load(tmp_path, MINIMAL + '[mqtt]\nhost = "b"\nusername = "u"\n')
    monkeypatch.setenv("EDGELOOP_MQTT_PASSWORD", "from-env")
    assert cfg.broker_settings().password == "from-env" and cfg.mqtt_port == 1883 and cfg.mqtt_tls is None
    monkeypatch.delenv("EDGELOOP_MQTT_PASSWORD")
    assert cfg.broker_settings().password is None


def test_tls_settings_survive_to_toml_and_back(tmp_path):
    for name in ("ca.pem", "c.pem", "c.key", "pw"):
        (tmp_path / name).write_text("x")
    cfg = AgentConfig(agent_id="edge-3", state_dir=tmp_path / "st", trusted_keys=[tmp_path / "k.pem"],
                      mqtt_host="10.0.0.5", mqtt_port=8884, mqtt_username="edge-3", mqtt_password_file=tmp_path / "pw",
                      mqtt_tls=TlsSettings(tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "c.key",
                                           check_hostname=False), mqtt_protocol="5")
    assert _load(tmp_path, cfg.to_toml()) == cfg


@pytest.mark.parametrize("mqtt,match", [
    ('[mqtt.tls]\nca_file = "missing-ca.pem"\n', r"mqtt.tls.ca_file: .*missing-ca.pem does not exist"),
    ('[mqtt.tls]\ncert_file = "ca.pem"\n', "a client certificate needs both mqtt.tls.cert_file and mqtt.tls.key_file"),
    ('[mqtt.tls]\ncafile = "ca.pem"\n', r"\[mqtt.tls\] has unknown keys: cafile"),
    ('[mqtt.tls]\ncheck_hostname = "no"\n', "mqtt.tls.check_hostname must be true or false"),
    ('[mqtt]\npassword_file = "nope"\n', r"mqtt.password_file: .*nope does not exist"),
    ('[mqtt]\npassword_file = "ca.pem"\npassword = "x"\n', "both password and password_file"),
    ('[mqtt]\nurl = "mqtt://a"\nhost = "b"\n', "both url and host/port"),
    ('[mqtt]\nurl = "http://a"\n', "is not of the form mqtt://"),
    ('[mqtt]\nprotocol = "4"\n', 'mqtt.protocol must be "auto", "5" or "3.1.1"'),
    ('[mqtt]\nkeepalive = 1\n', "mqtt.keepalive must be at least 5 seconds"),
])
def test_bad_mqtt_settings_name_the_key(tmp_path, mqtt, match):
    (tmp_path / "ca.pem").write_text("x")
    with pytest.raises(ConfigError, match=match):
        _load(tmp_path, MINIMAL + mqtt)


def test_init_writes_a_config_that_loads_back_and_warns_about_a_password_on_the_command_line(tmp_path, capsys):
    key = SigningKey.generate()
    (tmp_path / "hub.pub.pem").write_bytes(key.public_pem())
    out = tmp_path / "conf" / "edge.toml"
    common = ["init", "--id", "edge-9", "--trusted-key", str(tmp_path / "hub.pub.pem"), "--state-dir",
              str(tmp_path / "state"), "--http-port", "0", "--out", str(out)]
    assert agent_cli.main([*common, "--broker", "mqtt://edge:pw-in-url@broker.lan:1884", "--protocol", "5"]) == 0
    err = capsys.readouterr().err
    assert "the password in --broker is visible to every user of this machine (ps" in err
    cfg = AgentConfig.load(out)
    assert (cfg.agent_id, cfg.mqtt_host, cfg.mqtt_port, cfg.mqtt_username, cfg.mqtt_password, cfg.mqtt_protocol) == (
        "edge-9", "broker.lan", 1884, "edge", "pw-in-url", "5")
    assert out.stat().st_mode & 0o077 == 0  # it holds a password: owner only
    (tmp_path / "ca.pem").write_text("x")
    assert agent_cli.main([*common, "--broker", "mqtts://broker.lan", "--ca-file", str(tmp_path / "ca.pem")]) == 0
    assert AgentConfig.load(out).mqtt_tls == TlsSettings(ca_file=tmp_path / "ca.pem") and "warning" not in \
        capsys.readouterr().err
    assert agent_cli.main([*common, "--broker", "mqtt://broker.lan", "--ca-file", str(tmp_path / "ca.pem")]) == 2
    assert "--ca-file: TLS options need an mqtts:// broker URL" in capsys.readouterr().err


def test_the_shipped_example_config_loads_with_every_setting_it_names():
    import tomllib

    from tests.conftest import REPO

    path = REPO / "packaging" / "agent.example.toml"
    doc = tomllib.loads(path.read_text())
    cfg = AgentConfig.from_dict(doc, base=path.parent, source=path)
    assert (cfg.agent_id, cfg.mqtt_host, cfg.mqtt_port, cfg.topic_root) == ("edge-1", "hub.local", 1883, "edgeloop/v1")
    assert cfg.outbox_max_messages == doc["outbox"]["max_messages"] and cfg.max_queued_requests == 1000
