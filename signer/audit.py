"""Tamper-evident audit log of every signature the signer makes.

Files and lines
---------------
One *writer* (one signer process, ``writer_id``) owns one hash chain, written to
``<dir>/audit-<writer_id>-<seq:08d>-<YYYYMMDD>.jsonl``; ``seq`` counts the writer's files from 1 and a
new file starts on a new UTC day or when the next record would pass ``max_file_bytes``. Every line
is one compact JSON object; its ``type`` is one of:

``file``        first line of every file: ``writer``, ``seq``, ``created``, and the writer's state
                where the file starts: ``index`` (records so far), ``head`` (hash of the last record)
                and ``range`` (the RFC 6962 compact range of the Merkle tree over all records so far).
                Unsigned: it lets the writer resume and a verifier start at a later file; a wrong
                header cannot pass, because the next checkpoint's root is computed through it.
``sig``         one signed OCSP response (see ``AuditRecord``), plus ``writer``, ``index`` (0, 1, ...)
                and ``prev``: the RFC 6962 leaf hash, SHA-256(0x00 || line), of the writer's previous
                record line (32 zero bytes for record 0), base64. That leaf hash is at once the chain
                link and the record's leaf in the Merkle tree; it is computed over the line's exact
                bytes (without the newline), so any edit to a line changes it.
``checkpoint``  ``writer``, ``index`` (the tree size) and ``note``: a transparency-dev checkpoint
                (``shared.audit.checkpoint``) signed by the audit key in the token::

                    ocsp-audit/v1/<writer_id>
                    <size>
                    <base64 Merkle root over records 0..size-1>
                    chain <base64 hash of record size-1>
                    time <RFC 3339 UTC>
                    policy every=<N> interval=<seconds, exact: 60 or 1.5>

                    — ocsp-audit/v1/<writer_id> <base64(key id || signature)>

Checkpoints sit in the same stream, right after the record that completes them: the writer makes one
after every ``checkpoint_every`` records, before any record whose time is ``checkpoint_interval`` or
more after the first record no checkpoint covers yet, on ``checkpoint()``/``close()``, on ``open()``
when a previous run left records uncovered, and from a timer when the log idles. The signed
``policy`` line tells the verifier those limits, so it can tell a checkpoint that was removed from
one that was never due. Records are always covered by a checkpoint stating the policy they were
written under: when the policy changes between runs, ``open()`` first covers the records the last run
left (if any) under the old policy, then writes a checkpoint stating the new one, before any new
record; the verifier checks each run against the policy of the checkpoint before it. Checkpoints are not chained: they do not need to be, being signed.

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
import base64
import binascii
import errno
import fcntl
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from shared.audit import checkpoint as cpt
from shared.audit.merkle import CompactRange, leaf_hash
from shared.clock import Clock
from signer.mechanisms import SignatureAlgorithm, algorithm_for_key

log = logging.getLogger("signer.audit")

FORMAT = "ocsp-audit/v1"
ZERO_HASH = bytes(32)
STATUSES = frozenset({"good", "revoked", "unknown"})
_WRITER_RE = re.compile(r"[A-Za-z0-9._]{1,64}")
_HEX = "0123456789abcdef"
_FILE_RE = re.compile(r"audit-(?P<writer>[A-Za-z0-9._]{1,64})-(?P<seq>\d{8})-(?P<day>\d{8})\.jsonl")


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


def origin_for(writer_id: str) -> str:
    return f"{FORMAT}/{writer_id}"


# -- records ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SignedStatus:
    serial: str  # lowercase hex of the CertID serial number's INTEGER content octets
    status: str  # "good" | "revoked" | "unknown"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One signed OCSP response."""

    time: datetime  # aware; when the response was signed (producedAt)
    client: str  # the caller: its allow-listed mTLS identity, else the transport ("unix:", "ipv4:...")
    request_id: str
    issuer_name: str  # the CA's configured name
    issuer_id: str  # stable issuer id: hex SHA-256 of the CA certificate DER
    statuses: tuple[SignedStatus, ...]
    nonce: bool
    responder_fingerprint: str  # hex SHA-256 of the responder certificate DER
    key_label: str
    generation: int
    response_sha256: str  # hex SHA-256 of the whole DER OCSPResponse returned
    # A caller on the unix socket: its process, user and group as the kernel gave them at connect()
    # (SO_PEERCRED, signer.local_callers). All three or none; none for TCP callers (and in older logs).
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None

    def __post_init__(self) -> None:
        if self.time.tzinfo is None:
            raise ValueError("AuditRecord.time must be timezone-aware")
        if not self.statuses:
            raise ValueError("AuditRecord needs at least one status")
        for st in self.statuses:
            if st.status not in STATUSES or not st.serial or st.serial.strip(_HEX):
                raise ValueError(f"bad signed status {st!r} (lowercase hex serial; good/revoked/unknown)")
        for value in (self.responder_fingerprint, self.response_sha256):
            if len(value) != 64 or value.strip(_HEX):
                raise ValueError("AuditRecord.responder_fingerprint and .response_sha256 must be 64 "
                                 "lowercase hex digits")
        if type(self.generation) is not int or type(self.nonce) is not bool:
            raise ValueError("AuditRecord.generation must be an int and .nonce a bool")
        ids = (self.pid, self.uid, self.gid)
        if ids != (None, None, None) and not all(type(v) is int and 0 <= v <= _MAX_ID for v in ids):
            raise ValueError("AuditRecord.pid, .uid and .gid must be all None or all ints 0..2^32-1")


