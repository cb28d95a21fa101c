"""The agent's control thread: signed commands, bundle transfers, install, rollback.

It alone writes the store and the transfers; it restores the active model at start-up,
verifies every command (signature, target, expiry, counter) before acting, installs a
bundle only after it verified, loaded and passed its smoke test, and reports every
outcome as an event. Until a new model is active the previous one keeps serving.

Chunks come on the agent's own ``bundle`` topic, or -- when the deploy command's transfer
names one -- on a transfer topic shared by every agent of a fan-out deploy, which the
agent follows from accepting the command until the transfer finishes, fails or is
abandoned (its command expired, or a newer deploy of the same bundle replaced it).
Missing chunks are asked for (``transfer_missing``) and come again on the own topic, less
and less often while none come (up to every ``MAX_ASK_INTERVAL`` s) until the command expires.

Durability: a command is journalled (``pending`` in the store's state, saved with its counter)
until its result is reported. After a crash at any step the restart finishes the job: a
complete transfer is verified and installed (or refused), a bundle already renamed into the
store is re-verified and activated, an activation already saved is reported, anything else is
reported failed (``interrupted``); expired transfers are dropped and reported once. Command
lifetimes are capped (``MAX_COMMAND_LIFETIME``). A full disk is ``disk_full``, with the free and
needed bytes: answered per command, otherwise reported at most every ``DISK_FULL_REPORT_INTERVAL`` s.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import queue
import shutil
import time
from typing import TYPE_CHECKING

from edgeloop.agent.core import Loaded
from edgeloop.agent.drift_windows import save_windows
from edgeloop.agent.errors import (
    BundleMismatchError,
    BundleTooLargeError,
    CommandLifetimeError,
    DiskFullError,
    DiskSpaceError,
    EdgeloopError,
    HashMismatchError,
    MessageFormatError,
    StoreError,
    TransferError,
)
from edgeloop.agent.floors import check_floor, raise_floor
from edgeloop.agent.fsutil import crash_point
from edgeloop.agent.preflight_install import preflight_install
from edgeloop.agent.shadow_control import SHADOW_COMMANDS, ShadowControl, shadow_meta
from edgeloop.agent.transfer import Transfer
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.bundle import VerifiedBundle
from edgeloop.agent.wire.drift_windows import drift_windows_arg
from edgeloop.agent.wire.messages import Chunk, Command
from edgeloop.agent.wire.preflight import memory_limit_arg

if TYPE_CHECKING:
    from edgeloop.agent.airgap import Inbox

log = logging.getLogger("edgeloop.agent.service")

SHARED_CHUNK = "shared-chunk"  # control queue kind: a chunk from a shared transfer topic
MAX_COMMAND_LIFETIME = 7 * 24 * 3600.0  # seconds ahead a command's expiry may be (docs/protocol.md)
MAX_ASK_INTERVAL = 300.0  # seconds between requests for missing chunks, at most (backed off from idle_seconds)
DISK_FULL_REPORT_INTERVAL = 600.0  # seconds between disk_full events not answering a command
INTERNAL_REPORT_INTERVAL = 60.0  # seconds between "internal" error events (each failure is logged)


class AgentControl(ShadowControl):  # ShadowControl: shadow mode, over DeadManSwitch
    _storage_reported_at: float | None = None  # when the last disk_full / storage event went out
    _recovered = False  # interrupted commands were finished or reported (once per process)
    _internal_reported_at: float | None = None  # when the last "internal" error event went out
    _inbox: Inbox | None = None  # air-gapped files handed over by `edgeloop-agent install` (.airgap)

    # --- restore after a restart ---------------------------------------------------------
    def _restore(self) -> None:
        self.store.collect_garbage()  # before anything is written: nothing of this process is in flight
        if self.store.recovered is not None:
            self._pending_events.append(self._event(
                "error", False, "state_recovered",
                f"state.json could not be read at start-up: {self.store.recovered}; every bundle is re-verified "
                "(a copy of the unreadable file is kept as state.json.unreadable)",
                details={"recovered": self.store.recovered}))
        self._adopt_unclaimed()
        state = self.store.state
        last = state.installed[state.active].model if state.active in state.installed else None
        # every model served (the one activated last, last: it is .active again), each from its own bundles
        for model in sorted(state.models, key=lambda name: name == last):
            self._restore_model(model, [state.models[model]] + self.store.previous(model))

    def _restore_model(self, model: str, candidates: list[str]) -> None:
        """Serve ``model`` again from the first of its bundles (active, then previous ones) that loads."""
        for i, sha in enumerate(candidates):
            try:
                loaded = self._load_stored(sha)
            except EdgeloopError as exc:
                log.error("stored bundle %s cannot be served: %s", sha[:12], exc)
                self._pending_events.append(self._event(
                    "error", False, exc.code, f"stored bundle {sha[:12]} cannot be served: {exc}"))
                continue
            if i > 0:
                log.warning("fell back to previously active bundle %s", sha[:12])
                self._save_quietly("activate the fallback bundle", self.store.activate, sha)
            self.serving.activate(loaded.runner, loaded.monitor)
            m = loaded.bundle.manifest
            log.info("serving %s version %s (bundle %s) from the store", m.model_name, m.version, sha[:12])
            return
        if candidates:
            self._save_quietly(f"record that no bundle of {model} is active", self.store.deactivate, model)

    def _adopt_unclaimed(self) -> None:
        """Bundles on disk that no readable state names: re-verified and adopted (the newest becomes
        active), or removed."""
        found = []
        for sha in list(self.store.unclaimed):
            try:
                vb = self._verified_from_store(sha)
                found.append((self.store.bundle_path(sha).stat().st_mtime, sha, vb.manifest))
            except (EdgeloopError, OSError) as exc:
                log.error("removing bundle %s found without a state: %s", sha[:12], exc)
                self.store.forget_unclaimed(sha)
        found.sort(key=lambda f: f[0], reverse=True)  # newest first: the history's order
        for mtime, sha, m in found:
            if self._save_quietly(f"adopt bundle {sha[:12]}", self.store.adopt, sha, m.model_name, m.version, mtime):
                log.warning("adopted bundle %s (%s %s) found without a state", sha[:12], m.model_name, m.version)
        newest: dict[str, str] = {}  # per model, its newest bundle becomes active
        for _, sha, m in found:
            newest.setdefault(m.model_name, sha)
        for sha in reversed(list(newest.values())):  # the newest of all activated last
            self._save_quietly("activate the adopted bundle", self.store.activate, sha)

    def _save_quietly(self, what: str, change, *args) -> bool:
        """``change(*args)``: a state change that answers no command; a failure is reported (rate-limited)."""
        try:
            change(*args)
            return True
        except (StoreError, OSError) as exc:
            self._storage_problem(exc, what)
            return False

    def _storage_problem(self, exc: BaseException, what: str) -> None:
        """Log and report a failed write that answers no command: at most every DISK_FULL_REPORT_INTERVAL s."""
        code = exc.code if isinstance(exc, EdgeloopError) else StoreError.code
        now = time.monotonic()
        if self._storage_reported_at is not None and now - self._storage_reported_at < DISK_FULL_REPORT_INTERVAL:
            log.debug("could not %s: %s (already reported)", what, exc)
            return
        self._storage_reported_at = now
        log.error("could not %s: %s (the agent keeps serving; reported at most every %.0f s)", what, exc,
                  DISK_FULL_REPORT_INTERVAL)
        details = {"free": exc.free, "needed": exc.needed} if isinstance(exc, DiskFullError) else {}
        ev = self._event("error", False, code, f"could not {what}: {exc}", details=details)
        if self.link.connected.is_set():
            self._publish_event(ev)
        else:
            self._pending_events.append(ev)

    # --- control thread -------------------------------------------------------------------
    def _control_loop(self) -> None:
        if not self._recovered:  # once per process, not again when the watchdog restarts this thread
            self._recovered = True
            self._guarded("recovery after a restart", self._recover_interrupted)
            self._guarded("probation after a restart", self._resume_probation)  # before the state goes out
        while True:
            try:
                kind, payload = self._control_q.get(timeout=0.5)
            except queue.Empty:
                kind = payload = None
            if kind == "stop":
                return
            if kind == "connected":
                self._guarded(kind, self._on_connected)
            elif kind == topics.CMD:
                self._guarded(kind, self._handle_command, payload)
            elif kind == topics.BUNDLE:
                self._guarded(kind, self._handle_chunk, payload)
            elif kind == SHARED_CHUNK:
                self._guarded(kind, self._handle_chunk, payload, True)
            self._guarded("air-gapped files", self._check_inbox)  # edgeloop-agent install FILE (.airgap)
            self._guarded("idle transfers", self._check_idle_transfers)
            self._guarded("probation", self._check_probation)  # the dead-man switch: needs no broker
            self._guarded("shadow", self._check_shadow)  # a shadow whose bundle went live ends (.shadow_control)
            self._guarded("drift windows", self.serving.tick_drift)  # close time-closed windows without a request

    def _check_inbox(self) -> None:
        """Apply the files ``edgeloop-agent install`` dropped into ``<state_dir>/inbox`` (:mod:`.airgap`)."""
        from edgeloop.agent.airgap import Inbox, check_inbox

        if self._inbox is None:
            self._inbox = Inbox(self.cfg.state_dir)
        check_inbox(self, self._inbox)

    def _guarded(self, what: str, fn, *args) -> None:
        """Run one step of the control thread; whatever it raises, the thread goes on and says so."""
        try:
            fn(*args)
        except (StoreError, OSError) as exc:
            self._storage_problem(exc, f"handle {what}")
        except Exception:  # keep the agent alive, say what happened (an event at most every minute)
            log.exception("control thread failed on %s", what)
            now = time.monotonic()
            if self._internal_reported_at is None or now - self._internal_reported_at >= INTERNAL_REPORT_INTERVAL:
                self._internal_reported_at = now
                self._publish_event(self._event("error", False, "internal",
                                                f"internal error handling {what}; see agent log"))

    def _on_connected(self) -> None:
        try:
            self.session = self.store.next_session(minimum=self.session + 1)
        except (StoreError, OSError) as exc:  # a full disk: announce anyway, with a session number kept in memory
            self.session += 1
            self._storage_problem(exc, "save the session counter")
        self._publish_state()  # the birth certificate first, so "online" never points at a stale state
        self.link.publish(topics.agent_topic(self.id, topics.STATUS, self.root), topics.ONLINE, qos=1, retain=True)
        for ev in self._pending_events:
            self._publish_event(ev)
        self._pending_events.clear()
        for t in list(self._transfers.values()):  # resume interrupted transfers
            if t.complete:
                self._finish_transfer(t)
            else:
                self._follow(t)
                self._publish_missing(t)

    def _recover_interrupted(self) -> None:
        """On start: finish or report every command a crash interrupted (see the module docstring)."""
        for t in [t for t in self._transfers.values() if t.complete]:
            log.info("transfer %s was complete before the restart: installing it", t.spec.transfer_id[:8])
            self._finish_transfer(t)
        in_transfer = {t.command_id for t in self._transfers.values()}
        for cid, job in self.store.pending().items():
            if cid in in_transfer:
                continue  # resumes, and reports when it finishes or expires
            sha = str(job.get("bundle_sha256", ""))
            event = str(job.get("event", "install_result"))
            installed = self.store.get(sha) if sha else None
            active = self.store.active(installed.model) if installed is not None else None
            try:
                if active is not None and active.sha256 == sha:
                    m = active
                    self._report(event, True, "ok", f"{m.model} {m.version} serving (finished before a restart)", cid,
                                 {"bundle_sha256": sha, "model": m.model, "version": m.version})
                elif sha and self.store.bundle_path(sha).exists():
                    log.info("command %s was interrupted with bundle %s in the store: activating it", cid, sha[:12])
                    if job.get("shadow"):
                        self._shadow_stored(sha, cid, job)
                    else:
                        self._activate_stored(sha, cid, event, job)
                else:
                    raise TransferError("the agent restarted before the bundle was complete; nothing was installed "
                                        "(deploy again)", code="interrupted")
            except (EdgeloopError, OSError) as exc:
                self._fail(event, exc, cid, {"bundle_sha256": sha})

    def _report(self, event: str, ok: bool, code: str, message: str, command_id: str,
                details: dict | None = None) -> None:
        """The final answer to a command: published (or kept in the outbox), then the command leaves the journal."""
        self._publish_event(self._event(event, ok, code, message, command_id, details))
        crash_point("result_reported")
        self._save_quietly("settle a command in the journal", self.store.settle, command_id)

    def _fail(self, event: str, exc: BaseException, command_id: str, details: dict | None = None) -> None:
        code = exc.code if isinstance(exc, EdgeloopError) else StoreError.code
        details = dict(details or {})
        if isinstance(exc, DiskFullError):
            details.update(free=exc.free, needed=exc.needed)
        log.warning("%s of command %s: %s (%s)", event, command_id, code, exc)
        self._report(event, False, code, str(exc), command_id, details)

    def _handle_command(self, payload: bytes) -> None:
        try:
            vc = self.trust.verify_command(payload, self.id, self.clock(), self.store.counters())
        except EdgeloopError as exc:
            cid = _peek_command_id(payload)
            log.warning("refused command %s: %s", cid or "?", exc)
            self._publish_event(self._event("command_result", False, exc.code, str(exc), cid))
            return
        cmd = vc.command
        kind = "rollback_result" if cmd.command == "rollback" else "command_result"
        try:
            _check_lifetime(cmd.command_id, cmd.expires_at, self.clock())
            # before acting: no replay after a crash, and the command is journalled until answered
            self.store.accept_counter(vc.keyid, cmd.counter, cmd.command_id, _journal_entry(cmd))
        except (EdgeloopError, OSError) as exc:
            code = exc.code if isinstance(exc, EdgeloopError) else StoreError.code
            log.warning("refused command %s: %s", cmd.command_id, exc)
            details = {"free": exc.free, "needed": exc.needed} if isinstance(exc, DiskFullError) else {}
            self._publish_event(self._event(kind, False, code, str(exc), cmd.command_id, details))
            return
        log.info("accepted %s command %s (counter %d)", cmd.command, cmd.command_id, cmd.counter)
        crash_point("command_accepted")
        try:
            if cmd.command == "deploy":
                self._start_deploy(cmd)
            elif cmd.command == "rollback":
                self._rollback(cmd)
            elif cmd.command == "confirm":
                self._confirm(cmd)
            elif cmd.command in ("capture", "capture_upload", "capture_ack"):
                self._capture_command(cmd)  # edgeloop.agent.core (opt-in capture)
            elif cmd.command == "set_tags":
                self._set_tags(cmd)  # edgeloop.agent.core
            elif cmd.command in SHADOW_COMMANDS:
                self._shadow_command(cmd)  # edgeloop.agent.shadow_control
        except (EdgeloopError, OSError) as exc:
            self._fail(kind, exc, cmd.command_id)
        except Exception as exc:  # a bug: still answered, with the command id
            log.exception("%s %s failed", cmd.command, cmd.command_id)
            self._fail(kind, EdgeloopError(f"internal error: {exc}; see the agent log", code="internal"),
                       cmd.command_id)

    def _start_deploy(self, cmd: Command) -> None:
        spec = cmd.transfer()
        if spec.size > self.cfg.max_bundle_bytes:
            raise BundleTooLargeError(
                f"bundle of {spec.size} bytes exceeds this agent's limit of {self.cfg.max_bundle_bytes} "
                "(limits.max_bundle_bytes in its config)")
        want_topic = topics.transfer_topic(spec.transfer_id, self.root)
        if spec.topic is not None and spec.topic != want_topic:
            raise TransferError(f"deploy names transfer topic {spec.topic!r}, not {want_topic!r}: refused "
                                "(do the hub and this agent use the same topic root?)")
        free = shutil.disk_usage(self.cfg.state_dir).free
        need = spec.size + self.cfg.min_free_bytes
        if free < need:
            raise DiskSpaceError(
                f"only {free / 2**20:.1f} MiB free in {self.cfg.state_dir}; a bundle of {spec.size / 2**20:.1f} MiB "
                f"needs {need / 2**20:.1f} MiB (its size plus limits.min_free_bytes = "
                f"{self.cfg.min_free_bytes / 2**20:.1f} MiB): free some space or lower limits.min_free_bytes")
        meta = _deploy_meta(cmd)
        floor_of = self.store.active(meta["model"]) if meta.get("model") else self.store.active()  # that model's
        check_floor(self.cfg, meta, floor_of)  # [security] version_floor: no deploy below it
        stored = self.store.get(spec.bundle_sha256)
        if stored is not None:
            _check_deploy_names(meta, stored.model, stored.version)
        if self.store.has_bundle(spec.bundle_sha256):
            self._publish_event(self._event("command_result", True, "ok", "bundle already in store; activating",
                                            cmd.command_id, {"chunks": 0, "in_store": True}))
            try:  # accepted already: a failure from here on is the install's result
                if meta.get("shadow"):  # installed already: runs as shadow without a transfer
                    self._shadow_stored(spec.bundle_sha256, cmd.command_id, meta)
                else:
                    self._activate_stored(spec.bundle_sha256, cmd.command_id, "install_result", meta)
            except (EdgeloopError, OSError) as exc:
                self._fail("install_result", exc, cmd.command_id, {"bundle_sha256": spec.bundle_sha256})
            return
        t = self._transfers.get(spec.transfer_id)
        if t is None:
            for old in [o for o in self._transfers.values() if o.spec.bundle_sha256 == spec.bundle_sha256]:
                self._abandon(old, f"deploy command {cmd.command_id} sends the same bundle again")
            t = Transfer.open(self.store.incoming_dir, spec, cmd.command_id, meta, cmd.expires_at)
            self._transfers[spec.transfer_id] = t
        self._follow(t)  # before answering: the broker has the subscription when the hub reads the answer
        self._publish_event(self._event(
            "command_result", True, "ok", f"deploy accepted; waiting for {spec.chunks} chunks",
            cmd.command_id, {"transfer_id": spec.transfer_id, "chunks": spec.chunks,
                             "missing": len(t.missing(spec.chunks))}))
        if t.complete:
            self._finish_transfer(t)

    def _handle_chunk(self, payload: bytes, shared: bool = False) -> None:
        try:
            chunk = Chunk.decode(payload)
        except EdgeloopError as exc:
            log.warning("dropped a bad bundle chunk: %s", exc)
            return
        t = self._transfers.get(chunk.transfer_id)
        if t is None:
            log.debug("chunk for unknown transfer %s ignored", chunk.transfer_id[:8])
            return
        try:
            t.write(chunk)
        except DiskFullError as exc:
            self._drop_transfer(t)
            self._fail("install_result", exc, t.command_id, {"bundle_sha256": t.spec.bundle_sha256})
            return
        except EdgeloopError as exc:
            log.warning("chunk %d of %s refused: %s", chunk.index, chunk.transfer_id[:8], exc)
            return
        if t.complete:
            crash_point("transfer_complete")
            self._finish_transfer(t)
        elif shared and chunk.index == t.spec.chunks - 1 and not t.asked:
            t.asked = True  # the shared stream ended with gaps (joined late, chunks dropped): ask now
            self._publish_missing(t)

    def _check_idle_transfers(self) -> None:
        now = time.monotonic()
        for t in list(self._transfers.values()):
            if t.expires_at is not None and self.clock() > t.expires_at:
                self._abandon(t, f"its deploy command expired with {t.count_received} of {t.spec.chunks} "
                                 "chunks received")
                continue
            t.save_if_idle(now)
            wait = min(self.cfg.transfer_idle_seconds * 2 ** min(t.quiet_asks, 16),
                       max(MAX_ASK_INTERVAL, self.cfg.transfer_idle_seconds))
            if not t.complete and now - t.last_activity > wait:
                self._publish_missing(t)
                t.last_activity = now
                t.quiet_asks += 1

    def _publish_missing(self, t: Transfer) -> None:
        missing = t.missing(limit=2000)
        log.info("transfer %s: asking again for %d missing chunks", t.spec.transfer_id[:8], len(missing))
        self._publish_event(self._event(
            "transfer_missing", True, "ok", f"{len(missing)} chunks missing", t.command_id,
            {"transfer_id": t.spec.transfer_id, "missing": missing}))

    # --- shared transfer topics ---------------------------------------------------------------
    def _follow(self, t: Transfer) -> None:
        """Subscribe to the transfer's shared topic (if it has one); its chunks go to the control queue."""
        topic = t.spec.topic
        if topic is None or t.following:
            return
        self.link.add_subscription(topic, 1)  # Agent._on_message puts its chunks on the control queue
        t.following = True
        log.info("following transfer topic %s", topic)

    def _unfollow(self, t: Transfer) -> None:
        topic = t.spec.topic
        if topic is None or not t.following:
            return
        t.following = False
        if not any(o.following and o.spec.topic == topic for o in self._transfers.values()):
            self.link.remove_subscription(topic)
            log.info("left transfer topic %s", topic)

    def _drop_transfer(self, t: Transfer) -> None:
        """Forget a transfer: its files, its entry, its shared topic."""
        t.discard()
        self._transfers.pop(t.spec.transfer_id, None)
        self._unfollow(t)

    def _abandon(self, t: Transfer, why: str) -> None:
        sha = t.spec.bundle_sha256
        log.warning("transfer %s of bundle %s abandoned: %s", t.spec.transfer_id[:8], sha[:12], why)
        self._drop_transfer(t)
        self._report("install_result", False, TransferError.code,
                     f"transfer of bundle {sha[:12]} abandoned: {why}; nothing was installed (deploy again)",
                     t.command_id, {"bundle_sha256": sha})

    # --- install --------------------------------------------------------------------------------
    def _finish_transfer(self, t: Transfer) -> None:
        """Hash checked as the chunks came, one fsync, verify, load, smoke-test, rename into the store."""
        if t.meta.get("shadow"):
            self._finish_shadow(t)  # edgeloop.agent.shadow_control: stored, not activated
            return
        sha = t.spec.bundle_sha256
        started = time.perf_counter()
        try:
            path = t.finish()
            vb = self.trust.verify_bundle(path.read_bytes(), self.cfg.max_bundle_bytes)
            m = vb.manifest
            _check_deploy_names(t.meta, m.model_name, m.version)
            preflight_install(self, vb, sha, t.meta, t.command_id)  # may refuse; publishes a preflight event
            save_windows(self.cfg.state_dir, sha, t.meta.get("drift"), {b.sha256 for b in self.store.installed()})
            loaded = self._load_verified(vb, sha)
            crash_point("bundle_verified")
            self._prepare_probation(t.meta, m.model_name, m.version, sha, t.command_id)
            self.store.install_file(sha, path, m.model_name, m.version,
                                    before_save=lambda: crash_point("bundle_in_store"))
            crash_point("state_saved")
            self.serving.activate(loaded.runner, loaded.monitor)
        except (EdgeloopError, OSError) as exc:  # OSError: the store's disk (read-only, ...)
            log.error("install of bundle %s refused: %s (previous model keeps serving)", sha[:12], exc)
            self._drop_transfer(t)
            self._fail("install_result", exc, t.command_id, {"bundle_sha256": sha})
            return
        self._drop_transfer(t)
        raise_floor(self.cfg, m.model_name, m.version)
        log.info("installed and activated %s %s (bundle %s)", m.model_name, m.version, sha[:12])
        self._publish_state()  # before the result: whoever waits for it then reads the new state
        self._report("install_result", True, "ok", f"{m.model_name} {m.version} installed and serving", t.command_id,
                     {"bundle_sha256": sha, "model": m.model_name, "version": m.version,
                      "install_ms": round((time.perf_counter() - started) * 1000, 1)})

    def _verified_from_store(self, sha: str) -> VerifiedBundle:
        """A stored bundle read back, checked against its name (sha256) and re-verified."""
        data = self.store.read_bundle(sha)
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha:
            raise HashMismatchError(f"stored bundle {sha[:12]} has sha256 {digest[:12]} on disk: altered or "
                                    "corrupted in the store; deploy it again")
        return self.trust.verify_bundle(data, self.cfg.max_bundle_bytes)

    def _load_stored(self, sha: str) -> Loaded:
        return self._load_verified(self._verified_from_store(sha), sha)

    def _activate_stored(self, sha: str, command_id: str, event: str, want: dict | None = None) -> None:
        """Activate a bundle of the store: checked against its sha256, re-verified, checked against the
        command's model and version (``want``), loaded and smoke-tested first."""
        vb = self._verified_from_store(sha)
        if want is not None:
            _check_deploy_names(want, vb.manifest.model_name, vb.manifest.version)
        if event == "install_result":  # a deploy (not a rollback): the pre-flight, which may refuse
            preflight_install(self, vb, sha, want or {}, command_id)
            save_windows(self.cfg.state_dir, sha, (want or {}).get("drift"), {b.sha256 for b in self.store.installed()})
        loaded = self._load_verified(vb, sha)
        self._prepare_probation(want if event == "install_result" else None, vb.manifest.model_name,
                                vb.manifest.version, sha, command_id)
        if self.store.get(sha) is None:  # renamed into the store before a crash, never named by the state
            self.store.activate_file(sha, vb.manifest.model_name, vb.manifest.version)
        else:
            self.store.activate(sha)
        crash_point("activation_saved")
        self.serving.activate(loaded.runner, loaded.monitor)
        m = loaded.bundle.manifest
        if event == "install_result":  # a deploy raises the floor; a rollback never does
            raise_floor(self.cfg, m.model_name, m.version)
        log.info("activated stored bundle %s: %s %s", sha[:12], m.model_name, m.version)
        self._publish_state()  # before the result: whoever waits for it then reads the new state
        self._report(event, True, "ok", f"{m.model_name} {m.version} serving", command_id,
                     {"bundle_sha256": sha, "model": m.model_name, "version": m.version})

    def _rollback(self, cmd: Command) -> None:
        sha = cmd.target_bundle()
        if not self.store.has_bundle(sha):
            raise StoreError(f"cannot roll back to bundle {sha[:12]}: it is not in this agent's store "
                             "(deploy it instead)")
        self._activate_stored(sha, cmd.command_id, "rollback_result")


