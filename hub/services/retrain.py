"""Acting on drift: retrain a model on the field data its agents captured (the closed loop).

:meth:`HubRetrain.retrain_from_capture` is one step the CLI (``edgeloop retrain MODEL --from-capture
AGENT|TAG``) and the GUI both drive:

1. **select** the captured batches of the model from the agent (or every agent a tag selector such as
   ``site=plant-a`` matches) -- refused, with the next step, when there are none, when they are of
   another model, or when too few of their rows carry a ground-truth label;
2. **build** one dataset of their labelled rows (registered, its ``source`` naming every batch:
   ``capture:<batch>,<batch>...``, so ``edgeloop registry lineage`` walks from the child back to the
   batches);
3. **fine-tune** the parent -- by default the version the newest batch was served by -- with replay of
   the parent's own training rows (and EWC when asked): :meth:`HubModels.train` with ``parent``;
4. **measure** the gain on the new data (the child against the parent on the captured rows' test
   split) and the forgetting on the parent's test split, against a stated bound;
5. **register** the child (``parent_version`` = the parent, its run on the capture dataset) and say
   whether it is ready for a gated rollout, with a canary on the agent that drifted.

The pure pieces (which batches, the verdict) are module functions; the method does the I/O.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgeloop.agent.wire.capture import LABEL_COLUMN, PREDICTION_COLUMN, CaptureManifest
from edgeloop.hub.datasets import MIN_ROWS_FLOOR, Dataset
from edgeloop.hub.errors import NotFoundError
from edgeloop.hub.fleet.capture_intake import labelled_dataset
from edgeloop.hub.progress import CancelToken, ProgressCallback, ProgressEvent
from edgeloop.hub.rollout.errors import SelectorSyntaxError
from edgeloop.hub.rollout.selector import AgentRecord, parse_target
from edgeloop.hub.services.captures import CaptureDataError, HubCaptures
from edgeloop.hub.services.drift import agent_drift

__all__ = ["DEFAULT_MAX_FORGETTING", "DEFAULT_REPLAY_ROWS", "MIN_RETRAIN_ROWS", "RetrainError", "RetrainResult",
           "HubRetrain", "batches_of_source", "capture_source", "pseudo_labelled", "resolve_source", "select_batches",
           "verdict"]

MIN_RETRAIN_ROWS = 50  # labelled rows a retrain needs by default: fewer leave a test split too small to judge
DEFAULT_MAX_FORGETTING = 0.05  # the parent's test metric may drop by at most 5 points (accuracy or R²)
DEFAULT_REPLAY_ROWS = 1000  # rows of the parent's training data replayed (all of them when it has fewer)
SOURCE_PREFIX = "capture:"


class RetrainError(CaptureDataError):
    """Captured field data cannot make the retrain asked for; ``code`` says why (``no_captures``,
    ``too_few_rows``, ``other_model``, ``unknown_source``, ``feature_layout``)."""

    code = "retrain"


@dataclass
class RetrainResult:
    """What a retrain from captured data made and measured (``to_dict`` for ``--json`` and the GUI).

    ``gain`` is the child's metric minus the parent's on the captured rows' test split (``new_rows_test``
    rows); ``forgetting`` the parent's metric on its own test split before minus after (positive = worse),
    judged against ``max_forgetting``. ``ready`` = ``beats_parent and within_bound``.
    """

    model: str
    parent: str
    child: str
    run_id: str
    dataset_id: str
    dataset_sha256: str
    agents: list[str]
    batches: list[str]
    rows: int  # rows trained on (labelled; with pseudo-labels when asked)
    labelled_rows: int
    pseudo_labelled_rows: int
    unlabelled_rows_skipped: int
    metric: str
    parent_on_new: float
    child_on_new: float
    gain: float
    parent_test_before: float
    parent_test_after: float
    forgetting: float
    max_forgetting: float
    beats_parent: bool
    within_bound: bool
    ready: bool
    replay_rows: int
    ewc_lambda: float
    new_rows_train: int
    new_rows_test: int
    drifted_agents: list[str] = field(default_factory=list)
    canary: str | None = None
    warnings: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def lineage(self) -> dict[str, Any]:
        """capture batches -> dataset -> run -> child (continued from the parent)."""
        return {"batches": list(self.batches), "dataset": self.dataset_id, "run": self.run_id,
                "parent": self.parent, "child": self.child}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lineage": self.lineage}


# --- pure pieces -------------------------------------------------------------------------------------
def resolve_source(source: str, agents: Iterable[Mapping[str, Any]], captured_agents: Iterable[str]) -> list[str]:
    """The agent ids ``source`` names: an agent id (one the hub lists, or one that captured rows), or a
    tag selector in rollout target syntax (``site=plant-a``, ``gpu``, ``hw!=pi4``, ``id:a,id:b``)
    matched against the agents' tags. Raises :class:`RetrainError` (``unknown_source``) naming the known
    agents when nothing matches."""
    text = str(source).strip()
    records = [AgentRecord(id=a["agent_id"], tags=dict(a.get("tags") or {})) for a in agents]
    known = {r.id for r in records} | set(captured_agents)
    if text in known:
        return [text]
    try:
        matched = parse_target(text).resolve(records)
    except SelectorSyntaxError as exc:
        raise RetrainError(f"{text!r} is neither an agent nor a tag selector: {exc}", code="unknown_source") from exc
    if not matched:
        tags = sorted({f"{k}={v}" for r in records for k, v in r.tags.items()})
        raise RetrainError(
            f"no agent is {text!r} or matches it as a tag selector; known agents: "
            f"{', '.join(sorted(known)) or 'none'}" + (f"; tags: {', '.join(tags)}" if tags else ""),
            code="unknown_source")
    return matched


def select_batches(captures: Sequence[Mapping[str, Any]], model: str, agent_ids: Sequence[str], *,
                   source: str = "", since: float | None = None) -> list[dict]:
    """The batches of ``model`` captured by ``agent_ids`` (newest first; only those whose requests
    ended at or after ``since``). Raises :class:`RetrainError`: ``no_captures`` when the agents
    captured nothing (to turn capture on), ``other_model`` when they captured other models only."""
    who = source or ",".join(agent_ids)
    mine = [dict(c) for c in captures if c["agent_id"] in set(agent_ids)]
    if since is not None:
        mine = [c for c in mine if (c.get("last_at") or c.get("received_at") or 0.0) >= since]
    if not mine:
        agents = " ".join(f"--agent {a}" for a in agent_ids)
        raise RetrainError(
            f"no captured batches from {who}" + (" since the time given" if since is not None else "")
            + f"; turn capture on (edgeloop capture on {agents} --broker URL), send labels for served requests "
            f"(feedback), then cut a batch (edgeloop capture upload {agents} --broker URL)", code="no_captures")
    ours = [c for c in mine if c["model"] == model]
    if not ours:
        others = sorted({f"{c['model']}:{c['version']}" for c in mine})
        raise RetrainError(
            f"{who} captured rows of {', '.join(others)}, not of model {model}; retrain that model "
            f"(edgeloop retrain {others[0].rsplit(':', 1)[0]} --from-capture {who}) or capture rows "
            f"while {model} serves", code="other_model")
    return sorted(ours, key=lambda c: (c.get("received_at") or 0.0, c["batch_id"]), reverse=True)


def capture_source(batch_ids: Sequence[str]) -> str:
    """A dataset's ``source`` that names the capture batches it was built from (read by the lineage)."""
    return SOURCE_PREFIX + ",".join(batch_ids)


