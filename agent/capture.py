"""Opt-in capture of field data: a uniform sample of served rows, labels that arrive later, uploads.

**Off by default.** Turned on by ``[capture] enabled = true`` in the agent config, or by a
signed ``capture`` command (``{"enable": true, "max_rows": ..., ...}``: a rollout turns it on);
``{"enable": false}`` turns it off and forgets what was not yet cut into a batch. A command's settings
are kept in ``<state_dir>/capture/settings.json`` and win over ``[capture]`` (also after a restart)
until the next command.

What is kept, per model version (a new version starts a new sample; the old one's rows are cut
into a batch first): every row served while capture is on is offered to a **reservoir**
(Algorithm R, seeded per model version) that keeps a uniform sample of at most ``max_rows``
rows and ``max_bytes`` bytes (the CSV size of the rows) -- with the model's output, the request
id and the request time. Once ``upload_rows`` rows were served (or on a signed ``capture_upload``
command) the sample is **cut** into a batch: a CSV file -- the model's feature names, then
``prediction``, ``label``, ``request_id``, ``request_time`` -- and a capture manifest
(:class:`edgeloop.agent.wire.capture.CaptureManifest`) signed with the agent's report key.
With ``max_rows >= upload_rows`` (the defaults: 1000 and 200) every row is kept; with
``upload_rows = 5000, max_rows = 1000`` a uniform fifth of the rows is.

**Labels** (ground truth) arrive later by request id, on MQTT ``{root}/agents/{id}/feedback``
(``{"id": "...", "label": ...}``) or HTTP ``POST /v2/models/{name}/feedback``; a label is put on
the rows of that request still in the sample. A label for a request that was not sampled, or
whose rows were already cut into a batch, is counted as unmatched and dropped.

**Upload**: batches are written to a bounded spool on disk (``<state_dir>/capture/``, at most
``spool_max_bytes``; the oldest batch is dropped, and counted, when a new one does not fit), then
published -- the signed manifest, then the CSV in chunks of ``chunk_bytes`` -- at QoS 1 on
``{root}/agents/{id}/capture/{batch_id}/manifest`` and ``.../{seq}``. A batch leaves the disk only
when **the hub** acknowledges it: a signed ``capture_ack`` command (``{"batch_id": ...}``) that the
hub sends once the batch is checked and in its registry (and again for a batch it already has).
The broker's QoS 1 acknowledgement is not enough: a broker with no subscriber, or one restarted
without persistence, drops what it acknowledged. Until the hub's acknowledgement, a batch is sent
again, whole, after every connect (and restart) and every ``resend_seconds``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.agent.errors import ConfigError, EdgeloopError, InputValueError
from edgeloop.agent.fsutil import TEMP_PREFIX, atomic_write_bytes
from edgeloop.agent.mqtt_link import wait_acked
from edgeloop.agent.wire.capture import (
    EXTRA_COLUMNS,
    MANIFEST_LEAF,
    MAX_CAPTURE_CHUNK,
    PREDICTION_COLUMN,
    CaptureManifest,
    Feedback,
    capture_leaf,
    sha256_hex,
    split_chunks,
)
from edgeloop.agent.wire.tensors import REGRESSION_OUTPUT

log = logging.getLogger(__name__)

SPOOL_DIR = "capture"
SETTINGS_FILE = "settings.json"  # the last capture command's settings
ACK_TIMEOUT_S = 30.0


class CaptureError(EdgeloopError):
    """Capture cannot do what was asked (bad settings, a label that does not fit the model)."""

    code = "capture"


@dataclass(frozen=True)
class CaptureSettings:
    """``[capture]`` of the agent config (and the arguments of a signed ``capture`` command)."""

    enabled: bool = False
    max_rows: int = 1000  # rows one sample keeps at most
    max_bytes: int = 1_000_000  # CSV bytes one sample keeps at most
    upload_rows: int = 200  # rows served per batch: the sample is cut after this many
    chunk_bytes: int = 64 * 1024  # upload chunk size
    spool_max_bytes: int = 8 * 1024 * 1024  # batches kept on disk until the broker has them
    seed: int = 0  # the reservoir's seed (mixed with the model version's name)
    resend_seconds: int = 60  # a batch the hub has not acknowledged is sent again this often

    KEYS = ("enabled", "max_rows", "max_bytes", "upload_rows", "chunk_bytes", "spool_max_bytes", "seed",
            "resend_seconds")

    def check(self, where: str = "[capture]") -> CaptureSettings:
        for key, low, high in (("max_rows", 1, 10_000_000), ("max_bytes", 1024, 1 << 32),
                               ("upload_rows", 1, 100_000_000), ("chunk_bytes", 1024, MAX_CAPTURE_CHUNK),
                               ("spool_max_bytes", 1024, 1 << 40), ("seed", 0, 1 << 62),
                               ("resend_seconds", 1, 7 * 24 * 3600)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{where} {key} must be a whole number within {low}..{high}, got {value!r}")
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"{where} enabled must be true or false, got {self.enabled!r}")
        return self

    @classmethod
    def from_table(cls, table: Any, where: str = "config [capture]") -> CaptureSettings:
        """The ``[capture]`` table (or a ``capture`` command's args; ``enable`` is read as ``enabled``)."""
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where} must be a table")
        doc = dict(table)
        if "enable" in doc:
            doc["enabled"] = doc.pop("enable")
        unknown = set(doc) - set(cls.KEYS)
        if unknown:
            raise ConfigError(f"{where} has unknown keys: {', '.join(sorted(unknown))} (known: {', '.join(cls.KEYS)})")
        return cls(**doc).check(where)

    def merged(self, args: Mapping[str, Any]) -> CaptureSettings:
        """These settings with a command's arguments over them."""
        base = {k: getattr(self, k) for k in self.KEYS}
        return CaptureSettings.from_table({**base, **args}, "capture command")

    def to_table(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.KEYS}


