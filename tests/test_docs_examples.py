"""Every example marked runnable in README.md and docs/ runs verbatim against a real ``edgeloop up``
(Mosquitto on the documented port 1884, the hub runtime, two agent processes serving the demo
model), and the integrations in docs/integrations/ fit what the running stack really publishes:
the Grafana dashboard's metric names are in the agents' and the hub's /metrics, the Node-RED
flow's topics are the agents' and its function nodes (run by node.js) turn real answers and
drift reports into chart points."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request

import pytest

from edgeloop.agent.wire import topics
from edgeloop.hub.datasets import generate_sensor_data
from tests.conftest import unavailable
from tests.docs_examples import ROOT, all_examples, default_ports, gone, run_example, stack_pids, start_up, stop_up

INTEGRATIONS = ROOT / "docs" / "integrations"
EXAMPLES = all_examples()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if shutil.which("mosquitto_pub") is None or shutil.which("mosquitto") is None:
        unavailable("needs mosquitto and mosquitto-clients (apt-get install mosquitto mosquitto-clients)")
    with default_ports():
        up = start_up(tmp_path_factory.mktemp("up-home"), "--epochs", "2")
        try:
            assert "training sensor-mlp" in up.text() and up.info["broker"] == "mosquitto"
            yield up
        finally:
            rc = stop_up(up)
        assert rc == 0, up.text()
        assert "agents exited with edge-1 0, edge-2 0" in up.text()  # each stopped cleanly, said goodbye
        assert all(gone(pid) for pid in stack_pids(up.info)), "a process of the stack outlived edgeloop up"
        assert not (up.home / "stack" / "stack.json").exists()


def test_the_readme_and_the_cookbook_have_runnable_examples():
    files = {ex.file for ex in EXAMPLES}
    assert {"README.md", "docs/integrations/mqtt-cookbook.md"} <= files
    readme = [ex for ex in EXAMPLES if ex.file == "README.md"]
    assert any("mosquitto_pub -p 1884" in ex.code for ex in readme)
    assert any("curl" in ex.code for ex in readme)


@pytest.mark.parametrize("example", EXAMPLES, ids=[ex.id for ex in EXAMPLES])
def test_example_runs_as_written(stack, example):
    res = run_example(example, stack.home)
    shown = f"{example.id}\n$ {example.code}\nexit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    assert res.returncode == 0, shown
    if example.expect is not None:
        assert example.expect in res.stdout, shown


# --- Grafana ---------------------------------------------------------------------------------------
def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def exposed_names(text: str) -> dict[str, set[str]]:
    """Series names in a Prometheus text exposition -> the label names they carry."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*?)\})?\s", line)
        if m:
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
            out.setdefault(m.group(1), set()).update(labels)
    return out


