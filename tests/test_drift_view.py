"""The hub's drift view: per model -> per agent -> per feature, over time (Hub methods and `edgeloop drift`).

Reports come from the real agent monitor on windowed sensor recordings and a regression reference,
go through the wire codec and are stored by the real registry (SQLite) as the fleet's intake does.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeloop.agent.drift import DriftMonitor, WindowPolicy, build_reference, window_layout
from edgeloop.agent.wire import messages
from edgeloop.hub import views
from edgeloop.hub.cli import parser as cli
from edgeloop.hub.services import Hub
from edgeloop.hub.services.drift import DriftSeriesError
from tests.sensor_recordings import CHANNELS, STEPS, recordings

NAMES = [f"ch{c}_t{t}" for c in range(CHANNELS) for t in range(STEPS)]


def store(hub: Hub, mon: DriftMonitor, reports_of) -> int:
    n = 0
    for rep in reports_of(mon):
        hub.registry.add_drift_report(messages.decode(rep.encode()))  # as received over MQTT
        n += 1
    return n


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with Hub(tmp_path_factory.mktemp("drift-view") / "home", actor="tests") as h:
        train, _ = recordings(400, seed=1)
        ref = build_reference(train, NAMES, layout=window_layout(CHANNELS, STEPS), window=100, min_rows=50)

        clock = [1_700_000_000.0]

        def monitor(agent: str) -> DriftMonitor:  # windows of 100 rows or an hour
            return DriftMonitor(ref, agent_id=agent, model="vib", version="2", bundle_sha256="ab" * 32,
                                policy=WindowPolicy.of(ref), clock=lambda: clock[0])

        std1 = float(train[:, STEPS:2 * STEPS].std())
        assert store(h, monitor("edge-ok"), lambda m: m.observe(recordings(600, seed=2)[0])) == 6
        shifted = monitor("edge-hot")
        store(h, shifted, lambda m: m.observe(recordings(300, seed=3)[0]))
        store(h, shifted, lambda m: m.observe(recordings(400, seed=4, offset=(0.0, 1.5 * std1, 0.0))[0]))
        assert store(h, shifted, lambda m: m.observe(recordings(20, seed=5)[0])) == 0
        clock[0] += 3600.0  # an hour later, no further request: the agent's tick closes the window
        assert store(h, shifted, lambda m: [m.tick()]) == 1

        rng = np.random.default_rng(6)
        X = rng.normal(0, 1, (2000, 2))
        reg = build_reference(X, ["a", "b"], predicted=X @ [2.0, 1.0], window=200, min_rows=100)
        out = DriftMonitor(reg, agent_id="edge-ok", model="price", version="1", bundle_sha256="cd" * 32)
        Xs = rng.normal(0, 1, (600, 2))
        store(h, out, lambda m: m.observe(Xs, Xs @ [2.0, 1.0] + 1.5))  # the model's output moved, not its inputs
        yield h


def test_overview_per_model_and_agent_states_drift_trend_and_controls(hub):
    overview = {m["model"]: m for m in hub.drift_overview()}
    assert list(overview) == ["price", "vib"]
    vib = {a["agent_id"]: a for a in overview["vib"]["agents"]}
    assert overview["vib"]["agents_drifting"] == 1
    ok, hot = vib["edge-ok"], vib["edge-hot"]
    assert (ok["windows"], ok["drifting"], ok["too_few_rows"]) == (6, [], 0)
    assert hot["windows"] == 8 and hot["too_few_rows"] == 1 and hot["last_status"] == "too_few_rows"
    assert hot["drifting"] and {n.split(".")[0] for n in hot["drifting"]} == {"ch1"}
    assert hot["worst"]["name"].startswith("ch1.") and hot["worst"]["psi"] > 0.2
    assert hot["trend"][:3] == [0, 0, 0] and min(hot["trend"][3:7]) >= 1 and hot["trend_status"][-1] == "too_few_rows"
    assert hot["controls"] == {"alpha": 0.01, "features_tested": 18, "consecutive": 2, "min_rows": 50,
                               "psi_threshold": 0.2, "ks_threshold": 0.15}
    price = overview["price"]["agents"][0]
    assert price["output"]["drifted"] and price["drifting"] == []  # the output moved, the inputs did not
    assert price["alarm"] and overview["price"]["agents_drifting"] == 1
    assert [m["model"] for m in hub.drift_overview(model="vib")] == ["vib"]
    assert [a["agent_id"] for m in hub.drift_overview("edge-hot") for a in m["agents"]] == ["edge-hot"]


def test_series_per_feature_for_charts_with_counts_that_add_up(hub):
    s = hub.drift_series("edge-hot", "vib", "ch1.mean")
    assert [p["window"] for p in s["points"]] == list(range(1, 9))
    assert [p["status"] for p in s["points"]][-1] == "too_few_rows"
    assert [p["drifted"] for p in s["points"]][:3] == [False] * 3 and s["points"][4]["drifted"]
    assert sum(s["counts_total"]) == 720 and s["counts_total"] == list(
        np.sum([p["counts"] for p in s["points"]], axis=0))
    out = hub.drift_series("edge-ok", "price", "prediction")
    assert len(out["points"]) == 3 and all(p["flagged"] for p in out["points"])
    with pytest.raises(DriftSeriesError, match="--detail"):
        hub.drift_series("edge-hot", "vib", "ch9.mean")


def test_edgeloop_drift_prints_a_summary_and_detail(hub, capsys):
    home = str(hub.home.root)
    assert cli.main(["drift", "--home", home]) == 0
    text = capsys.readouterr().out
    assert "vib: 2 agent(s), 1 drifting" in text
    assert "false alarms: alpha 0.01 per window over 18 features (Holm), drifted after 2 flagged windows in a row, " \
           "windows under 50 rows not judged" in text
    assert "edge-hot  v2  DRIFTING  8 windows (1 with too few rows), 720 rows" in text
    assert "    drifted: ch1 (" in text and "trend (features flagged per window, oldest first): 0 0 0 " in text
    assert text.rstrip().count("\n") < 40  # a summary, not a line per feature
    assert "edge-ok  v1  DRIFTING  3 windows, 600 rows" in text and "output (prediction): DRIFTED" in text
    assert cli.main(["drift", "--home", home, "--agent", "edge-hot", "--detail"]) == 0
    detail = capsys.readouterr().out
    assert "ch1.mean" in detail and "ch0.std" in detail and "edge-ok" not in detail
    assert views.drift_overview_lines([]) == []
