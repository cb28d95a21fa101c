"""The agent process: MQTT + HTTP front ends over a store, a runner and a drift monitor.

Threads and who owns what:

* paho's network thread only sorts incoming messages into queues;
* the **control** thread owns the store and the transfers: it verifies commands,
  writes chunks, installs, rolls back and publishes state and events;
* the **inference** thread answers MQTT inference requests; HTTP requests are
  answered on the HTTP server's own threads; both go through :class:`Serving`,
  whose active model is swapped atomically by the control thread.

A bundle is loaded only after :func:`agent.bundle.verify_bundle` passes, its
smoke test passes, and it is on disk; until then the previous model keeps serving.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeloop.agent import __version__
from edgeloop.agent.config import AgentConfig
from edgeloop.agent.drift import DriftMonitor
from edgeloop.agent.errors import (
    BundleError,
    BundleMismatchError,
    BundleTooLargeError,
    DiskSpaceError,
    EdgeloopError,
    InferenceError,
    MessageFormatError,
    StoreError,
)
from edgeloop.agent.http_api import HttpApi
from edgeloop.agent.mqtt_link import MqttLink, Will
from edgeloop.agent.runtime import ModelRunner
from edgeloop.agent.serving import Serving
from edgeloop.agent.store import AgentStore
from edgeloop.agent.transfer import Transfer
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.bundle import VerifiedBundle, verify_bundle
from edgeloop.agent.wire.commands import verify_command
from edgeloop.agent.wire.messages import (
    ActiveModel,
    AgentState,
    Chunk,
    Command,
    DriftReport,
    Event,
    InferError,
    InferRequest,
    InferResult,
)

if TYPE_CHECKING:
    from edgeloop.agent.discovery import AgentAnnouncer

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    bundle: VerifiedBundle
    runner: ModelRunner
    monitor: DriftMonitor | None


class Agent:
    def __init__(self, config: AgentConfig, *, clock=time.time) -> None:
        self.cfg = config
        self.id = config.agent_id
        self.clock = clock
        self.trusted = config.load_trusted_keys()
        self.store = AgentStore(config.state_dir)
        self.serving = Serving(on_drift_report=self._publish_drift)
        self.http: HttpApi | None = None
        self.started_at = clock()
        self.session = 0
        self._control_q: queue.Queue = queue.Queue()
        self._infer_q: queue.Queue = queue.Queue(maxsize=config.max_queued_requests)
        self._transfers: dict[str, Transfer] = {}
        self._pending_events: list[Event] = []
        self._stop = threading.Event()  # set once stop() has begun
        self._stop_reason: str | None = None  # set by request_stop(), e.g. from a signal handler
        self._threads: list[threading.Thread] = []
        self._discovery: AgentAnnouncer | None = None
        self.link = MqttLink(
            client_id=f"edgeloop-agent-{self.id}",
            host=config.mqtt_host,
            port=config.mqtt_port,
            username=config.mqtt_username,
            password=config.mqtt_password,
            keepalive=config.keepalive,
            on_message=self._on_message,
            on_connect=lambda: self._control_q.put(("connected", None)),
            subscriptions=[
                (topics.agent_topic(self.id, topics.CMD), 1),
                (topics.agent_topic(self.id, topics.BUNDLE), 1),
                (topics.agent_topic(self.id, topics.INFER), 1),
            ],
            will=Will(topics.agent_topic(self.id, topics.STATUS), topics.OFFLINE.encode(), 1, True),
        )

    # --- lifecycle ---------------------------------------------------------------
    def start(self) -> Agent:
        self._restore()
        for t in Transfer.load_pending(self.store.incoming_dir):
            self._transfers[t.spec.transfer_id] = t
        if self.cfg.http_enabled:
            self.http = HttpApi(
                self.serving, host=self.cfg.http_host, port=self.cfg.http_port,
                max_body=self.cfg.max_request_bytes, max_connections=self.cfg.http_max_connections,
            ).start()
            log.info("HTTP (Open Inference Protocol v2) on %s", self.http.url)
        for name, target in (("control", self._control_loop), ("inference", self._infer_loop)):
            thread = threading.Thread(target=target, name=f"agent-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self.link.start()
        if self.cfg.zeroconf:
            self._start_discovery()
        log.info("agent %s started (state in %s, broker %s:%s)", self.id, self.cfg.state_dir,
                 self.cfg.mqtt_host, self.cfg.mqtt_port)
        return self

    def stop(self) -> None:
        """Stop cleanly (idempotent): retained offline ``state`` and ``status``, then HTTP, zeroconf, transfers."""
        if self._stop.is_set():
            return
        self._stop.set()
        log.info("agent %s stopping", self.id)
        self._control_q.put(("stop", None))
        self._infer_q.put(None)
        for t in self._threads:
            t.join(timeout=5)
        delivered = False
        try:
            offline = self._state_message(topics.OFFLINE)
            delivered = self.link.stop(final=[
                (topics.agent_topic(self.id, topics.STATE), offline.encode(), 1, True),
                (topics.agent_topic(self.id, topics.STATUS), topics.OFFLINE.encode(), 1, True),
            ])
        except Exception:  # the rest of the stop must still happen
            log.exception("could not publish the offline state")
        closers = [("HTTP server", self.http.stop if self.http is not None else None),
                   ("zeroconf announcement", self._discovery.close if self._discovery is not None else None),
                   *((f"transfer {tid[:8]}", t.close) for tid, t in self._transfers.items())]
        for what, close in closers:
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("could not close the %s", what)
        log.info("agent %s stopped (%s)", self.id, "offline state published" if delivered else
                 "offline state NOT published: broker unreachable or slow; its Last Will reports the agent offline")

    def run_forever(self, poll: float = 0.2) -> None:
        """Start, serve until :meth:`request_stop`, then :meth:`stop` on this (the calling) thread."""
        self.start()
        try:
            while self._stop_reason is None:
                time.sleep(poll)
            log.info("agent %s: %s", self.id, self._stop_reason)
        finally:
            self.stop()

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask :meth:`run_forever` to stop. Only sets a flag: safe from a signal handler."""
        if self._stop_reason is None:
            self._stop_reason = reason

    @property
    def stop_requested(self) -> bool:
        return self._stop_reason is not None

    # --- network thread: sort, never block --------------------------------------------
    def _on_message(self, topic: str, payload: bytes, msg: Any) -> None:
        parsed = topics.parse_agent_topic(topic)
        if parsed is None or parsed[0] != self.id:
            return
        leaf = parsed[1]
        if leaf in (topics.CMD, topics.BUNDLE):
            self._control_q.put((leaf, payload))
        elif leaf == topics.INFER:
            try:
                self._infer_q.put_nowait(payload)
            except queue.Full:
                self._reply_error(payload, None, "overloaded", "agent is overloaded: request dropped, retry later")

    # --- restore after a restart ---------------------------------------------------------
    def _load_installed(self, sha256: str) -> _Loaded:
        """Re-verify a stored bundle (disk may have been tampered with) and load it."""
        data = self.store.read_bundle(sha256)
        vb = verify_bundle(data, self.trusted, self.cfg.max_bundle_bytes)
        return self._load_verified(vb, sha256)

    def _load_verified(self, vb: VerifiedBundle, sha256: str) -> _Loaded:
        try:
            runner = ModelRunner.load(vb.manifest, vb.model_bytes, bundle_sha256=sha256)
        except EdgeloopError:
            raise
        except Exception as exc:  # onnxruntime refused the model
            raise BundleError(f"model {vb.manifest.entrypoint} failed to load in onnxruntime: {exc}") from exc
        runner.smoke_test()
        monitor = None
        if vb.manifest.drift is not None:
            monitor = DriftMonitor(
                vb.manifest.drift, agent_id=self.id, model=vb.manifest.model_name,
                version=vb.manifest.version, bundle_sha256=sha256,
            )
        return _Loaded(vb, runner, monitor)

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
            except Exception:  # keep the agent alive, say what happened
                log.exception("control thread failed on %s", kind)
                self._publish_event(self._event("error", False, "internal",
                                                f"internal error handling {kind}; see agent log"))
            self._check_idle_transfers()

    def _on_connected(self) -> None:
        self.session = self.store.next_session()
        self._publish_state()  # the birth certificate first, so "online" never points at a stale state
        self.link.publish(topics.agent_topic(self.id, topics.STATUS), topics.ONLINE, qos=1, retain=True)
        for ev in self._pending_events:
            self._publish_event(ev)
        self._pending_events.clear()
        for t in self._transfers.values():  # resume interrupted transfers
            if not t.complete:
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
        free = shutil.disk_usage(self.cfg.state_dir).free
        need = 2 * spec.size + self.cfg.min_free_bytes
        if free < need:
            raise DiskSpaceError(
                f"only {free / 2**20:.1f} MiB free in {self.cfg.state_dir}; a bundle of {spec.size / 2**20:.1f} MiB "
                f"needs {need / 2**20:.1f} MiB (twice its size plus limits.min_free_bytes = "
                f"{self.cfg.min_free_bytes / 2**20:.1f} MiB): free some space or lower limits.min_free_bytes")
        meta = {"model": cmd.args.get("model", ""), "version": cmd.args.get("version", "")}
        stored = self.store.get(spec.bundle_sha256)
        if stored is not None:
            _check_deploy_names(meta, stored.model, stored.version)
        if self.store.has_bundle(spec.bundle_sha256):
            self._publish_event(self._event("command_result", True, "ok", "bundle already in store; activating",
                                            cmd.command_id, {"chunks": 0}))
            self._activate_stored(spec.bundle_sha256, cmd.command_id, "install_result")
            return
        t = self._transfers.get(spec.transfer_id) or Transfer.open(self.store.incoming_dir, spec, cmd.command_id, meta)
        self._transfers[spec.transfer_id] = t
        self._publish_event(self._event(
            "command_result", True, "ok", f"deploy accepted; waiting for {spec.chunks} chunks",
            cmd.command_id, {"transfer_id": spec.transfer_id, "chunks": spec.chunks,
                             "missing": len(t.missing(spec.chunks))}))
        if t.complete:
            self._finish_transfer(t)

    def _handle_chunk(self, payload: bytes) -> None:
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

    def _check_idle_transfers(self) -> None:
        now = time.monotonic()
        for t in list(self._transfers.values()):
            if not t.complete and now - t.last_activity > self.cfg.transfer_idle_seconds:
                self._publish_missing(t)
                t.last_activity = now

    def _publish_missing(self, t: Transfer) -> None:
        missing = t.missing(limit=2000)
        log.info("transfer %s: asking again for %d missing chunks", t.spec.transfer_id[:8], len(missing))
        self._publish_event(self._event(
            "transfer_missing", True, "ok", f"{len(missing)} chunks missing", t.command_id,
            {"transfer_id": t.spec.transfer_id, "missing": missing}))

    def _finish_transfer(self, t: Transfer) -> None:
        sha = t.spec.bundle_sha256
        started = time.perf_counter()
        try:
            data = t.read_verified()
            vb = verify_bundle(data, self.trusted, self.cfg.max_bundle_bytes)
            m = vb.manifest
            _check_deploy_names(t.meta, m.model_name, m.version)
            loaded = self._load_verified(vb, sha)
            self.store.install(sha, data, m.model_name, m.version)
            self.serving.activate(loaded.runner, loaded.monitor)
        except EdgeloopError as exc:
            log.error("install of bundle %s refused: %s (previous model keeps serving)", sha[:12], exc)
            self._publish_event(self._event("install_result", False, exc.code, str(exc), t.command_id,
                                            {"bundle_sha256": sha}))
            return
        finally:
            t.discard()
            self._transfers.pop(t.spec.transfer_id, None)
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

    # --- inference thread -------------------------------------------------------------------
    def _infer_loop(self) -> None:
        while True:
            payload = self._infer_q.get()
            if payload is None:
                return
            try:
                self._handle_infer(payload)
            except Exception:
                log.exception("inference request failed unexpectedly")
                self._reply_error(payload, None, "internal", "internal error; see the agent log")

    def _handle_infer(self, payload: bytes) -> None:
        try:
            req = InferRequest.decode(payload, limit=self.cfg.max_request_bytes)
        except EdgeloopError as exc:
            self._reply_error(payload, None, exc.code, str(exc))
            return
        reply = req.reply_to or topics.agent_topic(self.id, topics.INFER_RESULT)
        try:
            out = self.serving.infer(req.inputs, req.model, max_rows=self.cfg.max_rows)
        except InferenceError as exc:
            self._reply_error(payload, reply, exc.code, str(exc), req.id)
            return
        res = InferResult(id=req.id, model=out.model, version=out.version, outputs=out.outputs,
                          latency_ms=round(out.latency_ms, 3))
        self.link.publish(reply, res.encode(), qos=1)

    def _reply_error(self, payload: bytes, reply: str | None, code: str, message: str, rid: str | None = None) -> None:
        if rid is None:
            rid = _peek_field(payload, "id")
        if reply is None:
            reply = _peek_field(payload, "reply_to") or topics.agent_topic(self.id, topics.INFER_RESULT)
            if any(c in reply for c in "+#\0"):
                reply = topics.agent_topic(self.id, topics.INFER_RESULT)
        self.link.publish(reply, InferError(id=rid, code=code, message=message).encode(), qos=1)

    # --- publishing ----------------------------------------------------------------------
    def _event(self, kind: str, ok: bool, code: str, message: str, command_id: str | None = None,
               details: dict | None = None) -> Event:
        return Event(event=kind, agent_id=self.id, ok=ok, at=self.clock(), code=code, message=message,
                     command_id=command_id, details=details or {})

    def _publish_event(self, ev: Event) -> None:
        self.link.publish(topics.agent_topic(self.id, topics.EVENTS), ev.encode(), qos=1)

    def _publish_drift(self, report: DriftReport) -> None:
        if report.drifted_features:
            log.warning("drift on %s (window %d): %s", report.model, report.window, ", ".join(report.drifted_features))
        self.link.publish(topics.agent_topic(self.id, topics.DRIFT), report.encode(), qos=1)

    def _state_message(self, status: str) -> AgentState:
        active = self.store.active()
        return AgentState(
            agent_id=self.id, status=status, session=self.session, agent_version=__version__,
            started_at=self.started_at, host=socket.gethostname(),
            http_url=self.http.url if self.http is not None else None,
            active=ActiveModel(active.model, active.version, active.sha256) if active else None,
            installed=[ActiveModel(b.model, b.version, b.sha256) for b in self.store.installed()],
        )

    def _publish_state(self) -> None:
        self.link.publish(topics.agent_topic(self.id, topics.STATE),
                          self._state_message(topics.ONLINE).encode(), qos=1, retain=True)

    def _start_discovery(self) -> None:
        try:
            from edgeloop.agent.discovery import AgentAnnouncer

            self._discovery = AgentAnnouncer(self.id, self.cfg, self.http.port if self.http else None,
                                             interfaces=self.cfg.zeroconf_interfaces or None).start()
        except Exception as exc:  # discovery is a convenience; never fatal
            log.warning("zeroconf announcement failed: %s", exc)


def _check_deploy_names(want: dict, model: str, version: str) -> None:
    """Refuse a bundle holding another model or version than the deploy command names."""
    if want.get("model") and (want["model"], want.get("version")) != (model, version):
        raise BundleMismatchError(
            f"bundle holds {model} {version}, the deploy command named {want['model']} {want.get('version')}; "
            "nothing was installed: deploy the bundle built for that model version")


def _peek_field(payload: bytes, key: str) -> str:
    """Best-effort read of a field from an untrusted, possibly malformed JSON message."""
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return ""
    val = obj.get(key) if isinstance(obj, dict) else None
    return str(val) if isinstance(val, (str, int)) and not isinstance(val, bool) else ""


def _peek_command_id(payload: bytes) -> str | None:
    """The command id of an envelope that failed verification (unverified; for correlation only)."""
    try:
        doc = json.loads(payload)
        import base64

        inner = json.loads(base64.b64decode(doc["payload"]))
        cid = inner.get("command_id")
        return cid if isinstance(cid, str) and len(cid) <= 64 else None
    except (ValueError, KeyError, TypeError, AttributeError, MessageFormatError):
        return None
