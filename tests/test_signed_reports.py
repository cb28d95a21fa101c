"""Agents sign their reports; the hub takes an agent's identity from the topic and believes a report
only when the key pinned for that agent signed it (real Mosquitto, agent-protocol clients with real
Ed25519 keys, a real hub fleet and registry; tests/test_fanout.py deploys through real agents, whose
signed install results the hub takes).

Each attack is counted by ``fleet.trust.refused`` and must leave the registry and the command's
waiter untouched; a genuine report sent after the forgeries must then be taken, so a hub that
drops everything would fail too."""

from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest

from edgeloop.agent.wire import topics
from edgeloop.agent.wire.commands import verify_command
from edgeloop.agent.wire.envelope import REPORT_KEY_FIELD, SigningKey, TrustedKeys, raw_public_key, sign_report
from edgeloop.agent.wire.fields import dumps
from edgeloop.agent.wire.messages import AgentState, DriftReport, Event, FeatureDrift
from edgeloop.hub.services import Hub
from edgeloop.hub.services.agents import AgentKeyError
from tests.conftest import wait_until

pytestmark = pytest.mark.broker

SHA = "ab" * 32


class FakeAgent:
    """An agent-protocol client: its own key, its signed retained state, signed reports."""

    def __init__(self, broker, agent_id: str, hub_keyid: str) -> None:
        self.id = agent_id
        self.key = SigningKey.generate()
        self.hub_keyid = hub_keyid
        self.got: list[tuple[str, bytes]] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fake-{agent_id}")
        self.c.on_message = lambda client, userdata, msg: self.got.append((msg.topic, msg.payload))
        self.c.connect(broker.address.host, broker.address.port)
        self.c.loop_start()

    def topic(self, leaf: str, agent_id: str | None = None) -> str:
        return topics.agent_topic(agent_id or self.id, leaf)

    def send(self, topic: str, doc: dict, *, key: SigningKey | None = None, signed: bool = True,
             retain: bool = False) -> None:
        payload = dumps(sign_report(key or self.key, doc)) if signed else dumps(doc)
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def publish_state(self, key: SigningKey | None = None) -> None:
        key = key or self.key
        st = AgentState(agent_id=self.id, status="online", session=1, agent_version="test", started_at=time.time(),
                        trusted_keys=[self.hub_keyid])
        self.send(self.topic(topics.STATE), {**st.to_dict(), REPORT_KEY_FIELD: raw_public_key(key.public)},
                  key=key, retain=True)

    def close(self) -> None:
        self.c.publish(self.topic(topics.STATE), b"", qos=1, retain=True).wait_for_publish(10)
        self.c.loop_stop()
        self.c.disconnect()


def result(agent_id: str, command_id: str, message: str) -> dict:
    return Event(event="rollback_result", agent_id=agent_id, ok=True, at=time.time(), message=message,
                 command_id=command_id).to_dict()


def drift(agent_id: str, window: int) -> dict:
    feats = [FeatureDrift(name="x", counts=[5, 5], psi=0.9, ks=0.5, mean=1.0, drifted=True)]
    return DriftReport(agent_id=agent_id, model="m", version="1", bundle_sha256=SHA, window=window, rows=10,
                       started_at=1000.0 + window, ended_at=1060.0 + window, psi_threshold=0.2, ks_threshold=0.2,
                       features=feats).to_dict()


@pytest.fixture
def hub(tmp_path):
    return Hub(tmp_path / "hub", actor="tests")


@pytest.fixture
def pair(hub, mosquitto):
    """A started fleet and two member agents, ``victim`` and ``mallory``, their keys pinned on first use."""
    tag = uuid.uuid4().hex[:6]
    with hub.fleet(mosquitto.address.url) as fleet:
        agents = [FakeAgent(mosquitto, f"{name}-{tag}", hub.key.keyid) for name in ("victim", "mallory")]
        try:
            for a in agents:
                a.publish_state()
            assert wait_until(lambda: all(hub.registry.get_agent_key(a.id) for a in agents), 15)
            yield fleet, agents[0], agents[1]
        finally:
            for a in agents:
                a.close()


@pytest.mark.reliability("signed reports",
                         "one agent forges another's install result and drift report: on the victim's topic with "
                         "its own key, on its own topic naming the victim, unsigned, a state carrying a new key, "
                         "an answer to the victim's command id under its own name",
                         "each refused or ignored: deployment stays pending, no drift stored, pin unchanged, "
                         "waiter not woken; the genuine reports after them are taken")
