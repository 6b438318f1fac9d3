"""OpenSSL ``ca`` database (index.txt) as a status source.

Each line has six tab-separated fields:

    flag  expiry  revocation  serial(hex)  filename  subject

- flag ``V`` (valid) and ``E`` (expired) answer **good**: RFC 6960 status says whether the CA revoked
  the certificate, not whether it is inside its validity period (relying parties check that
  themselves), and an expired certificate that was never revoked was never revoked.
- flag ``R`` answers **revoked**, except with reason removeFromCRL, which RFC 5280 defines as
  "released from certificateHold": not revoked, so **good** (as a CRL entry with that reason is). The revocation field is ``TIME[,REASON[,EXTRA]]`` where TIME is a
  UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ). REASON is one of ``openssl ca``'s
  names (unspecified, keyCompromise, CACompromise, affiliationChanged, superseded,
  cessationOfOperation, certificateHold, removeFromCRL; compared without case), or one of the
  forms that carry EXTRA: ``holdInstruction,OID`` (certificateHold), ``keyTime,TIME``
  (keyCompromise, TIME = compromise time, answered as the invalidity date) and ``CAkeyTime,TIME``
  (CACompromise, likewise).
- a serial that is not in the file answers **unknown**: index.txt lists every certificate the CA
  issued, so absence means "not issued by this CA" as far as we can know.

A line that cannot be parsed fails the whole file (the previous data stays in use): skipping it
could hide a revocation. So does anything that looks like a file cut short, since `openssl ca` always
writes whole lines: a line without all six fields, a last line without its newline, a file with no
entries at all (every serial would answer unknown), and, on a reload, a file that lost more than
``max_shrink`` of the loaded file's serials (a copy cut at a line boundary; `openssl ca` never deletes a
line, it only changes V to R or E).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.ocsp.types import CertStatus, Revocation, RevocationReason, StatusInfo
from shared.status.base import GOOD, UNKNOWN, FileStatusSource, Snapshot, StatusDataError, check_shrink

_REASONS = {
    "unspecified": RevocationReason.UNSPECIFIED,
    "keycompromise": RevocationReason.KEY_COMPROMISE,
    "cacompromise": RevocationReason.CA_COMPROMISE,
    "affiliationchanged": RevocationReason.AFFILIATION_CHANGED,
    "superseded": RevocationReason.SUPERSEDED,
    "cessationofoperation": RevocationReason.CESSATION_OF_OPERATION,
    "certificatehold": RevocationReason.CERTIFICATE_HOLD,
    "removefromcrl": RevocationReason.REMOVE_FROM_CRL,
    "privilegewithdrawn": RevocationReason.PRIVILEGE_WITHDRAWN,
    "aacompromise": RevocationReason.AA_COMPROMISE,
    # Forms whose third field carries extra data:
    "holdinstruction": RevocationReason.CERTIFICATE_HOLD,
    "keytime": RevocationReason.KEY_COMPROMISE,
    "cakeytime": RevocationReason.CA_COMPROMISE,
}
_TIMED = {"keytime", "cakeytime"}


def parse_time(text: str) -> datetime:
    """UTCTime YYMMDDHHMMSSZ (RFC 5280 two-digit years) or GeneralizedTime YYYYMMDDHHMMSSZ."""
    if not text.endswith("Z") or not text[:-1].isdigit():
        raise ValueError(f"{text!r} is not a time like 250101120000Z")
    digits = text[:-1]
    if len(digits) == 12:
        yy = int(digits[:2])
        year = 1900 + yy if yy >= 50 else 2000 + yy
        rest = digits[2:]
    elif len(digits) == 14:
        year = int(digits[:4])
        rest = digits[4:]
    else:
        raise ValueError(f"{text!r} is not a time like 250101120000Z")
    return datetime(year, int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8]), int(rest[8:10]),
                    tzinfo=UTC)


def parse_revocation(field: str) -> Revocation:
    parts = field.split(",")
    if not parts[0]:
        raise ValueError("revoked entry without a revocation time")
    when = parse_time(parts[0])
    reason = None
    invalidity = None
    if len(parts) >= 2 and parts[1]:
        key = parts[1].lower()
        reason = _REASONS.get(key)
        if reason is None:
            raise ValueError(f"unknown revocation reason {parts[1]!r}")
        if key in _TIMED:
            if len(parts) < 3 or not parts[2]:
                raise ValueError(f"{parts[1]} needs a compromise time after it")
            invalidity = parse_time(parts[2])
    if len(parts) > 3:
        raise ValueError(f"revocation field {field!r} has too many parts")
    return Revocation(time=when, reason=reason, invalidity_date=invalidity)


class IndexSnapshot(Snapshot):
    __slots__ = ("entries", "lines", "validity")

    def __init__(self, entries: dict[int, StatusInfo], validity: timedelta, lines: int) -> None:
        self.entries = entries
        self.validity = validity
        self.lines = lines

    def status(self, serial: int) -> StatusInfo:
        return self.entries.get(serial, UNKNOWN)

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        return now, now + self.validity

    def issued_at(self) -> None:
        return None  # answers carry the time they are made

    def listed(self, serial: int) -> bool:
        return serial in self.entries

    def serials(self) -> Iterator[int]:
        return iter(self.entries)

    def interval(self) -> tuple[timedelta, str]:
        return self.validity, "status.validity"

    def summary(self) -> str:
        revoked = sum(1 for s in self.entries.values() if s.status is CertStatus.REVOKED)
        return f"index.txt: {len(self.entries)} serials, {revoked} revoked"


def parse_index(text: str, validity: timedelta, where: str = "index.txt") -> IndexSnapshot:
    entries: dict[int, StatusInfo] = {}
    n = 0
    # Lines end at "\n" only: str.splitlines() would also split at U+0085, U+2028, \x0b, \x0c,
    # \x1c-\x1e..., which a subject may contain (and which latin-1 decoding produces from 0x85).
    lines = text.split("\n")
    if lines[-1]:
        raise StatusDataError(f"{where}:{len(lines)}: the last line has no newline: the file is cut short "
                              "(still being written?)")
    for lineno, line in enumerate(lines, 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        n += 1
        fields = line.split("\t")
        if len(fields) != 6:
            raise StatusDataError(f"{where}:{lineno}: expected 6 tab-separated fields (flag, expiry, revocation, "
                                  f"serial, file name, subject), found {len(fields)}")
        flag, expiry, revocation, serial_hex = fields[0], fields[1], fields[2], fields[3]
        try:
            parse_time(expiry)
            serial = int(serial_hex, 16)
            if flag in ("V", "E"):
                info = GOOD
            elif flag == "R":
                rev = parse_revocation(revocation)
                if rev.reason is RevocationReason.REMOVE_FROM_CRL:
                    info = GOOD  # released from hold
                else:
                    info = StatusInfo(CertStatus.REVOKED, rev)
            else:
                raise ValueError(f"unknown flag {flag!r} (expected V, R or E)")
        except ValueError as e:
            raise StatusDataError(f"{where}:{lineno}: {e}") from None
        # A serial listed twice: revoked wins (never answer good for something revoked).
        if info is GOOD and serial in entries:
            continue
        entries[serial] = info
    if not entries:
        raise StatusDataError(f"{where}: has no entries; refusing to answer unknown for every serial (an "
                              "index.txt lists every certificate the CA issued; cut short?)")
    return IndexSnapshot(entries, validity, n)


class IndexTxtSource(FileStatusSource):
    kind = "index"

    def __init__(self, name: str, path: Path, validity: timedelta, check_interval: float = 5.0, *,
                 max_shrink: float = 0.1) -> None:
        super().__init__(name, [path], check_interval)
        self.path = path
        self.validity = validity
        self.max_shrink = max_shrink  # share of the loaded serials a reload may lose (0..1)

    def parse(self) -> IndexSnapshot:
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            raise StatusDataError(f"cannot read {self.path}: {e.strerror or e}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")  # subjects in odd encodings must not stop status answers
        snap = parse_index(text, self.validity, str(self.path))
        loaded = self._snapshot
        check_shrink(str(self.path), "serials", len(snap.entries),
                     len(loaded.entries) if isinstance(loaded, IndexSnapshot) else None, self.max_shrink)
        return snap
