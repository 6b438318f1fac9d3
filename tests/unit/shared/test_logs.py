"""shared.logs: the timestamp, the text and JSON lines, hostile input, the [log] format key."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared import logs, logsafe
from shared.config import ConfigError, Section

HOSTILE = ["line\nocsp-signer: INFO: forged", 'quote " and \\ backslash', "esc \x1b[2J", "nul \x00",
           "sep \u2028 \u2029", "lone surrogate \udc80", "} { ] [", "tab\tcr\r", "ünïcödé ✓"]
TEXT_HEAD = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [\w.-]+: (DEBUG|INFO|WARNING|ERROR|CRITICAL): ")


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO, logs.LogFormatter]]:
    """A logger of its own writing through a LogFormatter to a buffer (records made as logsafe makes them)."""
    logsafe.install()
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    formatter = logs.LogFormatter("ocsp-test")
    handler.setFormatter(formatter)
    log = logging.getLogger("test.logs")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    yield log, buf, formatter
    log.removeHandler(handler)


def test_iso_time_is_utc_with_milliseconds() -> None:
    t = datetime(2026, 12, 2, 17, 30, 1, 123999, tzinfo=UTC).timestamp()
    assert logs.iso_time(t) == "2026-12-02T17:30:01.123Z"  # truncated, not rounded
    assert logs.iso_time(t + 0.877) == "2026-12-02T17:30:02.000Z"  # the next second, its own prefix
    assert logs.iso_time(t) == "2026-12-02T17:30:01.123Z"  # and back: the cache follows
    assert logs.iso_time(0.0) == "1970-01-01T00:00:00.000Z"
    assert logs.iso_time(datetime(2027, 1, 1, tzinfo=UTC).timestamp() - 0.001) == "2026-12-31T23:59:59.999Z"


def test_text_line_names_time_program_level_worker_and_logger(logger) -> None:  # type: ignore[no-untyped-def]
    log, buf, f = logger
    log.info("hello %s", "there")
    f.worker = 3
    log.warning("from a worker")
    f.worker = logs.SUPERVISOR
    log.error("from the supervisor")
    f.worker, f.prog = None, "test.logs"
    log.info("the program's own logger is not named twice")
    lines = buf.getvalue().splitlines()
    assert all(TEXT_HEAD.match(line) for line in lines), lines
    assert lines[0].endswith(" ocsp-test: INFO: test.logs: hello there")
    assert lines[1].endswith(" ocsp-test: WARNING: worker 3: test.logs: from a worker")
    assert lines[2].endswith(" ocsp-test: ERROR: supervisor: test.logs: from the supervisor")
    assert lines[3].endswith(" test.logs: INFO: the program's own logger is not named twice")


@pytest.mark.parametrize("hostile", HOSTILE)
def test_text_lines_cannot_be_forged(logger, hostile: str) -> None:  # type: ignore[no-untyped-def]
    log, buf, _ = logger
    log.warning("client %s refused", hostile)
    (line,) = buf.getvalue().splitlines()  # one line whatever the input (splitlines splits at \u2028 too)
    assert TEXT_HEAD.match(line) and line.isprintable()


def test_a_traceback_keeps_each_line_attributable(logger) -> None:  # type: ignore[no-untyped-def]
    log, buf, f = logger
    f.worker = 2
    try:
        raise ValueError("bad\nocsp-test: INFO: forged")
    except ValueError:
        log.exception("it failed")
    lines = buf.getvalue().splitlines()
    assert len(lines) > 3 and all(TEXT_HEAD.match(line) and " worker 2: " in line for line in lines), lines
    assert lines[1].endswith("| Traceback (most recent call last):")
    assert not any(line.startswith("ocsp-test: INFO: forged") for line in lines)
    # The exception message's second line is a continuation like the rest.
    assert lines[-2].endswith("| ValueError: bad") and lines[-1].endswith(": worker 2: | ocsp-test: INFO: forged")


@pytest.mark.parametrize("hostile", HOSTILE)
def test_json_is_one_valid_object_for_hostile_input(logger, hostile: str) -> None:  # type: ignore[no-untyped-def]
    log, buf, f = logger
    f.json, f.worker = True, 1
    try:
        raise RuntimeError(hostile)
    except RuntimeError:
        log.exception("refused %s", hostile, extra={"client": hostile, "serials": [hostile, 7], "n": 3,
                                                   "nested": {hostile: hostile}, "obj": Path(hostile)})
    text = buf.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1 and text.isascii()
    obj = json.loads(text)
    assert obj["level"] == "ERROR" and obj["logger"] == "test.logs" and obj["prog"] == "ocsp-test"
    assert obj["role"] == "worker" and obj["worker"] == 1 and isinstance(obj["pid"], int)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", obj["ts"])
    assert obj["msg"] == f"refused {logsafe.printable(hostile)}"
    assert obj["client"] == logsafe.printable(hostile) and obj["serials"] == [logsafe.printable(hostile), 7]
    assert obj["n"] == 3 and obj["obj"] == logsafe.printable(str(Path(hostile)))
    assert "RuntimeError" in obj["exc"] and "Traceback" in obj["exc"]
    # Strict parsers too: no lone surrogates even escaped, since strings are made printable first.
    assert "\\ud" not in text.lower() or "\\\\udc80" in text


def test_json_roles(logger) -> None:  # type: ignore[no-untyped-def]
    log, buf, f = logger
    f.json = True
    log.info("single")
    f.worker = logs.SUPERVISOR
    log.info("supervisor")
    objs = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [(o["role"], o["worker"]) for o in objs] == [("main", None), ("supervisor", None)]


def test_setup_changes_the_one_handler() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    buf = io.StringIO()
    try:
        logs.setup("ocsp-a", "WARNING", stream=buf)
        logs.setup("ocsp-b", "DEBUG", fmt="json", worker=4, stream=buf)
        added = [h for h in root.handlers if h not in before]
        assert len(added) == 1 and root.level == logging.DEBUG
        logging.getLogger("x").debug("seen")
        obj = json.loads(buf.getvalue().splitlines()[-1])
        assert (obj["prog"], obj["worker"], obj["msg"]) == ("ocsp-b", 4, "seen")
        logs.set_format("text")
        logs.set_worker(None)
        logging.getLogger("x").info("plain")
        assert buf.getvalue().splitlines()[-1].endswith(" ocsp-b: INFO: x: plain")
    finally:
        logs.setup("ocsp-b", logging.getLevelName(level) if level else "WARNING", stream=sys.stderr)
        for h in [h for h in root.handlers if h not in before]:
            root.removeHandler(h)
        logs._handler = logs._formatter = None
        root.setLevel(level)


def test_read_format_names_file_and_key(tmp_path: Path) -> None:
    sec = Section(tmp_path / "x.toml", {"log": {"format": "xml"}})
    with pytest.raises(ConfigError) as e:
        logs.read_format(sec.section("log"))
    assert e.value.file == str(tmp_path / "x.toml") and e.value.key == "log.format" and "'json'" in e.value.message
    assert logs.read_format(Section(tmp_path / "x.toml", {})) == "text"
