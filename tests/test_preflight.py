"""Pre-flight on the device (agent/preflight.py, agent/preflight_install.py, agent/wire/preflight.py): the pure
decision over a table of cases, the wire round trips, real measurements in a child process with real
onnxruntime, and real agent processes deployed to by a real hub over a real Mosquitto: each device's pick and
figures reach the registry, the device's pick wins over the workstation's and is served, and a model that
cannot load or needs more memory than the deploy allows is refused before activation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.errors import ConfigError, MessageFormatError
from edgeloop.agent.preflight import PreflightSettings, decide, measure
from edgeloop.agent.preflight_child import unsupported_ops
from edgeloop.agent.preflight_install import served_variant, wanted
from edgeloop.agent.wire.bundle import VerifiedBundle, file_entry, pack_bundle
from edgeloop.agent.wire.envelope import SigningKey
from edgeloop.agent.wire.manifest import Manifest, ModelVariant, Variants
from edgeloop.agent.wire.messages import Event, InferResult
from edgeloop.agent.wire.preflight import PreflightReport, VariantFigures, memory_limit_arg
from tests.onnx_models import (
    IR_VERSION,
    OPSET,
    _model,
    classifier_onnx,
    classifier_smoke,
    classifier_weights,
    expected_probabilities,
    manifest_for,
)

TINY = PreflightSettings(runs=5, seconds=0.05)  # the measurement budget of every agent in these tests
ROW = [5.1, 3.5, 1.4, 0.2]
SMOKE_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


# --- models ----------------------------------------------------------------------------------------
def _classifier_with(seed: int, extra_nodes: list, extra_inits: list, tail: str) -> bytes:
    """softmax(x W + b + 0 * mean(tail)) where ``extra_nodes`` compute ``tail`` from the input."""
    W, b = classifier_weights(4, 3, seed)
    nodes = [helper.make_node("MatMul", ["features", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"]),
             *extra_nodes,
             helper.make_node("ReduceMean", [tail], ["tm"], keepdims=1),
             helper.make_node("Mul", ["tm", "zero"], ["nothing"]),
             helper.make_node("Add", ["logits", "nothing"], ["logits_t"]),
             helper.make_node("Softmax", ["logits_t"], ["probabilities"], axis=-1)]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(np.zeros((1, 1), dtype=np.float32), "zero"), *extra_inits]
    return _model(nodes, inits, [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4])],
                  [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])])


def slow_onnx(seed: int, size: int = 256) -> bytes:
    """The seed's classifier after a size x size matrix product per batch: ~0.5 ms at batch 1, not ~0.02."""
    nodes = [helper.make_node("ReduceMean", ["features"], ["m"], keepdims=1),
             helper.make_node("Expand", ["m", "square"], ["h0"]),
             helper.make_node("MatMul", ["h0", "h0"], ["p0"]), helper.make_node("Tanh", ["p0"], ["h1"])]
    return _classifier_with(seed, nodes, [numpy_helper.from_array(np.array([size, size], np.int64), "square")], "h1")


def hog_onnx(side: int = 2048) -> bytes:
    """The seed-0 classifier that fills a side x side float tensor per batch (16 MiB at 2048): small on disk,
    big in memory."""
    nodes = [helper.make_node("ReduceMean", ["features"], ["m"], keepdims=1),
             helper.make_node("Expand", ["m", "square"], ["big"])]
    return _classifier_with(0, nodes, [numpy_helper.from_array(np.array([side, side], np.int64), "square")], "big")


