"""The audit log verifier (``ocspctl audit verify``) and search (``ocspctl audit show``): reads the files
the writer made (``signer.audit.format``) and checks chains, Merkle roots and signed checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.audit import checkpoint as cpt
from shared.audit.merkle import CompactRange, leaf_hash
from signer.audit.format import (
    FORMAT,
    RECORD_TYPES,
    ZERO_HASH,
    CheckpointPolicy,
    Record,
    checkpoint_extensions,
    decode_header,
    decode_record,
    origin_for,
    parse_line,
    required_field,
)

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
            _writer, seq, _created, rng, head = decode_header(obj)
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
            note = required_field(obj, "note", str)
            c = cpt.open_checkpoint(note, self.spki, self.origin)
            head, _when, policy = checkpoint_extensions(c)
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
            writer, seq, *_ = decode_header(parse_line(lines[0]))
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
                        obj = parse_line(raw)
                    except ValueError as e:
                        v.fail(loc, f"not a valid audit line: {e}")
                    if (n == 1) != (obj["type"] == "file"):
                        v.fail(loc, "a file header must be the first line of its file, and only there")
                    if obj["type"] == "file":
                        v.header(loc, obj)
                    elif obj["type"] in RECORD_TYPES:
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
                obj = parse_line(raw)
                if obj["type"] != "checkpoint":
                    continue
                _, signatures = cpt.parse_note(required_field(obj, "note", str))
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
    record: Record
    raw: str


def _norm_serial(serial: str) -> str:
    s = serial.strip().lower().replace(":", "")
    s = s.removeprefix("0x")
    return s.lstrip("0") or "0"


def show(paths: Iterable[Path | str], *, serial: str | None = None, issuer: str | None = None,
         since: datetime | None = None, until: datetime | None = None, client: str | None = None,
         uid: int | None = None, request_id: str | None = None) -> Iterator[LoggedRecord]:
    """Records matching every filter given (no verification: run ``verify`` for that).

    ``serial``: hex, any case, leading zeros and colons ignored; ``issuer``: the CA name or id;
    ``since``/``until``: inclusive bounds on the record time; ``client``: exact identity; ``uid``: the
    user id of a unix-socket caller (records without one never match); ``request_id``: exact, as the
    frontend sent it (its access log names the same).
    """
    want_serial = _norm_serial(serial) if serial is not None else None
    for p in sorted(Path(x) for x in paths):
        with open(p, "rb") as f:
            for n, raw in enumerate(f, start=1):
                if not raw.endswith(b"\n") or (b'"type":"sig"' not in raw and b'"type":"refusal"' not in raw):
                    continue
                try:
                    writer, index, _prev, record = decode_record(parse_line(raw[:-1]))
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
                if request_id is not None and record.request_id != request_id:
                    continue
                if since is not None and record.time < since:
                    continue
                if until is not None and record.time > until:
                    continue
                yield LoggedRecord(str(p), n, writer, index, record, raw[:-1].decode())
