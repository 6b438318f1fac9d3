"""A CA's web server for the tests: serves CRLs on 127.0.0.1 (a free port) from a thread.

Each path is a ``Route`` the test changes while the server runs: the body, its ETag and Last-Modified
(If-None-Match and If-Modified-Since are honoured with 304), a status to answer instead (404, 500), a
redirect, a pause before the body or between its bytes (slow servers), a Content-Length left out
(size known only by counting). ``hits`` counts requests per path and ``conditional`` those that
carried validators; ``wait_hits`` waits on the count (never a sleep).
"""

from __future__ import annotations

import email.utils
import hashlib
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hung up (a size or time limit): expected, not worth a traceback


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    etag: bool = True  # send an ETag (the body's hash)
    last_modified: float | None = None  # epoch seconds; None: no Last-Modified
    location: str | None = None  # a redirect to this path (status 302)
    delay: float = 0.0  # seconds before the headers
    drip: float = 0.0  # seconds between 1-KiB pieces of the body
    content_length: bool = True
    headers: dict[str, str] = field(default_factory=dict)

    def tag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'


class CrlServer:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: a server-side context; the server then speaks https."""
        self.scheme = "https" if tls is not None else "http"
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.conditional: Counter[str] = Counter()
        self.not_modified: Counter[str] = Counter()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server._serve(self)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), name="crl-server",
                                        daemon=True)

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def start(self) -> CrlServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_hits(self, path: str, more_than: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.hits[path] <= more_than:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{path}: still {self.hits[path]} requests after {timeout} s")
                self._cond.wait(left)
            return self.hits[path]

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path
        route = self.routes.get(path)
        with self._cond:
            self.hits[path] += 1
            if h.headers.get("If-None-Match") or h.headers.get("If-Modified-Since"):
                self.conditional[path] += 1
            self._cond.notify_all()
        if route is None:
            self._reply(h, 404, b"not found\n")
            return
        if route.delay and self._stop.wait(route.delay):
            return
        if route.location is not None:
            h.send_response(302)
            h.send_header("Location", route.location)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if route.status != 200:
            self._reply(h, route.status, b"error\n")
            return
        tag = route.tag() if route.etag else None
        if self._fresh(h, route, tag):
            with self._cond:
                self.not_modified[path] += 1
            h.send_response(304)
            if tag:
                h.send_header("ETag", tag)
            h.end_headers()
            return
        h.send_response(200)
        h.send_header("Content-Type", "application/pkix-crl")
        if tag:
            h.send_header("ETag", tag)
        if route.last_modified is not None:
            h.send_header("Last-Modified", email.utils.formatdate(route.last_modified, usegmt=True))
        for k, v in route.headers.items():
            h.send_header(k, v)
        if route.content_length:
            h.send_header("Content-Length", str(len(route.body)))
        else:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        try:
            if not route.drip:
                h.wfile.write(route.body)
                return
            for i in range(0, len(route.body), 1024):
                if self._stop.wait(route.drip):
                    return
                h.wfile.write(route.body[i:i + 1024])
                h.wfile.flush()
        except OSError:
            pass  # the client gave up (a size or time limit): what the test wants

    @staticmethod
    def _fresh(h: BaseHTTPRequestHandler, route: Route, tag: str | None) -> bool:
        inm = h.headers.get("If-None-Match")
        if inm is not None:
            return tag is not None and tag in [t.strip() for t in inm.split(",")]
        ims = h.headers.get("If-Modified-Since")
        if ims is not None and route.last_modified is not None:
            try:
                since = email.utils.parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError):
                return False
            return int(route.last_modified) <= since
        return False

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
