"""Bounds an outside client must not be able to stretch, against a real ocsp-frontend process.

A frontend of its own (the session's signer and demo PKI) with short deadlines and small caps, so
nothing here waits out a default: idle and request timeouts of 2 s, 8 connections, 6 per client
address, the cache as configured by default. Every client is on 127.0.0.1; since all of 127/8 is
this host's loopback, a client binds another 127.x address to be another client.

- A client that pipelines requests and never reads its answers is reset at its idle deadline (a
  plain close would wait for it to read, for ever), and its slot is free again.
- A client sending CRLF every few hundred milliseconds (which is no request) is cut off at the idle
  deadline.
- Past listen.max_connections or listen.max_connections_per_client a connection gets a 503 with
  Retry-After and Connection: close; the connections already admitted keep being served.
- A GET's query string and path segments before the base64 are not part of the cache key: variants
  of one request cost one signature (counted in the signer's audit log); a request longer than
  cache.max_key_bytes is answered but not cached; many cache-busting requests leave the frontend's
  memory flat.
"""

from __future__ import annotations

import base64
import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.x509 import ocsp

from tests.integration.conftest import Demo, Process, free_port, http_healthy, tool, wait_until
from tests.integration.hostile_wire import Wire, good_request, ocsp_get, ocsp_post
from tests.integration.ocsp_client import build_multi_request, load_cert

pytestmark = pytest.mark.integration

