"""The whole loop (``edgeloop demo``) end to end: once on Mosquitto, once on the embedded broker."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from edgeloop.agent.wire import topics
from edgeloop.agent.wire.messages import AgentState, decode
from edgeloop.hub.demo import AGENT_IDS, DemoOptions, run_demo
from edgeloop.hub.registry import Registry
from tests.conftest import REPO, retained


def _check_state(home, result):
    names = [s["name"] for s in result["steps"]]
    assert names == ["data", "train_export", "bundle", "agents", "deploy", "inference", "drift", "rollback"]
    steps = {s["name"]: s for s in result["steps"]}
    assert steps["train_export"]["test_accuracy"] > 0.85
    assert "temperature_c" in steps["drift"]["flagged"][AGENT_IDS[1]]
    assert steps["drift"]["flagged"][AGENT_IDS[0]] == []
    assert steps["rollback"]["forged"] == "untrusted_key" and steps["rollback"]["replayed"] == "replayed"
    assert steps["inference"]["mqtt_p50_ms"] > 0 and steps["inference"]["http_p50_ms"] > 0
    assert sorted(steps["agents"]["discovered"]) == sorted(AGENT_IDS)  # zeroconf on loopback
    reg = Registry(home / "registry.sqlite")
    try:
        versions = reg.list_versions()
        assert [v["version"] for v in versions] == ["1", "2"]
        lin = reg.lineage(steps["bundle"]["bundle_sha256"][:12])
        assert lin["dataset"]["sha256"] == steps["data"]["dataset_sha256"]
        kinds = {(d["kind"], d["agent_id"], d["status"]) for d in lin["deployments"]}
        assert ("deploy", AGENT_IDS[0], "installed") in kinds and ("rollback", AGENT_IDS[0], "installed") in kinds
        agents = {a["agent_id"]: a for a in reg.list_agents()}
        assert agents[AGENT_IDS[0]]["active_bundle"] == steps["bundle"]["bundle_sha256"]
        assert all(agents[aid]["status"] == "offline" for aid in AGENT_IDS)
        summary = {s["agent_id"]: s for s in reg.drift_summary()}
        assert "vibration_rms" in summary[AGENT_IDS[1]]["drifted_features"]
        actions = {a["action"] for a in reg.list_audit(limit=200)}
        assert {"deploy", "rollback", "security.check"} <= actions
    finally:
        reg.close()
    _check_clean_stop(home, result)


def _check_clean_stop(home, result):
    """The demo stopped its agents with SIGTERM and each one finished its clean stop itself.

    The log line comes only at the end of :meth:`Agent.stop`, and says "offline state published"
    only once the broker acknowledged the agent's own retained offline ``state`` and ``status``
    (an agent that died or was killed leaves no such line; the Last Will alone cannot write it).
    """
    assert result["agent_exit_codes"] == {aid: 0 for aid in AGENT_IDS}
    for aid in AGENT_IDS:
        log = (home / "agents" / f"{aid}.log").read_text(errors="replace")
        assert "SIGTERM received" in log, log[-2000:]
        assert f"agent {aid} stopped (offline state published)" in log, log[-2000:]
        assert f"withdrew the zeroconf announcement of {aid}" in log
        assert "Traceback" not in log, log[-2000:]


@pytest.mark.broker
def test_demo_on_mosquitto(tmp_path, mosquitto):
    out = io.StringIO()
    result = run_demo(DemoOptions(home=tmp_path / "home", broker=mosquitto.address.url, epochs=10), out)
    _check_state(tmp_path / "home", result)
    # what the broker keeps is the agents' own goodbye: the Last Will sets only the status topic,
    # the state topic says "offline" only if the agent published it; started_at ties it to this run
    reg = Registry(tmp_path / "home" / "registry.sqlite")
    try:
        agents = {a["agent_id"]: a for a in reg.list_agents()}
    finally:
        reg.close()
    for aid in AGENT_IDS:
        state = decode(retained(mosquitto, topics.agent_topic(aid, topics.STATE)), AgentState)
        assert isinstance(state, AgentState)
        assert state.status == "offline" and state.started_at == agents[aid]["started_at"]
        assert retained(mosquitto, topics.agent_topic(aid, topics.STATUS)) == b"offline"
    text = out.getvalue()
    assert "refused [untrusted_key]" in text and "refused [replayed]" in text
    assert "Summary" in text and "edgeloop registry list" in text


def test_demo_on_embedded_broker_via_cli(tmp_path):
    """The README's main job, as a user runs it (CLI, embedded broker, --json for checking)."""
    home = tmp_path / "home"
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "edgeloop.hub.cli", "demo", "--home", str(home), "--epochs", "10",
                           "--json"], capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert "embedded amqtt" in result["steps"][3]["broker"]
    _check_state(home, result)
    for cmd in (["registry", "list"], ["fleet"], ["drift"]):
        shown = subprocess.run([sys.executable, "-m", "edgeloop.hub.cli", *cmd, "--home", str(home)],
                               capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
        assert shown.returncode == 0, shown.stderr
        assert "sensor-mlp" in shown.stdout
