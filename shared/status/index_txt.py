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

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.ocsp.types import CertStatus, Revocation, RevocationReason, StatusInfo
from shared.status import loader
from shared.status.base import GOOD, UNKNOWN, FileStatusSource, Snapshot, StatusDataError, check_shrink
from shared.status.table import (
    GOOD_ANSWER,
    UNKNOWN_ANSWER,
    Entries,
    StatusTable,
    answer_of,
    build_table,
    diff,
    table_of,
)

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
    """``entries``: a dict from ``parse_index``, a ``StatusTable`` from ``IndexTxtSource``."""

    __slots__ = ("entries", "lines", "validity")

    def __init__(self, entries: Mapping[int, StatusInfo], validity: timedelta, lines: int) -> None:
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

    def count(self) -> int | None:
        return len(self.entries)

    def interval(self) -> tuple[timedelta, str]:
        return self.validity, "status.validity"

    def summary(self) -> str:
        entries = self.entries
        revoked = (entries.revoked if isinstance(entries, StatusTable)
                   else sum(1 for s in entries.values() if s.status is CertStatus.REVOKED))
        return f"index.txt: {len(entries)} serials, {revoked} revoked"

    def changed_since(self, old: Snapshot) -> list[int] | None:
        """``changed_serials(old, self)`` by a walk of two tables; None when either has no table."""
        if not (isinstance(old, IndexSnapshot) and isinstance(old.entries, StatusTable)
                and isinstance(self.entries, StatusTable)):
            return None
        return diff(old.entries, self.entries, UNKNOWN_ANSWER, UNKNOWN_ANSWER)


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


def decode_index(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # subjects in odd encodings must not stop status answers


class _Unusual(Exception):
    """The fast parser met something it does not decide itself: ``parse_index`` does."""


# An expiry the fast parser checks itself: ASCII digits, a time of day in range; the date (YYMMDD or
# YYYYMMDD) is checked once by parse_time and remembered.
_EXPIRY = re.compile(rb"(\d{6}|\d{8})(?:[01]\d|2[0-3])[0-5]\d[0-5]\dZ")


def _fast_entries(raw: bytes) -> tuple[Entries, int]:
    """index.txt lines in their common form, exactly as ``parse_index`` reads them; ``_Unusual`` for
    anything else (blank lines, odd serial forms, non-ASCII times, errors), which it then decides."""
    if not raw.endswith(b"\n"):
        raise _Unusual
    lines = raw.split(b"\n")
    lines.pop()
    entries = Entries()
    serials, codes, times, reasons, invalid = (entries.serials, entries.codes, entries.times, entries.reasons,
                                               entries.invalid)
    dates: set[bytes] = set()
    revocations: dict[bytes, tuple[int, int, int, int]] = {}
    expiry_ok = _EXPIRY.fullmatch
    for line in lines:
        fields = line.split(b"\t")
        if len(fields) != 6:
            raise _Unusual
        flag, expiry, revocation, serial_hex = fields[0], fields[1], fields[2], fields[3]
        m = expiry_ok(expiry)
        if m is None:
            raise _Unusual
        date = m.group(1)
        if date not in dates:
            try:
                parse_time(expiry.decode())
            except ValueError:
                raise _Unusual from None
            dates.add(date)
        try:
            serial = int(serial_hex, 16)  # bytes: ASCII forms only, which int(str, 16) reads alike
        except ValueError:
            raise _Unusual from None
        if flag == b"V" or flag == b"E":
            answer = GOOD_ANSWER
        elif flag == b"R":
            answer = revocations.get(revocation)  # type: ignore[assignment]
            if answer is None:
                if not revocation.isascii():
                    raise _Unusual
                try:
                    rev = parse_revocation(revocation.decode())
                except ValueError:
                    raise _Unusual from None
                answer = (GOOD_ANSWER if rev.reason is RevocationReason.REMOVE_FROM_CRL
                          else answer_of(StatusInfo(CertStatus.REVOKED, rev)))
                revocations[revocation] = answer
        else:
            raise _Unusual
        serials.append(serial)
        codes.append(answer[0])
        times.append(answer[1])
        reasons.append(answer[2])
        invalid.append(answer[3])
    if not serials:
        raise _Unusual
    return entries, len(serials)


def index_table(raw: bytes, where: str) -> tuple[StatusTable, int]:
    """The file's serials as a table, and its count of lines with an entry: the same statuses, and
    the same errors (StatusDataError), as ``parse_index``, which decides every line out of the common."""
    try:
        entries, lines = _fast_entries(raw)
    except _Unusual:
        snap = parse_index(decode_index(raw), timedelta(0), where)
        return table_of(snap.entries), snap.lines
    return build_table(entries), lines


def read_index_table(path: Path) -> tuple[StatusTable, int]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise StatusDataError(f"cannot read {path}: {e.strerror or e}") from None
    return index_table(raw, str(path))


class IndexTxtSource(FileStatusSource):
    kind = "index"

    def __init__(self, name: str, path: Path, validity: timedelta, check_interval: float = 5.0, *,
                 max_shrink: float = 0.1) -> None:
        super().__init__(name, [path], check_interval)
        self.path = path
        self.validity = validity
        self.max_shrink = max_shrink  # share of the loaded serials a reload may lose (0..1)

    def parse(self) -> IndexSnapshot:
        """Read the file into a table: in a loader process when it is big (``loader.use_process``),
        which also names the serials changed since the loaded table; else here."""
        loaded = self._snapshot
        changes = None
        if self.use_loader():
            job: dict[str, object] = {"kind": "index", "path": str(self.path)}
            blobs: list[object] = []
            if isinstance(loaded, IndexSnapshot) and isinstance(loaded.entries, StatusTable):
                job["old"], blobs = loaded.entries.to_wire()
                job["unlisted"] = [UNKNOWN_ANSWER, UNKNOWN_ANSWER]
            header, out = loader.run(job, blobs, timeout=self.loader_timeout, command=self.loader_command)
            table = StatusTable.from_wire(header["table"], out[:5])
            lines = int(header["lines"])
            changes = loader.changes_from_wire(header, out)
        else:
            table, lines = read_index_table(self.path)
        snap = IndexSnapshot(table, self.validity, lines)
        check_shrink(str(self.path), "serials", len(snap.entries),
                     len(loaded.entries) if isinstance(loaded, IndexSnapshot) else None, self.max_shrink)
        if changes is not None and loaded is not None:
            self.computed_changes(loaded, snap, changes)
        return snap
