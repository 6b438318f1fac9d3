"""frontend.tasks and signer.tasks: stopping a background task (the two halves' copies behave alike)."""

from __future__ import annotations

import asyncio
from types import ModuleType

import pytest

from frontend import tasks as frontend_tasks
from signer import tasks as signer_tasks


async def _forever() -> None:
    await asyncio.Event().wait()


async def _fails() -> None:
    raise RuntimeError("boom")


@pytest.mark.parametrize("mod", [frontend_tasks, signer_tasks], ids=["frontend", "signer"])
def test_cancel_and_wait(mod: ModuleType) -> None:
    async def go() -> None:
        await mod.cancel_and_wait(None)  # nothing started: nothing to stop
        task = asyncio.get_running_loop().create_task(_forever())
        await mod.cancel_and_wait(task)
        assert task.cancelled()
        await mod.cancel_and_wait(task)  # already ended: no error
        failed = asyncio.get_running_loop().create_task(_fails())
        await asyncio.wait([failed])
        with pytest.raises(RuntimeError, match="boom"):  # only CancelledError is swallowed
            await mod.cancel_and_wait(failed)

    asyncio.run(asyncio.wait_for(go(), 10))


def test_cancel_all() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        running = [loop.create_task(_forever()) for _ in range(3)]
        failed = loop.create_task(_fails())
        await asyncio.wait([failed])
        await frontend_tasks.cancel_all([*running, failed])  # swallows what they ended with
        assert all(t.cancelled() for t in running)
        await frontend_tasks.cancel_all([])

    asyncio.run(asyncio.wait_for(go(), 10))
