"""The shipped secure broker setup, end to end: packaging/mosquitto/make-broker-config.sh writes the
configuration (TLS listener, password file, the per-agent ACL of packaging/mosquitto/edgeloop.acl),
a real Mosquitto runs it, and a real hub, two real agent processes (each with its own account) and an
integrator's plain paho client use it.

What must work: the hub deploys to both agents (fan-out transfer topic and per-agent bundle topic) and
gets their install results; the hub's own inference requests get their answers on its reply topic; the
integrator's requests get theirs by MQTT 5 Response Topic and by ``reply_to``. What must not: an agent
publishing on another agent's topics or reading its commands, chunks and requests; the integrator
publishing commands, chunks or reports, or reading commands. A forbidden publish is proved dropped by
the broker's answer (MQTT 5 PUBACK "Not authorized", 0x87) *and* by a subscriber with the hub's rights
that sees a later, allowed message from the same client but never the forbidden one (Mosquitto keeps
the order of one client's messages); a forbidden read likewise by a later message that does arrive.
"""

from __future__ import annotations

import getpass
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop.agent.connection import BrokerSettings, TlsSettings
from edgeloop.agent.wire.messages import InferResult
from edgeloop.hub.fleet import MosquittoBroker, free_port, wait_for_port
from tests.conftest import REPO, AgentProcess, wait_until, write_agent_config

pytestmark = pytest.mark.broker

SHIPPED = REPO / "packaging" / "mosquitto"
A, B, APP, HUB = "edge-a", "edge-b", "plant-app", "hub"
ROOT = "edgeloop/v1"
NOT_AUTHORIZED = 0x87
WAIT = 20.0  # upper bound of every wait; no assertion depends on how fast anything is