def batches_of_source(source: str | None) -> list[str]:
    """The batch ids a dataset ``source`` written by :func:`capture_source` names (else none)."""
    text = str(source or "")
    if not text.startswith(SOURCE_PREFIX):
        return []
    return [part.rsplit("/", 1)[-1] for part in text[len(SOURCE_PREFIX):].split(",") if part]


def verdict(continual: Mapping[str, Any], max_forgetting: float, *, min_gain: float = 0.0) -> dict[str, Any]:
    """Gain on the new data and forgetting on the parent's test split from a fine-tuned run's
    ``continual`` metrics: ``{"gain", "forgetting", "beats_parent", "within_bound", "ready"}``."""
    gain = float(continual["new_test_after"]) - float(continual["new_test_before"])
    forgetting = float(continual["parent_test_before"]) - float(continual["parent_test_after"])
    beats = gain > min_gain
    within = forgetting <= max_forgetting + 1e-12
    return {"gain": gain, "forgetting": forgetting, "beats_parent": beats, "within_bound": within,
            "ready": beats and within}


def pseudo_labelled(data: bytes) -> tuple[bytes, int]:
    """A batch CSV whose rows without a label take the model's served prediction as their label, and
    how many rows did."""
    reader = csv.reader(io.StringIO(data.decode("utf-8")))
    header = next(reader, [])
    if LABEL_COLUMN not in header or PREDICTION_COLUMN not in header:
        return data, 0
    li, pi = header.index(LABEL_COLUMN), header.index(PREDICTION_COLUMN)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    n = 0
    for cells in reader:
        if len(cells) == len(header) and cells[li] == "" and cells[pi] != "":
            cells[li] = cells[pi]
            n += 1
        writer.writerow(cells)
    return out.getvalue().encode("utf-8"), n


