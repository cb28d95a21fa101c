"""One lightweight simulated agent: the real agent's MQTT protocol, without a disk, a model or a thread.

Pure: bytes in, :class:`Publish` / :class:`Subscribe` / :class:`Unsubscribe` actions out, the clock
passed in -- :mod:`tests.sim_fleet` runs a thousand of them over real paho clients in one process.
What it speaks is the real agent's (``agent/control.py``, ``agent/core.py``, ``agent/dead_man.py``),
with the real codecs of ``edgeloop.agent.wire``:

* on every connect: the retained ``state`` (an :class:`AgentState` signed with the agent's own report
  key, naming that key and the hub keys it trusts), then the retained ``online`` status; its Last Will
  is the retained ``offline`` status;
* a command is acted on only after :func:`verify_command` (the hub's key, target, expiry, counter)
  and the lifetime check; refusals are ``command_result`` events with the error's code;
* ``deploy``: ``command_result`` (accepted, waiting for N chunks; or "already in store"), the
  chunks on the transfer's shared topic (subscribed before answering) or the own ``bundle`` topic,
  each decoded with :class:`Chunk` (CRC), the whole bundle's sha256 checked against the signed
  command, then :func:`verify_bundle` (signature, every file's hash), the names checked against the
  command, then the new retained state and ``install_result`` -- in this order, as the real agent;
  gaps are asked for with ``transfer_missing``; an expired transfer is abandoned (``transfer``);
* ``rollback`` to a bundle of its store (``rollback_result``), ``confirm`` of a version on
  probation, ``set_tags``; a deploy with ``probation`` runs the real dead-man decision
  (:func:`edgeloop.agent.probation.decide`) on the simulated serving counts;
* signed ``serving`` reports (:class:`ServingReport`, QoS 0) every ``report_s`` while the active
  version is new and its counts changed, with the versions it replaced (their p99 is what the
  rollout gates compare against), as ``agent/serving_report.py``; spread over the interval.

What it does not do: load or serve a model (it counts simulated requests at ``requests_per_s``),
keep anything across a restart, inference, capture, drift, shadow mode, pre-flight. :class:`Behaviour`
injects faults (failed installs, slow or failing versions, a hung agent).
"""

from __future__ import annotations

import hashlib
import math
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from edgeloop.agent import __version__
from edgeloop.agent.control import MAX_COMMAND_LIFETIME, _check_deploy_names, _deploy_meta, _peek_command_id
from edgeloop.agent.errors import (
    CommandLifetimeError,
    EdgeloopError,
    HashMismatchError,
    SmokeTestError,
    StoreError,
    TransferError,
)
from edgeloop.agent.probation import PASS, REVERT, OnProbation, decide
from edgeloop.agent.serving_report import REPORT_FOR_S
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.bundle import verify_bundle
from edgeloop.agent.wire.commands import Probation, confirm_target, probation_of, verify_command
from edgeloop.agent.wire.envelope import REPORT_KEY_FIELD, SigningKey, TrustedKeys, raw_public_key, sign_report
from edgeloop.agent.wire.fields import dumps
from edgeloop.agent.wire.messages import (
    ActiveModel,
    AgentState,
    Chunk,
    Command,
    Event,
    Message,
    TransferSpec,
    check_tags,
)
from edgeloop.agent.wire.serving import MAX_VERSIONS, ServingReport, VersionServing

HOST = socket.gethostname()


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class Subscribe:
    topic: str
    qos: int = 1


@dataclass(frozen=True)
class Unsubscribe:
    topic: str


Action = Publish | Subscribe | Unsubscribe


