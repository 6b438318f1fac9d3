"""A real redis-server (Debian's redis-server) for tests: on a unix socket, nothing persisted.

    server = RedisServer(tmp_path); server.start()   # waits until it answers PING
    server.url                                       # unix:///.../redis.sock
    server.kill()   # SIGKILL, as a crash; server.start() again serves on the same socket (empty)
    server.stop()   # SIGTERM by PID, waited for

``redis_server`` is the pytest fixture (started, stopped after the test). Readiness is PING over the
socket (raw RESP, no client library), polled with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes; stay below it


def ping(path: Path, timeout: float = 0.5) -> bool:
    """True when a Redis server answers PING on the unix socket ``path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self._short: str | None = None
        sock = directory / "redis.sock"
        if len(str(sock)) > MAX_SOCKET_PATH:  # a deep tmp_path: the socket goes in a short temp dir
            self._short = tempfile.mkdtemp(prefix="redis-", dir="/tmp")
            sock = Path(self._short) / "redis.sock"
        self.socket = sock
        self.log = directory / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self, timeout: float = 10.0) -> None:
        assert self.pid is None, "redis-server already running"
        argv = [REDIS_SERVER, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                "--save", "", "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(self.log),
                "--daemonize", "no"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not ping(self.socket):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"redis-server did not answer PING within {timeout}s:\n{self.tail()}")
            time.sleep(0.01)  # polling a readiness condition with a deadline, not synchronising

    def kill(self) -> None:
        """SIGKILL (a crash): its data is gone, its socket file may stay behind."""
        if self.pid is not None:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.socket.unlink(missing_ok=True)

    def stop(self, timeout: float = 10.0) -> None:
        if self.pid is not None:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        self.socket.unlink(missing_ok=True)

    def close(self) -> None:
        self.stop()
        if self._short is not None:
            shutil.rmtree(self._short, ignore_errors=True)

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed (make system)")
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.close()
