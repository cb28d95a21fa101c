"""Open Inference Protocol (KServe v2) REST endpoints over the standard library's HTTP server.

Routes (``{v}`` segments are optional: ``/v2/models/{name}/versions/{v}/...``)::

    GET  /v2                          server metadata
    GET  /v2/health/live              200 while the process runs
    GET  /v2/health/ready             200 when a model is active, else 503
    GET  /v2/models/{name}            model metadata (404 if not served)
    GET  /v2/models/{name}/ready      200 ready, 404 another model is served, 503 none is
    POST /v2/models/{name}/infer      inference

The infer body is the v2 tensor form ``{"id": "1", "inputs": [{"name": "features",
"shape": [n, F], "datatype": "FP32", "data": [...]}]}`` (``data`` flat or nested)
or the convenience form ``{"inputs": [[...], [...]]}`` (rows, one row, or feature
objects, as over MQTT). Every error is ``{"error": "<code>: <message>"}`` with a
4xx/5xx status; no stack trace ever reaches a client, and the server keeps
serving after any bad request. Requests are logged at DEBUG only.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

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
from edgeloop.agent.runtime import CLASSIFICATION_OUTPUT, REGRESSION_OUTPUT, ModelRunner
from edgeloop.agent.serving import InferOutcome, Serving
from edgeloop.agent.wire.manifest import Manifest
from edgeloop.agent.wire.messages import load_json, new_id

log = logging.getLogger(__name__)

SERVER_NAME = "edgeloop-agent"
DEFAULT_MAX_BODY = 4 * 1024 * 1024
DISCARD_LIMIT = 32 * 1024 * 1024  # refused bodies up to this size are read and dropped before answering 413
NUMERIC_DATATYPES = ("FP32", "FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
_TENSOR_KEYS = frozenset({"name", "shape", "datatype", "data", "parameters"})


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


def _is_tensor(obj: Any) -> bool:
    return isinstance(obj, dict) and "data" in obj and bool(obj.keys() & {"name", "shape", "datatype"}) \
        and obj.keys() <= _TENSOR_KEYS


def parse_infer_body(body: dict, manifest: Manifest, max_rows: int) -> InferCall:
    """Validate a v2 (or convenience) infer body against ``manifest``; return rows to coerce."""
    rid = body.get("id", "")
    if isinstance(rid, (int, float)) and not isinstance(rid, bool):
        rid = str(rid)
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
        return InferCall(rid or new_id(), _tensor_rows(inputs[0], manifest, max_rows), wanted)
    return InferCall(rid or new_id(), inputs, wanted)


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


def infer_response(out: InferOutcome, rid: str, runner: ModelRunner, wanted: list[str] | None) -> dict:
    """The v2 response body: every output as a named tensor with flat data."""
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
    dtypes = {t.name: t.datatype for t in runner.manifest.outputs}
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


# --- the server ----------------------------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, addr: tuple, handler: type, family: int, max_connections: int = 64) -> None:
        self.address_family = family
        self.max_connections = max_connections
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(addr, handler)

    def process_request(self, request, client_address):
        """One thread per connection, but at most ``max_connections`` (a small device must not
        run out of threads): beyond that the client gets 503 with Retry-After at once."""
        with self._open_lock:
            full = len(self._open) >= self.max_connections
            if not full:
                self._open.add(request)
        if full:
            body = json.dumps({"error": f"overloaded: more than {self.max_connections} open connections; "
                                        "retry shortly"}).encode()
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                                % (len(body), body))
            except OSError:
                pass
            log.warning("HTTP connection from %s refused: %d connections open", client_address[0],
                        self.max_connections)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:  # never print tracebacks to stderr
        log.debug("HTTP connection from %s ended with an error", client_address, exc_info=True)


class HttpApi:
    """KServe v2 REST front end of a :class:`Serving`. ``start()`` serves on a daemon thread."""

    def __init__(self, serving: Serving, host: str = "127.0.0.1", port: int = 0, *,
                 max_body: int = DEFAULT_MAX_BODY, max_rows: int | None = None,
                 request_timeout: float = 30.0, max_connections: int = 64) -> None:
        self.serving = serving
        self.max_connections = max_connections
        self.host = host
        self.max_body = max_body
        self.max_rows = max_rows if max_rows is not None else serving.max_rows
        self.request_timeout = request_timeout
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> HttpApi:
        if self._server is not None:
            return self
        handler = type("EdgeloopV2Handler", (_Handler,), {"api": self, "timeout": self.request_timeout})
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._server = _Server((self.host, self._requested_port), handler, family, self.max_connections)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="agent-http", daemon=True)
        self._thread.start()
        log.debug("HTTP API listening on %s", self.url)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_open_connections()
        server.server_close()
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

    # --- routes (return status and JSON body) ----------------------------------------------------------
    def route(self, method: str, path: str) -> tuple[str, Callable[[bytes], tuple[int, dict]]]:
        """(allowed method, handler) for ``path``; raises :class:`HttpError` 404 when no route matches."""
        parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
        if parts == ["v2"]:
            return "GET", lambda body: (200, {"name": SERVER_NAME, "version": __version__, "extensions": []})
        if parts == ["v2", "health", "live"]:
            return "GET", lambda body: (200, {"live": True})
        if parts == ["v2", "health", "ready"]:
            return "GET", lambda body: self._server_ready()
        if len(parts) >= 3 and parts[:2] == ["v2", "models"] and parts[2]:
            name, rest = parts[2], parts[3:]
            version = None
            if len(rest) >= 2 and rest[0] == "versions":
                version, rest = rest[1], rest[2:]
            if rest == []:
                return "GET", lambda body: (200, self._metadata(name, version))
            if rest == ["ready"]:
                return "GET", lambda body: self._model_ready(name, version)
            if rest == ["infer"]:
                return "POST", lambda body: (200, self._infer(name, version, body))
        raise HttpError(404, "not_found", f"no route {method} {path}; see /v2 and /v2/models/<name>/infer")

    def _server_ready(self) -> tuple[int, dict]:
        ready = self.serving.ready()
        return (200 if ready else 503), {"ready": ready}

    def _runner(self, name: str, version: str | None) -> ModelRunner:
        runner = self.serving.active
        if runner is None:
            raise ModelNotReadyError("no model is active on this agent yet; deploy a bundle to it and retry")
        if name != runner.name:
            raise ModelNotFoundError(
                f"model {name!r} is not served here; this agent serves {runner.name!r} (version {runner.version})")
        if version is not None and version != runner.version:
            raise ModelNotFoundError(
                f"version {version!r} of {name!r} is not served here; the active version is {runner.version!r}")
        return runner

    def _metadata(self, name: str, version: str | None) -> dict:
        if version is not None:
            self._runner(name, version)
        return self.serving.metadata(name)

    def _model_ready(self, name: str, version: str | None) -> tuple[int, dict]:
        self._runner(name, version)
        return 200, {"name": name, "ready": True}

    def _infer(self, name: str, version: str | None, body: bytes) -> dict:
        runner = self._runner(name, version)
        if not body:
            raise MessageFormatError("request body is empty; send a JSON object with 'inputs'")
        doc = load_json(body, "inference request", self.max_body)
        call = parse_infer_body(doc, runner.manifest, self.max_rows)
        out = self.serving.infer(call.inputs, name, max_rows=self.max_rows)
        return infer_response(out, call.id, runner, call.outputs)


class _Handler(BaseHTTPRequestHandler):
    """Reads the body, routes, answers JSON; every failure becomes a JSON error."""

    protocol_version = "HTTP/1.1"
    server_version = f"{SERVER_NAME}/{__version__}"
    sys_version = ""
    api: HttpApi  # set on the per-server subclass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def _dispatch(self, method: str) -> None:
        started = time.perf_counter()
        path = urlsplit(self.path).path
        headers: dict[str, str] = {}
        try:
            body = self._read_body()
            if body is None:  # client went away mid-body
                self.close_connection = True
                return
            allowed, handler = self.api.route(method, path)
            if method == "HEAD" and allowed == "GET":
                status, payload = handler(b"")
            elif method != allowed:
                raise HttpError(405, "method_not_allowed", f"{method} is not allowed on {path}; use {allowed}",
                                {"Allow": allowed})
            else:
                status, payload = handler(body)
        except EdgeloopError as exc:
            status = status_for(exc)
            payload = {"error": f"{exc.code}: {exc}"}
            headers = getattr(exc, "headers", {})
        except Exception:  # a bug: log it here, tell the client nothing more
            log.exception("HTTP %s %s failed", method, path)
            status, payload = 500, {"error": "internal: internal error; see the agent log"}
        self._send(status, payload, headers, head_only=(method == "HEAD"))
        log.debug("HTTP %s %s -> %d (%.2f ms)", method, path, status, (time.perf_counter() - started) * 1000)

    def _read_body(self) -> bytes | None:
        """The request body; raises HttpError/PayloadTooLargeError (and closes) when it cannot be read safely."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise HttpError(411, "length_required", "chunked bodies are not supported; send a Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise MessageFormatError(f"Content-Length {raw!r} is not a byte count") from None
        if length > self.api.max_body:
            self._discard(length)
            raise PayloadTooLargeError(
                f"request body is {length} bytes; the limit is {self.api.max_body}: send fewer rows per request")
        try:
            body = self.rfile.read(length) if length else b""
        except OSError:
            return None
        return body if len(body) == length else None

    def _discard(self, length: int) -> None:
        """Read and drop a refused body (up to a cap) so the client can read the 413.

        Clients send the whole body before reading the answer; closing on them
        mid-upload shows up as a broken pipe instead of the error. Bodies beyond
        the cap are cut off. The connection is closed afterwards either way.
        """
        self.close_connection = True
        left = min(length, max(8 * self.api.max_body, DISCARD_LIMIT))
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def _send(self, status: int, payload: dict, headers: dict[str, str], head_only: bool = False) -> None:
        try:
            data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
        except ValueError:
            log.error("response to %s is not JSON-safe (non-finite number)", self.path)
            status, data = 500, b'{"error":"internal: the model produced a value JSON cannot carry"}'
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if not head_only:
                self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors from http.server (bad request line, ...) as JSON, then close."""
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        text = message or phrase
        self._send(code, {"error": f"{phrase.lower().replace(' ', '_')}: {text}"}, {},
                   head_only=(getattr(self, "command", None) == "HEAD" or code < 200 or code in (204, 304)))

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass  # _dispatch logs one DEBUG line per request

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("HTTP %s: %s", self.address_string(), format % args)


__all__ = ["HttpApi", "HttpError", "InferCall", "parse_infer_body", "infer_response", "status_for",
           "DEFAULT_MAX_BODY", "SERVER_NAME"]
