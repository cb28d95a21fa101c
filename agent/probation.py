"""The dead-man switch's decision: is a version on probation confirmed, still waiting, or to be reverted?

A deploy that carries ``probation`` (see :class:`edgeloop.agent.wire.commands.Probation`) activates the
new version *on probation*: the previous version stays loaded and ready, and the agent reverts to it on
its own unless the new one is confirmed before the deadline (wall-clock time, so that it survives a
restart). Pure: no clock, disk or broker -- the control thread feeds it ``now`` and the served model's
health, and carries out what :func:`decide` answers (:mod:`edgeloop.agent.control`).

The conditions, all of which must hold:

* the smoke test passed -- it did, before activation, or nothing was activated;
* the model is not *failing* (the serving's rolling error window, :mod:`edgeloop.agent.serving`) at any
  point of the probation: a failing model is reverted at once (``model_failing``);
* at least ``min_requests`` real requests were served (``min_requests_not_reached`` at the deadline);
* with ``require_confirm``, the hub's signed ``confirm`` came (``confirm_timeout`` at the deadline).

Without ``require_confirm`` the probation can only pass at its deadline (the whole window is watched);
with it, the probation passes as soon as the confirm came and ``min_requests`` were served.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from edgeloop.agent.errors import StoreError
from edgeloop.agent.wire.messages import ProbationStatus

WAIT, PASS, REVERT = "wait", "pass", "revert"
CONFIRM_TIMEOUT = "confirm_timeout"
MODEL_FAILING = "model_failing"
MIN_REQUESTS_NOT_REACHED = "min_requests_not_reached"
PREVIOUS_UNAVAILABLE = "previous_unavailable"  # not a revert reason: the agent could not revert


@dataclass(frozen=True)
class OnProbation:
    """A version on probation, as the agent's state keeps it (``state.json``'s ``probation``)."""

    model: str
    version: str
    bundle_sha256: str
    previous_sha256: str | None  # what to revert to (None: nothing was active before)
    previous_version: str
    deadline: float  # wall clock (time.time())
    min_requests: int
    require_confirm: bool
    command_id: str
    confirmed: bool = False
    requests: int = 0  # counted before the last restart (the served model's counts add to these)
    errors: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> OnProbation:
        try:
            return cls(model=str(d["model"]), version=str(d["version"]), bundle_sha256=str(d["bundle_sha256"]),
                       previous_sha256=None if d.get("previous_sha256") is None else str(d["previous_sha256"]),
                       previous_version=str(d.get("previous_version", "")), deadline=float(d["deadline"]),
                       min_requests=int(d.get("min_requests", 0)), require_confirm=bool(d.get("require_confirm")),
                       command_id=str(d.get("command_id", "")), confirmed=bool(d.get("confirmed")),
                       requests=int(d.get("requests", 0)), errors=int(d.get("errors", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"state.json: probation is unreadable ({exc!r}); the agent drops it") from exc

    def counted(self, requests: int, errors: int) -> OnProbation:
        """With the counts before the last restart plus ``requests`` / ``errors`` served since."""
        return replace(self, requests=self.requests + requests, errors=self.errors + errors)

    def status(self) -> ProbationStatus:
        """What the agent's retained state shows (``probation`` in docs/protocol.md)."""
        return ProbationStatus(version=self.version, deadline=self.deadline, requests=self.requests,
                               errors=self.errors, model=self.model, bundle_sha256=self.bundle_sha256,
                               min_requests=self.min_requests, require_confirm=self.require_confirm,
                               confirmed=self.confirmed)


@dataclass(frozen=True)
class Decision:
    action: str  # WAIT, PASS or REVERT
    reason: str = ""  # for REVERT: a code (CONFIRM_TIMEOUT, ...); for PASS: how it passed
    message: str = ""


def decide(p: OnProbation, now: float, failing: bool, last_error: str = "") -> Decision:
    """What to do now with ``p`` (its counts up to date), the served model failing or not."""
    if failing:
        return Decision(REVERT, MODEL_FAILING,
                        f"{p.model} {p.version} failed {p.errors} of {p.requests} requests on probation"
                        + (f" (last: {last_error})" if last_error else ""))
    enough = p.requests >= p.min_requests
    if now < p.deadline:
        if p.require_confirm and p.confirmed and enough:
            return Decision(PASS, "confirmed", f"{p.model} {p.version} confirmed by the hub after "
                                               f"{p.requests} requests ({p.errors} failed)")
        return Decision(WAIT)
    if p.require_confirm and not p.confirmed:
        return Decision(REVERT, CONFIRM_TIMEOUT,
                        f"{p.model} {p.version} was not confirmed by the hub before its probation deadline")
    if not enough:
        return Decision(REVERT, MIN_REQUESTS_NOT_REACHED,
                        f"{p.model} {p.version} served {p.requests} requests on probation, fewer than the "
                        f"{p.min_requests} required")
    return Decision(PASS, "confirmed" if p.confirmed else "healthy",
                    f"{p.model} {p.version} passed its probation: {p.requests} requests, {p.errors} failed")


__all__ = ["OnProbation", "Decision", "decide", "WAIT", "PASS", "REVERT", "CONFIRM_TIMEOUT", "MODEL_FAILING",
           "MIN_REQUESTS_NOT_REACHED", "PREVIOUS_UNAVAILABLE"]