@dataclass
class CapturedRow:
    values: list[float]
    prediction: str | float
    request_id: str
    row: int  # index within its request
    at: float
    size: int  # CSV bytes (without the label)
    label: str | float | None = None


class Reservoir:
    """Algorithm R over a stream of rows: a uniform sample of at most ``capacity`` rows and
    ``max_bytes`` bytes. When the byte cap is reached while filling, the sample stops growing and
    replaces rows from then on (a replacement that would break the byte cap is skipped)."""

    def __init__(self, capacity: int, max_bytes: int, seed: int) -> None:
        self.capacity, self.max_bytes = capacity, max_bytes
        self.rng = random.Random(seed)
        self.items: list[CapturedRow] = []
        self.bytes = 0
        self.seen = 0
        self._full = False

    def offer(self, item: CapturedRow) -> CapturedRow | None:
        """Offer one row; the row it pushed out (or ``item`` itself when it was not kept), else None."""
        self.seen += 1
        if not self._full and len(self.items) < self.capacity:
            if self.bytes + item.size <= self.max_bytes:
                self.items.append(item)
                self.bytes += item.size
                return None
            self._full = True
        j = self.rng.randrange(self.seen)
        if j >= len(self.items):
            return item
        old = self.items[j]
        if self.bytes - old.size + item.size > self.max_bytes:
            return item
        self.items[j] = item
        self.bytes += item.size - old.size
        return old


