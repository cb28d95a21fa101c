"""Shared fixtures: real brokers on free ports, hub keys, agent processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import paho.mqtt.client as mqtt
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.preflight import PreflightSettings
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.hub.fleet import EmbeddedBroker, MosquittoBroker
from tests.reliability import faults_tried, pytest_runtest_makereport, pytest_sessionfinish  # noqa: F401  (the ledger)

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
    # a small pre-flight budget (the trained bundles carry fp32 and int8: every install measures both)
    over.setdefault("preflight", PreflightSettings(runs=5, seconds=0.05))
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

    def start(self) -> AgentProcess:
        self._log = open(self.log_path, "ab")
        env = dict(os.environ)
        # agents run with torch, Qt, onnx, hub and app made unimportable (tests/agent_isolated.py)
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "agent_isolated.py"), "run",
                                      "--config", str(self.config)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        return self

    def stop(self, kill: bool = False, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` (SIGKILL with ``kill``) and return the exit code; SIGKILL after ``timeout`` s.

        A clean stop exits with 0; a process that had to be killed returns -9.
        """
        if self.proc is None:
            raise RuntimeError(f"agent {self.config.stem} is not running")
        self.proc.send_signal(signal.SIGKILL if kill else sig)
        try:
            rc = self.proc.wait(timeout=timeout)
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
        if p.proc is not None:
            p.stop()


def unavailable(reason: str) -> NoReturn:
    """A test that cannot run on this machine: skipped here, but a failure under CI (``CI=true``), where
    ``.ci/run`` installs everything the suite needs -- so a missing install step cannot pass as a skip."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: .ci/run should have provided it)")
    pytest.skip(reason)


def wait_until(pred, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


@contextlib.contextmanager
def watch_topic(broker, topic: str) -> Iterator[list[tuple[str, bytes]]]:
    """A plain paho subscriber to ``topic`` (wildcards allowed); yields the (topic, payload) pairs it
    receives, retained ones first, appended as they arrive."""
    got: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_message = lambda client, userdata, msg: got.append((msg.topic, msg.payload))
    c.on_subscribe = lambda *args: subscribed.set()
    c.connect(broker.address.host, broker.address.port)
    c.subscribe(topic, 1)
    c.loop_start()
    try:
        if not subscribed.wait(10):
            raise AssertionError(f"could not subscribe to {topic} on {broker.address.url}")
        yield got
    finally:
        c.loop_stop()
        c.disconnect()


def retained(broker, topic: str, timeout: float = 5.0) -> bytes:
    """The retained message on ``topic``: a fresh subscriber gets it at once."""
    with watch_topic(broker, topic) as got:
        if not wait_until(lambda: bool(got), timeout):
            raise AssertionError(f"no retained message on {topic}")
        return got[0][1]


# --- a hub with two real trained versions and their signed bundles ---------------------------
class TrainedHub:
    def __init__(self, root: Path) -> None:
        from edgeloop.hub.datasets import load_csv, sample_dataset_path
        from edgeloop.hub.services import Hub
        from edgeloop.hub.training import TrainParams

        self.hub = Hub(root, actor="tests")
        self.dataset = load_csv(sample_dataset_path())
        self.dataset_record = self.hub.register_dataset(self.dataset, "sensors")
        self.v1 = self.hub.build_version(self.dataset, self.dataset_record, "sensor-mlp",
                                         TrainParams(epochs=6, seed=0))
        self.b1 = self.hub.build_bundle(self.v1.id)
        self.v2 = self.hub.build_version(self.dataset, self.dataset_record, "sensor-mlp",
                                         TrainParams(epochs=4, seed=1, hidden=(16,)))
        self.b2 = self.hub.build_bundle(self.v2.id)

    @property
    def public_pem(self) -> bytes:
        return self.hub.key.public_pem()


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> TrainedHub:
    return TrainedHub(tmp_path_factory.mktemp("hub"))


@pytest.fixture
def fleet(trained, mosquitto):
    with trained.hub.fleet(mosquitto.address.url) as f:
        yield f


@pytest.fixture
def online_agent(tmp_path, trained, mosquitto, agent_process, fleet):
    """Start a real agent process (isolated from hub/torch/Qt) on the test Mosquitto; wait until online."""
    counter = iter(range(1, 1000))

    def start(agent_id: str | None = None, **over) -> tuple[str, AgentProcess]:
        aid = agent_id or f"t{os.getpid()}-{next(counter)}-{time.monotonic_ns() % 100000}"
        cfg = write_agent_config(tmp_path, aid, mosquitto, trained.public_pem, **over)
        proc = agent_process(cfg)
        if not fleet.wait_online([aid], timeout=30):
            raise AssertionError(f"agent {aid} did not come online:\n{proc.log()}")
        return aid, proc

    return start