@dataclass
class Broker:
    port: int
    folder: Path  # what make-broker-config.sh wrote
    log_path: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    def password_file(self, user: str) -> Path:
        return self.folder / "passwords" / user

    def password(self, user: str) -> str:
        return self.password_file(user).read_text().splitlines()[0]

    def settings(self, user: str) -> BrokerSettings:
        return BrokerSettings("127.0.0.1", self.port, tls=TlsSettings(self.ca), username=user,
                              password=self.password(user))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def make_config(out: Path, port: int, data: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(SHIPPED / "make-broker-config.sh"), "--out", str(out), "--host", "127.0.0.1",
                           "--agent", A, "--agent", B, "--integrator", APP, "--port", str(port),
                           "--bind", "127.0.0.1", "--data", str(data)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Iterator[Broker]:
    work = tmp_path_factory.mktemp("secure-broker")
    port, out, data = free_port(), work / "broker", work / "data"
    data.mkdir()
    made = make_config(out, port, data)
    assert made.returncode == 0, made.stderr
    conf = (out / "mosquitto.conf").read_text()
    # test-only lines: run as this user (as root Mosquitto would switch to one that cannot read tmp),
    # log to a file
    log_path = work / "mosquitto.log"
    test_conf = work / "test.conf"
    test_conf.write_text(conf + f"\nuser {getpass.getuser()}\nlog_dest file {log_path}\n"
                                "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n")
    proc = subprocess.Popen([MosquittoBroker.executable(), "-c", str(test_conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port)
        yield Broker(port, out, log_path)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class SecureFleet:
    fleet: object
    agents: dict[str, AgentProcess]
    first_deploy: dict  # agent id -> CommandOutcome of the fan-out deploy made while starting


@pytest.fixture(scope="module")
def secure(trained, broker, tmp_path_factory) -> Iterator[SecureFleet]:
    work = tmp_path_factory.mktemp("secure-agents")
    address = SimpleNamespace(address=BrokerSettings("127.0.0.1", broker.port))
    agents: dict[str, AgentProcess] = {}
    with trained.hub.fleet(broker.settings(HUB)) as fleet:
        try:
            for aid in (A, B):
                cfg = write_agent_config(work, aid, address, trained.public_pem, mqtt_username=aid,
                                         mqtt_password_file=broker.password_file(aid),
                                         mqtt_tls=TlsSettings(broker.ca))
                agents[aid] = AgentProcess(cfg, work / f"{aid}.log").start()
            assert fleet.wait_online([A, B], 60), "\n".join(p.log() for p in agents.values()) + broker.log()
            first = fleet.deploy_many([A, B], trained.b1.path.read_bytes(), model="sensor-mlp",
                                      version=trained.v1.version["version"], timeout=60)
            yield SecureFleet(fleet, agents, first)
        finally:
            for p in agents.values():
                if p.proc is not None:
                    p.stop()


class Client:
    """A plain paho client over TLS with an account's password; remembers every PUBACK reason code."""

    def __init__(self, broker: Broker, user: str, subscribe: tuple[str, ...] = ()) -> None:
        self.got: list[tuple[str, bytes, mqtt.MQTTMessage]] = []
        self.acks: dict[int, int] = {}
        self._cond = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{user}-{free_port()}",
                             protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, broker.password(user))
        self.c.tls_set(ca_certs=str(broker.ca))
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *args: subscribed.set()
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()
        if subscribe:
            self.c.subscribe([(t, 1) for t in subscribe])
            assert subscribed.wait(WAIT), f"{user} could not subscribe to {subscribe}"

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.got.append((msg.topic, msg.payload, msg))
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self.acks[mid] = reason_code.value
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes, properties: Properties | None = None) -> int:
        """Publish at QoS 1; the broker's PUBACK reason code (0x87 = not authorised)."""
        info = self.c.publish(topic, payload, qos=1, properties=properties)
        with self._cond:
            assert self._cond.wait_for(lambda: info.mid in self.acks, WAIT), f"no PUBACK for {topic}"
            return self.acks[info.mid]

    def wait_for(self, pred, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: pred(self.got), timeout)

    def topics(self) -> set[str]:
        with self._cond:
            return {t for t, _, _ in self.got}

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def clients(broker) -> Iterator:
    made: list[Client] = []

    def make(user: str, *subscribe: str) -> Client:
        made.append(Client(broker, user, subscribe))
        return made[-1]

    yield make
    for c in made:
        c.close()


def topic(agent_id: str, leaf: str) -> str:
    return f"{ROOT}/agents/{agent_id}/{leaf}"


def request(reply_to: str | None = None, rid: str = "") -> bytes:
    rows = [[68.4, 1.8, 302.3, 20.4, 67.4, 1647.0]]
    return json.dumps({"id": rid, "inputs": rows, **({"reply_to": reply_to} if reply_to else {})}).encode()


# --- the shipped files are what runs --------------------------------------------------------------
@pytest.mark.reliability("broker access control",
                         "broker config script given a wildcard name, or an agent that is also an integrator",
                         "refused, exit 2")
def test_the_script_writes_the_shipped_files_with_only_paths_and_port_changed(broker, tmp_path, faults_tried):
    faults_tried(2)
    assert (broker.folder / "edgeloop.acl").read_text().rstrip() == (SHIPPED / "edgeloop.acl").read_text().rstrip()
    conf = (SHIPPED / "mosquitto.conf").read_text()
    expected = (conf.replace("/etc/mosquitto/edgeloop", str(broker.folder))
                .replace("listener 8883\n", f"listener {broker.port} 127.0.0.1\n")
                .replace("persistence_location /var/lib/mosquitto/",
                         f"persistence_location {broker.folder.parent / 'data'}/"))
    assert (broker.folder / "mosquitto.conf").read_text() == expected
    passwd = (broker.folder / "passwd").read_text()
    assert {line.split(":")[0] for line in passwd.splitlines()} == {HUB, A, B, APP}
    assert all(broker.password(u) not in passwd for u in (HUB, A, B, APP))  # hashed
    assert all((broker.password_file(u).stat().st_mode & 0o077) == 0 for u in (HUB, A, B, APP))
    # a name that would become a wildcard in the ACL, or an agent that is also an integrator, is refused
    bad = subprocess.run(["sh", str(SHIPPED / "make-broker-config.sh"), "--out", str(tmp_path / "x"), "--host", "h",
                          "--agent", "a/#"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "name 'a/#' is not allowed" in bad.stderr, bad.stderr
    both = subprocess.run(["sh", str(SHIPPED / "make-broker-config.sh"), "--out", str(tmp_path / "y"), "--host", "h",
                           "--agent", "x1", "--integrator", "x1"], capture_output=True, text=True, timeout=30)
    assert both.returncode == 2 and "'x1' is both an agent and the hub or an integrator" in both.stderr


def test_docs_show_the_shipped_acl_rules():
    doc = (REPO / "docs" / "security.md").read_text()
    block = doc.split("The ACL's rules", 1)[1].split("```", 2)[1]
    rules = [line for line in (SHIPPED / "edgeloop.acl").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert block.strip().splitlines() == rules


# --- what must work ---------------------------------------------------------------------------------
def test_the_hub_deploys_to_both_agents_and_gets_install_results_and_inference_answers(trained, secure):
    for aid in (A, B):
        assert secure.first_deploy[aid].ok, (secure.first_deploy[aid].message, secure.agents[aid].log())
        # the hub's own request: the answer comes back on <root>/hub/<client id>/replies
        res = secure.fleet.infer(aid, trained.dataset.X[:2].tolist(), timeout=WAIT)
        assert isinstance(res, InferResult) and len(res.outputs["label"]) == 2, res


@pytest.mark.reliability("broker access control", "an integrator asks for answers outside its replies tree",
                         "the broker drops that answer; the next is answered")
def test_the_integrator_gets_answers_by_response_topic_and_by_reply_to(secure, clients):
    app = clients(APP, f"{ROOT}/replies/{APP}/#")
    # MQTT 5: Response Topic + Correlation Data
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = f"{ROOT}/replies/{APP}/answers"
    props.CorrelationData = b"req-1"
    assert app.publish(topic(A, "infer"), request(), props) < 0x80
    assert app.wait_for(lambda got: any(m.properties.CorrelationData == b"req-1" for _, _, m in got)), app.got
    # MQTT 3.1.1 style: reply_to in the payload
    assert app.publish(topic(B, "infer"), request(f"{ROOT}/replies/{APP}/r2", rid="req-2")) < 0x80
    assert app.wait_for(lambda got: any(t.endswith("/r2") and json.loads(p)["id"] == "req-2" for t, p, _ in got))
    answers = [json.loads(p) for _, p, _ in app.got]
    assert all(a["type"] == "infer_result" for a in answers), answers
    # a reply topic outside the replies tree: the broker refuses the agent's answer (nobody may read
    # plant/# either); the agent takes the refusal and answers the next request
    assert app.publish(topic(A, "infer"), request("plant/line1/answers", rid="lost")) < 0x80
    assert app.publish(topic(A, "infer"), request(f"{ROOT}/replies/{APP}/r3", rid="after")) < 0x80
    assert app.wait_for(lambda got: any(t.endswith("/r3") for t, _, _ in got))


# --- what must not --------------------------------------------------------------------------------
@pytest.mark.reliability("broker access control",
                         "an agent publishes on another agent's topics, a transfer topic, the hub's status",
                         "each refused (not authorized); the hub never sees it")
def test_an_agent_cannot_publish_on_another_agents_topics(secure, clients, faults_tried):
    watcher = clients(HUB, f"{ROOT}/#")  # sees what the hub would see
    spy = clients(A)  # agent A's account, on its own connection
    forged = b"forged-by-edge-a"
    targets = [topic(B, leaf) for leaf in ("status", "state", "events", "drift", "infer/result", "cmd", "bundle",
                                           "infer")] + [f"{ROOT}/transfers/t-forged", f"{ROOT}/hub/status"]
    refused = {t: spy.publish(t, forged) for t in targets}
    faults_tried(len(targets))
    assert refused == {t: NOT_AUTHORIZED for t in targets}
    marker = topic(A, "infer/result")  # allowed: sent after the forgeries on the same connection
    assert spy.publish(marker, b"marker") < 0x80
    assert watcher.wait_for(lambda got: any(t == marker for t, _, _ in got))
    assert not [t for t, p, _ in watcher.got if p == forged]


@pytest.mark.reliability("broker access control", "an agent subscribes to every agent's commands, chunks and requests",
                         "it gets only its own")
def test_an_agent_cannot_read_another_agents_commands_chunks_or_requests(trained, secure, clients, faults_tried):
    faults_tried(3)
    spy = clients(A, topic("+", "cmd"), topic("+", "bundle"), topic("+", "infer"))
    version = trained.v2.version["version"]
    # B first, then A: one hub connection, so the broker handles B's messages before A's
    out_b = secure.fleet.deploy(B, trained.b2.path.read_bytes(), model="sensor-mlp", version=version, timeout=60)
    assert out_b.ok, (out_b.message, secure.agents[B].log())
    assert isinstance(secure.fleet.infer(B, trained.dataset.X[:1].tolist(), timeout=WAIT), InferResult)
    out_a = secure.fleet.deploy(A, trained.b2.path.read_bytes(), model="sensor-mlp", version=version, timeout=60)
    assert out_a.ok, (out_a.message, secure.agents[A].log())
    assert isinstance(secure.fleet.infer(A, trained.dataset.X[:1].tolist(), timeout=WAIT), InferResult)
    assert spy.wait_for(lambda got: {topic(A, "cmd"), topic(A, "bundle"), topic(A, "infer")} <= {t for t, _, _ in got})
    assert not [t for t in spy.topics() if f"/agents/{B}/" in t]


@pytest.mark.reliability("broker access control",
                         "an integrator publishes commands, chunks, reports, hub topics, poses as an agent, reads "
                         "commands",
                         "each refused (not authorized); it reads no command")
def test_the_integrator_cannot_send_commands_chunks_or_reports_nor_read_commands(secure, clients, faults_tried):
    watcher = clients(HUB, f"{ROOT}/#")
    app = clients(APP, topic("+", "cmd"), f"{ROOT}/replies/{APP}/#")
    forged = b"forged-by-plant-app"
    targets = [topic(A, leaf) for leaf in ("cmd", "bundle", "events", "state", "status", "drift")] + [
        f"{ROOT}/transfers/t-forged", f"{ROOT}/hub/status", secure.fleet.reply_topic,
        topic(APP, "state"), topic(APP, "events")]  # nor pose as an agent named like its account
    refused = {t: app.publish(t, forged) for t in targets}
    faults_tried(len(targets) + 1)
    assert refused == {t: NOT_AUTHORIZED for t in targets}
    assert app.publish(topic(A, "infer"), request(f"{ROOT}/replies/{APP}/ok", rid="ok")) < 0x80
    assert watcher.wait_for(lambda got: any(t == topic(A, "infer") for t, _, _ in got))
    assert app.wait_for(lambda got: any(t.endswith("/ok") for t, _, _ in got))  # and it gets its answer
    assert not [t for t, p, _ in watcher.got if p == forged]
    # reading commands: the hub account publishes a command-topic probe, then a reply; only the reply arrives
    hub = clients(HUB)
    assert hub.publish(topic("nobody-here", "cmd"), b"probe") < 0x80
    assert hub.publish(f"{ROOT}/replies/{APP}/marker", b"marker") < 0x80
    assert app.wait_for(lambda got: any(t.endswith("/marker") for t, _, _ in got))
    assert not [t for t in app.topics() if t.endswith("/cmd")]


@pytest.mark.reliability("broker access control", "a wrong password at connect", "CONNACK refused")
def test_nobody_gets_in_without_the_right_password(broker):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.username_pw_set(A, "not-the-password")
    c.tls_set(ca_certs=str(broker.ca))
    codes: list[int] = []
    done = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        codes.append(reason_code.value)
        done.set()

    c.on_connect = on_connect
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        assert wait_until(done.is_set, WAIT)
    finally:
        c.loop_stop()
        c.disconnect()
    assert codes and codes[0] in (0x86, 0x87), codes  # bad user name or password / not authorized
