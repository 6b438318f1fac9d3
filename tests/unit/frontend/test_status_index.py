"""OpenSSL index.txt status source: parsing, statuses, reload keeping the last good data."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from frontend.status.base import StatusDataError
from frontend.status.index_txt import IndexTxtSource, parse_index, parse_revocation, parse_time
from shared.ocsp.errors import TryLater
from shared.ocsp.types import CertStatus, RevocationReason

H = timedelta(hours=1)


def line(flag: str, serial: str, rev: str = "", expiry: str = "301231235959Z") -> str:
    return "\t".join([flag, expiry, rev, serial, "unknown", f"/CN=leaf {serial}"]) + "\n"


INDEX = (
    line("V", "1000")
    + line("R", "1001", "250102030405Z,keyCompromise")
    + line("E", "1002", expiry="200101000000Z")
    + line("R", "1003", "250102030405Z")
    + line("R", "1004", "250102030405Z,keyTime,20241231000000Z")
    + line("R", "1005", "250102030405Z,CAkeyTime,20241230000000Z")
    + line("R", "1006", "250102030405Z,holdInstruction,1.2.840.10040.2.2")
    + line("R", "1007", "20510102030405Z,SUPERSEDED")
    + line("R", "1008", "250102030405Z,cessationOfOperation")
    + line("V", "00FF")
    + line("R", "1009", "250102030405Z,removeFromCRL")
)


@pytest.mark.parametrize("serial,status,reason", [
    (0x1000, CertStatus.GOOD, None),
    (0x1001, CertStatus.REVOKED, RevocationReason.KEY_COMPROMISE),
    (0x1002, CertStatus.GOOD, None),  # expired, never revoked: still good (RFC 6960)
    (0x1003, CertStatus.REVOKED, None),
    (0x1004, CertStatus.REVOKED, RevocationReason.KEY_COMPROMISE),
    (0x1005, CertStatus.REVOKED, RevocationReason.CA_COMPROMISE),
    (0x1006, CertStatus.REVOKED, RevocationReason.CERTIFICATE_HOLD),
    (0x1007, CertStatus.REVOKED, RevocationReason.SUPERSEDED),
    (0x1008, CertStatus.REVOKED, RevocationReason.CESSATION_OF_OPERATION),
    (0xFF, CertStatus.GOOD, None),
    (0x1009, CertStatus.GOOD, None),  # removeFromCRL: released from hold, not revoked (as in a CRL)
    (0x2000, CertStatus.UNKNOWN, None),
    (-1, CertStatus.UNKNOWN, None),
])
def test_statuses(serial: int, status: CertStatus, reason: RevocationReason | None) -> None:
    snap = parse_index(INDEX, H)
    info = snap.status(serial)
    assert info.status is status
    if status is CertStatus.REVOKED:
        assert info.revocation is not None and info.revocation.reason == reason
    else:
        assert info.revocation is None


def test_revocation_details() -> None:
    snap = parse_index(INDEX, H)
    r = snap.status(0x1004).revocation
    assert r is not None
    assert r.time == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert r.invalidity_date == datetime(2024, 12, 31, tzinfo=UTC)
    r7 = snap.status(0x1007).revocation
    assert r7 is not None and r7.time == datetime(2051, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_window_is_now_plus_validity() -> None:
    snap = parse_index(INDEX, timedelta(minutes=30))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert snap.window(now) == (now, now + timedelta(minutes=30))


@pytest.mark.parametrize("text", ["99\n", "1\t2\t3\n", "A\t301231235959Z\t\t10\tunknown\t/CN=x\n",
                                  line("R", "10", ""), line("R", "10", "250102030405Z,badReason"),
                                  line("R", "10", "250102030405Z,keyTime"), line("V", "XYZ"),
                                  line("V", "10", expiry="2030")])
def test_bad_lines_fail_the_file(text: str) -> None:
    with pytest.raises(StatusDataError):
        parse_index(line("V", "1") + text, H)


def test_duplicate_serial_revoked_wins() -> None:
    snap = parse_index(line("R", "10", "250102030405Z") + line("V", "10"), H)
    assert snap.status(0x10).status is CertStatus.REVOKED
    snap = parse_index(line("V", "10") + line("R", "10", "250102030405Z"), H)
    assert snap.status(0x10).status is CertStatus.REVOKED
    for two in (line("R", "10", "250102030405Z,removeFromCRL") + line("R", "10", "250102030405Z,keyCompromise"),
                line("R", "10", "250102030405Z,keyCompromise") + line("R", "10", "250102030405Z,removeFromCRL")):
        assert parse_index(two, H).status(0x10).status is CertStatus.REVOKED


def test_time_formats() -> None:
    assert parse_time("491231235959Z").year == 2049
    assert parse_time("500101000000Z").year == 1950
    assert parse_revocation("250102030405Z").reason is None


def test_reload_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "index.txt"
    path.write_text(line("V", "10"))
    src = IndexTxtSource("ca", path, H, check_interval=0.1)
    with pytest.raises(TryLater):
        src.current()
    src.load_now()
    changes: list[str] = []
    src.on_change(lambda s: changes.append(s.name))
    assert src.current().status(0x10).status is CertStatus.GOOD

    async def go() -> None:
        assert not await src.refresh()  # unchanged
        path.write_text(line("R", "10", "250102030405Z,superseded"))
        assert await src.refresh()
        assert src.current().status(0x10).status is CertStatus.REVOKED
        # A broken file: the last good data stays, and no listener fires.
        path.write_text(line("V", "10") + "garbage\n")
        assert not await src.refresh()
        assert src.current().status(0x10).status is CertStatus.REVOKED
        assert src.last_error
        assert not await src.refresh()  # the same broken file is not re-parsed every check
        # Forced (SIGHUP) with the same content re-reads it.
        path.write_text(line("R", "10", "250102030405Z,superseded") + line("V", "11"))
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert await src.refresh(force=True)
        assert src.current().status(0x11).status is CertStatus.GOOD
        # Deleted file: keep the data.
        path.unlink()
        assert not await src.refresh()
        assert src.current().status(0x11).status is CertStatus.GOOD

    asyncio.run(go())
    assert changes == ["ca", "ca"]


def test_watch_picks_up_changes(tmp_path: Path) -> None:
    path = tmp_path / "index.txt"
    path.write_text(line("V", "10"))
    src = IndexTxtSource("ca", path, H, check_interval=0.05)
    src.load_now()

    async def go() -> None:
        task = asyncio.create_task(src.watch())
        path.write_text(line("R", "10", "250102030405Z") + "\n")
        for _ in range(100):
            await asyncio.sleep(0.02)
            if src.current().status(0x10).status is CertStatus.REVOKED:
                break
        task.cancel()
        assert src.current().status(0x10).status is CertStatus.REVOKED

    asyncio.run(go())


@pytest.mark.parametrize("odd", ["\x85", "\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"])
def test_only_newline_ends_a_line(odd: str) -> None:
    text = ("\t".join(["V", "301231235959Z", "", "10", "unknown", f"/CN=odd{odd}name"]) + "\r\n"
            + line("R", "11", "250102030405Z,keyCompromise"))
    snap = parse_index(text, H)
    assert snap.lines == 2
    assert snap.status(0x10).status is CertStatus.GOOD and snap.status(0x11).status is CertStatus.REVOKED


def test_latin1_subject_with_0x85(tmp_path: Path) -> None:
    path = tmp_path / "index.txt"
    path.write_bytes(b"V\t301231235959Z\t\t10\tunknown\t/CN=caf\xe9\x85\n" + line("V", "11").encode())
    src = IndexTxtSource("ca", path, H)
    src.load_now()
    assert src.current().status(0x11).status is CertStatus.GOOD


# -- a file cut short never replaces good data (issue 6.2) ------------------------------------------

def many(n: int, start: int = 0x1000) -> str:
    return "".join(line("R" if i % 10 == 0 else "V", f"{start + i:04X}", "250102030405Z,keyCompromise"
                        if i % 10 == 0 else "") for i in range(n))


FULL = line("V", "10") + line("R", "11", "250102030405Z,keyCompromise") + line("V", "12")


@pytest.mark.parametrize("text,where", [
    # cut in the serial of a revoked line: 4 fields, the partial 'R' line must not become an entry
    (FULL + "R\t301231235959Z\t250102030405Z\t1", ":4:"),
    (FULL + "R\t301231235959Z\t250102030405Z\t13\n", ":4:"),  # 4 fields, with its newline
    (FULL + "R\t301231235959Z\t250102030405Z\t13\tunknown\n", ":4:"),  # 5 fields
    (FULL + "V\t301231235959Z\t\t13\tunknown\t/CN=x\textra\n", ":4:"),  # 7 fields
    (FULL + "R\t301231235959Z\t250102030405Z\t13\tunknown\t/CN=le", ":4:"),  # 6 fields, no newline
    (FULL[:-1], ":3:"),  # the whole last line is there, its newline is not
    (FULL + "\r", ":4:"),
])
def test_cut_short_file_is_refused_naming_the_line(text: str, where: str) -> None:
    with pytest.raises(StatusDataError) as e:
        parse_index(text, H, "/x/index.txt")
    assert f"/x/index.txt{where}" in str(e.value)


@pytest.mark.parametrize("text", ["", "\n", "\n\n  \n"])
def test_empty_file_is_refused(text: str) -> None:
    with pytest.raises(StatusDataError, match="no entries"):
        parse_index(text, H, "/x/index.txt")


def test_empty_file_refused_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "index.txt"
    path.write_text("")
    with pytest.raises(StatusDataError, match=f"{path}: has no entries"):
        IndexTxtSource("ca", path, H).load_now()


def test_truncated_and_empty_replacements_keep_the_last_good_data(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "index.txt"
    good = many(50)
    path.write_text(good)
    src = IndexTxtSource("ca", path, H)
    src.load_now()
    never_issued, revoked = 0x1000 + 50, 0x1000 + 40
    cut = good[:good.index(f"\t{never_issued - 10:04X}\t") + 3]  # cut inside a serial: a partial line
    bad = {
        "cut mid-line": cut,
        "cut with a partial R line": good + "R\t301231235959Z\t250102030405Z\t" + f"{never_issued:04X}"[:3],
        "empty": "",
        "cut at a line boundary, most lines lost": "".join(good.splitlines(keepends=True)[:5]),
    }

    async def go() -> None:
        for what, text in bad.items():
            tmp = tmp_path / "new"
            tmp.write_text(text)
            tmp.rename(path)  # atomic replacement, as a CA publishing its database does
            caplog.clear()
            assert not await src.refresh(), what
            snap = src.current()
            assert snap.status(never_issued).status is CertStatus.UNKNOWN, what
            assert snap.status(revoked).status is CertStatus.REVOKED, what
            assert len(snap.entries) == 50, what
            errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
            assert len(errors) == 1 and "FAILED, keeping the last good data" in errors[0], what
        # A good replacement is taken.
        path.write_text(good + line("R", f"{never_issued:04X}", "250102030405Z"))
        assert await src.refresh()
        assert src.current().status(never_issued).status is CertStatus.REVOKED

    with caplog.at_level("INFO", logger="frontend.status"):
        asyncio.run(go())


@pytest.mark.parametrize("max_shrink,kept,accepted", [
    (0.1, 90, True),  # lost exactly 10 %: allowed
    (0.1, 89, False),  # lost 11 %
    (0.0, 99, False),  # "0%": no serial may go
    (0.0, 100, True),
    (0.5, 50, True),
    (1.0, 1, True),  # "100%": the check is off (an empty file is still refused)
])
def test_shrink_limit(tmp_path: Path, max_shrink: float, kept: int, accepted: bool,
                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "index.txt"
    path.write_text(many(100))
    src = IndexTxtSource("ca", path, H, max_shrink=max_shrink)
    src.load_now()
    path.write_text(many(kept))

    async def go() -> bool:
        return await src.refresh()

    with caplog.at_level("ERROR", logger="frontend.status"):
        assert asyncio.run(go()) is accepted
    assert len(src.current().entries) == (kept if accepted else 100)
    if not accepted:
        (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
        text = record.getMessage()
        assert f"has {kept} serials where the loaded data has 100" in text
        assert "status.max_shrink" in text and "restart the frontend" in text


def test_shrink_is_not_checked_at_start_up(tmp_path: Path) -> None:
    """Start-up has nothing to compare with: after a deliberate prune, a restart takes the file."""
    path = tmp_path / "index.txt"
    path.write_text(many(3))
    src = IndexTxtSource("ca", path, H, max_shrink=0.0)
    src.load_now()
    assert len(src.current().entries) == 3


class _WrittenWhileRead(IndexTxtSource):
    """Appends to its file while parsing it, the first ``times`` times: a writer caught half-way."""

    def __init__(self, *args: object, times: int = 1, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.times = times
        self.parses = 0

    def parse(self):  # type: ignore[no-untyped-def]
        snap = super().parse()
        self.parses += 1
        if self.parses <= self.times:
            with open(self.path, "a") as f:
                f.write(line("V", f"{0x7000 + self.parses:04X}"))
        return snap


def test_file_changing_while_read_is_not_installed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "index.txt"
    path.write_text(line("V", "10"))
    src = _WrittenWhileRead("ca", path, H, times=0)
    src.load_now()
    path.write_text(line("V", "10") + line("R", "11", "250102030405Z"))
    src.times = src.parses + 1  # the next parse sees the file change under it

    async def go() -> None:
        with caplog.at_level("WARNING", logger="frontend.status"):
            assert not await src.refresh()
        assert src.current().status(0x11).status is CertStatus.UNKNOWN  # what was read is not used
        assert any("changed while being read" in r.getMessage() for r in caplog.records)
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
        # The next check reads it again (nothing was remembered as failed) and takes it.
        assert await src.refresh()
        snap = src.current()
        assert snap.status(0x11).status is CertStatus.REVOKED
        assert snap.status(0x7000 + src.parses - 1).status is CertStatus.GOOD

    asyncio.run(go())


def test_file_changing_while_read_at_start_up_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "index.txt"
    path.write_text(line("V", "10"))
    src = _WrittenWhileRead("ca", path, H, times=2)
    src.load_now(pause=0)
    assert src.parses == 3
    assert src.current().status(0x7002).status is CertStatus.GOOD
    always = _WrittenWhileRead("ca", path, H, times=100)
    with pytest.raises(StatusDataError, match="changed while being read"):
        always.load_now(attempts=3, pause=0)


# -- the validity window and the CA/Browser Forum Baseline Requirements (issue 6.5) ------------------

@pytest.mark.parametrize("validity,warned", [
    (timedelta(hours=1), True),
    (timedelta(hours=8) - timedelta(seconds=2), True),
    (timedelta(hours=8) - timedelta(seconds=1), False),  # counted inclusively: exactly 8 h
    (timedelta(hours=24), False),
    (timedelta(days=10) - timedelta(seconds=1), False),
    (timedelta(days=10), True),  # 10 d + 1 s, counted inclusively
    (timedelta(days=30), True),
])
def test_start_up_warns_when_the_window_is_outside_the_brs(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                          validity: timedelta, warned: bool) -> None:
    path = tmp_path / "index.txt"
    path.write_text(FULL)
    src = IndexTxtSource("ca-x", path, validity)
    with caplog.at_level("WARNING", logger="frontend.status"):
        src.load_now()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if warned:
        (text,) = warnings
        assert text.startswith("ca-x: answers are valid for ") and "(status.validity)" in text
        assert "outside the 8h..10d" in text and "Baseline Requirements" in text
    else:
        assert warnings == []

    async def go() -> None:
        path.write_text(FULL + line("V", "13"))
        assert await src.refresh()

    caplog.clear()
    with caplog.at_level("WARNING", logger="frontend.status"):
        asyncio.run(go())
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []  # said once, at start-up


def test_warning_names_the_window() -> None:
    from frontend.status.base import format_duration

    assert format_duration(timedelta(hours=1)) == "1h"
    assert format_duration(timedelta(days=10)) == "10d"
    assert format_duration(timedelta(days=1, hours=2, minutes=3, seconds=4)) == "1d 2h 3m 4s"


class _CutWhileRead(IndexTxtSource):
    """Reads a half-written file while its writer finishes it: the parse fails, the file has changed."""

    whole: str | None = None

    def parse(self):  # type: ignore[no-untyped-def]
        try:
            return super().parse()
        finally:
            if self.whole is not None:
                self.path.write_text(self.whole)
                self.whole = None


def test_failed_parse_of_a_file_changing_while_read_is_retried_not_failed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "index.txt"
    path.write_text(FULL)
    whole = FULL + line("R", "13", "250102030405Z")
    src = _CutWhileRead("ca", path, H)
    src.load_now()
    path.write_text(whole[:-5])  # the writer is half-way
    src.whole = whole

    async def go() -> None:
        with caplog.at_level("WARNING", logger="frontend.status"):
            assert not await src.refresh()
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
        assert any("changed while being read" in r.getMessage() for r in caplog.records)
        assert await src.refresh()  # not remembered as a failed file: read again, and whole now
        assert src.current().status(0x13).status is CertStatus.REVOKED

    asyncio.run(go())
