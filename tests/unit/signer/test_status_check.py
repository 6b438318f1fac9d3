"""signer.status_check against real status files (a CRL signed by a test CA, an index.txt), loaded the way
both halves load them (shared.status.config.make_source): what an honest frontend sends from the same
data agrees; a wrong status, revocation time, reason or invalidity date, an unissued serial answered
otherwise than configured, a window the data does not allow, each gets a reason."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from shared.clock import FakeClock
from shared.ocsp.types import CertId, CertStatus, HashAlgorithm, Revocation, RevocationReason, SingleStatus
from shared.status.base import Snapshot
from shared.status.config import DEFAULT_CHECK_INTERVAL, StatusConfig, make_source
from signer.status_check import TRANSIT, check, describe, may_be_older
from tests.unit.frontend.frontend_pki import NOW, TestCA, write

SKEW = timedelta(minutes=5)
DAY, H, S = timedelta(days=1), timedelta(hours=1), timedelta(seconds=1)
KC = RevocationReason.KEY_COMPROMISE
REVOKED_AT = NOW - 2 * DAY
INVALID_FROM = NOW - 3 * DAY
EPOCH_HOLD = Revocation(datetime(1970, 1, 1, tzinfo=NOW.tzinfo), RevocationReason.CERTIFICATE_HOLD)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA("Status Check CA")


def index_line(flag: str, serial: int, rev: str = "") -> str:
    return "\t".join([flag, "301231235959Z", rev, f"{serial:X}", "unknown", f"/CN=leaf {serial:x}"]) + "\n"


def index_snapshot(tmp_path: Path, validity: timedelta = DAY) -> Snapshot:
    text = (index_line("V", 0x1000) + index_line("R", 0x1001, f"{REVOKED_AT:%y%m%d%H%M%S}Z,keyCompromise")
            + index_line("R", 0x1002, f"{REVOKED_AT:%y%m%d%H%M%S}Z,keyTime,{INVALID_FROM:%Y%m%d%H%M%S}Z")
            + index_line("R", 0x1003, f"{REVOKED_AT:%y%m%d%H%M%S}Z"))
    cfg = StatusConfig(source="index", path=write(tmp_path / "index.txt", text), validity=validity,
                       check_interval=DEFAULT_CHECK_INTERVAL)
    src = make_source("rsa-ca", b"", cfg)
    src.load_now()
    return src.current()


def crl_snapshot(tmp_path: Path, ca: TestCA, unissued: str = "unknown", issued: str | None = "1000\n") -> Snapshot:
    crl = ca.crl([(0x1001, REVOKED_AT, x509.ReasonFlags.key_compromise, INVALID_FROM),
                  (0x1003, REVOKED_AT, None, None)], this_update=NOW, next_update=NOW + DAY)
    cfg = StatusConfig(source="crl", path=write(tmp_path / "crl.der", crl), validity=timedelta(0),
                       check_interval=DEFAULT_CHECK_INTERVAL, unissued=unissued,
                       issued_serials=write(tmp_path / "issued.txt", issued) if issued is not None else None)
    src = make_source("ec-ca", ca.der, cfg, clock=FakeClock(NOW))
    src.load_now()
    return src.current()


def honest(snapshot: Snapshot, serial: int, now: datetime) -> SingleStatus:
    """What frontend.app builds for ``serial`` from ``snapshot`` at the frontend's ``now``."""
    this_update, next_update = snapshot.window(now)
    info = snapshot.status(serial)
    return SingleStatus(cert_id=cert_id(serial), status=info.status, this_update=this_update,
                        next_update=next_update, revocation=info.revocation)


def cert_id(serial: int) -> CertId:
    return CertId(HashAlgorithm.SHA1, b"\x01" * 20, b"\x02" * 20, serial.to_bytes(4, "big", signed=True))


@pytest.fixture(params=["index", "crl"])
def snapshot(request: pytest.FixtureRequest, tmp_path: Path, ca: TestCA) -> Snapshot:
    return index_snapshot(tmp_path) if request.param == "index" else crl_snapshot(tmp_path, ca)


# -- agreement ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("serial", [0x1000, 0x1001, 0x1002, 0x1003, 0x7777, -5])
@pytest.mark.parametrize("frontend_clock", [timedelta(0), -SKEW, SKEW, -S])
def test_what_an_honest_frontend_sends_agrees(snapshot: Snapshot, serial: int, frontend_clock: timedelta) -> None:
    """Whatever the serial, and with the frontend's clock anywhere within max_clock_skew of ours."""
    item = honest(snapshot, serial, NOW + frontend_clock)
    assert check(snapshot, item, NOW, SKEW) is None
    assert check(snapshot, item, NOW + TRANSIT, SKEW) is None  # the request took a while to arrive


