"""The one log format of every process: ``setup`` at start, ``set_worker`` in a worker, ``set_format``
once the config is read.

Every line names its time (ISO 8601, UTC, milliseconds), the program, the level and, under a
supervisor, the process (``supervisor`` or ``worker N``), then the logger (unless it is the program's
own) and the message:

    2026-12-02T17:30:01.123Z ocsp-frontend: INFO: worker 2: frontend: listening on http://0.0.0.0:8080
    2026-12-02T17:30:01.125Z ocsp-signer: INFO: supervisor: serving on 127.0.0.1:50051: 2 workers ...

``[log] format = "json"``: one object per line with ``ts``, ``level``, ``prog``, ``pid``, ``role``
(``main`` for a single process, ``supervisor``, ``worker``), ``worker`` (its number, else null),
``logger``, ``msg``, then the record's structured fields (``extra=``), and ``exc`` with a traceback.

Messages are one line whatever the input (shared.logsafe, installed by ``setup``); a traceback's lines
in text each carry the line's head and ``|``, so they stay attributable in a log several workers
share, and none can pass for a line of its own. Workers inherit the supervisor's stderr: one log.
IO-free beyond the handler on stderr that ``setup`` installs (the access log's file is the
frontend's, frontend.access_log).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

from shared import logsafe
from shared.config import Section

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
SUPERVISOR = "supervisor"  # set_worker's value for the supervisor of workers

# Attributes every LogRecord has: anything else on a record came from ``extra=`` (a structured field).
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime",
                                                                                  "taskName"}
_second: tuple[int, str] = (-1, "")
_milli: tuple[int, str] = (-1, "")


def iso_time(t: float) -> str:
    """Epoch seconds -> ``2026-12-02T17:30:01.123Z`` (UTC, milliseconds truncated). The part up to
    the second is formatted once per second, the whole once per millisecond (the access log asks for
    it at every request)."""
    ms_total = int(t * 1000)
    cached = _milli
    if cached[0] == ms_total:
        return cached[1]
    sec, ms = divmod(ms_total, 1000)
    second = _second
    if second[0] != sec:
        second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
        globals()["_second"] = second
    text = f"{second[1]}.{ms:03d}Z"
    globals()["_milli"] = (ms_total, text)
    return text


def who_text(worker: int | str | None) -> str:
    """The process part of a text line: ``worker N: ``, ``supervisor: `` or nothing."""
    if worker is None:
        return ""
    return "supervisor: " if worker == SUPERVISOR else f"worker {worker}: "


def _role(worker: int | str | None) -> tuple[str, int | None]:
    if worker is None:
        return "main", None
    return ("supervisor", None) if worker == SUPERVISOR else ("worker", int(worker))


def _jsonable(value: Any) -> Any:
    if isinstance(value, str):
        return logsafe.printable(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {logsafe.printable(str(k)): _jsonable(v) for k, v in value.items()}
    return logsafe.printable(str(value))


def json_line(fields: dict[str, Any]) -> str:
    """One JSON object on one line, ASCII only: valid JSON whatever the strings hold."""
    return json.dumps(fields, ensure_ascii=True, separators=(",", ":"), default=str)


class LogFormatter(logging.Formatter):
    """Text or JSON lines (see the module's doc); ``prog``, ``worker`` and ``json`` may change later."""

    def __init__(self, prog: str, *, fmt: str = "text", worker: int | str | None = None) -> None:
        super().__init__()
        self.prog = prog
        self.json = fmt == "json"
        self.pid = os.getpid()
        self.worker = worker

    @property
    def worker(self) -> int | str | None:
        """None: a single process; SUPERVISOR; else the worker's number."""
        return self._worker

    @worker.setter
    def worker(self, value: int | str | None) -> None:
        self._worker = value
        self.role, self.number = _role(value)

    def head(self, created: float, level: str) -> str:
        """What a text line starts with, up to the logger's name."""
        return f"{iso_time(created)} {self.prog}: {level}: {who_text(self.worker)}"

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        exc = ""
        if record.exc_info:
            exc = self.formatException(record.exc_info)
        elif record.exc_text:
            exc = record.exc_text
        if record.stack_info:
            exc = f"{exc}\n{self.formatStack(record.stack_info)}" if exc else self.formatStack(record.stack_info)
        if self.json:
            return self._json(record, msg, exc)
        head = self.head(record.created, record.levelname)
        name = record.name
        line = f"{head}{msg}" if name in (self.prog, "root") else f"{head}{name}: {msg}"
        if exc:
            line += "".join(f"\n{head}| {logsafe.printable(x)}" for x in exc.splitlines())
        return line

    def _json(self, record: logging.LogRecord, msg: str, exc: str) -> str:
        fields: dict[str, Any] = {"ts": iso_time(record.created), "level": record.levelname, "prog": self.prog,
                                  "pid": self.pid, "role": self.role, "worker": self.number,
                                  "logger": record.name, "msg": msg}
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in fields:
                fields[key] = _jsonable(value)
        if exc:
            fields["exc"] = exc
        return json_line(fields)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (the signer's handshake_log replaces
    it, a test captures it), as logging's own last-resort handler does."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always sys.stderr


_handler: logging.Handler | None = None
_formatter: LogFormatter | None = None


def setup(prog: str, level: str = "INFO", *, fmt: str = "text", worker: int | str | None = None,
          stream: TextIO | None = None) -> LogFormatter:
    """Every record of this process, of ``level`` and above, as ``prog``'s lines to stderr (``stream``:
    elsewhere). Called again (a command's own level, a test), it changes the one handler and formatter."""
    global _handler
    logsafe.install()
    f = formatter()
    f.prog, f.json, f.worker = prog, fmt == "json", worker
    root = logging.getLogger()
    handler: logging.Handler = _Stderr() if stream is None else logging.StreamHandler(stream)
    if _handler is not None:
        if stream is None and isinstance(_handler, _Stderr):
            handler = _handler
        else:
            root.removeHandler(_handler)
    if handler is not _handler:
        handler.setFormatter(f)
        root.addHandler(handler)
        _handler = handler
    root.setLevel(level)
    return f


def formatter() -> LogFormatter:
    """The process's formatter (made here when ``setup`` has not run: the access log's lines follow it)."""
    global _formatter
    if _formatter is None:
        _formatter = LogFormatter(os.path.basename(sys.argv[0]) or "python")
    return _formatter


def set_worker(number: int | str | None) -> None:
    """This process is worker ``number`` (SUPERVISOR: the supervisor; None: neither) from now on."""
    f = formatter()
    f.worker = number
    f.pid = os.getpid()


def set_format(fmt: str) -> None:
    """``[log] format``: "text" or "json"."""
    formatter().json = fmt == "json"


def read_format(sec: Section) -> str:
    """``[log] format`` of either half's config: "text" (the default) or "json"."""
    return str(sec.choice("format", FORMATS, "text"))