def test_forged_install_results_and_drift_reports_are_refused_and_the_genuine_ones_taken(hub, pair, mosquitto,
                                                                                         caplog, faults_tried):
    faults_tried(8)
    fleet, victim, mallory = pair
    cmd = fleet.make_command(victim.id, "rollback", {"bundle_sha256": SHA, "reason": "test"})
    hub.registry.add_deployment(None, victim.id, "rollback", cmd.command_id, cmd.counter, expires_at=cmd.expires_at)
    # on an open broker anyone can read the command (and its id) on the victim's command topic
    mallory.c.subscribe(victim.topic(topics.CMD), 1)
    time.sleep(0.2)
    outcome: list = []
    waiter = threading.Thread(target=lambda: outcome.append(fleet.outcome(cmd.command_id, ("rollback_result",), 30)))
    waiter.start()
    fleet.send(cmd)
    assert wait_until(lambda: mallory.got, 10)
    seen = verify_command(mallory.got[0][1], TrustedKeys.of([fleet.key.public]), victim.id, time.time(), {})
    assert seen.command.command_id == cmd.command_id  # the attacker reads the id

    forged = "forged: rolled back"
    attacks = [
        # the victim's topics, the victim's id, signed by mallory's key
        (victim.topic(topics.EVENTS), result(victim.id, cmd.command_id, forged), {}),
        (victim.topic(topics.DRIFT), drift(victim.id, 1), {}),
        # mallory's own topics, the victim's id in the payload, signed by mallory's (pinned) key
        (mallory.topic(topics.EVENTS), result(victim.id, cmd.command_id, forged), {}),
        (mallory.topic(topics.DRIFT), drift(victim.id, 2), {}),
        # the victim's topics, not signed at all
        (victim.topic(topics.EVENTS), result(victim.id, cmd.command_id, forged), {"signed": False}),
        (victim.topic(topics.DRIFT), drift(victim.id, 3), {"signed": False}),
        # a fresh key of mallory's, claimed in a state on the victim's topic (the pin does not move)
        (victim.topic(topics.STATE), None, {}),
    ]
    for topic, doc, how in attacks:
        if doc is None:
            impostor = SigningKey.generate()
            st = AgentState(agent_id=victim.id, status="online", session=9, agent_version="x", started_at=time.time(),
                            trusted_keys=[fleet.keyid])
            mallory.send(topic, {**st.to_dict(), REPORT_KEY_FIELD: raw_public_key(impostor.public)}, key=impostor)
        else:
            mallory.send(topic, doc, **how)
    # mallory answers the victim's command under its own name: signed right, but not its command
    mallory.send(mallory.topic(topics.EVENTS), result(mallory.id, cmd.command_id, forged))
    assert wait_until(lambda: fleet.trust.refused >= len(attacks), 15), (fleet.trust.refused, caplog.text)

    time.sleep(0.3)  # whatever the forgeries could have done, they had the time to
    assert hub.registry.get_deployment(cmd.command_id)["status"] == "pending"
    assert hub.drift_reports(victim.id) == [] and not outcome
    assert hub.registry.get_agent(victim.id)["session"] == 1  # the impostor's state was not taken
    assert f"answered command {cmd.command_id}, which went to {victim.id}" in caplog.text

    victim.send(victim.topic(topics.EVENTS), result(victim.id, cmd.command_id, "genuine"))
    victim.send(victim.topic(topics.DRIFT), drift(victim.id, 7))
    waiter.join(30)
    assert outcome and outcome[0].ok and outcome[0].message == "genuine"
    assert wait_until(lambda: hub.registry.get_deployment(cmd.command_id)["status"] == "installed", 10)
    assert wait_until(lambda: hub.drift_reports(victim.id), 10)  # drift is stored in batches, apart from events
    assert [r["window"] for r in hub.drift_reports(victim.id)] == [7]
    assert fleet.trust.refused == len(attacks)
    assert caplog.text.count("refused a ") >= len(attacks)


@pytest.mark.reliability("signed reports",
                         "a forged drift report after a hub restart; a state signed by another key for an agent "
                         "pinned at enrollment; an operator re-pin of another key without replace",
                         "refused (pins come from the registry), the real agent then joins; AgentKeyError")
