"""Open Inference Protocol (KServe v2) REST endpoints, served by :mod:`edgeloop.agent.http_server`.

Routes (``{v}`` segments are optional: ``/v2/models/{name}/versions/{v}/...``)::

    GET  /v2                          server metadata
    GET  /v2/health/live              200 while the process runs
    GET  /v2/health/ready             200 when the agent is healthy (a model is active and not failing,
                                      every worker thread runs), else 503 with the reasons
    GET  /v2/models/{name}            model metadata (404 if not served)
    GET  /v2/models/{name}/ready      200 ready, 404 another model is served, 503 none is
    POST /v2/models/{name}/infer      inference
    POST /v2/models/{name}/feedback   a ground-truth label for a request: {"id", "label"} (capture on)
    GET  /metrics                     Prometheus text format (edgeloop.agent.metrics; docs/metrics.md)

The infer body is the v2 tensor form ``{"id": "1", "inputs": [{"name": "features",
"shape": [n, F], "datatype": "FP32", "data": [...]}]}`` (``data`` flat or nested)
or the convenience form ``{"inputs": [[...], [...]]}`` (rows, one row, or feature
objects, as over MQTT). Every error is ``{"error": "<code>: <message>"}`` with a
4xx/5xx status; no stack trace ever reaches a client, and the server keeps
serving after any bad request. Requests are logged at DEBUG only.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from edgeloop.agent import __version__
from edgeloop.agent.errors import (
    EdgeloopError,
    InputShapeError,
    InputValueError,
    MessageFormatError,
    ModelNotFoundError,
    ModelNotReadyError,
    PayloadTooLargeError,
)
from edgeloop.agent.http_server import JsonHttpServer, error_body
from edgeloop.agent.metrics import CONTENT_TYPE, AgentMetrics, AgentProbes
from edgeloop.agent.runtime import CLASSIFICATION_OUTPUT, REGRESSION_OUTPUT
from edgeloop.agent.serving import InferOutcome, Serving
from edgeloop.agent.wire.manifest import Manifest
from edgeloop.agent.wire.messages import load_json

log = logging.getLogger(__name__)

SERVER_NAME = "edgeloop-agent"
DEFAULT_MAX_BODY = 4 * 1024 * 1024
NUMERIC_DATATYPES = ("FP32", "FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
_TENSOR_KEYS = frozenset({"name", "shape", "datatype", "data", "parameters"})
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False, check_circular=False).encode  # trees we built


class HttpError(EdgeloopError):
    """An HTTP-level refusal (unknown route, wrong method, missing length) with its status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.headers = headers or {}


def status_for(exc: EdgeloopError) -> int:
    """HTTP status of an edgeloop error."""
    if isinstance(exc, HttpError):
        return exc.status
    if isinstance(exc, PayloadTooLargeError):
        return 413
    if isinstance(exc, (MessageFormatError, InputShapeError, InputValueError)):
        return 400
    if isinstance(exc, ModelNotFoundError):
        return 404
    if isinstance(exc, ModelNotReadyError):
        return 503
    return 500


# --- request body -> rows ----------------------------------------------------------------
@dataclass(frozen=True)
class InferCall:
    """A parsed v2 infer body: the request id, rows for coerce_inputs, and the outputs asked for."""

    id: str
    inputs: Any
    outputs: list[str] | None


_ID_PREFIX = os.urandom(6).hex()
_ID_NUMBERS = itertools.count(1)


def _request_id() -> str:
    """An id for a request that came without one: a random prefix per process and a counter (no system call)."""
    return f"{_ID_PREFIX}-{next(_ID_NUMBERS)}"


def _is_tensor(obj: Any) -> bool:
    return isinstance(obj, dict) and "data" in obj and bool(obj.keys() & {"name", "shape", "datatype"}) \
        and obj.keys() <= _TENSOR_KEYS


