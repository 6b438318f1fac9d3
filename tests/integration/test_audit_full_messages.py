"""A real signer whose audit directory is a tiny full file system (tmpfs in a mount namespace of its
own), flooded through a real frontend: every signature is refused (tryLater), and the signer's log
holds one refusal line per 5 s with the count, not one per request."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from cryptography.x509 import ocsp

from tests.integration.conftest import Demo, Process, wait_until
from tests.integration.private_stack import ask, frontend_process, short_dir
from tests.integration.test_signer_bounds import PrivateSigner, can_mount_tmpfs, processes, ready  # noqa: F401

pytestmark = pytest.mark.integration

FLOOD_SECONDS = 6.0  # more than the 5 s interval: the first line, then one count line per interval


def _fill(directory: Path) -> None:
    with open(directory / "filler", "wb", buffering=0) as f:
        for chunk in (65536, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass


def _refusal_counts(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"refused (\d+) signature\(s\)(?: in the last \d+ s)?: audit log not "
                                       r"writable: .*No space left on device \(ENOSPC\)", log)]


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs root and unshare to mount a small tmpfs")
def test_a_full_audit_disk_costs_one_line_per_interval(demo: Demo, tmp_path: Path,
                                                        processes: list[Process]) -> None:  # noqa: F811
    audit_dir = short_dir() / "audit"
    audit_dir.mkdir()
    mount = f"mount -t tmpfs -o size=1m tmpfs {audit_dir} && exec \"$0\" \"$@\""
    s = PrivateSigner(demo, tmp_path, audit='min_free = "0"\n',
                      wrap=["unshare", "--mount", "--propagation", "private", "sh", "-c", mount])
    s.conf.write_text(re.sub(r'^dir = ".*"$', f'dir = "{audit_dir}"', s.conf.read_text(), count=1, flags=re.MULTILINE))
    processes.append(s.process)
    s.process.start()
    inside = Path(f"/proc/{s.process.proc.pid}/root") / str(audit_dir).lstrip("/")  # type: ignore[union-attr]
    frontend, port = frontend_process(demo, tmp_path, s.address)
    processes.append(frontend)
    frontend.start()
    assert ask(demo, port).response_status == ocsp.OCSPResponseStatus.SUCCESSFUL

    _fill(inside)
    wait_until(lambda: ask(demo, port).response_status == ocsp.OCSPResponseStatus.TRY_LATER, 10,
               "a request to fail for want of space")
    refused = 1
    end = time.monotonic() + FLOOD_SECONDS
    while time.monotonic() < end:  # a client retrying as fast as it can
        assert ask(demo, port).response_status == ocsp.OCSPResponseStatus.TRY_LATER  # never unaudited
        refused += 1
    # The flood stopped: the count of its last interval still comes, within a deadline.
    wait_until(lambda: sum(_refusal_counts(s.process.log.read_text(errors="replace"))) >= refused, 15,
               "the refusal count to cover every refused request")
    counts = _refusal_counts(s.process.log.read_text(errors="replace"))
    assert refused > 50, refused
    assert 2 <= len(counts) <= 4, counts  # the first at once, then one per 5 s: not one per request
    assert counts[0] == 1 and max(counts) > 10, counts

    os.unlink(inside / "filler")
    wait_until(lambda: ask(demo, port).response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, 10,
               "signing to resume")
