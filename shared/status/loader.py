"""The loader process: big status files are parsed and verified outside the serving process.

Parsing a million index.txt lines or CRL entries, and checking a CRL's signature, takes seconds of
CPU and, in the serving process, the GIL (the event loop stalls) and hundreds of MB of Python objects.
``run()`` does it in a fresh interpreter instead (``python -m shared.status.loader_child``: never a
fork of a process holding a PKCS#11 session or an event loop) and takes back compact tables
(``shared.status.table``). It is called from ``FileStatusSource.parse()`` in a worker thread, under the
source's reload lock (one loader a source at a time), and blocks only that thread: the pipe reads and
writes release the GIL.

The exchange is one message each way on the child's stdin and stdout: an 8-byte length, a JSON header
(the job; or the result, or an error), then the raw buffers the header lists. The job may carry the
loaded table, against which the child also computes the serials the reload changes.

A child that exits without a result, sends a malformed one, or takes longer than ``timeout`` (killed)
is a ``LoaderFailed``: a failed reload, the last good data kept. An error the child reports is raised
here as it was raised there: a ``StatusDataError`` with its message (the verdict on the data, as when
parsed here), or an exception of the same type name and message.
"""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import IO, Any

from shared.status.base import SMALL_CHANGES, LoaderFailed, NotYetValid, StatusDataError, small_set
from shared.status.table import SerialSet

ROOT = Path(__file__).resolve().parents[2]
MAX_HEADER = 1 << 20
_ERRORS: dict[str, type[Exception]] = {"StatusDataError": StatusDataError, "NotYetValid": NotYetValid}


def command() -> list[str]:
    return [sys.executable, "-m", "shared.status.loader_child"]


def write_message(out: IO[bytes], header: dict[str, Any], blobs: Sequence[Any]) -> None:
    views = [memoryview(b).cast("B") for b in blobs]
    header = {**header, "blobs": [len(v) for v in views]}
    text = json.dumps(header).encode()
    out.write(len(text).to_bytes(8, "big"))
    out.write(text)
    for v in views:
        out.write(v)
    out.flush()


def read_message(inp: IO[bytes]) -> tuple[dict[str, Any], list[bytes]]:
    size = int.from_bytes(_read_exactly(inp, 8), "big")
    if size > MAX_HEADER:
        raise ValueError(f"header of {size} bytes")
    header = json.loads(_read_exactly(inp, size))
    if not isinstance(header, dict) or not isinstance(header.get("blobs"), list):
        raise ValueError("no header")  # noqa: TRY004 - a malformed message, whatever its type
    return header, [_read_exactly(inp, int(n)) for n in header["blobs"]]


def _read_exactly(inp: IO[bytes], n: int) -> bytes:
    data = inp.read(n)
    if len(data) != n:
        raise EOFError(f"{n - len(data)} bytes missing")
    return data


def run(job: dict[str, Any], blobs: Sequence[Any], *, timeout: float,
        command: list[str] | None = None) -> tuple[dict[str, Any], list[bytes]]:
    """Run ``job`` in a loader process; its result header and buffers. Raises what the child raised,
    or LoaderFailed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    argv = command or globals()["command"]()
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env,
                                    close_fds=True)
        except OSError as e:
            raise LoaderFailed(f"cannot start the status loader process: {e}") from None
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.daemon = True
        timer.start()
        try:
            assert proc.stdin is not None and proc.stdout is not None
            try:
                write_message(proc.stdin, job, blobs)
                proc.stdin.close()
                header, out = read_message(proc.stdout)
            except (OSError, ValueError, EOFError) as e:
                try:  # a child that closed its output is exiting: its status, not our kill's
                    code = proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait()
                if timed_out.is_set():
                    raise LoaderFailed(f"the status loader process took more than {timeout:g} s and was "
                                       "killed") from None
                raise LoaderFailed(f"the status loader process {_ended(code)} without a result ({e}){_tail(err)}"
                                   ) from None
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()
    error = header.get("error")
    if error is not None:
        raise _rebuild(str(error.get("type")), str(error.get("message")), error.get("args"))
    return header, out


def _ended(code: int) -> str:
    return f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"


def _tail(err: IO[bytes]) -> str:
    err.seek(0)
    lines = err.read()[-2000:].decode("utf-8", "replace").strip().splitlines()
    return f": {lines[-1]}" if lines else ""


def _rebuild(name: str, message: str, args: list[str] | None = None) -> Exception:
    cls = _ERRORS.get(name)
    if cls is None:
        found = getattr(builtins, name, None)
        cls = found if isinstance(found, type) and issubclass(found, Exception) else type(name, (Exception,), {})
    try:
        return cls(*args) if isinstance(args, list) else cls(message)
    except Exception:  # noqa: BLE001 - an exception type that takes other arguments
        return type(name, (Exception,), {})(message)


def error_header(e: BaseException) -> dict[str, Any]:
    name = type(e).__name__
    if isinstance(e, StatusDataError) and name not in _ERRORS:
        name = "StatusDataError"
    args = list(e.args) if all(isinstance(a, str) for a in e.args) else [str(e)]
    return {"error": {"type": name, "message": str(e), "args": args}}


def changes_to_wire(serials: list[int]) -> tuple[dict[str, int], bytes]:
    table = SerialSet.of(serials)
    return {"width": table.width, "count": table.count}, table.keys


def changes_from_wire(header: dict[str, Any], blobs: list[bytes]) -> AbstractSet[int] | None:
    """The changed serials of a result (its last buffer), or None when the child computed none."""
    meta = header.get("changes")
    if meta is None:
        return None
    table = SerialSet(blobs[-1], int(meta["width"]), int(meta["count"]))
    return table if table.count > SMALL_CHANGES else small_set(list(table))
