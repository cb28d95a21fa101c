"""The dead-man switch's pure parts: the decision (edgeloop.agent.probation), the deploy's ``probation``
argument and the ``confirm`` command (agent/wire/commands.py), the state's ``probation`` field, and the
probation kept in the store (a real state folder). No broker: see tests/test_dead_man.py for the agent."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest

from edgeloop.agent.errors import MessageFormatError, StoreError
from edgeloop.agent.probation import (
    CONFIRM_TIMEOUT,
    MIN_REQUESTS_NOT_REACHED,
    MODEL_FAILING,
    PASS,
    REVERT,
    WAIT,
    OnProbation,
    decide,
)
from edgeloop.agent.store import AgentStore
from edgeloop.agent.wire import messages as m
from edgeloop.agent.wire.commands import (
    Probation,
    ProbationArgsError,
    confirm_target,
    probation_of,
    seal_command,
    verify_command,
)
from edgeloop.agent.wire.envelope import SigningKey, TrustedKeys

SHA = "ab" * 32


def _p(**over) -> OnProbation:
    base = dict(model="iris", version="2", bundle_sha256=SHA, previous_sha256="cd" * 32, previous_version="1",
                deadline=100.0, min_requests=0, require_confirm=False, command_id="c1")
    return OnProbation(**{**base, **over})


# --- the decision -------------------------------------------------------------------------------
@pytest.mark.parametrize(("over", "now", "failing", "action", "reason"), [
    ({}, 50.0, False, WAIT, ""),  # the whole window is watched
    ({}, 100.0, False, PASS, "healthy"),
    ({}, 50.0, True, REVERT, MODEL_FAILING),  # at once, before the deadline
    ({"confirmed": True, "require_confirm": True}, 50.0, True, REVERT, MODEL_FAILING),  # even when confirmed
    ({"require_confirm": True}, 50.0, False, WAIT, ""),
    ({"require_confirm": True}, 100.0, False, REVERT, CONFIRM_TIMEOUT),
    ({"require_confirm": True, "confirmed": True}, 50.0, False, PASS, "confirmed"),  # early
    ({"require_confirm": True, "confirmed": True, "min_requests": 5}, 50.0, False, WAIT, ""),
    ({"require_confirm": True, "confirmed": True, "min_requests": 5, "requests": 5}, 50.0, False, PASS, "confirmed"),
    ({"min_requests": 5, "requests": 4}, 100.0, False, REVERT, MIN_REQUESTS_NOT_REACHED),
    ({"min_requests": 5, "requests": 5}, 99.0, False, WAIT, ""),
    ({"min_requests": 5, "requests": 5}, 100.0, False, PASS, "healthy"),
    ({"require_confirm": True, "confirmed": True, "min_requests": 5}, 100.0, False, REVERT,
     MIN_REQUESTS_NOT_REACHED),
])
def test_decide(over, now, failing, action, reason):
    d = decide(_p(**over), now, failing)
    assert (d.action, d.reason) == (action, reason)
    assert d.message or action == WAIT


def test_counts_add_up_across_a_restart_and_round_trip():
    p = _p(requests=7, errors=1).counted(3, 2)
    assert (p.requests, p.errors) == (10, 3)
    assert OnProbation.from_dict(p.to_dict()) == p
    st = p.status()
    assert (st.version, st.deadline, st.requests, st.errors) == ("2", 100.0, 10, 3)
    with pytest.raises(StoreError, match="probation is unreadable"):
        OnProbation.from_dict({"model": "iris"})


# --- the deploy's probation argument ----------------------------------------------------------------
def test_probation_args_round_trip_and_defaults():
    p = Probation(2.0, 5, True)
    assert Probation.from_dict(p.to_dict()) == p
    assert Probation.from_dict({"seconds": 3}) == Probation(3.0, 0, False)
    cmd = m.Command("deploy", "c", "a", 1, 0.0, 1.0, {"probation": {"seconds": 2, "require_confirm": True}})
    assert probation_of(cmd) == Probation(2.0, 0, True)
    assert probation_of(dataclasses.replace(cmd, args={})) is None
    assert m.Command.from_dict(cmd.to_dict()) == cmd


@pytest.mark.parametrize(("raw", "match"), [
    ({}, "missing field 'seconds'"),
    ({"seconds": 0}, "seconds must be above 0"),
    ({"seconds": -1}, "seconds must be above 0"),
    ({"seconds": 8 * 86400}, "at most"),
    ({"seconds": math.nan}, "seconds must be above 0"),
    ({"seconds": True}, "'seconds' must be float"),
    ({"seconds": 1, "min_requests": -1}, "min_requests must be 0"),
    ({"seconds": 1, "min_requests": 1.5}, "'min_requests' must be int"),
    ({"seconds": 1, "require_confirm": "yes"}, "'require_confirm' must be bool"),
    ({"seconds": 1, "grace": 3}, "unknown field"),
    ([1], "must be a JSON object"),
])
def test_bad_probation_args_are_refused_by_name(raw, match):
    with pytest.raises(MessageFormatError, match=match):  # ProbationArgsError is one (code bad_probation)
        Probation.from_dict(raw)


def test_a_deploy_with_a_bad_probation_and_a_bad_confirm_are_refused_before_acting():
    key = SigningKey.generate()
    trusted = TrustedKeys({key.keyid: key.public})
    now = time.time()

    def verify(command: str, args: dict):
        cmd = m.Command(command, "c1", "a1", 1, now, now + 60, args)
        return verify_command(seal_command(key, cmd), trusted, "a1", now, {})

    with pytest.raises(ProbationArgsError, match="seconds must be above 0") as exc:
        verify("deploy", {"probation": {"seconds": 0}})
    assert exc.value.code == "bad_probation"
    with pytest.raises(MessageFormatError, match="bundle_sha256"):
        verify("confirm", {"bundle_sha256": "nope"})
    vc = verify("confirm", {"bundle_sha256": SHA})
    assert confirm_target(vc.command) == SHA


# --- the state's probation field, and the store ---------------------------------------------------------
def test_state_probation_round_trips_and_is_absent_when_none():
    st = m.AgentState("a1", "online", 1, "0.1.0", 0.0, probation=_p(requests=3).status())
    assert m.AgentState.from_dict(st.to_dict()) == st
    assert "probation" not in dataclasses.replace(st, probation=None).to_dict()
    d = st.to_dict()
    d["probation"]["deadline"] = "soon"
    with pytest.raises(MessageFormatError, match="probation: field 'deadline' must be float"):
        m.AgentState.from_dict(d)


def test_the_store_keeps_the_probation_and_reverts_in_one_save(tmp_path):
    store = AgentStore(tmp_path)
    store.install("11" * 32, b"one", "iris", "1")
    store.install("22" * 32, b"two", "iris", "2")
    p = _p(bundle_sha256="22" * 32, previous_sha256="11" * 32)
    store.set_probation(p.to_dict())
    again = AgentStore(tmp_path)  # a restart reads it back
    assert OnProbation.from_dict(again.probation()) == p
    again.revert_probation("11" * 32)
    after = AgentStore(tmp_path)
    assert after.active().sha256 == "11" * 32 and after.probation() is None
    assert after.state.history[0] == "22" * 32  # the reverted version stays in the store (roll forward)
    with pytest.raises(StoreError, match="not installed"):
        after.revert_probation("33" * 32)
