"""The rollout state machine: ``step(state, event, now) -> (new_state, actions)``, pure.

No I/O and no clock of its own: the runtime passes ``now`` (seconds), carries out the actions
(:class:`Deploy`, :class:`Rollback`, :class:`Notify`) and persists the returned state after
every step (a restarted hub resumes from it). The input state is never modified. Every change
appends an :class:`AuditRecord` (who, what, why). Operator commands that do not apply in the
current status raise :class:`RolloutStateError`; agent events that do not apply are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from edgeloop.hub.rollout.errors import RolloutError, RolloutStateError
from edgeloop.hub.rollout.events import (
    Abort,
    Action,
    AgentProgress,
    AgentReport,
    AgentsSeen,
    Approve,
    Deploy,
    Event,
    Notify,
    Pause,
    Resume,
    Rollback,
    Start,
    Tick,
)
from edgeloop.hub.rollout.gates import FAIL, PASS, evaluate
from edgeloop.hub.rollout.plan import RolloutPlan
from edgeloop.hub.rollout.selector import AgentRecord
from edgeloop.hub.rollout.state import (
    ACTIVE,
    AGENT_BAD,
    AGENT_FINAL,
    TERMINAL,
    AgentRun,
    AuditRecord,
    RolloutState,
    Wave,
)

_STAGE_ORDER = {"pending": 0, "transferring": 1, "verifying": 2, "baking": 3}
_CLOCKED = ("running", "baking", "paused", "rolling_back")  # statuses in which timeouts and bake ends apply


def new_rollout(rollout_id: str, plan: RolloutPlan, now: float, by: str = "operator") -> RolloutState:
    """A planned rollout (validated plan); feed it :class:`Start` to begin."""
    plan.validate()
    s = RolloutState(rollout_id=rollout_id, plan=plan, created_at=now, updated_at=now)
    s.audit.append(AuditRecord(1, now, by, "Plan", "planned", "planned",
                               f"planned {plan.model} {plan.version} to {plan.target} ({plan.strategy})"))
    return s


def conflicting_rollouts(rollouts: Iterable[RolloutState], plan: RolloutPlan,
                         agents: Iterable[AgentRecord]) -> tuple[list[str], list[str]]:
    """Rollouts of the same model that share an agent with ``plan``'s target: ``(blocking, superseded)``.

    One rollout per model and agent at a time: a *blocking* one is still active (the new plan is refused
    until it ends); a *superseded* one is halted and must be aborted, without rollback, before the new one
    starts, so that its rollback can never undo the new rollout. Terminal rollouts never conflict.
    """
    records = list(agents)
    wanted = set(plan.target_spec.resolve(records))
    blocking: list[str] = []
    superseded: list[str] = []
    for r in rollouts:
        if r.plan.model != plan.model or r.status not in (*ACTIVE, "halted"):
            continue
        if wanted & (_in_waves(r) | set(r.plan.target_spec.resolve(records))):
            (superseded if r.status == "halted" else blocking).append(r.rollout_id)
    return blocking, superseded


def wave_name(strategy: str, index: int, planned: int) -> str:
    """The name of wave ``index`` (0-based) of a rollout planned in ``planned`` waves: ``canary`` (the
    first of a canary rollout with waves after it), ``wave N`` (1-based), ``wave N (late joiners)``
    past the plan."""
    if index == 0 and strategy == "canary" and planned > 1:
        return "canary"
    return f"wave {index + 1}" + (" (late joiners)" if index >= planned else "")


class _Step:
    def __init__(self, state: RolloutState, event: Event, now: float) -> None:
        self.s = state
        self.event = event
        self.now = now
        self.from_status = state.status
        self.actions: list[Action] = []
        self.actor = _actor(event)

    def log(self, what: str, why: str = "") -> None:
        seq = self.s.audit[-1].seq + 1 if self.s.audit else 1
        self.s.audit.append(AuditRecord(seq, self.now, self.actor, type(self.event).__name__, self.from_status,
                                        self.s.status, what, why))
        self.s.updated_at = self.now

    def notify(self, level: str, message: str) -> None:
        self.actions.append(Notify(level, message, {"rollout": self.s.rollout_id, "status": self.s.status}))


def _actor(event: Event) -> str:
    if isinstance(event, (AgentProgress, AgentReport)):
        return f"agent:{event.agent}"
    return getattr(event, "by", "hub")


def step(state: RolloutState, event: Event, now: float) -> tuple[RolloutState, list[Action]]:
    """Apply ``event`` at time ``now``: handle it, then time out stuck agents and end bakes, then judge the
    current wave (next wave, approval, halt or rollback). Returns a new state (``state`` is left as it was)
    and the actions to carry out. A terminal rollout returns itself and no action."""
    if state.status in TERMINAL or (state.status == "halted" and not isinstance(event, Abort)):
        if isinstance(event, (Start, Pause, Resume, Approve, Abort)):
            raise RolloutStateError(
                f"rollout {state.rollout_id} is {state.status}"
                + (f" ({state.reason})" if state.reason else "")
                + ("; abort it (with --rollback to return the agents to their previous version)"
                   if state.status == "halted" else "; start a new rollout"))
        return state, []
    ctx = _Step(state.clone(), event, now)
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise RolloutError(f"unknown rollout event {event!r}", code="bad_event")
    handler(ctx, event)
    if ctx.s.status in _CLOCKED:
        _clock(ctx)
    _settle(ctx)
    return ctx.s, ctx.actions


# --- events ------------------------------------------------------------------------------------
def _merge_agents(ctx: _Step, records: Iterable[AgentRecord]) -> None:
    s = ctx.s
    target = s.plan.target_spec
    in_waves = _in_waves(s)
    for rec in records:
        old = s.agents.get(rec.id)
        if old == rec:
            continue
        s.agents[rec.id] = rec
        if s.status == "planned" or not target.matches(rec) or rec.id in s.initial_targets or rec.id in in_waves:
            continue
        if s.plan.late_joiners == "exclude":
            if rec.id not in s.late_excluded:
                s.late_excluded.append(rec.id)
                ctx.log(f"late joiner {rec.id} left out", "the plan excludes agents that match after the start")
        elif old is None or not target.matches(old):
            ctx.log(f"late joiner {rec.id} will be in a coming wave", "the plan includes late joiners")


def _on_start(ctx: _Step, ev: Start) -> None:
    s = ctx.s
    if s.status != "planned":
        raise RolloutStateError(f"rollout {s.rollout_id} has already started ({s.status})")
    _merge_agents(ctx, ev.agents)
    target = s.plan.target_spec
    matching = target.resolve(s.agents.values())
    online = [i for i in matching if s.agents[i].online]
    if not online:
        raise RolloutError(
            f"target {s.plan.target!r} matches no online agent ({len(matching)} match, {len(s.agents)} known): "
            "check the agents' tags and that they are connected, then start again", code="no_targets")
    s.initial_targets = matching
    s.planned_counts = s.plan.wave_counts(len(online))
    s.status = "running"
    ctx.log(f"started: {len(online)} online agents targeted in {len(s.planned_counts)} wave(s) "
            f"{s.planned_counts}" + (f", {len(matching) - len(online)} offline" if len(matching) > len(online) else ""))
    _next_wave(ctx)


def _on_seen(ctx: _Step, ev: AgentsSeen) -> None:
    _merge_agents(ctx, ev.agents)


def _on_progress(ctx: _Step, ev: AgentProgress) -> None:
    s = ctx.s
    w = s.wave_of(ev.agent)
    if w is None or s.status == "planned":
        return
    a = w.agents[ev.agent]
    if s.status == "rolling_back":
        if a.rollback == "sent" and ev.stage in ("rolled_back", "failed"):
            ok = ev.stage == "rolled_back"
            _set(w, a, "rolled_back" if ok else "failed", ctx.now, rollback="confirmed" if ok else "failed",
                 reason=a.reason if ok else f"rollback failed: {ev.reason or 'no reason given'}")
            ctx.log(f"{a.id} {'rolled back' if ok else 'could not roll back'}", ev.reason)
        return
    if a.status in AGENT_FINAL:
        return
    if ev.stage == "failed":
        _set(w, a, "failed", ctx.now, reason=ev.reason or "the agent reported a failure", verdict=FAIL)
        ctx.log(f"{a.id} failed in {a.status}", ev.reason)
    elif ev.stage == "rolled_back":  # the device's dead-man switch reverted it: it no longer runs the new version
        _set(w, a, "rolled_back", ctx.now, activated=True, rollback="confirmed", verdict=FAIL,
             reason=f"the device reverted on its own: {ev.reason or 'no reason given'}")
        ctx.log(f"{a.id} reverted on its own", ev.reason)
    elif _STAGE_ORDER[ev.stage] > _STAGE_ORDER[a.status]:
        extra = {"activated": True, "baking_since": ctx.now} if ev.stage == "baking" else {}
        _set(w, a, ev.stage, ctx.now, **extra)
        ctx.log(f"{a.id} {ev.stage}", ev.reason)


def _on_report(ctx: _Step, ev: AgentReport) -> None:
    s = ctx.s
    w = s.wave_of(ev.agent)
    if w is None or s.status not in ("running", "baking", "paused"):
        return
    a = w.agents[ev.agent]
    if a.status in AGENT_FINAL:
        return
    verdict = evaluate(s.plan.gates, ev.observation)
    changes: dict = {"observation": ev.observation, "verdict": verdict.status, "reason": verdict.reason}
    if ev.observation.installed_ok and not a.activated:
        changes.update(activated=True, baking_since=ctx.now)
    if verdict.status == FAIL:
        _set(w, a, "failed", ctx.now, **changes)
        ctx.log(f"{a.id} failed a gate", verdict.reason)
    else:
        status = "baking" if changes.get("activated") else a.status
        if status != a.status or verdict.status != a.verdict:
            _set(w, a, status, ctx.now, **changes)
            ctx.log(f"{a.id} gates: {verdict.status}", verdict.reason)
        else:
            w.agents[a.id] = replace(a, **changes)  # new figures, same verdict: kept, not audited


def _on_pause(ctx: _Step, ev: Pause) -> None:
    s = ctx.s
    if s.status not in ("running", "baking", "awaiting_approval"):
        raise RolloutStateError(f"rollout {s.rollout_id} is {s.status}: only a running, baking or waiting "
                                "rollout can be paused")
    s.paused_from = s.status
    s.status = "paused"
    ctx.log(f"paused by {ev.by}; no new wave starts until resumed (agents already deploying go on)", ev.why)


def _on_resume(ctx: _Step, ev: Resume) -> None:
    s = ctx.s
    if s.status != "paused":
        raise RolloutStateError(f"rollout {s.rollout_id} is {s.status}, not paused: nothing to resume")
    s.status = "awaiting_approval" if s.paused_from == "awaiting_approval" else "running"
    s.paused_from = None
    ctx.log(f"resumed by {ev.by}", ev.why)


def _on_approve(ctx: _Step, ev: Approve) -> None:
    s = ctx.s
    if s.status != "awaiting_approval":
        raise RolloutStateError(f"rollout {s.rollout_id} is {s.status}: approve when it awaits approval "
                                "(after a wave passed its gates)")
    s.status = "running"
    ctx.log(f"next wave approved by {ev.by}", ev.why)
    _next_wave(ctx)


def _on_abort(ctx: _Step, ev: Abort) -> None:
    s = ctx.s
    if s.status == "rolling_back":
        raise RolloutStateError(f"rollout {s.rollout_id} is already rolling back; wait for it to finish")
    why = f"aborted by {ev.by}" + (f": {ev.why}" if ev.why else "")
    s.reason = f"{s.reason}; then {why}" if s.reason else why
    s.paused_from = None
    if ev.rollback:
        _begin_rollback(ctx, s.waves, "all")
    else:
        s.status = "aborted"
        ctx.log("aborted; agents keep the version they run now", ev.why)
        ctx.notify("warning", f"rollout {s.rollout_id} {why}")


def _on_tick(ctx: _Step, ev: Tick) -> None:
    return None


_HANDLERS: dict[type, Callable[[_Step, Any], None]] = {
    Start: _on_start, AgentsSeen: _on_seen, AgentProgress: _on_progress, AgentReport: _on_report,
    Pause: _on_pause, Resume: _on_resume, Approve: _on_approve, Abort: _on_abort, Tick: _on_tick,
}


# --- time, waves, rollback ---------------------------------------------------------------------
def _set(w: Wave, a: AgentRun, status: str, now: float, **changes) -> None:
    w.agents[a.id] = replace(a, status=status, since=now if status != a.status else a.since, **changes)


def _clock(ctx: _Step) -> None:
    """Timeouts and bake ends: a stuck agent becomes timed_out (visible) and never blocks the rollout."""
    s, now = ctx.s, ctx.now
    timeout, bake = s.plan.agent_timeout_seconds, s.plan.bake_seconds
    for w in s.waves:
        if w.status not in ("deploying", "baking") and s.status != "rolling_back":
            continue  # a wave that passed or failed has nothing left to time out
        for a in list(w.agents.values()):
            if a.rollback == "sent" and a.rollback_sent_at is not None and now - a.rollback_sent_at >= timeout:
                _set(w, a, "timed_out", now, rollback="timed_out",
                     reason=f"rollback not confirmed within {timeout:g} s")
                ctx.log(f"{a.id} did not confirm the rollback", f"no answer within {timeout:g} s")
            elif a.rollback is not None or w.status not in ("deploying", "baking"):
                continue
            elif a.status in ("pending", "transferring", "verifying") and now - a.since >= timeout:
                _set(w, a, "timed_out", now, reason=f"stuck in {a.status} for {timeout:g} s")
                ctx.log(f"{a.id} timed out in {a.status}", f"no progress for {timeout:g} s")
            elif a.status == "baking" and a.baking_since is not None:
                baked = now - a.baking_since
                if a.verdict == PASS and baked >= bake:
                    _set(w, a, "healthy", now, reason=f"passed all gates over a {bake:g} s bake")
                    ctx.log(f"{a.id} healthy", f"gates passed over {bake:g} s")
                elif baked >= bake + timeout:
                    why = a.reason or "it reported nothing"
                    _set(w, a, "timed_out", now, reason=f"not enough data {bake + timeout:g} s after activation "
                                                        f"({why})")
                    ctx.log(f"{a.id} timed out while baking", why)


def _in_waves(s: RolloutState) -> set[str]:
    return {i for w in s.waves for i in w.agents}


def _candidates(s: RolloutState) -> list[str]:
    """Online agents that match the target now and are in no wave yet (late joiners by the plan's rule)."""
    target = s.plan.target_spec
    taken = _in_waves(s)
    initial = set(s.initial_targets)
    excluded = set(s.late_excluded)
    ids = [a.id for a in s.agents.values() if a.online and a.id not in taken and a.id not in excluded
           and target.matches(a) and (s.plan.late_joiners == "include" or a.id in initial)]
    return sorted(ids, key=lambda i: (i not in initial, i))  # agents targeted at the start first


def _next_wave(ctx: _Step) -> None:
    s = ctx.s
    cands = _candidates(s)
    if not cands:
        target = s.plan.target_spec
        taken = _in_waves(s)
        s.not_reached = sorted(a.id for a in s.agents.values() if target.matches(a) and a.id not in taken
                               and a.id not in s.late_excluded
                               and (s.plan.late_joiners == "include" or a.id in s.initial_targets))
        s.status = "completed"
        ctx.log(f"completed: {len(taken)} agents run {s.plan.version}",
                f"{len(s.not_reached)} targeted agents were offline: {', '.join(s.not_reached)}"
                if s.not_reached else "")
        ctx.notify("info", f"rollout {s.rollout_id} completed")
        return
    idx = len(s.waves)
    last = len(s.planned_counts) - 1
    size = s.planned_counts[idx] if idx < last else len(cands)
    name = wave_name(s.plan.strategy, idx, last + 1)
    chosen = cands[:size]
    runs = {i: AgentRun(i, "pending", ctx.now, previous_version=s.agents[i].version) for i in chosen}
    s.waves.append(Wave(idx, name, runs, "deploying", ctx.now))
    s.status = "running"
    ctx.actions.append(Deploy.of(s.plan, tuple(chosen), idx))
    ctx.log(f"{name} started: deploying to {len(chosen)} agent(s)", ", ".join(chosen[:10])
            + (f" and {len(chosen) - 10} more" if len(chosen) > 10 else ""))


def _got_new_version(a: AgentRun) -> bool:
    """Sent the new version and may run it: all but those that failed before activating or already reverted."""
    if a.rollback is not None:
        return False
    return a.activated or a.status not in ("failed", "rolled_back")


def _begin_rollback(ctx: _Step, waves: Iterable[Wave], scope: str) -> None:
    s = ctx.s
    s.rollback_scope = scope
    by_version: dict[str | None, list[str]] = {}
    for w in waves:
        for a in list(w.agents.values()):
            if _got_new_version(a):
                w.agents[a.id] = replace(a, rollback="sent", rollback_sent_at=ctx.now)
                by_version.setdefault(a.previous_version, []).append(a.id)
    if not by_version:
        s.status = "rolled_back"
        ctx.log("nothing to roll back: no agent runs the new version", s.reason or "")
        ctx.notify("error", f"rollout {s.rollout_id} stopped: {s.reason}")
        return
    s.status = "rolling_back"
    for version, ids in sorted(by_version.items(), key=lambda kv: str(kv[0])):
        ctx.actions.append(Rollback(tuple(ids), s.plan.model, version, s.reason or ""))
    n = sum(len(v) for v in by_version.values())
    ctx.log(f"rolling back {n} agent(s) ({'this wave' if scope == 'wave' else 'every wave'})", s.reason or "")
    ctx.notify("error", f"rollout {s.rollout_id} rolling back {n} agent(s): {s.reason}")


def _fail_wave(ctx: _Step, w: Wave, bad: list[AgentRun]) -> None:
    s = ctx.s
    w.status = "failed"
    w.ended_at = ctx.now
    why = "; ".join(f"{a.id}: {a.reason}" for a in bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
    s.reason = f"{w.name} failed: {why}"
    s.paused_from = None
    policy = s.plan.failure_policy
    if policy == "halt":
        s.status = "halted"
        ctx.log(f"halted: {w.name} failed its gates", s.reason)
        ctx.notify("error", f"rollout {s.rollout_id} halted: {s.reason}")
    else:
        _begin_rollback(ctx, [w] if policy == "rollback_wave" else s.waves, "wave" if policy == "rollback_wave"
                        else "all")


def _settle(ctx: _Step) -> None:
    """After each event: judge the current wave, move on to the next, finish a rollback."""
    s = ctx.s
    if s.status == "rolling_back":
        if not any(a.rollback == "sent" for w in s.waves for a in w.agents.values()):
            s.status = "rolled_back"
            ctx.log("rolled back", s.reason or "")
            ctx.notify("warning", f"rollout {s.rollout_id} rolled back: {s.reason}")
        return
    if s.status not in ("running", "baking", "paused") or not s.waves:
        return
    w = s.waves[-1]
    if w.status in ("deploying", "baking"):
        bad = [a for a in w.agents.values() if a.status in AGENT_BAD]
        if bad:
            _fail_wave(ctx, w, bad)
            return
        if all(a.status == "healthy" for a in w.agents.values()):
            w.status = "passed"
            w.ended_at = ctx.now
            ctx.log(f"{w.name} passed its gates", f"{len(w.agents)} agent(s) healthy")
        elif w.status == "deploying" and all(a.status in ("baking", "healthy") for a in w.agents.values()):
            w.status = "baking"
            ctx.log(f"{w.name}: every agent activated the new version; baking")
    if s.status == "paused":
        return
    if w.status == "passed":
        if s.plan.approval_required and _candidates(s):
            s.status = "awaiting_approval"
            ctx.log(f"{w.name} passed: waiting for approval of the next wave")
            ctx.notify("info", f"rollout {s.rollout_id}: {w.name} passed; approve the next wave")
        else:
            _next_wave(ctx)
        return
    if w.status == "baking" and s.status != "baking":
        s.status = "baking"
        ctx.log(f"{w.name} baking for {s.plan.bake_seconds:g} s")
