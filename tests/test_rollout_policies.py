"""What a rollout carries to each device, over real agent processes on a real Mosquitto: the dead-man
switch (probation, the hub's confirm once the gates pass) and capture settings (docs/rollouts.md,
"Probation, drift windows and capture").

Three agents of their own (the rig of ``test_rollout_runtime.py``: its hub home, helpers and agents, so
this module costs no time there): two get inference requests the whole time, the third none, so that
its gates never pass and the hub never confirms it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time

import numpy as np
import pytest

from edgeloop.agent.drift_reference import build_reference
from edgeloop.agent.wire.bundle import pack_bundle
from tests.conftest import wait_until
from tests.onnx_models import FEATURES, classifier_onnx, classifier_smoke, manifest_for
from tests.test_rollout_runtime import Rig, _explain, _home, _row, _seed_agent, _traffic

pytestmark = pytest.mark.broker

FAST = {"min_requests": 3, "max_error_rate": 0.0}


def _add_drift_version(hub, version: str) -> None:
    """iris ``version``: the good classifier with a drift reference whose windows are 1,000 rows (none closes
    during a test unless a deploy's ``drift`` says otherwise)."""
    model = classifier_onnx()
    X = np.random.default_rng(5).normal([5.8, 3.0, 3.7, 1.2], [0.8, 0.4, 1.7, 0.7], size=(400, 4))
    ref = build_reference(X, list(FEATURES), window=1000, min_rows=500, window_seconds=0.0)
    manifest = dataclasses.replace(manifest_for(model, model="iris", version=version, smoke=classifier_smoke(),
                                                drift=ref), key_id=hub.key.keyid)
    data = pack_bundle(manifest, {"model.onnx": model}, hub.key)
    reg = hub.registry
    reg.add_version("iris", reg.list_runs()[0]["id"], hashlib.sha256(model + version.encode()).hexdigest(),
                    task="classification")
    path = hub.home.bundles_dir / f"iris-{version}.elb"
    path.write_bytes(data)
    reg.add_bundle(hashlib.sha256(data).hexdigest(), f"iris:{version}", path, len(data), hub.key.keyid)


@pytest.fixture(scope="module")
def rig(tmp_path_factory, mosquitto):
    tmp = tmp_path_factory.mktemp("policies")
    hub = _home(tmp)
    _add_drift_version(hub, "5")
    r = Rig(hub, mosquitto, tmp)
    for i in range(3):
        _seed_agent(r, f"po{os.getpid() % 1000}-{i:02d}", {"site": "lab"})
    for aid in r.ids:
        r.start_agent(aid)
    r.start_runtime()
    traffic = threading.Thread(target=_traffic, args=(r, r.ids[:2], 0.2), daemon=True)
    traffic.start()
    try:
        assert wait_until(lambda: all(_row(hub, a).get("status") == "online" and _row(hub, a).get("active_version")
                                      == "1" for a in r.ids), 60), {a: r.procs[a].log()[-2000:] for a in r.ids}
        yield r
    finally:
        r.stop_traffic.set()
        r.stop_runtime()
        for p in r.procs.values():
            if p.proc is not None:
                p.stop(kill=True)


def _device_active(rig: Rig, aid: str) -> str | None:
    """The version the agent's own state says it serves (read from its state directory: no hub involved)."""
    try:
        state = json.loads((rig.tmp / f"{aid}-state" / "state.json").read_text())
    except (OSError, ValueError):
        return None
    sha = state.get("active")
    return (state.get("installed", {}).get(sha) or {}).get("version") if sha else None


def _detail(row: dict) -> dict:
    d = row.get("detail")
    return json.loads(d) if isinstance(d, str) else dict(d or {})


def _audits(rig: Rig, rid: str, action: str) -> list[dict]:
    return [r for r in rig.hub.list_audit(200, target=rid) if r["action"] == action]


def test_a_rollout_that_requires_confirm_confirms_each_agent_which_keeps_the_version_and_captures(rig):
    a, b = rig.ids[:2]
    st = rig.hub.rollout_start(version="iris:2", target=f"id:{a},id:{b}", strategy="all_at_once", bake_seconds=1.0,
                               agent_timeout_seconds=30.0, gates=FAST, probation_seconds=6.0, require_confirm=True,
                               capture={"enabled": True, "upload_rows": 10})
    rid = st["id"]
    assert st["plan"]["require_confirm"] is True and st["plan"]["capture"]["upload_rows"] == 10
    st = rig.wait_status(rid, ("completed",), 40)
    activated = time.time()
    assert all(x["status"] == "healthy" for x in st["state"]["waves"][0]["agents"]), _explain(st)
    assert wait_until(lambda: len(_audits(rig, rid, "rollout.confirm")) == 2, 20), rig.hub.list_audit(30)
    confirms = _audits(rig, rid, "rollout.confirm")
    assert all(_detail(r)["ok"] for r in confirms), confirms
    assert sorted(_detail(r)["agent"] for r in confirms) == [a, b]
    # past the device's probation deadline (6 s after it activated): still on version 2 -- it was confirmed
    time.sleep(max(0.0, 7.0 - (time.time() - activated)))
    assert _device_active(rig, a) == "2" and _device_active(rig, b) == "2"
    assert rig.active(a) == "2" and rig.active(b) == "2"
    # capture was turned on by the rollout: each agent cut a batch of version 2 and the hub has it
    assert wait_until(lambda: all(any(c.get("version") == "2" for c in rig.hub.list_captures(x, model="iris"))
                                  for x in (a, b)), 30), [rig.hub.list_captures(x) for x in (a, b)]
    assert all(_detail(r)["ok"] for r in _audits(rig, rid, "rollout.capture"))


@pytest.mark.reliability("rollouts", "the hub runtime stops before it confirms a deploy on probation (the hub is "
                         "gone)", "the agent reverts on its own at its deadline, and the restarted runtime shows the "
                         "agent rolled back with the agent's reason")
def test_an_agent_the_hub_never_confirms_reverts_on_its_own_and_the_rollout_shows_it(rig):
    quiet = rig.ids[2]  # no requests: its gates wait, so the hub never confirms it
    st = rig.hub.rollout_start(version="iris:2", target=f"id:{quiet}", strategy="all_at_once", bake_seconds=1.0,
                               agent_timeout_seconds=60.0, gates=FAST, failure_policy="halt", probation_seconds=3.0,
                               require_confirm=True)
    rid = st["id"]
    assert wait_until(lambda: rig.hub.rollout_status(rid)["state"]["waves"][0]["agents"][0]["status"] == "baking",
                      30), _explain(rig.hub.rollout_status(rid))
    rig.stop_runtime()  # the hub is gone before it could confirm
    assert _device_active(rig, quiet) == "2"
    assert wait_until(lambda: _device_active(rig, quiet) == "1", 15), rig.procs[quiet].log()[-3000:]
    rig.start_runtime()
    st = rig.wait_status(rid, ("halted",), 30)
    run = st["state"]["waves"][0]["agents"][0]
    assert run["status"] == "rolled_back" and "confirm_timeout" in run["reason"], _explain(st)
    assert "reverted on its own" in run["reason"]
    assert wait_until(lambda: rig.active(quiet) == "1", 20)
    assert not _audits(rig, rid, "rollout.confirm")  # nothing was ever confirmed


def test_a_rollout_with_a_drift_window_makes_the_agents_close_windows_at_that_size_also_after_a_restart(rig):
    a, b = rig.ids[:2]
    st = rig.hub.rollout_start(version="iris:5", target=f"id:{a},id:{b}", strategy="all_at_once", bake_seconds=0.5,
                               agent_timeout_seconds=30.0, gates=FAST, drift={"rows": 7, "min_rows": 5})
    rid = st["id"]
    assert st["plan"]["drift"] == {"rows": 7, "min_rows": 5}
    rig.wait_status(rid, ("completed",), 40)

    def reports(aid: str, after: float = 0.0) -> list[dict]:
        return [r for r in rig.hub.drift_reports(aid, model="iris", version="5") if r["started_at"] >= after]

    # the bundle's windows are 1,000 rows: only the rollout's 7 can close them in this time
    assert wait_until(lambda: all(len(reports(x)) >= 2 for x in (a, b)), 30), [reports(x) for x in (a, b)]
    assert all(r["rows"] == 7 for x in (a, b) for r in reports(x)), [r["rows"] for r in reports(a)]
    rig.procs[b].stop()  # the agent restarts: the overrides were kept with the version
    restarted = time.time()
    rig.start_agent(b)
    assert wait_until(lambda: len(reports(b, restarted)) >= 2, 30), rig.procs[b].log()[-3000:]
    assert all(r["rows"] == 7 for r in reports(b, restarted))
    assert rig.active(b) == "5"


def test_an_agent_refuses_a_deploy_with_bad_drift_windows_by_code_and_installs_nothing(rig):
    quiet = rig.ids[2]
    before = _device_active(rig, quiet)
    r = rig.hub.deploy(rig.runtime.fleet, [quiet], "iris:4", drift={"rows": 0}, timeout=20.0)[0]
    assert not r["ok"] and r["code"] == "bad_drift_windows", r
    assert "rows must be 1 to" in r["message"]
    assert _device_active(rig, quiet) == before