# -- status and revocation ------------------------------------------------------------------------------


def test_good_for_a_revoked_serial(snapshot: Snapshot) -> None:
    item = dataclasses.replace(honest(snapshot, 0x1001, NOW), status=CertStatus.GOOD, revocation=None)
    reason = check(snapshot, item, NOW, SKEW)
    assert reason is not None and reason.startswith("asked good, the data says revoked 2026-02-27T12:00:00Z")
    assert "keyCompromise" in reason


def test_revoked_for_a_good_serial(snapshot: Snapshot) -> None:
    item = dataclasses.replace(honest(snapshot, 0x1000, NOW), status=CertStatus.REVOKED,
                               revocation=Revocation(REVOKED_AT, KC))
    assert check(snapshot, item, NOW, SKEW) == "asked revoked, the data says good"


@pytest.mark.parametrize("change,words", [
    ({"time": REVOKED_AT + S}, "asked revocation time 2026-02-27T12:00:01Z, the data says 2026-02-27T12:00:00Z"),
    ({"time": REVOKED_AT - DAY}, "asked revocation time 2026-02-26T12:00:00Z"),
    ({"reason": RevocationReason.SUPERSEDED}, "asked revocation reason superseded, the data says keyCompromise"),
    ({"reason": None}, "asked revocation reason (none), the data says keyCompromise"),
])
def test_wrong_revocation_time_or_reason(snapshot: Snapshot, change: dict, words: str) -> None:
    item = honest(snapshot, 0x1001, NOW)
    assert item.revocation is not None
    item = dataclasses.replace(item, revocation=dataclasses.replace(item.revocation, **change))
    reason = check(snapshot, item, NOW, SKEW)
    assert reason is not None and reason.startswith(words), reason


def test_a_reason_where_the_data_has_none(snapshot: Snapshot) -> None:
    item = honest(snapshot, 0x1003, NOW)
    assert item.revocation is not None and item.revocation.reason is None
    item = dataclasses.replace(item, revocation=Revocation(REVOKED_AT, KC))
    assert check(snapshot, item, NOW, SKEW) == "asked revocation reason keyCompromise, the data says (none)"


def test_wrong_invalidity_date(tmp_path: Path, ca: TestCA) -> None:
    for snap, serial in ((index_snapshot(tmp_path), 0x1002), (crl_snapshot(tmp_path, ca), 0x1001)):
        item = honest(snap, serial, NOW)
        assert item.revocation is not None and item.revocation.invalidity_date == INVALID_FROM
        for other in (None, INVALID_FROM + S):
            bad = dataclasses.replace(item, revocation=dataclasses.replace(item.revocation, invalidity_date=other))
            reason = check(snap, bad, NOW, SKEW)
            assert reason is not None and reason.startswith("asked invalidity date"), reason


def test_the_check_can_fail_at_all(snapshot: Snapshot) -> None:
    """A mutation of the agreement test's input: the same item with one field changed is refused."""
    item = honest(snapshot, 0x1000, NOW)
    assert check(snapshot, item, NOW, SKEW) is None
    assert check(snapshot, dataclasses.replace(item, status=CertStatus.UNKNOWN), NOW, SKEW) is not None


# -- never-issued serials -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,unissued,answer,agrees", [
    ("index", None, CertStatus.UNKNOWN, True),
    ("index", None, CertStatus.GOOD, False),
    ("index", None, CertStatus.REVOKED, False),
    ("crl", "unknown", CertStatus.UNKNOWN, True),
    ("crl", "unknown", CertStatus.GOOD, False),
    ("crl", "revoked", CertStatus.REVOKED, True),  # RFC 6960 2.2 extended revoked
    ("crl", "revoked", CertStatus.GOOD, False),
    ("crl", "revoked", CertStatus.UNKNOWN, False),
    ("crl", "good", CertStatus.GOOD, True),
    ("crl", "good", CertStatus.UNKNOWN, False),
])
def test_unissued_serial_only_with_the_configured_answer(tmp_path: Path, ca: TestCA, kind: str,
                                                          unissued: str | None, answer: CertStatus,
                                                          agrees: bool) -> None:
    snap = index_snapshot(tmp_path) if kind == "index" else crl_snapshot(tmp_path, ca, unissued or "unknown")
    serial = 0x5555  # in neither the index nor the CRL's issued list
    assert not snap.listed(serial)
    item = dataclasses.replace(honest(snap, serial, NOW), status=answer,
                               revocation=EPOCH_HOLD if answer is CertStatus.REVOKED else None)
    reason = check(snap, item, NOW, SKEW)
    if agrees:
        assert reason is None
    else:
        assert reason is not None and "does not list (not issued)" in reason, reason
        assert f"configured answer is {describe(snap.status(serial))}" in reason


