"""A small HTTP/1.1 server for the agent's JSON API: one thread, an event loop, keep-alive.

Why not :mod:`http.server`: its handler sends headers and body in two writes (with
Nagle's algorithm on, a keep-alive client then waits ~40 ms for the delayed ACK before
the body leaves), parses every header block with :mod:`email` (which cost more than a
small model), and runs a thread per connection: under load Python's GIL then favours
whichever thread just released it, so a few connections are answered at once while the
others wait tens of milliseconds. Here one thread waits on every socket with
:mod:`selectors` and answers the requests in the order they became readable:

* ``TCP_NODELAY`` on every connection; each response (status line, headers, body) is
  handed to the kernel in one ``send``;
* ``Content-Length`` bodies only (chunked: 411), ``Expect: 100-continue``, pipelined
  requests answered in order; HTTP/1.0 clients that ask for keep-alive get it, said back
  in ``Connection: keep-alive``;
* limits: the head (64 KiB, 100 header lines), the body (``max_body``: 413, after
  reading and dropping up to :data:`DISCARD_LIMIT` so the client can read the answer),
  idle time (``timeout_s`` without a byte in either direction closes the connection),
  the time to send a request head (``head_timeout_s`` from its first byte: then 408 and the
  connection closes, so a client that trickles a byte at a time -- slowloris -- cannot hold a
  connection by staying just short of the idle limit), open connections (``max_connections``:
  beyond it 503 with ``Retry-After`` at once) and open connections per client address
  (``max_connections_per_ip``, default three quarters of ``max_connections``: beyond it 429 with
  ``Retry-After``, so one host cannot hold every slot);
* every refusal is a JSON body ``{"error": "<code>: <message>"}``; a broken client only
  ever closes its own connection.

The application is one callable ``app(method, path, body) -> (status, body, headers)`` (the body is
JSON unless ``headers`` names another ``Content-Type``)
(``path`` without the query string; ``HEAD`` is passed through and its body dropped
here). It runs on the server's thread, one request at a time: right for models that
answer in milliseconds (the agent's), not for slow handlers.
"""

from __future__ import annotations

import json
import logging
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

App = Callable[[str, str, bytes], tuple[int, bytes, dict[str, str]]]

MAX_HEAD = 64 * 1024
MAX_HEADERS = 100
DISCARD_LIMIT = 32 * 1024 * 1024  # refused bodies up to this size are read and dropped before answering 413
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
_RECV = 256 * 1024
_SWEEP_S = 1.0  # how often idle connections are looked for (more often when a limit is shorter)


def error_body(code: str, message: str) -> bytes:
    """The JSON body of every refusal: ``{"error": "<code>: <message>"}``."""
    return json.dumps({"error": f"{code}: {message}"}, separators=(",", ":")).encode("utf-8")


_ACCEPT = object()  # selector data of the listening socket
_WAKE = object()  # ... and of the socket stop() writes to


def _listen(addr: tuple[str, int]) -> socket.socket:
    """The listening socket, non-blocking, with the backlog a burst of new clients needs (a pool opening
    its connections at once; a short backlog drops their SYNs, and each one retries a second later)."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Refusal(Exception):
    """A request the server answers itself, then closes the connection (its framing is not to be trusted)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def parse_head(head: bytes) -> tuple[str, str, bool, int, bool, bool]:
    """Request line and headers -> (method, target, keep-alive, content length, expects 100-continue, HTTP/1.0).

    An HTTP/1.0 connection persists only when the client asked for it (``Connection: keep-alive``); the
    answer must then say ``Connection: keep-alive`` too, or the client takes the connection as closing.

    Raises :class:`_Refusal` (400, 411, 431, 505) for what cannot be served.
    """
    lines = head.split(b"\n")  # a line's trailing \r goes with the strip() of its value
    words = lines[0].rstrip(b"\r").split(b" ")
    if len(words) != 3 or not words[0] or not words[1]:
        raise _Refusal(400, "bad_request", f"bad request line {lines[0][:100]!r}")
    raw_method, raw_target, version = words
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if version.startswith(b"HTTP/") and version[5:6].isdigit():
            raise _Refusal(505, "http_version_not_supported",
                           f"{version.decode('latin-1')} is not supported; use HTTP/1.1")
        raise _Refusal(400, "bad_request", f"bad request version {version[:20]!r}")
    if len(lines) - 1 > MAX_HEADERS:
        raise _Refusal(431, "request_header_fields_too_large", f"more than {MAX_HEADERS} header lines")
    length: bytes | None = None
    tokens: set[bytes] = set()
    chunked = expect = False
    for line in lines[1:]:  # only the headers the server acts on are decoded
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise _Refusal(400, "bad_request", f"bad header line {line[:100]!r}")
        key = name.lower()
        if key == b"content-length":
            value = value.strip()
            if length is not None and value != length:
                raise _Refusal(400, "bad_message", "conflicting Content-Length headers")
            length = value
        elif key == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
        elif key == b"transfer-encoding":
            chunked = True
        elif key == b"expect":
            expect = value.strip().lower() == b"100-continue" and version == b"HTTP/1.1"
    keep_alive = b"close" not in tokens if version == b"HTTP/1.1" else b"keep-alive" in tokens
    if chunked:
        raise _Refusal(411, "length_required", "chunked bodies are not supported; send a Content-Length")
    if length is None:
        length = b"0"
    if not length.isdigit():
        raise _Refusal(400, "bad_message", f"Content-Length {length.decode('latin-1')!r} is not a byte count")
    return (raw_method.decode("latin-1"), raw_target.decode("latin-1"), keep_alive, int(length), expect,
            version == b"HTTP/1.0")