IDLE = 2.0
MAX_CONNECTIONS = 8
PER_CLIENT = 6
SLACK = 4.0  # deadlines are swept once a second; a busy machine adds some
_GONE = select.POLLRDHUP | select.POLLERR | select.POLLHUP  # FIN or reset from the server; not POLLIN
HEALTH = b"GET /-/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture(scope="module")
def tight(demo: Demo, signer: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    d = tmp_path_factory.mktemp("tight")
    port = free_port()
    text = demo.path("etc", "frontend.toml").read_text()
    text = re.sub(r"(?m)^port = \d+$", f"port = {port}", text, count=1)
    text = text.replace("max_request_bytes = 10000\n", f"""max_request_bytes = 10000
idle_timeout = "{int(IDLE)}s"
request_timeout = "{int(IDLE)}s"
max_connections = {MAX_CONNECTIONS}
max_connections_per_client = {PER_CLIENT}
""", 1)
    assert f"max_connections = {MAX_CONNECTIONS}" in text
    config = d / "frontend.toml"
    config.write_text(text)
    p = Process("ocsp-frontend", [tool("ocsp-frontend"), "--config", str(config)], demo.env,
                lambda: http_healthy(port), d / "frontend.log")
    p.port = port  # type: ignore[attr-defined]
    p.start()
    yield p
    p.stop()


def port_of(p: Process) -> int:
    return p.port  # type: ignore[attr-defined]


def served(w: Wire) -> bool:
    w.send(HEALTH)
    reply = w.response()
    return reply.status == 200 and reply.body == b"ok\n"


def all_slots_free(p: Process) -> bool:
    """Every connection slot can be taken (and is given back): nothing of an earlier test is left."""
    wires = []
    try:
        for i in range(MAX_CONNECTIONS):
            wires.append(Wire(port_of(p), source=f"127.0.1.{i + 1}"))
        return all(served(w) for w in wires)
    except (AssertionError, OSError):
        return False
    finally:
        for w in wires:
            w.close()


@pytest.fixture
def fresh(tight: Process) -> Process:
    wait_until(lambda: all_slots_free(tight), 10, "the frontend to have every connection slot free")
    return tight


def assert_alive(p: Process) -> None:
    assert p.proc is not None and p.proc.poll() is None, f"ocsp-frontend exited:\n{p.tail()}"
    wait_until(lambda: all_slots_free(p), 10, "every connection slot to be free again")


# -- connections -----------------------------------------------------------------------------------------


def fill_without_reading(socks: list[socket.socket], request: bytes, limit: int = 64 << 20) -> list[int]:
    """Pipeline ``request`` on every socket until the server stops taking more from any of them (their
    answers pile up unread); returns the bytes sent on each."""
    burst = request * 64
    sent = [0] * len(socks)
    poller = select.poll()
    for s in socks:
        s.setblocking(False)
        poller.register(s, select.POLLOUT)
    index = {s.fileno(): i for i, s in enumerate(socks)}
    writable = set(index)
    while writable:
        for fd in writable:
            i = index[fd]
            while sent[i] < limit:
                try:
                    sent[i] += socks[i].send(burst)
                except BlockingIOError:
                    break
        # Not writable again within a second: the server has stopped reading those.
        writable = {fd for fd, _ in poller.poll(1000) if sent[index[fd]] < limit}
    return sent


def test_client_that_never_reads_is_reset_at_the_idle_deadline(demo: Demo, fresh: Process) -> None:
    der = good_request(demo, "ec-ca")
    w = Wire(port_of(fresh))
    w.send(ocsp_post(der))
    assert w.response().ocsp().response_status == ocsp.OCSPResponseStatus.SUCCESSFUL  # now cached
    w.close()
    # Every slot taken by a client that asks and asks for the (cached, 1-2 KB) answer, never reading.
    hogs = []
    for i in range(MAX_CONNECTIONS):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind((f"127.0.2.{i + 1}", 0))
        s.connect(("127.0.0.1", port_of(fresh)))
        hogs.append(s)
    try:
        assert all(n > 100_000 for n in fill_without_reading(hogs, ocsp_get(der)))
        t0 = time.monotonic()
        poller = select.poll()
        for s in hogs:
            poller.register(s, _GONE)
        gone: set[int] = set()
        while len(gone) < len(hogs) and time.monotonic() - t0 < IDLE + SLACK:
            gone |= {fd for fd, _ in poller.poll(500)}
        assert len(gone) == len(hogs), \
            f"{len(hogs) - len(gone)} of {len(hogs)} non-reading clients still open {IDLE + SLACK}s later"
    finally:
        for s in hogs:
            s.close()
    assert_alive(fresh)  # and the server gave their slots back


def test_crlf_dribbler_is_cut_off(fresh: Process) -> None:
    w = Wire(port_of(fresh))
    try:
        poller = select.poll()
        poller.register(w.sock, _GONE | select.POLLIN)
        t0 = time.monotonic()
        cut = None
        while cut is None and time.monotonic() - t0 < IDLE + SLACK:
            if not w.send(b"\r\n") or poller.poll(300):  # the poll paces the dribble, wakes at the close
                cut = time.monotonic() - t0
        assert cut is not None, f"a client sending CRLF every 300 ms was still open after {IDLE + SLACK}s"
        assert cut >= IDLE - 0.5, f"cut off after {cut:.1f}s, before idle_timeout"
        assert w.closed_within(2.0) and w.buf == b"", "it sent no request, so it gets no answer"
    finally:
        w.close()
    assert_alive(fresh)


def assert_refused(w: Wire) -> None:
    reply = w.response()
    assert reply.status == 503, reply
    assert reply.headers["retry-after"].isdigit() and reply.closes, reply.headers
    assert reply.headers["content-type"].startswith("text/plain"), reply.headers
    assert w.closed_within(3.0), "refused connection left open"
    w.close()


def test_connections_past_the_caps_get_503(fresh: Process) -> None:
    port = port_of(fresh)
    admitted: list[Wire] = []
    try:
        admitted = [Wire(port) for _ in range(PER_CLIENT)]
        assert all(served(w) for w in admitted)
        assert_refused(Wire(port))  # one more from the same address: max_connections_per_client
        others = [Wire(port, source="127.0.0.2") for _ in range(MAX_CONNECTIONS - PER_CLIENT)]
        admitted += others
        assert all(served(w) for w in others), "another address is not held back by the first one"
        assert_refused(Wire(port, source="127.0.0.3"))  # max_connections, whoever asks
        assert all(served(w) for w in admitted), "the admitted connections must keep working"
    finally:
        for w in admitted:
            w.close()
    assert_alive(fresh)


# -- the cache key ---------------------------------------------------------------------------------------


def signatures(demo: Demo) -> int:
    """Responses the signer has signed so far: its audit log has one "sig" record per signature, made
    durable before the response leaves the signer."""
    return sum(f.read_bytes().count(b'"type":"sig"') for f in Path(demo.path("audit")).glob("audit-*.jsonl"))


def b64(der: bytes) -> bytes:
    return base64.b64encode(der).replace(b"+", b"%2B").replace(b"/", b"%2F").replace(b"=", b"%3D")


def get_path(path: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def test_query_and_junk_segments_share_one_signature(demo: Demo, fresh: Process) -> None:
    der = build_multi_request([(load_cert(demo.path("ec-ca", "leaf-revoked.pem")),
                                load_cert(demo.path("ec-ca", "ca.pem")))], algorithm="sha384")
    plain = b"/" + b64(der)
    spellings = [plain, plain + b"?a=1", plain + b"?" + b"q" * 40_000, b"/junk/" + b64(der),
                 b"/a/b/c/" + b64(der) + b"?x=y",
                 b"/" + base64.urlsafe_b64encode(der).rstrip(b"=")]
    before = signatures(demo)
    w = Wire(port_of(fresh))
    try:
        etags = set()
        for path in spellings:
            w.send(get_path(path))
            reply = w.response()
            assert reply.ocsp().certificate_status == ocsp.OCSPCertStatus.REVOKED, path[:60]
            etags.add(reply.headers["etag"])
        w.send(ocsp_post(der))
        etags.add(w.response().headers["etag"])
    finally:
        w.close()
    assert len(etags) == 1, etags
    assert signatures(demo) - before == 1


def test_request_over_max_key_bytes_is_answered_not_cached(demo: Demo, fresh: Process) -> None:
    pair = (load_cert(demo.path("rsa-ca", "leaf-good.pem")), load_cert(demo.path("rsa-ca", "ca.pem")))
    # As many CertIDs as listen.max_cert_ids (8) allows, SHA-512 ones so the request is long.
    der = build_multi_request([pair] * 8, algorithm="sha512")
    assert 1024 < len(der) < 10_000  # over the default cache.max_key_bytes, under max_request_bytes
    before = signatures(demo)
    w = Wire(port_of(fresh))
    try:
        for _ in range(2):
            w.send(ocsp_get(der))
            resp = w.response().ocsp()
            assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
            assert len(list(resp.responses)) == 8
    finally:
        w.close()
    assert signatures(demo) - before == 2


def rss(p: Process) -> int:
    assert p.proc is not None
    text = Path(f"/proc/{p.proc.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) * 1024  # type: ignore[union-attr]


def test_cache_busting_leaves_memory_flat(demo: Demo, fresh: Process) -> None:
    """1000 GETs of one request with distinct 40 KB queries and junk prefixes: before the cache key
    was the DER, each one cost a signature and a 40 KB entry (about +40 MiB)."""
    der = good_request(demo, "rsa-ca", "revoked")
    before_sigs = signatures(demo)

    def bust(n: int, tag: bytes) -> None:
        w = Wire(port_of(fresh))
        try:
            for i in range(n):
                junk = b"%d-" % i
                w.send(get_path(b"/%s%d/" % (tag, i) + b64(der) + b"?" + junk * (40_000 // len(junk))))
                assert w.response().status == 200
        finally:
            w.close()

    bust(100, b"warm")  # let allocator arenas and buffers reach their working size
    start = rss(fresh)
    bust(1000, b"bust")
    grown = rss(fresh) - start
    assert grown < 16 << 20, f"RSS grew by {grown >> 20} MiB over 1000 cache-busting requests"
    assert signatures(demo) - before_sigs == 1