def unsupported_onnx() -> bytes:
    """A classifier with an operator no onnxruntime has (not checked by onnx: it would refuse it too)."""
    W, b = classifier_weights(4, 3, 0)
    nodes = [helper.make_node("MatMul", ["features", "W"], ["xw"]), helper.make_node("NoSuchOp", ["xw"], ["odd"]),
             helper.make_node("Add", ["odd", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
                              initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model.SerializeToString()


def smoke(seed: int) -> dict:
    return {"probabilities": expected_probabilities(np.asarray(SMOKE_ROWS), seed=seed).tolist()}


def variants_bundle(key: SigningKey, version: str, *, hub_pick: str, fp32: bytes, int8: bytes, fp32_seed: int,
                    int8_seed: int, int8_drop: float, budget: float = 1.0) -> bytes:
    """A bundle carrying both models, the hub's pick as the entrypoint ``model.onnx``, signed with ``key``."""
    other = "int8" if hub_pick == "fp32" else "fp32"
    data = {"fp32": fp32, "int8": int8}
    seeds = {"fp32": fp32_seed, "int8": int8_seed}
    paths = {hub_pick: "model.onnx", other: f"model.{other}.onnx"}
    files = {paths[n]: data[n] for n in ("fp32", "int8")}
    vs = Variants("accuracy", budget, hub_pick, [
        ModelVariant("fp32", paths["fp32"], 0.95, 0.0, smoke(fp32_seed), 1e-4),
        ModelVariant("int8", paths["int8"], 0.95 - int8_drop / 100, int8_drop, smoke(int8_seed), 1e-4)])
    m = manifest_for(files["model.onnx"], version=version, smoke=classifier_smoke(SMOKE_ROWS))
    m = dataclasses.replace(m, key_id=key.keyid, files=[file_entry(p, b) for p, b in files.items()], variants=vs,
                            smoke_test=dataclasses.replace(m.smoke_test, expected=smoke(seeds[hub_pick])))
    return pack_bundle(m, files, key)


def single_bundle(key: SigningKey, version: str, model: bytes) -> bytes:
    m = dataclasses.replace(manifest_for(model, version=version, smoke=classifier_smoke()), key_id=key.keyid)
    return pack_bundle(m, {"model.onnx": model}, key)


# --- the decision (pure) ------------------------------------------------------------------------------
def fig(name, p50=None, mb=5.0, loaded=True, error=None, smoke_ok=True):
    return VariantFigures(name, loaded, error=error, runs=5 if loaded else 0, p50_ms=p50, p99_ms=p50, model_mb=mb,
                          smoke_ok=smoke_ok if loaded else None)


def two(hub_pick="fp32", drop=0.5, budget=1.0):
    return Variants("accuracy", budget, hub_pick, [ModelVariant("fp32", "model.onnx"),
                                                  ModelVariant("int8", "model.int8.onnx", drop_points=drop)])


DECISIONS = [  # (figures, variants, hub pick, memory limit) -> (pick, code)
    ([fig("fp32", 0.05), fig("int8", 0.02)], two("fp32"), "fp32", None, "int8", "ok"),  # faster here, in budget
    ([fig("fp32", 0.02), fig("int8", 0.05)], two("int8"), "int8", None, "fp32", "ok"),  # the hub's int8 is slower here
    ([fig("fp32", 0.05), fig("int8", 0.02)], two(drop=1.5), "fp32", None, "fp32", "ok"),  # faster but over budget
    ([fig("fp32", 0.05), fig("int8", 0.05)], two(), "fp32", None, "fp32", "ok"),  # a tie: the hub's pick
    ([fig("fp32", 0.050), fig("int8", 0.046)], two(), "fp32", None, "fp32", "ok"),  # 8 % faster: noise, not a win
    ([fig("fp32", 0.050), fig("int8", 0.046)], two("int8"), "int8", None, "int8", "ok"),
    ([fig("fp32", 0.03, mb=90), fig("int8", 0.03)], two(), "fp32", 64, "int8", "ok"),  # tie, hub's pick out
    ([fig("fp32", 0.05), fig("int8", loaded=False, error="x")], two(), "fp32", None, "fp32", "ok"),
    ([fig("fp32", 0.02, mb=90), fig("int8", 0.05, mb=20)], two(), "fp32", 64, "int8", "ok"),  # only int8 fits
    ([fig("fp32", 0.02, mb=90), fig("int8", 0.05, mb=80)], two(), "fp32", 64, None, "memory_limit_exceeded"),
    ([fig("fp32", loaded=False, error="x"), fig("int8", 0.02)], two(drop=3), "fp32", None, None, "model_load_failed"),
    ([fig("fp32", loaded=False, error="y")], None, "fp32", None, None, "model_load_failed"),
    ([fig("int8", 0.03, mb=10)], None, "int8", 64, "int8", "ok"),  # one model within the limit
    ([fig("fp32", 0.05), fig("int8", 0.02, smoke_ok=False, error="differs")], two(), "fp32", None, "fp32", "ok"),
    # the hub's pick fails its smoke test here: the bundle does not do what it promised, even if int8 passes
    ([fig("fp32", 0.05, smoke_ok=False, error="differs"), fig("int8", 0.02)], two(), "fp32", None, None,
     "smoke_test_failed"),
]


@pytest.mark.parametrize("figures, variants, hub_pick, limit, pick, code", DECISIONS)
def test_decide_picks_the_fastest_model_within_budget_and_memory(figures, variants, hub_pick, limit, pick, code):
    d = decide(figures, variants, hub_pick, limit)
    assert (d.pick, d.code) == (pick, code), d.reason
    if pick is not None and pick != hub_pick:
        assert f"the hub picked {hub_pick}" in d.reason
    if pick is None:
        assert "previous model keeps serving" in d.reason


def test_unsupported_ops_are_read_from_onnxruntime_messages():
    assert unsupported_ops("[ONNXRuntimeError] : 1 : FAIL : Load model from x failed:Fatal error: "
                           "ai.onnx:NoSuchOp(-1) is not a registered function/op") == []  # no op named the known way
    assert unsupported_ops("Could not find an implementation for Foo(11) node with name 'n'") == ["Foo"]
    assert unsupported_ops("No Op registered for Bar with domain_version of 17") == ["Bar"]


# --- wire and config -------------------------------------------------------------------------------------
def test_preflight_report_and_manifest_variants_round_trip():
    r = PreflightReport("iris", "2", "a" * 64, "fp32", "int8", "ok", "why", [fig("fp32", 0.02), fig("int8", 0.5)],
                        1.7e9, memory_limit_mb=64, budget_points=1.0, metric="accuracy", drops={"int8": 0.5})
    assert PreflightReport.from_dict(r.to_dict()) == r and r.disagrees
    refused = dataclasses.replace(r, pick=None, code="memory_limit_exceeded")
    assert PreflightReport.from_dict(refused.to_dict()) == refused and not refused.ok
    with pytest.raises(MessageFormatError):
        PreflightReport.from_dict({**r.to_dict(), "code": "memory_limit_exceeded"})  # a pick is code ok
    key = SigningKey.generate()
    data = variants_bundle(key, "2", hub_pick="int8", fp32=classifier_onnx(), int8=classifier_onnx(seed=1),
                           fp32_seed=0, int8_seed=1, int8_drop=0.5)
    from edgeloop.agent.wire.bundle import read_container
    m = Manifest.from_bytes(read_container(data).manifest)
    assert Manifest.from_bytes(m.to_bytes()) == m and m.variants is not None and m.variants.hub_pick == "int8"
    older = {k: v for k, v in m.to_dict().items() if k != "variants"}  # a manifest of a hub before variants
    assert Manifest.from_dict(older).variants is None
    for bad in ({"hub_pick": "fp32"},  # the hub's pick must be the entrypoint
                {"models": [{**m.variants.models[0].to_dict(), "path": "elsewhere.onnx"}]}):
        with pytest.raises(MessageFormatError):
            Manifest.from_dict({**m.to_dict(), "variants": {**m.variants.to_dict(), **bad}})
    assert memory_limit_arg({"memory_limit_mb": 64}) == 64 and memory_limit_arg({}) is None
    with pytest.raises(MessageFormatError):
        memory_limit_arg({"memory_limit_mb": 0})


def test_preflight_settings_in_the_agent_config(tmp_path):
    cfg = AgentConfig("a", tmp_path, [], preflight=TINY)
    import tomllib
    assert AgentConfig.from_dict(tomllib.loads(cfg.to_toml())).preflight == TINY
    for bad in ({"runs": 0}, {"seconds": 0}, {"enabled": "yes"}, {"speed": 1}):
        with pytest.raises(ConfigError):
            PreflightSettings.from_table(bad)
    m = manifest_for(classifier_onnx())
    assert not wanted(PreflightSettings(), m, None) and wanted(PreflightSettings(), m, 64)
    assert wanted(PreflightSettings(always=True), m, None) and not wanted(PreflightSettings(enabled=False), m, 64)


def test_served_variant_swaps_entrypoint_and_smoke_test():
    key = SigningKey.generate()
    from edgeloop.agent.wire.bundle import verify_bundle
    from tests.factories import trusted
    vb: VerifiedBundle = verify_bundle(variants_bundle(key, "2", hub_pick="int8", fp32=classifier_onnx(),
                                                       int8=classifier_onnx(seed=1), fp32_seed=0, int8_seed=1,
                                                       int8_drop=0.5), trusted(key))
    m, data = served_variant(vb, "fp32")
    assert m.entrypoint == "model.fp32.onnx" and data == classifier_onnx() and m.smoke_test.expected == smoke(0)
    assert served_variant(vb, "int8") == (vb.manifest, vb.model_bytes) == served_variant(vb, None)


# --- real measurements (child process, real onnxruntime) ----------------------------------------------------
def test_measure_reports_latency_memory_and_unsupported_operators():
    figs = measure([("fp32", classifier_onnx()), ("int8", slow_onnx(0)), ("hog", hog_onnx()),
                    ("bad", unsupported_onnx())], 4, runs=5, seconds=0.05)
    by = {f.name: f for f in figs}
    assert [f.name for f in figs] == ["fp32", "int8", "hog", "bad"]
    assert all(by[n].loaded and 1 <= by[n].runs <= 5 and by[n].p99_ms >= by[n].p50_ms > 0 for n in ("fp32", "int8"))
    assert by["hog"].loaded and by["hog"].runs >= 1  # at least one run, even past the 0.05 s budget
    assert by["int8"].p50_ms > 3 * by["fp32"].p50_ms  # a 256 x 256 product per run against a 4 x 3 one
    assert by["hog"].model_mb > 16 > 4 > by["fp32"].model_mb  # a 16 MiB tensor per run (and its reduction)
    assert not by["bad"].loaded and by["bad"].unsupported_ops == ["NoSuchOp"] and "NoSuchOp" in by["bad"].error


@pytest.mark.reliability("pre-flight", "the measuring process outlasts its time limit (limits.install_timeout_seconds)",
                         "killed; that model is reported not loadable, the agent is unharmed")
def test_a_measurement_past_its_time_limit_is_a_model_that_does_not_load():
    [f] = measure([("fp32", classifier_onnx())], 4, runs=5, seconds=0.05, timeout=0.01)
    assert not f.loaded and "took over 0.01 s" in f.error
    assert decide([f], None, "fp32").code == "model_load_failed"


DYING_CHILD = """
import os, signal, sys
from edgeloop.agent import preflight_child as child
load_one = child.load_one
def dying(name, *args, **kw):
    if name == "crash":  # what a model that crashes onnxruntime does to the process loading it
        os.kill(os.getpid(), signal.SIGSEGV)
    return load_one(name, *args, **kw)
child.load_one = dying
sys.exit(child.main())
"""


@pytest.mark.reliability("pre-flight", "the measuring process dies (SIGSEGV) while loading one of three models",
                         "that model is refused (not loadable); the others are measured again in a fresh process")
def test_a_model_that_kills_the_measuring_process_is_refused_alone(tmp_path, monkeypatch):
    (tmp_path / "pf_dying_child.py").write_text(DYING_CHILD)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{__import__('os').environ.get('PYTHONPATH', '')}")
    monkeypatch.setattr("edgeloop.agent.preflight.CHILD_MODULE", "pf_dying_child")
    figs = measure([("fp32", classifier_onnx()), ("crash", classifier_onnx()), ("int8", classifier_onnx(seed=1))],
                   4, runs=3, seconds=0.02)
    by = {f.name: f for f in figs}
    assert [f.name for f in figs] == ["fp32", "crash", "int8"]
    assert not by["crash"].loaded and "died" in by["crash"].error
    assert all(by[n].loaded and by[n].runs == 3 and by[n].p50_ms > 0 for n in ("fp32", "int8"))
    assert decide([by["crash"]], None, "crash").code == "model_load_failed"  # alone in its bundle: refused


def test_the_measuring_process_uses_the_serving_session_options():
    from edgeloop.agent import preflight_child, runtime
    a, b = preflight_child.session_options(), runtime.session_options(1)
    for attr in ("intra_op_num_threads", "inter_op_num_threads", "execution_mode", "graph_optimization_level",
                 "log_severity_level"):
        assert getattr(a, attr) == getattr(b, attr), attr
    for k in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert a.get_session_config_entry(k) == b.get_session_config_entry(k)


# --- real agents, a real hub, real Mosquitto -----------------------------------------------------------------
@pytest.mark.broker
def test_each_devices_pick_and_figures_reach_the_registry(trained, fleet, mosquitto, agent_process, tmp_path,
                                                          capsys):
    """Hub.deploy of a version the hub built with fp32 and int8, with a memory limit, to two agents."""
    from tests.conftest import write_agent_config
    hub = trained.hub
    assert trained.b1.manifest.variants is not None  # the hub's bundle carries both models now
    agents = ["pf-a", "pf-b"]
    procs = [agent_process(write_agent_config(tmp_path, a, mosquitto, trained.public_pem, preflight=TINY))
             for a in agents]  # started together
    assert fleet.wait_online(agents, 30), [p.log() for p in procs]
    results = hub.deploy(fleet, agents, trained.v1.id, timeout=60, memory_limit_mb=512)
    assert all(r["ok"] for r in results), results
    from tests.conftest import wait_until
    assert wait_until(lambda: len(hub.preflight_results(trained.v1.id)) >= 2, 10)
    rows = {r["agent_id"]: r for r in hub.preflight_results(trained.v1.id) if r["agent_id"] in agents}
    assert set(rows) == set(agents)
    for r in rows.values():
        assert r["ok"] and r["pick"] in ("fp32", "int8") and r["hub_pick"] == trained.v1.version["chosen"]
        assert r["memory_limit_mb"] == 512 and r["report"]["budget_points"] == 1.0
        figs = {f["name"]: f for f in r["report"]["figures"]}
        assert set(figs) == {"fp32", "int8"}
        assert all(f["loaded"] and f["smoke_ok"] and f["p50_ms"] > 0 and f["p99_ms"] >= f["p50_ms"]
                   and f["model_mb"] < 512 for f in figs.values())
    import json

    from edgeloop.hub.cli.parser import main
    assert main(["preflight", trained.v1.id, "--home", str(hub.home.root), "--json"]) == 0
    shown = {r["agent_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert {a: shown[a]["pick"] for a in agents} == {a: rows[a]["pick"] for a in agents}
    assert main(["preflight", "--agent", agents[0], "--detail", "--home", str(hub.home.root)]) == 0
    text = capsys.readouterr().out
    assert agents[0] in text and "p50 ms" in text and "int8" in text and agents[1] not in text


@pytest.fixture(scope="module")
def one_agent(trained, mosquitto, tmp_path_factory):
    """One agent for the scenarios below, serving iris 1 first; each scenario keeps what the one before left."""
    from tests.conftest import AgentProcess, write_agent_config
    tmp = tmp_path_factory.mktemp("preflight")
    cfg = write_agent_config(tmp, "pf-1", mosquitto, trained.public_pem, preflight=TINY)
    procs = [AgentProcess(cfg, tmp / "pf-1.log").start()]  # a test may restart it
    with trained.hub.fleet(mosquitto.address.url) as f:
        assert f.wait_online(["pf-1"], 30), procs[0].log()
        # something serves from the start, so that each scenario can run alone (scripts/reliability runs some)
        out = f.deploy("pf-1", single_bundle(trained.hub.key, "1", classifier_onnx()), model="iris", version="1",
                       timeout=60)
        assert out.ok, (out.code, out.message, procs[0].log()[-2000:])
        yield f, procs
    procs[-1].stop()


def _answers(fleet, aid: str) -> bool:
    from edgeloop.hub.errors import FleetError
    try:
        return isinstance(fleet.infer(aid, [ROW], timeout=2), InferResult)
    except FleetError:  # not back yet
        return False


def _served(fleet, aid: str) -> InferResult:
    res = fleet.infer(aid, [ROW], timeout=10)
    assert isinstance(res, InferResult), res
    return res


@pytest.mark.broker
def test_the_devices_pick_wins_when_it_disagrees_with_the_hub(trained, one_agent):
    """The hub picked int8 (the entrypoint); here int8 is ~25x slower than fp32: the device serves fp32, also
    after a restart."""
    fleet, procs = one_agent
    key = trained.hub.key
    bundle = variants_bundle(key, "2", hub_pick="int8", fp32=classifier_onnx(), int8=slow_onnx(1),
                             fp32_seed=0, int8_seed=1, int8_drop=0.4)
    out = fleet.deploy("pf-1", bundle, model="iris", version="2", timeout=60)
    assert out.ok, (out.code, out.message, procs[-1].log()[-2000:])
    res = _served(fleet, "pf-1")
    probs = np.asarray(res.outputs["probabilities"])
    assert res.version == "2" and np.allclose(probs, expected_probabilities(np.asarray([ROW]), seed=0), atol=1e-5)
    assert not np.allclose(probs, expected_probabilities(np.asarray([ROW]), seed=1), atol=1e-3)  # not the hub's pick
    row = trained.hub.preflight_results(agent="pf-1")[0]
    figs = {f["name"]: f for f in row["report"]["figures"]}
    assert row["pick"] == "fp32" and row["hub_pick"] == "int8" and figs["int8"]["p50_ms"] > figs["fp32"]["p50_ms"]
    assert "the hub picked int8" in row["reason"]
    assert all(f["smoke_ok"] for f in figs.values())  # each passed its own smoke test in the measuring process
    # the pick is kept (<state_dir>/preflight.json): after a restart the agent serves fp32 again, not the entrypoint
    assert procs[-1].stop() == 0
    procs.append(procs[-1].__class__(procs[-1].config, procs[-1].log_path).start())
    from tests.conftest import wait_until
    assert wait_until(lambda: _answers(fleet, "pf-1"), 30), procs[-1].log()
    res = _served(fleet, "pf-1")
    assert res.version == "2" and np.allclose(res.outputs["probabilities"],
                                              expected_probabilities(np.asarray([ROW]), seed=0), atol=1e-5)


@pytest.mark.broker
@pytest.mark.reliability("pre-flight", "a model that fills a 16 MiB tensor per run, deployed with "
                         "memory_limit_mb 12 (real agent, real onnxruntime)",
                         "refused before activation (memory_limit_exceeded, figures in the registry); the "
                         "previous version keeps serving")
def test_a_model_over_the_memory_limit_is_refused_before_activation(trained, one_agent):
    fleet, _ = one_agent
    before = _served(fleet, "pf-1").version
    out = fleet.deploy_many(["pf-1"], single_bundle(trained.hub.key, "3", hog_onnx()), model="iris", version="3",
                            timeout=60, memory_limit_mb=12)["pf-1"]
    assert not out.ok and out.code == "memory_limit_exceeded", (out.code, out.message)
    assert "Nothing was activated" in out.message and "memory_limit_mb" in out.message
    assert _served(fleet, "pf-1").version == before  # the previous version keeps serving
    row = trained.hub.preflight_results(agent="pf-1")[0]
    assert row["version"] == "3" and not row["ok"] and row["code"] == "memory_limit_exceeded"
    assert row["report"]["figures"][0]["model_mb"] > 12 and row["memory_limit_mb"] == 12


@pytest.mark.broker
@pytest.mark.reliability("pre-flight", "a model with an operator onnxruntime has no kernel for, deployed with a "
                         "memory limit (so the pre-flight measures it; real agent)",
                         "refused before activation (model_load_failed, the operator named in the registry); "
                         "the previous version keeps serving")
def test_a_model_that_cannot_load_is_refused_with_the_operator_named(trained, one_agent):
    fleet, _ = one_agent
    before = _served(fleet, "pf-1").version
    out = fleet.deploy_many(["pf-1"], single_bundle(trained.hub.key, "4", unsupported_onnx()), model="iris",
                            version="4", timeout=60, memory_limit_mb=256)["pf-1"]
    assert not out.ok and out.code == "model_load_failed", (out.code, out.message)
    assert _served(fleet, "pf-1").version == before
    row = trained.hub.preflight_results(agent="pf-1")[0]
    assert row["version"] == "4" and row["code"] == "model_load_failed"
    assert row["report"]["figures"][0]["unsupported_ops"] == ["NoSuchOp"]
    assert "NoSuchOp" in row["report"]["figures"][0]["error"]


def test_a_preflight_event_that_is_not_a_report_is_refused_by_the_intake(trained):
    ev = Event("preflight", "pf-x", True, 1.7e9, details={"format": 1, "model": "iris"})
    with pytest.raises(MessageFormatError):
        trained.hub.registry.add_preflight_from_event(ev)
    assert trained.hub.registry.add_preflight_from_event(dataclasses.replace(ev, event="confirmed")) is None
