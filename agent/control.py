"""The agent's control thread: signed commands, bundle transfers, install, rollback.

It alone writes the store and the transfers; it restores the active model at start-up,
verifies every command (signature, target, expiry, counter) before acting, installs a
bundle only after it verified, loaded and passed its smoke test, and reports every
outcome as an event. Until a new model is active the previous one keeps serving.

Chunks come on the agent's own ``bundle`` topic, or -- when the deploy command's transfer
names one -- on a transfer topic shared by every agent of a fan-out deploy, which the
agent follows from accepting the command until the transfer finishes, fails or is
abandoned (its command expired, or a newer deploy of the same bundle replaced it).
Missing chunks are asked for (``transfer_missing``) and come again on the own topic.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import shutil
import time

from edgeloop.agent.core import AgentCore
from edgeloop.agent.errors import (
    BundleMismatchError,
    BundleTooLargeError,
    DiskSpaceError,
    EdgeloopError,
    MessageFormatError,
    StoreError,
    TransferError,
)
from edgeloop.agent.transfer import Transfer
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.bundle import verify_bundle
from edgeloop.agent.wire.commands import verify_command
from edgeloop.agent.wire.messages import Chunk, Command

log = logging.getLogger("edgeloop.agent.service")

SHARED_CHUNK = "shared-chunk"  # control queue kind: a chunk from a shared transfer topic


class AgentControl(AgentCore):
    # --- restore after a restart ---------------------------------------------------------
    def _restore(self) -> None:
        state = self.store.state
        candidates = ([state.active] if state.active else []) + list(state.history)
        for i, sha in enumerate(candidates):
            try:
                loaded = self._load_installed(sha)
            except EdgeloopError as exc:
                log.error("stored bundle %s cannot be served: %s", sha[:12], exc)
                self._pending_events.append(self._event(
                    "error", False, exc.code, f"stored bundle {sha[:12]} cannot be served: {exc}"))
                continue
            if i > 0:
                log.warning("fell back to previously active bundle %s", sha[:12])
                self.store.activate(sha)
            self.serving.activate(loaded.runner, loaded.monitor)
            m = loaded.bundle.manifest
            log.info("serving %s version %s (bundle %s) from the store", m.model_name, m.version, sha[:12])
            return
        if candidates:
            self.store.deactivate()

    # --- control thread -------------------------------------------------------------------
    def _control_loop(self) -> None:
        while True:
            try:
                kind, payload = self._control_q.get(timeout=0.5)
            except queue.Empty:
                self._check_idle_transfers()
                continue
            if kind == "stop":
                return
            try:
                if kind == "connected":
                    self._on_connected()
                elif kind == topics.CMD:
                    self._handle_command(payload)
                elif kind == topics.BUNDLE:
                    self._handle_chunk(payload)
                elif kind == SHARED_CHUNK:
                    self._handle_chunk(payload, shared=True)
            except Exception:  # keep the agent alive, say what happened
                log.exception("control thread failed on %s", kind)
                self._publish_event(self._event("error", False, "internal",
                                                f"internal error handling {kind}; see agent log"))
            self._check_idle_transfers()

    def _on_connected(self) -> None:
        self.session = self.store.next_session()
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

    def _handle_command(self, payload: bytes) -> None:
        try:
            vc = verify_command(payload, self.trusted, self.id, self.clock(), self.store.counters())
        except EdgeloopError as exc:
            cid = _peek_command_id(payload)
            log.warning("refused command %s: %s", cid or "?", exc)
            self._publish_event(self._event("command_result", False, exc.code, str(exc), cid))
            return
        cmd = vc.command
        self.store.accept_counter(vc.keyid, cmd.counter)  # before acting: no replay after a crash
        log.info("accepted %s command %s (counter %d)", cmd.command, cmd.command_id, cmd.counter)
        try:
            if cmd.command == "deploy":
                self._start_deploy(cmd)
            elif cmd.command == "rollback":
                self._rollback(cmd)
        except EdgeloopError as exc:
            log.warning("%s %s failed: %s", cmd.command, cmd.command_id, exc)
            kind = "rollback_result" if cmd.command == "rollback" else "command_result"
            self._publish_event(self._event(kind, False, exc.code, str(exc), cmd.command_id))

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
        meta = {"model": cmd.args.get("model", ""), "version": cmd.args.get("version", "")}
        stored = self.store.get(spec.bundle_sha256)
        if stored is not None:
            _check_deploy_names(meta, stored.model, stored.version)
        if self.store.has_bundle(spec.bundle_sha256):
            self._publish_event(self._event("command_result", True, "ok", "bundle already in store; activating",
                                            cmd.command_id, {"chunks": 0, "in_store": True}))
            self._activate_stored(spec.bundle_sha256, cmd.command_id, "install_result")
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
        except EdgeloopError as exc:
            log.warning("chunk %d of %s refused: %s", chunk.index, chunk.transfer_id[:8], exc)
            return
        if t.complete:
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
            if not t.complete and now - t.last_activity > self.cfg.transfer_idle_seconds:
                self._publish_missing(t)
                t.last_activity = now

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
        self._publish_event(self._event(
            "install_result", False, TransferError.code,
            f"transfer of bundle {sha[:12]} abandoned: {why}; nothing was installed (deploy again)",
            t.command_id, {"bundle_sha256": sha}))

    # --- install --------------------------------------------------------------------------------
    def _finish_transfer(self, t: Transfer) -> None:
        """Hash checked as the chunks came, one fsync, verify, load, smoke-test, rename into the store."""
        sha = t.spec.bundle_sha256
        started = time.perf_counter()
        try:
            path = t.finish()
            vb = verify_bundle(path.read_bytes(), self.trusted, self.cfg.max_bundle_bytes)
            m = vb.manifest
            _check_deploy_names(t.meta, m.model_name, m.version)
            loaded = self._load_verified(vb, sha)
            self.store.install_file(sha, path, m.model_name, m.version)
            self.serving.activate(loaded.runner, loaded.monitor)
        except (EdgeloopError, OSError) as exc:  # OSError: the store's disk (full, read-only, ...)
            code = exc.code if isinstance(exc, EdgeloopError) else StoreError.code
            log.error("install of bundle %s refused: %s (previous model keeps serving)", sha[:12], exc)
            self._publish_event(self._event("install_result", False, code, str(exc), t.command_id,
                                            {"bundle_sha256": sha}))
            return
        finally:
            self._drop_transfer(t)
        log.info("installed and activated %s %s (bundle %s)", m.model_name, m.version, sha[:12])
        self._publish_event(self._event(
            "install_result", True, "ok", f"{m.model_name} {m.version} installed and serving", t.command_id,
            {"bundle_sha256": sha, "model": m.model_name, "version": m.version,
             "install_ms": round((time.perf_counter() - started) * 1000, 1)}))
        self._publish_state()

    def _activate_stored(self, sha: str, command_id: str, event: str) -> None:
        loaded = self._load_installed(sha)
        self.store.activate(sha)
        self.serving.activate(loaded.runner, loaded.monitor)
        m = loaded.bundle.manifest
        log.info("activated stored bundle %s: %s %s", sha[:12], m.model_name, m.version)
        self._publish_event(self._event(event, True, "ok", f"{m.model_name} {m.version} serving", command_id,
                                        {"bundle_sha256": sha, "model": m.model_name, "version": m.version}))
        self._publish_state()

    def _rollback(self, cmd: Command) -> None:
        sha = cmd.target_bundle()
        if not self.store.has_bundle(sha):
            raise StoreError(f"cannot roll back to bundle {sha[:12]}: it is not in this agent's store "
                             "(deploy it instead)")
        self._activate_stored(sha, cmd.command_id, "rollback_result")


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
    except (ValueError, KeyError, TypeError, AttributeError, MessageFormatError):
        return None
