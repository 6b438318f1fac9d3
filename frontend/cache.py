"""Signed-response cache for nonce-less requests, keyed by the DER request.

The key is the DER OCSPRequest: a POST body as received, or the DER a GET path decodes to. The query
string and any path segments before the base64 component are not part of an OCSP GET (RFC 6960
A.1), so they never reach the key: every spelling of one GET (query, junk prefix, percent-encoding,
padding, URL-safe alphabet) and the same request by POST share one entry and one signature. A
request longer than ``max_key_bytes`` is answered but not cached. A hit is one dict lookup and one
float comparison, before any ASN.1 parsing (a GET pays for its base64 decoding first), so the answer
costs a few µs. Two DER requests for the same certificate (another hash algorithm, an extra
extension) are still two entries; each misses once.

An entry lives until min(nextUpdate, time of storing + max_age) (a CRL-backed answer's thisUpdate
may be days old; it is cacheable all the same until its nextUpdate) and is dropped when its CA's status data
reloads, or, ``rotation_grace`` seconds after the frontend learns that the CA's responder was replaced
(a new generation on a SignReply or on the signer's Watch stream), when an older responder signed it.
Until then it is still served: the old responder's answers stay valid for clients. Answers signed by a
retired responder that arrive late (signed before the switch) are not cached.

Bounds: at most ``max_entries`` entries and ``max_bytes`` bytes (each counted as its response, its
header lines, twice its key (the expiry heap may hold an older copy) and ENTRY_OVERHEAD); past either
the least recently used entries go. Expired entries are swept
without being asked for: a heap ordered by expiry is popped a few items at a time on every store and
up to SWEEP_PER_TICK items by ``sweep``, which the server calls once a second.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# Bytes an entry costs besides its key, response and header lines: the Entry, the dict slot, the
# heap item and the bytes objects' own headers (measured about 420 with tracemalloc on CPython 3.11).
ENTRY_OVERHEAD = 512
SWEEP_PER_PUT = 4  # expired-heap items looked at on every store
SWEEP_PER_TICK = 20_000  # ... and by each sweep() (about 20 ms of work at most)


@dataclass(slots=True)
class Entry:
    der: bytes  # the whole DER OCSPResponse
    headers: bytes  # precomputed header lines (no Date, no Cache-Control), each ending in CRLF
    expires: float  # epoch seconds: the entry is not served at or after this
    next_update: int  # epoch seconds: nextUpdate of the answer (for HTTP max-age)
    ca: str
    generation: int = 0  # the responder generation that signed it (0: not told)
    signer: str = ""  # the signer (address) that signed it: generations are counted per signer process
    size: int = 0  # bytes it is counted for against max_bytes


class ResponseCache:
    def __init__(self, max_entries: int, max_age: float, clock: Callable[[], float] = time.time,
                 rotation_grace: float = 0.0, *, max_bytes: int = 64 << 20, max_key_bytes: int = 1024) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.max_key_bytes = max_key_bytes
        self.clock = clock
        self.rotation_grace = rotation_grace
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()  # least recently used first
        self.bytes = 0  # sum of the entries' sizes
        # (expires, key) of every stored entry; items of entries since replaced or dropped stay until
        # popped (an item only drops the key's entry if that one has expired) or compacted away.
        self._expiry: list[tuple[float, bytes]] = []
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
            self._drop(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: bytes, der: bytes, headers: bytes, *, ca: str, this_update: int, next_update: int,
            generation: int | None = None, now: float | None = None, signer: str = "") -> Entry | None:
        """Store an answer; returns the entry, or None when it is not cached (it would expire at once,
        its key is over max_key_bytes, it alone is over max_bytes, or a newer responder signs now)."""
        if generation is not None:
            self.note_generation(ca, generation, now=now, signer=signer)
            if generation != self._generations.get((ca, signer)):
                return None  # signed by a responder that has since been replaced
        if self.max_entries <= 0 or len(key) > self.max_key_bytes:
            return None
        size = 2 * len(key) + len(der) + len(headers) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return None
        if now is None:
            now = self.clock()
        expires = min(float(next_update), now + self.max_age)
        if expires <= now:
            return None
        self.sweep(now, SWEEP_PER_PUT)
        entries = self._entries
        self._drop(key)
        while entries and (len(entries) >= self.max_entries or self.bytes + size > self.max_bytes):
            _, old = entries.popitem(last=False)
            self.bytes -= old.size
        entry = Entry(der, headers, expires, next_update, ca, generation or 0, signer, size)
        entries[key] = entry
        self.bytes += size
        heapq.heappush(self._expiry, (expires, key))
        self._compact()
        return entry

    def _compact(self) -> None:
        """Keep at most one stale heap item per entry (plus a little): rebuild once they outnumber it."""
        if len(self._expiry) > 2 * len(self._entries) + 1024:
            self._expiry = [(e.expires, k) for k, e in self._entries.items()]
            heapq.heapify(self._expiry)

    def sweep(self, now: float | None = None, limit: int = SWEEP_PER_TICK) -> int:
        """Drop expired entries (looking at up to ``limit`` heap items) and retire answers of replaced
        responders whose grace has passed; returns how many entries went."""
        if now is None:
            now = self.clock()
        before = len(self._entries)
        if now >= self._next_retire:
            self._retire_due(now)
        heap = self._expiry
        entries = self._entries
        while limit > 0 and heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            limit -= 1
            entry = entries.get(key)
            if entry is not None and entry.expires <= now:
                self._drop(key)
        return before - len(self._entries)

    def _drop(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size

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
        gone = [k for k, e in self._entries.items()
                if e.ca == ca and e.signer == signer and e.generation != generation]
        for k in gone:
            self._drop(k)
        self._compact()
        return len(gone)

    def _retire_due(self, now: float) -> None:
        for which, when in list(self._retire_at.items()):
            if when <= now:
                del self._retire_at[which]
                self._retire(which, self._generations[which])
        self._next_retire = min(self._retire_at.values(), default=float("inf"))

    def invalidate(self, ca: str | None = None) -> int:
        """Drop the answers of ``ca`` (all when None); returns how many went."""
        if ca is None:
            n = len(self._entries)
            self._entries.clear()
            self._expiry.clear()
            self.bytes = 0
            return n
        gone = [k for k, e in self._entries.items() if e.ca == ca]
        for k in gone:
            self._drop(k)
        self._compact()
        return len(gone)
