"""``[listen] workers = 2``: a supervisor and two worker processes behind one port (frontend.workers).

Real processes on the session's signer and demo PKI. Which worker holds a connection is read from
Linux's /proc (the connection's socket among the worker's descriptors), not from anything the frontend
would have to expose; everything else is waited for in the one log the processes share.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Demo, Process, free_port, wait_until
from tests.integration.private_stack import ask, check_config, demo_config, get, ocsp_frontend

_ESTABLISHED = "01"  # TCP_ESTABLISHED in /proc/net/tcp's st column


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def served_by(pids: set[int], port: int) -> dict[int, int]:
    """How many established connections to ``port`` each of ``pids`` holds."""
    established = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == _ESTABLISHED and int(fields[1].rsplit(":", 1)[1], 16) == port:
            established.add(fields[9])
    counts = {}
    for pid in pids:
        n = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[len("socket:["):-1] in established:
                n += 1
        counts[pid] = n
    return counts


def answering(port: int, pids: set[int], connections: int = 32) -> dict[int, int]:
    """Open ``connections`` keep-alive connections, each answered /-/health, and count them by worker."""
    open_ = []
    try:
        for _ in range(connections):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/-/health")
            r = conn.getresponse()
            assert r.status == 200 and r.read() == b"ok\n"
            open_.append(conn)
        return served_by(pids, port)
    finally:
        for conn in open_:
            conn.close()


def log_text(p: Process) -> str:
    return p.log.read_text(errors="replace")


def count(p: Process, text: str) -> int:
    return log_text(p).count(text)


def worker_pids(p: Process) -> dict[int, int]:
    """Worker number -> pid, as the supervisor logged them last."""
    return {int(n): int(pid) for n, pid in re.findall(r"frontend\.workers: worker (\d+): started, pid (\d+)",
                                                      log_text(p))}


@pytest.fixture
def two_workers(demo: Demo, signer: Process, tmp_path: Path) -> Iterator[tuple[Process, int]]:
    port = free_port()
    conf = demo_config(demo, "frontend.toml", tmp_path / "frontend.toml", {"port": port, "workers": 2})
    p = ocsp_frontend(demo, conf, port, name="ocsp-frontend-workers")
    p.start()
    try:
        wait_until(lambda: "2 workers serving on port" in log_text(p), 30, "both workers to serve")
        yield p, port
    finally:
        p.stop()


def test_two_workers_serve_reload_restart_and_stop(demo: Demo, two_workers: tuple[Process, int]) -> None:
    p, port = two_workers
    assert p.proc is not None
    supervisor = p.proc.pid
    first = worker_pids(p)
    assert sorted(first) == [1, 2] and children(supervisor) == set(first.values())
    for n in (1, 2):
        assert count(p, f"worker {n}: frontend: listening on http://127.0.0.1:{port}") == 1

    # The kernel spreads connections over both workers' sockets, and both answer (32 connections all
    # in one of two workers: odds of 2 in 2**32).
    by_worker = answering(port, set(first.values()))
    assert all(n > 0 for n in by_worker.values()) and sum(by_worker.values()) == 32, by_worker
    for _ in range(4):
        assert ask(demo, port).responses  # signed answers (a nonce each), from whichever worker
    assert get(port, "/-/ready")[0] == 200

    # SIGHUP to the supervisor: every worker re-reads every CA's status data.
    before = {n: count(p, f"worker {n}: frontend: SIGHUP: re-reading status data") for n in (1, 2)}
    p.signal(signal.SIGHUP)
    for n in (1, 2):
        wait_until(lambda n=n: count(p, f"worker {n}: frontend: SIGHUP: re-reading status data") > before[n], 20,
                   f"worker {n} to take the SIGHUP")
        for ca in ("demo-rsa", "demo-ec"):
            wait_until(lambda n=n, ca=ca: count(p, f"worker {n}: ocsp.status: {ca}: status data reloaded") >= 1, 20,
                       f"worker {n} to reload {ca}")

    # A worker killed: the supervisor starts another in its place, which serves.
    os.kill(first[2], signal.SIGKILL)
    wait_until(lambda: f"worker 2 (pid {first[2]}) was killed by SIGKILL: starting another" in log_text(p), 20,
               "the supervisor to notice")
    wait_until(lambda: count(p, "worker 2: frontend: listening on") == 2, 30, "the new worker 2 to serve")
    second = worker_pids(p)
    assert second[1] == first[1] and second[2] != first[2] and not alive(first[2])
    assert children(supervisor) == set(second.values())
    by_worker = answering(port, set(second.values()))
    assert all(n > 0 for n in by_worker.values()), by_worker
    assert ask(demo, port).responses

    # SIGTERM to the supervisor stops every worker, then it exits 0: nothing left behind.
    assert p.stop() == 0, p.tail()
    assert not any(alive(pid) for pid in {*first.values(), *second.values()})
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    text = log_text(p)
    assert "frontend.workers: SIGTERM: stopping the workers" in text and "frontend.workers: stopped" in text
    for n in (1, 2):
        assert f"worker {n}: frontend: stopped" in text


def test_a_taken_port_fails_before_any_worker(demo: Demo, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = demo_config(demo, "frontend.toml", tmp_path / "frontend.toml", {"port": port, "workers": 2})
        r = subprocess.run(ocsp_frontend(demo, conf, port).argv, env=demo.env, capture_output=True, text=True,
                           timeout=60, check=False)
    assert r.returncode == 2, r.stderr
    assert f"ocsp-frontend: {conf}: listen: cannot listen on 127.0.0.1:{port}: Address already in use" in r.stderr
    assert "started, pid" not in r.stderr


def test_workers_out_of_range_is_a_config_error(demo: Demo, tmp_path: Path) -> None:
    conf = demo_config(demo, "frontend.toml", tmp_path / "frontend.toml", {"workers": 0})
    r = check_config(demo, "ocsp-frontend", conf)
    assert r.returncode == 2 and f"ocsp-frontend: {conf}: listen.workers: must be at least 1, not 0" in r.stderr, r.stderr


def test_workers_stop_when_the_supervisor_is_killed(two_workers: tuple[Process, int]) -> None:
    """SIGKILL leaves the supervisor no time to stop anyone: its workers stop by themselves (SIGTERM from
    the kernel, PR_SET_PDEATHSIG) and let go of the port."""
    p, port = two_workers
    assert p.proc is not None
    pids = set(worker_pids(p).values())
    assert len(pids) == 2
    p.proc.kill()
    p.proc.wait()
    wait_until(lambda: not any(alive(pid) for pid in pids), 20, "the workers to stop")
    assert count(p, "frontend: stopped") == 2  # each stopped as on SIGTERM, in order
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
