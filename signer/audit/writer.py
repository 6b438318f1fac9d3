"""The audit log writer: one hash chain per writer_id, group commit, rotation of files, resume from the
files on open, fail-closed. The line format is ``signer.audit.format``.

Several signer processes each open their own writer (distinct ``writer_id``, e.g. host name and
worker number) on the same directory: file names, records and checkpoint origins carry the writer
id, so each process's stream is verified on its own. A writer holds ``<dir>/.audit-<writer_id>.lock``
(flock) while open; a second process opening the same writer_id there is refused (``WriterBusy``).

Durability
----------
``append`` queues the record and returns once a group commit that contains it has been written and
fsynced (group commit: appends that arrive while one write+fsync runs share the next one). File I/O
runs on the log's own thread; checkpoint signatures run on the ``executor`` given (the signer's
token thread). When a write fails, the group is rolled back (the file truncated to its last durable
length, a file created for it removed), every append in it raises ``AuditUnavailable``, and the next
append tries again: the log fails closed and recovers by itself when the disk does.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from shared.audit import checkpoint as cpt
from shared.audit.merkle import CompactRange, leaf_hash
from shared.clock import Clock
from shared.metrics import Buckets
from signer.audit.format import (
    FILE_RE,
    RECORD_TYPES,
    WRITER_RE,
    ZERO_HASH,
    CheckpointPolicy,
    Record,
    checkpoint_body,
    checkpoint_line,
    decode_header,
    decode_record,
    encode_record,
    header_line,
    note_policy,
    origin_for,
    parse_line,
    required_field,
)
from signer.mechanisms import SignatureAlgorithm, algorithm_for_key

log = logging.getLogger("signer.audit")


class AuditUnavailable(Exception):
    """The audit log cannot record a signature; the signer must refuse to sign."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WriterBusy(AuditUnavailable):
    """Another process holds this writer_id's lock on the directory."""


def _lock_writer(directory: Path, writer: str) -> int:
    """Take ``<dir>/.audit-<writer>.lock`` (flock, exclusive, non-blocking) for the log's life: two
    processes appending to one chain would corrupt it. The kernel drops the lock when the process dies.
    Raises AuditUnavailable when the directory or the lock file cannot be created (WriterBusy: taken)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AuditUnavailable(_os_reason(f"create the audit directory {directory}", e)) from None
    path = directory / f".audit-{writer}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as e:
        raise AuditUnavailable(_os_reason(f"create the writer lock {path}", e)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WriterBusy(f"another process is writing the audit chain of writer_id {writer!r} in {directory} "
                         f"(it holds {path}); give each signer process its own audit.writer_id") from None
    except OSError:
        os.close(fd)
        raise
    return fd



# -- checkpoint signers -----------------------------------------------------------------------------

class CheckpointSigner(Protocol):
    algorithm: SignatureAlgorithm
    public_key_spki: bytes

    def sign(self, data: bytes) -> bytes:
        """X.509-ready signature of ``data`` (blocking; run on the token thread)."""
        ...


class Pkcs11CheckpointSigner:
    """The audit key in the token. Construct it where token calls are allowed (it reads the public
    key), i.e. on the signer's token thread or before the server starts."""

    def __init__(self, token: Any, key_label: str) -> None:
        self._token = token
        self.key_label = key_label
        self.public_key_spki: bytes = token.public_key(key_label)
        self.algorithm: SignatureAlgorithm = algorithm_for_key(self.public_key_spki)

    def sign(self, data: bytes) -> bytes:
        return self._token.sign(self.key_label, self.algorithm, data)


# -- the writer ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FileIO:
    """The system calls the writer makes, injectable for tests (fault injection, fsync counting)."""

    open: Callable[..., int] = os.open
    write: Callable[[int, bytes | memoryview], int] = os.write
    fsync: Callable[[int], None] = os.fsync


