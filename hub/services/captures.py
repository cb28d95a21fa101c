"""Captured field data in the hub: the batches agents uploaded (opt-in, see docs/operator-guide.md,
"Capturing field data"), turning capture on and off on agents, and purging what was kept.

Each batch the fleet received whole and checked (:mod:`edgeloop.hub.fleet.capture_intake`) is a
``captures`` record -- lineage (agent, model, version, bundle, time range of its requests, batch id),
row counts, the hub's copy of its CSV -- and, when enough of its rows carry a ground-truth label, a
dataset version ``capture-<agent>-<model>`` like any imported dataset (the model's feature names,
the label in ``label``): ``Hub.load_dataset(record["dataset_id"])`` trains on it.
:meth:`HubCaptures.capture_dataset` joins the labelled rows of several batches into one dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeloop.agent.wire.capture import LABEL_COLUMN, CaptureManifest
from edgeloop.hub.datasets import MIN_ROWS_FLOOR, Dataset
from edgeloop.hub.errors import HubError
from edgeloop.hub.fleet.capture_intake import labelled_dataset
from edgeloop.hub.services.delivery import HubDelivery

if TYPE_CHECKING:
    from edgeloop.hub.fleet import Fleet

CAPTURE_SETTINGS = ("max_rows", "max_bytes", "upload_rows", "chunk_bytes", "spool_max_bytes", "seed")


class CaptureDataError(HubError):
    """Captured batches cannot make the dataset asked for."""

    code = "capture_data"


class HubCaptures(HubDelivery):
    def list_captures(self, agent_id: str | None = None, model: str | None = None) -> list[dict]:
        """Captured batches, newest first (of one agent and/or model): the ``captures`` records."""
        return self.registry.list_captures(agent_id=agent_id, model=model)

    def get_capture(self, batch_id: str) -> dict:
        """One batch's record (by id or a unique prefix of 6+ hex digits)."""
        return self.registry.get_capture(batch_id)

    def capture_detail(self, batch_id: str, *, head: int = 5) -> dict:
        """``{"capture", "dataset", "columns", "head"}``: the record, its dataset record (None if none),
        the CSV's header and its first ``head`` rows."""
        rec = self.get_capture(batch_id)
        dataset = self.registry.get_dataset(rec["dataset_id"]) if rec.get("dataset_id") else None
        path = self.home.root / rec["path"]
        try:
            lines = path.read_text("utf-8").splitlines()
        except OSError as exc:
            lines = []
            rec = {**rec, "note": f"{rec.get('note') or ''} (the hub's copy {path} cannot be read: {exc})".strip()}
        return {"capture": rec, "dataset": dataset, "columns": lines[0].split(",") if lines else [],
                "head": lines[1:1 + head]}

    def capture_dataset(self, batch_ids: Sequence[str]) -> Dataset:
        """The labelled rows of the batches ``batch_ids`` (one model: same features and labels) as one
        dataset, not registered (``Hub.register_dataset`` registers it)."""
        parts: list[Dataset] = []
        records = [self.get_capture(b) for b in batch_ids]
        if not records:
            raise CaptureDataError("no captured batch given; see `edgeloop capture list`")
        models = {(r["model"], tuple(r["manifest"]["feature_names"])) for r in records}
        if len(models) != 1:
            raise CaptureDataError("the batches are of different models or feature layouts: "
                                   f"{sorted(m for m, _ in models)}; give batches of one model")
        for r in records:
            m = CaptureManifest.from_dict(r["manifest"])
            ds, _ = labelled_dataset(m, (self.home.root / r["path"]).read_bytes()) if m.labelled_rows else (None, "")
            if ds is not None:
                parts.append(ds)
        n = sum(p.n_rows for p in parts)
        if n < MIN_ROWS_FLOOR:
            raise CaptureDataError(f"the batches hold {n} labelled rows (only batches with {MIN_ROWS_FLOOR} or more "
                                   "count); send feedback (labels) for more requests")
        first = parts[0]
        agents = sorted({r["agent_id"] for r in records})
        return Dataset(first.feature_names, np.concatenate([p.X for p in parts]), np.concatenate([p.y for p in parts]),
                       first.labels, label_column=LABEL_COLUMN, task=first.task,
                       source=f"capture:{','.join(agents)}/{len(records)} batches", window_shape=first.window_shape,
                       min_rows=MIN_ROWS_FLOOR)

    def purge_captures(self, *, batch_id: str | None = None, agent_id: str | None = None) -> list[dict]:
        """Forget captured batches -- one, an agent's, or all -- and delete the hub's copies of their CSV and
        of the datasets registered from them that no training run used (the dataset records stay, so
        lineage still names them; loading one says its copy is gone). Returns the records removed."""
        records = [self.get_capture(batch_id)] if batch_id is not None else self.list_captures(agent_id)
        used = {r["dataset_id"] for r in self.registry.list_runs()}
        for rec in records:
            (self.home.root / rec["path"]).unlink(missing_ok=True)
            ds_id = rec.get("dataset_id")
            if ds_id and ds_id not in used:
                sha = self.registry.get_dataset(ds_id)["sha256"]
                for suffix in (".csv", ".schema.json"):
                    Path(self.home.datasets_dir / f"{sha[:16]}{suffix}").unlink(missing_ok=True)
            self.registry.delete_capture(rec["batch_id"], actor=self.actor)
        return records

    def set_capture(self, fleet: Fleet | str, agent_ids: Sequence[str], *, enable: bool | None = None,
                    upload: bool = False, timeout: float = 30.0, **settings: Any) -> list[dict]:
        """Send each agent a signed ``capture`` command (``enable`` and/or ``settings``: max_rows,
        max_bytes, upload_rows, chunk_bytes, spool_max_bytes, seed) or, with ``upload``, a
        ``capture_upload`` (cut the sample now and upload it). One result per agent:
        ``{"agent", "ok", "code", "message", "details"}``."""
        unknown = set(settings) - set(CAPTURE_SETTINGS)
        if unknown:
            raise HubError(f"unknown capture settings {sorted(unknown)}; known: {', '.join(CAPTURE_SETTINGS)}")
        args = {**settings, **({"enable": enable} if enable is not None else {})}
        if not upload and not args:
            raise HubError("nothing to send: give enable=True/False, settings, or upload=True")

        def one(started: Fleet, aid: str) -> dict:
            cmd = started.make_command(aid, "capture_upload" if upload else "capture", {} if upload else args)
            started.send(cmd)
            out = started.outcome(cmd.command_id, ("command_result",), timeout)
            return {"agent": aid, "ok": out.ok, "code": out.code, "message": out.message, "details": out.details}

        results = self._on_fleet(fleet, agent_ids, one)
        self.registry.audit(self.actor, "capture.upload" if upload else "capture.set", ",".join(agent_ids),
                            args=args, results={r["agent"]: r["code"] for r in results})
        return results


__all__ = ["CAPTURE_SETTINGS", "CaptureDataError", "HubCaptures"]
