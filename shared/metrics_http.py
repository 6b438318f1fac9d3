"""The ``/metrics`` listener both halves run (``[metrics] address``), and the frontend workers' snapshots.

A small asyncio server apart from the service's own port: ``GET /metrics`` (any query) answers the
exposition, anything else 404, one request per connection, 5 s to send the request head. ``body``
is called per scrape (a coroutine function is awaited: the signer's supervisor asks its workers).

Snapshots: with several frontend workers, each writes its own exposition to ``DIR/worker-N.prom``
every ``SNAPSHOT_INTERVAL`` seconds (written to a temporary name, then renamed: a reader never sees
half a file); the worker that takes a scrape writes its own first and merges every file
(shared.metrics.merge). An IO exception to shared/'s sans-IO rule, like shared.tasks: both halves
serve the same endpoint, and the frontend may not import the signer.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from shared.metrics import CONTENT_TYPE

log = logging.getLogger("metrics")

HEAD_TIMEOUT = 5.0  # seconds a scraper may take to send its request head
MAX_HEAD = 8192
SNAPSHOT_INTERVAL = 1.0  # seconds between two snapshots of a frontend worker (what a scrape may lag)

Body = Callable[[], bytes] | Callable[[], Awaitable[bytes]]


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def start_endpoint(body: Body, *, address: str | None = None, sock: Any = None) -> asyncio.AbstractServer:
    """Serve GET /metrics on ``address`` (``host:port``) or on the listening socket ``sock``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            parts = head.split(b" ", 2)
            target = parts[1] if len(parts) == 3 else b""
            if parts[0] == b"GET" and target.split(b"?", 1)[0] == b"/metrics":
                made = body()
                data = await made if inspect.isawaitable(made) else made
                status, ctype = b"200 OK", CONTENT_TYPE.encode()
            else:
                data, status, ctype = b"not found\n", b"404 Not Found", b"text/plain; charset=utf-8"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype +
                         b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(data) + data)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        except Exception:  # a bug in a collector: the scrape fails, the service does not
            log.exception("metrics: scrape failed")
        finally:
            writer.close()

    if sock is not None:
        return await asyncio.start_server(handle, sock=sock, limit=MAX_HEAD)
    host, port = split_address(address or "")
    return await asyncio.start_server(handle, host or None, port, limit=MAX_HEAD)


def snapshot_path(directory: Path, number: int) -> Path:
    return directory / f"worker-{number}.prom"


def write_snapshot(directory: Path, number: int, data: bytes) -> None:
    path = snapshot_path(directory, number)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_snapshots(directory: Path) -> list[str]:
    """Every worker's last snapshot (a file that vanished meanwhile is skipped)."""
    out = []
    for path in sorted(directory.glob("worker-*.prom")):
        try:
            out.append(path.read_text("utf-8"))
        except OSError:
            continue
    return out


async def keep_snapshot(directory: Path, number: int, render: Callable[[], bytes],
                        interval: float = SNAPSHOT_INTERVAL) -> None:
    """Write worker ``number``'s exposition every ``interval`` seconds until cancelled (and once more
    then: what it counted last is not lost when it stops)."""
    try:
        while True:
            try:
                write_snapshot(directory, number, render())
            except OSError as e:
                log.warning("metrics: cannot write the snapshot in %s: %s", directory, e.strerror or e)
            await asyncio.sleep(interval)
    finally:
        try:
            write_snapshot(directory, number, render())
        except OSError:
            pass
