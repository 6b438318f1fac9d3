"""Signed-response cache for nonce-less requests, keyed by the raw request key.

The key is the bytes the client sent: the POST body, or the GET request target. A hit is one dict
lookup and one float comparison, before any ASN.1 parsing, so the answer costs a few µs. Two
spellings of the same request (another base64 padding, another hash algorithm) are two entries;
each misses once.

An entry lives until min(nextUpdate, thisUpdate + max_age) and is dropped when its CA's status data
reloads, or when the signer reports a new responder generation for that CA. The size is bounded:
at the limit the oldest insertion goes (FIFO, which for entries of similar lifetimes is close to
LRU and costs nothing on a hit).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Entry:
    der: bytes  # the whole DER OCSPResponse
    headers: bytes  # precomputed header lines (no Date, no Cache-Control), each ending in CRLF
    expires: float  # epoch seconds: the entry is not served at or after this
    next_update: int  # epoch seconds: nextUpdate of the answer (for HTTP max-age)
    ca: str


class ResponseCache:
    def __init__(self, max_entries: int, max_age: float, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        self.clock = clock
        self._entries: dict[bytes, Entry] = {}
        self._generations: dict[str, int] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float | None = None) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if (self.clock() if now is None else now) >= entry.expires:
            self._entries.pop(key, None)
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, key: bytes, der: bytes, headers: bytes, *, ca: str, this_update: int, next_update: int,
            generation: int | None = None, now: float | None = None) -> Entry | None:
        """Store an answer; returns the entry, or None when it would expire at once."""
        if generation is not None:
            self.note_generation(ca, generation)
        if self.max_entries <= 0:
            return None
        expires = min(float(next_update), this_update + self.max_age)
        if expires <= (self.clock() if now is None else now):
            return None
        entries = self._entries
        if key not in entries:
            while len(entries) >= self.max_entries:
                entries.pop(next(iter(entries)))
        entry = Entry(der, headers, expires, next_update, ca)
        entries[key] = entry
        return entry

    def note_generation(self, ca: str, generation: int) -> None:
        """The signer signed for ``ca`` with responder ``generation``; a change drops that CA's answers."""
        old = self._generations.get(ca)
        if old != generation:
            self._generations[ca] = generation
            if old is not None:
                self.invalidate(ca)

    def invalidate(self, ca: str | None = None) -> int:
        """Drop the answers of ``ca`` (all when None); returns how many went."""
        before = len(self._entries)
        if ca is None:
            self._entries.clear()
        else:
            self._entries = {k: e for k, e in self._entries.items() if e.ca != ca}
        return before - len(self._entries)
