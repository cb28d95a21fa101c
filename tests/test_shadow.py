"""Shadow mode (issue 9 item 4): a candidate version runs beside the live one on the same requests, off
the request path, and the agent reports agreement, confusion or error distribution, latency of each and
errors; ``promote_shadow`` makes it live from the agent's store, without a second transfer.

Pure parts first (the accumulators, the report on the wire, the worker with real onnxruntime sessions in
this process), then real agent processes (tests/agent_isolated.py) on a real Mosquitto driven by a plain
signed-command client (tests/agent_rig.py), then the hub's face (``edgeloop deploy --shadow``,
``edgeloop shadow status|promote|stop``, ``Hub.shadow_summary``) on the session's trained hub.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import uuid

import numpy as np
import pytest

from edgeloop.agent.errors import MessageFormatError, UnsupportedSchemaError
from edgeloop.agent.runtime import ModelRunner
from edgeloop.agent.serving import Serving
from edgeloop.agent.shadow import ShadowError, ShadowInfo, ShadowRunner, ShadowStats
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.bundle import pack_bundle
from edgeloop.agent.wire.messages import Chunk, InferRequest, InferResult, TransferSpec
from edgeloop.agent.wire.shadow import ShadowReport, shadow_args
from tests.agent_rig import CHUNK, AgentRig, plain_client
from tests.conftest import wait_until
from tests.onnx_models import classifier_onnx, expected_probabilities, manifest_for, regression_onnx
from tests.onnx_variants import FLAKY_TABLE, flaky_classifier_onnx, signed_bundle

RNG = np.random.default_rng(7)
ROWS = (RNG.normal(size=(40, 4)) * 2.0).round(3).tolist()  # inputs on which seed 0 and seed 3 disagree sometimes


# --- pure: the accumulators ------------------------------------------------------------------------------
def test_classification_stats_count_agreement_and_confusion():
    s = ShadowStats("classification", ["a", "b", "c"])
    s.add_classes(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    s.add_classes(np.array([1]), np.array([0]))
    s.add_latency(1.0, 2.0)
    s.add_latency(3.0, None)  # the shadow failed on that one
    assert (s.requests, s.rows, s.agree_rows) == (2, 5, 3) and s.agreement == pytest.approx(0.6)
    assert s.confusion is not None and s.confusion.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    assert s.live_latency()["max"] == 3.0 and s.shadow_latency()["p50"] == 2.0
    with pytest.raises(ValueError, match="rows"):
        s.add_classes(np.array([0, 1]), np.array([0]))


def test_regression_stats_give_the_error_distribution_and_agreement_within_tolerance():
    s = ShadowStats("regression", [], tolerance=0.01)
    s.add_values(np.array([1.0, 2.0, 100.0, -4.0]), np.array([1.005, 2.5, 100.5, -4.0]))
    assert s.agree_rows == 3  # 1.005 (|d| <= 0.01), 100.5 (<= 0.01 * 100), -4.0; not 2.5
    e = s.error_distribution()
    assert e["mean"] == pytest.approx((0.005 + 0.5 + 0.5) / 4) and e["max_abs"] == pytest.approx(0.5)
    assert e["rmse"] == pytest.approx(np.sqrt((0.005**2 + 0.25 + 0.25) / 4), rel=1e-5)
    assert s.confusion is None and ShadowStats("regression", []).error_distribution() == {}


# --- pure: the report on the wire --------------------------------------------------------------------------
def _report(**over) -> ShadowReport:
    base = dict(agent_id="a1", model="iris", version="2", bundle_sha256="ab" * 32, live_version="1",
                live_sha256="cd" * 32, task="classification", started_at=1.7e9, at=1.7e9 + 5, seq=3, requests=4,
                rows=5, agree_rows=3, errors=1, dropped=2, last_error="runtime_error: boom", labels=["a", "b"],
                confusion=[[2, 1], [1, 1]], live_latency_ms={"p50": 0.1, "p99": 0.3, "mean": 0.15, "max": 0.4},
                shadow_latency_ms={"p50": 0.2, "p99": 0.5, "mean": 0.25, "max": 0.6})
    return ShadowReport(**{**base, **over})


def test_a_shadow_report_round_trips_and_summarises():
    for rep in (_report(), _report(task="regression", labels=[], confusion=None, error={
            "mean": 0.1, "mean_abs": 0.2, "rmse": 0.3, "max_abs": 0.9, "p50_abs": 0.1, "p90_abs": 0.5, "p99_abs": 0.8}),
            _report(rows=0, agree_rows=0, confusion=[[0, 0], [0, 0]], live_latency_ms={}, final=True)):
        doc = json.loads(rep.encode())
        assert ShadowReport.from_dict(doc) == rep and ShadowReport.decode(rep.encode()) == rep
    assert _report().to_dict()["agreement"] == 0.6 and _report(rows=0, agree_rows=0,
                                                               confusion=[[0, 0], [0, 0]]).agreement is None
    s = _report().summary()
    assert (s["version"], s["live_version"], s["requests"], s["agreement"], s["errors"], s["live_p99_ms"],
            s["shadow_p50_ms"], s["confusion"]) == ("2", "1", 4, 0.6, 1, 0.3, 0.2, [[2, 1], [1, 1]])


@pytest.mark.parametrize("change, message", [
    ({"schema": 2}, "schema 2 is not supported"),
    ({"type": "drift_report"}, "expected a 'shadow_report'"),
    ({"task": "ranking"}, "task 'ranking'"),
    ({"requests": -1}, "'requests' must not be negative"),
    ({"agree_rows": 9}, "agree_rows 9 exceeds rows 5"),
    ({"confusion": [[2, 1], [1]]}, r"confusion\[1\] must be 2 counts"),
    ({"confusion": [[2, 1], [1, 2]]}, "confusion counts 6 rows, not 5"),
    ({"confusion": [[2, 1]]}, "confusion has 1 rows for 2 labels"),
    ({"live_latency_ms": {"p50": 1.0}}, "missing field 'p99'"),
    ({"live_latency_ms": {"p50": 1, "p99": 1, "mean": 1, "max": 1, "p999": 2}}, "unknown fields p999"),
    ({"error": {"mean": "x"}}, "'mean' must be float"),
    ({"tolerance": 1e400}, "finite"),
    ({"at": None}, "missing field 'at'"),
])
def test_a_malformed_shadow_report_is_refused_naming_the_field(change, message):
    doc = {**_report().to_dict(), **change}
    if change.get("at", 0) is None:
        del doc["at"]
    err = UnsupportedSchemaError if "schema" in change else MessageFormatError
    with pytest.raises(err, match=message):
        ShadowReport.from_dict(doc)


def test_shadow_deploy_arguments_are_checked_before_they_are_sent():
    assert shadow_args(2) == {"shadow": True, "shadow_report_seconds": 2.0}
    for bad in (0.0, 1e9, float("nan")):
        with pytest.raises(MessageFormatError, match="shadow_report_seconds"):
            shadow_args(bad)
    with pytest.raises(MessageFormatError, match="shadow_tolerance"):
        shadow_args(tolerance=-1)


# --- the worker, in this process, with real onnxruntime sessions ------------------------------------------------
def _runner(model: bytes, version: str = "1", task: str = "classification") -> ModelRunner:
    return ModelRunner.load(manifest_for(model, version=version, task=task), model, bundle_sha256=version * 64)


def test_the_live_path_never_waits_full_queues_drop_and_count_and_failures_stay_in_the_shadow():
    live = _runner(classifier_onnx())
    reports: list[ShadowReport] = []
    shadow = ShadowRunner(_runner(flaky_classifier_onnx(), "2"), live, ShadowInfo("a1", "2" * 64, 60.0),
                          reports.append, queue_size=3)
    serving = Serving()
    serving.activate(live)
    serving.shadow = shadow.offer
    ok_rows, bad_rows = [[1.0, 2.0, 3.0, 4.0]] * 2, [[float(FLAKY_TABLE + 2), 0.0, 0.0, 0.0]]
    answers = [serving.infer(rows) for rows in (ok_rows, bad_rows, ok_rows, ok_rows, ok_rows)]  # worker not started
    assert [a.version for a in answers] == ["1"] * 5 and shadow.dropped == 2  # 3 queued, 2 dropped
    shadow.start()
    shadow.drain()
    rep = shadow.stop()
    assert (rep.requests, rep.rows, rep.agree_rows, rep.errors, rep.dropped, rep.final) == (2, 4, 4, 1, 2, True)
    assert "runtime_error" in rep.last_error and rep.agreement == 1.0 and reports[-1] == rep
    assert rep.live_latency_ms["p50"] > 0 and rep.shadow_latency_ms["p50"] > 0


def test_a_shadow_must_be_a_version_of_the_live_model():
    live = _runner(classifier_onnx())
    info = ShadowInfo("a1", "9" * 64)
    with pytest.raises(ShadowError, match="no version is live"):
        ShadowRunner(live, None, info, print)
    with pytest.raises(ShadowError, match="task differ"):
        ShadowRunner(_runner(regression_onnx(), "2", "regression"), live, info, print)


def test_a_regression_shadow_reports_the_error_distribution():
    live = _runner(regression_onnx(seed=1), task="regression")
    shadow = ShadowRunner(_runner(regression_onnx(seed=2), "2", "regression"), live, ShadowInfo("a1", "2" * 64),
                          lambda r: None).start()
    serving = Serving()
    serving.activate(live)
    serving.shadow = shadow.offer
    for i in range(0, 40, 10):
        serving.infer(ROWS[i:i + 10])
    shadow.drain()
    rep = shadow.stop()
    assert (rep.task, rep.requests, rep.rows, rep.confusion) == ("regression", 4, 40, None)
    assert rep.error["max_abs"] > 0 and rep.agreement is not None and rep.agreement < 1


# --- real agents --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rig(tmp_path_factory, mosquitto):
    with AgentRig(tmp_path_factory.mktemp("shadow"), mosquitto) as r:
        r.reports: list[ShadowReport] = []  # type: ignore[misc]
        r.chunks = 0  # type: ignore[attr-defined]
        lock = threading.Lock()

        def on_message(client, userdata, msg) -> None:
            with lock:
                if msg.topic.endswith("/" + topics.SHADOW):
                    r.reports.append(ShadowReport.from_dict(json.loads(msg.payload)))  # type: ignore[attr-defined]
                else:
                    r.chunks += 1  # type: ignore[attr-defined]

        watcher = plain_client(mosquitto, on_message, f"{topics.ROOT}/agents/+/{topics.SHADOW}",
                               f"{topics.ROOT}/agents/+/{topics.BUNDLE}")
        yield r
        watcher.loop_stop()
        watcher.disconnect()


@pytest.fixture
def agent(rig):
    """An agent serving iris 1 (softmax(x W + b), seed 0)."""
    aid = f"sh-{uuid.uuid4().hex[:6]}"
    rig.procs[aid] = rig.start(rig.prepare(aid, ("1",)))
    assert rig.online([aid]), rig.procs[aid].log()
    return aid


def send_shadow(rig, aid: str, version: str, data: bytes, every: float = 0.3, **args) -> str:
    """A signed deploy of ``data`` with ``"shadow": true``, and its chunks; the command id."""
    sha = hashlib.sha256(data).hexdigest()
    spec = TransferSpec(uuid.uuid4().hex, sha, len(data), CHUNK, -(-len(data) // CHUNK))
    cid = rig._send(aid, "deploy", {"transfer": spec.to_dict(), "bundle_sha256": sha, "model": "iris",
                                    "version": version, **shadow_args(every), **args})
    for i in range(spec.chunks):
        rig.client.publish(topics.agent_topic(aid, topics.BUNDLE),
                           Chunk(spec.transfer_id, i, data[i * CHUNK:(i + 1) * CHUNK]).encode(), qos=1)
    return cid


def shadow_deploy(rig, aid: str, version: str, bundle: bytes, every: float = 0.3, ok: bool = True,
                  **args) -> dict:
    """:func:`send_shadow`, then its final answer (ok, if ``ok``)."""
    cid = send_shadow(rig, aid, version, bundle, every, **args)

    def final() -> list[dict]:  # the install's result, or the command's refusal
        return [e for e in rig.finals(cid, ("install_result", "command_result"))
                if e["event"] == "install_result" or not e["ok"]]

    assert wait_until(final, 30), rig.procs[aid].log()[-3000:]
    ev = final()[0]
    if ok:
        assert ev["ok"] and ev["details"]["shadow"] is True, ev
    return ev


def infer(rig, aid: str, rows) -> InferResult:
    rid = uuid.uuid4().hex
    req = InferRequest(id=rid, inputs=rows, reply_to="test/crash/replies")  # the rig decodes its replies
    rig.client.publish(topics.agent_topic(aid, topics.INFER), req.encode(), qos=1)
    assert wait_until(lambda: rid in rig.replies, 20), f"{aid} did not answer"
    reply = rig.replies[rid]
    assert isinstance(reply, InferResult), reply
    return reply


def report(rig, aid: str, version: str, requests: int, final: bool = False, after: float = 0.0) -> ShadowReport:
    """The newest report of ``version``'s shadow on ``aid`` with at least ``requests`` compared (a final one;
    one of a run started after ``after``), waited for."""
    def found() -> ShadowReport | None:
        mine = [r for r in list(rig.reports) if r.agent_id == aid and r.version == version
                and r.requests >= requests and (r.final or not final) and r.started_at > after]
        return mine[-1] if mine else None
    assert wait_until(lambda: found() is not None, 20), [r.summary() for r in rig.reports if r.agent_id == aid]
    rep = found()
    assert rep is not None
    return rep


def other_bundle(rig, version: str, seed: int) -> bytes:
    """iris ``version``: softmax(x W' + b') with other weights (no smoke test: its answers differ)."""
    model = classifier_onnx(seed=seed)
    manifest = dataclasses.replace(manifest_for(model, version=version), key_id=rig.key.keyid)
    return pack_bundle(manifest, {"model.onnx": model}, rig.key)


@pytest.mark.broker
def test_an_identical_candidate_agrees_100_percent_and_the_live_version_answers(rig, agent):
    ev = shadow_deploy(rig, agent, "2", rig.bundles["2"])  # the same weights as 1, another version
    assert ev["details"]["live_version"] == "1"
    answers = [infer(rig, agent, ROWS[i:i + 8]) for i in range(0, 40, 8)]
    assert {a.version for a in answers} == {"1"}  # the shadow never answers
    rep = report(rig, agent, "2", requests=5)
    assert (rep.live_version, rep.rows, rep.agreement, rep.errors) == ("1", 40, 1.0, 0)
    assert rep.confusion is not None and sum(np.diag(rep.confusion)) == 40
    assert rep.live_latency_ms["p99"] > 0 and rep.shadow_latency_ms["p99"] > 0
    rig.procs[agent].stop()  # the shadow survives a restart: it runs (and reports) again
    rig.procs[agent] = rig.start(rig.state_root / f"{agent}.toml")
    assert rig.online([agent]), rig.procs[agent].log()
    assert infer(rig, agent, ROWS[:2]).version == "1"
    again = report(rig, agent, "2", requests=1, after=rep.started_at)
    assert (again.rows, again.agreement) == (2, 1.0)
    cid = rig.deploy(agent, "2")  # a plain deploy of the shadow's bundle (in the store): it goes live, the shadow ends
    assert wait_until(lambda: rig.finals(cid), 30) and rig.finals(cid)[0]["ok"], rig.finals(cid)
    assert report(rig, agent, "2", requests=1, final=True, after=rep.started_at).final
    assert infer(rig, agent, ROWS[:1]).version == "2"


@pytest.mark.broker
def test_a_different_candidate_reports_the_measured_agreement_and_confusion(rig, agent):
    shadow_deploy(rig, agent, "3", other_bundle(rig, "3", seed=3))
    for i in range(0, 40, 10):
        assert infer(rig, agent, ROWS[i:i + 10]).version == "1"
    rep = report(rig, agent, "3", requests=4)
    live = expected_probabilities(np.asarray(ROWS)).argmax(axis=1)
    cand = expected_probabilities(np.asarray(ROWS), seed=3).argmax(axis=1)
    want = np.zeros((3, 3), dtype=int)
    np.add.at(want, (live, cand), 1)
    assert 0 < rep.agreement < 1 and rep.agreement == pytest.approx(float(np.mean(live == cand)))  # type: ignore
    assert rep.confusion == want.tolist() and rep.labels == ["setosa", "versicolor", "virginica"]


@pytest.mark.broker
def test_promote_swaps_from_the_store_without_a_second_transfer(rig, agent):
    live = shadow_deploy(rig, agent, "1", rig.bundles["1"], ok=False)  # the live bundle itself: nothing to compare
    assert (live["ok"], live["code"]) == (False, "shadow_refused") and "is the live version" in live["message"]
    bad = shadow_deploy(rig, agent, "3", other_bundle(rig, "3", seed=3), ok=False, shadow_report_seconds=0.0)
    assert (bad["ok"], bad["event"], bad["code"]) == (False, "command_result", "bad_message"), bad
    shadow_deploy(rig, agent, "3", other_bundle(rig, "3", seed=3))
    infer(rig, agent, ROWS[:4])
    chunks_before = rig.chunks
    cid = rig._send(agent, "promote_shadow", {"bundle_sha256": hashlib.sha256(other_bundle(rig, "3", 3)).hexdigest(),
                                              "model": "iris", "version": "3"})
    assert wait_until(lambda: rig.finals(cid), 30), rig.procs[agent].log()[-3000:]
    ev = rig.finals(cid)[0]
    assert (ev["ok"], ev["event"]) == (True, "install_result"), ev
    assert infer(rig, agent, ROWS[:1]).version == "3"
    assert rig.chunks == chunks_before  # no chunk went to the agent for the promotion
    assert report(rig, agent, "3", requests=1, final=True).final
    again = rig._send(agent, "promote_shadow", {"bundle_sha256": rig.sha["2"]})  # nothing runs as shadow now
    assert wait_until(lambda: rig.finals(again, ("command_result",)), 20)
    refused = rig.finals(again, ("command_result",))[0]
    assert (refused["ok"], refused["code"]) == (False, "no_shadow"), refused


@pytest.mark.broker
@pytest.mark.reliability("shadow mode", "the shadow version fails at run time on some inputs (onnxruntime error)",
                         "every live answer goes out from the live version; the failures are counted in the report")
def test_a_shadow_failing_on_an_input_never_breaks_the_live_answer(rig, agent):
    shadow_deploy(rig, agent, "4", signed_bundle(rig.key, flaky_classifier_onnx(), version="4"))
    bad = [[float(FLAKY_TABLE + 5), 1.0, 1.0, 1.0]]
    answers = [infer(rig, agent, rows) for rows in (bad, ROWS[:3], bad, ROWS[3:6])]
    assert [a.version for a in answers] == ["1"] * 4
    np.testing.assert_allclose(answers[0].outputs["probabilities"], expected_probabilities(np.asarray(bad)), atol=1e-5)
    rep = report(rig, agent, "4", requests=2)
    assert wait_until(lambda: report(rig, agent, "4", 2).errors == 2, 10)
    rep = report(rig, agent, "4", requests=2)
    assert (rep.errors, rep.rows, rep.agreement) == (2, 6, 1.0) and "runtime_error" in rep.last_error
    stop = rig._send(agent, "stop_shadow", {})
    assert wait_until(lambda: rig.finals(stop, ("command_result",)), 20)
    done = rig.finals(stop, ("command_result",))[0]
    assert done["ok"] and done["details"]["stopped"] and done["details"]["report"]["errors"] == 2
    assert report(rig, agent, "4", requests=2, final=True).final
    assert infer(rig, agent, bad).version == "1"


@pytest.mark.broker
@pytest.mark.reliability("crash consistency", "SIGKILL during a shadow install: bundle verified, bundle renamed "
                         "into the store (a real agent each)", "after restart the shadow install is finished and "
                         "answered ok, the live version serves, the shadow reports")
def test_a_crash_during_a_shadow_install_is_finished_after_the_restart(rig, faults_tried):
    steps = {f"shc-{uuid.uuid4().hex[:6]}": step for step in ("bundle_verified", "bundle_in_store")}
    faults_tried(len(steps))
    configs = {aid: rig.prepare(aid, ("1",)) for aid in steps}
    for aid, step in steps.items():
        rig.procs[aid] = rig.start(configs[aid], step)
    assert rig.online(steps), {a: rig.procs[a].log() for a in steps}
    cids = {aid: send_shadow(rig, aid, "2", rig.bundles["2"]) for aid in steps}
    for aid, step in steps.items():
        p = rig.procs[aid]
        assert p.proc is not None and p.proc.wait(timeout=60) == -9, f"{aid} did not crash at {step}"
        p.proc = None
        p._log.close()
        rig.procs[aid] = rig.start(configs[aid])
    assert rig.online(steps), {a: rig.procs[a].log() for a in steps}
    for aid, step in steps.items():
        assert wait_until(lambda a=aid: rig.finals(cids[a]), 30), (step, rig.procs[aid].log()[-3000:])
        ev = rig.finals(cids[aid])[0]
        assert (ev["ok"], ev["details"].get("shadow")) == (True, True), (step, ev)
        assert infer(rig, aid, ROWS[:3]).version == "1"
        assert report(rig, aid, "2", requests=1).agreement == 1.0


# --- the hub's face ---------------------------------------------------------------------------------------
@pytest.mark.broker
def test_the_hub_deploys_a_shadow_reads_its_summary_and_promotes_it(trained, mosquitto, online_agent, fleet, capsys):
    """``edgeloop deploy --shadow``, ``edgeloop shadow status|promote``: the reports reach the registry and
    ``Hub.shadow_summary`` (what a rollout's min_shadow_agreement gate reads)."""
    from edgeloop.hub.cli import main as hub_cli

    aid, _ = online_agent()
    hub, home, url = trained.hub, str(trained.hub.home.root), mosquitto.address.url
    assert hub.deploy(fleet, [aid], trained.v1.id, override_reason="tests")[0]["ok"]
    assert hub.shadow_summary(aid) is None
    assert hub_cli(["deploy", trained.v2.id, "--agent", aid, "--broker", url, "--home", home, "--override-gate",
                    "tests", "--shadow", "--shadow-report-seconds", "0.3"]) == 0, capsys.readouterr().err
    rows = np.random.default_rng(3).normal(size=(30, 6)).round(3).tolist()
    for i in range(0, 30, 10):
        assert fleet.infer(aid, rows[i:i + 10]).version == trained.v1.version["version"]
    assert wait_until(lambda: (hub.shadow_summary(aid) or {}).get("requests", 0) >= 3, 20)
    s = hub.shadow_summary(aid)
    assert s is not None and (s["version"], s["live_version"], s["task"], s["rows"]) == (
        trained.v2.version["version"], trained.v1.version["version"], "classification", 30)
    assert 0 <= s["agreement"] <= 1 and s["live_p99_ms"] > 0 and s["shadow_p99_ms"] > 0 and s["running"]
    assert hub.shadow_summary(aid, "sensor-mlp", version="999") is None and hub.shadow_summary(aid, "other") is None
    capsys.readouterr()
    assert hub_cli(["shadow", "status", "--agent", aid, "--home", home, "--detail"]) == 0
    out = capsys.readouterr().out
    assert f"{s['agreement']:.2%}" in out and "live \\ shadow" in out
    assert hub_cli(["shadow", "promote", "--agent", aid, "--broker", url, "--home", home, "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert (result["ok"], result["version"]) == (True, trained.v2.id), result
    assert wait_until(lambda: fleet.agents()[aid].active.version == trained.v2.version["version"], 10)
    assert wait_until(lambda: (hub.shadow_summary(aid) or {}).get("final") is True, 10)
    assert hub.registry.get_deployment(result_command(hub, aid))["status"] == "installed"
    [stopped] = hub.stop_shadow(fleet, [aid])
    assert (stopped["ok"], stopped["stopped"]) == (True, False)


def result_command(hub, aid: str) -> str:
    """The command id of the newest deployment to ``aid`` (the promotion)."""
    return hub.registry.list_deployments(aid)[0]["command_id"]
