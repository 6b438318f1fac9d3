"""The control channel between the signer's supervisor and each of its workers (signer.workers).

One AF_UNIX stream socketpair per worker, made by the supervisor; the worker gets its end as an
inherited file descriptor. Messages are JSON objects, one per line, at most ``MAX_LINE`` bytes. A
request carries ``id`` and ``op`` and gets exactly one reply carrying ``reply_to`` (the request's id)
and ``ok``; a message with ``op`` and no ``id`` is a notice (no reply). Either side may send requests;
each incoming request runs as its own task, so a worker can answer the supervisor's "prepare" while its
own "rotate" request waits for the supervisor's reply.

Nothing secret crosses it: certificates, key labels, generations, fingerprints, and the gRPC status
name and message of a refusal. The end of the stream means the other side is gone: a worker then
stops (its supervisor died), the supervisor counts the worker as exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("ocsp-signer")

MAX_LINE = 1 << 20  # bytes: a rotation's certificate (base64) fits many times over
Message = dict[str, Any]
Handler = Callable[[Message], Awaitable[Message]]


class ControlClosed(Exception):
    """The other side closed the channel (or it broke) before a reply came."""


def refusal(code: str, message: str) -> Message:
    """A failed reply: ``code`` is a grpc.StatusCode name (the Admin caller gets it)."""
    return {"ok": False, "code": code, "message": message}


class ControlChannel:
    """One end of a control socketpair. ``handler`` answers the other side's requests (None: this end
    takes no requests, and each one gets a refusal); ``on_notice`` gets its notices."""

    def __init__(self, sock: socket.socket, handler: Handler | None = None,
                 on_notice: Callable[[Message], None] | None = None, *, name: str = "control") -> None:
        self.sock = sock
        self.handler = handler
        self.on_notice = on_notice
        self.name = name
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    async def start(self) -> None:
        self.sock.setblocking(False)
        reader, self._writer = await asyncio.open_unix_connection(sock=self.sock, limit=MAX_LINE)
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader), name=f"{self.name}-read")

    def _send(self, message: Message) -> None:
        if self._writer is None or self.closed.is_set():
            raise ControlClosed(f"{self.name}: the channel is closed")
        self._writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def notify(self, op: str, **fields: Any) -> None:
        """Send a notice (no reply). Raises ControlClosed."""
        self._send({"op": op, **fields})

    async def request(self, op: str, timeout: float, **fields: Any) -> Message:
        """Send a request and wait for its reply. Raises ControlClosed, or TimeoutError after
        ``timeout`` seconds."""
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._send({"op": op, "id": request_id, **fields})
            assert self._writer is not None
            try:
                await self._writer.drain()
            except (ConnectionError, OSError) as e:
                raise ControlClosed(f"{self.name}: {e}") from None
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(request_id, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):  # a line over MAX_LINE: the peer is broken
                    log.error("%s: a control message over %d bytes; closing the channel", self.name, MAX_LINE)
                    return
                except OSError:
                    return
                if not line:
                    return
                try:
                    message = json.loads(line)
                except ValueError as e:
                    log.error("%s: unreadable control message (%s); closing the channel", self.name, e)
                    return
                if not isinstance(message, dict):
                    log.error("%s: a control message that is not an object; closing the channel", self.name)
                    return
                self._dispatch(message)
        finally:
            self._close_pending()

    def _dispatch(self, message: Message) -> None:
        reply_to = message.get("reply_to")
        if reply_to is not None:
            future = self._pending.get(reply_to)
            if future is not None and not future.done():
                future.set_result(message)
            return
        if "id" not in message:
            if self.on_notice is not None:
                self.on_notice(message)
            return
        task = asyncio.get_running_loop().create_task(self._answer(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, message: Message) -> None:
        try:
            if self.handler is None:
                reply = refusal("UNIMPLEMENTED", f"{self.name}: takes no requests")
            else:
                reply = await self.handler(message)
        except Exception as e:  # the other side must get a reply, not wait out its timeout
            log.exception("%s: control request %r failed", self.name, message.get("op"))
            reply = refusal("INTERNAL", f"{type(e).__name__}: {e}")
        with contextlib.suppress(ControlClosed):
            self._send({"reply_to": message["id"], **reply})

    def _close_pending(self) -> None:
        self.closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ControlClosed(f"{self.name}: the other side closed the channel"))

    async def close(self) -> None:
        self.closed.set()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        for task in list(self._tasks):
            task.cancel()
        self._close_pending()
