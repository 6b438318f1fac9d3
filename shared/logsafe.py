"""Log lines that outside input cannot forge.

Names and values from outside (client-certificate subjects, peer addresses, CA names in Admin calls,
request fields) reach log messages. A newline in a certificate's CN would start what reads as a line
of its own ("...\nINFO: rotation of CA 'x' done"), and an escape sequence could rewrite the terminal.
``install()`` makes every record's message escape such characters, whatever logger or module wrote
it, so no call site can forget: each message stays one line. Tracebacks (exc_info) are added by the
formatter after the message and keep their lines.
"""

from __future__ import annotations

import logging

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_installed = False


def printable(text: str) -> str:
    """``text`` with every non-printable character (controls, line and paragraph separators, ...) as an
    escape (``\\n``, ``\\x1b``, ``\\u2028``); printable text, spaces included, unchanged."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                       else f"\\U{code:08x}")
    return "".join(out)


class _OneLineRecord(logging.LogRecord):
    def getMessage(self) -> str:
        return printable(super().getMessage())


def install() -> None:
    """Make every log record created from now on escape its message (idempotent)."""
    global _installed
    if _installed:
        return
    base = logging.getLogRecordFactory()
    if base is logging.LogRecord:
        logging.setLogRecordFactory(_OneLineRecord)
    else:  # someone else's factory: wrap it
        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = base(*args, **kwargs)
            plain = record.getMessage
            record.getMessage = lambda: printable(plain())  # type: ignore[method-assign]
            return record

        logging.setLogRecordFactory(factory)
    _installed = True