def test_extended_revoked_needs_its_exact_form(tmp_path: Path, ca: TestCA) -> None:
    snap = crl_snapshot(tmp_path, ca, "revoked")
    item = honest(snap, 0x5555, NOW)
    assert item.revocation == EPOCH_HOLD and check(snap, item, NOW, SKEW) is None
    item = dataclasses.replace(item, revocation=Revocation(REVOKED_AT, RevocationReason.CERTIFICATE_HOLD))
    assert check(snap, item, NOW, SKEW) is not None


def test_issued_serial_of_a_crl_without_an_issued_list(tmp_path: Path, ca: TestCA) -> None:
    """Without issued_serials the CRL knows only revocations: good needs unissued = "good"."""
    snap = crl_snapshot(tmp_path, ca, "unknown", issued=None)
    good = dataclasses.replace(honest(snap, 0x1000, NOW), status=CertStatus.GOOD)
    assert check(snap, good, NOW, SKEW) is not None
    assert check(snap, honest(snap, 0x1001, NOW), NOW, SKEW) is None  # revocations are still known


# -- the validity window ----------------------------------------------------------------------------------


def test_index_window_too_long(tmp_path: Path) -> None:
    snap = index_snapshot(tmp_path, validity=H)
    item = honest(snap, 0x1000, NOW)
    assert check(snap, item, NOW, SKEW) is None
    longer = dataclasses.replace(item, next_update=item.next_update + S)
    assert check(snap, longer, NOW, SKEW) == "asked a validity of 1:00:01, longer than the data's 1:00:00"
    week = dataclasses.replace(item, next_update=item.this_update + 7 * DAY)
    assert check(snap, week, NOW, SKEW) is not None


def test_index_window_follows_the_clocks(tmp_path: Path) -> None:
    snap = index_snapshot(tmp_path, validity=H)
    early = honest(snap, 0x1000, NOW - SKEW - TRANSIT)
    assert check(snap, early, NOW, SKEW) is None
    too_early = honest(snap, 0x1000, NOW - SKEW - TRANSIT - S)
    reason = check(snap, too_early, NOW, SKEW)
    assert reason is not None and reason.startswith("asked thisUpdate 2026-03-01T11:54:29Z, earlier than")
    late = dataclasses.replace(honest(snap, 0x1000, NOW + SKEW), next_update=NOW + SKEW + H + S)
    assert check(snap, late, NOW, SKEW) is not None


@pytest.mark.parametrize("this_shift,next_shift,words", [
    (-S, -S, "asked thisUpdate 2026-03-01T11:59:59Z, earlier than the data allows (2026-03-01T12:00:00Z)"),
    (timedelta(0), S, "asked nextUpdate 2026-03-02T12:00:01Z, later than the data allows (2026-03-02T12:00:00Z)"),
    (-H, timedelta(0), "asked thisUpdate"),  # backdated: not even the clock skew is allowed for a CRL's window
    (H, H, "asked nextUpdate"),  # a newer CRL's window: the signer's copy may be older (may_be_older)
])
def test_crl_window_is_the_crls_own(tmp_path: Path, ca: TestCA, this_shift: timedelta, next_shift: timedelta,
                                    words: str) -> None:
    snap = crl_snapshot(tmp_path, ca)
    item = honest(snap, 0x1000, NOW)
    assert (item.this_update, item.next_update) == (NOW, NOW + DAY)
    item = dataclasses.replace(item, this_update=item.this_update + this_shift,
                               next_update=item.next_update + next_shift)
    reason = check(snap, item, NOW, SKEW)
    assert reason is not None and reason.startswith(words), reason


def test_crl_narrower_window_agrees(tmp_path: Path, ca: TestCA) -> None:
    snap = crl_snapshot(tmp_path, ca)
    item = dataclasses.replace(honest(snap, 0x1000, NOW), this_update=NOW + H, next_update=NOW + 2 * H)
    assert check(snap, item, NOW + H, SKEW) is None