def dashboard_exprs(doc: dict) -> list[str]:
    panels = [p for row in doc["panels"] for p in [row, *row.get("panels", [])]]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def test_grafana_dashboard_uses_only_metrics_the_stack_exposes(stack):
    doc = json.loads((INTEGRATIONS / "grafana-dashboard.json").read_text())
    assert doc["__inputs"][0]["type"] == "datasource" and doc["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) and all("gridPos" in p for p in doc["panels"])
    # drift series exist once a window closed: 200 drifted rows to edge-2 over HTTP close one
    rows = generate_sensor_data(200, seed=7, shift=2.0).X.tolist()
    edge2 = stack.info["agents"][1]
    req = urllib.request.Request(edge2["infer_url"], json.dumps({"inputs": rows}).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10):
        pass
    exposed: dict[str, set[str]] = {}
    for url in [a["metrics_url"] for a in stack.info["agents"]] + [stack.info["hub_metrics_url"]]:
        for name, labels in exposed_names(scrape(url)).items():
            exposed.setdefault(name, set()).update(labels)
    exprs = dashboard_exprs(doc)
    assert len(exprs) >= 8
    used = set()
    for expr in exprs:
        for name, sel in re.findall(r"\b(edgeloop_[a-z_]+)(\{[^}]*\})?", expr):
            used.add(name)
            assert name in exposed, f"{name} (in {expr!r}) is not in any /metrics of the stack"
            for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", sel):
                assert label in exposed[name], f"{name} has no label {label!r} (in {expr!r})"
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            for label in (x.strip() for x in group.split(",")):
                assert label in {"instance", "job", "le"} or any(
                    label in exposed.get(n, set()) for n in re.findall(r"\b(edgeloop_[a-z_]+)", expr)), \
                    f"no metric of {expr!r} carries the label {label!r}"
    assert any(n.startswith("edgeloop_hub_") for n in used) and any(n.startswith("edgeloop_agent_") for n in used)


# --- Node-RED --------------------------------------------------------------------------------------
NODE_RED_TYPES = {"tab", "mqtt-broker", "mqtt in", "mqtt out", "inject", "function", "debug", "change",
                  "ui_chart", "ui_text", "ui_group", "ui_tab", "ui_switch", "comment"}


def load_flow() -> list[dict]:
    return json.loads((INTEGRATIONS / "node-red-flow.json").read_text())


def test_node_red_flow_is_wired_to_the_topic_layout():
    flow = load_flow()
    by_id = {n["id"]: n for n in flow}
    assert len(by_id) == len(flow), "node ids must be unique"
    assert {n["type"] for n in flow} <= NODE_RED_TYPES
    broker = next(n for n in flow if n["type"] == "mqtt-broker")
    assert (broker["broker"], str(broker["port"])) == ("localhost", "1884")
    for n in flow:
        for out in n.get("wires", []):
            assert all(t in by_id for t in out), f"{n['id']} is wired to a node that is not in the flow"
        if n["type"] in ("mqtt in", "mqtt out"):
            assert n["broker"] == broker["id"]
        if n["type"].startswith("ui_") and n["type"] not in ("ui_group", "ui_tab"):
            assert by_id[n["group"]]["type"] == "ui_group"
        if n["type"] not in ("tab", "mqtt-broker", "ui_group", "ui_tab"):
            assert by_id[n["z"]]["type"] == "tab"
    outs = {n["topic"] for n in flow if n["type"] == "mqtt out"}
    ins = {n["topic"] for n in flow if n["type"] == "mqtt in"}
    assert topics.agent_topic("edge-1", topics.INFER) in outs
    assert topics.all_agents(topics.DRIFT) in ins
    assert "nodered/edgeloop/answers" in ins  # the reply_to of the requests it sends
    fn = function_node(flow, "sensor row")
    assert "nodered/edgeloop/answers" in fn["func"]
    # every chart is fed
    fed = {t for n in flow for out in n.get("wires", []) for t in out}
    assert all(n["id"] in fed for n in flow if n["type"] in ("ui_chart", "ui_text", "mqtt out"))


def function_node(flow: list[dict], name: str) -> dict:
    return next(n for n in flow if n["type"] == "function" and n["name"] == name)


JS_HARNESS = """
const job = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const store = {};
const ctx = {get: k => store[k], set: (k, v) => { store[k] = v; }};
const node = {warn: m => { throw new Error('node.warn: ' + m); }, error: m => { throw new Error('node.error: ' + m); }};
let out = new Function('msg', 'context', 'flow', 'global', 'node', job.func)(job.msg, ctx, ctx, ctx, node);
if (job.outputs === 1) out = [out];
process.stdout.write(JSON.stringify(out === undefined ? null : out));
"""


def run_function(node: dict, msg: dict) -> list:
    """A function node's JavaScript on ``msg`` as Node-RED runs it: what it returns, one entry per output."""
    job = {"func": node["func"], "outputs": int(node.get("outputs", 1)), "msg": msg}
    res = subprocess.run(["node", "-e", JS_HARNESS], input=json.dumps(job), capture_output=True, text=True,
                         timeout=20)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node.js to run the flow's function nodes")
def test_node_red_functions_drive_a_real_agent(stack):
    """The flow's own JavaScript, run by node.js: its request is answered by a real agent, and the
    answer and a real drift report become chart points."""
    import paho.mqtt.client as mqtt

    from edgeloop.hub.datasets import load_csv, sample_dataset_path

    flow = load_flow()
    (req,) = run_function(function_node(flow, "sensor row"), {"payload": 0})
    reply_topic, drift_topic = req["payload"]["reply_to"], topics.agent_topic("edge-1", topics.DRIFT)
    got: dict[str, list[bytes]] = {}
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, msg: got.setdefault(msg.topic, []).append(msg.payload)
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", 1884)
    client.subscribe([(reply_topic, 1), (drift_topic, 1)])
    client.loop_start()
    try:
        assert subscribed.wait(10)
        infer = next(n for n in flow if n["type"] == "mqtt out")["topic"]
        client.publish(infer, json.dumps(req["payload"]), qos=1)
        rows = generate_sensor_data(200, seed=9, shift=2.0).X.tolist()  # closes one drift window of edge-1
        client.publish(infer, json.dumps({"id": "d", "inputs": rows}), qos=1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (reply_topic in got and drift_topic in got):
            time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    assert reply_topic in got and drift_topic in got, f"got only {sorted(got)}"
    answer = json.loads(got[reply_topic][0])
    assert answer["type"] == "infer_result" and answer["id"] == req["payload"]["id"]

    points, text = run_function(function_node(flow, "prediction"), {"payload": answer})
    labels = load_csv(sample_dataset_path()).labels
    assert [p["topic"] for p in points] == labels  # the class names the flow plots are the model's
    assert [p["payload"] for p in points] == answer["outputs"]["probabilities"][0]
    assert text["payload"].startswith(answer["outputs"]["label"][0])

    report = json.loads(got[drift_topic][0])
    psi, count = run_function(function_node(flow, "drift PSI"), {"payload": report, "topic": drift_topic})
    assert {p["topic"]: p["payload"] for p in psi} == {f"edge-1 {f['name']}": f["psi"] for f in report["features"]}
    assert count == {"topic": "edge-1", "payload": len(report["drifted_features"])}
