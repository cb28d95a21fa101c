"""The fleet's drift as the hub shows it: per model -> per agent -> per feature, over time.

Agents judge every drift window on the device (:mod:`edgeloop.agent.drift`) and send it with
its raw bin counts; the fleet stores each report whole (the registry's ``drift_reports``). This
module reads them back for the CLI (``edgeloop drift``) and the GUI's charts:

* :meth:`HubDrift.drift_overview` -- per model, per agent (the version it last reported on): the
  features reported drifted and flagged in the last judged window, the worst feature of that
  window (smallest KS p-value, then largest PSI), the trend (features flagged per window over the
  last ``trend`` windows, oldest first), windows closed with too few rows, missing and out-of-range
  values, regression output drift, and the false-alarm controls the agent judged with (``alpha``
  per window shared by all features with Holm's correction, ``consecutive`` flagged windows before
  a feature is reported drifted, no verdict below ``min_rows`` rows);
* :meth:`HubDrift.drift_series` -- one feature's statistics window by window (``prediction``: a
  regression model's output; ``classes``: predicted class counts and their JS distance), with its
  raw counts and their sum over all windows (histograms over fixed edges add up exactly);
* :meth:`HubDrift.accuracy_series` -- a calibrated classifier's accuracy window by window: the
  estimate the agent made without labels (with its interval and flag) beside the realized accuracy
  on the feedback labels that arrived (docs/performance-estimation.md);
* :meth:`HubDrift.drift_reference` -- the reference a version's bundle carries, the one its agents
  judge every window against: per feature the bin edges, the reference counts and their shares (the
  bins of the windows' ``counts``), and the window settings; read from the bundle an agent reports
  or the version's folder, never recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from edgeloop.agent.errors import EdgeloopError
from edgeloop.agent.wire.bundle import inspect_bundle
from edgeloop.agent.wire.bundle import sha256 as sha256_hex
from edgeloop.agent.wire.manifest import DriftReference, FeatureReference
from edgeloop.hub.errors import HubError, NotFoundError
from edgeloop.hub.services.core import HubCore

TREND_WINDOWS = 12  # windows in an overview's trend
HISTORY_LIMIT = 5000  # reports read per overview (newest first)
OUTPUT = "prediction"  # drift_series name of a regression model's output
CLASSES = "classes"  # drift_series name of a classifier's predicted class shares


class DriftSeriesError(HubError):
    """A drift series was asked for a feature the agent's reports do not have."""

    code = "unknown_drift_feature"


class DriftReferenceMissingError(HubError):
    """A version has no drift reference the hub can read (no bundle carrying one, no ``reference.json``)."""

    code = "no_drift_reference"


