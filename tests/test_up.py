"""``edgeloop up``: the local stack's plan, its refusals (busy port, a second ``up``), a clean stop
with no process left behind, a second ``up`` that reuses the home, and what happens when a
part of the stack dies. The stacks here run on free ports (the documented ones are
tests/test_docs_examples.py's)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from edgeloop.hub.stack import LocalStack, StackError, StackInfo, StackOptions
from edgeloop.hub.stack.plan import AgentInfo, busy_message, plan
from edgeloop.hub.stack.runner import port_in_use, read_running
from tests.conftest import wait_until
from tests.docs_examples import gone, stack_pids, start_up, stop_up


def free_ports(n: int) -> list[int]:
    """``n`` free ports below the ephemeral range (where no outgoing connection takes one meanwhile), the
    last one with the next one free too (two agents)."""
    rng = random.Random()
    while True:
        ports = rng.sample(range(20000, 32000), n)
        if ports[-1] + 1 not in ports and not any(port_in_use(p) for p in [*ports, ports[-1] + 1]):
            return ports


# --- plain data ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("over, says", [
    ({"agents": 0}, "--agents"),
    ({"broker": "rabbitmq"}, "--broker"),
    ({"port": 70000}, "--port"),
    ({"port": 8082}, "the ports overlap"),
    ({"metrics_port": 1884}, "the ports overlap"),
    ({"epochs": 0}, "--epochs"),
])
def test_options_are_checked(tmp_path, over, says):
    with pytest.raises(StackError, match=says):
        StackOptions(home=tmp_path, **over).check()


def test_plan_puts_agents_on_consecutive_ports_and_their_state_beside_the_demos(tmp_path):
    p = plan(StackOptions(home=tmp_path, agents=3, http_port=9001), tmp_path, tmp_path / "agents")
    assert [(a.agent_id, a.http_port) for a in p.agents] == [("edge-1", 9001), ("edge-2", 9002), ("edge-3", 9003)]
    assert p.agents[1].state_dir == tmp_path / "agents" / "edge-2"
    assert p.agents[1].config == tmp_path / "stack" / "edge-2.toml"
    assert p.broker_url == "mqtt://127.0.0.1:1884" and p.metrics_url == "http://127.0.0.1:9184/metrics"
    assert [port for port, _, _ in p.ports()] == [1884, 9184, 9001, 9002, 9003]


def test_stack_info_round_trips():
    info = StackInfo(pid=7, home="/h", broker="mosquitto", broker_url="mqtt://127.0.0.1:1884", broker_pid=8,
                     hub_metrics_url="http://127.0.0.1:9184/metrics", hub_client_id="edgeloop-hub-x",
                     model="sensor-mlp:1", bundle_sha256="ab" * 32, started_at=1.5,
                     agents=[AgentInfo("edge-1", 9, "http://127.0.0.1:8081", "http://127.0.0.1:8081/metrics",
                                       "http://127.0.0.1:8081/v2/models/sensor-mlp/infer", "/l", "/c")])
    assert StackInfo.from_json(info.to_json()) == info
    assert StackInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    with pytest.raises(StackError, match="schema"):
        StackInfo.from_dict({**info.to_dict(), "schema": 2})


def test_busy_message_names_the_option_or_the_running_up():
    text = busy_message([(1884, "the MQTT broker", "--port")], None)
    assert "port 1884 (the MQTT broker) is in use" in text and "--port" in text
    running = StackInfo(pid=42, home="/h", broker="embedded", broker_url="mqtt://127.0.0.1:1884", broker_pid=None,
                        hub_metrics_url="", hub_client_id="", model="", bundle_sha256="")
    assert "already running for this home (pid 42" in busy_message([], running)


# --- refusals before anything starts ----------------------------------------------------------------
def test_a_busy_port_is_named_and_nothing_starts(tmp_path):
    broker, metrics, http = free_ports(3)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", broker))
        squatter.listen()
        stack = LocalStack(StackOptions(home=tmp_path, port=broker, http_port=http, metrics_port=metrics))
        try:
            with pytest.raises(StackError, match=rf"port {broker} \(the MQTT broker\) is in use.*--port"):
                stack.start()
            assert stack.hub.list_versions() == []  # refused before training anything
        finally:
            stack.stop()
    assert not (tmp_path / "stack" / "stack.json").exists()


# --- the real thing ------------------------------------------------------------------------------------
def infer(url: str) -> dict:
    req = urllib.request.Request(url, json.dumps({"inputs": [[68.4, 1.8, 302.3, 20.4, 67.4, 1647]]}).encode())
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.reliability("edgeloop up", "an agent of the stack is killed (SIGKILL), then `up` itself is",
                         "the agent is started again and serves its model; after `up` dies the kernel stops every "
                         "child (agent, Mosquitto): nothing is left running")
def test_up_stops_cleanly_reuses_its_home_and_leaves_nothing_behind(tmp_path):
    broker, metrics, http = free_ports(3)
    ports = ["--port", str(broker), "--metrics-port", str(metrics), "--http-port", str(http), "--agents", "1"]
    first = start_up(tmp_path, *ports, "--epochs", "2", "--broker", "embedded", name="first")
    try:
        info = first.info
        assert info["broker"] == "embedded" and info["broker_url"] == f"mqtt://127.0.0.1:{broker}"
        assert infer(info["agents"][0]["infer_url"])["model_name"] == "sensor-mlp"
        assert "training sensor-mlp" in first.text()
        assert "install Mosquitto" in first.text()  # the embedded broker's defect is said up front
        # a second `up` for the same home is refused while the first runs, naming it
        again = LocalStack(StackOptions(home=tmp_path, port=broker, http_port=http, metrics_port=metrics, agents=1))
        try:
            with pytest.raises(StackError, match=f"already running for this home \\(pid {first.proc.pid}"):
                again.start()
        finally:
            again.stop()
    finally:
        rc = stop_up(first, signal.SIGTERM)
    assert rc == 0, first.text()
    assert wait_until(lambda: all(gone(p) for p in stack_pids(first.info)), 5), "processes outlived edgeloop up"
    assert not (tmp_path / "stack" / "stack.json").exists()
    assert "agents exited with edge-1 0" in first.text()

    # the same home again, on Mosquitto: nothing trained or deployed, the agent serves what it had
    second = start_up(tmp_path, *ports, "--broker", "mosquitto", "--json", name="second")
    state = tmp_path / "stack" / "stack.json"
    try:
        # --json: what runs where, once, as one JSON document (the human lines go to stderr)
        assert wait_until(lambda: any(line.startswith("{") for line in second.text().splitlines()), 5)
        docs = [json.loads(line) for line in second.text().splitlines() if line.startswith("{")]
        assert docs == [second.info]
        assert "training" not in second.text()
        assert "every agent already serves sensor-mlp:1" in second.text()
        assert second.info["bundle_sha256"] == first.info["bundle_sha256"]
        assert second.info["broker"] == "mosquitto" and second.info["broker_pid"]
        old = second.info["agents"][0]["pid"]
        os.kill(old, signal.SIGKILL)
        assert wait_until(lambda: json.loads(state.read_text())["agents"][0]["pid"] != old, 15), second.text()
        assert "edge-1 exited with code -9" in second.text()
        deadline = time.monotonic() + 30
        while True:  # started again, with the model it had installed
            try:
                assert infer(second.info["agents"][0]["infer_url"])["model_version"] == "1"
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        pids = stack_pids(json.loads(state.read_text()))
    finally:
        second.proc.kill()  # no clean stop: PR_SET_PDEATHSIG must end the children
        second.proc.wait()
    assert wait_until(lambda: all(gone(p) for p in pids), 15), f"left running: {[p for p in pids if not gone(p)]}"
    assert state.exists()  # stale: a later `up` sees its pid is gone and ignores it


def test_a_stale_state_file_is_ignored_and_a_live_one_is_not(tmp_path):
    """After `up` was killed (kill -9, power loss) its stack.json stays; the next `up` must see it is stale."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    info = StackInfo(pid=dead.pid, home=str(tmp_path), broker="embedded", broker_url="mqtt://127.0.0.1:1884",
                     broker_pid=None, hub_metrics_url="", hub_client_id="", model="", bundle_sha256="")
    state = tmp_path / "stack.json"
    state.write_text(info.to_json())
    assert read_running(state) is None and not state.exists()
    info.pid = os.getppid()  # alive: the process that runs these tests' parent
    state.write_text(info.to_json())
    assert read_running(state) == info and state.exists()
    state.write_text("{not json")
    assert read_running(state) is None and not state.exists()
