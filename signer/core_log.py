"""gRPC core's own log lines held back around one call (the listener's bind), so that a fault the
signer reports in its own words is not preceded by core's raw line.

gRPC core logs a failed bind to file descriptor 2 itself (``E1202 17:15:31.919054 9440 add_port.cc:83]
Failed to add port to server: ... Address already in use``), then Python gets a RuntimeError that
says only "Failed to bind to address ...; set GRPC_VERBOSITY=debug". ``core_lines_held`` points fd 2
at a temporary file for the block: lines that are not core's go back to fd 2 afterwards (nothing
else is lost), and core's lines go back too unless the block failed, in which case the caller gets
them (``held``) to word its own message (``core_reason``) and logs them at DEBUG.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

log = logging.getLogger("ocsp-signer")

# absl's prefix, as signer.handshake_log reads it: "E1202 17:15:31.919054    9440 add_port.cc:83] ..."
_CORE_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [\w.]+:\d+\]")
_BIND_ERROR = re.compile(r"Error in bind for address '[^']*': ([^)]+)\)")


@contextlib.contextmanager
def core_lines_held() -> Iterator[list[str]]:
    """Run the block with fd 2 on a temporary file. Yields the list that, when the block raised, holds
    core's lines it wrote (everything else is written back to fd 2 either way)."""
    held: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    tmp = tempfile.TemporaryFile()  # noqa: SIM115 - closed below, after fd 2 is back
    os.dup2(tmp.fileno(), 2)
    failed = False
    try:
        yield held
    except BaseException:
        failed = True
        raise
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()  # a Python stderr on fd 2 (no TLS capture) empties its buffer into the file
        os.dup2(saved, 2)
        os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
        tmp.close()
        passed = []
        for line in text.splitlines():
            (held if failed and _CORE_LINE.match(line) else passed).append(line)
        if passed:
            with contextlib.suppress(OSError):
                os.write(2, ("\n".join(passed) + "\n").encode(errors="replace"))
        for line in held:
            log.debug("gRPC core: %s", line)


def core_reason(held: list[str]) -> str | None:
    """The system's reason in core's bind failure lines ("Address already in use"), else None."""
    for line in held:
        m = _BIND_ERROR.search(line)
        if m:
            return m.group(1).strip()
    return None
