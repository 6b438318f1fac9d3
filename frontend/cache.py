"""Signed-response cache for nonce-less requests, keyed by the raw request key.

The key is the bytes the client sent, tagged with their kind: b"P" + the POST body, or b"G" + the GET
request target (HEAD shares GET's entries). A hit is one dict
lookup and one float comparison, before any ASN.1 parsing, so the answer costs a few µs. Two
spellings of the same request (another base64 padding, another hash algorithm) are two entries;
each misses once.

An entry lives until min(nextUpdate, time of storing + max_age) (a CRL-backed answer's thisUpdate
may be days old; it is cacheable all the same until its nextUpdate) and is dropped when its CA's status data
reloads, or, ``rotation_grace`` seconds after the frontend learns that the CA's responder was replaced
(a new generation on a SignReply or on the signer's Watch stream), when an older responder signed it.
Until then it is still served: the old responder's answers stay valid for clients. Answers signed by a
retired responder that arrive late (signed before the switch) are not cached. The size is bounded:
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
    generation: int = 0  # the responder generation that signed it (0: not told)
    signer: str = ""  # the signer (address) that signed it: generations are counted per signer process


class ResponseCache:
    def __init__(self, max_entries: int, max_age: float, clock: Callable[[], float] = time.time,
                 rotation_grace: float = 0.0) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        self.clock = clock
        self.rotation_grace = rotation_grace
        self._entries: dict[bytes, Entry] = {}
        # (CA, signer) -> that signer's current responder generation for the CA. Each signer process
        # counts its own generations, so they are only ever compared within one signer.
        self._generations: dict[tuple[str, str], int] = {}
        # (CA, signer) -> when its entries from older responders go; _next_retire is the earliest.
        self._retire_at: dict[tuple[str, str], float] = {}
        self._next_retire = float("inf")
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float | None = None) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if now is None:
            now = self.clock()
        if now >= self._next_retire:
            self._retire_due(now)
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
        if now >= entry.expires:
            self._entries.pop(key, None)
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, key: bytes, der: bytes, headers: bytes, *, ca: str, this_update: int, next_update: int,
            generation: int | None = None, now: float | None = None, signer: str = "") -> Entry | None:
        """Store an answer; returns the entry, or None when it would expire at once."""
        if generation is not None:
            self.note_generation(ca, generation, now=now, signer=signer)
            if generation != self._generations.get((ca, signer)):
                return None  # signed by a responder that has since been replaced
        if self.max_entries <= 0:
            return None
        if now is None:
            now = self.clock()
        expires = min(float(next_update), now + self.max_age)
        if expires <= now:
            return None
        entries = self._entries
        if key not in entries:
            while len(entries) >= self.max_entries:
                entries.pop(next(iter(entries)))
        entry = Entry(der, headers, expires, next_update, ca, generation or 0, signer)
        entries[key] = entry
        return entry

    def note_generation(self, ca: str, generation: int, now: float | None = None, signer: str = "") -> None:
        """A SignReply for ``ca`` came from responder ``generation``. A newer one than known means the
        responder was replaced: answers of older ones go after the grace. An older one is an answer
        signed before a switch we already know of, and changes nothing."""
        old = self._generations.get((ca, signer))
        if old is None:
            self._generations[(ca, signer)] = generation
        elif generation > old:
            self._changed((ca, signer), generation, now)

    def set_generation(self, ca: str, generation: int, now: float | None = None, signer: str = "") -> None:
        """The signer's own word (Watch) on ``ca``'s current responder generation. Authoritative, even
        when lower than what we knew (a restarted signer counts from 1 again)."""
        old = self._generations.get((ca, signer))
        if old is None:
            self._generations[(ca, signer)] = generation
        elif generation != old:
            self._changed((ca, signer), generation, now)

    def generation(self, ca: str, signer: str = "") -> int | None:
        return self._generations.get((ca, signer))

    def _changed(self, which: tuple[str, str], generation: int, now: float | None) -> None:
        self._generations[which] = generation
        if now is None:
            now = self.clock()
        if self.rotation_grace <= 0:
            self._retire(which, generation)
            return
        self._retire_at.setdefault(which, now + self.rotation_grace)
        self._next_retire = min(self._retire_at.values())

    def _retire(self, which: tuple[str, str], generation: int) -> int:
        """Drop ``which`` = (CA, signer)'s answers of other generations than ``generation``."""
        ca, signer = which
        before = len(self._entries)
        self._entries = {k: e for k, e in self._entries.items()
                         if e.ca != ca or e.signer != signer or e.generation == generation}
        return before - len(self._entries)

    def _retire_due(self, now: float) -> None:
        for which, when in list(self._retire_at.items()):
            if when <= now:
                del self._retire_at[which]
                self._retire(which, self._generations[which])
        self._next_retire = min(self._retire_at.values(), default=float("inf"))

    def invalidate(self, ca: str | None = None) -> int:
        """Drop the answers of ``ca`` (all when None); returns how many went."""
        before = len(self._entries)
        if ca is None:
            self._entries.clear()
        else:
            self._entries = {k: e for k, e in self._entries.items() if e.ca != ca}
        return before - len(self._entries)
