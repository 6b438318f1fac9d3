"""The access log: one line per answered OCSP request (``[log] access``, ``access_file``).

Text (the head of every log line, shared.logs, then key=value fields):

    2026-12-02T17:30:01.123Z ocsp-frontend: INFO: worker 1: frontend.access: client=192.0.2.7 method=POST
    answer=successful ca=rsa-ca serial=1A2B cert=good sig=3f9c01d2aa-17 via=signed id=3f9c01d2aa-17 us=4210

JSON (``[log] format = "json"``): the same as an object with ``logger`` "frontend.access", ``msg``
"access", and the fields ``client``, ``method``, ``answer``, ``ca``, ``serials`` and ``cert`` (lists),
``sig``, ``via``, ``id``, ``us``.

``via``: how the answer was come by: ``cache`` (this process's cache), ``store`` (the fleet's shared
store), ``signed`` (signed for this request), ``nonce`` (signed for this request, which carried a nonce),
``joined`` (the signature another request for the same answer was waiting for), "-" for an error.
``us``: microseconds from the request's first byte parsed to its answer being ready.

``id`` names the request: for an answer signed for it, the request_id of its SignRequest, which the
signer writes into the audit record (for an error after a Sign was sent, that Sign's id: a refusal
the signer audited carries it too); otherwise a fresh id of the same series (frontend.request_ids).
``sig`` is the request_id of the signature the answer carries (for a cache hit, the one that made the
cached answer), so every answer a signer made here leads to its audit record; "-" when not known (an
answer from the shared store was signed by another frontend, an error carries no signature).

Cheap on the cache-hit path: the part of a hit's line that is the same for every hit of one cache
entry is made at its first hit and kept on the entry (``Entry.access``), a connection's client address
once per connection, and the line is one f-string appended to a buffer. The buffer is written when
FLUSH_INTERVAL has passed since its first line, or at MAX_LINES, in writes of at most PIPE_BUF bytes
cut at line ends, so the lines of several workers sharing a pipe (journald) never interleave.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from frontend.app import NONCE, SIGNED, Answer
from frontend.cache import Entry
from frontend.request_ids import RequestIds
from shared import logs
from shared.logsafe import printable
from shared.ocsp.types import CertId, CertStatus, ResponseStatus

FLUSH_INTERVAL = 0.1  # seconds a line may wait in the buffer
MAX_LINES = 256  # lines buffered before they are written at once
PIPE_BUF = 4096  # bytes one write(2) to a pipe puts there whole
FILE_MODE = 0o640
LOGGER = "frontend.access"
_SIGNED_HERE = (SIGNED, NONCE)  # answers signed for the request they answer: its id is the SignRequest's
# The access log's names of the OCSP response statuses (RFC 6960's).
ANSWERS = {ResponseStatus.SUCCESSFUL: "successful", ResponseStatus.MALFORMED_REQUEST: "malformedRequest",
           ResponseStatus.INTERNAL_ERROR: "internalError", ResponseStatus.TRY_LATER: "tryLater",
           ResponseStatus.SIG_REQUIRED: "sigRequired", ResponseStatus.UNAUTHORIZED: "unauthorized"}


def _serials(cert_ids: Sequence[CertId]) -> list[str]:
    return [format(c.serial_int, "X") for c in cert_ids]


def _statuses(cert_status: Sequence[CertStatus]) -> list[str]:
    return [s.value for s in cert_status]


class AccessLog:
    """Access lines to ``fd`` (the log's stderr), or to ``path`` (opened for appending, reopened by
    ``reopen``, for log rotation)."""

    def __init__(self, ids: RequestIds, *, path: Path | None = None, fd: int = 2) -> None:
        self.ids = ids
        self.path = path
        self._fd = fd if path is None else _open(path)
        f = logs.formatter()
        self.json = f.json
        if self.json:  # the fields every line starts with, but the time
            self._head = (f',"level":"INFO","prog":{json.dumps(f.prog)},"pid":{f.pid},"role":"{f.role}",'
                          f'"worker":{json.dumps(f.number)},"logger":"{LOGGER}","msg":"access",')
        else:
            self._head = f" {f.prog}: INFO: {logs.who_text(f.worker)}{LOGGER}: "
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self.written = 0  # lines written (tests)

    # -- what is logged -----------------------------------------------------------------------------------
    def client(self, peer: Any) -> str:
        """A connection's client address as its lines show it (made once per connection)."""
        host = peer[0] if isinstance(peer, tuple) and peer and isinstance(peer[0], str) else "-"
        return json.dumps(host) if self.json else printable(host) or "-"

    def hit(self, client: str, method: str, entry: Entry, now: float, us: int) -> None:
        """A cache hit answered from the HTTP layer directly (``now``: the wall clock's epoch seconds)."""
        fixed = entry.access or self._entry_fields(entry)
        lines = self._lines
        if self.json:
            lines.append(f'{{"ts":"{logs.iso_time(now)}"{self._head}"client":{client},"method":"{method}",'
                         f'"answer":"successful",{fixed},"via":"cache","id":"{self.ids.next()}","us":{us}}}\n')
        else:
            lines.append(f"{logs.iso_time(now)}{self._head}client={client} method={method} answer=successful "
                         f"{fixed} via=cache id={self.ids.next()} us={us}\n")
        if self._timer is None or len(lines) >= MAX_LINES:
            self._more()

    def _entry_fields(self, entry: Entry) -> str:
        key = entry.key
        entry.access = fixed = self._fields(key.ca, key.cert_ids, entry.cert_status, entry.signature_id)
        return fixed

    def _fields(self, ca: str, cert_ids: Sequence[CertId], cert_status: Sequence[CertStatus], sig: str) -> str:
        if self.json:
            return (f'"ca":{logs.json_line(printable(ca) or None)},"serials":{logs.json_line(_serials(cert_ids))},'
                    f'"cert":{logs.json_line(_statuses(cert_status))},"sig":{logs.json_line(sig or None)}')
        return (f"ca={printable(ca) or '-'} serial={','.join(_serials(cert_ids)) or '-'} "
                f"cert={','.join(_statuses(cert_status)) or '-'} sig={sig or '-'}")

    def answer(self, client: str, method: str, answer: Answer, us: int) -> None:
        """An answer of the OCSP pipeline (frontend.app.Answer): signed, joined, stored, cached, an error."""
        if answer.via in _SIGNED_HERE and answer.signature_id:
            rid = answer.signature_id
        else:  # an error after a Sign was sent: its SignRequest's id (a refusal is audited under it)
            rid = answer.request_id or self.ids.next()
        self._line(client, method, ANSWERS.get(answer.status, answer.status.name), answer.ca, answer.cert_ids,
                   answer.cert_status, answer.signature_id, answer.via, rid, us)

    def refused(self, client: str, method: str, status: ResponseStatus, us: int) -> None:
        """A request refused before it reached the pipeline (a GET path that is no OCSP request)."""
        self._line(client, method, ANSWERS.get(status, status.name), "", (), (), "", "", self.ids.next(), us)

    def _line(self, client: str, method: str, answer: str, ca: str, cert_ids: Sequence[CertId],
              cert_status: Sequence[CertStatus], sig: str, via: str, rid: str, us: int) -> None:
        fields = self._fields(ca, cert_ids, cert_status, sig)
        ts = logs.iso_time(time.time())
        if self.json:
            self._add(f'{{"ts":"{ts}"{self._head}"client":{client},"method":"{method}","answer":"{answer}",'
                      f'{fields},"via":{logs.json_line(via or None)},"id":"{rid}","us":{us}}}\n')
        else:
            self._add(f"{ts}{self._head}client={client} method={method} answer={answer} {fields} "
                      f"via={via or '-'} id={rid} us={us}\n")

    # -- writing ------------------------------------------------------------------------------------------
    def _add(self, line: str) -> None:
        lines = self._lines
        lines.append(line)
        if self._timer is None or len(lines) >= MAX_LINES:
            self._more()

    def _more(self) -> None:
        """A line was added: write the buffer when full, else make sure it is written soon."""
        if len(self._lines) >= MAX_LINES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._lines = self._lines, []
        if not lines:
            return
        self.written += len(lines)
        data = "".join(lines).encode("utf-8", "backslashreplace")
        start, end = 0, len(data)
        while end - start > PIPE_BUF:  # whole lines, at most PIPE_BUF bytes a write (a longer line alone)
            cut = data.rfind(b"\n", start, start + PIPE_BUF)
            if cut < 0:
                cut = data.find(b"\n", start + PIPE_BUF)
            self._write(data[start:cut + 1])
            start = cut + 1
        if start < end:
            self._write(data[start:])

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except InterruptedError:
                continue
            except OSError:  # a full disk or a closed stream: the lines are lost, the answers are not
                return
            view = view[n:]

    def reopen(self) -> None:
        """The file again (after log rotation moved it away: SIGHUP); nothing for stderr."""
        if self.path is None:
            return
        self.flush()
        try:
            fd = _open(self.path)
        except OSError:
            return  # keep writing where we were
        os.close(self._fd)
        self._fd = fd

    def close(self) -> None:
        self.flush()
        if self.path is not None:
            os.close(self._fd)
            self.path = None
            self._fd = 2


def _open(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)


def check_file(path: Path) -> str | None:
    """Why the access log cannot be appended to ``path`` (created when missing), or None."""
    try:
        os.close(_open(path))
    except OSError as e:
        return f"cannot open {path} for appending: {e.strerror or e}"
    return None
