"""Signed-response cache: expiry, bounds, per-CA invalidation, responder generations.

Keys are AnswerKeys; ``K(b"name")`` makes one whose serial octets are the name (CA from ``ca``)."""

from __future__ import annotations

from frontend.cache import ENTRY_OVERHEAD, SWEEP_PER_PUT, Entry, ResponseCache, key_size
from shared.answers import AnswerKey
from shared.ocsp.types import CertId, HashAlgorithm


def K(name: bytes, ca: str = "a", alg: HashAlgorithm = HashAlgorithm.SHA1) -> AnswerKey:
    n = alg.digest_size
    return AnswerKey(ca, (CertId(alg, b"\x01" * n, b"\x02" * n, name),))


def put(c: ResponseCache, name: bytes, *, ca: str = "a", tu: int = 1000, nu: int = 5000,
        gen: int | None = None, now: float = 1000) -> Entry | None:
    return c.put(K(name, ca), b"der-" + name, b"H: v\r\n", this_update=tu, next_update=nu, generation=gen,
                 now=now)


def get(c: ResponseCache, name: bytes, now: float | None = 1000, ca: str = "a") -> Entry | None:
    return c.get(K(name, ca), now=now)


def test_hit_and_expiry_at_next_update() -> None:
    c = ResponseCache(10, max_age=10**6)
    put(c, b"k")
    e = get(c, b"k", now=4999)
    assert e is not None and e.der == b"der-k" and e.headers == b"H: v\r\n" and e.next_update == 5000
    assert get(c, b"k", now=5000) is None
    assert len(c) == 0
    assert get(c, b"missing", now=0) is None


def test_expiry_capped_by_max_age() -> None:
    c = ResponseCache(10, max_age=100)
    put(c, b"k", tu=1000, nu=5000)
    assert get(c, b"k", now=1099) is not None
    assert get(c, b"k", now=1100) is None


def test_old_this_update_still_cached_for_max_age() -> None:
    # A CRL-backed answer: thisUpdate (the CRL's) long before now, nextUpdate days ahead.
    c = ResponseCache(10, max_age=100)
    assert put(c, b"k", tu=0, nu=5000, now=1000) is not None
    assert get(c, b"k", now=1099) is not None
    assert get(c, b"k", now=1100) is None
    # ... and never past nextUpdate.
    assert put(c, b"j", tu=0, nu=1050, now=1000) is not None
    assert get(c, b"j", now=1049) is not None and get(c, b"j", now=1050) is None


def test_already_expired_not_stored() -> None:
    c = ResponseCache(10, max_age=100)
    assert put(c, b"k", tu=0, nu=50, now=1000) is None
    assert len(c) == 0


def test_bounded_entries() -> None:
    c = ResponseCache(3, max_age=10**6)
    for k in (b"1", b"2", b"3", b"4"):
        put(c, k)
    assert len(c) == 3
    assert get(c, b"1", now=1000) is None
    assert get(c, b"4", now=1000) is not None
    put(c, b"4")  # replacing an entry evicts nothing
    assert len(c) == 3 and get(c, b"2", now=1000) is not None


def test_disabled() -> None:
    c = ResponseCache(0, max_age=100)
    assert put(c, b"k") is None and len(c) == 0


def test_invalidate_per_ca() -> None:
    c = ResponseCache(10, max_age=10**6)
    put(c, b"a1", ca="a")
    put(c, b"a2", ca="a")
    put(c, b"b1", ca="b")
    assert c.invalidate("a") == 2
    assert get(c, b"a1", now=1000) is None and get(c, b"b1", now=1000, ca="b") is not None
    assert c.invalidate() == 1 and len(c) == 0


def test_generation_change_drops_ca() -> None:
    c = ResponseCache(10, max_age=10**6)
    put(c, b"a1", ca="a", gen=1)
    put(c, b"b1", ca="b", gen=7)
    put(c, b"a2", ca="a", gen=1)
    assert len(c) == 3
    put(c, b"a3", ca="a", gen=2)  # the responder of CA a was replaced
    assert get(c, b"a1", now=1000) is None and get(c, b"a2", now=1000) is None
    assert get(c, b"a3", now=1000) is not None and get(c, b"b1", now=1000, ca="b") is not None


