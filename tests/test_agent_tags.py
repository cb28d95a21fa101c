"""Agent tags: set in the agent's config ([tags]), carried in its retained state, stored by the hub,
changed from the hub (``edgeloop agent tag``: kept in the registry, overriding the agent's own), and
shown by ``edgeloop fleet`` and ``Hub.list_agents``. Real SQLite files; a real agent process carrying
its tags to a real hub is in tests/test_enroll.py."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.errors import ConfigError, MessageFormatError
from edgeloop.agent.wire.messages import MAX_TAGS, AgentState, decode
from edgeloop.hub.cli import main
from edgeloop.hub.errors import NotFoundError
from edgeloop.hub.services import Hub
from edgeloop.hub.services.enrollment import EnrollmentError
from edgeloop.hub.views import fleet_table


def state(agent_id: str = "edge-1", tags: dict | None = None, session: int = 1) -> AgentState:
    return AgentState(agent_id=agent_id, status="online", session=session, agent_version="t",
                      started_at=1000.0, trusted_keys=["k"], tags=tags or {})


def test_the_state_message_carries_tags_and_reads_back_equal():
    st = state(tags={"site": "plant-a", "hw": "pi5", "rack/slot": "b:7"})
    assert decode(st.encode()) == st and AgentState.from_dict(st.to_dict()).tags == st.tags
    untagged = state().to_dict()
    assert untagged["tags"] == {} and AgentState.from_dict(untagged).tags == {}
    del untagged["tags"]  # as older agents send it
    assert AgentState.from_dict(untagged).tags == {} and AgentState.from_dict({**untagged, "tags": None}).tags == {}


@pytest.mark.parametrize("tags, match", [
    (["site"], "must be JSON object|must be dict"),
    ({"site": 5}, "tag site = 5 is not allowed"),
    ({"bad key": "x"}, "tag name 'bad key'"),
    ({"-lead": "x"}, "tag name '-lead'"),
    ({"site": "a,b"}, "is not allowed"),
    ({"site": ""}, "is not allowed"),
    ({f"t{i}": "x" for i in range(MAX_TAGS + 1)}, f"at most {MAX_TAGS}"),
])
def test_a_state_with_bad_tags_is_refused_naming_the_field(tags, match):
    with pytest.raises(MessageFormatError, match=match):
        AgentState.from_dict({**state().to_dict(), "tags": tags})


def test_the_config_tags_table_loads_writes_and_refuses_bad_tags(tmp_path):
    doc = {"agent_id": "edge-1", "state_dir": "s", "tags": {"site": "plant-a", "hw": "pi5"}}
    cfg = AgentConfig.from_dict(doc, base=tmp_path)
    assert cfg.tags == {"site": "plant-a", "hw": "pi5"}
    (tmp_path / "a.toml").write_text(cfg.to_toml())
    assert '[tags]\nsite = "plant-a"' in cfg.to_toml() and AgentConfig.load(tmp_path / "a.toml").tags == cfg.tags
    assert AgentConfig.from_dict({**doc, "tags": {}}).tags == {} and "[tags]" not in AgentConfig.from_dict(
        {"agent_id": "edge-1", "state_dir": "s"}).to_toml()
    with pytest.raises(ConfigError, match=r"config \[tags\]: tag site = 3"):
        AgentConfig.from_dict({**doc, "tags": {"site": 3}})
    with pytest.raises(ConfigError, match=r"config \[tags\] must be a table"):
        AgentConfig.from_dict({**doc, "tags": "site=plant-a"})


@pytest.fixture
def hub(tmp_path):
    with Hub(tmp_path / "hub", actor="tests") as h:
        yield h


def test_the_hub_stores_reported_tags_and_its_own_changes_override_them(hub):
    reg = hub.registry
    reg.upsert_agent_state(state("edge-1", {"site": "plant-a", "hw": "pi4"}), member=True)
    reg.upsert_agent_state(state("edge-2"), member=True)
    assert {a["agent_id"]: a["tags"] for a in hub.list_agents()} == {"edge-1": {"hw": "pi4", "site": "plant-a"},
                                                                      "edge-2": {}}

    doc = hub.set_agent_tags("edge-1", {"hw": "pi5", "line": "3"}, remove=["site"])
    assert doc == {"agent_id": "edge-1", "tags": {"hw": "pi5", "line": "3"},
                   "reported_tags": {"site": "plant-a", "hw": "pi4"},
                   "hub_tags": {"hw": "pi5", "line": "3", "site": None}}
    audit = hub.list_audit(target="edge-1", action="agent.tags")[0]
    assert audit["actor"] == "tests" and audit["detail"]["removed"] == ["site"]

    # the agent restarts with other tags of its own: the hub's changes still apply over them
    reg.upsert_agent_state(state("edge-1", {"site": "plant-b", "hw": "pi4", "room": "2"}, session=2), member=True)
    assert hub.registry.get_agent("edge-1")["tags"] == {"hw": "pi5", "line": "3", "room": "2"}
    table = fleet_table(hub.list_agents(), now=time.time())
    row = table.rows[table.keys.index("edge-1")]
    assert row[table.header.index("tags")] == "hw=pi5,line=3,room=2"
    assert fleet_table(hub.list_agents()).rows[1][table.header.index("tags")] == "-"

    assert reg.clear_hub_tags("edge-1") and not reg.clear_hub_tags("edge-1")
    assert hub.registry.get_agent("edge-1")["tags"] == {"hw": "pi4", "room": "2", "site": "plant-b"}

    with pytest.raises(NotFoundError, match="no agent 'edge-9'"):
        hub.set_agent_tags("edge-9", {"site": "x"})
    with pytest.raises(EnrollmentError, match="tag name"):
        hub.set_agent_tags("edge-1", {"bad key": "x"})
    with pytest.raises(EnrollmentError, match="tag name"):
        hub.set_agent_tags("edge-1", remove=["bad key"])
    with pytest.raises(EnrollmentError, match="both set and removed"):
        hub.set_agent_tags("edge-1", {"hw": "pi5"}, remove=["hw"])


def test_the_cli_changes_tags_and_the_fleet_shows_them(tmp_path, capsys):
    home = tmp_path / "hub"
    with Hub(home, actor="tests") as h:
        h.registry.upsert_agent_state(state("edge-1", {"site": "plant-a"}), member=True)
    assert main(["agent", "tag", "edge-1", "hw=pi5", "--remove", "site", "--hub-only", "--home", str(home),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tags"] == {"hw": "pi5"}
    assert main(["agent", "tag", "edge-1", "hw", "--hub-only", "--home", str(home)]) == 2
    assert "not name=value" in capsys.readouterr().err
    assert main(["fleet", "--home", str(home), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["tags"] == {"hw": "pi5"}
    assert main(["fleet", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "tags" in out and "hw=pi5" in out


# --- a real agent: the hub's signed set_tags ------------------------------------------------------
@pytest.mark.broker
@pytest.mark.reliability("signed commands",
                         "set_tags signed by a key the agent does not trust; set_tags with a tag name not allowed",
                         "both refused (untrusted_key, bad_message): the agent's tags unchanged; the hub's "
                         "signed set_tags then taken, kept over a restart")
def test_the_hub_changes_a_real_agents_tags_with_a_signed_command_and_they_survive_a_restart(
        hub, mosquitto, tmp_path, agent_process, faults_tried, capsys):
    from edgeloop.agent.wire.envelope import SigningKey
    from tests.conftest import wait_until, write_agent_config

    aid = f"tags-{uuid.uuid4().hex[:8]}"
    config = write_agent_config(tmp_path, aid, mosquitto, hub.key.public_pem(), tags={"site": "plant-a", "hw": "pi4"})
    proc = agent_process(config)

    def reported() -> dict:
        return hub.registry.get_agent(aid)["reported_tags"]

    with hub.fleet(mosquitto.address.url) as fleet:
        assert fleet.wait_online([aid], 30), proc.log()
        assert wait_until(lambda: reported() == {"site": "plant-a", "hw": "pi4"}, 10)
        hub.set_agent_tags(aid, {"line": "3"})  # a hub-only change, dropped once the agent holds the tags

        faults_tried(2)
        forged = fleet.make_command(aid, "set_tags", {"tags": {"site": "evil"}})
        fleet.send(forged, key=SigningKey.generate())
        assert fleet.outcome(forged.command_id, ("command_result",), 20).code == "untrusted_key"
        bad = fleet.make_command(aid, "set_tags", {"tags": {"bad key": "x"}})
        fleet.send(bad)
        assert fleet.outcome(bad.command_id, ("command_result",), 20).code == "bad_message"

        doc = hub.send_agent_tags(fleet, aid, {"hw": "pi5"}, remove=["site"])
        assert doc["ok"] and doc["tags"] == {"hw": "pi5", "line": "3"}, doc
        assert wait_until(lambda: reported() == {"hw": "pi5", "line": "3"}, 10), reported()
        assert hub.registry.get_agent(aid)["hub_tags"] == {}

        session = hub.registry.get_agent(aid)["session"]
        assert proc.stop() == 0
        proc = agent_process(config)  # same config ([tags] site=plant-a, hw=pi4): the hub's set is kept
        assert wait_until(lambda: hub.registry.get_agent(aid)["session"] > session, 30), proc.log()
        assert reported() == {"hw": "pi5", "line": "3"}
    assert main(["agent", "tag", aid, "room=2", "--broker", mosquitto.address.url, "--home", str(hub.home.root),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tags"] == {"hw": "pi5", "line": "3", "room": "2"}
