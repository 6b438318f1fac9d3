"""Stopping the signer's background tasks: cancel, then wait until it has ended.

(frontend/tasks.py is the frontend's copy: the frontend never imports signer, and shared/ holds no
``await``.)
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (None: nothing to stop) and wait for it to end. Its CancelledError is swallowed;
    any other exception it ended with is raised."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
