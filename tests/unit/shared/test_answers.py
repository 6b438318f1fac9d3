"""shared.answers (the name and stored form of one answer) and shared.status.base.changed_serials."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from shared.answers import AnswerKey, BadStoredAnswer, StoredAnswer, decode, parse_certids
from shared.ocsp.types import CertId, CertStatus, HashAlgorithm, Revocation, RevocationReason, StatusInfo
from shared.status.base import changed_serials
from shared.status.index_txt import IndexTxtSource, parse_index


def cid(alg: HashAlgorithm = HashAlgorithm.SHA1, serial: bytes = b"\x10\x00") -> CertId:
    size = alg.digest_size
    return CertId(alg, b"\x01" * size, b"\x02" * size, serial)


def test_key_names_the_ca_and_every_certid_field() -> None:
    base = AnswerKey("ca", (cid(),)).text("p:")
    assert base.startswith("p:a:ca:sha1:")
    assert base.endswith(":1000")
    others = {AnswerKey("other", (cid(),)).text("p:"), AnswerKey("ca", (cid(HashAlgorithm.SHA256),)).text("p:"),
              AnswerKey("ca", (cid(serial=b"\x10\x01"),)).text("p:"),
              AnswerKey("ca", (cid(), cid(serial=b"\x10\x01"))).text("p:")}
    assert base not in others and len(others) == 4


ANSWER = StoredAnswer(b"\x30\x03\x0a\x01\x00", 1_700_000_000, 1_700_086_400, 1_700_000_001,
                      CertStatus.REVOKED, "sha256:00ff")


def test_stored_answer_round_trips() -> None:
    assert decode(ANSWER.encode()) == ANSWER


@pytest.mark.parametrize("data", [
    b"",
    ANSWER.encode()[:10],
    b"\x02" + ANSWER.encode()[1:],  # another format
    ANSWER.encode()[:-len(ANSWER.der)],  # no DER after the fingerprint
])
def test_foreign_or_truncated_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(BadStoredAnswer):
        decode(data)


def line(flag: str, serial: str, rev: str = "") -> str:
    return "\t".join([flag, "301231235959Z", rev, serial, "unknown", f"/CN={serial}"]) + "\n"


def test_changed_serials_names_exactly_the_changed_ones() -> None:
    day = timedelta(days=1)
    old = parse_index(line("V", "01") + line("V", "02") + line("R", "03", "250102030405Z") + line("V", "04"), day)
    new = parse_index(line("V", "01") + line("R", "02", "250102030405Z") + line("R", "03", "250102030405Z,keyCompromise")
                      + line("V", "05"), day)
    # 02 revoked, 03's reason changed, 04 dropped (now unknown), 05 added (was unknown).
    assert changed_serials(old, new) == {2, 3, 4, 5}
    assert changed_serials(new, new) == set()


def test_certid_text_reads_back() -> None:
    key = AnswerKey("a:b", (cid(), cid(HashAlgorithm.SHA256, b"\x00\x80")))
    assert parse_certids(key.certid_text()) == key.cert_ids
    for bad in ["", "sha1:00:00:01", "md5:" + "01" * 16 + ":" + "01" * 16 + ":01", "sha1:zz"]:
        with pytest.raises(ValueError):
            parse_certids(bad)


def test_answers_compares_status_and_revocation_details() -> None:
    when = datetime(2025, 1, 2, tzinfo=UTC)
    revoked = StoredAnswer(b"x", 1, 2, 1, CertStatus.REVOKED, "f", int(when.timestamp()), 1)
    assert revoked.answers(StatusInfo(CertStatus.REVOKED, Revocation(when, RevocationReason.KEY_COMPROMISE)))
    assert not revoked.answers(StatusInfo(CertStatus.REVOKED, Revocation(when, None)))
    assert not revoked.answers(StatusInfo(CertStatus.REVOKED, Revocation(when + timedelta(seconds=1),
                                                                         RevocationReason.KEY_COMPROMISE)))
    assert not revoked.answers(StatusInfo(CertStatus.GOOD))
    assert ANSWER_GOOD.answers(StatusInfo(CertStatus.GOOD))
    assert not ANSWER_GOOD.answers(StatusInfo(CertStatus.UNKNOWN))


ANSWER_GOOD = StoredAnswer(b"x", 1, 2, 1, CertStatus.GOOD, "f")


def test_a_reload_tells_its_listeners_which_serials_changed(tmp_path) -> None:
    path = tmp_path / "index.txt"
    path.write_text(line("V", "01") + line("V", "02"))
    source = IndexTxtSource("ca", path, timedelta(days=1), check_interval=60)
    source.load_now()
    assert source.last_changes is None  # the first load: everything is new
    seen: list[set[int] | None] = []
    source.on_change(lambda s: seen.append(s.last_changes))
    path.write_text(line("V", "01") + line("R", "02", "250102030405Z") + line("V", "03"))
    assert asyncio.run(source.refresh(force=True))
    assert seen == [{2, 3}]