# --- the hub method ------------------------------------------------------------------------------------
class HubRetrain(HubCaptures):
    def retrain_from_capture(
        self, model: str, source: str, *, labelled_only: bool = True, parent: str | None = None,
        replay_size: int | None = DEFAULT_REPLAY_ROWS, ewc_lambda: float | None = None,
        max_forgetting: float = DEFAULT_MAX_FORGETTING, min_gain: float = 0.0, min_rows: int = MIN_RETRAIN_ROWS,
        params: Any = None, since: float | None = None, quantize: bool | str = True,
        progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
    ) -> RetrainResult:
        """Fine-tune ``model`` on the rows its agents captured and labelled, and judge the child.

        ``model`` is a model name (the parent is then the version the newest batch was served by, or
        the model's newest version when that one is gone) or a version ref (``pump:3``, ``pump@production``)
        that is the parent; ``parent`` names it explicitly. ``source`` is an agent id or a tag selector
        (``site=plant-a``; rollout target syntax). ``labelled_only=False`` also trains on rows without
        ground truth, labelled with the prediction the model served (pseudo-labels: they teach the child
        the parent's mistakes, so the result warns). ``replay_size`` rows of the parent's training data
        are replayed and ``ewc_lambda`` (None/0: off) anchors the weights; ``params`` are training
        parameters (:meth:`train_params`). ``since``: only batches whose requests ended at or after this
        Unix time. ``progress`` gets ``retrain`` stage events and the training's epochs; ``cancel`` stops
        training at the next epoch (:class:`~edgeloop.hub.errors.CancelledError`, no child registered).

        Refused before anything is trained, with :class:`RetrainError` saying what to do: no captured
        batches (``no_captures``), batches of another model only (``other_model``), fewer than
        ``min_rows`` labelled rows (``too_few_rows``), a source that names no agent (``unknown_source``),
        batches whose inputs are not the parent's (``feature_layout``).

        The child is registered whatever the verdict; ``result.ready`` says whether it beats the parent
        on the new data (gain > ``min_gain``) with forgetting <= ``max_forgetting`` on the parent's test
        split, and ``result.next_steps`` the rollout to start (a canary on the agent that drifted).
        """
        t0 = time.perf_counter()
        step = _stepper(progress)
        step(0, "selecting captured batches")
        model_name, _, _ = str(model).partition("@")
        model_name = model_name.rsplit(":", 1)[0] if ":" in model_name else model_name
        captures = self.list_captures()
        agent_ids = resolve_source(source, self.list_agents(include_foreign=True), {c["agent_id"] for c in captures})
        records = select_batches(captures, model_name, agent_ids, source=source, since=since)
        parent_ref = parent or (model if (":" in model or "@" in model) else None)
        pv = self._retrain_parent(model_name, parent_ref, records)
        features = self._parent_features(pv)
        fitting = [r for r in records if list(r["manifest"]["feature_names"]) == features]
        if not fitting:
            raise RetrainError(f"the batches of {source} were captured with inputs "
                               f"{records[0]['manifest']['feature_names'][:4]}..., which are not the inputs of "
                               f"{pv['id']} ({features[:4]}...); give --parent a version with those inputs",
                               code="feature_layout")

        step(1, f"building the dataset from {len(fitting)} batch(es)")
        dataset, counts, used = self._capture_rows(fitting, labelled_only)
        if dataset is None or counts["rows"] < min_rows:
            raise RetrainError(_too_few(counts, min_rows, len(fitting), source, labelled_only), code="too_few_rows")
        record = self.register_dataset(dataset, f"retrain-{model_name}-{_slug(source)}")

        step(2, f"fine-tuning {pv['id']} on {counts['rows']} rows")
        build = self.train(record["id"], model_name, params, progress=progress, cancel=cancel, quantize=quantize,
                           parent=pv["id"], fine_tune=True, replay_size=replay_size,
                           ewc_lambda=ewc_lambda if ewc_lambda else None)
        cont = build.continual or build.metrics.get("continual") or {}
        v = verdict(cont, max_forgetting, min_gain=min_gain)

        step(3, "judging the child")
        drifted = self._drifted(model_name, agent_ids)
        canary = drifted[0] if drifted else (agent_ids[0] if len(agent_ids) == 1 else None)
        warnings = list(build.metrics.get("warnings") or [])
        if counts["pseudo"]:
            warnings.append(f"{counts['pseudo']} rows carry the served model's own prediction as their label "
                            "(labelled_only off): they teach the child the parent's mistakes on drifted inputs")
        result = RetrainResult(
            model=model_name, parent=pv["id"], child=build.id, run_id=build.run["id"], dataset_id=record["id"],
            dataset_sha256=record["sha256"], agents=sorted({r["agent_id"] for r in used}),
            batches=[r["batch_id"] for r in used], rows=counts["rows"], labelled_rows=counts["labelled"],
            pseudo_labelled_rows=counts["pseudo"], unlabelled_rows_skipped=counts["skipped"],
            metric=str(cont.get("metric", "accuracy")), parent_on_new=float(cont["new_test_before"]),
            child_on_new=float(cont["new_test_after"]), gain=v["gain"],
            parent_test_before=float(cont["parent_test_before"]), parent_test_after=float(cont["parent_test_after"]),
            forgetting=v["forgetting"], max_forgetting=float(max_forgetting), beats_parent=v["beats_parent"],
            within_bound=v["within_bound"], ready=v["ready"], replay_rows=int(cont.get("replay_rows", 0)),
            ewc_lambda=float(cont.get("ewc_lambda", 0.0)), new_rows_train=int(build.metrics.get("n_train", 0)),
            new_rows_test=int(build.metrics.get("n_test") or build.metrics.get("n_val") or 0),
            drifted_agents=drifted, canary=canary, warnings=warnings,
            seconds=round(time.perf_counter() - t0, 3))
        result.next_steps = _next_steps(result)
        self.audit("model.retrain", build.id, parent=pv["id"], dataset_id=record["id"], run_id=build.run["id"],
                   batches=result.batches, agents=result.agents, source=str(source), rows=result.rows,
                   gain=result.gain, forgetting=result.forgetting, max_forgetting=result.max_forgetting,
                   ready=result.ready)
        step(4, f"{build.id} registered" + ("" if result.ready else " (not ready for rollout)"))
        return result

    # --- helpers -------------------------------------------------------------------------------------
    def _retrain_parent(self, model_name: str, parent_ref: str | None, records: list[dict]) -> dict:
        if parent_ref is not None:
            pv = self.registry.get_version(parent_ref)
            if pv["model_name"] != model_name:
                raise RetrainError(f"{pv['id']} is a version of {pv['model_name']}, not of {model_name}; the "
                                   f"captured batches are of {model_name}", code="other_model")
            return pv
        for r in records:  # newest first: the version that served the newest batch
            try:
                return self.registry.get_version(f"{model_name}:{r['version']}")
            except NotFoundError:  # a version gone from this hub (or another hub's): the next batch's
                continue
        return self.registry.get_version(model_name)

    def _parent_features(self, pv: dict) -> list[str]:
        run = self.registry.get_run(pv["run_id"])
        features = self.registry.get_dataset(run["dataset_id"])["features"]
        if isinstance(features, str):
            import json

            features = json.loads(features)
        return list(features)

    def _capture_rows(self, records: list[dict], labelled_only: bool) -> tuple[Dataset | None, dict, list[dict]]:
        """One dataset of the batches' rows (labelled; with pseudo-labels unless ``labelled_only``), the
        row counts, and the batches that gave rows (oldest first)."""
        parts: list[Dataset] = []
        used: list[dict] = []
        counts = {"rows": 0, "labelled": 0, "pseudo": 0, "skipped": 0, "unreadable": 0}
        for r in reversed(records):  # oldest first: the dataset reads in time order
            m = CaptureManifest.from_dict(r["manifest"])
            try:
                data = (self.home.root / r["path"]).read_bytes()
            except OSError:
                counts["unreadable"] += 1
                continue
            pseudo = 0
            if not labelled_only:
                data, pseudo = pseudo_labelled(data)
            ds, _ = labelled_dataset(m, data)
            if ds is None:  # fewer than MIN_ROWS_FLOOR labelled rows: the batch gives none
                counts["skipped"] += m.rows
                continue
            parts.append(ds)
            used.append(r)
            counts["labelled"] += ds.n_rows - pseudo
            counts["pseudo"] += pseudo
            counts["skipped"] += m.rows - ds.n_rows
        counts["rows"] = sum(p.n_rows for p in parts)
        if not parts:
            return None, counts, used
        first = parts[0]
        dataset = Dataset(first.feature_names, np.concatenate([p.X for p in parts]),
                          np.concatenate([p.y for p in parts]), first.labels, label_column=LABEL_COLUMN,
                          task=first.task, source=capture_source([r["batch_id"] for r in used]),
                          window_shape=first.window_shape, min_rows=MIN_ROWS_FLOOR)
        return dataset, counts, list(reversed(used))

    def _drifted(self, model_name: str, agent_ids: Sequence[str]) -> list[str]:
        """The agents among ``agent_ids`` whose last drift report on ``model_name`` raised the alarm."""
        out = []
        for aid in agent_ids:
            rows = self.registry.list_drift_reports(aid, model=model_name, limit=50)
            if rows and agent_drift(list(reversed(rows)))["alarm"]:  # the reports come newest first
                out.append(aid)
        return sorted(out)