def test_expired_data_agrees_with_nothing(tmp_path: Path, ca: TestCA) -> None:
    snap = crl_snapshot(tmp_path, ca)
    item = honest(snap, 0x1000, NOW)
    reason = check(snap, item, NOW + DAY, SKEW)
    assert reason is not None and reason.startswith("the signer's status data cannot answer"), reason
    assert "expired" in reason


# -- reload before refusing -------------------------------------------------------------------------------


def test_may_be_older(tmp_path: Path, ca: TestCA) -> None:
    (tmp_path / "listed").mkdir()
    listed = crl_snapshot(tmp_path / "listed", ca)
    # With an issued-serials list, the list changes without the CRL (no time of its own): a frontend
    # answering good from a newer list than the signer's must get a reload before a refusal.
    assert may_be_older(listed, honest(listed, 0x1000, NOW))
    (tmp_path / "plain").mkdir()
    crl = crl_snapshot(tmp_path / "plain", ca, unissued="good", issued=None)
    same = honest(crl, 0x1000, NOW)
    assert not may_be_older(crl, same)  # asked from this very CRL: a reload changes nothing
    assert not may_be_older(crl, dataclasses.replace(same, this_update=NOW - H))  # older: no reload either
    assert may_be_older(crl, dataclasses.replace(same, this_update=NOW + S))  # a newer CRL on the frontend
    index = index_snapshot(tmp_path)
    assert may_be_older(index, honest(index, 0x1000, NOW))  # no time of its own: reload once to be sure


# -- the CRL a new one replaced ------------------------------------------------------------------------


def replaced_pair(tmp_path: Path, ca: TestCA) -> tuple[Snapshot, Snapshot, object]:
    """The CRL of an hour ago (0x1001 revoked), then today's (0x1002 revoked too), loaded in turn by
    one source, as the signer's watch loads a replaced file; returns (old, new, source)."""
    path = tmp_path / "crl.der"
    old_entries = [(0x1001, REVOKED_AT, x509.ReasonFlags.key_compromise, None)]
    write(path, ca.crl(old_entries, this_update=NOW - H, next_update=NOW - H + DAY, number=1))
    cfg = StatusConfig(source="crl", path=path, validity=timedelta(0), check_interval=DEFAULT_CHECK_INTERVAL,
                       unissued="good")
    src = make_source("ec-ca", ca.der, cfg, clock=FakeClock(NOW))
    src.load_now()
    old = src.current()
    write(path, ca.crl([*old_entries, (0x1002, NOW - 30 * S, None, None)], this_update=NOW,
                       next_update=NOW + DAY, number=2))
    src.load_now()
    return old, src.current(), src


def test_the_replaced_crls_window_is_signed_for_what_both_crls_say(tmp_path: Path, ca: TestCA) -> None:
    old, new, src = replaced_pair(tmp_path, ca)
    assert src.previous is old and src.replaced_at is not None  # what signer.status_verify passes on
    for serial in (0x1005, 0x1001):  # good in both; revoked in both
        behind = honest(old, serial, NOW)  # a frontend that has not read the new CRL yet
        reason = check(new, behind, NOW, SKEW)
        assert reason is not None and "earlier than the data allows" in reason  # without the previous CRL
        assert check(new, behind, NOW, SKEW, previous=old) is None
        assert check(new, honest(new, serial, NOW), NOW, SKEW, previous=old) is None


def test_the_replaced_crl_does_not_vouch_for_what_changed_or_expired(tmp_path: Path, ca: TestCA) -> None:
    old, new, _ = replaced_pair(tmp_path, ca)
    changed = honest(old, 0x1002, NOW)  # good in the old CRL, revoked in the new one
    reason = check(new, changed, NOW, SKEW, previous=old)
    assert reason is not None and reason.startswith("asked good, the data says revoked"), reason
    # The new status with the old window: the old CRL never said so.
    mixed = dataclasses.replace(honest(new, 0x1002, NOW), this_update=NOW - H, next_update=NOW - H + DAY)
    reason = check(new, mixed, NOW, SKEW, previous=old)
    assert reason is not None and "earlier than the data allows" in reason, reason
    # Past the old CRL's nextUpdate its window is no longer signed.
    late = NOW - H + DAY + S
    reason = check(new, honest(old, 0x1005, NOW), late, SKEW, previous=old)
    assert reason is not None and "earlier than the data allows" in reason, reason
    # A window wider than the old CRL's: refused.
    wide = dataclasses.replace(honest(old, 0x1005, NOW), next_update=NOW + DAY)
    assert check(new, wide, NOW, SKEW, previous=old) is not None
