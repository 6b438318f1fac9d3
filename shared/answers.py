"""What one signed answer is named by and how it is stored outside a process (Redis, pre-signing).

An answer is named by what it answers, not by the request's bytes: the CA and the CertIDs it answers
(hash algorithm, issuer name and key hashes, serial), so a GET, a POST and every encoding of one
request share it. The CertID is part of the name, hash algorithm included: the answer echoes the
request's CertID, so a SHA-1 and a SHA-256 request for one certificate are two answers.

Stored form (``encode``/``decode``): a small fixed header, then the responder's fingerprint and
the DER OCSPResponse. What a reader needs to decide whether it may serve the answer without parsing
it: its validity window, which responder signed it (a rotation retires it), and the status it
answers with the revocation time and reason (a reader whose own status data says otherwise does not
serve it: a frontend whose data is older than the writer's, or newer, never serves the other's view).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from shared.ocsp.types import CertId, CertStatus, HashAlgorithm, StatusInfo

FORMAT = 1  # the first byte of every stored answer; another value is not ours to read
# format, thisUpdate, nextUpdate, producedAt, status, revocation time (0: none), reason (-1: none),
# fingerprint length
_HEADER = struct.Struct(">BqqqBqhH")
_STATUS_CODES = {CertStatus.GOOD: 1, CertStatus.REVOKED: 2, CertStatus.UNKNOWN: 3}
_CODE_STATUS = {v: k for k, v in _STATUS_CODES.items()}


@dataclass(frozen=True, slots=True)
class AnswerKey:
    """The name of one answer: the CA (its configured name) and the CertIDs answered, in order."""

    ca: str
    cert_ids: tuple[CertId, ...]

    def text(self, prefix: str = "") -> str:
        """The external key: ``<prefix>a:<ca>:<certids>`` (``certid_text``). The frontends of one
        fleet must give a CA the same name."""
        return f"{prefix}a:{self.ca}:{self.certid_text()}"

    def certid_text(self) -> str:
        """``<alg>:<nameHash>:<keyHash>:<serial>`` (hex), CertIDs joined by ``|``; ``parse_certids``
        reads it back (the CA name is not part of it: it may hold any character)."""
        return "|".join(f"{c.hash_algorithm.value}:{c.issuer_name_hash.hex()}:{c.issuer_key_hash.hex()}:"
                        f"{c.serial.hex()}" for c in self.cert_ids)


def parse_certids(text: str) -> tuple[CertId, ...]:
    """``AnswerKey.certid_text`` read back; ValueError when it is not one."""
    out = []
    for part in text.split("|"):
        alg, name, key, serial = part.split(":")
        algorithm = HashAlgorithm(alg)
        cid = CertId(algorithm, bytes.fromhex(name), bytes.fromhex(key), bytes.fromhex(serial))
        if len(cid.issuer_name_hash) != algorithm.digest_size or len(cid.issuer_key_hash) != algorithm.digest_size \
                or not cid.serial:
            raise ValueError(f"not a CertID: {part!r}")
        out.append(cid)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    der: bytes  # the whole DER OCSPResponse
    this_update: int  # epoch seconds
    next_update: int  # epoch seconds
    produced_at: int  # epoch seconds
    status: CertStatus  # what it answers (for the first CertID of a multi-CertID answer)
    responder_fingerprint: str  # the SignReply's: which responder signed it
    revocation_time: int = 0  # epoch seconds, for REVOKED; 0: none
    reason: int = -1  # CRLReason value, for REVOKED; -1: none

    def encode(self) -> bytes:
        fp = self.responder_fingerprint.encode("ascii")
        return _HEADER.pack(FORMAT, self.this_update, self.next_update, self.produced_at,
                            _STATUS_CODES[self.status], self.revocation_time, self.reason, len(fp)) + fp + self.der

    def answers(self, info: StatusInfo) -> bool:
        """True when this answer says what ``info`` says (status, revocation time and reason)."""
        rev = info.revocation
        if rev is None:
            return info.status is self.status and self.revocation_time == 0 and self.reason == -1
        reason = -1 if rev.reason is None else int(rev.reason)
        return (info.status is self.status and self.revocation_time == int(rev.time.timestamp())
                and self.reason == reason)


class BadStoredAnswer(ValueError):
    """Bytes that are not a stored answer of this format (another writer, truncation)."""


def decode(data: bytes) -> StoredAnswer:
    if len(data) < _HEADER.size:
        raise BadStoredAnswer("shorter than the header")
    fmt, tu, nu, produced, code, rev_time, reason, fp_len = _HEADER.unpack_from(data)
    if fmt != FORMAT:
        raise BadStoredAnswer(f"format {fmt}, not {FORMAT}")
    status = _CODE_STATUS.get(code)
    if status is None:
        raise BadStoredAnswer(f"status code {code}")
    start = _HEADER.size + fp_len
    if len(data) <= start or not tu <= nu:
        raise BadStoredAnswer("truncated or inconsistent")
    try:
        fp = data[_HEADER.size:start].decode("ascii")
    except UnicodeDecodeError as e:
        raise BadStoredAnswer("fingerprint is not ASCII") from e
    return StoredAnswer(bytes(data[start:]), tu, nu, produced, status, fp, rev_time, reason)


def expires_at(this_update: int, next_update: int, max_age: float) -> float:
    """When a stored answer goes (the store's rule, every writer and reader alike):
    min(nextUpdate, thisUpdate + max_age)."""
    return min(next_update, this_update + max_age)


def serial_octets(serial: int) -> bytes:
    """The INTEGER content octets of ``serial`` in DER (minimal two's complement): how a client's
    CertID spells it."""
    n = serial if serial >= 0 else -serial - 1
    return serial.to_bytes(n.bit_length() // 8 + 1, "big", signed=True)


def stored_answer(der: bytes, info: StatusInfo, this_update: int, next_update: int, produced_at: int,
                  fingerprint: str) -> StoredAnswer:
    """A fresh single-CertID answer as the store keeps it (what ``StoredAnswer.answers`` compares)."""
    rev = info.revocation
    return StoredAnswer(der, this_update, next_update, produced_at, info.status, fingerprint,
                        0 if rev is None else int(rev.time.timestamp()),
                        -1 if rev is None or rev.reason is None else int(rev.reason))