def _stepper(progress: ProgressCallback | None):
    def step(done: int, message: str) -> None:
        if progress is not None:
            progress(ProgressEvent("retrain", done, 4, message))
    return step


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text))[:40]


def _too_few(counts: Mapping[str, int], min_rows: int, batches: int, source: str, labelled_only: bool) -> str:
    have = counts["rows"]
    what = "labelled rows" if labelled_only else "rows"
    hint = (f"send labels for {min_rows - have} more served requests (feedback by request id: "
            f"<root>/agents/<id>/feedback or POST /v2/models/<name>/feedback), cut a batch with "
            f"`edgeloop capture upload --agent ...`, and retrain again")
    unreadable = f"; {counts['unreadable']} batch file(s) are missing from the hub" if counts.get("unreadable") else ""
    return (f"the {batches} captured batch(es) from {source} hold {have} {what} "
            f"({counts['skipped']} rows not used: without a label, or in a batch with fewer than "
            f"{MIN_ROWS_FLOOR} labelled rows{unreadable}); a retrain needs at least {min_rows}: "
            + hint)


def _next_steps(r: RetrainResult) -> list[str]:
    if not r.ready:
        why = []
        if not r.beats_parent:
            why.append(f"it does not beat {r.parent} on the new data (gain {r.gain:+.3f})")
        if not r.within_bound:
            why.append(f"it forgot {r.forgetting:.3f} of the parent's test {r.metric}, above the bound "
                       f"{r.max_forgetting:.3f}")
        return [f"do not roll {r.child} out: " + " and ".join(why) + "; capture and label more rows, or raise "
                "the replay (--replay) or EWC (--ewc), and retrain"]
    target = f"id:{r.canary}" if r.canary else ",".join(f"id:{a}" for a in r.agents)
    return [f"edgeloop rollout start {r.child} --target {target} --canary 1 --no-drift --watch",
            f"edgeloop registry lineage {r.child}"]