class HubDrift(HubCore):
    def drift_overview(self, agent_id: str | None = None, model: str | None = None, *,
                       trend: int = TREND_WINDOWS) -> list[dict]:
        """Per model (sorted): ``{"model", "agents": [...], "agents_drifting"}``; see :func:`agent_drift`."""
        reports = self.registry.list_drift_reports(agent_id, model=model, limit=HISTORY_LIMIT)
        by_key: dict[tuple[str, str], list[dict]] = {}
        for row in reversed(reports):  # oldest first
            by_key.setdefault((row["model"], row["agent_id"]), []).append(row)
        models: dict[str, list[dict]] = {}
        for (m, _agent), rows in sorted(by_key.items()):
            models.setdefault(m, []).append(agent_drift(rows, trend=trend))
        return [{"model": m, "agents": entries, "agents_drifting": sum(e["alarm"] for e in entries)}
                for m, entries in models.items()]

    def drift_series(self, agent_id: str, model: str, feature: str, *, version: str | None = None,
                     limit: int = 500) -> dict:
        """``feature``'s statistics per window of ``agent_id``'s ``model`` (the last ``limit`` windows,
        oldest first) and the sum of its counts; see :func:`feature_series`."""
        rows = self.registry.list_drift_reports(agent_id, model=model, version=version, limit=limit)
        series = feature_series(list(reversed(rows)), feature)
        return {"agent_id": agent_id, "model": model, "version": version, "feature": feature, **series}

    def accuracy_series(self, agent_id: str, model: str, *, version: str | None = None, limit: int = 500) -> dict:
        """Estimated vs realized accuracy per window of ``agent_id``'s ``model`` (oldest first); see
        :func:`accuracy_points`."""
        rows = self.registry.list_drift_reports(agent_id, model=model, version=version, limit=limit)
        points = accuracy_points(list(reversed(rows)))
        return {"agent_id": agent_id, "model": model, "version": version, "points": points,
                **estimate_error(points)}

    def drift_reference(self, ref: str, version: str | None = None, *, bundle_sha256: str | None = None) -> dict:
        """The drift reference of a version: what its agents judge every drift window against.

        ``ref`` is a version ref (``iris:1``, ``iris@production``), or a model name with ``version``
        (``"iris", "1"``: the ``version`` of a drift report). With ``bundle_sha256`` (the bundle an agent
        reports) the reference is read from that registered bundle's manifest, exactly what that agent
        judged; without it from the version's folder (``reference.json``, which every bundle of the
        version carries), else from its newest registered bundle. Nothing is recomputed.

        Returns ``{"model", "version", "version_id", "source"`` (``"bundle"`` or ``"version folder"``),
        ``"bundle_sha256"`` (None from the folder), ``"path", "format", "rows"`` (reference rows),
        ``"window"`` (``rows, seconds, min_rows, consecutive``: the agents' window defaults),
        ``"thresholds"`` (``alpha, psi_threshold, ks_threshold``), ``"layout"`` (window inputs), ``"features"``
        (name -> ``edges, bins, counts, shares, mean, std, min, max``; ``counts`` over the bins
        ``(-inf, e0], (e0, e1], ..., (e_last, +inf)`` named in ``bins``, the bins of a drift report's
        ``counts``; ``shares`` sum to 1), ``"output"`` (a regression model's prediction histogram, the
        same fields, or None) and ``"classes"`` (a classifier's ``bins`` = labels and reference ``shares``,
        or None)}``. Raises :class:`~edgeloop.hub.errors.NotFoundError` for an unknown version and
        :class:`DriftReferenceMissingError` when no reference can be read (the message says what to do).
        """
        v = self.registry.get_version(ref if version is None else f"{ref}:{version}")
        if bundle_sha256 is not None:
            reference, path, sha = self._bundle_reference(v, self._reported_bundle(v, bundle_sha256))
        else:
            path = self.home.models_dir / v["model_name"] / v["version"] / "reference.json"
            if path.exists():
                reference, sha = _read_reference(v, path), None
            else:
                bundles = self.registry.list_bundles(v["id"])
                if not bundles:
                    raise DriftReferenceMissingError(
                        f"{v['id']} has no drift reference: no reference.json under {path.parent} and no registered "
                        f"bundle. Versions trained by this hub have one: train the version again "
                        f"(`edgeloop train`) and deploy its bundle")
                reference, path, sha = self._bundle_reference(v, bundles[0])
        return {"model": v["model_name"], "version": v["version"], "version_id": v["id"],
                "source": "bundle" if sha is not None else "version folder", "bundle_sha256": sha,
                "path": str(path), **reference_record(reference, f"{v['id']} ({path})")}

    def _reported_bundle(self, v: dict, bundle_sha256: str) -> dict:
        """The registered bundle of version ``v`` an agent reports, or a DriftReferenceMissingError."""
        try:
            rec = self.registry.get_bundle(bundle_sha256)
        except NotFoundError as exc:
            raise DriftReferenceMissingError(
                f"bundle {bundle_sha256[:12]}... is not registered in this hub, so the reference its agents "
                f"judge against is not known here; deploy a bundle of {v['id']} built by this hub to the agent "
                f"(`edgeloop deploy {v['id']} --agent ID`), or ask for the version's own reference (no "
                f"bundle_sha256)") from exc
        if rec["version_id"] != v["id"]:
            raise DriftReferenceMissingError(
                f"bundle {rec['sha256'][:12]}... is a bundle of {rec['version_id']}, not of {v['id']}; ask for "
                f"{rec['version_id']}'s reference")
        return rec

    def _bundle_reference(self, v: dict, rec: dict) -> tuple[DriftReference, Path, str]:
        """The drift reference in the manifest of the registered bundle ``rec`` (its bytes checked first)."""
        path = Path(rec["path"])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DriftReferenceMissingError(
                f"bundle {rec['sha256'][:12]}... of {v['id']} cannot be read from {path}: {exc}; restore the file "
                f"or build the bundle again (`edgeloop bundle build {v['id']}`)") from exc
        if sha256_hex(data) != rec["sha256"]:
            raise DriftReferenceMissingError(
                f"bundle file {path} does not match the sha256 the registry recorded for {v['id']} "
                f"({rec['sha256'][:12]}...): it was replaced or damaged; restore it or build the bundle again")
        try:
            manifest, _sig = inspect_bundle(data)
        except EdgeloopError as exc:
            raise DriftReferenceMissingError(f"bundle {path} of {v['id']} cannot be read: {exc}; build the bundle "
                                             f"again (`edgeloop bundle build {v['id']}`)") from exc
        if manifest.drift is None:
            raise DriftReferenceMissingError(
                f"bundle {rec['sha256'][:12]}... of {v['id']} carries no drift reference (its agents judge no drift); "
                f"build a bundle of a version trained by this hub (`edgeloop train`, then `edgeloop bundle build`)")
        return manifest.drift, path, rec["sha256"]


