"""signer.control (the supervisor <-> worker channel) and signer.workers' decisions (every worker or
none), with real socketpairs and fake workers that answer the supervisor's requests."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from signer.control import ControlChannel, ControlClosed, Message, refusal
from signer.workers import Supervisor, Worker


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def pair(handler: Any = None, on_notice: Any = None) -> tuple[ControlChannel, ControlChannel]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left, right = ControlChannel(a, name="left"), ControlChannel(b, handler, on_notice, name="right")
    await left.start()
    await right.start()
    return left, right


# -- the channel -----------------------------------------------------------------------------------------


def test_request_reply_notice_and_failures() -> None:
    notices: list[Message] = []

    async def handler(message: Message) -> Message:
        if message["op"] == "boom":
            raise ValueError("broken")
        return {"ok": True, "echo": message["value"]}

    async def main() -> None:
        left, right = await pair(handler, notices.append)
        assert await left.request("echo", 5, value=[1, "x"]) == {"reply_to": 1, "ok": True, "echo": [1, "x"]}
        failed = await left.request("boom", 5)
        assert failed["ok"] is False and failed["code"] == "INTERNAL" and "broken" in failed["message"]
        left.notify("ready", pid=7)
        await asyncio.wait_for(_until(lambda: notices), 5)
        assert notices == [{"op": "ready", "pid": 7}]
        # No handler on this side: a request gets a refusal, not silence.
        assert (await right.request("x", 5))["code"] == "UNIMPLEMENTED"
        await right.close()
        with pytest.raises(ControlClosed):
            await left.request("echo", 5, value=1)
        await left.close()

    run(main())


def test_a_request_nobody_answers_times_out() -> None:
    async def never(message: Message) -> Message:
        await asyncio.Event().wait()
        return {}

    async def main() -> None:
        left, right = await pair(never)
        with pytest.raises(TimeoutError):
            await left.request("slow", 0.05)
        await left.close()
        await right.close()

    run(main())


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0)


# -- the supervisor's decisions ----------------------------------------------------------------------------


class FakeWorker:
    """What one worker's link answers; every request it gets is recorded."""

    def __init__(self, number: int, refuse: str | None = None, changed: tuple[str, ...] = ("ca",)) -> None:
        self.number = number
        self.refuse = refuse  # an op this worker refuses
        self.changed = changed
        self.got: list[str] = []

    async def handle(self, message: Message) -> Message:
        op = message["op"]
        self.got.append(op)
        if op == self.refuse:
            return refusal("FAILED_PRECONDITION", f"worker {self.number} says no")
        if op == "prepare_rotation":
            return {"ok": True, "fingerprint": "f2", "key_label": "k"}
        if op == "prepare_reload":
            return {"ok": True, "changed": list(self.changed), "removed": [],
                    "responders": {"ca": ["f2", message["generation"]]} if self.changed else {}}
        if op == "persist":
            return {"ok": True, "notes": ["wrote it"]}
        if op == "commit":
            return {"ok": True, "responders": {"ca": ["f2", 2]}}
        return {"ok": True}


class FakeProcess:
    returncode = None
    pid = 1


async def supervisor_with(*fakes: FakeWorker, serving: bool = True) -> Supervisor:
    sup = Supervisor(SimpleNamespace(workers=len(fakes), file=Path("signer.toml")))  # type: ignore[arg-type]
    sup.responders = {"ca": ["f1", 1]}
    for fake in fakes:
        ours, theirs = await pair(fake.handle)
        worker = Worker(fake.number, FakeProcess(), ours)  # type: ignore[arg-type]
        if serving:
            worker.ready.set_result({"op": "ready"})
        sup.workers[fake.number] = worker
        worker.theirs = theirs  # type: ignore[attr-defined]  (kept open)
    return sup


def test_a_rotation_is_persisted_once_and_committed_on_every_worker() -> None:
    fakes = FakeWorker(0), FakeWorker(1)

    async def main() -> Message:
        sup = await supervisor_with(*fakes)
        reply = await sup.rotate("ca", "Y2VydA==", "", via=1)
        assert sup.generation == 2 and sup.responders == {"ca": ["f2", 2]}
        return reply

    reply = run(main())
    assert reply == {"ok": True, "generation": 2, "notes": ["wrote it"], "fingerprint": "f2", "key_label": "k"}
    assert fakes[0].got == ["prepare_rotation", "persist", "commit"]
    assert fakes[1].got == ["prepare_rotation", "commit"]