@dataclass(slots=True)
class _State:
    rng: CompactRange = field(default_factory=CompactRange)
    head: bytes = ZERO_HASH
    seq: int = 0
    path: Path | None = None
    file_bytes: int = 0
    file_records: int = 0
    file_day: date | None = None
    uncovered: int = 0
    uncovered_since: datetime | None = None
    checkpoint_note: str | None = None
    # The policy the newest checkpoint states: the records after it were written under it.
    checkpoint_policy: CheckpointPolicy | None = None

    def add_record(self, line: bytes, time: datetime) -> None:
        """One record line joins the chain, the tree and the uncovered run. The writer and the resume
        scan both go through here, so a resumed log continues exactly where the writer stopped."""
        h = leaf_hash(line)
        self.rng.append(h)
        self.head = h
        self.file_records += 1
        if self.uncovered == 0:
            self.uncovered_since = time
        self.uncovered += 1

    def copy(self) -> _State:
        return _State(self.rng.copy(), self.head, self.seq, self.path, self.file_bytes, self.file_records,
                      self.file_day, self.uncovered, self.uncovered_since, self.checkpoint_note,
                      self.checkpoint_policy)


@dataclass(slots=True)
class _Segment:
    path: Path
    new: bool
    start: int  # file length before this segment
    chunks: list[bytes] = field(default_factory=list)


def _os_reason(action: str, e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, "")
    return f"cannot {action}: {e.strerror or e}{f' ({name})' if name else ''}"


def _scan(directory: Path, writer: str) -> _State:
    """The writer's state from its newest file. Repairs a torn last line (never acknowledged: a group
    is acknowledged only after its fsync) and removes a file a crash left without a header."""
    try:
        names = sorted((int(m["seq"]), p) for p in directory.iterdir()
                       if (m := FILE_RE.fullmatch(p.name)) and m["writer"] == writer)
    except FileNotFoundError:
        return _State()
    while names:
        seq, path = names[-1]
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            log.warning("audit: %s ends in a torn line (crash during a write); removing %d bytes",
                        path, len(data) - end)
            os.truncate(path, end)
            data = data[:end]
        if not data:
            log.warning("audit: removing %s, created but never written (crash)", path)
            path.unlink()
            names.pop()
            continue
        lines = data[:-1].split(b"\n")
        try:
            hw, hseq, created, rng, head = decode_header(parse_line(lines[0]))
        except ValueError as e:
            raise AuditUnavailable(f"{path}:1: bad file header ({e}); run `ocspctl audit verify`") from None
        if hw != writer or hseq != seq:
            raise AuditUnavailable(f"{path}:1: header names writer {hw!r} seq {hseq}, not {writer!r} {seq}")
        st = _State(rng=rng, head=head, seq=seq, path=path, file_bytes=len(data), file_day=created.date())
        for n, raw in enumerate(lines[1:], start=2):
            try:
                obj = parse_line(raw)
                if obj["type"] in RECORD_TYPES:
                    w, index, prev, record = decode_record(obj)
                    if w != writer or index != st.rng.size or prev != st.head:
                        raise ValueError("record does not continue the hash chain")
                    st.add_record(raw, record.time)
                elif obj["type"] == "checkpoint":
                    if required_field(obj, "index", int) == st.rng.size:
                        st.uncovered, st.uncovered_since = 0, None
                        st.checkpoint_note = required_field(obj, "note", str)
                        st.checkpoint_policy = note_policy(st.checkpoint_note)
                else:
                    raise ValueError("a file header in the middle of a file")
            except ValueError as e:
                raise AuditUnavailable(f"{path}:{n}: {e}; refusing to extend a damaged log "
                                       "(run `ocspctl audit verify`, move the files aside)") from None
        if st.checkpoint_note is None:  # none in the newest file: the last one is in an older file
            st.checkpoint_note, st.checkpoint_policy = _last_checkpoint([p for _, p in names[:-1]])
        return st
    return _State()


def _last_checkpoint(paths: list[Path]) -> tuple[str | None, CheckpointPolicy | None]:
    """The newest checkpoint note (and its policy) in ``paths`` (oldest first)."""
    for path in reversed(paths):
        for raw in reversed(path.read_bytes().split(b"\n")):
            if b'"type":"checkpoint"' not in raw:
                continue
            try:
                note = required_field(parse_line(raw), "note", str)
            except ValueError:
                continue
            return note, note_policy(note)
    return None, None


