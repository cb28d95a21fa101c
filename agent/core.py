"""What every part of the agent process stands on: config, store, serving, the MQTT link,
loading verified bundles, and publishing state, events and drift reports.

:class:`~edgeloop.agent.service.Agent` is composed of this core, the control thread
(:mod:`edgeloop.agent.control`) and the MQTT inference thread (:mod:`edgeloop.agent.inference`).
"""

from __future__ import annotations

import functools
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeloop.agent import __version__
from edgeloop.agent.capture import SPOOL_DIR, Capture, CaptureError
from edgeloop.agent.config import AgentConfig
from edgeloop.agent.deadline import Deadline
from edgeloop.agent.drift import DriftMonitor, WindowPolicy
from edgeloop.agent.drift_windows import policy_overrides
from edgeloop.agent.errors import BundleError, EdgeloopError
from edgeloop.agent.http_api import HttpApi, HttpError
from edgeloop.agent.metrics import AgentMetrics, AgentProbes
from edgeloop.agent.mqtt_link import MqttLink, Will
from edgeloop.agent.outbox import DRIFT, EVENTS, Outbox
from edgeloop.agent.preflight_install import load_picks, served_variant
from edgeloop.agent.runtime import ModelRunner
from edgeloop.agent.serving import ModelHealth, Serving
from edgeloop.agent.store import AgentStore
from edgeloop.agent.transfer import Transfer
from edgeloop.agent.trust_store import AgentTrust
from edgeloop.agent.watchdog import Watchdog
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.bundle import VerifiedBundle
from edgeloop.agent.wire.capture import FEEDBACK, Feedback
from edgeloop.agent.wire.envelope import REPORT_KEY_FIELD, raw_public_key, sign_report
from edgeloop.agent.wire.fields import dumps
from edgeloop.agent.wire.messages import (
    ActiveModel,
    AgentState,
    Command,
    DriftReport,
    Event,
    Message,
    ProbationStatus,
    check_tags,
    decode,
)

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from edgeloop.agent.discovery import AgentAnnouncer

log = logging.getLogger("edgeloop.agent.service")

# progress of a transfer, and requests for missing chunks: not kept while the broker is unreachable
# (the agent asks for the missing chunks again on every connect)
VOLATILE_EVENTS = ("transfer_progress", "transfer_missing")


@dataclass
class Loaded:
    """A verified bundle loaded in onnxruntime, smoke-tested, with its drift monitor."""

    bundle: VerifiedBundle
    runner: ModelRunner
    monitor: DriftMonitor | None


