"""shared.logsafe: a message carrying outside text stays one log line."""

from __future__ import annotations

import io
import logging

import pytest

from shared import logsafe


@pytest.mark.parametrize("text,shown", [
    ("cn:ocsp-frontend", "cn:ocsp-frontend"),
    ("a b\u00e9", "a b\u00e9"),  # printable text and spaces unchanged
    ("x\nocsp-signer: INFO: forged", "x\\nocsp-signer: INFO: forged"),
    ("x\r\nY", "x\\r\\nY"),
    ("tab\there", "tab\\there"),
    ("esc\x1b[2Jgone", "esc\\x1b[2Jgone"),
    ("nul\x00", "nul\\x00"),
    ("ls\u2028ps\u2029nel\x85", "ls\\u2028ps\\u2029nel\\x85"),
])
def test_printable(text: str, shown: str) -> None:
    assert logsafe.printable(text) == shown


def test_installed_records_stay_one_line() -> None:
    logsafe.install()
    logsafe.install()  # idempotent
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger = logging.getLogger("test.logsafe")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("refused %s from %s", "cn:evil\nINFO: client cn:admin connected", "unix:")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed for %s", "a\nb")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "WARNING: refused cn:evil\\nINFO: client cn:admin connected from unix:"
    assert lines[1] == "ERROR: failed for a\\nb"
    assert lines[2] == "Traceback (most recent call last):"  # tracebacks keep their lines
    assert not any(line.startswith("INFO") for line in lines)
