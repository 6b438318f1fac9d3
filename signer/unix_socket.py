"""Unix sockets the signer creates: bound under a tight umask, then given their configured mode.

A unix socket file takes its permissions from the process umask at the moment of the bind: under
``umask 000`` it is 0777, and any local user may connect to it until someone chmods it. Binding inside
``created_with_mode`` sets the umask to 0177 around the bind, so the file is 0600 (the signer's user
only) from its first instant, and chmods it to the configured mode afterwards. The admin socket
(signer.admin) and the main listener's public socket (signer.local_callers) are both made this way.

Who may then connect is the kernel's business: ``connect()`` needs write permission on the socket
file (and search permission on every directory above it), else it fails with EACCES.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The modes a configuration may choose (``[listen] socket_mode``, ``[admin] socket_mode``): the
# signer's user only, or also its group. Anything wider would let every local user in.
SOCKET_MODES = {"0600": 0o600, "0660": 0o660}
BIND_UMASK = 0o177  # a socket bound under it is 0600

# sun_path holds 108 bytes with its terminating NUL.
MAX_PATH_BYTES = 107


@contextmanager
def created_with_mode(path: Path, mode: int) -> Iterator[None]:
    """Bind the unix socket ``path`` inside the block; on leaving it, the file gets ``mode``.

    The umask is process-wide: whatever else creates a file meanwhile gets it as well (never a wider
    mode than it would have had). A block that raises leaves the file as the bind made it (0600)."""
    if mode & ~0o660:
        raise ValueError(f"socket mode {mode:04o} is wider than 0660")
    old = os.umask(BIND_UMASK)
    try:
        yield
    finally:
        os.umask(old)
    os.chmod(path, mode)


# -- the main listener's private directory (signer.local_callers) -------------------------------------

RELAY_NAME_DIGITS = 12  # relay connections are bound to private/<hex counter>, at most this long


def private_dir_for(path: Path) -> Path:
    """The directory, next to the public socket ``path``, where gRPC itself listens (mode 0700)."""
    return path.parent / f".{path.name}.d"


def upstream_socket_for(path: Path) -> Path:
    return private_dir_for(path) / "grpc.sock"


def longest_private_path(path: Path) -> int:
    """Bytes of the longest socket address the relay binds for the public socket ``path``."""
    private = len(str(private_dir_for(path)).encode()) + 1
    return private + max(RELAY_NAME_DIGITS, len("grpc.sock"))
