"""frontend.refresher: due selection, lazy removal, the lock (taken, renewed, lapsed, taken over),
the rotation re-sign selection, the bound on its signatures in flight."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from frontend.presign import TokenBucket, cert_id, stored_answer
from frontend.refresher import SHARE, Refresher, lock_name
from shared.answers import AnswerKey
from shared.ocsp.types import CertStatus, StatusInfo
from tests.unit.frontend.fake_answer_store import FakeAnswerStore
from tests.unit.frontend.presign_fakes import ISSUER, Clock, FakeSigner, FakeSnapshot, FakeSource, good

CA = "ca1"
MAX_AGE = 3600.0
BEFORE = 900.0
GOOD = StatusInfo(CertStatus.GOOD)


def key(serial: int) -> AnswerKey:
    return AnswerKey(CA, (cert_id(ISSUER, serial),))


def put(store: FakeAnswerStore, serial: int, this_update: float, fingerprint: str = "fp-new") -> None:
    tu = int(this_update)
    answer = stored_answer(b"old", GOOD, tu, tu + 86400, tu, fingerprint)
    asyncio.run(store.put(key(serial), answer, tu + MAX_AGE))


def refresher(store: FakeAnswerStore, signer: FakeSigner, clock: Clock, snapshot: FakeSnapshot | None = None,
              **kwargs: object) -> Refresher:
    source = FakeSource(CA, snapshot or FakeSnapshot(good(100)))
    options: dict = {"max_age": MAX_AGE, "refresh_before": BEFORE, "rate": 1000.0, "max_in_flight": 256,
                     "wall": clock, "monotonic": clock, **kwargs}
    return Refresher(store, signer, {CA: source}, **options)  # type: ignore[dict-item]


def test_due_entries_are_signed_again_and_the_others_left_alone() -> None:
    clock, signer = Clock(), FakeSigner()
    store = FakeAnswerStore(clock)
    for s in (1, 2, 3):  # expire within refresh_before
        put(store, s, clock.now - MAX_AGE + 600)
    for s in (4, 5):  # expire in an hour
        put(store, s, clock.now)
    r = refresher(store, signer, clock)

    async def scenario() -> None:
        assert await r.step(CA)
        assert not await r.step(CA)  # nothing due any more

    asyncio.run(scenario())
    assert sorted(st.cert_id.serial_int for st in signer.calls) == [1, 2, 3]
    assert r.refreshed == 3
    answer, until = store.answers[key(1)]
    assert answer.der.startswith(b"der:") and until == int(clock.now) + MAX_AGE
    assert store.answers[key(4)][0].der == b"old"


def test_a_member_whose_answer_is_gone_is_dropped_not_signed() -> None:
    clock, signer = Clock(), FakeSigner()
    store = FakeAnswerStore(clock)
    put(store, 7, clock.now - MAX_AGE + 10)
    clock.now += 20  # expired: only its index member is left
    assert store.index[CA] and asyncio.run(store.get(key(7))) is None
    r = refresher(store, signer, clock)
    asyncio.run(r.step(CA))
    assert signer.calls == [] and r.dropped == 1 and store.index[CA] == {}


def test_answers_a_new_signature_would_not_outlive_are_not_due() -> None:
    """A CRL-backed CA: the window is the CRL's, so signing again before a new CRL gains nothing."""
    clock, signer = Clock(), FakeSigner()
    store = FakeAnswerStore(clock)
    tu = datetime.fromtimestamp(clock.now, UTC) - timedelta(minutes=50)
    snapshot = FakeSnapshot(good(10), fixed=(tu, tu + timedelta(days=1)))
    put(store, 1, tu.timestamp())  # expires in 10 minutes, as any answer from this CRL does
    r = refresher(store, signer, clock, snapshot)
    assert not asyncio.run(r.step(CA))
    assert signer.calls == []


def test_one_refresher_per_ca_holds_the_lock_and_another_takes_over_when_it_lapses() -> None:
    clock = Clock()
    store = FakeAnswerStore(clock)
    a = refresher(store, FakeSigner(), clock, lock_ttl=30.0)
    b = refresher(store, FakeSigner(), clock, lock_ttl=30.0)

    async def scenario() -> None:
        assert await a.hold(CA)
        assert not await b.hold(CA)
        clock.now += 20  # a renews (past a third of the TTL)
        assert await a.hold(CA)
        clock.now += 25  # 45 s after taking it: alive thanks to the renewal
        assert not await b.hold(CA)
        # a dies (no more renewals): the lock lapses within its TTL, b takes it
        clock.now += 31
        assert await b.hold(CA)
        assert not await a.hold(CA)  # a's renewal finds the lock no longer its own
        assert CA not in a.tokens
        await b.release()  # a clean stop releases it at once
        assert lock_name(CA) not in {n.removeprefix("ocsp:lock:") for n in store.locks}
        assert await a.hold(CA)

    asyncio.run(scenario())


