"""The programs ``ocspctl demo serve`` runs: each in its own process group, its output echoed with a
prefix and its last lines kept for the message when it dies; waiting until one is ready."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO

from signer.ctl.common import CtlError, warn


class Child:
    """A child process whose output is echoed with a prefix and whose last lines are kept."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.argv = argv
        self.tail: deque[str] = deque(maxlen=30)
        # Its own process group: Ctrl-C reaches ocspctl only, which then stops the children in order.
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, process_group=0)
        self._reader = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.tail.append(line)
            print(f"[{self.name}] {line}", file=sys.stderr, flush=True)

    def exited(self) -> int | None:
        return self.proc.poll()

    def died_message(self) -> str:
        self._reader.join(2)
        tail = "\n".join(f"    {line}" for line in self.tail) or "    (no output)"
        return f"{self.name} exited early with status {self.proc.returncode}; its last output:\n{tail}"

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            warn(f"{self.name} did not stop within {timeout:.0f}s of SIGTERM; killing it")
            self.proc.kill()
            self.proc.wait()
        self._reader.join(2)


def wait_ready(child: Child, ready: Callable[[], bool], timeout: float, stop: threading.Event) -> None:
    """Until ``ready()`` (polled every 0.1 s) or ``stop`` is set; CtlError when the child dies first or
    is not ready within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        if child.exited() is not None:
            raise CtlError(child.died_message())
        if ready():
            return
        if time.monotonic() > deadline:
            tail = "\n".join(f"    {line}" for line in child.tail) or "    (no output)"
            raise CtlError(f"{child.name} was not ready within {timeout:.0f}s; its last output:\n{tail}")
        stop.wait(0.1)
