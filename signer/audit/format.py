"""The audit log's file format: the pure line codec (records, file headers, checkpoint lines and the
checkpoint policy), shared by the writer (``signer.audit.writer``) and the verifier
(``signer.audit.verify``). No I/O here.

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
``refusal``     a Sign request the signer refused because its own status data disagrees with what it
                was asked to sign (``RefusalRecord``): nothing was signed. The same ``writer``,
                ``index`` and ``prev`` as a ``sig`` line, in the same chain and tree; instead of the
                response fields it carries the statuses asked for and the ``reason``.
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

Several signer processes each write their own chain (distinct ``writer_id``): file names, records and
checkpoint origins carry the writer id, so each stream is verified on its own.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.audit import checkpoint as cpt
from shared.audit.merkle import CompactRange

FORMAT = "ocsp-audit/v1"
ZERO_HASH = bytes(32)
STATUSES = frozenset({"good", "revoked", "unknown"})
RECORD_TYPES = frozenset({"sig", "refusal"})  # the lines that are records (leaves of the tree)
WRITER_RE = re.compile(r"[A-Za-z0-9._]{1,64}")
_HEX = "0123456789abcdef"
FILE_RE = re.compile(r"audit-(?P<writer>[A-Za-z0-9._]{1,64})-(?P<seq>\d{8})-(?P<day>\d{8})\.jsonl")



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
        _check_common(self)
        for value in (self.responder_fingerprint, self.response_sha256):
            if len(value) != 64 or value.strip(_HEX):
                raise ValueError("AuditRecord.responder_fingerprint and .response_sha256 must be 64 "
                                 "lowercase hex digits")
        if type(self.generation) is not int or type(self.nonce) is not bool:
            raise ValueError("AuditRecord.generation must be an int and .nonce a bool")


@dataclass(frozen=True, slots=True)
class RefusalRecord:
    """A Sign request refused because the signer's own status data disagrees: nothing was signed."""

    time: datetime  # aware; when the request was refused
    client: str
    request_id: str
    issuer_name: str
    issuer_id: str
    statuses: tuple[SignedStatus, ...]  # what the caller asked to have signed
    reason: str  # why, for the operator (which serial, asked vs known)
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None

    def __post_init__(self) -> None:
        _check_common(self)
        if not self.reason:
            raise ValueError("RefusalRecord needs a reason")


Record = AuditRecord | RefusalRecord  # what one record line holds


def _check_common(record: Record) -> None:
    """What both kinds of record require: an aware time, statuses, and all or none of the caller ids."""
    kind = type(record).__name__
    if record.time.tzinfo is None:
        raise ValueError(f"{kind}.time must be timezone-aware")
    if not record.statuses:
        raise ValueError(f"{kind} needs at least one status")
    for st in record.statuses:
        if st.status not in STATUSES or not st.serial or st.serial.strip(_HEX):
            raise ValueError(f"bad status {st!r} (lowercase hex serial; good/revoked/unknown)")
    ids = (record.pid, record.uid, record.gid)
    if ids != (None, None, None) and not all(type(v) is int and 0 <= v <= _MAX_ID for v in ids):
        raise ValueError(f"{kind}.pid, .uid and .gid must be all None or all ints 0..2^32-1")


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


def encode_record(record: Record, writer: str, index: int, prev: bytes) -> bytes:
    """The record's line, without its newline: compact JSON, fixed key order, ASCII only. The
    verifier hashes the raw bytes and parses them with ``json``; this builds the same text as
    ``json.dumps(..., separators=(",", ":"))`` would, without its per-call overhead (the hex fields
    are validated by AuditRecord, every other string goes through the C JSON string encoder)."""
    statuses = ",".join(f"[{_q(s.serial)},{_q(s.status)}]" for s in record.statuses)
    # A unix-socket caller's ids follow "client"; without them the line is what older versions wrote.
    ids = "" if record.pid is None else f',"pid":{record.pid:d},"uid":{record.uid:d},"gid":{record.gid:d}'
    refusal = isinstance(record, RefusalRecord)
    head = (f'{{"type":"{"refusal" if refusal else "sig"}","writer":{_q(writer)},"index":{index:d},'
            f'"prev":"{_b64(prev)}","time":"{_time_text_cached(record.time)}","client":{_q(record.client)}{ids},'
            f'"request_id":{_q(record.request_id)},"issuer":{_q(record.issuer_name)},'
            f'"issuer_id":{_q(record.issuer_id)},"statuses":[{statuses}],')
    if isinstance(record, RefusalRecord):
        return f'{head}"reason":{_q(record.reason)}}}'.encode()
    return (f'{head}"nonce":{"true" if record.nonce else "false"},'
            f'"responder_cert_sha256":"{record.responder_fingerprint}","key_label":{_q(record.key_label)},'
            f'"generation":{int(record.generation):d},"response_sha256":"{record.response_sha256}"}}').encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def parse_line(raw: bytes) -> dict[str, Any]:
    obj = json.loads(raw, object_pairs_hook=_no_duplicates)
    if not isinstance(obj, dict) or obj.get("type") not in ("sig", "refusal", "file", "checkpoint"):
        raise ValueError("not an audit line (type must be sig, refusal, file or checkpoint)")
    return obj


