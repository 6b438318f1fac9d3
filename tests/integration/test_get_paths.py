"""GET paths built to make the request decoder work hard, against the running frontend (issue 6, item 1).

The decoder looks for the base64 request in a few places of the path only (the remainder after the
prefix and its tails after the first three slashes), so no path, however many slashes it has, costs
more than a few passes over it. Each worst path gets its malformedRequest at once, /-/health keeps
answering while they are sent, and the frontend's memory (VmRSS) does not grow with them.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontend.config import load_frontend_config
from tests.integration.conftest import Demo, Process, free_port, http_healthy, tool

pytestmark = pytest.mark.integration

MALFORMED = bytes.fromhex("30030a0101")  # OCSPResponse { responseStatus malformedRequest }
# Far above what the fixed decoder needs (a few milliseconds) and far below what the old one took on
# these paths (3 to 16 seconds each): a loaded machine cannot make the first look like the second.
QUICK = 1.0


def worst_paths(length: int) -> dict[str, str]:
    """Paths of about ``length`` characters: thousands of slashes, each followed by something that
    looks like the start of a base64 DER SEQUENCE ('M', or '%4D'), decodable or not."""

    def fill(unit: str) -> str:
        return "/" + unit * ((length - 1) // len(unit))

    return {
        "%4D/": fill("%4D/"),  # the 40 KB path (15.9 s)
        "M/": fill("M/"),  # the M/ x 20,000 (+382 MiB)
        "M!/": fill("M!/"),  # no tail decodes: no early answer ends the search
        "%4D!/": fill("%4D!/"),
        "%4d=/": fill("%4d=/"),
        "MEIw%/": fill("MEIw%/"),
        "/": fill("/"),
        "M%2F": fill("M%2F"),
    }


@pytest.fixture(scope="module")
def paths(demo: Demo) -> dict[str, str]:
    listen = load_frontend_config(demo.path("etc", "frontend.toml")).listen
    assert listen.path_prefix == "/"
    # The longest request target the frontend reads (frontend/http_conn.py, ConnectionPool.max_url:
    # 4 x max_request_bytes + the prefix + 1024) less some room: these paths get an OCSP answer, not 414.
    return worst_paths(4 * listen.max_request_bytes + 1024 - 64)


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes, float]:
    t0 = time.monotonic()
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    return resp.status, body, time.monotonic() - t0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/PID/status")


def test_worst_paths_get_malformed_request_at_once(demo: Demo, frontend: Process, paths: dict[str, str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", demo.http_port, timeout=30)
    try:
        for name, path in paths.items():
            assert len(path) > 40_000
            for _ in range(3):
                status, body, took = get(conn, path)
                assert (status, body) == (200, MALFORMED), name
                assert took < QUICK, f"{name}: {took:.2f}s"
    finally:
        conn.close()


def test_health_answers_while_worst_paths_are_sent(demo: Demo, frontend: Process, paths: dict[str, str]) -> None:
    errors: list[str] = []
    sent = threading.Event()

    def hammer() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", demo.http_port, timeout=30)
        try:
            for _ in range(10):
                for name, path in paths.items():
                    status, body, _ = get(conn, path)
                    sent.set()
                    if (status, body) != (200, MALFORMED):
                        errors.append(f"{name}: {status} {body[:40]!r}")
        except OSError as e:
            errors.append(repr(e))
        finally:
            sent.set()
            conn.close()

    worker = threading.Thread(target=hammer)
    worker.start()
    sent.wait(30)
    checks: list[float] = []
    health = http.client.HTTPConnection("127.0.0.1", demo.http_port, timeout=30)
    try:
        while worker.is_alive() or not checks:
            status, body, took = get(health, "/-/health")
            assert status == 200 and body.strip() == b"ok"
            checks.append(took)
    finally:
        health.close()
        worker.join(60)
    assert not errors, errors
    assert max(checks) < QUICK, f"/-/health took up to {max(checks):.2f}s over {len(checks)} checks"


@pytest.fixture
def fresh_frontend(demo: Demo, signer: Process, tmp_path: Path) -> Iterator[tuple[Process, int]]:
    """A frontend of its own, so that its memory is measured from before it saw any worst path."""
    port = free_port()
    config = tmp_path / "frontend.toml"
    config.write_text(re.sub(r"(?m)^port = .*$", f"port = {port}", demo.path("etc", "frontend.toml").read_text(),
                             count=1))
    p = Process("ocsp-frontend-get-paths", [tool("ocsp-frontend"), "--config", str(config)], demo.env,
                lambda: http_healthy(port), tmp_path / "frontend.log")
    p.start()
    try:
        yield p, port
    finally:
        p.stop()


def test_memory_does_not_grow_with_worst_paths(fresh_frontend: tuple[Process, int], paths: dict[str, str]) -> None:
    frontend, port = fresh_frontend
    assert frontend.proc is not None
    pid = frontend.proc.pid
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for _ in range(3):
            assert get(conn, "/-/health")[0] == 200
        before = rss_kib(pid)
        for _ in range(40):
            for name, path in paths.items():
                status, body, _ = get(conn, path)
                assert (status, body) == (200, MALFORMED), name
        after = rss_kib(pid)
    finally:
        conn.close()
    # 320 requests of 40 KB. The old decoder grew the frontend by hundreds of MiB on the first "M/" one,
    # and kept them.
    assert after - before < 16 * 1024, f"VmRSS grew from {before} to {after} KiB"
