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
  on the feedback labels that arrived (docs/performance-estimation.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from edgeloop.hub.errors import HubError
from edgeloop.hub.services.core import HubCore

TREND_WINDOWS = 12  # windows in an overview's trend
HISTORY_LIMIT = 5000  # reports read per overview (newest first)
OUTPUT = "prediction"  # drift_series name of a regression model's output
CLASSES = "classes"  # drift_series name of a classifier's predicted class shares


class DriftSeriesError(HubError):
    """A drift series was asked for a feature the agent's reports do not have."""

    code = "unknown_drift_feature"


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


__all__ = ["CLASSES", "OUTPUT", "TREND_WINDOWS", "DriftSeriesError", "HubDrift", "accuracy_points", "agent_drift",
           "estimate_error", "feature_series"]
