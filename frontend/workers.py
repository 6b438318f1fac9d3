"""``[listen] workers`` above 1: a supervisor and that many worker processes, each a whole frontend.

The supervisor is the process that was started (systemd's main PID). Before it gets here it has loaded
and checked the configuration and every CA's status data once, so a fault ends it before any worker
exists, with the message a single process gives. Then it

- binds the listen address once per worker slot (``bind_slots``: every address the host resolves to,
  each socket with SO_REUSEPORT, listening) and keeps every socket open. The kernel spreads new
  connections over the slots' sockets by a hash of their addresses: no shared accept queue that wakes
  every worker for each connection. Because the supervisor holds them, a slot's socket outlives its
  worker: the connections queued on it when a worker dies wait for the replacement instead of being
  reset, as they would be on a socket the dead worker had bound itself; the price is that they wait
  (about as long as a fork and a start, milliseconds) instead of going to another worker. A bind
  fault (the port taken) is found before any fork, and since it is the supervisor that listens, a
  second frontend on the same port is refused as before, not silently given a share of it;
- forks one worker per slot. A worker runs the whole frontend (``run_worker``) on its slot's sockets:
  its own event loop, cache, signer channels, status watching and readiness. Forked after the load, it
  starts from the supervisor's status data (pages shared copy-on-write) and checks the files again at
  once (a replacement may start long after them);
- forwards SIGHUP (every worker re-reads its status data; one still starting gets it once it serves)
  and SIGTERM/SIGINT: it closes its copies of the sockets (so nothing new queues once the workers close
  theirs), every worker stops as a single process does (``listen.shutdown_grace``), then it exits 0;
  a worker still running ``shutdown_grace`` + ``STOP_MARGIN`` seconds later is killed (exit 1);
- restarts a worker that dies while serving, at most ``RESTART_LIMIT`` times in ``RESTART_WINDOW``
  seconds: past that it stops the others and exits 1. A worker that fails before it first serves
  fails the start-up: the others are stopped and the supervisor exits 1 (2 when the worker did).

Signals reach the supervisor only through ``sigwaitinfo`` (they are blocked, so no handler runs
between two statements); a worker tells it "serving" with a queued real-time signal, which names the
sender. Workers write to the supervisor's stderr: one log, each line naming its worker (``worker N:``
after the level; the supervisor's say ``supervisor:``, shared.logs). Every worker gets SIGTERM when the supervisor dies (PR_SET_PDEATHSIG), however it
died, so none outlives it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from frontend.config import ListenConfig
from shared import logs

log = logging.getLogger("frontend.workers")

BACKLOG = 1024  # as a single process listens (frontend.http_app)
RESTART_LIMIT = 5  # deaths of serving workers within RESTART_WINDOW seconds the supervisor tolerates
RESTART_WINDOW = 60.0
STOP_MARGIN = 5.0  # seconds past listen.shutdown_grace before a worker that has not stopped is killed
READY = signal.SIGRTMIN  # worker -> supervisor: "serving"; real-time, so queued, each naming its sender
_STOPS = (signal.SIGTERM, signal.SIGINT)
_WAITED = {signal.SIGCHLD, signal.SIGHUP, *_STOPS, READY}
_PR_SET_PDEATHSIG = 1

# run_worker(number, sockets, ready) -> exit status, in the worker process: serve on ``sockets`` and
# call ``ready()`` once listening.
RunWorker = Callable[[int, Sequence[socket.socket], Callable[[], None]], int]


def _addresses(host: str, port: int) -> list[tuple[int, int, int, tuple[object, ...]]]:
    """What ``host`` resolves to for listening (as asyncio's create_server resolves it), in order, once each."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    seen: list[tuple[int, int, int, tuple[object, ...]]] = []
    for family, kind, proto, _, address in infos:
        if (family, kind, proto, address) not in seen:
            seen.append((family, kind, proto, address))
    return seen


def _listener(family: int, kind: int, proto: int, address: tuple[object, ...], *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio binds "::"
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_slots(host: str, port: int, count: int) -> list[list[socket.socket]]:
    """``count`` lists of listening sockets, one socket per address ``host`` resolves to in each, all on
    the same port (port 0: the one the kernel picked for the first) with SO_REUSEPORT. OSError when one
    cannot be bound, for instance because another process listens there: that is checked first with a
    socket that does not share (only SO_REUSEADDR, like a single-process frontend), since SO_REUSEPORT
    sockets of the same user would share the port with a second frontend instead of refusing it."""
    addresses = _addresses(host, port)
    if port != 0:
        for family, kind, proto, address in addresses:
            _listener(family, kind, proto, address, reuse_port=False).close()
    slots: list[list[socket.socket]] = []
    try:
        for _ in range(count):
            group = []
            slots.append(group)
            for i, (family, kind, proto, address) in enumerate(addresses):
                if slots[0] is not group:  # the port the first slot got (the same unless port 0)
                    address = (address[0], slots[0][i].getsockname()[1], *address[2:])
                sock = _listener(family, kind, proto, address, reuse_port=True)
                group.append(sock)
                sock.listen(BACKLOG)
    except BaseException:
        for group in slots:
            for sock in group:
                sock.close()
        raise
    return slots


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class Slot:
    number: int  # 1..workers, named in its worker's log lines
    sockets: list[socket.socket]
    pid: int | None = None
    serving: bool = False
    hup_pending: bool = False  # a SIGHUP came while its worker was starting


@dataclass
class Supervisor:
    listen: ListenConfig
    slots: list[Slot]
    run_worker: RunWorker
    restart_limit: int = RESTART_LIMIT
    restart_window: float = RESTART_WINDOW
    stop_margin: float = STOP_MARGIN
    pid: int = field(default_factory=os.getpid)
    deaths: deque[float] = field(default_factory=deque)
    started: bool = False  # every first worker has served
    _mask: set[signal.Signals] = field(default_factory=set)

    # -- the supervisor --------------------------------------------------------------------------------
    def run(self) -> int:
        """Fork the workers and look after them until told to stop; the exit status. Signals stay
        blocked afterwards: the process is about to exit, and a late READY must not end it."""
        self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)
        for slot in self.slots:
            self._spawn(slot)
        while True:
            infos = [signal.sigwaitinfo(_WAITED)]
            while (more := signal.sigtimedwait(_WAITED, 0)) is not None:
                infos.append(more)
            signos = {i.si_signo for i in infos}
            stop = next((s for s in _STOPS if s in signos), None)
            if stop is not None:
                log.info("%s: stopping the workers", signal.Signals(stop).name)
                return self._stop(0)
            for info in infos:
                if info.si_signo == READY:
                    self._serving(info.si_pid)
            if signal.SIGHUP in signos:
                self._hup()
            status = self._reap()
            if status is not None:
                return self._stop(status)

    def _spawn(self, slot: Slot) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                code = self._worker(slot)
            except KeyboardInterrupt:  # SIGINT (a terminal's Ctrl-C) before its loop took the signal
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # whatever ends a worker, it must not return to the supervisor's code
                log.exception("worker %d failed", slot.number)
            finally:
                logging.shutdown()
                sys.stderr.flush()
                os._exit(code)
        slot.pid, slot.serving = pid, False
        log.info("worker %d: started, pid %d", slot.number, pid)

    def _serving(self, pid: int) -> None:
        slot = next((s for s in self.slots if s.pid == pid), None)
        if slot is None or slot.serving:
            return
        slot.serving = True
        if slot.hup_pending:
            slot.hup_pending = False
            _signal(pid, signal.SIGHUP)
        if not self.started and all(s.serving for s in self.slots):
            self.started = True
            name = self.slots[0].sockets[0].getsockname()
            log.info("%d workers serving on port %d", len(self.slots), name[1])

    def _hup(self) -> None:
        log.info("SIGHUP: passing it to every worker")
        for slot in self.slots:
            if slot.pid is not None and slot.serving:
                _signal(slot.pid, signal.SIGHUP)
            elif slot.pid is not None:
                slot.hup_pending = True

    def _reap(self) -> int | None:
        """Collect exited workers and restart them; an exit status when the supervisor must give up."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == 0:
                return None
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if not slot.serving:  # its READY, sent before it exited, may have come after the last look
                while (info := signal.sigtimedwait({READY}, 0)) is not None:
                    self._serving(info.si_pid)
            slot.pid = None
            if not slot.serving and not self.started:
                log.error("worker %d (pid %d) %s before it served: stopping", slot.number, pid, _exit_text(code))
                return 2 if code == 2 else 1
            now = time.monotonic()
            self.deaths.append(now)
            while self.deaths and self.deaths[0] < now - self.restart_window:
                self.deaths.popleft()
            if len(self.deaths) > self.restart_limit:
                log.error("worker %d (pid %d) %s, the %dth worker to end within %.0fs: giving up", slot.number,
                          pid, _exit_text(code), len(self.deaths), self.restart_window)
                return 1
            log.error("worker %d (pid %d) %s: starting another", slot.number, pid, _exit_text(code))
            self._spawn(slot)

    def _stop(self, status: int) -> int:
        for slot in self.slots:
            for sock in slot.sockets:
                sock.close()
        for slot in self.slots:
            if slot.pid is not None:
                _signal(slot.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.listen.shutdown_grace + self.stop_margin
        while any(s.pid is not None for s in self.slots):
            left = deadline - time.monotonic()
            if left <= 0:
                for slot in self.slots:
                    if slot.pid is not None:
                        log.error("worker %d (pid %d) did not stop within %.0fs: killing it", slot.number,
                                  slot.pid, self.listen.shutdown_grace + self.stop_margin)
                        _signal(slot.pid, signal.SIGKILL)
                        os.waitpid(slot.pid, 0)
                        slot.pid = None
                return 1
            signal.sigtimedwait(_WAITED, left)  # a SIGCHLD, or anything else: look again
            while True:
                try:
                    pid, wait_status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                slot = next((s for s in self.slots if s.pid == pid), None)
                if slot is None:
                    continue
                slot.pid = None
                code = os.waitstatus_to_exitcode(wait_status)
                if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                    log.error("worker %d (pid %d) %s while stopping", slot.number, pid, _exit_text(code))
                    status = status or 1
        log.info("stopped")
        return status

    # -- in a worker -----------------------------------------------------------------------------------
    def _worker(self, slot: Slot) -> int:
        _die_with(self.pid)
        if os.getppid() != self.pid:  # the supervisor is gone already
            return 0
        for other in self.slots:
            if other is not slot:
                for sock in other.sockets:
                    sock.close()
        logs.set_worker(slot.number)
        signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)  # SIGHUP stays ignored until serving
        supervisor = self.pid
        return self.run_worker(slot.number, slot.sockets, lambda: os.kill(supervisor, READY))


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # exited meanwhile: reaped next


def _die_with(parent: int) -> None:
    """SIGTERM to this process when its parent dies (Linux; elsewhere a warning)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as e:
        log.warning("cannot ask to be stopped with the supervisor (pid %d): %s", parent, e)


def supervise(listen: ListenConfig, groups: list[list[socket.socket]], run_worker: RunWorker) -> int:
    """Fork one worker per group of sockets (``bind_slots``) and supervise them: the exit status."""
    slots = [Slot(number, group) for number, group in enumerate(groups, start=1)]
    logs.set_worker(logs.SUPERVISOR)
    return Supervisor(listen, slots, run_worker).run()