class AuditLog:
    def __init__(self, directory: Path, writer_id: str, signer: CheckpointSigner | None, policy: CheckpointPolicy,
                 max_file_bytes: int, clock: Clock, executor: Executor | None, file_io: FileIO) -> None:
        self._dir = directory
        self._writer = writer_id
        self._signer = signer
        self._policy = policy
        self._max_bytes = max_file_bytes
        self._clock = clock
        self._io_executor = ThreadPoolExecutor(1, thread_name_prefix=f"audit-{writer_id}")
        self._token_executor = executor or self._io_executor
        self._io = file_io
        self._state = _State()
        self._fd: int | None = None
        self._fd_path: Path | None = None
        self._resync = False
        self._pending: list[tuple[Record | None, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False
        self._lock_fd: int | None = None  # flock on <dir>/.audit-<writer_id>.lock, held until close()
        self.failure: str | None = None  # the last write failure, None once a write succeeds again
        self.commits = 0  # groups written (each one write+fsync per file touched)
        self.write_seconds = Buckets()  # each group's write+fsync (metrics)
        self.write_failures = 0  # groups that failed: every append in them refused (metrics)
        self._group_window = 0.0
        self._last_write = -1e9  # loop time the last group write ended (the window applies only soon after it)
        # Records on their way (the signer's signatures in flight, each of which appends one), when
        # told: the window then waits only for those, and only until they are all queued.
        self.expected: Callable[[], int] | None = None
        self._gathered: asyncio.Future[None] | None = None
        self._created: list[Path] = []  # files this log created (``abandon`` removes them)
        self._opened_size = 0  # records in the chain when it was opened

    @classmethod
    async def open(cls, directory: Path, *, writer_id: str, signer: CheckpointSigner | None,
                   checkpoint_every: int, checkpoint_interval: timedelta, max_file_bytes: int,
                   clock: Clock, executor: Executor | None = None, file_io: FileIO | None = None,
                   group_window: float = 0.0) -> AuditLog:
        """Resume ``writer_id``'s chain from its files in ``directory`` (created on first write).

        ``executor``: where checkpoint signatures run (the signer's token thread); default the log's
        own I/O thread. ``file_io``: system-call hooks (tests). ``group_window``: at most how long
        a group write waits for more appends (``_gather``): for the records ``expected`` says are on
        their way, until they are all queued; without ``expected``, the whole window but only when
        the previous write ended less than a window ago (a busy log). Either way an idle signer adds
        no delay. 0 writes as soon as the previous fsync is done. Under load a few ms gathers several
        times more records per fsync.

        Raises AuditUnavailable when the existing files cannot be read or do not form a chain.
        """
        if not WRITER_RE.fullmatch(writer_id):
            raise ValueError("writer_id: 1-64 of A-Z a-z 0-9 . _")
        if checkpoint_every < 1 or checkpoint_interval <= timedelta(0) or max_file_bytes < 4096:
            raise ValueError("checkpoint_every >= 1, checkpoint_interval > 0, max_file_bytes >= 4096")
        self = cls(Path(directory), writer_id, signer, CheckpointPolicy(checkpoint_every, checkpoint_interval),
                   max_file_bytes, clock, executor, file_io or FileIO())
        self._group_window = max(0.0, group_window)
        loop = asyncio.get_running_loop()
        unwritable: str | None = None
        try:
            try:
                self._lock_fd = await loop.run_in_executor(self._io_executor, _lock_writer, self._dir, writer_id)
            except WriterBusy:
                raise
            except AuditUnavailable as e:  # read-only or no permission: no write can happen before the lock is taken
                unwritable = e.reason
                log.warning("audit: %s; the writer lock is taken before the first write", e.reason)
            self._state = await loop.run_in_executor(self._io_executor, _scan, self._dir, writer_id)
        except OSError as e:
            self._release_lock()
            self._io_executor.shutdown(wait=False)
            # A directory that could not be created cannot be read either: say what failed first.
            raise AuditUnavailable(unwritable or _os_reason(f"read the audit log in {directory}", e)) from None
        except AuditUnavailable:
            self._release_lock()
            self._io_executor.shutdown(wait=False)
            raise
        self._opened_size = self._state.rng.size
        if signer is not None:
            st = self._state
            if st.uncovered or (st.checkpoint_note is not None and st.checkpoint_policy != self._policy):
                # Records the last run left uncovered get a checkpoint under the policy they were written
                # under; a changed policy gets a checkpoint of its own before any new record.
                try:
                    await self.checkpoint()
                except AuditUnavailable as e:
                    log.warning("audit: cannot checkpoint the records left by the last run yet: %s", e)
            tick = min(max(checkpoint_interval.total_seconds() / 4, 0.05), 60.0)
            self._ticker = loop.create_task(self._tick(tick))
        return self

    async def check_writable(self) -> None:
        """Raise AuditUnavailable (WriterBusy) unless the next write can happen: this writer's lock is
        held (taken now if ``open`` could not), the directory accepts a new file, and the current file
        opens for appending. Writes nothing to the log (the signer's start-up check)."""
        await asyncio.get_running_loop().run_in_executor(self._io_executor, self._check_writable)

    def _check_writable(self) -> None:
        if self._lock_fd is None:
            self._lock_fd = _lock_writer(self._dir, self._writer)
        probe = self._dir / f".audit-{self._writer}.probe"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
            os.unlink(probe)
        except OSError as e:
            raise AuditUnavailable(_os_reason(f"create files in the audit directory {self._dir}", e)) from None
        if self._state.path is not None:
            try:
                os.close(os.open(self._state.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
            except OSError as e:
                raise AuditUnavailable(_os_reason(f"write the audit log {self._state.path}", e)) from None

    # -- public -------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Durable records in this writer's chain."""
        return self._state.rng.size

    @property
    def closed(self) -> bool:
        """``close`` or ``abandon`` was called."""
        return self._closed

    @property
    def latest_checkpoint(self) -> str | None:
        """The newest signed checkpoint note; ship it off the host to make truncation detectable."""
        return self._state.checkpoint_note

    def append(self, record: Record) -> asyncio.Future[None]:
        """Queue ``record`` for the next group commit. The future is done once the record is durable,
        and raises AuditUnavailable when it could not be written. A plain function returning the
        future, not a coroutine: the signer gathers a batch's appends without a task for each."""
        if self._closed:
            closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            closed.set_exception(AuditUnavailable("the audit log is closed"))
            return closed
        return self._enqueue(record)

    async def checkpoint(self) -> str | None:
        """Write a checkpoint now if records are uncovered (or the log has none yet); return the
        newest checkpoint note."""
        if self._signer is None:
            return None
        await self._enqueue(None)
        return self._state.checkpoint_note

    async def close(self) -> None:
        """Write a final checkpoint and release the files."""
        if self._closed:
            return
        try:
            if self._signer is not None and self._state.rng.size:
                await self._enqueue(None)
        finally:
            self._closed = True
            if self._ticker is not None:
                self._ticker.cancel()
            if self._task is not None:
                await asyncio.gather(self._task, return_exceptions=True)
            await asyncio.get_running_loop().run_in_executor(self._io_executor, self._close_fd)
            self._io_executor.shutdown(wait=True)
            self._release_lock()

    async def abandon(self) -> None:
        """Release the log after a failed start: as ``close``, but when no record was appended since
        ``open``, without a final checkpoint, and the files this log created are removed (they hold a
        file header and the genesis checkpoint only), so a signer that never served leaves no empty
        audit file behind. Once a record is in, this is ``close``: records are never removed."""
        if self._closed:
            return
        if self._state.rng.size != self._opened_size:
            await self.close()
            return
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._io_executor, self._remove_created)
        self._io_executor.shutdown(wait=True)
        self._release_lock()

    def _remove_created(self) -> None:
        self._close_fd()
        for path in self._created:
            try:
                path.unlink(missing_ok=True)
                log.debug("audit: removed %s (this start failed before any record went into it)", path)
            except OSError as e:
                log.warning("audit: cannot remove %s, which no record went into: %s", path, e.strerror or e)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            try:
                os.close(self._lock_fd)  # closing the only descriptor releases the flock
            except OSError:
                pass
            self._lock_fd = None

    def __del__(self) -> None:
        self._release_lock()  # a log dropped without close() (its process is as good as dead)

    # -- group commit ---------------------------------------------------------------------------------
    def _enqueue(self, item: Record | None) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append((item, fut))
        gathered = self._gathered
        if gathered is not None and not gathered.done() and self.expected is not None \
                and self.expected() <= len(self._pending):
            gathered.set_result(None)
        if self._task is None:
            self._task = loop.create_task(self._commit_loop())
        return fut

    async def _tick(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            st = self._state
            if (st.uncovered and st.uncovered_since is not None
                    and self._clock.now() - st.uncovered_since >= self._policy.interval):
                fut = self._enqueue(None)
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait, at most the group window, for appends worth sharing the next write."""
        expected = self.expected
        if expected is None:
            if loop.time() - self._last_write < self._group_window:
                await asyncio.sleep(self._group_window)
            return
        if expected() <= len(self._pending):
            return  # nothing else is being signed: write now
        self._gathered = loop.create_future()
        try:
            await asyncio.wait_for(self._gathered, self._group_window)
        except TimeoutError:
            pass
        finally:
            self._gathered = None

    async def _commit_loop(self) -> None:
        try:
            while self._pending:
                loop = asyncio.get_running_loop()
                if self._group_window:
                    await self._gather(loop)
                batch, self._pending = self._pending, []
                try:
                    try:
                        await self._commit(batch)
                    except AuditUnavailable:
                        raise
                    except Exception as e:  # a bug must not leave appends waiting, nor pass as durable
                        log.exception("audit: commit failed")
                        raise AuditUnavailable(f"internal error in the audit log: {e!r}") from None
                    finally:
                        self._last_write = loop.time()
                except AuditUnavailable as e:
                    self.write_failures += 1
                    if self.failure is None:
                        log.error("audit log unavailable, refusing to sign: %s", e.reason)
                    self.failure = e.reason
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                if self.failure is not None:
                    log.warning("audit log writable again (was: %s)", self.failure)
                    self.failure = None
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            self._task = None
            for _, fut in self._pending if self._closed else ():
                if not fut.done():
                    fut.set_exception(AuditUnavailable("the audit log is closed"))

    async def _commit(self, batch: Sequence[tuple[Record | None, asyncio.Future[None]]]) -> None:
        loop = asyncio.get_running_loop()
        if self._resync:
            try:
                self._state = await loop.run_in_executor(self._io_executor, self._reload)
            except OSError as e:
                raise AuditUnavailable(_os_reason(f"re-read the audit log in {self._dir}", e)) from None
            self._resync = False
        st = self._state.copy()
        segments: list[_Segment] = []
        now = self._clock.now()
        today = now.astimezone(UTC).date()
        every, interval = self._policy.every, self._policy.interval
        checkpointing = self._signer is not None
        for record, _ in batch:
            if checkpointing and st.checkpoint_note is not None and st.checkpoint_policy != self._policy:
                await self._adopt_policy(st, segments, now)
            if record is None:
                # An explicit checkpoint; on a writer that has none yet (a new log) this is the
                # genesis checkpoint, so an honest log always carries at least one signed note.
                if st.uncovered or st.checkpoint_note is None:
                    await self._add_checkpoint(st, segments, now)
                continue
            if checkpointing and st.uncovered and (
                    st.uncovered >= every or record.time - st.uncovered_since >= interval):  # type: ignore[operator]
                await self._add_checkpoint(st, segments, now)
            line = encode_record(record, self._writer, st.rng.size, st.head)
            self._place(st, segments, line, now, today)
            st.add_record(line, record.time)
            if checkpointing and st.uncovered >= every:
                await self._add_checkpoint(st, segments, now)
        if segments:
            started = time.perf_counter()
            await loop.run_in_executor(self._io_executor, self._write, segments)
            self.write_seconds.observe(time.perf_counter() - started)
            self.commits += 1
        self._state = st

    def _place(self, st: _State, segments: list[_Segment], line: bytes, now: datetime, today: date) -> None:
        if st.path is None or st.file_day != today or (
                st.file_records and st.file_bytes + len(line) + 1 > self._max_bytes):
            st.seq += 1
            st.path = self._dir / f"audit-{self._writer}-{st.seq:08d}-{today:%Y%m%d}.jsonl"
            st.file_day, st.file_bytes, st.file_records = today, 0, 0
            segments.append(_Segment(st.path, True, 0))
            self._put(st, segments, header_line(self._writer, st.seq, now, st.rng, st.head))
        self._put(st, segments, line)

    @staticmethod
    def _put(st: _State, segments: list[_Segment], line: bytes) -> None:
        if not segments or segments[-1].path is not st.path:
            assert st.path is not None
            segments.append(_Segment(st.path, False, st.file_bytes))
        segments[-1].chunks.append(line + b"\n")
        st.file_bytes += len(line) + 1

    async def _adopt_policy(self, st: _State, segments: list[_Segment], now: datetime) -> None:
        """The policy changed since the last checkpoint (a restart with a new checkpoint_every or
        checkpoint_interval): cover the records written under the old policy with a checkpoint stating
        it, then state the new one, so a verifier checks every run against the policy it was written
        under."""
        if st.uncovered:
            await self._add_checkpoint(st, segments, now, st.checkpoint_policy or self._policy)
        if st.checkpoint_policy != self._policy:
            await self._add_checkpoint(st, segments, now)

    async def _add_checkpoint(self, st: _State, segments: list[_Segment], now: datetime,
                              policy: CheckpointPolicy | None = None) -> None:
        assert self._signer is not None
        policy = policy or self._policy
        body = checkpoint_body(self._writer, st.rng, st.head, now, policy)
        try:
            signature = await asyncio.get_running_loop().run_in_executor(
                self._token_executor, self._signer.sign, body)
        except Exception as e:  # noqa: BLE001 - a token error: no checkpoint, so no records either
            raise AuditUnavailable(f"cannot sign an audit checkpoint: {e}") from None
        note = cpt.sign_note(body, origin_for(self._writer), self._signer.public_key_spki, signature)
        line = checkpoint_line(self._writer, st.rng.size, note)
        if st.path is None:  # the genesis checkpoint of a new log opens its first file
            self._place(st, segments, line, now, now.astimezone(UTC).date())
        else:
            self._put(st, segments, line)
        st.uncovered, st.uncovered_since, st.checkpoint_note, st.checkpoint_policy = 0, None, note, policy

    # -- file I/O (on the log's thread) -----------------------------------------------------------------
    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = self._fd_path = None

    def _reload(self) -> _State:
        self._close_fd()
        return _scan(self._dir, self._writer)

    def _write(self, segments: list[_Segment]) -> None:
        io = self._io
        done: list[_Segment] = []
        where = self._dir
        if self._lock_fd is None and not self._closed:
            try:
                self._lock_fd = _lock_writer(self._dir, self._writer)
            except WriterBusy:
                raise
            except AuditUnavailable as e:
                raise AuditUnavailable(f"cannot write the audit log {self._dir}: {e.reason}") from None
            except OSError as e:
                raise AuditUnavailable(_os_reason(f"write the audit log {self._dir} (writer lock)", e)) from None
        action = "write the audit log"
        try:
            for seg in segments:
                where = seg.path
                if seg.new:
                    action = "create the audit log file"
                    self._close_fd()
                    self._dir.mkdir(parents=True, exist_ok=True)
                    self._fd = io.open(str(seg.path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
                    self._fd_path = seg.path
                elif self._fd is None or self._fd_path != seg.path:
                    self._close_fd()
                    self._fd = io.open(str(seg.path), os.O_WRONLY | os.O_APPEND)
                    self._fd_path = seg.path
                action = "write the audit log"
                done.append(seg)
                data = memoryview(b"".join(seg.chunks))
                while data:
                    n = io.write(self._fd, data)
                    data = data[n:]
                io.fsync(self._fd)
                if seg.new:
                    self._created.append(seg.path)
                    dfd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        io.fsync(dfd)
                    finally:
                        os.close(dfd)
        except OSError as e:
            reason = _os_reason(f"{action} {where}", e)
            self._rollback(done)
            raise AuditUnavailable(reason) from None

    def _rollback(self, done: list[_Segment]) -> None:
        """Undo a failed group so the files hold only acknowledged lines; else re-read them next time."""
        self._close_fd()
        try:
            for seg in reversed(done):
                if seg.new:
                    seg.path.unlink(missing_ok=True)
                else:
                    os.truncate(seg.path, seg.start)
        except OSError as e:
            log.error("audit: cannot roll back a failed write (%s); will re-read the files", e)
            self._resync = True
