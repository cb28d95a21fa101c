"""How MqttLink connects: MQTT 5 on Mosquitto, the fall back to 3.1.1 on the embedded amqtt
broker, MQTT 5 properties both ways, persistent sessions, and errors that come at once."""

from __future__ import annotations

import errno
import logging
import ssl
import threading
import time
import uuid
from types import SimpleNamespace

import pytest

from edgeloop.agent.connect_errors import BrokerConnectError, from_connack, from_socket_error, from_tls_text
from edgeloop.agent.connection import BrokerSettings, TlsSettings, broker_from_options
from edgeloop.agent.errors import ConfigError
from edgeloop.agent.mqtt_link import MessageProps, MqttLink
from edgeloop.agent.wire.messages import InferResult
from edgeloop.hub.fleet import MosquittoBroker, free_port
from tests.conftest import wait_until, write_agent_config

pytestmark = pytest.mark.broker


def _link(broker: BrokerSettings, name: str, subs=(), got: list | None = None, **kw) -> MqttLink:
    sink = got if got is not None else []
    return MqttLink(f"test-{name}-{uuid.uuid4().hex[:6]}", broker=broker, subscriptions=list(subs),
                    on_message=lambda topic, payload, msg: sink.append((topic, bytes(payload), MessageProps.of(msg))),
                    **kw)


def test_mosquitto_gets_mqtt5_and_the_embedded_broker_falls_back_to_311(mosquitto, embedded_broker, caplog):
    five = _link(mosquitto.address, "five").connect(5)
    with caplog.at_level(logging.WARNING, logger="amqtt.broker"):
        three = _link(embedded_broker.address, "three").connect(5)
    try:
        assert (five.protocol, three.protocol) == ("5", "3.1.1")
    finally:
        five.stop()
        three.stop()
    # amqtt refused the MQTT 5 attempt; the user sees no warning about a probe that fell back at once
    assert not [r for r in caplog.records if r.name == "amqtt.broker" and r.levelno >= logging.WARNING]
    forced = _link(embedded_broker.address.replace(protocol="5"), "forced")
    with pytest.raises(BrokerConnectError, match="does not accept MQTT 5; set the protocol to auto") as info:
        forced.connect(5)
    assert info.value.code == "protocol"
    old = _link(mosquitto.address.replace(protocol="3.1.1"), "old").connect(5)
    assert old.protocol == "3.1.1"
    old.stop()


def test_mqtt5_properties_travel_both_ways_and_are_dropped_on_311(mosquitto, embedded_broker):
    props = MessageProps(response_topic="t/reply", correlation_data=b"\x00corr", message_expiry=30,
                         user_properties=(("schema", "2"), ("who", "test")), content_type="application/json")
    for broker, expect in ((mosquitto.address, props), (embedded_broker.address, MessageProps())):
        topic = f"edgeloop-test/props/{uuid.uuid4().hex[:8]}"
        got: list = []
        sub = _link(broker, "sub", [(topic, 1)], got).connect(5)
        pub = _link(broker, "pub").connect(5)
        try:
            time.sleep(0.2)  # the SUBACK
            pub.publish(topic, b"payload", qos=1, props=props)
            assert wait_until(lambda got=got: bool(got), 5), broker.url
        finally:
            sub.stop()
            pub.stop()
        (t, payload, seen), = got
        assert (t, payload, seen) == (topic, b"payload", expect), broker.url
        assert seen.user("schema") == ("2" if expect.user_properties else None)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_persistent_session_gets_what_was_published_while_it_was_away(mosquitto, protocol):
    topic = f"edgeloop-test/persist/{uuid.uuid4().hex[:8]}"
    broker = mosquitto.address.replace(protocol=protocol, persistent=True, session_expiry=60,
                                       client_id=f"test-persist-{uuid.uuid4().hex[:6]}")
    got: list = []
    first = _link(broker, "p", [(topic, 1)], got).connect(5)
    time.sleep(0.2)  # subscribed
    first.stop()
    pub = _link(mosquitto.address, "pub").connect(5)
    pub.publish(topic, b"while away", qos=1).wait_for_publish(5)
    pub.stop()
    back = _link(broker, "p", [(topic, 1)], got).connect(5)
    try:
        assert wait_until(lambda: bool(got), 5), "the broker did not keep the session"
        assert got[0][1] == b"while away" and back.protocol == protocol
    finally:
        back.stop()


