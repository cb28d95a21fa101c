"""The agent's watchdog (issue 11 item 1): a worker thread that dies is restarted and reported, a crash
loop is given up on and makes /v2/health/ready 503 with the reason.

A real agent runs in-process on a real Mosquitto with a real onnxruntime model; a thread is made to die
by replacing one of the agent's own methods with one that raises what no per-message handler catches.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import pytest

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.runtime import ModelRunner
from edgeloop.agent.service import Agent
from edgeloop.agent.serving import HEALTH_MIN_REQUESTS
from edgeloop.agent.wire import topics
from tests.conftest import wait_until, watch_topic, write_agent_config
from tests.onnx_models import classifier_onnx, manifest_for, nan_regression_onnx

pytestmark = pytest.mark.broker

ROW = [5.1, 3.5, 1.4, 0.2]


class _Crash(BaseException):
    """What no ``except Exception`` catches: the thread it is raised on ends."""


@pytest.fixture
def agent(tmp_path, mosquitto, hub_key):
    aid = f"wd-{uuid.uuid4().hex[:8]}"
    cfg = AgentConfig.load(write_agent_config(tmp_path, aid, mosquitto, hub_key.public_pem()))
    a = Agent(cfg).start()
    assert a.link.connected.wait(15), "agent did not connect"
    mb = classifier_onnx()
    a.serving.activate(ModelRunner.load(manifest_for(mb), mb))
    yield a
    a.stop()


def _ready(a: Agent) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{a.http.port}/v2/health/ready", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _request(a: Agent, rid: str, reply_to: str) -> None:
    rows = [ROW] * 200  # over INLINE_MAX_BYTES: queued for the inference thread
    a._accept_infer(json.dumps({"id": rid, "inputs": rows, "reply_to": reply_to}).encode(), None)


def _events(got) -> list[dict]:
    return [json.loads(p) for _, p in got]


@pytest.mark.reliability("worker threads", "the inference thread dies (an exception no handler catches)",
                         "watchdog restarts it, worker_restarted event, health counts it, next request served")
def test_a_dead_inference_thread_is_restarted_reported_and_serves_again(agent, mosquitto):
    replies = f"plant/{agent.id}/answers"

    def crash(job):
        raise _Crash("injected")

    with watch_topic(mosquitto, topics.agent_topic(agent.id, topics.EVENTS)) as events, \
            watch_topic(mosquitto, replies) as answers:
        agent._handle_infer = crash  # the next request ends the inference thread
        _request(agent, "dies", replies)
        assert wait_until(lambda: agent.watchdog.status()["inference"]["restarts"] == 1, 10)
        del agent._handle_infer
        assert wait_until(lambda: any(e.get("code") == "worker_restarted" for e in _events(events)), 10)
        ev = next(e for e in _events(events) if e.get("code") == "worker_restarted")
        assert ev["details"] == {"worker": "inference", "restarts": 1} and ev["ok"] is False
        assert "_Crash: injected" in ev["message"]
        _request(agent, "after", replies)
        assert wait_until(lambda: any(json.loads(p).get("id") == "after" for _, p in answers), 10)
        answer = next(json.loads(p) for _, p in answers if json.loads(p).get("id") == "after")
        assert len(answer["outputs"]["label"]) == 200
    status, health = _ready(agent)
    assert status == 200 and health["workers"]["inference"] == {"alive": True, "restarts": 1, "error": ""}
    assert all(w["alive"] for w in health["workers"].values()) and "watchdog" in health["workers"]


@pytest.mark.reliability("worker threads", "a worker thread in a crash loop", "given up on: worker_failed "
                         "event, /v2/health/ready 503 with the reason")
def test_a_worker_in_a_crash_loop_is_given_up_on_and_ready_says_why(agent, mosquitto):
    agent.watchdog.max_restarts = 1
    agent._handle_infer = lambda job: (_ for _ in ()).throw(_Crash("again"))
    with watch_topic(mosquitto, topics.agent_topic(agent.id, topics.EVENTS)) as events:
        _request(agent, "one", "plant/x")
        assert wait_until(lambda: agent.watchdog.status()["inference"]["restarts"] == 1, 10)
        _request(agent, "two", "plant/x")
        assert wait_until(lambda: agent.watchdog.status()["inference"]["error"] != "", 10)
        assert wait_until(lambda: any(e.get("code") == "worker_failed" for e in _events(events)), 10)
    status, health = _ready(agent)
    assert status == 503 and health["ready"] is False
    (reason,) = health["reasons"]
    assert reason.startswith("the inference worker died 2 times within 60 s (last: _Crash: again)")
    assert "restart the agent" in reason
    assert health["workers"]["inference"]["alive"] is False
    assert agent.health()["ready"] is False


@pytest.mark.reliability("worker threads", "the HTTP server thread ends", "restarted on the same port, ready 200")
def test_a_dead_http_server_is_restarted_on_the_same_port(agent):
    port = agent.http.port
    agent.http._server.stop()  # the server thread ends as if its loop had died
    assert wait_until(lambda: agent.watchdog.status()["http"]["restarts"] == 1, 10)
    assert agent.http.port == port
    assert wait_until(lambda: _ready(agent)[0] == 200, 10)


@pytest.mark.reliability("model health", "an active model fails every real request (passes loading)",
                         "model_health event (model_failing, error rate), /v2/health/ready 503 with the reason")
def test_a_model_failing_real_requests_is_reported_and_makes_ready_503(agent, mosquitto, faults_tried):
    """Issue 11 item 9 on a whole agent: the rolling error rate is in its health, a ``model_health``
    event tells the hub when the model starts failing (and when it stops), /v2/health/ready is 503."""
    faults_tried(HEALTH_MIN_REQUESTS)
    mb = nan_regression_onnx()
    agent.serving.deactivate()  # several models per agent: "broken" is to be the only one (requests name none)
    agent.serving.activate(ModelRunner.load(manifest_for(mb, task="regression", model="broken"), mb))
    with watch_topic(mosquitto, topics.agent_topic(agent.id, topics.EVENTS)) as events:
        for i in range(HEALTH_MIN_REQUESTS):
            assert _ready(agent)[0] == 200, f"not ready after {i} failures"
            _request(agent, f"r{i}", "plant/x")
        assert wait_until(lambda: any(e.get("event") == "model_health" for e in _events(events)), 10)
        ev = next(e for e in _events(events) if e.get("event") == "model_health")
        assert ev["ok"] is False and ev["code"] == "model_failing"
        assert ev["details"]["errors"] == ev["details"]["requests"] == HEALTH_MIN_REQUESTS
        assert ev["details"]["error_rate"] == 1.0 and "bad_output" in ev["details"]["last_error"]
        status, health = _ready(agent)
        assert status == 503 and health["model"]["failing"] is True
        assert health["reasons"][0].startswith(f"model broken version 1 failed {HEALTH_MIN_REQUESTS} of its last")
        mb = classifier_onnx()
        agent.serving.activate(ModelRunner.load(manifest_for(mb, model="broken", version="2"), mb))  # a rollback
        assert _ready(agent)[0] == 200