def agent_drift(rows: list[dict], *, trend: int = TREND_WINDOWS) -> dict:
    """One agent's drift on one model from its report rows (oldest first), on the version it reported last."""
    last = rows[-1]
    version = last["version"]
    mine = [r for r in rows if r["version"] == version]
    reports = [r["report"] for r in mine]
    judged = [rep for rep in reports if rep.get("status", "ok") == "ok"]
    now = judged[-1] if judged else None
    features = now.get("features", []) if now else []
    worst = min(features, key=_severity, default=None)
    recent = reports[-trend:]
    drifting = [f["name"] for f in features if f.get("drifted")]
    output = now.get("output") if now else None
    return {
        "agent_id": last["agent_id"], "model": last["model"], "version": version,
        "bundle_sha256": last["bundle_sha256"], "versions_reported": len({r["version"] for r in rows}),
        "windows": len(mine), "rows": sum(int(r["rows"]) for r in mine),
        "too_few_rows": len(reports) - len(judged),
        "last_window": last["window"], "last_status": last["report"].get("status", "ok"),
        "last_ended_at": last["ended_at"], "last_received_at": last["received_at"],
        "drifting": drifting,
        "alarm": bool(drifting or (output and output.get("drifted"))),  # inputs or the regression output drifted
        "flagged": [f["name"] for f in features if _flagged(f)],
        "worst": _stat(worst) if worst is not None else None,
        "trend": [sum(_flagged(f) for f in rep.get("features", [])) for rep in recent],
        "trend_max_psi": [max((float(f.get("psi", 0.0)) for f in rep.get("features", [])), default=0.0)
                          for rep in recent],
        "trend_status": [rep.get("status", "ok") for rep in recent],
        "missing": sum(int(f.get("missing", 0)) for f in features),
        "out_of_range": sum(int(f.get("out_of_range", 0)) for f in features),
        "output": _stat(output) if output else None,
        "output_js": now.get("output_js") if now else None,
        "controls": _controls(now or reports[-1]),
        "features": {f["name"]: {**_stat(f), "windows_drifted": _windows_drifted(judged, f["name"])}
                     for f in features},
        "performance": _performance(mine, trend),
    }


