"""File descriptors: both daemons raise their soft open-files limit to the hard one at start and say
so; a frontend whose descriptors are all taken by idle connections refuses new clients with an
answer, logs the accept failures once per interval with a count, and serves again once the idle
connections go. Real processes under ``prlimit``."""

from __future__ import annotations

import http.client
import re
import shutil
import socket
from pathlib import Path

import pytest

from tests.integration.conftest import Demo, Process, wait_until
from tests.integration.private_stack import frontend_process, running, signer_process

pytestmark = pytest.mark.integration

LIMIT = 128  # soft = hard: the frontend cannot raise it


def _prlimit(p: Process, soft: int, hard: int) -> Process:
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    p.argv = ["prlimit", f"--nofile={soft}:{hard}", "--", *p.argv]
    return p


def _log(p: Process) -> str:
    return p.log.read_text(errors="replace")


def _get_health(port: int) -> int | str:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
        conn.request("GET", "/-/health")
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError as e:
        return repr(e)


def test_a_frontend_out_of_descriptors_says_so_and_recovers(demo: Demo, signer: Process, tmp_path: Path) -> None:
    frontend, port = frontend_process(demo, tmp_path, demo.signer_address)
    _prlimit(frontend, LIMIT, LIMIT)
    with running(frontend):
        text = _log(frontend)
        assert f"open files limit: {LIMIT} (hard limit {LIMIT})" in text, text
        assert f"the hard limit is {LIMIT}, below 4096" in text, text
        idle: list[socket.socket] = []
        try:
            for _ in range(2 * LIMIT):  # more idle connections than the process has descriptors
                try:
                    idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                except OSError:
                    break
            # A new client is refused (a 503 naming the cause, or at worst a reset), not left hanging.
            outcomes = [_get_health(port) for _ in range(5)]
            assert all(o != 200 for o in outcomes) and 503 in outcomes, outcomes

            def counted() -> bool:
                return re.search(r"accept failed \d+ time\(s\) in the last \d+ s: Too many open files "
                                 r"\(EMFILE\)", _log(frontend)) is not None

            wait_until(counted, 15, "the accept-failure count line")
        finally:
            for s in idle:
                s.close()
        wait_until(lambda: _get_health(port) == 200, 15, "the frontend to serve again")
        assert frontend.proc is not None and frontend.proc.poll() is None
        text = _log(frontend)
    first = [line for line in text.splitlines() if "accept failed" in line]
    assert first and re.search(r"ERROR: frontend.server: accept failed 1 time\(s\): Too many open files \(EMFILE\): "
                               r"every file descriptor is in use", first[0]), first
    # One line per interval, with the count: far fewer lines than failures.
    failures = sum(int(m) for m in re.findall(r"accept failed (\d+) time\(s\)", text))
    assert failures > len(first), (failures, first)
    assert "Traceback" not in text


def test_the_signer_raises_its_soft_limit_to_the_hard_one(demo: Demo, tmp_path: Path) -> None:
    signer, _address = signer_process(demo, tmp_path)
    _prlimit(signer, 256, 2048)
    with running(signer):  # (ready once serving: the limit was logged before)
        text = _log(signer)
    assert "INFO: open files limit: 256 -> 2048 (hard limit 2048)" in text, text
    assert "WARNING: open files limit: the hard limit is 2048, below 4096" in text, text
