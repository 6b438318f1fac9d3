"""shared.tasks: stopping a background task (both halves use it)."""

from __future__ import annotations

import asyncio

import pytest

from shared.tasks import cancel_all, cancel_and_wait


async def _forever() -> None:
    await asyncio.Event().wait()


async def _fails() -> None:
    raise RuntimeError("boom")


def test_cancel_and_wait() -> None:
    async def go() -> None:
        await cancel_and_wait(None)  # nothing started: nothing to stop
        task = asyncio.get_running_loop().create_task(_forever())
        await cancel_and_wait(task)
        assert task.cancelled()
        await cancel_and_wait(task)  # already ended: no error
        failed = asyncio.get_running_loop().create_task(_fails())
        await asyncio.wait([failed])
        with pytest.raises(RuntimeError, match="boom"):  # only CancelledError is swallowed
            await cancel_and_wait(failed)

    asyncio.run(asyncio.wait_for(go(), 10))


def test_cancel_all() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        running = [loop.create_task(_forever()) for _ in range(3)]
        failed = loop.create_task(_fails())
        await asyncio.wait([failed])
        await cancel_all([*running, failed])  # swallows what they ended with
        assert all(t.cancelled() for t in running)
        await cancel_all([])

    asyncio.run(asyncio.wait_for(go(), 10))