def test_hit_is_cheap() -> None:
    import time

    c = ResponseCache(1000, max_age=10**6, clock=time.time)
    raw = b"x" * 100  # the DER request, linked to the entry: the hit path is one dict lookup
    c.put(K(b"x"), b"der", b"", this_update=2**40 - 10, next_update=2**40, now=0, raw=raw)
    n = 100000
    t = time.perf_counter()
    for _ in range(n):
        c.lookup(raw)
    per = (time.perf_counter() - t) / n
    assert per < 20e-6, per
    t = time.perf_counter()
    for _ in range(n):
        c.get(K(b"x"))
    assert (time.perf_counter() - t) / n < 20e-6


def test_generations_are_counted_per_signer() -> None:
    """Two signer processes count generations independently (each restarts at 1): answers of both
    are cached, and a rotation seen on one retires only that one's older answers."""
    c = ResponseCache(10, max_age=10**6)
    for i in range(4):  # replies alternate between a signer at generation 2 and one at generation 1
        signer, gen = ("A", 2) if i % 2 == 0 else ("B", 1)
        assert c.put(K(b"k%d" % i), b"d", b"", this_update=1000, next_update=5000, generation=gen,
                     now=1000, signer=signer) is not None
    assert all(get(c, b"k%d" % i, now=1001) is not None for i in range(4))
    c.set_generation("a", 3, now=1001, signer="A")  # A rotated: A's generation-2 answers go
    assert get(c, b"k0", now=1002) is None and get(c, b"k2", now=1002) is None
    assert get(c, b"k1", now=1002) is not None and get(c, b"k3", now=1002) is not None
    # A late generation-2 answer from A is not cached any more; B's generation 1 still is.
    assert c.put(K(b"late"), b"d", b"", this_update=1000, next_update=5000, generation=2, now=1002,
                 signer="A") is None
    assert c.put(K(b"b"), b"d", b"", this_update=1000, next_update=5000, generation=1, now=1002,
                 signer="B") is not None


def test_least_recently_used_goes_first() -> None:
    c = ResponseCache(3, max_age=10**6)
    for k in (b"1", b"2", b"3"):
        put(c, k)
    assert get(c, b"1", now=1000) is not None  # 1 is now the most recently used
    put(c, b"4")
    assert get(c, b"2", now=1000) is None
    assert all(get(c, k, now=1000) is not None for k in (b"1", b"3", b"4"))


def _size(name: bytes) -> int:
    """What put() above stores for ``name``, as counted against max_bytes."""
    return key_size(K(name)) + len(b"der-" + name) + len(b"H: v\r\n") + ENTRY_OVERHEAD


