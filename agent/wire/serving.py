"""The ``serving`` report: what an agent served with each recent model version (agent -> hub).

Published signed, at QoS 0 and not retained, on ``{root}/agents/{id}/serving`` every
``[serving] report_seconds`` while the active version is new (its first hour since activation)
and only when something changed. The hub's rollout runtime turns it into the gates'
:class:`~edgeloop.hub.rollout.gates.Observation`: requests, errors and p99 latency of the new
version since activation, and the p99 of the version it replaced on the same device.
Documented in docs/protocol.md ("Serving reports").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from edgeloop.agent.errors import MessageFormatError
from edgeloop.agent.wire.fields import objects, opt, req
from edgeloop.agent.wire.messages import Message, _check_header

MAX_VERSIONS = 8  # versions one report may carry


@dataclass(frozen=True)
class VersionServing:
    """One model version's requests since it was (last) activated in this agent process."""

    model: str
    version: str
    since: float  # wall clock of its first request since activation
    requests: int  # answered, with or without error
    errors: int  # of them, answered with an error
    p50_ms: float | None = None  # over the last requests it answered (up to 1,000); None: none answered
    p99_ms: float | None = None
    active: bool = False  # the version serving now

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "since": self.since, "requests": self.requests,
                "errors": self.errors, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "active": self.active}

    @classmethod
    def from_dict(cls, d: dict, where: str = "serving.versions[]") -> VersionServing:
        requests, errors = req(d, "requests", int, where), req(d, "errors", int, where)
        if requests < 0 or not 0 <= errors <= requests:
            raise MessageFormatError(f"{where}: requests {requests} and errors {errors} must be 0 <= errors <= "
                                     "requests")
        return cls(model=req(d, "model", str, where), version=req(d, "version", str, where),
                   since=req(d, "since", float, where), requests=requests, errors=errors,
                   p50_ms=opt(d, "p50_ms", float, where), p99_ms=opt(d, "p99_ms", float, where),
                   active=opt(d, "active", bool, where, False))


@dataclass
class ServingReport(Message):
    TYPE: ClassVar[str] = "serving"
    agent_id: str
    at: float
    versions: list[VersionServing] = field(default_factory=list)

    def version(self, model: str, version: str | None) -> VersionServing | None:
        """The entry of ``model`` ``version`` (None when this report has none)."""
        for v in self.versions:
            if v.model == model and v.version == version:
                return v
        return None

    def to_dict(self) -> dict:
        return {**self._header(), "agent_id": self.agent_id, "at": self.at,
                "versions": [v.to_dict() for v in self.versions]}

    @classmethod
    def from_dict(cls, d: dict) -> ServingReport:
        _check_header(d, cls.TYPE)
        w = cls.TYPE
        items = objects(d, "versions", w, [])
        if len(items) > MAX_VERSIONS:
            raise MessageFormatError(f"{w}: at most {MAX_VERSIONS} versions per report, got {len(items)}")
        return cls(agent_id=req(d, "agent_id", str, w), at=req(d, "at", float, w),
                   versions=[VersionServing.from_dict(item, where) for item, where in items])


__all__ = ["ServingReport", "VersionServing", "MAX_VERSIONS"]