def accuracy_points(rows: list[dict]) -> list[dict]:
    """Per window with an estimate (oldest first): ``window, version, ended_at, rows, status``, the estimate
    ``accuracy, low, high, reference, threshold, flagged`` and ``labelled, realized`` (None without labels)."""
    out = []
    for row in rows:
        pf = row["report"].get("performance")
        if not pf:
            continue
        out.append({"window": row["window"], "version": row["version"], "ended_at": row["ended_at"],
                    "rows": row["rows"], "status": row["report"].get("status", "ok"),
                    **{k: pf.get(k) for k in ("accuracy", "low", "high", "reference", "reference_measured",
                                              "threshold", "flagged", "labelled", "realized")}})
    return out


def estimate_error(points: list[dict]) -> dict:
    """How far the estimate was from the realized accuracy over the windows with labels:
    ``labelled_windows``, ``mean_error`` (estimate - realized, label-weighted) and ``mean_abs_error``."""
    lab = [p for p in points if p.get("realized") is not None and p.get("labelled")]
    n = sum(int(p["labelled"]) for p in lab)
    if not n:
        return {"labelled_windows": 0, "mean_error": None, "mean_abs_error": None}
    err = [(float(p["accuracy"]) - float(p["realized"]), int(p["labelled"])) for p in lab]
    return {"labelled_windows": len(lab), "mean_error": sum(e * w for e, w in err) / n,
            "mean_abs_error": sum(abs(e) * w for e, w in err) / n}


def _performance(rows: list[dict], trend: int) -> dict | None:
    """The last estimate, the estimates and realized accuracies of the last ``trend`` windows, the error."""
    points = accuracy_points(rows)
    if not points:
        return None
    last = points[-1]
    recent = points[-trend:]
    return {**last, "trend_estimate": [p["accuracy"] for p in recent],
            "trend_realized": [p["realized"] for p in recent], "flagged_windows": sum(bool(p["flagged"]) for p in
                                                                                     points), **estimate_error(points)}


def reference_record(ref: DriftReference, where: str = "the drift reference") -> dict:
    """The plain record of a drift reference (see :meth:`HubDrift.drift_reference`, whose fields past
    ``path`` these are); a feature whose counts are empty raises DriftReferenceMissingError."""
    classes = None
    if ref.output_labels and ref.output_shares and len(ref.output_shares) == len(ref.output_labels):
        total = float(sum(ref.output_shares))
        if total > 0:
            classes = {"bins": list(ref.output_labels), "shares": [float(s) / total for s in ref.output_shares]}
    return {
        "format": ref.format, "rows": ref.rows,
        "window": {"rows": ref.window, "seconds": ref.window_seconds, "min_rows": ref.min_rows,
                   "consecutive": ref.consecutive},
        "thresholds": {"alpha": ref.alpha, "psi_threshold": ref.psi_threshold, "ks_threshold": ref.ks_threshold},
        "layout": ref.layout.to_dict() if ref.layout is not None else None,
        "features": {f.name: _feature_record(f, where) for f in ref.features},
        "output": _feature_record(ref.output, where) if ref.output is not None else None,
        "classes": classes,
    }


def bin_labels(edges: list[float]) -> list[str]:
    """Names of the ``len(edges) + 1`` bins ``(-inf, e0], (e0, e1], ..., (e_last, +inf)``."""
    if not edges:
        return ["all"]
    inner = [f"({a:.4g}, {b:.4g}]" for a, b in zip(edges, edges[1:], strict=False)]
    return [f"<= {edges[0]:.4g}", *inner, f"> {edges[-1]:.4g}"]


def _feature_record(f: FeatureReference, where: str) -> dict:
    total = sum(f.counts)
    if total <= 0:
        raise DriftReferenceMissingError(f"the drift reference of {where} has no reference rows for feature "
                                         f"{f.name!r}; build the version and its bundle again")
    edges = [float(e) for e in f.edges]
    return {"edges": edges, "bins": bin_labels(edges), "counts": [int(c) for c in f.counts],
            "shares": [c / total for c in f.counts], "mean": f.mean, "std": f.std, "min": f.min, "max": f.max}