def test_byte_bound_evicts() -> None:
    small = [b"%03d" % i for i in range(10)]
    c = ResponseCache(1000, max_age=10**6, max_bytes=4 * _size(small[0]))
    for k in small:
        put(c, k)
    assert len(c) == 4 and c.bytes == 4 * _size(small[0]) <= c.max_bytes
    assert [k for k in small if get(c, k, now=1000) is not None] == small[-4:]
    big = b"b" * (c.max_bytes // 4)  # its key and its response: half the budget
    c.max_key_bytes = len(big) + 41
    assert put(c, big) is not None
    assert c.bytes <= c.max_bytes and get(c, big, now=1000) is not None
    assert len(c) < 4  # it pushed small ones out
    assert c.bytes == sum(_size(k) for k in [*small, big] if get(c, k, now=1000) is not None)


def test_oversized_not_cached() -> None:
    c = ResponseCache(10, max_age=10**6, max_bytes=4096, max_key_bytes=141)  # CA name + 2 x 20 + serial
    assert put(c, b"k" * 101) is None  # key over max_key_bytes
    assert c.put(K(b"k"), b"x" * 4096, b"", this_update=0, next_update=5000, now=1000) is None  # over max_bytes
    assert len(c) == 0 and c.bytes == 0
    assert put(c, b"k" * 100) is not None


def test_expired_entries_are_swept_without_being_asked_for() -> None:
    c = ResponseCache(10_000, max_age=10**6)
    for i in range(100):
        put(c, b"soon%d" % i, nu=2000)
        put(c, b"late%d" % i, nu=9000)
    assert len(c) == 200
    # Stores at a later time sweep a few expired ones each, nobody asking for them.
    for i in range(10):
        put(c, b"new%d" % i, nu=9000, now=3000)
    assert len(c) == 210 - 10 * SWEEP_PER_PUT
    # The periodic sweep takes the rest.
    assert c.sweep(3000) == 100 - 10 * SWEEP_PER_PUT
    assert len(c) == 110 and c.bytes == sum(e.size for e in c._entries.values())
    assert all(k.cert_ids[0].serial.startswith((b"late", b"new")) for k in c._entries)


def test_sweep_work_is_bounded() -> None:
    c = ResponseCache(10_000, max_age=10**6)
    for i in range(50):
        put(c, b"k%d" % i, nu=2000)
    assert c.sweep(3000, limit=20) == 20 and len(c) == 30


def test_retirement_without_requests() -> None:
    # A replaced responder's answers go when the grace ends, by the sweep alone.
    c = ResponseCache(10, max_age=10**6, rotation_grace=5)
    put(c, b"a1", ca="a", gen=1)
    c.set_generation("a", 2, now=1000)
    assert c.sweep(1004) == 0
    assert c.sweep(1005) == 1 and len(c) == 0 and c.bytes == 0


def test_bookkeeping_stays_bounded() -> None:
    """Storing the same keys again and again, and dropping them, leaves no growing expiry heap."""
    c = ResponseCache(10, max_age=10**6)
    for i in range(20_000):
        put(c, b"k%d" % (i % 3))
        if i % 1000 == 0:
            c.invalidate("a")
    assert len(c._expiry) <= 2 * len(c) + 1024
    assert c.bytes == sum(e.size for e in c._entries.values())
    c.invalidate()
    assert c.bytes == 0 and not c._expiry


# -- the raw-bytes index in front ----------------------------------------------------------------------


def test_spellings_share_one_entry() -> None:
    c = ResponseCache(10, max_age=10**6)
    e = c.put(K(b"1"), b"der", b"", this_update=1000, next_update=5000, now=1000, raw=b"post-body")
    assert e is not None
    assert c.get(K(b"1"), now=1000, raw=b"get-der") is e  # another spelling, decoded: linked
    assert c.lookup(b"post-body", now=1000) is e and c.lookup(b"get-der", now=1000) is e
    assert c.lookup(b"never-seen", now=1000) is None
    assert len(c) == 1 and e.spellings == [b"post-body", b"get-der"]
    assert c.bytes == e.size == sum(x.size for x in c._entries.values())
    # A new signature for the key keeps its spellings (the fast path survives a refresh).
    again = c.put(K(b"1"), b"der2", b"", this_update=1000, next_update=5000, now=1001)
    assert again is not None and c.lookup(b"post-body", now=1001) is again and again.spellings
    assert c.bytes == again.size
    # Dropped: every spelling goes with it.
    assert c.invalidate("a") == 1
    assert c.lookup(b"post-body", now=1001) is None and c.lookup(b"get-der", now=1001) is None
    assert c.bytes == 0 and not c._raw


def test_expiry_seen_through_a_spelling() -> None:
    c = ResponseCache(10, max_age=100)
    c.put(K(b"1"), b"der", b"", this_update=1000, next_update=5000, now=1000, raw=b"r")
    assert c.lookup(b"r", now=1099) is not None
    assert c.lookup(b"r", now=1100) is None and len(c) == 0 and not c._raw and c.bytes == 0


def test_spellings_are_bounded() -> None:
    from frontend.cache import MAX_SPELLINGS

    c = ResponseCache(10, max_age=10**6, max_key_bytes=200)
    e = c.put(K(b"1"), b"der", b"", this_update=1000, next_update=5000, now=1000)
    assert e is not None
    assert not c.link(b"x" * 201, e)  # over max_key_bytes: answered by decoding, not indexed
    for i in range(MAX_SPELLINGS):
        assert c.link(b"s%d" % i, e)
    assert not c.link(b"one-more", e)
    assert c.get(K(b"1"), now=1000, raw=b"one-more") is e  # still answered by its key
    assert c.lookup(b"one-more", now=1000) is None and len(e.spellings) == MAX_SPELLINGS
    # A spelling moves to the entry it is decoded to now.
    f = c.put(K(b"2"), b"der", b"", this_update=1000, next_update=5000, now=1000, raw=b"s0")
    assert f is not None and c.lookup(b"s0", now=1000) is f and b"s0" not in e.spellings
    assert c.bytes == e.size + f.size
    stale = Entry(b"d", b"", 5000, 5000, K(b"9"))
    assert not c.link(b"z", stale)  # not (or no longer) cached: not indexed


def test_spellings_count_against_max_bytes() -> None:
    one = key_size(K(b"1")) + 3 + ENTRY_OVERHEAD
    c = ResponseCache(10, max_age=10**6, max_bytes=2 * one + 200)
    c.put(K(b"1"), b"der", b"", this_update=1000, next_update=5000, now=1000)
    e2 = c.put(K(b"2"), b"der", b"", this_update=1000, next_update=5000, now=1000)
    assert len(c) == 2 and e2 is not None
    assert c.link(b"r" * 100, e2)  # 100 + SPELLING_OVERHEAD more: over, the older entry goes
    assert len(c) == 1 and get(c, b"2") is e2 and c.bytes == e2.size <= c.max_bytes


def test_invalidate_serials() -> None:
    c = ResponseCache(10, max_age=10**6)
    for serial in (1, 2, 3):
        for alg in (HashAlgorithm.SHA1, HashAlgorithm.SHA256):
            c.put(K(bytes([serial]), alg=alg), b"d", b"", this_update=1000, next_update=5000, now=1000)
    c.put(K(b"\x02", ca="b"), b"d", b"", this_update=1000, next_update=5000, now=1000)
    multi = AnswerKey("a", K(b"\x05").cert_ids + K(b"\x02").cert_ids)
    c.put(multi, b"d", b"", this_update=1000, next_update=5000, now=1000)
    assert len(c) == 8
    assert c.invalidate_serials("a", set()) == 0
    assert c.invalidate_serials("a", {2}) == 3  # both algorithms, and the answer naming it among others
    assert get(c, b"\x02", ca="b") is not None and get(c, b"\x01") is not None
    assert c.invalidate_serials("a", {1, 3, 99}) == 4 and len(c) == 1


# -- responders: fingerprints of answers taken from the store --------------------------------------------


def test_fingerprint_ok() -> None:
    c = ResponseCache(10, max_age=10**6, rotation_grace=5)
    assert c.fingerprint_ok("a", "anything", 1000)  # nothing known yet: accepted
    c.set_generation("a", 1, now=1000, signer="s1", fingerprint="fp1")
    assert c.fingerprint_ok("a", "fp1", 1000) and not c.fingerprint_ok("a", "other", 1000)
    assert c.fingerprint_ok("b", "other", 1000)  # per CA
    c.note_generation("a", 2, now=1010, signer="s1", fingerprint="fp2")  # rotated (a SignReply says)
    assert c.fingerprint_ok("a", "fp2", 1010)
    assert c.fingerprint_ok("a", "fp1", 1014.9) and not c.fingerprint_ok("a", "fp1", 1015)
    c.note_generation("a", 1, now=1011, signer="s1", fingerprint="fp1")  # a late answer: changes nothing
    assert not c.fingerprint_ok("a", "fp1", 1016)
    # Two signers at different responders: both are current.
    c.set_generation("a", 7, now=1020, signer="s2", fingerprint="fp1")
    assert c.fingerprint_ok("a", "fp1", 1020) and c.fingerprint_ok("a", "fp2", 1020)


def test_store_entries_retire_by_fingerprint() -> None:
    from frontend.cache import STORE

    c = ResponseCache(10, max_age=10**6, rotation_grace=5)
    c.set_generation("a", 1, now=1000, signer="s1", fingerprint="fp1")
    assert c.put(K(b"1"), b"d", b"", this_update=1000, next_update=5000, now=1000, signer=STORE,
                 fingerprint="fp1") is not None
    c.put(K(b"2"), b"d", b"", this_update=1000, next_update=5000, now=1000, signer=STORE, fingerprint="fp1")
    c.put(K(b"3", ca="b"), b"d", b"", this_update=1000, next_update=5000, now=1000, signer=STORE,
          fingerprint="fpb")
    c.set_generation("a", 2, now=1001, signer="s1", fingerprint="fp2")
    assert c.sweep(1005) == 0 and len(c) == 3  # still within the grace
    assert c.sweep(1006) == 2 and get(c, b"3", now=1006, ca="b") is not None
    # Without a grace they go at once.
    d = ResponseCache(10, max_age=10**6)
    d.set_generation("a", 1, now=1000, fingerprint="fp1")
    d.put(K(b"1"), b"d", b"", this_update=1000, next_update=5000, now=1000, signer=STORE, fingerprint="fp1")
    d.set_generation("a", 2, now=1001, fingerprint="fp2")
    assert len(d) == 0
