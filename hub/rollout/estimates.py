"""Filling the estimated-accuracy fields of a gate :class:`~edgeloop.hub.rollout.gates.Observation` from drift reports.

A calibrated classifier's agent puts an accuracy estimate in every drift window
(``report["performance"]``, docs/performance-estimation.md). During a bake the rollout driver pools
the windows the *new* version reported on one agent since it was activated
(:func:`pooled_estimate`) and compares them with a baseline: preferably the live (replaced) version's
estimate pooled over the same period on the agents still serving it -- the same traffic, so a
drop is the model's, not the world's -- else the bundle's reference (the held-out split's estimated
accuracy, which every report carries as ``reference``). Pure: report dicts in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["estimate_fields", "pooled_estimate"]


def pooled_estimate(reports: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Row-weighted accuracy estimate over the reports' windows that carry one, with the interval's
    half-width ``margin`` pooled from the windows' intervals (they are independent), the rows, the
    reference, and the realized accuracy on the labels that arrived; None when no window has an estimate."""
    rows = 0
    acc = var = 0.0
    labelled = correct = 0
    reference = None
    for rep in reports:
        pf = rep.get("performance") if isinstance(rep, Mapping) else None
        if not pf or not pf.get("rows"):
            continue
        m = int(pf["rows"])
        rows += m
        acc += float(pf["accuracy"]) * m
        half = (float(pf["high"]) - float(pf["low"])) / 2.0
        var += (half * m) ** 2
        labelled += int(pf.get("labelled") or 0)
        correct += int(pf.get("correct") or 0)
        reference = float(pf["reference"])
    if rows == 0:
        return None
    return {"accuracy": acc / rows, "rows": rows, "margin": math.sqrt(var) / rows, "reference": reference,
            "labelled": labelled, "realized": correct / labelled if labelled else None}


def estimate_fields(new_reports: Iterable[Mapping[str, Any]],
                    live_reports: Iterable[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The Observation fields ``estimated_accuracy, estimate_rows, estimate_margin, baseline_accuracy``.

    ``new_reports``: the new version's drift reports (dicts as stored, ``report`` of a registry row) on
    one agent since activation; ``live_reports``: the replaced version's reports over the same period
    (its pooled estimate is the baseline; without them, the new bundle's reference). Empty when the new
    version's reports carry no estimate (a regression model, or a bundle without calibration).
    """
    new = pooled_estimate(new_reports)
    if new is None:
        return {}
    live = pooled_estimate(live_reports) if live_reports is not None else None
    baseline = live["accuracy"] if live is not None else new["reference"]
    return {"estimated_accuracy": new["accuracy"], "estimate_rows": new["rows"], "estimate_margin": new["margin"],
            "baseline_accuracy": baseline}