def _time_text(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


_last_time: tuple[datetime, str] = (datetime.min.replace(tzinfo=UTC), "")


def _time_text_cached(t: datetime) -> str:
    global _last_time
    if _last_time[0] == t:  # the signer's clock has whole seconds: most records repeat the last time
        return _last_time[1]
    text = _time_text(t)
    _last_time = (t, text)
    return text


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


_MAX_ID = (1 << 32) - 1
_q = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]  # a JSON string literal, in C


def encode_record(record: AuditRecord, writer: str, index: int, prev: bytes) -> bytes:
    """The record's line, without its newline: compact JSON, fixed key order, ASCII only. The
    verifier hashes the raw bytes and parses them with ``json``; this builds the same text as
    ``json.dumps(..., separators=(",", ":"))`` would, without its per-call overhead (the hex fields
    are validated by AuditRecord, every other string goes through the C JSON string encoder)."""
    statuses = ",".join(f"[{_q(s.serial)},{_q(s.status)}]" for s in record.statuses)
    # A unix-socket caller's ids follow "client"; without them the line is what older versions wrote.
    ids = "" if record.pid is None else f',"pid":{record.pid:d},"uid":{record.uid:d},"gid":{record.gid:d}'
    return (f'{{"type":"sig","writer":{_q(writer)},"index":{index:d},"prev":"{_b64(prev)}",'
            f'"time":"{_time_text_cached(record.time)}","client":{_q(record.client)}{ids},'
            f'"request_id":{_q(record.request_id)},"issuer":{_q(record.issuer_name)},'
            f'"issuer_id":{_q(record.issuer_id)},"statuses":[{statuses}],'
            f'"nonce":{"true" if record.nonce else "false"},'
            f'"responder_cert_sha256":"{record.responder_fingerprint}","key_label":{_q(record.key_label)},'
            f'"generation":{int(record.generation):d},"response_sha256":"{record.response_sha256}"}}').encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _parse_line(raw: bytes) -> dict[str, Any]:
    obj = json.loads(raw, object_pairs_hook=_no_duplicates)
    if not isinstance(obj, dict) or obj.get("type") not in ("sig", "file", "checkpoint"):
        raise ValueError("not an audit line (type must be sig, file or checkpoint)")
    return obj


def _want(obj: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"field {key!r} missing or not {getattr(kind, '__name__', kind)}")
    return value


def _hash_field(obj: dict[str, Any], key: str) -> bytes:
    try:
        value = base64.b64decode(_want(obj, key, str), validate=True)
    except binascii.Error:
        raise ValueError(f"field {key!r} is not base64") from None
    if len(value) != 32:
        raise ValueError(f"field {key!r} is not a 32-byte hash")
    return value


