"""Compact status tables: millions of serials in a few flat objects, looked up by binary search.

A table holds ``count`` serials sorted in one ``bytes`` object of fixed-width keys, each the serial
(a signed integer) plus an offset of 256**(width-1), big-endian in ``width`` bytes: byte order is
integer order, negative serials included. Beside the keys, parallel arrays carry each serial's answer:
``codes`` (one byte: 0 good, 1 revoked), ``times`` (revocation time, epoch seconds, int64),
``reasons`` (one byte, the CRLReason code or 255 for none) and ``invalid`` (invalidity date, epoch
seconds, or ``NO_TIME``). Good entries carry time 0, reason 255 and ``NO_TIME``, so two answers are the
same exactly when their four values are. About ``width + 18`` bytes an entry (39 for 20-octet serials),
against some 200 for a dict of ``StatusInfo`` objects, and a handful of objects for the collector.

A ``StatusTable`` is a read-only ``Mapping[int, StatusInfo]``; a ``SerialSet`` (keys only) a read-only
``AbstractSet[int]``. ``build_table`` sorts and de-duplicates parsed entries by the status files' one rule: the
last revoking entry of a serial wins, else it is good. ``diff`` walks two tables in step (runs of equal
keys and answers compared a block at a time) and names the serials whose answer differs. ``to_wire`` /
``from_wire`` carry a table between processes as a small header and a few flat buffers.
"""

from __future__ import annotations

import bisect
import itertools
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.ocsp.types import CertStatus, Revocation, RevocationReason, StatusInfo

NO_TIME = -(1 << 63)  # no invalidity date
NO_REASON = 255
GOOD_CODE, REVOKED_CODE, UNKNOWN_CODE = 0, 1, 2
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
GOOD = StatusInfo(CertStatus.GOOD)  # the one good and unknown answer (shared.status.base's)
UNKNOWN = StatusInfo(CertStatus.UNKNOWN)
_SAMPLE = 64  # every 64th key is kept in a list, bisected in C; the rest is a short Python search
_BLOCK = 256  # entries compared at once by diff()

Int64s = Any  # array("q"), or a memoryview of the buffer a loader process sent: times: an array, or a view of the buffer a loader process sent
Answer = tuple[int, int, int, int]  # (code, time, reason, invalidity)
GOOD_ANSWER: Answer = (GOOD_CODE, 0, NO_REASON, NO_TIME)
UNKNOWN_ANSWER: Answer = (UNKNOWN_CODE, 0, NO_REASON, NO_TIME)


def epoch_seconds(t: datetime) -> int:
    return (t - EPOCH) // timedelta(seconds=1)


def from_epoch(seconds: int) -> datetime:
    return EPOCH + timedelta(seconds=seconds)


def answer_of(info: StatusInfo) -> Answer:
    """The four table values of ``info``."""
    if info.status is CertStatus.GOOD:
        return GOOD_ANSWER
    if info.status is CertStatus.UNKNOWN:
        return UNKNOWN_ANSWER
    rev = info.revocation
    assert rev is not None
    return (REVOKED_CODE, epoch_seconds(rev.time), NO_REASON if rev.reason is None else int(rev.reason),
            NO_TIME if rev.invalidity_date is None else epoch_seconds(rev.invalidity_date))


def info_of(answer: Answer) -> StatusInfo:
    code, when, reason, invalid = answer
    if code == GOOD_CODE:
        return GOOD
    if code == UNKNOWN_CODE:
        return UNKNOWN
    return StatusInfo(CertStatus.REVOKED, Revocation(
        from_epoch(when), None if reason == NO_REASON else RevocationReason(reason),
        None if invalid == NO_TIME else from_epoch(invalid)))


