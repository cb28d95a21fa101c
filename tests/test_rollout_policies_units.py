"""What a rollout carries to each device, without a broker: the plan's probation, drift and capture fields,
the ``Deploy`` action, the agent's check of a deploy's ``drift`` table and where it keeps it, the CLI flags,
and the driver's follow-up (confirm once the gates pass, capture once activated)."""

from __future__ import annotations

import json

import pytest

from edgeloop.agent.drift_windows import load_windows, policy_overrides, save_windows
from edgeloop.agent.errors import MessageFormatError
from edgeloop.agent.wire.drift_windows import DriftWindowArgsError, drift_windows_arg
from edgeloop.hub.cli.parser import build_parser
from edgeloop.hub.cli.rollout import _plan_fields, device_line
from edgeloop.hub.rollout.errors import PlanError
from edgeloop.hub.rollout.events import Deploy, Start
from edgeloop.hub.rollout.plan import CAPTURE_KEYS, RolloutPlan
from edgeloop.hub.runtime.rollout_device import DeviceFollowUp
from edgeloop.hub.services.captures import CAPTURE_SETTINGS
from tests.rollout_rig import GOOD, Driver, fleet, plan

DEVICE = dict(probation_seconds=30.0, probation_min_requests=50, require_confirm=True,
              drift={"rows": 7, "seconds": 0, "min_rows": 5, "consecutive": 2},
              capture={"enabled": True, "max_rows": 100, "upload_rows": 20})


def test_the_device_fields_round_trip_and_a_stored_plan_without_them_still_loads():
    p = plan(**DEVICE)
    assert RolloutPlan.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    old = p.to_dict()
    for k in ("probation_seconds", "probation_min_requests", "require_confirm", "drift", "capture"):
        old.pop(k)
    q = RolloutPlan.from_dict(old)  # a plan stored before these fields existed
    assert q.probation_args() is None and q.drift is None and q.capture is None and not q.require_confirm
    assert p.probation_args() == {"seconds": 30.0, "min_requests": 50, "require_confirm": True}


@pytest.mark.parametrize(("fields", "problem"), [
    ({"require_confirm": True}, "need probation_seconds"),
    ({"probation_seconds": 0}, "probation_seconds must be above 0"),
    ({"probation_seconds": 600.0}, "bake_seconds (60.0) must be at least probation_seconds"),
    ({"probation_seconds": 30.0, "require_confirm": True, "probation_min_requests": 500}, "raise min_requests"),
    ({"drift": {"rows": 0}}, "drift.rows must be a whole number >= 1"),
    ({"drift": {"window": 5}}, "drift has unknown key(s) window"),
    ({"drift": {"seconds": -1}}, "drift.seconds must be a number of seconds >= 0"),
    ({"capture": {"enabled": "yes"}}, "capture.enabled must be true or false"),
    ({"capture": {"labels": 3}}, "capture has unknown key(s) labels"),
    ({"capture": {}}, "capture is an object with some of"),
])
def test_bad_device_fields_are_refused_with_what_to_do(fields, problem):
    with pytest.raises(PlanError) as exc:
        RolloutPlan.from_dict({**plan().to_dict(), **fields})
    assert any(problem in p for p in exc.value.problems), exc.value.problems


def test_the_capture_keys_are_the_capture_commands_settings():
    assert set(CAPTURE_KEYS) == {"enabled", *CAPTURE_SETTINGS}


def test_each_waves_deploy_carries_the_probation_and_the_drift_windows():
    d = Driver(plan(**DEVICE))
    d(Start(agents=fleet(3)))
    d.activate(d.current(), GOOD)
    d.bake()
    deploys = d.deploys()
    assert len(deploys) == 2
    for dep in deploys:
        assert dep.probation == {"seconds": 30.0, "min_requests": 50, "require_confirm": True}
        assert dep.drift == DEVICE["drift"]
        assert dep.to_dict()["probation"] == dep.probation
    assert Deploy.of(plan(), ("a",), 0).probation is None and Deploy.of(plan(), ("a",), 0).drift is None


def test_the_agent_checks_a_deploys_drift_windows_and_refuses_bad_ones_by_code():
    assert drift_windows_arg({}) is None
    assert drift_windows_arg({"drift": {"rows": 7, "seconds": 0}}) == {"rows": 7, "seconds": 0.0}
    for bad in ({"rows": 0}, {"rows": True}, {"rows": 2.5}, {"seconds": -1}, {"window": 3}, {}, [7], "7"):
        with pytest.raises(DriftWindowArgsError) as exc:
            drift_windows_arg({"drift": bad})
        assert exc.value.code == "bad_drift_windows" and isinstance(exc.value, MessageFormatError)


