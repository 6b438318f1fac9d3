"""The frontend's accept loop: accept(2) called here, so that running out of file descriptors is seen.

Why not ``loop.create_server``: under uvloop, libuv accepts. When accept fails with EMFILE or ENFILE
(the open-files limit, ``LimitNOFILE=``, is used up by idle connections), libuv's "emfile trick"
closes a reserved descriptor, accepts and closes every pending connection, and reports nothing: the
clients are reset and not a line is logged. Should the trick fail (its reserve descriptor could not
be reopened), the error reaches uvloop's listen callback, which closes the listening server for
good, again without a line (``UVStreamServer._fatal_error`` logs only non-OSErrors). Here:

- every accept failure is counted (``Acceptor.failures``; ``FrontendServer.accept_failures`` sums
  the listeners) and logged once per cause and interval with the count (shared.ratelog.CountedLog);
- out of descriptors, the client gets an answer rather than a hang: a reserve descriptor is freed,
  the pending connection accepted, sent a short 503 and closed, and the reserve taken again (the same
  trick, but the client learns why); then accepting pauses ``PAUSE`` seconds, so a level-triggered
  listener does not spin, and resumes by itself;
- the listener is never closed by an accept error.

An accepted socket becomes an asyncio transport through ``loop.connect_accepted_socket``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from shared.ratelog import CountedLog

log = logging.getLogger("frontend.server")

ACCEPTS_PER_WAKEUP = 64  # connections taken per readable event, so one listener cannot starve the loop
PAUSE = 0.1  # seconds accepting rests after running out of descriptors
FAILURE_LOG_INTERVAL = 5.0  # seconds between two lines about one cause of accept failures
OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)
# Failures of one pending connection (it is gone), not of the listener: the next accept goes on.
TRANSIENT = (errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EPERM)
OUT_OF_FDS_ANSWER = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 43\r\n"
                     b"Connection: close\r\nRetry-After: 1\r\n\r\n"
                     b"server out of file descriptors, retry later\n")


def _reserve() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class Acceptor:
    """Accepts on one listening socket for ``protocol_factory`` (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol_factory: Callable[[], asyncio.Protocol], failures: CountedLog) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.failures_log = failures
        self.failures = 0  # accept(2) calls that failed (not counting "nothing pending")
        self.shed = 0  # connections accepted out of descriptors, answered 503 and closed
        self._reserve = _reserve()
        self._paused: asyncio.TimerHandle | None = None
        self._closed = False
        self._tasks: dict[asyncio.Task[Any], socket.socket] = {}  # transports being made
        sock.setblocking(False)

    def start(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self._ready)

    def close(self) -> None:
        """Stop accepting and close the listening socket (connections already made stay)."""
        if self._closed:
            return
        self._closed = True
        if self._paused is not None:
            self._paused.cancel()
        else:
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None

    def _ready(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if self._failed(e):
                    return
                continue
            self._connect(conn)

    def _connect(self, conn: socket.socket) -> None:
        # (uvloop's transport makes the socket non-blocking and sets TCP_NODELAY itself.) The call's
        # own task, no coroutine of ours around it: this runs once per connection.
        task = self.loop.create_task(self.loop.connect_accepted_socket(self.protocol_factory, conn))
        self._tasks[task] = conn
        task.add_done_callback(self._made)

    def _made(self, task: asyncio.Task[Any]) -> None:
        conn = self._tasks.pop(task, None)
        if task.cancelled():
            return
        e = task.exception()
        if e is None:
            return
        if conn is not None:
            conn.close()
        if isinstance(e, OSError):  # the client went away before its transport was made, or out of memory
            self._count(e)
        else:
            log.error("making a connection's transport failed", exc_info=e)

    def _failed(self, e: OSError) -> bool:
        """Count and log one failed accept; True when accepting must stop for now."""
        self._count(e)
        if e.errno in TRANSIENT:
            return False
        if e.errno in OUT_OF_FDS:
            self._shed()
        self._pause()
        return True

    def _count(self, e: OSError) -> None:
        self.failures += 1
        name = errno.errorcode.get(e.errno or 0, "")
        cause = f"{e.strerror or e}{f' ({name})' if name else ''}"
        if e.errno in OUT_OF_FDS:
            cause += (": every file descriptor is in use (idle connections?); raise LimitNOFILE= or lower "
                      "listen.max_connections / idle_timeout (README, Messages and what they mean)")
        self.failures_log.log(logging.ERROR, cause)

    def _shed(self) -> None:
        """Out of descriptors: answer the pending connections 503 with the reserve descriptor's room."""
        for _ in range(ACCEPTS_PER_WAKEUP):
            if self._reserve is None:
                return
            os.close(self._reserve)
            self._reserve = None
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                conn = None
            if conn is not None:
                with conn:
                    conn.setblocking(False)
                    with contextlib.suppress(OSError):
                        conn.send(OUT_OF_FDS_ANSWER)
                        conn.shutdown(socket.SHUT_WR)
                        conn.recv(65536)  # the request, if here: closing on unread data would reset
                self.shed += 1
            self._reserve = _reserve()
            if conn is None:
                return

    def _pause(self) -> None:
        if self._paused is not None or self._closed:
            return
        self.loop.remove_reader(self.sock.fileno())
        self._paused = self.loop.call_later(PAUSE, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if not self._closed:
            self.loop.add_reader(self.sock.fileno(), self._ready)


def failure_log(loop: asyncio.AbstractEventLoop) -> CountedLog:
    """The accept-failure log all listeners of a frontend process share."""
    return CountedLog(log, FAILURE_LOG_INTERVAL, time.monotonic, schedule=loop.call_later,
                      first="accept failed %d time(s): %s (further failures for this cause are counted, one "
                            "line per interval)",
                      summary="accept failed %d time(s) in the last %.0f s: %s")


def listening_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Bound, listening sockets for ``host``/``port`` as ``loop.create_server`` makes them: one per
    address the host resolves to, SO_REUSEADDR, IPv6 sockets IPv6-only."""
    out: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        seen = set()
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            s = socket.socket(family, kind, proto)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(address)
            s.listen(backlog)
    except BaseException:
        for s in out:
            s.close()
        raise
    return out
