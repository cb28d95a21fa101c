"""Opt-in Home Assistant MQTT discovery (``[homeassistant] enabled = true`` in the agent config).

When enabled, the agent publishes retained discovery configs that Home Assistant's MQTT integration
turns into sensors of one device (the agent)::

    {prefix}/sensor/{node_id}/prediction/config          the last prediction (label, or value)
    {prefix}/sensor/{node_id}/latency/config             the last request's inference latency (ms)
    {prefix}/sensor/{node_id}/drifted_features/config    features drifted in the last drift window
    {prefix}/sensor/{node_id}/drift_{feature}/config     per feature (per channel summary for window
                                                         models): ok / shifted / drifted / unknown

Their state is one small retained JSON document the agent publishes on
``{root}/agents/{id}/ha/state``, at most once per ``min_interval`` seconds and only when something
changed; their availability is the agent's retained ``status`` topic (``online``, and ``offline``
from a clean stop or the broker's Last Will). The configs are published again on every connect and
whenever the served model changes (a model with other features: the configs of features it no
longer has are removed with empty retained messages). Nothing here is on the request path: a thread
looks at what the metrics recorded (:class:`~edgeloop.agent.metrics.AgentMetrics`) four times a second.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from edgeloop.agent import __version__
from edgeloop.agent.metrics import AgentMetrics
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.tensors import REGRESSION_OUTPUT

log = logging.getLogger(__name__)

STATE_LEAF = "ha/state"
MIN_INTERVAL = 1.0  # seconds between two state publications
POLL = 0.25
Publish = Callable[[str, bytes, int, bool], Any]  # (topic, payload, qos, retain)


def object_id(name: str) -> str:
    """A Home Assistant object id from a feature name: letters, digits and '_' only."""
    return re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "feature"


class HomeAssistant:
    """Discovery configs and the state they read (see the module docstring)."""

    def __init__(self, agent_id: str, root: str, prefix: str, *, publish: Publish, connected: Callable[[], bool],
                 metrics: AgentMetrics, active: Callable[[], Any], min_interval: float = MIN_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.agent_id, self.root, self.prefix = agent_id, root, prefix
        self.node_id = object_id(agent_id)  # '.' and '-' are not allowed in a node id
        self.publish, self.connected, self.metrics, self.active = publish, connected, metrics, active
        self.min_interval, self.clock = min_interval, clock
        self.state_topic = topics.agent_topic(agent_id, STATE_LEAF, root)
        self.status_topic = topics.agent_topic(agent_id, topics.STATUS, root)
        self._announced: tuple | None = None  # (model, version) the configs were published for
        self._objects: set[str] = set()  # object ids with a config on the broker
        self._drift_keys: dict[str, str] = {}  # feature name -> key in the state's "drift" object
        self._sent: tuple | None = None  # what the last state publication showed
        self._sent_at = float("-inf")

    @classmethod
    def for_agent(cls, agent: Any) -> HomeAssistant:
        link = agent.link
        return cls(agent.id, agent.root, agent.cfg.ha_discovery_prefix, metrics=agent.metrics,
                   publish=lambda t, p, q, r: link.publish(t, p, qos=q, retain=r),
                   connected=link.connected.is_set, active=lambda: agent.serving.active)

    def start(self, stopping: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self._run, args=(stopping,), name="agent-homeassistant", daemon=True)
        thread.start()
        return thread

    def _run(self, stopping: threading.Event) -> None:
        while not stopping.wait(POLL):
            try:
                self.step()
            except Exception:  # a convenience: never ends the agent, tries again next time
                log.exception("Home Assistant discovery failed")

    def step(self) -> None:
        """Announce when (re)connected or the model changed; publish the state when due and changed."""
        if not self.connected():
            self._announced = None  # configs again on the next connect (the broker may have lost them)
            return
        runner = self.active()
        key = ("",) if runner is None else (runner.name, runner.version)
        if key != self._announced:
            self.announce(runner)
            self._announced = key
            self._sent = None
        now = self.clock()
        if now - self._sent_at < self.min_interval:
            return
        seen = (self.metrics.answers, id(self.metrics.last_drift), key)
        if seen != self._sent:
            self.publish(self.state_topic, json.dumps(self.state(runner), separators=(",", ":")).encode(), 1, True)
            self._sent, self._sent_at = seen, now

    # --- discovery configs --------------------------------------------------------------------------
    def device(self) -> dict:
        return {"identifiers": [f"edgeloop_{self.node_id}"], "name": f"edgeloop agent {self.agent_id}",
                "model": "edgeloop-agent", "sw_version": __version__, "manufacturer": "edgeloop"}

    def configs(self, runner: Any) -> dict[str, dict]:
        """object id -> discovery config, for the model ``runner`` serves (None: no drift sensors)."""
        chart = "mdi:chart-bell-curve"
        out = {
            "prediction": self._sensor("prediction", "Last prediction", "{{ value_json.prediction }}",
                                       icon="mdi:brain"),
            "latency": self._sensor("latency", "Inference latency", "{{ value_json.latency_ms }}",
                                    unit_of_measurement="ms", state_class="measurement", icon="mdi:timer-outline"),
            "drifted_features": self._sensor("drifted_features", "Drifted features",
                                             "{{ value_json.drifted_features }}", state_class="measurement",
                                             icon=chart),
        }
        self._drift_keys = {}
        for name in _drift_features(runner):
            key = object_id(name)
            while key in self._drift_keys.values():
                key += "_"
            self._drift_keys[name] = key
            template = "{{ value_json.drift.get('" + key + "', 'unknown') }}"
            out[f"drift_{key}"] = self._sensor(f"drift_{key}", f"Drift {name}", template, icon=chart)
        return out

    def _sensor(self, oid: str, name: str, template: str, **extra: Any) -> dict:
        """A sensor's discovery config; its unique id names the object (stable across models)."""
        return {"name": name, "unique_id": f"edgeloop_{self.node_id}_{oid}", "object_id": f"{self.node_id}_{oid}",
                "state_topic": self.state_topic, "value_template": template,
                "availability": [{"topic": self.status_topic, "payload_available": topics.ONLINE,
                                  "payload_not_available": topics.OFFLINE}],
                "device": self.device(), **extra}

    def config_topic(self, oid: str) -> str:
        return f"{self.prefix}/sensor/{self.node_id}/{oid}/config"

    def announce(self, runner: Any) -> None:
        configs = self.configs(runner)
        for oid in sorted(self._objects - set(configs)):  # a feature the new model does not have
            self.publish(self.config_topic(oid), b"", 1, True)
        for oid, cfg in configs.items():
            self.publish(self.config_topic(oid), json.dumps(cfg, separators=(",", ":")).encode(), 1, True)
        self._objects = set(configs)
        log.info("Home Assistant discovery: %d sensors under %s/sensor/%s", len(configs), self.prefix, self.node_id)

    # --- state ----------------------------------------------------------------------------------------
    def state(self, runner: Any) -> dict:
        """The retained state every sensor reads (its ``value_template`` picks its field)."""
        doc: dict[str, Any] = {"model": runner.name if runner is not None else None,
                               "version": runner.version if runner is not None else None,
                               "prediction": None, "latency_ms": None, "drifted_features": None, "drift": {}}
        last = self.metrics.last_answer
        if last is not None and last[0] is runner:
            doc["prediction"], doc["latency_ms"] = _prediction(last[1]), round(last[2], 3)
        report = self.metrics.last_drift
        if report is not None and runner is not None and (report.model, report.version) == (runner.name,
                                                                                             runner.version):
            doc["drifted_features"] = len(report.drifted_features)
            doc["drift"] = {self._drift_keys.get(f.name, object_id(f.name)): _drift_state(report.status, f)
                            for f in report.features}
        return doc


def _drift_features(runner: Any) -> list[str]:
    ref = runner.manifest.drift if runner is not None else None
    return [f.name for f in ref.features] if ref is not None else []


def _prediction(outputs: dict) -> Any:
    """The last row's label, else its predicted value."""
    if outputs.get("label"):
        return outputs["label"][-1]
    values = outputs.get(REGRESSION_OUTPUT)
    if not values:
        return None
    v = values[-1]
    return v[0] if isinstance(v, list) and v else v


def _drift_state(status: str, f: Any) -> str:
    if status != "ok":
        return status  # e.g. too_few_rows: not judged
    return "drifted" if f.drifted else "shifted" if f.flagged else "ok"


__all__ = ["HomeAssistant", "object_id", "STATE_LEAF", "MIN_INTERVAL"]
