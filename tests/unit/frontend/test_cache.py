"""Signed-response cache: expiry, bounds, per-CA invalidation, responder generations."""

from __future__ import annotations

from frontend.cache import ENTRY_OVERHEAD, SWEEP_PER_PUT, Entry, ResponseCache


def put(c: ResponseCache, key: bytes, *, ca: str = "a", tu: int = 1000, nu: int = 5000,
        gen: int | None = None, now: float = 1000) -> Entry | None:
    return c.put(key, b"der-" + key, b"H: v\r\n", ca=ca, this_update=tu, next_update=nu, generation=gen,
                 now=now)


def test_hit_and_expiry_at_next_update() -> None:
    c = ResponseCache(10, max_age=10**6)
    put(c, b"k")
    e = c.get(b"k", now=4999)
    assert e is not None and e.der == b"der-k" and e.headers == b"H: v\r\n" and e.next_update == 5000
    assert c.get(b"k", now=5000) is None
    assert len(c) == 0
    assert c.get(b"missing", now=0) is None


def test_expiry_capped_by_max_age() -> None:
    c = ResponseCache(10, max_age=100)
    put(c, b"k", tu=1000, nu=5000)
    assert c.get(b"k", now=1099) is not None
    assert c.get(b"k", now=1100) is None


def test_old_this_update_still_cached_for_max_age() -> None:
    # A CRL-backed answer: thisUpdate (the CRL's) long before now, nextUpdate days ahead.
    c = ResponseCache(10, max_age=100)
    assert put(c, b"k", tu=0, nu=5000, now=1000) is not None
    assert c.get(b"k", now=1099) is not None
    assert c.get(b"k", now=1100) is None
    # ... and never past nextUpdate.
    assert put(c, b"j", tu=0, nu=1050, now=1000) is not None
    assert c.get(b"j", now=1049) is not None and c.get(b"j", now=1050) is None


def test_already_expired_not_stored() -> None:
    c = ResponseCache(10, max_age=100)
    assert put(c, b"k", tu=0, nu=50, now=1000) is None
    assert len(c) == 0


def test_bounded_entries() -> None:
    c = ResponseCache(3, max_age=10**6)
    for k in (b"1", b"2", b"3", b"4"):
        put(c, k)
    assert len(c) == 3
    assert c.get(b"1", now=1000) is None
    assert c.get(b"4", now=1000) is not None
    put(c, b"4")  # replacing an entry evicts nothing
    assert len(c) == 3 and c.get(b"2", now=1000) is not None


def test_disabled() -> None:
    c = ResponseCache(0, max_age=100)
    assert put(c, b"k") is None and len(c) == 0


def test_invalidate_per_ca() -> None:
    c = ResponseCache(10, max_age=10**6)
    put(c, b"a1", ca="a")
    put(c, b"a2", ca="a")
    put(c, b"b1", ca="b")
    assert c.invalidate("a") == 2
    assert c.get(b"a1", now=1000) is None and c.get(b"b1", now=1000) is not None
    assert c.invalidate() == 1 and len(c) == 0


def test_generation_change_drops_ca() -> None:
    c = ResponseCache(10, max_age=10**6)
    put(c, b"a1", ca="a", gen=1)
    put(c, b"b1", ca="b", gen=7)
    put(c, b"a2", ca="a", gen=1)
    assert len(c) == 3
    put(c, b"a3", ca="a", gen=2)  # the responder of CA a was replaced
    assert c.get(b"a1", now=1000) is None and c.get(b"a2", now=1000) is None
    assert c.get(b"a3", now=1000) is not None and c.get(b"b1", now=1000) is not None


def test_hit_is_cheap() -> None:
    import time

    c = ResponseCache(1000, max_age=10**6, clock=time.time)
    put(c, b"x" * 100, nu=2**40, tu=2**40 - 10, now=0)
    key = b"x" * 100
    n = 100000
    t = time.perf_counter()
    for _ in range(n):
        c.get(key)
    per = (time.perf_counter() - t) / n
    assert per < 20e-6, per


def test_generations_are_counted_per_signer() -> None:
    """Two signer processes count generations independently (each restarts at 1): answers of both
    are cached, and a rotation seen on one retires only that one's older answers."""
    c = ResponseCache(10, max_age=10**6)
    for i in range(4):  # replies alternate between a signer at generation 2 and one at generation 1
        signer, gen = ("A", 2) if i % 2 == 0 else ("B", 1)
        assert c.put(b"k%d" % i, b"d", b"", ca="a", this_update=1000, next_update=5000, generation=gen,
                     now=1000, signer=signer) is not None
    assert all(c.get(b"k%d" % i, now=1001) is not None for i in range(4))
    c.set_generation("a", 3, now=1001, signer="A")  # A rotated: A's generation-2 answers go
    assert c.get(b"k0", now=1002) is None and c.get(b"k2", now=1002) is None
    assert c.get(b"k1", now=1002) is not None and c.get(b"k3", now=1002) is not None
    # A late generation-2 answer from A is not cached any more; B's generation 1 still is.
    assert c.put(b"late", b"d", b"", ca="a", this_update=1000, next_update=5000, generation=2, now=1002,
                 signer="A") is None
    assert c.put(b"b", b"d", b"", ca="a", this_update=1000, next_update=5000, generation=1, now=1002,
                 signer="B") is not None


def test_least_recently_used_goes_first() -> None:
    c = ResponseCache(3, max_age=10**6)
    for k in (b"1", b"2", b"3"):
        put(c, k)
    assert c.get(b"1", now=1000) is not None  # 1 is now the most recently used
    put(c, b"4")
    assert c.get(b"2", now=1000) is None
    assert all(c.get(k, now=1000) is not None for k in (b"1", b"3", b"4"))


def _size(key: bytes) -> int:
    """What put() above stores for ``key``, as counted against max_bytes."""
    return 2 * len(key) + len(b"der-" + key) + len(b"H: v\r\n") + ENTRY_OVERHEAD


def test_byte_bound_evicts() -> None:
    small = [b"%03d" % i for i in range(10)]
    c = ResponseCache(1000, max_age=10**6, max_bytes=4 * _size(small[0]))
    for k in small:
        put(c, k)
    assert len(c) == 4 and c.bytes == 4 * _size(small[0]) <= c.max_bytes
    assert [k for k in small if c.get(k, now=1000) is not None] == small[-4:]
    big = b"b" * (c.max_bytes // 4)  # its key counted twice: half the budget
    c.max_key_bytes = len(big)
    assert put(c, big) is not None
    assert c.bytes <= c.max_bytes and c.get(big, now=1000) is not None
    assert len(c) < 4  # it pushed small ones out
    assert c.bytes == sum(_size(k) for k in [*small, big] if c.get(k, now=1000) is not None)


def test_oversized_not_cached() -> None:
    c = ResponseCache(10, max_age=10**6, max_bytes=4096, max_key_bytes=100)
    assert put(c, b"k" * 101) is None  # key over max_key_bytes
    assert c.put(b"k", b"x" * 4096, b"", ca="a", this_update=0, next_update=5000, now=1000) is None  # over max_bytes
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
    assert all(k.startswith((b"late", b"new")) for k in c._entries)


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