def test_without_the_lock_nothing_is_signed() -> None:
    clock, signer = Clock(), FakeSigner()
    store = FakeAnswerStore(clock)
    put(store, 1, clock.now - MAX_AGE + 60)
    asyncio.run(store.lock(lock_name(CA), 30))
    r = refresher(store, signer, clock)
    assert not asyncio.run(r.step(CA))
    assert signer.calls == []


def test_after_a_rotation_only_answers_of_other_responders_are_signed_again() -> None:
    clock, signer = Clock(), FakeSigner(fingerprint="fp-new")
    store = FakeAnswerStore(clock)
    for s in range(1, 21):
        put(store, s, clock.now, "fp-old" if s % 2 else "fp-new")
    r = refresher(store, signer, clock, chunk=4)

    async def scenario() -> None:
        await r.step(CA)
        assert signer.calls == []  # the current responder unknown: nothing to compare with
        r.note_responder(CA, "fp-new", "signer-1")
        await r.step(CA)
        assert r.rotated == 10
        assert sorted(st.cert_id.serial_int for st in signer.calls) == list(range(1, 21, 2))
        await r.step(CA)  # swept for these responders already
        assert r.rotated == 10

    asyncio.run(scenario())
    assert {store.answers[key(s)][0].responder_fingerprint for s in range(1, 21)} == {"fp-new"}


def test_a_responder_of_another_signer_is_current_too() -> None:
    clock, signer = Clock(), FakeSigner(fingerprint="fp-b")
    store = FakeAnswerStore(clock)
    put(store, 1, clock.now, "fp-a")
    put(store, 2, clock.now, "fp-b")
    put(store, 3, clock.now, "fp-old")
    r = refresher(store, signer, clock)
    r.note_responder(CA, "fp-a", "signer-1")
    r.note_responder(CA, "fp-b", "signer-2")
    asyncio.run(r.step(CA))
    assert [st.cert_id.serial_int for st in signer.calls] == [3]


def test_its_signatures_in_flight_are_a_bounded_share() -> None:
    clock, signer = Clock(), FakeSigner()
    store = FakeAnswerStore(clock)
    for s in range(1, 101):
        put(store, s, clock.now - MAX_AGE + 60)
    r = refresher(store, signer, clock, max_in_flight=80)
    asyncio.run(r.step(CA))
    assert r.refreshed == 100
    assert signer.max_in_flight == 80 // SHARE


def test_refresh_rate_spreads_the_work() -> None:
    clock, signer = Clock(), FakeSigner()
    store = FakeAnswerStore(clock)
    for s in range(1, 31):
        put(store, s, clock.now - MAX_AGE + 60)
    t = [0.0]

    async def fake_sleep(s: float) -> None:
        t[0] += s

    r = refresher(store, signer, clock, bucket=TokenBucket(10.0, burst=1, monotonic=lambda: t[0], sleep=fake_sleep))
    asyncio.run(r.step(CA))
    assert r.refreshed == 30 and abs(t[0] - 2.9) < 1e-6


def test_failed_signatures_are_counted_and_stay_due() -> None:
    clock, signer = Clock(), FakeSigner()
    signer.down = True
    store = FakeAnswerStore(clock)
    put(store, 1, clock.now - MAX_AGE + 60)
    r = refresher(store, signer, clock)
    assert not asyncio.run(r.step(CA))  # nothing came of it: the loop waits a tick
    assert r.failed == 1 and store.index[CA]
    signer.down = False
    asyncio.run(r.step(CA))
    assert r.refreshed == 1


def test_started_it_refreshes_and_stopped_it_releases_its_lock() -> None:
    clock, signer = Clock(), FakeSigner()
    store = FakeAnswerStore(clock)
    put(store, 1, clock.now - MAX_AGE + 60)
    r = refresher(store, signer, clock, tick=0.01)

    async def scenario() -> None:
        r.start()
        async with asyncio.timeout(10):
            while r.refreshed < 1:  # waiting on what it does, with a deadline
                await asyncio.sleep(0.01)
        assert store.locks
        await r.stop()
        assert not store.locks

    asyncio.run(scenario())