@dataclass
class Behaviour:
    """How a simulated agent behaves; the defaults behave like a healthy real agent."""

    fail_install: str | None = None  # an error code: every install fails with it (e.g. smoke_test_failed)
    fail_versions: frozenset[str] = frozenset()  # only these versions fail to install
    silent: bool = False  # answers no command at all (a hung agent: the hub times out)
    requests_per_s: float = 50.0  # simulated served requests (the probation and the serving reports count them)
    error_rate: float = 0.0  # share of them that fail
    latency_ms: float = 4.0  # p99 reported for every version ...
    slow_versions: frozenset[str] = frozenset()  # ... but these, three times slower
    report_s: float = 10.0  # a serving report this often while the active version is new ([serving] report_seconds)
    idle_s: float = 5.0  # a transfer quiet this long asks for its missing chunks (transfer_idle_seconds)


@dataclass
class _Stored:
    model: str
    version: str
    sha256: str


@dataclass
class _Serving:
    """A version served since its activation (until the next one's)."""

    model: str
    version: str
    since: float
    until: float | None = None


@dataclass
class _Transfer:
    spec: TransferSpec
    command_id: str
    meta: dict
    expires_at: float
    last_activity: float
    buf: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    count: int = 0
    asked: bool = False
    quiet_asks: int = 0


