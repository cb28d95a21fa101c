"""Shadow mode on the control thread: installing a version as shadow, promoting it, stopping it.

* A signed ``deploy`` with ``"shadow": true`` transfers, verifies, pre-flights (when due), loads and
  smoke-tests the bundle exactly like an install, moves it into the store (installed, **not** active), and starts a
  :class:`~edgeloop.agent.shadow.ShadowRunner` beside the live version; its ``install_result``
  says ``"shadow": true``. A bundle already in the store starts as shadow without a transfer.
* ``promote_shadow`` (``{"bundle_sha256", "model", "version"[, "probation"]}``) stops the shadow
  (its final report goes out) and activates the bundle from the store -- no second transfer --
  through the same path as any activation: re-verified, loaded, smoke-tested, on probation when the
  command asks for one (the dead-man switch), the version floor raised. Answered by ``install_result``.
* ``stop_shadow`` stops it (final report); the bundle stays in the store. Answered by ``command_result``.
* A shadow whose bundle becomes live another way (a plain deploy or a rollback of it) ends on its own.

The running shadow is remembered in ``<state_dir>/shadow.json`` and resumed after a restart.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from edgeloop.agent.core import Loaded
from edgeloop.agent.dead_man import DeadManSwitch
from edgeloop.agent.errors import BundleMismatchError, EdgeloopError, StoreError
from edgeloop.agent.fsutil import atomic_write_bytes, crash_point, fsync_dir
from edgeloop.agent.preflight_install import preflight_install
from edgeloop.agent.shadow import ShadowError, ShadowInfo, ShadowRunner
from edgeloop.agent.transfer import Transfer
from edgeloop.agent.wire import topics
from edgeloop.agent.wire.bundle import VerifiedBundle
from edgeloop.agent.wire.commands import Probation
from edgeloop.agent.wire.messages import Command
from edgeloop.agent.wire.shadow import ShadowReport, report_seconds, tolerance_of

log = logging.getLogger("edgeloop.agent.service")

SHADOW_FILE = "shadow.json"
SHADOW_COMMANDS = ("promote_shadow", "stop_shadow")


class NoShadowError(ShadowError):
    """A ``promote_shadow`` names a bundle that is not running as shadow here."""

    code = "no_shadow"


def shadow_meta(args: dict) -> dict:
    """The deploy's shadow arguments, checked (empty when it is no shadow deploy): kept with the transfer
    and in the journal."""
    if args.get("shadow") is not True:
        return {}
    return {"shadow": True, "shadow_report_seconds": report_seconds(args), "shadow_tolerance": tolerance_of(args)}


class ShadowControl(DeadManSwitch):
    _shadow: ShadowRunner | None = None

    # --- provided by AgentControl -----------------------------------------------------------------
    def _activate_stored(self, sha: str, command_id: str, event: str,
                         want: dict | None = None) -> None:  # pragma: no cover - AgentControl's
        raise NotImplementedError

    def _verified_from_store(self, sha: str) -> VerifiedBundle:  # pragma: no cover - AgentControl's
        raise NotImplementedError

    def _drop_transfer(self, t: Transfer) -> None:  # pragma: no cover - AgentControl's
        raise NotImplementedError

    def _fail(self, event: str, exc: BaseException, command_id: str,
              details: dict | None = None) -> None:  # pragma: no cover - AgentControl's
        raise NotImplementedError

    def _report(self, event: str, ok: bool, code: str, message: str, command_id: str,
                details: dict | None = None) -> None:  # pragma: no cover - AgentControl's
        raise NotImplementedError

    # --- installing as shadow -----------------------------------------------------------------------
    def _finish_shadow(self, t: Transfer) -> None:
        """A complete transfer of a shadow deploy: checked like an install, stored, run as shadow."""
        sha = t.spec.bundle_sha256
        started = time.perf_counter()
        try:
            path = t.finish()
            vb = self.trust.verify_bundle(path.read_bytes(), self.cfg.max_bundle_bytes)
            _check_names(t.meta, vb)
            preflight_install(self, vb, sha, t.meta, t.command_id)  # as for any install: may refuse
            shadow = self._new_shadow(self._load_verified(vb, sha), sha, t.command_id, t.meta)
            crash_point("bundle_verified")
            self._keep(sha, vb, path)
        except (EdgeloopError, OSError) as exc:
            log.error("shadow install of bundle %s refused: %s (the live version keeps serving)", sha[:12], exc)
            self._drop_transfer(t)
            self._fail("install_result", exc, t.command_id, {"bundle_sha256": sha, "shadow": True})
            return
        self._drop_transfer(t)
        try:
            self._run_shadow(shadow, t.command_id, started)
        except (EdgeloopError, OSError) as exc:  # shadow.json could not be saved (a full disk): not started
            self._fail("install_result", exc, t.command_id, {"bundle_sha256": sha, "shadow": True})

    def _shadow_stored(self, sha: str, command_id: str, want: dict) -> None:
        """Run a bundle of the store as shadow (a shadow deploy of a bundle held already, or one a crash
        interrupted after the bundle reached the store)."""
        started = time.perf_counter()
        vb = self._verified_from_store(sha)
        _check_names(want, vb)
        preflight_install(self, vb, sha, want, command_id)  # as for any install: may refuse
        shadow = self._new_shadow(self._load_verified(vb, sha), sha, command_id, want)
        if self.store.get(sha) is None:  # renamed into the store before a crash, never named by the state
            self.store.adopt(sha, vb.manifest.model_name, vb.manifest.version, time.time())
        self._run_shadow(shadow, command_id, started)

    def _new_shadow(self, loaded: Loaded, sha: str, command_id: str, meta: dict) -> ShadowRunner:
        live = self.serving.runner(loaded.runner.name)  # the live version of the shadow's own model
        if live is not None and live.bundle_sha256 == sha:
            raise ShadowError(f"bundle {sha[:12]} is the live version here: there is nothing to compare it with "
                              "(deploy another version as shadow)")
        info = ShadowInfo(self.id, sha, float(meta.get("shadow_report_seconds", 10.0)),
                          float(meta.get("shadow_tolerance", 1e-3)), command_id)
        return ShadowRunner(loaded.runner, live, info, self._publish_shadow, clock=self.clock)

    def _keep(self, sha: str, vb: VerifiedBundle, path: Any) -> None:
        """Move the verified transfer into the store, installed but not active (one rename, no copy)."""
        target = self.store.bundle_path(sha)
        os.replace(path, target)
        fsync_dir(self.store.bundles_dir)
        crash_point("bundle_in_store")
        if self.store.get(sha) is None:
            self.store.adopt(sha, vb.manifest.model_name, vb.manifest.version, time.time())

    def _run_shadow(self, shadow: ShadowRunner, command_id: str, started: float | None = None) -> None:
        """Remember ``shadow`` (raises when that cannot be saved: nothing changed), replace the running
        shadow (if any) by it, and report the install."""
        self._save_shadow(shadow)
        self._stop_shadow()
        self._shadow = shadow.start()
        self.serving.shadow = _offer_of(shadow)
        m = shadow.runner.manifest
        self._publish_state_if_connected()
        details: dict[str, Any] = {"bundle_sha256": shadow.info.bundle_sha256, "model": m.model_name,
                                   "version": m.version, "shadow": True, "live_version": shadow.live_version}
        if started is not None:
            details["install_ms"] = round((time.perf_counter() - started) * 1000, 1)
        self._report("install_result", True, "ok", f"{m.model_name} {m.version} installed as shadow of the live "
                     f"version {shadow.live_version} (not serving)", command_id, details)

    # --- the commands ------------------------------------------------------------------------------
    def _shadow_command(self, cmd: Command) -> None:
        if cmd.command == "stop_shadow":
            running = self._shadow
            rep = self._stop_shadow(forget=True)
            msg = (f"shadow {running.runner.version} stopped ({rep.requests} requests compared)"
                   if running is not None and rep is not None else "no shadow was running")
            self._publish_event(self._event("command_result", True, "ok", msg, cmd.command_id,
                                            {"stopped": rep is not None, **({"report": rep.summary()} if rep else {})}))
            return
        sha = cmd.target_bundle()
        if cmd.args.get("probation") is not None:
            Probation.from_dict(cmd.args["probation"], "promote_shadow.args.probation")  # before the shadow stops
        running = self._shadow
        if running is None or running.info.bundle_sha256 != sha:
            here = (f"{running.runner.name} {running.runner.version} (bundle {running.info.bundle_sha256[:12]}) is"
                    if running else "no version is")
            raise NoShadowError(f"bundle {sha[:12]} is not running as shadow here ({here}); deploy it with "
                                "--shadow first, or deploy it normally")
        self._stop_shadow(forget=True)
        want = {"model": str(cmd.args.get("model", "")), "version": str(cmd.args.get("version", ""))}
        if cmd.args.get("probation") is not None:
            want["probation"] = cmd.args["probation"]
        self._activate_stored(sha, cmd.command_id, "install_result", want)  # re-verified, probation, floor

    def _stop_shadow(self, forget: bool = False) -> ShadowReport | None:
        """Stop the running shadow (its final report goes out); ``forget``: it is not resumed after a restart."""
        shadow, self._shadow = self._shadow, None
        self.serving.shadow = None
        if forget:
            try:
                (self.cfg.state_dir / SHADOW_FILE).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not remove %s: %s", SHADOW_FILE, exc)
        return shadow.stop() if shadow is not None else None

    def _check_shadow(self) -> None:
        """The control thread, twice a second: a shadow whose very bundle became the live version (a plain
        deploy or rollback of it) has nothing left to compare: it ends, with its final report."""
        s = self._shadow
        live = self.serving.runner(s.runner.name) if s is not None else None
        if s is not None and live is not None and live.bundle_sha256 == s.info.bundle_sha256:
            log.info("shadow %s %s is the live version now: the shadow ends", s.runner.name, s.runner.version)
            self._stop_shadow(forget=True)

    # --- persistence, restart ----------------------------------------------------------------------
    def _save_shadow(self, shadow: ShadowRunner) -> None:
        m = shadow.runner.manifest
        doc = {"bundle_sha256": shadow.info.bundle_sha256, "model": m.model_name, "version": m.version,
               "command_id": shadow.info.command_id, "shadow_report_seconds": shadow.info.report_seconds,
               "shadow_tolerance": shadow.info.tolerance}
        try:
            atomic_write_bytes(self.cfg.state_dir / SHADOW_FILE, json.dumps(doc).encode())
        except OSError as exc:
            raise StoreError(f"could not save {SHADOW_FILE}: {exc}; the shadow was not started") from exc

    def _resume_shadow(self) -> None:
        """At start-up: run the shadow that ran before the restart again (re-verified from the store)."""
        path = self.cfg.state_dir / SHADOW_FILE
        if not path.exists():
            return
        try:
            doc = json.loads(path.read_text("utf-8"))
            sha = str(doc["bundle_sha256"])
            if not self.store.has_bundle(sha):
                raise StoreError(f"bundle {sha[:12]} is no longer in the store")
            vb = self._verified_from_store(sha)
            shadow = self._new_shadow(self._load_verified(vb, sha), sha, str(doc.get("command_id", "")), doc)
        except (EdgeloopError, OSError, ValueError, KeyError, TypeError) as exc:
            log.error("the shadow that ran before the restart cannot run again: %s", exc)
            path.unlink(missing_ok=True)
            self._pending_events.append(self._event(
                "error", False, ShadowError.code, f"the shadow that ran before the restart was stopped: {exc}"))
            return
        self._shadow = shadow.start()
        self.serving.shadow = _offer_of(shadow)
        log.info("resumed shadow %s %s after a restart", shadow.runner.name, shadow.runner.version)

    def _publish_shadow(self, report: ShadowReport) -> None:
        """The shadow worker's way out (its own thread): QoS 1 while connected; a report missed while the
        broker is away is superseded by the next (each holds the whole comparison)."""
        if self.link.connected.is_set():
            self.link.publish(self._topic(topics.SHADOW), self._signed(report), qos=1)

    def _shadow_state(self) -> dict | None:
        """The running shadow, for health and tests: ``{"model", "version", "bundle_sha256", "live_version"}``."""
        s = self._shadow
        if s is None:
            return None
        return {"model": s.runner.name, "version": s.runner.version, "bundle_sha256": s.info.bundle_sha256,
                "live_version": s.live_version}


def _check_names(want: dict, vb: VerifiedBundle) -> None:
    """Refuse a bundle holding another model or version than the deploy command names."""
    m = vb.manifest
    if want.get("model") and (want["model"], want.get("version")) != (m.model_name, m.version):
        raise BundleMismatchError(
            f"bundle holds {m.model_name} {m.version}, the deploy command named {want['model']} "
            f"{want.get('version')}; nothing was installed: deploy the bundle built for that model version")


def _offer_of(shadow: ShadowRunner) -> Any:
    """What the serving offers every answered request to: only the shadow's own model's requests (an
    agent may serve several models)."""
    name = shadow.runner.name

    def offer(live: Any, *rest: Any) -> None:
        if live.name == name:
            shadow.offer(live, *rest)
    return offer


__all__ = ["ShadowControl", "NoShadowError", "SHADOW_COMMANDS", "SHADOW_FILE", "shadow_meta"]