def _check_lifetime(command_id: str, expires_at: float, now: float) -> None:
    """Refuse a command valid for more than MAX_COMMAND_LIFETIME from now: a recording of it could be
    replayed to a freshly reset agent for that long."""
    if expires_at - now > MAX_COMMAND_LIFETIME:
        raise CommandLifetimeError(
            f"command {command_id} expires {(expires_at - now) / 86400:.1f} days from now; this agent accepts "
            f"commands valid for at most {MAX_COMMAND_LIFETIME / 86400:.0f} days: issue it with a shorter "
            "lifetime (or check the hub's clock)")


def _journal_entry(cmd: Command) -> dict | None:
    """What the journal keeps of an accepted command to finish or report it after a crash (a confirm:
    nothing; one lost to a crash is not answered, and the hub sends another)."""
    if cmd.command == "rollback":
        return {"event": "rollback_result", "bundle_sha256": cmd.target_bundle()}
    if cmd.command in ("confirm", "capture", "capture_upload", "capture_ack", "set_tags", "stop_shadow"):
        return None
    if cmd.command == "promote_shadow":
        return {"event": "install_result", "bundle_sha256": cmd.target_bundle(), **_deploy_meta(cmd)}
    return {"event": "install_result", "bundle_sha256": cmd.transfer().bundle_sha256, **_deploy_meta(cmd)}