def _read_reference(v: dict, path: Path) -> DriftReference:
    """The drift reference a version's folder holds (``reference.json``, what its bundles carry)."""
    try:
        return DriftReference.from_dict(json.loads(path.read_text("utf-8")))
    except (OSError, ValueError, EdgeloopError) as exc:
        raise DriftReferenceMissingError(f"the drift reference of {v['id']} ({path}) cannot be read: {exc}; "
                                         f"train the version again (`edgeloop train`)") from exc


def feature_series(rows: list[dict], feature: str) -> dict:
    """``{"points": [...], "counts_total"}``: per window (oldest first) ``window, started_at, ended_at,
    rows, status`` and the feature's ``psi, ks, p_value, flagged, drifted, streak, mean, missing,
    out_of_range, counts`` (``classes``: ``output_js`` and ``counts``); ``counts_total`` adds the
    counts of the windows whose bins match the newest one's (one bundle's reference)."""
    points = []
    for row in rows:
        rep = row["report"]
        base = {"window": row["window"], "version": row["version"], "started_at": row["started_at"],
                "ended_at": row["ended_at"], "rows": row["rows"], "status": rep.get("status", "ok"),
                "bundle_sha256": row["bundle_sha256"]}
        if feature == CLASSES:
            if rep.get("output_counts"):
                points.append({**base, "output_js": rep.get("output_js"), "counts": list(rep["output_counts"])})
            continue
        f = rep.get("output") if feature == OUTPUT else _find(rep.get("features", []), feature)
        if f:
            points.append({**base, **_stat(f), "counts": list(f.get("counts", []))})
    if not points:
        raise DriftSeriesError(f"no drift window of this agent and model has a feature {feature!r}; "
                               f"`edgeloop drift --detail` lists the features (or use {OUTPUT!r} / {CLASSES!r})")
    newest = points[-1]["bundle_sha256"]
    width = len(points[-1]["counts"])
    same = [p["counts"] for p in points if p["bundle_sha256"] == newest and len(p["counts"]) == width]
    total = [sum(c) for c in zip(*same, strict=True)] if same else []
    return {"points": points, "counts_total": total}


def _severity(f: Mapping[str, Any]) -> tuple:
    """Most severe first: the smallest KS p-value (it accounts for the window's size), then the largest PSI."""
    p = f.get("p_value")
    return (1.0 if p is None else float(p), -float(f.get("psi", 0.0)), str(f.get("name")))


def _find(features: Iterable[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    return next((f for f in features if f.get("name") == name), None)


def _flagged(f: Mapping[str, Any]) -> bool:
    """This window's own verdict (older agents sent only ``drifted``, their per-window flag)."""
    flagged = f.get("flagged")
    return bool(f.get("drifted")) if flagged is None else bool(flagged)


def _stat(f: Mapping[str, Any]) -> dict:
    return {"name": f.get("name"), "psi": float(f.get("psi", 0.0)), "ks": float(f.get("ks", 0.0)),
            "p_value": f.get("p_value"), "flagged": _flagged(f), "drifted": bool(f.get("drifted")),
            "streak": f.get("streak"), "mean": f.get("mean"), "missing": int(f.get("missing", 0)),
            "out_of_range": int(f.get("out_of_range", 0))}


def _controls(rep: Mapping[str, Any]) -> dict:
    return {"alpha": rep.get("alpha"), "features_tested": len(rep.get("features", [])),
            "consecutive": rep.get("consecutive") or 1, "min_rows": rep.get("min_rows"),
            "psi_threshold": rep.get("psi_threshold"), "ks_threshold": rep.get("ks_threshold")}


def _windows_drifted(reports: list[Mapping[str, Any]], name: str) -> int:
    return sum(bool((f := _find(rep.get("features", []), name)) and f.get("drifted")) for rep in reports)


__all__ = ["CLASSES", "OUTPUT", "TREND_WINDOWS", "DriftReferenceMissingError", "DriftSeriesError", "HubDrift",
           "accuracy_points", "agent_drift", "bin_labels", "estimate_error", "feature_series", "reference_record"]
