"""The hub's intake of captured field data: chunks reassembled, checked, kept as a dataset version.

An agent with capture on (:mod:`edgeloop.agent.capture`) publishes a batch as a signed manifest
(:class:`edgeloop.agent.wire.capture.CaptureManifest`) and the CSV in chunks. The fleet worker hands
every message on ``{root}/agents/{id}/capture/{batch}/{seq}`` to :meth:`CaptureIntake.take`:

* the manifest counts only when the key pinned for the agent of its **topic** signed it and it names
  that agent (:class:`~edgeloop.hub.fleet.trust.ReportTrust`, as every report); one of an agent with
  no pinned key yet is held by the fleet core like its other reports;
* a chunk is kept only when its sha256 is the one the manifest gives for its index -- a chunk that
  differs (altered in transit, or published by someone else) is refused and logged, and the batch
  waits for the genuine one; chunks that arrive before their manifest wait for it (bounded);
* a complete batch is checked once more (size and sha256 of the whole file), then kept: the CSV under
  ``<home>/captures/<batch>.csv``, its **labelled rows** registered as a dataset version named
  ``capture-<agent>-<model>`` (features in the model's order, the ground truth in the ``label``
  column; rows without a label are counted in the record, not put in the dataset; fewer than
  :data:`~edgeloop.hub.datasets.MIN_ROWS_FLOOR` labelled rows register no dataset), and a
  ``captures`` row with the lineage: agent, model, version, bundle, time range, batch id.

Once the batch is in the registry (after the fleet's transaction commits), the hub acknowledges it
with a signed ``capture_ack`` command, and the agent deletes it from its spool; a batch the registry
already holds is acknowledged again and otherwise ignored (the agent sends a batch again until the
hub's acknowledgement reaches it).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeloop.agent.errors import EdgeloopError, MessageFormatError
from edgeloop.agent.fsutil import atomic_write_bytes
from edgeloop.agent.wire.capture import (
    LABEL_COLUMN,
    REQUEST_TIME_COLUMN,
    CaptureManifest,
    parse_capture_leaf,
    sha256_hex,
)
from edgeloop.agent.wire.fields import load_json
from edgeloop.hub.datasets import MIN_ROWS_FLOOR, Dataset, write_csv, write_schema_file
from edgeloop.hub.datasets.windows import parse_window_column, window_feature_names
from edgeloop.hub.fleet.trust import RefusedReportError, ReportTrust

log = logging.getLogger(__name__)

CAPTURES_DIR = "captures"
MAX_OPEN = 64  # batches being reassembled at once (the oldest is forgotten past this)
MAX_HELD_BYTES = 64 * 1024 * 1024  # chunks held (before their manifest or while incomplete)
MAX_MANIFEST_BYTES = 1024 * 1024

Store = Callable[[str, Callable[[], object]], None]  # the fleet core's batched registry write


@dataclass
class _Open:
    """A batch being reassembled: its manifest (once seen) and the chunks kept so far."""

    agent_id: str
    manifest: CaptureManifest | None = None
    chunks: dict[int, bytes] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @property
    def bytes(self) -> int:
        return sum(len(c) for c in self.chunks.values())


class CaptureIntake:
    """Reassembles captured batches (fleet worker thread only) and keeps the complete ones."""

    def __init__(self, registry, trust: Callable[[], ReportTrust], ack: Callable[[str, str], None],
                 home: Path | None = None) -> None:
        self.registry = registry
        self._trust = trust  # the fleet core's trust (replaced at start)
        self._ack = ack  # (agent id, batch id): acknowledge once the registry holds the batch
        self.home = Path(home) if home is not None else Path(registry.path).resolve().parent
        self._open: OrderedDict[tuple[str, str], _Open] = OrderedDict()
        self.refused = 0  # chunks and manifests refused (for tests and the log)
        self.kept = 0  # batches kept

    def take(self, agent_id: str, leaf: str, payload: bytes, store: Store) -> dict | None:
        """One message on a capture topic; the capture record once its batch is complete and kept.

        Raises :class:`RefusedReportError` (and :class:`UnpinnedReportError`) for a manifest the agent's
        pinned key did not sign, :class:`MessageFormatError` for a malformed one."""
        parsed = parse_capture_leaf(leaf)
        if parsed is None:
            raise MessageFormatError(f"capture topic leaf {leaf!r} is not capture/<batch id>/<manifest|seq>")
        batch_id, seq = parsed
        key = (agent_id, batch_id)
        if self.registry.has_capture(batch_id):
            if self._open.pop(key, None) is not None or seq is None:
                self._ack(agent_id, batch_id)  # sent again: the hub has it (its acknowledgement was lost)
            return None
        if seq is None:
            return self._manifest(key, payload, store)
        return self._chunk(key, seq, payload, store)

    def _slot(self, key: tuple[str, str]) -> _Open:
        slot = self._open.get(key)
        if slot is None:
            slot = self._open[key] = _Open(key[0])
            while len(self._open) > MAX_OPEN or sum(o.bytes for o in self._open.values()) > MAX_HELD_BYTES:
                (old_agent, old_batch), _ = self._open.popitem(last=False)
                log.warning("forgot the incomplete capture batch %s of agent %s: too many batches open", old_batch,
                            old_agent)
        return slot

    def _manifest(self, key: tuple[str, str], payload: bytes, store: Store) -> dict | None:
        agent_id, batch_id = key
        doc = load_json(payload, "capture manifest", MAX_MANIFEST_BYTES)
        self._trust().check_report(agent_id, doc, "capture manifest")
        m = CaptureManifest.from_dict(doc)
        if m.batch_id != batch_id:
            self.refused += 1
            raise RefusedReportError(f"refused a capture manifest on the topic of batch {batch_id}: it describes "
                                     f"batch {m.batch_id}")
        slot = self._slot(key)
        slot.manifest = m
        for seq in [s for s, c in slot.chunks.items() if not self._fits(m, s, c)]:
            del slot.chunks[seq]  # held before the manifest, and not what it signs
        return self._complete(key, store)

    def _fits(self, m: CaptureManifest, seq: int, data: bytes) -> bool:
        if seq < m.chunks and sha256_hex(data) == m.chunk_sha256[seq]:
            return True
        self.refused += 1
        log.warning("refused chunk %d of capture batch %s of agent %s: its sha256 is not the one its signed "
                    "manifest gives (altered in transit, or not sent by the agent); waiting for the genuine one",
                    seq, m.batch_id, m.agent_id)
        return False

    def _chunk(self, key: tuple[str, str], seq: int, payload: bytes, store: Store) -> dict | None:
        slot = self._slot(key)
        if slot.manifest is not None and not self._fits(slot.manifest, seq, payload):
            return None
        slot.chunks[seq] = bytes(payload)
        return self._complete(key, store)

    def _complete(self, key: tuple[str, str], store: Store) -> dict | None:
        slot = self._open.get(key)
        m = slot.manifest if slot is not None else None
        if slot is None or m is None or len(slot.chunks) < m.chunks:
            return None
        del self._open[key]
        data = b"".join(slot.chunks[i] for i in range(m.chunks))
        if len(data) != m.size or sha256_hex(data) != m.sha256:
            self.refused += 1
            log.warning("refused capture batch %s of agent %s: the file reassembled is %d bytes with another "
                        "sha256 than its signed manifest (%d bytes)", m.batch_id, m.agent_id, len(data), m.size)
            return None
        record = self._keep(m, data, store)
        self.kept += 1
        return record

    # --- keeping a checked batch ------------------------------------------------------------------
    def _keep(self, m: CaptureManifest, data: bytes, store: Store) -> dict:
        rel = f"{CAPTURES_DIR}/{m.batch_id}.csv"
        path = self.home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data, mode=0o600)  # by batch id: writing it again writes the same bytes
        dataset, note = labelled_dataset(m, data)
        record = {"batch_id": m.batch_id, "agent_id": m.agent_id, "model": m.model, "version": m.version,
                  "bundle_sha256": m.bundle_sha256, "task": m.task, "rows": m.rows, "labelled_rows": m.labelled_rows,
                  "seen_rows": m.seen_rows, "first_at": m.first_at, "last_at": m.last_at, "created_at": m.created_at,
                  "received_at": time.time(), "sha256": m.sha256, "size": m.size, "path": rel,
                  "dataset_id": None, "note": note, "manifest": m.to_dict()}

        def write() -> None:
            if dataset is not None:
                record["dataset_id"] = self._register(dataset, m)["id"]
            self.registry.add_capture(record, actor=f"agent:{m.agent_id}")
            self._ack(m.agent_id, m.batch_id)  # sent once the fleet's transaction is committed

        store(f"capture batch {m.batch_id} of {m.agent_id}", write)
        log.info("kept capture batch %s of agent %s: %d rows of %s %s (%d labelled)%s", m.batch_id, m.agent_id,
                 m.rows, m.model, m.version, m.labelled_rows, f"; {note}" if note else "")
        return record

    def _register(self, ds: Dataset, m: CaptureManifest) -> dict:
        """The dataset in the hub's datasets folder (schema first, then the CSV: as an import) and the registry."""
        folder = self.home / "datasets"
        stem = ds.sha256[:16]
        if not (folder / f"{stem}.csv").exists():
            assert ds.schema is not None
            write_schema_file(ds.schema, folder / f"{stem}.schema.json")
            write_csv(ds, folder / f"{stem}.csv")
        return self.registry.add_dataset(ds.sha256, capture_dataset_name(m.agent_id, m.model), ds.source, ds.n_rows,
                                         ds.feature_names, ds.labels if ds.task == "classification" else None,
                                         actor=f"agent:{m.agent_id}",
                                         warnings=[w.to_dict() for w in ds.warnings])


