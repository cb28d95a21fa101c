"""The fleet's device pre-flights: what each agent measured of a deployed version's models on its own
hardware (load, unsupported operators, p50/p99 at batch 1, memory) and which model -- fp32 or int8 -- it
serves, beside the workstation's pick (docs/rollouts.md, "Pre-flight"; ``edgeloop preflight``)."""

from __future__ import annotations

from edgeloop.hub.services.core import HubCore


class HubPreflight(HubCore):
    def preflight_results(self, ref: str | None = None, *, agent: str | None = None,
                          latest: bool = True) -> list[dict]:
        """Pre-flight reports, newest first: of the version ``ref`` (any version reference) and/or of the agent
        ``agent``; with ``latest`` only the newest per agent and bundle.

        Each row: ``agent_id``, ``model``, ``version``, ``bundle_sha256``, ``command_id``, ``pick`` (the model the
        device serves; None when it refused the bundle), ``hub_pick``, ``ok``, ``code``, ``reason``,
        ``memory_limit_mb``, ``measured_at``, ``received_at`` and ``report`` (the whole report: ``figures`` per
        model with ``loaded``, ``error``, ``unsupported_ops``, ``p50_ms``, ``p99_ms``, ``load_ms``, ``model_mb``,
        ``peak_rss_mb``; the accuracy budget and each model's drop)."""
        model = version = None
        if ref is not None:
            v = self.registry.get_version(ref)
            model, version = v["model_name"], v["version"]
        return self.registry.list_preflights(agent_id=agent, model=model, version=version, latest=latest)
