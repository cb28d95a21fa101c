"""The dead-man switch on the agent: a version on probation reverts on its own unless it is confirmed.

A deploy with ``probation`` (docs/protocol.md) saves the probation *before* the new version is activated,
keeps the previous version's :class:`~edgeloop.agent.runtime.ModelRunner` (and drift monitor) in memory,
loaded and ready, and lets the control thread judge it twice a second with
:func:`edgeloop.agent.probation.decide`. The decision is local: no broker is needed to revert. A revert
saves the store first (the previous bundle active, the probation ended: one atomic save), then swaps the
served model, then reports a ``reverted`` event -- kept in the outbox while the broker is unreachable.

The probation lives in ``state.json`` (its deadline is wall-clock time): an agent restarted during a
probation resumes it, loading the previous version again from its store, and reverts at once when the
deadline passed while it was down. Requests counted before a restart survive as of the last save (when
``min_requests`` was reached, or a confirm came).
"""

from __future__ import annotations

import dataclasses
import logging

from edgeloop.agent.core import AgentCore, Loaded
from edgeloop.agent.drift import DriftMonitor
from edgeloop.agent.errors import EdgeloopError, StoreError
from edgeloop.agent.probation import PASS, PREVIOUS_UNAVAILABLE, REVERT, OnProbation, decide
from edgeloop.agent.runtime import ModelRunner
from edgeloop.agent.wire.commands import Probation, confirm_target
from edgeloop.agent.wire.messages import Command, ProbationStatus

log = logging.getLogger("edgeloop.agent.service")


class NotOnProbationError(EdgeloopError):
    """A ``confirm`` for a version that is not on probation here."""

    code = "not_on_probation"


