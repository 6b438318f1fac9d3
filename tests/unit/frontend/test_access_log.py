"""frontend.access_log and frontend.request_ids: the lines' fields in both formats, hostile names,
whole lines per write, the flush timer, the file; the [log] keys of frontend.toml."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from frontend.access_log import MAX_LINES, PIPE_BUF, AccessLog, check_file
from frontend.app import CACHED, NONCE, SIGNED, STORED, Answer
from frontend.cache import Entry
from frontend.config import load_frontend_config
from frontend.request_ids import RequestIds
from shared import logs
from shared.answers import AnswerKey
from shared.config import ConfigError
from shared.ocsp.errors import TryLater
from shared.ocsp.types import CertId, CertStatus, HashAlgorithm, ResponseStatus
from tests.unit.frontend.frontend_pki import TestCA
from tests.unit.frontend.frontend_server_env import FakeSigner
from tests.unit.frontend.test_frontend_caching import _app, _req
from tests.unit.frontend.test_frontend_config import setup as config_setup

HOSTILE_CA = 'evil"\n}{\x1b[2J\u2028ca'
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def cid(serial: int) -> CertId:
    return CertId(HashAlgorithm.SHA1, b"\1" * 20, b"\2" * 20, serial.to_bytes(16, "big"))


def entry(ca: str = "rsa-ca", sig: str = "abc-1") -> Entry:
    return Entry(b"der", b"", 1e12, 0, AnswerKey(ca, (cid(0x1A2B),)), cert_status=(CertStatus.GOOD,),
                 signature_id=sig)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def read_lines(fd: int, want: int, timeout: float = 5.0) -> list[str]:
    """Lines read from ``fd`` until ``want`` have come (or ``timeout`` passed with no more)."""
    data = b""
    while data.count(b"\n") < want:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            break
        data += os.read(fd, 1 << 16)
    return data.decode().splitlines()


def make(fmt: str, fd: int, worker: int | None = 2) -> AccessLog:
    f = logs.formatter()
    f.prog, f.json, f.worker = "ocsp-frontend", fmt == "json", worker
    return AccessLog(RequestIds("feedbeef00"), fd=fd)


@pytest.fixture(autouse=True)
def formatter() -> Iterator[None]:
    f = logs.formatter()
    saved = (f.prog, f.json, f.worker)
    yield
    f.prog, f.json, f.worker = saved


def test_request_ids_are_a_random_prefix_and_a_counter() -> None:
    a, b = RequestIds(), RequestIds()
    assert a.prefix != b.prefix and re.fullmatch(r"[0-9a-f]{10}", a.prefix)
    assert [a.next(), a.next()] == [f"{a.prefix}-1", f"{a.prefix}-2"]


def test_text_lines(pipe: tuple[int, int]) -> None:
    asyncio.run(_test_text_lines(pipe))


async def _test_text_lines(pipe: tuple[int, int]) -> None:
    r, w = pipe
    log = make("text", w)
    client = log.client(("192.0.2.7", 5555))
    e = entry()
    log.hit(client, "POST", e, 1_796_000_000.25, 42)
    log.hit(client, "GET", e, 1_796_000_000.5, 7)  # the entry's fixed part, kept from the first hit
    log.answer(client, "POST", Answer(b"x", ca="rsa-ca", cert_ids=(cid(0xFF), cid(1)),
                                      cert_status=(CertStatus.REVOKED, CertStatus.UNKNOWN), via=SIGNED,
                                      signature_id="feedbeef00-9"), 4210)
    log.answer(client, "POST", Answer(b"x", via=STORED, ca="rsa-ca", cert_ids=(cid(2),),
                                      cert_status=(CertStatus.GOOD,)), 800)
    log.answer(client, "POST", Answer.error(ResponseStatus.MALFORMED_REQUEST), 10)
    log.refused(log.client(None), "GET", ResponseStatus.UNAUTHORIZED, 5)
    log.flush()
    lines = read_lines(r, 6)
    assert e.access == "ca=rsa-ca serial=1A2B cert=good sig=abc-1"
    head = "ocsp-frontend: INFO: worker 2: frontend.access: "
    assert all(TS.match(line.split(" ", 1)[0]) and line.split(" ", 1)[1].startswith(head) for line in lines), lines
    body = [line.split(head, 1)[1] for line in lines]
    assert body[0] == ("client=192.0.2.7 method=POST answer=successful ca=rsa-ca serial=1A2B cert=good sig=abc-1 "
                       "via=cache id=feedbeef00-1 us=42")
    assert body[1].endswith("sig=abc-1 via=cache id=feedbeef00-2 us=7") and "method=GET" in body[1]
    assert body[2] == ("client=192.0.2.7 method=POST answer=successful ca=rsa-ca serial=FF,1 cert=revoked,unknown "
                       "sig=feedbeef00-9 via=signed id=feedbeef00-9 us=4210")  # a signed answer's id is its SignRequest's
    assert body[3].endswith("cert=good sig=- via=store id=feedbeef00-3 us=800")
    assert body[4] == "client=192.0.2.7 method=POST answer=malformedRequest ca=- serial=- cert=- sig=- via=- id=feedbeef00-4 us=10"
    assert body[5].startswith("client=- method=GET answer=unauthorized ca=- ")
    assert lines[0].startswith("2026-") and log.written == 6


def test_json_lines_are_valid_for_a_hostile_ca_name(pipe: tuple[int, int]) -> None:
    asyncio.run(_test_json_lines_are_valid_for_a_hostile_ca_name(pipe))


async def _test_json_lines_are_valid_for_a_hostile_ca_name(pipe: tuple[int, int]) -> None:
    r, w = pipe
    log = make("json", w, worker=None)
    client = log.client(("2001:db8::1", 443, 0, 0))
    log.hit(client, "POST", entry(HOSTILE_CA), 1_796_000_000.0, 3)
    log.answer(client, "POST", Answer(b"x", ca=HOSTILE_CA, cert_ids=(cid(5),), cert_status=(CertStatus.GOOD,),
                                      via=NONCE, signature_id="feedbeef00-7"), 9)
    log.answer(client, "HEAD", Answer.error(ResponseStatus.TRY_LATER, HOSTILE_CA, (cid(6),)), 1)
    log.flush()
    lines = read_lines(r, 3)
    assert len(lines) == 3 and all(line.isascii() for line in lines)
    objs = [json.loads(line) for line in lines]
    for o in objs:
        assert TS.match(o["ts"]) and o["level"] == "INFO" and o["logger"] == "frontend.access"
        assert o["msg"] == "access" and o["role"] == "main" and o["worker"] is None and o["client"] == "2001:db8::1"
        assert o["ca"] == 'evil"\\n}{\\x1b[2J\\u2028ca'  # escaped as every log message is (shared.logsafe)
    assert objs[0] | {"ts": None, "pid": None} == {
        "ts": None, "level": "INFO", "prog": "ocsp-frontend", "pid": None, "role": "main", "worker": None,
        "logger": "frontend.access", "msg": "access", "client": "2001:db8::1", "method": "POST",
        "answer": "successful", "ca": objs[0]["ca"], "serials": ["1A2B"], "cert": ["good"], "sig": "abc-1",
        "via": "cache", "id": "feedbeef00-1", "us": 3}
    assert (objs[1]["via"], objs[1]["id"], objs[1]["sig"], objs[1]["serials"]) == ("nonce", "feedbeef00-7",
                                                                                   "feedbeef00-7", ["5"])
    assert (objs[2]["answer"], objs[2]["via"], objs[2]["sig"], objs[2]["cert"]) == ("tryLater", None, None, [])


def test_writes_are_whole_lines_of_at_most_pipe_buf(pipe: tuple[int, int]) -> None:
    asyncio.run(_test_writes_are_whole_lines_of_at_most_pipe_buf(pipe))


async def _test_writes_are_whole_lines_of_at_most_pipe_buf(pipe: tuple[int, int]) -> None:
    _, w = pipe
    log = make("text", w)
    writes: list[bytes] = []
    log._write = writes.append  # type: ignore[method-assign]
    client = log.client(("127.0.0.1", 1))
    big = Answer(b"x", ca="rsa-ca", cert_ids=tuple(cid(n) for n in range(300)),  # one line > PIPE_BUF
                 cert_status=(CertStatus.GOOD,) * 300, via=SIGNED, signature_id="x-1")
    for n in range(MAX_LINES - 1):
        log.hit(client, "POST", entry(), 1_796_000_000.0 + n, n)
        if n == 100:
            log.answer(client, "POST", big, 1)
    assert writes  # MAX_LINES lines: written without waiting for the timer
    log.flush()
    data = b"".join(writes)
    assert data.count(b"\n") == MAX_LINES
    for chunk in writes:
        assert chunk.endswith(b"\n")
        assert len(chunk) <= PIPE_BUF or chunk.count(b"\n") == 1, len(chunk)


def test_the_timer_writes_what_waits(pipe: tuple[int, int]) -> None:
    asyncio.run(_test_the_timer_writes_what_waits(pipe))


async def _test_the_timer_writes_what_waits(pipe: tuple[int, int]) -> None:
    r, w = pipe
    log = make("text", w)
    log.hit(log.client(("127.0.0.1", 1)), "POST", entry(), 1_796_000_000.0, 1)
    loop = asyncio.get_running_loop()
    lines = await loop.run_in_executor(None, read_lines, r, 1)  # the loop runs meanwhile: its timer fires
    assert len(lines) == 1 and "via=cache" in lines[0]


def test_a_file_appended_to_and_reopened(tmp_path: Path) -> None:
    asyncio.run(_test_a_file_appended_to_and_reopened(tmp_path))


async def _test_a_file_appended_to_and_reopened(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("kept\n")
    log = AccessLog(RequestIds("p"), path=path)
    log.refused("c", "GET", ResponseStatus.MALFORMED_REQUEST, 1)
    log.flush()
    rotated = tmp_path / "access.log.1"
    path.rename(rotated)
    log.refused("c", "GET", ResponseStatus.MALFORMED_REQUEST, 2)
    log.reopen()  # what was buffered goes to the old file, the rest to the new
    log.refused("c", "GET", ResponseStatus.MALFORMED_REQUEST, 3)
    log.close()
    old = rotated.read_text().splitlines()
    assert old[0] == "kept" and [line.rsplit(" ", 1)[1] for line in old[1:]] == ["us=1", "us=2"]
    assert [line.rsplit(" ", 1)[1] for line in path.read_text().splitlines()] == ["us=3"]
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert check_file(path) is None
    assert "cannot open" in (check_file(tmp_path / "missing" / "x.log") or "")


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA("Access CA")


def test_log_keys(tmp_path: Path, ca: TestCA) -> None:
    cfg = load_frontend_config(config_setup(tmp_path, ca))
    assert (cfg.log.format, cfg.log.access, cfg.log.access_file) == ("text", True, None)
    cfg = load_frontend_config(config_setup(tmp_path, ca, '[log]\nformat = "json"\naccess = false\n'
                                                          'access_file = "logs/access.log"\n'))
    assert (cfg.log.format, cfg.log.access, cfg.log.access_file) == ("json", False, tmp_path / "logs/access.log")


@pytest.mark.parametrize("text,key,says", [
    ('format = "yaml"', "log.format", "must be one of 'text', 'json'"),
    ("access = 1", "log.access", "true or false"),
    ('access_file = "."', "log.access_file", "is a directory"),
    ("level = 'DEBUG'", "log.level", "unknown key"),
])
def test_log_key_errors_name_file_and_key(tmp_path: Path, ca: TestCA, text: str, key: str, says: str) -> None:
    path = config_setup(tmp_path, ca, f"[log]\n{text}\n")
    with pytest.raises(ConfigError) as e:
        load_frontend_config(path)
    assert (e.value.file, e.value.key) == (str(path), key) and says in e.value.message


class NamingSigner(FakeSigner):
    """FakeSigner whose results carry a request_id, as the signer client's do."""

    def __init__(self) -> None:
        super().__init__()
        self.ids = RequestIds("5151515151")

    async def sign(self, statuses, nonce):  # type: ignore[no-untyped-def]
        return replace(await super().sign(statuses, nonce), request_id=self.ids.next())


