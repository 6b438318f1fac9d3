"""CRL status source: verification, statuses under each unissued policy, stale CRLs, reloads."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from frontend.status.base import StatusDataError
from frontend.status.crl import EPOCH, CrlSource, parse_serial_list
from shared.ocsp.errors import TryLater
from shared.ocsp.types import CertStatus, RevocationReason
from tests.unit.frontend.frontend_pki import NOW, TestCA, crl_without_next_update, write

KC = x509.ReasonFlags.key_compromise


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA("CRL Test CA")


def revoked_list() -> list:
    return [(0x10, NOW - timedelta(days=2), KC, NOW - timedelta(days=3)),
            (0x11, NOW - timedelta(days=1), None, None),
            (0x12, NOW - timedelta(days=1), x509.ReasonFlags.certificate_hold, None),
            (0x13, NOW - timedelta(days=1), x509.ReasonFlags.remove_from_crl, None)]


def source(tmp_path: Path, ca: TestCA, crl: bytes, unissued: str, issued: str | None = None) -> CrlSource:
    path = write(tmp_path / "crl.der", crl)
    issued_path = write(tmp_path / "issued.txt", issued) if issued is not None else None
    src = CrlSource("test", path, ca.der, unissued=unissued, issued_serials=issued_path, check_interval=0.1)
    src.load_now()
    return src


@pytest.mark.parametrize("pem", [False, True])
def test_revoked_entries(tmp_path: Path, ca: TestCA, pem: bool) -> None:
    src = source(tmp_path, ca, ca.crl(revoked_list(), pem=pem), "unknown")
    snap = src.current()
    r = snap.status(0x10)
    assert r.status is CertStatus.REVOKED and r.revocation is not None
    assert r.revocation.reason is RevocationReason.KEY_COMPROMISE
    assert r.revocation.time == NOW - timedelta(days=2)
    assert r.revocation.invalidity_date == NOW - timedelta(days=3)
    r = snap.status(0x11)
    assert r.revocation is not None and r.revocation.reason is None and r.revocation.invalidity_date is None
    r = snap.status(0x12)
    assert r.revocation is not None and r.revocation.reason is RevocationReason.CERTIFICATE_HOLD
    # removeFromCRL is not a revocation: released from hold, good (whatever the unissued policy).
    assert snap.status(0x13).status is CertStatus.GOOD
    assert snap.window(NOW) == (NOW, NOW + timedelta(days=1))


@pytest.mark.parametrize("unissued,issued,serial,expected", [
    # Without an issued list, everything not on the CRL gets the policy.
    ("unknown", None, 0x99, CertStatus.UNKNOWN),
    ("good", None, 0x99, CertStatus.GOOD),
    ("revoked", None, 0x99, CertStatus.REVOKED),
    # With one, listed serials are good and others get the policy.
    ("unknown", "# issued\n20\n0x21 # comment\n\n2:2\n", 0x20, CertStatus.GOOD),
    ("unknown", "20\n21\n", 0x21, CertStatus.GOOD),
    ("unknown", "20\n", 0x99, CertStatus.UNKNOWN),
    ("revoked", "20\n", 0x99, CertStatus.REVOKED),
    ("good", "20\n", 0x99, CertStatus.GOOD),
    # Revoked wins over the issued list.
    ("good", "10\n", 0x10, CertStatus.REVOKED),
])
def test_unissued_policy(tmp_path: Path, ca: TestCA, unissued: str, issued: str | None, serial: int,
                         expected: CertStatus) -> None:
    src = source(tmp_path, ca, ca.crl(revoked_list()), unissued, issued)
    info = src.current().status(serial)
    assert info.status is expected
    if expected is CertStatus.REVOKED and serial == 0x99:
        # RFC 6960 2.2 extended revoked.
        assert info.revocation is not None
        assert info.revocation.time == EPOCH
        assert info.revocation.reason is RevocationReason.CERTIFICATE_HOLD


def test_serial_list() -> None:
    assert parse_serial_list("0A\n# x\n0x0b\n0c:0d # y\n") == {0xA, 0xB, 0xC0D}
    assert parse_serial_list("0A\r\n0B # caf\u00e9\x85 \u2028 comment\r\n0C\n") == {0xA, 0xB, 0xC}
    with pytest.raises(StatusDataError):
        parse_serial_list("0A\nzz\n")


def test_stale_crl_answers_try_later(tmp_path: Path, ca: TestCA) -> None:
    src = source(tmp_path, ca, ca.crl([], next_update=NOW + timedelta(hours=1)), "unknown")
    src.current().window(NOW + timedelta(minutes=59))
    with pytest.raises(TryLater):
        src.current().window(NOW + timedelta(hours=1))


def test_refused_crls(tmp_path: Path, ca: TestCA) -> None:
    other = TestCA("Other CA")
    good = ca.crl(revoked_list())
    cases = {
        "wrong signer": ca.crl([], signer=other),
        "wrong issuer": other.crl([]),
        "no nextUpdate": crl_without_next_update(ca),
        "garbage": b"not a crl",
        "corrupt": good[:-5] + bytes(5),
        "truncated": good[:50],
    }
    for what, data in cases.items():
        path = write(tmp_path / f"{what}.der", data)
        src = CrlSource("t", path, ca.der, unissued="unknown")
        with pytest.raises(StatusDataError):
            src.load_now()
            pytest.fail(what)


def test_broken_new_crl_keeps_last_good(tmp_path: Path, ca: TestCA) -> None:
    src = source(tmp_path, ca, ca.crl(revoked_list(), pem=True), "good")
    path = tmp_path / "crl.der"
    good_pem = path.read_bytes()

    async def go() -> None:
        # The integration test's corruption: a few characters changed, signature no longer verifies.
        path.write_bytes(good_pem.replace(b"A", b"B", 3))
        assert not await src.refresh(force=True)
        assert src.current().status(0x10).status is CertStatus.REVOKED
        # A CRL from a different key: refused as well.
        path.write_bytes(ca.crl([], signer=TestCA("Evil")))
        assert not await src.refresh()
        assert src.current().status(0x10).status is CertStatus.REVOKED
        # A good new CRL replaces it.
        path.write_bytes(ca.crl([(0x50, NOW, KC, None)], this_update=NOW + timedelta(minutes=1)))
        assert await src.refresh()
        snap = src.current()
        assert snap.status(0x10).status is CertStatus.GOOD and snap.status(0x50).status is CertStatus.REVOKED
        assert snap.window(NOW + timedelta(minutes=2))[0] == NOW + timedelta(minutes=1)

    asyncio.run(go())


def test_issued_list_change_reloads(tmp_path: Path, ca: TestCA) -> None:
    src = source(tmp_path, ca, ca.crl([]), "unknown", "20\n")
    assert src.current().status(0x21).status is CertStatus.UNKNOWN

    async def go() -> None:
        write(tmp_path / "issued.txt", "20\n21\n")
        assert await src.refresh()

    asyncio.run(go())
    assert src.current().status(0x21).status is CertStatus.GOOD


def test_reload_refuses_rollback(tmp_path: Path, ca: TestCA, caplog: pytest.LogCaptureFixture) -> None:
    from shared.clock import FakeClock

    path = write(tmp_path / "crl.der", ca.crl([(0x50, NOW - timedelta(hours=1), KC, None)],
                                              this_update=NOW - timedelta(hours=1), number=7))
    src = CrlSource("t", path, ca.der, unissued="good", clock=FakeClock(NOW))
    src.load_now()
    older = {
        "older thisUpdate": ca.crl([], this_update=NOW - timedelta(days=1), number=8),
        "lower CRLNumber": ca.crl([], this_update=NOW - timedelta(hours=1), number=6),
        "already expired": ca.crl([], this_update=NOW - timedelta(minutes=30),
                                  next_update=NOW - timedelta(minutes=1), number=8),
    }

    async def go() -> None:
        for what, data in older.items():
            path.write_bytes(data)
            caplog.clear()
            assert not await src.refresh(force=True), what
            assert src.current().status(0x50).status is CertStatus.REVOKED, what
            (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
            assert "FAILED, keeping the last good data" in record.getMessage(), what
        assert "expired" in (src.last_error or "")
        # The same CRL again (an issued list changed, a forced SIGHUP) and newer ones are fine.
        path.write_bytes(ca.crl([(0x50, NOW - timedelta(hours=1), KC, None)],
                                this_update=NOW - timedelta(hours=1), number=7))
        assert await src.refresh(force=True)
        path.write_bytes(ca.crl([], this_update=NOW, number=8))
        assert await src.refresh(force=True)
        assert src.current().status(0x50).status is CertStatus.GOOD

    with caplog.at_level("ERROR", logger="frontend.status"):
        asyncio.run(go())


def test_future_this_update_refused(tmp_path: Path, ca: TestCA) -> None:
    from shared.clock import FakeClock

    clock = FakeClock(NOW)
    path = write(tmp_path / "crl.der", ca.crl([], this_update=NOW + timedelta(hours=3)))
    src = CrlSource("t", path, ca.der, unissued="good", clock=clock)
    # At start-up: a status-data error naming the file.
    with pytest.raises(StatusDataError, match=r"crl\.der: thisUpdate .* is in the future"):
        src.load_now()
    # A few minutes of skew are tolerated.
    path.write_bytes(ca.crl([(0x50, NOW, KC, None)], this_update=NOW + timedelta(minutes=4)))
    src.load_now()

    async def go() -> None:
        # On a reload: refused, the last good CRL stays.
        path.write_bytes(ca.crl([], this_update=NOW + timedelta(hours=1)))
        assert not await src.refresh(force=True)
        assert "in the future" in (src.last_error or "")
        assert src.current().status(0x50).status is CertStatus.REVOKED
        assert not await src.refresh()  # the unchanged file is tried again at the next check
        clock.advance(timedelta(hours=1))
        assert await src.refresh()  # its time has come: taken without the file changing
        assert src.current().status(0x50).status is CertStatus.GOOD

    asyncio.run(go())


@pytest.mark.parametrize("order", ["release-first", "revocation-first"])
def test_remove_from_crl_does_not_undo_a_revocation(tmp_path: Path, ca: TestCA, order: str) -> None:
    """Whichever comes first in the CRL, a revoking entry for the serial wins over removeFromCRL."""
    entries = [(0x30, NOW, x509.ReasonFlags.remove_from_crl, None), (0x30, NOW, KC, None)]
    if order == "revocation-first":
        entries.reverse()
    src = source(tmp_path, ca, ca.crl(entries), "unknown")
    info = src.current().status(0x30)
    assert info.status is CertStatus.REVOKED
    assert info.revocation is not None and info.revocation.reason is RevocationReason.KEY_COMPROMISE


# -- an issued-serials list cut short never replaces good data (issue 6.2) ---------------------------

ISSUED = "".join(f"{0x100 + i:X}\n" for i in range(50))


@pytest.mark.parametrize("text,message", [
    ("20\n21", "issued.txt:2: the last line has no newline"),
    ("20\n2", "issued.txt:2: the last line has no newline"),
    ("", "lists no serials"),
    ("# nothing issued yet\n\n", "lists no serials"),
])
def test_issued_list_cut_short_or_empty_is_refused(tmp_path: Path, ca: TestCA, text: str, message: str) -> None:
    with pytest.raises(StatusDataError, match=message):
        parse_serial_list(text, str(tmp_path / "issued.txt"))
    with pytest.raises(StatusDataError, match=message):
        source(tmp_path, ca, ca.crl([]), "unknown", text)


def test_issued_list_bad_replacements_keep_the_last_good(tmp_path: Path, ca: TestCA,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    src = source(tmp_path, ca, ca.crl([(0x100, NOW - timedelta(hours=1), KC, None)]), "unknown", ISSUED)
    issued_path = tmp_path / "issued.txt"
    last = 0x100 + 49
    bad = {
        "cut mid-line": ISSUED[:-2],
        "empty": "",
        "cut at a line boundary, 80 % lost": "".join(ISSUED.splitlines(keepends=True)[:10]),
        "12 % lost": "".join(ISSUED.splitlines(keepends=True)[:43]) + f"{last:X}\n",
    }

    async def go() -> None:
        for what, text in bad.items():
            tmp = tmp_path / "new"
            tmp.write_text(text)
            tmp.rename(issued_path)
            caplog.clear()
            assert not await src.refresh(), what
            snap = src.current()
            assert snap.status(last).status is CertStatus.GOOD, what  # issued stays issued
            assert snap.status(0x100).status is CertStatus.REVOKED, what
            assert snap.status(0x999).status is CertStatus.UNKNOWN, what
            (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
            assert "FAILED, keeping the last good data" in record.getMessage(), what
        assert "status.max_shrink" in (src.last_error or "")
        # 10 % lost is within the default limit; a good list is taken.
        write(issued_path, "".join(ISSUED.splitlines(keepends=True)[:45]))
        assert await src.refresh()
        assert src.current().status(last).status is CertStatus.UNKNOWN

    with caplog.at_level("ERROR", logger="frontend.status"):
        asyncio.run(go())


def test_a_shrinking_crl_is_fine(tmp_path: Path, ca: TestCA) -> None:
    """Entries of expired certificates leave the CRL: no shrink rule for the CRL itself."""
    many = [(0x200 + i, NOW - timedelta(days=2), KC, None) for i in range(50)]
    src = source(tmp_path, ca, ca.crl(many, this_update=NOW - timedelta(hours=1)), "unknown")
    write(tmp_path / "crl.der", ca.crl(many[:2], this_update=NOW))

    async def go() -> bool:
        return await src.refresh()

    assert asyncio.run(go())
    assert src.current().status(0x210).status is CertStatus.UNKNOWN


def test_issued_list_shrink_limit_is_configurable(tmp_path: Path, ca: TestCA) -> None:
    path = write(tmp_path / "crl.der", ca.crl([]))
    issued_path = write(tmp_path / "issued.txt", ISSUED)
    src = CrlSource("t", path, ca.der, unissued="unknown", issued_serials=issued_path, max_shrink=1.0)
    src.load_now()
    write(issued_path, "100\n")

    async def go() -> bool:
        return await src.refresh()

    assert asyncio.run(go())


@pytest.mark.parametrize("window,warned", [(timedelta(days=1), False), (timedelta(days=7), False),
                                           (timedelta(hours=4), True), (timedelta(days=14), True)])
def test_crl_window_outside_the_brs_is_warned_about(tmp_path: Path, ca: TestCA, caplog: pytest.LogCaptureFixture,
                                                    window: timedelta, warned: bool) -> None:
    """A CRL-backed answer carries the CRL's thisUpdate..nextUpdate: warned about (never refused) at
    start-up, and again when a new CRL's window has another length."""
    crl = ca.crl([], this_update=NOW - timedelta(minutes=1), next_update=NOW - timedelta(minutes=1) + window)
    with caplog.at_level("WARNING", logger="frontend.status"):
        src = source(tmp_path, ca, crl, "unknown")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert "the CRL's thisUpdate..nextUpdate" in warnings[0] and "outside the 8h..10d" in warnings[0]

    async def go(data: bytes) -> None:
        write(tmp_path / "crl.der", data)
        assert await src.refresh()

    caplog.clear()
    with caplog.at_level("WARNING", logger="frontend.status"):
        asyncio.run(go(ca.crl([], this_update=NOW, next_update=NOW + window)))  # same length: quiet
        assert [r for r in caplog.records if r.levelname == "WARNING"] == []
        asyncio.run(go(ca.crl([], this_update=NOW + timedelta(seconds=1),
                              next_update=NOW + timedelta(days=15))))  # another length, outside
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1
