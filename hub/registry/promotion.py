"""Promotion of versions: evaluation gates, aliases with their history, and comparing
two versions.

A model may have an *evaluation gate* -- minimum (and, for lower-is-better metrics,
maximum) values of its versions' metrics, see :func:`normalize_gate`. A version
failing its gate cannot be aliased (:meth:`Promotion.set_alias`) or deployed
(``Hub.check_deployable``) unless the gate is overridden with a reason, which is
recorded; :class:`GateError` lists each failing metric. Aliases (``production``,
``staging``...) move with a full history (:meth:`Promotion.alias_history`).

A gate reads the metrics the version's training run recorded (``test_accuracy``,
``test_rmse``, ``continual.forgetting``...) and, under the ``eval.`` prefix, those of
its evaluations on separate test data (``edgeloop eval``; ``eval.accuracy`` is the
newest evaluation of the artifact the version ships, ``eval.int8.accuracy`` of its
int8 model -- see :mod:`edgeloop.hub.evaluation.names`). A gate may name the test set
its ``eval.`` metrics come from (``"eval_data"``); without one they come from the
newest evaluation on any dataset, and each check says which one it read.
:meth:`Promotion.metric_names` lists the names a model's gate can use.
"""

from __future__ import annotations

import math
import re
from typing import Any

from edgeloop.hub.errors import RegistryError
from edgeloop.hub.evaluation.names import close_match, eval_metric_names, parse_eval_metric
from edgeloop.hub.registry.evaluations import Evaluations
from edgeloop.hub.registry.fields import check_model_name, check_sha256, dumps, is_number, iso, now

GATE_BOUNDS = ("min", "max")
RESERVED_ALIASES = ("latest",)  # ``model@latest`` always means the newest version
_ALIAS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
GATE_EXAMPLE = '{"test_accuracy": 0.9, "test_macro_f1": 0.85, "max": {"test_rmse": 3.0}}'
EVAL_DATA = "eval_data"  # the gate key naming the test set its eval.* metrics are read on

# Metric entries that are references or tables, not scores (left out of gates and comparisons).
_NOT_SCORES = ("prediction_reference", "confusion_matrix")


def normalize_gate(gate: Any, model: str = "the model") -> dict:
    """The stored form ``{"min": {metric: value}, "max": {metric: value}}`` of a gate.

    A gate is a mapping of metric name to the *minimum* acceptable value, plus
    optional ``"min"`` and ``"max"`` sub-mappings; ``"max"`` holds upper bounds
    for metrics where lower is better (losses, RMSE)::

        {"test_accuracy": 0.9, "test_macro_f1": 0.85}          # minima
        {"max": {"test_rmse": 3.0}, "min": {"test_r2": 0.8}}   # explicit bounds
        {"test_accuracy": 0.9, "max": {"test_loss": 0.4}}      # both
        {"eval.accuracy": 0.9, "eval_data": {"sha256": "3fa1..."}}  # on one test set

    ``None`` or ``{}`` means no gate. Thresholds must be finite numbers; a metric
    may have both bounds if the minimum is not above the maximum. ``"eval_data"``
    (a dataset sha256, or ``{"sha256", "id", "name"}``) names the test set ``eval.``
    metrics are read on; the stored form keeps it only when given.
    """
    out: dict[str, Any] = {"min": {}, "max": {}}
    if gate is None:
        return out
    if not isinstance(gate, dict):
        raise RegistryError(f"the gate of {model} must be a mapping like {GATE_EXAMPLE}, got {gate!r}")
    problems: list[str] = []

    def add(bound: str, metric: Any, value: Any) -> None:
        if not isinstance(metric, str) or not metric.strip():
            problems.append(f"metric names must be non-empty strings, got {metric!r}")
        elif not is_number(value) or not math.isfinite(value):
            problems.append(f"{bound} {metric}={value!r} is not a finite number")
        else:
            out[bound][metric.strip()] = float(value)

    for key, value in gate.items():
        if key == EVAL_DATA:
            if value is not None:
                out[EVAL_DATA] = _eval_data(value, problems)
        elif key in GATE_BOUNDS:
            if not isinstance(value, dict):
                problems.append(f"{key!r} must map metric names to numbers, got {value!r}")
                continue
            for metric, threshold in value.items():
                add(key, metric, threshold)
        else:
            add("min", key, value)
    for metric in set(out["min"]) & set(out["max"]):
        if out["min"][metric] > out["max"][metric]:
            problems.append(f"{metric}: minimum {out['min'][metric]:g} is above maximum {out['max'][metric]:g}")
    if problems:
        raise RegistryError(f"invalid evaluation gate for {model}: " + "; ".join(problems)
                            + f". A gate looks like {GATE_EXAMPLE}")
    return out