def _deploy_meta(cmd: Command) -> dict:
    """The deploy's model, version and (if it asks for one) probation: checked against the bundle, and
    the probation started when it is activated."""
    meta = {"model": cmd.args.get("model", ""), "version": cmd.args.get("version", "")}
    if cmd.args.get("probation") is not None:
        meta["probation"] = cmd.args["probation"]
    if (limit := memory_limit_arg(cmd.args)) is not None:  # for the pre-flight (edgeloop.agent.preflight_install)
        meta["memory_limit_mb"] = limit
    if (windows := drift_windows_arg(cmd.args)) is not None:  # kept with the version (edgeloop.agent.drift_windows)
        meta["drift"] = windows
    return {**meta, **shadow_meta(cmd.args)} if cmd.command == "deploy" else meta


def _check_deploy_names(want: dict, model: str, version: str) -> None:
    """Refuse a bundle holding another model or version than the deploy command names."""
    if want.get("model") and (want["model"], want.get("version")) != (model, version):
        raise BundleMismatchError(
            f"bundle holds {model} {version}, the deploy command named {want['model']} {want.get('version')}; "
            "nothing was installed: deploy the bundle built for that model version")


def _peek_command_id(payload: bytes) -> str | None:
    """The command id of an envelope that failed verification (unverified; for correlation only)."""
    try:
        doc = json.loads(payload)
        inner = json.loads(base64.b64decode(doc["payload"]))
        cid = inner.get("command_id")
        return cid if isinstance(cid, str) and len(cid) <= 64 else None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, MessageFormatError):
        return None
