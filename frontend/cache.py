"""Signed-response cache for nonce-less requests, keyed by the answer (shared.answers.AnswerKey).

An entry is named by what it answers: the CA and the CertIDs (hash algorithm, issuer hashes, serial
octets), not by the request's bytes, so a GET, a POST and every spelling of one request the decoder
accepts (an extra request extension that does not change the answer, long-form lengths, NULL or
absent hash parameters) share one entry and one signature. The CertID is part of the name, hash
algorithm included: the answer echoes it, so a SHA-1 and a SHA-256 request are two entries.

In front of it, the raw-bytes index: the DER requests (POST bodies, the DER a GET path decodes to)
seen for an entry -> that entry, so a repeat hit is still one dict lookup and one float comparison
before any ASN.1 parsing (``lookup``). A spelling is linked to its entry when the request was decoded
(``put`` or ``link``); at most MAX_SPELLINGS per entry and none over ``max_key_bytes``, counted in the
entry's size, gone with it. An answer whose key (its CertIDs' bytes) is over ``max_key_bytes`` is
answered but not cached.

An entry lives until min(nextUpdate, time of storing + max_age) (a CRL-backed answer's thisUpdate
may be days old; it is cacheable all the same until its nextUpdate) and is dropped when its CA's
status data reloads (``invalidate``; only the changed serials' with ``invalidate_serials``), or,
``rotation_grace`` seconds after the frontend learns that the CA's responder was replaced (a new
generation on a SignReply or on the signer's Watch stream), when an older responder signed it. Until
then it is still served: the old responder's answers stay valid for clients. Answers signed by a
retired responder that arrive late (signed before the switch) are not cached. Entries taken from the
shared store (frontend.answer_store: ``signer=STORE``) carry no generation, only the responder's
fingerprint: they go on the same retirement when that fingerprint is not the CA's current one.
``fingerprint_ok`` says whether a stored answer's responder may be served now.

Bounds: at most ``max_entries`` entries and ``max_bytes`` bytes (each counted as its response, its
header lines, its key, its linked spellings and ENTRY_OVERHEAD); past either the least recently used
entries go. Expired entries are swept without being asked for: a heap ordered by expiry is popped a
few items at a time on every store and up to SWEEP_PER_TICK items by ``sweep``, which the server
calls once a second.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from shared.answers import AnswerKey
from shared.ocsp.types import CertStatus

# Bytes an entry costs besides its key, response and header lines: the Entry, the dict slot, the
# heap item and the bytes objects' own headers (measured about 420 with tracemalloc on CPython 3.11).
ENTRY_OVERHEAD = 512
CERTID_OVERHEAD = 200  # a CertId in a key: the object and its three bytes objects' headers
SPELLING_OVERHEAD = 128  # a linked spelling: the index's dict slot and the bytes object's header
MAX_SPELLINGS = 8  # raw requests linked to one entry; more spellings are answered by decoding
SWEEP_PER_PUT = 4  # expired-heap items looked at on every store
SWEEP_PER_TICK = 20_000  # ... and by each sweep() (about 20 ms of work at most)
STORE = "\0store"  # Entry.signer of an answer taken from the shared store (no generation known)


def key_bytes(key: AnswerKey) -> int:
    """The bytes of ``key`` that ``max_key_bytes`` bounds: its CA name and CertIDs."""
    return len(key.ca) + sum(len(c.issuer_name_hash) + len(c.issuer_key_hash) + len(c.serial)
                             for c in key.cert_ids)


def key_size(key: AnswerKey) -> int:
    """What ``key`` is counted for against max_bytes."""
    return key_bytes(key) + CERTID_OVERHEAD * len(key.cert_ids)


def cert_label(statuses: Iterable[CertStatus]) -> str:
    """The metrics' cert status of an answer: its CertIDs' status, "mixed" when they differ ("" for none)."""
    seen = {s.value for s in statuses}
    return seen.pop() if len(seen) == 1 else ("mixed" if seen else "")


@dataclass(slots=True)
class Entry:
    der: bytes  # the whole DER OCSPResponse
    headers: bytes  # precomputed header lines (no Date, no Cache-Control), each ending in CRLF
    expires: float  # epoch seconds: the entry is not served at or after this
    next_update: int  # epoch seconds: nextUpdate of the answer (for HTTP max-age)
    key: AnswerKey
    generation: int = 0  # the responder generation that signed it (0: not told)
    signer: str = ""  # the signer (address) that signed it: generations are counted per signer process
    size: int = 0  # bytes it is counted for against max_bytes
    fingerprint: str = ""  # the responder's, when told
    this_update: int = 0
    spellings: list[bytes] = field(default_factory=list)  # raw requests linked to it
    # For the access log: each CertID's status, the request_id of the SignRequest that signed it ("":
    # not known, as for the store's answers), and the part of its access lines that is the same for
    # every hit (frontend.access_log makes it at the first hit).
    cert_status: tuple[CertStatus, ...] = ()
    signature_id: str = ""
    access: str = ""
    # cert_label(cert_status), made once: what the metrics count a hit as (the hit path derives nothing)
    cert_label: str = ""

    @property
    def ca(self) -> str:
        return self.key.ca


class ResponseCache:
    def __init__(self, max_entries: int, max_age: float, clock: Callable[[], float] = time.time,
                 rotation_grace: float = 0.0, *, max_bytes: int = 64 << 20, max_key_bytes: int = 1024) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.max_key_bytes = max_key_bytes
        self.clock = clock
        self.rotation_grace = rotation_grace
        self._entries: OrderedDict[AnswerKey, Entry] = OrderedDict()  # least recently used first
        self._raw: dict[bytes, Entry] = {}  # linked spellings -> their (live) entry
        self.bytes = 0  # sum of the entries' sizes
        # (expires, key) of every stored entry; items of entries since replaced or dropped stay until
        # popped (an item only drops the key's entry if that one has expired) or compacted away.
        self._expiry: list[tuple[float, int, AnswerKey]] = []
        self._seq = 0  # heap tie-breaker (keys do not order)
        # (CA, signer) -> that signer's current responder generation for the CA. Each signer process
        # counts its own generations, so they are only ever compared within one signer.
        self._generations: dict[tuple[str, str], int] = {}
        # CA -> signer -> the fingerprint of its current responder; CA -> replaced fingerprint -> until
        # when its answers may still be served (rotation_grace after the change was learnt).
        self._fingerprints: dict[str, dict[str, str]] = {}
        self._replaced: dict[str, dict[str, float]] = {}
        # (CA, signer) -> when its entries from older responders go; _next_retire is the earliest.
        self._retire_at: dict[tuple[str, str], float] = {}
        self._next_retire = float("inf")
        self.hits = 0
        self.misses = 0
        self.evictions = 0  # entries dropped for room (max_entries, max_bytes), not for expiry or reloads

    def __len__(self) -> int:
        return len(self._entries)

    # -- finding an answer -------------------------------------------------------------------------------

    def lookup(self, raw: bytes, now: float | None = None) -> Entry | None:
        """The entry a DER request seen before answers to (no ASN.1 parsing), or None."""
        entry = self._raw.get(raw)
        if entry is None:
            self.misses += 1
            return None
        return self._served(entry, now)

    def get(self, key: AnswerKey, now: float | None = None, raw: bytes | None = None) -> Entry | None:
        """The entry of ``key``, or None; ``raw``, the request it was decoded from, is linked to it."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        entry = self._served(entry, now)
        if entry is not None and raw is not None:
            self.link(raw, entry)
        return entry

    def _served(self, entry: Entry, now: float | None) -> Entry | None:
        """``entry`` (found by key or spelling) when it may still be served, counted as a hit; else a
        miss (retired with its responder just now, or expired: dropped)."""
        if now is None:
            now = self.clock()
        if now >= self._next_retire:
            self._retire_due(now)
            if self._entries.get(entry.key) is not entry:  # retiring only drops entries
                self.misses += 1
                return None
        if now >= entry.expires:
            self._drop(entry.key)
            self.misses += 1
            return None
        self._entries.move_to_end(entry.key)
        self.hits += 1
        return entry

    def link(self, raw: bytes, entry: Entry) -> bool:
        """Index the DER request ``raw`` as a spelling of ``entry`` (still cached); False when it is
        not (over max_key_bytes, MAX_SPELLINGS already, or no longer cached)."""
        if self._raw.get(raw) is entry:
            return True
        if (len(raw) > self.max_key_bytes or len(entry.spellings) >= MAX_SPELLINGS
                or self._entries.get(entry.key) is not entry):
            return False
        self._unlink(raw)
        cost = len(raw) + SPELLING_OVERHEAD
        entry.spellings.append(raw)
        entry.size += cost
        self.bytes += cost
        self._raw[raw] = entry
        self._evict(keep=entry)
        return True

    def _unlink(self, raw: bytes) -> None:
        old = self._raw.pop(raw, None)
        if old is not None:
            old.spellings.remove(raw)
            cost = len(raw) + SPELLING_OVERHEAD
            old.size -= cost
            self.bytes -= cost

    # -- storing ----------------------------------------------------------------------------------------

    def put(self, key: AnswerKey, der: bytes, headers: bytes, *, this_update: int, next_update: int,
            generation: int | None = None, now: float | None = None, signer: str = "", fingerprint: str = "",
            raw: bytes | None = None, expires: float | None = None, cert_status: tuple[CertStatus, ...] = (),
            signature_id: str = "") -> Entry | None:
        """Store an answer (and link ``raw``); returns the entry, or None when it is not cached (it
        would expire at once, its key is over max_key_bytes, it alone is over max_bytes, or a newer
        responder signs now). ``expires``: an earlier end than min(nextUpdate, now + max_age) (an
        answer from the store keeps the store's). Replacing an entry keeps the spellings linked to it."""
        ca = key.ca
        if generation is not None:
            self.note_generation(ca, generation, now=now, signer=signer, fingerprint=fingerprint)
            if generation != self._generations.get((ca, signer)):
                return None  # signed by a responder that has since been replaced
        if self.max_entries <= 0 or key_bytes(key) > self.max_key_bytes:
            return None
        size = key_size(key) + len(der) + len(headers) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return None
        if now is None:
            now = self.clock()
        end = min(float(next_update), now + self.max_age)
        expires = end if expires is None else min(end, expires)
        if expires <= now:
            return None
        self.sweep(now, SWEEP_PER_PUT)
        entries = self._entries
        spellings = self._drop(key, keep_spellings=True)
        entry = Entry(der, headers, expires, next_update, key, generation or 0, signer, size, fingerprint,
                      this_update, [], cert_status, signature_id, cert_label=cert_label(cert_status))
        while entries and (len(entries) >= self.max_entries or self.bytes + size > self.max_bytes):
            _, old = entries.popitem(last=False)
            self._forget(old)
            self.evictions += 1
        entries[key] = entry
        self.bytes += size
        self._seq += 1
        heapq.heappush(self._expiry, (expires, self._seq, key))
        for s in spellings:
            self.link(s, entry)
        if raw is not None:
            self.link(raw, entry)
        self._compact()
        return entry

    def _evict(self, keep: Entry) -> None:
        """Least recently used entries out until the bytes fit (``keep`` last of all)."""
        entries = self._entries
        while self.bytes > self.max_bytes and entries:
            key, old = next(iter(entries.items()))
            if old is keep and len(entries) > 1:
                entries.move_to_end(key)
                continue
            self._drop(key)
            self.evictions += 1

    def _compact(self) -> None:
        """Keep at most one stale heap item per entry (plus a little): rebuild once they outnumber it."""
        if len(self._expiry) > 2 * len(self._entries) + 1024:
            self._expiry = []
            for k, e in self._entries.items():
                self._seq += 1
                self._expiry.append((e.expires, self._seq, k))
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
            _, _, key = heapq.heappop(heap)
            limit -= 1
            entry = entries.get(key)
            if entry is not None and entry.expires <= now:
                self._drop(key)
        return before - len(self._entries)

    def _forget(self, entry: Entry) -> list[bytes]:
        """An entry out of ``_entries``: its bytes and spellings go too; returns the spellings."""
        self.bytes -= entry.size
        spellings = entry.spellings
        raw = self._raw
        for s in spellings:
            if raw.get(s) is entry:
                del raw[s]
        entry.spellings = []
        entry.expires = float("-inf")  # whoever still holds it (a HitAnswers slot) sees it gone
        return spellings

    def _drop(self, key: AnswerKey, keep_spellings: bool = False) -> list[bytes]:
        entry = self._entries.pop(key, None)
        if entry is None:
            return []
        spellings = self._forget(entry)
        return spellings if keep_spellings else []

    # -- responders ---------------------------------------------------------------------------------------

    def note_generation(self, ca: str, generation: int, now: float | None = None, signer: str = "",
                        fingerprint: str = "") -> None:
        """A SignReply for ``ca`` came from responder ``generation`` (``fingerprint``). A newer one than
        known means the responder was replaced: answers of older ones go after the grace. An older one
        is an answer signed before a switch we already know of, and changes nothing."""
        old = self._generations.get((ca, signer))
        if old is None:
            self._generations[(ca, signer)] = generation
            self._set_fingerprint(ca, signer, fingerprint, now)
        elif generation > old:
            self._changed((ca, signer), generation, now)
            self._set_fingerprint(ca, signer, fingerprint, now)
        elif generation == old and fingerprint and not self._fingerprints.get(ca, {}).get(signer):
            self._set_fingerprint(ca, signer, fingerprint, now)

    def set_generation(self, ca: str, generation: int, now: float | None = None, signer: str = "",
                       fingerprint: str = "") -> None:
        """The signer's own word (Watch) on ``ca``'s current responder generation (and its
        fingerprint). Authoritative, even when lower than what we knew (a restarted signer counts
        from 1 again)."""
        old = self._generations.get((ca, signer))
        if old is None:
            self._generations[(ca, signer)] = generation
        elif generation != old:
            self._changed((ca, signer), generation, now)
        self._set_fingerprint(ca, signer, fingerprint, now)

    def generation(self, ca: str, signer: str = "") -> int | None:
        return self._generations.get((ca, signer))

    def _set_fingerprint(self, ca: str, signer: str, fingerprint: str, now: float | None) -> None:
        if not fingerprint:
            return
        current = self._fingerprints.setdefault(ca, {})
        old = current.get(signer)
        if old == fingerprint:
            return
        current[signer] = fingerprint
        if now is None:
            now = self.clock()
        replaced = self._replaced.setdefault(ca, {})
        for fp, until in list(replaced.items()):
            if until <= now or fp in current.values():
                del replaced[fp]
        if old and old not in current.values():
            replaced[old] = now + self.rotation_grace
            # Entries taken from the store under it go with the rest of the retired answers.
            self._retire_at.setdefault((ca, STORE), now + self.rotation_grace)
            self._next_retire = min(self._retire_at.values())
            if self.rotation_grace <= 0:
                self._retire_due(now)

    def fingerprint_ok(self, ca: str, fingerprint: str, now: float) -> bool:
        """May an answer of ``ca`` signed by the responder ``fingerprint`` be served at ``now``: the
        CA's current responder (of any signer), a replaced one within rotation_grace, or any while
        the current one is not known yet."""
        current = self._fingerprints.get(ca)
        if not current or fingerprint in current.values():
            return True
        until = self._replaced.get(ca, {}).get(fingerprint)
        return until is not None and now < until

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
        """Drop ``which`` = (CA, signer)'s answers of other generations than ``generation`` (for
        STORE: those whose responder is no longer a current one)."""
        ca, signer = which
        if signer == STORE:
            current = set(self._fingerprints.get(ca, {}).values())
            gone = [k for k, e in self._entries.items()
                    if e.ca == ca and e.signer == STORE and e.fingerprint not in current]
        else:
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
                self._retire(which, self._generations.get(which, 0))
        self._next_retire = min(self._retire_at.values(), default=float("inf"))

    # -- status changes -----------------------------------------------------------------------------------

    def invalidate(self, ca: str | None = None) -> int:
        """Drop the answers of ``ca`` (all when None); returns how many went."""
        if ca is None:
            n = len(self._entries)
            for e in self._entries.values():
                e.expires = float("-inf")
                e.spellings = []
            self._entries.clear()
            self._raw.clear()
            self._expiry.clear()
            self.bytes = 0
            return n
        gone = [k for k, e in self._entries.items() if e.ca == ca]
        for k in gone:
            self._drop(k)
        self._compact()
        return len(gone)

    def invalidate_serials(self, ca: str, serials: Collection[int]) -> int:
        """Drop the answers of ``ca`` that answer for any of ``serials``; returns how many went."""
        if not serials:
            return 0
        gone = [k for k, e in self._entries.items()
                if e.ca == ca and any(c.serial_int in serials for c in k.cert_ids)]
        for k in gone:
            self._drop(k)
        self._compact()
        return len(gone)