def version_seed(seed: int, model: str, version: str) -> int:
    """A reservoir seed per model version (same settings, same version: the same sample)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{model}\0{version}".encode()).digest()[:8], "big")


@dataclass
class _Sample:
    model: str
    version: str
    bundle_sha256: str
    task: str
    feature_names: list[str]
    labels: list[str]
    reservoir: Reservoir
    by_request: dict[str, list[CapturedRow]] = field(default_factory=dict)


@dataclass(frozen=True)
class Batch:
    """A cut sample, written: the CSV and its signed manifest."""

    manifest: CaptureManifest
    csv: bytes


def _fmt(v: float | str) -> str:
    return repr(float(v))


class CaptureSpool:
    """Batches on disk until the broker has them: ``<batch>.csv`` then ``<batch>.manifest`` (signed JSON;
    its presence marks the batch complete). Bounded by ``max_bytes``: the oldest go first."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.dropped = 0
        self._lock = threading.Lock()

    def _batches(self) -> list[tuple[float, str, int]]:
        """(mtime, batch id, bytes) of complete batches, oldest first; leftovers of crashes removed."""
        out: list[tuple[float, str, int]] = []
        if not self.folder.is_dir():
            return out
        for p in self.folder.iterdir():
            if p.name.startswith(TEMP_PREFIX):
                if SETTINGS_FILE not in p.name:  # the settings' own, being written by another thread: not ours
                    p.unlink(missing_ok=True)
            elif p.suffix == ".manifest":
                data = p.with_suffix(".csv")
                try:
                    out.append((p.stat().st_mtime, p.stem, p.stat().st_size + data.stat().st_size))
                except OSError:  # a manifest without its data: unusable
                    p.unlink(missing_ok=True)
            elif p.suffix == ".csv" and not p.with_suffix(".manifest").exists():
                try:
                    if time.time() - p.stat().st_mtime > 60:  # interrupted before its manifest was written
                        p.unlink(missing_ok=True)
                except OSError:
                    pass
        return sorted(out)

    def put(self, batch_id: str, data: bytes, manifest: bytes) -> bool:
        size = len(data) + len(manifest)
        with self._lock:
            if size > self.max_bytes:
                self.dropped += 1
                log.warning("capture batch %s (%d bytes) is larger than the whole spool (%d); dropped", batch_id,
                            size, self.max_bytes)
                return False
            held = self._batches()
            total = sum(b for _, _, b in held)
            while held and total + size > self.max_bytes:
                _, old, b = held.pop(0)
                self._remove(old)
                total -= b
                self.dropped += 1
                log.warning("capture spool full (%d bytes): dropped the oldest batch %s", self.max_bytes, old)
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.folder / f"{batch_id}.csv", data, mode=0o600)
            atomic_write_bytes(self.folder / f"{batch_id}.manifest", manifest, mode=0o600)
            return True

    def pending(self) -> list[str]:
        with self._lock:
            return [bid for _, bid, _ in self._batches()]

    def read(self, batch_id: str) -> tuple[bytes, bytes] | None:
        try:
            return (self.folder / f"{batch_id}.manifest").read_bytes(), (self.folder / f"{batch_id}.csv").read_bytes()
        except OSError:
            return None

    def remove(self, batch_id: str) -> None:
        with self._lock:
            self._remove(batch_id)

    def _remove(self, batch_id: str) -> None:
        for suffix in (".manifest", ".csv"):
            (self.folder / f"{batch_id}{suffix}").unlink(missing_ok=True)


Publish = Callable[[str, bytes], Any]  # (leaf under the agent's topic, payload) -> paho's MQTTMessageInfo


