"""frontend.presign: every serial signed into the store once, a rerun skips what is still valid,
failures counted without stopping the run (unless every signature fails), Ctrl-C, the rate limit."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto.core import Integer

from frontend.presign import (
    Presigner,
    Progress,
    Tally,
    TokenBucket,
    cert_id,
    expires_at,
    parse_rate,
    serial_octets,
    still_good,
    stored_answer,
    summary,
)
from shared.answers import AnswerKey
from shared.ocsp.types import CertStatus, Revocation, RevocationReason, StatusInfo
from tests.unit.frontend.fake_answer_store import FakeAnswerStore
from tests.unit.frontend.presign_fakes import ISSUER, Clock, FakeSigner, FakeSnapshot, good

MAX_AGE = 3600.0
CA = "ca1"


def presigner(store: FakeAnswerStore, signer: FakeSigner, snapshot: FakeSnapshot, clock: Clock,
              **kwargs: object) -> Presigner:
    options: dict = {"max_age": MAX_AGE, "min_remaining": 900.0, "batch": 16, **kwargs}
    return Presigner(store=store, signer=signer, ca=CA, issuer=ISSUER, current=lambda: snapshot,  # type: ignore[arg-type]
                     wall=clock, **options)


@pytest.mark.parametrize("serial", [0, 1, 127, 128, 255, 256, 0x7FFF, 0x8000, 2**159 + 5, -1, -128, -129])
def test_serial_octets_are_the_minimal_integer_content_a_client_sends(serial: int) -> None:
    assert serial_octets(serial) == Integer(serial).contents
    assert cert_id(ISSUER, serial).serial_int == serial


def test_every_serial_is_signed_into_the_store_once() -> None:
    clock, signer = Clock(), FakeSigner()
    store = FakeAnswerStore(clock)
    snapshot = FakeSnapshot(good(100))
    tally = asyncio.run(presigner(store, signer, snapshot, clock).run(sorted(snapshot.serials())))
    assert (tally.signed, tally.skipped, tally.failed) == (100, 0, 0)
    assert len(signer.calls) == 100 and store.puts == 100
    key = AnswerKey(CA, (cert_id(ISSUER, 42),))
    answer, until = store.answers[key]
    assert answer.der == b"der:" + serial_octets(42) + b"G"
    assert answer.responder_fingerprint == "fp-new" and answer.status is CertStatus.GOOD
    assert until == expires_at(answer.this_update, answer.next_update, MAX_AGE) == answer.this_update + MAX_AGE
    assert store.index[CA][key.certid_text()] == until  # indexed for the refresher
    assert signer.max_in_flight <= 16  # --batch bounds what is in flight


def test_a_rerun_signs_nothing_and_one_after_min_remaining_signs_again() -> None:
    clock, signer = Clock(), FakeSigner()
    store = FakeAnswerStore(clock)
    snapshot = FakeSnapshot(good(50))
    serials = sorted(snapshot.serials())
    asyncio.run(presigner(store, signer, snapshot, clock).run(serials))
    again = asyncio.run(presigner(store, signer, snapshot, clock).run(serials))
    assert (again.signed, again.skipped) == (0, 50)
    assert len(signer.calls) == 50
    clock.now += MAX_AGE - 900  # now valid for exactly min_remaining: not longer, so due
    later = asyncio.run(presigner(store, signer, snapshot, clock).run(serials))
    assert (later.signed, later.skipped) == (50, 0)


def test_a_stored_answer_whose_status_changed_is_signed_again() -> None:
    clock, signer = Clock(), FakeSigner()
    store = FakeAnswerStore(clock)
    statuses = good(10)
    snapshot = FakeSnapshot(statuses)
    asyncio.run(presigner(store, signer, snapshot, clock).run(sorted(statuses)))
    statuses[3] = StatusInfo(CertStatus.REVOKED, Revocation(datetime(2026, 1, 1, tzinfo=UTC),
                                                            RevocationReason.KEY_COMPROMISE))
    tally = asyncio.run(presigner(store, signer, snapshot, clock).run(sorted(statuses)))
    assert (tally.signed, tally.skipped) == (1, 9)
    answer, _ = store.answers[AnswerKey(CA, (cert_id(ISSUER, 3),))]
    assert answer.status is CertStatus.REVOKED and answer.reason == int(RevocationReason.KEY_COMPROMISE)


def test_still_good() -> None:
    info = StatusInfo(CertStatus.GOOD)
    answer = stored_answer(b"x", info, 1000, 5000, 1000, "fp")
    assert still_good(answer, info, 1000, MAX_AGE, 900)  # expires at 4600
    assert not still_good(answer, info, 3700, MAX_AGE, 900)
    assert not still_good(answer, StatusInfo(CertStatus.UNKNOWN), 1000, MAX_AGE, 900)


def test_failures_are_counted_and_the_run_goes_on() -> None:
    clock, signer = Clock(), FakeSigner()
    signer.failing = {5, 6, 7}
    store = FakeAnswerStore(clock)
    snapshot = FakeSnapshot(good(40))
    tally = asyncio.run(presigner(store, signer, snapshot, clock).run(sorted(snapshot.serials())))
    assert (tally.signed, tally.failed, tally.aborted) == (37, 3, "")
    assert tally.errors == {"TryLater": 3}
    text = summary(CA, tally, 1.0, 900)
    assert "failed 3" in text and "TryLater 3" in text
    signer.failing = set()  # a rerun signs just those
    tally = asyncio.run(presigner(store, signer, snapshot, clock).run(sorted(snapshot.serials())))
    assert (tally.signed, tally.skipped) == (3, 37)


def test_when_every_signature_fails_the_run_stops() -> None:
    clock, signer = Clock(), FakeSigner()
    signer.down = True
    store = FakeAnswerStore(clock)
    snapshot = FakeSnapshot(good(1000))
    tally = asyncio.run(presigner(store, signer, snapshot, clock, fail_limit=20).run(sorted(snapshot.serials())))
    assert tally.aborted and "signer" in tally.aborted
    assert tally.failed < 100 and tally.signed == 0
    assert "stopped:" in summary(CA, tally, 1.0, 900)


def test_stop_starts_no_new_signature_and_finishes_those_in_flight() -> None:
    clock, signer = Clock(), FakeSigner()
    signer.gate = asyncio.Event()
    store = FakeAnswerStore(clock)
    snapshot = FakeSnapshot(good(100))

    async def scenario() -> Tally:
        p = presigner(store, signer, snapshot, clock, batch=8)
        run = asyncio.create_task(p.run(sorted(snapshot.serials())))
        while signer.in_flight < 8:
            await asyncio.sleep(0)
        p.stop()
        assert signer.gate is not None
        signer.gate.set()
        return await run

    tally = asyncio.run(scenario())
    assert tally.interrupted and tally.signed == 8 and store.puts == 8
    assert "a rerun goes on from here" in summary(CA, tally, 1.0, 900)


def test_answers_that_would_expire_at_once_are_not_stored() -> None:
    clock, signer = Clock(), FakeSigner()
    store = FakeAnswerStore(clock)
    old = datetime.fromtimestamp(clock.now, UTC) - timedelta(hours=2)  # a CRL older than max_age
    snapshot = FakeSnapshot(good(5), fixed=(old, old + timedelta(days=7)))
    tally = asyncio.run(presigner(store, signer, snapshot, clock).run(sorted(snapshot.serials())))
    assert (tally.signed, tally.unstored, store.puts) == (0, 5, 0)
    assert "not stored" in summary(CA, tally, 1.0, 900)


def test_the_token_bucket_holds_the_rate() -> None:
    t = [0.0]

    async def fake_sleep(s: float) -> None:
        t[0] += s

    bucket = TokenBucket(10.0, burst=1, monotonic=lambda: t[0], sleep=fake_sleep)

    async def take(n: int) -> None:
        for _ in range(n):
            await bucket.take()

    asyncio.run(take(51))
    assert t[0] == pytest.approx(5.0)  # the first at once, then one every 0.1 s


def test_presign_with_a_rate_takes_a_token_per_signature() -> None:
    clock, signer = Clock(), FakeSigner()
    store = FakeAnswerStore(clock)
    t = [0.0]

    async def fake_sleep(s: float) -> None:
        t[0] += s

    snapshot = FakeSnapshot(good(30))
    bucket = TokenBucket(100.0, burst=10, monotonic=lambda: t[0], sleep=fake_sleep)
    asyncio.run(presigner(store, signer, snapshot, clock, bucket=bucket).run(sorted(snapshot.serials())))
    assert t[0] == pytest.approx(0.2)  # 10 saved up, 20 more at 100/s


def test_parse_rate() -> None:
    assert parse_rate("500/s") == 500 and parse_rate("2.5") == 2.5
    assert parse_rate("0") is None
    with pytest.raises(Exception, match="rate"):
        parse_rate("fast")


def test_progress_without_a_terminal_prints_plain_lines() -> None:
    tally = Tally(total=10)
    out = io.StringIO()
    t = [0.0]
    progress = Progress(tally, "presign ca1", out, tty=False, interval=5.0, monotonic=lambda: t[0])
    tally.signed = 4
    progress.update()
    assert out.getvalue() == ""
    t[0] = 6.0
    tally.skipped = 2
    progress.update()
    assert out.getvalue() == "presign ca1: 6/10 (60%): signed 4, skipped 2, failed 0; 1 signed/s\n"
    progress.close()


def test_progress_on_a_terminal_is_a_tqdm_bar() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tally = Tally(total=4)
    out = Tty()
    progress = Progress(tally, "presign ca1", out)
    tally.signed = 4
    progress.update()
    progress.close()
    assert "4/4" in out.getvalue() and "presign ca1" in out.getvalue()