def _eval_data(value: Any, problems: list[str]) -> dict | None:
    """A gate's ``eval_data``: ``{"sha256", "id", "name"}`` from a sha256 or such a mapping."""
    data = {"sha256": value} if isinstance(value, str) else value
    if not isinstance(data, dict) or "sha256" not in data:
        problems.append(f"{EVAL_DATA} must be a dataset sha256 or {{'sha256': ...}}, got {value!r}")
        return None
    try:
        sha = check_sha256(data["sha256"], f"{EVAL_DATA}.sha256")
    except RegistryError as exc:
        problems.append(str(exc))
        return None
    return {"sha256": sha, "id": data.get("id"), "name": data.get("name")}


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if is_number(value) else str(value)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and scalars are leaves)."""
    if not isinstance(d, dict):
        return {prefix: d} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _numeric_metrics(*sources: dict | None) -> dict[str, float]:
    """Numeric (non-bool, scalar) metrics, nested ones flattened (``continual.forgetting``);
    earlier sources win."""
    out: dict[str, float] = {}
    for src in sources:
        flat = _flatten({k: v for k, v in (src or {}).items() if k not in _NOT_SCORES})
        for key, value in flat.items():
            if key not in out and is_number(value):
                out[key] = float(value)
    return out


def _check_alias_name(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS_NAME.match(alias):
        raise RegistryError(
            f"alias {alias!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-', starting "
            "with a letter (e.g. production, staging, canary-eu)"
        )
    if alias in RESERVED_ALIASES:
        raise RegistryError(f"alias {alias!r} is reserved: model@{alias} always means the newest version")
    return alias


class GateError(RegistryError):
    """A version fails its model's evaluation gate (``.check`` holds the whole check).

    ``.failures`` lists each failing metric as ``{"metric", "bound", "threshold",
    "value", "passed", "problem"}``.
    """

    code = "gate_failed"

    def __init__(self, check: dict, action: str = "be used", override_hint: str | None = None) -> None:
        self.check = check
        self.version = check.get("version")
        self.failures = list(check.get("failures", []))
        model = check.get("model")
        lines = [(f"{self.version} does not pass the evaluation gate of model {model}, "
                  f"so it cannot {action}:")]
        for f in self.failures:
            limit = "minimum" if f["bound"] == "min" else "maximum"
            if f["value"] is None:
                lines.append(f"  {f['metric']}: {f['problem']} (gate {limit} {_fmt(f['threshold'])})")
            else:
                lines.append(f"  {f['metric']} = {_fmt(f['value'])}, {limit} {_fmt(f['threshold'])} "
                             f"({f['problem']}{_evaluated_on(f)})")
        lines.append(f"See the gate with `edgeloop registry gate {model}`; change it there, or go ahead with "
                     "a recorded reason: " + (override_hint or "`edgeloop registry alias MODEL ALIAS VERSION "
                                              "--override-gate --reason WHY` or `edgeloop deploy VERSION ... "
                                              "--override-gate WHY`."))
        super().__init__("\n".join(lines))


class UnknownMetricError(RegistryError):
    """A gate names a metric that neither the model's runs nor evaluations record.

    ``.metric`` is the name, ``.suggestion`` the closest known name (or None) and
    ``.known`` the names that exist (``{"runs": [...], "evaluations": [...]}``).
    """

    code = "unknown_metric"

    def __init__(self, model: str, metric: str, known: dict[str, list[str]]) -> None:
        self.metric, self.known = metric, known
        self.suggestion = close_match(metric, known["runs"] + known["evaluations"])
        hint = f" -- did you mean {self.suggestion}?" if self.suggestion else ""
        runs = ", ".join(known["runs"]) or "none yet (train a version first)"
        super().__init__(
            f"model {model} records no metric {metric!r}{hint} Nothing was changed.\n"
            f"  metrics its training runs record: {runs}\n"
            f"  metrics of evaluations on your own test set (edgeloop eval): {', '.join(known['evaluations'])}\n"
            f"Use --min for higher-is-better metrics and --max for errors and losses, e.g. "
            f"edgeloop registry gate {model} --min {self.suggestion or 'test_accuracy'}=0.9")


def _evaluated_on(check: dict) -> str:
    """`` on test.csv (400 rows, int8)`` for a check read from an evaluation, else ""."""
    ev = check.get("evaluation")
    if not ev:
        return ""
    return f"; {ev['artifact']} model on {ev.get('dataset_name') or ev['dataset_sha256'][:12]}, {ev['rows']} rows"


class Promotion(Evaluations):
    """Aliases and their history, evaluation gates, and version comparison."""

    # -- aliases -------------------------------------------------------------------------------
    def set_alias(
        self, model: str, alias: str, version_ref: str, *, actor: str = "hub", reason: str = "",
        override_gate: bool = False,
    ) -> dict:
        """Point ``model@alias`` at a version of ``model``; every move is kept in the alias history.

        ``version_ref`` is any version ref of the same model (``iris:3``, ``3``,
        ``iris@staging``...). A version failing the model's evaluation gate raises
        :class:`GateError` unless ``override_gate=True`` with a ``reason``; the
        override is recorded in the alias history and as a ``gate.override``
        audit row. Pointing an alias where it already points changes nothing.
        Returns the alias row (see :meth:`get_alias`).
        """
        check_model_name(model)
        _check_alias_name(alias)
        reason = str(reason or "").strip()
        if override_gate and not reason:
            raise RegistryError("overriding the evaluation gate needs a reason (it is recorded in the "
                                "alias history and the audit log)")
        with self._write() as db:
            self.get_model(model)
            version = self.get_version(self._qualify(model, version_ref))
            if version["model_name"] != model:
                raise RegistryError(f"{version['id']} is a version of {version['model_name']!r}, not of "
                                    f"{model!r}; an alias of {model} can only point at {model}:<n>")
            current = self._first("aliases", "model_name = ? AND alias = ?", [model, alias])
            if current is not None and current["version_id"] == version["id"]:
                return self.get_alias(model, alias)
            check = self.check_gate(version["id"])
            overridden = not check["passed"]
            if overridden and not override_gate:
                raise GateError(check, action=f"become {model}@{alias}", override_hint=(
                    f"`edgeloop registry alias {model} {alias} {version['id']} --override-gate --reason WHY`."))
            at = now()
            db.table("aliases").upsert({"model_name": model, "alias": alias, "version_id": version["id"],
                                        "updated_at": at, "updated_by": str(actor), "reason": reason},
                                       pk=("model_name", "alias"))
            previous = current["version_id"] if current else None
            db.table("alias_history").insert({
                "model_name": model, "alias": alias, "version_id": version["id"],
                "previous_version_id": previous, "actor": str(actor), "reason": reason,
                "override_gate": int(overridden), "gate_check": dumps(check) if overridden else None,
                "at": at, "at_iso": iso(at),
            })
            self._audit(db, actor, "alias.set", f"{model}@{alias}", version=version["id"],
                        previous=previous, reason=reason, override_gate=overridden)
            if overridden:
                self._audit(db, actor, "gate.override", version["id"], purpose=f"alias {model}@{alias}",
                            reason=reason, failures=check["failures"])
        return self.get_alias(model, alias)

    def remove_alias(self, model: str, alias: str, *, actor: str = "hub", reason: str = "") -> dict:
        """Delete ``model@alias`` (the removal is kept in its history); returns the removed row."""
        reason = str(reason or "").strip()
        with self._write() as db:
            current = self.get_alias(model, alias)
            db.table("aliases").delete((model, alias))
            at = now()
            db.table("alias_history").insert({
                "model_name": model, "alias": alias, "version_id": None,
                "previous_version_id": current["version_id"], "actor": str(actor), "reason": reason,
                "override_gate": 0, "gate_check": None, "at": at, "at_iso": iso(at),
            })
            self._audit(db, actor, "alias.remove", f"{model}@{alias}", previous=current["version_id"],
                        reason=reason)
        return current

    def get_alias(self, model: str, alias: str) -> dict:
        """``{"model_name", "alias", "version_id", "updated_at", "updated_by", "reason"}``."""
        row = self._first("aliases", "model_name = ? AND alias = ?", [model, alias])
        if row is None:
            raise self._no_alias(model, alias)
        return row

    def list_aliases(self, model: str | None = None) -> list[dict]:
        """Current aliases (of every model, or one), by model then alias name."""
        if model is None:
            return self._rows("aliases", order_by="model_name, alias")
        return self._aliases_of(model)

    def alias_history(self, model: str, alias: str | None = None) -> list[dict]:
        """Every move of ``model@alias`` (or of all the model's aliases), newest first.

        Each row: ``id, model_name, alias, version_id`` (None for a removal),
        ``previous_version_id, actor, reason, override_gate`` (bool), ``gate_check``
        (the failed check when the gate was overridden, else None), ``at, at_iso``.
        """
        self.get_model(model)
        if alias is None:
            rows = self._rows("alias_history", "model_name = ?", [model], "id DESC")
        else:
            rows = self._rows("alias_history", "model_name = ? AND alias = ?", [model, alias], "id DESC")
        for r in rows:
            r["override_gate"] = bool(r["override_gate"])
        return rows

    # -- evaluation gates ---------------------------------------------------------------------
    def set_gate(self, model: str, gate: dict | None, *, actor: str = "hub", reason: str = "") -> dict:
        """Store the evaluation gate of ``model`` (see :func:`normalize_gate`); None or {} clears it.

        Existing aliases are not re-checked; the gate applies to the next alias
        move or deployment. The change is audited as ``model.gate`` with the previous
        gate, the new one and ``reason`` (why; "" when none was given). Returns the
        model row (``gate`` in stored form or None).
        """
        reason = str(reason or "").strip()
        normalized = normalize_gate(gate, repr(model))
        empty = not normalized["min"] and not normalized["max"]
        with self._write() as db:
            old = self.get_model(model)
            db.table("models").update(model, {"gate": None if empty else dumps(normalized)})
            self._audit(db, actor, "model.gate", model, previous=old.get("gate"),
                        gate=None if empty else normalized, reason=reason)
        return self.get_model(model)

    def get_gate(self, model: str) -> dict:
        """The gate of ``model`` as ``{"min": {...}, "max": {...}}`` (both empty: no gate), plus
        ``"eval_data"`` when it names the test set of its ``eval.`` metrics."""
        return normalize_gate(self.get_model(model).get("gate"), repr(model))

    def metric_names(self, model: str) -> dict[str, list[str]]:
        """The metric names a gate of ``model`` can use: ``{"runs": [...], "evaluations": [...]}``.

        ``runs``: every numeric metric its versions and their training runs record
        (nested ones flattened, ``continual.forgetting``); ``evaluations``: the ``eval.``
        names of its task (:func:`edgeloop.hub.evaluation.names.eval_metric_names`),
        known before any evaluation ran.
        """
        with self._snapshot():
            record = self.get_model(model)
            versions = self._rows("versions", "model_name = ?", [model])
            runs = self._rows("runs", "model_name = ?", [model])
        names: set[str] = set()
        for row in versions + runs:
            names.update(_numeric_metrics(row.get("metrics")))
        return {"runs": sorted(names), "evaluations": eval_metric_names(record.get("task"))}

    def check_gate(self, version_ref: str) -> dict:
        """Check a version's metrics against its model's gate.

        Returns ``{"version", "model", "gate", "has_gate", "passed", "checks",
        "failures"}``; each check is ``{"metric", "bound": "min"|"max", "threshold",
        "value", "passed", "problem"}`` (``problem`` is "" when it passed). A metric
        the version does not have (or that is not a finite number) fails. A model
        without a gate passes every version. A check of an ``eval.`` metric also
        carries ``"evaluation"``: the evaluation it read (``id, artifact, dataset_id,
        dataset_sha256, dataset_name, rows``), None when there is none yet.
        """
        with self._snapshot():
            version = self.get_version(version_ref)
            gate = self.get_gate(version["model_name"])
            run = self.get_run(version["run_id"])
            evaluations = {m: self._gate_evaluation(version, m, gate)
                           for b in GATE_BOUNDS for m in gate[b] if parse_eval_metric(m)}
        metrics = _numeric_metrics(version.get("metrics"), run.get("metrics"))
        checks = []
        for bound in GATE_BOUNDS:
            for metric, threshold in sorted(gate[bound].items()):
                extra: dict[str, Any] = {}
                if metric in evaluations:
                    value, missing, extra["evaluation"] = evaluations[metric]
                else:
                    value = metrics.get(metric)
                    hint = close_match(metric, metrics)
                    missing = "missing from the version's metrics" + (f" (did you mean {hint}?)" if hint else "")
                if value is None:
                    ok, problem = False, missing
                elif not math.isfinite(value):
                    ok, problem = False, "not a finite number"
                elif bound == "min":
                    ok, problem = value >= threshold, "" if value >= threshold else "below the minimum"
                else:
                    ok, problem = value <= threshold, "" if value <= threshold else "above the maximum"
                rows = _rows_behind(metric, metrics, extra.get("evaluation"))
                checks.append({"metric": metric, "bound": bound, "threshold": threshold,
                               "value": value, "passed": ok, "problem": problem, "rows": rows, **extra})
        failures = [c for c in checks if not c["passed"]]
        warnings = [f"gate metric {c['metric']} rests on {c['rows']} rows (< {FEW_DECISION_ROWS}), so the decision is "
                    "noisy; score the version on a larger test set (edgeloop eval VERSION --data TEST_SET) and "
                    "gate on eval.* metrics"
                    for c in checks if c["rows"] is not None and c["rows"] < FEW_DECISION_ROWS]
        return {"version": version["id"], "model": version["model_name"], "gate": gate,
                "has_gate": bool(checks), "passed": not failures, "checks": checks, "failures": failures,
                "warnings": warnings}

    def _gate_evaluation(self, version: dict, metric: str, gate: dict) -> tuple[float | None, str, dict | None]:
        """An ``eval.`` gate metric of a version: (value, why it is missing, the evaluation read)."""
        parsed = parse_eval_metric(metric)
        assert parsed is not None  # only eval. names come here
        artifact, name = parsed[0] or version["chosen"], parsed[1]
        on = gate.get(EVAL_DATA)
        where = f" on {on.get('name') or on['sha256'][:12]}" if on else ""
        if artifact == "int8" and not version.get("int8_sha256"):
            return None, "the version has no int8 model (it was not quantized)", None
        row = self.latest_evaluation(version["id"], artifact, on["sha256"] if on else None)
        if row is None:
            return None, (f"no evaluation of its {artifact} model{where} yet: run "
                          f"`edgeloop eval {version['id']} --data TEST_SET`"), None
        summary = {k: row[k] for k in ("id", "artifact", "dataset_id", "dataset_sha256", "dataset_name", "rows")}
        value = (row.get("metrics") or {}).get(name)
        if value is None or not is_number(value):
            known = ", ".join(k for k, v in (row.get("metrics") or {}).items() if is_number(v))
            return None, f"evaluation {row['id']} records no {name!r} (it records {known})", summary
        return float(value), "", summary

    # -- compare --------------------------------------------------------------------------------
    def compare(self, a_ref: str, b_ref: str) -> dict:
        """Two versions side by side: metrics (with delta b - a), params diff, quantization.

        Returns ``{"a": {...}, "b": {...}`` (id, model, run, dataset, created_at,
        chosen, parent_version, aliases), ``"metrics": {name: {"a", "b", "delta"}}``
        over the union of numeric version and run metrics (a side lacking a metric
        has None, as has the delta), ``"params": {"changed": {name: {"a", "b"}},
        "only_a": {...}, "only_b": {...}, "same": {...}}`` with nested params
        flattened (``split.seed``), ``"quantization": {"a": {...}, "b": {...}}``
        (chosen, reason, budget and the fp32/int8 report numbers), ``"same_dataset"``
        and ``"gate": {"a": check, "b": check}``.
        """
        with self._snapshot():
            sides = {}
            for side, ref in (("a", a_ref), ("b", b_ref)):
                v = self.get_version(ref)
                run = self.get_run(v["run_id"])
                sides[side] = (v, run, self.check_gate(v["id"]))
        (va, ra, ga), (vb, rb, gb) = sides["a"], sides["b"]
        ma = _numeric_metrics(va.get("metrics"), ra.get("metrics"))
        mb = _numeric_metrics(vb.get("metrics"), rb.get("metrics"))
        metrics = {}
        for name in sorted(set(ma) | set(mb)):
            a, b = ma.get(name), mb.get(name)
            metrics[name] = {"a": a, "b": b, "delta": (b - a) if a is not None and b is not None else None}
        return {"a": _summary(va, ra), "b": _summary(vb, rb), "metrics": metrics,
                "params": _params_diff(ra.get("params") or {}, rb.get("params") or {}),
                "quantization": {"a": _quantization(va), "b": _quantization(vb)},
                "same_dataset": ra["dataset_id"] == rb["dataset_id"], "gate": {"a": ga, "b": gb}}


FEW_DECISION_ROWS = 30  # below this many rows a gate decision is reported as noisy


def _rows_behind(metric: str, metrics: dict[str, float], evaluation: dict | None) -> int | None:
    """How many rows a gate metric was measured on: the evaluation's, else the split its name says (test_, val_)."""
    if evaluation is not None:
        return int(evaluation["rows"])
    for prefix, count in (("test_", "n_test"), ("val_", "n_val"), ("train_", "n_train")):
        if metric.startswith(prefix) and count in metrics:
            return int(metrics[count])
    return None


def _params_diff(a: dict, b: dict) -> dict[str, dict]:
    """Training params of two runs, flattened: changed, only in a, only in b, the same."""
    pa, pb = _flatten(a), _flatten(b)
    params: dict[str, dict] = {"changed": {}, "only_a": {}, "only_b": {}, "same": {}}
    for name in sorted(set(pa) | set(pb)):
        if name not in pb:
            params["only_a"][name] = pa[name]
        elif name not in pa:
            params["only_b"][name] = pb[name]
        elif pa[name] == pb[name]:
            params["same"][name] = pa[name]
        else:
            params["changed"][name] = {"a": pa[name], "b": pb[name]}
    return params


def _summary(v: dict, run: dict) -> dict:
    """One side of a comparison: the version, its run and dataset."""
    return {"id": v["id"], "model": v["model_name"], "run_id": run["id"],
            "dataset_id": run["dataset_id"], "created_at": v["created_at"],
            "chosen": v["chosen"], "parent_version": v.get("parent_version"),
            "aliases": v.get("aliases", [])}


def _quantization(v: dict) -> dict:
    """One side's quantization choice and the numbers of its report."""
    q = v.get("quantization") or {}
    report = {k: val for k, val in (q.get("report") or {}).items() if is_number(val)}
    return {"chosen": v["chosen"], "reason": q.get("reason", ""),
            "budget_points": q.get("budget_points"), "report": report}