class _Date:
    """The ``Date`` header value, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._value = formatdate(now, usegmt=True).encode("ascii")
            self._second = now
        return self._value


class _Conn:
    """One client connection's state, touched only by the server thread."""

    __slots__ = ("sock", "peer", "ip", "buf", "out", "request", "discard", "refused", "close_after", "last",
                 "head_started")

    def __init__(self, sock: socket.socket, peer: object, now: float) -> None:
        self.sock = sock
        self.peer = peer
        self.buf = bytearray()  # received, not yet answered
        self.out = bytearray()  # answered, not yet taken by the kernel
        self.request: tuple[str, str, bool, int, bool] | None = None  # head read, body awaited
        self.discard = 0  # bytes of a refused body still to drop
        self.refused: _Refusal | None = None  # the 413 to send once they are dropped
        self.close_after = False  # close once ``out`` has gone out
        self.last = now
        self.ip = peer[0] if isinstance(peer, tuple) else str(peer)
        self.head_started: float | None = None  # when the first byte of the head being read arrived


class JsonHttpServer:
    """The event loop: ``serve_forever()`` on a thread of your own, ``stop()`` from any thread."""

    def __init__(self, addr: tuple[str, int], app: App, *, max_body: int, timeout_s: float = 30.0,
                 max_connections: int = 64, server_header: str = "edgeloop", head_timeout_s: float = 10.0,
                 max_connections_per_ip: int | None = None) -> None:
        self._listener = _listen(addr)
        self.app = app
        self.max_body = max_body
        self.timeout_s = timeout_s
        self.head_timeout_s = head_timeout_s
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip if max_connections_per_ip is not None else \
            max(1, max_connections * 3 // 4)
        self._per_ip: dict[str, int] = {}
        self._refusals = 0
        self._sweep_s = min(_SWEEP_S, timeout_s / 2, head_timeout_s / 2)
        self._server_line = b"\r\nServer: %s\r\nDate: " % server_header.encode("latin-1")
        self._date = _Date()
        self._sel = selectors.DefaultSelector()
        self._waker_r, self._waker_w = socket.socketpair()
        self._waker_r.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, _ACCEPT)
        self._sel.register(self._waker_r, selectors.EVENT_READ, _WAKE)
        self._conns: dict[socket.socket, _Conn] = {}
        self._life = threading.Lock()  # orders serve_forever() and stop() called from two threads
        self._stopping = False
        self._running = False
        self._closed = False
        self._done = threading.Event()

    @property
    def server_address(self) -> tuple:
        return self._listener.getsockname()

    # --- lifecycle -------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        with self._life:
            if self._stopping:
                return
            self._running = True
        next_sweep = time.monotonic() + self._sweep_s
        try:
            while not self._stopping:
                try:
                    for key, mask in self._sel.select(self._sweep_s):
                        data = key.data
                        if data is _ACCEPT:
                            self._accept()
                        elif data is _WAKE:
                            self._drain_waker()
                        else:
                            self._on_event(data, mask)
                    now = time.monotonic()
                    if now >= next_sweep:
                        self._sweep(now)
                        next_sweep = now + self._sweep_s
                except Exception:  # a bug: the server goes on (a second later, should it repeat)
                    if self._stopping:
                        break
                    log.exception("HTTP server loop failed; serving on")
                    time.sleep(self._sweep_s)
        finally:
            self._close_all()
            self._done.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: close every connection and the listening socket (idempotent, any thread)."""
        with self._life:
            self._stopping = True
            running = self._running
        if not running:
            self._close_all()
            return
        try:
            self._waker_w.send(b"x")
        except OSError:
            pass
        self._done.wait(timeout)

    def _close_all(self) -> None:
        with self._life:
            if self._closed:
                return
            self._closed = True
        for conn in list(self._conns.values()):
            self._close(conn)
        for s in (self._listener, self._waker_r, self._waker_w):
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        self._sel.close()

    def _drain_waker(self) -> None:
        try:
            self._waker_r.recv(64)
        except OSError:
            pass

    # --- connections ---------------------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                sock, peer = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of file descriptors...: the client retries
                log.warning("HTTP accept failed: %s", exc)
                return
            conn = _Conn(sock, peer, time.monotonic())
            if len(self._conns) >= self.max_connections:
                self._refuse_connection(sock, 503, "overloaded", f"more than {self.max_connections} open "
                                        "connections; retry shortly")
                self._log_refusal("HTTP connection from %s refused: %d connections open", conn.ip,
                                  self.max_connections)
                continue
            held = self._per_ip.get(conn.ip, 0)
            if held >= self.max_connections_per_ip:
                self._refuse_connection(sock, 429, "too_many_connections", f"{held} connections from {conn.ip} "
                                        "are open; close some or reuse them (keep-alive), then retry")
                self._log_refusal("HTTP connection from %s refused: it holds %d connections", conn.ip, held)
                continue
            self._per_ip[conn.ip] = held + 1
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conns[sock] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _log_refusal(self, fmt: str, *args: object) -> None:
        """The first refused connection and every 100th at WARNING, the rest at DEBUG (a flood logs little)."""
        self._refusals += 1
        (log.warning if self._refusals % 100 == 1 else log.debug)(fmt + " (%d refused so far)", *args, self._refusals)

    def _refuse_connection(self, sock: socket.socket, status: int, code: str, message: str) -> None:
        """Beyond a connection limit (a small device must not hold sockets without bound): refused at once."""
        body = error_body(code, message)
        try:
            sock.setblocking(False)
            sock.send(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                      b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                      % (status, _REASONS.get(status, b"Unknown"), len(body), body))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sock.close()

    def _close(self, conn: _Conn) -> None:
        if self._conns.pop(conn.sock, None) is None:
            return
        left = self._per_ip.pop(conn.ip, 1) - 1
        if left > 0:
            self._per_ip[conn.ip] = left
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _sweep(self, now: float) -> None:
        for conn in list(self._conns.values()):
            if now - conn.last > self.timeout_s:
                log.debug("HTTP connection from %s idle for %.0f s: closed", conn.peer, self.timeout_s)
                self._close(conn)
            elif conn.head_started is not None and now - conn.head_started > self.head_timeout_s and not conn.out:
                log.info("HTTP connection from %s sent no complete request head within %.0f s: closed",
                         conn.ip, self.head_timeout_s)
                try:
                    self._refuse(conn, _Refusal(408, "request_timeout", f"the request head did not arrive within "
                                                f"{self.head_timeout_s:g} s of its first byte; send it at once"))
                except OSError:
                    self._close(conn)

    def _on_event(self, conn: _Conn, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE:
                self._flush(conn)
            if mask & selectors.EVENT_READ and conn.sock in self._conns:
                self._receive(conn)
        except OSError:  # reset, broken pipe: that client is gone
            log.debug("HTTP connection from %s ended", conn.peer, exc_info=True)
            self._close(conn)
        except Exception:  # a bug: this connection ends, the server goes on
            log.exception("HTTP connection from %s failed", conn.peer)
            self._close(conn)

    def _receive(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(_RECV)
        except BlockingIOError:
            return
        if not data:  # the client closed its side: answer what is complete, then close
            conn.close_after = True
            self._serve(conn)
            if not conn.out and conn.sock in self._conns:
                self._close(conn)
            return
        conn.last = time.monotonic()
        conn.buf += data
        self._serve(conn)

    # --- requests ----------------------------------------------------------------------------------------
    def _serve(self, conn: _Conn) -> None:
        """Answer every complete request in the buffer, in order, while the previous answer has gone out."""
        buf = conn.buf
        while not conn.out and conn.sock in self._conns:
            if conn.discard:
                n = min(conn.discard, len(buf))
                del buf[:n]
                conn.discard -= n
                if conn.discard:
                    return
                refused, conn.refused = conn.refused, None
                if refused is not None:
                    self._answer(conn, refused.status, error_body(refused.code, str(refused)), {}, False)
                return
            if conn.request is None and (not buf or not self._read_head(conn)):
                return
            if conn.request is None:
                continue  # refused or discarding
            method, path, keep_alive, length, http10 = conn.request
            if len(buf) < length:
                return
            body = bytes(buf[:length])
            del buf[:length]
            conn.request = None
            started = time.perf_counter()
            status, data, headers = self.app(method, path, body)
            self._answer(conn, status, data, headers, keep_alive, method == "HEAD", http10)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("HTTP %s %s -> %d (%.2f ms)", method, path, status, (time.perf_counter() - started) * 1000)

    def _read_head(self, conn: _Conn) -> bool:
        """Parse the next request head from the buffer; False when more bytes are needed or the request was refused."""
        buf = conn.buf
        skip = 0
        while skip < len(buf) and buf[skip] in (10, 13):  # blank lines between requests (RFC 9112 2.2)
            skip += 1
        if skip:
            del buf[:skip]
        m = _HEAD_END.search(buf)
        if (m.start() if m is not None else len(buf)) > MAX_HEAD:
            first = buf.find(b"\n")
            if first < 0 or first > MAX_HEAD:
                self._refuse(conn, _Refusal(414, "uri_too_long", f"the request line is longer than {MAX_HEAD} bytes"))
            else:
                self._refuse(conn, _Refusal(431, "request_header_fields_too_large",
                                            f"the request headers are longer than {MAX_HEAD} bytes"))
            return False
        if m is None:
            if buf and conn.head_started is None:
                conn.head_started = time.monotonic()
            return False
        conn.head_started = None
        head = bytes(buf[:m.start()])
        del buf[:m.end()]
        method = "-"
        try:
            method, target, keep_alive, length, expect, http10 = parse_head(head)
            if method not in METHODS:
                raise _Refusal(501, "not_implemented", f"unsupported method {method!r}; use GET or POST")
            if length > self.max_body:
                refusal = _Refusal(413, "payload_too_large", f"request body is {length} bytes; the limit is "
                                                             f"{self.max_body}: send fewer rows per request")
                if expect:  # the client waits for our word before sending the body: none to drop
                    raise refusal
                conn.discard = min(length, max(8 * self.max_body, DISCARD_LIMIT))
                conn.refused = refusal
                return True
        except _Refusal as r:
            self._refuse(conn, r, head_only=(method == "HEAD"))
            return False
        path = (target if target.startswith("/") else urlsplit(target).path).split("?", 1)[0]
        conn.request = (method, path, keep_alive, length, http10)
        if expect and len(buf) < length:
            self._write(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _refuse(self, conn: _Conn, r: _Refusal, head_only: bool = False) -> None:
        conn.buf.clear()
        self._answer(conn, r.status, error_body(r.code, str(r)), {}, False, head_only)

    # --- answers -------------------------------------------------------------------------------------
    def _answer(self, conn: _Conn, status: int, data: bytes, headers: dict[str, str], keep_alive: bool,
                head_only: bool = False, http10: bool = False) -> None:
        ctype = headers.get("Content-Type")  # JSON unless the app says otherwise (/metrics: text)
        parts = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Unknown")), self._server_line, self._date(),
                 b"\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                 % (b"application/json" if ctype is None else ctype.encode("latin-1"), len(data))]
        for k, v in headers.items():
            if k != "Content-Type":
                parts.append(f"{k}: {v}\r\n".encode("latin-1"))
        if not keep_alive:
            parts.append(b"Connection: close\r\n\r\n")
        else:  # HTTP/1.1 persists unless told otherwise; HTTP/1.0 only when told so
            parts.append(b"Connection: keep-alive\r\n\r\n" if http10 else b"\r\n")
        if not head_only:
            parts.append(data)
        self._write(conn, b"".join(parts))
        if not keep_alive:
            if conn.out:
                conn.close_after = True
            else:
                self._close(conn)

    def _write(self, conn: _Conn, data: bytes) -> None:
        if conn.out:
            conn.out += data
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        conn.last = time.monotonic()
        if sent < len(data):  # the kernel's buffer is full: the rest goes out when the socket is writable
            conn.out += data[sent:]
            self._sel.modify(conn.sock, selectors.EVENT_WRITE, conn)  # and nothing is read meanwhile

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        conn.last = time.monotonic()
        del conn.out[:sent]
        if conn.out:
            return
        if conn.close_after:
            self._close(conn)
            return
        self._sel.modify(conn.sock, selectors.EVENT_READ, conn)
        self._serve(conn)  # pipelined requests that arrived meanwhile


__all__ = ["App", "JsonHttpServer", "error_body", "parse_head", "DISCARD_LIMIT", "MAX_HEAD", "MAX_HEADERS", "METHODS"]
