"""Which agents a rollout targets.

A target is written as comma-separated terms::

    id:pi-01, id:pi-02          name agents (the union of all ``id:`` terms)
    site=plant-a, hw=pi5        a selector: every such term must hold (AND)
    hw!=pi4                     the tag is absent or has another value
    gpu                         the tag is present (any value)
    !legacy                     the tag is absent
    -id:pi-07                   exclude this agent whatever else matches

The target is the named agents plus every agent the selector matches, minus the exclusions.
It is resolved against the hub's agent records each time a wave starts, so an agent that
enrolls later is included or, with ``late_joiners="exclude"`` in the plan, left out visibly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeloop.hub.rollout.errors import SelectorSyntaxError

_KEY = r"[A-Za-z0-9][A-Za-z0-9_.\-/]*"
_VALUE = r"[A-Za-z0-9_.\-:/]+"
_ID = r"[A-Za-z0-9][A-Za-z0-9_.\-:]*"
_TERM = re.compile(
    rf"^(?:(?P<exclude>-id:(?P<xid>{_ID}))|(?:id:(?P<id>{_ID}))|(?P<absent>!(?P<akey>{_KEY}))"
    rf"|(?P<key>{_KEY})(?:(?P<op>!=|=)(?P<value>{_VALUE}))?)$"
)
OPS = ("=", "!=", "present", "absent")


@dataclass(frozen=True)
class AgentRecord:
    """What the state machine needs to know of one agent (the registry holds more)."""

    id: str
    tags: Mapping[str, str] = field(default_factory=dict)
    online: bool = True
    version: str | None = None  # the model version it runs now (what a rollback returns it to)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AgentRecord:
        if not isinstance(d, Mapping) or not isinstance(d.get("id"), str) or not d["id"]:
            raise SelectorSyntaxError(f"agent record {d!r} has no 'id': give each record an id, tags, online")
        tags = d.get("tags") or {}
        if not isinstance(tags, Mapping):
            raise SelectorSyntaxError(f"agent {d['id']!r}: tags must be a mapping of name to value, got {tags!r}")
        return cls(id=d["id"], tags={str(k): str(v) for k, v in tags.items()}, online=bool(d.get("online", True)),
                   version=d.get("version"))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "tags": dict(self.tags), "online": self.online, "version": self.version}


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # one of OPS
    value: str | None = None

    def holds(self, tags: Mapping[str, str]) -> bool:
        if self.op == "present":
            return self.key in tags
        if self.op == "absent":
            return self.key not in tags
        if self.op == "=":
            return tags.get(self.key) == self.value
        return tags.get(self.key) != self.value  # "!="

    def text(self) -> str:
        if self.op == "present":
            return self.key
        if self.op == "absent":
            return f"!{self.key}"
        return f"{self.key}{self.op}{self.value}"


@dataclass(frozen=True)
class Target:
    ids: tuple[str, ...] = ()
    requirements: tuple[Requirement, ...] = ()
    exclude: tuple[str, ...] = ()

    def matches(self, agent: AgentRecord) -> bool:
        if agent.id in self.exclude:
            return False
        if agent.id in self.ids:
            return True
        return bool(self.requirements) and all(r.holds(agent.tags) for r in self.requirements)

    def resolve(self, agents: Iterable[AgentRecord]) -> list[str]:
        """Ids of the matching agents, sorted (online or not: the caller decides)."""
        return sorted(a.id for a in agents if self.matches(a))

    def text(self) -> str:
        return ",".join([f"id:{i}" for i in self.ids] + [r.text() for r in self.requirements]
                        + [f"-id:{i}" for i in self.exclude])


def parse_target(text: str) -> Target:
    """Parse ``"site=plant-a,hw=pi5,-id:pi-07"``; raise :class:`SelectorSyntaxError` saying which term is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise SelectorSyntaxError("the rollout target is empty: name agents (id:pi-01) or tags (site=plant-a)")
    ids: list[str] = []
    reqs: list[Requirement] = []
    exclude: list[str] = []
    for n, raw in enumerate(text.split(","), start=1):
        term = raw.strip()
        if not term:
            raise SelectorSyntaxError(f"target {text!r}: term {n} is empty; remove the extra comma")
        m = _TERM.match(term)
        if m is None:
            raise SelectorSyntaxError(
                f"target {text!r}: term {n} {term!r} is not understood; write id:AGENT, -id:AGENT, "
                "key=value, key!=value, key (present) or !key (absent), separated by commas")
        if m["xid"]:
            exclude.append(m["xid"])
        elif m["id"]:
            ids.append(m["id"])
        elif m["akey"]:
            reqs.append(Requirement(m["akey"], "absent"))
        elif m["op"]:
            reqs.append(Requirement(m["key"], m["op"], m["value"]))
        else:
            reqs.append(Requirement(m["key"], "present"))
    if not ids and not reqs:
        raise SelectorSyntaxError(f"target {text!r} only excludes agents; add the agents or tags it is for")
    for r in reqs:
        for other in reqs:
            if r.key == other.key and r.op == "=" and other.op == "=" and r.value != other.value:
                raise SelectorSyntaxError(f"target {text!r} asks {r.key} to be both {r.value!r} and {other.value!r}; "
                                          "no agent can match: keep one")
    return Target(tuple(dict.fromkeys(ids)), tuple(dict.fromkeys(reqs)), tuple(dict.fromkeys(exclude)))
