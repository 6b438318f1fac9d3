"""``[signer] workers`` > 1: a supervisor and that many signer worker processes behind one address.

The supervisor holds no key and no token session, and imports neither gRPC nor PKCS#11. It

1. checks the plaintext rule and the addresses (``signer.startup.check_config``), then holds the
   listen address: a TCP port is first bound without sharing (another process holding it is refused),
   then reserved by a bound, non-listening SO_REUSEPORT socket (a configured port 0 resolved), which
   every worker's gRPC server joins; a ``unix:`` address is one listening socket (its mode, its
   private directory, signer.local_callers) that every worker accepts on;
2. starts each worker as ``ocsp-signer --config FILE --worker N ...`` (a fresh interpreter: PKCS#11
   does not survive a fork), with one control socketpair each (signer.control). A worker logs in to
   the token in its own session, writes its own audit chain (``<writer_id>.w<N>``), and reports
   ready with the responders it loaded (certificate fingerprint and generation); all must agree;
3. decides every change of the responders, so that every worker switches or none does, at one
   generation it counts (the frontend compares generations across the calls it spreads over the
   workers): an Admin Rotate reaching any worker, or SIGHUP, is prepared on every worker (each checks
   the candidate in its own session), persisted by one, then committed on all; any refusal aborts it
   on all. A change needs every worker running;
4. restarts a worker that dies (at most ``RESTART_LIMIT`` in ``RESTART_WINDOW``, then it stops
   everything and exits 1), with the current generation; a restarted worker that loads other
   responders than the running ones (files changed without SIGHUP) is stopped again and started by
   the next SIGHUP;
5. on SIGTERM or SIGINT stops every worker (each finishes its calls and closes its audit chain) and
   exits 0. A worker whose supervisor is gone (SIGKILL) stops by itself: its control channel ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from shared import logs
from shared.config import ConfigError
from signer.config import SignerConfig
from signer.control import ControlChannel, Message, refusal
from signer.startup import check_config
from signer.unix_socket import created_with_mode, make_private_dir, private_dir_for, remove_private_dir

log = logging.getLogger("ocsp-signer")

START_TIMEOUT = 120.0  # seconds a worker may take to log in, check every key and open its audit chain
PREPARE_TIMEOUT = 60.0  # seconds each worker may take to check a change of the responders
COMMIT_TIMEOUT = 10.0
METRICS_TIMEOUT = 5.0  # seconds each worker may take to send its metrics to a scrape
STOP_GRACE = 15.0  # seconds a stopping worker gets (its own grace is 5 s) before SIGKILL
RESTART_LIMIT = 5  # worker restarts within RESTART_WINDOW before the supervisor gives up
RESTART_WINDOW = 60.0
RESTART_DELAY = 1.0  # seconds before a dead worker is started again (a stop under way is awaited that long)


@dataclass(eq=False)
class Worker:
    number: int
    process: asyncio.subprocess.Process
    channel: ControlChannel
    ready: asyncio.Future[Message] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def serving(self) -> bool:
        return self.ready.done() and not self.ready.cancelled() and self.process.returncode is None


class Supervisor:
    def __init__(self, config: SignerConfig, *, log_level: str = "INFO") -> None:
        self.config = config
        self.log_level = log_level  # --log-level, passed on to every worker
        self.count = config.workers
        self.workers: dict[int, Worker] = {}
        self.held: set[int] = set()  # slots stopped for loading other responders: restarted on SIGHUP
        self.generation = 1
        # CA -> [responder certificate SHA-256, its generation]: what every worker signs with
        self.responders: dict[str, list[Any]] | None = None
        self.lock = asyncio.Lock()  # one change of the responders (or one restart) at a time
        self.stopping = asyncio.Event()
        self.port: int | None = None
        self._reserved: socket.socket | None = None  # TCP: the bound SO_REUSEPORT socket
        self._public: socket.socket | None = None  # unix: the listening socket every worker accepts on
        self._public_inode: tuple[int, int] | None = None
        self._txns = itertools.count(1)
        self._restarts: deque[float] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.failed: int | None = None  # the exit status when the supervisor gives up
        self.started = False  # every worker was ready once: from then on a dead worker is started again
        self.metrics_server: asyncio.AbstractServer | None = None

    # -- the listen address ------------------------------------------------------------------------------
    def hold_address(self) -> None:
        listen = self.config.listen
        if listen.kind == "unix":
            assert listen.path is not None
            make_private_dir(private_dir_for(listen.path))
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(listen.path)  # stale: check_config found nobody listening there
            with created_with_mode(listen.path, listen.socket_mode):
                sock.bind(str(listen.path))
            st = os.lstat(listen.path)
            self._public_inode = (st.st_dev, st.st_ino)
            sock.listen(128)
            sock.set_inheritable(True)
            self._public = sock
            return
        family, kind, proto, _, address = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM,
                                                            flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:  # no sharing: a port another process holds fails
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
            address = (address[0], probe.getsockname()[1], *address[2:])
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        self._reserved = sock
        self.port = sock.getsockname()[1]

    def release_address(self) -> None:
        if self._reserved is not None:
            self._reserved.close()
        if self._public is not None:
            self._public.close()
            path = self.config.listen.path
            assert path is not None
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == self._public_inode:
                    os.unlink(path)
            remove_private_dir(private_dir_for(path))

    @property
    def address(self) -> str:
        return self.config.listen.at_port(self.port or 0)

    # -- workers -------------------------------------------------------------------------------------------
    async def spawn(self, number: int) -> Worker:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [sys.executable, "-m", "signer", "--config", str(self.config.file), "--worker", str(number),
                "--generation", str(self.generation), "--control-fd", str(child.fileno()),
                "--log-level", self.log_level]
        fds = [child.fileno()]
        if self._public is not None:
            argv += ["--listen-fd", str(self._public.fileno())]
            fds.append(self._public.fileno())
        if self.port is not None:
            argv += ["--port", str(self.port)]
        if self.responders:
            argv += ["--responder-generations", json.dumps({ca: g for ca, (_, g) in self.responders.items()})]
        try:
            process = await asyncio.create_subprocess_exec(*argv, pass_fds=fds, stdin=asyncio.subprocess.DEVNULL)
        finally:
            child.close()
        channel = ControlChannel(parent, name=f"supervisor (worker {number})")
        worker = Worker(number, process, channel)
        channel.handler = lambda message: self.on_request(worker, message)
        channel.on_notice = lambda message: self.on_notice(worker, message)
        await channel.start()
        self.workers[number] = worker
        self._spawn_task(self.watch(worker))
        log.info("worker %d: started, pid %d", number, process.pid)
        return worker

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_notice(self, worker: Worker, message: Message) -> None:
        if message.get("op") == "ready" and not worker.ready.done():
            worker.ready.set_result(message)

    async def watch(self, worker: Worker) -> None:
        """Wait for ``worker`` to exit; start it again unless stopping (or it is held)."""
        status = await worker.process.wait()
        await worker.channel.close()
        if not worker.ready.done():
            worker.ready.set_exception(ChildProcessError(f"worker {worker.number} exited with status {status} "
                                                         "before it was ready"))
        if not self.stopping.is_set() and self.started:
            # A stop signal sent to the whole service (the terminal's process group, systemd) may reach
            # a worker before the supervisor: not a death to answer with a restart.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), RESTART_DELAY)
        if (self.stopping.is_set() or not self.started or worker.number in self.held
                or self.workers.get(worker.number) is not worker):
            return  # (a worker that fails during the start fails the start)
        log.error("worker %d (pid %d) exited with status %d; starting it again", worker.number,
                  worker.process.pid, status)
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts and self._restarts[0] < now - RESTART_WINDOW:
            self._restarts.popleft()
        if len(self._restarts) > RESTART_LIMIT:
            log.critical("%d worker restarts within %.0f s: stopping the signer", len(self._restarts),
                         RESTART_WINDOW)
            self.failed = 1
            self.stopping.set()
            return
        async with self.lock:  # never while a change of the responders is under way
            await self.restart(worker.number)

    async def restart(self, number: int) -> None:
        """Start worker ``number`` (again); stop it when it loads other responders than the others."""
        worker = await self.spawn(number)
        try:
            ready = await asyncio.wait_for(asyncio.shield(worker.ready), START_TIMEOUT)
        except (ChildProcessError, TimeoutError) as e:
            log.error("worker %d: not ready: %s", number, e or "timed out")
            await self.stop_worker(worker)
            return
        problem = self.disagreement(ready)
        if problem is not None:
            log.error("worker %d loaded %s; stopped again: send SIGHUP to load the changed files into every "
                      "worker (it is started again then)", number, problem)
            self.held.add(number)
            await self.stop_worker(worker)
            return
        log.info("worker %d: serving again (pid %d, generation %d)", number, worker.process.pid, self.generation)

    def disagreement(self, ready: Message) -> str | None:
        loaded = ready.get("responders") or {}
        if self.responders is None or loaded == self.responders:
            return None
        differ = sorted(ca for ca in set(loaded) | set(self.responders) if loaded.get(ca) != self.responders.get(ca))
        return "other responders than the running ones: " + "; ".join(
            f"CA {ca!r} {_described(loaded.get(ca))} (running: {_described(self.responders.get(ca))})" for ca in differ)

    async def stop_worker(self, worker: Worker) -> None:
        if worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(worker.process.wait(), STOP_GRACE)
            except TimeoutError:
                log.error("worker %d (pid %d) did not stop within %.0f s: killed", worker.number,
                          worker.process.pid, STOP_GRACE)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
        await worker.channel.close()

    # -- start and stop --------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the workers one after the other (two processes logging in to a SoftHSM token at the
        same instant can fail: its token files are rewritten at login), each ready before the next.
        Raises ChildProcessError (with the exit status of a worker that failed: 2 for a configuration
        error) or RuntimeError."""
        for number in range(self.count):
            worker = await self.spawn(number)
            try:
                ready = await asyncio.wait_for(asyncio.shield(worker.ready), START_TIMEOUT)
            except (ChildProcessError, TimeoutError) as e:
                status = worker.process.returncode
                raise ChildProcessError(status if status else 1,
                                        f"worker {number} did not start: {e or 'timed out'}") from None
            if self.responders is None:
                self.responders = ready.get("responders") or {}
            problem = self.disagreement(ready)
            if problem is not None:
                raise RuntimeError(f"worker {number} loaded {problem} (files changed during the start?)")
        self.started = True

    async def start_metrics(self) -> None:
        """``[metrics] address``: one endpoint for all workers, served here; each scrape asks every
        running worker for its families (signer.metrics.merged)."""
        address = self.config.metrics.address
        if address is None:
            return
        from shared.metrics_http import start_endpoint
        from signer.metrics import merged

        async def scrape() -> bytes:
            workers = [w for w in self.workers.values() if w.serving]
            replies = await self._each(workers, "metrics", METRICS_TIMEOUT)
            texts = [str(r["text"]) for r in replies if r.get("ok")]
            return merged(texts, self.count - len(texts))

        try:
            self.metrics_server = await start_endpoint(scrape, address=address)
        except OSError as e:
            raise ConfigError(self.config.file, "metrics.address",
                              f"cannot listen on {address}: {e.strerror or e}") from None
        log.info("metrics of every worker on http://%s/metrics", address)

    async def stop(self) -> None:
        self.stopping.set()
        if self.metrics_server is not None:
            self.metrics_server.close()
        await asyncio.gather(*(self.stop_worker(w) for w in self.workers.values()))
        for task in list(self._tasks):
            task.cancel()

    # -- changes of the responders ------------------------------------------------------------------------
    def _not_serving(self, slots: Any) -> str | None:
        missing = [n for n in slots if n not in self.workers or not self.workers[n].serving]
        if missing:
            return f"worker {', '.join(map(str, missing))} not running (restarting, or held: see the log)"
        return None

    @staticmethod
    async def _each(workers: list[Worker], op: str, timeout: float, **fields: Any) -> list[Message]:
        """``op`` on each of ``workers`` at once; a worker that cannot answer gives a refusal."""
        replies = await asyncio.gather(*(w.channel.request(op, timeout, **fields) for w in workers),
                                       return_exceptions=True)
        out = []
        for worker, reply in zip(workers, replies, strict=True):
            if isinstance(reply, BaseException):
                why = "timed out" if isinstance(reply, TimeoutError) else str(reply)
                reply = refusal("UNAVAILABLE", f"worker {worker.number}: {why}")
            out.append(dict(reply, worker=worker.number))
        return out

    async def on_request(self, worker: Worker, message: Message) -> Message:
        if message.get("op") != "rotate":
            return refusal("UNIMPLEMENTED", f"unknown control request {message.get('op')!r}")
        return await self.rotate(str(message.get("ca", "")), str(message.get("cert", "")),
                                 str(message.get("key_label", "")), via=worker.number)

    async def rotate(self, ca: str, cert: str, key_label: str, *, via: int) -> Message:
        """An Admin Rotate that reached worker ``via``: on every worker, or on none."""
        async with self.lock:
            missing = self._not_serving(range(self.count))
            if missing is not None:
                return refusal("UNAVAILABLE", f"not rotating: {missing}; try again")
            workers = [self.workers[n] for n in range(self.count)]
            txn, generation = next(self._txns), self.generation + 1
            prepared = await self._each(workers, "prepare_rotation", PREPARE_TIMEOUT, txn=txn, ca=ca, cert=cert,
                                        key_label=key_label, generation=generation)
            refused = next((r for r in prepared if not r.get("ok")), None)
            if refused is None and len({r["fingerprint"] for r in prepared}) != 1:
                refused = refusal("FAILED_PRECONDITION", "the workers read different certificates")
            if refused is None:
                refused = (await self._each(workers[:1], "persist", PREPARE_TIMEOUT, txn=txn))[0]
                notes = refused.get("notes", [])
                if refused.get("ok"):
                    refused = None
            if refused is not None:
                await self._each(workers, "abort", COMMIT_TIMEOUT, txn=txn)
                log.error("rotation of CA %r (Admin RPC on worker %d) refused by worker %s, no worker switched: "
                          "%s", ca, via, refused.get("worker", "?"), refused.get("message"))
                return refusal(str(refused.get("code", "UNKNOWN")), str(refused.get("message", "")))
            await self._commit(workers, txn, generation, f"rotation of CA {ca!r}")
            return {"ok": True, "generation": generation, "notes": notes,
                    "fingerprint": prepared[0]["fingerprint"], "key_label": prepared[0].get("key_label", "")}

    async def _commit(self, workers: list[Worker], txn: int, generation: int, what: str) -> None:
        committed = await self._each(workers, "commit", COMMIT_TIMEOUT, txn=txn)
        self.generation = generation
        good = [r for r in committed if r.get("ok")]
        if good:
            self.responders = good[0].get("responders") or {}
        for r in committed:
            if not r.get("ok"):  # it died meanwhile: started again from the files, which say the same
                log.error("%s: worker %s did not confirm the switch: %s", what, r["worker"], r.get("message"))
        log.info("%s: every worker signs with generation %d now", what, generation)

    async def reload(self) -> None:
        """SIGHUP: every worker re-reads its status data, then the responders change on every running
        worker or none, then the held workers (stopped for loading other files) start again."""
        async with self.lock:
            running = [w for n, w in sorted(self.workers.items()) if n not in self.held and w.serving]
            await self._each(running, "reload_status", PREPARE_TIMEOUT)
            missing = self._not_serving(n for n in range(self.count) if n not in self.held)
            if missing is None:
                await self._reload_responders(running)
            else:
                log.error("SIGHUP: responders not reloaded: %s", missing)
            for number in sorted(self.held):
                self.held.discard(number)
                await self.restart(number)

    async def _reload_responders(self, workers: list[Worker]) -> None:
        txn, generation = next(self._txns), self.generation + 1
        plans = await self._each(workers, "prepare_reload", PREPARE_TIMEOUT, txn=txn, generation=generation)
        refused = next((r for r in plans if not r.get("ok")), None)
        shapes = {(tuple(r.get("changed", ())), tuple(r.get("removed", ())),
                   json.dumps(r.get("responders"), sort_keys=True)) for r in plans if r.get("ok")}
        if refused is not None or len(shapes) != 1:
            await self._each(workers, "abort", COMMIT_TIMEOUT, txn=txn)
            why = (f"worker {refused['worker']}: {refused.get('message')}" if refused is not None
                   else "the workers read different files (changed during the reload?); send SIGHUP again")
            log.error("SIGHUP: reload refused on every worker, responders unchanged (generation %d): %s",
                      self.generation, why)
            return
        if not plans or (not plans[0].get("changed") and not plans[0].get("removed")):
            await self._each(workers, "abort", COMMIT_TIMEOUT, txn=txn)
            return
        await self._commit(workers, txn, generation, "SIGHUP reload")

    # -- the whole run -------------------------------------------------------------------------------------
    async def run(self) -> int:
        check_config(self.config)
        try:
            self.hold_address()
        except (OSError, ValueError) as e:
            raise ConfigError(self.config.file, "listen.address",
                              f"cannot listen on {self.config.listen.address}: {getattr(e, 'strerror', None) or e}"
                              ) from None
        loop = asyncio.get_running_loop()
        received: list[signal.Signals] = []

        def on_stop(sig: signal.Signals) -> None:
            received.append(sig)
            self.stopping.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop, sig)
        try:
            await self.start_metrics()  # before any worker: a port taken fails the start at once
            try:
                await self.start()
            except (ChildProcessError, RuntimeError) as e:
                log.error("%s; stopping", e.args[-1])
                await self.stop()
                return e.args[0] if isinstance(e, ChildProcessError) and isinstance(e.args[0], int) else 1
            loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn_task(self._sighup()))
            log.info("serving on %s: %d workers (pids %s), generation %d", self.address, self.count,
                     ", ".join(str(w.process.pid) for w in self.workers.values()), self.generation)
            await self.stopping.wait()
            if received:
                log.info("%s: stopping the workers", received[0].name)
            await self.stop()
            log.info("stopped")
            return self.failed or 0
        finally:
            self.release_address()

    async def _sighup(self) -> None:
        log.info("SIGHUP: re-reading %s and the ca.d [responder] tables, and the status data, in every worker",
                 self.config.file)
        await self.reload()


def _described(responder: list[Any] | None) -> str:
    if not responder:
        return "none"
    fingerprint, generation = responder
    return f"certificate SHA-256 {str(fingerprint)[:16]}…, generation {generation}"


def supervise(config: SignerConfig, log_level: str = "INFO") -> int:
    """``ocsp-signer`` with ``[signer] workers`` > 1: run the supervisor until stopped; the exit status.
    Its log lines say "supervisor:", its workers' (started with ``log_level``) "worker N:" (shared.logs)."""
    logs.set_worker(logs.SUPERVISOR)
    return asyncio.run(Supervisor(config, log_level=log_level).run())