def test_a_rotation_one_worker_refuses_is_aborted_on_every_worker() -> None:
    fakes = FakeWorker(0), FakeWorker(1, refuse="prepare_rotation")

    async def main() -> Message:
        sup = await supervisor_with(*fakes)
        reply = await sup.rotate("ca", "Y2VydA==", "", via=0)
        assert sup.generation == 1 and sup.responders == {"ca": ["f1", 1]}
        return reply

    reply = run(main())
    assert reply["ok"] is False and reply["code"] == "FAILED_PRECONDITION" and "worker 1 says no" in reply["message"]
    assert fakes[0].got == ["prepare_rotation", "abort"]
    assert fakes[1].got == ["prepare_rotation", "abort"]


def test_a_failed_persist_switches_no_worker() -> None:
    fakes = FakeWorker(0, refuse="persist"), FakeWorker(1)

    async def main() -> Message:
        sup = await supervisor_with(*fakes)
        reply = await sup.rotate("ca", "Y2VydA==", "", via=0)
        assert sup.generation == 1
        return reply

    assert run(main())["ok"] is False
    assert fakes[0].got == ["prepare_rotation", "persist", "abort"]
    assert fakes[1].got == ["prepare_rotation", "abort"]


def test_a_rotation_needs_every_worker_running() -> None:
    fakes = FakeWorker(0), FakeWorker(1)

    async def main() -> Message:
        sup = await supervisor_with(*fakes, serving=False)
        return await sup.rotate("ca", "Y2VydA==", "", via=0)

    reply = run(main())
    assert reply["code"] == "UNAVAILABLE" and "not running" in reply["message"]
    assert fakes[0].got == fakes[1].got == []


@pytest.mark.parametrize(("fakes", "committed"), [
    ((FakeWorker(0), FakeWorker(1)), True),
    ((FakeWorker(0), FakeWorker(1, changed=("other",))), False),  # the workers read different files
    ((FakeWorker(0), FakeWorker(1, refuse="prepare_reload")), False),
    ((FakeWorker(0, changed=()), FakeWorker(1, changed=())), False),  # nothing changed
])
def test_sighup_reload_on_every_worker_or_none(fakes: tuple[FakeWorker, ...], committed: bool) -> None:
    async def main() -> int:
        sup = await supervisor_with(*fakes)
        await sup.reload()
        return sup.generation

    generation = run(main())
    last = "commit" if committed else "abort"
    assert generation == (2 if committed else 1)
    for fake in fakes:
        assert fake.got == ["reload_status", "prepare_reload", last], fake.got


def test_a_prepare_aborted_before_it_finished_releases_the_lock() -> None:
    """The supervisor gave up waiting (timeout) and aborted; the worker's checks finish later: the
    worker must not keep the change open, nor the Rotator's lock held."""
    from signer.worker_link import WorkerLink

    class SlowRotator:
        def __init__(self) -> None:
            self.lock = asyncio.Lock()
            self.release = asyncio.Event()
            self.coordinator = None

        async def plan_reload(self, generation: int) -> None:
            await self.release.wait()

    async def main() -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        rotator = SlowRotator()
        link = WorkerLink(ControlChannel(a), rotator, None, 0)  # type: ignore[arg-type]
        prepare = asyncio.ensure_future(link.handle({"op": "prepare_reload", "txn": 7, "generation": 2}))
        await _until(lambda: rotator.lock.locked())
        assert (await link.handle({"op": "abort", "txn": 7}))["ok"]
        rotator.release.set()
        reply = await prepare
        assert reply["ok"] is False and reply["code"] == "ABORTED"
        assert not rotator.lock.locked()
        assert (await link.handle({"op": "commit", "txn": 7}))["ok"] is False  # nothing to commit
        a.close()
        b.close()

    run(main())
