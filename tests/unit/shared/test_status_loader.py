"""shared.status.loader: big status files read in a loader process; its failures are failed reloads
(the last good data kept, tried again at the next check), never a hang; at start-up the data is then
read in this process."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from shared.ocsp.types import CertStatus
from shared.status import loader
from shared.status.base import StatusDataError, changed_serials
from shared.status.crl import CrlSource
from shared.status.index_txt import IndexTxtSource
from shared.status.table import SerialSet, StatusTable
from tests.unit.frontend.frontend_pki import NOW, TestCA
from tests.unit.shared import status_gen as gen

H = timedelta(hours=1)
CRASH = [sys.executable, "-c", "import os, sys; sys.stdin.buffer.read(); print('boom', file=sys.stderr); os._exit(3)"]
HANG = [sys.executable, "-c", "import time; time.sleep(600)"]
GARBAGE = [sys.executable, "-c", "import sys; sys.stdin.buffer.read(); sys.stdout.write('garbage')"]


def index_source(tmp_path: Path, text: str, **attrs: object) -> IndexTxtSource:
    path = tmp_path / "index.txt"
    path.write_text(text)
    src = IndexTxtSource("ca", path, H, check_interval=60)
    src.loader_min_bytes = 0  # always the loader process
    for k, v in attrs.items():
        setattr(src, k, v)
    return src


FIRST = gen.index_line("V", "10") + gen.index_line("R", "11", "250102030405Z,keyCompromise")
SECOND = FIRST + gen.index_line("R", "12", "250102030405Z")


def test_loader_loads_and_names_the_changes(tmp_path: Path) -> None:
    src = index_source(tmp_path, FIRST)
    src.load_now()
    snap = src.current()
    assert isinstance(snap.entries, StatusTable)  # type: ignore[attr-defined]
    assert snap.status(0x11).status is CertStatus.REVOKED and snap.status(0x12).status is CertStatus.UNKNOWN
    (tmp_path / "index.txt").write_text(SECOND.replace("R\t301231235959Z\t250102030405Z,keyCompromise\t11",
                                                       "V\t301231235959Z\t\t11"))
    assert asyncio.run(src.refresh())
    assert src.last_changes == {0x11, 0x12} == changed_serials(snap, src.current())


def test_a_verdict_from_the_loader_is_the_same_error(tmp_path: Path) -> None:
    src = index_source(tmp_path, FIRST + "garbage\n")
    with pytest.raises(StatusDataError, match=r"index\.txt:3: expected 6 tab-separated fields"):
        src.load_now()


@pytest.mark.parametrize("command", [CRASH, GARBAGE, ["/nonexistent/python"]])
def test_a_failed_loader_at_start_up_reads_here(tmp_path: Path, command: list[str],
                                                caplog: pytest.LogCaptureFixture) -> None:
    src = index_source(tmp_path, FIRST, loader_command=command)
    with caplog.at_level("WARNING", logger="ocsp.status"):
        src.load_now()
    assert src.current().status(0x11).status is CertStatus.REVOKED
    assert any("reading the status data in this process" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("command,message", [(CRASH, "exited with status 3 without a result .*: boom"),
                                             (GARBAGE, "exited with status 0 without a result"),
                                             (HANG, "took more than 0.5 s and was killed")])
def test_a_failed_loader_is_a_failed_reload(tmp_path: Path, command: list[str], message: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    src = index_source(tmp_path, FIRST)
    src.load_now()
    (tmp_path / "index.txt").write_text(SECOND)
    # Only the hanging loader meets the timeout; the others get time to start on a busy machine.
    src.loader_command, src.loader_timeout = command, 0.5 if command is HANG else 30.0

    async def go() -> None:
        start = time.monotonic()
        assert not await src.refresh()
        assert time.monotonic() - start < 30  # never a hang
        assert src.current().status(0x12).status is CertStatus.UNKNOWN  # the last good data
        assert src.last_error is not None
        # Not a verdict on the file: tried again at the next check, and taken once the loader works.
        assert not await src.refresh()
        src.loader_command, src.loader_timeout = None, 120.0
        assert await src.refresh(), src.last_error
        assert src.current().status(0x12).status is CertStatus.REVOKED

    with caplog.at_level("ERROR", logger="ocsp.status"):
        asyncio.run(go())
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors and "FAILED, keeping the last good data" in errors[0]
    assert re.search(message, errors[0]), errors[0]


def test_a_crl_through_the_loader(tmp_path: Path) -> None:
    ca = TestCA("Loader CA")
    path = tmp_path / "crl.der"
    entries = gen.random_entries(300, 5)
    path.write_bytes(gen.crl_der(ca.key, ca.name.public_bytes(), entries, this_update=NOW - H, next_update=NOW + H))
    issued = tmp_path / "issued.txt"
    issued.write_text("".join(f"{s:X}\n" for s, *_ in entries[::2] if s >= 0))
    src = CrlSource("ca", path, ca.der, unissued="revoked", issued_serials=issued)
    local = CrlSource("ca", path, ca.der, unissued="revoked", issued_serials=issued)
    src.loader_min_bytes, local.loader_min_bytes = 0, None
    src.load_now()
    local.load_now()
    a, b = src.current(), local.current()
    for s in [*a.serials(), -7, 1 << 170]:
        assert a.status(s) == b.status(s)
    path.write_bytes(gen.crl_der(ca.key, ca.name.public_bytes(), entries[:200], this_update=NOW, next_update=NOW + H))

    async def go() -> None:
        assert await src.refresh() and await local.refresh()

    asyncio.run(go())
    assert src.last_changes == local.last_changes and src.last_changes


def test_changes_from_the_wire() -> None:
    header, keys = loader.changes_to_wire(list(range(-5, 200_000)))
    big = loader.changes_from_wire({"changes": header}, [keys])
    assert isinstance(big, SerialSet) and len(big) == 200_005 and -5 in big and 200_000 not in big
    header, keys = loader.changes_to_wire([3, 9])
    assert loader.changes_from_wire({"changes": header}, [keys]) == {3, 9}
    assert loader.changes_from_wire({}, []) is None


def test_errors_cross_as_they_were(tmp_path: Path) -> None:
    for e in (StatusDataError("bad file"), ValueError("Unsupported reason code: 7"), KeyError("k")):
        header = loader.error_header(e)
        again = loader._rebuild(header["error"]["type"], header["error"]["message"], header["error"]["args"])
        assert type(again) is type(e) and str(again) == str(e)
    odd = loader._rebuild("DuplicateExtension", "twice")
    assert type(odd).__name__ == "DuplicateExtension" and str(odd) == "twice"
