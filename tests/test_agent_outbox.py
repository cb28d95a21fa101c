"""The agent's outbox: drift reports and events kept on disk while the broker is unreachable.

Unit level: the bounds (count, bytes, oldest dropped first with a count), a restart, a
corrupt file, an unwritable folder and a full disk (a real file-size limit in a child
process). Then the outbox over a real paho link and a real Mosquitto, and two real agent
processes: one under its own topic root, one whose broker is stopped while it serves
over HTTP and closes drift windows.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgeloop.agent.mqtt_link import MqttLink
from edgeloop.agent.outbox import DRIFT, EVENTS, KINDS, Outbox, Spool
from edgeloop.agent.store import AgentStore
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.messages import (
    AgentState,
    DriftReport,
    Event,
    FeatureDrift,
    InferError,
    InferRequest,
    decode,
    decode_infer_reply,
)
from edgeloop.hub.fleet import MosquittoBroker
from edgeloop.hub.fleet.brokers import BrokerAddress
from tests.conftest import REPO, retained, wait_until, watch_topic, write_agent_config


def _report(window: int, agent_id: str = "edge-1", features: int = 2) -> DriftReport:
    return DriftReport(
        agent_id=agent_id, model="m", version="1", bundle_sha256="ab" * 32, window=window, rows=200,
        started_at=1000.0 + window, ended_at=1001.0 + window, psi_threshold=0.2, ks_threshold=0.15,
        features=[FeatureDrift(f"f{i}", [100, 100], 0.01, 0.02, 0.5, False) for i in range(features)])


def _validate(data: bytes) -> DriftReport:
    msg = decode(data, DriftReport)
    assert isinstance(msg, DriftReport)
    return msg


def _event(data: bytes) -> Event:
    msg = decode(data, Event)
    assert isinstance(msg, Event)
    return msg


def _spool(folder: Path, **bounds) -> Spool:
    return Spool(folder, kind="drift reports", validate=_validate, **bounds)


def _windows(spool: Spool) -> list[int]:
    return [_validate(data).window for _, data in spool.peek(10_000)]


# --- the bounds ------------------------------------------------------------------------------
def test_the_count_bound_drops_the_oldest_and_counts_them(tmp_path):
    spool = _spool(tmp_path / "drift", max_messages=3)
    for w in range(1, 6):
        assert spool.append(_report(w).encode())
    assert _windows(spool) == [3, 4, 5] and spool.dropped == 2
    assert sorted(p.name for p in (tmp_path / "drift").glob("*.msg")) == [
        "000000000003.msg", "000000000004.msg", "000000000005.msg"]


def test_the_byte_bound_drops_the_oldest_and_a_message_larger_than_the_outbox_is_dropped(tmp_path):
    size = len(_report(1).encode())
    spool = _spool(tmp_path / "drift", max_bytes=int(2.5 * size))
    for w in range(1, 5):
        assert spool.append(_report(w).encode())
    assert _windows(spool) == [3, 4] and spool.dropped == 2 and spool.bytes == 2 * size
    assert not spool.append(_report(5, features=40).encode())  # alone larger than max_bytes
    assert _windows(spool) == [3, 4] and spool.dropped == 3


def test_what_the_outbox_holds_and_its_drop_count_survive_a_restart(tmp_path):
    spool = _spool(tmp_path / "drift", max_messages=2)
    for w in (1, 2, 3):
        spool.append(_report(w).encode())
    (tmp_path / "drift" / ".tmp-000000000009.msg.123.abcd").write_bytes(b"half a write")  # a crash mid-write

    again = _spool(tmp_path / "drift", max_messages=2)
    assert _windows(again) == [2, 3] and again.dropped == 1
    assert not list((tmp_path / "drift").glob(".tmp-*"))
    again.append(_report(4).encode())  # numbering goes on after the kept messages
    assert _windows(again) == [3, 4] and again.dropped == 2
    again.clear_dropped(2)
    assert _spool(tmp_path / "drift").dropped == 0


def test_lower_bounds_after_a_restart_drop_the_oldest_with_a_count(tmp_path):
    spool = _spool(tmp_path / "drift")
    for w in range(1, 6):
        spool.append(_report(w).encode())
    smaller = _spool(tmp_path / "drift", max_messages=2)
    assert _windows(smaller) == [4, 5] and smaller.dropped == 3


def test_a_corrupt_outbox_file_is_ignored_with_a_log_line(tmp_path, caplog):
    spool = _spool(tmp_path / "drift")
    for w in (1, 2, 3):
        spool.append(_report(w).encode())
    bad = tmp_path / "drift" / "000000000002.msg"
    bad.write_bytes(b'{"schema": 1, "type": "drift_report", "agent_')  # cut short
    (tmp_path / "drift" / "dropped.json").write_text("not json")
    with caplog.at_level(logging.WARNING, logger="edgeloop.agent.outbox"):
        again = _spool(tmp_path / "drift")
    assert _windows(again) == [1, 3] and again.dropped == 0
    assert not bad.exists()
    corrupt = [r.getMessage() for r in caplog.records if "000000000002.msg is corrupt" in r.getMessage()]
    assert len(corrupt) == 1 and "ignored" in corrupt[0]
    assert any("dropped.json is unreadable" in r.getMessage() for r in caplog.records)


def test_an_unwritable_outbox_drops_with_a_count_and_logs_once(tmp_path, caplog):
    (tmp_path / "outbox").write_text("a file where the outbox folder should be")
    with caplog.at_level(logging.ERROR, logger="edgeloop.agent.outbox"):
        spool = _spool(tmp_path / "outbox" / "drift")
        kept = [spool.append(_report(w).encode()) for w in range(1, 6)]
    assert kept == [False] * 5 and spool.dropped == 5 and len(spool) == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot be written" in errors[0] and "keeps serving" in errors[0]


FULL_DISK_SCRIPT = textwrap.dedent("""
    import logging, resource, signal, sys
    from pathlib import Path
    from edgeloop.agent.outbox import Spool
    from edgeloop.agent.wire.messages import DriftReport, decode

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
    small, big = Path(sys.argv[2]).read_bytes(), Path(sys.argv[3]).read_bytes()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(small) + 100, resource.RLIM_INFINITY))
    spool = Spool(Path(sys.argv[1]), kind="drift reports", validate=lambda b: decode(b, DriftReport))
    print("kept", [spool.append(p) for p in (small, big, big, big, small)], "dropped", spool.dropped)
