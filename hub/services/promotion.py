"""Promoting versions: aliases with their history, evaluation gates, the gate check
before a deployment, comparisons of two versions and lineage."""

from __future__ import annotations

import contextlib

from edgeloop.hub.errors import HubError
from edgeloop.hub.registry import GateError, UnknownMetricError, normalize_gate
from edgeloop.hub.services.models import HubModels


class HubPromotion(HubModels):
    # --- aliases ----------------------------------------------------------------------------
    def set_alias(self, model: str, alias: str, version_ref: str, *, reason: str = "",
                  override_gate: bool = False) -> dict:
        """Point ``model@alias`` at a version (see :meth:`Registry.set_alias`), as :attr:`actor`.

        Returns the alias row plus ``"previous_version_id"`` (None for a new alias),
        ``"moved"`` (False when it already pointed there) and ``"override_gate"``
        (whether this move went past a failed evaluation gate).
        """
        before = None
        with contextlib.suppress(HubError):  # a new alias (or an unknown model: set_alias says so)
            before = self.registry.get_alias(model, alias)["version_id"]
        row = self.registry.set_alias(model, alias, version_ref, actor=self.actor, reason=reason,
                                      override_gate=override_gate)
        moved = before != row["version_id"]
        history = self.registry.alias_history(model, alias) if moved else []
        return {**row, "previous_version_id": before, "moved": moved,
                "override_gate": bool(history and history[0]["override_gate"])}

    def remove_alias(self, model: str, alias: str, *, reason: str = "") -> dict:
        """Delete ``model@alias`` (kept in its history); returns the removed row."""
        return self.registry.remove_alias(model, alias, actor=self.actor, reason=reason)

    def aliases(self, model: str) -> list[dict]:
        """The model's aliases, each with its ``history`` (newest move first); removed aliases
        are listed too, with ``version_id`` None."""
        self.registry.get_model(model)
        history = self.registry.alias_history(model)
        out = []
        for a in self.registry.list_aliases(model):
            out.append({**a, "history": [h for h in history if h["alias"] == a["alias"]]})
        current = {a["alias"] for a in out}
        for h in history:  # removed aliases keep their history visible
            if h["alias"] not in current:
                current.add(h["alias"])
                out.append({"model_name": model, "alias": h["alias"], "version_id": None,
                            "updated_at": h["at"], "updated_by": h["actor"], "reason": h["reason"],
                            "history": [x for x in history if x["alias"] == h["alias"]]})
        return out

    # --- evaluation gates -------------------------------------------------------------------
    def set_gate(self, model: str, gate: dict | None, *, check_names: bool = True, reason: str = "") -> dict:
        """Store (None or {}: clear) the evaluation gate of ``model``; returns the model record.

        ``reason`` (why the gate changed) is kept in the change's ``model.gate`` audit entry,
        with the previous gate and the new one, as :attr:`actor`.

        ``gate`` is what :func:`edgeloop.hub.registry.normalize_gate` takes; its ``"eval_data"``
        may also be any dataset reference (id, name, sha256 prefix), resolved here. With
        ``check_names`` (the default) a metric name that neither the model's runs record nor
        evaluations give (:meth:`Registry.metric_names`) is refused at once with
        :class:`UnknownMetricError`, naming the closest known name -- before anything is stored.
        """
        if gate and isinstance(gate, dict) and isinstance(gate.get("eval_data"), str):
            record = self.registry.get_dataset(gate["eval_data"])
            gate = {**gate, "eval_data": {k: record[k] for k in ("sha256", "id", "name")}}
        if check_names and gate:
            normalized = normalize_gate(gate, repr(model))
            known = self.registry.metric_names(model)
            allowed = set(known["runs"]) | set(known["evaluations"])
            for bound in ("min", "max"):
                for metric in normalized[bound]:
                    if metric not in allowed:
                        raise UnknownMetricError(model, metric, known)
        return self.registry.set_gate(model, gate, actor=self.actor, reason=reason)

    def check_gate(self, version_ref: str) -> dict:
        return self.registry.check_gate(version_ref)

    def gate_report(self, model: str) -> dict:
        """``{"model", "gate", "has_gate", "versions", "task"}``: the model's gate and the gate
        check of each of its versions (oldest first)."""
        record = self.registry.get_model(model)
        gate = self.registry.get_gate(model)
        return {"model": model, "gate": gate, "has_gate": bool(gate["min"] or gate["max"]),
                "metric_names": self.registry.metric_names(model),
                "versions": [self.registry.check_gate(v["id"]) for v in self.registry.list_versions(model)],
                "task": record.get("task")}

    def check_deployable(self, version_ref: str, override_reason: str | None = None) -> dict:
        """Gate check before a deployment: raises :class:`GateError` when the version fails
        its model's gate, unless ``override_reason`` is given -- then the override is
        recorded in the audit log (``gate.override``). Returns the check plus
        ``"overridden"`` (and ``"reason"`` when overridden)."""
        check = self.registry.check_gate(version_ref)
        if check["passed"]:
            return {**check, "overridden": False}
        reason = str(override_reason or "").strip()
        if not reason:
            raise GateError(check, action="be deployed", override_hint=(
                f"`edgeloop deploy {check['version']} --agent ID ... --override-gate WHY`."))
        self.registry.audit(self.actor, "gate.override", check["version"], purpose="deploy",
                            reason=reason, failures=check["failures"])
        return {**check, "overridden": True, "reason": reason}

    # --- comparing and tracing --------------------------------------------------------------
    def compare(self, a_ref: str, b_ref: str) -> dict:
        return self.registry.compare(a_ref, b_ref)

    def lineage(self, ref: str) -> dict:
        return self.registry.lineage(ref)