def parse_infer_body(body: dict, manifest: Manifest, max_rows: int) -> InferCall:
    """Validate a v2 (or convenience) infer body against ``manifest``; return rows to coerce."""
    rid = body.get("id", "")
    if isinstance(rid, float) and not math.isfinite(rid):
        raise MessageFormatError("field 'id' must be a string")
    if isinstance(rid, (int, float)) and not isinstance(rid, bool):
        rid = str(rid) if not isinstance(rid, int) or abs(rid) < 10**64 else ""
        if not rid:
            raise MessageFormatError("field 'id' must be a string (or a number of at most 64 digits)")
    if not isinstance(rid, str):
        raise MessageFormatError("field 'id' must be a string")
    if "inputs" not in body:
        raise MessageFormatError(
            "missing field 'inputs': send {\"inputs\": [{\"name\": \"features\", \"shape\": [n, F], "
            "\"datatype\": \"FP32\", \"data\": [...]}]} or {\"inputs\": [[...], ...]}")
    inputs = body["inputs"]
    wanted = _requested_outputs(body.get("outputs"))
    if isinstance(inputs, list) and inputs and all(_is_tensor(t) for t in inputs):
        if len(inputs) != 1:
            raise InputShapeError(
                f"this model takes one input tensor {manifest.inputs[0].name!r}, got {len(inputs)}")
        return InferCall(rid or _request_id(), _tensor_rows(inputs[0], manifest, max_rows), wanted)
    return InferCall(rid or _request_id(), inputs, wanted)


def _requested_outputs(spec: Any) -> list[str] | None:
    if spec is None:
        return None
    if not isinstance(spec, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in spec):
        raise MessageFormatError("field 'outputs' must be a list of objects with a 'name'")
    return [o["name"] for o in spec]


