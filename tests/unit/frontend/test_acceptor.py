"""frontend.acceptor: accept failures counted and logged once per interval; out of descriptors, the
pending client is answered 503 and accepting rests, then resumes; the listener is never closed by an
error. A real listening socket whose accept() fails as scripted first; uvloop, as the frontend runs."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from typing import Any, ClassVar

import pytest
import uvloop

from frontend import acceptor
from frontend.acceptor import Acceptor, failure_log


class ScriptedSocket:
    """A listening socket whose next accept() calls raise the errors scripted, then accept for real."""

    def __init__(self, sock: socket.socket, errors: list[int]) -> None:
        self.real = sock
        self.errors = errors

    def accept(self) -> tuple[socket.socket, Any]:
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, os.strerror(code))
        return self.real.accept()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Hello(asyncio.Protocol):
    made: ClassVar[list[Hello]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Hello.made.append(self)
        transport.write(b"hello\n")  # type: ignore[attr-defined]
        transport.close()


async def _read_all(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


def _run(errors: list[int], monkeypatch: pytest.MonkeyPatch) -> tuple[list[bytes], Acceptor]:
    monkeypatch.setattr(acceptor, "PAUSE", 0.05)
    Hello.made = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    out: list[bytes] = []
    made: list[Acceptor] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a = Acceptor(loop, ScriptedSocket(listener, errors), Hello, failure_log(loop))  # type: ignore[arg-type]
        made.append(a)
        a.start()
        try:
            for _ in range(3):
                out.append(await _read_all(port))
        finally:
            a.close()

    uvloop.run(main())
    return out, made[0]


def test_a_transient_failure_is_counted_and_accepting_goes_on(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="frontend.server"):
        out, a = _run([errno.ECONNABORTED], monkeypatch)
    assert out == [b"hello\n"] * 3 and len(Hello.made) == 3
    assert a.failures == 1 and a.shed == 0
    assert [r.getMessage() for r in caplog.records] == [
        ("accept failed 1 time(s): Software caused connection abort (ECONNABORTED) (further failures for this "
        "cause are counted, one line per interval)")]


def test_out_of_descriptors_answers_503_rests_and_resumes(monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="frontend.server"):
        out, a = _run([errno.EMFILE], monkeypatch)
    # The first client is answered from the reserve descriptor; the later ones are served as usual.
    assert out[0].startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), out[0]
    assert out[0].endswith(b"server out of file descriptors, retry later\n")
    assert out[1:] == [b"hello\n"] * 2
    assert a.failures == 1 and a.shed == 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("accept failed 1 time(s): Too many open files (EMFILE): every file descriptor is in "
                           "use"), line


def test_close_releases_the_listener_and_the_reserve(monkeypatch: pytest.MonkeyPatch) -> None:
    _out, a = _run([], monkeypatch)
    assert a.sock.fileno() == -1 and a._reserve is None