@pytest.mark.parametrize("url,code", [(None, "refused"), ("mqtt://no-such-broker.invalid", "unknown_host")])
@pytest.mark.reliability("broker loss", "no broker listening; an unknown broker host",
                         "refused / unknown_host at once, not after the connect timeout")
def test_connect_fails_at_once(url, code):
    broker = BrokerSettings.parse(url) if url else BrokerSettings("127.0.0.1", free_port())
    started = time.monotonic()
    with pytest.raises(BrokerConnectError) as info:
        _link(broker, "fail").connect(10)
    # no 10 s wait for the connect timeout; the bound is generous because resolving a .invalid
    # name takes as long as the machine's resolver takes to say it does not exist
    assert info.value.code == code and time.monotonic() - started < 5.0


@pytest.mark.reliability("broker loss", "the broker is down when the link starts, then comes up",
                         "the first failure reported; connects in the background once it is up")
def test_start_reports_the_first_failure_and_keeps_trying_in_the_background():
    port = free_port()
    link = _link(BrokerSettings("127.0.0.1", port), "later").start()
    try:
        assert link.last_error is not None and link.last_error.code == "refused"
        with MosquittoBroker(port=port):
            assert link.wait_connected(15) and link.protocol == "5" and link.last_error is None
    finally:
        link.stop()


def test_deploy_and_infer_on_the_embedded_broker_speak_311(trained, tmp_path, embedded_broker, agent_process):
    """The whole path on the 3.1.1 fallback: agent process and hub both fall back."""
    cfg = write_agent_config(tmp_path, "amqtt-edge", embedded_broker, trained.public_pem)
    proc = agent_process(cfg)
    with trained.hub.fleet(embedded_broker.address) as fleet:
        assert fleet.link.protocol == "3.1.1"
        assert fleet.wait_online(["amqtt-edge"], 30), proc.log()
        out = fleet.deploy("amqtt-edge", trained.b1.path.read_bytes(), model="sensor-mlp",
                           version=trained.v1.version["version"], timeout=60)
        assert out.ok, out.message
        res = fleet.infer("amqtt-edge", trained.dataset.X[:3].tolist())
        assert isinstance(res, InferResult) and len(res.outputs["label"]) == 3
    assert "(MQTT 3.1.1)" in proc.log()


@pytest.mark.reliability("broker loss", "an agent started with no broker listening",
                         "says why, retries in the background, keeps running, no traceback")
def test_an_agent_whose_broker_is_down_says_why_and_serves_on(trained, tmp_path, agent_process):
    port = free_port()
    cfg = write_agent_config(tmp_path, "lonely-edge", SimpleNamespace(address=BrokerSettings("127.0.0.1", port)),
                             trained.public_pem)
    proc = agent_process(cfg)
    assert wait_until(lambda: "nothing is listening on 127.0.0.1 port" in proc.log(), 20), proc.log()
    assert "retrying in the background" in proc.log() and "Traceback" not in proc.log()
    assert proc.proc is not None and proc.proc.poll() is None
    assert "paho" not in proc.log()  # paho's own lines stay at DEBUG


@pytest.mark.reliability("worker threads", "an MQTT message handler raises",
                         "the network thread survives; later messages delivered")
def test_callbacks_only_hand_over_work(mosquitto):
    """A message handler that raises neither kills the network thread nor loses later messages."""
    topic = f"edgeloop-test/raise/{uuid.uuid4().hex[:8]}"
    seen: list[bytes] = []
    lock = threading.Lock()

    def handler(t, payload, msg):
        with lock:
            seen.append(bytes(payload))
        if payload == b"boom":
            raise RuntimeError("handler bug")

    link = MqttLink("test-raise", broker=mosquitto.address, subscriptions=[(topic, 1)], on_message=handler).connect(5)
    pub = _link(mosquitto.address, "pub").connect(5)
    try:
        time.sleep(0.2)
        pub.publish(topic, b"boom", qos=1)
        pub.publish(topic, b"after", qos=1)
        assert wait_until(lambda: seen == [b"boom", b"after"], 5), seen
    finally:
        link.stop()
        pub.stop()


# --- the pure parts: settings and error wording -------------------------------------------------
def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
    exc.verify_code, exc.verify_message = code, message
    return exc


B = BrokerSettings("broker.lan", 8883, username="edge", tls=TlsSettings())