class Capture:
    """The agent's capture: sample (any serving thread), labels (any thread), cut, spool, upload (own thread)."""

    def __init__(self, settings: CaptureSettings, folder: Path, *, agent_id: str,
                 sign: Callable[[dict], bytes], publish: Publish, connected: Callable[[], bool],
                 clock: Callable[[], float] = time.time) -> None:
        self.agent_id = agent_id
        self._settings_file = Path(folder) / SETTINGS_FILE
        self.settings = self._saved_settings() or settings
        self._sign, self._publish, self._connected, self.clock = sign, publish, connected, clock
        self.spool = CaptureSpool(folder, self.settings.spool_max_bytes)
        self._lock = threading.Lock()
        self._sample: _Sample | None = None
        self._cut: list[_Sample] = []  # cut, not yet written
        self._sent: dict[str, float] = {}  # batch id -> when the broker acknowledged all of it (monotonic)
        self._resend_all = True  # after a connect: send every batch the hub has not acknowledged
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts = {"offered": 0, "labelled": 0, "unmatched_labels": 0, "batches": 0, "uploaded": 0,
                       "acknowledged": 0}
        # told of every classifier label put on sampled rows: (model, version, correct, labelled) -- the drift
        # window's realized accuracy (edgeloop.agent.performance_estimate)
        self.on_labels: Callable[[str, str, int, int], None] | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    # --- configuration ---------------------------------------------------------------------
    def configure(self, args: Mapping[str, Any]) -> CaptureSettings:
        """A signed ``capture`` command: new settings over the current ones (the sample restarts)."""
        new = self.settings.merged(args)
        self._settings_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._settings_file, json.dumps(new.to_table()).encode("utf-8"))
        with self._lock:
            self.settings = new
            self.spool.max_bytes = new.spool_max_bytes
            self._sample = None  # the caps or the seed changed: start a new sample (nothing cut is lost)
        log.info("capture %s (%s)", "on" if new.enabled else "off", new.to_table())
        return new

    def _saved_settings(self) -> CaptureSettings | None:
        """What the last signed ``capture`` command set (it wins over ``[capture]`` until the next one)."""
        try:
            return CaptureSettings.from_table(json.loads(self._settings_file.read_bytes()), "capture settings file")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EdgeloopError) as exc:
            log.warning("capture settings %s unreadable (%s): using [capture] of the config", self._settings_file, exc)
            return None

    # --- serving threads ---------------------------------------------------------------------
    def observe(self, runner: Any, x: np.ndarray, outputs: Mapping[str, list], request_id: str = "") -> None:
        """Offer the rows of one answered request. Never raises (capture is a side channel)."""
        if not self.settings.enabled:
            return
        try:
            self._observe(runner, x, outputs, request_id)
        except Exception:
            log.exception("capture failed on a request; it was answered anyway")

    def _observe(self, runner: Any, x: np.ndarray, outputs: Mapping[str, list], request_id: str) -> None:
        m = runner.manifest
        preds = outputs.get("label") if m.task == "classification" else outputs.get(REGRESSION_OUTPUT)
        at = self.clock()
        cut = False
        with self._lock:
            s = self._sample
            if s is None or (s.model, s.version, s.bundle_sha256) != (m.model_name, m.version, runner.bundle_sha256):
                if s is not None and s.reservoir.items:
                    self._cut.append(s)
                    cut = True
                cfg = self.settings
                s = self._sample = _Sample(m.model_name, m.version, runner.bundle_sha256, m.task,
                                           list(m.feature_names), list(m.labels),
                                           Reservoir(cfg.max_rows, cfg.max_bytes, version_seed(cfg.seed, m.model_name,
                                                                                               m.version)))
            for i in range(int(x.shape[0])):
                values = [float(v) for v in x[i]]
                pred = preds[i] if preds is not None and i < len(preds) else ""
                size = sum(len(_fmt(v)) + 1 for v in values) + len(str(pred)) + len(request_id) + 24
                item = CapturedRow(values, pred, request_id, i, at, size)
                out = s.reservoir.offer(item)
                self.counts["offered"] += 1
                if out is not item and request_id:
                    s.by_request.setdefault(request_id, []).append(item)
                if out is not None and out is not item and out.request_id:
                    rows = s.by_request.get(out.request_id, [])
                    if out in rows:
                        rows.remove(out)
                    if not rows:
                        s.by_request.pop(out.request_id, None)
            if s.reservoir.seen >= self.settings.upload_rows:
                self._cut.append(s)
                self._sample = None
                cut = True
        if cut:
            self._wake.set()

    def feedback(self, fb: Feedback, model: str | None = None) -> int:
        """Put a ground-truth label on the sampled rows of request ``fb.id``; the number of rows labelled
        (0: the request was not sampled, or already cut into a batch). Raises :class:`InputValueError` for
        a label that does not fit the model, :class:`CaptureError` when capture is off."""
        if not self.settings.enabled:
            raise CaptureError("capture is off on this agent: feedback is not kept; turn it on with [capture] "
                               "enabled = true or a capture command")
        with self._lock:
            s = self._sample
            if s is None or (model is not None and model != s.model):
                self.counts["unmatched_labels"] += 1
                return 0
            rows = s.by_request.get(fb.id, [])
            if rows:
                labels = [_label_for(fb, s, r.row) for r in rows]  # all checked before any is set
                for r, label in zip(rows, labels, strict=True):
                    r.label = label
                self.counts["labelled"] += len(rows)
                if self.on_labels is not None and s.task == "classification":
                    self.on_labels(s.model, s.version, sum(r.prediction == r.label for r in rows), len(rows))
            else:
                self.counts["unmatched_labels"] += 1
            return len(rows)

    def request_upload(self) -> int:
        """A signed ``capture_upload`` command: cut the sample now (rows in it); the upload follows."""
        with self._lock:
            s, self._sample = self._sample, None
            if s is None or not s.reservoir.items:
                n = 0
            else:
                self._cut.append(s)
                n = len(s.reservoir.items)
        self._wake.set()
        return n

    def wake(self) -> None:
        """The link is up again: send what waits, also batches sent before (the hub may have missed them)."""
        self._resend_all = True
        self._wake.set()

    def acknowledged(self, batch_id: str) -> bool:
        """A signed ``capture_ack``: the hub has the batch; it leaves the disk. False: not (or no longer) here."""
        held = batch_id in self.spool.pending()
        self.spool.remove(batch_id)
        self._sent.pop(batch_id, None)
        if held:
            self.counts["acknowledged"] += 1
            log.info("capture batch %s acknowledged by the hub; removed from the spool", batch_id)
        return held

    # --- the capture thread ----------------------------------------------------------------------
    def start(self) -> Capture:
        self._thread = threading.Thread(target=self._run, name="agent-capture", daemon=True)
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._write_cut()  # what was cut is on disk before the process ends

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self._write_cut()
                self._upload()
            except Exception:
                log.exception("capture upload failed; it is tried again")

    def _write_cut(self) -> None:
        with self._lock:
            cut, self._cut = self._cut, []
        for s in cut:
            batch = self._batch(s)
            if self.spool.put(batch.manifest.batch_id, batch.csv, self._sign(batch.manifest.to_dict())):
                self.counts["batches"] += 1
                log.info("capture batch %s: %d rows of %s %s (%d labelled), %d bytes", batch.manifest.batch_id,
                         batch.manifest.rows, s.model, s.version, batch.manifest.labelled_rows, len(batch.csv))

    def _batch(self, s: _Sample) -> Batch:
        items = sorted(s.reservoir.items, key=lambda r: (r.at, r.request_id, r.row))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        columns = [*s.feature_names, *EXTRA_COLUMNS]
        w.writerow(columns)
        for r in items:
            pred = _fmt(r.prediction) if s.task == "regression" and r.prediction != "" else r.prediction
            label = "" if r.label is None else (_fmt(r.label) if s.task == "regression" else r.label)
            w.writerow([*(_fmt(v) for v in r.values), pred, label, r.request_id, _fmt(r.at)])
        data = buf.getvalue().encode("utf-8")
        chunk = self.settings.chunk_bytes
        manifest = CaptureManifest(
            batch_id=uuid.uuid4().hex, agent_id=self.agent_id, model=s.model, version=s.version,
            bundle_sha256=s.bundle_sha256, task=s.task, feature_names=s.feature_names, labels=s.labels,
            rows=len(items), labelled_rows=sum(r.label is not None for r in items), seen_rows=s.reservoir.seen,
            first_at=min(r.at for r in items), last_at=max(r.at for r in items), created_at=self.clock(),
            sha256=sha256_hex(data), size=len(data), chunk_size=chunk,
            chunk_sha256=[sha256_hex(c) for c in split_chunks(data, chunk)], columns=columns)
        manifest.check()
        return Batch(manifest, data)

    def _upload(self) -> None:
        resend_all, self._resend_all = self._resend_all, False
        now = time.monotonic()
        for batch_id in self.spool.pending():
            if self._stop.is_set() or not self._connected():
                self._resend_all = self._resend_all or resend_all
                return
            sent = self._sent.get(batch_id)
            if sent is not None and not resend_all and now - sent < self.settings.resend_seconds:
                continue  # waiting for the hub's acknowledgement
            got = self.spool.read(batch_id)
            if got is None:
                continue
            manifest_bytes, data = got
            chunk_size = int(json.loads(manifest_bytes)["chunk_size"])
            receipts = [self._publish(capture_leaf(batch_id, MANIFEST_LEAF), manifest_bytes)]
            for seq, piece in enumerate(split_chunks(data, chunk_size)):
                receipts.append(self._publish(capture_leaf(batch_id, seq), piece))
            deadline = time.monotonic() + ACK_TIMEOUT_S
            for info in receipts:
                while not wait_acked(info, 0.5):
                    if time.monotonic() > deadline or self._stop.is_set() or not self._connected():
                        log.info("capture batch %s not acknowledged by the broker yet; sent again later", batch_id)
                        return
            self._sent[batch_id] = time.monotonic()
            self.counts["uploaded"] += 1
            log.info("capture batch %s uploaded (%d bytes in %d chunks); kept until the hub acknowledges it",
                     batch_id, len(data), len(receipts) - 1)


def _label_for(fb: Feedback, s: _Sample, row: int) -> str | float:
    """The label of row ``row`` of the request (``fb.label`` or its ``row``-th entry), checked."""
    value = fb.label
    if isinstance(value, list):
        if row >= len(value):
            raise InputValueError(f"feedback for {fb.id!r} gives {len(value)} labels; the request had more rows: "
                                  "give one label per row, or one for all")
        value = value[row]
    if s.task == "regression":
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise InputValueError(f"feedback for {fb.id!r}: the label of regression model {s.model} must be a "
                                  f"finite number, got {value!r}")
        return float(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(s.labels):
        return s.labels[value]
    if isinstance(value, str) and value in s.labels:
        return value
    raise InputValueError(f"feedback for {fb.id!r}: {value!r} is not a class of model {s.model} "
                          f"({', '.join(s.labels)}); give the class name or its index")


__all__ = ["Capture", "CaptureError", "CaptureSettings", "CaptureSpool", "CapturedRow", "PREDICTION_COLUMN",
           "Reservoir", "version_seed"]