class AgentCore:
    def __init__(self, config: AgentConfig, *, clock=time.time) -> None:
        self.cfg = config
        self.id = config.agent_id
        self.root = config.topic_root  # every topic this agent subscribes or publishes is under it
        self.clock = clock
        # trusted_keys, trusted_roots and what certificates, revocations and rotations taught it (docs/security.md)
        self.trust = AgentTrust(config.load_trusted_keys(), config.load_trusted_keys(roots=True), config.state_dir,
                                clock)
        self.report_key = config.load_agent_key()  # signs every event, drift report and state (docs/security.md)
        self.store = AgentStore(config.state_dir)
        self.serving = Serving(on_drift_report=self._publish_drift, on_health_change=self._publish_model_health,
                               on_activate=lambda runner: self.metrics.model_swapped())
        self.metrics = AgentMetrics(self.id, AgentProbes(  # GET /metrics (docs/metrics.md)
            active=lambda: self.serving.active, health=self.health, queue_depth=lambda: self._infer_q.qsize(),
            transfers=self._transfer_progress))
        self.watchdog = Watchdog(self._worker_restarted, self._worker_given_up)
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
            broker=config.broker_settings(),
            on_message=self._on_message,
            on_connect=lambda: self._control_q.put(("connected", None)),
            subscriptions=[
                (self._topic(topics.CMD), 1),
                (self._topic(topics.BUNDLE), 1),
                (self._topic(topics.INFER), 1),
                (self._topic(FEEDBACK), 1),
            ],
            will=Will(self._topic(topics.STATUS), topics.OFFLINE.encode(), 1, True),
        )

        # drift reports and events: kept on disk while the broker is unreachable (see edgeloop.agent.outbox)
        self.outbox = Outbox(
            config.state_dir / "outbox", publish=self._publish_report, connected=self.link.connected.is_set,
            validators={EVENTS: lambda b: decode(b, Event), DRIFT: lambda b: decode(b, DriftReport)},
            dropped_report=self._dropped_report,
            max_messages=config.outbox_max_messages, max_bytes=config.outbox_max_bytes,
        )
        # opt-in capture of served rows, uploaded to the hub (edgeloop.agent.capture; off by default)
        self.capture = Capture(config.capture, config.state_dir / SPOOL_DIR, agent_id=self.id,
                               sign=lambda doc: dumps(sign_report(self.report_key, doc)),
                               publish=lambda leaf, data: self.link.publish(self._topic(leaf), data, qos=1),
                               connected=self.link.connected.is_set, clock=clock)
        self.serving.capture = self.capture.observe
        self.capture.on_labels = self._labels_arrived  # realized accuracy beside the drift window's estimate

    # --- opt-in capture (edgeloop.agent.capture) -----------------------------------------------
    def _capture_command(self, cmd: Any) -> None:
        """A signed ``capture`` (settings), ``capture_upload`` (cut the sample now) or ``capture_ack`` (the hub
        has a batch: it leaves the spool; not answered) command."""
        if cmd.command == "capture_ack":
            self.capture.acknowledged(str(cmd.args.get("batch_id", "")))
            return
        if cmd.command == "capture":
            s = self.capture.configure(cmd.args)
            msg, details = f"capture {'on' if s.enabled else 'off'}", s.to_table()
        else:
            n = self.capture.request_upload()
            msg, details = f"capture sample of {n} rows cut for upload", {"rows": n}
        self._publish_event(self._event("command_result", True, "ok", msg, cmd.command_id, details))

    def feedback(self, payload: bytes, model: str | None = None) -> dict:
        """A ground-truth label (``{"id", "label"}``) for a captured request: ``{"id", "labelled_rows"}``."""
        fb = Feedback.decode(payload)
        return {"id": fb.id, "labelled_rows": self.capture.feedback(fb, model)}

    def _labels_arrived(self, model: str, version: str, correct: int, labelled: int) -> None:
        """Feedback labels on the active model's answers go into its open drift window (realized accuracy)."""
        try:
            served = self.serving.lookup(model, version)
        except EdgeloopError:  # that model or version is not served (any more)
            return
        monitor = served.monitor
        if monitor is not None:
            monitor.record_labels(correct, labelled)

    def http_feedback(self, model: str, body: bytes) -> dict:
        """``POST /v2/models/{model}/feedback``: :meth:`feedback`; 409 while capture is off."""
        try:
            return self.feedback(body, model)
        except CaptureError as exc:
            raise HttpError(409, exc.code, str(exc)) from None

    def _mqtt_feedback(self, payload: bytes) -> None:
        try:
            self.feedback(payload)
        except EdgeloopError as exc:
            log.warning("feedback on MQTT refused: %s", exc)

    def _topic(self, leaf: str) -> str:
        """This agent's topic ``leaf`` under its fleet's topic root."""
        return topics.agent_topic(self.id, leaf, self.root)

    def _on_message(self, topic: str, payload: bytes, msg: Any) -> None:  # pragma: no cover - see Agent
        raise NotImplementedError

    # --- loading verified bundles ----------------------------------------------------------
    def _load_installed(self, sha256: str) -> Loaded:
        """Re-verify a stored bundle (disk may have been tampered with) and load it."""
        data = self.store.read_bundle(sha256)
        vb = self.trust.verify_bundle(data, self.cfg.max_bundle_bytes)
        return self._load_verified(vb, sha256)

    def _load_verified(self, vb: VerifiedBundle, sha256: str) -> Loaded:
        try:
            deadline = Deadline(self.cfg.install_timeout_seconds, f"installing {vb.manifest.model_name} "
                                f"{vb.manifest.version}")  # load, warm-up and smoke test together
            manifest, model_bytes = served_variant(vb, load_picks(self.cfg.state_dir).get(sha256))  # pre-flight's pick
            runner = ModelRunner.load(manifest, model_bytes, bundle_sha256=sha256, deadline=deadline)
        except EdgeloopError:
            raise
        except Exception as exc:  # onnxruntime refused the model
            raise BundleError(f"model {vb.manifest.entrypoint} failed to load in onnxruntime: {exc}") from exc
        runner.smoke_test(deadline)
        monitor = None
        if vb.manifest.drift is not None:
            monitor = DriftMonitor(
                vb.manifest.drift, agent_id=self.id, model=vb.manifest.model_name,
                version=vb.manifest.version, bundle_sha256=sha256,
                policy=WindowPolicy.of(vb.manifest.drift,  # [drift], then the deploy's drift (drift_windows.py)
                                       **policy_overrides(self.cfg.state_dir, sha256, self.cfg.drift_overrides())),
                performance=vb.manifest.performance,  # calibrated classifiers: accuracy estimated per window
            )
        return Loaded(vb, runner, monitor)

    # --- publishing ----------------------------------------------------------------------
    def _event(self, kind: str, ok: bool, code: str, message: str, command_id: str | None = None,
               details: dict | None = None) -> Event:
        return Event(event=kind, agent_id=self.id, ok=ok, at=self.clock(), code=code, message=message,
                     command_id=command_id, details=details or {})

    def _publish_event(self, ev: Event) -> None:
        """Publish ``ev`` now, or keep it in the outbox until the broker is back (progress is not kept)."""
        if ev.event not in VOLATILE_EVENTS:
            self.outbox.submit(EVENTS, self._signed(ev))
        elif self.link.connected.is_set():
            self.link.publish(self._topic(topics.EVENTS), self._signed(ev), qos=1)
        else:
            log.debug("broker unreachable: %s event not kept (asked again on reconnect)", ev.event)

    def _publish_drift(self, report: DriftReport) -> None:
        """Called on the serving thread that closed the window: never waits for the disk or the broker."""
        self.metrics.drift(report)
        if report.drifted_features:
            log.warning("drift on %s (window %d): %s", report.model, report.window, ", ".join(report.drifted_features))
        self.outbox.submit(DRIFT, self._signed(report))

    def _transfer_progress(self) -> list[tuple[str, int, int]]:
        """(transfer id, bytes received, size) of every transfer in progress (read when /metrics is scraped)."""
        return [(t.spec.transfer_id, min(t.count_received * t.spec.chunk_size, t.spec.size), t.spec.size)
                for t in list(self._transfers.values())]

    def _publish_report(self, kind: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        """The outbox's way out: one event or drift report at QoS 1."""
        return self.link.publish(self._topic(topics.EVENTS if kind == EVENTS else topics.DRIFT), payload, qos=1)

    def _dropped_report(self, counts: dict[str, int]) -> bytes:
        what = " and ".join(f"{n} {'drift reports' if kind == DRIFT else kind}" for kind, n in counts.items())
        return self._signed(self._event(
            "error", False, "reports_dropped",
            f"{what} were dropped while the broker was unreachable (the outbox was full or could not be written); "
            "raise [outbox] max_messages / max_bytes in the agent config or free disk space",
            details={"dropped": dict(counts)}))

    def _state_message(self, status: str) -> AgentState:
        active = self.store.active()
        return AgentState(
            agent_id=self.id, status=status, session=self.session, agent_version=__version__,
            started_at=self.started_at, host=socket.gethostname(),
            http_url=self.http.url if self.http is not None else None,
            active=ActiveModel(active.model, active.version, active.sha256) if active else None,
            models=[ActiveModel(b.model, b.version, b.sha256) for b in self.store.actives()],
            installed=[ActiveModel(b.model, b.version, b.sha256) for b in self.store.installed()],
            trusted_keys=self.trust.keyids(), tags=self._tags(),
            probation=self._probation_status(),
        )

    def _tags(self) -> dict[str, str]:
        """The tags in the state: those the hub set (signed ``set_tags``), else the config's ``[tags]``."""
        hub = self.store.tags()
        return dict(self.cfg.tags) if hub is None else hub

    def _set_tags(self, cmd: Command) -> None:
        """The hub's signed ``set_tags``: ``{"tags": {...}}`` replaces the tags (``null``: back to the
        config's); saved before the new state is announced."""
        raw = cmd.args.get("tags")
        tags = None if raw is None else check_tags(raw, "set_tags.args.tags")
        self.store.set_tags(tags)
        self._publish_state()
        shown = ",".join(f"{k}={v}" for k, v in sorted(self._tags().items())) or "(none)"
        log.info("tags set by command %s: %s", cmd.command_id, shown)
        self._publish_event(self._event("command_result", True, "ok", f"tags: {shown}", cmd.command_id))

    def _probation_status(self) -> ProbationStatus | None:
        """The active version's probation, if any (the dead-man switch, :mod:`edgeloop.agent.dead_man`)."""
        return None

    def _publish_state(self) -> None:
        self.link.publish(self._topic(topics.STATE), self._state_payload(topics.ONLINE), qos=1, retain=True)

    def _state_payload(self, status: str) -> bytes:
        """The retained state, signed, naming the public key this agent signs its reports with."""
        doc = {**self._state_message(status).to_dict(), REPORT_KEY_FIELD: raw_public_key(self.report_key.public)}
        return dumps(sign_report(self.report_key, doc))

    def _signed(self, msg: Message) -> bytes:
        """A report as sent: the message with this agent's signature (:func:`sign_report`)."""
        return dumps(sign_report(self.report_key, msg.to_dict()))

    # --- worker threads, the watchdog, health (see edgeloop.agent.watchdog) ---------------------------
    def _start_workers(self, workers: list[tuple[str, Any]]) -> None:
        """Start the worker threads, watch them, the outbox and the HTTP server; start the watchdog."""
        for name, target in workers:
            self._spawn(name, target)
            self.watchdog.watch(name, functools.partial(self._worker_alive, name),
                                functools.partial(self._spawn, name, target))
        outbox: Any = self.outbox
        self.watchdog.watch("outbox", lambda: outbox._thread is not None and outbox._thread.is_alive(), outbox.start)
        if self.http is not None:
            self.watchdog.watch("http", self.http.alive, self.http.restart)
        self._threads.append(self.watchdog.start(self._stop))

    def _spawn(self, name: str, target: Any) -> None:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: B036 - recorded for the watchdog's report, the thread ends
                self.watchdog.causes[name] = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("the %s thread ended on an exception", name)

        thread = threading.Thread(target=run, name=f"agent-{name}", daemon=True)
        self._threads[:] = [t for t in self._threads if t.name != thread.name] + [thread]
        thread.start()

    def _worker_alive(self, name: str) -> bool:
        return any(t.name == f"agent-{name}" and t.is_alive() for t in self._threads)

    def _worker_restarted(self, name: str, restarts: int, cause: str) -> None:
        self._publish_event(self._event("error", False, "worker_restarted",
                                        f"the agent's {name} thread died ({cause}) and was restarted",
                                        details={"worker": name, "restarts": restarts}))

    def _worker_given_up(self, name: str, reason: str) -> None:
        self._publish_event(self._event("error", False, "worker_failed", reason, details={"worker": name}))

    def _publish_model_health(self, health: ModelHealth) -> None:
        """On a request thread, when the active model starts or stops failing: a ``model_health`` event."""
        what = (f"{health.errors} of its last {health.requests} requests failed" +
                (f" (last: {health.last_error})" if health.failing else ""))
        self._publish_event(self._event("model_health", not health.failing,
                                        "model_failing" if health.failing else "ok",
                                        f"model {health.model} version {health.version}: {what}",
                                        details=health.to_dict()))

    def health(self) -> dict:
        """What ``/v2/health/ready`` answers: ``{"ready", "reasons", "model", "workers"}`` (docs/protocol.md)."""
        reasons = self.watchdog.problems() + self.serving.problems()
        model = self.serving.health()
        models = [h.to_dict() for name in self.serving.models() if (h := self.serving.health(name)) is not None]
        return {"ready": not reasons, "reasons": reasons, "model": model.to_dict() if model is not None else None,
                "models": models, "workers": self.watchdog.status()}