def capture_dataset_name(agent_id: str, model: str) -> str:
    return f"capture-{agent_id}-{model}"


def labelled_dataset(m: CaptureManifest, data: bytes) -> tuple[Dataset | None, str]:
    """The batch's labelled rows as a dataset (None and why, when it cannot be one)."""
    reader = csv.reader(io.StringIO(data.decode("utf-8")))
    header = next(reader, [])
    n = len(m.feature_names)
    if header[:n] != m.feature_names or LABEL_COLUMN not in header:
        return None, "the CSV header does not match the manifest's feature names"
    li = header.index(LABEL_COLUMN)
    ti = header.index(REQUEST_TIME_COLUMN) if REQUEST_TIME_COLUMN in header else None
    xs, ys, order = [], [], []
    for cells in reader:
        if len(cells) != len(header) or cells[li] == "":
            continue
        xs.append([float(v) for v in cells[:n]])
        ys.append(cells[li])
        order.append(float(cells[ti]) if ti is not None else 0.0)
    if len(xs) < MIN_ROWS_FLOOR:
        return None, (f"{len(xs)} of {m.rows} rows carry a label: fewer than {MIN_ROWS_FLOOR}, no dataset registered "
                      "(send feedback for more requests before the batch is cut)")
    if m.task == "classification":
        try:
            y = np.array([m.labels.index(v) for v in ys], dtype=np.int64)
        except ValueError as exc:
            return None, f"a label is not a class of the model: {exc}"
        labels = list(m.labels)
    else:
        y, labels = np.array([float(v) for v in ys], dtype=np.float32), []
    try:
        ds = Dataset(list(m.feature_names), np.array(xs, dtype=np.float32), y, labels, label_column=LABEL_COLUMN,
                     task=m.task, source=f"capture:{m.agent_id}/{m.batch_id}",
                     window_shape=_window_shape(m.feature_names), min_rows=MIN_ROWS_FLOOR)
    except EdgeloopError as exc:
        return None, f"the labelled rows are not a valid dataset: {exc}"
    unlabelled = m.rows - len(xs)
    return ds, (f"{unlabelled} unlabelled rows kept in the batch's CSV only" if unlabelled else "")


def _window_shape(names: list[str]) -> tuple[int, int] | None:
    cells = [parse_window_column(n) for n in names]
    if not cells or any(c is None for c in cells):
        return None
    channels = max(c[0] for c in cells if c) + 1
    steps = max(c[1] for c in cells if c) + 1
    return (channels, steps) if window_feature_names(channels, steps) == list(names) else None


__all__ = ["CAPTURES_DIR", "CaptureIntake", "capture_dataset_name", "labelled_dataset"]
