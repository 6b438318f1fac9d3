"""frontend.workers: the sockets of the worker slots, and the supervisor's rules, run in a process of its
own (it forks) with stand-in workers: a worker failing before it serves fails the start-up, workers
dying in a loop make it give up, a worker that will not stop is killed, SIGHUP reaches a worker that
was still starting once it serves. Nothing sleeps: the test reads the supervisor's log as it comes."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from frontend.workers import bind_slots

ROOT = Path(__file__).resolve().parents[3]


def test_slots_share_one_port_with_so_reuseport() -> None:
    slots = bind_slots("127.0.0.1", 0, 3)
    try:
        assert [len(group) for group in slots] == [1, 1, 1]
        ports = {group[0].getsockname()[1] for group in slots}
        assert len(ports) == 1 and ports != {0}
        for (sock,) in slots:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1  # listening
        # Another frontend on the same port is refused, also one sharing with SO_REUSEPORT.
        (port,) = ports
        with pytest.raises(OSError) as e:
            bind_slots("127.0.0.1", port, 2)
        assert e.value.errno == errno.EADDRINUSE
    finally:
        for (sock,) in slots:
            sock.close()


def test_a_port_taken_by_a_plain_listener_is_refused() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError) as e:
            bind_slots("127.0.0.1", taken.getsockname()[1], 2)
        assert e.value.errno == errno.EADDRINUSE


SUPERVISOR = """
import logging, os, signal, sys
from frontend.config import ListenConfig
from frontend.workers import Slot, Supervisor, bind_slots
from shared import logs

logs.setup("ocsp-frontend", "INFO", worker=logs.SUPERVISOR)
signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as ocsp-frontend's main does
mode = sys.argv[1]
release_fd = int(sys.argv[2])

def say(text):
    print(text, file=sys.stderr, flush=True)

def stop(*_):
    sys.exit(0)

def wait_for_term():  # with handlers running meanwhile (a sigwait would hold them off)
    signal.signal(signal.SIGTERM, stop)
    while True:
        signal.pause()

def run(number, sockets, ready):
    assert len(sockets) == 1 and sockets[0].getsockname()[1] != 0
    if mode == "crash-loop":
        ready()
        return 3
    if mode in ("fails-at-start", "config-fault-at-start") and number == 2:
        if mode == "fails-at-start":
            raise RuntimeError("stand-in start-up failure")
        return 2
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ready()
        while True:
            signal.pause()
    if mode == "late-hup":
        signal.signal(signal.SIGHUP, lambda *_: say(f"stand-in {number}: SIGHUP"))
        if number == 2:
            say("stand-in 2: starting")
            os.read(release_fd, 1)  # until the test lets it serve
    ready()
    return wait_for_term()

listen = ListenConfig(port=0, workers=2, shutdown_grace=0.0)
slots = [Slot(n, group) for n, group in enumerate(bind_slots("127.0.0.1", 0, 2), start=1)]
sys.exit(Supervisor(listen, slots, run, stop_margin=0.2).run())
"""


class Supervised:
    """The stand-in supervisor of ``mode``; its log read line by line."""

    def __init__(self, mode: str) -> None:
        self.release_r, self.release_w = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR, mode, str(self.release_r)], cwd=ROOT,
                                     stderr=subprocess.PIPE, text=True, pass_fds=(self.release_r,))
        self.lines: list[str] = []
        self.watchdog = threading.Timer(60, self.proc.kill)  # a hung supervisor ends its log: the test fails
        self.watchdog.start()

    def until(self, text: str) -> str:
        """Read the log until a line with ``text`` (the watchdog bounds the wait)."""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} never logged:\n{''.join(self.lines)}")

    def finish(self) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=60)
        self.lines.append(err)
        return self.proc.returncode, "".join(self.lines)

    def close(self) -> None:
        self.watchdog.cancel()
        os.close(self.release_r)
        os.close(self.release_w)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


Start = Callable[[str], Supervised]


@pytest.fixture
def supervised() -> Iterator[Start]:
    made: list[Supervised] = []

    def start(mode: str) -> Supervised:
        made.append(Supervised(mode))
        return made[-1]

    yield start
    for s in made:
        s.close()


def test_a_worker_failing_at_start_fails_the_start_up(supervised: Start) -> None:
    rc, log = supervised("fails-at-start").finish()
    assert rc == 1, log
    assert "worker 2: frontend.workers: worker 2 failed" in log and "stand-in start-up failure" in log
    assert "exited with status 1 before it served: stopping" in log
    assert "workers serving" not in log and "starting another" not in log


def test_a_worker_config_fault_at_start_is_exit_status_2(supervised: Start) -> None:
    rc, log = supervised("config-fault-at-start").finish()
    assert rc == 2 and "worker 2 (pid" in log and "exited with status 2 before it served" in log, log


def test_workers_dying_in_a_loop_make_it_give_up(supervised: Start) -> None:
    rc, log = supervised("crash-loop").finish()
    assert rc == 1, log
    assert log.count("exited with status 3: starting another") == 5  # RESTART_LIMIT
    assert "the 6th worker to end within 60s: giving up" in log
    assert log.count("started, pid") == 2 + 5


def test_a_worker_that_does_not_stop_is_killed(supervised: Start) -> None:
    s = supervised("stubborn")
    s.until("2 workers serving on port")
    s.proc.send_signal(signal.SIGTERM)
    rc, log = s.finish()
    assert rc == 1, log
    assert log.count("did not stop within 0s: killing it") == 2


def test_sighup_reaches_a_worker_once_it_serves(supervised: Start) -> None:
    s = supervised("late-hup")
    s.until("stand-in 2: starting")
    s.proc.send_signal(signal.SIGHUP)
    s.until("SIGHUP: passing it to every worker")
    os.write(s.release_w, b"x")  # worker 2 may serve now: the SIGHUP it missed follows
    s.until("stand-in 2: SIGHUP")
    s.proc.send_signal(signal.SIGTERM)
    rc, log = s.finish()
    assert rc == 0 and "frontend.workers: stopped" in log, log