""")


def test_a_full_disk_drops_with_a_count_logs_once_and_recovers(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse writes past a size, as a full disk refuses them."""
    (tmp_path / "small").write_bytes(_report(1).encode())
    (tmp_path / "big").write_bytes(_report(2, features=60).encode())
    out = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(tmp_path / "drift"), str(tmp_path / "small"),
                          str(tmp_path / "big")], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "kept [True, False, False, False, True] dropped 3" in out.stdout
    assert out.stdout.count("cannot be written") == 1 and out.stdout.count("writable again") == 1
    assert "File too large" in out.stdout


# --- the outbox over a real link ---------------------------------------------------------------
def _outbox_on(broker, folder: Path, agent_id: str, **bounds) -> tuple[Outbox, MqttLink]:
    link = MqttLink(client_id=f"outbox-test-{uuid.uuid4().hex[:8]}", host=broker.address.host,
                    port=broker.address.port, on_message=lambda *a: None)
    box = Outbox(
        folder, publish=lambda kind, data: link.publish(topics.agent_topic(agent_id, kind), data, qos=1),
        connected=link.connected.is_set,
        validators={EVENTS: lambda b: decode(b, Event), DRIFT: lambda b: decode(b, DriftReport)},
        dropped_report=lambda counts: Event("error", agent_id, False, time.time(), "reports_dropped",
                                            "dropped", details={"dropped": counts}).encode(),
        **bounds)
    return box, link


@pytest.mark.broker
def test_kept_reports_go_out_in_order_after_a_restart_events_first_then_the_drop_count(tmp_path, mosquitto):
    aid = f"ob-{uuid.uuid4().hex[:8]}"
    box, link = _outbox_on(mosquitto, tmp_path / "outbox", aid, max_messages=4)
    box.start()  # never connected: everything is kept
    for w in range(1, 7):
        box.submit(DRIFT, _report(w, aid).encode())
    box.submit(EVENTS, Event("install_result", aid, True, time.time(), command_id="c1").encode())
    assert wait_until(lambda: box.pending() == {EVENTS: 1, DRIFT: 4}, 5)
    box.stop()

    # a new process: the same folder, now with a broker
    box, link = _outbox_on(mosquitto, tmp_path / "outbox", aid, max_messages=4)
    assert box.pending() == {EVENTS: 1, DRIFT: 4}
    with watch_topic(mosquitto, topics.agent_topic(aid, "#")) as got:
        box.start()
        link.start()
        assert link.wait_connected(10)
        box.flush_soon()
        assert wait_until(lambda: len(got) == 6, 10), got
        box.submit(DRIFT, _report(7, aid).encode())  # nothing waits any more: straight out
        assert wait_until(lambda: len(got) == 7, 10), got
    box.stop()
    link.stop()
    leaves = [t.rsplit("/", 1)[1] for t, _ in got]
    assert leaves == ["events", "drift", "drift", "drift", "drift", "events", "drift"]
    assert _event(got[0][1]).command_id == "c1"
    assert [_validate(p).window for t, p in got if t.endswith("/drift")] == [3, 4, 5, 6, 7]
    dropped = _event(got[5][1])
    assert dropped.code == "reports_dropped" and dropped.details == {"dropped": {"drift": 2}}
    assert box.pending() == dict.fromkeys(KINDS, 0)
    assert not list((tmp_path / "outbox").rglob("*.msg"))
    assert json.loads((tmp_path / "outbox" / "drift" / "dropped.json").read_text()) == {"dropped": 0}