def test_pins_outlive_the_hub_and_an_enrolled_key_cannot_be_taken_over(hub, pair, mosquitto, tmp_path,
                                                                      faults_tried):
    faults_tried(3)
    fleet, victim, mallory = pair
    fleet.stop()
    with hub.fleet(mosquitto.address.url) as again:  # a new hub process: the pins come from the registry
        assert again.wait_members([victim.id], 10) == []  # subscribed: the retained state came
        mallory.send(victim.topic(topics.DRIFT), drift(victim.id, 1))
        victim.send(victim.topic(topics.DRIFT), drift(victim.id, 2))
        assert wait_until(lambda: hub.drift_reports(victim.id), 10)
        assert again.trust.refused >= 1 and [r["window"] for r in hub.drift_reports(victim.id)] == [2]

    # enrollment: the operator pins the agent's key before it ever connects
    enrolled = FakeAgent(mosquitto, f"enrolled-{uuid.uuid4().hex[:6]}", hub.key.keyid)
    try:
        (tmp_path / "agent_key.pub.pem").write_bytes(enrolled.key.public_pem())
        assert hub.pin_agent_key(enrolled.id, tmp_path / "agent_key.pub.pem")["source"] == "enrolled"
        with pytest.raises(AgentKeyError, match="already has report key"):
            hub.pin_agent_key(enrolled.id, SigningKey.generate().public_pem())
        with hub.fleet(mosquitto.address.url) as fleet2:
            assert fleet2.wait_members([victim.id], 10) == []
            enrolled.publish_state(key=SigningKey.generate())  # whoever comes first with another key
            assert wait_until(lambda: fleet2.trust.refused >= 1, 10)
            enrolled.publish_state()  # the agent itself
            assert wait_until(lambda: fleet2.is_member(enrolled.id), 10)
        row = hub.registry.get_agent_key(enrolled.id)
        assert row["source"] == "enrolled" and row["keyid"] == enrolled.key.keyid
        assert hub.forget_agent_key(enrolled.id) and hub.registry.get_agent_key(enrolled.id) is None
    finally:
        enrolled.close()


@pytest.mark.reliability("signed commands",
                         "a hub-signed counter of 2^62 (after 41, and as a first command)",
                         "refused counter_jump; a counter at the bound (2^32 ahead) accepted")
def test_a_hub_signed_counter_far_ahead_is_refused_so_it_cannot_lock_the_hub_out(faults_tried):
    faults_tried(2)
    from edgeloop.agent.errors import ReplayError
    from edgeloop.agent.wire.commands import MAX_COUNTER_JUMP, seal_command
    from edgeloop.agent.wire.messages import Command

    key = SigningKey.generate()
    trusted = TrustedKeys.of([key.public])
    now = time.time()

    def cmd(counter: int) -> bytes:
        return seal_command(key, Command(command="rollback", command_id=f"c{counter}", agent_id="a1", counter=counter,
                                         issued_at=now, expires_at=now + 60, args={"bundle_sha256": SHA}))

    last = {key.keyid: 41}
    with pytest.raises(ReplayError, match="more than") as err:
        verify_command(cmd(2**62), trusted, "a1", now, last)
    assert err.value.code == "counter_jump"
    assert verify_command(cmd(41 + MAX_COUNTER_JUMP), trusted, "a1", now, last).command.counter == 41 + MAX_COUNTER_JUMP
    with pytest.raises(ReplayError):
        verify_command(cmd(2**62), trusted, "a1", now, {})  # a first command too


def test_an_agent_makes_its_key_once_private_and_keeps_it(tmp_path):
    import stat
    import tomllib

    from edgeloop.agent.config import AgentConfig

    cfg = AgentConfig(agent_id="k1", state_dir=tmp_path / "state", trusted_keys=[])
    key = cfg.load_agent_key()
    path = tmp_path / "state" / "agent_key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (tmp_path / "state" / "agent_key.pub.pem").read_bytes() == key.public_pem()  # what the operator pins
    assert cfg.load_agent_key().keyid == key.keyid  # the same key after a restart
    moved = AgentConfig.from_dict({"agent_id": "k1", "state_dir": "s", "agent_key": "keys/k1.pem"}, base=tmp_path)
    assert moved.agent_key_path == tmp_path / "keys" / "k1.pem"
    assert AgentConfig.from_dict(tomllib.loads(moved.to_toml())).agent_key == moved.agent_key


@pytest.mark.reliability("signed reports",
                         "a signed drift report before the agent's first state (no key pinned yet)",
                         "held, not stored; stored once the state pins the key")
def test_reports_that_arrive_before_the_agents_first_state_wait_for_its_key(hub, mosquitto, caplog):
    """A hub's queued messages can reach it before an agent's retained state: held, not lost, not believed."""
    late = FakeAgent(mosquitto, f"late-{uuid.uuid4().hex[:6]}", hub.key.keyid)
    try:
        with hub.fleet(mosquitto.address.url) as fleet:
            fleet.wait_for(lambda: False, 0.3)  # subscribed by now
            caplog.set_level("INFO", logger="edgeloop.hub.fleet")
            late.send(late.topic(topics.DRIFT), drift(late.id, 1))
            assert wait_until(lambda: f"agent {late.id}, for which no key is pinned yet" in caplog.text, 10)
            assert hub.drift_reports(late.id) == [] and fleet.trust.refused == 0
            late.publish_state()
            assert wait_until(lambda: [r["window"] for r in hub.drift_reports(late.id)] == [1], 10)
    finally:
        late.close()
