"""Stopping a background task, in either half: cancel it, then wait until it has ended.

One of shared/'s two exceptions to its no-``await`` rule (HACKING.md): both halves stop their tasks
alike, and the frontend cannot import signer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (None: nothing to stop) and wait for it to end. Its CancelledError is swallowed;
    any other exception it ended with is raised."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel every task and wait for them all to end; whatever they end with is swallowed."""
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
