"""Opt-in Home Assistant MQTT discovery (issue 10 item 5): the retained discovery configs a real agent
publishes to a real Mosquitto, validated against Home Assistant's documented MQTT sensor discovery
schema (https://www.home-assistant.io/integrations/sensor.mqtt/ and .../mqtt/#discovery-payload);
the state they read; availability from the agent's status topic flipping on the Last Will (kill -9)."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid

import pytest

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.errors import ConfigError
from edgeloop.agent.wire import topics
from tests.conftest import wait_until, watch_topic, write_agent_config
from tests.onnx_models import FEATURES
from tests.test_metrics import WINDOW, served_model, start_agent

pytestmark = pytest.mark.broker

# Home Assistant's MQTT sensor discovery payload: the keys this agent may send, with their types
# (abbreviations are not used). Keys outside it are typos HA would ignore or reject.
SENSOR_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "name": (str, type(None)), "unique_id": str, "object_id": str, "state_topic": str, "value_template": str,
    "availability": list, "availability_mode": str, "device": dict, "unit_of_measurement": str,
    "state_class": str, "device_class": str, "icon": str, "json_attributes_topic": str,
    "json_attributes_template": str, "expire_after": int, "force_update": bool, "qos": int,
    "entity_category": str, "enabled_by_default": bool,
}
REQUIRED = ("unique_id", "state_topic", "device", "availability")  # discovery with a device needs a unique_id
DEVICE_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "identifiers": (list, str), "connections": list, "name": str, "model": str, "manufacturer": str,
    "sw_version": str, "hw_version": str, "configuration_url": str, "suggested_area": str, "via_device": str,
}
AVAILABILITY_SCHEMA: dict[str, type] = {"topic": str, "payload_available": str, "payload_not_available": str,
                                        "value_template": str}
STATE_CLASSES = ("measurement", "total", "total_increasing")
CONFIG_TOPIC = re.compile(r"^(?P<prefix>.+)/sensor/(?P<node>[a-zA-Z0-9_-]+)/(?P<object>[a-zA-Z0-9_-]+)/config$")


def schema_errors(topic: str, cfg: dict) -> list[str]:
    """Why ``cfg`` (published on ``topic``) is not a valid HA MQTT sensor discovery config ([] if it is)."""
    errs = []
    if CONFIG_TOPIC.match(topic) is None:
        errs.append(f"topic {topic} is not <prefix>/sensor/<node_id>/<object_id>/config")
    errs += [f"missing {k}" for k in REQUIRED if k not in cfg]
    for k, v in cfg.items():
        if k not in SENSOR_SCHEMA:
            errs.append(f"unknown key {k}")
        elif not isinstance(v, SENSOR_SCHEMA[k]):
            errs.append(f"{k} is {type(v).__name__}")
    dev = cfg.get("device", {})
    errs += [f"device.{k} unknown or mistyped" for k, v in dev.items()
             if k not in DEVICE_SCHEMA or not isinstance(v, DEVICE_SCHEMA[k])]
    if not dev.get("identifiers") and not dev.get("connections"):
        errs.append("device needs identifiers or connections")
    for a in cfg.get("availability", []):
        if "topic" not in a:
            errs.append("availability entry without topic")
        errs += [f"availability.{k} unknown or mistyped" for k, v in a.items()
                 if k not in AVAILABILITY_SCHEMA or not isinstance(v, AVAILABILITY_SCHEMA[k])]
    if cfg.get("state_class") not in (None, *STATE_CLASSES):
        errs.append(f"state_class {cfg['state_class']!r}")
    if "+" in cfg.get("state_topic", "") or "#" in cfg.get("state_topic", ""):
        errs.append("state_topic has a wildcard")
    return errs


def configs(got) -> dict[str, dict]:
    """object id -> the newest config among ``got`` (an empty retained message removes it)."""
    out: dict[str, dict] = {}
    for topic, payload in got:
        oid = topic.split("/")[-2]
        if payload:
            out[oid] = json.loads(payload)
        else:
            out.pop(oid, None)
    return out


@pytest.fixture
def ha_agent(tmp_path, mosquitto, hub_key):
    # '.' is not allowed in a node id: the agent must map it
    a = start_agent(tmp_path, mosquitto, hub_key, f"ha.{uuid.uuid4().hex[:6]}", ha_enabled=True,
                    ha_discovery_prefix="ha-test")
    yield a
    a.stop()


def test_discovery_configs_follow_the_schema_and_the_state_they_read(ha_agent, mosquitto):
    a = ha_agent
    node = a.id.replace(".", "_")
    with watch_topic(mosquitto, f"ha-test/sensor/{node}/+/config") as got:
        assert wait_until(lambda: {"prediction", "latency", "drifted_features"} <= set(configs(got)), 10), got
        a.serving.activate(*served_model(a.id))
        drift_ids = {f"drift_{f.lower().replace(' ', '_')}" for f in FEATURES}
        assert wait_until(lambda: drift_ids <= set(configs(got)), 10), sorted(configs(got))
        topics_by_id = {t.split("/")[-2]: t for t, _ in got}
        found = configs(got)
    for oid, cfg in found.items():
        assert schema_errors(topics_by_id[oid], cfg) == [], (oid, cfg)
        assert cfg["availability"] == [{"topic": topics.agent_topic(a.id, topics.STATUS), "payload_available":
                                        topics.ONLINE, "payload_not_available": topics.OFFLINE}]
        assert cfg["device"]["identifiers"] == [f"edgeloop_{node}"] and cfg["device"]["sw_version"]
    assert len({c["unique_id"] for c in found.values()}) == len(found)  # unique per sensor
    state_topic = topics.agent_topic(a.id, "ha/state")
    assert {c["state_topic"] for c in found.values()} == {state_topic}

    with watch_topic(mosquitto, state_topic) as states:
        rows = [[5.1, 3.5, 1.4, 0.2]] * WINDOW  # closes one drift window
        req = urllib.request.Request(f"http://127.0.0.1:{a.http.port}/v2/models/iris/infer",
                                     data=json.dumps({"inputs": rows}).encode())
        with urllib.request.urlopen(req, timeout=10) as r:
            label = json.loads(r.read())["outputs"][2]["data"][-1]
        assert wait_until(lambda: any(json.loads(p)["prediction"] == label for _, p in states), 10), states
        last = next(json.loads(p) for _, p in reversed(states) if json.loads(p)["prediction"] == label)
    assert last["model"] == "iris" and last["latency_ms"] > 0 and last["drifted_features"] >= 0
    # every drift sensor's template names a key the state holds (Jinja's .get('key', ...))
    for oid in drift_ids:
        key = re.search(r"get\('([^']+)'", found[oid]["value_template"]).group(1)
        assert last["drift"][key] in ("ok", "shifted", "drifted")


def test_a_model_without_those_features_removes_their_drift_sensors(ha_agent, mosquitto):
    a = ha_agent
    node = a.id.replace(".", "_")
    a.serving.activate(*served_model(a.id))
    with watch_topic(mosquitto, f"ha-test/sensor/{node}/+/config") as got:
        assert wait_until(lambda: any(k.startswith("drift_") for k in configs(got)), 10)
        a.serving.deactivate()
        assert wait_until(lambda: not any(k.startswith("drift_") for k in configs(got)), 10), sorted(configs(got))
        assert "prediction" in configs(got)


def test_availability_flips_to_offline_on_the_last_will(tmp_path, mosquitto, hub_key, agent_process):
    aid = f"ha-{uuid.uuid4().hex[:6]}"
    proc = agent_process(write_agent_config(tmp_path, aid, mosquitto, hub_key.public_pem(), ha_enabled=True))
    with watch_topic(mosquitto, f"homeassistant/sensor/{aid.replace('-', '_')}/latency/config") as got:
        assert wait_until(lambda: bool(got), 30), proc.log()
        avail = json.loads(got[-1][1])["availability"][0]
    with watch_topic(mosquitto, avail["topic"]) as status:
        assert wait_until(lambda: status and status[-1][1].decode() == avail["payload_available"], 10)
        proc.stop(kill=True)  # no goodbye: the broker publishes the agent's Last Will
        assert wait_until(lambda: status[-1][1].decode() == avail["payload_not_available"], 15), status


def test_the_discovery_prefix_is_checked():
    with pytest.raises(ConfigError, match="discovery_prefix"):
        AgentConfig.from_dict({"agent_id": "a", "state_dir": "s", "homeassistant": {"discovery_prefix": "ha/+"}})
    cfg = AgentConfig.from_dict({"agent_id": "a", "state_dir": "s", "homeassistant": {"enabled": True}})
    assert cfg.ha_enabled and cfg.ha_discovery_prefix == "homeassistant"


def test_state_is_published_at_most_once_per_interval_and_only_on_change():
    from edgeloop.agent.homeassistant import HomeAssistant
    from edgeloop.agent.metrics import AgentMetrics

    runner, _ = served_model("rate")
    metrics, sent, now = AgentMetrics("rate"), [], [100.0]
    ha = HomeAssistant("rate", topics.ROOT, "homeassistant", publish=lambda t, p, q, r: sent.append((t, p, r)),
                       connected=lambda: True, metrics=metrics, active=lambda: runner, clock=lambda: now[0])
    state = topics.agent_topic("rate", "ha/state")
    states = lambda: [json.loads(p) for t, p, _ in sent if t == state]
    ha.step()  # configs and the first state
    assert len(states()) == 1 and all(r for _, _, r in sent)  # everything retained
    for i in range(50):  # a burst of answers within one second: no state publication
        metrics.answered("http", runner, 0.5 + i, {"label": [f"l{i}"]})
        now[0] += 0.01
        ha.step()
    assert len(states()) == 1
    now[0] += 1.0
    ha.step()
    assert len(states()) == 2 and states()[-1]["prediction"] == "l49" and states()[-1]["latency_ms"] == 49.5
    now[0] += 5.0
    ha.step()  # nothing new: nothing sent
    assert len(states()) == 2
