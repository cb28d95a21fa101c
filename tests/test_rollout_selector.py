"""Rollout targets: ids, tags, selectors (=, !=, presence, absence) and exclusions; clear syntax errors."""

import pytest

from edgeloop.agent.errors import EdgeloopError
from edgeloop.hub.rollout.errors import SelectorSyntaxError
from edgeloop.hub.rollout.selector import AgentRecord, Requirement, parse_target

AGENTS = [
    AgentRecord("pi-01", {"site": "plant-a", "hw": "pi5"}),
    AgentRecord("pi-02", {"site": "plant-a", "hw": "pi4"}),
    AgentRecord("pi-03", {"site": "plant-b", "hw": "pi5", "legacy": "yes"}),
    AgentRecord("jet-1", {"site": "plant-a", "gpu": "orin"}, online=False),
]


@pytest.mark.parametrize("text, expected", [
    ("site=plant-a,hw=pi5", ["pi-01"]),
    ("site=plant-a", ["jet-1", "pi-01", "pi-02"]),
    ("site=plant-a, hw!=pi5", ["jet-1", "pi-02"]),  # != also matches agents without the tag
    ("hw", ["pi-01", "pi-02", "pi-03"]),  # presence
    ("!hw", ["jet-1"]),  # absence
    ("hw=pi5,!legacy", ["pi-01"]),
    ("id:pi-03,id:jet-1", ["jet-1", "pi-03"]),
    ("id:pi-03,site=plant-a,hw=pi5", ["pi-01", "pi-03"]),  # named agents plus the selector's matches
    ("site=plant-a,-id:pi-02", ["jet-1", "pi-01"]),  # exclusion wins
    ("id:pi-01,-id:pi-01,hw=pi4", ["pi-02"]),
    ("hw=pi5", ["pi-01", "pi-03"]),
])
def test_targets_resolve_against_agent_records(text, expected):
    assert parse_target(text).resolve(AGENTS) == expected


def test_text_round_trips():
    t = parse_target(" site=plant-a , hw!=pi4,gpu,!legacy,id:x-1,-id:pi-02 ")
    assert parse_target(t.text()) == t
    assert Requirement("hw", "!=", "pi4") in t.requirements and t.exclude == ("pi-02",) and t.ids == ("x-1",)


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("site=plant-a,,hw=pi5", "term 2 is empty"),
    ("site==plant-a", "term 1 'site==plant-a' is not understood"),
    ("site=plant a", "not understood"),
    ("-id:pi-02", "only excludes"),
    ("hw=pi5,hw=pi4", "both 'pi5' and 'pi4'"),
    ("id:", "not understood"),
])
def test_bad_syntax_says_which_term_and_what_to_write(text, words):
    with pytest.raises(SelectorSyntaxError) as e:
        parse_target(text)
    assert words in str(e.value)
    assert isinstance(e.value, EdgeloopError) and e.value.code == "bad_selector"
    if "not understood" in words:
        assert "key=value" in str(e.value)  # the next step: what can be written


def test_agent_record_from_dict_checks_shape():
    rec = AgentRecord.from_dict({"id": "a", "tags": {"hw": "pi5"}, "online": False, "version": "v1", "extra": 1})
    assert rec == AgentRecord("a", {"hw": "pi5"}, False, "v1") and AgentRecord.from_dict(rec.to_dict()) == rec
    with pytest.raises(SelectorSyntaxError, match="no 'id'"):
        AgentRecord.from_dict({"tags": {}})
    with pytest.raises(SelectorSyntaxError, match="tags must be a mapping"):
        AgentRecord.from_dict({"id": "a", "tags": ["hw"]})
