"""Shared fixtures: real brokers on free ports, hub keys, agent processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from agent.config import AgentConfig  # noqa: E402
from agent.envelope import SigningKey  # noqa: E402
from hub.broker import EmbeddedBroker, MosquittoBroker  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mosquitto():
    """A private Mosquitto on a free port with its own config (never the system one on 1883)."""
    with MosquittoBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def embedded_broker():
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture
def hub_key(tmp_path) -> SigningKey:
    return SigningKey.generate()


def write_agent_config(tmp_path: Path, agent_id: str, broker, pub_pem: bytes, **over) -> Path:
    keyfile = tmp_path / f"{agent_id}-trusted.pub.pem"
    keyfile.write_bytes(pub_pem)
    cfg = AgentConfig(agent_id=agent_id, state_dir=tmp_path / f"{agent_id}-state", trusted_keys=[keyfile],
                      mqtt_host=broker.address.host, mqtt_port=broker.address.port, http_port=0,
                      transfer_idle_seconds=over.pop("transfer_idle_seconds", 1.0), **over)
    path = tmp_path / f"{agent_id}.toml"
    path.write_text(cfg.to_toml())
    return path


class AgentProcess:
    """``edgeloop agent run --config FILE`` as a real child process."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log_path = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> "AgentProcess":
        self._log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "agent", "run", "--config", str(self.config)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        return self

    def stop(self, kill: bool = False) -> int:
        if self.proc is None:
            return 0
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._log.close()
        self.proc = None
        return rc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def agent_process(tmp_path):
    started: list[AgentProcess] = []

    def start(config: Path) -> AgentProcess:
        p = AgentProcess(config, tmp_path / f"{config.stem}.log").start()
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def wait_until(pred, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()
