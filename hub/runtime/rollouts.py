"""The rollout driver: the hub runtime's I/O side of the pure state machine (:mod:`edgeloop.hub.rollout`).

API (stable; the hub runtime creates one, tests and the scale simulation may too)::

    driver = RolloutDriver(hub, fleet, tick_s=0.5)   # a started Fleet (the runtime's)
    driver.start()          # loads every active or halted rollout from the registry and resumes it
    driver.observe(kind, obj)   # the fleet's on_change hook: "event", "state", "status", "serving", "drift"
    driver.wait_idle(timeout)   # tests: True once everything queued so far was handled
    driver.stop()

Operator commands never call the driver directly: :class:`edgeloop.hub.services.Hub` stores them as
requests in the registry (``rollout_start``, ``rollout_pause`` ... in :mod:`edgeloop.hub.services.rollouts`)
and the driver carries them out within ``tick_s`` -- the same way from the CLI, the GUI and scripts,
in this process or another one.

One thread (``hub-rollouts``) owns the states. It takes what the fleet reports (queued by
:meth:`observe`, never blocking the fleet's intake), turns it into events --

* a deploy command accepted (``command_result`` ok) -> ``AgentProgress(transferring)``;
* the deploy's outcome (the delivery's install result) -> ``AgentProgress(baking)`` and an
  ``AgentReport`` with ``installed_ok``/``smoke_ok``, or ``AgentProgress(failed)`` with the code and message;
* a ``reverted`` event (the device's dead-man switch) -> ``AgentProgress(rolled_back)``;
* ``serving`` reports (requests, errors, p99 of the new version since activation, and the p99 of the
  version it replaced on that device), drift reports of the new version (its drifted features) and,
  where the hub has them, shadow figures (``Hub.shadow_summary``) -> ``AgentReport`` observations;
* agents' states and statuses -> ``AgentsSeen`` (tags, online, the version they run);
* a timer -> ``Tick`` every ``tick_s``; operator requests -> ``Start``/``Pause``/``Resume``/``Approve``/``Abort``

-- steps the machine, stores the new state (and its new audit records) after each batch of steps and
only then carries out the actions: ``Deploy`` and ``Rollback`` on a small pool of worker threads
(:meth:`Hub.deploy` / :meth:`Hub.rollback` over the runtime's fleet; their outcomes come back as
events), ``Notify`` to the log and the registry's audit. A driver started on a registry holding a
rollout in progress sends again what was in flight when the previous one stopped (deploys to the
current wave's agents not yet activated, rollbacks not yet confirmed); agents that hold the bundle
already answer at once.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from edgeloop.agent.errors import EdgeloopError
from edgeloop.agent.wire.commands import Probation
from edgeloop.hub.registry.rollouts import RolloutStore
from edgeloop.hub.rollout.errors import RolloutError
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
from edgeloop.hub.rollout.machine import conflicting_rollouts, new_rollout, step
from edgeloop.hub.rollout.plan import RolloutPlan
from edgeloop.hub.rollout.selector import AgentRecord
from edgeloop.hub.rollout.state import AgentRun, RolloutState
from edgeloop.hub.runtime.rollout_device import DeviceFollowUp
from edgeloop.hub.runtime.rollout_figures import AgentFigures

log = logging.getLogger(__name__)

TICK_S = 0.5
SAVE_EVERY_S = 1.0  # a state that only took new figures is stored at most this often
REQUEST_MAX_AGE_S = 120.0  # an operator request older than this when the driver sees it is refused
WORKERS = 8
_OPERATOR: dict[str, type[Pause] | type[Resume] | type[Approve]] = {"pause": Pause, "resume": Resume,
                                                                  "approve": Approve}


def agent_record(row: dict, model: str) -> AgentRecord:
    """An agent row of the registry as the state machine sees it, for a rollout of ``model``."""
    versions = {m["model"]: m.get("version") for m in row.get("models") or []}  # an agent may serve several
    if not versions and row.get("active_model"):
        versions = {row["active_model"]: row.get("active_version")}
    return AgentRecord(id=row["agent_id"], tags=dict(row.get("tags") or {}), online=row.get("status") == "online",
                       version=versions.get(model))


class RolloutDriver:
    """Drives every rollout of one hub home (see the module docstring)."""

    def __init__(self, hub: Any, fleet: Any, *, tick_s: float = TICK_S, clock: Callable[[], float] = time.time,
                 workers: int = WORKERS) -> None:
        self.hub = hub
        self.fleet = fleet
        self.store = RolloutStore(hub.registry)
        self.tick_s = float(tick_s)
        self.clock = clock
        self.states: dict[str, RolloutState] = {}
        self._q: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._work: queue.Queue = queue.Queue()  # deploys and rollbacks, for the worker threads
        self._workers = [threading.Thread(target=self._worker, name=f"rollout-action-{i}", daemon=True)
                         for i in range(workers)]
        self.figures = AgentFigures()  # what the agents reported, for the gates (rollout_figures.py)
        self._dirty: set[str] = set()
        self._saved: dict[str, tuple[int, float]] = {}  # rollout -> (audit records stored, when)
        self._actions: list[tuple[str, Action]] = []
        self._busy = 0  # queue items taken and not yet handled (wait_idle)
        self._last_tick = 0.0
        self._overrides: dict[str, str | None] = {}  # rollout -> the gate override reason it was started with
        # the hub's confirm of a probation, the plan's capture settings (rollout_device.py)
        self.device = DeviceFollowUp(hub, fleet, lambda fn, args: self._work.put((fn, args)),
                                     lambda *out: self._q.put(("outcome", out)))

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> RolloutDriver:
        for row in self.store.list_rollouts(active_only=True):
            try:
                state = self.store.load(row["id"])
            except EdgeloopError as exc:  # written by another hub version, damaged: shown, never driven
                log.error("rollout %s cannot be resumed: %s", row["id"], exc)
                continue
            self.states[state.rollout_id] = state
            self._saved[state.rollout_id] = (len(state.audit), time.monotonic())
            self._resend_in_flight(state)
            self.device.resumed(state)
        self._thread = threading.Thread(target=self._loop, name="hub-rollouts", daemon=True)
        self._thread.start()
        for t in self._workers:
            t.start()
        if self.states:
            log.info("resuming rollouts %s", ", ".join(self.states))
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._q.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self._flush_figures()
        except Exception:
            log.exception("rollout driver: could not store the last figures")
        for _ in self._workers:  # a deploy in flight is left to finish on its own (daemon threads)
            self._work.put(None)

    def _worker(self) -> None:
        while True:
            job = self._work.get()
            if job is None or self._stopping.is_set():
                return
            fn, args = job
            try:
                fn(*args)
            except Exception:
                log.exception("rollout action failed")

    def observe(self, kind: str, obj: object) -> None:
        """The fleet's ``on_change`` (its worker thread, after each batch commits): queued, never blocks."""
        if kind in ("event", "state", "status", "serving", "drift") and not self._stopping.is_set():
            self._q.put((kind, obj))

    def wait_idle(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._q.empty() and self._busy == 0:
                return True
            time.sleep(0.02)
        return False

    # --- the loop ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            items = self._take()
            if items is None:
                break
            try:
                self._requests()
                for item in items:
                    self._handle(item)
                now = self.clock()
                if now - self._last_tick >= self.tick_s:
                    self._last_tick = now
                    for rid in list(self.states):
                        self._step(rid, Tick())
                self._flush()
            except Exception:
                log.exception("rollout driver: a batch failed")
            finally:
                self._busy = 0

    def _take(self) -> list | None:
        try:
            first = self._q.get(timeout=min(self.tick_s, 0.25))
        except queue.Empty:
            return []
        items = [first]
        while len(items) < 5000:
            try:
                items.append(self._q.get_nowait())
            except queue.Empty:
                break
        self._busy = len(items)
        if any(i is None for i in items):
            return None
        return items

    def _step(self, rid: str, event: Event) -> None:
        state = self.states.get(rid)
        if state is None:
            return
        new, actions = step(state, event, self.clock())
        if new is state:
            return
        self.states[rid] = new
        self._dirty.add(rid)
        self._actions.extend((rid, a) for a in actions)

    def _flush(self, force: bool = False) -> None:
        """Store the changed states, then carry out the actions (a crash in between resends them).

        A state whose audit grew (every transition appends a record) is stored at once; one that only took
        new figures (an observation with the same verdict, not audited) at most every :data:`SAVE_EVERY_S`,
        which spares rewriting a large state on every serving report."""
        now = time.monotonic()
        for rid in sorted(self._dirty):
            state = self.states[rid]
            saved = self._saved.get(rid)
            if (not force and not state.terminal and saved is not None and len(state.audit) == saved[0]
                    and now - saved[1] < SAVE_EVERY_S):
                continue
            self.store.save(state)
            self._saved[rid] = (len(state.audit), now)
            self._dirty.discard(rid)
            if state.terminal:
                del self.states[rid]
                self._forget(rid)
        actions, self._actions = self._actions, []
        for rid, action in actions:
            self._carry_out(rid, action)

    def _flush_figures(self) -> None:
        for rid in list(self._dirty):
            if rid in self.states:
                self.store.save(self.states[rid])
        self._dirty.clear()

    def _forget(self, rid: str) -> None:
        self.figures.forget(rid)
        self.device.forget(rid)

    # --- what the fleet reports -------------------------------------------------------------------
    def _handle(self, item: tuple) -> None:
        kind, obj = item
        if kind == "outcome":
            self._outcome(*obj)
        elif kind == "event":
            self._event(obj)
        elif kind in ("state", "status"):
            self._seen(obj.agent_id if kind == "state" else obj[0])
        elif kind == "serving":
            self.figures.serving[obj.agent_id] = obj
            self._report_all(obj.agent_id)
        elif kind == "drift":
            for rid in self.figures.drift_report(obj, list(self.states.values())):
                self._report(rid, obj.agent_id)

    def _runs(self, agent_id: str) -> list[tuple[str, AgentRun]]:
        out = []
        for rid, st in self.states.items():
            w = st.wave_of(agent_id)
            if w is not None:
                out.append((rid, w.agents[agent_id]))
        return out

    def _event(self, ev: Any) -> None:
        for rid, run in self._runs(ev.agent_id):
            if ev.event == "command_result" and ev.ok and run.status == "pending" and run.rollback is None:
                self._step(rid, AgentProgress(ev.agent_id, "transferring", ev.message))
            elif ev.event == "reverted" and run.status in ("baking", "healthy") and run.rollback is None:
                version = (ev.details or {}).get("version")
                if version in (None, self.states[rid].plan.version):
                    why = f"{ev.code}: {ev.message}" if ev.code else ev.message
                    self._step(rid, AgentProgress(ev.agent_id, "rolled_back", why))

    def _seen(self, agent_id: str) -> None:
        if not self.states:
            return
        try:
            row = self.hub.registry.get_agent(agent_id)
        except EdgeloopError:
            return
        for rid, st in list(self.states.items()):
            rec = agent_record(row, st.plan.model)
            if st.agents.get(agent_id) != rec:
                self._step(rid, AgentsSeen((rec,)))

    def _outcome(self, rid: str, agent_id: str, kind: str, ok: bool, reason: str) -> None:
        if rid not in self.states:
            return
        if kind == "deploy":
            if ok:
                self.figures.installed[(rid, agent_id)] = True
                self._step(rid, AgentProgress(agent_id, "baking", reason))
                self.device.activated(self.states[rid], agent_id)
                self._report(rid, agent_id)
            else:
                self._step(rid, AgentProgress(agent_id, "failed", reason))
        elif kind == "confirm":
            if not ok:  # its device reverts at its probation deadline: the agent cannot pass
                self._step(rid, AgentProgress(agent_id, "failed", f"the hub's confirm of its probation failed: "
                                                                  f"{reason}"))
        elif kind == "capture":
            pass  # logged and audited by the follow-up (no health matter)
        else:
            self._step(rid, AgentProgress(agent_id, "rolled_back" if ok else "failed", reason))

    def _report_all(self, agent_id: str) -> None:
        for rid, _ in self._runs(agent_id):
            self._report(rid, agent_id)

    def _report(self, rid: str, agent_id: str) -> None:
        """An ``AgentReport`` of what is known of ``agent_id`` in rollout ``rid`` (once it installed)."""
        st = self.states.get(rid)
        w = st.wave_of(agent_id) if st is not None else None
        if st is None or w is None or not self.figures.installed.get((rid, agent_id)):
            return
        run = w.agents[agent_id]
        if run.status not in ("pending", "transferring", "verifying", "baking"):
            return
        self._step(rid, AgentReport(agent_id, self.figures.observation(st, run, self._shadow(agent_id, st.plan.model))))
        if rid in self.states:
            self.device.judged(self.states[rid], agent_id)

    def _shadow(self, agent_id: str, model: str) -> dict:
        summary = getattr(self.hub, "shadow_summary", None)
        if summary is None:
            return {}
        try:
            return summary(agent_id, model) or {}
        except Exception:
            log.debug("no shadow summary for %s", agent_id, exc_info=True)
            return {}

    # --- operator requests ------------------------------------------------------------------------
    def _requests(self) -> None:
        """Carry out the operator requests in order; each outcome is recorded once its state is stored."""
        for req in self.store.pending_requests():
            ok, result = True, {}
            try:
                if self.clock() - req["created_at"] > REQUEST_MAX_AGE_S:
                    raise RolloutError(f"the request waited {self.clock() - req['created_at']:.0f} s for the hub "
                                       "runtime and was not carried out; give the command again",
                                       code="request_expired")
                result = self._carry_request(req)
            except EdgeloopError as exc:
                ok, result = False, {"error": str(exc), "code": exc.code,
                                     **({"problems": exc.problems} if hasattr(exc, "problems") else {})}
            except Exception as exc:
                log.exception("rollout request %s failed", req["id"])
                ok, result = False, {"error": f"{type(exc).__name__}: {exc}", "code": "internal"}
            self._flush(force=True)
            self.store.finish_request(req["id"], ok, result)

    def _carry_request(self, req: dict) -> dict:
        cmd, args, by = req["command"], req["args"], req["by"]
        if cmd == "start":
            state = self._start(RolloutPlan.from_dict(args["plan"]), by, args.get("override_reason"))
            return {"rollout": state.rollout_id, "status": state.status}
        rid = req["rollout_id"]
        if rid not in self.states:
            row = self.store.get(rid)  # unknown: NotFoundError; terminal: the machine's refusal
            self.states[rid] = self.store.load(row["id"])
        why = args.get("why", "")
        ev: Event
        if cmd == "abort":
            ev = Abort(by=by, why=why, rollback=bool(args.get("rollback")))
        else:
            ev = _OPERATOR[cmd](by=by, why=why)
        try:
            self._step(rid, ev)
        finally:
            if self.states[rid].terminal and rid not in self._dirty:
                del self.states[rid]
        self.hub.registry.audit(by, f"rollout.{cmd}", rid, why=why, **({"rollback": bool(args.get("rollback"))}
                                                                      if cmd == "abort" else {}))
        return {"rollout": rid, "status": self.states[rid].status if rid in self.states else "?"}

    def _start(self, plan: RolloutPlan, by: str, override_reason: str | None) -> RolloutState:
        plan.validate()
        ref = f"{plan.model}:{plan.version}"
        self.hub.check_deployable(ref, override_reason)  # a version below its gate is refused before anything
        self.hub.resolve_bundle(ref)  # ... and one whose bundle cannot be built or read
        records = [agent_record(r, plan.model) for r in self.hub.registry.list_agents()]
        blocking, superseded = conflicting_rollouts(self.states.values(), plan, records)
        if blocking:
            raise RolloutError(f"rollout(s) {', '.join(blocking)} of {plan.model} already target some of these agents: "
                               "wait for them to end, or abort them (`edgeloop rollout abort ID`)",
                               code="rollout_conflict")
        for rid in superseded:
            self._step(rid, Abort(by=by, why="superseded by a new rollout of the same model"))
        started: list[tuple[RolloutState, list[Action]]] = []

        def make(rid: str) -> RolloutState:
            now = self.clock()
            state, actions = step(new_rollout(rid, plan, now, by), Start(by=by, agents=tuple(records)), now)
            started.append((state, actions))
            return state

        state = self.store.add(make, by=by, override_reason=override_reason)
        self.states[state.rollout_id] = state
        self._overrides[state.rollout_id] = override_reason
        self._actions.extend((state.rollout_id, a) for a in started[-1][1])
        return state

    # --- actions ----------------------------------------------------------------------------------
    def _carry_out(self, rid: str, action: Action) -> None:
        if isinstance(action, Deploy):
            self._work.put((self._deploy, (rid, action)))
        elif isinstance(action, Rollback):
            for aid in action.agents:
                self._work.put((self._rollback, (rid, aid, action)))
        elif isinstance(action, Notify):
            getattr(log, {"error": "error", "warning": "warning"}.get(action.level, "info"))("%s", action.message)

    def _deploy(self, rid: str, action: Deploy) -> None:
        st = self.states.get(rid)
        # the machine times agents out (agent_timeout_seconds without progress); the delivery waits longer
        timeout = (st.plan.agent_timeout_seconds + st.plan.bake_seconds if st is not None else 600.0) + 60.0
        kw: dict[str, Any] = {}
        if action.memory_limit_mb is not None and "memory_limit_mb" in inspect.signature(self.hub.deploy).parameters:
            kw["memory_limit_mb"] = action.memory_limit_mb  # the device pre-flight, where the hub has it
        if action.probation is not None:
            kw["probation"] = Probation.from_dict(action.probation)  # the device's dead-man switch
        if action.drift is not None:
            kw["drift"] = dict(action.drift)  # drift window overrides, kept with the version on the device
        try:
            results = self.hub.deploy(self.fleet, list(action.agents), f"{action.model}:{action.version}",
                                      override_reason=self._override(rid), timeout=timeout, **kw)
            outs = [(r["agent"], bool(r["ok"]), f"{r['code']}: {r['message']}") for r in results]
        except Exception as exc:  # the gate, the bundle, the broker: every agent of the wave fails with it
            log.warning("rollout %s: deploy of %s failed: %s", rid, action.version, exc)
            outs = [(aid, False, f"{getattr(exc, 'code', 'error')}: {exc}") for aid in action.agents]
        for aid, ok, reason in outs:
            self._q.put(("outcome", (rid, aid, "deploy", ok, reason)))

    def _rollback(self, rid: str, agent_id: str, action: Rollback) -> None:
        if action.to_version is None:
            self._q.put(("outcome", (rid, agent_id, "rollback", False,
                                     f"it ran no earlier version of {action.model}: nothing to return to; deploy "
                                     "another version to it or stop it")))
            return
        try:
            r = self.hub.rollback(self.fleet, [agent_id], f"{action.model}:{action.to_version}",
                                  reason=action.reason, timeout=60.0)[0]
            out = (bool(r["ok"]), f"{r['code']}: {r['message']}")
        except Exception as exc:
            out = (False, f"{getattr(exc, 'code', 'error')}: {exc}")
        self._q.put(("outcome", (rid, agent_id, "rollback", *out)))

    def _override(self, rid: str) -> str | None:
        if rid not in self._overrides:
            try:
                self._overrides[rid] = self.store.get(rid).get("override_reason")
            except EdgeloopError:
                self._overrides[rid] = None
        return self._overrides[rid]

    def _resend_in_flight(self, st: RolloutState) -> None:
        """After a restart: deploy again to the current wave's agents not yet activated, roll back again
        those whose rollback was sent and not confirmed (their outcomes were lost with the old runtime)."""
        if st.status in ("running", "baking", "paused") and st.waves and st.waves[-1].status == "deploying":
            w = st.waves[-1]
            todo = tuple(a.id for a in w.agents.values() if a.status in ("pending", "transferring", "verifying"))
            if todo:
                self._actions.append((st.rollout_id, Deploy.of(st.plan, todo, w.index)))
            for a in w.agents.values():
                if a.status == "baking":
                    self.figures.installed[(st.rollout_id, a.id)] = True
        elif st.status in ("running", "baking", "paused") and st.waves:
            for a in st.waves[-1].agents.values():
                if a.status == "baking":
                    self.figures.installed[(st.rollout_id, a.id)] = True
        if st.status == "rolling_back":
            by_version: dict[str | None, list[str]] = {}
            for w in st.waves:
                for a in w.agents.values():
                    if a.rollback == "sent":
                        by_version.setdefault(a.previous_version, []).append(a.id)
            for version, ids in by_version.items():
                self._actions.append((st.rollout_id, Rollback(tuple(ids), st.plan.model, version,
                                                              st.reason or "resumed rollback")))


__all__ = ["RolloutDriver", "agent_record", "TICK_S"]
