"""Fleet-level Prometheus metrics of the hub runtime (issue 10 item 5): a real runtime on a real
Mosquitto with ``metrics_port``, scraped over HTTP and parsed with prometheus_client's text parser;
``edgeloop hub serve --metrics-port`` reaches it."""

from __future__ import annotations

import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeloop.agent.wire.messages import DriftReport, FeatureDrift
from edgeloop.hub.cli.parser import build_parser
from edgeloop.hub.runtime import HubRuntime
from tests.test_hub_runtime import make_hub

pytestmark = pytest.mark.broker


def report(agent_id: str, window: int, drifted: bool) -> DriftReport:
    f = FeatureDrift(name="temp", counts=[1, 2], psi=0.5 if drifted else 0.01, ks=0.3, mean=1.0, drifted=drifted)
    return DriftReport(agent_id=agent_id, model="m", version="1", bundle_sha256="ab" * 32, window=window, rows=3,
                       started_at=float(window), ended_at=float(window) + 0.5, psi_threshold=0.2,
                       ks_threshold=0.15, features=[f])


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_hub_serves_fleet_metrics_agents_deployments_drift(tmp_path, mosquitto):
    hub = make_hub(tmp_path / "hub")
    reg = hub.registry
    for aid, status in (("a1", "online"), ("a2", "online"), ("a3", "offline")):
        reg.mark_agent(aid, status, member=True)
    sha = "cd" * 32
    reg.add_deployment(sha, "a1", "deploy", uuid.uuid4().hex, 1, status="installed")
    reg.add_deployment(sha, "a2", "deploy", uuid.uuid4().hex, 1, status="installed")
    reg.add_deployment(sha, "a3", "deploy", uuid.uuid4().hex, 1, status="failed")
    reg.add_drift_report(report("a1", 1, drifted=False))
    reg.add_drift_report(report("a1", 2, drifted=True))  # a1's newest window flags a feature
    reg.add_drift_report(report("a2", 1, drifted=True))
    reg.add_drift_report(report("a2", 2, drifted=False))  # a2 flagged before, not now
    runtime = HubRuntime(hub, mosquitto.address.url, metrics_port=0, metrics_host="127.0.0.1").start()
    try:
        assert runtime.metrics is not None
        m = scrape(runtime.metrics.port)
    finally:
        runtime.stop()
        hub.close()
    assert m[("edgeloop_hub_agents", (("status", "online"),))] == 2
    assert m[("edgeloop_hub_agents", (("status", "offline"),))] == 1
    assert m[("edgeloop_hub_deployments", (("kind", "deploy"), ("status", "installed")))] == 2
    assert m[("edgeloop_hub_deployments", (("kind", "deploy"), ("status", "failed")))] == 1
    assert m[("edgeloop_hub_drift_reports_total", ())] == 4
    assert m[("edgeloop_hub_flagged_agents", ())] == 1
    assert m[("edgeloop_hub_agent_drifted_features", (("agent_id", "a1"), ("model", "m"), ("version", "1")))] == 1
    assert m[("edgeloop_hub_agent_drifted_features", (("agent_id", "a2"), ("model", "m"), ("version", "1")))] == 0
    assert m[("edgeloop_hub_broker_connected", ())] == 1


def test_hub_serve_takes_a_metrics_port():
    args = build_parser().parse_args(["hub", "serve", "--metrics-port", "9108"])
    assert args.metrics_port == 9108 and args.metrics_host == "0.0.0.0"
    assert build_parser().parse_args(["hub", "serve"]).metrics_port is None


def test_a_busy_metrics_port_is_refused_with_what_to_do_and_the_home_stays_free(tmp_path, mosquitto):
    import socket

    from edgeloop.hub.errors import HubError

    hub = make_hub(tmp_path / "hub")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        runtime = HubRuntime(hub, mosquitto.address.url, metrics_port=busy.getsockname()[1],
                             metrics_host="127.0.0.1")
        with pytest.raises(HubError, match="--metrics-port"):
            runtime.start()
    HubRuntime(hub, mosquitto.address.url).start().stop()  # the home's lock was given back
    hub.close()