class SimAgent:
    """One simulated agent (see the module docstring). Every method returns the actions to carry out."""

    def __init__(self, agent_id: str, hub_keys: TrustedKeys, *, root: str = topics.ROOT,
                 tags: dict[str, str] | None = None, behaviour: Behaviour | None = None,
                 clock: Callable[[], float], report_key: SigningKey | None = None) -> None:
        self.id = topics.check_agent_id(agent_id)
        self.root = topics.check_root(root)
        self.hub_keys = hub_keys
        self.tags = check_tags(dict(tags or {}))
        self.behaviour = behaviour or Behaviour()
        self.clock = clock
        self.report_key = report_key or SigningKey.generate()
        self.started_at = clock()
        self.session = 0
        self.counters: dict[str, int] = {}  # accepted counter per hub key id (replay protection)
        self.store: dict[str, _Stored] = {}  # sha256 -> bundle, in install order
        self.active: str | None = None
        self.transfers: dict[str, _Transfer] = {}
        self.probation: OnProbation | None = None
        self._serving: list[_Serving] = []  # newest first; the first is the active version's
        # the reporter's phase: real agents' reports are spread over the interval, not all at once
        self._phase = int(hashlib.sha256(self.id.encode()).hexdigest()[:8], 16) / 16**8
        self._next_report = 0.0
        self._reported: tuple | None = None
        self.serving_reports = 0
        self.events: list[Event] = []  # every event published, in order (for checks)
        self.refused: list[str] = []  # codes of refused commands

    def preinstall(self, bundle: bytes) -> None:
        """Start with ``bundle`` installed and active (verified as a deploy would; before connecting)."""
        vb = verify_bundle(bundle, self.hub_keys)
        sha = hashlib.sha256(bundle).hexdigest()
        self.store[sha] = _Stored(vb.manifest.model_name, vb.manifest.version, sha)
        self.active = sha
        self._serve(self.store[sha], since=self.clock() - 2 * REPORT_FOR_S)  # long in service: not reported

    # --- topics ----------------------------------------------------------------------------------
    def topic(self, leaf: str) -> str:
        return topics.agent_topic(self.id, leaf, self.root)

    @property
    def client_id(self) -> str:
        return f"edgeloop-agent-{self.id}"

    def will(self) -> Publish:
        return Publish(self.topic(topics.STATUS), topics.OFFLINE.encode(), 1, True)

    def subscriptions(self) -> list[Subscribe]:
        subs = [Subscribe(self.topic(topics.CMD)), Subscribe(self.topic(topics.BUNDLE))]
        return subs + [Subscribe(t.spec.topic) for t in self.transfers.values() if t.spec.topic]

    # --- connect and stop ------------------------------------------------------------------------
    def on_connected(self) -> list[Action]:
        """The birth certificate first, then ``online`` (as the real agent's ``_on_connected``)."""
        self.session += 1
        return [self._state(), Publish(self.topic(topics.STATUS), topics.ONLINE.encode(), 1, True)]

    def goodbye(self, forget: bool = False) -> list[Action]:
        """A clean stop: the retained offline state and status; with ``forget`` both retained messages are
        cleared instead (a shared test broker then keeps nothing of this agent)."""
        if forget:
            return [Publish(self.topic(topics.STATE), b"", 1, True), Publish(self.topic(topics.STATUS), b"", 1, True)]
        return [self._state(topics.OFFLINE), Publish(self.topic(topics.STATUS), topics.OFFLINE.encode(), 1, True)]

    # --- messages --------------------------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes) -> list[Action]:
        if topics.parse_transfer_topic(topic, self.root) is not None:
            return self._chunk(payload, shared=True)
        parsed = topics.parse_agent_topic(topic, self.root)
        if parsed is None or parsed[0] != self.id:
            return []
        if parsed[1] == topics.CMD:
            return [] if self.behaviour.silent else self._command(payload)
        if parsed[1] == topics.BUNDLE:
            return self._chunk(payload, shared=False)
        return []

    def _command(self, payload: bytes) -> list[Action]:
        now = self.clock()
        try:
            vc = verify_command(payload, self.hub_keys, self.id, now, self.counters)
        except EdgeloopError as exc:
            self.refused.append(exc.code)
            return [self._event("command_result", False, exc.code, str(exc), _peek_command_id(payload))]
        cmd = vc.command
        kind = "rollback_result" if cmd.command == "rollback" else "command_result"
        if cmd.expires_at - now > MAX_COMMAND_LIFETIME:
            exc = CommandLifetimeError(f"command {cmd.command_id} expires too far ahead")
            return [self._event(kind, False, exc.code, str(exc), cmd.command_id)]
        self.counters[vc.keyid] = cmd.counter  # before acting, as the real agent (persisted there)
        try:
            if cmd.command == "deploy":
                return self._deploy(cmd)
            if cmd.command == "rollback":
                return self._rollback(cmd)
            if cmd.command == "confirm":
                return self._confirm(cmd)
            if cmd.command == "set_tags":
                raw = cmd.args.get("tags")
                self.tags = {} if raw is None else check_tags(raw, "set_tags.args.tags")
                return [self._state(), self._event("command_result", True, "ok", "tags set", cmd.command_id)]
            return [self._event("command_result", False, "not_simulated",
                                f"{cmd.command} is not simulated", cmd.command_id)]
        except EdgeloopError as exc:
            return [self._event(kind, False, exc.code, str(exc), cmd.command_id)]

    # --- deploy ----------------------------------------------------------------------------------
    def _deploy(self, cmd: Command) -> list[Action]:
        spec = cmd.transfer()
        want_topic = topics.transfer_topic(spec.transfer_id, self.root)
        if spec.topic is not None and spec.topic != want_topic:
            raise TransferError(f"deploy names transfer topic {spec.topic!r}, not {want_topic!r}: refused")
        meta = _deploy_meta(cmd)
        probation_of(cmd)
        stored = self.store.get(spec.bundle_sha256)
        if stored is not None:
            _check_deploy_names(meta, stored.model, stored.version)
            out: list[Action] = [self._event("command_result", True, "ok", "bundle already in store; activating",
                                             cmd.command_id, {"chunks": 0, "in_store": True})]
            return out + self._activate(spec.bundle_sha256, cmd.command_id, "install_result", meta)
        out = []
        for old in [t for t in self.transfers.values() if t.spec.bundle_sha256 == spec.bundle_sha256]:
            out += self._abandon(old, f"deploy command {cmd.command_id} sends the same bundle again")
        t = self.transfers.get(spec.transfer_id)
        if t is None:
            t = _Transfer(spec, cmd.command_id, meta, cmd.expires_at, self.clock(), bytearray(spec.size),
                          bytearray(spec.chunks))
            self.transfers[spec.transfer_id] = t
            if spec.topic is not None:  # before answering: the broker has it when the hub reads the answer
                out.append(Subscribe(spec.topic))
        out.append(self._event("command_result", True, "ok", f"deploy accepted; waiting for {spec.chunks} chunks",
                               cmd.command_id, {"transfer_id": spec.transfer_id, "chunks": spec.chunks,
                                                "missing": spec.chunks - t.count}))
        return out

    def _chunk(self, payload: bytes, shared: bool) -> list[Action]:
        try:
            chunk = Chunk.decode(payload)  # magic, version, CRC-32
        except EdgeloopError:
            return []
        t = self.transfers.get(chunk.transfer_id)
        if t is None or chunk.index >= t.spec.chunks:
            return []
        start = chunk.index * t.spec.chunk_size
        if len(chunk.data) != min(t.spec.chunk_size, t.spec.size - start):
            return []  # the real agent refuses a chunk of the wrong size
        t.last_activity, t.quiet_asks = self.clock(), 0
        if not t.received[chunk.index]:
            t.buf[start:start + len(chunk.data)] = chunk.data
            t.received[chunk.index] = 1
            t.count += 1
        if t.count == t.spec.chunks:
            return self._finish(t)
        if shared and chunk.index == t.spec.chunks - 1 and not t.asked:
            t.asked = True  # the shared stream ended with gaps: ask now
            return [self._missing(t)]
        return []

    def _missing(self, t: _Transfer) -> Publish:
        missing = [i for i, got in enumerate(t.received) if not got][:2000]
        return self._event("transfer_missing", True, "ok", f"{len(missing)} chunks missing", t.command_id,
                           {"transfer_id": t.spec.transfer_id, "missing": missing})

    def _drop(self, t: _Transfer) -> list[Action]:
        self.transfers.pop(t.spec.transfer_id, None)
        topic = t.spec.topic
        if topic and not any(o.spec.topic == topic for o in self.transfers.values()):
            return [Unsubscribe(topic)]
        return []

    def _abandon(self, t: _Transfer, why: str) -> list[Action]:
        sha = t.spec.bundle_sha256
        return self._drop(t) + [self._event(
            "install_result", False, TransferError.code,
            f"transfer of bundle {sha[:12]} abandoned: {why}; nothing was installed (deploy again)",
            t.command_id, {"bundle_sha256": sha})]

    def _finish(self, t: _Transfer) -> list[Action]:
        """The whole bundle's sha256, then the real verification, then the names; then install."""
        sha = t.spec.bundle_sha256
        out = self._drop(t)
        try:
            data = bytes(t.buf)
            digest = hashlib.sha256(data).hexdigest()
            if digest != sha:
                raise HashMismatchError(f"bundle sha256 is {digest[:12]}, the deploy command named {sha[:12]}")
            vb = verify_bundle(data, self.hub_keys)
            m = vb.manifest
            _check_deploy_names(t.meta, m.model_name, m.version)
            b = self.behaviour
            if b.fail_install or m.version in b.fail_versions:
                raise SmokeTestError(f"simulated install failure of {m.model_name} {m.version}",
                                     code=b.fail_install or SmokeTestError.code)
        except EdgeloopError as exc:
            return out + [self._event("install_result", False, exc.code, str(exc), t.command_id,
                                      {"bundle_sha256": sha})]
        self.store[sha] = _Stored(m.model_name, m.version, sha)
        return out + self._activate(sha, t.command_id, "install_result", t.meta)

    def _activate(self, sha: str, command_id: str, event: str, want: dict | None = None) -> list[Action]:
        s = self.store[sha]
        if want is not None:
            _check_deploy_names(want, s.model, s.version)
        self._prepare_probation(want if event == "install_result" else None, s, command_id)
        self.active = sha
        self._serve(s)
        return [self._state(), self._event(event, True, "ok", f"{s.model} {s.version} installed and serving",
                                           command_id, {"bundle_sha256": sha, "model": s.model,
                                                        "version": s.version})]

    def _rollback(self, cmd: Command) -> list[Action]:
        sha = cmd.target_bundle()
        if sha not in self.store:
            raise StoreError(f"cannot roll back to bundle {sha[:12]}: it is not in this agent's store "
                             "(deploy it instead)")
        return self._activate(sha, cmd.command_id, "rollback_result")

    # --- probation (the dead-man switch) ------------------------------------------------------------
    def _prepare_probation(self, want: dict | None, s: _Stored, command_id: str) -> None:
        raw = (want or {}).get("probation")
        running = self.probation
        if raw is None:
            self.probation = None
            return
        terms = Probation.from_dict(raw)
        prev = running.previous_sha256 if running is not None else self.active
        if prev is None or prev == s.sha256:
            self.probation = None  # nothing to revert to: activated without one
            return
        self.probation = OnProbation(model=s.model, version=s.version, bundle_sha256=s.sha256, previous_sha256=prev,
                                     previous_version=self.store[prev].version, deadline=self.clock() + terms.seconds,
                                     min_requests=terms.min_requests, require_confirm=terms.require_confirm,
                                     command_id=command_id)

    def _serve(self, s: _Stored, since: float | None = None) -> None:
        """``s`` serves from now on (its counts start from zero, as the real agent's)."""
        now = self.clock()
        if self._serving and self._serving[0].until is None:
            self._serving[0].until = now
        self._serving = [e for e in self._serving if (e.model, e.version) != (s.model, s.version)][:MAX_VERSIONS - 1]
        self._serving.insert(0, _Serving(s.model, s.version, now if since is None else since))

    def _counts(self, e: _Serving) -> tuple[int, int]:
        n = int(max(0.0, (e.until or self.clock()) - e.since) * self.behaviour.requests_per_s)
        return n, int(n * self.behaviour.error_rate)

    def served(self) -> tuple[int, int]:
        """(requests, errors) the active version served since its activation (simulated)."""
        return self._counts(self._serving[0]) if self.active and self._serving else (0, 0)

    def serving_report(self) -> ServingReport | None:
        """What the real agent's reporter sends now: None when the active version is not new or nothing changed."""
        now = self.clock()
        if not self._serving or self.active is None or now - self._serving[0].since > REPORT_FOR_S:
            return None
        b = self.behaviour
        versions = []
        for i, e in enumerate(self._serving):
            requests, errors = self._counts(e)
            p99 = b.latency_ms * (3.0 if e.version in b.slow_versions else 1.0)
            versions.append(VersionServing(e.model, e.version, e.since, requests, errors,
                                           round(p99 / 2, 3) if requests > errors else None,
                                           round(p99, 3) if requests > errors else None, active=i == 0))
        key = tuple((v.model, v.version, v.requests) for v in versions)
        if key == self._reported:
            return None
        self._reported = key
        return ServingReport(self.id, now, versions)

    def _counted(self) -> OnProbation | None:
        return None if self.probation is None else self.probation.counted(*self.served())

    def _confirm(self, cmd: Command) -> list[Action]:
        sha = confirm_target(cmd)
        p = self.probation
        if p is None or p.bundle_sha256 != sha:
            if p is None and self.active == sha:
                return [self._event("command_result", True, "ok", "active and not on probation", cmd.command_id,
                                    {"bundle_sha256": sha, "on_probation": False})]
            raise EdgeloopError(f"bundle {sha[:12]} is not on probation here", code="not_on_probation")
        self.probation = replace(p, confirmed=True)
        return [self._event("command_result", True, "ok", f"{p.model} {p.version} confirmed", cmd.command_id,
                            {"bundle_sha256": sha, "on_probation": True})] + self._check_probation()

    def _check_probation(self) -> list[Action]:
        p = self._counted()
        if p is None:
            return []
        requests, errors = self.served()
        failing = requests >= 10 and errors / requests > 0.5
        d = decide(p, self.clock(), failing)
        if d.action == PASS:
            self.probation = None
            return [self._state(), self._event("confirmed", True, d.reason, d.message, p.command_id,
                                               _details(p, d.reason))]
        if d.action == REVERT:
            assert p.previous_sha256 is not None
            self.probation, self.active = None, p.previous_sha256
            self._serve(self.store[p.previous_sha256])
            return [self._state(), self._event("reverted", False, d.reason,
                                               f"{d.message}; reverted to {p.model} {p.previous_version}",
                                               p.command_id, _details(p, d.reason))]
        return []

    # --- time ------------------------------------------------------------------------------------
    def tick(self) -> list[Action]:
        """What the real control thread does twice a second: expired or quiet transfers, the probation."""
        now = self.clock()
        out: list[Action] = []
        for t in list(self.transfers.values()):
            if now > t.expires_at:
                out += self._abandon(t, f"its deploy command expired with {t.count} of {t.spec.chunks} chunks "
                                        "received")
            elif now - t.last_activity > self.behaviour.idle_s * 2 ** min(t.quiet_asks, 6):
                t.last_activity, t.quiet_asks = now, t.quiet_asks + 1
                out.append(self._missing(t))
        out += self._check_probation()
        if now >= self._next_report:
            every = self.behaviour.report_s
            self._next_report = (math.floor(now / every - self._phase) + 1 + self._phase) * every
            rep = self.serving_report()
            if rep is not None:
                self.serving_reports += 1
                out.append(Publish(self.topic(topics.SERVING), self._signed(rep), 0, False))
        return out

    # --- what goes out ---------------------------------------------------------------------------
    def state(self, status: str = topics.ONLINE) -> AgentState:
        active = self.store.get(self.active) if self.active else None
        p = self._counted()
        return AgentState(
            agent_id=self.id, status=status, session=self.session, agent_version=__version__,
            started_at=self.started_at, host=HOST, http_url=None,
            active=ActiveModel(active.model, active.version, active.sha256) if active else None,
            installed=[ActiveModel(b.model, b.version, b.sha256) for b in self.store.values()],
            trusted_keys=self.hub_keys.keyids(), tags=dict(self.tags),
            probation=p.status() if p is not None else None)

    def _state(self, status: str = topics.ONLINE) -> Publish:
        doc = {**self.state(status).to_dict(), REPORT_KEY_FIELD: raw_public_key(self.report_key.public)}
        return Publish(self.topic(topics.STATE), dumps(sign_report(self.report_key, doc)), 1, True)

    def _event(self, kind: str, ok: bool, code: str, message: str, command_id: str | None = None,
               details: dict | None = None) -> Publish:
        ev = Event(event=kind, agent_id=self.id, ok=ok, at=self.clock(), code=code, message=message,
                   command_id=command_id, details=details or {})
        self.events.append(ev)
        return Publish(self.topic(topics.EVENTS), self._signed(ev), 1, False)

    def _signed(self, msg: Message) -> bytes:
        return dumps(sign_report(self.report_key, msg.to_dict()))

    @property
    def version(self) -> str | None:
        """The version serving now (None: none)."""
        return self.store[self.active].version if self.active else None


def _details(p: OnProbation, reason: str) -> dict:
    return {"model": p.model, "version": p.version, "bundle_sha256": p.bundle_sha256,
            "previous_version": p.previous_version, "previous_sha256": p.previous_sha256, "reason": reason,
            "requests": p.requests, "errors": p.errors, "min_requests": p.min_requests,
            "require_confirm": p.require_confirm, "confirmed": p.confirmed, "deadline": p.deadline}


__all__ = ["SimAgent", "Behaviour", "Publish", "Subscribe", "Unsubscribe", "Action"]