def _tensor_rows(t: dict, manifest: Manifest, max_rows: int) -> list:
    want = manifest.inputs[0].name
    name = t.get("name", want)
    if name != want:
        raise InputShapeError(f"input tensor is named {name!r}; this model's input is {want!r}")
    dtype = t.get("datatype", "FP32")
    if dtype not in NUMERIC_DATATYPES:
        raise InputValueError(f"input datatype {dtype!r} is not supported; send FP32 numbers")
    data = t["data"]
    if not isinstance(data, list):
        raise InputShapeError("input 'data' must be a list of numbers (flat, row-major) or of rows")
    shape = t.get("shape")
    if shape is not None and (not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise InputShapeError(f"input 'shape' must be a list of non-negative integers, got {shape!r}")
    if shape is not None and len(shape) not in (1, 2):
        raise InputShapeError(f"input shape {shape} has rank {len(shape)}; send [rows, {manifest.n_features}]")
    if shape is not None and len(shape) == 2 and shape[0] > max_rows:
        raise InputShapeError(f"{shape[0]} rows in one request; the limit is {max_rows}: split the batch")
    if data and isinstance(data[0], list):  # nested rows
        if shape is not None and shape[0] != len(data):
            raise InputShapeError(f"input shape {shape} says {shape[0]} rows but data holds {len(data)}")
        return data
    if shape is None or len(shape) == 1:
        if shape is not None and shape[0] != len(data):
            raise InputShapeError(f"input shape {shape} does not match {len(data)} data values")
        return [data] if data else []
    n, f = shape
    if n * f != len(data):
        raise InputShapeError(f"input shape {shape} holds {n * f} values but data has {len(data)}")
    if f != manifest.n_features:
        names = ", ".join(manifest.feature_names[:12])
        raise InputShapeError(f"expected {manifest.n_features} features named {names}, got {f}")
    return [data[i * f:(i + 1) * f] for i in range(n)]


def infer_response(out: InferOutcome, rid: str, wanted: list[str] | None) -> dict:
    """The v2 response body: every output of the model that answered as a named tensor with flat data."""
    tensors = []
    o = out.outputs
    n = out.rows
    if CLASSIFICATION_OUTPUT in o and "class_index" in o:
        probs = o[CLASSIFICATION_OUTPUT]
        c = len(probs[0]) if probs else 0
        tensors.append(_tensor(CLASSIFICATION_OUTPUT, "FP32", [n, c], [v for row in probs for v in row]))
        tensors.append(_tensor("class_index", "INT64", [n], o["class_index"]))
        tensors.append(_tensor("label", "BYTES", [n], o["label"]))
        primary = {CLASSIFICATION_OUTPUT, "class_index", "label"}
    else:
        tensors.append(_tensor(REGRESSION_OUTPUT, "FP32", [n, 1], o[REGRESSION_OUTPUT]))
        primary = {REGRESSION_OUTPUT}
    dtypes = {t.name: t.datatype for t in out.runner.manifest.outputs}
    for name, value in o.items():
        if name not in primary:
            shape, flat = _flatten(value)
            tensors.append(_tensor(name, dtypes.get(name, "FP32"), shape, flat))
    if wanted is not None:
        have = {t["name"] for t in tensors}
        unknown = [w for w in wanted if w not in have]
        if unknown:
            raise MessageFormatError(f"unknown output(s) {', '.join(unknown)}; "
                                     f"this model has {', '.join(sorted(have))}")
        tensors = [t for t in tensors if t["name"] in wanted]
    return {"model_name": out.model, "model_version": out.version, "id": rid, "outputs": tensors}


def _tensor(name: str, datatype: str, shape: list[int], data: list) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def _flatten(value: Any) -> tuple[list[int], list]:
    shape: list[int] = []
    v = value
    while isinstance(v, list):
        shape.append(len(v))
        v = v[0] if v else None
    flat = value
    for _ in range(len(shape) - 1):
        flat = [x for sub in flat for x in sub]
    return shape, flat


# --- the API ---------------------------------------------------------------------------------------
class HttpApi:
    """KServe v2 REST front end of a :class:`Serving`. ``start()`` serves on a daemon thread."""

    def __init__(self, serving: Serving, host: str = "127.0.0.1", port: int = 0, *,
                 max_body: int = DEFAULT_MAX_BODY, max_rows: int | None = None,
                 request_timeout: float = 30.0, max_connections: int = 64, head_timeout: float = 10.0,
                 max_connections_per_ip: int | None = None, health: Callable[[], dict] | None = None,
                 metrics: AgentMetrics | None = None,
                 feedback: Callable[[str, bytes], dict] | None = None) -> None:
        self.serving = serving
        self.feedback = feedback  # (model, body) -> answer: labels for captured rows (edgeloop.agent.capture)
        self.health = health  # the agent's health (AgentCore.health); None: the served model's alone
        # the agent's metrics; None: this API's own (requests it answers, the served model)
        self.metrics = metrics if metrics is not None else AgentMetrics("", AgentProbes(
            active=lambda: serving.active, health=lambda: self._server_ready()[1]))
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.max_connections_per_ip = max_connections_per_ip
        self.host = host
        self.max_body = max_body
        self.max_rows = max_rows if max_rows is not None else serving.max_rows
        self.request_timeout = request_timeout
        self._requested_port = port
        self._server: JsonHttpServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> HttpApi:
        if self._server is not None:
            return self
        self._server = JsonHttpServer((self.host, self._requested_port), self.respond, max_body=self.max_body,
                                      timeout_s=self.request_timeout, max_connections=self.max_connections,
                                      head_timeout_s=self.head_timeout,
                                      max_connections_per_ip=self.max_connections_per_ip,
                                      server_header=f"{SERVER_NAME}/{__version__}")
        self._requested_port = self.port  # a restart binds the same port
        self._thread = threading.Thread(target=self._server.serve_forever, name="agent-http", daemon=True)
        self._thread.start()
        log.debug("HTTP API listening on %s", self.url)
        return self

    def alive(self) -> bool:
        """Whether the server thread runs (the agent's watchdog asks)."""
        return self._thread is not None and self._thread.is_alive()

    def restart(self) -> None:
        """Serve again on the same port after the server thread ended (the agent's watchdog calls it)."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(timeout=1.0)
        self.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HttpApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.host
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    # --- requests ---------------------------------------------------------------------------------------
    def respond(self, method: str, path: str, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        """Answer one request: (status, JSON body, extra headers). Every failure becomes a JSON error."""
        headers: dict[str, str] = {}
        try:
            allowed, handler = self.route(method, path)
            if method == allowed or (method == "HEAD" and allowed == "GET"):
                status, payload = handler(body)
            else:
                raise HttpError(405, "method_not_allowed", f"{method} is not allowed on {path}; use {allowed}",
                                {"Allow": allowed})
        except EdgeloopError as exc:
            status = status_for(exc)
            payload = {"error": f"{exc.code}: {exc}"}
            headers = exc.headers if isinstance(exc, HttpError) else {}
        except Exception:  # a bug: log it here, tell the client nothing more
            log.exception("HTTP %s %s failed", method, path)
            return 500, error_body("internal", "internal error; see the agent log"), headers
        if isinstance(payload, bytes):  # a text answer (/metrics)
            return status, payload, {"Content-Type": CONTENT_TYPE}
        try:
            return status, _ENCODE(payload).encode("utf-8"), headers
        except ValueError:
            log.error("response to %s %s is not JSON-safe (non-finite number)", method, path)
            return 500, error_body("internal", "the model produced a value JSON cannot carry"), {}

    # --- routes (return status and JSON body) ----------------------------------------------------------
    def route(self, method: str, path: str) -> tuple[str, Callable[[bytes], tuple[int, Any]]]:
        """(allowed method, handler) for ``path``; raises :class:`HttpError` 404 when no route matches."""
        stripped = path.strip("/")
        parts = stripped.split("/") if stripped else []
        if "%" in stripped:
            parts = [unquote(p) for p in parts]
        if parts == ["v2"]:
            return "GET", lambda body: (200, {"name": SERVER_NAME, "version": __version__, "extensions": []})
        if parts == ["v2", "health", "live"]:
            return "GET", lambda body: (200, {"live": True})
        if parts == ["v2", "health", "ready"]:
            return "GET", lambda body: self._server_ready()
        if parts == ["metrics"]:
            return "GET", lambda body: (200, self.metrics.exposition())
        if len(parts) >= 3 and parts[:2] == ["v2", "models"] and parts[2]:
            name, rest = parts[2], parts[3:]
            version = None
            if len(rest) >= 2 and rest[0] == "versions":
                version, rest = rest[1], rest[2:]
            if rest == []:
                return "GET", lambda body: (200, self.serving.metadata(name, version))
            if rest == ["ready"]:
                return "GET", lambda body: self._model_ready(name, version)
            if rest == ["infer"]:
                return "POST", lambda body: (200, self._infer(name, version, body))
            if rest == ["feedback"] and self.feedback is not None:
                feedback = self.feedback
                return "POST", lambda body: (200, feedback(name, body))
        raise HttpError(404, "not_found", f"no route {method} {path}; see /v2 and /v2/models/<name>/infer")

    def _server_ready(self) -> tuple[int, dict]:
        """200 ``{"ready": true, ...}`` or 503 ``{"ready": false, "reasons": [...], ...}`` (docs/protocol.md)."""
        if self.health is not None:
            doc = self.health()
        else:
            model, reasons = self.serving.health(), self.serving.problems()
            doc = {"ready": not reasons, "reasons": reasons, "model": model.to_dict() if model else None}
        return (200 if doc["ready"] else 503), doc

    def _model_ready(self, name: str, version: str | None) -> tuple[int, dict]:
        self.serving.lookup(name, version)
        failing = self.serving.problems(name)
        if failing:
            raise HttpError(503, "model_failing", failing[0])
        return 200, {"name": name, "ready": True}

    def _infer(self, name: str, version: str | None, body: bytes) -> dict:
        try:
            served = self.serving.lookup(name, version)  # this model reads, answers and describes the request
            if not body:
                raise MessageFormatError("request body is empty; send a JSON object with 'inputs'")
            doc = load_json(body, "inference request", self.max_body)
            call = parse_infer_body(doc, served.runner.manifest, self.max_rows)
            out = self.serving.infer(call.inputs, served=served, max_rows=self.max_rows, request_id=call.id)
            answer = infer_response(out, call.id, call.outputs)
        except EdgeloopError as exc:
            self.metrics.failed("http", exc.code)
            raise
        except Exception:
            self.metrics.failed("http", "internal")
            raise
        self.metrics.answered("http", out.runner, out.latency_ms, out.outputs)
        return answer


__all__ = ["HttpApi", "HttpError", "InferCall", "parse_infer_body", "infer_response", "status_for",
           "DEFAULT_MAX_BODY", "SERVER_NAME"]