def required_field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"field {key!r} missing or not {getattr(kind, '__name__', kind)}")
    return value


def _hash_field(obj: dict[str, Any], key: str) -> bytes:
    try:
        value = base64.b64decode(required_field(obj, key, str), validate=True)
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


_COMMON_FIELDS = frozenset({"type", "writer", "index", "prev", "time", "client", "request_id", "issuer",
                            "issuer_id", "statuses", *_CALLER_IDS})
_FIELDS = {"sig": _COMMON_FIELDS | {"nonce", "responder_cert_sha256", "key_label", "generation", "response_sha256"},
           "refusal": _COMMON_FIELDS | {"reason"}}


def decode_record(obj: dict[str, Any]) -> tuple[str, int, bytes, Record]:
    """(writer, index, prev, record) from a parsed ``sig`` or ``refusal`` line; ValueError when malformed."""
    kind = obj.get("type")
    if kind not in RECORD_TYPES:
        raise ValueError(f"not a record line (type {kind!r})")
    statuses = required_field(obj, "statuses", list)
    if not all(isinstance(s, list) and len(s) == 2 and all(isinstance(x, str) for x in s) for s in statuses):
        raise ValueError("field 'statuses' is not a list of [serial, status]")
    extra = set(obj) - _FIELDS[kind]
    if extra:
        raise ValueError(f"unknown fields {sorted(extra)}")
    present = [k for k in _CALLER_IDS if k in obj]
    if present and len(present) != len(_CALLER_IDS):
        raise ValueError(f"fields {', '.join(_CALLER_IDS)} come together, not only {', '.join(present)}")
    ids = {k: required_field(obj, k, int) for k in present}
    common = {"time": _parse_time(required_field(obj, "time", str)), "client": required_field(obj, "client", str),
              "request_id": required_field(obj, "request_id", str),
              "issuer_name": required_field(obj, "issuer", str), "issuer_id": required_field(obj, "issuer_id", str),
              "statuses": tuple(SignedStatus(s[0], s[1]) for s in statuses), **ids}
    record: Record
    if kind == "refusal":
        record = RefusalRecord(reason=required_field(obj, "reason", str), **common)
    else:
        record = AuditRecord(
            nonce=required_field(obj, "nonce", bool),
            responder_fingerprint=required_field(obj, "responder_cert_sha256", str),
            key_label=required_field(obj, "key_label", str), generation=required_field(obj, "generation", int),
            response_sha256=required_field(obj, "response_sha256", str), **common)
    index = required_field(obj, "index", int)
    if index < 0:
        raise ValueError("negative index")
    return required_field(obj, "writer", str), index, _hash_field(obj, "prev"), record


def header_line(writer: str, seq: int, created: datetime, rng: CompactRange, head: bytes) -> bytes:
    return json.dumps({"type": "file", "writer": writer, "seq": seq, "created": _time_text(created),
                       "index": rng.size, "head": _b64(head), "range": [_b64(h) for h in rng.hashes]},
                      separators=(",", ":")).encode()


def decode_header(obj: dict[str, Any]) -> tuple[str, int, datetime, CompactRange, bytes]:
    if obj.get("type") != "file":
        raise ValueError("the first line of an audit file must be its 'file' header")
    hashes = required_field(obj, "range", list)
    try:
        rng = CompactRange(required_field(obj, "index", int),
                           [_hash_field({"h": h}, "h") for h in hashes])
    except ValueError as e:
        raise ValueError(f"bad compact range in header: {e}") from None
    seq = required_field(obj, "seq", int)
    return (required_field(obj, "writer", str), seq, _parse_time(required_field(obj, "created", str)), rng,
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


def checkpoint_body(writer: str, rng: CompactRange, head: bytes, now: datetime, policy: CheckpointPolicy) -> bytes:
    return cpt.Checkpoint(origin_for(writer), rng.size, rng.root(), (
        f"chain {_b64(head)}", f"time {_time_text(now)}",
        f"policy every={policy.every} interval={_interval_text(policy.interval)}",
    )).body()


def checkpoint_extensions(c: cpt.Checkpoint) -> tuple[bytes, datetime, CheckpointPolicy]:
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


def note_policy(note: str) -> CheckpointPolicy | None:
    """The policy a checkpoint note states (not verified: the writer resuming its own log), or None."""
    try:
        body, _ = cpt.parse_note(note)
        return checkpoint_extensions(cpt.parse_checkpoint(body))[2]
    except (cpt.CheckpointError, ValueError):
        return None


def checkpoint_line(writer: str, size: int, note: str) -> bytes:
    return json.dumps({"type": "checkpoint", "writer": writer, "index": size, "note": note},
                      separators=(",", ":")).encode()