def key_width(low: int, high: int) -> int:
    """Bytes per key for serials from ``low`` to ``high``: their two's complement length, plus one."""
    return max((v if v >= 0 else ~v).bit_length() // 8 + 1 for v in (low, high)) + 1


class KeyTable:
    """Sorted fixed-width keys (see the module text) and the search on them."""

    __slots__ = ("_bias", "_sample", "count", "keys", "width")

    def __init__(self, keys: bytes, width: int, count: int) -> None:
        if count and len(keys) != width * count or not count and keys:
            raise ValueError("key table size does not match its count")
        self.keys = keys
        self.width = width
        self.count = count
        self._bias = 1 << (8 * (width - 1)) if width else 0
        self._sample = [keys[i * width:(i + 1) * width] for i in range(0, count, _SAMPLE)]

    def key(self, serial: int) -> bytes | None:
        try:
            return (serial + self._bias).to_bytes(self.width, "big")
        except OverflowError:  # outside the table's range (or negative): not in it
            return None

    def find(self, serial: int) -> int:
        """The position of ``serial``, or -1."""
        if not self.count:
            return -1
        key = self.key(serial)
        if key is None:
            return -1
        block = bisect.bisect_right(self._sample, key) - 1
        if block < 0:
            return -1
        lo = block * _SAMPLE
        hi = min(lo + _SAMPLE, self.count)
        keys, w = self.keys, self.width
        while lo < hi:
            mid = (lo + hi) // 2
            if keys[mid * w:mid * w + w] < key:
                lo = mid + 1
            else:
                hi = mid
        if lo < self.count and keys[lo * w:lo * w + w] == key:
            return lo
        return -1

    def serial_at(self, i: int) -> int:
        w = self.width
        return int.from_bytes(self.keys[i * w:i * w + w], "big") - self._bias

    def iter_serials(self) -> Iterator[int]:
        keys, w, bias = self.keys, self.width, self._bias
        if not self.count:
            return
        for i in range(0, self.count * w, w):
            yield int.from_bytes(keys[i:i + w], "big") - bias

    def __len__(self) -> int:
        return self.count


class SerialSet(KeyTable, AbstractSet[int]):
    """A read-only set of serials (an issued-serials list, or the serials a large reload changed)."""

    __slots__ = ()

    def __contains__(self, serial: object) -> bool:
        return isinstance(serial, int) and self.find(serial) >= 0

    def __iter__(self) -> Iterator[int]:
        return self.iter_serials()

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> set[Any]:
        return set(it)  # what set operators return

    @classmethod
    def of(cls, serials: Sequence[int]) -> SerialSet:
        """From serials sorted and unique."""
        if not serials:
            return cls(b"", 0, 0)
        width = key_width(serials[0], serials[-1])
        return cls(_keys(serials, width), width, len(serials))

    def __repr__(self) -> str:
        return f"SerialSet({self.count} serials)"


class StatusTable(KeyTable, Mapping[int, StatusInfo]):
    """Serials and their answers (see the module text)."""

    __slots__ = ("codes", "invalid", "reasons", "revoked", "times")

    def __init__(self, keys: bytes, width: int, count: int, codes: bytes, times: Int64s,
                 reasons: bytes, invalid: Int64s) -> None:
        super().__init__(keys, width, count)
        if not len(codes) == len(times) == len(reasons) == len(invalid) == count:
            raise ValueError("status table arrays do not match its count")
        self.codes = codes
        self.times = times
        self.reasons = reasons
        self.invalid = invalid
        self.revoked = codes.count(REVOKED_CODE)

    def answer(self, i: int) -> Answer:
        return (self.codes[i], self.times[i], self.reasons[i], self.invalid[i])

    def get(self, serial: int, default: Any = None) -> Any:  # type: ignore[override]
        i = self.find(serial)
        if i < 0:
            return default
        if not self.codes[i]:
            return GOOD
        return info_of(self.answer(i))

    def __getitem__(self, serial: int) -> StatusInfo:
        info = self.get(serial)
        if info is None:
            raise KeyError(serial)
        return info

    def __contains__(self, serial: object) -> bool:
        return isinstance(serial, int) and self.find(serial) >= 0

    def __iter__(self) -> Iterator[int]:
        return self.iter_serials()

    def __repr__(self) -> str:
        return f"StatusTable({self.count} serials, {self.revoked} revoked)"

    # -- between processes ----------------------------------------------------------------------
    def to_wire(self) -> tuple[dict[str, int], list[Any]]:
        return {"width": self.width, "count": self.count}, [self.keys, self.codes, self.times, self.reasons,
                                                            self.invalid]

    @classmethod
    def from_wire(cls, meta: dict[str, int], blobs: Sequence[Any]) -> StatusTable:
        """The table ``to_wire`` described; the buffers are used as they are (no copy)."""
        keys, codes, times, reasons, invalid = blobs
        return cls(keys, int(meta["width"]), int(meta["count"]), codes, _int64(times), reasons, _int64(invalid))


def _int64(blob: Any) -> Any:
    view = memoryview(blob)
    return view if view.format == "q" else view.cast("B").cast("q")


def empty_table() -> StatusTable:
    return StatusTable(b"", 0, 0, b"", array("q"), b"", array("q"))


class Entries:
    """Parsed entries in file order, before ``build_table``: parallel lists."""

    __slots__ = ("codes", "invalid", "reasons", "serials", "times")

    def __init__(self) -> None:
        self.serials: list[int] = []
        self.codes = bytearray()
        self.times = array("q")
        self.reasons = bytearray()
        self.invalid = array("q")

    def add(self, serial: int, answer: Answer) -> None:
        self.serials.append(serial)
        self.codes.append(answer[0])
        self.times.append(answer[1])
        self.reasons.append(answer[2])
        self.invalid.append(answer[3])

    def add_good(self, serials: Iterable[int]) -> None:
        start = len(self.serials)
        self.serials.extend(serials)
        n = len(self.serials) - start
        self.codes.extend(bytes(n))
        self.times.extend(array("q", bytes(8 * n)))
        self.reasons.extend(b"\xff" * n)
        self.invalid.extend(array("q", [NO_TIME]) * n)


def build_table(entries: Entries) -> StatusTable:
    """Sorted, one entry a serial: a serial's last revoking entry wins; without one it is good."""
    codes, serials = entries.codes, entries.serials
    if not serials:
        return empty_table()
    if all(map(int.__lt__, serials, itertools.islice(serials, 1, None))):  # sorted, unique: as CAs write CRLs
        order = serials
        width = key_width(order[0], order[-1])
        return StatusTable(_keys(order, width), width, len(order), bytes(codes), array("q", entries.times),
                           bytes(entries.reasons), array("q", entries.invalid))
    best: dict[int, int] = {}
    for i, serial in enumerate(serials):
        if codes[i] or serial not in best:
            best[serial] = i
    order = sorted(best)
    width = key_width(order[0], order[-1])
    keys = _keys(order, width)
    idx = [best[s] for s in order]
    del best, order
    return StatusTable(keys, width, len(idx), bytes(map(codes.__getitem__, idx)),
                       array("q", map(entries.times.__getitem__, idx)), bytes(map(entries.reasons.__getitem__, idx)),
                       array("q", map(entries.invalid.__getitem__, idx)))


def _keys(serials: Sequence[int], width: int) -> bytes:
    bias = 1 << (8 * (width - 1))
    return b"".join([(s + bias).to_bytes(width, "big") for s in serials])


def table_of(mapping: Mapping[int, StatusInfo]) -> StatusTable:
    """A table of what a reference parser built (a dict of StatusInfo)."""
    entries = Entries()
    for serial, info in mapping.items():
        entries.add(serial, answer_of(info))
    return build_table(entries)


def diff(old: StatusTable, new: StatusTable, old_unlisted: Answer, new_unlisted: Answer) -> list[int]:
    """The serials, sorted, whose answer differs from ``old`` (``old_unlisted`` for serials it does not
    list) to ``new`` (likewise ``new_unlisted``)."""
    changed: list[int] = []
    if old.width != new.width or not old.count or not new.count:
        return _diff_by_value(old, new, old_unlisted, new_unlisted)
    w = old.width
    ok, nk = old.keys, new.keys
    i = j = 0
    n, m = old.count, new.count
    arrays = [(old.codes, new.codes), (old.times, new.times), (old.reasons, new.reasons), (old.invalid, new.invalid)]
    while i < n and j < m:
        b = min(_BLOCK, n - i, m - j)
        if ok[i * w:(i + b) * w] == nk[j * w:(j + b) * w] and all(
                a[i:i + b] == c[j:j + b] for a, c in arrays):
            i += b
            j += b
            continue
        stop_i, stop_j = i + b, j + b
        while i < n and j < m and (i < stop_i or j < stop_j):
            ko, kn = ok[i * w:i * w + w], nk[j * w:j * w + w]
            if ko == kn:
                if old.answer(i) != new.answer(j):
                    changed.append(new.serial_at(j))
                i += 1
                j += 1
            elif ko < kn:
                if old.answer(i) != new_unlisted:
                    changed.append(old.serial_at(i))
                i += 1
            else:
                if new.answer(j) != old_unlisted:
                    changed.append(new.serial_at(j))
                j += 1
    changed.extend(old.serial_at(k) for k in range(i, n) if old.answer(k) != new_unlisted)
    changed.extend(new.serial_at(k) for k in range(j, m) if new.answer(k) != old_unlisted)
    changed.sort()
    return changed


def _diff_by_value(old: StatusTable, new: StatusTable, old_unlisted: Answer, new_unlisted: Answer) -> list[int]:
    changed = []
    for j, serial in enumerate(new.iter_serials()):
        i = old.find(serial)
        if (old.answer(i) if i >= 0 else old_unlisted) != new.answer(j):
            changed.append(serial)
    for i, serial in enumerate(old.iter_serials()):
        if new.find(serial) < 0 and old.answer(i) != new_unlisted:
            changed.append(serial)
    changed.sort()
    return changed