# --- real agent processes ----------------------------------------------------------------------------
def _post_rows(url: str, rows: list[list[float]]) -> dict:
    body = {"inputs": [{"name": "features", "shape": [len(rows), len(rows[0])], "datatype": "FP32",
                        "data": [v for r in rows for v in r]}]}
    req = urllib.request.Request(f"{url}/v2/models/sensor-mlp/infer", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        return json.loads(r.read())


def _serve(url: str, trained, windows: int, per_request: int = 50) -> None:
    window = trained.b1.manifest.drift.window
    X = trained.dataset.X
    for start in range(0, windows * window, per_request):
        rows = [X[i % len(X)].tolist() for i in range(start, start + per_request)]
        doc = _post_rows(url, rows)
        assert len(next(o for o in doc["outputs"] if o["name"] == "label")["data"]) == per_request


def _preinstall(state_dir: Path, trained) -> None:
    """The agent's store as a deploy leaves it: trained.b1 installed and active."""
    AgentStore(state_dir).install(trained.b1.sha256, trained.b1.path.read_bytes(), "sensor-mlp",
                                  trained.v1.version["version"])


@pytest.mark.broker
def test_an_agent_under_its_own_topic_root_serves_and_reports_there_and_ignores_the_default_root(
        tmp_path, trained, mosquitto, agent_process):
    root = f"plant-{uuid.uuid4().hex[:8]}/edgeloop/v1"  # its own: other tests' hubs never see this agent
    aid = f"root-{uuid.uuid4().hex[:8]}"
    cfg = write_agent_config(tmp_path, aid, mosquitto, trained.public_pem, topic_root=root)
    _preinstall(tmp_path / f"{aid}-state", trained)
    with watch_topic(mosquitto, f"{topics.ROOT}/agents/{aid}/#") as default_root, \
            watch_topic(mosquitto, f"{root}/agents/{aid}/#") as own_root:
        proc = agent_process(cfg)
        assert wait_until(lambda: (f"{root}/agents/{aid}/status", b"online") in own_root, 30), proc.log()
        assert retained(mosquitto, topics.agent_topic(aid, topics.STATUS, root)) == b"online"
        state = decode(retained(mosquitto, topics.agent_topic(aid, topics.STATE, root)), AgentState)
        assert isinstance(state, AgentState) and state.active is not None

        # drift reports under the root
        _serve(state.http_url, trained, windows=1)
        assert wait_until(lambda: any(t.endswith("/drift") for t, _ in own_root), 10), proc.log()

        # requests: answered under the root, ignored under the default root
        with watch_topic(mosquitto, f"test/{aid}/replies") as replies:
            for r, rid in ((topics.ROOT, "default"), (root, "own")):
                req = InferRequest(id=rid, inputs=trained.dataset.X[:2].tolist(), reply_to=f"test/{aid}/replies")
                _publish(mosquitto, topics.agent_topic(aid, topics.INFER, r), req.encode())
            assert wait_until(lambda: bool(replies), 10), proc.log()
            time.sleep(0.5)  # an answer to the default-root request would be here by now
            assert [decode_infer_reply(p).id for _, p in replies] == ["own"]
            # a request without reply_to is answered on the root's infer/result
            bad = InferRequest(id="no-reply-to", inputs=[[1.0, 2.0]])
            _publish(mosquitto, topics.agent_topic(aid, topics.INFER, root), bad.encode())
            assert wait_until(lambda: any(t == topics.agent_topic(aid, topics.INFER_RESULT, root)
                                          for t, _ in own_root), 10)
        answer = next(p for t, p in own_root if t.endswith("/infer/result"))
        assert isinstance(decode_infer_reply(answer), InferError)

        # commands: a refused one is answered by an event under the root only
        _publish(mosquitto, topics.agent_topic(aid, topics.CMD, topics.ROOT), b"not a signed command")
        _publish(mosquitto, topics.agent_topic(aid, topics.CMD, root), b"not a signed command")
        assert wait_until(lambda: any(t.endswith("/events") for t, _ in own_root), 10), proc.log()
        time.sleep(0.3)
        assert proc.stop() == 0
        assert wait_until(lambda: (f"{root}/agents/{aid}/status", b"offline") in own_root, 10)

    for leaf in (topics.STATUS, topics.STATE):  # leave no retained messages behind on the shared broker
        _publish(mosquitto, topics.agent_topic(aid, leaf, root), b"", retain=True)
    events = [_event(p) for t, p in own_root if t.endswith("/events")]
    assert len(events) == 1 and not events[0].ok
    # under the default root only what this test sent: no status, state, answer, event or drift report
    assert sorted(t.rsplit("/", 1)[1] for t, _ in default_root) == ["cmd", "infer"]


def _publish(broker, topic: str, payload: bytes, retain: bool = False) -> None:
    import paho.mqtt.publish as publish

    publish.single(topic, payload, qos=1, retain=retain, hostname=broker.address.host, port=broker.address.port)


class Gate:
    """A TCP forwarder between one agent and the broker, so a test decides when the agent may
    reconnect: closed, it drops the agent's connection attempts at once."""

    def __init__(self, upstream: BrokerAddress) -> None:
        self.upstream = upstream
        self.open = threading.Event()
        self.open.set()
        self.attempts = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = BrokerAddress("127.0.0.1", self._server.getsockname()[1])
        self._done = False
        self._conns: list[tuple[socket.socket, socket.socket]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def drop(self) -> None:
        """Cut the connections that pass now (the client sees the broker go away)."""
        for pair in self._conns:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._conns.clear()

    def _accept(self) -> None:
        while not self._done:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.attempts += 1
            try:
                if not self.open.is_set():
                    raise OSError("gate closed")
                up = socket.create_connection((self.upstream.host, self.upstream.port), timeout=2)
            except OSError:
                conn.close()
                continue
            self._conns.append((conn, up))
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._done = True
        self._server.close()


@pytest.mark.broker
def test_with_the_broker_down_the_agent_serves_and_delivers_its_drift_reports_when_it_returns(
        tmp_path, trained, agent_process):
    """Broker stopped: HTTP keeps answering and drift windows close into the outbox; broker back on
    the same port: the hub stores every kept report, in order, each once, and the agent is online."""
    port_dir = tmp_path / "mosquitto"
    broker = MosquittoBroker(workdir=port_dir).start()
    gate = Gate(broker.address)
    aid = f"out-{uuid.uuid4().hex[:8]}"
    cfg = write_agent_config(tmp_path, aid, SimpleNamespace(address=gate.address), trained.public_pem)
    proc = agent_process(cfg)
    outbox = tmp_path / f"{aid}-state" / "outbox" / "drift"
    try:
        with trained.hub.fleet(broker.address.url) as fleet:
            assert fleet.wait_online([aid], timeout=30), proc.log()
            out = fleet.deploy(aid, trained.b1.path.read_bytes(), model="sensor-mlp",
                               version=trained.v1.version["version"], timeout=30)
            assert out.ok, out.message
            url = fleet.agents()[aid].http_url
            _serve(url, trained, windows=1)  # window 1 while the broker is up
            assert wait_until(lambda: len(_stored(trained, aid)) == 1, 10), proc.log()

        broker.stop()
        assert wait_until(lambda: "disconnect" in proc.log().lower(), 10), proc.log()
        _serve(url, trained, windows=3)  # windows 2-4: served over HTTP, kept on disk
        assert wait_until(lambda: len(list(outbox.glob("*.msg"))) == 3, 10), proc.log()

        gate.open.clear()  # the hub listens before the agent may come back
        broker = MosquittoBroker(port=broker.address.port, workdir=port_dir).start()
        with trained.hub.fleet(broker.address.url) as fleet, \
                watch_topic(broker, topics.agent_topic(aid, topics.DRIFT)) as on_the_wire:
            gate.open.set()
            assert fleet.wait_online([aid], timeout=60), proc.log()
            assert wait_until(lambda: len(_stored(trained, aid)) == 4, 20), proc.log()
            time.sleep(0.5)  # a duplicate would arrive by now
            assert [_validate(p).window for _, p in on_the_wire] == [2, 3, 4]
            assert fleet.status(aid) == topics.ONLINE
        rows = _stored(trained, aid)
        assert [r["window"] for r in sorted(rows, key=lambda r: r["id"])] == [1, 2, 3, 4]
        assert all(r["bundle_sha256"] == trained.b1.sha256 and r["rows"] == 200 for r in rows)
        assert not list(outbox.glob("*.msg"))
        assert "dropped" not in proc.log()
    finally:
        gate.close()
        broker.stop()


def _stored(trained, aid: str) -> list[dict]:
    return trained.hub.drift_reports(aid)


@pytest.mark.broker
@pytest.mark.reliability("broker loss",
                         "40 kept reports, acknowledgements slower than the outbox waits, a new report every 0.2 s",
                         "the outbox drains while traffic goes on; each window on the wire once")
def test_a_flush_cut_short_goes_on_under_steady_traffic_and_sends_each_report_once(tmp_path, mosquitto):
    """Acknowledgements slower than the outbox waits (ack_timeout 0): each flush stops after one batch.
    New reports keep coming every 0.2 s, so the outbox is never idle for a second; the kept reports
    must still drain (they used to wait for a quiet second that never came) and none go out twice."""
    aid = f"ob-{uuid.uuid4().hex[:8]}"
    box, link = _outbox_on(mosquitto, tmp_path / "outbox", aid, ack_timeout=0.0)
    box.start()  # never connected yet: all kept
    for w in range(1, 41):
        box.submit(DRIFT, _report(w, aid).encode())
    assert wait_until(lambda: box.pending()[DRIFT] == 40, 5)
    seen = []
    with watch_topic(mosquitto, topics.agent_topic(aid, DRIFT)) as got:
        link.start()
        assert link.wait_connected(10)
        box.flush_soon()
        w = 40
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            w += 1
            box.submit(DRIFT, _report(w, aid).encode())
            time.sleep(0.2)
            seen.append(box.pending()[DRIFT])
            if seen[-1] <= 12:
                break
        box.stop()
        link.stop()
    assert seen[-1] <= 12, seen  # drained while reports kept coming
    windows = [_validate(p).window for _, p in got]
    assert len(windows) == len(set(windows)) and set(range(1, 41)) <= set(windows)


@pytest.mark.broker
@pytest.mark.reliability("broker loss",
                         "5 kept reports flushed while the link is down (paho keeps them: MQTT_ERR_NO_CONN), 2 "
                         "retries, then the link returns",
                         "each report on the wire once (not three times)")
def test_reports_paho_holds_while_the_link_is_down_are_not_published_again(tmp_path, mosquitto):
    """A flush while the link is down (paho answers MQTT_ERR_NO_CONN but keeps each message and sends it
    once reconnected), retried every second until the link is back: each report reaches the broker once
    (the outbox used to publish its own copy on every retry)."""
    aid = f"ob-{uuid.uuid4().hex[:8]}"
    box, _ = _outbox_on(mosquitto, tmp_path / "outbox", aid)
    for w in range(1, 6):
        box.submit(DRIFT, _report(w, aid).encode())  # not started, never connected: kept on disk
    gate = Gate(mosquitto.address)
    link = MqttLink(client_id=f"outbox-test-{uuid.uuid4().hex[:8]}", host=gate.address.host,
                    port=gate.address.port, on_message=lambda *a: None)
    box = Outbox(tmp_path / "outbox",
                 publish=lambda kind, data: link.publish(topics.agent_topic(aid, kind), data, qos=1),
                 connected=lambda: True,  # the link's own flag lags behind the socket: say "up" throughout
                 validators={EVENTS: lambda b: decode(b, Event), DRIFT: lambda b: decode(b, DriftReport)},
                 dropped_report=lambda counts: b"{}", ack_timeout=0.3)
    try:
        with watch_topic(mosquitto, topics.agent_topic(aid, DRIFT)) as got:
            link.start()
            assert link.wait_connected(10)
            gate.open.clear()
            gate.drop()
            assert wait_until(lambda: not link.connected.is_set(), 10)
            box.start()
            box.flush_soon()  # published while down: paho keeps them (NO_CONN); not acknowledged in time
            time.sleep(2.5)  # two retries of the cut-short flush
            gate.open.set()
            assert link.wait_connected(40)
            assert wait_until(lambda: box.pending()[DRIFT] == 0, 15)
            time.sleep(1.0)  # a second copy would be here by now
        windows = [_validate(p).window for _, p in got]
        assert sorted(windows) == [1, 2, 3, 4, 5], windows
    finally:
        box.stop()
        link.stop()
        gate.close()
