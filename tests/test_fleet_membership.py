"""Fleet membership, the audit of agent changes that matter (not of routine reconnects), batched
registry writes, the hub config, the runtime's lock and heartbeat, and the freshness line --
on real SQLite files, without a broker (tests/test_hub_runtime.py has the broker side)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from edgeloop.agent.errors import ConfigError
from edgeloop.agent.wire.messages import ActiveModel, AgentState
from edgeloop.hub.errors import RegistryError
from edgeloop.hub.registry import Registry
from edgeloop.hub.runtime import HomeLock, RuntimeLockedError
from edgeloop.hub.services.core import HubConfig
from edgeloop.hub.views import fleet_table, freshness_line
from tests.conftest import REPO

KEY = "1111aaaa2222bbbb"
OTHER = "9999ffff8888eeee"


def state(agent_id: str, *, keys=(KEY,), status="online", session=1, bundle: str | None = None) -> AgentState:
    active = ActiveModel("m", "1", bundle) if bundle else None
    return AgentState(agent_id=agent_id, status=status, session=session, agent_version="0.2.0", started_at=1000.0,
                      active=active, trusted_keys=list(keys))


@pytest.fixture
def reg(tmp_path):
    r = Registry(tmp_path / "registry.sqlite")
    yield r
    r.close()


def agent_audit(reg: Registry, agent_id: str) -> list[tuple[str, str]]:
    return [(a["actor"], a["action"]) for a in reversed(reg.list_audit(limit=500, target=agent_id))]


# --- membership --------------------------------------------------------------------------------------
def test_foreign_agents_are_kept_apart_and_never_audited(reg):
    reg.record_agent_state(state("mine"), member=True)
    reg.record_agent_state(state("theirs", keys=(OTHER,)), member=False)
    reg.record_agent_status("theirs", "offline")
    reg.record_agent_state(state("theirs", keys=(OTHER,), session=2, bundle="b" * 64), member=False)
    assert [a["agent_id"] for a in reg.list_agents()] == ["mine"]
    everyone = {a["agent_id"]: a["member"] for a in reg.list_agents(include_foreign=True)}
    assert everyone == {"mine": 1, "theirs": 0}
    assert reg.agent_membership() == everyone
    assert agent_audit(reg, "mine") == [("agent:mine", "agent.joined")]
    assert agent_audit(reg, "theirs") == []  # a first sighting, a status and a new bundle: nothing audited
    assert reg.get_agent("theirs")["active_bundle"] == "b" * 64  # but its state is kept for --all
    table = fleet_table(reg.list_agents(include_foreign=True), membership=True)
    assert table.header[-1] == "fleet" and [r[-1] for r in table.rows] == ["member", "foreign"]


def test_an_agent_that_enrols_or_drops_this_hubs_key_joins_or_leaves(reg):
    reg.record_agent_state(state("edge", keys=(OTHER,)), member=False)
    reg.record_agent_state(state("edge", keys=(OTHER, KEY), session=2), member=True)
    assert [a["agent_id"] for a in reg.list_agents()] == ["edge"]
    reg.record_agent_state(state("edge", keys=(OTHER,), session=3), member=False)
    assert reg.list_agents() == []
    assert agent_audit(reg, "edge") == [("agent:edge", "agent.joined"), ("agent:edge", "agent.left")]
    # a registry written before membership existed keeps its rows listed until a state decides
    reg.record_agent_status("legacy", "online")
    assert reg.agent_membership()["legacy"] is None and "legacy" in {a["agent_id"] for a in reg.list_agents()}


# --- the audit of reconnects -----------------------------------------------------------------------
def test_a_reconnect_within_the_grace_period_leaves_no_audit_row(reg):
    reg.record_agent_state(state("edge", bundle="a" * 64), member=True)
    for session in range(2, 6):  # flapping: the status topic and a new birth each time
        reg.record_agent_status("edge", "offline", grace=60)
        reg.record_agent_state(state("edge", status="offline", session=session - 1, bundle="a" * 64), grace=60)
        reg.record_agent_status("edge", "online", grace=60)
        reg.record_agent_state(state("edge", session=session, bundle="a" * 64), grace=60)
    assert reg.audit_offline_agents(grace=60) == []
    assert agent_audit(reg, "edge") == [("agent:edge", "agent.joined")]
    assert reg.get_agent("edge")["session"] == 5 and reg.get_agent("edge")["status"] == "online"


def test_offline_past_the_grace_period_is_audited_once_and_so_is_the_return(reg):
    reg.record_agent_state(state("edge"), member=True)
    reg.record_agent_status("edge", "offline", grace=30)
    since = reg.get_agent("edge")["offline_since"]
    assert since is not None
    assert reg.audit_offline_agents(grace=30, at=since + 10) == []  # still within the grace period
    assert reg.audit_offline_agents(grace=30, at=since + 31) == ["edge"]
    assert reg.audit_offline_agents(grace=30, at=since + 90) == []  # audited once
    reg.record_agent_status("edge", "offline", grace=30)  # a repeated offline keeps its first time
    assert reg.get_agent("edge")["offline_since"] == since
    reg.record_agent_status("edge", "online", grace=30)
    assert agent_audit(reg, "edge") == [("agent:edge", "agent.joined"), ("hub", "agent.offline"),
                                        ("hub", "agent.online")]
    back = reg.list_audit(limit=1, target="edge")[0]["detail"]
    assert back["offline_since"] == since and back["offline_s"] >= 0
    assert reg.get_agent("edge")["offline_since"] is None and reg.get_agent("edge")["down"] == 0


def test_a_return_after_the_grace_period_nobody_watched_audits_both(reg):
    reg.record_agent_state(state("edge"), member=True)
    reg.record_agent_status("edge", "offline")
    reg._db().execute("UPDATE agents SET offline_since = offline_since - 3600 WHERE agent_id = 'edge'")
    reg.record_agent_state(state("edge", session=2), grace=120)
    assert agent_audit(reg, "edge") == [("agent:edge", "agent.joined"), ("hub", "agent.offline"),
                                        ("agent:edge", "agent.online")]
    assert reg.list_audit(limit=1, target="edge")[0]["detail"]["offline_s"] >= 3600


# --- batched writes ----------------------------------------------------------------------------------
def test_a_transaction_joins_writes_and_a_savepoint_lets_one_fail_alone(reg, tmp_path):
    other = Registry(tmp_path / "registry.sqlite")  # another connection sees only committed rows
    try:
        with reg.transaction():
            reg.record_agent_state(state("a"), member=True)
            with pytest.raises(RegistryError), reg.savepoint():
                reg.record_agent_state(state("b"), member=True)
                raise RegistryError("this part fails")
            reg.record_agent_state(state("c"), member=True)
            assert other.list_agents() == []  # nothing committed yet: one transaction
        assert [a["agent_id"] for a in other.list_agents()] == ["a", "c"]
        assert [a["target"] for a in reversed(other.list_audit())] == ["a", "c"]  # b's audit row went too
        with pytest.raises(RuntimeError), reg.transaction():
            reg.record_agent_state(state("d"), member=True)
            raise RuntimeError("the whole batch fails")
        assert [a["agent_id"] for a in other.list_agents()] == ["a", "c"]
    finally:
        other.close()


def test_one_failing_write_of_a_batch_loses_nothing_else(tmp_path, caplog):
    from edgeloop.hub.services import Hub

    with Hub(tmp_path / "hub", actor="tests") as hub:
        fleet = hub.fleet("mqtt://127.0.0.1:1")  # never started: the batch writer alone

        def broken() -> None:
            hub.registry.record_agent_state(state("half"), member=True)
            raise RegistryError("disk says no")  # after a write: that write must go too

        writes = [("a", lambda: hub.registry.record_agent_state(state("a"), member=True)),
                  ("half-written", broken),
                  ("b", lambda: hub.registry.record_agent_state(state("b"), member=True))]
        fleet._commit(writes)
        assert [a["agent_id"] for a in hub.list_agents()] == ["a", "b"]
        assert "could not store half-written" in caplog.text and "writing them one by one" in caplog.text


def test_redelivered_events_settle_a_deployment_once(reg):
    from edgeloop.agent.wire.messages import Event

    reg.add_deployment(None, "edge", "rollback", "cmd-1", 1)
    ok = Event(event="rollback_result", agent_id="edge", ok=True, at=5.0, command_id="cmd-1")
    assert reg.update_deployment_from_event(ok)["status"] == "installed"
    assert reg.update_deployment_from_event(ok) is None  # a second hub process heard it too
    refused = Event(event="command_result", agent_id="edge", ok=False, at=6.0, code="replayed", command_id="cmd-1")
    reg.update_deployment_from_event(refused)
    reg.update_deployment_from_event(refused)
    actions = [a["action"] for a in reversed(reg.list_audit(target="edge"))]
    assert actions == ["rollback", "deployment.installed", "command.refused_again"]


# --- the runtime's heartbeat and the freshness line ---------------------------------------------------
def test_freshness_says_who_listens_since_when_and_when_nobody_did(reg):
    assert freshness_line(reg.listening()) == (
        "no hub has listened yet; agent states may be stale (run `edgeloop hub serve`)")
    cid = reg.hub_client_id()
    assert cid == reg.hub_client_id() and cid.startswith("edgeloop-hub-")  # fixed per registry
    reg.listener_started(cid, pid=4242, host="ws", broker="mqtt://b:1883", topic_root="edgeloop/v1", heartbeat_s=1)
    assert reg.listening()["running"] and not reg.listening()["listening"]
    assert "(pid 4242 on ws) cannot reach the broker mqtt://b:1883" in freshness_line(reg.listening())
    reg.listener_heartbeat(cid, connected=True)
    now = reg.listening()
    assert now["listening"] and now["since"] is not None
    assert freshness_line(now).startswith("hub listening since ") and "pid 4242 on ws" in freshness_line(now)
    late = reg.listening(at=time.time() + 60)  # no heartbeat for a minute: the runtime is gone
    assert not late["listening"] and not late["running"]
    assert freshness_line(late).startswith("no hub has listened since ")
    reg.listener_stopped(cid, connected=True)
    line = freshness_line(reg.listening())
    assert line.startswith("no hub has listened since ") and line.endswith("(run `edgeloop hub serve`)")


# --- the hub config -------------------------------------------------------------------------------------
def test_hub_config_reads_its_sections_and_names_what_is_wrong(tmp_path):
    path = tmp_path / "hub.toml"
    assert HubConfig.load(path) == HubConfig()  # no file: the defaults
    path.write_text('[fleet]\nbroker = "mqtt://b:1883"\ntopic_root = "plant-a/edgeloop/v1"\noffline_grace_s = 30\n'
                    "[runtime]\nheartbeat_s = 2.5\nbatch_max = 100\n[mqtt]\nusername = 'ignored here'\n")
    cfg = HubConfig.load(path)
    assert (cfg.broker, cfg.topic_root, cfg.offline_grace_s, cfg.heartbeat_s, cfg.batch_max, cfg.batch_ms) == (
        "mqtt://b:1883", "plant-a/edgeloop/v1", 30.0, 2.5, 100, 50.0)
    for text, problem in [('[fleet]\ntopic_root = "a/#"\n', "topic root 'a/#' is not allowed"),
                          ("[fleet]\ngrace = 3\n", "unknown key 'grace' in [fleet]"),
                          ("[runtime]\nbatch_max = 0\n", "batch_max must be a positive whole number"),
                          ("[runtime]\nheartbeat_s = true\n", "heartbeat_s must be a positive number"),
                          ("[fleet\n", "cannot read the hub config")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("(", r"\(")):
            HubConfig.load(path)


# --- one runtime per home --------------------------------------------------------------------------------
def test_the_home_lock_is_exclusive_names_its_holder_and_dies_with_it(tmp_path):
    script = ("import sys, time; from edgeloop.hub.runtime import HomeLock; "
              "HomeLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(RuntimeLockedError, match=f"pid {holder.pid}"):
            HomeLock(tmp_path).acquire()
        assert time.monotonic() - started < 1.0  # refused at once, not after a wait
    finally:
        holder.kill()
        holder.wait()
    with HomeLock(tmp_path) as lock:  # the kernel dropped the dead holder's lock
        assert lock.held and lock.holder() == os.getpid()
    assert not lock.held
