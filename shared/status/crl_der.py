"""A lean walk of a CRL's revokedCertificates, for CRLs of millions of entries.

cryptography builds Python objects for every entry and every extension: seconds a million. This
reads the DER of a CRL that cryptography has already loaded (and so checked the structure of, entries
included) and verified, and takes each entry's serial, revocation date, reason code and invalidity
date in the forms CAs write: a short-form or one/two-octet length, an INTEGER serial, a UTCTime or
GeneralizedTime, and entry extensions that are only a non-critical reasonCode (an ENUMERATED of one
octet) and a non-critical invalidityDate (GeneralizedTime YYYYMMDDHHMMSSZ), each at most once.
Anything else (another extension, a critical flag, a reason code out of RFC 5280's list, an
unexpected length form) raises ``Unusual``: the caller then reads the CRL by cryptography
(``shared.status.crl.revoked_entries``), which decides it exactly as before.

Also the common form of an issued-serials list: hex digits alone on each line.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from shared.status.table import EPOCH, GOOD_ANSWER, NO_REASON, NO_TIME, REVOKED_CODE, Entries

_REASON = bytes.fromhex("300a0603551d1504030a01")  # SEQ { OID reasonCode, OCTET STRING { ENUMERATED 1 octet } }
_INVALIDITY = bytes.fromhex("30180603551d180411180f")  # SEQ { OID invalidityDate, OCTET STRING { GenTime 15 } }
_REASONS = frozenset((0, 1, 2, 3, 4, 5, 6, 8, 9, 10))
_REMOVE_FROM_CRL = 8
_ISSUED = re.compile(rb"(?:[0-9A-Fa-f]+\r?\n)+")


class Unusual(Exception):
    """Not a form this walk reads: cryptography reads the CRL instead."""


def _header(d: bytes, pos: int, tag: int) -> tuple[int, int]:
    """(start, end) of the contents of the element at ``pos``, which must have ``tag``."""
    if pos + 2 > len(d) or d[pos] != tag:
        raise Unusual
    n = d[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if not 1 <= k <= 4:
            raise Unusual
        n = int.from_bytes(d[pos:pos + k], "big")
        pos += k
    if pos + n > len(d):
        raise Unusual
    return pos, pos + n


def signed_parts(der: bytes) -> tuple[memoryview, bytes, bytes] | None:
    """(tbsCertList as signed, signatureAlgorithm, signature) of a DER CRL whose inner and outer
    signature algorithms are the same bytes; None otherwise (or for any other form)."""
    try:
        start, end = _header(der, 0, 0x30)
        if end != len(der):
            return None
        tbs_start, tbs_end = _header(der, start, 0x30)
        _, alg_end = _header(der, tbs_end, 0x30)
        bits_start, bits_end = _header(der, alg_end, 0x03)
        if bits_end != end or bits_start == bits_end or der[bits_start] != 0:
            return None
        inner = tbs_start
        if der[inner] == 0x02:
            inner = _header(der, inner, 0x02)[1]
        inner_end = _header(der, inner, 0x30)[1]
        algorithm = der[tbs_end:alg_end]
        if der[inner:inner_end] != algorithm:
            return None
        return memoryview(der)[start:tbs_end], algorithm, der[bits_start + 1:bits_end]
    except (IndexError, Unusual):
        return None


def _revoked_range(der: bytes) -> tuple[int, int]:
    pos, tbs_end = _header(der, _header(der, 0, 0x30)[0], 0x30)
    if der[pos] == 0x02:  # version
        pos = _header(der, pos, 0x02)[1]
    pos = _header(der, pos, 0x30)[1]  # signature algorithm
    pos = _header(der, pos, 0x30)[1]  # issuer
    pos = _header(der, pos, der[pos] if der[pos] in (0x17, 0x18) else 0x17)[1]  # thisUpdate
    if pos < tbs_end and der[pos] in (0x17, 0x18):
        pos = _header(der, pos, der[pos])[1]  # nextUpdate
    if pos < tbs_end and der[pos] == 0x30:
        return _header(der, pos, 0x30)
    return pos, pos


class _Days:
    """Epoch seconds of a date (bytes YYYYMMDD), remembered: entries share few dates."""

    def __init__(self) -> None:
        self.seen: dict[bytes, int] = {}

    def __call__(self, date: bytes) -> int:
        found = self.seen.get(date)
        if found is None:
            try:
                found = int((datetime(int(date[:4]), int(date[4:6]), int(date[6:8]), tzinfo=UTC) - EPOCH)
                            .total_seconds())
            except ValueError:
                raise Unusual from None
            self.seen[date] = found
        return found


def _seconds(days: _Days, t: bytes, generalized: bool) -> int:
    """A time cryptography has checked (revocationDate) or that is all digits (checked here)."""
    if generalized:
        date, clock = t[:8], t[8:14]
    else:
        yy = int(t[:2])
        date, clock = (b"19" if yy >= 50 else b"20") + t[:6], t[6:12]
    if not (clock.isdigit() and date.isdigit() and t[-1:] == b"Z"):
        raise Unusual
    hhmmss = int(clock)
    h, rest = divmod(hhmmss, 10000)
    m, s = divmod(rest, 100)
    if h > 23 or m > 59 or s > 59:
        raise Unusual
    return days(date) + h * 3600 + m * 60 + s


def der_entries(der: bytes) -> Entries:
    """The entries of the DER CRL ``der`` in order; ``Unusual`` for a form this walk does not read."""
    try:
        return _walk(der)
    except (IndexError, ValueError):
        raise Unusual from None


def _walk(der: bytes) -> Entries:
    pos, end = _revoked_range(der)
    entries = Entries()
    serials, codes, times, reasons, invalid = (entries.serials, entries.codes, entries.times, entries.reasons,
                                               entries.invalid)
    days = _Days()
    dates = days.seen
    from_bytes = int.from_bytes
    d = der
    while pos < end:
        n = d[pos + 1]
        if d[pos] != 0x30:
            raise Unusual
        if n < 0x80:
            s = pos + 2
        elif n == 0x81:
            n, s = d[pos + 2], pos + 3
        elif n == 0x82:
            n, s = (d[pos + 2] << 8) | d[pos + 3], pos + 4
        else:
            raise Unusual
        e = s + n
        sl = d[s + 1]
        if d[s] != 0x02 or not 0 < sl < 0x80:
            raise Unusual
        t = s + 2 + sl
        serial = from_bytes(d[s + 2:t], "big", signed=True)
        tag, tl = d[t], d[t + 1]
        if tag == 0x17 and tl == 13:  # UTCTime, checked by cryptography: YYMMDDHHMMSSZ
            date = d[t + 2:t + 8]
            base = dates.get(date)
            if base is None:
                base = dates[date] = days((b"19" if date[:2] >= b"50" else b"20") + date)
            v = int(d[t + 8:t + 14])
            when = base + v // 10000 * 3600 + v // 100 % 100 * 60 + v % 100
        elif tag == 0x18 and tl == 15:
            when = _seconds(days, d[t + 2:t + 17], True)
        else:
            raise Unusual
        q = t + 2 + tl
        if q == e:
            reason = NO_REASON
            invalidity = NO_TIME
        else:
            reason, invalidity = _extensions(d, q, e, days)
        if reason == _REMOVE_FROM_CRL:  # released from hold: good, unless a revoking entry says otherwise
            code, when, reason, invalidity = GOOD_ANSWER
        else:
            code = REVOKED_CODE
        serials.append(serial)
        codes.append(code)
        times.append(when)
        reasons.append(reason)
        invalid.append(invalidity)
        pos = e
    if pos != end:
        raise Unusual
    return entries


def _extensions(d: bytes, q: int, e: int, days: _Days) -> tuple[int, int]:
    """(reason, invalidity) of the crlEntryExtensions at ``q`` that end at ``e``."""
    reason = NO_REASON
    invalidity = NO_TIME
    if d[q] != 0x30 or d[q + 1] >= 0x80 or q + 2 + d[q + 1] != e:
        raise Unusual
    q += 2
    seen_reason = seen_invalidity = False
    while q < e:
        if d[q:q + 11] == _REASON and not seen_reason:
            reason = d[q + 11]
            if reason not in _REASONS:
                raise Unusual
            seen_reason = True
            q += 12
        elif d[q:q + 11] == _INVALIDITY and not seen_invalidity:
            invalidity = _seconds(days, d[q + 11:q + 26], True)
            seen_invalidity = True
            q += 26
        else:
            raise Unusual
    if q != e:
        raise Unusual
    return reason, invalidity


def issued_serials(raw: bytes) -> list[int] | None:
    """The serials of an issued-serials list of hex lines only (duplicates kept); None for any other
    form (comments, blank lines, prefixes, no final newline...), which ``parse_serial_list`` reads."""
    if _ISSUED.fullmatch(raw) is None:
        return None
    return [int(x, 16) for x in raw.split()]