def test_answers_say_what_they_answered_and_how(tmp_path: Path) -> None:
    signer = NamingSigner()
    signer.delay = 0.05
    app, ca, _ = _app(tmp_path, signer)
    der = _req(ca, 0x100)

    async def go() -> list[Answer]:
        first = asyncio.create_task(app.answer(der, der))
        joined = asyncio.create_task(app.answer(der, der))  # waits for the first one's signature
        signed, waited = await first, await joined
        cached = await app.answer(der, der)
        nonce = await app.answer(_req(ca, 0x100, nonce=b"\x01" * 16), None)
        unknown_ca = await app.answer(_req(TestCA("Other CA"), 0x5), None)
        return [signed, waited, cached, nonce, unknown_ca, await app.answer(b"junk", None)]

    signed, waited, cached, nonce, unknown_ca, junk = asyncio.run(go())
    assert (signed.via, signed.signature_id, signed.ca, signed.cert_status) == (
        SIGNED, "5151515151-1", "a", (CertStatus.GOOD,))
    assert [c.serial_int for c in signed.cert_ids] == [0x100]
    assert (waited.via, waited.signature_id, waited.der) == ("joined", "5151515151-1", signed.der)
    assert (cached.via, cached.signature_id, cached.cert_status) == (CACHED, "5151515151-1", (CertStatus.GOOD,))
    assert app.cache.lookup(der).signature_id == "5151515151-1"  # the entry keeps it for the hits
    assert (nonce.via, nonce.signature_id) == (NONCE, "5151515151-2")
    assert (unknown_ca.status, unknown_ca.ca, [c.serial_int for c in unknown_ca.cert_ids]) == (
        ResponseStatus.UNAUTHORIZED, "", [0x5])
    assert (junk.status, junk.via, junk.cert_ids) == (ResponseStatus.MALFORMED_REQUEST, "", ())


def test_a_failed_sign_is_answered_and_logged_with_its_request_id(tmp_path: Path) -> None:
    signer = FakeSigner()
    failed = TryLater("signer: FAILED_PRECONDITION: the signer's policy refused")
    failed.request_id = "5151515151-9"
    signer.fail = failed
    app, ca, _ = _app(tmp_path, signer)

    async def go() -> tuple[Answer, list[str]]:
        answer = await app.answer(_req(ca, 0x100), None)
        r, w = os.pipe()
        try:
            log = make("text", w)
            log.answer("127.0.0.1", "POST", answer, 5)
            log.flush()
            return answer, read_lines(r, 1)
        finally:
            os.close(r)
            os.close(w)

    answer, (line,) = asyncio.run(go())
    assert (answer.status, answer.ca, answer.request_id) == (ResponseStatus.TRY_LATER, "a", "5151515151-9")
    assert "answer=tryLater ca=a serial=100 cert=- sig=- via=- id=5151515151-9 " in line
