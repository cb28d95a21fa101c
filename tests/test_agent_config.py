"""The agent's TOML config: defaults, round trip, and a clear error for every bad file."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeloop.agent.config import AgentConfig
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