def _parse_time(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        raise ValueError(f"time {text!r} has no zone")
    return t


_CALLER_IDS = ("pid", "uid", "gid")


def decode_record(obj: dict[str, Any]) -> tuple[str, int, bytes, AuditRecord]:
    """(writer, index, prev, record) from a parsed ``sig`` line; ValueError when malformed."""
    statuses = _want(obj, "statuses", list)
    if not all(isinstance(s, list) and len(s) == 2 and all(isinstance(x, str) for x in s) for s in statuses):
        raise ValueError("field 'statuses' is not a list of [serial, status]")
    extra = set(obj) - {"type", "writer", "index", "prev", "time", "client", "request_id", "issuer",
                        "issuer_id", "statuses", "nonce", "responder_cert_sha256", "key_label",
                        "generation", "response_sha256", *_CALLER_IDS}
    if extra:
        raise ValueError(f"unknown fields {sorted(extra)}")
    present = [k for k in _CALLER_IDS if k in obj]
    if present and len(present) != len(_CALLER_IDS):
        raise ValueError(f"fields {', '.join(_CALLER_IDS)} come together, not only {', '.join(present)}")
    ids = {k: _want(obj, k, int) for k in present}
    record = AuditRecord(
        time=_parse_time(_want(obj, "time", str)), client=_want(obj, "client", str),
        request_id=_want(obj, "request_id", str), issuer_name=_want(obj, "issuer", str),
        issuer_id=_want(obj, "issuer_id", str),
        statuses=tuple(SignedStatus(s[0], s[1]) for s in statuses), nonce=_want(obj, "nonce", bool),
        responder_fingerprint=_want(obj, "responder_cert_sha256", str),
        key_label=_want(obj, "key_label", str), generation=_want(obj, "generation", int),
        response_sha256=_want(obj, "response_sha256", str), **ids)
    index = _want(obj, "index", int)
    if index < 0:
        raise ValueError("negative index")
    return _want(obj, "writer", str), index, _hash_field(obj, "prev"), record


def _header_line(writer: str, seq: int, created: datetime, rng: CompactRange, head: bytes) -> bytes:
    return json.dumps({"type": "file", "writer": writer, "seq": seq, "created": _time_text(created),
                       "index": rng.size, "head": _b64(head), "range": [_b64(h) for h in rng.hashes]},
                      separators=(",", ":")).encode()


def _decode_header(obj: dict[str, Any]) -> tuple[str, int, datetime, CompactRange, bytes]:
    if obj.get("type") != "file":
        raise ValueError("the first line of an audit file must be its 'file' header")
    hashes = _want(obj, "range", list)
    try:
        rng = CompactRange(_want(obj, "index", int),
                           [_hash_field({"h": h}, "h") for h in hashes])
    except ValueError as e:
        raise ValueError(f"bad compact range in header: {e}") from None
    seq = _want(obj, "seq", int)
    return (_want(obj, "writer", str), seq, _parse_time(_want(obj, "created", str)), rng,
            _hash_field(obj, "head"))


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    every: int
    interval: timedelta


_INTERVAL_RE = re.compile(r"(\d{1,9})(?:\.(\d{1,6}))?")


def _interval_text(interval: timedelta) -> str:
    """Seconds, exactly: whole seconds as an integer (``60``), else with up to 6 decimals (``1.5``)."""
    whole, micro = divmod(interval // timedelta(microseconds=1), 1_000_000)
    return str(whole) if not micro else f"{whole}.{micro:06d}".rstrip("0")


def _parse_interval(text: str) -> timedelta:
    m = _INTERVAL_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"bad interval {text!r}")
    return timedelta(seconds=int(m[1]), microseconds=int((m[2] or "").ljust(6, "0")))


def _checkpoint_body(writer: str, rng: CompactRange, head: bytes, now: datetime, policy: CheckpointPolicy) -> bytes:
    return cpt.Checkpoint(origin_for(writer), rng.size, rng.root(), (
        f"chain {_b64(head)}", f"time {_time_text(now)}",
        f"policy every={policy.every} interval={_interval_text(policy.interval)}",
    )).body()


def _checkpoint_extensions(c: cpt.Checkpoint) -> tuple[bytes, datetime, CheckpointPolicy]:
    ext: dict[str, str] = {}
    for line in c.extensions:
        key, _, value = line.partition(" ")
        ext.setdefault(key, value)
    try:
        head = base64.b64decode(ext["chain"], validate=True)
        when = _parse_time(ext["time"])
        fields = dict(part.split("=", 1) for part in ext["policy"].split())
        policy = CheckpointPolicy(int(fields["every"]), _parse_interval(fields["interval"]))
    except (KeyError, ValueError, binascii.Error):
        raise ValueError("checkpoint lacks valid chain/time/policy extension lines") from None
    if len(head) != 32 or policy.every < 1 or policy.interval <= timedelta(0):
        raise ValueError("checkpoint chain/policy extension out of range")
    return head, when, policy


def _note_policy(note: str) -> CheckpointPolicy | None:
    """The policy a checkpoint note states (not verified: the writer resuming its own log), or None."""
    try:
        body, _ = cpt.parse_note(note)
        return _checkpoint_extensions(cpt.parse_checkpoint(body))[2]
    except (cpt.CheckpointError, ValueError):
        return None


def _checkpoint_line(writer: str, size: int, note: str) -> bytes:
    return json.dumps({"type": "checkpoint", "writer": writer, "index": size, "note": note},
                      separators=(",", ":")).encode()


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
                       if (m := _FILE_RE.fullmatch(p.name)) and m["writer"] == writer)
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
            hw, hseq, created, rng, head = _decode_header(_parse_line(lines[0]))
        except ValueError as e:
            raise AuditUnavailable(f"{path}:1: bad file header ({e}); run `ocspctl audit verify`") from None
        if hw != writer or hseq != seq:
            raise AuditUnavailable(f"{path}:1: header names writer {hw!r} seq {hseq}, not {writer!r} {seq}")
        st = _State(rng=rng, head=head, seq=seq, path=path, file_bytes=len(data), file_day=created.date())
        for n, raw in enumerate(lines[1:], start=2):
            try:
                obj = _parse_line(raw)
                if obj["type"] == "sig":
                    w, index, prev, record = decode_record(obj)
                    if w != writer or index != st.rng.size or prev != st.head:
                        raise ValueError("record does not continue the hash chain")
                    st.add_record(raw, record.time)
                elif obj["type"] == "checkpoint":
                    if _want(obj, "index", int) == st.rng.size:
                        st.uncovered, st.uncovered_since = 0, None
                        st.checkpoint_note = _want(obj, "note", str)
                        st.checkpoint_policy = _note_policy(st.checkpoint_note)
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
                note = _want(_parse_line(raw), "note", str)
            except ValueError:
                continue
            return note, _note_policy(note)
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
        self._pending: list[tuple[AuditRecord | None, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False
        self._lock_fd: int | None = None  # flock on <dir>/.audit-<writer_id>.lock, held until close()
        self.failure: str | None = None  # the last write failure, None once a write succeeds again
        self.commits = 0  # groups written (each one write+fsync per file touched)
        self._group_window = 0.0

    @classmethod
    async def open(cls, directory: Path, *, writer_id: str, signer: CheckpointSigner | None,
                   checkpoint_every: int, checkpoint_interval: timedelta, max_file_bytes: int,
                   clock: Clock, executor: Executor | None = None, file_io: FileIO | None = None,
                   group_window: float = 0.0) -> AuditLog:
        """Resume ``writer_id``'s chain from its files in ``directory`` (created on first write).

        ``executor``: where checkpoint signatures run (the signer's token thread); default the log's
        own I/O thread. ``file_io``: system-call hooks (tests). ``group_window``: seconds to wait for
        more appends before each group write; 0 writes as soon as the previous fsync is done. A few
        ms gathers several times more records per fsync at the price of that much added latency.

        Raises AuditUnavailable when the existing files cannot be read or do not form a chain.
        """
        if not _WRITER_RE.fullmatch(writer_id):
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
    def latest_checkpoint(self) -> str | None:
        """The newest signed checkpoint note; ship it off the host to make truncation detectable."""
        return self._state.checkpoint_note

    async def append(self, record: AuditRecord) -> None:
        """Durable on return; raises AuditUnavailable when the record could not be written."""
        if self._closed:
            raise AuditUnavailable("the audit log is closed")
        await self._enqueue(record)

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
    def _enqueue(self, item: AuditRecord | None) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append((item, fut))
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

    async def _commit_loop(self) -> None:
        try:
            while self._pending:
                if self._group_window:
                    await asyncio.sleep(self._group_window)
                batch, self._pending = self._pending, []
                try:
                    try:
                        await self._commit(batch)
                    except AuditUnavailable:
                        raise
                    except Exception as e:  # a bug must not leave appends waiting, nor pass as durable
                        log.exception("audit: commit failed")
                        raise AuditUnavailable(f"internal error in the audit log: {e!r}") from None
                except AuditUnavailable as e:
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

    async def _commit(self, batch: Sequence[tuple[AuditRecord | None, asyncio.Future[None]]]) -> None:
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
            await loop.run_in_executor(self._io_executor, self._write, segments)
            self.commits += 1
        self._state = st

    def _place(self, st: _State, segments: list[_Segment], line: bytes, now: datetime, today: date) -> None:
        if st.path is None or st.file_day != today or (
                st.file_records and st.file_bytes + len(line) + 1 > self._max_bytes):
            st.seq += 1
            st.path = self._dir / f"audit-{self._writer}-{st.seq:08d}-{today:%Y%m%d}.jsonl"
            st.file_day, st.file_bytes, st.file_records = today, 0, 0
            segments.append(_Segment(st.path, True, 0))
            self._put(st, segments, _header_line(self._writer, st.seq, now, st.rng, st.head))
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
        body = _checkpoint_body(self._writer, st.rng, st.head, now, policy)
        try:
            signature = await asyncio.get_running_loop().run_in_executor(
                self._token_executor, self._signer.sign, body)
        except Exception as e:  # noqa: BLE001 - a token error: no checkpoint, so no records either
            raise AuditUnavailable(f"cannot sign an audit checkpoint: {e}") from None
        note = cpt.sign_note(body, origin_for(self._writer), self._signer.public_key_spki, signature)
        line = _checkpoint_line(self._writer, st.rng.size, note)
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


# -- verification -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Finding:
    path: str
    line: int
    writer: str
    message: str
    index: int | None = None  # the record's index, when the finding is about one record
    first: int | None = None  # for a checkpoint mismatch: the records it covers that are suspect
    last: int | None = None
    wrong_key: bool = False  # no checkpoint of this writer is signed by the key given (not tampering proper)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class WriterSummary:
    writer: str
    first_index: int
    records: int
    checkpoints: int  # valid ones
    anchored: int  # records covered by the last valid checkpoint


@dataclass(frozen=True, slots=True)
class Report:
    ok: bool
    failures: tuple[Finding, ...]  # the first failure of each writer's stream
    warnings: tuple[Finding, ...]
    writers: tuple[WriterSummary, ...]
    notes: tuple[Finding, ...] = ()  # facts worth knowing that are not a problem (records retired)

    @property
    def first_failure(self) -> Finding | None:
        return self.failures[0] if self.failures else None


class _Stop(Exception):
    pass


@dataclass(slots=True)
class _Loc:
    path: str
    line: int


class _StreamVerifier:
    """One writer's stream, line by line; stops at the first failure."""

    def __init__(self, writer: str, spki: bytes, trusted: dict[int, bytes], require_complete: bool,
                 start: tuple[int, bytes] | None = None, from_genesis: bool = False) -> None:
        self.writer = writer
        self.origin = origin_for(writer)
        self.spki = spki
        self.trusted = trusted
        self.require_complete = require_complete
        self.start = start  # (size, root) of the kept checkpoint the log may begin at (retention)
        self.from_genesis = from_genesis
        self.failure: Finding | None = None
        self.warnings: list[Finding] = []
        self.notes: list[Finding] = []
        self.rng: CompactRange | None = None
        self.head = ZERO_HASH
        self.first_index = 0
        self.seq = 0
        self.checkpoints = 0
        self.anchored_size: int | None = None
        self.policy: CheckpointPolicy | None = None
        self.run: list[tuple[int, datetime, _Loc]] = []  # records since the last valid checkpoint
        self.last_loc: _Loc | None = None  # the previous record's location
        self.rng_before_last: CompactRange | None = None
        self.suspect: tuple[_Loc, _Loc, int] | None = None  # (previous record, record, its index)

    def fail(self, loc: _Loc, message: str, index: int | None = None, first: int | None = None,
             last: int | None = None) -> None:
        self.failure = Finding(loc.path, loc.line, self.writer, message, index, first, last)
        raise _Stop

    def warn(self, loc: _Loc, message: str, index: int | None = None) -> None:
        self.warnings.append(Finding(loc.path, loc.line, self.writer, message, index))

    def _resolve_suspect(self, next_prev: bytes | None, loc: _Loc | None) -> None:
        """A record whose ``prev`` did not match: the next chained value tells which line changed."""
        if self.suspect is None:
            return
        before, rec, index = self.suspect
        self.suspect = None
        if next_prev is not None and next_prev == self.head:
            self.fail(before, f"record #{index - 1} was altered: its hash is not the 'prev' that record "
                      f"#{index} ({rec.path}:{rec.line}) chains to", index - 1)
        if next_prev is not None:
            self.fail(rec, f"record #{index} was altered: it does not chain to record #{index - 1}, and the "
                      f"next line ({loc.path}:{loc.line}) does not chain to it", index)  # type: ignore[union-attr]
        self.fail(before, f"record #{index - 1} or #{index} ({rec.path}:{rec.line}) was altered: "
                  "the chain breaks between them", index - 1)

    def header(self, loc: _Loc, obj: dict[str, Any]) -> None:
        try:
            _writer, seq, _created, rng, head = _decode_header(obj)
        except ValueError as e:
            self.fail(loc, f"bad file header: {e}")
        if self.rng is None:
            self.rng, self.head, self.first_index, self.seq = rng, head, rng.size, seq
            self._check_start(loc, seq, rng, head)
            return
        self._resolve_suspect(head, loc)
        if seq != self.seq + 1:
            self.fail(loc, f"file #{seq} follows file #{self.seq}: files are missing or out of order")
        self.seq = seq
        if rng.size == self.rng.size and head != self.head and self.last_loc is not None:
            self.fail(self.last_loc, f"record #{rng.size - 1} was altered: its hash is not the one the next "
                      f"file's header ({loc.path}:{loc.line}) carries", rng.size - 1)
        if rng != self.rng or head != self.head:
            self.fail(loc, f"file header does not continue the chain: it says {rng.size} records "
                      f"before it, the previous files hold {self.rng.size} (records deleted or inserted)")

    def _check_start(self, loc: _Loc, seq: int, rng: CompactRange, head: bytes) -> None:
        """Where the files given begin. A chain begins at genesis: file #1, no record before it, record
        #0 linking to zero. A log pruned for retention begins later, at or before a checkpoint kept when
        the older files were retired (``start``). The header's state itself is unsigned; the checkpoints
        after it (kept or in the stream) are computed through it."""
        size = rng.size
        if size == 0 and head != ZERO_HASH:
            self.fail(loc, "file header says no record precedes it but carries a chain head (record #0 "
                      "links to 32 zero bytes)")
        if self.start is not None:
            n = self.start[0]
            if size > n:
                self.fail(loc, f"the files given begin at record #{size} (file #{seq}), after the kept "
                          f"checkpoint of {n} records: records {_span(n, size - 1)} were deleted after it "
                          "was kept", n, n, size - 1)
            if size:
                self.notes.append(Finding(
                    loc.path, loc.line, self.writer,
                    f"records {_span(0, size - 1)} precede file #{seq}: retired, as the kept checkpoint of "
                    f"{n} records allows; records from #{size} on are checked against it"))
        for n, root in self.trusted.items():
            if n < size:
                if self.start is not None:
                    continue  # before the kept checkpoint (size >= this file's start): retired records
                self.fail(loc, f"a trusted checkpoint covers {n} records, but the files given begin at "
                          f"record #{size} (file #{seq}): records {_span(n, size - 1)} are missing (for a "
                          "log pruned for retention, give the checkpoint kept then with --from-checkpoint)",
                          n, n, size - 1)
            if n == size and rng.root() != root:
                self.fail(loc, f"file header does not match the trusted checkpoint of {n} records: the "
                          "state it carries was altered")
        if self.start is None and (size or seq != 1):
            files = f"file{'s' if seq > 2 else ''} {_span(1, seq - 1)}" if seq > 1 else "earlier files"
            if self.from_genesis and size:
                self.fail(loc, f"the log does not begin at genesis: the oldest file given is file #{seq}, "
                          f"which begins at record #{size}; records {_span(0, size - 1)} ({files}) are "
                          "missing", 0, 0, size - 1)
            if self.from_genesis:
                self.fail(loc, f"the log does not begin at genesis: the oldest file given is file #{seq}; "
                          f"{files} {'are' if seq > 2 else 'is'} missing (with the genesis checkpoint)")
            if size:
                self.warn(loc, f"verification starts at file #{seq}, record #{size}: earlier files were not "
                          f"given, so the {size} records before it ({_span(0, size - 1)}) are not checked. "
                          "If they were pruned for retention, prove it with --from-checkpoint NOTE (the "
                          "checkpoint kept when they were pruned); --from-genesis makes this a failure")
            else:
                self.warn(loc, f"verification starts at file #{seq}: earlier files were not given ({files}, "
                          "which held the genesis checkpoint); --from-genesis makes this a failure")

    def record(self, loc: _Loc, raw: bytes, obj: dict[str, Any]) -> None:
        try:
            writer, index, prev, record = decode_record(obj)
        except ValueError as e:
            self.fail(loc, f"malformed record: {e}")
        if writer != self.writer:
            self.fail(loc, f"record of writer {writer!r} in writer {self.writer!r}'s file")
        assert self.rng is not None
        expected = self.rng.size
        self._resolve_suspect(prev, loc)
        if index > expected:
            self.fail(loc, f"expected record #{expected} here, found #{index}: records "
                      f"#{expected}..#{index - 1} were deleted (or records were reordered)", index)
        if index < expected:
            if index == expected - 1 and self.last_loc is not None:
                self.fail(self.last_loc, f"record #{index} appears twice, here and at {loc.path}:{loc.line}: "
                          "one of them was inserted", index)
            self.fail(loc, f"expected record #{expected} here, found #{index}: a record was inserted, "
                      "duplicated or moved", index)
        if prev != self.head:
            if self.last_loc is None:
                self.fail(loc, f"record #{index} does not chain to the state in its file header", index)
            self.suspect = (self.last_loc, loc, index)
        h = leaf_hash(raw)
        self.rng_before_last = self.rng.copy()
        self.rng.append(h)
        self.head = h
        self.last_loc = loc
        self.run.append((index, record.time, loc))
        if self.policy is not None:
            self._check_run(self.policy, scan=False)
        if self.rng.size in self.trusted and self.trusted[self.rng.size] != self.rng.root():
            self.fail(loc, f"records #{self.first_index}..#{index} do not match the trusted checkpoint "
                      f"of size {self.rng.size}: altered", index)

    def _check_run(self, policy: CheckpointPolicy, *, scan: bool) -> None:
        """Records since the last checkpoint must number at most ``every`` and span less than
        ``interval`` (the writer checkpoints before a record that would break either rule). With
        ``scan`` every record of the run is checked (the policy was learnt only now), else the newest."""
        run = self.run
        if not run:
            return
        start = run[0][1]
        for i in range(0 if scan else len(run) - 1, len(run)):
            index, t, loc = run[i]
            if i >= policy.every:
                self.fail(loc, f"missing checkpoint: record #{index} is record {i + 1} after the last valid "
                          f"checkpoint, but the writer checkpoints every {policy.every} records "
                          "(a checkpoint was removed, or records inserted)", index)
            if t - start >= policy.interval:
                self.fail(loc, f"missing checkpoint: record #{index} is {t - start} after record "
                          f"#{run[0][0]}, the first one no checkpoint covers, but the writer checkpoints "
                          f"at least every {policy.interval} (a checkpoint was removed)", index)

    def checkpoint(self, loc: _Loc, obj: dict[str, Any]) -> None:
        assert self.rng is not None
        try:
            note = _want(obj, "note", str)
            c = cpt.open_checkpoint(note, self.spki, self.origin)
            head, _when, policy = _checkpoint_extensions(c)
        except cpt.CheckpointError as e:
            self.fail(loc, f"bad checkpoint: {e}")
        except ValueError as e:
            self.fail(loc, f"bad checkpoint: {e}")
        self._resolve_suspect(head, loc)
        if c.origin != self.origin:
            self.fail(loc, f"checkpoint of {c.origin!r} in {self.origin!r}'s stream")
        if obj.get("index") != c.size:
            self.fail(loc, "checkpoint line's index differs from its signed size")
        if c.size != self.rng.size:
            self.fail(loc, f"checkpoint signed for {c.size} records, but {self.rng.size} records precede it "
                      "(records deleted, inserted, or the checkpoint moved)")
        first = self.run[0][0] if self.run else c.size
        if c.root != self.rng.root() and self.run and self.rng_before_last is not None:
            only_last = self.rng_before_last.copy()
            only_last.append(head)
            if only_last.root() == c.root:  # everything matches but the last record's own hash
                index, _, at = self.run[-1]
                self.fail(at, f"record #{index} was altered: the checkpoint at {loc.path}:{loc.line} signed "
                          "a different record", index)
        if c.root != self.rng.root() or head != self.head:
            at = self.run[0][2] if self.run else loc
            self.fail(at, f"records #{first}..#{c.size - 1} do not match the checkpoint at {loc.path}:"
                      f"{loc.line}: one of them was altered after it was signed (and the hash chain "
                      "recomputed)", first, first, c.size - 1)
        if self.policy is None:
            # The first checkpoint seen: the run before it is checked against the policy it states.
            self._check_run(policy, scan=True)
        # Otherwise every record of the run was checked against the policy it was written under (the
        # previous checkpoint's) as it came. A checkpoint stating another policy (the writer restarted
        # with new limits) applies it to later records only.
        self.policy = policy
        self.checkpoints += 1
        self.anchored_size = c.size
        self.run = []

    def finish(self, torn: _Loc | None) -> None:
        self._resolve_suspect(None, None)
        if torn is not None:
            self.warn(torn, "the last line is incomplete (a write torn by a crash, or the file was truncated)")
        assert self.rng is not None
        for size in self.trusted:
            if size > self.rng.size:
                loc = self.run[-1][2] if self.run else (self.last_loc or _Loc("?", 0))
                self.fail(loc, f"truncated: a trusted checkpoint covers {size} records, the files hold "
                          f"{self.rng.size}", self.rng.size)
        if self.anchored_size is None:
            if self.run:
                index, _, loc = self.run[0]
                self.fail(loc, "no valid checkpoint covers these records: a log rewritten without the audit "
                          "key looks exactly like this", index)
            return
        if self.run:
            assert self.policy is not None
            self._check_run(self.policy, scan=False)
            index, _, loc = self.run[0]
            message = (f"{len(self.run)} records from #{index} on are not covered by a checkpoint yet "
                       "(unanchored: the writer crashed or is still running)")
            if self.require_complete:
                self.fail(loc, message, index)
            self.warn(loc, message, index)


def _span(first: int, last: int) -> str:
    return f"#{first}" if first == last else f"#{first}..#{last}"


def _read_lines(path: Path) -> tuple[list[bytes], bool]:
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines[-1] != b""
    if not torn:
        lines.pop()
    return lines, torn


def open_kept_checkpoint(note: str, spki: bytes) -> cpt.Checkpoint:
    """A checkpoint note kept outside the log, provided its writer's signature verifies with ``spki``.
    Raises CheckpointError otherwise."""
    body, _ = cpt.parse_note(note)
    return cpt.open_checkpoint(note, spki, cpt.parse_checkpoint(body).origin)


def verify(paths: Iterable[Path | str], key: bytes | Path | str, *,
           trusted_checkpoints: Iterable[str] = (), require_complete: bool = False,
           from_genesis: bool = False, start_checkpoints: Iterable[str] = ()) -> Report:
    """Check every writer's hash chain and checkpoints in ``paths``.

    ``key``: the audit key as SPKI DER, a public key or certificate (PEM or DER), or a path to one.
    ``trusted_checkpoints``: checkpoint notes kept elsewhere (shipped off the host); the log must
    contain and match them, which makes truncation detectable. ``require_complete``: records not
    covered by a checkpoint are a failure (for a writer that was closed cleanly), not a warning, and
    the log must begin at genesis (``from_genesis``) unless a start checkpoint says where it begins.
    ``from_genesis``: each writer's oldest file must be its file #1 (else the loss of the oldest
    records is only a warning). ``start_checkpoints``: at most one note per writer, kept when the
    writer's older files were pruned for retention: its files may begin at any record up to that
    checkpoint's size, and must match it and extend it.
    Raises OSError when a file cannot be read, CheckpointError when the key or a note cannot be
    loaded or a note does not verify, ValueError for two start checkpoints of one writer.
    """
    if isinstance(key, (str, Path)):
        key = Path(key).read_bytes()
    spki = cpt.load_public_key(key)
    trusted: dict[str, dict[int, bytes]] = {}
    for note in trusted_checkpoints:
        c = open_kept_checkpoint(note, spki)
        trusted.setdefault(c.origin, {})[c.size] = c.root
    starts: dict[str, tuple[int, bytes]] = {}
    for note in start_checkpoints:
        c = open_kept_checkpoint(note, spki)
        if c.origin in starts:
            raise ValueError(f"two start checkpoints for {c.origin}: give one per writer")
        starts[c.origin] = (c.size, c.root)
        trusted.setdefault(c.origin, {})[c.size] = c.root

    files: dict[str, list[tuple[int, str, list[bytes], bool]]] = {}
    broken: list[Finding] = []
    for p in paths:
        path = Path(p)
        lines, torn = _read_lines(path)
        try:
            if not lines or (torn and len(lines) == 1):
                raise ValueError("empty file")
            writer, seq, *_ = _decode_header(_parse_line(lines[0]))
        except ValueError as e:
            broken.append(Finding(str(path), 1, "?", f"not an audit file with a valid header: {e}"))
            continue
        files.setdefault(writer, []).append((seq, str(path), lines, torn))

    failures: list[Finding] = list(broken)
    warnings: list[Finding] = []
    notes: list[Finding] = []
    summaries: list[WriterSummary] = []
    for writer in sorted(files):
        origin = origin_for(writer)
        v = _StreamVerifier(writer, spki, trusted.get(origin, {}), require_complete, starts.get(origin),
                            from_genesis or require_complete)
        chunks = sorted(files[writer], key=lambda f: f[0])
        torn_at: _Loc | None = None
        records = 0
        try:
            for i, (_seq, name, lines, torn) in enumerate(chunks):
                for n, raw in enumerate(lines, start=1):
                    loc = _Loc(name, n)
                    if torn and n == len(lines):
                        if i != len(chunks) - 1:
                            v.fail(loc, "the file ends in the middle of a line, and later files follow")
                        torn_at = loc
                        break
                    try:
                        obj = _parse_line(raw)
                    except ValueError as e:
                        v.fail(loc, f"not a valid audit line: {e}")
                    if (n == 1) != (obj["type"] == "file"):
                        v.fail(loc, "a file header must be the first line of its file, and only there")
                    if obj["type"] == "file":
                        v.header(loc, obj)
                    elif obj["type"] == "sig":
                        records += 1
                        v.record(loc, raw, obj)
                    else:
                        v.checkpoint(loc, obj)
            v.finish(torn_at)
        except _Stop:
            pass
        if v.failure is not None:
            failures.append(_signed_by_another_key(writer, chunks, spki) or v.failure)
        warnings.extend(v.warnings)
        notes.extend(v.notes)
        summaries.append(WriterSummary(writer, v.first_index, records, v.checkpoints, v.anchored_size or 0))
    for origin in trusted:
        if origin.removeprefix(f"{FORMAT}/") not in files:
            failures.append(Finding("-", 0, origin, "a trusted checkpoint names a writer with no files given"))
    return Report(not failures, tuple(failures), tuple(warnings), tuple(summaries), tuple(notes))


def _signed_by_another_key(writer: str, chunks: list[tuple[int, str, list[bytes], bool]],
                           spki: bytes) -> Finding | None:
    """For a stream that failed: when none of its checkpoints carries a signature by the key given (by
    key id), the key is the likely culprit (or every checkpoint was re-signed), not one record. None
    when some checkpoint is signed by that key (then the failure found stands) or there is none."""
    origin = origin_for(writer)
    wanted = cpt.key_id(origin, spki)
    first: _Loc | None = None
    count = 0
    for _seq, name, lines, _torn in chunks:
        for n, raw in enumerate(lines, start=1):
            if b"checkpoint" not in raw:
                continue
            try:
                obj = _parse_line(raw)
                if obj["type"] != "checkpoint":
                    continue
                _, signatures = cpt.parse_note(_want(obj, "note", str))
            except ValueError:  # CheckpointError included
                continue
            if any(s.name == origin and s.key_id == wanted for s in signatures):
                return None
            count += 1
            first = first or _Loc(name, n)
    if first is None:
        return None
    return Finding(first.path, first.line, writer,
                   f"no checkpoint verifies with the public key given: all {count} checkpoints of writer "
                   f"{writer!r} are signed by another key (the wrong key, or every checkpoint was re-signed)",
                   wrong_key=True)


# -- show -------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LoggedRecord:
    path: str
    line: int
    writer: str
    index: int
    record: AuditRecord
    raw: str


def _norm_serial(serial: str) -> str:
    s = serial.strip().lower().replace(":", "")
    s = s.removeprefix("0x")
    return s.lstrip("0") or "0"


def show(paths: Iterable[Path | str], *, serial: str | None = None, issuer: str | None = None,
         since: datetime | None = None, until: datetime | None = None, client: str | None = None,
         uid: int | None = None) -> Iterator[LoggedRecord]:
    """Records matching every filter given (no verification: run ``verify`` for that).

    ``serial``: hex, any case, leading zeros and colons ignored; ``issuer``: the CA name or id;
    ``since``/``until``: inclusive bounds on the record time; ``client``: exact identity; ``uid``: the
    user id of a unix-socket caller (records without one never match).
    """
    want_serial = _norm_serial(serial) if serial is not None else None
    for p in sorted(Path(x) for x in paths):
        with open(p, "rb") as f:
            for n, raw in enumerate(f, start=1):
                if not raw.endswith(b"\n") or b'"type":"sig"' not in raw:
                    continue
                try:
                    writer, index, _prev, record = decode_record(_parse_line(raw[:-1]))
                except ValueError:
                    continue
                if want_serial is not None and not any(
                        _norm_serial(s.serial) == want_serial for s in record.statuses):
                    continue
                if issuer is not None and issuer not in (record.issuer_name, record.issuer_id):
                    continue
                if client is not None and record.client != client:
                    continue
                if uid is not None and record.uid != uid:
                    continue
                if since is not None and record.time < since:
                    continue
                if until is not None and record.time > until:
                    continue
                yield LoggedRecord(str(p), n, writer, index, record, raw[:-1].decode())