class DeadManSwitch(AgentCore):
    _probation: OnProbation | None = None  # in memory: counts as of the last restart (the served ones add)
    _probation_resumed = False  # the saved probation was read back (once per process, on the control thread)
    _fallback: tuple[ModelRunner, DriftMonitor | None] | None = None  # the previous version, loaded and ready
    _min_requests_saved = False

    def _load_stored(self, sha: str) -> Loaded:  # pragma: no cover - AgentControl's
        raise NotImplementedError

    # --- starting a probation (before the new version is activated) -------------------------------
    def _prepare_probation(self, want: dict | None, model: str, version: str, sha: str, command_id: str) -> None:
        """Before activating ``sha`` for a command: save its probation (the deploy asked for one) or end a
        running one (any other activation supersedes it). ``want['probation']`` is the deploy's argument."""
        self._resume_probation()
        raw = (want or {}).get("probation")
        running = self._probation
        if running is not None and running.model and running.model != model:  # another model's: it goes on
            if raw is not None:  # one probation at a time per agent
                log.warning("deploy %s asks for a probation of %s %s while %s %s is on probation: it is activated "
                            "without one", command_id, model, version, running.model, running.version)
            return
        if raw is None:
            if running is not None:
                log.info("probation of %s %s superseded by command %s", running.model, running.version, command_id)
                self._end_probation()
            return
        terms = Probation.from_dict(raw)
        if running is not None:  # still unconfirmed: revert to the last version that was not on probation
            prev_sha, prev_version, fallback = running.previous_sha256, running.previous_version, self._fallback
        else:
            active = self.store.active(model)  # that model's version: the one it reverts to
            served = self.serving.lookup(model) if self.serving.runner(model) is not None else None
            prev_sha, prev_version = (active.sha256, active.version) if active else (None, "")
            fallback = (served.runner, served.monitor) if served is not None else None
        if prev_sha is None or prev_sha == sha or fallback is None:
            log.warning("deploy %s asks for a probation of %s %s, but there is no other version to revert to: "
                        "it is activated without one", command_id, model, version)
            self._end_probation()
            return
        p = OnProbation(model=model, version=version, bundle_sha256=sha, previous_sha256=prev_sha,
                        previous_version=prev_version, deadline=self.clock() + terms.seconds,
                        min_requests=terms.min_requests, require_confirm=terms.require_confirm,
                        command_id=command_id)
        self.store.set_probation(p.to_dict())  # durable before the activation: a crash cannot skip it
        self._probation, self._fallback, self._min_requests_saved = p, fallback, False
        log.info("%s %s goes on probation for %.0f s (min_requests %d, require_confirm %s); %s stays loaded",
                 model, version, terms.seconds, terms.min_requests, terms.require_confirm, prev_version)

    def _end_probation(self) -> None:
        if self.store.probation() is not None:
            self.store.set_probation(None)
        self._probation, self._fallback = None, None

    # --- resuming after a restart ------------------------------------------------------------------
    def _resume_probation(self) -> None:
        if self._probation_resumed:
            return
        self._probation_resumed = True
        raw = self.store.probation()
        if raw is None:
            return
        try:
            p = OnProbation.from_dict(raw)
        except StoreError as exc:
            log.error("%s", exc)
            self._save_probation(None)
            return
        active = self.store.active(p.model) if p.model else self.store.active()
        if active is None or active.sha256 != p.bundle_sha256:  # saved, but the activation never happened
            log.info("probation of %s %s dropped: that version is not active", p.model, p.version)
            self._save_probation(None)
            return
        try:
            if p.previous_sha256 is None:
                raise StoreError("no previous version was recorded")
            loaded = self._load_stored(p.previous_sha256)
        except (EdgeloopError, OSError) as exc:
            log.error("probation of %s %s ended: its previous version cannot be loaded to revert to: %s",
                      p.model, p.version, exc)
            self._save_probation(None)
            self._publish_event(self._event(
                "error", False, PREVIOUS_UNAVAILABLE,
                f"{p.model} {p.version} was on probation, but the version to revert to cannot be loaded ({exc}); "
                f"it keeps serving without probation: deploy or roll back explicitly", p.command_id))
            return
        self._probation, self._fallback = p, (loaded.runner, loaded.monitor)
        log.info("resumed the probation of %s %s (deadline in %.0f s); %s loaded to revert to", p.model, p.version,
                 p.deadline - self.clock(), p.previous_version)

    def _save_probation(self, p: OnProbation | None) -> None:
        self.store.set_probation(None if p is None else p.to_dict())

    # --- judging it (the control thread, twice a second) ------------------------------------------------
    def _counted(self) -> tuple[OnProbation | None, str, bool]:
        """The probation with its counts up to date, the served model's last error, and whether it fails."""
        p = self._probation
        h = self.serving.health(p.model if p is not None and p.model else None)
        if p is None or h is None:
            return p, "", False
        return p.counted(h.total_requests, h.total_errors), h.last_error, h.failing

    def _check_probation(self) -> None:
        self._resume_probation()
        if self._probation is None:
            return
        active = self.store.active(self._probation.model or None)
        if active is None or active.sha256 != self._probation.bundle_sha256:  # the activation failed
            self._end_probation()
            return
        p, last_error, failing = self._counted()
        assert p is not None
        d = decide(p, self.clock(), failing, last_error)
        if d.action == PASS:
            self._end_probation()
            log.info("%s", d.message)
            self._publish_state_if_connected()
            self._publish_event(self._event("confirmed", True, d.reason, d.message, p.command_id,
                                            _details(p, d.reason)))
        elif d.action == REVERT:
            self._revert(p, d.reason, d.message)
        elif p.requests >= p.min_requests > 0 and not self._min_requests_saved:  # kept across a restart
            self._save_probation(p)
            self._min_requests_saved = True

    def _revert(self, p: OnProbation, reason: str, message: str) -> None:
        fallback = self._fallback
        assert fallback is not None and p.previous_sha256 is not None
        self.store.revert_probation(p.previous_sha256)  # durable first; a failure is retried on the next tick
        self.serving.activate(*fallback)
        self._probation, self._fallback = None, None
        log.warning("reverted %s %s to %s on its own: %s (%s)", p.model, p.version, p.previous_version, reason,
                    message)
        self._publish_state_if_connected()
        self._publish_event(self._event(
            "reverted", False, reason, f"{message}; reverted to {p.model} {p.previous_version}", p.command_id,
            _details(p, reason)))

    def _publish_state_if_connected(self) -> None:
        if self.link.connected.is_set():  # else the next connect publishes it
            self._publish_state()

    # --- the hub's confirm ---------------------------------------------------------------------------
    def _confirm(self, cmd: Command) -> None:
        sha = confirm_target(cmd)
        self._resume_probation()
        p = self._probation
        target = self.store.get(sha)
        active = self.store.active(target.model) if target is not None else self.store.active()
        if p is None or p.bundle_sha256 != sha:
            if p is None and active is not None and active.sha256 == sha:
                self._publish_event(self._event("command_result", True, "ok",
                                                f"{active.model} {active.version} is active and not on probation",
                                                cmd.command_id, {"bundle_sha256": sha, "on_probation": False}))
                return
            on = f"{p.model} {p.version} (bundle {p.bundle_sha256[:12]})" if p else "no version"
            raise NotOnProbationError(f"bundle {sha[:12]} is not on probation here ({on} is); it may have "
                                      "reverted already: see the agent's reverted events and its state")
        if not p.confirmed:
            counted, _, _ = self._counted()
            assert counted is not None
            self._save_probation(dataclasses.replace(counted, confirmed=True))
            self._probation = dataclasses.replace(p, confirmed=True)
        now, _, _ = self._counted()
        assert now is not None
        self._publish_event(self._event(
            "command_result", True, "ok", f"{p.model} {p.version} confirmed ({now.requests} requests on probation, "
            f"{now.min_requests} required)", cmd.command_id, {**_details(now, "confirmed"), "on_probation": True}))
        self._check_probation()

    def _probation_status(self) -> ProbationStatus | None:
        p, _, _ = self._counted()
        return p.status() if p is not None else None


def _details(p: OnProbation, reason: str) -> dict:
    return {"model": p.model, "version": p.version, "bundle_sha256": p.bundle_sha256,
            "previous_version": p.previous_version, "previous_sha256": p.previous_sha256, "reason": reason,
            "requests": p.requests, "errors": p.errors, "min_requests": p.min_requests,
            "require_confirm": p.require_confirm, "confirmed": p.confirmed, "deadline": p.deadline}


__all__ = ["DeadManSwitch", "NotOnProbationError"]
