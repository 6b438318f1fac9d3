"""shared.fdlimit: the soft open-files limit raised to the hard one, and what is logged about it."""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator

import pytest

from shared.fdlimit import OpenFilesLimit, log_open_files_limit, raise_open_files_limit


@pytest.fixture
def restored() -> Iterator[tuple[int, int]]:
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield limits
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_the_soft_limit_is_raised_to_the_hard_one(restored: tuple[int, int]) -> None:
    _, hard = restored
    if hard != resource.RLIM_INFINITY and hard < 300:
        pytest.skip("hard limit too low to lower the soft one below it")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    got = raise_open_files_limit()
    assert got.before == 256 and got.soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 256
    assert got.hard == hard and got.error is None


@pytest.mark.parametrize("limit,lines", [
    (OpenFilesLimit(1024, 65536, 65536), [(logging.INFO, "open files limit: 1024 -> 65536 (hard limit 65536)")]),
    (OpenFilesLimit(128, 128, 128), [
        (logging.INFO, "open files limit: 128 (hard limit 128)"),
        (logging.WARNING, ("open files limit: the hard limit is 128, below 4096: every connection is a file "
                          "descriptor, so this process cannot hold many; raise it (LimitNOFILE=65536 in the "
                          "systemd unit, or the limits of whatever starts it)"))]),
    (OpenFilesLimit(1024, 1024, 8192, "not permitted"), [
        (logging.WARNING, "open files limit: cannot raise the soft limit 1024 to the hard limit 8192: not permitted"),
        (logging.INFO, "open files limit: 1024 (hard limit 8192)")]),
])
def test_what_is_logged(caplog: pytest.LogCaptureFixture, limit: OpenFilesLimit, lines: list[tuple[int, str]]) -> None:
    with caplog.at_level(logging.INFO, logger="test.fdlimit"):
        log_open_files_limit(logging.getLogger("test.fdlimit"), limit)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == lines
