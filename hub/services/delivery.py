"""Getting versions onto devices: signed bundles, deploying them to agents behind the
evaluation gate, and signed rollbacks to a bundle the agents already hold."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from edgeloop.agent.wire.bundle import sha256 as sha256_hex
from edgeloop.agent.wire.commands import Probation
from edgeloop.agent.wire.shadow import shadow_args
from edgeloop.hub.errors import HubError, NotFoundError
from edgeloop.hub.services.agents import HubAgents

if TYPE_CHECKING:
    from edgeloop.hub.fleet import Fleet
    from edgeloop.hub.pipeline import BundleBuild

T = TypeVar("T")


class BundleMismatchError(HubError):
    """A bundle file on disk is not the bundle the registry recorded."""

    code = "bundle_mismatch"


class HubDelivery(HubAgents):
    # --- bundles ------------------------------------------------------------------------------
    def list_bundles(self, version_ref: str | None = None) -> list[dict]:
        """Signed bundles, newest first (optionally one version's)."""
        return self.registry.list_bundles(version_ref)

    def build_bundle(self, version_ref: str) -> BundleBuild:
        """Pack a version's shipped model with its manifest and sign it with the hub key."""
        from edgeloop.hub.pipeline import build_bundle

        return build_bundle(self.registry, self.home.models_dir, self.home.bundles_dir, version_ref, self.key,
                            actor=self.actor)

    def bundle_bytes(self, ref: str) -> tuple[dict, bytes]:
        """A registered bundle and its bytes, checked against the sha256 the registry holds: a file
        swapped or damaged in the bundle folder is refused (:class:`BundleMismatchError`), never sent."""
        rec = self.registry.get_bundle(ref)
        path = Path(rec["path"])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BundleMismatchError(f"bundle {rec['sha256'][:12]} ({rec['version_id']}) cannot be read from "
                                      f"{path}: {exc}; restore the file or build the bundle again "
                                      "(`edgeloop bundle build`)") from exc
        actual = sha256_hex(data)
        if actual != rec["sha256"]:
            raise BundleMismatchError(
                f"bundle file {path} does not match the registry: its sha256 is {actual[:12]}..., the registry "
                f"recorded {rec['sha256'][:12]}... for {rec['version_id']}. The file was replaced or damaged "
                "after it was built; nothing was sent. Restore it from a backup or build the bundle again")
        return rec, data

    def resolve_bundle(self, ref: str) -> tuple[dict, bytes]:
        """The bundle a ref names: a bundle sha256 (prefix), or a version ref -- its newest
        bundle, packed and signed now if it has none yet."""
        return self.bundle_bytes(self._bundle_record(ref)["sha256"])

    def _bundle_record(self, ref: str) -> dict:
        try:
            return self.registry.get_bundle(ref)
        except NotFoundError:
            pass
        v = self.registry.get_version(ref)
        bundles = self.registry.list_bundles(v["id"])
        if not bundles:
            return self.registry.get_bundle(self.build_bundle(v["id"]).sha256)
        return bundles[0]

    def version_of(self, ref: str) -> dict:
        """The version a ref names: a bundle sha256 (prefix) gives its bundle's version."""
        try:
            return self.registry.get_version(self.registry.get_bundle(ref)["version_id"])
        except NotFoundError:
            return self.registry.get_version(ref)

    # --- deploy and rollback -----------------------------------------------------------------
    def deploy(self, fleet: Fleet | str, agent_ids: Sequence[str], ref: str, *,
               override_reason: str | None = None, timeout: float = 120.0,
               probation: Probation | None = None, shadow: bool = False,
               shadow_report_seconds: float | None = None, memory_limit_mb: int | None = None,
               drift: dict | None = None) -> list[dict]:
        """Gate-check ``ref`` (:meth:`check_deployable`), then push its signed bundle to the agents.

        ``ref`` is a version ref or a bundle sha256 (prefix); a version without a
        bundle gets one packed and signed now. ``fleet`` is a started :meth:`fleet`
        or a broker URL (connected only after the gate check passed). The agents are
        served at once and the bundle is published once for all of them
        (:meth:`edgeloop.hub.fleet.Fleet.deploy_many`); agents that already hold it get
        no chunks, and one that never answers times out alone. Returns one result per
        agent: ``{"agent", "ok", "code", "message", "seconds", "version",
        "bundle_sha256", "gate"}``. Raises :class:`GateError` before anything is sent
        when the version fails its gate and no ``override_reason`` is given. Each
        deployment is recorded (and audited) by the fleet as it is sent. With ``probation``
        (the dead-man switch) each agent reverts on its own unless the new version is confirmed
        in time (:meth:`confirm`, docs/protocol.md). With ``shadow`` the version is installed beside the
        live one and runs on the same requests without answering them (shadow mode, docs/rollouts.md;
        reports every ``shadow_report_seconds``, default 10): see :meth:`shadow_summary`, :meth:`promote_shadow`.
        With ``memory_limit_mb`` (a rollout's limit) each agent's pre-flight refuses the bundle before activating
        it when its model needs more memory there (code ``memory_limit_exceeded``; docs/rollouts.md, "Pre-flight");
        the figures and the device's fp32/int8 pick are in :meth:`preflight_results`.
        With ``drift`` (``rows``, ``seconds``, ``min_rows``, ``consecutive``) each agent closes that version's
        drift windows so, instead of the bundle's defaults and its ``[drift]`` config (docs/protocol.md).
        """
        version = self.version_of(ref)
        gate = self.check_deployable(version["id"], override_reason)
        rec, data = self.resolve_bundle(ref)
        gate_note = {"passed": gate["passed"], "overridden": gate["overridden"]}

        def all_at_once(started: Fleet) -> list[dict]:
            outs = started.deploy_many(agent_ids, data, model=version["model_name"], version=version["version"],
                                       timeout=timeout, probation=probation,
                                       shadow=shadow_args(shadow_report_seconds) if shadow else None,
                                       memory_limit_mb=memory_limit_mb, drift=drift)
            return [{**_result(aid, outs[aid], version["id"], rec["sha256"]), "gate": gate_note} for aid in agent_ids]

        return self._with_fleet(fleet, all_at_once)

    def rollback(self, fleet: Fleet | str, agent_ids: Sequence[str], ref: str, *, reason: str = "",
                 timeout: float = 60.0) -> list[dict]:
        """Send each agent a signed rollback to the bundle ``ref`` names, and wait for its answer.

        ``ref`` is a bundle sha256 (prefix) or a version ref (its newest bundle; see
        :meth:`resolve_bundle`); the agents must still hold that bundle. ``fleet`` is a
        started :meth:`fleet` or a broker URL. There is no gate check: a rollback
        returns to a bundle that was deployed before. Returns one result per agent:
        ``{"agent", "ok", "code", "message", "seconds", "version", "bundle_sha256"}``.
        Each command is recorded (and audited) by the fleet as it is sent; the request
        with its ``reason`` and the answers is audited as ``rollback.request``.
        """
        rec = self._bundle_record(ref)
        version_id = rec["version_id"]

        def one(started: Fleet, aid: str) -> dict:
            out = started.rollback(aid, rec["sha256"], reason=reason, timeout=timeout)
            return _result(aid, out, version_id, rec["sha256"])

        results = self._on_fleet(fleet, agent_ids, one)
        self.registry.audit(self.actor, "rollback.request", version_id, bundle_sha256=rec["sha256"],
                            reason=reason, results={r["agent"]: r["code"] for r in results})
        return results

    def confirm(self, fleet: Fleet | str, agent_ids: Sequence[str], ref: str, *, timeout: float = 30.0) -> list[dict]:
        """Send each agent a signed ``confirm`` of the bundle ``ref`` names (a bundle sha256 prefix or
        a version ref: its newest bundle), deployed on probation: the agent keeps it instead of
        reverting at the probation's deadline. Returns one result per agent, as :meth:`rollback`
        does (``code`` ``not_on_probation`` when the agent has no such version on probation: it
        reverted already, or it was never deployed with a probation); audited as ``deploy.confirm``."""
        rec = self._bundle_record(ref)

        def one(started: Fleet, aid: str) -> dict:
            return _result(aid, started.confirm(aid, rec["sha256"], timeout=timeout), rec["version_id"],
                           rec["sha256"])

        results = self._on_fleet(fleet, agent_ids, one)
        self.registry.audit(self.actor, "deploy.confirm", rec["version_id"], bundle_sha256=rec["sha256"],
                            results={r["agent"]: r["code"] for r in results})
        return results

    def _on_fleet(self, fleet: Fleet | str, agent_ids: Sequence[str],
                  one: Callable[[Fleet, str], dict]) -> list[dict]:
        """``one(fleet, agent_id)`` for each agent, on ``fleet`` or on a fleet connected to that URL."""
        return self._with_fleet(fleet, lambda started: [one(started, aid) for aid in agent_ids])

    def _with_fleet(self, fleet: Fleet | str, run: Callable[[Fleet], T]) -> T:
        """``run(fleet)`` on ``fleet``, or on a fleet connected to that URL for the call."""
        if isinstance(fleet, str):
            with self.fleet(fleet) as started:
                return run(started)
        return run(fleet)


def _result(agent_id: str, out: Any, version_id: str, bundle_sha256: str) -> dict:
    """A fleet command's outcome as a plain record."""
    return {"agent": agent_id, "ok": out.ok, "code": out.code, "message": out.message,
            "seconds": round(out.seconds, 3), "version": version_id, "bundle_sha256": bundle_sha256}