@pytest.mark.parametrize("exc,code,says", [
    (_verify_error(10, "certificate has expired"), "tls", "has expired; renew it"),
    (_verify_error(9, "certificate is not yet valid"), "tls", "not valid yet; check the clock"),
    (_verify_error(62, "Hostname mismatch"), "tls", "does not name 'broker.lan'"),
    (_verify_error(20, "unable to get local issuer certificate"), "tls", "unable to get the local issuer"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), "unreachable", "No route to host"),
    (TimeoutError("timed out"), "timeout", "did not answer within 2.0 s"),
    (ConnectionResetError(errno.ECONNRESET, "reset"), "protocol", "closed during the TLS handshake"),
])
@pytest.mark.reliability("broker access control",
                         "TLS and socket failures (expired or not-yet-valid certificate, hostname mismatch, unknown "
                         "issuer, unreachable, timeout, reset)",
                         "a named error saying what to do")
def test_socket_and_certificate_failures_are_named(exc, code, says):
    err = from_socket_error(exc, B, 2.0)
    assert (err.code, err.broker_url) == (code, "mqtts://edge@broker.lan:8883") and says in str(err), str(err)


@pytest.mark.parametrize("rc,code,says", [
    (0x86, "not_authorised", "refused the login of user 'edge'"),
    (0x85, "broker_refused", "rejected the client id"),
    (0x8A, "broker_refused", "refused the connection (Banned, code 138)"),
])
@pytest.mark.reliability("broker access control", "the broker refuses the login, the client id, or bans the client",
                         "a named error saying what to do")
def test_connack_refusals_are_named(rc, code, says):
    err = from_connack(rc, "Banned" if rc == 0x8A else "x", B, mqtt5=True)
    assert err.code == code and says in str(err), str(err)


@pytest.mark.parametrize("text,says", [
    ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "client certificate has expired"),
    ("TLSV1_ALERT_UNKNOWN_CA", "rejected this side's client certificate"),
    ("SOMETHING_ELSE", "TLS failed (SOMETHING_ELSE)"),
])
@pytest.mark.reliability("broker access control", "TLS alerts from the broker (expired or unknown client certificate)",
                         "a named error saying what to do")
def test_tls_alerts_are_named(text, says):
    assert says in str(from_tls_text(text, B, handshake=True))


def test_urls_settings_and_files_are_checked(tmp_path):
    assert BrokerSettings.parse("broker.lan").url == "mqtt://broker.lan:1883"
    s = BrokerSettings.parse("mqtts://a%40b:p%3Aw@[::1]")
    assert (s.username, s.password, s.port, s.url) == ("a@b", "p:w", 8883, "mqtts://a@b@[::1]:8883")
    for bad, says in [("mqtt://h:99999", "bad port"), ("http://h", "not of the form"), ("mqtt://h/x", "not of")]:
        with pytest.raises(ConfigError, match=says):
            BrokerSettings.parse(bad)
    for kw, says in [({"port": 0}, "not within"), ({"protocol": "4"}, "is not one of"), ({"keepalive": 1}, "at least"),
                     ({"persistent": True}, "needs a fixed client id"), ({"host": ""}, "needs a host")]:
        with pytest.raises(ConfigError, match=says):
            BrokerSettings(**kw)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="ca_file: .*junk.pem holds no usable PEM certificate"):
        TlsSettings(ca_file=tmp_path / "junk.pem").context()
    with pytest.raises(ConfigError, match="are not a matching PEM certificate and unencrypted key"):
        TlsSettings(cert_file=tmp_path / "junk.pem", key_file=tmp_path / "junk.pem").context()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="password file .*empty is empty"):
        broker_from_options("mqtt://u@h", password_file=tmp_path / "empty", env={})
    with pytest.raises(ConfigError, match="needs a user name"):
        broker_from_options("mqtt://h", password_file=tmp_path / "junk.pem", env={})
    with pytest.raises(ConfigError, match="either in the URL or with --password-file"):
        broker_from_options("mqtt://u:p@h", password_file=tmp_path / "junk.pem", env={})
    env = {"EDGELOOP_MQTT_USERNAME": "envuser", "EDGELOOP_MQTT_PASSWORD": "envpw"}
    assert (broker_from_options("mqtt://h", env=env).username, broker_from_options("mqtt://h", env=env).password) \
        == ("envuser", "envpw")
    assert broker_from_options("mqtt://h", env={"EDGELOOP_MQTT_PASSWORD": "x"}).password is None  # no user: unused