def test_the_agent_keeps_drift_windows_per_bundle_over_its_config(tmp_path):
    a, b = "a" * 64, "b" * 64
    save_windows(tmp_path, a, {"rows": 7}, keep=set())
    save_windows(tmp_path, b, {"rows": 9, "seconds": 5.0}, keep={a})
    assert load_windows(tmp_path) == {a: {"rows": 7}, b: {"rows": 9, "seconds": 5.0}}
    assert policy_overrides(tmp_path, a, {"rows": 300, "min_rows": 50}) == {"rows": 7, "min_rows": 50}
    save_windows(tmp_path, b, None, keep={a, b})  # b deployed again without drift windows: the config's again
    assert load_windows(tmp_path) == {a: {"rows": 7}}
    save_windows(tmp_path, b, {"rows": 3}, keep=set())  # a left the store: forgotten
    assert load_windows(tmp_path) == {b: {"rows": 3}}
    (tmp_path / "drift_windows.json").write_text("{not json")
    assert load_windows(tmp_path) == {}


def test_the_cli_flags_make_the_device_fields_and_the_status_shows_them():
    args = build_parser().parse_args(
        ["rollout", "start", "iris:2", "--target", "site=lab", "--probation", "30", "--probation-min-requests", "5",
         "--require-confirm", "--drift-window-rows", "7", "--drift-window-seconds", "0", "--capture",
         "--capture-upload-rows", "20"])
    doc = _plan_fields(args)
    assert doc["probation_seconds"] == 30.0 and doc["probation_min_requests"] == 5 and doc["require_confirm"]
    assert doc["drift"] == {"rows": 7, "seconds": 0.0}
    assert doc["capture"] == {"enabled": True, "upload_rows": 20}
    line = device_line(doc)
    assert "probation 30 s, 5 requests, hub confirms" in line and "rows=7" in line and "upload_rows=20" in line
    assert device_line(plan().to_dict()) == ""


class _Hub:
    """The two Hub calls the follow-up makes, answering as an agent would."""

    def __init__(self, confirm_code: str = "ok") -> None:
        self.calls: list[tuple] = []
        self.confirm_code = confirm_code
        self.registry = self

    def confirm(self, fleet, ids, ref, timeout):
        self.calls.append(("confirm", tuple(ids), ref))
        return [{"agent": ids[0], "ok": self.confirm_code == "ok", "code": self.confirm_code, "message": "m"}]

    def set_capture(self, fleet, ids, enable=None, timeout=0.0, **settings):
        self.calls.append(("capture", tuple(ids), enable, settings))
        return [{"agent": ids[0], "ok": True, "code": "ok", "message": "m"}]

    def audit(self, actor, action, target, **detail):
        self.calls.append(("audit", action, target, detail["agent"], detail["ok"]))


def test_the_follow_up_confirms_once_when_the_gates_pass_and_sends_capture_once_activated():
    hub, outcomes = _Hub(), []
    f = DeviceFollowUp(hub, None, lambda fn, a: fn(*a), lambda *o: outcomes.append(o))
    d = Driver(plan(**DEVICE))
    d(Start(agents=fleet(3)))
    canary = d.current()[0]
    f.judged(d.state, canary)  # pending: nothing yet
    f.activated(d.state, canary)
    assert [c[0] for c in hub.calls] == ["capture", "audit"]
    assert hub.calls[0][2:] == (True, {"max_rows": 100, "upload_rows": 20})
    d.activate([canary], GOOD)  # its gates pass
    f.judged(d.state, canary)
    f.judged(d.state, canary)
    f.resumed(d.state)  # a restarted driver sends nothing twice in the same process
    assert [c for c in hub.calls if c[0] == "confirm"] == [("confirm", (canary,), "m:v2")]
    assert ("audit", "rollout.confirm", "r-1", canary, True) in hub.calls
    assert (("r-1", canary, "confirm", True, "ok: m") in outcomes)
    hub2, out2 = _Hub("not_on_probation"), []
    f2 = DeviceFollowUp(hub2, None, lambda fn, a: fn(*a), lambda *o: out2.append(o))
    f2.resumed(d.state)  # after a restart: confirms the activated agents whose gates pass
    assert out2[-1][2:4] == ("confirm", False) and "not_on_probation" in out2[-1][4]
    f3 = DeviceFollowUp(_Hub(), None, lambda fn, a: fn(*a), lambda *o: None)
    no_confirm = Driver(plan(probation_seconds=30.0))
    no_confirm(Start(agents=fleet(3)))
    no_confirm.activate(no_confirm.current(), GOOD)
    f3.judged(no_confirm.state, no_confirm.current()[0])
    assert not f3.hub.calls  # require_confirm off: the device decides at its deadline alone
